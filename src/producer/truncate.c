/*-------------------------------------------------------------------------
 *
 * truncate.c
 *	  The truncate capture trigger: records TRUNCATE of subscribed document
 *	  tables and of their registered child tables into
 *	  eventstream.update_log, in the truncating transaction.
 *
 * eventstream._capture_truncate() is a statement trigger that
 * eventstream._sync_truncate() installs twice on the tables that carry the
 * row capture trigger (capture.c): as eventstream_truncate, AFTER
 * TRUNCATE, and, on child tables, as eventstream_truncate_rows, BEFORE
 * TRUNCATE.  Its arguments say what the table is, with the names the
 * tables travel by (what the row capture trigger logs them as):
 *
 *	  'doc', <name>		  a document table, logged as <name>
 *	  'child', <fk name>, <parent's name>, <name>
 *						  a child table, part of its parent's documents
 *						  through its foreign key <fk name>, its rows
 *						  listed under <name> in their diffs
 *	  'part', <root's name>
 *						  a leaf partition of a partitioned document
 *						  table, its rows logged under the root's name
 *
 * (a table may be both doc and child: the groups follow each other).  The
 * leaf partitions of a partitioned child table carry the child triggers
 * with their own foreign key's name: each logs its own rows (a
 * partitioned table holds none).
 * What gets logged:
 *	  TRUNCATE of a document table  one Truncate: docname '', data NULL
 *	  TRUNCATE of a child table     one Update per parent document that had
 *									child rows, with all of them "removed",
 *									as a DELETE of each would log
 *	  TRUNCATE of a partition       one Delete per row it holds, under the
 *									root's name, as a DELETE of each would
 *									log (the partition, or a partitioned
 *									table it belongs to, named alone)
 *
 * A partitioned document table carries the trigger BEFORE TRUNCATE too
 * (eventstream_truncate_rows), and its leaf partitions carry it BEFORE
 * TRUNCATE only (eventstream_truncate_part, 'part').  TRUNCATE of the
 * root truncates every partition and fires their BEFORE triggers after
 * the root's: the root's notes its name for the statement, the
 * partitions' find it and log nothing, the root's AFTER trigger logs the
 * one Truncate and takes the note away.  A partition named before its
 * root in the same statement logs its Deletes before the root's
 * Truncate, which empties the table all the same.
 *
 * A child table's rows are read before they go (BEFORE TRUNCATE) and the
 * Updates written after the statement (AFTER TRUNCATE), and only when the
 * parent still has rows then: a parent truncated by the same statement
 * (TRUNCATE parent CASCADE, or both named) logs its Truncate, which says
 * it all.  A child row always has its parent (its foreign key), so the
 * parent is either truncated with it or keeps all of its rows.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/truncate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/uuid.h"

#include "eventstream.h"
#include "producer/logids.h"
#include "producer/rowjson.h"

PG_FUNCTION_INFO_V1(eventstream_capture_truncate);
PG_FUNCTION_INFO_V1(eventstream_on_partition_ddl);

/* Rows fetched at a time from a child table being truncated. */
#define ES_TRUNCATE_FETCH	1000

/* The Updates a child table's truncation logs, read before it. */
typedef struct EsTruncatePending
{
	Oid			relid;			/* the child table */
	int			argno;			/* its trigger argument */
	Oid			parent_relid;
	char	   *parent_ref_table;	/* the name the parent travels by */
	char	   *parent_sql;		/* SELECT 1 FROM [ONLY] <parent> LIMIT 1 */
	List	   *docnames;		/* parent docnames (char *) ... */
	List	   *diffs;			/* ... and their Updates' data (Jsonb *) */
} EsTruncatePending;

/* Pending child truncations of transaction es_pending_lxid. */
static LocalTransactionId es_pending_lxid = InvalidLocalTransactionId;
static List *es_pending = NIL;

/*
 * The names of the partitioned document tables being truncated by the
 * current statement (between their BEFORE and AFTER triggers), in
 * transaction es_noted_lxid, subtransaction es_noted_subxid: a statement
 * that failed in between leaves its notes in a (sub)transaction that
 * cannot run anything again.  In TopMemoryContext.
 */
static LocalTransactionId es_noted_lxid = InvalidLocalTransactionId;
static SubTransactionId es_noted_subxid = InvalidSubTransactionId;
static List *es_noted = NIL;

/*
 * es_owner_begin
 *		Run what follows, until es_owner_end, as the owner of relation
 *		relid: the truncating role need not be able to read the tables or
 *		write the update log, nor row-level security hide rows from the
 *		capture (the row capture trigger is handed every row).  An error
 *		restores the user with the (sub)transaction.
 */
static void
es_owner_begin(Oid relid, Oid *save_userid, int *save_sec)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	Oid			owner;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	GetUserIdAndSecContext(save_userid, save_sec);
	SetUserIdAndSecContext(owner, *save_sec | SECURITY_LOCAL_USERID_CHANGE);
}

/*
 * es_owner_end
 *		Back to the user es_owner_begin saved.
 */
static void
es_owner_end(Oid save_userid, int save_sec)
{
	SetUserIdAndSecContext(save_userid, save_sec);
}

/*
 * es_truncate_logs
 *		Append one row to eventstream.update_log per element of docnames,
 *		each with the matching element of datas (NIL: no data), in the
 *		current transaction, as the log's owner, in one statement: ids are
 *		drawn in list order as the row capture trigger draws them, with the
 *		apply origin it would stamp.  The caller is connected to SPI.
 */
static void
es_truncate_logs(const char *update_type, const char *ref_table,
				 List *docnames, List *datas)
{
	Oid			argtypes[6] = {INT8ARRAYOID, TEXTOID, TEXTOID, TEXTARRAYOID, JSONBARRAYOID, UUIDOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			nsp = get_namespace_oid(EVENTSTREAM_SCHEMA, false);
	Oid			seqid = get_relname_relid("update_log_id_seq", nsp);
	Oid			logid = get_relname_relid(EVENTSTREAM_LOG_TABLE, nsp);
	int			n = list_length(docnames);
	Datum	   *ids;
	Datum	   *names;
	Datum	   *data;
	bool	   *data_nulls;
	int			dims[1] = {n};
	int			lbs[1] = {1};
	ListCell   *lc;
	Oid			save_userid;
	int			save_sec;
	int			rc;

	if (n == 0)
		return;
	if (!OidIsValid(seqid) || !OidIsValid(logid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream.update_log does not exist"),
				 errhint("Reinstall the extension with DROP EXTENSION eventstream CASCADE; CREATE EXTENSION eventstream.")));
	ids = palloc(sizeof(Datum) * n);
	names = palloc(sizeof(Datum) * n);
	data = palloc0(sizeof(Datum) * n);
	data_nulls = palloc(sizeof(bool) * n);
	foreach(lc, docnames)
	{
		int			i = foreach_current_index(lc);

		ids[i] = Int64GetDatum(es_next_log_id(seqid));
		names[i] = CStringGetTextDatum(lfirst(lc));
		data_nulls[i] = (datas == NIL || list_nth(datas, i) == NULL);
		if (!data_nulls[i])
			data[i] = PointerGetDatum(list_nth(datas, i));
	}
	values[0] = PointerGetDatum(construct_array(ids, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	values[1] = CStringGetTextDatum(update_type);
	values[2] = CStringGetTextDatum(ref_table);
	values[3] = PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT));
	values[4] = PointerGetDatum(construct_md_array(data, data_nulls, 1, dims, lbs, JSONBOID, -1, false, TYPALIGN_INT));
	values[5] = UUIDPGetDatum(&es_apply_origin);
	if (!es_apply_origin_set)
		nulls[5] = 'n';
	es_owner_begin(logid, &save_userid, &save_sec);
	rc = SPI_execute_with_args("INSERT INTO eventstream.update_log (id, update_type, ref_table, docname, data, origin)"
							   " SELECT u.id, $2, $3, u.docname, u.data, $6"
							   "   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($4), pg_catalog.unnest($5))"
							   "        AS u(id, docname, data)",
							   6, argtypes, values, nulls, false, 0);
	es_owner_end(save_userid, save_sec);
	if (rc != SPI_OK_INSERT || SPI_processed != (uint64) n)
		elog(ERROR, "could not write to eventstream.update_log");
}

/*
 * es_truncate_log
 *		es_truncate_logs for one row.
 */
static void
es_truncate_log(const char *update_type, const char *ref_table,
				const char *docname, Jsonb *data)
{
	es_truncate_logs(update_type, ref_table, list_make1((char *) docname),
					 data ? list_make1(data) : NIL);
}

/*
 * es_pk_of
 *		The primary key columns of rel in key order; returns how many (0:
 *		none).
 */
static int
es_pk_of(Relation rel, AttrNumber *out)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	HeapTuple	tup;
	Form_pg_index idx;
	int			i;
	int			n;

	if (!OidIsValid(pkoid))
		return 0;
	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for index %u", pkoid);
	idx = (Form_pg_index) GETSTRUCT(tup);
	n = idx->indnkeyatts;
	for (i = 0; i < n; i++)
		out[i] = idx->indkey.values[i];
	ReleaseSysCache(tup);
	return n;
}

/*
 * es_warn_uncaptured
 *		Say that the truncation of rel is not logged, and why.
 */
static void
es_warn_uncaptured(Relation rel, const char *why)
{
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("TRUNCATE of table \"%s\" is not captured", es_qualified_relname(rel)),
			 errdetail("%s", why),
			 errhint("Have the consumers copy the parent table again with eventstream.resync_table().")));
}

/*
 * es_pending_take
 *		The pending truncation of child relid under trigger argument argno,
 *		unlinked from the list; NULL when there is none in this transaction.
 */
static EsTruncatePending *
es_pending_take(Oid relid, int argno)
{
	ListCell   *lc;

	if (es_pending_lxid != MyProc->lxid)
	{
		/* Left by an earlier transaction: its memory went with it. */
		es_pending = NIL;
		es_pending_lxid = MyProc->lxid;
	}
	foreach(lc, es_pending)
	{
		EsTruncatePending *p = lfirst(lc);

		if (p->relid == relid && p->argno == argno)
		{
			es_pending = foreach_delete_current(es_pending, lc);
			return p;
		}
	}
	return NULL;
}

/*
 * es_removed_begin
 *		Open the Update of a parent document whose child rows of child
 *		table ref_table are all removed: {"removed": {ref_table: [ ...
 */
static void
es_removed_begin(JsonbParseState **st, const char *ref_table)
{
	*st = NULL;
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	es_push_key(st, "removed", 7);
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	es_push_key(st, ref_table, strlen(ref_table));
	pushJsonbValue(st, WJB_BEGIN_ARRAY, NULL);
}

/*
 * es_removed_end
 *		Close what es_removed_begin opened, with the other three parts of a
 *		diff empty (as the row capture trigger writes them), into cxt.
 */
static Jsonb *
es_removed_end(JsonbParseState **st, MemoryContext cxt)
{
	static const char *const empty[] = {"changed", "added", "row_changed"};
	MemoryContext old;
	Jsonb	   *res;
	int			i;

	pushJsonbValue(st, WJB_END_ARRAY, NULL);
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
	for (i = 0; i < (int) lengthof(empty); i++)
	{
		es_push_key(st, empty[i], strlen(empty[i]));
		pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
		pushJsonbValue(st, WJB_END_OBJECT, NULL);
	}
	old = MemoryContextSwitchTo(cxt);
	res = JsonbValueToJsonb(pushJsonbValue(st, WJB_END_OBJECT, NULL));
	MemoryContextSwitchTo(old);
	return res;
}

/*
 * es_pending_add
 *		Add the Update of parent document docname (data diff) to p, in the
 *		transaction's memory, where p and diff are.
 */
static void
es_pending_add(EsTruncatePending *p, const char *docname, Jsonb *diff)
{
	MemoryContext old = MemoryContextSwitchTo(TopTransactionContext);

	p->docnames = lappend(p->docnames, pstrdup(docname));
	p->diffs = lappend(p->diffs, diff);
	MemoryContextSwitchTo(old);
}

/*
 * es_child_key
 *		Find child table rel's foreign key conname to its parent: fill
 *		*parent_relid, ppk[] and *nppk (the parent's primary key columns)
 *		and fkattnums[] (the child's foreign key columns, in the order of
 *		ppk[]).  Returns NULL when all is well, otherwise why the
 *		truncation cannot be logged.
 */
static char *
es_child_key(Relation rel, const char *conname, Oid *parent_relid,
			 AttrNumber *ppk, int *nppk, AttrNumber *fkattnums)
{
	ForeignKeyCacheInfo *fk = NULL;
	Relation	parent;
	ListCell   *lc;
	int			i;
	int			k;

	foreach(lc, RelationGetFKeyList(rel))
	{
		ForeignKeyCacheInfo *f = lfirst(lc);
		char	   *name = get_constraint_name(f->conoid);

		if (name != NULL && strcmp(name, conname) == 0)
			fk = f;
	}
	if (fk == NULL)
		return psprintf("Its foreign key \"%s\" to its parent is gone.", conname);
	*parent_relid = fk->confrelid;
	parent = table_open(fk->confrelid, AccessShareLock);
	*nppk = es_pk_of(parent, ppk);
	if (*nppk == 0)
	{
		char	   *why = psprintf("Its parent \"%s\" has no primary key.", es_qualified_relname(parent));

		table_close(parent, AccessShareLock);
		return why;
	}
	for (i = 0; i < *nppk; i++)
	{
		fkattnums[i] = InvalidAttrNumber;
		for (k = 0; k < fk->nkeys; k++)
			if (fk->confkey[k] == ppk[i])
				fkattnums[i] = fk->conkey[k];
		if (fkattnums[i] == InvalidAttrNumber)
		{
			char	   *why = psprintf("Its foreign key \"%s\" does not refer to the primary key of \"%s\".",
									   conname, es_qualified_relname(parent));

			table_close(parent, AccessShareLock);
			return why;
		}
	}
	table_close(parent, AccessShareLock);
	return NULL;
}

/*
 * es_child_before
 *		Before child table rel is truncated: read its rows, through its
 *		foreign key conname, into the Updates of their parents (logged as
 *		parent_ref) that a DELETE of each row would log, the rows listed
 *		under child_ref, and keep them (in the transaction's memory) for
 *		es_child_after.  The caller is connected to SPI.
 */
static void
es_child_before(Relation rel, int argno, const char *conname,
				const char *parent_ref, const char *child_ref)
{
	AttrNumber	ppk[INDEX_MAX_KEYS];
	AttrNumber	cpk[INDEX_MAX_KEYS];
	AttrNumber	fkatt[INDEX_MAX_KEYS];
	int			fkcol[INDEX_MAX_KEYS];
	int			nppk = 0;
	int			ncpk;
	Oid			parent_relid = InvalidOid;
	Relation	parent;
	EsEncoder  *enc;
	EsTruncatePending *p;
	StringInfoData sql;
	Portal		portal;
	char	   *relname = es_qualified_relname(rel);
	char	   *why;
	char	   *cur = NULL;
	JsonbParseState *st = NULL;
	MemoryContext txcxt = TopTransactionContext;
	MemoryContext grp;
	MemoryContext row;
	MemoryContext old;
	Oid			save_userid;
	int			save_sec;
	int			i;
	int			k;

	/* A truncation tried before and rolled back to a savepoint: forget it. */
	(void) es_pending_take(RelationGetRelid(rel), argno);

	why = es_child_key(rel, conname, &parent_relid, ppk, &nppk, fkatt);
	ncpk = es_pk_of(rel, cpk);
	if (why == NULL && ncpk == 0)
		why = psprintf("Table \"%s\" has no primary key.", relname);
	if (why != NULL)
	{
		es_warn_uncaptured(rel, why);
		return;
	}

	enc = es_encoder_build(RelationGetDescr(rel), cpk, ncpk, CurrentMemoryContext);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT * FROM ONLY %s WHERE ", relname);
	for (i = 0; i < nppk; i++)
	{
		fkcol[i] = -1;
		for (k = 0; k < enc->ncolumns; k++)
			if (enc->columns[k].attnum == fkatt[i])
				fkcol[i] = k;
		if (fkcol[i] < 0)
			elog(ERROR, "foreign key column %d of \"%s\" not found", fkatt[i], relname);
		appendStringInfo(&sql, "%s%s IS NOT NULL", i > 0 ? " AND " : "",
						 quote_identifier(enc->columns[fkcol[i]].name));
	}
	for (i = 0; i < nppk; i++)
		appendStringInfo(&sql, "%s%s", i > 0 ? ", " : " ORDER BY ",
						 quote_identifier(enc->columns[fkcol[i]].name));
	for (i = 0; i < ncpk; i++)
		appendStringInfo(&sql, ", %s", quote_identifier(enc->columns[enc->pk[i]].name));

	parent = table_open(parent_relid, AccessShareLock);
	old = MemoryContextSwitchTo(txcxt);
	p = palloc0(sizeof(EsTruncatePending));
	p->relid = RelationGetRelid(rel);
	p->argno = argno;
	p->parent_relid = parent_relid;
	p->parent_ref_table = pstrdup(parent_ref);
	/* A partitioned parent's rows are in its partitions. */
	p->parent_sql = psprintf("SELECT 1 FROM %s%s LIMIT 1",
							 parent->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ? "" : "ONLY ",
							 es_qualified_relname(parent));
	MemoryContextSwitchTo(old);
	table_close(parent, AccessShareLock);

	/*
	 * One Update per parent document: the rows come grouped by it.  A
	 * group is built in memory of its own, freed once it is made into its
	 * Update (kept in the transaction's memory).
	 */
	grp = AllocSetContextCreate(CurrentMemoryContext, "eventstream truncate group", ALLOCSET_DEFAULT_SIZES);
	row = AllocSetContextCreate(CurrentMemoryContext, "eventstream truncate row", ALLOCSET_SMALL_SIZES);
	es_owner_begin(RelationGetRelid(rel), &save_userid, &save_sec);
	portal = SPI_cursor_open_with_args(NULL, sql.data, 0, NULL, NULL, NULL, true, 0);
	for (;;)
	{
		uint64		r;

		SPI_cursor_fetch(portal, true, ES_TRUNCATE_FETCH);
		if (SPI_processed == 0)
			break;
		for (r = 0; r < SPI_processed; r++)
		{
			HeapTuple	tup = SPI_tuptable->vals[r];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			char	   *pdoc;
			JsonbValue	v;

			old = MemoryContextSwitchTo(row);
			pdoc = es_docname(enc, fkcol, nppk, tup, desc);
			MemoryContextSwitchTo(grp);
			if (cur == NULL || strcmp(cur, pdoc) != 0)
			{
				if (cur != NULL)
				{
					es_pending_add(p, cur, es_removed_end(&st, txcxt));
					MemoryContextReset(grp);
				}
				cur = pstrdup(pdoc);
				es_removed_begin(&st, child_ref);
			}
			v.type = jbvString;
			v.val.string.val = es_docname(enc, enc->pk, enc->npk, tup, desc);
			v.val.string.len = strlen(v.val.string.val);
			pushJsonbValue(&st, WJB_ELEM, &v);
			MemoryContextSwitchTo(old);
			MemoryContextReset(row);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	es_owner_end(save_userid, save_sec);
	if (cur != NULL)
		es_pending_add(p, cur, es_removed_end(&st, txcxt));
	MemoryContextDelete(grp);
	MemoryContextDelete(row);
	old = MemoryContextSwitchTo(txcxt);
	es_pending = lappend(es_pending, p);
	MemoryContextSwitchTo(old);
}

/*
 * es_child_after
 *		After child table rel was truncated: log what es_child_before kept
 *		for it, unless its parent has no rows now (it was truncated by the
 *		same statement and logs its own Truncate).  The caller is connected
 *		to SPI.
 */
static void
es_child_after(Relation rel, int argno)
{
	EsTruncatePending *p = es_pending_take(RelationGetRelid(rel), argno);
	Oid			save_userid;
	int			save_sec;
	int			rc;

	if (p == NULL || p->docnames == NIL)
		return;
	es_owner_begin(p->parent_relid, &save_userid, &save_sec);
	rc = SPI_execute(p->parent_sql, true, 1);
	es_owner_end(save_userid, save_sec);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "could not run \"%s\"", p->parent_sql);
	if (SPI_processed == 0)
		return;
	es_truncate_logs("Update", p->parent_ref_table, p->docnames, p->diffs);
}

/*
 * es_noted_current
 *		Drop the notes left by another (sub)transaction than the current one.
 */
static void
es_noted_current(void)
{
	if (es_noted_lxid != MyProc->lxid || es_noted_subxid != GetCurrentSubTransactionId())
	{
		list_free_deep(es_noted);
		es_noted = NIL;
		es_noted_lxid = MyProc->lxid;
		es_noted_subxid = GetCurrentSubTransactionId();
	}
}

/*
 * es_note
 *		The document table logged as ref_table is being truncated by the
 *		current statement (noted true: its BEFORE trigger) or was (noted
 *		false: its AFTER trigger).
 */
static void
es_note(const char *ref_table, bool noted)
{
	ListCell   *lc;

	es_noted_current();
	foreach(lc, es_noted)
	{
		if (strcmp(lfirst(lc), ref_table) == 0)
		{
			if (!noted)
			{
				pfree(lfirst(lc));
				es_noted = foreach_delete_current(es_noted, lc);
			}
			return;
		}
	}
	if (noted)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		es_noted = lappend(es_noted, pstrdup(ref_table));
		MemoryContextSwitchTo(old);
	}
}

/*
 * es_is_noted
 *		Whether the current statement truncates the document table logged
 *		as ref_table (es_note).
 */
static bool
es_is_noted(const char *ref_table)
{
	ListCell   *lc;

	es_noted_current();
	foreach(lc, es_noted)
		if (strcmp(lfirst(lc), ref_table) == 0)
			return true;
	return false;
}

/*
 * es_part_before
 *		Before leaf partition rel of the partitioned document table logged
 *		as root_ref is truncated: unless the statement truncates the root,
 *		log a Delete under root_ref of each row rel holds, named by its
 *		primary key (the root's, by column name) as the row capture
 *		trigger names it.  The caller is connected to SPI.
 */
static void
es_part_before(Relation rel, const char *root_ref)
{
	AttrNumber	pk[INDEX_MAX_KEYS];
	int			npk;
	EsEncoder  *enc;
	Portal		portal;
	char	   *sql;
	MemoryContext batch;
	MemoryContext old;
	Oid			save_userid;
	int			save_sec;

	if (rel->rd_rel->relkind != RELKIND_RELATION || es_is_noted(root_ref))
		return;
	npk = es_pk_of(rel, pk);
	if (npk == 0)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("TRUNCATE of table \"%s\" is not captured", es_qualified_relname(rel)),
				 errdetail("Partition \"%s\" has no primary key.", es_qualified_relname(rel)),
				 errhint("Have the consumers copy table \"%s\" again with eventstream.resync_table().", root_ref)));
		return;
	}
	enc = es_encoder_build(RelationGetDescr(rel), pk, npk, CurrentMemoryContext);
	sql = psprintf("SELECT * FROM ONLY %s", es_qualified_relname(rel));
	batch = AllocSetContextCreate(CurrentMemoryContext, "eventstream truncate partition", ALLOCSET_DEFAULT_SIZES);
	es_owner_begin(RelationGetRelid(rel), &save_userid, &save_sec);
	portal = SPI_cursor_open_with_args(NULL, sql, 0, NULL, NULL, NULL, true, 0);
	es_owner_end(save_userid, save_sec);
	for (;;)
	{
		List	   *docnames = NIL;
		uint64		r;

		es_owner_begin(RelationGetRelid(rel), &save_userid, &save_sec);
		SPI_cursor_fetch(portal, true, ES_TRUNCATE_FETCH);
		es_owner_end(save_userid, save_sec);
		if (SPI_processed == 0)
			break;

		/* Name the rows first: logging them replaces SPI_tuptable. */
		old = MemoryContextSwitchTo(batch);
		for (r = 0; r < SPI_processed; r++)
			docnames = lappend(docnames, es_docname(enc, enc->pk, enc->npk, SPI_tuptable->vals[r],
													SPI_tuptable->tupdesc));
		SPI_freetuptable(SPI_tuptable);
		es_truncate_logs("Delete", root_ref, docnames, NIL);
		MemoryContextSwitchTo(old);
		MemoryContextReset(batch);
	}
	SPI_cursor_close(portal);
	MemoryContextDelete(batch);
}

/*
 * eventstream_capture_truncate
 *		The statement trigger function eventstream._capture_truncate():
 *		BEFORE TRUNCATE it reads a child table's rows, AFTER TRUNCATE it
 *		logs (see the file header).
 */
Datum
eventstream_capture_truncate(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	char	  **args;
	int			nargs;
	bool		before;
	int			styles;
	int			i;
	int			n;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstream._capture_truncate: not called by trigger manager")));
	if (!TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_STATEMENT(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstream._capture_truncate: must be fired ON TRUNCATE ... FOR EACH STATEMENT")));
	args = trigdata->tg_trigger->tgargs;
	nargs = trigdata->tg_trigger->tgnargs;
	rel = trigdata->tg_relation;
	before = TRIGGER_FIRED_BEFORE(trigdata->tg_event);

	SPI_connect();
	styles = es_output_styles_push();
	for (i = 0; i < nargs; i += n)
	{
		if (strcmp(args[i], "doc") == 0 && i + 1 < nargs)
		{
			n = 2;
			es_note(args[i + 1], before);
			if (!before)
				es_truncate_log("Truncate", args[i + 1], "", NULL);
		}
		else if (strcmp(args[i], "part") == 0 && i + 1 < nargs)
		{
			n = 2;
			if (before)
				es_part_before(rel, args[i + 1]);
		}
		else if (strcmp(args[i], "child") == 0 && i + 3 < nargs)
		{
			n = 4;
			if (before)
				es_child_before(rel, i, args[i + 1], args[i + 2], args[i + 3]);
			else
				es_child_after(rel, i);
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
					 errmsg("eventstream._capture_truncate: invalid trigger arguments on \"%s\"",
							RelationGetRelationName(rel)),
					 errhint("Capture triggers are managed by eventstream; do not create them by hand.")));
	}
	es_output_styles_pop(styles);
	SPI_finish();
	return PointerGetDatum(NULL);
}

/*
 * es_changes_partitions
 *		Whether DDL statement parsetree creates a partition (CREATE TABLE
 *		... PARTITION OF), attaches or detaches one.
 */
static bool
es_changes_partitions(Node *parsetree)
{
	ListCell   *lc;

	if (parsetree == NULL)
		return false;
	if (IsA(parsetree, CreateStmt))
		return ((CreateStmt *) parsetree)->partbound != NULL;
	if (!IsA(parsetree, AlterTableStmt))
		return false;
	foreach(lc, ((AlterTableStmt *) parsetree)->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		if (cmd->subtype == AT_AttachPartition || cmd->subtype == AT_DetachPartition ||
			cmd->subtype == AT_DetachPartitionFinalize)
			return true;
	}
	return false;
}

/*
 * eventstream_on_partition_ddl
 *		The event trigger function eventstream._on_partition_ddl(), at the
 *		end of CREATE TABLE and ALTER TABLE: when the statement created,
 *		attached or detached a partition, bring the partitions' truncate
 *		triggers in step (eventstream._partitions_changed()).  Other
 *		statements, among them all pg_restore replays before it restores
 *		the triggers, do nothing.
 */
Datum
eventstream_on_partition_ddl(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstream._on_partition_ddl: not fired by event trigger manager")));
	trigdata = (EventTriggerData *) fcinfo->context;
	if (!es_changes_partitions(trigdata->parsetree))
		PG_RETURN_VOID();
	SPI_connect();
	if (SPI_execute("SELECT eventstream._partitions_changed()", false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not run eventstream._partitions_changed()");
	SPI_finish();
	PG_RETURN_VOID();
}
