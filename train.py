"""
Train phi-1: the pretraining and finetuning runs of "Textbooks Are All You Need" (Gunasekar et al., 2023, §2.3),
from a laptop CPU to torchrun on many GPUs, in one file that reads top to bottom (after nanoGPT's train.py).

    python train.py                      # a tiny phi on this interpreter's standard library, on CPU, in ~5 minutes
    python train.py --data=textbooks.jsonl,code/ --model=phi-1-small --batch_size=16
    python train.py --prepare_only=True --data=out-filter/filtered.jsonl:0.7,data/textbooks.jsonl:0.3  # tokenize only
    torchrun --standalone --nproc_per_node=8 train.py --recipe=pretrain --data=... --compile=True
    torchrun --standalone --nproc_per_node=8 train.py --recipe=finetune --init_from=out/ckpt_024000.pt --data=...
    python train.py my_run.py --max_iters=100            # a config file of `key = value` lines, then overrides
    python train.py --bench=True --recipe=pretrain --model=phi-1   # tokens/s and MFU on synthetic data

Every hyperparameter is a global just below, with a one-line comment. Precedence: these defaults < the recipe
(--recipe=pretrain|finetune, the paper's two runs) < a config file < --key=value. Values are type-checked against
the defaults. `--help` lists every key with its comment.
Each source in --data is tokenized once into memory-mapped uint16 token files under cache_dir (data.py), and each
sequence of a batch is drawn from a source with the source's weight. Every step appends a JSON line to
out_dir/log.jsonl; out_dir/ckpt.pt holds everything needed to resume exactly; out_dir/lock keeps a second run out.
"""

import ast
import dataclasses
import difflib
import fcntl
import io
import json
import math
import os
import re
import socket
import sys
import time
import tokenize
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from data import DataError, Source, benchmark, cache_path, load_tokens, prepare
from files import fmt_time, read_jsonl
from eval import EvalError, benchmark_loss, load_problems
from model import Phi, PhiConfig, PRESETS
from weights import load_model
from tokenizer import EOT, get_tokenizer

_names_before_config = set(globals())
# -----------------------------------------------------------------------------
# I/O
out_dir = "out"                # checkpoints (ckpt.pt; kept ones as ckpt_NNNNNN.pt) and log.jsonl
eval_interval = 25             # steps between validation-loss estimates (also at step 0)
eval_iters = 8                 # micro-batches per validation-loss estimate (the same batches every time)
eval_problems = ""             # also the benchmark loss at each evaluation (eval.py loss): "humaneval", "mbpp", paths
log_interval = 10              # steps between printed lines; log.jsonl gets every step
ckpt_interval = 0              # steps between checkpoints; 0 = every eval_interval. One is always written at the end
keep_ckpts = ""                # also keep these steps as ckpt_NNNNNN.pt (weights only): "24000,30000", or "all"
init_from = "scratch"          # "scratch", "resume" (out_dir/ckpt.pt), or a checkpoint / out_dir / HF dir to finetune
sample_prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'  # completed at the end
sample_tokens = 64             # tokens sampled for that completion; 0 = none
# data
data = "stdlib"                # comma-separated sources, each path[:weight]: dirs, .py/text files, .jsonl(.gz), Parquet
text_column = ""               # the field holding the text: "" = "text" in JSONL, "content" in Parquet (The Stack)
cache_dir = "data_cache"       # tokenized sources, one directory each, named by a hash of the source's content
val_fraction = 0.02            # fraction of documents held out for the validation loss
tokenizer_workers = 0          # processes for tokenizing; 0 = one per CPU core
prepare_only = False           # only tokenize --data into cache_dir, then exit (with --bench=True: measure that)
doc_mask = False               # attend only within a document (doc_ids from the <|endoftext|> positions)
# model
model = "tiny"                 # model.py preset: nano, tiny, phi-1-small, phi-1
block_size = 128               # tokens per training sequence (the paper: 2048)
n_layer = 0                    # layers; 0 = the preset's
n_embd = 0                     # width; 0 = the preset's (MLP inner size follows as 4 x width)
n_head = 0                     # attention heads; 0 = the preset's
dropout = 0.0                  # attention and residual dropout (the paper: 0.1)
# optimizer
batch_size = 8                 # micro-batch: sequences per forward/backward on each process
global_batch_size = 0          # sequences per optimizer step over all processes; 0 = batch_size x accumulation x world
gradient_accumulation_steps = 1  # micro-batches per step on each process; derived when global_batch_size is set
learning_rate = 2e-3           # peak learning rate
weight_decay = 0.1             # AdamW weight decay, on matrices and embeddings only
beta1 = 0.9                    # AdamW betas: the paper does not give them; 0.9 / 0.95 is the usual for LLMs
beta2 = 0.95                   # (see beta1)
grad_clip = 1.0                # clip the gradients' global norm to this (the paper is silent); 0 = off
# schedule
max_iters = 150                # optimizer steps
warmup_iters = 15              # linear warmup from 0 to learning_rate
lr_schedule = "linear"         # decay after warmup: "linear" (the paper) or "cosine"
lr_decay_iters = 0             # step where the decay reaches min_lr; 0 = max_iters
min_lr = 0.0                   # final learning rate (the paper is silent; linear decay to 0)
# system
recipe = ""                    # "pretrain" or "finetune": the paper's runs (RECIPES below); --key=value still wins
device = "auto"                # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"
dtype = "auto"                 # "auto" (bfloat16 on GPUs, float32 on CPU), "float32", "bfloat16", "float16"
compile = False                # torch.compile the model (worth it on GPUs; slow to start)
seed = 1337                    # seeds the weights, the batches and dropout
deterministic = False          # bitwise-reproducible GPU steps (exact resume there): the attention kernel's
                               # deterministic backward and torch's deterministic algorithms, somewhat slower
bench = False                  # only measure tokens/s and MFU on synthetic data (no data, no checkpoints)
bench_steps = 10               # measured steps in bench mode, each one micro-batch per process, after 3 warmup steps
# -----------------------------------------------------------------------------
config_keys = [k for k in globals() if k not in _names_before_config and not k.startswith("_")]

# §2.3. Global batches are in sequences of block_size tokens (1024 x 2048 = 2 M tokens per step for pretraining).
# batch_size is the micro-batch per GPU, which the paper does not give (DeepSpeed on 8 A100s): lower it if memory
# runs out; gradient accumulation keeps the global batch. Kept checkpoints hold only the weights (5.7 GB for phi-1).
RECIPES = {
    "pretrain": dict(model="phi-1", block_size=2048, dropout=0.1, global_batch_size=1024, batch_size=8,
                     learning_rate=1e-3, warmup_iters=750, weight_decay=0.1, max_iters=36_000, lr_schedule="linear",
                     eval_interval=500, eval_iters=20, ckpt_interval=1000, keep_ckpts="24000"),  # phi-1-base = 24,000
    "finetune": dict(model="phi-1", block_size=2048, dropout=0.1, global_batch_size=256, batch_size=8,
                     learning_rate=1e-4, warmup_iters=50, weight_decay=0.01, max_iters=6000, lr_schedule="linear",
                     eval_interval=500, eval_iters=20, ckpt_interval=1000, keep_ckpts="all"),  # pick the best later
}
CHOICES = {"lr_schedule": ("linear", "cosine"), "dtype": ("auto", "float32", "bfloat16", "float16"),
           "recipe": ("", *RECIPES), "model": tuple(PRESETS)}
POSITIVE = ("eval_interval", "eval_iters", "log_interval", "block_size", "batch_size", "gradient_accumulation_steps",
            "max_iters", "bench_steps")


class UserError(Exception):
    """Bad input: reported as one line, without a traceback (exit 2)."""


class RunError(Exception):
    """A failure while running (e.g. a full disk): reported as one line (exit 1)."""


# -----------------------------------------------------------------------------
# Configuration: --key=value and config files, type-checked against the defaults above

def convert(key, raw, default):
    """A command-line string as the type of the key's default."""
    kind = type(default).__name__
    if isinstance(default, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
    else:
        try:
            return type(default)(raw)
        except ValueError:
            pass
    raise UserError(f"--{key}={raw}: expected {kind}, e.g. --{key}={default!r}")


def check_key(key, defaults, where):
    if key not in defaults:
        close = difflib.get_close_matches(key, defaults, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else "; run with --help for the list of keys"
        raise UserError(f"unknown config key {key!r} in {where}{hint}")


def read_config_file(path, defaults):
    """`key = literal` lines of a Python file (no code is run), checked like --key=value."""
    try:
        tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))
    except OSError as e:
        raise UserError(f"config file {path}: {e.strerror}")
    except (SyntaxError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path}: not valid Python ({e})")
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise UserError(f"config file {path}, line {node.lineno}: only `key = value` lines are allowed")
        key = node.targets[0].id
        check_key(key, defaults, path)
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            raise UserError(f"config file {path}, line {node.lineno}: {key} must be a literal (number, string, bool)")
        default = defaults[key]
        if isinstance(default, float) and type(value) is int:
            value = float(value)
        if type(value) is not type(default):
            raise UserError(f"config file {path}, line {node.lineno}: {key} = {value!r} is "
                            f"{type(value).__name__}, expected {type(default).__name__}")
        values[key] = value
    return values


def parse_config(argv, defaults):
    """defaults < recipe < config file < --key=value; returns the full config dict."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        comments = key_comments()
        width = min(32, max(len(f"--{k}={v!r}") for k, v in defaults.items()))
        print("keys (default, what it does):")
        print("\n".join(f"  {f'--{k}={v!r}':<{width}}  {comments.get(k, '')}" for k, v in defaults.items()))
        sys.exit(0)
    from_file, from_cli = {}, {}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, raw = arg[2:].partition("=")
            if not eq:
                raise UserError(f"expected --key=value, got {arg!r}")
            check_key(key, defaults, "the command line")
            from_cli[key] = convert(key, raw, defaults[key])
        else:
            from_file.update(read_config_file(arg, defaults))
    config = dict(defaults)
    name = from_cli.get("recipe", from_file.get("recipe", defaults["recipe"]))
    config.update(RECIPES.get(name, {}))
    config.update(from_file)
    config.update(from_cli)
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise UserError(f"{key}={config[key]!r}: choose one of {', '.join(map(repr, allowed))}")
    for key in POSITIVE:
        if config[key] <= 0:
            raise UserError(f"{key}={config[key]} must be positive")
    if not 0 < config["val_fraction"] < 1:
        raise UserError(f"val_fraction={config['val_fraction']} must be between 0 and 1")
    return config


def key_comments():
    """Each key's one-line comment, read from the block of globals at the top of this file."""
    source = Path(__file__).read_text(encoding="utf-8")
    comments = {t.start[0]: t.string.lstrip("# ") for t in tokenize.generate_tokens(io.StringIO(source).readline)
                if t.type == tokenize.COMMENT}
    keys = {}
    for lineno, line in enumerate(source.splitlines(), 1):
        if m := re.match(r"(\w+) = ", line):
            keys.setdefault(m[1], comments.get(lineno, ""))
    return keys


def derive_accumulation(global_batch, micro_batch, world_size, accumulation):
    """Micro-batches per step on each process, so that all of them together make the global batch."""
    if not global_batch:
        return accumulation
    if global_batch % (micro_batch * world_size):
        raise UserError(f"global_batch_size={global_batch} is not a multiple of batch_size x processes "
                        f"= {micro_batch} x {world_size}")
    return global_batch // (micro_batch * world_size)


def get_lr(step, max_lr, warmup, decay_end, final_lr, schedule):
    """Learning rate for optimizer step `step` (1-based): linear warmup, then linear (or cosine) decay."""
    if step <= warmup:
        return max_lr * step / warmup
    if step >= decay_end:
        return final_lr
    progress = (step - warmup) / (decay_end - warmup)  # 0 -> 1
    coeff = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return final_lr + coeff * (max_lr - final_lr)


# -----------------------------------------------------------------------------
# Data: each source is one memory-mapped token stream with <|endoftext|> after each document (§2), prepared by
# data.py; each sequence of a batch comes from a source drawn with the source's weight

def parse_sources(spec):
    """"a.jsonl:0.7,b/:0.3" -> ([paths], [weights]), or weights None: each source weighs its token count."""
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
            raise UserError(f"--data: the weight of {path} must be a positive number, got {tail}")
        paths.append(path)
        weights.append(weight)
    if not paths:
        raise UserError("no data sources given (--data=...)")
    if len(set(paths)) < len(paths):
        raise UserError(f"--data names a source twice: {spec}")
    if all(w is None for w in weights):
        return paths, None
    if None in weights:
        raise UserError(f"--data: give every source a weight, or none (then each weighs its token count): {spec}")
    return paths, weights


def prepare_data(paths, cache_root, val_fraction, workers, column, builder, log):
    """The cache directory of each source, tokenizing it first if there is none. Only `builder` (local rank 0)
    tokenizes; the node's other processes find the same directory from the content hash and wait for it."""
    if builder:
        return [prepare(p, cache_root, val_fraction, workers or os.cpu_count() or 1, column, log) for p in paths]
    caches = [cache_path(Source(p, column), cache_root, val_fraction) for p in paths]
    while not all((c / "meta.json").exists() for c in caches):
        time.sleep(0.5)
    return caches


def load_mixture(paths, weights, caches, block, log):
    """The sources' train and val streams (memory-mapped) and the probability of drawing a sequence from each."""
    train, val = [], []
    for path, cache in zip(paths, caches):
        t, v = load_tokens(cache)
        short = block + 2 - len(v)
        if 0 < short < len(t) - block - 1:  # a tiny source: hold out enough of its train tail for one val sequence
            t, v = t[:len(t) - short], np.concatenate([t[len(t) - short:], v])
            log(f"data: {path}: the val split is shorter than a sequence, so the last {short} train tokens are held "
                "out too")
        for split, toks in (("train", t), ("val", v)):
            if len(toks) <= block + 1:
                raise UserError(f"the {split} split of {path} has {len(toks)} tokens, too few for block_size={block}; "
                                "use more data or a smaller block_size")
        train.append(t)
        val.append(v)
    probs = np.array(weights if weights else [len(t) for t in train], dtype=np.float64)
    probs /= probs.sum()
    if len(paths) > 1:
        log("data mixture: " + ", ".join(f"{p} {q:.1%} ({len(t) / 1e6:,.1f} M tokens)"
                                         for p, q, t in zip(paths, probs, train)))
    return train, val, probs


def draw(lengths, probs, batch, block, seed, *stream):
    """The source and start of each sequence of one micro-batch, from (seed, *stream) alone: a resumed run, or
    another number of processes, draws exactly the same."""
    rng = np.random.default_rng([seed, *stream])
    which = rng.choice(len(probs), size=batch, p=probs)                        # (B,)
    starts = rng.integers(0, np.asarray(lengths)[which] - block - 1)          # (B,)
    return which, starts


def get_batch(streams, probs, batch, block, seed, *stream):
    """A batch of (input, target) windows from the sources' token streams."""
    which, starts = draw([len(s) for s in streams], probs, batch, block, seed, *stream)
    window = np.stack([streams[k][s:s + block + 1] for k, s in zip(which, starts)]).astype(np.int64)  # (B, T+1)
    x, y = np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)  # (B, T), (B, T)


def document_ids(x):
    """(B, T) document index of each token: <|endoftext|> opens the next document, acting as its BOS."""
    return torch.cumsum(x == EOT, dim=1)  # (B, T)


# -----------------------------------------------------------------------------
# Checkpoints and out_dir: written atomically, so a kill during a save leaves the previous one intact

def save_atomic(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a full disk, Ctrl-C: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise RunError(f"cannot write {path}: {e.strerror or e} (the previous {path.name}, if any, is intact)")
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must reach the disk
    finally:
        os.close(dir_fd)


def load_checkpoint(path):
    """The resume checkpoint, or one line saying what is wrong with it."""
    if not path.exists():
        raise UserError(f"init_from=resume but there is no checkpoint {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = {"model", "model_args", "optimizer", "scaler", "step", "rng", "data"} - set(ckpt)
    except Exception as e:  # torch reports a cut-short zip, an empty file or garbage in many different ways
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        raise UserError(f"{path} is not a readable checkpoint ({reason}); it was probably cut short: delete it to "
                        "start again, or finetune from a kept ckpt_NNNNNN.pt with --init_from=<it>")
    if missing:
        raise UserError(f"{path} is not a train.py resume checkpoint (it lacks {', '.join(sorted(missing))}); "
                        "use --init_from=<it> to finetune from its weights")
    return ckpt


def lock_out_dir(out):
    """Hold out_dir/lock while this run lives: a second run on the same out_dir is refused at start. The kernel
    drops the lock when its process dies, however it dies, so a dead run's lock file never blocks the next one."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / "lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        raise UserError(f"{out} is in use by another run ({holder}); wait for it to end or choose another --out_dir")
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    for debris in out.glob("*.tmp"):  # a save that a SIGKILL cut short
        debris.unlink()
    return f


def read_benchmarks(spec):
    """eval_problems -> {name: problems}: "humaneval" (offline), "mbpp" (downloaded), or .jsonl(.gz) paths named by
    their stem; read once, before any tokenizing, so that a bad name fails at once."""
    benchmarks = {}
    for source in filter(None, (s.strip() for s in spec.split(","))):
        name = source if source in ("humaneval", "mbpp") else Path(source).name.split(".")[0]
        try:
            benchmarks[name] = load_problems(source)
        except EvalError as e:
            raise UserError(f"eval_problems: {e}")
    return benchmarks


def truncate_log(path, last_step):
    """Drop log lines after the checkpoint being resumed, so the resumed run rewrites them without duplicates."""
    if not path.exists():
        return
    kept = [r for _, r in read_jsonl(path, tail="skip") if r.get("step", math.inf) <= last_step]  # skip: cut by a kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


# -----------------------------------------------------------------------------

def main(argv):
    defaults = {k: globals()[k] for k in config_keys}
    config = parse_config(argv, defaults)
    globals().update(config)  # from here on the globals above hold this run's values
    paths, weights = parse_sources(data)
    benchmarks = read_benchmarks(eval_problems)

    # ---- processes and devices: DDP when launched by torchrun, else one process
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")) if ddp else (0, 0, 1)
    master = rank == 0  # only rank 0 logs and writes

    def log(msg):
        if master:
            print(msg, flush=True)

    if prepare_only:  # e.g. on a many-core CPU machine, so that the GPU job only maps the tokens
        if bench:
            benchmark(paths, tokenizer_workers or os.cpu_count() or 1, text_column, val_fraction, log)
        else:
            prepare_data(paths, cache_dir, val_fraction, tokenizer_workers, text_column, local_rank == 0, log)
        return
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={device} but CUDA is not available")
        if ddp:
            dev = f"cuda:{local_rank}"
        torch.cuda.set_device(dev)
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype_name = ("bfloat16" if device_type == "cuda" else "float32") if dtype == "auto" else dtype
    if device_type == "cpu" and dtype_name == "float16":
        raise UserError("dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
    ptdtype = getattr(torch, dtype_name)
    autocast = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    # bench steps are one micro-batch each: a pretraining step (2 M tokens) would take minutes
    accumulation = 1 if bench else derive_accumulation(global_batch_size, batch_size, world,
                                                       gradient_accumulation_steps)
    tokens_per_step = accumulation * batch_size * world * block_size
    out = Path(out_dir)
    lock = lock_out_dir(out) if master and not bench else None  # held until this process exits
    ckpt = load_checkpoint(out / "ckpt.pt") if init_from == "resume" else None  # checked before any tokenizing

    # ---- data (before the process group starts, so tokenizer workers never fork a process holding NCCL)
    if not bench:
        caches = prepare_data(paths, cache_dir, val_fraction, tokenizer_workers, text_column, local_rank == 0, log)
        train_data, val_data, probs = load_mixture(paths, weights, caches, block_size, log)
        seen = np.zeros(len(paths), np.int64)  # tokens drawn from each source so far
        if ckpt and len(ckpt["data"].get("tokens_seen", [])) == len(paths):
            seen[:] = ckpt["data"]["tokens_seen"]
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    # ---- model and optimizer
    if deterministic:  # the CPU is deterministic anyway; on GPUs the fused backward's fp32 atomics are not
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs to be deterministic
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    if ckpt is not None:
        cfg = PhiConfig(**ckpt["model_args"])  # the architecture is the checkpoint's
        net = Phi(cfg)
        net.load_state_dict(ckpt["model"])
    elif init_from == "scratch":
        overrides = dict(block_size=block_size, attn_pdrop=dropout, resid_pdrop=dropout)
        overrides.update({k: v for k, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)) if v})
        if n_embd:
            overrides["n_inner"] = 4 * n_embd
        try:
            cfg = PhiConfig.from_preset(model, **overrides)
        except ValueError as e:
            raise UserError(str(e))
        net = Phi(cfg)
    else:  # finetune pretrained weights, with this run's dropout and block size; the optimizer starts fresh
        try:
            pretrained = load_model(init_from)
        except (FileNotFoundError, KeyError, RuntimeError) as e:
            raise UserError(f"init_from={init_from}: {e}")
        cfg = dataclasses.replace(pretrained.config, block_size=block_size, attn_pdrop=dropout, resid_pdrop=dropout)
        net = Phi(cfg)
        net.load_state_dict(pretrained.state_dict())
        del pretrained
    if cfg.block_size < block_size:
        raise UserError(f"block_size={block_size} exceeds the checkpoint's {cfg.block_size}")
    net.to(dev)
    optimizer = net.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
    scaler = torch.amp.GradScaler(device_type, enabled=dtype_name == "float16")  # fp16 as in the paper needs it
    start = 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start = ckpt["step"]
    # `net` is the plain module (checkpoints, generation); `runner` is what runs forward/backward
    runner = torch.compile(net) if compile else net
    if ddp:
        runner = DDP(runner, device_ids=[local_rank] if device_type == "cuda" else None)
    n_params = net.get_num_params()
    if recipe == "finetune" and init_from == "scratch":
        log("warning: the finetune recipe starts from phi-1-base: pass --init_from=<its checkpoint>")
    if max_iters < warmup_iters and not bench:
        log(f"warning: max_iters={max_iters} < warmup_iters={warmup_iters}: the learning rate stops at "
            f"{get_lr(max_iters, learning_rate, warmup_iters, max_iters, min_lr, lr_schedule):.2e} and never reaches "
            f"its peak {learning_rate:.2e}")
    log(f"model: {model if init_from == 'scratch' else init_from}, {n_params / 1e6:.1f} M parameters, "
        f"{cfg.n_layer} layers x {cfg.n_embd} wide | {world} process(es) on {dev}, {dtype_name}"
        f"{', compiled' if compile else ''} | global batch {accumulation * batch_size * world} x {block_size} tokens "
        f"({batch_size} per micro-batch x {accumulation} accumulation x {world})")

    def train_step(lr, batches):
        """One optimizer step over this process's micro-batches; returns the mean loss over all processes."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=dev)
        for micro, (x, y) in enumerate(batches):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            last = micro == accumulation - 1
            # gradients are all-reduced once per step, in the last micro-batch's backward
            with runner.no_sync() if ddp and not last else nullcontext():
                with autocast:
                    _, loss = runner(x, y, doc_ids=document_ids(x) if doc_mask else None)
                    loss = loss / accumulation
                scaler.scale(loss).backward()
            total += loss.detach()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        if ddp:
            dist.all_reduce(total)  # a sum: gloo has no average
        return total.item() / world

    # the global micro-batch index (rank, micro) keys each draw: every rank sees different data, and N ranks with
    # accumulation A see exactly the batches one process with accumulation N x A would
    def train_batches(step):
        for micro in range(accumulation):
            x, y = get_batch(train_data, probs, batch_size, block_size, seed, 0, step, rank * accumulation + micro)
            yield (x.pin_memory(), y.pin_memory()) if device_type == "cuda" else (x, y)

    def tokens_drawn(step):
        """Tokens each source gave this step over all processes (the draws are replayed: no communication)."""
        lengths = [len(t) for t in train_data]
        which = [draw(lengths, probs, batch_size, block_size, seed, 0, step, m)[0] for m in range(world * accumulation)]
        return np.bincount(np.concatenate(which), minlength=len(paths)) * block_size

    @torch.no_grad()
    def val_loss():
        runner.eval()
        total = torch.zeros((), device=dev)
        for k in range(eval_iters):  # the same batches at every evaluation, so the curve is not noisy from them
            x, y = (t.to(dev) for t in get_batch(val_data, probs, batch_size, block_size, seed, 1, rank, k))
            with autocast:
                total += runner(x, y, doc_ids=document_ids(x) if doc_mask else None)[1].float()
        if ddp:
            dist.all_reduce(total)
        runner.train()
        return total.item() / eval_iters / world

    @torch.no_grad()
    def bench_losses():
        """{name: mean loss of its reference solutions}, computed on rank 0 alone (the others wait at the next
        all-reduce); at small scale, where pass@k is 0, the number that tells two data sets apart (Fig. 2.1)."""
        if not master:
            return {}
        net.eval()
        with autocast:
            losses = {name: round(benchmark_loss(net, problems, progress=False)["loss"], 5)
                      for name, problems in benchmarks.items()}
        net.train()
        return losses

    def sync():
        if device_type == "cuda":
            torch.cuda.synchronize()

    # ---- bench: throughput and MFU on random tokens, then exit
    if bench:
        gen = torch.Generator().manual_seed(seed + rank)
        windows = [torch.randint(0, get_tokenizer().n_vocab, (batch_size, block_size + 1), generator=gen)
                   for _ in range(2)]                                                    # (B, T+1)
        synthetic = [(w[:, :-1].contiguous(), w[:, 1:].contiguous()) for w in windows]  # (B, T), (B, T)
        warmup, times = 3, []
        for i in range(warmup + bench_steps):
            sync()
            t0 = time.time()
            loss = train_step(learning_rate, [synthetic[i % 2]])
            sync()
            if i >= warmup:
                times.append(time.time() - t0)
        tok_s = batch_size * block_size * world / (sum(times) / len(times))
        mfu = net.estimate_mfu(tok_s / world)
        name = torch.cuda.get_device_name() if device_type == "cuda" else "cpu"
        log(f"bench: {model}, batch {batch_size} x {block_size} per process, {world} x {name}, {dtype_name}"
            f"{', compiled' if compile else ''}: {tok_s:,.0f} tokens/s ({tok_s / world:,.0f} per process), "
            f"{sum(times) / len(times) * 1000:.1f} ms/step over {bench_steps} steps after {warmup} warmup, "
            f"MFU {'n/a (no known peak for this device)' if mfu is None else f'{mfu:.1%}'}, last loss {loss:.3f}")
        if ddp:
            dist.destroy_process_group()
        return

    # ---- resume: restore this rank's RNG and drop the log lines the checkpoint does not cover
    log_path = out / "log.jsonl"
    if master:
        if ckpt is not None:
            truncate_log(log_path, start)
        else:
            log_path.write_text("")  # a fresh run starts a fresh log
    last_val = ckpt["val_loss"] if ckpt is not None else None
    if ckpt is not None:
        rng = ckpt["rng"]
        if len(rng) == world:  # exact only with the same number of processes; otherwise just re-seeded
            torch.set_rng_state(rng[rank]["torch"])
            if device_type == "cuda" and rng[rank]["cuda"] is not None:
                torch.cuda.set_rng_state(rng[rank]["cuda"])
        else:
            torch.manual_seed(seed + rank + start)
        log(f"resumed from {out / 'ckpt.pt'} at step {start}")
        del ckpt
    else:
        torch.manual_seed(seed + rank)  # dropout differs across ranks
    keep = "all" if keep_ckpts == "all" else {int(s) for s in keep_ckpts.split(",") if s.strip()}
    every = ckpt_interval or eval_interval
    decay_end = lr_decay_iters or max_iters

    def checkpoint(step, last_val):
        rng = {"torch": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}
        rngs = [None] * world
        if ddp:
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        if not master:
            return
        # `net` is the plain module, so torch.compile's "_orig_mod." and DDP's "module." never reach the file
        weights = {"model": net.state_dict(), "model_args": dataclasses.asdict(cfg),
                   "step": step, "val_loss": last_val, "config": config}
        state = {**weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                 "data": {"caches": [str(c) for c in caches], "tokens_seen": seen.tolist(), "world_size": world}}
        save_atomic(state, out / "ckpt.pt")
        if keep == "all" or step in keep:
            save_atomic(weights, out / f"ckpt_{step:06d}.pt")

    def bench_text(r):
        return "".join(f" | {k} loss {v:.4f}" for k, v in r.get("bench_loss", {}).items())

    def progress(r, eta):
        """The printed line for log record r."""
        return (f"step {r['step']}/{max_iters} | loss {r['loss']:.4f}"
                + (f" | val loss {r['val_loss']:.4f}" if "val_loss" in r else "") + bench_text(r)
                + f" | lr {r['lr']:.2e} | {r['tokens_per_s']:,.0f} tok/s"
                + (f" | mfu {r['mfu']:.1%}" if "mfu" in r else "")
                + f" | epochs {'/'.join(f'{e:.2f}' for e in r['epochs'].values())} | eta {fmt_time(eta)}")

    # ---- the loop
    log_file = open(log_path, "a") if master else None
    if start == 0:
        last_val = val_loss()
        record = {"step": 0, "val_loss": last_val}
        if benchmarks:
            record["bench_loss"] = bench_losses()
        log(f"step 0: val loss {last_val:.4f}" + bench_text(record))
        if master:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
    t_run = t_ref = time.time()  # the ETA is measured from t_ref, after the first (slow: warmup, compile) steps
    for step in range(start + 1, max_iters + 1):
        t0 = time.time()
        lr = get_lr(step, learning_rate, warmup_iters, decay_end, min_lr, lr_schedule)
        loss = train_step(lr, train_batches(step))
        sync()
        dt = time.time() - t0
        seen += tokens_drawn(step)
        tok_s = tokens_per_step / dt
        mfu = net.estimate_mfu(tok_s / world)
        record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": round(tok_s, 1),
                  "tokens_seen": dict(zip(paths, seen.tolist())),
                  "epochs": {p: round(n / len(t), 4) for p, n, t in zip(paths, seen, train_data)}}
        if mfu is not None:
            record["mfu"] = round(mfu, 4)
        if step % eval_interval == 0 or step == max_iters:
            last_val = record["val_loss"] = val_loss()
            if benchmarks:
                record["bench_loss"] = bench_losses()
        if master:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if step % every == 0 or step == max_iters:
            checkpoint(step, last_val)
        if step == start + 2:
            t_ref = time.time()
        per_step = (time.time() - t_ref) / (step - start - 2) if step > start + 2 else dt  # evals and saves included
        if step % log_interval == 0 or "val_loss" in record or step == start + 1:
            log(progress(record, per_step * (max_iters - step)))
    if master:
        log_file.close()
        log(f"done: {max_iters - start} steps in {fmt_time(time.time() - t_run)}, final val loss {last_val:.4f}, "
            f"checkpoint {out / 'ckpt.pt'} | tokens seen: "
            + ", ".join(f"{p} {n:,} ({n / len(t):.2f} epochs)" for p, n, t in zip(paths, seen, train_data)))
        if sample_tokens:
            net.eval()
            tok = get_tokenizer()
            prompt = tok.encode(sample_prompt)
            with autocast:
                new = net.generate([prompt], max_new_tokens=min(sample_tokens, cfg.block_size - len(prompt)),
                                   temperature=0.8, top_k=50, seed=seed, tokenizer=tok, stop=["\ndef ", "\nclass "])[0]
            print(f"sample (temperature 0.8):\n{sample_prompt}{tok.decode(new)}", flush=True)
    if ddp:
        dist.destroy_process_group()
    if lock:
        lock.close()


def cli(argv):
    """main() with every expected failure as one line: bad input exits 2, a failure while running 1, Ctrl-C 130."""
    say = (lambda msg: print(f"train.py: {msg}", file=sys.stderr)) if os.environ.get("RANK", "0") == "0" \
        else (lambda msg: None)
    try:
        main(argv)
    except (UserError, DataError) as e:
        say(f"error: {e}")
        sys.exit(2)
    except RunError as e:
        say(f"error: {e}")
        sys.exit(1)
    except KeyboardInterrupt:
        say("interrupted; nothing half-written was kept")
        sys.exit(130)


if __name__ == "__main__":
    cli(sys.argv[1:])
