"""
Synthetic textbooks and code exercises with controlled diversity (§2.2 of "Textbooks Are All You
Need"), checked, deduplicated and decontaminated.

phi-1 trained on two data sets written by GPT-3.5: "synthetic textbooks" (under 1 B tokens of prose
with code snippets, made diverse by constraining the topic and the target audience of each prompt)
and "CodeExercises" (about 180 M tokens; a function signature with a docstring, then its solution;
diverse mostly through constrained function names). The paper notes GPT-3.5's high error rate, and
decontaminates the exercises against HumanEval (§5, decontaminate.py). This file has both data
sets written by any OpenAI-compatible server (llm.py), checks them, and stores JSONL records with a
`text` field for train.py.

Read top to bottom: 1. the prompt: the constraints drawn for each record, the chat messages built
from them; 2. one request -> one checked record; 3. a run: its settings, the requests kept in
flight, resuming, the final pass (dedup.py, decontaminate.py), the diversity report; 4. the command
line; 5. the vocabularies the constraints are drawn from (topics, audiences, function names).

    python synth.py textbook --out=data/textbooks.jsonl --n_samples=1000 --base_url=http://HOST/v1
    python synth.py exercises --out=data/exercises.jsonl --n_tokens=2000000 --verify=True --seed=1
    python synth.py exercises --out=data/exercises.jsonl --n_samples=880000 --dry_run=True  # cost
    python synth.py preview exercises --seed=0 --n=3  # the prompts a seed draws, no server needed
    python synth.py report data/exercises.jsonl       # how diverse: distinct constraints, n-grams

The final pass on its own, on any JSONL file: `python dedup.py FILE.jsonl` and `python
decontaminate.py FILE.jsonl` (each with --help).

Generation files, for --out=X.jsonl: X.raw.jsonl (append-only, one JSON line per accepted record,
flushed per record; a killed run resumes from it, reading only the head of each line),
X.rejected.jsonl (dropped outputs and why), X.jsonl (the final data: the smallest prefix of indices
reaching the target, deduplicated, decontaminated) and X.report.json (counts, removals, diversity).
Every record has a deterministic id from (kind, seed, index) and stores the constraint values its
prompt was drawn with, so a run is reproducible from its seed and its diversity measurable. Sized
for the paper's ~1 B tokens: the final pass streams the raw file by byte offset and holds per record
only its offset and MinHash signature; dedup and decontamination run on all cores (`python bench.py
synth` measures them).
"""

import ast
import functools
import json
import math
import os
import random
import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import configurator
from configurator import RunError, UserError
from decontaminate import (AGAINST, TAU, TAUS, code_blocks, combined, decontaminate_lines,
                           load_benchmarks, parse_against, parse_taus, summary)
from dedup import (THRESHOLD, WORKERS, DistinctCount, dedup_lines, default_workers, ngram_hashes,
                   word_hashes)
from files import (LineReader, Progress, append_jsonl, atomic_write, input_jsonl, jsonl_lines,
                   record_of)
from llm import LLMClient, LLMError
from sandbox import run_programs
from tokenizer import get_tokenizer

BASE_URL = "http://127.0.0.1:8080/v1"
MODEL = "gpt-3.5-turbo"
CONCURRENCY = 8
TEMPERATURE = 1.0        # the paper is silent; 1.0 adds diversity on top of the drawn constraints
MAX_TOKENS = {"textbook": 1024, "exercises": 512}
GIVE_UP_AFTER = 200      # rejected outputs in a row after which a run stops: the model can't follow


# -----------------------------------------------------------------------------
# 1. The prompt. The paper gets its diversity by constraining each prompt: the topic and the target
# audience of a textbook section, the function name of an exercise. It does not publish its
# prompts; these are ours. The values are drawn, seeded per record, from the vocabularies at the end
# of the file.

def record_id(kind, seed, index):
    return f"{kind}-s{seed}-{index:09d}"


def draw_constraints(kind, seed, index):
    """The constraint values of prompt `index` in a run with `seed` (a pure function of them)."""
    # random.Random seeded with a str hashes it with sha512: the same draws on every machine and run
    r = random.Random(f"{kind}:{seed}:{index}")
    topic = r.choice(sorted(TAXONOMY))
    c = {"topic": topic, "subtopic": r.choice(TAXONOMY[topic])}
    if kind == "textbook":
        c.update(audience=r.choice(AUDIENCES), style=r.choice(STYLES),
                 words=r.choice(SECTION_WORDS))
    else:
        qual = [r.choice(QUALIFIERS)] if r.random() < 0.4 else []
        c.update(function_name="_".join([r.choice(VERBS)] + qual + [r.choice(NOUNS)]),
                 difficulty=r.choice(DIFFICULTIES),
                 modules=sorted(r.sample(STDLIB_MODULES, r.choice([0, 0, 1, 2]))))
    return c


def build_messages(kind, c, verify=False):
    """Chat messages for constraint values `c`; with `verify`, an exercise asks for asserts too."""
    if kind == "textbook":
        system = ("You are an expert computer science teacher who writes clear, high-quality "
                  "textbooks.")
        user = (f'Write a section of a Python textbook on "{c["subtopic"]}", part of the chapter '
                f'"{c["topic"]}". The reader is {c["audience"]}. Style: {c["style"]}. '
                "Alternate short explanations in natural language with small, self-contained "
                "Python code snippets in ```python blocks, and explain the reasoning behind each "
                "snippet: teach how to think about the problem, not only the syntax. "
                f"About {c['words']} words. Write only the section itself.")
    else:
        modules = ("The solution may import only these standard-library modules: "
                   f"{', '.join(c['modules'])}." if c["modules"]
                   else "The solution must not import anything.")
        tests = (" After the function, at the top level of the same block, write 3 assert "
                 f"statements that call `{c['function_name']}` and check its results."
                 if verify else "")
        system = ("You are an expert Python teacher who writes exercises with correct reference "
                  "solutions.")
        article = "an" if c["difficulty"][0] in "aeiou" else "a"
        user = (f"Write {article} {c['difficulty']} Python exercise on {c['subtopic']} "
                f"({c['topic']}), or as close to it as the function's name allows. It is one "
                f"function named `{c['function_name']}` with type hints, whose docstring states "
                "the task precisely with an example, followed by a correct and readable solution. "
                f"{modules}{tests} Reply with a single ```python code block and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# -----------------------------------------------------------------------------
# 2. One request -> one checked record. The paper notes GPT-3.5's high error rate: a reply that is
# not what was asked for is kept apart as rejected (with the reason), and with --verify=True an
# exercise must pass its own asserts in the sandbox.

def make_record(client, s, index):
    """Request `index` of a run with settings `s` -> its record: {id, kind, seed, index,
    constraints, model, ..., text} when accepted, or that head with a `reason` and the `raw` reply
    when rejected. Raises LLMError when the request failed after all retries."""
    c = draw_constraints(s.kind, s.seed, index)
    rid = record_id(s.kind, s.seed, index)
    # a per-request seed makes a run reproducible on servers that honour it (llama.cpp, OpenAI)
    resp = client.chat(build_messages(s.kind, c, s.verify), temperature=s.temperature,
                       max_tokens=s.max_tokens, seed=zlib.crc32(rid.encode()))
    try:
        choice = resp["choices"][0]
        content = choice["message"]["content"] or ""
    except (KeyError, IndexError, TypeError) as e:
        raise LLMError(f"malformed response: {e!r}")
    record = {"id": rid, "kind": s.kind, "seed": s.seed, "index": index, "constraints": c,
              "model": s.model, "finish_reason": choice.get("finish_reason"),
              "usage": resp.get("usage")}
    fields, reason = check_reply(s.kind, content, s.verify)
    if reason:
        return {**record, "reason": reason, **fields, "raw": content}
    return {**record, **fields}


def check_reply(kind, content, verify):
    """(the record's fields, None) for a good reply; ({...}, reason) for one to reject."""
    if kind == "textbook":
        if len(content.split()) < 20:   # an empty or one-line reply is no textbook section
            return {}, "too_short"
        return {"text": content.strip() + "\n"}, None
    ex, reason = parse_exercise(content)
    if reason:
        return {}, reason
    if verify:
        if not ex["tests"]:
            return {}, "no_tests"
        result = verify_programs([ex])[0]
        if result != "passed":
            return {"result": result}, "failed_tests"
    return {**ex, "verified": verify}, None


def parse_exercise(content):
    """Split a model reply into an exercise: imports, one function with a docstring and a body, and
    asserts. Returns (fields, None) or (None, reason). Other top-level statements (a stray print, a
    __main__ block) are dropped; the asserts become the exercise's tests."""
    blocks = code_blocks(content)
    src = "\n".join(blocks) if blocks else content   # some models answer with bare code
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        looks_like_code = blocks or re.search(r"^(def|class|import|from) ", content, re.M)
        return None, ("unparsable" if looks_like_code else "no_code")
    funcs = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(funcs) != 1:
        return None, ("no_function" if not funcs else "several_functions")
    fn = funcs[0]
    if ast.get_docstring(fn) is None:
        return None, "no_docstring"
    body = fn.body[1:]
    if all(isinstance(s, ast.Pass) or isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
           for s in body):
        return None, "no_body"
    imports = [ast.get_source_segment(src, n) for n in tree.body
               if isinstance(n, (ast.Import, ast.ImportFrom))]
    # prompt: the signature with its docstring; completion: the solution (prompt/answer finetuning)
    lines = src.splitlines()
    start = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    prompt = "\n".join(imports) + "\n\n\n" if imports else ""
    prompt += "\n".join(lines[start - 1:fn.body[0].end_lineno])
    completion = "\n".join(lines[fn.body[0].end_lineno:fn.end_lineno])
    tests = [ast.get_source_segment(src, n) for n in tree.body if isinstance(n, ast.Assert)]
    return {"text": prompt + "\n" + completion + "\n", "prompt": prompt + "\n",
            "completion": completion + "\n", "entry_point": fn.name, "tests": tests}, None


def verify_programs(exercises, timeout=3.0):
    """Run each exercise's asserts against its solution in the sandbox: "passed", "failed: ..."."""
    # the tests apart from the code: the sandbox runs them with pristine builtins, so the solution
    # cannot rebind assert's helpers; one worker, as generation runs `concurrency` of these at once
    res = run_programs([ex["text"] for ex in exercises], timeout=timeout, workers=1,
                       tests=["\n".join(ex["tests"]) + "\n" for ex in exercises])
    return [r["result"] for r in res]


# -----------------------------------------------------------------------------
# 3. A run: requests kept in flight until the records of the lowest indices reach the target, each
# record appended to X.raw.jsonl (or X.rejected.jsonl) as it comes, then the final pass.

@dataclass
class Settings:
    """A generation run: the keys of `synth.py textbook|exercises` (help in generate_options)."""
    kind: str                       # "textbook" or "exercises"
    out: str                        # the final JSONL; X.raw.jsonl, X.rejected.jsonl... beside it
    n_samples: int = None           # the target: accepted records, or ...
    n_tokens: int = None            # ... tokens of accepted text (phi-1's tokenizer); one of them
    seed: int = 0                   # of the constraint draws and the record ids
    base_url: str = BASE_URL
    model: str = MODEL
    concurrency: int = CONCURRENCY  # requests in flight
    temperature: float = TEMPERATURE
    max_tokens: int = None          # per completion; None: MAX_TOKENS[kind]
    timeout: float = 60.0           # seconds per request
    max_retries: int = 6
    give_up_after: int = GIVE_UP_AFTER
    verify: bool = False            # exercises: ask for asserts and run them in the sandbox
    against: tuple = ("humaneval",)  # benchmarks to decontaminate against; (): none
    tau: tuple = (TAU,)             # AST thresholds: each one reported, the first one applied
    near_threshold: float = THRESHOLD  # dedup.py's word 5-gram Jaccard (the paper is silent)
    workers: int = None             # processes of the final pass; None: all cores
    dry_run: bool = False           # print the plan and its cost, send nothing

    def __post_init__(self):
        if (self.n_samples is None) == (self.n_tokens is None):
            raise UserError("give the target size: --n_samples=N or --n_tokens=N (one of them)")
        if (self.n_samples or self.n_tokens) <= 0:
            raise UserError("the target size must be positive")
        self.max_tokens = self.max_tokens or MAX_TOKENS[self.kind]
        self.workers = self.workers or default_workers()
        self.tau = (self.tau,) if isinstance(self.tau, (int, float)) else tuple(self.tau)


def generate(s, log=None):
    """Generate until the records of the lowest indices hold s.n_samples accepted records (or
    s.n_tokens tokens of `text`), then write the final deduplicated, decontaminated data; returns
    the report. Resumable: indices already in the raw or rejected file are skipped; resuming reads
    only the head of each line. The final data is the smallest prefix of indices that reaches the
    target, so a killed and resumed run ends with the same records as an uninterrupted one."""
    log = log or sys.stderr
    p = paths_for(s.out)
    count_tokens = _token_counter()
    done, n_kept, resumed = read_done(s, p, count_tokens)
    n_rejected = sum(v == 0 for v in done.values())
    ledger = Ledger(done, s.n_samples or s.n_tokens, bool(s.n_tokens), s.max_tokens)
    dry = " (dry run: nothing is sent or written)" if s.dry_run else ""
    if resumed:
        print(f"[{s.kind}] seed {s.seed}: {'would resume' if dry else 'resuming'} with {n_kept} "
              f"records ({n_rejected} rejected) from {p['raw']}{dry}", file=log)
    else:
        print(f"[{s.kind}] seed {s.seed}: new run, {'would write' if dry else 'writing'} "
              f"{p['raw']}{dry}", file=log)
    print_plan(s, ledger, n_rejected, count_tokens, log)
    if s.dry_run:
        return None
    run = {"failed_calls_retried": 0,
           "usage_this_run": {"prompt_tokens": 0, "completion_tokens": 0}}
    try:
        if not ledger.finished:
            run = request_until_done(s, ledger, p, count_tokens, log)
        return finalize(s, p, ledger.goal, {"kind": s.kind, "seed": s.seed, **run}, log)
    except KeyboardInterrupt:
        raise KeyboardInterrupt(f"every accepted record is kept in {p['raw']}: run the same "
                                "command again to resume") from None
    finally:
        for path in (p["raw"], p["rejected"]):   # no empty files from a failed start
            if path.exists() and path.stat().st_size == 0:
                path.unlink()


class Ledger:
    """Where a run's requests stand. done: {index: what it brought (1 per accepted record when
    counting samples, its tokens when counting tokens, 0 when rejected)} for the indices done above
    the frontier; below the frontier every index is done and `prefix` is what they brought. The run
    is finished when the prefix reaches the goal."""

    def __init__(self, done, goal, by_tokens, max_tokens):
        self.done, self.goal, self.by_tokens, self.max_tokens = done, goal, by_tokens, max_tokens
        self.kept = sum(done.values())   # what every index done brought
        self.requests = len(done)        # requests answered, in this run and earlier ones
        self.in_flight = set()           # indices sent and not yet answered
        self.retry = []                  # indices whose request failed, to send again first
        self.frontier = self.prefix = 0
        self.advance()

    @property
    def finished(self):
        return self.prefix >= self.goal

    def advance(self):
        while self.frontier in self.done and self.prefix < self.goal:
            self.prefix += self.done.pop(self.frontier)
            self.frontier += 1

    def settle(self, index, value):
        self.in_flight.discard(index)
        self.done[index] = value
        self.kept += value
        self.requests += 1
        self.advance()

    def expected_per_request(self):
        # samples: count every request in flight as an accepted record, so that a run never asks for
        # more than it needs; tokens: the accepted tokens per request so far (before the first
        # answer, half of max_tokens)
        if not self.by_tokens:
            return 1.0
        return self.kept / self.requests if self.requests else self.max_tokens / 2

    def to_send(self):
        """Indices to request, lowest first, produced only when LLMClient.map has a free slot."""
        nxt = self.frontier
        while True:
            if self.retry:
                yield self.retry.pop()
                continue
            while nxt in self.done or nxt in self.in_flight:
                nxt += 1
            # a hole below what is done is always needed; beyond, only while the target is not
            # covered yet by what is done and in flight
            hole = bool(self.done) and nxt < max(self.done)
            expected = self.kept + len(self.in_flight) * self.expected_per_request()
            if not hole and expected >= self.goal:
                return
            self.in_flight.add(nxt)
            yield nxt
            nxt += 1


def request_until_done(s, ledger, p, count_tokens, log):
    """Keep s.concurrency requests in flight (each finished one starts the lowest index not yet
    done, as long as what is done and in flight is expected to fall short of the goal), appending
    each record to the raw or the rejected file, flushed, until the ledger is finished."""
    client = LLMClient(s.base_url, s.model, concurrency=s.concurrency, timeout=s.timeout,
                       max_retries=s.max_retries)
    work = functools.partial(make_record, client, s)
    reasons, failed, failed_in_a_row, rejected_in_a_row = Counter(), 0, 0, 0
    progress = Progress(f"[{s.kind}]", ledger.goal, "tokens" if s.n_tokens else "samples",
                        start=ledger.kept, log=lambda line: print(line, file=log, flush=True))
    p["raw"].parent.mkdir(parents=True, exist_ok=True)
    with open(p["raw"], "a", encoding="utf-8") as fraw, \
            open(p["rejected"], "a", encoding="utf-8") as frej:
        while not ledger.finished and rejected_in_a_row < s.give_up_after:
            for index, res in client.map(work, ledger.to_send()):
                if isinstance(res, LLMError):
                    failed, failed_in_a_row = failed + 1, failed_in_a_row + 1
                    if failed_in_a_row >= max(8, 2 * s.concurrency):
                        raise RunError(f"the last {failed_in_a_row} requests all failed (run the "
                                       f"same command again to resume); last error: {res}")
                    ledger.retry.append(index)
                    continue
                if isinstance(res, Exception):
                    raise res
                failed_in_a_row = 0
                if "reason" in res:
                    append_jsonl(frej, _head_first(res))
                    reasons[res["reason"]] += 1
                    rejected_in_a_row, value = rejected_in_a_row + 1, 0
                else:
                    value = count_tokens(res["text"]) if s.n_tokens else 1
                    # the token count is stored: resuming a billion-token run need not re-tokenize
                    append_jsonl(fraw, _head_first(res, value if s.n_tokens else None))
                    rejected_in_a_row = 0
                ledger.settle(index, value)
                u = client.usage
                progress.update(value, f"in flight {len(ledger.in_flight)}, rejected "
                                f"{sum(reasons.values())}, failed calls {failed}, retries "
                                f"{client.stats['retries']}, usage {u.get('prompt_tokens', 0)}+"
                                f"{u.get('completion_tokens', 0)} tokens")
                if rejected_in_a_row >= s.give_up_after:
                    print(f"[{s.kind}] giving up: the last {rejected_in_a_row} outputs were all "
                          f"rejected ({dict(reasons)})", file=log)
                    break
    print(f"[{s.kind}] generated: rejected this run {dict(reasons)}, failed calls (retried) "
          f"{failed}, usage this run {dict(client.usage)}", file=log)
    return {"failed_calls_retried": failed, "usage_this_run": dict(client.usage)}


def print_plan(s, ledger, n_rejected, count_tokens, log):
    """Before the first request: how many requests remain and what they will cost in prompt and
    completion tokens. The prompt tokens per request are measured with phi-1's tokenizer on up to
    200 of the prompts still to be sent (servers add a few tokens of chat template); acceptance and
    the accepted tokens per request are those of the run so far, or, on a new run, all accepted and
    max_tokens / 2 per textbook request."""
    have, n_done = ledger.kept, ledger.requests
    left = max(ledger.goal - have, 0)
    accept = (n_done - n_rejected) / n_done if n_done else 1.0
    if not s.n_tokens:
        per_request = max(accept, 1e-3)
    else:
        per_request = max(have / n_done if n_done else s.max_tokens / 2, 1.0)
    requests = math.ceil(left / per_request) if left else 0
    sample = range(ledger.frontier, ledger.frontier + max(1, min(requests, 200)))
    chats = (build_messages(s.kind, draw_constraints(s.kind, s.seed, i), s.verify) for i in sample)
    prompt = sum(count_tokens("\n".join(m["content"] for m in ms)) for ms in chats) / len(sample)
    unit = "tokens" if s.n_tokens else "samples"
    print(f"[{s.kind}] plan: {left} more {unit} in about {requests} requests (acceptance "
          f"{accept:.0%}{' so far' if n_done else ' assumed'}): about {requests * prompt:,.0f} "
          f"prompt tokens ({prompt:.0f} per request) and at most {requests * s.max_tokens:,} "
          f"completion tokens (max_tokens {s.max_tokens})", file=log, flush=True)


def _token_counter():
    tok = get_tokenizer()
    return lambda text: len(tok.encode(text))


def paths_for(out):
    out = Path(out)
    return {"raw": out.with_suffix(".raw.jsonl"), "rejected": out.with_suffix(".rejected.jsonl"),
            "final": out, "report": out.with_suffix(".report.json")}


# Raw and rejected records start with these fields, in this order, so that resuming can read a
# line's head without decoding its text (a textbook line is ~3 KB, the head ~80 B); lines written
# otherwise (by hand) are decoded whole instead.
_HEAD = re.compile(rb'\{"id": "[^"\\]*", "kind": "(\w+)", "seed": (-?\d+), "index": (\d+)'
                   rb'(?:, "tokens": (\d+))?[,}]')


def _head_first(res, tokens=None):
    """The record with id, kind, seed, index (and tokens) first, as _HEAD reads them back."""
    head = {k: res[k] for k in ("id", "kind", "seed", "index")}
    if tokens is not None:
        head["tokens"] = tokens
    return {**head, **{k: v for k, v in res.items() if k not in head}}


def read_heads(path, repair=True):
    """(kind, seed) pairs seen, and arrays index (n,), tokens (n,; -1 where not stored) and offset
    (n,) of the records of a raw or rejected file, from the head of each line only. A torn last line
    (a killed run's) is cut off, or without `repair` (a dry run) left as it is and skipped."""
    kinds, index, tokens, offset = set(), [], [], []
    tail = "repair" if repair else "skip"
    for _, off, line in jsonl_lines(path, tail) if Path(path).exists() else ():
        m = _HEAD.match(line)
        if m:
            kind, seed, idx, tok = m.group(1).decode(), int(m.group(2)), int(m.group(3)), m.group(4)
            tok = int(tok) if tok is not None else -1
        else:
            try:
                r = json.loads(line)
                kind, seed, idx = r.get("kind"), r.get("seed"), int(r["index"])
                tok = int(r.get("tokens", -1))
            except (ValueError, KeyError, TypeError):
                raise UserError(f"cannot resume: {path}: a line at byte {off} is not a generation "
                                f"record ({line[:60]!r})") from None
        kinds.add((kind, seed))
        index.append(idx)
        tokens.append(tok)
        offset.append(off)
    return (kinds, *(np.array(a, dtype=np.int64) for a in (index, tokens, offset)))


def read_done(s, p, count_tokens):
    """What earlier runs into these files did: {index: 1, or its tokens, when accepted; 0 when
    rejected}, the number accepted, and whether there was anything. Another kind or seed is an
    error."""
    done, seen, n_kept = {}, set(), 0
    for path, accepted in ((p["raw"], True), (p["rejected"], False)):
        kinds, index, tokens, offset = read_heads(path, repair=not s.dry_run)
        seen |= kinds
        if accepted and s.n_tokens and (tokens < 0).any():   # records without their count
            reader = LineReader(path)
            for j in np.flatnonzero(tokens < 0):
                tokens[j] = count_tokens(record_of((j, reader(offset[j])))["text"])
            reader.close()
        n_kept += len(index) if accepted else 0
        for i, t in zip(index.tolist(), tokens.tolist()):
            done[i] = (t if s.n_tokens else 1) if accepted else 0
    bad = next(((k, seed) for k, seed in seen if k != s.kind or seed != s.seed), None)
    if bad:
        raise UserError(f"{p['raw']} holds {bad[0]} records of seed {bad[1]}; resume with the same "
                        "kind and --seed, or write to another --out")
    return done, n_kept, bool(seen)


def finalize(s, p, goal, run_stats, log):
    """Raw records -> the smallest prefix of indices reaching the goal, in index order ->
    deduplicated -> decontaminated -> the final file and its report. Holds per record only its
    offset and its MinHash signature."""
    _, index, tokens, offset = read_heads(p["raw"])
    order = np.argsort(index, kind="stable")
    value = tokens[order] if s.n_tokens else np.ones(len(order), dtype=np.int64)
    n = min(len(order), int(np.searchsorted(np.cumsum(value), goal)) + 1)   # first to reach it
    offsets = offset[order[:n]]
    rejected = Counter()
    for _, _, line in jsonl_lines(p["rejected"], tail="repair"):
        m = re.search(rb'"reason": "(\w+)"', line)
        rejected[m.group(1).decode() if m else "?"] += 1
    by_tokens = bool(s.n_tokens)
    stats = {**run_stats, "kept": len(order),
             "kept_tokens": int(tokens.sum()) if by_tokens else None, "selected": n,
             "selected_tokens": int(value[:n].sum()) if by_tokens else None,
             "rejected": dict(rejected)}
    keep, dup = dedup_lines(p["raw"], offsets, s.near_threshold, s.workers)
    print(f"dedup: {dup['exact']} exact and {dup['near']} near duplicates removed", file=log)
    bench = load_benchmarks(s.against) if s.against else None
    decon, div = decontaminate_lines(p["raw"], offsets[keep], bench, s.tau, s.workers, p["final"],
                                     measure=Diversity)
    for rep in decon or ():
        print(summary(rep), file=log)
    report = {"generation": stats, "dedup": dup, "decontamination": combined(decon),
              "diversity": div}
    atomic_write(p["report"], json.dumps(report, indent=1))
    print("diversity: " + ", ".join(f"{k} {v}" for k, v in div.items()), file=log)
    print(f"wrote {div['records']} records to {p['final']} (report: {p['report']})", file=log)
    return report


class Diversity:
    """Distinct constraint values, function names and word n-gram ratios (distinct / total),
    mergeable, so that workers can count their share. N-grams are counted as hashes in a
    dedup.DistinctCount sketch: exact up to 65,536 distinct ones, then estimated (relative error
    ~0.4 %)."""
    KEYS = (("topic", "topics"), ("subtopic", "subtopics"), ("audience", "audiences"),
            ("style", "styles"), ("difficulty", "difficulties"),
            ("function_name", "function_names"))

    def __init__(self):
        self.records = 0
        self.values = {plural: set() for _, plural in self.KEYS}
        self.names = set()
        self.grams = {n: DistinctCount() for n in (1, 2, 4)}

    def add(self, records):
        self.records += len(records)
        for r in records:
            c = r.get("constraints") or {}
            for key, plural in self.KEYS:
                if key in c:
                    self.values[plural].add(c[key])
            if "entry_point" in r:
                self.names.add(r["entry_point"])
        if records:
            wh, n_words = word_hashes([r["text"] for r in records])
            for n, count in self.grams.items():
                count.add(ngram_hashes(wh, n_words, n))
        return self

    def merge(self, other):
        self.records += other.records
        for k, v in other.values.items():
            self.values[k] |= v
        self.names |= other.names
        for n, count in self.grams.items():
            count.merge(other.grams[n])
        return self

    def summary(self):
        out = {"records": self.records}
        out.update({f"distinct_{plural}": len(v) for plural, v in self.values.items() if v})
        if self.names:
            out["distinct_function_names_in_code"] = len(self.names)
        for n, count in self.grams.items():
            ratio = count.distinct() / count.total if count.total else 0.0
            out[f"distinct_{n}gram_ratio"] = round(ratio, 4)
        return out


def diversity(records):
    return Diversity().add(list(records)).summary()


# -----------------------------------------------------------------------------
# 4. The command line: `python synth.py COMMAND [ARG] --key=value ...` (COMMAND --help: its keys)

KINDS = ("textbook", "exercises")
COMMANDS = {
    "textbook": "generate textbook sections (resumable)",
    "exercises": "generate exercises (resumable)",
    "preview": "preview [KIND]: print the prompts a seed draws (no server needed)",
    "report": "report INPUT: how diverse a JSONL file is (distinct constraint values, function "
              "names, word n-grams)",
}
# what earlier versions had here: one line naming what replaced it
MOVED = {"dedup": "python dedup.py INPUT", "decontaminate": "python decontaminate.py INPUT"}


def main(argv):
    if argv and argv[0] in MOVED:
        raise UserError(f"`synth.py {argv[0]}` is now `{MOVED[argv[0]]}` (the same keys)")
    cmd, rest = configurator.pick_command(argv, COMMANDS, __doc__)
    if cmd in KINDS:
        generate_command(cmd, rest)
    else:
        {"preview": preview_command, "report": report_command}[cmd](rest)


def generate_options(kind):
    """The keys of `synth.py textbook|exercises`: Settings' fields, as the command line has them."""
    options = {
        "out": (None, "the final JSONL (required); X.raw.jsonl, X.rejected.jsonl and X.report.json "
                "go beside it", str),
        "n_samples": (None, "the target: accepted records (this or --n_tokens)", int),
        "n_tokens": (None, "the target: tokens of accepted text, phi-1's tokenizer (this or "
                     "--n_samples)", int),
        "seed": (0, "of the constraint draws and the record ids: a run is reproducible from it"),
        "base_url": (os.environ.get("OPENAI_BASE_URL", BASE_URL), "an OpenAI-compatible server "
                     "(default: $OPENAI_BASE_URL, else serve_llm.sh's llama.cpp server)"),
        "model": (MODEL, "the model's name on the server"),
        "concurrency": (CONCURRENCY, "requests in flight"),
        "temperature": (TEMPERATURE, "sampling temperature"),
        "max_tokens": (MAX_TOKENS[kind], "completion tokens per request, at most"),
        "timeout": (60.0, "seconds per request"),
        "max_retries": (6, "retries of a request (429, 5xx, timeouts) before it counts as failed"),
        "give_up_after": (GIVE_UP_AFTER, "stop after this many rejected outputs in a row"),
        "verify": (False, "True: ask for asserts and run them in the sandbox; an exercise that "
                   "fails them is rejected"),
        "decontaminate": (True, "False: skip decontamination (deduplication still runs)"),
        "against": AGAINST,
        "tau": TAUS,
        "workers": (None, "processes of the final pass (default: all cores)", int),
        "dry_run": (False, "True: print the plan and its cost, send nothing, write nothing"),
    }
    if kind == "textbook":
        del options["verify"]
    return options


def generate_command(kind, argv):
    a = configurator.parse(argv, generate_options(kind), f"synth.py {kind}: {COMMANDS[kind]}")
    if not a.out:
        raise UserError("--out=PATH is required: where the final JSONL goes")
    keys = {k: v for k, v in vars(a).items() if k not in ("args", "against", "decontaminate",
                                                          "tau")}
    against = parse_against(a.against) if a.decontaminate else ()
    generate(Settings(kind, **keys, against=against, tau=parse_taus(a.tau)))


PREVIEW_OPTIONS = {"seed": (0, "the run's seed"), "n": (3, "how many prompts (of each kind)"),
                   "start": (0, "the index of the first one"),
                   "verify": (False, "True: the exercise prompts of a --verify=True run")}


def preview_command(argv):
    a = configurator.parse(argv, PREVIEW_OPTIONS, f"synth.py preview: {COMMANDS['preview']}",
                           args="[KIND]: textbook or exercises (default: both)")
    if len(a.args) > 1 or not set(a.args) <= set(KINDS):
        raise UserError(f"expected a KIND (textbook or exercises; none: both), got "
                        f"{' '.join(a.args)}")
    for kind in a.args or KINDS:
        for i in range(a.start, a.start + a.n):
            c = draw_constraints(kind, a.seed, i)
            print(f"=== {record_id(kind, a.seed, i)} {json.dumps(c)}")
            for m in build_messages(kind, c, a.verify):
                print(f"[{m['role']}] {m['content']}")


def report_command(argv):
    """The diversity section of a generation's X.report.json, for any JSONL file: what §2.2's
    constrained prompts are for. One pass over the lines on all cores: decontaminate.py's, with no
    benchmark to compare against, measuring what it reads."""
    a = configurator.parse(argv, {"workers": WORKERS}, f"synth.py report: {COMMANDS['report']}",
                           args="INPUT (a JSONL file of records with a `text` field)")
    path, offsets = input_jsonl(a.args)
    _, div = decontaminate_lines(path, offsets, None, (TAU,), a.workers or default_workers(),
                                 measure=Diversity)
    print(json.dumps(div, indent=1))


# -----------------------------------------------------------------------------
# 5. The vocabularies the constraints are drawn from. The paper names what it constrains (topics and
# audiences of textbooks, function names of exercises) but not the values; these are ours.

# One topic per line, "Topic: subtopic; subtopic; ...", continued on indented lines. Python first,
# then computer science.
TAXONOMY_TEXT = """
Variables and assignment: names and binding; multiple assignment; augmented assignment;
    swapping values
Integers and floats: integer division and modulo; floating point rounding; big integers;
    numeric conversions
Booleans and logic: truthiness; short-circuit evaluation; comparison chaining; De Morgan's laws
Strings: indexing and slicing; string methods; immutability; string formatting with f-strings
String processing: tokenizing text; counting characters; palindromes; case conversion
Lists: appending and extending; slicing; list mutation; nested lists
List comprehensions: filtering; nested comprehensions; conditional expressions;
    comprehension vs loop
Tuples: packing and unpacking; immutability; named tuples; tuples as dictionary keys
Dictionaries: lookup and insertion; iteration over items; default values; dictionary comprehensions
Sets: membership testing; set algebra; removing duplicates; frozensets
Conditionals: if/elif/else; nested conditions; guard clauses; match statements
For loops: iterating over sequences; range; enumerate; zip
While loops: loop conditions; sentinel values; break and continue; infinite loops and termination
Functions: parameters and return values; default arguments; keyword arguments; docstrings
Variable scope: local and global scope; closures; nonlocal; name shadowing
Recursion: base cases; recursive data structures; recursion depth; converting recursion to iteration
Higher-order functions: map and filter; functions as arguments; returning functions; reduce
Lambda expressions: anonymous functions; sort keys; limitations of lambdas; lambdas in callbacks
Iterators: the iterator protocol; iter and next; exhausting iterators; custom iterators
Generators: yield; generator expressions; lazy evaluation; infinite generators
Decorators: wrapping functions; functools.wraps; decorators with arguments;
    timing and caching decorators
Context managers: the with statement; writing context managers; contextlib; resource cleanup
Exceptions: try/except; raising exceptions; custom exception classes; finally and else clauses
Classes and objects: attributes and methods; __init__; instances vs classes; class attributes
Inheritance: subclassing; method overriding; super(); multiple inheritance and MRO
Special methods: __repr__ and __str__; operator overloading; __eq__ and __hash__;
    __len__ and __getitem__
Properties and encapsulation: @property; setters and validation; private naming conventions;
    computed attributes
Dataclasses: field defaults; frozen dataclasses; ordering; post-init processing
Enums: defining enumerations; iterating over members; auto values; flags
Type hints: annotating functions; generics; Optional and Union; type checking with mypy
Modules and packages: imports; the module search path; __name__ == "__main__"; package layout
File input and output: reading text files; writing files; file modes; pathlib
CSV and JSON: reading CSV; writing JSON; serializing objects; parsing nested JSON
Regular expressions: patterns and groups; search vs match; substitution; greedy and lazy quantifiers
Dates and times: datetime arithmetic; parsing dates; time zones; formatting timestamps
The collections module: Counter; defaultdict; deque; OrderedDict
The itertools module: combinations and permutations; product; groupby; chain and islice
The functools module: lru_cache; partial; reduce; total_ordering
The math module: factorials and combinatorics; gcd and lcm; trigonometry; floating point helpers
Random numbers: seeding; sampling; shuffling; simulations
String formatting: format specifications; alignment and padding; number formatting; templates
Unit testing: assert statements; unittest; pytest fixtures; testing edge cases
Debugging: reading tracebacks; print debugging; using pdb; rubber duck debugging
Code style: PEP 8; naming; refactoring long functions; readability
Performance in Python: timing code; choosing data structures; avoiding quadratic loops; profiling
Memory and references: mutability and aliasing; copying vs deep copying; garbage collection;
    identity vs equality
Command-line programs: argparse; reading standard input; exit codes; environment variables
Concurrency in Python: threads; processes; the GIL; concurrent.futures
Asynchronous programming: async and await; event loops; asyncio tasks; async iteration
Functional programming: pure functions; immutability; composition; avoiding side effects
Object-oriented design: composition over inheritance; interfaces and protocols; SOLID principles;
    design patterns
NumPy basics: arrays and shapes; vectorized operations; broadcasting; indexing and masks
Data analysis: cleaning data; aggregation; grouping; summary statistics
Text processing: word frequencies; n-grams; text normalization; simple tokenizers
Big-O notation: asymptotic growth; best, average and worst case; amortized analysis;
    comparing algorithms
Arrays: static vs dynamic arrays; two-pointer technique; prefix sums; in-place operations
Linked lists: singly linked lists; reversing a list; cycle detection; merging sorted lists
Stacks: push and pop; balanced parentheses; evaluating expressions; monotonic stacks
Queues: FIFO order; circular buffers; double-ended queues; queue simulations
Hash tables: hash functions; collisions; load factor; counting with hash maps
Binary trees: traversals; tree height; building trees; lowest common ancestor
Binary search trees: insertion and search; deletion; validating a BST; balanced trees
Heaps and priority queues: heap property; heapq; top-k elements; merging sorted streams
Tries: prefix search; autocomplete; word dictionaries; counting prefixes
Graphs: adjacency lists; adjacency matrices; directed and undirected graphs; weighted graphs
Graph traversal: breadth-first search; depth-first search; connected components; cycle detection
Shortest paths: Dijkstra's algorithm; Bellman-Ford; shortest paths in grids; Floyd-Warshall
Minimum spanning trees: Kruskal's algorithm; Prim's algorithm; union-find; applications of MSTs
Topological sorting: dependency resolution; Kahn's algorithm; DFS ordering; course scheduling
Union-find: path compression; union by rank; counting components; dynamic connectivity
Sorting algorithms: insertion sort; merge sort; quicksort; stability of sorts
Searching: linear search; binary search; searching rotated arrays; binary search on the answer
Divide and conquer: splitting problems; merging results; recurrences; the master theorem
Dynamic programming: memoization; tabulation; knapsack problems; longest common subsequence
Greedy algorithms: interval scheduling; coin change; proving greedy choices; Huffman coding
Backtracking: permutations; subsets; N-queens; constraint pruning
Sliding window: fixed-size windows; variable-size windows; longest substring problems; window counts
Bit manipulation: bitwise operators; masks; counting bits; powers of two
Number theory: primes and sieves; modular arithmetic; greatest common divisor; fast exponentiation
Combinatorics: counting principles; binomial coefficients; generating combinations;
    Pascal's triangle
Probability: random variables; expected value; Monte Carlo estimation; conditional probability
Linear algebra: vectors; matrix multiplication; transposes; solving linear systems
Geometry: points and distances; polygon area; line intersection; convex hulls
String algorithms: pattern matching; KMP; edit distance; anagram detection
Parsing: tokenizers; recursive descent parsing; expression evaluation; parsing configuration files
Matrices and grids: grid traversal; rotating matrices; spiral order; flood fill
Simulation: cellular automata; game of life; queue simulation; physics steps
Numerical methods: Newton's method; numerical integration; bisection; floating point error
Statistics: mean, median and mode; variance; correlation; histograms
Recursion and induction: proof by induction; recursive definitions; structural recursion; invariants
Computability and logic: boolean algebra; truth tables; finite state machines; regular languages
Compilers and interpreters: lexing; abstract syntax trees; evaluation; bytecode
Operating systems: processes and threads; scheduling; memory management; file systems
Computer networks: the TCP/IP model; HTTP; sockets; DNS
Databases: relational tables; SQL queries; indexes; transactions
Data encoding: binary and hexadecimal; character encodings; base64; run-length encoding
Cryptography basics: hashing; Caesar and Vigenere ciphers; checksums; public-key ideas
Compression: run-length encoding; Huffman codes; dictionary coding; lossy vs lossless
Software testing: unit tests; test-driven development; property-based testing; mocking
Version control: commits; branches; merging; resolving conflicts
Software design: modularity; abstraction; interfaces; separation of concerns
Caching: memoization; LRU caches; cache invalidation; time-to-live
Games and puzzles: tic-tac-toe; sudoku solving; maze generation; word games
Finance calculations: simple and compound interest; loan amortization; currency rounding; budgeting
Scientific computing: units and measurements; vector math; simulations; data fitting
Machine learning basics: features and labels; linear regression; k-nearest neighbours;
    train/test splits
Inventory and records: managing collections of records; filtering records; sorting by keys; reports
Calendars and scheduling: leap years; day of the week; meeting overlaps; time slots
Image basics: pixels as grids; grayscale conversion; image rotation; blurring kernels
Web data: URLs and query strings; HTML escaping; parsing simple markup; rate limiting
"""
TAXONOMY = {t.strip(): [s.strip() for s in subs.split(";")] for t, subs in (
    line.split(":", 1) for line in TAXONOMY_TEXT.strip().replace("\n    ", " ").splitlines())}
AUDIENCES = [
    "a high-school student who has never programmed", "a first-year computer science undergraduate",
    "a self-taught beginner learning Python in the evenings",
    "a mathematics student who knows little programming",
    "a data scientist who wants to write better code",
    "an experienced Java programmer learning Python", "a student preparing for coding interviews",
    "a physics student who programs simulations", "a competitive programmer",
    "a teacher preparing a lesson", "a junior software engineer in their first job",
    "a curious twelve-year-old",
]
STYLES = [
    "concise and rigorous", "step by step, with a worked example after each idea",
    "Socratic: pose questions, then answer them", "building one small program gradually",
    "comparing a naive solution with an improved one",
    "showing common mistakes and how to fix them", "starting from a real-world analogy",
    "precise, with the reasoning behind every line of code",
]
SECTION_WORDS = [300, 500, 800]
# Function names are verb[_qualifier]_noun: the exercise data's main source of diversity (§2.2).
VERBS = ("count find merge sort filter parse validate compute group flatten encode "
         "decode rotate reverse normalize split join remove replace extract convert sum "
         "average detect check generate build simulate schedule rank shuffle partition "
         "compress expand format match score evaluate transform collect map select "
         "search trace locate measure balance align interleave dedupe invert").split()
QUALIFIERS = ("longest shortest unique duplicate nested sorted max min even odd "
              "consecutive missing common first last weighted total valid distinct "
              "adjacent overlapping").split()
NOUNS = ("vowels intervals words digits primes matrix path anagrams palindromes brackets "
         "tokens records scores dates timestamps coordinates points polygons edges nodes "
         "graph tree leaves subarrays substrings pairs triplets fractions coins prices "
         "orders inventory grades students emails urls ips passwords sentences columns "
         "rows cells islands segments ranges events meetings tasks files lines bits "
         "bytes runs streaks temperatures votes items keys values frequencies letters "
         "numbers sequence histogram").split()
DIFFICULTIES = ["easy", "medium", "hard"]
# No random, time or os: a verified solution must give the same answer every time it runs.
STDLIB_MODULES = [
    "math", "itertools", "collections", "functools", "heapq", "bisect", "string", "re",
    "statistics", "fractions", "decimal", "datetime", "operator", "typing",
]


if __name__ == "__main__":
    configurator.cli(main)
