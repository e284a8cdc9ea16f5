/*-------------------------------------------------------------------------
 *
 * apply_page.c
 *	  Quick facts about a page of updates, for eventstream._missing_for.
 *
 * _page_updated() and _page_facts() walk a page once, in C, where
 * expanding it with SQL copied every update: which documents its Updates
 * are for (but those a Create of the page makes), whether it has an
 * Update, whether it touches a table of this extension, and the tables it
 * names.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_page.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"

#include "consumer/apply.h"

PG_FUNCTION_INFO_V1(eventstream_page_updated);
PG_FUNCTION_INFO_V1(eventstream_page_facts);

/*
 * es_page_updates
 *		Whether page body has an array "updates"; *updates gets it.
 */
static bool
es_page_updates(Jsonb *body, JsonbValue *updates)
{
	return JB_ROOT_IS_OBJECT(body) &&
		getKeyJsonValueFromContainer(&body->root, "updates", 7, updates) &&
		updates->type == jbvBinary && JsonContainerIsArray(updates->val.binary.data);
}

/*
 * es_page_doc_key
 *		"<length of ref_table>:<ref_table><docname>" of an update of a page
 *		(NULL when it lacks either or its data is not an object), and its
 *		kind in *kind.
 */
static char *
es_page_doc_key(JsonbContainer *upd, EsUpdateKind *kind)
{
	JsonbValue	ref;
	JsonbValue	doc;
	JsonbValue	v;

	*kind = ES_UPDATE_UNKNOWN;
	if (!JsonContainerIsObject(upd) ||
		!getKeyJsonValueFromContainer(upd, "ref_table", 9, &ref) || ref.type != jbvString ||
		!getKeyJsonValueFromContainer(upd, "docname", 7, &doc) || doc.type != jbvString ||
		!getKeyJsonValueFromContainer(upd, "data", 4, &v) || v.type != jbvBinary ||
		!JsonContainerIsObject(v.val.binary.data) ||
		!getKeyJsonValueFromContainer(upd, "update_type", 11, &v) || v.type != jbvString)
		return NULL;
	*kind = es_update_kind(pnstrdup(v.val.string.val, v.val.string.len));
	return psprintf("%d:%.*s%.*s", ref.val.string.len, ref.val.string.len, ref.val.string.val,
					doc.val.string.len, doc.val.string.val);
}

/*
 * eventstream_page_updated
 *		_page_updated(body jsonb) -> setof (ref_table text, docname text):
 *		the documents the Updates of a page of updates are for, but for
 *		those a Create of the page makes, each once.  _missing_for looks
 *		them up; one walk of the page here, where expanding it with SQL
 *		copied every update twice.
 */
Datum
eventstream_page_updated(PG_FUNCTION_ARGS)
{
	Jsonb	   *body = PG_GETARG_JSONB_P(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	JsonbValue	updates;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	HASHCTL		ctl;
	HTAB	   *created;
	List	   *updated = NIL;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	if (!es_page_updates(body, &updates))
		PG_RETURN_VOID();

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = NAMEDATALEN * 4;
	ctl.entrysize = NAMEDATALEN * 4;
	ctl.hcxt = CurrentMemoryContext;
	created = hash_create("eventstream page documents", 256, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	it = JsonbIteratorInit(updates.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		EsUpdateKind kind;
		char	   *key;

		if (tok != WJB_ELEM || v.type != jbvBinary)
			continue;
		key = es_page_doc_key(v.val.binary.data, &kind);
		if (key == NULL)
			continue;
		if (kind == ES_UPDATE_CREATE && strlen(key) < NAMEDATALEN * 4)
			(void) hash_search(created, key, HASH_ENTER, NULL);
		else if (kind == ES_UPDATE_UPDATE)
			updated = lappend(updated, key);
	}
	foreach(lc, updated)
	{
		char	   *key = lfirst(lc);
		char	   *colon = strchr(key, ':');
		int			reflen = atoi(key);
		bool		found;
		Datum		values[2];
		bool		nulls[2] = {false, false};

		/* (a key too long for the table is looked up as if not created) */
		if (strlen(key) < NAMEDATALEN * 4)
		{
			(void) hash_search(created, key, HASH_ENTER, &found);
			if (found)
				continue;		/* created by the page, or listed already */
		}
		values[0] = PointerGetDatum(cstring_to_text_with_len(colon + 1, reflen));
		values[1] = CStringGetTextDatum(colon + 1 + reflen);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	PG_RETURN_VOID();
}

/*
 * eventstream_page_facts
 *		_page_facts(body jsonb, OUT updates boolean, OUT own_tables boolean,
 *		OUT ref_tables text[]): whether a page of updates has an Update,
 *		whether one of its updates is of a table of this
 *		extension, and the tables it names, each once -- what _missing_for
 *		decides its quick paths on, in one walk of the page instead of one
 *		jsonpath query each.
 */
Datum
eventstream_page_facts(PG_FUNCTION_ARGS)
{
	Jsonb	   *body = PG_GETARG_JSONB_P(0);
	TupleDesc	tupdesc;
	JsonbValue	updates;
	bool		has_updates = false;
	bool		own = false;
	List	   *refs = NIL;
	Datum		values[3];
	bool		nulls[3] = {false, false, false};
	Datum	   *elems;
	int			n = 0;
	ListCell   *lc;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (es_page_updates(body, &updates))
	{
		JsonbIterator *it = JsonbIteratorInit(updates.val.binary.data);
		JsonbValue	v;
		JsonbIteratorToken tok;

		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			JsonbValue	ref;
			JsonbValue	type;
			bool		known = false;

			if (tok != WJB_ELEM || v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
				continue;
			if (getKeyJsonValueFromContainer(v.val.binary.data, "update_type", 11, &type) &&
				type.type == jbvString && type.val.string.len == 6 && memcmp(type.val.string.val, "Update", 6) == 0)
				has_updates = true;
			if (!getKeyJsonValueFromContainer(v.val.binary.data, "ref_table", 9, &ref) || ref.type != jbvString)
				continue;
			if ((ref.val.string.len >= 12 && memcmp(ref.val.string.val, "eventstream.", 12) == 0) ||
				(ref.val.string.len >= 14 && memcmp(ref.val.string.val, "\"eventstream\".", 14) == 0))
				own = true;
			foreach(lc, refs)
				if (strlen(lfirst(lc)) == (size_t) ref.val.string.len &&
					memcmp(lfirst(lc), ref.val.string.val, ref.val.string.len) == 0)
					known = true;
			if (!known)
				refs = lappend(refs, pnstrdup(ref.val.string.val, ref.val.string.len));
		}
	}
	elems = palloc(sizeof(Datum) * Max(list_length(refs), 1));
	foreach(lc, refs)
		elems[n++] = CStringGetTextDatum(lfirst(lc));
	values[0] = BoolGetDatum(has_updates);
	values[1] = BoolGetDatum(own);
	values[2] = PointerGetDatum(n == 0 ? construct_empty_array(TEXTOID) :
								construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
