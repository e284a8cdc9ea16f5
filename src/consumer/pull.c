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
 * producer that fails (unreachable, HTTP error, an answer in a protocol
 * version this site does not speak, malformed page, apply error) gets
 * last_error and is retried after an exponential backoff with
 * jitter.
 *
 * This file holds the producers pulled from, the multi handle and what
 * the worker's loop calls; what becomes of an answer (its parse, the
 * documents it refers to, the pages of a window held in memory, the
 * apply) is in pull_page.c, and the request for the next page made while
 * one is applied in pull_prefetch.c.  The three share pull_internal.h.
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
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "eventstream.h"
#include "consumer/client.h"
#include "consumer/pull.h"
#include "consumer/pull_internal.h"
#include "site/worker.h"

#define ES_MIN_BACKOFF_MS	1000
#define ES_MAX_BACKOFF_MS	300000

EsFetch    *es_fetches = NULL;	/* dependency fetches in flight */

static EsProducer *es_producers = NULL;
CURLM	   *es_multi = NULL;
static int	es_curl_epfd = -1;
static long es_curl_timer_ms = -1;	/* from CURLMOPT_TIMERFUNCTION */
static TimestampTz es_curl_timer_set = 0;
static MemoryContext es_pull_cxt = NULL;	/* reset on every es_pull_run() */

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
void
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
int
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
		if (es_pull_state(p) != ES_PULL_RECEIVED &&
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
			free(p->copied_table);
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

		if (es_pull_state(p) != ES_PULL_IDLE || p->next_attempt > now || p->path == NULL)
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
void
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
char *
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
 * es_pull_free_head
 *		Free what an EsPageHead holds.
 */
static void
es_pull_free_head(EsPageHead *head)
{
	if (head->protocol)
		pfree(head->protocol);
	if (head->cursor)
		pfree(head->cursor);
	if (head->more)
		pfree(head->more);
	if (head->acks)
		pfree(head->acks);
	memset(head, 0, sizeof(EsPageHead));
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
	EsPageHead	head;

	/* The headers live in the handle: read before it goes. */
	head.protocol = es_client_header(p->easy, ES_HEADER_PROTOCOL);
	head.cursor = es_client_header(p->easy, ES_HEADER_CURSOR);
	head.more = es_client_header(p->easy, ES_HEADER_MORE);
	head.acks = es_client_header(p->easy, ES_HEADER_ACKS);
	curl_easy_getinfo(p->easy, CURLINFO_RESPONSE_CODE, &status);
	curl_multi_remove_handle(es_multi, p->easy);
	curl_easy_cleanup(p->easy);
	p->easy = NULL;

	if (code != CURLE_OK)
		error = es_client_failure(code, &p->resp, p->url);
	else if (!es_client_protocol_known(head.protocol))
		error = es_client_protocol_error(head.protocol, p->url);	/* nothing read */
	else if (status != 200)
		error = psprintf("%s answered HTTP %ld: %s", p->url, status,
						 es_client_text(p->resp.data, 300));
	else
		error = es_client_bad_text(&p->resp, p->url);	/* nothing applied */
	curl_slist_free_all(p->resp.headers);
	p->resp.headers = NULL;
	if (error)
	{
		free(p->resp.data);
		p->resp.data = NULL;
		es_pull_free_head(&head);
		es_pull_finish(p, error);
		return;
	}
	/* Keep the answer while its dependencies are fetched. */
	es_pull_drop_body(p);
	p->body = p->resp.data ? p->resp.data : strdup("");
	p->resp.data = NULL;
	p->rounds = 0;
	p->fetching = 0;
	es_worker_doing("pulling from %s", p->url);
	es_test_pause("received");
	es_pull_prefetch_early(p, &head);
	es_pull_free_head(&head);
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
		if (p != NULL && p->pre_easy == easy && p->pre_state == ES_PRE_TAKEN)
		{
			/* The next page, which the apply said to ask for: go on. */
			es_pull_take_prefetch(p);
			es_pull_done(p, result);
		}
		else if (p != NULL && p->pre_easy == easy)
		{
			/* The next page: kept until the current one is applied. */
			p->pre_state = ES_PRE_DONE;
			p->pre_code = result;
		}
		else if (p != NULL)
			es_pull_done(p, result);
		else if (owner != NULL)
			es_fetch_done((EsFetch *) owner, result);
	}
	/* Next pages that had arrived while the previous one was applied. */
	for (EsProducer *p = es_producers; p; p = p->next)
		while (p->pre_state == ES_PRE_READY && p->easy != NULL)
		{
			p->pre_state = ES_PRE_NONE;
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
		if (es_pull_state(p) == ES_PULL_IDLE)
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
