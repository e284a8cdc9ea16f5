# The producer serves like logical replication: a document that a change
# moves out of a subscription's condition is deleted on the consumer (the
# change is served as a Delete, as logical replication turns an UPDATE out
# of a row filter into a DELETE), and one moved back in is created again
# with its whole current state; several moves in one transaction end as
# the transaction left the documents.  A rejection in the middle of a
# producer transaction applies from where it is made: the rows written
# before it (in that transaction and in transactions committed before it)
# still reach the consumer, those written after it do not, as with
# ALTER PUBLICATION.
#
# Two real sites talking HTTP on loopback (and a second consumer database
# on the consumer's node), set up as in 005_consumer.pl.  Nothing sleeps a
# fixed time: settle() waits, with a deadline, until the consumer's worker
# has applied and acknowledged everything the producer logged, then
# eventstream.sync_now() pulls what is left; other waits poll too.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

my $schema = q{
	CREATE TABLE note (name text PRIMARY KEY, title text, public boolean NOT NULL DEFAULT false, content text);
	CREATE TABLE item (name text PRIMARY KEY, v text);
};

my $P = add_site(new_node('producer'), 'site');
my $cnode = new_node('consumer');
my $C = add_site($cnode, 'site');
my $S2 = add_site($cnode, 'site2');

sq($P, $schema . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
$cnode->safe_psql('postgres', 'CREATE ROLE applier');
foreach my $s ($C, $S2)
{
	sq($s, $schema . 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;');
}

# Apply what the producer logged for $C.  Its worker pulls as soon as the
# producer commits; two sessions pulling one page of a conditioned
# subscription can leave the producer's tracking of what the consumer holds
# wrong (docs/limitations.md), so sync_now() pulls only once the worker has
# applied and acknowledged everything.
sub settle
{
	wait_query($P, "SELECT updates_waiting FROM eventstream.consumer_status WHERE consumer_url = '$C->{url}'",
		'0', 60)
	  or diag('the consumer did not acknowledge every update within 60 s');
	sync_now($C, $P->{url});
}

# Register a consumer site for note (with the condition doc.public) and
# item, and have the producer approve both.
sub subscribe_site
{
	my ($s) = @_;
	my ($key, $secret) = key_pair($P, 'branch');
	sq($s, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
		  . "subscriber => 'applier', tables => ARRAY['note', 'item'])");
	sq($P, "SELECT eventstream.approve('$s->{url}', 'note'); SELECT eventstream.approve('$s->{url}', 'item')");
	ok(wait_query($s, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table",
		'Approved,Approved', 60), "$s->{name}: approved");
	sq($s, "SELECT eventstream.subscribe('$P->{url}', 'note', condition => 'doc.public')");
	is(sq($P, "SELECT condition || ' ' || status FROM eventstream.consumer_table "
		  . "WHERE consumer_url = '$s->{url}' AND ref_table = 'public.note'"),
		'doc.public Approved', "$s->{name}: the condition reached the producer, still approved");
}
subscribe_site($C);
subscribe_site($S2);

# The consumer's sync log of a note, oldest first: "type:status,...".
sub note_log
{
	my ($name) = @_;
	return sq($C, "SELECT coalesce(string_agg(update_type || ':' || status, ',' ORDER BY id), '') FROM eventstream.sync_log "
		  . "WHERE remote_ref_table = 'public.note' AND remote_docname = '$name'");
}

######################################################################
# A. Out of the condition: a Delete on the consumer; back in: the whole
#    current document
######################################################################

sq($P, q{
	INSERT INTO note VALUES ('N1', 'one', true, 'c1'), ('N2', 'two', false, 'c1');
});
settle();
is(rows($C, 'note'), rows($P, 'note', 'public'), 'A: the public note arrives, the private one does not');

sq($P, "UPDATE note SET public = false, content = 'c2' WHERE name = 'N1'");
my $out_id = sq($P, "SELECT max(id) FROM eventstream.update_log WHERE docname = 'N1'");
settle();
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N1'"), '0',
	'A: a note updated from public to not public is deleted on the consumer');
is(note_log('N1'), 'Create:Synced,Delete:Synced', 'A: the consumer received it as a Delete, once');
is(sq($C, "SELECT update_log_id FROM eventstream.sync_log WHERE remote_docname = 'N1' AND update_type = 'Delete'"),
	$out_id, "A: the Delete carries the id of the producer's Update that moved it out");

sq($P, "UPDATE note SET content = 'c3' WHERE name = 'N1'");
settle();
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N1'") . ' ' . note_log('N1'), '0 Create:Synced,Delete:Synced',
	'A: changes while it is out are not served');

sq($P, "UPDATE note SET public = true, title = 'one again' WHERE name = 'N1'");
settle();
is(rows($C, 'note', "name = 'N1'"), rows($P, 'note', "name = 'N1'"),
	'A: back to public, it is created again with its current values (those changed while out included)');
is(note_log('N1'), 'Create:Synced,Delete:Synced,Create:Synced', 'A: as a Create');

sq($P, "UPDATE note SET content = 'c4' WHERE name = 'N1'");
settle();
is(rows($C, 'note', "name = 'N1'"), rows($P, 'note', "name = 'N1'"), 'A: and its later updates arrive');

######################################################################
# B. Several moves in one transaction
######################################################################

sq($P, q{INSERT INTO note VALUES ('N3', 'three', true, 'c1'), ('N5', 'five', true, 'c1'), ('N6', 'six', true, 'c1')});
settle();
is(sq($C, "SELECT string_agg(name, ',' ORDER BY name) FROM note"), 'N1,N3,N5,N6', 'B: the public notes are there');

sq($P, q{
	BEGIN;
	UPDATE note SET public = false WHERE name = 'N3';
	UPDATE note SET public = true, content = 'now public' WHERE name = 'N2';
	UPDATE note SET public = false WHERE name = 'N5';
	UPDATE note SET public = true, content = 'out and in' WHERE name = 'N5';
	UPDATE note SET content = 'in and out' WHERE name = 'N6';
	UPDATE note SET public = false WHERE name = 'N6';
	COMMIT;
});
settle();
is(rows($C, 'note'), rows($P, 'note', 'public'),
	'B: after one transaction of moves the consumer has exactly the public notes, with their values');
is(note_log('N3'), 'Create:Synced,Delete:Synced', 'B: the note moved out was deleted');
# (its unread history from its Create, or the whole document as a Create
# when a pull of the consumer's other session served that history first)
like(note_log('N2'), qr/^Create:Synced(,Update:Synced)?$/, 'B: the note moved in was created');
is(note_log('N6'), 'Create:Synced,Delete:Synced', 'B: the note changed then moved out was deleted, once');

# Deleted while it is out: the consumer, which no longer has it, hears
# nothing; one deleted while it is in is deleted.
sq($P, "DELETE FROM note WHERE name IN ('N3', 'N5')");
settle();
is(note_log('N3'), 'Create:Synced,Delete:Synced', 'B: a note deleted while out is not mentioned again');
is(sq($C, "SELECT count(*) FROM note WHERE name = 'N5'"), '0', 'B: a note deleted while in is deleted');

######################################################################
# C. reject() in the middle of a producer transaction
######################################################################

# item is approved for both consumers, so the producer logs the rows
# written after the rejection too (for site2).
sq($P, "INSERT INTO item VALUES ('I0', 'committed before, not pulled yet')");
sq($P, qq{
	BEGIN;
	INSERT INTO item VALUES ('I1', 'before reject');
	SELECT eventstream.reject('$C->{url}', 'item');
	INSERT INTO item VALUES ('I2', 'after reject');
	COMMIT;
});
sq($P, "INSERT INTO item VALUES ('I3', 'committed after')");
is(sq($P, "SELECT string_agg(docname, ',' ORDER BY id) FROM eventstream.update_log WHERE ref_table = 'public.item'"),
	'I0,I1,I2,I3', 'C: the producer logged every item (approved for site2)');
sq($P, "INSERT INTO note VALUES ('C-barrier', 'after the items', true, 'x')");
settle();
is(sq($C, "SELECT count(*) FROM note WHERE name = 'C-barrier'"), '1', 'C: a later change of another table arrived');
is(sq($C, "SELECT string_agg(name, ',' ORDER BY name) FROM item"), 'I0,I1',
	'C: the rows written before the rejection reach the consumer, those after it do not');
is(sq($C, "SELECT string_agg(remote_docname || ':' || status, ',' ORDER BY id) FROM eventstream.sync_log "
	  . "WHERE remote_ref_table = 'public.item'"),
	'I0:Synced,I1:Synced', 'C: its sync log has exactly those');
is(sq($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.item'"), 'Rejected',
	'C: the consumer shows the table Rejected');
ok(wait_query($S2, "SELECT string_agg(name, ',' ORDER BY name) FROM item", 'I0,I1,I2,I3', 60),
	'C: the consumer still approved gets every item');

# The only consumer of a table rejected in the middle of a transaction:
# the capture trigger goes with the rejection, the rows before it arrive.
sq($P, "SELECT eventstream.reject('$S2->{url}', 'item')");
sq($P, "SELECT eventstream.approve('$C->{url}', 'item')");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE ref_table = 'public.item'", 'Approved', 60),
	'C: approved again');
ok(wait_query($C, "SELECT string_agg(name, ',' ORDER BY name) FROM item", 'I0,I1,I2,I3', 60),
	'C: approved again, the initial sync brings the items');
sq($P, qq{
	BEGIN;
	INSERT INTO item VALUES ('I4', 'before reject');
	SELECT eventstream.reject('$C->{url}', 'item');
	INSERT INTO item VALUES ('I5', 'after reject');
	COMMIT;
});
is(sq($P, "SELECT count(*) FROM pg_trigger WHERE tgname = 'eventstream_capture' AND tgrelid = 'item'::regclass"), '0',
	'C: no capture trigger is left on the table');
sq($P, "INSERT INTO note VALUES ('C-barrier-2', 'after the items', true, 'x')");
settle();
is(sq($C, "SELECT count(*) FROM note WHERE name = 'C-barrier-2'"), '1', 'C: a later change of another table arrived');
is(sq($C, "SELECT string_agg(name, ',' ORDER BY name) FROM item"), 'I0,I1,I2,I3,I4',
	'C: the row written before the rejection arrives, the one after it does not');

$cnode->stop;
$P->{node}->stop;
done_testing();
