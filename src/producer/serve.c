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
 *	  src/producer/serve.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/uuid.h"

#include "producer/capture_args.h"

PG_FUNCTION_INFO_V1(eventstream_log_texts);
PG_FUNCTION_INFO_V1(eventstream_log_page);

/* Columns of the logs es_read_logs reads, in its queries' order. */
enum
{
	ES_LOG_ID, ES_LOG_TYPE, ES_LOG_TABLE, ES_LOG_DOCNAME, ES_LOG_DATA, ES_LOG_ORIGIN, ES_LOG_NCOLS
};

/*
 * es_append_string
 *		Append the JSON string of text value t: as it is between quotes when
 *		nothing in it needs escaping (names and keys, nearly always),
 *		through escape_json otherwise.
 */
static void
es_append_string(StringInfo buf, text *t)
{
	const char *s = VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);
	int			i;

	for (i = 0; i < len; i++)
		if ((unsigned char) s[i] < 0x20 || s[i] == '"' || s[i] == '\\')
			break;
	if (i == len)
	{
		appendStringInfoChar(buf, '"');
		appendBinaryStringInfo(buf, s, len);
		appendStringInfoChar(buf, '"');
	}
	else
		escape_json(buf, text_to_cstring(t));
}

/*
 * es_append_text_field
 *		Append ', "name": ' and the JSON string of value (null if isnull).
 */
static void
es_append_text_field(StringInfo buf, const char *name, Datum value, bool isnull)
{
	appendStringInfoString(buf, ", \"");
	appendStringInfoString(buf, name);
	appendStringInfoString(buf, "\": ");
	if (isnull)
		appendStringInfoString(buf, "null");
	else
		es_append_string(buf, DatumGetTextPP(value));
}

/*
 * es_render_log
 *		Append the JSON object of a log (a row of es_read_logs) to buf.
 *		The keys in the order jsonb keeps them (shorter first): the
 *		consumer's parse then finds each object's keys sorted already, a
 *		sixth of its cost.
 */
static void
es_render_log(StringInfo buf, Datum *v, bool *isnull)
{
	char		num[MAXINT8LEN + 1];

	appendStringInfoString(buf, "{\"id\": ");
	appendBinaryStringInfo(buf, num, pg_lltoa(DatumGetInt64(v[ES_LOG_ID]), num));
	appendStringInfoString(buf, ", \"data\": ");
	if (isnull[ES_LOG_DATA])
		appendStringInfoString(buf, "null");
	else
	{
		Jsonb	   *j = DatumGetJsonbP(v[ES_LOG_DATA]);

		(void) JsonbToCString(buf, &j->root, VARSIZE(j));
	}
	if (!isnull[ES_LOG_ORIGIN])
	{
		appendStringInfoString(buf, ", \"origin\": \"");
		appendStringInfoString(buf, DatumGetCString(DirectFunctionCall1(uuid_out, v[ES_LOG_ORIGIN])));
		appendStringInfoChar(buf, '"');
	}
	es_append_text_field(buf, "docname", v[ES_LOG_DOCNAME], isnull[ES_LOG_DOCNAME]);
	es_append_text_field(buf, "ref_table", v[ES_LOG_TABLE], isnull[ES_LOG_TABLE]);
	es_append_text_field(buf, "update_type", v[ES_LOG_TYPE], isnull[ES_LOG_TYPE]);
	appendStringInfoChar(buf, '}');
}

/*
 * EsLogReader: the logs of a list of ids, in its order, read with one
 * query (es_read_logs) and handed out one at a time (es_next_log).
 */
typedef struct EsLogReader
{
	Datum	   *idv;			/* the ids wanted */
	int			nids;
	bool		range;			/* one walk of their id range */
	int			next;			/* the next id wanted */
	uint64		row;			/* the next row of SPI_tuptable */
	Datum		values[ES_LOG_NCOLS];
	bool		isnull[ES_LOG_NCOLS];
} EsLogReader;

/*
 * es_read_logs
 *		Read the logs of ids (non-empty) into SPI_tuptable; the caller is
 *		connected to SPI.  A negative id stands for the whole current
 *		document of that log, served as a Create.
 */
static void
es_read_logs(EsLogReader *r, ArrayType *ids)
{
	deconstruct_array(ids, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE, &r->idv, NULL, &r->nids);
	r->next = 0;
	r->row = 0;

	/*
	 * The usual page: ids ascending, of logs close together.  Then one walk
	 * of the primary key over their range costs less than a look-up per
	 * id; the logs in between that are not wanted are skipped here.
	 */
	r->range = true;
	for (int i = 0; i < r->nids && r->range; i++)
		r->range = DatumGetInt64(r->idv[i]) > 0 &&
			(i == 0 || DatumGetInt64(r->idv[i]) > DatumGetInt64(r->idv[i - 1]));
	r->range = r->range &&
		DatumGetInt64(r->idv[r->nids - 1]) - DatumGetInt64(r->idv[0]) < (int64) r->nids * 4;

	if (r->range)
	{
		Oid			argtypes[2] = {INT8OID, INT8OID};
		Datum		args[2] = {r->idv[0], r->idv[r->nids - 1]};

		if (SPI_execute_with_args("SELECT l.id, l.update_type, l.ref_table, l.docname, l.data, l.origin"
								  "  FROM eventstream.update_log l WHERE l.id BETWEEN $1 AND $2 ORDER BY l.id",
								  2, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read update logs");
	}
	else
	{
		Oid			argtypes[1] = {INT8ARRAYOID};
		Datum		args[1] = {PointerGetDatum(ids)};

		if (SPI_execute_with_args(psprintf("SELECT l.id, CASE WHEN u.id < 0 THEN 'Create' ELSE l.update_type END,"
										   "       l.ref_table, l.docname,"
										   "       CASE WHEN u.id < 0"
										   "            THEN eventstream._document(%s, l.docname)"
										   "            ELSE l.data END,"
										   "       l.origin"
										   "  FROM pg_catalog.unnest($1) WITH ORDINALITY AS u(id, ord)"
										   "  JOIN eventstream.update_log l ON l.id = pg_catalog.abs(u.id)"
										   " ORDER BY u.ord",
										   es_has_function("_published", TEXTOID) ?
										   "eventstream._published(l.ref_table)" :
										   "pg_catalog.to_regclass(l.ref_table)"),
								  1, argtypes, args, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read update logs");
	}
}

/*
 * es_next_log
 *		The next log wanted into r->values / r->isnull; false when there is
 *		none left.  *consumed is set to how many of the ids were used up,
 *		this log's included (the logs of ids that are gone are skipped).
 */
static bool
es_next_log(EsLogReader *r, int *consumed)
{
	while (r->row < SPI_processed)
	{
		heap_deform_tuple(SPI_tuptable->vals[r->row++], SPI_tuptable->tupdesc, r->values, r->isnull);
		if (r->range)
		{
			int64		id = DatumGetInt64(r->values[ES_LOG_ID]);

			/* Not wanted (and those wanted that are gone are skipped). */
			while (r->next < r->nids && DatumGetInt64(r->idv[r->next]) < id)
				r->next++;
			if (r->next == r->nids || DatumGetInt64(r->idv[r->next]) != id)
				continue;
		}
		*consumed = ++r->next;
		return true;
	}
	*consumed = r->nids;
	return false;
}

/*
 * eventstream_log_texts
 *		_log_texts(ids bigint[]) -> text[]: the JSON text of each log, in
 *		the order of ids (see es_read_logs).
 */
Datum
eventstream_log_texts(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);
	MemoryContext cxt = CurrentMemoryContext;
	EsLogReader r;
	Datum	   *texts;
	int			n = 0;
	int			consumed;
	ArrayType  *result;
	StringInfoData buf;

	if (ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids)) == 0)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));

	SPI_connect();
	es_read_logs(&r, ids);
	texts = MemoryContextAlloc(cxt, sizeof(Datum) * r.nids);
	initStringInfo(&buf);
	while (es_next_log(&r, &consumed))
	{
		resetStringInfo(&buf);
		es_render_log(&buf, r.values, r.isnull);
		/* In the caller's memory: SPI's goes away at SPI_finish(). */
		texts[n++] = PointerGetDatum(MemoryContextAllocHuge(cxt, VARHDRSZ + buf.len));
		SET_VARSIZE(DatumGetPointer(texts[n - 1]), VARHDRSZ + buf.len);
		memcpy(VARDATA(DatumGetPointer(texts[n - 1])), buf.data, buf.len);
	}
	SPI_finish();
	result = n == 0 ? construct_empty_array(TEXTOID) : construct_array(texts, n, TEXTOID, -1, false, TYPALIGN_INT);
	PG_RETURN_ARRAYTYPE_P(result);
}

/*
 * eventstream_log_page
 *		_log_page(ids bigint[], max_bytes bigint, OUT n integer, OUT body
 *		text): the logs of ids as the inside of a page's "updates" array
 *		(each as _log_texts renders it, ", " between them), as many of them
 *		as fit in max_bytes, at least one; n is how many of the ids that
 *		covers (logs that are gone are left out).  One piece of text built
 *		once, instead of an array of texts measured and joined in PL/pgSQL.
 */
Datum
eventstream_log_page(PG_FUNCTION_ARGS)
{
	ArrayType  *ids = PG_GETARG_ARRAYTYPE_P(0);
	int64		max_bytes = PG_GETARG_INT64(1);
	MemoryContext cxt = CurrentMemoryContext;
	TupleDesc	desc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	int			n = 0;
	text	   *body;
	StringInfoData buf;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	initStringInfo(&buf);
	if (ArrayGetNItems(ARR_NDIM(ids), ARR_DIMS(ids)) > 0)
	{
		EsLogReader r;
		int			consumed;
		int			fits = 0;	/* buf.len before the log being added */
		bool		cut = false;

		SPI_connect();
		es_read_logs(&r, ids);
		while (es_next_log(&r, &consumed))
		{
			if (buf.len > 0)
				appendStringInfoString(&buf, ", ");
			es_render_log(&buf, r.values, r.isnull);
			/* Each log counts its text and a separator, as it always has. */
			if (fits > 0 && (int64) buf.len + 2 > max_bytes)
			{
				buf.len = fits;
				buf.data[fits] = '\0';
				cut = true;
				break;
			}
			fits = buf.len;
			n = consumed;
		}
		if (!cut)
			n = r.nids;			/* all of them, gone ones included */
		body = (text *) MemoryContextAllocHuge(cxt, VARHDRSZ + buf.len);
		SPI_finish();
	}
	else
		body = palloc(VARHDRSZ);
	SET_VARSIZE(body, VARHDRSZ + buf.len);
	memcpy(VARDATA(body), buf.data, buf.len);
	values[0] = Int32GetDatum(n);
	values[1] = PointerGetDatum(body);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}
