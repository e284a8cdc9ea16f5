# Conditions and eval: filters run in a sandbox that holds, between two
# real sites talking HTTP on loopback.  A hostile consumer registers, over
# the producer's HTTP endpoint, conditions that try every escape: a cmd:
# naming a superuser-owned SECURITY DEFINER function that runs a program,
# writes a file, reads a file or changes role; expressions calling such
# functions directly, nested in a SQL or PL/pgSQL function, through a
# view, an operator or a cast; a utility statement from inside a
# function; injection attempts (an early ")", ";", comments, dollar
# quotes, a data-modifying WITH in a subquery); a role that may read
# server files.  Each is refused with 400 when registered, or denies the
# document with the error recorded when served, and its side effect does
# not happen.  A normal condition still filters documents.  On the
# consumer, an eval: filter calling such a function is refused when
# written, and one reaching it later fails its update with the reason.
#
# Nothing sleeps a fixed time: waits poll with a deadline.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP ();
use EsSites;

my $json = JSON::PP->new->utf8->canonical;
my $tmp = PostgreSQL::Test::Utils::tempdir();

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');
my $base = "$P->{url}/api/eventstream/v1";

# A file a superuser-owned function would make: "$tmp/<name>".
sub made { return -e "$tmp/$_[0]" ? 'made' : 'absent'; }

# The producer: a table the consumer subscribes to, a table it may not
# touch, a file only superusers may read, and superuser-owned functions
# that do what the role may not, each leaving a trace if it ran.
PostgreSQL::Test::Utils::append_to_file("$tmp/secret.txt", "Secret\n");
sq($P, qq{
	CREATE ROLE branch;
	CREATE TABLE s1 (id int PRIMARY KEY, v text);
	GRANT SELECT ON s1 TO branch;
	CREATE TABLE victim (n int);
	INSERT INTO victim VALUES (0);

	CREATE FUNCTION public.sd_touch(what text) RETURNS boolean LANGUAGE plpgsql AS \$\$
	BEGIN
		EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch $tmp/' || what);
		RETURN true;
	END \$\$;
	REVOKE EXECUTE ON FUNCTION public.sd_touch(text) FROM PUBLIC;

	-- cmd: functions (consumer, doc, update_log), SECURITY DEFINER
	CREATE FUNCTION public.sd_program(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN RETURN public.sd_touch('cmd_program'); END \$\$;
	CREATE FUNCTION public.sd_file(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$
	BEGIN
		COPY (SELECT 1) TO '$tmp/cmd_file';
		RETURN true;
	END \$\$;
	CREATE FUNCTION public.sd_read(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE sql SECURITY DEFINER AS \$\$ SELECT pg_read_file('$tmp/secret.txt') LIKE 'S%' \$\$;
	CREATE FUNCTION public.sd_role(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$
	BEGIN
		PERFORM set_config('role', 'postgres', true);
		RETURN true;
	END \$\$;
	CREATE FUNCTION public.sd_setrole(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN SET ROLE postgres; RETURN true; END \$\$;
	CREATE FUNCTION public.sd_write(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN UPDATE public.victim SET n = n + 1; RETURN true; END \$\$;

	-- for expressions: the same, scalar, and ways to reach them
	CREATE FUNCTION public.sd_run() RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN RETURN public.sd_touch('expr_direct'); END \$\$;
	CREATE FUNCTION public.sd_run_nested() RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN RETURN public.sd_touch('expr_nested'); END \$\$;
	CREATE FUNCTION public.wrap_sql() RETURNS boolean LANGUAGE sql AS \$\$ SELECT public.sd_run_nested() \$\$;
	CREATE FUNCTION public.wrap_plpgsql() RETURNS boolean
		LANGUAGE plpgsql AS \$\$ BEGIN RETURN public.sd_run_nested(); END \$\$;
	CREATE FUNCTION public.sd_run_view() RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN RETURN public.sd_touch('expr_view'); END \$\$;
	CREATE VIEW public.sd_view AS SELECT public.sd_run_view() AS ok;
	GRANT SELECT ON public.sd_view TO branch;
	CREATE FUNCTION public.sd_op(a int, b int) RETURNS boolean
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN RETURN public.sd_touch('expr_operator'); END \$\$;
	CREATE OPERATOR public.### (LEFTARG = int, RIGHTARG = int, FUNCTION = public.sd_op);
	CREATE TYPE public.sd_t AS (a int);
	CREATE FUNCTION public.sd_cast(a int) RETURNS public.sd_t
		LANGUAGE plpgsql SECURITY DEFINER AS \$\$ BEGIN PERFORM public.sd_touch('expr_cast'); RETURN ROW(a); END \$\$;
	CREATE CAST (int AS public.sd_t) WITH FUNCTION public.sd_cast(int);

	-- plain functions: one made SECURITY DEFINER after it is accepted,
	-- one that runs a utility statement as the role itself
	CREATE FUNCTION public.later_sd(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql AS \$\$ BEGIN RETURN public.sd_touch('cmd_later'); END \$\$;
	CREATE FUNCTION public.with_set(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE sql SET max_parallel_workers_per_gather = 4 AS \$\$ SELECT true \$\$;
	-- a parallel worker would run a PARALLEL SAFE function out of the
	-- hooks' sight: here one that reads a file only superusers may read
	CREATE FUNCTION public.sd_parsafe() RETURNS boolean LANGUAGE sql SECURITY DEFINER PARALLEL SAFE
		AS \$\$ SELECT pg_read_file('$tmp/secret.txt') LIKE 'S%' \$\$;
	CREATE FUNCTION public.in_parallel(c text, d jsonb, l jsonb) RETURNS boolean LANGUAGE plpgsql AS \$\$
	BEGIN
		PERFORM set_config('force_parallel_mode', 'on', true);
		PERFORM set_config('parallel_setup_cost', '0', true);
		PERFORM set_config('parallel_tuple_cost', '0', true);
		PERFORM 1 FROM public.s1 WHERE public.sd_parsafe();
		RETURN FOUND;
	END \$\$;
	CREATE FUNCTION public.runs_do(c text, d jsonb, l jsonb) RETURNS boolean
		LANGUAGE plpgsql AS \$\$ BEGIN EXECUTE 'DO \$d\$ BEGIN NULL; END \$d\$'; RETURN true; END \$\$;
});

sub new_key
{
	my ($s, $role) = @_;
	my ($k, $sec) = key_pair($s, $role);
	return "$k:$sec";
}

# POST consumers with a key: { status, json }.
sub register
{
	my ($key, $url, $tables) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '-X', 'POST', '--max-time', '20', '-w', "\n%{http_code}",
			'-H', "Authorization: token $key", '-H', 'Content-Type: application/json',
			'--data-binary', $json->encode({ consumer_url => $url,
					site_id => '00000000-0000-0000-0000-0000000000e5', tables => $tables }),
			"$base/consumers" ], '>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	my $j = eval { $json->decode($body) };
	return { status => $status, json => $j // {}, body => $body };
}

my %cursor;

# GET updates for a consumer from its cursor: { status, json }.
sub pull
{
	my ($key, $url) = @_;
	my $q = "consumer=$url&cursor=$cursor{$url}&limit=100";
	$q =~ s/([^A-Za-z0-9_.~=&-])/sprintf('%%%02X', ord($1))/ge;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '--max-time', '20', '-w', "\n%{http_code}",
			'-H', "Authorization: token $key", "$base/updates?$q" ], '>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	my $j = eval { $json->decode($body) } // {};
	$cursor{$url} = $j->{cursor} if $status eq '200';
	return { status => $status, json => $j };
}

sub served
{
	my ($p) = @_;
	return join(',', map { $_->{docname} } @{ $p->{json}{updates} // [] });
}

my $kb = new_key($P, 'branch');
my $h_url = 'http://hostile:8000';
my $r = register($kb, $h_url, [ 'public.s1' ]);
is($r->{status}, '200', 'the hostile consumer registers public.s1 without a condition');
$cursor{$h_url} = $r->{json}{cursor};
sq($P, "SELECT eventstream.approve('$h_url', 'public.s1')");

my $state_sql = q{SELECT (SELECT string_agg(n::text, ',') FROM victim) || '/' || (SELECT count(*) FROM s1)};
my $state0 = sq($P, $state_sql);

######################################################################
# 1. Refused when registered: 400, a JSON error saying why, nothing kept
######################################################################

my @refused = (
	[ 'cmd: public.sd_program', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function running a program' ],
	[ 'cmd: public.sd_file', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function writing a file' ],
	[ 'cmd: public.sd_read', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function reading a file' ],
	[ 'cmd: public.sd_role', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function setting the role' ],
	[ 'cmd: public.sd_setrole', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function running SET ROLE' ],
	[ 'cmd: public.sd_write', qr/SECURITY DEFINER/, 'cmd: a SECURITY DEFINER function writing a table' ],
	[ 'cmd: public.with_set', qr/with_set\(text, jsonb, jsonb\): it has SET clauses/, 'cmd: a function with SET clauses' ],
	[ 'public.sd_run()', qr/SECURITY DEFINER/, 'an expression calling a SECURITY DEFINER function' ],
	[ 'doc.id > 0 AND public.sd_run() IS NOT NULL', qr/SECURITY DEFINER/, '  also inside a larger expression' ],
	[ '(SELECT v.ok FROM public.sd_view v)', qr/SECURITY DEFINER/, 'a view whose column calls one' ],
	[ 'doc.id OPERATOR(public.###) 1', qr/SECURITY DEFINER/, 'an operator whose function is one' ],
	[ '(doc.id::public.sd_t) IS NOT NULL', qr/SECURITY DEFINER/, 'a cast whose function is one' ],
	[ 'doc.id = 1) OR (true', qr/single boolean expression/, 'injection: an early ")"' ],
	[ 'true; UPDATE public.victim SET n = 9', qr/single boolean expression/, 'injection: ";"' ],
	[ 'true /* ) OR (true */ ) OR (true', qr/single boolean expression/, 'injection: a comment hiding a ")"' ],
	[ '$q$ ( $q$ = $q$ $q$) OR (true', qr/single boolean expression/, 'injection: dollar quotes around a "("' ],
	[ 'doc.id > 0 $$) OR (true', qr/single boolean expression|unterminated/, 'injection: an unterminated dollar quote' ],
	[ 'EXISTS (WITH d AS (UPDATE public.victim SET n = n + 1 RETURNING 1) SELECT 1 FROM d)',
		qr/data-modifying statement/, 'a subquery writing through WITH' ],
	[ '(WITH d AS (DELETE FROM public.victim RETURNING true) SELECT bool_and(d.bool) FROM d)',
		qr/data-modifying statement/, 'a subquery deleting through WITH' ],
);
foreach my $case (@refused)
{
	my ($cond, $re, $what) = @$case;
	$r = register($kb, $h_url, [ { ref_table => 'public.s1', condition => $cond } ]);
	is($r->{status}, '400', "$what: refused with 400") or diag($r->{body});
	like($r->{json}{error}{message} // '', $re, '  and the JSON error says why');
}
is(sq($P, "SELECT coalesce(condition, 'none') || ' ' || status FROM eventstream.consumer_table WHERE consumer_url = '$h_url'"),
	'none Approved', 'the refused registrations left the subscription as it was');
is(sq($P, $state_sql), $state0, 'no row was written or deleted');
is(join(' ', map { made($_) } qw(cmd_program cmd_file expr_direct expr_view expr_operator expr_cast)),
	'absent absent absent absent absent absent', 'no program ran, no file was written');

# Through the consumer's own subscribe(): the producer's message reaches it.
my $kc = new_key($P, 'branch');
sq($C, q{CREATE ROLE applier});
sq($C, q{
	CREATE TABLE s1 (id int PRIMARY KEY, v text);
	GRANT SELECT, INSERT, UPDATE, DELETE ON s1 TO applier;
});
my ($kck, $kcs) = split /:/, $kc;
sq($C, "SELECT eventstream.add_producer('$P->{url}', '$kck', '$kcs', 'applier', '{}')");
my ($ret, $out, $err) = q_try($C,
	"SELECT eventstream.subscribe('$P->{url}', 's1', condition => 'cmd: public.sd_program')");
isnt($ret, 0, 'subscribe() on the consumer with a SECURITY DEFINER cmd: fails');
like($err, qr/producer .*: a condition may not call function public\.sd_program\(text, jsonb, jsonb\): it is SECURITY DEFINER/,
	'  with the producer\'s reason');
is(made('cmd_program'), 'absent', '  and no program ran');

######################################################################
# 2. Accepted, refused when evaluated: the document is denied, the
#    error recorded, nothing happens
######################################################################

my $next_id = 10;

# Register $cond (must be accepted), add a row, pull: the pull's docnames.
sub evaluate
{
	my ($cond, $before) = @_;
	my $reg = register($kb, $h_url, [ { ref_table => 'public.s1', condition => $cond } ]);
	is($reg->{status}, '200', "condition '$cond' is accepted") or diag($reg->{body});
	sq($P, "UPDATE eventstream.consumer_table SET condition_error = NULL WHERE consumer_url = '$h_url'");
	$before->() if $before;
	my $id = $next_id++;
	sq($P, "INSERT INTO s1 VALUES ($id, 'x')");
	my $p = pull($kb, $h_url);
	is($p->{status}, '200', '  the pull answers 200');
	return served($p);
}

sub condition_error
{
	return sq($P, "SELECT coalesce(condition_error, 'none') FROM eventstream.consumer_table WHERE consumer_url = '$h_url'");
}

is(evaluate('public.wrap_sql()'), '', 'a SQL function calling a SECURITY DEFINER function: the document is denied');
like(condition_error(), qr/may not call function public\.sd_run_nested\(\): it is SECURITY DEFINER/,
	'  the error names the refused function');
is(evaluate('public.wrap_plpgsql()'), '', 'a PL/pgSQL function calling one: denied');
like(condition_error(), qr/SECURITY DEFINER/, '  with the reason recorded');
is(made('expr_nested'), 'absent', '  and no program ran');

is(evaluate('cmd: public.later_sd', sub { sq($P, 'ALTER FUNCTION public.later_sd(text, jsonb, jsonb) SECURITY DEFINER') }),
	'', 'a cmd: function made SECURITY DEFINER after it was accepted: denied');
like(condition_error(), qr/later_sd.*SECURITY DEFINER/, '  with the reason recorded');
is(made('cmd_later'), 'absent', '  and no program ran');

is(evaluate('cmd: public.runs_do'), '', 'a function running a utility statement (DO): denied');
like(condition_error(), qr/a condition may not run DO/, '  with the reason recorded');

is(evaluate(q{pg_catalog.set_config('role', 'postgres', true) IS NOT NULL}), '', 'an expression setting the role: denied');
like(condition_error(), qr/cannot set parameter "role"/, '  with the reason recorded');

is(evaluate('cmd: public.in_parallel'), '', 'a function planning a parallel query around a SECURITY DEFINER function: denied');
like(condition_error(), qr/sd_parsafe\(\): it is SECURITY DEFINER/, '  the function ran where the sandbox saw it, and was refused');

# A role that may read server files cannot have conditions at all.  No key
# is made for such a role (026_admin.pl); one granted the role after its
# key was made is refused by the sandbox.
sq($P, q{CREATE ROLE filer; GRANT SELECT ON s1 TO filer;
	CREATE ROLE branch2; GRANT SELECT ON s1 TO branch2;});
my $kf = new_key($P, 'filer');
sq($P, 'GRANT pg_read_server_files TO filer');
$r = register($kf, 'http://filer:8000', [ { ref_table => 'public.s1', condition => "pg_read_file('$tmp/secret.txt') LIKE 'S%'" } ]);
is($r->{status}, '400', 'a role in pg_read_server_files registering a condition: 400');
like($r->{json}{error}{message} // '', qr/cannot run as role "filer"/, '  the error names the role');
is(register($kf, 'http://filer:8000', [ 'public.s1' ])->{status}, '200', '  it may still subscribe without a condition');
# Granted the role after its condition was accepted: denied when served.
my $kb2 = new_key($P, 'branch2');
my $b2_url = 'http://branch2:8000';
$r = register($kb2, $b2_url, [ { ref_table => 'public.s1', condition => 'doc.id > 0' } ]);
is($r->{status}, '200', 'an ordinary role registers a condition');
$cursor{$b2_url} = $r->{json}{cursor};
sq($P, "SELECT eventstream.approve('$b2_url', 'public.s1')");
sq($P, 'GRANT pg_read_server_files TO branch2');
sq($P, "INSERT INTO s1 VALUES (100, 'x')");
$r = pull($kb2, $b2_url);
is($r->{status} . ' ' . served($r), '200 ', 'once the role may read server files, its condition denies the document');
like(sq($P, "SELECT coalesce(condition_error, 'none') FROM eventstream.consumer_table WHERE consumer_url = '$b2_url'"),
	qr/cannot run as role "branch2"/, '  with the reason recorded');

is(sq($P, 'SELECT string_agg(n::text, \',\') FROM victim'), '0', 'the table no condition may write is unchanged');
is(join(' ', map { made($_) } qw(cmd_program cmd_file cmd_later expr_direct expr_nested expr_view expr_operator expr_cast)),
	join(' ', ('absent') x 8), 'no program ran and no file was written, at any point');

######################################################################
# 3. A normal condition still filters documents, end to end
######################################################################

sq($C, "SELECT eventstream.subscribe('$P->{url}', 's1', condition => \$\$doc.v <> 'hidden'\$\$)");
sq($P, "SELECT eventstream.approve('$C->{url}', 'public.s1')");
ok(wait_query($C, "SELECT status || ' ' || snapshot_pending::text FROM eventstream.producer_table WHERE ref_table = 'public.s1'",
		'Approved false', 60), 'the consumer\'s conditioned subscription is approved');
sq($P, "INSERT INTO s1 VALUES (200, 'shown'), (201, 'hidden'), (202, 'shown too')");
ok(wait_query($C, "SELECT string_agg(id::text, ',' ORDER BY id) FROM s1 WHERE id >= 200", '200,202', 60),
	'a normal condition serves the documents that satisfy it and no other');

######################################################################
# 4. eval: filters on the consumer
######################################################################

sq($P, q{
	CREATE TABLE users (name text PRIMARY KEY, full_name text);
	CREATE TABLE note (name text PRIMARY KEY, content text, owner text REFERENCES users);
	GRANT SELECT ON users, note TO branch;
	INSERT INTO users VALUES ('ann', 'Ann Archer');
});
sq($C, qq{
	CREATE TABLE person (id serial PRIMARY KEY, full_name text);
	CREATE TABLE todo (name text PRIMARY KEY, description text, assigned_to int REFERENCES person);
	GRANT SELECT, INSERT, UPDATE, DELETE ON person, todo TO applier;
	GRANT USAGE ON SEQUENCE person_id_seq TO applier;
	CREATE FUNCTION public.sd_eval() RETURNS text LANGUAGE plpgsql SECURITY DEFINER AS \$\$
	BEGIN
		EXECUTE format('COPY (SELECT 1) TO PROGRAM %L', 'touch $tmp/eval_program');
		RETURN 'ann';
	END \$\$;
	CREATE FUNCTION public.pick_owner(doc jsonb) RETURNS text LANGUAGE plpgsql AS \$\$
	BEGIN RETURN doc->>'owner'; END \$\$;
	SELECT eventstream.create_mapping('person_from_user', 'person', 'users');
	SELECT eventstream.map_field('person_from_user', 'full_name', 'full_name');
	SELECT eventstream.create_mapping('todo_from_note', 'todo', 'note');
	SELECT eventstream.map_field('todo_from_note', 'description', 'content');
});
($ret, $out, $err) = q_try($C, q{
	SELECT eventstream.map_field('todo_from_note', 'assigned_to', 'owner', mapping_type => 'Document',
		mapping => 'person_from_user', remote_value_filters => '{"name": "eval:public.sd_eval()"}')});
isnt($ret, 0, 'an eval: filter calling a SECURITY DEFINER function is refused when written');
like($err, qr/an eval: filter may not call function public\.sd_eval\(\): it is SECURITY DEFINER/, '  saying why');
sq($C, q{
	SELECT eventstream.map_field('todo_from_note', 'assigned_to', 'owner', mapping_type => 'Document',
		mapping => 'person_from_user', remote_value_filters => '{"name": "eval:public.pick_owner(doc)"}')});
sq($C, "SELECT eventstream.subscribe('$P->{url}', NULL, mapping => 'todo_from_note')");
sq($P, "SELECT eventstream.approve('$C->{url}', 'public.note')");
ok(wait_query($C, "SELECT status || ' ' || snapshot_pending::text FROM eventstream.producer_table WHERE ref_table = 'public.note'",
		'Approved false', 60), 'the mapped subscription is approved');
sq($P, "INSERT INTO note VALUES ('E0', 'plain', 'ann')");
ok(wait_query($C, "SELECT count(*) FROM todo WHERE name = 'E0' AND assigned_to IS NOT NULL", '1', 60),
	'an eval: filter that stays in the sandbox links the dependency');

# The filter's function now reaches a SECURITY DEFINER function.
sq($C, q{CREATE OR REPLACE FUNCTION public.pick_owner(doc jsonb) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN RETURN public.sd_eval(); END $$});
sq($P, "INSERT INTO note VALUES ('E1', 'reaching', 'ann')");
ok(wait_query($C, "SELECT status FROM eventstream.sync_log WHERE remote_docname = 'E1'", 'Failed', 60),
	'an eval: filter reaching a SECURITY DEFINER function fails its update');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_docname = 'E1'"),
	qr/eval: filter .* failed: .*may not call function public\.sd_eval\(\): it is SECURITY DEFINER/,
	'  with the reason');
is(sq($C, "SELECT count(*) FROM todo WHERE name = 'E1'"), '0', '  nothing of it applied');
is(made('eval_program'), 'absent', '  and no program ran');

done_testing();
