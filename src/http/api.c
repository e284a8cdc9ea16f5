/*-------------------------------------------------------------------------
 *
 * api.c
 *	  The API endpoints of the site's HTTP server.
 *
 * es_http_api serves an authenticated request under ES_API_PREFIX in a
 * transaction of its own inside PG_TRY: an ERROR becomes a JSON error
 * reply and never longjmps through libmicrohttpd frames.  The caller's
 * key ("Authorization: token key:secret", or Basic with the same pair) is
 * checked first; then the path after ES_API_PREFIX, as the client sent it,
 * is split at '/' into segments and each is percent-decoded on its own
 * (es_api_segments: so "%2F" is a '/' inside a name, never a separator; a
 * malformed escape or an escaped NUL is a 400), and the first route of
 * es_api_routes that matches the method, the first segment and the number
 * of segments picks the endpoint:
 *	  POST consumers                      register or update the calling
 *	                                      consumer
 *	  GET  updates?consumer=&cursor=      its next page of updates (a
 *	                                      long-poll with wait=)
 *	  GET  documents/<table>/<docname>    one document with its children
 *	                                      (the segments after <table>,
 *	                                      joined by '/', are the docname)
 *	  GET  snapshot/<table>?after=        a page of existing documents
 *	                                      (initial sync)
 *	  GET  documents/<table>?filters=     docnames matching equality filters
 * Each endpoint is one SQL function of the extension, called with the
 * request's arguments as text.  A page of updates also says, for the
 * server's Eventstream-* headers, its next cursor, "more" and "complete"
 * (EsApiReply).
 *
 * The wire is UTF-8 whatever the database encoding: the path, the query
 * parameters, the credentials and the body are converted to the database
 * encoding first (a request that is not valid UTF-8, or holds a character
 * the database cannot, is answered 400), and every answer, errors
 * included, is converted to UTF-8 (src/site/wire.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/api.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <microhttpd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "http/api.h"
#include "http/metrics.h"
#include "site/wire.h"

/* A request as its endpoint sees it. */
typedef struct EsApiCall
{
	struct MHD_Connection *conn;
	char	  **seg;			/* the path's segments after ES_API_PREFIX,
								 * decoded, in the database encoding */
	int			nseg;
	const char *body;			/* NUL-terminated, or NULL */
	bool		may_park;		/* a long-poll that may wait for updates */
	const char *key;			/* the caller's API key */
	const char *role;			/* the role it gives (_check_api_key) */
	/* Set by an endpoint answering with a page of updates */
	char	   *cursor;			/* the page's next cursor, or NULL */
	bool		more;
	bool		complete;
} EsApiCall;

/*
 * An endpoint: the reply's JSON text (in the request's memory), with
 * *status set when it is not 200 (0: nothing yet, park the long-poll).
 * Runs inside the request's transaction, connected to SPI.
 */
typedef char *(*EsApiEndpoint) (EsApiCall *call, unsigned int *status);

/*
 * A route: the method, the first segment after ES_API_PREFIX, and how
 * many segments the path has (at least min_seg, at most max_seg; 0: no
 * limit).
 */
typedef struct EsApiRoute
{
	const char *method;
	const char *first;
	int			min_seg;
	int			max_seg;
	EsApiEndpoint endpoint;
} EsApiRoute;

static char *es_api_consumers(EsApiCall *call, unsigned int *status);
static char *es_api_updates(EsApiCall *call, unsigned int *status);
static char *es_api_document(EsApiCall *call, unsigned int *status);
static char *es_api_snapshot(EsApiCall *call, unsigned int *status);
static char *es_api_filtered(EsApiCall *call, unsigned int *status);
static void es_api_bad_escape(const char *esc, const char *where) pg_attribute_noreturn();

/* The routes, tried in order. */
static const EsApiRoute es_api_routes[] = {
	{"POST", "consumers", 1, 1, es_api_consumers},
	{"GET", "updates", 1, 1, es_api_updates},
	{"GET", "documents", 3, 0, es_api_document},	/* documents/<t>/<d> */
	{"GET", "snapshot", 2, 2, es_api_snapshot}, /* snapshot/<t> */
	{"GET", "documents", 2, 2, es_api_filtered},	/* documents/<t>?filters= */
};

static MemoryContext es_request_cxt = NULL;	/* reset after every API request */

/*
 * es_http_status_for
 *		HTTP status for an error raised while serving a request (an API
 *		request, or an action of the status page).
 */
unsigned int
es_http_status_for(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_INSUFFICIENT_PRIVILEGE:
			return MHD_HTTP_FORBIDDEN;
		case ERRCODE_UNDEFINED_OBJECT:
		case ERRCODE_UNDEFINED_TABLE:
			return MHD_HTTP_NOT_FOUND;
		case ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE:
			return MHD_HTTP_CONFLICT;
		case ERRCODE_CANNOT_CONNECT_NOW:	/* the site is being restored */
			return MHD_HTTP_SERVICE_UNAVAILABLE;
		case ERRCODE_STATEMENT_TOO_COMPLEX:	/* e.g. JSON nested too deeply */
			return MHD_HTTP_BAD_REQUEST;
		default:
			break;
	}
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:
		case ERRCODE_SYNTAX_ERROR_OR_ACCESS_RULE_VIOLATION:
		case ERRCODE_INVALID_TEXT_REPRESENTATION:
			return MHD_HTTP_BAD_REQUEST;
		default:
			return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/*
 * es_http_status_for_register
 *		HTTP status for an error raised while registering a consumer
 *		(POST consumers).  What the registration checks (the consumer's
 *		tables and conditions: syntax, injection, the sandbox's refusals)
 *		comes from the request, so every error that is not the server's
 *		own trouble (resources, shutdown, system or internal errors,
 *		serialization failures, locks) is the caller's: 400 where
 *		es_http_status_for would answer 500.
 */
static unsigned int
es_http_status_for_register(int sqlerrcode)
{
	unsigned int status = es_http_status_for(sqlerrcode);

	if (status != MHD_HTTP_INTERNAL_SERVER_ERROR)
		return status;
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_CONNECTION_EXCEPTION:
		case ERRCODE_TRANSACTION_ROLLBACK:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE:
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_CONFIG_FILE_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return MHD_HTTP_INTERNAL_SERVER_ERROR;
		default:
			return MHD_HTTP_BAD_REQUEST;
	}
}

/*
 * es_http_credentials
 *		Split "token key:secret" or "Basic base64(key:secret)" into key and
 *		secret (palloc'd, as sent).  False when the header is missing or
 *		malformed.  The metrics endpoint (src/http/metrics.c) and the status
 *		page (src/http/status_page.c) take the same.
 */
bool
es_http_credentials(const char *header, char **key, char **secret)
{
	char	   *pair;
	char	   *colon;

	if (header == NULL)
		return false;
	if (pg_strncasecmp(header, "token ", 6) == 0)
		pair = pstrdup(header + 6);
	else if (pg_strncasecmp(header, "basic ", 6) == 0)
	{
		const char *enc = header + 6;
		int			enclen = strlen(enc);
		int			len = pg_b64_dec_len(enclen);

		pair = palloc(len + 1);
		len = pg_b64_decode(enc, enclen, pair, len);
		if (len < 0)
			return false;
		pair[len] = '\0';
	}
	else
		return false;
	colon = strchr(pair, ':');
	if (colon == NULL)
		return false;
	*colon = '\0';
	*key = pair;
	*secret = colon + 1;
	return true;
}

/*
 * es_http_query
 *		Run one SQL statement with text arguments (in the database
 *		encoding: es_api_text converts what a request gives) and return
 *		the text of the first column of its one row (NULL for NULL); the
 *		row stays in SPI_tuptable for its other columns.  Inside SPI.
 */
static char *
es_http_query(const char *sql, int nargs, const char **args)
{
	Oid			types[8];
	Datum		values[8];
	char		nulls[8];
	int			i;

	for (i = 0; i < nargs; i++)
	{
		types[i] = TEXTOID;
		values[i] = args[i] ? CStringGetTextDatum(args[i]) : (Datum) 0;
		nulls[i] = args[i] ? ' ' : 'n';
	}
	if (SPI_execute_with_args(sql, nargs, types, values, nulls, false, 1) < 0 ||
		SPI_processed != 1)
		elog(ERROR, "unexpected result from \"%s\"", sql);
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/*
 * es_api_text
 *		What the request gave (UTF-8), in the database encoding: NULL for
 *		NULL; a request that is not valid UTF-8 or holds a character the
 *		database encoding cannot is refused with the conversion's error
 *		(a 400).  In the request's transaction.
 */
static const char *
es_api_text(const char *s)
{
	if (s == NULL)
		return NULL;
	return pg_any_to_server(s, strlen(s), PG_UTF8);
}

/*
 * es_api_param
 *		The query parameter name of the request, in the database encoding
 *		(NULL when not given).
 */
static const char *
es_api_param(EsApiCall *call, const char *name)
{
	return es_api_text(MHD_lookup_connection_value(call->conn, MHD_GET_ARGUMENT_KIND, name));
}

/*
 * es_api_consumers
 *		POST consumers: register or update the calling consumer.
 */
static char *
es_api_consumers(EsApiCall *call, unsigned int *status)
{
	const char *args[3];

	/* Register or update the calling consumer: {consumer_url, site_id, tables}. */
	args[0] = call->key;
	args[1] = call->role;
	args[2] = call->body ? call->body : "";
	return es_http_query("SELECT eventstream._register_consumer(b->>'consumer_url', (b->>'site_id')::uuid,"
						 "  $1, $2::regrole, b->'tables')::text"
						 "  FROM (SELECT $3::jsonb AS b) r", 3, args);
}

/*
 * es_api_takes_resync
 *		Whether a pull may be answered with a page that tells the consumer
 *		to copy its tables again: it said it takes one (resync=1), and this
 *		database's _pull_page can give one (once its extension is at a
 *		version that has it, it stays so).
 */
static bool
es_api_takes_resync(EsApiCall *call)
{
	static bool has_resync = false;
	const char *asked = es_api_param(call, "resync");

	if (asked == NULL || strcmp(asked, "1") != 0)
		return false;
	if (!has_resync)
	{
		char	   *found = es_http_query("SELECT (to_regprocedure('eventstream._pull_page(text,text,integer,text,boolean)')"
										  " IS NOT NULL)::text", 0, NULL);

		has_resync = found != NULL && strcmp(found, "true") == 0;
	}
	return has_resync;
}

/*
 * es_api_updates
 *		GET updates?consumer=&cursor=&limit=[&ack=][&resync=1]: the consumer's next
 *		page, for the key it registered with; call->cursor, more and
 *		complete say what the page does (its Eventstream-* headers).
 */
static char *
es_api_updates(EsApiCall *call, unsigned int *status)
{
	const char *consumer = es_api_param(call, "consumer");
	const char *cursor = es_api_param(call, "cursor");
	const char *limit = es_api_param(call, "limit");
	const char *args[5];
	char	   *owner;
	char	   *result;
	TimestampTz started = GetCurrentTimestamp();

	args[0] = call->key;
	args[1] = consumer;
	owner = es_http_query("SELECT (SELECT c.api_key = $1 FROM eventstream.consumer c"
						  " WHERE c.consumer_url = $2)::text", 2, args);
	if (owner == NULL)
	{
		*status = MHD_HTTP_NOT_FOUND;
		result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such consumer.\"}}";
	}
	else if (strcmp(owner, "true") != 0)
	{
		*status = MHD_HTTP_FORBIDDEN;
		result = "{\"error\": {\"code\": \"forbidden\", \"message\": \"This consumer was registered with another key.\"}}";
	}
	else
	{
		args[0] = consumer;
		args[1] = cursor;
		args[2] = limit ? limit : CppAsString2(ES_PAGE_DEFAULT);
		args[3] = call->may_park ? "true" : "false";
		/* ack=: what a pipelining consumer has applied (see _pull_page) */
		args[4] = es_api_param(call, "ack");
		/*
		 * '' = nothing yet and the caller may wait for more: only a
		 * page that ends at the newest commit; one that ends earlier
		 * (nothing for this consumer up to a tick) moves its cursor on
		 * at once.
		 */
		result = es_http_query(es_api_takes_resync(call)
							   ? "SELECT CASE WHEN $4::boolean AND p.served = 0 AND NOT p.news AND p.caught_up"
							   "            THEN '' ELSE p.page END,"
							   "       p.next_cursor, p.more::text, p.complete::text, p.served"
							   "  FROM eventstream._pull_page($1, $2, $3::integer, $5, resync => true) p"
							   : "SELECT CASE WHEN $4::boolean AND p.served = 0 AND NOT p.news AND p.caught_up"
							   "            THEN '' ELSE p.page END,"
							   "       p.next_cursor, p.more::text, p.complete::text, p.served"
							   "  FROM eventstream._pull_page($1, $2, $3::integer, $5) p", 5, args);
		if (result != NULL && result[0] == '\0')
			*status = 0;
		else if (result != NULL)
		{
			HeapTuple	row = SPI_tuptable->vals[0];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			char	   *more = SPI_getvalue(row, desc, 3);
			char	   *complete = SPI_getvalue(row, desc, 4);
			char	   *served = SPI_getvalue(row, desc, 5);

			call->cursor = SPI_getvalue(row, desc, 2);
			call->more = more != NULL && strcmp(more, "true") == 0;
			call->complete = complete != NULL && strcmp(complete, "true") == 0;
			es_metrics_served(served ? atol(served) : 0, started);
		}
	}
	return result;
}

/*
 * es_api_document
 *		GET documents/<table>/<docname>: one document with its children.
 */
static char *
es_api_document(EsApiCall *call, unsigned int *status)
{
	StringInfoData docname;
	const char *args[3];

	/* documents/<table>/<docname>: the docname is the rest of the path. */
	initStringInfo(&docname);
	for (int i = 2; i < call->nseg; i++)
	{
		if (i > 2)
			appendStringInfoChar(&docname, '/');
		appendStringInfoString(&docname, call->seg[i]);
	}
	args[0] = call->seg[1];
	args[1] = docname.data;
	args[2] = call->role;
	return es_http_query("SELECT eventstream._serve_document($1, $2, $3::regrole)::text", 3, args);
}

/*
 * es_api_snapshot
 *		GET snapshot/<table>?after=<docname>&limit=<n>[&consumer=<url>]:
 *		existing documents; for a consumer (its initial sync), only with
 *		the key it registered with, and only what it may have.
 */
static char *
es_api_snapshot(EsApiCall *call, unsigned int *status)
{
	const char *after = es_api_param(call, "after");
	const char *limit = es_api_param(call, "limit");
	const char *consumer = es_api_param(call, "consumer");
	const char *args[5];
	char	   *owner = NULL;
	char	   *result;

	args[0] = call->key;
	if (consumer != NULL)
	{
		args[1] = consumer;
		owner = es_http_query("SELECT (SELECT c.api_key = $1 FROM eventstream.consumer c"
							  " WHERE c.consumer_url = $2)::text", 2, args);
	}
	if (consumer != NULL && owner == NULL)
	{
		*status = MHD_HTTP_NOT_FOUND;
		result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such consumer.\"}}";
	}
	else if (consumer != NULL && strcmp(owner, "true") != 0)
	{
		*status = MHD_HTTP_FORBIDDEN;
		result = "{\"error\": {\"code\": \"forbidden\", \"message\": \"This consumer was registered with another key.\"}}";
	}
	else
	{
		args[0] = call->seg[1];
		args[1] = after;
		args[2] = limit ? limit : CppAsString2(ES_PAGE_DEFAULT);
		args[3] = call->role;
		args[4] = consumer;
		result = es_http_query("SELECT eventstream._serve_snapshot($1, $2, $3::integer, $4::regrole, $5)::text",
							   5, args);
	}
	return result;
}

/*
 * es_api_filtered
 *		GET documents/<table>?filters=<json>&limit=<n>: the docnames of the
 *		documents matching equality filters.
 */
static char *
es_api_filtered(EsApiCall *call, unsigned int *status)
{
	const char *filters = es_api_param(call, "filters");
	const char *limit = es_api_param(call, "limit");
	const char *args[4];

	args[0] = call->seg[1];
	args[1] = filters ? filters : "{}";
	args[2] = limit ? limit : "20";
	args[3] = call->role;
	return es_http_query("SELECT eventstream._serve_filtered($1, $2::jsonb, $3::integer, $4::regrole)::text",
						 4, args);
}

/*
 * es_http_hex_digit
 *		The value of a hexadecimal digit, or -1.  The status page's form
 *		decoding uses it too.
 */
int
es_http_hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * es_api_bad_escape
 *		Refuse the malformed or NUL escape at esc of a request's path or
 *		query string (where): a 400 naming it (its bytes that are not
 *		printable ASCII shown as '?', so that the message stays valid text).
 */
static void
es_api_bad_escape(const char *esc, const char *where)
{
	char		shown[4];
	int			i;

	for (i = 0; i < 3 && esc[i] != '\0'; i++)
		shown[i] = (esc[i] > 0x20 && esc[i] < 0x7f) ? esc[i] : '?';
	shown[i] = '\0';
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_ESCAPE_SEQUENCE),
			 errmsg("invalid percent-encoding \"%s\" in the request %s", shown, where),
			 strcmp(shown, "%00") == 0
			 ? errhint("A table name or a docname cannot hold a NUL byte.")
			 : errhint("%% followed by two hexadecimal digits stands for a byte: a '%%' is written %%25, and a '/' inside a table name or docname %%2F.")));
}

/*
 * es_api_segments
 *		Split path (the raw path after ES_API_PREFIX, as the client sent
 *		it) at each '/' and percent-decode each segment on its own, into
 *		*seg (palloc'd, in the database encoding; *nseg of them).  A
 *		malformed escape, an escaped NUL, or a segment that is not UTF-8 or
 *		that the database encoding cannot hold is an ERROR (a 400).  No
 *		segment is interpreted: "." and ".." are names like any other.  In
 *		the request's transaction.
 */
static void
es_api_segments(const char *path, char ***seg, int *nseg)
{
	int			n = 1;
	int			i = 0;
	const char *p;

	for (p = path; *p != '\0'; p++)
		if (*p == '/')
			n++;
	*seg = palloc(n * sizeof(char *));
	*nseg = n;
	p = path;
	for (;;)
	{
		size_t		len = strcspn(p, "/");
		char	   *out = palloc(len + 1);
		int			outlen = 0;

		for (size_t j = 0; j < len; j++)
		{
			if (p[j] != '%')
				out[outlen++] = p[j];
			else
			{
				int			hi = j + 1 < len ? es_http_hex_digit(p[j + 1]) : -1;
				int			lo = j + 2 < len ? es_http_hex_digit(p[j + 2]) : -1;

				if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
					es_api_bad_escape(p + j, "path");
				out[outlen++] = (char) (hi * 16 + lo);
				j += 2;
			}
		}
		out[outlen] = '\0';
		(*seg)[i++] = (char *) es_api_text(out);
		if (p[len] == '\0')
			break;
		p += len + 1;
	}
	Assert(i == n);
}

/*
 * es_api_check_query
 *		Refuse a query string (as the client sent it) holding a malformed
 *		escape or an escaped NUL, as es_api_segments refuses such a path:
 *		libmicrohttpd, which decodes the parameters, would keep the one
 *		as it is and cut the value at the other.  ('+' is a space there,
 *		and "%2B" a '+'.)
 */
static void
es_api_check_query(const char *query)
{
	for (const char *p = query; *p != '\0'; p++)
	{
		if (*p != '%')
			continue;
		if (es_http_hex_digit(p[1]) < 0 || es_http_hex_digit(p[2]) < 0 || (p[1] == '0' && p[2] == '0'))
			es_api_bad_escape(p, "query string");
		p += 2;
	}
}

/*
 * es_api_route
 *		The first route that matches method and the path's segments, or
 *		NULL.
 */
static const EsApiRoute *
es_api_route(const char *method, char **seg, int nseg)
{
	for (int i = 0; i < (int) lengthof(es_api_routes); i++)
	{
		const EsApiRoute *r = &es_api_routes[i];

		if (strcmp(method, r->method) != 0 || strcmp(seg[0], r->first) != 0)
			continue;
		if (nseg < r->min_seg || (r->max_seg > 0 && nseg > r->max_seg))
			continue;
		return r;
	}
	return NULL;
}

/*
 * es_http_api_init
 *		Set up the request memory; called when the server starts.
 */
void
es_http_api_init(void)
{
	if (es_request_cxt == NULL)
		es_request_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream request",
											   ALLOCSET_DEFAULT_SIZES);
}

/*
 * es_http_api_free
 *		Free what an EsApiReply holds.
 */
void
es_http_api_free(EsApiReply *reply)
{
	free(reply->body);
	free(reply->cursor);
	memset(reply, 0, sizeof(EsApiReply));
}

/*
 * es_http_api
 *		Serve an authenticated API request in a transaction of its own.
 *		Returns the HTTP status and fills *reply (its body NULL when out of
 *		memory); the caller frees it with es_http_api_free.
 *
 * Called from the access handler, i.e. from the worker's wait loop with no
 * transaction open; path and query are the path (under ES_API_PREFIX) and
 * the query string (NULL: none) as the client sent them, percent-encoded;
 * the query parameters themselves are read decoded from conn.  The
 * request's texts are UTF-8 and so is the reply (see the file header).
 * Any ERROR is caught here and becomes a JSON error reply: nothing
 * longjmps through libmicrohttpd.
 */
unsigned int
es_http_api(struct MHD_Connection *conn, const char *method, const char *path,
			const char *query, const char *body, bool may_park, EsApiReply *reply)
{
	MemoryContext callercxt = MemoryContextSwitchTo(es_request_cxt);
	MemoryContext oldcxt = es_request_cxt;
	volatile unsigned int status = MHD_HTTP_OK;
	char	   *volatile result = NULL;
	volatile bool registering = false;

	memset(reply, 0, sizeof(EsApiReply));
	PG_TRY();
	{
		char	   *key = NULL;
		char	   *secret;
		const char *args[2];
		char	   *role;
		const EsApiRoute *route = NULL;
		char	  **seg = NULL;
		int			nseg = 0;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();

		if (!es_http_credentials(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
								 &key, &secret))
			role = NULL;
		else
		{
			key = (char *) es_api_text(key);
			args[0] = key;
			args[1] = es_api_text(secret);
			role = es_http_query("SELECT eventstream._check_api_key($1, $2)::text", 2, args);
		}

		/* The server hands over only paths under ES_API_PREFIX. */
		if (role != NULL)
		{
			if (query != NULL)
				es_api_check_query(query);
			es_api_segments(path + strlen(ES_API_PREFIX), &seg, &nseg);
			route = es_api_route(method, seg, nseg);
		}

		if (role == NULL)
		{
			status = MHD_HTTP_UNAUTHORIZED;
			result = "{\"error\": {\"code\": \"unauthorized\", \"message\": \"A valid API key is required.\"}}";
		}
		else if (route != NULL)
		{
			EsApiCall	call;
			unsigned int call_status = MHD_HTTP_OK;

			call.conn = conn;
			call.seg = seg;
			call.nseg = nseg;
			call.body = es_api_text(body);
			call.may_park = may_park;
			call.key = key;
			call.role = role;
			call.cursor = NULL;
			call.more = false;
			call.complete = false;
			registering = route->endpoint == es_api_consumers;
			result = route->endpoint(&call, &call_status);
			status = call_status;
			if (call.cursor != NULL && status == MHD_HTTP_OK)
			{
				reply->cursor = strdup(call.cursor);
				reply->more = call.more;
				reply->complete = call.complete;
			}
		}
		else
		{
			status = MHD_HTTP_NOT_FOUND;
			result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such endpoint.\"}}";
		}

		/* In UTF-8, out of SPI memory before it goes away. */
		reply->body = strdup(es_wire_from_server(result, strlen(result), NULL));
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;
		StringInfoData buf;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(oldcxt);
		es_http_api_free(reply);	/* the commit failed: no page */
		status = registering ? es_http_status_for_register(edata->sqlerrcode)
			: es_http_status_for(edata->sqlerrcode);
		initStringInfo(&buf);
		appendStringInfo(&buf, "{\"error\": {\"code\": \"%s\", \"message\": ",
						 unpack_sql_state(edata->sqlerrcode));
		escape_json(&buf, edata->message);
		if (edata->hint)
		{
			appendStringInfoString(&buf, ", \"hint\": ");
			escape_json(&buf, edata->hint);
		}
		appendStringInfoString(&buf, "}}");
		reply->body = strdup(es_wire_from_server(buf.data, buf.len, NULL));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);
	MemoryContextReset(es_request_cxt);
	return status;
}
