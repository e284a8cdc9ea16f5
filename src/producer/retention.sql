/*-------------------------------------------------------------------------
 *
 * retention.sql
 *	  Producer side: pruning the update log.
 *
 * prune() deletes the logs every consumer has acknowledged; the site
 * worker runs it periodically, in steps.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- Whether prune() keeps a log below the acknowledged horizon: a condition
-- withheld it from a consumer that may yet need its history (see prune).
-- Plain SQL, no SET clause: inlined into prune's queries.
CREATE FUNCTION eventstream._log_kept(log_id bigint, created_at timestamptz, retention interval) RETURNS boolean
	LANGUAGE sql STABLE
AS $$
	SELECT created_at > pg_catalog.now() - retention AND EXISTS (
		SELECT 1
		  FROM eventstream.withheld w
		  JOIN eventstream.consumer c ON c.consumer_url = w.consumer_url
		 WHERE w.update_log_id = log_id AND w.served_page IS NULL
		   AND NOT c.aged_out AND c.acked_at > pg_catalog.now() - retention)
$$;

/*
 * Delete the logs every consumer has acknowledged, and their receipts.
 * Consumers that have not pulled within eventstream.retention_period stop
 * holding logs back and are marked aged_out if that loses them anything.
 * Logs a condition withheld from a consumer are kept (within the retention
 * period) so the document's history can be replayed if it starts to match.
 * A subscription rejected since holds back the logs still to be served to
 * it (those committed before the rejection) until they are acknowledged.
 * Returns the number of logs deleted.
 */
CREATE FUNCTION eventstream.prune(max_logs bigint DEFAULT NULL) RETURNS bigint
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	retention interval := current_setting('eventstream.retention_period')::interval;
	horizon bigint;
	upto bigint;
	kept_from bigint;
	deleted bigint;
BEGIN
	PERFORM eventstream._assert_admin('prune');
	IF max_logs < 1 THEN
		RAISE EXCEPTION 'max_logs must be at least 1, not %', max_logs
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'Pass NULL (the default) to prune every acknowledged log.';
	END IF;
	PERFORM pg_advisory_xact_lock(hashtext('eventstream.prune'));
	-- Nothing while a restore is under way: the consumers' positions are
	-- not all back yet.
	IF (SELECT s.restore_pending FROM eventstream.site s) THEN
		RETURN 0;
	END IF;
	-- Every log below a consumer's acked_low is acknowledged by it.
	SELECT min(c.acked_low) INTO horizon
	  FROM eventstream.consumer c
	 WHERE c.acked_at > now() - retention AND NOT c.aged_out
	   AND EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
					  AND (ct.status = 'Approved'
						   OR (ct.ended_snapshot IS NOT NULL
							   AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, c.acked_snapshot))));
	horizon := least(horizon, eventstream._low_bound());
	IF horizon IS NULL THEN
		RETURN 0;
	END IF;

	UPDATE eventstream.consumer c SET aged_out = true
	 WHERE NOT c.aged_out AND c.acked_at <= now() - retention AND c.acked_low < horizon
	   AND EXISTS (SELECT 1 FROM eventstream.consumer_table ct
					WHERE ct.consumer_url = c.consumer_url AND NOT ct.unsubscribed
					  AND (ct.status = 'Approved'
						   OR (ct.ended_snapshot IS NOT NULL
							   AND NOT eventstream._end_passed(ct.ended_snapshot, ct.ended_txid, c.acked_snapshot))))
	   AND EXISTS (SELECT 1 FROM eventstream.update_log l WHERE l.id >= c.acked_low AND l.id < horizon);

	-- At most max_logs of them (the oldest that go), when asked: the
	-- background worker prunes a large backlog in steps, serving in between.
	upto := horizon;
	IF max_logs IS NOT NULL THEN
		upto := least(horizon, (SELECT l.id FROM eventstream.update_log l
								 WHERE l.id < horizon AND NOT eventstream._log_kept(l.id, l.created_at, retention)
								 ORDER BY l.id OFFSET max_logs LIMIT 1));
	END IF;

	WITH gone AS (
		DELETE FROM eventstream.update_log l
		 WHERE l.id < upto AND NOT eventstream._log_kept(l.id, l.created_at, retention)
		RETURNING l.id
	), held_back AS (
		DELETE FROM eventstream.withheld w USING gone WHERE w.update_log_id = gone.id
	)
	SELECT count(*) INTO deleted FROM gone;

	-- Ticks whose logs are all gone (the latest stays).
	DELETE FROM eventstream.tick t
	 WHERE t.max_id < upto AND t.tick_id < (SELECT max(x.tick_id) FROM eventstream.tick x);

	-- Receipts go with the last of their logs.  A page may hold replayed
	-- withheld logs that are kept longer than the rest, the only logs left
	-- below upto (usually none): only receipts from the oldest of them on
	-- are looked into.
	kept_from := (SELECT min(l.id) FROM eventstream.update_log l);
	DELETE FROM eventstream.served_page sp
	 WHERE sp.max_log_id < upto
	   AND (kept_from IS NULL OR sp.max_log_id < kept_from
			OR NOT EXISTS (SELECT 1 FROM eventstream.update_log l WHERE l.id = ANY (sp.log_ids) AND l.id < upto));

	UPDATE eventstream.site
	   SET last_prune_at = now(),
		   pruned_below = CASE WHEN deleted > 0 THEN greatest(pruned_below, upto) ELSE pruned_below END;
	RETURN deleted;
END
$$;
COMMENT ON FUNCTION eventstream.prune(bigint) IS
	'Delete update logs every consumer has acknowledged (at most max_logs, the oldest, when given); returns how many.  The background worker runs it periodically, in steps.';
