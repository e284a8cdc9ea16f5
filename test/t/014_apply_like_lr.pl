# The consumer applies as PostgreSQL's logical replication applies, between
# real sites talking HTTP on loopback (set up as in 005_consumer.pl): into
# partitioned tables (by hash, by list, by list then hash) whose rows go
# to their partitions, with the producer's tables plain ones; with
# session_replication_role = replica, so that a trigger ENABLE REPLICA or
# ENABLE ALWAYS fires on apply and an ordinary one does not; foreign keys
# still enforced (a child row goes with its parent, a row referring to one
# that is not here fails and is resynced later); and a cascade A -> B -> C,
# whose capture trigger on B (ENABLE ALWAYS) fires while B applies.
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

# The producer's tables: all plain.
my $schema = q{
	CREATE TABLE h (id int PRIMARY KEY, region text, v text);
	CREATE TABLE l (id int, region text, v text, PRIMARY KEY (id, region));
	CREATE TABLE s (id int, region text, v text, PRIMARY KEY (id, region));
	CREATE TABLE t (id int PRIMARY KEY, v text);
	CREATE TABLE doc (id int PRIMARY KEY, title text);
	CREATE TABLE doc_line (doc int REFERENCES doc ON DELETE CASCADE, n int, what text, PRIMARY KEY (doc, n));
	CREATE TABLE cas (id int PRIMARY KEY, v text);
};

# Rows of every kind of change on the producer: $n rows from $first.
sub changes
{
	my ($first, $n) = @_;
	my $last = $first + $n - 1;
	return qq{
		INSERT INTO h SELECT g, (ARRAY['eu', 'us', 'asia'])[g % 3 + 1], 'h' || g FROM generate_series($first, $last) g;
		INSERT INTO l SELECT g, (ARRAY['eu', 'us', 'asia'])[g % 3 + 1], 'l' || g FROM generate_series($first, $last) g;
		INSERT INTO s SELECT g, (ARRAY['eu', 'us', 'asia'])[g % 3 + 1], 's' || g FROM generate_series($first, $last) g;
	};
}

my $P = add_site(new_node('producer'), 'site');
my $cnode = new_node('consumer');
my $C = add_site($cnode, 'site');
my $T = add_site($cnode, 'third');

sq($P, $schema . changes(1, 30) . q{
	INSERT INTO doc VALUES (1, 'one'), (2, 'two');
	INSERT INTO doc_line VALUES (1, 1, 'a'), (1, 2, 'b'), (2, 1, 'c');
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	SELECT eventstream.add_child_table('doc', 'doc_line');
});

# The consumer: the same tables, h, l and s partitioned; t with triggers
# that write into an audit table (named with its schema: the apply runs
# with search_path = pg_catalog, pg_temp), and a foreign key the producer
# does not have (to a table of its own).
$cnode->safe_psql('postgres', 'CREATE ROLE applier; CREATE ROLE branch');
sq($C, q{
	CREATE TABLE h (id int PRIMARY KEY, region text, v text) PARTITION BY HASH (id);
	CREATE TABLE h_0 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 0);
	CREATE TABLE h_1 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 1);
	CREATE TABLE h_2 PARTITION OF h FOR VALUES WITH (MODULUS 3, REMAINDER 2);
	CREATE TABLE l (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
	CREATE TABLE l_eu PARTITION OF l FOR VALUES IN ('eu');
	CREATE TABLE l_us PARTITION OF l FOR VALUES IN ('us');
	CREATE TABLE l_other PARTITION OF l DEFAULT;
	CREATE TABLE s (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
	CREATE TABLE s_eu PARTITION OF s FOR VALUES IN ('eu') PARTITION BY HASH (id);
	CREATE TABLE s_eu_0 PARTITION OF s_eu FOR VALUES WITH (MODULUS 2, REMAINDER 0);
	CREATE TABLE s_eu_1 PARTITION OF s_eu FOR VALUES WITH (MODULUS 2, REMAINDER 1);
	CREATE TABLE s_other PARTITION OF s FOR VALUES IN ('us', 'asia');
	CREATE TABLE t_allowed (v text PRIMARY KEY);
	INSERT INTO t_allowed VALUES ('a'), ('b'), ('c');
	CREATE TABLE t (id int PRIMARY KEY, v text REFERENCES t_allowed);
	CREATE TABLE doc (id int PRIMARY KEY, title text);
	CREATE TABLE doc_line (doc int REFERENCES doc ON DELETE CASCADE, n int, what text, PRIMARY KEY (doc, n));
	CREATE TABLE cas (id int PRIMARY KEY, v text);
	CREATE TABLE audit (trigger_name text, op text, id int, role text);
	CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.audit VALUES (TG_NAME, TG_OP, coalesce(NEW.id, OLD.id), current_setting('session_replication_role'));
		RETURN coalesce(NEW, OLD);
	END
	$$;
	CREATE TRIGGER ordinary AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION audit();
	CREATE TRIGGER replica AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION audit();
	CREATE TRIGGER always AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW EXECUTE FUNCTION audit();
	ALTER TABLE t ENABLE REPLICA TRIGGER replica, ENABLE ALWAYS TRIGGER always;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
sq($T, $schema);
sq($T, 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier');

my @tables = qw(h l s t doc cas);
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['" . join("', '", @tables) . "'])");
sq($P, join('', map { "SELECT eventstream.approve('$C->{url}', '$_');" } @tables));
# The cascade: the third site subscribes to the consumer's cas.
my ($keyc, $secretc) = key_pair($C, 'branch');
sq($T, "SELECT eventstream.add_producer(producer_url => '$C->{url}', api_key => '$keyc', api_secret => '$secretc', "
	  . "subscriber => 'applier', tables => ARRAY['cas'])");
sq($C, "SELECT eventstream.approve('$T->{url}', 'cas')");

# Equal rows on both sides, or say where they differ.
sub same_rows
{
	my ($table, $what) = @_;
	my $ok = wait_until(30, sub { rows($C, $table) eq rows($P, $table) });
	ok($ok, "$what: $table has the producer's rows")
	  or diag("producer:\n" . rows($P, $table) . "\nconsumer:\n" . rows($C, $table));
}

######################################################################
# Partitioned tables
######################################################################

ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE producer_url = '$P->{url}' "
		  . "AND status = 'Approved' AND NOT snapshot_pending", scalar(@tables), 30),
	'the initial sync of every table is done');
same_rows($_, 'initial sync') foreach qw(h l s doc doc_line);
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'initial sync: nothing Failed');
is(sq($C, "SELECT string_agg(p, ',' ORDER BY p) FROM (SELECT DISTINCT tableoid::regclass::text p FROM s) x"),
	's_eu_0,s_eu_1,s_other', 'initial sync: the sub-partitioned rows are in every leaf');

# Creates (runs of them, applied together), Updates (one moving its row:
# on the producer a new key is a new document, a Delete and a Create),
# Deletes, and Creates of rows that are there already.
sq($P, changes(31, 40) . q{
	UPDATE h SET v = v || '+', region = 'eu' WHERE id % 4 = 0;
	UPDATE l SET v = v || '+' WHERE id % 5 = 0;
	UPDATE l SET region = 'eu' WHERE id IN (2, 3);
	UPDATE s SET region = 'eu', v = 'moved' WHERE id IN (5, 8, 17);
	UPDATE s SET v = v || '+' WHERE id % 7 = 0;
	DELETE FROM h WHERE id % 6 = 1;
	DELETE FROM l WHERE id BETWEEN 20 AND 40;
	DELETE FROM s WHERE id % 9 = 2;
});
sync_now($C, $P->{url});
same_rows($_, 'changes') foreach qw(h l s);
is(sq($C, "SELECT string_agg(region || ':' || v, ',' ORDER BY id) FROM s WHERE id IN (5, 8, 17)"),
	'eu:moved,eu:moved,eu:moved', 'rows whose partition key changed');
is(sq($C, "SELECT count(*) FROM s_eu WHERE id IN (5, 8, 17)"), '3', '  moved to their new partition');
is(sq($C, "SELECT string_agg(tableoid::regclass::text, ',' ORDER BY id) FROM l WHERE id IN (2, 3)"),
	'l_eu,l_eu', 'so did a list-partitioned one');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'changes: nothing Failed');

# The producer's rows again, over rows that are there (a resync of the
# table: its initial sync once more).
sq($P, "UPDATE h SET v = 'again' WHERE id < 10");
sq($C, "SELECT eventstream.resync_table('$P->{url}', 'h')");
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.h'", 'f', 30),
	'resync_table of a partitioned table is done');
same_rows('h', 'resync_table');

######################################################################
# Triggers: replica semantics
######################################################################

sq($C, 'TRUNCATE audit');
sq($P, q{
	INSERT INTO t VALUES (1, 'a'), (2, 'b');
	UPDATE t SET v = 'c' WHERE id = 1;
	DELETE FROM t WHERE id = 2;
});
sync_now($C, $P->{url});
same_rows('t', 'triggers');
is(sq($C, "SELECT string_agg(trigger_name || ' ' || op || ' ' || id || ' ' || role, ',' ORDER BY trigger_name, op, id) FROM audit"),
	'always DELETE 2 replica,always INSERT 1 replica,always INSERT 2 replica,always UPDATE 1 replica,'
	  . 'replica DELETE 2 replica,replica INSERT 1 replica,replica INSERT 2 replica,replica UPDATE 1 replica',
	'on apply the ENABLE REPLICA and ENABLE ALWAYS triggers fire, the ordinary one does not');
# The background worker applies the same way.
sq($C, 'TRUNCATE audit');
sq($P, "INSERT INTO t VALUES (3, 'a')");
ok(wait_query($C, "SELECT string_agg(trigger_name, ',' ORDER BY trigger_name) FROM audit WHERE id = 3", 'always,replica', 30),
	'so it does in the background worker');
sq($C, 'TRUNCATE audit');
sq($C, "INSERT INTO t VALUES (100, 'a')");
is(sq($C, "SELECT string_agg(trigger_name || ' ' || role, ',' ORDER BY trigger_name) FROM audit"),
	'always origin,ordinary origin', "the site's own writes fire the ordinary trigger, not the replica one");
sq($C, 'DELETE FROM t WHERE id = 100');

######################################################################
# Foreign keys: still enforced
######################################################################

# Child rows go with their parent (they are not logged when the producer
# cascades: the consumer's own ON DELETE CASCADE takes them).
sq($P, "INSERT INTO doc_line VALUES (2, 2, 'd'); DELETE FROM doc WHERE id = 1");
sync_now($C, $P->{url});
same_rows($_, 'a parent deleted') foreach qw(doc doc_line);
is(sq($C, 'SELECT count(*) FROM doc_line WHERE doc = 1'), '0', 'the deleted document took its child rows along');

# A row refers to one this site does not have: the update fails with the
# foreign key's error, and is resynced once the row is here.
sq($P, "INSERT INTO t VALUES (4, 'zzz')");
sync_now($C, $P->{url});
is(sq($C, "SELECT status FROM eventstream.sync_log WHERE remote_ref_table = 'public.t' AND remote_docname = '4'"),
	'Failed', 'a row referring to a missing one is Failed');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_ref_table = 'public.t' AND remote_docname = '4'"),
	qr/violates foreign key constraint "t_v_fkey"/, '  with the foreign key error');
sq($C, "INSERT INTO t_allowed VALUES ('zzz')");
is(sq($C, "SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE remote_ref_table = 'public.t' AND remote_docname = '4'"),
	'Synced', 'resynced once the row it refers to is here');
same_rows('t', 'resync');

######################################################################
# A cascade A -> B -> C
######################################################################

is(sq($C, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid = 'cas'::regclass"),
	'A', "the consumer's capture trigger is ENABLE ALWAYS");
sq($P, "INSERT INTO cas VALUES (1, 'from A')");
ok(wait_query($T, "SELECT v FROM cas WHERE id = 1", 'from A', 30), 'A -> B -> C: the third site gets the row');
is(sq($T, "SELECT origin FROM eventstream.sync_log WHERE remote_docname = '1' AND update_log_id IS NOT NULL"),
	$P->{site_id}, "  and knows it came from A's site");

# A capture trigger in another state (an earlier version made it so) is
# enabled ALWAYS again by the next reconfiguration.
sq($C, 'ALTER TABLE cas ENABLE TRIGGER eventstream_capture');
is(sq($C, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid = 'cas'::regclass"),
	'O', 'the capture trigger made ordinary by hand');
sq($C, 'SELECT eventstream._sync_capture()');
is(sq($C, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid = 'cas'::regclass"),
	'A', '_sync_capture() enables it ALWAYS again');
sq($P, "UPDATE cas SET v = 'changed on A' WHERE id = 1");
ok(wait_query($T, "SELECT v FROM cas WHERE id = 1", 'changed on A', 30), 'and the cascade goes on');

done_testing();
