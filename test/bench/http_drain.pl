#!/usr/bin/perl
# test/bench/http_drain.pl -- drain one consumer's backlog over HTTP.
#
# Used by test/bench/http_serve.sh:
#   perl http_drain.pl BASE KEY:SECRET CONSUMER_URL CURSOR LIMIT
# Pulls GET BASE/updates?consumer=...&cursor=...&limit=LIMIT on one
# keep-alive connection (HTTP::Tiny), following the returned cursor, until a
# page says more=false.  Every reply must be a 200 whose update ids rise
# strictly (from page to page too).  Prints one line:
#   updates pages seconds connections client_cpu_seconds first_id last_id
# where seconds is the wall time from the first request to the last reply.
use strict;
use warnings;
use HTTP::Tiny;
use JSON::XS ();
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

my ($base, $auth, $consumer, $cursor, $limit) = @ARGV;
die "usage: http_drain.pl BASE KEY:SECRET CONSUMER_URL CURSOR LIMIT\n" unless defined $limit;

sub uri_escape
{
	my ($v) = @_;
	$v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge;
	return $v;
}

my $http = HTTP::Tiny->new(keep_alive => 1, timeout => 300);
my $headers = { headers => { Authorization => "token $auth" } };
my $json = JSON::XS->new;
my $consumer_q = uri_escape($consumer);
my ($total, $pages, $first_id, $last_id) = (0, 0, undef, 0);
# Count the TCP connections HTTP::Tiny opens (keep-alive: one).
my $connections = 0;
{
	no warnings 'redefine';
	my $connect = \&HTTP::Tiny::Handle::connect;
	*HTTP::Tiny::Handle::connect = sub { $connections++; goto &$connect; };
}
my @cpu0 = times;
my $t0 = clock_gettime(CLOCK_MONOTONIC);
for (;;)
{
	my $res = $http->get("$base/updates?consumer=$consumer_q&cursor=" . uri_escape($cursor) . "&limit=$limit",
		$headers);
	die "http_drain.pl: page " . ($pages + 1) . ": HTTP $res->{status} $res->{reason}: $res->{content}\n"
		unless $res->{status} == 200;
	my $page = $json->decode($res->{content});
	$pages++;
	foreach my $u (@{ $page->{updates} })
	{
		die "http_drain.pl: update id $u->{id} after $last_id: not in rising order\n"
			unless $u->{id} > $last_id;
		$first_id //= $u->{id};
		$last_id = $u->{id};
		$total++;
	}
	$cursor = $page->{cursor};
	last unless $page->{more};
}
my $secs = clock_gettime(CLOCK_MONOTONIC) - $t0;
my @cpu1 = times;
printf "%d %d %.3f %d %.2f %s %s\n", $total, $pages, $secs, $connections,
	($cpu1[0] + $cpu1[1]) - ($cpu0[0] + $cpu0[1]), $first_id // '-', $last_id;
