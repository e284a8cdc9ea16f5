/*-------------------------------------------------------------------------
 *
 * update--1.0--1.1.sql
 *	  The hand-written part of the update script eventstream--1.0--1.1.sql:
 *	  what ALTER EXTENSION eventstream UPDATE does to a 1.0 site before the
 *	  functions, views, triggers, comments and privileges of 1.1 are made
 *	  again (the Makefile appends those, from the install script).
 *
 * Here go new tables, columns, indexes, constraints and sequences (and
 * their pg_extension_config_dump, if the install script has one), objects
 * dropped in 1.1, functions whose arguments, result or parameter names
 * changed (dropped here, made again after), views whose columns changed
 * (likewise), and anything the install script does only once.
 * test/t/022_upgrade.pl compares an updated database with a fresh one,
 * object by object, and names what differs.
 *
 *-------------------------------------------------------------------------
 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION eventstream UPDATE" to load this file. \quit

/*
 * The schema.  Version 1.0 had eventstream as the extension's own schema,
 * made by CREATE EXTENSION and not a member, so DROP EXTENSION left it
 * behind, and a dump (CREATE SCHEMA eventstream; CREATE EXTENSION ... WITH
 * SCHEMA eventstream) could not be restored where 1.1 is installed.  Since
 * 1.1 the extension's own schema is pg_catalog and eventstream is a
 * member.  ALTER EXTENSION ... ADD SCHEMA refuses the extension's own
 * schema and ALTER EXTENSION ... SET SCHEMA a non-relocatable extension,
 * so the catalog rows are changed here: the extension's schema becomes
 * pg_catalog (a pinned schema, on which no dependency is recorded, as
 * CREATE EXTENSION records none), and then eventstream becomes a member.
 */
UPDATE pg_catalog.pg_extension
   SET extnamespace = 'pg_catalog'::pg_catalog.regnamespace
 WHERE extname = 'eventstream' AND extnamespace = 'eventstream'::pg_catalog.regnamespace;
DELETE FROM pg_catalog.pg_depend
 WHERE classid = 'pg_catalog.pg_extension'::pg_catalog.regclass
   AND objid = (SELECT oid FROM pg_catalog.pg_extension WHERE extname = 'eventstream')
   AND refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass
   AND refobjid = 'eventstream'::pg_catalog.regnamespace;
ALTER EXTENSION eventstream ADD SCHEMA eventstream;

/*
 * Capture follows tables: published names bound to tables; the statement
 * triggers on consumer_table and child_table, which a restore fired, are
 * gone (the functions that change those tables reconfigure capture).
 */
CREATE TABLE eventstream.published_table (
	ref_table	text PRIMARY KEY,
	relid		regclass NOT NULL UNIQUE
);
DROP TRIGGER sync_capture ON eventstream.consumer_table;
DROP TRIGGER sync_capture ON eventstream.child_table;
DROP FUNCTION eventstream._config_changed();

-- TRUNCATE is logged.
ALTER TABLE eventstream.update_log DROP CONSTRAINT update_log_update_type_check;
ALTER TABLE eventstream.update_log ADD CONSTRAINT update_log_update_type_check
	CHECK (update_type IN ('Create', 'Update', 'Delete', 'Truncate'));

-- Columns a subscription leaves out on purpose (ignore_columns).
ALTER TABLE eventstream.producer_table ADD COLUMN ignored_columns text[];

-- Restores: the site knows when it is being restored, and which consumers
-- copy their tables again; _pull_page takes resync.
ALTER TABLE eventstream.site
	ADD COLUMN restore_pending boolean NOT NULL DEFAULT false,
	ADD COLUMN restore_since timestamptz,
	ADD COLUMN restored_at timestamptz;
ALTER TABLE eventstream.consumer
	ADD COLUMN resync_pending boolean NOT NULL DEFAULT false,
	ADD COLUMN resync_below bigint NOT NULL DEFAULT 0;
DROP FUNCTION eventstream._pull_page(text, text, integer, text);

-- Conditions are checked as the consumer's role, in the sandbox:
-- _check_condition takes the role.
DROP FUNCTION eventstream._check_condition(regclass, text);

-- Administration without a superuser: the role whose members run the
-- site (see src/site/site.sql), made unless another site of the cluster
-- made it already.
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'eventstream_admin') THEN
		CREATE ROLE eventstream_admin NOLOGIN;
		COMMENT ON ROLE eventstream_admin IS
			'Members administer the eventstream sites of this cluster: approvals, API keys, producers, subscriptions, resyncs and the status views.';
	END IF;
END
$$;

-- Row-level security and column privileges (docs/security.md): what a
-- consumer holds is kept for role-served subscriptions too.
COMMENT ON TABLE eventstream.consumer_document IS
	'Documents of conditioned and role-served subscriptions: each change of whether the consumer holds one (served: held; served a Delete when it stopped matching or its key''s role stopped seeing it: not held), with the pull that made it; the latest counts.';

-- Metrics (/metrics): failed updates counted for good, resyncs or not.
ALTER TABLE eventstream.producer ADD COLUMN failed_total bigint NOT NULL DEFAULT 0;
UPDATE eventstream.producer SET failed_total = failed_count;
COMMENT ON COLUMN eventstream.producer.failed_count IS
	'Updates whose apply failed, less those a resync applied since.';
COMMENT ON COLUMN eventstream.producer.failed_total IS
	'Updates whose apply failed, ever (a resync does not take one back): the counter eventstream_producer_updates_failed_total of /metrics.';
-- Progress: rows copied by an initial sync and the producer's estimate of
-- its table; the updates the producer says wait after a page.
ALTER TABLE eventstream.producer_table
	ADD COLUMN snapshot_rows bigint,
	ADD COLUMN snapshot_estimate bigint;
ALTER TABLE eventstream.producer ADD COLUMN updates_behind bigint;
