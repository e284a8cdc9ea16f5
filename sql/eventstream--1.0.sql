-- eventstream--1.0.sql: the install script of version 1.0, kept as make built it from the
-- SQL_PARTS at commit 09db11d (only this header differs).  Never edit it: version 1.1 is built
-- from the parts, and eventstream--1.0--1.1.sql updates an installed 1.0 to it.

/*-------------------------------------------------------------------------
 *
 * site.sql
 *	  The site itself: what CREATE EXTENSION does first, the site's identity,
 *	  and waking its worker.
 *
 * The script refuses to run unless the library is preloaded (its background
 * workers can only be registered from there); this database's site worker
 * starts when CREATE EXTENSION commits, and _wake_worker() wakes it when
 * subscriptions or producers change.  eventstream.site holds the site_id
 * every log and registration carries.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eventstream" to load this file. \quit

/*
 * Objects whose name starts with "_" are private: they may change between
 * versions and are not granted to PUBLIC.  Every public object has a
 * COMMENT.  All functions run with a fixed search_path.
 */

CREATE FUNCTION eventstream._assert_preloaded() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_assert_preloaded';
SELECT eventstream._assert_preloaded();

-- This database's worker starts when CREATE EXTENSION commits.
CREATE FUNCTION eventstream._start_worker() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_start_worker';
SELECT eventstream._start_worker();

CREATE TABLE eventstream.site (
	singleton		boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	site_id			uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_prune_at	timestamptz,
	pruned_below	bigint
);
INSERT INTO eventstream.site DEFAULT VALUES;
COMMENT ON TABLE eventstream.site IS
	'This site: its stable site_id (made at CREATE EXTENSION, used to prevent loops) and update-log pruning state.';

CREATE FUNCTION eventstream._wake_worker() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_wake_worker';

/*-------------------------------------------------------------------------
 *
 * tables.sql
 *	  Tables and rows as both sides name them.
 *
 * A table travels as its schema-qualified wire name, a row as its docname:
 * the text of its primary key, rendered here in SQL exactly as the capture
 * trigger renders it in C.  Helpers of the producer and of the consumer.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- A table name as the wire has it: schema-qualified.
CREATE FUNCTION eventstream._qualified(name text) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN position('.' IN btrim(name)) > 0 THEN btrim(name) ELSE 'public.' || btrim(name) END
$$;

-- The wire name of a table: schema-qualified, quoted only where needed.
CREATE FUNCTION eventstream._wire_name(tbl regclass) RETURNS text
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('%I.%I', n.nspname, c.relname)
	  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
	 WHERE c.oid = tbl
$$;

-- Primary key columns of tbl in key order (empty when there is none), as
-- an ordinary 1-based array (int2vector casts to a 0-based one).
CREATE FUNCTION eventstream._pk_attnums(tbl regclass) RETURNS int2[]
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce((SELECT ARRAY(SELECT unnest(i.indkey::int2[])) FROM pg_index i
					  WHERE i.indrelid = tbl AND i.indisprimary), '{}')
$$;

CREATE FUNCTION eventstream._pk_names(tbl regclass) RETURNS text[]
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT array_agg(a.attname::text ORDER BY x.ord)
	  FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY x(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = x.attnum
$$;

-- Resolve a table named by a user or a consumer; errors say what is wrong.
CREATE FUNCTION eventstream._resolve_table(name text) RETURNS regclass
	LANGUAGE plpgsql STABLE
AS $$
DECLARE
	tbl regclass;
	kind "char";
BEGIN
	IF name IS NULL OR btrim(name) = '' THEN
		RAISE EXCEPTION 'table name must not be empty' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	BEGIN
		tbl := to_regclass(name);
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'invalid table name "%"', name USING ERRCODE = 'invalid_name';
	END;
	IF tbl IS NULL THEN
		RAISE EXCEPTION 'table "%" does not exist', name USING ERRCODE = 'undefined_table';
	END IF;
	SELECT c.relkind INTO kind FROM pg_catalog.pg_class c WHERE c.oid = tbl;
	IF kind = 'p' THEN
		RAISE EXCEPTION 'partitioned table "%" cannot be streamed', name
			USING ERRCODE = 'feature_not_supported',
				  HINT = 'Stream its partitions, or a plain table.';
	ELSIF kind <> 'r' THEN
		RAISE EXCEPTION '"%" is not a table', name USING ERRCODE = 'wrong_object_type';
	END IF;
	RETURN tbl;
END
$$;

-- The base type of a type (itself unless a domain).
CREATE FUNCTION eventstream._base_type(typ oid) RETURNS oid
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE d(t, b) AS (
		SELECT y.oid, y.typbasetype FROM pg_type y WHERE y.oid = typ
		UNION ALL
		SELECT y.oid, y.typbasetype FROM pg_type y JOIN d ON y.oid = d.b)
	SELECT d.t FROM d WHERE d.b = 0
$$;

-- An SQL expression for the docname of the row aliased alias of tbl,
-- rendered exactly as the capture trigger renders it (es_docname): one key
-- column is its text (output function; date/time types in ISO 8601), several
-- a compact JSON array in which booleans and finite numbers are bare and
-- every other value (arrays, composites, text, ...) is a JSON string of its
-- text.  to_jsonb(row) would not do: it renders arrays and composites as
-- JSON arrays and objects, which their input functions do not read back.
CREATE FUNCTION eventstream._docname_sql(tbl regclass, alias text) RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN count(*) = 1
				THEN min(CASE WHEN x.base IN ('date'::regtype, 'time'::regtype, 'timetz'::regtype,
											 'timestamp'::regtype, 'timestamptz'::regtype)
							  THEN format('(pg_catalog.to_jsonb(%s) OPERATOR(pg_catalog.#>>) ''{}'')', x.col)
							  ELSE format('pg_catalog.format(''%%s'', %s)', x.col) END)
				ELSE '(''['' || ' || string_agg(format('COALESCE(%s, ''null'')',
					CASE WHEN x.base = 'bool'::regtype
						 THEN format('CASE WHEN %s THEN ''true'' ELSE ''false'' END', x.col)
						 WHEN x.base IN ('int2'::regtype, 'int4'::regtype, 'int8'::regtype, 'float4'::regtype,
										 'float8'::regtype, 'numeric'::regtype)
						 THEN format('(SELECT CASE WHEN v OPERATOR(pg_catalog.~) ''^[-+0-9.eE]+$'' THEN v'
									 ' ELSE pg_catalog.to_json(v)::text END FROM (SELECT pg_catalog.format(''%%s'', %s)) n(v))',
									 x.col)
						 WHEN x.base IN ('date'::regtype, 'time'::regtype, 'timetz'::regtype,
										 'timestamp'::regtype, 'timestamptz'::regtype)
						 THEN format('pg_catalog.to_jsonb(%s)::text', x.col)
						 ELSE format('pg_catalog.to_json(pg_catalog.format(''%%s'', %s))::text', x.col) END),
					' || '','' || ' ORDER BY x.ord) || ' || '']'')' END
	  FROM (SELECT k.ord, format('%s.%I', alias, a.attname) AS col, eventstream._base_type(a.atttypid)::regtype AS base
			  FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY AS k(attnum, ord)
			  JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum) x
$$;

-- The docname of a row given as jsonb in the update log's rendering (as
-- captured or served: arrays, composites and the like as their text),
-- primary key in key order.
CREATE FUNCTION eventstream._docname_of(tbl regclass, row_data jsonb) RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN cardinality(k) = 1 THEN row_data->>(SELECT a.attname FROM pg_attribute a
															 WHERE a.attrelid = tbl AND a.attnum = k[1])
				-- compact, as the capture trigger writes it: ["INV-1",2]
				ELSE (SELECT '[' || string_agg((row_data->a.attname)::text, ',' ORDER BY x.ord) || ']'
						FROM unnest(k) WITH ORDINALITY x(attnum, ord)
						JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = x.attnum) END
	  FROM eventstream._pk_attnums(tbl) k
$$;

/*-------------------------------------------------------------------------
 *
 * update_log.sql
 *	  Producer side: the Event Update Log, and the ticks that cut a long
 *	  backlog into windows.
 *
 * The capture trigger writes one log per change of a subscribed document,
 * with an id drawn from the sequence in blocks; serving reads a window of
 * logs from a low bound of the ids not yet committed, kept in shared
 * memory.  The site worker records ticks while logs are written.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The sequence hands out blocks of ids, not ids (src/producer/logids.c); the id
-- column has no default.
CREATE SEQUENCE eventstream.update_log_id_seq;
CREATE TABLE eventstream.update_log (
	id			bigint PRIMARY KEY,
	update_type	text NOT NULL CHECK (update_type IN ('Create', 'Update', 'Delete')),
	ref_table	text NOT NULL,
	docname		text NOT NULL,
	data		jsonb,
	txid		xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
	origin		uuid,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER SEQUENCE eventstream.update_log_id_seq OWNED BY eventstream.update_log.id;
-- Every index here is paid for by every captured row: the primary key is
-- the only one.  Serving finds where a window starts from a low bound kept
-- in shared memory (src/producer/logids.c), not from an index on txid.
COMMENT ON TABLE eventstream.update_log IS
	'Event Update Log: one row per Create, Update (four-key diff) or Delete of a subscribed document, written by the capture trigger in the changing transaction.';
COMMENT ON COLUMN eventstream.update_log.txid IS
	'Top-level transaction that wrote the log; delivery follows commit order through snapshots of it.';
COMMENT ON COLUMN eventstream.update_log.origin IS
	'site_id of the site the change was applied from, NULL for a local change; never served back to that site.';

CREATE FUNCTION eventstream._log_low_bound(seq regclass, seq_next bigint) RETURNS bigint
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_log_low_bound';

-- Lower bound of the ids of logs not yet committed (NULL: unknown right
-- now).  Take it before the snapshot it goes with.
CREATE FUNCTION eventstream._low_bound() RETURNS bigint
	LANGUAGE sql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT eventstream._log_low_bound('eventstream.update_log_id_seq',
									  (SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END
										 FROM eventstream.update_log_id_seq s))
$$;

-- Ticks (the PgQ idea): snapshots the site worker records while logs are
-- written, a second after the first commit since the last one or as soon
-- as about 4000 logs were committed, each with the update log's position.
-- A consumer far behind takes its backlog in windows that end at ticks, of
-- about eventstream._window_logs() logs each, instead of one window up to
-- now (see _pull_page): each window is applied in a transaction of its
-- own, so a consumer catching up after days offline applies as it goes,
-- and a window of small transactions fits in one of its pages (10000), so
-- it is applied as it arrives rather than staged in the inbox.
CREATE TABLE eventstream.tick (
	tick_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	snap			pg_snapshot NOT NULL,
	low				bigint NOT NULL,		-- a lower bound of the ids not visible in snap
	max_id			bigint NOT NULL,		-- the largest log id when it was taken
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE eventstream.tick IS
	'Snapshots taken while logs are written (a second after a commit, or every 4000 logs or so); a consumer far behind is served windows that end at them.';

-- Record a tick, if logs were written since the last one (called by the
-- site worker).  The low bound is taken before the snapshot.
CREATE FUNCTION eventstream._tick() RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	low bigint := eventstream._low_bound();
	snap pg_snapshot := pg_current_snapshot();
	top bigint := (SELECT max(l.id) FROM eventstream.update_log l);
BEGIN
	-- Without a bound now (a transaction is drawing its first id), the
	-- previous tick's will do: any log not visible in this later snapshot
	-- was not visible in that one either.  Without one, no tick this time.
	low := coalesce(low, (SELECT t.low FROM eventstream.tick t ORDER BY t.tick_id DESC LIMIT 1));
	IF low IS NOT NULL AND
	   top > coalesce((SELECT t.max_id FROM eventstream.tick t ORDER BY t.tick_id DESC LIMIT 1), 0) THEN
		INSERT INTO eventstream.tick (snap, low, max_id) VALUES (snap, low, top);
	END IF;
END
$$;

-- About how many logs a window of a consumer far behind holds.
CREATE FUNCTION eventstream._window_logs() RETURNS bigint
	LANGUAGE sql IMMUTABLE
AS $$ SELECT 8000::bigint $$;

/*-------------------------------------------------------------------------
 *
 * document.sql
 *	  Producer side: what a document is.
 *
 * A document is a row of a subscribed table with the rows of its
 * registered child tables; dynamic links name the table of the document a
 * column refers to.  _document() reads one whole document (in C);
 * add_child_table(), remove_child_table() and add_dynamic_link() are the
 * public API, and dropped tables are forgotten by an event trigger.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.child_table (
	child		regclass PRIMARY KEY,
	parent		regclass NOT NULL,
	fk_name		name NOT NULL
);
COMMENT ON TABLE eventstream.child_table IS
	'Child tables: their rows are part of the parent''s document, found through foreign key fk_name.';

CREATE TABLE eventstream.dynamic_link (
	tbl			regclass NOT NULL,
	type_column	name NOT NULL,
	key_column	name NOT NULL,
	PRIMARY KEY (tbl, key_column)
);
COMMENT ON TABLE eventstream.dynamic_link IS
	'Dynamic links: key_column holds the docname of a row of the table named in type_column.';

CREATE FUNCTION eventstream._document(tbl regclass, docname text) RETURNS jsonb
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_document';

-- Child FK columns of the registered foreign key, in parent key order, as
-- "3,1": the form the capture trigger takes.  NULL if the key is gone.
CREATE FUNCTION eventstream._fk_attnums(child regclass, parent regclass, fk_name name) RETURNS text
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(con.conkey[k]::text, ',' ORDER BY p.ord)
	  FROM pg_constraint con
	 CROSS JOIN LATERAL unnest(eventstream._pk_attnums(parent)) WITH ORDINALITY AS p(attnum, ord)
	 CROSS JOIN LATERAL generate_subscripts(con.confkey, 1) AS k
	 WHERE con.conrelid = child AND con.conname = fk_name AND con.contype = 'f'
	   AND con.confrelid = parent AND con.confkey[k] = p.attnum
$$;

-- Query returning the child rows of the parent whose docname is $1.
CREATE FUNCTION eventstream._child_rows_query(child regclass, parent regclass) RETURNS text
	LANGUAGE plpgsql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	fk int2[] := string_to_array(eventstream._fk_attnums(child, parent, (SELECT c.fk_name FROM eventstream.child_table c WHERE c.child = $1)), ',')::int2[];
	pk int2[] := eventstream._pk_attnums(child);
	cond text;
	ord text;
BEGIN
	SELECT string_agg(CASE WHEN cardinality(fk) = 1
						   THEN format('%I OPERATOR(pg_catalog.=) $1::%s', a.attname, format_type(a.atttypid, a.atttypmod))
						   ELSE format('%I OPERATOR(pg_catalog.=) ($1::pg_catalog.jsonb OPERATOR(pg_catalog.->>) %s)::%s',
									   a.attname, f.ord - 1, format_type(a.atttypid, a.atttypmod)) END,
					  ' AND ' ORDER BY f.ord)
	  INTO cond
	  FROM unnest(fk) WITH ORDINALITY AS f(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = child AND a.attnum = f.attnum;
	SELECT string_agg(quote_ident(a.attname), ', ' ORDER BY k.ord) INTO ord
	  FROM unnest(pk) WITH ORDINALITY AS k(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = child AND a.attnum = k.attnum;
	RETURN format('SELECT * FROM ONLY %s WHERE %s ORDER BY %s', child, cond, ord);
END
$$;

-- Forget child tables and dynamic links of dropped tables; the DELETE
-- resyncs the capture triggers of their parents.
CREATE FUNCTION eventstream._on_sql_drop() RETURNS event_trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	gone oid[];
BEGIN
	SELECT array_agg(d.objid) INTO gone
	  FROM pg_event_trigger_dropped_objects() d
	 WHERE d.classid = 'pg_class'::regclass AND d.objsubid = 0 AND d.object_type = 'table';
	IF gone IS NULL THEN
		RETURN;
	END IF;
	DELETE FROM eventstream.child_table c WHERE c.child::oid = ANY (gone) OR c.parent::oid = ANY (gone);
	DELETE FROM eventstream.dynamic_link l WHERE l.tbl::oid = ANY (gone);
END
$$;
CREATE EVENT TRIGGER eventstream_sql_drop ON sql_drop
	EXECUTE FUNCTION eventstream._on_sql_drop();

CREATE FUNCTION eventstream.add_child_table(parent regclass, child regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	fk name;
	existing regclass;
BEGIN
	IF parent IS NULL OR child IS NULL THEN
		RAISE EXCEPTION 'parent and child must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM eventstream._resolve_table(parent::text);
	PERFORM eventstream._resolve_table(child::text);
	IF parent = child THEN
		RAISE EXCEPTION 'a table cannot be its own child table' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	IF cardinality(eventstream._pk_attnums(parent)) = 0 THEN
		RAISE EXCEPTION 'table "%" has no primary key', eventstream._wire_name(parent)
			USING ERRCODE = 'invalid_table_definition';
	END IF;
	IF cardinality(eventstream._pk_attnums(child)) = 0 THEN
		RAISE EXCEPTION 'table "%" has no primary key', eventstream._wire_name(child)
			USING ERRCODE = 'invalid_table_definition',
				  HINT = 'Child rows are identified by their own primary key in diffs.';
	END IF;
	IF EXISTS (SELECT 1 FROM eventstream.child_table c WHERE c.child = add_child_table.parent) THEN
		RAISE EXCEPTION 'table "%" is itself a child table', eventstream._wire_name(parent)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Documents have one level of child tables.';
	END IF;
	IF EXISTS (SELECT 1 FROM eventstream.child_table c WHERE c.parent = add_child_table.child) THEN
		RAISE EXCEPTION 'table "%" has child tables of its own', eventstream._wire_name(child)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Documents have one level of child tables.';
	END IF;
	SELECT c.parent INTO existing FROM eventstream.child_table c WHERE c.child = add_child_table.child;
	IF FOUND AND existing <> add_child_table.parent THEN
		RAISE EXCEPTION 'table "%" is already a child table of "%"', eventstream._wire_name(child), eventstream._wire_name(existing)
			USING ERRCODE = 'duplicate_object';
	END IF;
	IF EXISTS (SELECT 1 FROM eventstream.consumer_table ct
				WHERE ct.ref_table = eventstream._wire_name(child)) THEN
		RAISE EXCEPTION 'table "%" has subscriptions of its own', eventstream._wire_name(child)
			USING ERRCODE = 'object_in_use',
				  HINT = 'A child table travels inside its parent''s documents and cannot be subscribed to directly.';
	END IF;

	-- The foreign key from child to the parent's whole primary key.
	SELECT con.conname INTO fk
	  FROM pg_constraint con
	 WHERE con.contype = 'f' AND con.conrelid = add_child_table.child AND con.confrelid = add_child_table.parent
	   AND (SELECT array_agg(x ORDER BY x) FROM unnest(con.confkey) x)
		   = (SELECT array_agg(x ORDER BY x) FROM unnest(eventstream._pk_attnums(add_child_table.parent)) x)
	 ORDER BY con.conname
	 LIMIT 1;
	IF fk IS NULL THEN
		RAISE EXCEPTION 'table "%" has no foreign key to the primary key of "%"',
			eventstream._wire_name(child), eventstream._wire_name(parent)
			USING ERRCODE = 'invalid_foreign_key',
				  HINT = 'Add a FOREIGN KEY from the child rows to the parent''s primary key (ideally ON DELETE CASCADE).';
	END IF;

	INSERT INTO eventstream.child_table (child, parent, fk_name) VALUES (add_child_table.child, add_child_table.parent, fk)
		ON CONFLICT ON CONSTRAINT child_table_pkey DO UPDATE SET fk_name = EXCLUDED.fk_name;
END
$$;
COMMENT ON FUNCTION eventstream.add_child_table(regclass, regclass) IS
	'Make child''s rows part of parent''s documents (nested under the child''s table name); child needs a foreign key to parent''s primary key.';

CREATE FUNCTION eventstream.remove_child_table(child regclass) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.child_table c WHERE c.child = remove_child_table.child;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table "%" is not a registered child table', child USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION eventstream.remove_child_table(regclass) IS
	'Stop treating child''s rows as part of their parent''s documents.';

CREATE FUNCTION eventstream.add_dynamic_link(tbl regclass, type_column name, key_column name) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col name;
BEGIN
	IF tbl IS NULL OR type_column IS NULL OR key_column IS NULL THEN
		RAISE EXCEPTION 'tbl, type_column and key_column must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	PERFORM eventstream._resolve_table(tbl::text);
	FOREACH col IN ARRAY ARRAY[type_column, key_column] LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a
						WHERE a.attrelid = tbl AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'column "%" of table "%" does not exist', col, eventstream._wire_name(tbl)
				USING ERRCODE = 'undefined_column';
		END IF;
	END LOOP;
	IF type_column = key_column THEN
		RAISE EXCEPTION 'type_column and key_column must differ' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO eventstream.dynamic_link (tbl, type_column, key_column)
		VALUES (tbl, type_column, key_column)
		ON CONFLICT ON CONSTRAINT dynamic_link_pkey DO UPDATE SET type_column = EXCLUDED.type_column;
END
$$;
COMMENT ON FUNCTION eventstream.add_dynamic_link(regclass, name, name) IS
	'Register a dynamic link: key_column holds the docname of a row of the table named in type_column.';

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
 * Part of the install script eventstream--1.0.sql: the Makefile builds
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
	sent_tables_page bigint
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

-- Conditioned subscriptions only.  consumer_document: whether a consumer
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
	'Documents of conditioned subscriptions: each change of whether the consumer holds one (served: held; served a Delete when it stopped matching: not held), with the pull that made it; the latest counts.';
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

CREATE FUNCTION eventstream._check_condition(tbl regclass, condition text) RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_check_condition';

CREATE FUNCTION eventstream._condition_allows(consumer text, tbl regclass, ref_table text,
		condition text, role regrole, docname text, log jsonb) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_condition_allows';

-- A table that can be subscribed to: it exists, has a primary key and is
-- not registered as a child table.
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
		RAISE EXCEPTION 'table "%" cannot be streamed', eventstream._wire_name(tbl)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'System, temporary and eventstream''s own tables cannot be subscribed to.';
	END IF;
	IF cardinality(eventstream._pk_attnums(tbl)) = 0 THEN
		RAISE EXCEPTION 'table "%" has no primary key', eventstream._wire_name(tbl)
			USING ERRCODE = 'invalid_table_definition',
				  HINT = 'eventstream identifies documents by their primary key; add one.';
	END IF;
	SELECT c.parent INTO parent FROM eventstream.child_table c WHERE c.child = tbl;
	IF FOUND THEN
		RAISE EXCEPTION 'table "%" is a child table of "%"', eventstream._wire_name(tbl), eventstream._wire_name(parent)
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Subscribe to the parent table; child rows travel inside its documents.';
	END IF;
	RETURN tbl;
END
$$;

-- A subscribable table named on the wire: schema-qualified, or a bare name
-- meaning public (never resolved along search_path).
CREATE FUNCTION eventstream._wire_table(name text) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	qualified text := name;
BEGIN
	BEGIN
		IF cardinality(parse_ident(name)) = 1 THEN
			qualified := 'public.' || name;
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'invalid table name "%"', name USING ERRCODE = 'invalid_name';
	END;
	RETURN eventstream._subscribable_table(qualified);
END
$$;

-- The wire name a consumer's table name stands for, whether or not such a
-- table exists now (a subscribed table may have been dropped or renamed
-- since): schema-qualified, a bare name meaning public, quoted only where
-- needed, as _wire_name() gives it.  NULL when the name cannot be read
-- that way; _wire_table() then says what is wrong with it.
CREATE FUNCTION eventstream._wire_table_name(name text) RETURNS text
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[];
BEGIN
	BEGIN
		parts := parse_ident(name);
	EXCEPTION WHEN OTHERS THEN
		RETURN NULL;
	END;
	IF cardinality(parts) = 1 THEN
		parts := ARRAY['public'] || parts;
	END IF;
	RETURN CASE WHEN cardinality(parts) = 2 THEN format('%I.%I', parts[1], parts[2]) END;
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
		WHEN c.relkind <> 'r' THEN
			jsonb_build_object('code', '42809', 'message', format('"%s" is not a table', ref_table))
		WHEN NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) THEN
			jsonb_build_object('code', '42P16', 'message', format('table "%s" has no primary key', ref_table))
		WHEN NOT has_table_privilege(role, c.oid, 'SELECT') THEN
			jsonb_build_object('code', '42501', 'message', format('role "%s" cannot read table "%s"', role, ref_table))
	END
	  FROM (SELECT to_regclass(ref_table) AS tbl) x
	  LEFT JOIN pg_class c ON c.oid = x.tbl
$$;

-- Canonical wire name for a table name given by a user: the existing
-- table's wire name, or the text itself for a table that is gone.
CREATE FUNCTION eventstream._canonical_table_name(name text) RETURNS text
	LANGUAGE plpgsql STABLE
AS $$
DECLARE
	tbl regclass;
BEGIN
	BEGIN
		tbl := to_regclass(name);
	EXCEPTION WHEN OTHERS THEN
		tbl := NULL;
	END;
	RETURN coalesce(eventstream._wire_name(tbl), name);
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

CREATE FUNCTION eventstream._set_status(consumer_url text, ref_table text, status text) RETURNS void
	LANGUAGE plpgsql
AS $$
BEGIN
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
END
$$;

CREATE FUNCTION eventstream.approve(consumer_url text, ref_table text) RETURNS void
	LANGUAGE sql
	BEGIN ATOMIC
		SELECT eventstream._set_status(consumer_url, ref_table, 'Approved');
	END;
COMMENT ON FUNCTION eventstream.approve(text, text) IS
	'Approve a consumer''s subscription to a table: its changes are logged and served from now on.';

CREATE FUNCTION eventstream.reject(consumer_url text, ref_table text) RETURNS void
	LANGUAGE sql
	BEGIN ATOMIC
		SELECT eventstream._set_status(consumer_url, ref_table, 'Rejected');
	END;
COMMENT ON FUNCTION eventstream.reject(text, text) IS
	'Reject a consumer''s subscription to a table: nothing written after the rejection is served to it; what was written before it (committed before it, or earlier in the same transaction) still is.';

CREATE FUNCTION eventstream.remove_consumer(consumer_url text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.consumer c WHERE c.consumer_url = remove_consumer.consumer_url;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'consumer "%" is not registered', consumer_url USING ERRCODE = 'undefined_object';
	END IF;
	DELETE FROM eventstream.served_page x WHERE x.consumer_url = remove_consumer.consumer_url;
	DELETE FROM eventstream.consumer_document x WHERE x.consumer_url = remove_consumer.consumer_url;
	DELETE FROM eventstream.withheld x WHERE x.consumer_url = remove_consumer.consumer_url;
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
		-- Only a table the consumer starts to receive must be readable: one
		-- whose privilege was revoked later is not served (and can still
		-- be unsubscribed, or kept while other tables change).
		IF NOT has_table_privilege(c.role, tbl, 'SELECT')
		   AND NOT coalesce((item->>'unsubscribed')::boolean, false)
		   AND NOT EXISTS (SELECT 1 FROM eventstream.consumer_table x
							WHERE x.consumer_url = url AND x.ref_table = eventstream._wire_name(tbl)
							  AND NOT x.unsubscribed) THEN
			RAISE EXCEPTION 'role "%" cannot read table "%"', c.role, eventstream._wire_name(tbl)
				USING ERRCODE = 'insufficient_privilege',
					  HINT = 'GRANT SELECT on the table to the role of the consumer''s API key.';
		END IF;
		cond := eventstream._check_condition(tbl, item->>'condition');
		name := eventstream._wire_name(tbl);
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
						  AND ct.condition IS NOT NULL AND NOT ct.unsubscribed);

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
												 'readable', coalesce(has_table_privilege(c.role, to_regclass(ct.ref_table), 'SELECT'), false))
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
	  FROM (SELECT ct.ref_table, eventstream._pk_names(to_regclass(ct.ref_table)) AS key
			  FROM eventstream.consumer_table ct
			  JOIN eventstream.consumer c ON c.consumer_url = ct.consumer_url
			 WHERE ct.consumer_url = _consumer_keys.consumer_url AND NOT ct.unsubscribed
			   AND coalesce(has_table_privilege(c.role, to_regclass(ct.ref_table), 'SELECT'), false)) x
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
						WHERE (r.oid = to_regclass(ct.ref_table)
							   OR r.oid IN (SELECT ch.child::oid FROM eventstream.child_table ch
											 WHERE ch.parent = to_regclass(ct.ref_table)))
						  AND NOT EXISTS (SELECT 1 FROM pg_constraint k
										   WHERE k.conrelid = r.oid AND k.contype = 'p'))) AS tables_without_key
  FROM eventstream.consumer c;
COMMENT ON VIEW eventstream.consumer_status IS
	'Per consumer: last pull, age of its acknowledged cursor, updates waiting for it (an upper bound when conditions withhold some), subscriptions, condition errors, aged out, subscribed tables that lost their primary key.';

/*-------------------------------------------------------------------------
 *
 * capture.sql
 *	  Producer side: the capture trigger, present on exactly the tables that
 *	  need it.
 *
 * _capture() (in C) logs every change of a subscribed document, stamped
 * with the apply origin _set_origin() sets; _sync_capture() installs,
 * replaces and removes it whenever subscriptions or child tables change,
 * and when ALTER TABLE changes a captured table (its primary key).
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE FUNCTION eventstream._capture() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_capture';
COMMENT ON FUNCTION eventstream._capture() IS
	'Capture trigger; installed and removed by eventstream, never by hand.';

CREATE FUNCTION eventstream._set_origin(origin uuid) RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_set_origin';

/*
 * The last capture trigger argument of tbl: 'key:' and its primary key
 * columns by quoted name, in key order.  A table without a primary key
 * keeps the one its trigger has (old_args, pg_trigger.tgargs), so the
 * trigger still names its rows by the former key; none when neither has.
 */
CREATE FUNCTION eventstream._capture_key_arg(tbl regclass, old_args bytea) RETURNS text[]
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(
		(SELECT ARRAY['key:' || string_agg(quote_ident(a.attname), ',' ORDER BY k.ord)]
		   FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY AS k(attnum, ord)
		   JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum
		 HAVING count(*) > 0),
		-- tgargs is each argument followed by a zero byte; 'key:' is last.
		(SELECT ARRAY[convert_from(substring(old_args FROM p + 1 FOR length(old_args) - p - 1), 'UTF8')]
		   FROM position('\x006b65793a'::bytea IN old_args) AS p
		  WHERE p > 0),
		'{}')
$$;

/*
 * Install, replace or remove eventstream_capture triggers so that exactly the
 * tables some consumer has an Approved, subscribed subscription to, and their
 * registered child tables, carry one with up-to-date arguments, enabled
 * ALWAYS: a site's apply runs with session_replication_role = replica
 * (src/consumer/apply.c), and what it applies to a table others subscribe
 * to is captured for them too (A -> B -> C).  A trigger found in another
 * state (made by an earlier version, or altered by hand) is enabled ALWAYS
 * again.
 */
CREATE FUNCTION eventstream._sync_capture() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	-- Serialize concurrent reconfigurations.
	PERFORM pg_advisory_xact_lock(hashtext('eventstream._sync_capture'));
	FOR r IN
		WITH existing AS (
			SELECT t.tgrelid::regclass AS tbl, t.tgargs, t.tgenabled
			  FROM pg_trigger t
			 WHERE t.tgname = 'eventstream_capture' AND t.tgparentid = 0
		), docs AS (
			SELECT DISTINCT to_regclass(ct.ref_table) AS tbl
			  FROM eventstream.consumer_table ct
			 WHERE ct.status = 'Approved' AND NOT ct.unsubscribed
		), children AS (
			SELECT c.child, c.parent, eventstream._fk_attnums(c.child, c.parent, c.fk_name) AS fk
			  FROM eventstream.child_table c JOIN docs d ON d.tbl = c.parent
		), desired AS (
			SELECT d.tbl,
				   ARRAY['doc'] || coalesce((SELECT array_agg(ch.child::oid::text || ':' || ch.fk ORDER BY ch.child::oid)
											   FROM children ch WHERE ch.parent = d.tbl AND ch.fk IS NOT NULL),
											'{}')
					   || eventstream._capture_key_arg(d.tbl, (SELECT e.tgargs FROM existing e WHERE e.tbl = d.tbl)) AS args
			  FROM docs d WHERE d.tbl IS NOT NULL
			UNION ALL
			SELECT ch.child, ARRAY['child', ch.parent::oid::text, ch.fk]
					   || eventstream._capture_key_arg(ch.child, (SELECT e.tgargs FROM existing e WHERE e.tbl = ch.child))
			  FROM children ch WHERE ch.fk IS NOT NULL
		)
		SELECT coalesce(d.tbl, e.tbl) AS tbl, d.args, e.tgargs, e.tgenabled,
			   (SELECT string_agg(convert_to(a, 'UTF8') || '\x00'::bytea, ''::bytea ORDER BY i)
				  FROM unnest(d.args) WITH ORDINALITY AS x(a, i)) AS want
		  FROM desired d FULL JOIN existing e ON e.tbl = d.tbl
	LOOP
		IF r.args IS NOT NULL AND r.tgargs IS NOT DISTINCT FROM r.want THEN
			IF r.tgenabled <> 'A' THEN
				EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_capture', r.tbl);
			END IF;
			CONTINUE;
		END IF;
		IF r.tgargs IS NOT NULL THEN
			EXECUTE format('DROP TRIGGER eventstream_capture ON %s', r.tbl);
		END IF;
		IF r.args IS NOT NULL THEN
			EXECUTE format('CREATE TRIGGER eventstream_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
						   'FOR EACH ROW EXECUTE FUNCTION eventstream._capture(%s)',
						   r.tbl, (SELECT string_agg(quote_literal(a), ', ') FROM unnest(r.args) a));
			EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_capture', r.tbl);
		END IF;
	END LOOP;
END
$$;

-- ALTER TABLE on a captured table may change its primary key, or a key
-- column's name: refresh the triggers' key arguments.
CREATE FUNCTION eventstream._on_alter_table() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	-- Only when a captured table's key is no longer the one its trigger
	-- remembers: not for the ALTER TABLE ... ENABLE ALWAYS TRIGGER that
	-- _sync_capture itself runs.
	IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands() c
				 JOIN pg_trigger t ON t.tgrelid = c.objid AND t.tgname = 'eventstream_capture'
				 CROSS JOIN LATERAL eventstream._capture_key_arg(t.tgrelid::regclass, t.tgargs) AS k(arg)
				WHERE c.classid = 'pg_class'::regclass
				  AND position(convert_to(k.arg[1], 'UTF8') || '\x00'::bytea IN t.tgargs) = 0) THEN
		PERFORM eventstream._sync_capture();
	END IF;
END
$$;
CREATE EVENT TRIGGER eventstream_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_alter_table();

-- Keep capture in step with every change of subscriptions or structure,
-- whether made through the functions below or by UPDATE on the tables.
CREATE FUNCTION eventstream._config_changed() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._sync_capture();
	-- Parked long-polls answer at once with the new statuses.
	PERFORM eventstream._wake_worker();
	RETURN NULL;
END
$$;
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventstream.consumer_table
	FOR EACH STATEMENT EXECUTE FUNCTION eventstream._config_changed();
CREATE TRIGGER sync_capture AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON eventstream.child_table
	FOR EACH STATEMENT EXECUTE FUNCTION eventstream._config_changed();

/*-------------------------------------------------------------------------
 *
 * serve.sql
 *	  Producer side: serving pages of updates, documents and snapshots.
 *
 * The HTTP endpoint calls _pull_page() for the next page of updates of a
 * consumer, _serve_document() and _serve_filtered() for the documents a
 * consumer's dependencies need, and _serve_snapshot() for the pages of an
 * initial sync.  The logs of a page are rendered in C (_log_texts,
 * _log_page).
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The JSON texts of update logs, in the order of ids, as served (src/producer/serve.c).
-- A negative id stands for "the whole current document" of that log,
-- served as a Create.
CREATE FUNCTION eventstream._log_texts(ids bigint[]) RETURNS text[]
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_log_texts';

-- The logs of ids as the inside of a page's "updates" array, as many as fit
-- in max_bytes (at least one); n: how many of the ids that covers.
CREATE FUNCTION eventstream._log_page(ids bigint[], max_bytes bigint, OUT n integer, OUT body text)
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_log_page';

/*
 * The next page of updates for a consumer.
 *
 * Cursor: "v1/<page>/<from>/<low>[/<to>/<to_low>/<after_id>]" (opaque to
 * consumers).  A page belongs to the window of transactions visible in
 * snapshot <to> but not in <from>, so a transaction that took its log ids
 * early and committed late is still delivered; within a window, logs go in
 * id order, which is the producer's order for every document (row locks
 * order its writers).  <low> is a lower bound of the ids of logs not
 * visible in <from>, taken just before it (src/producer/logids.c), so a window is
 * read from the primary key starting there.  A window larger than a page is
 * continued after <after_id>.  Pulling with a cursor acknowledges
 * everything before it.
 *
 * served: how many updates the page has; news: the subscription statuses
 * changed since the consumer was last told; caught_up: the page ends at the
 * newest commit, so a long-poll that got nothing may wait for the next one.
 * next_cursor, more and complete are the page's "cursor", "more" and
 * "complete", for the endpoint's Eventstream-* headers.
 */
CREATE FUNCTION eventstream._pull_page(consumer_url text, cursor text, "limit" integer, ack text DEFAULT NULL,
										OUT page text, OUT served integer, OUT news boolean,
										OUT caught_up boolean, OUT next_cursor text, OUT more boolean,
										OUT complete boolean)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	-- Walk the primary key in order and stop after a page; estimates of the
	-- snapshot filters are blind and would otherwise pick bitmap + sort.
	SET enable_bitmapscan = off
	SET enable_seqscan = off
	-- With seq scans "off", the scan of a sequence elsewhere in the page
	-- costs enough to be JIT-compiled on every pull (~25 ms).
	SET jit = off
AS $$
DECLARE
	c eventstream.consumer;
	parts text[];
	pageno bigint;
	s_from pg_snapshot;
	s_to pg_snapshot;
	low_from bigint;
	low_to bigint;
	after_id bigint;
	max_to bigint;		-- no log visible in s_to has a larger id (NULL: unknown)
	lim integer := "limit";
	ack_page bigint;
	ack_snapshot pg_snapshot;
	ack_low bigint;
	ids bigint[] := '{}';
	last_id bigint;
	allowed boolean;
	block bigint[];
	held boolean;
	start_id bigint;
	t_names text[];
	t_conds text[];
	c_ids bigint[] := '{}';
	c_types text[];
	c_tables text[];
	c_docs text[];
	cond text;
	t_snaps pg_snapshot[];
	t_oids regclass[];
	t_end_snaps pg_snapshot[];
	t_end_txids xid8[];
	t_end_ids bigint[];
	any_ended boolean;	-- some table's approval ended (see _consumer_table_approval)
	leaving boolean;	-- the document stops matching: it is served a Delete
	new_held boolean;
	changed_holds boolean := false;	-- consumer_document has changes of this pull
	texts text[] := '{}';
	body text;			-- the updates, when _log_page rendered them
	n_fit integer;
	block_texts text[];
	tables_now jsonb;
	max_bytes bigint := pg_size_bytes(current_setting('eventstream.http_max_response_size'));
	bytes bigint := 0;
	block_bytes bigint;
	tick_snap pg_snapshot;
	tick_low bigint;
	tick_max bigint;
	at_tick boolean := false;	-- the window ends at a tick, not at the newest commit
	skipped integer := 0;
BEGIN
	more := false;
	PERFORM eventstream._check_limit(lim, 10000);
	SELECT * INTO c FROM eventstream.consumer WHERE eventstream.consumer.consumer_url = _pull_page.consumer_url FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'consumer "%" is not registered', consumer_url USING ERRCODE = 'undefined_object';
	END IF;
	IF c.aged_out THEN
		RAISE EXCEPTION 'consumer "%" fell behind the update log''s retention', consumer_url
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = 'It did not pull for longer than eventstream.retention_period, and updates it had not acknowledged were pruned.',
				  HINT = 'Remove it with eventstream.remove_consumer() on the producer and register it again; then resync its tables.';
	END IF;

	IF cursor IS NULL THEN
		RAISE EXCEPTION 'cursor must not be NULL' USING ERRCODE = 'null_value_not_allowed',
			HINT = 'Start from the cursor returned by registration.';
	END IF;
	BEGIN
		parts := string_to_array(cursor, '/');
		IF parts[1] <> 'v1' OR cardinality(parts) NOT IN (4, 7, 8) THEN
			RAISE EXCEPTION USING ERRCODE = 'invalid_text_representation';
		END IF;
		pageno := parts[2]::bigint;
		s_from := parts[3]::pg_snapshot;
		low_from := parts[4]::bigint;
		IF cardinality(parts) >= 7 THEN
			s_to := parts[5]::pg_snapshot;
			low_to := parts[6]::bigint;
			after_id := parts[7]::bigint;
			max_to := nullif(parts[8], '')::bigint;
		END IF;
	EXCEPTION WHEN OTHERS THEN
		RAISE EXCEPTION 'invalid cursor "%"', cursor
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass the cursor returned by the previous pull, or by registration, unchanged.';
	END;
	-- What the consumer has applied: by default everything before this
	-- cursor; a consumer that asks for the next page while it applies this
	-- one (pipelining) names the cursor it last stored as ack.
	IF ack IS NULL OR ack = cursor THEN
		ack_page := pageno;
		ack_snapshot := s_from;
		ack_low := low_from;
	ELSE
		BEGIN
			parts := string_to_array(ack, '/');
			IF parts[1] <> 'v1' OR cardinality(parts) NOT IN (4, 7, 8) THEN
				RAISE EXCEPTION USING ERRCODE = 'invalid_text_representation';
			END IF;
			ack_page := parts[2]::bigint;
			ack_snapshot := parts[3]::pg_snapshot;
			ack_low := parts[4]::bigint;
		EXCEPTION WHEN OTHERS THEN
			RAISE EXCEPTION 'invalid cursor "%"', ack
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'ack is a cursor returned by an earlier pull, unchanged.';
		END;
		IF ack_page > pageno THEN
			RAISE EXCEPTION 'ack names a page after the cursor''s' USING ERRCODE = 'invalid_parameter_value',
				HINT = 'ack is the cursor the consumer stored last, at most the one it pulls with.';
		END IF;
	END IF;
	IF ack_page < c.acked_page OR pageno > c.served_page + 1 THEN
		RAISE EXCEPTION 'cursor is not current for consumer "%"', consumer_url
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Pages before %s were acknowledged; pages %s to %s can be pulled.', c.acked_page, c.acked_page, c.served_page + 1),
				  HINT = 'Pull with the cursor stored with the updates you last applied.';
	END IF;

	-- Acknowledge what came before the acknowledged cursor; forget
	-- receipts of pages served from this cursor on (the consumer did not
	-- apply them).
	UPDATE eventstream.consumer SET acked_page = ack_page, acked_snapshot = ack_snapshot, acked_low = ack_low,
									acked_at = now(), last_pull_at = now(), served_page = pageno
	 WHERE eventstream.consumer.consumer_url = c.consumer_url;
	DELETE FROM eventstream.served_page sp
	 WHERE sp.consumer_url = c.consumer_url AND sp.page >= pageno;
	-- Of the documents' changes: those of pages after this one go, and of
	-- the pulls of the page before, those the consumer did not go on from
	-- (their cursor is not this one; a page before the acknowledged one
	-- was settled so already).  Those of other pulls of this page stay
	-- until the next page says which the consumer went on from.
	DELETE FROM eventstream.consumer_document d
	 WHERE d.consumer_url = c.consumer_url
	   AND (d.page > pageno
			OR (d.page = pageno - 1 AND pageno - 1 >= c.acked_page AND d.token IS DISTINCT FROM cursor));
	DELETE FROM eventstream.withheld w
	 WHERE w.consumer_url = c.consumer_url AND (w.page >= pageno OR w.served_page < ack_page);
	UPDATE eventstream.withheld w SET served_page = NULL
	 WHERE w.consumer_url = c.consumer_url AND w.served_page >= pageno;

	BEGIN
		-- The servable tables, as arrays: the page query then has no join
		-- and walks the primary key in order, stopping after lim + 1 rows
		-- (a FOR loop runs it as a cursor, which favours that plan).  A
		-- table whose approval ended (rejected) is served what was written
		-- before that until the cursor is past it.
		SELECT coalesce(array_agg(ct.ref_table), '{}'), array_agg(ct.condition),
			   array_agg(ct.approved_snapshot), array_agg(to_regclass(ct.ref_table)),
			   array_agg(ct.ended_snapshot), array_agg(ct.ended_txid), array_agg(ct.ended_id),
			   coalesce(bool_or(ct.ended_snapshot IS NOT NULL), false)
		  INTO t_names, t_conds, t_snaps, t_oids, t_end_snaps, t_end_txids, t_end_ids, any_ended
		  FROM eventstream.consumer_table ct
		 WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
		   AND (ct.status = 'Approved'
				OR (ct.ended_snapshot IS NOT NULL
					AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, s_from)))
		   AND to_regclass(ct.ref_table) IS NOT NULL
		   AND has_table_privilege(c.role, to_regclass(ct.ref_table), 'SELECT');
		LOOP
			IF s_to IS NULL THEN
				-- A new window: its end, with the low bound taken just
				-- before it (the older bound is lower, so it will do when
				-- unknown).
				low_to := coalesce(eventstream._low_bound(), low_from);
				s_to := pg_current_snapshot();
				after_id := low_from - 1;
				-- (read after the snapshot: every log it sees is at most
				-- this; the page query then stops there instead of walking
				-- past the window)
				max_to := (SELECT max(l.id) FROM eventstream.update_log l);
				-- A consumer far behind: the window ends at a tick instead,
				-- the latest that keeps it to about _window_logs() logs (or
				-- the first after s_from if none does), so that the backlog
				-- is applied in bounded transactions.  A tick taken after
				-- s_from (its xmax is larger) sees everything s_from sees.
				IF max_to - low_from > eventstream._window_logs() THEN
					SELECT t.snap, t.low, t.max_id INTO tick_snap, tick_low, tick_max
					  FROM eventstream.tick t
					 WHERE pg_snapshot_xmax(t.snap) > pg_snapshot_xmax(s_from)
					   AND pg_snapshot_xmax(t.snap) < pg_snapshot_xmax(s_to)
					 ORDER BY t.max_id - low_from > eventstream._window_logs(),
							  CASE WHEN t.max_id - low_from > eventstream._window_logs() THEN t.tick_id ELSE -t.tick_id END
					 LIMIT 1;
					IF FOUND THEN
						s_to := tick_snap;
						low_to := tick_low;
						max_to := tick_max;
						at_tick := true;
					END IF;
				END IF;
			END IF;

			-- The candidates: the next lim + 1 logs of the window for this
			-- consumer, in id order (the order of the subquery, which reads
			-- them in that order: an ORDER BY in each aggregate sorted the
			-- page four times more).
			IF cardinality(t_names) > 0 THEN
				SELECT coalesce(array_agg(x.id), '{}'), array_agg(x.update_type),
					   array_agg(x.ref_table), array_agg(x.docname)
				  INTO c_ids, c_types, c_tables, c_docs
				  FROM (SELECT l.id, l.update_type, l.ref_table, l.docname
						  FROM eventstream.update_log l
						 WHERE l.id > after_id AND l.id <= coalesce(max_to, 9223372036854775807)
						   AND l.ref_table = ANY (t_names)
						   AND l.txid >= pg_snapshot_xmin(s_from) AND l.txid < pg_snapshot_xmax(s_to)
						   AND pg_visible_in_snapshot(l.txid, s_to) AND NOT pg_visible_in_snapshot(l.txid, s_from)
						   AND NOT pg_visible_in_snapshot(l.txid, t_snaps[array_position(t_names, l.ref_table)])
						   AND (NOT any_ended
								OR eventstream._before_end(l.txid, l.id, t_end_snaps[array_position(t_names, l.ref_table)],
														   t_end_txids[array_position(t_names, l.ref_table)],
														   t_end_ids[array_position(t_names, l.ref_table)]))
						   AND l.origin IS DISTINCT FROM c.site_id
						 ORDER BY l.id
						 LIMIT lim + 1) x;
			END IF;
			-- A new window that ends at a tick and has nothing for this
			-- consumer (only logs of tables it does not take) is passed over
			-- at once, the next window starting where it ends: an idle
			-- consumer behind a burst of other tables' logs would otherwise
			-- get one empty page per window, each after a long-poll parked
			-- to its deadline.  At most 16 windows per pull; the page then
			-- ends at the last one passed over and is answered at once.
			EXIT WHEN NOT at_tick OR cardinality(c_ids) > 0 OR skipped >= 16;
			s_from := s_to;
			low_from := low_to;
			s_to := NULL;
			at_tick := false;
			skipped := skipped + 1;
		END LOOP;
		more := cardinality(c_ids) > lim;

		IF NOT EXISTS (SELECT 1 FROM unnest(t_conds) x WHERE x IS NOT NULL) THEN
			-- No condition involved: the page is the first lim candidates,
			-- cut where it reaches eventstream.http_max_response_size.
			ids := c_ids[1:lim];
			SELECT lp.n, lp.body INTO n_fit, body FROM eventstream._log_page(ids, max_bytes) lp;
			IF n_fit < cardinality(ids) THEN
				ids := ids[1:n_fit];
				more := true;
			END IF;
			last_id := ids[cardinality(ids)];
		ELSE
			texts := '{}';
			FOR i IN 1 .. least(cardinality(c_ids), lim) LOOP
				cond := t_conds[array_position(t_names, c_tables[i])];
				IF cond IS NULL THEN
					block_texts := eventstream._log_texts(ARRAY[c_ids[i]]);
					block_bytes := octet_length(block_texts[1]) + 2;
					IF cardinality(ids) > 0 AND bytes + block_bytes > max_bytes THEN
						more := true;
						EXIT;
					END IF;
					ids := ids || c_ids[i];
					texts[cardinality(texts) + 1] := block_texts[1];	-- appended in place
					bytes := bytes + block_bytes;
					last_id := c_ids[i];
					CONTINUE;
				END IF;

				-- Conditioned table: the document's current state decides.
				held := eventstream._holds(c.consumer_url, c_tables[i], c_docs[i], pageno);
				allowed := eventstream._condition_allows(c.consumer_url, t_oids[array_position(t_names, c_tables[i])],
														 c_tables[i], cond, c.role, c_docs[i],
														 jsonb_build_object('id', c_ids[i], 'update_type', c_types[i],
																			'ref_table', c_tables[i], 'docname', c_docs[i]));
				-- A document the consumer holds that no longer matches leaves
				-- it: this log is served as a Delete of it (as logical
				-- replication turns an UPDATE out of a row filter into a
				-- DELETE), and what follows is withheld until it matches
				-- again.  A document that is gone: tell the consumer if it
				-- holds it.
				leaving := held AND allowed IS FALSE;
				allowed := coalesce(allowed, held);
				IF NOT allowed AND NOT leaving THEN
					INSERT INTO eventstream.withheld (consumer_url, ref_table, docname, update_log_id, page)
						VALUES (c.consumer_url, c_tables[i], c_docs[i], c_ids[i], pageno)
						ON CONFLICT DO NOTHING;
					last_id := c_ids[i];
					CONTINUE;
				END IF;

				IF leaving THEN
					block := ARRAY[c_ids[i]];
					block_texts := eventstream._log_texts(block);
					IF c_types[i] <> 'Delete' THEN
						block_texts[1] := (block_texts[1]::jsonb || '{"data": null, "update_type": "Delete"}')::text;
					END IF;
				ELSE
					-- Its history the consumer has not seen goes first: what
					-- was withheld since it was last served, or, for a
					-- document it does not hold, everything since the latest
					-- withheld Create.  Without such a Create the history is
					-- incomplete (the document predates the subscription, it
					-- left the consumer since, or its logs were pruned): the
					-- consumer gets the whole current document as a Create
					-- instead (negative id).
					SELECT coalesce(array_agg(w.update_log_id ORDER BY w.update_log_id), '{}'),
						   max(w.update_log_id) FILTER (WHERE l2.update_type = 'Create')
					  INTO block, start_id
					  FROM eventstream.withheld w
					  JOIN eventstream.update_log l2 ON l2.id = w.update_log_id
					 WHERE w.consumer_url = c.consumer_url AND w.ref_table = c_tables[i]
					   AND w.docname = c_docs[i] AND w.served_page IS NULL;
					IF c_types[i] = 'Create' THEN
						block := ARRAY[c_ids[i]];
					ELSIF held THEN
						block := block || c_ids[i];
					ELSIF start_id IS NOT NULL THEN
						block := ARRAY(SELECT x FROM unnest(block) x WHERE x >= start_id ORDER BY x) || c_ids[i];
					ELSE
						block := ARRAY[-c_ids[i]];
					END IF;
					block_texts := eventstream._log_texts(block);
				END IF;
				block_bytes := (SELECT sum(octet_length(x) + 2) FROM unnest(block_texts) x);
				IF cardinality(ids) > 0 AND
				   (cardinality(ids) + cardinality(block) > lim OR bytes + block_bytes > max_bytes) THEN
					more := true;
					EXIT;
				END IF;
				ids := ids || block;
				FOR j IN 1 .. cardinality(block_texts) LOOP
					texts[cardinality(texts) + 1] := block_texts[j];
				END LOOP;
				bytes := bytes + block_bytes;
				IF NOT leaving THEN
					UPDATE eventstream.withheld w SET served_page = pageno
					 WHERE w.consumer_url = c.consumer_url AND w.ref_table = c_tables[i]
					   AND w.docname = c_docs[i] AND w.served_page IS NULL;
				END IF;
				-- The consumer holds the document after this unless it left,
				-- or the last thing served is its Delete.
				new_held := NOT leaving AND (block[cardinality(block)] < 0 OR c_types[i] <> 'Delete');
				IF new_held <> held THEN
					PERFORM eventstream._set_holds(c.consumer_url, c_tables[i], c_docs[i], new_held, pageno, ack_page);
					changed_holds := true;
				END IF;
				last_id := c_ids[i];
			END LOOP;
		END IF;
	END;

	-- Receipts of pages from this one on were deleted above, and a withheld
	-- log is replayed once: no receipt can exist yet.
	IF cardinality(ids) > 0 THEN
		INSERT INTO eventstream.served_page (consumer_url, page, log_ids, max_log_id)
			SELECT c.consumer_url, pageno, array_agg(abs(i)), max(abs(i)) FROM unnest(ids) i;
	END IF;

	served := cardinality(ids);
	caught_up := NOT more AND NOT at_tick;
	tables_now := eventstream._consumer_tables(c.consumer_url);
	-- News: statuses the consumer was not told, or told in an answer it did
	-- not go on from (a long-poll it gave up and asked again, answered
	-- meanwhile: the pull asks for that answer's page again, or earlier).
	news := tables_now IS DISTINCT FROM c.sent_tables OR coalesce(pageno < c.sent_tables_page, false);
	IF news THEN
		UPDATE eventstream.consumer x SET sent_tables = tables_now, sent_tables_page = pageno + 1
		 WHERE x.consumer_url = c.consumer_url;
	END IF;
	-- "complete": the page ends its window, i.e. a set of whole transactions.
	-- "acks": this producer takes ack= (see above).
	-- "newest_at": when the page's last update was logged.  The cursor
	-- comes first, the updates last.
	next_cursor := CASE WHEN more THEN format('v1/%s/%s/%s/%s/%s/%s/%s', pageno + 1, s_from, low_from, s_to, low_to, last_id, max_to)
						ELSE format('v1/%s/%s/%s', pageno + 1, s_to, low_to) END;
	complete := NOT more;
	IF changed_holds THEN
		UPDATE eventstream.consumer_document d SET token = next_cursor
		 WHERE d.consumer_url = c.consumer_url AND d.page = pageno AND d.token IS NULL;
	END IF;
	page := format('{"cursor": %s, "more": %s, "complete": %s, "acks": true, "newest_at": %s, "tables": %s, "keys": %s, "updates": [%s]}',
				   to_json(next_cursor), to_json(more), to_json(complete),
				   coalesce(to_json((SELECT l.created_at FROM eventstream.update_log l
									  WHERE l.id = abs(ids[cardinality(ids)])))::text, 'null'),
				   tables_now, eventstream._consumer_keys(c.consumer_url),
				   coalesce(body, array_to_string(texts, ', ')));
END
$$;

-- The next page for a consumer as jsonb, for SQL callers; the HTTP
-- endpoint sends _pull_page's text as it is.
CREATE FUNCTION eventstream._pull(consumer_url text, cursor text, "limit" integer DEFAULT 100)
		RETURNS jsonb
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.page::jsonb FROM eventstream._pull_page(consumer_url, cursor, "limit") p
$$;

-- A table named on the wire that the API key's role may read.
CREATE FUNCTION eventstream._readable_table(ref_table text, role regrole) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tbl regclass := eventstream._wire_table(ref_table);
BEGIN
	IF NOT has_table_privilege(role, tbl, 'SELECT') THEN
		RAISE EXCEPTION 'role "%" cannot read table "%"', role, eventstream._wire_name(tbl)
			USING ERRCODE = 'insufficient_privilege';
	END IF;
	RETURN tbl;
END
$$;

-- A page size between 1 and max.
CREATE FUNCTION eventstream._check_limit(lim integer, max integer) RETURNS void
	LANGUAGE plpgsql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF lim IS NULL OR lim < 1 OR lim > max THEN
		RAISE EXCEPTION 'limit must be between 1 and %', max USING ERRCODE = 'invalid_parameter_value';
	END IF;
END
$$;

/*
 * One document with its children, for the documents endpoint: the table
 * must be readable by the API key's role.
 */
CREATE FUNCTION eventstream._serve_document(ref_table text, docname text, role regrole) RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $$
DECLARE
	tbl regclass := eventstream._readable_table(ref_table, role);
	doc jsonb;
BEGIN
	doc := eventstream._document(tbl, docname);
	IF doc IS NULL THEN
		RAISE EXCEPTION 'document "%" of table "%" does not exist', docname, eventstream._wire_name(tbl)
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN doc;
END
$$;

/*
 * Docnames of the rows of a table matching equality filters {"column":
 * value, ...} (values compared as text), in key order, for mapping
 * dependencies (the consumer takes the first).  The
 * role must be able to read the table; columns must exist.
 */
CREATE FUNCTION eventstream._serve_filtered(ref_table text, filters jsonb, "limit" integer, role regrole)
		RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $$
DECLARE
	tbl regclass := eventstream._readable_table(ref_table, role);
	conds text := 'true';
	keys text := (SELECT string_agg(format('doc.%I', c), ', ') FROM unnest(eventstream._pk_names(tbl)) c);
	f record;
	result jsonb;
BEGIN
	IF filters IS NULL OR jsonb_typeof(filters) <> 'object' THEN
		RAISE EXCEPTION 'filters must be a JSON object of column: value' USING ERRCODE = 'invalid_parameter_value';
	END IF;
	PERFORM eventstream._check_limit("limit", 1000);
	FOR f IN SELECT * FROM jsonb_each(filters) LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = f.key
						  AND a.attnum > 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'column "%" of table "%" does not exist', f.key, eventstream._wire_name(tbl)
				USING ERRCODE = 'undefined_column';
		END IF;
		conds := conds || format(' AND doc.%I::text IS NOT DISTINCT FROM %L', f.key, filters->>f.key);
	END LOOP;
	-- The first matches in key order, so that "the first" is always the same.
	EXECUTE format('SELECT coalesce(jsonb_agg(d ORDER BY o), ''[]'') FROM (SELECT %s AS d,'
				   ' row_number() OVER (ORDER BY %s) AS o FROM ONLY %s AS doc WHERE %s ORDER BY %s LIMIT %s) x',
				   eventstream._docname_sql(tbl, 'doc'), keys, tbl, conds, keys, "limit")
		INTO result;
	RETURN jsonb_build_object('docnames', result);
END
$$;

/*
 * A page of the existing documents of a table in primary key order, after
 * the docname "after" (NULL: from the start), for a consumer's initial sync.
 */
CREATE FUNCTION eventstream._serve_snapshot(ref_table text, after text, "limit" integer, role regrole,
											consumer text DEFAULT NULL)
		RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
AS $$
DECLARE
	tbl regclass := eventstream._readable_table(ref_table, role);
	keys text;
	bound text;
	names text[];
	docs jsonb[];
	more boolean;
	ct eventstream.consumer_table;
	last_name text;
	cut boolean := false;
	max_bytes bigint := pg_size_bytes(current_setting('eventstream.http_max_response_size'));
	bytes bigint := 0;
BEGIN
	PERFORM eventstream._check_limit("limit", 1000);
	SELECT string_agg(format('doc.%I', a.attname), ', ' ORDER BY k.ord),
		   string_agg(CASE WHEN cardinality(eventstream._pk_attnums(tbl)) = 1
						   THEN format('$1::%s', format_type(a.atttypid, a.atttypmod))
						   ELSE format('($1::jsonb->>%s)::%s', k.ord - 1, format_type(a.atttypid, a.atttypmod)) END,
					  ', ' ORDER BY k.ord)
	  INTO keys, bound
	  FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY AS k(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum;
	BEGIN
		EXECUTE format('SELECT array_agg(%s ORDER BY %s)'
					   '  FROM (SELECT * FROM ONLY %s AS doc WHERE $1 IS NULL OR (%s) > (%s) ORDER BY %s LIMIT %s) doc',
					   eventstream._docname_sql(tbl, 'doc'), keys, tbl, keys, bound, keys, "limit" + 1)
			INTO names USING after;
	EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format OR numeric_value_out_of_range THEN
		RAISE EXCEPTION 'invalid docname "%" for table "%"', after, eventstream._wire_name(tbl)
			USING ERRCODE = 'invalid_parameter_value';
	END;
	names := coalesce(names, '{}');
	more := cardinality(names) > "limit";
	names := names[1:"limit"];
	last_name := names[cardinality(names)];
	IF consumer IS NOT NULL THEN
		-- For a consumer's initial sync: only an approved subscription, and
		-- only the documents its condition admits (which it then holds).
		SELECT * INTO ct FROM eventstream.consumer_table x
		 WHERE x.consumer_url = consumer AND x.ref_table = eventstream._wire_name(tbl)
		   AND x.status = 'Approved' AND NOT x.unsubscribed;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'consumer "%" has no approved subscription to table "%"', consumer, eventstream._wire_name(tbl)
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		IF ct.condition IS NOT NULL THEN
			names := ARRAY(SELECT n FROM unnest(names) WITH ORDINALITY x(n, o)
							WHERE eventstream._condition_allows(consumer, tbl, ct.ref_table, ct.condition, role, n,
																jsonb_build_object('update_type', 'Create',
																				   'ref_table', ct.ref_table, 'docname', n))
							ORDER BY o);
			PERFORM eventstream._set_holds(consumer, ct.ref_table, n, true, NULL,
										   (SELECT x.acked_page FROM eventstream.consumer x WHERE x.consumer_url = consumer))
			   FROM unnest(names) n
			  WHERE NOT eventstream._holds(consumer, ct.ref_table, n, NULL);
		END IF;
	END IF;
	SELECT coalesce(array_agg(jsonb_build_object('docname', n, 'data', eventstream._document(tbl, n)) ORDER BY o), '{}')
	  INTO docs
	  FROM unnest(names) WITH ORDINALITY AS x(n, o);
	-- The page ends where it reaches eventstream.http_max_response_size.
	FOR i IN 1 .. cardinality(docs) LOOP
		bytes := bytes + octet_length(docs[i]::text) + 2;
		IF bytes > max_bytes AND i > 1 THEN
			docs := docs[1:i - 1];
			names := names[1:i - 1];
			more := true;
			cut := true;
			EXIT;
		END IF;
	END LOOP;
	-- "next" moves past the documents a condition left out, not past those
	-- the size cut left for the next page.
	RETURN jsonb_build_object('documents', to_jsonb(docs),
							  'next', CASE WHEN cut THEN names[cardinality(names)] ELSE last_name END,
							  'more', more);
END
$$;

/*-------------------------------------------------------------------------
 *
 * retention.sql
 *	  Producer side: pruning the update log.
 *
 * prune() deletes the logs every consumer has acknowledged; the site
 * worker runs it periodically, in steps.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- Whether prune() keeps a log below the acknowledged horizon: a condition
-- withheld it from a consumer that may yet need its history (see prune).
-- Plain SQL, no SET clause: inlined into prune's queries.
CREATE FUNCTION eventstream._log_kept(log_id bigint, created_at timestamptz, retention interval) RETURNS boolean
	LANGUAGE sql STABLE
AS $$
	SELECT created_at > pg_catalog.now() - retention AND EXISTS (
		SELECT 1
		  FROM eventstream.withheld w
		  JOIN eventstream.consumer c ON c.consumer_url = w.consumer_url
		 WHERE w.update_log_id = log_id AND w.served_page IS NULL
		   AND NOT c.aged_out AND c.acked_at > pg_catalog.now() - retention)
$$;

/*
 * Delete the logs every consumer has acknowledged, and their receipts.
 * Consumers that have not pulled within eventstream.retention_period stop
 * holding logs back and are marked aged_out if that loses them anything.
 * Logs a condition withheld from a consumer are kept (within the retention
 * period) so the document's history can be replayed if it starts to match.
 * A subscription rejected since holds back the logs still to be served to
 * it (those committed before the rejection) until they are acknowledged.
 * Returns the number of logs deleted.
 */
CREATE FUNCTION eventstream.prune(max_logs bigint DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	retention interval := current_setting('eventstream.retention_period')::interval;
	horizon bigint;
	upto bigint;
	kept_from bigint;
	deleted bigint;
BEGIN
	IF max_logs < 1 THEN
		RAISE EXCEPTION 'max_logs must be at least 1, not %', max_logs
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass NULL (the default) to prune every acknowledged log.';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('eventstream.prune'));
	-- Every log below a consumer's acked_low is acknowledged by it.
	SELECT min(c.acked_low) INTO horizon
	  FROM eventstream.consumer c
	 WHERE c.acked_at > now() - retention AND NOT c.aged_out
	   AND EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
					  AND (ct.status = 'Approved'
						   OR (ct.ended_snapshot IS NOT NULL
							   AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, c.acked_snapshot))));
	horizon := least(horizon, eventstream._low_bound());
	IF horizon IS NULL THEN
		RETURN 0;
	END IF;

	UPDATE eventstream.consumer c SET aged_out = true
	 WHERE NOT c.aged_out AND c.acked_at <= now() - retention AND c.acked_low < horizon
	   AND EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
					  AND (ct.status = 'Approved'
						   OR (ct.ended_snapshot IS NOT NULL
							   AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, c.acked_snapshot))))
	   AND EXISTS (SELECT 1 FROM eventstream.update_log l WHERE l.id >= c.acked_low AND l.id < horizon);

	-- At most max_logs of them (the oldest that go), when asked: the
	-- background worker prunes a large backlog in steps, serving in between.
	upto := horizon;
	IF max_logs IS NOT NULL THEN
		upto := least(horizon, (SELECT l.id FROM eventstream.update_log l
								 WHERE l.id < horizon AND NOT eventstream._log_kept(l.id, l.created_at, retention)
								 ORDER BY l.id OFFSET max_logs LIMIT 1));
	END IF;

	WITH gone AS (
		DELETE FROM eventstream.update_log l
		 WHERE l.id < upto AND NOT eventstream._log_kept(l.id, l.created_at, retention)
		RETURNING l.id
	), held_back AS (
		DELETE FROM eventstream.withheld w USING gone WHERE w.update_log_id = gone.id
	)
	SELECT count(*) INTO deleted FROM gone;

	-- Ticks whose logs are all gone (the latest stays).
	DELETE FROM eventstream.tick t
	 WHERE t.max_id < upto AND t.tick_id < (SELECT max(x.tick_id) FROM eventstream.tick x);

	-- Receipts go with the last of their logs.  A page may hold replayed
	-- withheld logs that are kept longer than the rest, the only logs left
	-- below upto (usually none): only receipts from the oldest of them on
	-- are looked into.
	kept_from := (SELECT min(l.id) FROM eventstream.update_log l);
	DELETE FROM eventstream.served_page sp
	 WHERE sp.max_log_id < upto
	   AND (kept_from IS NULL OR sp.max_log_id < kept_from
			OR NOT EXISTS (SELECT 1 FROM eventstream.update_log l WHERE l.id = ANY (sp.log_ids) AND l.id < upto));

	UPDATE eventstream.site
	   SET last_prune_at = now(),
		   pruned_below = CASE WHEN deleted > 0 THEN greatest(pruned_below, upto) ELSE pruned_below END;
	RETURN deleted;
END
$$;
COMMENT ON FUNCTION eventstream.prune(bigint) IS
	'Delete update logs every consumer has acknowledged (at most max_logs, the oldest, when given); returns how many.  The background worker runs it periodically, in steps.';

/*-------------------------------------------------------------------------
 *
 * keys.sql
 *	  API keys other sites call this one with.
 *
 * A key names the role its requests run as; its secret is kept only as a
 * salted hash.  The HTTP endpoint checks every request's key with
 * _check_api_key(), which compares the hashes in constant time (in C).
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.api_key (
	api_key			text PRIMARY KEY,
	role			regrole NOT NULL,
	secret_salt		bytea NOT NULL,
	secret_hash		bytea NOT NULL,		-- sha256(secret_salt || secret); the secret itself is not kept
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_used_at	timestamptz,
	revoked_at		timestamptz
);
COMMENT ON TABLE eventstream.api_key IS
	'API keys other sites use to call this one; requests run with the key''s role.  Secrets are kept only as salted hashes.';

CREATE FUNCTION eventstream._equal_secrets(a bytea, b bytea) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_equal_secrets';

-- Random hex from the server's strong random source (gen_random_uuid).
CREATE FUNCTION eventstream._random_hex(uuids integer) RETURNS text
	LANGUAGE sql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(replace(gen_random_uuid()::text, '-', ''), '') FROM generate_series(1, uuids)
$$;

CREATE FUNCTION eventstream.create_api_key(role regrole, OUT api_key text, OUT api_secret text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	salt bytea := decode(eventstream._random_hex(1), 'hex');
BEGIN
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = role) THEN
		RAISE EXCEPTION 'role "%" is a superuser', role
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Requests run with the key''s role: make a role with just the privileges other sites need.';
	END IF;
	api_key := 'esk_' || eventstream._random_hex(1);
	api_secret := eventstream._random_hex(2);
	INSERT INTO eventstream.api_key (api_key, role, secret_salt, secret_hash)
		VALUES (api_key, role, salt, sha256(salt || convert_to(api_secret, 'UTF8')));
END
$$;
COMMENT ON FUNCTION eventstream.create_api_key(regrole) IS
	'Make an API key for role; the secret is returned once and kept only as a salted hash.';

CREATE FUNCTION eventstream.revoke_api_key(api_key text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	UPDATE eventstream.api_key k SET revoked_at = now()
	 WHERE k.api_key = revoke_api_key.api_key AND k.revoked_at IS NULL;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no active API key "%"', api_key USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION eventstream.revoke_api_key(text) IS
	'Revoke an API key: requests with it fail from now on.';

/*
 * The role of a valid, unrevoked key whose secret matches, or NULL.  The
 * hashes are compared in constant time; last_used_at is updated (to the minute).
 */
CREATE FUNCTION eventstream._check_api_key(api_key text, api_secret text) RETURNS regrole
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k eventstream.api_key;
BEGIN
	SELECT * INTO k FROM eventstream.api_key x
	 WHERE x.api_key = _check_api_key.api_key AND x.revoked_at IS NULL;
	IF NOT FOUND OR api_secret IS NULL
	   OR NOT eventstream._equal_secrets(k.secret_hash, sha256(k.secret_salt || convert_to(api_secret, 'UTF8'))) THEN
		RETURN NULL;
	END IF;
	-- To the minute: a write per request would bloat the table under load.
	IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
		UPDATE eventstream.api_key x SET last_used_at = now() WHERE x.api_key = k.api_key;
	END IF;
	RETURN k.role;
END
$$;

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
 * Part of the install script eventstream--1.0.sql: the Makefile builds
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
	last_update_at		timestamptz
);
COMMENT ON TABLE eventstream.producer IS
	'Event Producer: one row per site this one pulls from.  The secret is readable by superusers only.';
COMMENT ON COLUMN eventstream.producer.subscriber IS
	'Role the updates from this producer are applied as.';
COMMENT ON COLUMN eventstream.producer.behind IS
	'The last page said more was waiting on the producer.';
COMMENT ON COLUMN eventstream.producer.last_update_at IS
	'When the newest update received was made on the producer.';
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
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	url text := rtrim(btrim(producer_url), '/');
	health jsonb;
	reply jsonb;
	name text;
	wire text;
BEGIN
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
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
	wire text := eventstream._qualified(ref_table);
	m eventstream.document_type_mapping;
	tbl regclass;
BEGIN
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
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
	wire text := eventstream._qualified(ref_table);
BEGIN
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
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
BEGIN
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
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
	reply jsonb;
BEGIN
	-- Registering again answers where the producer has this consumer: what
	-- it acknowledged last, or now when it registers anew (after the
	-- producer's eventstream.remove_consumer()).
	reply := eventstream._push_subscriptions(p.producer_url);
	PERFORM eventstream._check_cursor(p.producer_url, reply->>'cursor');
	DELETE FROM eventstream.inbox i WHERE i.producer_url = p.producer_url;
	UPDATE eventstream.producer x
	   SET cursor = reply->>'cursor', last_error = NULL, last_error_at = NULL
	 WHERE x.producer_url = p.producer_url;
	-- What was missed meanwhile is copied again from the rows as they are.
	IF coalesce(initial_sync, true) THEN
		UPDATE eventstream.producer_table t SET snapshot_pending = true, snapshot_after = NULL
		 WHERE t.producer_url = p.producer_url AND t.status = 'Approved' AND NOT t.unsubscribe;
	END IF;
	PERFORM eventstream._wake_worker();
	RETURN reply->>'cursor';
END
$$;
COMMENT ON FUNCTION eventstream.reset_cursor(text, boolean) IS
	'Start pulling from a producer again at the position it has for this site (after it refused the stored cursor), dropping pages waiting in the inbox; initial_sync: copy the subscribed tables'' rows again.  Returns the new cursor.';

CREATE FUNCTION eventstream.remove_producer(producer_url text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
BEGIN
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
			'') AS attention
  FROM eventstream.producer p,
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
	'Per producer: state (starting, streaming, failing, stalled, disabled), lag (updates received but not applied, whether more is waiting, and how long updates may have waited unseen), last success and error, failed updates, initial syncs failing (producer_table.snapshot_error), and what needs attention.';

/*-------------------------------------------------------------------------
 *
 * pull.sql
 *	  Consumer side: what to ask a producer for next.
 *
 * The site worker pulls in C; it asks _next_request() for each request's
 * path (a page of an initial sync, or the next page of updates) and hands
 * the answer to _apply_response().  sync_now() does the same from the
 * calling session.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The path of the next pull for a producer.
CREATE FUNCTION eventstream._pull_path(cursor text, wait integer) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (SELECT format('updates?consumer=%s&cursor=%s&limit=10000%s', eventstream._urlencode(eventstream._site_url()),
					  eventstream._urlencode(cursor), CASE WHEN wait > 0 THEN '&wait=' || wait ELSE '' END));
END
$$;

-- What to ask a producer for next: a page of a table's existing rows
-- while an initial sync is under way (and not waiting for a retry after a
-- failure), otherwise the next page of updates.  ref_table: the table of
-- a snapshot request.
CREATE FUNCTION eventstream._next_request(producer_url text, OUT path text, OUT kind text, OUT ref_table text)
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	pt eventstream.producer_table;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _next_request.producer_url;
	SELECT * INTO pt FROM eventstream.producer_table t
	 WHERE t.producer_url = p.producer_url AND t.snapshot_pending
	   AND (t.snapshot_retry_at IS NULL OR t.snapshot_retry_at <= now())
	 ORDER BY t.ref_table LIMIT 1;
	IF FOUND THEN
		kind := 'snapshot';
		ref_table := pt.ref_table;
		path := format('snapshot/%s?limit=100&consumer=%s%s', eventstream._urlencode(pt.ref_table),
					   eventstream._urlencode(eventstream._site_url()),
					   CASE WHEN pt.snapshot_after IS NOT NULL
							THEN '&after=' || eventstream._urlencode(pt.snapshot_after) ELSE '' END);
	ELSE
		kind := 'updates';
		path := eventstream._pull_path(p.cursor, 0);
	END IF;
END
$$;

-- A request for sent_path failed, or its answer could not be applied.  When
-- it was a page of a table's initial sync that is still what comes next,
-- record the error on the table and schedule its retry after 1 s, 2 s, 4 s,
-- ... up to 5 minutes (with jitter): the producer's other requests go on
-- meanwhile.  Returns whether it was such a request.
CREATE FUNCTION eventstream._snapshot_failed(producer_url text, sent_path text, error text) RETURNS boolean
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	SELECT * INTO r FROM eventstream._next_request(_snapshot_failed.producer_url) q;
	IF r.kind IS DISTINCT FROM 'snapshot' OR r.path IS DISTINCT FROM sent_path THEN
		RETURN false;
	END IF;
	UPDATE eventstream.producer_table t
	   SET snapshot_error = _snapshot_failed.error, snapshot_error_at = now(), snapshot_failures = t.snapshot_failures + 1,
		   snapshot_retry_at = now() + least(interval '1 s' * 2 ^ least(t.snapshot_failures, 20), interval '5 min')
										 * (0.75 + 0.5 * random())
	 WHERE t.producer_url = _snapshot_failed.producer_url AND t.ref_table = r.ref_table;
	RETURN true;
END
$$;

-- A producer's answer read into jsonb as the consumer reads it (quickly,
-- jsonb_in when the quick reading gives up); the same jsonb as body::jsonb.
CREATE FUNCTION eventstream._read_json(body text) RETURNS jsonb
	LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_read_json';

CREATE FUNCTION eventstream.sync_now(producer_url text) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
	path text := (SELECT r.path FROM eventstream._next_request(p.producer_url) r);
	body jsonb;
	deps jsonb;
	res record;
	total integer := 0;
BEGIN
	LOOP
		IF path LIKE 'snapshot/%' THEN
			-- A table's initial sync that fails is recorded on it and
			-- retried later; the other tables go on.
			BEGIN
				body := eventstream._producer_call(p.producer_url, p.api_key, p.api_secret, 'GET', path);
				deps := eventstream._fetch_missing(p, path, body);
				SELECT * INTO res FROM eventstream._apply_response(p.producer_url, path, body, deps);
			EXCEPTION WHEN OTHERS THEN
				-- (Not recorded when the worker went past it meanwhile.)
				IF eventstream._snapshot_failed(p.producer_url, path, SQLERRM) THEN
					RAISE WARNING 'initial sync from producer "%" failed: %', p.producer_url, SQLERRM
						USING HINT = 'It is retried later; eventstream.producer_table.snapshot_error keeps the error.';
				END IF;
				SELECT 0 AS n, r.path AS next_path, true AS more INTO res
				  FROM eventstream._next_request(p.producer_url) r;
			END;
		ELSE
			body := eventstream._producer_call(p.producer_url, p.api_key, p.api_secret, 'GET', path);
			deps := eventstream._fetch_missing(p, path, body);
			SELECT * INTO res FROM eventstream._apply_response(p.producer_url, path, body, deps);
		END IF;
		total := total + greatest(res.n, 0);
		path := res.next_path;
		EXIT WHEN NOT res.more;
	END LOOP;
	RETURN total;
END
$$;
COMMENT ON FUNCTION eventstream.sync_now(text) IS
	'Pull and apply everything a producer has for this site now, in the calling transaction; returns how many updates were processed.';

/*-------------------------------------------------------------------------
 *
 * dependencies.sql
 *	  Consumer side: what an answer refers to and is not here.
 *
 * Before a page is applied, the rows its updates refer to through foreign
 * keys and dynamic links (or, for mapped subscriptions, what the mapping's
 * Document fields ask for) and that this site does not have are fetched
 * from the producer, round after round.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The key columns of a row of tbl, as a JSON object, from its docname.
CREATE FUNCTION eventstream._key_of(tbl regclass, docname text) RETURNS jsonb
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	pk text[] := eventstream._pk_names(tbl);
	parts jsonb;
BEGIN
	IF docname IS NULL THEN
		RETURN NULL;
	ELSIF cardinality(pk) = 1 THEN
		RETURN jsonb_build_object(pk[1], docname);
	END IF;
	parts := docname::jsonb;
	IF jsonb_typeof(parts) <> 'array' OR jsonb_array_length(parts) <> cardinality(pk) THEN
		RAISE EXCEPTION 'docname "%" does not name a row of "%"', docname, tbl
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = format('Its key has %s columns: a docname is then a JSON array of their values.', cardinality(pk));
	END IF;
	RETURN (SELECT jsonb_object_agg(pk[i], parts->(i - 1)) FROM generate_subscripts(pk, 1) i);
END
$$;

-- "t.a = k.a AND t.b = k.b" over the key columns of tbl.
CREATE FUNCTION eventstream._key_match(tbl regclass) RETURNS text
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(format('t.%1$I = k.%1$I', c), ' AND ') FROM unnest(eventstream._pk_names(tbl)) c
$$;

-- The path under the API of one document of a producer's table.
CREATE FUNCTION eventstream._document_path(ref_table text, docname text) RETURNS text
	LANGUAGE sql IMMUTABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT format('documents/%s/%s', eventstream._urlencode(ref_table), eventstream._urlencode(docname))
$$;

-- What mapping an update asks the producer for first (_map_update's
-- "wants").  When mapping it raises (an eval: filter that fails: a division
-- by zero, a function the subscriber may not execute, a timeout), nothing:
-- the update is then mapped again when it is applied, in its own
-- subtransaction, and fails there alone (Failed in the sync log, with the
-- error, resyncable) instead of failing the look-up of the whole answer.
CREATE FUNCTION eventstream._map_wants(producer_url text, subscriber regrole, mapping text, update_type text,
									   data jsonb, fetched jsonb, docname text) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN coalesce(eventstream._map_update(producer_url, subscriber, mapping, update_type, data, fetched, docname)->'wants',
					'[]');
EXCEPTION WHEN OTHERS THEN
	RETURN '[]';
END
$$;

-- The rows that the updates (or snapshot documents) of an answer refer to
-- and that are not here: through foreign keys and registered dynamic links
-- of the rows and their child rows, plus the row an Update is for when it
-- is missing.  Documents created by the answer itself, and those in have
-- (fetched already: [{"ref_table", "docname", "data"}]), count as here.
-- For mapped subscriptions, what their Document fields ask for instead
-- (see _mapping_link).  Returns [{"path", "ref_table", "docname" or
-- "filters", ...}] to fetch from the producer (GET path under the API).
CREATE FUNCTION eventstream._missing_documents(producer_url text, body jsonb, have jsonb DEFAULT '[]',
											   targets boolean DEFAULT true)
		RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	docs jsonb;
	r record;
	gone jsonb[];
	result jsonb := '[]';
BEGIN
	-- Everything as {"update_type", "ref_table", "docname", "data"}.
	IF body ? 'documents' THEN
		docs := (SELECT coalesce(jsonb_agg(jsonb_build_object('update_type', 'Create', 'ref_table', body->>'ref_table',
															  'docname', d->>'docname', 'data', d->'data')), '[]')
				   FROM jsonb_array_elements(body->'documents') d);
	ELSE
		docs := coalesce(body->'updates', '[]');
	END IF;
	docs := docs || (SELECT coalesce(jsonb_agg(h || '{"update_type": "Create", "dependency": true}'), '[]')
					   FROM jsonb_array_elements(coalesce(have, '[]')) h
					  WHERE h->'data' IS NOT NULL AND h->'data' <> 'null' AND NOT h ? 'link');

	-- Mapped subscriptions: what the Document fields of their mappings ask
	-- for (they do not follow foreign keys).
	IF EXISTS (SELECT 1 FROM eventstream.producer_table t
				WHERE t.producer_url = _missing_documents.producer_url AND t.mapping IS NOT NULL) THEN
		SELECT coalesce(jsonb_agg(DISTINCT w), '[]') INTO result
		  FROM jsonb_array_elements(docs) u
		  JOIN eventstream.producer_table t
			ON t.producer_url = _missing_documents.producer_url AND t.ref_table = u->>'ref_table'
		  JOIN eventstream.producer p ON p.producer_url = t.producer_url
		 CROSS JOIN LATERAL jsonb_array_elements(
			   eventstream._map_wants(t.producer_url, p.subscriber, t.mapping, u->>'update_type', u->'data',
									  coalesce(have, '[]'), u->>'docname')) w
		 WHERE t.mapping IS NOT NULL
		   AND u->>'update_type' IN ('Create', 'Update') AND jsonb_typeof(u->'data') = 'object';
		docs := (SELECT coalesce(jsonb_agg(u ORDER BY o), '[]') FROM jsonb_array_elements(docs) WITH ORDINALITY x(u, o)
				  WHERE NOT EXISTS (SELECT 1 FROM eventstream.producer_table t
									 WHERE t.producer_url = _missing_documents.producer_url
									   AND t.ref_table = u->>'ref_table' AND t.mapping IS NOT NULL));
	END IF;

	-- The usual case, quickly: only Creates and Deletes, of tables that
	-- refer to nothing, without child rows.
	IF NOT EXISTS (SELECT 1 FROM jsonb_array_elements(docs) u WHERE u->>'update_type' = 'Update')
	   AND NOT EXISTS (SELECT 1
						 FROM (SELECT DISTINCT u->>'ref_table' AS ref FROM jsonb_array_elements(docs) u) x
						WHERE EXISTS (SELECT 1 FROM pg_constraint c
									   WHERE c.contype = 'f' AND c.conrelid = to_regclass(x.ref))
						   OR EXISTS (SELECT 1 FROM eventstream.dynamic_link l WHERE l.tbl = to_regclass(x.ref))
						   OR EXISTS (SELECT 1 FROM pg_constraint c
									   WHERE c.contype = 'f' AND c.confrelid = to_regclass(x.ref))) THEN
		RETURN result;
	END IF;

	-- The row an Update is for, kept here under a key of its own: missing
	-- when remote_document does not know it.
	IF targets THEN
		result := result || (SELECT coalesce(jsonb_agg(jsonb_build_object(
									  'path', eventstream._document_path(x.ref, x.docname),
									  'ref_table', x.ref, 'docname', x.docname)), '[]')
							   FROM (SELECT DISTINCT u->>'ref_table' AS ref, u->>'docname' AS docname, t.local_table
									   FROM jsonb_array_elements(docs) u
									   JOIN eventstream.producer_table t
										 ON t.producer_url = _missing_documents.producer_url AND t.ref_table = u->>'ref_table'
									  WHERE u->>'update_type' = 'Update' AND NOT t.use_same_name AND t.mapping IS NULL
										AND NOT coalesce((u->>'dependency')::boolean, false)) x
							  WHERE NOT EXISTS (SELECT 1 FROM eventstream.remote_document rd
												 WHERE rd.producer_url = _missing_documents.producer_url
												   AND rd.local_table = x.local_table AND rd.remote_docname = x.docname)
								AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(docs) c
												 WHERE c->>'update_type' = 'Create' AND c->>'ref_table' = x.ref
												   AND c->>'docname' = x.docname)
								AND NOT EXISTS (SELECT 1 FROM jsonb_array_elements(coalesce(have, '[]')) h
												 WHERE h->>'ref_table' = x.ref AND h->>'docname' = x.docname));
	END IF;

	-- Set-wise: the rows the answer writes, the keys they refer to, and
	-- which of those are neither here, nor created by the answer, nor
	-- fetched already; one existence query per referenced table.
	FOR r IN
		WITH d AS MATERIALIZED (
			SELECT u.kind, u.ref, u.docname, u.data,
				   CASE WHEN u.dependency THEN to_regclass(u.ref) ELSE t.local_table END AS tbl,
				   coalesce(t.use_same_name, true) AS same, t.remote_key AS rkey
			  FROM (SELECT x->>'update_type' AS kind, x->>'ref_table' AS ref, x->>'docname' AS docname,
						   x->'data' AS data, coalesce((x->>'dependency')::boolean, false) AS dependency
					  FROM jsonb_array_elements(docs) x
					 WHERE jsonb_typeof(x->'data') = 'object') u
			  LEFT JOIN eventstream.producer_table t
				ON t.producer_url = _missing_documents.producer_url AND t.ref_table = u.ref
		), tk AS MATERIALIZED (		-- the key columns of each table, once
			SELECT x.tbl, eventstream._pk_names(x.tbl) AS pk
			  FROM (SELECT DISTINCT d.tbl FROM d WHERE d.tbl IS NOT NULL) x
		), here AS (				-- created by the answer, or fetched
			SELECT ref, docname FROM d WHERE kind = 'Create'
			UNION SELECT h->>'ref_table', h->>'docname' FROM jsonb_array_elements(coalesce(have, '[]')) h
				   WHERE NOT h ? 'link'
		), rows AS (
			SELECT d.tbl, d.data AS r FROM d WHERE d.kind = 'Create' AND d.tbl IS NOT NULL
			UNION ALL
			SELECT to_regclass(e.key), er
			  FROM d, jsonb_each(d.data) e, jsonb_array_elements(e.value) er
			 WHERE d.kind = 'Create' AND jsonb_typeof(e.value) = 'array' AND to_regclass(e.key) IS NOT NULL
			UNION ALL
			SELECT d.tbl, d.data->'changed' FROM d WHERE d.kind = 'Update' AND d.tbl IS NOT NULL
			UNION ALL
			SELECT to_regclass(e.key), er
			  FROM d, jsonb_each(coalesce(d.data->'added', '{}') || coalesce(d.data->'row_changed', '{}')) e,
				   jsonb_array_elements(e.value) er
			 WHERE d.kind = 'Update' AND jsonb_typeof(e.value) = 'array' AND to_regclass(e.key) IS NOT NULL
		), fks AS (					-- foreign keys to primary keys
			SELECT c.conrelid AS tbl, c.confrelid::regclass AS rt,
				   array_agg(ca.attname::text ORDER BY u2.ord) AS cols,
				   array_agg(pa.attname::text ORDER BY u2.ord) AS refcols
			  FROM pg_constraint c
			  CROSS JOIN LATERAL unnest(c.conkey, c.confkey) WITH ORDINALITY u2(ck, pk, ord)
			  JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = u2.ck
			  JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = u2.pk
			 WHERE c.contype = 'f' AND c.conrelid IN (SELECT DISTINCT rows.tbl FROM rows)
			 GROUP BY c.oid, c.conrelid, c.confrelid
		), fkrefs AS (				-- distinct referenced keys
			SELECT DISTINCT fks.rt,
				   (SELECT jsonb_object_agg(fks.refcols[i], rows.r->fks.cols[i]) FROM generate_subscripts(fks.cols, 1) i) AS key
			  FROM rows JOIN fks ON fks.tbl = rows.tbl
			 WHERE fks.refcols = eventstream._pk_names(fks.rt)
			   AND NOT EXISTS (SELECT 1 FROM unnest(fks.cols) c WHERE rows.r->c IS NULL OR rows.r->c = 'null')
		), refs AS (				-- (table, wire name, docname, key), each computed once
			SELECT f.rt, eventstream._wire_name(f.rt) AS ref, eventstream._docname_of(f.rt, f.key) AS docname, f.key
			  FROM fkrefs f
			UNION
			-- dynamic links registered here: the type column names the table
			SELECT x.rt, eventstream._wire_name(x.rt), x.name, eventstream._key_of(x.rt, x.name)
			  FROM (SELECT DISTINCT
						   to_regclass(CASE WHEN position('.' IN rows.r->>l.type_column::text) > 0
											THEN rows.r->>l.type_column::text
											ELSE 'public.' || (rows.r->>l.type_column::text) END) AS rt,
						   rows.r->>l.key_column::text AS name
					  FROM rows JOIN eventstream.dynamic_link l ON l.tbl = rows.tbl
					 WHERE rows.r->>l.type_column::text IS NOT NULL AND rows.r->>l.key_column::text IS NOT NULL) x
			 WHERE x.rt IS NOT NULL
			UNION
			-- the row an Update is for (same name); a one-column key is
			-- built here, without a function call per update.  Not when
			-- the producer's key is another one than the table's: such a
			-- row is not looked for (an Update of it fails, resyncably).
			SELECT d.tbl, d.ref, d.docname,
				   CASE WHEN cardinality(k.pk) = 1 THEN jsonb_build_object(k.pk[1], d.docname)
						ELSE eventstream._key_of(d.tbl, d.docname) END
			  FROM d JOIN tk k ON k.tbl = d.tbl
			 WHERE d.kind = 'Update' AND d.same AND targets AND (d.rkey IS NULL OR d.rkey = k.pk)
		)
		SELECT refs.rt, array_agg(refs.key) AS keys
		  FROM refs
		 WHERE NOT EXISTS (SELECT 1 FROM here WHERE here.ref = refs.ref AND here.docname = refs.docname)
		 GROUP BY refs.rt
	LOOP
		EXECUTE format('SELECT array_agg(k.j) FROM unnest($1) k(j)'
					   ' WHERE NOT EXISTS (SELECT 1 FROM %s t, eventstream._populate(NULL::%s, k.j) k2 WHERE %s)',
					   r.rt, r.rt, replace(eventstream._key_match(r.rt), 'k.', 'k2.'))
			INTO gone USING r.keys;
		result := result || (SELECT coalesce(jsonb_agg(jsonb_build_object(
									 'path', eventstream._document_path(x.ref, x.docname),
									 'ref_table', x.ref, 'docname', x.docname)), '[]')
							   FROM (SELECT eventstream._wire_name(r.rt) AS ref, eventstream._docname_of(r.rt, g) AS docname
									   FROM unnest(gone) g) x);
	END LOOP;
	RETURN result;
END
$$;

-- Whether a page has an Update, whether it has an update of a table of this
-- extension, and the tables it names (_missing_for's quick paths).
CREATE FUNCTION eventstream._page_facts(body jsonb, OUT updates boolean, OUT own_tables boolean, OUT ref_tables text[])
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_page_facts';

-- The documents the Updates of a page are for, but for those its Creates
-- make (each once).
CREATE FUNCTION eventstream._page_updated(body jsonb, OUT ref_table text, OUT docname text) RETURNS SETOF record
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_page_updated';

-- _missing_documents for an answer as received: a snapshot page is of the
-- table whose initial sync is under way.
CREATE FUNCTION eventstream._missing_for(producer_url text, body jsonb, have jsonb, staged boolean DEFAULT false)
		RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	-- The row an Update is for is looked for only when the answer is a
	-- whole window: otherwise it may well be created by a page waiting in
	-- the inbox, or in the worker's memory (staged) (such an Update of a
	-- row that is really missing fails, and can be resynced).
	targets boolean := body ? 'documents'
		OR (coalesce((body->>'complete')::boolean, NOT (body->>'more')::boolean) AND NOT staged
			AND NOT EXISTS (SELECT 1 FROM eventstream.inbox i WHERE i.producer_url = _missing_for.producer_url));
	tgt record;
	pk_name name;
	pk_type text;
	here bigint;
	settled boolean := true;
	-- A mapping's Document fields are followed whatever the keys are.
	mapped boolean := EXISTS (SELECT 1 FROM eventstream.producer_table t
							   WHERE t.producer_url = _missing_for.producer_url AND t.mapping IS NOT NULL);
	facts record := eventstream._page_facts(body);
BEGIN
	-- The usual cases, without going through the whole answer more than
	-- once (_page_facts walks it once, in C): a page of updates with
	-- no dependency fetched yet, and either no table outside this extension
	-- has a foreign key and there are no dynamic links (then only the rows
	-- Updates are for can be missing), or the page has no Update and none
	-- of its tables refers to anything or has child rows (the same test as
	-- _missing_documents' quick one).
	IF NOT body ? 'documents' AND coalesce(have, '[]') = '[]' AND NOT mapped
	   AND NOT EXISTS (SELECT 1 FROM pg_constraint c
					    WHERE c.contype = 'f'
						  AND c.connamespace <> (SELECT e.extnamespace FROM pg_extension e
												  WHERE e.extname = 'eventstream'))
	   AND NOT EXISTS (SELECT 1 FROM eventstream.dynamic_link)
	   AND NOT facts.own_tables THEN
		IF NOT targets OR NOT facts.updates THEN
			RETURN '[]';
		END IF;
		-- (rows kept under their own keys here are found through
		-- remote_document: _missing_documents looks)
		settled := NOT EXISTS (SELECT 1 FROM eventstream.producer_table t
								WHERE t.producer_url = _missing_for.producer_url AND NOT t.use_same_name);
		-- Are the rows the Updates are for here (or created by the page)?
		-- By key, per table: an index lookup each, where _missing_documents
		-- would go through the whole table.  If any is not (or the key is
		-- not one column), _missing_documents says which.
		FOR tgt IN
			SELECT t.local_table AS tbl, t.remote_key AS rkey, array_agg(u.docname) AS names
			  FROM eventstream._page_updated(body) u
			  JOIN eventstream.producer_table t
				ON t.producer_url = _missing_for.producer_url AND t.ref_table = u.ref_table AND t.use_same_name
			 WHERE settled
			 GROUP BY t.local_table, t.remote_key
		LOOP
			-- (a table whose key is another one than the producer's: its
			-- rows are not looked for, see _missing_documents)
			CONTINUE WHEN tgt.rkey IS NOT NULL AND tgt.rkey IS DISTINCT FROM eventstream._pk_names(tgt.tbl);
			SELECT a.attname, format_type(a.atttypid, a.atttypmod) INTO pk_name, pk_type
			  FROM pg_attribute a
			 WHERE a.attrelid = tgt.tbl AND cardinality(eventstream._pk_attnums(tgt.tbl)) = 1
			   AND a.attnum = (eventstream._pk_attnums(tgt.tbl))[1];
			IF NOT FOUND THEN
				settled := false;
				EXIT;
			END IF;
			BEGIN
				EXECUTE format('SELECT count(*) FROM %s t WHERE t.%I = ANY ($1::%s[])', tgt.tbl, pk_name, pk_type)
					INTO here USING tgt.names;
			EXCEPTION WHEN OTHERS THEN
				here := -1;		-- a docname that is no key: let _missing_documents say
			END;
			IF here <> cardinality(tgt.names) THEN
				settled := false;
				EXIT;
			END IF;
		END LOOP;
		IF settled THEN
			RETURN '[]';
		END IF;
	ELSIF NOT body ? 'documents' AND coalesce(have, '[]') = '[]' AND NOT mapped
	   AND NOT facts.updates
	   AND NOT EXISTS (SELECT 1
						 FROM unnest(facts.ref_tables) x(ref)
						WHERE EXISTS (SELECT 1 FROM pg_constraint c
									   WHERE c.contype = 'f' AND c.conrelid = to_regclass(x.ref))
						   OR EXISTS (SELECT 1 FROM eventstream.dynamic_link l WHERE l.tbl = to_regclass(x.ref))
						   OR EXISTS (SELECT 1 FROM pg_constraint c
									   WHERE c.contype = 'f' AND c.confrelid = to_regclass(x.ref))) THEN
		RETURN '[]';
	END IF;
	RETURN (SELECT eventstream._missing_documents(producer_url,
			CASE WHEN body ? 'documents'
				 THEN body || jsonb_build_object('ref_table', (SELECT r.ref_table
																 FROM eventstream._next_request(_missing_for.producer_url) r))
				 ELSE body END,
			have, targets));
END
$$;

-- Fetch, from the calling session, what an answer refers to and is not
-- here (see _missing_documents), round after round (dependencies of
-- dependencies), at most 10 rounds.  A document the producer does not
-- serve is recorded with "data": null and "error".
CREATE FUNCTION eventstream._fetch_missing(p eventstream.producer, path text, body jsonb) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	deps jsonb := '[]';
	want jsonb;
	w jsonb;
	doc jsonb;
	err text;
BEGIN
	FOR round IN 1 .. 10 LOOP
		want := eventstream._missing_for(p.producer_url, body, deps);
		EXIT WHEN jsonb_array_length(want) = 0;
		FOR w IN SELECT * FROM jsonb_array_elements(want) LOOP
			BEGIN
				doc := eventstream._producer_call(p.producer_url, p.api_key, p.api_secret, 'GET', w->>'path');
				err := NULL;
			EXCEPTION WHEN OTHERS THEN
				doc := NULL;
				err := SQLERRM;
			END;
			deps := deps || (w || jsonb_build_object('data', doc, 'error', err));
		END LOOP;
	END LOOP;
	RETURN deps;
END
$$;

/*-------------------------------------------------------------------------
 *
 * apply.sql
 *	  Consumer side: applying what was received.
 *
 * A window of whole producer transactions is applied in one local
 * transaction, each update (in C, _apply_updates) in a subtransaction of
 * its own and logged in sync_log; a window larger than a page waits in the
 * inbox for its last page, and so do updates while an initial sync is
 * under way.  resync(), refetch() and resync_table() repair by hand.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- A row of base's type from a page's values, and a row in the format of a
-- page (apply_values.c): the apply's statements use them, as the
-- subscriber role (privileges.sql lets every role call them).
CREATE FUNCTION eventstream._populate(base anyelement, doc jsonb) RETURNS anyelement
	LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'eventstream_populate';

CREATE FUNCTION eventstream._row_json(r anyelement) RETURNS jsonb
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_row_json';

-- fetched: the documents fetched for the updates (see _fetch_missing),
-- which mapped subscriptions link to.
CREATE FUNCTION eventstream._apply_updates(producer_url text, subscriber regrole, updates jsonb, why text,
										   dependency boolean, fetched jsonb DEFAULT NULL) RETURNS integer[]
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_apply_updates';

CREATE FUNCTION eventstream._apply_update(producer_url text, subscriber regrole, upd jsonb, dependency boolean,
										  fetched jsonb DEFAULT NULL,
										  OUT status text, OUT error text, OUT docname text, OUT note text,
										  OUT local_table regclass)
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_apply_update';

-- Raise when the rows of tbl cannot be matched on a producer's key columns
-- remote_key: tbl lacks one of them, or has no primary key or unique index
-- on some of them alone (see apply_keys.c).
CREATE FUNCTION eventstream._check_remote_key(tbl regclass, remote_key text[]) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_check_remote_key';

-- Apply fetched dependencies, deepest first, each as a Create of its own.
CREATE FUNCTION eventstream._apply_deps(p eventstream.producer, deps jsonb) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r integer[];
BEGIN
	r := eventstream._apply_updates(p.producer_url, p.subscriber,
		(SELECT coalesce(jsonb_agg(jsonb_build_object('update_type', 'Create', 'ref_table', e->>'ref_table',
													  'docname', e->>'docname', 'data', e->'data',
													  'origin', p.producer_site_id) ORDER BY o DESC), '[]')
		   FROM jsonb_array_elements(coalesce(deps, '[]')) WITH ORDINALITY x(e, o)
		  WHERE e->'data' IS NOT NULL AND e->'data' <> 'null' AND NOT e ? 'link'),
		'dependency', true, deps);
	UPDATE eventstream.producer x
	   SET synced_count = x.synced_count + r[1] - r[2], failed_count = x.failed_count + r[2]
	 WHERE x.producer_url = p.producer_url;
	RETURN r[1];
END
$$;

-- Apply one page of a window (its updates, after the dependencies fetched
-- for it) in the calling transaction, and count them on the producer.
-- Returns how many updates were processed.
CREATE FUNCTION eventstream._apply_window_page(p eventstream.producer, updates jsonb, deps jsonb) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	n integer;
	r integer[];
BEGIN
	n := eventstream._apply_deps(p, deps);
	r := eventstream._apply_updates(p.producer_url, p.subscriber, updates, NULL, false, deps);
	UPDATE eventstream.producer x
	   SET synced_count = x.synced_count + r[1] - r[2], failed_count = x.failed_count + r[2]
	 WHERE x.producer_url = p.producer_url;
	RETURN n + r[1];
END
$$;

-- Apply the pages of the inbox up to the last one that ends a window.
-- Returns how many updates were processed; counts them on the producer.
CREATE FUNCTION eventstream._apply_inbox(p eventstream.producer) RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	upto bigint;
	staged record;
	n integer := 0;
BEGIN
	SELECT max(i.seq) INTO upto FROM eventstream.inbox i WHERE i.producer_url = p.producer_url AND i.complete;
	IF upto IS NULL THEN
		RETURN 0;
	END IF;
	FOR staged IN SELECT i.page, i.deps FROM eventstream.inbox i
				   WHERE i.producer_url = p.producer_url AND i.seq <= upto ORDER BY i.seq LOOP
		n := n + eventstream._apply_window_page(p, staged.page, staged.deps);
	END LOOP;
	DELETE FROM eventstream.inbox i WHERE i.producer_url = p.producer_url AND i.seq <= upto;
	RETURN n;
END
$$;

-- Apply, in the calling transaction, a page the worker held in memory: one
-- of the first pages of a window larger than a page, asked for with
-- sent_path while the stored cursor was still before the window (see
-- es_pull_hold).  The window's last page follows through _apply_response
-- in the same transaction, which stores the cursor.  Into the inbox instead
-- when pages wait there already, as _apply_page would have staged it.  Returns the number of updates applied,
-- or -1 when the cursor moved on meanwhile (nothing is done then).
CREATE FUNCTION eventstream._apply_held(producer_url text, sent_path text, updates jsonb, deps jsonb)
		RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _apply_held.producer_url FOR UPDATE;
	IF NOT FOUND OR (SELECT q.path FROM eventstream._next_request(p.producer_url) q) IS DISTINCT FROM sent_path THEN
		RETURN -1;
	END IF;
	-- (While an initial sync is under way _next_request asks for it, not
	-- for updates: the check above said -1 then.)
	IF EXISTS (SELECT 1 FROM eventstream.inbox i WHERE i.producer_url = p.producer_url) THEN
		INSERT INTO eventstream.inbox (producer_url, page, deps, complete)
			VALUES (p.producer_url, updates, coalesce(deps, '[]'), false);
		RETURN 0;
	END IF;
	RETURN eventstream._apply_window_page(p, updates, deps);
END
$$;

-- Raise unless cursor, sent by producer_url, is one its pulls take (the
-- shape _pull_page reads): a cursor that is not is never stored, since
-- every later pull would be refused with it.
CREATE FUNCTION eventstream._check_cursor(producer_url text, cursor text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	parts text[] := string_to_array(cursor, '/');
	valid boolean;
BEGIN
	BEGIN
		valid := parts[1] = 'v1' AND cardinality(parts) IN (4, 7, 8)
			AND parts[2]::bigint IS NOT NULL AND parts[3]::pg_snapshot IS NOT NULL AND parts[4]::bigint IS NOT NULL
			AND (cardinality(parts) = 4
				 OR (parts[5]::pg_snapshot IS NOT NULL AND parts[6]::bigint IS NOT NULL AND parts[7]::bigint IS NOT NULL
					 AND (cardinality(parts) = 7 OR parts[8] = '' OR parts[8]::bigint IS NOT NULL)));
	EXCEPTION WHEN OTHERS THEN
		valid := false;
	END;
	IF NOT coalesce(valid, false) THEN
		RAISE EXCEPTION 'producer "%" sent an invalid cursor "%"', producer_url, left(cursor, 200)
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'Nothing of its answer was applied, and the cursor stored before it was kept.',
				  HINT = 'Check that the producer runs a compatible version of eventstream.';
	END IF;
END
$$;

-- Apply a page of updates pulled with cursor sent_cursor, and store its
-- next cursor, in the calling transaction.  A window holds whole producer
-- transactions and is applied in one local transaction: a page that does
-- not end its window waits in the inbox for the rest, and so does every
-- page while an initial sync of the producer's tables is under way (not
-- while it is failing: see _snapshot_holding).
-- Returns the number of updates applied, or -1 when the cursor moved on
-- meanwhile (another session applied that page): nothing is done then.
CREATE FUNCTION eventstream._apply_page(producer_url text, sent_cursor text, page jsonb, deps jsonb DEFAULT '[]')
		RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	n integer := 0;
	complete boolean;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _apply_page.producer_url FOR UPDATE;
	IF NOT FOUND OR p.cursor IS DISTINCT FROM sent_cursor THEN
		RETURN -1;
	END IF;
	IF jsonb_typeof(page) IS DISTINCT FROM 'object' OR jsonb_typeof(page->'updates') IS DISTINCT FROM 'array'
	   OR jsonb_typeof(page->'cursor') IS DISTINCT FROM 'string' OR jsonb_typeof(page->'more') IS DISTINCT FROM 'boolean' THEN
		RAISE EXCEPTION 'producer "%" sent a malformed page', p.producer_url
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A page is {"updates": [...], "cursor": "...", "more": true|false, ...}.';
	END IF;
	PERFORM eventstream._check_cursor(p.producer_url, page->>'cursor');
	PERFORM eventstream._mirror_statuses(p.producer_url, page->'tables', page->'keys');
	complete := coalesce((page->>'complete')::boolean, NOT (page->>'more')::boolean);
	IF complete AND NOT EXISTS (SELECT 1 FROM eventstream.inbox i WHERE i.producer_url = p.producer_url)
	   AND NOT eventstream._snapshot_holding(p.producer_url) THEN
		-- The usual case: a whole window, applied at once.
		n := eventstream._apply_window_page(p, page->'updates', deps);
	ELSE
		IF jsonb_array_length(page->'updates') > 0 OR complete THEN
			INSERT INTO eventstream.inbox (producer_url, page, deps, complete)
				VALUES (p.producer_url, page->'updates', coalesce(deps, '[]'), complete);
		END IF;
		IF NOT eventstream._snapshot_holding(p.producer_url) THEN
			n := eventstream._apply_inbox(p);
		END IF;
	END IF;
	UPDATE eventstream.producer x
	   SET cursor = page->>'cursor', last_pull_at = now(), last_success_at = now(),
		   last_error = NULL, last_error_at = NULL, behind = (page->>'more')::boolean,
		   last_update_at = coalesce((page->>'newest_at')::timestamptz, x.last_update_at)
	 WHERE x.producer_url = p.producer_url;
	RETURN n;
END
$$;

-- Apply a page of a table's existing documents (initial sync), fetched
-- after sent_after; when it is the last, apply what waited in the inbox.
CREATE FUNCTION eventstream._apply_snapshot_page(producer_url text, ref_table text, sent_after text, page jsonb,
												 deps jsonb DEFAULT '[]')
		RETURNS integer
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	pt eventstream.producer_table;
	r integer[];
	n integer := 0;
	applied integer;
	failed integer;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _apply_snapshot_page.producer_url FOR UPDATE;
	SELECT * INTO pt FROM eventstream.producer_table t
	 WHERE t.producer_url = p.producer_url AND t.ref_table = _apply_snapshot_page.ref_table;
	IF NOT FOUND OR NOT pt.snapshot_pending OR pt.snapshot_after IS DISTINCT FROM sent_after THEN
		RETURN -1;
	END IF;
	IF jsonb_typeof(page) IS DISTINCT FROM 'object' OR jsonb_typeof(page->'documents') IS DISTINCT FROM 'array'
	   OR jsonb_typeof(page->'more') IS DISTINCT FROM 'boolean' THEN
		RAISE EXCEPTION 'producer "%" sent a malformed snapshot page', p.producer_url
			USING ERRCODE = 'invalid_parameter_value',
				  DETAIL = 'A snapshot page is {"documents": [{"docname": ..., "data": {...}}, ...], "next": "...", "more": true|false}.';
	END IF;
	IF pt.snapshot_from IS NULL THEN
		-- The copy's first page: what the sync log holds from here on is
		-- the copy's (and what is applied while it runs).
		pt.snapshot_from := (SELECT coalesce(max(l.id), 0) + 1 FROM eventstream.sync_log l);
		UPDATE eventstream.producer_table t SET snapshot_from = pt.snapshot_from
		 WHERE t.producer_url = pt.producer_url AND t.ref_table = pt.ref_table;
	END IF;
	n := eventstream._apply_deps(p, deps);
	r := eventstream._apply_updates(p.producer_url, p.subscriber,
		(SELECT coalesce(jsonb_agg(jsonb_build_object('update_type', 'Create', 'ref_table', pt.ref_table,
													  'docname', d->>'docname', 'data', d->'data',
													  'origin', p.producer_site_id)
								   -- a document read with a character this database cannot hold
								   || CASE WHEN d ? 'encoding_error'
										   THEN jsonb_build_object('encoding_error', d->'encoding_error')
										   ELSE '{}' END ORDER BY o), '[]')
		   FROM jsonb_array_elements(page->'documents') WITH ORDINALITY x(d, o)),
		'initial sync', false, deps);
	applied := r[1];
	failed := r[2];
	IF NOT (page->>'more')::boolean AND pt.condition IS NULL THEN
		-- The last page: the documents this producer gave before the copy
		-- (their last entry is not a Delete applied) that the copy did not
		-- bring, nor anything since, are no longer on the producer: deleted
		-- here, as the subscriber.  Under a condition a document the copy
		-- did not bring may still be there and merely fail it; a condition
		-- filters what is sent and never deletes here, so nothing is.
		r := eventstream._apply_updates(p.producer_url, p.subscriber,
			(SELECT coalesce(jsonb_agg(jsonb_build_object('update_type', 'Delete', 'ref_table', pt.ref_table,
														  'docname', d.remote_docname, 'data', NULL,
														  'origin', p.producer_site_id) ORDER BY d.remote_docname), '[]')
			   FROM (SELECT DISTINCT ON (l.remote_docname) l.remote_docname, l.update_type, l.status
					   FROM eventstream.sync_log l
					  WHERE l.producer_url = p.producer_url AND l.remote_ref_table = pt.ref_table
						AND l.id < pt.snapshot_from AND l.remote_docname IS NOT NULL
					  ORDER BY l.remote_docname, l.id DESC) d
			  WHERE NOT (d.update_type = 'Delete' AND d.status = 'Synced')
				AND NOT EXISTS (SELECT 1 FROM eventstream.sync_log l
								 WHERE l.producer_url = p.producer_url AND l.remote_ref_table = pt.ref_table
								   AND l.id >= pt.snapshot_from AND l.remote_docname = d.remote_docname)),
			'initial sync: not on the producer', false);
		applied := applied + r[1];
		failed := failed + r[2];
	END IF;
	n := n + applied;
	UPDATE eventstream.producer_table t
	   SET snapshot_after = coalesce(page->>'next', t.snapshot_after),
		   snapshot_pending = (page->>'more')::boolean,
		   snapshot_error = NULL, snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL
	 WHERE t.producer_url = pt.producer_url AND t.ref_table = pt.ref_table;
	UPDATE eventstream.producer x
	   SET synced_count = x.synced_count + applied - failed, failed_count = x.failed_count + failed,
		   last_pull_at = now(), last_success_at = now(), last_error = NULL, last_error_at = NULL
	 WHERE x.producer_url = p.producer_url;
	IF NOT eventstream._snapshot_holding(p.producer_url) THEN
		n := n + eventstream._apply_inbox(p);
	END IF;
	RETURN n;
END
$$;

-- Whether an initial sync of a producer's tables is under way and not
-- failing: the producer's updates wait in the inbox meanwhile, to be
-- applied after the copied rows.  A table whose copy failed holds nothing
-- back while it waits for its retry: the updates of every table (its own
-- too) are applied as they arrive, and the copy, once it succeeds, brings
-- the rows that existed.
CREATE FUNCTION eventstream._snapshot_holding(producer_url text) RETURNS boolean
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT EXISTS (SELECT 1 FROM eventstream.producer_table t
					WHERE t.producer_url = _snapshot_holding.producer_url AND t.snapshot_pending
					  AND t.snapshot_error IS NULL)
$$;

-- Apply the answer to the request for sent_path (see _next_request) and
-- say what to ask next, and whether at once (more) or by long-polling.
-- n is -1 when the answer is stale (someone else applied it already).
CREATE FUNCTION eventstream._apply_response(producer_url text, sent_path text, body jsonb, deps jsonb DEFAULT '[]',
											OUT n integer, OUT next_path text, OUT more boolean)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	r record;
	pt eventstream.producer_table;
BEGIN
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = _apply_response.producer_url FOR UPDATE;
	IF NOT FOUND THEN
		n := -1;
		RETURN;
	END IF;
	SELECT * INTO r FROM eventstream._next_request(p.producer_url);
	IF r.path IS DISTINCT FROM sent_path THEN
		n := -1;
	ELSIF r.kind = 'snapshot' THEN
		SELECT * INTO pt FROM eventstream.producer_table t
		 WHERE t.producer_url = p.producer_url AND t.ref_table = r.ref_table;
		n := eventstream._apply_snapshot_page(p.producer_url, pt.ref_table, pt.snapshot_after,
											  body || jsonb_build_object('ref_table', pt.ref_table), deps);
	ELSE
		n := eventstream._apply_page(p.producer_url, p.cursor, body, deps);
	END IF;
	SELECT * INTO r FROM eventstream._next_request(p.producer_url);
	next_path := r.path;
	more := r.kind = 'snapshot' OR coalesce((body->>'more')::boolean, false) OR n < 0;
END
$$;

CREATE FUNCTION eventstream.resync(sync_log_id bigint) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	l eventstream.sync_log;
	newer eventstream.sync_log;
	p eventstream.producer;
	r record;
	upd jsonb;
	dependency boolean;
	deps jsonb := '[]';
BEGIN
	-- The update exactly as it was received (what resync changes of an
	-- entry is its outcome, never these).
	SELECT * INTO l FROM eventstream.sync_log x WHERE x.id = sync_log_id;
	upd := jsonb_build_object('id', l.update_log_id, 'update_type', l.update_type, 'ref_table', l.remote_ref_table,
							  'docname', l.remote_docname, 'data', l.data, 'origin', l.origin);
	dependency := coalesce(l.note, '') LIKE 'dependency%';
	-- First, holding no lock (the site worker applies meanwhile), fetch
	-- what the update refers to and is not here, or, mapped, what its
	-- Document fields link to.
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = l.producer_url;
	IF FOUND AND l.status = 'Failed' AND l.update_type IN ('Create', 'Update') THEN
		deps := eventstream._fetch_missing(p, NULL, jsonb_build_object('updates', jsonb_build_array(upd), 'complete', true));
	END IF;

	SELECT * INTO l FROM eventstream.sync_log x WHERE x.id = sync_log_id FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'sync log % does not exist', sync_log_id USING ERRCODE = 'undefined_object';
	END IF;
	IF l.status <> 'Failed' THEN
		RAISE EXCEPTION 'sync log % is %, not Failed', sync_log_id, l.status
			USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Only Failed entries are resynced.';
	END IF;
	-- An update read with a character this database cannot hold was logged
	-- without its data (apply.c, ES_ENCODING_NOTE): nothing to apply again.
	IF coalesce(l.note, '') LIKE '%no data kept: a character this database cannot hold%' THEN
		RAISE EXCEPTION 'sync log % has no data to apply again', sync_log_id
			USING ERRCODE = 'object_not_in_prerequisite_state', DETAIL = l.error,
				  HINT = format('Once the producer holds a value this database can hold, bring the document with eventstream.refetch(%L, %L, %L).',
								l.producer_url, l.remote_ref_table, l.remote_docname);
	END IF;
	p := eventstream._producer_row(l.producer_url);
	-- A later update of the same document was applied: this one, applied
	-- again now, would roll the document back to an older state.
	SELECT * INTO newer FROM eventstream.sync_log x
	 WHERE x.id > l.id AND x.producer_url = l.producer_url AND x.remote_ref_table = l.remote_ref_table
	   AND x.remote_docname = l.remote_docname AND x.status = 'Synced'
	 ORDER BY x.id DESC LIMIT 1;
	IF FOUND THEN
		RAISE EXCEPTION 'sync log % is older than an update of the same document applied since', sync_log_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Sync log %s (%s of "%s") was applied after it; applying this one again would roll the document back.',
								  newer.id, newer.update_type, l.remote_docname),
				  HINT = format('Bring the document to the producer''s current state with eventstream.refetch(%L, %L, %L).',
								l.producer_url, l.remote_ref_table, l.remote_docname);
	END IF;
	PERFORM eventstream._apply_deps(p, deps);
	SELECT * INTO r FROM eventstream._apply_update(p.producer_url, p.subscriber, upd, dependency, deps);
	UPDATE eventstream.sync_log x
	   SET status = r.status, error = r.error, note = coalesce(r.note, x.note),
		   docname = coalesce(r.docname, x.docname), resynced_at = now()
	 WHERE x.id = l.id;
	IF r.status = 'Synced' THEN
		UPDATE eventstream.producer x SET failed_count = x.failed_count - 1, synced_count = x.synced_count + 1
		 WHERE x.producer_url = p.producer_url;
	END IF;
	RETURN r.status;
END
$$;
COMMENT ON FUNCTION eventstream.resync(bigint) IS
	'Apply a Failed sync log entry again, exactly as it was received; returns and stores the new status.  Refused when a later update of the same document was applied since (eventstream.refetch() brings the document up to date).';

CREATE FUNCTION eventstream.refetch(producer_url text, ref_table text, docname text) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	wire text := eventstream._qualified(ref_table);
	r record;
	code text;
	upd jsonb;
	deps jsonb := '[]';
	n integer[];
BEGIN
	-- First, holding no lock (the site worker applies meanwhile), fetch.
	SELECT * INTO p FROM eventstream.producer x WHERE x.producer_url = rtrim(btrim(refetch.producer_url), '/');
	IF NOT FOUND THEN
		p := eventstream._producer_row(producer_url);	-- says it is not added
	END IF;
	IF docname IS NULL THEN
		RAISE EXCEPTION 'docname must be given' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF NOT EXISTS (SELECT 1 FROM eventstream.producer_table t
					WHERE t.producer_url = p.producer_url AND t.ref_table = wire AND NOT t.unsubscribe) THEN
		RAISE EXCEPTION 'table "%" is not subscribed from producer "%"', wire, p.producer_url
			USING ERRCODE = 'undefined_object', HINT = 'Subscribe to it with eventstream.subscribe().';
	END IF;
	-- The document as the producer has it now (from this session, like
	-- sync_now()); a 404 for the document itself means it is gone there.
	SELECT * INTO r FROM eventstream._http_request('GET', p.producer_url || '/api/eventstream/v1/'
													   || eventstream._document_path(wire, docname),
												   p.api_key || ':' || p.api_secret, NULL, 30);
	IF r.status = 404 THEN
		BEGIN
			code := (r.body::jsonb)->'error'->>'code';
		EXCEPTION WHEN OTHERS THEN
			code := NULL;
		END;
	END IF;
	IF r.status = 200 THEN
		upd := jsonb_build_object('update_type', 'Create', 'ref_table', wire, 'docname', docname,
								  'data', eventstream._read_json(r.body), 'origin', p.producer_site_id);
		deps := eventstream._fetch_missing(p, NULL, jsonb_build_object('updates', jsonb_build_array(upd), 'complete', true));
	ELSIF code = '42704' THEN
		upd := jsonb_build_object('update_type', 'Delete', 'ref_table', wire, 'docname', docname, 'data', NULL,
								  'origin', p.producer_site_id);
	ELSE
		-- Any other answer: the producer's error, as _producer_call raises it.
		PERFORM eventstream._producer_call(p.producer_url, p.api_key, p.api_secret, 'GET',
										   eventstream._document_path(wire, docname));
		RAISE EXCEPTION 'producer "%" answered HTTP % for document "%"', p.producer_url, r.status, docname
			USING ERRCODE = 'connection_exception';
	END IF;
	p := eventstream._producer_row(p.producer_url);
	PERFORM eventstream._apply_deps(p, deps);
	n := eventstream._apply_updates(p.producer_url, p.subscriber, jsonb_build_array(upd), 'refetch', false, deps);
	UPDATE eventstream.producer x
	   SET synced_count = x.synced_count + n[1] - n[2], failed_count = x.failed_count + n[2]
	 WHERE x.producer_url = p.producer_url;
	IF n[2] = 0 THEN
		-- The document is now as the producer has it: the Failed entries
		-- of its earlier updates are settled (resync() would refuse them),
		-- so producer_status stops asking for them.
		UPDATE eventstream.sync_log l
		   SET status = 'Synced', resynced_at = now(), note = concat_ws('; ', l.note, 'settled by refetch')
		 WHERE l.producer_url = p.producer_url AND l.status = 'Failed'
		   AND l.remote_ref_table = wire AND l.remote_docname = refetch.docname;
	END IF;
	RETURN CASE WHEN n[2] > 0 THEN 'Failed' ELSE 'Synced' END;
END
$$;
COMMENT ON FUNCTION eventstream.refetch(text, text, text) IS
	'Bring one document to the producer''s current state: fetch it (from this session, over HTTP) and apply it as a Create, or as a Delete when the producer no longer has it; logged in the sync log with the note refetch; once applied, the Failed entries of the document''s earlier updates are marked Synced (note: settled by refetch).  Returns Synced or Failed.';

CREATE FUNCTION eventstream.resync_table(producer_url text, ref_table text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer := eventstream._producer_row(producer_url);
	wire text := eventstream._qualified(ref_table);
	pt eventstream.producer_table;
BEGIN
	SELECT * INTO pt FROM eventstream.producer_table t WHERE t.producer_url = p.producer_url AND t.ref_table = wire;
	IF NOT FOUND OR pt.unsubscribe THEN
		RAISE EXCEPTION 'table "%" is not subscribed from producer "%"', wire, p.producer_url
			USING ERRCODE = 'undefined_object', HINT = 'Subscribe to it with eventstream.subscribe(); that copies it.';
	END IF;
	IF pt.status <> 'Approved' THEN
		RAISE EXCEPTION 'the subscription to table "%" is %, not Approved', wire, pt.status
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  HINT = 'The table is copied once the producer''s admin approves it.';
	END IF;
	UPDATE eventstream.producer_table t
	   SET snapshot_pending = true, snapshot_after = NULL, snapshot_from = NULL, snapshot_error = NULL,
		   snapshot_error_at = NULL, snapshot_failures = 0, snapshot_retry_at = NULL
	 WHERE t.producer_url = p.producer_url AND t.ref_table = wire;
	PERFORM eventstream._wake_worker();
END
$$;
COMMENT ON FUNCTION eventstream.resync_table(text, text) IS
	'Copy a subscribed table again from the producer (its initial sync): rows are brought to the producer''s state, and rows this producer gave that it no longer has are deleted; updates wait until the copy is done.';

CREATE FUNCTION eventstream.remote_name(local_table regclass, local_docname text,
										OUT producer_url text, OUT remote_docname text)
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT d.producer_url, d.remote_docname FROM eventstream.remote_document d
	 WHERE d.local_table = remote_name.local_table AND d.local_docname = remote_name.local_docname
$$;
COMMENT ON FUNCTION eventstream.remote_name(regclass, text) IS
	'The producer and producer-side docname of a local row that got its own key (use_same_name = false).';

-- The foreign keys the apply enforces itself on tbl, as statements.  The
-- apply writes with session_replication_role = replica, under which the
-- triggers that enforce foreign keys do not fire (see apply.c,
-- es_apply_replica): "out" are tbl's own keys, each a statement that says
-- whether the row $1 (jsonb, as stored) refers to a row that is there
-- (locking it as the key's own check does), and that condition alone, over
-- the row aliased r; "in" are the keys of other
-- tables referring to tbl, each a statement doing the ON DELETE action
-- for the deleted row $1: the count of rows still referring to it (NO
-- ACTION, RESTRICT), or the rows deleted (CASCADE) or set to their
-- defaults (SET DEFAULT), or none (SET NULL).  Each runs as the owner of
-- the table it reads or writes, as PostgreSQL's own checks do.  Clones of
-- a key on partitions are left out: the key of the partitioned table
-- covers them.
CREATE FUNCTION eventstream._apply_fks(tbl regclass) RETURNS jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH k AS (
		SELECT c.oid, c.conparentid, c.conname, c.conrelid, c.confrelid, c.confmatchtype, c.confdeltype,
			   (SELECT array_agg(quote_ident(a.attname) ORDER BY u.o)
				  FROM unnest(c.conkey) WITH ORDINALITY u(n, o)
				  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = u.n) AS fcols,
			   (SELECT array_agg(a.attname::text ORDER BY u.o)
				  FROM unnest(c.conkey) WITH ORDINALITY u(n, o)
				  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = u.n) AS fnames,
			   (SELECT array_agg(a.attname::text ORDER BY u.o)
				  FROM unnest(c.confkey) WITH ORDINALITY u(n, o)
				  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = u.n) AS pnames,
			   (SELECT array_agg(quote_ident(a.attname) ORDER BY u.o)
				  FROM unnest(c.confkey) WITH ORDINALITY u(n, o)
				  JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = u.n) AS pcols,
			   (SELECT array_agg(quote_ident(a.attname) ORDER BY u.o)
				  FROM unnest(c.confdelsetcols) WITH ORDINALITY u(n, o)
				  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = u.n) AS setcols,
			   CASE WHEN fr.relkind = 'p' THEN '' ELSE 'ONLY ' END || c.conrelid::regclass::text AS fref,
			   CASE WHEN pr.relkind = 'p' THEN '' ELSE 'ONLY ' END || c.confrelid::regclass::text AS pref,
			   fr.relowner AS fowner, pr.relowner AS powner, fr.relname::text AS fname, pr.relname::text AS pname
		  FROM pg_constraint c
		  JOIN pg_class fr ON fr.oid = c.conrelid
		  JOIN pg_class pr ON pr.oid = c.confrelid
		 WHERE c.contype = 'f' AND (c.conrelid = tbl OR c.confrelid = tbl)
	), outs0 AS (
		SELECT k.conname, k.confrelid, k.powner, k.pname,
			   (SELECT string_agg(format('r.%s IS NULL', f), ' OR ') FROM unnest(k.fcols) f) AS anynull,
			   (SELECT string_agg(format('r.%s IS NULL', f), ' AND ') FROM unnest(k.fcols) f) AS allnull,
			   (SELECT string_agg(format('x.%s = r.%s', p, f), ' AND ') FROM unnest(k.pcols, k.fcols) u(p, f)) AS match,
			   k.fnames, k.pref, k.confmatchtype
		  FROM k LEFT JOIN pg_constraint pc ON pc.oid = k.conparentid
		 WHERE k.conrelid = tbl AND (pc.oid IS NULL OR pc.conrelid <> k.conrelid)
	), outs AS (
		SELECT o.*, format('(%s EXISTS (SELECT 1 FROM %s x WHERE %s FOR KEY SHARE OF x))',
						   CASE WHEN o.confmatchtype = 'f' THEN format('(%s) OR NOT (%s) AND', o.allnull, o.anynull)
								ELSE o.anynull || ' OR' END,
						   o.pref, o.match) AS cond
		  FROM outs0 o
	), ins AS (
		SELECT k.*,
			   (SELECT string_agg(format('x.%s = r.%s', f, p), ' AND ') FROM unnest(k.fcols, k.pcols) u(f, p)) AS match
		  FROM k LEFT JOIN pg_constraint pc ON pc.oid = k.conparentid
		 WHERE k.confrelid = tbl AND (pc.oid IS NULL OR pc.confrelid <> k.confrelid)
	)
	SELECT jsonb_build_object(
		'out', coalesce((SELECT jsonb_agg(jsonb_build_object(
			'name', o.conname, 'relname', o.pname, 'owner', o.powner, 'cols', to_jsonb(o.fnames),
			'sql', format('SELECT pg_catalog.jsonb_build_object(''ok'', %s) FROM eventstream._populate(NULL::%s, $1) r',
						  o.cond, tbl),
			'cond', o.cond)) FROM outs o), '[]'),
		'in', coalesce((SELECT jsonb_agg(jsonb_build_object(
			'name', i.conname, 'relname', i.fname, 'relid', i.conrelid::oid, 'owner', i.fowner,
			'action', i.confdeltype,
			'sql', CASE i.confdeltype
				WHEN 'c' THEN format('WITH d AS (DELETE FROM %s x USING eventstream._populate(NULL::%s, $1) r WHERE %s'
									 ' RETURNING eventstream._row_json(x.*) AS row)'
									 ' SELECT pg_catalog.jsonb_build_object(''rows'', coalesce(pg_catalog.jsonb_agg(d.row), ''[]'')) FROM d',
									 i.fref, tbl, i.match)
				WHEN 'n' THEN format('WITH d AS (UPDATE %s x SET %s FROM eventstream._populate(NULL::%s, $1) r WHERE %s'
									 ' RETURNING 1) SELECT pg_catalog.jsonb_build_object(''rows'', ''[]''::jsonb, ''n'', pg_catalog.count(*)) FROM d',
									 i.fref, (SELECT string_agg(format('%s = NULL', f), ', ') FROM unnest(coalesce(i.setcols, i.fcols)) f),
									 tbl, i.match)
				WHEN 'd' THEN format('WITH d AS (UPDATE %s x SET %s FROM eventstream._populate(NULL::%s, $1) r WHERE %s'
									 ' RETURNING eventstream._row_json(x.*) AS row)'
									 ' SELECT pg_catalog.jsonb_build_object(''rows'', coalesce(pg_catalog.jsonb_agg(d.row), ''[]'')) FROM d',
									 i.fref, (SELECT string_agg(format('%s = DEFAULT', f), ', ') FROM unnest(coalesce(i.setcols, i.fcols)) f),
									 tbl, i.match)
				ELSE format('SELECT pg_catalog.jsonb_build_object(''n'', pg_catalog.count(*)) FROM'
							' (SELECT 1 FROM %s x, eventstream._populate(NULL::%s, $1) r WHERE %s LIMIT 1) s',
							i.fref, tbl, i.match)
			END,
			'cols', to_jsonb(i.pnames))) FROM ins i), '[]'))
$$;

/*-------------------------------------------------------------------------
 *
 * mapping.sql
 *	  Consumer side: Document Type Mappings.
 *
 * A mapping writes the documents of a remote table into a local table of
 * another shape, field by field, with nested mappings for child rows and
 * for the documents a field links to.  The filters' eval: expressions are
 * checked and evaluated in C.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.document_type_mapping (
	mapping_name		text PRIMARY KEY,
	local_table			regclass NOT NULL,
	remote_table		text NOT NULL
);
COMMENT ON TABLE eventstream.document_type_mapping IS
	'Document Type Mapping: documents of remote_table on a producer are written into local_table by the field rules of field_mapping.';

CREATE TABLE eventstream.field_mapping (
	mapping_name		text NOT NULL REFERENCES eventstream.document_type_mapping ON DELETE CASCADE,
	local_fieldname		text NOT NULL,
	remote_fieldname	text,
	default_value		text,
	mapping_type		text CHECK (mapping_type IN ('Child Table', 'Document')),
	mapping				text REFERENCES eventstream.document_type_mapping,
	remote_value_filters jsonb,
	PRIMARY KEY (mapping_name, local_fieldname)
);
COMMENT ON TABLE eventstream.field_mapping IS
	'Field rules of a mapping: local_fieldname takes remote_fieldname (or default_value when that is missing or null on a Create); Child Table rows and Document dependencies go through a nested mapping.';
COMMENT ON COLUMN eventstream.field_mapping.local_fieldname IS
	'A column of the local table, or for mapping_type ''Child Table'' the local child table (schema.table).';
COMMENT ON COLUMN eventstream.field_mapping.remote_value_filters IS
	'For Document: {"remote field": spec} finding the dependency on the producer; spec is a field of the remote document, a literal, or eval:<SQL expression over doc jsonb>.';

CREATE FUNCTION eventstream._check_filter_expression(expr text) RETURNS void
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_check_filter_expression';
CREATE FUNCTION eventstream._eval_filter(expr text, doc jsonb, role regrole) RETURNS jsonb
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_eval_filter';

-- The one foreign key of child to parent, as {"child col": "parent col"},
-- or NULL when there is not exactly one.
CREATE FUNCTION eventstream._child_fk(parent regclass, child regclass) RETURNS jsonb
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN count(*) = 1 THEN min(l::text)::jsonb END
	  FROM (SELECT jsonb_object_agg(ca.attname, pa.attname) AS l
			  FROM pg_constraint c
			  CROSS JOIN LATERAL unnest(c.conkey, c.confkey) u(ck, pk)
			  JOIN pg_attribute ca ON ca.attrelid = c.conrelid AND ca.attnum = u.ck
			  JOIN pg_attribute pa ON pa.attrelid = c.confrelid AND pa.attnum = u.pk
			 WHERE c.contype = 'f' AND c.conrelid = child AND c.confrelid = parent
			 GROUP BY c.oid) x
$$;

/*
 * Validate a field rule as it is written (trigger on field_mapping): the
 * local column exists; a column that is a foreign key, and a child table,
 * get a nested mapping or a default; a nested mapping is of the right
 * kind (a Child Table's writes into that child table, a Document's into
 * the table the column refers to) and mappings do not refer to each other
 * in a cycle; a Document rule has remote_value_filters, whose eval:
 * expressions parse.
 */
CREATE FUNCTION eventstream._check_field_mapping() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m eventstream.document_type_mapping;
	inner_m eventstream.document_type_mapping;
	child regclass;
	fk regclass;
	f record;
	cycle text;
BEGIN
	SELECT * INTO m FROM eventstream.document_type_mapping x WHERE x.mapping_name = NEW.mapping_name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mapping "%" does not exist', NEW.mapping_name USING ERRCODE = 'undefined_object',
			HINT = 'Create it with eventstream.create_mapping().';
	END IF;
	NEW.mapping_type := nullif(btrim(NEW.mapping_type), '');
	NEW.remote_fieldname := nullif(btrim(NEW.remote_fieldname), '');
	IF NEW.mapping IS NOT NULL THEN
		SELECT * INTO inner_m FROM eventstream.document_type_mapping x WHERE x.mapping_name = NEW.mapping;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'nested mapping "%" does not exist', NEW.mapping USING ERRCODE = 'undefined_object';
		END IF;
		IF NEW.mapping_type IS NULL THEN
			RAISE EXCEPTION 'field "%" of mapping "%" names a nested mapping but no mapping_type', NEW.local_fieldname, m.mapping_name
				USING ERRCODE = 'invalid_parameter_value', HINT = 'mapping_type is ''Child Table'' or ''Document''.';
		END IF;
	END IF;
	IF NEW.remote_fieldname IS NULL AND NEW.default_value IS NULL THEN
		RAISE EXCEPTION 'field "%" of mapping "%" needs a remote_fieldname or a default_value', NEW.local_fieldname, m.mapping_name
			USING ERRCODE = 'invalid_parameter_value';
	END IF;

	IF NEW.mapping_type = 'Child Table' THEN
		NEW.local_fieldname := eventstream._qualified(NEW.local_fieldname);
		child := to_regclass(NEW.local_fieldname);
		IF child IS NULL OR eventstream._child_fk(m.local_table, child) IS NULL THEN
			RAISE EXCEPTION 'field "%" of mapping "%" is not a child table of %', NEW.local_fieldname, m.mapping_name, m.local_table
				USING ERRCODE = 'undefined_table',
					  HINT = 'For mapping_type ''Child Table'' local_fieldname names a table with exactly one foreign key to the local table.';
		END IF;
		IF NEW.mapping IS NULL THEN
			RAISE EXCEPTION 'child table "%" of mapping "%" needs a nested mapping', NEW.local_fieldname, m.mapping_name
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Create a mapping for the child rows and give it as mapping.';
		END IF;
		IF NEW.remote_fieldname IS NULL THEN
			RAISE EXCEPTION 'child table "%" of mapping "%" needs the remote child table as remote_fieldname', NEW.local_fieldname, m.mapping_name
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		NEW.remote_fieldname := eventstream._qualified(NEW.remote_fieldname);
		IF inner_m.local_table <> child THEN
			RAISE EXCEPTION 'nested mapping "%" writes into %, not into the child table %', inner_m.mapping_name, inner_m.local_table, child
				USING ERRCODE = 'invalid_parameter_value';
		END IF;
		IF EXISTS (SELECT 1 FROM eventstream.field_mapping x WHERE x.mapping_name = inner_m.mapping_name
					  AND x.mapping_type IS NOT NULL) THEN
			RAISE EXCEPTION 'nested mapping "%" of child table "%" has nested mappings itself', inner_m.mapping_name, NEW.local_fieldname
				USING ERRCODE = 'feature_not_supported',
					  HINT = 'Child rows are mapped field by field; their own dependencies are not synced.';
		END IF;
	ELSE
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = m.local_table AND a.attname = NEW.local_fieldname
						  AND a.attnum > 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'column "%" of mapping "%" does not exist in table %', NEW.local_fieldname, m.mapping_name, m.local_table
				USING ERRCODE = 'undefined_column';
		END IF;
		-- The table the column refers to, if it is (the first column of) a foreign key.
		SELECT c.confrelid::regclass INTO fk FROM pg_constraint c
		  JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
		 WHERE c.contype = 'f' AND c.conrelid = m.local_table AND a.attname = NEW.local_fieldname
		 LIMIT 1;
		IF fk IS NOT NULL AND NEW.mapping IS NULL AND NEW.default_value IS NULL THEN
			RAISE EXCEPTION 'column "%" of mapping "%" refers to table % but has neither a nested mapping nor a default_value',
					NEW.local_fieldname, m.mapping_name, fk
				USING ERRCODE = 'invalid_parameter_value',
					  HINT = 'Map the referenced document with mapping_type => ''Document'', a nested mapping and remote_value_filters, or give a default_value.';
		END IF;
		IF NEW.mapping_type = 'Document' THEN
			IF NEW.mapping IS NULL THEN
				RAISE EXCEPTION 'Document field "%" of mapping "%" needs a nested mapping', NEW.local_fieldname, m.mapping_name
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
			IF jsonb_typeof(NEW.remote_value_filters) IS DISTINCT FROM 'object' OR NEW.remote_value_filters = '{}' THEN
				RAISE EXCEPTION 'Document field "%" of mapping "%" needs remote_value_filters', NEW.local_fieldname, m.mapping_name
					USING ERRCODE = 'invalid_parameter_value',
						  HINT = 'remote_value_filters is a JSON object {"remote field": spec} that finds the document on the producer.';
			END IF;
			FOR f IN SELECT * FROM jsonb_each(NEW.remote_value_filters) LOOP
				IF jsonb_typeof(f.value) NOT IN ('string', 'number', 'boolean') THEN
					RAISE EXCEPTION 'remote_value_filters of field "%": the spec of "%" must be a string, number or boolean', NEW.local_fieldname, f.key
						USING ERRCODE = 'invalid_parameter_value';
				END IF;
				IF f.value #>> '{}' LIKE 'eval:%' THEN
					PERFORM eventstream._check_filter_expression(substr(f.value #>> '{}', 6));
				END IF;
			END LOOP;
			IF fk IS NOT NULL AND inner_m.local_table <> fk THEN
				RAISE EXCEPTION 'nested mapping "%" writes into %, but column "%" refers to %', inner_m.mapping_name,
						inner_m.local_table, NEW.local_fieldname, fk
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
			IF cardinality(eventstream._pk_attnums(inner_m.local_table)) IS DISTINCT FROM 1 THEN
				RAISE EXCEPTION 'nested mapping "%" writes into %, which has no one-column primary key to link to', inner_m.mapping_name, inner_m.local_table
					USING ERRCODE = 'invalid_parameter_value';
			END IF;
			IF EXISTS (SELECT 1 FROM eventstream.field_mapping x WHERE x.mapping = NEW.mapping_name
						  AND x.mapping_type = 'Child Table') THEN
				RAISE EXCEPTION 'mapping "%" maps child rows, which cannot have Document fields', m.mapping_name
					USING ERRCODE = 'feature_not_supported';
			END IF;
		ELSIF NEW.mapping_type IS NULL AND NEW.remote_value_filters IS NOT NULL THEN
			RAISE EXCEPTION 'remote_value_filters are for Document fields only' USING ERRCODE = 'invalid_parameter_value';
		END IF;
	END IF;

	-- No cycles: the nested mapping must not lead back here.
	IF NEW.mapping IS NOT NULL THEN
		WITH RECURSIVE walk(name, path) AS (
			SELECT NEW.mapping, ARRAY[NEW.mapping_name, NEW.mapping]
			UNION
			SELECT x.mapping, w.path || x.mapping
			  FROM walk w JOIN eventstream.field_mapping x ON x.mapping_name = w.name
			 WHERE x.mapping IS NOT NULL AND NOT (w.name = NEW.mapping_name)
			   AND NOT (x.mapping_name = NEW.mapping_name AND x.local_fieldname = NEW.local_fieldname)
			   AND cardinality(w.path) < 100
		)
		SELECT array_to_string(path, ' -> ') INTO cycle FROM walk WHERE name = NEW.mapping_name LIMIT 1;
		IF cycle IS NOT NULL THEN
			RAISE EXCEPTION 'mappings would refer to each other in a cycle: %', cycle
				USING ERRCODE = 'invalid_recursion';
		END IF;
	END IF;
	RETURN NEW;
END
$$;
CREATE TRIGGER field_mapping_check BEFORE INSERT OR UPDATE ON eventstream.field_mapping
	FOR EACH ROW EXECUTE FUNCTION eventstream._check_field_mapping();

CREATE FUNCTION eventstream.create_mapping(mapping_name text, local_table regclass, remote_table text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF coalesce(btrim(mapping_name), '') = '' OR local_table IS NULL OR coalesce(btrim(remote_table), '') = '' THEN
		RAISE EXCEPTION 'mapping_name, local_table and remote_table must be given' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF cardinality(eventstream._pk_attnums(local_table)) IS NULL THEN
		RAISE EXCEPTION 'table "%" has no primary key', local_table USING ERRCODE = 'invalid_table_definition';
	END IF;
	IF EXISTS (SELECT 1 FROM eventstream.document_type_mapping x WHERE x.mapping_name = create_mapping.mapping_name) THEN
		RAISE EXCEPTION 'mapping "%" already exists', mapping_name USING ERRCODE = 'duplicate_object',
			HINT = 'Change it with eventstream.alter_mapping() and eventstream.map_field().';
	END IF;
	INSERT INTO eventstream.document_type_mapping VALUES (mapping_name, local_table, eventstream._qualified(remote_table));
END
$$;
COMMENT ON FUNCTION eventstream.create_mapping(text, regclass, text) IS
	'Create a mapping: documents of remote_table (on the producer) are written into local_table; add field rules with map_field().';

CREATE FUNCTION eventstream.alter_mapping(mapping_name text, local_table regclass DEFAULT NULL,
										  remote_table text DEFAULT NULL) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM eventstream.producer_table t WHERE t.mapping = alter_mapping.mapping_name) THEN
		RAISE EXCEPTION 'mapping "%" is used by a subscription', mapping_name
			USING ERRCODE = 'object_in_use',
				  HINT = 'Its field rules can be changed; to change its tables, unsubscribe first.';
	END IF;
	UPDATE eventstream.document_type_mapping x
	   SET local_table = coalesce(alter_mapping.local_table, x.local_table),
		   remote_table = coalesce(eventstream._qualified(alter_mapping.remote_table), x.remote_table)
	 WHERE x.mapping_name = alter_mapping.mapping_name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mapping "%" does not exist', mapping_name USING ERRCODE = 'undefined_object';
	END IF;
	IF cardinality(eventstream._pk_attnums((SELECT x.local_table FROM eventstream.document_type_mapping x
											 WHERE x.mapping_name = alter_mapping.mapping_name))) IS NULL THEN
		RAISE EXCEPTION 'table "%" has no primary key', local_table USING ERRCODE = 'invalid_table_definition';
	END IF;
	-- Its rules, and those that nest it, are checked again.
	UPDATE eventstream.field_mapping f SET mapping_name = f.mapping_name
	 WHERE f.mapping_name = alter_mapping.mapping_name OR f.mapping = alter_mapping.mapping_name;
END
$$;
COMMENT ON FUNCTION eventstream.alter_mapping(text, regclass, text) IS
	'Change the local or remote table of a mapping; its field rules are checked again.';

CREATE FUNCTION eventstream.drop_mapping(mapping_name text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	used text;
BEGIN
	SELECT coalesce(string_agg(DISTINCT x.mapping_name, ', '), '') INTO used
	  FROM eventstream.field_mapping x WHERE x.mapping = drop_mapping.mapping_name;
	IF used <> '' THEN
		RAISE EXCEPTION 'mapping "%" is nested in mapping %', mapping_name, used USING ERRCODE = 'dependent_objects_still_exist';
	END IF;
	IF EXISTS (SELECT 1 FROM eventstream.producer_table t WHERE t.mapping = drop_mapping.mapping_name) THEN
		RAISE EXCEPTION 'mapping "%" is used by a subscription', mapping_name
			USING ERRCODE = 'dependent_objects_still_exist', HINT = 'Remove the subscription''s producer, or subscribe without it first.';
	END IF;
	DELETE FROM eventstream.document_type_mapping x WHERE x.mapping_name = drop_mapping.mapping_name;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mapping "%" does not exist', mapping_name USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION eventstream.drop_mapping(text) IS 'Drop a mapping that no subscription and no other mapping uses.';

CREATE FUNCTION eventstream.map_field(mapping_name text, local_fieldname text, remote_fieldname text DEFAULT NULL,
									  default_value text DEFAULT NULL, mapping_type text DEFAULT NULL,
									  mapping text DEFAULT NULL, remote_value_filters jsonb DEFAULT NULL)
		RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lf text := CASE WHEN nullif(btrim(mapping_type), '') = 'Child Table' THEN eventstream._qualified(local_fieldname)
					ELSE local_fieldname END;
BEGIN
	IF coalesce(lf, '') = '' THEN
		RAISE EXCEPTION 'local_fieldname must be given' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF nullif(btrim(mapping_type), '') NOT IN ('Child Table', 'Document') THEN
		RAISE EXCEPTION 'mapping_type must be ''Child Table'', ''Document'' or NULL, not "%"', mapping_type
			USING ERRCODE = 'invalid_parameter_value';
	END IF;
	INSERT INTO eventstream.field_mapping AS f VALUES (mapping_name, lf, remote_fieldname, default_value, mapping_type,
													   map_field.mapping, remote_value_filters)
		ON CONFLICT ON CONSTRAINT field_mapping_pkey DO UPDATE
		SET remote_fieldname = EXCLUDED.remote_fieldname, default_value = EXCLUDED.default_value,
			mapping_type = EXCLUDED.mapping_type, mapping = EXCLUDED.mapping,
			remote_value_filters = EXCLUDED.remote_value_filters;
END
$$;
COMMENT ON FUNCTION eventstream.map_field(text, text, text, text, text, text, jsonb) IS
	'Add or replace the rule of a mapping for one local column (or child table): where its value comes from, its default, and a nested mapping for child rows (''Child Table'') or a dependency (''Document'' with remote_value_filters).';

CREATE FUNCTION eventstream.unmap_field(mapping_name text, local_fieldname text) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.field_mapping f
	 WHERE f.mapping_name = unmap_field.mapping_name
	   AND f.local_fieldname IN (unmap_field.local_fieldname, eventstream._qualified(unmap_field.local_fieldname));
	IF NOT FOUND THEN
		RAISE EXCEPTION 'mapping "%" has no rule for "%"', mapping_name, local_fieldname USING ERRCODE = 'undefined_object';
	END IF;
END
$$;
COMMENT ON FUNCTION eventstream.unmap_field(text, text) IS 'Remove the rule of a mapping for one local column or child table.';

/*
 * How a Document field of a mapping links the remote document doc to a
 * local row.  The filters (remote_value_filters, each spec an eval:
 * expression, else a field doc has, else a literal) find the dependency on
 * the producer;
 * fetched holds what was fetched already ([{ref_table, filters | docname,
 * data, error}]).  Returns one of
 *   {"want": {path, ...}}         ask the producer for this first
 *   {"problem": text}             the dependency cannot be had
 *   {"column", "table", "remote", "local"}   it is here already (found
 *                                 through its recorded remote name)
 *   {"column", "table", "remote", "data", "links", "wants", "problems"}
 *                                 it is to be created from data, mapped with
 *                                 the nested mapping (its own links first)
 */
CREATE FUNCTION eventstream._mapping_link(producer_url text, subscriber regrole, f eventstream.field_mapping,
										  doc jsonb, fetched jsonb) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m eventstream.document_type_mapping;
	filters jsonb := '{}';
	spec record;
	s text;
	e jsonb;
	name text;
	loc text;
	here boolean;
	r jsonb;
BEGIN
	SELECT * INTO m FROM eventstream.document_type_mapping x WHERE x.mapping_name = f.mapping;
	FOR spec IN SELECT * FROM jsonb_each(f.remote_value_filters) LOOP
		s := spec.value #>> '{}';
		filters := filters || jsonb_build_object(spec.key,
			CASE WHEN jsonb_typeof(spec.value) = 'string' AND s LIKE 'eval:%'
					  THEN eventstream._eval_filter(substr(s, 6), doc, subscriber)
				 WHEN jsonb_typeof(spec.value) = 'string' AND doc ? s
					  THEN doc->s		-- a field of the document, even when null
				 ELSE spec.value END);
	END LOOP;

	SELECT x INTO e FROM jsonb_array_elements(fetched) x
	 WHERE x->>'ref_table' = m.remote_table AND x->'filters' = filters LIMIT 1;
	IF e IS NULL THEN
		RETURN jsonb_build_object('want', jsonb_build_object(
			'path', format('documents/%s?filters=%s&limit=1', eventstream._urlencode(m.remote_table),
						   eventstream._urlencode(filters::text)),
			'ref_table', m.remote_table, 'filters', filters, 'link', true));
	ELSIF jsonb_typeof(e->'data'->'docnames') IS DISTINCT FROM 'array' THEN
		RETURN jsonb_build_object('problem', format('could not look up the %s matching %s on the producer: %s',
													m.remote_table, filters, coalesce(e->>'error', 'no answer')));
	END IF;
	name := e->'data'->'docnames'->>0;
	IF name IS NULL THEN
		RETURN jsonb_build_object('problem', format('no %s on the producer matches %s (for column "%s")',
													m.remote_table, filters, f.local_fieldname));
	END IF;

	-- Made here before: found through its remote name (no duplicate).
	SELECT d.local_docname INTO loc FROM eventstream.remote_document d
	 WHERE d.producer_url = _mapping_link.producer_url AND d.local_table = m.local_table AND d.remote_docname = name;
	IF loc IS NOT NULL THEN
		EXECUTE format('SELECT EXISTS (SELECT 1 FROM %s t WHERE t.%I::text = $1)',
					   m.local_table, (eventstream._pk_names(m.local_table))[1])
			INTO here USING loc;
		IF here THEN
			RETURN jsonb_build_object('column', f.local_fieldname, 'table', m.local_table::oid, 'remote', name, 'local', loc);
		END IF;
	END IF;

	SELECT x INTO e FROM jsonb_array_elements(fetched) x
	 WHERE x->>'ref_table' = m.remote_table AND x->>'docname' = name LIMIT 1;
	IF e IS NULL THEN
		RETURN jsonb_build_object('want', jsonb_build_object(
			'path', eventstream._document_path(m.remote_table, name),
			'ref_table', m.remote_table, 'docname', name, 'link', true));
	ELSIF jsonb_typeof(e->'data') IS DISTINCT FROM 'object' THEN
		RETURN jsonb_build_object('problem', format('could not fetch %s "%s" from the producer: %s',
													m.remote_table, name, coalesce(e->>'error', 'no answer')));
	END IF;
	r := eventstream._map_doc(producer_url, subscriber, m.mapping_name, 'Create', e->'data', fetched);
	RETURN jsonb_build_object('column', f.local_fieldname, 'table', m.local_table::oid, 'remote', name) || r;
END
$$;

/*
 * Map one remote document (kind 'Create': a whole document; 'Update': the
 * changed columns of a diff) with a mapping: each rule's local field takes
 * its remote field; on a Create a missing or null value takes the rule's
 * default; child rows (Create only) go through the child mapping; remote
 * fields no rule names are dropped.  Document fields become links (see
 * _mapping_link).  fields: the remote fields to map (NULL: all).  Returns
 * {"data", "links", "wants", "problems"}.
 */
CREATE FUNCTION eventstream._map_doc(producer_url text, subscriber regrole, mapping text, kind text,
									 doc jsonb, fetched jsonb, fields text[] DEFAULT NULL) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	f eventstream.field_mapping;
	v jsonb;
	l jsonb;
	result jsonb := '{}';
	links jsonb := '[]';
	wants jsonb := '[]';
	problems jsonb := '[]';
BEGIN
	FOR f IN SELECT * FROM eventstream.field_mapping x
			  WHERE x.mapping_name = _map_doc.mapping AND (fields IS NULL OR x.remote_fieldname = ANY (fields))
			  ORDER BY x.local_fieldname LOOP
		v := CASE WHEN f.remote_fieldname IS NOT NULL THEN doc->f.remote_fieldname END;
		IF f.mapping_type = 'Child Table' THEN
			IF kind = 'Create' AND jsonb_typeof(v) = 'array' THEN
				result := result || jsonb_build_object(f.local_fieldname,
					(SELECT coalesce(jsonb_agg(eventstream._map_doc(producer_url, subscriber, f.mapping, 'Create', e, fetched)->'data'
											   ORDER BY o), '[]')
					   FROM jsonb_array_elements(v) WITH ORDINALITY x(e, o)));
			END IF;
		ELSIF f.mapping_type = 'Document' AND v IS NOT NULL AND v NOT IN ('null', '""') THEN
			l := eventstream._mapping_link(producer_url, subscriber, f, doc, fetched);
			IF l ? 'want' THEN
				wants := wants || jsonb_build_array(l->'want');
			ELSIF l ? 'problem' THEN
				problems := problems || jsonb_build_array(l->'problem');
			ELSE
				wants := wants || coalesce(l->'wants', '[]');
				problems := problems || coalesce(l->'problems', '[]');
				links := links || jsonb_build_array(l - 'wants' - 'problems');
			END IF;
		ELSIF f.mapping_type IS NULL AND v IS NOT NULL AND v <> 'null' THEN
			result := result || jsonb_build_object(f.local_fieldname, v);
		ELSIF kind = 'Create' AND f.default_value IS NOT NULL THEN
			result := result || jsonb_build_object(f.local_fieldname, f.default_value);
		ELSIF kind = 'Update' AND v IS NOT NULL THEN
			-- set to null, or unlinked
			result := result || jsonb_build_object(f.local_fieldname, CASE WHEN f.mapping_type = 'Document' THEN 'null' ELSE v END);
		END IF;
	END LOOP;
	RETURN jsonb_build_object('data', result, 'links', links, 'wants', wants, 'problems', problems);
END
$$;

/*
 * Map an update's data with a mapping (see _map_doc): a Create's document;
 * an Update's diff, "changed" like a document and the rows of "added",
 * "row_changed" and "removed" through this mapping's own rule for their
 * child table (a child table it has no rule for is left out, with a
 * note); a Delete has nothing to map.  Returns {"data", "links", "wants",
 * "problems", "notes"}.
 */
CREATE FUNCTION eventstream._map_update(producer_url text, subscriber regrole, mapping text, update_type text,
										data jsonb, fetched jsonb, docname text) RETURNS jsonb
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	m eventstream.document_type_mapping;
	r jsonb;
	diff jsonb;
	changed jsonb := coalesce(data->'changed', '{}');
	whole jsonb;
	part text;
	k record;
	f eventstream.field_mapping;
	rows jsonb;
	notes jsonb := '[]';
BEGIN
	IF update_type = 'Create' THEN
		RETURN eventstream._map_doc(producer_url, subscriber, mapping, 'Create', data, fetched);
	ELSIF update_type <> 'Update' OR jsonb_typeof(data) <> 'object' THEN
		RETURN jsonb_build_object('data', data);
	END IF;
	-- A Document field that changed is linked again; its filters may name
	-- any field of the document, so they see the whole document as the
	-- producer has it, with the changed values over it.
	SELECT * INTO m FROM eventstream.document_type_mapping x WHERE x.mapping_name = _map_update.mapping;
	IF EXISTS (SELECT 1 FROM eventstream.field_mapping x
				WHERE x.mapping_name = m.mapping_name AND x.mapping_type = 'Document' AND changed ? x.remote_fieldname
				  AND changed->x.remote_fieldname NOT IN ('null', '""')) THEN
		SELECT x INTO whole FROM jsonb_array_elements(fetched) x
		 WHERE x->>'ref_table' = m.remote_table AND x->>'docname' = _map_update.docname LIMIT 1;
		IF whole IS NULL THEN
			RETURN jsonb_build_object('data', data, 'wants', jsonb_build_array(jsonb_build_object(
				'path', eventstream._document_path(m.remote_table, docname),
				'ref_table', m.remote_table, 'docname', docname, 'link', true)));
		END IF;
		-- Gone from the producer meanwhile: the changed values are all there is.
		changed := CASE WHEN jsonb_typeof(whole->'data') = 'object' THEN (whole->'data') || changed ELSE changed END;
	END IF;
	-- Only what changed is set (and linked).
	r := eventstream._map_doc(producer_url, subscriber, mapping, 'Update', changed, fetched,
							  ARRAY(SELECT jsonb_object_keys(coalesce(data->'changed', '{}'))));
	diff := jsonb_build_object('changed', r->'data');
	FOREACH part IN ARRAY ARRAY['added', 'row_changed', 'removed'] LOOP
		CONTINUE WHEN jsonb_typeof(data->part) IS DISTINCT FROM 'object';
		FOR k IN SELECT * FROM jsonb_each(data->part) LOOP
			SELECT * INTO f FROM eventstream.field_mapping x
			 WHERE x.mapping_name = _map_update.mapping AND x.mapping_type = 'Child Table'
			   AND x.remote_fieldname = eventstream._qualified(k.key);
			IF NOT FOUND THEN
				notes := notes || to_jsonb(format('%s rows of child table %s left out: mapping "%s" has no rule for it',
												  part, k.key, mapping));
				CONTINUE;
			END IF;
			IF part = 'removed' OR jsonb_typeof(k.value) <> 'array' THEN
				rows := k.value;		-- docnames of child rows
			ELSE
				rows := (SELECT coalesce(jsonb_agg(eventstream._map_doc(producer_url, subscriber, f.mapping,
																		 CASE part WHEN 'added' THEN 'Create' ELSE 'Update' END,
																		 e, fetched)->'data' ORDER BY o), '[]')
						   FROM jsonb_array_elements(k.value) WITH ORDINALITY x(e, o));
			END IF;
			diff := jsonb_set(diff, ARRAY[part], coalesce(diff->part, '{}') || jsonb_build_object(f.local_fieldname, rows));
		END LOOP;
	END LOOP;
	RETURN r || jsonb_build_object('data', diff, 'notes', notes);
END
$$;

/*-------------------------------------------------------------------------
 *
 * privileges.sql
 *	  Privileges and what pg_dump keeps, for everything the parts before
 *	  created.
 *
 * The last part: REVOKE ... ON ALL ... covers the objects that exist when
 * it runs.  The configuration tables are dumped with the database.
 *
 * Part of the install script eventstream--1.0.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

REVOKE ALL ON ALL TABLES IN SCHEMA eventstream FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstream FROM PUBLIC;

-- The apply's statements run as the subscriber role and convert values
-- with these two (they read and render only what they are given).
GRANT USAGE ON SCHEMA eventstream TO PUBLIC;
GRANT EXECUTE ON FUNCTION eventstream._populate(anyelement, jsonb), eventstream._row_json(anyelement) TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('eventstream.site', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.consumer', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.consumer_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.child_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.dynamic_link', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.producer', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.producer_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.sync_log', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.remote_document', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.document_type_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.field_mapping', '');
