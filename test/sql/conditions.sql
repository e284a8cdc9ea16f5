-- Conditions: untrusted consumer input, validated when subscribed and
-- evaluated on the producer, as the consumer's role, read-only.
\set SHOW_CONTEXT never
TRUNCATE eventstream.update_log;
CREATE TABLE note (id int PRIMARY KEY, title text, public boolean NOT NULL DEFAULT false,
				   content text, n int DEFAULT 1);
CREATE TABLE secret (id int PRIMARY KEY);
GRANT SELECT ON note TO es_sub;
CREATE FUNCTION wrong_args(doc jsonb) RETURNS boolean LANGUAGE sql AS 'SELECT true';
CREATE FUNCTION not_bool(consumer text, doc jsonb, update_log jsonb) RETURNS int LANGUAGE sql AS 'SELECT 1';

-- Anything but one boolean expression over doc is refused.
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "doc.public; DROP TABLE note"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "doc.public) OR (true"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "(doc.public"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "true FROM pg_authid"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "doc.id"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "doc.nope = 1"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "doc.public /* open"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd: no_such_function"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd: public.wrong_args"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd: not_bool"}]');
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd:"}]');
SELECT count(*) AS consumers_left_behind FROM eventstream.consumer WHERE consumer_url = 'http://consumer-c:8000';

-- A valid condition is stored trimmed; a blank one means none.
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "  doc.public\n"}]');
SELECT eventstream.approve('http://consumer-c:8000', 'note');

-- Only documents that satisfy the condition now are served.
INSERT INTO note VALUES (1, 'one', false, 'draft');
UPDATE note SET content = 'edited' WHERE id = 1;
INSERT INTO note VALUES (2, 'two', true, 'public from the start');
SELECT * FROM pull('http://consumer-c:8000');

-- When a document starts to match, its unread history comes first, in order.
UPDATE note SET public = true WHERE id = 1;
SELECT n, update_type, docname, data->'changed' AS changed, data->>'content' AS content
  FROM pull('http://consumer-c:8000');
-- ... and is not sent again.
UPDATE note SET content = 'final' WHERE id = 1;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-c:8000');
SELECT l.docname, l.update_type, count(*) AS receipts
  FROM eventstream.update_log_consumer uc JOIN eventstream.update_log l ON l.id = uc.update_log_id
 WHERE uc.consumer_url = 'http://consumer-c:8000' GROUP BY l.id, l.docname, l.update_type ORDER BY l.id;

-- A document the consumer holds that stops matching leaves it: the change
-- is served as a Delete (logical replication's UPDATE out of a row
-- filter); what follows is withheld, its end included.  One it never had
-- is never mentioned.
UPDATE note SET public = false, content = 'hidden' WHERE id = 1;
SELECT n, update_type, docname, data FROM pull('http://consumer-c:8000');
DELETE FROM note WHERE id = 1;
INSERT INTO note VALUES (3, 'three', false);
DELETE FROM note WHERE id = 3;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-c:8000');

-- Back in the condition, it is created again with its whole current state,
-- once; the changes made while it was out are not replayed.
INSERT INTO note VALUES (40, 'forty', true, 'a');
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
UPDATE note SET public = false WHERE id = 40;
UPDATE note SET content = 'b' WHERE id = 40;
SELECT n, update_type, docname, data FROM pull('http://consumer-c:8000');
UPDATE note SET content = 'c' WHERE id = 40;
UPDATE note SET public = true, title = 'FORTY' WHERE id = 40;
SELECT n, update_type, docname, data FROM pull('http://consumer-c:8000');
UPDATE note SET content = 'd' WHERE id = 40;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-c:8000');
-- Out and back in before the consumer pulls: it matches now, so its
-- changes are served as they are.
BEGIN;
UPDATE note SET public = false WHERE id = 40;
UPDATE note SET public = true, content = 'e' WHERE id = 40;
COMMIT;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-c:8000');
-- Pulling the page of a Delete again gives it again (the consumer did not
-- apply it); the next page withholds what follows.
UPDATE note SET public = false WHERE id = 40;
SELECT cur AS saved FROM cursors WHERE consumer = 'http://consumer-c:8000' \gset
SELECT e->>'update_type' AS update_type, e->>'docname' AS docname
  FROM jsonb_array_elements(eventstream._pull('http://consumer-c:8000', :'saved', 10)->'updates') e;
SELECT e->>'update_type' AS update_type, e->>'docname' AS docname
  FROM jsonb_array_elements(eventstream._pull('http://consumer-c:8000', :'saved', 10)->'updates') e;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
UPDATE note SET content = 'f' WHERE id = 40;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT held, count(*) FROM eventstream.consumer_document
 WHERE consumer_url = 'http://consumer-c:8000' AND docname = '40' GROUP BY held;
DELETE FROM note WHERE id = 40;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
-- A page pulled twice, the second time with the Delete, the consumer going
-- on from the first (two of its sessions pulled it): the Delete comes on
-- the next page.
INSERT INTO note VALUES (41, 'forty-one', true);
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT cur AS saved FROM cursors WHERE consumer = 'http://consumer-c:8000' \gset
SELECT eventstream._pull('http://consumer-c:8000', :'saved', 10)->>'cursor' AS first_pull \gset
UPDATE note SET public = false WHERE id = 41;
SELECT e->>'update_type' AS update_type, e->>'docname' AS docname
  FROM jsonb_array_elements(eventstream._pull('http://consumer-c:8000', :'saved', 10)->'updates') e;
UPDATE cursors SET cur = :'first_pull' WHERE consumer = 'http://consumer-c:8000';
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
DELETE FROM note WHERE id = 41;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');

-- A rejection applies from where it is made: the rows its transaction
-- wrote before it, and transactions committed before it, are served as
-- under the approval; what is written after it is not.
CREATE TABLE plain (id int PRIMARY KEY, v text);
GRANT SELECT ON plain TO es_sub;
SELECT register('http://consumer-r:8000', '00000000-0000-0000-0000-0000000000e1', '["plain"]');
SELECT eventstream.approve('http://consumer-r:8000', 'plain');
SELECT register('http://consumer-r2:8000', '00000000-0000-0000-0000-0000000000e2', '["plain"]');
SELECT eventstream.approve('http://consumer-r2:8000', 'plain');
INSERT INTO plain VALUES (1, 'committed before');
BEGIN;
INSERT INTO plain VALUES (2, 'before reject');
SELECT eventstream.reject('http://consumer-r:8000', 'plain');
INSERT INTO plain VALUES (3, 'after reject');
COMMIT;
INSERT INTO plain VALUES (4, 'committed after');
SELECT n, update_type, docname FROM pull('http://consumer-r:8000');
SELECT n, update_type, docname FROM pull('http://consumer-r:8000');
-- The other consumer, still approved, gets all of them.
SELECT n, update_type, docname FROM pull('http://consumer-r2:8000');
SELECT consumer_url, tables_approved, updates_waiting FROM eventstream.consumer_status
 WHERE consumer_url LIKE 'http://consumer-r%' ORDER BY 1;
-- The only consumer rejected in the middle of a transaction: the rows
-- before are logged and served, the capture trigger is gone after it.
SELECT eventstream.remove_consumer('http://consumer-r2:8000');
SELECT eventstream.approve('http://consumer-r:8000', 'plain');
BEGIN;
INSERT INTO plain VALUES (5, 'before reject');
SELECT eventstream.reject('http://consumer-r:8000', 'plain');
INSERT INTO plain VALUES (6, 'after reject');
COMMIT;
SELECT n, update_type, docname FROM pull('http://consumer-r:8000');
SELECT count(*) AS capture_triggers FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid = 'plain'::regclass;
SELECT eventstream.remove_consumer('http://consumer-r:8000');
DROP TABLE plain;

-- Pulling a page again (the consumer did not apply it) replays the same
-- history again.
INSERT INTO note VALUES (20, 'twenty', false, 'a');
UPDATE note SET content = 'b' WHERE id = 20;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
UPDATE note SET public = true WHERE id = 20;
SELECT cur AS saved FROM cursors WHERE consumer = 'http://consumer-c:8000' \gset
SELECT e->>'update_type' AS update_type, e->>'docname' AS docname, e->'data'->'changed' AS changed
  FROM jsonb_array_elements(eventstream._pull('http://consumer-c:8000', :'saved', 10)->'updates') e;
SELECT e->>'update_type' AS update_type, e->>'docname' AS docname, e->'data'->'changed' AS changed
  FROM jsonb_array_elements(eventstream._pull('http://consumer-c:8000', :'saved', 10)->'updates') e;
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');

-- A document whose history is not in the log arrives whole, as a Create.
SELECT eventstream.reject('http://consumer-c:8000', 'note');
INSERT INTO note VALUES (10, 'ten', true, 'written while nobody listened');
INSERT INTO note VALUES (13, 'thirteen', false, 'also unheard');
SELECT eventstream.approve('http://consumer-c:8000', 'note');
UPDATE note SET title = 'TEN' WHERE id = 10;
UPDATE note SET title = 'THIRTEEN' WHERE id = 13;
SELECT n, update_type, docname, data FROM pull('http://consumer-c:8000');
-- The Create stands for the history before it: that is never replayed.
UPDATE note SET public = true WHERE id = 13;
UPDATE note SET content = 'heard' WHERE id = 13;
SELECT n, update_type, docname, data FROM pull('http://consumer-c:8000');
UPDATE note SET content = 'heard again' WHERE id = 13;
SELECT n, update_type, docname, data->'changed' AS changed FROM pull('http://consumer-c:8000');

-- cmd: conditions call (consumer, doc, update_log).
CREATE FUNCTION is_odd_note(consumer text, doc jsonb, update_log jsonb) RETURNS boolean
LANGUAGE sql AS $$ SELECT (doc->>'id')::int % 2 = 1 AND consumer LIKE 'http://consumer-c%' AND update_log ? 'update_type' $$;
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd: public.is_odd_note"}]');
INSERT INTO note VALUES (4, 'four'), (5, 'five');
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
-- Its function dropped since: the documents are denied, the error kept,
-- the pull goes on.
DROP FUNCTION is_odd_note(text, jsonb, jsonb);
INSERT INTO note VALUES (6, 'six');
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT condition_error FROM eventstream.consumer_table WHERE consumer_url = 'http://consumer-c:8000';

-- A condition that fails denies the document, and the error is kept.
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "1 / (doc.n - 1) = 1"}]');
INSERT INTO note (id, n) VALUES (7, 1), (8, 2);
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT condition, condition_error FROM eventstream.consumer_table WHERE consumer_url = 'http://consumer-c:8000';

-- It cannot write, nor read what the consumer's role cannot read.
CREATE FUNCTION sneaky(consumer text, doc jsonb, update_log jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$ BEGIN INSERT INTO public.secret VALUES ((doc->>'id')::int); RETURN true; END $$;
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "cmd: public.sneaky"}]');
INSERT INTO note (id) VALUES (9);
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT condition_error FROM eventstream.consumer_table WHERE consumer_url = 'http://consumer-c:8000';
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "(SELECT count(*) FROM public.secret) >= 0"}]');
INSERT INTO note (id) VALUES (11);
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
SELECT condition_error FROM eventstream.consumer_table WHERE consumer_url = 'http://consumer-c:8000';
SELECT count(*) AS secret_rows FROM secret;

-- Removing the condition serves everything again.
SELECT register('http://consumer-c:8000', '00000000-0000-0000-0000-00000000000c', '[{"ref_table": "note", "condition": "   "}]');
INSERT INTO note (id) VALUES (12);
SELECT n, update_type, docname FROM pull('http://consumer-c:8000');
