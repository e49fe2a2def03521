"""Interop: Debian's mbsync (isync) and offlineimap3 against the IMAP server.

mbsync syncs a 500-message account with folders and flags both ways; a second
run changes nothing on either side; a flag set on either side reaches the
other. offlineimap3 (a second, independent client) reads the folder list and
a message. The target is Postling unless IMAP_TARGET=dovecot (the reference
run that checks the tests themselves); see tests/integration/imap_support.py.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "integration"))

from imap_support import make_target, quote, seq_status, value  # noqa: E402

MBSYNC = shutil.which("mbsync")
OFFLINEIMAP = shutil.which("offlineimap")
PW = "Interop-Imap-Pw-81d"
USER = "sync@example.org"
USER2 = "reader@example.org"
N_INBOX = 500
FOLDERS = {"Work": 40, "Work/Reports": 15, "Lists": 25}   # besides INBOX and the special-use ones


def message(folder, i):
    body = "".join(f"Line {j} of message {i} in {folder}.\r\n" for j in range(1 + i % 7))
    return (f"From: Sender {i % 13} <s{i % 13}@example.net>\r\nTo: {USER}\r\n"
            f"Subject: {folder} message {i}\r\nMessage-ID: <{folder.replace('/', '.')}-{i}@interop.example>\r\n"
            f"Date: Mon, 01 Jan 2024 00:{i // 60 % 60:02d}:{i % 60:02d} +0000\r\n\r\n{body}").encode()


def initial_flags(i):
    """Flags of message i when the account is filled: every 3rd seen, every 10th flagged."""
    f = []
    if i % 3 == 0:
        f.append("\\Seen")
    if i % 10 == 0:
        f.append("\\Flagged")
    return " ".join(f)


def maildir_flags(name):
    """Maildir info flags of a file name ('...:2,FS' -> 'FS')."""
    return name.split(":2,", 1)[1] if ":2," in name else ""


class ImapInterop(unittest.TestCase):
    target = None

    @classmethod
    def setUpClass(cls):
        cls.target = make_target({USER: PW, USER2: PW}, name=cls.__name__)
        try:
            cls.target.start()
            cls.fill()
        except BaseException:
            cls.target.close()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.target is not None:
            t, cls.target = cls.target, None
            t.close()

    @classmethod
    def fill(cls):
        """500 messages in INBOX and a few folders, APPENDed with LITERAL+ in one session."""
        c = cls.target.login(USER)
        try:
            for name in FOLDERS:
                r = c.cmd(f"CREATE {quote(name)}")
                assert r.status == "OK", r.line
            for folder, n in [("INBOX", N_INBOX), *FOLDERS.items()]:
                for i in range(1, n + 1):
                    r = c.cmd(f"APPEND {quote(folder)} ({initial_flags(i)}) {{}}", message(folder, i), sync=False)
                    assert r.status == "OK", f"APPEND {folder} {i}: {r.line}"
            r = c.cmd("APPEND Lists (\\Seen) {}", message("Lists", 999), sync=False)
            assert r.status == "OK", r.line
        finally:
            c.logout()

    def setUp(self):
        self.home = tempfile.mkdtemp(prefix="postling-imap-interop-")
        self.addCleanup(shutil.rmtree, self.home, True)
        self.conns = []

    def tearDown(self):
        for c in self.conns:
            c.close()
        self.target.assert_alive()

    def login(self, user=USER):
        c = self.target.login(user)
        self.conns.append(c)
        return c

    # -- server side view
    def server_state(self, user=USER):
        """{folder: (uidvalidity, uidnext, {uid: frozenset(flags)})} of every folder."""
        c = self.login(user)
        r = c.ok('LIST "" "*"')
        names = []
        for u in r.untagged:
            m = re.match(rb'^\* LIST \([^)]*\) "/" (.+)$', u)
            if m:
                v = value(m.group(1))
                names.append(v.decode() if isinstance(v, bytes) else str(v))
        out = {}
        for name in sorted(names):
            r = c.ok(f"EXAMINE {quote(name)}")
            uv = re.search(r"UIDVALIDITY (\d+)", " ".join(r.lines("* OK"))).group(1)
            un = re.search(r"UIDNEXT (\d+)", " ".join(r.lines("* OK"))).group(1)
            r = c.ok("UID FETCH 1:* (FLAGS)")
            flags = {}
            for _s, items in r.fetches():
                flags[int(items["UID"])] = frozenset(str(f) for f in value(items["FLAGS"])) - {"\\Recent"}
            out[name] = (uv, un, flags)
        c.logout()
        self.conns.remove(c)
        return out

    # -- mbsync
    def mbsync_rc(self):
        local = os.path.join(self.home, "mail")
        os.makedirs(local, exist_ok=True)
        rc = os.path.join(self.home, "mbsyncrc")
        with open(rc, "w") as f:
            f.write(f"""IMAPAccount acc
Host {self.target.host}
Port {self.target.port("imap")}
User {USER}
Pass {PW}
SSLType None
AuthMechs LOGIN
PipelineDepth 50

IMAPStore remote
Account acc

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
Sync All
""")
        return rc, local

    def mbsync(self, rc, *args):
        p = subprocess.run([MBSYNC, "-c", rc, *args, "-a"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=dict(os.environ, HOME=self.home), timeout=120, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, f"mbsync exit {p.returncode}\n{out[-3000:]}\n{self.target.log_tail()}")
        errors = [l for l in out.splitlines() if "Error" in l or "error" in l]
        self.assertEqual(errors, [], out[-3000:])
        return out

    def local_state(self, local):
        """{folder: {file name: (size, mtime_ns)}} of the local Maildirs (new/ and cur/)."""
        out = {}
        for d, _dirs, files in os.walk(local):
            if os.path.basename(d) in ("new", "cur"):
                folder = os.path.relpath(os.path.dirname(d), local)
                for f in files:
                    st = os.stat(os.path.join(d, f))
                    out.setdefault(folder, {})[os.path.join(os.path.basename(d), f)] = (st.st_size, st.st_mtime_ns)
        return out

    def local_file(self, local, folder, msgid):
        for sub in ("cur", "new"):
            d = os.path.join(local, folder, sub)
            for f in os.listdir(d):
                with open(os.path.join(d, f), "rb") as fh:
                    if f"Message-ID: <{msgid}>".encode() in fh.read(4096):
                        return os.path.join(d, f)
        raise AssertionError(f"{msgid} not in local {folder}")

    def uid_of(self, c, folder, msgid):
        c.ok(f"SELECT {quote(folder)}")
        r = c.ok(f"UID SEARCH HEADER Message-ID {quote('<' + msgid + '>')}")
        uids = r.lines("* SEARCH")[0].split()[2:]
        self.assertEqual(len(uids), 1, r.untagged)
        return int(uids[0])

    @unittest.skipIf(MBSYNC is None, "mbsync (isync) is not installed")
    def test_mbsync_two_way_sync_noop_rerun_and_flag_propagation(self):
        rc, local = self.mbsync_rc()
        t0 = time.monotonic()
        self.mbsync(rc)
        first = time.monotonic() - t0
        # every server message is local, with its flags
        want = {"INBOX": N_INBOX, "Work": FOLDERS["Work"], "Work/Reports": FOLDERS["Work/Reports"],
                "Lists": FOLDERS["Lists"] + 1, "Sent": 0, "Drafts": 0, "Trash": 0, "Junk": 0, "Archive": 0}
        state = self.local_state(local)
        for folder, n in want.items():
            self.assertTrue(os.path.isdir(os.path.join(local, folder, "cur")), f"no local {folder}")
            self.assertEqual(len(state.get(folder, {})), n, folder)
        inbox = state["INBOX"]
        seen = sum(1 for f in inbox if "S" in maildir_flags(f))
        flagged = sum(1 for f in inbox if "F" in maildir_flags(f))
        self.assertEqual((seen, flagged), (N_INBOX // 3, N_INBOX // 10))
        with open(self.local_file(local, "Work/Reports", "Work.Reports-7@interop.example"), "rb") as f:
            # mbsync stores with local (LF) line ends and adds its X-TUID tracking header
            got = re.sub(rb"(?m)^X-TUID: \S+\n", b"", f.read())
            self.assertEqual(got, message("Work/Reports", 7).replace(b"\r\n", b"\n"))

        # a second run changes nothing on either side
        server_before = self.server_state()
        local_before = self.local_state(local)
        self.mbsync(rc)
        self.assertEqual(self.local_state(local), local_before, "re-run changed the local side")
        self.assertEqual(self.server_state(), server_before, "re-run changed the server side")

        # local flag change -> server; server flag change -> local; new mail both ways
        path = self.local_file(local, "INBOX", "INBOX-2@interop.example")
        self.assertEqual(maildir_flags(path), "")
        base = path.split(":2,")[0]
        os.rename(path, os.path.join(os.path.dirname(os.path.dirname(base)), "cur",
                                     os.path.basename(base) + ":2,FR"))
        c = self.login()
        uid_srv = self.uid_of(c, "Work", "Work-4@interop.example")
        c.ok(f"UID STORE {uid_srv} +FLAGS.SILENT (\\Seen \\Answered)")
        new_local = os.path.join(local, "Lists", "new", f"{int(time.time())}.local1.interop")
        with open(new_local, "wb") as f:
            f.write(message("Lists", 777))
        c.ok("APPEND Work {}", message("Work", 888))
        c.logout()
        self.conns.remove(c)
        time.sleep(1.1)           # mbsync skips Maildirs changed within the last second
        self.mbsync(rc)
        c = self.login()
        uid = self.uid_of(c, "INBOX", "INBOX-2@interop.example")
        flags = seq_status(c.ok(f"UID FETCH {uid} (FLAGS)"))
        self.assertEqual(set().union(*flags.values()) - {"\\Recent"}, {"\\Flagged", "\\Answered"})
        self.uid_of(c, "Lists", "Lists-777@interop.example")
        self.assertEqual(sorted(maildir_flags(self.local_file(local, "Work", "Work-4@interop.example"))),
                         ["R", "S"])
        self.local_file(local, "Work", "Work-888@interop.example")
        # and the run after that is a no-op again
        server_before = self.server_state()
        local_before = self.local_state(local)
        self.mbsync(rc)
        self.assertEqual(self.local_state(local), local_before)
        self.assertEqual(self.server_state(), server_before)
        print(f"mbsync: first sync of {sum(want.values())} messages took {first:.2f} s", file=sys.stderr)

    @unittest.skipIf(OFFLINEIMAP is None, "offlineimap3 is not installed")
    def test_offlineimap_reads_folder_list_and_a_message(self):
        meta = os.path.join(self.home, "oi-meta")
        mail = os.path.join(self.home, "oi-mail")
        rc = os.path.join(self.home, "offlineimaprc")
        with open(rc, "w") as f:
            f.write(f"""[general]
accounts = t
metadata = {meta}
ui = basic

[Account t]
localrepository = l
remoterepository = r

[Repository l]
type = Maildir
localfolders = {mail}
sep = /

[Repository r]
type = IMAP
remotehost = {self.target.host}
remoteport = {self.target.port("imap")}
remoteuser = {USER}
remotepass = {PW}
ssl = no
starttls = no
readonly = True
folderfilter = lambda f: f in ("Work/Reports",)
""")
        env = dict(os.environ, HOME=self.home)
        p = subprocess.run([OFFLINEIMAP, "-c", rc, "--info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           env=env, timeout=120, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out[-3000:])
        # --info prints the remote "Folderlist:" (filtered ones marked "(disabled)")
        m = re.search(r"Remote repository.*?Folderlist:\n(.*?)\n\n", out, re.S)
        self.assertIsNotNone(m, out[-3000:])
        listed = {re.sub(r" \(disabled\)$", "", l.strip()) for l in m.group(1).splitlines() if l.strip()}
        self.assertEqual(listed, {"INBOX", *FOLDERS, "Sent", "Drafts", "Trash", "Junk", "Archive"}, out[-3000:])
        p = subprocess.run([OFFLINEIMAP, "-c", rc, "-o", "-u", "basic"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, env=env, timeout=120, stdin=subprocess.DEVNULL)
        out = p.stdout.decode(errors="replace")
        self.assertEqual(p.returncode, 0, out[-3000:])
        self.assertNotIn("ERROR", out, out[-3000:])
        files = []
        for sub in ("cur", "new"):
            d = os.path.join(mail, "Work/Reports", sub)
            files += [os.path.join(d, f) for f in os.listdir(d)] if os.path.isdir(d) else []
        self.assertEqual(len(files), FOLDERS["Work/Reports"], out[-2000:])
        bodies = {}
        for path in files:
            with open(path, "rb") as f:
                data = f.read()
            bodies[re.search(rb"Message-ID: <([^>]+)>", data).group(1).decode()] = data
        self.assertEqual(bodies["Work.Reports-3@interop.example"].replace(b"\r\n", b"\n"),
                         message("Work/Reports", 3).replace(b"\r\n", b"\n"))


if __name__ == "__main__":
    unittest.main()
