/*-------------------------------------------------------------------------
 *
 * rowjson.c
 *	  Turning table rows into jsonb documents, docnames and diffs.
 *
 * The capture trigger runs once per changed row, so this file avoids the
 * general to_jsonb() path (which looks up every column's type category and
 * output function again for every row).  An EsEncoder is built once per
 * tuple descriptor and cached by the caller; per row we only switch on the
 * precomputed kind of each column.
 *
 * A value travels so that the consumer gets exactly what was written:
 * booleans and integers are JSON booleans and numbers; float4/float8 are
 * JSON numbers of their shortest exact decimal digits (the digits that read
 * back as the same value, as extra_float_digits > 0 prints), and strings
 * for -0, NaN and the infinities, which a JSON number cannot hold; numeric
 * is a number (NaN and the infinities strings); date/time types are ISO
 * 8601 strings; json and jsonb, and every other type, travel as their
 * PostgreSQL text, a JSON string that the consumer reads back with the
 * column's input function (consumer/apply_values.c).  A JSON null is
 * always SQL NULL: a jsonb 'null' is the string "null".  Text output is
 * made in fixed styles, whatever the writing session set (see
 * es_output_styles_push).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/rowjson.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "common/shortest_dec.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/bytea.h"
#include "utils/datetime.h"
#include "utils/datum.h"
#include "utils/float.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/typcache.h"

#include "producer/rowjson.h"

static EsValueKind es_kind_for_type(Oid basetypid);

/*
 * es_kind_for_type
 *		Decide how values of a (base) type are rendered in jsonb.
 */
static EsValueKind
es_kind_for_type(Oid basetypid)
{
	switch (basetypid)
	{
		case BOOLOID:
			return ES_KIND_BOOL;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return ES_KIND_INT;
		case FLOAT4OID:
		case FLOAT8OID:
			return ES_KIND_FLOAT;
		case NUMERICOID:
			return ES_KIND_NUMERIC;
		case DATEOID:
		case TIMEOID:
		case TIMETZOID:
		case TIMESTAMPOID:
		case TIMESTAMPTZOID:
			return ES_KIND_DATETIME;
		default:
			return ES_KIND_TEXT;
	}
}

/*
 * es_encoder_build
 *		Build the encoder for rows of tupdesc, allocated in mcxt.
 *
 * pkattnums lists the primary key columns in key order (npk may be 0).  The
 * caller keeps the result for as long as the descriptor is valid; nothing
 * in it points into tupdesc.
 */
EsEncoder *
es_encoder_build(TupleDesc tupdesc, const AttrNumber *pkattnums, int npk,
				 MemoryContext mcxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(mcxt);
	EsEncoder  *enc = palloc0(sizeof(EsEncoder));
	int			i;

	enc->columns = palloc0(sizeof(EsColumn) * Max(tupdesc->natts, 1));
	for (i = 0; i < tupdesc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(tupdesc, i);
		EsColumn   *col;
		Oid			outfn;
		bool		isvarlena;
		TypeCacheEntry *tce;

		if (att->attisdropped)
			continue;
		col = &enc->columns[enc->ncolumns++];
		col->attnum = att->attnum;
		col->name = pstrdup(NameStr(att->attname));
		col->namelen = strlen(col->name);
		col->typid = att->atttypid;
		col->basetypid = getBaseType(att->atttypid);
		col->collation = att->attcollation;
		col->typlen = att->attlen;
		col->typbyval = att->attbyval;
		col->kind = es_kind_for_type(col->basetypid);
		getTypeOutputInfo(att->atttypid, &outfn, &isvarlena);
		fmgr_info_cxt(outfn, &col->outfn, mcxt);

		tce = lookup_type_cache(col->basetypid, TYPECACHE_EQ_OPR);
		if (OidIsValid(tce->eq_opr))
		{
			fmgr_info_cxt(get_opcode(tce->eq_opr), &col->eqfn, mcxt);
			col->has_eq = true;
		}
	}

	enc->npk = npk;
	enc->pk = palloc0(sizeof(int) * Max(npk, 1));
	for (i = 0; i < npk; i++)
	{
		int			j;

		enc->pk[i] = -1;
		for (j = 0; j < enc->ncolumns; j++)
			if (enc->columns[j].attnum == pkattnums[i])
				enc->pk[i] = j;
		if (enc->pk[i] < 0)
			elog(ERROR, "primary key column %d not found in tuple descriptor",
				 pkattnums[i]);
	}
	MemoryContextSwitchTo(oldcxt);
	return enc;
}

/*
 * es_output_styles_push
 *		Make the output functions write values in the wire's fixed styles,
 *		whatever the session set: DateStyle ISO, IntervalStyle postgres,
 *		extra_float_digits 3 (shortest exact digits) and bytea_output hex,
 *		the styles PostgreSQL's logical replication asks of its walsender.
 *
 * Returns the GUC nest level to give to es_output_styles_pop, or 0 when the
 * session's styles are these already (the usual case: nothing is set).  An
 * ERROR in between needs nothing more: the abort of the (sub)transaction
 * restores the session's settings.
 */
int
es_output_styles_push(void)
{
	int			level;

	if (DateStyle == USE_ISO_DATES && IntervalStyle == INTSTYLE_POSTGRES &&
		extra_float_digits > 0 && bytea_output == BYTEA_OUTPUT_HEX)
		return 0;
	level = NewGUCNestLevel();
	if (DateStyle != USE_ISO_DATES)
		(void) set_config_option("datestyle", "ISO", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (IntervalStyle != INTSTYLE_POSTGRES)
		(void) set_config_option("intervalstyle", "postgres", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (extra_float_digits <= 0)
		(void) set_config_option("extra_float_digits", "3", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	if (bytea_output != BYTEA_OUTPUT_HEX)
		(void) set_config_option("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_SAVE, true, 0, false);
	return level;
}

/*
 * es_output_styles_pop
 *		Give the session its own styles back after es_output_styles_push.
 */
void
es_output_styles_pop(int level)
{
	if (level > 0)
		AtEOXact_GUC(true, level);
}

/*
 * es_push_key
 *		Push an object key; key must stay valid until the jsonb is built.
 */
void
es_push_key(JsonbParseState **state, const char *key, int len)
{
	JsonbValue	k;

	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = len;
	pushJsonbValue(state, WJB_KEY, &k);
}

/*
 * es_push_string
 *		Push a string scalar as an object value or array element.
 */
static void
es_push_string(JsonbParseState **state, char *str, JsonbIteratorToken tok)
{
	JsonbValue	v;

	v.type = jbvString;
	v.val.string.val = str;
	v.val.string.len = strlen(str);
	pushJsonbValue(state, tok, &v);
}

/*
 * es_push_value
 *		Push one column value (tok is WJB_VALUE or WJB_ELEM).
 */
void
es_push_value(JsonbParseState **state, EsColumn *col, Datum value,
			  bool isnull, JsonbIteratorToken tok)
{
	JsonbValue	v;

	if (isnull)
	{
		v.type = jbvNull;
		pushJsonbValue(state, tok, &v);
		return;
	}

	switch (col->kind)
	{
		case ES_KIND_BOOL:
			v.type = jbvBool;
			v.val.boolean = DatumGetBool(value);
			pushJsonbValue(state, tok, &v);
			return;

		case ES_KIND_INT:
			{
				int64		i;

				if (col->basetypid == INT2OID)
					i = DatumGetInt16(value);
				else if (col->basetypid == INT4OID)
					i = DatumGetInt32(value);
				else
					i = DatumGetInt64(value);
				v.type = jbvNumeric;
				v.val.numeric = int64_to_numeric(i);
				pushJsonbValue(state, tok, &v);
				return;
			}

		case ES_KIND_FLOAT:
			{
				char		buf[DOUBLE_SHORTEST_DECIMAL_LEN];
				double		d;

				if (col->basetypid == FLOAT4OID)
				{
					float4		f = DatumGetFloat4(value);

					d = f;
					float_to_shortest_decimal_buf(f, buf);
				}
				else
				{
					d = DatumGetFloat8(value);
					double_to_shortest_decimal_buf(d, buf);
				}
				if (isnan(d) || isinf(d) || (d == 0 && signbit(d)))
				{
					/* -0, NaN, Infinity, -Infinity: their text */
					es_push_string(state, pstrdup(buf), tok);
					return;
				}
				v.type = jbvNumeric;
				v.val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
																	CStringGetDatum(buf),
																	ObjectIdGetDatum(InvalidOid),
																	Int32GetDatum(-1)));
				pushJsonbValue(state, tok, &v);
				return;
			}

		case ES_KIND_NUMERIC:
			{
				Numeric		n = DatumGetNumericCopy(value);

				if (numeric_is_nan(n) || numeric_is_inf(n))
					break;
				v.type = jbvNumeric;
				v.val.numeric = n;
				pushJsonbValue(state, tok, &v);
				return;
			}

		case ES_KIND_DATETIME:
			{
				char		buf[MAXDATELEN + 1];

				JsonEncodeDateTime(buf, value, col->basetypid, NULL);
				es_push_string(state, pstrdup(buf), tok);
				return;
			}

		case ES_KIND_TEXT:
			break;		/* json and jsonb too: their text */
	}

	es_push_string(state, OutputFunctionCall(&col->outfn, value), tok);
}

/*
 * es_row_to_jsonb
 *		Push every column of tuple as "column": value into a new object.
 *
 * With close_object the object is closed and the built value returned;
 * otherwise the object stays open so the caller can add more keys (child
 * tables) and NULL is returned.
 */
JsonbValue *
es_row_to_jsonb(JsonbParseState **state, EsEncoder *enc, HeapTuple tuple,
				TupleDesc tupdesc, bool close_object)
{
	int			i;

	pushJsonbValue(state, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < enc->ncolumns; i++)
	{
		EsColumn   *col = &enc->columns[i];
		bool		isnull;
		Datum		d = heap_getattr(tuple, col->attnum, tupdesc, &isnull);

		es_push_key(state, col->name, col->namelen);
		es_push_value(state, col, d, isnull, WJB_VALUE);
	}
	if (close_object)
		return pushJsonbValue(state, WJB_END_OBJECT, NULL);
	return NULL;
}

/*
 * es_values_equal
 *		Whether two non-null values of col are equal as typed values.
 *
 * Identical images are equal; otherwise the type's default equality operator
 * decides (so 1.0 and 1.00 are equal numerics, as with IS DISTINCT FROM).
 * Types without an equality operator (json, point, ...) compare by image.
 */
bool
es_values_equal(EsColumn *col, Datum a, Datum b)
{
	if (datum_image_eq(a, b, col->typbyval, col->typlen))
		return true;
	if (!col->has_eq)
		return false;
	return DatumGetBool(FunctionCall2Coll(&col->eqfn, col->collation, a, b));
}

/*
 * es_append_key_value
 *		Append one key value to a docname being built.
 *
 * Single-column keys are the value's text (ISO 8601 for date/time types);
 * inside a composite key's JSON array, numbers and booleans stay bare and
 * everything else is a JSON string.
 */
static void
es_append_key_value(StringInfo buf, EsColumn *col, Datum value, bool isnull,
					bool in_array)
{
	char	   *str;

	if (isnull)
	{
		appendStringInfoString(buf, "null");
		return;
	}
	if (col->kind == ES_KIND_DATETIME)
	{
		char		dbuf[MAXDATELEN + 1];

		JsonEncodeDateTime(dbuf, value, col->basetypid, NULL);
		str = pstrdup(dbuf);
	}
	else
		str = OutputFunctionCall(&col->outfn, value);

	if (!in_array)
		appendStringInfoString(buf, str);
	else if (col->kind == ES_KIND_BOOL)
		appendStringInfoString(buf, DatumGetBool(value) ? "true" : "false");
	else if ((col->kind == ES_KIND_INT || col->kind == ES_KIND_NUMERIC ||
			  col->kind == ES_KIND_FLOAT) &&
			 strcmp(str, "NaN") != 0 && strstr(str, "Infinity") == NULL)
		appendStringInfoString(buf, str);
	else
		escape_json(buf, str);
}

/*
 * es_docname
 *		Render a document name from the ncols columns colidx[] (indexes
 *		into enc->columns) of tuple.
 *
 * One column: its text.  Several: a compact JSON array of the values in key
 * order, e.g. ["INV-1",2].  The result is palloc'd in the current context.
 */
char *
es_docname(EsEncoder *enc, const int *colidx, int ncols, HeapTuple tuple,
		   TupleDesc tupdesc)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	if (ncols > 1)
		appendStringInfoChar(&buf, '[');
	for (i = 0; i < ncols; i++)
	{
		EsColumn   *col = &enc->columns[colidx[i]];
		bool		isnull;
		Datum		d = heap_getattr(tuple, col->attnum, tupdesc, &isnull);

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		es_append_key_value(&buf, col, d, isnull, ncols > 1);
	}
	if (ncols > 1)
		appendStringInfoChar(&buf, ']');
	return buf.data;
}

/*
 * es_qualified_relname
 *		The wire name of a table: schema-qualified, quoted where needed.
 */
char *
es_qualified_relname(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

/*
 * es_scan_relname
 *		What a query reads the rows of rel from: "ONLY schema.name" for a
 *		table (not the tables inheriting from it), "schema.name" for a
 *		partitioned table (its partitions hold the rows).
 */
char *
es_scan_relname(Relation rel)
{
	return psprintf("%s%s",
					rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
					es_qualified_relname(rel));
}
