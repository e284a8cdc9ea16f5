/*-------------------------------------------------------------------------
 *
 * privileges.sql
 *	  Privileges, what pg_dump keeps and the triggers that notice a
 *	  restore, for everything the parts before created.
 *
 * The last part: REVOKE ... ON ALL ... covers the objects that exist when
 * it runs.  The configuration tables are dumped with the database.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

-- A restore of the configuration into a site that exists makes the worker
-- wait for its end (see _restore_started and _restore_state).
CREATE TRIGGER restore_started AFTER INSERT ON eventstream.producer
	FOR EACH STATEMENT EXECUTE FUNCTION eventstream._restore_started();
CREATE TRIGGER restore_started AFTER INSERT ON eventstream.consumer
	FOR EACH STATEMENT EXECUTE FUNCTION eventstream._restore_started();
CREATE TRIGGER restore_started AFTER INSERT ON eventstream.api_key
	FOR EACH STATEMENT EXECUTE FUNCTION eventstream._restore_started();

REVOKE ALL ON ALL TABLES IN SCHEMA eventstream FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstream FROM PUBLIC;

-- The apply's statements run as the subscriber role and convert values
-- with these two (they read and render only what they are given).
GRANT USAGE ON SCHEMA eventstream TO PUBLIC;
GRANT EXECUTE ON FUNCTION eventstream._populate(anyelement, jsonb), eventstream._row_json(anyelement) TO PUBLIC;

-- What a restore brings back (docs/operations.md): the site's identity,
-- API keys (their hashes), consumers and their subscriptions, the update
-- log and the sequence its ids come from, producers with their cursors
-- and the pages received but not applied yet (inbox), the sync log, remote
-- names and mappings, each with the sequence its ids come from.  What
-- serving keeps per page and per document (served_page, consumer_document,
-- withheld) and the ticks are not: a restored producer re-syncs its
-- consumers (_adopt_restore).
SELECT pg_catalog.pg_extension_config_dump('eventstream.site', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.api_key', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.update_log', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.update_log_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.inbox', '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('eventstream.inbox', 'seq')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump(pg_catalog.pg_get_serial_sequence('eventstream.sync_log', 'id')::regclass, '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.consumer', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.consumer_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.child_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.published_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.dynamic_link', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.producer', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.producer_table', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.sync_log', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.remote_document', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.document_type_mapping', '');
SELECT pg_catalog.pg_extension_config_dump('eventstream.field_mapping', '');
