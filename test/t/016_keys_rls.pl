# Keys that differ between the two sides, and row-level security on the
# consumer's table, between two real sites talking HTTP (two databases of
# one node, each a site with its own worker and port).
#
# A. The producer says its tables' key columns; the consumer matches rows
#    on them: producer key (a, b) into a table keyed (a); the same columns
#    in another order; producer key (a) into a table keyed (a, b) with a
#    unique index on (a).  Creates (one by one and in runs), Updates,
#    Deletes and the initial sync end right; a Create of another document
#    with the same local key fails clearly, a Delete of a document that is
#    not here deletes nothing.  A table that cannot match rows on the
#    producer's key is refused by add_producer() and subscribe(), and when
#    it becomes one later its updates fail with the same error.
# B. Row-level security on the consumer's table applies to the subscriber:
#    an Update or Delete of a row its policies hide fails (with the reason)
#    instead of passing for a row that is not here, in runs too; visible
#    rows are applied; a resync succeeds once the row is visible.
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

sq($P, q{
	CREATE ROLE branch;
	CREATE ROLE applier;
	CREATE TABLE pair (a int, b int, v text, PRIMARY KEY (a, b));
	CREATE TABLE flip (a int, b text, v text, PRIMARY KEY (b, a));
	CREATE TABLE single (a int PRIMARY KEY, b int NOT NULL, v text);
	CREATE TABLE nomatch (a int PRIMARY KEY, b int NOT NULL, v text);
	CREATE TABLE guarded (id int PRIMARY KEY, owner text, v text);
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	INSERT INTO pair VALUES (1, 10, 'one');
	INSERT INTO flip VALUES (1, 'x', 'one');
	INSERT INTO single VALUES (1, 10, 'one');
});
sq($C, q{
	CREATE TABLE pair (a int PRIMARY KEY, b int NOT NULL, v text);
	CREATE TABLE flip (a int, b text, v text, PRIMARY KEY (a, b));
	CREATE TABLE single (a int NOT NULL, b int NOT NULL, v text, PRIMARY KEY (a, b),
						 CONSTRAINT single_a UNIQUE (a));
	CREATE TABLE nomatch (a int, b int, v text, PRIMARY KEY (a, b));
	CREATE TABLE guarded (id int PRIMARY KEY, owner text, v text);
	ALTER TABLE guarded ENABLE ROW LEVEL SECURITY;
	CREATE POLICY see ON guarded FOR SELECT USING (owner IS DISTINCT FROM 'hidden');
	CREATE POLICY ins ON guarded FOR INSERT WITH CHECK (true);
	CREATE POLICY upd ON guarded FOR UPDATE USING (owner IS DISTINCT FROM 'hidden');
	CREATE POLICY del ON guarded FOR DELETE USING (owner IS DISTINCT FROM 'hidden');
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
});

# The sync log of a producer's document: "type:status" in order.
sub log_of
{
	my ($table, $docname) = @_;
	return sq($C, "SELECT string_agg(update_type || ':' || status, ',' ORDER BY id) FROM eventstream.sync_log "
		  . "WHERE remote_ref_table = 'public.$table' AND remote_docname = '$docname'");
}

# The error of the last entry of a producer's document.
sub error_of
{
	my ($table, $docname) = @_;
	return sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_ref_table = 'public.$table' "
		  . "AND remote_docname = '$docname' ORDER BY id DESC LIMIT 1");
}

######################################################################
# A. Keys
######################################################################

my ($key, $secret) = key_pair($P, 'branch');
my $add = "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', "
  . "api_secret => '$secret', subscriber => 'applier', tables => ARRAY[%s])";
my ($ret, $out, $err) = q_try($C, sprintf($add, "'pair', 'flip', 'single', 'guarded', 'nomatch'"));
isnt($ret, 0, 'add_producer refuses a table that cannot match rows on the producer\'s key');
like($err, qr/table public\.nomatch cannot match rows on the producer's key \(a\)/, '  with a clear error');
like($err, qr/Its primary key is \(a, b\), and none of its unique indexes is on columns of the producer's key alone/,
	'  that says why');
is(sq($C, 'SELECT count(*) FROM eventstream.producer_table'), '0', '  and leaves nothing behind');

sq($C, sprintf($add, "'pair', 'flip', 'single', 'guarded'"));
is(sq($C, "SELECT string_agg(ref_table || '=' || remote_key::text, ' ' ORDER BY ref_table) FROM eventstream.producer_table"),
	'public.flip={b,a} public.guarded={id} public.pair={a,b} public.single={a}',
	"the consumer knows the producer's key columns from its answer");

($ret, $out, $err) = q_try($C, "SELECT eventstream.subscribe('$P->{url}', 'nomatch')");
like($err, qr/table public\.nomatch cannot match rows on the producer's key \(a\)/,
	'subscribe() refuses it too');

foreach my $t (qw(pair flip single guarded))
{
	sq($P, "SELECT eventstream.approve('$C->{url}', '$t')");
}
ok(wait_query($C, "SELECT count(*) FILTER (WHERE status = 'Approved' AND NOT snapshot_pending) "
	  . "FROM eventstream.producer_table", '4', 60),
	'approved, and the initial sync done');
is(rows($C, 'pair') . ' / ' . rows($C, 'flip') . ' / ' . rows($C, 'single'),
	'(1,10,one) / (1,x,one) / (1,10,one)', 'the initial sync copied the rows');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', '  nothing Failed');

# Producer key (a, b) into a table keyed (a).
sq($P, "INSERT INTO pair VALUES (2, 20, 'two')");
sq($P, "UPDATE pair SET v = 'one!' WHERE a = 1 AND b = 10");
sq($P, "UPDATE pair SET v = 'two!' WHERE a = 2 AND b = 20");
sq($P, "INSERT INTO pair VALUES (2, 21, 'other')");
sq($P, "DELETE FROM pair WHERE a = 2 AND b = 21");
sync_now($C, $P->{url});
is(rows($C, 'pair'), "(1,10,one!)\n(2,20,two!)", '(a, b) into (a): Creates and Updates applied to the right rows');
is(log_of('pair', '[2,20]'), 'Create:Synced,Update:Synced', '  logged Synced');
is(sq($C, "SELECT docname FROM eventstream.sync_log WHERE remote_docname = '[2,20]' LIMIT 1"), '2',
	'  the local docname is the local key');
is(log_of('pair', '[2,21]'), 'Create:Failed,Delete:Synced',
	'  a Create of another document with the same local key fails; its Delete deletes nothing');
like(error_of('pair', '[2,21]'), qr/^$/, '  (the Delete has no error)');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_docname = '[2,21]' AND update_type = 'Create'"),
	qr/a row of public\.pair with the same \(a\) is another document than "\[2,21\]"/, '  the Create says why');
like(sq($C, "SELECT note FROM eventstream.sync_log WHERE remote_docname = '[2,21]' AND update_type = 'Delete'"),
	qr/nothing to delete/, '  the Delete found no row (2, 21), and left (2, 20) alone');

# Runs of Creates, Updates and Deletes (long enough to be tried together).
sq($P, "INSERT INTO pair SELECT g, g * 10, 'run' FROM generate_series(100, 129) g");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM pair WHERE v = 'run' AND b = a * 10"), '30', 'a run of 30 Creates applied');
sq($P, "UPDATE pair SET v = 'run!' WHERE a BETWEEN 100 AND 129");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM pair WHERE v = 'run!'"), '30', 'a run of 30 Updates applied');
sq($P, "DELETE FROM pair WHERE a BETWEEN 100 AND 129");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM pair WHERE a BETWEEN 100 AND 129"), '0', 'a run of 30 Deletes applied');
sq($P, "DELETE FROM pair WHERE a = 1");
sync_now($C, $P->{url});
is(rows($C, 'pair'), '(2,20,two!)', 'a Delete by the producer\'s key');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_ref_table = 'public.pair' AND status = 'Failed'"),
	'1', '  and only the other document\'s Create Failed');

# The same columns in another order: the docname is ["x",1].
sq($P, "UPDATE flip SET v = 'one!' WHERE a = 1 AND b = 'x'");
sq($P, "INSERT INTO flip VALUES (2, 'y', 'two')");
sync_now($C, $P->{url});
is(rows($C, 'flip'), "(1,x,one!)\n(2,y,two)", 'key (b, a) into (a, b): Update and Create applied');
sq($P, "DELETE FROM flip WHERE a = 1");
sync_now($C, $P->{url});
is(rows($C, 'flip'), '(2,y,two)', '  and the Delete');
is(log_of('flip', '["x",1]'), 'Create:Synced,Update:Synced,Delete:Synced', '  all Synced');

# Producer key (a) into a table keyed (a, b) with a unique index on (a).
sq($P, "UPDATE single SET v = 'one!' WHERE a = 1");
sq($P, "INSERT INTO single VALUES (2, 20, 'two')");
sq($P, "DELETE FROM single WHERE a = 1");
sync_now($C, $P->{url});
is(rows($C, 'single'), '(2,20,two)', 'key (a) into (a, b) with UNIQUE (a): applied');
is(log_of('single', '1'), 'Create:Synced,Update:Synced,Delete:Synced', '  all Synced');

# Without the unique index the rows of single cannot be matched any more.
sq($C, 'ALTER TABLE single DROP CONSTRAINT single_a');
sq($P, "UPDATE single SET v = 'two!' WHERE a = 2");
sync_now($C, $P->{url});
is(log_of('single', '2'), 'Create:Synced,Update:Failed', 'without it, the Update fails');
like(error_of('single', '2'), qr/table public\.single cannot match rows on the producer's key \(a\)/,
	'  with the clear error, not a cast error');
is(rows($C, 'single'), '(2,20,two)', '  and nothing changed');

######################################################################
# B. Row-level security on the consumer
######################################################################

# Row 2 is here, hidden from the subscriber by its policies.
sq($C, "INSERT INTO guarded VALUES (2, 'hidden', 'local')");
sq($P, "INSERT INTO guarded VALUES (1, 'x', 'one'), (2, 'x', 'two')");
sync_now($C, $P->{url});
is(log_of('guarded', '1') . ' ' . log_of('guarded', '2'), 'Create:Synced Create:Failed',
	'a Create over a hidden row fails, a visible one is applied');
like(error_of('guarded', '2'), qr/row-level security/, '  with the policy error');

sq($P, "UPDATE guarded SET v = v || '!'");
sync_now($C, $P->{url});
is(log_of('guarded', '1') . ' ' . log_of('guarded', '2'), 'Create:Synced,Update:Synced Create:Failed,Update:Failed',
	'an Update of a hidden row fails, a visible one is applied');
like(error_of('guarded', '2'), qr/row-level security of public\.guarded hides row "2" from subscriber "applier"/,
	'  and says the row is hidden');
like(error_of('guarded', '2'), qr/do not let the subscriber update it/, '  from an update');

sq($P, 'DELETE FROM guarded');
sync_now($C, $P->{url});
is(log_of('guarded', '1') . ' ' . log_of('guarded', '2'),
	'Create:Synced,Update:Synced,Delete:Synced Create:Failed,Update:Failed,Delete:Failed',
	'a Delete of a hidden row fails (not "nothing to delete"), a visible one is applied');
like(error_of('guarded', '2'), qr/row-level security of public\.guarded hides row "2" from subscriber "applier"/,
	'  and says the row is hidden');
is(rows($C, 'guarded'), '(2,hidden,local)', '  the hidden row is still here, the visible one is gone');

# Deletes in a run: one of them is of a row hidden meanwhile.
sq($P, "INSERT INTO guarded SELECT g, 'x', 'run' FROM generate_series(100, 129) g");
sync_now($C, $P->{url});
is(sq($C, "SELECT count(*) FROM guarded WHERE v = 'run'"), '30', 'a run of 30 Creates into the table');
sq($C, "UPDATE guarded SET owner = 'hidden' WHERE id = 105");
sq($P, 'DELETE FROM guarded WHERE id BETWEEN 100 AND 129');
sync_now($C, $P->{url});
is(sq($C, "SELECT string_agg(status, ',' ORDER BY status) FROM (SELECT status, count(*) FROM eventstream.sync_log "
	  . "WHERE remote_ref_table = 'public.guarded' AND update_type = 'Delete' AND remote_docname::int BETWEEN 100 AND 129 "
	  . "GROUP BY status) x"),
	'Failed,Synced', 'a run of Deletes: the hidden row\'s fails');
is(log_of('guarded', '105'), 'Create:Synced,Delete:Failed', '  that one');
is(sq($C, "SELECT string_agg(id::text, ',' ORDER BY id) FROM guarded"), '2,105', '  the others are deleted');

# Once the subscriber may see the row, the Delete resyncs.
sq($C, "UPDATE guarded SET owner = 'x' WHERE id = 2");
my $id = sq($C, "SELECT id FROM eventstream.sync_log WHERE remote_ref_table = 'public.guarded' "
	  . "AND remote_docname = '2' AND update_type = 'Delete'");
is(sq($C, "SELECT eventstream.resync($id)"), 'Synced', 'resync of the Delete once the row is visible: Synced');
is(sq($C, "SELECT string_agg(id::text, ',' ORDER BY id) FROM guarded"), '105', '  and the row is deleted');

done_testing();
