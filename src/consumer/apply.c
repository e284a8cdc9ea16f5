/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Consumer side: applying updates received from a producer.
 *
 * eventstream._apply_updates() applies a list of updates (Create with the
 * whole document, Update with Frappe's four-key diff, Delete, Truncate) to
 * the local tables, each in a subtransaction of its own, and writes one sync_log row
 * per update in the calling transaction: a failing update becomes a Failed
 * entry and the others go on.  _apply_update() applies one update the same
 * way without logging it (resync).
 *
 * Both functions apply as a logical replication subscriber does, with
 * session_replication_role = replica (es_apply_replica): of the triggers
 * and rules of the tables written, those enabled REPLICA or ALWAYS fire.
 * Writes to user tables run as the producer's subscriber role (the user id
 * is switched around each statement, SECURITY_LOCAL_USERID_CHANGE); the
 * bookkeeping (sync_log, remote_document) runs as the caller, the
 * extension's owner.  Every statement takes its values as one jsonb
 * parameter (a batch's, the run's updates and their range) and returns one
 * jsonb value; their texts depend only on the table and the set of columns
 * given, so their plans are prepared once and kept (the plan cache
 * revalidates them after DDL).  Table descriptions are cached
 * too and dropped, with the plans, after any relcache invalidation, at the
 * start of the next update (never while one is being applied).
 *
 * A mapped subscription's updates are mapped first (eventstream._map_update
 * renames, defaults, child mappings) and their Document fields linked here
 * to local rows, found through remote_document or created from the fetched
 * document, all in the update's subtransaction.
 *
 * This file is the dispatch: the two SQL functions, one update applied in
 * its subtransaction (es_apply_doc, es_apply_one), and the list run in
 * runs of one kind and table, tried as one batch (apply_direct.c, then
 * apply_batch.c) and otherwise applied row by row, each logged
 * (apply_log.c).  The other files of the apply, which share apply.h:
 *   apply_statements.c  table and plan cache, the statements on user tables
 *   apply_jsonb.c       jsonb helpers
 *   apply_values.c      a page's values read by their columns' input
 *                       functions (_populate), local rows as a page
 *                       writes them (_row_json)
 *   apply_direct.c      straight writes into a table, without statements
 *   apply_batch.c       runs of updates as one statement
 *   apply_columns.c     columns an update gives that the table lacks (the
 *                       update fails) or the subscription leaves out
 *   apply_keys.c        matching rows on the producer's key; rows that
 *                       row-level security hides from the subscriber
 *   apply_fk.c          the foreign keys the apply enforces itself
 *   apply_truncate.c    a Truncate: the local table emptied
 *   apply_log.c         the sync_log rows
 *   apply_page.c        quick facts about a page of updates, for _missing_for
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/resowner.h"
#include "utils/uuid.h"

#include "eventstream.h"
#include "consumer/apply.h"
#include "consumer/pagejson.h"

PG_FUNCTION_INFO_V1(eventstream_apply_updates);
PG_FUNCTION_INFO_V1(eventstream_apply_update);

#define ES_MIN_BATCH	16		/* shorter runs go row by row */
#define ES_MAX_BATCH	1000	/* longest run tried as one batch */

/*
 * es_update_kind
 *		The kind of an update_type (ES_UPDATE_UNKNOWN for NULL or any other
 *		text).
 */
EsUpdateKind
es_update_kind(const char *update_type)
{
	if (update_type == NULL)
		return ES_UPDATE_UNKNOWN;
	if (strcmp(update_type, "Create") == 0)
		return ES_UPDATE_CREATE;
	if (strcmp(update_type, "Update") == 0)
		return ES_UPDATE_UPDATE;
	if (strcmp(update_type, "Delete") == 0)
		return ES_UPDATE_DELETE;
	if (strcmp(update_type, "Truncate") == 0)
		return ES_UPDATE_TRUNCATE;
	return ES_UPDATE_UNKNOWN;
}

/* Add a note to *notes. */
static void es_note(StringInfo notes, const char *fmt,...) pg_attribute_printf(2, 3);

static void
es_note(StringInfo notes, const char *fmt,...)
{
	va_list		args;

	if (notes->len > 0)
		appendStringInfoString(notes, "; ");
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(notes, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(notes, needed);
	}
}

/*
 * es_text_array
 *		The elements of a JSON array of strings as C strings, their number
 *		in *n; NULL and 0 when arr is not an array (SQL NULL).
 */
static char **
es_text_array(Jsonb *arr, int *n)
{
	char	  **out;
	List	   *elems;
	ListCell   *lc;

	*n = 0;
	if (!es_is_array(arr))
		return NULL;
	elems = es_elements(arr);
	out = palloc(sizeof(char *) * Max(list_length(elems), 1));
	foreach(lc, elems)
		out[(*n)++] = es_scalar_text(lfirst(lc));
	return out;
}

/*
 * es_sub
 *		The subscription to a producer's table (looked up once per call,
 *		in the call's memory).
 */
EsSub *
es_sub(EsApply *a, const char *ref)
{
	ListCell   *lc;
	EsSub	   *sub;
	Jsonb	   *pt;
	StringInfoData arg;
	MemoryContext old;

	foreach(lc, a->subs)
	{
		sub = lfirst(lc);
		if (strcmp(sub->ref_table, ref) == 0)
			return sub;
	}
	initStringInfo(&arg);
	appendStringInfoChar(&arg, '{');
	es_json_pair(&arg, "p", text_to_cstring(a->producer_url));
	es_json_pair(&arg, "t", ref);
	appendStringInfoChar(&arg, '}');
	/* ignored_columns is read by name: the SQL of 1.0 has no such column. */
	pt = es_run(InvalidOid,
				"SELECT pg_catalog.jsonb_build_object('relid', t.local_table::oid, 'same', t.use_same_name,"
				"                                     'mapping', t.mapping, 'key', t.remote_key,"
				"                                     'off', t.unsubscribe,"
				"                                     'ignored', pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.->) 'ignored_columns')"
				"  FROM eventstream.producer_table t WHERE t.producer_url = $1->>'p' AND t.ref_table = $1->>'t'",
				es_jsonb_parse(arg.data));
	old = MemoryContextSwitchTo(a->subs_cxt);
	sub = palloc0(sizeof(EsSub));
	sub->ref_table = pstrdup(ref);
	if (pt != NULL)
	{
		sub->relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(pt, "relid"))));
		sub->same_name = strcmp(es_field_text(pt, "same"), "true") == 0;
		sub->mapping = es_field_text(pt, "mapping");
		sub->dropped = strcmp(es_field_text(pt, "off"), "true") == 0;
		sub->rkey = es_text_array(es_field(pt, "key"), &sub->nrkey);
		sub->ignored = es_text_array(es_field(pt, "ignored"), &sub->nignored);
	}
	a->subs = lappend(a->subs, sub);
	MemoryContextSwitchTo(old);
	return sub;
}

/*
 * es_origin
 *		The site an update comes from: its "origin", or the producer itself
 *		when it names none (a producer sends origins of other sites only).
 */
char *
es_origin(EsApply *a, Jsonb *upd)
{
	char	   *origin = es_field_text(upd, "origin");

	return origin ? origin : a->producer_origin;
}

/*
 * es_apply_begin
 *		Set up a for applying updates received from producer_url as
 *		subscriber (in a->subs_cxt).  The caller is connected to SPI.
 */
static void
es_apply_begin(EsApply *a, text *producer_url, Oid subscriber)
{
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1];
	MemoryContext cxt = a->subs_cxt;

	a->producer_url = producer_url;
	a->subscriber = subscriber;
	a->producer_origin = NULL;
	a->producer_uuid = (Datum) 0;
	values[0] = PointerGetDatum(producer_url);
	if (SPI_execute_with_args("SELECT producer_site_id FROM eventstream.producer WHERE producer_url = $1",
							  1, argtypes, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read the producer");
	if (SPI_processed == 1)
	{
		bool		isnull;
		Datum		d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);

		if (!isnull)
		{
			MemoryContext old = MemoryContextSwitchTo(cxt);

			a->producer_uuid = datumCopy(d, false, UUID_LEN);
			a->producer_origin = DatumGetCString(DirectFunctionCall1(uuid_out, a->producer_uuid));
			MemoryContextSwitchTo(old);
		}
	}
	SPI_freetuptable(SPI_tuptable);
}

/*
 * es_remote_arg
 *		The argument of the statements on remote_document about the
 *		producer's row remote of relid (and the local docname, if given):
 *		{"r": relid, "p": producer, "d": remote, "l": docname}.
 */
static Jsonb *
es_remote_arg(EsApply *a, Oid relid, const char *remote, const char *docname)
{
	StringInfoData arg;

	initStringInfo(&arg);
	appendStringInfo(&arg, "{\"r\": %u", relid);
	es_json_pair(&arg, "p", text_to_cstring(a->producer_url));
	es_json_pair(&arg, "d", remote);
	if (docname)
		es_json_pair(&arg, "l", docname);
	appendStringInfoChar(&arg, '}');
	return es_jsonb_parse(arg.data);
}

/*
 * es_remember_remote
 *		Record that the local row docname of relid is the producer's
 *		remote one (remote_document), unless either is recorded already.
 */
static void
es_remember_remote(EsApply *a, Oid relid, const char *docname, const char *remote)
{
	(void) es_run(InvalidOid,
				  "INSERT INTO eventstream.remote_document (local_table, local_docname, producer_url, remote_docname)"
				  " VALUES (($1->>'r')::oid::regclass, $1->>'l', $1->>'p', $1->>'d') ON CONFLICT DO NOTHING",
				  es_remote_arg(a, relid, remote, docname));
}

/*
 * es_link_value
 *		The local key a Document field of a mapping links to (a link as
 *		eventstream._mapping_link describes it): the row found through its
 *		remote name, or one created now from the mapped document (its own
 *		links first; its key from the document, or else the table's
 *		defaults) and recorded under its remote name.  As the subscriber,
 *		in the caller's subtransaction.
 */
static Jsonb *
es_link_value(EsApply *a, Jsonb *link, StringInfo notes)
{
	Oid			relid = DatumGetObjectId(DirectFunctionCall1(oidin, CStringGetDatum(es_field_text(link, "table"))));
	EsTable    *t = es_table(relid);
	char	   *local = es_field_text(link, "local");
	char	   *remote = es_field_text(link, "remote");
	Jsonb	   *data;
	Jsonb	   *links;
	Jsonb	   *cur;
	bool		inserted;
	ListCell   *lc;

	if (t->npk != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table %s needs a one-column primary key to be linked to", t->qualname)));
	if (local != NULL)
		return es_field(es_key_of(t, local), t->pk[0]);

	data = es_field(link, "data");
	links = es_field(link, "links");
	if (links != NULL)
		foreach(lc, es_elements(links))
			data = es_with_field(data, es_field_text(lfirst(lc), "column"), es_link_value(a, lfirst(lc), notes));
	cur = es_upsert_keyed(a, t, data, &inserted);
	es_remember_remote(a, relid, es_docname_of(t, cur), remote);
	es_note(notes, "%s %s \"%s\" (producer's \"%s\") for %s", inserted ? "created" : "updated",
			t->qualname, es_docname_of(t, cur), remote, es_field_text(link, "column"));
	return es_field(cur, t->pk[0]);
}

/*
 * es_map
 *		An update's data mapped with its subscription's mapping
 *		(eventstream._map_update), its Document fields linked to local rows.
 *		Raises when a dependency could not be had.
 */
static Jsonb *
es_map(EsApply *a, EsSub *sub, const char *type, const char *remote, Jsonb *data, StringInfo notes)
{
	Oid			argtypes[7] = {TEXTOID, OIDOID, TEXTOID, TEXTOID, JSONBOID, JSONBOID, TEXTOID};
	Datum		values[7];
	Jsonb	   *m;
	Jsonb	   *part;
	Jsonb	   *mapped;
	ListCell   *lc;

	values[0] = PointerGetDatum(a->producer_url);
	values[1] = ObjectIdGetDatum(a->subscriber);
	values[2] = CStringGetTextDatum(sub->mapping);
	values[3] = CStringGetTextDatum(type);
	values[4] = PointerGetDatum(data);
	values[5] = PointerGetDatum(a->fetched ? a->fetched : es_jsonb_parse("[]"));
	values[6] = CStringGetTextDatum(remote);
	m = es_run_args(InvalidOid, "SELECT eventstream._map_update($1, $2::regrole, $3, $4, $5, $6, $7)",
					7, argtypes, values, NULL);
	mapped = es_field(m, "data");

	if ((part = es_field(m, "problems")) != NULL && es_elements(part) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("%s", es_scalar_text(linitial(es_elements(part)))),
				 errhint("Resync this entry once the producer has the document.")));
	if ((part = es_field(m, "wants")) != NULL && es_elements(part) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_NO_DATA_FOUND),
				 errmsg("a document mapping \"%s\" links to was not fetched from the producer", sub->mapping),
				 errdetail("It is fetched with GET %s.", es_field_text(linitial(es_elements(part)), "path")),
				 errhint("Resync this entry: that fetches it.")));
	if ((part = es_field(m, "notes")) != NULL)
		foreach(lc, es_elements(part))
			es_note(notes, "%s", es_scalar_text(lfirst(lc)));
	if ((part = es_field(m, "links")) != NULL)
		foreach(lc, es_elements(part))
		{
			Jsonb	   *link = lfirst(lc);
			Jsonb	   *value = es_link_value(a, link, notes);
			char	   *column = es_field_text(link, "column");

			if (es_update_kind(type) == ES_UPDATE_UPDATE)
				mapped = es_with_field(mapped, "changed", es_with_field(es_field(mapped, "changed"), column, value));
			else
				mapped = es_with_field(mapped, column, value);
		}
	return mapped;
}

/*
 * es_apply_doc
 *		Apply one update to the local tables.  Raises on failure (the caller
 *		keeps it to the update's subtransaction).  Sets *local (the local
 *		table), *docname (the local docname) and notes.
 */
static void
es_apply_doc(EsApply *a, Jsonb *upd, Oid *local, char **docname, StringInfo notes)
{
	char	   *type = es_field_text(upd, "update_type");
	char	   *ref = es_field_text(upd, "ref_table");
	char	   *remote = es_field_text(upd, "docname");
	Jsonb	   *data = es_field(upd, "data");
	EsUpdateKind kind = es_update_kind(type);
	EsSub	   *sub;
	Oid			relid;
	bool		same_name;
	EsTable    *t;
	EsTable    *mt;
	Jsonb	   *key = NULL;
	Jsonb	   *cur = NULL;
	char	   *origin = es_origin(a, upd);
	char	   *encoding_error = es_field_text(upd, ES_ENCODING_ERROR_KEY);

	/* Read from a page with a character this database cannot hold. */
	if (encoding_error != NULL)
	{
		es_note(notes, "%s", ES_ENCODING_NOTE);
		ereport(ERROR,
				(errcode(ERRCODE_UNTRANSLATABLE_CHARACTER),
				 errmsg("%s", encoding_error),
				 errdetail("The producer sent this update with a character the database encoding cannot hold; nothing of it was applied."),
				 errhint("Change the value on the producer: its next update of the document is applied.")));
	}
	if (type == NULL || ref == NULL || remote == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("an update needs update_type, ref_table and docname")));

	/* The subscription, or (a dependency) the table of the same name. */
	sub = es_sub(a, ref);
	if (OidIsValid(sub->relid))
	{
		relid = sub->relid;
		same_name = sub->same_name;
	}
	else if (a->dependency)
	{
		relid = RangeVarGetRelid(makeRangeVarFromNameList(stringToQualifiedNameList(ref)), NoLock, true);
		same_name = true;
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_TABLE),
					 errmsg("table \"%s\" does not exist on this site", ref),
					 errhint("Rows of the producer's tables that subscribed rows refer to are copied into tables of the same name.")));
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("table \"%s\" is not subscribed from this producer", ref)));
	*local = relid;
	t = es_table(relid);

	/*
	 * Rows kept under the producer's names are matched on the producer's
	 * key (mt), which the docname renders; t unless the producer says its
	 * key is another one.
	 */
	mt = same_name && sub->mapping == NULL ? es_match_table(t, sub) : t;

	/*
	 * Changes applied here carry the site they came from (no loops), the
	 * rows a mapping links as well.
	 */
	if (origin)
	{
		pg_uuid_t  *u = DatumGetUUIDP(DirectFunctionCall1(uuid_in, CStringGetDatum(origin)));

		memcpy(&es_apply_origin, u, sizeof(pg_uuid_t));
		es_apply_origin_set = true;
	}

	/* A Truncate empties the whole table (apply_truncate.c). */
	if (kind == ES_UPDATE_TRUNCATE)
	{
		es_note(notes, "%s", es_apply_truncate(a, t));
		*docname = NULL;
		return;
	}

	/*
	 * A mapped subscription: the data as this site's tables have it (the
	 * mapping names the columns it takes).  Otherwise without the columns
	 * the subscription leaves out.
	 */
	if (sub->mapping != NULL && es_is_object(data) &&
		(kind == ES_UPDATE_CREATE || kind == ES_UPDATE_UPDATE))
		data = es_map(a, sub, type, remote, data, notes);
	else
		data = es_strip_ignored(sub, kind, data);

	/* The local row's key (a Create of the same name carries it). */
	if (same_name)
		key = kind == ES_UPDATE_CREATE && mt == t ? NULL : es_key_of(mt, remote);
	else
	{
		Jsonb	   *found;

		found = es_run(InvalidOid,
					   "SELECT pg_catalog.jsonb_build_object('v', d.local_docname) FROM eventstream.remote_document d"
					   " WHERE d.producer_url = $1->>'p' AND d.local_table = ($1->>'r')::oid::regclass"
					   "   AND d.remote_docname = $1->>'d'",
					   es_remote_arg(a, relid, remote, NULL));
		if (found)
			key = es_key_of(t, es_field_text(found, "v"));
	}

	if (kind == ES_UPDATE_CREATE)
	{
		bool		inserted;
		List	   *keys;
		ListCell   *lc;

		if (!es_is_object(data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("a Create needs the document as a JSON object")));
		es_check_columns(t, data, true);
		/*
		 * Same name: the document carries its key (no need to merge it in);
		 * mapped, the producer's docname is the key.
		 */
		if (same_name && sub->mapping != NULL)
			key = es_key_of(t, remote);
		if (mt != t)
		{
			/*
			 * Matched on the producer's key: a row there with the same
			 * arbiter values but other key values is another document.
			 */
			cur = es_upsert(a, mt, data, key, &inserted);
			if (!inserted && (cur = es_select(a, mt, key)) == NULL)
			{
				es_check_hidden(a, mt, key, ES_UPDATE_CREATE, remote);
				es_check_other_document(mt, remote);
			}
		}
		else
			cur = same_name && key == NULL ? es_upsert_keyed(a, t, data, &inserted) : es_upsert(a, t, data, key, &inserted);
		if (!inserted)
			es_note(notes, "the row existed: it now has the producer's values");
		if (!same_name && key == NULL)
			es_remember_remote(a, relid, es_docname_of(t, cur), remote);
		/* Child rows: the document's, replacing what was there. */
		keys = es_keys(data);
		foreach(lc, keys)
		{
			char	   *name = lfirst(lc);
			Jsonb	   *rows = es_field(data, name);
			Jsonb	   *link;
			EsTable    *ct;
			ListCell   *rc;
			bool		is_col = false;

			for (int i = 0; i < t->ncols; i++)
				if (strcmp(t->cols[i], name) == 0)
					is_col = true;
			if (is_col || !es_is_array(rows))
				continue;
			ct = es_child_link(name, t, relid, &link);
			foreach(rc, es_elements(rows))
				es_check_columns(ct, lfirst(rc), false);
			if (!inserted)
			{
				Jsonb	   *fk = es_parent_values(link, cur, NULL);
				List	   *fkcols = es_keys(fk);
				StringInfoData sql;
				ListCell   *fc;
				Jsonb	   *gone;

				initStringInfo(&sql);
				appendStringInfo(&sql, "WITH d AS (DELETE FROM %s t USING eventstream._populate(NULL::%s, $1) k WHERE ",
								 ct->qualname, ct->qualname);
				foreach(fc, fkcols)
					appendStringInfo(&sql, "%st.%s = k.%s", foreach_current_index(fc) > 0 ? " AND " : "",
									 quote_identifier(lfirst(fc)), quote_identifier(lfirst(fc)));
				appendStringInfoString(&sql, " RETURNING eventstream._row_json(t.*) AS row)"
									   " SELECT pg_catalog.jsonb_agg(d.row) FROM d");
				gone = es_run(a->subscriber, sql.data, fk);
				foreach(fc, es_elements(gone))
					es_fk_deleted(ct, lfirst(fc));
			}
			foreach(rc, es_elements(rows))
			{
				Jsonb	   *r = es_concat(lfirst(rc), es_parent_values(link, cur, NULL));
				bool		ins;

				(void) es_upsert(a, ct, r, es_key_from_row(ct, r), &ins);
			}
		}
	}
	else if (kind == ES_UPDATE_UPDATE)
	{
		Jsonb	   *changed;
		static const char *const parts[] = {"removed", "row_changed", "added"};

		if (!es_is_object(data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("an Update needs the four-key diff as a JSON object")));
		/* The changed columns, or (for child rows only) the row as it is. */
		changed = es_field(data, "changed");
		if (es_is_object(changed))
			es_check_columns(t, changed, false);
		for (int p = 1; p < (int) lengthof(parts); p++)
		{
			Jsonb	   *part = es_field(data, parts[p]);
			ListCell   *lc;

			if (es_is_object(part))
				foreach(lc, es_keys(part))
				{
					Jsonb	   *link;
					EsTable    *ct = es_child_link(lfirst(lc), t, relid, &link);
					ListCell   *rc;

					foreach(rc, es_elements(es_field(part, lfirst(lc))))
						es_check_columns(ct, lfirst(rc), false);
				}
		}
		if (key != NULL)
			cur = es_is_object(changed) ? es_update(a, mt, changed, key) : es_select(a, mt, key);
		if (cur == NULL && key != NULL)
			es_check_hidden(a, mt, key, ES_UPDATE_UPDATE, remote);
		if (cur == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NO_DATA_FOUND),
					 errmsg("no row of %s here for document \"%s\"", t->qualname, remote),
					 errhint("The producer did not serve it either. Resync this entry once the row exists.")));

		/* Child rows: removed, changed, added. */
		for (int p = 0; p < (int) lengthof(parts); p++)
		{
			Jsonb	   *part = es_field(data, parts[p]);
			ListCell   *lc;

			if (!es_is_object(part))
				continue;
			foreach(lc, es_keys(part))
			{
				char	   *name = lfirst(lc);
				Jsonb	   *link;
				EsTable    *ct = es_child_link(name, t, relid, &link);
				ListCell   *rc;

				foreach(rc, es_elements(es_field(part, name)))
				{
					Jsonb	   *r = lfirst(rc);

					if (p == 0)
					{
						/* removed: docnames of child rows */
						char	   *dn = es_scalar_text(r);
						Jsonb	   *k = es_concat(es_key_of(ct, dn), es_parent_values(link, cur, ct));

						if (es_delete(a, ct, k) == NULL)
						{
							es_check_hidden(a, ct, k, ES_UPDATE_DELETE, dn);
							es_note(notes, "removed row %s of %s was not here", dn, ct->qualname);
						}
					}
					else if (p == 1)
					{
						/* row_changed: changed columns plus the row's key */
						Jsonb	   *rr = es_concat(r, es_parent_values(link, cur, ct));
						Jsonb	   *k = es_key_from_row(ct, rr);

						if (k == NULL || es_update(a, ct, rr, k) == NULL)
						{
							if (k != NULL)
								es_check_hidden(a, ct, k, ES_UPDATE_UPDATE, es_docname_of(ct, rr));
							es_note(notes, "changed row %s of %s was not here", es_docname_of(ct, rr), ct->qualname);
						}
					}
					else
					{
						/* added: whole rows */
						Jsonb	   *rr = es_concat(r, es_parent_values(link, cur, NULL));
						bool		ins;

						(void) es_upsert(a, ct, rr, es_key_from_row(ct, rr), &ins);
					}
				}
			}
		}
	}
	else if (kind == ES_UPDATE_DELETE)
	{
		if (key != NULL)
			cur = es_delete(a, mt, key);
		if (cur == NULL && key != NULL)
			es_check_hidden(a, mt, key, ES_UPDATE_DELETE, remote);
		if (cur == NULL)
			es_note(notes, "the row was not here: nothing to delete");
		if (!same_name)
			(void) es_run(InvalidOid,
						  "DELETE FROM eventstream.remote_document d"
						  " WHERE d.producer_url = $1->>'p' AND d.local_table = ($1->>'r')::oid::regclass"
						  "   AND d.remote_docname = $1->>'d'",
						  es_remote_arg(a, relid, remote, NULL));
		*docname = cur ? es_docname_of(t, cur) : (same_name && mt == t ? remote : NULL);
		return;
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown update_type \"%s\"", type)));
	*docname = es_docname_of(t, cur);
}

/*
 * es_subxact_caught
 *		In the PG_CATCH of an internal subtransaction begun in cxt under
 *		owner, when the error is to become a failure of what was tried:
 *		roll the subtransaction back and return the error (in cxt).  A
 *		query cancel (pg_cancel_backend, statement_timeout) is no such
 *		failure but a request to stop: it is raised again.
 */
ErrorData *
es_subxact_caught(MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
		ReThrowError(edata);
	return edata;
}

/* Whether es_replica_needed is known, and it (see es_replica_matters). */
static bool es_replica_known = false;
static bool es_replica_needed = false;

/*
 * es_replica_invalidate
 *		Relcache callback: a trigger or rule may have come, gone or changed
 *		its ENABLE state (each sends an invalidation of its table).
 */
static void
es_replica_invalidate(Datum arg, Oid relid)
{
	es_replica_known = false;
}

/*
 * es_replica_matters
 *		Whether applying with session_replication_role = replica can differ
 *		from applying without it in this database: some table outside the
 *		extension's schema has a trigger (but the capture triggers, ENABLE
 *		ALWAYS) or a rule that is not disabled.  Without one, what fires is
 *		the same either way: foreign keys are then left to their own
 *		triggers (apply_fk.c), and the role is not changed, which would cost
 *		a reset of the session's plan cache (see assign_session_
 *		replication_role) twice per call.  Known until the next relcache
 *		invalidation.  The caller is connected to SPI.
 */
static bool
es_replica_matters(void)
{
	static bool registered = false;

	if (!registered)
	{
		CacheRegisterRelcacheCallback(es_replica_invalidate, (Datum) 0);
		registered = true;
	}
	if (es_replica_known)
		return es_replica_needed;
	if (SPI_execute("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t JOIN pg_catalog.pg_class c ON c.oid = t.tgrelid"
					"                WHERE NOT t.tgisinternal AND t.tgenabled <> 'D'"
					"                  AND t.tgname NOT IN ('eventstream_capture', 'eventstream_truncate', 'eventstream_truncate_rows')"
					"                  AND c.relnamespace <> 'eventstream'::pg_catalog.regnamespace)"
					"    OR EXISTS (SELECT 1 FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class c ON c.oid = r.ev_class"
					"                WHERE r.ev_enabled <> 'D' AND r.rulename <> '_RETURN'"
					"                  AND c.relnamespace <> 'eventstream'::pg_catalog.regnamespace)",
					true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the triggers and rules of the database");
	{
		bool		isnull;

		es_replica_needed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_freetuptable(SPI_tuptable);
	es_replica_known = true;
	return es_replica_needed;
}

/*
 * es_apply_replica
 *		Make the rest of the calling function apply as a logical
 *		replication subscriber does: session_replication_role = replica,
 *		so that of the triggers and rules on the tables written the ones
 *		enabled REPLICA or ALWAYS fire and the ordinary ones do not (when
 *		that can make a difference: es_replica_matters).  The setting is a
 *		superuser's: it is set here for the apply only, whoever calls it,
 *		as a function's SET clause would set it; the caller undoes it with
 *		AtEOXact_GUC at the level returned, an error with the transaction
 *		or subtransaction.  Foreign keys stay enforced (apply_fk.c).  The
 *		capture trigger is ENABLE ALWAYS (capture.sql), so that what is
 *		applied here is logged for the sites subscribed to this one.  The
 *		caller is connected to SPI.
 */
static int
es_apply_replica(void)
{
	int			nestlevel = NewGUCNestLevel();

	if (es_replica_matters())
		(void) set_config_option("session_replication_role", "replica", PGC_SUSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * es_apply_one
 *		Apply one update in a subtransaction of its own; an error is caught
 *		and described in the outcome.  The caller is connected to SPI.
 */
static void
es_apply_one(EsApply *a, Jsonb *upd, EsOutcome *out)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	StringInfoData notes;

	memset(out, 0, sizeof(EsOutcome));
	initStringInfo(&notes);
	es_apply_reset();

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		es_apply_doc(a, upd, &out->local, &out->docname, &notes);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		out->ok = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata = es_subxact_caught(cxt, owner);

		out->ok = false;
		out->sqlerrcode = edata->sqlerrcode;
		out->error = edata->detail ? psprintf("%s\n%s", edata->message, edata->detail) : pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();
	out->note = notes.len > 0 ? notes.data : NULL;
}

/*
 * eventstream_apply_updates
 *		_apply_updates(producer_url text, subscriber regrole, updates jsonb,
 *		why text, dependency boolean, fetched jsonb) -> integer[] {processed, failed}:
 *		apply each update in its own subtransaction and log it.
 */
Datum
eventstream_apply_updates(PG_FUNCTION_ARGS)
{
	EsApply		a;
	Jsonb	   *updates = PG_GETARG_JSONB_P(2);
	char	   *why = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext per_update;
	int			n = 0;
	int			failed = 0;
	int			nestlevel;
	Datum		counts[2];
	ListCell   *lc2;

	a.producer_url = PG_GETARG_TEXT_PP(0);
	a.subscriber = PG_GETARG_OID(1);
	a.dependency = PG_GETARG_BOOL(4);
	a.fetched = PG_NARGS() > 5 && !PG_ARGISNULL(5) ? PG_GETARG_JSONB_P(5) : NULL;
	if (!es_is_array(updates))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("updates must be a JSON array")));

	per_update = AllocSetContextCreate(cxt, "eventstream update", ALLOCSET_DEFAULT_SIZES);
	a.subs = NIL;
	a.nlog = a.maxlog = 0;
	memset(a.log, 0, sizeof(a.log));
	memset(a.lognull, 0, sizeof(a.lognull));
	a.batch_cxt = AllocSetContextCreate(cxt, "eventstream sync log rows", ALLOCSET_DEFAULT_SIZES);
	a.subs_cxt = cxt;
	SPI_connect();
	nestlevel = es_apply_replica();
	es_apply_begin(&a, a.producer_url, a.subscriber);
	if (a.dependency)
	{
		/*
		 * Rows fetched because others refer to them may refer to each
		 * other: apply in passes, retrying those that miss a row another
		 * one brings, as long as a pass makes progress.
		 */
		List	   *pending = es_elements(updates);

		while (pending != NIL)
		{
			List	   *retry = NIL;
			List	   *outcomes = NIL;
			bool		progress = false;
			ListCell   *lc;

			foreach(lc, pending)
			{
				EsOutcome  *out = palloc(sizeof(EsOutcome));

				CHECK_FOR_INTERRUPTS();
				es_apply_one(&a, lfirst(lc), out);
				if (out->ok)
				{
					es_log_outcome(&a, lfirst(lc), out, why);
					n++;
					progress = true;
				}
				else if (out->sqlerrcode == ERRCODE_FOREIGN_KEY_VIOLATION)
				{
					retry = lappend(retry, lfirst(lc));
					outcomes = lappend(outcomes, out);
				}
				else
				{
					es_log_outcome(&a, lfirst(lc), out, why);
					n++;
					failed++;
				}
			}
			if (!progress)
			{
				forboth(lc, retry, lc2, outcomes)
				{
					es_log_outcome(&a, lfirst(lc), lfirst(lc2), why);
					n++;
					failed++;
				}
				retry = NIL;
			}
			pending = retry;
		}
	}
	if (!a.dependency)
	{
		/*
		 * Runs of updates of one kind and table (es_batch_key) are tried
		 * together, in one subtransaction: straight into the table
		 * (es_batch_direct), else as one statement (es_apply_batch).  The
		 * usual stream of new rows costs one executor start per run
		 * instead of one per row.  Should that fail for any reason, the
		 * run is applied row by row, each update in its own subtransaction
		 * as always.
		 */
		List	   *all;
		int			total;
		int			i = 0;

		MemoryContextSwitchTo(cxt);
		all = es_elements(updates);

		/*
		 * Updates of a table unsubscribed since they were served (the
		 * window was on its way): it is to receive no more, so none of the
		 * window's are applied -- not the first pages' only.  A table the
		 * producer rejected meanwhile is not dropped: the producer serves
		 * only what was written before the rejection, as under the
		 * approval.
		 */
		es_apply_reset();
		foreach(lc2, all)
		{
			char	   *ref = es_field_text(lfirst(lc2), "ref_table");

			if (ref != NULL && es_sub(&a, ref)->dropped)
				all = foreach_delete_current(all, lc2);
		}
		total = list_length(all);
		while (i < total)
		{
			char	   *bkey;
			int			j = i + 1;

			CHECK_FOR_INTERRUPTS();
			MemoryContextSwitchTo(per_update);
			if (!es_is_object(list_nth(all, i)))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("an update must be a JSON object")));
			es_apply_reset();
			bkey = es_batch_key(&a, list_nth(all, i));
			if (bkey != NULL)
			{
				/* A run stops at a document it has already (order matters). */
				HASHCTL		ctl;
				HTAB	   *seen;
				char		dn[NAMEDATALEN * 4];

				memset(&ctl, 0, sizeof(ctl));
				ctl.keysize = sizeof(dn);
				ctl.entrysize = sizeof(dn);
				ctl.hcxt = per_update;
				seen = hash_create("eventstream batch docnames", 256, &ctl, HASH_ELEM | HASH_STRINGS | HASH_CONTEXT);
				strlcpy(dn, es_field_text(list_nth(all, i), "docname"), sizeof(dn));
				(void) hash_search(seen, dn, HASH_ENTER, NULL);
				while (j < total && j - i < ES_MAX_BATCH)
				{
					Jsonb	   *next = list_nth(all, j);
					char	   *k2 = es_is_object(next) ? es_batch_key(&a, next) : NULL;
					char	   *name;
					bool		found;

					if (k2 == NULL || strcmp(k2, bkey) != 0)
						break;
					name = es_field_text(next, "docname");
					if (strlen(name) >= sizeof(dn))
						break;
					strlcpy(dn, name, sizeof(dn));
					(void) hash_search(seen, dn, HASH_ENTER, &found);
					if (found)
						break;
					j++;
				}
			}
			if (bkey != NULL && j - i >= ES_MIN_BATCH)
			{
				List	   *existed = NIL;
				char	  **deleted = palloc0(sizeof(char *) * (j - i));
				EsUpdateKind kind = (EsUpdateKind) bkey[0];
				bool		deletes = kind == ES_UPDATE_DELETE;

				/*
				 * The statement gets the run's updates only: the whole page
				 * would be expanded by every run's jsonb_array_elements().
				 */
				if (es_batch_direct(&a, all, i, j, kind, deletes ? deleted : NULL) ||
					es_apply_batch(&a, es_slice(all, i, j), list_nth(all, i), 1, j - i, &existed,
								   deletes ? deleted : NULL))
				{
					for (int k = i; k < j; k++)
					{
						Jsonb	   *upd = list_nth(all, k);
						EsOutcome	out;
						ListCell   *lc;

						memset(&out, 0, sizeof(out));
						out.ok = true;
						out.local = es_sub(&a, es_field_text(upd, "ref_table"))->relid;
						out.docname = es_field_text(upd, "docname");
						foreach(lc, existed)
							if (strcmp(lfirst(lc), out.docname) == 0)
								out.note = "the row existed: it now has the producer's values";
						if (deletes && deleted[k - i] != NULL)
							out.docname = deleted[k - i];	/* as the row says */
						else if (deletes)
							out.note = "the row was not here: nothing to delete";
						es_log_outcome(&a, upd, &out, why);
						n++;
					}
					MemoryContextSwitchTo(cxt);
					MemoryContextReset(per_update);
					i = j;
					continue;
				}
			}
			/* Row by row. */
			for (int k = i; k < j; k++)
			{
				Jsonb	   *upd = list_nth(all, k);
				EsOutcome	out;

				if (!es_is_object(upd))
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("an update must be a JSON object")));
				es_apply_one(&a, upd, &out);
				es_log_outcome(&a, upd, &out, why);
				n++;
				if (!out.ok)
					failed++;
			}
			MemoryContextSwitchTo(cxt);
			MemoryContextReset(per_update);
			i = j;
		}
	}
	es_log_flush(&a);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	MemoryContextSwitchTo(cxt);
	MemoryContextDelete(per_update);
	MemoryContextDelete(a.batch_cxt);
	counts[0] = Int32GetDatum(n);
	counts[1] = Int32GetDatum(failed);
	PG_RETURN_ARRAYTYPE_P(construct_array(counts, 2, INT4OID, sizeof(int32), true, TYPALIGN_INT));
}

/*
 * eventstream_apply_update
 *		_apply_update(producer_url text, subscriber regrole, upd jsonb,
 *		dependency boolean, fetched jsonb)
 *		-> (status, error, docname, note, local_table): apply one update in
 *		a subtransaction, without logging it (resync).
 */
Datum
eventstream_apply_update(PG_FUNCTION_ARGS)
{
	EsApply		a;
	Jsonb	   *upd = PG_GETARG_JSONB_P(2);
	EsOutcome	out;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};
	MemoryContext caller = CurrentMemoryContext;
	MemoryContext oldcxt;
	int			nestlevel;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	memset(&a, 0, sizeof(a));
	a.producer_url = PG_GETARG_TEXT_PP(0);
	a.subscriber = PG_GETARG_OID(1);
	a.dependency = PG_GETARG_BOOL(3);
	a.fetched = PG_NARGS() > 4 && !PG_ARGISNULL(4) ? PG_GETARG_JSONB_P(4) : NULL;
	a.subs_cxt = CurrentMemoryContext;
	SPI_connect();
	nestlevel = es_apply_replica();
	es_apply_begin(&a, a.producer_url, a.subscriber);
	es_apply_one(&a, upd, &out);
	/* out's strings are in SPI's memory, which SPI_finish frees: copy first. */
	oldcxt = MemoryContextSwitchTo(caller);
	values[0] = CStringGetTextDatum(out.ok ? "Synced" : "Failed");
	nulls[1] = out.error == NULL;
	values[1] = out.error ? CStringGetTextDatum(out.error) : (Datum) 0;
	nulls[2] = out.docname == NULL;
	values[2] = out.docname ? CStringGetTextDatum(out.docname) : (Datum) 0;
	nulls[3] = out.note == NULL;
	values[3] = out.note ? CStringGetTextDatum(out.note) : (Datum) 0;
	nulls[4] = !OidIsValid(out.local);
	values[4] = ObjectIdGetDatum(out.local);
	MemoryContextSwitchTo(oldcxt);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}
