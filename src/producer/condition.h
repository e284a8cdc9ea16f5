/*-------------------------------------------------------------------------
 *
 * condition.h
 *	  Consumer conditions and other untrusted expressions:
 *	  src/producer/condition.c.
 *
 * Exports the checks that keep an expression from escaping the
 * parentheses it is wrapped in and its sandboxed evaluation (also used by
 * the consumer's mapping filters, src/consumer/mapping.c), the docname
 * match of a table's key (used to read documents), and the setting
 * eventstream.condition_timeout.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/condition.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_CONDITION_H
#define ES_CONDITION_H

#include "utils/relcache.h"

/* GUC eventstream.condition_timeout (ms) */
extern int	es_condition_timeout;

extern char *es_docname_match(Relation rel, int paramno);
extern void es_check_expression_tokens(const char *expr, const char *what);
extern void es_check_expression_shape(const char *expr, const char *what);
extern char *es_sandboxed_value(const char *what, const char *sql, Oid role, int nargs,
								Oid *argtypes, Datum *values, bool *found, char **error);

#endif							/* ES_CONDITION_H */
