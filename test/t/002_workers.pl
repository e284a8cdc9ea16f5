# Background workers: the launcher, one site worker per database with the
# extension, periodic pruning, surviving errors, DROP EXTENSION and DROP
# DATABASE while the worker runs, and restarts.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use IO::Socket::INET;

my $node = PostgreSQL::Test::Cluster->new('workers');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'eventstream'
eventstream.prune_interval = 1
});
$node->start;

my $workers_in = sub {
	my ($db) = @_;
	return qq{SELECT (SELECT count(*) FROM pg_stat_activity
			   WHERE backend_type = 'eventstream worker' AND datname = '$db')};
};

ok($node->poll_query_until('postgres',
	"SELECT count(*) = 1 FROM pg_stat_activity WHERE backend_type = 'eventstream launcher'"),
	'the launcher runs');

# CREATE EXTENSION starts the database's worker at commit.
$node->safe_psql('postgres', 'CREATE DATABASE site1');
my $t0 = time;
$node->safe_psql('site1', 'CREATE EXTENSION eventstream');
ok($node->poll_query_until('site1', $workers_in->('site1') . ' = 1'), 'CREATE EXTENSION starts a worker');
my $startup = time - $t0;
cmp_ok($startup, '<', 5, "the worker is up ${startup}s after CREATE EXTENSION");

# A database without the extension keeps no worker.
ok($node->poll_query_until('postgres', $workers_in->('postgres') . ' = 0'),
	'no worker stays in a database without the extension');

# The worker prunes what every consumer acknowledged.
$node->safe_psql('site1', q{
	CREATE TABLE t (id int PRIMARY KEY, v text);
	CREATE ROLE sub1;
	GRANT SELECT ON t TO sub1;
	CREATE TABLE cur AS
		SELECT eventstream._register_consumer('http://c1', gen_random_uuid(), 'k', 'sub1', '["public.t"]')->>'cursor' AS c;
	SELECT eventstream.approve('http://c1', 't');
	INSERT INTO t SELECT g, 'x' FROM generate_series(1, 10) g;
});
is($node->safe_psql('site1', 'SELECT count(*) FROM eventstream.update_log'), '10', 'ten logs');
$node->safe_psql('site1', q{
	UPDATE cur SET c = eventstream._pull('http://c1', c, 100)->>'cursor';
	UPDATE cur SET c = eventstream._pull('http://c1', c, 100)->>'cursor';
});
ok($node->poll_query_until('site1', 'SELECT count(*) = 0 FROM eventstream.update_log'),
	'the worker pruned the acknowledged logs');

# A backlog bigger than a step (20,000 logs) is pruned in several steps,
# all of it.
$node->safe_psql('site1', q{
	INSERT INTO t SELECT g, 'y' FROM generate_series(100001, 150000) g;
	UPDATE cur SET c = eventstream._pull('http://c1', c, 10000)->>'cursor';
});
for (1 .. 7)
{
	$node->safe_psql('site1', q{UPDATE cur SET c = eventstream._pull('http://c1', c, 10000)->>'cursor'});
}
ok($node->poll_query_until('site1', 'SELECT count(*) = 0 FROM eventstream.update_log'),
	'the worker pruned a backlog of 50,000 acknowledged logs, in steps');

# Ticks come a second after the first commit since the last one, or at once
# when about 4000 logs were committed: two transactions of 5000 logs, the
# second right after the tick the first brought, get ticks well under a
# second apart.
$node->safe_psql('site1', q{
	CREATE TABLE tick_gap (gap interval);
	DO $$
	DECLARE
		n bigint := (SELECT coalesce(max(k.tick_id), 0) FROM eventstream.tick k);
		first timestamptz;
		deadline timestamptz;
	BEGIN
		FOR i IN 1 .. 2 LOOP
			INSERT INTO t SELECT g, 'z' FROM generate_series(195001 + i * 5000, 200000 + i * 5000) g;
			COMMIT;
			deadline := clock_timestamp() + interval '60 s';
			WHILE NOT EXISTS (SELECT 1 FROM eventstream.tick k WHERE k.tick_id > n) AND clock_timestamp() < deadline LOOP
				PERFORM pg_sleep(0.01);
			END LOOP;
			IF i = 1 THEN
				SELECT k.tick_id, k.created_at INTO n, first FROM eventstream.tick k ORDER BY k.tick_id DESC LIMIT 1;
			ELSE
				INSERT INTO tick_gap SELECT min(k.created_at) - first FROM eventstream.tick k WHERE k.tick_id > n;
			END IF;
		END LOOP;
	END $$;
});
is($node->safe_psql('site1', "SELECT gap < interval '0.8 s' FROM tick_gap"), 't',
	'a tick follows a commit of more than 4000 logs at once ('
	  . $node->safe_psql('site1', 'SELECT gap FROM tick_gap') . ' after the previous one)');
for (1 .. 3)
{
	$node->safe_psql('site1', q{UPDATE cur SET c = eventstream._pull('http://c1', c, 10000)->>'cursor'});
}

# An error in a duty is logged; the worker backs off and carries on.
my $pid = $node->safe_psql('site1',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'site1'");
my $offset = -s $node->logfile;
$node->safe_psql('site1', 'ALTER FUNCTION eventstream.prune(bigint) RENAME TO prune_away');
ok($node->wait_for_log(qr/function eventstream\.prune\(integer\) does not exist/, $offset),
	'a failing duty is logged');
$node->safe_psql('site1', 'ALTER FUNCTION eventstream.prune_away(bigint) RENAME TO prune');
is($node->safe_psql('site1',
	"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'site1'"),
	$pid, 'the worker survived the error');
$node->safe_psql('site1', q{
	INSERT INTO t VALUES (11, 'y');
	UPDATE cur SET c = eventstream._pull('http://c1', c, 100)->>'cursor';
	UPDATE cur SET c = eventstream._pull('http://c1', c, 100)->>'cursor';
});
ok($node->poll_query_until('site1', 'SELECT count(*) = 0 FROM eventstream.update_log'),
	'and goes on pruning once the cause is gone');

# SIGHUP: settings are reloaded, the worker stays.
$node->safe_psql('postgres', 'ALTER SYSTEM SET eventstream.prune_interval = 2');
$node->reload;
ok($node->poll_query_until('site1', $workers_in->('site1') . ' = 1'), 'the worker survives a reload');

# After a server restart the launcher brings the worker back.
$node->restart;
ok($node->poll_query_until('site1', $workers_in->('site1') . ' = 1'), 'the worker is back after a restart');

# DROP EXTENSION stops it promptly; CREATE EXTENSION brings it back.
$offset = -s $node->logfile;
$node->safe_psql('site1', 'DROP EXTENSION eventstream CASCADE');
ok($node->poll_query_until('site1', $workers_in->('site1') . ' = 0'), 'DROP EXTENSION stops the worker');
ok($node->wait_for_log(qr/eventstream worker for database "site1" exiting/, $offset),
	'and it says why');
$node->safe_psql('site1', 'CREATE EXTENSION eventstream');
ok($node->poll_query_until('site1', $workers_in->('site1') . ' = 1'), 'CREATE EXTENSION starts it again');

# DROP DATABASE does not wait for the worker.
$t0 = time;
$node->safe_psql('postgres', 'DROP DATABASE site1');
my $dropped = time - $t0;
cmp_ok($dropped, '<', 5, "DROP DATABASE with a running worker took ${dropped}s");
is($node->safe_psql('postgres', $workers_in->('site1')), '0', 'no worker is left for the dropped database');

# Nor does ALTER DATABASE ... RENAME.
$node->safe_psql('postgres', 'CREATE DATABASE site2');
$node->safe_psql('site2', 'CREATE EXTENSION eventstream');
ok($node->poll_query_until('site2', $workers_in->('site2') . ' = 1'), 'worker in site2');
$node->safe_psql('postgres', 'ALTER DATABASE site2 RENAME TO site3');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_database WHERE datname = 'site3'"), '1',
	'a database with a worker can be renamed');

# Nor does CREATE DATABASE ... TEMPLATE of a database with a worker.
$node->safe_psql('postgres', 'CREATE DATABASE site5');
$node->safe_psql('site5', 'CREATE EXTENSION eventstream');
ok($node->poll_query_until('site5', $workers_in->('site5') . ' = 1'), 'worker in site5');
$t0 = time;
$node->safe_psql('postgres', 'CREATE DATABASE site6 TEMPLATE site5');
my $copied = time - $t0;
cmp_ok($copied, '<', 10, "CREATE DATABASE ... TEMPLATE of a database with a worker took ${copied}s");
is($node->safe_psql('site6', "SELECT extname FROM pg_extension WHERE extname = 'eventstream'"),
	'eventstream', 'the copy has the extension');

# An HTTP port taken by another process when the worker starts: no
# endpoint (a WARNING), and the worker takes the port once it is free.
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $squatter = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Proto => 'tcp', Listen => 1)
  or die "cannot bind port $port: $!";
$node->safe_psql('postgres', 'CREATE DATABASE site7');
$node->safe_psql('postgres', "ALTER DATABASE site7 SET eventstream.http_port = $port");
my $log_offset = -s $node->logfile;
$node->safe_psql('site7', 'CREATE EXTENSION eventstream');
ok($node->poll_query_until('site7', $workers_in->('site7') . ' = 1'), 'worker in site7');
ok(wait_for_log(qr/could not start the eventstream HTTP server on 127\.0\.0\.1:$port/, $log_offset),
	'a taken port: the worker says it could not start the HTTP server');
$squatter->close;
$t0 = time;
my $up = 0;
while (time - $t0 < 30)
{
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '--max-time', '2', "http://127.0.0.1:$port/api/eventstream/v1/health" ],
		'>', \$out, '2>', \$err);
	if ($out =~ /"site_id"/) { $up = 1; last; }
	Time::HiRes::sleep(0.1);
}
ok($up, sprintf('once the port is free the site answers health (after %.1f s)', time - $t0));

# Poll the server log from offset for a line matching re, up to 30 s.
sub wait_for_log
{
	my ($re, $offset) = @_;
	my $deadline = time + 30;
	while (time < $deadline)
	{
		return 1 if slurp_file($node->logfile, $offset) =~ $re;
		Time::HiRes::sleep(0.1);
	}
	return 0;
}

done_testing();
