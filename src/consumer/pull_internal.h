/*-------------------------------------------------------------------------
 *
 * pull_internal.h
 *	  Declarations shared by the files of the pulls (src/consumer/pull*.c).
 *
 * What the site worker calls is in pull.h.  Here: the state of one
 * producer (EsProducer) and of one fetch of a document an answer refers
 * to (EsFetch), the multi handle, and the functions each file of the
 * pulls offers the others.  Nothing outside the pulls includes it.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pull_internal.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PULL_INTERNAL_H
#define ES_PULL_INTERNAL_H

#include <curl/curl.h>

#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"

#include "consumer/client.h"

#define ES_LONGPOLL_S		25		/* wait= of a pull that may park */

/*
 * Where a producer's next page stands, asked for while its current page is
 * applied (pull_prefetch.c).  From NONE, es_pull_prefetch_at sends it
 * (SENT); es_pull_run notes when it finishes first (DONE); es_pull_finish,
 * once the current page is applied, makes it the producer's request --
 * still in flight (TAKEN: es_pull_run hands it to es_pull_done when it
 * finishes) or finished (READY: es_pull_run hands it over at once) -- or
 * drops it (NONE).
 */
typedef enum EsPrefetchState
{
	ES_PRE_NONE,				/* none; pre_easy is NULL */
	ES_PRE_SENT,				/* pre_easy in flight */
	ES_PRE_DONE,				/* pre_easy finished with pre_code */
	ES_PRE_TAKEN,				/* pre_easy in flight, the producer's request */
	ES_PRE_READY				/* taken when finished: easy, with
								 * pre_code_taken, for es_pull_done */
} EsPrefetchState;

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
	EsPrefetchState pre_state;	/* see EsPrefetchState */
	CURLcode	pre_code;		/* ES_PRE_DONE: how it finished */
	CURLcode	pre_code_taken; /* ES_PRE_READY: pre_code of that one */
	char	   *deps;			/* JSON array of the documents fetched for it */
	/* Earlier pages of the window being received (es_pull_hold) */
	List	   *held;			/* of EsHeld (pull_page.c), in held_cxt; NIL: none */
	Size		held_bytes;
	char	   *held_path;		/* the request of the first: the stored cursor */
	MemoryContext held_cxt;
	/* The initial sync last recorded (es_pull_record_progress) */
	char	   *copied_table;	/* or NULL */
	int64		copied_rows;
	int			rounds;			/* fetch rounds so far */
	int			fetching;		/* fetches in flight */
	TimestampTz next_attempt;
	int			backoff_ms;
	struct EsProducer *next;
} EsProducer;

/*
 * What a producer's pull is doing.  It is derived from the handles (never
 * stored beside them, so the two cannot disagree): IDLE, nothing in
 * flight, and es_pull_start_due sends its request once next_attempt has
 * passed; REQUESTING, a request in flight (easy, or a next page asked for
 * ahead, pre_easy); RECEIVED, an answer held in body while what it refers
 * to is fetched (fetching), until es_pull_finish applies or drops it.
 * Pages of a window held in memory (held) are orthogonal: the producer is
 * REQUESTING the next one, or RECEIVED its last.
 */
typedef enum EsPullState
{
	ES_PULL_IDLE,
	ES_PULL_REQUESTING,
	ES_PULL_RECEIVED
} EsPullState;

static inline EsPullState
es_pull_state(const EsProducer *p)
{
	if (p->body != NULL)
		return ES_PULL_RECEIVED;
	if (p->easy != NULL || p->pre_easy != NULL)
		return ES_PULL_REQUESTING;
	return ES_PULL_IDLE;
}

/*
 * What the Eventstream-* headers of a producer's answer say (palloc'd;
 * NULL: not sent).  The protocol version is checked by es_pull_done; the
 * others let es_pull_prefetch_early ask for the next page before this one
 * is parsed.
 */
typedef struct EsPageHead
{
	char	   *protocol;
	char	   *cursor;
	char	   *more;
	char	   *acks;
} EsPageHead;

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

/* pull.c: the producers, the multi handle */
extern CURLM *es_multi;
extern EsFetch *es_fetches;
extern void es_set_str(char **dst, const char *src);
extern int	es_spi_int(int col, int if_null);
extern void es_pull_failed(EsProducer *p, const char *error);
extern char *es_pull_caught(MemoryContext cxt, const char *what, const char *url);

/* pull_page.c: what becomes of an answer */
extern void es_pull_drop_body(EsProducer *p);
extern char *es_pull_parse(EsProducer *p);
extern void es_pull_drop_held(EsProducer *p);
extern void es_pull_finish(EsProducer *p, char *error);
extern void es_pull_deps_round(EsProducer *p);
extern void es_fetch_done(EsFetch *f, CURLcode code);
extern JsonbValue *es_pull_page_field(EsProducer *p, const char *key);

/* pull_prefetch.c: the next page, asked for while one is applied */
extern void es_pull_drop_prefetch(EsProducer *p);
extern void es_pull_take_prefetch(EsProducer *p);
extern char *es_path_after(const char *path, const char *cursor, int cursor_len);
extern char *es_pull_ack(EsProducer *p, const char *path);
extern void es_pull_prefetch(EsProducer *p);
extern void es_pull_prefetch_early(EsProducer *p, const EsPageHead *head);

#endif							/* ES_PULL_INTERNAL_H */
