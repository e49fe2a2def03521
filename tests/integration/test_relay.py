"""Outbound relay (issue 6, design §6) end to end on loopback: instance A (hostname
test.example, domain example.org, submissions listener) relays what alice submits;
the recipient domains are answered by a dnsmasq this module starts on 127.0.0.1:

    remote.example   MX 10 mx.remote.example      mx.remote.example A 127.0.0.1
    nullmx.example   MX 0 .                        (RFC 7505 null MX)
    anything else under .example                   NXDOMAIN (--local=/example/)

The MX is instance B (hostname mx.remote.example, domain remote.example, smtp + pop3s
listeners), or a test's own socket server; relay.port of A is the port of whichever
listens for that test (the relay uses one remote port for every MX).

What is checked: the exact files (B's Maildir, A's queue, alice's DSNs), the JSON log
lines of A (relay.delivered / relay.deferred / relay.bounced with mx, ip, tls, attempts,
reply) and of B (smtp.accept), and that nothing is delivered twice. Besides the
delivery cases: the fields every attempt line must carry (issue 6, Ops: mx, ip, tls,
dsn, reply) and relay.smarthost (by name, by IP literal, naming the server itself).

The scheduler ticks every 5 s and tries a new entry at once; retry_initial is 1s, so a
retry comes at the first tick after a deferral (<= ~6 s). The SMTP client's own
timeouts (connect 30 s, command 300 s by default, relay.*_timeout) are covered against
a scripted sink in tests/unit/test_mta.c; here the "never answers" case checks what
can be seen in a few seconds.

The module is skipped when dnsmasq is not installed (Debian dnsmasq-base)."""
import ctypes
import email
import email.utils
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from harness import (Pop3Conn, Server, ServerError, SmtpConn, deep_merge, free_port, wait_until)

PW = "Relay-Test-Pw-5d1a"
ALICE = "alice@example.org"
BOB = "bob@remote.example"
CAROL = "carol@remote.example"
NOBODY = "nobody@remote.example"
A_HOST = "test.example"
B_HOST = "mx.remote.example"

DATE_RE = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
QID_RE = r"[0-9a-v]{16}"
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as (" + QID_RE + r")$")
AUTH_OK = "235 2.7.0 Authentication successful"
RCPT_OK = "250 2.1.5 Ok"
MAIL_OK = "250 2.1.0 Ok"
GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"

DELIVER_TIMEOUT = 12.0          # first attempt is immediate; a retry waits for a 5 s tick

DNSMASQ = next((p for p in ("/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq")
                if os.access(p, os.X_OK)), None)

ZONE = [
    "--mx-host=remote.example,mx.remote.example,10",
    "--host-record=mx.remote.example,127.0.0.1",
    "--mx-host=nullmx.example,.,0",
]


# ---------------------------------------------------------------- DNS helpers

def dns_query(port, name, qtype, timeout=1.0):
    """One UDP query to 127.0.0.1:port; returns (rcode, answer RRs as [(type, rdata)])."""
    qid = random.getrandbits(16)
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        pkt, _ = s.recvfrom(4096)
    rid, flags, qd, an, _ns, _ar = struct.unpack(">HHHHHH", pkt[:12])
    if rid != qid:
        raise AssertionError("DNS id mismatch")
    off = 12

    def skip_name(o):
        while True:
            ln = pkt[o]
            if ln == 0:
                return o + 1
            if ln & 0xC0 == 0xC0:
                return o + 2
            o += 1 + ln

    for _ in range(qd):
        off = skip_name(off) + 4
    rrs = []
    for _ in range(an):
        off = skip_name(off)
        t, _c, _ttl, rdlen = struct.unpack(">HHIH", pkt[off:off + 10])
        off += 10
        rrs.append((t, pkt[off:off + rdlen]))
        off += rdlen
    return flags & 0xF, rrs


class Dnsmasq:
    """dnsmasq on 127.0.0.1:<free port>, authoritative-ish for .example (--local)."""

    def __init__(self, records):
        self.tmp = tempfile.mkdtemp(prefix="postling-relay-dns-")
        self.records = list(records)
        self.proc = None
        self.port = None

    def start(self):
        for _ in range(5):
            self.port = free_udp_tcp_port()
            log = open(os.path.join(self.tmp, "dnsmasq.log"), "wb")
            self.proc = subprocess.Popen(
                [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
                 "--no-poll", "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={self.port}",
                 "--local=/example/", "--user=root", f"--pid-file={self.tmp}/dnsmasq.pid", *self.records],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    rcode, rrs = dns_query(self.port, "remote.example", 15, timeout=0.2)
                    if rcode == 0 and rrs:
                        return self
                except (OSError, AssertionError):
                    pass
                time.sleep(0.05)
            self.stop()
        with open(os.path.join(self.tmp, "dnsmasq.log"), "rb") as f:
            raise RuntimeError("dnsmasq did not come up: " + f.read().decode(errors="replace"))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _die_with_parent():
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_udp_tcp_port():
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            t.close()
            u.close()
    raise RuntimeError("no free port")


DNS = None
NULL_MX_SKIP = None          # why the null MX case cannot run, or None


def setUpModule():
    global DNS, NULL_MX_SKIP
    if DNSMASQ is None:
        raise unittest.SkipTest("dnsmasq is not installed (Debian dnsmasq-base): no local resolver")
    DNS = Dnsmasq(ZONE).start()
    # dnsmasq --mx-host with target "." must give MX 0 "." (rdata: pref 0, root name)
    try:
        rcode, rrs = dns_query(DNS.port, "nullmx.example", 15)
        if rcode != 0 or rrs != [(15, b"\0\0\0")]:
            NULL_MX_SKIP = f"dnsmasq --mx-host=nullmx.example,.,0 gives rcode {rcode} answers {rrs!r}, not MX 0 ."
    except (OSError, AssertionError) as e:
        NULL_MX_SKIP = f"null MX check query failed: {e}"


def tearDownModule():
    if DNS is not None:
        DNS.stop()
        if not os.environ.get("POSTLING_KEEP_TMP"):
            shutil.rmtree(DNS.tmp, ignore_errors=True)


# ---------------------------------------------------------------- remote SMTP stand-ins

class HangingServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (reads and drops)."""

    def __init__(self):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.conns = []
        self.received = b""
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            with self.lock:
                self.conns.append(s)
            threading.Thread(target=self._read, args=(s,), daemon=True).start()

    def _read(self, s):
        while True:
            try:
                d = s.recv(4096)
            except OSError:
                return
            if not d:
                return
            with self.lock:
                self.received += d

    def count(self):
        with self.lock:
            return len(self.conns)

    def close(self):
        self.closed = True
        try:
            self.ls.close()
        except OSError:
            pass
        with self.lock:
            for s in self.conns:
                try:
                    s.close()
                except OSError:
                    pass


# ---------------------------------------------------------------- base class

def received_a(qid, tls, rcpt=None):
    """A's Received: (submission over implicit TLS, authenticated as alice)."""
    s = re.escape(f"Received: from client.example ([127.0.0.1])\r\n\tby {A_HOST} (Postling) with ESMTPSA id {qid}"
                  f"\r\n\t(using {tls[0]} with cipher {tls[1]})\r\n\t(Authenticated sender: {ALICE})").encode()
    if rcpt:
        s += re.escape(f"\r\n\tfor <{rcpt}>").encode()
    return s + rb";\r\n\t" + DATE_RE + rb"\r\n"


def received_b(rcpt=None):
    """B's Received: for A's relay connection (EHLO test.example, STARTTLS, no AUTH);
    group 1 is B's id."""
    s = (re.escape(f"Received: from {A_HOST} ([127.0.0.1])\r\n\tby {B_HOST} (Postling) with ESMTPS id ").encode()
         + rb"(" + QID_RE.encode() + rb")\r\n\t\(using TLSv1\.[23] with cipher [A-Za-z0-9_-]+\)")
    if rcpt:
        s += re.escape(f"\r\n\tfor <{rcpt}>").encode()
    return s + rb";\r\n\t" + DATE_RE + rb"\r\n"


def make_body(subject, text="Hello from alice.\r\n", to=BOB):
    hdr = [f"From: Alice <{ALICE}>", f"To: <{to}>", f"Subject: {subject}",
           f"Message-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@example.org>",
           "Date: Mon, 01 Jan 2024 00:00:00 +0000"]
    return ("\r\n".join(hdr) + "\r\n\r\n" + text).encode()


def rcpt_lines(env):
    """{addr: (orcpt, notify, state, attempts, updated, remote-mta, last-reply)} of an .env text."""
    out = {}
    for line in env.split("\n"):
        if line.startswith("rcpt "):
            f = line.split(" ")
            assert len(f) == 9, line
            out[f[1]] = tuple(f[2:])
    return out


def env_field(env, name):
    m = re.search(rf"^{name} (\S+)$", env, re.M)
    return m.group(1) if m else None


class RelayTestCase(unittest.TestCase):
    maxDiff = None

    def setUp(self):
        self._servers = []

    def tearDown(self):
        # every server this test started: alive (unless stopped on purpose), no sanitizer
        # report, no password in the log, and a clean exit on SIGTERM
        errors = []
        for srv in self._servers:
            try:
                srv.assert_alive()
                srv.assert_no_secrets_in_log()
                if srv.running():
                    t0 = time.monotonic()
                    rc = srv.stop()
                    srv.check_sanitizers()
                    if rc != 0:
                        raise ServerError(f"{srv.name}: exit status {rc} on SIGTERM\n{srv.log_tail()}")
                    if time.monotonic() - t0 > 5:
                        raise ServerError(f"{srv.name}: took {time.monotonic() - t0:.1f} s to stop")
            except BaseException as e:          # noqa: BLE001 - report all, close all
                errors.append(e)
            finally:
                srv.close()
        if errors:
            raise errors[0]

    # -- servers
    def server_b(self, users=(BOB,), config=None, start=True):
        cfg = deep_merge({"server": {"hostname": B_HOST}, "domains": ["remote.example"]}, config)
        b = Server(name="relayB", users={u: PW for u in users}, listeners=("smtp", "pop3s"), config=cfg)
        self._servers.append(b)
        if start:
            b.start()
        return b

    def server_a(self, port, hold=False, config=None, start=True):
        cfg = deep_merge({"relay": {"hold": hold, "dns": {"servers": ["127.0.0.1"], "port": DNS.port},
                                    "port": port, "retry_initial": "1s"}}, config)
        a = Server(name="relayA", users={ALICE: PW}, listeners=("submissions",), config=cfg)
        self._servers.append(a)
        if start:
            a.start()
        return a

    # -- submission at A
    def submit(self, a, rcpts, content, sender=ALICE, conn=None):
        """One transaction over submissions as alice; returns (queue id, (tls version, cipher))."""
        c = conn or self.login(a)
        rs = c.transaction(sender, rcpts, content)
        self.assertEqual(rs[0], MAIL_OK)
        self.assertEqual(rs[1:-2], [RCPT_OK] * len(rcpts))
        self.assertEqual(rs[-2], GO_AHEAD)
        m = QUEUED_RE.match(rs[-1] or "")
        self.assertIsNotNone(m, f"not queued: {rs!r}")
        tls = (c.sock.version(), c.sock.cipher()[0])
        if conn is None:
            c.quit()
            c.close()
        return m.group(1), tls

    def login(self, a):
        c = SmtpConn.connect(a, "submissions")
        self.addCleanup(c.close)
        self.assertTrue(c.greeting.startswith("220 "), c.greeting)
        c.ehlo("client.example")
        self.assertEqual(c.auth_plain(ALICE, PW), AUTH_OK)
        return c

    # -- waiting and reading
    def wait_event(self, srv, event, count=1, timeout=DELIVER_TIMEOUT, since=0, **fields):
        return srv.wait_log(event, timeout=timeout, count=count, since=since, **fields)

    def wait_queue_empty(self, a, timeout=5.0):
        try:
            wait_until(lambda: a.queue_files() == [], timeout=timeout, what="empty queue")
        except AssertionError:
            self.fail(f"A's queue dir not empty: {a.queue_files()}\n{a.log_tail()}")

    def read_files(self, srv, user):
        out = []
        for p in srv.message_files(user):
            with open(p, "rb") as f:
                out.append(f.read())
        return out

    def one_file(self, srv, user):
        files = self.read_files(srv, user)
        self.assertEqual(len(files), 1, f"{user} at {srv.name}: {srv.message_files(user)}")
        return files[0]

    def dsns(self, a):
        return self.read_files(a, ALICE)

    def assert_relay_line(self, e, qid, rcpt, mx=B_HOST, ip="127.0.0.1", tls=True, attempts=1):
        self.assertEqual(e.get("msgid"), qid, e)
        self.assertEqual(e.get("from"), ALICE, e)
        self.assertEqual(e.get("rcpt"), rcpt, e)
        self.assertEqual(e.get("mx"), mx, e)
        self.assertEqual(e.get("ip"), ip, e)
        self.assertIs(e.get("tls"), tls, e)
        self.assertEqual(e.get("attempts"), attempts, e)

    def parse_dsn(self, data):
        """(message, per-message fields, [per-recipient fields], third part) of a DSN file
        as stored in alice's Maildir; checks the RFC 3464/6522 structure."""
        prefix = f"Return-Path: <>\r\nDelivered-To: {ALICE}\r\n".encode()
        self.assertTrue(data.startswith(prefix), data[:200])
        self.assertIsNone(re.search(rb"(?<!\r)\n", data), "bare LF in the DSN")
        msg = email.message_from_bytes(data[len(prefix):])
        self.assertEqual(msg.get_content_type(), "multipart/report", data[:600])
        self.assertEqual(msg.get_param("report-type"), "delivery-status")
        self.assertEqual(msg["From"], f"Mail Delivery System <MAILER-DAEMON@{A_HOST}>")
        self.assertEqual(msg["To"], f"<{ALICE}>")
        self.assertEqual(msg["Auto-Submitted"], "auto-replied")
        self.assertEqual(msg["MIME-Version"], "1.0")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(msg["Date"]))
        self.assertRegex(msg["Message-ID"], r"^<[0-9a-f]{16}\." + QID_RE + r"@test\.example>$")
        parts = msg.get_payload()
        self.assertEqual([p.get_content_type() for p in parts],
                         ["text/plain", "message/delivery-status", "text/rfc822-headers"])
        blocks = parts[1].get_payload()
        self.assertGreaterEqual(len(blocks), 2, parts[1].as_string())
        per_msg = blocks[0]
        self.assertEqual(per_msg["Reporting-MTA"], f"dns; {A_HOST}")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(per_msg["Arrival-Date"]))
        return msg, per_msg, blocks[1:], parts

    @staticmethod
    def unfold(v):
        return re.sub(r"\r?\n[ \t]+", " ", v) if v is not None else None


# ===================================================================== 1. end to end

class EndToEnd(RelayTestCase):
    def test_submission_delivered_once_at_the_mx_and_read_over_pop3(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"))
        content = make_body("end to end")
        qid, tls = self.submit(a, [BOB], content)

        [e] = self.wait_event(a, "relay.delivered", msgid=qid)
        self.assert_relay_line(e, qid, BOB)
        self.assertRegex(e["reply"], r"^250 2\.0\.0 Ok: queued as " + QID_RE + "$")
        self.wait_queue_empty(a)

        data = self.one_file(b, BOB)
        prefix = f"Return-Path: <{ALICE}>\r\nDelivered-To: {BOB}\r\n".encode()
        self.assertTrue(data.startswith(prefix), data[:300])
        rest = data[len(prefix):]
        m = re.match(received_b(BOB), rest)
        self.assertIsNotNone(m, f"B's Received: does not match:\n{rest[:500]!r}")
        bqid = m.group(1).decode()
        rest = rest[m.end():]
        m2 = re.match(received_a(qid, tls, BOB), rest)
        self.assertIsNotNone(m2, f"A's Received: does not match:\n{rest[:500]!r}")
        self.assertEqual(rest[m2.end():], content, "message content changed on the way")
        # B's reply to "." named B's queue id: the one in its Received:
        self.assertEqual(e["reply"], f"250 2.0.0 Ok: queued as {bqid}")

        # B logged one accepted message, over TLS, from A's relay
        acc = b.find_log("smtp.accept")
        self.assertEqual(len(acc), 1, acc)
        self.assertEqual(acc[0].get("msgid"), bqid, acc[0])
        self.assertEqual(acc[0].get("from"), ALICE, acc[0])
        self.assertEqual(acc[0].get("rcpts"), BOB, acc[0])
        self.assertIs(acc[0].get("tls"), True, acc[0])

        # read back over POP3 at B: the same octets
        with Pop3Conn.connect(b, "pop3s") as p:
            self.assertTrue(p.greeting.startswith("+OK"), p.greeting)
            p.login(BOB, PW)
            self.assertEqual(p.cmd("STAT"), f"+OK 1 {len(data)}")
            first, lines = p.multi_cmd("RETR 1")
            self.assertTrue(first.startswith("+OK"), first)
            self.assertEqual("\r\n".join(lines).encode("latin-1") + b"\r\n", data)
            self.assertTrue(p.cmd("QUIT").startswith("+OK"))

        # exactly once: one relay.delivered, nothing else queued or attempted, no DSN
        time.sleep(0.5)
        self.assertEqual(len(a.find_log("relay.delivered")), 1)
        self.assertEqual(a.find_log("relay.deferred") + a.find_log("relay.bounced"), [])
        self.assertEqual(len(b.message_files(BOB)), 1)
        self.assertEqual(self.dsns(a), [])
        self.assertEqual(a.queue_files(), [])


# ===================================================================== 2, 3, 7. bounces, dots

class EndToEndImapDkim(RelayTestCase):
    """The issue's whole path: alice at A submits to bob at B; A signs with DKIM
    (ed25519 + rsa) and relays over TLS; bob reads the message over IMAPS at B; both
    signatures verify with dkimpy against the TXT records `postling dns-records` prints."""

    def test_signed_mail_read_over_imap_verifies(self):
        import imaplib
        import test_dkim
        if not test_dkim.have_dkimpy():
            self.skipTest("python3-dkim / python3-nacl not installed (./dev test installs them)")
        keydir = tempfile.mkdtemp(prefix="postling-e2e-dkim-")
        self.addCleanup(shutil.rmtree, keydir, True)
        keys = [{"domain": "example.org", "selector": "ed",
                 "key": test_dkim.make_key(os.path.join(keydir, "ed.pem"), "ed25519")},
                {"domain": "example.org", "selector": "rsa",
                 "key": test_dkim.make_key(os.path.join(keydir, "rsa.pem"), "rsa")}]
        b = Server(name="relayB", users={BOB: PW}, listeners=("smtp", "imaps"),
                   config={"server": {"hostname": B_HOST}, "domains": ["remote.example"]})
        self._servers.append(b)
        b.start()
        a = self.server_a(b.port("smtp"), config={"dkim": keys})
        content = make_body("signed, relayed, read over IMAP")
        qid, _tls = self.submit(a, [BOB], content)
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=5)
        self.assertIs(d.get("tls"), True, d)

        imap = imaplib.IMAP4_SSL("127.0.0.1", b.port("imaps"), ssl_context=Server.ssl_context())
        self.addCleanup(imap.logout)
        self.assertEqual(imap.login(BOB, PW)[0], "OK")
        typ, data = imap.select("INBOX")
        self.assertEqual((typ, data), ("OK", [b"1"]))
        typ, data = imap.fetch("1", "(BODY.PEEK[])")
        self.assertEqual(typ, "OK")
        msg = data[0][1]
        self.assertTrue(msg.endswith(content), msg[-200:])

        p = a.run_cli("dns-records", "-c", a.config_path)
        self.assertEqual(p.returncode, 0, p.stderr)
        records = {name: test_dkim.txt_value(rdata)
                   for name, rtype, rdata in test_dkim.parse_zone(p.stdout.decode())
                   if rtype == "TXT" and "._domainkey." in name}
        self.assertEqual(sorted(records), ["ed._domainkey.example.org", "rsa._domainkey.example.org"])
        self.assertEqual(test_dkim.dkim_verify(msg, records), [True, True])


class Bounces(RelayTestCase):
    def test_550_from_the_remote_bounces_to_the_local_sender(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"))
        content = make_body("half bounced")
        qid, _tls = self.submit(a, [BOB, NOBODY], content)

        [d] = self.wait_event(a, "relay.delivered", msgid=qid, rcpt=BOB)
        [f] = self.wait_event(a, "relay.bounced", msgid=qid, rcpt=NOBODY)
        self.assert_relay_line(d, qid, BOB)
        self.assert_relay_line(f, qid, NOBODY)
        unknown = f"550 5.1.1 <{NOBODY}>: Recipient address rejected: User unknown"
        self.assertEqual(f["reply"], unknown)
        [dsn_log] = self.wait_event(a, "relay.dsn", msgid=qid)
        self.assertEqual((dsn_log.get("kind"), dsn_log.get("to"), dsn_log.get("local")),
                         ("failure", ALICE, True), dsn_log)
        self.wait_queue_empty(a)
        wait_until(lambda: self.dsns(a), timeout=5, what="DSN in alice's Maildir")

        [data] = self.dsns(a)
        msg, per_msg, rcpts, parts = self.parse_dsn(data)
        self.assertEqual(len(rcpts), 1, "the delivered recipient must not be in the DSN")
        r = rcpts[0]
        self.assertEqual(r["Final-Recipient"], f"rfc822; {NOBODY}")
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], "5.1.1")
        self.assertEqual(r["Remote-MTA"], f"dns; {B_HOST}")
        self.assertEqual(self.unfold(r["Diagnostic-Code"]), f"smtp; {unknown}")
        self.assertIsNotNone(email.utils.parsedate_to_datetime(r["Last-Attempt-Date"]))
        self.assertNotIn(BOB, parts[0].get_payload())
        self.assertIn(f"<{NOBODY}>", parts[0].get_payload())
        # third part: the original header section (no RET given)
        orig = parts[2].get_payload()
        self.assertIn("Subject: half bounced", orig)
        self.assertRegex(orig, r"Received: from client\.example \(\[127\.0\.0\.1\]\)")
        self.assertNotIn("Hello from alice.", orig)

        # the delivered one is at B once; no second DSN
        self.assertEqual(len(b.message_files(BOB)), 1)
        time.sleep(0.5)
        self.assertEqual(len(self.dsns(a)), 1)
        self.assertEqual(len(a.find_log("relay.dsn")), 1)

    def _bounce_domain(self, rcpt, status, text):
        """A message to rcpt (a domain without a usable MX) bounces with status/text."""
        a = self.server_a(free_port())          # nothing is ever connected to
        qid, _tls = self.submit(a, [rcpt], make_body(f"to {rcpt}", to=rcpt))
        [f] = self.wait_event(a, "relay.bounced", msgid=qid, rcpt=rcpt)
        self.assertEqual(f.get("reply"), text, f)
        self.assertIs(f.get("tls"), False, f)
        self.assertEqual(f.get("attempts"), 1, f)
        self.wait_queue_empty(a)
        wait_until(lambda: self.dsns(a), timeout=5, what="DSN in alice's Maildir")
        [data] = self.dsns(a)
        _msg, _pm, rcpts, _parts = self.parse_dsn(data)
        self.assertEqual(len(rcpts), 1)
        r = rcpts[0]
        self.assertEqual(r["Final-Recipient"], f"rfc822; {rcpt}")
        self.assertEqual(r["Action"], "failed")
        self.assertEqual(r["Status"], status)
        self.assertIsNone(r["Remote-MTA"], "no remote MTA was talked to")
        self.assertEqual(self.unfold(r["Diagnostic-Code"]), f"X-Postling; {text}")
        self.assertEqual(a.find_log("relay.delivered") + a.find_log("relay.deferred"), [])

    def test_nxdomain_bounces_5_1_2(self):
        self._bounce_domain("x@nxdomain.example", "5.1.2",
                            "5.1.2 recipient domain does not exist (NXDOMAIN)")

    def test_null_mx_bounces_5_1_10(self):
        if NULL_MX_SKIP:
            self.skipTest(NULL_MX_SKIP)
        self._bounce_domain("x@nullmx.example", "5.1.10",
                            "5.1.10 recipient domain does not accept mail (null MX, RFC 7505)")

    def test_lines_starting_with_a_dot_arrive_intact(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"))
        text = (".\r\n..\r\n...\r\n.hidden line\r\n..two dots\r\n . space first\r\nmid.dle\r\n"
                "a line\r\n.\r\n.\r\nlast line\r\n.")       # no final CRLF: the client adds one
        content = make_body("dots", text=text)
        qid, tls = self.submit(a, [BOB], content)
        self.wait_event(a, "relay.delivered", msgid=qid, rcpt=BOB)
        self.wait_queue_empty(a)
        data = self.one_file(b, BOB)
        m = re.match(rb"Return-Path: <alice@example\.org>\r\nDelivered-To: bob@remote\.example\r\n"
                     + received_b(BOB) + received_a(qid, tls, BOB), data)
        self.assertIsNotNone(m, data[:600])
        self.assertEqual(data[m.end():], content + b"\r\n", "dot lines changed on the way")
        with Pop3Conn.connect(b, "pop3s") as p:
            p.login(BOB, PW)
            _first, lines = p.multi_cmd("RETR 1")
            self.assertEqual("\r\n".join(lines).encode("latin-1") + b"\r\n", data)


# ===================================================================== log lines

class AttemptLogLines(RelayTestCase):
    """Issue 6, Ops: a JSON line for each attempt -- relay.delivered, relay.deferred,
    relay.bounced -- with mx, ip, tls, dsn (the RFC 3463 status) and the reply."""

    def test_every_attempt_line_has_mx_ip_tls_dsn_reply(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"))
        problems = []

        def want(e, **fields):
            for k, v in fields.items():
                if e.get(k) != v:
                    problems.append(f"{e.get('event')} {e.get('rcpt')}: {k}={e.get(k)!r}, want {v!r}")

        qid, _ = self.submit(a, [BOB, NOBODY], make_body("log fields"))
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, rcpt=BOB)
        [f] = self.wait_event(a, "relay.bounced", msgid=qid, rcpt=NOBODY)
        for e, dsn in ((d, "2.0.0"), (f, "5.1.1")):
            self.assert_relay_line(e, qid, e["rcpt"])
            want(e, dsn=dsn)
        # a host that refuses the connection: the MX and the address tried are known
        b.stop()
        qid2, _ = self.submit(a, [BOB], make_body("log fields 2"))
        [r] = self.wait_event(a, "relay.deferred", msgid=qid2, rcpt=BOB, timeout=5)
        want(r, mx=B_HOST, ip="127.0.0.1", tls=False, dsn="4.4.1")
        # a DNS verdict: no MX talked to, but the status is known
        qid3, _ = self.submit(a, ["x@nxdomain.example"], make_body("log fields 3", to="x@nxdomain.example"))
        [n] = self.wait_event(a, "relay.bounced", msgid=qid3, timeout=5)
        want(n, tls=False, dsn="5.1.2")
        self.assertEqual(problems, [], "relay log lines:\n" + "\n".join(
            json.dumps(e) for e in (d, f, r, n)))


# ===================================================================== 4. remote down, then up

class RemoteDown(RelayTestCase):
    def test_deferred_while_down_delivered_once_when_up(self):
        b = self.server_b(start=False)          # ports chosen, nothing listens yet
        a = self.server_a(b.port("smtp"))
        content = make_body("while down")
        qid, tls = self.submit(a, [BOB], content)
        [e] = self.wait_event(a, "relay.deferred", msgid=qid, rcpt=BOB, timeout=5)
        self.assertEqual(e.get("attempts"), 1, e)
        self.assertIs(e.get("tls"), False, e)
        self.assertNotEqual(e.get("reply", ""), "", e)

        def deferred_env():
            env, _msg = a.queue_entry(qid)
            return env if env_field(env, "attempts") not in (None, "0") else None
        env = wait_until(deferred_env, timeout=5, what="envelope with attempts >= 1")
        r = rcpt_lines(env)[BOB]
        self.assertEqual(r[2], "deferred", env)
        self.assertGreaterEqual(int(r[3]), 1, env)
        self.assertGreaterEqual(int(env_field(env, "attempts")), 1, env)
        self.assertGreater(int(env_field(env, "next-attempt")), int(env_field(env, "created")) - 1, env)
        self.assertNotEqual(r[6], "-", f"no last reply recorded: {env}")
        self.assertEqual(b.message_files(BOB), [])

        b.start()
        t0 = time.monotonic()
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, rcpt=BOB, timeout=DELIVER_TIMEOUT)
        self.assertLess(time.monotonic() - t0, DELIVER_TIMEOUT)
        self.assertGreaterEqual(d.get("attempts"), 2, d)
        self.assertIs(d.get("tls"), True, d)
        self.wait_queue_empty(a)
        data = self.one_file(b, BOB)
        self.assertTrue(data.endswith(content), data[-200:])
        self.assertRegex(data, received_a(qid, tls, BOB))
        time.sleep(0.5)
        self.assertEqual(len(b.message_files(BOB)), 1)
        self.assertEqual(len(a.find_log("relay.delivered", msgid=qid)), 1)
        self.assertEqual(self.dsns(a), [], "no DSN for a message that was delivered")
        self.assertEqual(a.find_log("relay.dsn"), [])


# ===================================================================== 5. partial delivery

class Partial(RelayTestCase):
    def test_452_to_second_rcpt_only_that_one_retried(self):
        # B takes one recipient per transaction: 452 4.5.3 to the second RCPT
        b = self.server_b(users=(BOB, CAROL), config={"smtp": {"max_recipients": 1}})
        a = self.server_a(b.port("smtp"))
        content = make_body("partial")
        qid, tls = self.submit(a, [BOB, CAROL], content)

        [d1] = self.wait_event(a, "relay.delivered", msgid=qid, rcpt=BOB, timeout=5)
        [df] = self.wait_event(a, "relay.deferred", msgid=qid, rcpt=CAROL, timeout=5)
        self.assert_relay_line(d1, qid, BOB)
        self.assert_relay_line(df, qid, CAROL)
        self.assertEqual(df["reply"], "452 4.5.3 Too many recipients")

        def env_after_first():
            try:
                env, _ = a.queue_entry(qid)
            except FileNotFoundError:
                return None
            return env if env_field(env, "attempts") == "1" else None
        env = wait_until(env_after_first, timeout=5, what="envelope after the first round")
        rl = rcpt_lines(env)
        self.assertEqual(rl[BOB][2:4], ("delivered", "1"), env)
        self.assertEqual(rl[CAROL][2:4], ("deferred", "1"), env)

        [d2] = self.wait_event(a, "relay.delivered", msgid=qid, rcpt=CAROL, timeout=DELIVER_TIMEOUT)
        self.assert_relay_line(d2, qid, CAROL, attempts=2)
        self.wait_queue_empty(a)
        time.sleep(0.5)
        for u in (BOB, CAROL):
            data = self.one_file(b, u)
            self.assertTrue(data.startswith(f"Return-Path: <{ALICE}>\r\nDelivered-To: {u}\r\n".encode()), data[:200])
            self.assertTrue(data.endswith(content), data[-200:])
            # A's Received: names no single recipient: the message had two
            self.assertRegex(data, received_a(qid, tls))
        self.assertEqual(len(a.find_log("relay.delivered", msgid=qid, rcpt=BOB)), 1)
        self.assertEqual(len(a.find_log("relay.delivered", msgid=qid, rcpt=CAROL)), 1)
        # the retry offered carol alone
        acc = b.find_log("smtp.accept")
        self.assertEqual([x.get("rcpts") for x in acc], [BOB, CAROL], acc)
        self.assertEqual(self.dsns(a), [])


# ===================================================================== 6. restart with a queue

class RestartWithQueue(RelayTestCase):
    N = 50           # the issue: "server restart with 50 messages in the queue"

    def test_held_queue_delivered_once_after_restart(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"), hold=True)
        c = self.login(a)
        sent = {}
        for i in range(self.N):
            content = make_body(f"queued {i:02d}")
            qid, _tls = self.submit(a, [BOB], content, conn=c)
            sent[qid] = content
        c.quit()
        self.assertEqual(len(sent), self.N)
        self.assertEqual(a.queue_files(), sorted([q + ".env" for q in sent] + [q + ".msg" for q in sent]))
        time.sleep(0.3)
        self.assertEqual(a.find_log("relay.delivered") + a.find_log("relay.deferred"), [],
                         "relay.hold: true attempted a delivery")
        msgs = {q: a.queue_entry(q)[1] for q in sent}

        self.assertEqual(a.stop(), 0)
        a.write_config({"relay": {"hold": False}})
        since = a.log_size()
        a.start()
        [loaded] = self.wait_event(a, "relay.loaded", timeout=5, since=since)
        self.assertEqual(loaded.get("msg"), f"{self.N} queued messages", loaded)
        self.wait_event(a, "relay.delivered", count=self.N, timeout=DELIVER_TIMEOUT)
        self.wait_queue_empty(a)
        time.sleep(1.0)
        delivered = a.find_log("relay.delivered")
        self.assertEqual(sorted(e["msgid"] for e in delivered), sorted(sent), "delivered not exactly once each")
        for e in delivered:
            self.assert_relay_line(e, e["msgid"], BOB)
        files = self.read_files(b, BOB)
        self.assertEqual(len(files), self.N)
        got = {}
        for data in files:
            m = re.match(rb"Return-Path: <alice@example\.org>\r\nDelivered-To: bob@remote\.example\r\n"
                         + received_b(BOB), data)
            self.assertIsNotNone(m, data[:400])
            got.setdefault(data[m.end():], 0)
            got[data[m.end():]] += 1
        self.assertEqual(sorted(got), sorted(msgs.values()), "B's copies differ from A's queue files")
        self.assertEqual(set(got.values()), {1})
        self.assertEqual(len(b.find_log("smtp.accept")), self.N, "B accepted a message twice")
        self.assertEqual(self.dsns(a), [])


# ===================================================================== 8. remote never answers

class RemoteHangs(RelayTestCase):
    def test_silent_remote_delivers_nothing_and_server_stays_responsive(self):
        # The client's connect/command timeouts (30 s / 300 s) are fixed in server.c, so
        # the deferral itself cannot be awaited here: only that nothing is delivered,
        # no second connection is opened for the same entry, and A keeps working.
        h = HangingServer()
        self.addCleanup(h.close)
        a = self.server_a(h.port)
        qid, _tls = self.submit(a, [BOB], make_body("into the void"))
        wait_until(lambda: h.count() >= 1, timeout=5, what="relay connection to the silent remote")
        time.sleep(6)       # past the next 5 s tick: the busy entry must not be started again
        self.assertEqual(h.count(), 1, "a second connection for an entry still in progress")
        self.assertEqual(h.received, b"", "client spoke before the greeting")
        for ev in ("relay.delivered", "relay.bounced", "relay.dsn"):
            self.assertEqual(a.find_log(ev), [], ev)
        env, _msg = a.queue_entry(qid)
        self.assertEqual(rcpt_lines(env)[BOB][2], "pending", env)
        # still serving: a second submission is accepted, queued and tried at once (its
        # own connection: the hung one blocks nothing else) ...
        qid2, _ = self.submit(a, [BOB], make_body("second into the void"))
        self.assertIn(qid2 + ".env", a.queue_files())
        wait_until(lambda: h.count() >= 2, timeout=5, what="second relay connection")
        # ... and another domain's mail is decided while both hang
        qid3, _ = self.submit(a, ["x@nxdomain.example"], make_body("to nowhere", to="x@nxdomain.example"))
        self.wait_event(a, "relay.bounced", msgid=qid3, timeout=5)
        wait_until(lambda: self.dsns(a), timeout=5, what="DSN for the NXDOMAIN message")
        self.assertEqual(len(self.dsns(a)), 1)
        self.assertEqual(h.count(), 2)
        self.assertEqual(h.received, b"", "client spoke before the greeting")
        self.assertEqual(a.find_log("relay.delivered") + a.find_log("relay.deferred"), [])
        self.assertEqual(sorted(a.queue_files()), sorted(f"{q}.{x}" for q in (qid, qid2) for x in ("env", "msg")))
        # tearDown checks that SIGTERM ends A within 5 s despite the hung connections

    def test_connections_per_domain_are_limited(self):
        # relay.max_connections_per_domain: 2: four messages to one domain whose MX hangs
        # get two connections; the other two wait for a slot (not a third connection)
        h = HangingServer()
        self.addCleanup(h.close)
        a = self.server_a(h.port, config={"relay": {"max_connections_per_domain": 2, "connect_timeout": "30s"}})
        c = self.login(a)
        qids = [self.submit(a, [BOB], make_body(f"limited {i}"), conn=c)[0] for i in range(4)]
        c.quit()
        wait_until(lambda: h.count() >= 2, timeout=5, what="two relay connections")
        time.sleep(6)       # past the next 5 s tick
        self.assertEqual(h.count(), 2, "more connections to one domain than the limit")
        self.assertEqual(len(a.queue_files()), 2 * len(qids))


# ===================================================================== connection reuse

class ConnectionReuse(RelayTestCase):
    """A connection that delivered a message is parked for a few seconds and carries the
    next message to the same host (RSET, then MAIL): no new connect/TLS/EHLO."""

    def smtp_opens(self, b, since=0):
        return [e for e in b.find_log("conn.open", since=since) if e.get("proto") == "smtp"]

    def test_messages_in_a_row_share_one_connection(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"), hold=True, config={"relay": {"max_connections_per_domain": 1}})
        c = self.login(a)
        qids = [self.submit(a, [BOB], make_body(f"reuse {i}"), conn=c)[0] for i in range(3)]
        c.quit()
        self.assertEqual(a.stop(), 0)
        a.write_config({"relay": {"hold": False}})
        a.start()
        got = self.wait_event(a, "relay.delivered", count=3, timeout=10)
        self.assertEqual(sorted(e["msgid"] for e in got), sorted(qids))
        self.assertTrue(all(e.get("tls") is True for e in got), got)
        self.wait_queue_empty(a)
        wait_until(lambda: len(b.message_files(BOB)) == 3, timeout=5, what="3 messages at B")
        self.assertEqual(len(self.smtp_opens(b)), 1, "one connection for the three messages")
        self.assertEqual(len(b.find_log("smtp.accept")), 3)

    def test_a_parked_connection_closed_by_the_server_is_not_used(self):
        b = self.server_b()
        a = self.server_a(b.port("smtp"))
        qid1, _ = self.submit(a, [BOB], make_body("first"))
        self.wait_event(a, "relay.delivered", msgid=qid1, timeout=5)
        b.restart()                  # the parked connection sees EOF and is dropped
        since = b.log_size()
        qid2, _ = self.submit(a, [BOB], make_body("second"))
        [d] = self.wait_event(a, "relay.delivered", msgid=qid2, timeout=5)
        self.assertEqual(d.get("attempts"), 1, d)
        self.assertEqual(len(self.smtp_opens(b, since=since)), 1)
        self.assertEqual(a.find_log("relay.deferred"), [])
        wait_until(lambda: len(b.message_files(BOB)) == 2, timeout=5, what="2 messages at B")


# ===================================================================== smarthost

class Smarthost(RelayTestCase):
    """relay.smarthost "host:port": every domain goes to that host and port, no MX lookup.
    relay.port points at a closed port, and the recipient's domain has no DNS at all
    (NXDOMAIN), so only the smarthost route can deliver."""
    RCPT = "someone@nxdomain.example"

    def _via(self, smarthost_fmt, mx):
        b = self.server_b(users=(self.RCPT,), config={"domains": ["remote.example", "nxdomain.example"]})
        a = self.server_a(free_port(), config={"relay": {"smarthost": smarthost_fmt.format(port=b.port("smtp"))}})
        content = make_body("via smarthost", to=self.RCPT)
        qid, tls = self.submit(a, [self.RCPT], content)
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=5)
        self.assert_relay_line(d, qid, self.RCPT, mx=mx)
        self.wait_queue_empty(a)
        data = self.one_file(b, self.RCPT)
        self.assertTrue(data.endswith(content), data[-200:])
        self.assertRegex(data, received_a(qid, tls, self.RCPT))

    def test_smarthost_by_name(self):
        self._via("mx.remote.example:{port}", B_HOST)

    def test_smarthost_by_ip_literal(self):
        # "host:port" with an IPv4 address for host: connect to it, no DNS
        self._via("127.0.0.1:{port}", "127.0.0.1")

    def _auth_smarthost(self, listener, tls_mode, password=PW):
        """B as an authenticated smarthost: its account relay@remote.example owns
        example.org through a catch-all alias, so alice's mail may go out as it."""
        users = {self.RCPT: PW, "relay@remote.example": {"password": PW, "aliases": ["@example.org"]}}
        b = Server(name="relayB", users=users, listeners=("smtp", listener),
                   config={"server": {"hostname": B_HOST},
                           "domains": ["remote.example", "nxdomain.example", "example.org"]})
        self._servers.append(b)
        b.start()
        a = self.server_a(free_port(), config={"relay": {
            "smarthost": f"127.0.0.1:{b.port(listener)}", "smarthost_tls": tls_mode,
            "smarthost_user": "relay@remote.example", "smarthost_password": password}})
        return a, b

    def test_smarthost_implicit_tls_with_auth(self):
        # relay.smarthost_tls: implicit (port 465 style, RFC 8314) and AUTH PLAIN
        a, b = self._auth_smarthost("submissions", "implicit")
        content = make_body("via authenticated smarthost", to=self.RCPT)
        qid, _tls = self.submit(a, [self.RCPT], content)
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=5)
        self.assert_relay_line(d, qid, self.RCPT, mx="127.0.0.1")
        self.wait_queue_empty(a)
        self.assertTrue(self.one_file(b, self.RCPT).endswith(content))
        [ok] = b.wait_log("auth.ok", timeout=5)
        self.assertEqual(ok.get("user"), "relay@remote.example", ok)
        self.assertEqual(b.find_log("auth.fail"), [])

    def test_smarthost_starttls_with_auth(self):
        # submission (587) needs STARTTLS before AUTH: the client upgrades, then logs in
        a, b = self._auth_smarthost("submission", "starttls")
        content = make_body("via submission smarthost", to=self.RCPT)
        qid, _tls = self.submit(a, [self.RCPT], content)
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=5)
        self.assertIs(d.get("tls"), True, d)
        self.wait_queue_empty(a)
        self.assertTrue(self.one_file(b, self.RCPT).endswith(content))

    def test_smarthost_wrong_password_defers(self):
        # a 535 to AUTH is the smarthost's refusal: deferred (the operator fixes the
        # password), never bounced, and nothing delivered
        a, b = self._auth_smarthost("submissions", "implicit", password="wrong-password")
        qid, _tls = self.submit(a, [self.RCPT], make_body("bad credentials", to=self.RCPT))
        [d] = self.wait_event(a, "relay.deferred", msgid=qid, timeout=5)
        self.assertEqual(d.get("rcpt"), self.RCPT, d)
        self.assertEqual(a.find_log("relay.bounced"), [])
        self.assertEqual(b.message_files(self.RCPT), [])
        wait_until(lambda: sorted(a.queue_files()) == [f"{qid}.env", f"{qid}.msg"], timeout=5,
                   what="the entry alone in the queue")

    def test_relay_tls_require_defers_without_starttls(self):
        # relay.tls: require: an MX that offers no STARTTLS gets nothing in clear;
        # the mail is deferred (4.7.10) and stays queued
        b = Server(name="relayB", users={self.RCPT: PW}, listeners=("smtp",),
                   config={"server": {"hostname": B_HOST}, "domains": ["remote.example", "nxdomain.example"],
                           "tls": {"self_signed": False}})
        self._servers.append(b)
        b.start()
        a = self.server_a(free_port(), config={"relay": {"smarthost": f"127.0.0.1:{b.port('smtp')}",
                                                         "tls": "require"}})
        qid, _tls = self.submit(a, [self.RCPT], make_body("clear text refused", to=self.RCPT))
        [d] = self.wait_event(a, "relay.deferred", msgid=qid, timeout=5)
        self.assertEqual(d.get("dsn"), "4.7.10", d)
        self.assertEqual(b.message_files(self.RCPT), [])
        # the deferral's state update (write .env.tmp, rename) may still be landing
        wait_until(lambda: sorted(a.queue_files()) == [f"{qid}.env", f"{qid}.msg"], timeout=5,
                   what="the entry alone in the queue")

    def test_smarthost_credentials_need_each_other(self):
        a = self.server_a(free_port(), start=False, config={"relay": {
            "smarthost": "127.0.0.1:1", "smarthost_user": "someone@remote.example"}})
        a.write_config()
        r = a.run_cli("check-config", "-c", a.config_path)
        self.assertEqual(r.returncode, 2)
        self.assertIn("relay.smarthost_user and relay.smarthost_password go together", (r.stdout + r.stderr).decode())

    def test_smarthost_naming_ourselves_bounces_every_queued_message(self):
        # A config mistake (the smarthost is this server): each queued message must be
        # bounced 5.4.6 (loop), and the server must survive a queue of several of them.
        a = self.server_a(free_port(), hold=True)
        c = self.login(a)
        qids = [self.submit(a, [BOB], make_body(f"loop {i}"), conn=c)[0] for i in range(3)]
        c.quit()
        self.assertEqual(a.stop(), 0)
        a.write_config({"relay": {"hold": False, "smarthost": f"{A_HOST}:{free_port()}"}})
        since = a.log_size()
        a.start()
        loop = "5.4.6 mail for this domain loops back to myself"
        got = self.wait_event(a, "relay.bounced", count=3, timeout=5, since=since)
        a.assert_alive()
        self.assertEqual(sorted(e["msgid"] for e in got), sorted(qids))
        self.assertEqual({e.get("reply") for e in got}, {loop})
        self.wait_queue_empty(a)
        wait_until(lambda: len(self.dsns(a)) >= 3, timeout=5, what="3 DSNs")
        time.sleep(0.3)
        dsns = self.dsns(a)
        self.assertEqual(len(dsns), 3)
        for data in dsns:
            _m, _pm, rcpts, _parts = self.parse_dsn(data)
            self.assertEqual([(r["Final-Recipient"], r["Status"]) for r in rcpts], [(f"rfc822; {BOB}", "5.4.6")])
        a.assert_alive()


# ===================================================================== postling queue

class QueueAdmin(RelayTestCase):
    """`postling queue flush|delete ID|bounce ID` reach the running server through
    <data_dir>/control.sock; delete also works on the files with no server running."""

    def queue(self, a, *args):
        r = a.run_cli("queue", "-c", a.config_path, *args)
        return r.returncode, r.stdout.decode(), r.stderr.decode()

    def test_control_socket_is_private(self):
        a = self.server_a(free_port(), hold=True)
        st = os.stat(os.path.join(a.data_dir, "control.sock"))
        self.assertEqual(st.st_mode & 0o777, 0o600)
        self.assertTrue(stat_is_socket(st.st_mode))

    def test_delete_drops_the_entry_without_dsn(self):
        a = self.server_a(free_port(), hold=True)
        qid, _ = self.submit(a, [BOB], make_body("to be deleted"))
        rc, out, err = self.queue(a, "delete", qid)
        self.assertEqual((rc, out.strip(), err), (0, f"{qid} deleted", ""))
        wait_until(lambda: a.queue_files() == [], timeout=5, what="queue empty")
        [e] = a.wait_log("relay.deleted", msgid=qid)
        self.assertEqual(e.get("from"), ALICE)
        time.sleep(0.3)
        self.assertEqual(self.dsns(a), [])
        rc, out, err = self.queue(a, "delete", qid)
        self.assertEqual((rc, err.strip()), (1, f"no queue entry {qid}"))

    def test_bounce_sends_a_dsn(self):
        a = self.server_a(free_port(), hold=True)
        qid, _ = self.submit(a, [BOB, CAROL], make_body("to be bounced"))
        rc, out, err = self.queue(a, "bounce", qid)
        self.assertEqual((rc, out.strip()), (0, f"{qid} bounced to its sender"), err)
        got = a.wait_log("relay.bounced", count=2, msgid=qid)
        self.assertEqual(sorted(e["rcpt"] for e in got), [BOB, CAROL])
        wait_until(lambda: a.queue_files() == [] and len(self.dsns(a)) == 1, timeout=5, what="DSN, queue empty")
        _m, _pm, rcpts, _parts = self.parse_dsn(self.dsns(a)[0])
        self.assertEqual(sorted((r["Final-Recipient"], r["Status"], r["Action"]) for r in rcpts),
                         [(f"rfc822; {BOB}", "5.0.0", "failed"), (f"rfc822; {CAROL}", "5.0.0", "failed")])

    def test_flush_retries_a_deferred_entry_now(self):
        b = self.server_b(start=False)
        a = self.server_a(b.port("smtp"), config={"relay": {"retry_initial": "1h", "retry_max": "1h"}})
        qid, _ = self.submit(a, [BOB], make_body("flush me"))
        self.wait_event(a, "relay.deferred", msgid=qid, timeout=5)
        b.start()
        since = a.log_size()
        rc, out, err = self.queue(a, "flush")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out.strip(), r"^1 deferred entries scheduled now \(1 queued\)$")
        # the tick is 5 s and the retry 1 h away: only the flush can deliver this soon
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=3, since=since)
        self.assertEqual(d.get("attempts"), 2, d)
        self.wait_queue_empty(a)

    def test_bad_arguments(self):
        a = self.server_a(free_port(), hold=True)
        rc, _out, err = self.queue(a, "delete", "../../etc/passwd")
        self.assertEqual(rc, 1)
        self.assertIn("is not a queue id", err)
        rc, _out, err = self.queue(a, "bounce", "0000000000000000")
        self.assertEqual((rc, err.strip()), (1, "no queue entry 0000000000000000"))
        rc, _out, err = self.queue(a, "flush", "extra")
        self.assertEqual(rc, 64)          # EX_USAGE, like every subcommand's usage error
        self.assertIn("usage: postling queue", err)

    def test_without_a_running_server(self):
        a = self.server_a(free_port(), hold=True)
        qid, _ = self.submit(a, [BOB], make_body("offline delete"))
        self.assertEqual(a.stop(), 0)
        self.assertFalse(os.path.exists(os.path.join(a.data_dir, "control.sock")))
        rc, _out, err = self.queue(a, "flush")
        self.assertEqual(rc, 1)
        self.assertIn("no server is running", err)
        rc, _out, err = self.queue(a, "bounce", qid)
        self.assertEqual(rc, 1)
        self.assertIn("bounce needs the running server", err)
        rc, out, err = self.queue(a, "delete", qid)
        self.assertEqual((rc, out.strip()), (0, f"{qid} deleted (no server running)"), err)
        self.assertEqual(a.queue_files(), [])


# ===================================================================== SIGHUP

class Reload(RelayTestCase):
    def test_sighup_changes_relay_settings(self):
        # held mail, then a reload that releases it towards a smarthost: delivered
        # without a restart; a relay.dns change is reported as needing one
        b = self.server_b(users=(Smarthost.RCPT,), config={"domains": ["remote.example", "nxdomain.example"]})
        a = self.server_a(free_port(), hold=True)
        qid, _ = self.submit(a, [Smarthost.RCPT], make_body("released by SIGHUP", to=Smarthost.RCPT))
        time.sleep(0.5)
        self.assertEqual(a.find_log("relay.delivered") + a.find_log("relay.deferred"), [])
        since = a.log_size()
        a.write_config({"relay": {"hold": False, "smarthost": f"127.0.0.1:{b.port('smtp')}",
                                  "dns": {"servers": ["127.0.0.2"]}}})
        a.reload()
        a.wait_log("config.reload", since=since, timeout=5)
        [d] = self.wait_event(a, "relay.delivered", msgid=qid, timeout=5, since=since)
        self.assertEqual(d.get("mx"), "127.0.0.1", d)
        self.wait_queue_empty(a)
        self.assertEqual(len(b.message_files(Smarthost.RCPT)), 1)
        warn = [e for e in a.find_log("config.reload", since=since) if "restart" in e.get("msg", "")]
        self.assertEqual(len(warn), 1, a.find_log("config.reload", since=since))
        a.assert_alive()


# ===================================================================== disk full

class DiskFull(RelayTestCase):
    """The data dir on a small tmpfs, filled up: the queue state update of a deferral
    fails with ENOSPC, the entry on disk stays as it was (readable, no .tmp left), a
    new submission is refused 451 with nothing left behind, and once space is back the
    entry is delivered exactly once. Needs root and mount(2); skipped otherwise."""

    def mount_tmpfs(self, path, size="8m"):
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        self.addCleanup(lambda: subprocess.run(["umount", "-l", path], stderr=subprocess.DEVNULL))

    @staticmethod
    def fill(path):
        """Write a filler file until the file system is full; returns its path."""
        filler = os.path.join(path, "filler")
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (65536, 4096, 512, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError:
                    pass
        finally:
            os.close(fd)
        return filler

    def test_queue_update_on_a_full_disk(self):
        b = self.server_b(start=False)
        a = self.server_a(b.port("smtp"), start=False, config={"relay": {"retry_initial": "1h", "retry_max": "1h"}})
        self.mount_tmpfs(a.data_dir)
        a.start()
        content = make_body("survives a full disk")
        qid, _ = self.submit(a, [BOB], content)
        self.wait_event(a, "relay.deferred", msgid=qid, timeout=5)
        wait_until(lambda: sorted(a.queue_files()) == [f"{qid}.env", f"{qid}.msg"], timeout=5, what="entry")
        # the deferral's state update (written on a worker after the log line) has landed
        wait_until(lambda: "\nattempts 1\n" in a.queue_entry(qid)[0], timeout=5, what="attempts 1 on disk")
        env_before, _ = a.queue_entry(qid)

        filler = self.fill(a.data_dir)
        since = a.log_size()
        self.assertEqual(a.run_cli("queue", "-c", a.config_path, "flush").returncode, 0)
        self.wait_event(a, "relay.deferred", msgid=qid, timeout=5, since=since)
        a.wait_log("relay.queue_write_failed", since=since, timeout=5)
        # the old state is intact and nothing half-written is left
        self.assertEqual(sorted(a.queue_files()), [f"{qid}.env", f"{qid}.msg"])
        env_now, _ = a.queue_entry(qid)
        self.assertEqual(env_now, env_before)
        r = a.run_cli("queue", "-c", a.config_path, "show", qid)
        self.assertEqual(r.returncode, 0, r.stderr)
        # a new message cannot be made durable: 451, and no trace of it
        c = self.login(a)
        rs = c.transaction(ALICE, [CAROL], make_body("no room", to=CAROL))
        self.assertTrue(rs[-1].startswith("451 4.3.0 "), rs)
        c.quit()
        self.assertEqual(sorted(a.queue_files()), [f"{qid}.env", f"{qid}.msg"])
        a.assert_alive()

        os.unlink(filler)
        b.start()
        since = a.log_size()
        self.assertEqual(a.run_cli("queue", "-c", a.config_path, "flush").returncode, 0)
        self.wait_event(a, "relay.delivered", msgid=qid, timeout=5, since=since)
        self.wait_queue_empty(a)
        self.assertTrue(self.one_file(b, BOB).endswith(content))


def stat_is_socket(mode):
    import stat
    return stat.S_ISSOCK(mode)


if __name__ == "__main__":
    unittest.main()
