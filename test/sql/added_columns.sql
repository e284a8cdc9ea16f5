-- Columns added to a captured table after its capture began travel with
-- every Update (a column dropped and added again is NULL everywhere, and
-- must reach consumers that still hold the old values); the capture
-- trigger names them in its 'added:' argument.
\set SHOW_CONTEXT never
CREATE TABLE ac_doc (id int PRIMARY KEY, a text, c text);
CREATE TABLE ac_child (id int PRIMARY KEY, doc int REFERENCES ac_doc ON DELETE CASCADE, v text);
GRANT SELECT ON ac_doc, ac_child TO es_sub;
SELECT eventstream.add_child_table('ac_doc', 'ac_child');
SELECT register('http://consumer-ac:8000', '00000000-0000-0000-0000-0000000000ac', '["ac_doc"]');
SELECT eventstream.approve('http://consumer-ac:8000', 'ac_doc');
CREATE VIEW ac_args AS
	SELECT tgrelid::regclass AS captured,
		   array_to_string(eventstream._trigger_args(tgargs), ' | ') ~ 'added:' AS has_added,
		   (SELECT x FROM unnest(eventstream._trigger_args(tgargs)) x WHERE x LIKE 'added:%') AS added
	  FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid IN ('ac_doc'::regclass, 'ac_child'::regclass)
	 ORDER BY 1;
SELECT * FROM ac_args;
INSERT INTO ac_doc VALUES (1, 'one', 'old'), (2, 'two', 'old');
INSERT INTO ac_child VALUES (10, 1, 'ten');

-- Columns there when capture began travel when they change, as before.
SELECT max(id) AS mark FROM eventstream.update_log \gset
UPDATE ac_doc SET a = 'ONE' WHERE id = 1;
SELECT docname, data->'changed' AS changed FROM eventstream.update_log WHERE id > :mark ORDER BY id;

-- c dropped and added again: NULL in every row, and named by the trigger.
ALTER TABLE ac_doc DROP COLUMN c;
ALTER TABLE ac_doc ADD COLUMN c text;
ALTER TABLE ac_child ADD COLUMN w text DEFAULT 'dflt', ADD COLUMN "Odd Name" int;
SELECT * FROM ac_args;
-- Its next Update carries c, though c did not change; a no-op UPDATE still
-- logs nothing.
SELECT max(id) AS mark FROM eventstream.update_log \gset
UPDATE ac_doc SET a = 'ONE' WHERE id = 1;
UPDATE ac_doc SET a = 'TWO' WHERE id = 2;
UPDATE ac_child SET v = 'TEN' WHERE id = 10;
SELECT docname, data->'changed' AS changed, data->'row_changed' AS row_changed
  FROM eventstream.update_log WHERE id > :mark ORDER BY id;
-- Creates carry whole rows anyway.
SELECT max(id) AS mark FROM eventstream.update_log \gset
INSERT INTO ac_doc VALUES (3, 'three', 'new');
SELECT docname, data FROM eventstream.update_log WHERE id > :mark ORDER BY id;

-- _sync_capture (any change of subscriptions) carries the list over; a
-- column dropped leaves it; ADD COLUMN IF NOT EXISTS of one there adds
-- nothing; a table not captured is left alone.
SELECT eventstream._sync_capture();
SELECT * FROM ac_args;
ALTER TABLE ac_child DROP COLUMN "Odd Name";
SELECT * FROM ac_args;
ALTER TABLE ac_doc ADD COLUMN IF NOT EXISTS a text;
SELECT * FROM ac_args;
-- RENAME COLUMN of a column it names follows it; of another one adds
-- nothing.
ALTER TABLE ac_child RENAME COLUMN w TO "W 2";
ALTER TABLE ac_child RENAME COLUMN v TO v2;
SELECT * FROM ac_args;
CREATE TABLE ac_free (id int PRIMARY KEY);
ALTER TABLE ac_free ADD COLUMN x int;
SELECT count(*) AS triggers_on_free FROM pg_trigger WHERE tgrelid = 'ac_free'::regclass;
-- The trigger stays ENABLE ALWAYS.
SELECT tgrelid::regclass, tgenabled FROM pg_trigger
 WHERE tgname = 'eventstream_capture' AND tgrelid IN ('ac_doc'::regclass, 'ac_child'::regclass) ORDER BY 1;

-- Unsubscribed, then subscribed again: capture begins anew, with no
-- column counted as added.
SELECT eventstream.reject('http://consumer-ac:8000', 'ac_doc');
SELECT eventstream.approve('http://consumer-ac:8000', 'ac_doc');
SELECT * FROM ac_args;
SELECT max(id) AS mark FROM eventstream.update_log \gset
UPDATE ac_doc SET a = 'ONE!' WHERE id = 1;
SELECT docname, data->'changed' AS changed FROM eventstream.update_log WHERE id > :mark ORDER BY id;

DROP VIEW ac_args;
SELECT eventstream.reject('http://consumer-ac:8000', 'ac_doc');
DROP TABLE ac_child, ac_doc, ac_free;
