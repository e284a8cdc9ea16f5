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
	qr/eventstream HTTP endpoint of database "site" moved from 127\.0\.0\.1:$old to 127\.0\.0\.1:$new/,
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
$S->{url} = "http://127.0.0.1:$new";
$S->{port} = $new;

done_testing();
