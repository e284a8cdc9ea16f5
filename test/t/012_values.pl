# Every value arrives exactly as written: two real sites talking HTTP, a
# table with a column of every built-in type family, written on the
# producer by a session with unusual output settings (DateStyle,
# IntervalStyle, extra_float_digits, bytea_output, TimeZone), applied by a
# consumer whose database has other unusual settings, through every path a
# value takes: the initial sync (snapshot pages), Creates, Updates (diffs)
# and Deletes, into a table the straight path writes (no triggers) and one
# the statements write (it has a trigger).  Each row's text, printed in the
# same fixed settings on both sides, must be the same.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use EsSites;

# The producer's database writes and serves in odd styles; the consumer's
# reads in others.  Neither may change a value.
my $P = add_site(new_node('producer'), 'site',
	settings => { TimeZone => 'America/New_York', DateStyle => 'SQL, DMY', IntervalStyle => 'sql_standard',
				  extra_float_digits => '-10', bytea_output => 'escape' });
my $C = add_site(new_node('consumer'), 'site',
	settings => { TimeZone => 'Asia/Kolkata', DateStyle => 'German, DMY', IntervalStyle => 'iso_8601',
				  extra_float_digits => '0', bytea_output => 'escape' });

my $types = q{
	CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
	CREATE DOMAIN posnum AS numeric CHECK (VALUE > 0);
	CREATE TYPE pair AS (a int, b text);
};
my $columns = q{(
	id int, tag text,
	n numeric, f8 float8, f4 real, i2 smallint, i8 bigint, bo boolean,
	ts timestamp, tstz timestamptz, d date, t time, ttz timetz, iv interval,
	b bytea, ia int[], ta text[], fa float8[], j json, jb jsonb,
	e mood, dom posnum, nr numrange, tr tstzrange, u uuid, ip inet, cn cidr,
	m money, vb varbit, tx text, ch char(5), p pair, pt point, mac macaddr,
	PRIMARY KEY (id, tag))};
my @tables = ('vals', 'vals_t');

sq($P, $types . join('', map { "CREATE TABLE $_ $columns;" } @tables) . q{
	CREATE ROLE branch;
	GRANT SELECT ON ALL TABLES IN SCHEMA public TO branch;
});
sq($C, $types . join('', map { "CREATE TABLE $_ $columns;" } @tables) . q{
	CREATE ROLE applier;
	GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO applier;
	-- A trigger makes the apply write vals_t with statements (vals takes
	-- the straight path).
	CREATE TABLE seen (n int);
	GRANT INSERT ON seen TO applier;
	CREATE FUNCTION note_row() RETURNS trigger LANGUAGE plpgsql AS
		$$BEGIN INSERT INTO public.seen VALUES (1); RETURN NEW; END$$;
	CREATE TRIGGER note_row BEFORE INSERT OR UPDATE ON vals_t FOR EACH ROW EXECUTE FUNCTION note_row();
	ALTER TABLE vals_t ENABLE ALWAYS TRIGGER note_row;
});

# Run $sql on the producer once per table (TBL stands for its name), in a
# session with odd output settings of its own.
sub on_both
{
	my ($sql) = @_;
	sq($P, "SET DateStyle = 'Postgres, MDY'; SET IntervalStyle = 'sql_standard'; SET extra_float_digits = -15;"
		  . " SET bytea_output = 'escape'; SET TimeZone = 'Pacific/Chatham';"
		  . join('', map { my $s = $sql; $s =~ s/TBL/$_/g; $s } @tables));
}

# All 256 bytes, in a value every row can use.
my $all_bytes = "(SELECT string_agg(lpad(to_hex(i), 2, '0'), '' ORDER BY i) FROM generate_series(0, 255) i)";

# Rows the producer has before the consumer subscribes: the initial sync
# copies them (snapshot pages).
on_both(qq{
	INSERT INTO TBL VALUES (1, 'a, "b"',
		'1234567890123456789012345.678901234567890123456789', 0.1::float8 + 0.2, '1.2345678', -32768, 9223372036854775807, true,
		'2026-01-31 10:11:12.123456', '2026-01-31 10:11:12.5+00', '2026-01-31', '23:59:59.999999', '10:11:12+05:30',
		'-1 -2:00:00',
		decode($all_bytes, 'hex'), '{1,NULL,3}', '{"a b","c,d",NULL,"\\"q\\"",""}', ARRAY[0.1::float8 + 0.2, '-0', 'NaN'],
		'{"z": 1,  "a": 2, "a": 3, "u": "\\u00e9\\n"}', '{"k": [1, 2.50, null], "s": "x"}',
		'happy', '0.0000000001', '[1.5,2.25)', '[2026-01-01 00:00+00,2026-02-01 00:00+00)',
		'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.1.5/24', '10.0.0.0/8',
		'12.34', B'10110', E'line1\\nline2 ''quoted'' \\\\ back\\ttab', 'ab', ROW(1, 'x, "y"'), '(1.5,-2.25)',
		'08:00:2b:01:02:03');
	INSERT INTO TBL (id, tag, n, f8, f4, i8, iv, tx, j, jb, ts, tstz, d)
		VALUES (2, 'max', '-0.0000000000000000000000000000000000000001', '1.7976931348623157e308', '3.4028235e38',
				-9223372036854775808, '178000000 years', '', 'null', 'null',
				'4713-01-01 00:00:00 BC', '294276-12-31 23:59:59.999999+00', 'infinity');
	INSERT INTO TBL (id, tag, n, f8, f4, fa, jb, j) VALUES (3, 'zero', 'NaN', '-0', '-0', '{-0,1e-300}', '"null"', '""');
});

my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['vals', 'vals_t'])");
sq($P, join('', map { "SELECT eventstream.approve('$C->{url}', '$_');" } @tables));
ok(wait_query($C, "SELECT string_agg(status, ',' ORDER BY ref_table) FROM eventstream.producer_table",
		'Approved,Approved', 60), 'both subscriptions are approved');

# The text of every row of a table, each column in fixed settings.
sub texts
{
	my ($s, $table) = @_;
	return sq($s, "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; SET IntervalStyle = 'postgres';"
		  . " SET extra_float_digits = 3; SET bytea_output = 'hex';"
		  . " SELECT string_agg(format('%s', whole), '<row>' ORDER BY id) FROM $table whole");
}

# Sync, then compare both tables row by row; also that no update failed.
sub compare
{
	my ($what) = @_;
	sync_now($C, $P->{url});
	is(sq($C, "SELECT count(*) FROM eventstream.sync_log WHERE status <> 'Synced'"), '0', "$what: no update failed")
	  or diag(sq($C, "SELECT string_agg(remote_docname || ': ' || error, E'\\n') FROM eventstream.sync_log WHERE status <> 'Synced'"));
	foreach my $table (@tables)
	{
		my @want = split /<row>/, texts($P, $table);
		my @got = split /<row>/, texts($C, $table);
		is(scalar(@got), scalar(@want), "$what: $table has the producer's number of rows");
		for my $i (0 .. $#want)
		{
			is($got[$i] // '', $want[$i], "$what: $table row " . ($i + 1) . " is the producer's");
		}
	}
}

ok(wait_query($C, "SELECT count(*) FROM vals", '3', 60), 'the initial sync copied the rows there were');
compare('initial sync');

# Creates through the stream.
on_both(qq{
	INSERT INTO TBL (id, tag, f8, f4, n, fa) VALUES (4, 'inf', 'Infinity', '-Infinity', 'Infinity', '{Infinity,-Infinity,5e-324}');
	INSERT INTO TBL (id, tag, f8, f4, tr, nr) VALUES (5, 'tiny', '4.9406564584124654e-324', '1.4e-45', 'empty', '(,)');
	INSERT INTO TBL (id, tag) VALUES (6, 'nulls');
	INSERT INTO TBL (id, tag, f8, jb, j) VALUES (7, 'pi', pi(), 'null', ' [1, 2 ] ');
});
compare('creates');

# Updates: every kind of value changes, to another value, to a jsonb
# 'null', from a jsonb 'null' to SQL NULL, json whose text alone changes.
on_both(q{
	UPDATE TBL SET f8 = 1e-300, f4 = '1.17549435e-38', n = '0.1', jb = 'null', j = '{"z": 1, "a": 2, "a": 3, "u": "\u00e9\n"}',
		iv = '-1 day +02:03:04.5', b = '\x00ff', fa = '{0.30000000000000004}', tstz = '2026-06-30 23:59:59.999999-03'
		WHERE id = 1;
	UPDATE TBL SET jb = NULL, j = NULL, f8 = '-0' WHERE id = 2;
	UPDATE TBL SET jb = '{}', f8 = 'NaN' WHERE id = 3;
	UPDATE TBL SET jb = 'null', j = 'null' WHERE id = 6;
	UPDATE TBL SET jb = '[null]' WHERE id = 7;
});
compare('updates');
is(sq($C, "SELECT jb IS NULL AND j IS NULL FROM vals WHERE id = 2"), 't', "SQL NULL arrives as SQL NULL");
is(sq($C, "SELECT jb = 'null'::jsonb AND j::text = 'null' FROM vals WHERE id = 6"), 't',
	"a jsonb 'null' arrives as a jsonb 'null', not SQL NULL");
isnt(sq($C, "SELECT count(*) FROM seen"), '0', 'the statements wrote vals_t (its trigger fired)');

# Deletes by a composite key of awkward text.
on_both(q{DELETE FROM TBL WHERE id IN (1, 4);});
compare('deletes');

done_testing();
