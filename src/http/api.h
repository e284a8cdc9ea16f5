/*-------------------------------------------------------------------------
 *
 * api.h
 *	  The API endpoints behind the HTTP server: src/http/api.c.
 *
 * Exports, for the server (src/http/server.c), the path every API request
 * is under, the serving of an authenticated API request, and the set-up
 * of its memory.
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

extern void es_http_api_init(void);
extern unsigned int es_http_api(struct MHD_Connection *conn, const char *method, const char *url,
								const char *body, bool may_park, char **reply);

#endif							/* ES_HTTP_API_H */
