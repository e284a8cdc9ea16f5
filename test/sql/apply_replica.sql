-- The apply as logical replication applies: into partitioned tables (the
-- rows routed to their partitions), with session_replication_role =
-- replica (triggers ENABLE REPLICA and ENABLE ALWAYS fire, ordinary ones
-- do not), foreign keys still enforced.  Updates are handed to
-- eventstream._apply_updates() directly.
\set SHOW_CONTEXT never
CREATE ROLE es_replica;
INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor)
	VALUES ('http://r.invalid', 'k', 's', 'es_replica', '00000000-0000-0000-0000-0000000000f3', 'v1/1/1:1:/1');
CREATE FUNCTION r_apply(updates jsonb) RETURNS integer[] LANGUAGE sql AS $$
	SELECT eventstream._apply_updates('http://r.invalid', 'es_replica', updates, NULL, false)
$$;
CREATE FUNCTION r_creates(tbl text, first int, last int) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_build_object('id', g, 'update_type', 'Create', 'ref_table', tbl, 'docname', g::text,
										'data', jsonb_build_object('id', g, 'region', (ARRAY['eu', 'us', 'asia'])[g % 3 + 1],
																   'v', 'v' || g)) ORDER BY g)
	  FROM generate_series(first, last) g
$$;
CREATE FUNCTION r_failed() RETURNS TABLE (docname text, error text) LANGUAGE sql AS $$
	SELECT l.remote_docname, split_part(l.error, E'\n', 1) FROM eventstream.sync_log l
	 WHERE l.producer_url = 'http://r.invalid' AND l.status = 'Failed' ORDER BY l.id
$$;

-- Partitioned tables: by hash, by list, and by list then hash.
CREATE TABLE r_hash (id int PRIMARY KEY, region text, v text) PARTITION BY HASH (id);
CREATE TABLE r_hash_0 PARTITION OF r_hash FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE r_hash_1 PARTITION OF r_hash FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE r_list (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE r_list_eu PARTITION OF r_list FOR VALUES IN ('eu');
CREATE TABLE r_list_other PARTITION OF r_list DEFAULT;
CREATE TABLE r_sub (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE r_sub_eu PARTITION OF r_sub FOR VALUES IN ('eu') PARTITION BY HASH (id);
CREATE TABLE r_sub_eu_0 PARTITION OF r_sub_eu FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE r_sub_eu_1 PARTITION OF r_sub_eu FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE r_sub_other PARTITION OF r_sub FOR VALUES IN ('us', 'asia');
GRANT SELECT, INSERT, UPDATE, DELETE ON r_hash, r_list, r_sub TO es_replica;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://r.invalid', 'public.r_hash', 'r_hash', 'Approved'),
		   ('http://r.invalid', 'public.r_list', 'r_list', 'Approved'),
		   ('http://r.invalid', 'public.r_sub', 'r_sub', 'Approved');
-- Creates one by one, a run of them (one statement), and a run of rows
-- mostly there (row by row then): those take the producer's values.
SELECT r_apply(r_creates('public.r_hash', 1, 3)) AS hash_few, r_apply(r_creates('public.r_hash', 4, 40)) AS hash_run,
	   r_apply(r_creates('public.r_hash', 25, 41)) AS hash_again;
SELECT tableoid::regclass AS part, count(*), min(id), max(id) FROM r_hash GROUP BY 1 ORDER BY 1;
SELECT count(*) FILTER (WHERE note LIKE 'the row existed%') AS existed FROM eventstream.sync_log
 WHERE ref_table = 'public.r_hash';
-- Composite keys: the docname is the JSON array of the key.
CREATE FUNCTION r_keyed(updates jsonb) RETURNS jsonb LANGUAGE sql AS $$
	SELECT jsonb_agg(jsonb_set(u, '{docname}', to_jsonb(jsonb_build_array((u->'data'->>'id')::int, u->'data'->>'region')::text)))
	  FROM jsonb_array_elements(updates) u
$$;
SELECT r_apply(r_keyed(r_creates('public.r_list', 1, 30))) AS list_run, r_apply(r_keyed(r_creates('public.r_list', 30, 31))) AS list_again,
	   r_apply(r_keyed(r_creates('public.r_sub', 1, 30))) AS sub_run, r_apply(r_keyed(r_creates('public.r_sub', 30, 31))) AS sub_again;
SELECT tableoid::regclass AS part, count(*) FROM r_list GROUP BY 1 ORDER BY 1;
SELECT tableoid::regclass AS part, count(*) FROM r_sub GROUP BY 1 ORDER BY 1;
-- Updates and Deletes.  A partitioned table's key holds its partition key:
-- a row whose partition key changes on the producer is a new document
-- there (a Delete and a Create), and moves to its new partition here.
SELECT r_apply('[
  {"id": 50, "update_type": "Update", "ref_table": "public.r_hash", "docname": "2",
   "data": {"changed": {"region": "eu", "v": "two"}, "added": {}, "row_changed": {}, "removed": {}}},
  {"id": 51, "update_type": "Update", "ref_table": "public.r_sub", "docname": "[3,\"eu\"]",
   "data": {"changed": {"v": "three"}, "added": {}, "row_changed": {}, "removed": {}}},
  {"id": 52, "update_type": "Delete", "ref_table": "public.r_sub", "docname": "[4,\"us\"]", "data": null},
  {"id": 53, "update_type": "Create", "ref_table": "public.r_sub", "docname": "[4,\"eu\"]",
   "data": {"id": 4, "region": "eu", "v": "moved"}},
  {"id": 54, "update_type": "Update", "ref_table": "public.r_list", "docname": "[5,\"asia\"]",
   "data": {"changed": {"v": "five"}, "added": {}, "row_changed": {}, "removed": {}}},
  {"id": 55, "update_type": "Delete", "ref_table": "public.r_hash", "docname": "1", "data": null},
  {"id": 56, "update_type": "Delete", "ref_table": "public.r_sub", "docname": "[6,\"eu\"]", "data": null},
  {"id": 57, "update_type": "Delete", "ref_table": "public.r_list", "docname": "[7,\"us\"]", "data": null}
]') AS processed_failed;
SELECT tableoid::regclass AS part, * FROM r_sub WHERE id IN (3, 4, 6) ORDER BY id;
SELECT tableoid::regclass AS part, * FROM r_list WHERE id IN (5, 7) ORDER BY id;
SELECT tableoid::regclass AS part, * FROM r_hash WHERE id IN (1, 2) ORDER BY id;
-- A run of Updates and one of Deletes.
SELECT r_apply((SELECT jsonb_agg(jsonb_build_object('id', 100 + g, 'update_type', 'Update', 'ref_table', 'public.r_hash',
		'docname', g::text, 'data', jsonb_build_object('changed', jsonb_build_object('v', 'u' || g),
		'added', '{}'::jsonb, 'row_changed', '{}'::jsonb, 'removed', '{}'::jsonb)) ORDER BY g)
	  FROM generate_series(10, 30) g)) AS updates,
	   r_apply((SELECT jsonb_agg(jsonb_build_object('id', 200 + g, 'update_type', 'Delete', 'ref_table', 'public.r_hash',
		'docname', g::text, 'data', NULL) ORDER BY g) FROM generate_series(31, 50) g)) AS deletes;
SELECT count(*), count(*) FILTER (WHERE v LIKE 'u%') AS updated, max(id) FROM r_hash;
SELECT * FROM r_failed();

-- Triggers: an ordinary one does not fire on apply, one ENABLE REPLICA and
-- one ENABLE ALWAYS do; a disabled one does not.  Each writes what it saw.
CREATE TABLE r_trig (id int PRIMARY KEY, v text, region text);
CREATE TABLE r_audit (trigger_name text, op text, id int, role text);
GRANT SELECT, INSERT, UPDATE, DELETE ON r_trig TO es_replica;
GRANT INSERT ON r_audit TO es_replica;
CREATE FUNCTION r_audit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO r_audit VALUES (TG_NAME, TG_OP, coalesce(NEW.id, OLD.id), current_setting('session_replication_role'));
	RETURN coalesce(NEW, OLD);
END
$$;
CREATE TRIGGER ordinary AFTER INSERT OR UPDATE OR DELETE ON r_trig FOR EACH ROW EXECUTE FUNCTION r_audit();
CREATE TRIGGER replica AFTER INSERT OR UPDATE OR DELETE ON r_trig FOR EACH ROW EXECUTE FUNCTION r_audit();
CREATE TRIGGER always BEFORE INSERT OR UPDATE OR DELETE ON r_trig FOR EACH ROW EXECUTE FUNCTION r_audit();
CREATE TRIGGER disabled AFTER INSERT ON r_trig FOR EACH ROW EXECUTE FUNCTION r_audit();
ALTER TABLE r_trig ENABLE REPLICA TRIGGER replica, ENABLE ALWAYS TRIGGER always, DISABLE TRIGGER disabled;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://r.invalid', 'public.r_trig', 'r_trig', 'Approved');
SELECT r_apply('[
  {"id": 1, "update_type": "Create", "ref_table": "public.r_trig", "docname": "1", "data": {"id": 1, "v": "a"}},
  {"id": 2, "update_type": "Update", "ref_table": "public.r_trig", "docname": "1",
   "data": {"changed": {"v": "b"}, "added": {}, "row_changed": {}, "removed": {}}},
  {"id": 3, "update_type": "Delete", "ref_table": "public.r_trig", "docname": "1", "data": null}
]') AS processed_failed;
SELECT trigger_name, op, id, role, count(*) FROM r_audit GROUP BY 1, 2, 3, 4 ORDER BY 1, 2;
-- A run of Creates (one statement) fires them the same way.
TRUNCATE r_audit;
SELECT r_apply(r_creates('public.r_trig', 1, 20) #- '{0,data,region}') AS processed_failed;
SELECT trigger_name, op, role, count(*) FROM r_audit GROUP BY 1, 2, 3 ORDER BY 1, 2;
-- The session's own writes are as before: the role is set for the apply only.
TRUNCATE r_audit;
SELECT current_setting('session_replication_role') AS role;
INSERT INTO r_trig VALUES (100, 'local');
SELECT trigger_name, op, role FROM r_audit ORDER BY 1;
-- With only an ordinary trigger left, a run goes straight into the table
-- (the trigger would not fire either way) and still fires nothing.
DROP TRIGGER replica ON r_trig;
DROP TRIGGER always ON r_trig;
TRUNCATE r_audit;
SELECT r_apply(r_creates('public.r_trig', 21, 60)) AS processed_failed;
SELECT count(*) AS audited, (SELECT count(*) FROM r_trig) AS rows FROM r_audit;

-- Rules likewise: an ordinary one is not applied (so the statements'
-- INSERT ... ON CONFLICT takes the table, row by row as in a run); one
-- ENABLE ALWAYS would be, which INSERT ... ON CONFLICT refuses, and the
-- straight path does not take the table either.
CREATE RULE r_trig_rule AS ON INSERT TO r_trig DO ALSO INSERT INTO r_audit VALUES ('rule', 'INSERT', NEW.id, 'any');
TRUNCATE r_audit;
SELECT r_apply(r_creates('public.r_trig', 61, 62)) AS few, r_apply(r_creates('public.r_trig', 63, 90)) AS run;
ALTER TABLE r_trig ENABLE ALWAYS RULE r_trig_rule;
SELECT r_apply(r_creates('public.r_trig', 91, 92)) AS few, r_apply(r_creates('public.r_trig', 93, 120)) AS run;
SELECT count(*) AS audited, (SELECT count(*) FROM r_trig) AS rows, (SELECT DISTINCT error FROM r_failed()) AS error FROM r_audit;
DROP RULE r_trig_rule ON r_trig;

-- Foreign keys stay enforced: a row referring to one that is not here
-- fails (resyncable); deleting a row takes the rows referring to it ON
-- DELETE CASCADE along, sets those ON DELETE SET NULL, and fails while
-- one refers to it with NO ACTION.
CREATE TABLE r_parent (id int PRIMARY KEY, v text);
CREATE TABLE r_child (id int PRIMARY KEY, parent int NOT NULL REFERENCES r_parent ON DELETE CASCADE, v text);
CREATE TABLE r_grandchild (id int PRIMARY KEY, child int REFERENCES r_child ON DELETE CASCADE);
CREATE TABLE r_loose (id int PRIMARY KEY, parent int REFERENCES r_parent ON DELETE SET NULL);
CREATE TABLE r_strict (id int PRIMARY KEY, parent int REFERENCES r_parent);
GRANT SELECT, INSERT, UPDATE, DELETE ON r_parent, r_child, r_grandchild, r_loose, r_strict TO es_replica;
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status)
	VALUES ('http://r.invalid', 'public.r_parent', 'r_parent', 'Approved'),
		   ('http://r.invalid', 'public.r_child', 'r_child', 'Approved');
SELECT r_apply('[
  {"id": 1, "update_type": "Create", "ref_table": "public.r_parent", "docname": "1", "data": {"id": 1, "v": "p1"}},
  {"id": 2, "update_type": "Create", "ref_table": "public.r_parent", "docname": "2", "data": {"id": 2, "v": "p2"}},
  {"id": 3, "update_type": "Create", "ref_table": "public.r_child", "docname": "10", "data": {"id": 10, "parent": 1}},
  {"id": 4, "update_type": "Create", "ref_table": "public.r_child", "docname": "11", "data": {"id": 11, "parent": 9}},
  {"id": 5, "update_type": "Create", "ref_table": "public.r_child", "docname": "12", "data": {"id": 12, "parent": 2}},
  {"id": 6, "update_type": "Update", "ref_table": "public.r_child", "docname": "12",
   "data": {"changed": {"parent": 8}, "added": {}, "row_changed": {}, "removed": {}}}
]') AS processed_failed;
SELECT * FROM r_failed() WHERE docname IN ('11', '12');
INSERT INTO r_grandchild VALUES (100, 10);
INSERT INTO r_loose VALUES (1, 1);
INSERT INTO r_strict VALUES (1, 2);
SELECT r_apply('[
  {"id": 7, "update_type": "Delete", "ref_table": "public.r_parent", "docname": "1", "data": null},
  {"id": 8, "update_type": "Delete", "ref_table": "public.r_parent", "docname": "2", "data": null}
]') AS processed_failed;
SELECT (SELECT count(*) FROM r_child WHERE parent = 1) AS children, (SELECT count(*) FROM r_grandchild) AS grandchildren,
	   (SELECT parent FROM r_loose) AS loose_parent, (SELECT count(*) FROM r_parent) AS parents;
SELECT * FROM r_failed() WHERE docname = '2';
-- Runs of Creates and Updates (one statement each) are checked too: a run
-- with a row referring to a missing one goes row by row, and only that
-- one fails.
INSERT INTO r_parent VALUES (3, 'p3');
SELECT r_apply((SELECT jsonb_agg(jsonb_build_object('id', 300 + g, 'update_type', 'Create', 'ref_table', 'public.r_child',
		'docname', (300 + g)::text, 'data', jsonb_build_object('id', 300 + g, 'parent', CASE WHEN g = 7 THEN 99 ELSE 3 END))
		ORDER BY g) FROM generate_series(1, 20) g)) AS creates,
	   r_apply((SELECT jsonb_agg(jsonb_build_object('id', 400 + g, 'update_type', 'Update', 'ref_table', 'public.r_child',
		'docname', (300 + g)::text, 'data', jsonb_build_object('changed', jsonb_build_object('parent', CASE WHEN g = 9 THEN 98 ELSE 3 END),
		'added', '{}'::jsonb, 'row_changed', '{}'::jsonb, 'removed', '{}'::jsonb)) ORDER BY g)
	  FROM generate_series(1, 20) g)) AS updates;
SELECT count(*), min(parent), max(parent) FROM r_child WHERE id > 300;
SELECT * FROM r_failed() WHERE docname::int > 300;
-- The errors are PostgreSQL's own, details included.
SELECT remote_docname, error FROM eventstream.sync_log
 WHERE producer_url = 'http://r.invalid' AND status = 'Failed' AND remote_docname IN ('2', '11') ORDER BY id;

DELETE FROM eventstream.producer WHERE producer_url = 'http://r.invalid';
DROP TABLE r_hash, r_list, r_sub, r_trig, r_audit, r_parent, r_child, r_grandchild, r_loose, r_strict;
DROP FUNCTION r_apply, r_creates, r_keyed, r_failed, r_audit;
DROP ROLE es_replica;
