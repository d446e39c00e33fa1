import json
import os
import platform
import resource
import sys
import time
from datetime import datetime
from pathlib import Path

import configurator
from data import Source
from files import atomic_write
from filter import COMMON_OPTIONS, STAGE_OPTIONS, stage_all

FILTER_OPTIONS = {
    "n_files": (200_000, "files in the generated corpus"),
    **COMMON_OPTIONS,
    **{k: v for stage in STAGE_OPTIONS.values() for k, v in stage.items() if k != "input"},
    "out_dir": ("out-bench-filter", "where the generated corpus and every stage's outputs go"),
}
FILTER_DOC = """python bench.py filter: filter.py's five stages at scale, on a generated corpus of
--n_files files made from the standard library's (each cut to its first ~4 KB, about a file of The
Stack, and given a line of its own so that no two are duplicates), written to
OUT_DIR/bench-corpus.jsonl. Prints filter.py's report (files/s of each stage) and the wall and CPU
time and peak memory of the whole. Takes every key of `python filter.py all` but --input, e.g.
--embed_ckpt= for a code model's embeddings on a GPU instead of the TF-IDF stand-in.

    python bench.py filter --n_files=20000
    python bench.py filter --n_files=200000 --embed_ckpt=codegen-350M-mono"""


def bench_filter(argv):
    a = configurator.parse(argv, FILTER_OPTIONS, FILTER_DOC)
    load = os.getloadavg()
    print(f"bench filter: {platform.node()}, {os.cpu_count()} CPU(s), load average {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, Python {sys.version.split()[0]}, "
          f"{datetime.now():%Y-%m-%d %H:%M}", flush=True)
    sources = [text for _, text in Source("stdlib")]
    a.input = Path(a.out_dir) / "bench-corpus.jsonl"

    def write(f):
        for i in range(a.n_files):
            text = sources[i % len(sources)]
            text = text[:text.find("\n", 4000) + 1 or None]
            f.write((json.dumps({"text": f"# copy {i // len(sources)}\n{text}"}) + "\n").encode())

    atomic_write(a.input, write)
    size = a.input.stat().st_size / 1e6
    print(f"bench filter: {a.n_files:,} files ({size:,.0f} MB) in {a.input}")
    t0, cpu0 = time.time(), time.process_time()
    stage_all(a)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    load = os.getloadavg()
    print(f"bench filter: {a.n_files:,} files, all five stages in {time.time() - t0:.0f} s wall, "
          f"{time.process_time() - cpu0:.0f} s CPU, peak RSS {rss:,.0f} MB; load average at the "
          f"end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
