/*-------------------------------------------------------------------------
 *
 * apply_values.c
 *	  Turning the values of a page back into the column values written on
 *	  the producer, and local rows into the page's format.
 *
 * The producer writes each value as rowjson.c says: JSON booleans and
 * numbers, SQL NULL as JSON null, and every other value (json and jsonb
 * included) as a JSON string of its PostgreSQL text in fixed styles.  Here
 * each value goes back through the input function of the local column's
 * type, so the consumer stores exactly the value the producer had: the
 * text of a string, the digits of a number, "true" / "false".  A JSON
 * object or array (a json or jsonb value of a producer of protocol version
 * 1, or one a mapping built) is read as its JSON text.
 *
 * jsonb_populate_record is not used for this: it takes a JSON null for SQL
 * NULL in a jsonb column too, reads a string for a json column as a JSON
 * string, and fills arrays and composites from JSON arrays and objects.
 * _populate() is its counterpart under the rules above, for the apply's
 * statements; the straight writes of apply_direct.c call es_value_datum
 * directly.  _row_json() renders a local row in the producer's format, so
 * that what the statements return (a row, its key) reads back the same.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_values.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/typcache.h"

#include "consumer/apply.h"
#include "producer/rowjson.h"

PG_FUNCTION_INFO_V1(eventstream_populate);
PG_FUNCTION_INFO_V1(eventstream_row_json);

/*
 * es_value_input_init
 *		Set in up to read values of type typid (with typmod) into datums;
 *		its function lives in mcxt.
 */
void
es_value_input_init(EsValueInput *in, Oid typid, int32 typmod, MemoryContext mcxt)
{
	Oid			infunc;

	getTypeInputInfo(typid, &infunc, &in->ioparam);
	fmgr_info_cxt(infunc, &in->input, mcxt);
	in->typmod = typmod;
}

/*
 * es_value_datum
 *		The datum of value v (not JSON null: the caller makes that SQL NULL)
 *		for a column read by in: the column's input function applied to the
 *		string (without its quotes), to the number's digits, to true or
 *		false, or to the JSON text of an object or array.  Raises what the
 *		input function raises (a value that is not of the type, a domain's
 *		constraint).
 */
Datum
es_value_datum(EsValueInput *in, JsonbValue *v)
{
	char	   *str;

	switch (v->type)
	{
		case jbvString:
			str = pnstrdup(v->val.string.val, v->val.string.len);
			break;
		case jbvNumeric:
			str = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
			break;
		case jbvBool:
			str = v->val.boolean ? "true" : "false";
			break;
		case jbvBinary:
			str = JsonbToCString(NULL, v->val.binary.data, v->val.binary.len);
			break;
		default:
			elog(ERROR, "unexpected jsonb value type %d", (int) v->type);
			str = NULL;			/* keep compiler quiet */
	}
	return InputFunctionCall(&in->input, str, in->ioparam, in->typmod);
}

/* What _populate() keeps between calls at one call site. */
typedef struct EsPopulateCache
{
	Oid			typid;			/* the row type */
	uint64		tupdesc_id;		/* the identifier of its descriptor */
	TupleDesc	tupdesc;		/* a copy of the descriptor */
	EsValueInput *inputs;		/* per attribute */
} EsPopulateCache;

/*
 * eventstream_populate
 *		eventstream._populate(base anyelement, doc jsonb) → anyelement
 *
 * A row of base's row type whose columns are doc's fields of the same names
 * read by es_value_datum; a column doc lacks, or has as JSON null, is NULL.
 * base only names the type: its value is not used.  doc must be an object.
 */
Datum
eventstream_populate(PG_FUNCTION_ARGS)
{
	Oid			typid = get_fn_expr_argtype(fcinfo->flinfo, 0);
	EsPopulateCache *cache = fcinfo->flinfo->fn_extra;
	TypeCacheEntry *tce;
	Jsonb	   *doc;
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tuple;

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	doc = PG_GETARG_JSONB_P(1);
	if (!JB_ROOT_IS_OBJECT(doc) || JB_ROOT_IS_SCALAR(doc))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("a row's values must be a JSON object")));

	tce = lookup_type_cache(typid, TYPECACHE_TUPDESC);
	if (tce->tupDesc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("type %s is not a row type", format_type_be(typid))));
	if (cache == NULL || cache->typid != typid || cache->tupdesc_id != tce->tupDesc_identifier)
	{
		MemoryContext mcxt = fcinfo->flinfo->fn_mcxt;
		MemoryContext oldcxt = MemoryContextSwitchTo(mcxt);

		cache = palloc0(sizeof(EsPopulateCache));
		cache->typid = typid;
		cache->tupdesc_id = tce->tupDesc_identifier;
		cache->tupdesc = CreateTupleDescCopy(tce->tupDesc);
		cache->inputs = palloc0(sizeof(EsValueInput) * Max(cache->tupdesc->natts, 1));
		for (int i = 0; i < cache->tupdesc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(cache->tupdesc, i);

			if (!att->attisdropped)
				es_value_input_init(&cache->inputs[i], att->atttypid, att->atttypmod, mcxt);
		}
		MemoryContextSwitchTo(oldcxt);
		fcinfo->flinfo->fn_extra = cache;
	}

	values = palloc(sizeof(Datum) * Max(cache->tupdesc->natts, 1));
	nulls = palloc(sizeof(bool) * Max(cache->tupdesc->natts, 1));
	for (int i = 0; i < cache->tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(cache->tupdesc, i);
		const char *name = NameStr(att->attname);
		JsonbValue	v;

		nulls[i] = att->attisdropped ||
			!getKeyJsonValueFromContainer(&doc->root, name, strlen(name), &v) ||
			v.type == jbvNull;
		values[i] = nulls[i] ? (Datum) 0 : es_value_datum(&cache->inputs[i], &v);
	}
	tuple = heap_form_tuple(cache->tupdesc, values, nulls);
	PG_RETURN_DATUM(HeapTupleGetDatum(tuple));
}

/* What _row_json() keeps between calls at one call site. */
typedef struct EsRowJsonCache
{
	Oid			typid;
	uint64		tupdesc_id;
	TupleDesc	tupdesc;
	EsEncoder  *enc;
} EsRowJsonCache;

/*
 * eventstream_row_json
 *		eventstream._row_json(r anyelement) → jsonb
 *
 * The row r as an object of column: value, every value written as the
 * producer writes it (rowjson.c), so that _populate() reads it back
 * exactly.
 */
Datum
eventstream_row_json(PG_FUNCTION_ARGS)
{
	HeapTupleHeader rec = PG_GETARG_HEAPTUPLEHEADER(0);
	Oid			typid = HeapTupleHeaderGetTypeId(rec);
	int32		typmod = HeapTupleHeaderGetTypMod(rec);
	EsRowJsonCache *cache = fcinfo->flinfo->fn_extra;
	HeapTupleData tuple;
	JsonbParseState *st = NULL;
	JsonbValue *res;
	int			styles;

	if (cache == NULL || cache->typid != typid || typid == RECORDOID ||
		cache->tupdesc_id != lookup_type_cache(typid, TYPECACHE_TUPDESC)->tupDesc_identifier)
	{
		MemoryContext mcxt = fcinfo->flinfo->fn_mcxt;
		TupleDesc	desc = lookup_rowtype_tupdesc(typid, typmod);
		MemoryContext oldcxt = MemoryContextSwitchTo(mcxt);

		cache = palloc0(sizeof(EsRowJsonCache));
		cache->typid = typid;
		cache->tupdesc_id = typid == RECORDOID ? 0 :
			lookup_type_cache(typid, TYPECACHE_TUPDESC)->tupDesc_identifier;
		cache->tupdesc = CreateTupleDescCopy(desc);
		ReleaseTupleDesc(desc);
		cache->enc = es_encoder_build(cache->tupdesc, NULL, 0, mcxt);
		MemoryContextSwitchTo(oldcxt);
		fcinfo->flinfo->fn_extra = cache;
	}

	tuple.t_len = HeapTupleHeaderGetDatumLength(rec);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = rec;
	styles = es_output_styles_push();
	res = es_row_to_jsonb(&st, cache->enc, &tuple, cache->tupdesc, true);
	es_output_styles_pop(styles);
	PG_RETURN_JSONB_P(JsonbValueToJsonb(res));
}
