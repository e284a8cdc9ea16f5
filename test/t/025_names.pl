# Awkward names on the wire, between two real sites: tables whose names
# hold '/', '%', '?', '#', spaces, quotes, dots, commas, a newline and
# non-ASCII letters (one of 63 bytes), a table in a schema named "s/x", and
# docnames with '/', '%', '..', '?', '#', '+', spaces, quotes, non-ASCII
# letters, the empty string, ~200 characters and 1,800 bytes.  Each one
# must come across registration, the initial sync (over several snapshot
# pages, so that after= carries such docnames back), the stream (insert,
# update, delete), dependency fetches (a foreign key and dynamic links to a
# table named "cu/stomer" that is not subscribed, so its rows come through
# documents/<table>/<docname>), child tables and refetch(); subscribe()
# must name tables as the producer does; and direct requests to
# documents/, filters= and snapshot/ with percent-encoded segments must
# answer what they name, '..' segments included, while malformed escapes
# are a 400 and an unknown table a 404 naming it.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline.  The source is UTF-8 and handled as bytes (no "use utf8").
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use EsSites;

my $t0 = time;

# The tables with one text key column: (SQL name, wire name).
my @text_tables = (
	[ '"a/b"',             'public."a/b"' ],
	[ '"50% off"',         'public."50% off"' ],
	[ '"q?x#y"',           'public."q?x#y"' ],
	[ '"sp ace"',          'public."sp ace"' ],
	[ '"dot.ted"',         'public."dot.ted"' ],
	[ '"ünï"',             'public."ünï"' ],
	[ '"%2F"',             'public."%2F"' ],
	[ '".."',              'public.".."' ],
	[ '"quo""te"',         'public."quo""te"' ],
	[ '"s/x"."in/schema"', '"s/x"."in/schema"' ],
	[ "\"li\nne\"",          "public.\"li\nne\"" ],
	# 63 bytes, the longest identifier
	[ '"' . ('ü/' x 21) . '"', 'public."' . ('ü/' x 21) . '"' ],);

# 1,800 bytes, 5,400 once escaped.
my $long = 'ü/' x 600;

# Docnames every text table holds.
my @docnames = ('x/y', 'a/../b', '..', '.', './z', '50%', '%2F', '%zz', 'q?x#y', 'sp ace', 'plus+sign',
	'ünï€', 'quo"te', "ap'os", 'back\\slash', 'a//b', 'end/', '/start', ('l' x 200) . '/tail', 'a,b', '',
	$long);

# A name for a test's description (one line).
sub shown
{
	my ($s) = @_;
	$s =~ s/\n/\\n/g;
	return $s;
}

# A SQL literal.
sub lit
{
	my ($s) = @_;
	$s =~ s/'/''/g;
	return "'$s'";
}

# Percent-encode every byte but RFC 3986's unreserved ones.
sub enc
{
	my ($s) = @_;
	$s =~ s/([^A-Za-z0-9\-._~])/sprintf('%%%02X', ord $1)/ge;
	return $s;
}

my $schema = join('', map { "CREATE TABLE $_->[0] (id text PRIMARY KEY, v text);\n" } @text_tables) . q{
	CREATE TABLE "com,po" (a text, b int, v text, PRIMARY KEY (a, b));
	CREATE TABLE "cu/stomer" (id text PRIMARY KEY, name text);
	CREATE TABLE "or/der" (id int PRIMARY KEY, customer text REFERENCES "cu/stomer", v text);
	CREATE TABLE "in/voice" (id text PRIMARY KEY, v text);
	CREATE TABLE "in/voice item" (id int PRIMARY KEY, invoice text NOT NULL REFERENCES "in/voice" ON DELETE CASCADE,
								  v text);
	CREATE TABLE "li/nks" (id int PRIMARY KEY, ref_type text, ref_name text);
	CREATE TABLE "x.y" (id text PRIMARY KEY, v text);
	CREATE TABLE "MiXed" (id text PRIMARY KEY, v text);
	CREATE TABLE plain (id text PRIMARY KEY, v text);
};
my @subscribed = ((map { $_->[1] } @text_tables), 'public."com,po"', 'public."or/der"', 'public."in/voice"',
	'public."li/nks"');

my $node = new_node('names');
my $P = add_site($node, 'producer');
my $C = add_site($node, 'consumer');

sq($P, qq{CREATE SCHEMA "s/x";\n$schema
	CREATE ROLE reader;
	GRANT USAGE ON SCHEMA "s/x" TO reader;
	GRANT SELECT ON ALL TABLES IN SCHEMA public, "s/x" TO reader;
	SELECT eventstream.add_child_table('"in/voice"', '"in/voice item"');
	SELECT eventstream.add_dynamic_link('"li/nks"', 'ref_type', 'ref_name');
});
sq($C, qq{CREATE SCHEMA "s/x";\n$schema
	CREATE ROLE applier;
	GRANT USAGE ON SCHEMA "s/x" TO applier;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public, "s/x" TO applier;
	SELECT eventstream.add_dynamic_link('"li/nks"', 'ref_type', 'ref_name');
});

# Rows before the subscription: they come with the initial sync.
my $values = join(', ', map { '(' . lit($_) . ", 'v0')" } @docnames);
foreach my $t (@text_tables)
{
	sq($P, "INSERT INTO $t->[0] VALUES $values");
}
# 120 more in "a/b": its copy takes two pages of 100, the second asked for
# with after= a docname holding '/', '%', '+', '?', '#' and a space.
sq($P, q{INSERT INTO "a/b" SELECT 'r/%+?# ' || lpad(i::text, 3, '0'), 'v0' FROM generate_series(1, 120) i});
sq($P, q{INSERT INTO "com,po" VALUES ('a/b', 1, 'v0'), ('..', 2, 'v0'), ('["x"]', 3, 'v0'), ('%2F,?', 4, 'v0')});
sq($P, q{INSERT INTO "cu/stomer" VALUES ('pre/1', 'p1'), ('..', 'dots'), ('50% c', 'c50'), ('c/2', 'c2'), ('.', 'dot'),
		('unused/x', 'never referred to'), (} . lit($long) . q{, 'long');
	INSERT INTO "or/der" VALUES (1, 'pre/1', 'v0');
	INSERT INTO "in/voice" VALUES ('inv/1', 'v0'), ('..', 'v0');
	INSERT INTO "in/voice item" VALUES (1, 'inv/1', 'i1'), (2, 'inv/1', 'i2'), (3, '..', 'i3');
});

my ($key, $secret) = key_pair($P, 'reader');
my $tables_sql = 'ARRAY[' . join(', ', map { lit($_) } @subscribed) . ']';
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => $tables_sql)");
is(sq($P, "SELECT string_agg(ref_table, ' | ' ORDER BY ref_table COLLATE \"C\") FROM eventstream.consumer_table"),
	join(' | ', sort @subscribed), 'registration: the producer knows every subscription by its wire name');
sq($P, "SELECT eventstream.approve('$C->{url}', t) FROM unnest($tables_sql) t");

######################################################################
# The initial sync
######################################################################

ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE snapshot_pending OR snapshot_error IS NOT NULL "
		  . "OR status <> 'Approved'", '0', 180),
	'the initial sync of every table ends, without an error');
my @all = ((map { $_->[0] } @text_tables), '"com,po"', '"or/der"', '"cu/stomer"', '"in/voice"', '"in/voice item"');
my $cu_before = sq($P, q{SELECT count(*) FROM "cu/stomer" WHERE id = 'pre/1'});
foreach my $t (grep { $_ ne '"cu/stomer"' } @all)
{
	is(digest($C, $t), digest($P, $t), 'initial sync: ' . shown($t) . ' copied whole');
}
is(rows($C, '"cu/stomer"'), '(pre/1,p1)', 'initial sync: the customer an order refers to is fetched through documents/');
is(sq($C, "SELECT coalesce(string_agg(ref_table || ' ' || coalesce(error, ''), E'\\n'), '') FROM eventstream.sync_log "
	  . "WHERE status = 'Failed'"), '', 'initial sync: nothing failed');

######################################################################
# The stream: insert, update, delete
######################################################################

my $new_values = join(', ', map { '(' . lit("new $_") . ", 'n')" } @docnames);
foreach my $t (@text_tables)
{
	sq($P, "INSERT INTO $t->[0] VALUES $new_values; UPDATE $t->[0] SET v = 'u' || v WHERE id NOT LIKE 'r/%';"
		  . " DELETE FROM $t->[0] WHERE id IN ('x/y', '..', '', 'new %2F');");
}
sq($P, q{UPDATE "com,po" SET v = 'u' WHERE a = '..'; DELETE FROM "com,po" WHERE a = 'a/b';
	INSERT INTO "com,po" VALUES ('new/..', 5, 'n');
	INSERT INTO "or/der" VALUES (2, '..', 'n'), (3, '50% c', 'n'), (4, 'c/2', 'n'), (5, '.', 'n');
	INSERT INTO "or/der" SELECT 6, id, 'n' FROM "cu/stomer" WHERE name = 'long';
	-- Dynamic links: the type column names a table as SQL would (quoted
	-- where needed); a value that names no table, or is no name at all,
	-- refers to nothing.
	INSERT INTO "cu/stomer" VALUES ('dyn/1', 'd1'), ('dyn/..', 'd2');
	INSERT INTO "li/nks" VALUES (1, '"cu/stomer"', 'dyn/1'), (2, 'public."cu/stomer"', 'dyn/..'),
		(3, 'sp ace', 'x'), (4, 'a/b', 'x'), (5, 'x.y.z', 'x'), (6, 'no_such', 'x'), (7, '"sp ace"', 'sp ace'),
		(8, '"com,po"', 'not a JSON array'), (9, '"com,po"', '["x"]'), (10, '"or/der"', 'not a number'),
		(11, '"com,po"', '["x", "not a number"]');
	UPDATE "or/der" SET v = 'u' WHERE id = 1;
	INSERT INTO "in/voice" VALUES ('inv/2', 'n');
	INSERT INTO "in/voice item" VALUES (4, 'inv/2', 'i4');
	UPDATE "in/voice item" SET v = 'i1u' WHERE id = 1;
	DELETE FROM "in/voice" WHERE id = '..';
});
my $last = $text_tables[-1][0];
ok(wait_query($C, "SELECT count(*) FROM $last WHERE id LIKE 'new %'", scalar(@docnames) - 1, 120),
	'the stream arrives');
ok(wait_query($C, q{SELECT count(*) FROM "in/voice item"}, '3', 60), '  with the invoice changes');
ok(wait_query($C, q{SELECT count(*) FROM "or/der"}, '6', 60), '  and the orders');
ok(wait_query($C, q{SELECT count(*) FROM "li/nks"}, '11', 60),
	'  and the dynamic links, those whose values name no row (no such table, no name, no key) included');
foreach my $t (@all)
{
	is(digest($C, $t), digest($P, $t), 'stream: ' . shown($t) . ' as on the producer') unless $t eq '"cu/stomer"';
}
is(rows($C, '"cu/stomer"'), rows($P, '"cu/stomer"', q{id <> 'unused/x'}),
	"stream: the customers new orders and dynamic links refer to ('..', '.', '50% c', 'c/2', 'dyn/1', 'dyn/..', 1,800 bytes) are fetched through documents/");
is(sq($C, "SELECT coalesce(string_agg(ref_table || ' ' || coalesce(error, ''), E'\\n'), '') FROM eventstream.sync_log "
	  . "WHERE status = 'Failed'"), '', 'stream: nothing failed');
is(sq($C, q{SELECT count(DISTINCT docname) FROM eventstream.sync_log WHERE ref_table = 'public."q?x#y"'}),
	scalar(@docnames) * 2, 'the sync log names each document by its docname');

# subscribe() by names as SQL writes them: "x.y" (a dot inside the quotes
# is no schema's), "MiXed" and Public.PLAIN are public."x.y",
# public."MiXed" and public.plain, as the producer names them.
sq($P, q{INSERT INTO "x.y" VALUES ('x/1', 'v'), ('..', 'v'); INSERT INTO "MiXed" VALUES ('m/1', 'v');
	INSERT INTO plain VALUES ('p/1', 'v')});
my ($ret, $out, $err) = q_try($C, qq{SELECT eventstream.subscribe('$P->{url}', '"x.y"');
	SELECT eventstream.subscribe('$P->{url}', ' "MiXed" '); SELECT eventstream.subscribe('$P->{url}', 'Public.PLAIN')});
is("$ret $err", '0 ', 'subscribe() by "x.y", "MiXed" and Public.PLAIN');
is(sq($C, "SELECT string_agg(ref_table, ' | ' ORDER BY ref_table COLLATE \"C\") FROM eventstream.producer_table "
	  . q{WHERE local_table IN ('"x.y"'::regclass, '"MiXed"'::regclass, 'plain'::regclass)}),
	'public."MiXed" | public."x.y" | public.plain', 'subscribe(): the consumer names the tables as the producer does');
($ret, $out, $err) = q_try($P, "SELECT eventstream.approve('$C->{url}', t) "
	  . "FROM unnest(ARRAY['public.\"x.y\"', 'public.\"MiXed\"', 'public.plain']) t");
is("$ret $err", '0 ', '  approved on the producer by those names');
ok(wait_query($C, q{SELECT (SELECT count(*) FROM "x.y") + (SELECT count(*) FROM "MiXed") + (SELECT count(*) FROM plain)},
		'4', 60),
	'  their approval arrives and their rows are copied');

# refetch() from a session (eventstream._http_request, not the worker):
# '.' and '..' segments go as they are.
sq($C, q{UPDATE "dot.ted" SET v = 'local' WHERE id IN ('.', './z', 'a/../b', '50%')});
sq($C, q{UPDATE "dot.ted" SET v = 'local' WHERE id = } . lit($long));
foreach my $d ('.', './z', 'a/../b', '50%', $long)
{
	is(sq($C, "SELECT eventstream.refetch('$P->{url}', 'public.\"dot.ted\"', " . lit($d) . ')'), 'Synced',
		'refetch() of ' . (length($d) > 20 ? 'the 1,800-byte docname' : "'$d'") . ' from a session');
}
is(digest($C, '"dot.ted"'), digest($P, '"dot.ted"'), "  brings those documents back to the producer's state");

######################################################################
# Direct requests
######################################################################

# GET $path (under the API, sent as it is) with the key: (status, body).
sub api_get
{
	my ($path) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run(
		[
			'curl', '-s', '--path-as-is', '-g', '-H', "Authorization: token $key:$secret",
			'-w', "\n%{http_code}", '--max-time', '10', "$P->{url}/api/eventstream/v1/$path"
		],
		'>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	return ($status, $body);
}

# The text of a JSON value of a body, read by the producer's PostgreSQL.
sub json_at
{
	my ($body, $path) = @_;
	return sq($P, 'SELECT ' . lit($body) . "::jsonb #>> '$path'");
}

my @kept = grep { my $d = $_; !grep { $_ eq $d } ('x/y', '..', '') } @docnames;
foreach my $t (@text_tables)
{
	my $ok = 0;
	my @bad;
	foreach my $d (@kept)
	{
		my ($status, $body) = api_get('documents/' . enc($t->[1]) . '/' . enc($d));
		if ($status eq '200' && json_at($body, '{id}') eq $d)
		{
			$ok++;
		}
		else
		{
			push @bad, "$d: $status $body";
		}
	}
	is($ok, scalar(@kept), 'documents/<table>/<docname>: every document of ' . shown($t->[0]) . ' by its escaped names')
	  or diag(join("\n", @bad));
}
# The same docname, '..' and '.' segments sent as they are (never
# normalised away): read literally.
sq($P, q{INSERT INTO "a/b" VALUES ('..', 'dots'), ('', 'empty')});
my ($status, $body) = api_get('documents/public.%22a%2Fb%22/..');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 ..', "a '..' docname sent as '..' is the document '..'");
($status, $body) = api_get('documents/public.%22a%2Fb%22/a/../b');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 a/../b',
	"a docname's '/' may be sent unescaped: 'a/../b' is that document, not 'b'");
($status, $body) = api_get('documents/public.%22a%2Fb%22/./z');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 ./z', "'./z' is that document, not 'z'");
($status, $body) = api_get('documents/public.%22a%2Fb%22/');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 ', 'an empty docname is the document ""');
($status, $body) = api_get('documents/public.%22dot.ted%22/x%2Fy%2F..%2F..');
like("$status $body", qr/^404 .*document \\"x\/y\/..\/..\\" of table \\"public\.\\"dot\.ted\\"\\" does not exist/,
	'an escaped docname that is not there: 404 naming it');
($status, $body) = api_get('documents/public.%22a%2fb%22/a%2f..%2fb');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 a/../b', 'lower-case hexadecimal digits decode too');
($status, $body) = api_get('documents/public.%22sp%20ace%22/plus+sign');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 plus+sign', "a '+' in the path is a '+'");
($status, $body) = api_get('documents/public.%22%252F%22/%252F');
is("$status " . ($status eq '200' ? json_at($body, '{id}') : $body), '200 %2F',
	'a table and a docname named "%2F" are decoded once only');

# filters= and snapshot/.
($status, $body) = api_get('documents/' . enc('public."q?x#y"') . '?filters=' . enc('{"v": "uv0"}') . '&limit=100');
is("$status " . ($status eq '200' ? json_at($body, '{docnames}') : $body),
	'200 ' . sq($P, q{SELECT jsonb_agg(id ORDER BY id)::text FROM "q?x#y" WHERE v = 'uv0'}),
	'documents/<table>?filters=: the docnames matching, for an escaped table name');
($status, $body) = api_get('documents/' . enc('public."sp ace"') . '?filters=' . enc('{"id": "plus+sign"}'));
is("$status " . ($status eq '200' ? json_at($body, '{docnames}') : $body), '200 ["plus+sign"]',
	"  a filter value's '+' (sent as %2B) stays a '+'");
($status, $body) = api_get('snapshot/' . enc('"s/x"."in/schema"') . '?limit=3&after=' . enc('%2F'));
is("$status " . ($status eq '200' ? json_at($body, '{next}') : $body),
	'200 ' . sq($P, q{SELECT max(id) FROM (SELECT id FROM "s/x"."in/schema" WHERE id > '%2F' ORDER BY id LIMIT 3) x}),
	'snapshot/<table>: a page of a table in schema "s/x", after an escaped docname');
($status, $body) = api_get('snapshot/' . enc('public."a/b"') . '?limit=2&after=' . enc('r/%+?# 007'));
is("$status " . ($status eq '200' ? json_at($body, '{documents,0,docname}') : $body), '200 r/%+?# 008',
	"  after= with '/', '%', '+', '?', '#' and a space");
($status, $body) = api_get('snapshot/' . enc('public."com,po"') . '?limit=1&after=' . enc('["%2F,?",4]'));
is("$status " . ($status eq '200' ? json_at($body, '{documents,0,data,a}') : $body),
	'200 ' . sq($P, q{SELECT a FROM "com,po" WHERE (a, b) > ('%2F,?', 4) ORDER BY a, b LIMIT 1}),
	'  and a composite key after= (a JSON array)');

# Errors.
foreach my $bad ('documents/public.%22a%2Fb%22/%zz', 'documents/public.%22a%2Fb%22/x%4', 'documents/public.%22a%2Fb%22/x%',
	'documents/public.%22a%2Fb%22/a%00b', 'documents/public.%22a%2F%g0b%22/x', 'snapshot/public.%22a%2Fb%22%0', 'documents/%zz')
{
	($status, $body) = api_get($bad);
	like("$status $body", qr/^400 .*percent/, "a malformed escape ($bad): 400 saying so");
}
foreach my $bad ('snapshot/public.%22a%2Fb%22?after=%zz', 'snapshot/public.%22a%2Fb%22?after=a%00b',
	'documents/public.%22a%2Fb%22?filters=%7B%7D%')
{
	($status, $body) = api_get($bad);
	like("$status $body", qr/^400 .*percent-encoding .* in the request query string/,
		"a malformed escape in the query string ($bad): 400 saying so");
}
($status, $body) = api_get('documents/public.%22a%2Fb%22/%FF');
like("$status $body", qr/^400 .*invalid byte sequence for encoding/, 'a segment that is not UTF-8: 400');
($status, $body) = api_get('documents/' . enc('public."no/such ta""ble"') . '/x');
like("$status $body", qr/^404 .*no\/such ta\\"\\"ble/, 'an unknown table: 404 naming it, JSON-escaped');
($status, $body) = api_get('snapshot/' . enc('public."no/such"'));
like("$status $body", qr/^404 .*no\/such/, '  on snapshot/ too');
($status, $body) = api_get('documents/' . enc('public."no/such"') . '?filters=%7B%7D');
like("$status $body", qr/^404 .*no\/such/, '  and on filters=');
($status, $body) = api_get('snapshot/public.%22a%2Fb%22/x');
like("$status $body", qr/^404 .*No such endpoint/, "snapshot/ takes one segment: a table's '/' must be escaped");
($status, $body) = api_get('documents/%61pi');
like("$status $body", qr/^404 .*api/, 'documents/<table> of a table that is not there: 404');

diag(sprintf('025_names: %.1f s', time - $t0));
done_testing();
