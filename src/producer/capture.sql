/*-------------------------------------------------------------------------
 *
 * capture.sql
 *	  Producer side: the capture trigger, present on exactly the tables that
 *	  need it.
 *
 * _capture() (in C) logs every change of a subscribed document, stamped
 * with the apply origin _set_origin() sets; _sync_capture() installs,
 * replaces and removes it whenever the functions that change
 * subscriptions or child tables call _reconfigure(), and the ALTER TABLE
 * event trigger refreshes the arguments of existing ones when a key or a
 * key column changes.
 * _capture_truncate() (truncate.c) logs TRUNCATE of the same tables;
 * _sync_truncate(), called by _sync_capture(), keeps its triggers, those
 * of partitions too (_sync_truncate_parts()), and so does the event
 * trigger eventstream_partition_ddl when partitions come and go.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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
		-- tgargs is each argument followed by a zero byte, in the database
		-- encoding; 'key:' is last.
		(SELECT ARRAY[convert_from(substring(old_args FROM p + 1 FOR length(old_args) - p - 1),
								   current_setting('server_encoding'))]
		   FROM position('\x006b65793a'::bytea IN old_args) AS p
		  WHERE p > 0),
		'{}')
$$;

/*
 * The arguments tbl's capture trigger should have now (see capture.c),
 * NULL when it should have none.  Tables are named by their published
 * names, columns by their quoted names: nothing in them depends on OIDs,
 * so a dumped trigger captures as it is once restored elsewhere.
 *   document table:  'doc', 'name:<published name>', then per child table
 *                    'child:<its published name>', 'fk:<its foreign key
 *                    columns in parent key order>', then 'key:...'
 *   child table:     'child', 'name:<published name>', 'parent:<the
 *                    parent's published name>', 'fk:<columns>', 'key:...'
 * A document table is one with an Approved, subscribed subscription, and
 * not a partition of another such table (a partitioned table's trigger is
 * on its partitions too).  old_args: the trigger's present pg_trigger.tgargs.
 */
CREATE FUNCTION eventstream._capture_args(tbl regclass, old_args bytea) RETURNS text[]
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH docs AS (
		SELECT DISTINCT ct.ref_table AS name, eventstream._published(ct.ref_table) AS tbl
		  FROM eventstream.consumer_table ct
		 WHERE ct.status = 'Approved' AND NOT ct.unsubscribed
	), me_doc AS (
		SELECT min(d.name) AS name FROM docs d WHERE d.tbl = $1
		HAVING count(*) > 0
		   AND NOT EXISTS (SELECT 1 FROM pg_partition_ancestors($1) a JOIN docs x ON x.tbl = a.relid
							WHERE a.relid <> $1::oid)
	), me_child AS (
		SELECT min(d.name) AS parent_name, eventstream._fk_names(c.child, c.parent, c.fk_name) AS fk
		  FROM eventstream.child_table c JOIN docs d ON d.tbl = c.parent
		 WHERE c.child = $1
		 GROUP BY c.child, c.parent, c.fk_name
	)
	SELECT CASE
		WHEN m.name IS NOT NULL THEN
			ARRAY['doc', 'name:' || m.name]
			|| coalesce((SELECT array_agg(u.arg ORDER BY ch.name, u.i)
						   FROM (SELECT eventstream._published_name(c.child) AS name,
										eventstream._fk_names(c.child, c.parent, c.fk_name) AS fk
								   FROM eventstream.child_table c WHERE c.parent = $1) ch
						  CROSS JOIN LATERAL unnest(ARRAY['child:' || ch.name, 'fk:' || ch.fk]) WITH ORDINALITY AS u(arg, i)
						  WHERE ch.fk IS NOT NULL), '{}')
			|| eventstream._capture_added_arg($1, $2)
			|| eventstream._capture_key_arg($1, $2)
		WHEN mc.fk IS NOT NULL THEN
			ARRAY['child', 'name:' || eventstream._published_name($1), 'parent:' || mc.parent_name, 'fk:' || mc.fk]
			|| eventstream._capture_added_arg($1, $2)
			|| eventstream._capture_key_arg($1, $2)
	END
	  FROM (SELECT 1) one
	  LEFT JOIN me_doc m ON true
	  LEFT JOIN me_child mc ON true
$$;

-- Whether every child table registered for tbl, and tbl as a child, has
-- its foreign key: only then do _capture_args() name all of them.
CREATE FUNCTION eventstream._capture_args_complete(tbl regclass) RETURNS boolean
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT NOT EXISTS (SELECT 1 FROM eventstream.child_table c
						WHERE (c.parent = $1 OR c.child = $1)
						  AND eventstream._fk_names(c.child, c.parent, c.fk_name) IS NULL)
$$;

-- Put a capture trigger with arguments args on tbl in place of the one it
-- has, if any (none: args NULL), enabled ALWAYS.
CREATE FUNCTION eventstream._replace_capture(tbl regclass, args text[], has_one boolean) RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF has_one THEN
		EXECUTE format('DROP TRIGGER eventstream_capture ON %s', tbl);
	END IF;
	IF args IS NOT NULL THEN
		EXECUTE format('CREATE TRIGGER eventstream_capture AFTER INSERT OR UPDATE OR DELETE ON %s '
					   'FOR EACH ROW EXECUTE FUNCTION eventstream._capture(%s)',
					   tbl, (SELECT string_agg(quote_literal(a), ', ' ORDER BY i)
							   FROM unnest(args) WITH ORDINALITY AS x(a, i)));
		EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_capture', tbl);
	END IF;
END
$$;

-- args as pg_trigger.tgargs holds them: each in the database encoding,
-- followed by a zero byte.
CREATE FUNCTION eventstream._tgargs(args text[]) RETURNS bytea
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(convert_to(a, current_setting('server_encoding')) || '\x00'::bytea, ''::bytea ORDER BY i)
	  FROM unnest(args) WITH ORDINALITY AS x(a, i)
$$;

/*
 * Install, replace or remove eventstream_capture triggers so that exactly the
 * tables some consumer has an Approved, subscribed subscription to, and their
 * registered child tables, carry one with up-to-date arguments, enabled
 * ALWAYS: a site's apply runs with session_replication_role = replica
 * (src/consumer/apply.c), and what it applies to a table others subscribe
 * to is captured for them too (A -> B -> C).  A trigger found in another
 * state (made by an earlier version, or altered by hand) is enabled ALWAYS
 * again.  Published names are bound first (_bind_published); triggers are
 * dropped before others are created, so that a partitioned table's trigger
 * can take the place of its partitions' own.
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
	PERFORM eventstream._bind_published();
	FOR r IN
		WITH existing AS (
			SELECT t.tgrelid::regclass AS tbl, t.tgargs, t.tgenabled
			  FROM pg_trigger t
			 WHERE t.tgname = 'eventstream_capture' AND t.tgparentid = 0
		), candidates AS (
			SELECT eventstream._published(ct.ref_table) AS tbl
			  FROM eventstream.consumer_table ct
			 WHERE ct.status = 'Approved' AND NOT ct.unsubscribed
			UNION
			SELECT c.child FROM eventstream.child_table c
			UNION
			SELECT e.tbl FROM existing e
		)
		SELECT x.tbl, a.args, e.tgargs, e.tgenabled, eventstream._tgargs(a.args) AS want
		  FROM candidates x
		  LEFT JOIN existing e ON e.tbl = x.tbl
		 CROSS JOIN LATERAL eventstream._capture_args(x.tbl, e.tgargs) AS a(args)
		 WHERE x.tbl IS NOT NULL
		 ORDER BY a.args IS NOT NULL, x.tbl::oid
	LOOP
		IF r.args IS NOT NULL AND r.tgargs IS NOT DISTINCT FROM r.want THEN
			IF r.tgenabled <> 'A' THEN
				EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_capture', r.tbl);
			END IF;
			CONTINUE;
		END IF;
		IF r.args IS NOT NULL OR r.tgargs IS NOT NULL THEN
			PERFORM eventstream._replace_capture(r.tbl, r.args, r.tgargs IS NOT NULL);
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
 * Install, replace or remove eventstream_truncate_part (BEFORE TRUNCATE,
 * arguments 'part' and the root's published name, enabled ALWAYS) so that
 * exactly the leaf partitions of the partitioned tables that carry a
 * document table's eventstream_truncate trigger have one: TRUNCATE of a
 * partition logs a Delete of each of its rows under the root's name
 * (truncate.c).  Only the topmost such table of a tree counts, as for the
 * row capture trigger.  The root's trigger is what decides, not the
 * subscriptions: while pg_restore replays a dump no root has it before
 * every table and partition is in place.  Called by _sync_truncate.
 */
CREATE FUNCTION eventstream._sync_truncate_parts() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	PERFORM pg_advisory_xact_lock(hashtext('eventstream._sync_capture'));
	FOR r IN
		WITH roots AS (
			SELECT t.tgrelid::regclass AS tbl
			  FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
			 WHERE t.tgname = 'eventstream_truncate' AND t.tgparentid = 0 AND c.relkind = 'p'
			   AND position('\x646f6300'::bytea IN t.tgargs) = 1	-- 'doc' first
		), tops AS (
			SELECT x.tbl FROM roots x
			 WHERE NOT EXISTS (SELECT 1 FROM pg_partition_ancestors(x.tbl) a JOIN roots y ON y.tbl = a.relid
								WHERE a.relid <> x.tbl)
		), desired AS (
			SELECT p.relid AS tbl, ARRAY['part', eventstream._published_name(x.tbl)] AS args
			  FROM tops x CROSS JOIN LATERAL pg_partition_tree(x.tbl) p
			  JOIN pg_class c ON c.oid = p.relid
			 WHERE p.isleaf AND c.relkind = 'r'
		), existing AS (
			SELECT t.tgrelid::regclass AS tbl, t.tgargs, t.tgenabled
			  FROM pg_trigger t
			 WHERE t.tgname = 'eventstream_truncate_part' AND t.tgparentid = 0
		)
		SELECT coalesce(d.tbl, e.tbl) AS tbl, d.args, e.tgargs, e.tgenabled, eventstream._tgargs(d.args) AS want
		  FROM desired d FULL JOIN existing e ON e.tbl = d.tbl
	LOOP
		IF r.args IS NOT NULL AND r.tgargs IS NOT DISTINCT FROM r.want THEN
			IF r.tgenabled <> 'A' THEN
				EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_truncate_part', r.tbl);
			END IF;
			CONTINUE;
		END IF;
		IF r.tgargs IS NOT NULL THEN
			EXECUTE format('DROP TRIGGER eventstream_truncate_part ON %s', r.tbl);
		END IF;
		IF r.args IS NOT NULL THEN
			EXECUTE format('CREATE TRIGGER eventstream_truncate_part BEFORE TRUNCATE ON %s '
						   'FOR EACH STATEMENT EXECUTE FUNCTION eventstream._capture_truncate(%s)',
						   r.tbl, (SELECT string_agg(quote_literal(a), ', ') FROM unnest(r.args) a));
			EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_truncate_part', r.tbl);
		END IF;
	END LOOP;
END
$$;

/*
 * A partition was created, attached or detached (eventstream_partition_ddl):
 * when a partitioned table carries an eventstream_truncate trigger, bring
 * the truncate triggers of partitions in step (_sync_truncate).  While
 * pg_restore replays a dump none has it yet: nothing is made.
 */
CREATE FUNCTION eventstream._partitions_changed() RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
				WHERE t.tgname = 'eventstream_truncate' AND t.tgparentid = 0 AND c.relkind = 'p') THEN
		PERFORM pg_advisory_xact_lock(hashtext('eventstream._sync_capture'));
		PERFORM eventstream._sync_truncate();
	END IF;
END
$$;

CREATE FUNCTION eventstream._on_partition_ddl() RETURNS event_trigger
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_on_partition_ddl';
COMMENT ON FUNCTION eventstream._on_partition_ddl() IS
	'Keeps the truncate triggers of partitions created, attached or detached; fired by eventstream_partition_ddl.';
CREATE EVENT TRIGGER eventstream_partition_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_partition_ddl();

/*
 * The name of partition part's foreign key made from foreign key fk_name
 * of partitioned table tbl (cloned or attached to it), NULL when none.
 */
CREATE FUNCTION eventstream._partition_fk(part regclass, tbl regclass, fk_name name) RETURNS name
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	WITH RECURSIVE fk AS (
		SELECT c.oid, c.conrelid, c.confrelid, c.conname FROM pg_constraint c
		 WHERE c.conrelid = $2 AND c.conname = $3 AND c.contype = 'f'
		UNION ALL
		SELECT c.oid, c.conrelid, c.confrelid, c.conname FROM pg_constraint c JOIN fk ON c.conparentid = fk.oid
		 WHERE c.contype = 'f'
	)
	SELECT min(fk.conname) FROM fk
	 WHERE fk.conrelid = $1
	   AND fk.confrelid = (SELECT c.confrelid FROM pg_constraint c
							WHERE c.conrelid = $2 AND c.conname = $3 AND c.contype = 'f')
$$;

/*
 * Install, replace or remove the truncate capture triggers (truncate.c) so
 * that the tables _sync_capture captures carry them, enabled ALWAYS:
 * eventstream_truncate (AFTER TRUNCATE) on document tables, arguments
 * 'doc' and the name the table travels by, and on their registered child
 * tables, 'child', the foreign key's name, the parent's and the child's
 * names (a table may be both), and the leaf partitions of partitioned
 * child tables the same, with their own foreign key's name (each logs its
 * rows, the partitioned table has none of its own); and on child tables and partitioned
 * document tables eventstream_truncate_rows (BEFORE TRUNCATE, the same
 * arguments but for a plain table's 'doc'), which reads the rows that go
 * or notes the statement; then the partitions' ones (_sync_truncate_parts).
 * Called by _sync_capture.
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
			SELECT DISTINCT eventstream._published(ct.ref_table) AS tbl
			  FROM eventstream.consumer_table ct
			 WHERE ct.status = 'Approved' AND NOT ct.unsubscribed
		), wanted AS (
			SELECT d.tbl, 1 AS ord, ARRAY['doc', eventstream._published_name(d.tbl)] AS arg
			  FROM docs d WHERE d.tbl IS NOT NULL
			UNION ALL
			SELECT c.child, 2, ARRAY['child', c.fk_name::text, eventstream._published_name(c.parent),
									 eventstream._published_name(c.child)]
			  FROM eventstream.child_table c JOIN docs d ON d.tbl = c.parent
			UNION ALL
			-- The leaf partitions of a partitioned child table, each with its
			-- own foreign key made from the child table's.
			SELECT p.relid, 2, ARRAY['child', eventstream._partition_fk(p.relid, c.child, c.fk_name)::text,
									 eventstream._published_name(c.parent), eventstream._published_name(c.child)]
			  FROM eventstream.child_table c JOIN docs d ON d.tbl = c.parent
			 CROSS JOIN LATERAL pg_partition_tree(c.child) p
			  JOIN pg_class k ON k.oid = p.relid AND k.relkind = 'r'
			 WHERE p.level > 0 AND eventstream._partition_fk(p.relid, c.child, c.fk_name) IS NOT NULL
		), desired AS (
			SELECT 'eventstream_truncate'::name AS tgname, w.tbl, array_agg(a.x ORDER BY w.ord, a.i) AS args
			  FROM wanted w CROSS JOIN LATERAL unnest(w.arg) WITH ORDINALITY AS a(x, i)
			 GROUP BY w.tbl
			UNION ALL
			SELECT 'eventstream_truncate_rows'::name, w.tbl, array_agg(a.x ORDER BY w.ord, a.i)
			  FROM wanted w CROSS JOIN LATERAL unnest(w.arg) WITH ORDINALITY AS a(x, i)
			 WHERE w.ord = 2 OR (SELECT c.relkind FROM pg_class c WHERE c.oid = w.tbl) = 'p'
			 GROUP BY w.tbl
		), existing AS (
			SELECT t.tgname, t.tgrelid::regclass AS tbl, t.tgargs, t.tgenabled
			  FROM pg_trigger t
			 WHERE t.tgname IN ('eventstream_truncate', 'eventstream_truncate_rows') AND t.tgparentid = 0
		)
		SELECT coalesce(d.tgname, e.tgname) AS tgname, coalesce(d.tbl, e.tbl) AS tbl, d.args, e.tgargs, e.tgenabled,
			   eventstream._tgargs(d.args) AS want
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
	PERFORM eventstream._sync_truncate_parts();
END
$$;

/*
 * ALTER TABLE may change a captured table's primary key, or the name of a
 * key or foreign key column its trigger or its document's triggers name:
 * refresh those triggers' arguments.  Only triggers that exist are
 * replaced, only on the altered tables and the document and child tables
 * of theirs, and only when every foreign key they name is in place: while
 * pg_restore replays a dump (keys, then the dumped triggers and their
 * ENABLE ALWAYS, then foreign keys), no trigger is installed or dropped.
 */
CREATE FUNCTION eventstream._on_alter_table() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
BEGIN
	FOR r IN
		WITH altered AS (
			SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
			 WHERE c.classid = 'pg_class'::regclass
		), related AS (
			SELECT a.objid AS tbl FROM altered a
			UNION
			SELECT ch.parent::oid FROM eventstream.child_table ch JOIN altered a ON a.objid = ch.child::oid
			UNION
			SELECT ch.child::oid FROM eventstream.child_table ch JOIN altered a ON a.objid = ch.parent::oid
		)
		SELECT t.tgrelid::regclass AS tbl, t.tgargs, a.args
		  FROM related x
		  JOIN pg_trigger t ON t.tgrelid = x.tbl AND t.tgname = 'eventstream_capture' AND t.tgparentid = 0
		 CROSS JOIN LATERAL eventstream._capture_args(t.tgrelid::regclass, t.tgargs) AS a(args)
		 WHERE a.args IS NOT NULL
		   AND t.tgargs IS DISTINCT FROM eventstream._tgargs(a.args)
		   AND eventstream._capture_args_complete(t.tgrelid::regclass)
	LOOP
		PERFORM pg_advisory_xact_lock(hashtext('eventstream._sync_capture'));
		PERFORM eventstream._replace_capture(r.tbl, r.args, true);
	END LOOP;
END
$$;
CREATE EVENT TRIGGER eventstream_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_alter_table();

/*
 * Subscriptions or child tables changed: bring the capture triggers in
 * step, and have parked long-polls answer at once with the new statuses.
 * Called by the functions that change eventstream.consumer_table and
 * eventstream.child_table, never by a trigger on them: rows restored into
 * them by pg_restore install nothing (the dump brings the triggers).
 */
CREATE FUNCTION eventstream._reconfigure() RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._sync_capture();
	PERFORM eventstream._wake_worker();
END
$$;
