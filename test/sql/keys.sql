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
