/*-------------------------------------------------------------------------
 *
 * apply_fk.c
 *	  The foreign keys the apply enforces itself.
 *
 * The apply writes with session_replication_role = replica (apply.c,
 * es_apply_replica), as logical replication does, so that the consumer's
 * triggers fire as they would on a subscriber (where no trigger or rule
 * could tell, it leaves the role as it is: then foreign keys are enforced
 * by their own triggers and nothing here runs).  The triggers that enforce
 * foreign keys do not fire under the replica role either, but the apply
 * keeps foreign keys enforced: an update that refers to a row that is not here fails (and is
 * resyncable), and a document deleted takes the rows referring to it
 * along (its child rows are not logged by the producer: they go with
 * their parent through the key's ON DELETE CASCADE).  So, for each row the
 * statements write, es_fk_check runs the checks of the table's own keys,
 * and es_fk_deleted the ON DELETE actions of the keys referring to it,
 * with the statements eventstream._apply_fks() makes, each as the owner of
 * the table it reads or writes, as PostgreSQL's own checks do.  The rows a
 * CASCADE deletes have their own referring rows followed in turn.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_fk.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"

#include "consumer/apply.h"

/* The foreign keys of relid as _apply_fks makes them. */
static Jsonb *
es_fk_keys(Oid relid)
{
	char		arg[64];

	snprintf(arg, sizeof(arg), "{\"r\": %u}", relid);
	return es_run(InvalidOid, "SELECT eventstream._apply_fks(($1->>'r')::oid::regclass)", es_jsonb_parse(arg));
}

/*
 * es_fk_load
 *		Fill t's foreign keys (t->fk_out, t->fk_in: JSON arrays as
 *		_apply_fks makes them, NULL when empty) once, in the memory of the
 *		table cache (where t's strings are).  The caller is connected to
 *		SPI.
 */
static void
es_fk_load(EsTable *t)
{
	MemoryContext cache = GetMemoryChunkContext(t->qualname);
	Jsonb	   *fks;
	MemoryContext old;

	if (t->fk_loaded)
		return;
	old = MemoryContextSwitchTo(cache);
	fks = es_fk_keys(t->relid);
	/* (SPI leaves its own memory current) */
	MemoryContextSwitchTo(cache);
	t->fk_out = es_elements(es_field(fks, "out")) != NIL ? es_field(fks, "out") : NULL;
	t->fk_in = es_elements(es_field(fks, "in")) != NIL ? es_field(fks, "in") : NULL;
	MemoryContextSwitchTo(old);
	t->fk_loaded = true;
}

/*
 * es_fk_has
 *		Whether the apply enforces foreign keys of t itself -- those of its
 *		own (referring), or keys of other tables referring to it
 *		(!referring): when it runs with session_replication_role = replica
 *		(otherwise their triggers do) and t has some.  The caller is
 *		connected to SPI.
 */
bool
es_fk_has(EsTable *t, bool referring)
{
	if (SessionReplicationRole != SESSION_REPLICATION_ROLE_REPLICA)
		return false;
	es_fk_load(t);
	return (referring ? t->fk_out : t->fk_in) != NULL;
}

/* The role a key's statement runs as: the owner named in key. */
static Oid
es_fk_owner(Jsonb *key)
{
	return DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(key, "owner"))));
}

/* "Key (a, b)=(1, x)" of the columns cols of row, for an error's detail. */
static char *
es_fk_key_text(Jsonb *cols, Jsonb *row)
{
	StringInfoData names;
	StringInfoData values;
	ListCell   *lc;

	initStringInfo(&names);
	initStringInfo(&values);
	foreach(lc, es_elements(cols))
	{
		char	   *col = es_scalar_text(lfirst(lc));
		char	   *v = es_field_text(row, col);

		appendStringInfo(&names, "%s%s", foreach_current_index(lc) > 0 ? ", " : "", col);
		appendStringInfo(&values, "%s%s", foreach_current_index(lc) > 0 ? ", " : "", v ? v : "null");
	}
	return psprintf("Key (%s)=(%s)", names.data, values.data);
}

/*
 * es_fk_check_keys
 *		Raise, as PostgreSQL's foreign key check does, when row (as stored
 *		in relid) refers through one of keys (relid's own) to a row that is
 *		not there; the row referred to is locked FOR KEY SHARE.
 */
static void
es_fk_check_keys(Oid relid, Jsonb *keys, Jsonb *row)
{
	ListCell   *lc;

	foreach(lc, es_elements(keys))
	{
		Jsonb	   *key = lfirst(lc);
		Jsonb	   *res = es_run(es_fk_owner(key), es_field_text(key, "sql"), row);

		if (res == NULL || strcmp(es_field_text(res, "ok"), "true") != 0)
			ereport(ERROR,
					(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
					 errmsg("insert or update on table \"%s\" violates foreign key constraint \"%s\"",
							get_rel_name(relid), es_field_text(key, "name")),
					 errdetail("%s is not present in table \"%s\".",
							   es_fk_key_text(es_field(key, "cols"), row), es_field_text(key, "relname"))));
	}
}

/*
 * es_fk_deleted_keys
 *		Row (as it was) was deleted from relid: do the ON DELETE action of
 *		each of keys (of other tables, referring to relid) as PostgreSQL
 *		does: NO ACTION and RESTRICT raise if a row still refers to it;
 *		CASCADE deletes the rows that do, and follows what refers to those
 *		in turn; SET NULL and SET DEFAULT set their columns, the defaults
 *		checked against their key.
 */
static void
es_fk_deleted_keys(Oid relid, Jsonb *keys, Jsonb *row)
{
	ListCell   *lc;

	check_stack_depth();
	foreach(lc, es_elements(keys))
	{
		Jsonb	   *key = lfirst(lc);
		char	   *action = es_field_text(key, "action");
		Jsonb	   *res = es_run(es_fk_owner(key), es_field_text(key, "sql"), row);
		List	   *rows = res ? es_elements(es_field(res, "rows")) : NIL;
		Oid			referring;
		Jsonb	   *theirs;
		ListCell   *rc;

		if (strcmp(action, "a") == 0 || strcmp(action, "r") == 0)
		{
			if (res != NULL && strcmp(es_field_text(res, "n"), "0") != 0)
				ereport(ERROR,
						(errcode(ERRCODE_FOREIGN_KEY_VIOLATION),
						 errmsg("update or delete on table \"%s\" violates foreign key constraint \"%s\" on table \"%s\"",
								get_rel_name(relid), es_field_text(key, "name"), es_field_text(key, "relname")),
						 errdetail("%s is still referenced from table \"%s\".",
								   es_fk_key_text(es_field(key, "cols"), row), es_field_text(key, "relname"))));
			continue;
		}
		if (rows == NIL)
			continue;
		referring = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(key, "relid"))));
		theirs = es_fk_keys(referring);
		foreach(rc, rows)
		{
			if (strcmp(action, "c") == 0)
				es_fk_deleted_keys(referring, es_field(theirs, "in"), lfirst(rc));
			else
				es_fk_check_keys(referring, es_field(theirs, "out"), lfirst(rc));
		}
	}
}

/*
 * es_fk_conds
 *		When the apply enforces t's own foreign keys (es_fk_has), the
 *		condition that a row of t, aliased r, satisfies them all, for a
 *		statement checking many rows at once; NULL otherwise.  The caller is
 *		connected to SPI.
 */
char *
es_fk_conds(EsTable *t)
{
	StringInfoData buf;
	ListCell   *lc;

	if (!es_fk_has(t, true))
		return NULL;
	initStringInfo(&buf);
	foreach(lc, es_elements(t->fk_out))
		appendStringInfo(&buf, "%s%s", buf.len > 0 ? " AND " : "", es_field_text(lfirst(lc), "cond"));
	return buf.data;
}

/*
 * es_fk_check
 *		es_fk_check_keys for a row the apply wrote into t (as stored).  The
 *		caller is connected to SPI.
 */
void
es_fk_check(EsTable *t, Jsonb *row)
{
	if (row != NULL && es_fk_has(t, true))
		es_fk_check_keys(t->relid, t->fk_out, row);
}

/*
 * es_fk_deleted
 *		es_fk_deleted_keys for a row the apply deleted from t (as it was).
 *		The caller is connected to SPI.
 */
void
es_fk_deleted(EsTable *t, Jsonb *row)
{
	if (row != NULL && es_fk_has(t, false))
		es_fk_deleted_keys(t->relid, t->fk_in, row);
}
