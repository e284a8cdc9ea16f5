/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  Background workers: the launcher, and the table of site workers in
 *	  shared memory.
 *
 * The launcher is a static background worker, connected to no database.
 * When it starts (after every server start) and then every minute it lists
 * the databases that accept connections and starts a site worker
 * (src/site/worker.c) for each that has none and is not known to lack the
 * extension.  A site worker that finds no extension in its database records
 * that and exits, so each database is probed once per server start.  CREATE
 * EXTENSION starts its database's worker itself, when its transaction
 * commits; DROP EXTENSION wakes it then, and it exits.  Commands that need
 * the database to themselves (DROP DATABASE, ALTER DATABASE ... RENAME / SET
 * TABLESPACE, CREATE DATABASE ... TEMPLATE) terminate its worker first,
 * through a ProcessUtility hook, so they never wait on it; the launcher
 * starts a worker again later if the database is still there.  The same
 * hook tells the update log ids (src/producer/logids.c) when COMMIT
 * PREPARED or ROLLBACK PREPARED ended a prepared transaction.
 *
 * Shared state: one EsSiteWorker entry per database that has (had) a
 * worker, protected by es_workers->mutex (see launcher.h).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "producer/logids.h"
#include "site/launcher.h"
#include "site/worker.h"

PGDLLEXPORT void eventstream_launcher_main(Datum main_arg);

PG_FUNCTION_INFO_V1(eventstream_start_worker);
PG_FUNCTION_INFO_V1(eventstream_wake_worker);

EsWorkers  *es_workers = NULL;

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Set in a backend by CREATE / DROP EXTENSION, acted on at commit. */
static bool es_start_worker_at_commit = false;
static bool es_wake_worker_at_commit = false;
static bool es_xact_callback_registered = false;

static bool es_launch_site_worker(Oid dboid);
static void es_stop_site_worker(Oid dboid);
static void es_worker_xact_callback(XactEvent event, void *arg);
static void es_process_utility(PlannedStmt *pstmt, const char *queryString,
							   bool readOnlyTree, ProcessUtilityContext context,
							   ParamListInfo params, QueryEnvironment *queryEnv,
							   DestReceiver *dest, QueryCompletion *qc);

/*
 * es_workers_shmem_size / es_workers_shmem_init
 *		Shared state of the workers; called from shmem.c's hooks.
 */
Size
es_workers_shmem_size(void)
{
	return sizeof(EsWorkers);
}

void
es_workers_shmem_init(void)
{
	bool		found;

	es_workers = ShmemInitStruct("eventstream workers", sizeof(EsWorkers), &found);
	if (!found)
	{
		memset(es_workers, 0, sizeof(EsWorkers));
		SpinLockInit(&es_workers->mutex);
		for (int i = 0; i < ES_MAX_SITES; i++)
			pg_atomic_init_u32(&es_workers->sites[i].logs_since_tick, 0);
		es_workers->launcher_procno = -1;
	}
}

/*
 * es_workers_init
 *		Register the launcher and install the utility hook; called from
 *		_PG_init while preloading.
 */
void
es_workers_init(void)
{
	BackgroundWorker bgw;

	DefineCustomIntVariable("eventstream.prune_interval",
							"Time between two prunes of the update log by a site's worker.",
							"0 turns periodic pruning off (eventstream.prune() still works).",
							&es_prune_interval,
							60, 0, 24 * 3600,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("eventstream.test_pause_at",
							   "For tests only: the point at which site workers pause.",
							   "A worker reaching the named point (received, held, before-apply) "
							   "waits there, outside any transaction, until the setting names "
							   "another point; tests use it to hold work instead of catching it "
							   "in the act.",
							   &es_test_pause_at,
							   "",
							   PGC_SIGHUP,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = 5;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "eventstream");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "eventstream_launcher_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "eventstream launcher");
	snprintf(bgw.bgw_type, BGW_MAXLEN, "eventstream launcher");
	RegisterBackgroundWorker(&bgw);

	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = es_process_utility;
}

/*
 * es_site
 *		The shared entry of database dboid; with create, one is made if
 *		needed (NULL when all are taken).  Caller holds es_workers->mutex.
 */
EsSiteWorker *
es_site(Oid dboid, bool create)
{
	EsSiteWorker *free_entry = NULL;
	int			i;

	for (i = 0; i < ES_MAX_SITES; i++)
	{
		if (es_workers->sites[i].dboid == dboid)
			return &es_workers->sites[i];
		if (free_entry == NULL && es_workers->sites[i].dboid == InvalidOid)
			free_entry = &es_workers->sites[i];
	}
	if (!create || free_entry == NULL)
		return NULL;
	free_entry->dboid = dboid;
	free_entry->pid = 0;
	free_entry->no_extension = false;
	free_entry->hold_until = 0;
	return free_entry;
}

/*
 * es_launch_site_worker
 *		Register a dynamic site worker for dboid.  Returns false (with a
 *		WARNING) when no background worker slot is free.  Never errors, so
 *		it may run at commit.
 */
static bool
es_launch_site_worker(Oid dboid)
{
	BackgroundWorker bgw;

	memset(&bgw, 0, sizeof(bgw));
	bgw.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	bgw.bgw_start_time = BgWorkerStart_RecoveryFinished;
	bgw.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(bgw.bgw_library_name, BGW_MAXLEN, "eventstream");
	snprintf(bgw.bgw_function_name, BGW_MAXLEN, "eventstream_worker_main");
	snprintf(bgw.bgw_name, BGW_MAXLEN, "eventstream worker for database %u", dboid);
	snprintf(bgw.bgw_type, BGW_MAXLEN, "eventstream worker");
	bgw.bgw_main_arg = ObjectIdGetDatum(dboid);
	bgw.bgw_notify_pid = 0;

	if (!RegisterDynamicBackgroundWorker(&bgw, NULL))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start the eventstream worker for database %u", dboid),
				 errhint("Raise max_worker_processes; the launcher tries again within a minute.")));
		return false;
	}
	return true;
}

/*
 * es_stop_site_worker
 *		Terminate dboid's site worker, if any, and wait (up to 10 s) until
 *		it is gone, so that the caller can have the database to itself.  The
 *		launcher leaves the database alone for a while afterwards.
 */
static void
es_stop_site_worker(Oid dboid)
{
	int			i;
	EsSiteWorker *site;

	if (es_workers == NULL)
		return;
	SpinLockAcquire(&es_workers->mutex);
	site = es_site(dboid, false);
	if (site)
		site->hold_until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 30000);
	SpinLockRelease(&es_workers->mutex);

	for (i = 0; i < 1000; i++)
	{
		EsSiteWorker *site;
		pid_t		pid = 0;

		SpinLockAcquire(&es_workers->mutex);
		site = es_site(dboid, false);
		if (site)
			pid = site->pid;
		SpinLockRelease(&es_workers->mutex);
		if (pid == 0)
			return;
		if (i == 0)
			kill(pid, SIGTERM);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * es_worker_xact_callback
 *		At commit, start or wake this database's worker as asked by
 *		CREATE / DROP EXTENSION; forget the request on abort.
 */
static void
es_worker_xact_callback(XactEvent event, void *arg)
{
	bool		start = es_start_worker_at_commit;
	bool		wake = es_wake_worker_at_commit;

	if (event != XACT_EVENT_COMMIT && event != XACT_EVENT_ABORT &&
		event != XACT_EVENT_PARALLEL_COMMIT && event != XACT_EVENT_PARALLEL_ABORT &&
		event != XACT_EVENT_PREPARE)
		return;
	es_start_worker_at_commit = false;
	es_wake_worker_at_commit = false;
	if (event != XACT_EVENT_COMMIT || es_workers == NULL)
		return;

	if (start)
	{
		EsSiteWorker *site;
		bool		running = false;

		SpinLockAcquire(&es_workers->mutex);
		site = es_site(MyDatabaseId, true);
		if (site)
		{
			site->no_extension = false;
			running = (site->pid != 0);
		}
		SpinLockRelease(&es_workers->mutex);
		if (!running)
			(void) es_launch_site_worker(MyDatabaseId);
	}
	if (wake)
	{
		EsSiteWorker *site;
		int			procno = -1;

		SpinLockAcquire(&es_workers->mutex);
		site = es_site(MyDatabaseId, false);
		if (site && site->pid != 0)
		{
			procno = site->procno;
			site->recheck = true;
		}
		SpinLockRelease(&es_workers->mutex);
		if (procno >= 0)
			SetLatch(&ProcGlobal->allProcs[procno].procLatch);
	}
}

/*
 * es_request_at_commit
 *		Ask for a start (or a wake) of this database's worker at commit.
 */
static void
es_request_at_commit(bool start)
{
	if (!es_xact_callback_registered)
	{
		RegisterXactCallback(es_worker_xact_callback, NULL);
		es_xact_callback_registered = true;
	}
	if (start)
		es_start_worker_at_commit = true;
	else
		es_wake_worker_at_commit = true;
}

/*
 * eventstream_start_worker
 *		eventstream._start_worker(): start this database's worker when the
 *		calling transaction commits (called by CREATE EXTENSION).
 */
Datum
eventstream_start_worker(PG_FUNCTION_ARGS)
{
	es_request_at_commit(true);
	PG_RETURN_VOID();
}

/*
 * eventstream_wake_worker
 *		eventstream._wake_worker(): wake this database's worker when the
 *		calling transaction commits, so that it reads its producers again.
 */
Datum
eventstream_wake_worker(PG_FUNCTION_ARGS)
{
	es_request_at_commit(false);
	PG_RETURN_VOID();
}

/*
 * es_option / es_has_option
 *		The option called name in a list of DefElems (NULL if absent).
 */
static DefElem *
es_option(List *options, const char *name)
{
	ListCell   *lc;

	foreach(lc, options)
	{
		DefElem    *opt = lfirst_node(DefElem, lc);

		if (strcmp(opt->defname, name) == 0 && opt->arg != NULL)
			return opt;
	}
	return NULL;
}

static bool
es_has_option(List *options, const char *name)
{
	return es_option(options, name) != NULL;
}

/*
 * es_process_utility
 *		ProcessUtility hook: free databases from their site worker before
 *		commands that need them to themselves (DROP DATABASE, ALTER DATABASE
 *		RENAME / SET TABLESPACE, CREATE DATABASE ... TEMPLATE), wake the
 *		worker after DROP EXTENSION eventstream, and after COMMIT PREPARED
 *		or ROLLBACK PREPARED free the ended transaction's update log entry
 *		(src/producer/logids.c).
 */
static void
es_process_utility(PlannedStmt *pstmt, const char *queryString,
				   bool readOnlyTree, ProcessUtilityContext context,
				   ParamListInfo params, QueryEnvironment *queryEnv,
				   DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *stmt = pstmt->utilityStmt;
	const char *dbname = NULL;

	if (IsA(stmt, DropdbStmt))
		dbname = ((DropdbStmt *) stmt)->dbname;
	else if (IsA(stmt, AlterDatabaseStmt) &&
			 es_has_option(((AlterDatabaseStmt *) stmt)->options, "tablespace"))
		dbname = ((AlterDatabaseStmt *) stmt)->dbname;
	else if (IsA(stmt, RenameStmt) && ((RenameStmt *) stmt)->renameType == OBJECT_DATABASE)
		dbname = ((RenameStmt *) stmt)->subname;
	else if (IsA(stmt, CreatedbStmt) &&
			 es_has_option(((CreatedbStmt *) stmt)->options, "template"))
		dbname = defGetString(es_option(((CreatedbStmt *) stmt)->options, "template"));
	else if (IsA(stmt, DropStmt) && ((DropStmt *) stmt)->removeType == OBJECT_EXTENSION)
	{
		ListCell   *lc;

		foreach(lc, ((DropStmt *) stmt)->objects)
			if (strcmp(strVal(lfirst(lc)), "eventstream") == 0)
				es_request_at_commit(false);
	}

	if (dbname != NULL)
	{
		Oid			dboid = get_database_oid(dbname, true);

		if (OidIsValid(dboid) && dboid != MyDatabaseId)
			es_stop_site_worker(dboid);
	}

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);

	if (IsA(stmt, TransactionStmt))
	{
		TransactionStmtKind kind = ((TransactionStmt *) stmt)->kind;

		if (kind == TRANS_STMT_COMMIT_PREPARED || kind == TRANS_STMT_ROLLBACK_PREPARED)
			es_prepared_finished(kind == TRANS_STMT_COMMIT_PREPARED);
	}
}

/*
 * es_launcher_detach
 *		before_shmem_exit callback: forget the exiting launcher.
 */
static void
es_launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&es_workers->mutex);
	es_workers->launcher_procno = -1;
	SpinLockRelease(&es_workers->mutex);
}

/*
 * es_launcher_cycle
 *		Start a site worker for every database that accepts connections,
 *		has none running and is not known to lack the extension.
 *
 * The list of databases is read in a short transaction into the caller's
 * memory context; workers are started after it ends.
 */
static void
es_launcher_cycle(void)
{
	List	   *dbs = NIL;
	ListCell   *lc;
	MemoryContext cxt = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);
		MemoryContext old;

		if (!db->datallowconn || db->datistemplate)
			continue;
		old = MemoryContextSwitchTo(cxt);
		dbs = lappend_oid(dbs, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);

	/* Forget databases that are gone. */
	SpinLockAcquire(&es_workers->mutex);
	{
		int			i;

		for (i = 0; i < ES_MAX_SITES; i++)
		{
			EsSiteWorker *site = &es_workers->sites[i];

			if (site->dboid != InvalidOid && site->pid == 0 &&
				!list_member_oid(dbs, site->dboid))
				site->dboid = InvalidOid;
		}
	}
	SpinLockRelease(&es_workers->mutex);

	foreach(lc, dbs)
	{
		Oid			dboid = lfirst_oid(lc);
		EsSiteWorker *site;
		bool		start;
		TimestampTz now = GetCurrentTimestamp();

		SpinLockAcquire(&es_workers->mutex);
		site = es_site(dboid, true);
		start = (site != NULL && site->pid == 0 && !site->no_extension &&
				 site->hold_until <= now);
		/* Give the new worker time to attach before considering it again. */
		if (start)
			site->hold_until = TimestampTzPlusMilliseconds(now, 10000);
		SpinLockRelease(&es_workers->mutex);
		if (start && !es_launch_site_worker(dboid))
			break;
	}
}

/*
 * eventstream_launcher_main
 *		Entry point of the launcher.
 */
void
eventstream_launcher_main(Datum main_arg)
{
	MemoryContext cycle_cxt;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	SpinLockAcquire(&es_workers->mutex);
	es_workers->launcher_procno = MyProc->pgprocno;
	SpinLockRelease(&es_workers->mutex);
	before_shmem_exit(es_launcher_detach, (Datum) 0);

	cycle_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream launcher cycle",
									  ALLOCSET_DEFAULT_SIZES);
	for (;;)
	{
		MemoryContext old = MemoryContextSwitchTo(cycle_cxt);

		es_launcher_cycle();
		MemoryContextSwitchTo(old);
		MemoryContextReset(cycle_cxt);

		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 ES_LAUNCHER_NAP_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
}
