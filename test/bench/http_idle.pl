#!/usr/bin/perl
# test/bench/http_idle.pl -- many consumers holding long-polls.
#
# Used by test/bench/http_idle.sh:
#   perl http_idle.pl HOST PORT KEY:SECRET WAIT CURSOR_FILE
# CURSOR_FILE has one "consumer_url cursor" per line.  For each line it opens
# a connection and sends GET /api/eventstream/v1/updates?consumer=...&cursor=
# ...&limit=100&wait=WAIT; whenever a reply arrives (a 200, else it stops with
# an error) it pulls again on the same connection with the reply's cursor
# (reconnecting if the server closed it).  One process, non-blocking sockets
# and select.  On SIGTERM or SIGINT it prints one line and exits:
#   replies updates reconnects
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use JSON::XS ();

my ($host, $port, $auth, $wait, $cursor_file) = @ARGV;
die "usage: http_idle.pl HOST PORT KEY:SECRET WAIT CURSOR_FILE\n" unless defined $cursor_file;

sub uri_escape
{
	my ($v) = @_;
	$v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge;
	return $v;
}

my $json = JSON::XS->new;
my $select = IO::Select->new;
my %by_fd;
my ($replies, $updates, $reconnects) = (0, 0, 0);
my $stop = 0;
$SIG{TERM} = $SIG{INT} = sub { $stop = 1; };

sub send_pull
{
	my ($c) = @_;
	unless ($c->{sock})
	{
		my $sock = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
			or die "http_idle.pl: connect to $host:$port: $!\n";
		$c->{sock} = $sock;
		$by_fd{ fileno($sock) } = $c;
		$select->add($sock);
	}
	$c->{buf} = '';
	my $req = "GET /api/eventstream/v1/updates?consumer=" . uri_escape($c->{url})
		. "&cursor=" . uri_escape($c->{cursor}) . "&limit=100&wait=$wait HTTP/1.1\r\n"
		. "Host: $host:$port\r\nAuthorization: token $auth\r\n\r\n";
	my $off = 0;
	while ($off < length $req)
	{
		my $n = syswrite($c->{sock}, $req, length($req) - $off, $off);
		die "http_idle.pl: write: $!\n" unless defined $n;
		$off += $n;
	}
}

sub drop_connection
{
	my ($c) = @_;
	$select->remove($c->{sock});
	delete $by_fd{ fileno($c->{sock}) };
	close $c->{sock};
	$c->{sock} = undef;
}

open my $fh, '<', $cursor_file or die "http_idle.pl: $cursor_file: $!\n";
while (my $line = <$fh>)
{
	chomp $line;
	my ($url, $cursor) = split / /, $line;
	send_pull({ url => $url, cursor => $cursor });
}
close $fh;

while (!$stop)
{
	foreach my $sock ($select->can_read(0.5))
	{
		my $c = $by_fd{ fileno($sock) };
		my $n = sysread($sock, $c->{buf}, 65536, length $c->{buf});
		next if !defined $n && ($!{EINTR} || $!{EAGAIN});
		die "http_idle.pl: read ($c->{url}): $!\n" unless defined $n;
		if ($n == 0)
		{
			# The server closed the connection: pull again on a new one.
			drop_connection($c);
			$reconnects++;
			send_pull($c);
			next;
		}
		my $end = index($c->{buf}, "\r\n\r\n");
		next if $end < 0;
		my $head = substr($c->{buf}, 0, $end);
		my ($status) = $head =~ m{^HTTP/1\.[01] (\d+)} or die "http_idle.pl: bad reply: $head\n";
		my ($len) = $head =~ /^Content-Length:\s*(\d+)/mi;
		die "http_idle.pl: reply without Content-Length: $head\n" unless defined $len;
		next if length($c->{buf}) < $end + 4 + $len;
		my $body = substr($c->{buf}, $end + 4, $len);
		die "http_idle.pl: $c->{url}: HTTP $status: $body\n" unless $status == 200;
		my $page = $json->decode($body);
		$replies++;
		$updates += scalar @{ $page->{updates} };
		$c->{cursor} = $page->{cursor};
		if ($head =~ /^Connection:\s*close/mi)
		{
			drop_connection($c);
			$reconnects++;
		}
		send_pull($c);
	}
}
print "$replies $updates $reconnects\n";
