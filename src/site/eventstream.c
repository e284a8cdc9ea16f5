/*-------------------------------------------------------------------------
 *
 * eventstream.c
 *	  Module entry point: settings, the preload check and the apply origin.
 *
 * _PG_init defines the eventstream.* settings (those of the site worker
 * in es_workers_init) and, while preloading, installs the shared memory
 * hooks (src/site/shmem.c) and registers the launcher
 * (src/site/launcher.c).  The extension requires
 * shared_preload_libraries = 'eventstream' (its background workers can only
 * be registered from there); CREATE EXTENSION calls
 * eventstream._assert_preloaded() first so that a missing preload is a clear
 * error instead of a site that silently never syncs.
 *
 * The apply origin is the site a change being applied came from.  While it
 * is set, the capture trigger stamps every log it writes with it, so the log
 * is never served back to that site (loop prevention) but can still be
 * passed on to others.  It lives only until the end of the transaction.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/eventstream.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "access/xact.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/uuid.h"

#include "eventstream.h"
#include "consumer/client.h"
#include "consumer/failed.h"
#include "consumer/pull.h"
#include "http/server.h"
#include "producer/condition.h"
#include "producer/sandbox.h"
#include "site/launcher.h"
#include "site/shmem.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(eventstream_assert_preloaded);
PG_FUNCTION_INFO_V1(eventstream_set_origin);

/* Whether the library was loaded through shared_preload_libraries. */
static bool es_preloaded = false;

/* Origin stamped on logs written by this transaction, if set. */
bool		es_apply_origin_set = false;
pg_uuid_t	es_apply_origin;

/* GUCs read by SQL only (the HTTP server's are in src/http/server.c). */
static char *es_site_url = NULL;
static int	es_http_max_response_size = 8192;	/* kB, read by _pull_page */

/* GUC: how long an idle consumer holds back pruning of the update log. */
static int	es_retention_period = 7 * 24 * 3600;

static bool es_xact_callback_registered = false;

static void es_xact_callback(XactEvent event, void *arg);

/*
 * _PG_init
 *		Define settings; note whether we are being preloaded.
 */
void
_PG_init(void)
{
	es_preloaded = process_shared_preload_libraries_in_progress;
	es_sandbox_init();
	if (es_preloaded)
	{
		es_shmem_init();
		es_workers_init();
	}

	DefineCustomIntVariable("eventstream.retention_period",
							"How long the update log is kept for a consumer that does not pull.",
							"Logs every consumer has acknowledged are pruned at once; a consumer "
							"that has not pulled for longer than this stops holding logs back and "
							"must re-register.",
							&es_retention_period,
							7 * 24 * 3600, 60, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventstream.http_port",
							"TCP port of this database's HTTP endpoint (0: none).",
							"Set it per database with ALTER DATABASE ... SET; the site's worker "
							"moves its endpoint there on the next reload.",
							&es_http_port,
							0, 0, 65535,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomStringVariable("eventstream.http_listen_address",
							   "IPv4 address the HTTP endpoint listens on.",
							   "A change applies on reload.",
							   &es_http_listen_address,
							   "127.0.0.1",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("eventstream.http_tls_cert_file",
							   "PEM certificate (chain) of the HTTP endpoint; with a key file, it serves HTTPS only.",
							   "Relative paths are relative to the data directory.",
							   &es_http_tls_cert_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("eventstream.http_tls_key_file",
							   "PEM private key of the HTTP endpoint's certificate.",
							   "Relative paths are relative to the data directory.",
							   &es_http_tls_key_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("eventstream.http_max_request_size",
							"Largest request body the HTTP endpoint accepts; larger ones get 413.",
							NULL,
							&es_http_max_request_size,
							1024, 1, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("eventstream.http_max_response_size",
							"Size a page of updates or documents stops growing at.",
							"A page ends before the update or document that would take it past "
							"this size; it always holds at least one, however large.",
							&es_http_max_response_size,
							8192, 64, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomStringVariable("eventstream.site_url",
							   "How other sites reach this one; consumers register under it.",
							   "Empty: http://127.0.0.1:<eventstream.http_port>, or http://<site_id>.invalid "
							   "without a port; registering with a producer on another host without it "
							   "is a WARNING.",
							   &es_site_url,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("eventstream.ca_file",
							   "PEM file of the certificate authorities that producers' certificates "
							   "are checked against (empty: the system's).",
							   NULL,
							   &es_ca_file,
							   "",
							   PGC_SUSET,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
	DefineCustomIntVariable("eventstream.client_max_response_size",
							"Largest response accepted from a producer.",
							NULL,
							&es_client_max_response_size,
							64 * 1024, 64, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventstream.window_memory",
							"Memory a consumer's worker may hold a producer's window in while its pages arrive.",
							"A producer transaction larger than a page arrives in several pages, applied "
							"together after the last one; up to this much they wait in the worker's memory, "
							"beyond it in eventstream.inbox (0: always the inbox).",
							&es_window_memory,
							64 * 1024, 0, 1024 * 1024,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventstream.condition_timeout",
							"Longest a consumer's condition may run for one document (0: no limit).",
							"A condition that runs longer denies the document and records the error.",
							&es_condition_timeout,
							100, 0, INT_MAX,
							PGC_SUSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("eventstream.failed_update_log_limit",
							"WARNING lines written per producer and minute for updates that fail to apply.",
							"Each names the update's sync_log entry and how to resync it; the failures "
							"beyond are counted in one more line.",
							&es_failed_log_limit,
							10, 0, 1000,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);

	MarkGUCPrefixReserved("eventstream");
}

/*
 * eventstream_assert_preloaded
 *		Error out unless the library is in shared_preload_libraries.
 */
Datum
eventstream_assert_preloaded(PG_FUNCTION_ARGS)
{
	if (!es_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream must be loaded via shared_preload_libraries"),
				 errhint("Add eventstream to shared_preload_libraries in postgresql.conf and restart the server.")));
	PG_RETURN_VOID();
}

/*
 * es_xact_callback
 *		Forget the apply origin when the transaction ends, however it ends.
 */
static void
es_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			es_apply_origin_set = false;
			break;
		default:
			break;
	}
}

/*
 * eventstream_set_origin
 *		eventstream._set_origin(origin uuid): stamp the logs written by the
 *		rest of this transaction with origin (NULL: local changes again).
 *
 * Reserved to the apply path and superusers (EXECUTE is revoked from
 * PUBLIC): whoever sets it decides which site never sees these changes.
 */
Datum
eventstream_set_origin(PG_FUNCTION_ARGS)
{
	if (!es_xact_callback_registered)
	{
		RegisterXactCallback(es_xact_callback, NULL);
		es_xact_callback_registered = true;
	}
	if (PG_ARGISNULL(0))
		es_apply_origin_set = false;
	else
	{
		memcpy(&es_apply_origin, PG_GETARG_UUID_P(0), sizeof(pg_uuid_t));
		es_apply_origin_set = true;
	}
	PG_RETURN_VOID();
}
