/*-------------------------------------------------------------------------
 *
 * pull_page.c
 *	  What becomes of a page a producer answers with.
 *
 * A page received is parsed once into jsonb (es_pull_parse).  The
 * documents its updates refer to that are not here yet are fetched from
 * the producer, in rounds, before it is applied (es_pull_deps_round).  A
 * page of a window that is not the window's last is held in memory
 * (es_pull_hold); the window is applied with its last page, in one
 * transaction of its own (es_pull_apply), which also stores the next
 * cursor.  es_pull_finish records the outcome and lets the producer's next
 * request go.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pull_page.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <curl/curl.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/numeric.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"

#include "consumer/client.h"
#include "consumer/pagejson.h"
#include "consumer/pull.h"
#include "consumer/pull_internal.h"
#include "http/metrics.h"
#include "site/wire.h"
#include "site/worker.h"

int			es_window_memory = 64 * 1024;	/* kB */

/* A page held in memory: its updates and the documents fetched for it. */
typedef struct EsHeld
{
	Jsonb	   *updates;
	char	   *deps;
} EsHeld;

#define ES_MAX_FETCH_ROUNDS	10

static SPIPlanPtr es_apply_plan = NULL; /* es_pull_apply's statement, kept */

/*
 * es_pull_drop_body
 *		Forget the answer a producer holds: its text, its parsed form and
 *		the dependencies fetched for it.
 */
void
es_pull_drop_body(EsProducer *p)
{
	free(p->body);
	p->body = NULL;
	free(p->deps);
	p->deps = NULL;
	p->page = NULL;
	if (p->page_cxt)
		MemoryContextReset(p->page_cxt);
}

/*
 * es_pull_parse
 *		Parse the answer a producer holds into jsonb, once: the look-up of
 *		missing documents and the apply both take it as it is, instead of
 *		each parsing the text again (a page of 1000 updates takes several
 *		milliseconds to parse).  Outside any transaction: jsonb_in needs no
 *		catalog access.  Returns NULL, or why the body is not JSON
 *		(palloc'd in the caller's context).
 */
char *
es_pull_parse(EsProducer *p)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile error = NULL;

	if (p->page_cxt == NULL)
		p->page_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream page",
											ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(p->page_cxt);
	p->page = NULL;
	PG_TRY();
	{
		/*
		 * Reading builds a tree of the whole page first, several times the
		 * size of the result: only the result is kept.  es_read_page
		 * bounds it (a page of too many values is refused) and says what
		 * is wrong with text that is not JSON.
		 */
		MemoryContext parse_cxt = AllocSetContextCreate(p->page_cxt, "eventstream page parse",
														ALLOCSET_DEFAULT_SIZES);
		Jsonb	   *parsed;

		MemoryContextSwitchTo(parse_cxt);
		parsed = es_read_page(p->body, strlen(p->body), es_page_budget(), true);
		p->page = MemoryContextAlloc(p->page_cxt, VARSIZE(parsed));
		memcpy(p->page, parsed, VARSIZE(parsed));
		MemoryContextSwitchTo(cxt);
		MemoryContextDelete(parse_cxt);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		error = psprintf("could not read the answer from %s: %s", p->url, edata->message);
		FreeErrorData(edata);
		MemoryContextReset(p->page_cxt);
		p->page = NULL;
	}
	PG_END_TRY();
	return error;
}

/*
 * es_pull_drop_held
 *		Forget the pages held for a window (they are pulled again from the
 *		stored cursor, which they never moved).
 */
void
es_pull_drop_held(EsProducer *p)
{
	if (p->held_cxt)
		MemoryContextReset(p->held_cxt);
	p->held = NIL;
	p->held_bytes = 0;
	free(p->held_path);
	p->held_path = NULL;
}

/*
 * es_pull_hold
 *		Keep the page just received in memory instead of applying it, when
 *		it is a page of a window that is not the window's last: the window
 *		is applied in one transaction after its last page (es_pull_apply),
 *		as eventstream.inbox would have it applied, without writing the
 *		pages there and reading them back.  Nothing is stored meanwhile:
 *		the stored cursor stays before the window (held_path), every
 *		request acknowledges only that (ack=), and a failure, a crash or
 *		anything that moves the cursor drops the pages held, which are then
 *		pulled again.  Only while they fit in eventstream.window_memory and
 *		the producer takes ack=; otherwise the pages go to the inbox (the
 *		held ones first).  Returns whether the page was held, having set
 *		p->path to what to ask for next and *more.
 */
static bool
es_pull_hold(EsProducer *p, bool *more)
{
	JsonbValue *complete = es_pull_page_field(p, "complete");
	JsonbValue *page_more = es_pull_page_field(p, "more");
	JsonbValue *acks = es_pull_page_field(p, "acks");
	JsonbValue *cursor = es_pull_page_field(p, "cursor");
	JsonbValue *updates = es_pull_page_field(p, "updates");
	char	   *next;
	MemoryContext old;
	EsHeld	   *h;

	if (es_window_memory <= 0 || strncmp(p->sent_path ? p->sent_path : "", "updates?", 8) != 0 ||
		complete == NULL || complete->type != jbvBool || complete->val.boolean ||
		page_more == NULL || page_more->type != jbvBool || !page_more->val.boolean ||
		acks == NULL || acks->type != jbvBool || !acks->val.boolean ||
		cursor == NULL || cursor->type != jbvString ||
		updates == NULL || updates->type != jbvBinary || !JsonContainerIsArray(updates->val.binary.data))
		return false;
	if ((p->held_bytes + updates->val.binary.len) / 1024 > (Size) es_window_memory)
		return false;
	next = es_path_after(p->sent_path, cursor->val.string.val, cursor->val.string.len);
	if (next == NULL)
		return false;
	if (p->held == NIL)
		es_set_str(&p->held_path, p->sent_path);
	if (p->held_cxt == NULL)
		p->held_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream held pages",
											ALLOCSET_DEFAULT_SIZES);
	old = MemoryContextSwitchTo(p->held_cxt);
	h = palloc(sizeof(EsHeld));
	h->updates = JsonbValueToJsonb(updates);
	h->deps = pstrdup(p->deps ? p->deps : "[]");
	p->held = lappend(p->held, h);
	MemoryContextSwitchTo(old);
	p->held_bytes += updates->val.binary.len;
	es_set_str(&p->path, next);
	*more = true;
	return true;
}

/*
 * es_pull_array_size
 *		How many elements v (a field of a page) has when it is an array.
 */
static int
es_pull_array_size(JsonbValue *v)
{
	if (v == NULL || v->type != jbvBinary || !JsonContainerIsArray(v->val.binary.data))
		return 0;
	return JsonContainerSize(v->val.binary.data);
}

/*
 * es_pull_snapshot_table
 *		The table a snapshot request's path names ("snapshot/<table>?..."),
 *		percent-decoded and palloc'd; NULL for any other path.
 */
static char *
es_pull_snapshot_table(const char *path)
{
	StringInfoData buf;

	if (path == NULL || strncmp(path, "snapshot/", 9) != 0)
		return NULL;
	initStringInfo(&buf);
	for (path += 9; *path != '\0' && *path != '?'; path++)
	{
		if (path[0] == '%' && isxdigit((unsigned char) path[1]) && isxdigit((unsigned char) path[2]))
		{
			char		hex[3] = {path[1], path[2], '\0'};

			appendStringInfoChar(&buf, (char) strtol(hex, NULL, 16));
			path += 2;
		}
		else
			appendStringInfoChar(&buf, *path);
	}
	return buf.data;
}

/*
 * es_pull_say_applying
 *		Say in pg_stat_activity what the apply of the page held is about to
 *		do: copy rows of a table (with the rows copied once it is applied,
 *		and the producer's estimate of the table's rows), or apply updates.
 */
static void
es_pull_say_applying(EsProducer *p)
{
	const char *path = p->held ? p->held_path : p->sent_path;
	char	   *table = es_pull_snapshot_table(path);

	if (table != NULL)
	{
		int			docs = es_pull_array_size(es_pull_page_field(p, "documents"));
		JsonbValue *estimate = es_pull_page_field(p, "estimate");
		int64		done = docs;

		/* Rows of the earlier pages of this copy (it starts without after=). */
		if (strstr(path, "&after=") != NULL && p->copied_table != NULL &&
			strcmp(p->copied_table, table) == 0)
			done += p->copied_rows;
		if (estimate != NULL && estimate->type == jbvNumeric)
			es_worker_doing("copying %s from %s (" INT64_FORMAT " of ~%s rows)", table, p->url, done,
							DatumGetCString(DirectFunctionCall1(numeric_out,
																NumericGetDatum(estimate->val.numeric))));
		else
			es_worker_doing("copying %s from %s (" INT64_FORMAT " rows)", table, p->url, done);
		pfree(table);
	}
	else
	{
		int			n = es_pull_array_size(es_pull_page_field(p, "updates"));
		ListCell   *lc;

		foreach(lc, p->held)
		{
			EsHeld	   *h = lfirst(lc);

			if (JB_ROOT_IS_ARRAY(h->updates) && !JB_ROOT_IS_SCALAR(h->updates))
				n += JB_ROOT_COUNT(h->updates);
		}
		es_worker_doing("applying %d updates from %s", n, p->url);
	}
}

/*
 * es_pull_record_progress
 *		Store the progress the page just applied tells of
 *		(eventstream._record_progress: rows copied by an initial sync and
 *		the producer's estimate of them, or the updates waiting after a
 *		page), and keep the rows copied for what pg_stat_activity says of
 *		the next page.  url, path and page are the apply's text, text and
 *		jsonb arguments; in its transaction, connected to SPI.  Nothing is
 *		recorded where the extension's version has no such function.
 */
static void
es_pull_record_progress(EsProducer *p, Datum url, Datum path, Datum page)
{
	Oid			types[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		values[3] = {url, path, page};
	char	   *table;
	bool		isnull;
	Datum		d;

	if (SPI_execute("SELECT to_regprocedure('eventstream._record_progress(text, text, jsonb)') IS NOT NULL",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1 || es_spi_int(1, 0) == 0)
		return;
	if (SPI_execute_with_args("SELECT eventstream._record_progress($1, $2, $3)",
							  3, types, values, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not record the progress of a pull");
	table = es_pull_snapshot_table(TextDatumGetCString(path));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (table != NULL && !isnull)
	{
		p->copied_rows = DatumGetInt64(d);
		es_set_str(&p->copied_table, table);
	}
}

/*
 * es_pull_apply
 *		Apply a page (the response body) in a transaction of its own.
 *		Returns NULL on success, or the error's message (palloc'd in the
 *		caller's context).  On success, takes what to ask for next and sets
 *		*more when it should be asked at once (no long-poll).
 */
static char *
es_pull_apply(EsProducer *p, bool *more)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *volatile error = NULL;
	TimestampTz started = GetCurrentTimestamp();

	if (es_pull_hold(p, more))
	{
		es_test_pause("held");
		return NULL;
	}
	es_pull_say_applying(p);
	es_test_pause("before-apply");
	PG_TRY();
	{
		Oid			argtypes[4] = {TEXTOID, TEXTOID, JSONBOID, TEXTOID};
		Datum		values[4];
		bool		stale = false;
		ListCell   *lc;

		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		PushActiveSnapshot(GetTransactionSnapshot());
		SPI_connect();
		values[0] = CStringGetTextDatum(p->url);

		/*
		 * The pages held for this window first (es_pull_hold), with the
		 * table statuses (and key columns) its last page gives mirrored
		 * first.  A table rejected while the window was on its way still
		 * gets its updates applied: the producer served them because they
		 * were written before the rejection.
		 */
		if (p->held != NIL)
		{
			JsonbValue *tables = es_pull_page_field(p, "tables");
			JsonbValue *keys = es_pull_page_field(p, "keys");

			if (tables != NULL && tables->type == jbvBinary)
			{
				Oid			mirror_types[3] = {TEXTOID, JSONBOID, JSONBOID};
				Datum		mirror_values[3];
				char		mirror_nulls[3] = {' ', ' ', ' '};

				mirror_values[0] = values[0];
				mirror_values[1] = JsonbPGetDatum(JsonbValueToJsonb(tables));
				if (keys != NULL && keys->type == jbvBinary)
					mirror_values[2] = JsonbPGetDatum(JsonbValueToJsonb(keys));
				else
					mirror_nulls[2] = 'n';
				if (SPI_execute_with_args("SELECT eventstream._mirror_statuses($1, $2, $3)",
										  3, mirror_types, mirror_values, mirror_nulls, false, 1) != SPI_OK_SELECT)
					elog(ERROR, "could not mirror the statuses of a producer's tables");
			}
		}
		foreach(lc, p->held)
		{
			EsHeld	   *h = lfirst(lc);
			Datum		held_values[4];

			held_values[0] = values[0];
			held_values[1] = CStringGetTextDatum(p->held_path);
			held_values[2] = JsonbPGetDatum(h->updates);
			held_values[3] = CStringGetTextDatum(h->deps);
			if (SPI_execute_with_args("SELECT eventstream._apply_held($1, $2, $3, $4::jsonb)",
									  4, argtypes, held_values, NULL, false, 1) != SPI_OK_SELECT ||
				SPI_processed != 1)
				elog(ERROR, "could not apply a page held");
			if (es_spi_int(1, -1) == -1)
			{
				/* Someone else moved the cursor on: nothing was done. */
				stale = true;
				break;
			}
		}
		if (stale)
		{
			if (SPI_execute_with_args("SELECT r.path FROM eventstream._next_request($1) r",
									  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT ||
				SPI_processed != 1)
				elog(ERROR, "could not read what to ask for next");
			es_set_str(&p->path, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
			*more = true;
			SPI_finish();
			PopActiveSnapshot();
			CommitTransactionCommand();
			es_pull_drop_held(p);
			es_worker_idle();
			return NULL;
		}
		values[1] = CStringGetTextDatum(p->held ? p->held_path : p->sent_path);
		values[2] = JsonbPGetDatum(p->page);	/* parsed once, by es_pull_parse */
		values[3] = CStringGetTextDatum(p->deps ? p->deps : "[]");

		/*
		 * A kept generic plan: a one-off plan would fold the page into a
		 * constant, copying it (megabytes) for nothing.
		 */
		if (es_apply_plan == NULL)
		{
			SPIPlanPtr	plan = SPI_prepare_cursor("SELECT r.next_path, r.more, r.n"
												  "  FROM eventstream._apply_response($1, $2, $3, $4::jsonb) r",
												  4, argtypes, CURSOR_OPT_GENERIC_PLAN);

			if (plan == NULL || SPI_keepplan(plan) != 0)
				elog(ERROR, "could not prepare the apply of a page: %s", SPI_result_code_string(SPI_result));
			es_apply_plan = plan;
		}
		if (SPI_execute_plan(es_apply_plan, values, NULL, false, 1) != SPI_OK_SELECT ||
			SPI_processed != 1)
			elog(ERROR, "could not apply a page");

		/*
		 * Both are null when the producer was removed meanwhile: nothing
		 * more to ask it (the next refresh forgets it).
		 */
		es_set_str(&p->path, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1));
		*more = es_spi_int(2, 0) != 0;
		if (es_spi_int(3, -1) >= 0)
			es_pull_record_progress(p, values[0], values[1], values[2]);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		es_metrics_applied(started);
		es_pull_drop_held(p);
		pgstat_report_stat(false);
		es_worker_idle();
	}
	PG_CATCH();
	{
		error = es_pull_caught(cxt, "could not apply updates from", p->url);
		es_worker_idle();
	}
	PG_END_TRY();
	return error;
}

/*
 * es_pull_finish
 *		Apply the answer a producer is holding (with the dependencies
 *		fetched for it), or record why not, and let its next request go.
 */
void
es_pull_finish(EsProducer *p, char *error)
{
	bool		more = false;

	if (error == NULL)
	{
		error = es_pull_apply(p, &more);
		if (error != NULL)
			p->sent_ack = false;	/* the apply failed, not the request */
	}
	es_pull_drop_body(p);
	if (p->pre_easy != NULL)
	{
		/*
		 * The next page, asked for meanwhile, answers the request the
		 * apply says comes next: it becomes that request (handed to
		 * es_pull_done by es_pull_run if it finished already).  Otherwise
		 * (an error, or something else moved the cursor) it is dropped.
		 *
		 * A long-poll still unanswered is dropped too, and sent again by
		 * es_pull_start_due: it acknowledges only what was stored before
		 * this apply (ack=), and parked on the producer it would tell no
		 * more until it is answered, up to ES_LONGPOLL_S later -- so long
		 * the producer would count everything just applied as waiting
		 * for this site.  Sent again, its cursor acknowledges the apply.
		 */
		if (error == NULL && p->path != NULL && strcmp(p->path, p->pre_path) == 0 &&
			(p->pre_state == ES_PRE_DONE || !p->pre_wait))
		{
			if (p->pre_state == ES_PRE_DONE)
			{
				p->pre_code_taken = p->pre_code;
				es_pull_take_prefetch(p);
				p->pre_state = ES_PRE_READY;
			}
			else
				p->pre_state = ES_PRE_TAKEN;
		}
		else
			es_pull_drop_prefetch(p);
	}
	if (error == NULL)
	{
		p->drained = !more;
		p->backoff_ms = 0;
		p->next_attempt = 0;
	}
	else
		es_pull_failed(p, error);
}

/*
 * es_pull_missing
 *		The documents the held answer refers to that are not here yet
 *		(eventstream._missing_for), as a list of palloc'd pairs: the want
 *		(a JSON object) and its path under the API; in a read-only
 *		transaction of its own.
 */
static List *
es_pull_missing(EsProducer *p)
{
	List	   *result = NIL;
	Oid			argtypes[4] = {TEXTOID, TEXTOID, TEXTOID, BOOLOID};
	Datum		values[4];
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	values[0] = CStringGetTextDatum(p->url);
	argtypes[1] = JSONBOID;
	values[1] = JsonbPGetDatum(p->page);	/* parsed once, by es_pull_parse */
	values[2] = CStringGetTextDatum(p->deps ? p->deps : "[]");
	values[3] = BoolGetDatum(p->held != NIL);	/* earlier pages not applied yet */
	if (SPI_execute_with_args("SELECT w::text, w->>'path'"
							  "  FROM jsonb_array_elements(eventstream._missing_for($1, $2::jsonb, $3::jsonb, $4)) w",
							  4, argtypes, values, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not look for missing documents");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MemoryContext old = MemoryContextSwitchTo(cxt);

		result = lappend(result, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
		result = lappend(result, SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2));
		MemoryContextSwitchTo(old);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
	return result;
}

/*
 * es_pull_deps_round
 *		Start fetching what the held answer still lacks; apply it when
 *		nothing is missing (or after ES_MAX_FETCH_ROUNDS rounds: what is
 *		still missing then fails the updates that need it).
 */
void
es_pull_deps_round(EsProducer *p)
{
	List	   *volatile missing = NIL;
	char	   *volatile error = NULL;
	MemoryContext cxt = CurrentMemoryContext;
	ListCell   *lc;

	if (p->rounds < ES_MAX_FETCH_ROUNDS)
	{
		PG_TRY();
		{
			missing = es_pull_missing(p);
		}
		PG_CATCH();
		{
			error = es_pull_caught(cxt, "could not read the answer from", p->url);
		}
		PG_END_TRY();
	}
	if (error != NULL || missing == NIL)
	{
		es_pull_finish(p, error);
		return;
	}
	p->rounds++;
	for (lc = list_head(missing); lc != NULL; lc = lnext(missing, lnext(missing, lc)))
	{
		const char *want = lfirst(lc);
		const char *path = lfirst(lnext(missing, lc));
		EsFetch    *f = calloc(1, sizeof(EsFetch));

		if (f == NULL || (f->easy = curl_easy_init()) == NULL)
		{
			free(f);
			continue;
		}
		f->producer = p;
		f->want = strdup(want);
		es_client_setup(f->easy, psprintf("%s/api/eventstream/v1/%s", p->url, path), p->auth, &f->resp, 30);
		curl_easy_setopt(f->easy, CURLOPT_PRIVATE, f);
		if (f->want == NULL || curl_multi_add_handle(es_multi, f->easy) != CURLM_OK)
		{
			curl_easy_cleanup(f->easy);
			curl_slist_free_all(f->resp.headers);
			free(f->want);
			free(f);
			continue;
		}
		f->next = es_fetches;
		es_fetches = f;
		p->fetching++;
	}
	if (p->fetching == 0)
		es_pull_finish(p, NULL);
}

/*
 * es_fetch_done
 *		A dependency fetch finished: note the document (or why there is
 *		none) with the held answer; start the next round after the last.
 */
void
es_fetch_done(EsFetch *f, CURLcode code)
{
	EsProducer *p = f->producer;
	EsFetch   **ff;
	long		status = 0;

	curl_easy_getinfo(f->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(es_multi, f->easy);
	curl_easy_cleanup(f->easy);
	for (ff = &es_fetches; *ff; ff = &(*ff)->next)
		if (*ff == f)
		{
			*ff = f->next;
			break;
		}

	if (p != NULL)
	{
		StringInfoData buf;
		char	   *bad = (code == CURLE_OK && status == 200) ? es_client_bad_text(&f->resp, p->url) : NULL;
		char	   *doc = NULL;

		/* The document in the database encoding: one it cannot hold is none. */
		if (code == CURLE_OK && status == 200 && f->resp.data && bad == NULL)
		{
			int			len;
			pg_wchar	c;

			doc = es_wire_to_server(f->resp.data, (int) f->resp.len, &len, &c);
			if (c != 0)
				bad = psprintf("the answer from %s holds a character this database cannot: %s",
							   p->url, es_wire_untranslatable(c));
		}

		initStringInfo(&buf);
		appendStringInfoString(&buf, p->deps && strcmp(p->deps, "[]") != 0 ? p->deps : "[");
		if (buf.len > 1)
			buf.data[--buf.len] = '\0';	/* drop the closing ] */
		if (buf.len > 1)
			appendStringInfoString(&buf, ", ");
		/* The want as it was, with what came of it. */
		appendBinaryStringInfo(&buf, f->want, strlen(f->want) - 1);	/* without its } */
		if (doc != NULL && bad == NULL)
			appendStringInfo(&buf, ", \"data\": %s", doc);
		else
		{
			appendStringInfoString(&buf, ", \"data\": null, \"error\": ");
			escape_json(&buf, code != CURLE_OK ? es_client_failure(code, &f->resp, p->url)
						: bad ? bad
						: psprintf("HTTP %ld: %s", status, es_client_text(f->resp.data, 200)));
		}
		appendStringInfoString(&buf, "}]");
		es_set_str(&p->deps, buf.data);
		if (--p->fetching == 0)
			es_pull_deps_round(p);
	}
	curl_slist_free_all(f->resp.headers);
	free(f->resp.data);
	free(f->want);
	free(f);
}

/*
 * es_pull_page_field
 *		A top-level field of the page a producer holds (NULL if none).
 */
JsonbValue *
es_pull_page_field(EsProducer *p, const char *key)
{
	JsonbValue	k;

	if (p->page == NULL || !JB_ROOT_IS_OBJECT(p->page) || JB_ROOT_IS_SCALAR(p->page))
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	return findJsonbValueFromContainer(&p->page->root, JB_FOBJECT, &k);
}
