-- Serving: pages, cursors, origins, approval windows, privileges.
\set SHOW_CONTEXT never
TRUNCATE eventstream.update_log;
CREATE TABLE ledger (id int PRIMARY KEY, amount int);
GRANT SELECT ON ledger TO es_sub;
SELECT register('http://consumer-f', '00000000-0000-0000-0000-00000000000f', '["ledger"]');
SELECT eventstream.approve('http://consumer-f', 'ledger');
INSERT INTO ledger SELECT g, g * 10 FROM generate_series(1, 5) g;

-- Pages of two: "more" until the window is drained, nothing twice.
SELECT n, docname, more FROM pull('http://consumer-f', 2);
SELECT n, docname, more FROM pull('http://consumer-f', 2);
SELECT n, docname, more FROM pull('http://consumer-f', 2);
SELECT n, docname, more FROM pull('http://consumer-f', 2);

-- The same cursor again gives the same page (the consumer did not apply
-- it); receipts are not duplicated.
UPDATE ledger SET amount = amount + 1 WHERE id <= 2;
SELECT cur AS saved FROM cursors WHERE consumer = 'http://consumer-f' \gset
SELECT e->>'docname' AS docname FROM jsonb_array_elements(eventstream._pull('http://consumer-f', :'saved', 10)->'updates') e;
SELECT e->>'docname' AS docname FROM jsonb_array_elements(eventstream._pull('http://consumer-f', :'saved', 10)->'updates') e;
SELECT count(*) AS receipts, count(DISTINCT update_log_id) AS distinct_logs
  FROM eventstream.update_log_consumer WHERE consumer_url = 'http://consumer-f';
SELECT n, docname FROM pull('http://consumer-f');
SELECT n, docname FROM pull('http://consumer-f');

-- An older cursor of the consumer (it was restored from a backup) is
-- taken back while the logs after it are kept: what came after it is
-- served again, and the consumer goes on from there.
UPDATE cursors SET cur = :'saved' WHERE consumer = 'http://consumer-f';
SELECT n, docname FROM pull('http://consumer-f');
SELECT n, docname FROM pull('http://consumer-f');

-- Garbage is refused.
SELECT eventstream._pull('http://consumer-f', 'v1/oops', 10);
SELECT eventstream._pull('http://consumer-f', NULL, 10);
SELECT eventstream._pull('http://consumer-f', 'v1/1/1:1:', 0);
SELECT eventstream._pull('http://nobody', 'v1/1/1:1:', 10);

-- Changes applied from a site are never served back to it, but are served
-- to others, with their origin.
SELECT register('http://consumer-g', '00000000-0000-0000-0000-0000000000a9', '["ledger"]');
SELECT eventstream.approve('http://consumer-g', 'ledger');
BEGIN;
SELECT eventstream._set_origin('00000000-0000-0000-0000-00000000000f');
INSERT INTO ledger VALUES (100, 1);
COMMIT;
INSERT INTO ledger VALUES (101, 1);
SELECT n, docname FROM pull('http://consumer-f');
-- (a local change names no origin: the consumer takes it for the producer)
SELECT e->>'docname' AS docname, coalesce(e->>'origin', 'none: this site') AS origin
  FROM cursors c, jsonb_array_elements(eventstream._pull(c.consumer, c.cur, 10)->'updates') e
 WHERE c.consumer = 'http://consumer-g';

-- Logs of a table the consumer does not take, written in between, are
-- left out of its page (a page's logs are read in one walk of their range).
CREATE TABLE ledger_note (id int PRIMARY KEY);
GRANT SELECT ON ledger_note TO es_sub;
SELECT register('http://consumer-g', '00000000-0000-0000-0000-0000000000a9', '["ledger", "ledger_note"]') IS NOT NULL AS registered;
SELECT eventstream.approve('http://consumer-g', 'ledger_note');
SELECT n, docname FROM pull('http://consumer-f');
BEGIN;
INSERT INTO ledger VALUES (110, 1);
INSERT INTO ledger_note VALUES (1), (2);
INSERT INTO ledger VALUES (111, 1);
INSERT INTO ledger_note VALUES (3);
INSERT INTO ledger VALUES (112, 1);
COMMIT;
SELECT n, docname FROM pull('http://consumer-f');
DELETE FROM ledger WHERE id >= 110;
SELECT n, docname FROM pull('http://consumer-f');

-- A table the consumer's role can no longer read is not served.
REVOKE SELECT ON ledger FROM es_sub;
INSERT INTO ledger VALUES (102, 1);
SELECT n, docname FROM pull('http://consumer-f');
GRANT SELECT ON ledger TO es_sub;
INSERT INTO ledger VALUES (103, 1);
SELECT n, docname FROM pull('http://consumer-f');

-- Statuses travel with every page.
SELECT eventstream._pull(c.consumer, c.cur, 1)->'tables' AS tables FROM cursors c WHERE c.consumer = 'http://consumer-f';

-- Names that JSON must escape travel intact (pages are rendered by hand).
CREATE TABLE odd (name text PRIMARY KEY, v text);
GRANT SELECT ON odd TO es_sub;
SELECT register('http://consumer-o', '00000000-0000-0000-0000-0000000000b4', '["odd"]');
SELECT eventstream.approve('http://consumer-o', 'odd');
INSERT INTO odd VALUES (E'quote " backslash \\ newline \n tab \t', 'x'), ('plain', E'\u00e9 "v"');
SELECT n, docname = E'quote " backslash \\ newline \n tab \t' AS odd_name_intact, data->>'v' AS v, more FROM pull('http://consumer-o', 10);

-- A page stops growing at eventstream.http_max_response_size; one update
-- larger than that still goes, alone.
CREATE TABLE blob (id int PRIMARY KEY, body text);
GRANT SELECT ON blob TO es_sub;
SELECT register('http://consumer-s', '00000000-0000-0000-0000-0000000000b5', '["blob"]');
SELECT eventstream.approve('http://consumer-s', 'blob');
INSERT INTO blob SELECT g, repeat(md5(g::text), 500) FROM generate_series(1, 10) g;	-- 16 kB each
INSERT INTO blob VALUES (11, repeat(md5('big'), 3000));								-- 96 kB
SET eventstream.http_max_response_size = '64kB';
SELECT n, docname, more FROM pull('http://consumer-s', 100);
SELECT n, docname, more FROM pull('http://consumer-s', 100);
SELECT n, docname, more FROM pull('http://consumer-s', 100);
SELECT n, docname, more FROM pull('http://consumer-s', 100);
-- The same with a condition on the table (documents are judged one by one).
SELECT register('http://consumer-t', '00000000-0000-0000-0000-0000000000b6',
				'[{"ref_table": "blob", "condition": "id > 2"}]');
SELECT eventstream.approve('http://consumer-t', 'blob');
UPDATE blob SET body = body || 'x';
SELECT n, docname, more FROM pull('http://consumer-t', 100);
SELECT n, docname, more FROM pull('http://consumer-t', 100);
SELECT n, docname, more FROM pull('http://consumer-t', 100);
SELECT n, docname, more FROM pull('http://consumer-t', 100);
-- Initial-sync pages of documents stop growing there too.
SELECT jsonb_array_length(p->'documents') AS documents, p->>'next' AS next, p->'more' AS more
  FROM eventstream._serve_snapshot('blob', NULL, 100, 'es_sub') p;
SELECT jsonb_array_length(p->'documents') AS documents, p->>'next' AS next, p->'more' AS more
  FROM eventstream._serve_snapshot('blob', '8', 100, 'es_sub') p;
SET eventstream.http_max_response_size = '32kB';	-- below the minimum
RESET eventstream.http_max_response_size;

-- Docnames of snapshot pages and of filtered documents are rendered as the
-- capture trigger renders them (an array key as its text, a composite key
-- as a JSON array whose non-numbers are strings), and "after" reads them
-- back: pages of an int[] key and of a composite key holding an array, a
-- text with a comma and quotes, a timestamp, a boolean and a NaN.
CREATE TABLE arr_key (id int[] PRIMARY KEY, v text);
INSERT INTO arr_key SELECT ARRAY[i, i + 1], 'v' || i FROM generate_series(1, 3) i;
CREATE TABLE mixed_key (a text, b int[], c timestamptz, d boolean, e numeric, PRIMARY KEY (a, b, c, d, e));
INSERT INTO mixed_key VALUES ('x,"y"', '{1,2}', '2024-01-01 10:00+00', true, 'NaN'),
							 ('q', '{}', '2024-01-02 00:00+00', false, 1.50);
GRANT SELECT ON arr_key, mixed_key TO es_sub;
SELECT p->'documents'->0->>'docname' AS docname, p->>'next' AS next, p->'more' AS more
  FROM eventstream._serve_snapshot('arr_key', NULL, 1, 'es_sub') p;
SELECT p->'documents'->0->>'docname' AS docname, p->>'next' AS next, p->'more' AS more
  FROM eventstream._serve_snapshot('arr_key', '{1,2}', 1, 'es_sub') p;
SELECT p->'documents'->0->>'docname' AS docname, p->>'next' AS next, p->'more' AS more
  FROM eventstream._serve_snapshot('arr_key', '{2,3}', 1, 'es_sub') p;
SELECT p->'documents'->0->>'docname' AS docname, p->'more' AS more
  FROM eventstream._serve_snapshot('mixed_key', NULL, 1, 'es_sub') p;
SELECT p->'documents'->0->>'docname' AS docname, p->'documents'->0->'data'->>'a' AS a, p->'more' AS more
  FROM eventstream._serve_snapshot('mixed_key', '["q","{}","2024-01-02T00:00:00+00:00",false,1.50]', 1, 'es_sub') p;
SELECT eventstream._serve_filtered('mixed_key', '{"d": "true"}', 5, 'es_sub');
-- The same docnames as the capture trigger's.
SELECT register('http://consumer-k', '00000000-0000-0000-0000-0000000000b7', '["arr_key", "mixed_key"]');
SELECT eventstream.approve('http://consumer-k', 'arr_key');
SELECT eventstream.approve('http://consumer-k', 'mixed_key');
UPDATE arr_key SET v = v || '!' WHERE id = '{1,2}';
UPDATE mixed_key SET a = a;		-- no change, no log
INSERT INTO mixed_key VALUES ('z', '{3}', '2024-01-03 01:02:03.5+02', false, '-Infinity');
SELECT l.docname, l.docname = (SELECT string_agg(d->>'docname', '') FROM
							   eventstream._serve_snapshot(l.ref_table, NULL, 1000, 'es_sub') p,
							   jsonb_array_elements(p->'documents') d WHERE d->>'docname' = l.docname) AS served_alike
  FROM eventstream.update_log l WHERE l.ref_table IN ('public.arr_key', 'public.mixed_key') ORDER BY l.id;
SELECT eventstream._serve_snapshot('arr_key', '[1, 2]', 1, 'es_sub');

-- A consumer that asks for the next page while it applies the current one
-- names the cursor it last stored as ack: only what came before that is
-- acknowledged, and the page in between can be asked for again (as after a
-- failed apply), unchanged.  Pages say that the producer takes ack=.
CREATE TABLE pipe (id int PRIMARY KEY);
GRANT SELECT ON pipe TO es_sub;
SELECT register('http://consumer-p', '00000000-0000-0000-0000-0000000000c7', '["pipe"]');
SELECT eventstream.approve('http://consumer-p', 'pipe');
INSERT INTO pipe SELECT g FROM generate_series(200, 205) g;
SELECT cur AS c1 FROM cursors WHERE consumer = 'http://consumer-p' \gset
SELECT p.page::jsonb->>'cursor' AS c2, p.page::jsonb->'acks' AS acks,
	   (SELECT string_agg(e->>'docname', ',') FROM jsonb_array_elements(p.page::jsonb->'updates') e) AS first_page
  FROM eventstream._pull_page('http://consumer-p', :'c1', 2) p \gset
SELECT :'acks' AS acks, :'first_page' AS first_page;
SELECT (SELECT string_agg(e->>'docname', ',') FROM jsonb_array_elements(p.page::jsonb->'updates') e) AS next_page
  FROM eventstream._pull_page('http://consumer-p', :'c2', 2, :'c1') p;
SELECT served_page - acked_page AS pages_not_acknowledged FROM eventstream.consumer
 WHERE consumer_url = 'http://consumer-p';
-- The page's cursor, more and complete come as columns too (the
-- endpoint's headers).
SELECT (SELECT string_agg(e->>'docname', ',') FROM jsonb_array_elements(p.page::jsonb->'updates') e) AS first_page_again,
	   p.next_cursor = p.page::jsonb->>'cursor' AS same_cursor, p.more, p.complete,
	   p.more = (p.page::jsonb->'more')::boolean AND p.complete = (p.page::jsonb->'complete')::boolean AS same_flags
  FROM eventstream._pull_page('http://consumer-p', :'c1', 2) p;
-- An ack after the cursor is refused.
SELECT eventstream._pull_page('http://consumer-p', :'c1', 2, :'c2');
-- So is an ack that is no cursor.
SELECT eventstream._pull_page('http://consumer-p', :'c1', 2, 'v1/garbage');
SELECT eventstream.remove_consumer('http://consumer-p');
-- Row-level security and column privileges: documents, filters and
-- snapshots are read as the key's role.
CREATE ROLE es_region;
CREATE TABLE zoned (id int PRIMARY KEY, region text, secret text);
ALTER TABLE zoned ENABLE ROW LEVEL SECURITY;
CREATE POLICY north ON zoned FOR SELECT TO es_region USING (region = 'north');
GRANT SELECT (id, region) ON zoned TO es_region;
INSERT INTO zoned VALUES (1, 'north', 's1'), (2, 'south', 's2'), (3, 'north', 's3');
SELECT eventstream._rls_applies('zoned', 'es_region') AS rls, eventstream._role_served('zoned', 'es_region') AS role_served,
	   eventstream._readable_by('zoned', 'es_region') AS readable;
SELECT eventstream._serve_document('zoned', '1', 'es_region');
SELECT eventstream._serve_document('zoned', '2', 'es_region');
SELECT eventstream._serve_filtered('zoned', '{"region": "south"}', 5, 'es_region');
SELECT eventstream._serve_filtered('zoned', '{"region": "north"}', 5, 'es_region');
SELECT eventstream._serve_filtered('zoned', '{"secret": "s2"}', 5, 'es_region');
SELECT eventstream._serve_snapshot('zoned', NULL, 10, 'es_region');
-- Without a key column: refused.
REVOKE SELECT (id) ON zoned FROM es_region;
SELECT eventstream._serve_document('zoned', '1', 'es_region');
SELECT eventstream._serve_snapshot('zoned', NULL, 10, 'es_region');
DROP TABLE zoned;
DROP ROLE es_region;
