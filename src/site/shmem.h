/*-------------------------------------------------------------------------
 *
 * shmem.h
 *	  The extension's shared memory hooks: src/site/shmem.c.
 *
 * Exports their installation, for _PG_init.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/shmem.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SHMEM_H
#define ES_SHMEM_H

extern void es_shmem_init(void);

#endif							/* ES_SHMEM_H */
