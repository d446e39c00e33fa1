"""Tests for dedup.py: vectorised shingles equal to the word n-gram sets they stand for, planted
exact and near duplicates found at the right Jaccard whatever the number of workers, the same
decisions as comparing every pair, the distinct-count sketch, and the command line."""
import hashlib
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dedup


def string_shingles(text, n=dedup.SHINGLE):
    """The definition the hashes stand for: the set of joined word n-grams (a short text: all its
    words)."""
    w = dedup.words(text)
    return {" ".join(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


def string_jaccard(a, b):
    sa, sb = string_shingles(a), string_shingles(b)
    return len(sa & sb) / len(sa | sb)


def random_text(rng, n_words=300):
    vocab = [f"w{i}" for i in range(2000)] + ["(", ")", ":", "=", "def", "return", "for", "in"]
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def edited(text, target, rng):
    """A copy of `text` with words replaced by fresh ones, spread out, until the shingle Jaccard is
    ~target."""
    w = text.split(" ")
    s = len(w) - dedup.SHINGLE + 1
    k = round(s * (1 - target) / (dedup.SHINGLE * (1 + target)))   # an edit: SHINGLE shingles
    # inside the text and 6 apart, so that every edit changes SHINGLE shingles of its own
    places = range(dedup.SHINGLE, len(w) - dedup.SHINGLE, dedup.SHINGLE + 1)
    for j, pos in enumerate(sorted(rng.sample(places, k))):
        w[pos] = f"fresh{rng.randrange(10 ** 9)}x{j}"
    return " ".join(w)


def test_word_hashes_match_the_regex():
    texts = ["", "   ", "a", "a b", "one two three four five",
             "def f(x):\n    return x  # é ½ 中文\n", "tab\tand\u00a0nbsp\u2003em-space",
             "x_1 = y2+3", "lone \ud800 surrogate", "ünïcödé wörds_ok"]
    wh, n_words = dedup.word_hashes(texts)
    assert n_words.tolist() == [len(dedup.words(t)) for t in texts]
    assert len(wh) == sum(n_words)
    # a word's hash does not depend on where it stands or in which text
    words = [w for t in texts for w in dedup.words(t)]
    first = {}
    for w, h in zip(words, wh.tolist()):
        assert first.setdefault(w, h) == h
    assert len(set(first.values())) == len(first)


def test_shingle_hashes_stand_for_the_shingle_strings():
    rng = random.Random(0)
    texts = [random_text(rng, rng.choice([3, 5, 6, 40, 300])) for _ in range(30)] + ["", "a b"]
    for _ in range(60):
        a, b = rng.choice(texts), rng.choice(texts)
        if rng.random() < 0.5:
            b = edited(a, rng.choice([0.5, 0.8, 0.9]), rng) if len(a.split()) > 30 else a
        assert len(dedup.shingle_set(a)) == len(string_shingles(a))
        got = dedup.jaccard(dedup.shingle_set(a), dedup.shingle_set(b))
        assert got == pytest.approx(string_jaccard(a, b))


def test_signatures_estimate_jaccard_and_do_not_depend_on_batching():
    rng = random.Random(1)
    base = [random_text(rng) for _ in range(40)]
    texts = base + [edited(t, 0.8, rng) for t in base]
    exact, sigs = dedup.sign(texts)
    for i in (0, 7, 45):   # one text alone gets the same signature as inside a batch
        e1, s1 = dedup.sign([texts[i]])
        assert e1[0] == exact[i] and (s1[0] == sigs[i]).all()
    est = (sigs[:40] == sigs[40:]).mean(axis=1)         # (40,) estimated Jaccard of each pair
    true = np.array([string_jaccard(a, b) for a, b in zip(base, texts[40:])])
    # the estimate's standard deviation is 0.035 at J = 0.8
    assert abs((est - true).mean()) < 0.02 and np.abs(est - true).max() < 0.15
    assert (sigs[0] == sigs[1]).mean() < 0.1           # unrelated texts


def reference_dedup(texts, threshold=dedup.THRESHOLD):
    """What dedup must decide, by comparing every pair: an exact copy (up to whitespace) of any
    earlier text is dropped; then a text whose shingle Jaccard with an earlier kept one is >=
    threshold."""
    seen, kept, pairs = set(), [], []
    for j, t in enumerate(texts):
        h = " ".join(t.split())
        if h in seen:
            continue
        seen.add(h)
        match = next((i for i in kept if string_jaccard(texts[i], t) >= threshold), None)
        if match is None:
            kept.append(j)
        else:
            pairs.append((j, match))
    return kept, pairs


def planted_corpus(seed=2, n=24):
    rng = random.Random(seed)
    base = [random_text(rng, 600) for _ in range(n)]
    texts, kinds = list(base), ["base"] * n
    for i in range(0, n, 3):
        for kind, copy in (("exact", base[i]), ("layout", "  " + base[i].replace(" ", " \n ")),
                           ("j0.9", edited(base[i], 0.9, rng)),
                           ("j0.7", edited(base[i], 0.7, rng))):
            # somewhere after its original
            at = rng.randrange(texts.index(base[i]) + 1, len(texts) + 1)
            texts.insert(at, copy)
            kinds.insert(at, kind)
    return texts, kinds


def test_planted_duplicates_removed_whatever_the_workers(monkeypatch):
    texts, kinds = planted_corpus()
    for t, kind in zip(texts, kinds):   # the edits hit their targets
        if kind.startswith("j"):
            orig = next(o for o, k in zip(texts, kinds)
                        if k == "base" and string_jaccard(o, t) > 0.5)
            assert string_jaccard(orig, t) == pytest.approx(float(kind[1:]), abs=0.02)
    monkeypatch.setattr(dedup, "CHUNK", 7)          # many chunks, spread over the workers
    results = []
    for workers in (1, 2):
        exact, sigs = dedup.signatures(iter(texts), len(texts), workers=workers)
        live = dedup.first_occurrences(exact)
        keep, pairs = dedup.near_duplicates(sigs, texts.__getitem__, live=live)
        results.append((exact.tolist(), sigs.tolist(), keep.tolist(), pairs))
    assert results[0] == results[1]
    _, _, keep, pairs = results[0]
    dropped = {kinds[j] for j, k in enumerate(keep) if not k}
    kept = {kinds[j] for j, k in enumerate(keep) if k}
    assert dropped == {"exact", "layout", "j0.9"} and kept == {"base", "j0.7"}
    assert keep.count(True) == kinds.count("base") + kinds.count("j0.7")
    ref_kept, ref_pairs = reference_dedup(texts)
    assert [j for j, k in enumerate(keep) if k] == ref_kept and pairs == ref_pairs


def test_near_duplicates_of_near_duplicates():
    """Only kept texts match later ones: c close to b (dropped as a copy of a) but not to a stays.
    """
    rng = random.Random(3)
    a = random_text(rng, 600)
    b = edited(a, 0.88, rng)
    c = edited(b, 0.88, rng)
    assert string_jaccard(a, b) >= 0.8 and string_jaccard(b, c) >= 0.8
    assert string_jaccard(a, c) < 0.8
    texts = [a, b, c]
    _, sigs = dedup.sign(texts)
    keep, pairs = dedup.near_duplicates(sigs, texts.__getitem__)
    assert keep.tolist() == [True, False, True] and pairs == [(1, 0)]
    ref_kept, ref_pairs = reference_dedup(texts)
    assert (keep.tolist(), pairs) == ([j in ref_kept for j in range(3)], ref_pairs)


def test_hashes():
    assert dedup.content_hash("x = 1\n") == hashlib.sha256(b"x = 1\n").hexdigest()[:24]
    h = dedup.normalized_hash
    assert h("a  b\n c") == h(" a b c ") != h("a bc")
    first = dedup.first_occurrences([5, 3, 5, 5, 3, 1]).tolist()
    assert first == [True, True, False, False, False, True]


def test_distinct_count():
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1 << 63, size=20_000, dtype=np.uint64) * np.uint64(2)
    small = dedup.DistinctCount(k=1 << 16)
    for part in np.array_split(np.concatenate([values, values[:5000]]), 7):
        small.add(part)
    assert small.distinct() == 20_000 and small.total == 25_000          # exact below k
    a, b = dedup.DistinctCount(k=1024), dedup.DistinctCount(k=1024)
    a.add(values[:12_000])
    b.add(values[8_000:])
    # estimated above k: 1/sqrt(1024) = 3 %
    assert a.merge(b).distinct() == pytest.approx(20_000, rel=0.1)


# ----------------------------------------------------------------------------- the command line
# (its --help: tests/test_synth.py, with decontaminate.py's)
REPO = Path(__file__).resolve().parent.parent


def run_dedup(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(REPO / "dedup.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_command_line_removes_planted_duplicates(tmp_path):
    """`python dedup.py FILE` on planted exact and near copies keeps what reference_dedup keeps,
    lines unchanged and in order, whatever the workers, under a path with a space."""
    texts, kinds = planted_corpus(n=9)
    folder = tmp_path / "a folder"
    folder.mkdir()
    data = folder / "d.jsonl"
    lines = [json.dumps({"id": f"r{i}", "kind": k, "text": t}) + "\n"
             for i, (t, k) in enumerate(zip(texts, kinds))]
    data.write_text("".join(lines))
    want = "".join(lines[j] for j in reference_dedup(texts)[0])
    done = run_dedup(data, "--workers=2")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert (folder / "d.dedup.jsonl").read_text() == want
    printed = done.stdout.strip()
    n_exact, n_near = kinds.count("exact") + kinds.count("layout"), kinds.count("j0.9")
    assert printed.startswith(f"dedup: {len(texts)} records, removed {n_exact} exact and "
                              f"{n_near} near duplicates (Jaccard >= 0.8), kept "
                              f"{len(texts) - n_exact - n_near} -> {folder / 'd.dedup.jsonl'} in ")
    assert printed.endswith("records/s on 2 workers)")            # what bench.py reads
    # a threshold below 0.7 also drops the copies edited to Jaccard 0.7
    done = run_dedup("d.jsonl", "--threshold=0.6", "--workers=1", "--out=kept.jsonl", cwd=folder)
    assert done.returncode == 0, done.stderr
    assert (folder / "kept.jsonl").read_text() == "".join(
        lines[j] for j in reference_dedup(texts, 0.6)[0])
    n_near = kinds.count("j0.9") + kinds.count("j0.7")
    assert f"removed {n_exact} exact and {n_near} near duplicates (Jaccard >= 0.6)" in done.stdout


def test_command_line_bad_input_is_one_line(tmp_path):
    """Every mistake: one line `dedup.py: error: ...`, exit 2, and nothing written."""
    data = tmp_path / "d.jsonl"
    data.write_text('{"text": "a b c"}\n{"text": "a b c"}\n')
    (tmp_path / "torn.jsonl").write_text('{"text": "a b c"}\n{"text": "a b')
    (tmp_path / "notext.jsonl").write_text('{"text": "a b c"}\n{"body": 1}\n')
    cases = {
        (): "expected one INPUT file, got none",
        (data, data): f"expected one INPUT file, got {data} {data}",
        (tmp_path / "nope.jsonl",): f"{tmp_path / 'nope.jsonl'}: no such file",
        (tmp_path / "torn.jsonl",): f"{tmp_path / 'torn.jsonl'}: line 2 is cut off",
        (tmp_path / "notext.jsonl",): f"{tmp_path / 'notext.jsonl'}: record 1 has no 'text' field",
        (data, "--threshold=1.5"): "--threshold=1.5: expected a Jaccard similarity in (0, 1]",
        (data, "--threshold=high"): "--threshold=high: expected float",
        (data, "--workers", "2"): "expected --key=value, got '--workers'",
        (data, "--treshold=0.9"): "unknown key 'treshold' in the command line; did you mean "
                                  "--threshold?",
    }
    before = sorted(p.name for p in tmp_path.iterdir())
    for args, message in cases.items():
        done = run_dedup(*args)
        err = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(err) == 1, (args, done.stderr)
        assert err[0].startswith(f"dedup.py: error: {message}"), (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
