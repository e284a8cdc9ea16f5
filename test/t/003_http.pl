# The site's HTTP endpoint: served by the site worker on the port set for
# its database; health answers without a key, every other API path answers
# 401 until a key is given, anything else 404.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes ();
use FindBin;
use lib $FindBin::RealBin;
use EsSites qw(new_node);

my $node = new_node('http');

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
# The library's version, the control file's default_version.
my ($version) = slurp_file("$FindBin::RealBin/../../eventstream.control") =~ /^default_version\s*=\s*'([^']+)'/m;
like($body, qr/"version": "\Q$version\E"/, "and the version, $version");

($status, $body) = http('GET', "$base/updates?consumer=x&cursor=y");
is($status, '401', 'other API paths need a key');
like($body, qr/"error": \{"code": "unauthorized"/, 'errors are JSON');

# curl -i: (status, {header name in lowercase => value}, body)
sub api_headers
{
	my ($url, $auth) = @_;
	my @cmd = ('curl', '-s', '-i', '--max-time', '10');
	push @cmd, ('-H', "Authorization: $auth") if defined $auth;
	my ($out, $err);
	IPC::Run::run([ @cmd, $url ], '>', \$out, '2>', \$err);
	my ($head, $rest) = split /\r\n\r\n/, ($out // ''), 2;
	my ($code) = ($head // '') =~ m{^HTTP/\S+ (\d+)};
	my %headers;
	foreach my $line (split /\r\n/, $head // '')
	{
		$headers{ lc $1 } = $2 if $line =~ /^([^:\s]+):\s*(.*?)\s*$/;
	}
	return ($code // '', \%headers, $rest // '');
}

my $headers;
($status, $headers, $body) = api_headers("$base/health");
is($headers->{'eventstream-protocol'}, '2', 'health says the protocol version (Eventstream-Protocol: 2)');
ok(!exists $headers->{'eventstream-cursor'}, '  and no page headers');
($status, $headers, $body) = api_headers("$base/updates?consumer=x&cursor=y");
is("$status $headers->{'eventstream-protocol'}", '401 2', 'so does an error');

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

# Authenticated API: a key for a role that may read the table.
$node->safe_psql('site', q{
	CREATE ROLE branch;
	CREATE TABLE item (code text PRIMARY KEY, name text);
	GRANT SELECT ON item TO branch;
	CREATE ROLE other;
});
my ($key, $secret) = split /\|/, $node->safe_psql('site',
	"SELECT api_key || '|' || api_secret FROM eventstream.create_api_key('branch')");
my ($key2, $secret2) = split /\|/, $node->safe_psql('site',
	"SELECT api_key || '|' || api_secret FROM eventstream.create_api_key('other')");

# curl with a body and an Authorization header: (status, body)
sub api
{
	my ($method, $url, $auth, $data, @extra) = @_;
	my @cmd = ('curl', '-s', '-X', $method, '-w', "\n%{http_code}", '--max-time', '10', @extra);
	push @cmd, ('-H', "Authorization: $auth") if defined $auth;
	push @cmd, ('-H', 'Content-Type: application/json', '--data-binary', $data) if defined $data;
	my ($out, $err);
	IPC::Run::run([ @cmd, $url ], '>', \$out, '2>', \$err);
	my @lines = split /\n/, ($out // '');
	my $code = pop @lines // '';
	return ($code, join("\n", @lines));
}

my $registration = '{"consumer_url": "http://branch-1:8000", "site_id": "00000000-0000-0000-0000-0000000000b1", "tables": ["public.item"]}';
($status, $body) = api('POST', "$base/consumers", "token $key:wrong", $registration);
is($status, '401', 'a wrong secret is refused');
($status, $body) = api('POST', "$base/consumers", "token $key:$secret", $registration);
is($status, '200', 'registration with the right key');
like($body, qr/"status": "Pending"/, 'subscriptions start Pending');
my ($cursor) = $body =~ /"cursor": "([^"]+)"/;
ok($cursor, 'registration returns a cursor');

($status, $body) = api('POST', "$base/consumers", "token $key:$secret", '{"consumer_url": ');
is($status, '400', 'malformed JSON is a 400');
like($body, qr/"code": "22P02"/, 'with the SQLSTATE as code');
my $big = PostgreSQL::Test::Utils::tempdir() . '/big.json';
PostgreSQL::Test::Utils::append_to_file($big, 'x' x (2 * 1024 * 1024));
($status, $body) = api('POST', "$base/consumers", "token $key:$secret", "\@$big");
is($status, '413', 'an oversized body is a 413');

sub uri_escape { my ($v) = @_; $v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge; return $v; }

# While the subscription is Pending, nothing of the table is served.
$node->safe_psql('site', "INSERT INTO item VALUES ('P', 'pending pear')");
($status, $body) = api('GET', "$base/updates?consumer=" . uri_escape('http://branch-1:8000')
	. '&cursor=' . uri_escape($cursor) . '&limit=10', "token $key:$secret");
is($status, '200', 'a pull while Pending answers');
like($body, qr/"updates": \[\]/, 'with no updates: an unapproved table is never served');
unlike($body, qr/pending pear/, 'not even later rows of it');
($cursor) = $body =~ /"cursor": "([^"]+)"/;
$node->safe_psql('site', "DELETE FROM item WHERE code = 'P'");

$node->safe_psql('site', q{
	SELECT eventstream.approve('http://branch-1:8000', 'item');
	INSERT INTO item VALUES ('A', 'apple'), ('B', 'banana');
});
my $q = 'consumer=' . uri_escape('http://branch-1:8000') . '&cursor=' . uri_escape($cursor) . '&limit=10';
($status, $body) = api('GET', "$base/updates?$q", "token $key:$secret");
is($status, '200', 'pull with the registering key');
like($body, qr/"docname" ?: "A".*"docname" ?: "B"/s, 'the updates arrive in order');

# The page again: its headers say what the body says.
($status, $headers, $body) = api_headers("$base/updates?$q", "token $key:$secret");
my ($page_cursor) = $body =~ /"cursor": "([^"]+)"/;
is($status, '200', 'the page again');
is($headers->{'eventstream-protocol'}, '2', '  Eventstream-Protocol: 2');
is($headers->{'eventstream-cursor'}, $page_cursor, "  Eventstream-Cursor: the page's cursor");
is(join(' ', map { $headers->{"eventstream-$_"} // 'none' } qw(more complete acks)), 'false true true',
	'  Eventstream-More, -Complete, -Acks');
like($body, qr/"more": false, "complete": true, "acks": true/, '  as the body says');

require MIME::Base64;
my $basic = 'Basic ' . MIME::Base64::encode_base64("$key:$secret", '');
($status, $body) = api('GET', "$base/updates?$q", $basic);
is($status, '200', 'Basic authentication with the same pair works');

($status, $body) = api('GET', "$base/updates?$q", "token $key2:$secret2");
is($status, '403', "another key cannot pull this consumer's stream");

# One document with its children.
$node->safe_psql('site', q{
	CREATE TABLE item_price (code text REFERENCES item ON DELETE CASCADE, list text, rate int,
							 PRIMARY KEY (code, list));
	GRANT SELECT ON item_price TO branch;
	SELECT eventstream.add_child_table('item', 'item_price');
	INSERT INTO item VALUES ('C/1', 'cherry');
	INSERT INTO item_price VALUES ('C/1', 'retail', 3);
});
($status, $body) = api('GET', "$base/documents/public.item/" . uri_escape('C/1'), "token $key:$secret");
is($status, '200', 'a document by table and docname');
($status, $headers) = api_headers("$base/documents/public.item/" . uri_escape('C/1'), "token $key:$secret");
is(($headers->{'eventstream-protocol'} // 'none') . ' ' . ($headers->{'eventstream-cursor'} // 'none'), '2 none',
	'  with Eventstream-Protocol, no page headers');
like($body, qr/"name": "cherry"/, 'with its fields');
like($body, qr/"public\.item_price": \[\{[^]]*"rate": 3/, 'and its child rows');
($status, $body) = api('GET', "$base/documents/item/nope", "token $key:$secret");
is($status, '404', 'a missing document is a 404');
($status, $body) = api('GET', "$base/documents/public.item/A", "token $key2:$secret2");
is($status, '403', 'a role that cannot read the table gets a 403');
($status, $body) = api('GET', "$base/documents/" . uri_escape('item; DROP TABLE item') . "/A", "token $key:$secret");
is($status, '400', 'an injection attempt in the table name is a 400');
is($node->safe_psql('site', "SELECT count(*) FROM item"), '3', 'and harmless');

# Long-poll: a pull that finds nothing waits, and is answered as soon as a
# commit writes a log; one that times out answers with no updates.
($status, $body) = api('GET', "$base/updates?$q", "token $key:$secret");
my ($next) = $body =~ /"cursor": "([^"]+)"/;
my $q2 = 'consumer=' . uri_escape('http://branch-1:8000') . '&cursor=' . uri_escape($next) . '&limit=10';
my $t0 = Time::HiRes::time();
($status, $body) = api('GET', "$base/updates?$q2&wait=1", "token $key:$secret");
my $waited = Time::HiRes::time() - $t0;
is($status, '200', 'a long-poll that times out answers 200');
like($body, qr/"updates": \[\]/, 'with no updates');
cmp_ok($waited, '>=', 0.9, "after waiting (${waited}s)");
my $before = $node->safe_psql('site',
	"SELECT last_pull_at FROM eventstream.consumer WHERE consumer_url = 'http://branch-1:8000'");
my ($out, $err) = ('', '');
my $poll = IPC::Run::start([ 'curl', '-s', '--max-time', '30', '-H', "Authorization: token $key:$secret",
	"$base/updates?$q2&wait=20" ], '>', \$out, '2>', \$err);
# The poll has pulled (found nothing, committed) and is parked once
# last_pull_at moved.
ok($node->poll_query_until('site', "SELECT last_pull_at > '$before' FROM eventstream.consumer"
	. " WHERE consumer_url = 'http://branch-1:8000'"), 'the long-poll pulled and parked');
$t0 = Time::HiRes::time();
$node->safe_psql('site', "INSERT INTO item VALUES ('D', 'date')");
$poll->finish;
my $woke = Time::HiRes::time() - $t0;
like($out, qr/"docname" ?: "D"/, 'the parked long-poll gets the new update');
cmp_ok($woke, '<', 5, "within ${woke}s of the commit, not at its 20 s deadline");

# Documents by equality filters (mapping dependencies).
($status, $body) = api('GET', "$base/documents/public.item?filters=" . uri_escape('{"name": "cherry"}'),
	"token $key:$secret");
is($status, '200', 'documents by filters');
like($body, qr/"docnames": \["C\/1"\]/, 'gives the matching docnames');
($status, $body) = api('GET', "$base/documents/public.item?filters=" . uri_escape('{}') . "&limit=2",
	"token $key:$secret");
like($body, qr/"docnames": \["A", "B"\]/, 'the first matches in key order');
($status, $body) = api('GET', "$base/documents/public.item?filters=" . uri_escape('{"nope": 1}'),
	"token $key:$secret");
is($status, '400', 'an unknown filter column is a 400');
($status, $body) = api('GET', "$base/documents/public.item?filters=" . uri_escape(q{{"name\"; DROP TABLE item; --": 1}}),
	"token $key:$secret");
is($status, '400', 'an injection attempt in a filter is a 400');
($status, $body) = api('GET', "$base/documents/public.item?filters=" . uri_escape(q{{"name": "x' OR '1'='1"}}),
	"token $key:$secret");
like($body, qr/"docnames": \[\]/, 'a filter value cannot widen the match');
is($node->safe_psql('site', "SELECT count(*) FROM item"), '4', 'the table is intact');

# Pages of existing documents (initial sync), in key order.
($status, $body) = api('GET', "$base/snapshot/public.item?limit=2", "token $key:$secret");
is($status, '200', 'a snapshot page');
like($body, qr/"documents": \[\{"data": \{"code": "A".*"docname": "A".*"docname": "B"/s, 'first page in key order');
like($body, qr/"more": true/, 'with more to come');
my ($after) = $body =~ /"next": "([^"]+)"/;
($status, $body) = api('GET', "$base/snapshot/public.item?limit=2&after=" . uri_escape($after), "token $key:$secret");
like($body, qr/"public\.item_price": \[\{"code": "C\/1", "list": "retail", "rate": 3\}\]\}, "docname": "C\/1"\}, \{.*"docname": "D"/s,
	'the next page, children included');
like($body, qr/"more": false/, 'and the end');
($status, $body) = api('GET', "$base/snapshot/public.item?limit=0", "token $key:$secret");
is($status, '400', 'a bad limit is a 400');
($status, $body) = api('GET', "$base/snapshot/public.item", "token $key2:$secret2");
is($status, '403', 'a role that cannot read the table gets no snapshot');

$node->safe_psql('site', "SELECT eventstream.revoke_api_key('$key')");
($status, $body) = api('GET', "$base/updates?$q", "token $key:$secret");
is($status, '401', 'a revoked key is refused');

# The worker keeps serving after a restart of the server.
$node->restart;
foreach my $i (1 .. 300)
{
	($status, $body) = http('GET', "$base/health");
	last if $status eq '200';
	$node->poll_query_until('site', 'SELECT true');
}
is($status, '200', 'health answers again after a restart');

# HTTPS: with a certificate and key set for a database, its endpoint speaks
# TLS only; its request size limit is a setting too.
my $tls_dir = PostgreSQL::Test::Utils::tempdir();
my ($ok, $osslout, $osslerr);
$ok = IPC::Run::run([ 'openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
		'-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1',
		'-keyout', "$tls_dir/site.key", '-out', "$tls_dir/site.crt" ],
	'>', \$osslout, '2>', \$osslerr);
ok($ok, 'made a self-signed certificate');
my $tls_port = PostgreSQL::Test::Cluster::get_free_port();
$node->safe_psql('postgres', 'CREATE DATABASE tls_site');
$node->safe_psql('postgres', qq{
	ALTER DATABASE tls_site SET eventstream.http_port = $tls_port;
	ALTER DATABASE tls_site SET eventstream.http_tls_cert_file = '$tls_dir/site.crt';
	ALTER DATABASE tls_site SET eventstream.http_tls_key_file = '$tls_dir/site.key';
	ALTER DATABASE tls_site SET eventstream.http_max_request_size = '4kB';
});
$node->safe_psql('tls_site', 'CREATE EXTENSION eventstream');
my $tls_base = "https://127.0.0.1:$tls_port/api/eventstream/v1";
foreach my $i (1 .. 300)
{
	($status, $body) = api('GET', "$tls_base/health", undef, undef, '--cacert', "$tls_dir/site.crt");
	last if $status eq '200';
	$node->poll_query_until('tls_site', 'SELECT true');
}
is($status, '200', 'HTTPS health with the certificate trusted');
($status, $body) = api('GET', "$tls_base/health");
is($status, '000', 'an untrusted certificate is refused by the client');
($status, $body) = api('GET', "http://127.0.0.1:$tls_port/api/eventstream/v1/health");
isnt($status, '200', 'plain HTTP is not served on a TLS port');
my ($tkey, $tsecret) = split /\|/, $node->safe_psql('tls_site', q{
	CREATE ROLE branch_tls;
	SELECT api_key || '|' || api_secret FROM eventstream.create_api_key('branch_tls')});
($status, $body) = api('POST', "$tls_base/consumers", "token $tkey:$tsecret", 'x' x 5000,
	'--cacert', "$tls_dir/site.crt");
is($status, '413', 'a body over eventstream.http_max_request_size (4kB) is a 413');
($status, $body) = api('POST', "$tls_base/consumers", "token $tkey:$tsecret", 'x' x 3000,
	'--cacert', "$tls_dir/site.crt");
is($status, '400', 'one under it is read (and refused as malformed JSON)');

done_testing();
