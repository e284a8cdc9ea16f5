# EsSites -- helpers for TAP tests that run eventstream sites: databases
# with the extension and an HTTP port, on PostgreSQL::Test::Cluster nodes,
# talking HTTP on loopback.  A site is a hash { node, db, port, url, name,
# site_id }.  Nothing here sleeps a fixed time hoping: waits poll their
# condition with a deadline.
package EsSites;

use strict;
use warnings;
use Exporter 'import';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

our @EXPORT = qw(wait_until sq q_try wait_query http_get health_ok rows digest
  new_node add_site key_pair sync_now);

# Poll $check (a sub) until it returns true or $secs pass; true if it did.
sub wait_until
{
	my ($secs, $check) = @_;
	my $deadline = time + $secs;
	while (1)
	{
		return 1 if $check->();
		return 0 if time > $deadline;
		Time::HiRes::sleep(0.05);
	}
}

# Run SQL on a site; dies on error.
sub sq
{
	my ($s, $sql) = @_;
	return $s->{node}->safe_psql($s->{db}, $sql);
}

# Run SQL on a site that may fail: (exit code, stdout, stderr).
sub q_try
{
	my ($s, $sql) = @_;
	my ($ret, $out, $err) = $s->{node}->psql($s->{db}, $sql);
	return ($ret, $out // '', $err // '');
}

# Poll a query on a site until it returns $expected, for at most $secs
# seconds.  True if it did; otherwise says what it returned last.
sub wait_query
{
	my ($s, $sql, $expected, $secs) = @_;
	my ($last, $lasterr) = ('', '');
	my $ok = wait_until($secs // 60, sub {
		my ($ret, $out, $err) = $s->{node}->psql($s->{db}, $sql);
		($last, $lasterr) = ($out // '', $err // '');
		return $ret == 0 && $last eq $expected;
	});
	diag("waited ${\ ($secs // 60)} s on $s->{name} for\n  $sql\nto return '$expected'; last: '$last' $lasterr")
	  unless $ok;
	return $ok;
}

# curl: (status, body)
sub http_get
{
	my ($url, $max) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '-w', "\n%{http_code}", '--max-time', $max // 5, $url ],
		'>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	return ($status, $body);
}

# Poll until the site answers health.
sub health_ok
{
	my ($s, $secs) = @_;
	return wait_until($secs // 60,
		sub { (http_get("$s->{url}/api/eventstream/v1/health", 2))[0] eq '200' });
}

# The rows of $table matching $where on a site, as text in a fixed order.
sub rows
{
	my ($s, $table, $where) = @_;
	$where //= 'true';
	return sq($s, "SELECT coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '') FROM $table t WHERE $where");
}

# A digest of a whole table (order-independent), with its row count.
sub digest
{
	my ($s, $table) = @_;
	return sq($s, "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') FROM $table t");
}

# A started node with the library preloaded; $conf is more settings.
sub new_node
{
	my ($name, $conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'eventstream'
eventstream.prune_interval = 0
log_statement = none
} . ($conf // ''));
	$node->start;
	return $node;
}

# A database on $node that is a site: HTTP port set before CREATE
# EXTENSION, health polled.  %o: settings => { name => value } for the
# database; encoding => its encoding (with the C locale); version => the
# extension's version to install (the default version otherwise).
sub add_site
{
	my ($node, $db, %o) = @_;
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	$node->safe_psql('postgres', "CREATE DATABASE $db"
		  . ($o{encoding} ? " ENCODING '$o{encoding}' LOCALE 'C' TEMPLATE template0" : ''));
	$node->safe_psql('postgres', "ALTER DATABASE $db SET eventstream.http_port = $port");
	foreach my $k (sort keys %{ $o{settings} // {} })
	{
		$node->safe_psql('postgres', "ALTER DATABASE $db SET $k = '$o{settings}{$k}'");
	}
	$node->safe_psql($db, 'CREATE EXTENSION eventstream' . ($o{version} ? " VERSION '$o{version}'" : ''));
	my $s = { node => $node, db => $db, port => $port, url => "http://127.0.0.1:$port",
		name => $node->name . "/$db" };
	ok(health_ok($s), "$s->{name}: the site answers health");
	$s->{site_id} = sq($s, 'SELECT site_id FROM eventstream.site');
	return $s;
}

# A new API key of $role on a site: (key, secret).
sub key_pair
{
	my ($s, $role) = @_;
	return split /\|/, sq($s, "SELECT api_key || '|' || api_secret FROM eventstream.create_api_key('$role')");
}

# eventstream.sync_now() on a site: pull and apply everything now.
sub sync_now
{
	my ($s, $url) = @_;
	return sq($s, "SELECT eventstream.sync_now('$url')");
}

1;
