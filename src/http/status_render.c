/*-------------------------------------------------------------------------
 *
 * status_render.c
 *	  The HTML of the site's status page.
 *
 * es_status_render builds the page that src/http/status_page.c serves:
 * this site's producers (eventstream.producer_status) with their failed
 * updates, its consumers (eventstream.consumer_status) with their
 * subscriptions, a chart of the updates applied per minute over the last
 * hour, and the sync log's latest rows filtered by the GET parameters
 * status, table and producer (a plain form).  A caller that may not act
 * (pg_monitor) sees only what pg_monitor may read in SQL, the two status
 * views, and the chart's counts: not the failed updates, subscriptions or
 * sync log, which hold rows' data and conditions.  The page is self-contained:
 * inline CSS and SVG, no script, no outside asset; every value from the
 * database or the request is HTML-escaped (es_html_escape).  With a token
 * (the caller may act), each failed update has a Resync button and each
 * subscription Approve / Reject buttons: forms that POST to the page's
 * actions with the token.
 *
 * Runs in the request's transaction, connected to SPI, as the worker: the
 * caller's right to see the page was checked before.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/http/status_render.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"

#include "eventstream.h"
#include "http/status_page.h"

#define ES_STATUS_LOG_ROWS		50	/* sync log rows shown */
#define ES_STATUS_FAILED_ROWS	100 /* failed updates shown */

/* Inline style: the page loads nothing else. */
static const char *const es_status_css =
"body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}"
"h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.15em;margin:1.6em 0 .4em;border-bottom:1px solid #ccc}"
"table{border-collapse:collapse;font-size:.9em;margin:.3em 0}"
"th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}"
"th{background:#eef2f7}td.num{text-align:right}"
".state-streaming,.status-Synced,.status-Approved{color:#080}"
".state-failing,.state-stalled,.status-Failed,.status-Rejected{color:#b00;font-weight:bold}"
".state-starting,.status-Pending{color:#a60}"
".err{color:#b00;max-width:40em;word-break:break-word}"
"form.inline{display:inline;margin:0}button{margin:0 .2em;cursor:pointer}"
".muted{color:#777}.note{background:#fff8e0;border:1px solid #e0c060;padding:.4em}"
"svg{border:1px solid #ccc;background:#fafafa}";

/*
 * es_html_escape
 *		Append s to buf with &, <, >, " and ' escaped; NULL appends nothing.
 */
void
es_html_escape(StringInfo buf, const char *s)
{
	if (s == NULL)
		return;
	for (; *s; s++)
	{
		switch (*s)
		{
			case '&':
				appendStringInfoString(buf, "&amp;");
				break;
			case '<':
				appendStringInfoString(buf, "&lt;");
				break;
			case '>':
				appendStringInfoString(buf, "&gt;");
				break;
			case '"':
				appendStringInfoString(buf, "&quot;");
				break;
			case '\'':
				appendStringInfoString(buf, "&#39;");
				break;
			default:
				appendStringInfoChar(buf, *s);
		}
	}
}

/*
 * es_render_value
 *		Column col (from 1) of row i of SPI_tuptable, as text (NULL for
 *		NULL).
 */
static char *
es_render_value(uint64 i, int col)
{
	return SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, col);
}

/*
 * es_render_cell
 *		Append a table cell holding value, escaped; cls (or NULL) is its
 *		class; with cls_value, the class is cls followed by the value (for
 *		states and statuses).
 */
static void
es_render_cell(StringInfo html, const char *value, const char *cls, bool cls_value)
{
	appendStringInfoString(html, "<td");
	if (cls)
	{
		appendStringInfoString(html, " class=\"");
		es_html_escape(html, cls);
		if (cls_value)
			es_html_escape(html, value);
		appendStringInfoChar(html, '"');
	}
	appendStringInfoChar(html, '>');
	if (value == NULL)
		appendStringInfoString(html, "<span class=\"muted\">&ndash;</span>");
	else
		es_html_escape(html, value);
	appendStringInfoString(html, "</td>");
}

/*
 * es_render_head
 *		Append a table's opening and its header row; headers ends with NULL.
 */
static void
es_render_head(StringInfo html, const char *id, const char *const *headers)
{
	appendStringInfo(html, "<table id=\"%s\"><tr>", id);
	for (; *headers; headers++)
		appendStringInfo(html, "<th>%s</th>", *headers);
	appendStringInfoString(html, "</tr>\n");
}

/*
 * es_render_button
 *		Append a form that POSTs action with the token and the hidden fields
 *		(name, value pairs, nfields of them), shown as a button labelled
 *		label; the button carries data-action and the fields as data-*
 *		attributes so that a test can find it.
 */
static void
es_render_button(StringInfo html, const char *action, const char *label, const char *token,
				 int nfields, const char *const *fields)
{
	appendStringInfo(html, "<form class=\"inline\" method=\"post\" action=\"%s/%s\">"
					 "<input type=\"hidden\" name=\"token\" value=\"%s\">",
					 ES_STATUS_PATH, action, token);
	for (int i = 0; i < nfields; i++)
	{
		appendStringInfo(html, "<input type=\"hidden\" name=\"%s\" value=\"", fields[2 * i]);
		es_html_escape(html, fields[2 * i + 1]);
		appendStringInfoString(html, "\">");
	}
	appendStringInfo(html, "<button type=\"submit\" data-action=\"%s\"", action);
	for (int i = 0; i < nfields; i++)
	{
		appendStringInfo(html, " data-%s=\"", fields[2 * i]);
		es_html_escape(html, fields[2 * i + 1]);
		appendStringInfoChar(html, '"');
	}
	appendStringInfo(html, ">%s</button></form>", label);
}

/*
 * es_render_rows
 *		Run a read-only query of the page with text arguments: its rows are
 *		left in SPI_tuptable, their number returned.  Inside SPI.
 */
static uint64
es_render_rows(const char *sql, int nargs, const char **args)
{
	return es_status_rows(sql, nargs, args, true, 0);
}

/*
 * es_render_producers
 *		The producers this site pulls from and, when token is given (the
 *		caller may act), their failed updates with a Resync button each.
 */
static void
es_render_producers(StringInfo html, const char *token)
{
	static const char *const heads[] = {
		"Producer", "State", "Lag", "Received, not applied", "Last pull", "Last success",
		"Last error", "Failed updates", "Tables approved / pending", "Attention", NULL
	};
	static const char *const failed_heads[] = {
		"Id", "Time", "Producer", "Table", "Document", "Update", "Error", "", NULL
	};
	uint64		n;

	appendStringInfoString(html, "<h2 id=\"producers-title\">Producers this site pulls from</h2>\n");
	n = es_render_rows("SELECT producer_url, state, justify_interval(date_trunc('second', lag))::text,"
					   "       updates_received_not_applied::text,"
					   "       to_char(last_pull_at, 'YYYY-MM-DD HH24:MI:SS'),"
					   "       to_char(last_success_at, 'YYYY-MM-DD HH24:MI:SS'),"
					   "       last_error, failed_now::text,"
					   "       tables_approved || ' / ' || tables_pending, attention"
					   "  FROM eventstream.producer_status ORDER BY producer_url", 0, NULL);
	if (n == 0)
	{
		appendStringInfoString(html, "<p class=\"muted\">None.</p>\n");
		return;
	}
	es_render_head(html, "producers", heads);
	for (uint64 i = 0; i < n; i++)
	{
		appendStringInfoString(html, "<tr>");
		es_render_cell(html, es_render_value(i, 1), NULL, false);
		es_render_cell(html, es_render_value(i, 2), "state-", true);
		es_render_cell(html, es_render_value(i, 3), NULL, false);
		es_render_cell(html, es_render_value(i, 4), "num", false);
		es_render_cell(html, es_render_value(i, 5), NULL, false);
		es_render_cell(html, es_render_value(i, 6), NULL, false);
		es_render_cell(html, es_render_value(i, 7), "err", false);
		es_render_cell(html, es_render_value(i, 8), "num", false);
		es_render_cell(html, es_render_value(i, 9), NULL, false);
		es_render_cell(html, es_render_value(i, 10), "err", false);
		appendStringInfoString(html, "</tr>\n");
	}
	appendStringInfoString(html, "</table>\n");
	if (token == NULL)
		return;

	n = es_render_rows("SELECT id::text, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS'), producer_url,"
					   "       ref_table, coalesce(remote_docname, docname), update_type, error"
					   "  FROM eventstream.sync_log WHERE status = 'Failed'"
					   " ORDER BY id DESC LIMIT " CppAsString2(ES_STATUS_FAILED_ROWS), 0, NULL);
	appendStringInfoString(html, "<h3>Failed updates</h3>\n");
	if (n == 0)
	{
		appendStringInfoString(html, "<p class=\"muted\" id=\"no-failed\">None.</p>\n");
		return;
	}
	es_render_head(html, "failed", failed_heads);
	for (uint64 i = 0; i < n; i++)
	{
		const char *id = es_render_value(i, 1);

		appendStringInfoString(html, "<tr>");
		for (int c = 1; c <= 6; c++)
			es_render_cell(html, es_render_value(i, c), c == 1 ? "num" : NULL, false);
		es_render_cell(html, es_render_value(i, 7), "err", false);
		appendStringInfoString(html, "<td>");
		if (token)
		{
			const char *fields[] = {"id", id};

			es_render_button(html, "resync", "Resync", token, 1, fields);
		}
		appendStringInfoString(html, "</td></tr>\n");
	}
	appendStringInfoString(html, "</table>\n");
}

/*
 * es_render_consumers
 *		The consumers that pull from this site and, when token is given
 *		(the caller may act), their subscriptions with Approve / Reject
 *		buttons.
 */
static void
es_render_consumers(StringInfo html, const char *token)
{
	static const char *const heads[] = {
		"Consumer", "Role", "Last pull", "Cursor age", "Updates waiting",
		"Tables approved / pending", "Condition errors", "Aged out", NULL
	};
	static const char *const sub_heads[] = {
		"Consumer", "Table", "Status", "Condition", "Condition error", "", NULL
	};
	uint64		n;

	appendStringInfoString(html, "<h2 id=\"consumers-title\">Consumers that pull from this site</h2>\n");
	n = es_render_rows("SELECT consumer_url, role::text, to_char(last_pull_at, 'YYYY-MM-DD HH24:MI:SS'),"
					   "       justify_interval(date_trunc('second', cursor_age))::text,"
					   "       updates_waiting::text, tables_approved || ' / ' || tables_pending,"
					   "       condition_errors::text, CASE WHEN aged_out THEN 'yes' ELSE 'no' END"
					   "  FROM eventstream.consumer_status ORDER BY consumer_url", 0, NULL);
	if (n == 0)
	{
		appendStringInfoString(html, "<p class=\"muted\">None.</p>\n");
		return;
	}
	es_render_head(html, "consumers", heads);
	for (uint64 i = 0; i < n; i++)
	{
		appendStringInfoString(html, "<tr>");
		for (int c = 1; c <= 8; c++)
			es_render_cell(html, es_render_value(i, c), c == 5 || c == 7 ? "num" : NULL, false);
		appendStringInfoString(html, "</tr>\n");
	}
	appendStringInfoString(html, "</table>\n");
	if (token == NULL)
		return;

	n = es_render_rows("SELECT consumer_url, ref_table, status, condition, condition_error"
					   "  FROM eventstream.consumer_table WHERE NOT unsubscribed"
					   " ORDER BY status <> 'Pending', consumer_url, ref_table", 0, NULL);
	appendStringInfoString(html, "<h3>Subscriptions</h3>\n");
	if (n == 0)
	{
		appendStringInfoString(html, "<p class=\"muted\">None.</p>\n");
		return;
	}
	es_render_head(html, "subscriptions", sub_heads);
	for (uint64 i = 0; i < n; i++)
	{
		const char *consumer = es_render_value(i, 1);
		const char *table = es_render_value(i, 2);
		const char *status = es_render_value(i, 3);

		appendStringInfoString(html, "<tr>");
		es_render_cell(html, consumer, NULL, false);
		es_render_cell(html, table, NULL, false);
		es_render_cell(html, status, "status-", true);
		es_render_cell(html, es_render_value(i, 4), NULL, false);
		es_render_cell(html, es_render_value(i, 5), "err", false);
		appendStringInfoString(html, "<td>");
		if (token)
		{
			const char *fields[] = {"consumer_url", consumer, "ref_table", table};

			if (strcmp(status, "Approved") != 0)
				es_render_button(html, "approve", "Approve", token, 2, fields);
			if (strcmp(status, "Rejected") != 0)
				es_render_button(html, "reject", "Reject", token, 2, fields);
		}
		appendStringInfoString(html, "</td></tr>\n");
	}
	appendStringInfoString(html, "</table>\n");
}

/*
 * es_render_chart
 *		An inline SVG bar chart of the updates this site applied per minute
 *		over the last hour (sync log rows by created_at), Synced and Failed
 *		stacked; each bar's title says its minute and counts.
 */
static void
es_render_chart(StringInfo html)
{
	int			synced[60];
	int			failed[60];
	int			max = 0;
	int			total = 0;
	uint64		n;
	const int	bar = 12;
	const int	height = 120;

	memset(synced, 0, sizeof(synced));
	memset(failed, 0, sizeof(failed));
	n = es_render_rows("SELECT (59 - floor(extract(epoch FROM now() - created_at) / 60))::int AS slot,"
					   "       count(*) FILTER (WHERE status = 'Synced')::text,"
					   "       count(*) FILTER (WHERE status = 'Failed')::text"
					   "  FROM eventstream.sync_log WHERE created_at > now() - interval '1 hour'"
					   " GROUP BY 1", 0, NULL);
	for (uint64 i = 0; i < n; i++)
	{
		int			slot = atoi(es_render_value(i, 1));

		if (slot < 0 || slot > 59)
			continue;
		synced[slot] = atoi(es_render_value(i, 2));
		failed[slot] = atoi(es_render_value(i, 3));
		max = Max(max, synced[slot] + failed[slot]);
		total += synced[slot] + failed[slot];
	}
	appendStringInfo(html, "<h2 id=\"chart-title\">Updates applied per minute, last hour</h2>\n"
					 "<p>%d update(s) in the last hour, at most %d in a minute "
					 "(<span class=\"status-Synced\">synced</span> / "
					 "<span class=\"status-Failed\">failed</span>; the lag of each producer is in its row above).</p>\n",
					 total, max);
	appendStringInfo(html, "<svg id=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
					 "role=\"img\" aria-label=\"updates applied per minute over the last hour\">",
					 60 * bar + 50, height + 25);
	appendStringInfo(html, "<text x=\"%d\" y=\"12\" font-size=\"10\">%d</text>", 60 * bar + 4, max);
	appendStringInfo(html, "<text x=\"%d\" y=\"%d\" font-size=\"10\">0</text>", 60 * bar + 4, height);
	appendStringInfo(html, "<text x=\"0\" y=\"%d\" font-size=\"10\">-60 min</text>", height + 18);
	appendStringInfo(html, "<text x=\"%d\" y=\"%d\" font-size=\"10\">now</text>", 60 * bar - 20, height + 18);
	appendStringInfo(html, "<line x1=\"0\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#999\"/>",
					 height, 60 * bar, height);
	for (int s = 0; s < 60; s++)
	{
		int			hs = max ? synced[s] * (height - 10) / max : 0;
		int			hf = max ? failed[s] * (height - 10) / max : 0;

		if (synced[s] + failed[s] == 0)
			continue;
		if (synced[s] > 0 && hs == 0)
			hs = 1;
		if (failed[s] > 0 && hf == 0)
			hf = 1;
		appendStringInfo(html, "<g><title>%d min ago: %d synced, %d failed</title>", 59 - s, synced[s], failed[s]);
		appendStringInfo(html, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#2a8a3a\"/>",
						 s * bar + 1, height - hs, bar - 2, hs);
		if (hf > 0)
			appendStringInfo(html, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#c0392b\"/>",
							 s * bar + 1, height - hs - hf, bar - 2, hf);
		appendStringInfoString(html, "</g>");
	}
	appendStringInfoString(html, "</svg>\n");
}

/*
 * es_render_param
 *		The GET parameter name of the request, in the database encoding;
 *		NULL when not given or empty.
 */
static const char *
es_render_param(struct MHD_Connection *conn, const char *name)
{
	const char *v = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, name);

	if (v == NULL || v[0] == '\0')
		return NULL;
	return pg_any_to_server(v, strlen(v), PG_UTF8);
}

/*
 * es_render_option
 *		Append an <option> of value (label: the value, or label), selected
 *		when it is current.
 */
static void
es_render_option(StringInfo html, const char *value, const char *label, const char *current)
{
	appendStringInfoString(html, "<option value=\"");
	es_html_escape(html, value);
	appendStringInfoChar(html, '"');
	if ((current == NULL && value[0] == '\0') || (current && strcmp(current, value) == 0))
		appendStringInfoString(html, " selected");
	appendStringInfoChar(html, '>');
	es_html_escape(html, label ? label : value);
	appendStringInfoString(html, "</option>");
}

/*
 * es_render_sync_log
 *		The filter form (GET) and the sync log's latest rows that match it.
 */
static void
es_render_sync_log(StringInfo html, struct MHD_Connection *conn)
{
	static const char *const heads[] = {
		"Id", "Time", "Producer", "Table", "Document", "Update", "Status", "Error / note", NULL
	};
	const char *args[3];
	uint64		n;

	args[0] = es_render_param(conn, "status");
	args[1] = es_render_param(conn, "table");
	args[2] = es_render_param(conn, "producer");

	appendStringInfoString(html, "<h2 id=\"log-title\">Sync log</h2>\n"
						   "<form method=\"get\" action=\"" ES_STATUS_PATH "\" id=\"filters\">"
						   "<label>Status <select name=\"status\">");
	es_render_option(html, "", "any", args[0]);
	es_render_option(html, "Synced", NULL, args[0]);
	es_render_option(html, "Failed", NULL, args[0]);
	appendStringInfoString(html, "</select></label> <label>Table <input name=\"table\" value=\"");
	es_html_escape(html, args[1]);
	appendStringInfoString(html, "\" placeholder=\"schema.table\"></label> "
						   "<label>Producer <select name=\"producer\">");
	es_render_option(html, "", "any", args[2]);
	n = es_render_rows("SELECT producer_url FROM eventstream.producer"
					   " UNION SELECT $1 WHERE $1 IS NOT NULL ORDER BY 1", 1, &args[2]);
	for (uint64 i = 0; i < n; i++)
		es_render_option(html, es_render_value(i, 1), NULL, args[2]);
	appendStringInfoString(html, "</select></label> <button type=\"submit\">Filter</button></form>\n");

	n = es_render_rows("SELECT id::text, to_char(created_at, 'YYYY-MM-DD HH24:MI:SS'), producer_url,"
					   "       ref_table, coalesce(remote_docname, docname), update_type, status,"
					   "       concat_ws(' ', error, note)"
					   "  FROM eventstream.sync_log"
					   " WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR ref_table = $2"
					   "        OR remote_ref_table = $2 OR ref_table = 'public.' || $2)"
					   "   AND ($3 IS NULL OR producer_url = $3)"
					   " ORDER BY id DESC LIMIT " CppAsString2(ES_STATUS_LOG_ROWS), 3, args);
	if (n == 0)
	{
		appendStringInfoString(html, "<p class=\"muted\" id=\"log-empty\">No rows.</p>\n");
		return;
	}
	es_render_head(html, "sync-log", heads);
	for (uint64 i = 0; i < n; i++)
	{
		appendStringInfoString(html, "<tr>");
		for (int c = 1; c <= 6; c++)
			es_render_cell(html, es_render_value(i, c), c == 1 ? "num" : NULL, false);
		es_render_cell(html, es_render_value(i, 7), "status-", true);
		es_render_cell(html, es_render_value(i, 8), "err", false);
		appendStringInfoString(html, "</tr>\n");
	}
	appendStringInfo(html, "</table>\n<p class=\"muted\">The latest %d rows that match.</p>\n",
					 ES_STATUS_LOG_ROWS);
}

/*
 * es_status_render
 *		Append the status page to html for the key's role (its name), with
 *		buttons when admin (token: the form token; NULL otherwise).  In the
 *		request's transaction, connected to SPI.
 */
void
es_status_render(StringInfo html, struct MHD_Connection *conn, const char *role, bool admin,
				 const char *token)
{
	uint64		n;

	appendStringInfo(html, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
					 "<meta name=\"viewport\" content=\"width=device-width\">"
					 "<title>eventstream status</title><style>%s</style></head><body>\n",
					 es_status_css);
	n = es_render_rows("SELECT site_id::text, current_database()::text,"
					   "       to_char(now(), 'YYYY-MM-DD HH24:MI:SS TZ') FROM eventstream.site", 0, NULL);
	appendStringInfoString(html, "<h1>eventstream site ");
	if (n > 0)
	{
		es_html_escape(html, es_render_value(0, 2));
		appendStringInfoString(html, "</h1>\n<p>Site id <code>");
		es_html_escape(html, es_render_value(0, 1));
		appendStringInfoString(html, "</code>, eventstream " EVENTSTREAM_VERSION ", as of ");
		es_html_escape(html, es_render_value(0, 3));
	}
	else
		appendStringInfoString(html, "</h1>\n<p>");
	appendStringInfoString(html, ". Signed in with a key of role <b id=\"role\">");
	es_html_escape(html, role);
	appendStringInfoString(html, "</b>");
	if (admin)
		appendStringInfoString(html, " (eventstream_admin: you may act).</p>\n");
	else
		appendStringInfoString(html, "</p>\n<p class=\"note\" id=\"read-only\">Read only: the role is a member of "
							   "pg_monitor, not of eventstream_admin. It sees what pg_monitor reads "
							   "(producer_status, consumer_status) and the chart; the failed updates, the "
							   "subscriptions, the sync log (which hold rows' data and conditions) and the "
							   "actions are for eventstream_admin.</p>\n");
	appendStringInfoString(html, "<p><a href=\"" ES_STATUS_PATH "\">Reload</a></p>\n");

	es_render_producers(html, token);
	es_render_consumers(html, token);
	es_render_chart(html);
	if (admin)
		es_render_sync_log(html, conn);
	appendStringInfoString(html, "</body></html>\n");
}
