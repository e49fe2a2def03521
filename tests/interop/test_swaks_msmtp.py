"""Interop: Debian's swaks (plain, STARTTLS, implicit TLS, AUTH PLAIN/LOGIN) and msmtp
(submission with STARTTLS + AUTH) send to Postling; the messages are checked in the
Maildir byte for byte and read back through POP3 (poplib, pop3s) with the same bytes.

Loopback counts as remote here (auth.loopback_is_local: false): AUTH needs TLS, as for
a real client on the internet."""
import os
import poplib
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration"))

from harness import ServerTestCase  # noqa: E402

SWAKS = shutil.which("swaks")
MSMTP = shutil.which("msmtp")
PW = "Interop-Smtp-Pw-5d"
USERS = {f"ix{i}@example.org": PW for i in range(1, 12)}
USERS["sender@example.org"] = {"password": PW, "aliases": ["sender.alias@example.org"]}
QUEUED_RE = re.compile(r"250 2\.0\.0 Ok: queued as ([0-9a-v]{16})")
DATE_RE = rb"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"


def have_swaks_tls():
    if SWAKS is None:
        return False
    p = subprocess.run([SWAKS, "--support"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
    return b"=== TLS supported" in p.stdout


SWAKS_TLS = have_swaks_tls()


def message(subject, sender="sender@example.org"):
    """LF text as a user's file would be; the clients send it with CRLF and dot-stuffing."""
    return (f"From: {sender}\nTo: someone@example.org\nSubject: {subject}\n"
            f"Message-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@example.org>\n"
            "Date: Mon, 01 Jan 2024 00:00:00 +0000\n\n"
            "Interop body.\n.leading dot\n..two dots\n.\nlast line\n").encode()


class Interop(ServerTestCase):
    server_kwargs = {"users": USERS, "listeners": ("smtp", "submission", "submissions", "pop3s"),
                     "config": {"auth": {"loopback_is_local": False}}}

    def setUp(self):
        super().setUp()
        self.home = tempfile.mkdtemp(prefix="postling-smtp-interop-")
        self.addCleanup(shutil.rmtree, self.home, True)


    # -- checks
    def stored(self, user, qid):
        """The one Maildir file of user, checked: our headers on top, CRLF only."""
        files = self.srv.message_files(user)
        self.assertEqual(len(files), 1, files)
        with open(files[0], "rb") as f:
            data = f.read()
        self.assertIn(f" id {qid}".encode(), data.split(b"\r\n\r\n", 1)[0])
        self.assertIsNone(re.search(rb"(?<!\r)\n", data), "bare LF stored")
        return data

    def check_file(self, data, sender, user, with_, content, auth=None, tls=False):
        m = re.match(re.escape(f"Return-Path: <{sender}>\r\nDelivered-To: {user}\r\n"
                               "Received: from client.example ([127.0.0.1])\r\n"
                               f"\tby test.example (Postling) with {with_} id ").encode()
                     + rb"[0-9a-v]{16}"
                     + (rb"\r\n\t\(using TLSv1\.[23] with cipher [A-Z0-9_-]+\)" if tls else b"")
                     + (re.escape(f"\r\n\t(Authenticated sender: {auth})").encode() if auth else b"")
                     + re.escape(f"\r\n\tfor <{user}>;\r\n\t").encode() + DATE_RE + rb"\r\n", data)
        self.assertIsNotNone(m, data[:400])
        self.assertEqual(data[m.end():], content.replace(b"\n", b"\r\n"))

    def pop3_retr(self, user):
        p = poplib.POP3_SSL("127.0.0.1", self.srv.port("pop3s"), context=self.srv.ssl_context(), timeout=15)
        try:
            p.user(user)
            p.pass_(PW)
            count, _size = p.stat()
            self.assertEqual(count, 1)
            _resp, lines, octets = p.retr(1)
            p.quit()
        finally:
            try:
                p.close()
            except OSError:
                pass
        data = b"\r\n".join(lines) + b"\r\n"
        self.assertEqual(len(data), octets)
        return data

    # -- swaks
    def swaks(self, user, content, *args, sender="sender@example.org"):
        path = os.path.join(self.home, "msg.txt")
        with open(path, "wb") as f:
            f.write(content[:-1] if content.endswith(b"\n") else content)   # swaks adds CRLF before the dot
        cmd = [SWAKS, "--server", "127.0.0.1", "--from", sender, "--to", user,
               "--helo", "client.example", "--data", "@" + path, "--timeout", "20", *args]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60,
                           stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"swaks failed:\n{out}\n{self.srv.log_tail(20)}")
        m = QUEUED_RE.search(out)
        self.assertIsNotNone(m, out)
        return m.group(1), out

    def swaks_roundtrip(self, user, with_, args, auth=None, tls=False, sender="sender@example.org"):
        content = message(f"swaks {with_} {user}", sender=sender)
        qid, out = self.swaks(user, content, *args, sender=sender)
        data = self.stored(user, qid)
        self.check_file(data, sender, user, with_, content, auth=auth, tls=tls)
        self.assertEqual(self.pop3_retr(user), data, "POP3 RETR differs from the stored file")
        return out

    @unittest.skipIf(SWAKS is None, "swaks is not installed")
    def test_swaks_plain_port_25(self):
        out = self.swaks_roundtrip("ix1@example.org", "ESMTP", ["--port", str(self.srv.port("smtp"))],
                                   sender="someone@example.net")
        self.assertIn("-> DATA", out)

    @unittest.skipIf(SWAKS is None, "swaks is not installed")
    def test_swaks_pipelining_port_25(self):
        self.swaks_roundtrip("ix2@example.org", "ESMTP", ["--port", str(self.srv.port("smtp")), "--pipeline"],
                             sender="someone@example.net")

    @unittest.skipUnless(SWAKS_TLS, "swaks without TLS support (libnet-ssleay-perl)")
    def test_swaks_starttls_port_25(self):
        out = self.swaks_roundtrip("ix3@example.org", "ESMTPS", ["--port", str(self.srv.port("smtp")), "-tls"],
                                   tls=True, sender="someone@example.net")
        self.assertIn("220 2.0.0 Ready to start TLS", out)

    @unittest.skipUnless(SWAKS_TLS, "swaks without TLS support (libnet-ssleay-perl)")
    def test_swaks_starttls_auth_plain_submission(self):
        self.swaks_roundtrip("ix4@example.org", "ESMTPSA",
                             ["--port", str(self.srv.port("submission")), "-tls", "--auth", "PLAIN",
                              "--auth-user", "sender@example.org", "--auth-password", PW],
                             auth="sender@example.org", tls=True)

    @unittest.skipUnless(SWAKS_TLS, "swaks without TLS support (libnet-ssleay-perl)")
    def test_swaks_tls_on_connect_auth_login_submissions(self):
        self.swaks_roundtrip("ix5@example.org", "ESMTPSA",
                             ["--port", str(self.srv.port("submissions")), "--tls-on-connect", "--auth", "LOGIN",
                              "--auth-user", "sender@example.org", "--auth-password", PW],
                             auth="sender@example.org", tls=True, sender="sender.alias@example.org")

    @unittest.skipUnless(SWAKS_TLS, "swaks without TLS support (libnet-ssleay-perl)")
    def test_swaks_auth_on_port_25_after_starttls(self):
        self.swaks_roundtrip("ix6@example.org", "ESMTPSA",
                             ["--port", str(self.srv.port("smtp")), "-tls", "--auth", "PLAIN",
                              "--auth-user", "sender@example.org", "--auth-password", PW],
                             auth="sender@example.org", tls=True)

    @unittest.skipIf(SWAKS is None, "swaks is not installed")
    def test_swaks_submission_without_tls_cannot_auth(self):
        path = os.path.join(self.home, "m.txt")
        with open(path, "wb") as f:
            f.write(message("no tls"))
        p = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(self.srv.port("submission")),
                            "--from", "sender@example.org", "--to", "ix7@example.org", "--helo", "client.example",
                            "--data", "@" + path, "--auth", "PLAIN", "--auth-user", "sender@example.org",
                            "--auth-password", PW, "--timeout", "20"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertNotIn("queued as", out)
        self.assertEqual(self.srv.message_files("ix7@example.org"), [])

    @unittest.skipUnless(SWAKS_TLS, "swaks without TLS support (libnet-ssleay-perl)")
    def test_swaks_wrong_password(self):
        path = os.path.join(self.home, "m.txt")
        with open(path, "wb") as f:
            f.write(message("bad pw"))
        p = subprocess.run([SWAKS, "--server", "127.0.0.1", "--port", str(self.srv.port("submissions")),
                            "--tls-on-connect", "--from", "sender@example.org", "--to", "ix8@example.org",
                            "--helo", "client.example", "--data", "@" + path, "--auth", "PLAIN",
                            "--auth-user", "sender@example.org", "--auth-password", "wrong-" + PW,
                            "--timeout", "20", "--local-interface", "127.0.0.77"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertNotEqual(p.returncode, 0, out)
        self.assertIn("535 5.7.8 Authentication credentials invalid", out)
        self.assertEqual(self.srv.message_files("ix8@example.org"), [])

    # -- msmtp
    def msmtp(self, user, content, auth="plain", sender="sender@example.org"):
        rc = os.path.join(self.home, "msmtprc")
        log = os.path.join(self.home, "msmtp.log")
        text = ("defaults\n"
                "tls on\ntls_starttls on\ntls_certcheck off\n"
                f"logfile {log}\n"
                "account postling\n"
                f"host 127.0.0.1\nport {self.srv.port('submission')}\n"
                "domain client.example\n"
                f"from {sender}\n"
                f"auth {auth}\nuser sender@example.org\npassword {PW}\n"
                "account default : postling\n")
        fd = os.open(rc, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        env = dict(os.environ, HOME=self.home, LC_ALL="C")
        p = subprocess.run([MSMTP, "-C", rc, "-v", user], input=content, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=60, env=env)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"msmtp failed:\n{out}\n{self.srv.log_tail(20)}")
        m = QUEUED_RE.search(out)
        self.assertIsNotNone(m, out)
        self.assertIn("STARTTLS", out)
        return m.group(1), out

    @unittest.skipIf(MSMTP is None, "msmtp is not installed")
    def test_msmtp_starttls_auth_plain_then_pop3(self):
        user = "ix9@example.org"
        content = message("msmtp plain")
        qid, out = self.msmtp(user, content)
        data = self.stored(user, qid)
        self.check_file(data, "sender@example.org", user, "ESMTPSA", content, auth="sender@example.org", tls=True)
        self.assertEqual(self.pop3_retr(user), data)

    @unittest.skipIf(MSMTP is None, "msmtp is not installed")
    def test_msmtp_auth_login_alias_sender_then_pop3(self):
        user = "ix10@example.org"
        content = message("msmtp login", sender="sender.alias@example.org")
        qid, out = self.msmtp(user, content, auth="login", sender="sender.alias@example.org")
        data = self.stored(user, qid)
        self.check_file(data, "sender.alias@example.org", user, "ESMTPSA", content, auth="sender@example.org",
                        tls=True)
        self.assertEqual(self.pop3_retr(user), data)

    @unittest.skipIf(MSMTP is None, "msmtp is not installed")
    def test_msmtp_foreign_sender_is_refused(self):
        user = "ix11@example.org"
        with self.assertRaises(AssertionError) as cm:
            self.msmtp(user, message("msmtp foreign", sender="ix1@example.org"), sender="ix1@example.org")
        self.assertIn("553 5.7.1 Sender address <ix1@example.org> not owned by user sender@example.org",
                      str(cm.exception))
        self.assertEqual(self.srv.message_files(user), [])


if __name__ == "__main__":
    unittest.main()
