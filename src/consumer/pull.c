/*-------------------------------------------------------------------------
 *
 * pull.c
 *	  Consumer side of the site worker: pulling from producers with a
 *	  libcurl multi handle driven from the worker's wait loop.
 *
 * Every enabled producer has at most one request in flight: what
 * eventstream._next_request() says (a page of a table's existing rows
 * during an initial sync, otherwise the next page of updates, long-polling
 * with wait= when the previous page said there was nothing more), plus,
 * while a page is applied, the request that follows it (for the next page,
 * or the long-poll when nothing more was waiting) when the producer takes
 * ack= (es_pull_prefetch).  libcurl's sockets are kept in an epoll set of
 * our own (CURLMOPT_SOCKETFUNCTION), whose descriptor the worker waits on
 * beside its latch and the HTTP server; CURLMOPT_TIMERFUNCTION gives the
 * longest the worker may sleep.  An answer is applied by
 * eventstream._apply_response() in a transaction of its own, which also
 * stores the next cursor: the network is never used inside a transaction, and a
 * crash between the two loses nothing (the page is pulled again).  A
 * producer that fails (unreachable, HTTP error, malformed page, apply
 * error) gets last_error and is retried after an exponential backoff with
 * jitter.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pull.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "consumer/client.h"
#include "consumer/pagejson.h"
#include "consumer/pull.h"
#include "site/worker.h"

#define ES_LONGPOLL_S		25		/* wait= of a pull that may park */
#define ES_MIN_BACKOFF_MS	1000
#define ES_MAX_BACKOFF_MS	300000

/* One producer this site pulls from (malloc'd strings). */
typedef struct EsProducer
{
	char	   *url;
	char	   *auth;			/* key:secret */
	char	   *path;			/* what to ask for next (see _next_request) */
	bool		seen;			/* still in the table at the last refresh */
	bool		drained;		/* the last page had nothing more: long-poll */
	bool		sent_ack;		/* the request in flight carries ack= */
	CURL	   *easy;			/* request in flight, or NULL */
	char	   *sent_path;		/* the path that request asked for */
	EsResponse	resp;
	char	   *body;			/* an answer waiting for its dependencies */
	Jsonb	   *page;			/* body parsed once, in page_cxt (or NULL) */
	MemoryContext page_cxt;		/* holds page; reset with body */
	/* The next page, asked for while this one is applied (es_pull_prefetch) */
	CURL	   *pre_easy;		/* or NULL */
	EsResponse	pre_resp;
	char	   *pre_path;		/* the path it answers, as _next_request says it */
	bool		pre_wait;		/* it is a long-poll (wait=) */
	bool		pre_done;		/* pre_easy finished with pre_code */
	CURLcode	pre_code;
	bool		pre_taken;		/* it is the producer's current request */
	bool		pre_ready;		/* taken and finished: for es_pull_done */
	CURLcode	pre_code_taken; /* pre_code of that one */
	char	   *deps;			/* JSON array of the documents fetched for it */
	/* Earlier pages of the window being received (es_pull_hold) */
	List	   *held;			/* of EsHeld, in held_cxt; NIL: none */
	Size		held_bytes;
	char	   *held_path;		/* the request of the first: the stored cursor */
	MemoryContext held_cxt;
	int			rounds;			/* fetch rounds so far */
	int			fetching;		/* fetches in flight */
	TimestampTz next_attempt;
	int			backoff_ms;
	struct EsProducer *next;
} EsProducer;

/* A page held in memory: its updates and the documents fetched for it. */
typedef struct EsHeld
{
	Jsonb	   *updates;
	char	   *deps;
} EsHeld;

int			es_window_memory = 64 * 1024;	/* kB */

/*
 * A fetch of what an answer refers to (a dependency): a document, or the
 * docnames matching a mapping's filters.
 */
typedef struct EsFetch
{
	EsProducer *producer;		/* NULL once the producer is gone */
	char	   *want;			/* what was asked for, a JSON object */
	CURL	   *easy;
	EsResponse	resp;
	struct EsFetch *next;
} EsFetch;

#define ES_MAX_FETCH_ROUNDS	10

static EsFetch *es_fetches = NULL;

static void es_set_str(char **dst, const char *src);
static JsonbValue *es_pull_page_field(EsProducer *p, const char *key);

static EsProducer *es_producers = NULL;
static CURLM *es_multi = NULL;
static int	es_curl_epfd = -1;
static long es_curl_timer_ms = -1;	/* from CURLMOPT_TIMERFUNCTION */
static TimestampTz es_curl_timer_set = 0;
static MemoryContext es_pull_cxt = NULL;	/* reset on every es_pull_run() */
static SPIPlanPtr es_apply_plan = NULL; /* es_pull_apply's statement, kept */

/*
 * es_pull_socket_cb
 *		CURLMOPT_SOCKETFUNCTION: keep libcurl's sockets in our epoll set.
 */
static int
es_pull_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(es_curl_epfd, EPOLL_CTL_DEL, s, NULL);
		return 0;
	}
	ev.events = ((what & CURL_POLL_IN) ? EPOLLIN : 0) | ((what & CURL_POLL_OUT) ? EPOLLOUT : 0);
	if (epoll_ctl(es_curl_epfd, EPOLL_CTL_MOD, s, &ev) != 0 &&
		epoll_ctl(es_curl_epfd, EPOLL_CTL_ADD, s, &ev) != 0)
		return -1;
	return 0;
}

/*
 * es_pull_timer_cb
 *		CURLMOPT_TIMERFUNCTION: remember when libcurl wants to be called.
 */
static int
es_pull_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	es_curl_timer_ms = timeout_ms;
	es_curl_timer_set = GetCurrentTimestamp();
	return 0;
}

/*
 * es_pull_init
 *		Set up the multi handle and its epoll set; returns the descriptor
 *		the worker waits on.  Once per worker.
 */
int
es_pull_init(void)
{
	es_client_init();
	es_pull_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream pulls",
										ALLOCSET_DEFAULT_SIZES);
	es_curl_epfd = epoll_create1(EPOLL_CLOEXEC);
	if (es_curl_epfd < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create an epoll set for pulls: %m")));
	es_multi = curl_multi_init();
	if (es_multi == NULL)
		elog(ERROR, "could not create a libcurl multi handle");
	curl_multi_setopt(es_multi, CURLMOPT_SOCKETFUNCTION, es_pull_socket_cb);
	curl_multi_setopt(es_multi, CURLMOPT_TIMERFUNCTION, es_pull_timer_cb);
	return es_curl_epfd;
}

/*
 * es_pull_drop_body
 *		Forget the answer a producer holds: its text, its parsed form and
 *		the dependencies fetched for it.
 */
static void
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
static char *
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
		parsed = es_read_page(p->body, strlen(p->body), es_page_budget());
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
 * es_pull_drop_prefetch
 *		Drop the request for the next page made while this one is applied,
 *		finished or not.
 */
static void
es_pull_drop_prefetch(EsProducer *p)
{
	if (p->pre_easy)
	{
		curl_multi_remove_handle(es_multi, p->pre_easy);
		curl_easy_cleanup(p->pre_easy);
		p->pre_easy = NULL;
	}
	curl_slist_free_all(p->pre_resp.headers);
	free(p->pre_resp.data);
	memset(&p->pre_resp, 0, sizeof(p->pre_resp));
	free(p->pre_path);
	p->pre_path = NULL;
	p->pre_done = false;
	p->pre_wait = false;
	p->pre_taken = false;
	p->pre_ready = false;
}

/*
 * es_pull_take_prefetch
 *		The next page's request finished and is the producer's current
 *		one: make it the producer's request (libcurl writes into pre_resp
 *		until the transfer ends, so it is moved only then).
 */
static void
es_pull_take_prefetch(EsProducer *p)
{
	p->easy = p->pre_easy;
	p->resp = p->pre_resp;
	es_set_str(&p->sent_path, p->pre_path);
	p->sent_ack = true;
	p->pre_easy = NULL;
	memset(&p->pre_resp, 0, sizeof(p->pre_resp));
	free(p->pre_path);
	p->pre_path = NULL;
	p->pre_done = false;
	p->pre_taken = false;
}

/*
 * es_pull_drop_held
 *		Forget the pages held for a window (they are pulled again from the
 *		stored cursor, which they never moved).
 */
static void
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
 * es_path_cursor
 *		Where the (URL-encoded) cursor of an updates path is: [*at, *end).
 *		False when path is no pull of updates by cursor.
 */
static bool
es_path_cursor(const char *path, const char **at, const char **end)
{
	if (path == NULL || strncmp(path, "updates?", 8) != 0)
		return false;
	*at = strstr(path, "&cursor=");
	if (*at == NULL)
		return false;
	*at += strlen("&cursor=");
	*end = strchr(*at, '&');
	if (*end == NULL)
		*end = *at + strlen(*at);
	return true;
}

/*
 * es_path_after
 *		The path _next_request gives once the page answering path is
 *		stored: path with the page's cursor in it (palloc'd).
 */
static char *
es_path_after(const char *path, const char *cursor, int cursor_len)
{
	const char *at;
	const char *end;
	char	   *enc;

	if (!es_path_cursor(path, &at, &end))
		return NULL;
	enc = TextDatumGetCString(DirectFunctionCall1(eventstream_urlencode,
												  PointerGetDatum(cstring_to_text_with_len(cursor, cursor_len))));
	return psprintf("%.*s%s%s", (int) (at - path), path, enc, end);
}

/*
 * es_pull_ack
 *		"&ack=<cursor>" naming the cursor stored last: the one the pages
 *		held were first asked with, otherwise path's (the request just
 *		answered, whose cursor the last apply stored); "" when that is no
 *		pull of updates.
 */
static char *
es_pull_ack(EsProducer *p, const char *path)
{
	const char *at;
	const char *end;

	if (!es_path_cursor(p->held ? p->held_path : path, &at, &end))
		return "";
	return psprintf("&ack=%.*s", (int) (end - at), at);
}

/*
 * es_pull_cancel
 *		Drop a producer's request in flight, if any, and the pages held.
 */
static void
es_pull_cancel(EsProducer *p)
{
	es_pull_drop_prefetch(p);
	if (p->easy)
	{
		curl_multi_remove_handle(es_multi, p->easy);
		curl_easy_cleanup(p->easy);
		p->easy = NULL;
	}
	curl_slist_free_all(p->resp.headers);
	p->resp.headers = NULL;
	free(p->resp.data);
	p->resp.data = NULL;
	free(p->sent_path);
	p->sent_path = NULL;
	es_pull_drop_body(p);
	p->fetching = 0;
	es_pull_drop_held(p);
	for (EsFetch *f = es_fetches; f; f = f->next)
		if (f->producer == p)
			f->producer = NULL;	/* dropped when it finishes */
}

/*
 * es_set_str
 *		Replace a malloc'd string.
 */
static void
es_set_str(char **dst, const char *src)
{
	free(*dst);
	*dst = src ? strdup(src) : NULL;
	if (src && *dst == NULL)
		ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
}

/*
 * es_spi_int
 *		Column col of the first row SPI returned, an integer or boolean, or
 *		if_null when it is null.
 */
static int
es_spi_int(int col, int if_null)
{
	bool		isnull;
	Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, col, &isnull);

	if (isnull)
		return if_null;
	if (SPI_gettypeid(SPI_tuptable->tupdesc, col) == BOOLOID)
		return DatumGetBool(d) ? 1 : 0;
	return DatumGetInt32(d);
}

/*
 * es_pull_refresh
 *		Read the enabled producers, in a transaction of its own; start
 *		tracking new producers and forget removed ones.  What to ask a
 *		producer for next is taken over when no request is in flight (it
 *		changes when sync_now() ran, or a subscription changed).
 */
void
es_pull_refresh(void)
{
	EsProducer *p;
	EsProducer **pp;
	uint64		i;

	for (p = es_producers; p; p = p->next)
		p->seen = false;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	if (SPI_execute("SELECT p.producer_url, p.api_key || ':' || p.api_secret, r.path"
					"  FROM eventstream.producer p, LATERAL eventstream._next_request(p.producer_url) r"
					" WHERE p.enabled AND p.cursor <> ''",
					true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the producers");
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *url = SPI_getvalue(tup, desc, 1);
		char	   *auth = SPI_getvalue(tup, desc, 2);
		char	   *path = SPI_getvalue(tup, desc, 3);

		for (p = es_producers; p; p = p->next)
			if (strcmp(p->url, url) == 0)
				break;
		if (p == NULL)
		{
			p = calloc(1, sizeof(EsProducer));
			if (p == NULL)
				ereport(ERROR, (errcode(ERRCODE_OUT_OF_MEMORY), errmsg("out of memory")));
			es_set_str(&p->url, url);
			p->next = es_producers;
			es_producers = p;
		}
		p->seen = true;
		if (p->auth == NULL || strcmp(p->auth, auth) != 0)
		{
			/* New keys: retry at once. */
			es_set_str(&p->auth, auth);
			p->next_attempt = 0;
			p->backoff_ms = 0;
			es_pull_cancel(p);
		}
		if (p->body == NULL &&
			(p->path == NULL || strcmp(p->held ? p->held_path : p->path, path) != 0))
		{
			/*
			 * Something else moved it on: a parked poll is stale too, and so
			 * are pages held (they are after what is stored, held_path).
			 * A backoff was for the old request: the new one goes at once.
			 */
			es_pull_cancel(p);
			es_set_str(&p->path, path);
			p->drained = false;
			p->next_attempt = 0;
			p->backoff_ms = 0;
		}
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();

	/* Forget producers that were removed or disabled. */
	pp = &es_producers;
	while (*pp)
	{
		p = *pp;
		if (!p->seen)
		{
			*pp = p->next;
			es_pull_cancel(p);
			if (p->held_cxt)
				MemoryContextDelete(p->held_cxt);
			if (p->page_cxt)
				MemoryContextDelete(p->page_cxt);
			free(p->url);
			free(p->auth);
			free(p->path);
			free(p);
		}
		else
			pp = &p->next;
	}
}

/*
 * es_pull_start_due
 *		Start a pull for every producer that has none in flight and is not
 *		backing off.
 */
void
es_pull_start_due(void)
{
	TimestampTz now = GetCurrentTimestamp();
	EsProducer *p;

	for (p = es_producers; p; p = p->next)
	{
		char	   *url;
		long		wait;

		if (p->easy != NULL || p->body != NULL || p->pre_easy != NULL ||
			p->next_attempt > now || p->path == NULL)
			continue;
		/* Only a pull of updates that found nothing last time may park. */
		wait = (p->drained && strncmp(p->path, "updates?", 8) == 0) ? ES_LONGPOLL_S : 0;
		p->easy = curl_easy_init();
		if (p->easy == NULL)
			continue;
		/* While pages are held, what is stored is before p->path. */
		url = psprintf("%s/api/eventstream/v1/%s%s%s", p->url, p->path,
					   wait > 0 ? psprintf("&wait=%ld", wait) : "",
					   p->held ? es_pull_ack(p, NULL) : "");
		es_client_setup(p->easy, url, p->auth, &p->resp, wait + 30);
		es_set_str(&p->sent_path, p->path);
		p->sent_ack = p->held != NIL;
		pfree(url);
		if (curl_multi_add_handle(es_multi, p->easy) != CURLM_OK)
			es_pull_cancel(p);
	}
}

/*
 * es_pull_failed
 *		A request to a producer failed: unless the producer was moved on
 *		meanwhile (see below), log and record the failure and schedule the
 *		retry with exponential backoff and jitter.  Runs its own
 *		transaction; no request of the producer's is in flight.
 */
static void
es_pull_failed(EsProducer *p, const char *error)
{
	Oid			argtypes[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	double		jitter = 0.75 + 0.5 * pg_prng_double(&pg_global_prng_state);
	char	   *failed = pstrdup(p->held ? p->held_path : p->sent_path ? p->sent_path : p->path ? p->path : "");
	char	   *now_path = NULL;

	/* Pages held are after the stored cursor: pulled again from there. */
	es_pull_drop_held(p);

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	SPI_connect();
	values[0] = CStringGetTextDatum(p->url);
	values[1] = CStringGetTextDatum(error);

	/*
	 * A page of a table's initial sync: the failure is that table's.  It is
	 * recorded on it and retried later (eventstream._snapshot_failed), and
	 * what to ask for now (below) is something else, at once.
	 */
	if (strncmp(failed, "snapshot/", 9) == 0)
	{
		Oid			snap_argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
		Datum		snap_values[3];
		bool		isnull;

		snap_values[0] = values[0];
		snap_values[1] = CStringGetTextDatum(failed);
		snap_values[2] = values[1];
		if (SPI_execute_with_args("SELECT eventstream._snapshot_failed($1, $2, $3)",
								  3, snap_argtypes, snap_values, NULL, false, 1) == SPI_OK_SELECT &&
			SPI_processed == 1 &&
			DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull)
			ereport(LOG,
					(errmsg("eventstream: initial sync from %s failed: %s", p->url, error),
					 errdetail("The request was %s; it is retried later, the other tables meanwhile streaming.",
							   failed)));
	}

	/*
	 * What to ask for now.  When it is no longer what failed, something
	 * else moved this producer on meanwhile (sync_now() in a session, a
	 * subscription that changed): the failure was of a request nobody
	 * wants any more -- typically the producer refusing a cursor that
	 * session's pulls had gone past -- so the new one goes at once,
	 * nothing recorded.  So does a plain pull after a failed one that
	 * carried ack= (asked for ahead, es_pull_prefetch_at): a session's
	 * pull of the stored cursor acknowledges it, and the producer then
	 * refuses an older ack; the plain pull says whether anything is
	 * really wrong.
	 */
	if (SPI_execute_with_args("SELECT r.path FROM eventstream._next_request($1) r",
							  1, argtypes, values, NULL, false, 1) == SPI_OK_SELECT &&
		SPI_processed == 1)
		now_path = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (now_path != NULL)
		es_set_str(&p->path, now_path);
	if (now_path != NULL && (strcmp(now_path, failed) != 0 || p->sent_ack))
	{
		p->backoff_ms = 0;
		p->next_attempt = 0;
		p->drained = false;
	}
	else
	{
		ereport(LOG,
				(errmsg("eventstream: pulling from %s failed: %s", p->url, error)));
		p->backoff_ms = p->backoff_ms == 0 ? ES_MIN_BACKOFF_MS : Min(p->backoff_ms * 2, ES_MAX_BACKOFF_MS);
		p->next_attempt = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), (long) (p->backoff_ms * jitter));
		p->drained = false;
		SPI_execute_with_args("UPDATE eventstream.producer SET last_error = $2, last_error_at = pg_catalog.now(),"
							  "       last_pull_at = pg_catalog.now()"
							  " WHERE producer_url = $1",
							  2, argtypes, values, NULL, false, 0);
	}
	SPI_finish();
	PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * es_pull_caught
 *		In a PG_CATCH block around a transaction of the worker's: abort it
 *		and return "<what> <url>: <message>" (palloc'd in cxt).
 */
static char *
es_pull_caught(MemoryContext cxt, const char *what, const char *url)
{
	ErrorData  *edata;
	char	   *result;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	MemoryContextSwitchTo(cxt);
	result = psprintf("%s %s: %s", what, url, edata->message);
	FreeErrorData(edata);
	return result;
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

	if (es_pull_hold(p, more))
	{
		es_test_pause("held");
		return NULL;
	}
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
		pgstat_report_activity(STATE_RUNNING, "applying updates from a producer");
		SPI_connect();
		values[0] = CStringGetTextDatum(p->url);

		/*
		 * The pages held for this window first (es_pull_hold), under the
		 * table statuses its last page gives: a table rejected while the
		 * window was on its way gets none of its updates applied, the
		 * first pages' included (_apply_updates drops them).
		 */
		if (p->held != NIL)
		{
			JsonbValue *tables = es_pull_page_field(p, "tables");

			if (tables != NULL && tables->type == jbvBinary)
			{
				Oid			mirror_types[2] = {TEXTOID, JSONBOID};
				Datum		mirror_values[2];

				mirror_values[0] = values[0];
				mirror_values[1] = JsonbPGetDatum(JsonbValueToJsonb(tables));
				if (SPI_execute_with_args("SELECT eventstream._mirror_statuses($1, $2)",
										  2, mirror_types, mirror_values, NULL, false, 1) != SPI_OK_SELECT)
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
			pgstat_report_activity(STATE_IDLE, NULL);
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
			SPIPlanPtr	plan = SPI_prepare_cursor("SELECT r.next_path, r.more"
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
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		es_pull_drop_held(p);
		pgstat_report_stat(false);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_CATCH();
	{
		error = es_pull_caught(cxt, "could not apply updates from", p->url);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	PG_END_TRY();
	return error;
}

/*
 * es_pull_finish
 *		Apply the answer a producer is holding (with the dependencies
 *		fetched for it), or record why not, and let its next request go.
 */
static void
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
			(p->pre_done || !p->pre_wait))
		{
			if (p->pre_done)
			{
				p->pre_code_taken = p->pre_code;
				es_pull_take_prefetch(p);
				p->pre_ready = true;
			}
			else
				p->pre_taken = true;
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
static void
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
static void
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

		initStringInfo(&buf);
		appendStringInfoString(&buf, p->deps && strcmp(p->deps, "[]") != 0 ? p->deps : "[");
		if (buf.len > 1)
			buf.data[--buf.len] = '\0';	/* drop the closing ] */
		if (buf.len > 1)
			appendStringInfoString(&buf, ", ");
		/* The want as it was, with what came of it. */
		appendBinaryStringInfo(&buf, f->want, strlen(f->want) - 1);	/* without its } */
		if (code == CURLE_OK && status == 200 && f->resp.data && bad == NULL)
			appendStringInfo(&buf, ", \"data\": %s", f->resp.data);
		else
		{
			appendStringInfoString(&buf, ", \"data\": null, \"error\": ");
			escape_json(&buf, code != CURLE_OK ? es_client_failure(code, &f->resp, p->url)
						: bad ? bad
						: psprintf("HTTP %ld: %.200s", status, f->resp.data ? f->resp.data : ""));
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
static JsonbValue *
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

/*
 * es_pull_prefetch_at
 *		Ask for the next page of updates (the one after cursor) now, while
 *		the one just received is parsed and applied: the producer builds it
 *		meanwhile (the machine's other core), instead of the two sides
 *		taking turns.  When the page says nothing more is waiting (drained),
 *		the request is the long-poll that would follow the apply: parked on
 *		the producer meanwhile, it is answered as soon as the producer has
 *		the next window, often before the apply ends (a consumer keeping up
 *		with a busy producer otherwise waited, window after window, for the
 *		producer to build a page it could have built during the apply).
 *
 * Only when the producer takes ack= ("acks": true): asking for the next
 * cursor would otherwise acknowledge the page being applied, which may yet
 * fail or be lost in a crash.  With ack= set to the cursor this page was
 * asked with (stored here when the previous page was applied, so
 * acknowledged truly) -- or, while pages of a window are held, the one the
 * first of them was asked with (es_pull_hold) -- the producer keeps the
 * pages after it until a later pull acknowledges them.
 *
 * The request is made for the path _next_request would give once this
 * page is applied (the sent path with the page's cursor in it); it is
 * used only if the apply then says exactly that path (es_pull_finish),
 * and dropped otherwise.  It only joins the multi handle here: libcurl
 * moves data in es_pull_run() alone, outside any transaction, so the
 * apply's transaction never waits on the network; what arrives meanwhile
 * waits in the kernel's socket buffer.
 */
static void
es_pull_prefetch_at(EsProducer *p, const char *cursor, int cursor_len, bool drained)
{
	const char *sent = p->sent_path;	/* a path: never with wait= or ack= */
	char	   *path;
	char	   *url;

	if (p->pre_easy != NULL)
		return;
	path = es_path_after(sent, cursor, cursor_len);
	if (path == NULL)
		return;
	url = psprintf("%s/api/eventstream/v1/%s%s%s", p->url, path,
				   drained ? psprintf("&wait=%d", ES_LONGPOLL_S) : "", es_pull_ack(p, sent));

	p->pre_easy = curl_easy_init();
	if (p->pre_easy == NULL)
		return;
	memset(&p->pre_resp, 0, sizeof(p->pre_resp));
	es_client_setup(p->pre_easy, url, p->auth, &p->pre_resp, (drained ? ES_LONGPOLL_S : 0) + 30);
	es_set_str(&p->pre_path, path);
	p->pre_done = false;
	p->pre_wait = drained;
	if (curl_multi_add_handle(es_multi, p->pre_easy) != CURLM_OK)
	{
		es_pull_drop_prefetch(p);
		return;
	}

	/*
	 * Send it now (still outside any transaction; nothing here waits):
	 * left to the next es_pull_run(), it would go out only after the
	 * apply.
	 */
	{
		int			running;

		(void) curl_multi_socket_action(es_multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
}

/*
 * es_pull_prefetch
 *		es_pull_prefetch_at for the page just parsed, when the producer
 *		takes ack=.
 */
static void
es_pull_prefetch(EsProducer *p)
{
	JsonbValue *more = es_pull_page_field(p, "more");
	JsonbValue *acks = es_pull_page_field(p, "acks");
	JsonbValue *cursor = es_pull_page_field(p, "cursor");

	if (more != NULL && more->type == jbvBool &&
		acks != NULL && acks->type == jbvBool && acks->val.boolean &&
		cursor != NULL && cursor->type == jbvString)
		es_pull_prefetch_at(p, cursor->val.string.val, cursor->val.string.len, !more->val.boolean);
}

/*
 * es_pull_prefetch_early
 *		es_pull_prefetch_at before the page just received is parsed, when
 *		it begins the way this extension's producers write it:
 *		{"cursor": "<cursor>", "more": ..., "complete": ..., "acks": true,
 *		and the cursor is plain (digits, letters, ':', ',', '/').  Parsing
 *		a page takes about as long as the producer takes to build the next:
 *		asked for first, the two overlap.  Anything else waits for the
 *		parse; and a guess is only a request: its answer is used only if
 *		the page, parsed and applied, says exactly that path next.
 */
static void
es_pull_prefetch_early(EsProducer *p)
{
	static const char head[] = "{\"cursor\": \"";
	const char *s = p->body;
	const char *cursor;
	int			len = 0;
	bool		drained;

	if (s == NULL || strncmp(s, head, sizeof(head) - 1) != 0)
		return;
	cursor = s + sizeof(head) - 1;
	while (cursor[len] != '\0' && cursor[len] != '"')
	{
		char		c = cursor[len];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == ':' || c == ',' || c == '/'))
			return;
		len++;
	}
	s = cursor + len;
	if (strncmp(s, "\", \"more\": ", strlen("\", \"more\": ")) != 0)
		return;
	s += strlen("\", \"more\": ");
	drained = (strncmp(s, "false", 5) == 0);
	if (drained)
		s += 5;
	else if (strncmp(s, "true", 4) == 0)
		s += 4;
	else
		return;
	if (strncmp(s, ", \"complete\": ", strlen(", \"complete\": ")) != 0)
		return;
	s += strlen(", \"complete\": ");
	if (strncmp(s, "false", 5) == 0)
		s += 5;
	else if (strncmp(s, "true", 4) == 0)
		s += 4;
	else
		return;
	if (strncmp(s, ", \"acks\": true", strlen(", \"acks\": true")) != 0)
		return;
	es_pull_prefetch_at(p, cursor, len, drained);
}

/*
 * es_pull_done
 *		A producer's request finished: hold its answer and look for what it
 *		refers to that is not here, or record why there is no answer.
 */
static void
es_pull_done(EsProducer *p, CURLcode code)
{
	long		status = 0;
	char	   *error = NULL;

	curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(es_multi, p->easy);
	curl_easy_cleanup(p->easy);
	p->easy = NULL;

	if (code != CURLE_OK)
		error = es_client_failure(code, &p->resp, p->url);
	else if (status != 200)
		error = psprintf("%s answered HTTP %ld: %.300s", p->url, status,
						 p->resp.data ? p->resp.data : "");
	else
		error = es_client_bad_text(&p->resp, p->url);	/* nothing applied */
	curl_slist_free_all(p->resp.headers);
	p->resp.headers = NULL;
	if (error)
	{
		free(p->resp.data);
		p->resp.data = NULL;
		es_pull_finish(p, error);
		return;
	}
	/* Keep the answer while its dependencies are fetched. */
	es_pull_drop_body(p);
	p->body = p->resp.data ? p->resp.data : strdup("");
	p->resp.data = NULL;
	p->rounds = 0;
	p->fetching = 0;
	es_test_pause("received");
	es_pull_prefetch_early(p);
	error = es_pull_parse(p);
	if (error)
	{
		es_pull_finish(p, error);
		return;
	}
	es_pull_prefetch(p);
	es_pull_deps_round(p);
}

/*
 * es_pull_run
 *		Let libcurl progress on what is ready (or on its timer), then deal
 *		with finished requests and start the ones that are due.  Called from
 *		the worker's loop, outside any transaction.
 */
void
es_pull_run(void)
{
	struct epoll_event events[16];
	int			n;
	int			running;
	CURLMsg    *msg;
	int			left;
	MemoryContext oldcxt;

	if (es_multi == NULL)
		return;
	MemoryContextReset(es_pull_cxt);
	oldcxt = MemoryContextSwitchTo(es_pull_cxt);
	n = epoll_wait(es_curl_epfd, events, lengthof(events), 0);
	for (int i = 0; i < n; i++)
	{
		int			mask = ((events[i].events & EPOLLIN) ? CURL_CSELECT_IN : 0) |
			((events[i].events & EPOLLOUT) ? CURL_CSELECT_OUT : 0) |
			((events[i].events & (EPOLLERR | EPOLLHUP)) ? CURL_CSELECT_ERR : 0);

		curl_multi_socket_action(es_multi, events[i].data.fd, mask, &running);
	}
	if (es_curl_timer_ms >= 0 &&
		TimestampDifferenceExceeds(es_curl_timer_set, GetCurrentTimestamp(), es_curl_timer_ms))
	{
		es_curl_timer_ms = -1;
		curl_multi_socket_action(es_multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}

	while ((msg = curl_multi_info_read(es_multi, &left)) != NULL)
	{
		void	   *owner = NULL;
		EsProducer *p;
		CURL	   *easy = msg->easy_handle;
		CURLcode	result = msg->data.result;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &owner);
		for (p = es_producers; p; p = p->next)
			if (p->easy == easy || p->pre_easy == easy)
				break;
		if (p != NULL && p->pre_easy == easy && p->pre_taken)
		{
			/* The next page, which the apply said to ask for: go on. */
			es_pull_take_prefetch(p);
			es_pull_done(p, result);
		}
		else if (p != NULL && p->pre_easy == easy)
		{
			/* The next page: kept until the current one is applied. */
			p->pre_done = true;
			p->pre_code = result;
		}
		else if (p != NULL)
			es_pull_done(p, result);
		else if (owner != NULL)
			es_fetch_done((EsFetch *) owner, result);
	}
	/* Next pages that had arrived while the previous one was applied. */
	for (EsProducer *p = es_producers; p; p = p->next)
		while (p->pre_ready && p->easy != NULL)
		{
			p->pre_ready = false;
			es_pull_done(p, p->pre_code_taken);
		}
	es_pull_start_due();
	MemoryContextSwitchTo(oldcxt);
}

/*
 * es_pull_timeout
 *		Milliseconds until the pulls need the worker again (-1: no limit).
 */
long
es_pull_timeout(void)
{
	long		result = -1;
	TimestampTz now = GetCurrentTimestamp();
	EsProducer *p;

	if (es_curl_timer_ms >= 0)
	{
		result = es_curl_timer_ms -
			(long) TimestampDifferenceMilliseconds(es_curl_timer_set, now);
		if (result < 0)
			result = 0;
	}
	for (p = es_producers; p; p = p->next)
	{
		if (p->easy == NULL && p->body == NULL && p->pre_easy == NULL)
		{
			long		left = p->next_attempt > now ?
				(long) TimestampDifferenceMilliseconds(now, p->next_attempt) : 0;

			if (result < 0 || left < result)
				result = left;
		}
	}
	return result;
}

/*
 * es_pull_shutdown
 *		Drop every request (on worker exit).
 */
void
es_pull_shutdown(void)
{
	EsProducer *p;

	for (p = es_producers; p; p = p->next)
		es_pull_cancel(p);
	while (es_fetches)
	{
		EsFetch    *f = es_fetches;

		es_fetches = f->next;
		curl_multi_remove_handle(es_multi, f->easy);
		curl_easy_cleanup(f->easy);
		curl_slist_free_all(f->resp.headers);
		free(f->resp.data);
		free(f->want);
		free(f);
	}
	if (es_multi)
		curl_multi_cleanup(es_multi);
	es_multi = NULL;
	if (es_curl_epfd >= 0)
		close(es_curl_epfd);
	es_curl_epfd = -1;
}
