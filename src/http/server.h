/*-------------------------------------------------------------------------
 *
 * server.h
 *	  The site's HTTP server: src/http/server.c.
 *
 * Exports what the site worker drives the server with from its wait loop
 * (start, the descriptor to wait on, how long it may sleep, run what is
 * ready, wake parked long-polls, stop) and the eventstream.http_* settings.
 * The server calls nothing of the site worker's: what it needs done before
 * a long-poll may park is given to es_http_start.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/server.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_HTTP_SERVER_H
#define ES_HTTP_SERVER_H

/* GUCs: this site's HTTP endpoint (per database, ALTER DATABASE ... SET). */
extern int	es_http_port;
extern char *es_http_listen_address;
extern char *es_http_tls_cert_file;
extern char *es_http_tls_key_file;
extern int	es_http_max_request_size;	/* kB */

/*
 * Called before a request that may park (a long-poll) looks for updates,
 * so that a commit from then on wakes the caller's loop.
 */
typedef void (*EsHttpBeforePark) (void);

extern bool es_http_start(const char *address, int port, const char *site_id,
						  EsHttpBeforePark before_park);
extern void es_http_set_site_id(const char *site_id);
extern int	es_http_socket(void);
extern long es_http_timeout(void);
extern void es_http_run(void);
extern void es_http_wake(bool all);
extern bool es_http_parked(void);
extern bool es_http_tls_changed(void);
extern void es_http_close_for_reload(void);
extern void es_http_stop(void);

#endif							/* ES_HTTP_SERVER_H */
