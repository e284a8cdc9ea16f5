/*-------------------------------------------------------------------------
 *
 * keys.c
 *	  API key secrets: comparison in constant time.
 *
 * Secrets are random (about 244 bits) and stored only as SHA-256 of a
 * random per-key salt followed by the secret (eventstream.api_key); the SQL
 * side makes and checks them.  What C adds is the comparison of the stored
 * hash with the one computed from a presented secret, which must not stop
 * at the first differing byte: the time it takes would tell an attacker how
 * much of a forged hash is right.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/keys.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/builtins.h"

PG_FUNCTION_INFO_V1(eventstream_equal_secrets);

/*
 * eventstream_equal_secrets
 *		eventstream._equal_secrets(a bytea, b bytea) → boolean, in time that
 *		depends only on the lengths.
 */
Datum
eventstream_equal_secrets(PG_FUNCTION_ARGS)
{
	bytea	   *a = PG_GETARG_BYTEA_PP(0);
	bytea	   *b = PG_GETARG_BYTEA_PP(1);
	const unsigned char *pa = (const unsigned char *) VARDATA_ANY(a);
	const unsigned char *pb = (const unsigned char *) VARDATA_ANY(b);
	size_t		la = VARSIZE_ANY_EXHDR(a);
	size_t		lb = VARSIZE_ANY_EXHDR(b);
	volatile unsigned char diff = (la == lb) ? 0 : 1;
	size_t		i;

	for (i = 0; i < la && i < lb; i++)
		diff |= pa[i] ^ pb[i];
	PG_RETURN_BOOL(diff == 0);
}
