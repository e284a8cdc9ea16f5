/*-------------------------------------------------------------------------
 *
 * apply.c
 *	  Consumer side: running the writes of an apply as the subscriber role.
 *
 * The apply logic (sql/eventstream--1.0.sql, _apply_update) runs as the
 * extension owner, since it keeps the sync log and the cursor; the writes
 * it makes to user tables must carry the privileges of the producer's
 * subscriber role instead, triggers and constraints included.  PL/pgSQL
 * cannot switch roles inside a SECURITY DEFINER function, so those writes
 * go through _exec_as(), which switches the current user around one
 * statement the way PostgreSQL core does for maintenance commands.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/apply.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "eventstream.h"

PG_FUNCTION_INFO_V1(eventstream_exec_as);

/*
 * eventstream_exec_as
 *		_exec_as(role, query, arg jsonb) -> jsonb: run query, with $1 bound
 *		to arg, as role; return the first column of its first row (NULL
 *		when it returns none).
 *
 * The user id is switched with SECURITY_LOCAL_USERID_CHANGE, so the
 * statement cannot SET ROLE its way back; an ERROR restores the previous
 * user through the (sub)transaction abort that follows it.  Not granted
 * to PUBLIC: only the apply functions call it.
 */
Datum
eventstream_exec_as(PG_FUNCTION_ARGS)
{
	Oid			role = PG_GETARG_OID(0);
	char	   *query = text_to_cstring(PG_GETARG_TEXT_PP(1));
	Oid			argtypes[1] = {JSONBOID};
	Datum		args[1];
	char		nulls[1];
	Oid			save_userid;
	int			save_sec_context;
	Datum		result = (Datum) 0;
	bool		isnull = true;
	int			rc;

	args[0] = PG_ARGISNULL(2) ? (Datum) 0 : PG_GETARG_DATUM(2);
	nulls[0] = PG_ARGISNULL(2) ? 'n' : ' ';

	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(role, save_sec_context | SECURITY_LOCAL_USERID_CHANGE);

	SPI_connect();
	rc = SPI_execute_with_args(query, 1, argtypes, args, nulls, false, 0);
	if (rc < 0)
		elog(ERROR, "could not run \"%s\": %s", query, SPI_result_code_string(rc));
	if (SPI_tuptable != NULL && SPI_processed > 0)
	{
		result = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
		if (!isnull)
			result = SPI_datumTransfer(result, false, -1);
	}
	SPI_finish();

	SetUserIdAndSecContext(save_userid, save_sec_context);
	if (isnull)
		PG_RETURN_NULL();
	PG_RETURN_DATUM(result);
}
