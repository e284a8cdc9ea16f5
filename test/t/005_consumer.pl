# The consumer side between real sites talking HTTP on loopback: a
# producer and a consumer (and a third site for a cascade), each a
# PostgreSQL::Test::Cluster node whose database has the extension and an
# HTTP port.  Covers Frappe's test scenarios (translated; the mapping ones
# are in 006_mapping.pl), commits out of order, crashes of either
# side in the middle of a large batch, a producer that is down for a while,
# unsubscribing and rejection, a failing update and its resync, a producer
# that misbehaves (a fake one written here), loops (two-way and cascade),
# add_producer's errors, initial sync, and updates of documents the
# consumer lacks.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline.  "Pull" in Frappe's tests is eventstream.sync_now(),
# which pulls and applies everything the producer has now, whatever the
# background worker is doing; elsewhere the background worker does the
# work and the test polls for its result.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(time);
use EsSites;		# wait_until, sq, q_try, wait_query, rows, digest, new_node, add_site, ...

my $schema = q{
	CREATE TABLE users (name text PRIMARY KEY, full_name text);
	CREATE TABLE roles (name text PRIMARY KEY);
	CREATE TABLE note (name text PRIMARY KEY, title text, public boolean NOT NULL DEFAULT false, content text);
	CREATE TABLE note_seen_by (note text NOT NULL REFERENCES note ON DELETE CASCADE,
							   seen_by text NOT NULL REFERENCES users, PRIMARY KEY (note, seen_by));
	CREATE TABLE todo (name text PRIMARY KEY, description text, reference_type text, reference_name text,
					   role text REFERENCES roles, assigned_by text REFERENCES users);
	CREATE TABLE item (name text PRIMARY KEY, v text);
	CREATE TABLE secret_doc (name text PRIMARY KEY, v text);
	CREATE TABLE bulk (id int PRIMARY KEY, v text);
	CREATE TABLE shared (name text PRIMARY KEY, v text);
};

# Tables and grants of a consuming database: the same tables; the local
# ToDo gets its own keys from a sequence when use_same_name is false.
sub consumer_schema
{
	my ($s) = @_;
	sq($s, $schema . q{
		CREATE SEQUENCE todo_local_seq;
		ALTER TABLE todo ALTER name SET DEFAULT 'LOCAL-' || nextval('todo_local_seq');
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
		GRANT USAGE ON SEQUENCE todo_local_seq TO applier;
		SELECT eventstream.add_dynamic_link('todo', 'reference_type', 'reference_name');
	});
}

sub worker_pid
{
	my ($s) = @_;
	return sq($s, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = '$s->{db}'");
}

my $t0 = time;

######################################################################
# Set-up: a producer and a consumer
######################################################################

my $P = add_site(new_node('producer'), 'site');
# The consumer's node comes back by itself after a crash (section C).
my $C = add_site(new_node('consumer', "restart_after_crash = on\n"), 'site');

sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	SELECT eventstream.add_child_table('note', 'note_seen_by');
	SELECT eventstream.add_dynamic_link('todo', 'reference_type', 'reference_name');
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
consumer_schema($C);

is(sq($C, 'SELECT eventstream._site_url()'), $C->{url}, "the consumer's site URL is its HTTP address");

my ($key, $secret) = key_pair($P, 'branch');
my ($ret, $out, $err) = q_try($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', "
	  . "api_secret => '$secret', subscriber => 'postgres', tables => ARRAY['note', 'todo'])");
isnt($ret, 0, 'add_producer refuses a superuser as subscriber');
like($err, qr/superuser/, '  and says why');

sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['note', 'todo'])");
is(sq($P, "SELECT string_agg(ref_table || ':' || status, ',' ORDER BY ref_table) FROM eventstream.consumer_table "
	  . "WHERE consumer_url = '$C->{url}'"),
	'public.note:Pending,public.todo:Pending', 'the consumer is registered on the producer, Pending');
is(sq($C, "SELECT string_agg(ref_table || ':' || status, ',' ORDER BY ref_table) FROM eventstream.producer_table "
	  . "WHERE producer_url = '$P->{url}'"),
	'public.note:Pending,public.todo:Pending', 'and the consumer mirrors the statuses');
is(sq($C, "SELECT producer_site_id FROM eventstream.producer WHERE producer_url = '$P->{url}'"),
	$P->{site_id}, "the consumer knows the producer's site_id");

# Two approvals in a row: the second one's news must not be spent on the
# answer to a long-poll the consumer gave up (it asks again after applying
# the first), so both arrive well before the 25 s a parked long-poll waits.
sq($P, "SELECT eventstream.approve('$C->{url}', 'note'); SELECT eventstream.approve('$C->{url}', 'todo')");
ok(wait_query($C, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table "
		  . "WHERE producer_url = '$P->{url}'", 'Approved,Approved', 15),
	'approval reaches the consumer by itself (the worker mirrors it), within 15 s, not a long-poll\'s 25 s');

# eventstream.subscribe(producer_url, table$args) on a site, as an
# assertion.
sub subscribe
{
	my ($s, $url, $table, $args) = @_;
	$args //= '';
	my ($ret, $out, $err) = q_try($s, "SELECT eventstream.subscribe('$url', '$table'$args)");
	ok($ret == 0, "subscribe('$table'$args) on $s->{name} succeeds") or diag((split /\n/, $err)[0]);
}

######################################################################
# A. Frappe's scenarios (test_event_producer.py), translated
######################################################################

# 1. test_insert
sq($P, "INSERT INTO todo (name, description) VALUES ('T1', 'test insert')");
like(sync_now($C, $P->{url}), qr/^\d+$/, '#1 sync_now returns a count');
is(rows($C, 'todo', "name = 'T1'"), rows($P, 'todo', "name = 'T1'"), '#1 insert: the ToDo is on the consumer, same values');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'T1'"), '1', '#1 exactly one row');

# 2. test_update: Create and Update pulled together
sq($P, "INSERT INTO todo (name, description) VALUES ('T2', 'test update')");
sq($P, "UPDATE todo SET description = 'test update 2' WHERE name = 'T2'");
sync_now($C, $P->{url});
is(sq($C, "SELECT description FROM todo WHERE name = 'T2'"), 'test update 2', '#2 update: the new description');
is(sq($C, "SELECT string_agg(update_type || ':' || status, ',' ORDER BY update_log_id) FROM eventstream.sync_log "
	  . "WHERE remote_ref_table = 'public.todo' AND remote_docname = 'T2'"),
	'Create:Synced,Update:Synced', '#2 a Create then an Update, both Synced');

# 3. test_delete
sq($P, "INSERT INTO todo (name, description) VALUES ('T3', 'test delete')");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'T3'"), '1', '#3 the ToDo arrived');
sq($P, "DELETE FROM todo WHERE name = 'T3'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'T3'"), '0', '#3 delete: the ToDo is gone from the consumer');

# 4. test_multiple_doctypes_sync, in one producer transaction: the consumer
# applies it in one transaction, so Note2 is never seen there.
sq($P, q{
	BEGIN;
	INSERT INTO todo (name, description) VALUES ('T4', 'multiple doctypes');
	INSERT INTO note (name, title, content) VALUES ('N4-1', 'Note 1', 'content 1');
	INSERT INTO note (name, title, content) VALUES ('N4-2', 'Note 2', 'content 2');
	UPDATE todo SET description = 'multiple doctypes 2' WHERE name = 'T4';
	UPDATE note SET content = 'content 1 changed' WHERE name = 'N4-1';
	DELETE FROM note WHERE name = 'N4-2';
	COMMIT;
});
sync_now($C, $P->{url});
is(sq($C, "SELECT description FROM todo WHERE name = 'T4'"), 'multiple doctypes 2', '#4 ToDo with its new description');
is(sq($C, "SELECT content FROM note WHERE name = 'N4-1'"), 'content 1 changed', '#4 Note1 with its new content');
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N4-2'"), '0', '#4 Note2 is not on the consumer');
is(sq($C, "SELECT count(*) || ' ' || count(DISTINCT created_at) FROM eventstream.sync_log "
	  . "WHERE remote_docname IN ('T4', 'N4-1', 'N4-2')"),
	'6 1', '#4 the six updates were applied in one local transaction');

# 5. test_child_table_sync_with_dependencies (fixed: the Note and its child
# row are checked too).  The user exists only on the producer.
sq($P, q{
	INSERT INTO users VALUES ('test_user@sync.com', 'Sync Test');
	BEGIN;
	INSERT INTO note (name, title, content) VALUES ('N5', 'Test Note', 'child table test');
	INSERT INTO note_seen_by VALUES ('N5', 'test_user@sync.com');
	COMMIT;
});
sync_now($C, $P->{url});
is(sq($C, "SELECT title FROM note WHERE name = 'N5'"), 'Test Note', '#5 the Note is on the consumer');
is(sq($C, "SELECT count(*) FROM users WHERE name = 'test_user\@sync.com'"), '1',
	'#5 the user came along as a dependency');
is(rows($C, 'note_seen_by', "note = 'N5'"), rows($P, 'note_seen_by', "note = 'N5'"),
	'#5 the Note has its one seen_by row');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname = 'N5' AND status = 'Failed'"),
	'0', '#5 nothing Failed');

# 6. test_dynamic_link_dependencies_synced: ToDo only; its reference is a
# Note the consumer does not subscribe to.  Two more Notes are made while
# Notes are not subscribed, for #8's initial sync.
sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'note')");
is(sq($P, "SELECT unsubscribed FROM eventstream.consumer_table WHERE consumer_url = '$C->{url}' AND ref_table = 'public.note'"),
	't', '#6 the producer knows of the unsubscription at once');
sq($P, q{
	INSERT INTO note (name, title, content) VALUES ('N6', 'Dynamic Link', 'referenced by a ToDo');
	INSERT INTO todo (name, description, reference_type, reference_name)
		VALUES ('T6', 'dynamic link', 'public.note', 'N6');
	INSERT INTO note (name, title, public, content) VALUES ('N8-old-private', 'before #8', false, 'private');
	INSERT INTO note (name, title, public, content) VALUES ('N8-old-public', 'before #8', true, 'public');
});
sync_now($C, $P->{url});
is(sq($C, "SELECT reference_type || ' ' || reference_name FROM todo WHERE name = 'T6'"), 'public.note N6',
	'#6 the ToDo arrived with its dynamic link');
is(rows($C, 'note', "name = 'N6'"), rows($P, 'note', "name = 'N6'"),
	'#6 the referenced Note was fetched under the same name');
is(sq($C, "SELECT count(*) FROM note WHERE name LIKE 'N8-old%'"), '0', '#6 (no other Note arrived)');

# 8. test_conditional_events: doc.public.  Subscribing again with a
# condition first copies the Notes that exist and match it (initial sync).
subscribe($C, $P->{url}, 'note', ", condition => 'doc.public'");
is(sq($P, "SELECT condition || ' ' || status || ' ' || unsubscribed FROM eventstream.consumer_table "
	  . "WHERE consumer_url = '$C->{url}' AND ref_table = 'public.note'"),
	'doc.public Approved false', '#8 the condition reached the producer; subscribing again kept the approval');
sync_now($C, $P->{url});
is(rows($C, 'note', "name = 'N8-old-public'"), rows($P, 'note', "name = 'N8-old-public'"),
	'#8 initial sync copies an existing Note that matches the condition');
# Rows failing the condition never leave the producer (DESIGN §4.6), by
# the stream or by an initial sync (the snapshot is asked for as this
# consumer, and the producer applies its condition).
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N8-old-private'"), '0',
	'#8 initial sync does not copy an existing Note that fails the condition')
  or diag('its sync log: ' . sq($C, "SELECT string_agg(update_type || ' ' || status || ' (' || coalesce(note, '') || ')', '; ') "
	  . "FROM eventstream.sync_log WHERE remote_docname = 'N8-old-private'"));
sq($P, "INSERT INTO note (name, title, public, content) VALUES ('N8', 'Conditional', false, 'c1')");
sq($P, "UPDATE note SET content = 'c2' WHERE name = 'N8'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N8'"), '0', '#8 a private Note does not reach the consumer');
sq($P, "UPDATE note SET public = true WHERE name = 'N8'");
sync_now($C, $P->{url});
is(rows($C, 'note', "name = 'N8'"), rows($P, 'note', "name = 'N8'"),
	'#8 once public it arrives, with the latest content');
is(sq($C, "SELECT content FROM note WHERE name = 'N8'"), 'c2', '#8 content c2');

# 9. test_conditional_events_with_cmd
sq($P, q{
	CREATE FUNCTION public.can_sync_note(consumer text, doc jsonb, update_log jsonb) RETURNS boolean
		LANGUAGE sql STABLE AS $$ SELECT coalesce((doc->>'public')::boolean, false) $$;
	GRANT EXECUTE ON FUNCTION public.can_sync_note(text, jsonb, jsonb) TO branch;
});
subscribe($C, $P->{url}, 'note', ", condition => 'cmd: public.can_sync_note'");
sync_now($C, $P->{url});
sq($P, "INSERT INTO note (name, title, public, content) VALUES ('N9', 'Conditional cmd', false, 'd1')");
sq($P, "UPDATE note SET content = 'd2' WHERE name = 'N9'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N9'"), '0', '#9 a private Note does not reach the consumer');
sq($P, "UPDATE note SET public = true WHERE name = 'N9'");
sync_now($C, $P->{url});
is(rows($C, 'note', "name = 'N9'"), rows($P, 'note', "name = 'N9'"),
	'#9 once public it arrives, with the latest content');
is(sq($P, "SELECT count(*) FROM eventstream.consumer_table WHERE condition_error IS NOT NULL"), '0',
	'#9 the cmd: function ran without error');
subscribe($C, $P->{url}, 'note', ', condition => NULL');
sync_now($C, $P->{url});

# 7. test_naming_configuration: use_same_name false
subscribe($C, $P->{url}, 'todo', ', use_same_name => false');
sq($P, "INSERT INTO todo (name, description) VALUES ('T7', 'naming')");
sync_now($C, $P->{url});
my $local7 = sq($C, "SELECT string_agg(name, ',') FROM todo WHERE description = 'naming'");
like($local7, qr/^LOCAL-\d+$/, '#7 the ToDo got a local key from the local default');
is(sq($C, "SELECT producer_url || ' ' || remote_docname FROM eventstream.remote_name('todo', '$local7')"),
	"$P->{url} T7", "#7 remote_name gives the producer's URL and docname");
is(sq($C, "SELECT docname || ' ' || remote_docname || ' ' || use_same_name FROM eventstream.sync_log "
	  . "WHERE remote_docname = 'T7'"),
	"$local7 T7 false", '#7 the sync log has the local and the remote docname');
sq($P, "UPDATE todo SET description = 'naming 2' WHERE name = 'T7'");
sync_now($C, $P->{url});
is(sq($C, "SELECT string_agg(name || ' ' || description, ',') FROM todo WHERE description LIKE 'naming%'"),
	"$local7 naming 2", '#7 an Update reaches the row with the local key');
sq($P, "DELETE FROM todo WHERE name = 'T7'");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM todo WHERE description LIKE 'naming%'"), '0', '#7 a Delete removes it');
is(sq($C, "SELECT producer_url IS NULL AND remote_docname IS NULL FROM eventstream.remote_name('todo', '$local7')"), 't',
	'#7 and its remote name');
subscribe($C, $P->{url}, 'todo', ', use_same_name => true');

######################################################################
# B. Commits out of order on the producer
######################################################################

my $s1 = $P->{node}->background_psql('site');
$s1->query_safe("BEGIN; INSERT INTO todo (name, description) VALUES ('B1', 'first in, last out')");
sq($P, "INSERT INTO todo (name, description) VALUES ('B2', 'second in, first out')");
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'B2'", '1', 30),
	'B: the later transaction arrives while the earlier one is open');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'B1'"), '0', 'B: the open one has not');
$s1->query_safe('COMMIT');
$s1->quit;
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'B1'", '1', 30),
	'B: the earlier transaction arrives once it commits');
is(sq($P, "SELECT (SELECT id FROM eventstream.update_log WHERE docname = 'B1') "
	  . "< (SELECT id FROM eventstream.update_log WHERE docname = 'B2')"),
	't', 'B: (B1 took its log id first: the commits really were out of order)');
is(rows($C, 'todo', "name IN ('B1', 'B2')"), rows($P, 'todo', "name IN ('B1', 'B2')"), 'B: both rows, same values');

######################################################################
# L. The next page is asked for while a page is applied
######################################################################

# Without waiting for the apply to end: the consumer's worker, handed a
# page that says nothing more is waiting, long-polls for the next one
# before applying it.  Its apply is held up here by a lock on the table;
# the producer sees the request for the page after it (served_page moves
# on) all the same, and answers it as soon as there is something.
my $lock = $C->{node}->background_psql('site');
$lock->query_safe('BEGIN; LOCK TABLE todo IN SHARE MODE');
my $served_sql = "SELECT served_page FROM eventstream.consumer WHERE consumer_url = '$C->{url}'";
my $served = sq($P, $served_sql);
sq($P, "INSERT INTO todo (name, description) VALUES ('L1', 'applied behind a lock')");
ok(wait_query($C, "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
		  . "WHERE NOT l.granted AND a.backend_type = 'eventstream worker' AND a.datname = 'site'", 't', 30),
	'L: the consumer applies L1, waiting for the lock');
ok(wait_query($P, "SELECT served_page > $served FROM eventstream.consumer WHERE consumer_url = '$C->{url}'", 't', 30),
	'L: meanwhile it has asked for the page after it');
sq($P, "INSERT INTO todo (name, description) VALUES ('L2', 'committed during the apply of L1')");
is(sq($C, "SELECT count(*) FROM todo WHERE name IN ('L1', 'L2')"), '0', 'L: (nothing is applied while the lock is held)');
$lock->query_safe('COMMIT');
$lock->quit;
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name IN ('L1', 'L2')", '2', 30), 'L: both arrive once the lock is gone');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname IN ('L1', 'L2') AND status = 'Synced'"), '2',
	'L: each once');

# M. The worker's request, asked for ahead, names the cursor the worker
# stored last as ack=.  sync_now() in a session pulls that same cursor,
# which acknowledges it on the producer: the worker's request is then
# refused (its ack is older), and the worker asks again at once, with
# nothing to show for it as a failure.
my $log_at = -s $C->{node}->logfile;
is(sq($C, "SELECT eventstream.sync_now('$P->{url}')"), '0', 'M: a session pulls while the worker waits for more');
sq($P, "INSERT INTO todo (name, description) VALUES ('M1', 'after the session pulled')");
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'M1'", '1', 30), 'M: the next change arrives by the worker');
unlike(slurp_file($C->{node}->logfile, $log_at), qr/pulling from \Q$P->{url}\E failed/,
	'M: and no failed pull was logged meanwhile');
# The same when the session's pull is rolled back: the stored cursor is
# what the worker's request was after, and a plain pull of it goes through.
$log_at = -s $C->{node}->logfile;
sq($C, "BEGIN; SELECT eventstream.sync_now('$P->{url}'); ROLLBACK");
sq($P, "INSERT INTO todo (name, description) VALUES ('M2', 'after a session pulled in vain')");
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'M2'", '1', 30), 'M: after a rolled back pull too');
unlike(slurp_file($C->{node}->logfile, $log_at), qr/pulling from \Q$P->{url}\E failed/,
	'M: again without a failed pull logged');

######################################################################
# I. add_producer's errors, from a second consuming database
######################################################################

# site2 also plays the consumer of the fake producer (G): responses over
# 64 kB are refused there.
my $S2 = add_site($C->{node}, 'site2', settings => { 'eventstream.client_max_response_size' => '64kB' });
consumer_schema($S2);
my ($key2, $secret2) = key_pair($P, 'branch');
my $nowhere = 'http://127.0.0.1:' . PostgreSQL::Test::Cluster::get_free_port();

sub add_producer_sql
{
	my ($url, $k, $sec, $tables) = @_;
	return "SELECT eventstream.add_producer(producer_url => '$url', api_key => '$k', api_secret => '$sec', "
	  . "subscriber => 'applier', tables => ARRAY[$tables])";
}
my $count_s2 = "SELECT (SELECT count(*) FROM eventstream.producer) || '/' || (SELECT count(*) FROM eventstream.producer_table)";

($ret, $out, $err) = q_try($S2, add_producer_sql($nowhere, $key2, $secret2, "'note'"));
isnt($ret, 0, 'I: add_producer to a URL where nothing listens fails');
like($err, qr/could not reach \Q$nowhere\E|"\Q$nowhere\E" is not an eventstream site/, '  with a clear error');
is(sq($S2, $count_s2), '0/0', '  and leaves nothing behind');

($ret, $out, $err) = q_try($S2, add_producer_sql($P->{url}, $key2, 'not-the-secret', "'note', 'secret_doc'"));
isnt($ret, 0, 'I: add_producer with a wrong secret fails');
like($err, qr/refused the API key/, '  with a clear error');
is(sq($S2, $count_s2), '0/0', '  and leaves nothing behind');
is(sq($P, "SELECT count(*) FROM eventstream.consumer WHERE consumer_url = '$S2->{url}'"), '0',
	'  nor on the producer');

sq($S2, add_producer_sql($P->{url}, $key2, $secret2, "'note', 'secret_doc'"));
is(sq($S2, $count_s2), '1/2', 'I: add_producer after those failures works');
is(sq($P, "SELECT string_agg(ref_table || ':' || status, ',' ORDER BY ref_table) FROM eventstream.consumer_table "
	  . "WHERE consumer_url = '$S2->{url}'"),
	'public.note:Pending,public.secret_doc:Pending', '  and the producer has it');

($ret, $out, $err) = q_try($S2, add_producer_sql($P->{url}, $key2, $secret2, "'note'"));
isnt($ret, 0, 'I: adding the same producer again fails');
like($err, qr/already added/, '  saying it is already added');
is(sq($S2, $count_s2), '1/2', '  and changes nothing');

######################################################################
# E. Unsubscribe stops delivery; a rejected table never arrives
######################################################################

sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'todo')");
is(sq($P, "SELECT unsubscribed FROM eventstream.consumer_table WHERE consumer_url = '$C->{url}' AND ref_table = 'public.todo'"),
	't', 'E: the producer knows of the unsubscription at once');
sq($P, "INSERT INTO todo (name, description) VALUES ('E1', 'while unsubscribed')");
sq($P, "INSERT INTO note (name, title, content) VALUES ('E-barrier', 'after E1', 'x')");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM note WHERE name = 'E-barrier'"), '1', 'E: a later change of another table arrives');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'E1'") . '/'
	  . sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname = 'E1'"),
	'0/0', 'E: a change of the unsubscribed table does not');
subscribe($C, $P->{url}, 'todo');
sq($P, "INSERT INTO todo (name, description) VALUES ('E2', 'subscribed again')");
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'E2'", '1', 30), 'E: subscribing again resumes delivery');

# Rejected for the consumer, approved for site2: the producer logs the
# table's changes, and serves them to site2 only.
subscribe($C, $P->{url}, 'secret_doc');
sq($P, "SELECT eventstream.reject('$C->{url}', 'secret_doc'); SELECT eventstream.approve('$S2->{url}', 'secret_doc')");
sq($P, "INSERT INTO secret_doc VALUES ('S1', 'for site2 only')");
is(sq($P, "SELECT count(*) FROM eventstream.update_log WHERE ref_table = 'public.secret_doc' AND docname = 'S1'"), '1',
	'E: the producer logged the change of the rejected table (approved for another consumer)');
ok(wait_query($S2, "SELECT count(*) FROM secret_doc WHERE name = 'S1'", '1', 30), 'E: the consumer it is approved for gets it');
sq($P, "INSERT INTO note (name, title, content) VALUES ('E-barrier-2', 'after S1', 'x')");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM note WHERE name = 'E-barrier-2'"), '1', 'E: a later change of another table arrives');
is(sq($C, "SELECT count(*) FROM secret_doc") . '/'
	  . sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_ref_table = 'public.secret_doc'"),
	'0/0', 'E: the rejected table never arrives');
is(sq($C, "SELECT status FROM eventstream.producer_table WHERE producer_url = '$P->{url}' AND ref_table = 'public.secret_doc'"),
	'Rejected', 'E: the consumer shows it Rejected');

######################################################################
# F. A failing update in a batch, and its resync
######################################################################

sq($C, 'ALTER TABLE note ADD CONSTRAINT short_content CHECK (length(content) < 100)');
sq($P, q{
	BEGIN;
	INSERT INTO note (name, title, content) VALUES ('F1', 'short', 'fine');
	INSERT INTO note (name, title, content) VALUES ('F2', 'long', repeat('x', 150));
	INSERT INTO note (name, title, content) VALUES ('F3', 'short too', 'fine too');
	COMMIT;
});
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname IN ('F1', 'F2', 'F3')", '3', 30),
	'F: the batch was processed (by the worker)');
is(sq($C, "SELECT string_agg(remote_docname || ':' || status, ',' ORDER BY remote_docname) FROM eventstream.sync_log "
	  . "WHERE remote_docname IN ('F1', 'F2', 'F3')"),
	'F1:Synced,F2:Failed,F3:Synced', 'F: only the update that breaks the local CHECK failed');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_docname = 'F2'"), qr/short_content/,
	'F: its error names the constraint');
is(rows($C, 'note', "name IN ('F1', 'F3')"), rows($P, 'note', "name IN ('F1', 'F3')"),
	'F: the other updates of the batch applied');
is(sq($C, "SELECT count(*) FROM note WHERE name = 'F2'"), '0', 'F: the failed one did not');
is(sq($C, "SELECT count(DISTINCT created_at) FROM eventstream.sync_log WHERE remote_docname IN ('F1', 'F2', 'F3')"),
	'1', 'F: one local transaction for the producer transaction');
my $f2 = sq($C, "SELECT id FROM eventstream.sync_log WHERE remote_docname = 'F2'");
is(sq($C, "SELECT eventstream.resync($f2)"), 'Failed', 'F: resync while the constraint is there fails again');
sq($C, 'ALTER TABLE note DROP CONSTRAINT short_content');
is(sq($C, "SELECT eventstream.resync($f2)"), 'Synced', 'F: resync after dropping the constraint: Synced');
is(rows($C, 'note', "name = 'F2'"), rows($P, 'note', "name = 'F2'"), 'F: the row is there, as on the producer');
is(sq($C, "SELECT status || ' ' || (error IS NULL) FROM eventstream.sync_log WHERE id = $f2"), 'Synced true',
	'F: the sync log says Synced');
($ret, $out, $err) = q_try($C, "SELECT eventstream.resync($f2)");
like($err, qr/not Failed/, 'F: a Synced entry is not resynced');

######################################################################
# K and J. Documents that predate the subscription
######################################################################

sq($P, "INSERT INTO item VALUES ('K1', 'old'), ('J1', 'initial')");
subscribe($C, $P->{url}, 'item');
sq($P, "SELECT eventstream.approve('$C->{url}', 'item')");
sq($P, "UPDATE item SET v = 'new' WHERE name = 'K1'");

# The sync log of the streamed update_type update of docname: status,
# error, note, and whether $row_ok_sql holds.  Acceptable: Failed with an
# error; Synced with a note saying what happened; Synced because the row
# was there after all (initial sync, or fetched first as a dependency),
# shown by $row_ok_sql.  Not acceptable: Synced, nothing said, row wrong.
my $streamed = "SELECT count(*) FROM eventstream.sync_log WHERE update_log_id IS NOT NULL AND remote_ref_table = 'public.item' "
  . "AND remote_docname = '%s' AND update_type = '%s'";
sub not_silent
{
	my ($s, $docname, $type, $row_ok_sql) = @_;
	my $r = sq($s, "SELECT status || '|' || coalesce(error, '') || '|' || coalesce(note, '') || '|' || ($row_ok_sql) "
		  . "FROM eventstream.sync_log WHERE update_log_id IS NOT NULL AND remote_docname = '$docname' "
		  . "AND update_type = '$type' ORDER BY id DESC LIMIT 1");
	my ($status, $error, $note, $row_ok) = split /\|/, $r, 4;
	note("sync log of the $type of $docname: $r");
	return ($status eq 'Failed' && $error ne '') || ($status eq 'Synced' && ($note ne '' || $row_ok =~ /^t/));
}
ok(wait_query($C, sprintf($streamed, 'K1', 'Update'), '1', 30), 'K: the Update of a row that predates the approval was processed');
ok(not_silent($C, 'K1', 'Update', "SELECT count(*) = 1 FROM item WHERE name = 'K1' AND v = 'new'"),
	'K: an Update of a row the consumer lacks is not a silent Synced');

# Rows deleted here, then updated or deleted on the producer.
sq($P, "INSERT INTO item VALUES ('K2', 'arrives'), ('K3', 'arrives too')");
ok(wait_query($C, "SELECT count(*) FROM item WHERE name IN ('K2', 'K3')", '2', 30), 'K: K2 and K3 arrive');
sq($C, "DELETE FROM item WHERE name IN ('K2', 'K3')");
sq($P, "UPDATE item SET v = 'changed' WHERE name = 'K2'");
sq($P, "DELETE FROM item WHERE name = 'K3'");
ok(wait_query($C, sprintf($streamed, 'K2', 'Update'), '1', 30), 'K: the Update of a row deleted here was processed');
ok(not_silent($C, 'K2', 'Update', "SELECT count(*) = 1 FROM item WHERE name = 'K2' AND v = 'changed'"),
	'K: it is not a silent Synced');
ok(wait_query($C, sprintf($streamed, 'K3', 'Delete'), '1', 30), 'K: the Delete of a row deleted here was processed');
ok(not_silent($C, 'K3', 'Delete', 'SELECT false'), 'K: it is not a silent Synced');

ok(wait_query($C, "SELECT count(*) FROM item WHERE name = 'J1'", '1', 5),
	'J: a row that existed before the approval arrives');
is(rows($C, 'item', "name = 'J1'"), rows($P, 'item', "name = 'J1'"), 'J: with its values');

######################################################################
# G. A misbehaving producer (a fake one)
######################################################################

my $fake_dir = PostgreSQL::Test::Utils::tempdir();
my $fake_port = PostgreSQL::Test::Cluster::get_free_port();
my $fake_url = "http://127.0.0.1:$fake_port";
my $fake_site_id = '6b9d5c3e-0000-4000-8000-00000000fa6e';

sub set_fake_mode
{
	my ($mode) = @_;
	open my $fh, '>', "$fake_dir/mode.tmp" or die;
	print $fh $mode;
	close $fh;
	rename "$fake_dir/mode.tmp", "$fake_dir/mode" or die;
}

my $page_tables = '[{"ref_table": "public.note", "status": "Approved", "unsubscribed": false, "condition": null}]';

sub fake_create
{
	my ($id, $docname) = @_;
	return qq({"id": $id, "update_type": "Create", "ref_table": "public.note", "docname": "$docname", )
	  . qq("data": {"name": "$docname", "title": "from the fake", "public": true, "content": "fake"}, )
	  . qq("origin": null, "created_at": "2026-01-01T00:00:00Z"});
}

# Answer one request on $conn (in a child process).
sub fake_serve
{
	my ($conn) = @_;
	alarm 20;
	binmode $conn;
	my $buf = '';
	while ($buf !~ /\r\n\r\n/)
	{
		my $n = sysread($conn, $buf, 65536, length $buf);
		return if !$n;
	}
	my ($head, $body) = split /\r\n\r\n/, $buf, 2;
	my ($method, $target) = $head =~ /^(\S+) (\S+)/;
	my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
	while (defined $len && length($body) < $len)
	{
		my $n = sysread($conn, $body, 65536, length $body);
		last if !$n;
	}
	my $mode = do { local $/; open my $fh, '<', "$fake_dir/mode" or die; <$fh> };
	open my $log, '>>', "$fake_dir/requests" or die;
	syswrite $log, "$mode $method $target\n";
	close $log;

	my $status = 200;
	my $reply;
	my $page_head;    # mode current: a page's cursor and more, for its headers
	if ($target =~ m{^/api/eventstream/v1/health})
	{
		$reply = qq({"site_id": "$fake_site_id", "version": "1.0"});
	}
	elsif ($method eq 'POST' && $target =~ m{^/api/eventstream/v1/consumers})
	{
		my ($curl) = $body =~ /"consumer_url"\s*:\s*"([^"]*)"/;
		$curl //= 'x';
		# Registered anew (after a refused cursor): a position of its own.
		my $start = $mode eq 'refuse' ? 'v1/5/5:5:/5' : 'v1/1/1:1:/1';
		$reply = qq({"consumer_url": "$curl", "producer_site_id": "$fake_site_id", "cursor": "$start", )
		  . qq("tables": $page_tables});
	}
	elsif ($target =~ m{^/api/eventstream/v1/snapshot/})
	{
		# Initial sync: no rows.
		$reply = '{"documents": [], "next": null, "more": false}';
	}
	elsif ($target =~ m{^/api/eventstream/v1/updates\?(.*)$})
	{
		my $query = $1;
		my ($cursor) = $query =~ /(?:^|&)cursor=([^&]*)/;
		$cursor //= '';
		$cursor =~ s/%([0-9A-Fa-f]{2})/chr(hex($1))/ge;
		if ($mode eq 'invalid')
		{
			# A page cut short: not JSON.
			$reply = '{"updates": [' . fake_create(1, 'G1');
			$reply =~ s/\}$//;
		}
		elsif ($mode eq 'big')
		{
			# A valid page, over the consumer's 64 kB limit.
			$reply = '{"updates": [' . fake_create(2, 'G2') . qq(], "cursor": "v1/2/2:2:/2", "more": false, )
			  . qq("tables": $page_tables, "padding": ") . ('x' x (100 * 1024)) . '"}';
		}
		elsif ($mode eq 'many')
		{
			# A valid page under the consumer's 64 kB limit, but of some
			# 25,000 tiny values: megabytes to read as jsonb.
			$reply = '{"updates": [' . fake_create(5, 'G5') . qq(], "cursor": "v1/2/2:2:/2", "more": false, )
			  . qq("tables": $page_tables, "padding": [) . ('1,' x 25000) . '1]}';
		}
		elsif ($mode eq 'badutf8' || $mode eq 'nul')
		{
			# A valid page but for one byte in a value: not UTF-8, or NUL.
			$reply = '{"updates": [' . fake_create(4, 'G4') . qq(], "cursor": "v1/2/2:2:/2", "more": false, )
			  . qq("tables": $page_tables});
			$reply =~ s/"content": "fake"/'"content": "fa' . ($mode eq 'nul' ? "\x00" : "\xff\xfe") . 'ke"'/e;
		}
		elsif ($mode eq 'garbage')
		{
			# A page whose next cursor is not one a pull could take.
			$reply = '{"updates": [' . fake_create(6, 'G6') . qq(], "cursor": "not/a cursor", "more": false, )
			  . qq("tables": $page_tables});
		}
		elsif ($mode eq 'unknown' || ($mode eq 'current' && $cursor eq 'v1/6/6:6:/6'))
		{
			# A valid page, but in mode unknown the answer says protocol
			# version 3.  In mode current its headers, not its body (which
			# has no "acks"), say the producer takes ack=.  More is waiting: the
			# next request is no long-poll (one still in flight when the
			# page is applied is sent again without ack=).
			$reply = '{"updates": [' . fake_create(8, 'G8') . qq(], "cursor": "v1/7/7:7:/7", "more": true, )
			  . qq("complete": true, "tables": $page_tables});
			$page_head = [ 'v1/7/7:7:/7', 'true' ];
		}
		elsif ($mode eq 'refuse' && $cursor ne 'v1/5/5:5:/5' && $cursor ne 'v1/6/6:6:/6')
		{
			# The stored cursor is refused (say the producer was restored).
			$status = 400;
			$reply = '{"error": {"code": "22023", "message": "cursor is not current for consumer"}}';
		}
		elsif ($cursor eq 'v1/5/5:5:/5')
		{
			$reply = '{"updates": [' . fake_create(7, 'G7') . qq(], "cursor": "v1/6/6:6:/6", "more": false, )
			  . qq("tables": $page_tables});
		}
		elsif ($cursor eq 'v1/1/1:1:/1')
		{
			$reply = '{"updates": [' . fake_create(3, 'G3') . qq(], "cursor": "v1/2/2:2:/2", "more": false, )
			  . qq("tables": $page_tables});
		}
		else
		{
			# Nothing new: hold a long-poll a little, then answer empty.
			Time::HiRes::sleep(1) if $query =~ /(?:^|&)wait=/;
			$reply = qq({"updates": [], "cursor": "$cursor", "more": false, "tables": $page_tables});
			$page_head = [ $cursor, 'false' ];
		}
	}
	else
	{
		$status = 404;
		$reply = '{"error": {"code": "not_found", "message": "no such path"}}';
	}
	my $text = $status == 200 ? 'OK' : $status == 400 ? 'Bad Request' : 'Not Found';
	# Other modes send no Eventstream-* headers, as a producer older than
	# them.
	my $extra = '';
	$extra = "Eventstream-Protocol: 3\r\n" if $mode eq 'unknown';
	$extra = "Eventstream-Protocol: 2\r\n" if $mode eq 'current';
	$extra .= "Eventstream-Cursor: $page_head->[0]\r\nEventstream-More: $page_head->[1]\r\n"
	  . "Eventstream-Complete: true\r\nEventstream-Acks: true\r\n"
	  if $mode eq 'current' && $page_head && $status == 200;
	my $out = "HTTP/1.1 $status $text\r\nContent-Type: application/json\r\n$extra"
	  . "Content-Length: " . length($reply) . "\r\nConnection: close\r\n\r\n$reply";
	while (length $out)
	{
		my $n = syswrite($conn, $out);
		last if !defined $n;
		substr($out, 0, $n) = '';
	}
	close $conn;
}

set_fake_mode('invalid');
my $listen = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $fake_port, Proto => 'tcp',
	Listen => 16, ReuseAddr => 1) or die "cannot listen on $fake_port: $!";
my $fake_pid = fork();
die "fork: $!" unless defined $fake_pid;
if ($fake_pid == 0)
{
	# The fake server: one child per connection.  POSIX::_exit so that no
	# END block of the test (which stops the nodes) runs here.
	open STDOUT, '>', '/dev/null';
	open STDERR, '>', '/dev/null';
	$SIG{CHLD} = 'IGNORE';
	while (1)
	{
		my $conn = $listen->accept or next;
		my $child = fork();
		if (defined $child && $child == 0)
		{
			eval { fake_serve($conn); };
			POSIX::_exit(0);
		}
		close $conn;
	}
}
close $listen;
END { kill 'TERM', $fake_pid if $fake_pid; }

sq($S2, add_producer_sql($fake_url, 'fakekey', 'fakesecret', "'note'"));
is(sq($S2, "SELECT status FROM eventstream.producer_table WHERE producer_url = '$fake_url'"), 'Approved',
	'G: the fake producer is added, its table Approved');
my $fake_state = "SELECT state || ' ' || coalesce(last_error, '') FROM eventstream.producer_status WHERE producer_url = '$fake_url'";
my $fake_applied = "SELECT (SELECT count(*) FROM eventstream.sync_log WHERE producer_url = '$fake_url') || '/' || "
  . "(SELECT count(*) FROM note) || '/' || (SELECT count(*) FROM eventstream.inbox)";

# (a) invalid JSON
my $state = '';
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*json/i }),
	'G: a page that is not JSON puts the producer in state failing');
like($state, qr/\Q$fake_url\E/, '  and last_error names the producer');
note("last_error: $state");
is(sq($S2, $fake_applied), '0/0/0', '  nothing was applied');
($ret, $out, $err) = q_try($S2, "SELECT eventstream.sync_now('$fake_url')");
isnt($ret, 0, 'G: sync_now fails on it too');
like($err, qr/json/i, '  saying it is not JSON');

# (b) a body over eventstream.client_max_response_size
set_fake_mode('big');
# New keys make the worker retry at once instead of after its backoff.
sq($S2, "SELECT eventstream.set_keys('$fake_url', 'fakekey2', 'fakesecret2')");
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*client_max_response_size/ }),
	'G: a page over client_max_response_size: failing, and last_error names the setting');
note("last_error: $state");
is(sq($S2, $fake_applied), '0/0/0', '  nothing was applied');
($ret, $out, $err) = q_try($S2, "SELECT eventstream.sync_now('$fake_url')");
isnt($ret, 0, 'G: sync_now fails on it too');
like($err, qr/larger than eventstream\.client_max_response_size/, '  naming the setting');

# (b2) a page whose text is not valid UTF-8 (the encoding of the wire):
# an invalid byte sequence in a value, or a NUL byte
foreach my $bad (['badutf8', 'an invalid byte sequence', 'fakekey3'], ['nul', 'a NUL byte', 'fakekey4'])
{
	my ($mode, $what, $newkey) = @$bad;
	set_fake_mode($mode);
	sq($S2, "SELECT eventstream.set_keys('$fake_url', '$newkey', 'fakesecret')");
	ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*not valid UTF8 text: \Q$what\E/ }),
		"G: a page with $what in a value: failing, and last_error says so");
	note("last_error: $state");
	is(sq($S2, $fake_applied), '0/0/0', '  nothing was applied');
	($ret, $out, $err) = q_try($S2, "SELECT eventstream.sync_now('$fake_url')");
	isnt($ret, 0, 'G: sync_now fails on it too');
	like($err, qr/is not valid UTF8 text: \Q$what\E at byte \d+/, '  saying where');
}

# (b3) a page of many tiny values: under client_max_response_size, but
# its reading would take more than four times that
set_fake_mode('many');
sq($S2, "SELECT eventstream.set_keys('$fake_url', 'fakekey5', 'fakesecret')");
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*page too large/ }),
	'G: a page of too many values: failing, and last_error says the page is too large');
note("last_error: $state");
is(sq($S2, $fake_applied), '0/0/0', '  nothing was applied');

# (c) the control: a valid page is applied, exactly once.
set_fake_mode('good');
sync_now($S2, $fake_url);
is(sq($S2, "SELECT string_agg(name, ',' ORDER BY name) FROM note"), 'G3', 'G: a valid page from the fake is applied');
ok(wait_query($S2, "SELECT state FROM eventstream.producer_status WHERE producer_url = '$fake_url'", 'streaming', 30),
	'G: the producer is streaming again');
is(sq($S2, "SELECT count(*) || ' ' || string_agg(status, ',') FROM eventstream.sync_log WHERE producer_url = '$fake_url'"),
	'1 Synced', 'G: one sync log, Synced');
my $seen = PostgreSQL::Test::Utils::slurp_file("$fake_dir/requests");
like($seen, qr/^invalid GET \/api\/eventstream\/v1\/updates\?/m, 'G: (the worker pulled the invalid page)');
like($seen, qr/^big GET \/api\/eventstream\/v1\/updates\?/m, 'G: (and the big one)');
# (d) a page whose next cursor no pull could take: refused before it is
# stored, nothing of the page applied
my $fake_cursor = "SELECT cursor FROM eventstream.producer WHERE producer_url = '$fake_url'";
is(sq($S2, $fake_cursor), 'v1/2/2:2:/2', 'G: (the stored cursor)');
set_fake_mode('garbage');
sq($S2, "SELECT eventstream.set_keys('$fake_url', 'fakekey6', 'fakesecret')");
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*sent an invalid cursor "not\/a cursor"/ }),
	'G: a page with an invalid cursor: failing, and last_error says so');
note("last_error: $state");
is(sq($S2, "SELECT count(*) FROM note WHERE name = 'G6'"), '0', '  nothing of the page was applied');
is(sq($S2, $fake_cursor), 'v1/2/2:2:/2', '  the stored cursor is unchanged');
($ret, $out, $err) = q_try($S2, "SELECT eventstream.sync_now('$fake_url')");
like($err, qr/sent an invalid cursor "not\/a cursor"/, 'G: sync_now refuses it too');

# (e) the producer refuses the stored cursor: reset_cursor() starts again
# where the producer has this consumer, and copies the tables again
set_fake_mode('refuse');
sq($S2, "SELECT eventstream.set_keys('$fake_url', 'fakekey7', 'fakesecret')");
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*cursor is not current/ }),
	'G: a refused cursor: failing');
is(sq($S2, "SELECT eventstream.reset_cursor('$fake_url')"), 'v1/5/5:5:/5',
	'G: reset_cursor() takes the position the producer answers registration with');
ok(wait_query($S2, "SELECT count(*) FROM note WHERE name = 'G7'", '1', 30),
	'G: and the worker streams from there');
ok(wait_query($S2, "SELECT state || ' ' || (last_error IS NULL)::text FROM eventstream.producer_status WHERE producer_url = '$fake_url'",
		'streaming true', 30), '  the producer is streaming again');
is(sq($S2, "SELECT snapshot_pending::text FROM eventstream.producer_table WHERE producer_url = '$fake_url'"), 'false',
	'  after the initial sync it asked for again');
like(slurp_file("$fake_dir/requests"), qr/^refuse GET \/api\/eventstream\/v1\/snapshot\//m, '  (which the worker made)');
($ret, $out, $err) = q_try($S2, "SELECT eventstream.reset_cursor('http://nowhere.invalid')");
like($err, qr/producer "http:\/\/nowhere.invalid" is not added/, 'G: reset_cursor() of an unknown producer fails');

# (f) answers in a version of the protocol this site does not speak
# (Eventstream-Protocol: 3): refused whole, both versions named; in
# version 2 again, the page flows, and its headers let the worker ask for
# the next one before parsing it
is(sq($S2, $fake_cursor), 'v1/6/6:6:/6', 'G: (the stored cursor)');
set_fake_mode('unknown');
my $versions = qr/answered in version "3" of the eventstream protocol \(Eventstream-Protocol header\); this site speaks version 2/;
ok(wait_until(30, sub { $state = sq($S2, $fake_state); $state =~ /^failing .*$versions/ }),
	'G: a page in protocol version 3: failing, and last_error names both versions');
note("last_error: $state");
like($state, qr/\Q$fake_url\E/, '  and the producer');
is(sq($S2, "SELECT count(*) FROM note WHERE name = 'G8'"), '0', '  nothing of the page was applied');
is(sq($S2, $fake_cursor), 'v1/6/6:6:/6', '  the stored cursor is unchanged');
($ret, $out, $err) = q_try($S2, "SELECT eventstream.sync_now('$fake_url')");
like($err, $versions, 'G: sync_now refuses it too');
is(sq($S2, "SELECT count(*) FROM note WHERE name = 'G8'"), '0', '  nothing applied');
set_fake_mode('current');
sq($S2, "SELECT eventstream.set_keys('$fake_url', 'fakekey8', 'fakesecret')");
ok(wait_query($S2, "SELECT count(*) FROM note WHERE name = 'G8'", '1', 30),
	'G: in protocol version 2 again, the page is applied');
ok(wait_query($S2, "SELECT s.state || ' ' || (s.last_error IS NULL)::text || ' ' || p.cursor FROM eventstream.producer_status s"
		. " JOIN eventstream.producer p USING (producer_url) WHERE producer_url = '$fake_url'",
		'streaming true v1/7/7:7:/7', 30), '  the producer is streaming again, at the page\'s cursor');
ok(wait_until(30, sub { slurp_file("$fake_dir/requests") =~ /^current GET \/api\/eventstream\/v1\/updates\?[^\n]*cursor=v1%2F7%2F7%3A7%3A%2F7[^\n]*&ack=v1%2F6/m }),
	'  the next page was asked for from the headers (ack= of the stored cursor; the body has no "acks")');

sq($S2, "SELECT eventstream.remove_producer('$fake_url')");
kill 'TERM', $fake_pid;
waitpid($fake_pid, 0);
$fake_pid = 0;

######################################################################
# H. Loops: the same table both ways; a cascade A -> B -> C
######################################################################

# P -> C for shared
subscribe($C, $P->{url}, 'shared');
sq($P, "SELECT eventstream.approve('$C->{url}', 'shared')");
# C -> P for shared
$C->{node}->safe_psql('postgres', 'CREATE ROLE branch');
sq($C, 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch');
$P->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($P, 'GRANT SELECT, INSERT, UPDATE, DELETE ON shared TO applier');
my ($keyc, $secretc) = key_pair($C, 'branch');
sq($P, "SELECT eventstream.add_producer(producer_url => '$C->{url}', api_key => '$keyc', api_secret => '$secretc', "
	  . "subscriber => 'applier', tables => ARRAY['shared'])");
sq($C, "SELECT eventstream.approve('$P->{url}', 'shared')");

sq($P, "INSERT INTO shared VALUES ('H1', 'from P')");
ok(wait_query($C, "SELECT v FROM shared WHERE name = 'H1'", 'from P', 30), 'H: a change on P reaches C');
sq($C, "UPDATE shared SET v = 'from C' WHERE name = 'H1'");
ok(wait_query($P, "SELECT v FROM shared WHERE name = 'H1'", 'from C', 30), 'H: a change on C reaches P');

# Quiet: each side has nothing more for the other, twice in a row.
my $logs = "SELECT string_agg(update_type || ':' || coalesce(origin::text, 'local'), ',' ORDER BY id) "
  . "FROM eventstream.update_log WHERE ref_table = 'public.shared' AND docname = 'H1'";
my ($p_logs, $c_logs);
ok(wait_until(30, sub {
	return 0 unless sync_now($C, $P->{url}) eq '0' && sync_now($P, $C->{url}) eq '0';
	($p_logs, $c_logs) = (sq($P, $logs), sq($C, $logs));
	return sync_now($C, $P->{url}) eq '0' && sync_now($P, $C->{url}) eq '0'
	  && sq($P, $logs) eq $p_logs && sq($C, $logs) eq $c_logs;
}), 'H: both sides drain and stay quiet');
is($p_logs, "Create:local,Update:$C->{site_id}", 'H: P logged its Create and the Update from C, nothing echoed');
is($c_logs, "Create:$P->{site_id},Update:local", 'H: C logged the Create from P and its Update, nothing echoed');
is(sq($P, "SELECT consumer_url || ' ' || updates_waiting FROM eventstream.consumer_status WHERE consumer_url = '$C->{url}'"),
	"$C->{url} 0", 'H: nothing waits on P for C');
is(sq($C, "SELECT consumer_url || ' ' || updates_waiting FROM eventstream.consumer_status WHERE consumer_url = '$P->{url}'"),
	"$P->{url} 0", 'H: nothing waits on C for P');
is(rows($C, 'shared'), rows($P, 'shared'), 'H: the two sites agree');

# Cascade: a third site subscribes to C's notes.
my $T = add_site(new_node('third'), 'site');
$T->{node}->safe_psql('postgres', 'CREATE ROLE applier');
consumer_schema($T);
my ($keyt, $secrett) = key_pair($C, 'branch');
sq($T, "SELECT eventstream.add_producer(producer_url => '$C->{url}', api_key => '$keyt', api_secret => '$secrett', "
	  . "subscriber => 'applier', tables => ARRAY['note'])");
sq($C, "SELECT eventstream.approve('$T->{url}', 'note')");
sq($P, "INSERT INTO note (name, title, content) VALUES ('H-cascade', 'from A', 'cascades')");
ok(wait_query($T, "SELECT count(*) FROM note WHERE name = 'H-cascade'", '1', 30), 'H: A -> B -> C: the third site gets it');
is(rows($T, 'note', "name = 'H-cascade'"), rows($P, 'note', "name = 'H-cascade'"), 'H: with the same values');
is(sq($T, "SELECT origin FROM eventstream.sync_log WHERE remote_docname = 'H-cascade' AND update_log_id IS NOT NULL"), $P->{site_id},
	"H: and knows it came from A's site");

######################################################################
# D. The producer down for a while
######################################################################

$P->{node}->stop;
my $status_sql = "SELECT state || ' ' || (last_error IS NOT NULL) FROM eventstream.producer_status WHERE producer_url = '$P->{url}'";
ok(wait_query($C, $status_sql, 'failing true', 30), 'D: with the producer down the consumer says failing');
note('last_error: ' . sq($C, "SELECT last_error FROM eventstream.producer WHERE producer_url = '$P->{url}'"));
like(sq($C, "SELECT last_error FROM eventstream.producer WHERE producer_url = '$P->{url}'"),
	qr/\Q$P->{url}\E/, 'D: last_error names the producer');
$P->{node}->start;
ok(health_ok($P), 'D: the producer is back on the same port');
sq($P, "INSERT INTO note (name, title, content) VALUES ('D1', 'after the restart', 'x')");
ok(wait_query($C, "SELECT count(*) FROM note WHERE name = 'D1'", '1', 60), 'D: a change made after the restart arrives');
ok(wait_query($C, $status_sql, 'streaming false', 30), 'D: and the consumer is streaming again');

######################################################################
# C. Crashes in the middle of a large batch
######################################################################

# No initial sync: the table is empty, and the crash is to hit the stream.
# The consumer's apply is held by a lock on the table taken here before the
# producer writes (as in L), so the worker is inside its apply transaction
# when it is killed.
subscribe($C, $P->{url}, 'bulk', ', initial_sync => false');
sq($P, "SELECT eventstream.approve('$C->{url}', 'bulk')");
my $holder = $C->{node}->background_psql('site');
$holder->query_safe('BEGIN; LOCK TABLE bulk IN SHARE MODE');
sq($P, 'INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(1, 20000) g');
sq($P, "UPDATE bulk SET v = 'u1' WHERE id % 100 = 0");
sq($P, 'DELETE FROM bulk WHERE id % 97 = 0');
sq($P, "INSERT INTO bulk SELECT g, 'late' FROM generate_series(20001, 20100) g");
sq($P, "UPDATE bulk SET v = 'u2' WHERE id BETWEEN 10 AND 20");

# Kill the consumer's worker in the middle of applying the large window.
my $final_p = sq($P, 'SELECT count(*) FROM bulk');
ok(wait_query($C, "SELECT count(*) > 0 FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
		  . "WHERE NOT l.granted AND a.backend_type = 'eventstream worker' AND a.datname = 'site'", 't', 60),
	'C: the consumer applies the large batch, waiting for the lock');
my ($wpid, $applied_before) = split /\|/, sq($C, "SELECT (SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' "
	  . "AND datname = 'site') || '|' || (SELECT count(*) FROM bulk)");
ok(kill('KILL', $wpid), "C: kill -9 the consumer's site worker ($wpid)");
isnt($applied_before, $final_p, "C: (it had not finished: $applied_before of $final_p rows applied)");
eval { $holder->quit; };		# gone with the crash
ok(health_ok($C, 90), 'C: the consumer comes back after the crash');

my $bulk_p = digest($P, 'bulk');
ok(wait_until(120, sub { digest($C, 'bulk') eq $bulk_p }), 'C: the consumer ends with exactly the producer\'s rows');
is(digest($C, 'bulk'), $bulk_p, "C: (digest $bulk_p)");

sub exactly_once
{
	my ($what) = @_;
	my $n_p = sq($P, "SELECT count(*) FROM eventstream.update_log WHERE ref_table = 'public.bulk'");
	is(sq($C, "SELECT count(*) || ' ' || count(DISTINCT update_log_id) || ' ' || count(*) FILTER (WHERE status = 'Synced') "
		  . "FROM eventstream.sync_log WHERE remote_ref_table = 'public.bulk' AND update_log_id IS NOT NULL"),
		"$n_p $n_p $n_p", "$what: one Synced sync log per producer update ($n_p), no duplicate");
}
exactly_once('C (consumer crash)');

# The producer killed (immediate stop) while the consumer pulls.
sq($C, "ALTER SYSTEM SET eventstream.test_pause_at = 'received'");
sq($C, 'SELECT pg_reload_conf()');
my ($w_out, $w_err) = ('', '');
sq($P, 'INSERT INTO bulk SELECT g, md5(g::text) FROM generate_series(100001, 110000) g');
my $writer = IPC::Run::start(
	[ $P->{node}->installed_command('psql'), '-XAtq', '-d', $P->{node}->connstr('site'), '-c',
		q{DO $$ BEGIN FOR i IN 1..2000 LOOP INSERT INTO bulk SELECT 200000 + i * 5 + g, 'w' FROM generate_series(0, 4) g; COMMIT; END LOOP; END $$} ],
	'>', \$w_out, '2>', \$w_err);
# The consumer holds the page it has just received (eventstream.test_pause_at)
# while the producer dies, part of the writer's transactions committed.
ok(wait_query($P, 'SELECT count(*) > 0 FROM bulk WHERE id > 200000', 't', 60), 'C: the writer is under way');
my $paused = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'site' "
  . "AND state = 'active' AND query LIKE 'paused at received%'";
ok(wait_query($C, $paused, '1', 60), 'C: the consumer holds a page it received');
my $applying = sq($C, "SELECT (SELECT count(*) FROM eventstream.inbox) || ' inbox pages, ' || (SELECT count(*) FROM bulk) || ' rows'");
$P->{node}->stop('immediate');
note("producer stopped with the consumer at $applying");
sq($C, 'ALTER SYSTEM RESET eventstream.test_pause_at');
sq($C, 'SELECT pg_reload_conf()');
eval { $writer->finish; };
$P->{node}->start;
ok(health_ok($P), 'C: the producer is back');
$bulk_p = digest($P, 'bulk');
ok(wait_until(120, sub { digest($C, 'bulk') eq $bulk_p }), 'C: the consumer ends with exactly the producer\'s rows');
is(digest($C, 'bulk'), $bulk_p, "C: (digest $bulk_p)");
exactly_once('C (producer crash)');
ok(wait_query($C, $status_sql, 'streaming false', 30), 'C: and the consumer is streaming again');

######################################################################
# W. A consumer far behind takes the backlog in bounded windows (ticks)
######################################################################

# The consumer is away while six transactions of 10,000 rows commit; the
# producer's worker records a tick after each (each is more than 4000 logs).
$C->{node}->stop;
for my $i (1 .. 6)
{
	my $ticks = sq($P, 'SELECT count(*) FROM eventstream.tick');
	sq($P, "INSERT INTO bulk SELECT g, 'away' FROM generate_series(" . (300000 + $i * 10000) . ', ' . (309999 + $i * 10000) . ') g');
	wait_query($P, "SELECT count(*) > $ticks FROM eventstream.tick", 't', 30);
}
cmp_ok(sq($P, 'SELECT count(*) FROM eventstream.tick'), '>=', 6, 'W: the producer recorded ticks meanwhile');
$C->{node}->start;
$bulk_p = digest($P, 'bulk');
ok(wait_until(120, sub { digest($C, 'bulk') eq $bulk_p }), 'W: back, the consumer catches up with the producer');
exactly_once('W (catch-up)');
my $windows = sq($C, "SELECT count(DISTINCT created_at) FROM eventstream.sync_log WHERE remote_ref_table = 'public.bulk' "
	  . "AND remote_docname::int > 300000");
cmp_ok($windows, '>=', 3,
	"W: the backlog was applied in $windows local transactions (windows ending at ticks), not in one");

######################################################################
# X. A transaction larger than a page waits in the worker's memory
######################################################################

# 25,000 rows in one transaction come in three pages, applied together after
# the last one.  Up to eventstream.window_memory the first two wait in the
# worker's memory; beyond it (here 0) in eventstream.inbox.  A trigger
# counts what goes into the inbox.
sq($C, q{
	CREATE TABLE inbox_writes (n int);
	INSERT INTO inbox_writes VALUES (0);
	CREATE FUNCTION count_inbox() RETURNS trigger LANGUAGE plpgsql
		AS $$BEGIN UPDATE public.inbox_writes SET n = n + 1; RETURN NULL; END$$;
	CREATE TRIGGER count_inbox AFTER INSERT ON eventstream.inbox FOR EACH ROW EXECUTE FUNCTION count_inbox();
});
sq($P, "INSERT INTO bulk SELECT g, 'held' FROM generate_series(400001, 425000) g");
$bulk_p = digest($P, 'bulk');
ok(wait_until(60, sub { digest($C, 'bulk') eq $bulk_p }), 'X: a transaction of three pages arrives');
is(sq($C, 'SELECT n FROM inbox_writes'), '0', 'X: its first pages waited in memory, not in the inbox');
exactly_once('X (in memory)');
is(sq($C, "SELECT count(DISTINCT created_at) FROM eventstream.sync_log WHERE remote_docname::int > 400000 "
	  . "AND remote_ref_table = 'public.bulk'"), '1', 'X: applied in one local transaction');

sq($C, 'ALTER SYSTEM SET eventstream.window_memory = 0');
sq($C, 'SELECT pg_reload_conf()');
sq($P, "INSERT INTO bulk SELECT g, 'staged' FROM generate_series(425001, 450000) g");
$bulk_p = digest($P, 'bulk');
ok(wait_until(60, sub { digest($C, 'bulk') eq $bulk_p }), 'X: with eventstream.window_memory = 0 too');
cmp_ok(sq($C, 'SELECT n FROM inbox_writes'), '>=', 2, 'X: its pages went through the inbox then');
is(sq($C, "SELECT count(*) FROM eventstream.inbox"), '0', 'X: (which is empty again)');
exactly_once('X (inbox)');
is(sq($C, "SELECT count(DISTINCT created_at) FROM eventstream.sync_log WHERE remote_docname::int > 425000 "
	  . "AND remote_ref_table = 'public.bulk'"), '1', 'X: applied in one local transaction');
sq($C, 'ALTER SYSTEM RESET eventstream.window_memory');
sq($C, 'SELECT pg_reload_conf()');
sq($C, 'DROP TRIGGER count_inbox ON eventstream.inbox; DROP FUNCTION count_inbox(); DROP TABLE inbox_writes');

######################################################################
# N. Two producers feeding one table, each with its own keys here
######################################################################

# A second producer site on the producer's node; both make a document
# named N1 in table item.  The consumer keys its rows itself
# (use_same_name => false) and keeps which producer row each one is.
my $P2 = add_site($P->{node}, 'site_b');
sq($P2, $schema . q{
	CREATE ROLE branch_b;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch_b;
});
sq($C, q{
	CREATE SEQUENCE item_local_seq;
	ALTER TABLE item ALTER name SET DEFAULT 'ITEM-' || nextval('item_local_seq');
	GRANT USAGE ON SEQUENCE item_local_seq TO applier;
	DELETE FROM item;
});
my ($key_b, $secret_b) = key_pair($P2, 'branch_b');
subscribe($C, $P->{url}, 'item', ', use_same_name => false, initial_sync => false');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P2->{url}', api_key => '$key_b', api_secret => '$secret_b', "
	  . "subscriber => 'applier', tables => ARRAY['item'], initial_sync => false)");
sq($C, "SELECT eventstream.subscribe('$P2->{url}', 'item', use_same_name => false, initial_sync => false)");
# OLD is there before the approval: its Create is never logged.
sq($P2, "INSERT INTO item VALUES ('OLD', 'made before the approval')");
sq($P2, "SELECT eventstream.approve(consumer_url, 'item') FROM eventstream.consumer");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE producer_url = '$P2->{url}' AND ref_table = 'public.item'",
		'Approved', 30), 'N: the second producer approved');
sq($P, "INSERT INTO item VALUES ('N1', 'from the first producer')");
sq($P2, "INSERT INTO item VALUES ('N1', 'from the second producer')");
ok(wait_query($C, "SELECT count(*) FROM item WHERE v LIKE 'from the % producer'", '2', 30),
	'N: both documents named N1 arrived, as two rows');
is(sq($C, "SELECT string_agg(r.producer_url || ' ' || r.remote_docname || ' ' || i.v, ', ' ORDER BY i.v) "
	  . "FROM item i, LATERAL eventstream.remote_name('item', i.name) r"),
	"$P->{url} N1 from the first producer, $P2->{url} N1 from the second producer",
	'N: remote_name tells them apart');
sq($P2, "UPDATE item SET v = 'second, changed' WHERE name = 'N1'");
ok(wait_query($C, "SELECT string_agg(v, ', ' ORDER BY v) FROM item", 'from the first producer, second, changed', 30),
	"N: an Update from the second producer changes its row only");
sq($P, "DELETE FROM item WHERE name = 'N1'");
ok(wait_query($C, "SELECT string_agg(v, ', ' ORDER BY v) FROM item", 'second, changed', 30),
	"N: a Delete from the first producer removes its row only");
is(sq($C, "SELECT count(*) FROM eventstream.remote_document WHERE local_table = 'item'::regclass"), '1',
	'N: and its remote name');
# An Update of a row this site never had, kept under keys of its own: the
# row is fetched, made here with a key of its own, and updated.
sq($P2, "UPDATE item SET v = 'old, changed' WHERE name = 'OLD'");
ok(wait_query($C, "SELECT i.name LIKE 'ITEM-%' FROM item i, LATERAL eventstream.remote_name('item', i.name) r "
		. "WHERE r.remote_docname = 'OLD' AND i.v = 'old, changed'", 't', 30),
	'N: an Update of a row this site lacks fetches it (own key) and applies');
is(sq($C, "SELECT string_agg(update_type || ':' || status || ':' || coalesce(note, ''), ',' ORDER BY id) FROM eventstream.sync_log "
	  . "WHERE producer_url = '$P2->{url}' AND remote_docname = 'OLD'"),
	'Create:Synced:dependency,Update:Synced:', 'N: logged as a dependency Create, then the Update');
ok(wait_query($C, "SELECT state || ' ' || updates_received_not_applied || ' ' || more_waiting_on_producer || ' ' || lag "
		. "FROM eventstream.producer_status WHERE producer_url = '$P2->{url}'", 'streaming 0 false 00:00:00', 30),
	'N: producer_status shows the second producer caught up (no lag)');

######################################################################
# T. A producer over HTTPS: verified against eventstream.ca_file
######################################################################

my $tls_dir = PostgreSQL::Test::Utils::tempdir();
my ($o1, $o2);
ok(IPC::Run::run([ 'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
		'-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
		'-keyout', "$tls_dir/p.key", '-out', "$tls_dir/p.crt" ], '>', \$o1, '2>', \$o2),
	'T: made a self-signed certificate');
my $tls_port = PostgreSQL::Test::Cluster::get_free_port();
$P->{node}->safe_psql('postgres', "CREATE DATABASE site_tls");
$P->{node}->safe_psql('postgres', qq{
	ALTER DATABASE site_tls SET eventstream.http_port = $tls_port;
	ALTER DATABASE site_tls SET eventstream.http_tls_cert_file = '$tls_dir/p.crt';
	ALTER DATABASE site_tls SET eventstream.http_tls_key_file = '$tls_dir/p.key';
});
$P->{node}->safe_psql('site_tls', 'CREATE EXTENSION eventstream');
my $PT = { node => $P->{node}, db => 'site_tls', url => "https://127.0.0.1:$tls_port", name => 'producer/site_tls' };
sq($PT, $schema . q{
	CREATE ROLE branch_tls;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch_tls;
});
my ($key_t, $secret_t) = key_pair($PT, 'branch_tls');
ok(wait_until(30, sub { my ($r) = IPC::Run::run([ 'curl', '-sf', '--cacert', "$tls_dir/p.crt",
		"$PT->{url}/api/eventstream/v1/health" ], '>', \my $x, '2>', \my $y); $r }),
	'T: the producer serves HTTPS');

# Without the CA, the certificate is refused and nothing is left behind.
($ret, $out, $err) = q_try($C, "SELECT eventstream.add_producer(producer_url => '$PT->{url}', api_key => '$key_t', "
	  . "api_secret => '$secret_t', subscriber => 'applier', tables => ARRAY['secret_doc'])");
isnt($ret, 0, 'T: a producer whose certificate is not trusted is refused');
like($err, qr/could not reach .*(certificate|SSL)/i, '  with the TLS error');
is(sq($C, "SELECT count(*) FROM eventstream.producer WHERE producer_url = '$PT->{url}'"), '0', '  and nothing is left');

# With eventstream.ca_file naming it (worker and sessions of that database).
my $CT = add_site($C->{node}, 'site_tls', settings => { 'eventstream.ca_file' => "$tls_dir/p.crt" });
consumer_schema($CT);
sq($CT, "SELECT eventstream.add_producer(producer_url => '$PT->{url}', api_key => '$key_t', api_secret => '$secret_t', "
	  . "subscriber => 'applier', tables => ARRAY['secret_doc'])");
sq($PT, "SELECT eventstream.approve(consumer_url, 'secret_doc') FROM eventstream.consumer");
sq($PT, "INSERT INTO secret_doc VALUES ('S1', 'over TLS')");
ok(wait_query($CT, "SELECT v FROM secret_doc WHERE name = 'S1'", 'over TLS', 30),
	'T: with eventstream.ca_file, updates arrive over HTTPS');

note(sprintf('run time %.1f s', time - $t0));
done_testing();
