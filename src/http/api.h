/*-------------------------------------------------------------------------
 *
 * api.h
 *	  The API endpoints behind the HTTP server: src/http/api.c.
 *
 * Exports, for the server (src/http/server.c), the path every API request
 * is under, the serving of an authenticated API request and its answer,
 * and the set-up of its memory; and, for the status page, the reading of
 * credentials and the HTTP status of an error.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/api.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_HTTP_API_H
#define ES_HTTP_API_H

#define ES_API_PREFIX	"/api/eventstream/v1/"

struct MHD_Connection;

/*
 * The answer to an API request: its JSON text and, for a page of updates,
 * what the page's Eventstream-* headers say (see docs/protocol.md).
 */
typedef struct EsApiReply
{
	char	   *body;			/* malloc'd */
	char	   *cursor;			/* a page of updates: its next cursor
								 * (malloc'd); otherwise NULL */
	bool		more;			/* the page's "more" */
	bool		complete;		/* the page's "complete" */
} EsApiReply;

extern void es_http_api_init(void);
extern unsigned int es_http_api(struct MHD_Connection *conn, const char *method, const char *path,
								const char *query, const char *body, bool may_park,
								EsApiReply *reply);
extern void es_http_api_free(EsApiReply *reply);
extern bool es_http_credentials(const char *header, char **key, char **secret);
extern int	es_http_hex_digit(char c);
extern unsigned int es_http_status_for(int sqlerrcode);

#endif							/* ES_HTTP_API_H */
