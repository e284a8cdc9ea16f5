/*-------------------------------------------------------------------------
 *
 * failed.c
 *	  Consumer side: a WARNING in the server log for each update that
 *	  failed to apply, rate-limited per producer.
 *
 * The apply notes every Failed sync_log row it writes (es_failed_note).
 * The lines are written when the transaction that wrote the rows commits:
 * a row that a rollback took away is never reported, and every line names
 * a sync_log id that exists.  Each line names the producer, the local table,
 * the docname, the first line of the error, and the call that applies the
 * update again; never the document, nor the error's detail (which may
 * quote the row).  The lines go to the server log only: a session calling
 * eventstream.sync_now() reads eventstream.sync_log.
 *
 * At most eventstream.failed_update_log_limit lines are written per
 * producer in a minute (per process: the site worker does the applying);
 * the failures beyond are counted and reported in one line, at the end of
 * the transaction that went over the limit, and those that follow in the
 * same minute at the first commit after it.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/failed.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "mb/pg_wchar.h"
#include "nodes/pg_list.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "consumer/failed.h"

#define ES_FAILED_WINDOW_MS	60000	/* the limit's period: a minute */
#define ES_FAILED_ERROR_MAX	200		/* bytes of the error a line quotes */
#define ES_FAILED_NAME_MAX	100		/* bytes of a docname a line quotes */

/* GUC eventstream.failed_update_log_limit: lines per producer per minute */
int			es_failed_log_limit = 10;

/*
 * A failure waiting for its transaction to commit (in TopTransactionContext):
 * one Failed row with its line, or (line NULL) how many more rows failed
 * that no line is kept for.
 */
typedef struct EsFailedNote
{
	int			level;			/* transaction nest level that wrote it */
	char	   *producer;
	char	   *line;			/* the WARNING's message, or NULL */
	int64		count;			/* line NULL: how many */
} EsFailedNote;

/* The rate limit's state for one producer (in es_failed_cxt). */
typedef struct EsFailedWindow
{
	char	   *producer;
	TimestampTz start;			/* when its minute began */
	int			lines;			/* lines written in it */
	bool		summarized;		/* a count line was written in it */
	int64		unwritten;		/* failures not written, not counted yet */
} EsFailedWindow;

static List *es_failed_pending = NIL;	/* of EsFailedNote */
static List *es_failed_windows = NIL;	/* of EsFailedWindow */
static MemoryContext es_failed_cxt = NULL;
static bool es_failed_callbacks = false;

static void es_failed_xact_callback(XactEvent event, void *arg);
static void es_failed_warn(const char *line);
static void es_failed_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									   SubTransactionId parentSubid, void *arg);

/*
 * es_failed_clip
 *		s cut to at most max bytes (whole characters), its line breaks made
 *		spaces; palloc'd.
 */
static char *
es_failed_clip(const char *s, int max)
{
	int			len = strlen(s);
	char	   *result;

	if (len > max)
		len = pg_mbcliplen(s, len, max);
	result = pnstrdup(s, len);
	for (char *c = result; *c; c++)
		if (*c == '\n' || *c == '\r')
			*c = ' ';
	return result;
}

/*
 * es_failed_note
 *		Note a Failed sync_log row just written in the current transaction:
 *		its line is written if the transaction commits (and the limit
 *		allows).  error is the row's error; only its first line is quoted.
 */
void
es_failed_note(const char *producer, int64 sync_log_id, const char *update_type,
			   const char *table, const char *docname, const char *error)
{
	MemoryContext old;
	EsFailedNote *note;
	int			level = GetCurrentTransactionNestLevel();
	int			kept = 0;
	const char *nl;
	char	   *message;
	ListCell   *lc;

	if (!es_failed_callbacks)
	{
		RegisterXactCallback(es_failed_xact_callback, NULL);
		RegisterSubXactCallback(es_failed_subxact_callback, NULL);
		es_failed_callbacks = true;
	}

	/*
	 * No more lines are kept for a producer than the limit lets through in
	 * a minute: the others only count.
	 */
	foreach(lc, es_failed_pending)
	{
		EsFailedNote *n = lfirst(lc);

		if (n->line != NULL && strcmp(n->producer, producer) == 0)
			kept++;
	}
	if (kept >= es_failed_log_limit)
	{
		foreach(lc, es_failed_pending)
		{
			EsFailedNote *n = lfirst(lc);

			if (n->line == NULL && n->level == level && strcmp(n->producer, producer) == 0)
			{
				n->count++;
				return;
			}
		}
	}

	old = MemoryContextSwitchTo(TopTransactionContext);
	note = palloc0(sizeof(EsFailedNote));
	note->level = level;
	note->producer = pstrdup(producer);
	if (kept >= es_failed_log_limit)
		note->count = 1;
	else
	{
		error = error ? error : "";
		nl = strchr(error, '\n');
		message = es_failed_clip(error, nl ? Min(nl - error, ES_FAILED_ERROR_MAX) : ES_FAILED_ERROR_MAX);
		/* A Truncate names no document (its docname is empty). */
		note->line = psprintf("eventstream: %s from producer %s failed to apply to %s%s%s%s: %s; "
							  "apply it again with SELECT eventstream.resync(" INT64_FORMAT ")",
							  update_type ? update_type : "update", producer, table ? table : "?",
							  docname && docname[0] ? ", docname \"" : "",
							  docname && docname[0] ? es_failed_clip(docname, ES_FAILED_NAME_MAX) : "",
							  docname && docname[0] ? "\"" : "",
							  message, sync_log_id);
	}
	es_failed_pending = lappend(es_failed_pending, note);
	MemoryContextSwitchTo(old);
}

/*
 * es_failed_window
 *		The rate limit's state for a producer, made if need be.
 */
static EsFailedWindow *
es_failed_window(const char *producer)
{
	ListCell   *lc;
	EsFailedWindow *w;
	MemoryContext old;

	foreach(lc, es_failed_windows)
	{
		w = lfirst(lc);
		if (strcmp(w->producer, producer) == 0)
			return w;
	}
	if (es_failed_cxt == NULL)
		es_failed_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream failed updates",
											  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(es_failed_cxt);
	w = palloc0(sizeof(EsFailedWindow));
	w->producer = pstrdup(producer);
	es_failed_windows = lappend(es_failed_windows, w);
	MemoryContextSwitchTo(old);
	return w;
}

/*
 * es_failed_warn
 *		Write one line to the server log as a WARNING, without the
 *		statement or context; not to the client of a session (whose
 *		client_min_messages is set aside meanwhile: a WARNING cannot fail).
 */
static void
es_failed_warn(const char *line)
{
	int			save = client_min_messages;

	client_min_messages = ERROR;
	ereport(WARNING,
			(errmsg_internal("%s", line),
			 errhidestmt(true), errhidecontext(true)));
	client_min_messages = save;
}

/*
 * es_failed_count_line
 *		Write the line that counts a producer's failures not written one by
 *		one.
 */
static void
es_failed_count_line(EsFailedWindow *w)
{
	es_failed_warn(psprintf("eventstream: and " INT64_FORMAT " more failed updates from producer %s "
							"(at most %d lines a minute): see eventstream.sync_log WHERE status = 'Failed'",
							w->unwritten, w->producer, es_failed_log_limit));
	w->unwritten = 0;
}

/*
 * es_failed_write
 *		At commit: write the lines of the failures noted, as the limit
 *		allows, and the count lines that are due.
 */
static void
es_failed_write(void)
{
	TimestampTz now = GetCurrentTimestamp();
	ListCell   *lc;

	foreach(lc, es_failed_pending)
	{
		EsFailedNote *n = lfirst(lc);
		EsFailedWindow *w = es_failed_window(n->producer);

		if (w->start == 0 || TimestampDifferenceExceeds(w->start, now, ES_FAILED_WINDOW_MS))
		{
			/* A new minute; what the last one did not write is told first. */
			if (w->unwritten > 0)
				es_failed_count_line(w);
			w->start = now;
			w->lines = 0;
			w->summarized = false;
		}
		if (n->line != NULL && w->lines < es_failed_log_limit)
		{
			es_failed_warn(n->line);
			w->lines++;
		}
		else
			w->unwritten += n->line != NULL ? 1 : n->count;
	}

	foreach(lc, es_failed_windows)
	{
		EsFailedWindow *w = lfirst(lc);

		if (w->unwritten == 0)
			continue;
		if (!w->summarized)
		{
			/* Over the limit in this transaction: said at once. */
			es_failed_count_line(w);
			w->summarized = true;
		}
		else if (TimestampDifferenceExceeds(w->start, now, ES_FAILED_WINDOW_MS))
		{
			/* The rest of a minute that went over the limit. */
			es_failed_count_line(w);
			w->start = 0;
		}
	}
}

/*
 * es_failed_xact_callback
 *		Write the lines when the transaction commits; forget them however
 *		it ends.
 */
static void
es_failed_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (es_failed_pending != NIL || es_failed_windows != NIL)
				es_failed_write();
			es_failed_pending = NIL;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			es_failed_pending = NIL;	/* freed with TopTransactionContext */
			break;
		default:
			break;
	}
}

/*
 * es_failed_subxact_callback
 *		A subtransaction that rolls back takes its rows, and their notes,
 *		away; one that commits hands them to its parent.
 */
static void
es_failed_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						   SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	ListCell   *lc;

	if (es_failed_pending == NIL)
		return;
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		foreach(lc, es_failed_pending)
		{
			EsFailedNote *n = lfirst(lc);

			if (n->level >= level)
				es_failed_pending = foreach_delete_current(es_failed_pending, lc);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		foreach(lc, es_failed_pending)
		{
			EsFailedNote *n = lfirst(lc);

			if (n->level >= level)
				n->level = level - 1;
		}
	}
}
