-- pgbench script for test/bench/capture.sh: one single-row write per
-- transaction, half INSERT of a new row, half UPDATE of an existing row.
-- capture.sh replaces @TABLE@ with the table under test (with -M prepared a
-- pgbench variable cannot stand for a table name).
\set r random(1, 2)
\set id random(1, 10000)
\if :r = 1
INSERT INTO @TABLE@ (val, note) VALUES (:id, 'benchmark row');
\else
UPDATE @TABLE@ SET val = val + 1 WHERE id = :id;
\endif
