# Prometheus metrics at /metrics, between two real sites: a producer and a
# consumer with some traffic and one update that fails to apply.  The
# answer is the text exposition format (promtool check metrics passes it),
# its numbers are those of the sites' tables (applied and failed totals,
# the update log's rows, the producer's state), the worker's own counters
# move (requests by status code, updates served, the serve and apply
# histograms), and only a key whose role is a member of pg_monitor (or
# eventstream_admin) may read it: 401 with a Basic challenge without a
# valid key, 403 for another role.  A label's double quote and backslash
# are escaped.
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
use IPC::Run;
use EsSites;

my $promtool = '/usr/bin/promtool';
ok(-x $promtool, 'promtool is installed (Debian package prometheus, from test/setup.sh)');

# curl: (status, headers, body); @opts are more curl arguments.
sub fetch
{
	my ($url, @opts) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '-i', '--max-time', 10, @opts, $url ], '>', \$out, '2>', \$err);
	my ($head, $body) = split /\r\n\r\n/, $out, 2;
	my ($status) = ($head // '') =~ m{\AHTTP/\S+ (\d+)};
	return ($status // '', $head // '', $body // '');
}

# The samples of a text exposition: { 'name{labels}' => value }.
sub samples
{
	my ($text) = @_;
	my %s;
	foreach my $line (split /\n/, $text)
	{
		next if $line =~ /^#/ || $line eq '';
		$s{$1} = $2 if $line =~ /^(\S+(?:\{.*\})?) (\S+)$/;
	}
	return \%s;
}

# promtool check metrics on a text: (exit code, what it said).
sub promtool_check
{
	my ($text) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ $promtool, 'check', 'metrics' ], '<', \$text, '>', \$out, '2>', \$err);
	return ($? >> 8, $out . $err);
}

my $P = add_site(new_node('producer'), 'site');
# The consumer's URL, as the producer knows it, holds a double quote and a
# backslash: its label must escape them.
my $C_url = q{http://branch.example/"one"\two};
my $C = add_site(new_node('consumer'), 'site', settings => { 'eventstream.site_url' => $C_url });

sq($P, q{
	CREATE TABLE item (name text PRIMARY KEY, v text);
	CREATE ROLE branch;
	GRANT SELECT ON item TO branch;
	CREATE ROLE watcher;
	GRANT pg_monitor TO watcher;
});
$C->{node}->safe_psql('postgres', q{
	CREATE ROLE applier;
	CREATE ROLE watcher;
	GRANT pg_monitor TO watcher;
	CREATE ROLE plain;
});
sq($C, q{
	CREATE TABLE item (name text PRIMARY KEY, v text CONSTRAINT no_bad CHECK (v <> 'bad'));
	GRANT SELECT, INSERT, UPDATE, DELETE ON item TO applier;
});
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
sq($P, "SELECT eventstream.approve('$C_url', 'item')");
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 30), 'the consumer streams');
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table", 'f', 30), 'its initial sync is over');

# Traffic: 30 rows in three transactions, and one that fails on the consumer.
sq($P, "INSERT INTO item SELECT 'a$_-' || g, 'x' FROM generate_series(1, 10) g") for 1 .. 3;
sq($P, "INSERT INTO item VALUES ('bad1', 'bad')");
sq($P, "INSERT INTO item VALUES ('last', 'x')");
ok(wait_query($C, "SELECT count(*) FROM item WHERE name = 'last'", '1', 30), 'the consumer applied everything');
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'", '1', 5), 'one update failed');
ok(wait_query($P, "SELECT updates_waiting FROM eventstream.consumer_status", '0', 30),
	'the producer counts none waiting');

my ($wkey_c, $wsecret_c) = key_pair($C, 'watcher');
my ($wkey_p, $wsecret_p) = key_pair($P, 'watcher');

######################################################################
# The consumer's metrics: its producer
######################################################################

my ($status, $head, $body) = fetch("$C->{url}/metrics", '-H', "Authorization: token $wkey_c:$wsecret_c");
is($status, '200', 'consumer: GET /metrics with a pg_monitor key answers 200');
like($head, qr{^Content-Type: text/plain; version=0\.0\.4}mi, 'consumer: in the text exposition format 0.0.4');
my ($rc, $said) = promtool_check($body);
is($rc, 0, 'consumer: promtool check metrics passes') or diag("$said\n$body");
my $m = samples($body);
my $pl = qq{producer="$P->{url}"};
my $synced = sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Synced'");
cmp_ok($synced, '>=', 31, 'consumer: at least the 31 good updates are Synced in the sync log');
is($m->{"eventstream_producer_updates_applied_total{$pl}"}, $synced,
	'consumer: updates applied total is the number synced');
is($m->{"eventstream_producer_updates_failed_total{$pl}"}, '1', 'consumer: updates failed total is 1');
is($m->{"eventstream_producer_updates_failed{$pl}"}, '1', 'consumer: updates failed now is 1');
is($m->{"eventstream_producer_state{$pl,state=\"streaming\"}"}, '1', 'consumer: the state streaming is 1');
is($m->{"eventstream_producer_state{$pl,state=\"failing\"}"}, '0', 'consumer: the state failing is 0');
ok(defined $m->{"eventstream_producer_lag_seconds{$pl}"}, 'consumer: the lag has a sample');
my $last_success = sq($C, "SELECT extract(epoch FROM last_success_at)::bigint FROM eventstream.producer");
ok(abs(($m->{"eventstream_producer_last_success_timestamp_seconds{$pl}"} // 0) - $last_success) <= 1,
	'consumer: the last success time is the producer row\'s, in Unix seconds');
cmp_ok($m->{'eventstream_apply_duration_seconds_count'} // 0, '>', 0, 'consumer: the apply histogram counted pages');
is($m->{'eventstream_apply_duration_seconds_bucket{le="+Inf"}'}, $m->{'eventstream_apply_duration_seconds_count'},
	'consumer: the apply histogram\'s +Inf bucket is its count');

# A resync that succeeds: applied goes up, failed total stays (a counter).
sq($C, 'ALTER TABLE item DROP CONSTRAINT no_bad');
is(sq($C, "SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE status = 'Failed'"), 'Synced',
	'consumer: the failed update is resynced');
($status, $head, $body) = fetch("$C->{url}/metrics", '-u', "$wkey_c:$wsecret_c");
is($status, '200', 'consumer: Basic authentication works too');
$m = samples($body);
is($m->{"eventstream_producer_updates_applied_total{$pl}"}, $synced + 1, 'consumer: after the resync, applied total is one more');
is($m->{"eventstream_producer_updates_failed_total{$pl}"}, '1', 'consumer: and failed total is still 1');
is($m->{"eventstream_producer_updates_failed{$pl}"}, '0', 'consumer: but none is failed now');

######################################################################
# The producer's metrics: its consumer, the update log, serving
######################################################################

($status, $head, $body) = fetch("$P->{url}/api/eventstream/v1/metrics", '-H', "Authorization: token $wkey_p:$wsecret_p");
is($status, '200', 'producer: the same under the API prefix');
($rc, $said) = promtool_check($body);
is($rc, 0, 'producer: promtool check metrics passes') or diag("$said\n$body");
$m = samples($body);
my $cl = q{consumer="http://branch.example/\"one\"\\\\two"};
is($m->{"eventstream_consumer_updates_waiting{$cl}"}, '0',
	'producer: no update waiting for the consumer (its URL escaped in the label)');
ok(defined $m->{"eventstream_consumer_last_pull_timestamp_seconds{$cl}"}, 'producer: the consumer\'s last pull');
ok(defined $m->{"eventstream_consumer_cursor_age_seconds{$cl}"}, 'producer: the consumer\'s cursor age');
is($m->{'eventstream_update_log_rows'}, sq($P, 'SELECT count(*) FROM eventstream.update_log'),
	'producer: update log rows is the count of the update log');
cmp_ok($m->{'eventstream_updates_served_total'} // 0, '>=', 32, 'producer: at least the 32 updates were served');
cmp_ok($m->{'eventstream_http_requests_total{code="200"}'} // 0, '>', 0, 'producer: requests answered 200 are counted');
cmp_ok($m->{'eventstream_serve_duration_seconds_count'} // 0, '>', 0, 'producer: the serve histogram counted pages');
like($body, qr/^# TYPE eventstream_serve_duration_seconds histogram$/m, 'producer: the serve duration is a histogram');
like($body, qr/^eventstream_serve_duration_seconds_bucket\{le="0\.001"\} \d+$/m, 'producer: with a bucket of 1 ms');
like($body, qr/^eventstream_serve_duration_seconds_bucket\{le="10"\} \d+$/m, 'producer: up to 10 s');

######################################################################
# Who may read it
######################################################################

($status, $head, $body) = fetch("$P->{url}/metrics");
is($status, '401', 'no credentials: 401');
like($head, qr{^WWW-Authenticate: Basic realm="eventstream"}mi, 'no credentials: with a Basic challenge');
($status) = fetch("$P->{url}/metrics", '-H', "Authorization: token $wkey_p:wrong");
is($status, '401', 'a wrong secret: 401');
($status) = fetch("$P->{url}/metrics", '-H', "Authorization: token $key:$secret");
is($status, '403', 'a key whose role is not in pg_monitor or eventstream_admin: 403');
my ($pkey, $psecret) = key_pair($C, 'plain');
($status) = fetch("$C->{url}/metrics", '-u', "$pkey:$psecret");
is($status, '403', 'a plain role\'s key on the consumer: 403');
# A key made for a plain role whose role joins eventstream_admin later.
sq($C, 'GRANT eventstream_admin TO plain');
($status) = fetch("$C->{url}/metrics", '-u', "$pkey:$psecret");
is($status, '200', 'once its role is a member of eventstream_admin: 200');
($status) = fetch("$P->{url}/metrics", '-X', 'POST', '-H', "Authorization: token $wkey_p:$wsecret_p");
is($status, '405', 'POST: 405');
($status, $head, $body) = fetch("$P->{url}/metrics", '-H', "Authorization: token $wkey_p:$wsecret_p");
$m = samples($body);
cmp_ok($m->{'eventstream_http_requests_total{code="401"}'} // 0, '>=', 2, 'producer: the 401 answers are counted');
cmp_ok($m->{'eventstream_http_requests_total{code="403"}'} // 0, '>=', 1, 'producer: the 403 answer is counted');

done_testing();
