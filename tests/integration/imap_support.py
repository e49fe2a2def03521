"""IMAP test support: a raw IMAP client, an IMAP response parser, and an IMAP
target that is either Postling (harness.Server) or a private Dovecot.

    t = make_target(users={"a@example.org": "pw"}).start()   # IMAP_TARGET picks the server
    c = t.login("a@example.org")
    r = c.cmd("SELECT INBOX")          # r.status, r.code, r.untagged
    t.deliver("a@example.org", b"Subject: x\r\n\r\nbody\r\n")
    t.close()

IMAP_TARGET=postling (default, the only one CI runs) or IMAP_TARGET=dovecot.
The Dovecot target exists so that the tests themselves can be checked against a
reference server: it runs Debian's dovecot (`dovecot -F -c <generated config>`)
with base_dir, state and log under a temp dir, a passwd-file passdb/userdb,
maildir:~/Maildir:LAYOUT=maildir++ with "/" as the hierarchy separator, the
special-use folders Postling creates, and the quota plugin. It is stopped by pid.
"""
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import harness
from harness import Server, ServerError, SmtpConn, free_port, make_cert

IO_TIMEOUT = 15.0
DOVECOT = shutil.which("dovecot") or ("/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None)
DOVECOT_LDA = "/usr/lib/dovecot/dovecot-lda"
SPECIAL_USE = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
               "Archive": "\\Archive"}


def target_kind():
    return os.environ.get("IMAP_TARGET", "postling").strip().lower() or "postling"


# ---------------------------------------------------------------- response parsing

class ParseError(ValueError):
    pass


class Atom(str):
    """An IMAP atom or number as sent (NIL is None, strings are bytes)."""


_ATOM_SPECIALS = b"(){ %\"\\]\r\n"


def parse_value(data, pos=0):
    """One IMAP value at data[pos:]: list -> list, quoted string / literal -> bytes,
    NIL -> None, anything else -> Atom (flags, numbers, section names like
    BODY[1.MIME] with their brackets). Returns (value, new pos)."""
    n = len(data)
    while pos < n and data[pos:pos + 1] == b" ":
        pos += 1
    if pos >= n:
        raise ParseError("value expected at end of data")
    ch = data[pos:pos + 1]
    if ch == b"(":
        out = []
        pos += 1
        while True:
            while pos < n and data[pos:pos + 1] == b" ":
                pos += 1
            if pos >= n:
                raise ParseError("unterminated list")
            if data[pos:pos + 1] == b")":
                return out, pos + 1
            v, pos = parse_value(data, pos)
            out.append(v)
    if ch == b'"':
        out = bytearray()
        pos += 1
        while pos < n:
            c = data[pos:pos + 1]
            if c == b"\\":
                out += data[pos + 1:pos + 2]
                pos += 2
                continue
            if c == b'"':
                return bytes(out), pos + 1
            out += c
            pos += 1
        raise ParseError("unterminated quoted string")
    m = re.compile(rb"~?\{(\d+)\+?\}\r\n").match(data, pos)
    if m:
        start = m.end()
        end = start + int(m.group(1))
        if end > n:
            raise ParseError("literal runs past the data")
        return data[start:end], end
    # atom, possibly with a [section] (which may contain spaces and parens) and <partial>
    start = pos
    depth = 0
    while pos < n:
        c = data[pos:pos + 1]
        if c == b"[":
            depth += 1
        elif c == b"]" and depth:
            depth -= 1
        elif depth == 0 and c in b" ()\r\n":
            break
        pos += 1
    if pos == start:
        raise ParseError(f"unexpected {data[pos:pos + 20]!r}")
    tok = data[start:pos].decode("latin-1")
    return (None if tok.upper() == "NIL" else Atom(tok)), pos


def parse_all(data):
    """All space-separated values of data."""
    out, pos = [], 0
    while pos < len(data):
        if data[pos:pos + 1] == b" ":
            pos += 1
            continue
        v, pos = parse_value(data, pos)
        out.append(v)
    return out


def split_items(data, pos):
    """Split the '(name value name value ...)' list that starts at data[pos] into
    {NAME: raw value bytes} keeping each value's bytes exactly as sent."""
    if data[pos:pos + 1] != b"(":
        raise ParseError(f"'(' expected: {data[pos:pos + 40]!r}")
    pos += 1
    items = {}
    while True:
        while data[pos:pos + 1] == b" ":
            pos += 1
        if data[pos:pos + 1] == b")":
            return items
        name, pos = parse_value(data, pos)
        if not isinstance(name, Atom):
            raise ParseError(f"item name expected, got {name!r}")
        while data[pos:pos + 1] == b" ":
            pos += 1
        vstart = pos
        _v, pos = parse_value(data, pos)
        items[name.upper()] = data[vstart:pos]


FETCH_RE = re.compile(rb"^\* (\d+) FETCH ", re.I)


def parse_fetch(line):
    """(seq, {ITEM: raw bytes}) of one '* n FETCH (...)' response."""
    m = FETCH_RE.match(line)
    if not m:
        raise ParseError(f"not a FETCH response: {line[:80]!r}")
    return int(m.group(1)), split_items(line, m.end())


def value(raw):
    """Parsed form of one raw item value (literal and quoted strings compare equal)."""
    v, pos = parse_value(raw, 0)
    if raw[pos:].strip():
        raise ParseError(f"trailing data after value: {raw[pos:pos + 40]!r}")
    return v


def parse_seqset(text):
    """'1:3,7' -> [1, 2, 3, 7] (no '*')."""
    out = []
    for part in text.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out += list(range(min(a, b), max(a, b) + 1))
        elif part:
            out.append(int(part))
    return out


# ---------------------------------------------------------------- raw client

RESP_RE = re.compile(r"^(OK|NO|BAD|BYE|PREAUTH)(?: \[([^\]]*)\])?(?: (.*))?$", re.I | re.S)


class Response:
    """A tagged completion with the untagged responses that came before it."""

    def __init__(self, tag, line, untagged):
        self.tag = tag
        self.line = line                       # tagged line as str, without the tag
        self.untagged = untagged               # list of bytes (literals inline, no final CRLF)
        m = RESP_RE.match(line)
        if not m:
            raise AssertionError(f"malformed tagged response {tag} {line!r}")
        self.status = m.group(1).upper()
        self.code = m.group(2)                 # e.g. "APPENDUID 1 5" or None
        self.text = m.group(3) or ""

    @property
    def code_name(self):
        return self.code.split()[0].upper() if self.code else None

    def lines(self, prefix):
        """Untagged responses starting with prefix (case-insensitive), as str."""
        p = prefix.upper()
        return [u.decode("utf-8", "replace") for u in self.untagged
                if u.decode("latin-1").upper().startswith(p)]

    def fetches(self):
        return [parse_fetch(u) for u in self.untagged if FETCH_RE.match(u)]

    def __repr__(self):
        return f"<{self.tag} {self.line!r} untagged={self.untagged!r}>"


class ConnectionClosed(Exception):
    pass


class ImapConn:
    """Line-exact IMAP client: sends what it is told, reads responses with
    their literals, never reorders or filters anything."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.greeting = None
        self.ntag = 0
        self.pending = []              # untagged responses read while waiting for something else

    @classmethod
    def connect(cls, host, port, tls=False, timeout=IO_TIMEOUT, source=None):
        s = socket.create_connection((host, port), timeout=timeout,
                                     source_address=(source, 0) if source else None)
        if tls:
            s = Server.ssl_context().wrap_socket(s)
        c = cls(s)
        c.greeting = c.read_response().decode("utf-8", "replace")
        return c

    # -- I/O
    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.sock.sendall(data)

    def _fill(self):
        chunk = self.sock.recv(262144)
        if not chunk:
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def readline(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            if len(self.buf) > 64 * 1024 * 1024:
                raise AssertionError("response line without CRLF longer than 64 MiB")
            self._fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_response(self):
        """One response: a line plus any literals it announces, as sent (minus the last CRLF)."""
        out = bytearray()
        while True:
            line = self.readline()
            out += line
            m = re.search(rb"\{(\d+)\}$", line)
            if not m:
                return bytes(out)
            out += b"\r\n" + self.read_exact(int(m.group(1)))

    def next_tag(self):
        self.ntag += 1
        return f"T{self.ntag:03d}"

    def wait_tagged(self, tag):
        untagged = self.pending
        self.pending = []
        while True:
            r = self.read_response()
            if r.startswith(tag.encode() + b" "):
                return Response(tag, r[len(tag) + 1:].decode("utf-8", "replace"), untagged)
            if r.startswith(b"+"):
                raise AssertionError(f"unexpected continuation request {r!r} while waiting for {tag}")
            untagged.append(r)

    def wait_continuation(self):
        """Read up to a '+' continuation request; a tagged reply instead is returned."""
        while True:
            r = self.read_response()
            if r.startswith(b"+"):
                return r
            if r.startswith(b"*"):
                self.pending.append(r)
                continue
            return r

    def cmd(self, text, *literals, tag=None, sync=True):
        """Send '<tag> text' (str or bytes); each '{}' placeholder in the text is
        replaced by a literal from literals (synchronizing unless sync=False,
        which uses LITERAL+). Returns the Response."""
        tag = tag or self.next_tag()
        if isinstance(text, str):
            text = text.encode("utf-8")
        pieces = text.split(b"{}")
        if len(pieces) != len(literals) + 1:
            raise ValueError("placeholder count does not match literals")
        # Whatever need not wait for a continuation goes out in one write, as real
        # clients send it: a command split over several small writes meets Nagle's
        # algorithm and the server's delayed ACK (~40 ms per command).
        out = tag.encode() + b" " + pieces[0]
        for lit, rest in zip(literals, pieces[1:]):
            if isinstance(lit, str):
                lit = lit.encode("utf-8")
            out += b"{%d%s}\r\n" % (len(lit), b"" if sync else b"+")
            if sync:
                self.send(out)
                out = b""
                r = self.wait_continuation()
                if not r.startswith(b"+"):
                    if r.startswith(tag.encode() + b" "):
                        return Response(tag, r[len(tag) + 1:].decode("utf-8", "replace"),
                                        self._take_pending())
                    raise AssertionError(f"expected continuation, got {r!r}")
            out += lit + rest
        self.send(out + b"\r\n")
        return self.wait_tagged(tag)

    def _take_pending(self):
        p, self.pending = self.pending, []
        return p

    def ok(self, text, *literals, **kw):
        """cmd() that must complete with OK."""
        r = self.cmd(text, *literals, **kw)
        if r.status != "OK":
            raise AssertionError(f"{text!r}: {r.status} {r.line!r}")
        return r

    def expect_silence(self, seconds=0.3):
        if self.buf or self.pending:
            raise AssertionError(f"unexpected data: {self.buf!r} {self.pending!r}")
        old = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
            return
        finally:
            self.sock.settimeout(old)
        raise AssertionError(f"unexpected data: {data!r}")

    def read_until_close(self, limit=10.0):
        self.sock.settimeout(limit)
        data, self.buf = self.buf, b""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk

    # -- common commands
    def login(self, user, password):
        return self.ok(f"LOGIN {quote(user)} {quote(password)}")

    def capabilities(self):
        r = self.ok("CAPABILITY")
        caps = r.lines("* CAPABILITY ")
        if len(caps) != 1:
            raise AssertionError(f"CAPABILITY: want one * CAPABILITY line, got {r.untagged!r}")
        return caps[0].split()[2:]

    def append(self, mailbox, data, flags=None, date=None, sync=True):
        extra = ""
        if flags is not None:
            extra += f" ({flags})" if not flags.startswith("(") else f" {flags}"
        if date:
            extra += f' "{date}"'
        return self.cmd(f"APPEND {quote(mailbox)}{extra} {{}}", data, sync=sync)

    def select(self, mailbox="INBOX", examine=False):
        return self.ok(f"{'EXAMINE' if examine else 'SELECT'} {quote(mailbox)}")

    def idle_start(self):
        tag = self.next_tag()
        self.send(f"{tag} IDLE\r\n")
        r = self.wait_continuation()
        if not r.startswith(b"+"):
            raise AssertionError(f"IDLE: {r!r}")
        return tag

    def idle_done(self, tag):
        self.send(b"DONE\r\n")
        return self.wait_tagged(tag)

    def read_untagged(self, timeout):
        """The next untagged response within timeout seconds, else None."""
        if self.pending:
            return self.pending.pop(0)
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return self.read_response()
        except (socket.timeout, TimeoutError):
            return None
        finally:
            self.sock.settimeout(old)

    def logout(self):
        try:
            self.cmd("LOGOUT")
        except (ConnectionClosed, OSError):
            pass
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def quote(s):
    """IMAP quoted string (for names without CR/LF)."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def seq_status(r):
    """{seq: flags set} of the FETCH FLAGS responses in r.untagged."""
    out = {}
    for seq, items in r.fetches():
        if "FLAGS" in items:
            out[seq] = set(str(f) for f in value(items["FLAGS"]))
    return out


# ---------------------------------------------------------------- targets

_postling_refusal = None


def postling_imap_refusal():
    """None when this postling accepts an imap listener, else the config error
    (checked once per process with `postling check-config`)."""
    global _postling_refusal
    if _postling_refusal is None:
        tmp = tempfile.mkdtemp(prefix="postling-imapcheck-")
        try:
            path = os.path.join(tmp, "c.yaml")
            with open(path, "w") as f:
                f.write(harness.to_yaml({
                    "server": {"hostname": "test.example", "data_dir": tmp, "user": ""},
                    "tls": {"self_signed": True},
                    "listeners": [{"protocol": "imap", "address": ["127.0.0.1"], "port": free_port()}],
                    "domains": ["example.org"]}) + "\n")
            p = subprocess.run([harness.postling_bin(), "check-config", "-c", path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
            out = p.stdout.decode(errors="replace").strip()
            _postling_refusal = "" if p.returncode == 0 else (out or f"check-config exit {p.returncode}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _postling_refusal or None


class Target:
    kind = "?"
    host = "127.0.0.1"

    def __init__(self, users):
        self.passwords = {}
        self.quotas = {}
        for addr, spec in users.items():
            spec = {"password": spec} if isinstance(spec, str) else spec
            self.passwords[addr] = spec["password"]
            if spec.get("quota"):
                self.quotas[addr] = spec["quota"]

    def connect(self, tls=False, port_name=None, source=None):
        return ImapConn.connect(self.host, self.port(port_name or ("imaps" if tls else "imap")), tls=tls,
                                source=source)

    def login(self, user, **kw):
        c = self.connect(**kw)
        c.login(user, self.passwords[user])
        return c

    def password(self, user):
        return self.passwords[user]


class PostlingTarget(Target):
    """Postling via harness.Server with imap, imaps and smtp listeners; mail
    arrives through SMTP like in production."""
    kind = "postling"

    def __init__(self, users, config=None, name="imap"):
        super().__init__(users)
        self.srv = Server(users=users, listeners=("imap", "imaps", "smtp"), allow_plaintext=True,
                          config=config, name=name)

    def start(self):
        self.srv.start()
        return self

    def port(self, name):
        return self.srv.port(name)

    def deliver(self, user, data, sender="sender@example.net"):
        data = harness.crlf(data)
        c = SmtpConn.connect(self.srv, "smtp")
        try:
            c.ehlo()
            rs = c.transaction(sender, [user], data)
            if not rs[-1] or not rs[-1].startswith("250"):
                raise ServerError(f"SMTP delivery to {user} failed: {rs!r}")
            c.quit()
        finally:
            c.close()

    def restart(self):
        self.srv.restart()

    def assert_alive(self):
        self.srv.assert_alive()

    def log_tail(self):
        return self.srv.log_tail()

    def close(self):
        srv = self.srv
        try:
            srv.assert_alive()
            if srv.running():
                rc = srv.stop()
                srv.check_sanitizers()
                if rc != 0:
                    raise ServerError(f"server exit status {rc} on SIGTERM\n{srv.log_tail()}")
        finally:
            srv.close()


def _quota_bytes(q):
    m = re.fullmatch(r"(\d+)([KMG]?)", str(q).strip().upper())
    if not m:
        raise ValueError(f"bad quota {q!r}")
    return int(m.group(1)) * {"": 1, "K": 1024, "M": 1 << 20, "G": 1 << 30}[m.group(2)]


class DovecotTarget(Target):
    """A private Dovecot on free loopback ports (reference server for the tests)."""
    kind = "dovecot"

    def __init__(self, users, extra_conf="", name="imap", imap_process_limit=200):
        super().__init__(users)
        if DOVECOT is None:
            raise unittest_skip("dovecot is not installed (apt-get install dovecot-imapd)")
        self.tmp = tempfile.mkdtemp(prefix=f"dovecot-{name}-")
        os.chmod(self.tmp, 0o755)         # mail processes run as the mail uid below
        self.ports = {"imap": free_port(), "imaps": free_port()}
        self.conf = os.path.join(self.tmp, "dovecot.conf")
        self.log = os.path.join(self.tmp, "dovecot.log")
        self.proc = None
        if os.geteuid() == 0:
            # root: Dovecot drops privileges itself; mail runs as nobody, the
            # internal and login processes as Debian's dovecot/dovenull users.
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            internal, login, group = "dovecot", "dovenull", "dovecot"
        else:
            me = pwd.getpwuid(os.getuid())
            self.mail_uid, self.mail_gid = me.pw_uid, me.pw_gid
            internal = login = me.pw_name
            group = ""
        cert, key = make_cert(self.tmp, "dovecot", "localhost")
        for d in ("run", "state", "home"):
            os.mkdir(os.path.join(self.tmp, d))
        passwd = []
        for addr, pw in self.passwords.items():
            fields = []
            if addr in self.quotas:
                fields.append(f"userdb_quota_rule=*:storage={_quota_bytes(self.quotas[addr])}B")
            passwd.append(f"{addr}:{{PLAIN}}{pw}:{self.mail_uid}:{self.mail_gid}::"
                          f"{self.home(addr)}::{' '.join(fields)}")
            os.makedirs(self.home(addr))
            os.chown(self.home(addr), self.mail_uid, self.mail_gid)
            os.chown(os.path.dirname(self.home(addr)), self.mail_uid, self.mail_gid)
        with open(os.path.join(self.tmp, "passwd"), "w") as f:
            f.write("\n".join(passwd) + "\n")
        mailboxes = "\n".join(
            f"  mailbox {n} {{\n    auto = create\n    special_use = {u}\n  }}" for n, u in SPECIAL_USE.items())
        t = self.tmp
        conf = f"""# generated by tests/integration/imap_support.py
base_dir = {t}/run
state_dir = {t}/state
log_path = {self.log}
instance_name = dovecot-test-{os.path.basename(t)}
protocols = imap
listen = 127.0.0.1
default_internal_user = {internal}
default_login_user = {login}
{"default_internal_group = " + group if group else ""}
first_valid_uid = {min(self.mail_uid, 500) if self.mail_uid else 1}
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
mail_location = maildir:~/Maildir:LAYOUT=maildir++
mail_plugins = quota
mail_max_userip_connections = 5000
postmaster_address = postmaster@example.org
lda_mailbox_autocreate = yes
maildir_very_dirty_syncs = no
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {t}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {t}/passwd
}}
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
{mailboxes}
}}
plugin {{
  quota = maildir:User quota
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_quota
}}
default_process_limit = {imap_process_limit}
default_client_limit = {max(1000, imap_process_limit * 2)}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.ports["imap"]}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.ports["imaps"]}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
  client_limit = {max(1000, imap_process_limit * 2)}
}}
service imap {{
  # one session per process, as shipped: the master must not queue a second
  # client on a busy imap process (default_client_limit is raised above)
  client_limit = 1
  process_limit = {imap_process_limit}
}}
service anvil {{
  client_limit = {max(1000, imap_process_limit * 2) + 100}
}}
service auth {{
  client_limit = {max(1000, imap_process_limit * 2) + 100}
}}
{extra_conf}
"""
        with open(self.conf, "w") as f:
            f.write(conf)

    def home(self, addr):
        local, domain = addr.lower().split("@")
        return os.path.join(self.tmp, "home", domain, local)

    def port(self, name):
        return self.ports[name]

    def start(self):
        self._logf = open(os.path.join(self.tmp, "dovecot.stderr"), "ab")
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=self._logf, stderr=self._logf, cwd=self.tmp)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"dovecot exited with {self.proc.returncode}\n{self.log_tail()}")
            try:
                c = ImapConn.connect(self.host, self.ports["imap"], timeout=2)
                c.close()
                return self
            except OSError:
                time.sleep(0.05)
        raise ServerError(f"dovecot did not answer within 15 s\n{self.log_tail()}")

    def deliver(self, user, data, sender="sender@example.net"):
        """dovecot-lda as the user (it drops to the userdb uid when run as root)."""
        p = subprocess.run([DOVECOT_LDA, "-c", self.conf, "-d", user, "-f", sender], input=data,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=30)
        if p.returncode != 0:
            raise ServerError(f"dovecot-lda {user}: rc={p.returncode} {p.stdout!r}\n{self.log_tail()}")

    def pids(self):
        """Dovecot's master and all its children (for RSS accounting)."""
        if not self.proc:
            return []
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            try:
                with open(f"/proc/{pid}/task/{pid}/children") as f:
                    todo += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return out

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if getattr(self, "_logf", None):
            self._logf.close()
            self._logf = None

    def restart(self):
        self.stop()
        self.start()

    def assert_alive(self):
        if self.proc is None or self.proc.poll() is not None:
            raise ServerError(f"dovecot is not running\n{self.log_tail()}")

    def log_tail(self, n=40):
        text = ""
        for p in (self.log, os.path.join(self.tmp, "dovecot.stderr")):
            try:
                with open(p, "rb") as f:
                    text += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return "--- dovecot log ---\n" + "\n".join(text.splitlines()[-n:])

    def close(self):
        try:
            self.stop()
        finally:
            if os.environ.get("POSTLING_KEEP_TMP"):
                print(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)


def unittest_skip(reason):
    import unittest
    return unittest.SkipTest(reason)


def make_target(users, postling_config=None, name="imap", **dovecot_kw):
    """The IMAP server under test (IMAP_TARGET), not yet started. Raises
    unittest.SkipTest when it cannot run here."""
    kind = target_kind()
    if kind == "dovecot":
        return DovecotTarget(users, name=name, **dovecot_kw)
    if kind != "postling":
        raise ValueError(f"IMAP_TARGET={kind!r}: use postling or dovecot")
    why = postling_imap_refusal()
    if why:
        raise unittest_skip(f"this postling does not accept an imap listener yet: {why.splitlines()[0][:200]}")
    return PostlingTarget(users, config=postling_config, name=name)
