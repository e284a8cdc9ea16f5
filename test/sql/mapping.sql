-- Mappings (Document Type Mapping): validation when written, and the apply
-- of mapped updates, handed to eventstream._apply_updates() directly with
-- the documents a pull would have fetched for them.
\set SHOW_CONTEXT never
CREATE ROLE es_mapper;
CREATE TABLE m_role (id serial PRIMARY KEY, role_name text UNIQUE, kind text);
CREATE TABLE m_todo (name text PRIMARY KEY, description text, status text NOT NULL, priority int,
					 role int REFERENCES m_role);
CREATE TABLE m_step (todo text REFERENCES m_todo ON DELETE CASCADE, line int, what text, done boolean,
					 PRIMARY KEY (todo, line));
CREATE TABLE m_other (id int PRIMARY KEY);
GRANT SELECT, INSERT, UPDATE, DELETE ON m_role, m_todo, m_step TO es_mapper;
GRANT USAGE ON SEQUENCE m_role_id_seq TO es_mapper;

-- Valid mappings: a role made from a note (a Document dependency), steps
-- from note items (a child table), a todo from a note.
SELECT eventstream.create_mapping('role_from_note', 'm_role', 'note');
SELECT eventstream.map_field('role_from_note', 'role_name', 'title');
SELECT eventstream.map_field('role_from_note', 'kind', default_value => 'from a note');
SELECT eventstream.create_mapping('step_from_item', 'm_step', 'public.note_item');
SELECT eventstream.map_field('step_from_item', 'line', 'idx');
SELECT eventstream.map_field('step_from_item', 'what', 'body');
SELECT eventstream.map_field('step_from_item', 'done', 'checked', default_value => 'false');
SELECT eventstream.create_mapping('todo_from_note', 'm_todo', 'note');
SELECT eventstream.map_field('todo_from_note', 'description', 'content');
SELECT eventstream.map_field('todo_from_note', 'status', 'state', default_value => 'Open');
SELECT eventstream.map_field('todo_from_note', 'priority', default_value => '3');
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "title", "public": true, "owner": "eval:upper(doc->>''author'')"}');
SELECT eventstream.map_field('todo_from_note', 'm_step', 'note_item', mapping_type => 'Child Table', mapping => 'step_from_item');
SELECT mapping_name, local_fieldname, remote_fieldname, default_value, mapping_type, mapping
  FROM eventstream.field_mapping ORDER BY 1, 2;
SELECT * FROM eventstream.document_type_mapping ORDER BY 1;

-- Every validation error.
SELECT eventstream.create_mapping('todo_from_note', 'm_todo', 'note');		-- exists
SELECT eventstream.map_field('nope', 'x', 'y');								-- no such mapping
SELECT eventstream.map_field('todo_from_note', 'no_such_column', 'x');		-- unknown local column
SELECT eventstream.map_field('todo_from_note', 'description');				-- neither remote field nor default
SELECT eventstream.map_field('todo_from_note', 'role', 'title');			-- a foreign key without a nested mapping or default
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document',
							 mapping => 'role_from_note');					-- Document without remote_value_filters
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document',
							 mapping => 'role_from_note', remote_value_filters => '{}');
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document',
							 mapping => 'step_from_item', remote_value_filters => '{"title": "title"}');	-- wrong kind
SELECT eventstream.map_field('todo_from_note', 'm_step', 'note_item', mapping_type => 'Child Table');		-- no child mapping
SELECT eventstream.map_field('todo_from_note', 'm_step', 'note_item', mapping_type => 'Child Table',
							 mapping => 'role_from_note');					-- wrong kind
SELECT eventstream.map_field('todo_from_note', 'm_other', 'x', mapping_type => 'Child Table',
							 mapping => 'step_from_item');					-- not a child table of m_todo
SELECT eventstream.map_field('todo_from_note', 'description', 'content', mapping => 'role_from_note');	-- nested without a type
SELECT eventstream.map_field('todo_from_note', 'description', 'content', mapping_type => 'Link');
SELECT eventstream.map_field('todo_from_note', 'description', 'content', remote_value_filters => '{"a": "b"}');
SELECT eventstream.map_field('step_from_item', 'todo', 'note', mapping_type => 'Document', mapping => 'todo_from_note',
							 remote_value_filters => '{"name": "note"}');	-- Document fields in a child mapping
-- A cycle: role_from_note would link back to todo_from_note.
ALTER TABLE m_role ADD COLUMN todo text REFERENCES m_todo;
SELECT eventstream.map_field('role_from_note', 'todo', 'name', mapping_type => 'Document', mapping => 'todo_from_note',
							 remote_value_filters => '{"name": "name"}');
ALTER TABLE m_role DROP COLUMN todo;
ALTER TABLE m_role ADD COLUMN parent int REFERENCES m_role;
SELECT eventstream.map_field('role_from_note', 'parent', 'parent_title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "parent_title"}');
ALTER TABLE m_role DROP COLUMN parent;
-- eval: must be one expression: a second statement is refused.
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "eval:1); DROP TABLE m_todo; SELECT (1"}');
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "eval:1) UNION SELECT (2"}');
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "eval:1 FROM pg_class"}');
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "eval:no_such_function(doc)"}');
-- The table behind the functions validates too.
INSERT INTO eventstream.field_mapping (mapping_name, local_fieldname, remote_fieldname) VALUES ('todo_from_note', 'nope', 'x');
UPDATE eventstream.field_mapping SET remote_value_filters = NULL WHERE local_fieldname = 'role';
SELECT eventstream.drop_mapping('role_from_note');		-- nested in todo_from_note
SELECT eventstream.unmap_field('todo_from_note', 'nope');
SELECT eventstream.alter_mapping('nope', remote_table => 'x');
-- Nothing of the above was written.
SELECT count(*) AS rules FROM eventstream.field_mapping;

-- The apply.  A subscription through the mapping; the producer's docname
-- is the todo's key (use_same_name).
INSERT INTO eventstream.producer (producer_url, api_key, api_secret, subscriber, producer_site_id, cursor)
	VALUES ('http://q.invalid', 'k', 's', 'es_mapper', '00000000-0000-0000-0000-0000000000f2', 'v1/1/1:1:/1');
INSERT INTO eventstream.producer_table (producer_url, ref_table, local_table, status, mapping)
	VALUES ('http://q.invalid', 'public.note', 'm_todo', 'Approved', 'todo_from_note');
-- What a pull fetched for them: the filter lookup and the note it found.
CREATE TABLE fetched AS SELECT '[
  {"ref_table": "public.note", "filters": {"title": "Admin", "public": true, "owner": "ANN"}, "link": true,
   "data": {"docnames": ["N1"]}},
  {"ref_table": "public.note", "docname": "N1", "link": true,
   "data": {"name": "N1", "title": "Admin", "author": "ann", "content": "c"}}
]'::jsonb AS f;

-- Create: renamed, defaults for what is missing or null, an unmapped
-- remote field (secret) left out, every child row mapped, the role made
-- from the fetched note and linked.
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 1, "update_type": "Create", "ref_table": "public.note", "docname": "N1",
   "data": {"name": "N1", "title": "Admin", "author": "ann", "content": "write", "state": null, "secret": "x",
			"public.note_item": [{"note": "N1", "idx": 1, "body": "draft", "checked": true},
								 {"note": "N1", "idx": 2, "body": "review"}]}}
]', NULL, false, (SELECT f FROM fetched)) AS processed_failed;
SELECT * FROM m_todo;
SELECT * FROM m_step ORDER BY line;
SELECT role_name, kind FROM m_role;
SELECT local_table, local_docname, remote_docname FROM eventstream.remote_document WHERE producer_url = 'http://q.invalid';

-- Update: changed renamed (and a Document field linked again: the role is
-- found through its remote name, no duplicate); child rows added, changed
-- and removed through this mapping's child rule; a child table the
-- mapping has no rule for is left out with a note.
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 2, "update_type": "Update", "ref_table": "public.note", "docname": "N1",
   "data": {"changed": {"content": "write more", "title": "Admin", "secret": "y"},
			"added": {"public.note_item": [{"note": "N1", "idx": 3, "body": "ship"}],
					  "public.note_tag": [{"note": "N1", "tag": "x"}]},
			"row_changed": {"public.note_item": [{"note": "N1", "idx": 1, "checked": false}]},
			"removed": {"public.note_item": ["[\"N1\",2]"]}}}
]', NULL, false, (SELECT f FROM fetched)) AS processed_failed;
SELECT * FROM m_todo;
SELECT * FROM m_step ORDER BY line;
SELECT count(*) AS roles FROM m_role;
SELECT update_type, status, ref_table, remote_ref_table, error, note FROM eventstream.sync_log
 WHERE producer_url = 'http://q.invalid' ORDER BY id;

-- A Document dependency that was not fetched, or that the producer does
-- not have: that update fails (resyncable), the others apply.
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 3, "update_type": "Create", "ref_table": "public.note", "docname": "N2",
   "data": {"name": "N2", "title": "Ops", "author": "bob", "content": "c2"}},
  {"id": 4, "update_type": "Create", "ref_table": "public.note", "docname": "N3",
   "data": {"name": "N3", "title": "Nobody", "author": "cy", "content": "c3"}},
  {"id": 5, "update_type": "Create", "ref_table": "public.note", "docname": "N4",
   "data": {"name": "N4", "content": "no title, no role"}}
]', NULL, false, (SELECT f || '[{"ref_table": "public.note", "filters": {"title": "Nobody", "public": true, "owner": "CY"},
								"link": true, "data": {"docnames": []}}]' FROM fetched)) AS processed_failed;
SELECT update_log_id, status, error FROM eventstream.sync_log
 WHERE producer_url = 'http://q.invalid' AND update_log_id > 2 ORDER BY id;
SELECT name, description, role FROM m_todo ORDER BY name;

-- What a pull asks the producer for, for such updates.
SELECT jsonb_pretty(eventstream._missing_documents('http://q.invalid', '{"updates": [
  {"update_type": "Create", "ref_table": "public.note", "docname": "N2",
   "data": {"name": "N2", "title": "Ops", "author": "bob", "content": "c2"}}]}'::jsonb, (SELECT f FROM fetched)));

-- Nested dependencies: the role's own Document rule (its department, from
-- the producer's teams) is followed too, deepest first.
CREATE TABLE m_dept (code text PRIMARY KEY, label text);
GRANT SELECT, INSERT, UPDATE, DELETE ON m_dept TO es_mapper;
ALTER TABLE m_role ADD COLUMN dept text REFERENCES m_dept;
SELECT eventstream.create_mapping('dept_from_team', 'm_dept', 'team');
SELECT eventstream.map_field('dept_from_team', 'code', 'code');
SELECT eventstream.map_field('dept_from_team', 'label', 'label');
SELECT eventstream.map_field('role_from_note', 'dept', 'team', mapping_type => 'Document', mapping => 'dept_from_team',
							 remote_value_filters => '{"code": "team"}');
UPDATE fetched SET f = f || '[
  {"ref_table": "public.note", "filters": {"title": "Chief", "public": true, "owner": "DEE"}, "link": true,
   "data": {"docnames": ["R9"]}},
  {"ref_table": "public.note", "docname": "R9", "link": true, "data": {"name": "R9", "title": "Chief", "team": "T1"}}
]';
-- The first level fetched, the pull asks for the second.
SELECT w->>'ref_table' AS ref_table, w->'filters' AS filters, w->>'docname' AS docname
  FROM jsonb_array_elements(eventstream._missing_documents('http://q.invalid', '{"updates": [
  {"update_type": "Create", "ref_table": "public.note", "docname": "N9",
   "data": {"name": "N9", "title": "Chief", "author": "dee", "content": "c9"}}]}'::jsonb, (SELECT f FROM fetched))) w;
UPDATE fetched SET f = f || '[
  {"ref_table": "public.team", "filters": {"code": "T1"}, "link": true, "data": {"docnames": ["T1"]}},
  {"ref_table": "public.team", "docname": "T1", "link": true, "data": {"code": "T1", "label": "Team One"}}
]';
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 9, "update_type": "Create", "ref_table": "public.note", "docname": "N9",
   "data": {"name": "N9", "title": "Chief", "author": "dee", "content": "c9"}}
]', NULL, false, (SELECT f FROM fetched)) AS processed_failed;
SELECT t.name, r.role_name, d.code, d.label
  FROM m_todo t JOIN m_role r ON r.id = t.role JOIN m_dept d ON d.code = r.dept WHERE t.name = 'N9';
SELECT note FROM eventstream.sync_log WHERE producer_url = 'http://q.invalid' AND update_log_id = 9;

-- An eval: filter runs read-only as the subscriber: one that writes fails
-- the update, with the expression named.
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "eval:nextval(''m_role_id_seq'')"}');
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 6, "update_type": "Create", "ref_table": "public.note", "docname": "N5",
   "data": {"name": "N5", "title": "Ops", "content": "c5"}}
]', NULL, false, '[]') AS processed_failed;
SELECT status, error FROM eventstream.sync_log WHERE producer_url = 'http://q.invalid' AND update_log_id = 6;

-- Filter specs: a field the document has (even null), else a literal.
SELECT eventstream.map_field('role_from_note', 'dept', 'team', mapping_type => 'Document', mapping => 'dept_from_team',
							 remote_value_filters => '{"code": "team", "label": "label", "kind": "label2", "n": 3}');
SELECT eventstream._mapping_link('http://q.invalid', 'es_mapper', f, '{"title": "Chief", "team": "T1", "label": null}', '[]')
		 ->'want'->'filters' AS filters
  FROM eventstream.field_mapping f WHERE f.mapping_name = 'role_from_note' AND f.local_fieldname = 'dept';

-- A row fetched as another row's dependency, of a table subscribed
-- through a mapping, is mapped too.
SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document', mapping => 'role_from_note',
							 remote_value_filters => '{"title": "title"}');
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"update_type": "Create", "ref_table": "public.note", "docname": "N8", "data": {"name": "N8", "content": "fetched"}}
]', 'dependency', true) AS processed_failed;
SELECT name, description, status, priority FROM m_todo WHERE name = 'N8';

-- Delete: routed to the mapped row.
SELECT eventstream._apply_updates('http://q.invalid', 'es_mapper', '[
  {"id": 7, "update_type": "Delete", "ref_table": "public.note", "docname": "N1", "data": null}
]', NULL, false) AS processed_failed;
SELECT name FROM m_todo ORDER BY name;

-- A mapping in use cannot be dropped or moved to other tables.
SELECT eventstream.drop_mapping('todo_from_note');
SELECT eventstream.alter_mapping('todo_from_note', remote_table => 'memo');
DELETE FROM eventstream.producer WHERE producer_url = 'http://q.invalid';
SELECT eventstream.unmap_field('todo_from_note', 'm_step');
SELECT eventstream.drop_mapping('todo_from_note');
SELECT eventstream.drop_mapping('step_from_item');
SELECT eventstream.unmap_field('role_from_note', 'dept');
SELECT eventstream.drop_mapping('dept_from_team');
SELECT mapping_name FROM eventstream.document_type_mapping;
DROP TABLE fetched, m_step, m_todo, m_role, m_dept, m_other;
DROP ROLE es_mapper;
