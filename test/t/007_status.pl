# What a consumer and a producer tell about each other, between real sites:
# eventstream.consumer_status on the producer counts what the consumer has
# not acknowledged, and drops to nothing soon after the consumer applied
# everything; eventstream.producer_status on the consumer stops saying
# streaming, and its lag grows, while the producer is down.
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
use Time::HiRes qw(time);
use EsSites;

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');

sq($P, q{
	CREATE TABLE item (name text PRIMARY KEY, v text, secret text);
	CREATE TABLE many (id int PRIMARY KEY, v text);
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
my $consumer_schema = q{
	CREATE TABLE item (name text PRIMARY KEY, v text CHECK (v <> 'bad'), secret text);
	CREATE TABLE many (id int PRIMARY KEY, v text CHECK (v <> 'bad'));
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
};
sq($C, $consumer_schema);
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
sq($P, "SELECT eventstream.approve('$C->{url}', 'item')");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.item'", 'Approved', 30),
	'the consumer is approved');
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 30), 'and streaming');

######################################################################
# consumer_status.updates_waiting follows what the consumer applied
######################################################################

# One transaction of 2500 rows: a window of several pages, the last of
# which says nothing more is waiting.  The worker long-polls for what comes
# next while it applies that page; once applied, the producer hears of it
# at once, not when that long-poll is answered (25 s later).
my $waiting_sql = "SELECT updates_waiting FROM eventstream.consumer_status WHERE consumer_url = '$C->{url}'";
sq($P, "INSERT INTO item SELECT 'i' || g, 'x', 's' FROM generate_series(1, 2500) g");
ok(wait_query($C, 'SELECT count(*) FROM item', '2500', 60), 'updates_waiting: the consumer applies 2500 rows');
my $applied_at = time;
ok(wait_query($P, $waiting_sql, '0', 10), 'updates_waiting: the producer counts none waiting soon after');
note(sprintf('updates_waiting reached 0 %.2f s after the rows were seen applied', time - $applied_at));

######################################################################
# producer_status while the producer is down
######################################################################

$P->{node}->stop;
my $lag_sql = "SELECT state || ' ' || extract(epoch FROM lag) FROM eventstream.producer_status";
my $first;
ok(wait_until(30, sub { $first = sq($C, $lag_sql); $first =~ /^(\S+) ([0-9.]+)$/ && $1 ne 'streaming' && $2 > 0 }),
	'producer down: producer_status is not streaming, and lags') or diag($first);
note("producer down: $first");
my ($state, $lag1) = split / /, $first;
is($state, 'failing', 'producer down: it says failing');
my $later;
ok(wait_until(30, sub { $later = sq($C, $lag_sql); (split / /, $later)[1] > $lag1 }), 'producer down: the lag grows')
	or diag($later);
like(sq($C, 'SELECT attention FROM eventstream.producer_status'), qr/^pulls fail: see last_error/,
	'producer down: attention says so');

done_testing();
