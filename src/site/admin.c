/*-------------------------------------------------------------------------
 *
 * admin.c
 *	  Who may administer a site, and for which roles.
 *
 * A site is administered by superusers and by the members of the role
 * eventstream_admin (made by CREATE EXTENSION, shared by every database of
 * the cluster).  The public functions of the SQL API are SECURITY DEFINER:
 * they run as the extension's owner, so they first check their caller with
 * eventstream._assert_admin().  The caller is the role of the session
 * (current_user outside SECURITY DEFINER functions: GetOuterUserId()), not
 * the owner the function runs as; while the status page runs one of its
 * actions in the site worker, the role of the page's key
 * (es_status_page_caller, src/http/status_page.c).  A function run inside a
 * security-restricted operation (an index expression, a maintenance
 * command, a consumer's condition) is refused whoever the session is, and
 * so is every one but prune() in the site worker (whose session is the
 * bootstrap superuser's, and which runs triggers of the tables it applies
 * to), so that nobody's code runs an administrative function with the
 * session's rights behind its back.
 *
 * API keys and subscribers name a role that other sites' requests or the
 * apply run as: eventstream._assert_may_grant() lets an administrator name
 * only a role it could grant (PostgreSQL 15: ADMIN OPTION on it, or
 * CREATEROLE and the role is not a superuser), and
 * eventstream._assert_unprivileged_role() refuses, for everybody, roles
 * that can read or write the server's files or run programs, and roles
 * that administer the site themselves (but for the status page's keys,
 * which are for administrators).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/admin.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "utils/acl.h"
#include "utils/builtins.h"

#include "http/status_page.h"

PG_FUNCTION_INFO_V1(eventstream_assert_admin);
PG_FUNCTION_INFO_V1(eventstream_assert_may_grant);
PG_FUNCTION_INFO_V1(eventstream_assert_unprivileged_role);

/* The role whose members administer sites. */
#define ES_ADMIN_ROLE "eventstream_admin"

/*
 * es_role_name
 *		A role's name for messages (its OID if the role is gone); quoted as
 *		an identifier if it needs to be when ident, for the statements that
 *		hints show.
 */
static const char *
es_role_name(Oid roleid, bool ident)
{
	char	   *name = GetUserNameFromId(roleid, true);

	if (name == NULL)
		return psprintf("%u", roleid);
	return ident ? quote_identifier(name) : name;
}

/*
 * es_caller
 *		The role calling an administrative function: the session's role
 *		(SET ROLE's), whatever SECURITY DEFINER functions or role switches
 *		run in between.  Refuses every caller inside a security-restricted
 *		operation; what names the function called is for the message.
 */
static Oid
es_caller(const char *what)
{
	if (InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot run eventstream.%s() within a security-restricted operation", what)));
	if (MyBgworkerEntry != NULL &&
		strcmp(MyBgworkerEntry->bgw_library_name, "eventstream") == 0 &&
		strcmp(what, "prune") != 0)
	{
		/* An action of the status page: the caller is the key's role. */
		if (OidIsValid(es_status_page_caller))
			return es_status_page_caller;
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("cannot run eventstream.%s() in an eventstream worker", what),
				 errdetail("The worker's session is a superuser's: code it runs as another role, such as a trigger of a table it applies updates to, does not administer the site.")));
	}
	return GetOuterUserId();
}

/*
 * eventstream_assert_admin
 *		eventstream._assert_admin(function text): error unless the caller is
 *		a superuser or has the privileges of eventstream_admin.  function
 *		names the public function for the message.
 */
Datum
eventstream_assert_admin(PG_FUNCTION_ARGS)
{
	const char *what = PG_ARGISNULL(0) ? "?" : text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			caller = es_caller(what);
	Oid			admin;

	if (superuser_arg(caller))
		PG_RETURN_VOID();
	admin = get_role_oid(ES_ADMIN_ROLE, true);
	if (OidIsValid(admin) && has_privs_of_role(caller, admin))
		PG_RETURN_VOID();
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to run eventstream.%s()", what),
			 errdetail("Only superusers and members of role \"%s\" administer an eventstream site.",
					   ES_ADMIN_ROLE),
			 errhint("A superuser or a role with ADMIN OPTION on it runs: GRANT %s TO %s;",
					 ES_ADMIN_ROLE, es_role_name(caller, true))));
	PG_RETURN_VOID();
}

/*
 * eventstream_assert_may_grant
 *		eventstream._assert_may_grant(role regrole, action text): error
 *		unless the caller could grant membership in role, as GRANT decides
 *		in PostgreSQL 15: a superuser may grant any role; else the role must
 *		not be a superuser and the caller must have CREATEROLE or hold the
 *		role WITH ADMIN OPTION.  action says what the caller is doing
 *		with the role ("create an API key for") for the message.  A NULL
 *		role passes (the callers refuse it with their own message).
 */
Datum
eventstream_assert_may_grant(PG_FUNCTION_ARGS)
{
	Oid			role;
	const char *action;
	Oid			caller;

	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	role = PG_GETARG_OID(0);
	action = PG_ARGISNULL(1) ? "use" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	caller = es_caller("_assert_may_grant");
	if (superuser_arg(caller))
		PG_RETURN_VOID();
	if (!superuser_arg(role) &&
		(has_createrole_privilege(caller) || is_admin_of_role(caller, role)))
		PG_RETURN_VOID();
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied to %s role \"%s\"", action, es_role_name(role, false)),
			 errdetail("Only a role that may grant role \"%s\" may do this: a superuser, a role with CREATEROLE (unless \"%s\" is a superuser) or a role that holds it WITH ADMIN OPTION.",
					   es_role_name(role, false), es_role_name(role, false)),
			 errhint("A superuser runs: GRANT %s TO %s WITH ADMIN OPTION;",
					 es_role_name(role, true), es_role_name(caller, true))));
	PG_RETURN_VOID();
}

/*
 * eventstream_assert_unprivileged_role
 *		eventstream._assert_unprivileged_role(role regrole, what text,
 *		allow_admin boolean): error if role is a member of
 *		pg_read_server_files, pg_write_server_files or
 *		pg_execute_server_program (directly or through other roles;
 *		superusers are members of every role), or, unless allow_admin, of
 *		eventstream_admin.  Requests of other sites and the apply run as
 *		role: it must not reach the server's files or programs, nor the
 *		site's administration; a status page key (allow_admin) may
 *		administer.  what names what the role would be ("the role of an
 *		API key") for the message.  A NULL role passes.
 */
Datum
eventstream_assert_unprivileged_role(PG_FUNCTION_ARGS)
{
	static const char *const forbidden[] = {
		"pg_read_server_files", "pg_write_server_files", "pg_execute_server_program",
		ES_ADMIN_ROLE
	};
	Oid			role;
	const char *what;
	bool		allow_admin;

	if (PG_ARGISNULL(0))
		PG_RETURN_VOID();
	role = PG_GETARG_OID(0);
	what = PG_ARGISNULL(1) ? "this role" : text_to_cstring(PG_GETARG_TEXT_PP(1));
	allow_admin = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	for (size_t i = 0; i < lengthof(forbidden); i++)
	{
		Oid			f;

		if (allow_admin && strcmp(forbidden[i], ES_ADMIN_ROLE) == 0)
			continue;
		f = get_role_oid(forbidden[i], true);
		if (OidIsValid(f) && is_member_of_role(role, f))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("role \"%s\" cannot be %s", es_role_name(role, false), what),
					 allow_admin ?
					 errdetail("It is a member of role \"%s\".  Requests with the key run with the privileges of its role, which must not read or write the server's files or run programs on it.",
							   forbidden[i]) :
					 errdetail("It is a member of role \"%s\".  Requests of other sites and the apply run with the privileges of their role, which must not read or write the server's files, run programs on it or administer the site.",
							   forbidden[i]),
					 allow_admin ?
					 errhint("Use a role that is a member of eventstream_admin or pg_monitor and nothing more.") :
					 errhint("Use a role with just the privileges the other site or the apply needs.")));
	}
	PG_RETURN_VOID();
}
