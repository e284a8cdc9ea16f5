/*-------------------------------------------------------------------------
 *
 * apply_jsonb.c
 *	  jsonb helpers of the apply.
 *
 * Fields, texts, keys and elements of jsonb values, and the few values the
 * apply builds (concatenation, an object with one field set, a slice of a
 * list as an array).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_jsonb.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "consumer/apply.h"

Jsonb *
es_jsonb_parse(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/* The field key of object j (NULL when absent; JSON null is a value). */
Jsonb *
es_field(Jsonb *j, const char *key)
{
	JsonbValue *v;

	if (j == NULL || !JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
		return NULL;
	v = getKeyJsonValueFromContainer(&j->root, key, strlen(key), NULL);
	return v ? JsonbValueToJsonb(v) : NULL;
}

/* The field key of object j as text (NULL when absent or null). */
char *
es_field_text(Jsonb *j, const char *key)
{
	JsonbValue	k;
	JsonbValue *v;

	if (j == NULL || !JB_ROOT_IS_OBJECT(j))
		return NULL;
	k.type = jbvString;
	k.val.string.val = (char *) key;
	k.val.string.len = strlen(key);
	v = findJsonbValueFromContainer(&j->root, JB_FOBJECT, &k);
	if (v == NULL || v->type == jbvNull)
		return NULL;
	if (v->type == jbvString)
		return pnstrdup(v->val.string.val, v->val.string.len);
	if (v->type == jbvBool)
		return pstrdup(v->val.boolean ? "true" : "false");
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	return JsonbToCString(NULL, &es_field(j, key)->root, VARSIZE(j));
}

/* The text of a scalar jsonb (a string without its quotes). */
char *
es_scalar_text(Jsonb *j)
{
	JsonbValue	v;

	if (j == NULL)
		return NULL;
	if (!JsonbExtractScalar(&j->root, &v))
		return JsonbToCString(NULL, &j->root, VARSIZE(j));
	if (v.type == jbvString)
		return pnstrdup(v.val.string.val, v.val.string.len);
	if (v.type == jbvNull)
		return NULL;
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

bool
es_is_object(Jsonb *j)
{
	return j != NULL && JB_ROOT_IS_OBJECT(j) && !JB_ROOT_IS_SCALAR(j);
}

bool
es_is_array(Jsonb *j)
{
	return j != NULL && JB_ROOT_IS_ARRAY(j) && !JB_ROOT_IS_SCALAR(j);
}

Jsonb *
es_concat(Jsonb *a, Jsonb *b)
{
	if (a == NULL)
		return b;
	if (b == NULL)
		return a;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(a), JsonbPGetDatum(b)));
}

Jsonb *
es_without(Jsonb *j, char **keys, int n)
{
	for (int i = 0; i < n && j; i++)
		j = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(j), CStringGetTextDatum(keys[i])));
	return j;
}

/* The top-level keys of object j. */
List *
es_keys(Jsonb *j)
{
	List	   *keys = NIL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!es_is_object(j))
		return NIL;
	it = JsonbIteratorInit(&j->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_KEY)
			keys = lappend(keys, pnstrdup(v.val.string.val, v.val.string.len));
	return keys;
}

/* The elements of array j. */
List *
es_elements(Jsonb *j)
{
	List	   *elems = NIL;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;

	if (!es_is_array(j))
		return NIL;
	it = JsonbIteratorInit(&j->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		if (tok == WJB_ELEM)
			elems = lappend(elems, JsonbValueToJsonb(&v));
	return elems;
}

/* {"k": text} as jsonb; a NULL value becomes JSON null. */
void
es_json_pair(StringInfo buf, const char *key, const char *value)
{
	appendStringInfoString(buf, buf->len > 1 ? ", " : "");
	escape_json(buf, key);
	appendStringInfoString(buf, ": ");
	if (value)
		escape_json(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/*
 * es_with_field
 *		obj with key set to value.
 */
Jsonb *
es_with_field(Jsonb *obj, const char *key, Jsonb *value)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	escape_json(&buf, key);
	appendStringInfo(&buf, ": %s}", value ? JsonbToCString(NULL, &value->root, VARSIZE(value)) : "null");
	return es_concat(obj ? obj : es_jsonb_parse("{}"), es_jsonb_parse(buf.data));
}

/*
 * es_slice
 *		The elements from..to-1 (0-based) of a list of jsonb values, as a
 *		jsonb array.
 */
Jsonb *
es_slice(List *elems, int from, int to)
{
	JsonbParseState *state = NULL;
	JsonbValue *res;

	(void) pushJsonbValue(&state, WJB_BEGIN_ARRAY, NULL);
	for (int k = from; k < to; k++)
	{
		Jsonb	   *e = list_nth(elems, k);
		JsonbValue	v;

		v.type = jbvBinary;
		v.val.binary.data = &e->root;
		v.val.binary.len = VARSIZE(e) - VARHDRSZ;
		(void) pushJsonbValue(&state, WJB_ELEM, &v);
	}
	res = pushJsonbValue(&state, WJB_END_ARRAY, NULL);
	return JsonbValueToJsonb(res);
}
