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
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The path of the next pull for a producer.  resync=1: this site takes a
-- page that tells it to copy its tables again (see _apply_page) when the
-- producer cannot serve from its cursor.
CREATE FUNCTION eventstream._pull_path(cursor text, wait integer) RETURNS text
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	RETURN (SELECT format('updates?consumer=%s&cursor=%s&limit=@PAGE_LIMIT@&resync=1%s', eventstream._urlencode(eventstream._site_url()),
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
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	p eventstream.producer;
	path text;
	body jsonb;
	deps jsonb;
	res record;
	total integer := 0;
BEGIN
	PERFORM eventstream._assert_admin('sync_now');
	p := eventstream._producer_row(producer_url);
	path := (SELECT r.path FROM eventstream._next_request(p.producer_url) r);
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
