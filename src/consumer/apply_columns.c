/*-------------------------------------------------------------------------
 *
 * apply_columns.c
 *	  The columns an update gives, against the local table's and the
 *	  subscription's.
 *
 * A value for a column the local table lacks fails its update, naming
 * the column (es_check_columns), rather than be dropped: nothing is marked
 * Synced without its values, as logical replication stops at a "missing
 * replicated column".  Columns a subscription leaves out on purpose
 * (producer_table.ignored_columns, eventstream.ignore_columns) are taken
 * out of an update's data first (es_strip_ignored); runs of updates that
 * give any of either go row by row (es_batch_key, es_sub_ignores).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_columns.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"

#include "consumer/apply.h"

/*
 * es_check_columns
 *		Raise when row gives a value for a column t does not have: the
 *		update fails, naming the columns, rather than have its values lost
 *		(as logical replication stops at a "missing replicated column").
 *		With children, a key whose value is an array is a child table's
 *		rows, not a column.  Generated columns count as columns (their
 *		values are computed here).
 */
void
es_check_columns(EsTable *t, Jsonb *row, bool children)
{
	StringInfoData missing;
	int			n = 0;
	ListCell   *lc;

	initStringInfo(&missing);
	foreach(lc, es_keys(row))
	{
		char	   *name = lfirst(lc);

		if (get_attnum(t->relid, name) > 0)
			continue;
		if (children && es_is_array(es_field(row, name)))
			continue;
		appendStringInfo(&missing, "%s\"%s\"", n > 0 ? ", " : "", name);
		n++;
	}
	if (n > 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg_plural("table %s has no column %s that the producer sends",
							   "table %s has no columns %s that the producer sends",
							   n, t->qualname, missing.data),
				 errdetail("Nothing of this update was applied. Add the column to the table, then apply the failed updates again with eventstream.resync_failed(); or leave the column out with eventstream.ignore_columns().")));
}

/*
 * es_sub_ignores
 *		Whether sub leaves the producer's column name (len bytes) out
 *		(eventstream.ignore_columns).
 */
bool
es_sub_ignores(EsSub *sub, const char *name, int len)
{
	for (int i = 0; i < sub->nignored; i++)
		if (strlen(sub->ignored[i]) == (size_t) len && memcmp(sub->ignored[i], name, len) == 0)
			return true;
	return false;
}

/*
 * es_rows_without
 *		A JSON array of child rows, each without the columns sub leaves out.
 */
static Jsonb *
es_rows_without(EsSub *sub, Jsonb *rows)
{
	StringInfoData buf;
	ListCell   *rc;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	foreach(rc, es_elements(rows))
	{
		Jsonb	   *r = es_without(lfirst(rc), sub->ignored, sub->nignored);

		appendStringInfo(&buf, "%s%s", foreach_current_index(rc) > 0 ? ", " : "",
						 JsonbToCString(NULL, &r->root, VARSIZE(r)));
	}
	appendStringInfoChar(&buf, ']');
	return es_jsonb_parse(buf.data);
}

/*
 * es_strip_ignored
 *		An update's data without the columns its subscription leaves out:
 *		of a Create, the document's and its child rows'; of an Update, the
 *		changed columns' and the child rows' added or changed.
 */
Jsonb *
es_strip_ignored(EsSub *sub, EsUpdateKind kind, Jsonb *data)
{
	static const char *const parts[] = {"changed", "row_changed", "added"};
	ListCell   *lc;

	if (sub->nignored == 0 || !es_is_object(data))
		return data;
	if (kind == ES_UPDATE_CREATE)
	{
		data = es_without(data, sub->ignored, sub->nignored);
		foreach(lc, es_keys(data))
		{
			Jsonb	   *rows = es_field(data, lfirst(lc));

			if (es_is_array(rows))
				data = es_with_field(data, lfirst(lc), es_rows_without(sub, rows));
		}
		return data;
	}
	if (kind != ES_UPDATE_UPDATE)
		return data;
	for (int p = 0; p < (int) lengthof(parts); p++)
	{
		Jsonb	   *part = es_field(data, parts[p]);

		if (!es_is_object(part))
			continue;
		if (p == 0)
		{
			data = es_with_field(data, parts[p], es_without(part, sub->ignored, sub->nignored));
			continue;
		}
		foreach(lc, es_keys(part))
		{
			part = es_with_field(part, lfirst(lc), es_rows_without(sub, es_field(part, lfirst(lc))));
		}
		data = es_with_field(data, parts[p], part);
	}
	return data;
}
