-- Retention: acknowledged logs are pruned; an idle consumer ages out with
-- a clear error instead of silently missing updates.
\set SHOW_CONTEXT never
SELECT register('http://consumer-h', '00000000-0000-0000-0000-0000000000a8',
				'[{"ref_table": "note", "condition": "doc.public"}]');
SELECT eventstream.approve('http://consumer-h', 'note');
INSERT INTO note (id, public) VALUES (30, false), (31, true);
SELECT n, update_type, docname FROM pull('http://consumer-h');
SELECT (SELECT count(*) FROM eventstream.withheld WHERE consumer_url = 'http://consumer-h') AS h_withheld,
	   (SELECT count(*) FROM eventstream.consumer_document WHERE consumer_url = 'http://consumer-h') AS h_documents,
	   (SELECT count(*) FROM eventstream.update_log_consumer WHERE consumer_url = 'http://consumer-h') AS h_receipts;
SELECT eventstream.remove_consumer(consumer_url) FROM eventstream.consumer
 WHERE consumer_url NOT IN ('http://consumer-f', 'http://consumer-g');
-- Removing a consumer removes everything kept for it.
SELECT (SELECT count(*) FROM eventstream.withheld) AS withheld,
	   (SELECT count(*) FROM eventstream.consumer_document) AS documents,
	   (SELECT count(*) FROM eventstream.update_log_consumer
		 WHERE consumer_url NOT IN ('http://consumer-f', 'http://consumer-g')) AS receipts;
TRUNCATE eventstream.update_log, eventstream.served_page;
INSERT INTO ledger SELECT g, 0 FROM generate_series(200, 204) g;

-- Nothing is pruned before both consumers acknowledged it.
SELECT eventstream.prune() AS pruned;
SELECT count(*) AS served FROM pull('http://consumer-f');
SELECT eventstream.prune() AS pruned;
SELECT count(*) AS served FROM pull('http://consumer-g');
SELECT eventstream.prune() AS pruned;
-- Pulling with the newer cursors acknowledges the pages before them.  The
-- worker prunes in steps (max_logs): the oldest first, receipts with them.
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-g');
SELECT eventstream.prune(max_logs => 0);
SELECT eventstream.prune(max_logs => 2) AS pruned_step;
SELECT array_agg(docname ORDER BY id) AS logs_left FROM eventstream.update_log;
SELECT eventstream.prune() AS pruned;
SELECT count(*) AS logs_left, (SELECT count(*) FROM eventstream.update_log_consumer) AS receipts_left
  FROM eventstream.update_log;

-- consumer_status shows what waits for each consumer.
INSERT INTO ledger VALUES (250, 0), (251, 0);
SELECT consumer_url, updates_waiting, tables_approved, tables_pending, aged_out, last_pull_at IS NOT NULL AS pulled
  FROM eventstream.consumer_status ORDER BY 1;
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-f');
SELECT consumer_url, updates_waiting FROM eventstream.consumer_status ORDER BY 1;

-- consumer-g stops pulling for longer than the retention period.
INSERT INTO ledger SELECT g, 0 FROM generate_series(300, 302) g;
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-f');
SELECT eventstream.prune() AS pruned_while_g_is_recent;
UPDATE eventstream.consumer SET acked_at = now() - interval '8 days' WHERE consumer_url = 'http://consumer-g';
SELECT eventstream.prune() AS pruned_after_g_aged;
SELECT consumer_url, aged_out FROM eventstream.consumer ORDER BY 1;
SELECT count(*) FROM pull('http://consumer-g');
-- Recovery as the hint says.
SELECT eventstream.remove_consumer('http://consumer-g');
DELETE FROM cursors WHERE consumer = 'http://consumer-g';
SELECT register('http://consumer-g', '00000000-0000-0000-0000-0000000000a9', '["ledger"]');
SELECT eventstream.approve('http://consumer-g', 'ledger');
INSERT INTO ledger VALUES (400, 0);
SELECT n, docname FROM pull('http://consumer-g');

-- Logs a condition withheld are kept, the oldest below the others: pruning
-- in steps still goes on past them.
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-g');
SELECT eventstream.prune() AS pruned;
SELECT count(*) AS logs FROM eventstream.update_log;
SELECT register('http://consumer-k', '00000000-0000-0000-0000-0000000000ab',
				'[{"ref_table": "note", "condition": "doc.public"}]');
SELECT eventstream.approve('http://consumer-k', 'note');
INSERT INTO note (id, public) VALUES (40, false), (41, false);
INSERT INTO ledger VALUES (500, 0), (501, 0);
SELECT count(*) AS served_to_k FROM pull('http://consumer-k');
SELECT count(*) FROM pull('http://consumer-k');
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-g');
SELECT count(*) FROM pull('http://consumer-g');
SELECT eventstream.prune(max_logs => 1) AS pruned_past_the_kept;
SELECT array_agg(docname ORDER BY id) AS logs_left FROM eventstream.update_log;
SELECT eventstream.remove_consumer('http://consumer-k');

-- A consumer restored from a backup pulls with an older cursor: taken back
-- while the logs after it are kept (see serve); once some are pruned,
-- refused, or, for a consumer that takes it (resync), answered with a page
-- that starts it from now, to copy its tables again.
SELECT cur AS old_g FROM cursors WHERE consumer = 'http://consumer-g' \gset
INSERT INTO ledger VALUES (600, 0);
SELECT n, docname FROM pull('http://consumer-g');
SELECT count(*) FROM pull('http://consumer-g');
SELECT count(*) FROM pull('http://consumer-f');
SELECT count(*) FROM pull('http://consumer-f');
SELECT eventstream.prune() > 0 AS pruned;
SELECT eventstream._pull('http://consumer-g', :'old_g', 10);
SELECT p.served, p.more, p.complete, p.page::jsonb->'resync' AS resync, p.page::jsonb->'updates' AS updates
  FROM eventstream._pull_page('http://consumer-g', :'old_g', 10, resync => true) p;
SELECT resync_below > 0 AS restarted, resync_pending FROM eventstream.consumer WHERE consumer_url = 'http://consumer-g';
-- A cursor from before the re-sync re-syncs again; the new one serves
-- what comes after it.
UPDATE cursors SET cur = (SELECT p.next_cursor FROM eventstream._pull_page('http://consumer-g', :'old_g', 10, resync => true) p)
 WHERE consumer = 'http://consumer-g';
INSERT INTO ledger VALUES (601, 0);
SELECT n, docname FROM pull('http://consumer-g');

-- The retention period is a server-wide setting (postgresql.conf, reload).
SHOW eventstream.retention_period;
SET eventstream.retention_period = '1s';
