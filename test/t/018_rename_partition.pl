# Capture follows tables, not OIDs or names (issue 15, items 3 and 5, and
# the capture side of item 1), between real sites.
#
# A. Renames.  A subscribed table, and its child table, renamed (ALTER
#    TABLE ... RENAME, SET SCHEMA, ALTER SCHEMA ... RENAME, in the same
#    session as writes and in the same transaction): every change is
#    logged under the name the consumer subscribed by, and the consumer
#    keeps applying.  A new table created under the old name is not
#    captured; a consumer subscribing to the renamed table's new name is
#    refused and told the name it is published by, and the old name still
#    stands for the renamed table (documents served by it).
# B. Partitioned tables.  A consumer subscribes to the root: the initial
#    sync reads through it, and the changes of every partition,
#    sub-partition and partition attached (with another column order) or
#    created later are logged under the root's name with the root's key;
#    a row moving between partitions ends in its new state.  A partitioned
#    child table travels inside its parent's documents; a partition
#    subscribed on its own is still captured under its own name.
# C. Backups.  pg_dump of the producer, custom and plain format, restored
#    into fresh databases of another cluster: the restore exits 0, every
#    row and foreign key is back, and a change made after the restore is
#    captured under the published names with no manual step.
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

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');

sq($P, q{
	CREATE SCHEMA shop;
	CREATE TABLE shop.item (id int PRIMARY KEY, v text);
	CREATE TABLE shop.line (item_id int NOT NULL REFERENCES shop.item ON DELETE CASCADE, n int, v text,
							PRIMARY KEY (item_id, n));
	CREATE TABLE meas (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
	CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
	CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us') PARTITION BY HASH (id);
	CREATE TABLE meas_us_0 PARTITION OF meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE meas_us_1 PARTITION OF meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	CREATE TABLE note (id int PRIMARY KEY, v text);
	CREATE TABLE note_tag (note_id int NOT NULL REFERENCES note ON DELETE CASCADE, tag text,
						   PRIMARY KEY (note_id, tag)) PARTITION BY HASH (note_id);
	CREATE TABLE note_tag_0 PARTITION OF note_tag FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE note_tag_1 PARTITION OF note_tag FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	CREATE TABLE hist (id int, y int, v text, PRIMARY KEY (id, y)) PARTITION BY RANGE (y);
	CREATE TABLE hist_2026 PARTITION OF hist FOR VALUES FROM (2026) TO (2027);
	CREATE TABLE hist_other PARTITION OF hist DEFAULT;
	CREATE ROLE branch;
	GRANT USAGE ON SCHEMA shop TO branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public, shop TO branch;
	SELECT eventstream.add_child_table('shop.item', 'shop.line');
	SELECT eventstream.add_child_table('note', 'note_tag');
	INSERT INTO shop.item VALUES (1, 'one'), (2, 'two'), (3, 'three');
	INSERT INTO shop.line VALUES (1, 1, 'a'), (1, 2, 'b'), (3, 1, 'c');
	INSERT INTO meas VALUES (1, 'eu', 'first'), (2, 'us', 'second'), (3, 'us', 'third'), (4, 'eu', 'fourth');
	INSERT INTO note VALUES (1, 'n1'), (2, 'n2');
	INSERT INTO note_tag VALUES (1, 'red'), (1, 'blue'), (2, 'green');
	INSERT INTO hist VALUES (1, 2026, 'this year'), (2, 2020, 'long ago');
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($C, q{
	CREATE SCHEMA shop;
	CREATE TABLE shop.item (id int PRIMARY KEY, v text);
	CREATE TABLE shop.line (item_id int NOT NULL REFERENCES shop.item ON DELETE CASCADE, n int, v text,
							PRIMARY KEY (item_id, n));
	CREATE TABLE meas (id int, region text, v text, PRIMARY KEY (id, region));
	CREATE TABLE note (id int PRIMARY KEY, v text);
	CREATE TABLE note_tag (note_id int NOT NULL REFERENCES note ON DELETE CASCADE, tag text,
						   PRIMARY KEY (note_id, tag));
	CREATE TABLE hist_2026 (id int, y int, v text, PRIMARY KEY (id, y));
	GRANT USAGE ON SCHEMA shop TO applier;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, shop TO applier;
});
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['shop.item', 'meas', 'note', 'hist_2026'])");
is(sq($P, "SELECT string_agg(ref_table || '=' || relid::text, ',' ORDER BY ref_table) FROM eventstream.published_table"),
	'public.hist_2026=hist_2026,public.meas=meas,public.note=note,public.note_tag=note_tag,shop.item=shop.item,shop.line=shop.line',
	'subscribing binds the names of the tables and of their child tables');
foreach my $t ('shop.item', 'meas', 'note', 'hist_2026')
{
	sq($P, "SELECT eventstream.approve('$C->{url}', '$t')");
}
ok(wait_query($C, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table",
		'Approved,Approved,Approved,Approved', 30), 'the consumer is approved');
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 60), 'and streaming');

# Wait until $ctable on the consumer holds what $ptable holds on the producer.
sub converges
{
	my ($ptable, $ctable, $what) = @_;
	my $want = digest($P, $ptable);
	ok(wait_query($C, "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, ',' ORDER BY t::text)), '-') "
			  . "FROM $ctable t", $want, 60), $what)
	  or diag("producer: " . rows($P, $ptable) . "\nconsumer: " . rows($C, $ctable));
}

converges('shop.item', 'shop.item', 'initial sync: the document table');
converges('shop.line', 'shop.line', '  its child table');
converges('meas', 'meas', '  a partitioned table, read through its root (sub-partitions too)');
converges('note_tag', 'note_tag', '  a partitioned child table');
converges('hist_2026', 'hist_2026', '  a partition subscribed on its own');

######################################################################
# A. Renames
######################################################################

my $from = sq($P, 'SELECT coalesce(max(id), 0) FROM eventstream.update_log');
my ($ret, $out, $err) = q_try($P, q{
	BEGIN;
	INSERT INTO shop.item VALUES (10, 'before the rename');
	ALTER TABLE shop.item RENAME TO goods;
	INSERT INTO shop.goods VALUES (11, 'after the rename, same transaction');
	INSERT INTO shop.line VALUES (11, 1, 'line of 11');
	COMMIT;
	INSERT INTO shop.goods VALUES (12, 'after the rename');
	ALTER TABLE shop.line RENAME TO goods_line;
	INSERT INTO shop.goods_line VALUES (10, 1, 'line of 10');
	UPDATE shop.goods SET v = 'updated' WHERE id = 1;
	CREATE SCHEMA store;
	GRANT USAGE ON SCHEMA store TO branch;
	ALTER TABLE shop.goods SET SCHEMA store;
	INSERT INTO store.goods VALUES (13, 'moved to store');
	DELETE FROM store.goods WHERE id = 2;
	ALTER SCHEMA shop RENAME TO shop2;
	INSERT INTO shop2.goods_line VALUES (13, 1, 'line in a renamed schema');
	INSERT INTO store.goods VALUES (14, 'created after the schema rename');
	UPDATE shop2.goods_line SET v = 'b, updated' WHERE item_id = 1 AND n = 2;
});
is($ret, 0, 'A: writes, renames of a subscribed table and its child, SET SCHEMA and ALTER SCHEMA RENAME succeed')
  or diag($err);
is(sq($P, "SELECT string_agg(DISTINCT ref_table, ',') FROM eventstream.update_log WHERE id > $from"),
	'shop.item', 'every change is logged under the name the consumer subscribed by');
is(sq($P, "SELECT string_agg(update_type || ' ' || docname, ',' ORDER BY id) FROM eventstream.update_log WHERE id > $from"),
	'Create 10,Create 11,Update 11,Create 12,Update 10,Update 1,Create 13,Delete 2,Update 13,Create 14,Update 1',
	'  none is lost');
is(sq($P, "SELECT data->'public.line' IS NULL AND data ? 'shop.line' FROM eventstream.update_log "
	  . "WHERE id > $from AND docname = '14' AND update_type = 'Create'"),
	't', "a Create after the child's schema was renamed names the child by its published name");
converges('store.goods', 'shop.item', 'the consumer keeps applying the renamed table');
converges('shop2.goods_line', 'shop.line', '  and its renamed child table');

# A new table under the old name is another table.
sq($P, q{
	CREATE SCHEMA shop;
	CREATE TABLE shop.item (id int PRIMARY KEY, v text);
	GRANT USAGE ON SCHEMA shop TO branch;
	GRANT SELECT ON shop.item TO branch;
	SELECT eventstream._sync_capture();
});
$from = sq($P, 'SELECT coalesce(max(id), 0) FROM eventstream.update_log');
sq($P, "INSERT INTO shop.item VALUES (99, 'impostor')");
is(sq($P, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'shop.item'::regclass"), '0',
	'a new table created under the old name gets no capture trigger');
is(sq($P, "SELECT count(*) FROM eventstream.update_log WHERE id > $from"), '0', '  and its rows are not logged');
is(sq($P, "SELECT eventstream._serve_document('shop.item', '1', 'branch')->>'v'"), 'updated',
	'the published name still serves the renamed table\'s documents');
is(sq($P, "SELECT string_agg(k, ',') FROM jsonb_object_keys(eventstream._serve_document('shop.item', '1', 'branch')) k "
	  . "WHERE k LIKE '%.%'"),
	'shop.line', '  naming the renamed child table by its published name');
($ret, $out, $err) = q_try($P, "SELECT eventstream._register_consumer('http://other:1', gen_random_uuid(), "
	  . "'k', 'branch', '[\"store.goods\"]')");
isnt($ret, 0, "subscribing to the renamed table's new name is refused");
like($err, qr/ERROR:  table "store\.goods" is published as "shop\.item"/, '  naming the name it is published by');
like($err, qr/HINT:  Subscribe to "shop\.item"\./, '  with a hint');
is(sq($P, "SELECT eventstream._register_consumer('http://other:1', gen_random_uuid(), "
	  . "'k', 'branch', '[\"shop.item\"]')->'tables'->0->>'ref_table'; "
	  . "SELECT eventstream.remove_consumer('http://other:1')"),
	"shop.item\n", 'subscribing by the published name subscribes to the renamed table');
is(sq($C, "SELECT count(*) FROM shop.item WHERE id = 99"), '0', 'the consumer never sees the new table\'s rows');

######################################################################
# B. Partitioned tables
######################################################################

$from = sq($P, 'SELECT coalesce(max(id), 0) FROM eventstream.update_log');
($ret, $out, $err) = q_try($P, q{
	INSERT INTO meas VALUES (5, 'eu', 'fifth'), (6, 'us', 'sixth'), (7, 'us', 'seventh');
	INSERT INTO meas_eu VALUES (8, 'eu', 'into the partition');
	INSERT INTO meas_us_1 SELECT 9, 'us', 'into a sub-partition' WHERE satisfies_hash_partition('meas_us'::regclass, 2, 1, 9);
	INSERT INTO meas_us_0 SELECT 9, 'us', 'into a sub-partition' WHERE satisfies_hash_partition('meas_us'::regclass, 2, 0, 9);
	UPDATE meas SET v = 'second, updated' WHERE id = 2;
	UPDATE meas SET region = 'eu', v = 'moved from us' WHERE id = 3;
	DELETE FROM meas WHERE id = 1;
	CREATE TABLE meas_asia (v text, extra int, region text NOT NULL, id int NOT NULL);
	ALTER TABLE meas_asia DROP COLUMN extra;
	ALTER TABLE meas ATTACH PARTITION meas_asia FOR VALUES IN ('asia');
	INSERT INTO meas VALUES (10, 'asia', 'in an attached partition');
	CREATE TABLE meas_af PARTITION OF meas FOR VALUES IN ('af');
	INSERT INTO meas VALUES (11, 'af', 'in a partition created later');
	UPDATE meas SET region = 'asia', v = 'moved into the attached one' WHERE id = 11;
	UPDATE meas_asia SET v = 'updated in the partition' WHERE id = 10;
	INSERT INTO note VALUES (3, 'n3');
	INSERT INTO note_tag VALUES (3, 'a'), (3, 'b'), (2, 'yellow');
	DELETE FROM note_tag WHERE note_id = 1 AND tag = 'red';
	UPDATE note_tag SET tag = 'cyan' WHERE note_id = 2 AND tag = 'green';
	INSERT INTO hist VALUES (3, 2026, 'routed to the subscribed partition'), (4, 2019, 'elsewhere');
});
is($ret, 0, 'B: writes to a subscribed partitioned table, its partitions, attached and new ones succeed')
  or diag($err);
is(sq($P, "SELECT string_agg(DISTINCT ref_table, ',' ORDER BY ref_table) FROM eventstream.update_log WHERE id > $from"),
	'public.hist_2026,public.meas,public.note', 'changes are logged under the subscribed names only');
is(sq($P, "SELECT string_agg(update_type || ' ' || docname, ',' ORDER BY id) FROM eventstream.update_log "
	  . "WHERE id > $from AND ref_table = 'public.meas' AND (docname::jsonb->>0)::int >= 10"),
	'Create [10,"asia"],Create [11,"af"],Delete [11,"af"],Create [11,"asia"],Update [10,"asia"]',
	'  with the root\'s key; a row moving between partitions is a Delete and a Create');
is(sq($P, "SELECT string_agg(tgrelid::regclass::text || ':' || tgenabled::text, ',' ORDER BY tgrelid::regclass::text) "
	  . "FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid::regclass::text LIKE 'meas%'"),
	'meas:A,meas_af:A,meas_asia:A,meas_eu:A,meas_us:A,meas_us_0:A,meas_us_1:A',
	'every partition, attached or created later, has the trigger enabled ALWAYS');
converges('meas', 'meas', 'the consumer has every partition\'s rows, moved rows in their new state');
converges('note', 'note', 'a document table with a partitioned child table');
converges('note_tag', 'note_tag', '  its child rows');
converges('hist_2026', 'hist_2026', 'a partition subscribed on its own');

######################################################################
# C. pg_dump and restore into another cluster
######################################################################

my $R = new_node('restored');
$R->safe_psql('postgres', 'CREATE ROLE branch; CREATE ROLE applier');
my $dir = $P->{node}->basedir;
$P->{node}->command_ok([ 'pg_dump', '-Fc', '-f', "$dir/site.dump", '-d', 'site' ], 'pg_dump -Fc of the producer');
$P->{node}->command_ok([ 'pg_dump', '-Fp', '-f', "$dir/site.sql", '-d', 'site' ], 'pg_dump -Fp of the producer');

my @tables = ('store.goods', 'shop2.goods_line', 'shop.item', 'meas', 'note', 'note_tag', 'hist');
foreach my $fmt ('custom', 'plain')
{
	my $db = "r_$fmt";
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	$R->safe_psql('postgres', "CREATE DATABASE $db");
	$R->safe_psql('postgres', "ALTER DATABASE $db SET eventstream.http_port = $port");
	if ($fmt eq 'custom')
	{
		$R->command_ok([ 'pg_restore', '--exit-on-error', '-d', $db, "$dir/site.dump" ],
			'pg_restore of the custom dump exits 0');
	}
	else
	{
		$R->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $db, '-f', "$dir/site.sql" ],
			'psql of the plain dump exits 0');
	}
	my $S = { node => $R, db => $db, name => "restored/$db" };
	foreach my $t (@tables)
	{
		is(digest($S, $t), digest($P, $t), "$fmt: every row of $t is back");
	}
	my $fks = q{SELECT string_agg(conrelid::regclass::text || '->' || confrelid::regclass::text, ','
								  ORDER BY conrelid::regclass::text, conname)
				  FROM pg_constraint WHERE contype = 'f' AND conparentid = 0
				   AND connamespace <> 'eventstream'::regnamespace};
	is(sq($S, $fks), sq($P, $fks), "$fmt: the foreign keys are back");
	my $args = q{SELECT string_agg(tgrelid::regclass::text || ' ' || encode(tgargs, 'escape') || ' ' || tgenabled::text, E'\n'
								   ORDER BY tgrelid::regclass::text)
				   FROM pg_trigger WHERE tgname = 'eventstream_capture'};
	is(sq($S, $args), sq($P, $args), "$fmt: the capture triggers are back as they were");

	my $before = sq($S, 'SELECT coalesce(max(id), 0) FROM eventstream.update_log');
	sq($S, q{
		INSERT INTO store.goods VALUES (500, 'after the restore');
		INSERT INTO shop2.goods_line VALUES (500, 1, 'child after the restore');
		INSERT INTO meas VALUES (500, 'asia', 'partition after the restore');
		INSERT INTO note_tag VALUES (3, 'restored');
		INSERT INTO hist VALUES (500, 2026, 'partition after the restore');
		INSERT INTO shop.item VALUES (500, 'still not captured');
	});
	is(sq($S, "SELECT string_agg(update_type || ' ' || ref_table || ' ' || docname, ',' ORDER BY id) "
		  . "FROM eventstream.update_log WHERE id > $before"),
		'Create shop.item 500,Update shop.item 500,Create public.meas [500,"asia"],Update public.note 3,'
		  . 'Create public.hist_2026 [500,2026]',
		"$fmt: changes after the restore are captured under the published names, with no manual step");
}

done_testing();
