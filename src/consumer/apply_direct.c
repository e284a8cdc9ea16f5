/*-------------------------------------------------------------------------
 *
 * apply_direct.c
 *	  Straight writes into a table, without statements, for the apply.
 *
 * EsWrite writes rows the way COPY FROM inserts (see its comment in
 * apply.h): the sync_log rows (apply_log.c) and runs of updates of one
 * kind and table (es_batch_direct), whose Updates and Deletes find each
 * row by its key and change it the way PostgreSQL's logical replication
 * applies a change (execReplication.c).  Only where that is exactly what
 * the statements would do; otherwise, or on any failure, the caller falls
 * back to the statements.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_direct.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/fmgrprotos.h"
#include "rewrite/rewriteDefine.h"
#include "rewrite/rewriteHandler.h"
#include "utils/acl.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/resowner.h"

#include "consumer/apply.h"

/*
 * es_triggers_silent
 *		Whether none of rel's triggers would fire now: each is a user's
 *		trigger, disabled, or an ordinary one (not ENABLE REPLICA or ENABLE
 *		ALWAYS) while session_replication_role is replica, as the apply
 *		sets it.  Foreign keys and deferred unique checks are internal
 *		triggers: the statements enforce them (apply_fk.c).
 */
static bool
es_triggers_silent(Relation rel)
{
	if (rel->trigdesc == NULL)
		return true;
	for (int i = 0; i < rel->trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &rel->trigdesc->triggers[i];

		if (tg->tgisinternal)
			return false;
		if (tg->tgenabled == TRIGGER_DISABLED)
			continue;
		if (tg->tgenabled != TRIGGER_FIRES_ON_ORIGIN ||
			SessionReplicationRole != SESSION_REPLICATION_ROLE_REPLICA)
			return false;
	}
	return true;
}

/*
 * es_rules_silent
 *		Whether none of rel's rules would be applied now (as es_triggers_
 *		silent says of triggers): each is disabled, or an ordinary one
 *		while session_replication_role is replica.
 */
static bool
es_rules_silent(Relation rel)
{
	if (rel->rd_rules == NULL)
		return true;
	for (int i = 0; i < rel->rd_rules->numLocks; i++)
	{
		char		enabled = rel->rd_rules->rules[i]->enabled;

		if (enabled != RULE_DISABLED &&
			(enabled != RULE_FIRES_ON_ORIGIN || SessionReplicationRole != SESSION_REPLICATION_ROLE_REPLICA))
			return false;
	}
	return true;
}

/*
 * es_write_usable
 *		Whether rows can go straight into rel: a plain table, not a
 *		partition (its constraint is not checked here), without triggers
 *		or rules that would fire (es_triggers_silent, es_rules_silent), row
 *		security or stored generated columns, in a transaction that may
 *		write.
 */
bool
es_write_usable(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	return rel->rd_rel->relkind == RELKIND_RELATION && !rel->rd_rel->relispartition &&
		es_triggers_silent(rel) && es_rules_silent(rel) && !rel->rd_rel->relrowsecurity &&
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
void
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
TupleTableSlot *
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
void
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
void
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

/* A column a direct run gives, as es_batch_direct converts it. */
typedef struct EsDirectCol
{
	AttrNumber	attnum;
	const char *name;
	EsValueInput in;			/* how its values are read */
	Oid			output;			/* its type's output function */
} EsDirectCol;

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
		slot->tts_values[dc[i].attnum - 1] = isnull ? (Datum) 0 : es_value_datum(&dc[i].in, &v);
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
es_direct_row(EsWrite *ins, EsUpdateKind kind, EsDirectCol *dc, int ncols, EsDirectCol *pk,
			  Jsonb *upd, EPQState *epq, TupleTableSlot **slots, char **deleted)
{
	JsonbValue	v;
	JsonbContainer *values = NULL;

	if (kind != ES_UPDATE_DELETE)
	{
		/* The values: data (a Create), or data.changed (an Update). */
		if (!getKeyJsonValueFromContainer(&upd->root, "data", 4, &v) || v.type != jbvBinary)
			elog(ERROR, "an update without its data");
		values = v.val.binary.data;
		if (kind == ES_UPDATE_UPDATE)
		{
			if (!getKeyJsonValueFromContainer(values, "changed", 7, &v) || v.type != jbvBinary)
				elog(ERROR, "an Update without its changes");
			values = v.val.binary.data;
		}
	}
	if (kind == ES_UPDATE_CREATE)
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
	slots[0]->tts_values[pk->attnum - 1] = es_value_datum(&pk->in, &v);
	slots[0]->tts_isnull[pk->attnum - 1] = false;
	ExecStoreVirtualTuple(slots[0]);
	if (!RelationFindReplTupleByIndex(ins->rel, RelationGetPrimaryKeyIndex(ins->rel), LockTupleExclusive,
									  slots[0], slots[1]))
		return false;
	if (kind == ES_UPDATE_DELETE)
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
 *		Fill c for column name of rel; false when rel has no such column.
 */
static bool
es_direct_col(Relation rel, const char *name, EsDirectCol *c)
{
	Form_pg_attribute att;
	bool		varlena;

	c->name = name;
	c->attnum = get_attnum(RelationGetRelid(rel), name);
	if (c->attnum <= 0)
		return false;
	att = TupleDescAttr(RelationGetDescr(rel), c->attnum - 1);
	es_value_input_init(&c->in, att->atttypid, att->atttypmod, CurrentMemoryContext);
	getTypeOutputInfo(att->atttypid, &c->output, &varlena);
	return true;
}

/*
 * es_batch_direct
 *		Apply updates first..last-1 of all -- a run of one kind for one
 *		table, as es_batch_key found -- straight into the table, as the
 *		subscriber, in a subtransaction of its own:
 *		Creates inserted together (EsWrite), Updates and Deletes each found
 *		by its key and applied the way PostgreSQL's logical replication
 *		applies a change (execReplication.c).  Only where that is exactly
 *		what the statements of es_apply_batch would do: the table is usable
 *		for it (es_write_usable), the subscriber has the privileges they
 *		need on the whole table, and the key of an Update or Delete is one
 *		column of a type whose text is its JSON text (an integer, text or
 *		uuid).  False, having done nothing, otherwise, or when anything fails
 *		(a row is there already, an Update's row is not, a value does not
 *		convert, a constraint): the statements take over, and report.  For
 *		a run of Deletes, deleted[k - first] gets the key of the row update
 *		k deleted (NULL: it was not here).
 */
bool
es_batch_direct(EsApply *a, List *all, int first, int last, EsUpdateKind kind, char **deleted)
{
	Jsonb	   *upd = list_nth(all, first);
	EsSub	   *sub = es_sub(a, es_field_text(upd, "ref_table"));
	EsTable    *t = es_table(sub->relid);
	Jsonb	   *data = es_field(upd, "data");
	List	   *cols = kind == ES_UPDATE_CREATE ? es_given_columns(t, data, false) :
		kind == ES_UPDATE_UPDATE ? es_given_columns(t, es_field(data, "changed"), true) : NIL;
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
	AclMode		need = kind == ES_UPDATE_CREATE ? ACL_INSERT :
		kind == ES_UPDATE_UPDATE ? ACL_UPDATE : ACL_DELETE;

	if (pg_class_aclcheck(sub->relid, a->subscriber, need) != ACLCHECK_OK ||
		(kind != ES_UPDATE_CREATE && pg_class_aclcheck(sub->relid, a->subscriber, ACL_SELECT) != ACLCHECK_OK))
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
	if (ok && kind != ES_UPDATE_CREATE)
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
		es_write_begin(&ins, rel,
					   kind == ES_UPDATE_CREATE ? CMD_INSERT :
					   kind == ES_UPDATE_UPDATE ? CMD_UPDATE : CMD_DELETE,
					   given, last - first);
		if (kind != ES_UPDATE_CREATE)
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
			else if (kind == ES_UPDATE_UPDATE)
				all_found = false;	/* the statements say why */
			else if (deleted)
				deleted[k - first] = NULL;
			ResetPerTupleExprContext(ins.estate);
		}
		if (kind != ES_UPDATE_CREATE)
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
