/*-------------------------------------------------------------------------
 *
 * shmem.c
 *	  The extension's shared memory: the hooks that reserve and set it up.
 *
 * Two parts of the extension keep state in shared memory: the update log
 * ids and where each backend's open transaction starts in the log
 * (src/producer/logids.c), and the table of site workers
 * (src/site/launcher.c).  _PG_init installs the hooks here while
 * preloading; each part says how much it needs and sets up its own.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/shmem.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"

#include "producer/logids.h"
#include "site/launcher.h"
#include "site/shmem.h"

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static void es_shmem_request(void);
static void es_shmem_startup(void);

/*
 * es_shmem_init
 *		Install the hooks; called from _PG_init while preloading.
 */
void
es_shmem_init(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = es_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = es_shmem_startup;
}

/*
 * es_shmem_request
 *		shmem_request_hook: reserve our space.
 */
static void
es_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(es_logids_shmem_size());
	RequestAddinShmemSpace(es_workers_shmem_size());
}

/*
 * es_shmem_startup
 *		shmem_startup_hook: create or attach to the shared state.
 */
static void
es_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	es_logids_shmem_init();
	es_workers_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}
