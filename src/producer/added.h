/*-------------------------------------------------------------------------
 *
 * added.h
 *	  Columns added to a captured table after its capture began: they
 *	  travel in every Update's diff (added.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/added.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_ADDED_H
#define ES_ADDED_H

#include "producer/rowjson.h"

/* The capture trigger argument that names them: 'added:<column>[,...]'. */
#define ES_ADDED_PREFIX "added:"

extern int	es_added_strip_arg(char **args, int nargs, const char **names);
extern void es_added_mark(EsEncoder *enc, const char *names);
extern int	es_added_append(EsEncoder *enc, int *out, int n);

#endif							/* ES_ADDED_H */
