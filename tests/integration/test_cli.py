"""The postling command line: check-config, passwd, user, deliver, --help."""
import os
import re
import shutil
import subprocess
import tempfile
import unittest
import warnings

from harness import REPO, Pop3Conn, Server, crlf, free_port, hash_password, make_message, postling_bin

SUBCOMMANDS = ("serve", "check-config", "passwd", "user", "deliver", "queue")
ERR_RE = r"^{path}:(\d+):(\d+): (.+)$"


def run(*args, input=None, env=None, timeout=30):
    return subprocess.run([postling_bin(), *args], input=input, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, timeout=timeout, env=env)


class CliCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="postling-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.data = os.path.join(self.tmp, "data")
        os.mkdir(self.data)

    def write(self, name, text):
        p = os.path.join(self.tmp, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def good_lines(self):
        """A valid config as a list of lines (line numbers below are 1-based)."""
        return [
            "server:",                                                   # 1
            "  hostname: test.example",                                  # 2
            f"  data_dir: \"{self.data}\"",                               # 3
            "  user: \"\"",                                              # 4
            "tls:",                                                      # 5
            "  self_signed: true",                                       # 6
            "listeners:",                                                # 7
            f"  - {{ protocol: pop3, address: \"127.0.0.1\", port: {free_port()} }}",  # 8
            "domains: [example.org]",                                    # 9
            "users:",                                                    # 10
            "  - address: a@example.org",                                # 11
            f"    password: \"{hash_password('Cli-Pw-1')}\"",            # 12
        ]

    def config_error(self, lines, name="bad.yaml"):
        """check-config on the lines; assert exit 2; return (line, col, msg)."""
        path = self.write(name, "\n".join(lines) + "\n")
        p = run("check-config", "-c", path)
        err = p.stderr.decode(errors="replace")
        self.assertEqual(p.returncode, 2, f"check-config exit {p.returncode}, stderr: {err}")
        m = re.search(ERR_RE.format(path=re.escape(path)), err, re.M)
        self.assertIsNotNone(m, f"no '{path}:line:column: message' on stderr: {err!r}")
        return int(m.group(1)), int(m.group(2)), m.group(3)


class CheckConfig(CliCase):
    def test_good_config_exits_0(self):
        path = self.write("good.yaml", "\n".join(self.good_lines()) + "\n")
        p = run("check-config", "-c", path)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))

    def test_harness_config_is_valid(self):
        srv = Server(users={"h@example.org": "Cli-Pw-1"}, users_file={"f@example.org": "Cli-Pw-1"},
                     name="cli")
        try:
            p = run("check-config", "-c", srv.config_path)
            self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        finally:
            srv.close()

    def test_config_example_yaml_is_valid(self):
        path = os.path.join(REPO, "config.example.yaml")
        self.assertTrue(os.path.isfile(path), "config.example.yaml missing at the repository root")
        p = run("check-config", "-c", path)
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))

    def test_tab_indentation(self):
        lines = self.good_lines()
        lines[2] = "\t" + lines[2].lstrip()
        line, col, msg = self.config_error(lines)
        self.assertEqual(line, 3, msg)
        self.assertGreaterEqual(col, 1)

    def test_unknown_key_suggests_the_right_one(self):
        lines = self.good_lines()
        lines[1] = "  hostnme: test.example"
        line, col, msg = self.config_error(lines)
        self.assertEqual((line, col), (2, 3), msg)
        self.assertIn("did you mean", msg)
        self.assertIn("hostname", msg)

    def test_unknown_top_level_key(self):
        lines = self.good_lines() + ["listners: []"]
        line, col, msg = self.config_error(lines)
        self.assertEqual((line, col), (13, 1), msg)
        self.assertIn("did you mean", msg)
        self.assertIn("listeners", msg)

    def test_port_out_of_range(self):
        lines = self.good_lines()
        lines[7] = '  - { protocol: pop3, address: "127.0.0.1", port: 70000 }'
        line, col, msg = self.config_error(lines)
        self.assertEqual(line, 8, msg)
        self.assertIn("70000", msg)

    def test_unknown_protocol(self):
        lines = self.good_lines()
        lines[7] = '  - { protocol: pop4, address: "127.0.0.1", port: 1110 }'
        line, col, msg = self.config_error(lines)
        self.assertEqual(line, 8, msg)

    def test_wrong_type(self):
        lines = self.good_lines()
        lines[5] = "  self_signed: maybe"
        line, col, msg = self.config_error(lines)
        self.assertEqual(line, 6, msg)

    def test_missing_certificate_file(self):
        lines = self.good_lines()
        lines[4:6] = ["tls:",
                      "  certificates:",
                      "    - cert: /nonexistent/postling-test/cert.pem",
                      "      key: /nonexistent/postling-test/key.pem"]
        line, col, msg = self.config_error(lines)
        self.assertIn(line, (7, 8), msg)
        self.assertIn("/nonexistent/postling-test/", msg)

    def test_serve_refuses_bad_config_with_same_message(self):
        lines = self.good_lines()
        lines[1] = "  hostnme: test.example"
        path = self.write("bad.yaml", "\n".join(lines) + "\n")
        p = run("serve", "-c", path, timeout=15)
        self.assertEqual(p.returncode, 2)
        self.assertRegex(p.stderr.decode(errors="replace"),
                         re.compile(ERR_RE.format(path=re.escape(path)), re.M))

    def test_missing_config_file(self):
        p = run("check-config", "-c", os.path.join(self.tmp, "nope.yaml"))
        self.assertEqual(p.returncode, 2)
        self.assertIn("nope.yaml", p.stderr.decode(errors="replace"))

    def test_override_option(self):
        path = self.write("good.yaml", "\n".join(self.good_lines()) + "\n")
        p = run("check-config", "-c", path, "-o", "server.hostname=other.example")
        self.assertEqual(p.returncode, 0, p.stderr.decode(errors="replace"))
        p = run("check-config", "-c", path, "-o", "server.hostnme=x")
        self.assertEqual(p.returncode, 2, p.stderr.decode(errors="replace"))


class Passwd(CliCase):
    def test_passwd_prints_crypt_hash(self):
        p = run("passwd", input=b"S3cret-cli\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        out = p.stdout.decode().strip().splitlines()
        self.assertEqual(len(out), 1, out)
        h = out[0]
        self.assertRegex(h, r"^\$(y|6)\$[./0-9A-Za-z$]+$")
        self.assertNotIn(b"S3cret-cli", p.stdout + p.stderr)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            try:
                import crypt
            except ImportError:
                crypt = None
        if crypt is not None:
            self.assertEqual(crypt.crypt("S3cret-cli", h), h, "hash does not verify the password")

    def test_passwd_salts_differ(self):
        a = run("passwd", input=b"same\n").stdout.strip()
        b = run("passwd", input=b"same\n").stdout.strip()
        self.assertNotEqual(a, b)

    def test_passwd_empty_input_fails(self):
        p = run("passwd", input=b"")
        self.assertNotEqual(p.returncode, 0)
        self.assertEqual(p.stdout, b"")


class UserCommand(CliCase):
    def make_config(self):
        lines = self.good_lines()[:10]          # no inline users
        self.users_file = os.path.join(self.tmp, "users.yaml")
        lines.append(f"users_file: \"{self.users_file}\"")
        return self.write("cfg.yaml", "\n".join(lines) + "\n")

    def test_add_list_del(self):
        cfg = self.make_config()
        p = run("user", "-c", cfg, "add", "New.User@example.org", input=b"User-Pw-123\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        with open(self.users_file) as f:
            text = f.read()
        self.assertIn("new.user@example.org", text)
        self.assertRegex(text, r"\$(y|6)\$")
        self.assertNotIn("User-Pw-123", text, "plaintext password stored without --secret")
        p = run("user", "-c", cfg, "add", "other@example.org", input=b"Other-Pw-1\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        p = run("user", "-c", cfg, "list")
        self.assertEqual(p.returncode, 0, p.stderr)
        listed = p.stdout.decode()
        self.assertIn("new.user@example.org", listed)
        self.assertIn("other@example.org", listed)
        p = run("user", "-c", cfg, "add", "new.user@example.org", input=b"x\n")
        self.assertNotEqual(p.returncode, 0, "duplicate add accepted")
        p = run("user", "-c", cfg, "del", "new.user@example.org")
        self.assertEqual(p.returncode, 0, p.stderr)
        listed = run("user", "-c", cfg, "list").stdout.decode()
        self.assertNotIn("new.user@example.org", listed)
        self.assertIn("other@example.org", listed)
        p = run("user", "-c", cfg, "del", "new.user@example.org")
        self.assertNotEqual(p.returncode, 0, "deleting a missing user succeeded")
        self.assertEqual(run("check-config", "-c", cfg).returncode, 0)

    def test_added_user_can_log_in(self):
        srv = Server(users_file={}, name="cli-user")
        self.addCleanup(srv.close)
        p = srv.run_cli("user", "-c", srv.config_path, "add", "fresh@example.org", input=b"Fresh-Pw-9\n")
        self.assertEqual(p.returncode, 0, p.stderr)
        srv.sensitive.add("Fresh-Pw-9")
        srv.start()
        c = Pop3Conn.connect(srv, "pop3")
        try:
            c.login("fresh@example.org", "Fresh-Pw-9")
        finally:
            c.close()
        srv.assert_no_secrets_in_log()

    def test_usage_errors(self):
        cfg = self.make_config()
        self.assertNotEqual(run("user", "-c", cfg).returncode, 0)
        self.assertNotEqual(run("user", "-c", cfg, "add").returncode, 0)
        self.assertNotEqual(run("user", "-c", cfg, "frobnicate", "x@example.org").returncode, 0)


class Deliver(CliCase):
    NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^/,:]+),S=(\d+)(:2,[A-Z]*)?$")

    def setUp(self):
        super().setUp()
        self.srv = Server(users={"d@example.org": "Deliver-Pw-1"}, name="deliver")
        self.addCleanup(self.srv.close)

    def test_deliver_puts_crlf_file_in_new(self):
        m = make_message("cli deliver", body="line 1\nline 2\n", rcpt="d@example.org")
        p = self.srv.deliver("d@example.org", m)
        self.assertEqual(p.returncode, 0)
        md = self.srv.maildir("d@example.org")
        new = os.listdir(os.path.join(md, "new"))
        self.assertEqual(len(new), 1)
        self.assertEqual(os.listdir(os.path.join(md, "tmp")), [])
        self.assertEqual(os.listdir(os.path.join(md, "cur")), [])
        mm = self.NAME_RE.match(new[0])
        self.assertIsNotNone(mm, f"file name {new[0]!r} is not <secs>.M<usecs>P<pid>Q<seq>.<host>,S=<size>")
        with open(os.path.join(md, "new", new[0]), "rb") as f:
            data = f.read()
        self.assertEqual(data, crlf(m))
        self.assertEqual(int(mm.group(6)), len(data))

    def test_deliver_keeps_existing_crlf(self):
        m = make_message("crlf already", lf=b"\r\n")
        self.srv.deliver("d@example.org", m)
        files = self.srv.message_files("d@example.org")
        with open(files[0], "rb") as f:
            self.assertEqual(f.read(), m)

    def test_deliver_two_messages_get_distinct_names(self):
        self.srv.deliver("d@example.org", make_message("one"))
        self.srv.deliver("d@example.org", make_message("two"))
        self.assertEqual(len(self.srv.message_files("d@example.org")), 2)

    def test_deliver_unknown_user(self):
        p = self.srv.deliver("nobody@example.org", make_message("x"), check=False)
        self.assertEqual(p.returncode, 67, p.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.srv.data_dir, "mail", "example.org", "nobody")))


class Help(unittest.TestCase):
    def test_top_level_help(self):
        p = run("--help")
        self.assertEqual(p.returncode, 0)
        out = p.stdout.decode()
        self.assertIn("usage: postling", out)
        for sub in SUBCOMMANDS:
            self.assertIn(sub, out)

    def test_every_subcommand_has_help(self):
        for sub in SUBCOMMANDS:
            with self.subTest(sub=sub):
                p = run(sub, "--help", timeout=10)
                self.assertEqual(p.returncode, 0, p.stderr)
                self.assertIn(f"usage: postling {sub}", p.stdout.decode())
                p = run(sub, "-h", timeout=10)
                self.assertEqual(p.returncode, 0, p.stderr)

    def test_unknown_subcommand(self):
        p = run("frobnicate")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("usage", p.stderr.decode())

    def test_unknown_option(self):
        p = run("check-config", "--no-such-option")
        self.assertNotEqual(p.returncode, 0)
        self.assertIn("usage", p.stderr.decode())


if __name__ == "__main__":
    unittest.main()
