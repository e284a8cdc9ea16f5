/*-------------------------------------------------------------------------
 *
 * server.c
 *	  The site's HTTP endpoint: libmicrohttpd driven from the site worker's
 *	  own wait loop.
 *
 * The daemon runs without any thread of its own (MHD_USE_EPOLL): its epoll
 * descriptor is one more socket the worker waits on, and the worker calls
 * es_http_run() whenever it wakes.  Request handlers therefore run on the
 * worker's stack, between its transactions.
 *
 * Endpoints so far: health (no key), POST consumers (register or update
 * the calling consumer), GET updates (its next page) and GET
 * documents/<table>/<docname> (one document with its children) and GET
 * documents/<table>?filters= (docnames matching equality filters) and GET
 * snapshot/<table>?after= (pages of existing documents, initial sync).  Everything under
 * /api/eventstream/v1/ but health needs "Authorization: token key:secret"
 * (or Basic with the same pair), checked before routing.  An API request
 * runs in a transaction of its own inside PG_TRY (es_http_api): an ERROR
 * becomes a JSON error reply and never longjmps through libmicrohttpd
 * frames.  Request state and replies are malloc'd, and bodies are capped.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/server.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/base64.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/builtins.h"
#include "mb/pg_wchar.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eventstream.h"
#include "http/server.h"

#define ES_API_PREFIX	"/api/eventstream/v1/"

/* Per-request state, malloc'd (no PostgreSQL allocation in MHD frames). */
typedef struct EsRequest
{
	char	   *body;
	size_t		len;
	bool		too_large;
	TimestampTz deadline;		/* long-poll: answer by then (0: not waiting) */
	struct MHD_Connection *conn;
	bool		parked;			/* suspended, on es_parked */
	struct EsRequest *next;		/* next parked request */
} EsRequest;

#define ES_MAX_WAIT_S	300		/* longest long-poll accepted */

/* GUCs (registered by _PG_init): see server.h. */
int			es_http_port = 0;
char	   *es_http_listen_address = NULL;
char	   *es_http_tls_cert_file = NULL;
char	   *es_http_tls_key_file = NULL;
int			es_http_max_request_size = 1024;	/* kB */

/* Long-polls parked until a commit writes logs or their deadline passes. */
static EsRequest *es_parked = NULL;

static struct MHD_Daemon *es_daemon = NULL;
static MemoryContext es_request_cxt = NULL;	/* reset after every API request */
static bool es_in_run = false;	/* inside MHD_run, i.e. maybe in a handler */
static bool es_shutting_down = false;	/* answer everything 503 */
static char es_site_id[64];
static char *es_tls_cert = NULL;	/* PEM texts, kept while the daemon runs */
static char *es_tls_key = NULL;
static EsHttpBeforePark es_before_park = NULL;	/* given to es_http_start */

/*
 * es_http_logger
 *		libmicrohttpd's messages go to the server log.
 */
static void
es_http_logger(void *cls, const char *fmt, va_list ap)
{
	char		buf[512];

	vsnprintf(buf, sizeof(buf), fmt, ap);
	ereport(LOG, (errmsg_internal("eventstream http: %s", buf)));
}

/*
 * es_http_reply
 *		Queue a JSON reply; body is copied.
 */
static enum MHD_Result
es_http_reply(struct MHD_Connection *conn, unsigned int status, const char *body)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(body), (void *) body,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type", "application/json");
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * es_http_error
 *		Reply {"error": {"code": ..., "message": ...}}; message is a constant
 *		without characters that need JSON escaping.
 */
static enum MHD_Result
es_http_error(struct MHD_Connection *conn, unsigned int status,
			  const char *code, const char *message)
{
	char		body[512];

	snprintf(body, sizeof(body), "{\"error\": {\"code\": \"%s\", \"message\": \"%s\"}}",
			 code, message);
	return es_http_reply(conn, status, body);
}

/*
 * es_http_status_for
 *		HTTP status for an error raised while serving a request.
 */
static unsigned int
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
 * es_http_credentials
 *		Split "token key:secret" or "Basic base64(key:secret)" into key and
 *		secret (palloc'd).  False when the header is missing or malformed.
 */
static bool
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
 *		Run one SQL statement with text arguments and return the text of
 *		the first column of its one row (NULL for NULL).  Inside SPI.
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
		/* Request bytes become text only when valid in the database encoding. */
		if (args[i])
			(void) pg_verifymbstr(args[i], strlen(args[i]), false);
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
 * es_http_api
 *		Serve an authenticated API request in a transaction of its own.
 *		Returns the HTTP status and sets *reply (malloc'd JSON).
 *
 * Called from the access handler, i.e. from the worker's wait loop with no
 * transaction open.  Any ERROR is caught here and becomes a JSON error
 * reply: nothing longjmps through libmicrohttpd.
 */
static unsigned int
es_http_api(struct MHD_Connection *conn, const char *method, const char *url,
			const char *body, bool may_park, char **reply)
{
	MemoryContext callercxt = MemoryContextSwitchTo(es_request_cxt);
	MemoryContext oldcxt = es_request_cxt;
	volatile unsigned int status = MHD_HTTP_OK;
	char	   *volatile result = NULL;

	PG_TRY();
	{
		char	   *key;
		char	   *secret;
		const char *args[6];
		char	   *role;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();

		args[0] = NULL;
		if (!es_http_credentials(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
								 &key, &secret))
			role = NULL;
		else
		{
			args[0] = key;
			args[1] = secret;
			role = es_http_query("SELECT eventstream._check_api_key($1, $2)::text", 2, args);
		}

		if (role == NULL)
		{
			status = MHD_HTTP_UNAUTHORIZED;
			result = "{\"error\": {\"code\": \"unauthorized\", \"message\": \"A valid API key is required.\"}}";
		}
		else if (strcmp(url, ES_API_PREFIX "consumers") == 0 && strcmp(method, "POST") == 0)
		{
			/* Register or update the calling consumer: {consumer_url, site_id, tables}. */
			args[1] = role;
			args[2] = body ? body : "";
			result = es_http_query("SELECT eventstream._register_consumer(b->>'consumer_url', (b->>'site_id')::uuid,"
								   "  $1, $2::regrole, b->'tables')::text"
								   "  FROM (SELECT $3::jsonb AS b) r", 3, args);
		}
		else if (strcmp(url, ES_API_PREFIX "updates") == 0 && strcmp(method, "GET") == 0)
		{
			const char *consumer = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "consumer");
			const char *cursor = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "cursor");
			const char *limit = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
			char	   *owner;

			args[1] = consumer;
			owner = es_http_query("SELECT (SELECT c.api_key = $1 FROM eventstream.consumer c"
								  " WHERE c.consumer_url = $2)::text", 2, args);
			if (owner == NULL)
			{
				status = MHD_HTTP_NOT_FOUND;
				result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such consumer.\"}}";
			}
			else if (strcmp(owner, "true") != 0)
			{
				status = MHD_HTTP_FORBIDDEN;
				result = "{\"error\": {\"code\": \"forbidden\", \"message\": \"This consumer was registered with another key.\"}}";
			}
			else
			{
				args[0] = consumer;
				args[1] = cursor;
				args[2] = limit ? limit : "100";
				args[3] = may_park ? "true" : "false";
				/* ack=: what a pipelining consumer has applied (see _pull_page) */
				args[4] = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "ack");
				/*
				 * '' = nothing yet and the caller may wait for more: only a
				 * page that ends at the newest commit; one that ends earlier
				 * (nothing for this consumer up to a tick) moves its cursor on
				 * at once.
				 */
				result = es_http_query("SELECT CASE WHEN $4::boolean AND p.served = 0 AND NOT p.news AND p.caught_up"
									   "            THEN '' ELSE p.page END"
									   "  FROM eventstream._pull_page($1, $2, $3::integer, $5) p", 5, args);
				if (result != NULL && result[0] == '\0')
					status = 0;
			}
		}
		else if (strncmp(url, ES_API_PREFIX "documents/", strlen(ES_API_PREFIX "documents/")) == 0 &&
				 strchr(url + strlen(ES_API_PREFIX "documents/"), '/') != NULL &&
				 strcmp(method, "GET") == 0)
		{
			/* documents/<table>/<docname>: the docname is the rest of the path. */
			const char *rest = url + strlen(ES_API_PREFIX "documents/");
			const char *slash = strchr(rest, '/');

			args[0] = pnstrdup(rest, slash - rest);
			args[1] = slash + 1;
			args[2] = role;
			result = es_http_query("SELECT eventstream._serve_document($1, $2, $3::regrole)::text", 3, args);
		}
		else if (strncmp(url, ES_API_PREFIX "snapshot/", strlen(ES_API_PREFIX "snapshot/")) == 0 &&
				 strcmp(method, "GET") == 0)
		{
			/*
			 * snapshot/<table>?after=<docname>&limit=<n>[&consumer=<url>]:
			 * existing documents; for a consumer (its initial sync), only
			 * with the key it registered with, and only what it may have.
			 */
			const char *after = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "after");
			const char *limit = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
			const char *consumer = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "consumer");
			char	   *owner = NULL;

			if (consumer != NULL)
			{
				args[1] = consumer;
				owner = es_http_query("SELECT (SELECT c.api_key = $1 FROM eventstream.consumer c"
									  " WHERE c.consumer_url = $2)::text", 2, args);
			}
			if (consumer != NULL && owner == NULL)
			{
				status = MHD_HTTP_NOT_FOUND;
				result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such consumer.\"}}";
			}
			else if (consumer != NULL && strcmp(owner, "true") != 0)
			{
				status = MHD_HTTP_FORBIDDEN;
				result = "{\"error\": {\"code\": \"forbidden\", \"message\": \"This consumer was registered with another key.\"}}";
			}
			else
			{
				args[0] = url + strlen(ES_API_PREFIX "snapshot/");
				args[1] = after;
				args[2] = limit ? limit : "100";
				args[3] = role;
				args[4] = consumer;
				result = es_http_query("SELECT eventstream._serve_snapshot($1, $2, $3::integer, $4::regrole, $5)::text",
									   5, args);
			}
		}
		else if (strncmp(url, ES_API_PREFIX "documents/", strlen(ES_API_PREFIX "documents/")) == 0 &&
				 strcmp(method, "GET") == 0)
		{
			/* documents/<table>?filters=<json>&limit=<n>: matching docnames. */
			const char *filters = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "filters");
			const char *limit = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");

			args[0] = url + strlen(ES_API_PREFIX "documents/");
			args[1] = filters ? filters : "{}";
			args[2] = limit ? limit : "20";
			args[3] = role;
			result = es_http_query("SELECT eventstream._serve_filtered($1, $2::jsonb, $3::integer, $4::regrole)::text",
								   4, args);
		}
		else
		{
			status = MHD_HTTP_NOT_FOUND;
			result = "{\"error\": {\"code\": \"not_found\", \"message\": \"No such endpoint.\"}}";
		}

		/* Out of SPI memory before it goes away. */
		*reply = strdup(result);
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
		status = es_http_status_for(edata->sqlerrcode);
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
		*reply = strdup(buf.data);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);
	MemoryContextReset(es_request_cxt);
	return status;
}

/*
 * es_http_request_done
 *		Free a request's state when libmicrohttpd is done with it.
 */
static void
es_http_request_done(void *cls, struct MHD_Connection *conn, void **con_cls,
					 enum MHD_RequestTerminationCode toe)
{
	EsRequest  *req = *con_cls;

	if (req)
	{
		if (req->parked)
		{
			EsRequest **p;

			for (p = &es_parked; *p; p = &(*p)->next)
				if (*p == req)
				{
					*p = req->next;
					break;
				}
		}
		free(req->body);
		free(req);
		*con_cls = NULL;
	}
}

/*
 * es_http_handler
 *		libmicrohttpd's access handler.
 *
 * The first call for a request only sets up its state (queueing a reply
 * there would make libmicrohttpd close keep-alive connections); later calls
 * collect the body, up to eventstream.http_max_request_size; the reply is queued once it is all
 * there.
 */
static enum MHD_Result
es_http_handler(void *cls, struct MHD_Connection *conn, const char *url,
				const char *method, const char *version, const char *upload_data,
				size_t *upload_data_size, void **con_cls)
{
	EsRequest  *req = *con_cls;
	char	   *reply = NULL;
	unsigned int status;
	enum MHD_Result ret;
	bool		may_park;

	if (req == NULL)
	{
		req = calloc(1, sizeof(EsRequest));
		if (req == NULL)
			return MHD_NO;
		*con_cls = req;
		return MHD_YES;
	}
	if (*upload_data_size != 0)
	{
		if (req->too_large ||
			req->len + *upload_data_size > (size_t) es_http_max_request_size * 1024)
			req->too_large = true;
		else
		{
			char	   *grown = realloc(req->body, req->len + *upload_data_size + 1);

			if (grown == NULL)
				req->too_large = true;
			else
			{
				req->body = grown;
				memcpy(req->body + req->len, upload_data, *upload_data_size);
				req->len += *upload_data_size;
				req->body[req->len] = '\0';
			}
		}
		*upload_data_size = 0;
		return MHD_YES;
	}

	if (es_shutting_down)
	{
		struct MHD_Response *resp;
		const char *msg = "{\"error\": {\"code\": \"shutting_down\", \"message\": \"The site is shutting down; retry later.\"}}";

		resp = MHD_create_response_from_buffer(strlen(msg), (void *) msg, MHD_RESPMEM_PERSISTENT);
		if (resp == NULL)
			return MHD_NO;
		MHD_add_response_header(resp, "Content-Type", "application/json");
		MHD_add_response_header(resp, "Connection", "close");
		ret = MHD_queue_response(conn, MHD_HTTP_SERVICE_UNAVAILABLE, resp);
		MHD_destroy_response(resp);
		return ret;
	}
	if (req->too_large)
		return es_http_error(conn, MHD_HTTP_CONTENT_TOO_LARGE, "too_large",
							 "The request body is too large.");
	if (req->body && memchr(req->body, '\0', req->len) != NULL)
		return es_http_error(conn, MHD_HTTP_BAD_REQUEST, "22021",
							 "The request body contains a NUL byte.");
	if (strcmp(url, ES_API_PREFIX "health") == 0)
	{
		char		body[256];

		if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
			return es_http_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
								 "Use GET.");
		snprintf(body, sizeof(body), "{\"site_id\": \"%s\", \"version\": \"%s\"}",
				 es_site_id, EVENTSTREAM_VERSION);
		return es_http_reply(conn, MHD_HTTP_OK, body);
	}
	if (strncmp(url, ES_API_PREFIX, strlen(ES_API_PREFIX)) != 0)
		return es_http_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "No such endpoint.");

	/* Long-poll: a first GET of updates may ask to wait up to wait= seconds. */
	if (req->deadline == 0 && strcmp(url, ES_API_PREFIX "updates") == 0)
	{
		const char *wait = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "wait");
		int			secs = wait ? atoi(wait) : 0;

		if (secs > 0)
			req->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														Min(secs, ES_MAX_WAIT_S) * 1000);
	}
	may_park = req->deadline > GetCurrentTimestamp();

	/*
	 * A pull that may park announces it first: a commit from now on wakes
	 * the worker, even one that lands between this pull's snapshot and the
	 * parking (it would otherwise be missed until the deadline).
	 */
	if (may_park && es_before_park != NULL)
		es_before_park();
	status = es_http_api(conn, method, url, req->body, may_park, &reply);
	if (reply == NULL)
		return es_http_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "Out of memory.");
	if (status == 0)
	{
		/* Nothing yet: park until a commit writes logs or the deadline. */
		free(reply);
		req->conn = conn;
		req->parked = true;
		req->next = es_parked;
		es_parked = req;
		MHD_suspend_connection(conn);
		return MHD_YES;
	}
	ret = es_http_reply(conn, status, reply);
	free(reply);
	return ret;
}

/*
 * es_http_read_pem
 *		Read a PEM file whole into TopMemoryContext.  NULL, with a WARNING,
 *		when it cannot be read.
 */
static char *
es_http_read_pem(const char *setting, const char *path)
{
	FILE	   *f;
	StringInfoData buf;
	char		chunk[4096];
	size_t		n;
	MemoryContext oldcxt;

	f = AllocateFile(path, "r");
	if (f == NULL)
	{
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not open file \"%s\" named by %s: %m", path, setting)));
		return NULL;
	}
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	initStringInfo(&buf);
	MemoryContextSwitchTo(oldcxt);
	while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
		appendBinaryStringInfo(&buf, chunk, n);
	FreeFile(f);
	return buf.data;
}

/*
 * es_http_start
 *		Start listening on address:port for this site, with TLS when
 *		eventstream.http_tls_cert_file and _key_file are set; before_park
 *		runs before every request that may park.  Returns false (with a
 *		WARNING) when that is not possible; the worker carries on without
 *		an endpoint rather than serving plain HTTP by mistake.
 */
bool
es_http_start(const char *address, int port, const char *site_id,
			  EsHttpBeforePark before_park)
{
	struct sockaddr_in addr;
	unsigned int flags = MHD_USE_EPOLL | MHD_USE_ERROR_LOG | MHD_ALLOW_SUSPEND_RESUME;
	bool		tls = (es_http_tls_cert_file[0] != '\0' || es_http_tls_key_file[0] != '\0');
	struct MHD_OptionItem tls_options[3];

	strlcpy(es_site_id, site_id, sizeof(es_site_id));
	es_before_park = before_park;
	if (es_request_cxt == NULL)
		es_request_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream request",
											   ALLOCSET_DEFAULT_SIZES);
	memset(&addr, 0, sizeof(addr));
	addr.sin_family = AF_INET;
	addr.sin_port = htons((uint16) port);
	if (inet_pton(AF_INET, address, &addr.sin_addr) != 1)
	{
		ereport(WARNING,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid eventstream.http_listen_address \"%s\"", address),
				 errhint("Give an IPv4 address, such as 127.0.0.1 or 0.0.0.0.")));
		return false;
	}

	memset(tls_options, 0, sizeof(tls_options));
	tls_options[0].option = MHD_OPTION_END;
	if (tls)
	{
		if (es_http_tls_cert_file[0] == '\0' || es_http_tls_key_file[0] == '\0')
		{
			ereport(WARNING,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("eventstream.http_tls_cert_file and eventstream.http_tls_key_file must be set together"),
					 errdetail("The HTTP endpoint on port %d is not started.", port)));
			return false;
		}
		if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES)
		{
			ereport(WARNING,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("libmicrohttpd was built without TLS support"),
					 errdetail("The HTTP endpoint on port %d is not started.", port)));
			return false;
		}
		if (es_tls_cert)
			pfree(es_tls_cert);
		if (es_tls_key)
			pfree(es_tls_key);
		es_tls_cert = es_http_read_pem("eventstream.http_tls_cert_file", es_http_tls_cert_file);
		es_tls_key = es_http_read_pem("eventstream.http_tls_key_file", es_http_tls_key_file);
		if (es_tls_cert == NULL || es_tls_key == NULL)
			return false;
		flags |= MHD_USE_TLS;
		tls_options[0].option = MHD_OPTION_HTTPS_MEM_CERT;
		tls_options[0].ptr_value = es_tls_cert;
		tls_options[1].option = MHD_OPTION_HTTPS_MEM_KEY;
		tls_options[1].ptr_value = es_tls_key;
		tls_options[2].option = MHD_OPTION_END;
	}

	es_daemon = MHD_start_daemon(flags,
								 (uint16) port, NULL, NULL,
								 es_http_handler, NULL,
								 MHD_OPTION_EXTERNAL_LOGGER, es_http_logger, NULL,
								 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
								 MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int) 1,
								 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 120,
								 MHD_OPTION_NOTIFY_COMPLETED, es_http_request_done, NULL,
								 MHD_OPTION_ARRAY, tls_options,
								 MHD_OPTION_END);
	if (es_daemon == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not start the eventstream HTTP server on %s:%d", address, port),
				 tls ? errhint("Check that the port is free, that eventstream.http_listen_address is an address of this machine, and that the certificate and key files hold a matching PEM certificate and key.")
				 : errhint("Check that the port is free and eventstream.http_listen_address is an address of this machine.")));
		return false;
	}
	ereport(LOG,
			(errmsg("eventstream %s server listening on %s:%d", tls ? "HTTPS" : "HTTP", address, port)));
	return true;
}

/*
 * es_http_socket
 *		The descriptor to wait on for HTTP activity, or -1 without a server.
 */
int
es_http_socket(void)
{
	const union MHD_DaemonInfo *info;

	if (es_daemon == NULL)
		return -1;
	info = MHD_get_daemon_info(es_daemon, MHD_DAEMON_INFO_EPOLL_FD);
	return info ? info->epoll_fd : -1;
}

/*
 * es_http_timeout
 *		Milliseconds until libmicrohttpd wants to run again (-1: no limit).
 */
long
es_http_timeout(void)
{
	MHD_UNSIGNED_LONG_LONG ms;

	long		result = -1;
	EsRequest  *req;
	TimestampTz now;

	if (es_daemon == NULL)
		return -1;
	if (MHD_get_timeout(es_daemon, &ms) == MHD_YES)
		result = ms > (MHD_UNSIGNED_LONG_LONG) LONG_MAX ? LONG_MAX : (long) ms;
	now = GetCurrentTimestamp();
	for (req = es_parked; req; req = req->next)
	{
		long		left = (long) TimestampDifferenceMilliseconds(now, req->deadline);

		if (result < 0 || left < result)
			result = left;
	}
	return result;
}

/*
 * es_http_parked
 *		Whether long-polls are parked.
 */
bool
es_http_parked(void)
{
	return es_parked != NULL;
}

/*
 * es_http_wake
 *		Resume parked long-polls: all of them (a commit wrote logs), or only
 *		those whose deadline has passed.  They are answered by the next
 *		es_http_run().
 */
void
es_http_wake(bool all)
{
	EsRequest **p = &es_parked;
	TimestampTz now = GetCurrentTimestamp();

	while (*p)
	{
		EsRequest  *req = *p;

		if (all || req->deadline <= now)
		{
			*p = req->next;
			req->parked = false;
			MHD_resume_connection(req->conn);
		}
		else
			p = &req->next;
	}
}

/*
 * es_http_run
 *		Let libmicrohttpd accept, read, handle and write what is ready.
 */
void
es_http_run(void)
{
	if (es_daemon != NULL)
	{
		es_in_run = true;
		(void) MHD_run(es_daemon);
		es_in_run = false;
	}
}

/*
 * es_http_stop
 *		Close the server (on worker exit).
 *
 * A FATAL error (SIGTERM) raised inside a handler exits the process from
 * within MHD_run; stopping the daemon from under itself there is not safe,
 * so the process exit closes its sockets instead.
 */
void
es_http_stop(void)
{
	if (es_daemon != NULL && !es_in_run)
	{
		/*
		 * Parked long-polls are told the site is going away (503) rather
		 * than cut off: resume them and let libmicrohttpd answer and write
		 * for a few rounds.  No transaction is started for a 503.
		 */
		es_shutting_down = true;
		if (es_parked != NULL)
		{
			int			epfd = es_http_socket();
			const union MHD_DaemonInfo *info;
			struct pollfd pfd;

			es_http_wake(true);
			/* Up to half a second, until every connection is closed. */
			for (int i = 0; i < 50; i++)
			{
				(void) MHD_run(es_daemon);
				info = MHD_get_daemon_info(es_daemon, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
				if (info == NULL || info->num_connections == 0)
					break;
				pfd.fd = epfd;
				pfd.events = POLLIN;
				(void) poll(&pfd, 1, 10);
			}
		}
		MHD_stop_daemon(es_daemon);
		es_daemon = NULL;
	}
}
