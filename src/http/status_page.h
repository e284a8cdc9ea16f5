/*-------------------------------------------------------------------------
 *
 * status_page.h
 *	  The site's HTML status page: src/http/status_page.c (requests,
 *	  authentication, actions) and src/http/status_render.c (the page).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/status_page.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_HTTP_STATUS_PAGE_H
#define ES_HTTP_STATUS_PAGE_H

#include <microhttpd.h>

#include "lib/stringinfo.h"

#define ES_STATUS_PATH	"/status"

/*
 * While the status page runs an action (approve, reject, resync) for a
 * key: the key's role, the caller the administrative functions check
 * (src/site/admin.c); InvalidOid otherwise.
 */
extern Oid	es_status_page_caller;

extern bool es_status_page_path(const char *path);
extern enum MHD_Result es_status_page(struct MHD_Connection *conn, const char *method,
									  const char *path, const char *body);

/* status_render.c: the page itself, inside the request's transaction and SPI. */
extern void es_status_render(StringInfo html, struct MHD_Connection *conn,
							 const char *role, bool admin, const char *token);
extern void es_html_escape(StringInfo buf, const char *s);
extern uint64 es_status_rows(const char *sql, int nargs, const char **args,
							 bool read_only, long limit);

#endif							/* ES_HTTP_STATUS_PAGE_H */
