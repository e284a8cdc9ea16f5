/*-------------------------------------------------------------------------
 *
 * http.c
 *	  The site's HTTP endpoint: libmicrohttpd driven from the site worker's
 *	  own wait loop.
 *
 * The daemon runs without any thread of its own (MHD_USE_EPOLL): its epoll
 * descriptor is one more socket the worker waits on, and the worker calls
 * es_http_run() whenever it wakes.  Request handlers therefore run on the
 * worker's stack, between its transactions.
 *
 * This is the first part of the endpoint: the health check, and the rule
 * that every other path under /api/eventstream/v1/ answers 401 until API
 * keys exist.  Handlers must not raise PostgreSQL errors (a longjmp through
 * libmicrohttpd frames would corrupt it): they allocate nothing from
 * PostgreSQL and format replies into local buffers.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <limits.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdarg.h>

#include "eventstream.h"

#define ES_API_PREFIX	"/api/eventstream/v1/"

static struct MHD_Daemon *es_daemon = NULL;
static char es_site_id[64];

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
 * es_http_handler
 *		libmicrohttpd's access handler.
 *
 * The first call for a request only marks it (queueing a reply there would
 * make libmicrohttpd close keep-alive connections); the reply is queued
 * once the upload, if any, has been consumed.
 */
static enum MHD_Result
es_http_handler(void *cls, struct MHD_Connection *conn, const char *url,
				const char *method, const char *version, const char *upload_data,
				size_t *upload_data_size, void **con_cls)
{
	static int	marker;

	if (*con_cls == NULL)
	{
		*con_cls = &marker;
		return MHD_YES;
	}
	if (*upload_data_size != 0)
	{
		*upload_data_size = 0;	/* nothing accepts a body yet */
		return MHD_YES;
	}

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
	if (strncmp(url, ES_API_PREFIX, strlen(ES_API_PREFIX)) == 0)
		return es_http_error(conn, MHD_HTTP_UNAUTHORIZED, "unauthorized",
							 "A valid API key is required.");
	return es_http_error(conn, MHD_HTTP_NOT_FOUND, "not_found", "No such endpoint.");
}

/*
 * es_http_start
 *		Start listening on address:port for this site.  Returns false (with
 *		a WARNING) when that is not possible; the worker carries on without.
 */
bool
es_http_start(const char *address, int port, const char *site_id)
{
	struct sockaddr_in addr;

	strlcpy(es_site_id, site_id, sizeof(es_site_id));
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

	es_daemon = MHD_start_daemon(MHD_USE_EPOLL | MHD_USE_ERROR_LOG,
								 (uint16) port, NULL, NULL,
								 es_http_handler, NULL,
								 MHD_OPTION_EXTERNAL_LOGGER, es_http_logger, NULL,
								 MHD_OPTION_SOCK_ADDR, (struct sockaddr *) &addr,
								 MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned int) 1,
								 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned int) 120,
								 MHD_OPTION_END);
	if (es_daemon == NULL)
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("could not start the eventstream HTTP server on %s:%d", address, port),
				 errhint("Check that the port is free and eventstream.http_listen_address is an address of this machine.")));
		return false;
	}
	ereport(LOG,
			(errmsg("eventstream HTTP server listening on %s:%d", address, port)));
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

	if (es_daemon == NULL || MHD_get_timeout(es_daemon, &ms) != MHD_YES)
		return -1;
	return ms > (MHD_UNSIGNED_LONG_LONG) LONG_MAX ? LONG_MAX : (long) ms;
}

/*
 * es_http_run
 *		Let libmicrohttpd accept, read, handle and write what is ready.
 */
void
es_http_run(void)
{
	if (es_daemon != NULL)
		(void) MHD_run(es_daemon);
}

/*
 * es_http_stop
 *		Close the server (on worker exit).
 */
void
es_http_stop(void)
{
	if (es_daemon != NULL)
	{
		MHD_stop_daemon(es_daemon);
		es_daemon = NULL;
	}
}
