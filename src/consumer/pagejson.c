/*-------------------------------------------------------------------------
 *
 * pagejson.c
 *	  Reading the JSON a producer answers with into jsonb, quickly.
 *
 * A consumer reads every page of updates into jsonb once (pull_page.c).  With
 * jsonb_in that was a fifth of the applying worker's time: its parser is
 * general (a callback per token, every string copied twice, every number
 * through numeric_in).  es_read_jsonb() reads the JSON producers write --
 * objects, arrays, strings with their escapes, numbers, literals --
 * straight into pushJsonbValue(): strings without escapes are taken in
 * place, integers of up to 18 digits become numerics without numeric_in.
 * Whatever it does not know (a \u escape jsonb_in would refuse or convert
 * to another encoding than UTF-8, a nesting deeper than ES_JSON_MAX_DEPTH,
 * a string too long for jsonb) and whatever is not JSON makes it give up
 * and return NULL: the caller then uses jsonb_in, whose
 * result or error is the reference.  The result is the jsonb jsonb_in
 * would make (test/sql/apply.sql compares the two).
 *
 * A producer's answer is UTF-8 (src/site/wire.c).  In a database of
 * another encoding, es_read_page(..., wire = true) converts every string
 * (key or value) as it reads it.  A character the database encoding
 * cannot hold fails only the update (or the snapshot's document) holding
 * it: an element of the page's "updates" or "documents" array gets its
 * "data" set to null and an "encoding_error" naming the character, which
 * the apply makes a Failed update (apply.c); the other strings of the
 * element read '?' for it.  Anywhere else in the page, and in a page the
 * quick reading gives up on (jsonb_in converts the whole text first), it
 * fails the page.  A UTF8 database converts nothing.
 *
 * Reading a page is bounded in memory, whatever its shape: a tree of
 * jsonb values takes tens of bytes per value: a page of the usual shape
 * (updates of rows of short values) about twenty times its size, one of
 * many tiny values ("[1,1,1,...") up to a hundred times.  es_read_page()
 * refuses a page whose reading would take more than es_page_budget()
 * (four times eventstream.client_max_response_size): the
 * quick reading watches its memory context as it goes; before jsonb_in a
 * pass of the JSON parser without semantic actions (which allocates
 * nothing per value) checks the text and counts its values.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/pagejson.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/jsonfuncs.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "consumer/client.h"
#include "consumer/pagejson.h"
#include "site/wire.h"

PG_FUNCTION_INFO_V1(eventstream_read_json);

/* Deeper than this is left to jsonb_in (producers' pages are 4 deep). */
#define ES_JSON_MAX_DEPTH	64

/*
 * What jsonb_in takes at most per value of the text, and per container
 * (its parse state and first array of members), for es_read_page's
 * estimate before it calls jsonb_in.
 */
#define ES_JSONB_IN_VALUE_BYTES		128
#define ES_JSONB_IN_CONTAINER_BYTES	512

typedef struct EsJsonReader
{
	const char *p;				/* next byte to read */
	const char *end;			/* end of the text */
	JsonbParseState *state;		/* what pushJsonbValue builds */
	JsonbValue *res;			/* the container closed last */
	MemoryContext cxt;			/* where it is built */
	Size		budget;			/* the most cxt may take */
	bool		convert;		/* strings are UTF-8 to convert */
	bool		utf8;			/* strings are read as UTF-8 (convert, or a
								 * UTF8 database) */
	bool		units_next;		/* the value read next is "updates" or
								 * "documents" of the page */
	bool		in_units;		/* reading the elements of that array */
	pg_wchar	bad;			/* first character the database encoding
								 * cannot hold, since the element began */
} EsJsonReader;

/* Values counted by es_count_values (a JsonSemAction's state). */
typedef struct EsJsonCount
{
	Size		values;
	Size		containers;
} EsJsonCount;

static bool es_read_value(EsJsonReader *r, JsonbIteratorToken tok, int depth);

/*
 * es_page_too_large
 *		Raise the error of a page whose reading takes more than budget.
 */
static void
es_page_too_large(Size budget)
{
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("page too large: it has too many values to be read in %zu kB", budget / 1024),
			 errdetail("Reading a page may take four times eventstream.client_max_response_size (%d kB).",
					   es_client_max_response_size),
			 errhint("Raise eventstream.client_max_response_size on this site, or lower eventstream.http_max_response_size on the producer.")));
}

/*
 * es_page_untranslatable
 *		Raise the error of a page holding a character the database encoding
 *		cannot, where it fails the whole page.
 */
static void
es_page_untranslatable(pg_wchar c)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNTRANSLATABLE_CHARACTER),
			 errmsg("%s", es_wire_untranslatable(c)),
			 errdetail("Only an update, or a document of a snapshot, holding such a character fails alone; this one is elsewhere in the answer, which fails whole.")));
}

/* Raise when the reading has taken more than its budget. */
static inline void
es_check_budget(EsJsonReader *r)
{
	if (MemoryContextMemAllocated(r->cxt, true) > r->budget)
		es_page_too_large(r->budget);
}

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
 * es_convert_string
 *		Convert the string v holds from UTF-8 to the database encoding,
 *		noting in r->bad the first character it cannot hold.
 */
static void
es_convert_string(EsJsonReader *r, JsonbValue *v)
{
	int			len;
	pg_wchar	bad;

	v->val.string.val = es_wire_to_server(v->val.string.val, v->val.string.len, &len, &bad);
	v->val.string.len = len;
	if (bad != 0 && r->bad == 0)
		r->bad = bad;
}

/*
 * es_fail_unit
 *		The element of the page's updates (or documents) being read holds a
 *		character the database encoding cannot (r->bad): its "data" becomes
 *		null and it gets an "encoding_error" saying why, for the apply to
 *		make it a Failed update.  Called before the element's object is
 *		closed, when it is the top of r->state.
 */
static void
es_fail_unit(EsJsonReader *r)
{
	JsonbValue *obj = &r->state->contVal;
	JsonbValue	k;
	JsonbValue	v;

	for (int i = 0; i < obj->val.object.nPairs; i++)
	{
		JsonbPair  *pair = &obj->val.object.pairs[i];

		if (pair->key.val.string.len == 4 && memcmp(pair->key.val.string.val, "data", 4) == 0)
			pair->value.type = jbvNull;
	}
	k.type = jbvString;
	k.val.string.val = ES_ENCODING_ERROR_KEY;
	k.val.string.len = strlen(ES_ENCODING_ERROR_KEY);
	pushJsonbValue(&r->state, WJB_KEY, &k);
	v.type = jbvString;
	v.val.string.val = es_wire_untranslatable(r->bad);
	v.val.string.len = strlen(v.val.string.val);
	pushJsonbValue(&r->state, WJB_VALUE, &v);
	r->bad = 0;
}

/*
 * es_hex4
 *		The value of the four hex digits at p, or -1 when there are not four
 *		before end.
 */
static int
es_hex4(const char *p, const char *end)
{
	int			v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++)
	{
		char		c = p[i];

		if (c >= '0' && c <= '9')
			v = v * 16 + (c - '0');
		else if (c >= 'a' && c <= 'f')
			v = v * 16 + (c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v = v * 16 + (c - 'A' + 10);
		else
			return -1;
	}
	return v;
}

/*
 * es_read_escape_u
 *		Decode the \u escape whose 'u' q points to (with the low half that
 *		follows a surrogate's high half) into buf, as jsonb_in does: in
 *		UTF-8 when the text read is UTF-8 (a UTF8 database, or strings
 *		converted from the wire afterwards), otherwise only a character of
 *		ASCII.  Returns where the escape ends, or NULL to leave it to
 *		jsonb_in (and its error): \u0000, which text cannot hold, a lone
 *		surrogate, a character beyond ASCII in text of another encoding, or
 *		what is not an escape.
 */
static const char *
es_read_escape_u(EsJsonReader *r, const char *q, StringInfo buf)
{
	int			c = es_hex4(q + 1, r->end);
	unsigned char utf8[8];

	if (c <= 0)
		return NULL;
	q += 5;
	if (c >= 0xD800 && c <= 0xDBFF)
	{
		int			lo = (r->end - q >= 2 && q[0] == '\\' && q[1] == 'u') ? es_hex4(q + 2, r->end) : -1;

		if (lo < 0xDC00 || lo > 0xDFFF)
			return NULL;
		c = (int) surrogate_pair_to_codepoint((pg_wchar) c, (pg_wchar) lo);
		q += 6;
	}
	else if (c >= 0xDC00 && c <= 0xDFFF)
		return NULL;
	if (c <= 0x7F)
		appendStringInfoChar(buf, (char) c);
	else if (r->utf8)
	{
		unicode_to_utf8((pg_wchar) c, utf8);
		appendBinaryStringInfo(buf, (char *) utf8, pg_utf_mblen(utf8));
	}
	else
		return NULL;
	return q;
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
		if (r->convert)
			es_convert_string(r, v);
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
			case 'u':
				q = es_read_escape_u(r, q, &buf);
				if (q == NULL)
					return false;
				continue;
			default:
				return false;	/* not JSON */
		}
		q++;
	}
	if (q >= r->end)
		return false;
	v->val.string.val = buf.data;
	v->val.string.len = buf.len;
	r->p = q + 1;
	if (r->convert)
		es_convert_string(r, v);
	return v->val.string.len <= JENTRY_OFFLENMASK;
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
	bool		units = false;	/* the page's "updates" or "documents" */
	bool		unit = false;	/* an element of those */

	if (depth >= ES_JSON_MAX_DEPTH)
		return false;
	if (depth == 1 && !object && r->units_next)
		units = true;
	else if (depth == 2 && object && r->in_units)
	{
		unit = true;
		r->bad = 0;
	}
	r->units_next = false;
	pushJsonbValue(&r->state, object ? WJB_BEGIN_OBJECT : WJB_BEGIN_ARRAY, NULL);
	es_check_budget(r);
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
			r->units_next = r->convert && depth == 0 &&
				((key.val.string.len == 7 && memcmp(key.val.string.val, "updates", 7) == 0) ||
				 (key.val.string.len == 9 && memcmp(key.val.string.val, "documents", 9) == 0));
			es_skip_space(r);
			if (r->p >= r->end || *r->p != ':')
				return false;
			r->p++;
			es_skip_space(r);
		}
		r->in_units = units;
		if (!es_read_value(r, object ? WJB_VALUE : WJB_ELEM, depth + 1))
			return false;
		r->in_units = false;
		r->units_next = false;
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
	if (unit && r->bad != 0)
		es_fail_unit(r);
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
	es_check_budget(r);
	return true;
}

/*
 * es_read_jsonb
 *		The jsonb of the JSON object or array text[0 .. len), or NULL when
 *		the quick reading above gives up (see the file header): the caller
 *		then uses jsonb_in.  With wire, text is UTF-8 (valid: the caller
 *		checked) and its strings are converted to the database encoding.
 *		text must stay as it is until this returns.  Allocates in
 *		CurrentMemoryContext, several times the result's size; raises when
 *		that context holds more than budget bytes.
 */
Jsonb *
es_read_jsonb(const char *text, size_t len, Size budget, bool wire)
{
	EsJsonReader r;

	r.p = text;
	r.end = text + len;
	r.state = NULL;
	r.res = NULL;
	r.cxt = CurrentMemoryContext;
	r.budget = budget;
	r.convert = wire && es_wire_converts();
	r.utf8 = r.convert || GetDatabaseEncoding() == PG_UTF8;
	r.units_next = false;
	r.in_units = false;
	r.bad = 0;
	es_skip_space(&r);
	if (r.p >= r.end || (*r.p != '{' && *r.p != '['))
		return NULL;
	if (!es_read_container(&r, 0))
		return NULL;
	es_skip_space(&r);
	if (r.p != r.end)
		return NULL;
	if (r.bad != 0)
		es_page_untranslatable(r.bad);
	/* The outermost container closed last. */
	return JsonbValueToJsonb(r.res);
}

/* JsonSemAction callbacks of es_read_page's counting pass. */
static void
es_count_container(void *state)
{
	((EsJsonCount *) state)->containers++;
}

static void
es_count_field(void *state, char *fname, bool isnull)
{
	((EsJsonCount *) state)->values += 2;	/* the key and its value */
}

static void
es_count_element(void *state, bool isnull)
{
	((EsJsonCount *) state)->values++;
}

/*
 * es_page_budget
 *		The most reading one page may take: four times
 *		eventstream.client_max_response_size, so that with the default
 *		settings a page of the usual shape as large as a producer makes
 *		them (eventstream.http_max_response_size) is read.
 */
Size
es_page_budget(void)
{
	return (Size) es_client_max_response_size * 1024 * 4;
}

/*
 * es_read_page
 *		The jsonb of a producer's answer text[0 .. len): es_read_jsonb, or
 *		jsonb_in when that gives up, with jsonb_in's error when the text is
 *		not JSON.  With wire, text is UTF-8 and converted to the database
 *		encoding (see the file header).  Reading takes at most about budget bytes of
 *		CurrentMemoryContext: a page that would take more is refused with a
 *		clear error before it is read (see the file header).  text must be
 *		NUL-terminated at len.
 */
Jsonb *
es_read_page(char *text, size_t len, Size budget, bool wire)
{
	Jsonb	   *j = es_read_jsonb(text, len, budget, wire);
	JsonLexContext *lex;
	JsonSemAction sem;
	EsJsonCount count;

	if (j != NULL)
		return j;
	if (wire && es_wire_converts())
	{
		int			outlen;
		pg_wchar	bad;

		text = es_wire_to_server(text, (int) len, &outlen, &bad);
		len = outlen;
		if (bad != 0)
			es_page_untranslatable(bad);
	}

	/*
	 * Check the text and count its values (the lexer copies no string when
	 * not asked to decode escapes, and the callbacks allocate nothing).
	 */
	memset(&sem, 0, sizeof(sem));
	memset(&count, 0, sizeof(count));
	sem.semstate = &count;
	sem.object_start = es_count_container;
	sem.array_start = es_count_container;
	sem.object_field_start = es_count_field;
	sem.array_element_start = es_count_element;
	lex = makeJsonLexContextCstringLen(text, (int) len, GetDatabaseEncoding(), false);
	pg_parse_json_or_ereport(lex, &sem);
	if (count.values > budget / ES_JSONB_IN_VALUE_BYTES ||
		count.containers > budget / ES_JSONB_IN_CONTAINER_BYTES ||
		count.values * ES_JSONB_IN_VALUE_BYTES + count.containers * ES_JSONB_IN_CONTAINER_BYTES > budget)
		es_page_too_large(budget);
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/*
 * eventstream_read_json
 *		_read_json(body text) -> jsonb: es_read_page, as the consumer reads
 *		a page (with the same bound); for the tests that compare it with
 *		jsonb_in.
 */
Datum
eventstream_read_json(PG_FUNCTION_ARGS)
{
	char	   *body = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_JSONB_P(es_read_page(body, strlen(body), es_page_budget(), false));
}
