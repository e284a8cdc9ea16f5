/*-------------------------------------------------------------------------
 *
 * failed.h
 *	  Server log lines for updates that failed to apply:
 *	  src/consumer/failed.c.
 *
 * Exports the note the apply makes of every Failed sync_log row it
 * writes, and the setting eventstream.failed_update_log_limit.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/failed.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_FAILED_H
#define ES_FAILED_H

/* GUC eventstream.failed_update_log_limit: lines per producer and minute */
extern int	es_failed_log_limit;

extern void es_failed_note(const char *producer, int64 sync_log_id, const char *update_type,
						   const char *table, const char *docname, const char *error);

#endif							/* ES_FAILED_H */
