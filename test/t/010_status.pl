# What a consumer and a producer tell about each other, between real sites:
# eventstream.consumer_status on the producer counts what the consumer has
# not acknowledged, and drops to nothing soon after the consumer applied
# everything; a failed update writes one WARNING line in the consumer's
# server log with the call that resyncs it, rate-limited per producer;
# eventstream.producer_status on the consumer stops saying streaming, and
# its lag grows, while the producer is down.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EsSites;

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer', "eventstream.failed_update_log_limit = 3\n"), 'site');

sq($P, q{
	CREATE TABLE item (name text PRIMARY KEY, v text, secret text);
	CREATE TABLE many (id int PRIMARY KEY, v text);
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
my $consumer_schema = q{
	CREATE TABLE item (name text PRIMARY KEY, v text CHECK (v <> 'bad'), secret text);
	CREATE TABLE many (id int PRIMARY KEY, v text CHECK (v <> 'bad'));
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
};
sq($C, $consumer_schema);
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
sq($P, "SELECT eventstream.approve('$C->{url}', 'item')");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.item'", 'Approved', 30),
	'the consumer is approved');
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 30), 'and streaming');

######################################################################
# consumer_status.updates_waiting follows what the consumer applied
######################################################################

# One transaction of 2500 rows: a window of several pages, the last of
# which says nothing more is waiting.  The worker long-polls for what comes
# next while it applies that page; once applied, the producer hears of it
# at once, not when that long-poll is answered (25 s later).
my $waiting_sql = "SELECT updates_waiting FROM eventstream.consumer_status WHERE consumer_url = '$C->{url}'";
sq($P, "INSERT INTO item SELECT 'i' || g, 'x', 's' FROM generate_series(1, 2500) g");
ok(wait_query($C, 'SELECT count(*) FROM item', '2500', 60), 'updates_waiting: the consumer applies 2500 rows');
my $applied_at = time;
ok(wait_query($P, $waiting_sql, '0', 10), 'updates_waiting: the producer counts none waiting soon after');
note(sprintf('updates_waiting reached 0 %.2f s after the rows were seen applied', time - $applied_at));

######################################################################
# A failed update: one WARNING line, with the call that resyncs it
######################################################################

my $log_at = -s $C->{node}->logfile;
sq($P, "INSERT INTO item VALUES ('bad1', 'bad', 'TOPSECRET-7')");
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname = 'bad1' AND status = 'Failed'", '1', 30),
	'failed update: it is Failed in sync_log');
my $id = sq($C, "SELECT id FROM eventstream.sync_log WHERE remote_docname = 'bad1'");
my $resync = "SELECT eventstream.resync($id)";
ok(wait_until(30, sub { slurp_file($C->{node}->logfile, $log_at) =~ /\Q$resync\E/ }),
	'failed update: the server log says how to resync it');
# A later commit of the same worker: any line of the earlier one is out.
sq($P, "INSERT INTO item VALUES ('good1', 'x', 's')");
ok(wait_query($C, "SELECT count(*) FROM item WHERE name = 'good1'", '1', 30), 'failed update: the next update is applied');
my @lines = grep { /eventstream:/ } split /\n/, slurp_file($C->{node}->logfile, $log_at);
is(scalar(@lines), 1, 'failed update: exactly one line in the log') or diag(join("\n", @lines));
like($lines[0], qr/WARNING: .*Create from producer \Q$P->{url}\E failed to apply to public\.item, docname "bad1": new row for relation "item" violates check constraint "item_v_check"; apply it again with \Q$resync\E$/,
	'failed update: a WARNING naming producer, table, docname, error and the resync call');
unlike(slurp_file($C->{node}->logfile, $log_at), qr/TOPSECRET/, 'failed update: the document is not logged');
like(sq($C, "SELECT state || ' ' || failed_now || ' ' || attention FROM eventstream.producer_status"),
	qr/^streaming 1 1 failed update\(s\): see eventstream\.sync_log/,
	'failed update: producer_status asks for attention');

######################################################################
# Many failed updates: at most failed_update_log_limit lines a minute
######################################################################

# A database of its own on the consumer's node (its own worker, so its own
# minute), subscribed to a table where every row fails.
my $C2 = add_site($C->{node}, 'site2');
sq($C2, $consumer_schema);
my ($key2, $secret2) = key_pair($P, 'branch');
$log_at = -s $C->{node}->logfile;
sq($C2, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key2', api_secret => '$secret2', "
	  . "subscriber => 'applier', tables => ARRAY['many'])");
sq($P, "SELECT eventstream.approve('$C2->{url}', 'many')");
ok(wait_query($C2, "SELECT status FROM eventstream.producer_table", 'Approved', 30), 'rate limit: site2 is approved');
sq($P, "INSERT INTO many SELECT g, 'bad' FROM generate_series(1, 20) g");
ok(wait_query($C2, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'", '20', 30),
	'rate limit: 20 updates fail in one transaction');
ok(wait_until(30, sub { slurp_file($C->{node}->logfile, $log_at) =~ /and 17 more failed updates/ }),
	'rate limit: a line counts the 17 not written');
# Five more in the same minute, then one that applies.
sq($P, "INSERT INTO many SELECT g, 'bad' FROM generate_series(21, 25) g");
sq($P, "INSERT INTO many VALUES (100, 'good')");
ok(wait_query($C2, 'SELECT count(*) FROM many', '1', 30), 'rate limit: five more fail, then one applies');
my $log = slurp_file($C->{node}->logfile, $log_at);
my @failed = ($log =~ /^.*WARNING: .*failed to apply to public\.many.*$/mg);
is(scalar(@failed), 3, 'rate limit: three lines of failed updates in the minute') or diag($log);
my @counts = ($log =~ /^.*WARNING: .*more failed updates.*$/mg);
is(scalar(@counts), 1, 'rate limit: and one line counting the others');
like($counts[0], qr/and 17 more failed updates from producer \Q$P->{url}\E \(at most 3 lines a minute\)/,
	'rate limit: which names the producer');
is(sq($C2, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '25', 'rate limit: all 25 are in sync_log');

# Lines are written when the rows are committed: none for the failures of
# a transaction, or a subtransaction, that rolled back.  (A session's own
# apply, with its own minute.)
$log_at = -s $C->{node}->logfile;
my $bad = sub {
	my ($name) = @_;
	return "SELECT eventstream._apply_updates('$P->{url}', 'applier', '[{\"id\": 1, \"update_type\": \"Create\", "
	  . "\"ref_table\": \"public.many\", \"docname\": \"$name\", \"data\": {\"id\": 0, \"v\": \"bad\"}}]', NULL, false)";
};
sq($C2, 'BEGIN; ' . $bad->('rolled-back') . '; ROLLBACK');
my ($ret2, $out2, $err2) = q_try($C2, 'BEGIN; SAVEPOINT s; ' . $bad->('to-savepoint') . '; ROLLBACK TO s; SAVEPOINT t; '
	  . $bad->('kept') . '; RELEASE t; COMMIT');
is("$ret2 $err2", '0 ', 'rollback: the session gets no WARNING (the server log does)');
$log = slurp_file($C->{node}->logfile, $log_at);
@failed = ($log =~ /^.*WARNING: .*failed to apply to public\.many.*$/mg);
is(scalar(@failed), 1, 'rollback: one line, of the three failures') or diag($log);
like($failed[0], qr/docname "kept"/, 'rollback: the one committed');
is(sq($C2, "SELECT string_agg(remote_docname, ',') FROM eventstream.sync_log WHERE remote_docname IN ('rolled-back', 'to-savepoint', 'kept')"),
	'kept', 'rollback: which is the one in sync_log');

######################################################################
# producer_status while the producer is down
######################################################################

$P->{node}->stop;
my $lag_sql = "SELECT state || ' ' || extract(epoch FROM lag) FROM eventstream.producer_status";
my $first;
ok(wait_until(30, sub { $first = sq($C, $lag_sql); $first =~ /^(\S+) ([0-9.]+)$/ && $1 ne 'streaming' && $2 > 0 }),
	'producer down: producer_status is not streaming, and lags') or diag($first);
note("producer down: $first");
my ($state, $lag1) = split / /, $first;
is($state, 'failing', 'producer down: it says failing');
my $later;
ok(wait_until(30, sub { $later = sq($C, $lag_sql); (split / /, $later)[1] > $lag1 }), 'producer down: the lag grows')
	or diag($later);
like(sq($C, 'SELECT attention FROM eventstream.producer_status'), qr/^pulls fail: see last_error/,
	'producer down: attention says so');

done_testing();
