# Row-level security and column privileges of the producer's tables, on
# every path a consumer is served by, between real sites talking HTTP (four
# databases of one node: a producer and three consumers, each with the key
# of another role).
#
# A. Row-level security: a consumer whose key's role (branch) sees the rows
#    of region 'north' only (a policy on the document table and one on its
#    child table) gets only those: in the initial sync, in the stream
#    (inserts of hidden rows never arrive, not even their docname; an
#    update moving a row out of the policy deletes it on the consumer;
#    moving in makes it arrive, with its visible child rows), from
#    documents/<t>/<docname> (404 for a hidden one), documents?filters=
#    and snapshot pages.
# B. Column privileges: a key whose role may read only some columns never
#    gets the others, on any path; filtering on them is refused (403); a
#    role that cannot read a key column is refused at registration
#    (SQLSTATE 42501) and by documents (403).
# C. A role that bypasses row-level security (BYPASSRLS) gets everything,
#    by the fast path (Updates stay Updates); the table owner too, unless
#    the table forces row security.
#
# sync_now() pulls beside each consumer's worker: two sessions pull pages
# of one consumer, asking ahead, and the producer keeps what each holds.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use EsSites;

my $node = new_node('sites');
my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');	# key of branch (row-level security)
my $K = add_site($node, 'colc');	# key of colreader (column privileges)
my $B = add_site($node, 'ownr');	# key of bypasser (BYPASSRLS)

$node->safe_psql('postgres', q{
	CREATE ROLE branch;
	CREATE ROLE colreader;
	CREATE ROLE nokey;
	CREATE ROLE bypasser BYPASSRLS;
	CREATE ROLE tabowner;
	CREATE ROLE applier;
});
sq($P, q{
	CREATE TABLE item (id int PRIMARY KEY, region text NOT NULL, secret text, v text);
	CREATE TABLE item_line (item_id int REFERENCES item ON DELETE CASCADE, n int, region text, qty int,
							PRIMARY KEY (item_id, n));
	SELECT eventstream.add_child_table('item', 'item_line');
	ALTER TABLE item ENABLE ROW LEVEL SECURITY;
	CREATE POLICY north ON item FOR SELECT TO branch USING (region = 'north');
	ALTER TABLE item_line ENABLE ROW LEVEL SECURITY;
	CREATE POLICY north_lines ON item_line FOR SELECT TO branch USING (region = 'north');
	GRANT SELECT ON item, item_line TO branch, bypasser;
	CREATE TABLE acct (id int PRIMARY KEY, name text, salary int);
	GRANT SELECT (id, name) ON acct TO colreader;
	GRANT SELECT (name, salary) ON acct TO nokey;
	CREATE TABLE acct_note (acct_id int REFERENCES acct, n int, body text, internal text, PRIMARY KEY (acct_id, n));
	CREATE TABLE acct_tag (acct_id int REFERENCES acct, tag text, PRIMARY KEY (acct_id, tag));
	SELECT eventstream.add_child_table('acct', 'acct_note');
	SELECT eventstream.add_child_table('acct', 'acct_tag');
	GRANT SELECT (acct_id, n, body) ON acct_note TO colreader;
	GRANT SELECT (acct_id) ON acct_tag TO colreader;
	CREATE TABLE owned (id int PRIMARY KEY, v text);
	ALTER TABLE owned OWNER TO tabowner;
	ALTER TABLE owned ENABLE ROW LEVEL SECURITY;
	INSERT INTO item VALUES (1, 'north', 's1', 'a'), (2, 'south', 's2', 'b'), (3, 'north', 's3', 'c');
	INSERT INTO item_line VALUES (1, 1, 'north', 5), (1, 2, 'south', 7), (3, 1, 'north', 1);
	INSERT INTO acct VALUES (1, 'ann', 100), (2, 'bob', 200);
	INSERT INTO acct_note VALUES (1, 1, 'hello', 'x-internal');
	INSERT INTO acct_tag VALUES (1, 'vip');
});
foreach my $s ($C, $K, $B)
{
	sq($s, q{
		CREATE TABLE item (id int PRIMARY KEY, region text, secret text, v text);
		CREATE TABLE item_line (item_id int REFERENCES item ON DELETE CASCADE, n int, region text, qty int,
								PRIMARY KEY (item_id, n));
		CREATE TABLE acct (id int PRIMARY KEY, name text, salary int);
		CREATE TABLE acct_note (acct_id int REFERENCES acct, n int, body text, internal text, PRIMARY KEY (acct_id, n));
		CREATE TABLE acct_tag (acct_id int REFERENCES acct, tag text, PRIMARY KEY (acct_id, tag));
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	});
}

# Run SQL on a site: its output, or its error (an assertion then fails
# instead of ending the test).
sub sqe
{
	my ($s, $sql) = @_;
	my ($ret, $out, $err) = q_try($s, $sql);
	return $ret == 0 ? $out : "ERROR $err";
}

sub add_producer_sql
{
	my ($key, $secret, $tables) = @_;
	return "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', "
	  . "api_secret => '$secret', subscriber => 'applier', tables => ARRAY[$tables])";
}

# GET an API path with a key: (status, body).  %params are URL-encoded.
sub api_get
{
	my ($key, $secret, $path, %params) = @_;
	my @cmd = ('curl', '-s', '-G', '-w', "\n%{http_code}", '--max-time', '10',
		'-H', "Authorization: token $key:$secret");
	push @cmd, '--data-urlencode', "$_=$params{$_}" foreach sort keys %params;
	push @cmd, "$P->{url}/api/eventstream/v1/$path";
	my ($out, $err) = ('', '');
	IPC::Run::run(\@cmd, '>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	return ($status, $body);
}

# The sync log of a consumer for a producer's document: "type:status" in order.
sub log_of
{
	my ($s, $table, $docname) = @_;
	return sq($s, "SELECT coalesce(string_agg(update_type || ':' || status, ',' ORDER BY id), '') FROM eventstream.sync_log "
		  . "WHERE remote_ref_table = 'public.$table' AND remote_docname = '$docname'");
}

######################################################################
# Registration: a role that cannot read a key column is refused.
######################################################################

my ($nk, $nks) = key_pair($P, 'nokey');
my ($ret, $out, $err) = q_try($B, add_producer_sql($nk, $nks, "'acct'"));
isnt($ret, 0, 'registration refuses a role that cannot read a key column');
like($err, qr/role "nokey" cannot read key column "id" of table "public\.acct"/, '  with a clear error');
is(sq($P, "SELECT count(*) FROM eventstream.consumer"), '0', '  and the producer kept nothing');
($ret, $out, $err) = q_try($P, "\\set VERBOSITY verbose\nSELECT eventstream._readable_table('acct', 'nokey')");
like($err, qr/ERROR:  42501: role "nokey" cannot read key column "id"/, '  SQLSTATE 42501 on the producer');
like($err, qr/HINT:  GRANT SELECT \(id\) ON public\.acct/, '  with a hint');

my ($bk, $bs) = key_pair($P, 'branch');
my ($ck, $cs) = key_pair($P, 'colreader');
my ($xk, $xs) = key_pair($P, 'bypasser');
sq($C, add_producer_sql($bk, $bs, "'item'"));
is(sqe($K, add_producer_sql($ck, $cs, "'acct'")), '', 'a role with SELECT on some columns, the key among them, registers');
sq($B, add_producer_sql($xk, $xs, "'item'"));
sqe($P, "SELECT eventstream.approve('$_->{url}', '" . ($_ == $K ? 'acct' : 'item') . "')") foreach ($C, $K, $B);
foreach my $s ($C, $K, $B)
{
	ok(wait_query($s, "SELECT count(*) FILTER (WHERE status = 'Approved' AND NOT snapshot_pending) "
		  . "FROM eventstream.producer_table", '1', 60), "$s->{name}: approved, initial sync done");
}

######################################################################
# A. Row-level security
######################################################################

is(rows($C, 'item'), "(1,north,s1,a)\n(3,north,s3,c)", 'A: the initial sync brings only the rows the policy shows');
is(rows($C, 'item_line'), "(1,1,north,5)\n(3,1,north,1)", '  and only the visible child rows');
is(sqe($P, "SELECT eventstream._role_served('item', 'branch') || '/' || eventstream._role_served('item', 'bypasser')"),
	'true/false', '  the table is role-served to branch, not to bypasser');

sq($P, q{
	INSERT INTO item VALUES (4, 'south', 's4', 'd');
	INSERT INTO item VALUES (5, 'north', 's5', 'e');
	INSERT INTO item_line VALUES (5, 1, 'north', 2), (5, 2, 'south', 9);
	UPDATE item SET v = 'a2' WHERE id = 1;
	UPDATE item SET region = 'south' WHERE id = 3;
	INSERT INTO item_line VALUES (2, 1, 'north', 3), (2, 2, 'south', 4);
	UPDATE item SET region = 'north', v = 'b2' WHERE id = 2;
	UPDATE item SET v = 'd2' WHERE id = 4;
});
sync_now($C, $P->{url});
ok(wait_query($C, "SELECT string_agg(id::text, ',' ORDER BY id) FROM item", '1,2,5', 30),
	'A: the stream brings visible changes, moves out and moves in');
is(rows($C, 'item'), "(1,north,s1,a2)\n(2,north,s2,b2)\n(5,north,s5,e)",
	'  each document in its current state');
is(rows($C, 'item_line'), "(1,1,north,5)\n(2,1,north,3)\n(5,1,north,2)",
	'  with its visible child rows only');
is(log_of($C, 'item', '4'), '', '  a hidden row never arrives, not even its docname');
like(log_of($C, 'item', '3'), qr/Delete:Synced$/, '  a row moving out of the policy is deleted');
is(log_of($C, 'item', '2'), 'Create:Synced', '  a row moving in arrives as a Create');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE data::text ~ 's4|south'"), '0',
	'  no served data holds a hidden row or child row');
is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'"), '0', '  nothing Failed');

# Moving back in, and out after it moved in.
sq($P, "UPDATE item SET region = 'north' WHERE id = 3");
sq($P, "UPDATE item SET region = 'west' WHERE id = 5");
sync_now($C, $P->{url});
ok(wait_query($C, "SELECT string_agg(id::text, ',' ORDER BY id) FROM item", '1,2,3', 30),
	'A: a row moving back in arrives again, one moving out goes');
is(rows($C, 'item_line', 'item_id = 3'), '(3,1,north,1)', '  with its child rows');


# The HTTP API, with branch's key.
my ($st, $body) = api_get($bk, $bs, 'documents/public.item/4');
is($st, '404', 'A: documents/<t>/<hidden> answers 404');
unlike($body, qr/s4|south/, '  and says nothing of the row');
($st, $body) = api_get($bk, $bs, 'documents/public.item/1');
is($st, '200', '  a visible document is served');
like($body, qr/"n": 1/, '  with its visible child row');
unlike($body, qr/"n": 2|south/, '  and not the hidden one');
($st, $body) = api_get($bk, $bs, 'documents/public.item', filters => '{"v": "d2"}');
is("$st $body", '200 {"docnames": []}', '  filters do not find hidden rows');
($st, $body) = api_get($bk, $bs, 'documents/public.item', filters => '{"region": "north"}');
is("$st $body", '200 {"docnames": ["1", "2", "3"]}', '  filters list the visible ones');
($st, $body) = api_get($bk, $bs, 'snapshot/public.item', limit => 10);
is($st, '200', '  snapshot answers');
is(join(',', $body =~ /"docname": "([^"]*)"/g), '1,2,3', '  a snapshot page holds only the visible rows');
unlike($body, qr/s4|s5|south|west/, '  and nothing of the hidden ones');

######################################################################
# B. Column privileges
######################################################################

is(rows($K, 'acct'), "(1,ann,)\n(2,bob,)", 'B: the initial sync brings only the readable columns');
is(rows($K, 'acct_note'), '(1,1,hello,)', '  of the child rows too');
is(rows($K, 'acct_tag'), '', '  and no rows of a child table whose key it cannot read');
sq($P, "INSERT INTO acct VALUES (3, 'cy', 300)");
sq($P, "UPDATE acct SET salary = 150, name = 'ann2' WHERE id = 1");
sq($P, "INSERT INTO acct_note VALUES (3, 1, 'hi', 'y-internal')");
sqe($K, "SELECT eventstream.sync_now('$P->{url}')");
ok(wait_query($K, "SELECT string_agg(id || ':' || name || ':' || coalesce(salary::text, '-'), ',' ORDER BY id) FROM acct",
	'1:ann2:-,2:bob:-,3:cy:-', 30), '  the stream brings only the readable columns');
is(sq($K, "SELECT count(*) FROM eventstream.sync_log WHERE data::text ~ 'salary|internal|vip'"), '0',
	'  no served data holds the hidden columns');
ok(wait_query($K, 'SELECT string_agg(acct_id || body || coalesce(internal, \'-\'), \',\' ORDER BY acct_id) FROM acct_note',
	'1hello-,3hi-', 30), '  nor the hidden columns of child rows');
($st, $body) = api_get($ck, $cs, 'documents/public.acct/3');
is($st, '200', '  documents serves the row');
unlike($body, qr/salary|300|internal|acct_tag/, '  without the hidden columns and child table');
like($body, qr/"name": "cy".*"body": "hi"/s, '  with the readable ones');
($st, $body) = api_get($ck, $cs, 'documents/public.acct', filters => '{"salary": "300"}');
is($st, '403', '  filtering on a hidden column is refused');
like($body, qr/cannot read column \\"salary\\"/, '  with a clear message');
($st, $body) = api_get($ck, $cs, 'documents/public.acct', filters => '{"name": "cy"}');
is("$st $body", '200 {"docnames": ["3"]}', '  filtering on a readable column works');
($st, $body) = api_get($ck, $cs, 'snapshot/public.acct');
is($st, '200', '  snapshot answers');
unlike($body, qr/salary|300/, '  without the hidden column');
($st, $body) = api_get($nk, $nks, 'documents/public.acct/1');
is($st, '403', '  a role that cannot read a key column gets 403 from documents');
like($body, qr/cannot read key column/, '  saying why');
($st, $body) = api_get($nk, $nks, 'snapshot/public.acct');
is($st, '403', '  and from snapshot');

######################################################################
# C. Bypassing row-level security
######################################################################

ok(wait_query($B, "SELECT string_agg(id || ':' || region, ',' ORDER BY id) FROM item",
	'1:north,2:north,3:north,4:south,5:west', 30), 'C: a BYPASSRLS role gets every row');
is(rows($B, 'item_line'), "(1,1,north,5)\n(1,2,south,7)\n(2,1,north,3)\n(2,2,south,4)\n(3,1,north,1)\n(5,1,north,2)\n(5,2,south,9)",
	'  and every child row');
is(log_of($B, 'item', '4'), 'Create:Synced,Update:Synced', '  by the fast path (the logs as they are)');
is(sqe($P, "SELECT eventstream._rls_applies('owned', 'tabowner') || '/' || eventstream._rls_applies('owned', 'branch')"),
	'false/true', '  row-level security does not apply to the owner');
sq($P, 'ALTER TABLE owned FORCE ROW LEVEL SECURITY');
is(sqe($P, "SELECT eventstream._rls_applies('owned', 'tabowner')"), 't', '  unless the table forces it');

done_testing();
