# One subscribed table that the producer can no longer serve (SELECT
# revoked, the table dropped or its primary key dropped) does not stop a consumer from
# changing its other subscriptions: subscribe() and unsubscribe() succeed,
# warn about the table refused and record why in producer_table.error;
# unsubscribe() of that very table succeeds; the other tables keep
# streaming.  Subscribing to the refused table itself still fails.  Two
# sites (two databases of one node) talking HTTP.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $node = new_node('sites');
$node->safe_psql('postgres', 'CREATE ROLE branch; CREATE ROLE applier');
my $P = add_site($node, 'prod');
my $C = add_site($node, 'cons');

my $tables = join '', map { "CREATE TABLE $_ (id int PRIMARY KEY, v text);\n" } qw(ta tb tc td te);
sq($P, $tables . 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;');
sq($C, $tables . 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;');

my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['ta', 'tb', 'td', 'te'])");
sq($P, join '; ', map { "SELECT eventstream.approve('$C->{url}', '$_')" } qw(ta tb td te));
ok(wait_query($C, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table",
		'Approved,Approved,Approved,Approved', 60), 'four tables approved');
sq($P, "INSERT INTO ta VALUES (1, 'a1'); INSERT INTO tb VALUES (1, 'b1')");
ok(wait_query($C, 'SELECT (SELECT count(*) FROM ta) + (SELECT count(*) FROM tb)', '2', 60),
	'both tables stream');

# The consumer's calls, as (ret, stderr).
sub call
{
	my ($sql) = @_;
	my ($ret, $out, $err) = q_try($C, $sql);
	return ($ret, $err);
}

######################################################################
# SELECT revoked on one of the subscribed tables
######################################################################

sq($P, 'REVOKE SELECT ON tb FROM branch');
my ($ret, $err) = call("SELECT eventstream.subscribe('$P->{url}', 'tc')");
is($ret, 0, 'after REVOKE on tb, subscribe() to another table succeeds') or diag($err);
like($err, qr/WARNING:  producer "\Q$P->{url}\E" cannot serve subscribed table "public\.tb"/,
	'  warning about the table refused');
like($err, qr/role "branch" cannot read table "public\.tb"/, '  saying why');
unlike($err, qr/"public\.t[acde]"/, '  and about no other table');
is(sq($C, "SELECT ref_table || ': ' || error FROM eventstream.producer_table WHERE error IS NOT NULL"),
	'public.tb: role "branch" cannot read table "public.tb"', 'producer_table.error says why, for tb only');
is(sq($P, "SELECT string_agg(ref_table || ':' || status, ',' ORDER BY ref_table) FROM eventstream.consumer_table "
	  . "WHERE NOT unsubscribed"),
	'public.ta:Approved,public.tb:Approved,public.tc:Pending,public.td:Approved,public.te:Approved',
	'the producer registered tc and kept tb');

($ret, $err) = call("SELECT eventstream.subscribe('$P->{url}', 'tb')");
isnt($ret, 0, 'subscribe() to the refused table itself fails');
like($err, qr/ERROR:  producer "\Q$P->{url}\E": role "branch" cannot read table "public\.tb"/, '  saying why');

($ret, $err) = call("SELECT eventstream.unsubscribe('$P->{url}', 'tb')");
is($ret, 0, 'unsubscribe() of the refused table succeeds') or diag($err);
is($err, '', '  without a warning');
is(sq($P, "SELECT unsubscribed FROM eventstream.consumer_table WHERE ref_table = 'public.tb'"), 't',
	'  and the producer has it unsubscribed');

sq($P, "SELECT eventstream.approve('$C->{url}', 'tc')");
sq($P, "INSERT INTO ta VALUES (2, 'a2'); INSERT INTO tc VALUES (1, 'c1')");
ok(wait_query($C, "SELECT (SELECT string_agg(v, ',' ORDER BY id) FROM ta) || '|' || (SELECT string_agg(v, ',') FROM tc)",
		'a1,a2|c1', 60), 'ta keeps streaming, and tc streams');

######################################################################
# A subscribed table dropped, another without its primary key
######################################################################

sq($P, 'DROP TABLE td; ALTER TABLE te DROP CONSTRAINT te_pkey');
($ret, $err) = call("SELECT eventstream.subscribe('$P->{url}', 'ta', condition => 'doc.id > 2')");
is($ret, 0, 'after DROP of td and of the primary key of te, subscribe() changes the subscription to ta') or diag($err);
like($err, qr/cannot serve subscribed table "public\.td".*table "public\.td" does not exist/s, '  warning about td');
like($err, qr/cannot serve subscribed table "public\.te".*table "public\.te" has no primary key/s, '  and te');
is(sq($P, "SELECT condition FROM eventstream.consumer_table WHERE ref_table = 'public.ta'"), 'doc.id > 2',
	'  the new condition is registered');
foreach my $t (qw(td te))
{
	($ret, $err) = call("SELECT eventstream.unsubscribe('$P->{url}', '$t')");
	is($ret, 0, "unsubscribe() of $t, gone on the producer, succeeds") or diag($err);
	unlike($err, qr/public\.$t"/, '  with no warning about it');
}
is(sq($P, "SELECT string_agg(ref_table, ',' ORDER BY ref_table) FROM eventstream.consumer_table WHERE unsubscribed"),
	'public.tb,public.td,public.te', 'the producer has tb, td and te unsubscribed');
sq($P, "INSERT INTO ta VALUES (3, 'a3'), (0, 'a0'); INSERT INTO tc VALUES (2, 'c2')");
ok(wait_query($C, "SELECT (SELECT string_agg(v, ',' ORDER BY id) FROM ta) || '|' || (SELECT string_agg(v, ',' ORDER BY id) FROM tc)",
		'a1,a2,a3|c1,c2', 60), 'ta (with its condition) and tc keep streaming; the copy the new condition asked for deleted none of the rows it did not bring');
is(sq($C, "SELECT last_error IS NULL FROM eventstream.producer"), 't', 'the consumer has no error');

# Granted again, tb can be subscribed again.
sq($P, 'GRANT SELECT ON tb TO branch');
($ret, $err) = call("SELECT eventstream.subscribe('$P->{url}', 'tb')");
is($ret, 0, 'after GRANT again, subscribe() to tb succeeds') or diag($err);
is(sq($C, "SELECT count(*) FROM eventstream.producer_table WHERE error IS NOT NULL AND NOT unsubscribe"), '0',
	'no subscribed table is reported refused');

done_testing();
