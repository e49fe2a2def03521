#!/usr/bin/env python3
"""Relay benchmark (issue 6): messages/s drained from the outbound queue to a local SMTP sink,
and the server's memory with a large queue.

  python3 bench/relay_bench.py [--messages 2000] [--connections 10] [--size 4096]
                               [--queued 10000] [--bin build/postling]

1. Fill: Postling runs with relay.hold: true; N messages (one remote recipient each, distinct
   bodies of --size octets) are submitted over submissions (10 client threads, AUTH PLAIN).
   Each 250 means the message is fsync'ed in the queue.
2. Drain: the server is stopped, then started with relay.hold: false and relay.smarthost pointing
   at the sink (127.0.0.1, no DNS), relay.max_connections = max_connections_per_domain =
   --connections. Time runs from the start of `postling serve` until the sink has received
   every message and the queue directory is empty (each entry's removal follows the sink's 250).
   The sink is asyncio in this process: EHLO with PIPELINING/8BITMIME/SIZE, 250 to everything,
   one message per connection as the relay sends it; it counts messages and connections.
3. Memory: the queue is filled with --queued messages (hold: true), the server restarted, and its
   VmRSS read once relay.loaded is logged; compared with the RSS of the same server with an empty
   queue. The per-entry figure is the difference divided by the count.

Loopback only. Prints a table at the end.
"""
import argparse
import asyncio
import os
import shutil
import smtplib
import sys
import threading
import time
import warnings

warnings.filterwarnings("ignore", category=DeprecationWarning)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402

ALICE = "alice@example.org"
PW = "Bench-Relay-Pw-1"


def log(msg):
    print(msg, flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sink:
    """Minimal ESMTP sink on 127.0.0.1 (its own thread and event loop)."""

    def __init__(self):
        self.messages = 0
        self.connections = 0
        self.bytes = 0
        self.port = harness.free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self.ready.wait(5)

    def _run(self):
        asyncio.set_event_loop(self.loop)
        srv = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self.ready.set()
        self.loop.run_until_complete(srv.serve_forever())

    async def _client(self, r, w):
        self.connections += 1
        w.write(b"220 sink.example ESMTP\r\n")
        try:
            while True:
                line = await r.readline()
                if not line:
                    break
                verb = line[:4].upper()
                if verb == b"EHLO":
                    w.write(b"250-sink.example\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
                elif verb == b"DATA":
                    w.write(b"354 go ahead\r\n")
                    await w.drain()
                    while True:
                        d = await r.readline()
                        if not d or d == b".\r\n":
                            break
                        self.bytes += len(d)
                    self.messages += 1
                    w.write(b"250 2.0.0 Ok\r\n")
                elif verb == b"QUIT":
                    w.write(b"221 2.0.0 Bye\r\n")
                    await w.drain()
                    break
                else:
                    w.write(b"250 2.0.0 Ok\r\n")
                await w.drain()
        finally:
            w.close()


def body(i, size):
    head = (f"From: Alice <{ALICE}>\r\nTo: <rcpt{i}@remote.example>\r\nSubject: relay bench {i}\r\n"
            f"Message-ID: <bench{i}@example.org>\r\nDate: Mon, 01 Jan 2024 10:00:00 +0000\r\n\r\n")
    line = f"message {i} line of relay benchmark text padding padding padding\r\n"
    out = head
    while len(out) + len(line) <= size - 2:
        out += line
    return (out + "x" * (size - 2 - len(out)) + "\r\n").encode()


def fill(srv, n, size, clients=10):
    errors = []

    def worker(k):
        try:
            c = smtplib.SMTP_SSL("127.0.0.1", srv.port("submissions"), context=harness.Server.ssl_context(),
                                 timeout=60)
            c.login(ALICE, PW)
            for i in range(k, n, clients):
                c.sendmail(ALICE, [f"rcpt{i}@remote.example"], body(i, size))
            c.quit()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise SystemExit(f"fill failed: {errors[:3]}")
    return time.monotonic() - t0


def queue_count(srv):
    return sum(1 for f in srv.queue_files() if f.endswith(".env"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--queued", type=int, default=10000)
    ap.add_argument("--bin", default=None)
    a = ap.parse_args()
    if a.bin:
        os.environ["POSTLING_BIN"] = os.path.abspath(a.bin)

    sink = Sink()
    relay_cfg = {"hold": True, "smarthost": f"127.0.0.1:{sink.port}", "max_connections": a.connections,
                 "max_connections_per_domain": a.connections}
    srv = harness.Server(name="relaybench", users={ALICE: PW}, listeners=("submissions",),
                         config={"log": {"level": "info"}, "relay": relay_cfg})
    try:
        srv.start()
        log(f"fill: {a.messages} x {a.size} B over submissions ...")
        t_fill = fill(srv, a.messages, a.size)
        assert queue_count(srv) == a.messages, queue_count(srv)
        log(f"  queued in {t_fill:.2f} s ({a.messages / t_fill:.0f} msg/s)")
        srv.stop()

        srv.write_config({"relay": {"hold": False}})
        t0 = time.monotonic()
        srv.start()
        deadline = t0 + 600
        while (sink.messages < a.messages or queue_count(srv) > 0) and time.monotonic() < deadline:
            time.sleep(0.02)
        t_drain = time.monotonic() - t0
        ok = sink.messages == a.messages and queue_count(srv) == 0
        delivered = len(srv.find_log("relay.delivered"))
        log(f"drain: {sink.messages} received by the sink over {sink.connections} connections, "
            f"{delivered} relay.delivered, queue {'empty' if ok else 'NOT empty'} in {t_drain:.2f} s")
        srv.stop()

        # memory with a big queue
        srv.write_config({"relay": {"hold": True}})
        shutil.rmtree(srv.queue_dir, ignore_errors=True)
        srv.start()
        rss_empty = rss_kib(srv.proc.pid)
        log(f"fill: {a.queued} messages for the memory figure ...")
        t_fill2 = fill(srv, a.queued, 1024)
        srv.stop()
        since = srv.log_size()
        srv.start()
        srv.wait_log("relay.loaded", since=since, timeout=60)
        time.sleep(0.5)
        rss_full = rss_kib(srv.proc.pid)
        n = queue_count(srv)
        srv.stop()
    finally:
        srv.close()

    per = (rss_full - rss_empty) * 1024 / max(n, 1)
    log("")
    log(f"{'figure':44} {'value':>14}")
    log(f"{'messages':44} {a.messages:>14}")
    log(f"{'relay drain to sink, msg/s':44} {a.messages / t_drain:>14.0f}")
    log(f"{'drain time, s (incl. server start)':44} {t_drain:>14.2f}")
    log(f"{'sink connections used':44} {sink.connections:>14}")
    log(f"{'submission fill, msg/s (durable queue)':44} {a.messages / t_fill:>14.0f}")
    log(f"{'RSS, empty queue, KiB':44} {rss_empty:>14}")
    log(f"{'RSS, %d queued, KiB' % n:44} {rss_full:>14}")
    log(f"{'RSS per queued entry, bytes':44} {per:>14.0f}")
    log(f"{'fill of the big queue, s':44} {t_fill2:>14.1f}")
    if not ok:
        raise SystemExit("the queue was not drained")


if __name__ == "__main__":
    main()
