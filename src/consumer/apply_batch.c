/*-------------------------------------------------------------------------
 *
 * apply_batch.c
 *	  Runs of updates applied as one statement.
 *
 * es_batch_key says which run an update may join: Creates of the same
 * name without child rows, Updates that set columns only (in both, only
 * columns the table has and the subscription does not leave out), Deletes by a
 * one-column key, each of one table, origin and set of columns (of a table
 * whose rows are matched on its primary key, see es_batchable; Deletes
 * not of a table others refer to with foreign keys the apply enforces
 * itself, apply_fk.c: those go row by row).
 * es_apply_batch applies such a run with one statement in one
 * subtransaction (for Creates, a plain INSERT first, then the upsert), and
 * says nothing was done when that fails: the caller then applies the run
 * row by row.  (The caller tries es_batch_direct, apply_direct.c, first.)
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_batch.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/jsonb.h"
#include "utils/resowner.h"
#include "utils/uuid.h"

#include "eventstream.h"
#include "consumer/apply.h"
#include "consumer/pagejson.h"

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

	if (!OidIsValid(sub->relid) || !sub->same_name || sub->mapping != NULL || !es_is_object(changed) ||
		!es_batchable(a, sub, ES_UPDATE_UPDATE))
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
		return NULL;			/* a column this table lacks: row by row */
	foreach(lc, cols)
		if (es_sub_ignores(sub, lfirst(lc), strlen(lfirst(lc))))
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
char *
es_batch_key(EsApply *a, Jsonb *upd)
{
	EsUpdateKind kind = es_update_kind(es_field_text(upd, "update_type"));
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

	if (kind == ES_UPDATE_UNKNOWN || ref == NULL || es_field_text(upd, "docname") == NULL)
		return NULL;
	if (kind == ES_UPDATE_DELETE)
	{
		/*
		 * By key, of a table with a one-column key, under the same name;
		 * not one read with a character this database cannot hold (a
		 * Create's or an Update's has no data then).
		 */
		sub = es_sub(a, ref);
		if (es_field_text(upd, ES_ENCODING_ERROR_KEY) != NULL ||
			!OidIsValid(sub->relid) || !sub->same_name || es_table(sub->relid)->npk != 1 ||
			!es_batchable(a, sub, kind) || es_fk_has(es_table(sub->relid), false))
			return NULL;
		return psprintf("D/%u/%s", sub->relid, origin ? origin : "");
	}
	/* The data, in place (this runs for every update). */
	if (!getKeyJsonValueFromContainer(&upd->root, "data", 4, &data) || data.type != jbvBinary ||
		!JsonContainerIsObject(data.val.binary.data))
		return NULL;
	if (kind == ES_UPDATE_UPDATE)
		return es_batch_key_update(a, upd, ref, origin, JsonbValueToJsonb(&data));
	if (kind != ES_UPDATE_CREATE)
		return NULL;
	sub = es_sub(a, ref);
	if (!OidIsValid(sub->relid) || !sub->same_name || sub->mapping != NULL || !es_batchable(a, sub, kind))
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

		/*
		 * Child rows, a column this table lacks (the update fails, naming
		 * it) or one the subscription leaves out: row by row.
		 */
		if (col < 0 || es_sub_ignores(sub, v.val.string.val, v.val.string.len))
			return NULL;
	}
	return npk == t->npk ? key.data : NULL;
}

/*
 * es_batch_run
 *		Run a batch statement (see es_apply_batch) over updates first..last
 *		of page in a subtransaction of its own, then check, if given: the
 *		statement counting the rows written that break a foreign key the
 *		apply enforces itself (run as the caller, who may read the tables
 *		referred to).  True when it ran, if every is set counted every
 *		update ("n"), and check counted none; otherwise it is rolled back
 *		and the error, if any, is forgotten.  *res gets its result.
 */
static bool
es_batch_run(EsApply *a, const char *sql, const char *check, Jsonb *page, int first, int last, bool every,
			 Jsonb **res)
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
		if (ok && check != NULL)
		{
			Jsonb	   *broken = es_run_range(InvalidOid, check, page, first, last);

			ok = broken != NULL && strcmp(es_field_text(broken, "n"), "0") == 0;
		}
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

/*
 * es_apply_batch
 *		Apply updates first..last (1-based, in page) -- Creates of one table,
 *		as es_batch_key found -- with one statement, in one subtransaction.
 *		False (nothing applied) when that fails for any reason: the caller
 *		then applies them row by row.  *existed gets the docnames of the rows
 *		that were there already; for a run of Deletes, deleted[k - first]
 *		the docname of the row update k deleted (NULL: it was not here).
 */
bool
es_apply_batch(EsApply *a, Jsonb *page, Jsonb *upd, int first, int last, List **existed, char **deleted)
{
	EsSub	   *sub = es_sub(a, es_field_text(upd, "ref_table"));
	EsTable    *t = es_table(sub->relid);
	List	   *cols = es_given_columns(t, es_field(upd, "data"), false);
	char	   *origin = es_origin(a, upd);
	EsUpdateKind kind = es_update_kind(es_field_text(upd, "update_type"));
	StringInfoData sql;
	StringInfoData plain;
	ListCell   *lc;
	bool		rest = false;
	bool		ok;
	Jsonb	   *res = NULL;
	char	   *conds;
	StringInfoData chk;
	const char *check = NULL;

	initStringInfo(&sql);
	plain.data = NULL;
	if (kind == ES_UPDATE_DELETE)
	{
		/*
		 * Delete every row by its docname; the rows found come back with
		 * the ordinal of their update (a run names each row once).
		 */
		const char *pk = quote_identifier(t->pk[0]);

		appendStringInfo(&sql, "WITH del AS (DELETE FROM %s t USING (SELECT e.o, r.%s"
						 " FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
						 " eventstream._populate(NULL::%s, pg_catalog.jsonb_build_object(%s, e.u->>'docname')) r"
						 " WHERE e.o BETWEEN $2 AND $3) k WHERE t.%s = k.%s"
						 " RETURNING k.o, pg_catalog.jsonb_build_object(%s, t.%s) AS r)"
						 " SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*), 'existed', '[]'::jsonb,"
						 " 'deleted', coalesce(pg_catalog.jsonb_object_agg(del.o::text, del.r), '{}')) FROM del",
						 t->qualname, pk, t->qualname, quote_literal_cstr(t->pk[0]), pk, pk,
						 quote_literal_cstr(t->pk[0]), pk);
		goto run;
	}
	if (kind == ES_UPDATE_UPDATE)
	{
		/* Set the changed columns of every row, found by its docname. */
		cols = es_given_columns(t, es_field(es_field(upd, "data"), "changed"), true);
		appendStringInfo(&sql, "WITH upd AS (UPDATE %s t SET (", t->qualname);
		es_append_cols(&sql, cols, "");
		appendStringInfoString(&sql, ") = ROW(");
		es_append_cols(&sql, cols, "s.");
		appendStringInfo(&sql, ") FROM (SELECT r.* FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
						 " eventstream._populate(NULL::%s, (e.u->'data'->'changed') ||"
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
					 " eventstream._populate(NULL::%s, e.u->'data') r"
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

	/*
	 * The rows written, found by the key the updates give, that break a
	 * foreign key the apply enforces itself (Creates and Updates).
	 */
	conds = kind == ES_UPDATE_DELETE ? NULL : es_fk_conds(t);
	if (conds != NULL)
	{
		StringInfoData src;

		initStringInfo(&src);
		if (kind == ES_UPDATE_CREATE)
			appendStringInfoString(&src, "e.u->'data'");
		else
			appendStringInfo(&src, "pg_catalog.jsonb_build_object(%s, e.u->>'docname')", quote_literal_cstr(t->pk[0]));
		initStringInfo(&chk);
		appendStringInfo(&chk, "SELECT pg_catalog.jsonb_build_object('n', pg_catalog.count(*))"
						 " FROM pg_catalog.jsonb_array_elements($1) WITH ORDINALITY e(u, o),"
						 " eventstream._populate(NULL::%s, %s) d, %s r WHERE e.o BETWEEN $2 AND $3",
						 t->qualname, src.data, t->qualname);
		for (int i = 0; i < t->npk; i++)
			appendStringInfo(&chk, " AND r.%s = d.%s", quote_identifier(t->pk[i]), quote_identifier(t->pk[i]));
		appendStringInfo(&chk, " AND NOT (%s)", conds);
		check = chk.data;
	}

	if (origin)
	{
		pg_uuid_t  *u = DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(origin)));

		memcpy(&es_apply_origin, u, sizeof(pg_uuid_t));
		es_apply_origin_set = true;
	}
	/*
	 * DO NOTHING skips rows that were there: count those as existing.  The
	 * upsert tells them by their xmax, which a partitioned table's rows do
	 * not have: its rows go row by row once the plain INSERT failed.
	 */
	ok = (plain.data != NULL && es_batch_run(a, plain.data, check, page, first, last, true, &res)) ||
		((plain.data == NULL || !t->partitioned) && es_batch_run(a, sql.data, check, page, first, last, rest, &res));
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
