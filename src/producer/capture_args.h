/*-------------------------------------------------------------------------
 *
 * capture_args.h
 *	  The capture trigger's arguments, read (capture_args.c), and what the
 *	  producer's C needs to know of the extension's SQL version.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/producer/capture_args.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef ES_CAPTURE_ARGS_H
#define ES_CAPTURE_ARGS_H

#include "commands/trigger.h"
#include "utils/rel.h"

#define ES_MAX_KEYS INDEX_MAX_KEYS

/*
 * A table a trigger argument names (the parent of a child table, or a
 * child table of a document table), with the child's foreign key columns.
 */
typedef struct EsArgTable
{
	Oid			relid;			/* InvalidOid: the table is gone */
	char	   *ref_table;		/* the name it travels by; NULL: its own */
	const char *fk_names;		/* "fk:" quoted column names, or ... */
	const char *fk_attnums;		/* ... the OID form's attribute numbers */
} EsArgTable;

/* What a capture trigger's arguments say. */
typedef struct EsCaptureArgs
{
	bool		is_child;
	char	   *ref_table;		/* the table's name on the wire; NULL: its own */
	const char *keyarg;			/* key column names, or NULL */
	const char *addedarg;		/* 'added:' column names (added.c), or NULL */
	EsArgTable	parent;			/* child table: its parent */
	int			nchildren;		/* document table: its child tables */
	EsArgTable *children;
} EsCaptureArgs;

extern void es_capture_args_read(Trigger *trig, Relation rel, EsCaptureArgs *args);
extern int	es_arg_fk(Relation rel, const EsArgTable *table, AttrNumber *out);
extern int	es_named_attnums(Relation rel, const char *names, AttrNumber *out);
extern int	es_pk_attnums(Relation rel, AttrNumber *out);
extern bool es_has_function(const char *name, Oid argtype);

#endif							/* ES_CAPTURE_ARGS_H */
