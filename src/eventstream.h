/*-------------------------------------------------------------------------
 *
 * eventstream.h
 *	  What every part of the eventstream extension shares.
 *
 * The C code is in four parts, one folder of src/ each:
 *	  producer/  capturing changes into the update log, and serving them
 *	  consumer/  pulling from producers and applying what they send
 *	  http/      the site's HTTP endpoint
 *	  site/      the module's entry point, who may administer a site,
 *				 shared memory, the launcher and the site worker that runs
 *				 the HTTP server and the pulls
 * A file, or a group of files, that others call into has a header next to
 * it saying what it exports; a file reached only from SQL (the extension's
 * script declares its functions) has none.  Headers include no header of
 * another part.  This one keeps what is truly shared: the extension's
 * names and version, the protocol's version and headers, and the apply
 * origin.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/eventstream.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef EVENTSTREAM_H
#define EVENTSTREAM_H

#include "utils/uuid.h"

#define EVENTSTREAM_SCHEMA		"eventstream"
#define EVENTSTREAM_LOG_TABLE	"update_log"
#define EVENTSTREAM_VERSION		ES_VERSION	/* from the Makefile */

/*
 * The protocol between sites (docs/protocol.md).  Every answer of the HTTP
 * endpoint says its version (ES_PROTOCOL_VERSION, from the Makefile) in
 * the first header; a page of updates also says in the others what a
 * consumer needs before it parses the page.
 */
#define ES_PROTOCOL				CppAsString2(ES_PROTOCOL_VERSION)
#define ES_HEADER_PROTOCOL		"Eventstream-Protocol"
#define ES_HEADER_CURSOR		"Eventstream-Cursor"
#define ES_HEADER_MORE			"Eventstream-More"
#define ES_HEADER_COMPLETE		"Eventstream-Complete"
#define ES_HEADER_ACKS			"Eventstream-Acks"

/*
 * The apply origin: the site the change being applied came from, stamped
 * by the capture trigger on every log it writes while set (defined in
 * src/site/eventstream.c; set by _set_origin() and by the apply, read by
 * the capture).
 */
extern bool es_apply_origin_set;
extern pg_uuid_t es_apply_origin;

#endif							/* EVENTSTREAM_H */
