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
 * sits on its own cache line.
 *
 * Prepared transactions.  A transaction prepared for two-phase commit
 * outlives its backend's slot, and a server restart.  At PREPARE
 * TRANSACTION (before it is prepared, while an error can still refuse it)
 * its first id, xid and number of logs are copied into a prepared entry,
 * one of max_prepared_transactions, before its slot is cleared: a reader
 * reads the slots first and the entries after, so it sees one or the
 * other.  An entry counts while its xid is in progress (TransactionIdIs-
 * InProgress; a prepared transaction is until COMMIT or ROLLBACK PREPARED),
 * so a bound never passes it and its logs are served after it commits, in
 * commit order.  COMMIT / ROLLBACK PREPARED frees the entries of ended
 * transactions (es_prepared_finished, from the ProcessUtility hook) and
 * wakes the site's long-polls after a COMMIT; a PREPARE that fails frees
 * its own.  Shared memory does not survive a restart, the prepared
 * transactions do: the first bound taken in a database after startup
 * lists its prepared transactions (pg_prepared_xact()) and, if there are
 * any, reads the update log once, uncommitted rows included, for the first
 * id of each (es_prepared_load).
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
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "commands/sequence.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "port/atomics.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/xid8.h"

#include "eventstream.h"
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
	volatile bool prepared_loaded;	/* entries of prepared xacts recovered */
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

/*
 * A prepared transaction that wrote logs (see the file header).  Written
 * under prepared_mutex; read without locks, first_id first.
 */
typedef struct EsPrepared
{
	pg_atomic_uint64 first_id;	/* 0: entry free */
	pg_atomic_uint64 fxid;		/* its FullTransactionId */
	Oid			dboid;
	int			nlogs;			/* logs it wrote */
} EsPrepared;

typedef struct EsShared
{
	slock_t		dbs_mutex;		/* protects assigning dbs[] entries */
	EsDbIds		dbs[ES_MAX_DATABASES];
	slock_t		prepared_mutex; /* protects claiming prepared entries */
	int			nprepared;
	int			nslots;
	EsSlot		slots[FLEXIBLE_ARRAY_MEMBER];
	/* followed by nprepared EsPrepared entries */
} EsShared;

#define ES_PREPARED(i) \
	(&((EsPrepared *) &es_shared->slots[es_shared->nslots])[i])

static EsShared *es_shared = NULL;
static EsDbIds *es_my_ids = NULL;	/* this backend's database entry */

/* Whether this backend's slot holds something for the current transaction. */
static bool es_slot_used = false;
static int	es_xact_logs = 0;	/* logs this transaction wrote */
static bool es_callback_registered = false;
static int	es_my_prepared = -1;	/* entry claimed at PRE_PREPARE */

static void es_slot_xact_callback(XactEvent event, void *arg);
static int	es_prepared_claim(FullTransactionId fxid, uint64 first_id, int nlogs);
static void es_prepared_free(int i, uint64 first_id);

/*
 * es_logids_shmem_size
 *		One slot per PGPROC (every backend, auxiliary and prepared-xact proc).
 */
Size
es_logids_shmem_size(void)
{
	int			nslots = MaxBackends + NUM_AUXILIARY_PROCS + max_prepared_xacts;

	return add_size(add_size(offsetof(EsShared, slots), mul_size(nslots, sizeof(EsSlot))),
					mul_size(max_prepared_xacts, sizeof(EsPrepared)));
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
		SpinLockInit(&es_shared->prepared_mutex);
		es_shared->nprepared = max_prepared_xacts;
		for (i = 0; i < es_shared->nprepared; i++)
		{
			pg_atomic_init_u64(&ES_PREPARED(i)->first_id, 0);
			pg_atomic_init_u64(&ES_PREPARED(i)->fxid, 0);
			ES_PREPARED(i)->dboid = InvalidOid;
			ES_PREPARED(i)->nlogs = 0;
		}
	}
}

/*
 * es_slot_xact_callback
 *		Clear the slot when the transaction ends; hand its first id over to
 *		a prepared entry at PREPARE.
 */
static void
es_slot_xact_callback(XactEvent event, void *arg)
{
	uint64		first_id;

	if (!es_slot_used)
		return;
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			/* Without prepared transactions PREPARE fails by itself. */
			if (max_prepared_xacts == 0)
				break;
			first_id = pg_atomic_read_u64(&es_shared->slots[MyProc->pgprocno].s.first_id);
			es_my_prepared = es_prepared_claim(GetTopFullTransactionId(), first_id,
											   es_xact_logs);
			/* The entry is visible before the slot is cleared at PREPARE. */
			pg_memory_barrier();
			break;
		case XACT_EVENT_PREPARE:
			/* The entry now belongs to the prepared transaction. */
			es_my_prepared = -1;
			pg_atomic_write_u64(&es_shared->slots[MyProc->pgprocno].s.first_id, 0);
			es_slot_used = false;
			es_xact_logs = 0;
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
			/* A PREPARE that failed after claiming an entry frees it. */
			if (es_my_prepared >= 0)
			{
				es_prepared_free(es_my_prepared,
								 pg_atomic_read_u64(&es_shared->slots[MyProc->pgprocno].s.first_id));
				es_my_prepared = -1;
			}
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
		es_my_ids->prepared_loaded = false;
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
 * es_prepared_sweep
 *		Free the prepared entries of dboid (InvalidOid: of every database)
 *		whose transaction ended; returns how many logs they had written.
 */
static int
es_prepared_sweep(Oid dboid)
{
	int			nlogs = 0;
	int			i;

	for (i = 0; i < es_shared->nprepared; i++)
	{
		EsPrepared *p = ES_PREPARED(i);
		uint64		v = pg_atomic_read_u64(&p->first_id);
		FullTransactionId fxid;
		int			n;

		if (v == 0)
			continue;
		pg_read_barrier();
		if (OidIsValid(dboid) && p->dboid != dboid)
			continue;
		fxid = FullTransactionIdFromU64(pg_atomic_read_u64(&p->fxid));
		n = p->nlogs;
		if (TransactionIdIsInProgress(XidFromFullTransactionId(fxid)))
			continue;
		/* Fails if another backend freed it first, or it was reused. */
		if (pg_atomic_compare_exchange_u64(&p->first_id, &v, 0))
			nlogs += n;
	}
	return nlogs;
}

/*
 * es_prepared_claim
 *		Record that transaction fxid of this database, whose first log id is
 *		first_id and which wrote nlogs logs, is (being) prepared; returns its
 *		entry.  An entry already recorded for fxid is returned as it is.
 *
 * There are as many entries as prepared transactions can exist, so one is
 * free once those of ended transactions are swept.
 */
static int
es_prepared_claim(FullTransactionId fxid, uint64 first_id, int nlogs)
{
	int			attempt;

	for (attempt = 0; attempt < 2; attempt++)
	{
		int			free_entry = -1;
		int			i;

		SpinLockAcquire(&es_shared->prepared_mutex);
		for (i = 0; i < es_shared->nprepared; i++)
		{
			EsPrepared *p = ES_PREPARED(i);

			if (pg_atomic_read_u64(&p->first_id) == 0)
			{
				if (free_entry < 0)
					free_entry = i;
			}
			else if (pg_atomic_read_u64(&p->fxid) == U64FromFullTransactionId(fxid))
			{
				SpinLockRelease(&es_shared->prepared_mutex);
				return i;
			}
		}
		if (free_entry >= 0)
		{
			EsPrepared *p = ES_PREPARED(free_entry);

			p->dboid = MyDatabaseId;
			p->nlogs = nlogs;
			pg_atomic_write_u64(&p->fxid, U64FromFullTransactionId(fxid));
			pg_write_barrier();
			pg_atomic_write_u64(&p->first_id, first_id);
			SpinLockRelease(&es_shared->prepared_mutex);
			return free_entry;
		}
		SpinLockRelease(&es_shared->prepared_mutex);
		/* All taken: free those of ended transactions, then look again. */
		es_prepared_sweep(InvalidOid);
	}
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("no free eventstream entry for a prepared transaction"),
			 errdetail("All %d entries are held by prepared transactions in progress.",
					   es_shared->nprepared),
			 errhint("Commit or roll back prepared transactions listed in pg_prepared_xacts.")));
	return -1;					/* keep the compiler quiet */
}

/*
 * es_prepared_free
 *		Free entry i if it still holds first_id (a PREPARE that failed).
 */
static void
es_prepared_free(int i, uint64 first_id)
{
	pg_atomic_compare_exchange_u64(&ES_PREPARED(i)->first_id, &first_id, 0);
}

/*
 * es_prepared_finished
 *		After COMMIT PREPARED or ROLLBACK PREPARED (committed says which) in
 *		this database: free the entries of ended transactions and, after a
 *		commit of logs, wake the site's long-polls.
 */
void
es_prepared_finished(bool committed)
{
	int			nlogs;

	if (es_shared == NULL)
		return;
	nlogs = es_prepared_sweep(MyDatabaseId);
	if (committed && nlogs > 0)
		es_wake_site(MyDatabaseId, nlogs);
}

/*
 * es_prepared_load
 *		Recover the entries of this database's prepared transactions after
 *		a restart (see the file header): list them, and if there are any,
 *		read the whole update log once, uncommitted rows included, for the
 *		first id and the number of logs of each.  e may be NULL (no
 *		database entry: nothing remembers that this was done).
 */
static void
es_prepared_load(EsDbIds *e)
{
	TransactionId *xids;
	FullTransactionId *fxids;
	uint64	   *first;
	int		   *nlogs;
	int			nxids;
	int			rc;
	int			i;

	/* Without prepared transactions there is nothing to recover. */
	if (es_shared->nprepared == 0)
	{
		if (e != NULL)
			e->prepared_loaded = true;
		return;
	}
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute(psprintf("SELECT p.transaction FROM pg_catalog.pg_prepared_xact() p"
							  " WHERE p.dbid OPERATOR(pg_catalog.=) %u", MyDatabaseId),
					 true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute failed: %s", SPI_result_code_string(rc));
	nxids = (int) SPI_processed;
	xids = SPI_palloc(sizeof(TransactionId) * Max(nxids, 1));
	for (i = 0; i < nxids; i++)
	{
		bool		isnull;

		xids[i] = DatumGetTransactionId(SPI_getbinval(SPI_tuptable->vals[i],
													  SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();

	if (nxids > 0)
	{
		Oid			relid;
		Relation	rel;
		TableScanDesc scan;
		HeapTuple	tup;

		fxids = palloc0(sizeof(FullTransactionId) * nxids);
		first = palloc0(sizeof(uint64) * nxids);
		nlogs = palloc0(sizeof(int) * nxids);
		relid = get_relname_relid(EVENTSTREAM_LOG_TABLE,
								  get_namespace_oid(EVENTSTREAM_SCHEMA, false));
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("eventstream.update_log does not exist")));
		rel = table_open(relid, AccessShareLock);
		scan = table_beginscan(rel, SnapshotAny, 0, NULL);
		while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
		{
			bool		isnull;
			Datum		id = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
			Datum		txid = heap_getattr(tup, 6, RelationGetDescr(rel), &isnull);
			FullTransactionId fxid;

			if (isnull)
				continue;
			fxid = DatumGetFullTransactionId(txid);
			for (i = 0; i < nxids; i++)
			{
				if (XidFromFullTransactionId(fxid) != xids[i])
					continue;
				fxids[i] = fxid;
				if (nlogs[i]++ == 0 || (uint64) DatumGetInt64(id) < first[i])
					first[i] = (uint64) DatumGetInt64(id);
			}
		}
		table_endscan(scan);
		table_close(rel, AccessShareLock);
		for (i = 0; i < nxids; i++)
			if (nlogs[i] > 0)
				es_prepared_claim(fxids[i], first[i], nlogs[i]);
	}
	pg_write_barrier();
	if (e != NULL)
		e->prepared_loaded = true;
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
 * uses an older bound.  Prepared transactions count until they end; the
 * first call in a database after startup recovers them (es_prepared_load).
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

	e = es_db_ids(seqid);
	if (e == NULL || !e->prepared_loaded)
		es_prepared_load(e);

	/* The next id to be drawn: from the current block, if there is one. */
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

	/* Then the prepared transactions, after the slots (see the header). */
	pg_memory_barrier();
	for (i = 0; i < es_shared->nprepared; i++)
	{
		EsPrepared *p = ES_PREPARED(i);
		uint64		v = pg_atomic_read_u64(&p->first_id);
		FullTransactionId fxid;

		if (v == 0)
			continue;
		pg_read_barrier();
		if (p->dboid != MyDatabaseId)
			continue;
		fxid = FullTransactionIdFromU64(pg_atomic_read_u64(&p->fxid));
		if (v < low && TransactionIdIsInProgress(XidFromFullTransactionId(fxid)))
			low = v;
	}
	PG_RETURN_INT64((int64) low);
}
