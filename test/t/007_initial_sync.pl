# Initial sync and recovery between two real sites (two databases of one
# node, each with its own worker and HTTP port): tables whose key is an
# array or a composite holding an array, copied over several snapshot
# pages (so after= carries such a key back to the producer).
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
use EsSites;

my $schema = q{
	CREATE TABLE arr (id int[] PRIMARY KEY, v text);
	CREATE TABLE comp (a text, b int[], c timestamptz, PRIMARY KEY (a, b, c));
};

my $node = new_node('sites');
my $P = add_site($node, 'producer');
my $C = add_site($node, 'consumer');

sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	-- 150 rows each: two snapshot pages of 100, the second asked for with
	-- after= the last key of the first.
	INSERT INTO arr SELECT ARRAY[i, i * 2, -i], 'v' || i FROM generate_series(1, 150) i;
	INSERT INTO comp SELECT 'a, "' || (i % 3) || '"', ARRAY[i, i + 1], timestamptz '2024-01-01 00:00+00' + i * interval '1 h'
	  FROM generate_series(1, 150) i;
});
sq($C, $schema . q{
	CREATE ROLE applier;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
});

my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['arr', 'comp'])");
sq($P, "SELECT eventstream.approve('$C->{url}', t) FROM unnest(ARRAY['arr', 'comp']) t");

######################################################################
# Array keys over several snapshot pages
######################################################################

ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE snapshot_pending AND ref_table IN ('public.arr', 'public.comp')",
		'0', 120),
	'the initial sync of the tables keyed by arrays ends');
is(digest($C, 'arr'), digest($P, 'arr'), 'an int[] key: all 150 rows copied, as on the producer');
is(digest($C, 'comp'), digest($P, 'comp'), 'a composite key with text (commas, quotes), int[] and timestamptz: all 150 rows copied');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE note = 'initial sync' AND ref_table = 'public.arr' AND status = 'Synced'"),
	'150', 'each copied once, Synced');
sq($P, "UPDATE arr SET v = 'changed' WHERE id = '{150,300,-150}'");
ok(wait_query($C, "SELECT v FROM arr WHERE id = '{150,300,-150}'", 'changed', 60),
	'an update of an array-keyed row streams afterwards');

done_testing();
