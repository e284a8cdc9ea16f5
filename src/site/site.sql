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
 * every log and registration carries; a restore brings it back (see
 * _site_restored and _restore_state).
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

/*
 * Administration without a superuser: the members of eventstream_admin run
 * the site (src/site/admin.c; the grants are in privileges.sql).  Roles
 * belong to the cluster, not to a database: the role is made by the first
 * CREATE EXTENSION of the cluster, shared by every site of it, and stays
 * when the extension is dropped (like a role a DBA made).
 */
DO $$
BEGIN
	IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'eventstream_admin') THEN
		CREATE ROLE eventstream_admin NOLOGIN;
		COMMENT ON ROLE eventstream_admin IS
			'Members administer the eventstream sites of this cluster: approvals, API keys, producers, subscriptions, resyncs and the status views.';
	END IF;
END
$$;

-- Raise unless the session's role is a superuser or a member of
-- eventstream_admin; each public function of the API calls it first.
CREATE FUNCTION eventstream._assert_admin(function_name text) RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_assert_admin';

-- Raise unless the session's role may grant role (as GRANT decides).
CREATE FUNCTION eventstream._assert_may_grant(role regrole, action text) RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_assert_may_grant';

-- Raise if role reaches the server's files or programs, or the site's
-- administration: what a key or a subscriber must not run as.
CREATE FUNCTION eventstream._assert_unprivileged_role(role regrole, what text, allow_admin boolean DEFAULT false) RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_assert_unprivileged_role';

CREATE TABLE eventstream.site (
	singleton		boolean PRIMARY KEY DEFAULT true CHECK (singleton),
	site_id			uuid NOT NULL DEFAULT pg_catalog.gen_random_uuid(),
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_prune_at	timestamptz,
	pruned_below	bigint,
	restore_pending	boolean NOT NULL DEFAULT false,
	restore_since	timestamptz,
	restored_at		timestamptz
);
COMMENT ON TABLE eventstream.site IS
	'This site: its stable site_id (made at CREATE EXTENSION, brought back by a restore, used to prevent loops), update-log pruning state, and whether a restore is under way.';
COMMENT ON COLUMN eventstream.site.restore_pending IS
	'A restore (pg_restore, or a plain dump run by psql) is under way or not taken over yet: the site worker neither pulls, serves, ticks nor prunes until the client sessions that were connected at restore_since have ended.';
COMMENT ON COLUMN eventstream.site.restore_since IS
	'When the restore under way was noticed (NULL: none is).';
COMMENT ON COLUMN eventstream.site.restored_at IS
	'When this site''s row was last brought back by a restore; its consumers are re-synced when the worker takes the restore over.';

/*
 * A site is created by a restore when CREATE EXTENSION runs under the
 * settings pg_dump and pg_restore give their sessions (row_security off):
 * it starts with a restore pending, so that its worker does nothing while
 * the rest of the dump comes in.
 */
INSERT INTO eventstream.site (restore_pending, restore_since)
	SELECT r, CASE WHEN r THEN pg_catalog.now() END
	  FROM (SELECT pg_catalog.current_setting('row_security') = 'off') x(r);

/*
 * The site row of a dump replaces the one CREATE EXTENSION made (the
 * restored site is the dumped one: same site_id), and marks a restore
 * pending (see _restore_state).  Nothing else inserts into eventstream.site.
 */
CREATE FUNCTION eventstream._site_restored() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	DELETE FROM eventstream.site;
	NEW.singleton := true;
	NEW.restore_pending := true;
	NEW.restore_since := now();
	NEW.restored_at := now();
	-- The worker stops pulling and serving once this commits.
	PERFORM eventstream._wake_worker();
	RETURN NEW;
END
$$;
CREATE TRIGGER restored BEFORE INSERT ON eventstream.site
	FOR EACH ROW EXECUTE FUNCTION eventstream._site_restored();

CREATE FUNCTION eventstream._wake_worker() RETURNS void
	LANGUAGE c AS 'MODULE_PATHNAME', 'eventstream_wake_worker';

/*
 * Rows of the configuration written under the settings of pg_dump's
 * scripts (row_security off): a restore into a database whose extension
 * was there before it (a data-only restore, say) has started, before its
 * site row arrives.  A statement trigger of eventstream.producer,
 * eventstream.consumer and eventstream.api_key (see privileges.sql).
 */
CREATE FUNCTION eventstream._restore_started() RETURNS trigger
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF current_setting('row_security') = 'off' THEN
		UPDATE eventstream.site s SET restore_pending = true, restore_since = now() WHERE NOT s.restore_pending;
		IF FOUND THEN
			PERFORM eventstream._wake_worker();
		END IF;
	END IF;
	RETURN NULL;
END
$$;

/*
 * Whether a restore is under way, for the site worker, which calls it on
 * every round of its duties: 'live' (none), 'pending' (the worker does
 * nothing but wait: the restoring sessions may still be bringing rows,
 * keys and triggers in) or 'adopted' (it just took the restore over, see
 * _adopt_restore).  A restore is over once every client session of this
 * database that was connected when it started has ended: pg_restore and
 * psql restore through one session.
 */
CREATE FUNCTION eventstream._restore_state() RETURNS text
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s eventstream.site;
BEGIN
	SELECT * INTO s FROM eventstream.site;
	IF NOT coalesce(s.restore_pending, false) THEN
		RETURN 'live';
	END IF;
	IF EXISTS (SELECT 1 FROM pg_stat_activity a
				WHERE a.datid = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database())
				  AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()
				  AND a.backend_start <= s.restore_since) THEN
		RETURN 'pending';
	END IF;
	PERFORM eventstream._adopt_restore();
	RETURN 'adopted';
END
$$;

/*
 * Take a restore over, once it is complete.  The restored site is the
 * dumped one (same site_id, keys, consumers and producers) on another
 * server.  As a producer, what it served after the dump is unknown, and
 * the transaction ids its update log and snapshots hold may be those of
 * another cluster: every consumer is re-synced on its next pull (see
 * _pull_page), the subscriptions' approvals start again now, and the ticks
 * go.  As a consumer nothing needs doing here: its cursors were dumped
 * with the rows they describe, and its producers take them back (see
 * _pull_page).
 */
CREATE FUNCTION eventstream._adopt_restore() RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	s eventstream.site;
	low bigint;
BEGIN
	SELECT * INTO s FROM eventstream.site FOR UPDATE;
	IF NOT s.restore_pending THEN
		RETURN;
	END IF;
	-- The site row came from the dump (during this restore, not an
	-- earlier one): what the update log and the consumers' positions hold
	-- is the dump's.
	IF s.restored_at >= s.restore_since THEN
		-- The low bound first, then the snapshot it goes with.
		low := coalesce(eventstream._low_bound(), 0);
		UPDATE eventstream.consumer c
		   SET resync_pending = true, acked_snapshot = pg_current_snapshot(), acked_low = low,
			   acked_at = now(), sent_tables = NULL, sent_tables_page = NULL;
		UPDATE eventstream.consumer_table ct
		   SET approved_snapshot = CASE WHEN ct.status = 'Approved' AND NOT ct.unsubscribed
										THEN pg_current_snapshot() END,
			   ended_snapshot = NULL, ended_txid = NULL, ended_id = NULL;
		DELETE FROM eventstream.served_page;
		DELETE FROM eventstream.consumer_document;
		DELETE FROM eventstream.withheld;
		DELETE FROM eventstream.tick;
	END IF;
	UPDATE eventstream.site SET restore_pending = false, restore_since = NULL;
	RAISE LOG 'eventstream: the restore of database "%" is complete; site % resumes%', current_database(), s.site_id,
		CASE WHEN s.restored_at >= s.restore_since THEN ' (its consumers are re-synced)' ELSE '' END;
END
$$;

-- Raise unless this site serves now (no restore under way).
CREATE FUNCTION eventstream._check_serving() RETURNS void
	LANGUAGE plpgsql STABLE
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	IF (SELECT s.restore_pending FROM eventstream.site s) THEN
		RAISE EXCEPTION 'this site is being restored' USING ERRCODE = 'cannot_connect_now',
			HINT = 'Try again once the restore is complete.';
	END IF;
END
$$;
