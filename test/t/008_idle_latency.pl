# An idle consumer is not delayed by traffic on tables it does not
# subscribe to: after 25,000 logs of another table (committed in a few
# large transactions, so the producer records ticks and serves a consumer
# behind it windows that end at them), one change of its own table still
# reaches it within milliseconds, not one long-poll deadline (25 s) per
# window of other tables' logs.  Two sites (two databases of one node).
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use EsSites;

my $node = new_node('sites');
$node->safe_psql('postgres', 'CREATE ROLE branch; CREATE ROLE applier');
my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');

my $tables = 'CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text);';
sq($P, $tables . 'GRANT SELECT ON a, b TO branch;');
sq($C, $tables . 'GRANT SELECT, INSERT, UPDATE, DELETE ON a, b TO applier;');

# The consumer takes a only.  Another consumer (registered here, it never
# pulls) takes b, so that b's changes are logged.
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['a'])");
sq($P, qq{
	SELECT eventstream._register_consumer('http://other:8000', gen_random_uuid(), 'k', 'branch', '["public.b"]');
	SELECT eventstream.approve('http://other:8000', 'b');
	SELECT eventstream.approve('$C->{url}', 'a');
});
sq($P, "INSERT INTO a VALUES (0, 'first')");
ok(wait_query($C, 'SELECT v FROM a', 'first', 60), 'the consumer streams a');

# 25,000 logs of b in five transactions, then one row of a.  (ES_BURST:
# another number of transactions of 5,000, to measure by hand.)
my $burst = $ENV{ES_BURST} // 5;
sq($P, "INSERT INTO b SELECT g, 'x' FROM generate_series($_ * 5000 + 1, ($_ + 1) * 5000) g") for 0 .. $burst - 1;
is(sq($P, "SELECT count(*) FROM eventstream.update_log WHERE ref_table = 'public.b'"), $burst * 5000,
	"$burst * 5,000 logs of b, a table the consumer does not take");
my $t0 = time;
sq($P, "INSERT INTO a VALUES (1, 'after the burst')");
ok(wait_until(60, sub { sq($C, 'SELECT count(*) FROM a WHERE id = 1') eq '1' }), 'the row of a arrives');
my $secs = time - $t0;
cmp_ok($secs, '<', 10, sprintf('within 10 s (%.2f s), not after a long-poll deadline per window', $secs));
# From the producer's commit to the consumer's apply (one clock: one node).
my $applied = sq($C, "SELECT extract(epoch FROM s.created_at) FROM eventstream.sync_log s WHERE docname = '1'");
note(sprintf('seen by polling after %.3f s; logged to applied: %.0f ms', $secs,
	1000 * ($applied - sq($P, "SELECT extract(epoch FROM l.created_at) FROM eventstream.update_log l "
							. "WHERE ref_table = 'public.a' AND docname = '1'"))))
  if $applied ne '';
is(sq($P, 'SELECT count(*) > 1 FROM eventstream.tick'), 't', 'the producer recorded ticks meanwhile');

done_testing();
