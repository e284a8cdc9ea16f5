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
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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

/*
 * The key, as _key_of gives it, of the row of tbl a dynamic link's key
 * column names; NULL when the value cannot name a row of tbl (for a key of
 * several columns not a JSON array of as many values, or a value a key
 * column cannot hold).  Such a link refers to nothing, as one whose type
 * column names no table: a value of the producer's rows never fails the
 * answer that holds it.
 */
CREATE FUNCTION eventstream._link_key(tbl regclass, docname text) RETURNS jsonb
	LANGUAGE plpgsql STABLE STRICT
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	key jsonb;
BEGIN
	key := eventstream._key_of(tbl, docname);
	EXECUTE format('SELECT eventstream._populate(NULL::%s, $1)', tbl) USING key;
	RETURN key;
EXCEPTION WHEN data_exception THEN
	RETURN NULL;
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
			-- as SQL would (schema public when not qualified); a value that
			-- is no such name refers to nothing (it never fails the answer)
			SELECT x.rt, eventstream._wire_name(x.rt), x.name, k.key
			  FROM (SELECT DISTINCT
						   to_regclass(eventstream._wire_table_name(rows.r->>l.type_column::text)) AS rt,
						   rows.r->>l.key_column::text AS name
					  FROM rows JOIN eventstream.dynamic_link l ON l.tbl = rows.tbl
					 WHERE rows.r->>l.type_column::text IS NOT NULL AND rows.r->>l.key_column::text IS NOT NULL) x
			 CROSS JOIN LATERAL (SELECT eventstream._link_key(x.rt, x.name) AS key) k
			 WHERE x.rt IS NOT NULL AND k.key IS NOT NULL
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
						  AND c.connamespace <> 'eventstream'::pg_catalog.regnamespace)
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
