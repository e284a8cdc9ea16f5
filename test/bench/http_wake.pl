#!/usr/bin/perl
# test/bench/http_wake.pl -- commit -> long-poll response latency.
#
# Used by test/bench/http_wake.sh:
#   perl http_wake.pl BASE KEY:SECRET CONSUMER_URL CURSOR PGHOST PGPORT COUNT WARMUP
# The consumer must be up to date (no backlog) and subscribed to table t.
#
# A child process holds the long-poll: GET updates?...&limit=1000&wait=30 on
# one keep-alive connection (HTTP::Tiny); when the reply arrives it notes the
# time (CLOCK_MONOTONIC, which is system-wide) and tells the parent, then
# pulls again with the new cursor.  The parent (DBD::Pg over the Unix socket)
# waits until that pull has been made -- the consumer's acked_page becomes
# the page of the cursor the child pulls with, committed by the worker just
# before it parks the request -- then runs BEGIN; INSERT INTO t ...; notes
# the time; COMMIT.  The latency is reply-received minus just-before-COMMIT,
# so it includes the COMMIT itself (reported too).  Every reply must hold
# exactly the row inserted.  The first WARMUP iterations are not counted.
# Prints one line per counted iteration:
#   latency_ms commit_ms after_commit_ms iteration
use strict;
use warnings;
use DBI;
use HTTP::Tiny;
use IO::Handle;
use JSON::XS ();
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC usleep);

my ($base, $auth, $consumer, $cursor, $pghost, $pgport, $count, $warmup) = @ARGV;
die "usage: http_wake.pl BASE KEY:SECRET CONSUMER_URL CURSOR PGHOST PGPORT COUNT WARMUP\n"
	unless defined $warmup;
my $total = $count + $warmup;

sub uri_escape
{
	my ($v) = @_;
	$v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge;
	return $v;
}

sub page_of
{
	my ($c) = @_;
	$c =~ m{^v1/(\d+)/} or die "http_wake.pl: unexpected cursor $c\n";
	return $1;
}

pipe(my $from_child, my $to_parent) or die "pipe: $!";
my $pid = fork() // die "fork: $!";
if ($pid == 0)
{
	# The long-polling consumer.
	close $from_child;
	$to_parent->autoflush(1);
	my $http = HTTP::Tiny->new(keep_alive => 1, timeout => 120);
	my $headers = { headers => { Authorization => "token $auth" } };
	my $json = JSON::XS->new;
	my $c = $cursor;
	for my $i (1 .. $total)
	{
		my $res = $http->get("$base/updates?consumer=" . uri_escape($consumer) . "&cursor=" . uri_escape($c)
			. "&limit=1000&wait=30", $headers);
		my $t1 = clock_gettime(CLOCK_MONOTONIC);
		die "http_wake.pl: long-poll $i: HTTP $res->{status} $res->{reason}: $res->{content}\n"
			unless $res->{status} == 200;
		my $page = $json->decode($res->{content});
		my @docs = map { $_->{docname} } @{ $page->{updates} };
		$c = $page->{cursor};
		print $to_parent join(' ', $t1, $c, scalar(@docs), @docs), "\n";
	}
	exit 0;
}
close $to_parent;

my $dbh = DBI->connect("dbi:Pg:dbname=bench;host=$pghost;port=$pgport", 'postgres', '',
	{ AutoCommit => 1, RaiseError => 1, PrintError => 0 });
my $acked = $dbh->prepare('SELECT acked_page FROM eventstream.consumer WHERE consumer_url = ?');
my $insert = $dbh->prepare('INSERT INTO t VALUES (?, md5(?::text))');
my $next_page = page_of($cursor);
my $id = $dbh->selectrow_array('SELECT coalesce(max(id), 0) FROM t');
my $late = 0;

for my $i (1 .. $total)
{
	# Wait until the child's pull has run (it parks right after).
	my $deadline = clock_gettime(CLOCK_MONOTONIC) + 30;
	for (;;)
	{
		$acked->execute($consumer);
		my ($p) = $acked->fetchrow_array;
		$acked->finish;
		last if defined $p && $p == $next_page;
		die "http_wake.pl: iteration $i: the long-poll did not pull page $next_page within 30 s (acked_page $p)\n"
			if clock_gettime(CLOCK_MONOTONIC) > $deadline;
		usleep(200);
	}

	$id++;
	$dbh->begin_work;
	$insert->execute($id, $id);
	my $t0 = clock_gettime(CLOCK_MONOTONIC);
	$dbh->commit;
	my $tc = clock_gettime(CLOCK_MONOTONIC);

	my $line = <$from_child>;
	die "http_wake.pl: iteration $i: the long-polling child died\n" unless defined $line;
	chomp $line;
	my ($t1, $c, $n, @docs) = split / /, $line;
	die "http_wake.pl: iteration $i: expected one update for row $id, got $n (@docs)\n"
		unless $n == 1 && $docs[0] eq $id;
	$next_page = page_of($c);
	next if $i <= $warmup;
	printf "%.3f %.3f %.3f %d\n", ($t1 - $t0) * 1000, ($tc - $t0) * 1000, ($t1 - $tc) * 1000, $i - $warmup;
}
waitpid($pid, 0);
die "http_wake.pl: the long-polling child failed\n" if $?;
