-- TRUNCATE: captured in the truncating transaction (one Truncate per
-- document table; a child table truncated alone logs the Updates a DELETE
-- of its rows would), served in commit order, to conditioned
-- subscriptions too; applied by emptying the local table.
\set SHOW_CONTEXT never
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS eventstream;
RESET client_min_messages;
SET timezone = 'UTC';

CREATE TABLE t_doc (id int PRIMARY KEY, v text);
CREATE TABLE t_other (id int PRIMARY KEY);
CREATE TABLE t_inv (no text, yr int, who text, PRIMARY KEY (no, yr));
CREATE TABLE t_line (no text, yr int, pos int, what text, PRIMARY KEY (no, yr, pos),
					 CONSTRAINT t_line_inv FOREIGN KEY (yr, no) REFERENCES t_inv (yr, no) ON DELETE CASCADE);
CREATE TABLE t_pending (id int PRIMARY KEY);
CREATE ROLE es_trunc_sub;
GRANT SELECT ON t_doc, t_other, t_inv, t_line, t_pending TO es_trunc_sub;
SELECT eventstream.add_child_table('t_inv', 't_line');

CREATE FUNCTION t_log() RETURNS TABLE (update_type text, ref_table text, docname text, data jsonb, origin uuid)
LANGUAGE sql AS $$
	SELECT update_type, ref_table, docname, data, origin FROM eventstream.update_log
	 WHERE ref_table LIKE 'public.t\_%' ORDER BY id
$$;
CREATE FUNCTION t_clear() RETURNS void LANGUAGE sql AS $$
	DELETE FROM eventstream.update_log WHERE ref_table LIKE 'public.t\_%'
$$;

SELECT r->'tables' FROM eventstream._register_consumer('http://trunc-a:8000/', '00000000-0000-0000-0000-0000000000aa',
													   'key-t', 'es_trunc_sub',
													   '["t_doc", "t_other", "t_inv", "t_pending"]') r;
SELECT eventstream.approve('http://trunc-a:8000', 'public.t_doc');
SELECT eventstream.approve('http://trunc-a:8000', 'public.t_other');
SELECT eventstream.approve('http://trunc-a:8000', 'public.t_inv');

-- The triggers: AFTER on every captured table, BEFORE on the child.
SELECT tgrelid::regclass AS tbl, tgname, tgenabled,
	   regexp_replace(pg_get_triggerdef(oid), '^.*? (BEFORE|AFTER) ', '\1 ') AS def
  FROM pg_trigger WHERE tgname LIKE 'eventstream_truncate%' AND tgrelid::regclass::text LIKE 't\_%' ORDER BY 1, 2;

-- A document table: one Truncate, in statement order with the rows'
-- changes of the same transaction.
BEGIN;
INSERT INTO t_doc VALUES (1, 'a'), (2, 'b');
TRUNCATE t_doc;
INSERT INTO t_doc VALUES (3, 'c');
COMMIT;
SELECT * FROM t_log();
SELECT count(DISTINCT txid) AS transactions FROM eventstream.update_log WHERE ref_table = 'public.t_doc';
SELECT t_clear();

-- Not subscribed (pending): nothing.
INSERT INTO t_pending VALUES (1);
TRUNCATE t_pending;
SELECT count(*) AS logs FROM t_log();

-- Several tables in one statement: a Truncate each.
TRUNCATE t_doc, t_other;
SELECT * FROM t_log();
SELECT t_clear();

-- A child table alone: its parents' documents lose their rows, one
-- Update each with every row "removed", as a DELETE of each would log;
-- parents without rows log nothing.
INSERT INTO t_inv VALUES ('A', 2026, 'x'), ('B', 2025, 'y'), ('C', 2026, 'z');
INSERT INTO t_line VALUES ('A', 2026, 1, 'one'), ('A', 2026, 2, 'two'), ('B', 2025, 1, 'uno');
SELECT t_clear();
TRUNCATE t_line;
SELECT * FROM t_log();
SELECT t_clear();

-- Many rows, read a thousand at a time: one Update per parent all the same.
INSERT INTO t_line SELECT p.no, p.yr, g, 'x' FROM generate_series(1, 1200) g, (VALUES ('A', 2026), ('B', 2025)) p(no, yr);
SELECT t_clear();
TRUNCATE t_line;
SELECT docname, jsonb_array_length(data->'removed'->'public.t_line') AS removed,
	   data->'removed'->'public.t_line'->>-1 AS last
  FROM t_log();
SELECT t_clear();

-- The parent truncated with it (CASCADE, or both named, in either order):
-- its Truncate says it all.
INSERT INTO t_line VALUES ('A', 2026, 1, 'one'), ('B', 2025, 1, 'uno');
SELECT t_clear();
TRUNCATE t_inv CASCADE;
SELECT * FROM t_log();
SELECT t_clear();
INSERT INTO t_inv VALUES ('A', 2026, 'x');
INSERT INTO t_line VALUES ('A', 2026, 1, 'one');
SELECT t_clear();
TRUNCATE t_line, t_inv;
SELECT * FROM t_log();
SELECT t_clear();

-- A truncation rolled back to a savepoint logs nothing; the one after it
-- logs once.
INSERT INTO t_inv VALUES ('A', 2026, 'x');
INSERT INTO t_line VALUES ('A', 2026, 1, 'one');
SELECT t_clear();
BEGIN;
SAVEPOINT s;
TRUNCATE t_line;
ROLLBACK TO s;
TRUNCATE t_line;
COMMIT;
SELECT * FROM t_log();
SELECT t_clear();

-- A role that may only truncate (not read the tables, nor write the log;
-- row-level security hiding every row from it) is captured all the same.
CREATE ROLE es_trunc_app;
GRANT TRUNCATE ON t_doc, t_line TO es_trunc_app;
ALTER TABLE t_line ENABLE ROW LEVEL SECURITY;
INSERT INTO t_inv VALUES ('B', 2025, 'y');
INSERT INTO t_line VALUES ('A', 2026, 1, 'one'), ('B', 2025, 1, 'uno');
SELECT t_clear();
SET ROLE es_trunc_app;
TRUNCATE t_line;
TRUNCATE t_doc;
RESET ROLE;
ALTER TABLE t_line DISABLE ROW LEVEL SECURITY;
SELECT * FROM t_log();
SELECT t_clear();

-- Applied from another site: the Truncate carries its origin.
BEGIN;
SELECT eventstream._set_origin('00000000-0000-0000-0000-0000000000bb');
TRUNCATE t_other;
COMMIT;
SELECT * FROM t_log();

-- Served as it is, in order, with "docname" "" and "data" null.
CREATE TABLE t_cursor (cur text);
INSERT INTO t_cursor SELECT r->>'cursor' FROM eventstream._register_consumer('http://trunc-a:8000/',
		'00000000-0000-0000-0000-0000000000aa', 'key-t', 'es_trunc_sub', '["t_doc", "t_other", "t_inv"]') r;
CREATE FUNCTION t_pull() RETURNS TABLE (update_type text, ref_table text, docname text, data jsonb, origin text)
LANGUAGE plpgsql AS $$
DECLARE
	r jsonb := eventstream._pull('http://trunc-a:8000', (SELECT cur FROM t_cursor), 100);
BEGIN
	UPDATE t_cursor SET cur = r->>'cursor';
	RETURN QUERY SELECT u->>'update_type', u->>'ref_table', u->>'docname', u->'data', u->>'origin'
				   FROM jsonb_array_elements(r->'updates') u
				  WHERE u->>'ref_table' LIKE 'public.t\_%';
END $$;
SELECT * FROM t_pull();
INSERT INTO t_doc VALUES (10, 'x');
TRUNCATE t_doc;
INSERT INTO t_doc VALUES (11, 'y');
SELECT * FROM t_pull();

-- A conditioned subscription gets the Truncate whatever the condition,
-- and holds none of the table's documents after it: a document that
-- matches again later comes whole.
SELECT r->'tables'->0->>'condition' AS condition
  FROM eventstream._register_consumer('http://trunc-a:8000/', '00000000-0000-0000-0000-0000000000aa', 'key-t',
									  'es_trunc_sub', '[{"ref_table": "t_doc", "condition": "doc.v <> ''hidden''"}, "t_other", "t_inv"]') r;
SELECT * FROM t_pull();
INSERT INTO t_doc VALUES (20, 'shown'), (21, 'hidden');
SELECT * FROM t_pull();
SELECT docname, held FROM eventstream.consumer_document WHERE ref_table = 'public.t_doc' ORDER BY seq;
TRUNCATE t_doc;
INSERT INTO t_doc VALUES (20, 'hidden');
SELECT * FROM t_pull();
SELECT count(*) FILTER (WHERE eventstream._holds('http://trunc-a:8000', 'public.t_doc', '20', NULL)) AS holds_20
  FROM (VALUES (1)) x;
UPDATE t_doc SET v = 'shown' WHERE id = 20;
SELECT * FROM t_pull();

-- Unsubscribed: the triggers go.
SELECT jsonb_array_length(r->'tables') AS tables FROM eventstream._register_consumer('http://trunc-a:8000/',
		'00000000-0000-0000-0000-0000000000aa', 'key-t', 'es_trunc_sub', '[]') r;
SELECT count(*) AS truncate_triggers FROM pg_trigger
 WHERE tgname LIKE 'eventstream_truncate%' AND tgrelid::regclass::text LIKE 't\_%';

-- The apply, without a producer.  A Truncate empties the local table, in
-- order with the updates around it: a run of Creates stops at it.
CREATE ROLE es_trunc_applier;
CREATE TABLE t_local (code text PRIMARY KEY, qty int);
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON t_local TO es_trunc_applier;
INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor)
	VALUES ('http://trunc.invalid', 'k', 's', 'es_trunc_applier', '00000000-0000-0000-0000-0000000000f7', 'v1/1/1:1:/1');
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://trunc.invalid', 'public.t_local', 't_local', 'Approved');
CREATE FUNCTION t_creates(first int, last int) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', g, 'update_type', 'Create', 'ref_table', 'public.t_local',
										'docname', 'L' || g, 'data', jsonb_build_object('code', 'L' || g, 'qty', g)) ORDER BY g)
	  FROM generate_series(first, last) g
$$;
CREATE FUNCTION t_truncate(id int) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_build_array(jsonb_build_object('id', id, 'update_type', 'Truncate', 'ref_table', 'public.t_local',
												'docname', '', 'data', NULL))
$$;
INSERT INTO t_local VALUES ('mine', 0);
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier',
								  t_creates(1, 20) || t_truncate(21) || t_creates(22, 41), NULL, false) AS processed_failed;
SELECT count(*) AS rows, min(qty), max(qty) FROM t_local;
SELECT update_type, status, docname, remote_docname, error, note FROM eventstream.sync_log
 WHERE producer_url = 'http://trunc.invalid' AND update_type = 'Truncate';

-- Referred to by other tables: every row deleted, ON DELETE CASCADE
-- followed; a restricting reference fails the Truncate (rolled back,
-- resyncable), and once it is gone the resync empties the table.
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier', t_creates(22, 41), NULL, false) AS processed_failed;
CREATE TABLE t_kid (code text REFERENCES t_local ON DELETE CASCADE, n int, PRIMARY KEY (code, n));
CREATE TABLE t_ref (id int PRIMARY KEY, code text REFERENCES t_local);
GRANT SELECT, INSERT, UPDATE, DELETE ON t_kid, t_ref TO es_trunc_applier;
INSERT INTO t_kid VALUES ('L22', 1), ('L23', 1);
INSERT INTO t_ref VALUES (1, 'L22');
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier', t_truncate(50), NULL, false) AS processed_failed;
SELECT (SELECT count(*) FROM t_local) AS rows, (SELECT count(*) FROM t_kid) AS kids;
SELECT status, error FROM eventstream.sync_log WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 50;
DELETE FROM t_ref;
SELECT eventstream.resync((SELECT id FROM eventstream.sync_log WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 50));
SELECT (SELECT count(*) FROM t_local) AS rows, (SELECT count(*) FROM t_kid) AS kids;
SELECT status, note FROM eventstream.sync_log WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 50;

-- A Failed Truncate is not resynced over a later update of its table.
INSERT INTO t_local VALUES ('L1', 1);
INSERT INTO t_ref VALUES (1, 'L1');
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier',
								  t_truncate(60) || t_creates(61, 61), NULL, false) AS processed_failed;
DO $$
DECLARE
	hint text;
BEGIN
	PERFORM eventstream.resync((SELECT id FROM eventstream.sync_log
								 WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 60));
EXCEPTION WHEN object_not_in_prerequisite_state THEN
	GET STACKED DIAGNOSTICS hint = PG_EXCEPTION_HINT;
	RAISE NOTICE 'refused; hint: %', hint;
END $$;
DELETE FROM t_ref;

-- Without the TRUNCATE privilege the rows are deleted.
REVOKE TRUNCATE ON t_local FROM es_trunc_applier;
DROP TABLE t_ref, t_kid;
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier', t_truncate(70), NULL, false) AS processed_failed;
SELECT count(*) AS rows FROM t_local;
SELECT status, note FROM eventstream.sync_log WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 70;

-- A mapped subscription: the mapping's local table is emptied.
CREATE TABLE t_mapped (name text PRIMARY KEY, body text);
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON t_mapped TO es_trunc_applier;
SELECT eventstream.create_mapping('t_mapped_from_note', 't_mapped', 'public.t_note');
SELECT eventstream.map_field('t_mapped_from_note', 'body', 'content');
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status, mapping)
	VALUES ('http://trunc.invalid', 'public.t_note', 't_mapped', 'Approved', 't_mapped_from_note');
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier', '[
  {"id": 80, "update_type": "Create", "ref_table": "public.t_note", "docname": "N1", "data": {"name": "N1", "content": "c"}},
  {"id": 81, "update_type": "Create", "ref_table": "public.t_note", "docname": "N2", "data": {"name": "N2", "content": "d"}}
]', NULL, false) AS processed_failed;
SELECT * FROM t_mapped ORDER BY 1;
SELECT eventstream._apply_updates('http://trunc.invalid', 'es_trunc_applier', '[
  {"id": 82, "update_type": "Truncate", "ref_table": "public.t_note", "docname": "", "data": null}
]', NULL, false) AS processed_failed;
SELECT count(*) AS rows FROM t_mapped;
SELECT ref_table, remote_ref_table, status, note FROM eventstream.sync_log
 WHERE producer_url = 'http://trunc.invalid' AND update_log_id = 82;

-- A partitioned document table: the root carries the BEFORE trigger too
-- (it notes the statement), every leaf partition, sub-partitions too,
-- eventstream_truncate_part with the root's name.
CREATE TABLE t_meas (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE t_meas_eu PARTITION OF t_meas FOR VALUES IN ('eu');
CREATE TABLE t_meas_us PARTITION OF t_meas FOR VALUES IN ('us') PARTITION BY HASH (id);
CREATE TABLE t_meas_us_0 PARTITION OF t_meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE t_meas_us_1 PARTITION OF t_meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 1);
GRANT SELECT ON t_meas TO es_trunc_sub;
CREATE FUNCTION t_meas_triggers() RETURNS TABLE (tbl regclass, tgname name, tgenabled "char", def text)
LANGUAGE sql AS $$
	SELECT tgrelid::regclass, tgname, tgenabled, regexp_replace(pg_get_triggerdef(oid), '^.*? (BEFORE|AFTER) ', '\1 ')
	  FROM pg_trigger WHERE tgname LIKE 'eventstream_truncate%' AND tgrelid::regclass::text LIKE 't\_meas%'
	 ORDER BY tgrelid::regclass::text, tgname
$$;
SELECT jsonb_array_length(r->'tables') AS tables FROM eventstream._register_consumer('http://trunc-p:8000/',
		'00000000-0000-0000-0000-0000000000ab', 'key-p', 'es_trunc_sub', '["t_meas"]') r;
SELECT eventstream.approve('http://trunc-p:8000', 'public.t_meas');
SELECT * FROM t_meas_triggers();
INSERT INTO t_meas VALUES (1, 'eu', 'a'), (2, 'eu', 'b'), (1, 'us', 'c'), (2, 'us', 'd'), (3, 'us', 'e');
SELECT t_clear();

-- A partition: a Delete of each of its rows, under the root's name.
TRUNCATE t_meas_eu;
SELECT * FROM t_log();
SELECT t_clear();

-- A sub-partitioned partition: its leaves' rows.
TRUNCATE t_meas_us;
SELECT update_type, ref_table, docname FROM t_log() ORDER BY docname;
SELECT t_clear();

-- The root: one Truncate, nothing for its partitions.
INSERT INTO t_meas VALUES (1, 'eu', 'a'), (1, 'us', 'c'), (2, 'us', 'd');
SELECT t_clear();
TRUNCATE t_meas;
SELECT * FROM t_log();
SELECT t_clear();

-- A partition named before its root: its Deletes, then the Truncate.
INSERT INTO t_meas VALUES (1, 'eu', 'a'), (1, 'us', 'c');
SELECT t_clear();
TRUNCATE t_meas_eu, t_meas;
SELECT update_type, ref_table, docname FROM t_log();
SELECT t_clear();

-- The root's TRUNCATE failing in a savepoint leaves nothing behind: a
-- partition truncated after it in the transaction logs its rows.
INSERT INTO t_meas VALUES (1, 'eu', 'a'), (1, 'us', 'c');
CREATE FUNCTION t_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused'; END $$;
CREATE TRIGGER t_refuse BEFORE TRUNCATE ON t_meas_us_1 FOR EACH STATEMENT EXECUTE FUNCTION t_refuse();
SELECT t_clear();
BEGIN;
SAVEPOINT s;
TRUNCATE t_meas;
ROLLBACK TO s;
DROP TRIGGER t_refuse ON t_meas_us_1;
TRUNCATE t_meas_eu;
COMMIT;
SELECT update_type, ref_table, docname FROM t_log();
SELECT t_clear();

-- Partitions created or attached later (with another column order) get
-- the trigger; a detached one loses it.
CREATE TABLE t_meas_asia PARTITION OF t_meas FOR VALUES IN ('asia');
CREATE TABLE t_meas_af (v text, region text NOT NULL, id int NOT NULL);
ALTER TABLE t_meas ATTACH PARTITION t_meas_af FOR VALUES IN ('af');
CREATE TABLE t_meas_eu_old PARTITION OF t_meas FOR VALUES IN ('eu-old');
SELECT * FROM t_meas_triggers();
INSERT INTO t_meas VALUES (7, 'asia', 'y'), (8, 'af', 'z'), (9, 'eu-old', 'w');
SELECT t_clear();
TRUNCATE t_meas_asia, t_meas_af;
SELECT * FROM t_log();
SELECT t_clear();
ALTER TABLE t_meas DETACH PARTITION t_meas_eu_old;
SELECT tbl, tgname FROM t_meas_triggers() WHERE tbl = 't_meas_eu_old'::regclass;
TRUNCATE t_meas_eu_old;
SELECT count(*) AS logs FROM t_log();

-- A partitioned document table's child table truncated alone: the
-- Updates of its parents (the parent's rows are in its partitions).
CREATE TABLE t_pdoc (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);
CREATE TABLE t_pdoc_1 PARTITION OF t_pdoc FOR VALUES FROM (1) TO (100);
CREATE TABLE t_pline (doc int REFERENCES t_pdoc ON DELETE CASCADE, n int, PRIMARY KEY (doc, n));
-- A partitioned child table: each leaf partition carries the child
-- triggers, with its own foreign key; a partition truncated alone logs
-- the Updates of the parents of its rows.
CREATE TABLE t_pnote (id int PRIMARY KEY, v text);
CREATE TABLE t_ptag (note int, tag text, PRIMARY KEY (note, tag),
					 CONSTRAINT t_ptag_note FOREIGN KEY (note) REFERENCES t_pnote ON DELETE CASCADE) PARTITION BY LIST (tag);
CREATE TABLE t_ptag_red PARTITION OF t_ptag FOR VALUES IN ('red');
CREATE TABLE t_ptag_blue PARTITION OF t_ptag FOR VALUES IN ('blue');
GRANT SELECT ON t_pdoc, t_pline, t_pnote, t_ptag TO es_trunc_sub;
SELECT eventstream.add_child_table('t_pdoc', 't_pline');
SELECT eventstream.add_child_table('t_pnote', 't_ptag');
SELECT jsonb_array_length(r->'tables') AS tables FROM eventstream._register_consumer('http://trunc-p:8000/',
		'00000000-0000-0000-0000-0000000000ab', 'key-p', 'es_trunc_sub', '["t_meas", "t_pdoc", "t_pnote"]') r;
SELECT eventstream.approve('http://trunc-p:8000', 'public.t_pdoc');
SELECT eventstream.approve('http://trunc-p:8000', 'public.t_pnote');
CREATE TABLE t_ptag_green PARTITION OF t_ptag FOR VALUES IN ('green');
SELECT tgrelid::regclass AS tbl, tgname, regexp_replace(pg_get_triggerdef(oid), '^.*? (BEFORE|AFTER) TRUNCATE ON \S+ ', '')
  FROM pg_trigger WHERE tgname LIKE 'eventstream_truncate%' AND tgrelid::regclass::text ~ '^t_p(doc|line|note|tag)'
 ORDER BY tgrelid::regclass::text, tgname;
INSERT INTO t_pdoc VALUES (1, 'a'), (2, 'b');
INSERT INTO t_pline VALUES (1, 1), (1, 2);
INSERT INTO t_pnote VALUES (1, 'x'), (2, 'y');
INSERT INTO t_ptag VALUES (1, 'red'), (1, 'blue'), (2, 'red'), (2, 'green');
SELECT t_clear();
TRUNCATE t_pline;
SELECT update_type, ref_table, docname, data FROM t_log();
SELECT t_clear();
TRUNCATE t_ptag_red;
SELECT update_type, ref_table, docname, data->'removed' AS removed FROM t_log();
SELECT t_clear();
TRUNCATE t_ptag;
SELECT update_type, ref_table, docname, data->'removed' AS removed FROM t_log() ORDER BY docname;
SELECT t_clear();
INSERT INTO t_ptag VALUES (1, 'red');
SELECT t_clear();
TRUNCATE t_pnote CASCADE;
SELECT update_type, ref_table, docname FROM t_log();
SELECT t_clear();

-- Unsubscribed: every one goes.
SELECT eventstream.remove_consumer('http://trunc-p:8000');
SELECT count(*) AS truncate_triggers FROM pg_trigger
 WHERE tgname LIKE 'eventstream_truncate%' AND tgrelid::regclass::text LIKE 't\_%';
SELECT eventstream.remove_child_table('t_pline');
SELECT eventstream.remove_child_table('t_ptag');
DROP TABLE t_meas, t_meas_eu_old, t_pline, t_pdoc, t_ptag, t_pnote;
DROP FUNCTION t_meas_triggers, t_refuse;

DELETE FROM eventstream.producer WHERE producer_url = 'http://trunc.invalid';
SELECT eventstream.drop_mapping('t_mapped_from_note');
SELECT eventstream.remove_consumer('http://trunc-a:8000');
DROP TABLE t_doc, t_other, t_line, t_inv, t_pending, t_local, t_cursor, t_mapped;
DROP FUNCTION t_log, t_clear, t_pull, t_creates, t_truncate;
DROP OWNED BY es_trunc_sub, es_trunc_applier, es_trunc_app;
DROP ROLE es_trunc_sub, es_trunc_applier, es_trunc_app;
