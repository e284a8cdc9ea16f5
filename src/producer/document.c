/*-------------------------------------------------------------------------
 *
 * document.c
 *	  Reading one whole document (row plus child rows) by its docname.
 *
 * eventstream._document(tbl, docname) renders a document exactly as the
 * capture trigger renders a Create, so that whatever reads documents on the
 * producer (condition backlog, the documents and snapshot endpoints, the
 * consumer's dependency fetches) sees one format.
 *
 * eventstream._document_as(tbl, docname, role) reads it as an API key's
 * role: its row-level security policies and column privileges apply, so a
 * row it may not see is no document, and columns it may not read are left
 * out (of the row and of the child rows).  _rls_applies(tbl, role) says
 * whether row-level security restricts what role reads of tbl, and
 * _value_as(query, role, arg) runs a query of the serving functions as the
 * role (see docs/security.md, "Row-level security and column privileges").
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/document.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "producer/capture_args.h"
#include "producer/condition.h"
#include "producer/rowjson.h"

PG_FUNCTION_INFO_V1(eventstream_document);
PG_FUNCTION_INFO_V1(eventstream_rls_applies);
PG_FUNCTION_INFO_V1(eventstream_value_as);

/*
 * es_readable_list
 *		The select list of the columns of rel that role may read: "*" when
 *		it may read the table, else its readable columns by name, each
 *		after qual ("doc." or ""), or NULL when it may read none.
 */
static char *
es_readable_list(Relation rel, Oid role, const char *qual)
{
	TupleDesc	desc = RelationGetDescr(rel);
	StringInfoData buf;

	if (pg_class_aclcheck(RelationGetRelid(rel), role, ACL_SELECT) == ACLCHECK_OK)
		return "*";
	initStringInfo(&buf);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped ||
			pg_attribute_aclcheck(RelationGetRelid(rel), att->attnum, role, ACL_SELECT) != ACLCHECK_OK)
			continue;
		appendStringInfo(&buf, "%s%s%s", buf.len > 0 ? ", " : "", qual,
						 quote_identifier(NameStr(att->attname)));
	}
	return buf.len > 0 ? buf.data : NULL;
}

/*
 * es_execute_as
 *		SPI_execute_with_args(sql) as role (InvalidOid: as the caller), read
 *		only; nulls as SPI takes them; the caller is connected to SPI.  The role's row-level security
 *		and privileges apply, under SECURITY_RESTRICTED_OPERATION (what the
 *		table owner's policies call cannot change the session).  The user
 *		id is given back on error too.
 */
static int
es_execute_as(const char *sql, Oid role, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls, long count)
{
	Oid			save_userid;
	int			save_sec;
	volatile int rc = 0;

	if (!OidIsValid(role))
		return SPI_execute_with_args(sql, nargs, argtypes, values, nulls, true, count);
	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(role, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		rc = SPI_execute_with_args(sql, nargs, argtypes, values, nulls, true, count);
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
	return rc;
}

/*
 * es_push_rows
 *		Push every row of the current SPI result as an object.
 */
static void
es_push_rows(JsonbParseState **st)
{
	EsEncoder  *enc = es_encoder_build(SPI_tuptable->tupdesc, NULL, 0,
									   CurrentMemoryContext);
	uint64		i;

	for (i = 0; i < SPI_processed; i++)
		es_row_to_jsonb(st, enc, SPI_tuptable->vals[i], SPI_tuptable->tupdesc, true);
}

/*
 * eventstream_document
 *		eventstream._document(tbl regclass, docname text) → jsonb
 *		eventstream._document_as(tbl regclass, docname text, role regrole) → jsonb
 *
 * NULL when no such row exists.  _document reads with the caller's
 * privileges.  _document_as reads the rows as role: a row its policies hide
 * is no document, and only the columns it may read are in it.  A child
 * table whose key or foreign key columns role may not read is left out of
 * the document (its rows cannot be told apart or found).
 */
Datum
eventstream_document(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Datum		docname = PG_GETARG_DATUM(1);
	Oid			role = PG_NARGS() > 2 ? PG_GETARG_OID(2) : InvalidOid;
	char	   *cols = "*";
	MemoryContext callercxt = CurrentMemoryContext;
	JsonbParseState *st = NULL;
	Relation	rel;
	char	   *relname;
	char	   *match;
	Oid			argtypes[3] = {TEXTOID, OIDOID, OIDOID};
	Datum		values[3];
	int			rc;
	uint64		nchildren,
				i;
	SPITupleTable *children;
	bool		isnull;
	Jsonb	   *result;
	MemoryContext spicxt;
	int			styles;

	styles = es_output_styles_push();
	rel = table_open(relid, AccessShareLock);
	relname = es_scan_relname(rel);
	match = es_docname_match(rel, 1);
	if (OidIsValid(role))
		cols = es_readable_list(rel, role, "doc.");
	table_close(rel, AccessShareLock);
	if (cols == NULL)
	{
		es_output_styles_pop(styles);
		PG_RETURN_NULL();
	}

	SPI_connect();
	values[0] = docname;
	rc = es_execute_as(psprintf("SELECT %s FROM %s AS doc WHERE %s",
								cols, relname, match),
					   role, 1, argtypes, values, NULL, 2);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed == 0)
	{
		SPI_finish();
		es_output_styles_pop(styles);
		PG_RETURN_NULL();
	}

	/* The jsonb parse state must outlive SPI_finish: build it outside. */
	spicxt = MemoryContextSwitchTo(callercxt);
	{
		EsEncoder  *enc = es_encoder_build(SPI_tuptable->tupdesc, NULL, 0, callercxt);

		es_row_to_jsonb(&st, enc, SPI_tuptable->vals[0], SPI_tuptable->tupdesc, false);
	}
	MemoryContextSwitchTo(spicxt);

	/*
	 * Child tables: their published name (the wire name under the SQL of
	 * version 1.0), a query for the rows of this parent and, read as a
	 * role, whether it may read the child's key and foreign key columns
	 * (the catalogs are read as the caller).
	 */
	values[1] = ObjectIdGetDatum(relid);
	values[2] = ObjectIdGetDatum(role);
	rc = SPI_execute_with_args(psprintf("SELECT eventstream.%s(child),"
										"       eventstream._child_rows_query(child, parent), child::oid, %s"
										"  FROM eventstream.child_table WHERE parent = $2"
										" ORDER BY 1",
										es_has_function("_published_name", REGCLASSOID) ?
										"_published_name" : "_wire_name",
										OidIsValid(role) ?
										"NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(eventstream._pk_attnums(child)"
										"  OPERATOR(pg_catalog.||) pg_catalog.string_to_array(eventstream._fk_attnums(child, parent, fk_name), ',')::pg_catalog.int2[]) k(a)"
										" WHERE NOT pg_catalog.has_column_privilege($3, child, k.a, 'SELECT'))"
										" AND eventstream._fk_attnums(child, parent, fk_name) IS NOT NULL" :
										"true"),
							   3, argtypes, values, NULL, true, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	children = SPI_tuptable;
	nchildren = SPI_processed;
	for (i = 0; i < nchildren; i++)
	{
		char	   *key = SPI_getvalue(children->vals[i], children->tupdesc, 1);
		char	   *query = SPI_getvalue(children->vals[i], children->tupdesc, 2);
		char	   *readable = SPI_getvalue(children->vals[i], children->tupdesc, 4);

		if (OidIsValid(role))
		{
			Oid			child = DatumGetObjectId(SPI_getbinval(children->vals[i], children->tupdesc, 3, &isnull));
			Relation	crel;
			char	   *ccols;

			/* "SELECT * FROM ...": only the columns role may read. */
			if (readable == NULL || strcmp(readable, "t") != 0 ||
				strncmp(query, "SELECT * ", 9) != 0)
				continue;
			crel = table_open(child, AccessShareLock);
			ccols = es_readable_list(crel, role, "");
			table_close(crel, AccessShareLock);
			if (ccols == NULL)
				continue;
			query = psprintf("SELECT %s %s", ccols, query + 9);
		}
		rc = es_execute_as(query, role, 1, argtypes, values, NULL, 0);
		if (rc != SPI_OK_SELECT)
			elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
		MemoryContextSwitchTo(callercxt);
		key = pstrdup(key);
		es_push_key(&st, key, strlen(key));
		pushJsonbValue(&st, WJB_BEGIN_ARRAY, NULL);
		es_push_rows(&st);
		pushJsonbValue(&st, WJB_END_ARRAY, NULL);
		MemoryContextSwitchTo(spicxt);
	}

	MemoryContextSwitchTo(callercxt);
	result = JsonbValueToJsonb(pushJsonbValue(&st, WJB_END_OBJECT, NULL));
	MemoryContextSwitchTo(spicxt);
	SPI_finish();
	es_output_styles_pop(styles);
	PG_RETURN_JSONB_P(result);
}

/*
 * eventstream_rls_applies
 *		eventstream._rls_applies(tbl regclass, role regrole) → boolean
 *
 * Whether row-level security restricts what role reads of tbl, by
 * PostgreSQL's own rule (check_enable_rls): the table has row security
 * enabled and role is no superuser, has no BYPASSRLS and is not the owner
 * (or the table forces row security on its owner too).  The row_security
 * setting is not consulted: served rows always honour the policies.
 */
Datum
eventstream_rls_applies(PG_FUNCTION_ARGS)
{
	PG_RETURN_BOOL(check_enable_rls(PG_GETARG_OID(0), PG_GETARG_OID(1), true) == RLS_ENABLED);
}

/*
 * eventstream_value_as
 *		eventstream._value_as(query text, role regrole, arg text) → text
 *
 * Run query (one SELECT; arg is its $1) as role, its row-level security
 * and privileges applying, and return the first column of its first row
 * as text (NULL when there is none).  For the serving functions, which
 * build the query from catalogs and run as the extension's owner: a
 * role's missing privilege raises insufficient_privilege.
 */
Datum
eventstream_value_as(PG_FUNCTION_ARGS)
{
	char	   *query;
	Oid			role;
	Oid			argtypes[1] = {TEXTOID};
	Datum		values[1] = {PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2)};
	char		nulls[1] = {PG_ARGISNULL(2) ? 'n' : ' '};
	MemoryContext callercxt = CurrentMemoryContext;
	int			rc;
	text	   *result = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		PG_RETURN_NULL();
	query = text_to_cstring(PG_GETARG_TEXT_PP(0));
	role = PG_GETARG_OID(1);
	SPI_connect();
	rc = es_execute_as(query, role, 1, argtypes, values, nulls, 1);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(rc));
	if (SPI_processed > 0)
	{
		char	   *v = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);

		if (v != NULL)
		{
			MemoryContext spicxt = MemoryContextSwitchTo(callercxt);

			result = cstring_to_text(v);
			MemoryContextSwitchTo(spicxt);
		}
	}
	SPI_finish();
	if (result == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(result);
}
