/*-------------------------------------------------------------------------
 *
 * eventstream.h
 *	  Declarations shared by the C files of the eventstream extension.
 *
 * Each .c file owns one responsibility (see its header); this file only
 * carries what crosses file boundaries: GUC variables, the row-to-jsonb
 * encoder used by capture and serving, and the apply origin.
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

#include "access/htup.h"
#include "access/tupdesc.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/relcache.h"
#include "utils/uuid.h"

#define EVENTSTREAM_SCHEMA		"eventstream"
#define EVENTSTREAM_LOG_TABLE	"update_log"
#define EVENTSTREAM_VERSION		"1.0"

/* src/site/eventstream.c */
extern bool es_preloaded;
extern bool es_apply_origin_set;
extern pg_uuid_t es_apply_origin;

/*
 * How one column is turned into a jsonb value.  Decided once per column
 * (es_encoder_build) so the per-row work is a switch and, at most, a call to
 * a cached output function.
 */
typedef enum EsValueKind
{
	ES_KIND_BOOL,
	ES_KIND_INT,				/* int2/int4/int8: JSON number */
	ES_KIND_FLOAT,				/* float4/float8: number, or string for NaN/Inf */
	ES_KIND_NUMERIC,			/* numeric: number, or string for NaN/Inf */
	ES_KIND_DATETIME,			/* date/time types: ISO 8601 string */
	ES_KIND_JSON,				/* json: parsed and embedded */
	ES_KIND_JSONB,				/* jsonb: embedded as is */
	ES_KIND_TEXT				/* anything else: the type's text form */
} EsValueKind;

typedef struct EsColumn
{
	AttrNumber	attnum;			/* 1-based attribute number */
	char	   *name;			/* column name (jsonb key) */
	int			namelen;
	Oid			typid;			/* declared type (domains kept) */
	Oid			basetypid;		/* base type after domains */
	Oid			collation;
	int16		typlen;
	bool		typbyval;
	EsValueKind kind;
	FmgrInfo	outfn;			/* output function, for ES_KIND_TEXT */
	bool		has_eq;			/* eqfn is valid */
	FmgrInfo	eqfn;			/* default equality operator's function */
} EsColumn;

/*
 * Encoder for the rows of one tuple descriptor.  Allocated in a long-lived
 * context chosen by the caller; columns[] skips dropped attributes.
 */
typedef struct EsEncoder
{
	int			ncolumns;
	EsColumn   *columns;
	int			npk;			/* number of primary key columns */
	int		   *pk;				/* indexes into columns[] in key order */
} EsEncoder;

/* src/producer/rowjson.c */
extern EsEncoder *es_encoder_build(TupleDesc tupdesc, const AttrNumber *pkattnums,
								   int npk, MemoryContext mcxt);
extern void es_push_value(JsonbParseState **state, EsColumn *col, Datum value,
						  bool isnull, JsonbIteratorToken tok);
extern JsonbValue *es_row_to_jsonb(JsonbParseState **state, EsEncoder *enc,
								   HeapTuple tuple, TupleDesc tupdesc,
								   bool close_object);
extern void es_push_key(JsonbParseState **state, const char *key, int len);
extern bool es_values_equal(EsColumn *col, Datum a, Datum b);
extern char *es_docname(EsEncoder *enc, const int *colidx, int ncols,
						HeapTuple tuple, TupleDesc tupdesc);
extern char *es_qualified_relname(Relation rel);

/* src/consumer/pagejson.c */
extern Jsonb *es_read_jsonb(const char *text, size_t len, Size budget);
extern Size es_page_budget(void);
extern Jsonb *es_read_page(char *text, size_t len, Size budget);

/* src/producer/logids.c */
extern void es_shmem_init(void);
extern int64 es_next_log_id(Oid seqid);

/* src/site/eventstream.c */
extern int	es_http_port;
extern char *es_http_listen_address;
extern char *es_http_tls_cert_file;
extern char *es_site_url;
extern int	es_condition_timeout;
extern bool es_in_site_worker;
extern char *es_http_tls_key_file;
extern int	es_http_max_request_size;

/* src/consumer/client.c */
typedef struct EsResponse
{
	char	   *data;			/* malloc'd, NUL-terminated */
	size_t		len;
	size_t		cap;
	size_t		max;			/* eventstream.client_max_response_size */
	bool		too_large;
	struct curl_slist *headers;
} EsResponse;

extern char *es_ca_file;
extern int	es_client_max_response_size;
extern void es_client_init(void);
extern void es_client_setup(void *curl, const char *url, const char *auth,
							EsResponse *resp, long timeout_s);
extern char *es_client_failure(int code, EsResponse *resp, const char *url);
extern char *es_client_bad_text(EsResponse *resp, const char *url);
extern Datum eventstream_urlencode(PG_FUNCTION_ARGS);

/* src/consumer/pull.c */
extern int	es_window_memory;
extern int	es_pull_init(void);
extern void es_pull_refresh(void);
extern void es_pull_start_due(void);
extern void es_pull_run(void);
extern long es_pull_timeout(void);
extern void es_pull_shutdown(void);

/* src/http/server.c */
extern bool es_http_start(const char *address, int port, const char *site_id);
extern int	es_http_socket(void);
extern long es_http_timeout(void);
extern void es_http_run(void);
extern void es_http_wake(bool all);
extern bool es_http_parked(void);
extern void es_http_stop(void);

/* src/site/worker.c */
extern int	es_prune_interval;
extern char *es_test_pause_at;
extern void es_test_pause(const char *point);
extern void es_workers_init(void);
extern Size es_workers_shmem_size(void);
extern void es_workers_shmem_init(void);
extern void es_wake_site(Oid dboid, int nlogs);
extern void es_worker_expect_waiters(void);

/* src/consumer/failed.c */
extern int	es_failed_log_limit;
extern void es_failed_note(const char *producer, int64 sync_log_id, const char *update_type,
						   const char *table, const char *docname, const char *error);

/* src/producer/condition.c */
extern char *es_docname_match(Relation rel, int paramno);
extern void es_check_expression_tokens(const char *expr, const char *what);
extern void es_check_expression_shape(const char *expr, const char *what);
extern char *es_sandboxed_value(const char *sql, Oid role, int nargs, Oid *argtypes,
								Datum *values, bool *found, char **error);

#endif							/* EVENTSTREAM_H */
