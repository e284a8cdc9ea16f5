/*-------------------------------------------------------------------------
 *
 * serve.c
 *	  Producer side: the JSON text of update logs as pages serve them.
 *
 * eventstream._log_texts(ids) renders each log as the object a page
 * carries, {"id", "data"[, "origin"], "docname", "ref_table", "update_type"},
 * straight into text: the logs are read with one query and formatted here,
 * instead of by json_build_object() per row (which looks up every
 * argument's type and output function each time).  This is the serving
 * path's hot spot: a page of 5000 updates is 5000 of these.  "origin" is
 * there only for a change that came from another site: the consumer takes
 * a log without one for the producer's own (the page is parsed whole on
 * the consumer, and the envelope is most of it).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/serve.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "eventstream.h"

PG_FUNCTION_INFO_V1(eventstream_log_texts);

/*
 * es_append_text_field
 *		Append ', "name": ' and the JSON string of value (null if isnull).
 */
static void
es_append_text_field(StringInfo buf, const char *name, Datum value, bool isnull)
{
	appendStringInfo(buf, ", \"%s\": ", name);
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, TextDatumGetCString(value));
}

/*
 * eventstream_log_texts
 *		_log_texts(ids bigint[]) -> text[]: the JSON text of each log, in
 *		the order of ids.  A negative id stands for the whole current
 *		document of that log, served as a Create.
 */
Datum
eventstream_log_texts(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);
	MemoryContext cxt = CurrentMemoryContext;
	Datum	   *idv;
	int			nids;
	bool		range = true;
	int			next = 0;		/* in range mode: the next id wanted */
	Datum	   *texts;
	int			n = 0;
	ArrayType  *result;
	StringInfoData buf;

	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &idv, NULL, &nids);
	if (nids == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));

	/*
	 * The usual page: ids ascending, of logs close together.  Then one walk
	 * of the primary key over their range costs less than a look-up per
	 * id; the logs in between that are not wanted are skipped here.
	 */
	for (int i = 0; i < nids && range; i++)
		range = DatumGetInt64(idv[i]) > 0 && (i == 0 || DatumGetInt64(idv[i]) > DatumGetInt64(idv[i - 1]));
	range = range && DatumGetInt64(idv[nids - 1]) - DatumGetInt64(idv[0]) < (int64) nids * 4;

	SPI_connect();
	if (range)
	{
		Oid			argtypes[2] = {INT8OID, INT8OID};
		Datum		args[2] = {idv[0], idv[nids - 1]};

		if (SPI_execute_with_args("SELECT l.id, l.update_type, l.ref_table, l.docname, l.data, l.origin"
								  "  FROM eventstream.update_log l WHERE l.id BETWEEN $1 AND $2 ORDER BY l.id",
								  2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read update logs");
	}
	else
	{
		Oid			argtypes[1] = {INT8ARRAYOID};
		Datum		args[1] = {PointerGetDatum(ids)};

		if (SPI_execute_with_args("SELECT l.id, CASE WHEN u.id < 0 THEN 'Create' ELSE l.update_type END,"
								  "       l.ref_table, l.docname,"
								  "       CASE WHEN u.id < 0"
								  "            THEN eventstream._document(pg_catalog.to_regclass(l.ref_table), l.docname)"
								  "            ELSE l.data END,"
								  "       l.origin"
								  "  FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(id, ord)"
								  "  JOIN eventstream.update_log l ON l.id = pg_catalog.abs(u.id)"
								  " ORDER BY u.ord",
								  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read update logs");
	}

	texts = MemoryContextAlloc(cxt, sizeof(Datum) * nids);
	initStringInfo(&buf);
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Datum		d;

		d = SPI_getbinval(tup, desc, 1, &isnull);
		if (range)
		{
			/* Not wanted (and those wanted that are gone are skipped). */
			while (next < nids && DatumGetInt64(idv[next]) < DatumGetInt64(d))
				next++;
			if (next == nids || DatumGetInt64(idv[next]) != DatumGetInt64(d))
				continue;
			next++;
		}
		/*
		 * The keys in the order jsonb keeps them (shorter first): the
		 * consumer's parse then finds each object's keys sorted already,
		 * a sixth of its cost.
		 */
		resetStringInfo(&buf);
		appendStringInfo(&buf, "{\"id\": " INT64_FORMAT, DatumGetInt64(d));
		d = SPI_getbinval(tup, desc, 5, &isnull);
		appendStringInfoString(&buf, ", \"data\": ");
		if (isnull)
			appendStringInfoString(&buf, "null");
		else
		{
			Jsonb	   *j = DatumGetJsonbP(d);

			(void) JsonbToCString(&buf, &j->root, VARSIZE(j));
		}
		d = SPI_getbinval(tup, desc, 6, &isnull);
		if (!isnull)
			appendStringInfo(&buf, ", \"origin\": \"%s\"", DatumGetCString(DirectFunctionCall1(uuid_out, d)));
		d = SPI_getbinval(tup, desc, 4, &isnull);
		es_append_text_field(&buf, "docname", d, isnull);
		d = SPI_getbinval(tup, desc, 3, &isnull);
		es_append_text_field(&buf, "ref_table", d, isnull);
		d = SPI_getbinval(tup, desc, 2, &isnull);
		es_append_text_field(&buf, "update_type", d, isnull);
		appendStringInfoChar(&buf, '}');
		{
			/* In the caller's memory: SPI's goes away at SPI_finish(). */
			text	   *t = MemoryContextAlloc(cxt, VARHDRSZ + buf.len);

			SET_VARSIZE(t, VARHDRSZ + buf.len);
			memcpy(VARDATA(t), buf.data, buf.len);
			texts[n++] = PointerGetDatum(t);
		}
	}
	SPI_finish();
	result = n == 0 ? construct_empty_array(TEXTOID) : construct_array(texts, n, TEXTOID, -1, false, TYPALIGN_INT);
	PG_RETURN_ARRAYTYPE_P(result);
}
