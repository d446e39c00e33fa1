"""
Exact and near-duplicate removal for corpora of any size, in memory that does not grow with the
texts.

phi-1's synthetic textbooks and exercises (§2.2) are deduplicated with it (synth.py runs it on what
it generates); it is written so that filter.py can use the same pieces for exact and near
duplicates in its code corpus (§2.1). On any JSONL file of records with a `text` field:

    python dedup.py data/exercises.jsonl                   # -> data/exercises.dedup.jsonl
    python dedup.py data/exercises.jsonl --threshold=0.9 --out=kept.jsonl --workers=4

    exact, sigs = signatures(texts, len(texts), workers=2)     # (n,) uint64, (n, 128) uint32
    keep, pairs = near_duplicates(sigs, text_of=texts.__getitem__, live=first_occurrences(exact))

The idea. Two texts are near duplicates when the Jaccard similarity of their sets of word 5-grams
("shingles") is at least a threshold (0.8 here; the paper is silent on deduplicating its synthetic
data). Comparing every pair is quadratic, so each text is summarised by a MinHash signature
(Broder, 1997): under a random hash function h, the probability that min h(A) == min h(B) is
exactly Jaccard(A, B), so the share of 128 hash functions on which two signatures agree estimates
it. Locality-sensitive hashing then cuts the 128 values into 32 bands of 4: texts whose signatures
agree on a whole band land in the same bucket. A pair at Jaccard J shares some bucket with
probability 1 - (1 - J^4)^32: 1 - 5e-8 at 0.8, 0.87 at 0.5, 0.23 at 0.3. Only those pairs are
candidates, and a candidate is decided by the exact Jaccard of the two shingle sets, recomputed
from the two texts, which the caller reads back on demand (`text_of(i)`, e.g. from a JSONL file by
byte offset). So the decision is exact (on 64-bit shingle hashes: a collision changes a Jaccard
once in ~10^17 shingle pairs), not an estimate; the signatures' estimate only skips candidates far
below the threshold (VERIFY_MARGIN). Exact duplicates (the same text up to whitespace) go first.

Memory per text, whatever its length: its signature (128 x uint32 = 512 B), its exact hash (8 B),
and during `near_duplicates` its 32 bucket numbers (int32) and its share of the bucket heads (under
200 B): under 1 KB.

Speed. Shingles are hashed with numpy over whole chunks of texts: the texts of a chunk are read as
one array of code points, classified by table into word, punctuation and space characters (the
regex's rules), each word's hash is a sum over its characters (np.add.reduceat), a shingle's hash a
weighted sum of its 5 words' hashes, and the 128 MinHash functions one (128 x shingles) uint32
multiply-add and a minimum per text (np.minimum.reduceat): no Python call per shingle, word or
character. `signatures(..., workers=N)` spreads chunks over N processes.

Read top to bottom: exact duplicates; shingles and MinHash, vectorised; LSH candidates and the
exact decision; records in memory (dedup_records) and the lines of a JSONL file of any size
(dedup_lines, which reads each line by its byte offset when it needs it); the command line.
"""
import hashlib
import multiprocessing
import os
import re
import time
from collections import deque
from functools import lru_cache
from pathlib import Path

import numpy as np

import configurator
from configurator import UserError
from files import LineReader, copy_lines, input_jsonl, record_of, throughput

SHINGLE = 5                  # words per shingle
NUM_PERM = 128               # MinHash functions
BANDS = 32                   # LSH bands of NUM_PERM / BANDS = 4 rows
THRESHOLD = 0.8              # near duplicate: shingle Jaccard >= this
# Candidates whose estimated Jaccard is this far below the threshold are not verified. With 128
# functions the estimate's standard deviation is sqrt(J(1-J)/128) = 0.035 at J = 0.8, so a pair at
# the threshold falls 0.2 below it (5.6 sigma) with probability ~1e-8: verification is skipped only
# where it could not succeed.
VERIFY_MARGIN = 0.2
CHUNK = 256                  # texts per worker task
BLOCK_SHINGLES = 1 << 13     # shingles per MinHash block: a (128, 8192) uint32 temporary, 4 MB

_WORD = re.compile(r"\w+|[^\w\s]")
_rng = np.random.default_rng(0)
_A = ((_rng.integers(0, 1 << 31, size=NUM_PERM, dtype=np.uint32) << np.uint32(1))
      | np.uint32(1))                                                   # odd multipliers
_B = _rng.integers(0, 1 << 32, size=NUM_PERM, dtype=np.uint32)
_POS = (_rng.integers(0, 1 << 63, size=SHINGLE, dtype=np.uint64) * np.uint64(2)
        + np.uint64(1))                                                 # word weights


def words(text):
    """Words and single punctuation characters: the units that shingles are made of."""
    return _WORD.findall(text)


# ----------------------------------------------------------------------------- exact duplicates
def content_hash(text):
    """A text's identity: 24 hex digits of its sha256 (what filter.py stores per document)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def normalized_hash(text):
    """64 bits of the sha256 of the text with runs of whitespace made one space: equal for texts
    that differ only in layout. 64 bits make an accidental collision among 10 M texts a 3e-6
    chance."""
    normal = " ".join(text.split()).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(normal).digest()[:8], "little")


def first_occurrences(hashes):
    """(n,) bool: True where hashes[i] did not occur before i (the first of each group of exact
    duplicates)."""
    hashes = np.asarray(hashes)
    first = np.zeros(len(hashes), bool)
    first[np.unique(hashes, return_index=True)[1]] = True   # np.unique: each value's first index
    return first


# ----------------------------------------------------------------------------- shingles and MinHash
def _mix(x):
    """splitmix64's finaliser on a uint64 array: every input bit reaches every output bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _char_class(c):
    # what `_WORD` sees: 0 whitespace (\s), 1 word character (\w: str.isalnum() or "_"), 2 any other
    return 0 if c.isspace() else 1 if (c.isalnum() or c == "_") else 2


_ASCII_CLASS = np.array([_char_class(chr(c)) for c in range(128)], dtype=np.uint8)


def word_hashes(texts):
    """The words of each text (as words() cuts them) hashed, without a Python call per word or per
    character.

    Returns ((W,) uint64 hashes of all words of all texts in order, (T,) int64 number of words of
    each text). The texts are joined by spaces and read as one array of code points; each character
    is classified by table (characters beyond ASCII once per distinct one, with the same rules as
    the regex), words are runs of word characters and every other non-space character is a word of
    its own; character k of a word contributes mix(code point + k * 2^32), and a word's hash is the
    mixed sum of its characters' contributions."""
    joined = " ".join(texts)
    cp = np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)   # (L,)
    if not len(cp) or cp.max() < 128:
        cls = _ASCII_CLASS[cp]
    else:
        cls = np.empty(len(cp), dtype=np.uint8)
        low = cp < 128
        cls[low] = _ASCII_CLASS[cp[low]]
        u, inv = np.unique(cp[~low], return_inverse=True)
        cls[~low] = np.array([_char_class(chr(c)) for c in u.tolist()], dtype=np.uint8)[inv]
    word = cls == 1
    inside = np.zeros_like(word)
    inside[1:] = word[1:] & word[:-1]                   # a word character after another
    start = (cls != 0) & ~inside                        # (L,) a word begins here
    chars = np.flatnonzero(cls)                         # (C,) positions inside words
    at = np.arange(len(chars), dtype=np.int64)
    first = np.flatnonzero(start[chars])                # (W,) word starts, among `chars`
    word_start = np.maximum.accumulate(np.where(start[chars], at, 0))
    pos = (at - word_start).astype(np.uint64)           # (C,) the place in its word
    contrib = _mix(cp[chars].astype(np.uint64) | (pos << np.uint64(32)))
    wh = _mix(np.add.reduceat(contrib, first)) if len(first) else np.zeros(0, dtype=np.uint64)
    # words per text: word starts before each text's end (texts are separated by one space each)
    ends = np.cumsum(np.array([len(t) for t in texts], dtype=np.int64) + 1) - 1
    n_words = np.diff(np.concatenate(([0], np.searchsorted(np.flatnonzero(start), ends))))
    return wh, n_words


def _grams(wh, n_words, n=SHINGLE, whole_short=True):
    """Hashes of the word n-grams of texts from their word hashes `wh` and word counts `n_words`,
    and the index of each text's first n-gram: ((G,) uint64, (T,) int64). No n-gram crosses from
    one text into the next. With whole_short, a text of fewer than n words is one n-gram of all of
    them (an empty text: of none), as the shingle sets of words() have it; else it has none."""
    n_words = np.asarray(n_words, dtype=np.int64)
    first_word = np.concatenate(([0], np.cumsum(n_words)[:-1]))
    per_text = np.maximum(n_words - n + 1, 1 if whole_short else 0)   # n-grams of each text
    first = np.concatenate(([0], np.cumsum(per_text)[:-1]))
    start = (np.repeat(first_word, per_text)
             + (np.arange(per_text.sum()) - np.repeat(first, per_text)))   # (G,) first word
    width = np.minimum(np.repeat(n_words, per_text), n)                # (G,) words in each n-gram
    padded = np.concatenate((wh, np.zeros(n, dtype=np.uint64)))
    h = width.astype(np.uint64)
    for k in range(n):   # a weighted sum of the n-gram's words, the weight depending on the place
        h += np.where(k < width, padded[start + k], np.uint64(0)) * _POS[k]
    return _mix(h), first


def ngram_hashes(wh, n_words, n):
    """All word n-grams (as words() cuts words) of the texts word_hashes() read: (G,) uint64."""
    return _grams(wh, n_words, n, whole_short=False)[0]


def shingle_set(text):
    """The sorted distinct shingle hashes of one text (for the exact Jaccard)."""
    return np.unique(_grams(*word_hashes([text]))[0])


def jaccard(a, b):
    """Jaccard similarity of two sorted distinct arrays."""
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)


def _minhash(sh, starts):
    """MinHash of the shingle hashes sh, text t owning sh[starts[t]:starts[t+1]]: (T, NUM_PERM)
    uint32.

    Hash function k is x -> A[k] * x + B[k] mod 2^32 on the high 32 bits x of a shingle's (well
    mixed) hash: with A[k] odd, a permutation of the 32-bit values, computed for all shingles and
    functions in one uint32 multiply-add (1 in 2^32 shingle pairs collide, which changes a Jaccard
    by nothing measurable)."""
    x = (sh >> np.uint64(32)).astype(np.uint32)
    out = np.empty((len(starts), NUM_PERM), dtype=np.uint32)
    bounds = np.append(starts, len(sh))
    t = 0
    # blocks of whole texts of about BLOCK_SHINGLES shingles bound the temporary
    while t < len(starts):
        end = int(np.searchsorted(bounds, bounds[t] + BLOCK_SHINGLES, "right")) - 1
        u = min(len(starts), max(t + 1, end))
        h = np.multiply.outer(_A, x[bounds[t]:bounds[u]])      # (NUM_PERM, S), wraps mod 2^32
        h += _B[:, None]
        out[t:u] = np.minimum.reduceat(h, bounds[t:u] - bounds[t], axis=1).T   # (u - t, NUM_PERM)
        t = u
    return out


def sign(texts):
    """Exact hashes and MinHash signatures of a list of texts: ((n,) uint64, (n, NUM_PERM) uint32).
    """
    exact = np.fromiter((normalized_hash(t) for t in texts), dtype=np.uint64, count=len(texts))
    if not texts:
        return exact, np.empty((0, NUM_PERM), dtype=np.uint32)
    return exact, _minhash(*_grams(*word_hashes(texts)))


def _sign_chunk(args):
    decode, items = args
    return sign([decode(x) for x in items] if decode else items)


def signatures(items, n, decode=None, workers=1):
    """sign() over `n` texts (or things that `decode` turns into texts in the workers, e.g. JSONL
    lines), on `workers` processes: ((n,) uint64, (n, NUM_PERM) uint32), in input order whatever
    the number of workers."""
    exact = np.empty(n, dtype=np.uint64)
    sigs = np.empty((n, NUM_PERM), dtype=np.uint32)
    done = 0
    for e, s in parallel_map(_sign_chunk, ((decode, c) for c in chunked(items, CHUNK)), workers):
        if done + len(e) > n:
            raise ValueError(f"more than the {n} texts announced")
        exact[done:done + len(e)], sigs[done:done + len(e)] = e, s
        done += len(e)
    if done != n:
        raise ValueError(f"{done} texts where {n} were announced")
    return exact, sigs


def chunked(items, size):
    """Lists of `size` consecutive items (the last one shorter)."""
    buf = []
    for x in items:
        buf.append(x)
        if len(buf) == size:
            yield buf
            buf = []
    if buf:
        yield buf


def parallel_map(fn, tasks, workers=1, initializer=None, initargs=()):
    """fn(task) for each task on `workers` processes, yielded in input order. At most 2 x workers
    tasks are in flight, so a long input is read only as fast as it is processed (Pool.imap would
    read all of it ahead). Workers are forked where the platform can (they start at once and share
    what the parent loaded); with workers <= 1 everything runs here."""
    if workers <= 1:
        if initializer:
            initializer(*initargs)
        yield from map(fn, tasks)
        return
    fork = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with multiprocessing.get_context(fork).Pool(workers, initializer, initargs) as pool:
        pending = deque()
        for task in tasks:
            pending.append(pool.apply_async(fn, (task,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def default_workers():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DistinctCount:
    """The number of distinct values in a stream of (well mixed) 64-bit hashes, in bounded memory:
    the k smallest distinct values seen (a "k minimum values" sketch, Bar-Yossef et al. 2002).
    Exact while fewer than k values are distinct; beyond, (k - 1) / (k-th smallest / 2^64), with a
    relative error of about 1 / sqrt(k) (0.4 % for k = 65536). Sketches merge, so workers can count
    their shares."""

    def __init__(self, k=1 << 16):
        self.k, self.total, self.mins = k, 0, np.zeros(0, dtype=np.uint64)

    def add(self, hashes):
        self.total += len(hashes)
        self._keep(np.asarray(hashes, dtype=np.uint64))
        return self

    def merge(self, other):
        self.total += other.total
        self._keep(other.mins)
        return self

    def _keep(self, values):
        if len(self.mins) == self.k:   # full: only values below the k-th smallest can enter
            values = values[values < self.mins[-1]]
        if len(values):
            self.mins = np.union1d(self.mins, values)[:self.k]

    def distinct(self):
        if len(self.mins) < self.k:
            return len(self.mins)
        return round((self.k - 1) / ((float(self.mins[-1]) + 1) / 2.0 ** 64))



# ----------------------------------------------------------------------------- LSH and the decision
def _band_keys(sigs, rows, b):
    """One 64-bit key per text for band b: its `rows` values of that band, mixed."""
    band = np.ascontiguousarray(sigs[:, b * rows:(b + 1) * rows]).astype(np.uint64)   # (n, rows)
    key = np.zeros(len(sigs), dtype=np.uint64)
    for r in range(rows):
        key = _mix(key ^ band[:, r])
    return key


def near_duplicates(sigs, text_of, live=None, threshold=THRESHOLD, bands=BANDS, progress=None):
    """Decide which texts are near duplicates of an earlier kept one. Texts are taken in index
    order; text j is dropped if its shingle Jaccard with some earlier kept text i (one sharing an
    LSH bucket) is >= threshold, else kept; only kept texts go on to match later ones, so the first
    of each group survives.

    sigs: (n, NUM_PERM) uint32; text_of(i) -> str reads text i back (called only for candidate
    pairs); live: (n,) bool, False for texts already dropped (exact duplicates), which neither match
    nor get matched. Returns (keep (n,) bool, pairs [(j, i)]: each dropped j with the kept i it
    matched, the lowest such i)."""
    n = len(sigs)
    rows = sigs.shape[1] // bands
    live = np.ones(n, bool) if live is None else np.asarray(live, bool)
    idx = np.flatnonzero(live)
    if not len(idx):
        return live.copy(), []
    # bucket[j, b]: a number for the band-b bucket of j shared with another live text, -1 when j is
    # alone in it
    bucket = np.full((n, bands), -1, dtype=np.int32)
    n_buckets = 0
    for b in range(bands):
        key = _band_keys(sigs, rows, b)[idx]
        order = np.argsort(key, kind="stable")
        k = key[order]
        new = np.concatenate(([True], k[1:] != k[:-1]))
        group = np.cumsum(new) - 1                     # group of each text, in sorted order
        size = np.bincount(group)
        shared = size[group] > 1
        renum = np.cumsum(size > 1) - 1 + n_buckets    # shared groups numbered from n_buckets on
        bucket[idx[order[shared]], b] = renum[group[shared]]
        n_buckets += int((size > 1).sum())
    head = np.full(n_buckets, -1, dtype=np.int32)      # the first kept text in each bucket
    more = {}                                          # bucket -> further kept texts (rare)
    keep = live.copy()
    pairs = []
    sets = lru_cache(maxsize=4096)(lambda i: shingle_set(text_of(i)))
    candidates = np.flatnonzero((bucket >= 0).any(axis=1))
    for step, j in enumerate(candidates.tolist()):
        if progress and step % 10000 == 0:
            progress(step, len(candidates))
        bj = bucket[j][bucket[j] >= 0]
        hj = head[bj]
        cands = set(hj[hj >= 0].tolist())
        for bk in bj[hj >= 0].tolist():
            cands.update(more.get(bk, ()))
        match = None
        for i in sorted(cands):
            if ((sigs[i] == sigs[j]).mean() >= threshold - VERIFY_MARGIN
                    and jaccard(sets(i), sets(j)) >= threshold):
                match = i
                break
        if match is not None:
            keep[j] = False
            pairs.append((j, match))
            continue
        for bk in bj[hj >= 0].tolist():
            more.setdefault(bk, []).append(j)
        head[bj[hj < 0]] = j
    return keep, pairs


# ----------------------------------------------------------------------------- records and files
# At the paper's scale a JSONL file holds ~1 B tokens: nothing below keeps its texts in memory. A
# pass reads the lines it needs (by offset, files.LineReader) and hands them to worker processes as
# bytes.

def _text_of(item):
    return record_of(item)["text"]


def _find_duplicates(items, n, decode, text_of, threshold, workers):
    """Exact, then near duplicates over `items` (decoded to texts in the workers). Returns keep (n,)
    bool, the number of exact duplicates, and [(j, i)]: near duplicate j of kept i."""
    exact, sigs = signatures(items, n=n, decode=decode, workers=workers)
    live = first_occurrences(exact)
    keep, pairs = near_duplicates(sigs, text_of, live=live, threshold=threshold)
    return keep, int(n - live.sum()), pairs


def dedup_records(records, threshold=THRESHOLD, workers=1):
    """Drop exact duplicates (after whitespace normalisation), then near duplicates: records whose
    word 5-gram Jaccard similarity with an earlier kept record is >= threshold. Keeps the first of
    each group, so the input order decides. Returns (kept records, {"exact", "near", "pairs":
    [[dropped id, kept id], ...]})."""
    texts = [r["text"] for r in records]
    keep, exact, pairs = _find_duplicates(texts, len(texts), None, texts.__getitem__, threshold,
                                          workers)
    ids = [[records[j]["id"], records[i]["id"]] for j, i in pairs]
    kept = [r for r, k in zip(records, keep) if k]
    return kept, {"exact": exact, "near": len(pairs), "pairs": ids}


def dedup_lines(path, offsets, threshold=THRESHOLD, workers=1):
    """dedup_records over the JSONL lines of `path` at `offsets` (in that order): keep (n,) bool and
    the summary. A line that is not a record with a text is a UserError naming the file and the
    record."""
    reader = LineReader(path)
    try:
        items = ((i, reader(off)) for i, off in enumerate(offsets))
        record = lambda i: record_of((i, reader(offsets[i])))  # noqa: E731  (read back by offset)
        keep, exact, pairs = _find_duplicates(items, len(offsets), _text_of,
                                              lambda i: record(i)["text"], threshold, workers)
        ids = [[record(j)["id"], record(i)["id"]] for j, i in pairs]
        return keep, {"exact": exact, "near": len(pairs), "pairs": ids}
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    finally:
        reader.close()


# -----------------------------------------------------------------------------
# The command line: `python dedup.py INPUT --key=value ...`

WORKERS = (None, "processes (default: all cores)", int)
OPTIONS = {
    "out": (None, "where the kept records go (default: INPUT with .dedup.jsonl)", str),
    "threshold": (THRESHOLD, "near duplicates: word 5-gram Jaccard similarity >= this"),
    "workers": WORKERS,
}


def main(argv):
    a = configurator.parse(argv, OPTIONS, __doc__, args="INPUT (a JSONL file of records with a "
                           "`text` field)")
    if not 0 < a.threshold <= 1:
        raise UserError(f"--threshold={a.threshold}: expected a Jaccard similarity in (0, 1]")
    path, offsets = input_jsonl(a.args)
    workers, t0 = a.workers or default_workers(), time.time()
    keep, removed = dedup_lines(path, offsets, a.threshold, workers)
    out = a.out or Path(path).with_suffix(".dedup.jsonl")
    copy_lines(path, offsets[keep], out)
    print(f"dedup: {len(offsets)} records, removed {removed['exact']} exact and {removed['near']} "
          f"near duplicates (Jaccard >= {a.threshold}), kept {int(keep.sum())} -> {out}"
          f"{throughput(len(offsets), t0, workers)}")


if __name__ == "__main__":
    configurator.cli(main)
