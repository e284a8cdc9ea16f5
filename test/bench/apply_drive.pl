#!/usr/bin/perl
# test/bench/apply_drive.pl -- the measuring half of test/bench/apply.sh.
#
# Run by apply.sh (not meant to be run alone).  Talks to the producer and
# the consumer database of one pair (eventstream sites, or a native
# publisher and subscriber) with DBD::Pg over their Unix sockets, times with
# CLOCK_MONOTONIC, and prints one line of name=value pairs.  Exit codes:
# 0 fine, 3 the consumer did not get there within the deadline, 4 the
# consumer's table differs from the producer's, 2 bad arguments or another
# error.  Every failure says what it was waiting for and what it saw last.
#
#   apply_drive.pl throughput PROD CONS DEADLINE WORKLOAD PROBE VERIFY
#       Runs WORKLOAD (one SQL statement) on the producer and times it
#       (produce_s), then polls PROBE (SQL returning true once the consumer
#       has the workload's last transaction) on the consumer every 5 ms
#       until it is true (lag_s: from the workload's last commit; total_s:
#       from its start).  Then VERIFY (SQL returning a digest of the table)
#       must give the same on both.
#
#   apply_drive.pl latency PROD CONS DEADLINE RATE SECONDS WARMUP VERIFY
#       A writer (a child process) inserts single rows (id 1, 2, ...) into
#       t on the producer, each its own transaction, one every 1/RATE s on a
#       fixed schedule, and notes when it sent each INSERT (the commit is
#       somewhere between that and the answer: the producer's insert, its
#       capture and commit are part of the latency).  Meanwhile the
#       observer polls "SELECT max(id) FROM t" on the consumer about every
#       ms and notes when each id was first visible (the time the poll that
#       saw it returned: an upper bound, at most one poll interval late).
#       Latency = seen - sent, over the rows after the first WARMUP
#       seconds: p50, p90, p99, max in ms.  Then VERIFY as above.
#
#   apply_drive.pl catchup PROD CONS DEADLINE FIRST PROBE VERIFY CONS_PID_SQL PROD_PID_SQL -- START_COMMAND...
#       Runs START_COMMAND (starts the consumer's server), then polls FIRST
#       (true once the backlog's first transaction is visible: first_s) and
#       PROBE (the last one: total_s) on the consumer every 50 ms, both
#       timed from before the start command; meanwhile sampling /proc/<pid>/status of the process
#       CONS_PID_SQL names on the consumer (the applying worker) and of the
#       one PROD_PID_SQL names on the producer (the serving process): peak
#       VmHWM and sampled peak RssAnon, in MB.  Then VERIFY as above.
#
# PROD and CONS are "host:port:dbname" (host a socket directory); the user
# is postgres.  With APPLY_PROD_DATA and APPLY_CONS_DATA (data directories)
# set, it also reports the CPU the producer's and the consumer's whole
# cluster used during the measurement (prod_cpu_s/cons_cpu_s, or % of one
# CPU for latency).
use strict;
use warnings;
use DBI;
use POSIX ();
use Time::HiRes qw(clock_gettime CLOCK_MONOTONIC);

$| = 1;

sub now { return clock_gettime(CLOCK_MONOTONIC) }

sub fail
{
	my ($code, $msg) = @_;
	print STDERR "apply_drive: $msg\n";
	exit $code;
}

sub connect_db
{
	my ($spec, $secs) = @_;
	my ($host, $port, $db) = split /:/, $spec, 3;
	my $deadline = now() + ($secs // 10);
	my $err;
	while (1)
	{
		my $dbh = DBI->connect("dbi:Pg:dbname=$db;host=$host;port=$port", 'postgres', '',
			{ AutoCommit => 1, RaiseError => 1, PrintError => 0, pg_server_prepare => 1 });
		if ($dbh)
		{
			$dbh->do("SET application_name = 'apply_drive'");
			return $dbh;
		}
		$err = $DBI::errstr // 'unknown error';
		fail(2, "could not connect to $spec: $err") if now() > $deadline;
		Time::HiRes::sleep(0.05);
	}
}

sub one_value
{
	my ($dbh, $sql) = @_;
	my ($v) = $dbh->selectrow_array($sql);
	return $v;
}

# The first value of a prepared statement's first row, run again.
sub probe
{
	my ($sth) = @_;
	$sth->execute;
	my ($v) = $sth->fetchrow_array;
	$sth->finish;
	return $v;
}

sub is_true
{
	my ($v) = @_;
	return defined $v && ($v eq '1' || $v eq 't' || $v eq 'true');
}

# Same digest on both sides, or exit 4 saying what differs.
sub verify
{
	my ($prod, $cons, $sql) = @_;
	my $p = one_value($prod, $sql) // '(null)';
	my $c = one_value($cons, $sql) // '(null)';
	fail(4, "the consumer's table differs from the producer's: producer '$p', consumer '$c'")
	  unless $p eq $c;
	return $p;
}

# CPU clock ticks a server has used so far: the postmaster with the children
# it reaped, and its live children.  DATADIR's postmaster.pid names it; 0
# when the server does not run.
my $HZ = POSIX::sysconf(POSIX::_SC_CLK_TCK()) || 100;
sub server_ticks
{
	my ($datadir) = @_;
	return 0 unless $datadir;
	open(my $fh, '<', "$datadir/postmaster.pid") or return 0;
	my $pm = <$fh>;
	close $fh;
	chomp $pm;
	my $sum = 0;
	opendir(my $dh, '/proc') or return 0;
	foreach my $pid (grep { /^\d+$/ } readdir $dh)
	{
		open(my $sf, '<', "/proc/$pid/stat") or next;
		my $line = <$sf>;
		close $sf;
		next unless defined $line && $line =~ /\) (.*)$/;
		my @f = split / /, $1;	# $f[0] is field 3 (state)
		if ($pid == $pm) { $sum += $f[11] + $f[12] + $f[13] + $f[14] }
		elsif ($f[1] == $pm) { $sum += $f[11] + $f[12] }
	}
	closedir $dh;
	return $sum;
}
sub cpu_s
{
	my ($ticks) = @_;
	return sprintf('%.2f', $ticks / $HZ);
}

sub pct
{
	my ($sorted, $p) = @_;
	return 'nan' unless @$sorted;
	my $i = int($p / 100 * @$sorted + 0.999999) - 1;
	$i = 0 if $i < 0;
	$i = $#$sorted if $i > $#$sorted;
	return $sorted->[$i];
}

# Fields of /proc/<pid>/status in kB: (VmHWM, VmRSS, RssAnon), or () when
# the process is gone.
sub proc_mem
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or return ();
	my %f;
	while (<$fh>)
	{
		$f{$1} = $2 if /^(VmHWM|VmRSS|RssAnon):\s+(\d+)/;
	}
	close $fh;
	return () unless defined $f{VmHWM};
	return ($f{VmHWM}, $f{VmRSS} // 0, $f{RssAnon} // 0);
}

my $mode = shift @ARGV // '';

if ($mode eq 'throughput')
{
	@ARGV == 6 or fail(2, 'usage: throughput PROD CONS DEADLINE WORKLOAD PROBE VERIFY');
	my ($ps, $cs, $deadline_s, $workload, $probe, $verify) = @ARGV;
	my $prod = connect_db($ps);
	my $cons = connect_db($cs);
	my $pst = $cons->prepare($probe);

	my ($pc0, $cc0) = (server_ticks($ENV{APPLY_PROD_DATA}), server_ticks($ENV{APPLY_CONS_DATA}));
	my $t0 = now();
	$prod->do($workload);
	my $t1 = now();
	my ($polls, $t2, $v, $pc1, $cc1) = (0);
	while (1)
	{
		$v = probe($pst);
		$polls++;
		$t2 = now();
		if (is_true($v))
		{
			($pc1, $cc1) = (server_ticks($ENV{APPLY_PROD_DATA}), server_ticks($ENV{APPLY_CONS_DATA}));
			last;
		}
		fail(3, sprintf("the consumer did not apply the workload within %d s of its last commit (probe '%s' still '%s')",
			$deadline_s, $probe, $v // 'null'))
		  if $t2 - $t1 > $deadline_s;
		Time::HiRes::sleep(0.005);
	}
	my $digest = verify($prod, $cons, $verify);
	printf "produce_s=%.3f lag_s=%.3f total_s=%.3f polls=%d prod_cpu_s=%s cons_cpu_s=%s digest=%s\n",
	  $t1 - $t0, $t2 - $t1, $t2 - $t0, $polls, cpu_s($pc1 - $pc0), cpu_s($cc1 - $cc0), $digest =~ s/ /\//gr;
}
elsif ($mode eq 'latency')
{
	@ARGV == 7 or fail(2, 'usage: latency PROD CONS DEADLINE RATE SECONDS WARMUP VERIFY');
	my ($ps, $cs, $deadline_s, $rate, $secs, $warmup, $verify) = @ARGV;
	my $n = int($rate * $secs);
	my $skip = int($rate * $warmup);
	$n > $skip or fail(2, 'latency: nothing left after the warm-up');

	pipe(my $rd, my $wr) or fail(2, "pipe: $!");
	my $start = now() + 0.5;		# both connected by then
	my $writer = fork() // fail(2, "fork: $!");
	if ($writer == 0)
	{
		close $rd;
		my $prod = connect_db($ps);
		my $ins = $prod->prepare('INSERT INTO t (id, v, n) VALUES (?, md5(?::text), 0)');
		my @commit;
		my $behind = 0;
		for my $i (1 .. $n)
		{
			my $due = $start + ($i - 1) / $rate;
			my $wait = $due - now();
			if ($wait > 0) { Time::HiRes::sleep($wait) }
			elsif ($wait < -0.005) { $behind++ }
			$commit[$i] = now();
			$ins->execute($i, $i);
		}
		my $end = now();
		print $wr join("\n", map { "$_ $commit[$_]" } 1 .. $n), "\n";
		printf $wr "end %.6f %d\n", $end, $behind;
		close $wr;
		$prod->disconnect;
		POSIX::_exit(0);
	}
	close $wr;

	my $cons = connect_db($cs);
	my $prod = connect_db($ps);
	my $max = $cons->prepare('SELECT coalesce(max(id), 0) FROM t');
	my ($pc0, $cc0) = (server_ticks($ENV{APPLY_PROD_DATA}), server_ticks($ENV{APPLY_CONS_DATA}));
	my $tc0 = now();
	my @seen;
	my ($last, $polls) = (0, 0);
	my $give_up = $start + $secs + $deadline_s;
	while ($last < $n)
	{
		my $m = probe($max);
		my $t = now();
		$polls++;
		if ($m > $last)
		{
			$seen[$_] = $t for $last + 1 .. $m;
			$last = $m;
		}
		if ($t > $give_up)
		{
			kill 'TERM', $writer;
			fail(3, "the consumer had id $last of $n, $deadline_s s after the writer should have finished");
		}
		Time::HiRes::sleep(0.001);
	}
	my ($pc1, $cc1) = (server_ticks($ENV{APPLY_PROD_DATA}), server_ticks($ENV{APPLY_CONS_DATA}));
	my $tc1 = now();
	my %commit;
	my ($end, $behind);
	while (my $line = <$rd>)
	{
		if ($line =~ /^end (\S+) (\d+)/) { ($end, $behind) = ($1, $2) }
		elsif ($line =~ /^(\d+) (\S+)/) { $commit{$1} = $2 }
	}
	waitpid($writer, 0);
	$? == 0 && defined $end or fail(2, "the writer failed (status $?)");
	my @lat = sort { $a <=> $b } map { ($seen[$_] - $commit{$_}) * 1000 } $skip + 1 .. $n;
	my $digest = verify($prod, $cons, $verify);
	my $sum = 0;
	$sum += $_ for @lat;
	printf "rows=%d measured=%d rate=%.1f behind=%d polls_per_s=%.0f p50_ms=%.2f p90_ms=%.2f p99_ms=%.2f max_ms=%.2f mean_ms=%.2f min_ms=%.2f prod_cpu_pct=%.1f cons_cpu_pct=%.1f digest=%s\n",
	  $n, scalar @lat, $n / ($end - $start), $behind, $polls / ($tc1 - $start),
	  pct(\@lat, 50), pct(\@lat, 90), pct(\@lat, 99), $lat[-1], $sum / @lat, $lat[0],
	  ($pc1 - $pc0) / $HZ / ($tc1 - $tc0) * 100, ($cc1 - $cc0) / $HZ / ($tc1 - $tc0) * 100, $digest =~ s/ /\//gr;
}
elsif ($mode eq 'catchup')
{
	my ($ps, $cs, $deadline_s, $first, $probe, $verify, $cons_pid_sql, $prod_pid_sql, $dash, @start) = @ARGV;
	defined $dash && $dash eq '--' && @start
	  or fail(2, 'usage: catchup PROD CONS DEADLINE FIRST PROBE VERIFY CONS_PID_SQL PROD_PID_SQL -- START_COMMAND...');
	my $prod = connect_db($ps);
	my $pc0 = server_ticks($ENV{APPLY_PROD_DATA});
	my $t0 = now();
	# pg_ctl's chatter must not mix with our line on standard output.
	open(my $saved, '>&', \*STDOUT) or fail(2, "dup: $!");
	open(STDOUT, '>', '/dev/null') or fail(2, "/dev/null: $!");
	my $rc = system(@start);
	open(STDOUT, '>&', $saved) or fail(2, "dup: $!");
	$rc == 0 or fail(2, "the start command failed: @start");
	my $t_up = now();
	my $cons = connect_db($cs, 60);
	my $pst = $cons->prepare($probe);
	my $fst = $cons->prepare($first);
	my $t_first;

	# Peaks over every process that held the role (a worker that restarts
	# gets a new pid): VmHWM is the kernel's own peak, RssAnon is sampled.
	my %cons_pids;
	my %prod_pids;
	my ($cons_pid, $prod_pid, $t_worker);
	my ($cons_hwm, $cons_anon, $prod_hwm, $prod_anon) = (0, 0, 0, 0);
	my $sample = sub {
		my ($pid, $hwm, $anon) = @_;
		my @m = proc_mem($pid);
		return (0, $hwm, $anon) unless @m;
		$hwm = $m[0] if $m[0] > $hwm;
		$anon = $m[2] if $m[2] > $anon;
		return (1, $hwm, $anon);
	};
	my ($polls, $t2, $v, $alive, $pc1, $cc1) = (0);
	while (1)
	{
		if (!$cons_pid)
		{
			$cons_pid = one_value($cons, $cons_pid_sql);
			if ($cons_pid) { $cons_pids{$cons_pid} = 1; $t_worker //= now() }
		}
		if (!$prod_pid)
		{
			$prod_pid = one_value($prod, $prod_pid_sql);
			$prod_pids{$prod_pid} = 1 if $prod_pid;
		}
		if ($cons_pid)
		{
			($alive, $cons_hwm, $cons_anon) = $sample->($cons_pid, $cons_hwm, $cons_anon);
			$cons_pid = undef unless $alive;
		}
		if ($prod_pid)
		{
			($alive, $prod_hwm, $prod_anon) = $sample->($prod_pid, $prod_hwm, $prod_anon);
			$prod_pid = undef unless $alive;
		}
		if (!defined $t_first)
		{
			$t_first = now() if is_true(probe($fst));
		}
		$v = probe($pst);
		$polls++;
		$t2 = now();
		if (is_true($v))
		{
			($pc1, $cc1) = (server_ticks($ENV{APPLY_PROD_DATA}), server_ticks($ENV{APPLY_CONS_DATA}));
			$t_first //= $t2;
			last;
		}
		fail(3, sprintf("the consumer did not catch up within %d s of its start (probe '%s' still '%s')",
			$deadline_s, $probe, $v // 'null'))
		  if $t2 - $t0 > $deadline_s;
		Time::HiRes::sleep(0.05);
	}
	# One last look: the kernel's high-water mark covers the whole run.
	($alive, $cons_hwm, $cons_anon) = $sample->($cons_pid, $cons_hwm, $cons_anon) if $cons_pid;
	($alive, $prod_hwm, $prod_anon) = $sample->($prod_pid, $prod_hwm, $prod_anon) if $prod_pid;
	my $digest = verify($prod, $cons, $verify);
	printf "total_s=%.3f first_s=%.3f start_s=%.3f worker_s=%s cons_hwm_mb=%.1f cons_anon_mb=%.1f cons_pids=%d prod_hwm_mb=%.1f prod_anon_mb=%.1f prod_pids=%d prod_cpu_s=%s cons_cpu_s=%s digest=%s\n",
	  $t2 - $t0, $t_first - $t0, $t_up - $t0, defined $t_worker ? sprintf('%.3f', $t_worker - $t0) : 'nan',
	  $cons_hwm / 1024, $cons_anon / 1024, scalar keys %cons_pids,
	  $prod_hwm / 1024, $prod_anon / 1024, scalar keys %prod_pids, cpu_s($pc1 - $pc0), cpu_s($cc1), $digest =~ s/ /\//gr;
}
else
{
	fail(2, "unknown mode '$mode' (throughput, latency or catchup)");
}
