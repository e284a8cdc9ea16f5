/*-------------------------------------------------------------------------
 *
 * privileges.sql
 *	  Privileges and what pg_dump keeps, for everything the parts before
 *	  created.
 *
 * The last part: REVOKE ... ON ALL ... covers the objects that exist when
 * it runs.  The configuration tables are dumped with the database.
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

REVOKE ALL ON ALL TABLES IN SCHEMA eventstream FROM PUBLIC;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA eventstream FROM PUBLIC;

-- The apply's statements run as the subscriber role and convert values
-- with these two (they read and render only what they are given).
GRANT USAGE ON SCHEMA eventstream TO PUBLIC;
GRANT EXECUTE ON FUNCTION eventstream._populate(anyelement, jsonb), eventstream._row_json(anyelement) TO PUBLIC;

SELECT pg_catalog.pg_extension_config_dump('eventstream.site', '');
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
