#!/usr/bin/perl
#-------------------------------------------------------------------------
#
# rerunnable.pl
#	  Print the statements of an install script that an update script runs
#	  again, so that a function, view, trigger, comment or privilege
#	  changed in the SQL parts reaches an updated site without being copied
#	  by hand.
#
# Usage: perl sql/rerunnable.pl eventstream--1.1.sql > part-of-the-update
#
# Kept, in the order of the install script:
#   CREATE FUNCTION, CREATE PROCEDURE, CREATE VIEW and CREATE TRIGGER,
#	  written as CREATE OR REPLACE (what exists is replaced in place, so
#	  its privileges, its membership of the extension and the objects
#	  depending on it stay; what is new is created);
#   COMMENT ON, GRANT, REVOKE, and pg_extension_config_dump() calls, which
#	  give the same result however often they run.
# Everything else (tables, columns, indexes, sequences, event triggers,
# statements run once, such as the site's first row) is the hand-written
# part's business: sql/update--<from>--<to>.sql.
#
# Statements are split the way psql splits them: at a semicolon outside
# comments, quoted strings, quoted identifiers and dollar quotes, and, in a
# CREATE FUNCTION or CREATE PROCEDURE, outside a BEGIN ATOMIC ... END body
# (BEGIN and CASE open a level that END closes).  Lines of psql
# meta-commands (\echo ... \quit) are left out.
#
#-------------------------------------------------------------------------
use strict;
use warnings;

local $/;
my $script = <>;
die "rerunnable.pl: no input\n" unless defined $script;

my @statements;
my $cur = '';			# the statement read so far
my $depth = 0;			# BEGIN / CASE levels open in a routine's body
my $routine = 0;		# whether the statement creates a function or procedure

# start_of_statement: whether nothing but blanks was read of the statement.
sub start_of_statement { return $cur !~ /\S/; }

for ($script)
{
	while (1)
	{
		if (/\G\z/gc) { last; }
		elsif (/\G(--[^\n]*)/gc || /\G(\/\*.*?\*\/)/gcs)
		{
			$cur .= $1 unless start_of_statement();
		}
		elsif (/\G(\\[^\n]*)/gc)
		{
			die "rerunnable.pl: a psql meta-command inside a statement: $1\n"
			  unless start_of_statement();
		}
		elsif (/\G([Ee]'(?:[^'\\]|\\.|'')*')/gcs
			|| /\G('(?:[^']|'')*')/gcs
			|| /\G("(?:[^"]|"")*")/gcs
			|| /\G((\$(?:[A-Za-z_][A-Za-z_0-9]*)?\$).*?\2)/gcs)
		{
			$cur .= $1;
		}
		elsif (/\G([A-Za-z_][A-Za-z_0-9]*)/gc)
		{
			my $word = $1;
			$cur .= $word;
			$routine = 1
			  if $cur =~ /^\s*CREATE\s+(?:OR\s+REPLACE\s+)?(?:FUNCTION|PROCEDURE)\s/i;
			if ($routine)
			{
				$depth++ if $word =~ /^(?:BEGIN|CASE)$/i;
				$depth-- if $word =~ /^END$/i && $depth > 0;
			}
		}
		elsif (/\G;/gc)
		{
			if ($depth > 0)
			{
				$cur .= ';';
				next;
			}
			$cur =~ s/^\s+//;
			push @statements, $cur . ';' if $cur ne '';
			($cur, $routine) = ('', 0);
		}
		elsif (/\G(\s+)/gc || /\G(.)/gcs)
		{
			$cur .= $1;
		}
	}
}
die "rerunnable.pl: the script ends inside a statement: " . substr($cur, 0, 80) . "\n"
  if $cur =~ /\S/;

foreach my $s (@statements)
{
	if ($s =~ s/^CREATE\s+(?:OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|VIEW|TRIGGER)\b/CREATE OR REPLACE $1/i
		|| $s =~ /^(?:COMMENT\s+ON|GRANT|REVOKE)\b/i
		|| $s =~ /^SELECT\s+pg_catalog\.pg_extension_config_dump\s*\(/i)
	{
		print "$s\n\n";
	}
}
