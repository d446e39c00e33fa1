"""Tests of `eval.py loss` (the loss of the benchmarks' reference solutions given their prompts) and of plot.py
(training curves from log.jsonl)."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import eval as E
from model import Phi, PhiConfig
from tokenizer import get_tokenizer

REPO = Path(__file__).resolve().parent.parent


def save_ckpt(model, path):
    torch.save({"model": model.state_dict(), "model_args": dataclasses.asdict(model.config)}, path)
    return path


def humaneval_subset(path, n):
    problems = list(E.load_problems("humaneval").values())[:n]
    path.write_text("".join(json.dumps(p) + "\n" for p in problems))
    return path, problems


def test_loss_equals_the_models_own_loss_on_one_problem(tmp_path, capsys):
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano")).eval()
    problem = {"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n",
               "canonical_solution": "    return a + b\n", "test": "", "entry_point": "add"}
    (tmp_path / "p.jsonl").write_text(json.dumps(problem) + "\n")
    out = tmp_path / "loss.json"
    ckpt = save_ckpt(model, tmp_path / "ckpt.pt")
    E.main(["loss", f"--ckpt={ckpt}", f"--problems={tmp_path / 'p.jsonl'}", "--device=cpu",
            f"--out={out}"])
    tok = get_tokenizer()
    prompt, solution = tok.encode(problem["prompt"]), tok.encode(problem["canonical_solution"])
    ids = torch.tensor([prompt + solution[:-1]])
    targets = torch.tensor([[-1] * (len(prompt) - 1) + solution])
    with torch.no_grad():
        _, direct = model(ids, targets)
    r = json.loads(out.read_text())
    assert r["problems"] == 1 and r["tokens"] == len(solution)
    assert r["loss"] == pytest.approx(direct.item(), abs=1e-5)
    assert r["ci95"][0] == pytest.approx(r["loss"]) and r["ci95"][1] == pytest.approx(r["loss"])
    assert "loss 10." in capsys.readouterr().out   # untrained: about ln(51200) = 10.84


def test_short_context_scores_the_part_that_fits_and_says_so(capsys):
    tok = get_tokenizer()
    problem = {"prompt": "x = 1\n" * 100, "canonical_solution": "y = 2\n" * 100}   # 400 + 400 tokens
    ids, targets, prompt_cut, solution_cut = E.solution_tokens(problem, 128, tok)
    assert len(ids) == len(targets) == 128
    assert targets.count(-1) == 63 and prompt_cut == 400 - 64 and solution_cut == 400 - 65
    torch.manual_seed(0)
    r = E.benchmark_loss(Phi(PhiConfig.from_preset("nano")).eval(), {"T/0": {**problem, "task_id": "T/0"}})
    assert r["tokens"] == 65 and r["prompts_truncated"] == 1 and r["solution_tokens_dropped"] == 335


def test_training_on_the_solutions_lowers_their_loss(tmp_path):
    problems_file, problems = humaneval_subset(tmp_path / "he.jsonl", 12)
    tok = get_tokenizer()
    torch.manual_seed(0)
    model = Phi(PhiConfig.from_preset("nano"))
    untrained = save_ckpt(model, tmp_path / "untrained.pt")
    rows = [E.solution_tokens(p, 128, tok)[:2] for p in problems]
    T = max(len(ids) for ids, _ in rows)
    idx = torch.tensor([ids + [0] * (T - len(ids)) for ids, _ in rows])
    targets = torch.tensor([t + [-1] * (T - len(t)) for _, t in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(8):
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = save_ckpt(model.eval(), tmp_path / "trained.pt")
    result = {}
    for name, ckpt in [("untrained", untrained), ("trained", trained)]:
        E.main(["loss", f"--ckpt={ckpt}", f"--problems={problems_file}", "--device=cpu",
                f"--out={tmp_path / f'{name}.json'}"])
        result[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["untrained"]["problems"] == result["trained"]["problems"] == 12
    assert abs(result["untrained"]["loss"] - math.log(51200)) < 0.5
    # the intervals do not even overlap
    assert result["trained"]["ci95"][1] < result["untrained"]["ci95"][0] - 1.0


def test_loss_cli_bad_input_is_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "loss",
                           f"--ckpt={tmp_path / 'nothing'}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("eval.py: error: ") and "Traceback" not in proc.stderr


# ---------------------------------------------------------------------------- plot.py


def fake_run(out_dir, steps, offset, killed=False):
    """A log.jsonl in train.py's shape: val loss at step 0 and every 5 steps, loss/lr/tokens_seen every step."""
    out_dir.mkdir()
    records = [{"step": 0, "val_loss": 10.8 - offset}]
    for s in range(1, steps + 1):
        r = {"step": s, "loss": 10.8 - offset - 0.1 * s, "lr": 1e-3 * min(1, s / 3), "tokens_per_s": 1000.0,
             "tokens_seen": {"a.py": 512 * s}, "epochs": {"a.py": 0.1 * s}}
        if s % 5 == 0:
            r["val_loss"] = r["loss"] + 0.05
        records.append(r)
    text = "".join(json.dumps(r) + "\n" for r in records)
    (out_dir / "log.jsonl").write_text(text + ('{"step": 99, "lo' if killed else ""))
    return out_dir


def test_plot_writes_a_png_of_two_runs(tmp_path):
    import plot
    a, b = fake_run(tmp_path / "a", 12, 0.0), fake_run(tmp_path / "b", 20, 0.5, killed=True)
    c = plot.curves(plot.read_log(b), x="tokens")
    assert c["val_loss"][0] == [0, 2560, 5120, 7680, 10240] and len(c["loss"][1]) == len(c["lr"][1]) == 20
    png = tmp_path / "curves.png"
    proc = subprocess.run([sys.executable, str(REPO / "plot.py"), str(a), str(b), f"--out={png}"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary file left


@pytest.mark.parametrize("args,message", [(["--colour=red"], "unknown key 'colour'"),
                                          (["--x=epochs"], "--x=epochs: choose step or tokens"),
                                          (["--x", "tokens"], "expected --key=value, got '--x'"),
                                          (["--out=curves.xyz"], "matplotlib cannot write .xyz files"),
                                          ([], "usage: python plot.py"),
                                          (["missing_dir"], "missing_dir/log.jsonl: no such file")])
def test_plot_bad_input_is_one_line(tmp_path, args, message):
    fake_run(tmp_path / "a", 3, 0.0)
    args = [str(tmp_path / "a")] + args if args != ["missing_dir"] and args else args
    proc = subprocess.run([sys.executable, str(REPO / "plot.py"), *args], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_seeds_of_one_experiment_are_summarised_together(tmp_path):
    import plot
    runs = [fake_run(tmp_path / name, 10, offset) for name, offset in (("a-1", 0.0), ("a-2", 0.2), ("b-1", 0.5))]
    for d in runs:  # a benchmark loss at the last step, as train.py logs with eval_problems
        lines = (d / "log.jsonl").read_text().splitlines()
        last = json.loads(lines[-1])
        last["bench_loss"] = {"humaneval": last["val_loss"] - 1}
        (d / "log.jsonl").write_text("\n".join(lines[:-1] + [json.dumps(last)]) + "\n")
    assert plot.curves(plot.read_log(runs[0]))["humaneval loss"] == ([10], [pytest.approx(8.85)])
    table = plot.summary(plot.read_logs(runs)).splitlines()
    a_mean = next(line for line in table if line.startswith(f"{tmp_path / 'a'} mean+-sd"))
    # a-1 and a-2 end at val loss 9.85 and 9.65: mean 9.75, sample sd 0.1414; b has one seed, so no summary row
    assert "9.7500+-0.1414" in a_mean and "8.7500+-0.1414" in a_mean
    assert not any(line.startswith(f"{tmp_path / 'b'} mean") for line in table)
    png = plot.plot_runs(plot.read_logs(runs), tmp_path / "seeds.png", x="tokens")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
