/*-------------------------------------------------------------------------
 *
 * mapping.c
 *	  Consumer side: the SQL expressions of mapping filters.
 *
 * A Document field of a mapping finds its dependency on the producer with
 * remote_value_filters {"remote field": spec}; a spec "eval:<expression>"
 * is one SQL scalar expression evaluated here, on the consumer, with the
 * remote document bound as doc (jsonb), e.g. eval:upper(doc->>'title').
 * The expression is the consumer admin's text, checked when the mapping
 * is written (eventstream._check_filter_expression) the way conditions are
 * (one expression, nothing that could end it early), and evaluated
 * (eventstream._eval_filter) as the subscriber role, read-only, under
 * eventstream.condition_timeout, in a subtransaction rolled back
 * afterwards -- with the checks and the sandbox of the producer's
 * conditions (src/producer/condition.c, src/producer/sandbox.c): an
 * expression naming a SECURITY DEFINER function (or one with SET clauses)
 * is refused when written, and whatever it reaches is refused when it
 * runs.  The rest of mapping (renaming,
 * defaults, child tables, diffs) is in the extension's SQL script; linking
 * the dependencies is in the apply (es_link_value, src/consumer/apply.c).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/mapping.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/json.h"

#include "producer/condition.h"
#include "producer/sandbox.h"

PG_FUNCTION_INFO_V1(eventstream_check_filter_expression);
PG_FUNCTION_INFO_V1(eventstream_eval_filter);

#define ES_FILTER_WHAT "an eval: filter must be a single SQL expression"

/*
 * es_filter_error_context
 *		Error context for checking an eval: filter.
 */
static void
es_filter_error_context(void *arg)
{
	errcontext("eval: filter \"%s\"", (const char *) arg);
}

/*
 * es_check_filter
 *		Raise unless expr is one expression over doc that parses and names
 *		no function the sandbox refuses.  Parse analysis runs in the
 *		sandbox too.
 */
static void
es_check_filter(const char *expr)
{
	SPIPlanPtr volatile plan = NULL;
	Oid			argtypes[1] = {JSONBOID};
	int			nestlevel;
	ErrorContextCallback errcb;

	errcb.callback = es_filter_error_context;
	errcb.arg = unconstify(char *, expr);
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	es_check_expression_tokens(expr, ES_FILTER_WHAT);
	es_check_expression_shape(expr, ES_FILTER_WHAT);

	/* Names resolve as they will when it is evaluated. */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, public", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	es_sandbox_enter("an eval: filter");
	PG_TRY();
	{
		plan = SPI_prepare(psprintf("SELECT (\n%s\n) FROM (SELECT $1 AS doc) AS s", expr), 1, argtypes);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		es_sandbox_check_plan(plan, "an eval: filter", ERRCODE_INVALID_PARAMETER_VALUE);
	}
	PG_FINALLY();
	{
		es_sandbox_leave();
	}
	PG_END_TRY();
	SPI_freeplan(plan);
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
	error_context_stack = errcb.previous;
}

/*
 * eventstream_check_filter_expression
 *		eventstream._check_filter_expression(expr text) → void: raise a
 *		clear error unless expr is one SQL expression over doc (jsonb).
 */
Datum
eventstream_check_filter_expression(PG_FUNCTION_ARGS)
{
	es_check_filter(text_to_cstring(PG_GETARG_TEXT_PP(0)));
	PG_RETURN_VOID();
}

/*
 * eventstream_eval_filter
 *		eventstream._eval_filter(expr text, doc jsonb, role regrole) → jsonb:
 *		the value of expr for the remote document doc, as a JSON string (or
 *		null), evaluated as role in a sandbox (see es_sandboxed_value).  An
 *		error of the expression is raised, with the expression named.
 */
Datum
eventstream_eval_filter(PG_FUNCTION_ARGS)
{
	char	   *expr = text_to_cstring(PG_GETARG_TEXT_PP(0));
	Oid			argtypes[1] = {JSONBOID};
	Datum		values[1];
	char	   *value;
	char	   *error;
	bool		found;
	StringInfoData buf;

	es_check_filter(expr);
	values[0] = PG_GETARG_DATUM(1);
	value = es_sandboxed_value("an eval: filter",
							   psprintf("SELECT (\n%s\n)::text FROM (SELECT $1 AS doc) AS s", expr),
							   PG_GETARG_OID(2), 1, argtypes, values, &found, &error);
	if (error)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("eval: filter \"%s\" failed: %s", expr, error)));
	initStringInfo(&buf);
	if (value == NULL)
		appendStringInfoString(&buf, "null");
	else
		escape_json(&buf, value);
	PG_RETURN_DATUM(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));
}
