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

/*
 * Administration: superusers and the members of eventstream_admin (made in
 * site.sql) run the public functions, which are SECURITY DEFINER and check
 * their caller first (_assert_admin).  Members read the configuration and
 * the sync log, but neither the secrets (api_key's hashes, producer's
 * api_secret) nor what holds other tables' rows and is served from the
 * producer (update_log, and the pages and receipts of serving), nor the
 * pages received but not applied yet (inbox).
 */
GRANT EXECUTE ON FUNCTION
	eventstream.create_api_key, eventstream.create_status_key, eventstream.revoke_api_key,
	eventstream.approve, eventstream.reject, eventstream.remove_consumer,
	eventstream.add_child_table, eventstream.remove_child_table, eventstream.add_dynamic_link,
	eventstream.prune,
	eventstream.add_producer, eventstream.subscribe, eventstream.unsubscribe, eventstream.set_keys,
	eventstream.reset_cursor, eventstream.remove_producer, eventstream.sync_now,
	eventstream.resync, eventstream.refetch, eventstream.resync_failed, eventstream.ignore_columns,
	eventstream.resync_table, eventstream.remote_name,
	eventstream.create_mapping, eventstream.alter_mapping, eventstream.drop_mapping,
	eventstream.map_field, eventstream.unmap_field
	TO eventstream_admin;
-- approve() and reject() run as their caller up to _set_status (see there).
GRANT EXECUTE ON FUNCTION eventstream._assert_admin TO PUBLIC;
GRANT EXECUTE ON FUNCTION eventstream._set_status, eventstream._canonical_table_name,
	eventstream._published_name, eventstream._wire_name
	TO eventstream_admin;
GRANT SELECT ON eventstream.site, eventstream.consumer, eventstream.consumer_table,
	eventstream.child_table, eventstream.dynamic_link, eventstream.published_table,
	eventstream.producer_table, eventstream.sync_log, eventstream.remote_document,
	eventstream.document_type_mapping, eventstream.field_mapping
	TO eventstream_admin;
GRANT SELECT (api_key, role, created_at, last_used_at, revoked_at) ON eventstream.api_key TO eventstream_admin;
GRANT SELECT (producer_url, api_key, subscriber, enabled, producer_site_id, cursor, behind, created_at,
			  last_pull_at, last_success_at, last_update_at, last_error, last_error_at, synced_count, failed_count,
			  failed_total, updates_behind)
	ON eventstream.producer TO eventstream_admin;

/*
 * The status views, for the members of eventstream_admin and of
 * pg_monitor.  A view reads its tables with its owner's privileges, but
 * the functions it calls run as, and need the EXECUTE privilege of, the
 * role reading it; _published is inlined into the view, so its table is
 * read as that role too.
 */
GRANT SELECT ON eventstream.consumer_status, eventstream.producer_status, eventstream.update_log_consumer
	TO eventstream_admin, pg_monitor;
GRANT EXECUTE ON FUNCTION eventstream._before_end, eventstream._published, eventstream._silence_allowed
	TO eventstream_admin, pg_monitor;
GRANT SELECT ON eventstream.published_table TO pg_monitor;

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
