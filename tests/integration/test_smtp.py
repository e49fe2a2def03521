"""SMTP server (issue 4, design §6) over real sockets on loopback: the three listener
roles (smtp 25, submission 587, submissions 465), full transactions with smtplib and
with a raw client, the exact Maildir files and queue entries they produce, ESMTP
extensions (PIPELINING, CHUNKING, SIZE, DSN), and every "bad input" of the issue.

Reply texts come from protocols/smtp_session.c, smtp_message.c and smtp_parse.c."""
import email.utils
import os
import re
import smtplib
import socket
import time
import unittest

from harness import (ConnectionClosed, Server, ServerTestCase, SmtpConn, b64, wait_until)

PW = "Smtp-Test-Pw-4c2e"
HOST = "test.example"
MAX_SIZE = 100000
MAX_RCPTS = 5

USERS = {f"u{i:03d}@example.org": PW for i in range(1, 201)}
USERS["alice@example.org"] = {"password": PW, "aliases": ["alice.alias@example.org", "postmaster@example.org"]}
USERS["bob@example.org"] = PW

GREETING = f"220 {HOST} ESMTP Postling"
DATE_RE = r"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}"
QID_RE = r"[0-9a-v]{16}"
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as (" + QID_RE + r")$")
BASE_KEYWORDS = ["PIPELINING", f"SIZE {MAX_SIZE}", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES",
                 "CHUNKING", "DSN"]

OK = "250 2.0.0 Ok"
MAIL_OK = "250 2.1.0 Ok"
RCPT_OK = "250 2.1.5 Ok"
GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"
NO_RCPTS = "554 5.5.1 No valid recipients"
TOO_BIG = "552 5.3.4 Message size exceeds fixed maximum message size"
BAD_RCPT = "501 5.1.3 Malformed recipient address"
BAD_SENDER = "501 5.1.7 Malformed sender address"
LINE_TOO_LONG = "500 5.5.2 Line too long"
UNRECOGNIZED = "500 5.5.2 Command unrecognized"
NEED_MAIL = "503 5.5.1 Need MAIL command first"
SMUGGLING = "554 5.6.0 Message contains bare CR or LF (not allowed in SMTP DATA)"
DATA_LINE_TOO_LONG = "500 5.5.2 Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)"
AUTH_OK = "235 2.7.0 Authentication successful"
AUTH_REQUIRED = "530 5.7.0 Authentication required"
ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"


def user_unknown(addr):
    return f"550 5.1.1 <{addr}>: Recipient address rejected: User unknown"


def relay_denied(addr):
    return f"550 5.7.1 <{addr}>: Relay access denied"


def qid_of(reply):
    m = QUEUED_RE.match(reply if isinstance(reply, str) else reply.decode())
    if not m:
        raise AssertionError(f"not a 250 queued reply: {reply!r}")
    return m.group(1)


def body(subject, text="Hello.\r\n", extra=()):
    """A CRLF message with a unique Message-ID."""
    hdr = [f"From: Sender <sender@example.net>", "To: someone@example.org", f"Subject: {subject}",
           f"Message-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@example.net>",
           "Date: Mon, 01 Jan 2024 00:00:00 +0000", *extra]
    return ("\r\n".join(hdr) + "\r\n\r\n" + text).encode()


def received_re(helo, with_, qid, ip="127.0.0.1", tls=None, auth=None, rcpt=None):
    """Regex (bytes) of our Received: header (smtp_message.c add_received)."""
    s = re.escape(f"Received: from {helo} ([{ip}])\r\n\tby {HOST} (Postling) with {with_} id {qid}")
    if tls:
        s += re.escape(f"\r\n\t(using {tls[0]} with cipher {tls[1]})")
    if auth:
        s += re.escape(f"\r\n\t(Authenticated sender: {auth})")
    if rcpt:
        s += re.escape(f"\r\n\tfor <{rcpt}>")
    s += ";\r\n\t(" + DATE_RE + ")\r\n"
    return s.encode()


def auth_line(keywords):
    """The AUTH keyword line of an EHLO reply, or None."""
    found = [k for k in keywords if k == "AUTH" or k.startswith("AUTH ")]
    assert len(found) <= 1, keywords
    return found[0] if found else None


def tls_info(sock):
    return (sock.version(), sock.cipher()[0])


class SmtpBase(ServerTestCase):
    """One server: smtp, submission, submissions, with loopback treated as remote
    (auth.loopback_is_local: false) so the TLS rules for AUTH apply to the tests."""
    server_kwargs = {
        "users": USERS,
        "listeners": ("smtp", "submission", "submissions"),
        "config": {"auth": {"loopback_is_local": False},
                   "smtp": {"max_message_size": MAX_SIZE, "max_recipients": MAX_RCPTS}},
    }
    maxDiff = None
    _next_user = 0
    _next_ip = 10

    @classmethod
    def fresh_user(cls):
        SmtpBase._next_user += 1
        u = f"u{SmtpBase._next_user:03d}@example.org"
        assert u in USERS, "out of test users: add more to USERS"
        return u

    @classmethod
    def fresh_ip(cls):
        SmtpBase._next_ip += 1
        return f"127.0.0.{SmtpBase._next_ip}"

    # -- helpers
    def ready(self, proto="smtp", helo="client.example", tls=False, login=None, **kw):
        """A session after EHLO (and STARTTLS + EHLO, and AUTH, when asked)."""
        c = self.smtp(proto, **kw)
        self.assertEqual(c.greeting, GREETING)
        c.ehlo(helo)
        if tls:
            c.starttls()
            c.ehlo(helo)
        if login:
            self.assertEqual(c.auth_plain(login, PW), AUTH_OK)
        return c

    def client(self, proto="smtp", helo="client.example", **kw):
        cls = smtplib.SMTP_SSL if proto == "submissions" else smtplib.SMTP
        extra = {"context": self.srv.ssl_context()} if proto == "submissions" else {}
        s = cls("127.0.0.1", self.srv.port(proto), local_hostname=helo, timeout=15, **extra, **kw)
        self.addCleanup(_quietly_close, s)
        return s

    @staticmethod
    def smtplib_login(s, user, password=PW, mech="PLAIN"):
        s.user, s.password = user, password
        fn = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login}[mech]
        code, resp = s.auth(mech, fn, initial_response_ok=(mech == "PLAIN"))
        return code, resp.decode()

    def files(self, user, n=1):
        """The n message files of user, read right away: a 250 comes only after the copies
        are in new/ (design §6), so there is nothing to wait for."""
        files = self.srv.message_files(user)
        self.assertEqual(len(files), n, f"{user}: {files}")
        out = []
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            self.assertEqual(os.path.basename(os.path.dirname(path)), "new", path)
            m = re.search(r",S=(\d+)$", path)
            self.assertIsNotNone(m, f"no ,S=<size> in {path}")
            self.assertEqual(int(m.group(1)), len(data), f"S= of {path}")
            out.append(data)
        self.assertEqual(self.srv.tmp_files(user), [], "file left in tmp/")
        return out

    def assert_crlf(self, data):
        self.assertIsNone(re.search(rb"(?<!\r)\n", data), "bare LF in stored message")
        self.assertIsNone(re.search(rb"\r(?!\n)", data), "bare CR in stored message")

    def check_stored(self, data, sender, acct, rx, content, added=None):
        """data == Return-Path + Delivered-To + Received (matching rx) + [added headers] + content.
        added: regex (bytes) for the headers a submission server inserts, or None.
        Returns the message as handed to the store (from Received: on)."""
        prefix = f"Return-Path: <{sender}>\r\nDelivered-To: {acct}\r\n".encode()
        self.assertTrue(data.startswith(prefix), f"stored message does not start with {prefix!r}:\n{data[:300]!r}")
        m = re.match(rx, data[len(prefix):])
        self.assertIsNotNone(m, f"Received: header does not match\n  want {rx!r}\n  have {data[len(prefix):len(prefix) + 400]!r}")
        when = email.utils.parsedate_to_datetime(m.group(1).decode()).timestamp()
        self.assertLess(abs(when - time.time()), 300, f"Received: date {m.group(1)!r} is not now")
        rest = data[len(prefix) + m.end():]
        if added is not None:
            ma = re.match(added, rest)
            self.assertIsNotNone(ma, f"added headers do not match {added!r}: {rest[:300]!r}")
            rest = rest[ma.end():]
        self.assertEqual(rest, content, "message content changed")
        self.assert_crlf(data)
        return data[len(prefix):]

    def assert_auth_offered(self, keywords, msg=None):
        line = auth_line(keywords)
        self.assertIsNotNone(line, msg or f"no AUTH in {keywords}")
        mechs = line.split()[1:]
        for m in ("PLAIN", "LOGIN"):
            self.assertIn(m, mechs, msg)
        self.assertEqual(len(mechs), len(set(mechs)), line)

    def nothing_stored(self, *users):
        for u in users:
            self.assertEqual(self.srv.message_files(u), [], f"something was delivered to {u}")
            self.assertEqual(self.srv.tmp_files(u), [], f"file left in tmp/ of {u}")

    def drop_queue_entry(self, qid):
        """The relay is another issue: tests remove what they queued (the .env first)."""
        for ext in (".env", ".msg"):
            try:
                os.unlink(os.path.join(self.srv.queue_dir, qid + ext))
            except FileNotFoundError:
                pass

    def queue_ids(self):
        return sorted(f[:-4] for f in self.srv.queue_files() if f.endswith(".env"))


def _quietly_close(s):
    try:
        s.close()
    except Exception:
        pass


# ===================================================================== greeting, EHLO, HELO

class Greeting(SmtpBase):
    def test_greeting_ehlo_keywords_on_port_25(self):
        c = self.smtp()
        self.assertEqual(c.greeting, GREETING)
        r = c.cmd("EHLO client.example")
        self.assertEqual(r.split("\n"), [f"250-{HOST} Hello client.example [127.0.0.1]"]
                         + [f"250-{k}" for k in BASE_KEYWORDS] + ["250-STARTTLS", "250 HELP"])

    def test_ehlo_after_starttls_offers_auth_not_starttls(self):
        c = self.ready()
        c.starttls()
        kw = c.ehlo()
        self.assert_auth_offered(kw)
        self.assertEqual(kw, BASE_KEYWORDS + [auth_line(kw), "HELP"])

    def test_submission_before_tls_offers_starttls_not_auth(self):
        c = self.ready("submission")
        self.assertEqual(c.ehlo_lines, BASE_KEYWORDS + ["STARTTLS", "HELP"])

    def test_submissions_is_tls_and_offers_auth(self):
        c = self.smtp("submissions")
        self.assertEqual(c.greeting, GREETING)
        kw = c.ehlo()
        self.assert_auth_offered(kw)
        self.assertEqual(kw, BASE_KEYWORDS + [auth_line(kw), "HELP"])

    def test_ehlo_after_auth_drops_auth(self):
        c = self.ready("submissions", login="alice@example.org")
        self.assertEqual(c.ehlo(), BASE_KEYWORDS + ["HELP"])

    def test_helo(self):
        c = self.smtp()
        self.assertEqual(c.cmd("HELO client.example"), f"250 {HOST}")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net> SIZE=10"), "555 5.5.4 MAIL parameters need EHLO")
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), MAIL_OK)

    def test_mail_before_ehlo(self):
        c = self.smtp()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), "503 5.5.1 Send EHLO/HELO first")

    def test_bad_ehlo_argument(self):
        c = self.smtp()
        self.assertEqual(c.cmd("EHLO"), "501 5.5.4 Syntax error in parameters or arguments")
        self.assertEqual(c.cmd("EHLO -bad-.example"), "501 5.5.4 Invalid domain name")
        self.assertEqual(c.cmd("EHLO [127.0.0.1]").split("\n")[0], f"250-{HOST} Hello [127.0.0.1] [127.0.0.1]")


# ===================================================================== simple commands

class SimpleCommands(SmtpBase):
    def test_noop_rset_help_vrfy_expn_quit(self):
        c = self.ready()
        self.assertEqual(c.cmd("NOOP"), OK)
        self.assertEqual(c.cmd("NOOP anything at all"), OK)
        self.assertEqual(c.cmd("HELP"), "214 2.0.0 Postling: see RFC 5321 "
                         "(EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH)")
        vrfy = "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery"
        self.assertEqual(c.cmd("VRFY alice@example.org"), vrfy)
        self.assertEqual(c.cmd("VRFY <nobody@example.org>"), vrfy, "VRFY must not reveal accounts")
        self.assertEqual(c.cmd("VRFY alice"), vrfy)
        self.assertEqual(c.cmd("EXPN staff"), "502 5.5.1 EXPN not available")
        self.assertEqual(c.cmd("RSET"), OK)
        self.assertEqual(c.quit(), f"221 2.0.0 {HOST} Bye")

    def test_rset_ends_the_transaction(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd(f"RCPT TO:<{self.fresh_user()}>"), RCPT_OK)
        self.assertEqual(c.cmd("RSET"), OK)
        self.assertEqual(c.cmd("DATA"), "503 5.5.1 Need RCPT command first")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("MAIL FROM:<a@example.net>"), "503 5.5.1 Nested MAIL command")

    def test_commands_are_case_insensitive(self):
        c = self.smtp()
        self.assertTrue(c.cmd("ehlo client.example").startswith("250-"))
        self.assertEqual(c.cmd("noop"), OK)
        u = self.fresh_user()
        self.assertEqual(c.cmd("mail from:<a@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd(f"rcpt to:<{u.upper()}>"), RCPT_OK)

    def test_data_and_starttls_take_no_argument(self):
        c = self.ready()
        self.assertEqual(c.cmd("STARTTLS now"), "501 5.5.4 Syntax error in parameters or arguments")
        self.assertEqual(c.cmd("QUIT now"), "501 5.5.4 Syntax error in parameters or arguments")


# ===================================================================== port 25 transactions

class Port25(SmtpBase):
    def test_smtplib_transaction_stored_exactly(self):
        u = self.fresh_user()
        s = self.client()
        s.ehlo()
        content = body("port25 plain", "First line.\r\n.leading dot\r\n..two dots\r\n.\r\nlast\r\n")
        self.assertEqual(s.mail("sender@example.net"), (250, b"2.1.0 Ok"))
        self.assertEqual(s.rcpt(u), (250, b"2.1.5 Ok"))
        code, resp = s.data(content)
        self.assertEqual(code, 250, resp)
        qid = qid_of(f"250 {resp.decode()}")
        self.assertEqual(s.quit(), (221, f"2.0.0 {HOST} Bye".encode()))
        [data] = self.files(u)
        self.check_stored(data, "sender@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)
        # port 25 without AUTH is not submission: no Message-ID/Date added (content checked whole above)
        acc = self.srv.wait_log("smtp.accept", msgid=qid)[-1]
        self.assertEqual((acc["from"], acc["rcpts"], acc["size"], acc["tls"], acc["result"]),
                         ("sender@example.net", u, len(content), False, "queued"))

    def test_message_without_message_id_is_left_alone_on_port_25(self):
        u = self.fresh_user()
        c = self.ready()
        content = b"Subject: no id\r\n\r\nno Message-ID, no Date\r\n"
        rs = c.transaction("sender@example.net", [u], content)
        self.assertEqual(rs[:3], [MAIL_OK, RCPT_OK, GO_AHEAD])
        qid = qid_of(rs[3])
        [data] = self.files(u)
        self.check_stored(data, "sender@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)

    def test_starttls_transaction_is_esmtps_with_tls_line(self):
        u = self.fresh_user()
        s = self.client()
        s.ehlo()
        s.starttls(context=self.srv.ssl_context())
        s.ehlo()
        content = body("port25 tls")
        s.mail("sender@example.net")
        s.rcpt(u)
        code, resp = s.data(content)
        qid = qid_of(f"{code} {resp.decode()}")
        info = tls_info(s.sock)
        s.quit()
        [data] = self.files(u)
        self.check_stored(data, "sender@example.net", u,
                          received_re("client.example", "ESMTPS", qid, tls=info, rcpt=u), content)
        self.assertTrue(self.srv.wait_log("smtp.accept", msgid=qid)[-1]["tls"])

    def test_helo_transaction_is_smtp(self):
        u = self.fresh_user()
        c = self.smtp()
        self.assertEqual(c.cmd("HELO old.example"), f"250 {HOST}")
        content = body("helo")
        rs = c.transaction("sender@example.net", [u], content)
        qid = qid_of(rs[-1])
        [data] = self.files(u)
        self.check_stored(data, "sender@example.net", u, received_re("old.example", "SMTP", qid, rcpt=u), content)

    def test_two_local_recipients_get_one_copy_each_without_for_clause(self):
        u1, u2 = self.fresh_user(), self.fresh_user()
        c = self.ready()
        content = body("two rcpts")
        rs = c.transaction("sender@example.net", [u1, u2], content)
        qid = qid_of(rs[-1])
        [d1] = self.files(u1)
        [d2] = self.files(u2)
        rx = received_re("client.example", "ESMTP", qid)
        t1 = self.check_stored(d1, "sender@example.net", u1, rx, content)
        t2 = self.check_stored(d2, "sender@example.net", u2, rx, content)
        self.assertEqual(t1, t2)
        self.assertEqual(self.srv.queue_files(), [], "local mail went to the relay queue")

    def test_parallel_first_deliveries_to_new_mailboxes(self):
        """Several sessions finish DATA at the same moment for users whose Maildir does
        not exist yet: every one must get 250 and its copy (no 451 from a half-made Maildir)."""
        for _round in range(10):
            users = [self.fresh_user() for _ in range(4)]
            nconn = 8
            conns = []
            for i in range(nconn):
                c = self.ready()
                c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                rcpts = [users[i % len(users)], users[(i + 1) % len(users)]]
                c.send(f"MAIL FROM:<par{i}@example.net>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts)
                       + "DATA\r\n")
                self.assertEqual(c.replies(4), [MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD])
                conns.append(c)
            content = body("parallel first delivery")
            for c in conns:
                c.send(content + b".\r\n")
            replies = [c.reply() for c in conns]
            for c in conns:
                c.close()
            self.assertEqual([r for r in replies if not QUEUED_RE.match(r)], [], replies)
            for u in users:
                self.assertEqual(len(self.files(u, 4)), 4)

    def test_null_sender(self):
        u = self.fresh_user()
        c = self.ready()
        content = body("bounce")
        rs = c.transaction("", [u], content)
        qid = qid_of(rs[-1])
        [data] = self.files(u)
        self.check_stored(data, "", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)

    def test_several_transactions_in_one_session(self):
        u = self.fresh_user()
        c = self.ready()
        q1 = qid_of(c.transaction("a@example.net", [u], body("one"))[-1])
        q2 = qid_of(c.transaction("b@example.net", [u], body("two"))[-1])
        self.assertNotEqual(q1, q2)
        files = self.files(u, 2)
        self.assertEqual(sorted(re.search(rb"Return-Path: <(.*?)>", d).group(1) for d in files),
                         [b"a@example.net", b"b@example.net"])

    def test_alias_tag_and_postmaster_go_to_the_account(self):
        c = self.ready()
        content = body("aliases")
        rs = c.transaction("sender@example.net", ["alice.alias@example.org"], content)
        q1 = qid_of(rs[-1])
        rs = c.transaction("sender@example.net", ["alice+lists@example.org"], content)
        q2 = qid_of(rs[-1])
        rs = c.transaction("sender@example.net", ["alice.alias+x@example.org"], content)
        q3 = qid_of(rs[-1])
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<Postmaster>"), RCPT_OK)
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        c.send(content + b".\r\n")
        q4 = qid_of(c.reply())
        files = self.files("alice@example.org", 4)
        by_qid = {}
        for d in files:
            by_qid[re.search(rb" id (" + QID_RE.encode() + rb")", d).group(1).decode()] = d
        for qid, rcpt in ((q1, "alice.alias@example.org"), (q2, "alice+lists@example.org"),
                          (q3, "alice.alias+x@example.org"), (q4, "postmaster@example.org")):
            self.check_stored(by_qid[qid], "sender@example.net", "alice@example.org",
                              received_re("client.example", "ESMTP", qid, rcpt=rcpt), content)

    def test_alias_and_address_in_one_message_is_one_copy(self):
        c = self.ready()
        before = len(self.srv.message_files("bob@example.org"))
        rs = c.transaction("sender@example.net", ["bob@example.org", "bob+tag@example.org", "BOB@example.org"],
                           body("dedupe"))
        self.assertEqual(rs[:4], [MAIL_OK, RCPT_OK, RCPT_OK, RCPT_OK])
        qid_of(rs[-1])
        self.assertEqual(len(self.srv.message_files("bob@example.org")), before + 1)

    def test_unknown_local_user(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<nobody@example.org>"), user_unknown("nobody@example.org"))
        self.assertEqual(c.cmd("RCPT TO:<nobody+tag@example.org>"), user_unknown("nobody+tag@example.org"))
        self.assertEqual(c.cmd("DATA"), NO_RCPTS)
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "mail", "example.org", "nobody")))

    def test_relay_denied_for_remote_domains(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.net>"), MAIL_OK)
        for addr in ("friend@remote.example", "x@example.org.remote.example", "x@sub.example.org",
                     "x@[127.0.0.1]", "x@[IPv6:::1]"):
            with self.subTest(addr=addr):
                self.assertEqual(c.cmd(f"RCPT TO:<{addr}>"), relay_denied(addr))
        self.assertEqual(c.cmd("DATA"), NO_RCPTS)
        self.assertEqual(self.srv.queue_files(), [])

    def test_relay_denied_also_after_starttls_without_auth(self):
        c = self.ready(tls=True)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<friend@remote.example>"), relay_denied("friend@remote.example"))

    def test_rejected_recipient_does_not_spoil_the_others(self):
        u = self.fresh_user()
        c = self.ready()
        rs = c.transaction("sender@example.net", ["nobody@example.org", u, "x@remote.example"], body("mixed"))
        self.assertEqual(rs[:5], [MAIL_OK, user_unknown("nobody@example.org"), RCPT_OK,
                                  relay_denied("x@remote.example"), GO_AHEAD])
        qid = qid_of(rs[5])
        self.files(u)
        self.assertEqual(self.srv.wait_log("smtp.accept", msgid=qid)[-1]["rcpts"], u)
        self.assertEqual(self.srv.queue_files(), [])

    def test_auth_on_port_25_before_tls_is_refused(self):
        c = self.ready(source=self.fresh_ip())
        self.assertNotIn("AUTH", " ".join(c.ehlo_lines))
        self.assertEqual(c.auth_plain("alice@example.org", PW), ENCRYPTION_REQUIRED)
        self.assertEqual(c.cmd("AUTH LOGIN"), ENCRYPTION_REQUIRED)
        self.assertEqual(c.cmd("MAIL FROM:<sender@example.net>"), MAIL_OK, "session unusable after refusal")

    def test_auth_on_port_25_after_tls_allows_relaying(self):
        c = self.ready(tls=True, login="alice@example.org")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<friend@remote.example>"), RCPT_OK)
        self.assertEqual(c.cmd("RSET"), OK)


# ===================================================================== submission (587) and submissions (465)

class Submission(SmtpBase):
    def test_mail_before_auth_is_refused(self):
        c = self.ready("submission")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)
        c.starttls()
        c.ehlo()
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)

    def test_mail_before_auth_on_submissions(self):
        c = self.ready("submissions")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)

    def test_auth_before_starttls_not_offered_and_refused(self):
        c = self.ready("submission", source=self.fresh_ip())
        self.assertNotIn("AUTH", " ".join(c.ehlo_lines))
        self.assertEqual(c.auth_plain("alice@example.org", PW), ENCRYPTION_REQUIRED)
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)
        c.starttls()
        c.ehlo()
        self.assert_auth_offered(c.ehlo_lines)
        self.assertEqual(c.auth_plain("alice@example.org", PW), AUTH_OK)
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), MAIL_OK)

    def test_auth_failure_and_second_auth(self):
        c = self.ready("submissions", source=self.fresh_ip())
        self.assertEqual(c.auth_plain("alice@example.org", "wrong"), "535 5.7.8 Authentication credentials invalid")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)
        self.assertEqual(c.cmd("AUTH PLAIN"), "334 ")
        self.assertEqual(c.cmd("*"), "501 5.0.0 Authentication cancelled")
        self.assertEqual(c.cmd("AUTH NOSUCH"), "504 5.5.4 Unrecognized authentication type")
        self.assertEqual(c.auth_plain("alice@example.org", PW), AUTH_OK)
        self.assertEqual(c.auth_plain("alice@example.org", PW), "503 5.5.1 Already authenticated")

    def test_starttls_plus_auth_transaction_smtplib(self):
        u = self.fresh_user()
        s = self.client("submission")
        s.ehlo()
        self.assertFalse(s.has_extn("auth"))
        s.starttls(context=self.srv.ssl_context())
        s.ehlo()
        self.assertTrue(s.has_extn("auth"))
        self.assertEqual(self.smtplib_login(s, "alice@example.org", mech="LOGIN"), (235, "2.7.0 Authentication successful"))
        content = body("submission 587")
        self.assertEqual(s.mail("alice@example.org"), (250, b"2.1.0 Ok"))
        self.assertEqual(s.rcpt(u), (250, b"2.1.5 Ok"))
        code, resp = s.data(content)
        qid = qid_of(f"{code} {resp.decode()}")
        info = tls_info(s.sock)
        s.quit()
        [data] = self.files(u)
        # Message-ID and Date present: kept as they are, nothing added
        self.check_stored(data, "alice@example.org", u,
                          received_re("client.example", "ESMTPSA", qid, tls=info, auth="alice@example.org", rcpt=u),
                          content)
        acc = self.srv.wait_log("smtp.accept", msgid=qid)[-1]
        self.assertEqual((acc.get("user"), acc["tls"], acc["from"]), ("alice@example.org", True, "alice@example.org"))

    def test_submissions_implicit_tls_smtplib(self):
        u = self.fresh_user()
        s = self.client("submissions")
        s.ehlo()
        self.assertEqual(self.smtplib_login(s, "alice@example.org"), (235, "2.7.0 Authentication successful"))
        content = body("submissions 465", "dots\r\n.\r\n..\r\n")
        s.mail("alice@example.org")
        s.rcpt(u)
        code, resp = s.data(content)
        qid = qid_of(f"{code} {resp.decode()}")
        info = tls_info(s.sock)
        s.quit()
        [data] = self.files(u)
        self.check_stored(data, "alice@example.org", u,
                          received_re("client.example", "ESMTPSA", qid, tls=info, auth="alice@example.org", rcpt=u),
                          content)

    def test_message_id_and_date_added_when_missing(self):
        u = self.fresh_user()
        c = self.ready("submissions", login="alice@example.org")
        content = b"From: alice@example.org\r\nSubject: bare\r\n\r\nno id\r\n"
        rs = c.transaction("alice@example.org", [u], content)
        qid = qid_of(rs[-1])
        [data] = self.files(u)
        added = (rb"Date: (" + DATE_RE.encode() + rb")\r\nMessage-ID: <" + qid.encode()
                 + rb"\.[0-9a-f]+@" + re.escape(HOST).encode() + rb">\r\n")
        info = tls_info(c.sock)
        self.check_stored(data, "alice@example.org", u,
                          received_re("client.example", "ESMTPSA", qid, tls=info, auth="alice@example.org", rcpt=u),
                          content, added=added)

    def test_only_missing_header_is_added(self):
        u = self.fresh_user()
        c = self.ready("submissions", login="alice@example.org")
        info = tls_info(c.sock)
        content = b"Message-Id: <mine@example.org>\r\nSubject: has id\r\n\r\nbody\r\n"
        qid = qid_of(c.transaction("alice@example.org", [u], content)[-1])
        content2 = b"DATE: Tue, 02 Jan 2024 10:00:00 +0100\r\nSubject: has date\r\n\r\nbody\r\n"
        qid2 = qid_of(c.transaction("alice@example.org", [u], content2)[-1])
        by_qid = {re.search(rb" id (" + QID_RE.encode() + rb")", d).group(1).decode(): d for d in self.files(u, 2)}
        rx = lambda q: received_re("client.example", "ESMTPSA", q, tls=info, auth="alice@example.org", rcpt=u)
        self.check_stored(by_qid[qid], "alice@example.org", u, rx(qid), content,
                          added=rb"Date: " + DATE_RE.encode() + rb"\r\n")
        self.check_stored(by_qid[qid2], "alice@example.org", u, rx(qid2), content2,
                          added=rb"Message-ID: <" + qid2.encode() + rb"\.[0-9a-f]+@test\.example>\r\n")

    def test_header_detection_stops_at_the_body(self):
        u = self.fresh_user()
        c = self.ready("submissions", login="alice@example.org")
        content = b"Subject: id in body\r\n\r\nMessage-ID: <not-a-header@example.org>\r\nDate: no\r\n"
        qid = qid_of(c.transaction("alice@example.org", [u], content)[-1])
        [data] = self.files(u)
        self.check_stored(data, "alice@example.org", u,
                          received_re("client.example", "ESMTPSA", qid, tls=tls_info(c.sock),
                                      auth="alice@example.org", rcpt=u),
                          content, added=rb"Date: " + DATE_RE.encode() + rb"\r\nMessage-ID: <[^>\r\n]+>\r\n")

    def test_sender_must_belong_to_the_account(self):
        c = self.ready("submissions", login="alice@example.org")
        for sender in ("bob@example.org", "alice@remote.example", "u001@example.org", "nobody@example.org"):
            with self.subTest(sender=sender):
                self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"),
                                 f"553 5.7.1 Sender address <{sender}> not owned by user alice@example.org")
        for sender in ("alice@example.org", "ALICE@Example.ORG", "alice.alias@example.org",
                       "postmaster@example.org", "alice+tag@example.org", ""):
            with self.subTest(sender=sender):
                self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"), MAIL_OK)
                self.assertEqual(c.cmd("RSET"), OK)

    def test_remote_recipient_is_queued_with_full_envelope(self):
        u = self.fresh_user()
        c = self.ready("submission", tls=True, login="alice@example.org")
        info = tls_info(c.sock)
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org> RET=FULL ENVID=env+2B42 BODY=8BITMIME SIZE=500"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<friend@remote.example> NOTIFY=SUCCESS,FAILURE "
                               "ORCPT=rfc822;friend@remote.example"), RCPT_OK)
        self.assertEqual(c.cmd(f"RCPT TO:<{u}> NOTIFY=NEVER"), RCPT_OK)
        self.assertEqual(c.cmd("RCPT TO:<Other@Remote2.example> NOTIFY=DELAY"), RCPT_OK)
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        content = b"Subject: to the world\r\n\r\n8bit \xc3\xa9t\xc3\xa9\r\n.\r\n"
        c.send(re.sub(rb"(?m)^\.", b"..", content) + b".\r\n")
        qid = qid_of(c.reply())
        self.addCleanup(self.drop_queue_entry, qid)
        self.assertEqual(self.queue_ids(), [qid])
        self.assertEqual(self.srv.queue_files(), [qid + ".env", qid + ".msg"], "stray files in the queue dir")
        env, msg = self.srv.queue_entry(qid)
        # the operator's view of the same entry
        p = self.srv.run_cli("queue", "-c", self.srv.config_path, "list")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertRegex(p.stdout.decode(), rf"(?m)^{qid}  \S+ \S+  <alice@example.org>  2/2 recipients open, "
                         r"0 attempts\n1 queued\n\Z")
        p = self.srv.run_cli("queue", "-c", self.srv.config_path, "show", qid)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("\n  <friend@remote.example> pending, 0 attempts\n"
                      "  <Other@remote2.example> pending, 0 attempts\n", p.stdout.decode())
        p = self.srv.run_cli("queue", "-c", self.srv.config_path, "show", "0000000000000000")
        self.assertEqual((p.returncode, p.stderr.decode()), (1, "postling queue: no queue entry 0000000000000000\n"))
        t = re.search(r"^created (\d+)$", env, re.M)
        self.assertIsNotNone(t, env)
        t = t.group(1)
        self.assertLess(abs(int(t) - time.time()), 300)
        self.assertEqual(env, "POSTLING-QUEUE 1\n"
                              f"id {qid}\n"
                              "sender alice@example.org\n"
                              "ret FULL\n"
                              "envid env+42\n"
                              "smtputf8 0\n"
                              "body 8BITMIME\n"
                              "auth-user alice@example.org\n"
                              "client-ip 127.0.0.1\n"
                              "helo client.example\n"
                              f"created {t}\n"
                              "attempts 0\n"
                              f"next-attempt {t}\n"
                              "last-attempt 0\n"
                              "warned 0\n"
                              f"rcpt friend@remote.example rfc822;friend@remote.example SUCCESS,FAILURE pending 0 {t} - -\n"
                              f"rcpt Other@remote2.example - DELAY pending 0 {t} - -\n"
                              "end 2\n")
        [data] = self.files(u)
        added = rb"Date: " + DATE_RE.encode() + rb"\r\nMessage-ID: <" + qid.encode() + rb"\.[0-9a-f]+@test\.example>\r\n"
        handed = self.check_stored(data, "alice@example.org", u,
                                   received_re("client.example", "ESMTPSA", qid, tls=info, auth="alice@example.org"),
                                   content, added=added)
        self.assertEqual(msg, handed, "queued .msg differs from the delivered copy (minus Return-Path/Delivered-To)")

    def test_plain_authzid_of_another_user_is_refused(self):
        c = self.ready("submissions", source=self.fresh_ip())
        r = c.cmd("AUTH PLAIN " + b64("bob@example.org\0alice@example.org\0" + PW))
        self.assertEqual(r, "535 5.7.8 Authentication credentials invalid")
        self.assertEqual(c.cmd("MAIL FROM:<bob@example.org>"), AUTH_REQUIRED)
        self.assertEqual(c.cmd("AUTH PLAIN " + b64("alice@example.org\0alice@example.org\0" + PW)), AUTH_OK)
        self.assertEqual(c.cmd("MAIL FROM:<bob@example.org>"),
                         "553 5.7.1 Sender address <bob@example.org> not owned by user alice@example.org")

    def test_sasl_line_too_long(self):
        c = self.ready("submissions", source=self.fresh_ip())
        self.assertEqual(c.cmd("AUTH LOGIN"), "334 VXNlciBOYW1l")
        self.assertEqual(c.cmd("x" * 600), "500 5.5.6 Authentication exchange line is too long")
        self.assertEqual(c.cmd("NOOP"), OK)
        self.assertEqual(c.auth_plain("alice@example.org", PW), AUTH_OK)

    def test_queued_addresses_are_escaped_in_the_envelope(self):
        c = self.ready("submissions", login="alice@example.org")
        self.assertEqual(c.cmd('MAIL FROM:<"alice"@example.org>'), MAIL_OK)
        self.assertEqual(c.cmd('RCPT TO:<"john doe"@remote.example>'), RCPT_OK)
        self.assertEqual(c.cmd('RCPT TO:<"50%\\off"@remote.example> ORCPT=rfc822;a+2Bb@remote.example'), RCPT_OK)
        self.assertEqual(c.cmd('RCPT TO:<"a\\"b"@remote.example>'), RCPT_OK)
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        c.send(body("escaping") + b".\r\n")
        qid = qid_of(c.reply())
        self.addCleanup(self.drop_queue_entry, qid)
        env, _msg = self.srv.queue_entry(qid)
        rcpts = [l for l in env.split("\n") if l.startswith("rcpt ")]
        self.assertEqual([r.split(" ")[1:4] for r in rcpts],
                         [['"john%20doe"@remote.example', "-", "-"],
                          ["50%25off@remote.example", "rfc822;a+b@remote.example", "-"],   # "50%\off" is 50%off
                          ['"a\\"b"@remote.example', "-", "-"]], env)
        self.assertTrue(all(len(r.split(" ")) == 9 for r in rcpts), rcpts)
        self.assertIn("\nsender alice@example.org\n", env)

    def test_null_sender_to_remote_is_queued(self):
        c = self.ready("submissions", login="alice@example.org")
        qid = qid_of(c.transaction("", ["x@remote.example"], b"")[-1])
        self.addCleanup(self.drop_queue_entry, qid)
        env, msg = self.srv.queue_entry(qid)
        self.assertIn("\nsender -\n", env)
        # an empty message gets our Received: plus the Date: and Message-ID: of a submission server
        self.assertRegex(msg, rb"\r\nDate: " + DATE_RE.encode() + rb"\r\nMessage-ID: <" + qid.encode()
                         + rb"\.[0-9a-f]+@test\.example>\r\n$")

    def test_remote_only_message_is_queued_not_delivered(self):
        c = self.ready("submissions", login="alice@example.org")
        content = body("remote only")
        rs = c.transaction("alice.alias@example.org", ["a@remote.example", "b@remote.example"], content)
        qid = qid_of(rs[-1])
        self.addCleanup(self.drop_queue_entry, qid)
        env, msg = self.srv.queue_entry(qid)
        self.assertIn("\nsender alice.alias@example.org\n", env)
        self.assertEqual(re.findall(r"^rcpt (\S+) - - pending 0 \d+ - -$", env, re.M),
                         ["a@remote.example", "b@remote.example"])
        self.assertTrue(env.endswith("\nend 2\n"), env)
        self.assertTrue(msg.endswith(b"\r\n" + content), msg[-200:])
        self.assertRegex(msg, received_re("client.example", "ESMTPSA", qid, tls=tls_info(c.sock),
                                          auth="alice@example.org"))
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "mail", "remote.example")))


# ===================================================================== PIPELINING

class Pipelining(SmtpBase):
    def test_mail_rcpt_rcpt_data_in_one_write(self):
        u1, u2 = self.fresh_user(), self.fresh_user()
        c = self.ready()
        c.send(f"MAIL FROM:<p@example.net>\r\nRCPT TO:<{u1}>\r\nRCPT TO:<{u2}>\r\nDATA\r\n")
        self.assertEqual(c.replies(4), [MAIL_OK, RCPT_OK, RCPT_OK, GO_AHEAD])
        content = body("pipelined")
        c.send(content + b".\r\nNOOP\r\nQUIT\r\n")
        qid = qid_of(c.reply())
        self.assertEqual(c.reply(), OK)
        self.assertEqual(c.reply(), f"221 2.0.0 {HOST} Bye")
        self.assertEqual(c.read_until_close(), b"")
        rx = received_re("client.example", "ESMTP", qid)
        self.check_stored(self.files(u1)[0], "p@example.net", u1, rx, content)
        self.check_stored(self.files(u2)[0], "p@example.net", u2, rx, content)

    def test_errors_answered_in_order(self):
        u = self.fresh_user()
        c = self.ready()
        c.send(f"MAIL FROM:<p@example.net>\r\nRCPT TO:<nobody@example.org>\r\nRCPT TO:<{u}>\r\n"
               "RCPT TO:<x@remote.example>\r\nRCPT TO:bad\r\nDATA\r\n")
        self.assertEqual(c.replies(6), [MAIL_OK, user_unknown("nobody@example.org"), RCPT_OK,
                                        relay_denied("x@remote.example"), BAD_RCPT, GO_AHEAD])
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        qid_of(c.reply())
        self.files(u)

    def test_whole_session_in_one_write(self):
        u = self.fresh_user()
        c = self.smtp()
        m1 = body("one write 1")
        m2 = body("one write 2")
        c.send(b"EHLO client.example\r\n"
               + f"MAIL FROM:<a@example.net>\r\nRCPT TO:<{u}>\r\nDATA\r\n".encode() + m1 + b".\r\n"
               + f"MAIL FROM:<b@example.net>\r\nRCPT TO:<{u}>\r\nBDAT {len(m2)} LAST\r\n".encode() + m2
               + b"RSET\r\nQUIT\r\n")
        self.assertTrue(c.reply().startswith("250-"))
        self.assertEqual(c.replies(3), [MAIL_OK, RCPT_OK, GO_AHEAD])
        q1 = qid_of(c.reply())
        self.assertEqual(c.replies(2), [MAIL_OK, RCPT_OK])
        q2 = qid_of(c.reply())
        self.assertEqual(c.replies(2), [OK, f"221 2.0.0 {HOST} Bye"])
        self.assertEqual(c.read_until_close(), b"")
        by_qid = {re.search(rb" id (" + QID_RE.encode() + rb")", d).group(1).decode(): d for d in self.files(u, 2)}
        self.check_stored(by_qid[q1], "a@example.net", u, received_re("client.example", "ESMTP", q1, rcpt=u), m1)
        self.check_stored(by_qid[q2], "b@example.net", u, received_re("client.example", "ESMTP", q2, rcpt=u), m2)

    def test_data_split_in_odd_places(self):
        u = self.fresh_user()
        c = self.ready()
        c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.send(f"MAIL FROM:<p@example.net>\r\nRCPT TO:<{u}>\r\nDATA\r\n")
        self.assertEqual(c.replies(3), [MAIL_OK, RCPT_OK, GO_AHEAD])
        content = b"Subject: split\r\n\r\nline\r\n.dot\r\nend\r\n"
        wire = re.sub(rb"(?m)^\.", b"..", content) + b".\r\n"
        for i in range(len(wire)):             # one byte per write
            c.send(wire[i:i + 1])
        qid = qid_of(c.reply())
        self.check_stored(self.files(u)[0], "p@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)


# ===================================================================== CHUNKING

class Chunking(SmtpBase):
    def test_several_chunks_then_bdat_0_last(self):
        u = self.fresh_user()
        c = self.ready()
        content = body("bdat", "chunk text\r\n.not stuffed\r\n")
        a, b, d = content[:10], content[10:25], content[25:]
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\n".encode()
               + f"BDAT {len(a)}\r\n".encode() + a + f"BDAT {len(b)}\r\n".encode() + b
               + f"BDAT {len(d)}\r\n".encode() + d + b"BDAT 0 LAST\r\n")
        self.assertEqual(c.replies(5), [MAIL_OK, RCPT_OK, f"250 2.0.0 {len(a)} octets received",
                                        f"250 2.0.0 {len(b)} octets received", f"250 2.0.0 {len(d)} octets received"])
        qid = qid_of(c.reply())
        self.check_stored(self.files(u)[0], "c@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)

    def test_bdat_chunk_content_is_not_unstuffed_nor_parsed(self):
        u = self.fresh_user()
        c = self.ready()
        content = b"Subject: raw\r\n\r\n.\r\nQUIT\r\n..\r\n"
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\nBDAT {len(content)} LAST\r\n".encode() + content)
        self.assertEqual(c.replies(2), [MAIL_OK, RCPT_OK])
        qid = qid_of(c.reply())
        self.assertEqual(c.cmd("NOOP"), OK)
        self.check_stored(self.files(u)[0], "c@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)

    def test_bdat_before_mail_skips_the_chunk(self):
        c = self.ready()
        chunk = b"RSET\r\nQUIT\r\n"
        c.send(f"BDAT {len(chunk)}\r\n".encode() + chunk)
        self.assertEqual(c.reply(), "503 5.5.1 Need MAIL and RCPT commands first")
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk + b"NOOP\r\n")
        self.assertEqual(c.reply(), "503 5.5.1 Need MAIL and RCPT commands first")
        self.assertEqual(c.reply(), OK, "the chunk was executed as commands")
        c.expect_silence()

    def test_bdat_without_valid_recipient(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<c@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<nobody@example.org>"), user_unknown("nobody@example.org"))
        chunk = b"Subject: x\r\n\r\nNOOP\r\n"
        c.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk + b"NOOP\r\n")
        self.assertEqual(c.reply(), "554 5.5.1 No valid recipients")
        self.assertEqual(c.reply(), OK)
        c.expect_silence()

    def test_bdat_over_the_size_limit_and_session_stays_usable(self):
        u = self.fresh_user()
        c = self.ready()
        since = self.srv.log_size()
        big = b"x" * 998 + b"\r\n"
        chunk = big * (MAX_SIZE // len(big) + 1)
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\nBDAT {len(chunk)} LAST\r\n".encode() + chunk)
        self.assertEqual(c.replies(3), [MAIL_OK, RCPT_OK, TOO_BIG])
        # the transaction is over; the session is not
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
        content = body("after too big")
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\nBDAT {len(content)} LAST\r\n".encode() + content)
        self.assertEqual(c.replies(2), [MAIL_OK, RCPT_OK])
        qid = qid_of(c.reply())
        self.check_stored(self.files(u)[0], "c@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)
        rej = self.srv.wait_log("smtp.reject", since=since)
        self.assertEqual(rej[-1]["result"], "too big")

    def test_chunks_adding_up_over_the_limit(self):
        u = self.fresh_user()
        c = self.ready()
        half = b"y" * 998 + b"\r\n"
        chunk = half * (MAX_SIZE // 2 // len(half) + 1)
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\nBDAT {len(chunk)}\r\n".encode() + chunk
               + f"BDAT {len(chunk)}\r\n".encode() + chunk + f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)
        self.assertEqual(c.replies(4), [MAIL_OK, RCPT_OK, f"250 2.0.0 {len(chunk)} octets received", TOO_BIG])
        # the transaction was reset: the last chunk is skipped with 503
        self.assertEqual(c.reply(), "503 5.5.1 Need MAIL and RCPT commands first")
        self.assertEqual(c.cmd("NOOP"), OK)
        self.nothing_stored(u)

    def test_bdat_size_overflow_closes(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<c@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd(f"RCPT TO:<{self.fresh_user()}>"), RCPT_OK)
        c.sendline("BDAT 999999999999999999999 LAST")
        self.assertEqual(c.reply(), "552 5.3.4 Chunk size too large; closing")
        self.assertEqual(c.read_until_close(), b"")

    def test_data_after_bdat_is_refused(self):
        c = self.ready()
        u = self.fresh_user()
        c.send(f"MAIL FROM:<c@example.net>\r\nRCPT TO:<{u}>\r\nBDAT 3\r\nabcDATA\r\n")
        self.assertEqual(c.replies(4), [MAIL_OK, RCPT_OK, "250 2.0.0 3 octets received",
                                        "503 5.5.1 DATA not allowed after BDAT"])
        self.assertEqual(c.cmd("RSET"), OK)
        self.nothing_stored(u)

    def test_bdat_syntax(self):
        c = self.ready()
        self.assertEqual(c.cmd("BDAT"), "501 5.5.4 Syntax error in parameters or arguments")
        self.assertEqual(c.cmd("BDAT 12x"), "501 5.5.4 Syntax error in parameters or arguments")
        self.assertEqual(c.cmd("BDAT 1 FIRST"), "501 5.5.4 Syntax error in parameters or arguments")


# ===================================================================== SIZE, recipients, DATA limits

class Limits(SmtpBase):
    def test_mail_size_parameter(self):
        c = self.ready()
        self.assertEqual(c.cmd(f"MAIL FROM:<s@example.net> SIZE={MAX_SIZE}"), MAIL_OK)
        self.assertEqual(c.cmd("RSET"), OK)
        self.assertEqual(c.cmd(f"MAIL FROM:<s@example.net> SIZE={MAX_SIZE + 1}"), TOO_BIG)
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE=999999999999999999999"), TOO_BIG)
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE=18446744073709551616"), TOO_BIG)
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE=12k"), "501 5.5.4 Invalid SIZE parameter")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE"), "501 5.5.4 Invalid SIZE parameter")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL, "a refused MAIL opened a transaction")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE=100"), MAIL_OK)

    def test_unknown_and_duplicate_parameters(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> FOO=bar"), "555 5.5.4 Unsupported parameter")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> SIZE=1 SIZE=2"), "501 5.5.4 Duplicate parameter")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> NOTIFY=NEVER"), "555 5.5.4 Unsupported parameter")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net> BODY=8BITMIME SMTPUTF8"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org> NOTIFY=NEVER,SUCCESS"), "501 5.5.4 Invalid NOTIFY parameter")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org> SIZE=1"), "555 5.5.4 Unsupported parameter")

    def test_smtputf8(self):
        u = self.fresh_user()
        c = self.ready()
        c.send("MAIL FROM:<jörg@example.net>\r\n".encode())
        self.assertEqual(c.reply(), "553 5.6.7 Non-ASCII address requires SMTPUTF8")
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.send("RCPT TO:<jörg@example.org>\r\n".encode())
        self.assertEqual(c.reply(), "553 5.6.7 UTF-8 address needs MAIL FROM ... SMTPUTF8")
        self.assertEqual(c.cmd("RSET"), OK)
        c.send("MAIL FROM:<jörg@example.net> SMTPUTF8\r\n".encode())
        self.assertEqual(c.reply(), MAIL_OK)
        self.assertEqual(c.cmd(f"RCPT TO:<{u}>"), RCPT_OK)
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        content = "Subject: =?utf-8?q?gr=C3=BC=C3=9Fe?=\r\n\r\nGrüße\r\n".encode()
        c.send(content + b".\r\n")
        qid = qid_of(c.reply())
        self.check_stored(self.files(u)[0], "jörg@example.net", u,
                          received_re("client.example", "ESMTP", qid, rcpt=u), content)

    def test_ehlo_resets_the_transaction(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.ehlo("again.example")
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)

    def test_empty_message(self):
        u = self.fresh_user()
        c = self.ready()
        qid = qid_of(c.transaction("s@example.net", [u], b"")[-1])
        self.check_stored(self.files(u)[0], "s@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), b"")

    def test_data_over_the_size_limit(self):
        u = self.fresh_user()
        c = self.ready()
        line = b"z" * 998 + b"\r\n"
        big = b"Subject: big\r\n\r\n" + line * (MAX_SIZE // len(line) + 1)
        rs = c.transaction("s@example.net", [u], big)
        self.assertEqual(rs, [MAIL_OK, RCPT_OK, GO_AHEAD, TOO_BIG])
        self.assertEqual(c.cmd("NOOP"), OK)
        self.nothing_stored(u)
        # exactly at the limit is fine
        exact = b"Subject: exact\r\n\r\n"
        while len(exact) + 1000 <= MAX_SIZE:
            exact += b"e" * 998 + b"\r\n"
        exact += b"f" * (MAX_SIZE - len(exact) - 2) + b"\r\n"
        self.assertEqual(len(exact), MAX_SIZE)
        qid = qid_of(c.transaction("s@example.net", [u], exact)[-1])
        self.check_stored(self.files(u)[0], "s@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), exact)

    def test_max_recipients(self):
        users = [self.fresh_user() for _ in range(MAX_RCPTS + 1)]
        c = self.ready()
        rs = c.transaction("s@example.net", users, body("max rcpts"))
        self.assertEqual(rs[:MAX_RCPTS + 3], [MAIL_OK] + [RCPT_OK] * MAX_RCPTS
                         + ["452 4.5.3 Too many recipients", GO_AHEAD])
        qid = qid_of(rs[-1])
        for u in users[:MAX_RCPTS]:
            self.files(u)
        self.nothing_stored(users[MAX_RCPTS])
        self.assertEqual(self.srv.wait_log("smtp.accept", msgid=qid)[-1]["rcpts"], ",".join(users[:MAX_RCPTS]))

    def test_too_many_recipients_is_not_an_error_that_closes(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.send("".join("RCPT TO:<bob@example.org>\r\n" for _ in range(MAX_RCPTS + 12)))
        rs = c.replies(MAX_RCPTS + 12)
        self.assertEqual(rs, [RCPT_OK] * MAX_RCPTS + ["452 4.5.3 Too many recipients"] * 12)
        self.assertEqual(c.cmd("RSET"), OK)

    def test_data_line_limit_boundary(self):
        u = self.fresh_user()
        c = self.ready()
        ok = b"Subject: 998\r\n\r\n" + b"a" * 998 + b"\r\n" + b"." + b"b" * 997 + b"\r\n"
        qid = qid_of(c.transaction("s@example.net", [u], ok)[-1])
        self.check_stored(self.files(u)[0], "s@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), ok)


# ===================================================================== bad input (issue 4 list)

class BadInput(SmtpBase):
    def test_command_line_over_512_octets(self):
        c = self.ready()
        self.assertEqual(c.cmd("NOOP " + "x" * (510 - 5)), OK, "a 512-octet line (with CRLF) is allowed")
        self.assertEqual(c.cmd("NOOP " + "x" * (511 - 5)), LINE_TOO_LONG)
        self.assertEqual(c.cmd("MAIL FROM:<" + "a" * 600 + "@example.net>"), LINE_TOO_LONG)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL, "the long MAIL was executed")
        # a long line arriving in pieces is one error, its tail is not a command
        c.send(b"NOOP " + b"y" * 3000)
        self.assertEqual(c.reply(), LINE_TOO_LONG)
        c.send(b"z" * 70000 + b"\r\nNOOP\r\n")
        self.assertEqual(c.reply(), OK)
        c.expect_silence()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)

    def test_data_line_over_1000_octets(self):
        u = self.fresh_user()
        c = self.ready()
        since = self.srv.log_size()
        bad = b"Subject: long line\r\n\r\n" + b"a" * 999 + b"\r\nafter\r\n"
        rs = c.transaction("s@example.net", [u], bad)
        self.assertEqual(rs, [MAIL_OK, RCPT_OK, GO_AHEAD, DATA_LINE_TOO_LONG])
        self.assertEqual(c.cmd("NOOP"), OK)
        # a 100 KB line (over the size limit too: the size error wins, still after the end)
        rs = c.transaction("s@example.net", [u], b"Subject: x\r\n\r\n" + b"q" * 150000 + b"\r\n")
        self.assertEqual(rs, [MAIL_OK, RCPT_OK, GO_AHEAD, TOO_BIG])
        # the session is still usable
        content = body("after long line")
        qid = qid_of(c.transaction("s@example.net", [u], content)[-1])
        [data] = self.files(u)
        self.check_stored(data, "s@example.net", u, received_re("client.example", "ESMTP", qid, rcpt=u), content)
        rej = self.srv.wait_log("smtp.reject", since=since, count=2)
        self.assertEqual([r["result"] for r in rej[:2]], ["line too long", "too big"])

    def test_rcpt_before_mail(self):
        c = self.ready()
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
        self.assertEqual(c.cmd("DATA"), "503 5.5.1 Need RCPT command first")

    def test_data_without_valid_recipient(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("DATA"), NO_RCPTS)
        self.assertEqual(c.cmd("RCPT TO:<nobody@example.org>"), user_unknown("nobody@example.org"))
        self.assertEqual(c.cmd("DATA"), NO_RCPTS)
        self.assertEqual(c.cmd("NOOP"), OK)

    MALFORMED = [
        ("missing brackets", "bob@example.org"),
        ("missing closing bracket", "<bob@example.org"),
        ("two @", "<a@b@example.org>"),
        ("two @ (c)", "<a@b@c>"),
        ("300-char local part", "<" + "l" * 300 + "@example.org>"),
        ("65-char local part", "<" + "l" * 65 + "@example.org>"),
        ("no domain", "<bob>"),
        ("empty domain", "<bob@>"),
        ("bad domain", "<bob@-example.org>"),
        ("space inside", "<bob @example.org>"),
        ("unterminated quote", '<"bob@example.org>'),
        ("junk after path", "<bob@example.org>junk"),
        ("empty path", "<>"),
    ]

    def test_malformed_recipient_addresses(self):
        for name, arg in self.MALFORMED:
            with self.subTest(name):
                c = self.ready()
                self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
                self.assertEqual(c.cmd(f"RCPT TO:{arg}"), BAD_RCPT, arg)
                self.assertEqual(c.cmd("DATA"), NO_RCPTS)
                c.close()

    def test_malformed_sender_addresses(self):
        for name, arg in self.MALFORMED:
            if arg == "<>":
                continue
            with self.subTest(name):
                c = self.ready()
                self.assertEqual(c.cmd(f"MAIL FROM:{arg}"), BAD_SENDER, arg)
                self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
                c.close()

    CONTROL = [
        ("NUL", b"<bo\x00b@example.org>"),
        ("SOH", b"<bo\x01b@example.org>"),
        ("ESC", b"<bob\x1b@example.org>"),
        ("DEL", b"<bob\x7f@example.org>"),
        ("TAB", b"<bo\tb@example.org>"),
        ("CR inside", b"<a\r@example.org>"),
        ("CR before >", b"<bob@example.org\r>"),
        ("NUL in quotes", b'<"bo\x00b"@example.org>'),
    ]

    def test_control_bytes_in_recipient(self):
        """Issue 4: NUL and control bytes, CR inside an argument -> 501 5.1.3.
        All cases are run, then compared at once (one failure lists them all)."""
        have = []
        for name, arg in self.CONTROL:
            c = self.ready()
            self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
            c.send(b"RCPT TO:" + arg + b"\r\n")
            have.append((name, c.reply()))
            self.assertEqual(c.cmd("DATA"), NO_RCPTS, f"{name}: recipient accepted")
            c.close()
        self.assertEqual(have, [(name, BAD_RCPT) for name, _ in self.CONTROL])

    def test_control_bytes_in_sender(self):
        """Issue 4: NUL and control bytes in MAIL FROM -> 501 5.1.7."""
        have = []
        for name, arg in self.CONTROL:
            c = self.ready()
            c.send(b"MAIL FROM:" + arg + b"\r\n")
            have.append((name, c.reply()))
            self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL, f"{name}: sender accepted")
            c.close()
        self.assertEqual(have, [(name, BAD_SENDER) for name, _ in self.CONTROL])

    def test_crlf_inside_an_argument_splits_into_two_bad_commands(self):
        c = self.ready()
        u = self.fresh_user()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.send(f"RCPT TO:<a\r\n{u}>\r\n".encode())
        self.assertEqual(c.replies(2), [BAD_RCPT, UNRECOGNIZED])
        c.send(f"RCPT TO:<{u}\r\n>\r\n".encode())
        self.assertEqual(c.replies(2), [BAD_RCPT, UNRECOGNIZED])
        c.send(f"RCPT TO:<{u}\n>\r\n".encode())
        self.assertEqual(c.replies(2), [BAD_RCPT, UNRECOGNIZED])
        self.assertEqual(c.cmd("DATA"), NO_RCPTS)
        self.nothing_stored(u)

    def test_control_bytes_elsewhere_in_a_command(self):
        c = self.ready()
        c.send(b"NOOP \x1b[0m\r\n")
        self.assertEqual(c.reply(), "500 5.5.2 Control characters not allowed in commands")
        c.send(b"\x00\r\n")
        self.assertEqual(c.reply(), "500 5.5.2 Control characters not allowed in commands")
        self.assertEqual(c.cmd(""), "500 5.5.2 Empty command")
        self.assertEqual(c.cmd("FOO bar"), UNRECOGNIZED)
        self.assertEqual(c.cmd("NOOP"), OK)

    def test_open_relay_forms_are_not_relayed(self):
        forms = [
            ("user%remote.example@example.org", user_unknown("user%remote.example@example.org")),
            ('"user@remote.example"@example.org', user_unknown('"user@remote.example"@example.org')),
            ("@example.org:user@remote.example", relay_denied("user@remote.example")),
            ("@example.org,@example.org:user@remote.example", relay_denied("user@remote.example")),
            ("remote.example!user@example.org", user_unknown("remote.example!user@example.org")),
            ("bob%remote.example@example.org", user_unknown("bob%remote.example@example.org")),
            ('"bob@remote.example"@example.org', user_unknown('"bob@remote.example"@example.org')),
            ("user@remote.example@example.org", BAD_RCPT),
        ]
        since = self.srv.log_size()
        for addr, want in forms:
            with self.subTest(addr=addr):
                c = self.ready()
                self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
                self.assertEqual(c.cmd(f"RCPT TO:<{addr}>"), want)
                self.assertEqual(c.cmd("DATA"), NO_RCPTS)
                c.close()
        self.assertEqual(self.srv.queue_files(), [], "something was queued for relaying")
        self.assertEqual(self.srv.find_log("smtp.accept", since=since), [])
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "mail", "remote.example")))

    def test_quoted_local_part_of_a_real_user_is_that_user(self):
        u = self.fresh_user()
        local = u.split("@")[0]
        c = self.ready()
        content = body("quoted")
        rs = c.transaction("s@example.net", [f'"{local}"@example.org'], content)
        qid = qid_of(rs[-1])
        self.files(u)

    def test_too_many_errors_closes_with_421(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.send("".join(f"BOGUS{i}\r\n" for i in range(9)) + "NOOP\r\nRCPT TO:bad\r\nNOOP\r\n")
        self.assertEqual(c.replies(10), [UNRECOGNIZED] * 9 + [OK])
        self.assertEqual(c.reply(), BAD_RCPT)
        self.assertEqual(c.reply(), f"421 4.7.0 {HOST} Too many errors, closing connection")
        self.assertEqual(c.read_until_close(), b"", "NOOP after the 421 was answered")

    def test_errors_are_counted_per_session(self):
        c = self.ready()
        for i in range(9):
            self.assertEqual(c.cmd(f"BOGUS{i}"), UNRECOGNIZED)
        d = self.ready()
        for i in range(9):
            self.assertEqual(d.cmd(f"BOGUS{i}"), UNRECOGNIZED)
        self.assertEqual(c.cmd("NOOP"), OK)
        self.assertEqual(d.cmd("NOOP"), OK)


# ===================================================================== SMTP smuggling

class Smuggling(SmtpBase):
    def smuggle(self, fake_end):
        victim, u = self.fresh_user(), self.fresh_user()
        since = self.srv.log_size()
        c = self.ready()
        c.send(f"MAIL FROM:<s@example.net>\r\nRCPT TO:<{u}>\r\nDATA\r\n")
        self.assertEqual(c.replies(3), [MAIL_OK, RCPT_OK, GO_AHEAD])
        payload = (b"Subject: outer\r\n\r\nouter text" + fake_end
                   + b"MAIL FROM:<admin@example.org>\r\n"
                   + f"RCPT TO:<{victim}>\r\n".encode()
                   + b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")
        c.send(payload)
        self.assertEqual(c.reply(), SMUGGLING)
        # the text after the fake terminator was data, never commands: exactly one reply came
        c.expect_silence(0.3)
        self.assertEqual(c.cmd("NOOP"), OK)
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
        self.nothing_stored(u, victim)
        self.assertEqual(self.srv.find_log("smtp.accept", since=since), [])
        self.assertEqual(self.srv.wait_log("smtp.reject", since=since)[-1]["result"], "bare CR/LF (smuggling)")
        # still usable
        content = body("after smuggling")
        qid_of(c.transaction("s@example.net", [u], content)[-1])
        self.files(u)

    def test_lf_dot_lf(self):
        self.smuggle(b"\n.\n")

    def test_crlf_dot_lf(self):
        self.smuggle(b"\r\n.\n")

    def test_lf_dot_crlf(self):
        self.smuggle(b"\n.\r\n")

    def test_cr_dot_cr(self):
        self.smuggle(b"\r.\r")

    def test_crlf_dot_cr_lf_split(self):
        self.smuggle(b"\r\n.\r\r\n")

    def test_bare_lf_in_an_ordinary_line(self):
        u = self.fresh_user()
        c = self.ready()
        rs = c.transaction("s@example.net", [u], b"Subject: lf\r\n\r\nunix\nline\r\n")
        self.assertEqual(rs[-1], SMUGGLING)
        self.nothing_stored(u)


# ===================================================================== STARTTLS

class StartTls(SmtpBase):
    def injection(self, proto):
        c = self.ready(proto)
        c.send(b"STARTTLS\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.org>\r\n")
        self.assertEqual(c.reply(), "220 2.0.0 Ready to start TLS")
        self.assertEqual(c.buf, b"", "reply to the injected command arrived before TLS")
        c.sock = self.srv.ssl_context().wrap_socket(c.sock)
        c.expect_silence(0.4)
        # the session starts over: no EHLO yet, no transaction
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)
        self.assertEqual(c.cmd("MAIL FROM:<x@example.net>"), "503 5.5.1 Send EHLO/HELO first")
        c.ehlo()
        return c

    def test_pipelined_command_after_starttls_is_discarded_port_25(self):
        c = self.injection("smtp")
        self.assertEqual(c.cmd("MAIL FROM:<x@example.net>"), MAIL_OK, "a MAIL from before TLS survived")

    def test_pipelined_command_after_starttls_is_discarded_submission(self):
        c = self.injection("submission")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)
        self.assertEqual(c.auth_plain("alice@example.org", PW), AUTH_OK)
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), MAIL_OK)

    def test_ehlo_starttls_mail_in_one_packet(self):
        c = self.smtp()
        c.send(b"EHLO client.example\r\nSTARTTLS\r\nMAIL FROM:<x@example.net>\r\nRCPT TO:<bob@example.org>\r\n")
        self.assertTrue(c.reply().startswith("250-"))
        self.assertEqual(c.reply(), "220 2.0.0 Ready to start TLS")
        self.assertEqual(c.buf, b"")
        c.sock = self.srv.ssl_context().wrap_socket(c.sock)
        c.expect_silence(0.3)
        c.ehlo()
        self.assertEqual(c.cmd("RCPT TO:<bob@example.org>"), NEED_MAIL)

    def test_injected_auth_is_discarded(self):
        c = self.ready("submission", source=self.fresh_ip())
        c.send(b"STARTTLS\r\n" + f"AUTH PLAIN {b64(chr(0) + 'alice@example.org' + chr(0) + PW)}\r\n".encode())
        self.assertEqual(c.reply(), "220 2.0.0 Ready to start TLS")
        c.sock = self.srv.ssl_context().wrap_socket(c.sock)
        c.expect_silence(0.4)
        c.ehlo()
        self.assert_auth_offered(c.ehlo_lines, "AUTH not offered: the injected AUTH was executed")
        self.assertEqual(c.cmd("MAIL FROM:<alice@example.org>"), AUTH_REQUIRED)

    def test_transaction_is_reset_by_starttls(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<x@example.net>"), "250 2.1.0 Ok")
        self.assertEqual(c.cmd("STARTTLS"), "503 5.5.1 Bad sequence of commands")
        self.assertEqual(c.cmd("RSET"), OK)
        c.starttls()
        self.assertEqual(c.cmd("STARTTLS"), "503 5.5.1 TLS already active")
        c.ehlo()
        self.assertEqual(c.cmd("STARTTLS"), "503 5.5.1 TLS already active")

    def test_starttls_on_submissions_is_refused(self):
        c = self.ready("submissions")
        self.assertEqual(c.cmd("STARTTLS"), "503 5.5.1 TLS already active")


# ===================================================================== catch-all

class CatchAll(SmtpBase):
    server_kwargs = {
        "users": {"catcher@example.org": {"password": PW, "aliases": ["@example.org"]},
                  "bob@example.org": PW},
        "listeners": ("smtp",),
        "config": {"smtp": {"vrfy": True}},
    }

    def test_unknown_local_part_goes_to_the_catch_all(self):
        c = self.ready()
        before_bob = len(self.srv.message_files("bob@example.org"))
        content = body("catch me")
        qid = qid_of(c.transaction("s@example.net", ["whoever@example.org"], content)[-1])
        q2 = qid_of(c.transaction("s@example.net", ["bob@example.org"], content)[-1])
        self.srv.wait_log("smtp.accept", msgid=q2)
        files = {}
        for path in self.srv.message_files("catcher@example.org"):
            with open(path, "rb") as f:
                d = f.read()
            files[re.search(rb" id (" + QID_RE.encode() + rb")", d).group(1).decode()] = d
        rx = received_re("client.example", "ESMTP", qid, rcpt="whoever@example.org")
        self.check_stored(files[qid], "s@example.net", "catcher@example.org", rx, content)
        self.assertNotIn(q2, files, "bob's mail went to the catch-all")
        self.assertEqual(len(self.srv.message_files("bob@example.org")), before_bob + 1)

    def test_open_relay_forms_end_at_the_catch_all_or_are_refused(self):
        c = self.ready()
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        self.assertEqual(c.cmd("RCPT TO:<user%remote.example@example.org>"), RCPT_OK)
        self.assertEqual(c.cmd('RCPT TO:<"user@remote.example"@example.org>'), RCPT_OK)
        self.assertEqual(c.cmd("RCPT TO:<remote.example!user@example.org>"), RCPT_OK)
        self.assertEqual(c.cmd("RCPT TO:<@example.org:user@remote.example>"), relay_denied("user@remote.example"))
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        c.send(body("relay forms") + b".\r\n")
        qid = qid_of(c.reply())
        self.srv.wait_log("smtp.accept", msgid=qid)
        self.assertEqual(self.srv.queue_files(), [])
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "mail", "remote.example")))
        mine = [d for d in self.srv.message_files("catcher@example.org") if qid.encode() in open(d, "rb").read()]
        self.assertEqual(len(mine), 1, "three catch-all recipients: one copy")

    def test_catch_all_owner_may_send_as_unclaimed_addresses_only(self):
        c = self.ready()              # loopback counts as local here: AUTH without TLS
        self.assertEqual(c.auth_plain("catcher@example.org", PW), AUTH_OK)
        for sender in ("anything@example.org", "catcher+x@example.org"):
            self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"), MAIL_OK, sender)
            self.assertEqual(c.cmd("RSET"), OK)
        for sender in ("bob@example.org", "bob+x@example.org", "x@remote.example"):
            self.assertEqual(c.cmd(f"MAIL FROM:<{sender}>"),
                             f"553 5.7.1 Sender address <{sender}> not owned by user catcher@example.org")

    def test_vrfy_enabled(self):
        c = self.ready()
        self.assertEqual(c.cmd("VRFY bob@example.org"), "250 2.1.5 <bob@example.org>")
        self.assertEqual(c.cmd("VRFY <anything@example.org>"), "250 2.1.5 <catcher@example.org>")
        self.assertEqual(c.cmd("VRFY x@remote.example"), "550 5.1.1 User unknown")
        self.assertEqual(c.cmd("VRFY bob"),
                         "252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery")


# ===================================================================== defaults (100 recipients, 50M)

class Defaults(SmtpBase):
    server_kwargs = {"users": {"alice@example.org": PW, "bob@example.org": PW}, "listeners": ("smtp",),
                     "config": {"smtp": {"vrfy": True}}}

    def test_default_size_and_101st_recipient(self):
        c = self.smtp()
        self.assertIn("SIZE 52428800", c.ehlo())
        self.assertEqual(c.cmd("MAIL FROM:<s@example.net>"), MAIL_OK)
        c.send("".join("RCPT TO:<alice@example.org>\r\n" for _ in range(101)))
        rs = c.replies(101)
        self.assertEqual(rs[:100], [RCPT_OK] * 100)
        self.assertEqual(rs[100], "452 4.5.3 Too many recipients")
        self.assertEqual(c.cmd("DATA"), GO_AHEAD)
        c.send(body("hundred") + b".\r\n")
        qid_of(c.reply())
        self.assertEqual(len(self.srv.message_files("alice@example.org")), 1, "100 RCPTs of one account: one copy")

    def test_vrfy_enabled_without_catch_all(self):
        c = self.ready()
        self.assertEqual(c.cmd("VRFY <alice+x@example.org>"), "250 2.1.5 <alice@example.org>")
        self.assertEqual(c.cmd("VRFY nobody@example.org"), "550 5.1.1 User unknown")


# ===================================================================== anti-abuse: early talker, per-IP limit

class AntiAbuse(SmtpBase):
    server_kwargs = {
        "users": {"alice@example.org": PW},
        "listeners": ("smtp", "submissions"),
        "config": {"server": {"max_connections_per_ip": 2},
                   "smtp": {"greeting_delay_ms": 300}},
    }

    def test_greeting_comes_after_the_delay(self):
        t0 = time.monotonic()
        c = self.smtp(source=self.fresh_ip())
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        self.assertEqual(c.greeting, GREETING)
        self.assertTrue(c.cmd("EHLO client.example").startswith("250-"))

    def test_greeting_delay_after_implicit_tls(self):
        t0 = time.monotonic()
        c = self.smtp("submissions", source=self.fresh_ip())
        self.assertGreaterEqual(time.monotonic() - t0, 0.25)
        self.assertEqual(c.greeting, GREETING)
        self.assertEqual(c.auth_plain("alice@example.org", PW), "503 5.5.1 Send EHLO/HELO first")

    def test_early_talker_is_refused(self):
        since = self.srv.log_size()
        c = self.smtp(source=self.fresh_ip(), read_greeting=False)
        c.send(b"EHLO early.example\r\n")
        self.assertEqual(c.read_until_close(), b"554 5.5.0 Protocol error: client sent data before the greeting\r\n")
        ev = self.srv.wait_log("conn.close", since=since)
        self.assertEqual(ev[-1]["reason"], "early talker")

    def test_per_ip_connection_limit(self):
        ip = self.fresh_ip()
        a = self.smtp(source=ip)
        b = self.smtp(source=ip)
        c = self.smtp(source=ip, read_greeting=False)
        self.assertEqual(c.read_until_close(), b"421 4.7.0 Too many connections, try again later\r\n")
        # another address is not affected
        d = self.smtp(source=self.fresh_ip())
        self.assertEqual(d.greeting, GREETING)
        # implicit TLS: closed without a plaintext reply (no TLS session either)
        with socket.create_connection(self.srv.addr("submissions"), timeout=5, source_address=(ip, 0)) as s:
            self.assertEqual(s.recv(100), b"")
        a.quit()

        def again():
            e = SmtpConn.connect(self.srv, "smtp", source=ip)
            self._conns.append(e)
            return e.greeting == GREETING
        wait_until(lambda: _try(again), timeout=5, what="a slot after QUIT")
        self.assertEqual(b.cmd("NOOP"), OK)


def _try(fn):
    try:
        return fn()
    except (ConnectionClosed, OSError):
        return False


# ===================================================================== client gone mid-DATA

class DisconnectMidData(unittest.TestCase):
    """Own server: restarted at the end to check nothing is left behind."""

    def setUp(self):
        self.srv = Server(users={"alice@example.org": PW, "bob@example.org": PW}, name="midData",
                          listeners=("smtp", "submissions"))
        self.addCleanup(self.srv.close)
        self.srv.start()

    def tearDown(self):
        self.srv.assert_alive()
        self.srv.check_sanitizers()
        self.srv.assert_no_secrets_in_log()

    def session(self, proto, rcpts, login=None):
        c = SmtpConn.connect(self.srv, proto)
        self.addCleanup(c.close)
        c.ehlo()
        if login:
            self.assertEqual(c.auth_plain(login, PW), AUTH_OK)
        sender = login or "s@example.net"
        c.send(f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n")
        self.assertEqual(c.replies(len(rcpts) + 2), [MAIL_OK] + [RCPT_OK] * len(rcpts) + [GO_AHEAD])
        c.send(b"Subject: cut\r\n\r\n" + b"partial line\r\n" * 2000 + b"no end")
        return c

    def test_disconnect_mid_data_leaves_nothing(self):
        since = self.srv.log_size()
        a = self.session("smtp", ["alice@example.org", "bob@example.org"])
        a.sock.close()
        b = self.session("submissions", ["bob@example.org", "far@remote.example"], login="alice@example.org")
        # abortive close (RST)
        b.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        b.sock.close()
        # a third one cut right after the 354
        c = SmtpConn.connect(self.srv, "smtp")
        self.addCleanup(c.close)
        c.ehlo()
        c.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        self.assertEqual(c.replies(3), [MAIL_OK, RCPT_OK, GO_AHEAD])
        c.sock.close()
        # a fourth one cut inside a BDAT chunk
        e = SmtpConn.connect(self.srv, "smtp")
        self.addCleanup(e.close)
        e.ehlo()
        e.send(b"MAIL FROM:<s@example.net>\r\nRCPT TO:<bob@example.org>\r\nBDAT 50\r\n" + b"c" * 50)
        self.assertEqual(e.replies(3), [MAIL_OK, RCPT_OK, "250 2.0.0 50 octets received"])
        e.send(b"BDAT 5000 LAST\r\n" + b"x" * 4000)
        e.sock.close()
        self.srv.wait_log("conn.close", since=since, count=4)
        time.sleep(0.2)
        self.assertEqual(self.srv.find_log("smtp.accept", since=since), [])
        for u in ("alice@example.org", "bob@example.org"):
            self.assertEqual(self.srv.message_files(u), [], u)
        self.assertEqual(self.srv.mail_files(), [])
        self.assertEqual(self.srv.tmp_files(), [])
        self.assertEqual(self.srv.queue_files(), [])
        self.assertEqual(self.srv.restart(), self.srv)
        self.assertEqual(self.srv.mail_files(), [])
        self.assertEqual(self.srv.tmp_files(), [])
        self.assertEqual(self.srv.queue_files(), [])
        # and the server still takes mail
        d = SmtpConn.connect(self.srv, "smtp")
        self.addCleanup(d.close)
        d.ehlo()
        qid_of(d.transaction("s@example.net", ["alice@example.org"], body("after restart"))[-1])
        self.assertEqual(len(self.srv.message_files("alice@example.org")), 1)


if __name__ == "__main__":
    unittest.main()
