# Schema changes on either side of a subscription never lose values
# silently, between real sites talking HTTP on loopback (two databases of
# one node, set up as in 013_encodings.pl):
#
#  A. a column the consumer lacks: the update is Failed, its error naming
#     the column (Creates -- one at a time and in runs --, Updates that set
#     it or not, child rows added); after ALTER TABLE ADD COLUMN on the
#     consumer, eventstream.resync_failed() brings the values (resync in
#     order, refetch where a later update was applied since);
#     ignore_columns() leaves a column out on purpose; a mapping that does
#     not take a column keeps working; an initial sync of a table lacking a
#     column fails its rows the same way;
#  B. column types changed on either side (int -> bigint, text ->
#     varchar(n), int -> text): a value that no longer fits is Failed with
#     the type's error and resyncable; a column dropped on the producer, or
#     on the consumer (= A); columns in another order; extra consumer
#     columns with defaults (Creates fill them, Updates leave them alone);
#  C. a column dropped and added again on the producer (now NULL): the old
#     value does not stay on the consumer past the row's next update.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline, or pulls with sync_now().
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $node = new_node('sites');
my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');
$node->safe_psql('postgres', 'CREATE ROLE branch; CREATE ROLE applier');

my $tables = q{
	CREATE TABLE doc (id int PRIMARY KEY, a text, n int, s text);
	CREATE TABLE doc_line (doc int REFERENCES doc ON DELETE CASCADE, n int, what text, PRIMARY KEY (doc, n));
	CREATE TABLE wide (id int PRIMARY KEY, a text);
	CREATE TABLE ign (id int PRIMARY KEY, a text);
	CREATE TABLE src (id int PRIMARY KEY, title text, body text);
	CREATE TABLE typed (id int PRIMARY KEY, i int, t text, x int);
	CREATE TABLE readd (id int PRIMARY KEY, a text, c text);
	CREATE TABLE snap (id int PRIMARY KEY, a text, z text);
};
sq($P, $tables . q{
	CREATE TABLE ord (id int PRIMARY KEY, a text, b int, c date);
	CREATE TABLE dflt (id int PRIMARY KEY, a text);
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	SELECT eventstream.add_child_table('doc', 'doc_line');
	INSERT INTO doc VALUES (1, 'one', 1, 's1'), (2, 'two', 2, 's2'), (3, 'three', 3, 's3');
	INSERT INTO doc_line VALUES (1, 1, 'a');
	INSERT INTO readd VALUES (1, 'one', 'old'), (2, 'two', 'old');
	INSERT INTO snap SELECT g, 'a' || g, 'z' || g FROM generate_series(1, 5) g;
});
# The consumer: the same tables, but snap without z; ord's columns in
# another order; dflt with columns of its own, with defaults; src mapped
# into dst, which takes the title only.
sq($C, $tables . q{
	ALTER TABLE snap DROP COLUMN z;
	CREATE TABLE ord (c date, b int, id int PRIMARY KEY, a text);
	CREATE TABLE dflt (local_note text DEFAULT 'mine', id int PRIMARY KEY, a text, made_here boolean NOT NULL DEFAULT true);
	CREATE TABLE dst (id int PRIMARY KEY, heading text);
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	SELECT eventstream.create_mapping('dst_from_src', 'dst', 'src');
	SELECT eventstream.map_field('dst_from_src', 'id', 'id');
	SELECT eventstream.map_field('dst_from_src', 'heading', 'title');
});

my @tables = qw(doc wide ign typed readd ord dflt);
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['" . join("', '", @tables) . "'])");
sq($C, "SELECT eventstream.subscribe('$P->{url}', NULL, mapping => 'dst_from_src')");
sq($P, join('', map { "SELECT eventstream.approve('$C->{url}', '$_');" } @tables, 'src'));
ok(wait_query($C, "SELECT count(*) FILTER (WHERE status = 'Approved' AND NOT snapshot_pending) FROM eventstream.producer_table",
		scalar(@tables) + 1, 60),
	'every subscription is approved and copied');
is(rows($C, 'doc'), rows($P, 'doc'), 'the initial sync brought doc');

# Pull everything the producer has now.
sub pull { sync_now($C, $P->{url}); }

# The Failed sync log entries of a table: "docname: error" lines.
sub failed
{
	my ($table) = @_;
	return sq($C, "SELECT coalesce(string_agg(remote_docname || ': ' || split_part(error, E'\\n', 1), E'\\n' ORDER BY id), '')"
		  . " FROM eventstream.sync_log WHERE status = 'Failed' AND ref_table = 'public.$table'");
}

# resync_failed() on the consumer: "resynced refetched failed".
sub resync_failed
{
	my ($table) = @_;
	my $arg = defined $table ? ", '$table'" : '';
	return sq($C, "SELECT resynced || ' ' || refetched || ' ' || failed FROM eventstream.resync_failed('$P->{url}'$arg)");
}

######################################################################
# A. A column the consumer lacks
######################################################################

# The producer adds doc.extra; a Create and Updates carry it.
sq($P, q{
	ALTER TABLE doc ADD COLUMN extra text;
	INSERT INTO doc VALUES (10, 'ten', 10, 's10', 'x10');
	UPDATE doc SET extra = 'x1' WHERE id = 1;
	UPDATE doc SET a = 'TWO' WHERE id = 2;
	UPDATE doc SET extra = 'x3' WHERE id = 3;
});
pull();
is(failed('doc'),
	join("\n",
		'10: table public.doc has no column "extra" that the producer sends',
		'1: table public.doc has no column "extra" that the producer sends',
		'2: table public.doc has no column "extra" that the producer sends',
		'3: table public.doc has no column "extra" that the producer sends'),
	'Creates and Updates carrying a column the consumer lacks are Failed, naming it '
	  . '(an Update of another column too: extra was added since capture began, so it travels with every Update)');
is(sq($C, 'SELECT count(*) FROM doc WHERE id = 10'), '0', '  nothing of the failed Create was applied');
is(sq($C, 'SELECT a FROM doc WHERE id = 2'), 'two', '  nor of the failed Update');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE status = 'Failed' ORDER BY id LIMIT 1"),
	qr/Add the column to the table, then apply the failed updates again with eventstream.resync_failed\(\)/,
	'  the error says what to do');
is(sq($C, "SELECT failed_now FROM eventstream.producer_status WHERE producer_url = '$P->{url}'"), '4',
	'  producer_status counts them');

# Doc 3 then gets an update the consumer can apply (a child row only):
# its failed Update is older than an applied one, so it is refetched.
sq($P, q{INSERT INTO doc_line VALUES (3, 1, 'three-a')});
pull();
is(sq($C, "SELECT status FROM eventstream.sync_log WHERE remote_docname = '3' ORDER BY id DESC LIMIT 1"), 'Synced',
	'an Update of doc 3 that does not carry extra (child rows only) applies');

# A run of Creates (the batched paths) into a table lacking a column.
sq($P, q{
	ALTER TABLE wide ADD COLUMN more int;
	INSERT INTO wide SELECT g, 'w' || g, g * 10 FROM generate_series(1, 40) g;
});
pull();
is(sq($C, "SELECT count(*) || ' ' || count(*) FILTER (WHERE error LIKE 'table public.wide has no column \"more\" that the producer sends%')"
	  . " FROM eventstream.sync_log WHERE status = 'Failed' AND ref_table = 'public.wide'"),
	'40 40', 'a run of 40 Creates lacking a column: each one Failed, naming it (no batch skips the column)');
is(sq($C, 'SELECT count(*) FROM wide'), '0', '  no row written');

# resync_failed() before the column exists: nothing changes.
is(resync_failed('doc'), '0 0 4', 'resync_failed() while the column is still missing: every document still fails');

# The consumer adds the columns: resync_failed() brings the values.
sq($C, 'ALTER TABLE doc ADD COLUMN extra text; ALTER TABLE wide ADD COLUMN more int');
is(resync_failed(), '43 1 0',
	'after ADD COLUMN, resync_failed() applies the 43 failed entries in order and refetches doc 3');
is(rows($C, 'doc'), rows($P, 'doc'), '  doc is as on the producer, extra included');
is(rows($C, 'doc_line'), rows($P, 'doc_line'), '  and its child rows');
is(rows($C, 'wide'), rows($P, 'wide'), '  wide too');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', '  no entry is left Failed');
is(sq($C, "SELECT failed_now FROM eventstream.producer_status WHERE producer_url = '$P->{url}'"), '0',
	'  producer_status counts none');

# Child rows with a column the consumer's child table lacks.
sq($P, q{
	ALTER TABLE doc_line ADD COLUMN qty int;
	INSERT INTO doc_line VALUES (1, 2, 'b', 7);
	UPDATE doc_line SET what = 'A' WHERE doc = 1 AND n = 1;
});
pull();
is(failed('doc'),
	join("\n",
		'1: table public.doc_line has no column "qty" that the producer sends',
		'1: table public.doc_line has no column "qty" that the producer sends'),
	'child rows added or changed with a column the child table lacks: the Update of the document is Failed, naming it');
sq($C, 'ALTER TABLE doc_line ADD COLUMN qty int');
is(resync_failed('doc'), '2 0 0', '  after ADD COLUMN, resync_failed(producer, table) applies them');
is(rows($C, 'doc_line'), rows($P, 'doc_line'), '  the child rows are as on the producer');

# ignore_columns(): a column left out on purpose.
sq($P, q{
	ALTER TABLE ign ADD COLUMN secret text;
	INSERT INTO ign VALUES (1, 'one', 'hidden');
});
pull();
is(failed('ign'), '1: table public.ign has no column "secret" that the producer sends', 'ign: Failed first');
sq($C, "SELECT eventstream.ignore_columns('$P->{url}', 'ign', ARRAY['secret'])");
is(resync_failed('ign'), '1 0 0', 'after ignore_columns(), resync_failed() applies it without the column');
sq($P, q{
	INSERT INTO ign SELECT g, 'i' || g, 's' || g FROM generate_series(2, 40) g;
	UPDATE ign SET secret = 'changed', a = 'ONE' WHERE id = 1;
	UPDATE ign SET secret = 'only this' WHERE id = 2;
});
pull();
is(failed('ign'), '', 'later Creates (in a run) and Updates of it apply');
is(sq($C, "SELECT count(*) || ' ' || max(a) FILTER (WHERE id = 1) FROM ign"), '40 ONE', '  with the other columns');
my ($ret, $out, $err) = q_try($C, "SELECT eventstream.ignore_columns('$P->{url}', 'nosuch', ARRAY['x'])");
like($err, qr/table "public.nosuch" is not subscribed from producer/, 'ignore_columns() of a table not subscribed is refused');

# A mapping that does not take a column keeps working when the producer
# adds one.
sq($P, q{
	INSERT INTO src VALUES (1, 'first', 'b1');
	ALTER TABLE src ADD COLUMN tags text;
	INSERT INTO src VALUES (2, 'second', 'b2', 't2');
	UPDATE src SET title = 'FIRST', tags = 't1' WHERE id = 1;
});
pull();
is(failed('src') . '|' . rows($C, 'dst'), "|(1,FIRST)\n(2,second)",
	'a mapped subscription takes the columns its mapping names: a column added on the producer changes nothing');

# An initial sync of a table lacking a column: its rows are Failed, and
# arrive with resync_failed() once the column is added.
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'snap')");
sq($P, "SELECT eventstream.approve('$C->{url}', 'snap')");
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE ref_table = 'public.snap' AND status = 'Failed'"
		  . " AND note = 'initial sync' AND error LIKE 'table public.snap has no column \"z\" that the producer sends%'", '5', 60),
	'initial sync into a table lacking a column: each row Failed, naming it');
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.snap'", 'f', 60),
	'  the copy ends');
sq($C, 'ALTER TABLE snap ADD COLUMN z text');
is(resync_failed('snap'), '5 0 0', '  after ADD COLUMN, resync_failed() applies them');
is(rows($C, 'snap'), rows($P, 'snap'), '  snap is as on the producer');

######################################################################
# B. Other schema changes
######################################################################

# Producer: int -> bigint, with a value over int's range.
sq($P, q{
	INSERT INTO typed VALUES (1, 1, 'short', 1), (2, 2, 'short', 2);
	ALTER TABLE typed ALTER COLUMN i TYPE bigint;
	UPDATE typed SET i = 5000000000 WHERE id = 1;
	UPDATE typed SET i = 20 WHERE id = 2;
});
pull();
is(failed('typed'), '1: value "5000000000" is out of range for type integer',
	'producer int -> bigint: a value over int\'s range is Failed with the type\'s error; one that fits applies');
sq($C, 'ALTER TABLE typed ALTER COLUMN i TYPE bigint');
is(resync_failed('typed'), '1 0 0', '  after the consumer changes its type too, resync_failed() applies it');

# Consumer: text -> varchar(5).
sq($C, 'ALTER TABLE typed ALTER COLUMN t TYPE varchar(5)');
sq($P, q{
	UPDATE typed SET t = 'toolong' WHERE id = 1;
	UPDATE typed SET t = 'fits' WHERE id = 2;
});
pull();
is(failed('typed'), '1: value too long for type character varying(5)',
	'consumer text -> varchar(5): a value too long is Failed with the type\'s error; one that fits applies');
sq($P, q{UPDATE typed SET t = 'ok' WHERE id = 1});
pull();
is(failed('typed'), '1: value too long for type character varying(5)', '  a later update of the row applies');
is(resync_failed('typed'), '0 1 0', '  and resync_failed() settles the failed one by a refetch');

# Producer: int -> text.
sq($P, q{
	ALTER TABLE typed ALTER COLUMN x TYPE text;
	UPDATE typed SET x = 'abc' WHERE id = 1;
	UPDATE typed SET x = '42' WHERE id = 2;
});
pull();
is(failed('typed'), '1: invalid input syntax for type integer: "abc"',
	'producer int -> text: a text the consumer\'s integer cannot take is Failed; a number applies');
sq($C, 'ALTER TABLE typed ALTER COLUMN x TYPE text');
is(resync_failed('typed'), '1 0 0', '  resyncable once the consumer\'s column takes it');
is(rows($C, 'typed'), rows($P, 'typed'), 'typed is as on the producer');

# A column dropped on the producer: updates keep applying, the consumer's
# column keeps its values; a new row leaves it NULL.
sq($P, q{
	ALTER TABLE doc DROP COLUMN n;
	UPDATE doc SET a = 'ONE' WHERE id = 1;
	INSERT INTO doc VALUES (20, 'twenty', 's20', 'x20');
});
pull();
is(failed('doc') . '|' . rows($C, 'doc', 'id IN (1, 20)'), "|(1,ONE,1,s1,x1)\n(20,twenty,,s20,x20)",
	'a column dropped on the producer: updates apply, the consumer keeps its column');

# A column dropped on the consumer: later updates carrying it fail, naming it.
sq($C, 'ALTER TABLE doc DROP COLUMN s');
sq($P, q{UPDATE doc SET s = 'S2' WHERE id = 2; UPDATE doc SET a = 'Three' WHERE id = 3});
pull();
is(failed('doc'), '2: table public.doc has no column "s" that the producer sends',
	'a column dropped on the consumer: an update carrying it is Failed, naming it; others apply');
is(sq($C, 'SELECT a FROM doc WHERE id = 3'), 'Three', '  the other update applied');
sq($C, "SELECT eventstream.ignore_columns('$P->{url}', 'doc', ARRAY['s'])");
is(resync_failed('doc'), '1 0 0', '  ignore_columns() and resync_failed() settle it');

# Columns in another order on the two sides.
sq($P, q{
	INSERT INTO ord VALUES (1, 'one', 10, '2026-01-02');
	UPDATE ord SET b = 11, c = '2026-03-04' WHERE id = 1;
	INSERT INTO ord SELECT g, 'o' || g, g, '2026-01-01'::date + g FROM generate_series(2, 40) g;
});
pull();
is(sq($C, 'SELECT count(*) FROM ord o JOIN (VALUES (1)) v(x) ON true') . ' '
	  . sq($C, "SELECT id || ',' || a || ',' || b || ',' || c FROM ord WHERE id IN (1, 40) ORDER BY id"),
	"40 1,one,11,2026-03-04\n40,o40,40,2026-02-10",
	'columns in another order: values land in the columns of their name (Creates in a run, Updates)');
is(failed('ord'), '', '  nothing failed');

# Extra consumer columns with defaults.
sq($P, q{INSERT INTO dflt VALUES (1, 'one')});
pull();
is(rows($C, 'dflt'), '(mine,1,one,t)', 'a Create fills the consumer\'s own columns with their defaults');
sq($C, q{UPDATE dflt SET local_note = 'edited here', made_here = false WHERE id = 1});
sq($P, q{UPDATE dflt SET a = 'ONE' WHERE id = 1});
pull();
is(rows($C, 'dflt'), '("edited here",1,ONE,f)', 'an Update leaves them alone');

######################################################################
# C. A column dropped and added again on the producer
######################################################################

sq($P, q{
	ALTER TABLE readd DROP COLUMN c;
	ALTER TABLE readd ADD COLUMN c text;
	UPDATE readd SET a = 'ONE' WHERE id = 1;
});
pull();
is(rows($C, 'readd'), "(1,ONE,)\n(2,two,old)",
	'a column dropped and added again (NULL): the next update of a row clears the consumer\'s old value');
is(sq($P, "SELECT data->'changed' FROM eventstream.update_log WHERE ref_table = 'public.readd' ORDER BY id DESC LIMIT 1"),
	'{"a": "ONE", "c": null}', '  the Update carries the added column, though it did not change');
sq($P, q{UPDATE readd SET c = 'new' WHERE id = 2});
pull();
is(rows($C, 'readd'), rows($P, 'readd'), '  and a value set later arrives');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'no entry is left Failed');

done_testing();
