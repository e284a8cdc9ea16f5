/*-------------------------------------------------------------------------
 *
 * site.sql
 *	  The site itself: what CREATE EXTENSION does first, the site's identity,
 *	  and waking its worker.
 *
 * The script refuses to run unless the library is preloaded (its background
 * workers can only be registered from there); this database's site worker
 * starts when CREATE EXTENSION commits, and _wake_worker() wakes it when
 * subscriptions or producers change.  eventstream.site holds the site_id
 * every log and registration carries.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION eventstream" to load this file. \quit

/*
 * Objects whose name starts with "_" are private: they may change between
 * versions and are not granted to PUBLIC.  Every public object has a
 * COMMENT.  All functions run with a fixed search_path.
 */

-- The extension's own schema is pg_catalog (eventstream.control); its
-- objects are in this one, a member, so that DROP EXTENSION drops it.
CREATE SCHEMA eventstream;

CREATE FUNCTION eventstream._assert_preloaded() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_assert_preloaded';
SELECT eventstream._assert_preloaded();

-- This database's worker starts when CREATE EXTENSION commits.
CREATE FUNCTION eventstream._start_worker() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_start_worker';
SELECT eventstream._start_worker();

CREATE TABLE eventstream.site (
	singleton		boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	site_id			uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_prune_at	timestamptz,
	pruned_below	bigint
);
INSERT INTO eventstream.site DEFAULT VALUES;
COMMENT ON TABLE eventstream.site IS
	'This site: its stable site_id (made at CREATE EXTENSION, used to prevent loops) and update-log pruning state.';

CREATE FUNCTION eventstream._wake_worker() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_wake_worker';
