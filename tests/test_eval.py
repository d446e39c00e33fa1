"""Tests of eval.py: problems, pass@k, the sandbox against hostile programs, `check`, `sample` and `bench-gen`."""
import dataclasses
import json
import math
import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest

import eval as E

REPO = Path(__file__).resolve().parent.parent
MBPP = REPO.parent / "shared" / "data" / "mbpp.jsonl"


def survivors(mark):
    """Pids of live processes named mark (hostile programs name themselves with prctl(PR_SET_NAME))."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == mark:
                found.append(pid)
        except OSError:
            pass
    return found


def name_self(mark):
    return f"import ctypes; ctypes.CDLL(None).prctl(15, {mark.encode()!r}, 0, 0, 0)\n"


def run_one(program, timeout=1.0):
    t0 = time.time()
    r = E.run_programs([program], timeout=timeout, workers=1)[0]
    return r, time.time() - t0


# -----------------------------------------------------------------------------
# problems and pass@k


def test_pass_at_k_hand_computed():
    assert E.pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert E.pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)         # 1 - C(3,2)/C(5,2)
    assert E.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)      # 1 - C(7,5)/C(10,5)
    assert E.pass_at_k(4, 2, 3) == 1.0                                # every 3-subset holds a pass
    assert E.pass_at_k(7, 0, 3) == 0.0
    assert E.pass_at_k(1, 1, 1) == 1.0
    assert E.pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))
    with pytest.raises(ValueError):
        E.pass_at_k(3, 1, 4)


def test_load_humaneval():
    problems = E.load_problems("humaneval")
    assert len(problems) == 164
    p = problems["HumanEval/0"]
    assert set(p) == {"task_id", "prompt", "canonical_solution", "test", "entry_point"}
    assert p["entry_point"] == "has_close_elements" and p["prompt"].startswith("from typing import List")


@pytest.mark.skipif(not MBPP.exists(), reason=f"no MBPP copy at {MBPP}")
def test_load_mbpp_test_split():
    problems = E.load_problems(str(MBPP))
    assert len(problems) == 500
    assert sorted(int(t.split("/")[1]) for t in problems) == list(range(11, 511))
    p = problems["MBPP/11"]
    assert p["entry_point"] == "remove_Occ"
    assert p["prompt"].startswith('"""\nWrite a python function') and 'assert remove_Occ("hello","l") == "heo"' in p["prompt"]
    assert len(E.load_problems(str(MBPP), split="all")) == 974


# -----------------------------------------------------------------------------
# the reference solutions


def test_humaneval_canonical_solutions_pass_and_empty_completions_fail():
    problems = list(E.load_problems("humaneval").values())
    parts = [E.program_parts(p, p["canonical_solution"]) for p in problems]
    parts += [E.program_parts(p, "") for p in problems]
    code, tests, entries = zip(*parts)
    results = E.run_programs(code, timeout=10, tests=tests, entry_points=entries)
    passed = [r["passed"] for r in results]
    failures = [(p["task_id"], r["result"]) for p, r in zip(problems, results[:164]) if not r["passed"]]
    assert failures == []
    assert not any(passed[164:])


@pytest.mark.skipif(not MBPP.exists(), reason=f"no MBPP copy at {MBPP}")
def test_mbpp_reference_solutions_pass():
    # Measured on Python 3.11: all 974 reference solutions pass their tests in this harness; MBPP/123 (amicable
    # numbers up to 9999) needs ~3 s of CPU, so the generous timeout keeps a loaded CI machine from failing it.
    problems = list(E.load_problems(str(MBPP), split="all").values())
    code, tests, entries = zip(*[E.program_parts(p, p["canonical_solution"]) for p in problems])
    results = E.run_programs(code, timeout=20, tests=tests, entry_points=entries)
    assert [(p["task_id"], r["result"]) for p, r in zip(problems, results) if not r["passed"]] == []


# -----------------------------------------------------------------------------
# hostile programs: each fails, the harness moves on, nothing of the program survives


def test_infinite_loop_times_out():
    r, seconds = run_one("while True:\n    pass\n", timeout=1)
    assert r == {"passed": False, "result": "timed out"} and seconds < 5


def test_fork_bomb_is_contained_and_killed():
    mark = "ev" + uuid.uuid4().hex[:12]
    program = name_self(mark) + "import os, time\nfor _ in range(1000):\n    try:\n        os.fork()\n" \
                                "    except OSError:\n        pass\ntime.sleep(100)\n"
    r, seconds = run_one(program, timeout=2)
    assert not r["passed"] and seconds < 8
    assert survivors(mark) == []


def test_allocating_50_gb_fails():
    r, _ = run_one("x = bytearray(50 * 2**30)\nx[-1] = 1\n", timeout=3)
    assert r["passed"] is False and "MemoryError" in r["result"]


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
    results = E.run_programs([program, "x = 1\n"], timeout=3, workers=1)   # the same zygote runs the second
    assert results[0]["passed"] is False
    assert results[1] == {"passed": True, "result": "passed"}


def test_ignoring_sigterm_still_gets_killed():
    mark = "ev" + uuid.uuid4().hex[:12]
    program = name_self(mark) + "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    r, seconds = run_one(program, timeout=1)
    assert r["result"] == "timed out" and seconds < 5 and survivors(mark) == []


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
    code, tests, entries = zip(*[E.program_parts(problem, c) for c in completions])
    results = E.run_programs(code, timeout=3, tests=tests, entry_points=entries)
    assert [r["passed"] for r in results] == [False] * len(completions), results


def test_tampering_with_assertion_error_and_builtins_fails():
    problems = E.load_problems("humaneval")
    tamper = ("import builtins\nclass Quiet(BaseException):\n    pass\nbuiltins.AssertionError = Quiet\n"
              "AssertionError = Quiet\nbuiltins.abs = lambda x: 0\nabs = lambda x: 0\n"
              "builtins.len = lambda x: 0\nbuiltins.isinstance = lambda *a: True\n")
    samples = [(problems["HumanEval/0"], "    return True\n" + tamper),     # asserts on == False must still raise
               (problems["HumanEval/2"], "    return 0.0\n" + tamper)]      # assert abs(candidate(3.5) - 0.5) < 1e-6
    code, tests, entries = zip(*[E.program_parts(p, c) for p, c in samples])
    results = E.run_programs(code, timeout=3, tests=tests, entry_points=entries)
    assert [r["result"] for r in results] == ["failed: AssertionError"] * 2


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
# the command line


def write_samples(path, samples):
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))


def test_check_writes_results_and_pass_at_k(tmp_path, capsys):
    problem = E.load_problems("humaneval")["HumanEval/0"]
    samples = tmp_path / "samples.jsonl"
    write_samples(samples, [{"task_id": "HumanEval/0", "completion": problem["canonical_solution"]},
                            {"task_id": "HumanEval/0", "completion": "    return True\n"},
                            {"task_id": "HumanEval/0", "completion": "    while True: pass\n"}])
    E.main(["check", str(samples), "--timeout", "1", "--workers", "2"])
    out = capsys.readouterr().out
    results = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, False]
    assert results[1]["result"] == "failed: AssertionError" and results[2]["result"] == "timed out"
    assert "pass@1: 33.33 %" in out and "failed 1" in out and "timed out 1" in out and "pass@10" not in out


def test_bad_input_gives_one_clear_message(tmp_path):
    samples = tmp_path / "samples.jsonl"
    samples.write_text('{"task_id": "HumanEval/0", "completion": ""}\n{"task_id": oops}\n')
    with pytest.raises(SystemExit, match="malformed JSON line.*line 2"):
        E.main(["check", str(samples)])
    write_samples(samples, [{"task_id": "HumanEval/999", "completion": ""}])
    with pytest.raises(SystemExit, match="HumanEval/999"):
        E.main(["check", str(samples)])
    with pytest.raises(SystemExit, match="no such file"):
        E.main(["check", str(samples), "--problems", str(tmp_path / "missing.jsonl")])


def test_sample_from_a_tiny_model_then_check(tmp_path):
    import torch
    from model import Phi, PhiConfig
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    hf_dir, ckpt = tmp_path / "hf", tmp_path / "ckpt.pt"
    model.save_pretrained(hf_dir)
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, ckpt)
    problems = tmp_path / "problems.jsonl"
    write_samples(problems, [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    return", "entry_point": f"f{i}",
                              "canonical_solution": " x\n", "test": "def check(f):\n    assert f(1) == 1\n"}
                             for i in range(3)])
    out = tmp_path / "samples.jsonl"
    E.main(["sample", "--ckpt", str(hf_dir), "--problems", str(problems), "--n", "2", "--temperature", "0.8",
            "--max_new_tokens", "6", "--batch_size", "4", "--device", "cpu", "--out", str(out)])
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(s["task_id"] for s in samples) == ["T/0", "T/0", "T/1", "T/1", "T/2", "T/2"]
    assert all(isinstance(s["completion"], str) for s in samples)
    E.main(["sample", "--ckpt", str(ckpt), "--problems", str(problems), "--n", "1", "--max_new_tokens", "6",
            "--device", "cpu", "--out", str(out)])
    assert len(out.read_text().splitlines()) == 3
    E.main(["check", str(out), "--problems", str(problems), "--workers", "1"])
    assert len(Path(f"{out}_results.jsonl").read_text().splitlines()) == 3


def test_bench_gen_runs_on_cpu(capsys):
    E.main(["bench-gen", "--preset", "nano", "--batches", "1,2", "--prompt_len", "8", "--new_tokens", "4"])
    out = capsys.readouterr().out
    assert "batch   1:" in out and "batch   2:" in out and "Hugging Face" in out
