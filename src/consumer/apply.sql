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
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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
	IF coalesce((page->>'resync')::boolean, false) THEN
		-- The producer cannot serve from the stored cursor (one of the two
		-- sites was restored from a backup, and logs were pruned or served
		-- since): start from its new cursor and copy every approved table
		-- again; rows it gave that it no longer has are deleted then.
		PERFORM eventstream._restart_from(p.producer_url, page->>'cursor');
		RETURN 0;
	END IF;
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
						AND l.update_type <> 'Truncate'
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
	LANGUAGE plpgsql SECURITY DEFINER
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
	PERFORM eventstream._assert_admin('resync');
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
	-- again now, would roll the document back to an older state.  A
	-- Truncate is of every document of its table.
	SELECT * INTO newer FROM eventstream.sync_log x
	 WHERE x.id > l.id AND x.producer_url = l.producer_url AND x.remote_ref_table = l.remote_ref_table
	   AND (x.remote_docname = l.remote_docname OR x.update_type = 'Truncate' OR l.update_type = 'Truncate')
	   AND x.status = 'Synced'
	 ORDER BY x.id DESC LIMIT 1;
	IF FOUND AND l.update_type = 'Truncate' THEN
		RAISE EXCEPTION 'sync log % is older than an update of the same table applied since', sync_log_id
			USING ERRCODE = 'object_not_in_prerequisite_state',
				  DETAIL = format('Sync log %s (%s of "%s") was applied after it; truncating the table now would remove what came since.',
								  newer.id, newer.update_type, newer.remote_docname),
				  HINT = format('Copy the table again with eventstream.resync_table(%L, %L).',
								l.producer_url, l.remote_ref_table);
	ELSIF FOUND THEN
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
	LANGUAGE plpgsql SECURITY DEFINER
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
	PERFORM eventstream._assert_admin('refetch');
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

CREATE FUNCTION eventstream.resync_failed(producer_url text, ref_table text DEFAULT NULL,
											OUT resynced integer, OUT refetched integer, OUT failed integer)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	url text := rtrim(btrim(resync_failed.producer_url), '/');
	wire text := CASE WHEN resync_failed.ref_table IS NOT NULL THEN eventstream._qualified(resync_failed.ref_table) END;
	d record;
	e record;
	ok boolean;
BEGIN
	PERFORM eventstream._assert_admin('resync_failed');
	-- No lock here: resync() and refetch() fetch from the producer first,
	-- holding none, while the site worker applies.
	IF NOT EXISTS (SELECT 1 FROM eventstream.producer x WHERE x.producer_url = url) THEN
		PERFORM eventstream._producer_row(url);		-- says it is not added
	END IF;
	resynced := 0;
	refetched := 0;
	failed := 0;
	-- Document by document, in the order their first failure came.
	FOR d IN
		SELECT l.remote_ref_table AS ref, l.remote_docname AS doc, min(l.id) AS first
		  FROM eventstream.sync_log l
		 WHERE l.producer_url = url AND l.status = 'Failed' AND l.remote_docname IS NOT NULL
		   AND (wire IS NULL OR l.remote_ref_table = wire)
		 GROUP BY l.remote_ref_table, l.remote_docname
		 ORDER BY min(l.id)
	LOOP
		BEGIN
			IF EXISTS (SELECT 1 FROM eventstream.sync_log x
						WHERE x.producer_url = url AND x.remote_ref_table = d.ref AND x.remote_docname = d.doc
						  AND x.id > d.first AND x.status = 'Synced')
			   OR EXISTS (SELECT 1 FROM eventstream.sync_log x
						   WHERE x.producer_url = url AND x.remote_ref_table = d.ref AND x.remote_docname = d.doc
							 AND x.status = 'Failed'
							 AND coalesce(x.note, '') LIKE '%no data kept: a character this database cannot hold%') THEN
				-- A later update was applied since (applying the failed ones
				-- again would roll the document back), or one has no data to
				-- apply again: the document as the producer has it now.
				IF eventstream.refetch(url, d.ref, d.doc) = 'Synced' THEN
					refetched := refetched + 1;
				ELSE
					failed := failed + 1;
				END IF;
			ELSE
				-- Its failed updates again, in order; one failing again
				-- leaves it and the later ones Failed.
				ok := true;
				FOR e IN SELECT x.id FROM eventstream.sync_log x
						  WHERE x.producer_url = url AND x.remote_ref_table = d.ref AND x.remote_docname = d.doc
							AND x.status = 'Failed'
						  ORDER BY x.id
				LOOP
					IF eventstream.resync(e.id) <> 'Synced' THEN
						ok := false;
						EXIT;
					END IF;
					resynced := resynced + 1;
				END LOOP;
				IF NOT ok THEN
					failed := failed + 1;
				END IF;
			END IF;
		EXCEPTION WHEN OTHERS THEN
			-- Refused (a table not subscribed any more), or the producer
			-- did not answer: the document stays as it is.
			failed := failed + 1;
		END;
	END LOOP;
END
$$;
COMMENT ON FUNCTION eventstream.resync_failed(text, text) IS
	'Apply the Failed sync log entries of a producer (of one of its tables, if given) again, document by document: in order with resync(), or, where a later update of the document was applied since, with refetch(); e.g. once a column the updates carry was added here.  Returns the entries resynced, the documents refetched and the documents that still fail.';

CREATE FUNCTION eventstream.ignore_columns(producer_url text, ref_table text, columns text[]) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	wire text := eventstream._qualified(ref_table);
BEGIN
	PERFORM eventstream._assert_admin('ignore_columns');
	p := eventstream._producer_row(producer_url);
	UPDATE eventstream.producer_table t
	   SET ignored_columns = (SELECT array_agg(DISTINCT c ORDER BY c) FROM unnest(ignore_columns.columns) c
							   WHERE c IS NOT NULL AND c <> '')
	 WHERE t.producer_url = p.producer_url AND t.ref_table = wire;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'table "%" is not subscribed from producer "%"', wire, p.producer_url
			USING ERRCODE = 'undefined_object', HINT = 'Subscribe to it with eventstream.subscribe().';
	END IF;
END
$$;
COMMENT ON FUNCTION eventstream.ignore_columns(text, text, text[]) IS
	'Leave these columns of the producer''s table (and of its child rows) out: their values are not applied here, and a local table without them takes the updates (NULL or an empty list: apply every column again).  Not for a mapped subscription, whose mapping names the columns it takes.';

CREATE FUNCTION eventstream.resync_table(producer_url text, ref_table text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	wire text := eventstream._qualified(ref_table);
	pt eventstream.producer_table;
BEGIN
	PERFORM eventstream._assert_admin('resync_table');
	p := eventstream._producer_row(producer_url);
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
	LANGUAGE plpgsql STABLE SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('remote_name');
	SELECT d.producer_url, d.remote_docname INTO producer_url, remote_docname FROM eventstream.remote_document d
	 WHERE d.local_table = remote_name.local_table AND d.local_docname = remote_name.local_docname;
END
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
