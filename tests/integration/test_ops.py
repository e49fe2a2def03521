"""Operations: demo mode, certificates (SIGHUP reload, SNI, min_version), log file,
privilege drop, CAPA values from the config, SIGTERM while streaming."""
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import unittest

from harness import (Pop3Conn, Server, crlf, free_port, make_cert, make_message, postling_bin,
                     wait_until)

PW = "Ops-Test-Pw-51"


def der(cert_path):
    with open(cert_path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


def peer_der(srv, proto="pop3s", sni=None, ctx=None):
    ctx = ctx or srv.ssl_context()
    s = socket.create_connection(srv.addr(proto), timeout=10)
    if proto == "pop3":
        c = Pop3Conn(s)
        c.greeting = c.readline()
        c.stls(ctx) if sni is None else _stls_sni(c, ctx, sni)
        t = c.sock
    else:
        t = ctx.wrap_socket(s, server_hostname=sni)
    try:
        return t.getpeercert(binary_form=True)
    finally:
        t.close()


def _stls_sni(c, ctx, sni):
    r = c.cmd("STLS")
    assert r.startswith("+OK"), r
    c.sock = ctx.wrap_socket(c.sock, server_hostname=sni)


class OwnServer(unittest.TestCase):
    def start_server(self, **kw):
        kw.setdefault("name", type(self).__name__)
        self.srv = Server(**kw)
        self.addCleanup(self.srv.close)
        self.srv.start()
        return self.srv

    def tearDown(self):
        srv = getattr(self, "srv", None)
        if srv is not None:
            srv.assert_alive()
            srv.check_sanitizers()
            srv.assert_no_secrets_in_log()


class Certificates(OwnServer):
    def setUp(self):
        self.certdir = tempfile.mkdtemp(prefix="postling-certs-")
        self.addCleanup(shutil.rmtree, self.certdir, True)

    def test_configured_certificate_is_served_and_reloaded_on_sighup(self):
        c1, k1 = make_cert(self.certdir, "one", "test.example", ["test.example"])
        c2, k2 = make_cert(self.certdir, "two", "test.example", ["test.example"])
        live_c, live_k = os.path.join(self.certdir, "live.crt"), os.path.join(self.certdir, "live.key")
        shutil.copy(c1, live_c)
        shutil.copy(k1, live_k)
        srv = self.start_server(users={"c@example.org": PW}, config={
            "tls": {"self_signed": False, "certificates": [{"cert": live_c, "key": live_k}]}})
        self.assertEqual(peer_der(srv), der(c1))
        self.assertEqual(peer_der(srv, "pop3"), der(c1))
        before = Pop3Conn.connect(srv, "pop3s")
        self.addCleanup(before.close)
        before.login("c@example.org", PW)
        shutil.copy(c2, live_c + ".new")
        shutil.copy(k2, live_k + ".new")
        os.rename(live_k + ".new", live_k)
        os.rename(live_c + ".new", live_c)
        srv.reload()
        wait_until(lambda: peer_der(srv) == der(c2), timeout=5, what="new certificate after SIGHUP")
        self.assertEqual(peer_der(srv, "pop3"), der(c2))
        self.assertEqual(before.cmd("STAT"), "+OK 0 0", "TLS session from before the reload broken")

    def test_unreadable_new_certificate_keeps_old_one(self):
        c1, k1 = make_cert(self.certdir, "one", "test.example")
        srv = self.start_server(users={"c@example.org": PW}, config={
            "tls": {"self_signed": False, "certificates": [{"cert": c1, "key": k1}]}})
        since = srv.log_size()
        with open(c1, "w") as f:
            f.write("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
        srv.reload()
        srv.wait_log("config.reload_failed", since=since)
        c = Pop3Conn.connect(srv, "pop3s")
        c.login("c@example.org", PW)
        c.close()

    def test_sni_selects_certificate(self):
        c1, k1 = make_cert(self.certdir, "default", "test.example", ["test.example"])
        c2, k2 = make_cert(self.certdir, "other", "other.example", ["other.example", "*.other.example"])
        srv = self.start_server(users={"c@example.org": PW}, config={
            "tls": {"self_signed": False, "certificates": [{"cert": c1, "key": k1}, {"cert": c2, "key": k2}]}})
        self.assertEqual(peer_der(srv), der(c1), "no SNI: first certificate")
        self.assertEqual(peer_der(srv, sni="test.example"), der(c1))
        self.assertEqual(peer_der(srv, sni="other.example"), der(c2))
        self.assertEqual(peer_der(srv, sni="mail.other.example"), der(c2), "wildcard SAN")
        self.assertEqual(peer_der(srv, sni="unknown.example"), der(c1), "unknown name: default")
        self.assertEqual(peer_der(srv, "pop3", sni="other.example"), der(c2), "SNI after STLS")

    def test_min_version_13_refuses_tls12(self):
        srv = self.start_server(users={"c@example.org": PW}, config={"tls": {"min_version": "1.3"}})
        ctx = srv.ssl_context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with self.assertRaises((ssl.SSLError, ConnectionResetError)):
            peer_der(srv, ctx=ctx)
        ctx = srv.ssl_context()
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        self.assertTrue(peer_der(srv, ctx=ctx))

    def test_missing_certificate_refuses_to_start(self):
        srv = Server(users={"c@example.org": PW}, name="nocert", config={
            "tls": {"self_signed": False, "certificates": [
                {"cert": os.path.join(self.certdir, "none.crt"), "key": os.path.join(self.certdir, "none.key")}]}})
        self.addCleanup(srv.close)
        p = subprocess.run([postling_bin(), "serve", "-c", srv.config_path], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=15)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"none.crt", p.stderr)


class LogFile(OwnServer):
    def test_log_file_receives_json_lines(self):
        d = tempfile.mkdtemp(prefix="postling-logfile-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "postling.log")
        srv = self.start_server(users={"l@example.org": PW}, config={"log": {"file": path, "level": "info"}})
        c = Pop3Conn.connect(srv, "pop3")
        c.login("l@example.org", PW)
        c.cmd("QUIT")
        c.close()
        srv.wait_log("conn.close")
        self.assertTrue(srv.find_log("auth.ok", user="l@example.org"))
        self.assertFalse([e for e in srv.log_lines() if e.get("level") == "debug"], "debug lines at level info")
        with open(srv.stderr_path, "rb") as f:
            self.assertNotIn(b'"event":"auth.ok"', f.read(), "log lines also went to stderr")


class CapaFromConfig(OwnServer):
    def test_login_delay_and_expire_advertised(self):
        srv = self.start_server(users={"k@example.org": PW},
                                config={"pop3": {"login_delay": 900, "expire": "30"}})
        c = Pop3Conn.connect(srv, "pop3")
        lines = c.capa()
        c.close()
        self.assertIn("LOGIN-DELAY 900", lines)
        self.assertIn("EXPIRE 30", lines)
        self.assertNotIn("EXPIRE NEVER", lines)


class ShutdownWhileStreaming(OwnServer):
    def test_sigterm_during_stalled_retr_exits_within_deadline(self):
        srv = self.start_server(users={"s@example.org": PW}, config={"server": {"shutdown_timeout": 2}})
        line = b"x" * 70 + b"\n"
        srv.deliver("s@example.org", make_message("big", body=(line * 150000).decode()))
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        s.settimeout(10)
        s.connect(srv.addr("pop3"))
        c = Pop3Conn(s)
        self.addCleanup(c.close)
        c.greeting = c.readline()
        c.login("s@example.org", PW)
        c.sendline("RETR 1")
        got = 0
        while got < 256 * 1024:
            got += len(s.recv(65536))
        t0 = time.monotonic()
        srv.signal(signal.SIGTERM)
        try:
            rc = srv.proc.wait(2 + 5)
        except subprocess.TimeoutExpired:
            self.fail(f"server still running {time.monotonic() - t0:.1f} s after SIGTERM with a stalled reader")
        srv.stopped = True
        self.assertEqual(rc, 0, srv.log_tail())
        self.assertEqual(len(srv.message_files("s@example.org")), 1)


@unittest.skipUnless(os.geteuid() == 0, "needs root to test dropping privileges")
class PrivilegeDrop(OwnServer):
    def setUp(self):
        try:
            self.nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        self.start_priv()

    def start_priv(self):
        srv = Server(users={"p@example.org": PW}, name="privdrop", config={"server": {"user": "nobody"}})
        os.chmod(srv.tmp, 0o711)        # let the unprivileged server reach data_dir
        self.srv = srv
        self.addCleanup(srv.close)
        srv.start()

    def uids(self):
        with open(f"/proc/{self.srv.proc.pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return [int(x) for x in line.split()[1:]]

    def test_runs_as_configured_user(self):
        self.assertEqual(self.uids(), [self.nobody.pw_uid] * 4)

    def test_mailbox_made_by_server_is_usable(self):
        c = Pop3Conn.connect(self.srv, "pop3s")
        c.login("p@example.org", PW)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        c.close()

    def test_message_delivered_by_root_cli_is_readable(self):
        m = make_message("from root", rcpt="p@example.org")
        self.srv.deliver("p@example.org", m)
        c = Pop3Conn.connect(self.srv, "pop3s")
        c.login("p@example.org", PW)
        r = c.cmd("RETR 1")
        self.assertTrue(r.startswith("+OK"),
                        f"RETR of a message written by `postling deliver` (run as root): {r}; "
                        f"files: {[(f, os.stat(f).st_uid, oct(os.stat(f).st_mode)) for f in self.srv.message_files('p@example.org')]}")
        self.assertEqual(c.read_multi_raw(), crlf(m) + b".\r\n")
        c.close()

    def test_sighup_reload_after_dropping_privileges(self):
        since = self.srv.log_size()
        self.srv.reload()
        wait_until(lambda: self.srv.find_log("config.reload", since=since)
                   or self.srv.find_log("config.reload_failed", since=since), timeout=5,
                   what="config.reload or config.reload_failed")
        failed = self.srv.find_log("config.reload_failed", since=since)
        self.assertEqual(failed, [], "SIGHUP reload fails once privileges are dropped")
        c = Pop3Conn.connect(self.srv, "pop3s")
        c.login("p@example.org", PW)
        c.close()


class Demo(unittest.TestCase):
    def test_demo_mode_serves_demo_account(self):
        d = tempfile.mkdtemp(prefix="postling-demo-")
        self.addCleanup(shutil.rmtree, d, True)
        p1, p2, p3, p4, p5, p6, p7 = (free_port() for _ in range(7))
        err = open(os.path.join(d, "stderr"), "w+b")
        self.addCleanup(err.close)
        proc = subprocess.Popen([postling_bin(), "serve", "--demo", "-o", f"listeners.0.port={p1}",
                                 "-o", f"listeners.1.port={p2}", "-o", f"listeners.2.port={p3}",
                                 "-o", f"listeners.3.port={p4}", "-o", f"listeners.4.port={p5}",
                                 "-o", f"listeners.5.port={p6}", "-o", f"listeners.6.port={p7}"], cwd=d, stdout=err, stderr=err,
                                stdin=subprocess.DEVNULL)

        def cleanup():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.addCleanup(cleanup)

        def ready():
            err.seek(0)
            text = err.read().decode(errors="replace")
            if proc.poll() is not None:
                self.fail(f"demo server exited {proc.returncode}: {text}")
            return '"server.ready"' in text and text
        text = wait_until(ready, timeout=10, what="demo server.ready")
        self.assertIn(str(p2), text, "banner does not show the pop3s port")
        self.assertTrue(os.path.isdir(os.path.join(d, "var")), "demo data not under ./var")
        m = make_message("demo mail", rcpt="demo@example.org")
        r = subprocess.run([postling_bin(), "deliver", "--demo", "demo@example.org"], input=m, cwd=d,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        ctx = Server.ssl_context()
        s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", p2), timeout=10))
        c = Pop3Conn(s)
        try:
            self.assertTrue(c.readline().startswith("+OK Postling ready <"))
            c.login("demo@example.org", "demo")
            self.assertTrue(c.cmd("RETR 1").startswith("+OK"))
            self.assertEqual(c.read_multi_raw(), crlf(m) + b".\r\n")
            self.assertTrue(c.cmd("QUIT").startswith("+OK"))
        finally:
            c.close()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(10), 0)
        err.seek(0)
        logs = [json.loads(l) for l in err.read().decode(errors="replace").splitlines() if l.startswith("{")]
        self.assertTrue(any(e.get("event") == "auth.ok" for e in logs))


if __name__ == "__main__":
    unittest.main()
