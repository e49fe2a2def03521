"""Test harness: runs the real `postling` binary on free loopback ports.

    srv = Server(users={"alice@example.org": "pw"}).start()
    c = Pop3Conn.connect(srv, "pop3")
    ...
    srv.close()

Only 127.0.0.1 / ::1 (and other 127/8 source addresses) are ever used.
The binary comes from $POSTLING_BIN (tests/run.py sets it), else build/postling.
"""
import base64
import copy
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

READY_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
IO_TIMEOUT = 15.0

SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "ERROR: ThreadSanitizer", "ERROR: UndefinedBehaviorSanitizer")


def postling_bin():
    b = os.environ.get("POSTLING_BIN") or os.path.join(REPO, "build", "postling")
    if not os.path.isfile(b):
        raise FileNotFoundError(f"postling binary not found: {b} (set POSTLING_BIN)")
    return os.path.abspath(b)


def free_port(host="127.0.0.1"):
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def have_ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


# ---------------------------------------------------------------- password hashes

_hash_cache = {}
_hash_lock = threading.Lock()


def hash_password(password):
    """crypt(3) hash from `postling passwd` (password on stdin), cached per run."""
    with _hash_lock:
        h = _hash_cache.get(password)
        if h is None:
            p = subprocess.run([postling_bin(), "passwd"], input=password.encode(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
            out = p.stdout.decode().strip()
            if p.returncode != 0 or not out.startswith("$"):
                raise RuntimeError(f"postling passwd failed: rc={p.returncode} "
                                   f"stdout={p.stdout!r} stderr={p.stderr!r}")
            h = out.splitlines()[-1].strip()
            _hash_cache[password] = h
        return h


# ---------------------------------------------------------------- YAML writer

def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return '""'
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v))          # a JSON string is a valid YAML double-quoted scalar


def to_yaml(obj, ind=0):
    pad = "  " * ind
    lines = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, ind + 1))
            elif isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, ind + 1))
            elif isinstance(v, list):
                lines.append(f"{pad}{k}: [" + ", ".join(_scalar(x) for x in v) + "]")
            elif isinstance(v, dict):
                lines.append(f"{pad}{k}: {{}}")
            else:
                lines.append(f"{pad}{k}: {_scalar(v)}")
    elif isinstance(obj, list):
        for item in obj:
            if isinstance(item, dict):
                sub = to_yaml(item, ind + 1).split("\n")
                lines.append(f"{pad}- " + sub[0].lstrip())
                lines.extend(sub[1:])
            else:
                lines.append(f"{pad}- {_scalar(item)}")
    return "\n".join(lines)


def deep_merge(base, extra):
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# ---------------------------------------------------------------- server

class ServerError(AssertionError):
    pass


class Server:
    """One `postling serve` process with its own temp dir, config and log.

    users: {address: password} or {address: {"password": ..., "secret": ..., "aliases": [...]}}
    users_file: same shape; written to a separate file named by `users_file:`.
    listeners: protocol names, each gets a free port on 127.0.0.1 (and ::1 if ipv6).
    config: dict deep-merged over the generated config (e.g. {"auth": {"max_failures": 3}}).
    """

    def __init__(self, users=None, users_file=None, listeners=("pop3", "pop3s"),
                 allow_plaintext=False, config=None, ipv6=False, name="postling"):
        self.bin = postling_bin()
        self.name = name
        self.tmp = tempfile.mkdtemp(prefix=f"postling-{name}-")
        self.data_dir = os.path.join(self.tmp, "data")
        os.mkdir(self.data_dir)
        self.config_path = os.path.join(self.tmp, "postling.yaml")
        self.stderr_path = os.path.join(self.tmp, "postling.log")   # stderr of serve
        self.log_path = self.stderr_path        # where JSON log lines go (log.file if set)
        self.users_file_path = os.path.join(self.tmp, "users.yaml") if users_file is not None else ""
        self.ipv6 = ipv6
        self.ports = {}
        for proto in listeners:
            self.ports[proto] = free_port()
        self.passwords = {}        # address -> plaintext password
        self.secrets = {}          # address -> plaintext secret
        self.sensitive = set()     # strings that must never appear in the log
        self.users = self._user_entries(users or {})
        self.file_users = self._user_entries(users_file) if users_file is not None else None
        self.extra = config or {}
        if (self.extra.get("log") or {}).get("file"):
            self.log_path = self.extra["log"]["file"]
        self.allow_plaintext = allow_plaintext
        self.proc = None
        self.stopped = True        # not running, or stopped on purpose (stop/kill9)
        self.started_once = False
        self.log_offset = 0
        self._logf = None
        self.write_config()
        if self.file_users is not None:
            self.write_users_file(users_file)

    # -- config
    def _user_entries(self, users):
        out = []
        for addr, spec in users.items():
            if isinstance(spec, str):
                spec = {"password": spec}
            ent = {"address": addr}
            pw = spec.get("password")
            if pw:
                self.passwords[addr] = pw
                self.sensitive.add(pw)
                ent["password"] = hash_password(pw)
            if spec.get("secret"):
                self.secrets[addr] = spec["secret"]
                self.sensitive.add(spec["secret"])
                ent["secret"] = spec["secret"]
            if spec.get("aliases"):
                ent["aliases"] = list(spec["aliases"])
            if spec.get("quota"):
                ent["quota"] = spec["quota"]
            out.append(ent)
        return out

    def base_config(self):
        addrs = ["127.0.0.1"] + (["::1"] if self.ipv6 else [])
        cfg = {
            "server": {"hostname": "test.example", "data_dir": self.data_dir, "user": ""},
            "log": {"level": "debug"},
            "tls": {"self_signed": True},
            "listeners": [{"protocol": p, "address": addrs, "port": port}
                          for p, port in self.ports.items()],
            "domains": ["example.org"],
            "auth": {"allow_plaintext": self.allow_plaintext},
            # queued remote mail stays put unless a test (test_relay) turns delivery on
            "relay": {"hold": True},
        }
        if self.users_file_path:
            cfg["users_file"] = self.users_file_path
        if self.users:
            cfg["users"] = self.users
        return deep_merge(cfg, self.extra)

    def config_text(self, extra=None):
        return to_yaml(deep_merge(self.base_config(), extra)) + "\n"

    def write_config(self, extra=None, text=None):
        """Rewrite the config file (extra merged over the current one, or raw text)."""
        if text is None:
            if extra:
                self.extra = deep_merge(self.extra, extra)
            text = self.config_text()
        _atomic_write(self.config_path, text)

    def write_users_file(self, users, text=None):
        """Replace the users file: {address: password|{password, secret}} or raw text."""
        if text is None:
            entries = self._user_entries(users)
            text = to_yaml({"users": entries}) + "\n" if entries else "users: []\n"
        _atomic_write(self.users_file_path, text)

    # -- process
    def env(self):
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
        return env

    def start(self, args=()):
        """Run `postling serve` and wait for server.ready. On the first start a
        port taken in the meantime by another process gets new ports (retried)."""
        for attempt in range(3):
            try:
                return self._start(args)
            except ServerError as e:
                if self.started_once or attempt == 2 or "in use" not in str(e):
                    raise
                for proto in self.ports:
                    self.ports[proto] = free_port()
                self.write_config()

    def _start(self, args):
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("already running")
        self._close_log()
        self._logf = open(self.stderr_path, "ab")
        self.log_offset = self.log_size()
        self.stopped = False
        self.proc = subprocess.Popen([self.bin, "serve", "-c", self.config_path, *args],
                                     stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=self._logf, env=self.env(), cwd=self.tmp)
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.find_log("server.ready", since=self.log_offset):
                self.started_once = True
                return self
            if self.proc.poll() is not None:
                self._close_log()
                raise ServerError(f"postling serve exited with status {self.proc.returncode} "
                                  f"before server.ready\n{self.log_text(self.log_offset)}")
            time.sleep(0.02)
        self.proc.kill()
        self.proc.wait()
        raise ServerError(f"no server.ready within {READY_TIMEOUT} s\n{self.log_text(self.log_offset)}")

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def assert_alive(self):
        """Raise if the server died on its own (not through stop/kill9)."""
        if self.proc is None or self.stopped:
            return
        rc = self.proc.poll()
        if rc is not None:
            raise ServerError(f"server died with status {rc}\n{self.log_tail()}")
        self.check_sanitizers()

    def check_sanitizers(self):
        text = self.log_text()
        if self.log_path != self.stderr_path:
            with open(self.stderr_path, "rb") as f:
                text += f.read().decode("utf-8", "replace")
        for m in SANITIZER_MARKERS:
            if m in text:
                raise ServerError(f"sanitizer report in server log ({m})\n{self.log_tail(120)}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; SIGKILL after `timeout`. Returns the exit status
        (raises ServerError if it had to be killed)."""
        if self.proc is None:
            return None
        self.stopped = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                self._close_log()
                raise ServerError(f"server did not exit within {timeout} s of SIGTERM\n{self.log_tail()}")
        self._close_log()
        return self.proc.returncode

    def kill9(self):
        self.stopped = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._close_log()

    def restart(self):
        rc = self.stop()
        if rc != 0:
            raise ServerError(f"server exited with status {rc} on SIGTERM\n{self.log_tail()}")
        return self.start()

    def _close_log(self):
        if self._logf:
            self._logf.close()
            self._logf = None

    def close(self):
        """Stop (SIGKILL if needed) and remove the temp dir."""
        self.stopped = True
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._close_log()
            if os.environ.get("POSTLING_KEEP_TMP"):
                print(f"kept {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)

    # -- logs
    def log_text(self, since=0):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=60):
        lines = self.log_text().splitlines()
        out = "--- server log (last %d lines) ---\n%s" % (n, "\n".join(lines[-n:]))
        if self.log_path != self.stderr_path and os.path.exists(self.stderr_path):
            with open(self.stderr_path, "rb") as f:
                err = f.read().decode("utf-8", "replace").splitlines()
            out += "\n--- stderr ---\n" + "\n".join(err[-n:])
        return out

    def log_lines(self, since=0):
        """Parsed JSON log lines (non-JSON lines, e.g. sanitizer output, skipped)."""
        out = []
        for line in self.log_text(since).splitlines():
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def find_log(self, event, since=0, **fields):
        return [e for e in self.log_lines(since) if e.get("event") == event
                and all(e.get(k) == v for k, v in fields.items())]

    def wait_log(self, event, timeout=5.0, since=0, count=1, **fields):
        deadline = time.monotonic() + timeout
        while True:
            found = self.find_log(event, since=since, **fields)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise ServerError(f"no log line event={event} {fields} (want {count}, have "
                                  f"{len(found)}) within {timeout} s\n{self.log_tail()}")
            time.sleep(0.02)

    def log_size(self):
        try:
            return os.path.getsize(self.log_path)
        except FileNotFoundError:
            return 0

    def assert_no_secrets_in_log(self, extra=()):
        text = self.log_text()
        for s in list(self.sensitive) + list(extra):
            if s and s in text:
                line = next((l for l in text.splitlines() if s in l), "")
                raise ServerError(f"secret {s!r} appears in the server log: {line[:300]}")

    # -- addresses, mail
    def port(self, proto):
        return self.ports[proto]

    def addr(self, proto, host="127.0.0.1"):
        return (host, self.ports[proto])

    def password(self, user):
        return self.passwords[user]

    def maildir(self, user):
        local, domain = user.lower().split("@")
        return os.path.join(self.data_dir, "mail", domain, local)

    def message_files(self, user):
        """Paths of the message files in new/ and cur/ (sorted by name)."""
        md = self.maildir(user)
        out = []
        for sub in ("new", "cur"):
            d = os.path.join(md, sub)
            if os.path.isdir(d):
                out += [os.path.join(d, f) for f in os.listdir(d) if not f.startswith(".")]
        return sorted(out, key=os.path.basename)

    def tmp_files(self, user=None):
        """Files in the tmp/ dirs of one user's Maildir folders (or of every Maildir)."""
        root = self.maildir(user) if user else os.path.join(self.data_dir, "mail")
        out = []
        for d, _dirs, files in os.walk(root):
            if os.path.basename(d) == "tmp":
                out += [os.path.join(d, f) for f in files]
        return sorted(out)

    def mail_files(self):
        """Every message file under mail/ outside tmp/ (new/ and cur/ of all folders)."""
        out = []
        for d, _dirs, files in os.walk(os.path.join(self.data_dir, "mail")):
            if os.path.basename(d) in ("new", "cur"):
                out += [os.path.join(d, f) for f in files]
        return sorted(out)

    @property
    def queue_dir(self):
        return os.path.join(self.data_dir, "queue")

    def queue_files(self):
        """Names of all files in the relay queue dir (empty list when it does not exist)."""
        try:
            return sorted(os.listdir(self.queue_dir))
        except FileNotFoundError:
            return []

    def queue_entry(self, qid):
        """(envelope text, message bytes) of queue entry qid."""
        with open(os.path.join(self.queue_dir, qid + ".env"), "rb") as f:
            env = f.read().decode()
        with open(os.path.join(self.queue_dir, qid + ".msg"), "rb") as f:
            msg = f.read()
        return env, msg

    def deliver(self, user, data, check=True):
        p = subprocess.run([self.bin, "deliver", "-c", self.config_path, user], input=data,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self.env(),
                           timeout=30)
        if check and p.returncode != 0:
            raise ServerError(f"postling deliver {user} failed: rc={p.returncode} "
                              f"stderr={p.stderr.decode(errors='replace')}")
        return p

    def run_cli(self, *args, input=None, timeout=30):
        return subprocess.run([self.bin, *args], input=input, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=self.env(), timeout=timeout)

    @staticmethod
    def ssl_context():
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def make_cert(directory, name, cn, sans=(), key_type="ec"):
    """Self-signed certificate via the openssl CLI; returns (cert_path, key_path)."""
    cert = os.path.join(directory, f"{name}.crt")
    key = os.path.join(directory, f"{name}.key")
    args = ["openssl", "req", "-x509", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
            "-keyout", key, "-out", cert]
    args += (["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec"
             else ["-newkey", "rsa:2048"])
    if sans:
        args += ["-addext", "subjectAltName=" + ",".join(f"DNS:{s}" for s in sans)]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return cert, key


def _atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def make_message(subject, body="Hello.\n", extra_headers=(), sender="sender@example.net",
                 rcpt="user@example.org", lf=b"\n"):
    """A simple RFC 5322 message, LF line endings by default (bytes)."""
    hdr = [f"From: {sender}", f"To: {rcpt}", f"Subject: {subject}",
           f"Message-ID: <{subject.replace(' ', '-')}.{time.monotonic_ns()}@example.net>",
           "Date: Mon, 01 Jan 2024 00:00:00 +0000", *extra_headers]
    text = "\n".join(hdr) + "\n\n" + body
    return text.encode().replace(b"\n", lf)


def crlf(data):
    """LF -> CRLF normalisation as the store does it (existing CRLF kept)."""
    return re.sub(rb"\r?\n", b"\r\n", data)


# ---------------------------------------------------------------- POP3 client

class ConnectionClosed(Exception):
    pass


class Pop3Conn:
    """Raw POP3 client: exact lines, pipelining, STLS with buffer checks."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.greeting = None

    @classmethod
    def connect(cls, srv, proto="pop3", host="127.0.0.1", source=None, tls=None,
                timeout=IO_TIMEOUT, read_greeting=True):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(timeout)
        if source:
            s.bind((source, 0))
        s.connect((host, srv.port(proto)))
        if tls is None:
            tls = proto.endswith("s")
        if tls:
            s = srv.ssl_context().wrap_socket(s)
        c = cls(s)
        if read_greeting:
            c.greeting = c.readline()
        return c

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def sendline(self, line):
        self.send((line.encode("latin-1") if isinstance(line, str) else line) + b"\r\n")

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("server closed the connection")
        self.buf += chunk

    def readline_bytes(self):
        while b"\r\n" not in self.buf:
            if len(self.buf) > 10 * 1024 * 1024:
                raise AssertionError("line without CRLF longer than 10 MiB")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def readline(self):
        return self.readline_bytes().decode("latin-1")

    def cmd(self, line):
        self.sendline(line)
        return self.readline()

    def read_multi_raw(self):
        """Raw bytes of a multi-line body up to and including CRLF.CRLF (dot-stuffed)."""
        if self.buf.startswith(b".\r\n"):
            out, self.buf = self.buf[:3], self.buf[3:]
            return out
        data = bytearray(self.buf)
        self.buf = b""
        start = 0
        while True:
            i = data.find(b"\r\n.\r\n", start)
            if i >= 0:
                self.buf = bytes(data[i + 5:])
                return bytes(data[:i + 5])
            start = max(0, len(data) - 4)
            chunk = self.sock.recv(262144)
            if not chunk:
                raise ConnectionClosed("server closed the connection inside a multi-line reply")
            data += chunk

    def read_multi(self):
        """Lines of a multi-line body, dot-unstuffed, without the terminator."""
        raw = self.read_multi_raw()
        lines = raw.split(b"\r\n")[:-2]   # drop "." and the empty tail
        return [l[1:].decode("latin-1") if l.startswith(b".") else l.decode("latin-1")
                for l in lines]

    def multi_cmd(self, line):
        """Send, expect +OK, return (status line, body lines)."""
        first = self.cmd(line)
        if not first.startswith("+OK"):
            return first, None
        return first, self.read_multi()

    def capa(self):
        first, lines = self.multi_cmd("CAPA")
        if not first.startswith("+OK"):
            raise AssertionError(f"CAPA: {first}")
        return lines

    def login(self, user, password):
        r = self.cmd(f"USER {user}")
        if not r.startswith("+OK"):
            raise AssertionError(f"USER {user}: {r}")
        r = self.cmd(f"PASS {password}")
        if not r.startswith("+OK"):         # exact text checked in test_user_pass_logs_in
            raise AssertionError(f"PASS for {user}: {r!r}")
        return r

    def stls(self, ctx):
        r = self.cmd("STLS")
        if not r.startswith("+OK"):         # exact text checked in test_stls_reply_text
            raise AssertionError(f"STLS: {r!r}")
        if self.buf:
            raise AssertionError(f"data after STLS reply before TLS: {self.buf!r}")
        self.sock = ctx.wrap_socket(self.sock)
        return r

    def expect_silence(self, seconds=0.3):
        """Assert nothing arrives within `seconds` (no unsolicited reply)."""
        if self.buf:
            raise AssertionError(f"unexpected data: {self.buf!r}")
        old = self.sock.gettimeout()
        self.sock.settimeout(seconds)
        try:
            data = self.sock.recv(4096)
        except (socket.timeout, TimeoutError):
            return
        except ssl.SSLWantReadError:
            return
        finally:
            self.sock.settimeout(old)
        raise AssertionError(f"unexpected data: {data!r}")

    def read_until_close(self, limit=10.0):
        """Everything the server sends until EOF; raises on RST / timeout."""
        self.sock.settimeout(limit)
        data = self.buf
        self.buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                return data
            data += chunk

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------- SMTP client

SMTP_REPLY_RE = re.compile(r"^(\d{3})([ -])(.*)$", re.S)


class SmtpConn(Pop3Conn):
    """Raw SMTP client (the line I/O of Pop3Conn): exact reply lines, pipelining
    in one write, STARTTLS with a check that nothing was buffered before TLS.

    A reply is returned as one string, its lines joined by "\n" with their codes,
    e.g. "250 2.1.0 Ok" or "250-test.example Hello ...\n250-PIPELINING\n...\n250 HELP".
    """

    @classmethod
    def connect(cls, srv, proto="smtp", host="127.0.0.1", source=None, tls=None,
                timeout=IO_TIMEOUT, read_greeting=True):
        if tls is None:
            tls = proto == "submissions"
        c = super().connect(srv, proto, host=host, source=source, tls=tls, timeout=timeout,
                            read_greeting=False)
        if read_greeting:
            c.greeting = c.reply()
        return c

    def reply(self):
        """One complete (possibly multi-line) reply; checks the RFC 5321 §4.2 syntax."""
        lines = []
        while True:
            line = self.readline()
            m = SMTP_REPLY_RE.match(line)
            if not m:
                raise AssertionError(f"malformed SMTP reply line {line!r} (after {lines!r})")
            if lines and m.group(1) != lines[0][:3]:
                raise AssertionError(f"reply code changed inside a multi-line reply: {lines + [line]!r}")
            lines.append(line)
            if m.group(2) == " ":
                return "\n".join(lines)

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, line):
        self.sendline(line)
        return self.reply()

    def ehlo(self, name="client.example"):
        """EHLO; returns the keyword lines (upper-cased first word kept as sent)."""
        r = self.cmd(f"EHLO {name}")
        lines = r.split("\n")
        if not lines[0].startswith("250"):
            raise AssertionError(f"EHLO {name}: {r!r}")
        self.ehlo_lines = [l[4:] for l in lines[1:]]
        return self.ehlo_lines

    def starttls(self, ctx=None):
        r = self.cmd("STARTTLS")
        if r != "220 2.0.0 Ready to start TLS":
            raise AssertionError(f"STARTTLS: {r!r}")
        if self.buf:
            raise AssertionError(f"data after the STARTTLS reply before TLS: {self.buf!r}")
        self.sock = (ctx or Server.ssl_context()).wrap_socket(self.sock)
        return r

    def auth_plain(self, user, password, authzid=""):
        return self.cmd("AUTH PLAIN " + b64(f"{authzid}\0{user}\0{password}"))

    def login(self, user, password):
        r = self.auth_plain(user, password)
        if r != "235 2.7.0 Authentication successful":
            raise AssertionError(f"AUTH PLAIN as {user}: {r!r}")
        return r

    def transaction(self, sender, rcpts, data, dot_stuff=True):
        """MAIL, RCPTs, DATA, content (CRLF; dot-stuffed here unless dot_stuff is
        False), final dot, pipelined in two writes. Returns [mail, rcpt..., data, final]
        (final is None when DATA was refused)."""
        out = f"MAIL FROM:<{sender}>\r\n" + "".join(f"RCPT TO:<{r}>\r\n" for r in rcpts) + "DATA\r\n"
        self.send(out)
        rs = self.replies(len(rcpts) + 2)
        if not rs[-1].startswith("354"):
            return rs + [None]
        if dot_stuff:
            data = re.sub(rb"(?m)^\.", b"..", data)
        if not data.endswith(b"\r\n") and data:
            data += b"\r\n"
        self.send(data + b".\r\n")
        return rs + [self.reply()]

    def quit(self):
        r = self.cmd("QUIT")
        rest = self.read_until_close()
        if rest:
            raise AssertionError(f"data after the QUIT reply: {rest!r}")
        return r


def b64(s):
    if isinstance(s, str):
        s = s.encode()
    return base64.b64encode(s).decode()


def wait_until(pred, timeout=5.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


class ServerTestCase(unittest.TestCase):
    """Base class: one server per class (setUpClass), checks after every test
    that it is alive, reported no sanitizer error and logged no secret."""

    server_kwargs = {}
    srv = None

    @classmethod
    def setUpClass(cls):
        cls.srv = Server(name=cls.__name__, **cls.server_kwargs)
        try:
            cls.srv.start()
        except BaseException:
            cls.srv.close()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.srv is not None:
            srv, cls.srv = cls.srv, None
            try:
                srv.assert_alive()
                srv.assert_no_secrets_in_log()
                if srv.running():
                    rc = srv.stop()
                    srv.check_sanitizers()
                    if rc != 0:
                        raise ServerError(f"server exit status {rc} on SIGTERM\n{srv.log_tail()}")
            finally:
                srv.close()

    def setUp(self):
        self._conns = []

    def tearDown(self):
        for c in self._conns:
            c.close()
        if self.srv is not None:
            self.srv.assert_alive()
            self.srv.assert_no_secrets_in_log()

    def conn(self, proto="pop3", **kw):
        c = Pop3Conn.connect(self.srv, proto, **kw)
        self._conns.append(c)
        return c

    def smtp(self, proto="smtp", **kw):
        c = SmtpConn.connect(self.srv, proto, **kw)
        self._conns.append(c)
        return c
