/*-------------------------------------------------------------------------
 *
 * metrics.h
 *	  Prometheus metrics of the site: src/http/metrics.c.
 *
 * Exports, for the HTTP server, whether a path is the metrics endpoint and
 * its answer; and the hooks that count what the site worker does: every
 * HTTP answer by status code (src/http/server.c), every page of updates
 * served (src/http/api.c) and every page applied (src/consumer/pull_page.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/metrics.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_HTTP_METRICS_H
#define ES_HTTP_METRICS_H

#include "datatype/timestamp.h"

struct MHD_Connection;

extern bool es_metrics_path(const char *path);
extern int	es_metrics_serve(struct MHD_Connection *conn, const char *method);
extern void es_metrics_count_request(unsigned int status);
extern void es_metrics_served(int64 updates, TimestampTz started);
extern void es_metrics_applied(TimestampTz started);

#endif							/* ES_HTTP_METRICS_H */
