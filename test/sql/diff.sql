-- Update: the four-key diff, typed comparison, key changes, Delete.
\set SHOW_CONTEXT never
SET timezone = 'UTC';
TRUNCATE eventstream.update_log;

-- Nothing changed, or only the text form of an equal value: no log.
UPDATE item SET name = name, price = price WHERE code = 'A-1';
UPDATE item SET price = 1.5 WHERE code = 'A-1';
UPDATE item SET seen = '2026-01-31 11:11:12.5+01' WHERE code = 'A-1';
SELECT count(*) AS logs_for_no_op_updates FROM eventstream.update_log;

-- Only changed columns, with their new values (NULL included); always the
-- four keys.
UPDATE item SET name = 'Green apple', qty = NULL, tags = '{green}' WHERE code = 'A-1';
SELECT * FROM show_log();
SELECT data ?& ARRAY['changed', 'added', 'removed', 'row_changed'] AS four_keys,
	   (SELECT count(*) FROM jsonb_object_keys(data)) AS nkeys
  FROM eventstream.update_log;

-- jsonb compares as jsonb (key order and spacing do not matter).
TRUNCATE eventstream.update_log;
UPDATE item SET extra = '{ "k" : [1,2] }' WHERE code = 'A-1';
UPDATE item SET extra = '{"k": [2, 1]}' WHERE code = 'A-1';
SELECT data->'changed' AS changed FROM eventstream.update_log;

-- One log per row of a multi-row statement, in row order.
TRUNCATE eventstream.update_log;
UPDATE item SET active = false WHERE code IN ('tx', 'from-b');
SELECT update_type, docname, data->'changed' AS changed FROM eventstream.update_log ORDER BY id;

-- A new primary key is a different document: Delete, then Create.
TRUNCATE eventstream.update_log;
UPDATE item SET code = 'A-2' WHERE code = 'A-1';
SELECT update_type, docname, data->>'name' AS name FROM eventstream.update_log ORDER BY id;

-- Delete carries no data.
TRUNCATE eventstream.update_log;
DELETE FROM item WHERE code = 'A-2';
SELECT * FROM show_log();

-- Composite keys in diffs and deletes.
UPDATE line SET note = 'TWO' WHERE inv = 'INV-1';
DELETE FROM line;
SELECT update_type, docname, data FROM eventstream.update_log WHERE ref_table = 'public.line' ORDER BY id;
