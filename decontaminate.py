"""
Decontamination of training data against the benchmarks (§5 of "Textbooks Are All You Need"): a
record goes if it shares a word 13-gram with a benchmark problem (prompt + canonical solution), or
if one of its functions matches a benchmark function's abstract syntax tree with a match rate of at
least tau.

§5 prunes CodeExercises against HumanEval this way (and by the L2 distance of CodeGen-350M
embeddings, which this file leaves out), at tau = 0.95, 0.9, 0.85 and 0.8, and retrains phi-1 on
what each keeps. The paper's AST match rate is an edit-distance similarity that ignores names,
comments and docstrings; it does not give the formula. Here each function becomes the sequence of
its syntax-tree node types in pre-order (so names, comments, docstrings and constant values never
count), and two sequences match at difflib's ratio. Every threshold asked for is decided in one
pass over the data (a record's verdict at the lowest tau says what each higher tau removes), on all
cores, streaming a JSONL file by byte offset: the paper's ~1 B tokens never sit in memory.

synth.py runs it on what it generates; on any JSONL file of records with a `text` field:

    python decontaminate.py data/exercises.jsonl      # -> data/exercises.decontaminated.jsonl
    python decontaminate.py data/exercises.jsonl --against=humaneval,mbpp --tau=0.95,0.9,0.85,0.8

writes the records the first threshold keeps, and beside them (.report.json) every removal with the
benchmark task it matched; one summary line per threshold. `mbpp` is the copy of MBPP that ships in
assets/mbpp.jsonl; any other HumanEval- or MBPP-format .jsonl file counts too.

    from decontaminate import load_benchmarks, decontaminate_records
    kept, report = decontaminate_records(records, load_benchmarks(["humaneval"]), tau=0.95)
"""

import ast
import difflib
import json
import re
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

import configurator
from configurator import UserError
from dedup import WORKERS, chunked, default_workers, parallel_map
from eval import EvalError, load_problems
from files import LineReader, atomic_write, input_jsonl, record_of, throughput

NGRAM = 13                   # §5: 13-gram overlap with the benchmark
TAU = 0.95                   # AST match rate threshold (§5 reports 0.95 / 0.9 / 0.85 / 0.8)


def load_benchmarks(against):
    """{task_id: prompt + canonical solution} for each source: "humaneval" or a
    HumanEval/MBPP-format jsonl. MBPP counts whole (all 974 problems, not only its test split):
    leaking its train split into training data would inflate the scores on its test split just the
    same."""
    bench = {}
    for src in against:
        try:
            problems = load_problems(src, split="all")
        except (EvalError, UserError) as e:
            raise UserError(f"--against: {e if src in str(e) else f'{src}: {e}'}") from None
        for tid, p in problems.items():
            key = tid if tid not in bench else f"{Path(src).name}:{tid}"
            bench[key] = p["prompt"] + p["canonical_solution"]
    return bench


# -----------------------------------------------------------------------------
# The two matches: word 13-grams, and functions' syntax trees

def ngrams(text, n=NGRAM):
    """The word n-grams of a text, in order. Lower-cased words only: punctuation runs such as ") ->
    List[int]:" would make generic 13-grams."""
    w = re.findall(r"\w+", text.lower())
    return [" ".join(w[i:i + n]) for i in range(len(w) - n + 1)]


_FENCE = re.compile(r"```[ \t]*(?:python|py|python3)?[ \t]*\n(.*?)(?:```|\Z)", re.S | re.I)


def code_blocks(text):
    """The ```python blocks of a text (a model's reply, a textbook section), a block left open
    included."""
    return [b for b in _FENCE.findall(text) if b.strip()]


# one character per AST node type, fixed by the ast module: every process spells a signature alike
_TYPE_CHAR = {name: chr(0x4E00 + i) for i, name in enumerate(sorted(
    name for name, c in vars(ast).items() if isinstance(c, type) and issubclass(c, ast.AST)))}
_DOC_OWNERS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_NO_BODY = [ast.Pass()]   # what a body that held only its docstring becomes


def _is_docstring(stmt):
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant)
            and isinstance(stmt.value.value, str))


def ast_signature(fn):
    """A function as a string of node types in pre-order (one character per type, so difflib works
    on str). Docstrings are left out (here and in nested functions and classes); names, comments and
    constant values never reach the node types anyway. An explicit stack, not recursion: this runs
    for every record."""
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
                if (field == "body" and isinstance(node, _DOC_OWNERS) and value
                        and _is_docstring(value[0])):
                    value = value[1:] or _NO_BODY
                children.extend(v for v in value if isinstance(v, ast.AST))
        stack.extend(reversed(children))
    return "".join(out)


def function_signatures(text):
    """AST signatures of all functions in `text`: the whole text if it parses (an exercise), else
    those of its ```python blocks that parse (a textbook section)."""
    sigs = _signatures(text)
    if sigs is None:
        sigs = [s for b in code_blocks(text) for s in (_signatures(b) or [])]
    return sigs


def _signatures(src):
    try:
        with warnings.catch_warnings():   # e.g. "invalid escape sequence": not ours to report
            warnings.simplefilter("ignore")
            tree = ast.parse(src)
    except (SyntaxError, ValueError):
        return None
    # top-level functions and methods: a nested helper is part of its function's signature
    tops = tree.body + [m for n in tree.body if isinstance(n, ast.ClassDef) for m in n.body]
    return [ast_signature(n) for n in tops
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _type_counts(sig):
    codes = np.frombuffer(sig.encode("utf-32-le"), dtype=np.uint32) - 0x4E00
    return np.bincount(codes, minlength=len(_TYPE_CHAR))


class Benchmarks:
    """What decontamination compares against: each benchmark 13-gram with its first task, and each
    benchmark function's AST signature with its node-type counts (for the quick_ratio bound of all
    of them in one numpy operation) and a difflib matcher that keeps the benchmark side's tables
    between records."""

    def __init__(self, bench):
        self.tasks = sorted({t.split("/")[0] for t in bench})
        self.gram_task = {}
        for task, src in bench.items():
            for g in ngrams(src):
                self.gram_task.setdefault(g, task)
        self.sigs = [(task, s) for task, src in bench.items() for s in function_signatures(src)]
        counts = [_type_counts(s) for _, s in self.sigs]
        self.counts = np.array(counts).reshape(len(self.sigs), len(_TYPE_CHAR))   # (B, types)
        self.lens = self.counts.sum(axis=1)
        self.matchers = {}

    def best_match(self, sig, tau):
        """Best (ratio, task) with difflib ratio >= tau, or None; the first task wins a tie."""
        # quick_ratio (2 x common node types / total length) bounds the ratio: prune with it, for
        # every benchmark function at once
        quick = 2 * np.minimum(self.counts, _type_counts(sig)).sum(axis=1) / (self.lens + len(sig))
        best = None
        for b in np.flatnonzero(quick >= tau).tolist():
            sm = self.matchers.get(b)
            if sm is None:
                sm = difflib.SequenceMatcher(None, "", self.sigs[b][1], autojunk=False)
                self.matchers[b] = sm
            sm.set_seq1(sig)
            ratio = sm.ratio()
            if ratio >= tau and (best is None or ratio > best[0]):
                best = (ratio, self.sigs[b][0])
        return best


def contamination(text, bench, min_tau):
    """What every threshold >= min_tau needs to know about one text: None (clean), ("13gram", task,
    gram) for the first benchmark 13-gram in it, or ("ast", [best (ratio, task) >= min_tau or None,
    one per function])."""
    hit = next((g for g in ngrams(text) if g in bench.gram_task), None)
    if hit:
        return ("13gram", bench.gram_task[hit], hit)
    best = [bench.best_match(s, min_tau) for s in function_signatures(text)]
    return ("ast", best) if any(best) else None


def removal_at(verdict, tau):
    """The removal of a text at threshold tau, from its contamination() verdict: None or {reason,
    task, ...}. At tau, the first function whose best ratio is >= tau decides, as a single run at
    tau would find."""
    if verdict is None:
        return None
    if verdict[0] == "13gram":
        return {"reason": "13gram", "task": verdict[1], "ngram": verdict[2]}
    m = next((m for m in verdict[1] if m and m[0] >= tau), None)
    return {"reason": "ast", "task": m[1], "ratio": round(m[0], 4)} if m else None


# -----------------------------------------------------------------------------
# One pass over the data, on all cores. On the way, a caller may measure what the first threshold
# keeps (`measure`: a class with add(records), merge(other) and summary(): synth.py's Diversity).

_WORKER = {}


def _init_worker(bench, taus, measure):
    _WORKER.update(bench=bench, taus=taus, measure=measure)


def _check_chunk(items):
    """A worker's share: each record's number and verdict (None when clean, or when there is nothing
    to compare against), and the measure of the records the first threshold keeps."""
    bench, taus, measure = _WORKER["bench"], _WORKER["taus"], _WORKER["measure"]
    out, kept = [], []
    for item in items:
        r = record_of(item)
        v = contamination(r["text"], bench, min(taus)) if bench else None
        out.append((item[0], (r["id"], v) if v else None))
        if measure and removal_at(v, taus[0]) is None:
            kept.append(r)
    return out, measure().add(kept) if measure else None


def _one_pass(items, bench, taus, workers, on_settled, measure=None, chunk=64):
    """The pass over `items` ((number, JSONL line or dict), in order) on `workers` processes: per
    threshold its report (None without a benchmark), the summary of `measure` over what the first
    threshold keeps, and, in order, on_settled(number, kept at the first threshold) for every
    record."""
    b = Benchmarks(bench) if bench else None
    removed = {t: [] for t in taus}
    total, checked = measure() if measure else None, 0
    for verdicts, part in parallel_map(_check_chunk, chunked(items, chunk), workers, _init_worker,
                                       (b, taus, measure)):
        for i, v in verdicts:
            checked += 1
            for t in taus:
                rm = removal_at(v[1], t) if v else None
                if rm:
                    removed[t].append({"id": v[0], **rm})
            on_settled(i, not (v and removal_at(v[1], taus[0])))
        if part:
            total.merge(part)
    reports = [{"checked": checked, "kept": checked - len(removed[t]), "tau": t,
                "benchmarks": b.tasks,
                "removed_13gram": sum(x["reason"] == "13gram" for x in removed[t]),
                "removed_ast": sum(x["reason"] == "ast" for x in removed[t]), "removed": removed[t]}
               for t in taus] if b else None
    return reports, total.summary() if measure else None


def decontaminate_records(records, bench, tau=TAU, workers=1):
    """Remove records sharing a 13-gram with a benchmark prompt+solution, or holding a function
    whose AST node-type sequence matches a benchmark function's with difflib ratio >= tau. Returns
    (kept, report). For lists in memory; files go through decontaminate_lines (several thresholds in
    one pass)."""
    kept = []
    reports, _ = _one_pass(enumerate(records), bench, (tau,), workers,
                           lambda i, keep: keep and kept.append(records[i]))
    return kept, reports[0]


def decontaminate_lines(path, offsets, bench, taus, workers, out=None, measure=None):
    """The pass over the JSONL lines of `path` at `offsets`: writes the lines the first threshold
    keeps to `out` (atomically; None: nowhere); returns (per-threshold reports or None without a
    benchmark, measure's summary)."""
    reader, result = LineReader(path), []
    lines = {}   # the lines of the chunks in flight, until they are settled

    def items():
        for i, off in enumerate(offsets):
            lines[i] = line = reader(off)
            yield i, line

    def write(f):
        def settle(i, keep):
            line = lines.pop(i)
            if keep and f:
                f.write(line)
        result.extend(_one_pass(items(), bench, taus, workers, settle, measure))

    try:
        if out:
            atomic_write(out, write)
        else:
            write(None)
    except ValueError as e:   # a record without text (a worker's error, or the reader's)
        raise UserError(f"{path}: {e}") from None
    finally:
        reader.close()
    return tuple(result)


def combined(reports):
    """The report of the first threshold, with those of the others under "other_taus" (None: none).
    """
    if not reports:
        return None
    return {**reports[0], "other_taus": reports[1:]} if len(reports) > 1 else reports[0]


def summary(report):
    """One line of a threshold's report: what was checked, removed by each match, kept, the most
    matched tasks."""
    top = Counter(x["task"] for x in report["removed"]).most_common(5)
    return (f"decontamination against {', '.join(report['benchmarks'])}: checked "
            f"{report['checked']}, removed {report['removed_13gram']} by {NGRAM}-gram overlap and "
            f"{report['removed_ast']} by AST match (tau {report['tau']}), kept {report['kept']}"
            + (f"; most matched: {top}" if top else ""))


# -----------------------------------------------------------------------------
# The command line: `python decontaminate.py INPUT --key=value ...` (synth.py shares its
# --against and --tau keys)

AGAINST = ("humaneval", "benchmarks to compare against, comma-separated: humaneval, mbpp, and "
           "HumanEval- or MBPP-format .jsonl files")
TAUS = (str(TAU), "AST match thresholds, e.g. 0.95,0.9,0.85,0.8: the removals of each are "
        "reported, the first one's applied")
OPTIONS = {
    "against": AGAINST, "tau": TAUS,
    "out": (None, "where the kept records go (default: INPUT with .decontaminated.jsonl); the "
            "report of the removals goes beside it (.report.json)", str),
    "workers": WORKERS,
}


def parse_against(text):
    """--against=humaneval,mbpp -> ("humaneval", "mbpp")."""
    sources = tuple(x for x in text.split(",") if x)
    if not sources:
        raise UserError(f"--against={text}: name a benchmark, e.g. --against=humaneval")
    return sources


def parse_taus(text):
    """--tau=0.95,0.9 -> (0.95, 0.9)."""
    try:
        taus = tuple(float(x) for x in text.split(","))
    except ValueError:
        taus = ()
    if not taus or any(t <= 0 for t in taus):
        raise UserError(f"--tau={text}: expected positive thresholds, e.g. 0.95,0.9,0.85,0.8")
    return taus


def main(argv):
    a = configurator.parse(argv, OPTIONS, __doc__,
                           args="INPUT (a JSONL file of records with a `text` field)")
    t0, workers = time.time(), a.workers or default_workers()
    taus, against = parse_taus(a.tau), parse_against(a.against)
    path, offsets = input_jsonl(a.args)
    bench = load_benchmarks(against)
    out = Path(a.out or Path(path).with_suffix(".decontaminated.jsonl"))
    reports, _ = decontaminate_lines(path, offsets, bench, taus, workers, out)
    atomic_write(out.with_suffix(".report.json"), json.dumps(combined(reports), indent=1))
    for rep in reports:
        print(summary(rep))
    print(f"wrote {reports[0]['kept']} records (tau {taus[0]}) to {out} (removed items and "
          f"matched tasks: {out.with_suffix('.report.json')})"
          f"{throughput(len(offsets), t0, workers)}")


if __name__ == "__main__":
    configurator.cli(main)
