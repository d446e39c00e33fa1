"""Synthetic textbooks and code exercises with controlled diversity, verified, deduplicated and decontaminated.

phi-1 (§2.2) trained on two data sets written by GPT-3.5: "synthetic textbooks" (under 1 B tokens of prose with
code snippets, made diverse by constraining the topic and the target audience of each prompt) and "CodeExercises"
(about 180 M tokens; a function signature with a docstring, then its solution; diverse mostly through constrained
function names). The paper notes GPT-3.5's high error rate and decontaminates the exercises against HumanEval (§5)
with 13-gram overlap and an AST match rate tau. This file makes both data sets over any OpenAI-compatible server
(the same LLMClient as filter.py), checks them, and writes JSONL records with a `text` field for train.py.

    python synth.py textbook  --out=data/textbooks.jsonl --n_samples=1000 --base_url=http://127.0.0.1:8080/v1
    python synth.py exercises --out=data/exercises.jsonl --n_tokens=2000000 --verify --seed=1
    python synth.py preview exercises --seed=0 --n=3            # print the prompts a seed draws, no server needed
    python synth.py dedup data/exercises.jsonl                  # exact + near-duplicate removal
    python synth.py decontaminate data/exercises.jsonl --against humaneval --against ../shared/data/mbpp.jsonl
    python synth.py report data/exercises.jsonl                 # diversity report

Generation files, for --out=X.jsonl: X.raw.jsonl (append-only, one JSON line per accepted record, flushed per
record; a killed run resumes from it), X.rejected.jsonl (dropped outputs and why), X.jsonl (the final data:
raw records sorted by index, deduplicated, decontaminated) and X.report.json (counts, removals, diversity).
Every record has a deterministic id from (kind, seed, index) and stores the constraint values its prompt was
drawn with, so a run is reproducible from its seed and its diversity measurable.
"""
import argparse
import ast
import difflib
import hashlib
import json
import math
import os
import random
import re
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from filter import LLMClient, LLMError, append_jsonl, read_jsonl_resumable

# ----------------------------------------------------------------------------- defaults (CLI flags override)
BASE_URL = "http://127.0.0.1:8080/v1"
MODEL = "gpt-3.5-turbo"
CONCURRENCY = 8
TEMPERATURE = 1.0            # the paper is silent; sampling at 1.0 adds diversity on top of the drawn constraints
MAX_TOKENS = {"textbook": 1024, "exercises": 512}
NEAR_DUP_JACCARD = 0.8       # word 5-gram shingles; the paper is silent on deduplicating its synthetic data
TAU = 0.95                   # AST match rate threshold (§5 reports 0.95 / 0.9 / 0.85 / 0.8)
NGRAM = 13                   # §5: 13-gram overlap with the benchmark
GIVE_UP_AFTER = 200          # stop once this many outputs in a row were rejected: the model can't follow the prompt

# ----------------------------------------------------------------------------- the constraint vocabularies
# One line per topic: "Topic: subtopic; subtopic; ...". Python first, then computer science.
TAXONOMY_TEXT = """
Variables and assignment: names and binding; multiple assignment; augmented assignment; swapping values
Integers and floats: integer division and modulo; floating point rounding; big integers; numeric conversions
Booleans and logic: truthiness; short-circuit evaluation; comparison chaining; De Morgan's laws
Strings: indexing and slicing; string methods; immutability; string formatting with f-strings
String processing: tokenizing text; counting characters; palindromes; case conversion
Lists: appending and extending; slicing; list mutation; nested lists
List comprehensions: filtering; nested comprehensions; conditional expressions; comprehension vs loop
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
Decorators: wrapping functions; functools.wraps; decorators with arguments; timing and caching decorators
Context managers: the with statement; writing context managers; contextlib; resource cleanup
Exceptions: try/except; raising exceptions; custom exception classes; finally and else clauses
Classes and objects: attributes and methods; __init__; instances vs classes; class attributes
Inheritance: subclassing; method overriding; super(); multiple inheritance and MRO
Special methods: __repr__ and __str__; operator overloading; __eq__ and __hash__; __len__ and __getitem__
Properties and encapsulation: @property; setters and validation; private naming conventions; computed attributes
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
Memory and references: mutability and aliasing; copying vs deep copying; garbage collection; identity vs equality
Command-line programs: argparse; reading standard input; exit codes; environment variables
Concurrency in Python: threads; processes; the GIL; concurrent.futures
Asynchronous programming: async and await; event loops; asyncio tasks; async iteration
Functional programming: pure functions; immutability; composition; avoiding side effects
Object-oriented design: composition over inheritance; interfaces and protocols; SOLID principles; design patterns
NumPy basics: arrays and shapes; vectorized operations; broadcasting; indexing and masks
Data analysis: cleaning data; aggregation; grouping; summary statistics
Text processing: word frequencies; n-grams; text normalization; simple tokenizers
Big-O notation: asymptotic growth; best, average and worst case; amortized analysis; comparing algorithms
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
Combinatorics: counting principles; binomial coefficients; generating combinations; Pascal's triangle
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
Machine learning basics: features and labels; linear regression; k-nearest neighbours; train/test splits
Inventory and records: managing collections of records; filtering records; sorting by keys; reports
Calendars and scheduling: leap years; day of the week; meeting overlaps; time slots
Image basics: pixels as grids; grayscale conversion; image rotation; blurring kernels
Web data: URLs and query strings; HTML escaping; parsing simple markup; rate limiting
"""
TAXONOMY = {t.strip(): [s.strip() for s in subs.split(";")]
            for t, subs in (line.split(":", 1) for line in TAXONOMY_TEXT.strip().splitlines())}
AUDIENCES = [
    "a high-school student who has never programmed", "a first-year computer science undergraduate",
    "a self-taught beginner learning Python in the evenings", "a mathematics student who knows little programming",
    "a data scientist who wants to write better code", "an experienced Java programmer learning Python",
    "a student preparing for coding interviews", "a physics student who programs simulations",
    "a competitive programmer", "a teacher preparing a lesson", "a junior software engineer in their first job",
    "a curious twelve-year-old",
]
STYLES = [
    "concise and rigorous", "step by step, with a worked example after each idea",
    "Socratic: pose questions, then answer them", "building one small program gradually",
    "comparing a naive solution with an improved one", "showing common mistakes and how to fix them",
    "starting from a real-world analogy", "precise, with the reasoning behind every line of code",
]
SECTION_WORDS = [300, 500, 800]
# Function names are verb[_qualifier]_noun: the exercise data's main source of diversity (§2.2).
VERBS = ("count find merge sort filter parse validate compute group flatten encode decode rotate reverse normalize "
         "split join remove replace extract convert sum average detect check generate build simulate schedule "
         "rank shuffle partition compress expand format match score evaluate transform collect map select "
         "search trace locate measure balance align interleave dedupe invert")
QUALIFIERS = ("longest shortest unique duplicate nested sorted max min even odd consecutive missing common "
              "first last weighted total valid distinct adjacent overlapping").split()
NOUNS = ("vowels intervals words digits primes matrix path anagrams palindromes brackets tokens records scores "
         "dates timestamps coordinates points polygons edges nodes graph tree leaves subarrays substrings pairs "
         "triplets fractions coins prices orders inventory grades students emails urls ips passwords sentences "
         "columns rows cells islands segments ranges events meetings tasks files lines bits bytes runs streaks "
         "temperatures votes items keys values frequencies letters numbers sequence histogram").split()
VERBS = VERBS.split()
DIFFICULTIES = ["easy", "medium", "hard"]
# No random/time/os: a verified solution must give the same answer every time it runs in the sandbox.
STDLIB_MODULES = ["math", "itertools", "collections", "functools", "heapq", "bisect", "string", "re",
                  "statistics", "fractions", "decimal", "datetime", "operator", "typing"]


# ----------------------------------------------------------------------------- seeded prompt construction
def _rng(kind, seed, index):
    # random.Random seeded with a str hashes it with sha512: the same draws on every machine and Python run
    return random.Random(f"{kind}:{seed}:{index}")


def record_id(kind, seed, index):
    return f"{kind}-s{seed}-{index:09d}"


def draw_constraints(kind, seed, index):
    """The constraint values of prompt number `index` of a run with `seed` (a pure function of the three)."""
    r = _rng(kind, seed, index)
    topic = r.choice(sorted(TAXONOMY))
    c = {"topic": topic, "subtopic": r.choice(TAXONOMY[topic])}
    if kind == "textbook":
        c.update(audience=r.choice(AUDIENCES), style=r.choice(STYLES), words=r.choice(SECTION_WORDS))
    else:
        qual = [r.choice(QUALIFIERS)] if r.random() < 0.4 else []
        c.update(function_name="_".join([r.choice(VERBS)] + qual + [r.choice(NOUNS)]),
                 difficulty=r.choice(DIFFICULTIES), modules=sorted(r.sample(STDLIB_MODULES, r.choice([0, 0, 1, 2]))))
    return c


def build_messages(kind, c, verify=False):
    """Chat messages for constraint values `c` (the paper does not publish its prompts; these are ours)."""
    if kind == "textbook":
        system = "You are an expert computer science teacher who writes clear, high-quality textbooks."
        user = (f'Write a section of a Python textbook on "{c["subtopic"]}", part of the chapter "{c["topic"]}". '
                f"The reader is {c['audience']}. Style: {c['style']}. "
                "Alternate short explanations in natural language with small, self-contained Python code snippets "
                "in ```python blocks, and explain the reasoning behind each snippet: teach how to think about the "
                f"problem, not only the syntax. About {c['words']} words. Write only the section itself.")
    else:
        modules = (f"The solution may import only these standard-library modules: {', '.join(c['modules'])}."
                   if c["modules"] else "The solution must not import anything.")
        tests = (" After the function, at the top level of the same block, write 3 assert statements that call "
                 f"`{c['function_name']}` and check its results." if verify else "")
        system = "You are an expert Python teacher who writes exercises with correct reference solutions."
        article = "an" if c["difficulty"][0] in "aeiou" else "a"
        user = (f"Write {article} {c['difficulty']} Python exercise on {c['subtopic']} ({c['topic']}), or as close "
                f"to it as the function's name allows. It is one function named `{c['function_name']}` with type "
                "hints, whose docstring states the task precisely with an example, followed by a correct and "
                "readable solution. "
                f"{modules}{tests} Reply with a single ```python code block and nothing else.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------- checking outputs
_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def code_blocks(text):
    return [b for b in _FENCE.findall(text) if b.strip()]


def parse_exercise(content):
    """Split a model reply into an exercise: imports + one function with a docstring and a body (+ asserts).

    Returns (fields, None) or (None, reason). Top-level statements other than imports, the function and asserts
    (a stray print, a __main__ block) are dropped; the asserts become the exercise's tests."""
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
    if not body or all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
                       for s in body):
        return None, "no_body"
    imports = [ast.get_source_segment(src, n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    # prompt = the signature with its docstring, completion = the solution (for prompt/answer finetuning)
    lines = src.splitlines()
    start = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    prompt = ("\n".join(imports) + "\n\n\n" if imports else "") + "\n".join(lines[start - 1:fn.body[0].end_lineno])
    completion = "\n".join(lines[fn.body[0].end_lineno:fn.end_lineno])
    tests = [ast.get_source_segment(src, n) for n in tree.body if isinstance(n, ast.Assert)]
    return {"text": prompt + "\n" + completion + "\n", "prompt": prompt + "\n", "completion": completion + "\n",
            "entry_point": fn.name, "tests": tests}, None


def verify_programs(exercises, timeout=3.0):
    """Run each exercise's asserts against its solution in eval.py's sandbox: "passed", "failed: ...", ..."""
    from eval import run_programs   # lazy: only --verify needs the sandbox
    # tests apart from the code: eval.py runs them with pristine builtins, so the solution cannot rebind assert's
    # helpers; one worker because generation already runs `concurrency` of these at once
    res = run_programs([ex["text"] for ex in exercises], timeout=timeout, workers=1,
                       tests=["\n".join(ex["tests"]) + "\n" for ex in exercises])
    return [r["result"] for r in res]


# ----------------------------------------------------------------------------- generation
def paths_for(out):
    out = Path(out)
    return {"raw": out.with_suffix(".raw.jsonl"), "rejected": out.with_suffix(".rejected.jsonl"),
            "final": out, "report": out.with_suffix(".report.json")}


def _fmt_time(s):
    if s is None:
        return "?"
    s = int(max(s, 0))
    return f"{s // 3600}h{s // 60 % 60:02d}m{s % 60:02d}s"


def generate(kind, out, n_samples=None, n_tokens=None, seed=0, base_url=BASE_URL, model=MODEL,
             concurrency=CONCURRENCY, temperature=TEMPERATURE, max_tokens=None, verify=False, timeout=60.0,
             max_retries=6, give_up_after=GIVE_UP_AFTER, against=("humaneval",), tau=TAU,
             near_threshold=NEAR_DUP_JACCARD, log=sys.stderr):
    """Generate until the raw file holds n_samples accepted records (or n_tokens tokens of `text`), then write
    the final deduplicated, decontaminated data. Resumable: ids already in the raw or rejected file are skipped."""
    assert (n_samples is None) != (n_tokens is None), "give exactly one of n_samples / n_tokens"
    max_tokens = max_tokens or MAX_TOKENS[kind]
    p = paths_for(out)
    p["raw"].parent.mkdir(parents=True, exist_ok=True)
    try:
        raw, rejected = read_jsonl_resumable(p["raw"]), read_jsonl_resumable(p["rejected"])
    except ValueError as e:
        raise SystemExit(f"error: cannot resume: {e}")
    for r in raw + rejected:
        if r.get("kind") != kind or r.get("seed") != seed:
            raise SystemExit(f"error: {p['raw']} holds {r.get('kind')} records of seed {r.get('seed')}; "
                             f"resume with the same kind and --seed, or write to another --out")
    done = {r["index"] for r in raw} | {r["index"] for r in rejected}
    count_tokens = _token_counter() if n_tokens else (lambda text: 0)
    kept, kept_tokens = len(raw), sum(r["tokens"] if "tokens" in r else count_tokens(r["text"]) for r in raw)
    reasons = Counter(r["reason"] for r in rejected)
    client = LLMClient(base_url, model, concurrency=concurrency, timeout=timeout, max_retries=max_retries)
    goal = n_samples if n_samples else n_tokens
    unit = "samples" if n_samples else "tokens"
    progress = lambda: kept if n_samples else kept_tokens  # noqa: E731
    start_progress, t0, last_print = progress(), time.time(), 0.0
    failed, rejected_in_a_row, next_index, last_error = 0, 0, 0, None
    print(f"[{kind}] seed {seed}: resuming with {kept} records ({len(rejected)} rejected) from {p['raw']}"
          if done else f"[{kind}] seed {seed}: new run -> {p['raw']}", file=log)

    def work(index):
        c = draw_constraints(kind, seed, index)
        # a per-request seed makes a run reproducible on servers that honour it (llama.cpp, OpenAI)
        resp = client.chat(build_messages(kind, c, verify), temperature=temperature, max_tokens=max_tokens,
                           seed=zlib.crc32(record_id(kind, seed, index).encode()))
        try:
            choice = resp["choices"][0]
            content = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as e:
            raise LLMError(f"malformed response: {e!r}")
        base = {"id": record_id(kind, seed, index), "kind": kind, "seed": seed, "index": index,
                "constraints": c, "model": model, "finish_reason": choice.get("finish_reason"),
                "usage": resp.get("usage")}
        if kind == "textbook":
            if len(content.split()) < 20:   # an empty or one-line reply is no textbook section
                return {**base, "reason": "too_short", "raw": content}
            return {**base, "text": content.strip() + "\n"}
        ex, reason = parse_exercise(content)
        if reason:
            return {**base, "reason": reason, "raw": content}
        if verify:
            if not ex["tests"]:
                return {**base, "reason": "no_tests", "raw": content}
            result = verify_programs([ex])[0]
            if result != "passed":
                return {**base, "reason": "failed_tests", "result": result, "raw": content}
        return {**base, **ex, "verified": verify}

    with open(p["raw"], "a", encoding="utf-8") as fraw, open(p["rejected"], "a", encoding="utf-8") as frej:
        while progress() < goal:
            # rounds of the lowest indices not yet done: holes left by a killed run or failed calls come first,
            # so an interrupted and an uninterrupted run end with the same records
            if n_samples:
                need = goal - kept
            else:
                per = kept_tokens / kept if kept else max_tokens / 2
                need = max(1, min(4 * concurrency, math.ceil((goal - kept_tokens) / max(per, 1))))
            batch = []
            while len(batch) < need:
                if next_index not in done:
                    batch.append(next_index)
                next_index += 1
            next_index = batch[0]   # indices that fail are retried next round
            got = 0
            for index, res in client.map(work, batch):
                if isinstance(res, LLMError):
                    failed += 1
                    last_error = res
                    continue
                if isinstance(res, Exception):
                    raise res
                got += 1
                done.add(index)
                if "reason" in res:
                    append_jsonl(frej, res)
                    reasons[res["reason"]] += 1
                    rejected_in_a_row += 1
                else:
                    if n_tokens:   # stored, so that resuming a billion-token run need not re-tokenize it
                        res["tokens"] = count_tokens(res["text"])
                        kept_tokens += res["tokens"]
                    append_jsonl(fraw, res)
                    kept += 1
                    rejected_in_a_row = 0
                now = time.time()
                if now - last_print > 2.0 or progress() >= goal:
                    last_print = now
                    rate = (progress() - start_progress) / max(now - t0, 1e-9)
                    eta = (goal - progress()) / rate if rate > 0 else None
                    u = client.usage
                    print(f"[{kind}] {progress()}/{goal} {unit} | kept {kept} rejected {sum(reasons.values())} "
                          f"failed calls {failed} retries {client.stats['retries']} | usage "
                          f"{u.get('prompt_tokens', 0)}+{u.get('completion_tokens', 0)} tokens | "
                          f"elapsed {_fmt_time(now - t0)} ETA {_fmt_time(eta)}", file=log, flush=True)
            if got == 0:
                raise SystemExit(f"error: every request of a round failed (run the same command again to resume); "
                                 f"last error: {last_error}")
            if rejected_in_a_row >= give_up_after:
                print(f"[{kind}] giving up: the last {rejected_in_a_row} outputs were all rejected "
                      f"({dict(reasons)})", file=log)
                break
    stats = {"kind": kind, "seed": seed, "kept": kept, "kept_tokens": kept_tokens if n_tokens else None,
             "rejected": dict(reasons), "failed_calls_retried": failed, "usage_this_run": dict(client.usage)}
    print(f"[{kind}] generated: kept {kept}, rejected {dict(reasons)}, failed calls (retried) {failed}, "
          f"usage this run {dict(client.usage)}", file=log)
    return finalize(p, stats, against=against, tau=tau, near_threshold=near_threshold, log=log)


def _token_counter():
    from model import get_tokenizer   # lazy: only token targets need the (torch-importing) model module
    tok = get_tokenizer()
    return lambda text: len(tok.encode(text))


def finalize(p, stats, against=("humaneval",), tau=TAU, near_threshold=NEAR_DUP_JACCARD, log=sys.stderr):
    """Raw records -> sorted by index, deduplicated, decontaminated -> the final file and its report."""
    records = sorted(read_jsonl_resumable(p["raw"]), key=lambda r: r["index"])
    records, dup = dedup(records, near_threshold)
    print(f"dedup: {dup['exact']} exact and {dup['near']} near duplicates removed", file=log)
    decon = None
    if against:
        records, decon = decontaminate(records, load_benchmarks(against), tau=tau)
        print(_decon_summary(decon), file=log)
    write_jsonl_atomic(p["final"], records)
    report = {"generation": stats, "dedup": dup, "decontamination": decon, "diversity": diversity(records)}
    p["report"].write_text(json.dumps(report, indent=1))
    print(_diversity_summary(report["diversity"]), file=log)
    print(f"wrote {len(records)} records to {p['final']} (report: {p['report']})", file=log)
    return report


def write_jsonl_atomic(path, records):
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- deduplication and diversity
_WORD = re.compile(r"\w+|[^\w\s]")


def words(text):
    return _WORD.findall(text)


def shingles(text, n=5):
    w = words(text)
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


_P = (1 << 61) - 1
_MH = np.random.default_rng(0).integers(1, 1 << 32, size=(2, 128), dtype=np.uint64)   # (a, b) of 128 hash functions


def minhash(sh):
    """128 MinHash values of a shingle set: min over shingles of (a*x + b) mod p, x = crc32 (a*x < 2**64)."""
    x = np.fromiter((zlib.crc32(s.encode()) for s in sh), dtype=np.uint64, count=len(sh))   # (S,)
    return ((_MH[0][:, None] * x[None, :] + _MH[1][:, None]) % _P).min(axis=1)             # (128,)


def dedup(records, threshold=NEAR_DUP_JACCARD, bands=32):
    """Drop exact duplicates (after whitespace normalisation), then near duplicates: records whose word 5-gram
    Jaccard similarity with an earlier kept record is >= threshold. MinHash LSH (32 bands of 4 rows) proposes
    candidates, the exact Jaccard decides. Keeps the first of each group, so the input order decides."""
    seen, kept, buckets, kept_sh = set(), [], {}, []
    removed = {"exact": 0, "near": 0, "pairs": []}
    for r in records:
        h = hashlib.sha256(" ".join(r["text"].split()).encode()).hexdigest()
        if h in seen:
            removed["exact"] += 1
            continue
        seen.add(h)
        sh = shingles(r["text"])
        sig = minhash(sh).reshape(bands, -1)   # (bands, rows)
        keys = [(b, sig[b].tobytes()) for b in range(bands)]
        cands = {j for k in keys for j in buckets.get(k, ())}
        match = next((j for j in sorted(cands) if len(sh & kept_sh[j]) / len(sh | kept_sh[j]) >= threshold), None)
        if match is not None:
            removed["near"] += 1
            removed["pairs"].append([r["id"], kept[match]["id"]])
            continue
        for k in keys:
            buckets.setdefault(k, []).append(len(kept))
        kept.append(r)
        kept_sh.append(sh)
    return kept, removed


def diversity(records):
    """Distinct constraint values and function names, and distinct word n-gram ratios (distinct / total)."""
    cons = [r.get("constraints", {}) for r in records]
    out = {"records": len(records)}
    for key, plural in (("topic", "topics"), ("subtopic", "subtopics"), ("audience", "audiences"),
                        ("style", "styles"), ("difficulty", "difficulties"), ("function_name", "function_names")):
        vals = [c[key] for c in cons if key in c]
        if vals:
            out[f"distinct_{plural}"] = len(set(vals))
    names = [r["entry_point"] for r in records if "entry_point" in r]
    if names:
        out["distinct_function_names_in_code"] = len(set(names))
    for n in (1, 2, 4):
        grams = Counter()
        for r in records:
            w = words(r["text"])
            grams.update(tuple(w[i:i + n]) for i in range(len(w) - n + 1))
        total = sum(grams.values())
        out[f"distinct_{n}gram_ratio"] = round(len(grams) / total, 4) if total else 0.0
    return out


def _diversity_summary(d):
    return "diversity: " + ", ".join(f"{k} {v}" for k, v in d.items())


# ----------------------------------------------------------------------------- decontamination (§5)
def load_benchmarks(against):
    """{task_id: prompt + canonical solution} for each --against: "humaneval" or a HumanEval/MBPP-format jsonl.
    MBPP counts whole (all 974 problems, not only its test split): leaking its train split into training data
    would inflate the scores on its test split just the same."""
    from eval import EvalError, load_problems   # lazy: eval.py is only needed to decontaminate and verify
    bench = {}
    for src in against:
        try:
            problems = load_problems(src, split="all")
        except EvalError as e:
            raise SystemExit(f"error: --against {src}: {e}")
        for tid, p in problems.items():
            key = tid if tid not in bench else f"{Path(src).name}:{tid}"
            bench[key] = p["prompt"] + p["canonical_solution"]
    return bench


def ngrams(text, n=NGRAM):
    # lower-cased words only: punctuation runs such as ") -> List[int]:" would make generic 13-grams
    w = re.findall(r"\w+", text.lower())
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


class _Normalise(ast.NodeTransformer):
    """Drops docstrings; names, comments and constant values never reach the node-type sequence anyway."""
    def _strip_doc(self, node):
        self.generic_visit(node)
        if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant) \
                and isinstance(node.body[0].value.value, str):
            node.body = node.body[1:] or [ast.Pass()]
        return node
    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip_doc


_TYPE_CHAR = {}


def ast_signature(fn):
    """A function as a string of node types in pre-order (one character per type, so difflib works on str)."""
    fn = _Normalise().visit(fn)
    out = []

    def walk(node):
        out.append(_TYPE_CHAR.setdefault(type(node).__name__, chr(0x4E00 + len(_TYPE_CHAR))))
        for child in ast.iter_child_nodes(node):
            walk(child)
    walk(fn)
    return "".join(out)


def function_signatures(text):
    """AST signatures of all functions in `text`: the whole text if it parses (an exercise), else those of its
    ```python blocks that parse (a textbook section)."""
    sigs = _signatures(text)
    return sigs if sigs is not None else [s for b in code_blocks(text) for s in (_signatures(b) or [])]


def _signatures(src):
    try:
        tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    # top-level functions and methods: a nested helper is part of its function's signature, not one of its own
    tops = [n for n in tree.body] + [m for n in tree.body if isinstance(n, ast.ClassDef) for m in n.body]
    return [ast_signature(n) for n in tops if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def ast_match(sig, bench_sigs, tau):
    """Best (ratio, task) with difflib ratio >= tau, or None; cheap upper bounds prune most pairs first."""
    best = None
    for task, bsig in bench_sigs:
        if 2 * min(len(sig), len(bsig)) / (len(sig) + len(bsig)) < tau:   # the bound real_quick_ratio gives
            continue
        sm = difflib.SequenceMatcher(None, sig, bsig, autojunk=False)
        if sm.quick_ratio() < tau:
            continue
        ratio = sm.ratio()
        if ratio >= tau and (best is None or ratio > best[0]):
            best = (ratio, task)
    return best


def decontaminate(records, bench, tau=TAU):
    """Remove records sharing a 13-gram with a benchmark prompt+solution, or holding a function whose AST
    node-type sequence matches a benchmark function's with difflib ratio >= tau. Returns (kept, report)."""
    gram_task = {}
    for task, src in bench.items():
        for g in ngrams(src):
            gram_task.setdefault(g, task)
    bench_sigs = [(task, s) for task, src in bench.items() for s in function_signatures(src)]
    kept, removed = [], []
    for r in records:
        hit = next((g for g in ngrams(r["text"]) if g in gram_task), None)
        if hit:
            removed.append({"id": r["id"], "reason": "13gram", "task": gram_task[hit], "ngram": hit})
            continue
        match = next((m for m in (ast_match(s, bench_sigs, tau) for s in function_signatures(r["text"])) if m), None)
        if match:
            removed.append({"id": r["id"], "reason": "ast", "task": match[1], "ratio": round(match[0], 4)})
            continue
        kept.append(r)
    report = {"checked": len(records), "kept": len(kept), "tau": tau, "benchmarks": sorted({t.split("/")[0]
              for t in bench}), "removed_13gram": sum(x["reason"] == "13gram" for x in removed),
              "removed_ast": sum(x["reason"] == "ast" for x in removed), "removed": removed}
    return kept, report


def _decon_summary(d):
    top = Counter(x["task"] for x in d["removed"]).most_common(5)
    return (f"decontamination against {', '.join(d['benchmarks'])}: checked {d['checked']}, removed "
            f"{d['removed_13gram']} by {NGRAM}-gram overlap and {d['removed_ast']} by AST match (tau {d['tau']}), "
            f"kept {d['kept']}" + (f"; most matched: {top}" if top else ""))


# ----------------------------------------------------------------------------- CLI
def _read_input(path):
    if not Path(path).exists():
        raise SystemExit(f"error: {path}: no such file")
    try:
        records = read_jsonl_resumable(path)
    except ValueError as e:
        raise SystemExit(f"error: {path}: not JSONL ({e})")
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict) or "text" not in r), None)
    if bad is not None:
        raise SystemExit(f"error: {path}: record {bad} has no 'text' field")
    for i, r in enumerate(records):
        r.setdefault("id", str(i))
    return records


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for kind in ("textbook", "exercises"):
        g = sub.add_parser(kind, help=f"generate {kind} (resumable)")
        g.add_argument("--out", required=True, help="final JSONL; X.raw.jsonl / X.rejected.jsonl / X.report.json")
        size = g.add_mutually_exclusive_group(required=True)
        size.add_argument("--n_samples", type=int, help="target number of accepted records")
        size.add_argument("--n_tokens", type=int, help="target tokens of accepted text (phi-1 tokenizer)")
        g.add_argument("--seed", type=int, default=0)
        g.add_argument("--base_url", default=os.environ.get("OPENAI_BASE_URL", BASE_URL))
        g.add_argument("--model", default=MODEL)
        g.add_argument("--concurrency", type=int, default=CONCURRENCY)
        g.add_argument("--temperature", type=float, default=TEMPERATURE)
        g.add_argument("--max_tokens", type=int, default=MAX_TOKENS[kind])
        g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
        g.add_argument("--max_retries", type=int, default=6)
        g.add_argument("--give_up_after", type=int, default=GIVE_UP_AFTER, help="stop after N rejections in a row")
        if kind == "exercises":
            g.add_argument("--verify", action="store_true", help="ask for asserts and run them in eval.py's sandbox")
        g.add_argument("--against", action="append", help="benchmarks to decontaminate against (default humaneval)")
        g.add_argument("--no_decontaminate", action="store_true")
        g.add_argument("--tau", type=float, default=TAU)
    pv = sub.add_parser("preview", help="print the prompts a seed draws (no server)")
    pv.add_argument("kind", choices=["textbook", "exercises"])
    pv.add_argument("--seed", type=int, default=0)
    pv.add_argument("--n", type=int, default=3)
    pv.add_argument("--start", type=int, default=0)
    pv.add_argument("--verify", action="store_true")
    d = sub.add_parser("dedup", help="remove exact and near duplicates")
    d.add_argument("input")
    d.add_argument("--out", help="default: INPUT with .dedup.jsonl")
    d.add_argument("--threshold", type=float, default=NEAR_DUP_JACCARD)
    dc = sub.add_parser("decontaminate", help=f"remove {NGRAM}-gram and AST matches with benchmarks")
    dc.add_argument("input")
    dc.add_argument("--against", action="append", help="'humaneval' or a HumanEval/MBPP-format jsonl (repeatable)")
    dc.add_argument("--tau", type=float, default=TAU)
    dc.add_argument("--out", help="default: INPUT with .decontaminated.jsonl; report next to it (.json)")
    rp = sub.add_parser("report", help="diversity report")
    rp.add_argument("input")
    a = ap.parse_args(argv)

    if a.cmd in ("textbook", "exercises"):
        if (a.n_samples or a.n_tokens or 0) <= 0:
            raise SystemExit("error: the target size must be positive")
        generate(a.cmd, a.out, n_samples=a.n_samples, n_tokens=a.n_tokens, seed=a.seed, base_url=a.base_url,
                 model=a.model, concurrency=a.concurrency, temperature=a.temperature, max_tokens=a.max_tokens,
                 verify=getattr(a, "verify", False), timeout=a.timeout, max_retries=a.max_retries,
                 give_up_after=a.give_up_after,
                 against=() if a.no_decontaminate else (a.against or ["humaneval"]), tau=a.tau)
    elif a.cmd == "preview":
        for i in range(a.start, a.start + a.n):
            c = draw_constraints(a.kind, a.seed, i)
            print(f"=== {record_id(a.kind, a.seed, i)} {json.dumps(c)}")
            for m in build_messages(a.kind, c, a.verify):
                print(f"[{m['role']}] {m['content']}")
    elif a.cmd == "dedup":
        records = _read_input(a.input)
        kept, rem = dedup(records, a.threshold)
        out = a.out or str(Path(a.input).with_suffix(".dedup.jsonl"))
        write_jsonl_atomic(out, kept)
        print(f"dedup: {len(records)} records, removed {rem['exact']} exact and {rem['near']} near duplicates "
              f"(Jaccard >= {a.threshold}), kept {len(kept)} -> {out}")
    elif a.cmd == "decontaminate":
        records = _read_input(a.input)
        kept, rep = decontaminate(records, load_benchmarks(a.against or ["humaneval"]), tau=a.tau)
        out = Path(a.out or Path(a.input).with_suffix(".decontaminated.jsonl"))
        write_jsonl_atomic(out, kept)
        out.with_suffix(".report.json").write_text(json.dumps(rep, indent=1))
        print(_decon_summary(rep))
        print(f"wrote {len(kept)} records to {out} "
              f"(removed items and matched tasks: {out.with_suffix('.report.json')})")
    elif a.cmd == "report":
        print(json.dumps(diversity(_read_input(a.input)), indent=1))


if __name__ == "__main__":
    main()
