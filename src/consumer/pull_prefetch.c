/*-------------------------------------------------------------------------
 *
 * pull_prefetch.c
 *	  Asking a producer for its next page while one is applied.
 *
 * When the producer takes ack=, the request for the page after the one
 * just received goes out before that one is parsed and applied, so that
 * the producer builds it meanwhile (es_pull_prefetch_at).  The answer is
 * used only if the apply then says exactly that request comes next;
 * otherwise it is dropped.  Also here: the cursor and ack= of a path.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pull_prefetch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "utils/builtins.h"

#include "consumer/client.h"
#include "consumer/pull_internal.h"

/*
 * es_pull_drop_prefetch
 *		Drop the request for the next page made while this one is applied,
 *		finished or not.
 */
void
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
	p->pre_state = ES_PRE_NONE;
	p->pre_wait = false;
}

/*
 * es_pull_take_prefetch
 *		The next page's request finished and is the producer's current
 *		one: make it the producer's request (libcurl writes into pre_resp
 *		until the transfer ends, so it is moved only then).
 */
void
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
	p->pre_state = ES_PRE_NONE;
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
char *
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
char *
es_pull_ack(EsProducer *p, const char *path)
{
	const char *at;
	const char *end;

	if (!es_path_cursor(p->held ? p->held_path : path, &at, &end))
		return "";
	return psprintf("&ack=%.*s", (int) (end - at), at);
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
	p->pre_state = ES_PRE_SENT;
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
void
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
 *		es_pull_prefetch_at before the page just received is parsed, from
 *		what its headers say (see docs/protocol.md): Eventstream-Acks: true,
 *		Eventstream-More: true or false, and an Eventstream-Cursor that is
 *		plain (digits, lowercase letters, ':', ',', '/', as the producer
 *		writes cursors).  Parsing a page takes about as long as the producer
 *		takes to build the next: asked for first, the two overlap.  An
 *		answer without those headers (a producer that sends none) waits for
 *		the parse (es_pull_prefetch); and a guess is only a request: its
 *		answer is used only if the page, parsed and applied, says exactly
 *		that path next.  es_pull_done has checked the protocol version.
 */
void
es_pull_prefetch_early(EsProducer *p, const EsPageHead *head)
{
	const char *cursor = head->cursor;
	int			len;
	bool		drained;

	if (head->protocol == NULL || cursor == NULL || head->more == NULL || head->acks == NULL ||
		strcmp(head->acks, "true") != 0)
		return;
	if (strcmp(head->more, "false") == 0)
		drained = true;
	else if (strcmp(head->more, "true") == 0)
		drained = false;
	else
		return;
	for (len = 0; cursor[len] != '\0'; len++)
	{
		char		c = cursor[len];

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || c == ':' || c == ',' || c == '/'))
			return;
	}
	if (len == 0)
		return;
	es_pull_prefetch_at(p, cursor, len, drained);
}
