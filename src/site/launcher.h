/*-------------------------------------------------------------------------
 *
 * launcher.h
 *	  The launcher and the table of site workers: src/site/launcher.c.
 *
 * Exports the registration of the launcher and the ProcessUtility hook
 * (for _PG_init), the size and set-up of the table of site workers in
 * shared memory (for the shared memory hooks, src/site/shmem.c), and the
 * table itself for the site worker (src/site/worker.c): one entry per
 * database that has (had) a worker, under es_workers->mutex.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/launcher.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_LAUNCHER_H
#define ES_LAUNCHER_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/spin.h"

#define ES_MAX_SITES		64
#define ES_LAUNCHER_NAP_MS	60000	/* between two cycles of the launcher */

typedef struct EsSiteWorker
{
	Oid			dboid;			/* InvalidOid: entry free */
	pid_t		pid;			/* running site worker, or 0 */
	int			procno;			/* its PGPROC number, to set its latch */
	bool		no_extension;	/* probed: the database lacks the extension */
	TimestampTz hold_until;		/* the launcher leaves it alone until then */
	volatile bool has_waiters;	/* long-polls are parked: wake at commit */
	volatile bool logs_pending;	/* logs committed since the last tick */
	pg_atomic_uint32 logs_since_tick;	/* how many, about */
	volatile bool recheck;		/* DROP EXTENSION committed: look again */
} EsSiteWorker;

typedef struct EsWorkers
{
	slock_t		mutex;
	int			launcher_procno;	/* -1 when no launcher runs */
	EsSiteWorker sites[ES_MAX_SITES];
} EsWorkers;

extern EsWorkers *es_workers;

extern void es_workers_init(void);
extern Size es_workers_shmem_size(void);
extern void es_workers_shmem_init(void);
extern EsSiteWorker *es_site(Oid dboid, bool create);

#endif							/* ES_LAUNCHER_H */
