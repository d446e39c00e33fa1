import ast
import builtins
import json
import keyword
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path

import configurator
import synth
from configurator import RunError, UserError
from data import Source
from dedup import default_workers
from files import fmt_time

SYNTH_OPTIONS = {
    "dir": (None, "where to build the corpora, kept and reused by the next run (default: a "
            "temporary directory, deleted afterwards)", str),
    "exercises": (100_000, "exercise-sized records (functions of the standard library)"),
    "textbooks": (20_000, "textbook-sized records (four of those functions between prose)"),
}
SYNTH_DOC = """python bench.py synth: records/s and peak memory of `synth.py dedup` and `synth.py
decontaminate` (4 thresholds) on corpora built from the standard library's functions, and what they
project for the paper's 880,000 exercises and 1.3 M textbook sections.

Each command runs in a fresh process. Besides its wall-clock rate (which on a shared machine depends
on what else runs), its CPU time, less that of the same command on an empty file (Python's start,
imports, loading the benchmarks), gives the CPU time per record, and from it the rate on otherwise
idle cores.

    python bench.py synth --exercises=5000 --textbooks=1000     # a minute on 2 cores
    python bench.py synth --dir=/tmp/synth-bench                # 100,000 + 20,000, corpora kept"""


def bench_synth(argv):
    a = configurator.parse(argv, SYNTH_OPTIONS, SYNTH_DOC)
    if a.exercises < 1 or a.textbooks < 1:
        raise UserError("--exercises and --textbooks must be at least 1")
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="synth-bench-"))
    workers = default_workers()
    try:
        t0 = time.time()
        paths = synth_corpora(tmp, a.exercises, a.textbooks)
        ex, tb, small = paths["exercises"], paths["textbooks"], paths["small"]
        n_small = min(20_000, a.exercises)
        print(f"{platform.node()}, {os.cpu_count()} CPUs, {workers} workers, {_loadavg()}, "
              f"{datetime.now():%Y-%m-%d %H:%M}")
        print(f"corpora in {tmp} ({time.time() - t0:.0f} s): {a.exercises} exercise-sized "
              f"records ({ex.stat().st_size / a.exercises:.0f} B of JSON each), {a.textbooks} "
              f"textbook-sized ({tb.stat().st_size / a.textbooks:.0f} B)")
        print(f"records/s: wall clock, without Python's start and imports; 'CPU' per record and "
              f"'idle' (the rate on {workers} otherwise idle cores) from the CPU time")
        dedup = {}
        for kind, path, n in (("exercises", small, n_small), ("exercises", ex, a.exercises),
                              ("textbooks", tb, a.textbooks)):
            m = run_synth("dedup", path, n, workers, tmp)
            dedup[kind, n] = m
            print(f"dedup {kind:9s} {n:7d}: {_synth_line(m)} | {_loadavg()}", flush=True)
        grow = dedup["exercises", a.exercises]["gb"] - dedup["exercises", n_small]["gb"]
        per_record = max(grow, 0) * 2 ** 30 / max(a.exercises - n_small, 1)
        print(f"dedup memory per record (main process, {n_small} -> {a.exercises} records): "
              f"{per_record:.0f} B")
        decon = {}
        for kind, path, n, w in (("exercises", small, n_small, 1),
                                 ("exercises", small, n_small, workers),
                                 ("textbooks", tb, a.textbooks, workers)):
            m = run_synth("decontaminate", path, n, w, tmp, "--tau=0.95,0.9,0.85,0.8")
            decon[kind, w] = m
            print(f"decontaminate {kind:9s} {n:7d}, 4 thresholds, {w} worker(s): "
                  f"{_synth_line(m)} | {_loadavg()}", flush=True)
        one, all_ = decon["exercises", 1], decon["exercises", workers]
        print(f"decontaminate, 1 -> {workers} workers: {all_['rate'] / one['rate']:.2f}x wall "
              f"clock at this load; {workers * one['cpu'] / all_['cpu']:.2f}x on idle cores (from "
              "CPU time per record)")
        base_gb = dedup["exercises", n_small]["gb"] - per_record * n_small / 2 ** 30
        for kind, n, d, c in (("exercises", 880_000, dedup["exercises", a.exercises],
                               decon["exercises", workers]),
                              ("textbooks", 1_300_000, dedup["textbooks", a.textbooks],
                               decon["textbooks", workers])):
            gb = base_gb + per_record * n / 2 ** 30
            print(f"projection for {n:,} {kind} on {workers} idle cores: dedup "
                  f"{fmt_time(n / d['idle'])}, decontaminate (4 thresholds) "
                  f"{fmt_time(n / c['idle'])}, dedup memory {gb:.2f} GB")
    finally:
        if not a.dir:
            shutil.rmtree(tmp, ignore_errors=True)


def synth_corpora(folder, n_exercises, n_textbooks):
    """exercises.jsonl: n_exercises standard-library functions (their renamed variants once the
    library runs out); textbooks.jsonl: n_textbooks sections of four of them in ```python blocks
    between lines of prose; exercises-small.jsonl: the first 20,000 exercises; empty.jsonl. Built
    once per folder, reused when their sizes match."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ("exercises", "textbooks", "small", "empty")
    paths = {name: folder / f"{name}.jsonl" for name in names}
    sizes = folder / "sizes.json"
    if sizes.exists() and json.loads(sizes.read_text()) == [n_exercises, n_textbooks]:
        return paths
    fns = stdlib_functions()
    with open(paths["exercises"], "w", encoding="utf-8") as f:
        for i in range(n_exercises):
            text = _renamed_copy(fns[i % len(fns)], i // len(fns))
            f.write(json.dumps({"id": f"ex{i}", "text": text}) + "\n")
    with open(paths["textbooks"], "w", encoding="utf-8") as f:
        for i in range(n_textbooks):
            ids = range(4 * i, 4 * i + 4)
            parts = [_renamed_copy(fns[j % len(fns)], j // len(fns)) for j in ids]
            text = "".join(f"## Part {k + 1}\n\nThe next function shows one more idea of this "
                           f"section; read it line by line.\n\n```python\n{p}```\n\n"
                           for k, p in enumerate(parts))
            f.write(json.dumps({"id": f"tb{i}", "text": text}) + "\n")
    with open(paths["exercises"], "rb") as f, open(paths["small"], "wb") as g:
        g.writelines(f.readline() for _ in range(min(20_000, n_exercises)))
    paths["empty"].write_text("")
    sizes.write_text(json.dumps([n_exercises, n_textbooks]))
    return paths


def stdlib_functions(min_bytes=300, max_bytes=2000):
    """Every function and method of this Python's standard library of that size, dedented (an
    exercise's shape), read through data.py's walk of the library."""
    out = []
    for _, src in Source("stdlib"):
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


def _renamed_copy(fn, v):
    """Copy v of a function: every identifier but keywords and builtins gets the suffix _v (v = 0:
    as it is), so copies share their AST but hardly a shingle, as exercises on one idea would."""
    if v == 0:
        return fn
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: m.group() if keyword.iskeyword(m.group())
                  or hasattr(builtins, m.group()) else f"{m.group()}_{v}", fn)


def run_synth(cmd, path, n, workers, tmp, *extra):
    """`synth.py CMD PATH` on n records and the same on an empty file: {rate (records/s as it prints
    them, without Python's start and imports), cpu (CPU seconds per record, the empty run's
    subtracted), idle (records/s on `workers` otherwise idle cores), gb and gb_all (peak RSS of the
    main process, and of it with its workers)}."""
    args = [f"--workers={workers}", f"--out={tmp / 'out.jsonl'}", *extra]
    rate, cpu, gb, gb_all = _measure_synth([cmd, str(path), *args])
    cpu0 = _measure_synth([cmd, str(tmp / "empty.jsonl"), *args])[1]
    per = max(cpu - cpu0, 1e-9) / n
    return {"rate": rate, "cpu": per, "idle": workers / per, "gb": gb, "gb_all": gb_all}


def _measure_synth(args):
    """Run `python synth.py ARGS` in a fresh process: (the records/s it prints; CPU seconds of it
    and its workers; peak RSS in GB of its main process; peak of the summed RSS of it and its
    workers). Memory is read from /proc every 20 ms (rusage's would count the bench's own: a
    child's peak starts from its parent's); CPU time is rusage's (the workers' included: they are
    waited for)."""
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, synth.__file__, *args], stdout=out)
        main_peak = all_peak = 0
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            main_peak = max(main_peak, _vm_hwm(proc.pid))
            all_peak = max(all_peak, tree_rss(proc.pid))   # bench.py's, from the data benchmark
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(code)
        out.seek(0)
        rate = re.search(r"\(([\d.]+) records/s on", out.read())
    if proc.returncode or not rate:
        raise RunError(f"bench: synth.py {' '.join(args)} failed ({proc.returncode})")
    cpu = usage.ru_utime + usage.ru_stime
    return float(rate.group(1)), cpu, main_peak / 2 ** 30, all_peak / 2 ** 30


def _vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0) * 1024
    except OSError:
        return 0


def _synth_line(m):
    return (f"{m['rate']:6.0f} records/s, CPU {m['cpu'] * 1e3:.2f} ms/record (idle "
            f"{m['idle']:6.0f} records/s), peak RSS {m['gb']:.2f} GB (with workers "
            f"{m['gb_all']:.2f} GB)")


def _loadavg():
    return "load %.2f %.2f %.2f" % os.getloadavg()
