-- Child tables: their rows are part of the parent's document.
\set SHOW_CONTEXT never
TRUNCATE eventstream.update_log;
CREATE TABLE invoice (id int PRIMARY KEY, customer text);
CREATE TABLE invoice_item (
	invoice_id	int REFERENCES invoice ON DELETE CASCADE ON UPDATE CASCADE,
	line		int,
	item		text,
	qty			int,
	PRIMARY KEY (invoice_id, line)
);
CREATE TABLE orphan_item (id int PRIMARY KEY, invoice_id int);
GRANT SELECT ON invoice, invoice_item, orphan_item TO es_sub;

-- Registration errors.
SELECT eventstream.add_child_table('invoice', 'orphan_item');
SELECT eventstream.add_child_table('invoice', 'invoice');
SELECT eventstream.add_child_table('invoice', 'no_such_table');
SELECT eventstream.add_child_table('invoice', 'untouched');

SELECT eventstream.add_child_table('invoice', 'invoice_item');
SELECT child, parent, fk_name FROM eventstream.child_table;
-- The child cannot be subscribed on its own, nor get children itself.
SELECT register('http://consumer-a:8000', '00000000-0000-0000-0000-00000000000a',
				'["item", "line", "untouched", "public.invoice_item"]');
SELECT eventstream.add_child_table('invoice_item', 'orphan_item');

SELECT register('http://consumer-a:8000', '00000000-0000-0000-0000-00000000000a',
				'["item", "line", "untouched", "public.invoice"]');
SELECT eventstream.approve('http://consumer-a:8000', 'invoice');
SELECT tgrelid::regclass AS captured, pg_get_triggerdef(oid) ~ '_capture\(''child''' AS as_child
  FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;

-- A parent and its rows inserted by separate statements: Create, then one
-- Update with "added" per row.
INSERT INTO invoice VALUES (1, 'ACME');
INSERT INTO invoice_item VALUES (1, 1, 'apple', 2), (1, 2, 'pear', 1);
-- row_changed: the changed columns plus the row's key.
UPDATE invoice_item SET qty = 5 WHERE line = 2;
UPDATE invoice_item SET qty = 5 WHERE line = 2;
-- removed: the row's docname.
DELETE FROM invoice_item WHERE line = 1;
SELECT update_type, ref_table, docname, data FROM eventstream.update_log ORDER BY id;

-- A Create carries the rows that exist when the parent row is logged.
TRUNCATE eventstream.update_log;
ALTER TABLE invoice_item ALTER CONSTRAINT invoice_item_invoice_id_fkey DEFERRABLE;
BEGIN;
SET CONSTRAINTS ALL DEFERRED;
INSERT INTO invoice_item VALUES (2, 1, 'plum', 7);
INSERT INTO invoice VALUES (2, 'Initech');
COMMIT;
SELECT update_type, docname, data FROM eventstream.update_log ORDER BY id;

-- A row moved to another parent: removed there, added here.
TRUNCATE eventstream.update_log;
UPDATE invoice_item SET invoice_id = 1 WHERE invoice_id = 2;
SELECT update_type, docname, data - 'changed' - 'row_changed' AS data FROM eventstream.update_log ORDER BY id;

-- Deleting a parent logs one Delete, not one removal per cascaded row.
TRUNCATE eventstream.update_log;
SELECT count(*) AS rows_before FROM invoice_item WHERE invoice_id = 1;
DELETE FROM invoice WHERE id = 1;
SELECT update_type, docname, data FROM eventstream.update_log ORDER BY id;

-- The document as served to readers matches the Create format.
INSERT INTO invoice VALUES (3, 'Hooli');
INSERT INTO invoice_item VALUES (3, 1, 'fig', 1), (3, 2, 'kiwi', 2);
SELECT eventstream._document('invoice', '3');
SELECT eventstream._document('invoice', '404') IS NULL AS missing_document;
SELECT eventstream._document('line', '["INV-9",1]') IS NULL AS missing_composite;

-- Dynamic links are registered and checked.
CREATE TABLE todo (id int PRIMARY KEY, ref_type text, ref_name text);
SELECT eventstream.add_dynamic_link('todo', 'ref_type', 'ref_name');
SELECT eventstream.add_dynamic_link('todo', 'ref_type', 'nope');
SELECT eventstream.add_dynamic_link('todo', 'ref_type', 'ref_type');
SELECT tbl, type_column, key_column FROM eventstream.dynamic_link;

-- Dropping a child table unregisters it; its parent keeps being captured.
CREATE TABLE extra_item (id int PRIMARY KEY, invoice_id int REFERENCES invoice ON DELETE CASCADE);
SELECT eventstream.add_child_table('invoice', 'extra_item');
INSERT INTO invoice VALUES (4, 'Pied Piper');
DROP TABLE extra_item;
SELECT child FROM eventstream.child_table ORDER BY 1;
INSERT INTO invoice VALUES (5, 'Raviga');
SELECT docname, data ? 'public.extra_item' AS has_extra, data ? 'public.invoice_item' AS has_items
  FROM eventstream.update_log WHERE docname IN ('4', '5') AND update_type = 'Create' ORDER BY docname;

-- A child table that lost its primary key: changes of its rows are still
-- captured, the rows named by the columns of the former key (one WARNING
-- per transaction); its parent's Create reads the child's rows in no set
-- order.  With the key back there is no WARNING.
ALTER TABLE invoice_item DROP CONSTRAINT invoice_item_pkey;
SELECT max(id) AS before_nokey FROM eventstream.update_log \gset
INSERT INTO invoice_item VALUES (5, 1, 'fig', 1);
UPDATE invoice_item SET qty = 3 WHERE invoice_id = 5;
UPDATE invoice SET id = 50 WHERE id = 5;
SELECT update_type, docname, data->'public.invoice_item' AS items,
	   data->'added' AS added, data->'removed' AS removed, data->'row_changed' AS row_changed
  FROM eventstream.update_log WHERE id > :before_nokey ORDER BY id;
ALTER TABLE invoice_item ADD PRIMARY KEY (invoice_id, line);
UPDATE invoice_item SET qty = 2 WHERE invoice_id = 50;
SELECT update_type, docname FROM eventstream.update_log WHERE id > :before_nokey ORDER BY id;

-- Renaming a foreign key column of a child table refreshes the arguments
-- of its trigger and of its parent's, which name the column.
ALTER TABLE invoice_item RENAME COLUMN invoice_id TO inv;
SELECT tgrelid::regclass AS captured, encode(tgargs, 'escape') AS args
  FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;
SELECT max(id) AS before_rename FROM eventstream.update_log \gset
INSERT INTO invoice VALUES (7, 'Hooli');
INSERT INTO invoice_item VALUES (7, 1, 'kiwi', 4);
UPDATE invoice SET id = 70 WHERE id = 7;
SELECT update_type, docname, data FROM eventstream.update_log WHERE id > :before_rename ORDER BY id;
ALTER TABLE invoice_item RENAME COLUMN inv TO invoice_id;

-- Triggers in the form an earlier version made, naming tables by OID and
-- columns by number, keep capturing until _sync_capture() writes them anew.
DROP TRIGGER eventstream_capture ON invoice;
DROP TRIGGER eventstream_capture ON invoice_item;
DO $$
DECLARE
	fk int2 := (SELECT a.attnum FROM pg_attribute a
				 WHERE a.attrelid = 'invoice_item'::regclass AND a.attname = 'invoice_id');
BEGIN
	EXECUTE format('CREATE TRIGGER eventstream_capture AFTER INSERT OR UPDATE OR DELETE ON invoice '
				   'FOR EACH ROW EXECUTE FUNCTION eventstream._capture(%L, %L, %L)',
				   'doc', 'invoice_item'::regclass::oid || ':' || fk, 'key:id');
	EXECUTE format('CREATE TRIGGER eventstream_capture AFTER INSERT OR UPDATE OR DELETE ON invoice_item '
				   'FOR EACH ROW EXECUTE FUNCTION eventstream._capture(%L, %L, %L, %L)',
				   'child', 'invoice'::regclass::oid, fk, 'key:invoice_id,line');
END
$$;
SELECT max(id) AS before_oids FROM eventstream.update_log \gset
INSERT INTO invoice VALUES (8, 'Bachman');
INSERT INTO invoice_item VALUES (8, 1, 'plum', 1);
UPDATE invoice SET id = 80 WHERE id = 8;
SELECT update_type, docname, data FROM eventstream.update_log WHERE id > :before_oids ORDER BY id;
SELECT eventstream._sync_capture();
SELECT tgrelid::regclass AS captured, encode(tgargs, 'escape') AS args, tgenabled
  FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;

-- A role that may write the tables but not read eventstream's own: its
-- writes are captured (the trigger finds the tables its arguments name
-- without reading eventstream.published_table as that role).
CREATE ROLE es_writer;
GRANT SELECT, INSERT ON invoice, invoice_item TO es_writer;
SELECT max(id) AS before_writer FROM eventstream.update_log \gset
SET ROLE es_writer;
INSERT INTO invoice VALUES (9, 'Aviato');
INSERT INTO invoice_item VALUES (9, 1, 'lime', 1);
RESET ROLE;
SELECT update_type, docname, data FROM eventstream.update_log WHERE id > :before_writer ORDER BY id;
REVOKE ALL ON invoice, invoice_item FROM es_writer;
DROP ROLE es_writer;

-- Unregistering a child table removes its capture; its rows leave the
-- parent's documents.
SELECT eventstream.remove_child_table('invoice_item');
SELECT tgrelid::regclass AS captured FROM pg_trigger WHERE tgname = 'eventstream_capture' ORDER BY 1;
INSERT INTO invoice VALUES (6, 'Endframe');
SELECT data ? 'public.invoice_item' AS has_items FROM eventstream.update_log WHERE docname = '6';
SELECT eventstream.remove_child_table('invoice_item');
