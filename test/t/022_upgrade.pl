# Versions of the extension: META.json agrees with the control file; a
# database updated from 1.0 (ALTER EXTENSION eventstream UPDATE) has the
# same objects as one where 1.1 was installed fresh, and anything the
# update script misses is named; DROP EXTENSION leaves no schema, function
# or event trigger behind; two real sites installed at 1.0 stream, are
# updated with their workers running, and every change made before, during
# and after the update arrives exactly once; and make installcheck runs the
# regression and isolation tests against a running server, the PGXS way.
#
# Nothing sleeps a fixed time hoping: every wait polls for its condition
# with a deadline.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use EsSites;		# wait_until, sq, q_try, wait_query, rows, digest, new_node, add_site, ...

my $src = "$FindBin::RealBin/../..";

######################################################################
# META.json (PGXN Meta Spec 1.0.0) and the control file
######################################################################

my ($control_version) = slurp_file("$src/eventstream.control") =~ /^default_version\s*=\s*'([^']+)'/m;
like($control_version, qr/^\d+\.\d+$/, "the control file's default_version is a version: $control_version");
my $meta = eval { decode_json(slurp_file("$src/META.json")) };
ok($meta, 'META.json parses as JSON') or diag($@);
$meta //= {};
foreach my $k (qw(name abstract version maintainer license provides meta-spec))
{
	ok(defined $meta->{$k}, "META.json has the required key $k");
}
is($meta->{name}, 'eventstream', 'META.json: name');
is($meta->{'meta-spec'}{version}, '1.0.0', 'META.json follows the Meta Spec 1.0.0');
is($meta->{license}, 'postgresql', 'META.json: license postgresql');
is($meta->{version}, "$control_version.0", 'META.json: the distribution version is the control file\'s, as a semantic version');
is($meta->{provides}{eventstream}{version}, "$control_version.0", 'META.json: the extension it provides has that version');
ok(-f "$src/$meta->{provides}{eventstream}{file}", 'META.json: the file it names for the extension exists');
like($meta->{provides}{eventstream}{abstract} // '', qr/\S/, 'META.json: the extension has an abstract');
is($meta->{prereqs}{runtime}{requires}{PostgreSQL}, '15.0.0', 'META.json: PostgreSQL 15 is required to run it');
like($_, qr/^\d+\.\d+\.\d+$/, "META.json: $_ is a semantic version")
  foreach ($meta->{version}, $meta->{provides}{eventstream}{version}, $meta->{prereqs}{runtime}{requires}{PostgreSQL});

######################################################################
# A database updated from 1.0 has the objects of a fresh 1.1
######################################################################

# Every object of the extension, with what defines it, as key => value:
# the extension's row and members, its configuration tables, the schema,
# functions (definition, settings, owner, privileges, comment), relations,
# columns (position among the live ones, type, default, storage, ...),
# constraints, indexes, views, sequences, triggers, policies, rules, types,
# event triggers and initial privileges.
my $objects_sql = q{
WITH ext AS (SELECT * FROM pg_extension WHERE extname = 'eventstream'),
nsp AS (SELECT oid FROM pg_namespace WHERE nspname = 'eventstream'),
rel AS (SELECT c.* FROM pg_class c, nsp WHERE c.relnamespace = nsp.oid)
SELECT key || E'\x01' || coalesce(val, '') FROM (
  SELECT 'extension' AS key,
         format('version %s, schema %s, relocatable %s, owner %s', extversion, extnamespace::regnamespace,
                extrelocatable, extowner::regrole) AS val FROM ext
  UNION ALL
  SELECT 'configuration table ' || t.cfg::regclass, coalesce(t.cond, '')
    FROM ext, unnest(ext.extconfig, ext.extcondition) AS t(cfg, cond)
  UNION ALL
  SELECT 'member ' || pg_describe_object(d.classid, d.objid, d.objsubid), ''
    FROM pg_depend d, ext WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
  UNION ALL
  SELECT 'dependency of the extension on ' || pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid), d.deptype::text
    FROM pg_depend d, ext WHERE d.classid = 'pg_extension'::regclass AND d.objid = ext.oid
  UNION ALL
  SELECT 'schema eventstream',
         format('owner %s, acl %s, comment %s', n.nspowner::regrole, n.nspacl, obj_description(n.oid, 'pg_namespace'))
    FROM pg_namespace n, nsp WHERE n.oid = nsp.oid
  UNION ALL
  SELECT 'initial privileges of ' || pg_describe_object(i.classoid, i.objoid, i.objsubid), i.initprivs::text
    FROM pg_init_privs i WHERE i.privtype = 'e'
     AND EXISTS (SELECT 1 FROM pg_depend d, ext WHERE d.refobjid = ext.oid AND d.deptype = 'e'
                  AND d.classid = i.classoid AND d.objid = i.objoid)
  UNION ALL
  SELECT 'function ' || p.oid::regprocedure,
         format(E'owner %s, acl %s, comment %s\n%s', p.proowner::regrole, p.proacl,
                obj_description(p.oid, 'pg_proc'), pg_get_functiondef(p.oid))
    FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid AND p.prokind IN ('f', 'p', 'w')
  UNION ALL
  SELECT 'aggregate ' || p.oid::regprocedure, obj_description(p.oid, 'pg_proc')
    FROM pg_proc p, nsp WHERE p.pronamespace = nsp.oid AND p.prokind = 'a'
  UNION ALL
  SELECT 'relation ' || c.oid::regclass,
         format('kind %s, persistence %s, owner %s, acl %s, options %s, row security %s/%s, replica identity %s, comment %s',
                c.relkind, c.relpersistence, c.relowner::regrole, c.relacl, c.reloptions,
                c.relrowsecurity, c.relforcerowsecurity, c.relreplident, obj_description(c.oid, 'pg_class'))
    FROM rel c WHERE c.relkind <> 'i'
  UNION ALL
  SELECT 'column ' || c.oid::regclass || '.' || quote_ident(a.attname),
         format('position %s, type %s, not null %s, default %s, identity %s, generated %s, storage %s, collation %s, acl %s, options %s, comment %s',
                row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum), format_type(a.atttypid, a.atttypmod),
                a.attnotnull, pg_get_expr(ad.adbin, ad.adrelid), a.attidentity, a.attgenerated, a.attstorage,
                a.attcollation::regcollation, a.attacl,
                (SELECT array_agg(o) FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\_attver=%'),
                col_description(c.oid, a.attnum))
    FROM rel c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
   WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
  UNION ALL
  SELECT 'constraint ' || quote_ident(co.conname) || ' on '
         || coalesce(co.conrelid::regclass::text, co.contypid::regtype::text),
         format('%s, deferrable %s/%s, comment %s', pg_get_constraintdef(co.oid), co.condeferrable, co.condeferred,
                obj_description(co.oid, 'pg_constraint'))
    FROM pg_constraint co, nsp WHERE co.connamespace = nsp.oid
  UNION ALL
  SELECT 'index ' || i.indexrelid::regclass,
         format('%s, comment %s', pg_get_indexdef(i.indexrelid), obj_description(i.indexrelid, 'pg_class'))
    FROM pg_index i JOIN rel c ON c.oid = i.indrelid
  UNION ALL
  SELECT 'view ' || c.oid::regclass, pg_get_viewdef(c.oid) FROM rel c WHERE c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'sequence ' || s.seqrelid::regclass,
         format('type %s, start %s, increment %s, min %s, max %s, cache %s, cycle %s, owned by %s', s.seqtypid::regtype,
                s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache, s.seqcycle,
                (SELECT pg_describe_object(d.refclassid, d.refobjid, d.refobjsubid) FROM pg_depend d
                  WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid AND d.deptype IN ('a', 'i')))
    FROM pg_sequence s JOIN rel c ON c.oid = s.seqrelid
  UNION ALL
  SELECT 'trigger ' || quote_ident(t.tgname) || ' on ' || t.tgrelid::regclass,
         format('%s, enabled %s, comment %s', pg_get_triggerdef(t.oid), t.tgenabled, obj_description(t.oid, 'pg_trigger'))
    FROM pg_trigger t JOIN rel c ON c.oid = t.tgrelid WHERE NOT t.tgisinternal
  UNION ALL
  SELECT 'policy ' || quote_ident(po.polname) || ' on ' || po.polrelid::regclass,
         format('%s %s to %s using %s check %s', po.polcmd, po.polpermissive, po.polroles::regrole[],
                pg_get_expr(po.polqual, po.polrelid), pg_get_expr(po.polwithcheck, po.polrelid))
    FROM pg_policy po JOIN rel c ON c.oid = po.polrelid
  UNION ALL
  SELECT 'rule ' || quote_ident(r.rulename) || ' on ' || r.ev_class::regclass, pg_get_ruledef(r.oid)
    FROM pg_rewrite r JOIN rel c ON c.oid = r.ev_class WHERE r.rulename <> '_RETURN'
  UNION ALL
  SELECT 'type ' || t.oid::regtype,
         format('kind %s, owner %s, acl %s, labels %s, base %s, comment %s', t.typtype, t.typowner::regrole, t.typacl,
                (SELECT string_agg(e.enumlabel, ',' ORDER BY e.enumsortorder) FROM pg_enum e WHERE e.enumtypid = t.oid),
                t.typbasetype::regtype, obj_description(t.oid, 'pg_type'))
    FROM pg_type t, nsp
   WHERE t.typnamespace = nsp.oid AND t.typelem = 0
     AND (t.typrelid = 0 OR EXISTS (SELECT 1 FROM pg_class c WHERE c.oid = t.typrelid AND c.relkind = 'c'))
  UNION ALL
  SELECT 'event trigger ' || quote_ident(e.evtname),
         format('on %s, tags %s, function %s, enabled %s, owner %s, comment %s', e.evtevent, e.evttags,
                e.evtfoid::regprocedure, e.evtenabled, e.evtowner::regrole, obj_description(e.oid, 'pg_event_trigger'))
    FROM pg_event_trigger e
) o ORDER BY 1
};

# objects($node, $db): the objects of the extension in a database.
sub objects
{
	my ($node, $db) = @_;
	my %o;
	foreach my $row (split /\x02\n?/, $node->safe_psql($db, "SELECT string_agg(x, E'\\x02' ORDER BY x) FROM ($objects_sql) s(x)"))
	{
		my ($k, $v) = split /\x01/, $row, 2;
		$o{$k} = $v;
	}
	return \%o;
}

# differences($want, $got): what differs, each line naming the object.
sub differences
{
	my ($want, $got) = @_;
	my @d;
	foreach my $k (sort keys %$want)
	{
		if (!exists $got->{$k}) { push @d, "missing after the update: $k"; }
		elsif ($got->{$k} ne $want->{$k})
		{
			push @d, "differs after the update: $k\n    fresh:   $want->{$k}\n    updated: $got->{$k}";
		}
	}
	push @d, "left by the update (not in a fresh install): $_" foreach grep { !exists $want->{$_} } sort keys %$got;
	return @d;
}

my $node = new_node('versions');
$node->safe_psql('postgres', 'CREATE DATABASE fresh; CREATE DATABASE updated; CREATE DATABASE old');
$node->safe_psql('fresh', 'CREATE EXTENSION eventstream');
is($node->safe_psql('fresh', "SELECT extversion || ' ' || extnamespace::regnamespace FROM pg_extension WHERE extname = 'eventstream'"),
	"$control_version pg_catalog", "CREATE EXTENSION installs $control_version, its own schema pg_catalog");
is($node->safe_psql('fresh', "SELECT count(*) FROM pg_depend WHERE classid = 'pg_namespace'::regclass "
	  . "AND objid = 'eventstream'::regnamespace AND deptype = 'e'"),
	'1', 'and schema eventstream is a member of the extension');

$node->safe_psql('updated', "CREATE EXTENSION eventstream VERSION '1.0'");
is($node->safe_psql('updated', "SELECT extversion || ' ' || extnamespace::regnamespace FROM pg_extension WHERE extname = 'eventstream'"),
	'1.0 eventstream', 'VERSION 1.0 installs 1.0, in its own schema eventstream as before');
$node->safe_psql('updated', 'ALTER EXTENSION eventstream UPDATE');
is($node->safe_psql('updated', "SELECT extversion FROM pg_extension WHERE extname = 'eventstream'"),
	$control_version, "ALTER EXTENSION eventstream UPDATE updates 1.0 to $control_version");

my $fresh = objects($node, 'fresh');
cmp_ok(scalar(keys %$fresh), '>', 500, 'the comparison sees the objects of a fresh install (' . scalar(keys %$fresh) . ')');
my @diff = differences($fresh, objects($node, 'updated'));
is(scalar(@diff), 0, 'the updated database has exactly the objects of a fresh install')
  or diag(join("\n", @diff));

# The comparison names what an incomplete update script would leave out
# or behind: a column, a function's setting, a comment, a dropped index.
$node->safe_psql('updated', q{
	ALTER TABLE eventstream.site ADD COLUMN leftover text;
	ALTER FUNCTION eventstream.approve(text, text) SET work_mem = '1MB';
	COMMENT ON VIEW eventstream.producer_status IS NULL;
	DROP INDEX eventstream.sync_log_failed_idx;
});
is_deeply([ map { /^[^:]+: (.*?)(\n|$)/ ? $1 : $_ } differences($fresh, objects($node, 'updated')) ],
	[ 'function eventstream.approve(text,text)', 'index eventstream.sync_log_failed_idx',
	  'relation eventstream.producer_status', 'column eventstream.site.leftover' ],
	'a changed function, a lost index and comment, an extra column are each named');

######################################################################
# DROP EXTENSION leaves nothing behind
######################################################################

# leftovers($db): the schema, functions of the library and event triggers
# left in a database.
sub leftovers
{
	my ($db) = @_;
	return $node->safe_psql($db, q{
		SELECT (SELECT count(*) FROM pg_namespace WHERE nspname = 'eventstream') || ' schema, '
			|| (SELECT count(*) FROM pg_proc WHERE probin LIKE '%eventstream%' OR proname LIKE '%eventstream%') || ' functions, '
			|| (SELECT count(*) FROM pg_event_trigger) || ' event triggers'});
}

$node->safe_psql('fresh', 'CREATE TABLE t (id int PRIMARY KEY)');
$node->safe_psql('fresh', 'DROP EXTENSION eventstream CASCADE');
is(leftovers('fresh'), '0 schema, 0 functions, 0 event triggers',
	'DROP EXTENSION eventstream CASCADE of a fresh install leaves no schema, function or event trigger');
is($node->safe_psql('fresh', 'SELECT count(*) FROM t'), '0', "and the user's table stays");
$node->safe_psql('fresh', 'CREATE EXTENSION eventstream');
$node->safe_psql('fresh', 'DROP EXTENSION eventstream');
is(leftovers('fresh'), '0 schema, 0 functions, 0 event triggers', 'so the extension can be made and dropped again');

$node->safe_psql('updated', 'DROP EXTENSION eventstream');
is(leftovers('updated'), '0 schema, 0 functions, 0 event triggers',
	'DROP EXTENSION of a site updated from 1.0 leaves no schema either (the update made it a member)');

$node->safe_psql('old', "CREATE EXTENSION eventstream VERSION '1.0'");
$node->safe_psql('old', 'DROP EXTENSION eventstream');
is(leftovers('old'), '1 schema, 0 functions, 0 event triggers', 'whereas dropping 1.0 leaves its schema, as it always did');
$node->stop;

######################################################################
# Two sites installed at 1.0, updated while streaming
######################################################################

my $P = add_site(new_node('producer'), 'site', version => '1.0');
my $C = add_site(new_node('consumer'), 'site', version => '1.0');
is(sq($_, "SELECT extversion FROM pg_extension WHERE extname = 'eventstream'"), '1.0', "$_->{name} is at 1.0")
  foreach ($P, $C);

sq($P, q{
	CREATE TABLE item (id int PRIMARY KEY, v int NOT NULL);
	CREATE ROLE reader;
	GRANT SELECT ON item TO reader;
});
$C->{node}->safe_psql('postgres', 'CREATE ROLE applier');
# The consumer keeps every change the apply makes to item, so that one
# made twice shows.
sq($C, q{
	CREATE TABLE item (id int PRIMARY KEY, v int NOT NULL);
	CREATE TABLE applied (n bigint GENERATED ALWAYS AS IDENTITY, id int, op text, v int);
	CREATE FUNCTION keep_applied() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO public.applied (id, op, v)
			VALUES (CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END, TG_OP,
					CASE TG_OP WHEN 'DELETE' THEN OLD.v ELSE NEW.v END);
		RETURN NULL;
	END $$;
	CREATE TRIGGER keep_applied AFTER INSERT OR UPDATE OR DELETE ON item
		FOR EACH ROW EXECUTE FUNCTION keep_applied();
	ALTER TABLE item ENABLE ALWAYS TRIGGER keep_applied;
	GRANT SELECT, INSERT, UPDATE, DELETE ON item TO applier;
	GRANT INSERT ON applied TO applier;
});
my ($key, $secret) = key_pair($P, 'reader');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
sq($P, "SELECT eventstream.approve('$C->{url}', 'item')");
ok(wait_query($C, "SELECT status FROM eventstream.producer_table WHERE producer_url = '$P->{url}'", 'Approved', 30),
	'the subscription is approved, at 1.0');

sq($P, 'INSERT INTO item SELECT g, 0 FROM generate_series(1, 20) g');
ok(wait_query($C, 'SELECT count(*) FROM item', '20', 60), 'changes stream between the two 1.0 sites');

# worker_pid($s): the pid of a site's worker.
sub worker_pid
{
	my ($s) = @_;
	return sq($s, "SELECT pid FROM pg_stat_activity WHERE backend_type = 'eventstream worker' AND datname = '$s->{db}'");
}
my %pid_before = map { $_->{name} => worker_pid($_) } ($P, $C);

# Around the producer's update: changes before it, in its transaction
# (captured by the triggers 1.0 made, then by those of 1.1) and after it;
# the consumer's worker pulls all along.
sq($P, 'INSERT INTO item SELECT g, 0 FROM generate_series(21, 30) g');
sq($P, q{
	BEGIN;
	INSERT INTO item SELECT g, 0 FROM generate_series(31, 40) g;
	ALTER EXTENSION eventstream UPDATE;
	INSERT INTO item SELECT g, 0 FROM generate_series(41, 50) g;
	UPDATE item SET v = v + 1 WHERE id <= 10;
	COMMIT;
});
sq($P, 'INSERT INTO item SELECT g, 0 FROM generate_series(51, 60) g');
# The consumer's update, while its worker applies those.
sq($C, 'ALTER EXTENSION eventstream UPDATE');
sq($P, 'INSERT INTO item SELECT g, 0 FROM generate_series(61, 80) g');
sq($P, 'DELETE FROM item WHERE id <= 5');
sq($P, 'UPDATE item SET v = v + 1 WHERE id BETWEEN 6 AND 10');

is(sq($_, "SELECT extversion FROM pg_extension WHERE extname = 'eventstream'"), $control_version,
	"$_->{name} is updated to $control_version") foreach ($P, $C);
ok(wait_query($C, 'SELECT count(*) || \' \' || sum(v) FROM item', '75 10', 60),
	'every change made before, during and after the updates arrives');
is(digest($C, 'item'), digest($P, 'item'), 'the consumer has exactly the rows of the producer');
is(sq($C, "SELECT string_agg(op || ' ' || n, ', ' ORDER BY op) FROM (SELECT op, count(*) AS n FROM applied GROUP BY op) s"),
	'DELETE 5, INSERT 80, UPDATE 15', 'each change was applied once: 80 inserts, 15 updates, 5 deletes');
is(sq($C, "SELECT count(*) FROM (SELECT id FROM applied WHERE op = 'INSERT' GROUP BY id HAVING count(*) <> 1) s"),
	'0', 'no row was inserted twice');
is(sq($C, "SELECT count(*) || ' ' || count(DISTINCT update_log_id) || ' ' || count(*) FILTER (WHERE status <> 'Synced') "
	  . "FROM eventstream.sync_log"),
	'100 100 0', 'the consumer logged 100 updates, each once, all Synced');

foreach my $s ($P, $C)
{
	my $pid = worker_pid($s);
	ok($pid ne '', "$s->{name}: its worker runs after the update");
	is($pid, $pid_before{ $s->{name} }, "$s->{name}: the same worker as before the update (it was not restarted)");
	my ($status, $body) = http_get("$s->{url}/api/eventstream/v1/health");
	like($body, qr/"version": "\Q$control_version\E"/, "$s->{name}: health answers version $control_version");
}

# Streaming goes on.
sq($P, 'INSERT INTO item SELECT g, 1 FROM generate_series(81, 90) g');
ok(wait_query($C, 'SELECT count(*) FROM item', '85', 60), 'changes keep streaming after the update');
$P->{node}->stop;
$C->{node}->stop;

######################################################################
# make installcheck against a running server, the PGXS way
######################################################################

# A server like an operator's: the library preloaded by the one line
# that includes test/eventstream.conf.
my $R = PostgreSQL::Test::Cluster->new('running');
$R->init;
$R->append_conf('postgresql.conf', "include '$src/test/eventstream.conf'\n");
$R->start;

# Out of tree (VPATH), so that its results do not mix with this run's;
# without this run's make variables (in MAKEFLAGS and the environment).
my $dir = PostgreSQL::Test::Utils::tempdir;
my ($out, $err) = ('', '');
my $ok;
{
	local $ENV{PGHOST} = $R->host;
	local $ENV{PGPORT} = $R->port;
	my @outer = qw(PGUSER PGDATABASE MAKEFLAGS MFLAGS MAKELEVEL ES_TEMP_INSTANCE REGRESS ISOLATION TAP_TESTS PROVE_TESTS);
	local @ENV{@outer};
	delete @ENV{@outer};
	# One test of each layer: the whole lists run on temporary instances
	# in this suite already; this checks the way they reach a running server.
	$ok = IPC::Run::run([ 'make', '-C', $dir, '-f', "$src/Makefile", "VPATH=$src", 'PG_CONFIG=pg_config',
			'REGRESS=capture', 'ISOLATION=out_of_order_commit', 'installcheck' ],
		'>', \$out, '2>', \$err);
}
ok($ok, 'make installcheck against the running server succeeds') or diag("$out\n$err");
like($out, qr/regress install-check.*All \d+ tests passed.*isolation install-check.*All \d+ tests passed/s,
	'it ran the regression tests, then the isolation tests: all passed')
  or diag($out);
is($R->safe_psql('postgres', "SELECT string_agg(datname, ',' ORDER BY datname) FROM pg_database "
	  . "WHERE datname IN ('contrib_regression', 'isolation_regression')"),
	'contrib_regression,isolation_regression', 'in databases of the running server');
is($R->safe_psql('contrib_regression', "SELECT extversion FROM pg_extension WHERE extname = 'eventstream'"),
	$control_version, 'where the extension was installed');
$R->stop;

done_testing();
