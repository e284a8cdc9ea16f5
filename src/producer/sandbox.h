/*-------------------------------------------------------------------------
 *
 * sandbox.h
 *	  The sandbox untrusted expressions (consumers' conditions, eval:
 *	  filters of mappings) run in: src/producer/sandbox.c.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/sandbox.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_SANDBOX_H
#define ES_SANDBOX_H

#include "executor/spi.h"

extern void es_sandbox_init(void);
extern void es_sandbox_enter(const char *what);
extern void es_sandbox_leave(void);
extern bool es_sandbox_role_is_privileged(Oid role);
extern void es_sandbox_check_role(Oid role, const char *what, int sqlerrcode);
extern void es_sandbox_check_function(Oid fn, const char *what, int sqlerrcode);
extern void es_sandbox_check_plan(SPIPlanPtr plan, const char *what, int sqlerrcode);

#endif							/* ES_SANDBOX_H */
