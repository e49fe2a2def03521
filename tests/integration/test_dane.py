"""DANE for the outbound relay (RFC 7672, RFC 6698; issue 6 item 2/3) end to end on
loopback. At module start the test builds a DNSSEC-signed zone dane.example (ldns-keygen
+ ldns-signzone, Debian ldnsutils) and an unsigned zone plain.example, and serves both
with a local authoritative unbound (Debian unbound, `auth-zone:`) on 127.0.0.1; instance
A forwards to it (relay.dns.servers/port) with relay.dns.trust_anchor = the DS of
dane.example, so names under dane.example validate and plain.example is insecure.

    good.dane.example       MX mx-good     127.0.0.1  TLSA 3 1 1 <B's key>    -> DANE, delivered
    wrong.dane.example      MX mx-wrong    127.0.0.1  TLSA 3 1 1 <other key>  -> 4.7.5, kept
    notlsa.dane.example     MX mx-notlsa   127.0.0.1  (no TLSA)               -> opportunistic
    clear.dane.example      MX mx-clear    127.0.0.2  TLSA 3 1 1 <B's key>    -> 4.7.5: that MX
                                                      (a stand-in) offers no STARTTLS
    bogus.dane.example      MX mx-bogus    127.0.0.1  TLSA changed after signing -> 4.7.5
    bogusaddr.dane.example  MX mx-bogusaddr           A changed after signing    -> 4.7.5
    fallback.dane.example   MX 10 mx-wrong, MX 20 mx-good                 -> DANE via mx-good
    ta.dane.example         MX mx-ta       127.0.0.1  TLSA 2 1 1 <test CA's key> -> DANE-TA:
                                                      B's chain for SNI mx-ta is signed by it
    plain.example           MX mx.plain    127.0.0.1  TLSA 3 1 1 <other key>, unsigned
                                                      -> insecure: ignored, opportunistic

Instance B (the MX for every domain) uses certificates made here, so their key digests
are known before the zone is signed; relay.port of A is B's SMTP port, so the TLSA owners
are _<that port>._tcp.<mx> (the stand-in listens on 127.0.0.2 at the same port). What is checked: A's relay.delivered / relay.deferred
lines (tls, dane, dsn, reply), the relay.tlsa debug line, B's mailboxes, A's queue.

Skipped with the reason when unbound, ldns-keygen/ldns-signzone or openssl are missing
(./dev installs them)."""
import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

from harness import Server, SmtpConn, free_port, make_cert

PW = "Dane-Test-Pw-7c2e"
ALICE = "alice@example.org"
ZONE = "dane.example"
DOMAINS = ["good.dane.example", "wrong.dane.example", "notlsa.dane.example", "clear.dane.example",
           "bogus.dane.example", "bogusaddr.dane.example", "fallback.dane.example", "ta.dane.example",
           "plain.example"]
WAIT = 15.0


def _find(*paths):
    return next((p for p in paths if os.access(p, os.X_OK)), None)


UNBOUND = _find("/usr/sbin/unbound", "/usr/bin/unbound")
KEYGEN = _find("/usr/bin/ldns-keygen", "/usr/local/bin/ldns-keygen")
SIGNZONE = _find("/usr/bin/ldns-signzone", "/usr/local/bin/ldns-signzone")
OPENSSL = shutil.which("openssl")


def _die_with_parent():
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except Exception:
        pass


def spki_sha256(cert_path):
    """SHA2-256 of the certificate's SubjectPublicKeyInfo: TLSA 3 1 1 data (RFC 6698 §2.1)."""
    pub = subprocess.run([OPENSSL, "x509", "-in", cert_path, "-noout", "-pubkey"], check=True,
                         capture_output=True, timeout=30).stdout
    der = subprocess.run([OPENSSL, "pkey", "-pubin", "-outform", "DER"], input=pub, check=True,
                         capture_output=True, timeout=30).stdout
    return hashlib.sha256(der).hexdigest()


def ca_chain(tmp, host):
    """A test CA and a certificate for host signed by it: (chain file, key file, CA file)."""
    run = dict(cwd=tmp, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    subprocess.run([OPENSSL, "req", "-x509", *ec, "-days", "2", "-subj", "/CN=Postling test DANE CA",
                    "-keyout", "ca.key", "-out", "ca.crt", "-addext", "basicConstraints=critical,CA:TRUE",
                    "-addext", "keyUsage=critical,keyCertSign"], **run)
    subprocess.run([OPENSSL, "req", "-new", *ec, "-subj", f"/CN={host}", "-keyout", "ta.key",
                    "-out", "ta.csr"], **run)
    with open(os.path.join(tmp, "ta.ext"), "w") as f:
        f.write(f"subjectAltName=DNS:{host}\n")
    subprocess.run([OPENSSL, "x509", "-req", "-in", "ta.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                    "-CAcreateserial", "-days", "2", "-extfile", "ta.ext", "-out", "ta.crt"], **run)
    with open(os.path.join(tmp, "ta-chain.crt"), "w") as out:
        for name in ("ta.crt", "ca.crt"):
            with open(os.path.join(tmp, name)) as f:
                out.write(f.read())
    return os.path.join(tmp, "ta-chain.crt"), os.path.join(tmp, "ta.key"), os.path.join(tmp, "ca.crt")


def dane_zone(good, other, ca, port):
    return f"""$ORIGIN {ZONE}.
$TTL 300
@ IN SOA ns.{ZONE}. hostmaster.{ZONE}. 1 3600 600 86400 300
@ IN NS ns.{ZONE}.
ns IN A 127.0.0.1
good IN MX 10 mx-good.{ZONE}.
mx-good IN A 127.0.0.1
_{port}._tcp.mx-good IN TLSA 3 1 1 {good}
wrong IN MX 10 mx-wrong.{ZONE}.
mx-wrong IN A 127.0.0.1
_{port}._tcp.mx-wrong IN TLSA 3 1 1 {other}
notlsa IN MX 10 mx-notlsa.{ZONE}.
mx-notlsa IN A 127.0.0.1
clear IN MX 10 mx-clear.{ZONE}.
mx-clear IN A 127.0.0.2
_{port}._tcp.mx-clear IN TLSA 3 1 1 {good}
bogus IN MX 10 mx-bogus.{ZONE}.
mx-bogus IN A 127.0.0.1
_{port}._tcp.mx-bogus IN TLSA 3 1 1 {good}
bogusaddr IN MX 10 mx-bogusaddr.{ZONE}.
mx-bogusaddr IN A 127.0.0.1
fallback IN MX 10 mx-wrong.{ZONE}.
fallback IN MX 20 mx-good.{ZONE}.
ta IN MX 10 mx-ta.{ZONE}.
mx-ta IN A 127.0.0.1
_{port}._tcp.mx-ta IN TLSA 2 1 1 {ca}
"""


def plain_zone(other, port):
    return f"""$ORIGIN plain.example.
$TTL 300
@ IN SOA ns.plain.example. hostmaster.plain.example. 1 3600 600 86400 300
@ IN NS ns.plain.example.
ns IN A 127.0.0.1
@ IN MX 10 mx.plain.example.
mx IN A 127.0.0.1
_{port}._tcp.mx IN TLSA 3 1 1 {other}
"""


def tamper(signed, owner, rtype, old, new):
    """Changes the RDATA of one signed record (its RRSIG no longer fits: bogus)."""
    out, hits = [], 0
    for line in signed.split("\n"):
        f = line.split()
        if len(f) >= 4 and f[0] == owner and rtype in f[2:4] and old in line.lower():
            line = line.lower().replace(old, new)
            hits += 1
        out.append(line)
    if hits != 1:
        raise RuntimeError(f"tamper: {hits} lines for {owner} {rtype}")
    return "\n".join(out)


class AuthDns:
    """A signed and an unsigned zone served by unbound on 127.0.0.1:<port>."""

    def __init__(self, tmp, good, other, ca, port):
        self.tmp = tmp
        self.proc = None
        self.port = None
        run = dict(cwd=tmp, check=True, capture_output=True, timeout=60)
        key = subprocess.run([KEYGEN, "-a", "ECDSAP256SHA256", "-k", ZONE], **run).stdout.decode().strip()
        with open(os.path.join(tmp, ZONE + ".zone"), "w") as f:
            f.write(dane_zone(good, other, ca, port))
        subprocess.run([SIGNZONE, "-f", ZONE + ".signed", ZONE + ".zone", key], **run)
        path = os.path.join(tmp, ZONE + ".signed")
        with open(path) as f:
            signed = f.read()
        signed = tamper(signed, f"_{port}._tcp.mx-bogus.{ZONE}.", "TLSA", good, other)
        signed = tamper(signed, f"mx-bogusaddr.{ZONE}.", "A", "127.0.0.1", "127.0.0.3")
        with open(path, "w") as f:
            f.write(signed)
        with open(os.path.join(tmp, "plain.example.zone"), "w") as f:
            f.write(plain_zone(other, port))
        self.trust_anchor = os.path.join(tmp, key + ".ds")

    def _conf(self):
        return f"""server:
  interface: 127.0.0.1
  port: {self.port}
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{self.tmp}"
  pidfile: ""
  use-syslog: no
  logfile: ""
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
auth-zone:
  name: "{ZONE}."
  zonefile: "{self.tmp}/{ZONE}.signed"
  for-downstream: yes
  for-upstream: no
  fallback-enabled: no
auth-zone:
  name: "plain.example."
  zonefile: "{self.tmp}/plain.example.zone"
  for-downstream: yes
  for-upstream: no
  fallback-enabled: no
# anything else: no server to ask (a port on loopback that the default
# do-not-query-localhost refuses), so no query ever leaves the machine
stub-zone:
  name: "."
  stub-addr: 127.0.0.1@9
remote-control:
  control-enable: no
"""

    def start(self):
        for _ in range(5):
            self.port = free_port()
            conf = os.path.join(self.tmp, "unbound.conf")
            with open(conf, "w") as f:
                f.write(self._conf())
            log = open(os.path.join(self.tmp, "unbound.log"), "wb")
            self.proc = subprocess.Popen([UNBOUND, "-d", "-c", conf], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, preexec_fn=_die_with_parent)
            log.close()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._answers():
                    return self
                time.sleep(0.05)
            self.stop()
        with open(os.path.join(self.tmp, "unbound.log"), "rb") as f:
            raise RuntimeError("unbound did not come up: " + f.read().decode(errors="replace"))

    def _answers(self):
        q = b"\x12\x34\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        q += b"".join(bytes([len(x)]) + x.encode() for x in ZONE.split(".")) + b"\0\x00\x06\x00\x01"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(0.2)
            try:
                s.sendto(q, ("127.0.0.1", self.port))
                pkt, _ = s.recvfrom(4096)
            except OSError:
                return False
        return len(pkt) > 12 and pkt[:2] == b"\x12\x34" and pkt[3] & 0xF == 0 and pkt[7] > 0

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class ClearMx:
    """An MX stand-in on 127.0.0.2:<port> that never offers STARTTLS; it records the
    commands it gets (a DANE client must not get past EHLO)."""

    def __init__(self, port):
        self.ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.2", port))
        self.ls.listen(8)
        self.commands = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.ls.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        f = s.makefile("rb")
        try:
            s.sendall(b"220 mx-clear.dane.example ESMTP\r\n")
            for line in f:
                cmd = line.decode(errors="replace").rstrip("\r\n")
                with self.lock:
                    self.commands.append(cmd)
                verb = cmd.split(" ")[0].upper()
                if verb == "EHLO":
                    s.sendall(b"250-mx-clear.dane.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                elif verb == "QUIT":
                    s.sendall(b"221 bye\r\n")
                    return
                elif verb == "DATA":
                    s.sendall(b"354 go\r\n")
                else:
                    s.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            f.close()
            s.close()

    def seen(self):
        with self.lock:
            return list(self.commands)

    def close(self):
        self.ls.close()


SKIP = None
if UNBOUND is None:
    SKIP = "unbound is not installed (Debian unbound): no authoritative server for the signed zone"
elif KEYGEN is None or SIGNZONE is None:
    SKIP = "ldns-keygen/ldns-signzone are not installed (Debian ldnsutils): cannot sign the test zone"
elif OPENSSL is None:
    SKIP = "openssl is not installed"

TMP = DNS = B = A = CLEAR = None


def setUpModule():
    global TMP, DNS, B, A, CLEAR
    if SKIP:
        raise unittest.SkipTest(SKIP)
    TMP = tempfile.mkdtemp(prefix="postling-dane-")
    try:
        cert, key = make_cert(TMP, "mx", "mx-good.dane.example", sans=["mx-good.dane.example"])
        other_cert, _ = make_cert(TMP, "other", "other.example")
        ta_chain, ta_key, ca_cert = ca_chain(TMP, "mx-ta.dane.example")
        good, other, ca = spki_sha256(cert), spki_sha256(other_cert), spki_sha256(ca_cert)
        # B's port is known before it starts: the TLSA owner is _<relay.port>._tcp.<mx>
        B = Server(name="daneB", users={f"bob@{d}": PW for d in DOMAINS}, listeners=("smtp",),
                   config={"server": {"hostname": "mx-good.dane.example"}, "domains": DOMAINS,
                           "tls": {"self_signed": False, "certificates": [
                               {"cert": cert, "key": key}, {"cert": ta_chain, "key": ta_key}]}})
        DNS = AuthDns(TMP, good, other, ca, B.port("smtp")).start()
        B.start()
        CLEAR = ClearMx(B.port("smtp"))
        A = Server(name="daneA", users={ALICE: PW}, listeners=("submissions",),
                   config={"relay": {"hold": False, "port": B.port("smtp"), "retry_initial": "1s",
                                     "dns": {"servers": ["127.0.0.1"], "port": DNS.port,
                                             "trust_anchor": DNS.trust_anchor}}})
        A.start()
    except BaseException:
        tearDownModule()
        raise


def tearDownModule():
    for srv in (A, B):
        if srv is not None:
            try:
                if srv.running():
                    srv.stop()
                    srv.check_sanitizers()
            finally:
                srv.close()
    if CLEAR is not None:
        CLEAR.close()
    if DNS is not None:
        DNS.stop()
    if TMP is not None and not os.environ.get("POSTLING_KEEP_TMP"):
        shutil.rmtree(TMP, ignore_errors=True)


QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as ([0-9a-v]{16})$")


class DaneTest(unittest.TestCase):
    maxDiff = None

    def submit(self, domain, subject):
        rcpt = f"bob@{domain}"
        body = (f"From: <{ALICE}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject}.{time.monotonic_ns()}@example.org>\r\n"
                f"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nDANE test {subject}.\r\n").encode()
        c = SmtpConn.connect(A, "submissions")
        try:
            c.ehlo("client.example")
            c.auth_plain(ALICE, PW)
            rs = c.transaction(ALICE, [rcpt], body)
            m = QUEUED_RE.match(rs[-1] or "")
            self.assertIsNotNone(m, rs)
            c.quit()
        finally:
            c.close()
        return m.group(1), rcpt

    def delivered(self, domain, subject, mx):
        qid, rcpt = self.submit(domain, subject)
        e = A.wait_log("relay.delivered", timeout=WAIT, msgid=qid)[0]
        self.assertEqual((e.get("rcpt"), e.get("mx"), e.get("ip"), e.get("tls")), (rcpt, mx, "127.0.0.1", True), e)
        files = B.message_files(rcpt)
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            self.assertIn(f"Subject: {subject}\r\n".encode(), f.read())
        return qid, e

    def deferred(self, domain, subject):
        qid, rcpt = self.submit(domain, subject)
        e = A.wait_log("relay.deferred", timeout=WAIT, msgid=qid)[0]
        self.assertEqual(e.get("rcpt"), rcpt, e)
        self.assertEqual(e.get("dsn"), "4.7.5", e)
        self.assertIs(e.get("dane"), False, e)
        self.assertEqual(B.message_files(rcpt), [], "delivered despite the DANE failure")
        self.assertIsNotNone(A.queue_entry(qid), "deferred mail left the queue")
        self.assertEqual(A.find_log("relay.delivered", msgid=qid), [])
        return qid, e

    def tlsa_line(self, qid, mx):
        got = [e for e in A.find_log("relay.tlsa", msgid=qid) if e.get("mx") == mx]
        self.assertTrue(got, f"no relay.tlsa line for {mx}")
        return got[0]

    def test_matching_tlsa_3_1_1_delivers_with_dane(self):
        qid, e = self.delivered("good.dane.example", "dane-good", "mx-good.dane.example")
        self.assertIs(e.get("dane"), True, e)
        t = self.tlsa_line(qid, "mx-good.dane.example")
        self.assertEqual((t.get("status"), t.get("secure"), t.get("records"), t.get("usable")),
                         ("ok", True, 1, 1), t)

    def test_tlsa_not_matching_defers_4_7_5(self):
        qid, e = self.deferred("wrong.dane.example", "dane-wrong")
        self.assertRegex(e["reply"], r"^4\.7\.5 DANE: the certificate of mx-wrong\.dane\.example\[127\.0\.0\.1\] "
                                     r"matches none of its 1 TLSA record \(")
        self.assertEqual(e.get("mx"), "mx-wrong.dane.example", e)

    def test_signed_zone_without_tlsa_is_opportunistic(self):
        qid, e = self.delivered("notlsa.dane.example", "dane-notlsa", "mx-notlsa.dane.example")
        self.assertIs(e.get("dane"), False, e)
        t = self.tlsa_line(qid, "mx-notlsa.dane.example")
        self.assertEqual((t.get("status"), t.get("records")), ("none", 0), t)

    def test_valid_tlsa_but_no_starttls_defers_4_7_5(self):
        qid, e = self.deferred("clear.dane.example", "dane-clear")
        self.assertEqual(e["reply"], "4.7.5 mx-clear.dane.example[127.0.0.2] offers no STARTTLS but has DANE "
                                     "TLSA records (RFC 7672 §2.2): not sent in clear")
        verbs = [c.split(" ")[0].upper() for c in CLEAR.seen()]
        self.assertIn("EHLO", verbs)
        self.assertNotIn("MAIL", verbs, "the message went out in clear")

    def test_unsigned_zone_ignores_its_tlsa(self):
        qid, e = self.delivered("plain.example", "dane-plain", "mx.plain.example")
        self.assertIs(e.get("dane"), False, e)
        # the addresses are insecure: no TLSA lookup at all (RFC 7672 §2.2.2)
        self.assertEqual(A.find_log("relay.tlsa", msgid=qid), [])

    def test_bogus_tlsa_defers_4_7_5(self):
        qid, e = self.deferred("bogus.dane.example", "dane-bogus")
        self.assertEqual(e["reply"], "4.7.5 mx-bogus.dane.example: the TLSA lookup for DANE failed (DNSSEC "
                                     "validation failed (bogus answer)): not delivering without knowing "
                                     "whether DANE applies (RFC 7672 §2.2)")
        self.assertEqual(self.tlsa_line(qid, "mx-bogus.dane.example").get("status"), "bogus")

    def test_bogus_address_defers_4_7_5(self):
        qid, e = self.deferred("bogusaddr.dane.example", "dane-bogusaddr")
        self.assertEqual(e["reply"], "4.7.5 mx-bogusaddr.dane.example: its address records fail DNSSEC validation")
        self.assertTrue(A.find_log("dns.bogus", name="mx-bogusaddr.dane.example"), "no dns.bogus line")

    def test_dane_ta_2_1_1_matches_the_issuing_ca(self):
        # B picks the CA-signed chain by SNI (= the MX name, RFC 7672 §8.1); the CA is
        # the trust anchor and the leaf's name is the MX host's (§3.2.2)
        qid, e = self.delivered("ta.dane.example", "dane-ta", "mx-ta.dane.example")
        self.assertIs(e.get("dane"), True, e)

    def test_failing_mx_falls_back_to_next_with_dane(self):
        qid, e = self.delivered("fallback.dane.example", "dane-fallback", "mx-good.dane.example")
        self.assertIs(e.get("dane"), True, e)
        self.tlsa_line(qid, "mx-wrong.dane.example")


if __name__ == "__main__":
    unittest.main()
