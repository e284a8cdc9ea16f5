/*-------------------------------------------------------------------------
 *
 * pagejson.h
 *	  Reading a producer's answer into jsonb: src/consumer/pagejson.c.
 *
 * Exports the quick JSON reader, the bounded reading of a whole page and
 * the bound (es_page_budget), for the pulls.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pagejson.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_PAGEJSON_H
#define ES_PAGEJSON_H

#include "utils/jsonb.h"

/*
 * The key an update (or a snapshot's document) read from a page gets when
 * it holds a character the database encoding cannot: the apply fails it
 * with this message.
 */
#define ES_ENCODING_ERROR_KEY	"encoding_error"

/* The sync log's note of such an update (resync() looks for it). */
#define ES_ENCODING_NOTE	"no data kept: a character this database cannot hold"

extern Jsonb *es_read_jsonb(const char *text, size_t len, Size budget, bool wire);
extern Size es_page_budget(void);
extern Jsonb *es_read_page(char *text, size_t len, Size budget, bool wire);

#endif							/* ES_PAGEJSON_H */
