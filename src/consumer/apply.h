/*-------------------------------------------------------------------------
 *
 * apply.h
 *	  Declarations shared by the files of the apply (src/consumer/apply*.c).
 *
 * The apply's interface is SQL: _apply_updates(), _apply_update()
 * (apply.c), _page_updated() and _page_facts() (apply_page.c),
 * _check_remote_key() (apply_keys.c).  What is
 * declared here is what its files share: the state of one call (EsApply),
 * the local tables and subscriptions as it sees them, the outcome of one
 * update, the straight writes (EsWrite) and the functions each file offers
 * the others.  Nothing outside the apply includes it.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_APPLY_H
#define ES_APPLY_H

#include "executor/executor.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"
#include "utils/resowner.h"

/*
 * The kind of an update, as its update_type says.  The values are the
 * kinds' initials, with which the key of a batch begins (es_batch_key).
 */
typedef enum EsUpdateKind
{
	ES_UPDATE_UNKNOWN = 0,		/* no update_type, or another one */
	ES_UPDATE_CREATE = 'C',
	ES_UPDATE_UPDATE = 'U',
	ES_UPDATE_DELETE = 'D',
	ES_UPDATE_TRUNCATE = 'T'	/* never batched (es_batch_key) */
} EsUpdateKind;

/* A local table as the apply sees it. */
typedef struct EsTable
{
	Oid			relid;			/* hash key */
	char	   *qualname;		/* quoted, schema-qualified */
	int			ncols;			/* columns a row may set (not generated) */
	char	  **cols;
	int			npk;			/* primary key columns (matched on the */
	char	  **pk;				/* producer's key: those, es_match_table) */
	int			narb;			/* the columns an upsert's ON CONFLICT */
	char	  **arb;			/* names: pk, or a unique index on some */
	bool		partitioned;	/* a partitioned table (its rows are in its
								 * partitions) */
	bool		fk_loaded;		/* fk_out and fk_in are filled (apply_fk.c) */
	Jsonb	   *fk_out;			/* its foreign keys, or NULL */
	Jsonb	   *fk_in;			/* keys of other tables referring to it, or
								 * NULL */
} EsTable;

/* A subscription as the apply needs it. */
typedef struct EsSub
{
	char	   *ref_table;		/* the producer's name */
	Oid			relid;			/* InvalidOid: not subscribed */
	bool		same_name;
	char	   *mapping;		/* its mapping, or NULL */
	bool		dropped;		/* unsubscribed here */
	int			nrkey;			/* the producer's key columns, in key */
	char	  **rkey;			/* order (none: the producer did not say) */
	int			nignored;		/* columns of the producer not applied here */
	char	  **ignored;		/* (producer_table.ignored_columns) */
} EsSub;

/* sync_log rows waiting to be inserted, as column arrays. */
#define ES_LOG_COLS 13

/* What one _apply_updates() call applies for. */
typedef struct EsApply
{
	text	   *producer_url;
	Oid			subscriber;
	bool		dependency;		/* rows of tables not subscribed: same name */
	Jsonb	   *fetched;		/* documents fetched for the updates, or NULL */
	char	   *producer_origin;	/* the producer's site id: the origin of an
									 * update that names none */
	Datum		producer_uuid;	/* the same, as a uuid */
	List	   *subs;			/* EsSub, looked up once per call */
	MemoryContext subs_cxt;		/* where they live */
	MemoryContext batch_cxt;	/* the pending sync_log rows */
	int			nlog;
	int			maxlog;
	Datum	   *log[ES_LOG_COLS];
	bool	   *lognull[ES_LOG_COLS];
} EsApply;

/* Outcome of one update. */
typedef struct EsOutcome
{
	bool		ok;
	Oid			local;
	char	   *docname;
	char	   *error;
	int			sqlerrcode;
	char	   *note;
} EsOutcome;

/*
 * Straight writes into a table, the way COPY FROM inserts: one multi-insert
 * into the heap, then each row's index entries, with the table's defaults
 * for the columns not given and its constraints applied as an INSERT would
 * (es_batch_direct also updates and deletes with the same executor state).
 * It costs a fraction of an INSERT statement fed from arrays or jsonb,
 * which materialises every value and goes through the executor row by row.
 * Only for tables with nothing that just a statement honours
 * (es_write_usable); the caller checks the privilege.
 */
typedef struct EsWrite
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	ExprState **defaults;		/* per attribute not given: its default */
	TupleDesc	slotdesc;
	int			nrows;
	TupleTableSlot **slots;
} EsWrite;

/* How values of one column are read from a page (apply_values.c). */
typedef struct EsValueInput
{
	FmgrInfo	input;			/* the type's input function */
	Oid			ioparam;
	int32		typmod;
} EsValueInput;

/* apply.c: the dispatch */
extern EsUpdateKind es_update_kind(const char *update_type);
extern EsSub *es_sub(EsApply *a, const char *ref);
extern char *es_origin(EsApply *a, Jsonb *upd);
extern ErrorData *es_subxact_caught(MemoryContext cxt, ResourceOwner owner);

/* apply_statements.c: table and plan cache, statements */
extern SPIPlanPtr es_log_plan;
extern void es_apply_reset(void);
extern EsTable *es_table(Oid relid);
extern Jsonb *es_run_args(Oid role, const char *sql, int nargs, Oid *argtypes, Datum *values,
						  const char *nulls);
extern Jsonb *es_run(Oid role, const char *sql, Jsonb *arg);
extern Jsonb *es_run_range(Oid role, const char *sql, Jsonb *arr, int first, int last);
extern Jsonb *es_key_of(EsTable *t, const char *docname);
extern char *es_docname_of(EsTable *t, Jsonb *row);
extern Jsonb *es_key_from_row(EsTable *t, Jsonb *row);
extern bool es_is_pk(EsTable *t, const char *col);
extern List *es_given_columns(EsTable *t, Jsonb *j, bool skip_pk);
extern void es_append_cols(StringInfo buf, List *cols, const char *prefix);
extern Jsonb *es_upsert(EsApply *a, EsTable *t, Jsonb *row, Jsonb *key, bool *inserted);
extern Jsonb *es_upsert_keyed(EsApply *a, EsTable *t, Jsonb *row, bool *inserted);
extern Jsonb *es_select(EsApply *a, EsTable *t, Jsonb *key);
extern Jsonb *es_delete(EsApply *a, EsTable *t, Jsonb *key);
extern Jsonb *es_update(EsApply *a, EsTable *t, Jsonb *set, Jsonb *key);
extern EsTable *es_child_link(const char *child_name, EsTable *parent, Oid parent_relid,
							  Jsonb **link);
extern Jsonb *es_parent_values(Jsonb *link, Jsonb *parent_row, EsTable *only_pk_of);

/* apply_columns.c: columns the table lacks, columns left out */
extern void es_check_columns(EsTable *t, Jsonb *row, bool children);
extern bool es_sub_ignores(EsSub *sub, const char *name, int len);
extern Jsonb *es_strip_ignored(EsSub *sub, EsUpdateKind kind, Jsonb *data);

/* apply_jsonb.c: jsonb helpers */
extern Jsonb *es_jsonb_parse(const char *text);
extern Jsonb *es_field(Jsonb *j, const char *key);
extern char *es_field_text(Jsonb *j, const char *key);
extern char *es_scalar_text(Jsonb *j);
extern bool es_is_object(Jsonb *j);
extern bool es_is_array(Jsonb *j);
extern Jsonb *es_concat(Jsonb *a, Jsonb *b);
extern Jsonb *es_without(Jsonb *j, char **keys, int n);
extern List *es_keys(Jsonb *j);
extern List *es_elements(Jsonb *j);
extern void es_json_pair(StringInfo buf, const char *key, const char *value);
extern Jsonb *es_with_field(Jsonb *obj, const char *key, Jsonb *value);
extern Jsonb *es_slice(List *elems, int from, int to);

/* apply_values.c: values of a page as column values */
extern void es_value_input_init(EsValueInput *in, Oid typid, int32 typmod, MemoryContext mcxt);
extern Datum es_value_datum(EsValueInput *in, JsonbValue *v);

/* apply_direct.c: straight writes */
extern bool es_write_usable(Relation rel);
extern void es_write_begin(EsWrite *ins, Relation rel, CmdType cmd, const bool *given,
						   int maxrows);
extern TupleTableSlot *es_insert_row(EsWrite *ins);
extern void es_insert_store(EsWrite *ins, TupleTableSlot *slot);
extern void es_write_finish(EsWrite *ins);
extern bool es_batch_direct(EsApply *a, List *all, int first, int last, EsUpdateKind kind,
							char **deleted);

/* apply_fk.c: foreign keys enforced by the apply */
extern bool es_fk_has(EsTable *t, bool referring);
extern char *es_apply_truncate(EsApply *a, EsTable *t);
extern char *es_fk_conds(EsTable *t);
extern void es_fk_check(EsTable *t, Jsonb *row);
extern void es_fk_deleted(EsTable *t, Jsonb *row);

/* apply_batch.c: runs as one statement */
extern char *es_batch_key(EsApply *a, Jsonb *upd);
extern bool es_apply_batch(EsApply *a, Jsonb *page, Jsonb *upd, int first, int last,
						   List **existed, char **deleted);

/* apply_keys.c: the producer's key, row-level security */
extern bool es_key_differs(EsTable *t, EsSub *sub);
extern EsTable *es_match_table(EsTable *t, EsSub *sub);
extern bool es_batchable(EsApply *a, EsSub *sub, EsUpdateKind kind);
extern void es_check_hidden(EsApply *a, EsTable *t, Jsonb *key, EsUpdateKind kind, const char *docname);
extern void es_check_other_document(EsTable *t, const char *docname);

/* apply_log.c: the sync_log rows */
extern void es_log_flush(EsApply *a);
extern void es_log_outcome(EsApply *a, Jsonb *upd, EsOutcome *out, const char *why);

#endif							/* ES_APPLY_H */
