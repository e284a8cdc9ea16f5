# Administration without a superuser, between two real sites talking HTTP
# (two databases of one node, each a site with its own worker and port;
# roles belong to the cluster, so both sites share them).
#
# A. CREATE EXTENSION makes the role eventstream_admin (NOLOGIN) once for
#    the cluster, and DROP EXTENSION leaves it.
# B. ops, a LOGIN role that is a member of eventstream_admin and not a
#    superuser, runs the whole life cycle: an API key for a role it holds
#    WITH ADMIN OPTION (refused for a role it may not grant, a superuser,
#    members of pg_read_server_files, directly or not, and members of
#    eventstream_admin); add_producer on the consumer (refused for a
#    subscriber it may not grant, leaving nothing behind), approve on the
#    producer, data flows, a failed update resynced, the sync log and the
#    status views read, the key revoked (the consumer is refused from then
#    on), the producer and the consumer removed.  It reads the
#    configuration, not the secrets nor the update log.  A member's
#    SECURITY DEFINER trigger fired by the worker's apply cannot make a key
#    with the worker's superuser session.
# C. Every public function of the SQL API: ops may call each (none answers
#    42501); a plain LOGIN role and a pg_monitor member are refused each
#    with 42501; the plain role reads no table or view of the extension; a
#    pg_monitor member reads the status views (with rows in them) and
#    nothing else.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EsSites;

my $t0 = time;
my $node = new_node('sites');
my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');

# SQL as a role of its own session (psql -U): (exit code, stdout, stderr),
# errors with their SQLSTATE.
sub as
{
	my ($who, $s, $sql) = @_;
	my ($ret, $out, $err) = $s->{node}->psql($s->{db}, "\\set VERBOSITY verbose\n$sql",
		extra_params => [ '-U', $who ]);
	return ($ret, $out // '', $err // '');
}

# SQL as a role that must succeed: its output.
sub as_ok
{
	my ($who, $s, $sql, $name) = @_;
	my ($ret, $out, $err) = as($who, $s, $sql);
	is($ret, 0, $name) or diag($err);
	return $out;
}

# SQL as a role that must fail with 42501 and an error matching $re.
sub refused
{
	my ($who, $s, $sql, $re, $name) = @_;
	my ($ret, $out, $err) = as($who, $s, $sql);
	ok($ret != 0 && $err =~ /ERROR:  42501: / && $err =~ $re, $name)
	  or diag("exit $ret: $err");
}

# Call every public function of the SQL API with NULL arguments as $who,
# in a transaction rolled back: "name:SQLSTATE" (or "name:ok") for each.
sub call_all
{
	my ($who, $s) = @_;
	my ($ret, $out, $err) = $s->{node}->psql($s->{db}, q{
BEGIN;
DO $$
DECLARE
	f record;
	st text;
	res text := '';
BEGIN
	FOR f IN SELECT p.proname, p.pronargs FROM pg_proc p
			  WHERE p.pronamespace = 'eventstream'::regnamespace AND p.proname !~ '^_' ORDER BY 1 LOOP
		BEGIN
			EXECUTE format('SELECT eventstream.%I(%s)', f.proname,
						   array_to_string(array_fill('NULL'::text, ARRAY[f.pronargs]), ', '));
			st := 'ok';
		EXCEPTION WHEN OTHERS THEN
			st := SQLSTATE;
		END;
		res := res || f.proname || ':' || st || ' ';
	END LOOP;
	RAISE NOTICE 'calls: %', res;
END
$$;
ROLLBACK;
}, extra_params => [ '-U', $who ]);
	my ($calls) = $err =~ /NOTICE:  calls: (.*)/;
	diag("exit $ret: $err") unless defined $calls;
	return split ' ', $calls // '';
}

# Read every table and view of the extension as $who: "name:read" or
# "name:SQLSTATE" for each.
sub read_all
{
	my ($who, $s) = @_;
	my ($ret, $out, $err) = $s->{node}->psql($s->{db}, q{
DO $$
DECLARE
	r record;
	st text;
	res text := '';
BEGIN
	FOR r IN SELECT c.relname FROM pg_class c
			  WHERE c.relnamespace = 'eventstream'::regnamespace AND c.relkind IN ('r', 'v', 'p') ORDER BY 1 LOOP
		BEGIN
			EXECUTE format('SELECT count(*) FROM eventstream.%I', r.relname);
			st := 'read';
		EXCEPTION WHEN OTHERS THEN
			st := SQLSTATE;
		END;
		res := res || r.relname || ':' || st || ' ';
	END LOOP;
	RAISE NOTICE 'reads: %', res;
END
$$;
}, extra_params => [ '-U', $who ]);
	my ($reads) = $err =~ /NOTICE:  reads: (.*)/;
	diag("exit $ret: $err") unless defined $reads;
	return split ' ', $reads // '';
}

######################################################################
# A. The role
######################################################################

is($node->safe_psql('postgres', "SELECT count(*) || ' ' || bool_or(rolcanlogin) || ' ' || bool_or(rolsuper) "
	  . "FROM pg_roles WHERE rolname = 'eventstream_admin'"),
	'1 false false', 'A: CREATE EXTENSION made eventstream_admin once for both sites, NOLOGIN, not a superuser');

# The role is made here if CREATE EXTENSION did not make it, so that what
# follows runs (and fails where it should) without it.
$node->safe_psql('postgres', q{
	DO $$
	BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'eventstream_admin') THEN
			CREATE ROLE eventstream_admin;
		END IF;
	END
	$$;
	CREATE ROLE ops LOGIN IN ROLE eventstream_admin;
	CREATE ROLE watcher LOGIN IN ROLE pg_monitor;
	CREATE ROLE plain LOGIN;
	CREATE ROLE branch;
	CREATE ROLE applier;
	CREATE ROLE stranger;
	CREATE ROLE su SUPERUSER;
	CREATE ROLE reader IN ROLE pg_read_server_files;
	CREATE ROLE reader2 IN ROLE reader;
	CREATE ROLE helper IN ROLE eventstream_admin;
	GRANT branch, applier TO ops WITH ADMIN OPTION;
	CREATE DATABASE third;
});
$node->safe_psql('third', 'CREATE EXTENSION eventstream');
$node->safe_psql('third', 'DROP EXTENSION eventstream');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
	  . "WHERE r.rolname = 'eventstream_admin' AND m.member = 'ops'::regrole"),
	'1', 'A: DROP EXTENSION in another database leaves the role and its members');

sq($P, q{
	CREATE TABLE item (id int PRIMARY KEY, v text);
	CREATE TABLE other_item (id int PRIMARY KEY, v text);
	GRANT SELECT ON item, other_item TO branch;
	INSERT INTO item VALUES (1, 'one');
});
sq($C, q{
	CREATE TABLE item (id int PRIMARY KEY, v text CONSTRAINT not_bad CHECK (v <> 'bad'));
	CREATE TABLE other_item (id int PRIMARY KEY, v text);
	GRANT SELECT, INSERT, UPDATE, DELETE ON item, other_item TO applier;
});

######################################################################
# B. ops runs the life cycle
######################################################################

my ($key, $secret) = split /\|/,
  as_ok('ops', $P, "SELECT api_key || '|' || api_secret FROM eventstream.create_api_key('branch')",
	'B: ops makes an API key for a role it holds WITH ADMIN OPTION');
chomp $secret if defined $secret;
ok(defined $secret && $secret =~ /^[0-9a-f]{64}$/, '  and gets its secret');
refused('ops', $P, "SELECT * FROM eventstream.create_api_key('stranger')",
	qr/permission denied to create an API key for role "stranger"/, 'B: refused for a role it may not grant');
refused('ops', $P, "SELECT * FROM eventstream.create_api_key('su')",
	qr/role "su" is a superuser/, 'B: refused for a superuser');
refused('ops', $P, "SELECT * FROM eventstream.create_api_key('reader')",
	qr/role "reader" cannot be the role of an API key.*member of role "pg_read_server_files"/s,
	'B: refused for a member of pg_read_server_files');
refused('ops', $P, "SELECT * FROM eventstream.create_api_key('reader2')",
	qr/role "reader2" cannot be the role of an API key.*member of role "pg_read_server_files"/s,
	'B: refused for a member of a member of pg_read_server_files');
refused('ops', $P, "SELECT * FROM eventstream.create_api_key('helper')",
	qr/role "helper" cannot be the role of an API key.*member of role "eventstream_admin"/s,
	'B: refused for a member of eventstream_admin');
is(as_ok('ops', $P, 'SELECT string_agg(role::text, \',\') FROM eventstream.api_key WHERE revoked_at IS NULL',
		'B: ops lists the keys'),
	'branch', '  only the one key was made');
refused('ops', $P, 'SELECT secret_hash FROM eventstream.api_key', qr/permission denied for table api_key/,
	'B: ops does not read the keys\' hashes');

my $add = "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', "
  . "api_secret => '$secret', subscriber => '%s', tables => ARRAY['item'])";
refused('ops', $C, sprintf($add, 'stranger'), qr/permission denied to apply updates as role "stranger"/,
	'B: add_producer refused for a subscriber ops may not grant');
refused('ops', $C, sprintf($add, 'reader2'), qr/role "reader2" cannot be a subscriber/,
	'B: add_producer refused for a subscriber that reads the server\'s files');
is(sq($C, 'SELECT count(*) FROM eventstream.producer'), '0', '  leaving nothing behind');
as_ok('ops', $C, sprintf($add, 'applier'), 'B: ops adds the producer, applied as a role it may grant');
is(as_ok('ops', $C, 'SELECT ref_table || \':\' || status FROM eventstream.producer_table', 'B: ops reads the subscriptions'),
	'public.item:Pending', '  Pending');
refused('ops', $C, 'SELECT api_secret FROM eventstream.producer', qr/permission denied for table producer/,
	'B: ops does not read the producer\'s secret');

is(as_ok('ops', $P, "SELECT consumer_url || ' ' || ref_table || ' ' || status FROM eventstream.consumer_table",
		'B: ops reads the consumers\' subscriptions on the producer'),
	"$C->{url} public.item Pending", '  Pending there too');
as_ok('ops', $P, "SELECT eventstream.approve('$C->{url}', 'item')", 'B: ops approves (a name in its search_path)');
ok(wait_query($C, "SELECT status || ' ' || snapshot_pending FROM eventstream.producer_table", 'Approved false', 60),
	'B: approved, and the initial sync done');
is(rows($C, 'item'), '(1,one)', '  the existing row arrived');

sq($P, "INSERT INTO item VALUES (2, 'two'), (3, 'bad')");
as_ok('ops', $C, "SELECT eventstream.sync_now('$P->{url}')", 'B: ops pulls with sync_now()');
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE update_type = 'Create' AND remote_docname IN ('2', '3')",
		'2', 60), 'B: the new rows were applied or failed');
is(rows($C, 'item'), "(1,one)\n(2,two)", '  data flows: the good row is here');
my $failed = as_ok('ops', $C, "SELECT id FROM eventstream.sync_log WHERE status = 'Failed' AND remote_docname = '3'",
	'B: ops reads the sync log');
like($failed, qr/^\d+$/, '  and finds the failed update');
sq($C, 'ALTER TABLE item DROP CONSTRAINT not_bad');
is(as_ok('ops', $C, "SELECT eventstream.resync($failed)", 'B: ops resyncs the failed update'), 'Synced',
	'  Synced');
is(rows($C, 'item'), "(1,one)\n(2,two)\n(3,bad)", '  and the row is here');

# A member's SECURITY DEFINER trigger on a table the worker applies to
# does not act with the worker's (superuser's) session.
sq($C, q{
	CREATE FUNCTION trap() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
	BEGIN
		PERFORM eventstream.create_api_key('stranger');
		RETURN NEW;
	END
	$$;
	ALTER FUNCTION trap() OWNER TO helper;
	CREATE TRIGGER trap BEFORE INSERT ON item FOR EACH ROW EXECUTE FUNCTION trap();
	ALTER TABLE item ENABLE ALWAYS TRIGGER trap;
});
sq($P, "INSERT INTO item VALUES (4, 'four')");
ok(wait_query($C, "SELECT status FROM eventstream.sync_log WHERE remote_docname = '4'", 'Failed', 60),
	'B: an update whose trigger makes a key fails in the worker');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_docname = '4'"),
	qr/cannot run eventstream\.create_api_key\(\) in an eventstream worker/, '  refused, saying why');
is(sq($C, 'SELECT count(*) FROM eventstream.api_key'), '0', '  and no key was made');
sq($C, 'DROP TRIGGER trap ON item');
is(as_ok('ops', $C, "SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE remote_docname = '4'",
		'B: ops resyncs it once the trigger is gone'), 'Synced', '  Synced');

as_ok('ops', $C, "SELECT eventstream.subscribe('$P->{url}', 'other_item')", 'B: ops subscribes to another table');
as_ok('ops', $P, "SELECT eventstream.reject('$C->{url}', 'public.other_item')", 'B: ops rejects it on the producer');
as_ok('ops', $C, "SELECT eventstream.sync_now('$P->{url}')", '  (pulled)');
is(sq($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.other_item'"), 'Rejected',
	'  the consumer sees it Rejected');
as_ok('ops', $C, "SELECT eventstream.unsubscribe('$P->{url}', 'other_item')", 'B: ops unsubscribes');
is(as_ok('ops', $C, "SELECT * FROM eventstream.resync_failed('$P->{url}')", 'B: ops runs resync_failed()'),
	'0|0|0', '  nothing left to resync');
is(as_ok('ops', $C, "SELECT eventstream.refetch('$P->{url}', 'item', '2')", 'B: ops refetches a document'),
	'Synced', '  Synced');

like(as_ok('ops', $C, "SELECT eventstream.reset_cursor('$P->{url}', initial_sync => false)",
		'B: ops resets the cursor'), qr/^v1\//, '  and gets the producer\'s');
as_ok('ops', $C, "SELECT eventstream.resync_table('$P->{url}', 'item')", 'B: ops has the table copied again');
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.item'", 'f', 60),
	'  the copy is done');
is(rows($C, 'item'), "(1,one)\n(2,two)\n(3,bad)\n(4,four)", '  and the rows are the producer\'s');
ok(wait_query($C, 'SELECT state FROM eventstream.producer_status', 'streaming', 60), '  streaming again');
is(as_ok('ops', $C, 'SELECT state FROM eventstream.producer_status', 'B: ops reads producer_status'),
	'streaming', '  streaming');
is(as_ok('ops', $P, "SELECT consumer_url || ' ' || tables_approved FROM eventstream.consumer_status",
		'B: ops reads consumer_status'),
	"$C->{url} 1", '  one table approved');
is(as_ok('ops', $P, 'SELECT count(*) FROM eventstream.update_log_consumer', 'B: ops reads update_log_consumer'),
	sq($P, 'SELECT count(*) FROM eventstream.update_log_consumer'), '  the receipts a superuser sees');
refused('ops', $P, 'SELECT count(*) FROM eventstream.update_log', qr/permission denied for table update_log/,
	'B: ops does not read the update log (other tables\' rows)');

######################################################################
# C. Every function, every table, as each kind of role
######################################################################

my @ops_calls = call_all('ops', $C);
note("as ops: @ops_calls");
ok(@ops_calls >= 27, 'C: every public function was called as ops (' . scalar(@ops_calls) . ')');
is(join(' ', grep { /:42501$/ } @ops_calls), '', '  none refused ops with 42501');
foreach my $who ('plain', 'watcher')
{
	my @calls = call_all($who, $P);
	is(scalar(@calls), scalar(@ops_calls), "C: every public function was called as $who");
	is(join(' ', grep { !/:42501$/ } @calls), '', "  each refused $who with 42501");
}
refused('plain', $P, "SELECT eventstream.approve('$C->{url}', 'item')", qr/permission denied for function approve/,
	'C: a plain role cannot approve');
refused('watcher', $P, "SELECT eventstream.approve('$C->{url}', 'item')", qr/permission denied for function approve/,
	'C: a pg_monitor member cannot approve');

my @plain_reads = read_all('plain', $P);
ok(@plain_reads >= 20, 'C: every table and view was read as plain (' . scalar(@plain_reads) . ')');
is(join(' ', grep { !/:42501$/ } @plain_reads), '', '  the plain role reads none');
my @watch_reads = read_all('watcher', $P);
is(join(' ', map { s/:read$//r } grep { /:read$/ } @watch_reads),
	'consumer_status producer_status published_table update_log_consumer',
	'C: a pg_monitor member reads the status views (and the published names they need), nothing else');
my @ops_reads = read_all('ops', $C);
is(join(' ', map { s/:42501$//r } grep { !/:read$/ } @ops_reads),
	'consumer_document inbox served_page tick update_log withheld',
	'C: ops reads all but what holds the rows of served or received pages');
is((as('watcher', $P, "SELECT consumer_url || ' ' || tables_approved FROM eventstream.consumer_status"))[1],
	"$C->{url} 1", 'C: a pg_monitor member reads consumer_status with its rows');
is((as('watcher', $C, 'SELECT state FROM eventstream.producer_status'))[1], 'streaming',
	'C: and producer_status');

######################################################################
# B, the end: the key revoked, the sites removed
######################################################################

as_ok('ops', $P, "SELECT eventstream.revoke_api_key('$key')", 'B: ops revokes the key');
my ($ret, $out, $err) = as('ops', $C, "SELECT eventstream.sync_now('$P->{url}')");
like($err, qr/producer "\Q$P->{url}\E" refused the API key/, '  the consumer is refused from then on');
as_ok('ops', $C, "SELECT eventstream.remove_producer('$P->{url}')", 'B: ops removes the producer');
as_ok('ops', $P, "SELECT eventstream.remove_consumer('$C->{url}')", 'B: ops removes the consumer');
is(sq($P, 'SELECT count(*) FROM eventstream.consumer') . ' ' . sq($C, 'SELECT count(*) FROM eventstream.producer'),
	'0 0', '  both are gone');

note(sprintf('026_admin ran in %.1f s', time - $t0));
done_testing();
