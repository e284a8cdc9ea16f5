/*-------------------------------------------------------------------------
 *
 * added.sql
 *	  Producer side: columns added to a captured table after its capture
 *	  began are named by its capture trigger, and sent with every Update.
 *
 * A column added to a captured table is NULL (or its default) in every
 * row without any row changing; a diff of old and new rows would never
 * carry it, and a consumer would keep the value a column of that name had
 * before it was dropped (or its own default).  The capture trigger names
 * such columns in its 'added:' argument (src/producer/added.c), which
 * _on_add_column() extends at each ALTER TABLE ... ADD COLUMN (and follows
 * through RENAME COLUMN), and _sync_capture() carries over
 * (_capture_added_arg).
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE FUNCTION eventstream._ddl_added_columns(command pg_ddl_command, OUT relid oid, OUT attname name,
												OUT renamed_from name)
	RETURNS SETOF record
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_ddl_added_columns';
COMMENT ON FUNCTION eventstream._ddl_added_columns(pg_ddl_command) IS
	'The columns an ALTER TABLE command added (at ddl_command_end), with the table each was added to; or the column it renamed, with its former name.';

CREATE FUNCTION eventstream._trigger_args(tgargs bytea) RETURNS text[]
	LANGUAGE c IMMUTABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_trigger_args';

CREATE FUNCTION eventstream._capture_added_arg(tbl regclass, old_args bytea, new_names name[] DEFAULT NULL,
												renamed_from name[] DEFAULT NULL)
	RETURNS text[]
	LANGUAGE c STABLE AS 'MODULE_PATHNAME', 'eventstream_capture_added_arg';
COMMENT ON FUNCTION eventstream._capture_added_arg(regclass, bytea, name[], name[]) IS
	'The ''added:'' argument of a capture trigger (empty: none): the columns its arguments name, then new_names (added, or renamed from the renamed_from at the same place when that one is named), those of them tbl has.';

/*
 * ALTER TABLE ... ADD COLUMN on a captured table (or on a parent of one,
 * which adds the column to it too): the capture trigger is made again
 * with the new columns in its 'added:' argument, everything else as it
 * was; RENAME COLUMN of one it names, with the new name.  Any other ALTER
 * TABLE of a captured table drops the columns no longer there from the
 * argument.
 */
CREATE FUNCTION eventstream._on_add_column() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	r record;
	args text[];
	n integer;
	def text;
BEGIN
	FOR r IN
		WITH RECURSIVE cmds AS (
			SELECT c.objid, c.command FROM pg_event_trigger_ddl_commands() c
			 WHERE c.command_tag = 'ALTER TABLE' AND c.classid = 'pg_class'::regclass
		), added AS (
			SELECT a.relid, a.attname, a.renamed_from
			  FROM cmds CROSS JOIN LATERAL eventstream._ddl_added_columns(cmds.command) a
			UNION
			SELECT i.inhrelid, a.attname, a.renamed_from FROM added a JOIN pg_inherits i ON i.inhparent = a.relid
		), altered AS (
			SELECT objid AS relid FROM cmds UNION SELECT relid FROM added
		)
		SELECT t.oid, t.tgrelid::regclass AS tbl, t.tgargs,
			   eventstream._capture_added_arg(t.tgrelid::regclass, t.tgargs,
											  ARRAY(SELECT a.attname FROM added a WHERE a.relid = t.tgrelid
													 ORDER BY a.attname, a.renamed_from),
											  ARRAY(SELECT a.renamed_from FROM added a WHERE a.relid = t.tgrelid
													 ORDER BY a.attname, a.renamed_from)) AS want
		  FROM altered x
		  JOIN pg_trigger t ON t.tgrelid = x.relid AND t.tgname = 'eventstream_capture' AND t.tgparentid = 0
	LOOP
		args := eventstream._trigger_args(r.tgargs);
		-- Unchanged (most ALTER TABLEs): nothing to do.
		CONTINUE WHEN ARRAY(SELECT x FROM unnest(args) x WHERE x LIKE 'added:%') = r.want;
		args := ARRAY(SELECT x FROM unnest(args) WITH ORDINALITY AS u(x, i)
					   WHERE x NOT LIKE 'added:%' ORDER BY i);
		n := cardinality(args);
		IF n > 1 AND args[n] LIKE 'key:%' THEN
			args := args[1:n - 1] || r.want || args[n];
		ELSE
			args := args || r.want;
		END IF;
		-- The trigger as it is, with these arguments.
		def := regexp_replace(pg_get_triggerdef(r.oid), 'EXECUTE FUNCTION .*$',
							  'EXECUTE FUNCTION eventstream._capture('
							  || (SELECT string_agg(quote_literal(a), ', ') FROM unnest(args) a) || ')');
		EXECUTE format('DROP TRIGGER eventstream_capture ON %s', r.tbl);
		EXECUTE def;
		EXECUTE format('ALTER TABLE %s ENABLE ALWAYS TRIGGER eventstream_capture', r.tbl);
	END LOOP;
END
$$;
CREATE EVENT TRIGGER eventstream_add_column ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_add_column();
