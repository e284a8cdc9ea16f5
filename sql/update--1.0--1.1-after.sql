/*-------------------------------------------------------------------------
 *
 * update--1.0--1.1-after.sql
 *	  The hand-written end of eventstream--1.0--1.1.sql: what needs the
 *	  functions of 1.1 to exist first (an event trigger on a new function).
 *
 *-------------------------------------------------------------------------
 */

-- Columns added to a captured table travel with every Update.
CREATE EVENT TRIGGER eventstream_add_column ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_add_column();

-- TRUNCATE of partitions: the partitions created, attached or detached
-- get or lose their truncate triggers (src/producer/capture.sql).
CREATE EVENT TRIGGER eventstream_partition_ddl ON ddl_command_end WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
	EXECUTE FUNCTION eventstream._on_partition_ddl();

-- Bind the published names and make every capture trigger again, by name
-- (1.0's name tables by OID), with the TRUNCATE triggers beside them.
SELECT eventstream._sync_capture();
