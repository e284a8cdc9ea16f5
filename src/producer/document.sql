/*-------------------------------------------------------------------------
 *
 * document.sql
 *	  Producer side: what a document is.
 *
 * A document is a row of a subscribed table with the rows of its
 * registered child tables; dynamic links name the table of the document a
 * column refers to; published_table binds each subscribed or child table
 * to the name it travels by.  _document() reads one whole document (in C);
 * add_child_table(), remove_child_table() and add_dynamic_link() are the
 * public API, and dropped tables are forgotten by an event trigger.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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

/*
 * The name each published table travels by.  A table is bound to the wire
 * name it was first subscribed by (a document table) or registered by (a
 * child table), and keeps it through ALTER TABLE ... RENAME / SET SCHEMA
 * and ALTER SCHEMA ... RENAME: logs, documents and subscriptions go on
 * naming it so.  relid is a regclass, so that pg_dump writes it by name
 * and a restore binds the name to the restored table.  _bind_published()
 * fills and cleans it; the sql_drop event trigger forgets dropped tables.
 */
CREATE TABLE eventstream.published_table (
	ref_table	text PRIMARY KEY,
	relid		regclass NOT NULL UNIQUE
);
COMMENT ON TABLE eventstream.published_table IS
	'Published names: the wire name each subscribed or child table is bound to, kept through renames.';

/*
 * The table a wire name stands for: the table bound to it, else the table
 * of that name unless that one is bound to another name; NULL when none.
 * Plain SQL without a SET clause: inlined into the queries that use it.
 */
CREATE FUNCTION eventstream._published(ref_table text) RETURNS regclass
	LANGUAGE sql STABLE
AS $$
	SELECT coalesce(
		(SELECT c.oid::pg_catalog.regclass FROM eventstream.published_table p
		   JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.relid
		  WHERE p.ref_table OPERATOR(pg_catalog.=) $1),
		(SELECT t.t FROM pg_catalog.to_regclass($1) t
		  WHERE NOT EXISTS (SELECT 1 FROM eventstream.published_table q WHERE q.relid OPERATOR(pg_catalog.=) t.t)
			AND NOT EXISTS (SELECT 1 FROM eventstream.published_table q WHERE q.ref_table OPERATOR(pg_catalog.=) $1)))
$$;

-- The wire name a table travels by: the name it is bound to, else its own.
CREATE FUNCTION eventstream._published_name(tbl regclass) RETURNS text
	LANGUAGE sql STABLE
AS $$
	SELECT coalesce((SELECT p.ref_table FROM eventstream.published_table p
					  WHERE p.relid OPERATOR(pg_catalog.=) $1),
					eventstream._wire_name($1))
$$;

/*
 * Bind the names of subscriptions and child tables not bound yet to the
 * tables they name now, and forget bindings nothing refers to any more (no
 * subscription by that name, not a registered child table) or whose table
 * is gone.  A name whose table is bound to another name stays unbound.
 */
CREATE FUNCTION eventstream._bind_published() RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.published_table p
	 WHERE NOT EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = p.relid)
		OR (NOT EXISTS (SELECT 1 FROM eventstream.consumer_table ct WHERE ct.ref_table = p.ref_table)
			AND NOT EXISTS (SELECT 1 FROM eventstream.child_table ch WHERE ch.child = p.relid));
	INSERT INTO eventstream.published_table (ref_table, relid)
	SELECT DISTINCT ON (x.tbl) x.ref_table, x.tbl
	  FROM (SELECT ct.ref_table, to_regclass(ct.ref_table) AS tbl FROM eventstream.consumer_table ct
			UNION ALL
			SELECT eventstream._wire_name(ch.child), ch.child FROM eventstream.child_table ch) x
	 WHERE x.tbl IS NOT NULL
	   AND NOT EXISTS (SELECT 1 FROM eventstream.published_table p
					    WHERE p.ref_table = x.ref_table OR p.relid = x.tbl)
	 ORDER BY x.tbl, x.ref_table
	ON CONFLICT DO NOTHING;
END
$$;

CREATE FUNCTION eventstream._document(tbl regclass, docname text) RETURNS jsonb
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_document';

/*
 * Row-level security and column privileges (docs/security.md): what an API
 * key's role reads of a document.  _document_as() reads it as the role (a
 * row its policies hide is no document; columns it may not read are left
 * out); _value_as() runs a serving function's query as the role.
 */
CREATE FUNCTION eventstream._document_as(tbl regclass, docname text, role regrole) RETURNS jsonb
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_document';

CREATE FUNCTION eventstream._value_as(query text, role regrole, arg text) RETURNS text
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_value_as';

-- Whether row-level security restricts what role reads of tbl
-- (PostgreSQL's check_enable_rls()).
CREATE FUNCTION eventstream._rls_applies(tbl regclass, role regrole) RETURNS boolean
	LANGUAGE c STABLE STRICT AS 'MODULE_PATHNAME', 'eventstream_rls_applies';

/*
 * Whether a document table is "role-served" to role: role does not see the
 * whole of every row logged for it, because row-level security applies to
 * it on the table or one of its child tables, or it lacks SELECT on some of
 * their columns.  Such a table's logs are served as the current document
 * read as the role (src/producer/serve.sql, _pull_page).
 */
CREATE FUNCTION eventstream._role_served(tbl regclass, role regrole) RETURNS boolean
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT coalesce(bool_or(eventstream._rls_applies(x.t, role) OR NOT has_table_privilege(role, x.t, 'SELECT')), false)
	  FROM (SELECT tbl UNION ALL SELECT ch.child FROM eventstream.child_table ch WHERE ch.parent = tbl) x(t)
$$;

-- The first key column of tbl (in key order) that role may not read; NULL
-- when it may read them all.
CREATE FUNCTION eventstream._unreadable_key(tbl regclass, role regrole) RETURNS name
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT a.attname
	  FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY AS k(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum
	 WHERE NOT has_column_privilege(role, tbl, k.attnum, 'SELECT')
	 ORDER BY k.ord
	 LIMIT 1
$$;

-- Whether role may be served tbl: it may read some of its columns, its key
-- columns among them.  (The usual case, SELECT on the table, first: every
-- pull asks.)
CREATE FUNCTION eventstream._readable_by(tbl regclass, role regrole) RETURNS boolean
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN has_table_privilege(role, tbl, 'SELECT') THEN true
				ELSE has_any_column_privilege(role, tbl, 'SELECT') AND eventstream._unreadable_key(tbl, role) IS NULL END
$$;

/*
 * Raise why role may not be served tbl (wire name name), if it may not:
 * it can read none of its columns, or not all of its key columns (the
 * consumer matches rows on those, and a docname is made of them).
 */
CREATE FUNCTION eventstream._check_readable(tbl regclass, role regrole) RETURNS void
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col name;
BEGIN
	IF NOT has_any_column_privilege(role, tbl, 'SELECT') THEN
		RAISE EXCEPTION 'role "%" cannot read table "%"', role, eventstream._published_name(tbl)
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'GRANT SELECT on the table to the role of the consumer''s API key.';
	END IF;
	col := eventstream._unreadable_key(tbl, role);
	IF col IS NOT NULL THEN
		RAISE EXCEPTION 'role "%" cannot read key column "%" of table "%"', role, col, eventstream._published_name(tbl)
			USING ERRCODE = 'insufficient_privilege',
				  DETAIL = 'A consumer finds documents by their key columns, which its role must be able to read.',
				  HINT = format('GRANT SELECT (%s) ON %s to the role of the consumer''s API key, or SELECT on the whole table.',
								(SELECT string_agg(quote_ident(x), ', ') FROM unnest(eventstream._pk_names(tbl)) x), tbl);
	END IF;
END
$$;

-- Child FK columns of the registered foreign key, in parent key order, as
-- "3,1".  NULL if the key is gone.
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

-- Child FK columns of the registered foreign key by quoted name, in parent
-- key order, as "a,b": the form the capture trigger takes.  NULL if the
-- key is gone.
CREATE FUNCTION eventstream._fk_names(child regclass, parent regclass, fk_name name) RETURNS text
	LANGUAGE sql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(quote_ident(a.attname), ',' ORDER BY x.ord)
	  FROM unnest(string_to_array(eventstream._fk_attnums(child, parent, fk_name), ',')::int2[])
		   WITH ORDINALITY AS x(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = child AND a.attnum = x.attnum
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
	RETURN format('SELECT * FROM %s WHERE %s ORDER BY %s', eventstream._scan_sql(child), cond, ord);
END
$$;

-- Forget child tables, dynamic links and published names of dropped
-- tables, and resync the capture triggers of the parents of dropped child
-- tables.  As the extension's owner: any table owner may drop a table.
CREATE FUNCTION eventstream._on_sql_drop() RETURNS event_trigger
	LANGUAGE plpgsql SECURITY DEFINER
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
	DELETE FROM eventstream.published_table p WHERE p.relid::oid = ANY (gone);
	DELETE FROM eventstream.dynamic_link l WHERE l.tbl::oid = ANY (gone);
	DELETE FROM eventstream.child_table c WHERE c.child::oid = ANY (gone) OR c.parent::oid = ANY (gone);
	IF FOUND THEN
		PERFORM eventstream._reconfigure();
	END IF;
END
$$;
CREATE EVENT TRIGGER eventstream_sql_drop ON sql_drop
	EXECUTE FUNCTION eventstream._on_sql_drop();

CREATE FUNCTION eventstream.add_child_table(parent regclass, child regclass) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	fk name;
	existing regclass;
BEGIN
	PERFORM eventstream._assert_admin('add_child_table');
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
				WHERE ct.ref_table = eventstream._published_name(child)) THEN
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
	PERFORM eventstream._reconfigure();
END
$$;
COMMENT ON FUNCTION eventstream.add_child_table(regclass, regclass) IS
	'Make child''s rows part of parent''s documents (nested under the child''s table name); child needs a foreign key to parent''s primary key.';

CREATE FUNCTION eventstream.remove_child_table(child regclass) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('remove_child_table');
	DELETE FROM eventstream.child_table c WHERE c.child = remove_child_table.child;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table "%" is not a registered child table', child USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM eventstream._reconfigure();
END
$$;
COMMENT ON FUNCTION eventstream.remove_child_table(regclass) IS
	'Stop treating child''s rows as part of their parent''s documents.';

CREATE FUNCTION eventstream.add_dynamic_link(tbl regclass, type_column name, key_column name) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	col name;
BEGIN
	PERFORM eventstream._assert_admin('add_dynamic_link');
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
