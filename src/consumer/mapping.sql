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
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('create_mapping');
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('alter_mapping');
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	used text;
BEGIN
	PERFORM eventstream._assert_admin('drop_mapping');
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	lf text := CASE WHEN nullif(btrim(mapping_type), '') = 'Child Table' THEN eventstream._qualified(local_fieldname)
					ELSE local_fieldname END;
BEGIN
	PERFORM eventstream._assert_admin('map_field');
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('unmap_field');
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
