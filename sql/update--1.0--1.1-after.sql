/*-------------------------------------------------------------------------
 *
 * update--1.0--1.1-after.sql
 *	  The hand-written end of eventstream--1.0--1.1.sql: what needs the
 *	  functions of 1.1 to exist first (an event trigger on a new function).
 *
 *-------------------------------------------------------------------------
 */
