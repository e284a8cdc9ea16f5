/*-------------------------------------------------------------------------
 *
 * metrics.c
 *	  Prometheus metrics of the site: GET /metrics.
 *
 * The site's endpoint answers GET (or HEAD) /metrics, and the same under
 * ES_API_PREFIX, with the text exposition format 0.0.4, for an API key
 * ("Authorization: token key:secret" or Basic) whose role is a member of
 * eventstream_admin or pg_monitor: 401 with a Basic challenge without a
 * valid key (so that a browser asks for one), 403 for another role.
 *
 * Two kinds of numbers.  The gauges and counters of the producers this
 * site pulls from and of the consumers that pull from it are read from
 * their tables and status views (eventstream.producer, producer_status,
 * consumer_status, update_log) in the request's own transaction, so they
 * are what psql would show.  What the site worker does (HTTP answers by
 * status code, updates served, how long serving and applying a page
 * take) is counted in this process by the hooks below: the worker is the
 * one process that serves, pulls, applies and answers /metrics, so plain
 * static counters need no lock and no shared memory.  They start at zero
 * when the worker starts (Prometheus takes a counter that goes back to
 * zero as a reset); sync_now() in a session is not counted there.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/metrics.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <microhttpd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eventstream.h"
#include "http/api.h"
#include "http/metrics.h"
#include "site/wire.h"

#define ES_METRICS_CONTENT_TYPE	"text/plain; version=0.0.4; charset=utf-8"

/* Upper bounds of the duration histograms' buckets, in seconds. */
static const double es_buckets[] = {
	0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10
};
#define ES_NBUCKETS lengthof(es_buckets)

/* A histogram: observations per bucket (not cumulative), their sum and count. */
typedef struct EsHistogram
{
	uint64		bucket[ES_NBUCKETS];
	double		sum;
	uint64		count;
} EsHistogram;

/* HTTP answers by status code: the codes seen, in the order first seen. */
#define ES_MAX_CODES 32
static unsigned int es_codes[ES_MAX_CODES];
static uint64 es_code_count[ES_MAX_CODES];
static int	es_ncodes = 0;

static uint64 es_updates_served = 0;
static EsHistogram es_serve_hist;
static EsHistogram es_apply_hist;

/* The states producer_status says, each a series of the state gauge. */
static const char *const es_states[] = {
	"starting", "streaming", "failing", "stalled", "disabled"
};

/*
 * es_metrics_observe
 *		Count one observation of started..now in histogram h.
 */
static void
es_metrics_observe(EsHistogram *h, TimestampTz started)
{
	double		secs = (double) (GetCurrentTimestamp() - started) / USECS_PER_SEC;

	if (secs < 0)
		secs = 0;
	for (int i = 0; i < (int) ES_NBUCKETS; i++)
		if (secs <= es_buckets[i])
		{
			h->bucket[i]++;
			break;
		}
	h->sum += secs;
	h->count++;
}

/*
 * es_metrics_count_request
 *		Count an HTTP answer with this status code.  Codes beyond the
 *		ES_MAX_CODES first ones seen are not counted.
 */
void
es_metrics_count_request(unsigned int status)
{
	for (int i = 0; i < es_ncodes; i++)
		if (es_codes[i] == status)
		{
			es_code_count[i]++;
			return;
		}
	if (es_ncodes < ES_MAX_CODES)
	{
		es_codes[es_ncodes] = status;
		es_code_count[es_ncodes++] = 1;
	}
}

/*
 * es_metrics_served
 *		Count a page of updates served to a consumer (updates of them),
 *		whose serving started at started.
 */
void
es_metrics_served(int64 updates, TimestampTz started)
{
	if (updates > 0)
		es_updates_served += updates;
	es_metrics_observe(&es_serve_hist, started);
}

/*
 * es_metrics_applied
 *		Count a page (or a window of pages) from a producer applied, whose
 *		apply started at started.
 */
void
es_metrics_applied(TimestampTz started)
{
	es_metrics_observe(&es_apply_hist, started);
}

/*
 * es_metrics_path
 *		Whether path (as the client sent it, without its query string) is
 *		the metrics endpoint.
 */
bool
es_metrics_path(const char *path)
{
	return strcmp(path, "/metrics") == 0 || strcmp(path, ES_API_PREFIX "metrics") == 0;
}

/*
 * es_metrics_label
 *		Append name="value", the backslashes, double quotes and line feeds
 *		of value escaped as the text format wants.
 */
static void
es_metrics_label(StringInfo buf, const char *name, const char *value)
{
	appendStringInfo(buf, "%s=\"", name);
	for (const char *s = value; *s; s++)
	{
		if (*s == '\\')
			appendStringInfoString(buf, "\\\\");
		else if (*s == '"')
			appendStringInfoString(buf, "\\\"");
		else if (*s == '\n')
			appendStringInfoString(buf, "\\n");
		else
			appendStringInfoChar(buf, *s);
	}
	appendStringInfoChar(buf, '"');
}

/*
 * es_metrics_head
 *		Append a metric family's HELP and TYPE lines (help has nothing to
 *		escape).
 */
static void
es_metrics_head(StringInfo buf, const char *name, const char *type, const char *help)
{
	appendStringInfo(buf, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/*
 * es_metrics_sample
 *		Append one sample of name with one label: value is the text of a
 *		number as SQL gave it; a NULL value (never happened) appends
 *		nothing.
 */
static void
es_metrics_sample(StringInfo buf, const char *name, const char *label,
				  const char *label_value, const char *value)
{
	if (value == NULL)
		return;
	appendStringInfo(buf, "%s{", name);
	es_metrics_label(buf, label, label_value);
	appendStringInfo(buf, "} %s\n", value);
}

/*
 * es_metrics_histogram
 *		Append histogram h as name's _bucket (cumulative, up to +Inf), _sum
 *		and _count.
 */
static void
es_metrics_histogram(StringInfo buf, const char *name, const char *help, EsHistogram *h)
{
	uint64		cumulative = 0;

	es_metrics_head(buf, name, "histogram", help);
	for (int i = 0; i < (int) ES_NBUCKETS; i++)
	{
		cumulative += h->bucket[i];
		appendStringInfo(buf, "%s_bucket{le=\"%g\"} " UINT64_FORMAT "\n",
						 name, es_buckets[i], cumulative);
	}
	appendStringInfo(buf, "%s_bucket{le=\"+Inf\"} " UINT64_FORMAT "\n", name, h->count);
	appendStringInfo(buf, "%s_sum %.6f\n", name, h->sum);
	appendStringInfo(buf, "%s_count " UINT64_FORMAT "\n", name, h->count);
}

/*
 * es_metrics_column
 *		Append the family of column col (1-based) of the rows SPI holds,
 *		one sample per row labelled by column 1.
 */
static void
es_metrics_column(StringInfo buf, const char *name, const char *type, const char *help,
				  const char *label, int col)
{
	es_metrics_head(buf, name, type, help);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		es_metrics_sample(buf, name, label, SPI_getvalue(row, desc, 1),
						  SPI_getvalue(row, desc, col));
	}
}

/*
 * es_metrics_text
 *		The metrics, in the text format, in the database encoding (the
 *		caller converts it to UTF-8).  In the request's transaction,
 *		connected to SPI.
 */
static char *
es_metrics_text(void)
{
	StringInfoData buf;
	char	   *rows;

	initStringInfo(&buf);

	/* The producers this site pulls from. */
	if (SPI_execute("SELECT s.producer_url, s.state,"
					"       extract(epoch FROM s.lag)::numeric(20,3)::text,"
					"       p.synced_count::text, p.failed_total::text, s.failed_now::text,"
					"       extract(epoch FROM s.last_success_at)::numeric(20,3)::text,"
					"       s.updates_received_not_applied::text"
					"  FROM eventstream.producer_status s"
					"  JOIN eventstream.producer p ON p.producer_url = s.producer_url"
					" ORDER BY s.producer_url", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read producer_status");
	es_metrics_column(&buf, "eventstream_producer_lag_seconds", "gauge",
					  "How long updates of this producer may have waited unseen or unapplied (producer_status.lag).",
					  "producer", 3);
	es_metrics_column(&buf, "eventstream_producer_updates_applied_total", "counter",
					  "Updates from this producer applied (producer.synced_count; a successful resync adds one).",
					  "producer", 4);
	es_metrics_column(&buf, "eventstream_producer_updates_failed_total", "counter",
					  "Updates from this producer whose apply failed (producer.failed_total; a resync does not take one back).",
					  "producer", 5);
	es_metrics_column(&buf, "eventstream_producer_updates_failed", "gauge",
					  "Sync log entries of this producer that are Failed now (producer_status.failed_now).",
					  "producer", 6);
	es_metrics_column(&buf, "eventstream_producer_last_success_timestamp_seconds", "gauge",
					  "When a pull from this producer last succeeded, in Unix seconds (no sample before the first).",
					  "producer", 7);
	es_metrics_column(&buf, "eventstream_producer_updates_received_not_applied", "gauge",
					  "Updates from this producer received and waiting in the inbox (producer_status.updates_received_not_applied).",
					  "producer", 8);
	es_metrics_head(&buf, "eventstream_producer_state", "gauge",
					"The producer's state (producer_status.state): 1 for the current one, 0 for the others.");
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	row = SPI_tuptable->vals[r];
		char	   *url = SPI_getvalue(row, SPI_tuptable->tupdesc, 1);
		char	   *state = SPI_getvalue(row, SPI_tuptable->tupdesc, 2);
		bool		known = false;

		for (int i = 0; i < (int) lengthof(es_states); i++)
		{
			known |= strcmp(state, es_states[i]) == 0;
			appendStringInfoString(&buf, "eventstream_producer_state{");
			es_metrics_label(&buf, "producer", url);
			appendStringInfoChar(&buf, ',');
			es_metrics_label(&buf, "state", es_states[i]);
			appendStringInfo(&buf, "} %d\n", strcmp(state, es_states[i]) == 0);
		}
		if (!known)
		{
			appendStringInfoString(&buf, "eventstream_producer_state{");
			es_metrics_label(&buf, "producer", url);
			appendStringInfoChar(&buf, ',');
			es_metrics_label(&buf, "state", state);
			appendStringInfoString(&buf, "} 1\n");
		}
	}

	/* The consumers that pull from this site. */
	if (SPI_execute("SELECT c.consumer_url, c.updates_waiting::text,"
					"       extract(epoch FROM c.cursor_age)::numeric(20,3)::text,"
					"       extract(epoch FROM c.last_pull_at)::numeric(20,3)::text"
					"  FROM eventstream.consumer_status c"
					" ORDER BY c.consumer_url", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read consumer_status");
	es_metrics_column(&buf, "eventstream_consumer_updates_waiting", "gauge",
					  "Updates waiting for this consumer (consumer_status.updates_waiting: an upper bound when conditions withhold some).",
					  "consumer", 2);
	es_metrics_column(&buf, "eventstream_consumer_cursor_age_seconds", "gauge",
					  "Age of the cursor this consumer last acknowledged (consumer_status.cursor_age; no sample before the first).",
					  "consumer", 3);
	es_metrics_column(&buf, "eventstream_consumer_last_pull_timestamp_seconds", "gauge",
					  "When this consumer last pulled, in Unix seconds (no sample before the first).",
					  "consumer", 4);

	/* The update log. */
	if (SPI_execute("SELECT count(*)::text FROM eventstream.update_log", true, 0) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not count the update log");
	rows = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	es_metrics_head(&buf, "eventstream_update_log_rows", "gauge",
					"Rows of the update log (eventstream.update_log), pruned once every consumer has them.");
	appendStringInfo(&buf, "eventstream_update_log_rows %s\n", rows);

	/* What this site worker did since it started. */
	es_metrics_head(&buf, "eventstream_updates_served_total", "counter",
					"Updates served to consumers in pages by this site worker since it started.");
	appendStringInfo(&buf, "eventstream_updates_served_total " UINT64_FORMAT "\n", es_updates_served);
	es_metrics_head(&buf, "eventstream_http_requests_total", "counter",
					"HTTP requests this site worker answered since it started, by status code.");
	for (int i = 0; i < es_ncodes; i++)
		appendStringInfo(&buf, "eventstream_http_requests_total{code=\"%u\"} " UINT64_FORMAT "\n",
						 es_codes[i], es_code_count[i]);
	es_metrics_histogram(&buf, "eventstream_serve_duration_seconds",
						 "Time this site worker took to make a page of updates for a consumer.",
						 &es_serve_hist);
	es_metrics_histogram(&buf, "eventstream_apply_duration_seconds",
						 "Time this site worker took to apply a page (or a window of pages) from a producer.",
						 &es_apply_hist);
	return buf.data;
}

/*
 * es_metrics_status_for
 *		HTTP status for an error raised while answering /metrics.
 */
static unsigned int
es_metrics_status_for(int sqlerrcode)
{
	if (sqlerrcode == ERRCODE_CANNOT_CONNECT_NOW)	/* the site is being restored */
		return MHD_HTTP_SERVICE_UNAVAILABLE;
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_DATA_EXCEPTION:	/* credentials that are not UTF-8 */
		case ERRCODE_INVALID_TEXT_REPRESENTATION:
			return MHD_HTTP_BAD_REQUEST;
		default:
			return MHD_HTTP_INTERNAL_SERVER_ERROR;
	}
}

/*
 * es_metrics_reply
 *		Queue the answer (body copied) and count it.
 */
static enum MHD_Result
es_metrics_reply(struct MHD_Connection *conn, unsigned int status, const char *body)
{
	struct MHD_Response *resp;
	enum MHD_Result ret;

	resp = MHD_create_response_from_buffer(strlen(body), (void *) body, MHD_RESPMEM_MUST_COPY);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, "Content-Type",
							status == MHD_HTTP_OK ? ES_METRICS_CONTENT_TYPE : "text/plain; charset=utf-8");
	MHD_add_response_header(resp, ES_HEADER_PROTOCOL, ES_PROTOCOL);
	if (status == MHD_HTTP_UNAUTHORIZED)
		MHD_add_response_header(resp, "WWW-Authenticate", "Basic realm=\"eventstream\"");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(resp, "Allow", "GET, HEAD");
	es_metrics_count_request(status);
	ret = MHD_queue_response(conn, status, resp);
	MHD_destroy_response(resp);
	return ret;
}

/*
 * es_metrics_serve
 *		Answer a request for the metrics endpoint (es_metrics_path): check
 *		the caller's key and role, and read the metrics, in a transaction of
 *		its own.  Returns libmicrohttpd's enum MHD_Result.
 *
 * Called from the server's access handler, i.e. from the worker's wait
 * loop with no transaction open.  Any ERROR is caught here and becomes a
 * plain text answer: nothing longjmps through libmicrohttpd.
 */
int
es_metrics_serve(struct MHD_Connection *conn, const char *method)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext cxt;
	volatile unsigned int status = MHD_HTTP_OK;
	char	   *volatile body = NULL;
	enum MHD_Result ret;

	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return es_metrics_reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "Use GET.\n");

	cxt = AllocSetContextCreate(TopMemoryContext, "eventstream metrics", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		char	   *key;
		char	   *secret;
		char	   *allowed = NULL;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		if (es_http_credentials(MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization"),
								&key, &secret))
		{
			Oid			types[2] = {TEXTOID, TEXTOID};
			Datum		values[2];

			values[0] = CStringGetTextDatum(pg_any_to_server(key, strlen(key), PG_UTF8));
			values[1] = CStringGetTextDatum(pg_any_to_server(secret, strlen(secret), PG_UTF8));

			/*
			 * eventstream_admin is made by the extension: it may be missing
			 * only from a database where the extension is not at its
			 * newest version yet.
			 */
			if (SPI_execute_with_args("SELECT (pg_has_role(r.k, 'pg_monitor', 'MEMBER')"
									  "        OR CASE WHEN to_regrole('eventstream_admin') IS NULL THEN false"
									  "                ELSE pg_has_role(r.k, 'eventstream_admin', 'MEMBER') END)::text"
									  "  FROM (SELECT eventstream._check_api_key($1, $2)::oid AS k) r"
									  " WHERE r.k IS NOT NULL",
									  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
				elog(ERROR, "could not check the API key");
			if (SPI_processed == 1)
				allowed = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
		}
		if (allowed == NULL)
		{
			status = MHD_HTTP_UNAUTHORIZED;
			body = "A valid API key is required.\n";
		}
		else if (strcmp(allowed, "true") != 0)
		{
			status = MHD_HTTP_FORBIDDEN;
			body = "The API key's role must be a member of eventstream_admin or pg_monitor.\n";
		}
		else
		{
			char	   *text = es_metrics_text();

			body = es_wire_from_server(text, strlen(text), NULL);
		}
		MemoryContextSwitchTo(cxt);
		body = pstrdup(body);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		status = es_metrics_status_for(edata->sqlerrcode);
		body = psprintf("%s\n", es_wire_from_server(edata->message, strlen(edata->message), NULL));
		FreeErrorData(edata);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(callercxt);
	ret = es_metrics_reply(conn, status, body);
	MemoryContextDelete(cxt);
	return ret;
}
