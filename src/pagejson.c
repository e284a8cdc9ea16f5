/*-------------------------------------------------------------------------
 *
 * pagejson.c
 *	  Reading the JSON a producer answers with into jsonb, quickly.
 *
 * A consumer reads every page of updates into jsonb once (pull.c).  With
 * jsonb_in that was a fifth of the applying worker's time: its parser is
 * general (a callback per token, every string copied twice, every number
 * through numeric_in).  es_read_jsonb() reads the JSON producers write --
 * objects, arrays, strings with the short escapes, numbers, literals --
 * straight into pushJsonbValue(): strings without escapes are taken in
 * place, integers of up to 18 digits become numerics without numeric_in.
 * Whatever it does not know (a \u escape, a nesting deeper than
 * ES_JSON_MAX_DEPTH, a string too long for jsonb) and whatever is not JSON
 * makes it give up and return NULL: the caller then uses jsonb_in, whose
 * result or error is the reference.  The result is the jsonb jsonb_in
 * would make (sql/apply.sql compares the two).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/pagejson.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "eventstream.h"

PG_FUNCTION_INFO_V1(eventstream_read_json);

/* Deeper than this is left to jsonb_in (producers' pages are 4 deep). */
#define ES_JSON_MAX_DEPTH	64

typedef struct EsJsonReader
{
	const char *p;				/* next byte to read */
	const char *end;			/* end of the text */
	JsonbParseState *state;		/* what pushJsonbValue builds */
	JsonbValue *res;			/* the container closed last */
} EsJsonReader;

static bool es_read_value(EsJsonReader *r, JsonbIteratorToken tok, int depth);

/* Skip JSON whitespace, as json_lex does. */
static inline void
es_skip_space(EsJsonReader *r)
{
	while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
		r->p++;
}

/* Whether the byte at r->p may follow a scalar (or the text ends there). */
static inline bool
es_at_delimiter(EsJsonReader *r)
{
	if (r->p >= r->end)
		return true;
	switch (*r->p)
	{
		case ' ':
		case '\t':
		case '\n':
		case '\r':
		case ',':
		case ':':
		case ']':
		case '}':
			return true;
		default:
			return false;
	}
}

/*
 * es_read_string
 *		Read the string starting at the quote r->p points to into v.  A
 *		string without escapes is taken in place (the text outlives the
 *		reading); one with short escapes is decoded into a copy.  False for
 *		a \u escape, a control character or a string that does not end.
 */
static bool
es_read_string(EsJsonReader *r, JsonbValue *v)
{
	const char *s = r->p + 1;
	const char *q = s;
	StringInfoData buf;

	while (q < r->end && *q != '"' && *q != '\\' && (unsigned char) *q >= 0x20)
		q++;
	if (q >= r->end || (unsigned char) *q < 0x20)
		return false;
	v->type = jbvString;
	if (*q == '"')
	{
		v->val.string.val = (char *) s;
		v->val.string.len = q - s;
		r->p = q + 1;
		return v->val.string.len <= JENTRY_OFFLENMASK;
	}

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, s, q - s);
	while (q < r->end && *q != '"')
	{
		if ((unsigned char) *q < 0x20)
			return false;
		if (*q != '\\')
		{
			appendStringInfoChar(&buf, *q++);
			continue;
		}
		if (++q >= r->end)
			return false;
		switch (*q)
		{
			case '"':
			case '\\':
			case '/':
				appendStringInfoChar(&buf, *q);
				break;
			case 'b':
				appendStringInfoChar(&buf, '\b');
				break;
			case 'f':
				appendStringInfoChar(&buf, '\f');
				break;
			case 'n':
				appendStringInfoChar(&buf, '\n');
				break;
			case 'r':
				appendStringInfoChar(&buf, '\r');
				break;
			case 't':
				appendStringInfoChar(&buf, '\t');
				break;
			default:
				return false;	/* \u (encoding rules) or not JSON */
		}
		q++;
	}
	if (q >= r->end)
		return false;
	v->val.string.val = buf.data;
	v->val.string.len = buf.len;
	r->p = q + 1;
	return buf.len <= JENTRY_OFFLENMASK;
}

/*
 * es_read_number
 *		Read the JSON number at r->p into v: an integer of up to 18 digits
 *		directly, any other through numeric_in, as jsonb_in does.  False
 *		when it is not a JSON number.
 */
static bool
es_read_number(EsJsonReader *r, JsonbValue *v)
{
	const char *s = r->p;
	const char *q = s;
	const char *digits;
	bool		integral = true;

	if (*q == '-')
		q++;
	digits = q;
	if (q < r->end && *q == '0')
		q++;
	else if (q < r->end && *q >= '1' && *q <= '9')
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	else
		return false;
	if (q < r->end && *q == '.')
	{
		integral = false;
		if (++q >= r->end || *q < '0' || *q > '9')
			return false;
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	}
	if (q < r->end && (*q == 'e' || *q == 'E'))
	{
		integral = false;
		if (++q < r->end && (*q == '+' || *q == '-'))
			q++;
		if (q >= r->end || *q < '0' || *q > '9')
			return false;
		while (q < r->end && *q >= '0' && *q <= '9')
			q++;
	}
	r->p = q;
	if (!es_at_delimiter(r))
		return false;

	v->type = jbvNumeric;
	if (integral && q - digits <= 18)
	{
		int64		n = 0;

		for (const char *d = digits; d < q; d++)
			n = n * 10 + (*d - '0');
		v->val.numeric = int64_to_numeric(*s == '-' ? -n : n);
	}
	else
		v->val.numeric = DatumGetNumeric(DirectFunctionCall3(numeric_in,
															 CStringGetDatum(pnstrdup(s, q - s)),
															 ObjectIdGetDatum(InvalidOid),
															 Int32GetDatum(-1)));
	return true;
}

/*
 * es_read_literal
 *		Read true, false or null at r->p into v.
 */
static bool
es_read_literal(EsJsonReader *r, JsonbValue *v)
{
	size_t		left = r->end - r->p;

	if (left >= 4 && memcmp(r->p, "true", 4) == 0)
	{
		v->type = jbvBool;
		v->val.boolean = true;
		r->p += 4;
	}
	else if (left >= 5 && memcmp(r->p, "false", 5) == 0)
	{
		v->type = jbvBool;
		v->val.boolean = false;
		r->p += 5;
	}
	else if (left >= 4 && memcmp(r->p, "null", 4) == 0)
	{
		v->type = jbvNull;
		r->p += 4;
	}
	else
		return false;
	return es_at_delimiter(r);
}

/*
 * es_read_container
 *		Read the object or array at r->p, pushing its members.
 */
static bool
es_read_container(EsJsonReader *r, int depth)
{
	bool		object = (*r->p == '{');
	char		close = object ? '}' : ']';

	if (depth >= ES_JSON_MAX_DEPTH)
		return false;
	pushJsonbValue(&r->state, object ? WJB_BEGIN_OBJECT : WJB_BEGIN_ARRAY, NULL);
	r->p++;
	es_skip_space(r);
	if (r->p < r->end && *r->p == close)
	{
		r->p++;
		r->res = pushJsonbValue(&r->state, object ? WJB_END_OBJECT : WJB_END_ARRAY, NULL);
		return true;
	}
	for (;;)
	{
		if (object)
		{
			JsonbValue	key;

			if (r->p >= r->end || *r->p != '"' || !es_read_string(r, &key))
				return false;
			pushJsonbValue(&r->state, WJB_KEY, &key);
			es_skip_space(r);
			if (r->p >= r->end || *r->p != ':')
				return false;
			r->p++;
			es_skip_space(r);
		}
		if (!es_read_value(r, object ? WJB_VALUE : WJB_ELEM, depth + 1))
			return false;
		es_skip_space(r);
		if (r->p >= r->end)
			return false;
		if (*r->p == close)
			break;
		if (*r->p != ',')
			return false;
		r->p++;
		es_skip_space(r);
	}
	r->p++;
	r->res = pushJsonbValue(&r->state, object ? WJB_END_OBJECT : WJB_END_ARRAY, NULL);
	return true;
}

/*
 * es_read_value
 *		Read the value at r->p (whitespace skipped) and push it as tok.
 */
static bool
es_read_value(EsJsonReader *r, JsonbIteratorToken tok, int depth)
{
	JsonbValue	v;

	if (r->p >= r->end)
		return false;
	switch (*r->p)
	{
		case '{':
		case '[':
			return es_read_container(r, depth);
		case '"':
			if (!es_read_string(r, &v))
				return false;
			break;
		case 't':
		case 'f':
		case 'n':
			if (!es_read_literal(r, &v))
				return false;
			break;
		default:
			if (!es_read_number(r, &v))
				return false;
			break;
	}
	pushJsonbValue(&r->state, tok, &v);
	return true;
}

/*
 * es_read_jsonb
 *		The jsonb of the JSON object or array text[0 .. len), or NULL when
 *		the quick reading above gives up (see the file header): the caller
 *		then uses jsonb_in.  text must stay as it is until this returns.
 *		Allocates in CurrentMemoryContext, several times the result's size.
 */
Jsonb *
es_read_jsonb(const char *text, size_t len)
{
	EsJsonReader r;

	r.p = text;
	r.end = text + len;
	r.state = NULL;
	r.res = NULL;
	es_skip_space(&r);
	if (r.p >= r.end || (*r.p != '{' && *r.p != '['))
		return NULL;
	if (!es_read_container(&r, 0))
		return NULL;
	es_skip_space(&r);
	if (r.p != r.end)
		return NULL;
	/* The outermost container closed last. */
	return JsonbValueToJsonb(r.res);
}

/*
 * eventstream_read_json
 *		_read_json(body text) -> jsonb: es_read_jsonb, falling back on
 *		jsonb_in as the consumer does; for the tests that compare it with
 *		jsonb_in.
 */
Datum
eventstream_read_json(PG_FUNCTION_ARGS)
{
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Jsonb	   *j = es_read_jsonb(body, strlen(body));

	if (j == NULL)
		return DirectFunctionCall1(jsonb_in, CStringGetDatum(body));
	PG_RETURN_JSONB_P(j);
}
