/*-------------------------------------------------------------------------
 *
 * consumers.sql
 *	  Producer side: the consumers registered with this site, their
 *	  subscriptions and their conditions.
 *
 * A consumer registers through the HTTP endpoint (_register_consumer); the
 * producer's admin approves or rejects each table it subscribes to.  What
 * each consumer was served is kept per page (served_page), and for
 * conditioned subscriptions per document (consumer_document, withheld).
 * The view consumer_status says how each consumer is doing.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.consumer (
	consumer_url	text PRIMARY KEY,
	api_key			text,
	role			regrole NOT NULL,
	site_id			uuid NOT NULL,
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_pull_at	timestamptz,
	acked_page		bigint NOT NULL DEFAULT 0,
	served_page		bigint NOT NULL DEFAULT 0,
	acked_snapshot	pg_snapshot NOT NULL,
	acked_low		bigint NOT NULL,
	acked_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	aged_out		boolean NOT NULL DEFAULT false,
	sent_tables		jsonb,
	sent_tables_page bigint,
	resync_pending	boolean NOT NULL DEFAULT false,
	resync_below	bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE eventstream.consumer IS
	'Event Consumer: one row per site that registered to pull from this one.';
COMMENT ON COLUMN eventstream.consumer.role IS
	'Role of the API key the consumer registered with: what it may read, and who evaluates its conditions.';
COMMENT ON COLUMN eventstream.consumer.acked_snapshot IS
	'Every log visible in this snapshot has been acknowledged by the consumer (its next pull carried a later cursor).';
COMMENT ON COLUMN eventstream.consumer.acked_low IS
	'Every log with a lower id is visible in acked_snapshot, hence acknowledged.';
COMMENT ON COLUMN eventstream.consumer.sent_tables IS
	'Subscription statuses as last told to the consumer: a long-poll answers at once when they change.';
COMMENT ON COLUMN eventstream.consumer.sent_tables_page IS
	'The page a pull asks for once the consumer took the answer that told it sent_tables (NULL: told at registration); a pull of an earlier page answers at once, for the consumer may have given that answer up.';
COMMENT ON COLUMN eventstream.consumer.resync_pending IS
	'Set when this site was restored from a dump: whatever cursor the consumer pulls with next, it copies its tables again (see _pull_page).';
COMMENT ON COLUMN eventstream.consumer.resync_below IS
	'Cursors of pages before this one predate the consumer''s latest re-sync: a pull with one re-syncs it again.';
COMMENT ON COLUMN eventstream.consumer.aged_out IS
	'Set when logs the consumer had not acknowledged were pruned after eventstream.retention_period; its pulls then fail until it is removed and registered again.';

CREATE TABLE eventstream.consumer_table (
	consumer_url		text NOT NULL REFERENCES eventstream.consumer ON DELETE CASCADE ON UPDATE CASCADE,
	ref_table			text NOT NULL,
	status				text NOT NULL DEFAULT 'Pending'
						CHECK (status IN ('Pending', 'Approved', 'Rejected')),
	unsubscribed		boolean NOT NULL DEFAULT false,
	condition			text,
	approved_snapshot	pg_snapshot,
	ended_snapshot		pg_snapshot,
	ended_txid			xid8,
	ended_id			bigint,
	condition_error		text,
	condition_error_at	timestamptz,
	PRIMARY KEY (consumer_url, ref_table)
);
COMMENT ON TABLE eventstream.consumer_table IS
	'Event Consumer Document Type: one row per table a consumer subscribed to; the producer admin sets status.';
COMMENT ON COLUMN eventstream.consumer_table.approved_snapshot IS
	'Taken when the subscription (re)became Approved and subscribed: logs committed before it are not served (the initial sync covers them).';
COMMENT ON COLUMN eventstream.consumer_table.ended_snapshot IS
	'Taken when an approved subscription stopped being Approved (rejected, or set back to Pending): logs committed before it are still served, those committed after it are not.';
COMMENT ON COLUMN eventstream.consumer_table.ended_txid IS
	'The transaction that ended the approval: its own logs are still served when their id is below ended_id (written before the change).';
COMMENT ON COLUMN eventstream.consumer_table.condition_error IS
	'Latest error raised by the condition; documents whose condition fails are not served.';

-- Which consumers were served which log ("Consumers" of an Update Log): one
-- receipt per page served, listing its logs.  page ties it to the pull that
-- served it: a consumer that pulls the same page again (it did not apply
-- it) gets it again.  One row per page instead of one per log keeps the
-- cost of a receipt off the serving path.
CREATE TABLE eventstream.served_page (
	consumer_url	text NOT NULL,		-- no foreign key: remove_consumer cleans up
	page			bigint NOT NULL,
	log_ids			bigint[] NOT NULL,
	max_log_id		bigint,
	PRIMARY KEY (consumer_url, page)
);
-- Arrays of ids compress well but slowly: serving is what counts here.
ALTER TABLE eventstream.served_page ALTER COLUMN log_ids SET STORAGE EXTERNAL;
COMMENT ON TABLE eventstream.served_page IS
	'Read receipts, one row per page a consumer was served; see the view update_log_consumer.';
CREATE VIEW eventstream.update_log_consumer AS
	SELECT i AS update_log_id, sp.consumer_url, sp.page
	  FROM eventstream.served_page sp, unnest(sp.log_ids) i;
COMMENT ON VIEW eventstream.update_log_consumer IS
	'Read receipts: which consumer was served which update log.';

-- Conditioned and role-served subscriptions (_role_served) only.
-- consumer_document: whether a consumer
-- holds a document, as the changes of that state (a document is served:
-- held; it stops matching and is served a Delete: not held), the latest
-- (largest seq) deciding, no row meaning not held.  Each change names the
-- pull that made it: its page and the cursor that pull returned (token).
-- A page may be pulled more than once (the consumer did not apply it, or
-- two of its sessions pulled it), and the consumer goes on from one of
-- those pulls, the one whose cursor it pulls the next page with: the
-- changes of the others are dropped then (see _pull_page).  withheld: logs
-- a condition kept from a consumer, replayed when the document starts to
-- match.  page / served_page tie each change to the page that made it, so
-- pulling a page again undoes it first.
CREATE TABLE eventstream.consumer_document (
	consumer_url	text NOT NULL,		-- cleaned up by remove_consumer
	ref_table		text NOT NULL,
	docname			text NOT NULL,
	seq				bigint GENERATED ALWAYS AS IDENTITY,
	page			bigint,				-- NULL: served by an initial sync
	token			text,				-- NULL while its pull runs, and for an initial sync
	held			boolean NOT NULL,
	PRIMARY KEY (consumer_url, ref_table, docname, seq)
);
CREATE INDEX consumer_document_page_idx ON eventstream.consumer_document (consumer_url, page);
COMMENT ON TABLE eventstream.consumer_document IS
	'Documents of conditioned and role-served subscriptions: each change of whether the consumer holds one (served: held; served a Delete when it stopped matching or its key''s role stopped seeing it: not held), with the pull that made it; the latest counts.';
CREATE TABLE eventstream.withheld (
	consumer_url	text NOT NULL,		-- cleaned up by remove_consumer
	ref_table		text NOT NULL,
	docname			text NOT NULL,
	update_log_id	bigint NOT NULL,
	page			bigint NOT NULL,
	served_page		bigint,
	PRIMARY KEY (consumer_url, ref_table, docname, update_log_id)
);
CREATE INDEX withheld_log_idx ON eventstream.withheld (update_log_id);
COMMENT ON TABLE eventstream.withheld IS
	'Update logs a condition kept from a consumer; served_page is set once they were replayed.';

CREATE FUNCTION eventstream._check_condition(tbl regclass, condition text, role regrole) RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_check_condition';

CREATE FUNCTION eventstream._condition_allows(consumer text, tbl regclass, ref_table text,
		condition text, role regrole, docname text, log jsonb) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_condition_allows';

-- A table that can be subscribed to: it exists, has a primary key and is
-- not registered as a child table.  Errors name it by its published name.
CREATE FUNCTION eventstream._subscribable_table(name text) RETURNS regclass
	LANGUAGE plpgsql STABLE
AS $$
DECLARE
	tbl regclass := eventstream._resolve_table(name);
	parent regclass;
	nsp name;
BEGIN
	SELECT n.nspname INTO nsp FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = tbl;
	IF nsp IN ('pg_catalog', 'information_schema', 'eventstream', 'pg_toast') OR nsp LIKE 'pg_temp%' THEN
		RAISE EXCEPTION 'table "%" cannot be streamed', eventstream._published_name(tbl)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'System, temporary and eventstream''s own tables cannot be subscribed to.';
	END IF;
	IF cardinality(eventstream._pk_attnums(tbl)) = 0 THEN
		RAISE EXCEPTION 'table "%" has no primary key', eventstream._published_name(tbl)
			USING ERRCODE = 'invalid_table_definition',
				  HINT = 'eventstream identifies documents by their primary key; add one.';
	END IF;
	SELECT c.parent INTO parent FROM eventstream.child_table c WHERE c.child = tbl;
	IF FOUND THEN
		RAISE EXCEPTION 'table "%" is a child table of "%"', eventstream._published_name(tbl), eventstream._published_name(parent)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Subscribe to the parent table; child rows travel inside its documents.';
	END IF;
	RETURN tbl;
END
$$;

-- A subscribable table named on the wire: schema-qualified, or a bare name
-- meaning public (never resolved along search_path).  A published name is
-- the table bound to it, wherever it lives now; the current name of a table
-- bound to another name is refused, naming the name to use.
CREATE FUNCTION eventstream._wire_table(name text) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	qualified text := name;
	wire text;
	tbl regclass;
	bound text;
BEGIN
	BEGIN
		IF cardinality(parse_ident(name)) = 1 THEN
			qualified := 'public.' || name;
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'invalid table name "%"', name USING ERRCODE = 'invalid_name';
	END;
	wire := eventstream._wire_table_name(name);
	SELECT p.relid INTO tbl FROM eventstream.published_table p
	  JOIN pg_class c ON c.oid = p.relid
	 WHERE p.ref_table = wire;
	IF tbl IS NOT NULL THEN
		RETURN eventstream._subscribable_table(tbl::text);
	END IF;
	tbl := eventstream._subscribable_table(qualified);
	SELECT p.ref_table INTO bound FROM eventstream.published_table p WHERE p.relid = tbl;
	IF bound IS DISTINCT FROM wire AND bound IS NOT NULL THEN
		RAISE EXCEPTION 'table "%" is published as "%"', wire, bound
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('The table was renamed after it was first subscribed to as "%s", and keeps that name on the wire.', bound),
				  HINT = format('Subscribe to "%s".', bound);
	END IF;
	RETURN tbl;
END
$$;

-- Why a subscribed table (by its wire name) cannot be served to a role
-- now, as {"code": SQLSTATE, "message": text}; NULL when it can.  Cheap
-- enough for every reply: registration and every page report it per table.
CREATE FUNCTION eventstream._table_error(ref_table text, role regrole) RETURNS jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE
		WHEN c.oid IS NULL THEN
			jsonb_build_object('code', '42P01', 'message', format('table "%s" does not exist', ref_table))
		WHEN c.relkind NOT IN ('r', 'p') THEN
			jsonb_build_object('code', '42809', 'message', format('"%s" is not a table', ref_table))
		WHEN NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) THEN
			jsonb_build_object('code', '42P16', 'message', format('table "%s" has no primary key', ref_table))
		WHEN NOT has_any_column_privilege(role, c.oid, 'SELECT') THEN
			jsonb_build_object('code', '42501', 'message', format('role "%s" cannot read table "%s"', role, ref_table))
		WHEN NOT has_table_privilege(role, c.oid, 'SELECT') AND eventstream._unreadable_key(c.oid, role) IS NOT NULL THEN
			jsonb_build_object('code', '42501', 'message', format('role "%s" cannot read key column "%s" of table "%s"',
																  role, eventstream._unreadable_key(c.oid, role), ref_table))
	END
	  FROM (SELECT eventstream._published(ref_table) AS tbl) x
	  LEFT JOIN pg_class c ON c.oid = x.tbl
$$;

-- Canonical wire name for a table name given by a user: a published name
-- as it is, else the name the existing table is published by (its wire
-- name unless it is bound to another), or the text itself for a table that
-- is gone.
CREATE FUNCTION eventstream._canonical_table_name(name text) RETURNS text
	LANGUAGE plpgsql STABLE
AS $$
DECLARE
	tbl regclass;
BEGIN
	IF EXISTS (SELECT 1 FROM eventstream.published_table p WHERE p.ref_table = name) THEN
		RETURN name;
	END IF;
	BEGIN
		tbl := to_regclass(name);
	EXCEPTION WHEN OTHERS THEN
		tbl := NULL;
	END;
	RETURN coalesce(eventstream._published_name(tbl), name);
END
$$;

/*
 * Stamp the start and the end of every approved period of a subscription.
 * It starts when it becomes Approved and subscribed.  It ends when its
 * status changes from Approved (reject(), or an UPDATE to Pending): the
 * logs served are then those of transactions committed before the change,
 * and those the changing transaction wrote before it (their ids are below
 * the next id to be drawn now), as under the old status.  Unsubscribing
 * ends it at once: the consumer asked for nothing more.
 */
CREATE FUNCTION eventstream._consumer_table_approval() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF NEW.status = 'Approved' AND NOT NEW.unsubscribed THEN
		IF TG_OP = 'INSERT' OR OLD.status <> 'Approved' OR OLD.unsubscribed THEN
			NEW.approved_snapshot := pg_current_snapshot();
			NEW.ended_snapshot := NULL;
			NEW.ended_txid := NULL;
			NEW.ended_id := NULL;
		END IF;
	ELSIF NEW.unsubscribed THEN
		NEW.ended_snapshot := NULL;
		NEW.ended_txid := NULL;
		NEW.ended_id := NULL;
	ELSIF TG_OP = 'UPDATE' AND OLD.status = 'Approved' AND NOT OLD.unsubscribed THEN
		-- The transaction's own id first: it then is in no snapshot's
		-- future.  Every log it wrote so far is visible to it, every log
		-- written later gets a larger id than any drawn so far.
		NEW.ended_txid := pg_current_xact_id();
		NEW.ended_snapshot := pg_current_snapshot();
		NEW.ended_id := coalesce((SELECT max(l.id) FROM eventstream.update_log l), 0) + 1;
	END IF;
	RETURN NEW;
END
$$;

-- Whether a log (by its txid and id) was written under an approval that
-- ended as end_snapshot, end_txid and end_id say (see
-- _consumer_table_approval); true when the approval has not ended.  Plain
-- SQL without a SET clause: inlined into the queries that use it.
CREATE FUNCTION eventstream._before_end(txid xid8, id bigint, end_snapshot pg_snapshot, end_txid xid8,
										end_id bigint) RETURNS boolean
	LANGUAGE sql IMMUTABLE
AS $$
	SELECT end_snapshot IS NULL
		OR CASE WHEN txid = end_txid THEN id < end_id
				ELSE pg_catalog.pg_visible_in_snapshot(txid, end_snapshot) END
$$;

-- Whether every log an ended approval still serves is visible in snap
-- (a consumer whose cursor is past snap has had all of them).
CREATE FUNCTION eventstream._end_passed(end_snapshot pg_snapshot, end_txid xid8, snap pg_snapshot) RETURNS boolean
	LANGUAGE sql IMMUTABLE
AS $$
	SELECT pg_catalog.pg_snapshot_xmax(end_snapshot) <= pg_catalog.pg_snapshot_xmin(snap)
	   AND end_txid < pg_catalog.pg_snapshot_xmin(snap)
$$;

-- Whether a consumer holds a document of a conditioned subscription, as
-- the pull of page pageno sees it: the latest change of consumer_document,
-- other pulls of that same page left aside (NULL pageno: the latest of
-- all).  Plain SQL without a SET clause: inlined into its callers, which
-- are SECURITY DEFINER with a safe search_path.
CREATE FUNCTION eventstream._holds(consumer_url text, ref_table text, docname text, pageno bigint) RETURNS boolean
	LANGUAGE sql STABLE
AS $$
	SELECT coalesce((SELECT d.held FROM eventstream.consumer_document d
					  WHERE d.consumer_url = _holds.consumer_url AND d.ref_table = _holds.ref_table
						AND d.docname = _holds.docname
						AND NOT (d.page IS NOT DISTINCT FROM _holds.pageno AND d.token IS NOT NULL)
					  ORDER BY d.seq DESC LIMIT 1), false)
$$;

/*
 * Record that a consumer now holds a document, or no longer does, as of
 * page (NULL: an initial sync); _pull_page names the pull (token) when it
 * ends.  Changes the consumer acknowledged (pages before acked_page, whose
 * other pulls were dropped, and initial syncs) cannot be undone: of those
 * only the latest counts, and only if it says "held", so the rest is
 * deleted; a document keeps a row or two.
 */
CREATE FUNCTION eventstream._set_holds(consumer_url text, ref_table text, docname text, held boolean,
									   page bigint, acked_page bigint) RETURNS void
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
	DELETE FROM eventstream.consumer_document d
	 WHERE d.consumer_url = _set_holds.consumer_url AND d.ref_table = _set_holds.ref_table
	   AND d.docname = _set_holds.docname
	   AND (d.page IS NULL OR d.page < _set_holds.acked_page)
	   AND (NOT d.held
			OR d.seq < (SELECT max(x.seq) FROM eventstream.consumer_document x
						 WHERE x.consumer_url = _set_holds.consumer_url AND x.ref_table = _set_holds.ref_table
						   AND x.docname = _set_holds.docname
						   AND (x.page IS NULL OR x.page < _set_holds.acked_page)));
	INSERT INTO eventstream.consumer_document (consumer_url, ref_table, docname, page, held)
		VALUES (_set_holds.consumer_url, _set_holds.ref_table, _set_holds.docname, _set_holds.page,
				_set_holds.held);
END;
CREATE TRIGGER approval BEFORE INSERT OR UPDATE ON eventstream.consumer_table
	FOR EACH ROW EXECUTE FUNCTION eventstream._consumer_table_approval();

/*
 * Set the status of a subscription, for approve() and reject(), which
 * resolve ref_table in their caller's search_path first (they run as the
 * caller: a BEGIN ATOMIC body is bound when created, so that search_path
 * reaches nothing but the table name).  SECURITY DEFINER, and executable by
 * eventstream_admin: it checks its caller itself.
 */
CREATE FUNCTION eventstream._set_status(consumer_url text, ref_table text, status text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin(CASE status WHEN 'Approved' THEN 'approve' ELSE 'reject' END);
	IF ref_table IS NULL THEN
		RAISE EXCEPTION 'ref_table must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM eventstream.consumer c WHERE c.consumer_url = _set_status.consumer_url) THEN
		RAISE EXCEPTION 'consumer "%" is not registered', consumer_url
			USING ERRCODE = 'undefined_object',
				  HINT = 'SELECT consumer_url FROM eventstream.consumer lists the registered consumers.';
	END IF;
	UPDATE eventstream.consumer_table ct SET status = _set_status.status
	 WHERE ct.consumer_url = _set_status.consumer_url
	   AND ct.ref_table = eventstream._canonical_table_name(_set_status.ref_table);
	IF NOT FOUND THEN
		RAISE EXCEPTION 'consumer "%" has no subscription to table "%"', consumer_url, ref_table
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM eventstream._reconfigure();
END
$$;

CREATE FUNCTION eventstream.approve(consumer_url text, ref_table text) RETURNS void
	LANGUAGE sql
	BEGIN ATOMIC
		SELECT eventstream._assert_admin('approve');
		SELECT eventstream._set_status(consumer_url, eventstream._canonical_table_name(ref_table), 'Approved');
	END;
COMMENT ON FUNCTION eventstream.approve(text, text) IS
	'Approve a consumer''s subscription to a table: its changes are logged and served from now on.';

CREATE FUNCTION eventstream.reject(consumer_url text, ref_table text) RETURNS void
	LANGUAGE sql
	BEGIN ATOMIC
		SELECT eventstream._assert_admin('reject');
		SELECT eventstream._set_status(consumer_url, eventstream._canonical_table_name(ref_table), 'Rejected');
	END;
COMMENT ON FUNCTION eventstream.reject(text, text) IS
	'Reject a consumer''s subscription to a table: nothing written after the rejection is served to it; what was written before it (committed before it, or earlier in the same transaction) still is.';

CREATE FUNCTION eventstream.remove_consumer(consumer_url text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('remove_consumer');
	DELETE FROM eventstream.consumer c WHERE c.consumer_url = remove_consumer.consumer_url;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'consumer "%" is not registered', consumer_url USING ERRCODE = 'undefined_object';
	END IF;
	DELETE FROM eventstream.served_page x WHERE x.consumer_url = remove_consumer.consumer_url;
	DELETE FROM eventstream.consumer_document x WHERE x.consumer_url = remove_consumer.consumer_url;
	DELETE FROM eventstream.withheld x WHERE x.consumer_url = remove_consumer.consumer_url;
	PERFORM eventstream._reconfigure();
END
$$;
COMMENT ON FUNCTION eventstream.remove_consumer(text) IS
	'Forget a consumer, its subscriptions and receipts; it may register again.';

/*
 * Register a consumer, or update its subscriptions.  Idempotent.
 * tables: JSON array of table names or of objects
 *   {"ref_table": name, "condition": text, "unsubscribed": bool}.
 * Tables missing from the list are dropped from the subscription; new ones
 * start Pending; existing ones keep their status.  A table new to the
 * subscription must be subscribable now, or the registration fails.  A
 * table already subscribed that cannot be served any more (dropped,
 * renamed, moved, its primary key or the role's SELECT gone) does not
 * fail it: the subscription is kept, can still be unsubscribed, and is
 * reported with an "error" in the statuses (see _consumer_tables), so
 * that one such table never stops the consumer from changing the others.
 * Returns the consumer's cursor to start from and the statuses.
 */
CREATE FUNCTION eventstream._register_consumer(consumer_url text, site_id uuid, api_key text,
		role regrole, tables jsonb) RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	url text := rtrim(btrim(consumer_url), '/');
	c eventstream.consumer;
	item jsonb;
	name text;
	tbl regclass;
	cond text;
	wanted text[] := '{}';
	low bigint;
	unsub boolean;
	known eventstream.consumer_table;
	problem jsonb;
BEGIN
	PERFORM eventstream._check_serving();
	IF url IS NULL OR url !~ '^https?://[^/\s]+' THEN
		RAISE EXCEPTION 'invalid consumer URL "%"', consumer_url
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A site URL looks like http://host:port or https://host.';
	END IF;
	IF site_id IS NULL OR role IS NULL THEN
		RAISE EXCEPTION 'site_id and role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF tables IS NULL OR jsonb_typeof(tables) <> 'array' THEN
		RAISE EXCEPTION 'tables must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
	END IF;

	SELECT * INTO c FROM eventstream.consumer WHERE eventstream.consumer.consumer_url = url FOR UPDATE;
	IF FOUND AND c.api_key IS DISTINCT FROM _register_consumer.api_key AND c.role <> _register_consumer.role THEN
		RAISE EXCEPTION 'consumer "%" is registered with another API key', url
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Register with the key it was registered with, or have the producer remove it with eventstream.remove_consumer().';
	END IF;
	IF NOT FOUND THEN
		-- The low bound first, then the snapshot it goes with.
		low := coalesce(eventstream._low_bound(), 0);
		INSERT INTO eventstream.consumer (consumer_url, api_key, role, site_id, acked_snapshot, acked_low)
			VALUES (url, _register_consumer.api_key, _register_consumer.role, _register_consumer.site_id,
					pg_current_snapshot(), low)
			RETURNING * INTO c;
	ELSE
		-- Same key, or a new key of the same role (set_keys() on the consumer).
		UPDATE eventstream.consumer SET site_id = _register_consumer.site_id, api_key = _register_consumer.api_key
		 WHERE eventstream.consumer.consumer_url = url RETURNING * INTO c;
		-- This site was restored since: the consumer starts from now, and
		-- copies its tables again (eventstream.reset_cursor()).
		IF c.resync_pending THEN
			PERFORM eventstream._restart_consumer(url, c.served_page);
			SELECT * INTO c FROM eventstream.consumer WHERE eventstream.consumer.consumer_url = url;
		END IF;
	END IF;

	FOR item IN SELECT * FROM jsonb_array_elements(tables) LOOP
		IF jsonb_typeof(item) = 'string' THEN
			item := jsonb_build_object('ref_table', item);
		ELSIF jsonb_typeof(item) <> 'object' OR jsonb_typeof(item->'ref_table') IS DISTINCT FROM 'string' THEN
			RAISE EXCEPTION 'invalid table entry %', item
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Each entry is a table name or {"ref_table": name, "condition": text, "unsubscribed": bool}.';
		END IF;
		unsub := coalesce((item->>'unsubscribed')::boolean, false);
		name := eventstream._wire_table_name(item->>'ref_table');
		known := NULL;
		problem := NULL;
		IF name IS NOT NULL THEN
			SELECT * INTO known FROM eventstream.consumer_table ct
			 WHERE ct.consumer_url = url AND ct.ref_table = name;
			IF known.ref_table IS NOT NULL OR unsub THEN
				problem := eventstream._table_error(name, c.role);
			END IF;
		END IF;
		IF problem IS NOT NULL THEN
			-- Subscribed before and not servable now, or unsubscribed (never
			-- served): no check can pass, and none is needed to keep it or to
			-- unsubscribe it.  A new condition cannot be checked against it.
			IF name = ANY (wanted) THEN
				RAISE EXCEPTION 'table "%" is listed twice', name USING ERRCODE = 'invalid_parameter_value';
			END IF;
			wanted := wanted || name;
			IF known.ref_table IS NULL THEN
				CONTINUE;
			END IF;
			IF NOT unsub AND nullif(btrim(item->>'condition', E' \t\n\r'), '') IS DISTINCT FROM known.condition THEN
				RAISE EXCEPTION 'cannot change the condition on table "%": %', name, problem->>'message'
					USING ERRCODE = problem->>'code';
			END IF;
			UPDATE eventstream.consumer_table ct SET unsubscribed = unsub
			 WHERE ct.consumer_url = url AND ct.ref_table = name AND ct.unsubscribed <> unsub;
			CONTINUE;
		END IF;
		tbl := eventstream._wire_table(item->>'ref_table');
		-- Only a table the consumer starts to receive must be readable (some
		-- of its columns, the key columns among them): one whose privilege
		-- was revoked later is not served (and can still be unsubscribed,
		-- or kept while other tables change).
		IF NOT coalesce((item->>'unsubscribed')::boolean, false)
		   AND NOT EXISTS (SELECT 1 FROM eventstream.consumer_table x
							WHERE x.consumer_url = url AND x.ref_table = eventstream._published_name(tbl)
							  AND NOT x.unsubscribed) THEN
			PERFORM eventstream._check_readable(tbl, c.role);
		END IF;
		cond := eventstream._check_condition(tbl, item->>'condition', c.role);
		name := eventstream._published_name(tbl);
		IF name = ANY (wanted) THEN
			RAISE EXCEPTION 'table "%" is listed twice', name USING ERRCODE = 'invalid_parameter_value';
		END IF;
		wanted := wanted || name;
		INSERT INTO eventstream.consumer_table AS ct (consumer_url, ref_table, unsubscribed, condition)
			VALUES (url, name, unsub, cond)
			ON CONFLICT ON CONSTRAINT consumer_table_pkey DO UPDATE
				SET unsubscribed = EXCLUDED.unsubscribed, condition = EXCLUDED.condition
				WHERE (ct.unsubscribed, ct.condition) IS DISTINCT FROM (EXCLUDED.unsubscribed, EXCLUDED.condition);
	END LOOP;
	DELETE FROM eventstream.consumer_table ct
	 WHERE ct.consumer_url = url AND ct.ref_table <> ALL (wanted);
	DELETE FROM eventstream.withheld w
	 WHERE w.consumer_url = url
	   AND NOT EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					    WHERE ct.consumer_url = url AND ct.ref_table = w.ref_table
						  AND ct.condition IS NOT NULL AND NOT ct.unsubscribed);
	DELETE FROM eventstream.consumer_document d
	 WHERE d.consumer_url = url
	   AND NOT EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					    WHERE ct.consumer_url = url AND ct.ref_table = d.ref_table
						  AND (ct.condition IS NOT NULL
							   OR eventstream._role_served(eventstream._published(ct.ref_table), c.role))
						  AND NOT ct.unsubscribed);
	PERFORM eventstream._reconfigure();

	UPDATE eventstream.consumer x SET sent_tables = eventstream._consumer_tables(url), sent_tables_page = NULL
	 WHERE x.consumer_url = url;
	RETURN jsonb_build_object(
		'consumer_url', url,
		'producer_site_id', (SELECT s.site_id FROM eventstream.site s),
		'cursor', format('v1/%s/%s/%s', greatest(c.acked_page, 1), c.acked_snapshot, c.acked_low),
		'tables', eventstream._consumer_tables(url),
		'keys', eventstream._consumer_keys(url));
END
$$;

-- The statuses of a consumer's subscriptions, as sent with every reply;
-- a table that cannot be served now also has "error": {"code", "message"}.
CREATE FUNCTION eventstream._consumer_tables(consumer_url text) RETURNS jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(jsonb_agg(jsonb_build_object('ref_table', ct.ref_table, 'status', ct.status,
												 'unsubscribed', ct.unsubscribed, 'condition', ct.condition,
												 'readable', coalesce(eventstream._readable_by(eventstream._published(ct.ref_table), c.role), false))
							  || jsonb_strip_nulls(jsonb_build_object('error', eventstream._table_error(ct.ref_table, c.role)))
							  ORDER BY ct.ref_table), '[]')
	  FROM eventstream.consumer_table ct
	  JOIN eventstream.consumer c ON c.consumer_url = ct.consumer_url
	 WHERE ct.consumer_url = _consumer_tables.consumer_url
$$;

-- The key columns of a consumer's subscribed tables, in key order, as sent
-- with every reply: {"schema.table": ["a", "b"]}.  A docname is the key
-- rendered (see _docname_of); a consumer whose table has another key
-- matches rows on these columns.  Tables that are gone, have no key or
-- that the consumer's role cannot read are left out.
CREATE FUNCTION eventstream._consumer_keys(consumer_url text) RETURNS jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(jsonb_object_agg(x.ref_table, to_jsonb(x.key) ORDER BY x.ref_table), '{}')
	  FROM (SELECT ct.ref_table, eventstream._pk_names(eventstream._published(ct.ref_table)) AS key
			  FROM eventstream.consumer_table ct
			  JOIN eventstream.consumer c ON c.consumer_url = ct.consumer_url
			 WHERE ct.consumer_url = _consumer_keys.consumer_url AND NOT ct.unsubscribed
			   AND coalesce(eventstream._readable_by(eventstream._published(ct.ref_table), c.role), false)) x
	 WHERE x.key IS NOT NULL
$$;

-- Producer side: how each consumer is doing.
CREATE VIEW eventstream.consumer_status AS
SELECT c.consumer_url,
	   c.role,
	   c.site_id,
	   c.created_at,
	   c.last_pull_at,
	   now() - c.acked_at AS cursor_age,
	   (SELECT count(*)
		  FROM eventstream.update_log l
		  JOIN eventstream.consumer_table ct
			ON ct.consumer_url = c.consumer_url AND ct.ref_table = l.ref_table
		   AND (ct.status = 'Approved' OR ct.ended_snapshot IS NOT NULL) AND NOT ct.unsubscribed
		 WHERE l.id >= c.acked_low
		   AND NOT pg_visible_in_snapshot(l.txid, c.acked_snapshot)
		   AND NOT pg_visible_in_snapshot(l.txid, ct.approved_snapshot)
		   AND eventstream._before_end(l.txid, l.id, ct.ended_snapshot, ct.ended_txid, ct.ended_id)
		   AND l.origin IS DISTINCT FROM c.site_id) AS updates_waiting,
	   (SELECT count(*) FROM eventstream.consumer_table ct
		 WHERE ct.consumer_url = c.consumer_url AND ct.status = 'Approved' AND NOT ct.unsubscribed) AS tables_approved,
	   (SELECT count(*) FROM eventstream.consumer_table ct
		 WHERE ct.consumer_url = c.consumer_url AND ct.status = 'Pending' AND NOT ct.unsubscribed) AS tables_pending,
	   (SELECT count(*) FROM eventstream.consumer_table ct
		 WHERE ct.consumer_url = c.consumer_url AND ct.condition_error IS NOT NULL) AS condition_errors,
	   c.aged_out,
	   -- Approved subscriptions whose table (or one of its child tables)
	   -- lost its primary key: captured by the former key's columns while
	   -- they exist, not captured once one is gone (capture.c).
	   (SELECT count(*) FROM eventstream.consumer_table ct
		 WHERE ct.consumer_url = c.consumer_url AND ct.status = 'Approved' AND NOT ct.unsubscribed
		   AND EXISTS (SELECT 1 FROM pg_class r
						WHERE (r.oid = eventstream._published(ct.ref_table)
							   OR r.oid IN (SELECT ch.child::oid FROM eventstream.child_table ch
											 WHERE ch.parent = eventstream._published(ct.ref_table)))
						  AND NOT EXISTS (SELECT 1 FROM pg_constraint k
										   WHERE k.conrelid = r.oid AND k.contype = 'p'))) AS tables_without_key
  FROM eventstream.consumer c;
COMMENT ON VIEW eventstream.consumer_status IS
	'Per consumer: last pull, age of its acknowledged cursor, updates waiting for it (an upper bound when conditions withhold some), subscriptions, condition errors, aged out, subscribed tables that lost their primary key.';
