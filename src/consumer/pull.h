/*-------------------------------------------------------------------------
 *
 * pull.h
 *	  Pulling from producers in the site worker: src/consumer/pull*.c.
 *
 * Exports what the site worker's loop calls (set up, refresh the
 * producers, start what is due, run what is ready, how long it may sleep,
 * shut down) and the setting eventstream.window_memory.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pull.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PULL_H
#define ES_PULL_H

/* GUC eventstream.window_memory (kB) */
extern int	es_window_memory;

extern int	es_pull_init(void);
extern void es_pull_refresh(void);
extern void es_pull_start_due(void);
extern void es_pull_run(void);
extern long es_pull_timeout(void);
extern void es_pull_shutdown(void);

#endif							/* ES_PULL_H */
