# Initial sync and recovery between two real sites (two databases of one
# node, each with its own worker and HTTP port): tables whose key is an
# array or a composite holding an array, copied over several snapshot
# pages (so after= carries such a key back to the producer); a table whose
# copy fails, which must not hold the producer's other tables back, and
# unsubscribe() dropping it; resync() refusing to roll a document back,
# refetch() of one document, and copies again that delete what the
# producer no longer has (subscribing again, resync_table()).
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
	CREATE TABLE flow (id int PRIMARY KEY, v text);
	CREATE TABLE blocked (id int PRIMARY KEY, v text);
	CREATE TABLE acct (id int PRIMARY KEY, amount int);
	CREATE TABLE kept (id int PRIMARY KEY, v text);
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
	INSERT INTO blocked SELECT i, 'b' || i FROM generate_series(1, 10) i;
	INSERT INTO kept SELECT i, 'k' || i FROM generate_series(1, 5) i;
});
sq($C, $schema . q{
	CREATE ROLE applier;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	-- The consumer refuses one amount, until its admin drops the check.
	ALTER TABLE acct ADD CONSTRAINT not_30000 CHECK (amount <> 30000);
});

my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['arr', 'comp', 'flow', 'blocked', 'acct', 'kept'])");
# Registered while readable; then blocked's copy is made to fail.
sq($P, 'REVOKE SELECT ON blocked FROM branch');
sq($P, "SELECT eventstream.approve('$C->{url}', t) FROM unnest(ARRAY['arr', 'comp', 'flow', 'blocked', 'acct', 'kept']) t");

######################################################################
# Array keys over several snapshot pages
######################################################################

ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE status = 'Approved' AND NOT snapshot_pending "
		  . "AND ref_table IN ('public.arr', 'public.comp')",
		'2', 120),
	'the initial sync of the tables keyed by arrays ends');
is(digest($C, 'arr'), digest($P, 'arr'), 'an int[] key: all 150 rows copied, as on the producer');
is(digest($C, 'comp'), digest($P, 'comp'), 'a composite key with text (commas, quotes), int[] and timestamptz: all 150 rows copied');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE note = 'initial sync' AND ref_table = 'public.arr' AND status = 'Synced'"),
	'150', 'each copied once, Synced');
sq($P, "UPDATE arr SET v = 'changed' WHERE id = '{150,300,-150}'");
ok(wait_query($C, "SELECT v FROM arr WHERE id = '{150,300,-150}'", 'changed', 60),
	'an update of an array-keyed row streams afterwards');

######################################################################
# A failing initial sync holds no other table back
######################################################################

ok(wait_query($C, "SELECT snapshot_pending AND snapshot_error IS NOT NULL AND snapshot_retry_at IS NOT NULL "
		  . "FROM eventstream.producer_table WHERE ref_table = 'public.blocked'", 't', 60),
	"the failing copy is recorded on its table, with a retry time");
like(sq($C, "SELECT snapshot_error FROM eventstream.producer_table WHERE ref_table = 'public.blocked'"),
	qr/permission denied|cannot read/, '  and its error');
sq($P, "INSERT INTO flow SELECT i, 'f' || i FROM generate_series(1, 20) i");
ok(wait_query($C, 'SELECT count(*) FROM flow', '20', 60),
	"another table's updates flow while that copy fails");
sq($P, "UPDATE flow SET v = 'f1 again' WHERE id = 1");
ok(wait_query($C, "SELECT v FROM flow WHERE id = 1", 'f1 again', 60), '  and keep flowing');
is(sq($C, "SELECT count(*) FROM eventstream.inbox"), '0', 'nothing waits in the inbox');
is(sq($C, "SELECT state || ' ' || copies_failing FROM eventstream.producer_status"), 'streaming 1',
	'the producer is streaming, not failing; producer_status counts the failing copy');

# sync_now() from a session goes past it too, with a warning (the worker
# leaves the producer alone meanwhile).
sq($C, "UPDATE eventstream.producer SET enabled = false; SELECT eventstream._wake_worker()");
sq($C, "UPDATE eventstream.producer_table SET snapshot_retry_at = now() WHERE ref_table = 'public.blocked'");
sq($P, "INSERT INTO flow VALUES (21, 'by sync_now')");
my ($ret, $out, $err) = q_try($C, "SELECT eventstream.sync_now('$P->{url}') >= 0");
is($ret, 0, 'sync_now() succeeds while a copy fails');
like($err, qr/initial sync from producer .* failed/, '  and warns about the copy');
is(sq($C, 'SELECT v FROM flow WHERE id = 21'), 'by sync_now', '  and applies the other tables');
like(sq($C, "SELECT snapshot_error FROM eventstream.producer_table WHERE ref_table = 'public.blocked'"),
	qr/cannot read/, '  and records the error again');
sq($C, "UPDATE eventstream.producer SET enabled = true; SELECT eventstream._wake_worker()");

# Once readable again, the retry copies the table.
sq($P, 'GRANT SELECT ON blocked TO branch');
sq($C, "UPDATE eventstream.producer_table SET snapshot_retry_at = now() WHERE ref_table = 'public.blocked'");
ok(wait_query($C, "SELECT snapshot_pending OR snapshot_error IS NOT NULL FROM eventstream.producer_table "
		  . "WHERE ref_table = 'public.blocked'", 'f', 120),
	'the retried copy succeeds and clears the error');
is(digest($C, 'blocked'), digest($P, 'blocked'), '  and the table is copied');

# unsubscribe() drops a copy that fails (it would otherwise be retried
# for ever, and the producer refuses it: the consumer is unsubscribed).
sq($P, 'REVOKE SELECT ON blocked FROM branch');
sq($P, "SELECT eventstream.reject('$C->{url}', 'blocked')");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.blocked'", 'Rejected', 60),
	'rejected');
sq($P, "SELECT eventstream.approve('$C->{url}', 'blocked')");
ok(wait_query($C, "SELECT snapshot_error IS NOT NULL FROM eventstream.producer_table WHERE ref_table = 'public.blocked'",
		't', 60),
	'approved again: a new copy starts, which fails');
sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'blocked')");
is(sq($C, "SELECT snapshot_pending OR snapshot_error IS NOT NULL FROM eventstream.producer_table WHERE ref_table = 'public.blocked'"),
	'f', 'unsubscribe() drops the copy');
is(sq($C, "SELECT kind FROM eventstream._next_request('$P->{url}')"), 'updates', '  and the next request is for updates');

######################################################################
# resync() never rolls a document back; refetch()
######################################################################

sq($P, 'INSERT INTO acct VALUES (1, 100), (2, 100)');
ok(wait_query($C, 'SELECT count(*) FROM acct', '2', 60), 'acct rows arrive');
sq($P, 'UPDATE acct SET amount = 30000 WHERE id = 1');
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE ref_table = 'public.acct' AND status = 'Failed'", '1', 60),
	'an update the consumer refuses is Failed');
sq($P, 'UPDATE acct SET amount = 600 WHERE id = 1');
ok(wait_query($C, 'SELECT amount FROM acct WHERE id = 1', '600', 60), 'a newer update of the same row is applied');
sq($C, 'ALTER TABLE acct DROP CONSTRAINT not_30000');
my $failed = sq($C, "SELECT id FROM eventstream.sync_log WHERE ref_table = 'public.acct' AND status = 'Failed'");
($ret, $out, $err) = q_try($C, "SELECT eventstream.resync($failed)");
isnt($ret, 0, 'resync() of the older Failed update is refused');
like($err, qr/older than an update of the same document applied since/, '  with the reason');
like($err, qr/HINT:.*eventstream\.refetch\('\Q$P->{url}\E', 'public\.acct', '1'\)/, '  and a hint naming refetch()');
is(sq($C, 'SELECT amount FROM acct WHERE id = 1'), '600', 'the row keeps the newer value (not rolled back to 30000)');
is(sq($C, "SELECT status FROM eventstream.sync_log WHERE id = $failed"), 'Failed', '  and the entry stays Failed');

# refetch(): the producer's current state, whatever happened here.
sq($C, 'UPDATE acct SET amount = -1 WHERE id = 1');
is(sq($C, "SELECT eventstream.refetch('$P->{url}', 'acct', '1')"), 'Synced', 'refetch() of a row returns Synced');
is(sq($C, 'SELECT amount FROM acct WHERE id = 1'), '600', '  and the row has the producer\'s current value');
like(sq($C, "SELECT update_type || ' ' || status || ' ' || note FROM eventstream.sync_log "
	  . "WHERE ref_table = 'public.acct' ORDER BY id DESC LIMIT 1"), qr/^Create Synced refetch/, '  logged with the note refetch');
is(sq($C, "SELECT status || ' ' || (resynced_at IS NOT NULL) || ' ' || note FROM eventstream.sync_log WHERE id = $failed"),
	'Synced true settled by refetch', '  and the older Failed entry of that row is settled');
is(sq($C, "SELECT failed_now || ' ' || coalesce(attention, '') FROM eventstream.producer_status"), '0 ',
	'  so producer_status asks for nothing');
# A row the producer no longer has is deleted (its Delete not received:
# the table was unsubscribed meanwhile).
sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'acct')");
sq($P, 'DELETE FROM acct WHERE id = 2');
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'acct', initial_sync => false)");
is(sq($C, 'SELECT count(*) FROM acct WHERE id = 2'), '1', 'a row deleted on the producer while unsubscribed is still here');
is(sq($C, "SELECT eventstream.refetch('$P->{url}', 'acct', '2')"), 'Synced', 'refetch() of it');
is(sq($C, 'SELECT count(*) FROM acct WHERE id = 2'), '0', '  deletes it');
($ret, $out, $err) = q_try($C, "SELECT eventstream.refetch('$P->{url}', 'nosuch', '1')");
like($err, qr/table "public\.nosuch" is not subscribed/, 'refetch() of a table not subscribed is refused');
($ret, $out, $err) = q_try($C, "SELECT eventstream.refetch('http://127.0.0.1:1', 'acct', '1')");
like($err, qr/producer "http:\/\/127\.0\.0\.1:1" is not added/, 'refetch() from an unknown producer is refused');

######################################################################
# Copies again delete what the producer no longer has
######################################################################

ok(wait_query($C, 'SELECT count(*) FROM kept', '5', 60), 'kept: copied');
# Subscribing again copies the table again: a row deleted meanwhile goes.
sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'kept')");
sq($P, "DELETE FROM kept WHERE id = 1; UPDATE kept SET v = 'k2 changed' WHERE id = 2");
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'kept')");
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.kept'", 'f', 60),
	'subscribing again copies the table');
is(digest($C, 'kept'), digest($P, 'kept'), '  which ends as on the producer: the row deleted meanwhile is gone');
is(sq($C, "SELECT status || ' ' || note FROM eventstream.sync_log WHERE ref_table = 'public.kept' AND remote_docname = '1' "
	  . "ORDER BY id DESC LIMIT 1"), 'Synced initial sync: not on the producer', '  logged as such');
# Without a copy (initial_sync => false) it stays, until resync_table().
sq($C, "SELECT eventstream.unsubscribe('$P->{url}', 'kept')");
sq($P, "DELETE FROM kept WHERE id = 3; INSERT INTO kept VALUES (6, 'k6')");
sq($C, "SELECT eventstream.subscribe('$P->{url}', 'kept', initial_sync => false)");
is(sq($C, 'SELECT count(*) FROM kept WHERE id = 3'), '1', 'without a copy, a row deleted meanwhile stays');
sq($C, "INSERT INTO kept VALUES (100, 'made here')");
sq($C, "SELECT eventstream.resync_table('$P->{url}', 'kept')");
ok(wait_query($C, "SELECT snapshot_pending FROM eventstream.producer_table WHERE ref_table = 'public.kept'", 'f', 60),
	'resync_table() copies the table again');
is(rows($C, 'kept', 'id < 100'), rows($P, 'kept'), '  the rows are as on the producer (3 gone, 6 here)');
is(sq($C, 'SELECT v FROM kept WHERE id = 100'), 'made here', '  a row made here, not by the producer, stays');
($ret, $out, $err) = q_try($C, "SELECT eventstream.resync_table('$P->{url}', 'nosuch')");
like($err, qr/table "public\.nosuch" is not subscribed/, 'resync_table() of a table not subscribed is refused');

done_testing();
