"""
What every script writes and reads: whole files written atomically, JSONL appended a line at a time,
and the progress line of long work. A kill at any moment leaves each file either as it was or
complete (atomic_write), or with at most its last line torn, which the readers below know how to
treat.

    from files import atomic_write, append_jsonl, read_jsonl, LineReader, Progress
    # the one writer that renames files into place
    atomic_write("results.json", json.dumps(results))
    with open("labels.jsonl", "a") as f:
        append_jsonl(f, {"id": "a.py", "label": 1})  # flushed: a kill loses at most this line
    for lineno, record in read_jsonl("labels.jsonl"): ...
    path, offsets = input_jsonl(a.args)           # a command's one INPUT file, its lines by offset
    line = LineReader(path)(offsets[7])           # the 8th record, the others left unread
    bar = Progress("embed", total=n_files, unit="files"); bar.update(100)   # rate and ETA every 2 s
"""

import gzip
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from configurator import RunError, UserError


def atomic_write(path, data):
    """Write `data` (str, bytes, or a function that writes into a binary file object) to path
    through a temporary file in the same directory, fsync and rename: the file is complete or as it
    was, whatever happens. A failure (a full disk) is a RunError naming the file, and leaves no
    temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        raise RunError(f"cannot write {path}: {e.strerror or e} (the previous {path.name}, "
                       "if any, is intact)")
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must reach the disk
    finally:
        os.close(dir_fd)
    return path


# -----------------------------------------------------------------------------
# JSONL: labels, samples, generations and logs are appended one line at a time and flushed, so a
# killed run loses at most the line it was writing; reading such a file again knows what a kill
# leaves (a last line without its newline).

def append_jsonl(f, record, fsync=False):
    """Write one record as one JSON line and flush it, so a killed run loses at most the line being
    written."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    if fsync:
        os.fsync(f.fileno())


def jsonl_lines(path, tail="error"):
    """Yield (line number, byte offset, line) for each non-blank line of a .jsonl or .jsonl.gz file,
    streaming.

    A last line without its newline is what a killed writer leaves. If it is a whole JSON object it
    is read (with tail="repair" it also gets its newline); otherwise `tail` decides: "error", "skip"
    (a file that another process may still be writing, such as a running train.py's log), or
    "repair" (a file this process is about to append to: the torn line is cut off). With "repair" a
    missing file reads as empty; otherwise it is an error."""
    path = Path(path)
    if not path.is_file():
        if tail == "repair" and not path.exists():
            return
        raise UserError(f"{path}: no such file")
    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, 1):
            if not line.endswith(b"\n"):   # the last line, torn or only missing its newline
                whole = _is_json_object(line)
                if tail == "repair" and line.strip():   # (a whole object is never blank)
                    with open(path, "r+b") as g:
                        if whole:
                            g.seek(offset + len(line))
                            g.write(b"\n")
                        else:
                            g.truncate(offset)
                elif tail == "error" and line.strip() and not whole:
                    raise UserError(f"{path}: line {lineno} is cut off (was its writer killed?): "
                                    f"{line[:60]!r}")
                if whole:
                    yield lineno, offset, line + b"\n"
                return
            if line.strip():
                yield lineno, offset, line
            offset += len(line)


def _is_json_object(line):
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def read_jsonl(path, tail="error"):
    """[(line number, record)] of a JSONL file (see jsonl_lines for `tail`); lines that are not JSON
    objects are an error naming them."""
    records, bad = [], []
    for lineno, _, line in jsonl_lines(path, tail):
        try:
            record = json.loads(line)
        except UnicodeDecodeError as e:
            bad.append(f"line {lineno}: invalid UTF-8 at byte {e.start + 1}")
            continue
        except json.JSONDecodeError as e:
            bad.append(f"line {lineno} column {e.colno}: {e.msg}")
            continue
        if not isinstance(record, dict):
            bad.append(f"line {lineno}: not a JSON object")
            continue
        records.append((lineno, record))
    if bad:
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        raise UserError(f"{path}: {len(bad)} malformed line(s): {'; '.join(bad[:5])}{more}")
    return records


# -----------------------------------------------------------------------------
# JSONL at the paper's scale (~1 B tokens of synthetic data in one file): a pass holds only the byte
# offset of each line and reads a line back when it needs it, so no text stays in memory.

def input_jsonl(args):
    """The one INPUT file of a command line (its positional arguments) and the byte offsets of its
    lines, (n,) int64, read without decoding them (records are checked as a pass reads them)."""
    if len(args) != 1:
        raise UserError(f"expected one INPUT file, got {' '.join(args) or 'none'}")
    offsets = np.array([off for _, off, _ in jsonl_lines(args[0])], dtype=np.int64)
    return args[0], offsets


class LineReader:
    """Random access to the lines of a file by byte offset (one open file; the OS's page cache does
    the rest)."""

    def __init__(self, path):
        self.f = open(path, "rb")

    def __call__(self, offset):
        self.f.seek(int(offset))
        line = self.f.readline()
        return line if line.endswith(b"\n") else line + b"\n"   # a last line without its newline

    def close(self):
        self.f.close()


def record_of(item):
    """A record from (its number, a JSONL line or a dict), checked to have a text; its id defaults
    to the number. Otherwise a ValueError names the record (the caller adds the file)."""
    i, x = item
    if isinstance(x, dict):
        r = x
    else:
        try:
            r = json.loads(x)
        except ValueError as e:
            raise ValueError(f"record {i} is not JSON ({e})") from None
    if not isinstance(r, dict) or not isinstance(r.get("text"), str):
        raise ValueError(f"record {i} has no 'text' field")
    r.setdefault("id", str(i))
    return r


def copy_lines(path, offsets, out):
    """The lines of `path` at `offsets`, in that order, into `out` (atomically)."""
    reader = LineReader(path)
    try:
        atomic_write(out, lambda f: f.writelines(map(reader, offsets)))
    finally:
        reader.close()


# -----------------------------------------------------------------------------
# Progress of long work

def fmt_time(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    """A progress line at most every `every` seconds, and at the end: done/total, rate and ETA (the
    rate alone when the total is unknown). `start` is work done before this run (a resumed one),
    left out of the rate. update(n, extra) adds n and appends the caller's own fields to the
    line."""

    def __init__(self, what, total=None, unit="", every=2.0, start=0, log=None):
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.done = self.start = start
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.t0 = self.last = time.time()

    def update(self, n=1, extra=""):
        self.done += n
        now = time.time()
        finished = (self.total is not None
                    and self.done - n < self.total <= self.done)  # crossed it just now
        if now - self.last < self.every and not finished:
            return
        self.last = now
        rate = (self.done - self.start) / max(now - self.t0, 1e-9)
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            line = f"{self.what}: {_amount(self.done)}{unit} ({rate:,.1f}{unit}/s"
        else:
            eta = fmt_time((self.total - self.done) / rate) if rate > 0 else "?"
            line = (f"{self.what}: {_amount(self.done)}/{_amount(self.total)}{unit} "
                    f"({self.done / max(self.total, 1e-9):.0%}, {rate:,.1f}{unit}/s, ETA {eta}")
        self.log(line + (f", {extra})" if extra else ")"))


def throughput(n, t0, workers):
    """' in 2.0 s (5000 records/s on 2 workers)': how fast a pass over n records started at t0 went
    (bench.py reads the rate from this line)."""
    s = time.time() - t0
    return (f" in {s:.1f} s ({n / max(s, 1e-9):.0f} records/s on {workers} "
            f"worker{'s' * (workers > 1)})")


def _amount(x):
    """Counts as integers (1,234); fractional amounts such as megabytes with a decimal below 100."""
    return f"{x:,.0f}" if x == int(x) or x >= 100 else f"{x:,.1f}"
