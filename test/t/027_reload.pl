# Settings apply on reload: a new eventstream.http_port, listen address or
# TLS files set with ALTER DATABASE take effect on pg_reload_conf() without
# restarting the site worker; a long-poll parked at that moment is answered
# (its empty page), not cut off.  Progress: what the worker does is visible
# in pg_stat_activity and producer_status.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use IO::Socket::INET;
use FindBin;
use lib $FindBin::RealBin;
use EsSites;

sub uri_escape { my ($v) = @_; $v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge; return $v; }

# curl: (status, body); @extra are more curl arguments.
sub curl
{
	my ($url, $auth, @extra) = @_;
	my @cmd = ('curl', '-s', '-w', "\n%{http_code}", '--max-time', '10', @extra);
	push @cmd, ('-H', "Authorization: $auth") if defined $auth;
	my ($out, $err) = ('', '');
	IPC::Run::run([ @cmd, $url ], '>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	return ($status, $body);
}

# Poll until GET health at $base answers $want (status), at most 10 s.
sub health_is
{
	my ($base, $want, @extra) = @_;
	my $last = '';
	my $ok = wait_until(10, sub {
		($last) = curl("$base/api/eventstream/v1/health", undef, '--max-time', '2', @extra);
		return $last eq $want;
	});
	diag("health at $base: last $last, wanted $want") unless $ok;
	return $ok;
}

my $node = new_node('reload');
my $S = add_site($node, 'site');
my $db = 'site';
my $old = $S->{port};

# A consumer whose long-poll parks.
sq($S, q{
	CREATE ROLE branch;
	CREATE TABLE item (code text PRIMARY KEY, name text);
	GRANT SELECT ON item TO branch;
});
my ($key, $secret) = key_pair($S, 'branch');
my $reg = '{"consumer_url": "http://branch-1:8000", "site_id": "00000000-0000-0000-0000-0000000000b1", "tables": ["public.item"]}';
my ($status, $body) = curl("$S->{url}/api/eventstream/v1/consumers", "token $key:$secret",
	'-X', 'POST', '-H', 'Content-Type: application/json', '--data-binary', $reg);
is($status, '200', 'a consumer registers');
my ($cursor) = $body =~ /"cursor": "([^"]+)"/;
sq($S, "SELECT eventstream.approve('http://branch-1:8000', 'item')");
my $q = 'consumer=' . uri_escape('http://branch-1:8000') . '&cursor=' . uri_escape($cursor) . '&limit=10';
($status, $body) = curl("$S->{url}/api/eventstream/v1/updates?$q", "token $key:$secret");
($cursor) = $body =~ /"cursor": "([^"]+)"/;
$q = 'consumer=' . uri_escape('http://branch-1:8000') . '&cursor=' . uri_escape($cursor) . '&limit=10';

my $before = sq($S, "SELECT last_pull_at FROM eventstream.consumer WHERE consumer_url = 'http://branch-1:8000'");
my ($out, $err) = ('', '');
my $poll = IPC::Run::start([ 'curl', '-s', '-w', "\n%{http_code}", '--max-time', '40',
	'-H', "Authorization: token $key:$secret", "$S->{url}/api/eventstream/v1/updates?$q&wait=30" ],
	'>', \$out, '2>', \$err);
ok(wait_query($S, "SELECT last_pull_at > '$before' FROM eventstream.consumer"
	. " WHERE consumer_url = 'http://branch-1:8000'", 't', 20), 'a long-poll pulled and parked');

# A new port, set as every site's port is: ALTER DATABASE, then a reload.
my $new = PostgreSQL::Test::Cluster::get_free_port();
my $t0 = Time::HiRes::time();
my $logpos = -s $node->logfile;
$node->safe_psql('postgres', "ALTER DATABASE $db SET eventstream.http_port = $new");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("http://127.0.0.1:$new", '200'), 'after pg_reload_conf() the new port answers health');
my $moved = Time::HiRes::time() - $t0;
cmp_ok($moved, '<', 5, sprintf('within seconds (%.2f s)', $moved));
is((curl("http://127.0.0.1:$old/api/eventstream/v1/health", undef, '--max-time', '2'))[0], '000',
	'the old port refuses');
$poll->finish;
my $answered = Time::HiRes::time() - $t0;
like($out, qr/"updates": \[\]/, 'the long-poll parked at the reload got its (empty) page');
like($out, qr/\n200\z/, '  with 200, not a dropped connection');
cmp_ok($answered, '<', 10, sprintf('  at the reload (%.2f s), not at its 30 s deadline', $answered));
like(slurp_file($node->logfile, $logpos),
	qr/eventstream HTTP endpoint of database "site" moved from http:\/\/127\.0\.0\.1:$old to http:\/\/127\.0\.0\.1:$new/,
	'the server log says the endpoint moved');
my $pid = sq($S, "SELECT pid FROM pg_stat_activity WHERE application_name = 'eventstream worker' AND datname = '$db'");
ok($pid, 'the same site worker runs');

# The listen address (all of 127/8 is this machine's on Linux).
$node->safe_psql('postgres', "ALTER DATABASE $db SET eventstream.http_listen_address = '127.0.0.2'");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("http://127.0.0.2:$new", '200'), 'a new listen address answers after a reload');
is((curl("http://127.0.0.1:$new/api/eventstream/v1/health", undef, '--max-time', '2'))[0], '000',
	'  the old address refuses');
$node->safe_psql('postgres', "ALTER DATABASE $db RESET eventstream.http_listen_address");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("http://127.0.0.1:$new", '200'), 'ALTER DATABASE ... RESET takes it back to the default');

# TLS files: set by a reload; a certificate renewed under the same file
# names is served after the next reload.
my $tls = PostgreSQL::Test::Utils::tempdir();
sub make_cert
{
	my ($name) = @_;
	my ($o, $e) = ('', '');
	return IPC::Run::run([ 'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
			'-subj', "/CN=$name", '-addext', 'subjectAltName=IP:127.0.0.1',
			'-keyout', "$tls/site.key", '-out', "$tls/site.crt" ], '>', \$o, '2>', \$e);
}
ok(make_cert('first'), 'made a certificate');
PostgreSQL::Test::Utils::system_or_bail('cp', "$tls/site.crt", "$tls/first.crt");
$node->safe_psql('postgres', qq{
	ALTER DATABASE $db SET eventstream.http_tls_cert_file = '$tls/site.crt';
	ALTER DATABASE $db SET eventstream.http_tls_key_file = '$tls/site.key';
});
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("https://127.0.0.1:$new", '200', '--cacert', "$tls/first.crt"),
	'with TLS files set, https answers after a reload');
is((curl("http://127.0.0.1:$new/api/eventstream/v1/health", undef, '--max-time', '2'))[0], '000',
	'  and plain http does not');
ok(make_cert('second'), 'renewed the certificate in place');
PostgreSQL::Test::Utils::system_or_bail('cp', "$tls/site.crt", "$tls/second.crt");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("https://127.0.0.1:$new", '200', '--cacert', "$tls/second.crt"),
	'a renewed certificate is served after a reload');
is(sq($S, "SELECT pid FROM pg_stat_activity WHERE application_name = 'eventstream worker' AND datname = '$db'"),
	$pid, 'all by the same worker, never restarted');
$node->safe_psql('postgres', qq{
	ALTER DATABASE $db RESET eventstream.http_tls_cert_file;
	ALTER DATABASE $db RESET eventstream.http_tls_key_file;
});
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("http://127.0.0.1:$new", '200'), 'back to plain http');

# A port that is taken: a WARNING, and the worker tries it again until it
# is free.
my $taken = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => 0, Listen => 1, Proto => 'tcp')
  or die "cannot listen: $!";
my $tport = $taken->sockport;
$logpos = -s $node->logfile;
$node->safe_psql('postgres', "ALTER DATABASE $db SET eventstream.http_port = $tport");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(wait_until(10, sub {
	slurp_file($node->logfile, $logpos) =~ /WARNING:  could not start the eventstream HTTP server on 127\.0\.0\.1:$tport/ }),
	'a port that is taken: a WARNING');
like(slurp_file($node->logfile, $logpos), qr/moved from http:\/\/127\.0\.0\.1:$new to http:\/\/127\.0\.0\.1:$tport \(not listening yet\)/,
	'  and the LOG line says it does not listen yet');
$taken->close;
ok(health_is("http://127.0.0.1:$tport", '200'), '  it listens there once the port is free');
$S->{url} = "http://127.0.0.1:$tport";
$S->{port} = $tport;

# Another site given the port a site listens on does not share it (no
# SO_REUSEPORT): a WARNING, and every connection to the port still reaches
# the first site.
my $D = add_site($node, 'dup');
$logpos = -s $node->logfile;
$node->safe_psql('postgres', "ALTER DATABASE dup SET eventstream.http_port = $tport");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(wait_until(10, sub {
	slurp_file($node->logfile, $logpos) =~ /WARNING:  could not start the eventstream HTTP server on 127\.0\.0\.1:$tport/ }),
	'a port another site listens on: a WARNING for the second site');
my $sid = sq($S, 'SELECT site_id FROM eventstream.site');
my %answered;
for (1 .. 20)
{
	my ($st, $body) = curl("http://127.0.0.1:$tport/api/eventstream/v1/health");
	$answered{$body =~ /"site_id": "([^"]+)"/ ? $1 : "status $st"}++;
}
is(join(',', keys %answered), $sid, '  and the port answers for the first site only');
unlike(slurp_file($node->logfile, $logpos), qr/database "site" (reopened|moved)/,
	'  a reload that changes nothing of a site (its TLS files reset before) leaves its endpoint alone');


######################################################################
# Progress: an initial sync and a catch-up, seen in pg_stat_activity and
# producer_status.  The consumer's worker is stepped from one test pause
# point to the next (received -> before-apply -> received of the next
# page ...): nothing depends on timing.
######################################################################

my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');
# The producer listens on every address after a reload, and the consumer
# reaches it at 127.0.0.2: a host other than the one its own default
# site_url names.
$node->safe_psql('postgres', "ALTER DATABASE prod SET eventstream.http_listen_address = '0.0.0.0'");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
ok(health_is("http://127.0.0.2:$P->{port}", '200'), 'the producer listens on 0.0.0.0 after a reload');
my $purl = "http://127.0.0.2:$P->{port}";
sq($P, q{
	CREATE ROLE reader;
	CREATE TABLE big (id int PRIMARY KEY, v text);
	GRANT SELECT ON big TO reader;
	INSERT INTO big SELECT i, 'v' || i FROM generate_series(1, 250) i;
	ANALYZE big;
});
sq($C, q{
	CREATE ROLE applier;
	CREATE TABLE big (id int PRIMARY KEY, v text);
	GRANT SELECT, INSERT, UPDATE, DELETE ON big TO applier;
});
my ($pkey, $psecret) = key_pair($P, 'reader');
my ($ret, $o, $e) = q_try($C, "SELECT eventstream.add_producer(producer_url => '$purl', api_key => '$pkey', "
	. "api_secret => '$psecret', subscriber => 'applier', tables => ARRAY['big'])");
is($ret, 0, 'the consumer subscribes');
like($e, qr/WARNING:  this site registers with producer "\Q$purl\E" as "http:\/\/127\.0\.0\.1:$C->{port}"/,
	'without eventstream.site_url, a WARNING says which URL the producer is told');
like($e, qr/HINT:  Set eventstream\.site_url/, '  and how to set it');

my $worker_q = "SELECT query FROM pg_stat_activity WHERE backend_type = 'eventstream worker' "
  . "AND datname = 'cons' AND state = 'active'";
sub pause_at
{
	my ($point, $nowait) = @_;
	sq($C, "ALTER SYSTEM SET eventstream.test_pause_at = '$point'");
	sq($C, 'SELECT pg_reload_conf()');
	return '' if $nowait;
	my $last = '';
	my $ok = wait_until(20, sub {
		$last = sq($C, $worker_q);
		return $last =~ /^paused at \Q$point\E/;
	});
	diag("the consumer's worker did not pause at $point: '$last'") unless $ok;
	return $last;
}
my $other = 'before-apply';
# Steps until the worker says what $want matches; its text.
sub step_until
{
	my ($want) = @_;
	my $said = '';
	foreach my $i (1 .. 20)
	{
		$other = $other eq 'received' ? 'before-apply' : 'received';
		$said = pause_at($other);
		return $said if $said =~ $want;
	}
	diag("last said: $said");
	return $said;
}

pause_at('received', 'nowait');
sq($P, "SELECT eventstream.approve('$C->{url}', 'big')");
sq($P, "INSERT INTO big VALUES (1000, 'after the approval')");    # answers the long-poll at once
my $said = step_until(qr/^paused at before-apply: copying/);
like($said, qr/^paused at before-apply: copying public\.big from \Q$purl\E \(100 of ~250 rows\)$/,
	"pg_stat_activity: the worker copies public.big from the producer (rows of the page applied next, of the producer's estimate)");
$said = step_until(qr/^paused at received/);
is($said, "paused at received: pulling from $purl", 'then it pulls from the producer, named');
is(sq($C, "SELECT rows_copied || ' ' || rows_estimate || ' | ' || copying FROM eventstream.producer_status"),
	'100 250 | public.big: 100 of ~250 rows', 'producer_status: rows copied of the estimate, mid-copy');
is(sq($C, "SELECT snapshot_rows || ' ' || snapshot_estimate FROM eventstream.producer_table"), '100 250',
	'  as producer_table keeps them');

# Catch-up: a backlog larger than a window (8000 logs) arrives in windows
# that end at ticks; after each, the producer says how many wait.
sq($C, 'ALTER SYSTEM RESET eventstream.test_pause_at');
sq($C, 'SELECT pg_reload_conf()');
ok(wait_query($C, 'SELECT count(*) FROM big', '251', 30), 'the copy ends');
is(sq($C, "SELECT coalesce(copying, 'none') || ' ' || coalesce(rows_copied::text, 'none') FROM eventstream.producer_status"),
	'none none', 'producer_status: nothing being copied');
pause_at('received', 'nowait');    # the worker is in a long-poll
foreach my $i (0 .. 3)
{
	sq($P, "INSERT INTO big SELECT i, 'x' FROM generate_series(2000 + $i * 5000, 2000 + $i * 5000 + 4999) i");
	sq($P, 'SELECT eventstream._tick()');
}
my $behind = '';
foreach my $i (1 .. 20)
{
	$other = $other eq 'received' ? 'before-apply' : 'received';
	pause_at($other);
	$behind = sq($C, 'SELECT updates_behind FROM eventstream.producer_status');
	last if $behind ne '' && $behind > 0;
}
cmp_ok($behind || 0, '>', 5000, "catching up: producer_status says how many updates wait on the producer ($behind)");
sq($C, 'ALTER SYSTEM RESET eventstream.test_pause_at');
sq($C, 'SELECT pg_reload_conf()');
ok(wait_query($C, 'SELECT count(*) FROM big', '20251', 30), 'the backlog arrives');
ok(wait_query($C, 'SELECT updates_behind FROM eventstream.producer_status', '0', 30),
	'  and then none wait');
ok(wait_query($C, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'cons' AND state = 'idle'",
		'1', 30), 'the worker is idle in pg_stat_activity');

# The estimate is the planner's (reltuples), and is withheld for a table
# under row-level security: its total would tell about hidden rows.
sq($P, 'ANALYZE big');
is(sq($P, "SELECT eventstream._row_estimate('big')"), '20251', 'the estimate of a table is its reltuples');
sq($P, 'ALTER TABLE big ENABLE ROW LEVEL SECURITY');
is(sq($P, "SELECT coalesce(eventstream._row_estimate('big')::text, 'none')"), 'none',
	'  and none for a table under row-level security');

done_testing();
