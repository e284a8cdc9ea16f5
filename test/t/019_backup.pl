# pg_dump / pg_restore of both sites, into fresh clusters: a restored site
# is the same site on a new server (same site_id, keys, subscriptions).
#
#  A. A consumer dumped (custom format), its producer moving on since: the
#     restored consumer resumes from its restored cursor and applies what
#     came after it exactly once.
#  B. A consumer dumped (plain format, run by psql), its producer moving on
#     and pruning since: the restored consumer is re-synced by itself (its
#     tables copied again, rows the producer no longer has deleted).  While
#     the restore is not over (a session connected since before it is still
#     open) the worker neither pulls nor prunes.
#  C. The producer dumped (both formats), its consumer pulling more since:
#     restored into a fresh cluster, rows, foreign keys, API keys, identity
#     and sequences are back, capture works, and the consumer, pulling with
#     its old key, converges to the restored producer's data.
#  D. The producer dumped while its consumer is caught up, restored into a
#     cluster whose transaction ids are far behind: what is written there
#     reaches the consumer (re-synced, its cursor naming the old ids).
#
# Each restored node takes the HTTP port of the node it replaces (stopped
# first), so the site's URL is the same.  Nothing sleeps a fixed time: every
# wait polls for its condition with a deadline.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $schema = q{
	CREATE TABLE cat (id int PRIMARY KEY, name text);
	CREATE TABLE item (id int PRIMARY KEY, cat int REFERENCES cat, v text);
};

# Run a program; (exit code, stdout, stderr).
sub run_cmd
{
	my @cmd = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
	return ($? >> 8, $out, $err);
}

# Dump a site into $file: 'custom' (pg_dump -Fc) or 'plain'.
sub dump_site
{
	my ($s, $file, $format) = @_;
	my ($ret, $out, $err) = run_cmd($s->{node}->installed_command('pg_dump'),
		'-d', $s->{node}->connstr($s->{db}), $format eq 'custom' ? ('-Fc') : ('-Fp'), '-f', $file);
	is($ret, 0, "pg_dump ($format) of $s->{name} exits 0") or diag($err);
	is($err, '', '  and says nothing');
}

# A new node standing in for $old (stopped first): its database $db gets
# $old's HTTP port, so that the site keeps its URL.  Nothing is created in
# the database but what the roles need (pg_dump does not dump roles).
sub standin
{
	my ($old, $name, $roles) = @_;
	$old->{node}->stop;
	my $node = new_node($name);
	$node->safe_psql('postgres', "CREATE ROLE $_") foreach @$roles;
	$node->safe_psql('postgres', "CREATE DATABASE $old->{db}");
	$node->safe_psql('postgres', "ALTER DATABASE $old->{db} SET eventstream.http_port = $old->{port}");
	return { node => $node, db => $old->{db}, port => $old->{port}, url => $old->{url},
		name => "$name/$old->{db}" };
}

# Restore a dump into a stand-in's database, as a new user would:
# pg_restore -d for the custom format, psql -v ON_ERROR_STOP=1 for plain.
sub restore_site
{
	my ($s, $file, $format) = @_;
	my @pg_restore = ($s->{node}->installed_command('pg_restore'), '-d', $s->{node}->connstr($s->{db}));
	my @psql = ($s->{node}->installed_command('psql'), '-X', '-q', '-v', 'ON_ERROR_STOP=1',
		'-d', $s->{node}->connstr($s->{db}));
	my ($ret, $o, $err) = run_cmd($format eq 'custom' ? (@pg_restore, $file) : (@psql, '-f', $file));
	is($ret, 0, "restore ($format) into $s->{name} exits 0") or diag($err);
	unlike($err, qr/ERROR/, '  with no error');
}

# Wait until a site's tables have the producer's rows.
sub converges
{
	my ($c, $p, $what) = @_;
	my $want = sq($p, 'SELECT (SELECT md5(string_agg(t::text, \',\' ORDER BY id)) FROM cat t) || '
		  . '(SELECT md5(string_agg(t::text, \',\' ORDER BY id)) FROM item t)');
	ok(wait_query($c, 'SELECT (SELECT md5(string_agg(t::text, \',\' ORDER BY id)) FROM cat t) || '
			  . '(SELECT md5(string_agg(t::text, \',\' ORDER BY id)) FROM item t)', $want, 90),
		"$what: the consumer's rows are the producer's");
}

my $tmp = PostgreSQL::Test::Utils::tempdir;

######################################################################
# Set-up: a producer and a consumer streaming cat and item
######################################################################

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');
# The producer's transaction ids run well ahead of those of the fresh
# cluster it is restored into (C): its logs and snapshots, approvals
# included, name ids the new cluster has not reached yet.
sq($P, q{DO $$ BEGIN FOR i IN 1 .. 3000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$});
sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	INSERT INTO cat SELECT g, 'cat ' || g FROM generate_series(1, 5) g;
	INSERT INTO item SELECT g, 1 + g % 5, 'v' || g FROM generate_series(1, 40) g;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
sq($C, $schema . 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;');
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['cat', 'item'])");
sq($P, "SELECT eventstream.approve('$C->{url}', 'cat'); SELECT eventstream.approve('$C->{url}', 'item')");
converges($C, $P, 'set-up (initial sync)');
sq($P, q{INSERT INTO item VALUES (41, 2, 'streamed'); UPDATE item SET v = 'u' || id WHERE id <= 10;});
converges($C, $P, 'set-up (streaming)');

######################################################################
# A. Consumer dumped (custom); the producer moves on; restored
######################################################################

my $dumpA = "$tmp/consumer_a.dump";
my $logs_before = sq($C, 'SELECT count(*) FROM eventstream.sync_log');
my $max_log_before = sq($P, 'SELECT max(id) FROM eventstream.update_log');
dump_site($C, $dumpA, 'custom');

# The producer moves on, and the old consumer takes it (the producer's
# position for it is then past the dump's).
sq($P, q{
	UPDATE item SET v = 'after dump ' || id WHERE id BETWEEN 11 AND 20;
	DELETE FROM item WHERE id BETWEEN 31 AND 35;
	INSERT INTO item SELECT g, 3, 'new ' || g FROM generate_series(42, 50) g;
	INSERT INTO cat VALUES (6, 'cat 6');
});
converges($C, $P, 'A: before the restore, the old consumer');
my $after = sq($P, "SELECT count(*) FROM eventstream.update_log WHERE id > $max_log_before");
cmp_ok($after, '>', 0, 'A: the producer logged updates after the dump');
ok(wait_query($P, "SELECT acked_page > 1 FROM eventstream.consumer WHERE consumer_url = '$C->{url}'", 't', 60),
	'A: the producer has acknowledged pages of the old consumer');

my $C2 = standin($C, 'consumer_a', ['applier']);
restore_site($C2, $dumpA, 'custom');
is(sq($C2, 'SELECT site_id FROM eventstream.site'), $C->{site_id}, 'A: the restored consumer has its site_id');
isnt(sq($C2, 'SELECT restored_at FROM eventstream.site'), '', 'A: the site row says it was restored');
ok(wait_query($C2, 'SELECT restore_pending FROM eventstream.site', 'f', 30), 'A: the worker takes the restore over');
converges($C2, $P, 'A: restored from an older cursor');
is(sq($C2, 'SELECT count(*) FROM eventstream.sync_log'), $logs_before + $after,
	'A: exactly once: one sync log per update made after the dump');
is(sq($C2, "SELECT count(*) FROM eventstream.sync_log WHERE update_log_id > $max_log_before"), $after,
	'A: the updates after the dump, each once');
is(sq($C2, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'A: none Failed');
is(sq($C2, "SELECT count(*) FROM eventstream.producer_table WHERE snapshot_pending"), '0',
	'A: no table was copied again');
is(sq($P, "SELECT resync_below FROM eventstream.consumer WHERE consumer_url = '$C->{url}'"), '0',
	'A: the producer took the older cursor back without a re-sync');
sq($P, q{UPDATE item SET v = 'A streams on' WHERE id = 1});
converges($C2, $P, 'A: streaming on');
is(sq($C2, q{SELECT state || ':' || coalesce(last_error, '') FROM eventstream.producer_status}), 'streaming:',
	'A: the restored consumer is streaming, no error');

######################################################################
# B. Consumer dumped (plain); the producer moves on and prunes; restored
######################################################################

my $dumpB = "$tmp/consumer_b.sql";
dump_site($C2, $dumpB, 'plain');
sq($P, q{
	UPDATE item SET v = 'after dump B ' || id WHERE id BETWEEN 21 AND 25;
	DELETE FROM item WHERE id BETWEEN 36 AND 40;
	DELETE FROM cat WHERE id = 6;
	INSERT INTO item VALUES (51, 4, 'new B');
});
converges($C2, $P, 'B: before the restore, the live consumer');
# The consumer's next pull acknowledges what it applied: then prune.
sq($P, q{UPDATE item SET v = 'ack' WHERE id = 2});
converges($C2, $P, 'B: the last change applied');
sq($P, q{UPDATE item SET v = 'ack 2' WHERE id = 3});
converges($C2, $P, 'B: and acknowledged by the pull after it');
my $pruned = sq($P, 'SELECT eventstream.prune()');
cmp_ok($pruned, '>', 0, 'B: the producer pruned logs the dumped consumer had not applied');

my $C3 = standin($C2, 'consumer_b', ['applier']);
# A session connected before the restore, open while it runs: the restore
# is not over until it ends.
my $bg = $C3->{node}->background_psql($C3->{db});
$bg->query_safe('SELECT 1');
restore_site($C3, $dumpB, 'plain');
is(sq($C3, 'SELECT eventstream._restore_state()'), 'pending',
	'B: while a session from before the restore is open, the restore is pending');
my $cursor_restored = sq($C3, 'SELECT cursor FROM eventstream.producer');
is(sq($C3, 'SELECT cursor FROM eventstream.producer'), $cursor_restored, 'B: nothing was pulled meanwhile');
$bg->quit;
ok(wait_query($C3, 'SELECT restore_pending FROM eventstream.site', 'f', 30),
	'B: once that session ended, the worker takes the restore over');
converges($C3, $P, 'B: re-synced after the producer pruned');
is(sq($C3, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'B: none Failed');
is(sq($C3, q{SELECT count(*) FROM eventstream.sync_log WHERE note = 'initial sync: not on the producer'}), '6',
	'B: the rows the producer deleted since the dump were deleted by the copy (5 items, 1 cat)');
cmp_ok(sq($P, "SELECT resync_below FROM eventstream.consumer WHERE consumer_url = '$C->{url}'"), '>', 0,
	'B: the producer re-synced the consumer');
sq($P, q{UPDATE item SET v = 'B streams on' WHERE id = 1});
converges($C3, $P, 'B: streaming on');
is(sq($C3, q{SELECT state || ':' || coalesce(last_error, '') FROM eventstream.producer_status}), 'streaming:',
	'B: the restored consumer is streaming, no error');

######################################################################
# C. Producer dumped; the consumer pulls more since; restored
######################################################################

my $dumpC = "$tmp/producer.dump";
my $dumpCp = "$tmp/producer.sql";
my %was = (
	site_id => $P->{site_id},
	keys => sq($P, 'SELECT string_agg(api_key || encode(secret_hash, \'hex\'), \',\' ORDER BY api_key) FROM eventstream.api_key'),
	logs => sq($P, 'SELECT count(*) || \'/\' || max(id) FROM eventstream.update_log'),
	consumers => sq($P, 'SELECT string_agg(c.consumer_url || \':\' || t.ref_table || \':\' || t.status, \',\' '
		  . 'ORDER BY t.ref_table) FROM eventstream.consumer c JOIN eventstream.consumer_table t USING (consumer_url)'),
	rows => sq($P, 'SELECT (SELECT count(*) FROM cat) || \'/\' || (SELECT count(*) FROM item)'));
my $max_id = sq($P, 'SELECT max(id) FROM eventstream.update_log');
dump_site($P, $dumpC, 'custom');
dump_site($P, $dumpCp, 'plain');
# The consumer pulls more than the dump has.
sq($P, q{
	INSERT INTO cat VALUES (7, 'cat 7 (lost)');
	INSERT INTO item VALUES (60, 1, 'lost'), (61, 2, 'lost');
	UPDATE item SET v = 'changed after dump' WHERE id BETWEEN 1 AND 5;
	DELETE FROM item WHERE id = 41;
});
converges($C3, $P, 'C: before the restore, the consumer');


# The plain dump restores into a fresh database too (not used further).
my $P2 = standin($P, 'producer_c', ['branch']);
{
	$P2->{node}->safe_psql('postgres', 'CREATE DATABASE plain_copy');
	my $plain = { node => $P2->{node}, db => 'plain_copy', name => 'producer_c/plain_copy' };
	restore_site($plain, $dumpCp, 'plain');
	is(sq($plain, 'SELECT (SELECT count(*) FROM cat) || \'/\' || (SELECT count(*) FROM item)'), $was{rows},
		'C: plain dump: every row back');
	is(sq($plain, 'SELECT site_id FROM eventstream.site'), $was{site_id}, 'C: plain dump: the site_id back');
	$P2->{node}->safe_psql('postgres', 'DROP DATABASE plain_copy WITH (FORCE)');
}

restore_site($P2, $dumpC, 'custom');
is(sq($P2, 'SELECT (SELECT count(*) FROM cat) || \'/\' || (SELECT count(*) FROM item)'), $was{rows},
	'C: every row back');
is(sq($P2, q{SELECT count(*) FROM pg_constraint WHERE conrelid = 'item'::regclass AND contype = 'f'}), '1',
	'C: the foreign key back');
is(sq($P2, 'SELECT site_id FROM eventstream.site'), $was{site_id}, 'C: the site_id back');
is(sq($P2, 'SELECT string_agg(api_key || encode(secret_hash, \'hex\'), \',\' ORDER BY api_key) FROM eventstream.api_key'),
	$was{keys}, 'C: the API keys (hashes) back');
is(sq($P2, 'SELECT count(*) || \'/\' || max(id) FROM eventstream.update_log'), $was{logs}, 'C: the update log back');
is(sq($P2, 'SELECT string_agg(c.consumer_url || \':\' || t.ref_table || \':\' || t.status, \',\' ORDER BY t.ref_table) '
	  . 'FROM eventstream.consumer c JOIN eventstream.consumer_table t USING (consumer_url)'),
	$was{consumers}, 'C: the consumer and its approved subscriptions back');
ok(health_ok($P2), 'C: the restored producer answers health');
ok(wait_query($P2, 'SELECT restore_pending FROM eventstream.site', 'f', 30), 'C: the worker takes the restore over');
my ($hs, $hb) = http_get("$P2->{url}/api/eventstream/v1/health");
like($hb, qr/"site_id": "$was{site_id}"/, 'C: health answers with the restored site_id');

# The consumer, pulling with its old key and cursor, is re-synced: what it
# had pulled after the dump is undone.
converges($C3, $P2, 'C: the consumer converges to the restored producer');
is(sq($C3, "SELECT count(*) FROM item WHERE id IN (60, 61) OR v = 'changed after dump'"), '0',
	'C: what the consumer pulled after the dump is gone');
is(sq($C3, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'C: none Failed');

# Capture works on the restored producer, with ids after the restored ones.
sq($P2, q{INSERT INTO cat VALUES (8, 'cat 8'); INSERT INTO item VALUES (70, 8, 'after restore');
	UPDATE item SET v = 'C streams on' WHERE id = 1});
cmp_ok(sq($P2, q{SELECT min(id) FROM eventstream.update_log WHERE docname IN ('8', '70')}), '>', $max_id,
	'C: new logs take ids after the restored ones');
converges($C3, $P2, 'C: streaming on from the restored producer');
is(sq($C3, q{SELECT state || ':' || coalesce(last_error, '') FROM eventstream.producer_status}), 'streaming:',
	'C: the consumer is streaming, no error');
is(sq($C3, "SELECT producer_site_id FROM eventstream.producer"), $was{site_id},
	'C: for the consumer, it is the same producer');

######################################################################
# D. Producer dumped (plain) while its consumer is caught up; restored
######################################################################

# The consumer's cursor then names the dump's own position, in
# transaction ids well ahead of the fresh cluster's: a change made on the
# restored producer must reach the consumer all the same.
sq($P2, q{DO $$ BEGIN FOR i IN 1 .. 3000 LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$});
sq($P2, q{UPDATE item SET v = 'D before the dump' WHERE id = 2});
converges($C3, $P2, 'D: before the dump, the consumer');
my $dumpD = "$tmp/producer_d.sql";
dump_site($P2, $dumpD, 'plain');
my $P3 = standin($P2, 'producer_d', ['branch']);
restore_site($P3, $dumpD, 'plain');
ok(wait_query($P3, 'SELECT restore_pending FROM eventstream.site', 'f', 30), 'D: the worker takes the restore over');
sq($P3, q{UPDATE item SET v = 'D after the restore' WHERE id = 2; INSERT INTO item VALUES (80, 1, 'D new')});
converges($C3, $P3, 'D: changes made on the restored producer reach the consumer');
cmp_ok(sq($P3, "SELECT resync_below FROM eventstream.consumer WHERE consumer_url = '$C->{url}'"), '>', 0,
	'D: the consumer was re-synced, though its cursor was the dump\'s');
is(sq($C3, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', 'D: none Failed');

done_testing();
