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
 * The handler answers GET (or HEAD) health itself (no key, no
 * transaction: the site id and version) and, while the site shuts down,
 * everything with 503.  "/" and ES_STATUS_PATH (and the actions under it)
 * go to the HTML status page (src/http/status_page.c), with the body
 * collected as below.  The metrics (/metrics, or under ES_API_PREFIX) are
 * src/http/metrics.c's, which also counts every answer es_http_reply
 * queues.  Any other request under ES_API_PREFIX goes to
 * es_http_api (src/http/api.c: the key, the route table, the endpoints),
 * in a transaction of its own, with its body collected first, up to
 * eventstream.http_max_request_size (413 beyond; 400 for a NUL byte).  A GET of updates with
 * wait= that finds nothing yet is parked (suspended) until a commit writes
 * logs (es_http_wake, from the worker) or its deadline, at most
 * ES_MAX_WAIT_S.  Every answer carries the Eventstream-Protocol header, and
 * a page of updates its other Eventstream-* headers (docs/protocol.md).
 * Routing goes by the path as the client sent it, still percent-encoded
 * (es_http_uri_logged), never by libmicrohttpd's decoded URL.  Request
 * state and replies are malloc'd: no PostgreSQL allocation lives in
 * libmicrohttpd frames.  When a reload changes the address, port or TLS
 * files, the worker closes the server (es_http_close_for_reload: parked
 * long-polls get their empty page first) and starts a new one.  While a
 * request is answered, pg_stat_activity says "serving <method> <path>".
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

#include "lib/stringinfo.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "eventstream.h"
#include "http/api.h"
#include "http/metrics.h"
#include "http/server.h"
#include "http/status_page.h"

/*
 * Per-request state, malloc'd (no PostgreSQL allocation in MHD frames):
 * made by es_http_uri_logged when the request line is read, freed by
 * es_http_request_done.
 */
typedef struct EsRequest
{
	char	   *path;			/* the path as sent, still percent-encoded */
	char	   *query;			/* the query string as sent, or NULL */
	bool		started;		/* the access handler has seen it */
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
static bool es_in_run = false;	/* inside MHD_run, i.e. maybe in a handler */
static bool es_shutting_down = false;	/* answer everything 503 */
static bool es_draining = false;	/* closing for a reload: no parking */
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
 *		Queue a JSON reply; body is copied.  With page (a page of updates
 *		answered 200), the headers that say what the page does.
 */
static enum MHD_Result
es_http_reply(struct MHD_Connection *conn, unsigned int status, const char *body,
			  const EsApiReply *page)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(body), (void *) body,
										   MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	es_metrics_count_request(status);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, ES_HEADER_PROTOCOL, ES_PROTOCOL);
	if (es_draining)
		MHD_add_response_header(resp, "Connection", "close");

	/*
	 * This producer always takes ack= (a page's "acks" is true).  A header
	 * that cannot be added leaves the consumer to read the page first.
	 */
	if (page != NULL && page->cursor != NULL && status == MHD_HTTP_OK)
	{
		MHD_add_response_header(resp, ES_HEADER_CURSOR, page->cursor);
		MHD_add_response_header(resp, ES_HEADER_MORE, page->more ? "true" : "false");
		MHD_add_response_header(resp, ES_HEADER_COMPLETE, page->complete ? "true" : "false");
		MHD_add_response_header(resp, ES_HEADER_ACKS, "true");
	}
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
	return es_http_reply(conn, status, body, NULL);
}

/*
 * es_http_uri_logged
 *		libmicrohttpd's URI callback: make the request's state, keeping its
 *		path and its query string as the client sent them.
 *
 * libmicrohttpd percent-decodes the URL it gives the access handler, and
 * a '/' inside a name (sent as %2F) would be indistinguishable there from
 * a separator; so the API splits this raw path into segments first and
 * decodes each itself (src/http/api.c).  The returned state becomes the
 * request's *con_cls; NULL (out of memory) makes the handler close the
 * connection.
 */
static void *
es_http_uri_logged(void *cls, const char *uri, struct MHD_Connection *conn)
{
	EsRequest  *req = calloc(1, sizeof(EsRequest));
	size_t		len = strcspn(uri, "?");

	if (req == NULL)
		return NULL;
	req->path = strndup(uri, len);
	if (uri[len] == '?')
		req->query = strdup(uri + len + 1);
	if (req->path == NULL || (uri[len] == '?' && req->query == NULL))
	{
		free(req->path);
		free(req->query);
		free(req);
		return NULL;
	}
	return req;
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
		free(req->path);
		free(req->query);
		free(req->body);
		free(req);
		*con_cls = NULL;
	}
}

/*
 * es_http_handler
 *		libmicrohttpd's access handler.
 *
 * The request's state was made by es_http_uri_logged.  The first call for
 * a request only marks it seen (queueing a reply there would make
 * libmicrohttpd close keep-alive connections); later calls collect the
 * body, up to eventstream.http_max_request_size; the reply is queued once
 * it is all there.  Routing uses the raw path the state holds, never url
 * (already percent-decoded by libmicrohttpd).
 */
static enum MHD_Result
es_http_handler(void *cls, struct MHD_Connection *conn, const char *url,
				const char *method, const char *version, const char *upload_data,
				size_t *upload_data_size, void **con_cls)
{
	EsRequest  *req = *con_cls;
	EsApiReply	reply;
	unsigned int status;
	enum MHD_Result ret;
	bool		may_park;
	char		activity[256];	/* what pg_stat_activity says meanwhile */

	if (req == NULL)
		return MHD_NO;			/* es_http_uri_logged ran out of memory */
	if (!req->started)
	{
		req->started = true;
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
		MHD_add_response_header(resp, ES_HEADER_PROTOCOL, ES_PROTOCOL);
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
	if (es_metrics_path(req->path))
		return (enum MHD_Result) es_metrics_serve(conn, method);
	if (strcmp(req->path, ES_API_PREFIX "health") == 0)
	{
		char		body[256];

		if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
			return es_http_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
								 "Use GET.");
		snprintf(body, sizeof(body), "{\"site_id\": \"%s\", \"version\": \"%s\"}",
				 es_site_id, EVENTSTREAM_VERSION);
		return es_http_reply(conn, MHD_HTTP_OK, body, NULL);
	}
	if (es_status_page_path(req->path))
		return es_status_page(conn, method, req->path, req->body);
	if (strncmp(req->path, ES_API_PREFIX, strlen(ES_API_PREFIX)) != 0)
		return es_http_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "No such endpoint.");

	/* Long-poll: a first GET of updates may ask to wait up to wait= seconds. */
	if (req->deadline == 0 && strcmp(req->path, ES_API_PREFIX "updates") == 0)
	{
		const char *wait = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "wait");
		int			secs = wait ? atoi(wait) : 0;

		if (secs > 0)
			req->deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														Min(secs, ES_MAX_WAIT_S) * 1000);
	}
	may_park = !es_draining && req->deadline > GetCurrentTimestamp();

	/*
	 * A pull that may park announces it first: a commit from now on wakes
	 * the worker, even one that lands between this pull's snapshot and the
	 * parking (it would otherwise be missed until the deadline).
	 */
	if (may_park && es_before_park != NULL)
		es_before_park();
	snprintf(activity, sizeof(activity), "serving %s %s", method, req->path);
	pgstat_report_activity(STATE_RUNNING, activity);
	status = es_http_api(conn, method, req->path, req->query, req->body, may_park, &reply);
	pgstat_report_activity(STATE_IDLE, NULL);
	if (reply.body == NULL)
	{
		es_http_api_free(&reply);
		return es_http_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "Out of memory.");
	}
	if (status == 0)
	{
		/* Nothing yet: park until a commit writes logs or the deadline. */
		es_http_api_free(&reply);
		req->conn = conn;
		req->parked = true;
		req->next = es_parked;
		es_parked = req;
		MHD_suspend_connection(conn);
		return MHD_YES;
	}
	ret = es_http_reply(conn, status, reply.body, &reply);
	es_http_api_free(&reply);
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
 * es_http_set_site_id
 *		The site_id health answers with, from now on (a restore brought
 *		the dumped site's back).
 */
void
es_http_set_site_id(const char *site_id)
{
	strlcpy(es_site_id, site_id, sizeof(es_site_id));
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
	es_http_api_init();
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

	/*
	 * The PEM texts of a daemon stopped before are dropped: kept, they would
	 * make a plain daemon look like a TLS one whose files changed
	 * (es_http_tls_changed), and every reload would reopen it.
	 */
	if (es_tls_cert)
		pfree(es_tls_cert);
	if (es_tls_key)
		pfree(es_tls_key);
	es_tls_cert = es_tls_key = NULL;
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
								 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 120,
								 MHD_OPTION_URI_LOG_CALLBACK, es_http_uri_logged, NULL,
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
 * es_http_drain
 *		Resume every parked long-poll and let libmicrohttpd answer and
 *		write for up to half a second, until no connection is left open.
 *		What the resumed requests are answered depends on the caller's
 *		flags: 503 while shutting down, their empty page while draining.
 */
static void
es_http_drain(void)
{
	int			epfd = es_http_socket();
	const union MHD_DaemonInfo *info;
	struct pollfd pfd;

	es_http_wake(true);
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

/*
 * es_http_tls_changed
 *		Whether the running daemon's certificate or key differ from what
 *		the files named by the settings hold now (a renewed certificate
 *		under the same name).  False without a TLS daemon; true when a
 *		file cannot be read (the restart then says why, and retries).
 */
bool
es_http_tls_changed(void)
{
	char	   *cert;
	char	   *key;
	bool		changed;

	if (es_daemon == NULL || es_tls_cert == NULL || es_tls_key == NULL)
		return false;
	if (es_http_tls_cert_file[0] == '\0' || es_http_tls_key_file[0] == '\0')
		return true;
	cert = es_http_read_pem("eventstream.http_tls_cert_file", es_http_tls_cert_file);
	key = es_http_read_pem("eventstream.http_tls_key_file", es_http_tls_key_file);
	changed = (cert == NULL || key == NULL ||
			   strcmp(cert, es_tls_cert) != 0 || strcmp(key, es_tls_key) != 0);
	if (cert)
		pfree(cert);
	if (key)
		pfree(key);
	return changed;
}

/*
 * es_http_close_for_reload
 *		Close the server because its address, port or TLS files changed:
 *		parked long-polls are answered first, with the empty page they
 *		would get at their deadline (and "Connection: close", so that the
 *		client's next request finds the new endpoint), then the daemon
 *		stops.  Called from the worker's loop, never from a handler.
 */
void
es_http_close_for_reload(void)
{
	if (es_daemon == NULL)
		return;
	es_draining = true;
	for (EsRequest *req = es_parked; req; req = req->next)
		req->deadline = 1;		/* long past: answered without parking */
	if (es_parked != NULL)
		es_http_drain();
	MHD_stop_daemon(es_daemon);
	es_daemon = NULL;
	es_parked = NULL;
	es_draining = false;
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
		 * than cut off.  No transaction is started for a 503.
		 */
		es_shutting_down = true;
		if (es_parked != NULL)
			es_http_drain();
		MHD_stop_daemon(es_daemon);
		es_daemon = NULL;
	}
}
