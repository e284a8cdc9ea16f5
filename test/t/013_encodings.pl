# Text between sites is UTF-8 whatever the database encodings (four
# databases of one node, each a site): a UTF8 producer and a LATIN1
# consumer, then a LATIN1 producer and a UTF8 consumer.  Non-ASCII values,
# docnames and a table name cross both ways exactly (compared byte for byte
# in UTF-8), through the registration, the initial sync, the stream of
# updates and a documents/ fetch; a character LATIN1 cannot hold fails
# only the update (or snapshot document) holding it, with an error naming
# it, and refetch() brings the document once the producer changed it.  The
# producer refuses a request that is not valid UTF-8, or that its encoding
# cannot hold, with a 400.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline.  This file is UTF-8, and so are the psql sessions
# (PGCLIENTENCODING): what the tests compare is UTF-8 bytes.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

$ENV{PGCLIENTENCODING} = 'UTF8';

my $schema = q{
	CREATE TABLE label (name text PRIMARY KEY);
	CREATE TABLE band (name text PRIMARY KEY, v text, label text REFERENCES label);
	CREATE TABLE straße (name text PRIMARY KEY, v text);
};

my $node = new_node('sites');
$node->safe_psql('postgres', 'CREATE ROLE branch; CREATE ROLE applier');

# GET $path of a site's API with a key: (status, body).
sub api_get
{
	my ($s, $key, $secret, $path) = @_;
	my ($out, $err) = ('', '');
	IPC::Run::run([ 'curl', '-s', '-w', "\n%{http_code}", '--max-time', '10',
			'-H', "Authorization: token $key:$secret", "$s->{url}/api/eventstream/v1/$path" ],
		'>', \$out, '2>', \$err);
	my ($body, $status) = $out =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $out);
	return ($status, $body);
}

# What a consumer says of its producers' tables, for a failure's diagnosis.
sub tables_state
{
	my ($s) = @_;
	return sq($s, "SELECT string_agg(format('%s %s %s %s', ref_table, status, snapshot_pending, snapshot_error), E'\\n') "
		  . "FROM eventstream.producer_table") . "\n"
	  . sq($s, "SELECT string_agg(coalesce(last_error, '-'), E'\\n') FROM eventstream.producer");
}

# The UTF-8 bytes (hex) of a query's one text value on a site.
sub utf8_hex
{
	my ($s, $sql) = @_;
	return sq($s, "SELECT encode(convert_to(($sql), 'UTF8'), 'hex')");
}

######################################################################
# A UTF8 producer, a LATIN1 consumer
######################################################################

my $P = add_site($node, 'prod_utf8', encoding => 'UTF8');
my $C = add_site($node, 'cons_latin1', encoding => 'LATIN1');
is(sq($C, 'SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()'),
	'LATIN1', 'the consumer database is LATIN1');

# The rows exist before the consumer subscribes: the initial sync brings
# them (snapshot pages).
my ($key, $secret);
{
	sq($P, $schema . q{
		INSERT INTO band (name, v) VALUES ('Motörhead', 'Lemmy'), ('Ümlaut €', 'not in LATIN1'), ('plain', 'ascii');
		INSERT INTO straße VALUES ('Straße 1', 'ß');
		GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
	});
	sq($C, $schema . q{
		GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	});
	($key, $secret) = key_pair($P, 'branch');
	my ($ret, $out, $err) = q_try($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', "
		  . "api_key => '$key', api_secret => '$secret', subscriber => 'applier', tables => ARRAY['band', '\"straße\"'])");
	is($ret, 0, 'add_producer from the LATIN1 consumer sends its table names in UTF-8') or diag($err);
	is(sq($P, "SELECT string_agg(ref_table, ',' ORDER BY ref_table) FROM eventstream.consumer_table "
		  . "WHERE consumer_url = '$C->{url}'"),
		'public."straße",public.band', 'the UTF8 producer registered both tables, names intact');
	sq($P, "SELECT eventstream.approve('$C->{url}', t) FROM unnest(ARRAY['band', 'straße']) t");
	ok(wait_query($C, "SELECT count(*) FROM eventstream.producer_table WHERE producer_url = '$P->{url}' "
			  . "AND status = 'Approved' AND NOT snapshot_pending", '2', 60),
		'both tables approved and their initial sync done')
	  or diag(tables_state($C));
}

is(utf8_hex($C, "SELECT name FROM band WHERE v = 'Lemmy'"), utf8_hex($P, "SELECT name FROM band WHERE v = 'Lemmy'"),
	'initial sync: Motörhead arrives exactly (the same UTF-8 bytes)');
is(sq($C, "SELECT octet_length(name) FROM band WHERE v = 'Lemmy'"), '9', '  one byte for ö in LATIN1');
is(rows($C, 'straße'), '("Straße 1",ß)', 'initial sync of the table straße, its row intact');
is(sq($C, "SELECT string_agg(remote_docname || ':' || status, ',' ORDER BY remote_docname) FROM eventstream.sync_log "
	  . "WHERE note LIKE 'initial sync%' AND remote_ref_table = 'public.band'"),
	'Motörhead:Synced,plain:Synced,Ümlaut ?:Failed',
	'initial sync: only the document with € is Failed (its docname shows ? for it)');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE note LIKE 'initial sync%' AND status = 'Failed'"),
	qr/^character U\+20AC has no equivalent in encoding "LATIN1"/, '  its error names the character and the encoding');
is(sq($C, "SELECT count(*) FROM band WHERE name LIKE 'Ümlaut%'"), '0', '  and nothing of it was applied');

# The same snapshot page through _http_request (as sync_now() reads it).
like(sq($C, "SELECT d->>'encoding_error' || ' ' || (d->'data' = 'null') FROM jsonb_array_elements("
	  . "eventstream._producer_call('$P->{url}', '$key', '$secret', 'GET', 'snapshot/public.band?limit=10')->'documents') d "
	  . "WHERE d->>'docname' LIKE 'Ümlaut%'"),
	qr/^character U\+20AC has no equivalent in encoding "LATIN1" true$/,
	'_http_request marks the document it cannot hold, without its data');

# One producer transaction: good rows, a dependency with ü in its docname
# (fetched with documents/), a value with a control character (a \u escape
# in the page), a value with € (not in LATIN1).
sq($P, q{
	BEGIN;
	INSERT INTO label VALUES ('Bronze Künstler');
	INSERT INTO band VALUES ('Björk', 'Homogenic', 'Bronze Künstler');
	INSERT INTO band VALUES ('price', '5 €');
	INSERT INTO band VALUES ('good', 'plain');
	INSERT INTO band VALUES ('ctrl', E'bell \\007 ö');
	UPDATE band SET v = 'Lemmy Kilmister' WHERE name = 'Motörhead';
	COMMIT;
});
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE remote_ref_table = 'public.band' "
		  . "AND coalesce(note, '') NOT LIKE 'initial sync%' AND remote_docname IN ('Björk', 'price', 'good', 'ctrl', 'Motörhead')", '5', 60),
	'the five updates arrived');
is(sq($C, "SELECT string_agg(remote_docname || ':' || update_type || ':' || status, ',' ORDER BY remote_docname) "
	  . "FROM eventstream.sync_log WHERE remote_ref_table = 'public.band' AND coalesce(note, '') NOT LIKE 'initial sync%'"),
	'Björk:Create:Synced,Motörhead:Update:Synced,ctrl:Create:Synced,good:Create:Synced,price:Create:Failed',
	'only the update with € is Failed; the others of the transaction are Synced');
like(sq($C, "SELECT error FROM eventstream.sync_log WHERE remote_docname = 'price'"),
	qr/^character U\+20AC has no equivalent in encoding "LATIN1"/, '  its error names the character and the encoding');
is(utf8_hex($C, "SELECT v FROM band WHERE name = 'Motörhead'"), utf8_hex($P, "SELECT v FROM band WHERE name = 'Motörhead'"),
	'the Update of Motörhead applied');
is(utf8_hex($C, "SELECT name || '/' || label FROM band WHERE v = 'Homogenic'"),
	utf8_hex($P, "SELECT name || '/' || label FROM band WHERE v = 'Homogenic'"), 'Björk arrives exactly, with its label');
is(utf8_hex($C, "SELECT v FROM band WHERE name = 'ctrl'"), utf8_hex($P, "SELECT v FROM band WHERE name = 'ctrl'"),
	'a value with a control character and ö arrives exactly');
is(sq($C, "SELECT octet_length(v) FROM band WHERE name = 'ctrl'"), '8', '  (8 bytes in LATIN1)');
is(rows($C, 'label'), '("Bronze Künstler")', 'the label came along (documents/ with ü in the path)');
is(sq($C, "SELECT count(*) FROM band WHERE name = 'price'"), '0', 'nothing of the Failed update was applied');

like(sq($C, "SELECT note FROM eventstream.sync_log WHERE remote_docname = 'price'"),
	qr/^no data kept: a character this database cannot hold$/, '  its note says no data was kept');
my ($ret, $out, $err) = q_try($C, "SELECT eventstream.resync(id) FROM eventstream.sync_log WHERE remote_docname = 'price'");
isnt($ret, 0, 'resync() of it refuses');
like($err, qr/has no data to apply again.*\n.*DETAIL:  character U\+20AC.*\n.*HINT:  .*eventstream\.refetch\(/s, '  and names refetch()');

# Once the producer holds something LATIN1 can, refetch() brings it.
sq($P, "UPDATE band SET v = '5 EUR' WHERE name = 'price'");
is(sq($C, "SELECT eventstream.refetch('$P->{url}', 'public.band', 'price')"), 'Synced', 'refetch() of the document: Synced');
is(rows($C, 'band', "name = 'price'"), '(price,"5 EUR",)', '  with the producer\'s values');
is(sq($C, "SELECT eventstream.refetch('$P->{url}', 'public.band', 'Motörhead')"), 'Synced',
	'refetch() of a document with ö in its name');

# The producer refuses requests it cannot read.
my ($status, $body) = api_get($P, $key, $secret, 'documents/public.band/%FF');
is($status, '400', 'a path that is not valid UTF-8: 400');
like($body, qr/invalid byte sequence for encoding \\"UTF8\\": 0xff/, '  saying why');
($status, $body) = api_get($P, $key, $secret, 'documents/public.band/Motörhead');
is($status, '200', 'documents/ with a UTF-8 docname: 200');
like($body, qr/"v": "Lemmy Kilmister"/, '  the document');

######################################################################
# A LATIN1 producer, a UTF8 consumer
######################################################################

my $P1 = add_site($node, 'prod_latin1', encoding => 'LATIN1');
my $C8 = add_site($node, 'cons_utf8', encoding => 'UTF8');
sq($P1, $schema . q{
	INSERT INTO band (name, v) VALUES ('Motörhead', 'Lemmy');
	INSERT INTO straße VALUES ('Straße 1', 'ß');
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
sq($C8, $schema . q{
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
});
my ($key1, $secret1) = key_pair($P1, 'branch');
($ret, $out, $err) = q_try($C8, "SELECT eventstream.add_producer(producer_url => '$P1->{url}', "
	  . "api_key => '$key1', api_secret => '$secret1', subscriber => 'applier', tables => ARRAY['band', '\"straße\"'])");
is($ret, 0, 'add_producer from the UTF8 consumer to the LATIN1 producer') or diag($err);
is(sq($P1, "SELECT string_agg(ref_table, ',' ORDER BY ref_table) FROM eventstream.consumer_table "
	  . "WHERE consumer_url = '$C8->{url}'"),
	'public."straße",public.band', 'the LATIN1 producer registered both tables, names intact');
sq($P1, "SELECT eventstream.approve('$C8->{url}', t) FROM unnest(ARRAY['band', 'straße']) t");
ok(wait_query($C8, "SELECT count(*) FROM eventstream.producer_table WHERE producer_url = '$P1->{url}' "
		  . "AND status = 'Approved' AND NOT snapshot_pending", '2', 60),
	'both tables approved and their initial sync done')
  or diag(tables_state($C8));
is(utf8_hex($C8, "SELECT name FROM band WHERE v = 'Lemmy'"), utf8_hex($P1, "SELECT name FROM band WHERE v = 'Lemmy'"),
	'initial sync: Motörhead arrives exactly from the LATIN1 producer');
is(rows($C8, 'straße'), '("Straße 1",ß)', 'initial sync of straße from the LATIN1 producer');

sq($P1, q{
	BEGIN;
	INSERT INTO label VALUES ('Bronze Künstler');
	INSERT INTO band VALUES ('Björk', 'Homogenic', 'Bronze Künstler');
	UPDATE band SET v = 'Lemmy Kilmister' WHERE name = 'Motörhead';
	COMMIT;
});
ok(wait_query($C8, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Synced' "
		  . "AND remote_docname IN ('Björk', 'Motörhead') AND coalesce(note, '') NOT LIKE 'initial sync%'", '2', 60),
	'the updates from the LATIN1 producer are Synced');
is(utf8_hex($C8, "SELECT name || '/' || v || '/' || label FROM band WHERE name = 'Björk'"),
	utf8_hex($P1, "SELECT name || '/' || v || '/' || label FROM band WHERE name = 'Björk'"),
	'Björk arrives exactly, with its label');
is(utf8_hex($C8, "SELECT v FROM band WHERE name = 'Motörhead'"), utf8_hex($P1, "SELECT v FROM band WHERE name = 'Motörhead'"),
	'the Update of Motörhead applied');
is(rows($C8, 'label'), '("Bronze Künstler")', 'the label came along (documents/ from the LATIN1 producer)');
is(sq($C8, "SELECT count(*) FROM eventstream.producer WHERE last_error IS NOT NULL"), '0', 'no producer error');

# The LATIN1 producer: bodies it sends are UTF-8, errors too; a character
# it cannot hold is a 400.
($status, $body) = api_get($P1, $key1, $secret1, 'documents/public.band/Zoë');
is($status, '404', 'a document the LATIN1 producer does not have: 404');
like($body, qr/document \\"Zoë\\" of table \\"public.band\\" does not exist/, '  its error in UTF-8');
($status, $body) = api_get($P1, $key1, $secret1, 'documents/public.band/5%E2%82%AC');
is($status, '400', 'a docname the LATIN1 producer cannot hold: 400');
like($body, qr/character with byte sequence 0xe2 0x82 0xac in encoding \\"UTF8\\" has no equivalent in encoding \\"LATIN1\\"/,
	'  saying why');

done_testing();
