/*-------------------------------------------------------------------------
 *
 * capture.c
 *	  The capture trigger: records Create / Update / Delete of subscribed
 *	  documents into eventstream.update_log, in the changing transaction.
 *
 * eventstream._capture() is an AFTER ROW trigger installed by
 * eventstream._sync_capture() on every table that some consumer has an
 * Approved, not unsubscribed subscription to (a "document table"), and on the
 * child tables registered for it.  Its arguments (capture_args.c) name the
 * table, its parent or its child tables by their published names and their
 * key and foreign key columns by name, so that they hold across renames and
 * through a dump and restore.  On a partitioned table the trigger is on
 * every partition too, attached or created later included: a change of any
 * partition is logged under the partitioned table's name, as
 * publish_via_partition_root does for logical replication.  The key
 * argument names the table's primary key columns as of the last
 * _sync_capture() that saw the table with a primary key; an 'added:'
 * argument before it names the columns added since capture began, which
 * travel with every Update (added.c).
 *
 * What gets logged (data is jsonb, see rowjson.c for value rendering):
 *	  INSERT on a document table  Create, the row plus one array per child
 *								  table (keyed by the child's published name)
 *	  UPDATE on a document table  Update with the four-key diff, only the
 *								  changed columns in "changed"; nothing when
 *								  no column changed (typed comparison); a
 *								  changed primary key is Delete + Create
 *	  DELETE on a document table  Delete, data NULL
 *	  child INSERT/UPDATE/DELETE  Update of the parent document with
 *								  "added" / "row_changed" / "removed"; a
 *								  child row deleted because its parent is
 *								  gone (cascade) logs nothing
 *
 * A table whose primary key was dropped while it is subscribed keeps being
 * captured as before, its documents (or child rows) named by the columns
 * of the key argument, as long as they all still exist; the application's
 * transaction gets one WARNING per table and transaction (also in the
 * server log), and consumer_status counts the subscription in
 * tables_without_key until the key is back.  When even those columns are
 * gone, or the table is a child whose parent lost its key, nothing names
 * the document: the change is not logged, and not refused either, again
 * with one WARNING per table and transaction.
 *
 * The hot path (a document table without children) runs no SPI and no
 * planner: the log tuple is formed directly and inserted with
 * simple_heap_insert() plus index_insert() on the log's indexes, whose
 * descriptors are cached per backend.  The caches are dropped by a relcache
 * invalidation callback, so DDL on a captured table or on the log (and DROP
 * EXTENSION) is picked up by the next row.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/capture.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "nodes/execnodes.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/varlena.h"
#include "utils/xid8.h"

#include "eventstream.h"
#include "producer/added.h"
#include "producer/capture_args.h"
#include "producer/logids.h"
#include "producer/rowjson.h"

PG_FUNCTION_INFO_V1(eventstream_capture);

/* Columns of eventstream.update_log, in order. */
enum
{
	LOG_ID,
	LOG_UPDATE_TYPE,
	LOG_REF_TABLE,
	LOG_DOCNAME,
	LOG_DATA,
	LOG_TXID,
	LOG_ORIGIN,
	LOG_CREATED_AT,
	LOG_NATTS
};

/* Cached description of eventstream.update_log and its indexes. */
typedef struct EsLogTable
{
	bool		valid;
	Oid			relid;
	Oid			seqid;
	int			nindexes;
	Oid		   *indexoids;
	IndexInfo **indexinfos;
	bool	   *check_unique;	/* probe for duplicates on insert */
} EsLogTable;

/* A child table as seen from its parent's trigger. */
typedef struct EsChild
{
	Oid			relid;
	char	   *ref_table;		/* wire name, the key in the parent's Create */
	int			nfk;
	AttrNumber	fk[ES_MAX_KEYS];	/* child FK columns in parent key order */
	char	   *rows_sql;		/* SELECT * FROM child WHERE fk = $n */
	Oid			argtypes[ES_MAX_KEYS];	/* parent key types */
	SPIPlanPtr	rows_plan;		/* rows_sql, prepared on first use */
	EsEncoder  *enc;			/* for the plan's result rows, built lazily */
} EsChild;

/* Per-trigger cache entry, keyed by trigger OID. */
typedef struct EsTrigger
{
	Oid			tgoid;			/* hash key */
	bool		valid;
	Oid			relid;
	char	   *ref_table;
	text	   *ref_table_text;	/* ref_table as a text datum */
	EsEncoder  *enc;			/* for this table's rows, with its primary key */
	bool		is_child;
	char	   *nokey_table;	/* set: this table lacks its primary key */
	bool		nokey_logged;	/* ... and is logged by its former key */
	LocalTransactionId warned_lxid; /* transaction last warned about it */
	/* document table */
	int			nchildren;
	EsChild    *children;
	/* child table */
	Oid			parent_relid;
	char	   *parent_ref_table;
	text	   *parent_ref_table_text;
	int			nfk;
	int			fkcol[ES_MAX_KEYS]; /* indexes into enc->columns */
	char	   *parent_sql;		/* SELECT 1 FROM parent WHERE pk = $n */
	Oid			parent_argtypes[ES_MAX_KEYS];
	SPIPlanPtr	parent_plan;	/* parent_sql, prepared on first use */
	MemoryContext cxt;			/* owns everything above */
} EsTrigger;

static HTAB *es_triggers = NULL;
static EsLogTable es_log = {false};
static MemoryContext es_capture_cxt = NULL;

static void es_capture_init(void);
static void es_relcache_callback(Datum arg, Oid relid);
static void es_namespace_callback(Datum arg, int cacheid, uint32 hashvalue);
static void es_log_table_load(void);
static EsTrigger *es_trigger_lookup(TriggerData *trigdata);
static void es_trigger_build(EsTrigger *entry, TriggerData *trigdata);
static char *es_key_condition(Relation rel, const AttrNumber *attnums, int n);
static void es_log_insert(const char *update_type, text *ref_table,
						  const char *docname, Jsonb *data);
static void es_capture_doc(EsTrigger *t, TriggerData *trigdata);
static void es_capture_child(EsTrigger *t, TriggerData *trigdata);
static Jsonb *es_document(EsTrigger *t, HeapTuple tuple, TupleDesc tupdesc);
static bool es_parent_exists(EsTrigger *t, HeapTuple tuple, TupleDesc tupdesc);
static bool es_keys_equal(EsEncoder *enc, const int *colidx, int n,
						  HeapTuple a, HeapTuple b, TupleDesc tupdesc);

/*
 * es_capture_init
 *		Create the backend's capture caches on first use.
 */
static void
es_capture_init(void)
{
	HASHCTL		ctl;

	if (es_triggers != NULL)
		return;
	es_capture_cxt = AllocSetContextCreate(CacheMemoryContext,
										   "eventstream capture cache",
										   ALLOCSET_DEFAULT_SIZES);
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(EsTrigger);
	ctl.hcxt = es_capture_cxt;
	es_triggers = hash_create("eventstream triggers", 16, &ctl,
							  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	CacheRegisterRelcacheCallback(es_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(NAMESPACEOID, es_namespace_callback, (Datum) 0);
}

/*
 * es_namespace_callback
 *		A schema changed (ALTER SCHEMA ... RENAME): the queries cached for
 *		child and parent rows name tables by schema, so rebuild every entry.
 */
static void
es_namespace_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	HASH_SEQ_STATUS status;
	EsTrigger  *t;

	hash_seq_init(&status, es_triggers);
	while ((t = hash_seq_search(&status)) != NULL)
		t->valid = false;
}

/*
 * es_relcache_callback
 *		Drop cached state that depends on relation relid (all on InvalidOid).
 *
 * Runs inside invalidation processing: it must not do catalog access or
 * error out, so it only marks entries invalid; they are rebuilt on use.
 */
static void
es_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	EsTrigger  *t;
	int			i;

	if (!OidIsValid(relid) || relid == es_log.relid)
		es_log.valid = false;
	for (i = 0; es_log.valid && i < es_log.nindexes; i++)
		if (es_log.indexoids[i] == relid)
			es_log.valid = false;

	hash_seq_init(&status, es_triggers);
	while ((t = hash_seq_search(&status)) != NULL)
	{
		bool		hit = !OidIsValid(relid) || t->relid == relid ||
			t->parent_relid == relid;

		for (i = 0; !hit && i < t->nchildren; i++)
			hit = (t->children[i].relid == relid);
		if (hit)
			t->valid = false;
	}
}

/*
 * es_log_table_load
 *		(Re)load the cached OIDs and IndexInfos of eventstream.update_log.
 *
 * Only plain column indexes are supported: the log is written without an
 * executor, so expression and partial indexes cannot be maintained.
 */
static void
es_log_table_load(void)
{
	Oid			nsp;
	Relation	rel;
	List	   *indexes;
	ListCell   *lc;
	MemoryContext oldcxt;
	int			i = 0;

	nsp = get_namespace_oid(EVENTSTREAM_SCHEMA, false);
	es_log.relid = get_relname_relid(EVENTSTREAM_LOG_TABLE, nsp);
	es_log.seqid = get_relname_relid("update_log_id_seq", nsp);
	if (!OidIsValid(es_log.relid) || !OidIsValid(es_log.seqid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream.update_log does not exist"),
				 errhint("Reinstall the extension with DROP EXTENSION eventstream CASCADE; CREATE EXTENSION eventstream.")));

	rel = table_open(es_log.relid, AccessShareLock);
	if (RelationGetDescr(rel)->natts != LOG_NATTS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("eventstream.update_log has an unexpected definition"),
				 errdetail("Expected %d columns, found %d.", LOG_NATTS,
						   RelationGetDescr(rel)->natts)));
	indexes = RelationGetIndexList(rel);

	if (es_log.indexoids)
		pfree(es_log.indexoids);
	if (es_log.indexinfos)
	{
		for (i = 0; i < es_log.nindexes; i++)
			if (es_log.indexinfos[i])
				pfree(es_log.indexinfos[i]);
		pfree(es_log.indexinfos);
		pfree(es_log.check_unique);
	}
	oldcxt = MemoryContextSwitchTo(es_capture_cxt);
	es_log.nindexes = list_length(indexes);
	es_log.indexoids = palloc(sizeof(Oid) * Max(es_log.nindexes, 1));
	/* zeroed: an error below leaves entries a reload must not free */
	es_log.indexinfos = palloc0(sizeof(IndexInfo *) * Max(es_log.nindexes, 1));
	es_log.check_unique = palloc0(sizeof(bool) * Max(es_log.nindexes, 1));
	i = 0;
	foreach(lc, indexes)
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		IndexInfo  *ii = BuildIndexInfo(idx);

		if (ii->ii_Expressions != NIL || ii->ii_Predicate != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("eventstream.update_log cannot have expression or partial indexes"),
					 errdetail("Index \"%s\" is one.", RelationGetRelationName(idx)),
					 errhint("Drop that index; the capture trigger maintains only plain column indexes.")));
		es_log.indexoids[i] = lfirst_oid(lc);
		es_log.indexinfos[i] = ii;
		/* ids are unique by construction (es_next_log_id): no probe there */
		es_log.check_unique[i] = ii->ii_Unique &&
			!(ii->ii_NumIndexAttrs == 1 && ii->ii_IndexAttrNumbers[0] == LOG_ID + 1);
		i++;
		index_close(idx, AccessShareLock);
	}
	MemoryContextSwitchTo(oldcxt);
	list_free(indexes);
	table_close(rel, AccessShareLock);
	es_log.valid = true;
}

/*
 * es_update_type_text
 *		The update_type value as text, built once per backend.
 */
static text *
es_update_type_text(const char *update_type)
{
	static text *values[3] = {NULL, NULL, NULL};
	int			i = (update_type[0] == 'C') ? 0 : (update_type[0] == 'U') ? 1 : 2;

	if (values[i] == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		values[i] = cstring_to_text(update_type);
		MemoryContextSwitchTo(oldcxt);
	}
	return values[i];
}

/*
 * es_log_insert
 *		Append one row to eventstream.update_log in the current transaction.
 *
 * update_type is "Create", "Update" or "Delete"; ref_table is the wire
 * name as text (prebuilt per trigger); data may be NULL (Delete).
 */
static void
es_log_insert(const char *update_type, text *ref_table,
			  const char *docname, Jsonb *data)
{
	Datum		values[LOG_NATTS];
	bool		nulls[LOG_NATTS];
	Relation	rel;
	HeapTuple	tup;
	int			i;

	if (!es_log.valid)
		es_log_table_load();

	memset(nulls, 0, sizeof(nulls));
	values[LOG_ID] = Int64GetDatum(es_next_log_id(es_log.seqid));
	values[LOG_UPDATE_TYPE] = PointerGetDatum(es_update_type_text(update_type));
	values[LOG_REF_TABLE] = PointerGetDatum(ref_table);
	values[LOG_DOCNAME] = CStringGetTextDatum(docname);
	if (data)
		values[LOG_DATA] = JsonbPGetDatum(data);
	else
		nulls[LOG_DATA] = true;
	values[LOG_TXID] = FullTransactionIdGetDatum(GetTopFullTransactionId());
	if (es_apply_origin_set)
		values[LOG_ORIGIN] = UUIDPGetDatum(&es_apply_origin);
	else
		nulls[LOG_ORIGIN] = true;
	values[LOG_CREATED_AT] = TimestampTzGetDatum(GetCurrentTransactionStartTimestamp());

	rel = table_open(es_log.relid, RowExclusiveLock);
	tup = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tup);

	for (i = 0; i < es_log.nindexes; i++)
	{
		IndexInfo  *ii = es_log.indexinfos[i];
		Relation	idx = index_open(es_log.indexoids[i], RowExclusiveLock);
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		int			k;

		for (k = 0; k < ii->ii_NumIndexAttrs; k++)
		{
			int			a = ii->ii_IndexAttrNumbers[k] - 1;

			ivalues[k] = values[a];
			inulls[k] = nulls[a];
		}
		index_insert(idx, ivalues, inulls, &tup->t_self, rel,
					 es_log.check_unique[i] ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, ii);
		index_close(idx, NoLock);
	}
	table_close(rel, NoLock);
}

/*
 * es_key_condition
 *		"col1 = $1 AND col2 = $2" for the given columns of rel.
 */
static char *
es_key_condition(Relation rel, const AttrNumber *attnums, int n)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < n; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnums[i] - 1);

		appendStringInfo(&buf, "%s%s OPERATOR(pg_catalog.=) $%d",
						 i > 0 ? " AND " : "",
						 quote_identifier(NameStr(att->attname)), i + 1);
	}
	return buf.data;
}

/*
 * es_trigger_build_child
 *		The child table part of es_trigger_build: the foreign key columns
 *		and the query that tells whether a child row's parent exists.  When
 *		the parent is gone (parent_relid left invalid) or lost its key
 *		(nokey_table set), the query is not made: nothing is logged.
 */
static void
es_trigger_build_child(EsTrigger *t, Relation rel, EsCaptureArgs *args)
{
	AttrNumber	fk[ES_MAX_KEYS];
	AttrNumber	pk[ES_MAX_KEYS];
	int			nfk;
	int			npk;
	int			i;
	Relation	parent;

	nfk = es_arg_fk(rel, &args->parent, fk);
	for (i = 0; i < nfk; i++)
	{
		int			j;

		t->fkcol[i] = -1;
		for (j = 0; j < t->enc->ncolumns; j++)
			if (t->enc->columns[j].attnum == fk[i])
				t->fkcol[i] = j;
		if (t->fkcol[i] < 0)
			elog(ERROR, "capture trigger names missing column %d", fk[i]);
	}

	t->parent_relid = args->parent.relid;
	parent = OidIsValid(t->parent_relid) ?
		try_table_open(t->parent_relid, AccessShareLock) : NULL;
	if (parent == NULL)
	{
		/* The parent is gone: nothing to log until the next resync. */
		t->parent_relid = InvalidOid;
		return;
	}
	t->parent_ref_table = args->parent.ref_table ? args->parent.ref_table :
		es_qualified_relname(parent);
	t->parent_ref_table_text = cstring_to_text(t->parent_ref_table);
	if (!OidIsValid(RelationGetPrimaryKeyIndex(parent)))
	{
		t->nokey_table = t->parent_ref_table;
		t->nokey_logged = false;
		table_close(parent, AccessShareLock);
		return;
	}
	npk = es_pk_attnums(parent, pk);
	if (npk != nfk)
		elog(ERROR, "capture trigger key of \"%s\" does not match its parent",
			 RelationGetRelationName(rel));
	for (i = 0; i < nfk; i++)
		t->parent_argtypes[i] = t->enc->columns[t->fkcol[i]].typid;
	t->nfk = nfk;
	t->parent_sql = psprintf("SELECT 1 FROM %s WHERE %s",
							 es_scan_relname(parent),
							 es_key_condition(parent, pk, npk));
	table_close(parent, AccessShareLock);
}

/*
 * es_trigger_build_children
 *		The document table part of es_trigger_build: per child table, its
 *		name in documents and the query for the rows of one document.  A
 *		child table dropped since the trigger was made is skipped (the
 *		sql_drop event trigger also unregisters it and resyncs).
 */
static void
es_trigger_build_children(EsTrigger *t, Relation rel, EsCaptureArgs *args, int npk)
{
	int			i;

	t->children = palloc0(sizeof(EsChild) * Max(args->nchildren, 1));
	for (i = 0; i < args->nchildren; i++)
	{
		EsArgTable *a = &args->children[i];
		EsChild    *c = &t->children[t->nchildren];
		Relation	crel;
		AttrNumber	cpk[ES_MAX_KEYS];
		int			ncpk = 0;
		StringInfoData order;
		int			k;

		crel = OidIsValid(a->relid) ? try_table_open(a->relid, AccessShareLock) : NULL;
		if (crel == NULL)
			continue;
		c->relid = a->relid;
		c->nfk = es_arg_fk(crel, a, c->fk);
		if (c->nfk != npk)
			elog(ERROR, "capture trigger key of child \"%s\" does not match \"%s\"",
				 RelationGetRelationName(crel), RelationGetRelationName(rel));
		t->nchildren++;
		c->ref_table = a->ref_table ? a->ref_table : es_qualified_relname(crel);

		/* A child that lost its key lists its rows in no set order. */
		if (OidIsValid(RelationGetPrimaryKeyIndex(crel)))
			ncpk = es_pk_attnums(crel, cpk);
		initStringInfo(&order);
		for (k = 0; k < ncpk; k++)
			appendStringInfo(&order, "%s%s", k > 0 ? ", " : " ORDER BY ",
							 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(crel), cpk[k] - 1)->attname)));
		c->rows_sql = psprintf("SELECT * FROM %s WHERE %s%s",
							   es_scan_relname(crel),
							   es_key_condition(crel, c->fk, c->nfk),
							   order.data);
		for (k = 0; k < npk; k++)
			c->argtypes[k] = t->enc->columns[t->enc->pk[k]].typid;
		table_close(crel, AccessShareLock);
	}
}

/*
 * es_trigger_build
 *		Fill a cache entry from the trigger's arguments and the relation.
 *
 * Everything is allocated in a context of its own, so a rebuild after
 * invalidation frees the old state wholesale.  The relation may be a
 * partition of the table the trigger was made on: columns are found by
 * name, and the rows are logged under the name the arguments give.
 */
static void
es_trigger_build(EsTrigger *t, TriggerData *trigdata)
{
	Relation	rel = trigdata->tg_relation;
	EsCaptureArgs args;
	AttrNumber	pk[ES_MAX_KEYS];
	int			npk;
	MemoryContext oldcxt;
	int			i;

	if (t->cxt)
	{
		if (t->parent_plan)
			SPI_freeplan(t->parent_plan);
		for (i = 0; i < t->nchildren; i++)
			if (t->children[i].rows_plan)
				SPI_freeplan(t->children[i].rows_plan);
		MemoryContextDelete(t->cxt);
	}
	memset(((char *) t) + sizeof(Oid), 0, sizeof(EsTrigger) - sizeof(Oid));
	t->cxt = AllocSetContextCreate(es_capture_cxt, "eventstream trigger",
								   ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(t->cxt);

	es_capture_args_read(trigdata->tg_trigger, rel, &args);
	t->relid = RelationGetRelid(rel);
	t->ref_table = args.ref_table ? args.ref_table : es_qualified_relname(rel);
	t->ref_table_text = cstring_to_text(t->ref_table);
	t->is_child = args.is_child;
	if (OidIsValid(RelationGetPrimaryKeyIndex(rel)))
		npk = es_pk_attnums(rel, pk);
	else
	{
		/* Named by the former key, if its columns are all still there. */
		t->nokey_table = t->ref_table;
		npk = args.keyarg ? es_named_attnums(rel, args.keyarg, pk) : 0;
		t->nokey_logged = (npk > 0);
		if (npk == 0)
		{
			MemoryContextSwitchTo(oldcxt);
			t->valid = true;
			return;
		}
	}
	t->enc = es_encoder_build(RelationGetDescr(rel), pk, npk, t->cxt);
	if (args.addedarg)
		es_added_mark(t->enc, args.addedarg);

	if (t->is_child)
		es_trigger_build_child(t, rel, &args);
	else
		es_trigger_build_children(t, rel, &args, npk);
	MemoryContextSwitchTo(oldcxt);
	t->valid = true;
}

/*
 * es_trigger_lookup
 *		The valid cache entry for the firing trigger, built if needed.
 */
static EsTrigger *
es_trigger_lookup(TriggerData *trigdata)
{
	bool		found;
	EsTrigger  *t;

	es_capture_init();
	t = hash_search(es_triggers, &trigdata->tg_trigger->tgoid, HASH_ENTER, &found);
	if (!found)
		memset(((char *) t) + sizeof(Oid), 0, sizeof(EsTrigger) - sizeof(Oid));
	if (!t->valid)
		es_trigger_build(t, trigdata);
	return t;
}

/*
 * es_any_null
 *		Whether any of the n columns colidx[] of tuple is NULL.
 */
static bool
es_any_null(EsEncoder *enc, const int *colidx, int n, HeapTuple tuple,
			TupleDesc tupdesc)
{
	int			i;

	for (i = 0; i < n; i++)
		if (heap_attisnull(tuple, enc->columns[colidx[i]].attnum, tupdesc))
			return true;
	return false;
}

/*
 * es_keys_equal
 *		Whether columns colidx[] hold equal values in tuples a and b.
 */
static bool
es_keys_equal(EsEncoder *enc, const int *colidx, int n, HeapTuple a,
			  HeapTuple b, TupleDesc tupdesc)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		EsColumn   *col = &enc->columns[colidx[i]];
		bool		na,
					nb;
		Datum		da = heap_getattr(a, col->attnum, tupdesc, &na);
		Datum		db = heap_getattr(b, col->attnum, tupdesc, &nb);

		if (na != nb || (!na && !es_values_equal(col, da, db)))
			return false;
	}
	return true;
}

/* The four parts of an Update diff, always all present. */
#define DIFF_CHANGED		0x01
#define DIFF_ADDED			0x02
#define DIFF_REMOVED		0x04
#define DIFF_ROW_CHANGED	0x08

/*
 * es_diff_part_begin
 *		Open part "name" of a diff; for child parts also open the array of
 *		rows under the child table's key.
 */
static void
es_diff_part_begin(JsonbParseState **st, const char *name, const char *child)
{
	es_push_key(st, name, strlen(name));
	pushJsonbValue(st, WJB_BEGIN_OBJECT, NULL);
	if (child)
	{
		es_push_key(st, child, strlen(child));
		pushJsonbValue(st, WJB_BEGIN_ARRAY, NULL);
	}
}

/*
 * es_diff_part_end
 *		Close what es_diff_part_begin opened.
 */
static void
es_diff_part_end(JsonbParseState **st, bool child)
{
	if (child)
		pushJsonbValue(st, WJB_END_ARRAY, NULL);
	pushJsonbValue(st, WJB_END_OBJECT, NULL);
}

/*
 * es_diff_finish
 *		Add the parts not in "present" as empty objects and close the diff.
 */
static Jsonb *
es_diff_finish(JsonbParseState **st, int present)
{
	static const struct
	{
		int			bit;
		const char *name;
	}			parts[] = {
		{DIFF_CHANGED, "changed"},
		{DIFF_ADDED, "added"},
		{DIFF_REMOVED, "removed"},
		{DIFF_ROW_CHANGED, "row_changed"},
	};
	int			i;

	for (i = 0; i < (int) lengthof(parts); i++)
	{
		if (present & parts[i].bit)
			continue;
		es_diff_part_begin(st, parts[i].name, NULL);
		es_diff_part_end(st, false);
	}
	return JsonbValueToJsonb(pushJsonbValue(st, WJB_END_OBJECT, NULL));
}

/*
 * es_changed_columns
 *		Fill out[] with the indexes of the columns whose values differ
 *		between old and new (IS DISTINCT FROM semantics); returns how many.
 */
static int
es_changed_columns(EsEncoder *enc, HeapTuple old, HeapTuple new,
				   TupleDesc tupdesc, int *out)
{
	int			n = 0;
	int			i;

	for (i = 0; i < enc->ncolumns; i++)
	{
		EsColumn   *col = &enc->columns[i];
		bool		on,
					nn;
		Datum		od = heap_getattr(old, col->attnum, tupdesc, &on);
		Datum		nd = heap_getattr(new, col->attnum, tupdesc, &nn);

		if (on != nn || (!on && !es_values_equal(col, od, nd)))
			out[n++] = i;
	}
	return n;
}

/*
 * es_document
 *		The whole document for a Create: the row, plus one array of rows per
 *		registered child table.
 *
 * Child rows are read with a saved plan through SPI, in the trigger's
 * snapshot; only tables with children pay for it.
 */
static Jsonb *
es_document(EsTrigger *t, HeapTuple tuple, TupleDesc tupdesc)
{
	JsonbParseState *st = NULL;
	MemoryContext callercxt = CurrentMemoryContext;
	HeapTuple **rows = NULL;
	TupleDesc  *descs = NULL;
	uint64	   *nrows = NULL;
	int			i;

	es_row_to_jsonb(&st, t->enc, tuple, tupdesc, false);
	if (t->nchildren == 0)
		return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));

	rows = palloc0(sizeof(HeapTuple *) * t->nchildren);
	descs = palloc0(sizeof(TupleDesc) * t->nchildren);
	nrows = palloc0(sizeof(uint64) * t->nchildren);

	SPI_connect();
	for (i = 0; i < t->nchildren; i++)
	{
		EsChild    *c = &t->children[i];
		Datum		values[ES_MAX_KEYS];
		char		nulls[ES_MAX_KEYS];
		int			k;
		uint64		row;
		int			rc;
		MemoryContext spicxt;

		if (c->rows_plan == NULL)
		{
			SPIPlanPtr	plan = SPI_prepare(c->rows_sql, c->nfk, c->argtypes);

			if (plan == NULL)
				elog(ERROR, "SPI_prepare failed for \"%s\": %s", c->rows_sql,
					 SPI_result_code_string(SPI_result));
			SPI_keepplan(plan);
			c->rows_plan = plan;
		}
		for (k = 0; k < c->nfk; k++)
		{
			bool		isnull;

			values[k] = heap_getattr(tuple, t->enc->columns[t->enc->pk[k]].attnum,
									 tupdesc, &isnull);
			nulls[k] = isnull ? 'n' : ' ';
		}
		rc = SPI_execute_plan(c->rows_plan, values, nulls, true, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));

		spicxt = MemoryContextSwitchTo(callercxt);
		descs[i] = CreateTupleDescCopy(SPI_tuptable->tupdesc);
		nrows[i] = SPI_processed;
		rows[i] = palloc(sizeof(HeapTuple) * Max(SPI_processed, 1));
		for (row = 0; row < SPI_processed; row++)
			rows[i][row] = heap_copytuple(SPI_tuptable->vals[row]);
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();

	for (i = 0; i < t->nchildren; i++)
	{
		EsChild    *c = &t->children[i];
		uint64		k;

		if (c->enc == NULL)
			c->enc = es_encoder_build(descs[i], NULL, 0, t->cxt);
		es_push_key(&st, c->ref_table, strlen(c->ref_table));
		pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
		for (k = 0; k < nrows[i]; k++)
			es_row_to_jsonb(&st, c->enc, rows[i][k], descs[i], true);
		pushJsonbValue(&st, WJB_END_ARRAY, NULL);
	}
	return JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
}

/*
 * es_parent_exists
 *		Whether the parent row referenced by child row tuple still exists,
 *		as seen by a fresh snapshot (so a cascaded delete sees it gone).
 */
static bool
es_parent_exists(EsTrigger *t, HeapTuple tuple, TupleDesc tupdesc)
{
	Datum		values[ES_MAX_KEYS];
	char		nulls[ES_MAX_KEYS];
	int			k;
	int			rc;
	bool		exists;

	if (es_any_null(t->enc, t->fkcol, t->nfk, tuple, tupdesc))
		return false;
	for (k = 0; k < t->nfk; k++)
	{
		bool		isnull;

		values[k] = heap_getattr(tuple, t->enc->columns[t->fkcol[k]].attnum,
								 tupdesc, &isnull);
		nulls[k] = ' ';
	}

	SPI_connect();
	if (t->parent_plan == NULL)
	{
		SPIPlanPtr	plan = SPI_prepare(t->parent_sql, t->nfk, t->parent_argtypes);

		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", t->parent_sql,
				 SPI_result_code_string(SPI_result));
		SPI_keepplan(plan);
		t->parent_plan = plan;
	}
	rc = SPI_execute_plan(t->parent_plan, values, nulls, false, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_plan failed: %s", SPI_result_code_string(rc));
	exists = (SPI_processed > 0);
	SPI_finish();
	return exists;
}

/*
 * es_capture_doc
 *		Log a change of a row of a document table.
 */
static void
es_capture_doc(EsTrigger *t, TriggerData *trigdata)
{
	TupleDesc	tupdesc = RelationGetDescr(trigdata->tg_relation);
	EsEncoder  *enc = t->enc;
	HeapTuple	old = trigdata->tg_trigtuple;
	HeapTuple	new = trigdata->tg_newtuple;
	int		   *changed;
	int			nchanged;
	JsonbParseState *st = NULL;
	int			i;

	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		es_log_insert("Create", t->ref_table_text,
					  es_docname(enc, enc->pk, enc->npk, old, tupdesc),
					  es_document(t, old, tupdesc));
		return;
	}
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		es_log_insert("Delete", t->ref_table_text,
					  es_docname(enc, enc->pk, enc->npk, old, tupdesc), NULL);
		return;
	}

	/* UPDATE.  A new primary key is a different document. */
	if (!es_keys_equal(enc, enc->pk, enc->npk, old, new, tupdesc))
	{
		es_log_insert("Delete", t->ref_table_text,
					  es_docname(enc, enc->pk, enc->npk, old, tupdesc), NULL);
		es_log_insert("Create", t->ref_table_text,
					  es_docname(enc, enc->pk, enc->npk, new, tupdesc),
					  es_document(t, new, tupdesc));
		return;
	}

	changed = palloc(sizeof(int) * Max(enc->ncolumns, 1));
	nchanged = es_changed_columns(enc, old, new, tupdesc, changed);
	if (nchanged == 0)
		return;
	nchanged = es_added_append(enc, changed, nchanged);

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	es_diff_part_begin(&st, "changed", NULL);
	for (i = 0; i < nchanged; i++)
	{
		EsColumn   *col = &enc->columns[changed[i]];
		bool		isnull;
		Datum		d = heap_getattr(new, col->attnum, tupdesc, &isnull);

		es_push_key(&st, col->name, col->namelen);
		es_push_value(&st, col, d, isnull, WJB_VALUE);
	}
	es_diff_part_end(&st, false);
	es_log_insert("Update", t->ref_table_text,
				  es_docname(enc, enc->pk, enc->npk, new, tupdesc),
				  es_diff_finish(&st, DIFF_CHANGED));
}

/*
 * es_log_child_change
 *		Log an Update of the parent of child row tuple with one part:
 *		DIFF_ADDED (the whole row) or DIFF_REMOVED (the row's docname).
 *		With both bits, old is removed and new added in the same diff.
 */
static void
es_log_child_change(EsTrigger *t, int parts, HeapTuple old, HeapTuple new,
					TupleDesc tupdesc)
{
	JsonbParseState *st = NULL;
	HeapTuple	ref = (parts & DIFF_ADDED) ? new : old;

	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	if (parts & DIFF_ADDED)
	{
		es_diff_part_begin(&st, "added", t->ref_table);
		es_row_to_jsonb(&st, t->enc, new, tupdesc, true);
		es_diff_part_end(&st, true);
	}
	if (parts & DIFF_REMOVED)
	{
		JsonbValue	v;

		es_diff_part_begin(&st, "removed", t->ref_table);
		v.type = jbvString;
		v.val.string.val = es_docname(t->enc, t->enc->pk, t->enc->npk, old, tupdesc);
		v.val.string.len = strlen(v.val.string.val);
		pushJsonbValue(&st, WJB_ELEM, &v);
		es_diff_part_end(&st, true);
	}
	es_log_insert("Update", t->parent_ref_table_text,
				  es_docname(t->enc, t->fkcol, t->nfk, ref, tupdesc),
				  es_diff_finish(&st, parts));
}

/*
 * es_capture_child
 *		Log a change of a child row as an Update of its parent document.
 */
static void
es_capture_child(EsTrigger *t, TriggerData *trigdata)
{
	TupleDesc	tupdesc = RelationGetDescr(trigdata->tg_relation);
	EsEncoder  *enc = t->enc;
	HeapTuple	old = trigdata->tg_trigtuple;
	HeapTuple	new = trigdata->tg_newtuple;
	int		   *changed;
	int			nchanged;
	JsonbParseState *st = NULL;
	int			i;

	if (!OidIsValid(t->parent_relid))
		return;
	if (TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
	{
		if (!es_any_null(enc, t->fkcol, t->nfk, old, tupdesc))
			es_log_child_change(t, DIFF_ADDED, NULL, old, tupdesc);
		return;
	}
	if (TRIGGER_FIRED_BY_DELETE(trigdata->tg_event))
	{
		/* A row deleted along with its parent: the parent's Delete says it. */
		if (es_parent_exists(t, old, tupdesc))
			es_log_child_change(t, DIFF_REMOVED, old, NULL, tupdesc);
		return;
	}

	/* UPDATE.  Moved to another parent: removed there, added here. */
	if (!es_keys_equal(enc, t->fkcol, t->nfk, old, new, tupdesc))
	{
		if (es_parent_exists(t, old, tupdesc))
			es_log_child_change(t, DIFF_REMOVED, old, NULL, tupdesc);
		if (!es_any_null(enc, t->fkcol, t->nfk, new, tupdesc))
			es_log_child_change(t, DIFF_ADDED, NULL, new, tupdesc);
		return;
	}
	if (es_any_null(enc, t->fkcol, t->nfk, new, tupdesc))
		return;

	/* A new key for the row: the old row is removed and the new one added. */
	if (!es_keys_equal(enc, enc->pk, enc->npk, old, new, tupdesc))
	{
		es_log_child_change(t, DIFF_ADDED | DIFF_REMOVED, old, new, tupdesc);
		return;
	}

	changed = palloc(sizeof(int) * Max(enc->ncolumns, 1));
	nchanged = es_changed_columns(enc, old, new, tupdesc, changed);
	if (nchanged == 0)
		return;
	nchanged = es_added_append(enc, changed, nchanged);

	/* row_changed: the changed columns plus the row's key columns. */
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	es_diff_part_begin(&st, "row_changed", t->ref_table);
	pushJsonbValue(&st, WJB_BEGIN_OBJECT, NULL);
	for (i = 0; i < enc->ncolumns; i++)
	{
		EsColumn   *col = &enc->columns[i];
		bool		want = false;
		int			k;
		bool		isnull;
		Datum		d;

		for (k = 0; !want && k < nchanged; k++)
			want = (changed[k] == i);
		for (k = 0; !want && k < enc->npk; k++)
			want = (enc->pk[k] == i);
		if (!want)
			continue;
		d = heap_getattr(new, col->attnum, tupdesc, &isnull);
		es_push_key(&st, col->name, col->namelen);
		es_push_value(&st, col, d, isnull, WJB_VALUE);
	}
	pushJsonbValue(&st, WJB_END_OBJECT, NULL);
	es_diff_part_end(&st, true);
	es_log_insert("Update", t->parent_ref_table_text,
				  es_docname(enc, t->fkcol, t->nfk, new, tupdesc),
				  es_diff_finish(&st, DIFF_ROW_CHANGED));
}

/*
 * es_warn_nokey
 *		Say, once per transaction and trigger, that t->nokey_table lacks its
 *		primary key, and whether the changes of t's table are still captured
 *		(named by the former key) or not.
 */
static void
es_warn_nokey(EsTrigger *t)
{
	if (t->warned_lxid == MyProc->lxid)
		return;
	t->warned_lxid = MyProc->lxid;
	if (t->nokey_logged)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("table \"%s\" has no primary key", t->nokey_table),
				 errdetail("eventstream still captures its changes, naming its rows by the columns of its former primary key, which nothing keeps unique now."),
				 errhint("Add the primary key again.")));
	else
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("changes of table \"%s\" are not captured: table \"%s\" has no primary key",
						t->ref_table, t->nokey_table),
				 errdetail("eventstream names documents and child rows by their primary key, or by the columns of the former one while they all exist; its consumers do not receive these changes."),
				 errhint("Add the primary key again, then have the consumers copy the table again with eventstream.resync_table().")));
}

/*
 * eventstream_capture
 *		The AFTER ROW trigger function eventstream._capture().
 */
Datum
eventstream_capture(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	EsTrigger  *t;
	int			styles;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstream._capture: not called by trigger manager")));
	if (!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("eventstream._capture: must be fired AFTER ... FOR EACH ROW")));

	t = es_trigger_lookup(trigdata);
	if (t->nokey_table != NULL)
	{
		es_warn_nokey(t);
		if (!t->nokey_logged)
			return PointerGetDatum(NULL);
	}
	styles = es_output_styles_push();
	if (t->is_child)
		es_capture_child(t, trigdata);
	else
		es_capture_doc(t, trigdata);
	es_output_styles_pop(styles);
	return PointerGetDatum(NULL);
}
