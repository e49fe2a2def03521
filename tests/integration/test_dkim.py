"""DKIM signing of outbound mail (RFC 6376, RFC 8463) and the DNS side
(`postling dkim-keygen`, `postling dns-records`).

Signatures are checked by an independent verifier: Debian's dkimpy
(python3-dkim, with python3-nacl for ed25519), run with /usr/bin/python3
(the interpreter Debian's packages are installed for) and given the TXT
records that `postling dns-records` prints instead of DNS. relay.hold keeps
the submitted mail in the queue, where the test reads <id>.msg.
"""
import base64
import json
import os
import re
import subprocess
import tempfile
import unittest

from harness import (Server, ServerTestCase, SmtpConn, make_message, crlf, wait_until,
                     postling_bin)

SYSTEM_PYTHON = "/usr/bin/python3"
ALICE, PW = "alice@example.org", "alice-dkim-pw"
REMOTE = "bob@remote.example"
AUTH_OK = "235 2.7.0 Authentication successful"

# Verifies signature number idx of the message in argv[1] with the TXT records
# of the JSON map in argv[2] (name -> record text); prints a JSON list of
# booleans, one per DKIM-Signature field.
VERIFIER = r"""
import json, sys
import dkim
msg = open(sys.argv[1], 'rb').read()
records = json.loads(sys.argv[2])
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    r = records.get(n.rstrip('.'))
    return r.encode() if r is not None else None
def verify(d, i):
    try:
        return bool(d.verify(idx=i, dnsfunc=dnsfunc))
    except dkim.DKIMException:          # e.g. "body hash mismatch": not verified
        return False
d = dkim.DKIM(msg)
n = len([h for h in d.headers if h[0].lower() == b'dkim-signature'])
print(json.dumps([verify(d, i) for i in range(n)]))
"""


def have_dkimpy():
    if not os.path.exists(SYSTEM_PYTHON):
        return False
    p = subprocess.run([SYSTEM_PYTHON, "-c", "import dkim, nacl"], capture_output=True)
    return p.returncode == 0


def dkim_verify(msg, records):
    """[True/False per DKIM-Signature field, top first] from dkimpy."""
    with tempfile.NamedTemporaryFile(suffix=".eml") as f:
        f.write(msg)
        f.flush()
        p = subprocess.run([SYSTEM_PYTHON, "-c", VERIFIER, f.name, json.dumps(records)],
                           capture_output=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"dkimpy failed: {p.stderr.decode(errors='replace')}")
    return json.loads(p.stdout)


def make_key(path, kind):
    """An unencrypted PKCS#8 key from the openssl CLI, mode 0600."""
    args = (["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"] if kind == "rsa"
            else ["-algorithm", "ED25519"])
    subprocess.run(["openssl", "genpkey", *args, "-out", path], check=True,
                   capture_output=True, timeout=60)
    os.chmod(path, 0o600)
    return path


def public_key_b64(path, kind):
    """The p= value computed with openssl, independently of Postling: the
    SubjectPublicKeyInfo for RSA, the raw 32-octet key for Ed25519 (RFC 8463 §4),
    which is the tail of its SubjectPublicKeyInfo."""
    der = subprocess.run(["openssl", "pkey", "-in", path, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True, timeout=60).stdout
    return base64.b64encode(der if kind == "rsa" else der[-32:]).decode()


def parse_zone(text):
    """dns-records output -> [(name without the final dot, type, rdata)], comments dropped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith(";"):
            continue
        name, cls, rtype, rdata = line.split("\t", 3)
        if cls != "IN":
            raise AssertionError(f"bad record line {line!r}")
        out.append((name.rstrip("."), rtype, rdata))
    return out


def txt_value(rdata):
    """The character-strings of a TXT rdata joined; each at most 255 octets."""
    parts = re.findall(r'"([^"]*)"', rdata)
    if " ".join(f'"{p}"' for p in parts) != rdata:
        raise AssertionError(f"TXT rdata is not a list of quoted strings: {rdata!r}")
    for p in parts:
        if len(p) > 255:
            raise AssertionError(f"character-string over 255 octets ({len(p)})")
    return "".join(parts)


def dkim_fields(msg):
    """The DKIM-Signature fields at the top of msg (raw, folding kept), in order."""
    head = msg.split(b"\r\n\r\n", 1)[0]
    fields = re.findall(rb"^DKIM-Signature:.*?(?=\r\n(?![ \t]))", head, re.S | re.M)
    return [f.decode() for f in fields]


def tags(field):
    value = re.sub(r"\s+", "", field.split(":", 1)[1])
    return dict(t.split("=", 1) for t in value.split(";") if t)


@unittest.skipUnless(have_dkimpy(), "python3-dkim / python3-nacl not installed (./dev installs them)")
class DkimSigning(ServerTestCase):
    """Keys: example.org signs twice (ed25519 and rsa, RFC 8463 §4 dual
    signing), example.com once (rsa); other.example has none."""

    @classmethod
    def setUpClass(cls):
        cls.keydir = tempfile.mkdtemp(prefix="postling-dkim-keys-")
        cls.keys = {
            ("example.org", "ed"): make_key(os.path.join(cls.keydir, "org-ed.pem"), "ed25519"),
            ("example.org", "rsa"): make_key(os.path.join(cls.keydir, "org-rsa.pem"), "rsa"),
            ("example.com", "k1"): make_key(os.path.join(cls.keydir, "com-k1.pem"), "rsa"),
        }
        cls.server_kwargs = {
            "users": {ALICE: PW},
            "listeners": ("smtp", "submissions"),
            "config": {"dkim": [{"domain": d, "selector": s, "key": k}
                                for (d, s), k in cls.keys.items()]},
        }
        super().setUpClass()
        p = cls.srv.run_cli("dns-records", "-c", cls.srv.config_path)
        if p.returncode != 0:
            raise AssertionError(f"dns-records failed: {p.stderr.decode()}")
        cls.zone_text = p.stdout.decode()
        cls.records = {name: txt_value(rdata) for name, rtype, rdata in parse_zone(cls.zone_text)
                       if rtype == "TXT" and "._domainkey." in name}

    @classmethod
    def tearDownClass(cls):
        super().tearDownClass()
        for k in cls.keys.values():
            os.unlink(k)
        os.rmdir(cls.keydir)

    # -- helpers
    def submit(self, data, sender=ALICE, rcpts=(REMOTE,), proto="submissions", login=True):
        """One transaction; returns the queue id (from the 250 reply)."""
        c = SmtpConn.connect(self.srv, proto)
        c.ehlo()
        if login:
            self.assertEqual(c.login(ALICE, PW), AUTH_OK)
        rs = c.transaction(sender, list(rcpts), crlf(data))
        c.quit()
        m = re.match(r"250 2\.0\.0 Ok: queued as ([0-9a-v]{16})$", rs[-1] or "")
        self.assertTrue(m, rs)
        return m.group(1)

    def queued(self, qid):
        wait_until(lambda: os.path.exists(os.path.join(self.srv.queue_dir, qid + ".env")),
                   what="queue entry")
        return self.srv.queue_entry(qid)[1]

    # -- tests
    def test_dual_signature_ed25519_and_rsa_both_verify_with_dns_records_output(self):
        msg = self.queued(self.submit(make_message("dual", sender=ALICE, rcpt=REMOTE)))
        fields = dkim_fields(msg)
        self.assertEqual(len(fields), 2, msg[:2000])
        t0, t1 = tags(fields[0]), tags(fields[1])
        self.assertEqual((t0["a"], t0["s"], t0["d"]), ("ed25519-sha256", "ed", "example.org"))
        self.assertEqual((t1["a"], t1["s"], t1["d"]), ("rsa-sha256", "rsa", "example.org"))
        for t in (t0, t1):
            self.assertEqual((t["v"], t["c"]), ("1", "relaxed/relaxed"))
            self.assertNotIn("l", t)
            self.assertEqual(t["bh"], t0["bh"])       # one body hash for both
        self.assertEqual(dkim_verify(msg, self.records), [True, True])

    def test_signature_is_on_top_and_folded_under_78_columns(self):
        msg = self.queued(self.submit(make_message("fold", sender=ALICE, rcpt=REMOTE)))
        self.assertTrue(msg.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;"), msg[:200])
        for f in dkim_fields(msg):
            for line in f.split("\r\n"):
                self.assertLessEqual(len(line), 78, line)

    def test_signed_fields_from_and_subject_oversigned(self):
        data = make_message("hdrs", sender=ALICE, rcpt=REMOTE,
                            extra_headers=("Cc: carol@remote.example", "To: dave@remote.example",
                                           "List-Id: <list.example.org>", "X-Unsigned: 1",
                                           "MIME-Version: 1.0"))
        msg = self.queued(self.submit(data))
        h = tags(dkim_fields(msg)[1])["h"].split(":")
        self.assertEqual(h.count("from"), 2)          # 1 present + 1 oversigned
        self.assertEqual(h.count("subject"), 2)
        self.assertEqual(h.count("to"), 2)            # both To fields
        for name in ("cc", "date", "message-id", "list-id", "mime-version"):
            self.assertIn(name, h)
        self.assertNotIn("x-unsigned", h)
        self.assertNotIn("received", h)
        self.assertEqual(dkim_verify(msg, self.records), [True, True])

    def test_awkward_body_and_headers_verify(self):
        # trailing WSP, WSP runs, empty lines at the end, folded header with
        # tabs, a line starting with a dot (dot-stuffing), no final newline
        body = "Line with trailing spaces   \n\tTabbed\t\tline  with   runs\n.dot line\n\n\n\nlast"
        data = make_message("awkward", body=body, sender=ALICE, rcpt=REMOTE,
                            extra_headers=("Subject: second\n\t  folded   subject ",
                                           "Content-Type: text/plain;\n charset=utf-8"))
        msg = self.queued(self.submit(data))
        self.assertEqual(dkim_verify(msg, self.records), [True, True])

    def test_large_body_verifies(self):
        body = "".join(f"line {i} " + "x" * 70 + "\n" for i in range(20000))   # ~1.6 MB
        msg = self.queued(self.submit(make_message("large", body=body, sender=ALICE, rcpt=REMOTE)))
        self.assertEqual(dkim_verify(msg, self.records), [True, True])

    def test_tampered_message_fails_verification(self):
        # the verifier really checks: a changed body or From breaks both signatures
        msg = self.queued(self.submit(make_message("tamper", sender=ALICE, rcpt=REMOTE)))
        self.assertEqual(dkim_verify(msg.replace(b"Hello.", b"Hellx."), self.records), [False, False])
        self.assertEqual(dkim_verify(msg.replace(b"From: alice@", b"From: mallory@"), self.records),
                         [False, False])

    def test_single_rsa_domain_signed_once(self):
        msg = self.queued(self.submit(make_message("com", sender="alice@example.com", rcpt=REMOTE)))
        fields = dkim_fields(msg)
        self.assertEqual(len(fields), 1)
        self.assertEqual((tags(fields[0])["d"], tags(fields[0])["s"]), ("example.com", "k1"))
        self.assertEqual(dkim_verify(msg, self.records), [True])

    def test_from_display_name_with_angle_address_uses_its_domain(self):
        data = make_message("named", sender='"Smith, A. <x@other.example>" <alice@example.com>',
                            rcpt=REMOTE)
        msg = self.queued(self.submit(data))
        self.assertEqual([tags(f)["d"] for f in dkim_fields(msg)], ["example.com"])
        self.assertEqual(dkim_verify(msg, self.records), [True])

    def test_from_non_dkim_domain_is_not_signed(self):
        msg = self.queued(self.submit(make_message("other", sender="alice@other.example",
                                                   rcpt=REMOTE)))
        self.assertEqual(dkim_fields(msg), [])
        self.assertNotIn(b"DKIM-Signature", msg)

    def test_unparsable_from_falls_back_to_envelope_domain(self):
        data = make_message("nofromaddr", sender="undisclosed sender", rcpt=REMOTE)
        msg = self.queued(self.submit(data, sender=ALICE))
        self.assertEqual([tags(f)["d"] for f in dkim_fields(msg)], ["example.org", "example.org"])
        self.assertEqual(dkim_verify(msg, self.records), [True, True])

    def test_no_from_field_is_queued_unsigned_and_logged(self):
        since = self.srv.log_size()
        data = b"To: bob@remote.example\nSubject: no from\n\nbody\n"
        qid = self.submit(data)
        msg = self.queued(qid)
        self.assertNotIn(b"DKIM-Signature", msg)
        self.srv.wait_log("smtp.dkim_failed", since=since, msgid=qid, error="no From field")

    def test_port25_mail_for_a_local_user_is_not_signed(self):
        since = len(self.srv.message_files(ALICE))
        data = make_message("inbound", sender=ALICE, rcpt=ALICE)
        c = SmtpConn.connect(self.srv, "smtp")
        c.ehlo()
        rs = c.transaction("someone@remote.example", [ALICE], crlf(data))
        c.quit()
        self.assertTrue(rs[-1].startswith("250 "), rs)
        files = wait_until(lambda: self.srv.message_files(ALICE)[since:] or None, what="delivery")
        with open(files[-1], "rb") as f:
            self.assertNotIn(b"DKIM-Signature", f.read())

    def test_authenticated_local_only_mail_is_not_signed(self):
        # DKIM is for other domains' receivers; mail that stays here is not signed
        before = len(self.srv.message_files(ALICE))
        c = SmtpConn.connect(self.srv, "submissions")
        c.ehlo()
        c.login(ALICE, PW)
        rs = c.transaction(ALICE, [ALICE], crlf(make_message("self", sender=ALICE, rcpt=ALICE)))
        c.quit()
        self.assertTrue(rs[-1].startswith("250 "), rs)
        files = wait_until(lambda: self.srv.message_files(ALICE)[before:] or None, what="delivery")
        with open(files[-1], "rb") as f:
            self.assertNotIn(b"DKIM-Signature", f.read())

    def test_dns_records_dkim_p_matches_the_keys(self):
        for (domain, sel), path in self.keys.items():
            kind = "ed25519" if sel == "ed" else "rsa"
            rec = self.records[f"{sel}._domainkey.{domain}"]
            self.assertEqual(rec, f"v=DKIM1; k={kind}; p={public_key_b64(path, kind)}")

    def test_dns_records_mx_spf_dmarc(self):
        recs = parse_zone(self.zone_text)
        self.assertIn(("example.org", "MX", "10 test.example."), recs)
        self.assertIn(("example.org", "TXT", '"v=spf1 mx ~all"'), recs)
        self.assertIn(("_dmarc.example.org", "TXT",
                       '"v=DMARC1; p=quarantine; rua=mailto:postmaster@example.org"'), recs)
        self.assertIn(("test.example", "TXT", '"v=spf1 a -all"'), recs)
        # example.com only signs: no MX/SPF/DMARC printed for it
        self.assertFalse([r for r in recs if r[0] == "example.com"])
        rsa = [r for r in recs if r[0] == "rsa._domainkey.example.org"][0]
        self.assertGreater(len(re.findall(r'"[^"]*"', rsa[2])), 1)   # split at 255 octets


class DkimCli(unittest.TestCase):
    """dkim-keygen writes a usable key; bad keys are config errors."""

    def setUp(self):
        self.srv = Server(name="dkimcli", listeners=("smtp",))
        self.bin = postling_bin()

    def tearDown(self):
        self.srv.close()

    def cli(self, *args):
        return self.srv.run_cli(*args)

    def with_dkim(self, entries):
        self.srv.write_config({"dkim": entries})

    def test_keygen_writes_0600_key_and_prints_config_and_record(self):
        for kind, sel in (("rsa", "r1"), ("ed25519", "e1")):
            p = self.cli("dkim-keygen", "-c", self.srv.config_path, "--type", kind, "--selector", sel,
                         "Example.ORG")
            self.assertEqual(p.returncode, 0, p.stderr)
            out = p.stdout.decode()
            path = os.path.join(self.srv.data_dir, "dkim", f"example.org.{sel}.key")
            self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
            self.assertEqual(os.stat(os.path.dirname(path)).st_mode & 0o777, 0o700)
            self.assertIn(f"  - {{ domain: example.org, selector: {sel}, key: {path} }}", out)
            rec = [l for l in out.splitlines() if l.startswith(f"{sel}._domainkey.example.org.\tIN\tTXT\t")]
            self.assertEqual(len(rec), 1, out)
            self.assertEqual(txt_value(rec[0].split("\t", 3)[3]),
                             f"v=DKIM1; k={kind}; p={public_key_b64(path, kind)}")
        # the printed entries load, and dns-records prints the same records
        self.with_dkim([{"domain": "example.org", "selector": s,
                         "key": os.path.join(self.srv.data_dir, "dkim", f"example.org.{s}.key")}
                        for s in ("r1", "e1")])
        p = self.cli("check-config", "-c", self.srv.config_path)
        self.assertEqual(p.returncode, 0, p.stderr)
        p = self.cli("dns-records", "-c", self.srv.config_path)
        names = [n for n, t, _ in parse_zone(p.stdout.decode()) if "_domainkey" in n]
        self.assertEqual(names, ["r1._domainkey.example.org", "e1._domainkey.example.org"])

    def test_keygen_refuses_to_overwrite(self):
        args = ("dkim-keygen", "-c", self.srv.config_path, "--type", "ed25519", "--selector", "x",
                "example.org")
        self.assertEqual(self.cli(*args).returncode, 0)
        p = self.cli(*args)
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"exists already", p.stderr)

    def test_keygen_bad_arguments(self):
        for args in (("--type", "dsa", "example.org"), ("--bits", "512", "example.org"),
                     ("example..org",), ("--selector", "a b", "example.org"), ()):
            p = self.cli("dkim-keygen", "-c", self.srv.config_path, *args)
            self.assertEqual(p.returncode, 64, (args, p.stderr))

    def config_error(self, key_path, line_re):
        self.with_dkim([{"domain": "example.org", "selector": "s1", "key": key_path}])
        p = self.cli("check-config", "-c", self.srv.config_path)
        self.assertEqual(p.returncode, 2, p.stdout)
        err = p.stderr.decode().strip()
        self.assertRegex(err, r"^" + re.escape(self.srv.config_path) + r":\d+:\d+: " + line_re)
        return err

    def test_missing_key_file_is_a_config_error(self):
        self.config_error(os.path.join(self.srv.tmp, "nope.pem"),
                          r"cannot read DKIM key file '.*nope\.pem': No such file or directory$")

    def test_key_readable_by_others_is_a_config_error(self):
        path = make_key(os.path.join(self.srv.tmp, "open.pem"), "ed25519")
        os.chmod(path, 0o644)
        self.config_error(path, r"DKIM key file '.*open\.pem' is accessible by other users "
                          r"\(mode 0644\): chmod 600 it$")
        os.chmod(path, 0o600)
        self.with_dkim([{"domain": "example.org", "selector": "s1", "key": path}])
        self.assertEqual(self.cli("check-config", "-c", self.srv.config_path).returncode, 0)

    def test_unsupported_or_weak_keys_are_config_errors(self):
        ec = os.path.join(self.srv.tmp, "ec.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", ec], check=True, capture_output=True)
        os.chmod(ec, 0o600)
        self.config_error(ec, r"DKIM key file '.*ec\.pem': unsupported key type EC")
        small = os.path.join(self.srv.tmp, "small.pem")
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:768",
                        "-out", small], check=True, capture_output=True)
        os.chmod(small, 0o600)
        self.config_error(small, r"DKIM key file '.*small\.pem': RSA key of 768 bits is too small")
        junk = os.path.join(self.srv.tmp, "junk.pem")
        with open(junk, "w") as f:
            f.write("not a key\n")
        os.chmod(junk, 0o600)
        self.config_error(junk, r"DKIM key file '.*junk\.pem': not a usable PEM private key")

    def test_server_refuses_to_start_with_a_bad_key(self):
        self.with_dkim([{"domain": "example.org", "selector": "s1",
                         "key": os.path.join(self.srv.tmp, "missing.pem")}])
        p = subprocess.run([self.bin, "serve", "-c", self.srv.config_path], capture_output=True,
                           timeout=30)
        self.assertEqual(p.returncode, 2)
        self.assertIn(b"cannot read DKIM key file", p.stderr)


if __name__ == "__main__":
    unittest.main()
