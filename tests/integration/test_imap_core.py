"""IMAP session mechanics against the real binary: greeting and capabilities,
LOGIN/AUTHENTICATE/STARTTLS rules, the selected state's untagged updates between
two sessions, IDLE, pipelining, limits, and every "Bad input" of issue 5.

The broad command conformance suite is test_imap.py; this file is about the
session itself (protocols/imap_session.c and friends)."""
import base64
import imaplib
import os
import socket
import ssl
import time
import unittest

import harness
from harness import Server, ServerTestCase, SmtpConn, make_message
from imap_support import ImapConn, quote, value

USER = "alice@example.org"
USER2 = "bob@example.org"
USER3 = "carol@example.org"


def smtp_deliver(srv, user, data):
    """Delivery through SMTP, as in production: the open mailbox hears of it."""
    c = SmtpConn.connect(srv, "smtp")
    try:
        c.ehlo()
        rs = c.transaction("sender@example.net", [user], harness.crlf(data))
        if not rs[-1] or not rs[-1].startswith("250"):
            raise AssertionError(f"SMTP delivery failed: {rs!r}")
        c.quit()
    finally:
        c.close()


class ImapCase(ServerTestCase):
    server_kwargs = dict(users={USER: "pw-alice", USER2: "pw-bob", USER3: "pw-carol"},
                         listeners=("imap", "imaps", "smtp"),
                         config={"server": {"max_connections_per_ip": 200},
                                 "imap": {"max_append_size": 4096}})

    def conn(self, proto="imap"):
        c = ImapConn.connect("127.0.0.1", self.srv.port(proto), tls=proto == "imaps")
        self._conns.append(c)
        return c

    def login(self, user=USER, proto="imap"):
        c = self.conn(proto)
        c.login(user, self.srv.password(user))
        return c

    def assert_usable(self, c):
        """The session still answers after a refused command."""
        self.assertEqual(c.cmd("NOOP").status, "OK")


class TestGreetingAndLogin(ImapCase):
    def test_greeting_lists_capabilities_with_starttls_and_auth(self):
        c = self.conn()
        self.assertRegex(c.greeting, r"^\* OK \[CAPABILITY IMAP4rev1 IMAP4rev2 .*\] Postling ready")
        caps = c.capabilities()
        for cap in ("IMAP4rev1", "IMAP4rev2", "LITERAL+", "SASL-IR", "IDLE", "UIDPLUS", "MOVE",
                    "STARTTLS", "AUTH=PLAIN", "APPENDLIMIT=4096", "ENABLE", "NAMESPACE"):
            self.assertIn(cap, caps)

    def test_imaps_greets_over_tls_without_starttls(self):
        c = self.conn("imaps")
        caps = c.capabilities()
        self.assertNotIn("STARTTLS", caps)
        self.assertIn("AUTH=PLAIN", caps)
        self.assertEqual(c.cmd("STARTTLS").status, "BAD")
        c.login(USER, "pw-alice")
        self.assertEqual(c.select("INBOX").code_name, "READ-WRITE")

    def test_login_ok_returns_capabilities_without_auth(self):
        c = self.conn()
        r = c.login(USER, "pw-alice")
        self.assertEqual(r.code_name, "CAPABILITY")
        self.assertNotIn("AUTH=PLAIN", r.code)
        self.assertNotIn("STARTTLS", c.capabilities())

    def test_bad_password_is_authenticationfailed_and_logged(self):
        c = self.conn()
        r = c.cmd(f"LOGIN {quote(USER)} \"wrong\"")
        self.assertEqual((r.status, r.code_name), ("NO", "AUTHENTICATIONFAILED"))
        self.srv.wait_log("auth.fail", proto="imap")
        c.login(USER, "pw-alice")

    def test_commands_need_the_right_state(self):
        c = self.conn()
        self.assertEqual(c.cmd("SELECT INBOX").status, "BAD")
        self.assertEqual(c.cmd("FETCH 1 FLAGS").status, "BAD")
        c.login(USER, "pw-alice")
        self.assertEqual(c.cmd(f"LOGIN {quote(USER)} x").status, "BAD")
        self.assertEqual(c.cmd("FETCH 1 FLAGS").status, "BAD")

    def test_authenticate_plain_with_sasl_ir(self):
        c = self.conn()
        ir = base64.b64encode(f"\0{USER}\0pw-alice".encode()).decode()
        r = c.cmd(f"AUTHENTICATE PLAIN {ir}")
        self.assertEqual(r.status, "OK", r.line)
        self.srv.wait_log("auth.ok", mech="PLAIN", user=USER)

    def test_authenticate_plain_with_continuation_and_cancel(self):
        c = self.conn()
        tag = c.next_tag()
        c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.wait_continuation(), b"+ ")
        c.send("*\r\n")
        self.assertEqual(c.wait_tagged(tag).status, "BAD")
        tag = c.next_tag()
        c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.wait_continuation(), b"+ ")
        c.send(base64.b64encode(f"\0{USER}\0pw-alice".encode()) + b"\r\n")
        self.assertEqual(c.wait_tagged(tag).status, "OK")

    def test_id_enable_namespace(self):
        c = self.login()
        r = c.ok('ID ("name" "test-client" "version" "1")')
        self.assertTrue(r.lines('* ID ("name" "Postling"'))
        r = c.ok("ENABLE IMAP4rev2")
        self.assertEqual(r.lines("* ENABLED"), ["* ENABLED IMAP4rev2"])
        r = c.ok("ENABLE IMAP4rev2")
        self.assertEqual(r.lines("* ENABLED"), ["* ENABLED"])
        r = c.ok("NAMESPACE")
        self.assertEqual(r.lines("* NAMESPACE"), ['* NAMESPACE (("" "/")) NIL NIL'])

    def test_logout_says_bye_and_logs_the_session(self):
        c = self.login()
        since = self.srv.log_size()
        r = c.cmd("LOGOUT")
        self.assertEqual(r.status, "OK")
        self.assertEqual(r.lines("* BYE"), ["* BYE Logging out"])
        self.srv.wait_log("imap.session", since=since, user=USER, reason="logout")

    def test_pipelined_commands_answer_in_order(self):
        c = self.login()
        c.send(b"p1 NOOP\r\np2 SELECT INBOX\r\np3 UID FETCH 1:* (FLAGS)\r\np4 NOOP\r\n")
        for tag in ("p1", "p2", "p3", "p4"):
            self.assertEqual(c.wait_tagged(tag).status, "OK", tag)


class TestPlaintextPolicy(ServerTestCase):
    """Port 143 without TLS where plaintext is not allowed (loopback not local)."""
    server_kwargs = dict(users={USER: "pw-alice"}, listeners=("imap",),
                         config={"auth": {"loopback_is_local": False}})

    def conn(self):
        c = ImapConn.connect("127.0.0.1", self.srv.port("imap"))
        self._conns.append(c)
        return c

    def starttls(self, c, pipelined=b""):
        tag = c.next_tag()
        c.send(f"{tag} STARTTLS\r\n".encode() + pipelined)
        self.assertEqual(c.wait_tagged(tag).status, "OK")
        c.sock = Server.ssl_context().wrap_socket(c.sock)
        c.buf = b""

    def test_login_before_starttls_is_refused(self):
        c = self.conn()
        caps = c.capabilities()
        self.assertIn("LOGINDISABLED", caps)
        self.assertIn("STARTTLS", caps)
        self.assertFalse([x for x in caps if x.startswith("AUTH=PLAIN")])
        r = c.cmd(f"LOGIN {quote(USER)} \"pw-alice\"")
        self.assertEqual((r.status, r.code_name), ("NO", "PRIVACYREQUIRED"))
        self.starttls(c)
        caps = c.capabilities()
        self.assertNotIn("LOGINDISABLED", caps)
        self.assertNotIn("STARTTLS", caps)
        c.login(USER, "pw-alice")

    def test_commands_pipelined_after_starttls_are_discarded(self):
        c = self.conn()
        self.starttls(c, pipelined=f"X1 LOGIN {quote(USER)} \"pw-alice\"\r\nX2 NOOP\r\n".encode())
        # nothing answers X1/X2: the first response is to the next command
        r = c.cmd("CAPABILITY")
        self.assertEqual(r.status, "OK")
        self.assertEqual(len(r.untagged), 1)
        r = c.cmd("SELECT INBOX")
        self.assertEqual(r.status, "BAD")       # still not logged in


class TestSelectedState(ImapCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.box = 0

    def fresh_folder(self, n):
        """A new folder with n messages appended (APPEND is exact and fast)."""
        type(self).box += 1
        name = f"T{self.box}"
        c = self.login()
        c.ok(f"CREATE {name}")
        for i in range(n):
            c.ok(f"APPEND {name} {{}}", make_message(f"m{i}", body=f"Body {i}.\n"))
        c.logout()
        return name

    def test_select_sends_the_required_untagged_data(self):
        name = self.fresh_folder(2)
        c = self.login()
        r = c.select(name)
        self.assertEqual(r.code_name, "READ-WRITE")
        self.assertEqual(r.lines("* 2 EXISTS"), ["* 2 EXISTS"])
        self.assertEqual(r.lines("* 2 RECENT"), ["* 2 RECENT"])
        self.assertTrue(r.lines("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft"))
        self.assertTrue(r.lines("* OK [PERMANENTFLAGS ("))
        self.assertTrue(r.lines("* OK [UIDVALIDITY "))
        self.assertEqual(r.lines("* OK [UIDNEXT "), ["* OK [UIDNEXT 3] Predicted next UID"])
        self.assertEqual(r.lines("* OK [UNSEEN "), ["* OK [UNSEEN 1] First unseen"])
        r = c.select(name, examine=True)
        self.assertEqual(r.code_name, "READ-ONLY")
        self.assertEqual(r.lines("* OK [CLOSED]"), ["* OK [CLOSED] Previous mailbox closed"])
        self.assertEqual(c.cmd("STORE 1 +FLAGS (\\Seen)").code_name, "READ-ONLY")

    def test_rev2_has_no_recent(self):
        name = self.fresh_folder(1)
        c = self.login()
        c.ok("ENABLE IMAP4rev2")
        r = c.select(name)
        self.assertEqual(r.lines("* 1 RECENT"), [])
        self.assertEqual(r.lines("* OK [UNSEEN"), [])
        r = c.ok("SEARCH ALL")
        self.assertEqual(r.lines("* ESEARCH"), [f'* ESEARCH (TAG "{r.tag}") ALL 1'])

    def test_two_sessions_see_each_others_flags_and_expunges(self):
        name = self.fresh_folder(3)
        a, b = self.login(), self.login()
        a.select(name)
        b.select(name)
        r = a.ok("STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(r.lines("* 2 FETCH"), ["* 2 FETCH (FLAGS (\\Flagged \\Recent))"])
        r = b.ok("NOOP")
        self.assertEqual(r.lines("* 2 FETCH"), ["* 2 FETCH (FLAGS (\\Flagged))"])
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        # RFC 9051 §7.5.1: no EXPUNGE during FETCH; sequence numbers stay put
        r = b.ok("FETCH 1:3 (UID)")
        self.assertEqual(r.lines("* 1 EXPUNGE"), [])
        self.assertEqual(len(r.lines("* 2 FETCH")) + len(r.lines("* 3 FETCH")), 2)
        r = b.ok("NOOP")
        self.assertEqual(r.lines("* 1 EXPUNGE"), ["* 1 EXPUNGE"])
        r = b.ok("FETCH 1:* (UID)")
        self.assertEqual([u for s, it in r.fetches() for u in [int(it["UID"])]], [2, 3])

    def test_store_silent_and_not_silent(self):
        name = self.fresh_folder(2)
        c = self.login()
        c.select(name)
        r = c.ok("STORE 1:2 +FLAGS.SILENT (\\Seen $Label1)")
        self.assertEqual(r.lines("* 1 FETCH"), [])
        self.assertTrue(r.lines("* FLAGS ("))     # a new keyword extends FLAGS
        r = c.ok("UID STORE 1 -FLAGS ($Label1)")
        self.assertEqual(r.lines("* 1 FETCH"), ["* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))"])
        r = c.ok("FETCH 2 (FLAGS)")
        self.assertEqual(r.lines("* 2 FETCH"), ["* 2 FETCH (FLAGS (\\Seen \\Recent $Label1))"])
        self.assertEqual(c.cmd("STORE 1 +FLAGS (\\Recent)").status, "BAD")
        self.assertEqual(c.cmd("STORE 1 FROBNICATE (\\Seen)").status, "BAD")

    def test_fetch_body_sets_seen_and_peek_does_not(self):
        name = self.fresh_folder(1)
        c = self.login()
        c.select(name)
        r = c.ok("FETCH 1 (BODY.PEEK[TEXT])")
        self.assertEqual(r.lines("* 1 FETCH"), ["* 1 FETCH (BODY[TEXT] {9}\r\nBody 0.\r\n)"])
        r = c.ok("FETCH 1 (BODY[TEXT])")
        self.assertIn("FLAGS (\\Seen \\Recent)", r.untagged[0].decode())
        r = c.ok("FETCH 1 (RFC822.SIZE BODY[]<0.4>)")
        self.assertRegex(r.untagged[0].decode(), r"^\* 1 FETCH \(RFC822\.SIZE \d+ BODY\[\]<0> \{4\}\r\nFrom\)$")

    def test_idle_gets_smtp_delivery_within_one_second(self):
        c = self.login()
        c.select("INBOX")
        exists = int(c.ok("NOOP").tag and c.ok("STATUS INBOX (MESSAGES)").lines("* STATUS")[0]
                     .split("MESSAGES ")[1].rstrip(")"))
        tag = c.idle_start()
        t0 = time.monotonic()
        smtp_deliver(self.srv, USER, make_message("idle wake-up"))
        got = None
        while time.monotonic() - t0 < 5:
            u = c.read_untagged(5)
            if u is not None and u.endswith(b" EXISTS"):
                got = u
                break
        self.assertEqual(got, b"* %d EXISTS" % (exists + 1))
        self.assertLess(time.monotonic() - t0, 3.0)   # SMTP transaction + wake-up
        r = c.idle_done(tag)
        self.assertEqual(r.line, "OK IDLE terminated")

    def test_idle_anything_but_done_is_bad(self):
        c = self.login()
        tag = c.idle_start()
        c.send(b"NOOP\r\n")
        self.assertEqual(c.wait_tagged(tag).status, "BAD")
        self.assert_usable(c)

    def test_client_closes_during_idle(self):
        c = self.login()
        c.select("INBOX")
        c.idle_start()
        since = self.srv.log_size()
        c.close()
        self.srv.wait_log("imap.session", since=since, user=USER, reason="disconnected")

    def test_copy_and_move_answer_copyuid(self):
        name = self.fresh_folder(2)
        c = self.login()
        c.ok(f"CREATE {name}-dst")
        c.select(name)
        r = c.ok(f"COPY 1:2 {name}-dst")
        self.assertRegex(r.code, r"^COPYUID \d+ 1:2 1:2$")
        r = c.ok(f"UID MOVE 2 {name}-dst")
        self.assertRegex(r.lines("* OK [COPYUID")[0], r"^\* OK \[COPYUID \d+ 2 3\]")
        self.assertEqual(r.lines("* 2 EXPUNGE"), ["* 2 EXPUNGE"])
        r = c.cmd(f"COPY 1 {name}-nowhere")
        self.assertEqual((r.status, r.code_name), ("NO", "TRYCREATE"))

    def test_close_expunges_silently_and_unselect_does_not(self):
        name = self.fresh_folder(2)
        c = self.login()
        c.select(name)
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("UNSELECT")
        self.assertEqual(r.untagged, [])
        c.select(name)
        r = c.ok("CLOSE")
        self.assertEqual(r.untagged, [])
        r = c.ok(f"STATUS {name} (MESSAGES)")
        self.assertEqual(r.lines("* STATUS"), [f"* STATUS {name} (MESSAGES 1)"])
        self.assertEqual(c.cmd("FETCH 1 FLAGS").status, "BAD")

    def test_big_messages_stream_exactly(self):
        line = b"0123456789abcdefghijklmnopqrstuvwxyz" * 2 + b"\r\n"
        big = [b"Subject: big %d\r\n\r\n" % k + line * (12000 + k) for k in range(2)]
        for m in big:
            self.srv.deliver(USER3, m)
        c = self.login(USER3)
        c.select("INBOX")
        r = c.ok("FETCH 1:2 (UID RFC822.SIZE BODY.PEEK[])")
        got = r.fetches()
        self.assertEqual(len(got), 2)
        for k, (seq, items) in enumerate(got):
            self.assertEqual(value(items["BODY[]"]), big[k])
            self.assertEqual(int(items["RFC822.SIZE"]), len(big[k]))
        r = c.ok("FETCH 2 (BODY.PEEK[]<100000.50> BINARY.PEEK[])")
        items = r.fetches()[0][1]
        self.assertEqual(value(items["BODY[]<100000>"]), big[1][100000:100050])
        self.assertEqual(value(items["BINARY[]"]), big[1])
        r = c.ok("FETCH 1 (RFC822)")
        items = r.fetches()[0][1]
        self.assertEqual(value(items["RFC822"]), big[0])
        self.assertIn("\\Seen", [str(f) for f in value(items["FLAGS"])])

    def test_fetch_of_a_thousand_messages_waits_for_a_slow_reader(self):
        c = self.login(USER3)
        c.ok("CREATE Thousand")
        new = os.path.join(self.srv.maildir(USER3), ".Thousand", "new")
        body = (b"y" * 78 + b"\r\n") * 400                   # 32 KB each, 32 MB in all
        for k in range(1000):
            msg = b"Subject: n%d\r\n\r\n" % k + body
            with open(os.path.join(new, f"170000{k:04d}.M1P1Q{k}.test,S={len(msg)}"), "wb") as f:
                f.write(msg)
        r = c.select("Thousand")
        self.assertEqual(r.lines("* 1000 EXISTS"), ["* 1000 EXISTS"])

        def rss_kb():
            with open(f"/proc/{self.srv.proc.pid}/status") as f:
                return int(next(l for l in f if l.startswith("VmRSS:")).split()[1])
        before = rss_kb()
        c.send(b"big FETCH 1:* (UID BODY.PEEK[])\r\n")
        time.sleep(1.0)                                  # the client reads nothing meanwhile
        grown = rss_kb() - before
        with open(f"/proc/{self.srv.proc.pid}/maps") as f:
            sanitized = "libasan" in f.read()      # ASan keeps freed memory in quarantine
        if not sanitized:
            self.assertLess(grown, 12 * 1024, f"RSS grew {grown} KiB while the reader stalled")
        r = c.wait_tagged("big")
        self.assertEqual(r.status, "OK")
        got = r.fetches()
        self.assertEqual(len(got), 1000)
        self.assertEqual([int(value(it["UID"])) for _s, it in got], list(range(1, 1001)))
        self.assertTrue(all(value(it["BODY[]"]).endswith(body) for _s, it in got))

    def test_imaplib_end_to_end_with_smtp_delivery(self):
        smtp_deliver(self.srv, USER2, make_message("one", body="First body.\n"))
        smtp_deliver(self.srv, USER2, make_message("two", body="Second body.\n"))
        m = imaplib.IMAP4("127.0.0.1", self.srv.port("imap"))
        try:
            m.login(USER2, "pw-bob")
            typ, data = m.list('""', "*")
            self.assertEqual(typ, "OK")
            self.assertIn(b'(\\HasNoChildren \\Sent) "/" Sent', data)
            typ, data = m.select("INBOX")
            self.assertEqual(data, [b"2"])
            typ, data = m.uid("FETCH", "1:*", "(FLAGS RFC822.SIZE BODY.PEEK[])")
            bodies = [d[1] for d in data if isinstance(d, tuple)]
            self.assertEqual(len(bodies), 2)
            self.assertTrue(bodies[1].endswith(b"\r\n\r\nSecond body.\r\n"))
            self.assertIn(b"Subject: two\r\n", bodies[1])
            typ, data = m.search(None, "UNSEEN")
            self.assertEqual(data, [b"1 2"])
            m.logout()
        finally:
            try:
                m.shutdown()
            except OSError:
                pass


class TestNamesAndQuota(ImapCase):
    server_kwargs = dict(users={USER: {"password": "pw-alice", "quota": 3000}, USER2: "pw-bob"},
                         listeners=("imap", "smtp"))

    def test_utf8_names_in_mutf7_for_rev1_and_utf8_for_rev2(self):
        c = self.login()
        c.ok('CREATE "Z&APw-rich/Caf&AOk-"')
        r = c.ok('LIST "" "Z*"')
        self.assertEqual(r.lines("* LIST"), ['* LIST (\\HasChildren) "/" Z&APw-rich',
                                            '* LIST (\\HasNoChildren) "/" Z&APw-rich/Caf&AOk-'])
        self.assertTrue(os.path.isdir(os.path.join(self.srv.maildir(USER), ".Z&APw-rich.Caf&AOk-")))
        c2 = self.login()
        c2.ok("ENABLE UTF8=ACCEPT")
        r = c2.ok('LIST "" "Z%"')
        self.assertEqual(r.lines("* LIST"), ['* LIST (\\HasChildren) "/" "Zürich"'])
        r = c2.ok('SELECT "Zürich/Café"')
        self.assertEqual(r.code_name, "READ-WRITE")

    def test_append_utf8_after_enable(self):
        c = self.login(USER2)
        msg = "Subject: Grüße\r\n\r\nZürich\r\n".encode()
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX UTF8 (~{{{len(msg)}+}}\r\n".encode() + msg + b")\r\n")
        self.assertEqual(c.wait_tagged(tag).status, "BAD")     # not without ENABLE
        c.ok("ENABLE UTF8=ACCEPT")
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX UTF8 (~{{{len(msg)}}}\r\n".encode())
        self.assertTrue(c.wait_continuation().startswith(b"+"))
        c.send(msg + b")\r\n")
        r = c.wait_tagged(tag)
        self.assertEqual((r.status, r.code_name), ("OK", "APPENDUID"))
        uid = r.code.split()[2]
        c.select("INBOX")
        r = c.ok(f"UID FETCH {uid} (BODY.PEEK[])")
        self.assertEqual(value(r.fetches()[0][1]["BODY[]"]), msg)

    def test_list_subscribed_recursivematch_gives_childinfo(self):
        c = self.login(USER2)
        c.ok("CREATE Par/Kid")
        c.ok("SUBSCRIBE Par/Kid")
        r = c.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "Par"')
        self.assertEqual(r.lines("* LIST"), ['* LIST (\\HasChildren) "/" Par ("CHILDINFO" ("SUBSCRIBED"))'])
        r = c.ok('LIST (SUBSCRIBED) "" "Par*"')
        self.assertEqual(r.lines("* LIST"), ['* LIST (\\HasNoChildren \\Subscribed) "/" Par/Kid'])
        self.assertEqual(c.cmd('LIST (RECURSIVEMATCH) "" "*"').status, "BAD")

    def test_quota_root_and_overquota_append(self):
        c = self.login()
        r = c.ok("GETQUOTAROOT INBOX")
        self.assertEqual(r.lines("* QUOTAROOT"), ['* QUOTAROOT INBOX ""'])
        self.assertEqual(r.lines("* QUOTA "), ['* QUOTA "" (STORAGE 0 2)'])
        c.ok("APPEND INBOX {}", b"Subject: a\r\n\r\n" + b"a" * 1500 + b"\r\n")
        r = c.cmd("APPEND INBOX {}", b"Subject: b\r\n\r\n" + b"b" * 1500 + b"\r\n")
        self.assertEqual((r.status, r.code_name), ("NO", "OVERQUOTA"))
        r = c.ok('GETQUOTA ""')
        self.assertEqual(r.lines("* QUOTA"), ['* QUOTA "" (STORAGE 2 2)'])


class TestTimeoutsAndShutdown(ServerTestCase):
    server_kwargs = dict(users={USER: "pw-alice"}, listeners=("imap",),
                         config={"imap": {"login_timeout": "5s"}})

    def conn(self):
        c = ImapConn.connect("127.0.0.1", self.srv.port("imap"))
        self._conns.append(c)
        return c

    def test_1_login_timeout_says_bye(self):
        c = self.conn()
        t0 = time.monotonic()
        data = c.read_until_close(limit=15)
        self.assertIn(b"* BYE Autologout", data)
        self.assertGreaterEqual(time.monotonic() - t0, 4.0)

    def test_2_sigterm_says_bye_to_an_idling_client_and_restarts_with_same_uids(self):
        c = self.conn()
        c.login(USER, "pw-alice")
        c.ok("APPEND INBOX {}", b"Subject: keep\r\n\r\nkeep\r\n")
        r = c.select("INBOX")
        uidvalidity = [l for l in r.lines("* OK [UIDVALIDITY")][0]
        c.idle_start()
        self.assertEqual(self.srv.restart(), self.srv)
        self.assertIn(b"* BYE Server shutting down.", c.read_until_close())
        c = self.conn()
        c.login(USER, "pw-alice")
        r = c.select("INBOX")
        self.assertEqual([l for l in r.lines("* OK [UIDVALIDITY")][0], uidvalidity)
        r = c.ok("UID FETCH 1:* (UID)")
        self.assertEqual([int(value(it["UID"])) for _s, it in r.fetches()], [1])


class TestBadInput(ImapCase):
    def test_unterminated_quoted_string(self):
        c = self.login()
        r = c.cmd('SELECT "INBOX')
        self.assertEqual(r.status, "BAD")
        self.assert_usable(c)

    def test_literal_4294967296_is_toobig(self):
        c = self.login()
        for cmd in ("LOGIN {4294967296}", "APPEND INBOX {4294967296}", "SELECT {99999999999999999999}"):
            tag = c.next_tag()
            c.send(f"{tag} {cmd}\r\n")
            r = c.wait_tagged(tag)
            self.assertIn(r.status, ("NO", "BAD"), cmd)
            if "APPEND" in cmd or "LOGIN" in cmd:
                self.assertEqual((r.status, r.code_name), ("NO", "TOOBIG"), cmd)
        self.assert_usable(c)

    def test_literal_then_disconnect(self):
        c = self.conn()
        c.send(b"a LOGIN {10}\r\n")
        self.assertTrue(c.wait_continuation().startswith(b"+"))
        since = self.srv.log_size()
        c.send(b"abc")
        c.close()
        self.srv.wait_log("imap.session", since=since)
        self.srv.assert_alive()

    def test_append_literal_then_disconnect(self):
        c = self.login()
        c.send(b"a APPEND INBOX {2000}\r\n")
        self.assertTrue(c.wait_continuation().startswith(b"+"))
        since = self.srv.log_size()
        c.send(b"Subject: half\r\n\r\n")
        c.close()
        self.srv.wait_log("imap.session", since=since, user=USER)
        self.assertEqual(self.srv.tmp_files(), [])
        tmp = os.path.join(self.srv.data_dir, "tmp")
        self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [])

    def test_ten_thousand_nested_parentheses(self):
        c = self.login()
        c.select("INBOX")
        r = c.cmd("FETCH 1 " + "(" * 10000 + ")" * 10000)
        self.assertEqual(r.status, "BAD")
        self.assert_usable(c)

    def test_sequence_set_on_empty_mailbox(self):
        c = self.login()
        c.ok("CREATE Empty")
        c.select("Empty")
        r = c.cmd("FETCH 1:4294967295,*:1 (FLAGS)")
        self.assertEqual(r.status, "BAD")
        r = c.cmd("UID FETCH 1:4294967295,*:1 (FLAGS)")
        self.assertEqual((r.status, r.untagged), ("OK", []))
        r = c.cmd("FETCH 0 FLAGS")
        self.assertEqual(r.status, "BAD")
        self.assert_usable(c)

    def test_deep_section_on_single_part_message(self):
        c = self.login()
        c.ok("CREATE Deep")
        c.ok("APPEND Deep {}", make_message("single"))
        c.select("Deep")
        r = c.cmd("FETCH 1 (BODY.PEEK[1.2.3.4.5.6.7.8.9.1.1])")
        self.assertEqual(r.status, "OK")
        self.assertEqual(r.lines("* 1 FETCH"), ["* 1 FETCH (BODY[1.2.3.4.5.6.7.8.9.1.1] NIL)"])

    def test_mailbox_names_escaping_the_maildir_are_cannot(self):
        c = self.login()
        for name in ("../../etc", "INBOX/../../x", "&AGE-", "a\x7fb", "/abs", "x/./y"):
            r = c.cmd(f"SELECT {quote(name)}")
            self.assertEqual((r.status, r.code_name), ("NO", "CANNOT"), name)
            r = c.cmd(f"CREATE {quote(name)}")
            self.assertEqual((r.status, r.code_name), ("NO", "CANNOT"), name)
        r = c.cmd("SELECT NoSuchBox")
        self.assertEqual((r.status, r.code_name), ("NO", "NONEXISTENT"))
        mail = os.path.join(self.srv.data_dir, "mail")
        for root, dirs, files in os.walk(self.srv.data_dir):
            self.assertFalse(any(d in ("etc", "x") for d in dirs), (root, dirs))
        self.assertTrue(os.path.isdir(mail))

    def test_append_larger_than_appendlimit(self):
        c = self.login()
        big = b"Subject: big\r\n\r\n" + b"x" * 5000 + b"\r\n"
        # synchronizing: refused before the "+", nothing is sent
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{{len(big)}}}\r\n")
        r = c.wait_continuation()
        self.assertTrue(r.startswith(tag.encode() + b" NO [TOOBIG]"), r)
        # LITERAL+: read and dropped, then NO [TOOBIG]; the session goes on
        r = c.cmd("APPEND INBOX {}", big, sync=False)
        self.assertEqual((r.status, r.code_name), ("NO", "TOOBIG"))
        self.assert_usable(c)
        self.assertEqual(self.srv.tmp_files(), [])
        tmp = os.path.join(self.srv.data_dir, "tmp")
        self.assertEqual(os.listdir(tmp) if os.path.isdir(tmp) else [], [])
        # far past the limit, LITERAL+ is not read through: BAD and close
        c.send(b"huge APPEND INBOX {4294967296+}\r\n")
        data = c.read_until_close()
        self.assertIn(b"huge BAD [TOOBIG]", data)

    def test_append_broken_after_its_literal_then_a_good_one(self):
        c = self.login()
        c.ok("CREATE Again")
        c.send(b"a1 APPEND Again {16+}\r\nSubject: x\r\n\r\nx (\r\n")
        r = c.wait_tagged("a1")
        self.assertEqual(r.status, "BAD")
        r = c.ok("APPEND Again {}", b"Subject: y\r\n\r\ny\r\n")
        self.assertRegex(r.code, r"^APPENDUID \d+ 1$")
        r = c.ok("STATUS Again (MESSAGES)")
        self.assertEqual(r.lines("* STATUS"), ["* STATUS Again (MESSAGES 1)"])

    def test_append_with_bare_lf_is_stored_with_crlf(self):
        c = self.login()
        c.ok("CREATE Lf")
        msg = b"Subject: lf\nX-A: 1\n\nline one\nline two\n"
        r = c.ok("APPEND Lf (\\Seen) \"05-Jan-2024 10:00:00 +0100\" {}", msg)
        self.assertRegex(r.code, r"^APPENDUID \d+ 1$")
        c.select("Lf")
        r = c.ok("FETCH 1 (FLAGS INTERNALDATE BODY.PEEK[])")
        self.assertEqual(r.untagged[0].decode(),
                         '* 1 FETCH (INTERNALDATE "05-Jan-2024 09:00:00 +0000" BODY[] {43}\r\n'
                         "Subject: lf\r\nX-A: 1\r\n\r\nline one\r\nline two\r\n FLAGS (\\Seen \\Recent))")

    def test_hundred_sessions_of_one_user(self):
        conns, refused = [], 0
        try:
            for _ in range(100):
                c = ImapConn.connect("127.0.0.1", self.srv.port("imap"))
                conns.append(c)
                r = c.cmd(f"LOGIN {quote(USER2)} \"pw-bob\"")
                if r.status != "OK":
                    self.assertEqual((r.status, r.code_name), ("NO", "LIMIT"))
                    refused += 1
                    self.assertEqual(c.cmd("NOOP").status, "OK")   # still connected
            self.assertEqual(refused, 100 - 8)
            conns[0].logout()
            c = conns[-1]
            r = c.cmd(f"LOGIN {quote(USER2)} \"pw-bob\"")
            self.assertEqual(r.status, "OK")
        finally:
            for c in conns:
                c.close()

    def test_line_too_long_is_bad_and_the_session_goes_on(self):
        c = self.login()
        r = c.cmd("SELECT " + "x" * (70 * 1024))
        self.assertEqual((r.status, r.code_name), ("BAD", "TOOBIG"))
        self.assert_usable(c)

    def test_nonsync_literal_too_big_outside_append_closes(self):
        c = self.login()
        c.send(b"a LOGIN {100000+}\r\n")
        data = c.read_until_close()
        self.assertIn(b"a BAD [TOOBIG]", data)

    def test_too_many_bad_commands_say_bye(self):
        c = self.login()
        for i in range(19):
            self.assertEqual(c.cmd("FROB").status, "BAD")
        c.send(b"z FROB\r\n")
        data = c.read_until_close()
        self.assertIn(b"z BAD", data)
        self.assertIn(b"* BYE Too many invalid commands.", data)


if __name__ == "__main__":
    unittest.main()
