/*-------------------------------------------------------------------------
 *
 * apply_keys.c
 *	  The apply's matching of rows on the producer's key, and the rows
 *	  row-level security hides from the subscriber.
 *
 * A docname is the producer's key rendered (its text, or a JSON array of
 * its values in key order).  The producer says its tables' key columns
 * with every reply ("keys"; mirrored into producer_table.remote_key).  A
 * local table kept under the producer's names whose primary key is
 * another one has its rows matched on the producer's key columns:
 * es_match_table describes it that way, under a unique index of the local
 * table on some of those columns (its primary key when it can be), which
 * is also the arbiter of a Create's upsert.  A table lacking a column of
 * the producer's key, or without such an index, cannot be matched: its
 * updates fail with that error, and subscribe()/add_producer() refuse it
 * (eventstream._check_remote_key).  Such tables are applied update by
 * update (es_batchable).
 *
 * Row-level security on a local table applies to the subscriber, as every
 * privilege does.  An Update or Delete that finds no row is checked by
 * es_check_hidden: when the row is there but the subscriber's policies
 * hide it, the update fails with that error instead of passing for a row
 * that is not here.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_keys.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/rls.h"

#include "consumer/apply.h"

PG_FUNCTION_INFO_V1(eventstream_check_remote_key);

/* "(a, b)": the column names given, quoted where they need it. */
static char *
es_col_list(char **cols, int n)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '(');
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "", quote_identifier(cols[i]));
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

/* Whether name is one of the n columns cols. */
static bool
es_col_in(const char *name, char **cols, int n)
{
	for (int i = 0; i < n; i++)
		if (strcmp(cols[i], name) == 0)
			return true;
	return false;
}

/*
 * es_key_differs
 *		Whether the producer says the key of sub's table is other columns
 *		than t's primary key (or the same in another order).
 */
bool
es_key_differs(EsTable *t, EsSub *sub)
{
	if (sub->nrkey == 0)
		return false;
	if (sub->nrkey != t->npk)
		return true;
	for (int i = 0; i < t->npk; i++)
		if (strcmp(t->pk[i], sub->rkey[i]) != 0)
			return true;
	return false;
}

/*
 * es_arbiter
 *		The key columns of a unique index of rel made of columns of rkey
 *		only (its primary key if it is one; otherwise the first valid,
 *		immediate, non-partial unique index on plain columns), or NIL.
 *		Without such an index a row of rel is not identified by rkey.
 */
static List *
es_arbiter(Relation rel, char **rkey, int nrkey)
{
	Oid			pkindex = RelationGetPrimaryKeyIndex(rel);
	List	   *indexes = RelationGetIndexList(rel);
	List	   *best = NIL;
	ListCell   *lc;

	foreach(lc, indexes)
	{
		Oid			indexoid = lfirst_oid(lc);
		Relation	idx = index_open(indexoid, AccessShareLock);
		Form_pg_index ix = idx->rd_index;
		List	   *cols = NIL;
		bool		ok = ix->indisunique && ix->indimmediate && ix->indisvalid &&
			RelationGetIndexPredicate(idx) == NIL;

		for (int i = 0; ok && i < ix->indnkeyatts; i++)
		{
			AttrNumber	att = ix->indkey.values[i];
			char	   *name;

			if (att <= 0)
			{
				ok = false;		/* an expression */
				break;
			}
			name = NameStr(TupleDescAttr(RelationGetDescr(rel), att - 1)->attname);
			ok = es_col_in(name, rkey, nrkey);
			cols = lappend(cols, pstrdup(name));
		}
		index_close(idx, AccessShareLock);
		if (ok && (best == NIL || indexoid == pkindex))
			best = cols;
		if (ok && indexoid == pkindex)
			break;
	}
	list_free(indexes);
	return best;
}

/*
 * es_match_table
 *		How the rows of t (kept under the producer's names) are matched on
 *		the key of sub's table: t itself when that is t's primary key, or
 *		the producer does not say; otherwise a copy of t whose "pk" is the
 *		producer's key columns and whose arbiter is a unique index of t on
 *		some of them (in the current memory context).  Raises when t has no
 *		such index or lacks a column of the producer's key.
 */
EsTable *
es_match_table(EsTable *t, EsSub *sub)
{
	EsTable    *mt;
	Relation	rel;
	List	   *arb;
	ListCell   *lc;

	if (!es_key_differs(t, sub))
		return t;
	for (int i = 0; i < sub->nrkey; i++)
		if (!es_col_in(sub->rkey[i], t->cols, t->ncols))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
					 errmsg("table %s cannot match rows on the producer's key %s",
							t->qualname, es_col_list(sub->rkey, sub->nrkey)),
					 errdetail("It has no column \"%s\" that a row can be given.", sub->rkey[i]),
					 errhint("Give the table the producer's key columns, and a primary key or unique index on some of them.")));
	rel = table_open(t->relid, AccessShareLock);
	arb = es_arbiter(rel, sub->rkey, sub->nrkey);
	table_close(rel, AccessShareLock);
	if (arb == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table %s cannot match rows on the producer's key %s",
						t->qualname, es_col_list(sub->rkey, sub->nrkey)),
				 errdetail("Its primary key is %s, and none of its unique indexes is on columns of the producer's key alone.",
						   es_col_list(t->pk, t->npk)),
				 errhint("Give the table a primary key or unique index on some of the producer's key columns.")));

	mt = palloc(sizeof(EsTable));
	*mt = *t;
	mt->npk = sub->nrkey;
	mt->pk = sub->rkey;
	mt->narb = list_length(arb);
	mt->arb = palloc(sizeof(char *) * mt->narb);
	foreach(lc, arb)
		mt->arb[foreach_current_index(lc)] = lfirst(lc);
	return mt;
}

/*
 * es_batchable
 *		Whether updates of kind of sub's table may be applied in a run
 *		(apply_batch.c, apply_direct.c), which find rows by the table's
 *		primary key and take a Delete that finds none for a row that is not
 *		here: not when the producer's key is another one, nor Deletes from
 *		a table whose row-level security applies to the subscriber.
 */
bool
es_batchable(EsApply *a, EsSub *sub, EsUpdateKind kind)
{
	if (es_key_differs(es_table(sub->relid), sub))
		return false;
	if (kind == ES_UPDATE_DELETE && check_enable_rls(sub->relid, a->subscriber, true) == RLS_ENABLED)
		return false;
	return true;
}

/*
 * es_check_hidden
 *		An update of kind found no row of t with key (the columns of t's
 *		"pk"): when row-level security applies to the subscriber on t and
 *		the row is there nevertheless, raise -- its policies hide it, and
 *		the update cannot be applied.  The row is looked for as the table's
 *		owner, with row security off for it (as referential integrity
 *		checks look); docname names it in the error.
 */
void
es_check_hidden(EsApply *a, EsTable *t, Jsonb *key, EsUpdateKind kind, const char *docname)
{
	StringInfoData sql;
	Oid			argtypes[1] = {JSONBOID};
	Datum		values[1];
	Oid			owner;
	Oid			save_userid;
	int			save_sec;
	int			rc;
	bool		found;
	Relation	rel;
	const char *what = kind == ES_UPDATE_DELETE ? "delete" : kind == ES_UPDATE_UPDATE ? "update" : "overwrite";

	if (key == NULL || check_enable_rls(t->relid, a->subscriber, true) != RLS_ENABLED)
		return;
	rel = table_open(t->relid, AccessShareLock);
	owner = rel->rd_rel->relowner;
	table_close(rel, AccessShareLock);

	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT 1 FROM %s t, eventstream._populate(NULL::%s, $1) k WHERE ",
					 t->qualname, t->qualname);
	for (int i = 0; i < t->npk; i++)
		appendStringInfo(&sql, "%st.%s = k.%s", i > 0 ? " AND " : "",
						 quote_identifier(t->pk[i]), quote_identifier(t->pk[i]));
	values[0] = PointerGetDatum(key);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE | SECURITY_NOFORCE_RLS);
	/* Not read-only: it sees what this transaction wrote until now. */
	rc = SPI_execute_with_args(sql.data, 1, argtypes, values, NULL, false, 1);
	SetUserIdAndSecContext(save_userid, save_sec);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not look for a row of %s: %s", t->qualname, SPI_result_code_string(rc));
	found = SPI_processed > 0;
	SPI_freetuptable(SPI_tuptable);
	if (found)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("row-level security of %s hides row \"%s\" from subscriber \"%s\"",
						t->qualname, docname, GetUserNameFromId(a->subscriber, false)),
				 errdetail("The row is there, but the table's policies do not let the subscriber %s it.", what),
				 errhint("Change the policies or the subscriber's rights so that it may, then resync this entry.")));
}

/*
 * es_check_other_document
 *		A Create of docname found a row of t (matched on the producer's key)
 *		with the same values of t's arbiter columns but other values of the
 *		producer's other key columns: that row is another document of the
 *		producer, which t cannot hold beside this one.  Raises.
 */
void
es_check_other_document(EsTable *t, const char *docname)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("a row of %s with the same %s is another document than \"%s\"",
					t->qualname, es_col_list(t->arb, t->narb), docname),
			 errdetail("The producer's key is %s; this table has one row per %s.",
					   es_col_list(t->pk, t->npk), es_col_list(t->arb, t->narb)),
			 errhint("Resync this entry once that row is deleted here or on the producer.")));
}

/*
 * eventstream_check_remote_key
 *		_check_remote_key(tbl regclass, remote_key text[]): raise, as an
 *		update would fail, when the rows of tbl cannot be matched on the
 *		producer's key columns remote_key.
 */
Datum
eventstream_check_remote_key(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(1);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	EsSub		sub;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	memset(&sub, 0, sizeof(sub));
	sub.relid = relid;
	sub.nrkey = n;
	sub.rkey = palloc(sizeof(char *) * Max(n, 1));
	for (int i = 0; i < n; i++)
	{
		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("a key column name cannot be null")));
		sub.rkey[i] = TextDatumGetCString(elems[i]);
	}
	es_apply_reset();
	(void) es_match_table(es_table(relid), &sub);
	PG_RETURN_VOID();
}
