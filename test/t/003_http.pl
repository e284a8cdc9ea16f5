# The site's HTTP endpoint: served by the site worker on the port set for
# its database; health answers without a key, every other API path answers
# 401 until a key is given, anything else 404.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('http');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'eventstream'
eventstream.prune_interval = 0
});
$node->start;

my $port = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres', 'CREATE DATABASE site');
$node->safe_psql('postgres', "ALTER DATABASE site SET eventstream.http_port = $port");
$node->safe_psql('site', 'CREATE EXTENSION eventstream');
my $site_id = $node->safe_psql('site', 'SELECT site_id FROM eventstream.site');
my $base = "http://127.0.0.1:$port/api/eventstream/v1";

# curl: (status, body)
sub http
{
	my ($method, $url) = @_;
	my ($stdout, $stderr);
	IPC::Run::run([ 'curl', '-s', '-X', $method, '-w', "\n%{http_code}", '--max-time', '10', $url ],
		'>', \$stdout, '2>', \$stderr);
	my @lines = split /\n/, ($stdout // '');
	my $status = pop @lines // '';
	return ($status, join("\n", @lines));
}

# Poll with a deadline until the worker listens.
my ($status, $body);
foreach my $i (1 .. 300)
{
	($status, $body) = http('GET', "$base/health");
	last if $status eq '200';
	$node->poll_query_until('site', 'SELECT true');    # a cheap round trip as the pause
}
is($status, '200', 'health answers 200');
like($body, qr/"site_id": "\Q$site_id\E"/, 'health gives the site_id');
like($body, qr/"version": "1\.0"/, 'and the version');

($status, $body) = http('GET', "$base/updates?consumer=x&cursor=y");
is($status, '401', 'other API paths need a key');
like($body, qr/"error": \{"code": "unauthorized"/, 'errors are JSON');

($status, $body) = http('GET', "http://127.0.0.1:$port/nope");
is($status, '404', 'unknown paths are 404');

($status, $body) = http('POST', "$base/health");
is($status, '405', 'health is GET only');

# Several requests on one keep-alive connection.
my ($stdout, $stderr);
IPC::Run::run([ 'curl', '-s', '-w', '<%{http_code} %{num_connects}>',
		"$base/health", "$base/health", "$base/health" ], '>', \$stdout, '2>', \$stderr);
is(join(',', $stdout =~ /<(\d+ \d+)>/g), '200 1,200 0,200 0',
	'keep-alive: three requests, one connection');

# The worker keeps serving after a restart of the server.
$node->restart;
foreach my $i (1 .. 300)
{
	($status, $body) = http('GET', "$base/health");
	last if $status eq '200';
	$node->poll_query_until('site', 'SELECT true');
}
is($status, '200', 'health answers again after a restart');

done_testing();
