#!/usr/bin/env python3
"""sink.py: a scripted SMTP server for tests/unit/test_mta.c (stdlib only).

Listens on 127.0.0.1 (a free port), prints "PORT <n>" on stdout once it is
listening, then serves every connection in a thread until it is killed.
Everything it sees goes to <dir>/log, one line per event, flushed at once:

    CONN <n>                 connection n accepted (1, 2, ...)
    C <line>                 a command line, nothing else buffered behind it
    C+ <line>                a command line with more input already buffered
                             (the client pipelined: RFC 2920)
    TLS <version>            STARTTLS handshake done
    DATA <n> <octets>        a message received; raw bytes in <dir>/data.<n>
                             (as on the wire, up to and including CRLF.CRLF)
    DROP                     closed on purpose (--drop-after)
    EOF                      the client closed

Replies are given with "|" between the lines of a multi-line reply.
"""
import argparse
import os
import socket
import ssl
import sys
import threading
import time

lock = threading.Lock()
conn_count = 0


def parse_args():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--greeting", default="220 sink.example ESMTP ready")
    ap.add_argument("--ehlo", default="PIPELINING,8BITMIME,SMTPUTF8,DSN,SIZE 10000000,"
                    "ENHANCEDSTATUSCODES",
                    help="comma-separated EHLO keywords; '' for none")
    ap.add_argument("--ehlo-reply", default=None, help="reply to EHLO instead of 250")
    ap.add_argument("--helo-reply", default="250 sink.example")
    ap.add_argument("--mail-reply", default="250 2.1.0 sender ok")
    ap.add_argument("--rcpt", action="append", default=[],
                    help="ADDR=REPLY for that recipient (others get 250)")
    ap.add_argument("--data-reply", default="354 go ahead")
    ap.add_argument("--final-reply", default="250 2.0.0 queued as 42")
    ap.add_argument("--hang", action="store_true", help="accept, never answer")
    ap.add_argument("--drop-after", type=int, default=-1,
                    help="close after that many message octets")
    ap.add_argument("--bytewise", action="store_true",
                    help="send replies one octet per segment")
    ap.add_argument("--long-ehlo", type=int, default=0,
                    help="EHLO reply carries a line of that many octets")
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--starttls-reply", default="220 2.0.0 go ahead")
    ap.add_argument("--tls-break", action="store_true",
                    help="after 220 to STARTTLS, send garbage instead of a handshake")
    ap.add_argument("--tls-break-once", action="store_true",
                    help="--tls-break on the first connection only")
    ap.add_argument("--tls-inject", action="store_true",
                    help="a reply in clear in the same segment as the 220 to STARTTLS")
    ap.add_argument("--auth", default=None, help="USER:PASS, offers AUTH PLAIN LOGIN")
    ap.add_argument("--auth-mechs", default="PLAIN LOGIN")
    return ap.parse_args()


class Conn:
    def __init__(self, args, sock, n, log):
        self.a = args
        self.s = sock
        self.n = n
        self.log = log
        self.buf = b""
        self.tls = False
        self.data_no = 0

    def send(self, reply):
        lines = reply.split("|")
        out = b""
        for i, l in enumerate(lines):
            if i < len(lines) - 1 and len(l) >= 3 and l[3:4] == " ":
                l = l[:3] + "-" + l[4:]
            out += l.encode("utf-8", "surrogateescape") + b"\r\n"
        if self.a.bytewise:
            for i in range(len(out)):
                self.s.sendall(out[i:i + 1])
                time.sleep(0.002)
        else:
            self.s.sendall(out)

    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError
        self.buf += d

    def line(self):
        while b"\r\n" not in self.buf:
            self.fill()
        i = self.buf.index(b"\r\n")
        l, self.buf = self.buf[:i], self.buf[i + 2:]
        text = l.decode("utf-8", "surrogateescape")
        self.log(("C+ " if self.buf else "C ") + text)
        return text

    def ehlo_reply(self):
        exts = [e for e in self.a.ehlo.split(",") if e]
        if self.a.tls and not self.tls:
            exts.append("STARTTLS")
        if self.a.auth:
            exts.append("AUTH " + self.a.auth_mechs)
        if self.a.long_ehlo:
            exts.append("X" * self.a.long_ehlo)
        return "|".join(["250 sink.example"] + ["250 " + e for e in exts])

    def data(self):
        self.send(self.a.data_reply)
        if not self.a.data_reply.startswith("354"):
            return
        while b"\r\n.\r\n" not in b"\r\n" + self.buf:
            if 0 <= self.a.drop_after <= len(self.buf):
                self.log("DROP")
                raise EOFError
            self.fill()
        end = (b"\r\n" + self.buf).index(b"\r\n.\r\n") + 3
        msg, self.buf = self.buf[:end], self.buf[end:]
        self.data_no += 1
        name = "data.%d.%d" % (self.n, self.data_no)
        with open(os.path.join(self.a.dir, name), "wb") as f:
            f.write(msg)
        self.log("DATA %s %d" % (name, len(msg)))
        self.send(self.a.final_reply)

    def starttls(self):
        if self.a.tls_inject:
            self.s.sendall(b"220 go ahead\r\n250 injected\r\n")
            self.fill()
            raise EOFError
        self.send(self.a.starttls_reply)
        if not self.a.starttls_reply.startswith("220"):
            return
        if self.a.tls_break or (self.a.tls_break_once and self.n == 1):
            time.sleep(0.1)   # apart from the 220: a failed handshake, not an injection
            self.s.sendall(b"this is not TLS\r\n" * 4)
            raise EOFError
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.a.tls[0], self.a.tls[1])
        self.s = ctx.wrap_socket(self.s, server_side=True)
        self.tls = True
        self.log("TLS " + self.s.version())

    def auth(self, arg):
        import base64
        parts = arg.split(" ")
        user, pw = self.a.auth.split(":", 1)
        if parts[0].upper() == "PLAIN":
            raw = base64.b64decode(parts[1]) if len(parts) > 1 else b""
            ok = raw == b"\0" + user.encode() + b"\0" + pw.encode()
        else:
            self.send("334 VXNlcm5hbWU6")
            u = base64.b64decode(self.line())
            self.send("334 UGFzc3dvcmQ6")
            p = base64.b64decode(self.line())
            ok = (u, p) == (user.encode(), pw.encode())
        self.log("AUTH " + ("ok" if ok else "bad"))
        self.send("235 2.7.0 ok" if ok else "535 5.7.8 bad credentials")

    def rcpt(self, l):
        addr = l[l.index("<") + 1:l.index(">")] if "<" in l and ">" in l else ""
        for r in self.a.rcpt:
            k, v = r.split("=", 1)
            if k == addr:
                return v
        return "250 2.1.5 ok"

    def run(self):
        if self.a.hang:
            while True:
                self.fill()
        self.send(self.a.greeting)
        while True:
            l = self.line()
            verb = l.split(" ")[0].upper()
            if verb == "EHLO":
                self.send(self.a.ehlo_reply or self.ehlo_reply())
            elif verb == "HELO":
                self.send(self.a.helo_reply)
            elif verb == "STARTTLS":
                self.starttls()
            elif verb == "AUTH":
                self.auth(l[5:])
            elif verb == "MAIL":
                self.send(self.a.mail_reply)
            elif verb == "RCPT":
                self.send(self.rcpt(l))
            elif verb == "DATA":
                self.data()
            elif verb == "RSET":
                self.send("250 2.0.0 ok")
            elif verb == "QUIT":
                self.send("221 2.0.0 bye")
                return
            else:
                self.send("500 5.5.2 what")


def serve(args, sock, logf):
    global conn_count
    with lock:
        conn_count += 1
        n = conn_count

    def log(s):
        with lock:
            logf.write(s + "\n")
            logf.flush()

    log("CONN %d" % n)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Conn(args, sock, n, log)
    try:
        c.run()
    except (EOFError, ConnectionError, ssl.SSLError, OSError):
        log("EOF")
    finally:
        try:
            c.s.close()
        except OSError:
            pass


def main():
    args = parse_args()
    logf = open(os.path.join(args.dir, "log"), "w", encoding="utf-8", errors="surrogateescape")
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    sys.stdout.write("PORT %d\n" % ls.getsockname()[1])
    sys.stdout.flush()
    while True:
        s, _ = ls.accept()
        threading.Thread(target=serve, args=(args, s, logf), daemon=True).start()


if __name__ == "__main__":
    main()
