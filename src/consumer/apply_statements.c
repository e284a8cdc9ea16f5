/*-------------------------------------------------------------------------
 *
 * apply_statements.c
 *	  The apply's table and plan cache and its statements on user tables.
 *
 * The local tables as the apply sees them (EsTable: columns and primary
 * key) and the plans of its statements are cached per backend and dropped
 * together, after any relcache invalidation, at the start of the next
 * update (es_apply_reset).  es_run_args runs a statement as a role with
 * its kept generic plan; the statements built here -- upsert, select,
 * update and delete by key, the child rows of a document -- take one
 * jsonb parameter and return one jsonb value.  Also here: what turns a
 * row's key into its docname and back.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_statements.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"

#include "consumer/apply.h"

#define ES_PLAN_KEY		4096	/* longer statements are planned each time */

typedef struct EsPlan
{
	char		sql[ES_PLAN_KEY];	/* hash key */
	SPIPlanPtr	plan;
} EsPlan;

static MemoryContext es_apply_cxt = NULL;	/* EsTable contents */
static HTAB *es_tables = NULL;
static HTAB *es_plans = NULL;
static bool es_apply_stale = false;
SPIPlanPtr	es_log_plan = NULL;	/* the sync_log INSERT (apply_log.c), kept */

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
void
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
EsTable *
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
	t->partitioned = rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE;
	t->fk_loaded = false;
	t->fk_out = NULL;
	t->fk_in = NULL;
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
	t->narb = t->npk;
	t->arb = t->pk;
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
Jsonb *
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
Jsonb *
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
Jsonb *
es_run_range(Oid role, const char *sql, Jsonb *arr, int first, int last)
{
	Oid			argtypes[3] = {JSONBOID, INT4OID, INT4OID};
	Datum		values[3];

	values[0] = PointerGetDatum(arr);
	values[1] = Int32GetDatum(first);
	values[2] = Int32GetDatum(last);
	return es_run_args(role, sql, 3, argtypes, values, NULL);
}

/* The key columns of a row of t, as an object, from its docname. */
Jsonb *
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
char *
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
Jsonb *
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

bool
es_is_pk(EsTable *t, const char *col)
{
	for (int i = 0; i < t->npk; i++)
		if (strcmp(t->pk[i], col) == 0)
			return true;
	return false;
}

/* The columns of t that object j gives, in table order (pk excluded if asked). */
List *
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
void
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

Jsonb *
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
 *		The statement of es_upsert: keyed, ON CONFLICT on the arbiter
 *		columns (the primary key, or for a table matched on the producer's
 *		key a unique index on some of its columns: the row there is updated
 *		only when it has the other key columns' values too); otherwise a
 *		plain INSERT without the key columns.  NULL when the row was there
 *		and had nothing else to set, or is another row.
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
		appendStringInfo(&sql, " FROM eventstream._populate(NULL::%s, $1) r", t->qualname);
	}
	if (keyed)
	{
		appendStringInfoString(&sql, " ON CONFLICT (");
		for (int i = 0; i < t->narb; i++)
			appendStringInfo(&sql, "%s%s", i > 0 ? ", " : "", quote_identifier(t->arb[i]));
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
		else
		{
			/* The key columns the arbiter does not cover must be equal. */
			bool		where = false;

			for (int i = 0; i < t->npk; i++)
			{
				bool		arb = false;

				for (int j = 0; j < t->narb; j++)
					arb = arb || strcmp(t->pk[i], t->arb[j]) == 0;
				if (arb)
					continue;
				appendStringInfo(&sql, "%st.%s = EXCLUDED.%s", where ? " AND " : " WHERE ",
								 quote_identifier(t->pk[i]), quote_identifier(t->pk[i]));
				where = true;
			}
		}
	}
	if (!t->partitioned)
		appendStringInfoString(&sql, " RETURNING pg_catalog.jsonb_build_object('row', eventstream._row_json(t.*),"
							   " 'inserted', t.xmax::text = '0')");
	else
	{
		/*
		 * A partitioned table's rows have no xmax to tell: whether the row
		 * was there is read before, with the statement's snapshot.
		 */
		StringInfoData upsert;

		initStringInfo(&upsert);
		appendStringInfo(&upsert, "WITH pre AS (SELECT pg_catalog.count(*) AS n FROM %s t,"
						 " eventstream._populate(NULL::%s, $1) k WHERE %s),"
						 " ins AS (%s RETURNING eventstream._row_json(t.*) AS row)"
						 " SELECT pg_catalog.jsonb_build_object('row', ins.row, 'inserted', pre.n = 0) FROM ins, pre",
						 t->qualname, t->qualname, keyed ? es_key_match(t) : "false", sql.data);
		sql = upsert;
	}
	res = es_run(a->subscriber, sql.data, row);
	if (res == NULL)
	{
		/* ON CONFLICT DO NOTHING: the row is there and has nothing else. */
		*inserted = false;
		return NULL;
	}
	*inserted = strcmp(es_field_text(res, "inserted"), "true") == 0;
	es_fk_check(t, es_field(res, "row"));
	return es_field(res, "row");
}

/* es_upsert of a row that carries its own key. */
Jsonb *
es_upsert_keyed(EsApply *a, EsTable *t, Jsonb *row, bool *inserted)
{
	for (int i = 0; i < t->npk; i++)
		if (es_field(row, t->pk[i]) == NULL)
			return es_upsert(a, t, row, es_key_from_row(t, row), inserted);
	return es_upsert_as_is(a, t, row, inserted);
}

/* The row of t with key, as the subscriber (NULL if none). */
Jsonb *
es_select(EsApply *a, EsTable *t, Jsonb *key)
{
	return es_run(a->subscriber,
				  psprintf("SELECT eventstream._row_json(t.*) FROM %s t, eventstream._populate(NULL::%s, $1) k WHERE %s",
						   t->qualname, t->qualname, es_key_match(t)),
				  key);
}

/* Delete the row of t with key; the row deleted, or NULL. */
Jsonb *
es_delete(EsApply *a, EsTable *t, Jsonb *key)
{
	Jsonb	   *row = es_run(a->subscriber,
							 psprintf("DELETE FROM %s t USING eventstream._populate(NULL::%s, $1) k WHERE %s"
									  " RETURNING eventstream._row_json(t.*)",
									  t->qualname, t->qualname, es_key_match(t)),
							 key);

	es_fk_deleted(t, row);
	return row;
}

/* Set the columns that set gives on the row of t with key; the row, or NULL. */
Jsonb *
es_update(EsApply *a, EsTable *t, Jsonb *set, Jsonb *key)
{
	List	   *cols = es_given_columns(t, set, true);
	StringInfoData sql;
	StringInfoData arg;
	Jsonb	   *row;

	if (cols == NIL)
		return es_select(a, t, key);
	initStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE %s t SET (", t->qualname);
	es_append_cols(&sql, cols, "");
	appendStringInfoString(&sql, ") = (SELECT ");
	es_append_cols(&sql, cols, "s.");
	appendStringInfo(&sql, " FROM eventstream._populate(NULL::%s, $1->'s') s)"
					 " FROM eventstream._populate(NULL::%s, $1->'k') k WHERE %s"
					 " RETURNING eventstream._row_json(t.*)",
					 t->qualname, t->qualname, es_key_match(t));
	initStringInfo(&arg);
	appendStringInfo(&arg, "{\"s\": %s, \"k\": %s}",
					 JsonbToCString(NULL, &set->root, VARSIZE(set)),
					 JsonbToCString(NULL, &key->root, VARSIZE(key)));
	row = es_run(a->subscriber, sql.data, es_jsonb_parse(arg.data));
	es_fk_check(t, row);
	return row;
}

/*
 * es_child_link
 *		A local child table of parent, named on the wire, and how its
 *		foreign key columns take the parent's: {"child col": "parent col"}.
 */
EsTable *
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
Jsonb *
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
