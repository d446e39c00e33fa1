"""Synthetic textbooks and code exercises with controlled diversity, verified, deduplicated and decontaminated.

phi-1 (§2.2) trained on two data sets written by GPT-3.5: "synthetic textbooks" (under 1 B tokens of prose with
code snippets, made diverse by constraining the topic and the target audience of each prompt) and "CodeExercises"
(about 180 M tokens; a function signature with a docstring, then its solution; diverse mostly through constrained
function names). The paper notes GPT-3.5's high error rate and decontaminates the exercises against HumanEval (§5)
with 13-gram overlap and an AST match rate tau. This file makes both data sets over any OpenAI-compatible server
(the same LLMClient as filter.py), checks them, and writes JSONL records with a `text` field for train.py.

    python synth.py textbook  --out=data/textbooks.jsonl --n_samples=1000 --base_url=http://127.0.0.1:8080/v1
    python synth.py exercises --out=data/exercises.jsonl --n_tokens=2000000 --verify --seed=1
    python synth.py exercises --out=data/exercises.jsonl --n_samples=880000 --dry_run=True  # the plan, its cost
    python synth.py preview exercises --seed=0 --n=3            # print the prompts a seed draws, no server needed
    python synth.py dedup data/exercises.jsonl                  # exact + near-duplicate removal (dedup.py)
    python synth.py decontaminate data/exercises.jsonl --against humaneval --tau=0.95,0.9,0.85,0.8
    python synth.py report data/exercises.jsonl                 # diversity report
    python synth.py bench                                       # dedup/decontaminate records/s and memory

Generation files, for --out=X.jsonl: X.raw.jsonl (append-only, one JSON line per accepted record, flushed per
record; a killed run resumes from it, reading only the head of each line), X.rejected.jsonl (dropped outputs and
why), X.jsonl (the final data: the smallest prefix of indices reaching the target, deduplicated, decontaminated)
and X.report.json (counts, removals, diversity). Every record has a deterministic id from (kind, seed, index)
and stores the constraint values its prompt was drawn with, so a run is reproducible from its seed and its
diversity measurable. Sized for the paper's ~1 B tokens: the final pass streams the raw file by byte offset and
holds per record only its offset and MinHash signature; dedup and decontamination run on all cores.
"""
import argparse
import ast
import difflib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
import warnings
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

import dedup as dd
from data import DataError, Source
from files import Progress, append_jsonl, fmt_time, jsonl_lines
from dedup import default_workers
from llm import LLMClient, LLMError

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


# ----------------------------------------------------------------------------- JSONL files read by byte offset
# At the paper's scale the raw file holds ~1 B tokens: nothing below keeps its texts in memory. A pass reads the
# lines it needs (by offset, in the order it needs them) and hands them to worker processes as bytes.
class SynthError(SystemExit):
    """`synth.py: error: <message>` on one line and exit status 2 (bad input) or 1 (a failure while running)."""

    def __init__(self, message, status=2):
        super().__init__(status)
        self.message = message

    def __str__(self):
        return self.message


class LineReader:
    """Random access to the lines of a file by byte offset (one open file, the OS's page cache does the rest)."""

    def __init__(self, path):
        self.f = open(path, "rb")

    def __call__(self, offset):
        self.f.seek(int(offset))
        line = self.f.readline()
        return line if line.endswith(b"\n") else line + b"\n"   # a last line that lacks its newline

    def close(self):
        self.f.close()


def _record(item):
    """A record from a worker's item: (line number, JSONL line) or (number, dict). Checks it has a text."""
    i, x = item
    if isinstance(x, dict):
        r = x
    else:
        try:
            r = json.loads(x)
        except ValueError as e:
            raise ValueError(f"record {i} is not JSON ({e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("text"), str):
        raise ValueError(f"record {i} has no 'text' field")
    r.setdefault("id", str(i))
    return r


def _record_text(item):
    return _record(item)["text"]


# Raw and rejected records start with these fields, in this order, so that resuming can read a line's head
# without decoding its text (a textbook line is ~3 KB, the head ~80 B); lines written otherwise (older files,
# hand edits) are decoded whole instead.
_HEAD = re.compile(rb'\{"id": "[^"\\]*", "kind": "(\w+)", "seed": (-?\d+), "index": (\d+)(?:, "tokens": (\d+))?[,}]')


def read_heads(path, repair=True):
    """(kind, seed) pairs seen, and arrays index (n,), tokens (n,; -1 where not stored) and offset (n,) of the
    records of a raw or rejected file, from the head of each line only."""
    kinds, index, tokens, offset = set(), [], [], []
    lines = jsonl_lines(path, tail="repair" if repair else "error") if Path(path).exists() else ()  # not yet: none
    for _, off, line in lines:
        m = _HEAD.match(line)
        if m:
            kind, seed, idx, tok = m.group(1).decode(), int(m.group(2)), int(m.group(3)), m.group(4)
            tok = int(tok) if tok is not None else -1
        else:
            try:
                r = json.loads(line)
                kind, seed, idx, tok = r.get("kind"), r.get("seed"), int(r["index"]), int(r.get("tokens", -1))
            except (ValueError, KeyError, TypeError):
                raise SynthError(f"cannot resume: {path}: a line at byte {off} is not a generation record "
                                 f"({line[:60]!r})") from None
        kinds.add((kind, seed))
        index.append(idx)
        tokens.append(tok)
        offset.append(off)
    return kinds, np.array(index, dtype=np.int64), np.array(tokens, dtype=np.int64), np.array(offset, dtype=np.int64)


# ----------------------------------------------------------------------------- generation
def paths_for(out):
    out = Path(out)
    return {"raw": out.with_suffix(".raw.jsonl"), "rejected": out.with_suffix(".rejected.jsonl"),
            "final": out, "report": out.with_suffix(".report.json")}


def _head_first(res, tokens=None):
    """The record with id, kind, seed, index (and tokens) first, as _HEAD reads them back."""
    head = {k: res[k] for k in ("id", "kind", "seed", "index")}
    if tokens is not None:
        head["tokens"] = tokens
    return {**head, **{k: v for k, v in res.items() if k not in head}}


def generate(kind, out, n_samples=None, n_tokens=None, seed=0, base_url=BASE_URL, model=MODEL,
             concurrency=CONCURRENCY, temperature=TEMPERATURE, max_tokens=None, verify=False, timeout=60.0,
             max_retries=6, give_up_after=GIVE_UP_AFTER, against=("humaneval",), tau=(TAU,),
             near_threshold=NEAR_DUP_JACCARD, workers=None, dry_run=False, log=None):
    """Generate until the records of the lowest indices hold n_samples accepted records (or n_tokens tokens of
    `text`), then write the final deduplicated, decontaminated data. Resumable: indices already in the raw or
    rejected file are skipped; resuming reads only the head of each line (id, kind, seed, index, tokens).

    Requests stay in flight continuously: each finished one starts the next lowest index not yet done, as long as
    what is done and in flight is expected to reach the target. The final data is the smallest prefix of indices
    that reaches it, so a killed and resumed run ends with the same records as an uninterrupted one."""
    assert (n_samples is None) != (n_tokens is None), "give exactly one of n_samples / n_tokens"
    log = log or sys.stderr
    max_tokens = max_tokens or MAX_TOKENS[kind]
    taus = (tau,) if isinstance(tau, (int, float)) else tuple(tau)
    p = paths_for(out)
    seen = set()
    done = {}                      # index -> accepted tokens (1 per record for n_samples; 0: rejected)
    count_tokens = _token_counter()
    for path, accepted in ((p["raw"], True), (p["rejected"], False)):
        kinds, index, tokens, offset = read_heads(path, repair=not dry_run)
        seen |= kinds
        if accepted and n_tokens and (tokens < 0).any():   # records written without their count (older files)
            reader = LineReader(path)
            for j in np.flatnonzero(tokens < 0):
                tokens[j] = count_tokens(_record((j, reader(offset[j])))["text"])
            reader.close()
        if accepted:
            n_kept = len(index)
        for i, t in zip(index.tolist(), tokens.tolist()):
            done[i] = (t if n_tokens else 1) if accepted else 0
    bad = next(((k, s) for k, s in seen if k != kind or s != seed), None)
    if bad:
        raise SynthError(f"{p['raw']} holds {bad[0]} records of seed {bad[1]}; resume with the same kind and "
                         f"--seed, or write to another --out")
    n_rejected = sum(v == 0 for v in done.values())
    goal, unit = (n_samples, "samples") if n_samples else (n_tokens, "tokens")
    # frontier: the lowest index not done; below it everything is done and `prefix` is its accepted total
    frontier, prefix = 0, 0
    while frontier in done and prefix < goal:
        prefix += done.pop(frontier)
        frontier += 1
    print(f"[{kind}] seed {seed}: resuming with {n_kept} records ({n_rejected} rejected) from {p['raw']}"
          if seen else f"[{kind}] seed {seed}: new run -> {p['raw']}", file=log)
    print_plan(kind, seed, verify, goal, unit, prefix + sum(done.values()), len(done) + frontier, n_rejected,
               max_tokens, frontier, count_tokens, log)
    if dry_run:
        return None
    run = {"failed_calls_retried": 0, "usage_this_run": {"prompt_tokens": 0, "completion_tokens": 0}}
    if prefix < goal:
        run = _generate_loop(kind, seed, p, goal, n_tokens, done, frontier, prefix, base_url, model, concurrency,
                             temperature, max_tokens, verify, timeout, max_retries, give_up_after, count_tokens, log)
    return finalize(p, goal, bool(n_tokens), {"kind": kind, "seed": seed, **run}, against=against, taus=taus,
                    near_threshold=near_threshold, workers=workers, log=log)


def print_plan(kind, seed, verify, goal, unit, have, n_done, n_rejected, max_tokens, frontier, count_tokens, log):
    """Before the first request: how many requests remain and what they will cost in prompt and completion tokens.

    Per request, the prompt tokens are measured with the phi-1 tokenizer on up to 200 of the prompts still to be
    sent (servers add a few tokens of chat template); acceptance and the accepted tokens per request are those
    of this run so far, or, on a new run, all accepted and max_tokens / 2 per textbook request."""
    left = max(goal - have, 0)
    accept = (n_done - n_rejected) / n_done if n_done else 1.0
    if unit == "samples":
        per_request = max(accept, 1e-3)
    else:
        per_request = max(have / n_done if n_done else max_tokens / 2, 1.0)
    requests = math.ceil(left / per_request) if left else 0
    sample = range(frontier, frontier + max(1, min(requests, 200)))
    prompt = sum(count_tokens("\n".join(m["content"] for m in build_messages(kind, draw_constraints(kind, seed, i),
                                                                             verify))) for i in sample) / len(sample)
    print(f"[{kind}] plan: {left} more {unit} in about {requests} requests (acceptance "
          f"{accept:.0%}{' so far' if n_done else ' assumed'}): about {requests * prompt:,.0f} prompt tokens "
          f"({prompt:.0f} per request) and at most {requests * max_tokens:,} completion tokens "
          f"(max_tokens {max_tokens})", file=log, flush=True)


def _generate_loop(kind, seed, p, goal, n_tokens, done, frontier, prefix, base_url, model, concurrency,
                   temperature, max_tokens, verify, timeout, max_retries, give_up_after, count_tokens, log):
    client = LLMClient(base_url, model, concurrency=concurrency, timeout=timeout, max_retries=max_retries)
    in_flight, retry = set(), []    # indices sent and not yet answered; failed ones, to send again first
    state = {"frontier": frontier, "prefix": prefix, "kept": prefix + sum(done.values()), "requests": len(done)
             + frontier, "failed": 0, "failed_in_a_row": 0, "rejected_in_a_row": 0, "last_error": None}
    reasons = Counter()
    progress = Progress(f"[{kind}]", goal, "tokens" if n_tokens else "samples", start=state["kept"],
                        log=lambda line: print(line, file=log, flush=True))

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

    def expected_per_request():
        # samples: count every request in flight as an accepted record, so a run never asks for more than it
        # needs; tokens: the accepted tokens per request so far (half of max_tokens before the first answer)
        if not n_tokens:
            return 1.0
        return state["kept"] / state["requests"] if state["requests"] else max_tokens / 2

    def to_send():
        """Indices to request, lowest first, produced only when LLMClient.map has a free slot."""
        nxt = state["frontier"]
        while True:
            if retry:
                yield retry.pop()
                continue
            while nxt in done or nxt in in_flight:
                nxt += 1
            # a hole below what is done is always needed; beyond, only while the target is not yet covered
            hole = bool(done) and nxt < max(done)
            if not hole and state["kept"] + len(in_flight) * expected_per_request() >= goal:
                return
            in_flight.add(nxt)
            yield nxt
            nxt += 1

    def advance():
        while state["frontier"] in done and state["prefix"] < goal:
            state["prefix"] += done.pop(state["frontier"])
            state["frontier"] += 1

    p["raw"].parent.mkdir(parents=True, exist_ok=True)
    with open(p["raw"], "a", encoding="utf-8") as fraw, open(p["rejected"], "a", encoding="utf-8") as frej:
        while state["prefix"] < goal:
            for index, res in client.map(work, to_send()):
                if isinstance(res, LLMError):
                    state["failed"] += 1
                    state["failed_in_a_row"] += 1
                    state["last_error"] = res
                    if state["failed_in_a_row"] >= max(8, 2 * concurrency):
                        raise SynthError(f"the last {state['failed_in_a_row']} requests all failed (run the same "
                                         f"command again to resume); last error: {res}", status=1)
                    retry.append(index)
                    continue
                if isinstance(res, Exception):
                    raise res
                in_flight.discard(index)
                state["failed_in_a_row"] = 0
                state["requests"] += 1
                if "reason" in res:
                    append_jsonl(frej, _head_first(res))
                    reasons[res["reason"]] += 1
                    state["rejected_in_a_row"] += 1
                    done[index] = 0
                    value = 0
                else:
                    value = count_tokens(res["text"]) if n_tokens else 1
                    # the token count is stored, so that resuming a billion-token run need not re-tokenize it
                    append_jsonl(fraw, _head_first(res, value if n_tokens else None))
                    state["kept"] += value
                    state["rejected_in_a_row"] = 0
                    done[index] = value
                advance()
                u = client.usage
                progress.update(value, f"in flight {len(in_flight)}, rejected {sum(reasons.values())}, failed calls "
                                       f"{state['failed']}, retries {client.stats['retries']}, usage "
                                       f"{u.get('prompt_tokens', 0)}+{u.get('completion_tokens', 0)} tokens")
                if state["rejected_in_a_row"] >= give_up_after:
                    break
            if state["rejected_in_a_row"] >= give_up_after:
                print(f"[{kind}] giving up: the last {state['rejected_in_a_row']} outputs were all rejected "
                      f"({dict(reasons)})", file=log)
                break
    print(f"[{kind}] generated: rejected this run {dict(reasons)}, failed calls (retried) {state['failed']}, "
          f"usage this run {dict(client.usage)}", file=log)
    return {"failed_calls_retried": state["failed"], "usage_this_run": dict(client.usage)}


def _token_counter():
    from tokenizer import get_tokenizer   # lazy: the model module imports torch
    tok = get_tokenizer()
    return lambda text: len(tok.encode(text))


# ----------------------------------------------------------------------------- the final pass, streamed
def finalize(p, goal, by_tokens, run_stats, against=("humaneval",), taus=(TAU,), near_threshold=NEAR_DUP_JACCARD,
             workers=None, log=None):
    """Raw records -> the smallest prefix of indices reaching the goal, in index order -> deduplicated ->
    decontaminated -> the final file and its report. Holds per record only its offset and its signature."""
    workers, log = workers or default_workers(), log or sys.stderr
    _, index, tokens, offset = read_heads(p["raw"])
    order = np.argsort(index, kind="stable")
    value = tokens[order] if by_tokens else np.ones(len(order), dtype=np.int64)
    n = min(len(order), int(np.searchsorted(np.cumsum(value), goal)) + 1)   # first records reaching the goal
    offsets = offset[order[:n]]
    rejected = Counter()
    for _, _, line in jsonl_lines(p["rejected"], tail="repair"):
        m = re.search(rb'"reason": "(\w+)"', line)
        rejected[m.group(1).decode() if m else "?"] += 1
    stats = {**run_stats, "kept": len(order), "kept_tokens": int(tokens.sum()) if by_tokens else None,
             "selected": n, "selected_tokens": int(value[:n].sum()) if by_tokens else None,
             "rejected": dict(rejected)}
    keep, dup = dedup_lines(p["raw"], offsets, near_threshold, workers)
    print(f"dedup: {dup['exact']} exact and {dup['near']} near duplicates removed", file=log)
    bench = load_benchmarks(against) if against else None
    decon, div = decontaminate_lines(p["raw"], offsets[keep], bench, taus, workers, p["final"], diversity=True)
    for rep in decon or ():
        print(_decon_summary(rep), file=log)
    report = {"generation": stats, "dedup": dup, "decontamination": _main_and_others(decon), "diversity": div}
    write_text_atomic(p["report"], json.dumps(report, indent=1))
    print(_diversity_summary(div), file=log)
    print(f"wrote {div['records']} records to {p['final']} (report: {p['report']})", file=log)
    return report


def _main_and_others(reports):
    """The report of the first threshold, with those of the others under "other_taus"."""
    if not reports:
        return None
    return {**reports[0], "other_taus": reports[1:]} if len(reports) > 1 else reports[0]


def write_text_atomic(path, text):
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- deduplication (dedup.py)
def _find_duplicates(items, n, decode, text_of, threshold, workers):
    """Exact, then near duplicates over `items` (decoded to texts in the workers); see dedup.py.
    Returns keep (n,) bool, the exact count, and [(j, i)]: near duplicate j of kept i."""
    exact, sigs = dd.signatures(items, n=n, decode=decode, workers=workers)
    live = dd.first_occurrences(exact)
    keep, pairs = dd.near_duplicates(sigs, text_of, live=live, threshold=threshold)
    return keep, int(n - live.sum()), pairs


def dedup(records, threshold=NEAR_DUP_JACCARD, workers=1):
    """Drop exact duplicates (after whitespace normalisation), then near duplicates: records whose word 5-gram
    Jaccard similarity with an earlier kept record is >= threshold (MinHash LSH proposes, the exact Jaccard
    decides; dedup.py). Keeps the first of each group, so the input order decides. For lists in memory; files
    go through dedup_lines."""
    texts = [r["text"] for r in records]
    keep, exact, pairs = _find_duplicates(texts, len(texts), None, texts.__getitem__, threshold, workers)
    return ([r for r, k in zip(records, keep) if k],
            {"exact": exact, "near": len(pairs), "pairs": [[records[j]["id"], records[i]["id"]] for j, i in pairs]})


def dedup_lines(path, offsets, threshold=NEAR_DUP_JACCARD, workers=1):
    """dedup() over the JSONL lines of `path` at `offsets` (in that order): keep (n,) bool and the summary."""
    reader = LineReader(path)
    try:
        items = ((i, reader(off)) for i, off in enumerate(offsets))
        keep, exact, pairs = _find_duplicates(items, len(offsets), _record_text,
                                              lambda i: _record((i, reader(offsets[i])))["text"], threshold, workers)
        ids = lambda i: _record((i, reader(offsets[i])))["id"]  # noqa: E731
        return keep, {"exact": exact, "near": len(pairs), "pairs": [[ids(j), ids(i)] for j, i in pairs]}
    except ValueError as e:
        raise SynthError(f"{path}: {e}") from None
    finally:
        reader.close()


# ----------------------------------------------------------------------------- diversity
class Diversity:
    """Distinct constraint values, function names and word n-gram ratios (distinct / total), mergeable, so that
    workers can count their share. N-grams are counted as hashes in a dd.DistinctCount sketch: exact up to
    65,536 distinct ones, then estimated (relative error ~0.4 %)."""
    KEYS = (("topic", "topics"), ("subtopic", "subtopics"), ("audience", "audiences"), ("style", "styles"),
            ("difficulty", "difficulties"), ("function_name", "function_names"))

    def __init__(self):
        self.records = 0
        self.values = {plural: set() for _, plural in self.KEYS}
        self.names = set()
        self.grams = {n: dd.DistinctCount() for n in (1, 2, 4)}

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
            wh, n_words = dd.word_hashes([r["text"] for r in records])
            for n, count in self.grams.items():
                count.add(dd.ngram_hashes(wh, n_words, n))
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
            out[f"distinct_{n}gram_ratio"] = round(count.distinct() / count.total, 4) if count.total else 0.0
        return out


def diversity(records):
    return Diversity().add(list(records)).summary()


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
            raise SynthError(f"--against {src}: {e}")
        for tid, p in problems.items():
            key = tid if tid not in bench else f"{Path(src).name}:{tid}"
            bench[key] = p["prompt"] + p["canonical_solution"]
    return bench


def ngrams(text, n=NGRAM):
    """The word n-grams of a text, in order. Lower-cased words only: punctuation runs such as ") -> List[int]:"
    would make generic 13-grams."""
    w = re.findall(r"\w+", text.lower())
    return [" ".join(w[i:i + n]) for i in range(len(w) - n + 1)]


# one character per AST node type, fixed by the ast module itself, so every process spells a signature alike
_TYPE_CHAR = {name: chr(0x4E00 + i) for i, name in enumerate(sorted(
    name for name, c in vars(ast).items() if isinstance(c, type) and issubclass(c, ast.AST)))}
_DOC_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_NO_BODY = [ast.Pass()]   # what a body that held only its docstring becomes


def _is_docstring(stmt):
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def ast_signature(fn):
    """A function as a string of node types in pre-order (one character per type, so difflib works on str).
    Docstrings are left out (here and in nested functions and classes); names, comments and constant values
    never reach the node types anyway. An explicit stack, not recursion: this runs for every record."""
    out, stack = [], [fn]
    while stack:
        node = stack.pop()
        out.append(_TYPE_CHAR[type(node).__name__])
        children = []
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, ast.AST):
                children.append(value)
            elif isinstance(value, list):
                if field == "body" and isinstance(node, _DOC_OWNERS) and value and _is_docstring(value[0]):
                    value = value[1:] or _NO_BODY
                children.extend(v for v in value if isinstance(v, ast.AST))
        stack.extend(reversed(children))
    return "".join(out)


def function_signatures(text):
    """AST signatures of all functions in `text`: the whole text if it parses (an exercise), else those of its
    ```python blocks that parse (a textbook section)."""
    sigs = _signatures(text)
    return sigs if sigs is not None else [s for b in code_blocks(text) for s in (_signatures(b) or [])]


def _signatures(src):
    try:
        with warnings.catch_warnings():   # e.g. "invalid escape sequence": the code's business, not ours
            warnings.simplefilter("ignore")
            tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    # top-level functions and methods: a nested helper is part of its function's signature, not one of its own
    tops = [n for n in tree.body] + [m for n in tree.body if isinstance(n, ast.ClassDef) for m in n.body]
    return [ast_signature(n) for n in tops if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _type_counts(sig):
    return np.bincount(np.frombuffer(sig.encode("utf-32-le"), dtype=np.uint32) - 0x4E00, minlength=len(_TYPE_CHAR))


class Benchmarks:
    """What decontamination compares against: each benchmark 13-gram with its first task, and each benchmark
    function's AST signature with its node-type counts (for the quick_ratio bound of all of them in one numpy
    operation) and a difflib matcher that keeps the benchmark side's tables between records."""

    def __init__(self, bench):
        self.tasks = sorted({t.split("/")[0] for t in bench})
        self.gram_task = {}
        for task, src in bench.items():
            for g in ngrams(src):
                self.gram_task.setdefault(g, task)
        self.sigs = [(task, s) for task, src in bench.items() for s in function_signatures(src)]
        self.counts = np.array([_type_counts(s) for _, s in self.sigs]).reshape(len(self.sigs), len(_TYPE_CHAR))
        self.lens = self.counts.sum(axis=1)
        self.matchers = {}

    def best_match(self, sig, tau):
        """Best (ratio, task) with difflib ratio >= tau, or None; the first task wins a tie."""
        # quick_ratio (2 x common node types / total length) bounds the ratio: prune with it, all at once
        quick = 2 * np.minimum(self.counts, _type_counts(sig)).sum(axis=1) / (self.lens + len(sig))
        best = None
        for b in np.flatnonzero(quick >= tau).tolist():
            sm = self.matchers.get(b)
            if sm is None:
                sm = self.matchers[b] = difflib.SequenceMatcher(None, "", self.sigs[b][1], autojunk=False)
            sm.set_seq1(sig)
            ratio = sm.ratio()
            if ratio >= tau and (best is None or ratio > best[0]):
                best = (ratio, self.sigs[b][0])
        return best


def contamination(text, bench, min_tau):
    """What every threshold >= min_tau needs to know about one text: None (clean), ("13gram", task, gram) for the
    first benchmark 13-gram in it, or ("ast", [best (ratio, task) >= min_tau or None, one per function])."""
    hit = next((g for g in ngrams(text) if g in bench.gram_task), None)
    if hit:
        return ("13gram", bench.gram_task[hit], hit)
    best = [bench.best_match(s, min_tau) for s in function_signatures(text)]
    return ("ast", best) if any(best) else None


def removal_at(verdict, tau):
    """The removal of a text at threshold tau, from its contamination() verdict: None or {reason, task, ...}.
    At tau, the first function whose best ratio is >= tau decides, as a single run at tau would find."""
    if verdict is None:
        return None
    if verdict[0] == "13gram":
        return {"reason": "13gram", "task": verdict[1], "ngram": verdict[2]}
    m = next((m for m in verdict[1] if m and m[0] >= tau), None)
    return {"reason": "ast", "task": m[1], "ratio": round(m[0], 4)} if m else None


_WORKER = {}


def _init_worker(bench, taus, want_diversity):
    _WORKER.update(bench=bench, taus=taus, diversity=want_diversity)


def _final_chunk(items):
    """A worker's share of the final pass: each record's number and verdict (None when clean, or when there is
    nothing to decontaminate against), and the diversity of the records the first threshold keeps."""
    bench, taus = _WORKER["bench"], _WORKER["taus"]
    out, kept = [], []
    for item in items:
        r = _record(item)
        v = contamination(r["text"], bench, min(taus)) if bench else None
        out.append((item[0], (r["id"], v) if v else None))
        if _WORKER["diversity"] and removal_at(v, taus[0]) is None:
            kept.append(r)
    return out, Diversity().add(kept) if _WORKER["diversity"] else None


def _decontaminate(items, bench, taus, workers, on_settled, diversity=False, chunk=64):
    """The final pass over `items` ((number, JSONL line or dict), in order) on `workers` processes: per threshold
    its report (None without a benchmark), the diversity of what the first threshold keeps, and, in order,
    on_settled(number, kept at the first threshold) for every record."""
    b = Benchmarks(bench) if bench else None
    removed = {t: [] for t in taus}
    div, checked = Diversity(), 0
    for verdicts, part in dd.parallel_map(_final_chunk, dd.chunked(items, chunk), workers, _init_worker,
                                          (b, taus, diversity)):
        for i, v in verdicts:
            checked += 1
            for t in taus:
                rm = removal_at(v[1], t) if v else None
                if rm:
                    removed[t].append({"id": v[0], **rm})
            on_settled(i, not (v and removal_at(v[1], taus[0])))
        if part:
            div.merge(part)
    reports = [{"checked": checked, "kept": checked - len(removed[t]), "tau": t, "benchmarks": b.tasks,
                "removed_13gram": sum(x["reason"] == "13gram" for x in removed[t]),
                "removed_ast": sum(x["reason"] == "ast" for x in removed[t]), "removed": removed[t]}
               for t in taus] if b else None
    return reports, div.summary() if diversity else None


def decontaminate(records, bench, tau=TAU, workers=1):
    """Remove records sharing a 13-gram with a benchmark prompt+solution, or holding a function whose AST
    node-type sequence matches a benchmark function's with difflib ratio >= tau. Returns (kept, report).
    For lists in memory; files go through decontaminate_lines (several thresholds in one pass)."""
    kept = []
    reports, _ = _decontaminate(enumerate(records), bench, (tau,), workers,
                                lambda i, keep: keep and kept.append(records[i]))
    return kept, reports[0]


def decontaminate_lines(path, offsets, bench, taus, workers, out, diversity=False):
    """The final pass over the JSONL lines of `path` at `offsets`: writes the lines the first threshold keeps to
    `out` (atomically; None: nowhere); returns (per-threshold reports or None without a benchmark, diversity)."""
    reader, tmp = LineReader(path), Path(str(out) + ".tmp") if out else None
    lines = {}   # the lines of the chunks in flight, until they are settled

    def items():
        for i, off in enumerate(offsets):
            lines[i] = line = reader(off)
            yield i, line

    try:
        with open(tmp or os.devnull, "wb") as f:
            def settle(i, keep):
                line = lines.pop(i)
                if keep:
                    f.write(line)
            reports, div = _decontaminate(items(), bench, taus, workers, settle, diversity)
    except ValueError as e:
        raise SynthError(f"{path}: {e}") from None
    finally:
        reader.close()
    if tmp:
        os.replace(tmp, out)
    return reports, div


def _decon_summary(d):
    top = Counter(x["task"] for x in d["removed"]).most_common(5)
    return (f"decontamination against {', '.join(d['benchmarks'])}: checked {d['checked']}, removed "
            f"{d['removed_13gram']} by {NGRAM}-gram overlap and {d['removed_ast']} by AST match (tau {d['tau']}), "
            f"kept {d['kept']}" + (f"; most matched: {top}" if top else ""))


# ----------------------------------------------------------------------------- benchmark
# The figures for the implementation before dedup.py (2-core CPU machine, 2026-12-01): records, wall s,
# peak RSS GB of `synth.py dedup`; `decontaminate` ran on one core at 650 exercise-sized records/s in 185 MB.
BEFORE = {("exercises", 20_000): (14.4, 0.64), ("exercises", 100_000): (66.0, 2.81),
          ("textbooks", 20_000): (36.6, 1.53)}
BEFORE_DECONTAMINATE = (650, 0.185)


def stdlib_functions(min_bytes=300, max_bytes=2000):
    """Every function and method of this Python's standard library of that size, dedented (an exercise's shape)."""
    import textwrap
    out = []
    for _, src in Source("stdlib"):   # data.py's walk, the one train.py and filter.py read
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        lines = src.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno]))
                if min_bytes <= len(fn.encode()) <= max_bytes:
                    out.append(fn)
    return out


def _variant(fn, v):
    """Copy v of a function: every identifier but keywords and builtins gets the suffix _v (v = 0: as it is),
    so copies share their AST but hardly a shingle, as different exercises on the same idea would."""
    import builtins
    import keyword
    if v == 0:
        return fn
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: m.group() if keyword.iskeyword(m.group()) or hasattr(
        builtins, m.group()) else f"{m.group()}_{v}", fn)


def build_corpora(folder, n_exercises, n_textbooks):
    """exercises.jsonl: n_exercises standard-library functions (their variants once the library runs out);
    textbooks.jsonl: n_textbooks sections of four of them in ```python blocks between lines of prose."""
    fns = stdlib_functions()
    ex = Path(folder) / "exercises.jsonl"
    with open(ex, "w", encoding="utf-8") as f:
        for i in range(n_exercises):
            f.write(json.dumps({"id": f"ex{i}", "text": _variant(fns[i % len(fns)], i // len(fns))}) + "\n")
    tb = Path(folder) / "textbooks.jsonl"
    with open(tb, "w", encoding="utf-8") as f:
        for i in range(n_textbooks):
            parts = [_variant(fns[(4 * i + k) % len(fns)], (4 * i + k) // len(fns)) for k in range(4)]
            text = "".join(f"## Part {k + 1}\n\nThe next function shows one more idea of this section; read it "
                           f"line by line.\n\n```python\n{p}```\n\n" for k, p in enumerate(parts))
            f.write(json.dumps({"id": f"tb{i}", "text": text}) + "\n")
    return ex, tb, len(fns)


def _measure(args):
    """Run `python synth.py ARGS` in a fresh process: (the records/s it prints, which leaves out Python's start and
    imports; CPU seconds of it and its workers; peak RSS in GB of its main process; peak of the summed RSS of it
    and its workers). Memory is read from /proc every 20 ms (rusage's would count the bench's own: a child's peak
    starts from its parent's); CPU time is rusage's (the workers' included: they are waited for)."""
    import subprocess

    from data import tree_rss   # lazy: only the benchmark reads /proc

    def high_water(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0) * 1024
        except OSError:
            return 0

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), *args], stdout=out)
        main_peak = all_peak = 0
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            main_peak = max(main_peak, high_water(proc.pid))
            all_peak = max(all_peak, tree_rss(proc.pid))
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(code)
        out.seek(0)
        rate = re.search(r"\(([\d.]+) records/s on", out.read())
    if proc.returncode or not rate:
        raise SynthError(f"bench: synth.py {' '.join(args)} failed ({proc.returncode})", status=1)
    return float(rate.group(1)), usage.ru_utime + usage.ru_stime, main_peak / 2 ** 30, all_peak / 2 ** 30


def bench(folder, n_exercises, n_textbooks, workers):
    """Records/s and peak memory of `synth.py dedup` and `decontaminate` on corpora from the standard library,
    beside the figures before dedup.py, and the projection for the paper's 880 k exercises and 1.3 M textbooks.
    The corpora go to `folder` (kept, and reused by the next run) or to a temporary directory (deleted).

    Besides the wall-clock rate (which on a shared machine depends on what else runs), each run's CPU time, less
    that of the same command on an empty file (Python's start, imports, loading the benchmarks), gives the CPU
    time per record, and from it the rate on `workers` otherwise idle cores."""
    tmp = Path(folder or tempfile.mkdtemp(prefix="synth-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    load = lambda: "load %.2f %.2f %.2f" % os.getloadavg()  # noqa: E731
    n_small = min(20_000, n_exercises)
    try:
        t0 = time.time()
        ex, tb, small, empty = (tmp / "exercises.jsonl", tmp / "textbooks.jsonl", tmp / "exercises-20k.jsonl",
                                tmp / "empty.jsonl")
        if not all(p.exists() for p in (ex, tb, small)):
            build_corpora(tmp, n_exercises, n_textbooks)
            with open(ex, "rb") as f, open(small, "wb") as g:
                for _ in range(n_small):
                    g.write(f.readline())
        empty.write_text("")
        sizes = {p: p.stat().st_size for p in (ex, tb)}
        print(f"corpora in {tmp} ({time.time() - t0:.0f} s): {n_exercises} exercise-sized records "
              f"({sizes[ex] / n_exercises:.0f} B of JSON each), {n_textbooks} textbook-sized "
              f"({sizes[tb] / n_textbooks:.0f} B); {workers} workers, {os.cpu_count()} CPUs, {load()}")
        print("records/s: wall clock, without Python's start and imports; 'CPU' per record and 'idle' (the rate "
              f"on {workers} otherwise idle cores) from the CPU time; 'before': the issue's figures")

        def run(cmd, path, n, w, *extra):
            args = [cmd, str(path), f"--workers={w}", f"--out={tmp / 'out.jsonl'}", *extra]
            rate, cpu, gb, gb_all = _measure(args)
            cpu0 = _measure([cmd, str(empty), f"--workers={w}", f"--out={tmp / 'out.jsonl'}", *extra])[1]
            per = max(cpu - cpu0, 1e-9) / n
            return rate, per, gb, gb_all, (f"{rate:6.0f} records/s, CPU {per * 1e3:.2f} ms/record (idle "
                                           f"{w / per:6.0f} records/s), peak RSS {gb:.2f} GB (with workers "
                                           f"{gb_all:.2f} GB)")

        rows = {}
        for kind, path, n in (("exercises", small, n_small), ("exercises", ex, n_exercises),
                              ("textbooks", tb, n_textbooks)):
            rate, per, gb, _, line = run("dedup", path, n, workers)
            rows[kind, n] = workers / per, gb
            before = BEFORE.get((kind, n))
            print(f"dedup {kind:9s} {n:7d}: {line} | before: " + (
                f"{n / before[0]:.0f} records/s, {before[1]} GB" if before else "not measured") + f" | {load()}",
                flush=True)
        per_record = max(rows["exercises", n_exercises][1] - rows["exercises", n_small][1], 0) * 2 ** 30 / max(
            n_exercises - n_small, 1)
        print(f"dedup memory per record (main process, {n_small} -> {n_exercises} records): {per_record:.0f} B")
        decon = {}
        for kind, path, n, w in (("exercises", small, n_small, 1), ("exercises", small, n_small, workers),
                                 ("textbooks", tb, n_textbooks, workers)):
            rate, per, gb, _, line = run("decontaminate", path, n, w, "--tau=0.95,0.9,0.85,0.8")
            decon[kind, w] = rate, per
            print(f"decontaminate {kind:9s} {n:7d}, 4 thresholds, {w} worker(s): {line} | before (1 core, 1 "
                  f"threshold, exercises): {BEFORE_DECONTAMINATE[0]} records/s, {BEFORE_DECONTAMINATE[1]} GB | "
                  f"{load()}", flush=True)
        (r1, p1), (r2, p2) = decon["exercises", 1], decon["exercises", workers]
        print(f"decontaminate, 1 -> {workers} workers: {r2 / r1:.2f}x wall clock at this load; "
              f"{workers * p1 / p2:.2f}x on idle cores (from CPU time per record)")
        base_gb = rows["exercises", n_small][1] - per_record * n_small / 2 ** 30
        for kind, n, d, c in (("exercises", 880_000, rows["exercises", n_exercises][0], workers / p2),
                              ("textbooks", 1_300_000, rows["textbooks", n_textbooks][0],
                               workers / decon["textbooks", workers][1])):
            print(f"projection for {n:,} {kind} on {workers} idle cores: dedup {fmt_time(n / d)}, decontaminate "
                  f"(4 thresholds) {fmt_time(n / c)}, dedup memory {base_gb + per_record * n / 2 ** 30:.2f} GB")
    finally:
        if not folder:
            shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- CLI
def _taus(value):
    try:
        taus = tuple(float(x) for x in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected thresholds like 0.95,0.9,0.85,0.8, got {value!r}") from None
    if not taus or any(t <= 0 for t in taus):
        raise argparse.ArgumentTypeError(f"thresholds must be positive, got {value!r}")
    return taus


def _bool(value):
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _input_lines(path):
    """The offsets of the lines of a JSONL input (checked to exist; its records are checked as they are read)."""
    return np.array([off for _, off, _ in jsonl_lines(path)], dtype=np.int64)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="synth.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawTextHelpFormatter)
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
        g.add_argument("--concurrency", type=int, default=CONCURRENCY, help="requests in flight")
        g.add_argument("--temperature", type=float, default=TEMPERATURE)
        g.add_argument("--max_tokens", type=int, default=MAX_TOKENS[kind])
        g.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
        g.add_argument("--max_retries", type=int, default=6)
        g.add_argument("--give_up_after", type=int, default=GIVE_UP_AFTER, help="stop after N rejections in a row")
        if kind == "exercises":
            g.add_argument("--verify", action="store_true", help="ask for asserts and run them in eval.py's sandbox")
        g.add_argument("--against", action="append", help="benchmarks to decontaminate against (default humaneval)")
        g.add_argument("--no_decontaminate", action="store_true")
        g.add_argument("--tau", type=_taus, default=(TAU,), help="AST thresholds, e.g. 0.95,0.9,0.85,0.8: each is "
                       "reported, the first one writes the data")
        g.add_argument("--workers", type=int, default=None, help="processes for the final pass (default: all cores)")
        g.add_argument("--dry_run", type=_bool, default=False, help="True: print the plan and its cost, send nothing")
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
    d.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    dc = sub.add_parser("decontaminate", help=f"remove {NGRAM}-gram and AST matches with benchmarks")
    dc.add_argument("input")
    dc.add_argument("--against", action="append", help="'humaneval' or a HumanEval/MBPP-format jsonl (repeatable)")
    dc.add_argument("--tau", type=_taus, default=(TAU,), help="AST thresholds, e.g. 0.95,0.9,0.85,0.8: each one's "
                    "removals are reported, the first one's data written")
    dc.add_argument("--out", help="default: INPUT with .decontaminated.jsonl; report next to it (.json)")
    dc.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    rp = sub.add_parser("report", help="diversity report")
    rp.add_argument("input")
    bn = sub.add_parser("bench", help="records/s and peak memory of dedup and decontaminate on corpora built "
                        "from the standard library")
    bn.add_argument("--dir", default=None, help="where to build the corpora, kept and reused by the next run "
                    "(default: a temporary directory, deleted afterwards)")
    bn.add_argument("--exercises", type=int, default=100_000)
    bn.add_argument("--textbooks", type=int, default=20_000)
    a = ap.parse_args(argv)
    try:
        run(a)
    except SynthError as e:
        print(f"synth.py: error: {e}", file=sys.stderr)
        raise SystemExit(e.code) from None
    except DataError as e:  # an input or output file that is not JSONL
        print(f"synth.py: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except LLMError as e:  # e.g. no server at --base_url: the client gives up on the first requests
        print(f"synth.py: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print("synth.py: interrupted (every accepted record is kept in the .raw.jsonl: run the same command "
              "again to resume)", file=sys.stderr, flush=True)
        os._exit(130)  # files are closed; skip the interpreter's shutdown, seconds long once torch is loaded
    finally:
        if getattr(a, "out", None) and a.cmd in ("textbook", "exercises"):  # no empty files from a failed start
            for path in paths_for(Path(a.out)).values():
                if path.suffix == ".jsonl" and path.exists() and path.stat().st_size == 0:
                    path.unlink()


def run(a):
    workers = getattr(a, "workers", None) or default_workers()
    if a.cmd in ("textbook", "exercises"):
        if (a.n_samples or a.n_tokens or 0) <= 0:
            raise SynthError("the target size must be positive")
        generate(a.cmd, a.out, n_samples=a.n_samples, n_tokens=a.n_tokens, seed=a.seed, base_url=a.base_url,
                 model=a.model, concurrency=a.concurrency, temperature=a.temperature, max_tokens=a.max_tokens,
                 verify=getattr(a, "verify", False), timeout=a.timeout, max_retries=a.max_retries,
                 give_up_after=a.give_up_after, against=() if a.no_decontaminate else (a.against or ["humaneval"]),
                 tau=a.tau, workers=workers, dry_run=a.dry_run)
    elif a.cmd == "preview":
        for i in range(a.start, a.start + a.n):
            c = draw_constraints(a.kind, a.seed, i)
            print(f"=== {record_id(a.kind, a.seed, i)} {json.dumps(c)}")
            for m in build_messages(a.kind, c, a.verify):
                print(f"[{m['role']}] {m['content']}")
    elif a.cmd == "dedup":
        t0 = time.time()
        offsets = _input_lines(a.input)
        keep, rem = dedup_lines(a.input, offsets, a.threshold, workers)
        out = a.out or str(Path(a.input).with_suffix(".dedup.jsonl"))
        copy_lines(a.input, offsets[keep], out)
        print(f"dedup: {len(offsets)} records, removed {rem['exact']} exact and {rem['near']} near duplicates "
              f"(Jaccard >= {a.threshold}), kept {int(keep.sum())} -> {out}{_rate(len(offsets), t0, workers)}")
    elif a.cmd == "decontaminate":
        t0 = time.time()
        offsets = _input_lines(a.input)
        out = Path(a.out or Path(a.input).with_suffix(".decontaminated.jsonl"))
        reports, _ = decontaminate_lines(a.input, offsets, load_benchmarks(a.against or ["humaneval"]), a.tau,
                                         workers, out)
        write_text_atomic(out.with_suffix(".report.json"), json.dumps(_main_and_others(reports), indent=1))
        for rep in reports:
            print(_decon_summary(rep))
        print(f"wrote {reports[0]['kept']} records (tau {a.tau[0]}) to {out} (removed items and matched tasks: "
              f"{out.with_suffix('.report.json')}){_rate(len(offsets), t0, workers)}")
    elif a.cmd == "report":
        offsets = _input_lines(a.input)
        _, div = decontaminate_lines(a.input, offsets, None, (TAU,), workers, None, diversity=True)
        print(json.dumps(div, indent=1))
    elif a.cmd == "bench":
        bench(a.dir, a.exercises, a.textbooks, workers)


def _rate(n, t0, workers):
    s = time.time() - t0
    return f" in {s:.1f} s ({n / max(s, 1e-9):.0f} records/s on {workers} worker{'s' * (workers > 1)})"


def copy_lines(path, offsets, out):
    """The lines of `path` at `offsets`, in that order, into `out` (atomically)."""
    reader, tmp = LineReader(path), Path(str(out) + ".tmp")
    try:
        with open(tmp, "wb") as f:
            for off in offsets:
                f.write(reader(off))
    finally:
        reader.close()
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
