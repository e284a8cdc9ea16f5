/*-------------------------------------------------------------------------
 *
 * capture_args.c
 *	  Reading the capture trigger's arguments: which tables they name, and
 *	  which of their columns.
 *
 * eventstream._capture_args() (capture.sql) writes them with names only:
 *
 *	  document table:  'doc', 'name:<published name>', then per registered
 *		child table 'child:<its published name>', 'fk:<columns>';
 *	  child table:	   'child', 'name:<published name>',
 *		'parent:<the parent's published name>', 'fk:<columns>';
 *	  either, last:	   'key:<columns>'.
 *
 * Columns are quoted names separated by commas, a foreign key's in the
 * order of the parent's primary key columns.  A published name stands for
 * the table eventstream.published_table binds to it (eventstream._published),
 * so a renamed table is still found, and a restored dump captures as the
 * original did.  The form earlier versions wrote, with OIDs and attribute
 * numbers ('doc', '<child oid>:<attnums>', ...; 'child', '<parent oid>',
 * '<attnums>'), is still read, until _sync_capture() rewrites the trigger.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/capture_args.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "nodes/value.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/regproc.h"
#include "utils/syscache.h"
#include "utils/varlena.h"

#include "eventstream.h"
#include "producer/added.h"
#include "producer/capture_args.h"

static void es_invalid_args(Relation rel);
static Oid	es_published_relid(const char *ref_table);
static int	es_parse_attnums(const char *str, AttrNumber *out);

/*
 * es_invalid_args
 *		Complain about a capture trigger whose arguments make no sense.
 */
static void
es_invalid_args(Relation rel)
{
	ereport(ERROR,
			(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
			 errmsg("eventstream._capture: invalid trigger arguments on \"%s\"",
					RelationGetRelationName(rel)),
			 errhint("Capture triggers are managed by eventstream; do not create them by hand.")));
}

/*
 * es_published_relid
 *		The table a published name stands for, as eventstream._published()
 *		finds it: the table bound to the name in eventstream.published_table,
 *		else the table of that name unless it is bound to another name;
 *		InvalidOid when none.
 *
 * Read without SPI and without privilege checks: the trigger runs as
 * whoever writes to the table, who need not be allowed to read the
 * extension's tables.  The table is small (one row per published table).
 */
static Oid
es_published_relid(const char *ref_table)
{
	Oid			nsp = get_namespace_oid(EVENTSTREAM_SCHEMA, false);
	Oid			pubrel = get_relname_relid("published_table", nsp);
	Oid			byname;
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		bound = false;
	bool		byname_bound = false;
	Oid			relid = InvalidOid;

	byname = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(ref_table)),
							  NoLock, true);
	if (!OidIsValid(pubrel))
		return byname;

	rel = table_open(pubrel, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, NULL, 0, NULL);
	while ((tup = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		name = heap_getattr(tup, 1, RelationGetDescr(rel), &isnull);
		Datum		oid = heap_getattr(tup, 2, RelationGetDescr(rel), &isnull);

		if (strcmp(TextDatumGetCString(name), ref_table) == 0)
		{
			bound = true;
			relid = DatumGetObjectId(oid);
		}
		else if (OidIsValid(byname) && DatumGetObjectId(oid) == byname)
			byname_bound = true;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);

	if (bound)
		return SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)) ? relid : InvalidOid;
	return byname_bound ? InvalidOid : byname;
}

/*
 * es_has_function
 *		Whether the extension's SQL has function eventstream.name(argtype):
 *		the library may run under the SQL of an earlier version until ALTER
 *		EXTENSION UPDATE, and then resolves names as that version did.
 */
bool
es_has_function(const char *name, Oid argtype)
{
	Oid			argtypes[1] = {argtype};

	return OidIsValid(LookupFuncName(list_make2(makeString(EVENTSTREAM_SCHEMA),
												makeString(pstrdup(name))),
									 1, argtypes, true));
}

/*
 * es_parse_attnums
 *		Parse "3,1,2" into attribute numbers; returns how many.
 */
static int
es_parse_attnums(const char *str, AttrNumber *out)
{
	char	   *copy = pstrdup(str);
	char	   *tok;
	char	   *save = NULL;
	int			n = 0;

	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save))
	{
		if (n >= ES_MAX_KEYS)
			elog(ERROR, "too many key columns in capture trigger argument");
		out[n++] = (AttrNumber) pg_strtoint32(tok);
	}
	if (n == 0)
		elog(ERROR, "invalid capture trigger argument \"%s\"", str);
	return n;
}

/*
 * es_pk_attnums
 *		The primary key columns of rel in key order; errors if it has none.
 */
int
es_pk_attnums(Relation rel, AttrNumber *out)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	idx;
	int			i,
				n;

	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel)),
				 errhint("eventstream identifies documents by their primary key; add one.")));
	idx = index_open(pkoid, AccessShareLock);
	n = idx->rd_index->indnkeyatts;
	for (i = 0; i < n; i++)
		out[i] = idx->rd_index->indkey.values[i];
	index_close(idx, AccessShareLock);
	return n;
}

/*
 * es_named_attnums
 *		The columns of rel named in names (quoted names separated by
 *		commas), in order; 0 if any of them no longer exists.
 */
int
es_named_attnums(Relation rel, const char *names, AttrNumber *out)
{
	List	   *list;
	ListCell   *lc;
	int			n = 0;

	if (!SplitIdentifierString(pstrdup(names), ',', &list) || list == NIL ||
		list_length(list) > ES_MAX_KEYS)
		elog(ERROR, "invalid capture trigger argument \"%s\"", names);
	foreach(lc, list)
	{
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), lfirst(lc));

		if (attnum <= 0)
			return 0;
		out[n++] = attnum;
	}
	return n;
}

/*
 * es_arg_fk
 *		The foreign key columns table names, as columns of rel (the child
 *		table, or the partition of it the trigger fired on); returns how
 *		many.
 */
int
es_arg_fk(Relation rel, const EsArgTable *table, AttrNumber *out)
{
	int			n;

	if (table->fk_names == NULL)
		return es_parse_attnums(table->fk_attnums, out);
	n = es_named_attnums(rel, table->fk_names, out);
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no column of the foreign key its capture trigger names",
						RelationGetRelationName(rel)),
				 errdetail("The capture trigger names the columns %s.", table->fk_names),
				 errhint("Run SELECT eventstream._sync_capture(); to bring the capture triggers up to date.")));
	return n;
}

/*
 * es_capture_args_read
 *		Read the arguments of capture trigger trig on rel into args,
 *		allocated in the current memory context.
 */
void
es_capture_args_read(Trigger *trig, Relation rel, EsCaptureArgs *args)
{
	char	  **a = trig->tgargs;
	int			nargs = trig->tgnargs;
	int			i;

	memset(args, 0, sizeof(EsCaptureArgs));
	if (nargs > 1 && strncmp(a[nargs - 1], "key:", 4) == 0)
		args->keyarg = pstrdup(a[--nargs] + 4);
	nargs = es_added_strip_arg(a, nargs, &args->addedarg);
	if (nargs < 1 || (strcmp(a[0], "doc") != 0 && strcmp(a[0], "child") != 0))
		es_invalid_args(rel);
	args->is_child = (strcmp(a[0], "child") == 0);

	if (nargs >= 2 && strncmp(a[1], "name:", 5) == 0)
	{
		args->ref_table = pstrdup(a[1] + 5);
		if (args->is_child)
		{
			if (nargs != 4 || strncmp(a[2], "parent:", 7) != 0 ||
				strncmp(a[3], "fk:", 3) != 0)
				es_invalid_args(rel);
			args->parent.ref_table = pstrdup(a[2] + 7);
			args->parent.relid = es_published_relid(args->parent.ref_table);
			args->parent.fk_names = pstrdup(a[3] + 3);
			return;
		}
		if ((nargs - 2) % 2 != 0)
			es_invalid_args(rel);
		args->children = palloc0(sizeof(EsArgTable) * Max((nargs - 2) / 2, 1));
		for (i = 2; i < nargs; i += 2)
		{
			EsArgTable *c = &args->children[args->nchildren++];

			if (strncmp(a[i], "child:", 6) != 0 || strncmp(a[i + 1], "fk:", 3) != 0)
				es_invalid_args(rel);
			c->ref_table = pstrdup(a[i] + 6);
			c->relid = es_published_relid(c->ref_table);
			c->fk_names = pstrdup(a[i + 1] + 3);
		}
		return;
	}

	/* The OID form. */
	if (args->is_child)
	{
		if (nargs != 3)
			es_invalid_args(rel);
		args->parent.relid = (Oid) strtoul(a[1], NULL, 10);
		args->parent.fk_attnums = pstrdup(a[2]);
		return;
	}
	args->children = palloc0(sizeof(EsArgTable) * Max(nargs - 1, 1));
	for (i = 1; i < nargs; i++)
	{
		EsArgTable *c = &args->children[args->nchildren++];
		char	   *arg = pstrdup(a[i]);
		char	   *colon = strchr(arg, ':');

		if (colon == NULL)
			es_invalid_args(rel);
		*colon = '\0';
		c->relid = (Oid) strtoul(arg, NULL, 10);
		c->fk_attnums = colon + 1;
	}
}
