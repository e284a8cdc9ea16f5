/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Consumer side: applying updates received from a producer.
 *
 * eventstream._apply_updates() applies a list of updates (Create with the
 * whole document, Update with Frappe's four-key diff, Delete) to the local
 * tables, each in a subtransaction of its own, and writes one sync_log row
 * per update in the calling transaction: a failing update becomes a Failed
 * entry and the others go on.  _apply_update() applies one update the same
 * way without logging it (resync).
 *
 * Writes to user tables run as the producer's subscriber role (the user id
 * is switched around each statement, SECURITY_LOCAL_USERID_CHANGE); the
 * bookkeeping (sync_log, remote_document) runs as the caller, the
 * extension's owner.  Every statement takes one jsonb parameter and
 * returns one jsonb value; their texts depend only on the table and the
 * set of columns given, so their plans are prepared once and kept (the
 * plan cache revalidates them after DDL).  Table descriptions are cached
 * too and dropped, with the plans, after any relcache invalidation, at the
 * start of the next update (never while one is being applied).
 *
 * A mapped subscription's updates are mapped first (eventstream._map_update
 * renames, defaults, child mappings) and their Document fields linked here
 * to local rows, found through remote_document or created from the fetched
 * document, all in the update's subtransaction.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/uuid.h"

#include "eventstream.h"
#include "consumer/failed.h"

PG_FUNCTION_INFO_V1(eventstream_apply_updates);
PG_FUNCTION_INFO_V1(eventstream_apply_update);
PG_FUNCTION_INFO_V1(eventstream_page_updated);
PG_FUNCTION_INFO_V1(eventstream_page_facts);

#define ES_PLAN_KEY		4096	/* longer statements are planned each time */

/* A local table as the apply sees it. */
typedef struct EsTable
{
	Oid			relid;			/* hash key */
	char	   *qualname;		/* quoted, schema-qualified */
	int			ncols;			/* columns a row may set (not generated) */
	char	  **cols;
	int			npk;			/* primary key columns */
	char	  **pk;
} EsTable;

typedef struct EsPlan
{
	char		sql[ES_PLAN_KEY];	/* hash key */
	SPIPlanPtr	plan;
} EsPlan;

static MemoryContext es_apply_cxt = NULL;	/* EsTable contents */
static HTAB *es_tables = NULL;
static HTAB *es_plans = NULL;
static bool es_apply_stale = false;
static SPIPlanPtr es_log_plan = NULL;	/* the sync_log INSERT, kept */

/* A subscription as the apply needs it. */
typedef struct EsSub
{
	char	   *ref_table;		/* the producer's name */
	Oid			relid;			/* InvalidOid: not subscribed */
	bool		same_name;
	char	   *mapping;		/* its mapping, or NULL */
	bool		dropped;		/* unsubscribed or no longer approved */
} EsSub;

/* sync_log rows waiting to be inserted, as column arrays. */
#define ES_LOG_COLS 13

/* What one _apply_updates() call applies for. */
typedef struct EsApply
{
	text	   *producer_url;
	Oid			subscriber;
	bool		dependency;		/* rows of tables not subscribed: same name */
	Jsonb	   *fetched;		/* documents fetched for the updates, or NULL */
	char	   *producer_origin;	/* the producer's site id: the origin of an
									 * update that names none */
	Datum		producer_uuid;	/* the same, as a uuid */
	List	   *subs;			/* EsSub, looked up once per call */
	MemoryContext subs_cxt;		/* where they live */
	MemoryContext batch_cxt;	/* the pending sync_log rows */
	int			nlog;
	int			maxlog;
	Datum	   *log[ES_LOG_COLS];
	bool	   *lognull[ES_LOG_COLS];
} EsApply;

/*
 * es_apply_invalidate
 *		Relcache callback: descriptions and plans may be out of date; drop
 *		them at the next safe point.
 */
static void
es_apply_invalidate(Datum arg, Oid relid)
{
	es_apply_stale = true;
}

/*
 * es_apply_reset
 *		Set up, or drop and set up again, the caches.  Only between updates.
 */
static void
es_apply_reset(void)
{
	HASHCTL		ctl;

	if (es_apply_cxt == NULL)
	{
		es_apply_cxt = AllocSetContextCreate(TopMemoryContext, "eventstream apply cache",
											 ALLOCSET_DEFAULT_SIZES);
		CacheRegisterRelcacheCallback(es_apply_invalidate, (Datum) 0);
	}
	else if (!es_apply_stale && es_tables != NULL)
		return;

	if (es_plans != NULL)
	{
		HASH_SEQ_STATUS status;
		EsPlan	   *p;

		hash_seq_init(&status, es_plans);
		while ((p = hash_seq_search(&status)) != NULL)
			if (p->plan)
				SPI_freeplan(p->plan);
		hash_destroy(es_plans);
	}
	if (es_tables != NULL)
		hash_destroy(es_tables);
	if (es_log_plan != NULL)
		SPI_freeplan(es_log_plan);
	es_log_plan = NULL;
	MemoryContextReset(es_apply_cxt);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(EsTable);
	ctl.hcxt = es_apply_cxt;
	es_tables = hash_create("eventstream apply tables", 64, &ctl,
							HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = ES_PLAN_KEY;
	ctl.entrysize = sizeof(EsPlan);
	ctl.hcxt = es_apply_cxt;
	es_plans = hash_create("eventstream apply plans", 64, &ctl,
						   HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
	es_apply_stale = false;
}

/*
 * es_table
 *		The description of a local table (cached).
 */
static EsTable *
es_table(Oid relid)
{
	EsTable    *t;
	bool		found;
	Relation	rel;
	TupleDesc	desc;
	Oid			pkindex;
	MemoryContext old;

	t = hash_search(es_tables, &relid, HASH_ENTER, &found);
	if (found)
		return t;

	rel = RelationIdGetRelation(relid);
	if (!RelationIsValid(rel))
	{
		hash_search(es_tables, &relid, HASH_REMOVE, NULL);
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table with OID %u does not exist", relid)));
	}
	old = MemoryContextSwitchTo(es_apply_cxt);
	desc = RelationGetDescr(rel);
	t->qualname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
											 RelationGetRelationName(rel));
	t->cols = palloc(sizeof(char *) * Max(desc->natts, 1));
	t->ncols = 0;
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && att->attgenerated == '\0')
			t->cols[t->ncols++] = pstrdup(NameStr(att->attname));
	}
	pkindex = RelationGetPrimaryKeyIndex(rel);
	t->npk = 0;
	t->pk = NULL;
	if (OidIsValid(pkindex))
	{
		Relation	idx = RelationIdGetRelation(pkindex);

		t->npk = idx->rd_index->indnkeyatts;
		t->pk = palloc(sizeof(char *) * t->npk);
		for (int i = 0; i < t->npk; i++)
			t->pk[i] = pstrdup(NameStr(TupleDescAttr(desc, idx->rd_index->indkey.values[i] - 1)->attname));
		RelationClose(idx);
	}
	MemoryContextSwitchTo(old);
	RelationClose(rel);
	if (t->npk == 0)
	{
		char	   *name = t->qualname;

		hash_search(es_tables, &relid, HASH_REMOVE, NULL);
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table %s has no primary key", name)));
	}
	return t;
}

/*
 * es_run_args
 *		Run sql with the given parameters as role (InvalidOid: the current
 *		user) and return the first column of its first row, a jsonb copied
 *		into the current memory context (NULL: no row, or SQL NULL).  The
 *		statement's plan is prepared once (generic: custom plans would be
 *		made anew for every row) and kept.  The caller is connected to SPI.
 */
static Jsonb *
es_run_args(Oid role, const char *sql, int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	SPIPlanPtr	plan = NULL;
	EsPlan	   *entry = NULL;
	Oid			save_userid;
	int			save_sec;
	int			rc;
	Jsonb	   *result = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	if (strlen(sql) < ES_PLAN_KEY)
	{
		bool		found;

		entry = hash_search(es_plans, sql, HASH_ENTER, &found);
		if (!found)
			entry->plan = NULL;
		plan = entry->plan;
	}
	if (plan == NULL)
	{
		plan = SPI_prepare_cursor(sql, nargs, argtypes, CURSOR_OPT_GENERIC_PLAN);
		if (plan == NULL)
			elog(ERROR, "could not prepare \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (entry)
		{
			SPI_keepplan(plan);
			entry->plan = plan;
		}
	}

	GetUserIdAndSecContext(&save_userid, &save_sec);
	if (OidIsValid(role))
		SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	rc = SPI_execute_plan(plan, values, nulls, false, 0);
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc < 0)
		elog(ERROR, "could not run \"%s\": %s", sql, SPI_result_code_string(rc));
	if (SPI_tuptable != NULL && SPI_processed > 0)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			result = DatumGetJsonbPCopy(d);
			MemoryContextSwitchTo(old);
		}
	}
	if (SPI_tuptable)
		SPI_freetuptable(SPI_tuptable);
	if (entry == NULL)
		SPI_freeplan(plan);
	return result;
}

/*
 * es_run
 *		es_run_args with $1 = arg (jsonb).
 */
static Jsonb *
es_run(Oid role, const char *sql, Jsonb *arg)
{
	Oid			argtypes[1] = {JSONBOID};
	Datum		values[1];
	char		nulls[1];

	values[0] = PointerGetDatum(arg);
	nulls[0] = arg ? ' ' : 'n';
	return es_run_args(role, sql, 1, argtypes, values, nulls);
}

/*
 * es_run_range
 *		es_run_args for statements over a range of a JSON array: $1 = arr,
 *		$2 = first, $3 = last element (1-based).
 */
static Jsonb *
es_run_range(Oid role, const char *sql, Jsonb *arr, int first, int last)
{
	Oid			argtypes[3] = {JSONBOID, INT4OID, INT4OID};
	Datum		values[3];

	values[0] = PointerGetDatum(arr);
	values[1] = Int32GetDatum(first);
	values[2] = Int32GetDatum(last);
	return es_run_args(role, sql, 3, argtypes, values, NULL);
}

/* jsonb helpers */

static Jsonb *
es_jsonb_parse(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}

/* The field key of object j (NULL when absent; JSON null is a value). */
static Jsonb *
es_field(Jsonb *j, const char *key)
{
	JsonbValue *v;

	if (j == NULL || !JB_ROOT_IS_OBJECT(j) || JB_ROOT_IS_SCALAR(j))
		return NULL;
	v = getKeyJsonValueFromContainer(&j->root, key, strlen(key), NULL);
	return v ? JsonbValueToJsonb(v) : NULL;
}

/* The field key of object j as text (NULL when absent or null). */
static char *
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
static char *
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

static bool
es_is_object(Jsonb *j)
{
	return j != NULL && JB_ROOT_IS_OBJECT(j) && !JB_ROOT_IS_SCALAR(j);
}

static bool
es_is_array(Jsonb *j)
{
	return j != NULL && JB_ROOT_IS_ARRAY(j) && !JB_ROOT_IS_SCALAR(j);
}

static Jsonb *
es_concat(Jsonb *a, Jsonb *b)
{
	if (a == NULL)
		return b;
	if (b == NULL)
		return a;
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(a), JsonbPGetDatum(b)));
}

static Jsonb *
es_without(Jsonb *j, char **keys, int n)
{
	for (int i = 0; i < n && j; i++)
		j = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(j), CStringGetTextDatum(keys[i])));
	return j;
}

/* The top-level keys of object j. */
static List *
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
static List *
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
static void
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

/* The key columns of a row of t, as an object, from its docname. */
static Jsonb *
es_key_of(EsTable *t, const char *docname)
{
	StringInfoData buf;
	List	   *parts;

	if (docname == NULL)
		return NULL;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	if (t->npk == 1)
		es_json_pair(&buf, t->pk[0], docname);
	else
	{
		Jsonb	   *arr = docname[0] == '[' ? es_jsonb_parse(docname) : NULL;

		parts = es_elements(arr);
		if (list_length(parts) != t->npk)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("docname \"%s\" does not name a row of %s", docname, t->qualname),
					 errdetail("Its key has %d columns: a docname is then a JSON array of their values.", t->npk)));
		for (int i = 0; i < t->npk; i++)
		{
			Jsonb	   *e = list_nth(parts, i);

			appendStringInfoString(&buf, buf.len > 1 ? ", " : "");
			escape_json(&buf, t->pk[i]);
			appendStringInfo(&buf, ": %s", JsonbToCString(NULL, &e->root, VARSIZE(e)));
		}
	}
	appendStringInfoChar(&buf, '}');
	return es_jsonb_parse(buf.data);
}

/* The docname of a row of t (the producer's format: compact JSON array). */
static char *
es_docname_of(EsTable *t, Jsonb *row)
{
	StringInfoData buf;

	if (row == NULL)
		return NULL;
	if (t->npk == 1)
		return es_field_text(row, t->pk[0]);
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (int i = 0; i < t->npk; i++)
	{
		Jsonb	   *v = es_field(row, t->pk[i]);

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		appendStringInfoString(&buf, v ? JsonbToCString(NULL, &v->root, VARSIZE(v)) : "null");
	}
	appendStringInfoChar(&buf, ']');
	return buf.data;
}

/* The key columns of row, as an object (NULL if one is missing). */
static Jsonb *
es_key_from_row(EsTable *t, Jsonb *row)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	for (int i = 0; i < t->npk; i++)
	{
		Jsonb	   *v = es_field(row, t->pk[i]);

		if (v == NULL)
			return NULL;
		appendStringInfoString(&buf, i > 0 ? ", " : "");
		escape_json(&buf, t->pk[i]);
		appendStringInfo(&buf, ": %s", JsonbToCString(NULL, &v->root, VARSIZE(v)));
	}
	appendStringInfoChar(&buf, '}');
	return es_jsonb_parse(buf.data);
}

/* "t.a = k.a AND ..." over the primary key. */
static char *
es_key_match(EsTable *t)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&buf, "%st.%s = k.%s", i > 0 ? " AND " : "",
						 quote_identifier(t->pk[i]), quote_identifier(t->pk[i]));
	return buf.data;
}

static bool
es_is_pk(EsTable *t, const char *col)
{
	for (int i = 0; i < t->npk; i++)
		if (strcmp(t->pk[i], col) == 0)
			return true;
	return false;
}

/* The columns of t that object j gives, in table order (pk excluded if asked). */
static List *
es_given_columns(EsTable *t, Jsonb *j, bool skip_pk)
{
	List	   *keys = es_keys(j);
	List	   *cols = NIL;

	for (int i = 0; i < t->ncols; i++)
	{
		ListCell   *lc;

		if (skip_pk && es_is_pk(t, t->cols[i]))
			continue;
		foreach(lc, keys)
			if (strcmp(lfirst(lc), t->cols[i]) == 0)
			{
				cols = lappend(cols, t->cols[i]);
				break;
			}
	}
	return cols;
}

/* Append "prefixcol1, prefixcol2, ..." (quoted) to buf. */
static void
es_append_cols(StringInfo buf, List *cols, const char *prefix)
{
	ListCell   *lc;

	foreach(lc, cols)
		appendStringInfo(buf, "%s%s%s", foreach_current_index(lc) > 0 ? ", " : "", prefix,
						 quote_identifier(lfirst(lc)));
}

/*
 * es_upsert
 *		Insert row into t, or update the row with the same key; key NULL:
 *		the table's defaults make the key.  As the subscriber.  Returns the
 *		row as stored; *inserted tells which.
 */
static Jsonb *es_upsert_core(EsApply *a, EsTable *t, Jsonb *row, bool keyed, bool *inserted);

static Jsonb *
es_upsert(EsApply *a, EsTable *t, Jsonb *row, Jsonb *key, bool *inserted)
{
	Jsonb	   *res;

	if (key != NULL)
		row = es_concat(es_without(row, t->pk, t->npk), key);
	res = es_upsert_core(a, t, row, key != NULL, inserted);
	return res ? res : key;
}

/* es_upsert of a row whose key columns are all there. */
static Jsonb *
es_upsert_as_is(EsApply *a, EsTable *t, Jsonb *row, bool *inserted)
{
	Jsonb	   *res = es_upsert_core(a, t, row, true, inserted);

	return res ? res : es_key_from_row(t, row);
}

/*
 * es_upsert_core
 *		The statement of es_upsert: keyed, ON CONFLICT on the primary key;
 *		otherwise a plain INSERT without the key columns.  NULL when the row
 *		was there and had nothing else to set.
 */
static Jsonb *
es_upsert_core(EsApply *a, EsTable *t, Jsonb *row, bool keyed, bool *inserted)
{
	StringInfoData sql;
	List	   *cols;
	ListCell   *lc;
	bool		rest = false;
	Jsonb	   *res;

	cols = es_given_columns(t, row, !keyed);

	initStringInfo(&sql);
	appendStringInfo(&sql, "INSERT INTO %s AS t (", t->qualname);
	es_append_cols(&sql, cols, "");
	if (cols == NIL)
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "INSERT INTO %s AS t DEFAULT VALUES", t->qualname);
	}
	else
	{
		appendStringInfoString(&sql, ") SELECT ");
		es_append_cols(&sql, cols, "r.");
		appendStringInfo(&sql, " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) r", t->qualname);
	}
	if (keyed)
	{
		appendStringInfoString(&sql, " ON CONFLICT (");
		for (int i = 0; i < t->npk; i++)
			appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "", quote_identifier(t->pk[i]));
		appendStringInfoString(&sql, ") DO ");
		foreach(lc, cols)
		{
			if (es_is_pk(t, lfirst(lc)))
				continue;
			appendStringInfo(&sql, "%s%s = EXCLUDED.%s", rest ? ", " : "UPDATE SET ",
							 quote_identifier(lfirst(lc)), quote_identifier(lfirst(lc)));
			rest = true;
		}
		if (!rest)
			appendStringInfoString(&sql, "NOTHING");
	}
	appendStringInfoString(&sql, " RETURNING pg_catalog.jsonb_build_object('row', pg_catalog.to_jsonb(t.*),"
						   " 'inserted', t.xmax::text = '0')");
	res = es_run(a->subscriber, sql.data, row);
	if (res == NULL)
	{
		/* ON CONFLICT DO NOTHING: the row is there and has nothing else. */
		*inserted = false;
		return NULL;
	}
	*inserted = strcmp(es_field_text(res, "inserted"), "true") == 0;
	return es_field(res, "row");
}

/* es_upsert of a row that carries its own key. */
static Jsonb *
es_upsert_keyed(EsApply *a, EsTable *t, Jsonb *row, bool *inserted)
{
	for (int i = 0; i < t->npk; i++)
		if (es_field(row, t->pk[i]) == NULL)
			return es_upsert(a, t, row, es_key_from_row(t, row), inserted);
	return es_upsert_as_is(a, t, row, inserted);
}

/* The row of t with key, as the subscriber (NULL if none). */
static Jsonb *
es_select(EsApply *a, EsTable *t, Jsonb *key)
{
	return es_run(a->subscriber,
				  psprintf("SELECT pg_catalog.to_jsonb(t.*) FROM %s t, pg_catalog.jsonb_populate_record(NULL::%s, $1) k WHERE %s",
						   t->qualname, t->qualname, es_key_match(t)),
				  key);
}

/* Delete the row of t with key; the row deleted, or NULL. */
static Jsonb *
es_delete(EsApply *a, EsTable *t, Jsonb *key)
{
	return es_run(a->subscriber,
				  psprintf("DELETE FROM %s t USING pg_catalog.jsonb_populate_record(NULL::%s, $1) k WHERE %s"
						   " RETURNING pg_catalog.to_jsonb(t.*)",
						   t->qualname, t->qualname, es_key_match(t)),
				  key);
}

/* Set the columns that set gives on the row of t with key; the row, or NULL. */
static Jsonb *
es_update(EsApply *a, EsTable *t, Jsonb *set, Jsonb *key)
{
	List	   *cols = es_given_columns(t, set, true);
	StringInfoData sql;
	StringInfoData arg;

	if (cols == NIL)
		return es_select(a, t, key);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s t SET (", t->qualname);
	es_append_cols(&sql, cols, "");
	appendStringInfoString(&sql, ") = (SELECT ");
	es_append_cols(&sql, cols, "s.");
	appendStringInfo(&sql, " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1->'s') s)"
					 " FROM pg_catalog.jsonb_populate_record(NULL::%s, $1->'k') k WHERE %s"
					 " RETURNING pg_catalog.to_jsonb(t.*)",
					 t->qualname, t->qualname, es_key_match(t));
	initStringInfo(&arg);
	appendStringInfo(&arg, "{\"s\": %s, \"k\": %s}",
					 JsonbToCString(NULL, &set->root, VARSIZE(set)),
					 JsonbToCString(NULL, &key->root, VARSIZE(key)));
	return es_run(a->subscriber, sql.data, es_jsonb_parse(arg.data));
}

/*
 * es_child_link
 *		A local child table of parent, named on the wire, and how its
 *		foreign key columns take the parent's: {"child col": "parent col"}.
 */
static EsTable *
es_child_link(const char *child_name, EsTable *parent, Oid parent_relid, Jsonb **link)
{
	Oid			child;
	Jsonb	   *res;
	StringInfoData arg;

	child = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(child_name)),
							 NoLock, true);
	if (!OidIsValid(child))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("child table \"%s\" does not exist on this site", child_name),
				 errhint("Create it here with the same columns as on the producer.")));
	initStringInfo(&arg);
	appendStringInfo(&arg, "{\"c\": %u, \"p\": %u}", child, parent_relid);
	res = es_run(InvalidOid,
				 "SELECT pg_catalog.jsonb_build_object('link', eventstream._child_fk(($1->>'p')::oid, ($1->>'c')::oid))",
				 es_jsonb_parse(arg.data));
	if (es_field_text(res, "link") == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_FOREIGN_KEY),
				 errmsg("table %s needs exactly one foreign key to %s to hold its child rows",
						es_table(child)->qualname, parent->qualname)));
	*link = es_field(res, "link");
	return es_table(child);
}

/* The foreign key values a child row takes from its parent row. */
static Jsonb *
es_parent_values(Jsonb *link, Jsonb *parent_row, EsTable *only_pk_of)
{
	StringInfoData buf;
	ListCell   *lc;
	List	   *keys = es_keys(link);

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	foreach(lc, keys)
	{
		char	   *ccol = lfirst(lc);
		char	   *pcol = es_field_text(link, ccol);
		Jsonb	   *v = es_field(parent_row, pcol);

		if (only_pk_of && !es_is_pk(only_pk_of, ccol))
			continue;
		appendStringInfoString(&buf, buf.len > 1 ? ", " : "");
		escape_json(&buf, ccol);
		appendStringInfo(&buf, ": %s", v ? JsonbToCString(NULL, &v->root, VARSIZE(v)) : "null");
	}
	appendStringInfoChar(&buf, '}');
	return es_jsonb_parse(buf.data);
}

/* Add a note to *notes. */
static void es_note(StringInfo notes, const char *fmt,...) pg_attribute_printf(2, 3);

static void
es_note(StringInfo notes, const char *fmt,...)
{
	va_list		args;

	if (notes->len > 0)
		appendStringInfoString(notes, "; ");
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(notes, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(notes, needed);
	}
}

/*
 * es_sub
 *		The subscription to a producer's table (looked up once per call,
 *		in the call's memory).
 */
static EsSub *
es_sub(EsApply *a, const char *ref)
{
	ListCell   *lc;
	EsSub	   *sub;
	Jsonb	   *pt;
	StringInfoData arg;
	MemoryContext old;

	foreach(lc, a->subs)
	{
		sub = lfirst(lc);
		if (strcmp(sub->ref_table, ref) == 0)
			return sub;
	}
	initStringInfo(&arg);
	appendStringInfoChar(&arg, '{');
	es_json_pair(&arg, "p", text_to_cstring(a->producer_url));
	es_json_pair(&arg, "t", ref);
	appendStringInfoChar(&arg, '}');
	pt = es_run(InvalidOid,
				"SELECT pg_catalog.jsonb_build_object('relid', t.local_table::oid, 'same', t.use_same_name,"
				"                                     'mapping', t.mapping,"
				"                                     'off', t.unsubscribe OR t.status <> 'Approved')"
				"  FROM eventstream.producer_table t WHERE t.producer_url = $1->>'p' AND t.ref_table = $1->>'t'",
				es_jsonb_parse(arg.data));
	old = MemoryContextSwitchTo(a->subs_cxt);
	sub = palloc0(sizeof(EsSub));
	sub->ref_table = pstrdup(ref);
	if (pt != NULL)
	{
		sub->relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(pt, "relid"))));
		sub->same_name = strcmp(es_field_text(pt, "same"), "true") == 0;
		sub->mapping = es_field_text(pt, "mapping");
		sub->dropped = strcmp(es_field_text(pt, "off"), "true") == 0;
	}
	a->subs = lappend(a->subs, sub);
	MemoryContextSwitchTo(old);
	return sub;
}

/*
 * es_origin
 *		The site an update comes from: its "origin", or the producer itself
 *		when it names none (a producer sends origins of other sites only).
 */
static char *
es_origin(EsApply *a, Jsonb *upd)
{
	char	   *origin = es_field_text(upd, "origin");

	return origin ? origin : a->producer_origin;
}

/*
 * es_apply_begin
 *		Set up a for applying updates received from producer_url as
 *		subscriber (in a->subs_cxt).  The caller is connected to SPI.
 */
static void
es_apply_begin(EsApply *a, text *producer_url, Oid subscriber)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	MemoryContext cxt = a->subs_cxt;

	a->producer_url = producer_url;
	a->subscriber = subscriber;
	a->producer_origin = NULL;
	a->producer_uuid = (Datum) 0;
	values[0] = PointerGetDatum(producer_url);
	if (SPI_execute_with_args("SELECT producer_site_id FROM eventstream.producer WHERE producer_url = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the producer");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			a->producer_uuid = datumCopy(d, false, UUID_LEN);
			a->producer_origin = DatumGetCString(DirectFunctionCall1(uuid_out, a->producer_uuid));
			MemoryContextSwitchTo(old);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * es_with_field
 *		obj with key set to value.
 */
static Jsonb *
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
 * es_remote_arg
 *		The argument of the statements on remote_document about the
 *		producer's row remote of relid (and the local docname, if given):
 *		{"r": relid, "p": producer, "d": remote, "l": docname}.
 */
static Jsonb *
es_remote_arg(EsApply *a, Oid relid, const char *remote, const char *docname)
{
	StringInfoData arg;

	initStringInfo(&arg);
	appendStringInfo(&arg, "{\"r\": %u", relid);
	es_json_pair(&arg, "p", text_to_cstring(a->producer_url));
	es_json_pair(&arg, "d", remote);
	if (docname)
		es_json_pair(&arg, "l", docname);
	appendStringInfoChar(&arg, '}');
	return es_jsonb_parse(arg.data);
}

/*
 * es_remember_remote
 *		Record that the local row docname of relid is the producer's
 *		remote one (remote_document), unless either is recorded already.
 */
static void
es_remember_remote(EsApply *a, Oid relid, const char *docname, const char *remote)
{
	(void) es_run(InvalidOid,
				  "INSERT INTO eventstream.remote_document (local_table, local_docname, producer_url, remote_docname)"
				  " VALUES (($1->>'r')::oid::regclass, $1->>'l', $1->>'p', $1->>'d') ON CONFLICT DO NOTHING",
				  es_remote_arg(a, relid, remote, docname));
}

/*
 * es_link_value
 *		The local key a Document field of a mapping links to (a link as
 *		eventstream._mapping_link describes it): the row found through its
 *		remote name, or one created now from the mapped document (its own
 *		links first; its key from the document, or else the table's
 *		defaults) and recorded under its remote name.  As the subscriber,
 *		in the caller's subtransaction.
 */
static Jsonb *
es_link_value(EsApply *a, Jsonb *link, StringInfo notes)
{
	Oid			relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(link, "table"))));
	EsTable    *t = es_table(relid);
	char	   *local = es_field_text(link, "local");
	char	   *remote = es_field_text(link, "remote");
	Jsonb	   *data;
	Jsonb	   *links;
	Jsonb	   *cur;
	bool		inserted;
	ListCell   *lc;

	if (t->npk != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table %s needs a one-column primary key to be linked to", t->qualname)));
	if (local != NULL)
		return es_field(es_key_of(t, local), t->pk[0]);

	data = es_field(link, "data");
	links = es_field(link, "links");
	if (links != NULL)
		foreach(lc, es_elements(links))
			data = es_with_field(data, es_field_text(lfirst(lc), "column"), es_link_value(a, lfirst(lc), notes));
	cur = es_upsert_keyed(a, t, data, &inserted);
	es_remember_remote(a, relid, es_docname_of(t, cur), remote);
	es_note(notes, "%s %s \"%s\" (producer's \"%s\") for %s", inserted ? "created" : "updated",
			t->qualname, es_docname_of(t, cur), remote, es_field_text(link, "column"));
	return es_field(cur, t->pk[0]);
}

/*
 * es_map
 *		An update's data mapped with its subscription's mapping
 *		(eventstream._map_update), its Document fields linked to local rows.
 *		Raises when a dependency could not be had.
 */
static Jsonb *
es_map(EsApply *a, EsSub *sub, const char *type, const char *remote, Jsonb *data, StringInfo notes)
{
	Oid			argtypes[7] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
	Datum		values[7];
	Jsonb	   *m;
	Jsonb	   *part;
	Jsonb	   *mapped;
	ListCell   *lc;

	values[0] = PointerGetDatum(a->producer_url);
	values[1] = ObjectIdGetDatum(a->subscriber);
	values[2] = CStringGetTextDatum(sub->mapping);
	values[3] = CStringGetTextDatum(type);
	values[4] = PointerGetDatum(data);
	values[5] = PointerGetDatum(a->fetched ? a->fetched : es_jsonb_parse("[]"));
	values[6] = CStringGetTextDatum(remote);
	m = es_run_args(InvalidOid, "SELECT eventstream._map_update($1, $2::regrole, $3, $4, $5, $6, $7)",
					7, argtypes, values, NULL);
	mapped = es_field(m, "data");

	if ((part = es_field(m, "problems")) != NULL && es_elements(part) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("%s", es_scalar_text(linitial(es_elements(part)))),
				 errhint("Resync this entry once the producer has the document.")));
	if ((part = es_field(m, "wants")) != NULL && es_elements(part) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("a document mapping \"%s\" links to was not fetched from the producer", sub->mapping),
				 errdetail("It is fetched with GET %s.", es_field_text(linitial(es_elements(part)), "path")),
				 errhint("Resync this entry: that fetches it.")));
	if ((part = es_field(m, "notes")) != NULL)
		foreach(lc, es_elements(part))
			es_note(notes, "%s", es_scalar_text(lfirst(lc)));
	if ((part = es_field(m, "links")) != NULL)
		foreach(lc, es_elements(part))
		{
			Jsonb	   *link = lfirst(lc);
			Jsonb	   *value = es_link_value(a, link, notes);
			char	   *column = es_field_text(link, "column");

			if (strcmp(type, "Update") == 0)
				mapped = es_with_field(mapped, "changed", es_with_field(es_field(mapped, "changed"), column, value));
			else
				mapped = es_with_field(mapped, column, value);
		}
	return mapped;
}

/*
 * es_apply_doc
 *		Apply one update to the local tables.  Raises on failure (the caller
 *		keeps it to the update's subtransaction).  Sets *local (the local
 *		table), *docname (the local docname) and notes.
 */
static void
es_apply_doc(EsApply *a, Jsonb *upd, Oid *local, char **docname, StringInfo notes)
{
	char	   *type = es_field_text(upd, "update_type");
	char	   *ref = es_field_text(upd, "ref_table");
	char	   *remote = es_field_text(upd, "docname");
	Jsonb	   *data = es_field(upd, "data");
	EsSub	   *sub;
	Oid			relid;
	bool		same_name;
	EsTable    *t;
	Jsonb	   *key = NULL;
	Jsonb	   *cur = NULL;
	char	   *origin = es_origin(a, upd);

	if (type == NULL || ref == NULL || remote == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an update needs update_type, ref_table and docname")));

	/* The subscription, or (a dependency) the table of the same name. */
	sub = es_sub(a, ref);
	if (OidIsValid(sub->relid))
	{
		relid = sub->relid;
		same_name = sub->same_name;
	}
	else if (a->dependency)
	{
		relid = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(ref)), NoLock, true);
		same_name = true;
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table \"%s\" does not exist on this site", ref),
					 errhint("Rows of the producer's tables that subscribed rows refer to are copied into tables of the same name.")));
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s\" is not subscribed from this producer", ref)));
	*local = relid;
	t = es_table(relid);

	/*
	 * Changes applied here carry the site they came from (no loops), the
	 * rows a mapping links as well.
	 */
	if (origin)
	{
		pg_uuid_t  *u = DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(origin)));

		memcpy(&es_apply_origin, u, sizeof(pg_uuid_t));
		es_apply_origin_set = true;
	}

	/* A mapped subscription: the data as this site's tables have it. */
	if (sub->mapping != NULL && es_is_object(data) &&
		(strcmp(type, "Create") == 0 || strcmp(type, "Update") == 0))
		data = es_map(a, sub, type, remote, data, notes);

	/* The local row's key (a Create of the same name carries it). */
	if (same_name)
		key = strcmp(type, "Create") == 0 ? NULL : es_key_of(t, remote);
	else
	{
		Jsonb	   *found;

		found = es_run(InvalidOid,
					   "SELECT pg_catalog.jsonb_build_object('v', d.local_docname) FROM eventstream.remote_document d"
					   " WHERE d.producer_url = $1->>'p' AND d.local_table = ($1->>'r')::oid::regclass"
					   "   AND d.remote_docname = $1->>'d'",
					   es_remote_arg(a, relid, remote, NULL));
		if (found)
			key = es_key_of(t, es_field_text(found, "v"));
	}

	if (strcmp(type, "Create") == 0)
	{
		bool		inserted;
		List	   *keys;
		ListCell   *lc;

		if (!es_is_object(data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a Create needs the document as a JSON object")));
		/*
		 * Same name: the document carries its key (no need to merge it in);
		 * mapped, the producer's docname is the key.
		 */
		if (same_name && sub->mapping != NULL)
			key = es_key_of(t, remote);
		cur = same_name && key == NULL ? es_upsert_keyed(a, t, data, &inserted) : es_upsert(a, t, data, key, &inserted);
		if (!inserted)
			es_note(notes, "the row existed: it now has the producer's values");
		if (!same_name && key == NULL)
			es_remember_remote(a, relid, es_docname_of(t, cur), remote);
		/* Child rows: the document's, replacing what was there. */
		keys = es_keys(data);
		foreach(lc, keys)
		{
			char	   *name = lfirst(lc);
			Jsonb	   *rows = es_field(data, name);
			Jsonb	   *link;
			EsTable    *ct;
			ListCell   *rc;
			bool		is_col = false;

			for (int i = 0; i < t->ncols; i++)
				if (strcmp(t->cols[i], name) == 0)
					is_col = true;
			if (is_col || !es_is_array(rows))
				continue;
			ct = es_child_link(name, t, relid, &link);
			if (!inserted)
			{
				Jsonb	   *fk = es_parent_values(link, cur, NULL);
				List	   *fkcols = es_keys(fk);
				StringInfoData sql;
				ListCell   *fc;

				initStringInfo(&sql);
				appendStringInfo(&sql, "DELETE FROM %s t USING pg_catalog.jsonb_populate_record(NULL::%s, $1) k WHERE ",
								 ct->qualname, ct->qualname);
				foreach(fc, fkcols)
					appendStringInfo(&sql, "%st.%s = k.%s", foreach_current_index(fc) > 0 ? " AND " : "",
									 quote_identifier(lfirst(fc)), quote_identifier(lfirst(fc)));
				(void) es_run(a->subscriber, sql.data, fk);
			}
			foreach(rc, es_elements(rows))
			{
				Jsonb	   *r = es_concat(lfirst(rc), es_parent_values(link, cur, NULL));
				bool		ins;

				(void) es_upsert(a, ct, r, es_key_from_row(ct, r), &ins);
			}
		}
	}
	else if (strcmp(type, "Update") == 0)
	{
		Jsonb	   *changed;
		static const char *const parts[] = {"removed", "row_changed", "added"};

		if (!es_is_object(data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("an Update needs the four-key diff as a JSON object")));
		/* The changed columns, or (for child rows only) the row as it is. */
		changed = es_field(data, "changed");
		if (key != NULL)
			cur = es_is_object(changed) ? es_update(a, t, changed, key) : es_select(a, t, key);
		if (cur == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("no row of %s here for document \"%s\"", t->qualname, remote),
					 errhint("The producer did not serve it either. Resync this entry once the row exists.")));

		/* Child rows: removed, changed, added. */
		for (int p = 0; p < (int) lengthof(parts); p++)
		{
			Jsonb	   *part = es_field(data, parts[p]);
			ListCell   *lc;

			if (!es_is_object(part))
				continue;
			foreach(lc, es_keys(part))
			{
				char	   *name = lfirst(lc);
				Jsonb	   *link;
				EsTable    *ct = es_child_link(name, t, relid, &link);
				ListCell   *rc;

				foreach(rc, es_elements(es_field(part, name)))
				{
					Jsonb	   *r = lfirst(rc);

					if (p == 0)
					{
						/* removed: docnames of child rows */
						char	   *dn = es_scalar_text(r);
						Jsonb	   *k = es_concat(es_key_of(ct, dn), es_parent_values(link, cur, ct));

						if (es_delete(a, ct, k) == NULL)
							es_note(notes, "removed row %s of %s was not here", dn, ct->qualname);
					}
					else if (p == 1)
					{
						/* row_changed: changed columns plus the row's key */
						Jsonb	   *rr = es_concat(r, es_parent_values(link, cur, ct));
						Jsonb	   *k = es_key_from_row(ct, rr);

						if (k == NULL || es_update(a, ct, rr, k) == NULL)
							es_note(notes, "changed row %s of %s was not here", es_docname_of(ct, rr), ct->qualname);
					}
					else
					{
						/* added: whole rows */
						Jsonb	   *rr = es_concat(r, es_parent_values(link, cur, NULL));
						bool		ins;

						(void) es_upsert(a, ct, rr, es_key_from_row(ct, rr), &ins);
					}
				}
			}
		}
	}
	else if (strcmp(type, "Delete") == 0)
	{
		if (key != NULL)
			cur = es_delete(a, t, key);
		if (cur == NULL)
			es_note(notes, "the row was not here: nothing to delete");
		if (!same_name)
			(void) es_run(InvalidOid,
						  "DELETE FROM eventstream.remote_document d"
						  " WHERE d.producer_url = $1->>'p' AND d.local_table = ($1->>'r')::oid::regclass"
						  "   AND d.remote_docname = $1->>'d'",
						  es_remote_arg(a, relid, remote, NULL));
		*docname = cur ? es_docname_of(t, cur) : (same_name ? remote : NULL);
		return;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown update_type \"%s\"", type)));
	*docname = es_docname_of(t, cur);
}

/* Outcome of one update. */
typedef struct EsOutcome
{
	bool		ok;
	Oid			local;
	char	   *docname;
	char	   *error;
	int			sqlerrcode;
	char	   *note;
} EsOutcome;

/*
 * es_subxact_caught
 *		In the PG_CATCH of an internal subtransaction begun in cxt under
 *		owner, when the error is to become a failure of what was tried:
 *		roll the subtransaction back and return the error (in cxt).  A
 *		query cancel (pg_cancel_backend, statement_timeout) is no such
 *		failure but a request to stop: it is raised again.
 */
static ErrorData *
es_subxact_caught(MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		ReThrowError(edata);
	return edata;
}

/*
 * es_apply_one
 *		Apply one update in a subtransaction of its own; an error is caught
 *		and described in the outcome.  The caller is connected to SPI.
 */
static void
es_apply_one(EsApply *a, Jsonb *upd, EsOutcome *out)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	StringInfoData notes;

	memset(out, 0, sizeof(EsOutcome));
	initStringInfo(&notes);
	es_apply_reset();

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		es_apply_doc(a, upd, &out->local, &out->docname, &notes);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		out->ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata = es_subxact_caught(cxt, owner);

		out->ok = false;
		out->sqlerrcode = edata->sqlerrcode;
		out->error = edata->detail ? psprintf("%s\n%s", edata->message, edata->detail) : pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	out->note = notes.len > 0 ? notes.data : NULL;
}

/* The sync_log columns the apply gives, in the order of EsApply.log. */
static const char *const es_log_colnames[ES_LOG_COLS] = {
	"update_type", "ref_table", "status", "producer_url", "docname", "remote_docname", "use_same_name",
	"data", "error", "note", "update_log_id", "remote_ref_table", "origin"
};
static const Oid es_log_coltypes[ES_LOG_COLS] = {
	TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID,
	JSONBOID, TEXTOID, TEXTOID, INT8OID, TEXTOID, UUIDOID
};

/*
 * Straight writes into a table, the way COPY FROM inserts: one multi-insert
 * into the heap, then each row's index entries, with the table's defaults
 * for the columns not given and its constraints applied as an INSERT would
 * (es_batch_direct also updates and deletes with the same executor state).
 * It costs a fraction of an INSERT statement fed from arrays or jsonb,
 * which materialises every value and goes through the executor row by row.
 * Only for tables with nothing that just a statement honours
 * (es_write_usable); the caller checks the privilege.
 */
typedef struct EsWrite
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	ExprState **defaults;		/* per attribute not given: its default */
	TupleDesc	slotdesc;
	int			nrows;
	TupleTableSlot **slots;
} EsWrite;

/*
 * es_write_usable
 *		Whether rows can go straight into rel: a plain table, not a
 *		partition (its constraint is not checked here), without triggers
 *		(foreign keys and deferred unique checks are triggers too), row
 *		security or stored generated columns, in a transaction that may
 *		write.  Rules are not applied, as logical replication does not
 *		apply them (the statements cannot: INSERT ... ON CONFLICT refuses
 *		a table with rules).
 */
static bool
es_write_usable(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	return rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relispartition &&
		rel->trigdesc == NULL && !rel->rd_rel->relrowsecurity &&
		!(desc->constr && desc->constr->has_generated_stored) && !XactReadOnly;
}

/*
 * es_write_begin
 *		Set up writes of kind cmd into rel (opened by the caller with
 *		RowExclusiveLock, usable): for CMD_INSERT, of up to maxrows rows,
 *		where given[i] says attribute i + 1 is set by the caller and the
 *		others take their defaults.  In the current memory context, which
 *		must last until es_write_finish.
 */
static void
es_write_begin(EsWrite *ins, Relation rel, CmdType cmd, const bool *given, int maxrows)
{
	TupleDesc	desc = RelationGetDescr(rel);
	RangeTblEntry *rte;

	ins->rel = rel;
	ins->estate = CreateExecutorState();
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	rte->requiredPerms = cmd == CMD_INSERT ? ACL_INSERT : cmd == CMD_UPDATE ? ACL_UPDATE : ACL_DELETE;
	ExecInitRangeTable(ins->estate, list_make1(rte));
	ins->rri = makeNode(ResultRelInfo);
	ExecInitResultRelation(ins->estate, ins->rri, 1);
	CheckValidResultRel(ins->rri, cmd);
	ExecOpenIndices(ins->rri, false);
	ins->estate->es_output_cid = GetCurrentCommandId(true);

	ins->defaults = palloc0(sizeof(ExprState *) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
	{
		Node	   *def;

		if (cmd != CMD_INSERT || given[i] || TupleDescAttr(desc, i)->attisdropped)
			continue;
		def = build_column_default(rel, i + 1);
		if (def != NULL)
			ins->defaults[i] = ExecPrepareExpr((Expr *) def, ins->estate);
	}

	/*
	 * The slots share a copy of the descriptor that is not reference
	 * counted: pinning the relation's in each of up to 1000 slots costs a
	 * resource owner entry per slot, forgotten one search at a time.
	 */
	ins->slotdesc = CreateTupleDescCopy(desc);
	ins->slots = palloc(sizeof(TupleTableSlot *) * maxrows);
	ins->nrows = 0;
}

/*
 * es_insert_row
 *		The next row's slot: the columns not given hold their defaults; the
 *		caller sets the given ones in tts_values / tts_isnull, then calls
 *		es_insert_store.
 */
static TupleTableSlot *
es_insert_row(EsWrite *ins)
{
	TupleTableSlot *slot = ExecAllocTableSlot(&ins->estate->es_tupleTable, ins->slotdesc, &TTSOpsHeapTuple);
	ExprContext *econtext = GetPerTupleExprContext(ins->estate);

	ExecClearTuple(slot);
	for (int i = 0; i < ins->slotdesc->natts; i++)
	{
		if (ins->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExpr(ins->defaults[i], econtext, &slot->tts_isnull[i]);
		else
		{
			slot->tts_values[i] = (Datum) 0;
			slot->tts_isnull[i] = true;
		}
	}
	ins->slots[ins->nrows++] = slot;
	return slot;
}

/*
 * es_insert_store
 *		The row of es_insert_row is complete: copy it into its slot and
 *		check the table's constraints (NOT NULL, CHECK) on it.
 */
static void
es_insert_store(EsWrite *ins, TupleTableSlot *slot)
{
	ExecStoreVirtualTuple(slot);
	ExecMaterializeSlot(slot);	/* out of the per-tuple memory */
	ResetPerTupleExprContext(ins->estate);
	if (RelationGetDescr(ins->rel)->constr)
		ExecConstraints(ins->rri, slot, ins->estate);
	ResetPerTupleExprContext(ins->estate);
}

/*
 * es_write_finish
 *		Insert the stored rows, if any, and their index entries (a unique
 *		violation is raised as by an INSERT), and release the executor
 *		state.  The caller closes the relation.
 */
static void
es_write_finish(EsWrite *ins)
{
	EState	   *estate = ins->estate;

	if (ins->nrows > 0)
		table_multi_insert(ins->rel, ins->slots, ins->nrows, estate->es_output_cid, 0, NULL);
	for (int r = 0; r < ins->nrows; r++)
	{
		if (ins->rri->ri_NumIndices > 0)
			(void) ExecInsertIndexTuples(ins->rri, ins->slots[r], estate, false, false, NULL, NIL);
		ResetPerTupleExprContext(estate);
	}
	ExecResetTupleTable(estate->es_tupleTable, false);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
	CommandCounterIncrement();
}

/*
 * es_log_row_text
 *		Column c of pending sync_log row r as a C string, or NULL.
 */
static char *
es_log_row_text(EsApply *a, int c, int r)
{
	return a->lognull[c][r] ? NULL : TextDatumGetCString(a->log[c][r]);
}

/*
 * es_log_note_failed
 *		Pending sync_log row r was written with the given id: note it for
 *		the server log (es_failed_note) if it is Failed.
 */
static void
es_log_note_failed(EsApply *a, int r, int64 id)
{
	text	   *status = DatumGetTextPP(a->log[2][r]);
	char	   *docname;

	if (VARSIZE_ANY_EXHDR(status) != 6 || memcmp(VARDATA_ANY(status), "Failed", 6) != 0)
		return;
	docname = es_log_row_text(a, 4, r);
	es_failed_note(text_to_cstring(a->producer_url), id, es_log_row_text(a, 0, r), es_log_row_text(a, 1, r),
				   docname ? docname : es_log_row_text(a, 5, r), es_log_row_text(a, 8, r));
}

/*
 * es_log_insert
 *		Write the pending sync_log rows straight into the table (EsWrite):
 *		a third of the cost of the SQL INSERT over unnest() arrays.  Returns
 *		false, having written nothing, when the table has anything only a
 *		SQL INSERT honours (es_write_usable, another type of a column) or
 *		the user may not insert: the caller runs the SQL INSERT then.
 */
static bool
es_log_insert(EsApply *a)
{
	Oid			relid;
	Relation	rel;
	TupleDesc	desc;
	int		   *map;			/* per attribute: our column, or -1 */
	bool	   *given;
	EsWrite		ins;
	MemoryContext old;
	bool		usable;
	AttrNumber	idatt;

	relid = get_relname_relid("sync_log", get_namespace_oid(EVENTSTREAM_SCHEMA, false));
	if (!OidIsValid(relid) || pg_class_aclcheck(relid, GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		return false;
	rel = table_open(relid, RowExclusiveLock);
	desc = RelationGetDescr(rel);
	usable = es_write_usable(rel);
	old = MemoryContextSwitchTo(a->batch_cxt);
	map = palloc(sizeof(int) * desc->natts);
	given = palloc0(sizeof(bool) * desc->natts);
	for (int i = 0; i < desc->natts; i++)
		map[i] = -1;
	for (int c = 0; c < ES_LOG_COLS && usable; c++)
	{
		AttrNumber	attnum = get_attnum(relid, es_log_colnames[c]);

		if (attnum <= 0 || TupleDescAttr(desc, attnum - 1)->atttypid != es_log_coltypes[c])
			usable = false;
		else
		{
			map[attnum - 1] = c;
			given[attnum - 1] = true;
		}
	}
	if (!usable)
	{
		MemoryContextSwitchTo(old);
		table_close(rel, RowExclusiveLock);
		return false;
	}

	idatt = get_attnum(relid, "id");
	es_write_begin(&ins, rel, CMD_INSERT, given, a->nlog);
	for (int r = 0; r < a->nlog; r++)
	{
		TupleTableSlot *slot = es_insert_row(&ins);

		for (int i = 0; i < desc->natts; i++)
			if (map[i] >= 0)
			{
				slot->tts_values[i] = a->log[map[i]][r];
				slot->tts_isnull[i] = a->lognull[map[i]][r];
			}
		/* The id, from its default (es_insert_row), for the server log. */
		if (idatt > 0 && !slot->tts_isnull[idatt - 1])
			es_log_note_failed(a, r, DatumGetInt64(slot->tts_values[idatt - 1]));
		es_insert_store(&ins, slot);
	}
	es_write_finish(&ins);
	table_close(rel, NoLock);
	MemoryContextSwitchTo(old);
	return true;
}

/*
 * es_log_flush
 *		Insert the pending sync_log rows: straight into the table when
 *		possible (es_log_insert), otherwise with one SQL statement.
 */
static void
es_log_flush(EsApply *a)
{
	const Oid  *elemtypes = es_log_coltypes;
	Datum		values[ES_LOG_COLS];
	int			rc;

	if (a->nlog == 0)
		return;
	if (es_log_insert(a))
	{
		a->nlog = 0;
		MemoryContextReset(a->batch_cxt);
		return;
	}
	if (es_log_plan == NULL)
	{
		Oid			argtypes[ES_LOG_COLS];
		SPIPlanPtr	plan;

		for (int c = 0; c < ES_LOG_COLS; c++)
			argtypes[c] = get_array_type(elemtypes[c]);
		/* The Failed rows come back, for the server log. */
		plan = SPI_prepare("WITH ins AS (INSERT INTO eventstream.sync_log (update_type, ref_table, status, producer_url,"
						   "    docname, remote_docname, use_same_name, data, error, note, update_log_id, remote_ref_table,"
						   "    origin)"
						   "  SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
						   "    pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6), pg_catalog.unnest($7),"
						   "    pg_catalog.unnest($8), pg_catalog.unnest($9), pg_catalog.unnest($10), pg_catalog.unnest($11),"
						   "    pg_catalog.unnest($12), pg_catalog.unnest($13))"
						   "  RETURNING id, status, update_type, ref_table, coalesce(docname, remote_docname) AS docname, error)"
						   " SELECT id, update_type, ref_table, docname, error FROM ins WHERE status = 'Failed'",
						   ES_LOG_COLS, argtypes);
		if (plan == NULL)
			elog(ERROR, "could not prepare the sync_log insert: %s", SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		es_log_plan = plan;
	}
	for (int c = 0; c < ES_LOG_COLS; c++)
	{
		int16		typlen;
		bool		typbyval;
		char		typalign;
		int			dims[1] = {a->nlog};
		int			lbs[1] = {1};

		get_typlenbyvalalign(elemtypes[c], &typlen, &typbyval, &typalign);
		values[c] = PointerGetDatum(construct_md_array(a->log[c], a->lognull[c], 1, dims, lbs,
													   elemtypes[c], typlen, typbyval, typalign));
	}
	rc = SPI_execute_plan(es_log_plan, values, NULL, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not write the sync log: %s", SPI_result_code_string(rc));
	for (uint64 r = 0; r < SPI_processed; r++)
	{
		HeapTuple	tup = SPI_tuptable->vals[r];
		TupleDesc	desc = SPI_tuptable->tupdesc;

		es_failed_note(text_to_cstring(a->producer_url),
					   DatumGetInt64(DirectFunctionCall1(int8in, CStringGetDatum(SPI_getvalue(tup, desc, 1)))),
					   SPI_getvalue(tup, desc, 2), SPI_getvalue(tup, desc, 3),
					   SPI_getvalue(tup, desc, 4), SPI_getvalue(tup, desc, 5));
	}
	a->nlog = 0;
	MemoryContextReset(a->batch_cxt);
}

/*
 * es_log_text
 *		The text datum of value v for column c of pending sync_log row i:
 *		the previous row's when it holds the same text (a run of updates
 *		repeats its kind, table and status), otherwise a new one.
 */
static Datum
es_log_text(EsApply *a, int c, int i, const char *v)
{
	size_t		len = strlen(v);

	if (i > 0 && !a->lognull[c][i - 1])
	{
		text	   *prev = DatumGetTextPP(a->log[c][i - 1]);

		if (VARSIZE_ANY_EXHDR(prev) == len && memcmp(VARDATA_ANY(prev), v, len) == 0)
			return a->log[c][i - 1];
	}
	return PointerGetDatum(cstring_to_text_with_len(v, len));
}

/*
 * es_log_outcome
 *		Queue the sync_log row of an update (flushed every 1000 and at the
 *		end of the call).  why: a note on why it was applied (initial sync,
 *		dependency), or NULL.
 */
static void
es_log_outcome(EsApply *a, Jsonb *upd, EsOutcome *out, const char *why)
{
	MemoryContext old = MemoryContextSwitchTo(a->batch_cxt);
	char	   *note = out->note;
	char	   *ref = es_field_text(upd, "ref_table");
	char	   *remote = es_field_text(upd, "docname");
	char	   *type = es_field_text(upd, "update_type");
	char	   *id = es_field_text(upd, "id");
	char	   *origin = es_origin(a, upd);
	Jsonb	   *data = es_field(upd, "data");
	EsSub	   *sub = ref ? es_sub(a, ref) : NULL;
	bool		same = sub == NULL || !OidIsValid(sub->relid) || sub->same_name;
	char	   *docname = out->docname ? pstrdup(out->docname) : (same ? remote : NULL);
	int			i;

	if (why)
		note = note ? psprintf("%s; %s", why, note) : pstrdup(why);
	else if (note)
		note = pstrdup(note);
	if (a->nlog == a->maxlog)
	{
		MemoryContextSwitchTo(a->subs_cxt);
		a->maxlog = a->maxlog == 0 ? 64 : a->maxlog * 2;
		for (int c = 0; c < ES_LOG_COLS; c++)
		{
			a->log[c] = a->log[c] ? repalloc(a->log[c], sizeof(Datum) * a->maxlog) : palloc(sizeof(Datum) * a->maxlog);
			a->lognull[c] = a->lognull[c] ? repalloc(a->lognull[c], sizeof(bool) * a->maxlog) : palloc(sizeof(bool) * a->maxlog);
		}
		MemoryContextSwitchTo(a->batch_cxt);
	}
	i = a->nlog++;
#define ES_SET_TEXT(c, v) (a->lognull[c][i] = ((v) == NULL), a->log[c][i] = (v) ? es_log_text(a, c, i, v) : (Datum) 0)
	ES_SET_TEXT(0, type ? type : "?");
	ES_SET_TEXT(1, OidIsValid(out->local) ? es_table(out->local)->qualname : ref ? ref : "?");
	ES_SET_TEXT(2, out->ok ? "Synced" : "Failed");
	a->lognull[3][i] = false;
	a->log[3][i] = PointerGetDatum(a->producer_url);
	ES_SET_TEXT(4, docname);
	if (remote && docname && strcmp(remote, docname) == 0)
	{
		a->lognull[5][i] = false;
		a->log[5][i] = a->log[4][i];	/* the same text */
	}
	else
		ES_SET_TEXT(5, remote);
	a->lognull[6][i] = false;
	a->log[6][i] = BoolGetDatum(same);
	a->lognull[7][i] = data == NULL;
	a->log[7][i] = data ? PointerGetDatum(data) : (Datum) 0;
	ES_SET_TEXT(8, out->error ? pstrdup(out->error) : NULL);
	ES_SET_TEXT(9, note);
	a->lognull[10][i] = id == NULL;
	a->log[10][i] = id ? DirectFunctionCall1(int8in, CStringGetDatum(id)) : (Datum) 0;
	ES_SET_TEXT(11, ref ? ref : "?");
	a->lognull[12][i] = origin == NULL;
	a->log[12][i] = origin == NULL ? (Datum) 0 : origin == a->producer_origin ? a->producer_uuid :
		DirectFunctionCall1(uuid_in, CStringGetDatum(origin));
#undef ES_SET_TEXT
	MemoryContextSwitchTo(old);
	if (a->nlog >= 1000)
		es_log_flush(a);
}

#define ES_MIN_BATCH	16		/* shorter runs of Creates go row by row */
#define ES_MAX_BATCH	1000

/*
 * es_batch_key_update
 *		es_batch_key for an Update: one that sets columns only (no child
 *		rows) of a table with a one-column key, kept under the same name.
 */
static char *
es_batch_key_update(EsApply *a, Jsonb *upd, const char *ref, const char *origin, Jsonb *data)
{
	static const char *const parts[] = {"added", "row_changed", "removed"};
	Jsonb	   *changed = es_field(data, "changed");
	EsSub	   *sub = es_sub(a, ref);
	EsTable    *t;
	StringInfoData key;
	List	   *cols;
	ListCell   *lc;

	if (!OidIsValid(sub->relid) || !sub->same_name || sub->mapping != NULL || !es_is_object(changed))
		return NULL;
	for (int p = 0; p < (int) lengthof(parts); p++)
	{
		Jsonb	   *part = es_field(data, parts[p]);

		if (part != NULL && (!es_is_object(part) || es_keys(part) != NIL))
			return NULL;
	}
	t = es_table(sub->relid);
	if (t->npk != 1)
		return NULL;
	cols = es_given_columns(t, changed, true);
	if (cols == NIL || list_length(cols) != list_length(es_keys(changed)))
		return NULL;
	initStringInfo(&key);
	appendStringInfo(&key, "U/%u/%s", sub->relid, origin ? origin : "");
	foreach(lc, cols)
		appendStringInfo(&key, "/%s", (char *) lfirst(lc));
	return key.data;
}

/*
 * es_batch_key
 *		For an update that may be applied in a batch (a Create of the same
 *		name without child rows, an Update as es_batch_key_update says, a
 *		Delete by a one-column key), the key of the batch it may join: its
 *		kind, subscription, origin and the columns it gives.  NULL
 *		otherwise.
 */
static char *
es_batch_key(EsApply *a, Jsonb *upd)
{
	char	   *type = es_field_text(upd, "update_type");
	char	   *ref = es_field_text(upd, "ref_table");
	char	   *origin = es_origin(a, upd);
	JsonbValue	data;
	EsSub	   *sub;
	EsTable    *t;
	StringInfoData key;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			npk = 0;

	if (type == NULL || ref == NULL || es_field_text(upd, "docname") == NULL)
		return NULL;
	if (strcmp(type, "Delete") == 0)
	{
		/* By key, of a table with a one-column key, under the same name. */
		sub = es_sub(a, ref);
		if (!OidIsValid(sub->relid) || !sub->same_name || es_table(sub->relid)->npk != 1)
			return NULL;
		return psprintf("D/%u/%s", sub->relid, origin ? origin : "");
	}
	/* The data, in place (this runs for every update). */
	if (!getKeyJsonValueFromContainer(&upd->root, "data", 4, &data) || data.type != jbvBinary ||
		!JsonContainerIsObject(data.val.binary.data))
		return NULL;
	if (strcmp(type, "Update") == 0)
		return es_batch_key_update(a, upd, ref, origin, JsonbValueToJsonb(&data));
	if (strcmp(type, "Create") != 0)
		return NULL;
	sub = es_sub(a, ref);
	if (!OidIsValid(sub->relid) || !sub->same_name || sub->mapping != NULL)
		return NULL;
	t = es_table(sub->relid);

	/* The columns it gives. */
	initStringInfo(&key);
	appendStringInfo(&key, "C/%u/%s", sub->relid, origin ? origin : "");
	it = JsonbIteratorInit(data.val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		JsonbValue	value;
		int			col = -1;

		if (tok != WJB_KEY)
			continue;
		for (int i = 0; i < t->ncols && col < 0; i++)
			if (strlen(t->cols[i]) == (size_t) v.val.string.len &&
				memcmp(t->cols[i], v.val.string.val, v.val.string.len) == 0)
				col = i;
		if (col >= 0)
		{
			appendStringInfoChar(&key, '/');
			appendBinaryStringInfo(&key, v.val.string.val, v.val.string.len);
			if (es_is_pk(t, t->cols[col]))
				npk++;
		}
		tok = JsonbIteratorNext(&it, &value, true);
		if (col < 0 && value.type == jbvBinary && JsonContainerIsArray(value.val.binary.data))
			return NULL;		/* child rows: row by row */
	}
	return npk == t->npk ? key.data : NULL;
}

/*
 * es_slice
 *		The elements from..to-1 (0-based) of a list of jsonb values, as a
 *		jsonb array.
 */
static Jsonb *
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

/*
 * es_batch_run
 *		Run a batch statement (see es_apply_batch) over updates first..last
 *		of page in a subtransaction of its own.  True when it ran and, if
 *		every is set, counted every update ("n"); otherwise it is rolled
 *		back and the error, if any, is forgotten.  *res gets its result.
 */
static bool
es_batch_run(EsApply *a, const char *sql, Jsonb *page, int first, int last, bool every, Jsonb **res)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = false;
	Jsonb	   *volatile out = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		out = es_run_range(a->subscriber, sql, page, first, last);
		ok = out != NULL && (every ? atoi(es_field_text(out, "n")) == last - first + 1 : true);
		if (ok)
			ReleaseCurrentSubTransaction();
		else
			RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		FreeErrorData(es_subxact_caught(cxt, owner));
		ok = false;
	}
	PG_END_TRY();
	*res = out;
	return ok;
}

/* A column a direct run gives, as es_batch_direct converts it. */
typedef struct EsDirectCol
{
	AttrNumber	attnum;
	const char *name;
	bool		jsonb;			/* a jsonb column: the value as it is */
	FmgrInfo	input;			/* otherwise its type's input function */
	Oid			ioparam;
	int32		typmod;
	Oid			output;			/* and its output function */
} EsDirectCol;

/*
 * es_direct_value
 *		The datum jsonb_populate_record makes of value v for column c: the
 *		value itself for a jsonb column; otherwise the type's input function
 *		applied to the string (without quotes), the number or true/false, or
 *		the JSON text of an object or array.
 */
static Datum
es_direct_value(EsDirectCol *c, JsonbValue *v)
{
	char	   *str;

	if (c->jsonb)
		return JsonbPGetDatum(JsonbValueToJsonb(v));
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
	}
	return InputFunctionCall(&c->input, str, c->ioparam, c->typmod);
}

/*
 * es_direct_fill
 *		Set the ncols columns dc of slot from object values (a missing key
 *		or JSON null: SQL NULL).
 */
static void
es_direct_fill(TupleTableSlot *slot, EsDirectCol *dc, int ncols, JsonbContainer *values)
{
	for (int i = 0; i < ncols; i++)
	{
		JsonbValue	v;
		bool		isnull = !getKeyJsonValueFromContainer(values, dc[i].name, strlen(dc[i].name), &v) ||
			v.type == jbvNull;

		slot->tts_isnull[dc[i].attnum - 1] = isnull;
		slot->tts_values[dc[i].attnum - 1] = isnull ? (Datum) 0 : es_direct_value(&dc[i], &v);
	}
}

/*
 * es_direct_row
 *		Apply one update of a direct run (see es_batch_direct) with the
 *		executor state of ins: a Create's row is stored for the insertion;
 *		an Update's or a Delete's row is found by its key (pk, converted from
 *		docname) and updated or deleted as PostgreSQL's logical replication
 *		applies a change.  False when that row is not here; for a Delete,
 *		*deleted then gets its key as the row says.
 */
static bool
es_direct_row(EsWrite *ins, char kind, EsDirectCol *dc, int ncols, EsDirectCol *pk,
			  Jsonb *upd, EPQState *epq, TupleTableSlot **slots, char **deleted)
{
	JsonbValue	v;
	JsonbContainer *values = NULL;

	if (kind != 'D')
	{
		/* The values: data (a Create), or data.changed (an Update). */
		if (!getKeyJsonValueFromContainer(&upd->root, "data", 4, &v) || v.type != jbvBinary)
			elog(ERROR, "an update without its data");
		values = v.val.binary.data;
		if (kind == 'U')
		{
			if (!getKeyJsonValueFromContainer(values, "changed", 7, &v) || v.type != jbvBinary)
				elog(ERROR, "an Update without its changes");
			values = v.val.binary.data;
		}
	}
	if (kind == 'C')
	{
		TupleTableSlot *slot = es_insert_row(ins);

		es_direct_fill(slot, dc, ncols, values);
		es_insert_store(ins, slot);
		return true;
	}

	/* Find the row, locked, by its key (slots: search, found, new). */
	if (!getKeyJsonValueFromContainer(&upd->root, "docname", 7, &v) || v.type != jbvString)
		elog(ERROR, "an update without its docname");
	ExecClearTuple(slots[0]);
	memset(slots[0]->tts_isnull, true, sizeof(bool) * slots[0]->tts_tupleDescriptor->natts);
	slots[0]->tts_values[pk->attnum - 1] = es_direct_value(pk, &v);
	slots[0]->tts_isnull[pk->attnum - 1] = false;
	ExecStoreVirtualTuple(slots[0]);
	if (!RelationFindReplTupleByIndex(ins->rel, RelationGetPrimaryKeyIndex(ins->rel), LockTupleExclusive,
									  slots[0], slots[1]))
		return false;
	if (kind == 'D')
	{
		bool		isnull;
		Datum		key = slot_getattr(slots[1], pk->attnum, &isnull);

		*deleted = OidOutputFunctionCall(pk->output, key);
		ExecSimpleRelationDelete(ins->rri, ins->estate, epq, slots[1]);
		return true;
	}
	ExecClearTuple(slots[2]);
	slot_getallattrs(slots[1]);
	memcpy(slots[2]->tts_values, slots[1]->tts_values, sizeof(Datum) * slots[2]->tts_tupleDescriptor->natts);
	memcpy(slots[2]->tts_isnull, slots[1]->tts_isnull, sizeof(bool) * slots[2]->tts_tupleDescriptor->natts);
	es_direct_fill(slots[2], dc, ncols, values);
	ExecStoreVirtualTuple(slots[2]);
	ExecSimpleRelationUpdate(ins->rri, ins->estate, epq, slots[1], slots[2]);
	return true;
}

/*
 * es_direct_col
 *		Fill c for column name of rel; false when jsonb_populate_record
 *		would not fill it from the value's text (a domain, array, composite
 *		or json column): the statements take such columns.
 */
static bool
es_direct_col(Relation rel, const char *name, EsDirectCol *c)
{
	Form_pg_attribute att;
	Oid			infunc;
	char		typtype;

	c->name = name;
	c->attnum = get_attnum(RelationGetRelid(rel), name);
	if (c->attnum <= 0)
		return false;
	att = TupleDescAttr(RelationGetDescr(rel), c->attnum - 1);
	typtype = get_typtype(att->atttypid);
	c->typmod = att->atttypmod;
	c->jsonb = att->atttypid == JSONBOID;
	if (att->atttypid == JSONOID || type_is_array(att->atttypid) ||
		(typtype != TYPTYPE_BASE && typtype != TYPTYPE_ENUM && typtype != TYPTYPE_RANGE))
		return false;
	if (!c->jsonb)
	{
		bool		varlena;

		getTypeInputInfo(att->atttypid, &infunc, &c->ioparam);
		fmgr_info(infunc, &c->input);
		getTypeOutputInfo(att->atttypid, &c->output, &varlena);
	}
	return true;
}

/*
 * es_batch_direct
 *		Apply updates first..last-1 of all -- a run of one kind (kind: 'C',
 *		'U' or 'D') for one table, as es_batch_key found -- straight into
 *		the table, as the subscriber, in a subtransaction of its own:
 *		Creates inserted together (EsWrite), Updates and Deletes each found
 *		by its key and applied the way PostgreSQL's logical replication
 *		applies a change (execReplication.c).  Only where that is exactly
 *		what the statements of es_apply_batch would do: the table is usable
 *		for it (es_write_usable), the subscriber has the privileges they
 *		need on the whole table, every column given is of a type
 *		jsonb_populate_record fills from the value's text (a base, enum or
 *		range type; jsonb as is), and the key of an Update or Delete is one
 *		column of a type whose text is its JSON text (an integer, text or
 *		uuid).  False, having done nothing, otherwise, or when anything fails
 *		(a row is there already, an Update's row is not, a value does not
 *		convert, a constraint): the statements take over, and report.  For
 *		a run of Deletes, deleted[k - first] gets the key of the row update
 *		k deleted (NULL: it was not here).
 */
static bool
es_batch_direct(EsApply *a, List *all, int first, int last, char kind, char **deleted)
{
	Jsonb	   *upd = list_nth(all, first);
	EsSub	   *sub = es_sub(a, es_field_text(upd, "ref_table"));
	EsTable    *t = es_table(sub->relid);
	Jsonb	   *data = es_field(upd, "data");
	List	   *cols = kind == 'C' ? es_given_columns(t, data, false) :
		kind == 'U' ? es_given_columns(t, es_field(data, "changed"), true) : NIL;
	int			ncols = list_length(cols);
	EsDirectCol *dc = palloc0(sizeof(EsDirectCol) * Max(ncols, 1));
	EsDirectCol pk;
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	Relation	rel;
	bool	   *given;
	Oid			save_userid;
	int			save_sec;
	volatile bool ok;
	ListCell   *lc;
	AclMode		need = kind == 'C' ? ACL_INSERT : kind == 'U' ? ACL_UPDATE : ACL_DELETE;

	if (pg_class_aclcheck(sub->relid, a->subscriber, need) != ACLCHECK_OK ||
		(kind != 'C' && pg_class_aclcheck(sub->relid, a->subscriber, ACL_SELECT) != ACLCHECK_OK))
		return false;
	rel = table_open(sub->relid, RowExclusiveLock);
	given = palloc0(sizeof(bool) * RelationGetDescr(rel)->natts);
	ok = es_write_usable(rel);
	foreach(lc, cols)
	{
		EsDirectCol *c = &dc[foreach_current_index(lc)];

		ok = ok && es_direct_col(rel, lfirst(lc), c);
		if (ok)
			given[c->attnum - 1] = true;
	}
	if (ok && kind != 'C')
	{
		ok = t->npk == 1 && es_direct_col(rel, t->pk[0], &pk) &&
			(TupleDescAttr(RelationGetDescr(rel), pk.attnum - 1)->atttypid == INT2OID ||
			 TupleDescAttr(RelationGetDescr(rel), pk.attnum - 1)->atttypid == INT4OID ||
			 TupleDescAttr(RelationGetDescr(rel), pk.attnum - 1)->atttypid == INT8OID ||
			 TupleDescAttr(RelationGetDescr(rel), pk.attnum - 1)->atttypid == TEXTOID ||
			 TupleDescAttr(RelationGetDescr(rel), pk.attnum - 1)->atttypid == UUIDOID);
	}
	if (!ok)
	{
		table_close(rel, RowExclusiveLock);
		return false;
	}

	ok = false;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		EsWrite		ins;
		EPQState	epq;
		TupleTableSlot *slots[3] = {NULL, NULL, NULL};
		bool		all_found = true;

		/* Defaults, constraints and look-ups run as the subscriber. */
		SetUserIdAndSecContext(a->subscriber, save_sec | SECURITY_LOCAL_USERID_CHANGE);
		es_write_begin(&ins, rel, kind == 'C' ? CMD_INSERT : kind == 'U' ? CMD_UPDATE : CMD_DELETE,
						given, last - first);
		if (kind != 'C')
		{
			EvalPlanQualInit(&epq, ins.estate, NULL, NIL, -1);
			slots[0] = ExecInitExtraTupleSlot(ins.estate, RelationGetDescr(rel), &TTSOpsVirtual);
			slots[1] = table_slot_create(rel, &ins.estate->es_tupleTable);
			slots[2] = ExecInitExtraTupleSlot(ins.estate, RelationGetDescr(rel), &TTSOpsVirtual);
		}
		for (int k = first; k < last && all_found; k++)
		{
			char	   *key = NULL;

			if (es_direct_row(&ins, kind, dc, ncols, &pk, list_nth(all, k), &epq, slots, &key))
			{
				if (deleted)
					deleted[k - first] = key ? MemoryContextStrdup(cxt, key) : NULL;
			}
			else if (kind == 'U')
				all_found = false;	/* the statements say why */
			else if (deleted)
				deleted[k - first] = NULL;
			ResetPerTupleExprContext(ins.estate);
		}
		if (kind != 'C')
			EvalPlanQualEnd(&epq);
		if (!all_found)
			elog(ERROR, "a row to update is not here");
		es_write_finish(&ins);
		SetUserIdAndSecContext(save_userid, save_sec);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		ok = true;
	}
	PG_CATCH();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
		FreeErrorData(es_subxact_caught(cxt, owner));
	}
	PG_END_TRY();
	table_close(rel, NoLock);
	return ok;
}

/*
 * es_apply_batch
 *		Apply updates first..last (1-based, in page) -- Creates of one table,
 *		as es_batch_key found -- with one statement, in one subtransaction.
 *		False (nothing applied) when that fails for any reason: the caller
 *		then applies them row by row.  *existed gets the docnames of the rows
 *		that were there already; for a run of Deletes, deleted[k - first]
 *		the docname of the row update k deleted (NULL: it was not here).
 */
static bool
es_apply_batch(EsApply *a, Jsonb *page, Jsonb *upd, int first, int last, List **existed, char **deleted)
{
	EsSub	   *sub = es_sub(a, es_field_text(upd, "ref_table"));
	EsTable    *t = es_table(sub->relid);
	List	   *cols = es_given_columns(t, es_field(upd, "data"), false);
	char	   *origin = es_origin(a, upd);
	StringInfoData sql;
	StringInfoData plain;
	ListCell   *lc;
	bool		rest = false;
	bool		ok;
	Jsonb	   *res = NULL;

	initStringInfo(&sql);
	plain.data = NULL;
	if (strcmp(es_field_text(upd, "update_type"), "Delete") == 0)
	{
		/*
		 * Delete every row by its docname; the rows found come back with
		 * the ordinal of their update (a run names each row once).
		 */
		const char *pk = quote_identifier(t->pk[0]);

		appendStringInfo(&sql, "WITH del AS (DELETE FROM %s t USING (SELECT e.o, r.%s"
						 " FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
						 " pg_catalog.jsonb_populate_record(NULL::%s, pg_catalog.jsonb_build_object(%s, e.u->>'docname')) r"
						 " WHERE e.o BETWEEN $2 AND $3) k WHERE t.%s = k.%s"
						 " RETURNING k.o, pg_catalog.jsonb_build_object(%s, t.%s) AS r)"
						 " SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*), 'existed', '[]'::jsonb,"
						 " 'deleted', coalesce(pg_catalog.jsonb_object_agg(del.o::text, del.r), '{}')) FROM del",
						 t->qualname, pk, t->qualname, quote_literal_cstr(t->pk[0]), pk, pk,
						 quote_literal_cstr(t->pk[0]), pk);
		goto run;
	}
	if (strcmp(es_field_text(upd, "update_type"), "Update") == 0)
	{
		/* Set the changed columns of every row, found by its docname. */
		cols = es_given_columns(t, es_field(es_field(upd, "data"), "changed"), true);
		appendStringInfo(&sql, "WITH upd AS (UPDATE %s t SET (", t->qualname);
		es_append_cols(&sql, cols, "");
		appendStringInfoString(&sql, ") = ROW(");
		es_append_cols(&sql, cols, "s.");
		appendStringInfo(&sql, ") FROM (SELECT r.* FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
						 " pg_catalog.jsonb_populate_record(NULL::%s, (e.u->'data'->'changed') ||"
						 " pg_catalog.jsonb_build_object(%s, e.u->>'docname')) r"
						 " WHERE e.o BETWEEN $2 AND $3) s WHERE t.%s = s.%s RETURNING 1)"
						 " SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*), 'existed', '[]'::jsonb) FROM upd",
						 t->qualname, quote_literal_cstr(t->pk[0]), quote_identifier(t->pk[0]),
						 quote_identifier(t->pk[0]));
		rest = true;			/* every row must be found */
		goto run;
	}
	/*
	 * New rows, the usual case: a plain INSERT, tried first.  It costs
	 * less than the upsert below (no speculative insertion, which also
	 * writes a WAL record per row, and no RETURNING); should a row be there
	 * already, it fails and the upsert runs instead.
	 */
	appendStringInfo(&sql, "WITH ins AS (INSERT INTO %s AS t (", t->qualname);
	es_append_cols(&sql, cols, "");
	appendStringInfoString(&sql, ") SELECT ");
	es_append_cols(&sql, cols, "r.");
	appendStringInfo(&sql, " FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
					 " pg_catalog.jsonb_populate_record(NULL::%s, e.u->'data') r"
					 " WHERE e.o BETWEEN $2 AND $3 ORDER BY e.o", t->qualname);
	initStringInfo(&plain);
	appendStringInfo(&plain, "%s RETURNING 1)"
					 " SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*), 'existed', '[]'::jsonb) FROM ins",
					 sql.data);

	appendStringInfoString(&sql, " ON CONFLICT (");
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "", quote_identifier(t->pk[i]));
	appendStringInfoString(&sql, ") DO ");
	foreach(lc, cols)
	{
		if (es_is_pk(t, lfirst(lc)))
			continue;
		appendStringInfo(&sql, "%s%s = EXCLUDED.%s", rest ? ", " : "UPDATE SET ",
						 quote_identifier(lfirst(lc)), quote_identifier(lfirst(lc)));
		rest = true;
	}
	if (!rest)
		appendStringInfoString(&sql, "NOTHING");
	appendStringInfoString(&sql, " RETURNING t.xmax::text <> '0' AS existed, pg_catalog.jsonb_build_object(");
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&sql, "%s%s, t.%s", i > 0 ? ", " : "", quote_literal_cstr(t->pk[i]), quote_identifier(t->pk[i]));
	appendStringInfoString(&sql, ") AS k) SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*),"
						   " 'existed', coalesce(pg_catalog.jsonb_agg(ins.k) FILTER (WHERE ins.existed), '[]')) FROM ins");

run:

	if (origin)
	{
		pg_uuid_t  *u = DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(origin)));

		memcpy(&es_apply_origin, u, sizeof(pg_uuid_t));
		es_apply_origin_set = true;
	}
	/* DO NOTHING skips rows that were there: count those as existing. */
	ok = (plain.data != NULL && es_batch_run(a, plain.data, page, first, last, true, &res)) ||
		es_batch_run(a, sql.data, page, first, last, rest, &res);
	if (ok)
		foreach(lc, es_elements(es_field(res, "existed")))
			*existed = lappend(*existed, es_docname_of(t, lfirst(lc)));
	if (ok && deleted != NULL)
	{
		Jsonb	   *rows = es_field(res, "deleted");

		for (int k = first; k <= last; k++)
		{
			char		o[16];

			snprintf(o, sizeof(o), "%d", k);
			deleted[k - first] = es_docname_of(t, es_field(rows, o));
		}
	}
	return ok;
}

/*
 * eventstream_apply_updates
 *		_apply_updates(producer_url text, subscriber regrole, updates jsonb,
 *		why text, dependency boolean, fetched jsonb) -> integer[] {processed, failed}:
 *		apply each update in its own subtransaction and log it.
 */
Datum
eventstream_apply_updates(PG_FUNCTION_ARGS)
{
	EsApply		a;
	Jsonb	   *updates = PG_GETARG_JSONB_P(2);
	char	   *why = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext per_update;
	int			n = 0;
	int			failed = 0;
	Datum		counts[2];
	ListCell   *lc2;

	a.producer_url = PG_GETARG_TEXT_PP(0);
	a.subscriber = PG_GETARG_OID(1);
	a.dependency = PG_GETARG_BOOL(4);
	a.fetched = PG_NARGS() > 5 && !PG_ARGISNULL(5) ? PG_GETARG_JSONB_P(5) : NULL;
	if (!es_is_array(updates))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("updates must be a JSON array")));

	per_update = AllocSetContextCreate(cxt, "eventstream update", ALLOCSET_DEFAULT_SIZES);
	a.subs = NIL;
	a.nlog = a.maxlog = 0;
	memset(a.log, 0, sizeof(a.log));
	memset(a.lognull, 0, sizeof(a.lognull));
	a.batch_cxt = AllocSetContextCreate(cxt, "eventstream sync log rows", ALLOCSET_DEFAULT_SIZES);
	a.subs_cxt = cxt;
	SPI_connect();
	es_apply_begin(&a, a.producer_url, a.subscriber);
	if (a.dependency)
	{
		/*
		 * Rows fetched because others refer to them may refer to each
		 * other: apply in passes, retrying those that miss a row another
		 * one brings, as long as a pass makes progress.
		 */
		List	   *pending = es_elements(updates);

		while (pending != NIL)
		{
			List	   *retry = NIL;
			List	   *outcomes = NIL;
			bool		progress = false;
			ListCell   *lc;

			foreach(lc, pending)
			{
				EsOutcome  *out = palloc(sizeof(EsOutcome));

				CHECK_FOR_INTERRUPTS();
				es_apply_one(&a, lfirst(lc), out);
				if (out->ok)
				{
					es_log_outcome(&a, lfirst(lc), out, why);
					n++;
					progress = true;
				}
				else if (out->sqlerrcode == ERRCODE_FOREIGN_KEY_VIOLATION)
				{
					retry = lappend(retry, lfirst(lc));
					outcomes = lappend(outcomes, out);
				}
				else
				{
					es_log_outcome(&a, lfirst(lc), out, why);
					n++;
					failed++;
				}
			}
			if (!progress)
			{
				forboth(lc, retry, lc2, outcomes)
				{
					es_log_outcome(&a, lfirst(lc), lfirst(lc2), why);
					n++;
					failed++;
				}
				retry = NIL;
			}
			pending = retry;
		}
	}
	if (!a.dependency)
	{
		/*
		 * Runs of Creates of one table are tried as one statement (an
		 * INSERT of them all, in one subtransaction): the usual stream of
		 * new rows costs one executor start per run instead of one per
		 * row.  Should that fail for any reason, the run is applied row by
		 * row, each update in its own subtransaction as always.
		 */
		List	   *all;
		int			total;
		int			i = 0;

		MemoryContextSwitchTo(cxt);
		all = es_elements(updates);

		/*
		 * Updates of a table unsubscribed or rejected since they were
		 * served (the window was on its way): it is to receive no more, so
		 * none of the window's are applied -- not the first pages' only.
		 */
		es_apply_reset();
		foreach(lc2, all)
		{
			char	   *ref = es_field_text(lfirst(lc2), "ref_table");

			if (ref != NULL && es_sub(&a, ref)->dropped)
				all = foreach_delete_current(all, lc2);
		}
		total = list_length(all);
		while (i < total)
		{
			char	   *bkey;
			int			j = i + 1;

			CHECK_FOR_INTERRUPTS();
			MemoryContextSwitchTo(per_update);
			if (!es_is_object(list_nth(all, i)))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("an update must be a JSON object")));
			es_apply_reset();
			bkey = es_batch_key(&a, list_nth(all, i));
			if (bkey != NULL)
			{
				/* A run stops at a document it has already (order matters). */
				HASHCTL		ctl;
				HTAB	   *seen;
				char		dn[NAMEDATALEN * 4];

				memset(&ctl, 0, sizeof(ctl));
				ctl.keysize = sizeof(dn);
				ctl.entrysize = sizeof(dn);
				ctl.hcxt = per_update;
				seen = hash_create("eventstream batch docnames", 256, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
				strlcpy(dn, es_field_text(list_nth(all, i), "docname"), sizeof(dn));
				(void) hash_search(seen, dn, HASH_ENTER, NULL);
				while (j < total && j - i < ES_MAX_BATCH)
				{
					Jsonb	   *next = list_nth(all, j);
					char	   *k2 = es_is_object(next) ? es_batch_key(&a, next) : NULL;
					char	   *name;
					bool		found;

					if (k2 == NULL || strcmp(k2, bkey) != 0)
						break;
					name = es_field_text(next, "docname");
					if (strlen(name) >= sizeof(dn))
						break;
					strlcpy(dn, name, sizeof(dn));
					(void) hash_search(seen, dn, HASH_ENTER, &found);
					if (found)
						break;
					j++;
				}
			}
			if (bkey != NULL && j - i >= ES_MIN_BATCH)
			{
				List	   *existed = NIL;
				char	  **deleted = palloc0(sizeof(char *) * (j - i));
				bool		deletes = bkey[0] == 'D';

				/*
				 * The statement gets the run's updates only: the whole page
				 * would be expanded by every run's jsonb_array_elements().
				 */
				if (es_batch_direct(&a, all, i, j, bkey[0], deletes ? deleted : NULL) ||
					es_apply_batch(&a, es_slice(all, i, j), list_nth(all, i), 1, j - i, &existed,
								   deletes ? deleted : NULL))
				{
					for (int k = i; k < j; k++)
					{
						Jsonb	   *upd = list_nth(all, k);
						EsOutcome	out;
						ListCell   *lc;

						memset(&out, 0, sizeof(out));
						out.ok = true;
						out.local = es_sub(&a, es_field_text(upd, "ref_table"))->relid;
						out.docname = es_field_text(upd, "docname");
						foreach(lc, existed)
							if (strcmp(lfirst(lc), out.docname) == 0)
								out.note = "the row existed: it now has the producer's values";
						if (deletes && deleted[k - i] != NULL)
							out.docname = deleted[k - i];	/* as the row says */
						else if (deletes)
							out.note = "the row was not here: nothing to delete";
						es_log_outcome(&a, upd, &out, why);
						n++;
					}
					MemoryContextSwitchTo(cxt);
					MemoryContextReset(per_update);
					i = j;
					continue;
				}
			}
			/* Row by row. */
			for (int k = i; k < j; k++)
			{
				Jsonb	   *upd = list_nth(all, k);
				EsOutcome	out;

				if (!es_is_object(upd))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("an update must be a JSON object")));
				es_apply_one(&a, upd, &out);
				es_log_outcome(&a, upd, &out, why);
				n++;
				if (!out.ok)
					failed++;
			}
			MemoryContextSwitchTo(cxt);
			MemoryContextReset(per_update);
			i = j;
		}
	}
	es_log_flush(&a);
	SPI_finish();
	MemoryContextSwitchTo(cxt);
	MemoryContextDelete(per_update);
	MemoryContextDelete(a.batch_cxt);
	counts[0] = Int32GetDatum(n);
	counts[1] = Int32GetDatum(failed);
	PG_RETURN_ARRAYTYPE_P(construct_array(counts, 2, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}

/*
 * eventstream_apply_update
 *		_apply_update(producer_url text, subscriber regrole, upd jsonb,
 *		dependency boolean, fetched jsonb)
 *		-> (status, error, docname, note, local_table): apply one update in
 *		a subtransaction, without logging it (resync).
 */
Datum
eventstream_apply_update(PG_FUNCTION_ARGS)
{
	EsApply		a;
	Jsonb	   *upd = PG_GETARG_JSONB_P(2);
	EsOutcome	out;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&a, 0, sizeof(a));
	a.producer_url = PG_GETARG_TEXT_PP(0);
	a.subscriber = PG_GETARG_OID(1);
	a.dependency = PG_GETARG_BOOL(3);
	a.fetched = PG_NARGS() > 4 && !PG_ARGISNULL(4) ? PG_GETARG_JSONB_P(4) : NULL;
	a.subs_cxt = CurrentMemoryContext;
	SPI_connect();
	es_apply_begin(&a, a.producer_url, a.subscriber);
	es_apply_one(&a, upd, &out);
	SPI_finish();
	values[0] = CStringGetTextDatum(out.ok ? "Synced" : "Failed");
	nulls[1] = out.error == NULL;
	values[1] = out.error ? CStringGetTextDatum(out.error) : (Datum) 0;
	nulls[2] = out.docname == NULL;
	values[2] = out.docname ? CStringGetTextDatum(out.docname) : (Datum) 0;
	nulls[3] = out.note == NULL;
	values[3] = out.note ? CStringGetTextDatum(out.note) : (Datum) 0;
	nulls[4] = !OidIsValid(out.local);
	values[4] = ObjectIdGetDatum(out.local);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

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
 *		update_type in *type.
 */
static char *
es_page_doc_key(JsonbContainer *upd, char **type)
{
	JsonbValue	ref;
	JsonbValue	doc;
	JsonbValue	v;

	*type = NULL;
	if (!JsonContainerIsObject(upd) ||
		!getKeyJsonValueFromContainer(upd, "ref_table", 9, &ref) || ref.type != jbvString ||
		!getKeyJsonValueFromContainer(upd, "docname", 7, &doc) || doc.type != jbvString ||
		!getKeyJsonValueFromContainer(upd, "data", 4, &v) || v.type != jbvBinary ||
		!JsonContainerIsObject(v.val.binary.data) ||
		!getKeyJsonValueFromContainer(upd, "update_type", 11, &v) || v.type != jbvString)
		return NULL;
	*type = pnstrdup(v.val.string.val, v.val.string.len);
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
		char	   *type;
		char	   *key;

		if (tok != WJB_ELEM || v.type != jbvBinary)
			continue;
		key = es_page_doc_key(v.val.binary.data, &type);
		if (key == NULL)
			continue;
		if (strcmp(type, "Create") == 0 && strlen(key) < NAMEDATALEN * 4)
			(void) hash_search(created, key, HASH_ENTER, NULL);
		else if (strcmp(type, "Update") == 0)
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
