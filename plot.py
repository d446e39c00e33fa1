"""
Training curves as pictures: loss, validation loss and learning rate of one or more train.py runs, overlaid.

Each run's out_dir holds log.jsonl, one JSON line per step written by train.py ({"step", "loss", "lr",
"tokens_seen", ...}, with "val_loss" at evaluation steps). This draws three panels (training loss, validation
loss, learning rate) with one line per run, against steps or against training tokens, so that runs with
different batch sizes compare at equal data (how Fig. 2.1 of "Textbooks Are All You Need" compares data sets).

    python plot.py out                                   # -> curves.png
    python plot.py out_a out_b --out=curves.png --x=tokens
"""

import json
import os
import sys
from pathlib import Path

USAGE = "usage: python plot.py OUT_DIR [OUT_DIR ...] [--out=curves.png] [--x=step|tokens]"


class PlotError(Exception):
    """Bad input: one line, exit 2."""


def read_log(out_dir):
    """The records of out_dir/log.jsonl; a half-written last line (a killed run) is skipped, any other bad line is
    an error."""
    path = Path(out_dir) / "log.jsonl"
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise PlotError(f"{path}: {e.strerror}")
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):
                raise PlotError(f"{path}: line {n} is not JSON")
    if not records:
        raise PlotError(f"{path}: no log records in it")
    return records


def curves(records, x="step"):
    """{"loss" | "val_loss" | "lr": (xs, ys)} from one run's records; x is the step or the tokens seen so far."""
    out = {key: ([], []) for key in ("loss", "val_loss", "lr")}
    for r in records:
        # tokens_seen: training tokens per data source up to this step; the step-0 record has none (0 tokens)
        at = r["step"] if x == "step" else sum(r.get("tokens_seen", {}).values())
        for key, (xs, ys) in out.items():
            if r.get(key) is not None:
                xs.append(at)
                ys.append(r[key])
    return out


def plot_runs(out_dirs, out="curves.png", x="step"):
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt
    runs = {str(d): curves(read_log(d), x) for d in out_dirs}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, title in zip(axes, ("loss", "val_loss", "lr"), ("training loss", "validation loss", "learning rate")):
        for name, c in runs.items():
            xs, ys = c[key]
            ax.plot(xs, ys, marker="o" if key == "val_loss" else None, markersize=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step" if x == "step" else "training tokens")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats / token")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")  # keeps the suffix: it picks the format
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
    return out


def main(argv):
    out_dirs, options = [], {"out": "curves.png", "x": "step"}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__.strip())
            sys.exit(0)
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            if key not in options or not eq:
                raise PlotError(f"unknown option {arg!r}; {USAGE}")
            options[key] = value
        else:
            out_dirs.append(arg)
    if not out_dirs:
        raise PlotError(USAGE)
    if options["x"] not in ("step", "tokens"):
        raise PlotError(f"--x={options['x']}: choose step or tokens")
    print(f"plot.py: wrote {plot_runs(out_dirs, options['out'], options['x'])} ({len(out_dirs)} run(s))")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except PlotError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("plot.py: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as e:
        print(f"plot.py: failed: {e}", file=sys.stderr)
        sys.exit(1)
