"""Interop: Debian's fetchmail retrieves mail from Postling over POP3+STLS and pop3s."""
import getpass
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration"))

from harness import ServerTestCase, make_message  # noqa: E402

FETCHMAIL = shutil.which("fetchmail")
PW = "Fetchmail-Pw-3e1"
USERS = {f"fm{i}@example.org": PW for i in range(1, 5)}


@unittest.skipIf(FETCHMAIL is None, "fetchmail is not installed")
class Fetchmail(ServerTestCase):
    server_kwargs = {"users": USERS}

    def setUp(self):
        super().setUp()
        self.home = tempfile.mkdtemp(prefix="postling-fetchmail-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.mbox = os.path.join(self.home, "mbox")

    def tearDown(self):
        self.srv.assert_alive()

    def rcfile(self, user, proto, extra_opts):
        port = self.srv.port(proto)
        text = (
            "set no syslog\n"
            f"poll 127.0.0.1 with proto POP3 port {port} timeout 20\n"
            f"  user \"{user}\" there with password \"{PW}\" is \"{getpass.getuser()}\" here\n"
            f"  options no sslcertck {extra_opts}\n"
            f"  mda \"cat >> {self.mbox}\"\n")
        path = os.path.join(self.home, "fetchmailrc")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def fetch(self, rc, *args):
        env = dict(os.environ, HOME=self.home, FETCHMAILHOME=self.home, LC_ALL="C")
        cmd = [FETCHMAIL, "-f", rc, "--nosyslog", "-v", "--nodetach",
               "--idfile", os.path.join(self.home, "fetchids"),
               "--pidfile", os.path.join(self.home, "fetchmail.pid"), *args]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                           timeout=60, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        return p.returncode, out

    def mbox_subjects(self):
        if not os.path.exists(self.mbox):
            return []
        with open(self.mbox, "rb") as f:
            return [l.split(b":", 1)[1].strip().decode() for l in f.read().splitlines()
                    if l.startswith(b"Subject:")]

    def deliver(self, user, subject):
        self.srv.deliver(user, make_message(subject, body=f"{subject} body\n.dotted line\n", rcpt=user))

    def keep_uidl_cycle(self, user, proto, opts):
        self.deliver(user, "fm-a")
        self.deliver(user, "fm-b")
        rc = self.rcfile(user, proto, opts)
        since = self.srv.log_size()
        code, out = self.fetch(rc, "--keep", "--uidl")
        self.assertEqual(code, 0, f"first fetch: exit {code}\n{out}\n{self.srv.log_tail(30)}")
        self.assertEqual(sorted(self.mbox_subjects()), ["fm-a", "fm-b"], out)
        tls = self.srv.find_log("tls.established", since=since)
        self.assertTrue(tls, f"fetchmail session was not TLS\n{out}")
        code, out = self.fetch(rc, "--keep", "--uidl")
        self.assertEqual(code, 1, f"second fetch should find no new mail: exit {code}\n{out}")
        self.assertEqual(sorted(self.mbox_subjects()), ["fm-a", "fm-b"], out)
        self.deliver(user, "fm-c")
        code, out = self.fetch(rc, "--keep", "--uidl")
        self.assertEqual(code, 0, f"third fetch: exit {code}\n{out}")
        self.assertEqual(sorted(self.mbox_subjects()), ["fm-a", "fm-b", "fm-c"], out)
        self.assertEqual(len(self.srv.message_files(user)), 3, "--keep run deleted mail")
        return out

    def test_stls_keep_uidl(self):
        out = self.keep_uidl_cycle("fm1@example.org", "pop3", 'sslproto "TLS1.2+"')
        self.assertIn("STLS", out)

    def test_pop3s_keep_uidl(self):
        self.keep_uidl_cycle("fm2@example.org", "pop3s", "ssl")

    def test_fetch_without_keep_deletes_on_server(self):
        user = "fm3@example.org"
        self.deliver(user, "fm-del-1")
        self.deliver(user, "fm-del-2")
        rc = self.rcfile(user, "pop3s", "ssl")
        code, out = self.fetch(rc)
        self.assertEqual(code, 0, out)
        self.assertEqual(sorted(self.mbox_subjects()), ["fm-del-1", "fm-del-2"], out)
        self.assertEqual(self.srv.message_files(user), [], "fetched messages not deleted on the server")
        sess = self.srv.wait_log("pop3.session", user=user)
        self.assertEqual(sess[-1].get("deleted"), 2)

    def test_dot_stuffed_line_survives(self):
        user = "fm4@example.org"
        self.deliver(user, "fm-dots")
        code, out = self.fetch(self.rcfile(user, "pop3s", "ssl"), "--keep")
        self.assertEqual(code, 0, out)
        with open(self.mbox, "rb") as f:
            data = f.read()
        self.assertIn(b"\n.dotted line\n", data.replace(b"\r\n", b"\n"))
        self.assertNotIn(b"..dotted line", data)


if __name__ == "__main__":
    unittest.main()
