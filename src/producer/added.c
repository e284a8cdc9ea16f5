/*-------------------------------------------------------------------------
 *
 * added.c
 *	  Producer side: columns added to a captured table after its capture
 *	  began travel in every Update's diff.
 *
 * An Update is logged as the diff of the old and the new row (capture.c):
 * a column whose old and new values are equal does not travel.  A column
 * added to a captured table takes NULL (or its default) in every row
 * without any row being updated, so a consumer's value of that column --
 * the value a column of that name had before it was dropped and added
 * again, or the consumer's own default -- would stay until that very
 * column changes.  Such columns are therefore sent with every Update of a
 * row (at its next change), as logical replication sends whole rows.
 *
 * The capture trigger names them in an argument of its own, just before
 * 'key:': 'added:<column>[,<column>...]', quoted names as quote_ident()
 * writes them.  The ALTER TABLE event trigger eventstream._on_add_column()
 * extends it with the columns each ALTER TABLE ... ADD COLUMN adds, and
 * follows their RENAME COLUMN (_ddl_added_columns reads them from the
 * command); _sync_capture() carries it over while the columns exist
 * (_capture_added_arg).  Columns
 * that exist when the trigger is made are not in it: they travel as
 * before, when they change.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/added.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "funcapi.h"
#include "nodes/parsenodes.h"
#include "tcop/deparse_utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/varlena.h"

#include "producer/added.h"

PG_FUNCTION_INFO_V1(eventstream_ddl_added_columns);
PG_FUNCTION_INFO_V1(eventstream_capture_added_arg);
PG_FUNCTION_INFO_V1(eventstream_trigger_args);

/*
 * es_added_strip_arg
 *		Of a capture trigger's arguments (the first nargs of args, a 'key:'
 *		one already taken off), take off the 'added:' one if it is last:
 *		*names gets its column list (NULL when there is none).  Returns the
 *		number of arguments left.
 */
int
es_added_strip_arg(char **args, int nargs, const char **names)
{
	*names = NULL;
	if (nargs > 1 && strncmp(args[nargs - 1], ES_ADDED_PREFIX, strlen(ES_ADDED_PREFIX)) == 0)
	{
		*names = args[nargs - 1] + strlen(ES_ADDED_PREFIX);
		return nargs - 1;
	}
	return nargs;
}

/*
 * es_added_mark
 *		Note in enc which of its columns names lists (an 'added:' argument's
 *		list); names of columns no longer there, and key columns, which
 *		always travel, are skipped.  Allocates in the current memory
 *		context, the encoder's.
 */
void
es_added_mark(EsEncoder *enc, const char *names)
{
	char	   *copy = pstrdup(names);
	List	   *list;
	ListCell   *lc;

	if (!SplitIdentifierString(copy, ',', &list))
		elog(ERROR, "invalid capture trigger argument \"%s%s\"", ES_ADDED_PREFIX, names);
	enc->added = palloc(sizeof(int) * Max(list_length(list), 1));
	enc->nadded = 0;
	foreach(lc, list)
	{
		for (int i = 0; i < enc->ncolumns; i++)
		{
			bool		key = false;

			if (strcmp(enc->columns[i].name, lfirst(lc)) != 0)
				continue;
			for (int k = 0; k < enc->npk; k++)
				key = key || enc->pk[k] == i;
			if (!key)
				enc->added[enc->nadded++] = i;
			break;
		}
	}
}

/*
 * es_added_append
 *		An Update's changed columns (the n indexes in out, which has room
 *		for every column) with the added columns that are not among them.
 *		Returns the new count.
 */
int
es_added_append(EsEncoder *enc, int *out, int n)
{
	int			have = n;

	for (int a = 0; a < enc->nadded; a++)
	{
		bool		found = false;

		for (int i = 0; i < have && !found; i++)
			found = out[i] == enc->added[a];
		if (!found)
			out[n++] = enc->added[a];
	}
	return n;
}

/*
 * es_put_column
 *		One row of _ddl_added_columns.
 */
static void
es_put_column(ReturnSetInfo *rsinfo, Oid relid, const char *attname, const char *renamed_from)
{
	Datum		values[3];
	bool		nulls[3] = {false, false, renamed_from == NULL};
	NameData	name;
	NameData	from;

	namestrcpy(&name, attname);
	values[0] = ObjectIdGetDatum(relid);
	values[1] = NameGetDatum(&name);
	if (renamed_from)
	{
		namestrcpy(&from, renamed_from);
		values[2] = NameGetDatum(&from);
	}
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * eventstream_ddl_added_columns
 *		_ddl_added_columns(command pg_ddl_command) -> SETOF (relid oid,
 *		attname name, renamed_from name): the columns an ALTER TABLE
 *		command (a row of pg_event_trigger_ddl_commands(), at
 *		ddl_command_end) added, each with the table it added it to
 *		(renamed_from NULL); or the column it renamed, with its former
 *		name.  The children an ADD COLUMN or RENAME COLUMN recursed into
 *		are not listed: theirs has the same name.
 */
Datum
eventstream_ddl_added_columns(PG_FUNCTION_ARGS)
{
	CollectedCommand *cmd = (CollectedCommand *) PG_GETARG_POINTER(0);
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ListCell   *lc;

	InitMaterializedSRF(fcinfo, 0);
	if (cmd->type == SCT_Simple && cmd->parsetree != NULL && IsA(cmd->parsetree, RenameStmt))
	{
		RenameStmt *rs = (RenameStmt *) cmd->parsetree;

		if (rs->renameType == OBJECT_COLUMN && cmd->d.simple.address.classId == RelationRelationId &&
			cmd->d.simple.address.objectSubId > 0)
			es_put_column(rsinfo, cmd->d.simple.address.objectId, rs->newname, rs->subname);
		PG_RETURN_VOID();
	}
	if (cmd->type != SCT_AlterTable)
		PG_RETURN_VOID();
	foreach(lc, cmd->d.alterTable.subcmds)
	{
		CollectedATSubcmd *sub = lfirst(lc);
		AlterTableCmd *atc = (AlterTableCmd *) sub->parsetree;
		char	   *attname;

		if (!IsA(atc, AlterTableCmd) ||
			(atc->subtype != AT_AddColumn && atc->subtype != AT_AddColumnRecurse) ||
			sub->address.classId != RelationRelationId || sub->address.objectSubId <= 0)
			continue;			/* another subcommand, or ADD COLUMN IF NOT EXISTS of one there */
		attname = get_attname(sub->address.objectId, sub->address.objectSubId, true);
		if (attname != NULL)
			es_put_column(rsinfo, sub->address.objectId, attname, NULL);
	}
	PG_RETURN_VOID();
}

/*
 * es_tgargs
 *		The arguments in a pg_trigger.tgargs value: each followed by a zero
 *		byte.
 */
static List *
es_tgargs(bytea *args)
{
	List	   *list = NIL;
	char	   *p = VARDATA_ANY(args);
	char	   *end = p + VARSIZE_ANY_EXHDR(args);

	while (p < end)
	{
		char	   *z = memchr(p, '\0', end - p);

		if (z == NULL)
			z = end;
		list = lappend(list, pnstrdup(p, z - p));
		p = z + 1;
	}
	return list;
}

/*
 * eventstream_trigger_args
 *		_trigger_args(tgargs bytea) -> text[]: a trigger's arguments.
 */
Datum
eventstream_trigger_args(PG_FUNCTION_ARGS)
{
	List	   *list = es_tgargs(PG_GETARG_BYTEA_PP(0));
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(list), 1));
	ListCell   *lc;

	foreach(lc, list)
		elems[foreach_current_index(lc)] = CStringGetTextDatum(lfirst(lc));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, list_length(list), TEXTOID, -1, false, TYPALIGN_INT));
}

/*
 * es_name_array
 *		The elements of a name[] argument (NULL elements as NULL).
 */
static char **
es_name_array(ArrayType *arr, int *n)
{
	Datum	   *elems;
	bool	   *nulls;
	char	  **out;

	deconstruct_array(arr, NAMEOID, NAMEDATALEN, false, TYPALIGN_CHAR, &elems, &nulls, n);
	out = palloc(sizeof(char *) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = nulls[i] ? NULL : pstrdup(NameStr(*DatumGetName(elems[i])));
	return out;
}

/*
 * eventstream_capture_added_arg
 *		_capture_added_arg(tbl regclass, old_args bytea, new_names name[],
 *		renamed_from name[]) -> text[]: the 'added:' argument of tbl's
 *		capture trigger, as an array of one element (none when it names no
 *		column): the columns its trigger's arguments old_args name, then
 *		new_names -- each one added, or renamed from the name renamed_from
 *		gives at the same place when that one is named -- those of them
 *		that tbl has, each once.
 */
Datum
eventstream_capture_added_arg(PG_FUNCTION_ARGS)
{
	Oid			tbl = PG_GETARG_OID(0);
	List	   *names = NIL;
	List	   *keep = NIL;
	ListCell   *lc;
	StringInfoData arg;
	Datum		elem;

	if (!PG_ARGISNULL(1))
		foreach(lc, es_tgargs(PG_GETARG_BYTEA_PP(1)))
		{
			char	   *a = lfirst(lc);
			List	   *list;

			if (strncmp(a, ES_ADDED_PREFIX, strlen(ES_ADDED_PREFIX)) == 0 &&
				SplitIdentifierString(pstrdup(a + strlen(ES_ADDED_PREFIX)), ',', &list))
				names = list_concat(names, list);
		}
	if (!PG_ARGISNULL(2))
	{
		int			n;
		int			nfrom = 0;
		char	  **added = es_name_array(PG_GETARG_ARRAYTYPE_P(2), &n);
		char	  **from = PG_NARGS() > 3 && !PG_ARGISNULL(3) ?
			es_name_array(PG_GETARG_ARRAYTYPE_P(3), &nfrom) : NULL;
		List	   *named = list_copy(names);

		for (int i = 0; i < n; i++)
		{
			bool		take = added[i] != NULL;

			if (take && i < nfrom && from[i] != NULL)
			{
				/* A rename: of a column named already? */
				take = false;
				foreach(lc, named)
					take = take || strcmp(lfirst(lc), from[i]) == 0;
			}
			if (take)
				names = lappend(names, added[i]);
		}
	}
	foreach(lc, names)
	{
		ListCell   *k;
		bool		dup = false;

		foreach(k, keep)
			dup = dup || strcmp(lfirst(k), lfirst(lc)) == 0;
		if (!dup && get_attnum(tbl, lfirst(lc)) > 0)
			keep = lappend(keep, lfirst(lc));
	}
	if (keep == NIL)
		PG_RETURN_ARRAYTYPE_P(construct_empty_array(TEXTOID));
	initStringInfo(&arg);
	appendStringInfoString(&arg, ES_ADDED_PREFIX);
	foreach(lc, keep)
		appendStringInfo(&arg, "%s%s", foreach_current_index(lc) > 0 ? "," : "", quote_identifier(lfirst(lc)));
	elem = CStringGetTextDatum(arg.data);
	PG_RETURN_ARRAYTYPE_P(construct_array(&elem, 1, TEXTOID, -1, false, TYPALIGN_INT));
}
