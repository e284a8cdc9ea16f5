# A consumer whose subscription changes while its worker is in the middle
# of a window: remove_producer, unsubscribe, set_keys (consumer side) and
# reject, revoke_api_key (producer side), each while the worker holds a
# page it has just received, a page of a window it keeps in memory, or a
# whole window it is about to apply.  The worker is held at those points by
# the test-only setting eventstream.test_pause_at, so nothing depends on
# catching it in the act.  After each, the worker must still be the same
# process (no crash), and once the subscription is made again the consumer
# must end with exactly the producer's rows.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $P = add_site(new_node('producer'), 'site',
	settings => { 'eventstream.http_max_response_size' => '64kB' });
my $C = add_site(new_node('consumer'), 'site');

sq($P, q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	CREATE ROLE branch;
	GRANT SELECT ON t TO branch;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($C, q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	GRANT SELECT, INSERT, UPDATE, DELETE ON t TO applier;
});

my $worker_sql = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'site'";

# Subscribe the consumer to t with a new key, approve, and wait until it has
# every row of the producer's, up to a marker row written last.  The rows
# of the test before are deleted on the producer first, so the initial
# sync stays short (a registration may start again from the last position
# the producer had acknowledged: those deletes then follow what comes
# again).
my $next_id = 1;
sub subscribe_afresh
{
	my ($what) = @_;
	my ($key, $secret) = key_pair($P, 'branch');
	sq($C, "SELECT eventstream.remove_producer('$P->{url}') FROM eventstream.producer WHERE producer_url = '$P->{url}'");
	sq($P, 'DELETE FROM t');
	sq($C, 'TRUNCATE t');
	sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
		  . "subscriber => 'applier', tables => ARRAY['t'])");
	sq($P, "SELECT eventstream.approve('$C->{url}', 't')");
	ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE producer_url = '$P->{url}'", 'Approved', 60),
		"$what: the approval reaches the consumer");
	my $marker = $next_id++;
	sq($P, "INSERT INTO t VALUES ($marker, 'marker')");
	ok(wait_until(60, sub { sq($C, "SELECT count(*) FROM t WHERE id = $marker") eq '1' && digest($C, 't') eq digest($P, 't') }),
		"$what: subscribed again, the consumer has the producer's rows")
	  or diag('consumer: ' . digest($C, 't') . ', producer: ' . digest($P, 't'));
	return ($key, $secret);
}

sub pause_at
{
	my ($point) = @_;
	sq($C, "ALTER SYSTEM SET eventstream.test_pause_at = '$point'");
	sq($C, 'SELECT pg_reload_conf()');
}

sub resume
{
	sq($C, 'ALTER SYSTEM RESET eventstream.test_pause_at');
	sq($C, 'SELECT pg_reload_conf()');
}

my ($key, $secret) = subscribe_afresh('set-up');
my $wpid = sq($C, $worker_sql);
my $log_at = -s $C->{node}->logfile;

# What each action does, given the keys in use; the consumer's keys are
# replaced by set_keys with a new pair.
my %action = (
	remove_producer => sub { sq($C, "SELECT eventstream.remove_producer('$P->{url}')") },
	unsubscribe => sub { sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 't')") },
	set_keys => sub {
		my ($k2, $s2) = key_pair($P, 'branch');
		sq($C, "SELECT eventstream.set_keys('$P->{url}', '$k2', '$s2')");
	},
	reject => sub { sq($P, "SELECT eventstream.reject('$C->{url}', 't')") },
	revoke_api_key => sub {
		my $k = sq($C, "SELECT api_key FROM eventstream.producer WHERE producer_url = '$P->{url}'");
		sq($P, "SELECT eventstream.revoke_api_key('$k')");
	},
);

# A window of one transaction: 3000 rows of ~100 bytes are several pages of
# at most 64 kB, so "held" is reached; "received" and "before-apply" too.
# Before the apply of a window of one page (10 rows) as well: no page is
# held then, the page itself is applied.
foreach my $case ([ 'received', 3000 ], [ 'held', 3000 ], [ 'before-apply', 3000 ], [ 'before-apply', 10 ])
{
	my ($point, $rows) = @$case;
	foreach my $name (qw(remove_producer unsubscribe set_keys reject revoke_api_key))
	{
		my $what = "$name at $point ($rows rows)";
		my $paused = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstream worker' "
		  . "AND datname = 'site' AND state = 'active' AND query LIKE 'paused at $point%'";
		pause_at($point);
		my $first = $next_id;
		$next_id += $rows;
		sq($P, "INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series($first, " . ($next_id - 1) . ') g');
		ok(wait_query($C, $paused, '1', 60), "$what: the worker is paused there");
		$action{$name}->();
		resume();
		ok(wait_query($C, $paused, '0', 60), "$what: the worker goes on");
		is(sq($C, $worker_sql), $wpid, "$what: the same worker process (it did not crash)");
		my $n = sq($C, "SELECT count(*) FROM t WHERE id BETWEEN $first AND " . ($next_id - 1));
		ok($n eq '0' || $n eq $rows, "$what: the window is applied whole or not at all ($n rows)");
		subscribe_afresh($what);
		is(sq($C, $worker_sql), $wpid, "$what: still the same worker process");
	}
}

my $log = slurp_file($C->{node}->logfile, $log_at);
unlike($log, qr/terminated by signal/, 'no server process of the consumer was terminated by a signal');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'no update failed');

$C->{node}->stop;
$P->{node}->stop;
done_testing();
