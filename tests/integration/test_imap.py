"""IMAP server against RFC 9051 (IMAP4rev2), RFC 3501 (IMAP4rev1) and the
extensions of issue 5, over real sockets on loopback.

The target is Postling (harness.Server with imap/imaps/smtp listeners) unless
IMAP_TARGET=dovecot, which runs the same tests against a private Debian Dovecot
(imap_support.DovecotTarget) to check the tests themselves. Where Dovecot 2.3
departs from the RFC, or lacks an extension (IMAP4rev2, UTF8=ACCEPT,
APPENDLIMIT), the test says so and checks only the part Dovecot gets right;
on Postling the full RFC answer is required. Every test skips cleanly while
the Postling binary still refuses an imap listener in its config.
"""
import base64
import datetime
import json
import os
import re
import ssl
import time
import unittest

from imap_support import (ConnectionClosed, SPECIAL_USE, make_target, parse_all, parse_seqset, quote,
                          seq_status, target_kind, value)
from harness import make_message, crlf

PW = "Imap-Test-Pw-5d2c"
QUOTA_KIB = 64
USERS = {f"u{i:02d}@example.org": PW for i in range(1, 100)}
USERS["quota@example.org"] = {"password": PW, "quota": f"{QUOTA_KIB}K"}
CORPUS = os.environ.get("POSTLING_MIME_CORPUS") or next(
    (p for p in (os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "mime-corpus"),
                 "/work/shared/mime-corpus",
                 os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..", "shared",
                              "mime-corpus"))
     if os.path.isfile(os.path.join(p, "expected.json"))), None)

# Extensions issue 5 requires after login; on Dovecot 2.3 the ones in
# DOVECOT_LACKS are not offered (it predates them) and tests needing them skip.
REQUIRED_CAPS = ["IMAP4rev1", "IMAP4rev2", "ENABLE", "IDLE", "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT",
                 "SPECIAL-USE", "LIST-EXTENDED", "LIST-STATUS", "CHILDREN", "ESEARCH", "SEARCHRES",
                 "BINARY", "ID", "QUOTA", "SASL-IR", "UTF8=ACCEPT"]
DOVECOT_LACKS = {"IMAP4rev2", "UTF8=ACCEPT", "APPENDLIMIT"}
STD_FLAGS = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"}
DATE_RE = re.compile(r'^"[ 0-3]\d-[A-Z][a-z]{2}-\d{4} \d\d:\d\d:\d\d [+-]\d{4}"$')


def mutf7(s):
    """RFC 3501 §5.1.3 modified UTF-7 (encoder for the tests' own names)."""
    out, run = [], []

    def flush():
        if run:
            b = base64.b64encode("".join(run).encode("utf-16-be")).decode().rstrip("=").replace("/", ",")
            out.append("&" + b + "-")
            run.clear()
    for ch in s:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            run.append(ch)
    flush()
    return "".join(out)


class ImapBase(unittest.TestCase):
    """One IMAP target per class; each test takes users no other test touched."""
    postling_config = None
    target = None

    @classmethod
    def setUpClass(cls):
        cls.target = make_target(USERS, postling_config=cls.postling_config, name=cls.__name__)
        cls._next_user = 0
        try:
            cls.target.start()
        except BaseException:
            cls.target.close()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.target is not None:
            t, cls.target = cls.target, None
            t.close()

    def setUp(self):
        self._conns = []

    def tearDown(self):
        for c in self._conns:
            c.close()
        self.target.assert_alive()

    # -- helpers
    @property
    def dovecot(self):
        return self.target.kind == "dovecot"

    _next_ip = 10

    @classmethod
    def fresh_ip(cls):
        """A loopback source address no other test used: both servers slow
        down or refuse logins from an address after failed attempts."""
        ImapBase._next_ip += 1
        return f"127.0.{ImapBase._next_ip // 250}.{ImapBase._next_ip % 250 + 2}"

    @classmethod
    def fresh_user(cls):
        cls._next_user += 1
        u = f"u{cls._next_user:02d}@example.org"
        assert u in USERS, "out of test users: add more to USERS"
        return u

    def track(self, c):
        self._conns.append(c)
        return c

    def connect(self, **kw):
        kw.setdefault("source", self.fresh_ip())
        return self.track(self.target.connect(**kw))

    def login(self, user=None, **kw):
        user = user or self.fresh_user()
        c = self.connect(**kw)
        c.login(user, self.target.password(user))
        return c

    def session(self, n_msgs=0, mailbox="INBOX", user=None):
        """(user, conn) with n_msgs APPENDed to mailbox and mailbox selected."""
        user = user or self.fresh_user()
        c = self.login(user)
        for i in range(n_msgs):
            c.ok(f"APPEND {quote(mailbox)} {{}}", self.msg(f"m{i + 1}"))
        c.select(mailbox)
        return user, c

    def msg(self, subject, body="Hello.\r\n", **kw):
        return crlf(make_message(subject, body=body, **kw))

    def need_cap(self, c, cap):
        """Postling must offer cap; on Dovecot a missing one skips the test."""
        caps = [x.upper() for x in c.capabilities()]
        have = cap.upper() in caps or any(x.startswith(cap.upper() + "=") for x in caps)
        if not have:
            if self.dovecot and cap.upper() in {x.upper() for x in DOVECOT_LACKS}:
                self.skipTest(f"Dovecot 2.3 does not offer {cap}")
            self.fail(f"capability {cap} missing: {caps}")
        return caps

    def assert_resp(self, r, status, code=None):
        self.assertEqual(r.status, status, f"{r.line!r} untagged={r.untagged!r}")
        if code is not None:
            self.assertEqual(r.code_name, code, f"want [{code}]: {r.line!r}")

    def code_value(self, r, name):
        """Argument text of untagged '* OK [NAME ...]' in r."""
        for u in r.lines("* OK ["):
            m = re.match(r"^\* OK \[(\S+)(?: ([^\]]*))?\]", u)
            if m and m.group(1).upper() == name:
                return m.group(2) or ""
        return None

    def uids(self, c):
        r = c.ok("UID FETCH 1:* (UID)")
        return [int(value(items["UID"])) for _seq, items in r.fetches()]

    def msgids(self, c, what="1:*", uid=False):
        """{seq or uid: Message-ID} of the messages in the selected mailbox."""
        r = c.ok(f"{'UID ' if uid else ''}FETCH {what} (UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        out = {}
        for seq, items in r.fetches():
            hdr = value(items["BODY[HEADER.FIELDS (MESSAGE-ID)]"]).decode()
            key = int(value(items["UID"])) if uid else seq
            out[key] = hdr.split(":", 1)[1].strip()
        return out

    def exists(self, r):
        n = [int(u.split()[1]) for u in r.lines("* ") if re.match(r"^\* \d+ EXISTS$", u)]
        return n[-1] if n else None


def internaldate(raw):
    """A date-time value (bytes, quoted) as an aware datetime: a server may keep
    the instant but not the zone it was given in (Dovecot stores UTC)."""
    return datetime.datetime.strptime(value(raw).decode().strip(), "%d-%b-%Y %H:%M:%S %z")


def norecent(d):
    """seq_status() without \\Recent (a rev1 session sees it on its new messages)."""
    return {k: v - {"\\Recent"} for k, v in d.items()}


def apply_expunges(r, seqs):
    """Apply the '* n EXPUNGE' responses of r to the list seqs (e.g. of UIDs)."""
    seqs = list(seqs)
    for u in r.lines("* "):
        m = re.match(r"^\* (\d+) EXPUNGE$", u)
        if m:
            n = int(m.group(1))
            assert 1 <= n <= len(seqs), f"EXPUNGE {n} outside 1..{len(seqs)}"
            del seqs[n - 1]
    return seqs


# ---------------------------------------------------------------- greeting, capabilities, auth

class Greeting(ImapBase):
    def test_greeting_is_untagged_ok_with_imap4rev1(self):
        c = self.connect()
        self.assertRegex(c.greeting, r"^\* OK (\[CAPABILITY [^\]]+\] )?\S")
        m = re.match(r"^\* OK \[CAPABILITY ([^\]]+)\]", c.greeting)
        if m:
            self.assertIn("IMAP4REV1", m.group(1).upper().split())

    def test_capability_before_login_offers_starttls_plain_and_sasl_ir(self):
        caps = [x.upper() for x in self.connect().capabilities()]
        for cap in ("IMAP4REV1", "STARTTLS", "AUTH=PLAIN", "SASL-IR", "ID", "ENABLE", "IDLE"):
            self.assertIn(cap, caps)
        self.assertTrue("LITERAL+" in caps or "LITERAL-" in caps, caps)

    def test_capability_after_login_lists_the_issue_extensions(self):
        caps = [x.upper() for x in self.login().capabilities()]
        missing = [c for c in REQUIRED_CAPS if c.upper() not in caps]
        if self.dovecot:
            missing = [c for c in missing if c not in DOVECOT_LACKS]
        self.assertEqual(missing, [], f"missing after login: {missing} (have {caps})")
        self.assertNotIn("LOGINDISABLED", caps)
        if not self.dovecot:
            self.assertTrue(any(c.startswith("APPENDLIMIT") for c in caps), caps)

    def test_imaps_has_tls_from_the_start_and_no_starttls(self):
        c = self.connect(tls=True)
        self.assertTrue(c.greeting.startswith("* OK"), c.greeting)
        caps = [x.upper() for x in c.capabilities()]
        self.assertNotIn("STARTTLS", caps)
        self.assertNotIn("LOGINDISABLED", caps)
        c.login(self.fresh_user(), PW)

    def test_noop_and_logout_sends_bye_then_ok_then_closes(self):
        c = self.login()
        self.assert_resp(c.cmd("NOOP"), "OK")
        r = c.cmd("LOGOUT")
        self.assert_resp(r, "OK")
        self.assertEqual(len(r.lines("* BYE")), 1, r.untagged)
        self.assertEqual(r.untagged[-1][:5], b"* BYE")
        self.assertEqual(c.read_until_close(), b"", "data after the LOGOUT completion")

    def test_id_answers_with_id_response(self):
        c = self.connect()
        r = c.cmd('ID ("name" "postling-tests" "version" "1")')
        self.assert_resp(r, "OK")
        ids = r.lines("* ID ")
        self.assertEqual(len(ids), 1, r.untagged)
        v = value(ids[0][5:].encode())
        self.assertTrue(v is None or (isinstance(v, list) and len(v) % 2 == 0), ids)

    def test_namespace_is_personal_empty_prefix_slash(self):
        r = self.login().ok("NAMESPACE")
        self.assertEqual(r.lines("* NAMESPACE"), ['* NAMESPACE (("" "/")) NIL NIL'])

    def test_unknown_command_is_bad(self):
        c = self.connect()
        self.assert_resp(c.cmd("XYZZY"), "BAD")
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_select_before_login_is_bad_or_no(self):
        r = self.connect().cmd("SELECT INBOX")
        self.assertIn(r.status, ("BAD", "NO"), r.line)


class Auth(ImapBase):
    def test_login_right_password_ok(self):
        c = self.connect()
        self.assert_resp(c.cmd(f"LOGIN {quote(self.fresh_user())} {quote(PW)}"), "OK")
        self.assert_resp(c.cmd("SELECT INBOX"), "OK")

    def test_login_wrong_password_authenticationfailed(self):
        c = self.connect()
        r = c.cmd(f"LOGIN {quote(self.fresh_user())} \"wrong-password\"")
        self.assert_resp(r, "NO", "AUTHENTICATIONFAILED")
        # still not authenticated
        self.assertIn(c.cmd("SELECT INBOX").status, ("BAD", "NO"))

    def test_login_unknown_user_same_reply_as_wrong_password(self):
        c = self.connect()
        a = c.cmd(f"LOGIN \"nobody-here@example.org\" {quote(PW)}")
        b = c.cmd(f"LOGIN {quote(self.fresh_user())} \"wrong\"")
        self.assert_resp(a, "NO", "AUTHENTICATIONFAILED")
        self.assertEqual(re.sub(r"\(.*\)", "", a.line), re.sub(r"\(.*\)", "", b.line))

    def test_authenticate_plain_with_initial_response(self):
        c = self.connect()
        ir = base64.b64encode(f"\0{self.fresh_user()}\0{PW}".encode()).decode()
        self.assert_resp(c.cmd(f"AUTHENTICATE PLAIN {ir}"), "OK")
        self.assert_resp(c.cmd("SELECT INBOX"), "OK")

    def test_authenticate_plain_with_continuation(self):
        c = self.connect()
        tag = c.next_tag()
        c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.wait_continuation(), b"+ ")
        c.send(base64.b64encode(f"\0{self.fresh_user()}\0{PW}".encode()) + b"\r\n")
        self.assert_resp(c.wait_tagged(tag), "OK")

    def test_authenticate_cancel_is_bad(self):
        # RFC 9051 §6.2.2: a client "*" cancels, and the server rejects with BAD
        c = self.connect()
        tag = c.next_tag()
        c.send(f"{tag} AUTHENTICATE PLAIN\r\n")
        self.assertEqual(c.wait_continuation(), b"+ ")
        c.send(b"*\r\n")
        self.assert_resp(c.wait_tagged(tag), "BAD")
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_authenticate_bad_credentials_authenticationfailed(self):
        c = self.connect()
        ir = base64.b64encode(f"\0{self.fresh_user()}\0nope".encode()).decode()
        self.assert_resp(c.cmd(f"AUTHENTICATE PLAIN {ir}"), "NO", "AUTHENTICATIONFAILED")

    def test_starttls_then_login(self):
        c = self.connect()
        r = c.cmd("STARTTLS")
        self.assert_resp(r, "OK")
        self.assertEqual(c.buf, b"", "data after the STARTTLS completion before TLS")
        c.sock = self.target_ssl().wrap_socket(c.sock)
        caps = [x.upper() for x in c.capabilities()]
        self.assertNotIn("STARTTLS", caps)
        c.login(self.fresh_user(), PW)
        # a second STARTTLS, now authenticated and under TLS, is refused
        self.assertIn(c.cmd("STARTTLS").status, ("BAD", "NO"))

    def test_commands_pipelined_after_starttls_are_discarded(self):
        # RFC 9051 §6.2.1 / RFC 2595 §3.1: what follows STARTTLS in the same
        # packet must not be executed (command injection before TLS)
        c = self.connect()
        c.send("S1 STARTTLS\r\nS2 CAPABILITY\r\n")
        r = c.wait_tagged("S1")
        self.assert_resp(r, "OK")
        self.assertEqual(c.buf, b"", "S2 was answered in plaintext")
        try:
            c.sock = self.target_ssl().wrap_socket(c.sock)
        except (ConnectionError, ssl.SSLError) as e:
            # dropping such a client is also safe (Dovecot 2.3 does); Postling discards
            if self.dovecot:
                return
            raise AssertionError(f"TLS handshake after pipelined STARTTLS failed: {e!r}")
        r = c.cmd("NOOP", tag="S3")
        self.assert_resp(r, "OK")
        self.assertEqual(r.untagged, [], "the pipelined S2 CAPABILITY was answered")

    @staticmethod
    def target_ssl():
        from harness import Server
        return Server.ssl_context()


# ---------------------------------------------------------------- ENABLE, rev1 / rev2

class Enable(ImapBase):
    def test_enable_unknown_extension_enables_nothing(self):
        r = self.login().cmd("ENABLE X-NO-SUCH-THING")
        self.assert_resp(r, "OK")
        for u in r.lines("* ENABLED"):
            self.assertNotIn("X-NO-SUCH-THING", u.upper())

    def test_enable_before_login_is_refused(self):
        r = self.connect().cmd("ENABLE IMAP4rev2")
        # RFC 5161 §3.1: valid only in the authenticated state (Dovecot: OK, ignored)
        self.assertIn(r.status, ("BAD", "NO", "OK") if self.dovecot else ("BAD", "NO"), r.line)
        self.assertEqual([u for u in r.lines("* ENABLED") if "IMAP4REV2" in u.upper()], [])

    def test_rev1_recent_first_session_sees_recent(self):
        user = self.fresh_user()
        self.target.deliver(user, make_message("recent one", rcpt=user))
        a = self.login(user)
        r = a.select()
        self.assertIn("* 1 RECENT", r.lines("* "))
        self.assertIn("\\Recent", seq_status(a.ok("FETCH 1 (FLAGS)"))[1])
        # RFC 3501 §2.3.2: only one session sees a message as recent
        b = self.login(user)
        r = b.select()
        self.assertIn("* 0 RECENT", r.lines("* "))
        self.assertNotIn("\\Recent", seq_status(b.ok("FETCH 1 (FLAGS)"))[1])

    def test_enable_imap4rev2_drops_recent_and_uses_esearch(self):
        user = self.fresh_user()
        c = self.login(user)
        self.need_cap(c, "IMAP4rev2")
        r = c.ok("ENABLE IMAP4rev2")
        self.assertEqual(r.lines("* ENABLED"), ["* ENABLED IMAP4rev2"])
        self.target.deliver(user, make_message("rev2 one", rcpt=user))
        r = c.select()
        # RFC 9051 §6.3.2: no RECENT; a LIST response with the mailbox name
        self.assertEqual([u for u in r.lines("* ") if u.endswith(" RECENT")], [])
        self.assertIn("* 1 EXISTS", r.lines("* "))
        self.assertEqual([n for _a, _d, n in list_entries(r)], ["INBOX"], r.untagged)
        self.assertNotIn("\\Recent", seq_status(c.ok("FETCH 1 (FLAGS)"))[1])
        # RFC 9051 §7.3.4: SEARCH answers with ESEARCH, never '* SEARCH'
        r = c.ok("SEARCH ALL")
        self.assertEqual(r.lines("* SEARCH"), [])
        tag = r.tag
        self.assertEqual(r.lines("* ESEARCH"), [f'* ESEARCH (TAG "{tag}") ALL 1'])
        # and STATUS knows DELETED (RFC 9051 §6.3.11)
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("STATUS INBOX (DELETED MESSAGES)")
        st = r.lines("* STATUS")[0]
        self.assertIn("DELETED 1", st)
        self.assertIn("MESSAGES 1", st)


# ---------------------------------------------------------------- SELECT / EXAMINE

class Select(ImapBase):
    def test_select_inbox_sends_rfc_responses(self):
        user = self.fresh_user()
        for i in range(2):
            self.target.deliver(user, make_message(f"sel {i}", rcpt=user))
        c = self.login(user)
        r = c.select()
        self.assert_resp(r, "OK", "READ-WRITE")
        flags = [u for u in r.lines("* FLAGS ")]
        self.assertEqual(len(flags), 1, r.untagged)
        self.assertTrue(STD_FLAGS <= set(str(f) for f in value(flags[0][8:].encode())), flags)
        self.assertIn("* 2 EXISTS", r.lines("* "))
        self.assertIn("* 2 RECENT", r.lines("* "))
        uv = self.code_value(r, "UIDVALIDITY")
        self.assertIsNotNone(uv, r.untagged)
        self.assertTrue(0 < int(uv) < 2 ** 32)
        self.assertEqual(self.code_value(r, "UIDNEXT"), "3")
        pf = self.code_value(r, "PERMANENTFLAGS")
        self.assertIsNotNone(pf, r.untagged)
        self.assertTrue(STD_FLAGS <= set(str(f) for f in value(pf.encode())), pf)
        self.assertIn("\\*", [str(f) for f in value(pf.encode())])
        self.assertEqual(self.code_value(r, "UNSEEN"), "1")

    def test_select_empty_mailbox_uidnext_1_and_no_unseen(self):
        c = self.login()
        r = c.select()
        self.assertIn("* 0 EXISTS", r.lines("* "))
        self.assertIsNone(self.code_value(r, "UNSEEN"))
        self.assertEqual(self.code_value(r, "UIDNEXT"), "1")

    def test_examine_is_read_only_and_does_not_set_seen(self):
        user, c = self.session(1)
        c.ok("UNSELECT")
        r = c.select(examine=True)
        self.assert_resp(r, "OK", "READ-ONLY")
        c.ok("FETCH 1 (BODY[])")
        self.assertNotIn("\\Seen", seq_status(c.ok("FETCH 1 (FLAGS)"))[1])
        r = c.cmd("STORE 1 +FLAGS (\\Flagged)")
        # RFC 9051 §6.3.3: no permanent change in EXAMINE (Dovecot answers OK and changes nothing)
        self.assertIn(r.status, ("OK", "NO") if self.dovecot else ("NO",), r.line)
        c.select()
        self.assertNotIn("\\Flagged", seq_status(c.ok("FETCH 1 (FLAGS)"))[1])

    def test_select_missing_mailbox_nonexistent(self):
        c = self.login()
        r = c.cmd('SELECT "No-Such-Box"')
        # RFC 5530 §3 NONEXISTENT; Dovecot 2.3 sends NO without a code here
        self.assert_resp(r, "NO", None if self.dovecot else "NONEXISTENT")
        # RFC 9051 §6.3.2: a failed SELECT leaves no mailbox selected
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)").status, "BAD")

    def test_failed_select_closes_previous_mailbox(self):
        _u, c = self.session(1)
        self.assert_resp(c.cmd('SELECT "No-Such-Box"'), "NO")
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)").status, "BAD")

    def test_select_names_escaping_the_account_refused(self):
        c = self.login()
        for name in ("../../etc", "INBOX/../../x", "&AGE-", "a/../../../b", "..", "/etc/passwd"):
            with self.subTest(name=name):
                r = c.cmd(f"SELECT {quote(name)}")
                self.assert_resp(r, "NO")

    def test_create_names_escaping_the_account_cannot(self):
        c = self.login()
        for name in ("../../etc", "INBOX/../../x", "a/../../../b", "bad\x01ctl"):
            with self.subTest(name=name):
                r = c.cmd(f"CREATE {quote(name)}")
                # Dovecot says NO [CANNOT] for the dots, plain NO for the control character
                self.assert_resp(r, "NO", None if self.dovecot and "\x01" in name else "CANNOT")
        r = c.cmd('CREATE "&AGE-"')
        # RFC 3501 §5.1.3: 'a' must be sent as itself, so &AGE- is not valid mUTF-7
        self.assert_resp(r, "NO", None if self.dovecot else "CANNOT")
        if not self.dovecot:
            data = self.target.srv.data_dir
            for bad in ("etc", "x", "b"):
                self.assertFalse(os.path.exists(os.path.join(data, bad)))
                self.assertFalse(os.path.exists(os.path.join(data, "mail", bad)))


# ---------------------------------------------------------------- mailbox management

def list_entries(r):
    """[(attrs set, delimiter, name)] of the '* LIST' / '* LSUB' responses of r
    (a Response or a list of untagged responses)."""
    out = []
    for u in (r if isinstance(r, list) else r.untagged):
        m = re.match(rb"^\* (LIST|LSUB) ", u, re.I)
        if not m:
            continue
        parts = parse_all(u[m.end():])
        attrs = set(str(a) for a in parts[0])
        delim = parts[1].decode() if isinstance(parts[1], bytes) else parts[1]
        name = parts[2]
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        out.append((attrs, delim, name))
    return out


class Mailboxes(ImapBase):
    def names(self, c, pattern="*", ref=""):
        return {n: a for a, _d, n in list_entries(c.ok(f"LIST {quote(ref)} {quote(pattern)}"))}

    def test_create_list_delete_with_children(self):
        c = self.login()
        c.ok("CREATE Projects")
        c.ok('CREATE "Projects/2024"')
        got = self.names(c, "Projects*")
        self.assertEqual(set(got), {"Projects", "Projects/2024"})
        self.assertIn("\\HasChildren", got["Projects"])
        self.assertIn("\\HasNoChildren", got["Projects/2024"])
        for _a, d, _n in list_entries(c.ok('LIST "" "Projects*"')):
            self.assertEqual(d, "/")
        got = self.names(c, "%")
        self.assertIn("Projects", got)
        self.assertNotIn("Projects/2024", got, "% must not match the hierarchy delimiter")
        c.ok('DELETE "Projects/2024"')
        self.assertEqual(set(self.names(c, "Projects*")), {"Projects"})
        self.assertIn("\\HasNoChildren", self.names(c, "Projects")["Projects"])

    def test_list_empty_pattern_returns_delimiter(self):
        r = self.login().ok('LIST "" ""')
        self.assertEqual(r.lines("* LIST"), ['* LIST (\\Noselect) "/" ""'])

    def test_create_existing_alreadyexists(self):
        c = self.login()
        c.ok("CREATE Twice")
        self.assert_resp(c.cmd("CREATE Twice"), "NO", "ALREADYEXISTS")

    def test_create_inbox_is_refused(self):
        r = self.login().cmd("CREATE INBOX")
        if self.dovecot:
            self.assertEqual(r.status, "OK")     # Dovecot 2.3 ignores it; RFC 9051 §6.3.4 says error
        else:
            self.assert_resp(r, "NO", "ALREADYEXISTS")

    def test_delete_inbox_refused_and_missing_nonexistent(self):
        c = self.login()
        self.assert_resp(c.cmd("DELETE INBOX"), "NO")
        self.assert_resp(c.cmd("DELETE Nope-Not-Here"), "NO", "NONEXISTENT")

    def test_delete_removes_messages(self):
        c = self.login()
        c.ok("CREATE Doomed")
        c.ok("APPEND Doomed {}", self.msg("doomed"))
        c.ok("DELETE Doomed")
        self.assertNotIn("Doomed", self.names(c))
        c.ok("CREATE Doomed")
        r = c.ok("STATUS Doomed (MESSAGES)")
        self.assertEqual(r.lines("* STATUS"), ["* STATUS Doomed (MESSAGES 0)"])

    def test_rename_moves_messages_and_children(self):
        c = self.login()
        c.ok("CREATE Old")
        c.ok('CREATE "Old/Kid"')
        c.ok("APPEND Old {}", self.msg("renamed"))
        c.ok("APPEND Old/Kid {}", self.msg("kid"))
        c.ok("RENAME Old New")
        got = self.names(c)
        self.assertNotIn("Old", got)
        self.assertNotIn("Old/Kid", got)
        self.assertIn("New", got)
        self.assertIn("New/Kid", got)
        self.assertEqual(c.ok("STATUS New (MESSAGES)").lines("* STATUS"), ["* STATUS New (MESSAGES 1)"])
        self.assertEqual(c.ok('STATUS "New/Kid" (MESSAGES)').lines("* STATUS"),
                         ['* STATUS New/Kid (MESSAGES 1)'])

    def test_rename_inbox_moves_messages_and_leaves_empty_inbox(self):
        # RFC 9051 §6.3.6: INBOX rename moves all messages, INBOX stays, empty
        c = self.login()
        for i in range(2):
            c.ok("APPEND INBOX {}", self.msg(f"ib{i}"))
        c.ok('CREATE "Keep"')
        if self.dovecot:
            self.skipTest("Dovecot 2.3 cannot rename INBOX with LAYOUT=maildir++ (NO [CANNOT])")
        c.ok("RENAME INBOX Moved")
        self.assertEqual(c.ok("STATUS Moved (MESSAGES)").lines("* STATUS"), ["* STATUS Moved (MESSAGES 2)"])
        self.assertEqual(c.ok("STATUS INBOX (MESSAGES)").lines("* STATUS"), ["* STATUS INBOX (MESSAGES 0)"])
        self.assertIn("Keep", self.names(c), "INBOX rename must not move other folders")

    def test_rename_onto_existing_alreadyexists(self):
        c = self.login()
        c.ok("CREATE R1")
        c.ok("CREATE R2")
        self.assert_resp(c.cmd("RENAME R1 R2"), "NO", "ALREADYEXISTS")
        self.assert_resp(c.cmd("RENAME Nope-R R3"), "NO", "NONEXISTENT")

    def test_subscribe_lsub_list_subscribed_unsubscribe(self):
        c = self.login()
        c.ok("CREATE Subbed")
        c.ok("SUBSCRIBE Subbed")
        r = c.ok('LSUB "" "*"')
        self.assertIn("Subbed", [n for _a, _d, n in list_entries(r)])
        r = c.ok('LIST (SUBSCRIBED) "" "*"')
        got = {n: a for a, _d, n in list_entries(r)}
        self.assertIn("\\Subscribed", got.get("Subbed", set()), r.untagged)
        c.ok("UNSUBSCRIBE Subbed")
        r = c.ok('LSUB "" "*"')
        self.assertNotIn("Subbed", [n for _a, _d, n in list_entries(r)])

    def test_special_use_folders_exist_for_new_account(self):
        c = self.login()
        r = c.ok('LIST "" "*" RETURN (SPECIAL-USE)')
        got = {n: a for a, _d, n in list_entries(r)}
        for name, use in SPECIAL_USE.items():
            self.assertIn(name, got, r.untagged)
            self.assertIn(use, got[name])
        self.assertIn("INBOX", got)
        # RFC 6154 §3: the SPECIAL-USE selection option lists only those
        r = c.ok('LIST (SPECIAL-USE) "" "*"')
        self.assertEqual(sorted(n for _a, _d, n in list_entries(r)), sorted(SPECIAL_USE))
        for name in SPECIAL_USE:
            self.assert_resp(c.cmd(f"SELECT {name}"), "OK")

    def test_list_status_returns_status_after_each_list(self):
        user = self.fresh_user()
        for i in range(2):
            self.target.deliver(user, make_message(f"ls {i}", rcpt=user))
        c = self.login(user)
        c.ok("CREATE Other")
        r = c.ok('LIST "" "*" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))')
        seen_list = None
        statuses = {}
        for u in r.untagged:
            if u.startswith(b"* LIST"):
                seen_list = list_entries([u])[0][2]
            elif u.startswith(b"* STATUS"):
                name = parse_all(u[9:])[0]
                name = name.decode() if isinstance(name, bytes) else str(name)
                self.assertEqual(name, seen_list, "STATUS must follow its LIST (RFC 5819 §2)")
                statuses[name] = u.decode()
        self.assertRegex(statuses["INBOX"], r"^\* STATUS INBOX \((?=.*MESSAGES 2)(?=.*UNSEEN 2)(?=.*UIDNEXT 3).*\)$")
        self.assertRegex(statuses["Other"], r"MESSAGES 0")

    def test_status_items(self):
        c = self.login()
        sizes = []
        for i in range(3):
            m = self.msg(f"st{i}", body="x" * (100 * (i + 1)) + "\r\n")
            sizes.append(len(m))
            c.ok("APPEND INBOX (\\Seen) {}" if i == 0 else "APPEND INBOX {}", m)
        caps = c.capabilities()
        items = "MESSAGES UIDNEXT UIDVALIDITY UNSEEN"
        has_size = "IMAP4rev2" in caps or "STATUS=SIZE" in caps
        if has_size:
            items += " SIZE"
        r = c.ok(f"STATUS INBOX ({items})")
        st = r.lines("* STATUS")[0]
        kv = value(b"(" + st[len("* STATUS INBOX "):].encode()[1:])
        d = {str(kv[i]).upper(): int(kv[i + 1]) for i in range(0, len(kv), 2)}
        self.assertEqual(d["MESSAGES"], 3)
        self.assertEqual(d["UIDNEXT"], 4)
        self.assertEqual(d["UNSEEN"], 2)
        self.assertGreater(d["UIDVALIDITY"], 0)
        if has_size:
            self.assertEqual(d["SIZE"], sum(sizes))
        self.assert_resp(c.cmd("STATUS Nope-Status (MESSAGES)"), "NO")

    def test_mutf7_names_round_trip_in_rev1(self):
        c = self.login()
        name = "Äpfel & Birnen/Café"
        enc = mutf7(name)
        self.assertEqual(enc, "&AMQ-pfel &- Birnen/Caf&AOk-")
        c.ok(f"CREATE {quote(enc)}")
        got = self.names(c)
        self.assertIn(enc, got)
        self.assertIn(mutf7("Äpfel & Birnen"), got)
        c.ok(f"APPEND {quote(enc)} {{}}", self.msg("mutf7"))
        self.assertEqual(c.ok(f"STATUS {quote(enc)} (MESSAGES)").lines("* STATUS"),
                         [f'* STATUS "{enc}" (MESSAGES 1)'])

    def test_raw_utf8_name_refused_in_rev1(self):
        r = self.login().cmd('CREATE "Caf\u00e9"')
        self.assertEqual(r.status, "NO", r.line)


class Utf8Names(ImapBase):
    def test_utf8_name_seen_as_mutf7_by_rev1_session(self):
        user = self.fresh_user()
        c = self.login(user)
        caps = [x.upper() for x in c.capabilities()]
        ext = "UTF8=ACCEPT" if "UTF8=ACCEPT" in caps else "IMAP4rev2"
        self.need_cap(c, ext)
        self.assertEqual(c.ok(f"ENABLE {ext}").lines("* ENABLED"), [f"* ENABLED {ext}"])
        c.ok('CREATE "Grüße/日本"')
        r = c.ok('LIST "" "Gr*"')
        self.assertIn("Grüße/日本", [n for _a, _d, n in list_entries(r)])
        rev1 = self.login(user)
        r = rev1.ok('LIST "" "Gr*"')
        self.assertIn(mutf7("Grüße/日本"), [n for _a, _d, n in list_entries(r)])
        self.assert_resp(rev1.cmd(f"SELECT {quote(mutf7('Grüße/日本'))}"), "OK")


# ---------------------------------------------------------------- APPEND and FETCH

INTERNALDATE = "05-Jan-2024 10:20:30 +0100"


class AppendFetch(ImapBase):
    def test_append_returns_appenduid_and_keeps_flags_and_date(self):
        user, c = self.session(0)
        sel = c.select()
        uv, un = self.code_value(sel, "UIDVALIDITY"), int(self.code_value(sel, "UIDNEXT"))
        m = self.msg("appended")
        r = c.append("INBOX", m, flags="\\Seen $Forwarded", date=INTERNALDATE)
        self.assert_resp(r, "OK", "APPENDUID")
        self.assertEqual(r.code.split()[1:], [uv, str(un)])
        r = c.ok(f"UID FETCH {un} (FLAGS INTERNALDATE RFC822.SIZE BODY.PEEK[])")
        (_seq, items), = r.fetches()
        self.assertEqual(set(str(f) for f in value(items["FLAGS"])) - {"\\Recent"}, {"\\Seen", "$Forwarded"})
        self.assertEqual(internaldate(items["INTERNALDATE"]), internaldate(f'"{INTERNALDATE}"'.encode()))
        self.assertEqual(int(items["RFC822.SIZE"]), len(m))
        self.assertEqual(value(items["BODY[]"]), m)

    def test_append_to_missing_mailbox_trycreate(self):
        c = self.login()
        self.assert_resp(c.append("No-Such-Folder", self.msg("x")), "NO", "TRYCREATE")

    def test_append_bare_lf_is_stored_as_crlf(self):
        user = self.fresh_user()
        c = self.login(user)
        lf = make_message("bare lf", body="line one\nline two\n\nlast\n")
        self.assertNotIn(b"\r", lf)
        r = c.append("INBOX", lf)
        self.assert_resp(r, "OK")
        c.select()
        (_s, items), = c.ok("FETCH 1 (RFC822.SIZE BODY.PEEK[] BODY.PEEK[TEXT])").fetches()
        want = crlf(lf)
        self.assertEqual(value(items["BODY[]"]), want)
        self.assertEqual(int(items["RFC822.SIZE"]), len(want))
        self.assertEqual(value(items["BODY[TEXT]"]), b"line one\r\nline two\r\n\r\nlast\r\n")
        if not self.dovecot:
            files = self.target.srv.message_files(user)
            self.assertEqual(len(files), 1, files)
            with open(files[0], "rb") as f:
                self.assertEqual(f.read(), want, f"file of {user} not CRLF")

    def test_append_with_non_synchronizing_literal(self):
        c = self.login()
        self.need_cap(c, "LITERAL+")
        r = c.append("INBOX", self.msg("literal plus"), sync=False)
        self.assert_resp(r, "OK", "APPENDUID")

    def test_append_with_bad_date_is_bad(self):
        c = self.login()
        r = c.cmd('APPEND INBOX "32-Foo-2024 99:00:00 +0000" {}', self.msg("bad date"))
        self.assert_resp(r, "BAD")

    def test_fetch_items_exact(self):
        _u, c = self.session(0)
        m = (b"From: Ann <ann@example.net>\r\nTo: bob@example.org\r\nSubject: items\r\n"
             b"Message-ID: <items@example.net>\r\nX-Extra: 1\r\n\r\nFirst line.\r\nSecond line.\r\n")
        c.append("INBOX", m, date=INTERNALDATE)
        c.ok("NOOP")
        r = c.ok("FETCH 1 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)] "
                 "BODY.PEEK[HEADER.FIELDS.NOT (SUBJECT FROM TO MESSAGE-ID)] BODY.PEEK[]<0.10> "
                 "BODY.PEEK[TEXT]<6.100> BODY.PEEK[1] BODY.PEEK[HEADER])")
        (seq, items), = r.fetches()
        self.assertEqual(seq, 1)
        self.assertEqual(items["UID"], b"1")
        self.assertEqual(items["RFC822.SIZE"], str(len(m)).encode())
        self.assertEqual(internaldate(items["INTERNALDATE"]), internaldate(f'"{INTERNALDATE}"'.encode()))
        # RFC 9051 §6.4.5: the fields in message order, then the blank line
        self.assertEqual(value(items["BODY[HEADER.FIELDS (SUBJECT FROM)]"]),
                         b"From: Ann <ann@example.net>\r\nSubject: items\r\n\r\n")
        self.assertEqual(value(items["BODY[HEADER.FIELDS.NOT (SUBJECT FROM TO MESSAGE-ID)]"]),
                         b"X-Extra: 1\r\n\r\n")
        # partial: the item name carries only the origin octet
        self.assertEqual(value(items["BODY[]<0>"]), m[:10])
        self.assertEqual(value(items["BODY[TEXT]<6>"]), b"line.\r\nSecond line.\r\n")
        self.assertEqual(value(items["BODY[1]"]), b"First line.\r\nSecond line.\r\n")
        self.assertEqual(value(items["BODY[HEADER]"]), m[:m.index(b"\r\n\r\n") + 4])
        self.assertNotIn("FLAGS", items, "PEEK must not report a flag change")

    def test_fetch_body_sets_seen_and_peek_does_not(self):
        _u, c = self.session(2)
        c.ok("FETCH 1 (BODY.PEEK[])")
        self.assertNotIn("\\Seen", seq_status(c.ok("FETCH 1 (FLAGS)"))[1])
        r = c.ok("FETCH 1 (BODY[])")
        (_s, items), = r.fetches()
        # RFC 9051 §6.4.5: the implicit \Seen change comes back as FLAGS
        self.assertIn("FLAGS", items, r.untagged)
        self.assertIn("\\Seen", set(str(f) for f in value(items["FLAGS"])))
        self.assertNotIn("\\Seen", seq_status(c.ok("FETCH 2 (FLAGS)"))[2])

    def test_fetch_macros(self):
        _u, c = self.session(1)
        r = c.ok("FETCH 1 FAST")
        (_s, items), = r.fetches()
        self.assertEqual(set(items), {"FLAGS", "INTERNALDATE", "RFC822.SIZE"})
        r = c.ok("FETCH 1 ALL")
        (_s, items), = r.fetches()
        self.assertEqual(set(items), {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"})
        r = c.ok("FETCH 1 FULL")
        (_s, items), = r.fetches()
        self.assertEqual(set(items), {"FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"})

    def test_uid_fetch_always_includes_uid(self):
        _u, c = self.session(3)
        r = c.ok("UID FETCH 1:* (FLAGS)")
        got = [(s, int(items["UID"])) for s, items in r.fetches()]
        self.assertEqual(got, [(1, 1), (2, 2), (3, 3)])

    def test_uid_fetch_of_missing_uids_is_ok_and_empty(self):
        _u, c = self.session(2)
        r = c.ok("UID FETCH 50:60 (FLAGS)")
        self.assertEqual(r.fetches(), [])

    def test_fetch_beyond_last_message_is_bad(self):
        _u, c = self.session(2)
        self.assertIn(c.cmd("FETCH 5 (FLAGS)").status, ("BAD", "NO"))

    def test_fetch_star_is_last_message(self):
        _u, c = self.session(3)
        r = c.ok("FETCH * (UID)")
        self.assertEqual([(s, items["UID"]) for s, items in r.fetches()], [(3, b"3")])

    def test_fetch_missing_section_of_single_part_is_empty(self):
        _u, c = self.session(1)
        r = c.ok("FETCH 1 (BODY.PEEK[1.2.3.4.5.6.7.8.9.1.1] BODY.PEEK[2])")
        (_s, items), = r.fetches()
        for k in ("BODY[1.2.3.4.5.6.7.8.9.1.1]", "BODY[2]"):
            self.assertIn(value(items[k]), (b"", None), items)

    def test_binary_decodes_base64_part_with_nul_bytes(self):
        _u, c = self.session(0)
        c.ok("NOOP")
        self.need_cap(c, "BINARY")
        blob = bytes(range(256)) * 3
        m = (b"From: a@example.net\r\nSubject: bin\r\nMIME-Version: 1.0\r\n"
             b"Content-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n--xx\r\n"
             b"Content-Type: text/plain\r\n\r\nplain part\r\n--xx\r\n"
             b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + base64.encodebytes(blob).replace(b"\n", b"\r\n") + b"--xx--\r\n")
        c.append("INBOX", m)
        c.ok("NOOP")
        r = c.ok("FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2] BINARY.PEEK[1] BINARY.PEEK[2]<0.16>)")
        (_s, items), = r.fetches()
        self.assertTrue(items["BINARY[2]"].startswith(b"~{%d}\r\n" % len(blob)),
                        "RFC 3516 §4.2: NUL bytes need a literal8")
        self.assertEqual(value(items["BINARY[2]"]), blob)
        self.assertEqual(items["BINARY.SIZE[2]"], str(len(blob)).encode())
        self.assertEqual(value(items["BINARY[1]"]), b"plain part")
        self.assertEqual(value(items["BINARY[2]<0>"]), blob[:16])

    def test_fetch_rfc822_items(self):
        _u, c = self.session(0)
        m = self.msg("rfc822 items", body="Body text.\r\n")
        c.append("INBOX", m)
        c.ok("NOOP")
        r = c.ok("FETCH 1 (RFC822.HEADER RFC822.TEXT)")
        (_s, items), = r.fetches()
        i = m.index(b"\r\n\r\n") + 4
        self.assertEqual(value(items["RFC822.HEADER"]), m[:i])
        self.assertEqual(value(items["RFC822.TEXT"]), m[i:])


# ---------------------------------------------------------------- STORE

class Store(ImapBase):
    def test_store_forms_and_responses(self):
        _u, c = self.session(2)
        r = c.ok("STORE 1 +FLAGS (\\Flagged \\Answered)")
        self.assertEqual(norecent(seq_status(r)), {1: {"\\Flagged", "\\Answered"}})
        r = c.ok("STORE 1 -FLAGS (\\Answered)")
        self.assertEqual(norecent(seq_status(r)), {1: {"\\Flagged"}})
        r = c.ok("STORE 1:2 FLAGS (\\Draft)")
        self.assertEqual(norecent(seq_status(r)), {1: {"\\Draft"}, 2: {"\\Draft"}})
        r = c.ok("STORE 2 +FLAGS.SILENT (\\Seen)")
        self.assertEqual(r.fetches(), [], "RFC 9051 §6.4.6: .SILENT sends no FETCH")
        self.assertEqual(norecent(seq_status(c.ok("FETCH 2 (FLAGS)"))), {2: {"\\Draft", "\\Seen"}})

    def test_uid_store_reports_uid(self):
        _u, c = self.session(3)
        r = c.ok("UID STORE 2 +FLAGS (\\Flagged)")
        (seq, items), = r.fetches()
        self.assertEqual((seq, items.get("UID")), (2, b"2"))

    def test_keywords_are_permanent(self):
        _u, c = self.session(1)
        r = c.ok("STORE 1 +FLAGS ($Forwarded project-x)")
        self.assertEqual(norecent(seq_status(r)), {1: {"$Forwarded", "project-x"}})
        c.ok("UNSELECT")
        r = c.select()
        flags = set(str(f) for f in value(r.lines("* FLAGS ")[0][8:].encode()))
        self.assertTrue({"$Forwarded", "project-x"} <= flags, flags)
        self.assertEqual(seq_status(c.ok("FETCH 1 (FLAGS)"))[1] - {"\\Recent"}, {"$Forwarded", "project-x"})

    def test_store_recent_is_refused_or_ignored(self):
        _u, c = self.session(1)
        r = c.cmd("STORE 1 +FLAGS (\\Recent)")
        self.assertIn(r.status, ("BAD", "NO", "OK"))
        self.assertEqual(c.ok("NOOP").status, "OK")


# ---------------------------------------------------------------- COPY / MOVE / EXPUNGE

class CopyMove(ImapBase):
    def dest_uidvalidity(self, c, name):
        r = c.ok(f"STATUS {name} (UIDVALIDITY)")
        return re.search(r"UIDVALIDITY (\d+)", r.lines("* STATUS")[0]).group(1)

    def test_copy_copyuid_maps_source_to_destination(self):
        _u, c = self.session(4)
        c.ok("CREATE Dest")
        src = self.msgids(c, uid=True)
        r = c.cmd("UID COPY 1,3:4 Dest")
        self.assert_resp(r, "OK", "COPYUID")
        _name, uv, sset, dset = r.code.split()
        self.assertEqual(uv, self.dest_uidvalidity(c, "Dest"))
        s, d = parse_seqset(sset), parse_seqset(dset)
        self.assertEqual(s, [1, 3, 4])
        self.assertEqual(len(d), 3)
        c.ok("SELECT Dest")
        dst = self.msgids(c, uid=True)
        self.assertEqual({dst[du] for du in d}, {src[su] for su in s})
        for su, du in zip(s, d):
            self.assertEqual(dst[du], src[su], f"COPYUID pairs uid {su} with {du}")

    def test_copy_keeps_flags_and_source(self):
        _u, c = self.session(2)
        c.ok("STORE 2 +FLAGS.SILENT (\\Flagged $Label1)")
        c.ok("CREATE Dest2")
        c.ok("COPY 2 Dest2")
        self.assertEqual(self.exists(c.ok("NOOP")) or 2, 2)
        self.assertEqual(len(c.ok("FETCH 1:* (UID)").fetches()), 2)
        c.ok("SELECT Dest2")
        self.assertEqual(seq_status(c.ok("FETCH 1 (FLAGS)"))[1] - {"\\Recent"}, {"\\Flagged", "$Label1"})

    def test_copy_to_missing_mailbox_trycreate(self):
        _u, c = self.session(1)
        self.assert_resp(c.cmd("COPY 1 No-Such-Dest"), "NO", "TRYCREATE")
        self.assert_resp(c.cmd("MOVE 1 No-Such-Dest"), "NO", "TRYCREATE")

    def test_uid_move_sends_copyuid_then_expunge(self):
        _u, c = self.session(3)
        c.ok("CREATE MoveDest")
        src = self.msgids(c, uid=True)
        r = c.ok("UID MOVE 2 MoveDest")
        # RFC 6851 §4.3: COPYUID in an untagged OK before the EXPUNGEs
        oks = [i for i, u in enumerate(r.untagged) if u.startswith(b"* OK [COPYUID ")]
        exps = [i for i, u in enumerate(r.untagged) if re.match(rb"^\* \d+ EXPUNGE$", u)]
        self.assertEqual(len(oks), 1, r.untagged)
        self.assertEqual(r.untagged[exps[0]], b"* 2 EXPUNGE")
        self.assertLess(oks[0], exps[0])
        code = r.untagged[oks[0]].decode()
        m = re.match(r"^\* OK \[COPYUID (\d+) (\S+) (\S+)\]", code)
        self.assertEqual(m.group(1), self.dest_uidvalidity(c, "MoveDest"))
        self.assertEqual(parse_seqset(m.group(2)), [2])
        du = parse_seqset(m.group(3))[0]
        self.assertEqual(self.uids(c), [1, 3])
        c.ok("SELECT MoveDest")
        self.assertEqual(self.msgids(c, uid=True), {du: src[2]})

    def test_move_range_expunges_consistently(self):
        _u, c = self.session(5)
        c.ok("CREATE Bulk")
        before = self.uids(c)
        r = c.ok("MOVE 2:4 Bulk")
        self.assertEqual(apply_expunges(r, before), [1, 5])
        self.assertEqual(self.uids(c), [1, 5])
        self.assertEqual(c.ok("STATUS Bulk (MESSAGES)").lines("* STATUS"), ["* STATUS Bulk (MESSAGES 3)"])

    def test_expunge_removes_only_deleted(self):
        user, c = self.session(4)
        c.ok("STORE 2,3 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("EXPUNGE")
        self.assertEqual(apply_expunges(r, [1, 2, 3, 4]), [1, 4])
        self.assertEqual(self.uids(c), [1, 4])
        if not self.dovecot:
            self.assertEqual(len(self.target.srv.message_files(user)), 2)

    def test_uid_expunge_only_given_uids(self):
        _u, c = self.session(3)
        c.ok("STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("UID EXPUNGE 2")
        self.assertEqual([u for u in r.lines("* ") if u.endswith("EXPUNGE")], ["* 2 EXPUNGE"])
        self.assertEqual(self.uids(c), [1, 3])
        self.assertIn("\\Deleted", seq_status(c.ok("FETCH 1 (FLAGS)"))[1])

    def test_close_expunges_silently_unselect_does_not(self):
        _u, c = self.session(3)
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("UNSELECT")
        self.assertEqual(r.untagged, [])
        r = c.select()
        self.assertIn("* 3 EXISTS", r.lines("* "))
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        r = c.ok("CLOSE")
        self.assertEqual([u for u in r.untagged if b"EXPUNGE" in u], [], "RFC 9051 §6.4.1: CLOSE is silent")
        r = c.select()
        self.assertIn("* 2 EXISTS", r.lines("* "))
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)").status, "OK")
        c.ok("CLOSE")
        self.assertEqual(c.cmd("FETCH 1 (FLAGS)").status, "BAD")

    def test_expunge_in_examine_is_refused(self):
        _u, c = self.session(1)
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.select(examine=True)
        r = c.cmd("EXPUNGE")
        # RFC 9051 §6.3.3: no permanent change in a read-only mailbox (Dovecot: OK, does nothing)
        self.assertIn(r.status, ("OK", "NO") if self.dovecot else ("NO",), r.line)
        self.assertEqual([u for u in r.untagged if u.endswith(b"EXPUNGE")], [])
        c.select()
        self.assertEqual(self.uids(c), [1])


# ---------------------------------------------------------------- SEARCH, ESEARCH, SEARCHRES

class Search(ImapBase):
    def setup_box(self):
        _u, c = self.session(0)
        specs = [("alpha report", "ann@example.net", "The quick brown fox.\r\n"),
                 ("beta memo", "bob@example.net", "Lazy dogs sleep.\r\n" + "x" * 3000 + "\r\n"),
                 ("gamma report", "ann@example.net", "Nothing here.\r\n"),
                 ("delta", "cat@example.net", "Quick again.\r\n")]
        for subj, frm, body in specs:
            c.append("INBOX", self.msg(subj, body=body, sender=frm))
        c.select()
        c.ok("STORE 2,4 +FLAGS.SILENT (\\Flagged)")
        c.ok("STORE 1 +FLAGS.SILENT (\\Seen)")
        return c

    def search(self, c, crit, uid=False):
        r = c.ok(f"{'UID ' if uid else ''}SEARCH {crit}")
        lines = r.lines("* SEARCH")
        self.assertEqual(len(lines), 1, r.untagged)
        return [int(x) for x in lines[0].split()[2:]]

    def test_search_keys(self):
        c = self.setup_box()
        cases = {
            "ALL": [1, 2, 3, 4], "FROM ann": [1, 3], "SUBJECT report": [1, 3], "SUBJECT REPORT": [1, 3],
            "BODY quick": [1, 4], "TEXT fox": [1], "FLAGGED": [2, 4], "UNFLAGGED": [1, 3],
            "SEEN": [1], "UNSEEN": [2, 3, 4], "LARGER 2000": [2], "SMALLER 2000": [1, 3, 4],
            "OR FROM bob FROM cat": [2, 4], "NOT FROM ann": [2, 4], "2:3": [2, 3], "UID 3:*": [3, 4],
            "HEADER Subject gamma": [3], "FROM ann FLAGGED": [], "(FROM ann) (SUBJECT gamma)": [3],
            "SENTON 1-Jan-2024": [1, 2, 3, 4], "SENTBEFORE 1-Jan-2024": [], "KEYWORD nokw": [],
        }
        for crit, want in cases.items():
            with self.subTest(crit=crit):
                self.assertEqual(self.search(c, crit), want)

    def test_uid_search_returns_uids(self):
        c = self.setup_box()
        c.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        self.assertEqual(self.search(c, "FLAGGED", uid=True), [2, 4])
        self.assertEqual(self.search(c, "FLAGGED"), [1, 3])

    def test_search_bad_charset(self):
        c = self.setup_box()
        r = c.cmd("SEARCH CHARSET X-NO-SUCH ALL")
        self.assert_resp(r, "NO", "BADCHARSET")

    def test_search_utf8_literal(self):
        _u, c = self.session(0)
        c.append("INBOX", self.msg("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= aus Köln".replace("ö", "o"),
                                   body="Café au lait\r\n"))
        c.append("INBOX", self.msg("plain"))
        c.ok("NOOP")
        r = c.ok("SEARCH CHARSET UTF-8 SUBJECT {}", "grüße".encode())
        self.assertEqual(r.lines("* SEARCH"), ["* SEARCH 1"])

    def test_esearch_min_max_count_all(self):
        c = self.setup_box()
        r = c.ok("SEARCH RETURN (MIN MAX COUNT ALL) UNSEEN")
        es = r.lines("* ESEARCH")
        self.assertEqual(len(es), 1, r.untagged)
        self.assertEqual(r.lines("* SEARCH"), [])
        parts = es[0].split()
        self.assertEqual(parts[2:4], ["(TAG", f'"{r.tag}")'])
        d = dict(zip(parts[4::2], parts[5::2]))
        self.assertEqual(d, {"MIN": "2", "MAX": "4", "COUNT": "3", "ALL": "2:4"})
        r = c.ok("UID SEARCH RETURN (COUNT ALL) FLAGGED")
        self.assertRegex(r.lines("* ESEARCH")[0], rf'^\* ESEARCH \(TAG "{r.tag}"\) UID (?=.*COUNT 2)(?=.*ALL 2,4)')

    def test_esearch_no_match(self):
        c = self.setup_box()
        r = c.ok("SEARCH RETURN (MIN MAX) KEYWORD nothing-has-this")
        self.assertEqual(r.lines("* ESEARCH"), [f'* ESEARCH (TAG "{r.tag}")'])
        r = c.ok("SEARCH RETURN (COUNT) KEYWORD nothing-has-this")
        self.assertEqual(r.lines("* ESEARCH"), [f'* ESEARCH (TAG "{r.tag}") COUNT 0'])

    def test_searchres_save_then_dollar(self):
        c = self.setup_box()
        r = c.ok("UID SEARCH RETURN (SAVE) FLAGGED")
        self.assertEqual([u for u in r.untagged if b"SEARCH" in u], [], "SAVE alone returns nothing")
        r = c.ok("UID FETCH $ (FLAGS)")
        self.assertEqual(sorted(int(i["UID"]) for _s, i in r.fetches()), [2, 4])
        self.assertEqual(self.search(c, "$ FROM cat"), [4])
        # RFC 5182 §2.1: SAVE with MIN (and no other option) saves only the minimum
        r = c.ok("SEARCH RETURN (SAVE MIN) FROM ann")
        self.assertEqual(r.lines("* ESEARCH"), [f'* ESEARCH (TAG "{r.tag}") MIN 1'])
        r = c.ok("FETCH $ (UID)")
        self.assertEqual(sorted(int(i["UID"]) for _s, i in r.fetches()), [1])
        r = c.ok("SEARCH RETURN (SAVE COUNT) FROM ann")
        r = c.ok("FETCH $ (UID)")
        self.assertEqual(sorted(int(i["UID"]) for _s, i in r.fetches()), [1, 3])

    def test_searchres_dollar_is_empty_after_select(self):
        c = self.setup_box()
        c.ok("SEARCH RETURN (SAVE) ALL")
        c.select()
        r = c.ok("FETCH $ (UID)")
        self.assertEqual(r.fetches(), [], "RFC 5182 §2.1: $ is empty after SELECT")


# ---------------------------------------------------------------- the shared MIME corpus

@unittest.skipIf(CORPUS is None, "the MIME corpus (shared/mime-corpus) is not available")
class MimeCorpus(ImapBase):
    """Each corpus message APPENDed as is and FETCHed with the reference items.

    Values compare byte-exact first; ENVELOPE, BODYSTRUCTURE and BODY may differ
    only in how a string is sent (quoted vs literal, RFC 9051 §4.3), which the
    parsed comparison allows. Message 12's BODYSTRUCTURE follows RFC 2046 §5.1.1
    (a delimiter is the whole line "--pb", not a prefix), not Dovecot; so does
    BINARY.SIZE[1] of message 24 (the CRLF before a delimiter is the delimiter's).
    A BINARY.SIZE that Dovecot refused (message 14's invalid "=ZZ" escape) may be
    answered: RFC 2045 §6.7 lets a robust decoder keep such bytes as they are."""

    ITEMS = "RFC822.SIZE ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1.MIME]"
    KEYS = {"size": "RFC822.SIZE", "envelope": "ENVELOPE", "bodystructure": "BODYSTRUCTURE", "body": "BODY",
            "header": "BODY[HEADER]", "text": "BODY[TEXT]", "mime1": "BODY[1.MIME]",
            "binary_size1": "BINARY.SIZE[1]"}
    # RFC 2046 §5.1.1 answer for message 12: one part; the "--pbX" preamble line is not a delimiter
    RFC_OVERRIDES = {"12-boundary-in-preamble-epilogue.eml": {
        "bodystructure": '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 0 NIL NIL NIL NIL) '
                         '"mixed" ("boundary" "pb") NIL NIL NIL)',
        "body": '(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 15 0) "mixed")',
        "mime1": base64.b64encode(b"{28}\r\nContent-Type: text/plain\r\n\r\n").decode(),
        "binary_size1": "15",
    }, "24-nested-boundary-prefix.eml": {
        # part 1 is a multipart whose body ends at "--=_b_inner--": the CRLF after it
        # belongs to the outer delimiter (RFC 2046 §5.1.1), Dovecot counts it (148)
        "binary_size1": "146",
    }}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        with open(os.path.join(CORPUS, "expected.json")) as f:
            cls.expected = json.load(f)
        with open(os.path.join(CORPUS, "search.json")) as f:
            cls.searches = json.load(f)
        cls.files = sorted(cls.expected)
        cls.user = cls.fresh_user()
        c = cls.target.login(cls.user)
        try:
            for name in cls.files:
                with open(os.path.join(CORPUS, name), "rb") as f:
                    data = f.read()
                flags = cls.expected[name].get("append_flags", "()")
                r = c.cmd(f"APPEND INBOX {flags} {{}}", data)
                if r.status != "OK":
                    raise AssertionError(f"APPEND {name}: {r.line}")
        finally:
            c.logout()

    def want(self, name, key):
        exp = dict(self.expected[name])
        if not self.dovecot:
            exp.update(self.RFC_OVERRIDES.get(name, {}))
        v = exp.get(key)
        if key in ("header", "text", "mime1"):
            return base64.b64decode(v)
        if isinstance(v, dict):
            return base64.b64decode(v["base64"])
        return None if v is None else v.encode("utf-8")

    def compare(self, name, item, got, want):
        if got == want:
            return
        try:
            same = value(got) == value(want)
        except Exception as e:              # noqa: BLE001 - report the parse failure as a mismatch
            self.fail(f"{name} {item}: unparsable {got[:300]!r}: {e}")
        self.assertTrue(same, f"{name} {item}:\n got  {got[:2000]!r}\n want {want[:2000]!r}")

    def test_corpus_fetch_matches_reference(self):
        c = self.login(self.user)
        c.select(examine=True)
        for i, name in enumerate(self.files, 1):
            with self.subTest(msg=name):
                r = c.ok(f"FETCH {i} ({self.ITEMS})")
                fetched = {}
                for seq, it in r.fetches():
                    self.assertEqual(seq, i)
                    fetched.update(it)
                for key, item in self.KEYS.items():
                    if key == "binary_size1":
                        continue
                    self.compare(name, item, fetched.get(item), self.want(name, key))

    def test_corpus_binary_size_matches_reference(self):
        c = self.login(self.user)
        c.select(examine=True)
        for i, name in enumerate(self.files, 1):
            with self.subTest(msg=name):
                r = c.cmd(f"FETCH {i} (BINARY.SIZE[1])")
                exp = self.expected[name]
                err = (exp.get("errors") or {}).get("binary_size1")
                if err and r.status == "NO":
                    continue                  # Dovecot: NO [PARSE]
                self.assertEqual(r.status, "OK", r.line)
                (_s, it), = r.fetches()
                if not err:
                    self.assertEqual(it["BINARY.SIZE[1]"], self.want(name, "binary_size1"))
                # RFC 3516 §4.3: the size is that of what BINARY[1] returns
                (_s, body), = c.ok(f"FETCH {i} (BINARY.PEEK[1])").fetches()
                self.assertEqual(int(it["BINARY.SIZE[1]"]), len(value(body["BINARY[1]"]) or b""))

    def test_corpus_search_matches_reference(self):
        c = self.login(self.user)
        c.select(examine=True)
        for q in self.searches["queries"]:
            with self.subTest(search=q["name"]):
                parts, lits = [], []
                for p in q["command"]:
                    if isinstance(p, dict):
                        parts.append("{}")
                        lits.append(p["lit"].encode("utf-8"))
                    else:
                        parts.append(p)
                r = c.cmd("".join(parts), *lits)
                res = self.searches["results"][q["name"]]
                self.assertEqual(r.status, res["status"], r.line)
                got = [u for u in r.untagged if u.startswith(b"* SEARCH")]
                self.assertEqual([g + b"\r\n" for g in got], [res["raw"].encode()], q["name"])


# ---------------------------------------------------------------- two sessions, IDLE

class Concurrent(ImapBase):
    def pair(self, n=3):
        user, a = self.session(n)
        b = self.login(user)
        b.select()
        return user, a, b

    def test_flag_change_reaches_other_session(self):
        _u, a, b = self.pair()
        a.ok("STORE 2 +FLAGS.SILENT (\\Flagged)")
        r = b.ok("NOOP")
        self.assertIn(2, seq_status(r), r.untagged)
        self.assertIn("\\Flagged", seq_status(r)[2])

    def test_expunge_reaches_other_session_not_during_fetch(self):
        _u, a, b = self.pair()
        a.ok("STORE 1 +FLAGS.SILENT (\\Deleted)")
        a.ok("EXPUNGE")
        # RFC 9051 §7.5.1: no EXPUNGE while the other session runs FETCH/STORE/SEARCH
        for cmd in ("FETCH 1:3 (FLAGS)", "STORE 3 +FLAGS.SILENT (\\Seen)", "SEARCH ALL"):
            r = b.ok(cmd)
            self.assertEqual([u for u in r.untagged if u.endswith(b" EXPUNGE")], [], f"{cmd}: {r.untagged}")
        r = b.ok("NOOP")
        self.assertEqual(apply_expunges(r, [1, 2, 3]), [2, 3])
        self.assertEqual(self.uids(b), [2, 3])

    def test_new_mail_reaches_both_sessions(self):
        user, a, b = self.pair(2)
        self.target.deliver(user, make_message("for both", rcpt=user))
        for c in (a, b):
            r = c.ok("NOOP")
            self.assertEqual(self.exists(r), 3, r.untagged)

    def test_append_in_one_session_reaches_the_other(self):
        _u, a, b = self.pair(1)
        a.append("INBOX", self.msg("appended by a"))
        r = b.ok("NOOP")
        self.assertEqual(self.exists(r), 2, r.untagged)

    def test_idle_woken_by_smtp_delivery_within_one_second(self):
        user, a = self.session(1)
        tag = a.idle_start()
        a.expect_silence(0.2)
        self.target.deliver(user, make_message("wake up", rcpt=user))
        t0 = time.monotonic()
        got = a.read_untagged(5.0)
        dt = time.monotonic() - t0
        self.assertEqual(got, b"* 2 EXISTS")
        self.assertLess(dt, 1.0, f"EXISTS came {dt:.2f} s after the delivery was acknowledged")
        r = a.idle_done(tag)
        self.assert_resp(r, "OK")

    def test_idle_sees_flags_and_expunge_from_other_session(self):
        user, a, b = self.pair(2)
        tag = a.idle_start()
        b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)")
        got = a.read_untagged(3.0)
        self.assertIsNotNone(got, "no FETCH during IDLE")
        self.assertRegex(got.decode(), r"^\* 1 FETCH \(.*FLAGS \([^)]*\\Flagged")
        b.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        b.ok("EXPUNGE")
        got = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and b"* 2 EXPUNGE" not in got:
            u = a.read_untagged(deadline - time.monotonic())
            if u is None:
                break
            got.append(u)
        self.assertIn(b"* 2 EXPUNGE", got)
        self.assert_resp(a.idle_done(tag), "OK")

    def test_client_closing_during_idle_leaves_server_serving(self):
        user, a = self.session(1)
        a.idle_start()
        a.close()
        self.target.deliver(user, make_message("after close", rcpt=user))
        c = self.login(user)
        r = c.select()
        self.assertIn("* 2 EXISTS", r.lines("* "))


class Restart(ImapBase):
    def test_uids_and_uidvalidity_survive_restart(self):
        user, c = self.session(0)
        for i in range(3):
            self.target.deliver(user, make_message(f"keep {i}", rcpt=user))
        c.ok("CREATE Sub")
        c.ok("APPEND Sub {}", self.msg("in sub"))
        r = c.select()
        uv, un = self.code_value(r, "UIDVALIDITY"), self.code_value(r, "UIDNEXT")
        c.ok("STORE 2 +FLAGS.SILENT (\\Deleted)")
        c.ok("EXPUNGE")
        c.ok("STORE 1 +FLAGS.SILENT (\\Flagged $Kw)")
        ids = self.msgids(c, uid=True)
        sub_uv = re.search(r"UIDVALIDITY (\d+)", c.ok("STATUS Sub (UIDVALIDITY)").lines("* STATUS")[0]).group(1)
        c.logout()
        self.target.restart()
        c = self.login(user)
        r = c.select()
        self.assertEqual(self.code_value(r, "UIDVALIDITY"), uv)
        self.assertEqual(self.code_value(r, "UIDNEXT"), un)
        self.assertEqual(self.msgids(c, uid=True), ids)
        self.assertEqual(self.uids(c), [1, 3])
        self.assertEqual(seq_status(c.ok("UID FETCH 1 (FLAGS)"))[1] - {"\\Recent"}, {"\\Flagged", "$Kw"})
        self.assertEqual(re.search(r"UIDVALIDITY (\d+)", c.ok("STATUS Sub (UIDVALIDITY)").lines("* STATUS")[0])
                         .group(1), sub_uv)
        self.target.deliver(user, make_message("after restart", rcpt=user))
        c.ok("NOOP")
        self.assertEqual(self.uids(c), [1, 3, int(un)])


# ---------------------------------------------------------------- QUOTA, limits, bad input

class Quota(ImapBase):
    def test_getquotaroot_reports_storage_limit(self):
        c = self.login("quota@example.org")
        c.append("INBOX", self.msg("q1", body="y" * 3000 + "\r\n"))
        r = c.ok("GETQUOTAROOT INBOX")
        roots = r.lines("* QUOTAROOT ")
        self.assertEqual(len(roots), 1, r.untagged)
        root = roots[0].split(" ", 3)[3]
        self.assertTrue(root, roots)
        qs = r.lines("* QUOTA ")
        self.assertEqual(len(qs), 1, r.untagged)
        m = re.match(r'^\* QUOTA (.+) \(STORAGE (\d+) (\d+)(?: .*)?\)$', qs[0])
        self.assertIsNotNone(m, qs[0])
        self.assertEqual(m.group(1), root)
        self.assertEqual(int(m.group(3)), QUOTA_KIB)
        self.assertIn(int(m.group(2)), range(2, 5), "STORAGE usage is in units of 1024 octets (RFC 9208 §5.1)")
        r = c.ok(f"GETQUOTA {root}")
        self.assertEqual(r.lines("* QUOTA "), qs)

    def test_append_over_quota_overquota(self):
        c = self.login("quota@example.org")
        r = c.append("INBOX", self.msg("too big", body=("z" * 78 + "\r\n") * 1000))
        self.assert_resp(r, "NO", "OVERQUOTA")

    def test_unlimited_user_has_no_storage_limit(self):
        c = self.login()
        r = c.cmd("GETQUOTAROOT INBOX")
        self.assert_resp(r, "OK")
        # RFC 9208 §4.3.2: a QUOTAROOT response always (Dovecot omits it when there is no quota)
        self.assertEqual(len(r.lines("* QUOTAROOT ")), 0 if self.dovecot else 1, r.untagged)
        for q in r.lines("* QUOTA "):
            self.assertNotRegex(q, r"STORAGE \d+ \d+")


class BadInput(ImapBase):
    def test_unterminated_quoted_string_is_bad(self):
        c = self.login()
        self.assert_resp(c.cmd('SELECT "INBOX'), "BAD")
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_huge_literal_refused(self):
        c = self.login()
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{4294967296}}\r\n")
        r = c.wait_continuation()
        if self.dovecot and r.startswith(b"+"):
            return                        # Dovecot 2.3 invites the 4 GiB literal (then applies quota)
        self.assertFalse(r.startswith(b"+"), "a 4 GiB literal must not be accepted")
        line = r.decode(errors="replace")
        self.assertRegex(line, rf"^{tag} (BAD|NO)")
        if line.startswith(f"{tag} NO"):
            self.assertIn("[TOOBIG]", line)

    def test_literal_then_disconnect(self):
        user = self.fresh_user()
        c = self.login(user)
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{10}}\r\n")
        self.assertTrue(c.wait_continuation().startswith(b"+"))
        c.send(b"abc")
        c.close()
        d = self.login(user)
        r = d.select()
        self.assertIn("* 0 EXISTS", r.lines("* "))

    def test_deeply_nested_parentheses(self):
        _u, c = self.session(1)
        r = c.cmd("SEARCH " + "(" * 10000 + "ALL" + ")" * 10000)
        if self.dovecot:
            self.assertIn(r.status, ("OK", "BAD"))
        else:
            self.assert_resp(r, "BAD")     # issue 5: bounded nesting depth
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_huge_sequence_set_on_empty_mailbox(self):
        _u, c = self.session(0)
        r = c.cmd("FETCH 1:4294967295,*:1 (FLAGS)")
        self.assertIn(r.status, ("BAD", "NO", "OK"))
        self.assertEqual(r.fetches(), [])
        r = c.cmd("UID FETCH 1:4294967295,*:1 (FLAGS)")
        self.assertIn(r.status, ("OK",))
        self.assertEqual(r.fetches(), [])
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_sequence_zero_is_bad(self):
        _u, c = self.session(1)
        self.assert_resp(c.cmd("FETCH 0 (FLAGS)"), "BAD")

    def test_long_command_line_refused(self):
        # over the 64 KiB line limit: a BAD (and the session goes on), or BYE and close
        c = self.login()
        c.send("L1 SELECT " + "a" * (70 * 1024) + "\r\n")
        try:
            first = c.read_response()
        except (ConnectionClosed, ConnectionResetError) as e:
            self.fail(f"connection dropped without BAD or BYE: {e!r}")
        if first.startswith(b"* BYE"):
            try:
                self.assertEqual(c.read_until_close(), b"", "data after BYE")
            except ConnectionResetError:
                pass                      # our unread 70 KiB make the close a reset
            return
        self.assertRegex(first.decode(errors="replace"), r"^L1 (BAD|NO) ")
        self.assert_resp(c.cmd("NOOP"), "OK")


class PostlingLimits(ImapBase):
    """Limits that are Postling's choices (issue 5 §5), Postling only."""

    @classmethod
    def setUpClass(cls):
        if target_kind() != "postling":
            raise unittest.SkipTest("Postling's own limits")
        super().setUpClass()

    def test_append_beyond_appendlimit_toobig_before_continuation(self):
        c = self.login()
        caps = c.capabilities()
        lim = [int(x.split("=", 1)[1]) for x in caps if x.upper().startswith("APPENDLIMIT=")]
        self.assertEqual(len(lim), 1, caps)
        tag = c.next_tag()
        c.send(f"{tag} APPEND INBOX {{{lim[0] + 1}}}\r\n")
        r = c.wait_continuation().decode()
        self.assertRegex(r, rf"^{tag} NO \[TOOBIG\]")
        self.assert_resp(c.cmd("NOOP"), "OK")

    def test_parallel_sessions_per_user_are_capped(self):
        user = self.fresh_user()
        ok, refused = [], 0
        for _ in range(100):
            c = self.connect()
            try:
                r = c.cmd(f"LOGIN {quote(user)} {quote(PW)}")
            except (ConnectionClosed, OSError):
                refused += 1
                continue
            if r.status == "OK":
                ok.append(c)
            else:
                refused += 1
                self.assertEqual(r.status, "NO", r.line)
        self.assertEqual(len(ok), 8, "issue 5: at most 8 parallel sessions per user")
        self.assertEqual(refused, 92)
        ok[0].logout()
        deadline = time.monotonic() + 5
        while True:
            c = self.connect()
            r = c.cmd(f"LOGIN {quote(user)} {quote(PW)}")
            if r.status == "OK" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assert_resp(r, "OK")


if __name__ == "__main__":
    unittest.main()
