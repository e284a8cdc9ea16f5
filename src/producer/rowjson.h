/*-------------------------------------------------------------------------
 *
 * rowjson.h
 *	  Rows as jsonb documents: the encoder of src/producer/rowjson.c.
 *
 * Exports the per-descriptor encoder (EsEncoder) and what renders rows,
 * keys and docnames with it, for the capture trigger and the reading of
 * whole documents, and es_qualified_relname for the producer's messages.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/rowjson.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_ROWJSON_H
#define ES_ROWJSON_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"

/*
 * How one column is turned into a jsonb value.  Decided once per column
 * (es_encoder_build) so the per-row work is a switch and, at most, a call to
 * a cached output function.
 */
typedef enum EsValueKind
{
	ES_KIND_BOOL,
	ES_KIND_INT,				/* int2/int4/int8: JSON number */
	ES_KIND_FLOAT,				/* float4/float8: shortest exact number, or
								 * string for -0/NaN/Inf */
	ES_KIND_NUMERIC,			/* numeric: number, or string for NaN/Inf */
	ES_KIND_DATETIME,			/* date/time types: ISO 8601 string */
	ES_KIND_TEXT				/* anything else (json and jsonb too): the
								 * type's text form, in fixed styles */
} EsValueKind;

typedef struct EsColumn
{
	AttrNumber	attnum;			/* 1-based attribute number */
	char	   *name;			/* column name (jsonb key) */
	int			namelen;
	Oid			typid;			/* declared type (domains kept) */
	Oid			basetypid;		/* base type after domains */
	Oid			collation;
	int16		typlen;
	bool		typbyval;
	EsValueKind kind;
	FmgrInfo	outfn;			/* output function, for ES_KIND_TEXT */
	bool		has_eq;			/* eqfn is valid */
	FmgrInfo	eqfn;			/* default equality operator's function */
} EsColumn;

/*
 * Encoder for the rows of one tuple descriptor.  Allocated in a long-lived
 * context chosen by the caller; columns[] skips dropped attributes.
 */
typedef struct EsEncoder
{
	int			ncolumns;
	EsColumn   *columns;
	int			npk;			/* number of primary key columns */
	int		   *pk;				/* indexes into columns[] in key order */
	int			nadded;			/* columns added since capture began, */
	int		   *added;			/* which every Update sends (added.c) */
} EsEncoder;

extern EsEncoder *es_encoder_build(TupleDesc tupdesc, const AttrNumber *pkattnums,
								   int npk, MemoryContext mcxt);
extern int	es_output_styles_push(void);
extern void es_output_styles_pop(int level);
extern void es_push_value(JsonbParseState **state, EsColumn *col, Datum value,
						  bool isnull, JsonbIteratorToken tok);
extern JsonbValue *es_row_to_jsonb(JsonbParseState **state, EsEncoder *enc,
								   HeapTuple tuple, TupleDesc tupdesc,
								   bool close_object);
extern void es_push_key(JsonbParseState **state, const char *key, int len);
extern bool es_values_equal(EsColumn *col, Datum a, Datum b);
extern char *es_docname(EsEncoder *enc, const int *colidx, int ncols,
						HeapTuple tuple, TupleDesc tupdesc);
extern char *es_qualified_relname(Relation rel);
extern char *es_scan_relname(Relation rel);

#endif							/* ES_ROWJSON_H */
