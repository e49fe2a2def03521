"""SMTP durability under kill -9 (issue 4, "Kill -9 test"): 10 parallel clients send
200 messages with unique Message-IDs to local users; the server is SIGKILLed at a
random moment while they send, then restarted. Afterwards:
  - every message that got "250 ... queued as" is in each of its recipients' Maildirs
    exactly once, complete (byte-exact content);
  - no message is stored twice, and nothing is stored whose final "." was never sent,
    nor anything of a message answered 451;
  - no stray file outside tmp/ (every file in new/ and cur/ is a complete message we
    sent), no queue entry (all recipients are local), and tmp/ holds nothing written
    after the restart (files a killed delivery left in tmp/ are allowed: the Maildir
    convention removes them after 36 hours).
Repeated for a few seeds (POSTLING_DURABILITY_SEEDS="11,22,33" overrides).

A second test does the same over submissions (implicit TLS + AUTH) with some remote
recipients: every acknowledged message then also has exactly one complete relay queue
entry, and the queue directory holds no half-written entry after the restart."""
import os
import random
import re
import socket
import threading
import time
import unittest

from harness import ConnectionClosed, Server, SmtpConn

PW = "Durability-Pw-77"
NUSERS = 12
USERS = {f"d{i:02d}@example.org": PW for i in range(1, NUSERS + 1)}
NCLIENTS = 10
NMESSAGES = 200
SEEDS = [int(x) for x in os.environ.get("POSTLING_DURABILITY_SEEDS", "11,22,33").split(",") if x.strip()]
QUEUED_RE = re.compile(r"^250 2\.0\.0 Ok: queued as [0-9a-v]{16}$")
MSGID_RE = re.compile(rb"^Message-ID: <([^>]+)>\r$", re.M)
GO_AHEAD = "354 End data with <CR><LF>.<CR><LF>"


class Msg:
    def __init__(self, seed, client, n, sender, rcpts, rng):
        self.mid = f"dur-{seed}-{client}-{n}.{rng.getrandbits(48):012x}@example.net"
        self.sender = sender
        self.rcpts = rcpts
        filler = "".join(rng.choice("abcdefghij .") for _ in range(rng.randint(0, 3000)))
        text = (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\n"
                f"Subject: durability {seed} {client} {n}\r\nMessage-ID: <{self.mid}>\r\n"
                "Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\n")
        for i in range(0, len(filler), 70):
            text += filler[i:i + 70] + "\r\n"
        text += ".line with a leading dot\r\nend\r\n"
        self.content = text.encode()
        self.state = "unsent"        # unsent | dot-sent (outcome unknown) | acked | tempfail | refused

    @property
    def local(self):
        return [r for r in self.rcpts if r.endswith("@example.org")]

    @property
    def remote(self):
        return [r for r in self.rcpts if not r.endswith("@example.org")]


def stuff(data):
    return re.sub(rb"(?m)^\.", b"..", data)


class KillNine(unittest.TestCase):
    maxDiff = None

    def run_seed(self, seed, submission=False):
        rng = random.Random(seed)
        srv = Server(users=USERS, listeners=("smtp", "submissions"), name=f"kill9-{seed}",
                     config={"log": {"level": "info"}})
        self.addCleanup(srv.close)
        srv.start()
        users = sorted(USERS)
        per_client = [[] for _ in range(NCLIENTS)]
        for n in range(NMESSAGES):
            c = n % NCLIENTS
            sender = users[c] if submission else f"client{c}@example.net"
            k = 2 if rng.random() < 0.2 else 1          # some messages to two users
            rcpts = rng.sample(users, k)
            if submission and rng.random() < 0.4:        # and some to remote ones
                rcpts.append(f"r{n}@remote{n % 3}.example")
            per_client[c].append(Msg(seed, c, n, sender, rcpts, rng))
        acked = [0]
        lock = threading.Lock()
        errors = []
        tempfails = []

        def client(idx):
            msgs = per_client[idx]
            try:
                conn = SmtpConn.connect(srv, "submissions" if submission else "smtp", timeout=10)
            except (OSError, ConnectionClosed):
                return
            try:
                conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn.ehlo(f"client{idx}.example")
                if submission:
                    conn.login(users[idx], PW)
                for m in msgs:
                    conn.send(f"MAIL FROM:<{m.sender}>\r\n"
                              + "".join(f"RCPT TO:<{r}>\r\n" for r in m.rcpts) + "DATA\r\n")
                    rs = conn.replies(len(m.rcpts) + 2)
                    if rs[-1] != GO_AHEAD:
                        errors.append(f"{m.mid}: {rs}")
                        m.state = "refused"
                        return
                    m.state = "dot-sent"
                    conn.send(stuff(m.content) + b".\r\n")
                    r = conn.reply()
                    if QUEUED_RE.match(r):
                        m.state = "acked"
                        with lock:
                            acked[0] += 1
                            if acked[0] == target and not killed:
                                # kill from here, not from a polling main thread that the
                                # scheduler may starve until every message is through
                                killed.append(acked[0])
                                srv.kill9()
                    elif r.startswith("451 4.3.0 "):
                        m.state = "tempfail"                # allowed, but then nothing may be stored
                        tempfails.append(f"{m.mid}: {r}")
                    else:
                        m.state = "refused"
                        errors.append(f"{m.mid}: final reply {r!r}")
            except (OSError, ConnectionClosed):
                return                              # the server was killed
            except AssertionError as e:             # a torn reply line when killed
                if srv.running():
                    errors.append(f"client {idx}: {e}")
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(NCLIENTS)]
        target = rng.randint(10, NMESSAGES - 30)
        killed = []
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while not killed and time.monotonic() < deadline and any(t.is_alive() for t in threads):
            time.sleep(0.01)
        with lock:
            if not killed:
                killed.append(acked[0])
                srv.kill9()
        killed_at = killed[0]
        for t in threads:
            t.join(15)
        self.assertFalse(any(t.is_alive() for t in threads), "client threads hung after kill -9")
        self.assertEqual(errors, [], f"seed {seed}: unexpected replies before the kill")
        all_msgs = [m for msgs in per_client for m in msgs]
        n_acked = sum(m.state == "acked" for m in all_msgs)
        self.assertLess(n_acked, NMESSAGES, f"seed {seed}: the kill came after every message was sent")
        self.assertGreaterEqual(killed_at, target)

        restart_t = time.time()
        time.sleep(0.01)
        srv.start()
        srv.assert_alive()
        by_mid = {m.mid: m for m in all_msgs}

        # -- Maildirs
        found = {}                                   # (mid, rcpt) -> [paths]
        strays = []
        for path in srv.mail_files():
            with open(path, "rb") as f:
                data = f.read()
            owner = "@".join(reversed(os.path.relpath(path, os.path.join(srv.data_dir, "mail")).split(os.sep)[:2]))
            mm = MSGID_RE.search(data)
            m = by_mid.get(mm.group(1).decode()) if mm else None
            if m is None or not data.endswith(b"\r\n" + m.content) or \
                    not data.startswith(f"Return-Path: <{m.sender}>\r\nDelivered-To: {owner}\r\n".encode()) or \
                    owner not in m.rcpts:
                strays.append((path, data[:300]))
                continue
            found.setdefault((m.mid, owner), []).append(path)
        self.assertEqual(strays, [], f"seed {seed}: files in new/ or cur/ that are not complete messages we sent")
        dups = {k: v for k, v in found.items() if len(v) > 1}
        self.assertEqual(dups, {}, f"seed {seed}: messages stored more than once")
        missing = [(m.mid, r) for m in all_msgs if m.state == "acked" for r in m.local if (m.mid, r) not in found]
        self.assertEqual(missing, [], f"seed {seed}: acknowledged with 250 but missing after kill -9")
        never_sent = [k for k in found if by_mid[k[0]].state == "unsent"]
        self.assertEqual(never_sent, [], f"seed {seed}: stored though the final dot was never sent")
        after_451 = [k for k in found if by_mid[k[0]].state == "tempfail"]
        self.assertEqual(after_451, [], f"seed {seed}: copies stored of messages answered 451")
        new_tmp = [p for p in srv.tmp_files() if os.stat(p).st_mtime > restart_t]
        self.assertEqual(new_tmp, [], f"seed {seed}: tmp/ files written after the restart")

        # -- relay queue
        qfiles = srv.queue_files()
        envs = {f[:-4] for f in qfiles if f.endswith(".env")}
        msgs = {f[:-4] for f in qfiles if f.endswith(".msg")}
        self.assertEqual(sorted(msgs - envs), [], f"seed {seed}: .msg without .env left after the restart")
        self.assertEqual(sorted(envs - msgs), [], f"seed {seed}: .env without .msg")
        queued = {}
        for qid in sorted(envs):
            env, data = srv.queue_entry(qid)
            mm = MSGID_RE.search(data)
            m = by_mid.get(mm.group(1).decode()) if mm else None
            rcpts = re.findall(r"^rcpt (\S+) - - pending 0 \d+ - -$", env, re.M)
            self.assertIsNotNone(m, f"seed {seed}: queue entry {qid} is no message we sent")
            self.assertTrue(data.endswith(b"\r\n" + m.content), f"seed {seed}: queue entry {qid} incomplete")
            self.assertEqual(rcpts, m.remote, env)
            self.assertIn(f"\nsender {m.sender}\n", env)
            self.assertTrue(env.endswith(f"\nend {len(rcpts)}\n"), env)
            queued.setdefault(m.mid, []).append(qid)
        self.assertEqual({k: v for k, v in queued.items() if len(v) > 1}, {}, f"seed {seed}: queued twice")
        self.assertEqual([m.mid for m in all_msgs if m.state == "acked" and m.remote and m.mid not in queued], [],
                         f"seed {seed}: acknowledged with 250 but not in the queue after kill -9")
        self.assertEqual([mid for mid in queued if by_mid[mid].state in ("unsent", "tempfail")], [],
                         f"seed {seed}: queued though never sent or answered 451")
        # relay.h: "a .msg without .env, and any *.tmp, is what a crash left (queue_clean)"
        self.assertEqual(sorted(f for f in qfiles if not (f.endswith(".env") or f.endswith(".msg"))), [],
                         f"seed {seed}: temporary files left in the queue dir after the restart")

        # the restarted server takes mail again
        c = SmtpConn.connect(srv, "smtp")
        self.addCleanup(c.close)
        c.ehlo()
        rs = c.transaction("after@example.net", ["d01@example.org"], b"Subject: after restart\r\n\r\nok\r\n")
        self.assertRegex(rs[-1], QUEUED_RE)
        c.quit()
        rc = srv.stop()
        srv.check_sanitizers()
        self.assertEqual(rc, 0)
        unknown = sum(m.state == "dot-sent" for m in all_msgs)
        stored_unknown = sum(1 for k in found if by_mid[k[0]].state == "dot-sent")
        print(f"seed {seed}{' (submission)' if submission else ''}: killed after {killed_at} acks; "
              f"{n_acked} acked, {unknown} in flight ({stored_unknown} of their copies stored), "
              f"{len(found)} copies on disk, {len(queued)} queued, {len(srv.tmp_files())} crash leftovers "
              f"in tmp/; {len(tempfails)} answered 451")

    def test_kill9_while_sending(self):
        for seed in SEEDS:
            with self.subTest(seed=seed):
                self.run_seed(seed)

    def test_kill9_while_submitting_with_remote_recipients(self):
        for seed in SEEDS:
            with self.subTest(seed=seed):
                self.run_seed(seed + 1000, submission=True)


if __name__ == "__main__":
    unittest.main()
