"""
Training curves as pictures: loss, validation loss, benchmark losses and learning rate of train.py
runs, overlaid.

Each run's out_dir holds log.jsonl, one JSON line per step written by train.py ({"step", "loss",
"lr", "tokens_seen", ...}, with "val_loss" at evaluation steps, and "bench_loss" there when the run
set eval_problems). This draws one panel per quantity with one line per run, against steps or
against training tokens, so that runs with different batch sizes compare at equal data (how
Fig. 2.1 of "Textbooks Are All You Need" compares data sets), and prints each run's last values.
Runs whose directories differ only in a trailing "-N" (out/filtered-1, out/filtered-2, ...) are
seeds of one experiment: they share a colour, and the table adds their mean and spread.

    python plot.py out                                   # -> curves.png
    python plot.py out_a out_b --out=curves.png --x=tokens
"""

import re
import statistics
from collections import Counter
from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

import configurator
from configurator import UserError
from files import atomic_write, read_jsonl

OPTIONS = {
    "out": ("curves.png", "the figure; its suffix picks the format (png, pdf, svg, ...)"),
    "x": ("step", "the x axis: step, or tokens (training tokens seen: runs compare at equal data)"),
}
USAGE = "usage: python plot.py OUT_DIR [OUT_DIR ...] [--out=curves.png] [--x=step|tokens]"


def read_log(out_dir):
    """The records of out_dir/log.jsonl; a half-written last line (a running or killed run) is
    skipped, any other bad line is an error."""
    path = Path(out_dir) / "log.jsonl"
    records = [r for _, r in read_jsonl(path, tail="skip")]
    if not records:
        raise UserError(f"{path}: no log records in it")
    return records


def read_logs(out_dirs):
    """{out_dir: its log records}, each log read once for the figure and the table."""
    return {str(d): read_log(d) for d in out_dirs}


def curves(records, x="step"):
    """{"loss" | "val_loss" | "<benchmark> loss" | "lr": (xs, ys)} from one run's records; x is the
    step or the tokens seen so far."""
    out = {key: ([], []) for key in ("loss", "val_loss", "lr")}
    for r in records:
        # tokens_seen: training tokens per data source up to this step; the step-0 record has none
        at = r["step"] if x == "step" else sum(r.get("tokens_seen", {}).values())
        values = {**{k: r.get(k) for k in ("loss", "val_loss", "lr")},
                  **{f"{name} loss": v for name, v in r.get("bench_loss", {}).items()}}
        for key, value in values.items():
            if value is not None:
                xs, ys = out.setdefault(key, ([], []))
                xs.append(at)
                ys.append(value)
    return out


def experiment(out_dir):
    """The name shared by the seeds of one experiment: the directory without a trailing -N."""
    return re.sub(r"-\d+$", "", str(out_dir).rstrip("/"))


def plot_runs(logs, out="curves.png", x="step"):
    """One figure of the runs in logs ({out_dir: records}, from read_logs), written atomically to
    out (its suffix picks the format)."""
    out = Path(out)
    fmt = out.suffix[1:].lower() or "png"
    runs = {name: curves(records, x) for name, records in logs.items()}
    benchmarks = sorted({k for c in runs.values() for k in c if k.endswith(" loss")})
    panels = [("loss", "training loss"),
              ("val_loss", "validation loss (each run's held-out files)"),
              *((k, k.replace(" loss", ": loss of the reference solutions")) for k in benchmarks),
              ("lr", "learning rate")]
    seeds = Counter(experiment(d) for d in runs)  # in first-seen order
    colour = {g: f"C{i % 10}" for i, g in enumerate(seeds)}
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5 * cols, 4 * rows))  # no pyplot: a figure for a file needs no display
    if fmt not in fig.canvas.get_supported_filetypes():
        raise UserError(f"--out={out}: matplotlib cannot write .{fmt} files; choose one of "
                        f"{', '.join(sorted(fig.canvas.get_supported_filetypes()))}")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (key, title) in zip(axes.flat, panels):
        labelled = set()
        for name, c in runs.items():
            g = experiment(name)
            label = None if g in labelled else (f"{g} ({seeds[g]} seeds)" if seeds[g] > 1 else name)
            labelled.add(g)
            xs, ys = c.get(key, ([], []))
            ax.plot(xs, ys, color=colour[g], alpha=0.8, label=label,
                    marker=None if key in ("loss", "lr") else "o", markersize=3)
        # an evaluation at step 0 sits near ln(vocabulary) ~ 10.8 and would flatten every difference
        # after it: the y axis shows the later evaluations, and the title says so
        points = [(xv, y) for c in runs.values() for xv, y in zip(*c.get(key, ([], [])))]
        later = [y for xv, y in points if xv > 0]
        if key not in ("loss", "lr") and later and len(later) < len(points):
            lo, hi = min(later), max(later)
            ax.set_ylim(lo - 0.1 * (hi - lo + 0.05), hi + 0.1 * (hi - lo + 0.05))
            title += "\n(y axis from the first evaluation after step 0)"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step" if x == "step" else "training tokens")
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))   # 100k, 1.5M: readable tick labels
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("nats / token")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return atomic_write(out, lambda f: fig.savefig(f, format=fmt, dpi=110))


def summary(logs):
    """A table of each run's last logged values (logs: {out_dir: records}, from read_logs), then the
    mean and spread (sample standard deviation, min-max) over the seeds of each experiment."""
    last = {}
    for name, records in logs.items():
        c = curves(records, x="tokens")
        row = {key: ys[-1] for key, (_, ys) in c.items() if key != "lr" and ys}
        tokens = max((max(xs) for xs, _ in c.values() if xs), default=0)
        row.update(step=records[-1]["step"], tokens=tokens)
        last[name] = row
    benchmarks = sorted({k for row in last.values() for k in row if k.endswith(" loss")})
    columns = ["loss", "val_loss", *benchmarks]
    width = max(len(name) for name in last) + 2
    lines = [f"{'run':<{width}}{'step':>6}{'tokens':>10}" + "".join(f"{c:>18}" for c in columns)]
    for name, row in last.items():
        lines.append(f"{name:<{width}}{row['step']:>6}{row['tokens']:>10,}"
                     + "".join(f"{row[c]:>18.4f}" if c in row else f"{'-':>18}" for c in columns))
    for g in dict.fromkeys(map(experiment, last)):
        rows = [row for name, row in last.items() if experiment(name) == g]
        if len(rows) < 2:
            continue
        values = [[row[c] for row in rows if c in row] for c in columns]
        mean_sd = [f"{statistics.mean(v):.4f}+-{statistics.stdev(v):.4f}" if len(v) > 1 else "-"
                   for v in values]
        spread = [f"{min(v):.4f}-{max(v):.4f}" if len(v) > 1 else "-" for v in values]
        lines.append(f"{g + ' mean+-sd':<{width}}{'':>16}" + "".join(f"{c:>18}" for c in mean_sd))
        lines.append(f"{g + ' min-max':<{width}}{'':>16}" + "".join(f"{c:>18}" for c in spread))
    return "\n".join(lines)


def main(argv):
    a = configurator.parse(argv, OPTIONS, __doc__, args="OUT_DIR [OUT_DIR ...] (train.py out_dirs)")
    if not a.args:
        raise UserError(f"no OUT_DIR given; {USAGE}")
    if a.x not in ("step", "tokens"):
        raise UserError(f"--x={a.x}: choose step or tokens")
    logs = read_logs(a.args)
    print(summary(logs))
    print(f"plot.py: wrote {plot_runs(logs, a.out, a.x)} ({len(a.args)} run(s))")


if __name__ == "__main__":
    configurator.cli(main)
