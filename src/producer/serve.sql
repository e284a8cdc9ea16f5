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
 * Part of the install script eventstream--<version>.sql: the Makefile builds
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
										resync boolean DEFAULT false,
										OUT page text, OUT served integer, OUT news boolean,
										OUT caught_up boolean, OUT next_cursor text, OUT more boolean,
										OUT complete boolean)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	-- Role-served tables are read as the API key's role, whose policies
	-- always apply.
	SET row_security = on
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
	t_roles boolean[];	-- the table is role-served (_role_served)
	rs boolean;
	doc jsonb;
	prev_table text;	-- the document of the last log served
	prev_doc text;
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
	PERFORM eventstream._check_serving();
	PERFORM eventstream._check_limit(lim, @PAGE_LIMIT@);
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
	IF ack_page < c.acked_page OR pageno > c.served_page + 1 OR c.resync_pending OR ack_page < c.resync_below THEN
		-- An older cursor of this consumer (it was restored from a backup,
		-- or a session's pulls were rolled back) is taken back while every
		-- log after it is kept and no condition decided what it holds: what
		-- came after it is served again.  Not an older ack= of a request
		-- asked for ahead: another pull went past it meanwhile, and the
		-- consumer asks again without it.  Otherwise a consumer that says
		-- it can (resync) is re-synced: the page tells it to start from now
		-- and copy its tables again.
		IF NOT c.resync_pending AND ack_page >= c.resync_below AND ack_page < c.acked_page
		   AND ack_page = pageno
		   AND low_from >= coalesce((SELECT s.pruned_below FROM eventstream.site s), 0)
		   AND NOT EXISTS (SELECT 1 FROM eventstream.consumer_table ct
							WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
							  AND (ct.condition IS NOT NULL
								   OR eventstream._role_served(eventstream._published(ct.ref_table), c.role))) THEN
			NULL;
		ELSIF resync AND ack_page = pageno THEN
			next_cursor := eventstream._restart_consumer(c.consumer_url, greatest(pageno, ack_page));
			tables_now := eventstream._consumer_tables(c.consumer_url);
			UPDATE eventstream.consumer x SET sent_tables = tables_now, sent_tables_page = NULL
			 WHERE x.consumer_url = c.consumer_url;
			served := 0;
			news := true;
			caught_up := false;
			more := false;
			complete := true;
			page := format('{"cursor": %s, "more": false, "complete": true, "acks": true, "resync": true, "newest_at": null, "tables": %s, "keys": %s, "updates": []}',
						   to_json(next_cursor), tables_now, eventstream._consumer_keys(c.consumer_url));
			RETURN;
		ELSIF c.resync_pending OR ack_page < c.resync_below THEN
			RAISE EXCEPTION 'consumer "%" must copy its tables again', consumer_url
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = 'This site was restored from a backup since the cursor was issued.',
					  HINT = 'Run eventstream.reset_cursor() on the consumer.';
		ELSIF ack_page < c.acked_page AND ack_page >= c.resync_below AND ack_page = pageno THEN
			RAISE EXCEPTION 'cursor is not current for consumer "%"', consumer_url
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Pages before %s were acknowledged, and this older cursor cannot be taken back: %s.',
									  c.acked_page,
									  CASE WHEN low_from < coalesce((SELECT s.pruned_below FROM eventstream.site s), 0)
										   THEN 'updates after it were pruned'
										   ELSE 'a condition or row-level security decides what the consumer holds' END),
					  HINT = 'Run eventstream.reset_cursor() on the consumer: it copies its tables again.';
		ELSE
			RAISE EXCEPTION 'cursor is not current for consumer "%"', consumer_url
				USING ERRCODE = 'invalid_parameter_value',
					  DETAIL = format('Pages before %s were acknowledged; pages %s to %s can be pulled.', c.acked_page, c.acked_page, c.served_page + 1),
					  HINT = 'Pull with the cursor stored with the updates you last applied.';
		END IF;
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
	-- the pulls of the page before the acknowledged cursor, those the
	-- consumer did not go on from (their cursor is not the one it stored;
	-- a page before the one acknowledged earlier was settled so already).
	-- A pull asked ahead (ack= an earlier cursor) does not settle the page
	-- before it: the consumer may still go on from another pull of that
	-- page, and this pull leaves those aside (_holds_from).  Those of
	-- other pulls of this page stay until a later page says which the
	-- consumer went on from.
	DELETE FROM eventstream.consumer_document d
	 WHERE d.consumer_url = c.consumer_url
	   AND (d.page > pageno
			OR (d.page = ack_page - 1 AND ack_page - 1 >= c.acked_page
				AND d.token IS DISTINCT FROM coalesce(ack, cursor)));
	DELETE FROM eventstream.withheld w
	 WHERE w.consumer_url = c.consumer_url AND (w.page >= pageno OR w.served_page < ack_page);
	UPDATE eventstream.withheld w SET served_page = NULL
	 WHERE w.consumer_url = c.consumer_url AND w.served_page >= pageno;

	BEGIN
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

			-- The servable tables, as arrays, read after the window's end is
			-- taken: a rejection committed before it is then seen with the logs
			-- it ends (read before, the logs written after it in its
			-- transaction would be served).  The page query then has no join
			-- and walks the primary key in order, stopping after lim + 1 rows
			-- (a FOR loop runs it as a cursor, which favours that plan).  A
			-- table whose approval ended (rejected) is served what was written
			-- before that until the cursor is past it.  A table the role does
			-- not see whole of is role-served (see below).
			SELECT coalesce(array_agg(ct.ref_table), '{}'), array_agg(ct.condition),
				   array_agg(ct.approved_snapshot), array_agg(eventstream._published(ct.ref_table)),
				   array_agg(ct.ended_snapshot), array_agg(ct.ended_txid), array_agg(ct.ended_id),
				   coalesce(bool_or(ct.ended_snapshot IS NOT NULL), false),
				   array_agg(eventstream._role_served(eventstream._published(ct.ref_table), c.role))
			  INTO t_names, t_conds, t_snaps, t_oids, t_end_snaps, t_end_txids, t_end_ids, any_ended, t_roles
			  FROM eventstream.consumer_table ct
			 WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
			   AND (ct.status = 'Approved'
					OR (ct.ended_snapshot IS NOT NULL
						AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, s_from)))
			   AND eventstream._published(ct.ref_table) IS NOT NULL
			   AND eventstream._readable_by(eventstream._published(ct.ref_table), c.role);

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

		IF NOT EXISTS (SELECT 1 FROM unnest(t_conds) x WHERE x IS NOT NULL) AND NOT coalesce(true = ANY (t_roles), false) THEN
			-- No condition and no role-served table involved: the page is the first lim candidates,
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
				rs := t_roles[array_position(t_names, c_tables[i])];
				-- A Truncate is served whatever the condition (as logical
				-- replication sends TRUNCATE whatever the row filter).
				IF (cond IS NULL AND NOT rs) OR c_types[i] = 'Truncate' THEN
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
					IF cond IS NOT NULL OR rs THEN
						-- The consumer's table is emptied: it holds none of
						-- its documents after this, and what was withheld
						-- went with them.
						PERFORM eventstream._set_holds(c.consumer_url, c_tables[i], d.docname, false, pageno, ack_page)
						   FROM (SELECT DISTINCT x.docname FROM eventstream.consumer_document x
								  WHERE x.consumer_url = c.consumer_url AND x.ref_table = c_tables[i]) d
						  WHERE eventstream._holds_from(c.consumer_url, c_tables[i], d.docname, pageno, cursor);
						changed_holds := true;
						UPDATE eventstream.withheld w SET served_page = pageno
						 WHERE w.consumer_url = c.consumer_url AND w.ref_table = c_tables[i]
						   AND w.served_page IS NULL;
					END IF;
					CONTINUE;
				END IF;

				-- Conditioned or role-served table: the document's current
				-- state decides.  A role-served table (row-level security
				-- applies to the role, or it may not read some columns) is
				-- served the document as the role reads it now, as a Create
				-- (negative id), whatever the log was: the logged data holds
				-- what the role may not see.  A document it cannot see
				-- (any more) is gone for it.
				held := eventstream._holds_from(c.consumer_url, c_tables[i], c_docs[i], pageno, cursor);
				doc := NULL;
				IF rs THEN
					doc := eventstream._document_as(t_oids[array_position(t_names, c_tables[i])], c_docs[i], c.role);
					allowed := CASE WHEN doc IS NULL THEN NULL END;
				END IF;
				IF cond IS NOT NULL AND (NOT rs OR doc IS NOT NULL) THEN
					allowed := eventstream._condition_allows(c.consumer_url, t_oids[array_position(t_names, c_tables[i])],
															 c_tables[i], cond, c.role, c_docs[i],
															 jsonb_build_object('id', c_ids[i], 'update_type', c_types[i],
																				'ref_table', c_tables[i], 'docname', c_docs[i]));
				ELSIF rs AND doc IS NOT NULL THEN
					allowed := true;
				END IF;
				-- A document the consumer holds that no longer matches leaves
				-- it: this log is served as a Delete of it (as logical
				-- replication turns an UPDATE out of a row filter into a
				-- DELETE), and what follows is withheld until it matches
				-- again.  A document that is gone: tell the consumer if it
				-- holds it.
				leaving := held AND (allowed IS FALSE OR (rs AND allowed IS NULL));
				allowed := coalesce(allowed, held AND NOT rs);
				IF (NOT allowed AND NOT leaving AND rs)
				   OR (rs AND allowed AND held AND c_tables[i] = prev_table AND c_docs[i] = prev_doc) THEN
					-- Nothing of it for this consumer: no history is kept,
					-- the current document is served when it is visible.
					-- Nor a run of logs of one document: its first served
					-- it as it is now.
					last_id := c_ids[i];
					CONTINUE;
				ELSIF NOT allowed AND NOT leaving THEN
					INSERT INTO eventstream.withheld (consumer_url, ref_table, docname, update_log_id, page)
						VALUES (c.consumer_url, c_tables[i], c_docs[i], c_ids[i], pageno)
						ON CONFLICT DO NOTHING;
					last_id := c_ids[i];
					CONTINUE;
				END IF;

				IF leaving THEN
					block := ARRAY[c_ids[i]];
					block_texts := eventstream._log_texts(block);
					IF c_types[i] <> 'Delete' OR rs THEN
						block_texts[1] := (block_texts[1]::jsonb || '{"data": null, "update_type": "Delete"}')::text;
					END IF;
				ELSIF rs THEN
					block := ARRAY[-c_ids[i]];
					block_texts := ARRAY[((eventstream._log_texts(ARRAY[c_ids[i]]))[1]::jsonb
										  || jsonb_build_object('data', doc, 'update_type', 'Create'))::text];
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
				prev_table := c_tables[i];
				prev_doc := c_docs[i];
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
	-- "behind": about how many updates wait after this page: 0 at the
	-- newest commit, else the logs written after the page's last one (of
	-- every table: an estimate, cheap to take from the primary key).
	page := format('{"cursor": %s, "more": %s, "complete": %s, "acks": true, "newest_at": %s, "behind": %s, "tables": %s, "keys": %s, "updates": [%s]}',
				   to_json(next_cursor), to_json(more), to_json(complete),
				   coalesce(to_json((SELECT l.created_at FROM eventstream.update_log l
									  WHERE l.id = abs(ids[cardinality(ids)])))::text, 'null'),
				   CASE WHEN caught_up THEN 0
						ELSE greatest(coalesce((SELECT max(l.id) FROM eventstream.update_log l), 0)
									  - coalesce(last_id, max_to, low_from - 1), 0) END,
				   tables_now, eventstream._consumer_keys(c.consumer_url),
				   coalesce(body, array_to_string(texts, ', ')));
END
$$;

/*
 * Start a consumer again from now, after the pages it pulled up to
 * after_page: it copies its tables again (a page saying "resync", or
 * registration).  Forgets what it was served; returns its new cursor.
 */
CREATE FUNCTION eventstream._restart_consumer(consumer_url text, after_page bigint) RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	c eventstream.consumer;
	new_page bigint;
	low bigint;
	snap pg_snapshot;
BEGIN
	SELECT * INTO c FROM eventstream.consumer x WHERE x.consumer_url = _restart_consumer.consumer_url FOR UPDATE;
	new_page := greatest(after_page, c.served_page, c.acked_page) + 1;
	-- The low bound first, then the snapshot it goes with.
	low := coalesce(eventstream._low_bound(), 0);
	snap := pg_current_snapshot();
	UPDATE eventstream.consumer x
	   SET acked_page = new_page, served_page = new_page - 1, acked_snapshot = snap, acked_low = low,
		   acked_at = now(), last_pull_at = now(), resync_pending = false, resync_below = new_page
	 WHERE x.consumer_url = c.consumer_url;
	DELETE FROM eventstream.served_page x WHERE x.consumer_url = c.consumer_url;
	DELETE FROM eventstream.consumer_document x WHERE x.consumer_url = c.consumer_url;
	DELETE FROM eventstream.withheld x WHERE x.consumer_url = c.consumer_url;
	RETURN format('v1/%s/%s/%s', new_page, snap, low);
END
$$;

/*
 * Whether a consumer holds a document of a conditioned or role-served
 * subscription, as the pull of page pageno with cursor sees it: as
 * _holds(), leaving aside too the changes of the pulls of the page before
 * that this cursor does not come from (a pull asked ahead, before the
 * consumer stored a cursor of that page, see _pull_page).  Plain SQL
 * without a SET clause: inlined into _pull_page.
 */
CREATE FUNCTION eventstream._holds_from(consumer_url text, ref_table text, docname text, pageno bigint,
										cursor text) RETURNS boolean
	LANGUAGE sql STABLE
AS $$
	SELECT coalesce((SELECT d.held FROM eventstream.consumer_document d
					  WHERE d.consumer_url = _holds_from.consumer_url AND d.ref_table = _holds_from.ref_table
						AND d.docname = _holds_from.docname
						AND NOT (d.page IS NOT DISTINCT FROM _holds_from.pageno AND d.token IS NOT NULL)
						AND NOT (d.page IS NOT DISTINCT FROM _holds_from.pageno - 1
								 AND d.token IS DISTINCT FROM _holds_from.cursor)
					  ORDER BY d.seq DESC LIMIT 1), false)
$$;

-- The next page for a consumer as jsonb, for SQL callers; the HTTP
-- endpoint sends _pull_page's text as it is.
CREATE FUNCTION eventstream._pull(consumer_url text, cursor text, "limit" integer DEFAULT @PAGE_DEFAULT@)
		RETURNS jsonb
	LANGUAGE sql
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT p.page::jsonb FROM eventstream._pull_page(consumer_url, cursor, "limit") p
$$;

-- A table named on the wire that the API key's role may read: some of its
-- columns, its key columns among them (_check_readable).
CREATE FUNCTION eventstream._readable_table(ref_table text, role regrole) RETURNS regclass
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	tbl regclass := eventstream._wire_table(ref_table);
BEGIN
	PERFORM eventstream._check_readable(tbl, role);
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
 * One document with its children, for the documents endpoint, read as the
 * API key's role: a row its policies hide does not exist, and the columns
 * it may not read are left out.
 */
CREATE FUNCTION eventstream._serve_document(ref_table text, docname text, role regrole) RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
	-- Read as the API key's role, whose policies always apply.
	SET row_security = on
AS $$
DECLARE
	tbl regclass := eventstream._readable_table(ref_table, role);
	doc jsonb;
BEGIN
	PERFORM eventstream._check_serving();
	doc := eventstream._document_as(tbl, docname, role);
	IF doc IS NULL THEN
		RAISE EXCEPTION 'document "%" of table "%" does not exist', docname, eventstream._published_name(tbl)
			USING ERRCODE = 'undefined_object';
	END IF;
	RETURN doc;
END
$$;

/*
 * Docnames of the rows of a table matching equality filters {"column":
 * value, ...} (values compared as text), in key order, for mapping
 * dependencies (the consumer takes the first).  Read as the API key's
 * role (its policies hide rows); the columns filtered on must exist and be
 * readable by it.
 */
CREATE FUNCTION eventstream._serve_filtered(ref_table text, filters jsonb, "limit" integer, role regrole)
		RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
	-- Read as the API key's role, whose policies always apply.
	SET row_security = on
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
	PERFORM eventstream._check_limit("limit", @DOCUMENT_LIMIT@);
	FOR f IN SELECT * FROM jsonb_each(filters) LOOP
		IF NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = tbl AND a.attname = f.key
						  AND a.attnum > 0 AND NOT a.attisdropped) THEN
			RAISE EXCEPTION 'column "%" of table "%" does not exist', f.key, eventstream._published_name(tbl)
				USING ERRCODE = 'undefined_column';
		END IF;
		IF NOT has_column_privilege(role, tbl, f.key, 'SELECT') THEN
			RAISE EXCEPTION 'role "%" cannot read column "%" of table "%"', role, f.key, eventstream._published_name(tbl)
				USING ERRCODE = 'insufficient_privilege',
					  HINT = 'Filter on columns the role of the API key may read.';
		END IF;
		conds := conds || format(' AND doc.%I::pg_catalog.text IS NOT DISTINCT FROM %L', f.key, filters->>f.key);
	END LOOP;
	-- The first matches in key order, so that "the first" is always the same.
	result := eventstream._value_as(
		format('SELECT coalesce(pg_catalog.jsonb_agg(d ORDER BY o), ''[]'') FROM (SELECT %s AS d,'
			   ' pg_catalog.row_number() OVER (ORDER BY %s) AS o FROM %s AS doc WHERE %s ORDER BY %s LIMIT %s) x',
			   eventstream._docname_sql(tbl, 'doc'), keys, eventstream._scan_sql(tbl), conds, keys, "limit"),
		role, NULL)::jsonb;
	RETURN jsonb_build_object('docnames', result);
END
$$;

-- How many rows tbl holds, as the planner believes (pg_class.reltuples,
-- summed over the partitions of a partitioned table); NULL when that is
-- unknown (never vacuumed or analyzed), and for a table under row-level
-- security, whose total would tell a consumer about rows its role's
-- policies hide.
CREATE FUNCTION eventstream._row_estimate(tbl regclass) RETURNS bigint
	LANGUAGE sql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT CASE WHEN bool_and(c.reltuples >= 0 OR c.relkind = 'p') AND NOT bool_or(c.relrowsecurity)
				THEN sum(c.reltuples) FILTER (WHERE c.relkind <> 'p')::bigint END
	  FROM pg_class c
	 WHERE c.oid = tbl
		OR c.oid IN (SELECT pt.relid FROM pg_partition_tree(tbl) pt WHERE pt.isleaf)
$$;

/*
 * A page of the existing documents of a table in primary key order, after
 * the docname "after" (NULL: from the start), for a consumer's initial sync.
 * Read as the API key's role: the rows its policies hide are not there, the
 * columns it may not read are left out.
 */
CREATE FUNCTION eventstream._serve_snapshot(ref_table text, after text, "limit" integer, role regrole,
											consumer text DEFAULT NULL)
		RETURNS jsonb
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
	SET datestyle = 'ISO' SET intervalstyle = 'postgres' SET extra_float_digits = 3 SET bytea_output = 'hex'
	-- Read as the API key's role, whose policies always apply.
	SET row_security = on
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
	PERFORM eventstream._check_serving();
	PERFORM eventstream._check_limit("limit", @DOCUMENT_LIMIT@);
	SELECT string_agg(format('doc.%I', a.attname), ', ' ORDER BY k.ord),
		   string_agg(CASE WHEN cardinality(eventstream._pk_attnums(tbl)) = 1
						   THEN format('$1::%s', format_type(a.atttypid, a.atttypmod))
						   ELSE format('($1::jsonb->>%s)::%s', k.ord - 1, format_type(a.atttypid, a.atttypmod)) END,
					  ', ' ORDER BY k.ord)
	  INTO keys, bound
	  FROM unnest(eventstream._pk_attnums(tbl)) WITH ORDINALITY AS k(attnum, ord)
	  JOIN pg_attribute a ON a.attrelid = tbl AND a.attnum = k.attnum;
	BEGIN
		names := eventstream._value_as(
			format('SELECT pg_catalog.array_agg(%s ORDER BY %s)'
				   '  FROM (SELECT %s FROM %s AS doc WHERE $1 IS NULL OR (%s) > (%s) ORDER BY %s LIMIT %s) doc',
				   eventstream._docname_sql(tbl, 'doc'), keys, keys, eventstream._scan_sql(tbl), keys, bound, keys, "limit" + 1),
			role, after)::text[];
	EXCEPTION WHEN invalid_text_representation OR invalid_datetime_format OR numeric_value_out_of_range THEN
		RAISE EXCEPTION 'invalid docname "%" for table "%"', after, eventstream._published_name(tbl)
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
		 WHERE x.consumer_url = consumer AND x.ref_table = eventstream._published_name(tbl)
		   AND x.status = 'Approved' AND NOT x.unsubscribed;
		IF NOT FOUND THEN
			RAISE EXCEPTION 'consumer "%" has no approved subscription to table "%"', consumer, eventstream._published_name(tbl)
				USING ERRCODE = 'insufficient_privilege';
		END IF;
		IF ct.condition IS NOT NULL THEN
			names := ARRAY(SELECT n FROM unnest(names) WITH ORDINALITY x(n, o)
							WHERE eventstream._condition_allows(consumer, tbl, ct.ref_table, ct.condition, role, n,
																jsonb_build_object('update_type', 'Create',
																				   'ref_table', ct.ref_table, 'docname', n))
							ORDER BY o);
		END IF;
		-- What the consumer holds is kept for a condition, and for a table
		-- served as the role reads it (a document it may no longer see
		-- leaves it).
		IF ct.condition IS NOT NULL OR eventstream._role_served(tbl, role) THEN
			PERFORM eventstream._set_holds(consumer, ct.ref_table, n, true, NULL,
										   (SELECT x.acked_page FROM eventstream.consumer x WHERE x.consumer_url = consumer))
			   FROM unnest(names) n
			  WHERE NOT eventstream._holds(consumer, ct.ref_table, n, NULL);
		END IF;
	END IF;
	SELECT coalesce(array_agg(jsonb_build_object('docname', n, 'data', eventstream._document_as(tbl, n, role)) ORDER BY o), '{}')
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
	-- "estimate": how many rows the table holds, as the planner believes
	-- (the consumer shows its progress against it); absent when unknown.
	RETURN jsonb_build_object('documents', to_jsonb(docs),
							  'next', CASE WHEN cut THEN names[cardinality(names)] ELSE last_name END,
							  'more', more)
		   || coalesce(jsonb_build_object('estimate', eventstream._row_estimate(tbl))
						   - CASE WHEN eventstream._row_estimate(tbl) IS NULL THEN 'estimate' ELSE '' END, '{}');
END
$$;
