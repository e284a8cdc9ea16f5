/*-------------------------------------------------------------------------
 *
 * tables.sql
 *	  Tables and rows as both sides name them.
 *
 * A table travels as its schema-qualified wire name, a row as its docname:
 * the text of its primary key, rendered here in SQL exactly as the capture
 * trigger renders it in C.  Helpers of the producer and of the consumer.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The wire name a table name stands for (one a consumer sends, one given
-- to a function here), whether or not such a table exists now (a
-- subscribed table may have been dropped or renamed since):
-- schema-qualified, a bare name meaning public, quoted only where needed,
-- as _wire_name() gives it.  NULL when the name cannot be read that way;
-- _wire_table() then says what is wrong with it.
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

-- A table name as the wire has it: schema-qualified (public when not),
-- quoted only where needed, as SQL reads it ("x.y" is one name, Item is
-- item), so that it is the name the producer gives the same table.  A
-- name SQL cannot read is only qualified (what uses it then says so).
CREATE FUNCTION eventstream._qualified(name text) RETURNS text
	LANGUAGE sql IMMUTABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(eventstream._wire_table_name(name),
					CASE WHEN position('.' IN btrim(name)) > 0 THEN btrim(name) ELSE 'public.' || btrim(name) END)
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
	IF kind NOT IN ('r', 'p') THEN
		RAISE EXCEPTION '"%" is not a table', name USING ERRCODE = 'wrong_object_type';
	END IF;
	RETURN tbl;
END
$$;

-- What a query reads a table's rows from: ONLY the table itself (not the
-- tables inheriting from it), or a partitioned table with its partitions.
CREATE FUNCTION eventstream._scan_sql(tbl regclass) RETURNS text
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN c.relkind = 'p' THEN tbl::text ELSE 'ONLY ' || tbl::text END
	  FROM pg_class c WHERE c.oid = tbl
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
