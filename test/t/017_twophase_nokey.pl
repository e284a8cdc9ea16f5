# Two-phase commit on the producer, and a subscribed table that lost its
# primary key, between real sites (issue 14).
#
# A. A transaction that changed captured tables can be PREPAREd.  Its
#    changes are served only after COMMIT PREPARED, after what committed
#    before it, and are not lost although the consumer's cursor moved past
#    their ids meanwhile; the consumer's long-poll hears of the COMMIT
#    PREPARED at once.  After ROLLBACK PREPARED nothing of it is ever
#    served.  A transaction prepared before a restart of the producer and
#    committed after it is served too.
# B. Once the primary key of a subscribed table is dropped, writing to the
#    table still works and is still captured: INSERT, UPDATE and DELETE
#    reach the consumer, the documents named by the former key's column,
#    which the capture trigger remembers by name; the session gets one
#    WARNING per transaction, and consumer_status counts the subscription in
#    tables_without_key until the key is back.  Once that column is dropped
#    too, nothing names the documents: writes still work, are not logged,
#    and warn so; with a key again, resync_table() brings the consumer back
#    in line.
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

my $P = add_site(new_node('producer', "max_prepared_transactions = 10\n"), 'site');
my $C = add_site(new_node('consumer'), 'site');

my $schema = q{
	CREATE TABLE item (name text PRIMARY KEY, v text);
	CREATE TABLE other (name text PRIMARY KEY, v text);
	CREATE TABLE nokey (name text PRIMARY KEY, v text);
};
sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($C, $schema . 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;');
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item', 'nokey'])");
sq($P, "SELECT eventstream.approve('$C->{url}', 'item'); SELECT eventstream.approve('$C->{url}', 'nokey')");
ok(wait_query($C, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table",
		'Approved,Approved', 30), 'the consumer is approved');
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 30), 'and streaming');

# The names of item's rows on a site, in order.
sub items
{
	my ($s) = @_;
	return sq($s, "SELECT coalesce(string_agg(name || '=' || v, ',' ORDER BY name), '') FROM item");
}

# The order in which the consumer applied the given documents of item.
sub applied_order
{
	my ($names) = @_;
	return sq($C, "SELECT string_agg(remote_docname || ':' || update_type, ',' ORDER BY id) FROM eventstream.sync_log "
		  . "WHERE remote_ref_table = 'public.item' AND remote_docname IN ($names)");
}

######################################################################
# A1. COMMIT PREPARED: served after commit, in commit order, none lost
######################################################################

my ($ret, $out, $err) = q_try($P, q{
	BEGIN;
	INSERT INTO item VALUES ('A1', 'prepared');
	INSERT INTO item VALUES ('A2', 'prepared');
	PREPARE TRANSACTION 'p1';
});
is($ret, 0, 'A1: PREPARE TRANSACTION of a transaction that changed a captured table succeeds')
  or diag($err);
is(sq($P, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p1'"), '1', 'A1: the transaction is prepared');

# Committed after the prepared one drew its ids: larger ids, earlier commit.
sq($P, "INSERT INTO item VALUES ('B1', 'committed')");
sq($P, "INSERT INTO other VALUES ('O1', 'unsubscribed table')");
sync_now($C, $P->{url});
is(items($C), 'B1=committed', 'A1: what committed is served, nothing of the prepared transaction');
sq($P, "INSERT INTO item VALUES ('B2', 'committed')");
sync_now($C, $P->{url});
is(items($C), 'B1=committed,B2=committed', 'A1: a later pull, its cursor past the prepared ids, serves none of them');

sq($P, "COMMIT PREPARED 'p1'");
ok(wait_query($C, "SELECT count(*) FROM item WHERE name IN ('A1', 'A2')", '2', 15),
	'A1: after COMMIT PREPARED the worker delivers its rows within 15 s (its long-poll is woken)');
sync_now($C, $P->{url});
is(items($C), items($P), 'A1: the consumer has every row, none lost');
is(applied_order("'A1', 'A2', 'B1', 'B2'"), 'B1:Create,B2:Create,A1:Create,A2:Create',
	'A1: applied in commit order: the prepared transaction after those that committed before it');

# The same document changed before and after the prepared transaction
# commits: its Update follows its Create.
q_try($P, "BEGIN; UPDATE item SET v = 'in p1b' WHERE name = 'B1'; PREPARE TRANSACTION 'p1b';");
sq($P, "INSERT INTO item VALUES ('B3', 'committed')");
sync_now($C, $P->{url});
is(sq($C, "SELECT v FROM item WHERE name = 'B1'"), 'committed', 'A1: an Update in a prepared transaction is not served');
sq($P, "COMMIT PREPARED 'p1b'");
sq($P, "UPDATE item SET v = 'after p1b' WHERE name = 'B1'");
sync_now($C, $P->{url});
is(items($C), items($P), 'A1: then both Updates are, in commit order');
is(applied_order("'B1'"), 'B1:Create,B1:Update,B1:Update', 'A1: B1 got its Create and both Updates');

######################################################################
# A2. ROLLBACK PREPARED: nothing is ever served
######################################################################

($ret, $out, $err) = q_try($P, "BEGIN; INSERT INTO item VALUES ('R1', 'rolled back'); "
	  . "UPDATE item SET v = 'rolled back' WHERE name = 'B2'; PREPARE TRANSACTION 'p2';");
is($ret, 0, 'A2: a second transaction is prepared') or diag($err);
sq($P, "INSERT INTO item VALUES ('C1', 'committed')");
sync_now($C, $P->{url});
sq($P, "ROLLBACK PREPARED 'p2'");
sq($P, "INSERT INTO item VALUES ('C2', 'committed')");
sync_now($C, $P->{url});
ok(wait_query($C, "SELECT count(*) FROM item WHERE name = 'C2'", '1', 30), 'A2: what committed after it arrives');
is(items($C), items($P), 'A2: the consumer has what the producer has');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_docname = 'R1' "
	  . "OR (remote_docname = 'B2' AND update_type = 'Update')"), '0',
	'A2: nothing of the rolled back transaction was served');

# A failed PREPARE (the name is taken) leaves the transaction's changes
# unserved and frees what it held.
q_try($P, "BEGIN; INSERT INTO item VALUES ('D0', 'x'); PREPARE TRANSACTION 'p-taken';");
($ret, $out, $err) = q_try($P, "BEGIN; INSERT INTO item VALUES ('D1', 'x'); PREPARE TRANSACTION 'p-taken';");
isnt($ret, 0, 'A2: a PREPARE with a name in use fails');
like($err, qr/transaction identifier "p-taken" is already in use/, '  with PostgreSQL\'s error');
sq($P, "ROLLBACK PREPARED 'p-taken'");
sq($P, "INSERT INTO item VALUES ('D2', 'committed')");
sync_now($C, $P->{url});
is(items($C), items($P), 'A2: after it, serving goes on; neither D0 nor D1 arrives');
is(sq($C, "SELECT count(*) FROM item WHERE name IN ('D0', 'D1')"), '0', '  (checked)');

######################################################################
# A3. A prepared transaction survives a restart of the producer
######################################################################

($ret, $out, $err) = q_try($P, "BEGIN; INSERT INTO item SELECT 'E' || g, 'across restart' FROM generate_series(1, 3) g; "
	  . "PREPARE TRANSACTION 'p3';");
is($ret, 0, 'A3: a transaction is prepared') or diag($err);
sq($P, "INSERT INTO item VALUES ('F1', 'before restart')");
sync_now($C, $P->{url});
$P->{node}->restart;
ok(health_ok($P), 'A3: the producer is back');
is(sq($P, "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p3'"), '1', 'A3: the transaction is still prepared');
# New logs after the restart move the consumer's cursor: its low bound must
# still come before the prepared transaction's ids.
sq($P, "INSERT INTO item VALUES ('F2', 'after restart')");
sync_now($C, $P->{url});
sq($P, "INSERT INTO item VALUES ('F3', 'after restart')");
sync_now($C, $P->{url});
is(sq($C, "SELECT string_agg(name, ',' ORDER BY name) FROM item WHERE name LIKE 'E%' OR name LIKE 'F%'"), 'F1,F2,F3',
	'A3: what committed is served, the prepared rows are not');
sq($P, "COMMIT PREPARED 'p3'");
sync_now($C, $P->{url});
is(items($C), items($P), 'A3: after COMMIT PREPARED its rows arrive, none lost');
is(sq($C, "SELECT count(*) FROM item WHERE name LIKE 'E%'"), '3', '  all three');

# A transaction that captured nothing is prepared as always.
($ret, $out, $err) = q_try($P, "BEGIN; INSERT INTO other VALUES ('O2', 'x'); PREPARE TRANSACTION 'p4'; COMMIT PREPARED 'p4';");
is($ret, 0, 'A3: a transaction that changed only uncaptured tables is prepared and committed') or diag($err);

######################################################################
# B. A subscribed table that lost its primary key
######################################################################

my $nokey_sql = "SELECT tables_without_key FROM eventstream.consumer_status WHERE consumer_url = '$C->{url}'";
my $nokey_rows = "SELECT coalesce(string_agg(name || '=' || v, ',' ORDER BY name), '') FROM nokey";
is(sq($P, $nokey_sql), '0', 'B: consumer_status counts no table without a key');
sq($P, "INSERT INTO nokey VALUES ('K1', 'keyed')");
# The table is copied (its initial sync needs the key) and streaming first.
ok(wait_query($C, $nokey_rows, 'K1=keyed', 60), 'B: the table is copied and streams while it has its key');
sq($P, 'ALTER TABLE nokey DROP CONSTRAINT nokey_pkey');
($ret, $out, $err) = q_try($P, "INSERT INTO nokey VALUES ('K2', 'no key'), ('K3', 'no key'); "
	  . "UPDATE nokey SET v = 'changed' WHERE name = 'K1'; DELETE FROM nokey WHERE name = 'K3'; SELECT count(*) FROM nokey");
is($ret, 0, 'B: INSERT, UPDATE and DELETE on a subscribed table without a primary key succeed') or diag($err);
is($out, '2', '  and do their work');
my @warnings = $err =~ /WARNING:  table "public\.nokey" has no primary key/g;
is(scalar(@warnings), 3, 'B: one WARNING per transaction (three statements, three transactions)');
like($err, qr/DETAIL:  eventstream still captures its changes, naming its rows by the columns of its former primary key/,
	'  saying the changes are still captured');
like($err, qr/HINT:  Add the primary key again\./, '  with a hint');
unlike($err, qr/not captured/, '  and none says they are not');
($ret, $out, $err) = q_try($P, "BEGIN; INSERT INTO nokey VALUES ('K4', 'x'); INSERT INTO nokey VALUES ('K5', 'x'); COMMIT;");
@warnings = $err =~ /WARNING:  table "public\.nokey" has no primary key/g;
is(scalar(@warnings), 1, 'B: two rows in one transaction: one WARNING');
is(sq($P, "SELECT string_agg(update_type || ':' || docname, ',' ORDER BY id) FROM eventstream.update_log "
	  . "WHERE ref_table = 'public.nokey' AND docname <> 'K1' OR (docname = 'K1' AND update_type = 'Update')"),
	'Create:K2,Create:K3,Update:K1,Delete:K3,Create:K4,Create:K5',
	'B: the changes are logged, named by the former key');
is(sq($P, $nokey_sql), '1', 'B: consumer_status counts the subscription in tables_without_key');
ok(wait_query($C, $nokey_rows, 'K1=changed,K2=no key,K4=x,K5=x', 30),
	'B: the consumer receives them: K2, K4 and K5 created, K1 updated, K3 created and deleted');

# The key column dropped too: nothing names the documents any more.
sq($P, 'ALTER TABLE nokey DROP COLUMN name');
my $logs_before = sq($P, 'SELECT max(id) FROM eventstream.update_log');
($ret, $out, $err) = q_try($P, "INSERT INTO nokey (v) VALUES ('nameless'); UPDATE nokey SET v = 'y' WHERE v = 'x'; "
	  . "SELECT count(*) FROM nokey");
is($ret, 0, 'B: with the former key column dropped too, INSERT and UPDATE still succeed') or diag($err);
is($out, '5', '  and do their work');
@warnings = $err =~ /WARNING:  changes of table "public\.nokey" are not captured: table "public\.nokey" has no primary key/g;
is(scalar(@warnings), 2, 'B: one WARNING per transaction says the changes are not captured');
like($err, qr/HINT:  Add the primary key again, then have the consumers copy the table again with eventstream.resync_table\(\)\./,
	'  with a hint');
is(sq($P, "SELECT count(*) FROM eventstream.update_log WHERE id > $logs_before"), '0', 'B: and they are not logged');
is(sq($P, $nokey_sql), '1', 'B: consumer_status still counts the subscription');

# A key again: captured again, no WARNING; resync_table() catches up.
sq($P, "DELETE FROM nokey; ALTER TABLE nokey ADD COLUMN name text; "
	  . "INSERT INTO nokey (name, v) VALUES ('K1', 'back'); ALTER TABLE nokey ADD PRIMARY KEY (name)");
is(sq($P, $nokey_sql), '0', 'B: once the key is back, tables_without_key is 0');
($ret, $out, $err) = q_try($P, "INSERT INTO nokey (name, v) VALUES ('K6', 'keyed again')");
unlike($err, qr/WARNING/, 'B: and no more WARNING');
sync_now($C, $P->{url});
is(sq($C, "SELECT v FROM nokey WHERE name = 'K6'"), 'keyed again', 'B: changes are captured again');
sq($C, "SELECT eventstream.resync_table('$P->{url}', 'nokey')");
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.nokey'", 'f', 60),
	'B: resync_table() copies the table again');
is(sq($C, $nokey_rows), sq($P, $nokey_rows), '  and the consumer has what the producer has');

done_testing();
