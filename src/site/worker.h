/*-------------------------------------------------------------------------
 *
 * worker.h
 *	  The site worker: src/site/worker.c.
 *
 * Exports the wake-up of a database's site worker when a commit wrote
 * update logs (for the log ids), what it does before a long-poll may
 * park (given to the HTTP server), whether this process is a site worker
 * (for the conditions), the pause points of the tests and what the
 * worker says it does in pg_stat_activity (for the pulls and the server),
 * and the settings eventstream.prune_interval and
 * eventstream.test_pause_at (registered by the launcher's
 * es_workers_init).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/worker.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_WORKER_H
#define ES_WORKER_H

/* GUCs eventstream.prune_interval (s), eventstream.test_pause_at */
extern int	es_prune_interval;
extern char *es_test_pause_at;

/* Whether this process is a site worker. */
extern bool es_in_site_worker;

extern void es_test_pause(const char *point);
extern void es_worker_doing(const char *fmt,...) pg_attribute_printf(1, 2);
extern void es_worker_idle(void);
extern void es_wake_site(Oid dboid, int nlogs);
extern void es_worker_expect_waiters(void);

#endif							/* ES_WORKER_H */
