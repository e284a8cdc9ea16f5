/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Background workers: the launcher and one site worker per database
 *	  that has the extension.
 *
 * The launcher is a static background worker, connected to no database.
 * When it starts (after every server start) and then every minute it lists
 * the databases that accept connections and starts a site worker for each
 * that has none and is not known to lack the extension.  A site worker
 * that finds no extension in its database records that and exits, so each
 * database is probed once per server start.  CREATE EXTENSION starts its
 * database's worker itself, when its transaction commits.
 *
 * A site worker runs the periodic duties of its site (for now: pruning the
 * update log every eventstream.prune_interval).  It survives errors: one
 * that escapes a duty is logged, the transaction is aborted and the worker
 * sleeps with exponential backoff before carrying on.  It reloads settings
 * on SIGHUP and exits on SIGTERM.  It exits by itself when the extension is
 * dropped (DROP EXTENSION wakes it at commit).  Commands that need the
 * database to themselves (DROP DATABASE, ALTER DATABASE ... RENAME / SET
 * TABLESPACE, CREATE DATABASE ... TEMPLATE) terminate its worker first,
 * through a ProcessUtility hook, so they never wait on it; the launcher
 * starts a worker again later if the database is still there.
 *
 * Shared state: one EsSiteWorker entry per database that has (had) a
 * worker, protected by es_workers->mutex.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procsignal.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "consumer/pull.h"
#include "http/server.h"
#include "site/worker.h"

PGDLLEXPORT void eventstream_launcher_main(Datum main_arg);
PGDLLEXPORT void eventstream_worker_main(Datum main_arg);

PG_FUNCTION_INFO_V1(eventstream_start_worker);
PG_FUNCTION_INFO_V1(eventstream_wake_worker);

#define ES_MAX_SITES		64
#define ES_LAUNCHER_NAP_MS	60000
#define ES_HTTP_RETRY_MS	1000	/* first retry of a taken HTTP port */
#define ES_TICK_MS			1000	/* a tick a second while logs are written, */
#define ES_TICK_LOGS		4000	/* or as soon as this many were committed */
#define ES_HTTP_RETRY_MAX_MS	60000
#define ES_MAX_BACKOFF_MS	60000
#define ES_MALLOC_KEEP		(64 * 1024 * 1024)	/* see eventstream_worker_main */
#define ES_PRUNE_STEP		20000	/* logs pruned at a time, */
#define ES_PRUNE_PAUSE_MS	100		/* with this much serving in between */

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

static EsWorkers *es_workers = NULL;
char	   *es_test_pause_at = NULL;

/* Whether this process is a site worker, and its shared entry. */
bool		es_in_site_worker = false;
static EsSiteWorker *es_my_site = NULL;

/* GUC: seconds between two prunes by a site worker (0: never). */
int			es_prune_interval = 60;

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Set in a backend by CREATE / DROP EXTENSION, acted on at commit. */
static bool es_start_worker_at_commit = false;
static bool es_wake_worker_at_commit = false;
static bool es_xact_callback_registered = false;

static EsSiteWorker *es_site(Oid dboid, bool create);
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
 * es_test_pause
 *		Wait here while eventstream.test_pause_at names point, re-reading
 *		the configuration on SIGHUP; says so once in the server log and in
 *		pg_stat_activity ("paused at <point>").  Called by the site worker
 *		outside any transaction (a reload inside one would be undone by its
 *		abort).  Costs one test of an empty string when no test uses it.
 */
void
es_test_pause(const char *point)
{
	bool		paused = false;

	Assert(!IsTransactionState());
	while (es_test_pause_at[0] != '\0' && strcmp(es_test_pause_at, point) == 0)
	{
		if (!paused)
		{
			ereport(LOG,
					(errmsg("eventstream worker paused at \"%s\"", point)));
			pgstat_report_activity(STATE_RUNNING, psprintf("paused at %s", point));
			paused = true;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
	}
	if (paused)
		pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * es_site
 *		The shared entry of database dboid; with create, one is made if
 *		needed (NULL when all are taken).  Caller holds es_workers->mutex.
 */
static EsSiteWorker *
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
 * es_wake_site
 *		Set the latch of dboid's site worker, if one runs: a transaction
 *		that wrote nlogs update logs committed (parked long-polls re-check,
 *		and the worker records a tick within ES_TICK_MS, or at once when
 *		ES_TICK_LOGS were committed since the last one).
 *		Lock-free: called at every commit of a capturing transaction, and a
 *		stale read only costs a spurious or missed-by-one-cycle wake-up.
 */
void
es_wake_site(Oid dboid, int nlogs)
{
	static int	cached = -1;
	EsSiteWorker *site;
	uint32		before;
	int			i;

	if (es_workers == NULL)
		return;
	if (cached < 0 || es_workers->sites[cached].dboid != dboid)
	{
		cached = -1;
		for (i = 0; i < ES_MAX_SITES; i++)
			if (es_workers->sites[i].dboid == dboid)
				cached = i;
		if (cached < 0)
			return;
	}
	site = &es_workers->sites[cached];
	before = pg_atomic_fetch_add_u32(&site->logs_since_tick, (uint32) Max(nlogs, 0));
	if (site->pid != 0 &&
		(site->has_waiters || !site->logs_pending ||
		 (before < ES_TICK_LOGS && before + nlogs >= ES_TICK_LOGS)))
	{
		/* The first commit after a tick also tells the worker a tick is due. */
		site->logs_pending = true;
		SetLatch(&ProcGlobal->allProcs[site->procno].procLatch);
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
 *		RENAME / SET TABLESPACE, CREATE DATABASE ... TEMPLATE), and wake the
 *		worker after DROP EXTENSION eventstream.
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
}

/*
 * es_launcher_detach / es_worker_detach
 *		on_shmem_exit callbacks: forget the exiting process.
 */
static void
es_launcher_detach(int code, Datum arg)
{
	SpinLockAcquire(&es_workers->mutex);
	es_workers->launcher_procno = -1;
	SpinLockRelease(&es_workers->mutex);
}

static void
es_worker_detach(int code, Datum arg)
{
	EsSiteWorker *site;

	SpinLockAcquire(&es_workers->mutex);
	site = es_site(DatumGetObjectId(arg), false);
	if (site && site->pid == MyProcPid)
		site->pid = 0;
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

/*
 * es_worker_duties
 *		One round of a site worker's periodic duties, in one transaction.
 *		Returns false when the extension is gone (the worker should exit).
 *		Pruning deletes ES_PRUNE_STEP logs at most: *prune_more says more
 *		are due (a large backlog is pruned in steps, so that long-polls and
 *		pulls are not held up for seconds).
 */
static bool
es_worker_duties(TimestampTz *last_prune, bool *prune_more)
{
	bool		present;
	TimestampTz now = GetCurrentTimestamp();

	*prune_more = false;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	present = OidIsValid(get_extension_oid("eventstream", true));
	if (present && es_prune_interval > 0 &&
		TimestampDifferenceExceeds(*last_prune, now, es_prune_interval * 1000))
	{
		bool		isnull;
		int64		pruned = 0;

		pgstat_report_activity(STATE_RUNNING, "SELECT eventstream.prune(" CppAsString2(ES_PRUNE_STEP) ")");
		SPI_connect();
		if (SPI_execute("SELECT eventstream.prune(" CppAsString2(ES_PRUNE_STEP) ")", false, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not prune the update log");
		if (SPI_processed == 1)
		{
			Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

			pruned = isnull ? 0 : DatumGetInt64(d);
		}
		SPI_finish();
		/* A full step: more is due; the next step after a moment of serving. */
		*prune_more = pruned >= ES_PRUNE_STEP;
		if (!*prune_more)
			*last_prune = now;
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
	return present;
}

/*
 * es_worker_site_id
 *		This site's site_id as text (in TopMemoryContext), or NULL when the
 *		extension is not installed.
 */
static char *
es_worker_site_id(void)
{
	char	   *result = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (OidIsValid(get_extension_oid("eventstream", true)))
	{
		SPI_connect();
		if (SPI_execute("SELECT site_id::text FROM eventstream.site", true, 1) == SPI_OK_SELECT &&
			SPI_processed == 1)
			result = MemoryContextStrdup(TopMemoryContext,
										 SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		SPI_finish();
	}
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/*
 * es_worker_http_stop
 *		before_shmem_exit callback: close the HTTP server.
 */
static void
es_worker_http_stop(int code, Datum arg)
{
	es_http_stop();
}

/*
 * es_worker_tick
 *		Record a tick (eventstream._tick(): a snapshot with the update
 *		log's position), in a transaction of its own.  Ticks let a consumer
 *		that is far behind take the backlog in windows of bounded size,
 *		each applied in a transaction of its own (see _pull_page).
 */
static void
es_worker_tick(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (SPI_execute("SELECT eventstream._tick()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not record a tick");
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * es_worker_http_try
 *		Start this site's HTTP endpoint if its database has a port; true if
 *		it is listening now.  The first failure is a WARNING (from
 *		es_http_start); the worker tries again later (the port may be taken
 *		by a process that goes away).
 */
static bool
es_worker_http_try(void)
{
	static bool exit_hook = false;
	char	   *site_id;

	if (es_http_port <= 0)
		return false;
	site_id = es_worker_site_id();
	if (site_id == NULL ||
		!es_http_start(es_http_listen_address, es_http_port, site_id, es_worker_expect_waiters))
		return false;
	if (!exit_hook)
		before_shmem_exit(es_worker_http_stop, (Datum) 0);
	exit_hook = true;
	return true;
}

/*
 * es_worker_expect_waiters
 *		A long-poll is about to look for updates and may park: from now on
 *		commits that write logs must set this worker's latch.
 */
void
es_worker_expect_waiters(void)
{
	if (es_my_site != NULL)
	{
		es_my_site->has_waiters = true;
		pg_memory_barrier();
	}
}

/*
 * es_worker_pull_stop
 *		before_shmem_exit callback: drop the pulls in flight.
 */
static void
es_worker_pull_stop(int code, Datum arg)
{
	es_pull_shutdown();
}

/*
 * eventstream_worker_main
 *		Entry point of a site worker; main_arg is its database's OID.
 */
void
eventstream_worker_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	EsSiteWorker *site;
	bool		other_running;
	sigjmp_buf	local_sigjmp_buf;
	MemoryContext loop_cxt;
	WaitEventSet *wait_set;
	int			pull_fd;
	TimestampTz last_prune = GetCurrentTimestamp();
	TimestampTz last_duties = 0;
	volatile int backoff_ms = 0;	/* survives the longjmp of an error */
	bool		http_up;
	volatile TimestampTz http_retry_at = 0;	/* 0: not waiting to retry */
	volatile long http_retry_ms = ES_HTTP_RETRY_MS;
	volatile TimestampTz next_tick_at = 0;
	char	   *dbname;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	/*
	 * Every page served or applied allocates and frees a few megabytes in
	 * large chunks.  With glibc's defaults those are mapped and unmapped
	 * each time (or the heap trimmed), and every page of memory is faulted
	 * in afresh: a seventh of a busy worker's time.  Keep them in the heap
	 * for reuse instead; what the worker holds is still bounded by its
	 * largest page, which the size settings bound.
	 */
#ifdef __GLIBC__
	mallopt(M_MMAP_THRESHOLD, ES_MALLOC_KEEP);
	mallopt(M_TRIM_THRESHOLD, ES_MALLOC_KEEP);
#endif
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_appname("eventstream worker");
	es_in_site_worker = true;

	StartTransactionCommand();
	dbname = MemoryContextStrdup(TopMemoryContext, get_database_name(dboid));
	CommitTransactionCommand();

	/* One worker per database. */
	SpinLockAcquire(&es_workers->mutex);
	site = es_site(dboid, true);
	other_running = (site == NULL || (site->pid != 0 && site->pid != MyProcPid));
	if (!other_running)
	{
		site->pid = MyProcPid;
		site->procno = MyProc->pgprocno;
	}
	SpinLockRelease(&es_workers->mutex);
	if (site == NULL)
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("eventstream cannot run a worker for database \"%s\"", dbname),
				 errdetail("At most %d databases per server can have an eventstream worker.", ES_MAX_SITES)));
	if (other_running)
		proc_exit(0);
	before_shmem_exit(es_worker_detach, ObjectIdGetDatum(dboid));
	es_my_site = site;

	/* This site's HTTP endpoint, when its database has a port. */
	http_up = es_worker_http_try();

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream worker loop",
									 ALLOCSET_DEFAULT_SIZES);

	/*
	 * One wait set for the worker's life: its latch, postmaster death, the
	 * epoll set of its pulls and the HTTP server's epoll descriptor (each
	 * stands for all its sockets).
	 */
	pull_fd = es_pull_init();
	before_shmem_exit(es_worker_pull_stop, (Datum) 0);
	wait_set = CreateWaitEventSet(TopMemoryContext, 4);
	AddWaitEventToSet(wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, pull_fd, NULL, NULL);
	if (http_up)
		AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, es_http_socket(), NULL, NULL);
	else if (es_http_port > 0)
		http_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), http_retry_ms);

	/*
	 * Survive errors: log, abort, back off, carry on (the model is
	 * bgwriter.c).  A FATAL (SIGTERM) still ends the worker.
	 */
	if (sigsetjmp(local_sigjmp_buf, 1) != 0)
	{
		error_context_stack = NULL;
		HOLD_INTERRUPTS();
		EmitErrorReport();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(loop_cxt);
		FlushErrorState();
		MemoryContextReset(loop_cxt);
		RESUME_INTERRUPTS();
		backoff_ms = backoff_ms == 0 ? 1000 : Min(backoff_ms * 2, ES_MAX_BACKOFF_MS);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 backoff_ms, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
	}
	PG_exception_stack = &local_sigjmp_buf;

	for (;;)
	{
		long		timeout = es_prune_interval > 0 ? es_prune_interval * 1000L : ES_LAUNCHER_NAP_MS;
		bool		prune_more = false;
		long		http_timeout;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		MemoryContextSwitchTo(loop_cxt);
		site->recheck = false;
		last_duties = GetCurrentTimestamp();
		if (!es_worker_duties(&last_prune, &prune_more))
		{
			SpinLockAcquire(&es_workers->mutex);
			site->no_extension = true;
			SpinLockRelease(&es_workers->mutex);
			ereport(LOG,
					(errmsg("eventstream worker for database \"%s\" exiting: the extension is not installed",
							dbname)));
			proc_exit(0);
		}
		/* The producers to pull from, as they are now. */
		es_pull_refresh();
		es_pull_start_due();
		MemoryContextReset(loop_cxt);
		backoff_ms = 0;
		if (prune_more)
			timeout = ES_PRUNE_PAUSE_MS;

		/* Wait for the latch, a duty's time, or HTTP traffic. */
		for (;;)
		{
			long		left = timeout -
				(long) TimestampDifferenceMilliseconds(last_duties, GetCurrentTimestamp());
			WaitEvent	events[4];
			bool		latch_set = false;
			int			nevents;
			long		pull_timeout = es_pull_timeout();

			http_timeout = es_http_timeout();
			if (pull_timeout >= 0 && (http_timeout < 0 || pull_timeout < http_timeout))
				http_timeout = pull_timeout;
			if (http_retry_at != 0)
			{
				long		retry = (long) TimestampDifferenceMilliseconds(GetCurrentTimestamp(), http_retry_at);

				if (http_timeout < 0 || retry < http_timeout)
					http_timeout = retry;
			}
			if (site->logs_pending)
			{
				long		tick = (long) TimestampDifferenceMilliseconds(GetCurrentTimestamp(), next_tick_at);

				if (http_timeout < 0 || tick < http_timeout)
					http_timeout = tick;
			}
			if (left < 0)
				left = 0;
			nevents = WaitEventSetWait(wait_set,
									   (http_timeout >= 0 && http_timeout < left) ? http_timeout : left,
									   events, lengthof(events), PG_WAIT_EXTENSION);
			for (int i = 0; i < nevents; i++)
				if (events[i].events & WL_LATCH_SET)
					latch_set = true;
			if (latch_set)
				ResetLatch(MyLatch);
			/* SIGTERM: exit here, not from inside a request handler. */
			CHECK_FOR_INTERRUPTS();
			/*
			 * Logs were committed since the last tick: record one after
			 * ES_TICK_MS, or at once when ES_TICK_LOGS were (the flag and
			 * count are cleared first, so a commit after them asks for the
			 * next tick).  Frequent ticks under load keep the windows of a
			 * consumer far behind within one of its pages.
			 */
			if (site->logs_pending &&
				(GetCurrentTimestamp() >= next_tick_at ||
				 pg_atomic_read_u32(&site->logs_since_tick) >= ES_TICK_LOGS))
			{
				site->logs_pending = false;
				pg_atomic_write_u32(&site->logs_since_tick, 0);
				pg_memory_barrier();
				es_worker_tick();
				next_tick_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ES_TICK_MS);
			}
			/* The port was taken: try again, less and less often. */
			if (http_retry_at != 0 && GetCurrentTimestamp() >= http_retry_at)
			{
				if (es_worker_http_try())
				{
					AddWaitEventToSet(wait_set, WL_SOCKET_READABLE, es_http_socket(), NULL, NULL);
					http_retry_at = 0;
				}
				else
				{
					http_retry_ms = Min(http_retry_ms * 2, ES_HTTP_RETRY_MAX_MS);
					http_retry_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), http_retry_ms);
				}
			}
			/* A commit that wrote logs sets the latch: parked polls re-check. */
			es_http_wake(latch_set);
			es_http_run();
			site->has_waiters = es_http_parked();
			es_pull_run();
			CHECK_FOR_INTERRUPTS();
			if (ConfigReloadPending || site->recheck ||
				TimestampDifferenceExceeds(last_duties, GetCurrentTimestamp(), timeout))
				break;
		}
	}
}
