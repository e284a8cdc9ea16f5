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
