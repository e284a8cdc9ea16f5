/*-------------------------------------------------------------------------
 *
 * condition.c
 *	  Consumer conditions: validation when subscribed, evaluation when
 *	  serving.
 *
 * A condition is consumer-supplied text, so it is untrusted input.  It is
 * either one SQL boolean expression over the document row aliased "doc"
 * (e.g. "doc.public" or "doc.docstatus = 1"), or "cmd: schema.function"
 * naming a function (consumer text, doc jsonb, update_log jsonb) returning
 * boolean.
 *
 * Validation (eventstream._check_condition) makes sure the text cannot
 * escape the parentheses it is later wrapped in: the core scanner must see
 * balanced parentheses and no ";", the raw parser must see exactly one
 * SELECT of one expression, and parse analysis against the table, as the
 * consumer's role, must accept it as a boolean WHERE clause calling no
 * function the sandbox refuses (src/producer/sandbox.c).  A consumer's
 * role that the sandbox refuses (one that may read server files) cannot
 * have conditions at all.
 *
 * Evaluation (eventstream._condition_allows) runs the expression against
 * the document's current row in a subtransaction that is always rolled
 * back, as the consumer's role, with transaction_read_only on and
 * SECURITY_RESTRICTED_OPERATION set, in the sandbox (no SECURITY DEFINER
 * function, no utility statement, no parallel worker), so a condition can
 * neither write nor change session state nor read what the consumer's
 * role cannot, not even through a function that runs as its owner.  An
 * error denies the document and is recorded in eventstream.consumer_table.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/condition.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "common/keywords.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "parser/parser.h"
#include "parser/scanner.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/regproc.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "storage/latch.h"
#include "storage/lock.h"

#include "producer/condition.h"
#include "producer/rowjson.h"
#include "producer/sandbox.h"
#include "site/worker.h"

PG_FUNCTION_INFO_V1(eventstream_check_condition);
PG_FUNCTION_INFO_V1(eventstream_condition_allows);

#define CMD_PREFIX "cmd:"

static Oid	es_condition_function(const char *spec, bool missing_ok);
static void es_condition_error_context(void *arg);

/*
 * es_is_cmd
 *		Whether condition (already trimmed) is a "cmd:" condition.
 */
static bool
es_is_cmd(const char *cond)
{
	return pg_strncasecmp(cond, CMD_PREFIX, strlen(CMD_PREFIX)) == 0;
}

/*
 * es_condition_function
 *		Resolve the function named by a "cmd:" condition.
 *
 * It must take (text, jsonb, jsonb) and return a single boolean; a name
 * without a schema is looked up in public, not along search_path (which is
 * pinned while serving).  With missing_ok, InvalidOid is returned instead
 * of an error for a function that is missing or does not return boolean
 * (it may have been dropped or replaced since the condition was set).
 */
static Oid
es_condition_function(const char *spec, bool missing_ok)
{
	const char *name = spec + strlen(CMD_PREFIX);
	Oid			argtypes[3] = {TEXTOID, JSONBOID, JSONBOID};
	List	   *names;
	Oid			fn;

	while (*name == ' ' || *name == '\t' || *name == '\n')
		name++;
	if (*name == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("condition \"%s\" names no function", spec),
				 errhint("Write cmd: schema.function, for a function (consumer text, doc jsonb, update_log jsonb) returning boolean.")));
	names = stringToQualifiedNameList(name);
	/* Like table names on the wire, a bare name means schema public. */
	if (list_length(names) == 1)
		names = lcons(makeString(pstrdup("public")), names);
	fn = LookupFuncName(names, 3, argtypes, true);
	if (!OidIsValid(fn))
	{
		if (missing_ok)
			return InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s(text, jsonb, jsonb) does not exist",
						NameListToString(names)),
				 errhint("A cmd: condition names a function (consumer text, doc jsonb, update_log jsonb) returning boolean.")));
	}
	if ((get_func_rettype(fn) != BOOLOID || get_func_retset(fn)) && missing_ok)
		return InvalidOid;
	if (get_func_rettype(fn) != BOOLOID || get_func_retset(fn))
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("function %s must return boolean",
						format_procedure(fn)),
				 errhint("A cmd: condition names a function (consumer text, doc jsonb, update_log jsonb) returning boolean.")));
	return fn;
}

/*
 * es_check_expression_tokens
 *		Reject text whose tokens could end the expression early: unbalanced
 *		parentheses or a ";".  Comments and literals are single tokens (or
 *		none), so they cannot hide either.  what says what the text is, for
 *		the message ("condition must be a single boolean expression").
 */
void
es_check_expression_tokens(const char *cond, const char *what)
{
	core_yyscan_t scanner;
	core_yy_extra_type extra;
	core_YYSTYPE yylval;
	YYLTYPE		yylloc;
	int			depth = 0;
	int			ntokens = 0;

	scanner = scanner_init(cond, &extra, &ScanKeywords, ScanKeywordTokens);
	for (;;)
	{
		int			tok = core_yylex(&yylval, &yylloc, scanner);

		if (tok == 0)
			break;
		ntokens++;
		if (tok == '(')
			depth++;
		else if (tok == ')' && --depth < 0)
			break;
		else if (tok == ';')
			ereport(ERROR,
					(errcode(ERRCODE_SYNTAX_ERROR),
					 errmsg("%s", what),
					 errdetail("It contains \";\", which would start another statement.")));
	}
	scanner_finish(scanner);
	if (depth != 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s", what),
				 errdetail("Its parentheses are not balanced.")));
	if (ntokens == 0)
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s", what),
				 errdetail("It is empty.")));
}

/*
 * es_check_expression_shape
 *		The raw parser must see "SELECT (cond)" as one plain SELECT of one
 *		target and nothing else.  what as for es_check_expression_tokens.
 */
void
es_check_expression_shape(const char *cond, const char *what)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *volatile raw = NIL;
	RawStmt    *rs;
	SelectStmt *s;

	/* A syntax error is reported as what it is not, with the parser's word. */
	PG_TRY();
	{
		raw = raw_parser(psprintf("SELECT (\n%s\n)", cond), RAW_PARSE_DEFAULT);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_SYNTAX_ERROR)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_SYNTAX_ERROR),
				 errmsg("%s", what),
				 errdetail("The parser says: %s.", edata->message)));
	}
	PG_END_TRY();

	if (list_length(raw) == 1)
	{
		rs = linitial_node(RawStmt, raw);
		if (IsA(rs->stmt, SelectStmt))
		{
			s = (SelectStmt *) rs->stmt;
			if (s->op == SETOP_NONE && list_length(s->targetList) == 1 &&
				s->fromClause == NIL && s->whereClause == NULL &&
				s->groupClause == NIL && s->havingClause == NULL &&
				s->windowClause == NIL && s->valuesLists == NIL &&
				s->sortClause == NIL && s->limitOffset == NULL &&
				s->limitCount == NULL && s->lockingClause == NIL &&
				s->withClause == NULL && s->distinctClause == NIL &&
				s->intoClause == NULL)
				return;
		}
	}
	ereport(ERROR,
			(errcode(ERRCODE_SYNTAX_ERROR),
			 errmsg("%s", what)));
}

/*
 * es_condition_error_context
 *		Error context for checking a condition.
 */
static void
es_condition_error_context(void *arg)
{
	errcontext("condition \"%s\"", (const char *) arg);
}

/*
 * es_prepare_condition
 *		Parse, analyse and rewrite (not plan, not run) the condition cond
 *		against the table relname as role would when it is evaluated:
 *		as that role, with search_path pg_catalog, public, in the sandbox;
 *		and refuse it if it names a function the sandbox refuses.  Errors
 *		are raised (the caller's user and security context are restored).
 *		Inside a transaction.
 */
static void
es_prepare_condition(const char *relname, const char *cond, Oid role)
{
	Oid			save_userid;
	int			save_sec;
	int			nestlevel;
	char	   *sql = psprintf("SELECT 1 FROM %s AS doc WHERE (\n%s\n)", relname, cond);

	GetUserIdAndSecContext(&save_userid, &save_sec);
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, public", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	SPI_connect();
	es_sandbox_enter("a condition");
	PG_TRY();
	{
		SPIPlanPtr	plan;

		SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		plan = SPI_prepare(sql, 0, NULL);
		if (plan == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
		es_sandbox_check_plan(plan, "a condition", ERRCODE_INVALID_PARAMETER_VALUE);
	}
	PG_FINALLY();
	{
		es_sandbox_leave();
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	SPI_finish();
	AtEOXact_GUC(true, nestlevel);
}

/*
 * eventstream_check_condition
 *		eventstream._check_condition(tbl regclass, condition text,
 *			role regrole) → text
 *
 * Returns the condition trimmed, NULL for a NULL or blank one, or raises a
 * clear error: the text is not one boolean expression over the table (or
 * a cmd: naming a function (text, jsonb, jsonb) returning boolean), or it
 * calls a function the sandbox refuses, or role (the consumer's) is one
 * the sandbox refuses.  A refusal is ERRCODE_INVALID_PARAMETER_VALUE: the
 * HTTP API answers it with 400.  Must be called inside SPI-capable
 * context (any SQL call).
 */
Datum
eventstream_check_condition(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Oid			role;
	char	   *cond;
	ErrorContextCallback errcb;

	if (PG_ARGISNULL(1))
		PG_RETURN_NULL();
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the role of a condition must not be NULL")));
	role = PG_GETARG_OID(2);
	cond = text_to_cstring(PG_GETARG_TEXT_PP(1));
	while (*cond == ' ' || *cond == '\t' || *cond == '\n' || *cond == '\r')
		cond++;
	{
		int			len = strlen(cond);

		while (len > 0 && (cond[len - 1] == ' ' || cond[len - 1] == '\t' ||
						   cond[len - 1] == '\n' || cond[len - 1] == '\r'))
			cond[--len] = '\0';
		if (len == 0)
			PG_RETURN_NULL();
	}

	errcb.callback = es_condition_error_context;
	errcb.arg = cond;
	errcb.previous = error_context_stack;
	error_context_stack = &errcb;

	es_sandbox_check_role(role, "a condition", ERRCODE_INVALID_PARAMETER_VALUE);
	if (es_is_cmd(cond))
		es_sandbox_check_function(es_condition_function(cond, false), "a condition",
								  ERRCODE_INVALID_PARAMETER_VALUE);
	else
	{
		Relation	rel;
		char	   *relname;

		es_check_expression_tokens(cond, "condition must be a single boolean expression");
		es_check_expression_shape(cond, "condition must be a single boolean expression");

		rel = table_open(relid, AccessShareLock);
		relname = es_scan_relname(rel);
		table_close(rel, AccessShareLock);
		es_prepare_condition(relname, cond, role);
	}

	error_context_stack = errcb.previous;
	PG_RETURN_TEXT_P(cstring_to_text(cond));
}

/*
 * es_docname_match
 *		SQL matching rel's primary key (aliased doc) against a docname given
 *		as text parameter $paramno: "doc.id = $2::integer", or for composite
 *		keys "doc.a = ($2::jsonb->>0)::text AND doc.b = ...".
 */
char *
es_docname_match(Relation rel, int paramno)
{
	Oid			pkoid = RelationGetPrimaryKeyIndex(rel);
	Relation	idx;
	StringInfoData buf;
	int			n,
				i;

	if (!OidIsValid(pkoid))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
				 errmsg("table \"%s\" has no primary key", RelationGetRelationName(rel))));
	idx = index_open(pkoid, AccessShareLock);
	n = idx->rd_index->indnkeyatts;
	initStringInfo(&buf);
	for (i = 0; i < n; i++)
	{
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel),
											  idx->rd_index->indkey.values[i] - 1);
		char	   *type = format_type_be_qualified(att->atttypid);

		if (n == 1)
			appendStringInfo(&buf, "doc.%s OPERATOR(pg_catalog.=) $%d::%s",
							 quote_identifier(NameStr(att->attname)), paramno, type);
		else
			appendStringInfo(&buf, "%sdoc.%s OPERATOR(pg_catalog.=) ($%d::pg_catalog.jsonb OPERATOR(pg_catalog.->>) %d)::%s",
							 i > 0 ? " AND " : "",
							 quote_identifier(NameStr(att->attname)), paramno, i, type);
	}
	index_close(idx, AccessShareLock);
	return buf.data;
}

/*
 * es_record_condition_error
 *		Remember the latest condition error where the producer admin sees it.
 */
static void
es_record_condition_error(text *consumer, text *ref_table, const char *msg)
{
	Oid			argtypes[3] = {TEXTOID, TEXTOID, TEXTOID};
	Datum		values[3];

	values[0] = PointerGetDatum(consumer);
	values[1] = PointerGetDatum(ref_table);
	values[2] = CStringGetTextDatum(msg);
	SPI_connect();
	SPI_execute_with_args("UPDATE eventstream.consumer_table"
						  "   SET condition_error = $3, condition_error_at = pg_catalog.now()"
						  " WHERE consumer_url = $1 AND ref_table = $2",
						  3, argtypes, values, NULL, false, 0);
	SPI_finish();
}

/* GUC: longest a condition may run for one document (ms). */
int			es_condition_timeout = 100;

static TimeoutId es_condition_timer = MAX_TIMEOUTS;
static volatile sig_atomic_t es_condition_timed_out = false;

/*
 * es_condition_timeout_handler
 *		Timer handler: cancel the condition that is running, the way
 *		statement_timeout does.
 */
static void
es_condition_timeout_handler(void)
{
	es_condition_timed_out = true;
	QueryCancelPending = true;
	InterruptPending = true;
	SetLatch(MyLatch);
}

/*
 * es_sandboxed_value
 *		Run sql (one SELECT) with the given parameters as role, read-only,
 *		with search_path pg_catalog, public, under SECURITY_RESTRICTED_OPERATION
 *		and eventstream.condition_timeout, in the sandbox (sandbox.c), in a
 *		subtransaction that is always rolled back: whatever the statement
 *		did, it did not happen.  A role the sandbox refuses is an error.
 *		what names what runs ("a condition"), a constant string.
 *
 * Returns the first column of the first row as text (NULL for SQL NULL);
 * *found says whether there was a row.  An error (or the timeout) is not
 * raised: its message is returned in *error, with *found false.  The caller
 * must be in a transaction; its memory context and resource owner are kept.
 * The timeout's message is "ran longer than ...", to follow a subject.
 */
char *
es_sandboxed_value(const char *what, const char *sql, Oid role, int nargs,
				   Oid *argtypes, Datum *values, bool *found, char **error)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Oid			save_userid;
	int			save_sec;
	char	   *volatile value = NULL;
	volatile bool sandboxed = true;

	*found = false;
	*error = NULL;
	GetUserIdAndSecContext(&save_userid, &save_sec);
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);

	es_sandbox_enter(what);
	PG_TRY();
	{
		int			rc;

		es_sandbox_check_role(role, what, ERRCODE_INSUFFICIENT_PRIVILEGE);
		SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
							   SECURITY_RESTRICTED_OPERATION);
		(void) set_config_option("transaction_read_only", "on", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		(void) set_config_option("search_path", "pg_catalog, public", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);

		SPI_connect();
		if (es_condition_timer == MAX_TIMEOUTS)
			es_condition_timer = RegisterTimeout(USER_TIMEOUT, es_condition_timeout_handler);
		es_condition_timed_out = false;
		if (es_condition_timeout > 0)
			enable_timeout_after(es_condition_timer, es_condition_timeout);
		rc = SPI_execute_with_args(sql, nargs, argtypes, values, NULL, true, 1);
		disable_timeout(es_condition_timer, false);
		if (es_condition_timed_out)
		{
			/* Fired too late to cancel anything: forget it. */
			es_condition_timed_out = false;
			QueryCancelPending = false;
		}
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
		if (SPI_processed > 0)
		{
			char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

			*found = true;
			value = v ? MemoryContextStrdup(oldcxt, v) : NULL;
		}
		SPI_finish();

		es_sandbox_leave();
		sandboxed = false;
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		if (sandboxed)
			es_sandbox_leave();
		disable_timeout(es_condition_timer, false);
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (es_condition_timed_out)
			*error = psprintf("ran longer than eventstream.condition_timeout (%d ms)",
							  es_condition_timeout);
		else
			*error = pstrdup(edata->message);
		es_condition_timed_out = false;
		FreeErrorData(edata);
		*found = false;
		value = NULL;
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);

	/*
	 * Session-level advisory locks survive the rollback of the
	 * subtransaction.  The site worker holds none of its own, so whatever
	 * it holds now the statement took: release it, or the producer's admin
	 * functions could wait on the worker forever.
	 */
	if (es_in_site_worker)
		LockReleaseSession(USER_LOCKMETHOD);
	return value;
}

/*
 * eventstream_condition_allows
 *		eventstream._condition_allows(consumer text, tbl regclass,
 *			ref_table text, condition text, role regrole, docname text,
 *			log jsonb) → boolean
 *
 * true: the document exists and satisfies the condition; false: it exists
 * and does not, or evaluating the condition failed (the error is recorded
 * and a WARNING logged); NULL: the document no longer exists.
 */
Datum
eventstream_condition_allows(PG_FUNCTION_ARGS)
{
	text	   *consumer = PG_GETARG_TEXT_PP(0);
	Oid			relid = PG_GETARG_OID(1);
	text	   *ref_table = PG_GETARG_TEXT_PP(2);
	char	   *cond = text_to_cstring(PG_GETARG_TEXT_PP(3));
	Oid			role = PG_GETARG_OID(4);
	Relation	rel;
	char	   *sql;
	char	   *match;
	char	   *relname;
	Oid			argtypes[3] = {TEXTOID, TEXTOID, JSONBOID};
	Datum		values[3];
	char	   *value = NULL;
	char	   *error = NULL;
	bool		found = false;

	rel = table_open(relid, AccessShareLock);
	match = es_docname_match(rel, 2);
	relname = es_scan_relname(rel);
	table_close(rel, AccessShareLock);

	if (es_is_cmd(cond))
	{
		/* Dropped or replaced since it was set: a failing condition. */
		Oid			fn = es_condition_function(cond, true);

		sql = !OidIsValid(fn) ? NULL :
			psprintf("SELECT %s.%s($1, pg_catalog.to_jsonb(doc), $3) FROM %s AS doc WHERE %s",
					 quote_identifier(get_namespace_name(get_func_namespace(fn))),
					 quote_identifier(get_func_name(fn)), relname, match);
	}
	else
		sql = psprintf("SELECT (\n%s\n) FROM %s AS doc WHERE %s",
					   cond, relname, match);

	values[0] = PointerGetDatum(consumer);
	values[1] = PG_GETARG_DATUM(5);
	values[2] = PG_GETARG_DATUM(6);
	if (sql == NULL)
		error = psprintf("the function of condition \"%s\" does not exist or does not return boolean", cond);
	else
		value = es_sandboxed_value("a condition", sql, role, 3, argtypes, values, &found, &error);

	if (error)
	{
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("condition of consumer \"%s\" on table \"%s\" failed: %s",
						text_to_cstring(consumer), text_to_cstring(ref_table), error),
				 errdetail("The document is not served to that consumer.")));
		es_record_condition_error(consumer, ref_table, error);
		PG_RETURN_BOOL(false);
	}
	if (!found)
		PG_RETURN_NULL();
	PG_RETURN_BOOL(value != NULL && strcmp(value, "t") == 0);
}
