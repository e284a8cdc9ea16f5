# The site's HTTP endpoint at its edges, with real curl as the client:
# injection attempts in conditions registered over HTTP, clients that hang
# up in the middle of a long-poll, a server restart while long-polls are
# parked, privileges revoked under an approved subscription, other keys
# reaching for a consumer's stream, and request bodies at and over the size
# limit or malformed.  003_http.pl covers the plain paths; nothing here
# repeats it.
#
# Nothing sleeps a fixed time: every wait polls for its condition with a
# deadline.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time);
use FindBin;
use lib $FindBin::RealBin;
use EsSites qw(wait_until new_node);

my $json = JSON::PP->new->utf8->canonical;

my $node = new_node('http_edge');

my $port = PostgreSQL::Test::Cluster::get_free_port();
# UTF8 whatever the environment's locale: the encoding checks below need it.
$node->safe_psql('postgres', q{CREATE DATABASE site TEMPLATE template0 ENCODING 'UTF8' LOCALE 'C'});
$node->safe_psql('postgres', "ALTER DATABASE site SET eventstream.http_port = $port");
$node->safe_psql('site', 'CREATE EXTENSION eventstream');
my $base = "http://127.0.0.1:$port/api/eventstream/v1";
my $tmp = PostgreSQL::Test::Utils::tempdir();

######################################################################
# Helpers
######################################################################

sub uri_escape
{
	my ($v) = @_;
	$v =~ s/([^A-Za-z0-9_.~-])/sprintf('%%%02X', ord($1))/ge;
	return $v;
}

# Start curl in the background.  Options: method, path (under $base) or
# url, key ("key:secret", sent as a token), data (a body; "@file" reads a
# file), max_time, extra (more curl arguments).
sub curl_start
{
	my (%o) = @_;
	my $max = $o{max_time} // 20;
	my @cmd = ('curl', '-s', '-X', $o{method} // 'GET', '--max-time', $max,
		'-w', "\n%{http_code} %{content_type}");
	push @cmd, ('-H', "Authorization: token $o{key}") if defined $o{key};
	push @cmd, ('-H', 'Content-Type: application/json', '--data-binary', $o{data})
	  if defined $o{data};
	push @cmd, @{ $o{extra} } if $o{extra};
	push @cmd, $o{url} // "$base/$o{path}";
	my $r = { out => '', err => '', t0 => time };
	$r->{h} = IPC::Run::start(\@cmd, '>', \$r->{out}, '2>', \$r->{err},
		IPC::Run::timeout($max + 30));
	return $r;
}

# Wait for a curl started by curl_start; returns a hash: status (HTTP
# status, "000" without a reply), ctype, body, json (the body decoded, if
# it is JSON), exit (curl's exit code), secs (since the start), ended (time
# it ended).
sub curl_finish
{
	my ($r) = @_;
	eval { $r->{h}->finish; };
	if ($@)
	{
		$r->{h}->kill_kill;
		return { status => 'hung', exit => -1, secs => time - $r->{t0}, ended => time, body => '' };
	}
	my $exit = $r->{h}->result(0);
	my $out = $r->{out};
	my ($body, $tail) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	my ($status, $ctype) = split / /, $tail, 2;
	my $decoded = eval { $json->decode($body) };
	return {
		status => $status // '',
		ctype  => $ctype // '',
		body   => $body,
		json   => $decoded,
		exit   => $exit,
		secs   => time - $r->{t0},
		ended  => time
	};
}

sub http { return curl_finish(curl_start(@_)); }

# Register (or update) a consumer over HTTP.
sub register
{
	my ($key, $url, $tables) = @_;
	return http(method => 'POST', path => 'consumers', key => $key,
		data => $json->encode({ consumer_url => $url,
				site_id => '00000000-0000-0000-0000-0000000000e4', tables => $tables }));
}

# The next-page request of a consumer with a cursor.
sub updates_path
{
	my ($url, $cursor, $wait) = @_;
	return 'updates?consumer=' . uri_escape($url) . '&cursor=' . uri_escape($cursor)
	  . '&limit=100' . (defined $wait ? "&wait=$wait" : '');
}

# The docnames of the updates of a pull reply, as "table:docname" joined by
# commas.
sub served
{
	my ($reply) = @_;
	return join(',', map { "$_->{ref_table}:$_->{docname}" } @{ $reply->{json}{updates} // [] });
}

sub new_key
{
	my ($role) = @_;
	my $pair = $node->safe_psql('site',
		"SELECT api_key || ':' || api_secret FROM eventstream.create_api_key('$role')");
	return $pair;
}

sub worker_pid
{
	return $node->safe_psql('site',
		"SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = 'site'");
}

sub last_pull_at
{
	my ($url) = @_;
	return $node->safe_psql('site',
		"SELECT last_pull_at FROM eventstream.consumer WHERE consumer_url = '$url'");
}

# Wait until a consumer's last_pull_at moved past $before: a long-poll
# started after $before has pulled, found nothing, committed and is parked.
sub wait_parked
{
	my ($url, $before) = @_;
	return $node->poll_query_until('site',
		"SELECT last_pull_at IS DISTINCT FROM "
		  . ($before eq '' ? 'NULL' : "'$before'")
		  . " FROM eventstream.consumer WHERE consumer_url = '$url'");
}

sub health_ok
{
	return wait_until(60, sub { http(path => 'health', max_time => 5)->{status} eq '200' });
}

# Messages a crash or an abort leaves in the server log.
my $crash_re = qr/terminated by signal|was terminated by exception|PANIC|TRAP:|Fatal error in GNU libmicrohttpd|terminating any other active server processes|all server processes terminated/i;

ok(health_ok(), 'the endpoint is up');

######################################################################
# 1. Injection attempts in conditions registered over HTTP
######################################################################

$node->safe_psql('site', q{
	CREATE ROLE branch;
	CREATE TABLE s1 (id int PRIMARY KEY, v text);
	GRANT SELECT ON s1 TO branch;
	INSERT INTO s1 VALUES (1, 'before');
	CREATE TABLE secret (id int PRIMARY KEY);
	INSERT INTO secret VALUES (14);
	CREATE TABLE allowed (id int PRIMARY KEY);
	GRANT SELECT ON allowed TO branch;
	INSERT INTO allowed VALUES (12);
	-- The role may even INSERT here: only the read-only evaluation can stop it.
	CREATE TABLE audit (n int);
	GRANT INSERT ON audit TO branch;
	CREATE FUNCTION public.write_audit() RETURNS boolean LANGUAGE plpgsql VOLATILE
		AS $$ BEGIN INSERT INTO public.audit VALUES (1); RETURN true; END $$;
});
my $kc = new_key('branch');
my $c_url = 'http://branch-c:8000';
my $r = register($kc, $c_url, [ 'public.s1' ]);
is($r->{status}, '200', 'consumer C registers public.s1 without a condition');
my %cursor;
$cursor{$c_url} = $r->{json}{cursor};
$node->safe_psql('site', "SELECT eventstream.approve('$c_url', 'public.s1')");

sub pull
{
	my ($key, $url, %o) = @_;
	my $p = http(path => updates_path($url, $cursor{$url}, $o{wait}), key => $key,
		max_time => $o{max_time} // 20);
	$cursor{$url} = $p->{json}{cursor} if $p->{status} eq '200' && !$o{keep};
	return $p;
}

my $state_sql = q{SELECT (SELECT count(*) FROM s1) || '/' || (SELECT count(*) FROM secret) || '/'
	|| (SELECT count(*) FROM audit) || '/' || (SELECT count(*) FROM allowed)};
my $state0 = $node->safe_psql('site', $state_sql);

# Each of these must be refused as a whole registration: 400, a JSON error,
# and the stored subscription unchanged.
foreach my $cond (
	'true); DROP TABLE s1; --',
	'1=1; DELETE FROM s1',
	'doc.id = 1) OR (true',
	"true\n) OR (true",
	'true /* hidden */ ; DROP TABLE s1',
	'(SELECT true); DROP TABLE secret',
	'true) UNION SELECT true FROM pg_authid --',
	'cmd: public.write_audit; DROP TABLE s1')
{
	(my $shown = $cond) =~ s/\n/\\n/g;
	$r = register($kc, $c_url, [ { ref_table => 'public.s1', condition => $cond } ]);
	is($r->{status}, '400', "condition '$shown' is refused with 400");
	like($r->{json}{error}{code} // '', qr/^42/, "  with a JSON error (SQLSTATE class 42: $r->{json}{error}{code})");
}
is($node->safe_psql('site', "SELECT coalesce(condition, 'none') || ' ' || status FROM eventstream.consumer_table WHERE consumer_url = '$c_url'"),
	'none Approved', 'the refused registrations left the subscription as it was');
is($node->safe_psql('site', "SELECT to_regclass('public.s1') IS NOT NULL AND to_regclass('public.secret') IS NOT NULL"),
	't', 'the tables are still there');
is($node->safe_psql('site', $state_sql), $state0, 'and no row was added or deleted');

# A condition that is a valid expression but tries to do something: it is
# stored, then evaluated as the consumer's role, read-only, in a rolled-back
# subtransaction.  $id is the docname of a new row of s1; returns the pull.
sub try_condition
{
	my ($cond, $id) = @_;
	my $reg = register($kc, $c_url, [ { ref_table => 'public.s1', condition => $cond } ]);
	is($reg->{status}, '200', "condition '$cond' is accepted as an expression");
	is($reg->{json}{tables}[0]{status}, 'Approved', '  and the subscription stays Approved');
	$node->safe_psql('site', "UPDATE eventstream.consumer_table SET condition_error = NULL WHERE consumer_url = '$c_url'");
	$node->safe_psql('site', "INSERT INTO s1 VALUES ($id, 'x')");
	my $p = pull($kc, $c_url);
	is($p->{status}, '200', '  the pull answers 200');
	return $p;
}

# Writing from a condition: denied, and nothing written.
$r = try_condition('public.write_audit()', 11);
is(served($r), '', 'a condition that writes denies the document');
like($node->safe_psql('site', "SELECT condition_error FROM eventstream.consumer_table WHERE consumer_url = '$c_url'"),
	qr/read-only transaction/, 'the error says the evaluation was read-only');
is($node->safe_psql('site', 'SELECT count(*) FROM audit'), '0', 'and nothing was written');

# Reading through a subquery: what the role may read works (the control),
# what it may not read denies the document.
$node->safe_psql('site', "INSERT INTO s1 VALUES (13, 'not in allowed')");
$r = try_condition('doc.id IN (SELECT a.id FROM public.allowed a)', 12);
is(served($r), 'public.s1:12', 'a subquery over a readable table selects the document');
$r = try_condition('doc.id IN (SELECT s.id FROM public.secret s)', 14);
is(served($r), '', 'a subquery over a table the role cannot read denies the document (14 is in secret)');
like($node->safe_psql('site', "SELECT condition_error FROM eventstream.consumer_table WHERE consumer_url = '$c_url'"),
	qr/permission denied for table secret/, 'with "permission denied" recorded');
$r = try_condition(q{pg_catalog.pg_read_file('/etc/hostname') IS NOT NULL}, 15);
is(served($r), '', 'a function the role may not execute denies the document');
$r = try_condition(q{pg_catalog.set_config('transaction_read_only', 'off', true) IS NOT NULL AND public.write_audit()}, 16);
is(served($r), '', 'turning read-only off from inside the condition fails and denies');
is($node->safe_psql('site', 'SELECT count(*) FROM audit'), '0', 'still nothing written');
is($node->safe_psql('site', 'SELECT count(*) FROM secret'), '1', 'secret untouched');

# Back to no condition: everything flows again.
$r = register($kc, $c_url, [ { ref_table => 'public.s1', condition => '  ' } ]);
is($r->{status}, '200', 'a blank condition removes it');
$node->safe_psql('site', "INSERT INTO s1 VALUES (17, 'x')");
is(served(pull($kc, $c_url)), 'public.s1:17', 'without a condition the next row is served');

######################################################################
# 2. A client that hangs up in the middle of a long-poll
######################################################################

$node->safe_psql('site', q{
	CREATE ROLE dropper;
	CREATE TABLE s2 (id int PRIMARY KEY, v text);
	GRANT SELECT ON s2 TO dropper;
});
my $kd = new_key('dropper');
my $d_url = 'http://branch-d:8000';
$r = register($kd, $d_url, [ 'public.s2' ]);
$cursor{$d_url} = $r->{json}{cursor};
$node->safe_psql('site', "SELECT eventstream.approve('$d_url', 'public.s2')");
is(pull($kd, $d_url)->{status}, '200', 'consumer D pulled once');
my $d_cursor = $cursor{$d_url};

my $pid = worker_pid();
my $offset = -s $node->logfile;

# curl gives up after 1 s on a 30 s long-poll; a second one is killed.
my $before = last_pull_at($d_url);
my $quitter = curl_start(path => updates_path($d_url, $d_cursor, 30), key => $kd, max_time => 1);
ok(wait_parked($d_url, $before), 'a long-poll with wait=30 is parked');
$r = curl_finish($quitter);
is($r->{exit}, 28, "curl gave up (--max-time 1, exit $r->{exit}) without a reply");
cmp_ok($r->{secs}, '<', 10, "  after $r->{secs}s");
$before = last_pull_at($d_url);
my $killed = curl_start(path => updates_path($d_url, $d_cursor, 30), key => $kd, max_time => 60);
ok(wait_parked($d_url, $before), 'another long-poll is parked');
$killed->{h}->kill_kill;
ok(!$killed->{h}->pumpable, 'and its client is killed');

$r = http(path => 'health', max_time => 5);
is($r->{status}, '200', 'health answers right after the clients hung up');
cmp_ok($r->{secs}, '<', 2, "  in $r->{secs}s");
is(worker_pid(), $pid, 'the same worker serves');

# A later long-poll on the same consumer and cursor is woken by a commit.
$before = last_pull_at($d_url);
my $poll = curl_start(path => updates_path($d_url, $d_cursor, 20), key => $kd, max_time => 30);
ok(wait_parked($d_url, $before), 'a new long-poll on the same cursor is parked');
my $t0 = time;
$node->safe_psql('site', "INSERT INTO s2 VALUES (21, 'wake')");
$r = curl_finish($poll);
my $woke = $r->{ended} - $t0;
is($r->{status}, '200', 'it is answered');
is(served($r), 'public.s2:21', 'with the committed row');
cmp_ok($woke, '<', 5, "within ${woke}s of the commit, not at its 20 s deadline");

# The abandoned requests were woken by the same commit and may have pulled
# the same cursor for nobody: the consumer's next pulls go on regardless.
$cursor{$d_url} = $r->{json}{cursor};
$node->safe_psql('site', "INSERT INTO s2 VALUES (22, 'next')");
$r = pull($kd, $d_url);
is($r->{status}, '200', 'the next pull with the returned cursor answers 200');
is(served($r), 'public.s2:22', 'with only the next row: nothing lost, nothing twice');
is(worker_pid(), $pid, 'still the same worker');
my $log = slurp_file($node->logfile, $offset);
unlike($log, $crash_re, 'no crash in the server log');

######################################################################
# 3. A restart while long-polls are parked
######################################################################

$node->safe_psql('site', q{
	CREATE ROLE restarter;
	CREATE TABLE s3a (id int PRIMARY KEY, v text);
	CREATE TABLE s3b (id int PRIMARY KEY, v text);
	GRANT SELECT ON s3a, s3b TO restarter;
});
my $kr = new_key('restarter');
my ($r1, $r2) = ('http://branch-r1:8000', 'http://branch-r2:8000');
$r = register($kr, $r1, [ 'public.s3a' ]);
$cursor{$r1} = $r->{json}{cursor};
$r = register($kr, $r2, [ 'public.s3b' ]);
$cursor{$r2} = $r->{json}{cursor};
$node->safe_psql('site', "SELECT eventstream.approve('$r1', 'public.s3a'), eventstream.approve('$r2', 'public.s3b')");
pull($kr, $r1);
pull($kr, $r2);
my ($c1, $c2) = ($cursor{$r1}, $cursor{$r2});

my ($b1, $b2) = (last_pull_at($r1), last_pull_at($r2));
my $p1 = curl_start(path => updates_path($r1, $c1, 25), key => $kr, max_time => 40);
my $p2 = curl_start(path => updates_path($r2, $c2, 25), key => $kr, max_time => 40);
ok(wait_parked($r1, $b1) && wait_parked($r2, $b2), 'two consumers are parked in long-polls');

# Rows for R1 committed just before the restart (R1's poll may or may not
# get its reply out before the worker stops).  R2 has nothing and stays
# parked: the commit wakes every parked poll, so R2 pulls again and parks
# again; wait (with a deadline) for that re-pull, so that the restart finds
# it parked.  Should a commit ever wake only the polls it concerns, R2 never
# left its park and the deadline merely passes.
$b2 = last_pull_at($r2);
$node->safe_psql('site', "INSERT INTO s3a VALUES (31, 'one'), (32, 'two')");
note('R2 re-parked after the commit: '
	  . (wait_until(5, sub { last_pull_at($r2) ne $b2 }) ? 'yes' : 'it was not woken'));
$offset = -s $node->logfile;
$t0 = time;
$node->restart;
my $restarted = time - $t0;
my $e1 = curl_finish($p1);
my $e2 = curl_finish($p2);
note("R1's poll ended: status $e1->{status}, curl exit $e1->{exit}; R2's: status $e2->{status}, curl exit $e2->{exit}");
cmp_ok($e2->{ended} - $t0, '<', $restarted + 5,
	sprintf('the parked long-poll ended with the restart (%.1fs after it began, the restart took %.1fs), not at its 25 s wait',
		$e2->{ended} - $t0, $restarted));
ok($e2->{status} ne '200' || served($e2) eq '',
	"R2's poll got no updates it could not have (status $e2->{status})");
is($e2->{status}, '503', 'a long-poll parked at shutdown is answered 503 (shutting down)');
cmp_ok($e1->{ended} - $t0, '<', $restarted + 5, "R1's poll ended too");
ok($e1->{status} ne '200' || served($e1) eq 'public.s3a:31,public.s3a:32',
	"R1's poll, if answered, got both rows in order (status $e1->{status}: " . served($e1) . ')');

ok(health_ok(), 'health answers again after the restart');
isnt(worker_pid(), '', 'a worker is back');
$log = slurp_file($node->logfile, $offset);
unlike($log, $crash_re, 'no crash in the server log across the restart');

# R1 pulls with the last cursor it had (its reply, if any, was not
# applied): both rows committed before the restart are there.
$cursor{$r1} = $c1;
$r = pull($kr, $r1);
is($r->{status}, '200', 'R1 pulls with its last cursor after the restart');
is(served($r), 'public.s3a:31,public.s3a:32', 'and gets the rows committed before the restart');
$r = pull($kr, $r2);
is($r->{status}, '200', 'R2 pulls with its last cursor after the restart');
is(served($r), '', 'with nothing for it');

# Long-polls are woken by commits after the restart too.
$b2 = last_pull_at($r2);
$poll = curl_start(path => updates_path($r2, $cursor{$r2}, 20), key => $kr, max_time => 30);
ok(wait_parked($r2, $b2), 'a long-poll parks after the restart');
$t0 = time;
$node->safe_psql('site', "INSERT INTO s3b VALUES (33, 'after')");
$r = curl_finish($poll);
is(served($r), 'public.s3b:33', 'and a commit wakes it');
cmp_ok($r->{ended} - $t0, '<', 5, sprintf('within %.1fs', $r->{ended} - $t0));

######################################################################
# 4. Privileges: registration without SELECT, SELECT revoked after
#    approval, and other keys reaching for a consumer
######################################################################

$node->safe_psql('site', q{
	CREATE TABLE s4a (id int PRIMARY KEY, v text);
	CREATE TABLE s4b (id int PRIMARY KEY, v text);
	CREATE ROLE nosel;
	GRANT SELECT ON s4b TO nosel;
	CREATE ROLE reader;
	GRANT SELECT ON s4a, s4b TO reader;
	CREATE ROLE intruder;
	GRANT SELECT ON s4a, s4b TO intruder;
});
my $kn = new_key('nosel');
$r = register($kn, 'http://branch-n:8000', [ 'public.s4b', 'public.s4a' ]);
is($r->{status}, '403', 'registering a table the key\'s role cannot SELECT is a 403');
is($r->{json}{error}{code}, '42501', '  insufficient_privilege');
like($r->{json}{error}{message}, qr/role "nosel" cannot read table "public\.s4a"/, '  naming the role and the table');
like($r->{json}{error}{hint} // '', qr/GRANT SELECT/, '  with a hint');
is($node->safe_psql('site', "SELECT count(*) FROM eventstream.consumer WHERE consumer_url = 'http://branch-n:8000'"),
	'0', 'nothing is left behind, not even for the readable table');

my $ke = new_key('reader');
my $e_url = 'http://branch-e:8000';
$r = register($ke, $e_url, [ 'public.s4a', 'public.s4b' ]);
$cursor{$e_url} = $r->{json}{cursor};
$node->safe_psql('site', "SELECT eventstream.approve('$e_url', 's4a'), eventstream.approve('$e_url', 's4b')");
$node->safe_psql('site', "INSERT INTO s4a VALUES (41, 'a'); INSERT INTO s4b VALUES (41, 'b')");
is(served(pull($ke, $e_url)), 'public.s4a:41,public.s4b:41', 'both tables are served while readable');

$node->safe_psql('site', 'REVOKE SELECT ON s4a FROM reader');
$node->safe_psql('site', "INSERT INTO s4a VALUES (42, 'a'); INSERT INTO s4b VALUES (42, 'b')");
$r = pull($ke, $e_url);
is($r->{status}, '200', 'after REVOKE the pull still answers 200');
is(served($r), 'public.s4b:42', 'with the readable table only: the revoked one is not served');
my ($s4a) = grep { $_->{ref_table} eq 'public.s4a' } @{ $r->{json}{tables} // [] };
# What the reply says about the table it no longer serves: its stored
# status, which stays "Approved", and why it is not served.
is($s4a->{status} // 'missing', 'Approved', 'the reply still lists public.s4a as "Approved"');
is($s4a->{error}{code} // 'missing', '42501', '  with an error saying it is not readable');
is(http(path => 'documents/public.s4a/41', key => $ke)->{status}, '403',
	'the document endpoint refuses the table to that key');

$node->safe_psql('site', 'GRANT SELECT ON s4a TO reader');
$node->safe_psql('site', "INSERT INTO s4a VALUES (43, 'a')");
$r = pull($ke, $e_url);
like(served($r), qr/public\.s4a:43$/, 'after GRANT again new changes are served');
note('changes made while SELECT was revoked, served after the GRANT: ' . (served($r) =~ /s4a:42/ ? 'yes' : 'no'));

# Another key, whose role can read both tables, and its own consumer.
my $ki = new_key('intruder');
$r = register($ki, 'http://branch-i:8000', [ 'public.s4a' ]);
is($r->{status}, '200', 'the other key registers its own consumer');
my $e_state = $node->safe_psql('site',
	"SELECT last_pull_at || ' ' || served_page FROM eventstream.consumer WHERE consumer_url = '$e_url'");
$r = http(path => updates_path($e_url, $cursor{$e_url}, 10), key => $ki, max_time => 20);
is($r->{status}, '403', "another key gets 403 on E's stream, even with wait=10");
cmp_ok($r->{secs}, '<', 3, "  at once ($r->{secs}s), not parked");
is($r->{json}{error}{code} // '', 'forbidden', '  with a JSON error');
is($node->safe_psql('site',
	"SELECT last_pull_at || ' ' || served_page FROM eventstream.consumer WHERE consumer_url = '$e_url'"),
	$e_state, "  and E's position is untouched");
# Taking E over by registering its URL (a trailing slash is the same URL).
foreach my $url ($e_url, "$e_url/", " $e_url ")
{
	$r = register($ki, $url, [ 'public.s4b' ]);
	is($r->{status}, '403', "another key cannot re-register '$url'");
	like($r->{json}{error}{message} // '', qr/registered with another API key/, '  and is told why');
}
is($node->safe_psql('site', "SELECT string_agg(ref_table || ' ' || status, ', ' ORDER BY ref_table)"
		. " FROM eventstream.consumer_table WHERE consumer_url = '$e_url'"),
	'public.s4a Approved, public.s4b Approved', "E's subscriptions are unchanged");
$node->safe_psql('site', "INSERT INTO s4b VALUES (44, 'b')");
is(served(pull($ke, $e_url)), 'public.s4b:44', 'and E goes on pulling with its own key');

######################################################################
# 5. Request bodies: the size limit, and malformed JSON
######################################################################

my $kb = new_key('reader');
my $pid5 = worker_pid();

# A valid registration padded with spaces to exactly $size bytes.
sub padded_body
{
	my ($url, $size) = @_;
	my $b = qq{{"consumer_url": "$url", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": []}};
	my $file = "$tmp/body-$size.json";
	open(my $fh, '>', $file) or die "$file: $!";
	binmode $fh;
	print $fh $b, ' ' x ($size - length($b));
	close $fh;
	return $file;
}

my $MB = 1024 * 1024;
$r = http(method => 'POST', path => 'consumers', key => $kb, data => '@' . padded_body('http://big-1:8000', $MB));
is($r->{status}, '200', 'a body of exactly 1 MB is accepted');
$r = http(method => 'POST', path => 'consumers', key => $kb, data => '@' . padded_body('http://big-2:8000', $MB + 1));
is($r->{status}, '413', 'one byte more is a 413');
like($r->{ctype}, qr{^application/json}, '  as JSON');
is($r->{json}{error}{code} // '', 'too_large', '  with a JSON error');
ok(defined $r->{json}{error}{message}, '  and a message');
$r = http(method => 'POST', path => 'consumers', key => $kb, data => '@' . padded_body('http://big-3:8000', 3 * $MB),
	extra => [ '-H', 'Transfer-Encoding: chunked' ]);
is($r->{status}, '413', 'a chunked body over 1 MB (no Content-Length) is a 413 too');
is($node->safe_psql('site', "SELECT string_agg(consumer_url, ',' ORDER BY consumer_url) FROM eventstream.consumer WHERE consumer_url LIKE 'http://big-%'"),
	'http://big-1:8000', 'only the 1 MB registration was made');

# Malformed bodies: 400 with a JSON error, nothing registered.  (A truncated
# object is in 003_http.pl.)
my @malformed = (
	[ 'an empty body', '', qr/^22P02$/ ],
	[ 'a JSON array', '[1, 2]', qr/^22/ ],
	[ 'a JSON string', '"http://bad-1:8000"', qr/^22/ ],
	[ 'tables not an array', '{"consumer_url": "http://bad-2:8000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": "public.s4b"}', qr/^22023$/ ],
	[ 'a table entry without ref_table', '{"consumer_url": "http://bad-3:8000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": [{"table": "public.s4b"}]}', qr/^22023$/ ],
	[ 'a site_id that is no uuid', '{"consumer_url": "http://bad-4:8000", "site_id": "site-4", "tables": []}', qr/^22P02$/ ],
	[ 'a \\u0000 escape', '{"consumer_url": "http://bad-5:8000\u0000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": []}', qr/^22P05$/ ],
	[ 'trailing garbage', '{"consumer_url": "http://bad-6:8000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": []} {', qr/^22P02$/ ],
);
foreach my $m (@malformed)
{
	my ($what, $body, $code) = @$m;
	$r = http(method => 'POST', path => 'consumers', key => $kb, data => $body);
	is($r->{status}, '400', "$what is a 400");
	like($r->{json}{error}{code} // '', $code, "  with a JSON error ($r->{json}{error}{code})");
}

# Regression: the body is handled as a C string.  Sent: a valid registration
# followed by a NUL byte and garbage ("{...}\0garbage").  Came back: 200,
# consumer http://bad-7:8000 registered (everything after the NUL was
# ignored).  Expected: 400, like any other body that is not one JSON value.
my $nul = "$tmp/nul.json";
PostgreSQL::Test::Utils::append_to_file($nul,
	qq{{"consumer_url": "http://bad-7:8000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": []}\0garbage});
$r = http(method => 'POST', path => 'consumers', key => $kb, data => "\@$nul");
is($r->{status}, '400', 'a body with a NUL byte and garbage after the JSON is a 400');

# Regression: request bytes reach the database without an encoding check.  Sent:
# a registration whose consumer_url holds the bytes 0xFF 0xFE (not UTF-8).
# Came back: 200, and the consumer is stored with that invalid byte
# sequence in a UTF8 database (convert_from() on it, pg_dump | psql, and
# every client that checks encodings then fail).  Expected: 400 (SQLSTATE
# 22021), nothing stored.
my $bad = "$tmp/bad-utf8.json";
PostgreSQL::Test::Utils::append_to_file($bad,
	qq{{"consumer_url": "http://bad-8\xff\xfe:8000", "site_id": "00000000-0000-0000-0000-0000000000b5", "tables": []}});
$r = http(method => 'POST', path => 'consumers', key => $kb, data => "\@$bad");
is($r->{status}, '400', 'a body that is not valid UTF-8 is a 400');
is($node->safe_psql('site', "SELECT count(*) FROM eventstream.consumer WHERE consumer_url LIKE 'http://bad-8%'"),
	'0', 'and no text with an invalid byte sequence is stored');

# Regression: sent: 100,000 nested arrays (200 kB, valid JSON).  Came back: 500,
# SQLSTATE 54001 "stack depth limit exceeded" with a hint about the
# server's max_stack_depth.  Expected: a 4xx (it is the client's input
# that is unacceptable; DESIGN.md §3: 400 bad input).
my $deep = "$tmp/deep.json";
PostgreSQL::Test::Utils::append_to_file($deep, ('[' x 100000) . (']' x 100000));
$r = http(method => 'POST', path => 'consumers', key => $kb, data => "\@$deep");
like($r->{status}, qr/^4\d\d$/, "deeply nested JSON is a client error, not a server error (got $r->{status})");

is($node->safe_psql('site', "SELECT count(*) FROM eventstream.consumer WHERE consumer_url LIKE 'http://bad-%' AND consumer_url <> 'http://bad-7:8000' AND consumer_url NOT LIKE 'http://bad-8%'"),
	'0', 'none of the malformed bodies registered anything');
is(http(path => 'health')->{status}, '200', 'the endpoint still answers');
is(worker_pid(), $pid5, 'with the same worker');

######################################################################
# 1 (continued). Conditions that escape their sandbox.  Last, because
# with the bugs present they leave the worker holding a lock or busy.
######################################################################

# Regression: a condition can change the worker's session state: a session-level
# advisory lock taken by a condition survives the rolled-back
# subtransaction (and the request) in the site worker.  Sent: consumer C's
# condition "pg_advisory_lock(hashtext('eventstream._sync_capture')) IS NOT
# NULL", then a row and a pull.  Came back: the worker holds that advisory
# lock for good, so every approve()/reject() (they take the same lock in
# _sync_capture) blocks forever in other sessions.  Expected: whatever the
# condition did is undone (README: it cannot change session state).
my $wpid = worker_pid();
$r = try_condition(q{pg_advisory_lock(hashtext('eventstream._sync_capture')) IS NOT NULL}, 18);
is($node->safe_psql('site', "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $wpid"),
	'0', 'a condition leaves no advisory lock held by the worker');
my ($ret, $stdout, $stderr) = $node->psql('site',
	"SET lock_timeout = '3s'; SELECT eventstream.reject('$e_url', 'public.s4b')");
is($ret, 0, 'and the producer admin can still reject/approve (no lock timeout)');
note("reject: $stderr") if $ret;

# Regression: a condition's evaluation is not bounded in time, and it runs in the
# site worker, which serves every HTTP request.  Sent: consumer C's
# condition "pg_sleep(6) IS NULL", a row, a pull.  Came back: the pull
# takes 6 s per document, and meanwhile health (and every other consumer's
# request, long-poll wake-ups, pruning) waits for it.  Expected: the
# endpoint keeps answering; a condition that runs too long is cut off and
# denies the document.
$r = register($kc, $c_url, [ { ref_table => 'public.s1', condition => 'pg_sleep(6) IS NULL' } ]);
is($r->{status}, '200', 'a slow condition is accepted as an expression');
$node->safe_psql('site', "INSERT INTO s1 VALUES (19, 'slow')");
my $slow = curl_start(path => updates_path($c_url, $cursor{$c_url}), key => $kc, max_time => 30);
my $in_sleep = wait_until(10, sub {
	$slow->{h}->pump_nb if $slow->{h}->pumpable;
	!$slow->{h}->pumpable
	  || $node->safe_psql('site', "SELECT wait_event FROM pg_stat_activity WHERE pid = $wpid") eq 'PgSleep';
});
my $h = http(path => 'health', max_time => 20);
my $sr = curl_finish($slow);
note(sprintf('worker seen in pg_sleep: %s; health took %.1fs; the pull took %.1fs, status %s, served "%s"',
	$in_sleep ? 'yes' : 'no', $h->{secs}, $sr->{secs}, $sr->{status}, served($sr)));
cmp_ok($h->{secs}, '<', 2, sprintf('health answers while a condition runs (took %.1fs)', $h->{secs}));
cmp_ok($sr->{secs}, '<', 4, sprintf('a pull is not held up by a slow condition (took %.1fs)', $sr->{secs}));
ok($sr->{status} ne '200' || served($sr) !~ /s1:19/, 'a condition that is false (or cut off) does not serve the document');

$node->stop;
done_testing();
