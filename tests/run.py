#!/usr/bin/env python3
"""Postling test runner (Python 3 stdlib only).

For each --build DIR:
  1. every unit test executable DIR/tests/test_* (cmocka, TAP output);
  2. the integration tests (unittest discovery in tests/integration) with
     POSTLING_BIN=DIR/postling;
  3. the interop tests (tests/interop) the same way.
Prints PASS/FAIL/SKIP lines per test and closes with the line
"N passed, N failed, N skipped". Exit status 1 if anything failed or no test ran.

  python3 tests/run.py --build build --build build-asan
  python3 tests/run.py --only-integration --bin build/postling      (meson)
  python3 tests/run.py --build build -k reload                     (filter)

Unittest suites run in a child process (its own process group, which the
servers it starts share). Each test gets a SIGALRM deadline inside the child;
if the child stops printing for longer than that plus a grace period, the
whole group is killed and the hung test counts as failed.
"""
import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
MARK = "@@postling-test@@ "

DEFAULT_TEST_TIMEOUT = 90      # seconds per integration/interop test
DEFAULT_UNIT_TIMEOUT = 120     # seconds per unit test executable
HANG_GRACE = 30                # extra seconds before the parent kills a silent child

# Sanitizers: make UBSan fatal (a report is a failure, not a warning).
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:strict_string_checks=1:"
                    "detect_stack_use_after_return=1:check_initialization_order=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


class Totals:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures = []

    def ok(self, name):
        self.passed += 1
        print(f"PASS {name}", flush=True)

    def fail(self, name, detail=""):
        self.failed += 1
        self.failures.append(name)
        print(f"FAIL {name}", flush=True)
        if detail:
            print(indent(detail), flush=True)

    def skip(self, name, reason=""):
        self.skipped += 1
        print(f"SKIP {name}" + (f" ({reason})" if reason else ""), flush=True)


def indent(text, prefix="    "):
    return "\n".join(prefix + line for line in text.rstrip("\n").split("\n"))


def kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def base_env():
    env = dict(os.environ)
    for k, v in SANITIZER_ENV.items():
        env.setdefault(k, v)
    return env


# ---------------------------------------------------------------- unit tests

TAP_RE = re.compile(r"^(not ok|ok)\b\s*(\d+)?\s*(?:-\s*)?(.*)$")


def run_unit(build, totals, timeout, label, pattern=None):
    build = os.path.abspath(build)
    tdir = os.path.join(build, "tests")
    if not os.path.isdir(tdir):
        totals.fail(f"{label}unit: {tdir} missing (build failed?)")
        return
    exes = sorted(
        f for f in os.listdir(tdir)
        if f.startswith("test_") and os.path.isfile(os.path.join(tdir, f))
        and os.access(os.path.join(tdir, f), os.X_OK))
    if not exes:
        totals.fail(f"{label}unit: no test_* executables in {tdir}")
        return
    for exe in exes:
        if pattern and pattern not in exe:
            continue
        path = os.path.join(tdir, exe)
        env = base_env()
        env["CMOCKA_MESSAGE_OUTPUT"] = "TAP"
        proc = subprocess.Popen([path], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True, cwd=build)
        try:
            out, _ = proc.communicate(timeout=timeout)
            rc = proc.returncode
            timed_out = False
        except subprocess.TimeoutExpired:
            kill_group(proc)
            out, _ = proc.communicate()
            rc = None
            timed_out = True
        text = out.decode("utf-8", "replace")
        seen = 0
        nfail = 0
        for line in text.splitlines():
            m = TAP_RE.match(line.strip())
            if not m:
                continue
            seen += 1
            name = f"{label}{exe}: {m.group(3).strip() or m.group(2)}"
            if "# SKIP" in line:
                # cmocka 1.1 prints skipped tests as "not ok N # SKIP name"
                totals.skip(name)
            elif m.group(1) == "ok":
                totals.ok(name)
            else:
                nfail += 1
                totals.fail(name)
        if timed_out:
            totals.fail(f"{label}{exe}: timed out after {timeout} s", text)
        elif rc != 0 and nfail == 0:
            # crash, sanitizer report at exit, or no TAP output at all
            totals.fail(f"{label}{exe}: exit status {rc}"
                        + (" (no TAP lines)" if seen == 0 else ""), text or "(no output)")
        elif nfail:
            print(indent(text), flush=True)


# ---------------------------------------------------------------- unittest suites

def run_suite(suite_dir, binary, totals, label, test_timeout, pattern=None, suite_timeout=1200):
    """Run one unittest directory in a child process and collect its results."""
    name = os.path.basename(suite_dir)
    if not os.path.isdir(suite_dir):
        totals.fail(f"{label}{name}: {suite_dir} missing")
        return
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        totals.fail(f"{label}{name}: postling binary {binary} missing (build failed?)")
        return
    env = base_env()
    env["POSTLING_BIN"] = os.path.abspath(binary)
    env["POSTLING_TEST_TIMEOUT"] = str(test_timeout)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, os.path.abspath(__file__), "--child", suite_dir]
    if pattern:
        cmd += ["-k", pattern]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, cwd=REPO)
    current = None
    counted = False
    buf = b""
    started = time.monotonic()
    last = started
    fd = proc.stdout.fileno()
    killed = None
    while True:
        now = time.monotonic()
        if now - last > test_timeout + HANG_GRACE:
            killed = f"no output for {int(now - last)} s"
        elif now - started > suite_timeout:
            killed = f"suite exceeded {suite_timeout} s"
        if killed:
            kill_group(proc)
            break
        r, _, _ = select.select([fd], [], [], 1.0)
        if not r:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        last = time.monotonic()
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode("utf-8", "replace")
            if not line.startswith(MARK):
                print(line, flush=True)
                continue
            kind, _, rest = line[len(MARK):].partition(" ")
            if kind == "START":
                current = rest
            elif kind == "PASS":
                totals.ok(f"{label}{rest}")
                current = None
            elif kind == "FAIL":
                totals.fail(f"{label}{rest}")
                current = None
            elif kind == "SKIP":
                tname, _, reason = rest.partition(" :: ")
                totals.skip(f"{label}{tname}", reason)
                current = None
            elif kind == "DONE":
                counted = True
    if buf:
        print(buf.decode("utf-8", "replace"), flush=True)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        proc.wait()
    # reap any server left behind in the child's process group
    kill_group(proc)
    if killed:
        what = current or "(between tests)"
        totals.fail(f"{label}{what}: killed, {killed}")
    elif not counted:
        totals.fail(f"{label}{name}: runner exited with status {proc.returncode} before finishing")


# ---------------------------------------------------------------- child side

class TestTimeout(Exception):
    pass


def child_main(suite_dir, pattern):
    import unittest

    timeout = int(os.environ.get("POSTLING_TEST_TIMEOUT", DEFAULT_TEST_TIMEOUT))
    out = sys.__stdout__

    def emit(kind, text):
        out.write(f"{MARK}{kind} {text}\n")
        out.flush()

    def on_alarm(signum, frame):
        raise TestTimeout(f"test exceeded {timeout} s")

    signal.signal(signal.SIGALRM, on_alarm)

    class Result(unittest.TestResult):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.buffer = True

        @staticmethod
        def tname(test):
            return f"{os.path.basename(suite_dir)}/{test.id()}"

        def startTest(self, test):
            emit("START", self.tname(test))
            self.t0 = time.monotonic()
            signal.alarm(timeout)
            super().startTest(test)

        def took(self):
            return f" ({time.monotonic() - getattr(self, 't0', time.monotonic()):.2f} s)"

        def stopTest(self, test):
            signal.alarm(0)
            super().stopTest(test)

        def addSuccess(self, test):
            super().addSuccess(test)
            emit("PASS", self.tname(test) + self.took())

        def _failed(self, test, err, kind):
            emit("FAIL", self.tname(test))
            text = self._exc_info_to_string(err, test)
            out.write(indent(f"{kind}:\n{text}") + "\n")
            out.flush()

        def addError(self, test, err):
            super().addError(test, err)
            self._failed(test, err, "ERROR")

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._failed(test, err, "FAILURE")

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            emit("SKIP", f"{self.tname(test)} :: {reason}")

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            emit("PASS", self.tname(test) + " (expected failure)")

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            emit("FAIL", self.tname(test) + " (unexpected success)")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                if issubclass(err[0], test.failureException):
                    self._failed(subtest, err, "FAILURE")
                else:
                    self._failed(subtest, err, "ERROR")

    sys.path.insert(0, os.path.join(TESTS_DIR, "integration"))
    loader = unittest.TestLoader()
    if pattern:
        loader.testNamePatterns = [f"*{pattern}*"]
    suite = loader.discover(suite_dir, pattern="test_*.py", top_level_dir=suite_dir)
    result = Result()
    suite.run(result)
    emit("DONE", f"{result.testsRun}")
    return 0


# ---------------------------------------------------------------- parallel builds

CLOSING_RE = re.compile(r"^(\d+) passed, (\d+) failed, (\d+) skipped$")


def run_builds_parallel(args, totals, passthrough):
    """One child run.py per build dir, at the same time; their output is printed
    build after build, their counts added up."""
    import tempfile
    print(f"running {len(args.build)} builds in parallel: {' '.join(args.build)}", flush=True)
    children = []
    for build in args.build:
        label = f"[{os.path.basename(os.path.normpath(build))}] "
        out = tempfile.TemporaryFile()
        cmd = [sys.executable, os.path.abspath(__file__), "--build", build, "--label", label,
               "--jobs", "1", *passthrough]
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
        children.append((build, label, proc, out))
    deadline = time.monotonic() + 3000
    for build, label, proc, out in children:
        try:
            proc.wait(max(1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            kill_group(proc)
            proc.wait()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
        out.close()
        closing = None
        section = None
        for line in text.splitlines():
            m = CLOSING_RE.match(line)
            if m:
                closing = m
                continue
            if re.match(r"^--- [\d.]+ s$", line):
                continue
            if line == "failed:":
                section = "failed"
                continue
            if section == "failed" and line.startswith("  "):
                totals.failures.append(line.strip())
                continue
            section = None
            print(line, flush=True)
        if closing:
            totals.passed += int(closing.group(1))
            totals.failed += int(closing.group(2))
            totals.skipped += int(closing.group(3))
        else:
            totals.fail(f"{label}run.py for {build} exited {proc.returncode} without a result line")


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", default=[], help="meson build directory (repeatable)")
    ap.add_argument("--only-integration", action="store_true", help="run only the integration tests")
    ap.add_argument("--bin", help="postling binary (with --only-integration)")
    ap.add_argument("--no-unit", action="store_true")
    ap.add_argument("--no-interop", action="store_true")
    ap.add_argument("-k", dest="pattern", help="only tests whose name contains this")
    ap.add_argument("--timeout", type=int, default=DEFAULT_TEST_TIMEOUT, help="seconds per test")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                    help="build dirs tested at the same time (default 2)")
    ap.add_argument("--label", help=argparse.SUPPRESS)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        return child_main(args.child, args.pattern)

    totals = Totals()
    integration = os.path.join(TESTS_DIR, "integration")
    interop = os.path.join(TESTS_DIR, "interop")
    t0 = time.monotonic()
    if args.only_integration:
        binary = args.bin or (os.path.join(args.build[0], "postling") if args.build else None)
        if not binary:
            ap.error("--only-integration needs --bin or --build")
        run_suite(integration, binary, totals, "", args.timeout, args.pattern)
    else:
        if not args.build:
            ap.error("give at least one --build DIR")
        multi = len(args.build) > 1
        passthrough = (["--no-unit"] if args.no_unit else []) + (["--no-interop"] if args.no_interop else []) \
            + (["-k", args.pattern] if args.pattern else []) + ["--timeout", str(args.timeout)] \
            + (["--bin", args.bin] if args.bin else [])
        if multi and args.jobs > 1:
            run_builds_parallel(args, totals, passthrough)
        for build in ([] if multi and args.jobs > 1 else args.build):
            label = args.label if args.label is not None else \
                (f"[{os.path.basename(os.path.normpath(build))}] " if multi else "")
            binary = args.bin or os.path.join(build, "postling")
            print(f"=== {build}", flush=True)
            if not args.no_unit:
                run_unit(build, totals, DEFAULT_UNIT_TIMEOUT, label, args.pattern)
            run_suite(integration, binary, totals, label, args.timeout, args.pattern)
            if not args.no_interop:
                run_suite(interop, binary, totals, label, args.timeout, args.pattern)
    print(f"--- {time.monotonic() - t0:.1f} s", flush=True)
    if totals.failures:
        print("failed:", flush=True)
        for f in totals.failures:
            print(f"  {f}", flush=True)
    print(f"{totals.passed} passed, {totals.failed} failed, {totals.skipped} skipped", flush=True)
    if totals.failed or totals.passed + totals.failed == 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
