/*-------------------------------------------------------------------------
 *
 * sandbox.c
 *	  The sandbox untrusted expressions run in: consumers' conditions on
 *	  the producer (src/producer/condition.c) and eval: filters of
 *	  mappings on the consumer (src/consumer/mapping.c).
 *
 * Read-only, SECURITY_RESTRICTED_OPERATION and a rolled-back
 * subtransaction (es_sandboxed_value) stop an expression from writing or
 * changing the session, but not a SECURITY DEFINER function it calls from
 * running with its owner's privileges (COPY ... TO PROGRAM is allowed in a
 * read-only transaction), nor a role that may read files from reading
 * them.  While the sandbox is entered (es_sandbox_enter, always left with
 * es_sandbox_leave, also on error), hooks installed by es_sandbox_init
 * refuse, at any depth:
 *
 *	- calling a SECURITY DEFINER function or a function with SET clauses
 *	  (fmgr_hook: such functions always go through fmgr_security_definer,
 *	  which calls the hook, whether or not their FmgrInfo was built
 *	  before the sandbox was entered; functions with SET clauses are
 *	  never inlined either);
 *	- every utility statement (ProcessUtility_hook): COPY, SET, DO, CALL,
 *	  ... reached from inside a function;
 *	- parallel plans (planner_hook plans without CURSOR_OPT_PARALLEL_OK;
 *	  ExecutorStart_hook refuses a parallel plan made before), so that
 *	  every function runs in this backend, where the hooks see it.
 *
 * Roles that may read or write server files or run programs through
 * plain functions (superusers, members of pg_read_server_files,
 * pg_write_server_files, pg_execute_server_program) are refused as the
 * role of a sandbox (es_sandbox_check_role).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/sandbox.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_proc.h"
#include "executor/executor.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/planner.h"
#include "tcop/cmdtag.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/plancache.h"
#include "utils/syscache.h"

#include "producer/sandbox.h"

/* How many times the sandbox is entered now (0: not in it). */
static int	es_sandbox_depth = 0;

/* What runs in it, for messages ("a condition"), set by the outermost entry. */
static const char *es_sandbox_what = "a condition";

static fmgr_hook_type prev_fmgr_hook = NULL;
static ProcessUtility_hook_type prev_ProcessUtility = NULL;
static planner_hook_type prev_planner = NULL;
static ExecutorStart_hook_type prev_ExecutorStart = NULL;

/*
 * es_sandbox_enter
 *		Enter the sandbox: from now until the matching es_sandbox_leave,
 *		the hooks refuse what the file header lists.  what (a constant
 *		string) names what runs in it, for the messages: "a condition",
 *		"an eval: filter".  The caller must leave it on every path, errors
 *		included (PG_TRY).
 */
void
es_sandbox_enter(const char *what)
{
	if (es_sandbox_depth == 0)
		es_sandbox_what = what;
	es_sandbox_depth++;
}

/*
 * es_sandbox_leave
 *		Leave the sandbox entered by the matching es_sandbox_enter.
 */
void
es_sandbox_leave(void)
{
	if (es_sandbox_depth > 0)
		es_sandbox_depth--;
}

/*
 * es_sandbox_xact_callback
 *		At the end of a transaction nothing is in the sandbox any more:
 *		a safety net should a caller have missed leaving it.
 */
static void
es_sandbox_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PARALLEL_ABORT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_PREPARE)
		es_sandbox_depth = 0;
}

/*
 * es_sandbox_role_is_privileged
 *		Whether role can read or write server files or run programs
 *		through functions that check only its privileges: a superuser or
 *		one with the privileges of pg_read_server_files,
 *		pg_write_server_files or pg_execute_server_program.
 */
bool
es_sandbox_role_is_privileged(Oid role)
{
	return superuser_arg(role) ||
		has_privs_of_role(role, ROLE_PG_READ_SERVER_FILES) ||
		has_privs_of_role(role, ROLE_PG_WRITE_SERVER_FILES) ||
		has_privs_of_role(role, ROLE_PG_EXECUTE_SERVER_PROGRAM);
}

/*
 * es_sandbox_check_role
 *		Raise unless role may be the role of a sandbox; what names what
 *		would run as it ("a condition", "an eval: filter"); sqlerrcode is
 *		the error's (ERRCODE_INSUFFICIENT_PRIVILEGE when evaluating,
 *		ERRCODE_INVALID_PARAMETER_VALUE when refusing what a request gave).
 */
void
es_sandbox_check_role(Oid role, const char *what, int sqlerrcode)
{
	if (es_sandbox_role_is_privileged(role))
	{
		char	   *name = GetUserNameFromId(role, true);

		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("%s cannot run as role \"%s\"", what, name ? name : "?"),
				 errdetail("The role is a superuser or has the privileges of pg_read_server_files, "
						   "pg_write_server_files or pg_execute_server_program, so it could read or "
						   "write the server's files or run programs."),
				 errhint("Use an ordinary role for the API key (producer) or the subscriber (consumer).")));
	}
}

/*
 * es_sandbox_check_function
 *		Raise if function fn may not run in the sandbox: it is SECURITY
 *		DEFINER (it would run with its owner's privileges) or has SET
 *		clauses (which could undo the sandbox's settings).  what names
 *		what calls it, for the message; sqlerrcode as for
 *		es_sandbox_check_role.
 */
void
es_sandbox_check_function(Oid fn, const char *what, int sqlerrcode)
{
	HeapTuple	tup;
	Form_pg_proc proc;
	bool		secdef;
	bool		config;
	StringInfoData name;
	int			i;

	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(fn));
	if (!HeapTupleIsValid(tup))
		return;					/* nothing to call */
	proc = (Form_pg_proc) GETSTRUCT(tup);
	secdef = proc->prosecdef;
	config = !heap_attisnull(tup, Anum_pg_proc_proconfig, NULL);
	if (!secdef && !config)
	{
		ReleaseSysCache(tup);
		return;
	}

	/* schema.name(argument types), the way a user would write it */
	initStringInfo(&name);
	appendStringInfo(&name, "%s(",
					 quote_qualified_identifier(get_namespace_name(proc->pronamespace),
												NameStr(proc->proname)));
	for (i = 0; i < proc->pronargs; i++)
		appendStringInfo(&name, "%s%s", i > 0 ? ", " : "",
						 format_type_be(proc->proargtypes.values[i]));
	appendStringInfoChar(&name, ')');
	ReleaseSysCache(tup);

	if (secdef)
		ereport(ERROR,
				(errcode(sqlerrcode),
				 errmsg("%s may not call function %s: it is SECURITY DEFINER",
						what, name.data),
				 errdetail("Conditions and eval: filters run with the privileges of their role only.")));
	ereport(ERROR,
			(errcode(sqlerrcode),
			 errmsg("%s may not call function %s: it has SET clauses",
					what, name.data),
			 errdetail("A function's settings could undo the settings conditions and eval: filters run with.")));
}

/* What es_sandbox_check_plan's walker passes down. */
typedef struct EsSandboxCheck
{
	const char *what;
	int			sqlerrcode;
} EsSandboxCheck;

/*
 * es_sandbox_function_checker
 *		check_functions_in_node callback: es_sandbox_check_function.
 */
static bool
es_sandbox_function_checker(Oid fn, void *context)
{
	EsSandboxCheck *check = (EsSandboxCheck *) context;

	es_sandbox_check_function(fn, check->what, check->sqlerrcode);
	return false;
}

/*
 * es_sandbox_plan_walker
 *		Check every function a query or expression tree calls, in
 *		subqueries, views (expanded by the rewriter) and row security
 *		quals too.
 */
static bool
es_sandbox_plan_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	if (check_functions_in_node(node, es_sandbox_function_checker, context))
		return true;
	if (IsA(node, Query))
		return query_tree_walker((Query *) node, es_sandbox_plan_walker, context, 0);
	return expression_tree_walker(node, es_sandbox_plan_walker, context);
}

/*
 * es_sandbox_check_plan
 *		Raise if a statement prepared with SPI (analysed and rewritten,
 *		not run) calls a function that may not run in the sandbox, so that
 *		what would be refused when evaluated is refused when written.
 *		Functions called from inside the functions it names are seen only
 *		when it runs (by the hooks).  what and sqlerrcode as for
 *		es_sandbox_check_function.  Inside SPI.
 */
void
es_sandbox_check_plan(SPIPlanPtr plan, const char *what, int sqlerrcode)
{
	EsSandboxCheck check;
	ListCell   *lc;

	check.what = what;
	check.sqlerrcode = sqlerrcode;
	foreach(lc, SPI_plan_get_plan_sources(plan))
	{
		CachedPlanSource *source = (CachedPlanSource *) lfirst(lc);

		(void) es_sandbox_plan_walker((Node *) source->query_list, &check);
	}
}

/*
 * es_sandbox_fmgr_hook
 *		fmgr_hook: in the sandbox, refuse entering a SECURITY DEFINER
 *		function or one with SET clauses.  Raised before the previous
 *		hook sees the start, so it sees no end either.
 */
static void
es_sandbox_fmgr_hook(FmgrHookEventType event, FmgrInfo *flinfo, Datum *private)
{
	if (event == FHET_START && es_sandbox_depth > 0)
		es_sandbox_check_function(flinfo->fn_oid, es_sandbox_what,
								  ERRCODE_INSUFFICIENT_PRIVILEGE);
	if (prev_fmgr_hook)
		(*prev_fmgr_hook) (event, flinfo, private);
}

/*
 * es_sandbox_ProcessUtility
 *		ProcessUtility_hook: in the sandbox, refuse every utility statement.
 */
static void
es_sandbox_ProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
						  ProcessUtilityContext context, ParamListInfo params,
						  QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	if (es_sandbox_depth > 0)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s may not run %s",
						es_sandbox_what, GetCommandTagName(CreateCommandTag(pstmt->utilityStmt))),
				 errdetail("Conditions and eval: filters may only compute a value; utility statements are refused.")));
	if (prev_ProcessUtility)
		(*prev_ProcessUtility) (pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
								queryEnv, dest, qc);
}

/*
 * es_sandbox_planner
 *		planner_hook: in the sandbox, plan without parallel workers (the
 *		hooks would not run in them).
 */
static PlannedStmt *
es_sandbox_planner(Query *parse, const char *query_string, int cursorOptions,
				   ParamListInfo boundParams)
{
	if (es_sandbox_depth > 0)
		cursorOptions &= ~CURSOR_OPT_PARALLEL_OK;
	if (prev_planner)
		return (*prev_planner) (parse, query_string, cursorOptions, boundParams);
	return standard_planner(parse, query_string, cursorOptions, boundParams);
}

/*
 * es_sandbox_ExecutorStart
 *		ExecutorStart_hook: in the sandbox, refuse a parallel plan (one
 *		made and cached before the sandbox was entered).
 */
static void
es_sandbox_ExecutorStart(QueryDesc *queryDesc, int eflags)
{
	if (es_sandbox_depth > 0 && queryDesc->plannedstmt->parallelModeNeeded)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s may not run a parallel plan", es_sandbox_what),
				 errdetail("Parallel workers would run its functions outside the sandbox.")));
	if (prev_ExecutorStart)
		(*prev_ExecutorStart) (queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

/*
 * es_sandbox_init
 *		Install the sandbox's hooks, chained to those installed before.
 *		Called once, from _PG_init.
 */
void
es_sandbox_init(void)
{
	prev_fmgr_hook = fmgr_hook;
	fmgr_hook = es_sandbox_fmgr_hook;
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = es_sandbox_ProcessUtility;
	prev_planner = planner_hook;
	planner_hook = es_sandbox_planner;
	prev_ExecutorStart = ExecutorStart_hook;
	ExecutorStart_hook = es_sandbox_ExecutorStart;
	RegisterXactCallback(es_sandbox_xact_callback, NULL);
}
