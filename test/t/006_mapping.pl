# Mappings between real sites talking HTTP on loopback: a producer with
# Frappe-like "note" documents and a consumer whose tables are shaped
# differently (todo, role, person, todo_step), written through
# eventstream's Document Type Mappings.  Covers Frappe's test_mapping and
# test_inner_mapping (translated), defaults on create, a child table mapped
# with renamed columns through insert / row change / row removal, a child
# table the mapping does not cover, Document dependencies found by
# filters (a field, a literal and an eval: expression) and found again
# later without a duplicate, the resync of a mapped update, the
# background worker doing all of it by itself, and an eval: filter that
# raises on some documents (those updates alone fail).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');

# The producer: notes with items and tags (child tables), and users.
sq($P, q{
	CREATE TABLE users (name text PRIMARY KEY, full_name text, email text, active boolean NOT NULL DEFAULT true);
	CREATE TABLE note (name text PRIMARY KEY, title text, content text, state text, owner text REFERENCES users);
	CREATE TABLE note_item (note text REFERENCES note ON DELETE CASCADE, idx int, body text, checked boolean,
							PRIMARY KEY (note, idx));
	CREATE TABLE note_tag (note text REFERENCES note ON DELETE CASCADE, tag text, PRIMARY KEY (note, tag));
	SELECT eventstream.add_child_table('note', 'note_item');
	SELECT eventstream.add_child_table('note', 'note_tag');
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	INSERT INTO users VALUES ('ann', 'Ann Archer', 'ann@example.com', true), ('bob', 'Bob Baker', 'bob@example.com', true),
							 ('old', 'Old Timer', 'old@example.com', false);
});

# The consumer: other tables, other column names, no note table at all.
# A person gets its own key from a sequence; a role is named by its name.
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($C, q{
	CREATE TABLE role (role_name text PRIMARY KEY, origin text);
	CREATE TABLE person (id serial PRIMARY KEY, full_name text, email text);
	CREATE TABLE todo (name text PRIMARY KEY, description text, status text NOT NULL DEFAULT 'New',
					   role text REFERENCES role, assigned_to int REFERENCES person);
	CREATE TABLE todo_step (todo text REFERENCES todo ON DELETE CASCADE, line int, what text, done boolean NOT NULL,
							PRIMARY KEY (todo, line));
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	GRANT USAGE ON SEQUENCE person_id_seq TO applier;
});

my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer('$P->{url}', '$key', '$secret', 'applier', '{}')");

######################################################################
# Frappe's test_mapping: ToDo <- Note, description <- content
######################################################################

sq($C, q{
	SELECT eventstream.create_mapping('todo_from_note', 'todo', 'note');
	SELECT eventstream.map_field('todo_from_note', 'description', 'content');
});
my ($ret, $out, $err) = q_try($C, "SELECT eventstream.subscribe('$P->{url}', 'users', mapping => 'todo_from_note')");
isnt($ret, 0, 'subscribe refuses a mapping for another remote table');
like($err, qr/mapping "todo_from_note" is for remote table "public.note", not "public.users"/, '  and says which');
sq($C, "SELECT eventstream.subscribe('$P->{url}', NULL, mapping => 'todo_from_note')");
is(sq($C, "SELECT ref_table || ' ' || local_table || ' ' || mapping FROM eventstream.producer_table"),
	'public.note todo todo_from_note', 'the subscription is to the remote note table, written into todo');
is(sq($P, "SELECT ref_table || ' ' || status FROM eventstream.consumer_table WHERE consumer_url = '$C->{url}'"),
	'public.note Pending', 'the producer has the consumer subscribed to note');
sq($P, "SELECT eventstream.approve('$C->{url}', 'note')");
# (the initial sync of the empty table is over before the first note)
ok(wait_query($C, "SELECT status || ' ' || snapshot_pending::text FROM eventstream.producer_table", 'Approved false', 30),
	'the approval reaches the consumer');

sq($P, "INSERT INTO note (name, title, content) VALUES ('N1', 'Mapping Tester', 'Mapping Test Content')");
sync_now($C, $P->{url});
is(rows($C, 'todo'), '(N1,"Mapping Test Content",New,,)', '#12 after the insert the ToDo has the note content');
sq($P, "UPDATE note SET content = 'Mapping Test Content Updated' WHERE name = 'N1'");
sync_now($C, $P->{url});
is(sq($C, "SELECT description FROM todo WHERE name = 'N1'"), 'Mapping Test Content Updated',
	'#12 after the update the ToDo has the new content');
sq($P, "DELETE FROM note WHERE name = 'N1'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM todo WHERE description LIKE 'Mapping Test%'"), '0', '#12 after the delete it is gone');
is(sq($C, "SELECT string_agg(update_type || ':' || status || ':' || ref_table || ':' || remote_ref_table, ',' ORDER BY id) "
	  . "FROM eventstream.sync_log WHERE remote_docname = 'N1'"),
	'Create:Synced:public.todo:public.note,Update:Synced:public.todo:public.note,Delete:Synced:public.todo:public.note',
	'#12 three sync log entries, local and remote table named');
is(sq($C, "SELECT data->>'content' FROM eventstream.sync_log WHERE remote_docname = 'N1' AND update_type = 'Create'"),
	'Mapping Test Content', '#12 the sync log keeps the payload as received (remote names)');

######################################################################
# Frappe's test_inner_mapping: a Role made from the note, linked
######################################################################

sq($C, q{
	SELECT eventstream.create_mapping('role_from_note', 'role', 'note');
	SELECT eventstream.map_field('role_from_note', 'role_name', 'title');
	SELECT eventstream.map_field('role_from_note', 'origin', default_value => 'made from a note');
	SELECT eventstream.map_field('todo_from_note', 'role', 'title', mapping_type => 'Document',
								 mapping => 'role_from_note', remote_value_filters => '{"title": "title"}');
});
sq($P, "INSERT INTO note (name, title, content) VALUES ('N2', 'Inner Mapping Tester', 'Test Content')");
sync_now($C, $P->{url});
is(rows($C, 'role'), '("Inner Mapping Tester","made from a note")', '#13 the Role was made from the note (dependency)');
is(rows($C, 'todo', "name = 'N2'"), '(N2,"Test Content",New,"Inner Mapping Tester",)',
	'#13 the ToDo has the content and links to that Role');
is(sq($C, "SELECT local_docname || ' <- ' || remote_docname FROM eventstream.remote_document WHERE local_table = 'role'::regclass"),
	'Inner Mapping Tester <- N2', '#13 the Role is recorded under the remote note it came from');
sq($P, "UPDATE note SET content = 'Test Content 2', title = 'Inner Mapping Tester' WHERE name = 'N2'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) || ' ' || max(role_name) FROM role"), '1 Inner Mapping Tester',
	'#13 an update that links again finds the Role (no duplicate)');
is(sq($C, "SELECT description || ' ' || role FROM todo WHERE name = 'N2'"), 'Test Content 2 Inner Mapping Tester',
	'#13 and the ToDo still links to it');

######################################################################
# Defaults on create
######################################################################

sq($C, "SELECT eventstream.map_field('todo_from_note', 'status', 'state', default_value => 'Open')");
sq($P, q{
	INSERT INTO note (name, content) VALUES ('D1', 'no state');
	INSERT INTO note (name, content, state) VALUES ('D2', 'closed one', 'Closed');
});
sync_now($C, $P->{url});
is(sq($C, "SELECT string_agg(name || ':' || status, ',' ORDER BY name) FROM todo WHERE name LIKE 'D%'"),
	'D1:Open,D2:Closed', 'a missing remote value takes the default; a present one wins');
sq($P, "UPDATE note SET state = 'Done' WHERE name = 'D1'");
sync_now($C, $P->{url});
is(sq($C, "SELECT status FROM todo WHERE name = 'D1'"), 'Done', 'an update sets the mapped column');

######################################################################
# A child table mapped with renamed columns
######################################################################

sq($C, q{
	SELECT eventstream.create_mapping('step_from_item', 'todo_step', 'note_item');
	SELECT eventstream.map_field('step_from_item', 'line', 'idx');
	SELECT eventstream.map_field('step_from_item', 'what', 'body');
	SELECT eventstream.map_field('step_from_item', 'done', 'checked', default_value => 'false');
	SELECT eventstream.map_field('todo_from_note', 'todo_step', 'note_item', mapping_type => 'Child Table',
								 mapping => 'step_from_item');
});
sq($P, q{
	BEGIN;
	INSERT INTO note (name, content) VALUES ('K1', 'with steps');
	INSERT INTO note_item VALUES ('K1', 1, 'draft', true), ('K1', 2, 'review', NULL), ('K1', 3, 'print', false);
	COMMIT;
});
sync_now($C, $P->{url});
is(rows($C, 'todo_step'), "(K1,1,draft,t)\n(K1,2,review,f)\n(K1,3,print,f)",
	'every child row arrives, renamed, the default where the value is null');
sq($P, q{
	BEGIN;
	UPDATE note_item SET body = 'draft 2', checked = false WHERE note = 'K1' AND idx = 1;
	DELETE FROM note_item WHERE note = 'K1' AND idx = 2;
	INSERT INTO note_item VALUES ('K1', 4, 'ship', true);
	COMMIT;
});
sync_now($C, $P->{url});
is(rows($C, 'todo_step'), "(K1,1,\"draft 2\",f)\n(K1,3,print,f)\n(K1,4,ship,t)",
	'row changed, row removed and row added, through the child mapping');

# A child table the mapping has no rule for: left out, with a note.
sq($P, "INSERT INTO note_tag VALUES ('K1', 'urgent')");
sync_now($C, $P->{url});
is(sq($C, "SELECT status || ': ' || note FROM eventstream.sync_log WHERE id = (SELECT max(id) FROM eventstream.sync_log)"),
	'Synced: added rows of child table public.note_tag left out: mapping "todo_from_note" has no rule for it',
	'an update of an unmapped child table is Synced with a note, the stream goes on');
sq($P, "UPDATE note SET content = 'after the tag' WHERE name = 'K1'");
sync_now($C, $P->{url});
is(sq($C, "SELECT description FROM todo WHERE name = 'K1'"), 'after the tag', '  and the next update applies');

######################################################################
# Document dependencies found by filters: a field of the remote
# document, a literal and an eval: expression; local keys from a sequence
######################################################################

sq($C, q{
	SELECT eventstream.create_mapping('person_from_user', 'person', 'users');
	SELECT eventstream.map_field('person_from_user', 'full_name', 'full_name');
	SELECT eventstream.map_field('person_from_user', 'email', 'email');
	SELECT eventstream.map_field('todo_from_note', 'assigned_to', 'owner', mapping_type => 'Document',
		mapping => 'person_from_user',
		remote_value_filters => '{"name": "owner", "active": true, "email": "eval:lower(doc->>''owner'') || ''@example.com''"}');
});
sq($P, q{
	INSERT INTO note (name, content, owner) VALUES ('A1', 'for ann', 'ann');
	INSERT INTO note (name, content, owner) VALUES ('A2', 'also for ann', 'ann');
});
sync_now($C, $P->{url});
is(rows($C, 'person'), '(1,"Ann Archer",ann@example.com)', 'the person was made once, with a local key');
is(sq($C, "SELECT string_agg(name || ':' || assigned_to, ',' ORDER BY name) FROM todo WHERE name LIKE 'A%'"),
	'A1:1,A2:1', 'both ToDos link to it');
sq($P, "UPDATE note SET owner = 'bob' WHERE name = 'A1'");
sync_now($C, $P->{url});
sq($P, "UPDATE note SET owner = 'ann' WHERE name = 'A1'");
sync_now($C, $P->{url});
is(sq($C, "SELECT string_agg(id || ':' || full_name, ',' ORDER BY id) FROM person"), '1:Ann Archer,2:Bob Baker',
	'an update links to another person and back: found again through the remote name, no duplicate');
is(sq($C, "SELECT assigned_to FROM todo WHERE name = 'A1'"), '1', '  the ToDo links to Ann again');

# The literal filter excludes an inactive user: that update fails, the
# rest applies; once the producer has a match, resync maps and applies it.
sq($P, q{
	BEGIN;
	INSERT INTO note (name, content, owner) VALUES ('F1', 'for the old timer', 'old');
	INSERT INTO note (name, content) VALUES ('F2', 'no owner');
	COMMIT;
});
sync_now($C, $P->{url});
my $failed = sq($C, "SELECT id FROM eventstream.sync_log WHERE remote_docname = 'F1' AND status = 'Failed'");
ok($failed, 'an update whose dependency the producer does not have is Failed');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE id = $failed"),
	qr/no public\.users on the producer matches .*"active": true/, '  the error says which filters matched nothing');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'F2'"), '1', '  the other update of the transaction applied');
sq($P, "UPDATE users SET active = true WHERE name = 'old'");
is(sq($C, "SELECT eventstream.resync($failed)"), 'Synced', 'resync fetches the dependency, maps and applies the update');
is(sq($C, "SELECT p.full_name FROM todo t JOIN person p ON p.id = t.assigned_to WHERE t.name = 'F1'"), 'Old Timer',
	'  the ToDo links to the person made for it');
is(sq($C, "SELECT data->>'owner' || ' ' || (data ? 'assigned_to')::text FROM eventstream.sync_log WHERE id = $failed"),
	'old false', '  the sync log still holds the payload as received');

######################################################################
# The background worker does the same by itself
######################################################################

sq($P, q{
	BEGIN;
	INSERT INTO users VALUES ('cy', 'Cy Cole', 'cy@example.com', true);
	INSERT INTO note (name, title, content, owner) VALUES ('W1', 'Worker Role', 'by the worker', 'cy');
	INSERT INTO note_item VALUES ('W1', 1, 'one', true), ('W1', 2, 'two', false);
	COMMIT;
});
ok(wait_query($C, "SELECT t.description || ' ' || t.role || ' ' || p.full_name FROM todo t JOIN person p ON p.id = t.assigned_to "
		  . "WHERE t.name = 'W1'", 'by the worker Worker Role Cy Cole', 60),
	'the worker maps, fetches both dependencies and links them');
is(rows($C, 'todo_step', "todo = 'W1'"), "(W1,1,one,t)\n(W1,2,two,f)", '  with the child rows');
sq($P, "UPDATE note SET content = 'updated by the worker', owner = 'bob' WHERE name = 'W1'");
ok(wait_query($C, "SELECT t.description || ' ' || p.full_name FROM todo t JOIN person p ON p.id = t.assigned_to "
		  . "WHERE t.name = 'W1'", 'updated by the worker Bob Baker', 60),
	'  and an update that links to another document');
is(sq($C, "SELECT count(*) FROM person"), '4', '  still one person per user (ann, bob, old, cy)');

# A second mapped subscription, with its own keys here and an initial
# sync: the producer's users become persons; those made before as
# dependencies are found through their remote names, not made again.
sq($P, "INSERT INTO users VALUES ('dee', 'Dee Dean', 'dee\@example.com', true)");
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'users', use_same_name => false, mapping => 'person_from_user')");
sq($P, "SELECT eventstream.approve('$C->{url}', 'users')");
ok(wait_query($C, "SELECT string_agg(full_name, ',' ORDER BY id) FROM person",
		'Ann Archer,Bob Baker,Old Timer,Cy Cole,Dee Dean', 60),
	'initial sync through the mapping: the one new user arrives, the others are found again (no duplicate)');
sq($P, "UPDATE users SET full_name = 'Ann Archer-Smith' WHERE name = 'ann'");
ok(wait_query($C, "SELECT full_name FROM person WHERE id = 1", 'Ann Archer-Smith', 60),
	'an update of a user reaches the person made earlier as a dependency');
is(sq($C, "SELECT string_agg(remote_docname || '=' || local_docname, ',' ORDER BY remote_docname) FROM eventstream.remote_document "
	  . "WHERE local_table = 'person'::regclass"), 'ann=1,bob=2,cy=4,dee=5,old=3', 'remote names of all persons');

######################################################################
# An eval: filter that raises on some documents (here: it calls a
# function the subscriber may not execute) fails those updates alone,
# as the worker applies them; the stream goes on; resync after the fix
######################################################################

sq($C, q{
	CREATE FUNCTION owner_email(owner text) RETURNS text LANGUAGE sql AS $$ SELECT lower(owner) || '@example.com' $$;
	REVOKE EXECUTE ON FUNCTION owner_email(text) FROM PUBLIC;
});
sq($C, q{
	SELECT eventstream.map_field('todo_from_note', 'assigned_to', 'owner', mapping_type => 'Document',
		mapping => 'person_from_user',
		remote_value_filters => '{"name": "owner", "email": "eval:CASE WHEN doc->>''content'' LIKE ''guarded%'' THEN public.owner_email(doc->>''owner'') ELSE lower(doc->>''owner'') || ''@example.com'' END"}');
});
sq($P, "INSERT INTO note (name, content, owner) VALUES ('E1', 'guarded note', 'ann')");
sq($P, "INSERT INTO note (name, content, owner) VALUES ('E2', 'plain note', 'bob')");
ok(wait_query($C, "SELECT status FROM eventstream.sync_log WHERE remote_docname = 'E2'", 'Synced', 60),
	'a later update is Synced after one whose eval: filter raises (the worker was not stuck on the page)');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'E2' AND assigned_to = 2"), '1', '  and linked to its person');
my $evalfail = sq($C, "SELECT id FROM eventstream.sync_log WHERE remote_docname = 'E1' AND status = 'Failed'");
ok($evalfail, 'the update whose eval: filter raised is Failed');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE id = $evalfail"),
	qr/eval: filter .* failed: permission denied for function owner_email/, '  with the filter\'s error');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'E1'"), '0', '  and nothing of it was applied');
unlike(sq($C, "SELECT coalesce(last_error, '') FROM eventstream.producer"), qr/owner_email/,
	'  the producer has no error for it');
sq($C, 'GRANT EXECUTE ON FUNCTION owner_email(text) TO applier');
is(sq($C, "SELECT eventstream.resync($evalfail)"), 'Synced', 'once the subscriber may call the function, resync applies it');
is(sq($C, "SELECT assigned_to FROM todo WHERE name = 'E1'"), '1', '  linked to the person the filter finds');

is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed' AND resynced_at IS NULL"), '0',
	'nothing else failed');

done_testing();
