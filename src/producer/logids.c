/*-------------------------------------------------------------------------
 *
 * logids.c
 *	  Update log ids, and where each backend's open transaction starts in
 *	  the update log, in shared memory, so serving can find a window
 *	  without a txid index.
 *
 * Ids.  Update log ids must grow in the order they are drawn, across all
 * backends of a database (serving relies on it for per-document order), and
 * never be drawn twice, even after a crash.  Drawing them from a sequence
 * row by row puts the sequence's buffer lock on every captured write; here
 * the sequence hands out blocks of ES_ID_BLOCK ids instead (id = block *
 * ES_ID_BLOCK + n), and the ids of the current block are drawn under a
 * spinlock from a per-database entry in shared memory.  A block number is
 * WAL-logged by the sequence before any id of it is used, so after a crash
 * the sequence resumes past every block in use; a block drawn by a backend
 * that lost the race to install it is discarded (a gap, nothing more).
 *
 * Serving delivers the logs of the transactions that committed between two
 * snapshots.  To find them without scanning the log or indexing txid, every
 * cursor also carries a low bound L taken just before its snapshot S: every
 * log not visible in S has id >= L.  L is the minimum of
 *	  - the next id to be drawn, read first, and
 *	  - the first log id of every transaction of this database that has
 *		written a log and not yet ended, read from one slot per backend.
 * A transaction publishes ES_ID_PENDING in its slot before it draws its first
 * id and the id itself afterwards, so a reader that read the sequence before
 * a writer drew its id either sees the writer's slot (pending or published)
 * or the writer's id is larger than the sequence value it read.  A reader
 * that meets a pending slot retries briefly, then reports "unknown", and
 * the caller falls back to an older bound (any older bound is lower).
 *
 * Slots are written only by their own backend (dboid once, first_id at the
 * first log of a transaction and at its end) and read without locks; each
 * sits on its own cache line.  Two-phase commit of a transaction that wrote
 * logs is refused: once prepared it would outlive the backend's slot.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/logids.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "commands/sequence.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"

#include "producer/logids.h"
#include "site/worker.h"

PG_FUNCTION_INFO_V1(eventstream_log_low_bound);

#define ES_ID_PENDING	PG_UINT64_MAX
#define ES_ID_BLOCK		1024
#define ES_MAX_DATABASES 64

/* Id allocation state of one database (see the file header). */
typedef struct EsDbIds
{
	Oid			dboid;			/* InvalidOid: entry unused */
	Oid			seqid;			/* the sequence the blocks come from */
	slock_t		mutex;			/* protects next_id and block_end */
	int64		next_id;
	int64		block_end;		/* 0: no block installed since startup */
} EsDbIds;

typedef union EsSlot
{
	struct
	{
		Oid			dboid;		/* database of the backend using the slot */
		pg_atomic_uint64 first_id;	/* 0: none; ES_ID_PENDING: drawing */
	}			s;
	char		pad[PG_CACHE_LINE_SIZE];
} EsSlot;

typedef struct EsShared
{
	slock_t		dbs_mutex;		/* protects assigning dbs[] entries */
	EsDbIds		dbs[ES_MAX_DATABASES];
	int			nslots;
	EsSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} EsShared;

static EsShared *es_shared = NULL;
static EsDbIds *es_my_ids = NULL;	/* this backend's database entry */

/* Whether this backend's slot holds something for the current transaction. */
static bool es_slot_used = false;
static int	es_xact_logs = 0;	/* logs this transaction wrote */
static bool es_callback_registered = false;

static void es_slot_xact_callback(XactEvent event, void *arg);

/*
 * es_logids_shmem_size
 *		One slot per PGPROC (every backend, auxiliary and prepared-xact proc).
 */
Size
es_logids_shmem_size(void)
{
	int			nslots = MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;

	return add_size(offsetof(EsShared, slots), mul_size(nslots, sizeof(EsSlot)));
}

/*
 * es_logids_shmem_init
 *		Create or attach to the shared state of the ids; called from the
 *		shmem_startup_hook (src/site/shmem.c), under AddinShmemInitLock.
 */
void
es_logids_shmem_init(void)
{
	bool		found;

	es_shared = ShmemInitStruct("eventstream", es_logids_shmem_size(), &found);
	if (!found)
	{
		int			i;

		SpinLockInit(&es_shared->dbs_mutex);
		for (i = 0; i < ES_MAX_DATABASES; i++)
		{
			es_shared->dbs[i].dboid = InvalidOid;
			SpinLockInit(&es_shared->dbs[i].mutex);
		}
		es_shared->nslots = MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;
		for (i = 0; i < es_shared->nslots; i++)
		{
			es_shared->slots[i].s.dboid = InvalidOid;
			pg_atomic_init_u64(&es_shared->slots[i].s.first_id, 0);
		}
	}
}

/*
 * es_slot_xact_callback
 *		Clear the slot when the transaction ends; refuse PREPARE.
 */
static void
es_slot_xact_callback(XactEvent event, void *arg)
{
	if (!es_slot_used)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot prepare a transaction that changed tables captured by eventstream"),
					 errhint("Commit it directly instead of with PREPARE TRANSACTION.")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			pg_atomic_write_u64(&es_shared->slots[MyProc->pgprocno].s.first_id, 0);
			es_slot_used = false;
			/* New logs are visible: wake the site's long-polls. */
			es_wake_site(MyDatabaseId, es_xact_logs);
			es_xact_logs = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			pg_atomic_write_u64(&es_shared->slots[MyProc->pgprocno].s.first_id, 0);
			es_slot_used = false;
			es_xact_logs = 0;
			break;
		default:
			break;
	}
}

/*
 * es_db_ids
 *		This database's id allocation entry, or NULL when all entries are
 *		taken (ids then come from the sequence one block each).
 *
 * An entry made for another sequence (the extension was dropped and
 * created again) starts over.
 */
static EsDbIds *
es_db_ids(Oid seqid)
{
	int			i;
	EsDbIds    *free_entry = NULL;

	if (es_my_ids != NULL && es_my_ids->seqid == seqid)
		return es_my_ids;

	SpinLockAcquire(&es_shared->dbs_mutex);
	es_my_ids = NULL;
	for (i = 0; i < ES_MAX_DATABASES; i++)
	{
		EsDbIds    *e = &es_shared->dbs[i];

		if (e->dboid == MyDatabaseId)
		{
			es_my_ids = e;
			break;
		}
		if (e->dboid == InvalidOid && free_entry == NULL)
			free_entry = e;
	}
	if (es_my_ids == NULL && free_entry != NULL)
	{
		es_my_ids = free_entry;
		es_my_ids->dboid = MyDatabaseId;
		es_my_ids->seqid = InvalidOid;
	}
	if (es_my_ids != NULL && es_my_ids->seqid != seqid)
	{
		SpinLockAcquire(&es_my_ids->mutex);
		es_my_ids->seqid = seqid;
		es_my_ids->next_id = 0;
		es_my_ids->block_end = 0;
		SpinLockRelease(&es_my_ids->mutex);
	}
	SpinLockRelease(&es_shared->dbs_mutex);
	return es_my_ids;
}

/*
 * es_draw_id
 *		Draw the next id for this database.
 */
static int64
es_draw_id(Oid seqid)
{
	EsDbIds    *e = es_db_ids(seqid);

	if (e == NULL)
		return nextval_internal(seqid, false) * ES_ID_BLOCK;

	for (;;)
	{
		int64		block;

		SpinLockAcquire(&e->mutex);
		if (e->next_id < e->block_end)
		{
			int64		id = e->next_id++;

			SpinLockRelease(&e->mutex);
			return id;
		}
		SpinLockRelease(&e->mutex);

		/* Refill, outside the spinlock: nextval takes locks and may WAL-log. */
		block = nextval_internal(seqid, false);
		SpinLockAcquire(&e->mutex);
		if (e->next_id >= e->block_end && block * ES_ID_BLOCK >= e->block_end)
		{
			e->next_id = block * ES_ID_BLOCK;
			e->block_end = e->next_id + ES_ID_BLOCK;
		}
		SpinLockRelease(&e->mutex);
	}
}

/*
 * es_next_log_id
 *		Draw the next update log id, publishing the first one of the
 *		transaction in this backend's slot (see the file header).
 */
int64
es_next_log_id(Oid seqid)
{
	EsSlot	   *slot;
	int64		id;

	es_xact_logs++;
	if (es_slot_used)
		return es_draw_id(seqid);

	if (es_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream must be loaded via shared_preload_libraries"),
				 errhint("Add eventstream to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (!es_callback_registered)
	{
		RegisterXactCallback(es_slot_xact_callback, NULL);
		es_callback_registered = true;
	}

	slot = &es_shared->slots[MyProc->pgprocno];
	slot->s.dboid = MyDatabaseId;
	es_slot_used = true;
	pg_write_barrier();
	pg_atomic_write_u64(&slot->s.first_id, ES_ID_PENDING);
	pg_memory_barrier();
	id = es_draw_id(seqid);
	pg_atomic_write_u64(&slot->s.first_id, (uint64) id);
	return id;
}

/*
 * eventstream_log_low_bound
 *		eventstream._log_low_bound(seq regclass, seq_next bigint) → bigint
 *
 * A lower bound of the ids of all logs of this database that are not yet
 * committed.  seq_next must be the next value (block number) of the update
 * log sequence seq, read by the caller before this call (arguments are
 * evaluated first); it counts when no block is in use since startup.
 * NULL when a transaction was caught drawing its first id: the caller then
 * uses an older bound.
 */
Datum
eventstream_log_low_bound(PG_FUNCTION_ARGS)
{
	Oid			seqid = PG_GETARG_OID(0);
	uint64		low = (uint64) PG_GETARG_INT64(1) * ES_ID_BLOCK;
	int			attempt;
	int			i;
	EsDbIds    *e;

	if (es_shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream must be loaded via shared_preload_libraries")));

	/* The next id to be drawn: from the current block, if there is one. */
	e = es_db_ids(seqid);
	if (e != NULL)
	{
		SpinLockAcquire(&e->mutex);
		if (e->block_end > 0)
			low = (uint64) e->next_id;
		SpinLockRelease(&e->mutex);
	}

	pg_memory_barrier();
	for (i = 0; i < es_shared->nslots; i++)
	{
		EsSlot	   *slot = &es_shared->slots[i];
		uint64		v = pg_atomic_read_u64(&slot->s.first_id);

		/* A drawing writer is done within microseconds; wait a little. */
		for (attempt = 0; v == ES_ID_PENDING && attempt < 1000; attempt++)
		{
			pg_spin_delay();
			v = pg_atomic_read_u64(&slot->s.first_id);
		}
		if (v == 0)
			continue;
		pg_read_barrier();
		if (slot->s.dboid != MyDatabaseId)
			continue;
		if (v == ES_ID_PENDING)
			PG_RETURN_NULL();
		if (v < low)
			low = v;
	}
	PG_RETURN_INT64((int64) low);
}
