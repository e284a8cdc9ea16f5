/*-------------------------------------------------------------------------
 *
 * apply_truncate.c
 *	  Consumer side: applying a Truncate, the producer's TRUNCATE of a
 *	  subscribed table.
 *
 * As a logical replication subscriber does, the apply empties the whole
 * local table the subscription writes into (the mapping's local table for
 * a mapped one), rows other producers or local users wrote included:
 *
 *	  - with TRUNCATE, when no other table refers to it by a foreign key and
 *		the subscriber role may truncate it (TRUNCATE triggers enabled
 *		REPLICA or ALWAYS fire, as on a subscriber);
 *	  - otherwise by deleting every row, as the subscriber, with the
 *		foreign keys that refer to the table kept as a DELETE keeps them
 *		(apply_fk.c under the replica role, their own triggers otherwise):
 *		ON DELETE CASCADE takes the referring rows along, SET NULL and SET
 *		DEFAULT set them, and a referring row under NO ACTION or RESTRICT
 *		fails the update, which rolls back and is a Failed, resyncable
 *		entry of the sync log.  (Logical replication's TRUNCATE refuses a
 *		table other tables refer to, whatever their rows.)
 *
 * What the consumer keeps per row of the table goes with the rows: the
 * remote names of use_same_name = false subscriptions (remote_document).
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/apply_truncate.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "consumer/apply.h"

/*
 * es_referred
 *		Whether a foreign key of another table refers to relid (what makes
 *		TRUNCATE refuse it).  The caller is connected to SPI.
 */
static bool
es_referred(Oid relid)
{
	char		arg[64];
	Jsonb	   *res;

	snprintf(arg, sizeof(arg), "{\"r\": %u}", relid);
	res = es_run(InvalidOid,
				 "SELECT pg_catalog.to_jsonb(EXISTS (SELECT 1 FROM pg_catalog.pg_constraint c"
				 "  WHERE c.contype = 'f' AND c.confrelid = ($1->>'r')::pg_catalog.oid"
				 "    AND c.conrelid <> ($1->>'r')::pg_catalog.oid))",
				 es_jsonb_parse(arg));
	return res != NULL && strcmp(es_scalar_text(res), "true") == 0;
}

/*
 * es_apply_truncate
 *		Empty local table t for a Truncate (see the file header), in the
 *		caller's subtransaction; raises on failure.  Returns a note saying
 *		how, for the sync log.  The caller is connected to SPI.
 */
char *
es_apply_truncate(EsApply *a, EsTable *t)
{
	char		arg[64];
	char	   *note;

	if (!es_referred(t->relid) &&
		pg_class_aclcheck(t->relid, a->subscriber, ACL_TRUNCATE) == ACLCHECK_OK)
	{
		(void) es_run(a->subscriber, psprintf("TRUNCATE %s", t->qualname), NULL);
		note = psprintf("%s truncated", t->qualname);
	}
	else if (es_fk_has(t, false))
	{
		/* The apply keeps the keys referring to t: it needs every row. */
		Jsonb	   *gone = es_run(a->subscriber,
								  psprintf("WITH d AS (DELETE FROM %s t RETURNING eventstream._row_json(t.*) AS row)"
										   " SELECT pg_catalog.jsonb_agg(d.row) FROM d", t->qualname),
								  NULL);
		List	   *rows = es_elements(gone);
		ListCell   *lc;

		foreach(lc, rows)
			es_fk_deleted(t, lfirst(lc));
		note = psprintf("%s emptied by deleting its %d rows (other tables refer to it)",
						t->qualname, list_length(rows));
	}
	else
	{
		Jsonb	   *n = es_run(a->subscriber,
							   psprintf("WITH d AS (DELETE FROM %s t RETURNING 1)"
										" SELECT pg_catalog.to_jsonb(pg_catalog.count(*)) FROM d", t->qualname),
							   NULL);

		note = psprintf("%s emptied by deleting its %s rows (%s)", t->qualname, es_scalar_text(n),
						es_referred(t->relid) ? "other tables refer to it" : "the subscriber may not truncate it");
	}

	snprintf(arg, sizeof(arg), "{\"r\": %u}", t->relid);
	(void) es_run(InvalidOid,
				  "DELETE FROM eventstream.remote_document d WHERE d.local_table = ($1->>'r')::pg_catalog.oid::pg_catalog.regclass",
				  es_jsonb_parse(arg));
	return note;
}
