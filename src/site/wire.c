/*-------------------------------------------------------------------------
 *
 * wire.c
 *	  Text on the wire is UTF-8: conversions to and from the database
 *	  encoding.
 *
 * Every body and URL the sites exchange is UTF-8 (docs/protocol.md),
 * whatever the encoding of either database.  A database in UTF8 (or
 * SQL_ASCII, which holds bytes as they are) converts nothing: the
 * functions here then return their argument itself, without a copy.  Any
 * other encoding converts with PostgreSQL's default conversion functions,
 * looked up once per process and kept, so that the consumer converts
 * outside transactions too (it reads pages between them).  Neither
 * direction raises for a character the other encoding cannot hold: it
 * becomes '?' and the caller is told which character it was, to fail
 * what holds it (an update, a document) with es_wire_untranslatable's
 * message.
 *
 * Copyright (c) 2026, eventstream authors.  PostgreSQL License.
 *
 * IDENTIFICATION
 *	  src/site/wire.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/memutils.h"

#include "site/wire.h"

/* The conversion functions, once looked up (TopMemoryContext). */
static FmgrInfo *es_utf8_to_server = NULL;
static FmgrInfo *es_server_to_utf8 = NULL;

/*
 * es_wire_converts
 *		Whether text crossing the wire is converted here: the database
 *		encoding is neither UTF8 nor SQL_ASCII.
 */
bool
es_wire_converts(void)
{
	int			enc = GetDatabaseEncoding();

	return enc != PG_UTF8 && enc != PG_SQL_ASCII;
}

/*
 * es_wire_prepare
 *		Look up the conversion functions between UTF8 and the database
 *		encoding, once; in a transaction of its own when none is open.
 */
static void
es_wire_prepare(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	bool		own = !IsTransactionState();
	int			enc = GetDatabaseEncoding();
	Oid			to;
	Oid			from;
	FmgrInfo   *to_info;
	FmgrInfo   *from_info;

	if (es_utf8_to_server != NULL)
		return;
	if (own)
		StartTransactionCommand();
	PG_TRY();
	{
		to = FindDefaultConversionProc(PG_UTF8, enc);
		from = FindDefaultConversionProc(enc, PG_UTF8);
		if (!OidIsValid(to) || !OidIsValid(from))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_FUNCTION),
					 errmsg("no default conversion between encodings \"UTF8\" and \"%s\"",
							GetDatabaseEncodingName()),
					 errdetail("Text between sites is UTF-8; this database must convert it.")));
		to_info = MemoryContextAlloc(TopMemoryContext, sizeof(FmgrInfo));
		from_info = MemoryContextAlloc(TopMemoryContext, sizeof(FmgrInfo));
		fmgr_info_cxt(to, to_info, TopMemoryContext);
		fmgr_info_cxt(from, from_info, TopMemoryContext);
	}
	PG_CATCH();
	{
		/* The caller, outside any transaction, is left outside one. */
		if (own)
			AbortCurrentTransaction();
		MemoryContextSwitchTo(cxt);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (own)
		CommitTransactionCommand();
	MemoryContextSwitchTo(cxt);
	es_server_to_utf8 = from_info;
	es_utf8_to_server = to_info;
}

/*
 * es_wire_convert
 *		Convert s[0 .. len) from src_enc to dest_enc with proc into a
 *		palloc'd, NUL-terminated copy; a character dest_enc cannot hold (or
 *		bytes invalid in src_enc) becomes '?'.  *outlen is the result's
 *		length; *bad the first such character (as a code point when src_enc
 *		is UTF8, otherwise its first byte), 0 when there is none.
 */
static char *
es_wire_convert(FmgrInfo *proc, int src_enc, int dest_enc,
				const char *s, int len, int *outlen, pg_wchar *bad)
{
	char	   *dst = MemoryContextAllocHuge(CurrentMemoryContext,
											 (Size) len * MAX_CONVERSION_GROWTH + 1);
	int			dlen = 0;

	*bad = 0;
	dst[0] = '\0';
	while (len > 0)
	{
		int			done;
		int			skip;

		done = DatumGetInt32(FunctionCall6(proc,
										   Int32GetDatum(src_enc),
										   Int32GetDatum(dest_enc),
										   CStringGetDatum(s),
										   CStringGetDatum(dst + dlen),
										   Int32GetDatum(len),
										   BoolGetDatum(true)));
		dlen += strlen(dst + dlen);
		if (done >= len)
			break;
		/* The character at s + done cannot be converted: '?' instead. */
		if (*bad == 0)
			*bad = src_enc == PG_UTF8 && pg_utf8_islegal((const unsigned char *) s + done,
														 Min(pg_utf_mblen((const unsigned char *) s + done),
															 len - done))
				? utf8_to_unicode((const unsigned char *) s + done)
				: (unsigned char) s[done];
		skip = pg_encoding_mblen(src_enc, s + done);
		skip = Max(1, Min(skip, len - done));
		dst[dlen++] = '?';
		dst[dlen] = '\0';
		s += done + skip;
		len -= done + skip;
	}
	*outlen = dlen;
	return dst;
}

/*
 * es_all_ascii
 *		Whether s[0 .. len) is all 7-bit ASCII (the same in every encoding
 *		a database may have).
 */
static bool
es_all_ascii(const char *s, int len)
{
	for (int i = 0; i < len; i++)
		if (IS_HIGHBIT_SET(s[i]))
			return false;
	return true;
}

/*
 * es_wire_to_server
 *		The database encoding's text of the UTF-8 s[0 .. len), which the
 *		caller has checked is valid UTF-8: s itself when nothing is to be
 *		converted, otherwise a palloc'd, NUL-terminated copy.  *outlen is
 *		its length; *bad the first character the database encoding cannot
 *		hold (it became '?'), 0 when there is none.
 */
char *
es_wire_to_server(const char *s, int len, int *outlen, pg_wchar *bad)
{
	*bad = 0;
	*outlen = len;
	if (!es_wire_converts() || es_all_ascii(s, len))
		return (char *) s;
	es_wire_prepare();
	return es_wire_convert(es_utf8_to_server, PG_UTF8, GetDatabaseEncoding(),
						   s, len, outlen, bad);
}

/*
 * es_wire_from_server
 *		The UTF-8 text of s[0 .. len), in the database encoding: s itself
 *		when nothing is to be converted, otherwise a palloc'd,
 *		NUL-terminated copy (a character UTF-8 has no equivalent for
 *		becomes '?'); *outlen (unless NULL) is its length.  Never raises
 *		once the conversion is looked up: it also converts error messages
 *		outside any transaction.
 */
char *
es_wire_from_server(const char *s, int len, int *outlen)
{
	int			dummy;
	pg_wchar	bad;

	if (outlen == NULL)
		outlen = &dummy;
	*outlen = len;
	if (!es_wire_converts() || es_all_ascii(s, len))
		return (char *) s;
	es_wire_prepare();
	return es_wire_convert(es_server_to_utf8, GetDatabaseEncoding(), PG_UTF8,
						   s, len, outlen, &bad);
}

/*
 * es_wire_untranslatable
 *		The error message for a character received (its code point) that
 *		the database encoding cannot hold.
 */
char *
es_wire_untranslatable(pg_wchar c)
{
	return psprintf("character U+%04X has no equivalent in encoding \"%s\"",
					(unsigned int) c, GetDatabaseEncodingName());
}
