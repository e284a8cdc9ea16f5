/*-------------------------------------------------------------------------
 *
 * apply_log.c
 *	  The sync_log rows of the apply.
 *
 * Every update applied gets one sync_log row, queued as column arrays in
 * EsApply and written every 1000 rows and at the end of the call: straight
 * into the table (EsWrite, apply_direct.c) when possible, otherwise with
 * one INSERT over unnest() of the arrays.  Each Failed row is noted for
 * the server log (src/consumer/failed.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_log.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/acl.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "eventstream.h"
#include "consumer/apply.h"
#include "consumer/failed.h"

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
void
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
void
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
