-- Capture: the update log is written by the C trigger in the changing
-- transaction, only for approved subscriptions, with txid and origin.
\set SHOW_CONTEXT never
CREATE EXTENSION eventstream;
SET timezone = 'UTC';

SELECT count(*) AS sites, bool_and(site_id IS NOT NULL) AS has_id FROM eventstream.site;

CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TABLE item (
	code	text PRIMARY KEY,
	name	text,
	active	boolean,
	qty		posint,
	price	numeric(10,2),
	ratio	float8,
	born	date,
	seen	timestamptz,
	tags	text[],
	extra	jsonb,
	raw		json,
	feel	mood
);
CREATE TABLE line (inv text, pos int, note text, PRIMARY KEY (inv, pos));
CREATE TABLE untouched (id int PRIMARY KEY);
CREATE ROLE es_sub;
GRANT SELECT ON item, line, untouched TO es_sub;

-- A compact view of the log for the tests.
CREATE FUNCTION show_log() RETURNS TABLE (update_type text, ref_table text, docname text, data jsonb)
LANGUAGE sql AS $$
	SELECT update_type, ref_table, docname, data FROM eventstream.update_log ORDER BY id
$$;

-- Test helpers: register a consumer remembering its cursor, and pull with
-- the remembered cursor as the consumer would.
CREATE TABLE cursors (consumer text PRIMARY KEY, cur text NOT NULL);
CREATE FUNCTION register(consumer text, site uuid, tables jsonb, key text DEFAULT 'key-a',
						 role text DEFAULT 'es_sub') RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
	r jsonb := eventstream._register_consumer(consumer, site, key, role::regrole, tables);
BEGIN
	INSERT INTO cursors VALUES (r->>'consumer_url', r->>'cursor') ON CONFLICT DO NOTHING;
	RETURN r->'tables';
END $$;
CREATE FUNCTION pull(consumer text, lim int DEFAULT 100)
RETURNS TABLE (n bigint, update_type text, ref_table text, docname text, data jsonb, more boolean)
LANGUAGE plpgsql AS $$
DECLARE
	r jsonb := eventstream._pull(consumer, (SELECT c.cur FROM cursors c WHERE c.consumer = pull.consumer), lim);
BEGIN
	UPDATE cursors c SET cur = r->>'cursor' WHERE c.consumer = pull.consumer;
	RETURN QUERY
		SELECT u.ord, u.e->>'update_type', u.e->>'ref_table', u.e->>'docname', u.e->'data', (r->>'more')::boolean
		  FROM jsonb_array_elements(r->'updates') WITH ORDINALITY AS u(e, ord);
END $$;

SELECT register('http://consumer-a:8000/', '00000000-0000-0000-0000-00000000000a',
				'["item", "public.line", "untouched"]');

-- Pending: no trigger, nothing logged.
SELECT count(*) AS capture_triggers FROM pg_trigger WHERE tgname = 'eventstream_capture';
INSERT INTO item (code, name) VALUES ('pending', 'not logged');
SELECT count(*) AS logs FROM eventstream.update_log;

SELECT eventstream.approve('http://consumer-a:8000', 'item');
SELECT eventstream.approve('http://consumer-a:8000', 'line');
SELECT tgrelid::regclass AS captured FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;

-- Create: the whole row, values as typed JSON, date/times in ISO 8601
-- whatever DateStyle says.
SET DateStyle = 'SQL, DMY';
INSERT INTO item VALUES ('A-1', 'Apple', true, 3, 1.50, 0.25, '2026-01-31', '2026-01-31 10:11:12.5+00',
						 '{red,green}', '{"k": [1, 2]}', '{"raw": true}', 'happy');
INSERT INTO item (code, ratio, price) VALUES ('nan', 'NaN', 'NaN');
RESET DateStyle;
SELECT * FROM show_log();

-- Composite keys: docname is a JSON array of the key values in key order.
INSERT INTO line VALUES ('INV-1', 2, 'two');
SELECT docname, docname::jsonb AS parsed FROM eventstream.update_log WHERE ref_table = 'public.line';

-- txid is the writing transaction; a rolled back change leaves no log.
BEGIN;
INSERT INTO item (code) VALUES ('tx');
SELECT txid = pg_current_xact_id() AS same_txid, origin IS NULL AS local
  FROM eventstream.update_log WHERE docname = 'tx';
COMMIT;
BEGIN;
INSERT INTO item (code) VALUES ('rolled-back');
ROLLBACK;
SELECT count(*) AS rolled_back_logs FROM eventstream.update_log WHERE docname = 'rolled-back';

-- Origin: set by the apply path for one transaction, then forgotten.
BEGIN;
SELECT eventstream._set_origin('00000000-0000-0000-0000-0000000000bb');
INSERT INTO item (code) VALUES ('from-b');
COMMIT;
INSERT INTO item (code) VALUES ('local-again');
SELECT docname, origin FROM eventstream.update_log WHERE docname IN ('from-b', 'local-again') ORDER BY id;
BEGIN;
SELECT eventstream._set_origin('00000000-0000-0000-0000-0000000000bb');
ROLLBACK;
INSERT INTO item (code) VALUES ('after-abort');
SELECT origin IS NULL AS origin_cleared_by_abort FROM eventstream.update_log WHERE docname = 'after-abort';

-- The origin setter is not for everybody.
SET ROLE es_sub;
SELECT eventstream._set_origin(NULL);
RESET ROLE;

-- Tables that are not approved are not captured.
INSERT INTO untouched VALUES (1);
SELECT count(*) AS untouched_logs FROM eventstream.update_log WHERE ref_table = 'public.untouched';

-- Schema changes are picked up by the next row.
ALTER TABLE item ADD COLUMN added_later text DEFAULT 'x';
INSERT INTO item (code) VALUES ('after-alter');
SELECT data->>'added_later' AS new_column FROM eventstream.update_log WHERE docname = 'after-alter';
ALTER TABLE item DROP COLUMN raw, DROP COLUMN added_later;
INSERT INTO item (code) VALUES ('after-drop');
SELECT data ? 'raw' AS dropped_column_present FROM eventstream.update_log WHERE docname = 'after-drop';

-- Trigger protocol violations are reported, not crashed on.
CREATE TABLE wrong (id int PRIMARY KEY);
CREATE TRIGGER bad BEFORE INSERT ON wrong FOR EACH ROW EXECUTE FUNCTION eventstream._capture('doc');
INSERT INTO wrong VALUES (1);
DROP TRIGGER bad ON wrong;
CREATE TRIGGER bad AFTER INSERT ON wrong FOR EACH ROW EXECUTE FUNCTION eventstream._capture('nonsense');
INSERT INTO wrong VALUES (1);
DROP TABLE wrong;
SELECT eventstream._capture();

-- A transaction that wrote logs can be prepared: until it ends, the low
-- bound stays at or below its first log id, although its backend's slot
-- is cleared and later transactions commit; after COMMIT PREPARED its logs
-- are visible and the bound moves on; after ROLLBACK PREPARED nothing of it
-- remains.
BEGIN;
INSERT INTO item (code) VALUES ('prepared');
INSERT INTO item (code) VALUES ('prepared-2');
SELECT min(id) AS prepared_first FROM eventstream.update_log WHERE txid = pg_current_xact_id() \gset
PREPARE TRANSACTION 'es_prepared';
SELECT count(*) AS prepared_logs FROM eventstream.update_log WHERE docname LIKE 'prepared%';
INSERT INTO item (code) VALUES ('after-prepared');
SELECT eventstream._low_bound() <= :prepared_first AS bound_below_prepared;
COMMIT PREPARED 'es_prepared';
SELECT docname FROM eventstream.update_log WHERE docname LIKE 'prepared%' ORDER BY id;
SELECT eventstream._low_bound() > :prepared_first AS bound_past_committed;
BEGIN;
INSERT INTO item (code) VALUES ('rolled-back');
SELECT min(id) AS prepared_first FROM eventstream.update_log WHERE txid = pg_current_xact_id() \gset
PREPARE TRANSACTION 'es_rolled_back';
SELECT eventstream._low_bound() <= :prepared_first AS bound_below_prepared;
ROLLBACK PREPARED 'es_rolled_back';
SELECT eventstream._low_bound() > :prepared_first AS bound_past_rolled_back,
	   count(*) AS rolled_back_logs
  FROM eventstream.update_log WHERE docname = 'rolled-back';

-- The log is written without an executor: expression indexes on it are
-- refused clearly, and writes work again once the index is gone.
CREATE INDEX update_log_expr ON eventstream.update_log ((docname || '!'));
INSERT INTO item (code) VALUES ('expr-index');
DROP INDEX eventstream.update_log_expr;
INSERT INTO item (code) VALUES ('no-expr-index');
SELECT docname FROM eventstream.update_log WHERE docname LIKE '%expr-index' ORDER BY id;

-- A subscribed table that lost its primary key: writes succeed and are
-- still logged, naming the documents by the columns of the former key that
-- the trigger's last argument remembers, with one WARNING per transaction
-- and table; consumer_status counts the subscription until the key is back.
CREATE VIEW capture_args AS
	SELECT tgrelid::regclass AS captured, encode(tgargs, 'escape') AS args
	  FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;
SELECT * FROM capture_args;
SELECT consumer_url, tables_without_key FROM eventstream.consumer_status ORDER BY 1;
ALTER TABLE item DROP CONSTRAINT item_pkey;
SELECT * FROM capture_args;
SELECT max(id) AS logs_before FROM eventstream.update_log \gset
INSERT INTO item (code, name) VALUES ('no-key-1', 'a'), ('no-key-2', 'b');
BEGIN;
UPDATE item SET name = 'changed' WHERE code = 'no-key-1';
DELETE FROM item WHERE code = 'no-key-2';
COMMIT;
SELECT update_type, docname, data->'changed' AS changed
  FROM eventstream.update_log WHERE id > :logs_before ORDER BY id;
SELECT consumer_url, tables_without_key FROM eventstream.consumer_status ORDER BY 1;

-- A reconfiguration keeps the remembered key of a table without one.
SELECT eventstream._sync_capture();
SELECT * FROM capture_args;

-- Once a column of the former key is gone too (renamed here), nothing names
-- the documents: writes succeed, are not logged, and warn.
ALTER TABLE item RENAME COLUMN code TO code_renamed;
SELECT max(id) AS logs_before FROM eventstream.update_log \gset
INSERT INTO item (code_renamed) VALUES ('no-key-3');
UPDATE item SET name = 'unlogged' WHERE code_renamed = 'no-key-1';
SELECT count(*) AS logs_written FROM eventstream.update_log WHERE id > :logs_before;
ALTER TABLE item RENAME COLUMN code_renamed TO code;
UPDATE item SET name = 'logged again' WHERE code = 'no-key-1';
SELECT update_type, docname FROM eventstream.update_log WHERE id > :logs_before ORDER BY id;

-- The key back ends the WARNINGs and the count.  With the key, ALTER TABLE
-- refreshes the remembered key: a renamed key column is remembered by its
-- new name, and documents are named by it once the key is dropped again.
DELETE FROM item WHERE code = 'no-key-3';
ALTER TABLE item ADD PRIMARY KEY (code);
INSERT INTO item (code) VALUES ('key-back');
SELECT docname FROM eventstream.update_log WHERE id > (SELECT max(id) - 1 FROM eventstream.update_log);
SELECT consumer_url, tables_without_key FROM eventstream.consumer_status ORDER BY 1;
ALTER TABLE item RENAME COLUMN code TO item_code;
SELECT * FROM capture_args;
ALTER TABLE item DROP CONSTRAINT item_pkey;
SELECT max(id) AS logs_before FROM eventstream.update_log \gset
UPDATE item SET name = 'renamed key' WHERE item_code = 'key-back';
SELECT update_type, docname FROM eventstream.update_log WHERE id > :logs_before ORDER BY id;
ALTER TABLE item RENAME COLUMN item_code TO code;
ALTER TABLE item ADD PRIMARY KEY (code);
SELECT * FROM capture_args;

-- A table owner's ALTER TABLE refreshes the remembered key too, and a key
-- column whose name needs quoting is found by that name once the key is
-- dropped.
CREATE ROLE es_owner;
ALTER TABLE line OWNER TO es_owner;
SET ROLE es_owner;
ALTER TABLE line RENAME COLUMN pos TO "Pos, No";
RESET ROLE;
SELECT * FROM capture_args;
ALTER TABLE line DROP CONSTRAINT line_pkey;
SELECT max(id) AS logs_before FROM eventstream.update_log \gset
INSERT INTO line VALUES ('quoted', 1, 'x');
SELECT update_type, docname FROM eventstream.update_log WHERE id > :logs_before ORDER BY id;
ALTER TABLE line RENAME COLUMN "Pos, No" TO pos;
ALTER TABLE line ADD PRIMARY KEY (inv, pos);
DELETE FROM line WHERE inv = 'quoted';
ALTER TABLE line OWNER TO CURRENT_USER;
DROP ROLE es_owner;
SELECT * FROM capture_args;

-- Rows written into the configuration tables directly (as pg_restore
-- does) install no trigger: only the functions that change subscriptions
-- do.
CREATE TABLE restored_doc (id int PRIMARY KEY);
INSERT INTO eventstream.consumer_table (consumer_url, ref_table, status)
	VALUES ('http://consumer-a:8000', 'public.restored_doc', 'Approved');
SELECT count(*) AS restored_triggers FROM pg_trigger WHERE tgrelid = 'restored_doc'::regclass;
DELETE FROM eventstream.consumer_table WHERE ref_table = 'public.restored_doc';

-- A partition subscribed on its own, then its partitioned table too: the
-- partition's own trigger gives way to its root's, and its changes are
-- logged under the root's name.  Removing the consumer removes both and
-- forgets the published names.
CREATE TABLE parted (id int, k text, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE parted_a PARTITION OF parted FOR VALUES IN ('a');
GRANT SELECT ON parted, parted_a TO es_sub;
SELECT register('http://consumer-p:8000', '00000000-0000-0000-0000-00000000000b', '["parted_a"]') IS NOT NULL AS registered;
SELECT eventstream.approve('http://consumer-p:8000', 'parted_a');
INSERT INTO parted VALUES (1, 'a');
SELECT register('http://consumer-p:8000', '00000000-0000-0000-0000-00000000000b', '["parted_a", "parted"]') IS NOT NULL AS registered;
SELECT eventstream.approve('http://consumer-p:8000', 'parted');
SELECT tgrelid::regclass AS captured, tgparentid <> 0 AS cloned, encode(tgargs, 'escape') AS args, tgenabled
  FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid::regclass::text LIKE 'parted%' ORDER BY 1;
INSERT INTO parted VALUES (2, 'a');
SELECT update_type, ref_table, docname FROM eventstream.update_log WHERE ref_table LIKE 'public.parted%' ORDER BY id;
SELECT ref_table, relid FROM eventstream.published_table ORDER BY 1;
SELECT eventstream.remove_consumer('http://consumer-p:8000');
SELECT count(*) AS parted_triggers FROM pg_trigger
 WHERE tgname = 'eventstream_capture' AND tgrelid::regclass::text LIKE 'parted%';
SELECT ref_table, relid FROM eventstream.published_table ORDER BY 1;

-- A table owner with no rights on eventstream's tables drops a table: the
-- event trigger that forgets dropped tables runs as the extension's owner.
CREATE ROLE es_dropper;
GRANT CREATE ON SCHEMA public TO es_dropper;
SET ROLE es_dropper;
CREATE TABLE dropped_by_owner (id int PRIMARY KEY);
DROP TABLE dropped_by_owner;
RESET ROLE;
REVOKE CREATE ON SCHEMA public FROM es_dropper;
DROP ROLE es_dropper;
