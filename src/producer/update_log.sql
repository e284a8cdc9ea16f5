/*-------------------------------------------------------------------------
 *
 * update_log.sql
 *	  Producer side: the Event Update Log, and the ticks that cut a long
 *	  backlog into windows.
 *
 * The capture trigger writes one log per change of a subscribed document,
 * with an id drawn from the sequence in blocks; serving reads a window of
 * logs from a low bound of the ids not yet committed, kept in shared
 * memory.  The site worker records ticks while logs are written.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- The sequence hands out blocks of ids, not ids (src/producer/logids.c); the id
-- column has no default.
CREATE SEQUENCE eventstream.update_log_id_seq;
CREATE TABLE eventstream.update_log (
	id			bigint PRIMARY KEY,
	update_type	text NOT NULL CHECK (update_type IN ('Create', 'Update', 'Delete', 'Truncate')),
	ref_table	text NOT NULL,
	docname		text NOT NULL,
	data		jsonb,
	txid		xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
	origin		uuid,
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
ALTER SEQUENCE eventstream.update_log_id_seq OWNED BY eventstream.update_log.id;
-- Every index here is paid for by every captured row: the primary key is
-- the only one.  Serving finds where a window starts from a low bound kept
-- in shared memory (src/producer/logids.c), not from an index on txid.
COMMENT ON TABLE eventstream.update_log IS
	'Event Update Log: one row per Create, Update (four-key diff) or Delete of a subscribed document, and one per TRUNCATE of a subscribed table (Truncate, docname empty), written by the capture triggers in the changing transaction.';
COMMENT ON COLUMN eventstream.update_log.txid IS
	'Top-level transaction that wrote the log; delivery follows commit order through snapshots of it.';
COMMENT ON COLUMN eventstream.update_log.origin IS
	'site_id of the site the change was applied from, NULL for a local change; never served back to that site.';

CREATE FUNCTION eventstream._log_low_bound(seq regclass, seq_next bigint) RETURNS bigint
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_log_low_bound';

-- Lower bound of the ids of logs not yet committed (NULL: unknown right
-- now).  Take it before the snapshot it goes with.
CREATE FUNCTION eventstream._low_bound() RETURNS bigint
	LANGUAGE sql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT eventstream._log_low_bound('eventstream.update_log_id_seq',
									  (SELECT CASE WHEN s.is_called THEN s.last_value + 1 ELSE s.last_value END
										 FROM eventstream.update_log_id_seq s))
$$;

-- Ticks (the PgQ idea): snapshots the site worker records while logs are
-- written, a second after the first commit since the last one or as soon
-- as about 4000 logs were committed, each with the update log's position.
-- A consumer far behind takes its backlog in windows that end at ticks, of
-- about eventstream._window_logs() logs each, instead of one window up to
-- now (see _pull_page): each window is applied in a transaction of its
-- own, so a consumer catching up after days offline applies as it goes,
-- and a window of small transactions fits in one of its pages (@PAGE_LIMIT@), so
-- it is applied as it arrives rather than staged in the inbox.
CREATE TABLE eventstream.tick (
	tick_id			bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	snap			pg_snapshot NOT NULL,
	low				bigint NOT NULL,		-- a lower bound of the ids not visible in snap
	max_id			bigint NOT NULL,		-- the largest log id when it was taken
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE eventstream.tick IS
	'Snapshots taken while logs are written (a second after a commit, or every 4000 logs or so); a consumer far behind is served windows that end at them.';

-- Record a tick, if logs were written since the last one (called by the
-- site worker).  The low bound is taken before the snapshot.
CREATE FUNCTION eventstream._tick() RETURNS void
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	low bigint := eventstream._low_bound();
	snap pg_snapshot := pg_current_snapshot();
	top bigint := (SELECT max(l.id) FROM eventstream.update_log l);
BEGIN
	-- None while a restore is under way (see _restore_state).
	IF (SELECT s.restore_pending FROM eventstream.site s) THEN
		RETURN;
	END IF;
	-- Without a bound now (a transaction is drawing its first id), the
	-- previous tick's will do: any log not visible in this later snapshot
	-- was not visible in that one either.  Without one, no tick this time.
	low := coalesce(low, (SELECT t.low FROM eventstream.tick t ORDER BY t.tick_id DESC LIMIT 1));
	IF low IS NOT NULL AND
	   top > coalesce((SELECT t.max_id FROM eventstream.tick t ORDER BY t.tick_id DESC LIMIT 1), 0) THEN
		INSERT INTO eventstream.tick (snap, low, max_id) VALUES (snap, low, top);
	END IF;
END
$$;

-- About how many logs a window of a consumer far behind holds.
CREATE FUNCTION eventstream._window_logs() RETURNS bigint
	LANGUAGE sql IMMUTABLE
AS $$ SELECT 8000::bigint $$;
