/*-------------------------------------------------------------------------
 *
 * keys.sql
 *	  API keys other sites call this one with.
 *
 * A key names the role its requests run as; its secret is kept only as a
 * salted hash.  The HTTP endpoint checks every request's key with
 * _check_api_key(), which compares the hashes in constant time (in C).
 *
 * Part of the install script eventstream--<version>.sql: the Makefile builds
 * it from SQL_PARTS, in the order given there.
 *
 *-------------------------------------------------------------------------
 */

CREATE TABLE eventstream.api_key (
	api_key			text PRIMARY KEY,
	role			regrole NOT NULL,
	secret_salt		bytea NOT NULL,
	secret_hash		bytea NOT NULL,		-- sha256(secret_salt || secret); the secret itself is not kept
	created_at		timestamptz NOT NULL DEFAULT pg_catalog.now(),
	last_used_at	timestamptz,
	revoked_at		timestamptz
);
COMMENT ON TABLE eventstream.api_key IS
	'API keys other sites use to call this one; requests run with the key''s role.  Secrets are kept only as salted hashes.';

CREATE FUNCTION eventstream._equal_secrets(a bytea, b bytea) RETURNS boolean
	LANGUAGE c STRICT AS 'MODULE_PATHNAME', 'eventstream_equal_secrets';

-- Random hex from the server's strong random source (gen_random_uuid).
CREATE FUNCTION eventstream._random_hex(uuids integer) RETURNS text
	LANGUAGE sql VOLATILE
	SET search_path = pg_catalog, pg_temp
AS $$
	SELECT string_agg(replace(gen_random_uuid()::text, '-', ''), '') FROM generate_series(1, uuids)
$$;

-- A new key for role, its secret kept salted and hashed: for
-- create_api_key and create_status_key, once they have checked role.
CREATE FUNCTION eventstream._issue_key(role regrole, OUT api_key text, OUT api_secret text)
	LANGUAGE plpgsql
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	salt bytea := decode(eventstream._random_hex(1), 'hex');
BEGIN
	api_key := 'esk_' || eventstream._random_hex(1);
	api_secret := eventstream._random_hex(2);
	INSERT INTO eventstream.api_key (api_key, role, secret_salt, secret_hash)
		VALUES (api_key, role, salt, sha256(salt || convert_to(api_secret, 'UTF8')));
END
$$;

CREATE FUNCTION eventstream.create_api_key(role regrole, OUT api_key text, OUT api_secret text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('create_api_key');
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = role) THEN
		RAISE EXCEPTION 'role "%" is a superuser', role
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Requests run with the key''s role: make a role with just the privileges other sites need.';
	END IF;
	PERFORM eventstream._assert_unprivileged_role(role, 'the role of an API key');
	PERFORM eventstream._assert_may_grant(role, 'create an API key for');
	SELECT k.api_key, k.api_secret INTO api_key, api_secret FROM eventstream._issue_key(role) k;
END
$$;
COMMENT ON FUNCTION eventstream.create_api_key(regrole) IS
	'Make an API key for role (one the caller may grant; not a superuser, nor a member of pg_read_server_files, pg_write_server_files, pg_execute_server_program or eventstream_admin); the secret is returned once and kept only as a salted hash.';

/*
 * A key for this site's status page (src/http/status_page.c), held by its
 * operators, never given to another site: its role must have the
 * privileges of eventstream_admin (the page's actions) or of pg_monitor
 * (the page only), which create_api_key refuses or does not need.  The
 * other refusals of create_api_key stay: superusers, roles that read or
 * write the server's files or run programs, roles the caller may not grant.
 */
CREATE FUNCTION eventstream.create_status_key(role regrole, OUT api_key text, OUT api_secret text)
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
	PERFORM eventstream._assert_admin('create_status_key');
	IF role IS NULL THEN
		RAISE EXCEPTION 'role must not be NULL' USING ERRCODE = 'null_value_not_allowed';
	END IF;
	IF (SELECT r.rolsuper FROM pg_roles r WHERE r.oid = role) THEN
		RAISE EXCEPTION 'role "%" is a superuser', role
			USING ERRCODE = 'insufficient_privilege',
				  HINT = 'Make a role that is a member of eventstream_admin or pg_monitor for the status page.';
	END IF;
	PERFORM eventstream._assert_unprivileged_role(role, 'the role of a status page key', true);
	IF NOT (pg_has_role(role, 'pg_monitor', 'USAGE')
			OR (EXISTS (SELECT 1 FROM pg_roles r WHERE r.rolname = 'eventstream_admin')
				AND pg_has_role(role, 'eventstream_admin', 'USAGE'))) THEN
		RAISE EXCEPTION 'role "%" is neither a member of eventstream_admin nor of pg_monitor', role
			USING ERRCODE = 'invalid_parameter_value',
				  HINT = 'The status page is for those roles; a key for another site is made with eventstream.create_api_key().';
	END IF;
	PERFORM eventstream._assert_may_grant(role, 'create a status page key for');
	SELECT k.api_key, k.api_secret INTO api_key, api_secret FROM eventstream._issue_key(role) k;
END
$$;
COMMENT ON FUNCTION eventstream.create_status_key(regrole) IS
	'Make an API key for this site''s status page, for role (one the caller may grant, with the privileges of eventstream_admin, to act, or of pg_monitor, to look; not a superuser, nor a member of pg_read_server_files, pg_write_server_files or pg_execute_server_program); the secret is returned once.  Not for other sites: give them keys of create_api_key.';

CREATE FUNCTION eventstream.revoke_api_key(api_key text) RETURNS void
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	key_role regrole;
BEGIN
	PERFORM eventstream._assert_admin('revoke_api_key');
	SELECT k.role INTO key_role FROM eventstream.api_key k
	 WHERE k.api_key = revoke_api_key.api_key AND k.revoked_at IS NULL FOR UPDATE;
	IF NOT FOUND THEN
		RAISE EXCEPTION 'no active API key "%"', api_key USING ERRCODE = 'undefined_object';
	END IF;
	PERFORM eventstream._assert_may_grant(key_role, 'revoke an API key of');
	UPDATE eventstream.api_key k SET revoked_at = now() WHERE k.api_key = revoke_api_key.api_key;
END
$$;
COMMENT ON FUNCTION eventstream.revoke_api_key(text) IS
	'Revoke an API key (of a role the caller may grant): requests with it fail from now on.';

/*
 * The role of a valid, unrevoked key whose secret matches, or NULL.  The
 * hashes are compared in constant time; last_used_at is updated (to the minute).
 */
CREATE FUNCTION eventstream._check_api_key(api_key text, api_secret text) RETURNS regrole
	LANGUAGE plpgsql SECURITY DEFINER
	SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
	k eventstream.api_key;
BEGIN
	SELECT * INTO k FROM eventstream.api_key x
	 WHERE x.api_key = _check_api_key.api_key AND x.revoked_at IS NULL;
	IF NOT FOUND OR api_secret IS NULL
	   OR NOT eventstream._equal_secrets(k.secret_hash, sha256(k.secret_salt || convert_to(api_secret, 'UTF8'))) THEN
		RETURN NULL;
	END IF;
	-- To the minute: a write per request would bloat the table under load.
	IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
		UPDATE eventstream.api_key x SET last_used_at = now() WHERE x.api_key = k.api_key;
	END IF;
	RETURN k.role;
END
$$;
