import os
import platform
import resource
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import configurator
from data import Source, cache_key, parse_sources, tokenize_source
from tokenizer import get_tokenizer

DATA_OPTIONS = {
    "data": ("stdlib", "comma-separated sources, as train.py's --data (weights are ignored)"),
    "tokenizer_workers": (0, "worker processes; 0 = one per CPU core"),
    "text_column": ("", "the field holding the text: \"\" = \"text\" in JSONL, \"content\" in Parquet"),
    "val_fraction": (0.02, "fraction of documents held out, as train.py's"),
}
DATA_DOC = """python bench.py data: data.py's preparation of each source afresh (in a temporary cache) while the
process tree's memory is sampled, then tiktoken's GPT-2 encode_ordinary_batch, one thread per worker, on the same
documents read into memory. Both are timed in wall-clock and in CPU seconds: on a machine that other jobs keep
busy, the CPU time per MB is the fair comparison (the wall time depends on what else runs at each moment).

    python bench.py data --data=stdlib
    python bench.py data --data=the-stack/data/python --tokenizer_workers=16"""


def bench_data(argv):
    a = configurator.parse(argv, DATA_OPTIONS, DATA_DOC)
    paths, _ = parse_sources(a.data)
    workers = a.tokenizer_workers or os.cpu_count() or 1
    load = os.getloadavg()
    print(f"bench data: {platform.node()}, {os.cpu_count()} CPU(s), {workers} worker(s), load average "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, Python {sys.version.split()[0]}, "
          f"{datetime.now():%Y-%m-%d %H:%M}", flush=True)
    for spec in paths:
        source = Source(spec, a.text_column)
        t0 = time.time()
        cache_key(source, a.val_fraction)
        t_hash = time.time() - t0
        peak, done = [tree_rss()], threading.Event()

        def sample():
            while not done.wait(0.1):
                peak.append(max(peak[-1], tree_rss()))
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with tempfile.TemporaryDirectory(prefix="phi1-bench-") as tmp:
            t0, c0 = time.time(), cpu_seconds()
            meta = tokenize_source(source, Path(tmp), a.val_fraction, workers, log=lambda msg: None)
            seconds, cpu = time.time() - t0, cpu_seconds() - c0  # the pool's workers have ended: counted
        done.set()
        sampler.join()
        mb, tokens = meta["bytes"] / 1e6, meta["train_tokens"] + meta["val_tokens"]
        # the baseline: the same documents, in batches of ~16 MB so that a large corpus fits in memory
        bpe, wall_tiktoken, cpu_tiktoken = get_tokenizer().bpe, 0.0, 0.0
        for batch in text_batches((text for _, text in Source(spec, a.text_column)), 16e6):
            t0, c0 = time.time(), cpu_seconds()
            bpe.encode_ordinary_batch(batch, num_threads=workers)
            wall_tiktoken += time.time() - t0
            cpu_tiktoken += cpu_seconds() - c0
        print(f"bench: {spec}: {meta['documents']:,} documents, {mb:,.1f} MB -> {tokens:,} tokens in "
              f"{seconds:.1f}s: {mb / seconds:.1f} MB/s, {tokens / seconds / 1e6:.2f} M tokens/s, "
              f"{mb / cpu:.1f} MB per CPU-second, peak RSS of the process tree {max(peak) / 1e6:,.0f} MB | "
              f"tiktoken GPT-2 encode_ordinary_batch, {workers} threads: {mb / wall_tiktoken:.1f} MB/s, "
              f"{mb / cpu_tiktoken:.1f} MB per CPU-second | ratio {wall_tiktoken / seconds:.2f}x wall, "
              f"{cpu_tiktoken / cpu:.2f}x CPU | content hash {t_hash:.1f}s ({mb / max(t_hash, 1e-9):,.0f} MB/s)",
              flush=True)


def tree_rss(pid=None):
    """Resident memory (bytes) of a process and all its descendants, from /proc."""
    pid = pid or os.getpid()
    try:
        with open(f"/proc/{pid}/status") as f:
            rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
        children = []
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += f.read().split()
    except (OSError, StopIteration):
        return 0
    return rss + sum(tree_rss(int(c)) for c in children)


def cpu_seconds():
    """CPU time (user + system) of this process's threads and of its children that have ended."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def text_batches(texts, chars):
    """Lists of consecutive texts of about `chars` characters each."""
    batch, size = [], 0
    for text in texts:
        batch.append(text)
        size += len(text)
        if size >= chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch
