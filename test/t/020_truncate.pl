# TRUNCATE travels, as with logical replication, between real sites talking
# HTTP on loopback (set up as in 005_consumer.pl): a producer's TRUNCATE of
# a subscribed table empties the consumer's table, in order with the other
# changes of its transaction; a child table truncated alone takes the child
# rows out of the consumer's documents; TRUNCATE ... CASCADE and several
# tables in one statement; the consumer's foreign keys are kept (its
# ON DELETE CASCADE children go along, a restricting reference fails the
# Truncate, which is resynced once it is gone); a table two producers
# write into is emptied whole, and the other producer's rows come back
# with resync_table(); a Truncate applied on a site is captured there for
# the site subscribed to it (A -> B -> C).
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
use EsSites;		# wait_until, sq, q_try, wait_query, rows, new_node, add_site, ...

my $schema = q{
	CREATE TABLE doc (id int PRIMARY KEY, title text);
	CREATE TABLE doc_line (doc int REFERENCES doc ON DELETE CASCADE, n int, what text, PRIMARY KEY (doc, n));
	CREATE TABLE a (id int PRIMARY KEY, v text);
	CREATE TABLE b (id int PRIMARY KEY, v text);
	CREATE TABLE par (id int PRIMARY KEY, v text);
	CREATE TABLE item (name text PRIMARY KEY, v text);
};

my $node = new_node('sites');
my $P = add_site($node, 'producer');
my $P2 = add_site($node, 'producer_b');
my $C = add_site($node, 'consumer');

sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	SELECT eventstream.add_child_table('doc', 'doc_line');
	INSERT INTO doc VALUES (1, 'one'), (2, 'two');
	INSERT INTO doc_line VALUES (1, 1, 'a'), (1, 2, 'b'), (2, 1, 'c');
	INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 5) g;
	INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 5) g;
	INSERT INTO par SELECT g, 'p' || g FROM generate_series(1, 5) g;
});
# A partitioned table on the producer only: the consumer's is plain.
sq($P, q{
	CREATE TABLE meas (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
	CREATE TABLE meas_eu PARTITION OF meas FOR VALUES IN ('eu');
	CREATE TABLE meas_us PARTITION OF meas FOR VALUES IN ('us') PARTITION BY HASH (id);
	CREATE TABLE meas_us_0 PARTITION OF meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE meas_us_1 PARTITION OF meas_us FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	GRANT SELECT ON meas TO branch;
	INSERT INTO meas SELECT g, r, r || g FROM generate_series(1, 6) g, unnest(ARRAY['eu', 'us']) r;
	CREATE TABLE pnote (id int PRIMARY KEY, v text);
	CREATE TABLE ptag (note int REFERENCES pnote ON DELETE CASCADE, tag text, PRIMARY KEY (note, tag))
		PARTITION BY LIST (tag);
	CREATE TABLE ptag_red PARTITION OF ptag FOR VALUES IN ('red');
	CREATE TABLE ptag_blue PARTITION OF ptag FOR VALUES IN ('blue');
	GRANT SELECT ON pnote, ptag TO branch;
	SELECT eventstream.add_child_table('pnote', 'ptag');
	INSERT INTO pnote VALUES (1, 'n1'), (2, 'n2');
	INSERT INTO ptag VALUES (1, 'red'), (1, 'blue'), (2, 'red');
});
sq($P2, q{
	CREATE TABLE item (name text PRIMARY KEY, v text);
	CREATE ROLE branch_b;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch_b;
});

# The consumer: the same tables; par has children of its own, one with
# ON DELETE CASCADE and one restricting; item is keyed here (two
# producers write into it, each row under a key of this site's); a
# TRUNCATE trigger on a, ENABLE ALWAYS, and an ordinary one.
sq($C, $schema . q{
	CREATE TABLE meas (id int, region text, v text, PRIMARY KEY (id, region));
	CREATE TABLE pnote (id int PRIMARY KEY, v text);
	CREATE TABLE ptag (note int REFERENCES pnote ON DELETE CASCADE, tag text, PRIMARY KEY (note, tag));
	CREATE ROLE applier;
	CREATE TABLE par_kid (par_id int REFERENCES par ON DELETE CASCADE, n int, PRIMARY KEY (par_id, n));
	CREATE TABLE par_ref (id int PRIMARY KEY, par_id int REFERENCES par);
	CREATE SEQUENCE item_local_seq;
	ALTER TABLE item ALTER name SET DEFAULT 'ITEM-' || nextval('item_local_seq');
	GRANT USAGE ON SEQUENCE item_local_seq TO applier;
	CREATE TABLE audit (trigger_name text, op text, tbl text, role text);
	CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.audit VALUES (TG_NAME, TG_OP, TG_TABLE_NAME, current_setting('session_replication_role'));
		RETURN NULL;
	END
	$$;
	CREATE TRIGGER ordinary AFTER TRUNCATE ON a FOR EACH STATEMENT EXECUTE FUNCTION audit();
	CREATE TRIGGER always AFTER TRUNCATE ON a FOR EACH STATEMENT EXECUTE FUNCTION audit();
	ALTER TABLE a ENABLE ALWAYS TRIGGER always;
	GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON ALL TABLES IN SCHEMA public TO applier;
});

my @tables = qw(doc a b par meas pnote);
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['" . join("', '", @tables) . "'])");
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'item', use_same_name => false)");
my ($key_b, $secret_b) = key_pair($P2, 'branch_b');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P2->{url}', api_key => '$key_b', api_secret => '$secret_b', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
sq($C, "SELECT eventstream.subscribe('$P2->{url}', 'item', use_same_name => false)");
sq($P, join('', map { "SELECT eventstream.approve('$C->{url}', '$_');" } @tables, 'item'));
sq($P2, "SELECT eventstream.approve('$C->{url}', 'item')");

# Equal rows on both sides, or say where they differ.
sub same_rows
{
	my ($table, $what) = @_;
	my $ok = wait_until(30, sub { rows($C, $table) eq rows($P, $table) });
	ok($ok, "$what: $table has the producer's rows")
	  or diag("producer:\n" . rows($P, $table) . "\nconsumer:\n" . rows($C, $table));
}

# The status and the error or note of the consumer's sync log entries of
# Truncates from the producer since sync log $after.
sub truncates
{
	my ($after) = @_;
	return sq($C, "SELECT string_agg(ref_table || ' ' || status, ',' ORDER BY id) FROM eventstream.sync_log "
		  . "WHERE update_type = 'Truncate' AND id > $after");
}

sub last_log { return sq($C, 'SELECT coalesce(max(id), 0) FROM eventstream.sync_log'); }

ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE status = 'Approved' AND NOT snapshot_pending",
		scalar(@tables) + 2, 30),
	'the initial sync of every table is done');
same_rows($_, 'initial sync') foreach qw(doc doc_line a b par meas pnote ptag);

######################################################################
# In order with the other changes of its transaction
######################################################################

# INSERT; TRUNCATE; INSERT in one transaction: only what came after the
# TRUNCATE is left, on both sides; a row only this site had goes too.
sq($C, "INSERT INTO doc VALUES (99, 'only here')");
my $mark = last_log();
sq($P, q{
	BEGIN;
	INSERT INTO doc VALUES (3, 'three');
	INSERT INTO doc_line VALUES (3, 1, 'd');
	UPDATE doc SET title = 'ONE' WHERE id = 1;
	TRUNCATE doc CASCADE;
	INSERT INTO doc VALUES (4, 'four'), (5, 'five');
	INSERT INTO doc_line VALUES (4, 1, 'e'), (4, 2, 'f');
	COMMIT;
});
sync_now($C, $P->{url});
same_rows($_, 'INSERT; TRUNCATE; INSERT') foreach qw(doc doc_line);
is(rows($C, 'doc'), "(4,four)\n(5,five)", 'only the rows inserted after the TRUNCATE are left');
is(truncates($mark), 'public.doc Synced', 'one Truncate, Synced');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE id > $mark AND status = 'Failed'"), '0',
	'nothing of the transaction Failed');

# A run of Creates long enough to be applied as one statement, a
# Truncate, and another such run, in one transaction.
sq($P, q{
	BEGIN;
	INSERT INTO a SELECT g, 'x' || g FROM generate_series(100, 150) g;
	TRUNCATE a;
	INSERT INTO a SELECT g, 'y' || g FROM generate_series(200, 260) g;
	COMMIT;
});
sync_now($C, $P->{url});
same_rows('a', 'runs of Creates around a Truncate');
is(sq($C, "SELECT count(*) || ' ' || min(id) FROM a"), '61 200', '  the second run only');

######################################################################
# A child table truncated alone; CASCADE; several tables
######################################################################

$mark = last_log();
sq($P, 'TRUNCATE doc_line');
sync_now($C, $P->{url});
same_rows($_, 'a child table truncated alone') foreach qw(doc doc_line);
is(sq($C, "SELECT string_agg(update_type || ' ' || docname || ' ' || status, ',' ORDER BY id) FROM eventstream.sync_log WHERE id > $mark"),
	'Update 4 Synced', '  the parent document with rows lost them (an Update)');

sq($P, "INSERT INTO doc_line VALUES (5, 1, 'g')");
sync_now($C, $P->{url});
$mark = last_log();
sq($P, 'TRUNCATE doc CASCADE');
sync_now($C, $P->{url});
same_rows($_, 'TRUNCATE doc CASCADE') foreach qw(doc doc_line);
is(sq($C, "SELECT string_agg(update_type || ' ' || status, ',' ORDER BY id) FROM eventstream.sync_log WHERE id > $mark"),
	'Truncate Synced', '  one Truncate of the parent, nothing for its child rows');

sq($C, 'TRUNCATE audit');
$mark = last_log();
sq($P, 'TRUNCATE a, b');
sync_now($C, $P->{url});
same_rows($_, 'TRUNCATE a, b') foreach qw(a b);
is(truncates($mark), 'public.a Synced,public.b Synced', '  a Truncate each');
is(sq($C, "SELECT string_agg(trigger_name || ' ' || op || ' ' || tbl || ' ' || role, ',') FROM audit"),
	'always TRUNCATE a replica', '  the ENABLE ALWAYS TRUNCATE trigger fired, under the replica role; the ordinary one did not');

# The background worker applies the same way.
sq($P, "INSERT INTO b VALUES (1, 'again')");
ok(wait_query($C, 'SELECT count(*) FROM b', '1', 30), 'the worker applies a Create');
sq($P, 'TRUNCATE b');
ok(wait_query($C, 'SELECT count(*) FROM b', '0', 30), 'and a Truncate');

######################################################################
# A partitioned table: a partition, a sub-partition, a partition created
# later, the root
######################################################################

# The consumer's sync log entries of meas since $after, counted by type
# and status: "<type> <status> <count>", ...
sub applied
{
	my ($after) = @_;
	return sq($C, "SELECT string_agg(update_type || ' ' || status || ' ' || n, ',' ORDER BY update_type, status) "
		  . "FROM (SELECT update_type, status, count(*) AS n FROM eventstream.sync_log "
		  . "WHERE id > $after AND ref_table = 'public.meas' GROUP BY 1, 2) s");
}

$mark = last_log();
sq($P, 'TRUNCATE meas_eu');
sync_now($C, $P->{url});
same_rows('meas', 'TRUNCATE of a partition');
is(sq($C, "SELECT string_agg(DISTINCT region, ',') FROM meas"), 'us', '  its rows went, the other partitions\' stayed');
is(applied($mark), 'Delete Synced 6', '  a Delete of each of its rows, under the root\'s name');

$mark = last_log();
my $in_us_1 = sq($P, 'SELECT count(*) FROM meas_us_1');
sq($P, 'TRUNCATE meas_us_1');
sync_now($C, $P->{url});
same_rows('meas', 'TRUNCATE of a sub-partition');
is(sq($C, "SELECT count(*) FROM meas"), 6 - $in_us_1, '  the rows of the other sub-partition stayed');
is(applied($mark), "Delete Synced $in_us_1", '  a Delete of each of its rows');

sq($P, q{
	CREATE TABLE meas_asia PARTITION OF meas FOR VALUES IN ('asia');
	INSERT INTO meas VALUES (1, 'asia', 'asia1'), (2, 'asia', 'asia2'), (1, 'eu', 'eu1');
});
sync_now($C, $P->{url});
same_rows('meas', 'rows of a partition created later');
$mark = last_log();
sq($P, 'TRUNCATE meas_asia');
sync_now($C, $P->{url});
same_rows('meas', 'TRUNCATE of a partition created later');
is(sq($C, "SELECT count(*) FROM meas WHERE region = 'asia'"), '0', '  none of its rows is left');
is(applied($mark), 'Delete Synced 2', '  a Delete of each of its rows');

$mark = last_log();
sq($P, "INSERT INTO meas VALUES (3, 'asia', 'asia3')");
sq($P, 'TRUNCATE meas');
sync_now($C, $P->{url});
same_rows('meas', 'TRUNCATE of the root');
is(sq($C, 'SELECT count(*) FROM meas'), '0', '  the consumer\'s table is empty');
is(applied($mark), 'Create Synced 1,Truncate Synced 1', '  one Truncate, no Delete of a partition\'s rows');

# A partition of a partitioned child table, one created later: the
# documents of its rows lose them.
sq($P, q{
	CREATE TABLE ptag_green PARTITION OF ptag FOR VALUES IN ('green');
	INSERT INTO ptag VALUES (2, 'green');
});
sync_now($C, $P->{url});
same_rows('ptag', 'a partitioned child table');
sq($P, 'TRUNCATE ptag_red');
sync_now($C, $P->{url});
same_rows('ptag', 'TRUNCATE of a partition of a child table');
is(rows($C, 'ptag'), "(1,blue)\n(2,green)", '  the rows of the other partitions stayed');
sq($P, 'TRUNCATE ptag_green');
sync_now($C, $P->{url});
same_rows('ptag', 'TRUNCATE of a partition of a child table created later');
same_rows('pnote', '  the documents stay');

######################################################################
# The consumer's foreign keys
######################################################################

sq($C, q{
	INSERT INTO par_kid VALUES (1, 1), (2, 1);
	INSERT INTO par_ref VALUES (1, 3);
});
$mark = last_log();
sq($P, 'TRUNCATE par');
sync_now($C, $P->{url});
is(truncates($mark), 'public.par Failed', 'a row here refers to par: the Truncate is Failed');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE id > $mark AND update_type = 'Truncate'"),
	qr/^update or delete on table "par" violates foreign key constraint "par_ref_par_id_fkey" on table "par_ref"/,
	'  the error names the foreign key');
is(sq($C, "SELECT (SELECT count(*) FROM par) || ' ' || (SELECT count(*) FROM par_kid)"), '5 2',
	'  and nothing of it was applied');
sq($C, 'DELETE FROM par_ref');
is(sq($C, "SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE id > $mark AND update_type = 'Truncate'"),
	'Synced', 'once the referring row is gone, the resync succeeds');
same_rows('par', 'resync');
is(sq($C, 'SELECT count(*) FROM par_kid'), '0', '  the ON DELETE CASCADE children went along');
is(sq($C, "SELECT failed_count FROM eventstream.producer WHERE producer_url = '$P->{url}'"), '0',
	'  nothing Failed is left');

######################################################################
# A table two producers write into
######################################################################

sq($P, "INSERT INTO item VALUES ('N1', 'from the first producer'), ('N2', 'first again')");
sq($P2, "INSERT INTO item VALUES ('N1', 'from the second producer')");
ok(wait_query($C, 'SELECT count(*) FROM item', '3', 30), 'both producers\' rows arrived');
$mark = last_log();
sq($P, 'TRUNCATE item');
sync_now($C, $P->{url});
is(sq($C, 'SELECT count(*) FROM item'), '0',
	'a Truncate from one producer empties the whole table, the other producer\'s rows too');
is(sq($C, "SELECT count(*) FROM eventstream.remote_document WHERE local_table = 'item'::regclass"), '0',
	'  and the remote names of its rows');
sq($C, "SELECT eventstream.resync_table('$P2->{url}', 'item')");
ok(wait_query($C, 'SELECT string_agg(v, \',\') FROM item', 'from the second producer', 30),
	'resync_table() brings the other producer\'s rows back');
is(sq($C, "SELECT r.producer_url || ' ' || r.remote_docname FROM item i, LATERAL eventstream.remote_name('item', i.name) r"),
	"$P2->{url} N1", '  under their remote names');
sq($P, "INSERT INTO item VALUES ('N3', 'after')");
ok(wait_query($C, 'SELECT string_agg(v, \',\' ORDER BY v) FROM item', 'after,from the second producer', 30),
	'and the first producer streams on');

######################################################################
# A cascade: a Truncate applied here is captured for the next site
######################################################################

my $T = add_site($node, 'third');
sq($T, q{
	CREATE TABLE b (id int PRIMARY KEY, v text);
	CREATE ROLE applier_t;
	GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON b TO applier_t;
});
sq($C, 'CREATE ROLE branch_c; GRANT SELECT ON b TO branch_c');
my ($key_c, $secret_c) = key_pair($C, 'branch_c');
sq($T, "SELECT eventstream.add_producer(producer_url => '$C->{url}', api_key => '$key_c', api_secret => '$secret_c', "
	  . "subscriber => 'applier_t', tables => ARRAY['b'])");
sq($C, "SELECT eventstream.approve('$T->{url}', 'b')");
sq($P, "INSERT INTO b VALUES (7, 'seven'), (8, 'eight')");
ok(wait_query($T, 'SELECT count(*) FROM b', '2', 30), 'cascade: the rows reach the third site');
sq($P, 'TRUNCATE b');
ok(wait_query($T, 'SELECT count(*) FROM b', '0', 30), 'cascade: so does the Truncate');
is(sq($C, "SELECT origin = '$P->{site_id}' FROM eventstream.update_log WHERE update_type = 'Truncate'"), 't',
	'  logged on the middle site with the first one as its origin');

is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed' AND resynced_at IS NULL"), '0',
	'nothing Failed in the end');

done_testing();
