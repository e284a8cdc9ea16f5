/*-------------------------------------------------------------------------
 *
 * logids.h
 *	  Update log ids drawn from shared memory: src/producer/logids.c.
 *
 * Exports the drawing of the next update log id (for the capture trigger)
 * and the installation of the shared memory hooks (for _PG_init).
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

extern void es_shmem_init(void);
extern int64 es_next_log_id(Oid seqid);

#endif							/* ES_LOGIDS_H */
