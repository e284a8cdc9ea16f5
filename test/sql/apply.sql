-- The consumer's apply, without a producer: updates as pages bring them,
-- handed to eventstream._apply_updates() directly.
\set SHOW_CONTEXT never
CREATE ROLE es_applier;
CREATE TABLE a_item (code text PRIMARY KEY, qty int CHECK (qty >= 0), note text);
CREATE TABLE a_line (item text REFERENCES a_item ON DELETE CASCADE, n int, what text, PRIMARY KEY (item, n));
GRANT SELECT, INSERT, UPDATE, DELETE ON a_item, a_line TO es_applier;
INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor)
	VALUES ('http://p.invalid', 'k', 's', 'es_applier', '00000000-0000-0000-0000-0000000000f1', 'v1/1/1:1:/1');
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://p.invalid', 'public.a_item', 'a_item', 'Approved');
CREATE FUNCTION creates(first int, last int, bad int DEFAULT 0) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', g, 'update_type', 'Create', 'ref_table', 'public.a_item',
										'docname', 'I' || g,
										'data', jsonb_build_object('code', 'I' || g, 'qty', CASE WHEN g = bad THEN -1 ELSE g END),
										'origin', '00000000-0000-0000-0000-0000000000f1') ORDER BY g)
	  FROM generate_series(first, last) g
$$;

-- A run of Creates is applied as one statement; one of them breaks a CHECK
-- here, so the run is applied again row by row: that one is Failed, the
-- others are Synced, each once.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', creates(1, 20, 7), NULL, false) AS processed_failed;
SELECT count(*) AS rows FROM a_item;
SELECT status, count(*) FROM eventstream.sync_log GROUP BY status ORDER BY status;
SELECT docname, error FROM eventstream.sync_log WHERE status = 'Failed';

-- A clean run, over rows partly there: they take the producer's values.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', creates(15, 40), NULL, false) AS processed_failed;
SELECT count(*) AS rows, sum(qty) AS qty FROM a_item;
SELECT count(*) FILTER (WHERE note LIKE 'the row existed%') AS noted_existing,
	   count(*) FILTER (WHERE status = 'Synced') AS synced
  FROM eventstream.sync_log WHERE update_log_id BETWEEN 15 AND 40 AND id > 20;

-- Updates (the four-key diff, child rows) and Deletes, and the cases where
-- the row is not here.
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://p.invalid', 'public.a_line', 'a_line', 'Approved');
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', '[
  {"id": 101, "update_type": "Create", "ref_table": "public.a_item", "docname": "D1",
   "data": {"code": "D1", "qty": 1, "public.a_line": [{"item": "D1", "n": 1, "what": "one"}, {"item": "D1", "n": 2, "what": "two"}]}},
  {"id": 102, "update_type": "Update", "ref_table": "public.a_item", "docname": "D1",
   "data": {"changed": {"qty": 5}, "added": {"public.a_line": [{"item": "D1", "n": 3, "what": "three"}]},
			"row_changed": {"public.a_line": [{"item": "D1", "n": 2, "what": "TWO"}]},
			"removed": {"public.a_line": ["[\"D1\",1]", "[\"D1\",9]"]}}},
  {"id": 103, "update_type": "Update", "ref_table": "public.a_item", "docname": "nope",
   "data": {"changed": {"qty": 1}, "added": {}, "row_changed": {}, "removed": {}}},
  {"id": 104, "update_type": "Delete", "ref_table": "public.a_item", "docname": "I40", "data": null},
  {"id": 105, "update_type": "Delete", "ref_table": "public.a_item", "docname": "I40", "data": null},
  {"id": 106, "update_type": "Create", "ref_table": "public.unknown", "docname": "x", "data": {}},
  {"id": 107, "update_type": "Frobnicate", "ref_table": "public.a_item", "docname": "D1", "data": {}}
]', NULL, false) AS processed_failed;
SELECT * FROM a_item WHERE code = 'D1';
SELECT * FROM a_line ORDER BY n;
SELECT update_log_id, update_type, status, docname, error, note FROM eventstream.sync_log WHERE update_log_id > 100 ORDER BY id;

-- A run of Updates that set columns only is one statement too; one of
-- them is for a row that is not here, so the run goes row by row.
CREATE FUNCTION updates(first int, last int, missing int DEFAULT 0) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', 1000 + g, 'update_type', 'Update', 'ref_table', 'public.a_item',
										'docname', CASE WHEN g = missing THEN 'gone' ELSE 'I' || g END,
										'data', jsonb_build_object('changed', jsonb_build_object('qty', g * 100),
																   'added', '{}'::jsonb, 'row_changed', '{}'::jsonb,
																   'removed', '{}'::jsonb)) ORDER BY g)
	  FROM generate_series(first, last) g
$$;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', updates(21, 39, 30), NULL, false) AS processed_failed;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', updates(21, 39), NULL, false) AS processed_failed;
SELECT count(*) FILTER (WHERE qty = substr(code, 2)::int * 100) AS updated FROM a_item WHERE code ~ '^I[0-9]+$';
SELECT update_log_id, status, docname, error FROM eventstream.sync_log
 WHERE update_log_id > 1000 AND status = 'Failed' ORDER BY id;

-- The writes run as the subscriber: without its privilege, they fail.
REVOKE INSERT ON a_item FROM es_applier;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', creates(41, 41), NULL, false) AS processed_failed;
SELECT error FROM eventstream.sync_log WHERE update_log_id = 41;
GRANT INSERT ON a_item TO es_applier;

-- resync applies a Failed entry again as it was received.
ALTER TABLE a_item DROP CONSTRAINT a_item_qty_check;
SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE status = 'Failed' AND docname = 'I7';
SELECT qty FROM a_item WHERE code = 'I7';
SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE docname = 'I7';
SELECT eventstream.resync(-1);

-- Query parameters sent to producers are percent-encoded byte by byte.
SELECT eventstream._urlencode('v1/1/2:3:/4 é&x=1~_.-') AS encoded;

-- A run of Creates into a table with no triggers, row security or stored
-- generated columns goes straight into the heap (as COPY does), with the
-- values converted as jsonb_populate_record converts them, defaults
-- computed and constraints checked as the subscriber.
CREATE SEQUENCE a_plain_seq;
CREATE TABLE a_plain (id int PRIMARY KEY, label varchar(8) NOT NULL, amount numeric CHECK (amount >= 0),
					  ok boolean, doc jsonb, raw text, seq bigint DEFAULT nextval('a_plain_seq'),
					  made_by name DEFAULT current_user);
GRANT SELECT, INSERT, UPDATE, DELETE ON a_plain TO es_applier;
GRANT USAGE ON a_plain_seq TO es_applier;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://p.invalid', 'public.a_plain', 'a_plain', 'Approved');
CREATE FUNCTION plains(first int, last int, bad text DEFAULT NULL, bad_at int DEFAULT 0) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', 5000 + g, 'update_type', 'Create', 'ref_table', 'public.a_plain',
										'docname', g::text,
										'data', jsonb_build_object('id', g,
																   'label', CASE WHEN g = bad_at AND bad = 'label' THEN repeat('x', 9) ELSE 'p' || g END,
																   'amount', CASE WHEN g = bad_at AND bad = 'amount' THEN -1.5 ELSE g + 0.25 END,
																   'ok', g % 2 = 0,
																   'doc', jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g)),
																   'raw', CASE WHEN g % 3 = 0 THEN jsonb_build_object('k', g) ELSE 'null'::jsonb END),
										'origin', '00000000-0000-0000-0000-0000000000f1') ORDER BY g)
	  FROM generate_series(first, last) g
$$;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plains(1, 20), NULL, false) AS processed_failed;
SELECT count(*) AS rows, sum(amount) AS amount, count(*) FILTER (WHERE ok) AS ok,
	   count(*) FILTER (WHERE doc = jsonb_build_object('g', id, 'tags', jsonb_build_array('a', id))) AS docs,
	   count(raw) AS raws, min(raw) AS a_raw, count(DISTINCT seq) AS seqs, min(made_by) AS made_by
  FROM a_plain;
-- A CHECK, a NOT NULL and a typmod broken, one row each: that run goes row by
-- row, and only that row fails.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plains(21, 40, 'amount', 25), NULL, false) AS processed_failed;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plains(41, 60, 'label', 50), NULL, false) AS processed_failed;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier',
	(SELECT jsonb_agg(CASE WHEN (u->>'docname')::int = 70 THEN jsonb_set(u, '{data,label}', 'null') ELSE u END)
	   FROM jsonb_array_elements(plains(61, 80)) u), NULL, false) AS processed_failed;
SELECT docname, split_part(error, E'\n', 1) AS error FROM eventstream.sync_log
 WHERE ref_table = 'public.a_plain' AND status = 'Failed' ORDER BY id;
SELECT count(*) AS rows FROM a_plain;
-- Over rows that are there: they take the producer's values, noted.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier',
	(SELECT jsonb_agg(jsonb_set(u, '{data,amount}', '1000')) FROM jsonb_array_elements(plains(11, 30)) u),
	NULL, false) AS processed_failed;
SELECT count(*) FILTER (WHERE amount = 1000) AS updated, count(*) AS rows FROM a_plain;
SELECT count(*) AS noted FROM eventstream.sync_log
 WHERE ref_table = 'public.a_plain' AND note LIKE 'the row existed%';
-- Defaults are the subscriber's: without USAGE on the sequence it fails,
-- and the subscriber's privilege on the table is needed (column privileges
-- do: the statement takes over then).
REVOKE USAGE ON a_plain_seq FROM es_applier;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plains(81, 100), NULL, false) AS processed_failed;
SELECT DISTINCT error FROM eventstream.sync_log WHERE ref_table = 'public.a_plain' AND docname::int BETWEEN 81 AND 100;
GRANT USAGE ON a_plain_seq TO es_applier;
REVOKE INSERT ON a_plain FROM es_applier;
GRANT INSERT (id, label, amount, ok, doc, raw, seq, made_by) ON a_plain TO es_applier;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plains(101, 120), NULL, false) AS processed_failed;
SELECT count(*) AS rows FROM a_plain WHERE id BETWEEN 101 AND 120;

-- Runs of Updates and Deletes of such a table are applied straight too,
-- each row found by its key and changed as logical replication does.
CREATE FUNCTION plain_changes(kind text, first int, last int, amount text DEFAULT NULL) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', 9000 + g, 'update_type', kind, 'ref_table', 'public.a_plain',
										'docname', g::text,
										'data', CASE WHEN kind = 'Delete' THEN 'null'::jsonb
													 ELSE jsonb_build_object('changed', jsonb_build_object('amount', coalesce(amount::numeric, g * 2),
																										   'doc', jsonb_build_object('u', g)),
																			 'added', '{}'::jsonb, 'row_changed', '{}'::jsonb, 'removed', '{}'::jsonb) END)
					 ORDER BY g)
	  FROM generate_series(first, last) g
$$;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plain_changes('Update', 1, 20), NULL, false) AS processed_failed;
SELECT count(*) FILTER (WHERE amount = id * 2 AND doc = jsonb_build_object('u', id)) AS updated,
	   count(*) FILTER (WHERE label = 'p' || id) AS labels_kept FROM a_plain WHERE id <= 20;
-- One row is not here (50 failed above): the run goes row by row.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plain_changes('Update', 41, 60), NULL, false) AS processed_failed;
SELECT docname, status, error FROM eventstream.sync_log WHERE update_log_id BETWEEN 9041 AND 9060 AND status <> 'Synced';
SELECT count(*) FILTER (WHERE amount = id * 2) AS updated FROM a_plain WHERE id BETWEEN 41 AND 60;
-- A CHECK broken by every row: each fails, none is changed.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plain_changes('Update', 61, 80, '-1'), NULL, false) AS processed_failed;
SELECT count(*) FILTER (WHERE amount < 0) AS negative FROM a_plain;
-- Without UPDATE the subscriber's statements fail as before.
REVOKE UPDATE ON a_plain FROM es_applier;
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plain_changes('Update', 101, 120), NULL, false) AS processed_failed;
SELECT DISTINCT error FROM eventstream.sync_log WHERE update_log_id BETWEEN 9101 AND 9120;
GRANT UPDATE ON a_plain TO es_applier;
-- Deletes: rows that are not here are noted, the others deleted.
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier', plain_changes('Delete', 41, 60), NULL, false) AS processed_failed;
SELECT count(*) AS left_between_41_and_60 FROM a_plain WHERE id BETWEEN 41 AND 60;
SELECT docname, note FROM eventstream.sync_log WHERE update_log_id BETWEEN 9041 AND 9060 AND update_type = 'Delete' AND note IS NOT NULL;
SELECT count(*) AS deleted_logged FROM eventstream.sync_log
 WHERE update_log_id BETWEEN 9041 AND 9060 AND update_type = 'Delete' AND status = 'Synced' AND note IS NULL;

-- A partition takes its rows through a statement, which checks the
-- partition's bounds (the straight path would not).
CREATE TABLE a_parted (id int, label varchar(8), amount numeric, ok boolean, doc jsonb, raw text) PARTITION BY RANGE (id);
CREATE TABLE a_part PARTITION OF a_parted (PRIMARY KEY (id)) FOR VALUES FROM (1) TO (16);
GRANT SELECT, INSERT, UPDATE, DELETE ON a_part TO es_applier;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://p.invalid', 'public.a_part', 'a_part', 'Approved');
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier',
	(SELECT jsonb_agg(jsonb_set(u, '{ref_table}', '"public.a_part"')) FROM jsonb_array_elements(plains(1, 20)) u),
	NULL, false) AS processed_failed;
SELECT count(*) AS rows, max(id) AS highest FROM a_part;
SELECT DISTINCT split_part(error, E'\n', 1) AS error FROM eventstream.sync_log WHERE ref_table = 'public.a_part' AND status = 'Failed';
-- A cancel (here statement_timeout) while updates are applied stops the
-- apply: it is not an update that failed.
CREATE TABLE a_slow (id int PRIMARY KEY, label varchar(8), amount numeric, ok boolean, doc jsonb, raw text);
GRANT SELECT, INSERT, UPDATE, DELETE ON a_slow TO es_applier;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://p.invalid', 'public.a_slow', 'a_slow', 'Approved');
CREATE FUNCTION a_slow() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN PERFORM pg_sleep(5); RETURN NEW; END$$;
CREATE TRIGGER a_slow BEFORE INSERT ON a_slow FOR EACH ROW EXECUTE FUNCTION a_slow();
ALTER TABLE a_slow ENABLE ALWAYS TRIGGER a_slow;	-- an ordinary one does not fire on apply
SET statement_timeout = '200ms';
SELECT eventstream._apply_updates('http://p.invalid', 'es_applier',
	(SELECT jsonb_agg(jsonb_set(u, '{ref_table}', '"public.a_slow"')) FROM jsonb_array_elements(plains(101, 102)) u),
	NULL, false) AS processed_failed;
RESET statement_timeout;
SELECT count(*) AS logged_after_the_cancel FROM eventstream.sync_log WHERE ref_table = 'public.a_slow';
DROP TABLE a_slow;

-- The documents a page's Updates are for, that its Creates do not make
-- (_missing_for looks those up before the page is applied): each once.
SELECT * FROM eventstream._page_updated('{"updates": [
  {"update_type": "Update", "ref_table": "public.a", "docname": "1", "data": {"changed": {}}},
  {"update_type": "Create", "ref_table": "public.a", "docname": "1", "data": {"id": 1}},
  {"update_type": "Update", "ref_table": "public.a", "docname": "2", "data": {"changed": {}}},
  {"update_type": "Update", "ref_table": "public.a", "docname": "2", "data": {"changed": {}}},
  {"update_type": "Update", "ref_table": "public.b", "docname": "1", "data": {"changed": {}}},
  {"update_type": "Update", "ref_table": "public.a", "docname": "3", "data": null},
  {"update_type": "Delete", "ref_table": "public.a", "docname": "4", "data": null},
  "not an update"]}');
SELECT count(*) FROM eventstream._page_updated('{"documents": []}');
-- What _missing_for decides its quick paths on: whether there is an Update,
-- whether a table of this extension is named, the tables named (each once).
SELECT * FROM eventstream._page_facts('{"updates": [
  {"update_type": "Create", "ref_table": "public.a", "docname": "1", "data": {}},
  {"update_type": "Create", "ref_table": "public.b", "docname": "1", "data": {}},
  {"update_type": "Delete", "ref_table": "public.a", "docname": "2", "data": null}]}');
SELECT * FROM eventstream._page_facts('{"updates": [
  {"update_type": "Update", "ref_table": "\"eventstream\".dynamic_link", "docname": "1", "data": {}}]}');
SELECT * FROM eventstream._page_facts('{"documents": []}');

-- Pages are read into jsonb by a quick reader of their own (falling back on
-- jsonb_in for what it does not know): the same jsonb as jsonb_in makes, and
-- the same error for what is not JSON.
CREATE TEMP TABLE json_texts (t text);
INSERT INTO json_texts VALUES ('{}'), ('[]'), (' { "a" : 1 , "b":[1,2,{"c":null}] } '),
  ('{"a": 1, "a": 2}'), ('{"b": 1, "a": 2, "aa": 3, "": 4}'),
  ('[0, -0, 12, -12, 1.50, 0.000, 123456789012345678, -999999999999999999, 1234567890123456789,
    -9223372036854775808, 1e5, 1E-3, 2.5e+10, -1.5E-7]'),
  ('["a\"b", "\\", "\/", "\b\f\n\r\t", "é ü", "x\u0041y", "\ud83d\ude00", ""]'),
  ('{"\u00e9\u20AC": "\u0001\u001f\u00e9\u20ac\uD83D\uDE00x"}'),
  ('[true, false, null]'), ('{"k\"ey": {"n": {"d": [[[]]]}}}'),
  (repeat('[', 70) || repeat(']', 70)),
  ('{"cursor": "v1/4", "more": true, "updates": [{"id": 1, "data": {"id": 1, "v": "v1", "n": 1},
    "docname": "1", "ref_table": "public.plain", "update_type": "Create"}]}');
SELECT left(regexp_replace(t, E'\\s+', ' ', 'g'), 40) AS json, eventstream._read_json(t) = t::jsonb AS same,
       eventstream._read_json(t)::text = t::jsonb::text AS same_text
  FROM json_texts;
SELECT eventstream._read_json('"a scalar"'), eventstream._read_json('5');
SELECT eventstream._read_json('[1,]');
SELECT eventstream._read_json('{"a"}');
SELECT eventstream._read_json('[01]');
SELECT eventstream._read_json('[1.]');
SELECT eventstream._read_json('[-]');
SELECT eventstream._read_json('[truex]');
SELECT eventstream._read_json('{"a": 1}x');
SELECT eventstream._read_json('["\x"]');
SELECT eventstream._read_json('["\u0000"]');
SELECT eventstream._read_json('["\ud83d"]');
SELECT eventstream._read_json('["\ud83dx"]');
SELECT eventstream._read_json('["\ude00"]');
SELECT eventstream._read_json('["\u00g1"]');
SELECT eventstream._read_json('{"a": 1,');
SELECT eventstream._read_json(E'["a\tb"]');
-- Reading is bounded: a page that would take more than four times
-- eventstream.client_max_response_size to read is refused, whatever its
-- shape, by the quick reading and before jsonb_in (a nesting deeper than
-- the quick reading goes) alike.
SET eventstream.client_max_response_size = '64kB';
SELECT jsonb_array_length(eventstream._read_json('[' || repeat('1,', 1000) || '1]')) AS small_enough;
SELECT eventstream._read_json('[' || repeat('1,', 30000) || '1]');
SELECT eventstream._read_json('[' || repeat('[],', 20000) || '[]]');
SELECT eventstream._read_json('[' || repeat('[', 70) || repeat(']', 70) || ', ' || repeat('1,', 30000) || '1]');
SELECT eventstream._read_json('[' || repeat('[', 70) || repeat(']', 70) || ', ' || repeat('1,', 30000) || '1');
RESET eventstream.client_max_response_size;

-- producer_status tells how a producer is doing: the lag counts while pulls
-- fail or nothing is heard, and failed updates ask for attention.  (In a
-- transaction the worker never sees, with now() fixed.)
BEGIN;
INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor, created_at)
	VALUES ('http://q.invalid', 'k', 's', 'es_applier', '00000000-0000-0000-0000-0000000000f2', 'v1/1/1:1:/1',
			now() - interval '10 minutes');
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://q.invalid', 'public.a_item', 'a_item', 'Approved');
CREATE TEMP VIEW q_status AS
	SELECT state, lag, updates_received_not_applied AS received, more_waiting_on_producer AS more, failed_now, attention
	  FROM eventstream.producer_status WHERE producer_url = 'http://q.invalid';
-- Never heard from in ten minutes: stalled, lagging since it was added.
SELECT * FROM q_status;
-- Caught up at its last success, a few seconds ago: streaming, no lag.
UPDATE eventstream.producer SET last_success_at = now() - interval '5 seconds', last_pull_at = now() - interval '5 seconds',
	   behind = false WHERE producer_url = 'http://q.invalid';
SELECT * FROM q_status;
-- Pulls fail since: failing, and the lag is the time since that success.
UPDATE eventstream.producer SET last_error = 'could not reach http://q.invalid: Couldn''t connect to server',
	   last_error_at = now() - interval '1 second' WHERE producer_url = 'http://q.invalid';
SELECT * FROM q_status;
-- Silent for longer than a long-poll lasts, with no error: stalled.
UPDATE eventstream.producer SET last_error = NULL, last_error_at = NULL,
	   last_success_at = now() - interval '2 minutes' WHERE producer_url = 'http://q.invalid';
SELECT * FROM q_status;
-- Behind, still pulling: the age of the newest update received.
UPDATE eventstream.producer SET last_success_at = now(), behind = true, last_update_at = now() - interval '30 seconds'
 WHERE producer_url = 'http://q.invalid';
SELECT * FROM q_status;
-- A failed update asks for attention while the pulls go well.
UPDATE eventstream.producer SET behind = false WHERE producer_url = 'http://q.invalid';
SELECT eventstream._apply_updates('http://q.invalid', 'es_applier', '[{"id": 1, "update_type": "Update",
  "ref_table": "public.a_item", "docname": "Q-gone",
  "data": {"changed": {"qty": 1}, "added": {}, "row_changed": {}, "removed": {}}}]', NULL, false) AS processed_failed;
SELECT * FROM q_status;
UPDATE eventstream.producer SET enabled = false WHERE producer_url = 'http://q.invalid';
SELECT state, lag FROM q_status;
ROLLBACK;
