/*-------------------------------------------------------------------------
 *
 * producers.sql
 *	  Consumer side: the producers this site subscribes to.
 *
 * add_producer(), subscribe(), unsubscribe(), set_keys(), reset_cursor()
 * and remove_producer() change them, and tell the producer over HTTP
 * (_producer_call) before they commit.  Pages that cannot be applied yet
 * wait in the inbox; every update received is logged in sync_log.  The
 * view producer_status says how each producer is doing.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.producer (
	producer_url		text PRIMARY KEY,
	api_key				text NOT NULL,
	api_secret			text NOT NULL,
	subscriber			regrole NOT NULL,
	enabled				boolean NOT NULL DEFAULT true,
	producer_site_id	uuid NOT NULL,
	cursor				text NOT NULL,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_pull_at		timestamptz,
	last_success_at		timestamptz,
	last_error			text,
	last_error_at		timestamptz,
	synced_count		bigint NOT NULL DEFAULT 0,
	failed_count		bigint NOT NULL DEFAULT 0,
	behind				boolean NOT NULL DEFAULT true,
	last_update_at		timestamptz,
	failed_total		bigint NOT NULL DEFAULT 0,
	updates_behind		bigint
);
COMMENT ON TABLE eventstream.producer IS
	'Event Producer: one row per site this one pulls from.  The secret is readable by superusers only.';
COMMENT ON COLUMN eventstream.producer.subscriber IS
	'Role the updates from this producer are applied as.';
COMMENT ON COLUMN eventstream.producer.behind IS
	'The last page said more was waiting on the producer.';
COMMENT ON COLUMN eventstream.producer.updates_behind IS
	'How many updates the producer said were waiting after the last page applied (its estimate; NULL: it did not say).';
COMMENT ON COLUMN eventstream.producer.last_update_at IS
	'When the newest update received was made on the producer.';
COMMENT ON COLUMN eventstream.producer.failed_count IS
	'Updates whose apply failed, less those a resync applied since.';
COMMENT ON COLUMN eventstream.producer.failed_total IS
	'Updates whose apply failed, ever (a resync does not take one back): the counter eventstream_producer_updates_failed_total of /metrics.';
COMMENT ON COLUMN eventstream.producer.cursor IS
	'Where the next pull starts; stored in the transaction that applied the updates before it.';

CREATE TABLE eventstream.producer_table (
	producer_url		text NOT NULL REFERENCES eventstream.producer ON DELETE CASCADE,
	ref_table			text NOT NULL,
	local_table			regclass NOT NULL,
	status				text NOT NULL DEFAULT 'Pending'
						CHECK (status IN ('Pending', 'Approved', 'Rejected')),
	use_same_name		boolean NOT NULL DEFAULT true,
	unsubscribe			boolean NOT NULL DEFAULT false,
	mapping				text,
	condition			text,
	readable			boolean NOT NULL DEFAULT true,
	initial_sync		boolean NOT NULL DEFAULT true,
	snapshot_pending	boolean NOT NULL DEFAULT false,
	snapshot_after		text,
	error				text,
	snapshot_error		text,
	snapshot_error_at	timestamptz,
	snapshot_failures	integer NOT NULL DEFAULT 0,
	snapshot_retry_at	timestamptz,
	snapshot_from		bigint,
	remote_key			text[],
	ignored_columns		text[],
	snapshot_rows		bigint,
	snapshot_estimate	bigint,
	PRIMARY KEY (producer_url, ref_table)
);
COMMENT ON TABLE eventstream.producer_table IS
	'Event Producer Document Type: one row per subscribed table; status is mirrored from the producer.';
COMMENT ON COLUMN eventstream.producer_table.ref_table IS
	'The table''s name on the producer (schema.table).';
COMMENT ON COLUMN eventstream.producer_table.snapshot_pending IS
	'The table''s existing rows are being copied (initial sync); updates wait in the inbox meanwhile, unless the copy is failing (snapshot_error).';
COMMENT ON COLUMN eventstream.producer_table.error IS
	'Why the producer cannot serve the table now (it is gone there, or the API key''s role cannot read it), as it last said; NULL when it can.';
COMMENT ON COLUMN eventstream.producer_table.snapshot_from IS
	'The first sync log id of the copy under way: rows this producer gave before it and the copy did not bring are deleted at its end.';
COMMENT ON COLUMN eventstream.producer_table.snapshot_error IS
	'Why the last request or page of the initial sync failed; it is retried at snapshot_retry_at, the other tables streaming meanwhile.';
COMMENT ON COLUMN eventstream.producer_table.remote_key IS
	'The key columns of the producer''s table, in key order, as it last said (NULL: it does not say); rows are matched on them.';
COMMENT ON COLUMN eventstream.producer_table.ignored_columns IS
	'Columns of the producer''s table (and of its child rows) whose values are not applied here (eventstream.ignore_columns); a column the local table lacks and this does not name fails the update.';
COMMENT ON COLUMN eventstream.producer_table.snapshot_rows IS
	'Rows the producer sent in the pages of the last (or current) initial sync applied so far.';
COMMENT ON COLUMN eventstream.producer_table.snapshot_estimate IS
	'How many rows the producer estimated its table holds (pg_class.reltuples) when it served the last page of the copy; NULL: it did not say.';
COMMENT ON COLUMN eventstream.producer_table.use_same_name IS
	'true: rows keep the producer''s key; false: the local table''s defaults make the key and remote_document keeps the producer''s.';

-- Pages of a window the consumer has not received whole yet.  A window
-- holds whole producer transactions; it is applied in one local
-- transaction once its last page is in.
CREATE TABLE eventstream.inbox (
	producer_url		text NOT NULL REFERENCES eventstream.producer ON DELETE CASCADE,
	seq					bigint GENERATED ALWAYS AS IDENTITY,
	page				jsonb NOT NULL,
	deps				jsonb NOT NULL DEFAULT '[]',
	complete			boolean NOT NULL,
	PRIMARY KEY (producer_url, seq)
);
ALTER TABLE eventstream.inbox ALTER COLUMN page SET STORAGE EXTERNAL;	-- written once, read once
COMMENT ON TABLE eventstream.inbox IS
	'Pages received but not applied yet: an incomplete window, or updates that wait for an initial sync.';

CREATE TABLE eventstream.sync_log (
	id					bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	update_type			text NOT NULL,
	ref_table			text NOT NULL,
	status				text NOT NULL CHECK (status IN ('Synced', 'Failed')),
	producer_url		text NOT NULL,
	docname				text,
	remote_docname		text,
	use_same_name		boolean,
	data				jsonb,
	error				text,
	note				text,
	update_log_id		bigint,
	remote_ref_table	text NOT NULL,
	origin				uuid,
	created_at			timestamptz NOT NULL DEFAULT pg_catalog.now(),
	resynced_at			timestamptz
);
CREATE INDEX sync_log_failed_idx ON eventstream.sync_log (producer_url) WHERE status = 'Failed';
COMMENT ON TABLE eventstream.sync_log IS
	'Event Sync Log: one row per update received, Synced or Failed; Failed ones can be resynced.';
COMMENT ON COLUMN eventstream.sync_log.note IS
	'What the apply did besides the obvious, e.g. a Delete of a row that was already gone.';

CREATE TABLE eventstream.remote_document (
	local_table			regclass NOT NULL,
	local_docname		text NOT NULL,
	producer_url		text NOT NULL,
	remote_docname		text NOT NULL,
	PRIMARY KEY (producer_url, local_table, remote_docname),
	UNIQUE (local_table, local_docname)
);
COMMENT ON TABLE eventstream.remote_document IS
	'For subscriptions with use_same_name = false: the producer and key behind each local row.';

-- Store the progress a page just applied tells of (called by the site
-- worker in the apply's transaction): for a page of an initial sync
-- (sent_path "snapshot/<table>?..."), the rows copied so far (the copy
-- starts with a request without after=) and the producer's estimate of
-- the table's rows; for a page of updates, how many the producer says
-- wait after it.  Fields a producer does not send leave NULL.  Returns the
-- rows copied so far of the table, or NULL for a page of updates.
CREATE FUNCTION eventstream._record_progress(producer_url text, sent_path text, page jsonb) RETURNS bigint
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	rows_copied bigint;
BEGIN
	IF starts_with(sent_path, 'snapshot/') THEN
		UPDATE eventstream.producer_table t
		   SET snapshot_rows = CASE WHEN strpos(sent_path, '&after=') = 0 THEN 0 ELSE coalesce(t.snapshot_rows, 0) END
							   + CASE WHEN jsonb_typeof(page->'documents') = 'array'
									  THEN jsonb_array_length(page->'documents') ELSE 0 END,
			   snapshot_estimate = CASE WHEN jsonb_typeof(page->'estimate') = 'number'
											 AND (page->>'estimate')::numeric BETWEEN 0 AND 1e18
										THEN round((page->>'estimate')::numeric)::bigint END
		 WHERE t.producer_url = _record_progress.producer_url
		   AND starts_with(sent_path, 'snapshot/' || eventstream._urlencode(t.ref_table) || '?')
		RETURNING t.snapshot_rows INTO rows_copied;
		RETURN rows_copied;
	END IF;
	UPDATE eventstream.producer x
	   SET updates_behind = CASE WHEN jsonb_typeof(page->'behind') = 'number'
									  AND (page->>'behind')::numeric BETWEEN 0 AND 1e18
								 THEN round((page->>'behind')::numeric)::bigint END
	 WHERE x.producer_url = _record_progress.producer_url;
	RETURN NULL;
END
$$;

-- This site's URL as consumers register it.
CREATE FUNCTION eventstream._site_url() RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (SELECT coalesce(nullif(rtrim(current_setting('eventstream.site_url'), '/'), ''),
						CASE WHEN current_setting('eventstream.http_port')::integer > 0
							 THEN 'http://127.0.0.1:' || current_setting('eventstream.http_port')
							 ELSE 'http://' || (SELECT s.site_id FROM eventstream.site s) || '.invalid' END));
END
$$;

CREATE FUNCTION eventstream._http_request(method text, url text, auth text, body text, timeout_s integer,
										  OUT status integer, OUT body text)
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_http_request';

CREATE FUNCTION eventstream._urlencode(s text) RETURNS text
	LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_urlencode';

-- One request to a producer's API; its JSON answer, or the producer's
-- error raised here with its SQLSTATE.
CREATE FUNCTION eventstream._producer_call(producer_url text, api_key text, api_secret text,
										   method text, path text, body jsonb DEFAULT NULL)
		RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	j jsonb;
	code text;
	msg text;
BEGIN
	SELECT * INTO r FROM eventstream._http_request(method, producer_url || '/api/eventstream/v1/' || path,
												   api_key || ':' || api_secret, body::text, 30);
	BEGIN
		j := r.body::jsonb;
	EXCEPTION WHEN OTHERS THEN
		j := NULL;
	END;
	IF r.status = 200 AND jsonb_typeof(j) = 'object' THEN
		RETURN j;
	END IF;
	msg := coalesce(j->'error'->>'message', left(r.body, 200));
	code := j->'error'->>'code';
	IF r.status = 401 THEN
		RAISE EXCEPTION 'producer "%" refused the API key', producer_url
			USING ERRCODE = 'invalid_authorization_specification', DETAIL = msg,
				  HINT = 'Check the key and secret (eventstream.set_keys()) and that the key is not revoked on the producer.';
	ELSIF r.status = 200 THEN
		RAISE EXCEPTION 'producer "%" answered with something that is not a JSON object', producer_url
			USING ERRCODE = 'invalid_text_representation', HINT = 'Check that the URL is the producer''s site URL.';
	ELSIF code ~ '^[0-9A-Z]{5}$' THEN
		RAISE EXCEPTION 'producer "%": %', producer_url, msg USING ERRCODE = code,
			HINT = coalesce(j->'error'->>'hint', '');
	ELSE
		RAISE EXCEPTION 'producer "%" answered HTTP %: %', producer_url, r.status, msg
			USING ERRCODE = 'connection_exception',
				  HINT = 'Check that the URL is the producer''s site URL and that eventstream.http_port is set there.';
	END IF;
END
$$;

-- A local table, checked for the apply: it has a primary key and the
-- subscriber may read and write it.
CREATE FUNCTION eventstream._check_local_table(tbl regclass, subscriber regrole) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	priv text;
BEGIN
	IF cardinality(eventstream._pk_attnums(tbl)) IS NULL THEN
		RAISE EXCEPTION 'table "%" has no primary key', tbl USING ERRCODE = 'invalid_table_definition';
	END IF;
	FOREACH priv IN ARRAY ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE'] LOOP
		IF NOT has_table_privilege(subscriber, tbl, priv) THEN
			RAISE EXCEPTION 'role "%" cannot % table "%"', subscriber, lower(priv), tbl
				USING ERRCODE = 'insufficient_privilege',
					  HINT = 'GRANT SELECT, INSERT, UPDATE, DELETE on the table to the subscriber role.';
		END IF;
	END LOOP;
	RETURN tbl;
END
$$;

-- The local table for a producer's table name, checked for the apply.
CREATE FUNCTION eventstream._local_table(ref_table text, subscriber regrole) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tbl regclass := to_regclass(eventstream._qualified(ref_table));
BEGIN
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table "%" does not exist on this site', ref_table
			USING ERRCODE = 'undefined_table',
				  HINT = 'Create it here with the same columns as on the producer before subscribing, or subscribe with a mapping.';
	END IF;
	RETURN eventstream._check_local_table(tbl, subscriber);
END
$$;

-- Tell the producer what this site subscribes to (registration is
-- idempotent on the producer), and mirror the statuses it answers with.
-- A subscribed table the producer cannot serve (it says why) is an error
-- when it is one of the tables named in strict (what the caller is
-- subscribing to), a WARNING otherwise: a table gone on the producer does
-- not keep the others from being changed.
CREATE FUNCTION eventstream._push_subscriptions(producer_url text, strict text[] DEFAULT '{}') RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	reply jsonb;
	t jsonb;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _push_subscriptions.producer_url FOR UPDATE;
	-- Without eventstream.site_url this site registers under a URL that
	-- only this machine can use: say so when the producer is elsewhere.
	IF current_setting('eventstream.site_url') = ''
	   AND lower(substring(p.producer_url FROM '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/]*@)?(\[[^]]*\]|[^:/?#]*)'))
		   NOT IN ('127.0.0.1', 'localhost', '[::1]') THEN
		RAISE WARNING 'this site registers with producer "%" as "%"', p.producer_url, eventstream._site_url()
			USING DETAIL = 'eventstream.site_url is not set, and the producer cannot reach this site at that URL; its admin sees this consumer under it.',
				  HINT = 'Set eventstream.site_url for this database to the URL other sites reach it at (ALTER DATABASE ... SET eventstream.site_url = ''https://host:port''), then subscribe again.';
	END IF;
	reply := eventstream._producer_call(p.producer_url, p.api_key, p.api_secret, 'POST', 'consumers',
		jsonb_build_object('consumer_url', eventstream._site_url(),
						   'site_id', (SELECT s.site_id FROM eventstream.site s),
						   'tables', (SELECT coalesce(jsonb_agg(jsonb_build_object('ref_table', t.ref_table,
																				   'condition', t.condition,
																				   'unsubscribed', t.unsubscribe)
														 ORDER BY t.ref_table), '[]')
										FROM eventstream.producer_table t WHERE t.producer_url = p.producer_url)));
	PERFORM eventstream._mirror_statuses(p.producer_url, reply->'tables', reply->'keys');
	-- A table subscribed now under the producer's names must be able to
	-- match its rows on the producer's key.
	PERFORM eventstream._check_remote_key(pt.local_table, pt.remote_key)
	   FROM eventstream.producer_table pt
	  WHERE pt.producer_url = p.producer_url AND pt.ref_table = ANY (strict) AND pt.use_same_name
		AND pt.mapping IS NULL AND NOT pt.unsubscribe AND pt.remote_key IS NOT NULL;
	FOR t IN SELECT x FROM jsonb_array_elements(coalesce(reply->'tables', '[]')) x
			  WHERE jsonb_typeof(x->'error') = 'object' AND NOT coalesce((x->>'unsubscribed')::boolean, false)
			  ORDER BY x->>'ref_table' LOOP
		IF t->>'ref_table' = ANY (strict) THEN
			RAISE EXCEPTION 'producer "%": %', p.producer_url, t->'error'->>'message'
				USING ERRCODE = CASE WHEN t->'error'->>'code' ~ '^[0-9A-Z]{5}$' THEN t->'error'->>'code'
									 ELSE 'object_not_in_prerequisite_state' END;
		END IF;
		RAISE WARNING 'producer "%" cannot serve subscribed table "%"', p.producer_url, t->>'ref_table'
			USING DETAIL = (t->'error'->>'message') || '.',
				  HINT = 'Have the producer''s admin make it readable again, or unsubscribe from it with eventstream.unsubscribe().';
	END LOOP;
	RETURN reply;
END
$$;

-- Mirror what the producer says of the subscribed tables: their statuses
-- (tables), and the key columns of each (keys, {"schema.table": [...]},
-- NULL from a producer that does not say).
CREATE FUNCTION eventstream._mirror_statuses(producer_url text, tables jsonb, keys jsonb DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF jsonb_typeof(keys) = 'object' THEN
		UPDATE eventstream.producer_table t
		   SET remote_key = ARRAY(SELECT jsonb_array_elements_text(keys->t.ref_table))
		 WHERE t.producer_url = _mirror_statuses.producer_url AND jsonb_typeof(keys->t.ref_table) = 'array'
		   AND t.remote_key IS DISTINCT FROM ARRAY(SELECT jsonb_array_elements_text(keys->t.ref_table));
	END IF;
	UPDATE eventstream.producer_table t
		   SET status = x->>'status', readable = coalesce((x->>'readable')::boolean, true),
			   error = x->'error'->>'message',
			   -- Newly approved: copy the rows that exist (initial sync).
			   snapshot_pending = x->>'status' = 'Approved' AND NOT t.unsubscribe AND
				   (t.snapshot_pending OR (t.status <> 'Approved' AND t.initial_sync)),
			   snapshot_after = CASE WHEN x->>'status' = 'Approved' AND t.status <> 'Approved' THEN NULL
									 ELSE t.snapshot_after END,
			   snapshot_from = CASE WHEN x->>'status' = 'Approved' AND t.status <> 'Approved' THEN NULL
									ELSE t.snapshot_from END,
			   snapshot_error = CASE WHEN x->>'status' = 'Approved' AND t.status <> 'Approved' THEN NULL
									 ELSE t.snapshot_error END,
			   snapshot_failures = CASE WHEN x->>'status' = 'Approved' AND t.status <> 'Approved' THEN 0
										ELSE t.snapshot_failures END,
			   snapshot_retry_at = CASE WHEN x->>'status' = 'Approved' AND t.status <> 'Approved' THEN NULL
										ELSE t.snapshot_retry_at END
		  FROM jsonb_array_elements(coalesce(tables, '[]')) x
		 WHERE t.producer_url = _mirror_statuses.producer_url AND t.ref_table = x->>'ref_table'
		   AND (t.status, t.readable, t.error)
			   IS DISTINCT FROM (x->>'status', coalesce((x->>'readable')::boolean, true), x->'error'->>'message');
END
$$;

CREATE FUNCTION eventstream.add_producer(producer_url text, api_key text, api_secret text,
										 subscriber regrole, tables text[], initial_sync boolean DEFAULT true)
		RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	url text := rtrim(btrim(producer_url), '/');
	health jsonb;
	reply jsonb;
	name text;
	wire text;
BEGIN
	PERFORM eventstream._assert_admin('add_producer');
	IF url IS NULL OR url !~ '^https?://[^/\s]+$' THEN
		RAISE EXCEPTION 'invalid producer URL "%"', producer_url
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'A site URL looks like http://host:port or https://host, without a path.';
	END IF;
	IF coalesce(api_key, '') = '' OR coalesce(api_secret, '') = '' THEN
		RAISE EXCEPTION 'api_key and api_secret must be given' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'The producer''s admin makes them with eventstream.create_api_key().';
	END IF;
	IF subscriber IS NULL THEN
		RAISE EXCEPTION 'subscriber must be given' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = subscriber) THEN
		RAISE EXCEPTION 'subscriber "%" is a superuser', subscriber
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Updates are applied with the subscriber''s privileges: use a role that may write only the subscribed tables.';
	END IF;
	PERFORM eventstream._assert_unprivileged_role(subscriber, 'a subscriber');
	PERFORM eventstream._assert_may_grant(subscriber, 'apply updates as');
	IF EXISTS (SELECT 1 FROM eventstream.producer x WHERE x.producer_url = url) THEN
		RAISE EXCEPTION 'producer "%" is already added', url
			USING ERRCODE = 'duplicate_object',
				  HINT = 'Change it with eventstream.subscribe(), unsubscribe() or set_keys(), or remove it with eventstream.remove_producer().';
	END IF;
	INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor)
		VALUES (url, api_key, api_secret, subscriber, '00000000-0000-0000-0000-000000000000', '');
	FOREACH name IN ARRAY coalesce(tables, '{}') LOOP
		wire := eventstream._qualified(name);
		IF EXISTS (SELECT 1 FROM eventstream.producer_table t WHERE t.producer_url = url AND t.ref_table = wire) THEN
			RAISE EXCEPTION 'table "%" is listed twice', wire USING ERRCODE = 'invalid_parameter_value';
		END IF;
		INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, initial_sync)
			VALUES (url, wire, eventstream._local_table(wire, subscriber), coalesce(add_producer.initial_sync, true));
	END LOOP;

	-- Only now the network: the producer's identity, then registration.
	-- Nothing of the above is committed unless both succeed, and
	-- registering again later is harmless on the producer.
	health := (SELECT CASE WHEN r.status = 200 THEN r.body::jsonb END
				 FROM eventstream._http_request('GET', url || '/api/eventstream/v1/health', NULL, NULL, 30) r);
	IF health IS NULL OR health->>'site_id' IS NULL THEN
		RAISE EXCEPTION '"%" is not an eventstream site', url
			USING ERRCODE = 'connection_exception',
				  HINT = 'Check the URL, and that eventstream.http_port is set for the producer''s database.';
	END IF;
	IF (health->>'site_id')::uuid = (SELECT s.site_id FROM eventstream.site s) THEN
		RAISE EXCEPTION 'a site cannot subscribe to itself' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	reply := eventstream._push_subscriptions(url, ARRAY(SELECT t.ref_table FROM eventstream.producer_table t
														 WHERE t.producer_url = url));
	PERFORM eventstream._check_cursor(url, reply->>'cursor');
	UPDATE eventstream.producer x SET producer_site_id = (health->>'site_id')::uuid, cursor = reply->>'cursor'
	 WHERE x.producer_url = url;
	PERFORM eventstream._wake_worker();
END
$$;
COMMENT ON FUNCTION eventstream.add_producer(text, text, text, regrole, text[], boolean) IS
	'Register this site with a producer (over HTTP, before committing) and subscribe to its tables; they start Pending.  initial_sync: copy the rows that exist once approved.';

CREATE FUNCTION eventstream._producer_row(producer_url text) RETURNS eventstream.producer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = rtrim(btrim(_producer_row.producer_url), '/')
	   FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'producer "%" is not added', producer_url
			USING ERRCODE = 'undefined_object',
				  HINT = 'SELECT producer_url FROM eventstream.producer lists them; eventstream.add_producer() adds one.';
	END IF;
	RETURN p;
END
$$;

CREATE FUNCTION eventstream.subscribe(producer_url text, ref_table text, use_same_name boolean DEFAULT true,
									  mapping text DEFAULT NULL, condition text DEFAULT NULL,
									  initial_sync boolean DEFAULT true) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	wire text := eventstream._qualified(ref_table);
	m eventstream.document_type_mapping;
	tbl regclass;
BEGIN
	PERFORM eventstream._assert_admin('subscribe');
	p := eventstream._producer_row(producer_url);
	IF mapping IS NOT NULL THEN
		-- The mapping's remote table, written into its local table.
		SELECT * INTO m FROM eventstream.document_type_mapping x WHERE x.mapping_name = subscribe.mapping;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'mapping "%" does not exist', mapping USING ERRCODE = 'undefined_object',
				HINT = 'Create it with eventstream.create_mapping() and eventstream.map_field().';
		END IF;
		IF wire IS NOT NULL AND wire <> m.remote_table THEN
			RAISE EXCEPTION 'mapping "%" is for remote table "%", not "%"', mapping, m.remote_table, wire
				USING ERRCODE = 'invalid_parameter_value', HINT = 'Give ref_table => NULL or the mapping''s remote table.';
		END IF;
		wire := m.remote_table;
		tbl := eventstream._check_local_table(m.local_table, p.subscriber);
	ELSIF wire IS NULL THEN
		RAISE EXCEPTION 'ref_table must be given (or a mapping)' USING ERRCODE = 'null_value_not_allowed';
	ELSE
		tbl := eventstream._local_table(wire, p.subscriber);
	END IF;
	INSERT INTO eventstream.producer_table AS t (producer_url, ref_table, local_table, use_same_name, mapping, condition,
												 initial_sync)
		VALUES (p.producer_url, wire, tbl, coalesce(subscribe.use_same_name, true), subscribe.mapping,
				subscribe.condition, coalesce(subscribe.initial_sync, true))
		ON CONFLICT ON CONSTRAINT producer_table_pkey DO UPDATE
			SET unsubscribe = false, use_same_name = EXCLUDED.use_same_name, condition = EXCLUDED.condition,
				initial_sync = EXCLUDED.initial_sync, mapping = EXCLUDED.mapping, local_table = EXCLUDED.local_table,
				-- What changed while unsubscribed (or what a new condition admits,
				-- or what another mapping or local table lacks) is copied again.
				snapshot_pending = t.snapshot_pending OR (t.status = 'Approved' AND EXCLUDED.initial_sync
														   AND (t.unsubscribe OR t.condition IS DISTINCT FROM EXCLUDED.condition
																OR t.mapping IS DISTINCT FROM EXCLUDED.mapping
																OR t.local_table IS DISTINCT FROM EXCLUDED.local_table)),
				snapshot_after = CASE WHEN t.unsubscribe OR t.condition IS DISTINCT FROM EXCLUDED.condition
										   OR t.mapping IS DISTINCT FROM EXCLUDED.mapping
										   OR t.local_table IS DISTINCT FROM EXCLUDED.local_table
									  THEN NULL ELSE t.snapshot_after END,
				snapshot_from = CASE WHEN t.unsubscribe OR t.condition IS DISTINCT FROM EXCLUDED.condition
										  OR t.mapping IS DISTINCT FROM EXCLUDED.mapping
										  OR t.local_table IS DISTINCT FROM EXCLUDED.local_table
									 THEN NULL ELSE t.snapshot_from END,
				-- A failing copy is tried again at once.
				snapshot_error = NULL, snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL;
	PERFORM eventstream._push_subscriptions(p.producer_url, ARRAY[wire]);
	PERFORM eventstream._wake_worker();
END
$$;
COMMENT ON FUNCTION eventstream.subscribe(text, text, boolean, text, text, boolean) IS
	'Subscribe to one more table of a producer, or change a subscription (condition, naming, mapping); told to the producer at once.  mapping: subscribe to the mapping''s remote table and write into its local table.  initial_sync: copy the rows that exist once approved.';

CREATE FUNCTION eventstream.unsubscribe(producer_url text, ref_table text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	wire text := eventstream._qualified(ref_table);
BEGIN
	PERFORM eventstream._assert_admin('unsubscribe');
	p := eventstream._producer_row(producer_url);
	-- An initial sync under way (or failing) is dropped: subscribing again
	-- starts a new one.
	UPDATE eventstream.producer_table t
	   SET unsubscribe = true, snapshot_pending = false, snapshot_after = NULL, snapshot_from = NULL, snapshot_error = NULL,
		   snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL
	 WHERE t.producer_url = p.producer_url AND t.ref_table = wire;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table "%" is not subscribed from producer "%"', wire, p.producer_url
			USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM eventstream._push_subscriptions(p.producer_url);
END
$$;
COMMENT ON FUNCTION eventstream.unsubscribe(text, text) IS
	'Stop receiving a table from a producer (the producer stops serving it at once, and an initial sync under way is dropped); subscribe() resumes.';

CREATE FUNCTION eventstream.set_keys(producer_url text, api_key text, api_secret text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
BEGIN
	PERFORM eventstream._assert_admin('set_keys');
	p := eventstream._producer_row(producer_url);
	IF coalesce(api_key, '') = '' OR coalesce(api_secret, '') = '' THEN
		RAISE EXCEPTION 'api_key and api_secret must be given' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	UPDATE eventstream.producer x SET api_key = set_keys.api_key, api_secret = set_keys.api_secret, last_error = NULL
	 WHERE x.producer_url = p.producer_url;
	-- Proves the new key and moves the registration over to it.
	PERFORM eventstream._push_subscriptions(p.producer_url);
	PERFORM eventstream._wake_worker();
END
$$;
COMMENT ON FUNCTION eventstream.set_keys(text, text, text) IS
	'Replace the API key and secret used with a producer (checked with the producer before committing).';

CREATE FUNCTION eventstream.reset_cursor(producer_url text, initial_sync boolean DEFAULT true) RETURNS text
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	reply jsonb;
BEGIN
	PERFORM eventstream._assert_admin('reset_cursor');
	p := eventstream._producer_row(producer_url);
	-- Registering again answers where the producer has this consumer: what
	-- it acknowledged last, or now when it registers anew (after the
	-- producer's eventstream.remove_consumer()).
	reply := eventstream._push_subscriptions(p.producer_url);
	PERFORM eventstream._check_cursor(p.producer_url, reply->>'cursor');
	DELETE FROM eventstream.inbox i WHERE i.producer_url = p.producer_url;
	UPDATE eventstream.producer x
	   SET cursor = reply->>'cursor', last_error = NULL, last_error_at = NULL
	 WHERE x.producer_url = p.producer_url;
	-- What was missed meanwhile is copied again from the rows as they are,
	-- and the rows this producer gave that it no longer has are deleted.
	IF coalesce(initial_sync, true) THEN
		UPDATE eventstream.producer_table t
		   SET snapshot_pending = true, snapshot_after = NULL, snapshot_from = NULL, snapshot_error = NULL,
			   snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL
		 WHERE t.producer_url = p.producer_url AND t.status = 'Approved' AND NOT t.unsubscribe;
	END IF;
	PERFORM eventstream._wake_worker();
	RETURN reply->>'cursor';
END
$$;
COMMENT ON FUNCTION eventstream.reset_cursor(text, boolean) IS
	'Start pulling from a producer again at the position it has for this site (after it refused the stored cursor), dropping pages waiting in the inbox; initial_sync: copy the subscribed tables'' rows again, deleting those the producer no longer has.  Returns the new cursor.';

-- Pull from a producer from cursor on, dropping the pages waiting in the
-- inbox, and copy its approved tables again, deleting the rows it gave
-- that it no longer has (see _apply_snapshot_page).
CREATE FUNCTION eventstream._restart_from(producer_url text, cursor text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.inbox i WHERE i.producer_url = _restart_from.producer_url;
	UPDATE eventstream.producer x
	   SET cursor = _restart_from.cursor, last_pull_at = now(), last_success_at = now(), last_error = NULL,
		   last_error_at = NULL, behind = false
	 WHERE x.producer_url = _restart_from.producer_url;
	UPDATE eventstream.producer_table t
	   SET snapshot_pending = true, snapshot_after = NULL, snapshot_from = NULL, snapshot_error = NULL,
		   snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL
	 WHERE t.producer_url = _restart_from.producer_url AND t.status = 'Approved' AND NOT t.unsubscribe;
	RAISE LOG 'eventstream: producer "%" cannot serve this site from its stored cursor: its approved tables are copied again',
		producer_url;
END
$$;

CREATE FUNCTION eventstream.remove_producer(producer_url text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
BEGIN
	PERFORM eventstream._assert_admin('remove_producer');
	p := eventstream._producer_row(producer_url);
	-- Tell the producer to stop serving us, if it can be reached.
	BEGIN
		UPDATE eventstream.producer_table t SET unsubscribe = true WHERE t.producer_url = p.producer_url;
		PERFORM eventstream._push_subscriptions(p.producer_url);
	EXCEPTION WHEN OTHERS THEN
		RAISE WARNING 'could not tell producer "%" to stop serving this site: %', p.producer_url, SQLERRM
			USING HINT = 'Its admin can remove this consumer with eventstream.remove_consumer().';
	END;
	DELETE FROM eventstream.producer x WHERE x.producer_url = p.producer_url;
	PERFORM eventstream._wake_worker();
END
$$;
COMMENT ON FUNCTION eventstream.remove_producer(text) IS
	'Stop pulling from a producer and forget its subscriptions (the sync log and remote names are kept).';

-- How long a healthy link to a producer may stay silent: the worker's
-- long-poll (wait=25, src/consumer/pull.c) is answered within 25 seconds, and every
-- answer applied sets last_success_at.  Silence for longer means the
-- producer does not answer (a request hangs until it times out after 55
-- seconds), or this site's worker is not pulling.
CREATE FUNCTION eventstream._silence_allowed() RETURNS interval
	LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT interval '40 seconds' $$;

CREATE VIEW eventstream.producer_status AS
SELECT p.producer_url,
	   s.state,
	   (SELECT coalesce(sum(jsonb_array_length(i.page)), 0) FROM eventstream.inbox i
		 WHERE i.producer_url = p.producer_url) AS updates_received_not_applied,
	   p.behind AS more_waiting_on_producer,
	   -- While more is waiting: how old the newest update received is.
	   -- Otherwise the consumer was caught up at its last success: 0 while
	   -- the link is healthy, else the time since that success (updates
	   -- made since then may be waiting unseen).
	   CASE WHEN s.behind THEN now() - coalesce(p.last_update_at, p.created_at)
			WHEN s.state IN ('streaming', 'disabled') THEN interval '0'
			ELSE now() - coalesce(p.last_success_at, p.created_at) END AS lag,
	   now() - p.last_success_at AS since_last_success,
	   p.last_pull_at,
	   p.last_success_at,
	   p.last_error,
	   p.last_error_at,
	   p.synced_count,
	   s.failed_now,
	   (SELECT count(*) FROM eventstream.producer_table t WHERE t.producer_url = p.producer_url AND t.status = 'Approved'
		   AND NOT t.unsubscribe) AS tables_approved,
	   (SELECT count(*) FROM eventstream.producer_table t WHERE t.producer_url = p.producer_url AND t.status = 'Pending'
		   AND NOT t.unsubscribe) AS tables_pending,
	   s.copies_failing,
	   -- What needs someone's attention, or NULL.
	   nullif(concat_ws('; ',
			CASE s.state WHEN 'failing' THEN 'pulls fail: see last_error'
						 WHEN 'stalled' THEN 'no answer from the producer for longer than a long-poll lasts' END,
			CASE WHEN s.failed_now > 0
				 THEN s.failed_now || ' failed update(s): see eventstream.sync_log WHERE status = ''Failed'', '
					  || 'then SELECT eventstream.resync(id)' END,
			CASE WHEN s.copies_failing > 0
				 THEN s.copies_failing || ' initial sync(s) failing: see eventstream.producer_table.snapshot_error' END),
			'') AS attention,
	   -- Progress: the updates the producer said were waiting after the
	   -- last page, and the initial syncs under way.
	   p.updates_behind,
	   c.copying,
	   c.rows_copied,
	   c.rows_estimate
  FROM eventstream.producer p,
	   -- (A copy that has no page applied yet has copied nothing: the
	   -- counts of an earlier copy of the table are not shown.)
	   LATERAL (SELECT string_agg(format('%s: %s of %s rows', t.ref_table, t.copied,
										 coalesce('~' || t.snapshot_estimate, 'unknown')), ', ' ORDER BY t.ref_table) AS copying,
					   sum(t.copied)::bigint AS rows_copied,
					   sum(t.snapshot_estimate)::bigint AS rows_estimate
				  FROM (SELECT t.ref_table,
							   CASE WHEN t.snapshot_after IS NOT NULL THEN t.snapshot_estimate END AS snapshot_estimate,
							   CASE WHEN t.snapshot_after IS NULL THEN 0 ELSE coalesce(t.snapshot_rows, 0) END AS copied
						  FROM eventstream.producer_table t
						 WHERE t.producer_url = p.producer_url AND t.snapshot_pending AND NOT t.unsubscribe) t) c,
	   LATERAL (SELECT CASE WHEN NOT p.enabled THEN 'disabled'
							WHEN p.last_error IS NOT NULL THEN 'failing'
							WHEN coalesce(p.last_success_at, p.created_at) < now() - eventstream._silence_allowed()
							THEN 'stalled'
							WHEN p.last_success_at IS NULL THEN 'starting'
							ELSE 'streaming' END AS state,
					   p.behind OR EXISTS (SELECT 1 FROM eventstream.inbox i WHERE i.producer_url = p.producer_url) AS behind,
					   (SELECT count(*) FROM eventstream.sync_log l
						 WHERE l.producer_url = p.producer_url AND l.status = 'Failed') AS failed_now,
					   (SELECT count(*) FROM eventstream.producer_table t
						 WHERE t.producer_url = p.producer_url AND t.snapshot_pending
						   AND t.snapshot_error IS NOT NULL) AS copies_failing) s;
COMMENT ON VIEW eventstream.producer_status IS
	'Per producer: state (starting, streaming, failing, stalled, disabled), lag (updates received but not applied, whether more is waiting, and how long updates may have waited unseen), last success and error, failed updates, initial syncs failing (producer_table.snapshot_error), what needs attention, and progress (updates_behind: waiting on the producer after the last page; copying, rows_copied, rows_estimate: the initial syncs under way).';
