/*-------------------------------------------------------------------------
 *
 * client.c
 *	  The consumer's HTTP client: requests to producers with libcurl.
 *
 * es_client_setup() applies the options every request to a producer
 * shares (timeouts, TLS verification against eventstream.ca_file, a cap
 * on the response body, the path sent as it is: its segments are
 * percent-encoded names, see eventstream_urlencode, and a "." or ".."
 * among them is a docname, not to be resolved away);
 * es_client_bad_text() refuses a body that is not UTF-8 text (the wire's
 * encoding, src/site/wire.c) before anything reads it, and
 * es_client_text() makes a piece of a body fit for an error message;
 * es_client_header() reads a header of the answer, and
 * es_client_protocol_known() says whether it is in a version of the
 * protocol this site speaks.  The site
 * worker drives such handles with a multi handle (src/consumer/pull.c),
 * and eventstream._http_request() runs one from SQL, blocking, for the
 * configuration functions (add_producer, subscribe, ...) and sync_now().
 *
 * libcurl frames must never be crossed by a longjmp: callbacks only copy
 * bytes and report interrupts by returning a failure, and every handle is
 * cleaned up in PG_FINALLY.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/consumer/client.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <curl/curl.h>

#include "access/htup_details.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"

#include "eventstream.h"
#include "consumer/client.h"
#include "consumer/pagejson.h"
#include "site/wire.h"

PG_FUNCTION_INFO_V1(eventstream_http_request);
PG_FUNCTION_INFO_V1(eventstream_urlencode);

/* GUCs (registered by _PG_init, src/site/eventstream.c). */
char	   *es_ca_file = NULL;
int			es_client_max_response_size = 64 * 1024;	/* kB */

static bool es_curl_initialized = false;

/*
 * es_client_init
 *		Initialise libcurl once per process.
 */
void
es_client_init(void)
{
	if (!es_curl_initialized)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not initialize libcurl")));
		es_curl_initialized = true;
	}
}

/*
 * es_client_write
 *		libcurl write callback: append to the EsResponse, refusing bodies
 *		above the cap (returning less than given fails the transfer).
 */
static size_t
es_client_write(char *data, size_t size, size_t nmemb, void *userdata)
{
	EsResponse *resp = (EsResponse *) userdata;
	size_t		n = size * nmemb;

	if (resp->len + n > resp->max)
	{
		resp->too_large = true;
		return 0;
	}
	if (resp->len + n + 1 > resp->cap)
	{
		size_t		cap = Max(resp->cap * 2, resp->len + n + 1);
		char	   *grown;

		cap = Max(cap, 16384);
		grown = realloc(resp->data, cap);
		if (grown == NULL)
			return 0;
		resp->data = grown;
		resp->cap = cap;
	}
	memcpy(resp->data + resp->len, data, n);
	resp->len += n;
	resp->data[resp->len] = '\0';
	return n;
}

/*
 * es_client_progress
 *		libcurl progress callback: abort the transfer when the backend has
 *		an interrupt pending (query cancel, SIGTERM); the caller then runs
 *		CHECK_FOR_INTERRUPTS() outside libcurl.
 */
static int
es_client_progress(void *clientp, curl_off_t dltotal, curl_off_t dlnow,
				   curl_off_t ultotal, curl_off_t ulnow)
{
	return INTERRUPTS_PENDING_CONDITION() ? 1 : 0;
}

/*
 * es_client_setup
 *		Apply the common options to an easy handle for url; resp collects
 *		the body (malloc'd; the caller frees resp->data).  timeout_s bounds
 *		the whole transfer (a long-poll passes its wait plus a margin).
 */
void
es_client_setup(void *curl, const char *url, const char *auth,
				EsResponse *resp, long timeout_s)
{
	memset(resp, 0, sizeof(EsResponse));
	resp->max = (size_t) es_client_max_response_size * 1024;
	curl_easy_setopt(curl, CURLOPT_URL, url);
	/* Names are escaped segments: "." and ".." are sent as they are. */
	curl_easy_setopt(curl, CURLOPT_PATH_AS_IS, 1L);
	curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, es_client_write);
	curl_easy_setopt(curl, CURLOPT_WRITEDATA, resp);
	curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT, 10L);
	curl_easy_setopt(curl, CURLOPT_TIMEOUT, timeout_s);
	curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(curl, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 2L);
	if (es_ca_file && es_ca_file[0] != '\0')
		curl_easy_setopt(curl, CURLOPT_CAINFO, es_ca_file);
	curl_easy_setopt(curl, CURLOPT_USERAGENT, "eventstream/" EVENTSTREAM_VERSION);
	if (auth)
	{
		char	   *header = psprintf("Authorization: token %s", auth);

		resp->headers = curl_slist_append(NULL, header);
		resp->headers = curl_slist_append(resp->headers, "Content-Type: application/json");
		curl_easy_setopt(curl, CURLOPT_HTTPHEADER, resp->headers);
		pfree(header);
	}
}

/*
 * es_client_failure
 *		The text of a failed transfer, for last_error and error messages.
 */
char *
es_client_failure(int code, EsResponse *resp, const char *url)
{
	if (resp->too_large)
		return psprintf("the response from %s is larger than eventstream.client_max_response_size (%d kB)",
						url, es_client_max_response_size);
	return psprintf("could not reach %s: %s", url, curl_easy_strerror((CURLcode) code));
}

/*
 * es_client_bad_text
 *		NULL when the body resp holds is UTF-8 text (every byte of it: a
 *		NUL byte is refused too), otherwise why not, naming url.  What is
 *		read from a producer is converted to the database encoding
 *		(src/site/wire.c) only once it is known to be valid UTF-8.
 */
char *
es_client_bad_text(EsResponse *resp, const char *url)
{
	int			valid;

	if (resp->data == NULL || resp->len == 0)
		return NULL;
	valid = pg_encoding_verifymbstr(PG_UTF8, resp->data, (int) resp->len);
	if ((size_t) valid == resp->len)
		return NULL;
	return psprintf("the response from %s is not valid UTF8 text: %s at byte %d",
					url, resp->data[valid] == '\0' ? "a NUL byte" : "an invalid byte sequence", valid);
}

/*
 * es_client_text
 *		At most max bytes of the start of data, an answer's body in UTF-8,
 *		as text of the database encoding for an error message: cut at its
 *		first byte that is not valid UTF-8 and at a character's end, a
 *		character the database encoding cannot hold shown as '?'.
 */
char *
es_client_text(const char *data, int max)
{
	int			len;
	int			outlen;
	pg_wchar	bad;

	if (data == NULL)
		return "";
	len = strnlen(data, max + 4);
	len = pg_encoding_verifymbstr(PG_UTF8, data, len);
	len = pg_encoding_mbcliplen(PG_UTF8, data, len, max);
	return es_wire_to_server(pnstrdup(data, len), len, &outlen, &bad);
}

/*
 * es_client_header
 *		The value of the response header name of a finished transfer
 *		(palloc'd; its first, when sent more than once), or NULL when it
 *		was not sent.
 */
char *
es_client_header(void *curl, const char *name)
{
	struct curl_header *h;

	if (curl_easy_header(curl, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return NULL;
	return pstrdup(h->value);
}

/*
 * es_client_protocol_known
 *		Whether protocol, the Eventstream-Protocol header of an answer
 *		(NULL: not sent), is a version this site speaks.  An answer without
 *		the header is read as this version's: a producer older than the
 *		header sends none.
 */
bool
es_client_protocol_known(const char *protocol)
{
	return protocol == NULL || strcmp(protocol, ES_PROTOCOL) == 0;
}

/*
 * es_client_protocol_error
 *		Why an answer from url in a version of the protocol this site does
 *		not speak is refused, naming both versions.
 */
char *
es_client_protocol_error(const char *protocol, const char *url)
{
	char		shown[33];
	int			i;

	/* The value as printable ASCII: it reaches last_error and the log. */
	for (i = 0; protocol[i] != '\0' && i < (int) sizeof(shown) - 1; i++)
		shown[i] = (protocol[i] >= 0x20 && protocol[i] < 0x7f) ? protocol[i] : '?';
	shown[i] = '\0';
	return psprintf("%s answered in version \"%s\" of the eventstream protocol (%s header); this site speaks version %s",
					url, shown, ES_HEADER_PROTOCOL, ES_PROTOCOL);
}

/*
 * eventstream_http_request
 *		_http_request(method, url, auth, body, timeout_s) -> (status, body):
 *		one blocking request from SQL.  A transfer that fails (no answer,
 *		refused certificate, body too large) is an ERROR, and so are an
 *		answer in a version of the protocol this site does not speak and a
 *		body that is not UTF-8 text; any HTTP status is returned.  The body
 *		sent is converted to UTF-8, the one received from it (a character
 *		the database encoding cannot hold: see below).  Superuser only (not
 *		granted to PUBLIC).
 */
Datum
eventstream_http_request(PG_FUNCTION_ARGS)
{
	char	   *method = text_to_cstring(PG_GETARG_TEXT_PP(0));
	char	   *url = text_to_cstring(PG_GETARG_TEXT_PP(1));
	char	   *auth = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	char	   *body = PG_ARGISNULL(3) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(3));
	int			timeout_s = PG_ARGISNULL(4) ? 30 : PG_GETARG_INT32(4);
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};
	CURL	   *volatile curl = NULL;
	EsResponse	resp;
	CURLcode	code = CURLE_OK;
	long		status = 0;
	char	   *failure = NULL;
	char	   *protocol_error = NULL;

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	es_client_init();
	memset(&resp, 0, sizeof(resp));

	PG_TRY();
	{
		curl = curl_easy_init();
		if (curl == NULL)
			elog(ERROR, "could not create a libcurl handle");
		es_client_setup(curl, url, auth, &resp, timeout_s);
		curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, es_client_progress);
		curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
		if (body)
		{
			body = es_wire_from_server(body, strlen(body), NULL);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDS, body);
			curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long) strlen(body));
		}
		code = curl_easy_perform(curl);
		CHECK_FOR_INTERRUPTS();
		if (code != CURLE_OK)
			failure = es_client_failure(code, &resp, url);
		else
		{
			char	   *protocol = es_client_header(curl, ES_HEADER_PROTOCOL);

			if (!es_client_protocol_known(protocol))
				protocol_error = es_client_protocol_error(protocol, url);
			else if ((failure = es_client_bad_text(&resp, url)) == NULL)
			{
				int			len;
				pg_wchar	bad;
				char	   *text = es_wire_to_server(resp.data ? resp.data : "", (int) resp.len,
													 &len, &bad);

				/*
				 * A character this database cannot hold fails only the
				 * update or snapshot document holding it: a successful
				 * answer is read as a page would be (pagejson.c), with those
				 * marked, and returned as that page's text; elsewhere in it
				 * the character is an error.  An error answer keeps '?' for
				 * it.
				 */
				curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
				if (bad != 0 && status == 200)
				{
					Jsonb	   *page = es_read_page(resp.data, resp.len, es_page_budget(), true);

					text = JsonbToCString(NULL, &page->root, VARSIZE(page));
					len = strlen(text);
				}
				values[0] = Int32GetDatum((int32) status);
				values[1] = PointerGetDatum(cstring_to_text_with_len(text, len));
			}
		}
	}
	PG_FINALLY();
	{
		if (curl)
			curl_easy_cleanup(curl);
		curl_slist_free_all(resp.headers);
		free(resp.data);
	}
	PG_END_TRY();

	if (protocol_error)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s", protocol_error),
				 errdetail("Nothing of the response was used."),
				 errhint("Upgrade eventstream on this site to a version that speaks the producer's.")));
	if (failure && code == CURLE_OK)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("%s", failure),
				 errdetail("Nothing of the response was used.")));
	if (failure)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("%s", failure),
				 errhint("Check the producer's URL, that its eventstream.http_port is set, and that it is running.")));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * eventstream_urlencode
 *		_urlencode(text) -> text: percent-encode everything but RFC 3986's
 *		unreserved characters, byte by byte of the text's UTF-8 (a path
 *		segment or a query parameter's value).
 */
Datum
eventstream_urlencode(PG_FUNCTION_ARGS)
{
	text	   *in = PG_GETARG_TEXT_PP(0);
	int			len;
	const unsigned char *p = (const unsigned char *) es_wire_from_server(VARDATA_ANY(in),
																		 VARSIZE_ANY_EXHDR(in), &len);
	StringInfoData buf;
	static const char hex[] = "0123456789ABCDEF";

	initStringInfo(&buf);
	for (int i = 0; i < len; i++)
	{
		unsigned char c = p[i];

		if ((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
			c == '-' || c == '.' || c == '_' || c == '~')
			appendStringInfoChar(&buf, (char) c);
		else
		{
			appendStringInfoChar(&buf, '%');
			appendStringInfoChar(&buf, hex[c >> 4]);
			appendStringInfoChar(&buf, hex[c & 15]);
		}
	}
	PG_RETURN_TEXT_P(cstring_to_text_with_len(buf.data, buf.len));
}
