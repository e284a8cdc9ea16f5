/*-------------------------------------------------------------------------
 *
 * wire.h
 *	  Text on the wire is UTF-8: src/site/wire.c.
 *
 * Exports the conversions between UTF-8, the encoding of every body and
 * URL the sites exchange, and the database encoding, for the HTTP
 * endpoint (src/http) and the consumer's client (src/consumer).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/wire.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SITE_WIRE_H
#define ES_SITE_WIRE_H

#include "mb/pg_wchar.h"

extern bool es_wire_converts(void);
extern char *es_wire_to_server(const char *s, int len, int *outlen, pg_wchar *bad);
extern char *es_wire_from_server(const char *s, int len, int *outlen);
extern char *es_wire_untranslatable(pg_wchar c);

#endif							/* ES_SITE_WIRE_H */
