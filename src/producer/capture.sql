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
 * _capture_truncate() (truncate.c) logs TRUNCATE of the same tables;
 * _sync_truncate(), called by _sync_capture(), keeps its triggers.
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
	PERFORM eventstream._sync_truncate();
END
$$;

CREATE FUNCTION eventstream._capture_truncate() RETURNS trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_capture_truncate';
COMMENT ON FUNCTION eventstream._capture_truncate() IS
	'Truncate capture trigger; installed and removed by eventstream, never by hand.';

/*
 * Install, replace or remove the truncate capture triggers (truncate.c) so
 * that the tables _sync_capture captures carry them, enabled ALWAYS:
 * eventstream_truncate (AFTER TRUNCATE) on document tables, arguments
 * 'doc' and the name the table travels by, and on their registered child
 * tables, 'child', the foreign key's name, the parent's and the child's
 * names (a table may be both); and on child tables
 * eventstream_truncate_rows (BEFORE TRUNCATE, the child arguments only),
 * which reads the rows that go.  Called by _sync_capture.
 */
CREATE FUNCTION eventstream._sync_truncate() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	FOR r IN
		WITH docs AS (
			SELECT DISTINCT to_regclass(ct.ref_table) AS tbl
			  FROM eventstream.consumer_table ct
			 WHERE ct.status = 'Approved' AND NOT ct.unsubscribed
		), wanted AS (
			SELECT d.tbl, 1 AS ord, ARRAY['doc', eventstream._wire_name(d.tbl)] AS arg
			  FROM docs d WHERE d.tbl IS NOT NULL
			UNION ALL
			SELECT c.child, 2, ARRAY['child', c.fk_name::text, eventstream._wire_name(c.parent),
									 eventstream._wire_name(c.child)]
			  FROM eventstream.child_table c JOIN docs d ON d.tbl = c.parent
		), desired AS (
			SELECT 'eventstream_truncate'::name AS tgname, w.tbl, array_agg(a.x ORDER BY w.ord, a.i) AS args
			  FROM wanted w CROSS JOIN LATERAL unnest(w.arg) WITH ORDINALITY AS a(x, i)
			 GROUP BY w.tbl
			UNION ALL
			SELECT 'eventstream_truncate_rows'::name, w.tbl, array_agg(a.x ORDER BY w.ord, a.i)
			  FROM wanted w CROSS JOIN LATERAL unnest(w.arg) WITH ORDINALITY AS a(x, i)
			 WHERE w.ord = 2 GROUP BY w.tbl
		), existing AS (
			SELECT t.tgname, t.tgrelid::regclass AS tbl, t.tgargs, t.tgenabled
			  FROM pg_trigger t
			 WHERE t.tgname IN ('eventstream_truncate', 'eventstream_truncate_rows') AND t.tgparentid = 0
		)
		SELECT coalesce(d.tgname, e.tgname) AS tgname, coalesce(d.tbl, e.tbl) AS tbl, d.args, e.tgargs, e.tgenabled,
			   (SELECT string_agg(convert_to(a, 'UTF8') || '\x00'::bytea, ''::bytea ORDER BY i)
				  FROM unnest(d.args) WITH ORDINALITY AS x(a, i)) AS want
		  FROM desired d FULL JOIN existing e ON e.tbl = d.tbl AND e.tgname = d.tgname
	LOOP
		IF r.args IS NOT NULL AND r.tgargs IS NOT DISTINCT FROM r.want THEN
			IF r.tgenabled <> 'A' THEN
				EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.tbl, r.tgname);
			END IF;
			CONTINUE;
		END IF;
		IF r.tgargs IS NOT NULL THEN
			EXECUTE format('DROP TRIGGER %I ON %s', r.tgname, r.tbl);
		END IF;
		IF r.args IS NOT NULL THEN
			EXECUTE format('CREATE TRIGGER %I %s TRUNCATE ON %s '
						   'FOR EACH STATEMENT EXECUTE FUNCTION eventstream._capture_truncate(%s)',
						   r.tgname, CASE r.tgname WHEN 'eventstream_truncate' THEN 'AFTER' ELSE 'BEFORE' END,
						   r.tbl, (SELECT string_agg(quote_literal(a), ', ') FROM unnest(r.args) a));
			EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER %I', r.tbl, r.tgname);
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
