"""POP3 server against RFC 1939 (base), 2449 (CAPA, response codes), 2595 (STLS),
5034 (AUTH), over real sockets on loopback."""
import base64
import hashlib
import hmac
import os
import poplib
import re
import socket
import ssl
import struct
import time
import unittest

from harness import (ConnectionClosed, Pop3Conn, Server, ServerTestCase, b64, crlf,
                     have_ipv6_loopback, make_message, wait_until)

PW = "Pop3-Test-Pw-7f3a"            # shared by the userNN accounts
SEC_PW = "Sec-User-Pw-91c4"
SEC_SECRET = "Apop-Secret-2c8e"
GREETING_RE = re.compile(r"^\+OK Postling ready (<\d+\.\d+@test\.example>)$")
REQUIRED_CAPS = ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE", "EXPIRE NEVER"]

USERS = {f"user{i:02d}@example.org": PW for i in range(1, 101)}
USERS["sec@example.org"] = {"password": SEC_PW, "secret": SEC_SECRET}
USERS["aliased@example.org"] = {"password": PW, "aliases": ["other-name@example.org"]}
SPACED_PW = "correct horse battery staple"
USERS["spaces@example.org"] = SPACED_PW


def sasl_mechs(capa_lines):
    for l in capa_lines:
        if l.startswith("SASL ") or l == "SASL":
            return l.split()[1:]
    return None


def scram_client(user, password, hash_name="sha256"):
    """Generator-style SCRAM (RFC 5802) client: yields client messages, receives
    server messages with send(); returns after verifying the server signature."""
    cnonce = base64.b64encode(os.urandom(18)).decode()
    first_bare = f"n={user},r={cnonce}"
    server_first = yield "n,," + first_bare
    attrs = dict(kv.split("=", 1) for kv in server_first.split(","))
    assert attrs["r"].startswith(cnonce), server_first
    salt = base64.b64decode(attrs["s"])
    iters = int(attrs["i"])
    salted = hashlib.pbkdf2_hmac(hash_name, password.encode(), salt, iters)
    client_key = hmac.new(salted, b"Client Key", hash_name).digest()
    stored_key = hashlib.new(hash_name, client_key).digest()
    final_wo_proof = f"c=biws,r={attrs['r']}"
    auth_msg = f"{first_bare},{server_first},{final_wo_proof}".encode()
    sig = hmac.new(stored_key, auth_msg, hash_name).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, sig))
    server_final = yield f"{final_wo_proof},p={base64.b64encode(proof).decode()}"
    server_key = hmac.new(salted, b"Server Key", hash_name).digest()
    want = base64.b64encode(hmac.new(server_key, auth_msg, hash_name).digest()).decode()
    assert server_final == f"v={want}", f"server signature {server_final!r} != v={want}"
    yield None


class Pop3Base(ServerTestCase):
    server_kwargs = {"users": USERS}
    _next_user = 0
    _next_ip = 10

    @classmethod
    def fresh_user(cls):
        """A user no other test touches (mailbox starts empty)."""
        Pop3Base._next_user += 1
        u = f"user{Pop3Base._next_user:02d}@example.org"
        assert u in USERS, "out of test users: add more to USERS"
        return u

    @classmethod
    def fresh_ip(cls):
        """A loopback source address no other test uses (the auth throttle is per IP)."""
        Pop3Base._next_ip += 1
        return f"127.0.0.{Pop3Base._next_ip}"

    def deliver_n(self, user, n, **kw):
        msgs = []
        for i in range(n):
            m = make_message(f"{self.id().split('.')[-1]} {i + 1}", body=f"Body {i + 1}.\nLine two.\n",
                             rcpt=user, **kw)
            self.srv.deliver(user, m)
            msgs.append(crlf(m))
        return msgs

    def logged_in(self, user, proto="pop3", **kw):
        c = self.conn(proto, **kw)
        c.login(user, PW if user != "sec@example.org" else SEC_PW)
        return c

    def login_retry(self, user, timeout=5.0, **kw):
        """Log in, retrying while the previous session's lock is still held."""
        deadline = time.monotonic() + timeout
        while True:
            c = self.conn(**kw)
            self.assertEqual(c.cmd(f"USER {user}")[:3], "+OK")
            r = c.cmd(f"PASS {PW}")
            if r.startswith("+OK"):
                return c
            c.close()
            if not r.startswith("-ERR [IN-USE]") or time.monotonic() > deadline:
                self.fail(f"login of {user}: {r!r}")
            time.sleep(0.1)

    def quit(self, c):
        r = c.cmd("QUIT")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.read_until_close(), b"", "data after the QUIT reply")


class GreetingAndCapa(Pop3Base):
    def test_greeting_carries_apop_timestamp(self):
        c = self.conn()
        self.assertRegex(c.greeting, GREETING_RE)

    def test_greeting_timestamp_differs_per_connection(self):
        a, b = self.conn(), self.conn()
        self.assertNotEqual(GREETING_RE.match(a.greeting).group(1), GREETING_RE.match(b.greeting).group(1))

    def check_common_caps(self, lines):
        for cap in REQUIRED_CAPS:
            self.assertIn(cap, lines)
        self.assertTrue(any(l == "IMPLEMENTATION Postling" or l.startswith("IMPLEMENTATION Postling ")
                            for l in lines), lines)
        self.assertEqual(len(lines), len(set(lines)), f"duplicate capability lines: {lines}")
        self.assertNotIn("LOGIN-DELAY", " ".join(lines), "LOGIN-DELAY advertised though pop3.login_delay is 0")

    def test_capa_plain_loopback_offers_user_sasl_stls(self):
        c = self.conn()
        r = c.cmd("CAPA")
        self.assertEqual(r, "+OK Capability list follows")
        lines = c.read_multi()
        self.check_common_caps(lines)
        self.assertIn("USER", lines)
        self.assertIn("STLS", lines)
        mechs = sasl_mechs(lines)
        self.assertIsNotNone(mechs, f"no SASL line in {lines}")
        self.assertIn("PLAIN", mechs)
        self.assertIn("LOGIN", mechs)

    def test_capa_on_pop3s_has_no_stls(self):
        c = self.conn("pop3s")
        self.assertRegex(c.greeting, GREETING_RE)
        lines = c.capa()
        self.check_common_caps(lines)
        self.assertNotIn("STLS", lines)
        self.assertIn("USER", lines)
        self.assertIn("PLAIN", sasl_mechs(lines) or [])

    def test_capa_after_stls_drops_stls(self):
        c = self.conn()
        c.stls(self.srv.ssl_context())
        lines = c.capa()
        self.check_common_caps(lines)
        self.assertNotIn("STLS", lines)
        self.assertIn("USER", lines)

    def test_capa_in_transaction_state(self):
        u = self.fresh_user()
        c = self.logged_in(u)
        lines = c.capa()
        for cap in REQUIRED_CAPS:
            self.assertIn(cap, lines)

    def test_auth_without_argument_lists_mechanisms(self):
        c = self.conn()
        capa = sasl_mechs(c.capa())
        r = c.cmd("AUTH")
        self.assertTrue(r.startswith("+OK"), r)
        mechs = c.read_multi()
        self.assertIn("PLAIN", mechs)
        self.assertIn("LOGIN", mechs)
        self.assertEqual(sorted(mechs), sorted(capa), "AUTH list differs from CAPA SASL")


class UserPass(Pop3Base):
    def test_user_pass_logs_in(self):
        u = self.fresh_user()
        c = self.conn()
        r = c.cmd(f"USER {u}")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.cmd(f"PASS {PW}"), "+OK Logged in")
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        self.quit(c)

    def test_commands_are_case_insensitive(self):
        u = self.fresh_user()
        c = self.conn()
        self.assertTrue(c.cmd(f"user {u}").startswith("+OK"))
        self.assertTrue(c.cmd(f"pass {PW}").startswith("+OK"))
        self.assertEqual(c.cmd("stat"), "+OK 0 0")
        self.assertTrue(c.cmd("Noop").startswith("+OK"))

    def test_pass_before_user_is_refused(self):
        c = self.conn(source=self.fresh_ip())
        self.assertTrue(c.cmd(f"PASS {PW}").startswith("-ERR"))
        self.assertTrue(c.cmd("STAT").startswith("-ERR"), "logged in without USER")

    def test_bad_password_is_refused_with_auth_code_and_logged(self):
        u = self.fresh_user()
        ip = self.fresh_ip()
        since = self.srv.log_size()
        c = self.conn(source=ip)
        self.assertTrue(c.cmd(f"USER {u}").startswith("+OK"))
        r = c.cmd("PASS wrong-password-1")
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)
        self.assertTrue(c.cmd("STAT").startswith("-ERR"), "STAT allowed after failed PASS")
        # RFC 1939: back in AUTHORIZATION; a second failure from the same IP is delayed
        self.assertTrue(c.cmd(f"USER {u}").startswith("+OK"))
        t0 = time.monotonic()
        r = c.cmd("PASS wrong-password-2")
        took = time.monotonic() - t0
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)
        self.assertGreaterEqual(took, 0.2, "second failure from the same IP answered without delay")
        fails = self.srv.wait_log("auth.fail", since=since, count=2, user=u)
        for f in fails:
            self.assertEqual(f.get("remote"), ip)
            self.assertTrue(f.get("mech"), f)
        # and the session still works with the right password
        self.assertTrue(c.cmd(f"USER {u}").startswith("+OK"))
        self.assertTrue(c.cmd(f"PASS {PW}").startswith("+OK"))

    def test_unknown_user_fails_like_bad_password(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd("USER nobody@example.org")
        self.assertTrue(r.startswith("+OK"), "USER must not reveal unknown accounts: " + r)
        r = c.cmd(f"PASS {PW}")
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)

    def test_second_session_of_same_user_gets_in_use(self):
        u = self.fresh_user()
        a = self.logged_in(u)
        b = self.conn()
        self.assertTrue(b.cmd(f"USER {u}").startswith("+OK"))
        r = b.cmd(f"PASS {PW}")
        self.assertTrue(r.startswith("-ERR [IN-USE]"), r)
        self.assertTrue(a.cmd("NOOP").startswith("+OK"), "first session disturbed")
        self.quit(a)
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_password_with_spaces(self):
        # RFC 1939 §7: a server may treat spaces in the PASS argument as part of the password
        c = self.conn()
        tok = b64(f"\0spaces@example.org\0{SPACED_PW}")
        self.srv.sensitive.add(tok)
        self.assertTrue(c.cmd(f"AUTH PLAIN {tok}").startswith("+OK"), "the password itself is refused")
        self.quit(c)
        c = self.login_retry_spaces()
        self.quit(c)

    def login_retry_spaces(self):
        deadline = time.monotonic() + 5
        while True:
            c = self.conn()
            self.assertTrue(c.cmd("USER spaces@example.org").startswith("+OK"))
            r = c.cmd(f"PASS {SPACED_PW}")
            if r.startswith("+OK"):
                return c
            if not r.startswith("-ERR [IN-USE]") or time.monotonic() > deadline:
                self.fail(f"PASS with a password containing spaces: {r!r}")
            c.close()
            time.sleep(0.1)

    def test_user_and_pass_need_an_argument(self):
        c = self.conn(source=self.fresh_ip())
        self.assertTrue(c.cmd("USER").startswith("-ERR"))
        self.assertTrue(c.cmd(f"USER {self.fresh_user()}").startswith("+OK"))
        self.assertTrue(c.cmd("PASS").startswith("-ERR"))

    def test_quit_in_authorization_state(self):
        c = self.conn()
        r = c.cmd("QUIT")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.read_until_close(), b"")


class Apop(Pop3Base):
    def test_apop_with_secret_logs_in(self):
        c = self.conn()
        ts = GREETING_RE.match(c.greeting).group(1)
        digest = hashlib.md5((ts + SEC_SECRET).encode()).hexdigest()
        r = c.cmd(f"APOP sec@example.org {digest}")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertTrue(c.cmd("STAT").startswith("+OK"))
        self.quit(c)

    def test_apop_wrong_digest_refused(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd("APOP sec@example.org " + "0" * 32)
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)
        self.assertTrue(c.cmd("STAT").startswith("-ERR"))

    def test_apop_digest_of_other_timestamp_refused(self):
        c = self.conn(source=self.fresh_ip())
        digest = hashlib.md5(("<1.2@test.example>" + SEC_SECRET).encode()).hexdigest()
        r = c.cmd(f"APOP sec@example.org {digest}")
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)

    def test_apop_for_account_without_secret_refused(self):
        u = self.fresh_user()
        c = self.conn(source=self.fresh_ip())
        ts = GREETING_RE.match(c.greeting).group(1)
        digest = hashlib.md5((ts + PW).encode()).hexdigest()
        r = c.cmd(f"APOP {u} {digest}")
        self.assertTrue(r.startswith("-ERR"), r)


class Sasl(Pop3Base):
    def plain(self, user, pw):
        tok = b64(f"\0{user}\0{pw}")
        self.srv.sensitive.add(tok)
        return tok

    def test_auth_plain_initial_response(self):
        u = self.fresh_user()
        c = self.conn()
        r = c.cmd(f"AUTH PLAIN {self.plain(u, PW)}")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_auth_plain_with_empty_challenge(self):
        u = self.fresh_user()
        c = self.conn()
        self.assertEqual(c.cmd("AUTH PLAIN"), "+ ")
        r = c.cmd(self.plain(u, PW))
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_auth_mechanism_name_case_insensitive(self):
        u = self.fresh_user()
        c = self.conn()
        r = c.cmd(f"AUTH plain {self.plain(u, PW)}")
        self.assertTrue(r.startswith("+OK"), r)

    def test_auth_login(self):
        u = self.fresh_user()
        c = self.conn()
        r = c.cmd("AUTH LOGIN")
        self.assertTrue(r.startswith("+ "), r)
        r = c.cmd(b64(u))
        self.assertTrue(r.startswith("+ "), r)
        self.srv.sensitive.add(b64(PW))
        r = c.cmd(b64(PW))
        self.assertTrue(r.startswith("+OK"), r)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_auth_plain_bad_password(self):
        u = self.fresh_user()
        c = self.conn(source=self.fresh_ip())
        r = c.cmd(f"AUTH PLAIN {self.plain(u, 'wrong-sasl-pw')}")
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)
        self.assertTrue(c.cmd("STAT").startswith("-ERR"))

    def test_auth_cancel_with_star(self):
        c = self.conn(source=self.fresh_ip())
        self.assertEqual(c.cmd("AUTH PLAIN"), "+ ")
        r = c.cmd("*")
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_auth_bad_base64(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd("AUTH PLAIN !!!not-base64!!!")
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertEqual(c.cmd("AUTH PLAIN"), "+ ")
        r = c.cmd("@@@@")
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertTrue(c.cmd("STAT").startswith("-ERR"))

    def test_auth_unknown_mechanism(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd("AUTH X-UNKNOWN-MECH")
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_auth_cram_md5_with_secret(self):
        c = self.conn()
        r = c.cmd("AUTH CRAM-MD5")
        self.assertTrue(r.startswith("+ "), r)
        challenge = base64.b64decode(r[2:])
        self.assertRegex(challenge.decode(), r"^<.+>$")
        digest = hmac.new(SEC_SECRET.encode(), challenge, "md5").hexdigest()
        r = c.cmd(b64(f"sec@example.org {digest}"))
        self.assertTrue(r.startswith("+OK"), r)
        self.assertTrue(c.cmd("STAT").startswith("+OK"))
        self.quit(c)

    def test_auth_scram_sha256_with_secret(self):
        c = self.conn()
        sc = scram_client("sec@example.org", SEC_SECRET)
        r = c.cmd("AUTH SCRAM-SHA-256 " + b64(next(sc)))
        self.assertTrue(r.startswith("+ "), r)
        r = c.cmd(b64(sc.send(base64.b64decode(r[2:]).decode())))
        # RFC 5034 §4: the server's final data comes as a challenge, then an empty response
        self.assertTrue(r.startswith("+ "), f"expected server-final challenge, got {r!r}")
        self.assertIsNone(sc.send(base64.b64decode(r[2:]).decode()))
        r = c.cmd("")
        self.assertTrue(r.startswith("+OK"), r)
        self.assertTrue(c.cmd("STAT").startswith("+OK"))
        self.quit(c)


class Transaction(Pop3Base):
    def test_empty_mailbox(self):
        c = self.logged_in(self.fresh_user())
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        first, lines = c.multi_cmd("LIST")
        self.assertTrue(first.startswith("+OK"), first)
        self.assertEqual(lines, [])
        first, lines = c.multi_cmd("UIDL")
        self.assertTrue(first.startswith("+OK"), first)
        self.assertEqual(lines, [])
        self.assertTrue(c.cmd("RETR 1").startswith("-ERR"))

    def test_stat_and_list_report_stored_crlf_sizes(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 3)
        files = self.srv.message_files(u)
        self.assertEqual(len(files), 3)
        stored = sorted(os.path.getsize(f) for f in files)
        self.assertEqual(stored, sorted(len(m) for m in msgs), "stored files are not the CRLF form")
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read()
            self.assertNotRegex(data, rb"(?<!\r)\n", f"bare LF stored in {f}")
        c = self.logged_in(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 3 {sum(len(m) for m in msgs)}")
        first, lines = c.multi_cmd("LIST")
        self.assertTrue(first.startswith("+OK"), first)
        self.assertEqual(lines, [f"{i + 1} {len(m)}" for i, m in enumerate(msgs)])
        for i, m in enumerate(msgs):
            self.assertEqual(c.cmd(f"LIST {i + 1}"), f"+OK {i + 1} {len(m)}")

    def test_list_nonexistent_and_deleted(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        c = self.logged_in(u)
        for arg in ("3", "0", "99999999999999999999", "-1", "abc"):
            r = c.cmd(f"LIST {arg}")
            self.assertTrue(r.startswith("-ERR"), f"LIST {arg}: {r}")
        self.assertTrue(c.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(c.cmd("LIST 1").startswith("-ERR"))
        first, lines = c.multi_cmd("LIST")
        self.assertEqual(lines, [f"2 {len(msgs[1])}"])
        self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(msgs[1])}")

    def test_retr_returns_exact_message(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        c = self.logged_in(u)
        for i, m in enumerate(msgs):
            r = c.cmd(f"RETR {i + 1}")
            self.assertTrue(r.startswith("+OK"), r)
            raw = c.read_multi_raw()
            self.assertEqual(raw, m + b".\r\n")
        self.assertTrue(c.cmd("RETR 3").startswith("-ERR"))
        self.assertTrue(c.cmd("RETR").startswith("-ERR"))

    def test_retr_dot_stuffs_lines_starting_with_dot(self):
        u = self.fresh_user()
        body = ".leading dot\n..two dots\n.\nnormal\n. space\nend\n"
        m = make_message("dots", body=body, rcpt=u)
        self.srv.deliver(u, m)
        c = self.logged_in(u)
        self.assertTrue(c.cmd("RETR 1").startswith("+OK"))
        raw = c.read_multi_raw()
        want = b"".join((b"." + l if l.startswith(b".") else l) + b"\r\n"
                        for l in crlf(m).split(b"\r\n")[:-1]) + b".\r\n"
        self.assertEqual(raw, want)
        self.assertIn(b"\r\n..leading dot\r\n...two dots\r\n..\r\nnormal\r\n.. space\r\n", raw)

    def test_retr_of_message_without_final_newline_ends_with_crlf_dot(self):
        u = self.fresh_user()
        self.srv.deliver(u, b"Subject: no final newline\n\nlast line without newline")
        c = self.logged_in(u)
        size = int(c.cmd("LIST 1").split()[2])
        with open(self.srv.message_files(u)[0], "rb") as f:
            stored = f.read()
        self.assertEqual(size, len(stored))
        self.assertTrue(c.cmd("RETR 1").startswith("+OK"))
        raw = c.read_multi_raw()
        self.assertTrue(raw.endswith(b"last line without newline\r\n.\r\n"), raw[-60:])

    def test_top(self):
        u = self.fresh_user()
        body = "b1\nb2\n.b3\nb4\n"
        m = crlf(make_message("top", body=body, rcpt=u))
        self.srv.deliver(u, m)
        head, _, rest = m.partition(b"\r\n\r\n")
        hlines = head.decode().split("\r\n")
        c = self.logged_in(u)
        first, lines = c.multi_cmd("TOP 1 0")
        self.assertTrue(first.startswith("+OK"), first)
        self.assertEqual(lines, hlines + [""])
        first, lines = c.multi_cmd("TOP 1 3")
        self.assertEqual(lines, hlines + ["", "b1", "b2", ".b3"])
        first, lines = c.multi_cmd("TOP 1 100")
        self.assertEqual(lines, hlines + ["", "b1", "b2", ".b3", "b4"])
        self.assertTrue(c.cmd("TOP 2 0").startswith("-ERR"))
        self.assertTrue(c.cmd("TOP 1").startswith("-ERR"))
        self.assertTrue(c.cmd("TOP 1 -1").startswith("-ERR"))

    def test_dele_rset(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 3)
        total = sum(len(m) for m in msgs)
        c = self.logged_in(u)
        self.assertTrue(c.cmd("DELE 2").startswith("+OK"))
        self.assertTrue(c.cmd("DELE 2").startswith("-ERR"), "DELE of a deleted message")
        self.assertTrue(c.cmd("DELE 4").startswith("-ERR"))
        self.assertTrue(c.cmd("RETR 2").startswith("-ERR"))
        self.assertTrue(c.cmd("TOP 2 0").startswith("-ERR"))
        self.assertTrue(c.cmd("UIDL 2").startswith("-ERR"))
        self.assertEqual(c.cmd("STAT"), f"+OK 2 {total - len(msgs[1])}")
        self.assertTrue(c.cmd("RSET").startswith("+OK"))
        self.assertEqual(c.cmd("STAT"), f"+OK 3 {total}")
        self.assertEqual(c.cmd("LIST 2"), f"+OK 2 {len(msgs[1])}")
        self.quit(c)
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 3 {total}", "RSET did not undelete")

    def test_quit_expunges_marked_messages(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 3)
        c = self.logged_in(u)
        _, uidls = c.multi_cmd("UIDL")
        self.assertTrue(c.cmd("DELE 2").startswith("+OK"))
        self.quit(c)
        self.assertEqual(len(self.srv.message_files(u)), 2)
        contents = []
        for f in self.srv.message_files(u):
            with open(f, "rb") as fh:
                contents.append(fh.read())
        self.assertNotIn(msgs[1], contents)
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 2 {len(msgs[0]) + len(msgs[2])}")
        _, after = c.multi_cmd("UIDL")
        old = [l.split()[1] for l in uidls]
        self.assertEqual([l.split()[1] for l in after], [old[0], old[2]])
        self.assertEqual([l.split()[0] for l in after], ["1", "2"])

    def test_dropped_connection_deletes_nothing(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        c = self.logged_in(u)
        self.assertTrue(c.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(c.cmd("DELE 2").startswith("+OK"))
        c.close()
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 2 {sum(len(m) for m in msgs)}")
        self.assertEqual(len(self.srv.message_files(u)), 2)

    def test_noop(self):
        c = self.logged_in(self.fresh_user())
        self.assertTrue(c.cmd("NOOP").startswith("+OK"))

    def test_uidl_unique_valid_and_stable_across_sessions(self):
        u = self.fresh_user()
        self.deliver_n(u, 3)
        c = self.logged_in(u)
        first, lines = c.multi_cmd("UIDL")
        self.assertTrue(first.startswith("+OK"), first)
        self.assertEqual([l.split()[0] for l in lines], ["1", "2", "3"])
        uids = [l.split()[1] for l in lines]
        self.assertEqual(len(set(uids)), 3)
        for x in uids:
            self.assertRegex(x, r"^[\x21-\x7e]{1,70}$", "RFC 1939 §7 unique-id syntax")
        for i, x in enumerate(uids):
            self.assertEqual(c.cmd(f"UIDL {i + 1}"), f"+OK {i + 1} {x}")
        self.assertTrue(c.cmd("UIDL 4").startswith("-ERR"))
        self.quit(c)
        c = self.login_retry(u)
        _, again = c.multi_cmd("UIDL")
        self.assertEqual(again, lines)

    def test_maildrop_is_a_snapshot_taken_at_login(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 1)
        c = self.logged_in(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(msgs[0])}")
        self.deliver_n(u, 1)
        self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(msgs[0])}")
        self.assertTrue(c.cmd("LIST 2").startswith("-ERR"))
        self.quit(c)
        c = self.login_retry(u)
        self.assertTrue(c.cmd("STAT").startswith("+OK 2 "))

    def test_pipelined_commands_answered_in_order(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        c = self.conn()
        c.send(f"USER {u}\r\nPASS {PW}\r\nSTAT\r\nLIST 2\r\nRETR 1\r\nUIDL 1\r\nNOOP\r\n")
        self.assertTrue(c.readline().startswith("+OK"))
        self.assertTrue(c.readline().startswith("+OK"))
        self.assertEqual(c.readline(), f"+OK 2 {len(msgs[0]) + len(msgs[1])}")
        self.assertEqual(c.readline(), f"+OK 2 {len(msgs[1])}")
        self.assertTrue(c.readline().startswith("+OK"))
        self.assertEqual(c.read_multi_raw(), msgs[0] + b".\r\n")
        self.assertTrue(c.readline().startswith("+OK 1 "))
        self.assertTrue(c.readline().startswith("+OK"))
        c.expect_silence(0.2)

    def test_poplib_session(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        p = poplib.POP3("127.0.0.1", self.srv.port("pop3"), timeout=15)
        try:
            p.user(u)
            p.pass_(PW)
            self.assertEqual(p.stat(), (2, sum(len(m) for m in msgs)))
            resp, lines, octets = p.retr(2)
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", msgs[1])
            resp, lines, octets = p.top(1, 0)
            self.assertEqual(lines[-1], b"")
            p.dele(1)
            p.quit()
        finally:
            p.close()
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), f"+OK 1 {len(msgs[1])}")


class Errors(Pop3Base):
    def test_transaction_commands_before_login_refused(self):
        c = self.conn()
        for cmd in ("STAT", "LIST", "LIST 1", "RETR 1", "DELE 1", "UIDL", "UIDL 1",
                    "TOP 1 0", "RSET", "NOOP"):
            r = c.cmd(cmd)
            self.assertTrue(r.startswith("-ERR"), f"{cmd} before login: {r}")

    def test_authorization_commands_after_login_refused(self):
        u = self.fresh_user()
        c = self.logged_in(u)
        for cmd in (f"USER {u}", f"PASS {PW}", "APOP a b", "AUTH PLAIN", "STLS"):
            r = c.cmd(cmd)
            self.assertTrue(r.startswith("-ERR"), f"{cmd} after login: {r}")
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_wrong_argument_counts_refused_and_session_continues(self):
        u = self.fresh_user()
        c = self.logged_in(u)
        self.assertEqual(c.cmd("STAT x"), "-ERR This command takes no arguments.")
        self.assertEqual(c.cmd("RETR"), "-ERR Wrong number of arguments.")
        self.assertEqual(c.cmd("TOP 1"), "-ERR Wrong number of arguments.")
        self.assertEqual(c.cmd("LIST 1 2"), "-ERR Wrong number of arguments.")
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_unknown_command(self):
        c = self.conn()
        self.assertTrue(c.cmd("XYZZY").startswith("-ERR"))
        self.assertTrue(c.cmd("XYZZY arg arg").startswith("-ERR"))
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_line_over_512_octets_gets_one_error_and_session_continues(self):
        c = self.conn()
        c.sendline("NOOP " + "x" * 600)
        self.assertTrue(c.readline().startswith("-ERR"))
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_very_long_line_discarded_to_line_end(self):
        u = self.fresh_user()
        c = self.logged_in(u)
        c.send(b"USER " + b"A" * 200000 + b"\r\nSTAT\r\n")
        r = c.readline()
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertEqual(c.readline(), "+OK 0 0", "one -ERR per overlong line, then the next command")
        c.expect_silence(0.2)

    def test_stls_on_implicit_tls_refused(self):
        c = self.conn("pop3s")
        self.assertTrue(c.cmd("STLS").startswith("-ERR"))
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_stls_twice_refused(self):
        c = self.conn()
        c.stls(self.srv.ssl_context())
        self.assertTrue(c.cmd("STLS").startswith("-ERR"))


class Tls(Pop3Base):
    def test_stls_discards_pipelined_plaintext(self):
        u = self.fresh_user()
        c = self.conn(source=self.fresh_ip())
        c.send(f"STLS\r\nUSER {u}\r\nNOOP\r\n")
        self.assertTrue(c.readline().startswith("+OK"))
        self.assertEqual(c.buf, b"", "server answered injected commands before TLS")
        try:
            c.sock = self.srv.ssl_context().wrap_socket(c.sock)
        except ssl.SSLError as e:
            self.fail(f"TLS handshake after STLS failed (plaintext reply to injected command?): {e}")
        c.expect_silence(0.3)
        r = c.cmd(f"PASS {PW}")
        self.assertTrue(r.startswith("-ERR"), f"USER sent before the handshake survived: {r}")
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()
        c.expect_silence(0.2)

    def test_stls_reply_text(self):
        c = self.conn()
        self.assertEqual(c.cmd("STLS"), "+OK Begin TLS negotiation")

    def test_stls_then_login_and_log(self):
        u = self.fresh_user()
        ip = self.fresh_ip()
        since = self.srv.log_size()
        c = self.conn(source=ip)
        c.stls(self.srv.ssl_context())
        c.login(u, PW)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        opened = self.srv.wait_log("conn.open", since=since, remote=ip)[0]
        tls = self.srv.wait_log("tls.established", since=since, sid=opened.get("sid"))[0]
        self.assertIn(tls.get("version"), ("TLSv1.2", "TLSv1.3"))
        self.assertEqual(tls.get("version"), c.sock.version())
        self.assertTrue(tls.get("cipher"))

    def test_pop3s_login_and_retr(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 1)
        p = poplib.POP3_SSL("127.0.0.1", self.srv.port("pop3s"), context=self.srv.ssl_context(), timeout=15)
        try:
            self.assertRegex(p.getwelcome().decode(), GREETING_RE)
            p.user(u)
            p.pass_(PW)
            resp, lines, _ = p.retr(1)
            self.assertEqual(b"\r\n".join(lines) + b"\r\n", msgs[0])
            p.quit()
        finally:
            p.close()

    def test_pop3s_tls12_and_tls13(self):
        for ver in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            with self.subTest(ver=ver):
                ctx = self.srv.ssl_context()
                ctx.minimum_version = ver
                ctx.maximum_version = ver
                s = socket.create_connection(self.srv.addr("pop3s"), timeout=10)
                with ctx.wrap_socket(s) as t:
                    c = Pop3Conn(t)
                    self.assertRegex(c.readline(), GREETING_RE)
                    self.assertEqual(t.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                   ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[ver])

    def test_stls_via_poplib(self):
        u = self.fresh_user()
        p = poplib.POP3("127.0.0.1", self.srv.port("pop3"), timeout=15)
        try:
            p.stls(self.srv.ssl_context())
            p.user(u)
            p.pass_(PW)
            self.assertEqual(p.stat(), (0, 0))
            p.quit()
        finally:
            p.close()


class BigMessage(Pop3Base):
    SIZE = 20 * 1024 * 1024

    @staticmethod
    def rss_kb(pid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def test_client_vanishing_mid_retr_of_20mb_message(self):
        u = self.fresh_user()
        line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789\n"
        body = line * (self.SIZE // len(line))
        m = crlf(make_message("big", body=body.decode(), rcpt=u))
        self.srv.deliver(u, m)
        # a reader that stops reading must not make the server buffer the message
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(15)
        s.connect(self.srv.addr("pop3"))
        c = Pop3Conn(s)
        self._conns.append(c)
        c.greeting = c.readline()
        c.login(u, PW)
        self.assertEqual(c.cmd("LIST 1"), f"+OK 1 {len(m)}")
        rss0 = self.rss_kb(self.srv.proc.pid)
        c.sendline("RETR 1")
        got = 0
        while got < 1024 * 1024:
            got += len(s.recv(65536))
        time.sleep(1.0)                   # let the server fill whatever it buffers
        rss1 = self.rss_kb(self.srv.proc.pid)
        self.assertLess(rss1 - rss0, 12 * 1024,
                        f"server RSS grew by {rss1 - rss0} kB while the reader stalled (RETR of 20 MB)")
        # vanish with a RST
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        self.srv.assert_alive()
        c2 = self.login_retry(u, timeout=10)
        self.assertEqual(c2.cmd("STAT"), f"+OK 1 {len(m)}", "message lost after vanished RETR")
        self.assertTrue(c2.cmd("RETR 1").startswith("+OK"))
        h = hashlib.sha256()
        raw = c2.read_multi_raw()
        self.assertEqual(len(raw), len(m) + 3)
        h.update(raw[:-3])
        self.assertEqual(h.hexdigest(), hashlib.sha256(m).hexdigest())
        self.quit(c2)


class Logs(Pop3Base):
    def test_session_log_lines(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 2)
        ip = self.fresh_ip()
        since = self.srv.log_size()
        c = self.conn(source=ip)
        tok = b64(f"\0{u}\0{PW}")
        self.srv.sensitive.add(tok)
        self.assertTrue(c.cmd(f"AUTH PLAIN {tok}").startswith("+OK"))
        self.assertTrue(c.cmd("RETR 1").startswith("+OK"))
        c.read_multi_raw()
        self.assertTrue(c.cmd("DELE 2").startswith("+OK"))
        self.quit(c)
        opened = self.srv.wait_log("conn.open", since=since, remote=ip)
        self.assertEqual(len(opened), 1)
        sid = opened[0].get("sid")
        self.assertRegex(sid or "", r"^[a-z2-7]{13}$")
        closed = self.srv.wait_log("conn.close", since=since, sid=sid)
        mine = [e for e in self.srv.log_lines(since) if e.get("sid") == sid]
        for e in mine:
            for k in ("ts", "level", "event"):
                self.assertIn(k, e, e)
            self.assertEqual(e.get("proto"), "pop3", e)
            self.assertEqual(e.get("remote"), ip, e)
        ok = [e for e in mine if e["event"] == "auth.ok"]
        self.assertEqual(len(ok), 1, mine)
        self.assertEqual(ok[0].get("user"), u)
        self.assertEqual(ok[0].get("mech"), "PLAIN")
        sess = [e for e in mine if e["event"] == "pop3.session"]
        self.assertEqual(len(sess), 1, mine)
        self.assertEqual(sess[0].get("retrieved"), 1)
        self.assertEqual(sess[0].get("deleted"), 1)
        self.assertIsInstance(sess[0].get("bytes"), int)
        self.assertGreaterEqual(sess[0]["bytes"], len(msgs[0]))
        self.assertEqual(sess[0].get("user"), u)
        self.assertTrue(closed[0].get("reason"), closed[0])
        events = [e["event"] for e in mine]
        self.assertLess(events.index("conn.open"), events.index("auth.ok"))
        self.assertLess(events.index("auth.ok"), events.index("pop3.session"))
        self.assertEqual(events[-1], "conn.close")

    def test_log_lines_are_json_with_ts_and_level(self):
        bad = []
        for line in self.srv.log_text().splitlines():
            if not line.strip():
                continue
            if not line.startswith("{"):
                bad.append(line)
        self.assertEqual(bad, [], "non-JSON lines in the log")
        for e in self.srv.log_lines():
            self.assertRegex(e.get("ts", ""), r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
            self.assertIn(e.get("level"), ("debug", "info", "warn", "error"))


class Robustness(Pop3Base):
    def test_close_while_password_check_runs_leaves_no_lock(self):
        u = self.fresh_user()
        for _ in range(10):
            c = self.conn()
            c.send(f"USER {u}\r\nPASS {PW}\r\n")
            c.close()
        for _ in range(5):
            c = self.conn()
            c.send(f"USER {u}\r\nPASS {PW}\r\nSTAT\r\n")
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        self.srv.assert_alive()
        c = self.login_retry(u, timeout=5)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_close_right_after_retr_request(self):
        u = self.fresh_user()
        self.deliver_n(u, 3)
        for _ in range(5):
            c = self.login_retry(u)
            c.send("RETR 1\r\nRETR 2\r\nRETR 3\r\n")
            c.close()
        self.srv.assert_alive()
        c = self.login_retry(u)
        self.assertTrue(c.cmd("STAT").startswith("+OK 3 "))

    def test_pipelined_sasl_exchange(self):
        u = self.fresh_user()
        tok = b64(f"\0{u}\0{PW}")
        self.srv.sensitive.add(tok)
        c = self.conn()
        c.send(f"AUTH PLAIN\r\n{tok}\r\nSTAT\r\nNOOP\r\n")
        self.assertEqual(c.readline(), "+ ")
        self.assertTrue(c.readline().startswith("+OK"))
        self.assertEqual(c.readline(), "+OK 0 0")
        self.assertTrue(c.readline().startswith("+OK"))

    def test_thousands_of_pipelined_commands(self):
        u = self.fresh_user()
        msgs = self.deliver_n(u, 1)
        c = self.logged_in(u)
        n = 3000
        c.send("STAT\r\n" * n)
        want = f"+OK 1 {len(msgs[0])}"
        for i in range(n):
            self.assertEqual(c.readline(), want, f"reply {i}")
        c.expect_silence(0.2)

    def test_nul_and_control_bytes_in_commands(self):
        c = self.conn(source=self.fresh_ip())
        for line in (b"US\x00ER x", b"USER \x00", b"\x00", b"\xff\xfe\xfd", b"CAPA\x00"):
            c.send(line + b"\r\n")
            r = c.readline()
            self.assertTrue(r.startswith("-ERR") or r.startswith("+OK"), f"{line!r}: {r!r}")
            if r.startswith("+OK") and line.startswith(b"CAPA"):
                c.read_multi()
        self.assertEqual(c.cmd("CAPA"), "+OK Capability list follows")
        c.read_multi()

    def test_login_name_is_case_insensitive_and_lock_is_per_account(self):
        u = self.fresh_user()
        a = self.conn()
        a.login(u.upper(), PW)
        b = self.conn()
        self.assertTrue(b.cmd(f"USER {u}").startswith("+OK"))
        r = b.cmd(f"PASS {PW}")
        self.assertTrue(r.startswith("-ERR [IN-USE]"), f"two sessions on one maildrop via another spelling: {r}")

    def test_alias_login_shares_the_account_lock(self):
        a = self.conn()
        a.login("other-name@example.org", PW)
        b = self.conn()
        self.assertTrue(b.cmd("USER aliased@example.org").startswith("+OK"))
        r = b.cmd(f"PASS {PW}")
        self.assertTrue(r.startswith("-ERR [IN-USE]"), f"alias and account opened the same maildrop twice: {r}")
        self.quit(a)

    def test_rset_then_quit_deletes_nothing(self):
        u = self.fresh_user()
        self.deliver_n(u, 2)
        c = self.logged_in(u)
        c.cmd("DELE 1")
        c.cmd("DELE 2")
        self.assertTrue(c.cmd("RSET").startswith("+OK"))
        self.quit(c)
        self.assertEqual(len(self.srv.message_files(u)), 2)

    def test_delete_everything(self):
        u = self.fresh_user()
        self.deliver_n(u, 4)
        c = self.logged_in(u)
        for i in range(1, 5):
            self.assertTrue(c.cmd(f"DELE {i}").startswith("+OK"))
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        self.quit(c)
        self.assertEqual(self.srv.message_files(u), [])
        c = self.login_retry(u)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_quit_followed_by_half_close_still_expunges(self):
        u = self.fresh_user()
        self.deliver_n(u, 2)
        c = self.logged_in(u)
        c.send("DELE 1\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)          # like `printf ... | nc`
        data = c.read_until_close(10)
        self.assertRegex(data, rb"^\+OK[^\r\n]*\r\n\+OK[^\r\n]*\r\n$")
        self.assertEqual(len(self.srv.message_files(u)), 1, "QUIT received but DELE not applied")

    def test_files_dropped_into_new_by_other_programs(self):
        u = self.fresh_user()
        self.deliver_n(u, 1)        # creates the Maildir
        md = self.srv.maildir(u)
        bodies = []
        for i in range(300):
            body = f"Subject: dropped {i}\r\n\r\nbody {i}\r\n".encode()
            bodies.append(body)
            with open(os.path.join(md, "new", f"1700000000.M{i}P1Q{i}.other"), "wb") as f:
                f.write(body)
        c = self.logged_in(u)
        r = c.cmd("STAT")
        self.assertTrue(r.startswith("+OK 301 "), r)
        first, lines = c.multi_cmd("LIST")
        self.assertEqual(len(lines), 301)
        first, uidl = c.multi_cmd("UIDL")
        self.assertEqual(len({l.split()[1] for l in uidl}), 301)
        sizes = {int(l.split()[1]) for l in lines}
        for b in bodies:
            self.assertIn(len(b), sizes)
        # every message is retrievable and its size matches LIST
        for l in lines[::50]:
            n, size = l.split()
            self.assertTrue(c.cmd(f"RETR {n}").startswith("+OK"))
            raw = c.read_multi_raw()
            self.assertEqual(len(raw) - 3, int(size))

    def test_garbage_instead_of_tls_handshake(self):
        s = socket.create_connection(self.srv.addr("pop3s"), timeout=10)
        s.sendall(b"USER x\r\nPASS y\r\n" + os.urandom(2000))
        s.settimeout(10)
        try:
            while s.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
        s.close()
        c = self.conn()
        c.send("STLS\r\n")
        self.assertTrue(c.readline().startswith("+OK"))
        c.send(b"\x16\x03\x01\x00\x05hello" + b"\x00" * 100)
        c.close()
        socket.create_connection(self.srv.addr("pop3s"), timeout=5).close()
        self.srv.assert_alive()
        self.assertRegex(self.conn("pop3s").greeting, GREETING_RE)


class SaslMore(Pop3Base):
    """Mechanisms not in the default list (DIGEST-MD5), SCRAM-SHA-1, malformed SASL data."""
    server_kwargs = {"users": USERS, "config": {"auth": {"mechanisms": [
        "PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1", "CRAM-MD5", "DIGEST-MD5"]}}}

    def digest_response(self, challenge, user, secret, uri="pop/test.example", **override):
        d = {k: a or b for k, a, b in re.findall(r'([\w-]+)=(?:"([^"]*)"|([^,]*))', challenge)}
        realm, nonce = d.get("realm", ""), d["nonce"]
        cnonce, nc = base64.b64encode(os.urandom(12)).decode(), "00000001"
        md5 = lambda b: hashlib.md5(b)
        a1 = md5(f"{user}:{realm}:{secret}".encode()).digest() + f":{nonce}:{cnonce}".encode()
        a2 = f"AUTHENTICATE:{uri}".encode()
        resp = md5(f"{md5(a1).hexdigest()}:{nonce}:{nc}:{cnonce}:auth:{md5(a2).hexdigest()}".encode()).hexdigest()
        fields = {"username": f'"{user}"', "realm": f'"{realm}"', "nonce": f'"{nonce}"',
                  "cnonce": f'"{cnonce}"', "nc": nc, "qop": "auth", "digest-uri": f'"{uri}"',
                  "response": resp, "charset": "utf-8"}
        fields.update(override)
        return ",".join(f"{k}={v}" for k, v in fields.items() if v is not None)

    def test_digest_md5_with_secret(self):
        c = self.conn()
        r = c.cmd("AUTH DIGEST-MD5")
        self.assertTrue(r.startswith("+ "), r)
        resp = self.digest_response(base64.b64decode(r[2:]).decode(), "sec@example.org", SEC_SECRET)
        r = c.cmd(b64(resp))
        self.assertTrue(r.startswith("+ "), r)
        self.assertRegex(base64.b64decode(r[2:]).decode(), r"^rspauth=[0-9a-f]{32}$")
        r = c.cmd("")
        self.assertTrue(r.startswith("+OK"), r)
        self.quit(c)

    def test_digest_md5_wrong_secret(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd("AUTH DIGEST-MD5")
        resp = self.digest_response(base64.b64decode(r[2:]).decode(), "sec@example.org", "wrong")
        r = c.cmd(b64(resp))
        self.assertTrue(r.startswith("-ERR"), r)

    def test_digest_md5_malformed_responses(self):
        ip = self.fresh_ip()
        bad = [
            lambda ch: 'username="sec@example.org,realm="x',                          # unterminated quote
            lambda ch: self.digest_response(ch, "sec@example.org", SEC_SECRET, response=None),
            lambda ch: self.digest_response(ch, "sec@example.org", SEC_SECRET, nc="zzzzzzzz"),
            lambda ch: self.digest_response(ch, "sec@example.org", SEC_SECRET, qop="auth-conf"),
            lambda ch: self.digest_response(ch, "sec@example.org", SEC_SECRET, nonce='"' + "A" * 300 + '"'),
            lambda ch: self.digest_response(ch, "x" * 300, SEC_SECRET),
            lambda ch: "," * 300,
            lambda ch: "=" * 100,
            lambda ch: 'username="' + "\\" * 100,
            lambda ch: self.digest_response(ch, "sec@example.org", SEC_SECRET) + ",maxbuf=0,maxbuf=99999999999999999999",
        ]
        for i, mk in enumerate(bad):
            with self.subTest(case=i):
                c = self.conn(source=ip)
                r = c.cmd("AUTH DIGEST-MD5")
                self.assertTrue(r.startswith("+ "), r)
                r = c.cmd(b64(mk(base64.b64decode(r[2:]).decode())))
                self.assertTrue(r.startswith("-ERR"), f"case {i}: {r}")
                self.srv.assert_alive()
                c.close()

    def test_scram_sha1_with_secret(self):
        c = self.conn()
        sc = scram_client("sec@example.org", SEC_SECRET, "sha1")
        r = c.cmd("AUTH SCRAM-SHA-1 " + b64(next(sc)))
        self.assertTrue(r.startswith("+ "), r)
        r = c.cmd(b64(sc.send(base64.b64decode(r[2:]).decode())))
        self.assertTrue(r.startswith("+ "), r)
        self.assertIsNone(sc.send(base64.b64decode(r[2:]).decode()))
        self.assertTrue(c.cmd("").startswith("+OK"))

    def test_scram_malformed_messages(self):
        ip = self.fresh_ip()
        for i, first in enumerate(["n,,", "y,,n=a,r=b", "p=tls-unique,,n=sec@example.org,r=abc",
                                   "n,,n=,r=", "n,,n=sec@example.org", "n,,r=abc,n=x", "x" * 400,
                                   "n,a=" + "z" * 300 + ",n=sec@example.org,r=abc"]):
            with self.subTest(case=i):
                c = self.conn(source=ip)
                r = c.cmd("AUTH SCRAM-SHA-256 " + b64(first))
                self.assertTrue(r.startswith("-ERR") or r.startswith("+ "), r)
                if r.startswith("+ "):
                    r = c.cmd(b64("c=biws,r=bogus,p=" + b64(b"x" * 32)))
                    self.assertTrue(r.startswith("-ERR"), f"case {i}: {r}")
                self.srv.assert_alive()
                c.close()

    def test_cram_md5_malformed(self):
        ip = self.fresh_ip()
        for i, resp in enumerate(["", "nospace", "sec@example.org " + "g" * 32, " " * 50,
                                  "sec@example.org " + "0" * 500]):
            with self.subTest(case=i):
                c = self.conn(source=ip)
                r = c.cmd("AUTH CRAM-MD5")
                self.assertTrue(r.startswith("+ "), r)
                r = c.cmd(b64(resp) if resp else "")
                self.assertTrue(r.startswith("-ERR"), f"case {i}: {r}")
                self.srv.assert_alive()
                c.close()


# ---------------------------------------------------------------- own servers

class PlaintextPolicy(Pop3Base):
    """auth.loopback_is_local=false: loopback counts as remote for the TLS rule."""
    server_kwargs = {"users": USERS, "allow_plaintext": False,
                     "config": {"auth": {"loopback_is_local": False, "mechanisms": ["PLAIN", "LOGIN"]}}}

    def test_capa_without_tls_lacks_user_and_plaintext_sasl(self):
        lines = self.conn().capa()
        self.assertNotIn("USER", lines)
        self.assertIn("STLS", lines)
        mechs = sasl_mechs(lines) or []
        self.assertNotIn("PLAIN", mechs)
        self.assertNotIn("LOGIN", mechs)

    def test_user_without_tls_refused_mentioning_stls(self):
        c = self.conn(source=self.fresh_ip())
        r = c.cmd(f"USER {self.fresh_user()}")
        self.assertTrue(r.startswith("-ERR [AUTH]"), r)
        self.assertIn("STLS", r)

    def test_auth_plain_without_tls_refused(self):
        u = self.fresh_user()
        c = self.conn(source=self.fresh_ip())
        tok = b64(f"\0{u}\0{PW}")
        self.srv.sensitive.add(tok)
        r = c.cmd(f"AUTH PLAIN {tok}")
        self.assertTrue(r.startswith("-ERR"), r)
        self.assertTrue(c.cmd("STAT").startswith("-ERR"))

    def test_after_stls_user_and_sasl_offered_and_work(self):
        u = self.fresh_user()
        c = self.conn()
        c.stls(self.srv.ssl_context())
        lines = c.capa()
        self.assertIn("USER", lines)
        self.assertIn("SASL PLAIN LOGIN", lines)
        c.login(u, PW)
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")

    def test_pop3s_user_pass_works(self):
        u = self.fresh_user()
        c = self.conn("pop3s")
        self.assertIn("USER", c.capa())
        c.login(u, PW)


class AllowPlaintext(Pop3Base):
    server_kwargs = {"users": USERS, "allow_plaintext": True,
                     "config": {"auth": {"loopback_is_local": False}}}

    def test_allow_plaintext_offers_user_without_tls(self):
        u = self.fresh_user()
        c = self.conn()
        lines = c.capa()
        self.assertIn("USER", lines)
        self.assertIn("PLAIN", sasl_mechs(lines) or [])
        c.login(u, PW)


class Throttle(ServerTestCase):
    MAX_FAILURES = 4
    server_kwargs = {"users": {"victim@example.org": PW},
                     "config": {"auth": {"max_failures": MAX_FAILURES, "fail_window": 120}}}

    def attempt(self, c, pw):
        """One USER/PASS; returns (reply to PASS or refusal, seconds)."""
        t0 = time.monotonic()
        r = c.cmd("USER victim@example.org")
        if r.startswith("+OK"):
            r = c.cmd(f"PASS {pw}")
        return r, time.monotonic() - t0

    def connect_refusable(self, source):
        """Connect; returns (conn, None) or (None, refusal text) if refused at greeting."""
        try:
            c = self.conn(source=source)
        except (ConnectionClosed, ConnectionResetError) as e:
            return None, f"closed: {e}"
        if not c.greeting.startswith("+OK"):
            return None, c.greeting
        return c, None

    def test_failed_logins_slow_down_then_refuse_but_other_ip_unaffected(self):
        attempts, times = 0, []
        refused = None
        t_start = time.monotonic()
        c = None
        per_conn = 0
        # bounded: 1000 attempts or 40 s
        while attempts < 1000 and time.monotonic() - t_start < 40:
            if c is None or per_conn >= 3:
                if c:
                    c.close()
                c, why = self.connect_refusable("127.0.0.1")
                per_conn = 0
                if c is None:
                    refused = refused or why
                    attempts += 1
                    continue
            try:
                r, took = self.attempt(c, f"wrong-{attempts}")
            except (ConnectionClosed, ConnectionResetError) as e:
                c = None
                attempts += 1
                refused = refused or f"closed: {e}"
                continue
            attempts += 1
            per_conn += 1
            times.append(took)
            self.assertTrue(r.startswith("-ERR [AUTH]") or r.startswith("-ERR [SYS/TEMP]"), r)
            if r.startswith("-ERR [SYS/TEMP]"):
                refused = refused or r
        if c:
            c.close()
        self.assertGreater(attempts, self.MAX_FAILURES, f"only {attempts} attempts in 40 s (delays too long)")
        # replies slowed down: the attempts before the refusal took growing time
        early = times[:self.MAX_FAILURES]
        self.assertGreaterEqual(max(early), 0.2, f"no delay after failures: {early}")
        # now even the right password from 127.0.0.1 is refused
        c, why = self.connect_refusable("127.0.0.1")
        if c is not None:
            r, _ = self.attempt(c, PW)
            self.assertTrue(r.startswith("-ERR [AUTH]") or r.startswith("-ERR [SYS/TEMP]"),
                            f"right password accepted from a refused IP after {attempts} failures: {r}")
            c.close()
        # another loopback address logs in at once
        t0 = time.monotonic()
        c = self.conn(source="127.0.0.2")
        c.login("victim@example.org", PW)
        self.assertLess(time.monotonic() - t0, 3.0, "login from another IP was slowed down")
        self.assertGreaterEqual(len(self.srv.find_log("auth.fail", remote="127.0.0.1")), self.MAX_FAILURES)


class Limits(ServerTestCase):
    server_kwargs = {"users": {"limit@example.org": PW},
                     "config": {"server": {"max_connections_per_ip": 3}}}

    def test_connections_per_ip_limited(self):
        cs = [self.conn(source="127.0.0.50") for _ in range(3)]
        for c in cs:
            self.assertRegex(c.greeting, GREETING_RE)
        try:
            extra = self.conn(source="127.0.0.50")
            data = extra.greeting.encode() + b"\r\n" + extra.read_until_close(5)
            self.assertTrue(data.startswith(b"-ERR"), f"4th connection from one IP got {data!r}")
        except (ConnectionClosed, ConnectionResetError):
            pass
        other = self.conn(source="127.0.0.51")
        self.assertRegex(other.greeting, GREETING_RE)
        cs[0].close()
        c = wait_until(lambda: self._try_conn("127.0.0.50"), what="slot freed after close")
        self.assertRegex(c.greeting, GREETING_RE)

    def _try_conn(self, ip):
        try:
            c = self.conn(source=ip)
            return c if c.greeting.startswith("+OK") else None
        except (ConnectionClosed, ConnectionResetError):
            return None


class RateLimit(ServerTestCase):
    server_kwargs = {"users": {"rate@example.org": PW},
                     "config": {"server": {"max_connection_rate_per_ip": 5}}}

    def test_sixth_connection_in_a_minute_refused_other_ips_unaffected(self):
        for _ in range(5):
            c = self.conn(source="127.0.0.60")
            self.assertRegex(c.greeting, GREETING_RE)
            c.close()
        try:
            extra = self.conn(source="127.0.0.60")
            data = extra.greeting.encode() + b"\r\n" + extra.read_until_close(5)
            self.assertTrue(data.startswith(b"-ERR [SYS/TEMP]"), f"6th connection in a minute got {data!r}")
        except (ConnectionClosed, ConnectionResetError):
            pass
        self.srv.wait_log("conn.refused", remote="127.0.0.60", reason="max_connection_rate_per_ip reached")
        other = self.conn(source="127.0.0.61")
        self.assertRegex(other.greeting, GREETING_RE)


class Reload(ServerTestCase):
    server_kwargs = {"users_file": {"old@example.org": PW}}
    _ip = 100

    def login_ok(self, user, pw=PW):
        # each attempt from its own source address: failures must not trip the throttle
        Reload._ip += 1
        c = self.conn(source=f"127.0.0.{Reload._ip}")
        c.cmd(f"USER {user}")
        r = c.cmd(f"PASS {pw}")
        if r.startswith("+OK"):
            return c
        c.close()
        return None

    def test_sighup_adds_users_and_keeps_sessions(self):
        old = self.login_ok("old@example.org")
        self.assertIsNotNone(old)
        self.srv.deliver("old@example.org", make_message("before reload"))
        self.assertIsNone(self.login_ok("new@example.org", "New-User-Pw-55"))
        self.srv.write_users_file({"old@example.org": PW, "new@example.org": "New-User-Pw-55"})
        self.srv.reload()
        c = wait_until(lambda: self.login_ok("new@example.org", "New-User-Pw-55"), timeout=5,
                       what="new user able to log in after SIGHUP")
        self.assertEqual(c.cmd("STAT"), "+OK 0 0")
        self.assertTrue(old.cmd("NOOP").startswith("+OK"), "session opened before SIGHUP broken")
        self.assertEqual(old.cmd("STAT"), "+OK 0 0", "old session's snapshot changed")
        self.quit_ok(old)
        # removing a user: no new logins, running ones unaffected
        self.srv.write_users_file({"old@example.org": PW})
        self.srv.reload()
        wait_until(lambda: self.login_ok("new@example.org", "New-User-Pw-55") is None, timeout=5,
                   what="removed user refused after SIGHUP")
        self.assertTrue(c.cmd("NOOP").startswith("+OK"))
        self.quit_ok(c)

    def quit_ok(self, c):
        self.assertTrue(c.cmd("QUIT").startswith("+OK"))

    def test_sighup_with_invalid_config_keeps_old_one(self):
        good = open(self.srv.config_path).read()
        since = self.srv.log_size()
        try:
            self.srv.write_config(text=good + "bogus_key_xyz: 1\n")
            self.srv.reload()
            ev = self.srv.wait_log("config.reload_failed", since=since)
            self.assertTrue(ev)
            self.srv.assert_alive()
            c = self.login_ok("old@example.org")
            self.assertIsNotNone(c, "server stopped serving after a rejected reload")
            self.assertEqual(c.cmd("STAT")[:3], "+OK")
            self.quit_ok(c)
            # broken users file: also rejected, existing accounts keep working
            since = self.srv.log_size()
            self.srv.write_config(text=good)
            self.srv.write_users_file(None, text="users:\n  - address: [unterminated\n")
            self.srv.reload()
            self.srv.wait_log("config.reload_failed", since=since)
            c = self.login_ok("old@example.org")
            self.assertIsNotNone(c, "users lost after a rejected users file")
            self.quit_ok(c)
        finally:
            self.srv.write_config(text=good)
            self.srv.write_users_file({"old@example.org": PW})


class OwnServerCase(unittest.TestCase):
    """One server per test."""

    def start_server(self, **kw):
        self.srv = Server(**kw)
        self.addCleanup(self.srv.close)
        self.srv.start()

    def tearDown(self):
        self.srv.assert_alive()
        self.srv.check_sanitizers()
        self.srv.assert_no_secrets_in_log()


class Shutdown(OwnServerCase):
    """SIGTERM drain."""

    def setUp(self):
        self.start_server(users={"drain@example.org": PW}, name="shutdown",
                          config={"server": {"shutdown_timeout": 3}})

    def assert_clean_goodbye(self, c):
        try:
            data = c.read_until_close(10)
        except ConnectionResetError:
            self.fail("connection reset instead of a clean close on SIGTERM")
        self.assertTrue(data == b"" or (data.startswith(b"-ERR") and data.endswith(b"\r\n")),
                        f"on SIGTERM the session got {data!r}")

    def test_sigterm_drains_sessions_and_exits_0(self):
        self.srv.deliver("drain@example.org", make_message("keep me"))
        idle = Pop3Conn.connect(self.srv, "pop3")
        busy = Pop3Conn.connect(self.srv, "pop3")
        busy.login("drain@example.org", PW)
        self.assertTrue(busy.cmd("DELE 1").startswith("+OK"))
        t0 = time.monotonic()
        self.srv.signal(15)
        self.assert_clean_goodbye(idle)
        self.assert_clean_goodbye(busy)
        try:
            rc = self.srv.proc.wait(3 + 5)
        except Exception:
            self.fail(f"not exited within shutdown_timeout + 5 s\n{self.srv.log_tail()}")
        self.srv.stopped = True
        self.assertEqual(rc, 0, self.srv.log_tail())
        self.assertLess(time.monotonic() - t0, 8)
        self.srv.check_sanitizers()
        with self.assertRaises(OSError):
            socket.create_connection(self.srv.addr("pop3"), timeout=2).close()
        self.srv.start()
        c = Pop3Conn.connect(self.srv, "pop3")
        c.login("drain@example.org", PW)
        self.assertTrue(c.cmd("STAT").startswith("+OK 1 "), "DELE applied without QUIT on shutdown")
        c.close()

    def test_sigterm_with_tls_session(self):
        c = Pop3Conn.connect(self.srv, "pop3s")
        c.login("drain@example.org", PW)
        self.srv.signal(15)
        try:
            data = c.read_until_close(10)
        except ssl.SSLEOFError:
            data = b""      # closed without close_notify: still a close, not a hang
        except ConnectionResetError:
            self.fail("TLS connection reset on SIGTERM")
        self.assertTrue(data == b"" or data.startswith(b"-ERR"), data)
        self.assertEqual(self.srv.stop(), 0, self.srv.log_tail())


class Restart(OwnServerCase):
    def setUp(self):
        self.start_server(users={"r@example.org": PW}, name="restart")

    def uidl(self):
        c = Pop3Conn.connect(self.srv, "pop3")
        try:
            c.login("r@example.org", PW)
            first, lines = c.multi_cmd("UIDL")
            self.assertTrue(first.startswith("+OK"))
            return c, lines
        except BaseException:
            c.close()
            raise

    def test_uidl_stable_across_restart_and_kill9(self):
        for i in range(3):
            self.srv.deliver("r@example.org", make_message(f"m{i}"))
        c, before = self.uidl()
        c.cmd("QUIT")
        c.close()
        self.srv.restart()
        c, after = self.uidl()
        c.cmd("QUIT")
        c.close()
        self.assertEqual(after, before, "UIDL changed across restart")
        self.srv.kill9()
        self.srv.start()
        c, after = self.uidl()
        self.assertEqual(after, before, "UIDL changed after kill -9")
        self.assertTrue(c.cmd("DELE 1").startswith("+OK"))
        self.assertTrue(c.cmd("QUIT").startswith("+OK"))
        c.close()
        old_uids = [l.split()[1] for l in before]
        self.srv.deliver("r@example.org", make_message("m-new"))
        self.srv.restart()
        c, after = self.uidl()
        c.close()
        uids = [l.split()[1] for l in after]
        self.assertEqual(uids[:2], old_uids[1:])
        self.assertEqual(len(uids), 3)
        self.assertNotIn(uids[2], old_uids, "UID of a deleted message reused")

    def test_index_rebuilt_when_missing(self):
        for i in range(2):
            self.srv.deliver("r@example.org", make_message(f"m{i}"))
        c, before = self.uidl()
        c.cmd("QUIT")
        c.close()
        self.srv.stop()
        ix = os.path.join(self.srv.maildir("r@example.org"), "postling.index")
        self.assertTrue(os.path.exists(ix), "no postling.index written (design §5)")
        os.unlink(ix)
        self.srv.start()
        c, after = self.uidl()
        c.close()
        self.assertEqual(len(after), 2)


@unittest.skipUnless(have_ipv6_loopback(), "no ::1 on this machine")
class Ipv6(ServerTestCase):
    server_kwargs = {"users": {"six@example.org": PW}, "ipv6": True}

    def test_pop3_and_pop3s_on_ipv6_loopback(self):
        since = self.srv.log_size()
        for proto in ("pop3", "pop3s"):
            c = self.conn(proto, host="::1")
            self.assertRegex(c.greeting, GREETING_RE)
            c.login("six@example.org", PW)
            self.assertTrue(c.cmd("QUIT").startswith("+OK"))
        opened = self.srv.wait_log("conn.open", since=since, count=2)
        self.assertEqual({e.get("remote") for e in opened}, {"::1"})


if __name__ == "__main__":
    unittest.main()
