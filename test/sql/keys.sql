-- API keys: secrets shown once, stored as salted hashes, checked in
-- constant time, revocable.
\set SHOW_CONTEXT never
CREATE ROLE es_api;
SELECT api_key AS key, api_secret AS secret FROM eventstream.create_api_key('es_api') \gset
SELECT :'key' ~ '^esk_[0-9a-f]{32}$' AS key_format, :'secret' ~ '^[0-9a-f]{64}$' AS secret_format;
-- Only a salted hash is kept: the secret appears nowhere in the table.
SELECT count(*) AS rows_with_secret FROM eventstream.api_key k WHERE k::text LIKE '%' || :'secret' || '%';
SELECT role, octet_length(secret_salt) AS salt_bytes, octet_length(secret_hash) AS hash_bytes,
	   last_used_at IS NULL AS never_used
  FROM eventstream.api_key WHERE api_key = :'key';
-- Two keys for the same role have different salts and hashes.
SELECT api_key AS key2, api_secret AS secret2 FROM eventstream.create_api_key('es_api') \gset
SELECT count(DISTINCT secret_salt) AS salts, count(DISTINCT secret_hash) AS hashes FROM eventstream.api_key;

SELECT eventstream._check_api_key(:'key', :'secret') AS right_secret;
SELECT last_used_at IS NOT NULL AS used FROM eventstream.api_key WHERE api_key = :'key';
SELECT eventstream._check_api_key(:'key', :'secret2') AS other_keys_secret;
SELECT eventstream._check_api_key(:'key', :'secret' || 'x') AS longer_secret;
SELECT eventstream._check_api_key(:'key', NULL) AS no_secret;
SELECT eventstream._check_api_key('esk_nope', :'secret') AS unknown_key;

-- The comparison itself.
SELECT eventstream._equal_secrets('\x0102', '\x0102') AS same,
	   eventstream._equal_secrets('\x0102', '\x0103') AS different,
	   eventstream._equal_secrets('\x0102', '\x010203') AS longer;

-- Revoked keys stop working.
SELECT eventstream.revoke_api_key(:'key');
SELECT eventstream._check_api_key(:'key', :'secret') AS after_revoke;
SELECT eventstream._check_api_key(:'key2', :'secret2') AS other_key_still_works;

-- Bad input.
SELECT set_config('es.revoked_key', :'key', false) IS NOT NULL AS noted;
DO $$
BEGIN
	PERFORM eventstream.revoke_api_key(current_setting('es.revoked_key'));
EXCEPTION WHEN undefined_object THEN
	RAISE NOTICE 'revoking a revoked key: %', SQLERRM = format('no active API key "%s"', current_setting('es.revoked_key'));
END $$;
SELECT eventstream.revoke_api_key('esk_nope');
SELECT * FROM eventstream.create_api_key(NULL);
SELECT * FROM eventstream.create_api_key('no_such_role');
CREATE ROLE es_super SUPERUSER;
SELECT * FROM eventstream.create_api_key('es_super');

-- Administration without a superuser.  Every public function checks its
-- caller first: SECURITY DEFINER with a fixed search_path, or (approve,
-- reject) a BEGIN ATOMIC body that runs as the caller up to a SECURITY
-- DEFINER internal one.  None is executable by PUBLIC; all are by
-- eventstream_admin.
SELECT rolname, rolcanlogin, rolsuper FROM pg_roles WHERE rolname = 'eventstream_admin';
SELECT p.proname,
	   CASE WHEN p.prosecdef THEN 'definer' WHEN p.prosqlbody IS NOT NULL THEN 'atomic' ELSE 'invoker' END AS runs_as,
	   coalesce(array_to_string(p.proconfig, ','), '') AS config,
	   pg_get_functiondef(p.oid) LIKE '%eventstream._assert_admin(%' AS checks_caller,
	   has_function_privilege('public', p.oid, 'EXECUTE') AS public_may,
	   has_function_privilege('eventstream_admin', p.oid, 'EXECUTE') AS admin_may
  FROM pg_proc p WHERE p.pronamespace = 'eventstream'::regnamespace AND p.proname !~ '^_'
 ORDER BY 1;
-- Internal functions executable by others than the owner.
SELECT p.proname, array_to_string(ARRAY(SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END
										 FROM aclexplode(p.proacl) a
										 WHERE a.grantee <> p.proowner ORDER BY 1), ',') AS also
  FROM pg_proc p WHERE p.pronamespace = 'eventstream'::regnamespace AND p.proname ~ '^_'
   AND EXISTS (SELECT 1 FROM aclexplode(p.proacl) a WHERE a.grantee <> p.proowner)
 ORDER BY 1;
-- Who reads which table and view: eventstream_admin the configuration and
-- the sync log (some columns only of api_key and producer), pg_monitor the
-- status views; PUBLIC nothing.
SELECT c.relname, c.relkind,
	   has_table_privilege('public', c.oid, 'SELECT') AS public_reads,
	   CASE WHEN has_table_privilege('eventstream_admin', c.oid, 'SELECT') THEN 'all'
			WHEN has_any_column_privilege('eventstream_admin', c.oid, 'SELECT') THEN 'some columns'
			ELSE '' END AS admin_reads,
	   has_table_privilege('pg_monitor', c.oid, 'SELECT') AS monitor_reads,
	   has_table_privilege('eventstream_admin', c.oid, 'INSERT, UPDATE, DELETE, TRUNCATE') AS admin_writes
  FROM pg_class c WHERE c.relnamespace = 'eventstream'::regnamespace AND c.relkind IN ('r', 'v', 'p')
 ORDER BY 1;
SELECT has_column_privilege('eventstream_admin', 'eventstream.api_key', 'secret_hash', 'SELECT') AS admin_reads_hash,
	   has_column_privilege('eventstream_admin', 'eventstream.producer', 'api_secret', 'SELECT') AS admin_reads_secret;

-- A member of eventstream_admin makes keys for the roles it may grant
-- only, and never for a role that reaches the server's files (through
-- other roles too) or administers sites.
CREATE ROLE es_ops IN ROLE eventstream_admin;
CREATE ROLE es_branch;
CREATE ROLE es_notmine;
CREATE ROLE es_files IN ROLE pg_write_server_files;
CREATE ROLE es_files2 IN ROLE es_files;
CREATE ROLE es_helper IN ROLE eventstream_admin;
GRANT es_branch TO es_ops WITH ADMIN OPTION;
CREATE ROLE es_creator CREATEROLE IN ROLE eventstream_admin;
SET ROLE es_ops;
SELECT api_key AS ops_key FROM eventstream.create_api_key('es_branch') \gset
SELECT role FROM eventstream.api_key WHERE api_key = :'ops_key';
SELECT * FROM eventstream.create_api_key('es_notmine');
SELECT * FROM eventstream.create_api_key('es_super');
SELECT * FROM eventstream.create_api_key('es_files2');
SELECT * FROM eventstream.create_api_key('es_helper');
SELECT * FROM eventstream.create_api_key('es_ops');
-- Status page keys: for members of eventstream_admin or pg_monitor, with
-- the other refusals of create_api_key.
SELECT * FROM eventstream.create_status_key('es_helper');
SELECT * FROM eventstream.create_status_key('es_branch');
SELECT * FROM eventstream.create_status_key('es_super');
RESET ROLE;
GRANT eventstream_admin TO es_files2;
SELECT * FROM eventstream.create_status_key('es_files2');
REVOKE eventstream_admin FROM es_files2;
CREATE ROLE es_watch IN ROLE pg_monitor;
SELECT api_key AS watch_key FROM eventstream.create_status_key('es_watch') \gset
SELECT role FROM eventstream.api_key WHERE api_key = :'watch_key';
DELETE FROM eventstream.api_key WHERE api_key = :'watch_key';
DROP ROLE es_watch;
SET ROLE es_ops;
SELECT eventstream.revoke_api_key(:'key2');
SELECT eventstream.revoke_api_key(:'ops_key');
SELECT secret_hash FROM eventstream.api_key;
-- CREATEROLE grants any role but a superuser.
SET ROLE es_creator;
SELECT count(*) AS made FROM eventstream.create_api_key('es_notmine');
SELECT * FROM eventstream.create_api_key('es_super');
SELECT * FROM eventstream.create_api_key('es_files');
RESET ROLE;
-- A role that is not a member is refused everything, with the hint.
CREATE ROLE es_plain;
SET ROLE es_plain;
SELECT * FROM eventstream.create_api_key('es_branch');
SELECT count(*) FROM eventstream.api_key;
RESET ROLE;
GRANT EXECUTE ON FUNCTION eventstream.create_api_key TO es_plain;
SET ROLE es_plain;
SELECT * FROM eventstream.create_api_key('es_branch');
RESET ROLE;
REVOKE EXECUTE ON FUNCTION eventstream.create_api_key FROM es_plain;
-- Code of a member that another role's command runs (here a superuser
-- refreshing the member's materialized view, a security-restricted
-- operation) does not act with that role's rights.
CREATE SCHEMA es_ops_own AUTHORIZATION es_ops;
SET ROLE es_ops;
CREATE MATERIALIZED VIEW es_ops_own.trap AS SELECT api_key FROM eventstream.create_api_key(pg_catalog.to_regrole('es_notmine')) WITH NO DATA;
RESET ROLE;
REFRESH MATERIALIZED VIEW es_ops_own.trap;
SELECT count(*) AS keys_of_other FROM eventstream.api_key WHERE role = 'es_notmine'::regrole;
DROP SCHEMA es_ops_own CASCADE;
