/*-------------------------------------------------------------------------
 *
 * status_page.c
 *	  The site's HTML status page: its requests, who may see it, and the
 *	  actions its buttons run.
 *
 * The HTTP server (src/http/server.c) hands over GET or HEAD of "/" and
 * ES_STATUS_PATH, and POST of ES_STATUS_PATH "/approve", "/reject" and
 * "/resync".  Each request runs in a transaction of its own inside
 * PG_TRY, like an API request: an ERROR becomes an HTML error page, never
 * a longjmp through libmicrohttpd frames.
 *
 * Who: an API key (Basic base64(key:secret), so that a browser prompts for
 * it; "token key:secret" works too) whose role has the privileges of
 * eventstream_admin or of pg_monitor.  Without valid credentials the answer
 * is 401 with WWW-Authenticate: Basic realm="eventstream"; a key of
 * another role gets 403.  pg_monitor members see the page without its
 * buttons; the actions need eventstream_admin.
 *
 * Actions: a form POST (application/x-www-form-urlencoded) carrying a
 * token, the HMAC-SHA256 of the key under a random secret of this worker
 * (es_status_token), so that another site cannot make a browser that holds
 * the credentials post one; requests whose Sec-Fetch-Site is not
 * same-origin, or whose Origin is not this endpoint's, are refused too.
 * An action calls the public function (approve, reject, resync) with
 * es_status_page_caller set to the key's role, the caller the
 * administrative functions check (src/site/admin.c); success answers
 * 303 See Other back to the page, an error an HTML page saying it (its
 * status as for an API error: 403 for a refusal, never 500 for what the
 * caller did).
 *
 * The page itself is built by src/http/status_render.c.  Everything is in
 * the database encoding until the answer, which is UTF-8 (src/site/wire.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/status_page.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "common/hmac.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "eventstream.h"
#include "http/api.h"
#include "http/status_page.h"
#include "site/wire.h"

#define ES_STATUS_SECRET_LEN	32
#define ES_STATUS_TOKEN_LEN		32	/* bytes of HMAC-SHA256 */

Oid			es_status_page_caller = InvalidOid;

static MemoryContext es_status_cxt = NULL;	/* reset after every request */
static uint8 es_status_secret[ES_STATUS_SECRET_LEN];
static bool es_status_secret_made = false;

/* An answer, built in es_status_cxt and copied into the MHD response. */
typedef struct EsStatusAnswer
{
	unsigned int status;
	StringInfoData html;
	const char *location;		/* 303: where to */
	bool		challenge;		/* 401: WWW-Authenticate */
} EsStatusAnswer;

/*
 * es_status_page_path
 *		Whether path (as the client sent it) is the status page's.
 */
bool
es_status_page_path(const char *path)
{
	return strcmp(path, "/") == 0 || strcmp(path, ES_STATUS_PATH) == 0 ||
		strncmp(path, ES_STATUS_PATH "/", strlen(ES_STATUS_PATH) + 1) == 0;
}

/*
 * es_status_token
 *		The hexadecimal CSRF token of key (palloc'd): HMAC-SHA256 of the key
 *		under a secret this worker draws the first time (so tokens change
 *		when the worker restarts: a page loaded before asks to be reloaded).
 */
static char *
es_status_token(const char *key)
{
	pg_hmac_ctx *ctx;
	uint8		mac[ES_STATUS_TOKEN_LEN];
	char	   *hex = palloc(2 * ES_STATUS_TOKEN_LEN + 1);

	if (!es_status_secret_made)
	{
		if (!pg_strong_random(es_status_secret, sizeof(es_status_secret)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate the status page's random secret")));
		es_status_secret_made = true;
	}
	ctx = pg_hmac_create(PG_SHA256);
	if (ctx == NULL ||
		pg_hmac_init(ctx, es_status_secret, sizeof(es_status_secret)) < 0 ||
		pg_hmac_update(ctx, (const uint8 *) key, strlen(key)) < 0 ||
		pg_hmac_final(ctx, mac, sizeof(mac)) < 0)
	{
		const char *why = ctx ? pg_hmac_error(ctx) : "out of memory";

		pg_hmac_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute the status page's token: %s", why)));
	}
	pg_hmac_free(ctx);
	for (int i = 0; i < ES_STATUS_TOKEN_LEN; i++)
		sprintf(hex + 2 * i, "%02x", mac[i]);
	return hex;
}

/*
 * es_status_equal
 *		Whether two strings are equal, in a time that does not depend on
 *		where they differ.
 */
static bool
es_status_equal(const char *a, const char *b)
{
	size_t		la = strlen(a);
	size_t		lb = strlen(b);
	unsigned char diff = (la != lb);

	for (size_t i = 0; i < la && i < lb; i++)
		diff |= (unsigned char) (a[i] ^ b[i]);
	return diff == 0;
}

/*
 * es_status_form_value
 *		The value of field name in an application/x-www-form-urlencoded
 *		body (UTF-8), decoded and in the database encoding (palloc'd); NULL
 *		when the body has no such field.  '+' is a space; an escape that is
 *		not two hexadecimal digits stays as it is; an escaped NUL is an
 *		ERROR (400), as is text the database encoding cannot hold.
 */
static const char *
es_status_form_value(const char *body, const char *name)
{
	size_t		namelen = strlen(name);
	const char *p = body;

	while (p != NULL && *p != '\0')
	{
		size_t		len = strcspn(p, "&");

		if (len > namelen && strncmp(p, name, namelen) == 0 && p[namelen] == '=')
		{
			const char *v = p + namelen + 1;
			size_t		vlen = len - namelen - 1;
			char	   *out = palloc(vlen + 1);
			int			n = 0;

			for (size_t i = 0; i < vlen; i++)
			{
				int			hi = i + 2 < vlen && v[i] == '%' ? es_http_hex_digit(v[i + 1]) : -1;
				int			lo = hi >= 0 ? es_http_hex_digit(v[i + 2]) : -1;

				if (v[i] == '+')
					out[n++] = ' ';
				else if (hi >= 0 && lo >= 0)
				{
					if (hi == 0 && lo == 0)
						ereport(ERROR,
								(errcode(ERRCODE_INVALID_ESCAPE_SEQUENCE),
								 errmsg("the form field \"%s\" holds a NUL byte", name)));
					out[n++] = (char) (hi * 16 + lo);
					i += 2;
				}
				else
					out[n++] = v[i];
			}
			out[n] = '\0';
			return pg_any_to_server(out, n, PG_UTF8);
		}
		p += len;
		if (*p == '&')
			p++;
	}
	return NULL;
}

/*
 * es_status_cross_site
 *		Why a POST looks cross-site (a constant message), or NULL: its
 *		Sec-Fetch-Site is given and not same-origin, or its Origin is given
 *		and is not http(s)://<its Host>.
 */
static const char *
es_status_cross_site(struct MHD_Connection *conn)
{
	const char *site = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Sec-Fetch-Site");
	const char *origin = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Origin");
	const char *host = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Host");

	if (site != NULL && strcmp(site, "same-origin") != 0)
		return "The request comes from another site (Sec-Fetch-Site).";
	if (origin != NULL)
	{
		const char *rest = NULL;

		if (strncmp(origin, "http://", 7) == 0)
			rest = origin + 7;
		else if (strncmp(origin, "https://", 8) == 0)
			rest = origin + 8;
		if (rest == NULL || host == NULL || pg_strcasecmp(rest, host) != 0)
			return "The request comes from another site (Origin).";
	}
	return NULL;
}

/*
 * es_status_rows
 *		Run sql with text arguments (NULL for NULL), read-only or not, for
 *		at most limit rows (0: all); its rows are left in SPI_tuptable,
 *		their number returned.  Inside SPI.
 */
uint64
es_status_rows(const char *sql, int nargs, const char **args, bool read_only, long limit)
{
	Oid			types[4];
	Datum		values[4];
	char		nulls[4] = {0};

	Assert(nargs <= 4);
	for (int i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	if (SPI_execute_with_args(sql, nargs, types, values, nulls, read_only, limit) < 0)
		elog(ERROR, "unexpected result from \"%s\"", sql);
	return SPI_processed;
}

/*
 * es_status_query
 *		Run sql with text arguments (NULL for NULL); the first column of
 *		its first row as text, or NULL.  Inside SPI.
 */
static char *
es_status_query(const char *sql, int nargs, const char **args)
{
	if (es_status_rows(sql, nargs, args, false, 1) < 1)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * es_status_message
 *		An HTML page that says message (and detail and hint, when given),
 *		with a link back to the status page.
 */
static void
es_status_message(EsStatusAnswer *a, unsigned int status, const char *title,
				  const char *message, const char *detail, const char *hint)
{
	a->status = status;
	resetStringInfo(&a->html);
	appendStringInfoString(&a->html,
						   "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
						   "<title>eventstream: ");
	es_html_escape(&a->html, title);
	appendStringInfoString(&a->html,
						   "</title><style>body{font-family:sans-serif;margin:2em}"
						   ".error{color:#a00}</style></head><body><h1>");
	es_html_escape(&a->html, title);
	appendStringInfoString(&a->html, "</h1><p class=\"error\" id=\"message\">");
	es_html_escape(&a->html, message);
	appendStringInfoString(&a->html, "</p>");
	if (detail)
	{
		appendStringInfoString(&a->html, "<p>");
		es_html_escape(&a->html, detail);
		appendStringInfoString(&a->html, "</p>");
	}
	if (hint)
	{
		appendStringInfoString(&a->html, "<p>Hint: ");
		es_html_escape(&a->html, hint);
		appendStringInfoString(&a->html, "</p>");
	}
	appendStringInfoString(&a->html, "<p><a href=\"" ES_STATUS_PATH "\">Back to the status page</a></p></body></html>\n");
}

/*
 * es_status_action
 *		Run the action of a POST to path (ES_STATUS_PATH "/approve",
 *		"/reject" or "/resync") with the fields of body, calling the public
 *		function with the key's role as its caller.  False (with a 404 in
 *		*a) for another path.
 */
static bool
es_status_action(EsStatusAnswer *a, const char *path, const char *body, Oid roleid)
{
	const char *action = strncmp(path, ES_STATUS_PATH, strlen(ES_STATUS_PATH)) == 0
		? path + strlen(ES_STATUS_PATH) : "";
	const char *args[2];
	const char *sql;
	int			nargs;

	if (strcmp(action, "/approve") == 0 || strcmp(action, "/reject") == 0)
	{
		args[0] = es_status_form_value(body, "consumer_url");
		args[1] = es_status_form_value(body, "ref_table");
		nargs = 2;
		sql = strcmp(action, "/approve") == 0
			? "SELECT eventstream.approve($1, $2)"
			: "SELECT eventstream.reject($1, $2)";
	}
	else if (strcmp(action, "/resync") == 0)
	{
		args[0] = es_status_form_value(body, "id");
		nargs = 1;
		sql = "SELECT eventstream.resync($1::bigint)";
	}
	else
	{
		es_status_message(a, MHD_HTTP_NOT_FOUND, "Not found", "No such action.", NULL, NULL);
		return false;
	}
	for (int i = 0; i < nargs; i++)
		if (args[i] == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("the form does not give every field the action needs")));

	/* On an ERROR, es_status_page resets es_status_page_caller. */
	es_status_page_caller = roleid;
	(void) es_status_query(sql, nargs, args);
	es_status_page_caller = InvalidOid;
	return true;
}

/*
 * es_status_serve
 *		Serve a status page request in the current transaction, inside
 *		SPI; fills *a.
 */
static void
es_status_serve(EsStatusAnswer *a, struct MHD_Connection *conn, const char *method,
				const char *path, const char *body)
{
	char	   *key = NULL;
	char	   *secret = NULL;
	const char *args[2];
	char	   *role = NULL;
	Oid			roleid = InvalidOid;
	Oid			admin_role = get_role_oid("eventstream_admin", true);
	bool		admin;
	bool		monitor;
	bool		post = strcmp(method, "POST") == 0;

	if (es_http_credentials(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
							&key, &secret))
	{
		key = pg_any_to_server(key, strlen(key), PG_UTF8);
		args[0] = key;
		args[1] = pg_any_to_server(secret, strlen(secret), PG_UTF8);
		role = es_status_query("SELECT eventstream._check_api_key($1, $2)::oid::text", 2, args);
	}
	if (role == NULL)
	{
		es_status_message(a, MHD_HTTP_UNAUTHORIZED, "Sign in",
						  "The status page needs an API key of a role that is a member of eventstream_admin or pg_monitor.",
						  "Give the key as the user name and its secret as the password.", NULL);
		a->challenge = true;
		return;
	}
	roleid = atooid(role);
	admin = OidIsValid(admin_role) && has_privs_of_role(roleid, admin_role);
	monitor = admin || has_privs_of_role(roleid, ROLE_PG_MONITOR);
	role = GetUserNameFromId(roleid, true);
	if (!monitor || role == NULL)
	{
		es_status_message(a, MHD_HTTP_FORBIDDEN, "Forbidden",
						  "The status page is for the members of eventstream_admin and pg_monitor.",
						  role ? psprintf("The role of this API key, \"%s\", is neither.", role) : NULL,
						  NULL);
		return;
	}

	if (!post && (strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0))
	{
		if (strcmp(path, "/") != 0 && strcmp(path, ES_STATUS_PATH) != 0)
		{
			es_status_message(a, MHD_HTTP_NOT_FOUND, "Not found", "No such page.", NULL, NULL);
			return;
		}
		a->status = MHD_HTTP_OK;
		es_status_render(&a->html, conn, role, admin, admin ? es_status_token(key) : NULL);
		return;
	}
	if (!post)
	{
		es_status_message(a, MHD_HTTP_METHOD_NOT_ALLOWED, "Method not allowed",
						  "The status page takes GET, and POST for its actions.", NULL, NULL);
		return;
	}
	if (!admin)
	{
		es_status_message(a, MHD_HTTP_FORBIDDEN, "Forbidden",
						  "Only the members of eventstream_admin act on the status page.",
						  psprintf("The role of this API key, \"%s\", may look but not act.", role),
						  NULL);
		return;
	}
	{
		const char *why = es_status_cross_site(conn);
		const char *token = body ? es_status_form_value(body, "token") : NULL;

		if (why == NULL && (token == NULL || !es_status_equal(token, es_status_token(key))))
			why = "The form's token is missing or wrong: reload the status page and try again.";
		if (why != NULL)
		{
			es_status_message(a, MHD_HTTP_FORBIDDEN, "Forbidden",
							  "The action was refused.", why, NULL);
			return;
		}
	}
	if (es_status_action(a, path, body ? body : "", roleid))
	{
		es_status_message(a, MHD_HTTP_SEE_OTHER, "Done", "Done.", NULL, NULL);
		a->location = ES_STATUS_PATH;
	}
}

/*
 * es_status_queue
 *		Queue the answer: HTML in UTF-8 with headers that keep it out of
 *		caches and frames and allow no script or outside asset.
 */
static enum MHD_Result
es_status_queue(struct MHD_Connection *conn, EsStatusAnswer *a, const char *html)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(html), (void *) html, MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "text/html; charset=utf-8");
	MHD_add_response_header(resp, ES_HEADER_PROTOCOL, ES_PROTOCOL);
	MHD_add_response_header(resp, "Cache-Control", "no-store");
	MHD_add_response_header(resp, "X-Frame-Options", "DENY");
	MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
	MHD_add_response_header(resp, "Referrer-Policy", "same-origin");
	MHD_add_response_header(resp, "Content-Security-Policy",
							"default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
							"form-action 'self'; frame-ancestors 'none'; base-uri 'none'");
	if (a->challenge)
		MHD_add_response_header(resp, "WWW-Authenticate", "Basic realm=\"eventstream\", charset=\"UTF-8\"");
	if (a->location)
		MHD_add_response_header(resp, "Location", a->location);
	ret = MHD_queue_response(conn, a->status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * es_status_page
 *		Serve a request for the status page (es_status_page_path(path)):
 *		its own transaction, its answer queued on conn.  body is the
 *		request's body (NULL: none), NUL-terminated.
 *
 * Called from the HTTP server's access handler, i.e. from the worker's
 * wait loop with no transaction open.  Any ERROR is caught here and
 * becomes an HTML page saying it.
 */
enum MHD_Result
es_status_page(struct MHD_Connection *conn, const char *method, const char *path,
			   const char *body)
{
	MemoryContext callercxt;
	EsStatusAnswer a;
	char	   *volatile out = NULL;
	enum MHD_Result ret;

	if (es_status_cxt == NULL)
		es_status_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream status page",
											  ALLOCSET_DEFAULT_SIZES);
	callercxt = MemoryContextSwitchTo(es_status_cxt);
	memset(&a, 0, sizeof(a));
	initStringInfo(&a.html);
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		es_status_serve(&a, conn, method, path, body);
		/* In UTF-8 and out of SPI memory before it goes away. */
		out = MemoryContextStrdup(es_status_cxt,
								  es_wire_from_server(a.html.data, a.html.len, NULL));
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		es_status_page_caller = InvalidOid;
		MemoryContextSwitchTo(es_status_cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(es_status_cxt);
		memset(&a, 0, sizeof(a));
		initStringInfo(&a.html);
		es_status_message(&a, es_http_status_for(edata->sqlerrcode), "Error",
						  edata->message, edata->detail, edata->hint);
		out = es_wire_from_server(a.html.data, a.html.len, NULL);
	}
	PG_END_TRY();
	ret = es_status_queue(conn, &a, out);
	MemoryContextSwitchTo(callercxt);
	MemoryContextReset(es_status_cxt);
	return ret;
}
