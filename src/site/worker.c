/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Background workers: the site worker, one per database that has the
 *	  extension.
 *
 * A site worker runs its site: the periodic duties (pruning the update log
 * every eventstream.prune_interval, in steps), the ticks of the update log
 * while logs are written, the site's HTTP endpoint (src/http/server.c) when
 * its database has a port, and the pulls from the producers it consumes
 * from (src/consumer/pull.c), all from one wait loop.  While a restore of
 * its database is under way it only waits for it to end, then takes it
 * over (eventstream._restore_state()).  It survives errors:
 * one that escapes a duty is logged, the transaction is aborted and the
 * worker sleeps with exponential backoff before carrying on.  On SIGHUP
 * it reads postgresql.conf and its database's settings again
 * (es_worker_reload) and moves its HTTP endpoint when they changed it;
 * it exits on SIGTERM.  pg_stat_activity says what it does
 * (es_worker_doing).  It exits by itself when the
 * extension is dropped (DROP EXTENSION wakes it at commit).  The launcher
 * (src/site/launcher.c) starts it and keeps its shared entry; a commit that
 * wrote update logs sets its latch (es_wake_site).
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
#include <stdarg.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_db_role_setting.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "consumer/pull.h"
#include "http/server.h"
#include "site/launcher.h"
#include "site/worker.h"

PGDLLEXPORT void eventstream_worker_main(Datum main_arg);

#define ES_HTTP_RETRY_MS	1000	/* first retry of a taken HTTP port */
#define ES_TICK_MS			1000	/* a tick a second while logs are written, */
#define ES_TICK_LOGS		4000	/* or as soon as this many were committed */
#define ES_HTTP_RETRY_MAX_MS	60000
#define ES_MAX_BACKOFF_MS	60000
#define ES_MALLOC_KEEP		(64 * 1024 * 1024)	/* see eventstream_worker_main */
#define ES_PRUNE_STEP		20000	/* logs pruned at a time, */
#define ES_PRUNE_PAUSE_MS	100		/* with this much serving in between */
#define ES_RESTORE_CHECK_MS	1000	/* whether a restore has ended */

/* A restore of the site's database (see eventstream._restore_state()). */
typedef enum EsRestoreState
{
	ES_RESTORE_NONE,			/* none under way */
	ES_RESTORE_PENDING,			/* under way: no pulls, no pruning */
	ES_RESTORE_ADOPTED			/* just taken over */
} EsRestoreState;

/* GUC eventstream.test_pause_at: see es_test_pause. */
char	   *es_test_pause_at = NULL;

/* Whether this process is a site worker, and its shared entry. */
bool		es_in_site_worker = false;
static EsSiteWorker *es_my_site = NULL;

/* GUC: seconds between two prunes by a site worker (0: never). */
int			es_prune_interval = 60;

/*
 * The HTTP endpoint as the worker last set it up (from the settings of
 * that moment, whether or not it could listen), to tell whether a reload
 * changes it.  In TopMemoryContext.
 */
typedef struct EsHttpConfig
{
	int			port;
	char	   *address;
	char	   *cert_file;
	char	   *key_file;
} EsHttpConfig;

static EsHttpConfig es_http_config;
static bool es_settings_reloaded = false;	/* es_worker_reload ran */

/*
 * The worker's wait set and whether its endpoint listens: globals, not
 * locals of eventstream_worker_main, because a reload replaces them after
 * its sigsetjmp.
 */
static WaitEventSet *es_wait_set = NULL;
static bool es_http_up = false;

/* What the worker does now, as es_worker_doing last said ("": idle). */
static char es_doing[256];

/*
 * es_worker_reload
 *		SIGHUP: re-read postgresql.conf and this database's settings
 *		(ALTER DATABASE/ROLE ... SET), as a new connection would see them.
 *		Called outside any transaction.
 *
 * PostgreSQL applies pg_db_role_setting only when a session starts
 * (process_settings() in postinit.c); a site worker lives as long as the
 * server, so it applies them again here, with the same priorities.  An
 * eventstream setting that came from there and is no longer set would
 * keep its old value: it is first returned to its default, and
 * postgresql.conf and pg_db_role_setting are then applied over it.
 * Whether the HTTP endpoint must move is decided by the caller's loop
 * (es_settings_reloaded).
 */
static void
es_worker_reload(void)
{
	struct config_generic **vars = get_guc_variables();
	int			nvars = GetNumConfigOptions();
	Relation	relsetting;
	Snapshot	snapshot;

	Assert(!IsTransactionState());
	ConfigReloadPending = false;
	for (int i = 0; i < nvars; i++)
	{
		struct config_generic *gconf = vars[i];

		if (strncmp(gconf->name, "eventstream.", strlen("eventstream.")) != 0 ||
			(gconf->flags & GUC_CUSTOM_PLACEHOLDER) != 0 ||
			gconf->source < PGC_S_GLOBAL || gconf->source > PGC_S_DATABASE_USER)
			continue;
		gconf->source = PGC_S_DEFAULT;
		gconf->reset_source = PGC_S_DEFAULT;
		(void) set_config_option(gconf->name, NULL, PGC_SUSET, PGC_S_DEFAULT,
								 GUC_ACTION_SET, true, 0, false);
	}
	ProcessConfigFile(PGC_SIGHUP);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	relsetting = table_open(DbRoleSettingRelationId, AccessShareLock);
	snapshot = RegisterSnapshot(GetCatalogSnapshot(DbRoleSettingRelationId));
	ApplySetting(snapshot, MyDatabaseId, GetSessionUserId(), relsetting, PGC_S_DATABASE_USER);
	ApplySetting(snapshot, InvalidOid, GetSessionUserId(), relsetting, PGC_S_USER);
	ApplySetting(snapshot, MyDatabaseId, InvalidOid, relsetting, PGC_S_DATABASE);
	ApplySetting(snapshot, InvalidOid, InvalidOid, relsetting, PGC_S_GLOBAL);
	UnregisterSnapshot(snapshot);
	table_close(relsetting, AccessShareLock);
	CommitTransactionCommand();
	es_settings_reloaded = true;
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
			if (es_doing[0] != '\0')
				pgstat_report_activity(STATE_RUNNING, psprintf("paused at %s: %s", point, es_doing));
			else
				pgstat_report_activity(STATE_RUNNING, psprintf("paused at %s", point));
			paused = true;
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			es_worker_reload();
	}
	if (paused)
	{
		if (es_doing[0] != '\0')
			pgstat_report_activity(STATE_RUNNING, es_doing);
		else
			pgstat_report_activity(STATE_IDLE, NULL);
	}
}

/*
 * es_worker_doing
 *		Say in pg_stat_activity what the worker does now and for which
 *		producer or consumer ("pulling from <url>", "applying 120 updates
 *		from <url>", ...): the query column of an active backend.  The text
 *		is also what a test pause point adds to "paused at <point>".
 */
void
es_worker_doing(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(es_doing, sizeof(es_doing), fmt, ap);
	va_end(ap);
	pgstat_report_activity(STATE_RUNNING, es_doing);
}

/*
 * es_worker_idle
 *		The worker is done with what es_worker_doing said: idle in
 *		pg_stat_activity (whose query column keeps the last text, as for
 *		any idle backend).
 */
void
es_worker_idle(void)
{
	es_doing[0] = '\0';
	pgstat_report_activity(STATE_IDLE, NULL);
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
 * es_worker_detach
 *		before_shmem_exit callback: forget the exiting site worker.
 */
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
 * es_worker_restore_state
 *		Whether a restore of this database is under way, or was just taken
 *		over (eventstream._restore_state()); ES_RESTORE_NONE where the
 *		extension's version has no such function.  *site_id: the site's
 *		site_id now, which a restore brings back (palloc'd in cxt; NULL
 *		when unknown).  In the caller's transaction.
 */
static EsRestoreState
es_worker_restore_state(char **site_id, MemoryContext cxt)
{
	EsRestoreState result = ES_RESTORE_NONE;

	*site_id = NULL;
	SPI_connect();
	if (SPI_execute("SELECT CASE WHEN to_regprocedure('eventstream._restore_state()') IS NOT NULL"
					" THEN 'check' END", true, 1) == SPI_OK_SELECT &&
		SPI_processed == 1 &&
		SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1) != NULL)
	{
		char	   *state;
		char	   *id;

		if (SPI_execute("SELECT eventstream._restore_state(), (SELECT s.site_id::text FROM eventstream.site s)",
						false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not read the state of a restore");
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		id = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		if (state != NULL && strcmp(state, "pending") == 0)
			result = ES_RESTORE_PENDING;
		else if (state != NULL && strcmp(state, "adopted") == 0)
			result = ES_RESTORE_ADOPTED;
		if (id != NULL)
			*site_id = MemoryContextStrdup(cxt, id);
	}
	SPI_finish();
	return result;
}

/*
 * es_worker_duties
 *		One round of a site worker's periodic duties, in one transaction.
 *		Returns false when the extension is gone (the worker should exit).
 *		Pruning deletes ES_PRUNE_STEP logs at most: *prune_more says more
 *		are due (a large backlog is pruned in steps, so that long-polls and
 *		pulls are not held up for seconds).  *restore says whether a
 *		restore is under way (nothing is pruned then) and *site_id is the
 *		site's site_id (in the caller's memory context).
 */
static bool
es_worker_duties(TimestampTz *last_prune, bool *prune_more, EsRestoreState *restore, char **site_id)
{
	bool		present;
	TimestampTz now = GetCurrentTimestamp();
	MemoryContext cxt = CurrentMemoryContext;

	*prune_more = false;
	*restore = ES_RESTORE_NONE;
	*site_id = NULL;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	present = OidIsValid(get_extension_oid("eventstream", true));
	if (present)
		*restore = es_worker_restore_state(site_id, cxt);
	if (present && *restore != ES_RESTORE_PENDING && es_prune_interval > 0 &&
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
 * es_worker_http_remember
 *		Record the settings the endpoint is set up from now (es_http_config).
 */
static void
es_worker_http_remember(void)
{
	if (es_http_config.address)
		pfree(es_http_config.address);
	if (es_http_config.cert_file)
		pfree(es_http_config.cert_file);
	if (es_http_config.key_file)
		pfree(es_http_config.key_file);
	es_http_config.port = es_http_port;
	es_http_config.address = MemoryContextStrdup(TopMemoryContext, es_http_listen_address);
	es_http_config.cert_file = MemoryContextStrdup(TopMemoryContext, es_http_tls_cert_file);
	es_http_config.key_file = MemoryContextStrdup(TopMemoryContext, es_http_tls_key_file);
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
 * es_worker_wait_set
 *		(Re)build the worker's wait set: its latch, postmaster death, the
 *		epoll set of its pulls and, while it listens, the HTTP server's
 *		epoll descriptor (each stands for all its sockets).  A wait set
 *		cannot drop a descriptor, so a moved endpoint needs a new one.
 */
static void
es_worker_wait_set(int pull_fd)
{
	if (es_wait_set != NULL)
		FreeWaitEventSet(es_wait_set);
	es_wait_set = CreateWaitEventSet(TopMemoryContext, 4);
	AddWaitEventToSet(es_wait_set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(es_wait_set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	AddWaitEventToSet(es_wait_set, WL_SOCKET_READABLE, pull_fd, NULL, NULL);
	if (es_http_up)
		AddWaitEventToSet(es_wait_set, WL_SOCKET_READABLE, es_http_socket(), NULL, NULL);
}

/*
 * es_worker_http_moved
 *		After a reload: whether the endpoint must be set up again, because
 *		its port, address or TLS file names changed, or the TLS files of
 *		the running server hold something else now.
 */
static bool
es_worker_http_moved(void)
{
	if (es_http_port != es_http_config.port ||
		strcmp(es_http_listen_address, es_http_config.address) != 0 ||
		strcmp(es_http_tls_cert_file, es_http_config.cert_file) != 0 ||
		strcmp(es_http_tls_key_file, es_http_config.key_file) != 0)
		return true;
	return es_http_up && es_http_tls_changed();
}

/*
 * es_worker_http_reopen
 *		Move the endpoint of database dbname to the settings of now:
 *		parked long-polls are answered and the server closed
 *		(es_http_close_for_reload), then a new one is started, and one LOG
 *		line says so.  When it cannot listen (es_http_start said why in a
 *		WARNING), *retry_at is set for the usual retries.
 */
static void
es_worker_http_reopen(const char *dbname, int pull_fd, TimestampTz *retry_at, long *retry_ms)
{
	char	   *from;
	char	   *to;

	from = es_http_config.port > 0 ?
		psprintf("%s://%s:%d", es_http_config.cert_file[0] ? "https" : "http",
				 es_http_config.address, es_http_config.port) : pstrdup("none");
	to = es_http_port > 0 ?
		psprintf("%s://%s:%d", es_http_tls_cert_file[0] ? "https" : "http",
				 es_http_listen_address, es_http_port) : pstrdup("none");
	if (es_http_up)
		es_http_close_for_reload();
	es_worker_http_remember();
	es_http_up = es_worker_http_try();
	*retry_ms = ES_HTTP_RETRY_MS;
	*retry_at = (!es_http_up && es_http_port > 0) ?
		TimestampTzPlusMilliseconds(GetCurrentTimestamp(), *retry_ms) : 0;
	es_worker_wait_set(pull_fd);
	if (strcmp(from, to) == 0)
		ereport(LOG,
				(errmsg("eventstream HTTP endpoint of database \"%s\" reopened at %s with its new TLS files%s",
						dbname, to, (es_http_port > 0 && !es_http_up) ? " (not listening yet)" : "")));
	else
		ereport(LOG,
				(errmsg("eventstream HTTP endpoint of database \"%s\" moved from %s to %s%s",
						dbname, from, to,
						(es_http_port > 0 && !es_http_up) ? " (not listening yet)" : "")));
	pfree(from);
	pfree(to);
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
	int			pull_fd;
	TimestampTz last_prune = GetCurrentTimestamp();
	TimestampTz last_duties = 0;
	volatile int backoff_ms = 0;	/* survives the longjmp of an error */
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
	es_worker_http_remember();
	es_http_up = es_worker_http_try();

	loop_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream worker loop",
									 ALLOCSET_DEFAULT_SIZES);

	pull_fd = es_pull_init();
	before_shmem_exit(es_worker_pull_stop, (Datum) 0);
	es_worker_wait_set(pull_fd);
	if (!es_http_up && es_http_port > 0)
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
		EsRestoreState restore;
		char	   *site_id;
		long		http_timeout;

		CHECK_FOR_INTERRUPTS();
		MemoryContextSwitchTo(loop_cxt);
		if (ConfigReloadPending)
			es_worker_reload();
		if (es_settings_reloaded)
		{
			long		retry_ms;
			TimestampTz retry_at;

			es_settings_reloaded = false;
			if (es_worker_http_moved())
			{
				es_worker_http_reopen(dbname, pull_fd, &retry_at, &retry_ms);
				http_retry_at = retry_at;
				http_retry_ms = retry_ms;
			}
		}

		site->recheck = false;
		last_duties = GetCurrentTimestamp();
		if (!es_worker_duties(&last_prune, &prune_more, &restore, &site_id))
		{
			SpinLockAcquire(&es_workers->mutex);
			site->no_extension = true;
			SpinLockRelease(&es_workers->mutex);
			ereport(LOG,
					(errmsg("eventstream worker for database \"%s\" exiting: the extension is not installed",
							dbname)));
			proc_exit(0);
		}
		/*
		 * A restore brings the dumped site's identity back; while one is
		 * under way, nothing is pulled.
		 */
		if (es_http_up && site_id != NULL)
			es_http_set_site_id(site_id);
		/* The producers to pull from, as they are now. */
		if (restore != ES_RESTORE_PENDING)
		{
			es_pull_refresh();
			es_pull_start_due();
		}
		MemoryContextReset(loop_cxt);
		backoff_ms = 0;
		if (prune_more)
			timeout = ES_PRUNE_PAUSE_MS;
		else if (restore == ES_RESTORE_PENDING)
			timeout = ES_RESTORE_CHECK_MS;	/* resume soon after it ends */

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
			nevents = WaitEventSetWait(es_wait_set,
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
				es_http_up = es_worker_http_try();
				if (es_http_up)
				{
					AddWaitEventToSet(es_wait_set, WL_SOCKET_READABLE, es_http_socket(), NULL, NULL);
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
