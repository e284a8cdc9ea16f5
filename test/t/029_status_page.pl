# The status page in a real browser: headless Chromium, driven through
# chromedriver's W3C WebDriver protocol (HTTP::Tiny + JSON::PP), loads
# each site's page with Basic credentials in the URL, sees the producer and
# consumer rows, clicks Approve on the producer (the subscription becomes
# Approved) and Resync on the consumer's failed update (it becomes Synced),
# and saves a screenshot that must be a PNG that is not blank.  With curl:
# no credentials is a 401 that makes a browser prompt; a key of a plain
# role is refused; a pg_monitor key sees the page without buttons and its
# POST is refused; a cross-site POST (Origin, Sec-Fetch-Site) or one
# without the right token is refused 403 and changes nothing; an action
# that fails shows its error (a 4xx, not a 500); a filter of the sync log
# shows only what matches; values are HTML-escaped.
#
# chromium and chromium-driver come from test/setup.sh (ES_PACKAGES).
# Nothing sleeps a fixed time hoping: every wait polls with a deadline.
use strict;
use warnings;
use FindBin;
use lib $FindBin::RealBin;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use HTTP::Tiny;
use JSON::PP;
use MIME::Base64;
use Compress::Zlib;
use File::Path qw(make_path);
use EsSites;

my ($chromium) = grep { -x $_ } qw(/usr/bin/chromium /usr/bin/chromium-browser);
my $chromedriver = '/usr/bin/chromedriver';
plan skip_all => 'chromium and chromedriver are needed (test/setup.sh installs them)'
  unless $chromium && -x $chromedriver;

my $P = add_site(new_node('producer'), 'site');
my $C = add_site(new_node('consumer'), 'site');

sq($P, q{
	CREATE TABLE item (name text PRIMARY KEY, v text);
	CREATE ROLE branch;
	GRANT SELECT ON item TO branch;
});
sq($C, q{
	CREATE ROLE applier;
	CREATE TABLE item (name text PRIMARY KEY, v text CONSTRAINT no_bad CHECK (v <> 'bad'));
	GRANT SELECT, INSERT, UPDATE, DELETE ON item TO applier;
});
# The page's roles: ops administers both sites, watcher only looks.
foreach my $s ($P, $C)
{
	$s->{node}->safe_psql('postgres', q{
		CREATE ROLE ops NOLOGIN; GRANT eventstream_admin TO ops;
		CREATE ROLE watcher NOLOGIN; GRANT pg_monitor TO watcher;
	});
}
my ($key, $secret) = key_pair($P, 'branch');
sq($C, "SELECT eventstream.add_producer(producer_url => '$P->{url}', api_key => '$key', api_secret => '$secret', "
	  . "subscriber => 'applier', tables => ARRAY['item'])");
ok(wait_query($P, "SELECT status FROM eventstream.consumer_table WHERE consumer_url = '$C->{url}'", 'Pending', 30),
	'the consumer waits for approval on the producer');

sub status_key
{
	my ($s, $role) = @_;
	my ($r, $o, $e) = q_try($s, "SELECT api_key || '|' || api_secret FROM eventstream.create_status_key('$role')");
	ok($r == 0, "create_status_key('$role') on $s->{name}") or diag($e);
	return $r == 0 ? split(/\|/, $o) : ('none', 'none');
}
my ($pops, $pops_secret) = status_key($P, 'ops');
my ($cops, $cops_secret) = status_key($C, 'ops');
my ($pwatch, $pwatch_secret) = status_key($P, 'watcher');
my ($ret, $out, $err) = q_try($P, "SELECT eventstream.create_status_key('branch')");
like($err, qr/neither a member of eventstream_admin nor of pg_monitor/,
	'create_status_key: refused for a role that is neither');
($ret, $out, $err) = q_try($P, "SELECT eventstream.create_api_key('ops')");
like($err, qr/cannot be the role of an API key/, 'create_api_key: still refused for an eventstream_admin member');

# curl: (status, headers, body)
sub curl
{
	my ($url, @opts) = @_;
	my ($o, $e) = ('', '');
	my $hdr = "$PostgreSQL::Test::Utils::tmp_check/curl-headers-$$";
	IPC::Run::run([ 'curl', '-s', '-D', $hdr, '-o', '-', '-w', "\n%{http_code}", '--max-time', 10, @opts, $url ],
		'>', \$o, '2>', \$e);
	my ($body, $status) = $o =~ /\A(.*)\n([^\n]*)\z/s ? ($1, $2) : ('', $o);
	my $headers = -e $hdr ? slurp_file($hdr) : '';
	unlink $hdr;
	return ($status, $headers, $body);
}

######################################################################
# Who sees it (curl)
######################################################################

my ($st, $hd, $body) = curl("$P->{url}/status");
is($st, '401', 'no credentials: 401');
like($hd, qr/^WWW-Authenticate: Basic realm="eventstream"/mi, 'no credentials: a Basic challenge, so a browser prompts');
($st, $hd, $body) = curl("$P->{url}/status", '-u', "$key:$secret");
is($st, '403', "a key of a plain role (a consumer's): 403");
($st, $hd, $body) = curl("$P->{url}/", '-u', "$pops:wrong");
is($st, '401', 'a wrong secret: 401');

($st, $hd, $body) = curl("$P->{url}/status", '-u', "$pwatch:$pwatch_secret");
is($st, '200', 'a pg_monitor key: 200');
like($hd, qr{^Content-Type: text/html; charset=utf-8}mi, 'pg_monitor: HTML');
like($body, qr{<td>\Q$C->{url}\E</td>.*<td>0 / 1</td>}s, 'pg_monitor: sees the consumer, with one table pending');
unlike($body, qr/id="subscriptions"|id="sync-log"|id="failed"/, 'pg_monitor: no subscriptions, sync log or failed updates');
unlike($body, qr/data-action=|<button type="submit" data-/, 'pg_monitor: no action buttons');
like($body, qr/id="read-only"/, 'pg_monitor: says the page is read only');
unlike($body, qr/<script|src=|<link/i, 'the page has no script and loads nothing');
like($hd, qr/^Content-Security-Policy: default-src 'none'/mi, 'a Content-Security-Policy that forbids outside assets');

($st, $hd, $body) = curl("$P->{url}/", '-H', "Authorization: token $pops:$pops_secret");
is($st, '200', 'an eventstream_admin key with token auth, at /: 200');
my ($token) = $body =~ /name="token" value="([0-9a-f]{64})"/;
ok(defined $token, 'eventstream_admin: the forms carry a token');
like($body, qr/data-action="approve" data-consumer_url="\Q$C->{url}\E" data-ref_table="public\.item"/,
	'eventstream_admin: an Approve button for the pending subscription');

######################################################################
# Refused POSTs change nothing (curl)
######################################################################

my $approve_form = "token=$token&consumer_url=" . uri($C->{url}) . '&ref_table=public.item';
sub uri { my $s = shift; $s =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord($1))/ge; return $s; }
my $pending_sql = "SELECT status FROM eventstream.consumer_table WHERE consumer_url = '$C->{url}'";

($st, $hd, $body) = curl("$P->{url}/status/approve", '-u', "$pwatch:$pwatch_secret", '--data', $approve_form);
is($st, '403', 'pg_monitor: its POST is refused');
($st, $hd, $body) = curl("$P->{url}/status/approve", '-u', "$pops:$pops_secret", '--data', $approve_form,
	'-H', 'Origin: http://evil.example');
is($st, '403', 'cross-site Origin: refused');
like($body, qr/another site/, 'cross-site Origin: says why');
($st, $hd, $body) = curl("$P->{url}/status/approve", '-u', "$pops:$pops_secret", '--data', $approve_form,
	'-H', 'Sec-Fetch-Site: cross-site');
is($st, '403', 'Sec-Fetch-Site: cross-site: refused');
(my $bad_form = $approve_form) =~ s/token=[0-9a-f]+/token=00/;
($st, $hd, $body) = curl("$P->{url}/status/approve", '-u', "$pops:$pops_secret", '--data', $bad_form);
is($st, '403', 'a wrong token: refused');
(my $no_token = $approve_form) =~ s/token=[0-9a-f]+&//;
($st, $hd, $body) = curl("$P->{url}/status/approve", '-u', "$pops:$pops_secret", '--data', $no_token);
is($st, '403', 'no token: refused');
($st, $hd, $body) = curl("$P->{url}/", '-u', "$pops:$pops_secret", '--data', $approve_form);
is($st, '404', 'a POST to / (no action there): 404');
($st, $hd, $body) = curl("$P->{url}/status/nothing", '-u', "$pops:$pops_secret");
is($st, '404', 'GET of another path under /status: 404');
is(sq($P, $pending_sql), 'Pending', 'after the refused POSTs the subscription is still Pending');
($st, $hd, $body) = curl("$P->{url}/status/resync", '-u', "$pops:$pops_secret", '--data', "token=$token&id=424242");
like($st, qr/^4\d\d$/, "an action that fails: a 4xx ($st), not a 500");
like($body, qr/sync log 424242 does not exist/, 'an action that fails: the page says why');

######################################################################
# The browser
######################################################################

my $out_dir = "$PostgreSQL::Test::Utils::tmp_check/status_page";
make_path("$out_dir/home");
my $wd_port = PostgreSQL::Test::Cluster::get_free_port();
my $wd_log = "$out_dir/chromedriver.log";
$ENV{HOME} = "$out_dir/home";
our $driver = IPC::Run::start([ $chromedriver, "--port=$wd_port", "--log-path=$wd_log" ],
	'<', \undef, '>', \my $wd_out, '2>', \my $wd_err);
my $http = HTTP::Tiny->new(timeout => 60);
my $wd = "http://127.0.0.1:$wd_port";
ok(wait_until(30, sub { my $r = $http->get("$wd/status"); $r->{success} && $r->{content} =~ /"ready":\s*true/ }),
	'chromedriver is ready');

# A WebDriver command: its "value", or undef (with a diag) on an error.
sub wd
{
	my ($method, $path, $data) = @_;
	my $r = $http->request($method, "$wd$path",
		{ headers => { 'Content-Type' => 'application/json' },
		  defined $data ? (content => encode_json($data)) : () });
	my $v = eval { decode_json($r->{content}) };
	if (!$r->{success} || !$v)
	{
		diag("WebDriver $method $path: $r->{status} " . substr($r->{content} // '', 0, 400));
		return undef;
	}
	return $v->{value} // 1;		# null: done
}

my $session = wd('POST', '/session', { capabilities => { alwaysMatch => {
	browserName => 'chrome',
	'goog:chromeOptions' => { binary => $chromium, args => [
		'--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
		'--disable-background-networking', '--disable-component-update', '--disable-sync',
		'--disable-dev-shm-usage', '--window-size=1280,1600', "--user-data-dir=$out_dir/profile" ] } } } });
my $sid = $session ? $session->{sessionId} : undef;
ok($sid, 'a headless Chromium session');
my $S = "/session/" . ($sid // 'none');

sub page_source { return wd('GET', "$S/source") // ''; }

sub click
{
	my ($css) = @_;
	my $el = wd('POST', "$S/element", { using => 'css selector', value => $css });
	return 0 unless $el;
	my ($id) = values %$el;
	return defined wd('POST', "$S/element/$id/click", {});
}

# The producer's page: the pending consumer, Approve.
(my $phost = $P->{url}) =~ s{^http://}{};
wd('POST', "$S/url", { url => "http://$pops:$pops_secret\@$phost/status" });
my $src = page_source();
like($src, qr/Consumers that pull from this site/, 'browser: the producer page loads');
like($src, qr/\Q$C->{url}\E/, 'browser: it shows the consumer');
ok(click(qq{button[data-action="approve"][data-ref_table="public.item"]}), 'browser: Approve is clicked');
ok(wait_query($P, $pending_sql, 'Approved', 20), 'browser: the subscription is Approved');
like(page_source(), qr/class="status-Approved">Approved</, 'browser: back on the page, which says Approved');
ok(wait_query($C, "SELECT status FROM eventstream.producer_table", 'Approved', 30), 'the consumer hears it');
ok(wait_query($C, "SELECT state FROM eventstream.producer_status", 'streaming', 30), 'and streams');

# A failed update on the consumer, and an escaped value in the page.
sq($P, q{INSERT INTO item VALUES ('bad<b>&"1', 'bad')});
ok(wait_query($C, "SELECT count(*) FROM eventstream.sync_log WHERE status = 'Failed'", '1', 30),
	'an update fails on the consumer');
my $failed_id = sq($C, "SELECT id FROM eventstream.sync_log WHERE status = 'Failed'");
sq($P, q{INSERT INTO item VALUES ('good1', 'ok')});
ok(wait_query($C, "SELECT count(*) FROM item", '1', 30), 'a later update applies');

(my $chost = $C->{url}) =~ s{^http://}{};
wd('POST', "$S/url", { url => "http://$cops:$cops_secret\@$chost/status" });
$src = page_source();
like($src, qr/Producers this site pulls from.*\Q$P->{url}\E/s, 'browser: the consumer page shows the producer');
like($src, qr/bad&lt;b&gt;&amp;"1/, 'browser: the docname is text, not markup');
unlike($src, qr/bad<b>/, 'browser: never raw');
($st, $hd, $body) = curl("$C->{url}/status", '-u', "$cops:$cops_secret");
like($body, qr/bad&lt;b&gt;&amp;&quot;1/, 'the docname is HTML-escaped, quotes included');
like($src, qr/no_bad/, 'browser: the failed update shows its error');
sq($C, 'ALTER TABLE item DROP CONSTRAINT no_bad');
ok(click(qq{button[data-action="resync"][data-id="$failed_id"]}), 'browser: Resync is clicked');
ok(wait_query($C, "SELECT status FROM eventstream.sync_log WHERE id = $failed_id", 'Synced', 20),
	'browser: the failed update is Synced');
is(sq($C, "SELECT v FROM item WHERE name = 'bad<b>&\"1'"), 'bad', 'browser: its row is applied');
like(page_source(), qr/id="no-failed"/, 'browser: back on the page, no failed update is left');

# The sync log's filters: a plain GET form.
wd('POST', "$S/url", { url => "http://$cops:$cops_secret\@$chost/status?status=Failed&table=public.item" });
like(page_source(), qr/id="log-empty"/, 'browser: filtering the sync log on Failed shows nothing now');
wd('POST', "$S/url", { url => "http://$cops:$cops_secret\@$chost/status?status=Synced&producer=" . uri($P->{url}) });
$src = page_source();
like($src, qr/id="sync-log".*good1/s, 'browser: filtering on Synced and the producer shows its rows');
like($src, qr/<svg id="chart"[^>]*>.*<rect /s, 'browser: the chart has bars');

# A same-origin POST with the right token, from curl: Reject, 303 back.
($st, $hd, $body) = curl("$P->{url}/status/reject", '-u', "$pops:$pops_secret", '--data', $approve_form,
	'-H', "Origin: $P->{url}", '-H', 'Sec-Fetch-Site: same-origin');
is($st, '303', 'Reject from curl with the token: 303');
like($hd, qr{^Location: /status\r?$}mi, 'Reject: back to /status');
is(sq($P, $pending_sql), 'Rejected', 'Reject: the subscription is Rejected');

# The screenshot: a PNG, not blank.
my $png64 = wd('GET', "$S/screenshot");
my $shot = "$out_dir/status_page.png";
if (defined $png64)
{
	open my $fh, '>:raw', $shot or die "$shot: $!";
	print $fh decode_base64($png64);
	close $fh;
}
note("screenshot: $shot");
ok(-s $shot && -s $shot > 10_000, 'the screenshot exists and is larger than 10 kB');
my ($is_png, $colours) = png_colours($shot);
ok($is_png, 'the screenshot is a PNG');
cmp_ok($colours, '>', 2, "the screenshot is not blank ($colours distinct colours in its first rows)");

wd('DELETE', $S) if $sid;
$driver->kill_kill;
undef $driver;

# A test that dies half-way leaves no chromedriver (nor its browser) behind.
END { $driver->kill_kill if $driver; }

done_testing();

# (is a PNG, distinct colours): decodes an 8-bit RGB or RGBA PNG's pixels
# (with its filters undone) and counts the distinct colours.
sub png_colours
{
	my ($file) = @_;
	return (0, 0) unless -s $file;
	my $data = slurp_file($file);
	return (0, 0) unless substr($data, 0, 8) eq "\x89PNG\r\n\x1a\n";
	my ($pos, $idat, $w, $h, $depth, $type) = (8, '');
	while ($pos + 8 <= length $data)
	{
		my ($len, $kind) = unpack('N a4', substr($data, $pos, 8));
		my $chunk = substr($data, $pos + 8, $len);
		($w, $h, $depth, $type) = unpack('N N C C', $chunk) if $kind eq 'IHDR';
		$idat .= $chunk if $kind eq 'IDAT';
		$pos += 12 + $len;
	}
	my $raw = uncompress($idat);
	return (1, 0) unless defined $raw && $depth == 8 && ($type == 2 || $type == 6);
	my $bpp = $type == 6 ? 4 : 3;
	my $stride = $w * $bpp;
	my (%seen, @prev);
	@prev = (0) x $stride;
	for my $y (0 .. ($h > 400 ? 399 : $h - 1))
	{
		my $f = ord(substr($raw, $y * ($stride + 1), 1));
		my @cur = unpack('C*', substr($raw, $y * ($stride + 1) + 1, $stride));
		for my $i (0 .. $stride - 1)
		{
			my $a = $i >= $bpp ? $cur[$i - $bpp] : 0;
			my $b = $prev[$i];
			my $c = $i >= $bpp ? $prev[$i - $bpp] : 0;
			my $p = $f == 1 ? $a : $f == 2 ? $b : $f == 3 ? int(($a + $b) / 2)
			  : $f == 4 ? paeth($a, $b, $c) : 0;
			$cur[$i] = ($cur[$i] + $p) & 0xff;
		}
		for (my $i = 0; $i < $stride; $i += $bpp)
		{
			$seen{ join ',', @cur[ $i .. $i + 2 ] } = 1;
		}
		@prev = @cur;
	}
	return (1, scalar keys %seen);
}

sub paeth
{
	my ($a, $b, $c) = @_;
	my $p = $a + $b - $c;
	my ($pa, $pb, $pc) = (abs($p - $a), abs($p - $b), abs($p - $c));
	return $pa <= $pb && $pa <= $pc ? $a : $pb <= $pc ? $b : $c;
}
