"""
Train phi-1: the pretraining and finetuning runs of "Textbooks Are All You Need" (Gunasekar et al., 2023, §2.3),
from a laptop CPU to torchrun on many GPUs, in one file that reads top to bottom (after nanoGPT's train.py).

    python train.py                      # a tiny phi on this interpreter's standard library, on CPU, in ~5 minutes
    python train.py --data=textbooks.jsonl,code/ --model=phi-1-small --batch_size=16
    torchrun --standalone --nproc_per_node=8 train.py --recipe=pretrain --data=... --compile=True
    torchrun --standalone --nproc_per_node=8 train.py --recipe=finetune --init_from=out/ckpt_024000.pt --data=...
    python train.py my_run.py --max_iters=100            # a config file of `key = value` lines, then overrides
    python train.py --bench=True --recipe=pretrain --model=phi-1   # tokens/s and MFU on synthetic data

Every hyperparameter is a global just below, with a one-line comment. Precedence: these defaults < the recipe
(--recipe=pretrain|finetune, the paper's two runs) < a config file < --key=value. Values are type-checked against
the defaults. Each source in --data is tokenized once and cached (uint16) under cache_dir.
Every step appends a JSON line to out_dir/log.jsonl; out_dir/ckpt.pt holds everything needed to resume exactly.
"""

import ast
import dataclasses
import difflib
import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from model import EOT, Phi, PhiConfig, PRESETS, get_tokenizer, load_model

_names_before_config = set(globals())
# -----------------------------------------------------------------------------
# I/O
out_dir = "out"                # checkpoints (ckpt.pt; kept ones as ckpt_NNNNNN.pt) and log.jsonl
eval_interval = 25             # steps between validation-loss estimates (also at step 0)
eval_iters = 8                 # micro-batches per validation-loss estimate (the same batches every time)
log_interval = 10              # steps between printed lines; log.jsonl gets every step
ckpt_interval = 0              # steps between checkpoints; 0 = every eval_interval. One is always written at the end
keep_ckpts = ""                # also keep these steps as ckpt_NNNNNN.pt (weights only): "24000,30000", or "all"
init_from = "scratch"          # "scratch", "resume" (out_dir/ckpt.pt), or a checkpoint / out_dir / HF dir to finetune
sample_prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'  # completed at the end
sample_tokens = 64             # tokens sampled for that completion; 0 = none
# data
data = "stdlib"                # comma-separated: dirs of .py files, text files, JSONL with "text"; "stdlib" = Python's
cache_dir = "data_cache"       # tokenized corpora, keyed by the sources' paths, sizes and mtimes
val_fraction = 0.02            # fraction of documents held out for the validation loss
tokenizer_workers = 0          # processes for tokenizing; 0 = one per CPU core
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
beta2 = 0.95
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
CACHE_VERSION = 1  # bump when the cache format changes


class UserError(Exception):
    """Bad input: reported as one line, without a traceback."""


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
        print("keys (default):\n" + "\n".join(f"  --{k}={v!r}" for k, v in defaults.items()))
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
# Data: documents -> one token stream with <|endoftext|> after each document (§2), cached as uint16

def source_files(sources):
    """The files of the comma-separated sources, in a stable order."""
    files = []
    for source in (s.strip() for s in sources.split(",")):
        if not source:
            continue
        if source == "stdlib":
            # ~12 MB of real Python; the test suites are skipped (they would double the time, and teach less)
            root = Path(sysconfig.get_paths()["stdlib"])
            skip = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
        else:
            root, skip = Path(source).expanduser(), {"__pycache__", ".git"}
            if not root.exists():
                raise UserError(f"data source not found: {source}")
        if root.is_file():
            files.append(root)
            continue
        found = sorted(p for p in root.rglob("*.py") if p.is_file() and not skip & set(p.relative_to(root).parts))
        if not found:
            raise UserError(f"no .py files in data directory {source}")
        files.extend(found)
    if not files:
        raise UserError("no data sources given (--data=...)")
    return files


def read_documents(path):
    """The documents in one file: each line's "text" for JSONL, else the whole file."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text (bad byte at offset {e.start})")
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}")
    if path.suffix != ".jsonl":
        return [text] if text.strip() else []
    docs = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            doc = json.loads(line)["text"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{path}, line {lineno}: expected a JSON object with a \"text\" field")
        if not isinstance(doc, str):
            raise UserError(f"{path}, line {lineno}: \"text\" must be a string")
        if doc.strip():
            docs.append(doc)
    return docs


def cache_key(files, val_fraction):
    h = hashlib.sha256(f"v{CACHE_VERSION} n_vocab={get_tokenizer().n_vocab} val={val_fraction}".encode())
    for f in files:
        st = f.stat()
        h.update(f"\n{f.resolve()} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def tokenize_corpus(files, out, val_fraction, workers, log):
    """Tokenize every document (several processes, progress shown) and write train.bin / val.bin / meta.json."""
    t0 = time.time()
    docs = [d for f in files for d in read_documents(f)]
    total = sum(map(len, docs))
    if not docs:
        raise UserError(f"the corpus is empty: {len(files)} file(s) but no text in them")
    tok = get_tokenizer()
    ids, done, n_chunks = [], 0, 10  # ten calls to encode_batch, so that progress can be shown
    bounds = np.linspace(0, len(docs), n_chunks + 1).astype(int)
    for a, b in zip(bounds[:-1], bounds[1:]):
        ids += tok.encode_batch(docs[a:b], num_workers=workers or os.cpu_count())
        done += sum(map(len, docs[a:b]))
        elapsed = time.time() - t0
        log(f"tokenizing {len(docs):,} documents: {done / 1e6:.1f}/{total / 1e6:.1f} MB ({done / total:.0%}), "
            f"{elapsed:.0f}s, eta {elapsed / done * (total - done):.0f}s")
    # whole documents go to validation, chosen by a fixed RNG so the split never depends on the run's seed
    is_val = np.random.default_rng(0).random(len(docs)) < val_fraction
    if is_val.all() or not is_val.any():  # too few documents to split: cut the one stream instead
        stream = np.array([t for doc in ids for t in (*doc, EOT)], dtype=np.uint16)
        cut = int(len(stream) * (1 - val_fraction))
        train, val = stream[:cut], stream[cut:]
    else:
        train = np.array([t for doc, v in zip(ids, is_val) if not v for t in (*doc, EOT)], dtype=np.uint16)
        val = np.array([t for doc, v in zip(ids, is_val) if v for t in (*doc, EOT)], dtype=np.uint16)
    out.mkdir(parents=True)
    train.tofile(out / "train.bin")
    val.tofile(out / "val.bin")
    meta = dict(files=len(files), documents=len(docs), bytes=total, train_tokens=len(train), val_tokens=len(val),
                seconds=round(time.time() - t0, 1))
    (out / "meta.json").write_text(json.dumps(meta))
    return meta


def prepare_data(sources, cache_root, val_fraction, workers, builder, log):
    """Path of the cached token files for these sources, tokenizing them first if no cache matches."""
    files = source_files(sources)
    path = Path(cache_root) / cache_key(files, val_fraction)
    if (path / "meta.json").exists():
        log(f"data: reusing cache {path}")
    elif builder:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        meta = tokenize_corpus(files, tmp, val_fraction, workers, log)
        try:
            os.rename(tmp, path)  # atomic: a cache directory is complete or absent
        except OSError:  # another node's process finished the same corpus first
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
        log(f"data: {meta['documents']:,} documents, {meta['bytes'] / 1e6:.1f} MB -> {meta['train_tokens']:,} train "
            f"+ {meta['val_tokens']:,} val tokens in {meta['seconds']}s, cached in {path}")
    else:  # other processes on this node wait for local rank 0 to write it
        while not (path / "meta.json").exists():
            time.sleep(0.5)
    return path


def get_batch(tokens, batch, block, seed, *stream):
    """A batch of (input, target) windows, drawn from (seed, *stream) alone, so a resumed run sees the same data."""
    starts = np.random.default_rng([seed, *stream]).integers(0, len(tokens) - block - 1, size=batch)
    window = np.stack([tokens[s:s + block + 1] for s in starts]).astype(np.int64)  # (B, T+1)
    x, y = np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)  # (B, T), (B, T)


def document_ids(x):
    """(B, T) document index of each token: <|endoftext|> opens the next document, acting as its BOS."""
    return torch.cumsum(x == EOT, dim=1)  # (B, T)


# -----------------------------------------------------------------------------
# Checkpoints: written atomically, so a kill during a save leaves the previous one intact

def save_atomic(obj, path):
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself must reach the disk
    finally:
        os.close(dir_fd)


def truncate_log(path, last_step):
    """Drop log lines after the checkpoint being resumed, so the resumed run rewrites them without duplicates."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= last_step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            pass  # a line cut short by the kill
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def fmt_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# -----------------------------------------------------------------------------

def main(argv):
    defaults = {k: globals()[k] for k in config_keys}
    config = parse_config(argv, defaults)
    globals().update(config)  # from here on the globals above hold this run's values

    # ---- processes and devices: DDP when launched by torchrun, else one process
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE")) if ddp else (0, 0, 1)
    master = rank == 0  # only rank 0 logs and writes
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

    def log(msg):
        if master:
            print(msg, flush=True)

    # ---- data (before the process group starts, so tokenizer workers never fork a process holding NCCL)
    if not bench:
        cache = prepare_data(data, cache_dir, val_fraction, tokenizer_workers, builder=local_rank == 0, log=log)
        train_tokens = np.memmap(cache / "train.bin", dtype=np.uint16, mode="r")
        val_tokens = np.memmap(cache / "val.bin", dtype=np.uint16, mode="r")
        for split, toks in (("train", train_tokens), ("val", val_tokens)):
            if len(toks) <= block_size + 1:
                raise UserError(f"the {split} split has {len(toks)} tokens, too few for block_size={block_size}; "
                                "use more data or a smaller block_size")
    if ddp:
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")

    # ---- model and optimizer
    ckpt = None
    torch.manual_seed(seed)  # the same initial weights everywhere (DDP also broadcasts rank 0's)
    if init_from == "resume":
        ckpt_path = out / "ckpt.pt"
        if not ckpt_path.exists():
            raise UserError(f"init_from=resume but there is no checkpoint {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        cfg = PhiConfig(**ckpt["model_args"])  # the architecture is the checkpoint's
        net = Phi(cfg)
        net.load_state_dict(ckpt["model"])
    elif init_from == "scratch":
        overrides = dict(block_size=block_size, attn_pdrop=dropout, resid_pdrop=dropout)
        overrides.update({k: v for k, v in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)) if v})
        if n_embd:
            overrides["n_inner"] = 4 * n_embd
        try:
            cfg = PhiConfig.from_preset(config["model"], **overrides)
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
    model = torch.compile(net) if compile else net  # `net` stays the plain module: checkpoints, generation
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
    n_params = net.get_num_params()
    if recipe == "finetune" and init_from == "scratch":
        log("warning: the finetune recipe starts from phi-1-base: pass --init_from=<its checkpoint>")
    log(f"model: {config['model'] if init_from == 'scratch' else init_from}, {n_params / 1e6:.1f} M parameters, "
        f"{cfg.n_layer} layers x {cfg.n_embd} wide | {world} process(es) on {dev}, {dtype_name}"
        f"{', compiled' if compile else ''} | global batch {accumulation * batch_size * world} x {block_size} tokens "
        f"({batch_size} per micro-batch x {accumulation} accumulation x {world})")

    def train_step(step, lr, batches):
        """One optimizer step over this process's micro-batches; returns the mean loss over all processes."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=dev)
        for micro, (x, y) in enumerate(batches):
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            last = micro == accumulation - 1
            # gradients are all-reduced once per step, in the last micro-batch's backward
            with model.no_sync() if ddp and not last else nullcontext():
                with autocast:
                    _, loss = model(x, y, doc_ids=document_ids(x) if doc_mask else None)
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

    def train_batches(step):
        # the global micro-batch index (rank, micro) keys the draw: every rank sees different data, and N ranks with
        # accumulation A see exactly the batches one process with accumulation N x A would
        for micro in range(accumulation):
            x, y = get_batch(train_tokens, batch_size, block_size, seed, 0, step, rank * accumulation + micro)
            yield (x.pin_memory(), y.pin_memory()) if device_type == "cuda" else (x, y)

    @torch.no_grad()
    def val_loss():
        model.eval()
        total = torch.zeros((), device=dev)
        for k in range(eval_iters):  # the same batches at every evaluation, so the curve is not noisy from them
            x, y = (t.to(dev) for t in get_batch(val_tokens, batch_size, block_size, seed, 1, rank, k))
            with autocast:
                total += model(x, y, doc_ids=document_ids(x) if doc_mask else None)[1].float()
        if ddp:
            dist.all_reduce(total)
        model.train()
        return total.item() / eval_iters / world

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
            loss = train_step(i, learning_rate, [synthetic[i % 2]])
            sync()
            if i >= warmup:
                times.append(time.time() - t0)
        tok_s = batch_size * block_size * world / (sum(times) / len(times))
        mfu = net.estimate_mfu(tok_s / world)
        name = torch.cuda.get_device_name() if device_type == "cuda" else "cpu"
        log(f"bench: {config['model']}, batch {batch_size} x {block_size} per process, {world} x {name}, {dtype_name}"
            f"{', compiled' if compile else ''}: {tok_s:,.0f} tokens/s ({tok_s / world:,.0f} per process), "
            f"{sum(times) / len(times) * 1000:.1f} ms/step over {bench_steps} steps after {warmup} warmup, "
            f"MFU {'n/a (no known peak for this device)' if mfu is None else f'{mfu:.1%}'}, last loss {loss:.3f}")
        if ddp:
            dist.destroy_process_group()
        return

    # ---- resume: restore this rank's RNG and drop the log lines the checkpoint does not cover
    log_path = out / "log.jsonl"
    if master:
        out.mkdir(parents=True, exist_ok=True)
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
        save_atomic({**weights, "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rngs,
                     "data": {"cache": str(cache), "next_step": step + 1, "world_size": world}}, out / "ckpt.pt")
        if keep == "all" or step in keep:
            save_atomic(weights, out / f"ckpt_{step:06d}.pt")

    # ---- the loop
    log_file = open(log_path, "a") if master else None
    if start == 0:
        last_val = val_loss()
        log(f"step 0: val loss {last_val:.4f}")
        if master:
            log_file.write(json.dumps({"step": 0, "val_loss": last_val}) + "\n")
            log_file.flush()
    t_run, dt_avg = time.time(), None
    for step in range(start + 1, max_iters + 1):
        t0 = time.time()
        lr = get_lr(step, learning_rate, warmup_iters, decay_end, min_lr, lr_schedule)
        loss = train_step(step, lr, train_batches(step))
        sync()
        dt = time.time() - t0
        dt_avg = dt if dt_avg is None or step <= start + 2 else 0.9 * dt_avg + 0.1 * dt  # skip compile warmup
        tok_s = tokens_per_step / dt
        mfu = net.estimate_mfu(tok_s / world)
        record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": round(tok_s, 1)}
        if mfu is not None:
            record["mfu"] = round(mfu, 4)
        if step % eval_interval == 0 or step == max_iters:
            last_val = record["val_loss"] = val_loss()
        if master:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()
        if step % log_interval == 0 or "val_loss" in record or step == start + 1:
            log(f"step {step}/{max_iters} | loss {loss:.4f}"
                + (f" | val loss {record['val_loss']:.4f}" if "val_loss" in record else "")
                + f" | lr {lr:.2e} | {tok_s:,.0f} tok/s" + (f" | mfu {mfu:.1%}" if mfu is not None else "")
                + f" | eta {fmt_time(dt_avg * (max_iters - step))}")
        if step % every == 0 or step == max_iters:
            checkpoint(step, last_val)
    if master:
        log_file.close()
        log(f"done: {max_iters - start} steps in {fmt_time(time.time() - t_run)}, final val loss "
            f"{last_val:.4f}, checkpoint {out / 'ckpt.pt'}")
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


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except UserError as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"train.py: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
