"""
The training data of phi-1 (§2, §2.3): corpora read lazily, tokenized by a pool of workers, and
kept as uint16 token files that train.py memory-maps. phi-1 pretrains on CodeTextbook (about 6 B
tokens of filtered The Stack and StackOverflow plus under 1 B of synthetic textbooks, ~25 GB of
text), so nothing here holds a corpus in memory.

    from data import Source, prepare
    source = Source("the-stack/data/python")  # a .py dir, a text file, .jsonl(.gz), Parquet (dirs)
    for doc_id, text in source:                 # lazily, one file / JSONL line / Parquet record
        ...
    print(source.skipped)                       # what could not be read, by reason
    cache = prepare("the-stack/data/python", "data_cache", val_fraction=0.02, workers=16)

`python train.py --prepare_only=True --data=...` runs `prepare` for each source and exits; `python
bench.py data --data=...` measures it (MB/s, tokens/s, peak memory, beside raw tiktoken). train.py
reads the prepared sources as one weighted mixture (parse_sources, load_mixture, draw: at the end).

Sources. A directory gives every .py file below it (one document each) and every .jsonl, .jsonl.gz
and .parquet file below it (one document per record); a file given directly is read by its suffix,
and any other file is one text document. "stdlib" is the running interpreter's standard library,
its test suites left out. JSONL records hold the text in "text", Parquet records in "content" (the
layout The Stack ships in); `text_column` names another field. Bad input follows one rule in every
source type: an unreadable or non-UTF-8 file or record is skipped and counted; a source with nothing
usable in it, or a Parquet file without the text column, is an error (DataError: exit 2).

Preparation. The main process cuts a source into work units (about 1 MB of files or of JSONL lines,
or one Parquet row group), in the sources' order; each worker reads its unit, tokenizes it and
writes the tokens to a shard file, <|endoftext|> after each document; the main process appends
finished shards to the source's train.bin and val.bin in unit order. Memory stays flat however large
the corpus, only small unit descriptions and file names cross between processes, and the tokens are
the same whatever the number of workers. A document is held out for validation when a hash of its
tokens falls below val_fraction, so identical documents always land in the same split; a source
with too few documents for that (the split would be far from val_fraction) holds out the tail of its
stream instead. Ctrl-C ends a preparation within a second and leaves no cache directory behind.
A cache directory is named by a hash of the sources' content (not their paths or modification
times): an edit is always seen, and a moved or copied corpus still finds its cache.
"""

import gzip
import hashlib
import json
import math
import multiprocessing
import os
import shutil
import signal
import socket
import sysconfig
import threading
import time
import zlib
from collections import Counter, deque
from pathlib import Path

import numpy as np

from configurator import UserError
from files import Progress
from tokenizer import CODEGEN_PATTERN, EOT, GPT2_RANKS_SHA256, get_tokenizer

CACHE_VERSION = 2          # bump when the cache format changes
UNIT_BYTES = 1 << 20       # input bytes per work unit: all workers busy even on a 10 MB corpus
RECORD_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
STDLIB_SKIP = {"test", "tests", "idle_test", "site-packages", "__pycache__"}  # tests: 2x the size
SKIP_DIRS = {"__pycache__"}  # and every hidden directory (.git, .venv: a virtualenv is no corpus)


class DataError(UserError):
    """Bad input (a missing source, a missing column, nothing usable): one line, exit 2."""


# -----------------------------------------------------------------------------
# Reading: a source is a list of files, cut into work units; a unit yields (doc_id, text) alone

def file_kind(path):
    name = path.name
    return next((s[1:] for s in RECORD_SUFFIXES if name.endswith(s)), "text")


class Source:
    """One data source: its files in a fixed order; iterating yields (doc_id, text) lazily and
    counts what it skips in self.skipped (a Counter of reasons)."""

    def __init__(self, spec, text_column=""):
        self.spec, self.text_column, self.skipped = spec, text_column, Counter()
        if spec == "stdlib":
            root, skip, suffixes = Path(sysconfig.get_paths()["stdlib"]), STDLIB_SKIP, (".py",)
        else:
            root, skip, suffixes = Path(spec).expanduser(), SKIP_DIRS, (".py", *RECORD_SUFFIXES)
            if not root.exists():
                raise DataError(f"data source not found: {spec}")
        if root.is_file():
            self.root, self.files = root.parent, [root]
            return
        self.root, self.files = root, []
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [d for d in subfolders  # not even listed
                             if d not in skip and not d.startswith(".")]
            self.files += [p for p in (Path(folder, n) for n in names if n.endswith(suffixes))
                           if p.is_file()]
        self.files.sort()
        if not self.files:
            raise DataError(f"no {', '.join(suffixes)} files in data directory {spec}")

    def column(self, kind):
        return self.text_column or ("content" if kind == "parquet" else "text")

    def units(self):
        """Work units, in the order their documents go into the token stream. A unit is a small
        dict that a worker reads on its own (JSONL lines travel inside it: a gzip stream cannot be
        entered in the middle). "cost" is the unit's share of the input bytes on disk (progress)."""
        group, size = [], 0
        for path in self.files:
            kind = file_kind(path)
            if kind == "text":
                group.append(str(path))
                size += path.stat().st_size
                if size >= UNIT_BYTES:
                    yield dict(kind="files", paths=group, cost=size)
                    group, size = [], 0
                continue
            if group:
                yield dict(kind="files", paths=group, cost=size)
                group, size = [], 0
            units = parquet_units if kind == "parquet" else jsonl_units
            yield from units(path, self.column(kind), self.skipped)
        if group:
            yield dict(kind="files", paths=group, cost=size)

    def __iter__(self):
        for unit in self.units():
            yield from read_unit(unit, self.skipped)


def jsonl_units(path, column, skipped):
    """~UNIT_BYTES of whole lines at a time; a file that cannot be read (or a gzip stream cut short)
    is skipped from there on and counted."""
    try:
        with open(path, "rb") as raw:
            f = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
            line, pos = 1, 0
            while blob := f.read(UNIT_BYTES):
                blob += f.readline()
                yield dict(kind="lines", path=str(path), column=column, first_line=line, blob=blob,
                           cost=raw.tell() - pos)
                line, pos = line + blob.count(b"\n"), raw.tell()
    except (OSError, EOFError, zlib.error):
        skipped["unreadable file"] += 1


def parquet_units(path, column, skipped):
    """One unit per row group (pyarrow reads a row group's column in record batches)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    try:
        with pq.ParquetFile(path) as pf:
            meta, schema = pf.metadata, pf.schema_arrow
    except (OSError, pa.ArrowException):
        skipped["unreadable file"] += 1
        return
    if column not in schema.names:
        raise DataError(f"{path}: no column {column!r}; its columns are {', '.join(schema.names)} "
                        "(choose one with --text_column)")
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)):
        raise DataError(f"{path}: column {column!r} holds {kind}, not text (choose another with "
                        "--text_column)")
    size, row = path.stat().st_size, 0
    for group in range(meta.num_row_groups):
        rows = meta.row_group(group).num_rows
        yield dict(kind="parquet", path=str(path), column=column, row_group=group, first_row=row,
                   cost=size * rows // max(meta.num_rows, 1))
        row += rows


def read_unit(unit, skipped):
    """(doc_id, text) for each usable document of one work unit, in order; the rest is counted in
    `skipped`."""
    if unit["kind"] == "files":
        for path in unit["paths"]:
            try:
                data = Path(path).read_bytes()
            except OSError:
                skipped["unreadable file"] += 1
                continue
            yield from usable(path, data, "file", skipped)
    elif unit["kind"] == "lines":
        path, column = unit["path"], unit["column"]
        for lineno, line in enumerate(unit["blob"].splitlines(), unit["first_line"]):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except UnicodeDecodeError:
                skipped["non-UTF-8 record"] += 1
                continue
            except ValueError:
                record = None
            text = record.get(column) if isinstance(record, dict) else None
            if not isinstance(text, str):
                skipped[f"record without a string {column!r}"] += 1
                continue
            try:
                text.encode("utf-8")  # a lone surrogate from a "\ud800" escape is not UTF-8 either
            except UnicodeEncodeError:
                skipped["non-UTF-8 record"] += 1
                continue
            yield from usable(f"{path}:{lineno}", text, "record", skipped)
    else:
        yield from read_parquet_unit(unit, skipped)


def read_parquet_unit(unit, skipped):
    import pyarrow as pa
    import pyarrow.parquet as pq
    row = unit["first_row"]
    try:
        with pq.ParquetFile(unit["path"]) as pf:
            for batch in pf.iter_batches(batch_size=512, row_groups=[unit["row_group"]],
                                         columns=[unit["column"]]):
                values = batch.column(0)
                # as bytes (zero-copy): a non-UTF-8 value is one skipped record, not a failed batch
                large = pa.types.is_large_string(values.type) or \
                    pa.types.is_large_binary(values.type)
                for value in values.cast(pa.large_binary() if large else pa.binary()).to_pylist():
                    if value is None:
                        skipped[f"record without a string {unit['column']!r}"] += 1
                    else:
                        yield from usable(f"{unit['path']}:{row}", value, "record", skipped)
                    row += 1
    except (OSError, pa.ArrowException):
        skipped["unreadable file"] += 1


def usable(doc_id, data, what, skipped):
    """The document, decoded, unless it is not UTF-8 or only whitespace (skipped and counted)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            skipped[f"non-UTF-8 {what}"] += 1
            return
    if not data or data.isspace():
        skipped[f"empty {what}"] += 1
        return
    yield doc_id, data


# -----------------------------------------------------------------------------
# Tokenizing: workers write shards, the main process appends them in order

def is_val(ids, val_fraction):
    """Hold a document out when a hash of its tokens says so: the same document, the same split."""
    return int.from_bytes(hashlib.sha256(ids).digest()[:8], "little") < val_fraction * 2 ** 64


def tokenize_unit(unit, val_fraction, shard):
    """Worker: tokenize one unit into `shard`.train and `shard`.val (uint16, <|endoftext|> after
    each document)."""
    eot = np.array([EOT], dtype=np.uint16).tobytes()
    tok, skipped = get_tokenizer(), Counter()
    docs = text_bytes = train_tokens = val_tokens = 0
    with open(f"{shard}.train", "wb") as train, open(f"{shard}.val", "wb") as val:
        for _, text in read_unit(unit, skipped):
            ids = tok.encode_array(text)                          # (n,) uint16
            held_out = is_val(ids, val_fraction)
            f = val if held_out else train
            f.write(ids.data)
            f.write(eot)
            docs += 1
            text_bytes += len(text) if text.isascii() else len(text.encode("utf-8"))  # O(1) check
            if held_out:
                val_tokens += len(ids) + 1
            else:
                train_tokens += len(ids) + 1
    return dict(shard=shard, docs=docs, bytes=text_bytes, train_tokens=train_tokens,
                val_tokens=val_tokens, skipped=skipped, cost=unit["cost"])


def append_file(src, dst):
    with open(src, "rb") as f:
        shutil.copyfileobj(f, dst, 1 << 22)
    os.unlink(src)


def tokenize_source(source, out, val_fraction, workers, log):
    """Tokenize every document of `source` into out/train.bin and out/val.bin; returns the summary
    (meta.json)."""
    total = sum(p.stat().st_size for p in source.files)
    log(f"tokenizing {source.spec}: {len(source.files):,} file(s), {total / 1e6:,.1f} MB, "
        f"{workers} worker(s)")
    t0 = time.time()
    progress = Progress(f"tokenizing {source.spec}", total / 1e6, "MB", every=5, log=log)  # on disk
    done = Counter()  # docs, bytes, train_tokens, val_tokens
    get_tokenizer()  # fork: the workers inherit the tokenizer loaded here
    with CtrlCNoted() as ctrl_c, open(out / "train.bin", "wb") as train, \
            open(out / "val.bin", "wb") as val:
        pool = multiprocessing.get_context("fork").Pool(workers, initializer=signal.signal,
                                                         initargs=(signal.SIGINT, signal.SIG_IGN))
        try:
            pending = deque()
            for i, unit in enumerate(source.units()):
                shard = str(out / f"{i:07d}")
                pending.append(pool.apply_async(tokenize_unit, (unit, val_fraction, shard)))
                ctrl_c.check()
                # a bounded window of units in flight: memory does not grow with the corpus
                while len(pending) >= 2 * workers or (pending and pending[0].ready()):
                    collect(pending.popleft(), train, val, done, source.skipped, progress, ctrl_c)
            while pending:
                collect(pending.popleft(), train, val, done, source.skipped, progress, ctrl_c)
        finally:
            pool.terminate()
            pool.join()
    n_train, n_val = done["train_tokens"], done["val_tokens"]
    if not done["docs"]:
        raise DataError(f"{source.spec}: nothing to train on ({len(source.files):,} file(s); "
                        f"skipped: {describe(source.skipped) or 'nothing, the files are empty'})")
    if not 0.5 * val_fraction <= n_val / (n_train + n_val) <= 2 * val_fraction:
        n_train, n_val = cut_stream(out, val_fraction)
    return dict(source=source.spec, files=len(source.files), documents=done["docs"],
                bytes=done["bytes"], train_tokens=n_train, val_tokens=n_val,
                skipped=dict(source.skipped), seconds=round(time.time() - t0, 2))


def collect(result, train, val, done, skipped, progress, ctrl_c):
    """Wait for one unit's shard (noticing Ctrl-C meanwhile); append it to train.bin and val.bin."""
    while not result.ready():
        result.wait(0.1)
        ctrl_c.check()
    r = result.get()
    append_file(f"{r['shard']}.train", train)
    append_file(f"{r['shard']}.val", val)
    done.update(docs=r["docs"], bytes=r["bytes"], train_tokens=r["train_tokens"],
                val_tokens=r["val_tokens"])
    skipped.update(r["skipped"])
    progress.update(r["cost"] / 1e6)


class CtrlCNoted:
    """While a worker pool runs, Ctrl-C only sets a flag, and the main process raises
    KeyboardInterrupt at its next check(), a point where it holds none of the pool's locks: a
    KeyboardInterrupt at any other moment can leave one held and the pool's terminate() waiting for
    it forever. The workers ignore SIGINT (they are terminated), and one that gets it before it
    ignores it only sets its own copy of the flag."""

    def __enter__(self):
        self.pressed = False
        main = threading.current_thread() is threading.main_thread()  # only it sets handlers
        self.previous = signal.signal(signal.SIGINT, self.note) if main else None
        return self

    def note(self, signum, frame):
        self.pressed = True

    def check(self):
        if self.pressed:
            raise KeyboardInterrupt("nothing half-written was kept")

    def __exit__(self, kind, value, traceback):
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
        if kind is None:
            self.check()  # pressed while the pool was ending


def cut_stream(out, val_fraction):
    """Too few documents for a per-document split: join the splits, hold out the stream's tail."""
    train, val = out / "train.bin", out / "val.bin"
    with open(train, "ab") as f:
        append_file(val, f)
    n = train.stat().st_size // 2
    cut = n - max(1, int(n * val_fraction))
    with open(train, "r+b") as f, open(val, "wb") as v:
        f.seek(2 * cut)
        shutil.copyfileobj(f, v)
        f.truncate(2 * cut)
    return cut, n - cut


def describe(skipped):
    return ", ".join(f"{why}: {n:,}" for why, n in sorted(skipped.items()))


# -----------------------------------------------------------------------------
# The cache: one directory per source, named by a hash of its content

def cache_key(source, val_fraction):
    """A hash of everything the tokens depend on: each file's name within the source and its content
    (reading it costs ~1 s per GB, small next to tokenizing), the tokenizer, the split and the text
    column."""
    h = hashlib.sha256(f"v{CACHE_VERSION} {GPT2_RANKS_SHA256} {CODEGEN_PATTERN} "
                       f"val={val_fraction} column={source.text_column}".encode())
    for path in source.files:
        h.update(f"\n{path.relative_to(source.root)}\0".encode())
        try:
            with open(path, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()[:24]


def cache_path(source, cache_root, val_fraction):
    return Path(cache_root) / cache_key(source, val_fraction)


def prepare(spec, cache_root, val_fraction, workers, text_column="", log=print):
    """The cache directory (train.bin, val.bin, meta.json) of one source, tokenizing it first if
    there is none."""
    source = Source(spec, text_column)
    t0 = time.time()
    path = cache_path(source, cache_root, val_fraction)
    key = path.name
    if (path / "meta.json").exists():
        log(f"data: reusing cache {path} for {spec} (content hashed in {time.time() - t0:.1f}s)")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    for stale in path.parent.glob(f"{key}.tmp-{host}-*"):  # a killed preparation on this machine's
        if not pid_alive(int(stale.name.rpartition("-")[2])):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.with_name(f"{key}.tmp-{host}-{os.getpid()}")  # several nodes may share cache_root
    tmp.mkdir()
    try:
        meta = tokenize_source(source, tmp, val_fraction, workers, log)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.rename(tmp, path)  # atomic: a cache directory is complete or absent
        except OSError:  # another process (another node) finished the same source first
            shutil.rmtree(tmp)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, KeyboardInterrupt) and not str(e):
            raise KeyboardInterrupt("nothing half-written was kept") from None
        raise
    skipped = f"; skipped {describe(meta['skipped'])}" if meta["skipped"] else ""
    log(f"data: {spec}: {meta['documents']:,} documents, {meta['bytes'] / 1e6:,.1f} MB -> "
        f"{meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens in "
        f"{meta['seconds']:.1f}s ({meta['bytes'] / 1e6 / max(meta['seconds'], 1e-9):.1f} MB/s)"
        f"{skipped}, cached in {path}")
    return path


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's
        pass
    return True


def load_tokens(cache):
    """The memory-mapped train and val token streams of one prepared source."""
    return tuple(np.memmap(cache / f"{split}.bin", dtype=np.uint16, mode="r")
                 if (cache / f"{split}.bin").stat().st_size else np.zeros(0, np.uint16)
                 for split in ("train", "val"))


# -----------------------------------------------------------------------------
# The mixture train.py draws from: several prepared sources, each with a weight

def parse_sources(spec):
    """"a.jsonl:0.7,b/:0.3" -> ([paths], [weights]); weights None: each weighs its token count."""
    paths, weights = [], []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        path, weight = item, None
        head, colon, tail = item.rpartition(":")
        if colon:
            try:
                path, weight = head, float(tail)
            except ValueError:
                pass  # a colon inside the path
        if weight is not None and not (weight > 0 and math.isfinite(weight)):
            raise DataError(f"--data: the weight of {path} must be a positive number, got {tail}")
        paths.append(path)
        weights.append(weight)
    if not paths:
        raise DataError("no data sources given (--data=...)")
    if len(set(paths)) < len(paths):
        raise DataError(f"--data names a source twice: {spec}")
    if all(w is None for w in weights):
        return paths, None
    if None in weights:
        raise DataError(f"--data: give every source a weight, or none (then each weighs its token "
                        f"count): {spec}")
    return paths, weights


def prepare_all(paths, cache_root, val_fraction, workers, column, builder, log):
    """The cache directory of each source, tokenizing it first if there is none. Only `builder`
    (local rank 0 of a torchrun job) tokenizes; the node's other processes find the same directory
    from the content hash and wait for it."""
    if builder:
        workers = workers or os.cpu_count() or 1
        return [prepare(p, cache_root, val_fraction, workers, column, log) for p in paths]
    caches = [cache_path(Source(p, column), cache_root, val_fraction) for p in paths]
    while not all((c / "meta.json").exists() for c in caches):
        time.sleep(0.5)
    return caches


def load_mixture(paths, weights, caches, block, log):
    """The sources' train and val streams (memory-mapped) and the probability of drawing a sequence
    from each."""
    train, val = [], []
    for path, cache in zip(paths, caches):
        t, v = load_tokens(cache)
        short = block + 2 - len(v)
        if 0 < short < len(t) - block - 1:  # a tiny source: hold out its train tail too (1 val seq)
            t, v = t[:len(t) - short], np.concatenate([t[len(t) - short:], v])
            log(f"data: {path}: the val split is shorter than a sequence, so the last {short} "
                "train tokens are held out too")
        for split, toks in (("train", t), ("val", v)):
            if len(toks) <= block + 1:
                raise DataError(f"the {split} split of {path} has {len(toks)} tokens, too few for "
                                f"block_size={block}; use more data or a smaller block_size")
        train.append(t)
        val.append(v)
    probs = np.array(weights if weights else [len(t) for t in train], dtype=np.float64)
    probs /= probs.sum()
    if len(paths) > 1:
        log("data mixture: " + ", ".join(f"{p} {q:.1%} ({len(t) / 1e6:,.1f} M tokens)"
                                         for p, q, t in zip(paths, probs, train)))
    return train, val, probs


def draw(lengths, probs, batch, block, seed, *stream):
    """The source and start of each sequence of one micro-batch, from (seed, *stream) alone: a
    resumed run, or another number of processes, draws exactly the same."""
    rng = np.random.default_rng([seed, *stream])
    which = rng.choice(len(probs), size=batch, p=probs)                        # (B,)
    # a window is block + 1 tokens (inputs and their next tokens): the last one starts at
    # length - block - 1, and integers' upper bound is exclusive
    starts = rng.integers(0, np.asarray(lengths)[which] - block)              # (B,)
    return which, starts


def tokens_drawn(lengths, probs, batch, block, seed, step, n_micro):
    """Tokens each source gave one training step's n_micro micro-batches (replayed, not sent)."""
    which = [draw(lengths, probs, batch, block, seed, 0, step, m)[0] for m in range(n_micro)]
    return np.bincount(np.concatenate(which), minlength=len(probs)) * block
