/*-------------------------------------------------------------------------
 *
 * document.c
 *	  Reading one whole document (row plus child rows) by its docname.
 *
 * eventstream._document(tbl, docname) renders a document exactly as the
 * capture trigger renders a Create, so that whatever reads documents on the
 * producer (condition backlog, the documents and snapshot endpoints, the
 * consumer's dependency fetches) sees one format.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/document.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/rel.h"

#include "producer/capture_args.h"
#include "producer/condition.h"
#include "producer/rowjson.h"

PG_FUNCTION_INFO_V1(eventstream_document);

/*
 * es_push_rows
 *		Push every row of the current SPI result as an object.
 */
static void
es_push_rows(JsonbParseState **st)
{
	EsEncoder  *enc = es_encoder_build(SPI_tuptable->tupdesc, NULL, 0,
									   CurrentMemoryContext);
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
		es_row_to_jsonb(st, enc, SPI_tuptable->vals[i], SPI_tuptable->tupdesc, true);
}

/*
 * eventstream_document
 *		eventstream._document(tbl regclass, docname text) → jsonb
 *
 * NULL when no such row exists.  Reads with the caller's privileges.
 */
Datum
eventstream_document(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Datum		docname = PG_GETARG_DATUM(1);
	MemoryContext callercxt = CurrentMemoryContext;
	JsonbParseState *st = NULL;
	Relation	rel;
	char	   *relname;
	char	   *match;
	Oid			argtypes[2] = {TEXTOID, OIDOID};
	Datum		values[2];
	int			rc;
	uint64		nchildren,
				i;
	SPITupleTable *children;
	Jsonb	   *result;
	MemoryContext spicxt;
	int			styles;

	styles = es_output_styles_push();
	rel = table_open(relid, AccessShareLock);
	relname = es_scan_relname(rel);
	match = es_docname_match(rel, 1);
	table_close(rel, AccessShareLock);

	SPI_connect();
	values[0] = docname;
	rc = SPI_execute_with_args(psprintf("SELECT * FROM %s AS doc WHERE %s",
										relname, match),
							   1, argtypes, values, NULL, true, 2);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		SPI_finish();
		es_output_styles_pop(styles);
		PG_RETURN_NULL();
	}

	/* The jsonb parse state must outlive SPI_finish: build it outside. */
	spicxt = MemoryContextSwitchTo(callercxt);
	{
		EsEncoder  *enc = es_encoder_build(SPI_tuptable->tupdesc, NULL, 0, callercxt);

		es_row_to_jsonb(&st, enc, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, false);
	}
	MemoryContextSwitchTo(spicxt);

	/*
	 * Child tables: their published name (the wire name under the SQL of
	 * version 1.0) and a query for the rows of this parent.
	 */
	values[1] = ObjectIdGetDatum(relid);
	rc = SPI_execute_with_args(psprintf("SELECT eventstream.%s(child),"
										"       eventstream._child_rows_query(child, parent)"
										"  FROM eventstream.child_table WHERE parent = $2"
										" ORDER BY 1",
										es_has_function("_published_name", REGCLASSOID) ?
										"_published_name" : "_wire_name"),
							   2, argtypes, values, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	children = SPI_tuptable;
	nchildren = SPI_processed;
	for (i = 0; i < nchildren; i++)
	{
		char	   *key = SPI_getvalue(children->vals[i], children->tupdesc, 1);
		char	   *query = SPI_getvalue(children->vals[i], children->tupdesc, 2);

		rc = SPI_execute_with_args(query, 1, argtypes, values, NULL, true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
		MemoryContextSwitchTo(callercxt);
		key = pstrdup(key);
		es_push_key(&st, key, strlen(key));
		pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
		es_push_rows(&st);
		pushJsonbValue(&st, WJB_END_ARRAY, NULL);
		MemoryContextSwitchTo(spicxt);
	}

	MemoryContextSwitchTo(callercxt);
	result = JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
	MemoryContextSwitchTo(spicxt);
	SPI_finish();
	es_output_styles_pop(styles);
	PG_RETURN_JSONB_P(result);
}
