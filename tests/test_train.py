"""Tests for train.py and checkpoint.py on CPU: config parsing, data cache, weighted mixtures, loss falling, exact
resume after SIGKILL and after Ctrl-C (also under DDP), DDP (gloo) equal to gradient accumulation, the training
benchmark, small corpora, and one-line errors on bad input and on the faults a user meets (a bad checkpoint, a full
disk or Ctrl-C during a save, two runs on one out_dir, a fresh run over a finished one). Runs train.py in
subprocesses with the "nano" preset on a ~100 kB corpus copied from the standard library."""
import json
import math
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import checkpoint
import data
import train

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "train.py")
# small and fast: 2 layers x 64 wide, 32-token sequences; no sample at the end
NANO = ["--model=nano", "--block_size=32", "--batch_size=4", "--eval_iters=2", "--sample_tokens=0", "--log_interval=1"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~100 kB of real Python: a few standard-library modules."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in ("json/__init__.py", "json/decoder.py", "json/encoder.py", "textwrap.py", "string.py", "shlex.py",
                 "fnmatch.py", "bisect.py", "heapq.py", "colorsys.py", "glob.py", "queue.py"):
        shutil.copy(stdlib / name, root / name.replace("/", "_"))
    return root


@pytest.fixture(scope="module")
def textbooks(tmp_path_factory):
    """A second source for mixtures: JSONL records of other standard-library modules."""
    path = tmp_path_factory.mktemp("textbooks") / "textbooks.jsonl"
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = ("calendar.py", "difflib.py", "pprint.py", "locale.py", "tokenize.py")
    path.write_text("".join(json.dumps({"text": (stdlib / n).read_text()}) + "\n" for n in names))
    return path


def run(args, cwd, timeout=240, torchrun=False):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"] if torchrun \
        else [sys.executable]
    return subprocess.run(launcher + [TRAIN, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)


def ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def read_log(out_dir):
    return [json.loads(line) for line in (Path(out_dir) / "log.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------- config, schedule, batches (in-process)

DEFAULTS = {k: getattr(train, k) for k in train.config_keys}


def test_config_types_unknown_keys_recipes_and_files(tmp_path):
    c = train.parse_config(["--max_iters=7", "--learning_rate=2e-4", "--compile=true", "--data=a,b"], DEFAULTS)
    assert (c["max_iters"], c["learning_rate"], c["compile"], c["data"]) == (7, 2e-4, True, "a,b")
    with pytest.raises(train.UserError, match="expected int"):
        train.parse_config(["--max_iters=ten"], DEFAULTS)
    with pytest.raises(train.UserError, match="did you mean --learning_rate"):
        train.parse_config(["--learning_rat=1"], DEFAULTS)
    with pytest.raises(train.UserError, match="lr_schedule"):
        train.parse_config(["--lr_schedule=step"], DEFAULTS)
    # the paper's runs; explicit overrides win over the recipe
    c = train.parse_config(["--recipe=pretrain", "--learning_rate=5e-4"], DEFAULTS)
    assert (c["global_batch_size"], c["block_size"], c["warmup_iters"], c["weight_decay"], c["max_iters"]) == \
        (1024, 2048, 750, 0.1, 36_000)
    assert c["learning_rate"] == 5e-4 and c["dropout"] == 0.1 and c["keep_ckpts"] == "24000"
    c = train.parse_config(["--recipe=finetune"], DEFAULTS)
    assert (c["global_batch_size"], c["learning_rate"], c["warmup_iters"], c["weight_decay"], c["max_iters"],
            c["ckpt_interval"], c["keep_ckpts"]) == (256, 1e-4, 50, 0.01, 6000, 1000, "all")
    # a config file is literal `key = value` lines, below the command line
    f = tmp_path / "run.py"
    f.write_text('"""my run"""\nrecipe = "finetune"\nmax_iters = 5\nlearning_rate = 1\n')
    c = train.parse_config([str(f), "--max_iters=9"], DEFAULTS)
    assert (c["max_iters"], c["learning_rate"], c["warmup_iters"]) == (9, 1.0, 50)
    f.write_text("max_iters = 'many'\n")
    with pytest.raises(train.UserError, match="expected int"):
        train.parse_config([str(f)], DEFAULTS)
    # gradient accumulation from the global batch
    assert train.derive_accumulation(1024, 8, 8, 1) == 16
    assert train.derive_accumulation(256, 8, 1, 1) == 32
    assert train.derive_accumulation(0, 8, 2, 3) == 3
    with pytest.raises(train.UserError, match="multiple"):
        train.derive_accumulation(1000, 8, 8, 1)


def test_lr_schedule():
    # warmup over steps 1..10, decay over steps 11..109 (the last step), reaching 0 just after it
    lr = lambda step, kind="linear": train.get_lr(step, 1e-3, 10, 109, 0.0, kind)
    assert lr(1) == pytest.approx(1e-4) and lr(10) == pytest.approx(1e-3)
    assert lr(60) == pytest.approx(5e-4) and lr(110) == 0.0 and lr(500) == 0.0
    assert lr(60, "cosine") == pytest.approx(5e-4) and lr(35, "cosine") > lr(35)
    # the last step still learns: not a wasted step at learning rate 0
    assert lr(109) == pytest.approx(1e-5) and lr(109, "cosine") > 0


def test_batches_are_deterministic_and_documents_split_at_eot():
    tokens = [torch.arange(1000).numpy().astype("uint16")]
    x, y = train.get_batch(tokens, np.ones(1), 4, 8, 1, 0, 5, 3)
    x2, _ = train.get_batch(tokens, np.ones(1), 4, 8, 1, 0, 5, 3)
    x3, _ = train.get_batch(tokens, np.ones(1), 4, 8, 1, 0, 5, 2)  # another micro-batch (or rank)
    assert torch.equal(x, x2) and not torch.equal(x, x3)
    assert torch.equal(y[:, :-1], x[:, 1:]) and x.dtype == torch.int64
    eot = train.EOT
    ids = train.document_ids(torch.tensor([[5, 6, eot, 7, eot, eot, 8]]))
    assert ids.tolist() == [[0, 0, 1, 1, 2, 3, 3]]


def test_mixture_weights_and_draws():
    assert data.parse_sources("a.jsonl:0.7, b/:0.3") == (["a.jsonl", "b/"], [0.7, 0.3])
    assert data.parse_sources("a,stdlib") == (["a", "stdlib"], None)
    assert data.parse_sources("dir:with:colons") == (["dir:with:colons"], None)
    for bad, msg in (("a:0.5,b", "every source a weight, or none"), ("a:0", "positive"), ("a,a", "twice"), (",", "no")):
        with pytest.raises(train.UserError, match=msg):
            data.parse_sources(bad)
    # the fraction of sequences from each source matches the weights within sampling error
    lengths, probs, block = [10_000, 50_000, 3_000], np.array([0.6, 0.3, 0.1]), 16
    which = np.concatenate([data.draw(lengths, probs, 64, block, 7, 0, step, 0)[0] for step in range(500)])
    frac, n = np.bincount(which, minlength=3) / len(which), len(which)
    assert np.all(np.abs(frac - probs) < 4 * np.sqrt(probs * (1 - probs) / n)), frac
    # every window lies inside its own source
    streams = [np.full(n, k, np.uint16) for k, n in enumerate(lengths)]
    x, y = train.get_batch(streams, probs, 256, block, 7, 0, 1, 0)
    which, _ = data.draw(lengths, probs, 256, block, 7, 0, 1, 0)
    assert (x == torch.from_numpy(which)[:, None]).all() and (y == x).all()


def test_every_window_of_a_stream_is_drawn_its_last_token_included():
    # a stream of block + 3 tokens has 3 windows of block + 1 tokens: starts 0, 1 and 2
    starts = np.concatenate([data.draw([19], np.ones(1), 64, 16, 7, 0, step, 0)[1] for step in range(20)])
    assert set(starts.tolist()) == {0, 1, 2}


# ---------------------------------------------------------------------------- runs (subprocesses)

def test_tiny_run_loss_falls_cache_reused_and_finetune(corpus, tmp_path):
    r = ok(run([*NANO, f"--data={corpus}", "--out_dir=out", "--max_iters=30", "--eval_interval=15",
                "--warmup_iters=5", "--learning_rate=1e-2", "--sample_tokens=8"], tmp_path))
    assert "tokenizing" in r.stdout and "reusing cache" not in r.stdout and "sample" in r.stdout
    log = read_log(tmp_path / "out")
    assert [e["step"] for e in log] == list(range(31))
    vals = [e["val_loss"] for e in log if "val_loss" in e]
    assert len(vals) == 3 and vals[-1] < vals[0] - 2.0, vals  # from ~10.8 (uniform over 51200)
    assert all(math.isfinite(e["loss"]) and e["tokens_per_s"] > 0 for e in log[1:])
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["step"] == 30 and ckpt["model_args"]["n_embd"] == 64 and ckpt["config"]["max_iters"] == 30
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert {"optimizer", "scaler", "rng", "data"} <= set(ckpt)
    # the second run reuses the cache, and finetunes from the first one's weights with a fresh optimizer
    r = ok(run([*NANO, f"--data={corpus}", "--out_dir=ft", "--max_iters=2", "--init_from=out/ckpt.pt",
                "--doc_mask=True", "--recipe=finetune", "--global_batch_size=0", "--block_size=32",
                "--batch_size=4", "--model=nano", "--ckpt_interval=1"], tmp_path))
    assert "reusing cache" in r.stdout and "tokenizing" not in r.stdout
    ft = read_log(tmp_path / "ft")
    assert ft[0]["val_loss"] < vals[0] - 1.5  # starts from the pretrained weights, not from scratch
    assert sorted(p.name for p in (tmp_path / "ft").glob("ckpt_*.pt")) == ["ckpt_000001.pt", "ckpt_000002.pt"]


def test_resume_after_sigkill_repeats_the_same_losses(corpus, textbooks, tmp_path):
    # a mixture of two sources, and dropout: the RNG state must resume too
    common = [*NANO, f"--data={corpus}:0.7,{textbooks}:0.3", "--batch_size=8", "--eval_interval=4",
              "--lr_decay_iters=12", "--warmup_iters=3", "--dropout=0.1", "--learning_rate=3e-3"]
    ok(run([*common, "--out_dir=full", "--max_iters=12"], tmp_path))
    # the same run, but far longer (with the same schedule up to step 12), killed after step 6
    proc = subprocess.Popen([sys.executable, TRAIN, *common, "--out_dir=killed", "--max_iters=100000"],
                            cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_file = tmp_path / "killed" / "log.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        lines = log_file.read_text().splitlines() if log_file.exists() else []
        if len(lines) >= 7:  # step 0's val loss and steps 1..6: past the checkpoint at step 4
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed_at = torch.load(tmp_path / "killed" / "ckpt.pt", weights_only=True)["step"]
    assert 4 <= resumed_at < 12, f"killed too late (checkpoint at step {resumed_at})"
    ok(run([*common, "--out_dir=killed", "--max_iters=12", "--init_from=resume"], tmp_path))
    strip = lambda log: [(e["step"], e.get("loss"), e.get("val_loss"), e.get("tokens_seen")) for e in log]
    assert strip(read_log(tmp_path / "killed")) == strip(read_log(tmp_path / "full"))  # bit-identical
    seen = read_log(tmp_path / "full")[-1]["tokens_seen"]
    assert sum(seen.values()) == 12 * 8 * 32 and set(seen) == {str(corpus), str(textbooks)}


def test_ddp_two_processes_equal_one_with_twice_the_accumulation(corpus, textbooks, tmp_path):
    common = [*NANO, f"--data={corpus}:0.5,{textbooks}:0.5", "--max_iters=3", "--warmup_iters=1", "--eval_interval=3"]
    ok(run([*common, "--out_dir=single", "--gradient_accumulation_steps=4"], tmp_path))  # builds the cache
    r = ok(run([*common, "--out_dir=ddp", "--gradient_accumulation_steps=2"], tmp_path, torchrun=True))
    assert "2 process(es)" in r.stdout
    single = torch.load(tmp_path / "single" / "ckpt.pt", weights_only=True)["model"]
    ddp = torch.load(tmp_path / "ddp" / "ckpt.pt", weights_only=True)["model"]
    for k in single:
        # summation order differs, and Adam normalizes gradients that are mathematically zero (the key bias);
        # weights are ~0.02 and one step moves them up to lr = 3e-3, so 1e-5 still catches any real difference
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    losses = lambda d: [e["loss"] for e in read_log(tmp_path / d)[1:]]
    assert losses("ddp") == pytest.approx(losses("single"), rel=1e-5)
    # the validation loss too: one fixed set of sequences, split between the two processes
    vals = lambda d: [e["val_loss"] for e in read_log(tmp_path / d) if "val_loss" in e]
    assert len(vals("ddp")) == 2 and vals("ddp") == pytest.approx(vals("single"), rel=1e-6)
    assert read_log(tmp_path / "ddp")[-1]["tokens_seen"] == read_log(tmp_path / "single")[-1]["tokens_seen"]


def test_a_run_stopped_on_two_processes_continues_the_same_curve_on_one(corpus, tmp_path):
    """Resumed on another number of processes (the global batch kept by accumulation), a run continues the
    curve of the run that was never stopped: the same training batches and the same validation set."""
    common = [*NANO, f"--data={corpus}", "--eval_interval=2", "--lr_decay_iters=4", "--warmup_iters=1"]
    ok(run([*common, "--out_dir=full", "--max_iters=4", "--gradient_accumulation_steps=2"], tmp_path))
    ok(run([*common, "--out_dir=moved", "--max_iters=2"], tmp_path, torchrun=True))
    ok(run([*common, "--out_dir=moved", "--max_iters=4", "--gradient_accumulation_steps=2",
            "--init_from=resume"], tmp_path))
    full, moved = read_log(tmp_path / "full"), read_log(tmp_path / "moved")
    assert [e["step"] for e in moved] == [0, 1, 2, 3, 4]
    for key in ("loss", "val_loss"):
        pairs = [(m[key], f[key]) for m, f in zip(moved, full) if key in f]
        assert len(pairs) >= 3 and all(m == pytest.approx(f, rel=1e-5) for m, f in pairs), (key, pairs)


def test_bench_train_runs_on_cpu(tmp_path):
    r = ok(subprocess.run([sys.executable, str(REPO / "bench.py"), "train", "--model=nano", "--block_size=32",
                           "--batch_size=2", "--bench_steps=2"], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=240))
    assert "tokens/s" in r.stdout and "MFU n/a" in r.stdout
    # both attention kinds, side by side: the Triton kernel says why it was not timed on a CPU
    assert "attention triton, batch 2 x 32 per process, 1 x cpu, float32: n/a (the Triton kernel needs" in r.stdout
    assert re.search(r"attention sdpa, .*: [\d,]+ tokens/s", r.stdout), r.stdout


@pytest.mark.parametrize("case", ["missing", "empty", "not_utf8", "bad_type", "unknown_key", "triton_on_cpu"])
def test_bad_input_is_one_clear_line(case, tmp_path):
    args = {"missing": ["--data=/no/such/dir"],
            "empty": [f"--data={tmp_path / 'empty.py'}"],
            "not_utf8": [f"--data={tmp_path / 'latin1.py'}"],
            "bad_type": ["--max_iters=1.5"],
            "unknown_key": ["--batchsize=4"],
            "triton_on_cpu": ["--attention=triton", "--model=nano", "--block_size=32", "--device=cpu"]}[case]
    (tmp_path / "empty.py").write_text("")
    (tmp_path / "latin1.py").write_bytes("s = 'café'\n".encode("latin-1"))
    r = run([*args, f"--cache_dir={tmp_path / 'cache'}"], tmp_path, timeout=60)
    assert r.returncode == 2 and "Traceback" not in r.stderr  # bad input, a missing data source included
    assert not (tmp_path / "out").exists()  # and nothing on disk changed: no out_dir, no lock in it
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error:"), r.stderr
    expected = {"missing": "not found: /no/such/dir", "empty": "nothing to train on", "not_utf8": "non-UTF-8 file: 1",
                "bad_type": "expected int", "unknown_key": "did you mean --batch_size",
                "triton_on_cpu": "attention=triton needs a CUDA GPU"}[case]
    assert expected in lines[0]


def test_resume_drops_log_lines_after_the_checkpoint(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 0, "val_loss": 9}\n{"step": 1, "loss": 8}\n{"step": 2, "loss": 7}\n{"step": 3, "lo')
    checkpoint.truncate_log(log, 1)  # resuming from the step-1 checkpoint; step 3's line was cut short by the kill
    assert [json.loads(line)["step"] for line in log.read_text().splitlines()] == [0, 1]


# ---------------------------------------------------------------------------- small corpora, small things, faults

def test_tiny_corpora_train(corpus, tmp_path):
    """1 and 9 documents (here two sources of one run): too few to hold whole documents out, so the tail of each
    stream is its validation split."""
    sources = []
    for n_docs in (1, 9):
        docs = tmp_path / f"docs{n_docs}"
        docs.mkdir()
        for f in sorted(corpus.iterdir())[:n_docs]:
            shutil.copy(f, docs)
        sources.append(str(docs))
    r = ok(run([*NANO, f"--data={','.join(sources)}", "--max_iters=2", "--eval_interval=2", "--out_dir=out"],
               tmp_path))
    assert ": 1 documents" in r.stdout and ": 9 documents" in r.stdout
    assert "warning: max_iters=2 < warmup_iters=15" in r.stdout  # the peak learning rate is never reached
    assert [e["step"] for e in read_log(tmp_path / "out")] == [0, 1, 2]


def test_help_prints_each_key_with_its_comment(capsys):
    with pytest.raises(SystemExit):
        train.parse_config(["--help"], DEFAULTS)
    out = capsys.readouterr().out
    assert re.search(r"--warmup_iters=15 +linear warmup from 0 to learning_rate", out)
    assert re.search(r"--prepare_only=False +only tokenize", out)
    # a comment continued on the next line is printed whole
    assert re.search(r"--deterministic=False +bitwise-reproducible GPU steps .*the attention kernel's "
                     r"deterministic backward and torch's deterministic algorithms, somewhat slower", out)


def test_prepare_only_builds_the_cache_and_resume_checks_the_checkpoint_first(corpus, tmp_path):
    r = ok(run([f"--data={corpus}", "--prepare_only=True", "--cache_dir=cache", "--tokenizer_workers=2"], tmp_path))
    assert "tokenizing" in r.stdout and not (tmp_path / "out").exists()
    assert len(list((tmp_path / "cache").glob("*/meta.json"))) == 1
    # resuming without a checkpoint fails before any tokenizing
    r = run([*NANO, f"--data={corpus}", "--cache_dir=fresh", "--init_from=resume"], tmp_path, timeout=60)
    assert r.returncode == 2 and "no checkpoint" in r.stderr and "tokenizing" not in r.stdout
    assert not (tmp_path / "fresh").exists()


def test_a_bad_checkpoint_is_one_line_naming_it(corpus, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    ckpt = out / "ckpt.pt"
    torch.save({"model": {"w": torch.zeros(10_000)}, "step": 3}, ckpt)
    whole = ckpt.read_bytes()
    for damaged in (whole[: len(whole) // 2], b"", os.urandom(1000)):  # cut short by a kill, empty, garbage
        ckpt.write_bytes(damaged)
        with pytest.raises(train.UserError, match=f"{re.escape(str(ckpt))} is not a readable checkpoint .*delete it"):
            checkpoint.load(ckpt)
    ckpt.write_bytes(whole)  # readable, but not a resume checkpoint (weights only)
    with pytest.raises(train.UserError, match="not a train.py resume checkpoint .*lacks data, model_args"):
        checkpoint.load(ckpt)
    # on the command line: one line, and before any tokenizing
    ckpt.write_bytes(whole[:100])
    r = run([*NANO, f"--data={corpus}", "--init_from=resume", "--cache_dir=fresh"], tmp_path, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith(f"train.py: error: {Path('out') / 'ckpt.pt'} is not a readable checkpoint")
    assert "tokenizing" not in r.stdout and not (tmp_path / "fresh").exists()


def run_patched(patch, args, cwd):
    """train.py's command line in a process where `patch` (Python code) has replaced something first."""
    script = (f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport configurator, train, torch\n{patch}\n"
              f"configurator.cli(train.main, {args!r}, prog='train.py')\n")
    return subprocess.run([sys.executable, "-c", script], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.parametrize("fault", ["full_disk", "full_disk_inside_torch", "ctrl_c"])
def test_a_failed_checkpoint_save_is_one_line_and_leaves_no_debris(fault, corpus, tmp_path):
    # the second save (step 2) writes a few bytes, then the disk is full (found by our write, or by torch's writer,
    # which reports it as a RuntimeError "enforce fail at inline_container.cc") or the user presses Ctrl-C twice
    action = {"full_disk": "raise OSError(28, 'No space left on device')",
              "full_disk_inside_torch": "return real_save(obj, Full(f))",
              "ctrl_c": "os.kill(os.getpid(), signal.SIGINT); time.sleep(0.2); os.kill(os.getpid(), signal.SIGINT); "
                        "time.sleep(5)"}[fault]
    patch = f"""
import os, signal, time
real_save, calls = torch.save, []
class Full:
    def __init__(self, f):
        self.f, self.written = f, 0
    def write(self, b):
        self.written += len(b)
        if self.written > 1000:
            raise OSError(28, 'No space left on device')
        return self.f.write(b)
    def flush(self):
        self.f.flush()
def save(obj, f):
    calls.append(1)
    if len(calls) == 2:
        f.write(b"partial")
        {action}
    real_save(obj, f)
torch.save = save
"""
    r = run_patched(patch, [*NANO, f"--data={corpus}", "--max_iters=2", "--ckpt_interval=1", "--eval_interval=2",
                            "--out_dir=out"], tmp_path)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    if fault.startswith("full_disk"):
        assert r.returncode == 1 and "cannot write out/ckpt.pt: No space left on device" in lines[0]
    else:
        assert r.returncode == 130
        assert lines[0] == "train.py: interrupted; the last checkpoint written whole, out/ckpt.pt, is kept"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckpt.pt", "lock", "log.jsonl"]
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["step"] == 1  # the previous one survives


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_file_system_is_one_line_and_keeps_the_previous_checkpoint(corpus, tmp_path):
    """A real full disk: out_dir on a tmpfs with room for one checkpoint and a half, so that the second save finds
    it full (torch's writer meets ENOSPC and raises RuntimeError, not OSError)."""
    args = [*NANO, f"--data={corpus}", "--max_iters=2", "--ckpt_interval=1", "--eval_interval=2", "--out_dir=out"]
    ok(run([*args[:-1], "--max_iters=1", "--out_dir=probe"], tmp_path))
    size = (tmp_path / "probe" / "ckpt.pt").stat().st_size
    out = tmp_path / "out"
    out.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2}", "tmpfs", str(out)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = run(args, tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "cannot write out/ckpt.pt: No space left on device" in lines[0]
        assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "lock", "log.jsonl"]
        assert torch.load(out / "ckpt.pt", weights_only=True)["step"] == 1
    finally:
        subprocess.run(["umount", str(out)])


def test_a_second_run_on_one_out_dir_is_refused_but_not_by_a_dead_one(corpus, tmp_path):
    # the first run: a process holding out_dir's lock exactly as train.py does, until it is killed
    holder = subprocess.Popen([sys.executable, "-c", f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\n"
                               "import checkpoint, pathlib\nlock = checkpoint.lock_out_dir(pathlib.Path('out'))\n"
                               "print('locked', flush=True)\ntime.sleep(600)\n"], cwd=tmp_path, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        r = run([*NANO, f"--data={corpus}", "--out_dir=out", "--max_iters=2"], tmp_path, timeout=60)
        assert r.returncode == 2 and "out is in use by another run (pid " in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "tokenizing" not in r.stdout
    finally:
        holder.kill()
        holder.wait()
    (tmp_path / "out" / "ckpt.pt.tmp").write_bytes(b"cut short by a SIGKILL")
    checkpoint.lock_out_dir(tmp_path / "out").close()  # the dead run's lock file does not block; its debris is removed
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["lock"]


def test_benchmark_loss_is_logged_at_each_evaluation(corpus, tmp_path):
    """--eval_problems logs eval.py's benchmark loss at every evaluation; the last equals eval.py's on the final
    checkpoint; a benchmark that is not there is one line before any work."""
    import eval as E
    from weights import load_model
    problems = dict(list(E.load_problems("humaneval").items())[:6])
    bench = tmp_path / "he6.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in problems.values()))
    out = tmp_path / "out"
    ok(run([f"--data={corpus}", *NANO, "--block_size=64", "--max_iters=4", "--eval_interval=2", "--warmup_iters=1",
            f"--eval_problems={bench}", f"--out_dir={out}"], tmp_path))
    logged = [(r["step"], r["bench_loss"]) for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())
              if "bench_loss" in r]
    assert [s for s, _ in logged] == [0, 2, 4] and all(set(b) == {"he6"} for _, b in logged)
    assert logged[-1][1]["he6"] < logged[0][1]["he6"]           # training on Python lowers it
    final = E.benchmark_loss(load_model(out), problems, progress=False)["loss"]
    assert logged[-1][1]["he6"] == pytest.approx(final, abs=1e-4)
    bad = run([f"--data={corpus}", *NANO, f"--eval_problems={tmp_path / 'nope.jsonl'}", f"--out_dir={out}"], tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"train.py: error: eval_problems: {tmp_path / 'nope.jsonl'}: no such file"


def test_a_bf16_run_trains_evaluates_keeps_resumes_and_samples(corpus, tmp_path):
    """The GPU's dtype path on the CPU: the whole of train.py in bf16 autocast over fp32 weights (loop,
    validation, benchmark loss, checkpoints, resume, the closing sample with its KV cache). A step named in
    --keep_ckpts is kept though no checkpoint is due at it; a resume that changes the schedule says so; a
    finetune past the checkpoint's context is refused and leaves nothing behind."""
    import eval as E
    bench = tmp_path / "he2.jsonl"
    bench.write_text("".join(json.dumps(p) + "\n" for p in list(E.load_problems("humaneval").values())[:2]))
    common = [f"--data={corpus}", *NANO, "--dtype=bfloat16", "--eval_interval=2", "--warmup_iters=1",
              f"--eval_problems={bench}", "--sample_tokens=6", "--out_dir=out"]
    r = ok(run([*common, "--max_iters=4", "--keep_ckpts=3"], tmp_path))
    assert "cpu, bfloat16" in r.stdout and "sample (temperature 0.8):" in r.stdout and "warning" not in r.stdout
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("ckpt*.pt")) == ["ckpt.pt", "ckpt_000003.pt"]
    kept = torch.load(out / "ckpt_000003.pt", weights_only=True)
    assert kept["step"] == 3 and kept["model"]["lm_head.weight"].dtype == torch.float32  # fp32 masters
    log = read_log(out)
    assert [e["step"] for e in log if "bench_loss" in e] == [0, 2, 4]
    assert all(math.isfinite(e.get("loss", e.get("val_loss"))) for e in log)
    # resumed with a longer max_iters: the linear decay is stretched from step 5 on, and the run says so
    r = ok(run([*common, "--max_iters=6", "--init_from=resume"], tmp_path))
    warning = [line for line in r.stdout.splitlines() if line.startswith("warning:")]
    assert warning == ["warning: the learning-rate schedule differs from the checkpoint's: step 5 gets 6.67e-04 "
                       "where it had 0.00e+00; to continue on the checkpoint's schedule pass --lr_decay_iters=4 "
                       "(and its other lr keys)"], r.stdout
    assert [e["step"] for e in read_log(out)] == list(range(7)) and "sample (temperature" in r.stdout
    # finetuning a 32-token model on 64-token sequences: rotary positions it never learned
    r = run([f"--data={corpus}", *NANO, "--block_size=64", "--init_from=out/ckpt_000003.pt", "--out_dir=ft"],
            tmp_path, timeout=60)
    assert r.returncode == 2 and r.stderr.strip() == (
        "train.py: error: block_size=64 exceeds the 32 tokens out/ckpt_000003.pt was trained on: pass "
        "--block_size=32 or less"), r.stderr
    assert not (tmp_path / "ft").exists()


def test_deterministic_mode_runs_and_changes_nothing_on_cpu(corpus, tmp_path):
    """--deterministic=True turns on torch's deterministic algorithms (on GPUs: the kernel's reproducible dQ pass);
    on the CPU, already deterministic, the losses are the same bit for bit."""
    losses = []
    for flag in ("False", "True"):
        out = tmp_path / f"det-{flag}"
        ok(run([f"--data={corpus}", *NANO, "--max_iters=3", "--eval_interval=3", f"--deterministic={flag}",
                f"--out_dir={out}"], tmp_path))
        losses.append([r.get("loss") for r in map(json.loads, (out / "log.jsonl").read_text().splitlines())])
    assert losses[0] == losses[1] and len(losses[0]) == 4


# ---------------------------------------------------------------------------- one run per out_dir, Ctrl-C

def test_a_fresh_run_over_a_finished_one_is_refused_unless_overwrite(corpus, tmp_path):
    args = [*NANO, f"--data={corpus}", "--out_dir=out", "--max_iters=2", "--eval_interval=2", "--keep_ckpts=all"]
    ok(run(args, tmp_path))
    out = tmp_path / "out"
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()}
    r = run([*args, "--cache_dir=fresh"], tmp_path, timeout=60)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert all(choice in lines[0] for choice in ("--init_from=resume", "--out_dir", "--overwrite=True")), lines[0]
    # the same run, not "another run's": the command that continues it, every key as given
    resume = shlex.join(["python", TRAIN, *args, "--cache_dir=fresh", "--init_from=resume"])
    assert lines[0] == f"train.py: error: out holds a run (ckpt.pt): continue it with `{resume}`, choose " \
                       "another --out_dir, or start afresh over it with --overwrite=True", lines[0]
    assert "tokenizing" not in r.stdout and not (tmp_path / "fresh").exists()
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.iterdir()} == before  # as it was
    # --overwrite=True replaces the old run: its checkpoints (the kept ones too) and its log go
    r = ok(run([*NANO, f"--data={corpus}", "--out_dir=out", "--max_iters=1", "--overwrite=True"], tmp_path))
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "lock", "log.jsonl"]
    assert [e["step"] for e in read_log(out)] == [0, 1]


def start_run(args, cwd, **env):
    """train.py in its own process group (as a terminal runs it), its output collected."""
    return subprocess.Popen([sys.executable, TRAIN, *args], cwd=cwd, env={**ENV, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def wait_for_steps(out_dir, n, proc, timeout=180):
    """Wait until out_dir/log.jsonl holds n lines (step 0's evaluation and steps 1..n-1)."""
    log_file, deadline = Path(out_dir) / "log.jsonl", time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if log_file.exists() and len(log_file.read_text().splitlines()) >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"the run did not reach {n} log lines: {proc.poll()}")


STRIP = lambda log: [(e["step"], e.get("loss"), e.get("val_loss"), e.get("tokens_seen")) for e in log]  # noqa: E731


def test_ctrl_c_finishes_the_step_writes_a_checkpoint_and_resume_continues_exactly(corpus, textbooks, tmp_path):
    # a mixture and dropout (the RNG states must resume too); the schedule is the same up to step 12 however long
    common = [*NANO, f"--data={corpus}:0.7,{textbooks}:0.3", "--batch_size=8", "--eval_interval=4",
              "--lr_decay_iters=12", "--warmup_iters=3", "--dropout=0.1", "--learning_rate=3e-3"]
    ok(run([*common, "--out_dir=full", "--max_iters=12"], tmp_path))
    proc = start_run([*common, "--out_dir=stopped", "--max_iters=100000"], tmp_path)
    wait_for_steps(tmp_path / "stopped", 6, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=60)
    step = torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)["step"]
    command = shlex.join(["python", TRAIN, *common, "--out_dir=stopped", "--max_iters=100000",
                          "--init_from=resume"])
    assert proc.returncode == 130 and err.strip().splitlines() == [
        f"train.py: interrupted; checkpoint of step {step} written to stopped/ckpt.pt; continue with: "
        + command], err
    assert 5 <= step < 12 and read_log(tmp_path / "stopped")[-1]["step"] == step  # the step it was in, finished
    ok(run([*common, "--out_dir=stopped", "--max_iters=12", "--init_from=resume"], tmp_path))
    assert STRIP(read_log(tmp_path / "stopped")) == STRIP(read_log(tmp_path / "full"))  # bit-identical


def test_a_second_ctrl_c_stops_at_once_keeping_the_last_checkpoint(corpus, tmp_path):
    # steps of 3 s (a slow gradient clipping), a checkpoint after each; the second Ctrl-C lands inside a step
    script = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\nimport configurator, torch, train\n"
              "real = torch.nn.utils.clip_grad_norm_\n"
              "torch.nn.utils.clip_grad_norm_ = lambda *a, **k: (time.sleep(3), real(*a, **k))[1]\n"
              f"configurator.cli(train.main, {[*NANO, f'--data={corpus}', '--ckpt_interval=1', '--out_dir=out']!r}, "
              "prog='train.py')\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    wait_for_steps(tmp_path / "out", 3, proc)
    time.sleep(1.0)  # step 2's checkpoint is written by now: the next step sleeps
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(0.5)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 2.5 and proc.returncode == 130  # before the step's 3 s are over
    step = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["step"]
    assert err.strip().splitlines() == ["train.py: interrupted; the last checkpoint written whole, out/ckpt.pt, "
                                        "is kept"], err
    assert read_log(tmp_path / "out")[-1]["step"] == step and step >= 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ckpt.pt", "lock", "log.jsonl"]


def rank_pids(marker, rank):
    """The pids of torchrun's workers of one rank, found by a marker in their environment."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            env = environ.read_bytes()
        except OSError:
            continue
        if f"PHI1_TEST={marker}".encode() in env and f"\0RANK={rank}\0".encode() in env:
            pids.append(int(environ.parent.name))
    return pids


def test_ctrl_c_under_ddp_stops_every_rank_after_the_same_step(corpus, tmp_path):
    """Ctrl-C reaching one rank only (rank 1) stops both after the same step: the stop flag travels with the
    loss's all-reduce; rank 0 writes the checkpoint of that step and the resumed run repeats the full one."""
    common = [*NANO, f"--data={corpus}", "--eval_interval=4", "--lr_decay_iters=9", "--warmup_iters=2",
              "--dropout=0.1"]
    ok(run([*common, "--out_dir=full", "--max_iters=9"], tmp_path, torchrun=True))
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", TRAIN]
    proc = subprocess.Popen([*launcher, *common, "--out_dir=stopped", "--max_iters=100000"], cwd=tmp_path,
                            env={**ENV, "PHI1_TEST": str(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_steps(tmp_path / "stopped", 4, proc)
        for pid in rank_pids(tmp_path, 1):
            os.kill(pid, signal.SIGINT)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step = torch.load(tmp_path / "stopped" / "ckpt.pt", weights_only=True)["step"]
    assert 3 <= step < 9 and read_log(tmp_path / "stopped")[-1]["step"] == step
    ok(run([*common, "--out_dir=stopped", "--max_iters=9", "--init_from=resume"], tmp_path, torchrun=True))
    assert STRIP(read_log(tmp_path / "stopped")) == STRIP(read_log(tmp_path / "full"))


def test_ctrl_c_during_slow_saves_ends_in_one_line_every_time(corpus, tmp_path):
    """Ctrl-C once or twice at random moments of a run that mostly saves checkpoints (a slowed writer): every
    time it ends within seconds, in one line, exit 130, with an intact checkpoint of the step it names."""
    ok(run([f"--data={corpus}", "--prepare_only=True", "--cache_dir=cache"], tmp_path))
    rng = random.Random(1)
    script = (f"import sys, time\nsys.path.insert(0, {str(REPO)!r})\nimport configurator, torch, train\n"
              "real = torch.save\n"
              "class Slow:\n"
              "    def __init__(self, f): self.f = f\n"
              "    def write(self, b): time.sleep(0.001); return self.f.write(b)\n"
              "    def flush(self): self.f.flush()\n"
              "torch.save = lambda obj, f: real(obj, Slow(f))\n"
              "configurator.cli(train.main, sys.argv[1:], prog='train.py')\n")
    for attempt in range(10):
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", script, *NANO, f"--data={corpus}", "--cache_dir=cache",
                                 "--ckpt_interval=1", f"--out_dir={out.name}"], cwd=tmp_path, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_for_steps(out, 2, proc)
        time.sleep(rng.uniform(0, 1.5))
        os.killpg(proc.pid, signal.SIGINT)
        twice = rng.random() < 0.5
        if twice:
            time.sleep(rng.uniform(0.05, 0.5))
            os.killpg(proc.pid, signal.SIGINT)
        t0 = time.time()
        _, err = proc.communicate(timeout=60)
        lines = err.strip().splitlines()
        assert time.time() - t0 < 10 and proc.returncode == 130 and len(lines) == 1, (attempt, err)
        if lines[0] == "train.py: interrupted; nothing half-written was kept":  # twice, in the first save
            assert sorted(p.name for p in out.iterdir()) == ["lock", "log.jsonl"], attempt
            continue
        step = torch.load(out / "ckpt.pt", weights_only=True)["step"]  # whole, never cut short
        assert lines[0] in (f"train.py: interrupted; checkpoint of step {step} written to {out.name}/ckpt.pt; "
                            f"continue with: python -c {' '.join(NANO)} --data={corpus} --cache_dir=cache "
                            f"--ckpt_interval=1 --out_dir={out.name} --init_from=resume",
                            f"train.py: interrupted; the last checkpoint written whole, {out.name}/ckpt.pt, "
                            "is kept"), (attempt, twice, err)
        assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt", "lock", "log.jsonl"]


@pytest.mark.skipif(sys.prefix == sys.base_prefix, reason="needs a virtualenv to reach through a path with a space")
def test_compile_on_a_cpu_under_a_path_with_a_space_is_one_line(corpus, tmp_path):
    """torch's CPU compiler splits its command line at spaces, so a virtualenv under a path with a space cannot
    link compiled code: --compile=True says so in one line, before any work (and works without the space)."""
    spaced = tmp_path / "with space"
    spaced.mkdir()
    (spaced / "venv").symlink_to(sys.prefix)
    python = spaced / "venv" / "bin" / Path(sys.executable).name
    r = subprocess.run([str(python), TRAIN, *NANO, f"--data={corpus}", "--compile=True", "--device=cpu",
                        "--cache_dir=cache"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
    assert lines[0].startswith(f"train.py: error: compile=True on a CPU cannot link from {spaced}/venv/")
    assert "--compile=False" in lines[0] and not (tmp_path / "cache").exists()
