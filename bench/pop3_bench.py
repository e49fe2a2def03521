#!/usr/bin/env python3
"""POP3 benchmark: prints memory and throughput figures for the issue notes.

  python3 bench/pop3_bench.py [--bin build/postling] [--conns 1000] [--msgs 1000]

Figures:
  - idle RSS of the server after start
  - RSS with N authenticated idle POP3 connections (N accounts, one session each)
  - durable local delivery rate (`postling deliver`, fsync'ed) of 10 KiB messages
  - RETR throughput for M messages of 10 KiB in one session (pipelined and lock-step)
  - RETR of one 50 MB message: time and the server's peak RSS (streaming, not buffered)

Loopback only. Uses SHA-512-crypt hashes so that 1,000 logins do not measure yescrypt.
"""
import argparse
import warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
import crypt  # noqa: E402  deprecated in 3.11 but present; only for a cheap hash
import os
import socket
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


class Pop3:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb", buffering=1 << 20)
        self.line()

    def line(self):
        return self.f.readline()

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        return self.line()

    def multi(self):
        n = 0
        while True:
            ln = self.f.readline()
            if ln == b".\r\n":
                return n
            n += len(ln)


def login(port, user, pw):
    p = Pop3(port)
    assert p.cmd("USER " + user).startswith(b"+OK")
    r = p.cmd("PASS " + pw)
    assert r.startswith(b"+OK"), r
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "build", "postling"))
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--msgs", type=int, default=1000)
    ap.add_argument("--big-mb", type=int, default=50)
    a = ap.parse_args()
    os.environ["POSTLING_BIN"] = os.path.abspath(a.bin)

    pw = "bench-password"
    h = crypt.crypt(pw, crypt.mksalt(crypt.METHOD_SHA512))
    users = [{"address": f"u{i}@example.org", "password": h} for i in range(a.conns)]
    srv = harness.Server(users={}, listeners=("pop3",), allow_plaintext=True,
                         config={"users": users, "log": {"level": "info"},
                                 "server": {"max_connections": a.conns + 100,
                                            "max_connections_per_ip": a.conns + 100}})
    srv.start()
    pid = srv.proc.pid
    port = srv.port("pop3")
    time.sleep(0.3)
    idle = rss_kib(pid)
    print(f"idle RSS after start: {idle} KiB")

    t0 = time.monotonic()
    conns = [login(port, f"u{i}@example.org", pw) for i in range(a.conns)]
    t1 = time.monotonic()
    time.sleep(0.5)
    r = rss_kib(pid)
    print(f"{a.conns} authenticated idle POP3 connections: RSS {r} KiB "
          f"({(r - idle) / a.conns:.1f} KiB per connection above idle); logins took {t1 - t0:.1f} s "
          f"({a.conns / (t1 - t0):.0f}/s, SHA-512-crypt, first login creates each Maildir)")
    for c in conns:
        c.cmd("QUIT")
        c.s.close()

    body = ("x" * 76 + "\n") * (10 * 1024 // 77)
    msg = ("From: bench@example.net\nTo: u0@example.org\nSubject: bench\n\n" + body).encode()
    t0 = time.monotonic()
    for _ in range(a.msgs):
        subprocess.run([a.bin, "deliver", "-c", srv.config_path, "u0@example.org"], input=msg,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t1 = time.monotonic()
    print(f"delivered {a.msgs} x {len(msg)} B with `postling deliver` (fsync'ed): "
          f"{a.msgs / (t1 - t0):.0f} msg/s (one process per message)")

    p = login(port, "u0@example.org", pw)
    stat = p.cmd("STAT").split()
    total = int(stat[2])
    t0 = time.monotonic()
    p.s.sendall(b"".join(b"RETR %d\r\n" % i for i in range(1, a.msgs + 1)))
    got = 0
    for _ in range(a.msgs):
        assert p.line().startswith(b"+OK")
        got += p.multi()
    t1 = time.monotonic()
    print(f"RETR pipelined: {a.msgs} msgs, {total / 1e6:.1f} MB in {t1 - t0:.2f} s: "
          f"{a.msgs / (t1 - t0):.0f} msg/s, {total / 1e6 / (t1 - t0):.1f} MB/s")
    t0 = time.monotonic()
    for i in range(1, a.msgs + 1):
        assert p.cmd(f"RETR {i}").startswith(b"+OK")
        p.multi()
    t1 = time.monotonic()
    print(f"RETR lock-step: {a.msgs / (t1 - t0):.0f} msg/s, {total / 1e6 / (t1 - t0):.1f} MB/s")
    p.cmd("QUIT")

    big = ("y" * 998 + "\n") * (a.big_mb * 1024 * 1024 // 999)
    bigmsg = ("Subject: big\n\n" + big).encode()
    subprocess.run([a.bin, "deliver", "-c", srv.config_path, "u1@example.org"], input=bigmsg,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    before = rss_kib(pid)
    p = login(port, "u1@example.org", pw)
    t0 = time.monotonic()
    assert p.cmd("RETR 1").startswith(b"+OK")
    n = p.multi()
    t1 = time.monotonic()
    print(f"RETR of one {n / 1e6:.0f} MB message: {t1 - t0:.2f} s ({n / 1e6 / (t1 - t0):.0f} MB/s); "
          f"server RSS before {before} KiB, after {rss_kib(pid)} KiB, peak (VmHWM) {hwm_kib(pid)} KiB")
    p.cmd("QUIT")
    srv.close()


if __name__ == "__main__":
    main()
