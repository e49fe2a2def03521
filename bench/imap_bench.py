#!/usr/bin/env python3
"""IMAP benchmark: Postling against Debian's Dovecot in the same run (issue 5).

    python3 bench/imap_bench.py [--bin build/postling] [--sessions 20] [--msgs 1000]
                                [--idle 1000] [--seconds 3] [--skip-postling] [--skip-dovecot]

For each server, on free 127.0.0.1 ports with a temporary data directory:
1. --sessions users each get a mailbox of --msgs messages (APPEND, 20 in parallel).
2. Each operation runs for --seconds in --sessions parallel client processes,
   one logged-in session per user, and is reported as completed commands/s:
     select        SELECT INBOX (the whole 1,000-message mailbox)
     fetch-header  FETCH <random n> (BODY.PEEK[HEADER])
     fetch-body    FETCH <random n> (BODY.PEEK[])
     search        SEARCH TEXT <word>, alternating with SEARCH FROM <name> (whole mailbox)
     store         STORE <random n> +FLAGS.SILENT (\\Flagged), alternating with -FLAGS.SILENT
3. --idle sessions (one user each, each from its own 127.x source address so no
   per-IP limit applies) LOGIN, SELECT INBOX and IDLE; the server's RSS is read
   before and with them all idle. Postling is one process; for Dovecot the RSS
   of the master and all its children (imap-login, imap, auth, ...) is summed.
   RSS counts shared library pages once per process, so PSS (smaps_rollup) is
   printed next to it: the memory those processes really cost together.
A table with both servers and the ratios closes the output. The clients are
Python processes on the same machine, so on a small VM the figures are a lower
bound for both servers alike.
"""
import argparse
import multiprocessing
import os
import random
import resource
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))

import imap_support  # noqa: E402
from imap_support import DovecotTarget, ImapConn, PostlingTarget, quote  # noqa: E402

PW = "Bench-Imap-Pw-4c1"
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()
NAMES = ["Ann Archer", "Bob Baker", "Cat Carter", "Dan Dyer", "Eve Evans", "Fay Fisher", "Gus Grant"]


def bench_message(i):
    """A ~4 KiB message; 1 in 10 carries the word 'quokka' in its body."""
    rnd = random.Random(i)
    name = NAMES[i % len(NAMES)]
    lines = [" ".join(rnd.choice(WORDS) for _ in range(12)) for _ in range(50)]
    if i % 10 == 0:
        lines[25] += " quokka"
    body = "\r\n".join(lines) + "\r\n"
    return (f"From: {name} <{name.split()[0].lower()}@example.net>\r\nTo: user@example.org\r\n"
            f"Subject: Bench message {i} {rnd.choice(WORDS)}\r\n"
            f"Message-ID: <bench-{i}@example.net>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def pss_kib(pids):
    """Proportional set size summed: shared pages counted once across the processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def server_pids(target):
    if isinstance(target, DovecotTarget):
        return target.pids()
    return [target.srv.proc.pid]


# ---------------------------------------------------------------- load

def fill(target, users, msgs):
    errors = []

    def one(user):
        try:
            c = target.login(user)
            for i in range(1, msgs + 1):
                r = c.cmd("APPEND INBOX {}", bench_message(i), sync=False)
                if r.status != "OK":
                    raise RuntimeError(f"APPEND {user} {i}: {r.line}")
            c.logout()
        except Exception as e:      # noqa: BLE001 - reported after the join
            errors.append(f"{user}: {e!r}")
    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("fill failed: " + "; ".join(errors[:3]))


def op_command(op, i, rnd, msgs):
    n = rnd.randint(1, msgs)
    if op == "select":
        return "SELECT INBOX"
    if op == "fetch-header":
        return f"FETCH {n} (BODY.PEEK[HEADER])"
    if op == "fetch-body":
        return f"FETCH {n} (BODY.PEEK[])"
    if op == "search":
        return "SEARCH TEXT quokka" if i % 2 == 0 else f"SEARCH FROM {quote(rnd.choice(NAMES).split()[1])}"
    if op == "store":
        return f"STORE {n} {'+' if i % 2 == 0 else '-'}FLAGS.SILENT (\\Flagged)"
    raise ValueError(op)


def worker(host, port, user, op, msgs, seconds, ready, go, out):
    """One client process: log in, select, wait for go, run op for seconds."""
    try:
        c = ImapConn.connect(host, port, timeout=60)
        c.login(user, PW)
        c.ok("SELECT INBOX")
        rnd = random.Random(user)
        ready.put(1)
        go.wait()
        n = 0
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            r = c.cmd(op_command(op, n, rnd, msgs))
            if r.status != "OK":
                raise RuntimeError(f"{op}: {r.line}")
            n += 1
        c.logout()
        out.put((n, None))
    except Exception as e:          # noqa: BLE001 - the parent reports it
        ready.put(1)
        out.put((0, f"{user}: {e!r}"))


def run_op(target, users, op, msgs, seconds):
    ctx = multiprocessing.get_context("fork")
    ready, out, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=worker, args=(target.host, target.port("imap"), u, op, msgs, seconds,
                                              ready, go, out)) for u in users]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.monotonic()
    go.set()
    results = [out.get(timeout=seconds + 120) for _ in procs]
    elapsed = time.monotonic() - t0
    for p in procs:
        p.join(30)
    errs = [e for _n, e in results if e]
    if errs:
        raise RuntimeError(f"{op}: " + "; ".join(errs[:3]))
    return sum(n for n, _e in results) / min(elapsed, seconds + 0.5) if elapsed else 0.0


# ---------------------------------------------------------------- idle sessions

def idle_sessions(target, users):
    """Open one IDLE session per user, each from its own loopback address."""
    conns = []
    for k, user in enumerate(users):
        src = f"127.{1 + k // 62500}.{k // 250 % 250}.{k % 250 + 2}"
        c = ImapConn.connect(target.host, target.port("imap"), timeout=60, source=src)
        c.login(user, PW)
        c.ok("SELECT INBOX")
        c.idle_start()
        conns.append(c)
    return conns


# ---------------------------------------------------------------- main

def measure(kind, args, ops):
    op_users = [f"b{i:02d}@example.org" for i in range(args.sessions)]
    idle_users = [f"i{i:04d}@example.org" for i in range(args.idle)]
    users = {u: PW for u in op_users + idle_users}
    if kind == "postling":
        why = imap_support.postling_imap_refusal()
        if why:
            print(f"postling: skipped, it does not accept an imap listener yet: {why.splitlines()[0]}")
            return None
        target = PostlingTarget(users, config={"server": {"max_connections": args.idle + 500},
                                               "log": {"level": "info"}}, name="imapbench")
    else:
        if imap_support.DOVECOT is None:
            print("dovecot: skipped, not installed (apt-get install dovecot-imapd)")
            return None
        target = DovecotTarget(users, name="imapbench", imap_process_limit=args.idle + args.sessions + 100)
    res = {}
    try:
        target.start()
        t0 = time.monotonic()
        fill(target, op_users, args.msgs)
        fill_s = time.monotonic() - t0
        res["fill"] = args.sessions * args.msgs / fill_s
        print(f"{kind}: filled {args.sessions} x {args.msgs} messages in {fill_s:.1f} s "
              f"({res['fill']:.0f} APPEND/s)", flush=True)
        for op in ops:
            res[op] = run_op(target, op_users, op, args.msgs, args.seconds)
            print(f"{kind}: {op:13s} {res[op]:10.0f} ops/s", flush=True)
        time.sleep(1)
        base = rss_kib(server_pids(target))
        base_pss = pss_kib(server_pids(target))
        t0 = time.monotonic()
        conns = idle_sessions(target, idle_users)
        open_s = time.monotonic() - t0
        time.sleep(2)
        full = rss_kib(server_pids(target))
        full_pss = pss_kib(server_pids(target))
        nproc = len(server_pids(target))
        alive = sum(1 for c in conns if c.sock.fileno() >= 0)
        res.update(rss_base=base, rss_idle=full, idle_per_conn=(full - base) / max(1, len(conns)),
                   pss_base=base_pss, pss_idle=full_pss, pss_per_conn=(full_pss - base_pss) / max(1, len(conns)),
                   idle_open=open_s, nproc=nproc)
        print(f"{kind}: RSS {base / 1024:.1f} MiB before, {full / 1024:.1f} MiB with {alive} IDLE sessions "
              f"({res['idle_per_conn']:.1f} KiB each, {nproc} process(es)), opened in {open_s:.1f} s", flush=True)
        for c in conns:
            c.close()
    finally:
        target.close()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="postling binary (default $POSTLING_BIN or build/postling)")
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--msgs", type=int, default=1000)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--ops", default="select,fetch-header,fetch-body,search,store")
    ap.add_argument("--skip-postling", action="store_true")
    ap.add_argument("--skip-dovecot", action="store_true")
    args = ap.parse_args()
    if args.bin:
        os.environ["POSTLING_BIN"] = os.path.abspath(args.bin)
    nofile = raise_nofile()
    if nofile < args.idle + 200:
        sys.exit(f"RLIMIT_NOFILE is {nofile}: too low for {args.idle} idle sessions")
    ops = [o for o in args.ops.split(",") if o]
    print(f"imap_bench: {args.sessions} sessions x {args.msgs} messages, {args.seconds:g} s per operation, "
          f"{args.idle} idle sessions, {os.cpu_count()} CPU(s)", flush=True)
    results = {}
    for kind in ("postling", "dovecot"):
        if getattr(args, f"skip_{kind}"):
            continue
        results[kind] = measure(kind, args, ops)
    p, d = results.get("postling"), results.get("dovecot")

    def cell(r, k, fmt):
        return fmt.format(r[k]) if r else "-"

    def ratio(k, inverse=False):
        if not (p and d and p.get(k) and d.get(k)):
            return "-"
        return f"{(d[k] / p[k]) if inverse else (p[k] / d[k]):.2f}"
    print()
    print(f"{'':24s} {'Postling':>12s} {'Dovecot':>12s} {'P/D':>8s}")
    for k in ["fill", *ops]:
        label = "APPEND (fill) /s" if k == "fill" else f"{k} ops/s"
        print(f"{label:24s} {cell(p, k, '{:.0f}'):>12s} {cell(d, k, '{:.0f}'):>12s} {ratio(k):>8s}")
    def mib(r, k):
        return f"{r[k] / 1024:.1f}" if r else "-"
    print(f"{'RSS before idle (MiB)':24s} {mib(p, 'rss_base'):>12s} {mib(d, 'rss_base'):>12s}")
    print(f"{'RSS with IDLE (MiB)':24s} {mib(p, 'rss_idle'):>12s} {mib(d, 'rss_idle'):>12s} {ratio('rss_idle'):>8s}")
    print(f"{'KiB per IDLE session':24s} {cell(p, 'idle_per_conn', '{:.1f}'):>12s} "
          f"{cell(d, 'idle_per_conn', '{:.1f}'):>12s} {ratio('idle_per_conn'):>8s}")
    print(f"{'PSS with IDLE (MiB)':24s} {mib(p, 'pss_idle'):>12s} {mib(d, 'pss_idle'):>12s} {ratio('pss_idle'):>8s}")
    print(f"{'PSS KiB per IDLE sess.':24s} {cell(p, 'pss_per_conn', '{:.1f}'):>12s} "
          f"{cell(d, 'pss_per_conn', '{:.1f}'):>12s} {ratio('pss_per_conn'):>8s}")
    print(f"{'server processes':24s} {cell(p, 'nproc', '{}'):>12s} {cell(d, 'nproc', '{}'):>12s}")
    print("P/D > 1 is better for Postling on ops/s; on memory P/D < 0.1 is the issue's goal.")


if __name__ == "__main__":
    main()
