/*-------------------------------------------------------------------------
 *
 * logids.h
 *	  Update log ids drawn from shared memory: src/producer/logids.c.
 *
 * Exports the drawing of the next update log id (for the capture trigger),
 * the size and set-up of the ids' shared state (for the shared memory
 * hooks, src/site/shmem.c) and what follows COMMIT / ROLLBACK PREPARED
 * (for the ProcessUtility hook, src/site/launcher.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/logids.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_LOGIDS_H
#define ES_LOGIDS_H

extern Size es_logids_shmem_size(void);
extern void es_logids_shmem_init(void);
extern int64 es_next_log_id(Oid seqid);
extern void es_prepared_finished(bool committed);

#endif							/* ES_LOGIDS_H */
