# Copyright (c) 2026, eventstream authors.  PostgreSQL License.
#
# Producer side end to end on a real server: capture into the update log,
# pulling, durability across a restart, pruning, unsubscribe/resubscribe,
# and the shared_preload_libraries requirement.

use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $consumer = 'http://consumer.test';
my $site_id  = '00000000-0000-0000-0000-0000000000c3';

my $node = PostgreSQL::Test::Cluster->new('producer');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'eventstream'\neventstream.prune_interval = 0");
$node->start;

$node->safe_psql('postgres', q{
	CREATE EXTENSION eventstream;
	CREATE TABLE t (id int PRIMARY KEY, v text, n int);
	CREATE ROLE reader;
	GRANT SELECT ON t TO reader;
	CREATE TABLE cur (c text);
});

# Register: one Pending subscription, no trigger yet.
my $reg = $node->safe_psql('postgres', qq{
	SELECT eventstream._register_consumer('$consumer', '$site_id', 'key', 'reader', '["public.t"]')->'tables'
});
is($reg, '[{"status": "Pending", "readable": true, "condition": null, "ref_table": "public.t", "unsubscribed": false}]',
	'registration: subscription is Pending');

sub trigger_count
{
	return $node->safe_psql('postgres',
		q{SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.t'::regclass AND tgname = 'eventstream_capture'});
}

is(trigger_count(), '0', 'no capture trigger while the subscription is Pending');

$node->safe_psql('postgres', q{INSERT INTO t VALUES (0, 'before approval', 0)});

# Keep the registration cursor where pulls can find it.
$node->safe_psql('postgres', qq{
	INSERT INTO cur
		SELECT eventstream._register_consumer('$consumer', '$site_id', 'key', 'reader', '["public.t"]')->>'cursor';
	SELECT eventstream.approve('$consumer', 'public.t');
});
is(trigger_count(), '1', 'approval installs the capture trigger');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventstream.update_log'),
	'0', 'nothing was logged before approval');

# Pull with the saved cursor, store the returned one, and return the whole
# response; the Perl sub pull() keeps each response in table "pulled".
$node->safe_psql('postgres', qq{
	CREATE FUNCTION pull(lim int DEFAULT 100) RETURNS jsonb LANGUAGE plpgsql AS \$\$
	DECLARE
		r jsonb;
	BEGIN
		r := eventstream._pull('$consumer', (SELECT c FROM cur), lim);
		UPDATE cur SET c = r->>'cursor';
		RETURN r;
	END
	\$\$;
	CREATE TABLE pulled (n serial, r jsonb);
});

# Pull once into table "pulled" and return its number.
sub pull
{
	my $lim = shift // 100;
	return $node->safe_psql('postgres',
		"INSERT INTO pulled (r) SELECT pull($lim) RETURNING n");
}

# One line per update of pull number $n: "type|docname|data".
sub updates_of
{
	my $n = shift;
	return $node->safe_psql('postgres', qq{
		SELECT string_agg(concat_ws('|', u->>'update_type', u->>'docname', u->'data'), E'\n' ORDER BY o)
		  FROM pulled, jsonb_array_elements(r->'updates') WITH ORDINALITY AS x(u, o)
		 WHERE pulled.n = $n
	});
}

# ---------------------------------------------------------------------------
# Capture
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', q{
	BEGIN;
	INSERT INTO t VALUES (1, 'one', 1), (2, 'two', 2);
	UPDATE t SET v = 'uno', n = n + 10 WHERE id = 1;
	UPDATE t SET v = v WHERE id = 2;          -- no change: no log
	COMMIT;
	UPDATE t SET n = 5 WHERE id = 0;          -- row from before approval
	DELETE FROM t WHERE id = 2;
});

is($node->safe_psql('postgres', q{
	SELECT string_agg(concat_ws('|', update_type, ref_table, docname, coalesce(data::text, 'NULL'), origin IS NULL), E'\n' ORDER BY id)
	  FROM eventstream.update_log}),
	join("\n",
		'Create|public.t|1|{"n": 1, "v": "one", "id": 1}|t',
		'Create|public.t|2|{"n": 2, "v": "two", "id": 2}|t',
		'Update|public.t|1|{"added": {}, "changed": {"n": 11, "v": "uno"}, "removed": {}, "row_changed": {}}|t',
		'Update|public.t|0|{"added": {}, "changed": {"n": 5}, "removed": {}, "row_changed": {}}|t',
		'Delete|public.t|2|NULL|t'),
	'update log holds Create, Update diffs and Delete, in order');

is($node->safe_psql('postgres', q{
	SELECT string_agg(dense_rank::text, ',' ORDER BY id)
	  FROM (SELECT id, dense_rank() OVER (ORDER BY txid) FROM eventstream.update_log) x}),
	'1,1,1,2,3', 'each log carries the txid of its transaction');

my $p1 = pull();
is(updates_of($p1),
	join("\n",
		'Create|1|{"n": 1, "v": "one", "id": 1}',
		'Create|2|{"n": 2, "v": "two", "id": 2}',
		'Update|1|{"added": {}, "changed": {"n": 11, "v": "uno"}, "removed": {}, "row_changed": {}}',
		'Update|0|{"added": {}, "changed": {"n": 5}, "removed": {}, "row_changed": {}}',
		'Delete|2|null'),
	'first pull delivers every change in order');
is($node->safe_psql('postgres', qq{
	SELECT (r->>'more') || '|' || jsonb_typeof(u->'data') || '|' ||
		   (SELECT string_agg(k, ',' ORDER BY k) FROM jsonb_object_keys(u->'data') k)
	  FROM pulled, jsonb_array_elements(r->'updates') u
	 WHERE n = $p1 AND u->>'update_type' = 'Update' AND u->>'docname' = '1'}),
	'false|object|added,changed,removed,row_changed',
	'Update diff has the four keys; no more pages');
is($node->safe_psql('postgres', qq{
	SELECT jsonb_typeof(u->'data') FROM pulled, jsonb_array_elements(r->'updates') u
	 WHERE n = $p1 AND u->>'update_type' = 'Delete'}),
	'null', 'Delete data is JSON null');
is($node->safe_psql('postgres', qq{
	SELECT bool_and(NOT u ? 'origin' AND u->>'ref_table' = 'public.t' AND u ? 'id')
		   AND bool_and((r->>'newest_at')::timestamptz = (SELECT max(l.created_at) FROM eventstream.update_log l))
	  FROM pulled, jsonb_array_elements(r->'updates') u WHERE n = $p1}),
	't', 'updates carry id and ref_table, local ones no origin; the page says when its newest was logged');

# prune(): the pull that returned the current cursor has not acknowledged
# what it delivered; only the next pull, made with that cursor, does.
is($node->safe_psql('postgres', 'SELECT eventstream.prune()'), '0',
	'prune keeps logs delivered but not yet acknowledged');

# ---------------------------------------------------------------------------
# Restart: log, consumer and cursor survive
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', q{INSERT INTO t VALUES (3, 'three', 3)});
my $cursor_before = $node->safe_psql('postgres', 'SELECT c FROM cur');

$node->restart;

is($node->safe_psql('postgres', 'SELECT c FROM cur'), $cursor_before, 'saved cursor survives the restart');
is($node->safe_psql('postgres', q{
	SELECT string_agg(consumer_url || '|' || role::text || '|' || site_id, ',') FROM eventstream.consumer}),
	"$consumer|reader|$site_id", 'consumer survives the restart');
is($node->safe_psql('postgres', q{
	SELECT string_agg(ref_table || '|' || status || '|' || unsubscribed, ',') FROM eventstream.consumer_table}),
	'public.t|Approved|false', 'subscription survives the restart');
is($node->safe_psql('postgres', q{
	SELECT string_agg(update_type || '|' || docname, ',' ORDER BY id) FROM eventstream.update_log}),
	'Create|1,Create|2,Update|1,Update|0,Delete|2,Create|3', 'update log survives the restart');
is(trigger_count(), '1', 'capture trigger survives the restart');

$node->safe_psql('postgres', q{UPDATE t SET v = 'tres' WHERE id = 3});

my $p2 = pull();
is(updates_of($p2),
	join("\n",
		'Create|3|{"n": 3, "v": "three", "id": 3}',
		'Update|3|{"added": {}, "changed": {"v": "tres"}, "removed": {}, "row_changed": {}}'),
	'pull after restart with the saved cursor delivers exactly the changes since the last pull');

# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------

# That pull acknowledged everything the first pull delivered.
is($node->safe_psql('postgres', 'SELECT eventstream.prune()'), '5',
	'prune deletes the acknowledged logs');
is($node->safe_psql('postgres', q{
	SELECT string_agg(update_type || '|' || docname, ',' ORDER BY id) FROM eventstream.update_log}),
	'Create|3,Update|3', 'logs delivered by the last pull are kept until acknowledged');
is($node->safe_psql('postgres', q{
	SELECT count(*) FROM eventstream.update_log_consumer uc
	 WHERE NOT EXISTS (SELECT 1 FROM eventstream.update_log l WHERE l.id = uc.update_log_id)}),
	'0', 'no receipts left for pruned logs');

my $p3 = pull();
is(updates_of($p3), '', 'pulling again with the new cursor delivers nothing twice');
is($node->safe_psql('postgres', 'SELECT eventstream.prune()'), '2',
	'pulling with the newer cursor acknowledged the rest; prune deletes it');
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventstream.update_log'), '0', 'update log is empty');
is($node->safe_psql('postgres', 'SELECT eventstream.prune()'), '0', 'prune with nothing to delete');

# ---------------------------------------------------------------------------
# Unsubscribe and resubscribe
# ---------------------------------------------------------------------------

is($node->safe_psql('postgres', qq{
	SELECT eventstream._register_consumer('$consumer', '$site_id', 'key', 'reader',
		'[{"ref_table": "public.t", "unsubscribed": true}]')->'tables'}),
	'[{"status": "Approved", "readable": true, "condition": null, "ref_table": "public.t", "unsubscribed": true}]',
	'unsubscribe keeps the approval');
is(trigger_count(), '0', 'unsubscribing removes the capture trigger');

$node->safe_psql('postgres', q{
	INSERT INTO t VALUES (4, 'four', 4);
	UPDATE t SET v = 'ONE' WHERE id = 1;
});
is($node->safe_psql('postgres', 'SELECT count(*) FROM eventstream.update_log'), '0',
	'nothing is logged while unsubscribed');
my $p4 = pull();
is(updates_of($p4), '', 'nothing is delivered while unsubscribed');
is($node->safe_psql('postgres', qq{SELECT r->'tables'->0->>'unsubscribed' FROM pulled WHERE n = $p4}),
	'true', 'pull reports the subscription as unsubscribed');

is($node->safe_psql('postgres', qq{
	SELECT eventstream._register_consumer('$consumer', '$site_id', 'key', 'reader', '["public.t"]')->'tables'}),
	'[{"status": "Approved", "readable": true, "condition": null, "ref_table": "public.t", "unsubscribed": false}]',
	'resubscribe');
is(trigger_count(), '1', 'resubscribing brings the capture trigger back');

$node->safe_psql('postgres', q{
	INSERT INTO t VALUES (5, 'five', 5);
	DELETE FROM t WHERE id = 4;
});
my $p5 = pull();
is(updates_of($p5),
	join("\n",
		'Create|5|{"n": 5, "v": "five", "id": 5}',
		'Delete|4|null'),
	'after resubscribing, new changes are delivered again (and only those)');
is(updates_of(pull()), '', 'and only once');

# ---------------------------------------------------------------------------
# Apply origin: a change applied from the consumer's own site is never
# served back to it; the origin lasts until the end of the transaction.
# ---------------------------------------------------------------------------

my $other_site = '00000000-0000-0000-0000-0000000000d4';
$node->safe_psql('postgres', qq{
	BEGIN;
	SELECT eventstream._set_origin('$site_id');
	INSERT INTO t VALUES (6, 'from consumer', 6);
	COMMIT;
	BEGIN;
	SELECT eventstream._set_origin('$other_site');
	INSERT INTO t VALUES (7, 'from elsewhere', 7);
	COMMIT;
	INSERT INTO t VALUES (8, 'local', 8);
});
is($node->safe_psql('postgres', q{
	SELECT string_agg(docname || '|' || coalesce(origin::text, 'NULL'), ',' ORDER BY id)
	  FROM eventstream.update_log WHERE docname IN ('6', '7', '8')}),
	"6|$site_id,7|$other_site,8|NULL", 'logs are stamped with the apply origin of their transaction');
my $p6 = pull();
is($node->safe_psql('postgres', qq{
	SELECT string_agg(concat_ws('|', u->>'update_type', u->>'docname', u->>'origin'), ',' ORDER BY o)
	  FROM pulled, jsonb_array_elements(r->'updates') WITH ORDINALITY AS x(u, o) WHERE n = $p6}),
	"Create|7|$other_site,Create|8",
	'a change from the consumer\'s own site is not served back to it; one from a third site names it');

# ---------------------------------------------------------------------------
# Crash: committed logs survive crash recovery, with their index entries
# (the capture trigger writes the log and its indexes directly).
# ---------------------------------------------------------------------------

$node->safe_psql('postgres', q{
	UPDATE t SET v = 'eight' WHERE id = 8;
	DELETE FROM t WHERE id = 7;
	CREATE EXTENSION amcheck;
});
my $log_before_crash = $node->safe_psql('postgres', q{
	SELECT string_agg(concat_ws('|', id, update_type, docname, data, txid, origin), ',' ORDER BY id)
	  FROM eventstream.update_log});
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', q{
	SELECT string_agg(concat_ws('|', id, update_type, docname, data, txid, origin), ',' ORDER BY id)
	  FROM eventstream.update_log}),
	$log_before_crash, 'update log survives a crash');
is($node->safe_psql('postgres', q{
	SELECT string_agg(c.relname || '=ok', ',' ORDER BY c.relname)
	  FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid,
		   LATERAL bt_index_check(i.indexrelid, true)   -- errors out on any missing entry
	 WHERE i.indrelid = 'eventstream.update_log'::regclass}),
	'update_log_pkey=ok',
	'update log indexes are intact and cover every log after recovery');
is($node->safe_psql('postgres', q{
	SET enable_seqscan = off;
	SELECT count(*) FROM eventstream.update_log l
	 WHERE l.ref_table COLLATE "C" = 'public.t' AND l.docname COLLATE "C" = '8'}),
	'2', 'the document index finds the logs of one document');
my $p7 = pull();
is(updates_of($p7),
	join("\n",
		'Update|8|{"added": {}, "changed": {"v": "eight"}, "removed": {}, "row_changed": {}}',
		'Delete|7|null'),
	'pull after the crash delivers exactly the changes since the last pull');

# Rejecting stops capture too.
$node->safe_psql('postgres', qq{SELECT eventstream.reject('$consumer', 'public.t')});
is(trigger_count(), '0', 'rejecting removes the capture trigger');

$node->stop;

# ---------------------------------------------------------------------------
# Without shared_preload_libraries, CREATE EXTENSION fails clearly
# ---------------------------------------------------------------------------

my $plain = PostgreSQL::Test::Cluster->new('no_preload');
$plain->init;
$plain->start;

my ($ret, $stdout, $stderr) = $plain->psql('postgres', 'CREATE EXTENSION eventstream');
isnt($ret, 0, 'CREATE EXTENSION fails without the preload');
like($stderr, qr/ERROR:  eventstream must be loaded via shared_preload_libraries/,
	'error says the library must be preloaded');
like($stderr, qr/HINT:  .*shared_preload_libraries/, 'hint mentions shared_preload_libraries');
is($plain->safe_psql('postgres', q{
	SELECT count(*) FROM pg_extension WHERE extname = 'eventstream'}), '0', 'extension was not created');
is($plain->safe_psql('postgres', q{
	SELECT count(*) FROM pg_namespace WHERE nspname = 'eventstream'}), '0', 'nothing of it is left behind');

$plain->stop;

done_testing();
