/*-------------------------------------------------------------------------
 *
 * client.h
 *	  The consumer's HTTP client: src/consumer/client.c.
 *
 * Exports what the pulls need to run requests to producers on handles of
 * their own (the options every request shares, the headers of an answer,
 * the texts of failures, of bodies that are not UTF-8 text and of answers in
 * a protocol version this site does not speak, a piece of a body for an
 * error message), the URL encoding of a path segment, and the settings
 * eventstream.ca_file and eventstream.client_max_response_size.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/client.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_CLIENT_H
#define ES_CLIENT_H

#include "fmgr.h"

/* The answer to one request, as libcurl writes it. */
typedef struct EsResponse
{
	char	   *data;			/* malloc'd, NUL-terminated */
	size_t		len;
	size_t		cap;
	size_t		max;			/* eventstream.client_max_response_size */
	bool		too_large;
	struct curl_slist *headers; /* the request's (Authorization), or NULL */
} EsResponse;

/* GUCs eventstream.ca_file, eventstream.client_max_response_size (kB) */
extern char *es_ca_file;
extern int	es_client_max_response_size;

extern void es_client_init(void);
extern void es_client_setup(void *curl, const char *url, const char *auth,
							EsResponse *resp, long timeout_s);
extern char *es_client_failure(int code, EsResponse *resp, const char *url);
extern char *es_client_bad_text(EsResponse *resp, const char *url);
extern char *es_client_text(const char *data, int max);
extern char *es_client_header(void *curl, const char *name);
extern bool es_client_protocol_known(const char *protocol);
extern char *es_client_protocol_error(const char *protocol, const char *url);
extern Datum eventstream_urlencode(PG_FUNCTION_ARGS);

#endif							/* ES_CLIENT_H */
