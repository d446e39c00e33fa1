"""Tests for data.py: the tokenizer's one-call fast path, corpus readers over every source type with one rule for
bad input, token shards equal to Tokenizer.encode over the documents in order whatever the number of workers,
the content-hashed cache, small corpora, and Ctrl-C while tokenizing (at random moments, many times over)."""
import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
import files
from configurator import UserError
from tokenizer import EOT, WHITESPACE_RUN, get_tokenizer

REPO = Path(__file__).resolve().parent.parent
STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = ["textwrap.py", "string.py", "shlex.py", "fnmatch.py", "bisect.py", "heapq.py", "colorsys.py", "glob.py"]


def reference_encode(text):
    """What Hugging Face's CodeGen tokenizer does: cut the whitespace runs leftmost-longest, GPT-2 on each piece."""
    tok, ids, start = get_tokenizer(), [], 0
    for run in re.finditer(WHITESPACE_RUN, text):
        ids += tok.bpe.encode_ordinary(text[start:run.start()]) + [tok.whitespace_id[run.group()]]
        start = run.end()
    return ids + tok.bpe.encode_ordinary(text[start:])


def test_one_call_encoding_equals_cutting_the_runs_first():
    tok = get_tokenizer()
    for name in MODULES:
        text = (STDLIB / name).read_text()
        assert tok.encode(text) == reference_encode(text), name
        assert np.array_equal(tok.encode_array(text), reference_encode(text))
    rng = random.Random(0)
    pieces = [" ", " ", " ", "\t", "\t", "\n", "\r", "a", "Z", "1", "'", "s", "é", "\u3000", "\xa0", "#", "(", "'re",
              "ll", "\t ", " \n", "<|endoftext|>"]
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert tok.encode(text) == reference_encode(text), repr(text)


# ---------------------------------------------------------------------------- a corpus of every source type

DOCS = {  # what each source should yield, in order
    "dir": [(STDLIB / n).read_text() for n in MODULES[:4]],
    "jsonl": ["def a():\n    return 1\n", "print('jsonl')\n", "x = 'ünïcødé'\n"],
    "gz": ["import os\n\n\nclass G:\n\tpass\n", "# gz\n"],
    "parquet": [(STDLIB / n).read_text() for n in MODULES[4:]] + ["y = 2\n"],
}


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    d = root / "code"
    (d / "pkg").mkdir(parents=True)
    for i, text in enumerate(DOCS["dir"]):
        (d / ("pkg" if i >= 2 else "") / f"m{i}.py").write_text(text)  # sorted: m0, m1, pkg/m2, pkg/m3
    (d / "latin1.py").write_bytes("s = 'café'\n".encode("latin-1"))  # skipped: not UTF-8
    (d / "blank.py").write_text("  \n")                                  # skipped: empty
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "x.py").write_text("never read")
    (d / ".venv" / "lib").mkdir(parents=True)                           # hidden: a checkout's virtualenv
    (d / ".venv" / "lib" / "site.py").write_text("never read either")
    lines = [json.dumps({"text": DOCS["jsonl"][0], "id": 1}), "{not json", json.dumps({"body": "no text field"}),
             json.dumps({"text": DOCS["jsonl"][1]}), "", json.dumps({"text": DOCS["jsonl"][2]})]
    (root / "a.jsonl").write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "\xff\xfe"}\n')
    with gzip.open(root / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"text": t}) + "\n" for t in DOCS["gz"]))
    table = pa.table({"content": DOCS["parquet"][:2] + [None] + DOCS["parquet"][2:],
                      "size": list(range(len(DOCS["parquet"]) + 1))})
    pq.write_table(table, root / "c.parquet", row_group_size=2)  # several row groups: several work units
    return {"dir": d, "jsonl": root / "a.jsonl", "gz": root / "b.jsonl.gz", "parquet": root / "c.parquet"}


def expected_splits(docs, val_fraction):
    tok, train, val = get_tokenizer(), [], []
    for text in docs:
        ids = tok.encode(text) + [EOT]
        (val if data.is_val(np.array(ids[:-1], np.uint16), val_fraction) else train).extend(ids)
    return train, val


def test_readers_yield_documents_in_order_and_count_what_they_skip(sources):
    s = data.Source(str(sources["dir"]))
    assert [text for _, text in s] == DOCS["dir"]
    assert s.skipped == {"non-UTF-8 file": 1, "empty file": 1}
    s = data.Source(str(sources["jsonl"]))
    docs = list(s)
    assert [text for _, text in docs] == DOCS["jsonl"] and docs[0][0].endswith("a.jsonl:1")
    assert s.skipped == {"record without a string 'text'": 2, "non-UTF-8 record": 1}
    assert [t for _, t in data.Source(str(sources["gz"]))] == DOCS["gz"]
    s = data.Source(str(sources["parquet"]))
    assert [t for _, t in s] == DOCS["parquet"] and s.skipped == {"record without a string 'content'": 1}


def test_shards_are_encode_plus_eot_in_order_whatever_the_workers(sources, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "UNIT_BYTES", 4000)  # many small units, so that two workers finish out of order
    for kind, path in sources.items():
        caches = [data.prepare(str(path), tmp_path / f"w{w}", 0.3, workers=w, log=lambda m: None) for w in (1, 2)]
        train, val = expected_splits(DOCS[kind], 0.3)
        if not 0.15 <= len(val) / (len(train) + len(val)) <= 0.6:  # too few documents to split them near 0.3:
            stream = train + val                                   # the tail of the stream is held out instead
            cut = len(stream) - max(1, int(len(stream) * 0.3))
            train, val = stream[:cut], stream[cut:]
        for cache in caches:
            t, v = data.load_tokens(cache)
            assert t.tolist() == train and v.tolist() == val, kind
        for split in ("train.bin", "val.bin"):
            assert (caches[0] / split).read_bytes() == (caches[1] / split).read_bytes()
        meta = json.loads((caches[0] / "meta.json").read_text())
        assert meta["documents"] == len(DOCS[kind]) and meta["train_tokens"] == len(train)


def test_jsonl_files_know_what_a_kill_leaves(tmp_path):
    p = tmp_path / "labels.jsonl"
    with open(p, "w") as f:
        for i in range(3):
            files.append_jsonl(f, {"i": i})
        f.write('{"i": 3, "tor')                                     # a run killed mid-write
    ids = lambda tail: [r["i"] for _, r in files.read_jsonl(p, tail)]  # noqa: E731
    with pytest.raises(UserError, match=r"labels.jsonl: line 4 is cut off"):
        ids("error")                                                # an input file: say so
    assert ids("skip") == [0, 1, 2] and p.read_text().endswith('"tor')  # a file being written: left as it is
    assert ids("repair") == [0, 1, 2] and p.read_text().endswith('{"i": 2}\n')  # ours: cut, appending goes on
    with open(p, "a") as f:
        f.write('{"i": 3}')                                         # a whole record, only its newline lost
    assert ids("error") == [0, 1, 2, 3] and ids("repair") == [0, 1, 2, 3] and p.read_text().endswith('{"i": 3}\n')
    assert [(n, off) for n, off, _ in files.jsonl_lines(p)] == [(1, 0), (2, 9), (3, 18), (4, 27)]

    p.write_text('{"i": 0}\nnot json\n[1]\n{"i": 3}\n')
    with pytest.raises(UserError, match=r"2 malformed line\(s\): line 2 column 1: Expecting value; "
                                             r"line 3: not a JSON object"):
        files.read_jsonl(p, "repair")
    gz = tmp_path / "x.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert files.read_jsonl(gz) == [(1, {"a": 1}), (3, {"a": 2})]
    assert files.read_jsonl(tmp_path / "new.jsonl", "repair") == []  # our own file, not written yet
    with pytest.raises(UserError, match="missing.jsonl: no such file"):
        files.read_jsonl(tmp_path / "missing.jsonl")


def test_progress_lines_give_rate_and_eta_and_the_end_once(monkeypatch):
    now, lines = [100.0], []
    monkeypatch.setattr(data.time, "time", lambda: now[0])
    p = files.Progress("embedded", 1000, "files", every=2.0, start=400, log=lines.append)  # 400 done before
    for _ in range(6):
        now[0] += 1.0
        p.update(100)                     # 100 files a second, at t = 1..6 s; the total is reached at t = 6
    p.update(0, "late answer")            # after the end: no second final line
    assert lines == ["embedded: 600/1,000 files (60%, 100.0 files/s, ETA 0m04s)",
                     "embedded: 800/1,000 files (80%, 100.0 files/s, ETA 0m02s)",
                     "embedded: 1,000/1,000 files (100%, 100.0 files/s, ETA 0m00s)"]
    mb = files.Progress("tokenizing x", 2.5, "MB", every=0, log=lines.append)
    now[0] += 1.0
    mb.update(0.75)
    assert lines[-1] == "tokenizing x: 0.8/2.5 MB (30%, 0.8 MB/s, ETA 0m02s)"
    q = files.Progress("loaded", None, every=0, log=lines.append)
    now[0] += 2.0
    q.update(10, "3 duplicates")
    assert lines[-1] == "loaded: 10 (5.0/s, 3 duplicates)"


def test_bad_sources_are_one_clear_error(sources, tmp_path):
    with pytest.raises(data.DataError, match="not found: /no/such"):
        data.Source("/no/such")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "latin1.py").write_bytes("s = 'café'\n".encode("latin-1"))
    (bad / "empty.py").write_text("")
    with pytest.raises(data.DataError, match=r"nothing to train on .*empty file: 1, non-UTF-8 file: 1"):
        data.prepare(str(bad), tmp_path / "cache", 0.02, 1, log=lambda m: None)
    assert not list((tmp_path / "cache").iterdir())  # no cache directory, not even a temporary one
    with pytest.raises(data.DataError, match="no .py, .jsonl, .jsonl.gz, .parquet files"):
        data.Source(str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match=r"no column 'text'; its columns are content, size"):
        list(data.Source(str(sources["parquet"]), text_column="text"))
    with pytest.raises(data.DataError, match=r"column 'size' holds int64, not text"):
        list(data.Source(str(sources["parquet"]), text_column="size"))


def test_cache_is_keyed_by_content_not_size_or_mtime(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    f = corpus / "m.py"
    f.write_text((STDLIB / "bisect.py").read_text())
    logs = []
    first = data.prepare(str(corpus), tmp_path / "cache", 0.02, 1, log=logs.append)
    assert data.prepare(str(corpus), tmp_path / "cache", 0.02, 1, log=logs.append) == first
    assert "reusing cache" in logs[-1]
    # an edit in place with the size and mtime restored, as `rsync -t` or an archive extraction can leave it
    st = f.stat()
    text = f.read_text()
    f.write_text(text.replace("def insort_right", "def insort_RIGHT"))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    second = data.prepare(str(corpus), tmp_path / "cache", 0.02, 1, log=logs.append)
    assert second != first and "tokenizing" in logs[-2]
    t1, v1 = data.load_tokens(first)
    t2, v2 = data.load_tokens(second)
    assert np.concatenate([t2, v2]).tolist() == get_tokenizer().encode(f.read_text()) + [EOT]
    assert not np.array_equal(np.concatenate([t1, v1]), np.concatenate([t2, v2]))
    # a copy elsewhere has the same content: same cache
    shutil.copytree(corpus, tmp_path / "copy")
    assert data.prepare(str(tmp_path / "copy"), tmp_path / "cache", 0.02, 1, log=logs.append) == second


def slow_tokenizing(seconds, call):
    """A script that tokenizes with each work unit slowed down by `seconds` (in the workers, which fork from
    it), so that a Ctrl-C lands in the middle, then runs `call`."""
    return f"""
import sys, time
sys.path.insert(0, {str(REPO)!r})
import configurator, data
real = data.tokenize_unit
def slow_unit(*args):
    time.sleep({seconds})
    return real(*args)
data.tokenize_unit = slow_unit
data.UNIT_BYTES = 2000
{call}
"""


def test_ctrl_c_while_tokenizing_exits_at_once_and_leaves_no_cache(sources, tmp_path):
    script = slow_tokenizing(0.5, f"""import train
configurator.cli(train.main, ["--prepare_only=True", "--data={sources['dir']}",
    "--cache_dir={tmp_path / 'cache'}", "--tokenizer_workers=2"], prog="train.py")""")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert "tokenizing" in proc.stdout.readline()
    time.sleep(1.0)
    t0 = time.time()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    _, err = proc.communicate(timeout=30)
    assert time.time() - t0 < 5 and proc.returncode == 130
    assert err.strip().splitlines() == ["train.py: interrupted; nothing half-written was kept"], err
    assert list((tmp_path / "cache").iterdir()) == []


def test_ctrl_c_at_random_moments_of_tokenizing_ends_at_once_every_time(sources, tmp_path):
    """SIGINT to the process group (the main process and its workers) at a random moment of a preparation: from
    the pool's start to its end. Every time it ends within seconds, in one line, and leaves no cache behind."""
    script = slow_tokenizing(0.05, 'configurator.cli(lambda argv: data.prepare(argv[0], argv[1], 0.02, 2), '
                                   'prog="data.py")')
    rng = random.Random(0)
    for attempt in range(15):
        cache = tmp_path / f"cache{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", script, str(sources["dir"]), str(cache)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert "tokenizing" in proc.stdout.readline()
        time.sleep(rng.uniform(0, 0.6))  # the whole preparation takes ~0.5 s
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.time()
        try:
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert time.time() - t0 < 5 and "Traceback" not in err, (attempt, err)
        if "cached in" in out:  # it had finished (the signal may end the interpreter's exit): a whole cache
            assert proc.returncode in (0, -signal.SIGINT) and err == "", (attempt, err)
            assert [p.name for p in cache.iterdir()] == [p.parent.name for p in cache.glob("*/meta.json")]
            continue
        assert proc.returncode == 130 and err.strip().splitlines() == [
            "data.py: interrupted; nothing half-written was kept"], (attempt, err)
        assert list(cache.iterdir()) == [], attempt
