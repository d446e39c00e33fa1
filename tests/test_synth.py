"""Tests for synth.py: seeded prompts, exercise checks, dedup, decontamination (and the command line
of decontaminate.py), and resumable generation through a fake OpenAI-compatible server with injected
faults (plus an opt-in run through a real llama.cpp server)."""
import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

import configurator
import decontaminate
import dedup
import synth
from configurator import UserError
from fake_openai import FakeOpenAIServer, closed_port_url, interrupt_after
from files import read_jsonl

REPO = Path(__file__).resolve().parent.parent
MBPP = REPO / "assets" / "mbpp.jsonl"


# ----------------------------------------------------------------------------- a fake "LLM"
def fake_reply(messages, body):
    """A reply that depends only on the prompt: a textbook section, or an exercise (with asserts
    when asked), and on purpose some prose-only, broken and wrong answers, so that checking has
    something to drop."""
    user = messages[-1]["content"]
    h = zlib.crc32(user.encode())
    time.sleep(0.02)
    if "textbook" in user:
        topic = re.search(r'on "([^"]+)"', user).group(1)
        words = " ".join(f"w{(h >> i) % 997}" for i in range(40))
        return (f"# {topic}\n\nLet us study {topic}. {words}\n\n```python\nx = {h % 100}\n"
                "print(x * 2)\n```\n")
    name = re.search(r"named `(\w+)`", user).group(1)
    if h % 7 == 0:
        return "I am sorry, I cannot write code today, but here is an explanation in prose."
    if h % 7 == 1:
        return f"```python\ndef {name}(xs:\n    return\n```"
    k = h % 1000
    wrong = 1 if h % 7 == 2 else 0     # a wrong reference solution: only --verify can notice
    tests = (f"\nassert {name}([1, 2]) == {3 + k}\nassert {name}([]) == {k}\n"
             if "assert" in user else "")
    return (f"Here is the exercise.\n```python\nimport math\n\n\ndef {name}(xs: list) -> int:\n"
            f'    """Return the sum of xs plus {k} (exercise {h}).\n\n'
            f'    >>> {name}([1])\n    {1 + k}\n    """\n'
            f"    # add the offset {k}\n    total = {k} + {wrong}\n    for x in xs:\n"
            f"        total += x\n    return total\n{tests}```\n")


def read(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# ----------------------------------------------------------------------------- prompts
def test_prompts_are_seeded():
    assert len(synth.TAXONOMY) >= 100 and all(len(s) >= 3 for s in synth.TAXONOMY.values())
    for kind in ("textbook", "exercises"):
        a = [synth.build_messages(kind, synth.draw_constraints(kind, 1, i)) for i in range(50)]
        b = [synth.build_messages(kind, synth.draw_constraints(kind, 1, i)) for i in range(50)]
        c = [synth.build_messages(kind, synth.draw_constraints(kind, 2, i)) for i in range(50)]
        assert a == b
        assert sum(x != y for x, y in zip(a, c)) >= 45
        assert len({m[-1]["content"] for m in a}) == 50
    draws = [synth.draw_constraints("exercises", 0, i) for i in range(500)]
    assert len({d["function_name"] for d in draws}) >= 480
    assert len({d["topic"] for d in draws}) >= 90
    assert {m for d in draws for m in d["modules"]} == set(synth.STDLIB_MODULES)
    # the prompt actually carries the constraints
    d = draws[0]
    text = synth.build_messages("exercises", d, verify=True)[-1]["content"]
    assert d["function_name"] in text and d["subtopic"] in text and "assert" in text


# ----------------------------------------------------------------------------- checking exercises
def test_parse_exercise():
    reply = ('Here is the exercise.\n```python\nimport math\n\n\ndef add_up(xs: list) -> int:\n'
             '    """Sum xs.\n\n    >>> add_up([1])\n    1\n    """\n    # a comment\n'
             '    total = 0\n    for x in xs:\n        total += x\n    return total\n\n\n'
             'print(add_up([2]))\nassert add_up([1, 2]) == 3\nassert add_up([]) == 0\n```\n'
             'That is all.')
    ex, reason = synth.parse_exercise(reply)
    assert reason is None and ex["entry_point"] == "add_up" and len(ex["tests"]) == 2
    assert ex["text"] == ex["prompt"] + ex["completion"]
    assert ex["prompt"].rstrip().endswith('"""') and "return total" in ex["completion"]
    assert "assert" not in ex["text"] and "Here is" not in ex["text"] and "print" not in ex["text"]
    tree = ast.parse(ex["text"])
    assert [type(n).__name__ for n in tree.body] == ["Import", "FunctionDef"]
    cases = {"Sure! Functions are great.": "no_code",
             "```python\ndef f(:\n```": "unparsable",
             "Code without a fence:\ndef f(:\n    return": "unparsable",
             "```python\ndef f():\n    return 1\n```": "no_docstring",
             '```python\ndef f():\n    """Doc."""\n    pass\n```': "no_body",
             '```python\ndef f():\n    """a"""\n    return 1\n\ndef g():\n    """b"""\n'
             '    return 2\n```': "several_functions",
             "```python\nx = 1\n```": "no_function"}
    for reply, want in cases.items():
        assert synth.parse_exercise(reply) == (None, want), reply


# ----------------------------------------------------------------------------- dedup and diversity
def test_dedup_and_diversity():
    base = [f"def f{i}(xs):\n    '''Topic {i}: " + " ".join(f"word{i}_{j}" for j in range(80))
            + "'''\n    return xs\n" for i in range(20)]
    near = base[3].replace("word3_7 ", "changed ")          # one word of ~90 changed
    records = [{"id": str(i), "text": t} for i, t in enumerate(base)]
    records += [{"id": "exact", "text": "  " + base[5].replace("\n", " \n")},   # only whitespace
                {"id": "near", "text": near}]
    kept, rem = dedup.dedup_records(records)
    assert [r["id"] for r in kept] == [str(i) for i in range(20)]
    assert rem["exact"] == 1 and rem["near"] == 1 and rem["pairs"] == [["near", "3"]]
    d = synth.diversity([
        {"id": "a", "text": "a b c a b c", "constraints": {"topic": "x", "function_name": "f"}},
        {"id": "b", "text": "a b d", "constraints": {"topic": "y", "function_name": "f"}}])
    assert d["distinct_topics"] == 2 and d["distinct_function_names"] == 1
    assert d["distinct_1gram_ratio"] == round(4 / 9, 4)
    assert d["distinct_2gram_ratio"] == round(4 / 7, 4)


def cli(argv, capsys, main=synth.main, prog="synth.py"):
    """A command line in this process: (exit status, the lines it printed on stderr)."""
    with pytest.raises(SystemExit) as exit_:
        configurator.cli(main, argv, prog=prog)
    return exit_.value.code, capsys.readouterr().err.strip().splitlines()


def test_report_and_preview(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    texts = ["def a():\n    return 1\n", "def a():\n    return 1\n",
             "def b(x):\n    return x * 2\n"]
    data.write_text("".join(json.dumps({"text": t, "constraints": {"topic": str(i)}}) + "\n"
                            for i, t in enumerate(texts)))
    synth.main(["report", str(data)])
    assert json.loads(capsys.readouterr().out)["distinct_topics"] == 3
    synth.main(["preview", "exercises", "--seed=3", "--n=2", "--verify=True"])
    out = capsys.readouterr().out
    assert out.count("=== exercises-s3-") == 2 and "assert statements" in out
    assert "=== textbook" not in out
    (tmp_path / "bad.jsonl").write_text('{"no_text": 1}\n')
    status, err = cli(["report", str(tmp_path / "bad.jsonl")], capsys)
    assert status == 2
    assert err == [f"synth.py: error: {tmp_path / 'bad.jsonl'}: record 0 has no 'text' field"]


def test_preview_without_a_kind_shows_both(capsys):
    """`synth.py preview` alone: the prompts of both kinds (it was an error), and --help names
    them."""
    synth.main(["preview", "--n=2", "--start=5"])
    out = capsys.readouterr().out
    ids = re.findall(r"^=== (\S+)", out, re.M)
    assert ids == [synth.record_id(kind, 0, i) for kind in synth.KINDS for i in (5, 6)]
    assert out.count("[system] ") == out.count("[user] ") == 4
    with pytest.raises(SystemExit) as exit_:
        synth.main(["preview", "--help"])
    assert exit_.value.code == 0
    assert "[KIND]: textbook or exercises (default: both)" in capsys.readouterr().out


def test_command_line_convention(tmp_path, capsys):
    """--key=value only, booleans as --key=True, comma lists; every mistake is one line and exit 2,
    and nothing is written."""
    out = f"--out={tmp_path / 'ex.jsonl'}"
    n = "--n_samples=5"
    cases = {
        ("exercises", "--out", str(tmp_path / "ex.jsonl"), n): "expected --key=value, got '--out'",
        ("exercises", out, "--n_sample=5"): "unknown key 'n_sample' in the command line; did you "
                                            "mean --n_samples?",
        ("exercises", out): "give the target size: --n_samples=N or --n_tokens=N (one of them)",
        ("exercises", out, n, "--n_tokens=9"): "--n_samples=N or --n_tokens=N (one of them)",
        ("exercises", n): "--out=PATH is required",
        ("exercises", out, n, "--verify"): "expected --key=value, got '--verify'",
        ("textbook", out, n, "--verify=True"): "unknown key 'verify'",
        ("exercises", out, n, "--tau=0.9,high"): "--tau=0.9,high: expected positive thresholds",
        ("exercises", out, n, "--against", "mbpp"): "expected --key=value, got '--against'",
        ("exercises", out, n, "--against=,"): "--against=,: name a benchmark",
        ("exercises", out, n, "--decontaminate=perhaps"): "--decontaminate=perhaps: expected "
                                                          "bool",
        ("report",): "expected one INPUT file, got none",
        ("preview", "lectures"): "expected a KIND (textbook or exercises; none: both), got "
                                 "lectures",
        ("preview", "textbook", "exercises"): "expected a KIND",
        ("bench",): "unknown command 'bench'",
    }
    for argv, message in cases.items():
        status, err = cli(list(argv), capsys)
        assert status == 2 and len(err) == 1 and err[0].startswith("synth.py: error: "), (argv, err)
        assert message in err[0], (argv, err)
    assert list(tmp_path.iterdir()) == []


def test_old_names_say_what_replaced_them(tmp_path, capsys):
    """--no_decontaminate (now --decontaminate=True|False) and the dedup and decontaminate commands
    (now dedup.py and decontaminate.py): one line naming the new key or command, exit 2, nothing
    sent or written."""
    out, n = f"--out={tmp_path / 'ex.jsonl'}", "--n_samples=5"
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"text": "def f():\n    return 1\n"}) + "\n")
    cases = {
        ("exercises", out, n, "--no_decontaminate=True"):
            "synth.py: error: --no_decontaminate is now --decontaminate=True|False "
            "(--no_decontaminate=True is --decontaminate=False)",
        ("textbook", "--no_decontaminate=False", out, n):
            "synth.py: error: --no_decontaminate is now --decontaminate=True|False "
            "(--no_decontaminate=True is --decontaminate=False)",
        ("dedup", str(data), "--threshold=0.9"):
            "synth.py: error: `synth.py dedup` is now `python dedup.py INPUT` (the same keys)",
        ("decontaminate", str(data)):
            "synth.py: error: `synth.py decontaminate` is now `python decontaminate.py INPUT` "
            "(the same keys)",
    }
    for argv, message in cases.items():
        assert cli(list(argv), capsys) == (2, [message]), argv
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl"]


def test_a_failed_pass_keeps_the_previous_output(tmp_path, capsys):
    """A record without text half-way through the input: exit 2 naming it, the output file of an
    earlier run intact, no temporary file left behind."""
    lines = [json.dumps({"id": str(i), "text": f"def f{i}(x):\n    return x + {i}\n"})
             for i in range(300)]
    lines[200] = json.dumps({"id": "200", "body": "no text"})
    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(lines) + "\n")
    for module, name in ((decontaminate, "d.decontaminated.jsonl"), (dedup, "d.dedup.jsonl")):
        (tmp_path / name).write_text("an earlier run's output\n")
        prog = f"{module.__name__}.py"
        status, err = cli([str(data), "--workers=1"], capsys, module.main, prog)
        assert status == 2 and err == [f"{prog}: error: {data}: record 200 has no 'text' field"]
        assert (tmp_path / name).read_text() == "an earlier run's output\n"
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["d.decontaminated.jsonl", "d.dedup.jsonl", "d.jsonl"]


# ----------------------------------------------------------------------------- decontamination
class _Rename(ast.NodeTransformer):
    """Renames the function, its arguments and its local variables; leaves builtins and attributes
    alone."""
    def __init__(self, names):
        self.map = {n: f"v{i}" for i, n in enumerate(sorted(names))}

    def visit_Name(self, node):
        node.id = self.map.get(node.id, node.id)
        return node

    def visit_arg(self, node):
        node.arg = self.map.get(node.arg, node.arg)
        return node

    def visit_FunctionDef(self, node):
        node.name = self.map.get(node.name, node.name)
        self.generic_visit(node)
        return node


def disguise(src):
    tree = ast.parse(src)
    names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    names |= {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg)}
    names |= {n.id for n in ast.walk(tree)
              if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    tree = _Rename(names).visit(tree)
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef) and ast.get_docstring(fn) is not None:
            new_doc = "Completely new documentation written for this exercise."
            fn.body[0] = ast.Expr(ast.Constant(new_doc))
    lines = ast.unparse(tree).splitlines()
    return "\n".join(line + ("  # a fresh comment" if i % 2 else "")
                     for i, line in enumerate(lines)) + "\n"


UNRELATED = [
    'def count_vowels(s: str) -> int:\n    """Count vowels."""\n'
    '    return sum(1 for c in s.lower() if c in "aeiou")\n',
    'def fib(n: int) -> int:\n    """n-th Fibonacci number."""\n    a, b = 0, 1\n'
    '    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
    'def merge_intervals(iv):\n    """Merge overlapping intervals."""\n    out = []\n'
    '    for s, e in sorted(iv):\n        if out and s <= out[-1][1]:\n'
    '            out[-1][1] = max(out[-1][1], e)\n        else:\n'
    '            out.append([s, e])\n    return out\n',
    'import heapq\n\n\ndef k_smallest(xs, k):\n    """The k smallest items, sorted."""\n'
    '    return heapq.nsmallest(k, xs)\n',
    'class Stack:\n    """A stack."""\n    def __init__(self):\n        self.items = []\n\n'
    '    def push(self, x):\n        self.items.append(x)\n',
]


def test_decontaminate_planted_humaneval():
    from eval import load_problems
    he = load_problems("humaneval")
    tids = sorted(he)[:164:16]                         # 11 problems spread over the set
    bench = decontaminate.load_benchmarks(["humaneval"])
    solution = {t: he[t]["prompt"] + he[t]["canonical_solution"] for t in tids}
    recs = [{"id": f"planted-{t}", "text": solution[t]} for t in tids]
    recs += [{"id": f"disguised-{t}", "text": disguise(solution[t])} for t in tids]
    recs += [{"id": f"unrelated-{i}", "text": t} for i, t in enumerate(UNRELATED)]
    kept, rep = decontaminate.decontaminate_records(recs, bench)
    assert sorted(r["id"] for r in kept) == [f"unrelated-{i}" for i in range(len(UNRELATED))]
    by_id = {x["id"]: x for x in rep["removed"]}
    for t in tids:
        assert by_id[f"planted-{t}"]["reason"] == "13gram" and by_id[f"planted-{t}"]["task"] == t
    # the disguised copies share no 13-gram with the benchmark any more: the AST match alone
    # catches them
    disguised = [r for r in recs if r["id"].startswith("disguised")]
    # tau > 1 switches the AST match off
    _, rep13 = decontaminate.decontaminate_records(disguised, bench, tau=1.01)
    assert rep13["removed_13gram"] <= 2
    index = decontaminate.Benchmarks(bench)
    for r in disguised:
        matches = [index.best_match(s, decontaminate.TAU)
                   for s in decontaminate.function_signatures(r["text"])]
        assert (1.0, r["id"].removeprefix("disguised-")) in matches
    assert rep["removed_ast"] >= len(tids) - 2


def run_decontaminate(*args):
    return subprocess.run([sys.executable, "decontaminate.py", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_decontaminate_cli_humaneval_and_mbpp(tmp_path):
    """`python decontaminate.py`: a real run on tiny data, and bad input as one line and exit 2
    with nothing written."""
    if not MBPP.exists():
        pytest.skip(f"{MBPP} not found")
    mbpp = [json.loads(line) for line in MBPP.read_text().splitlines()[:50]]
    data = tmp_path / "data.jsonl"
    recs = [{"id": f"m{p['task_id']}", "text": p["code"]} for p in mbpp[:3]]
    recs += [{"id": f"u{i}", "text": t} for i, t in enumerate(UNRELATED)]
    data.write_text("".join(json.dumps(r) + "\n" for r in recs))
    out = run_decontaminate(data, "--against=humaneval,mbpp", "--workers=2")
    assert out.returncode == 0, out.stderr
    assert "against HumanEval, MBPP: checked 8" in out.stdout and "kept 5" in out.stdout
    assert re.search(r"records/s on 2 workers\)$", out.stdout.strip())   # what bench.py reads
    kept = read(tmp_path / "data.decontaminated.jsonl")
    assert [r["id"] for r in kept] == [f"u{i}" for i in range(len(UNRELATED))]
    rep = json.loads((tmp_path / "data.decontaminated.report.json").read_text())
    assert {x["task"] for x in rep["removed"]} == {f"MBPP/{p['task_id']}" for p in mbpp[:3]}
    written = sorted(p.name for p in tmp_path.iterdir())
    nope = tmp_path / "nope.jsonl"
    for args, message in (((nope,), f"{nope}: no such file"),
                          ((), "expected one INPUT file, got none"),
                          ((data, "--tau=high"), "--tau=high: expected positive thresholds"),
                          ((data, "--against=,"), "--against=,: name a benchmark"),
                          ((data, "--against=nope.jsonl"), "--against: "),
                          ((data, "--taus=0.9"), "unknown key 'taus' in the command line; did "
                                                 "you mean --tau?")):
        bad = run_decontaminate(*args)
        assert bad.returncode == 2, (args, bad.stderr)
        err = bad.stderr.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"decontaminate.py: error: {message}"), err
    assert sorted(p.name for p in tmp_path.iterdir()) == written


@pytest.mark.parametrize("module", [dedup, decontaminate])
def test_help_of_dedup_and_decontaminate_names_every_key(module):
    """`python dedup.py --help`, `python decontaminate.py --help`: the docstring with its example
    commands, then every key with its default and help line."""
    script = f"{module.__name__}.py"
    done = subprocess.run([sys.executable, script, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith(module.__doc__.strip().splitlines()[0])
    assert f"python {script} data/exercises.jsonl" in done.stdout
    for key, (default, text, *_) in module.OPTIONS.items():
        line = next(x for x in done.stdout.splitlines() if x.strip().startswith(f"--{key}="))
        assert f"--{key}={default!r}" in line and text.split()[0] in line, line


def test_thresholds_in_one_pass_equal_separate_runs(tmp_path, capsys):
    """--tau=0.95,0.9,0.85,0.8 on 2 workers reports for each threshold what a run at that threshold
    alone (1 worker) reports, and writes the first one's data. MBPP's solutions against HumanEval:
    lower tau removes more."""
    if not MBPP.exists():
        pytest.skip(f"{MBPP} not found")
    data = tmp_path / "mbpp.jsonl"
    data.write_text("".join(json.dumps({"id": f"m{p['task_id']}", "text": p["code"]}) + "\n"
                            for p in map(json.loads, MBPP.read_text().splitlines())))
    taus = [0.95, 0.9, 0.85, 0.8]
    decontaminate.main([str(data), f"--tau={','.join(map(str, taus))}", "--workers=2",
                        f"--out={tmp_path / 'all.jsonl'}"])
    printed = capsys.readouterr().out.splitlines()
    multi = json.loads((tmp_path / "all.report.json").read_text())
    reports = [{k: v for k, v in multi.items() if k != "other_taus"}] + multi["other_taus"]
    assert [r["tau"] for r in reports] == taus
    for tau, rep in zip(taus, reports):
        decontaminate.main([str(data), f"--tau={tau}", "--workers=1",
                            f"--out={tmp_path / f'{tau}.jsonl'}"])
        alone = json.loads((tmp_path / f"{tau}.report.json").read_text())
        assert rep == alone
        assert any(f"(tau {tau}), kept {rep['kept']}" in line for line in printed)
    assert (tmp_path / "all.jsonl").read_bytes() == (tmp_path / "0.95.jsonl").read_bytes()
    removed = [r["checked"] - r["kept"] for r in reports]
    assert removed == sorted(removed) and removed[0] < removed[-1]   # 4 < ... < ~100 of 974
    assert reports[0]["removed_13gram"] >= 1


# ----------------------------------------------------------------------------- generation
def generate(kind, out, srv, log=None, **settings):
    """synth.generate through the fake server, with these settings (quiet unless given a log)."""
    s = synth.Settings(kind, out, base_url=srv.base_url, model="fake", **settings)
    return synth.generate(s, log=log or open(os.devnull, "w"))


def _gen_cmd(url, out, n, extra=()):
    return [sys.executable, "synth.py", "exercises", f"--out={out}", f"--n_samples={n}",
            f"--base_url={url}", "--concurrency=4", "--timeout=1.0", "--model=fake", *extra]


def test_generation_faults_kill_and_resume(tmp_path, monkeypatch):
    n = 40
    faults = dict(fault_rate=0.25, faults=("429", "500", "garbage", "slow", "drop"),
                  slow_seconds=1.5)
    # reference: one uninterrupted run, in-process
    with FakeOpenAIServer(fake_reply, seed=1, **faults) as srv:
        rep = generate("exercises", tmp_path / "ref" / "ex.jsonl", srv, n_samples=n, concurrency=4,
                       timeout=1.0, against=())
        assert sum(srv.fault_counts.values()) > 5
    assert rep["generation"]["kept"] == n and rep["generation"]["rejected"]
    assert rep["decontamination"] is None
    # the same run killed midway (SIGKILL, so nothing gets to clean up), then resumed
    out = tmp_path / "run" / "ex.jsonl"
    raw = out.with_suffix(".raw.jsonl")
    with FakeOpenAIServer(fake_reply, seed=2, **faults) as srv:
        proc = subprocess.Popen(_gen_cmd(srv.base_url, out, n, ["--decontaminate=False"]),
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while time.time() < deadline and (not raw.exists()
                                          or raw.read_text().count("\n") < n // 3):
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # a kill mid-write may leave a torn last line: resuming drops it
        partial = [r for _, r in read_jsonl(raw, tail="repair")]
        assert n // 3 <= len(partial) < n, "the run was not killed midway"
        # resume in this process, watching every JSON decode: until the first request reaches the
        # server, the resume reads only the heads of the raw and rejected lines (id, kind, seed,
        # index, tokens), no text; at most the torn last line a kill leaves is decoded, to see
        # whether it is whole
        decoded, loads = [], json.loads
        srv.requests.clear()
        monkeypatch.setattr(synth.json, "loads",
                            lambda s, *a, **k: decoded.append(len(srv.requests))
                            or loads(s, *a, **k))
        log = io.StringIO()
        generate("exercises", out, srv, n_samples=n, concurrency=4, timeout=1.0, against=(),
                 workers=2, log=log)
        # (the final pass decodes every record)
        assert sum(r == 0 for r in decoded) <= 1 and len(decoded) > n
        assert f"resuming with {len(partial)} records" in log.getvalue() and "ETA" in log.getvalue()
    ref, got = read(tmp_path / "ref" / "ex.jsonl"), read(out)
    assert got == ref                                   # same records, same order, nothing lost
    ids = [r["id"] for r in read(raw)]
    assert len(ids) == len(set(ids)) == n               # nothing duplicated in the raw file
    rejected = read(out.with_suffix(".rejected.jsonl"))
    indices = sorted([r["index"] for r in read(raw)] + [r["index"] for r in rejected])
    assert indices == list(range(len(indices)))         # a prefix of indices, no holes
    assert {r["reason"] for r in rejected} <= {"no_code", "unparsable"}
    # drawn in another process (another PYTHONHASHSEED): the seeded draws are the same there
    for r in got:
        assert r["constraints"] == synth.draw_constraints("exercises", 0, r["index"])
        assert r["entry_point"] == r["constraints"]["function_name"]
        assert r["text"].startswith("import math")
    report = json.loads(out.with_suffix(".report.json").read_text())
    assert report["diversity"]["distinct_function_names"] >= n - 2
    assert report["decontamination"] is None            # --decontaminate=False

def test_verify_drops_wrong_solutions(tmp_path):
    out = tmp_path / "ex.jsonl"
    with FakeOpenAIServer(fake_reply) as srv:
        rep = generate("exercises", out, srv, n_samples=12, concurrency=2, verify=True,
                       against=("humaneval",))
        assert all("assert" in b["messages"][-1]["content"] for b in srv.requests)
    rejected = read(out.with_suffix(".rejected.jsonl"))
    n_failed = sum(r["reason"] == "failed_tests" for r in rejected)
    assert rep["generation"]["rejected"].get("failed_tests", 0) == n_failed > 0
    assert rep["decontamination"]["checked"] == 12 and rep["decontamination"]["kept"] == 12
    planted_wrong = lambda r: zlib.crc32(  # noqa: E731  (fake_reply's rule for a wrong solution)
        synth.build_messages("exercises", r["constraints"], True)[-1]["content"].encode()) % 7 == 2
    for r in read(out):
        assert r["verified"] and len(r["tests"]) == 2 and not planted_wrong(r)
    for r in rejected:
        assert (r["reason"] == "failed_tests") == planted_wrong(r)
        assert r["reason"] != "failed_tests" or r["result"].startswith("failed: AssertionError")


def test_resume_refuses_another_seed(tmp_path):
    out = tmp_path / "ex.jsonl"
    with FakeOpenAIServer(fake_reply) as srv:
        generate("exercises", out, srv, n_samples=2, against=())
        refused = "records of seed 0; resume with the same kind and --seed"
        with pytest.raises(UserError, match=refused):
            generate("exercises", out, srv, n_samples=4, seed=1, against=())


def test_textbook_token_target(tmp_path):
    from tokenizer import get_tokenizer
    out = tmp_path / "tb.jsonl"
    with FakeOpenAIServer(fake_reply) as srv:
        rep = generate("textbook", out, srv, n_tokens=1500, concurrency=4, against=("humaneval",))
    raw = read(out.with_suffix(".raw.jsonl"))
    tok = get_tokenizer()
    total = sum(len(tok.encode(r["text"])) for r in raw)
    # stops soon after
    assert total >= 1500 and total - len(tok.encode(raw[-1]["text"])) < 1500 + 4 * 200
    assert rep["generation"]["kept_tokens"] == total
    assert all({"topic", "subtopic", "audience", "style"} <= set(r["constraints"]) for r in raw)
    assert rep["generation"]["usage_this_run"]["completion_tokens"] > 0


def test_dry_run_prints_the_plan_only(tmp_path, capsys):
    out = tmp_path / "ex.jsonl"
    synth.main(["exercises", f"--out={out}", "--n_samples=500", "--base_url=http://127.0.0.1:9/v1",
                "--dry_run=True"])
    err = capsys.readouterr().err
    # it says what a run would write, and writes nothing
    assert err.splitlines()[0] == (f"[exercises] seed 0: new run, would write "
                                   f"{out.with_suffix('.raw.jsonl')} (dry run: nothing is sent "
                                   "or written)")
    plan = [line for line in err.splitlines() if "plan:" in line]
    assert len(plan) == 1 and "500 more samples in about 500 requests" in plan[0]
    per = int(re.search(r"\((\d+) per request\)", plan[0]).group(1))
    assert 60 < per < 200                               # an exercise prompt is ~100 tokens
    assert f"at most {500 * synth.MAX_TOKENS['exercises']:,} completion tokens" in plan[0]
    assert list(tmp_path.iterdir()) == []               # nothing sent, nothing written
    with pytest.raises(SystemExit) as exit_:
        configurator.cli(synth.main, ["exercises", f"--out={out}", "--n_samples=5",
                                      "--dry_run=maybe"])
    assert exit_.value.code == 2


def test_dry_run_of_a_started_run(tmp_path, capsys):
    """A dry run over a run's files: it would resume, and leaves a torn last line as it is."""
    out = tmp_path / "ex.jsonl"
    raw = out.with_suffix(".raw.jsonl")
    with FakeOpenAIServer(fake_reply) as srv:
        generate("exercises", out, srv, n_samples=3, against=())
    with open(raw, "a") as f:
        f.write('{"id": "exercises-s0-0000')                # what a kill mid-write leaves
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    synth.main(["exercises", f"--out={out}", "--n_samples=10", "--dry_run=True"])
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("[exercises] seed 0: would resume with 3 records (")
    assert first.endswith(f"from {raw} (dry run: nothing is sent or written)")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_requests_stay_in_flight(tmp_path):
    """One slow answer does not hold the others up: while it is outstanding, the other slots keep
    working (the old rounds of 4 x concurrency requests waited for their slowest)."""
    slow_seed = zlib.crc32(synth.record_id("textbook", 0, 1).encode())
    times = {}

    def reply(messages, body):
        start = time.time()
        if body.get("seed") == slow_seed:
            time.sleep(3.0)
        times[body.get("seed")] = (start, time.time())
        return fake_reply(messages, body)

    with FakeOpenAIServer(reply) as srv:
        rep = generate("textbook", tmp_path / "tb.jsonl", srv, n_tokens=3000, concurrency=2,
                       against=())
    s0, s1 = times[slow_seed]
    during = [seed for seed, (a, b) in times.items() if seed != slow_seed and a > s0 and b < s1]
    # more than a whole old round went by while it was outstanding
    assert len(during) > 4 * 2, len(during)
    assert rep["generation"]["selected_tokens"] >= 3000


# ----------------------------------------------------------------------------- opt-in: llama.cpp
@pytest.mark.skipif(not os.environ.get("PHI1_LLAMA_URL"),
                    reason="set PHI1_LLAMA_URL=http://127.0.0.1:PORT/v1")
def test_real_llama_server_end_to_end(tmp_path):
    """Plumbing through a real server: textbooks, exercises, verified exercises, each deduplicated
    and decontaminated. The 135M model of serve_llm.sh rarely writes a valid exercise, so the test
    accepts rejections but checks that every request is accounted for; a low temperature gives it
    its best chance."""
    url = os.environ["PHI1_LLAMA_URL"]
    model = os.environ.get("PHI1_LLAMA_MODEL", "smollm2")   # serve_llm.sh's alias
    for name, kind, extra in (("tb", "textbook", []), ("ex", "exercises", []),
                              ("exv", "exercises", ["--verify=True"])):
        out = tmp_path / f"{name}.jsonl"
        cmd = [sys.executable, "synth.py", kind, f"--out={out}", "--n_samples=2",
               f"--base_url={url}", f"--model={model}", "--concurrency=2", "--max_tokens=384",
               "--temperature=0.3", "--timeout=300", "--give_up_after=4", *extra]
        res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
        print(res.stderr)
        assert res.returncode == 0, res.stderr
        report = json.loads(out.with_suffix(".report.json").read_text())
        gen, final = report["generation"], read(out)
        n_lines = (len(read(out.with_suffix(".raw.jsonl")))
                   + len(read(out.with_suffix(".rejected.jsonl"))))
        assert gen["kept"] + sum(gen["rejected"].values()) == n_lines >= 2
        assert gen["usage_this_run"]["completion_tokens"] > 0
        decon = report["decontamination"]
        assert decon["checked"] == len(final) + len(decon["removed"])
        for r in final:
            assert r["constraints"] == synth.draw_constraints(kind, 0, r["index"])
            if kind == "exercises":
                assert synth.parse_exercise(r["text"])[1] is None
                assert r["verified"] == bool(extra)
    # a textbook section is just text: the small model manages that
    assert read(tmp_path / "tb.jsonl")


def test_a_server_that_is_not_there_fails_fast_and_leaves_nothing(tmp_path):
    url = closed_port_url()
    t0 = time.time()
    done = subprocess.run([sys.executable, str(Path(synth.__file__)), "exercises",
                           f"--out={tmp_path / 'ex.jsonl'}", "--n_samples=8", f"--base_url={url}"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert time.time() - t0 < 30 and done.returncode == 1 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("synth.py: error: cannot connect to") and url in done.stderr
    assert list(tmp_path.iterdir()) == []  # no empty .raw.jsonl / .rejected.jsonl behind


def test_ctrl_c_against_a_slow_server_stops_at_once(tmp_path):
    def reply(messages, body):
        time.sleep(30)
        return "never seen"

    with FakeOpenAIServer(reply) as srv:
        proc = subprocess.Popen([sys.executable, str(Path(synth.__file__)), "exercises",
                                 f"--out={tmp_path / 'ex.jsonl'}", "--n_samples=8",
                                 f"--base_url={srv.base_url}", "--concurrency=2"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        seconds, _, stderr = interrupt_after(proc, srv, 2)
    assert seconds < 2.0, f"Ctrl-C took {seconds:.1f} s"
    assert proc.returncode == 130 and "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("synth.py: interrupted") and "resume" in stderr
    assert str(tmp_path / "ex.raw.jsonl") in last   # where they are kept
