#!/usr/bin/env python3
"""SMTP ingest benchmark: durable messages/s, Postling against Debian's Postfix (issue 4).

  python3 bench/smtp_ingest.py [--messages 2000] [--clients 10] [--size 4096]
                               [--skip-postfix] [--bin build/postling] [--pfdir /tmp/pfbench]

Both servers get the same load from the same client code: N parallel clients (threads), each with
one smtplib connection on 127.0.0.1, send their share of the messages one after the other (MAIL,
RCPT, DATA in lock-step, no pipelining) to u0..u9@example.org in turn. Time runs from the first
connect to the last 250 reply.

- Postling answers 250 only after the message is fsync'ed into the recipient's Maildir, so its
  250 rate is the durable delivered rate. Checked afterwards: exactly N files in the new/ dirs.
- Postfix answers 250 once its queue file is fsync'ed and delivers to the Maildir afterwards
  (queue manager -> virtual(8)), so two figures: the 250 rate, and the delivered-to-Maildir rate
  (first connect until all N files exist in the Maildirs' new/ dirs).

Server figures: CPU (utime+stime) per message over the run, from /proc; memory: Postling's VmHWM,
and for both the peak of RSS and PSS summed over the server's processes (sampled every 0.25 s).

Postfix: installed with apt-get if missing ("No configuration", nothing started), then run as a
private instance (`postfix -c PFDIR/etc start`) with its own queue, data and mail directories
under PFDIR, listening on a free 127.0.0.1 port only, no chroot, no TLS, virtual Maildir delivery
as nobody:nogroup. The system's default instance is never started (no systemctl). Stopped at the end.

Run as root (Postfix needs it; Postling runs with server.user ""). Loopback only.
"""
import argparse
import os
import pwd
import random
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402

DOMAIN = "example.org"
NUSERS = 10
CLK_TCK = os.sysconf("SC_CLK_TCK")
MARKER = ".smtp_ingest"                  # marks a --pfdir this script may wipe


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- messages

WORDS = ("the quarterly report attached below covers revenue shipping schedule meeting notes "
         "please review before thursday customer feedback server migration budget approval "
         "invoice project timeline update regards thanks team weekend deadline draft contract "
         "agenda minutes summary question answer proposal design release testing deployment "
         "backup storage network latency throughput performance incident follow call office "
         "travel expense hiring onboarding training policy security audit vendor").split()


def make_messages(n, size, nusers, seed=4):
    """n distinct RFC 5322 messages of exactly `size` bytes (CRLF), realistic headers,
    plain-text body in lines of 8-11 words. Returns [(rcpt, bytes)], recipients in turn."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        rcpt = f"u{i % nusers}@{DOMAIN}"
        sender = f"sender{i % 37}@mail.example.net"
        day = 1 + i % 28
        hdr = [
            f"Received: from laptop.example.net (laptop.example.net [192.0.2.{1 + i % 250}])\r\n"
            f"\tby mail.example.net (Postfix) with ESMTPSA id {rnd.getrandbits(40):010X}\r\n"
            f"\tfor <{rcpt}>; Mon, {day:02d} Jan 2024 10:{i % 60:02d}:00 +0100 (CET)",
            f"From: Sender {i % 37} <{sender}>",
            f"To: User {i % nusers} <{rcpt}>",
            f"Subject: bench message {i}: {' '.join(rnd.choice(WORDS) for _ in range(5))}",
            f"Date: Mon, {day:02d} Jan 2024 10:{i % 60:02d}:00 +0100",
            f"Message-ID: <bench.{i}.{rnd.getrandbits(48):012x}@mail.example.net>",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=us-ascii",
            "Content-Transfer-Encoding: 7bit",
            "User-Agent: smtp_ingest.py (Postling bench)",
        ]
        head = ("\r\n".join(hdr) + "\r\n\r\n").encode()
        want = size - len(head)
        lines, total = [], 0
        while total < want + 2:                  # a little more than needed, then cut
            line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 11)))
            lines.append(line)
            total += len(line) + 2
        body = ("\r\n".join(lines)).encode()[:want - 2].rstrip(b" \r\n")
        body += b"x" * (want - 2 - len(body)) + b"\r\n"
        msg = head + body
        assert len(msg) == size, (len(msg), size)
        out.append((rcpt, msg))
    return out


# ---------------------------------------------------------------- /proc helpers

def proc_stat(pid):
    """(ppid, utime+stime+cutime+cstime in ticks) or None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rindex(")") + 2:].split()
    # rest[0] = state (field 3); utime = field 14 -> rest[11]
    ppid = int(rest[1])
    return ppid, int(rest[11]) + int(rest[12]), int(rest[13]) + int(rest[14])


def proc_tree(root):
    """root and all its live descendants."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        st = proc_stat(int(d))
        if st is not None:
            children.setdefault(st[0], []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def tree_cpu_ticks(root):
    """utime+stime of root and live descendants, plus cutime+cstime (children already reaped,
    e.g. Postfix daemons that exited after max_use)."""
    total = 0
    for p in proc_tree(root):
        st = proc_stat(p)
        if st is not None:
            total += st[1] + st[2]
    return total


def status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kib(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemSampler(threading.Thread):
    """Peak of summed RSS and PSS over a process tree, sampled every `interval` s."""

    def __init__(self, root, interval=0.25):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.peak_rss = self.peak_pss = self.peak_procs = 0
        self.stop_ev = threading.Event()

    def sample(self):
        pids = proc_tree(self.root)
        rss = sum(status_kib(p, "VmRSS") for p in pids)
        pss = sum(pss_kib(p) for p in pids)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_procs = max(self.peak_procs, len(pids))

    def run(self):
        while not self.stop_ev.is_set():
            self.sample()
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join()
        self.sample()


def fs_info(path):
    """'PATH: ext4 on /dev/vda (no journal)': the file system the servers write to. Without a
    journal ext4 fsyncs cheaply but new inodes skip those freed in the last 30 s, which makes
    file creation expensive after many deletions (other test runs on the same disk)."""
    path = os.path.realpath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    best = ("", "?", "?")
    with open("/proc/mounts") as f:
        for line in f:
            dev, mnt, fstype = line.split()[:3]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                best = (mnt, dev, fstype)
    out = f"{path}: {best[2]} on {best[1]}"
    if best[2] in ("ext3", "ext4"):
        name = os.path.basename(best[1])
        try:
            has = any(j.startswith(name + "-") for j in os.listdir("/proc/fs/jbd2"))
        except OSError:
            has = None
        out += {True: " (journal)", False: " (no journal)", None: ""}[has]
    return out


def count_new(maildirs):
    """(files in new/, files in cur/, files in tmp/) over the given Maildirs."""
    n = [0, 0, 0]
    for md in maildirs:
        for i, sub in enumerate(("new", "cur", "tmp")):
            try:
                n[i] += sum(1 for e in os.scandir(os.path.join(md, sub)) if not e.name.startswith("."))
            except FileNotFoundError:
                pass
    return tuple(n)


# ---------------------------------------------------------------- load

class LoadResult:
    pass


def run_load(port, msgs, nclients, label):
    """nclients threads, one SMTP connection each, messages i, i+nclients, ... sent in
    sequence. Returns timing figures; raises if any message was not accepted."""
    shares = [msgs[c::nclients] for c in range(nclients)]
    barrier = threading.Barrier(nclients)
    t_conn = [None] * nclients
    t_last = [None] * nclients
    lat = [[] for _ in range(nclients)]
    errors = []

    def client(c):
        try:
            barrier.wait()
            t_conn[c] = time.monotonic()
            s = smtplib.SMTP("127.0.0.1", port, local_hostname=f"client{c}.bench.example",
                             timeout=120)
            s.ehlo()
            for rcpt, data in shares[c]:
                t = time.monotonic()
                refused = s.sendmail("bench-sender@mail.example.net", [rcpt], data)
                now = time.monotonic()
                if refused:
                    raise RuntimeError(f"refused: {refused}")
                lat[c].append(now - t)
                t_last[c] = now
            s.quit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(f"client {c}: {type(e).__name__}: {e}")
            barrier.abort()

    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(nclients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    if errors:
        raise RuntimeError(f"{label}: {len(errors)} client(s) failed:\n  " + "\n  ".join(errors[:10]))
    r = LoadResult()
    r.t0 = min(t_conn)
    r.t1 = max(t_last)
    r.elapsed = r.t1 - r.t0
    r.rate = len(msgs) / r.elapsed
    all_lat = sorted(x for l in lat for x in l)
    r.lat_p50 = all_lat[len(all_lat) // 2] * 1000
    r.lat_p99 = all_lat[min(len(all_lat) - 1, int(len(all_lat) * 0.99))] * 1000
    r.lat_max = all_lat[-1] * 1000
    r.client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return r


def print_load(label, r, n):
    log(f"  {label}: {n} msgs in {r.elapsed:.2f} s (first connect -> last 250) = {r.rate:.0f} msg/s; "
        f"per-message latency (MAIL..250 after DATA) p50 {r.lat_p50:.1f} ms, p99 {r.lat_p99:.1f} ms, "
        f"max {r.lat_max:.1f} ms; load generator CPU {r.client_cpu:.2f} s (incl. memory sampler)")


# ---------------------------------------------------------------- Postling

def bench_postling(a, msgs):
    log(f"== Postling ({a.bin})")
    os.environ["POSTLING_BIN"] = os.path.abspath(a.bin)
    users = [{"address": f"u{i}@{DOMAIN}"} for i in range(NUSERS)]
    users[0]["aliases"] = [f"postmaster@{DOMAIN}"]    # else a startup warning (RFC 5321 §4.5.1)
    srv = harness.Server(users={}, listeners=("smtp",), name="smtp-bench",
                         config={"users": users, "log": {"level": "info"},
                                 "server": {"max_connections": a.clients + 100,
                                            "max_connections_per_ip": max(50, a.clients + 10)}})
    res = {}
    ok = False
    try:
        srv.start()
        pid = srv.proc.pid
        port = srv.port("smtp")
        time.sleep(0.3)
        res["idle_rss"] = status_kib(pid, "VmRSS")
        log(f"  server pid {pid}, smtp on 127.0.0.1:{port}, data_dir {srv.data_dir}, "
            f"idle RSS {res['idle_rss']} KiB")
        maildirs = [srv.maildir(f"u{i}@{DOMAIN}") for i in range(NUSERS)]
        sampler = MemSampler(pid)
        sampler.start()
        cpu0 = tree_cpu_ticks(pid)
        r = run_load(port, msgs, a.clients, "postling")
        cpu1 = tree_cpu_ticks(pid)
        sampler.stop()
        new, cur, tmp = count_new(maildirs)
        per_user = [count_new([m])[0] for m in maildirs]
        print_load("250 = durable in Maildir", r, len(msgs))
        log(f"  Maildir check: {new} files in new/ (want {len(msgs)}), {cur} in cur/, {tmp} in tmp/; "
            f"per user {per_user}")
        if new != len(msgs) or cur or tmp:
            raise RuntimeError(f"postling: {new} files in new/, {cur} in cur/, {tmp} in tmp/; "
                               f"expected exactly {len(msgs)} in new/")
        accepted = len(srv.find_log("smtp.accept"))
        rejected = len(srv.find_log("smtp.reject"))
        warns = [e for e in srv.log_lines() if e.get("level") in ("warn", "error")]
        log(f"  server log: {accepted} smtp.accept, {rejected} smtp.reject, {len(warns)} warn/error lines")
        for e in warns[:5]:
            log(f"    {e}")
        res.update(rate=r.rate, elapsed=r.elapsed, load=r,
                   hwm=status_kib(pid, "VmHWM"), peak_rss=sampler.peak_rss, peak_pss=sampler.peak_pss,
                   cpu_s=(cpu1 - cpu0) / CLK_TCK)
        res["cpu_ms_per_msg"] = res["cpu_s"] * 1000 / len(msgs)
        log(f"  server: VmHWM {res['hwm']} KiB, peak PSS {res['peak_pss']} KiB; CPU (utime+stime) "
            f"{res['cpu_s']:.2f} s = {res['cpu_ms_per_msg']:.3f} ms/msg "
            f"({res['cpu_s'] / r.elapsed * 100:.0f}% of one CPU over the run)")
        rc = srv.stop()
        if rc != 0:
            raise RuntimeError(f"postling exited with status {rc} on SIGTERM\n{srv.log_tail()}")
        ok = True
    finally:
        if not ok:
            srv.close()
    # The data dir is removed only at the end of the whole run: on ext4 without a journal, inodes
    # freed in the last 30 s are skipped (slowly) when new files are created, so deleting 2,000
    # files now would slow down the Postfix run that follows.
    return res, srv


# ---------------------------------------------------------------- Postfix

def default_instance_master():
    """pid of the system's default Postfix master if running, else None."""
    try:
        with open("/var/spool/postfix/pid/master.pid") as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "master" else None
    except (OSError, ValueError):
        return None


def ensure_postfix():
    if os.path.exists("/usr/sbin/postfix"):
        return
    log("  postfix not installed: installing Debian's package (No configuration, --no-remove)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["debconf-set-selections"],
                   input=b"postfix postfix/main_mailer_type select No configuration\n", check=True)
    cmd = ["apt-get", "install", "-y", "-q", "--no-remove", "postfix"]
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if r.returncode != 0:
        log("  apt-get install failed; apt-get update and retry")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)


MASTER_CF_FALLBACK = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def master_cf(port):
    """Debian's master.cf (the .dist copy) without inet services, chroot off everywhere, plus
    our smtpd on 127.0.0.1:port."""
    src = None
    for p in ("/usr/share/postfix/master.cf.dist", "/etc/postfix/master.cf"):
        if os.path.exists(p):
            with open(p) as f:
                src = f.read()
            break
    if src is None:
        src = MASTER_CF_FALLBACK
    out, keep = [], False
    for line in src.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace():                    # continuation (-o options) of the last entry
            if keep:
                out.append(line)
            continue
        f = line.split()
        keep = len(f) >= 8 and f[1] != "inet"
        if keep:
            f[4] = "n"                           # no chroot
            out.append("  ".join(f))
    if not any(l.split()[0] == "postlog" for l in out if not l[0].isspace()):
        out.append("postlog unix-dgram n - n - 1 postlogd")
    out.insert(0, f"127.0.0.1:{port} inet n - n - - smtpd")
    return "\n".join(out) + "\n"


class Postfix:
    def __init__(self, base, port, nusers):
        self.base = base
        self.etc = os.path.join(base, "etc")
        self.queue = os.path.join(base, "queue")
        self.data = os.path.join(base, "data")
        self.mail = os.path.join(base, "mail")
        self.maillog = os.path.join(base, "maillog")
        self.port = port
        self.nusers = nusers
        self.master = None
        pw = pwd.getpwnam("nobody")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid

    def maildirs(self):
        return [os.path.join(self.mail, DOMAIN, f"u{i}") for i in range(self.nusers)]

    def cmd(self, *args, check=True):
        r = subprocess.run(["postfix", "-c", self.etc, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"postfix -c {self.etc} {' '.join(args)}: rc {r.returncode}\n"
                               f"{r.stdout.decode(errors='replace')}\n{self.maillog_tail()}")
        return r

    def maillog_tail(self, n=30):
        try:
            with open(self.maillog, errors="replace") as f:
                return "--- maillog ---\n" + "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/comm") as f:
                return pid if f.read().strip() == "master" else None
        except (OSError, ValueError):
            return None

    def setup(self):
        if os.path.isdir(self.base):
            if self.master_pid() is not None and os.path.exists(os.path.join(self.etc, "main.cf")):
                log(f"  a previous bench instance is running in {self.base}: stopping it")
                self.stop()
            if os.listdir(self.base) and not os.path.exists(os.path.join(self.base, MARKER)):
                raise RuntimeError(f"{self.base} exists and was not made by this script: "
                                   f"not wiping it (choose another --pfdir)")
            shutil.rmtree(self.base)
        os.makedirs(self.etc, 0o755)
        open(os.path.join(self.base, MARKER), "w").close()
        os.chmod(self.base, 0o755)
        os.mkdir(self.queue, 0o755)
        os.makedirs(os.path.join(self.mail, DOMAIN), 0o755)
        os.chown(self.mail, self.uid, self.gid)
        os.chown(os.path.join(self.mail, DOMAIN), self.uid, self.gid)
        vmap = "".join(f"u{i}@{DOMAIN} {DOMAIN}/u{i}/\n" for i in range(self.nusers))
        main = f"""\
compatibility_level = 3.6
queue_directory = {self.queue}
data_directory = {self.data}
maillog_file = {self.maillog}
maillog_file_prefixes = {self.base}
syslog_name = postfix-bench
myhostname = pfbench.localdomain
mydomain = localdomain
myorigin = $myhostname
mydestination =
relayhost =
relay_domains =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
smtpd_client_connection_count_limit = 0
default_process_limit = 100
biff = no
append_dot_mydomain = no
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_base = {self.mail}
virtual_mailbox_maps = texthash:{self.etc}/vmailbox
virtual_uid_maps = static:{self.uid}
virtual_gid_maps = static:{self.gid}
"""
        with open(os.path.join(self.etc, "main.cf"), "w") as f:
            f.write(main)
        with open(os.path.join(self.etc, "master.cf"), "w") as f:
            f.write(master_cf(self.port))
        with open(os.path.join(self.etc, "vmailbox"), "w") as f:
            f.write(vmap)

    def start(self):
        self.cmd("start")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            self.master = self.master_pid()
            if self.master is not None:
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                        s.settimeout(5)
                        if s.recv(512).startswith(b"220"):
                            s.sendall(b"QUIT\r\n")
                            return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"postfix instance did not come up on 127.0.0.1:{self.port}\n"
                           f"{self.maillog_tail()}")

    def stop(self):
        pid = self.master or self.master_pid()
        pids = proc_tree(pid) if pid else []
        self.cmd("stop", check=False)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(proc_stat(p) for p in pids):
            time.sleep(0.1)
        for p in pids:                           # only processes of this instance, by pid
            if proc_stat(p) is not None:
                try:
                    os.kill(p, 9)
                except OSError:
                    pass
        self.master = None

    def queue_files(self):
        n = 0
        for sub in ("maildrop", "incoming", "active", "deferred", "hold", "corrupt"):
            for _root, _dirs, files in os.walk(os.path.join(self.queue, sub)):
                n += len(files)
        return n

    def maillog_counts(self):
        c = {"status=sent": 0, "status=deferred": 0, "status=bounced": 0, "reject:": 0,
             "warning:": 0, "fatal:": 0, "panic:": 0}
        try:
            with open(self.maillog, errors="replace") as f:
                for line in f:
                    for k in c:
                        if k in line:
                            c[k] += 1
        except OSError:
            pass
        return c


def bench_postfix(a, msgs):
    log("== Postfix (Debian package, private instance)")
    ensure_postfix()
    ver = subprocess.run(["postconf", "-d", "-h", "mail_version"], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL).stdout.decode().strip()
    before = default_instance_master()
    port = harness.free_port()
    pf = Postfix(a.pfdir, port, NUSERS)
    res = {"version": ver}
    try:
        pf.setup()
        pf.start()
        log(f"  postfix {ver}, master pid {pf.master}, smtpd on 127.0.0.1:{port}, config {pf.etc}, "
            f"mail {pf.mail} (uid {pf.uid}), log {pf.maillog}")
        time.sleep(0.5)
        sampler = MemSampler(pf.master)
        sampler.start()
        cpu0 = tree_cpu_ticks(pf.master)
        r = run_load(port, msgs, a.clients, "postfix")
        cpu250 = tree_cpu_ticks(pf.master)
        # delivered-to-Maildir: poll until all files are in new/
        maildirs = pf.maildirs()
        deadline = time.monotonic() + max(60.0, 10 * r.elapsed)
        while True:
            new = count_new(maildirs)[0]
            if new >= len(msgs):
                t_deliv = time.monotonic()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix: only {new}/{len(msgs)} files in the Maildirs after "
                                   f"{deadline - r.t0:.0f} s\n{pf.maillog_tail()}")
            time.sleep(0.01)
        cpu_d = tree_cpu_ticks(pf.master)
        time.sleep(1.0)                          # let qmgr/virtual settle, then recount
        sampler.stop()
        cpu_settle = tree_cpu_ticks(pf.master)
        new, cur, tmp = count_new(maildirs)
        per_user = [count_new([m])[0] for m in maildirs]
        deliv_elapsed = t_deliv - r.t0
        print_load("250 = queue file fsync'ed (delivery to Maildir follows asynchronously)", r, len(msgs))
        log(f"  delivered to Maildir: all {len(msgs)} files in new/ {deliv_elapsed:.2f} s after the "
            f"first connect ({t_deliv - r.t1:.2f} s after the last 250) = "
            f"{len(msgs) / deliv_elapsed:.0f} msg/s")
        log(f"  Maildir check: {new} files in new/ (want {len(msgs)}), {cur} in cur/, {tmp} in tmp/; "
            f"per user {per_user}; {pf.queue_files()} files left in the queue")
        c = pf.maillog_counts()
        log("  maillog: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        if new != len(msgs):
            raise RuntimeError(f"postfix: {new} files in new/, expected {len(msgs)}")
        ticks_250, ticks_d, ticks_all = cpu250 - cpu0, cpu_d - cpu0, cpu_settle - cpu0
        res.update(rate250=r.rate, elapsed250=r.elapsed, load=r, rate_deliv=len(msgs) / deliv_elapsed,
                   elapsed_deliv=deliv_elapsed, peak_rss=sampler.peak_rss, peak_pss=sampler.peak_pss,
                   peak_procs=sampler.peak_procs, cpu_s=ticks_all / CLK_TCK,
                   cpu_s_250=ticks_250 / CLK_TCK, cpu_s_deliv=ticks_d / CLK_TCK)
        res["cpu_ms_per_msg"] = res["cpu_s"] * 1000 / len(msgs)
        log(f"  server (all instance processes, incl. exited ones via cutime): peak {sampler.peak_procs} "
            f"processes, peak summed RSS {sampler.peak_rss} KiB, peak summed PSS {sampler.peak_pss} KiB; "
            f"CPU {res['cpu_s_250']:.2f} s until the last 250, {res['cpu_s_deliv']:.2f} s until delivered, "
            f"{res['cpu_s']:.2f} s incl. 1 s settle = {res['cpu_ms_per_msg']:.3f} ms/msg")
    finally:
        pf.stop()
        if default_instance_master() is not None and before is None:
            log("  WARNING: the system's default Postfix instance is running (not started by this "
                "script's commands); stopping it with `postfix stop`")
            subprocess.run(["postfix", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        left = pf.master_pid()
        log(f"  instance stopped ({'master still running!' if left else 'no master left'}); "
            f"config, queue and maillog kept in {a.pfdir}")
    return res


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096, help="message size in bytes (default 4096)")
    ap.add_argument("--skip-postfix", action="store_true")
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "postling"))
    ap.add_argument("--pfdir", default="/tmp/pfbench", help="Postfix instance directory, wiped at start if this script made it "
                    "(default /tmp/pfbench)")
    a = ap.parse_args()
    if a.messages < 1 or a.clients < 1 or a.size < 1024:
        ap.error("--messages and --clients must be >= 1, --size >= 1024")
    if not a.skip_postfix and os.geteuid() != 0:
        ap.error("the Postfix run needs root (or use --skip-postfix)")

    msgs = make_messages(a.messages, a.size, NUSERS)
    log(f"smtp_ingest: {a.messages} messages of {a.size} B from {a.clients} parallel clients "
        f"(one connection each, lock-step MAIL/RCPT/DATA) to {NUSERS} local users; "
        f"{os.cpu_count()} CPUs")
    log(f"file systems: Postling data in {fs_info(tempfile.gettempdir())}"
        + ("" if a.skip_postfix else f"; Postfix in {fs_info(a.pfdir)}"))
    pl, pl_srv = bench_postling(a, msgs)
    try:
        pf = None if a.skip_postfix else bench_postfix(a, msgs)
    finally:
        pl_srv.close()                           # after all measurements (see bench_postling)
        if not a.skip_postfix:
            shutil.rmtree(os.path.join(a.pfdir, "mail"), ignore_errors=True)

    log("")
    log(f"== Summary ({a.messages} x {a.size} B, {a.clients} clients, 127.0.0.1)")
    rows = [("Postling msg/s (250 after fsync into Maildir)", f"{pl['rate']:.0f}")]
    if pf:
        rows += [("Postfix 250 msg/s (250 after queue-file fsync)", f"{pf['rate250']:.0f}"),
                 ("Postfix delivered-to-Maildir msg/s", f"{pf['rate_deliv']:.0f}"),
                 ("ratio Postling / Postfix 250", f"{pl['rate'] / pf['rate250']:.2f}"),
                 ("ratio Postling / Postfix delivered", f"{pl['rate'] / pf['rate_deliv']:.2f}")]
    rows += [("Postling VmHWM KiB", str(pl["hwm"])),
             ("Postling peak PSS KiB", str(pl["peak_pss"]))]
    if pf:
        rows += [("Postfix peak summed RSS KiB (all processes)", str(pf["peak_rss"])),
                 ("Postfix peak summed PSS KiB (all processes)", str(pf["peak_pss"]))]
    rows += [("Postling CPU ms/msg", f"{pl['cpu_ms_per_msg']:.3f}")]
    if pf:
        rows += [("Postfix CPU ms/msg (until delivered + 1 s)", f"{pf['cpu_ms_per_msg']:.3f}")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        log(f"  {k:<{w}}  {v:>10}")
    if pf:
        log("  note: Postfix acknowledges when its queue file is fsync'ed and delivers to the Maildir "
            "afterwards; Postling acknowledges only after the Maildir copy is fsync'ed.")


if __name__ == "__main__":
    main()
