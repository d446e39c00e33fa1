"""
Train phi-1: the pretraining and finetuning runs of "Textbooks Are All You Need" (Gunasekar et
al., 2023, §2.3), from a laptop CPU to torchrun on many GPUs, in one file that reads top to bottom
(after nanoGPT's train.py).

    python train.py                  # a tiny phi on this Python's standard library, CPU, ~5 min
    python train.py --data=textbooks.jsonl,code/ --model=phi-1-small --batch_size=16
    python train.py --prepare_only=True --data=filtered.jsonl:0.7,textbooks.jsonl:0.3
    torchrun --standalone --nproc_per_node=8 train.py --recipe=pretrain --data=... --compile=True
    torchrun --standalone --nproc_per_node=8 train.py --recipe=finetune --init_from=out/ckpt.pt
    python train.py my_run.py --max_iters=100    # a config file of `key = value` lines, then flags

Every hyperparameter is a global below, with a comment (`--help` lists them): these defaults < the
recipe (--recipe=pretrain|finetune, the paper's runs) < config files < --key=value. data.py
tokenizes each source of --data once; each sequence of a batch comes from a source drawn with its
weight. main() runs the loop: forward and backward over the micro-batches, an optimizer step, a line
in out_dir/log.jsonl, now and then the validation loss and a checkpoint (checkpoint.py). Ctrl-C
finishes the step, writes a checkpoint and exits 130; `--init_from=resume` continues exactly.
Tokens/s and MFU on random tokens: `python bench.py train --model=phi-1 --compile=True`.
"""

import dataclasses
import math
import os
import re
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import checkpoint
import configurator
from configurator import UserError
from data import draw, load_mixture, parse_sources, prepare_all, tokens_drawn
from devices import processes, setup_device
from eval import benchmark_loss, load_problems
from files import append_jsonl, fmt_time
from model import ATTENTION_KINDS, PRESETS, Phi, PhiConfig
from tokenizer import EOT, get_tokenizer
from weights import load_model

_names_before_config = set(globals())
# -----------------------------------------------------------------------------
# I/O
out_dir = "out"               # checkpoints (ckpt.pt; kept ones as ckpt_NNNNNN.pt) and log.jsonl
overwrite = False             # replace the run (checkpoints, log) of an out_dir: else it is refused
eval_interval = 25            # steps between validation-loss estimates (also at step 0)
eval_iters = 8                # micro-batches per validation-loss estimate: the same ones each time,
                              # whatever the number of processes (they split them)
eval_problems = ""            # the benchmark loss at each evaluation too: humaneval, mbpp, .jsonl
log_interval = 10             # steps between printed lines; log.jsonl gets every step
ckpt_interval = 0             # steps between checkpoints (also at the end, at Ctrl-C); 0 = evals'
keep_ckpts = ""               # keep these steps' weights as ckpt_NNNNNN.pt: "24000,30000" (written
                              # whatever the interval), "all" (every checkpoint's)
init_from = "scratch"         # "scratch", "resume" (out_dir/ckpt.pt), or weights to finetune: a
                              # checkpoint, an out_dir or a Hugging Face directory
sample_prompt = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'  # at the end
sample_tokens = 64            # tokens sampled to complete sample_prompt; 0 = none
# data
data = "stdlib"               # sources path[:weight],...: directories, .py or text files,
                              # .jsonl(.gz), Parquet; "stdlib" = this Python's standard library
text_column = ""              # the text's field: "" = "text" (JSONL), "content" (Parquet)
cache_dir = "data_cache"      # tokenized sources, one directory each, named by their content's hash
val_fraction = 0.02           # fraction of documents held out for the validation loss
tokenizer_workers = 0         # processes for tokenizing; 0 = one per CPU core
prepare_only = False          # only tokenize --data into cache_dir, then exit
doc_mask = False              # attend only within a document (doc_ids from <|endoftext|>)
# model
model = "tiny"                # model.py preset: nano, tiny, phi-1-small, phi-1
block_size = 128              # tokens per training sequence (the paper: 2048)
n_layer = 0                   # layers; 0 = the preset's
n_embd = 0                    # width; 0 = the preset's (the MLP's inner size is 4 x width)
n_head = 0                    # attention heads; 0 = the preset's
dropout = 0.0                 # attention and residual dropout (the paper: 0.1)
# optimizer
batch_size = 8                # micro-batch: sequences per forward/backward on each process
global_batch_size = 0         # sequences per optimizer step, all processes; 0 = the micro-batches'
gradient_accumulation_steps = 1  # micro-batches per step and process (or from global_batch_size)
learning_rate = 2e-3          # peak learning rate
weight_decay = 0.1            # AdamW weight decay, on matrices and embeddings only
beta1 = 0.9                   # AdamW betas: the paper is silent; 0.9 / 0.95 is usual for LLMs
beta2 = 0.95                  # (see beta1)
grad_clip = 1.0               # clip the gradients' global norm (the paper is silent); 0 = off
# schedule
max_iters = 150               # optimizer steps
warmup_iters = 15             # linear warmup from 0 to learning_rate
lr_schedule = "linear"        # decay after warmup: "linear" (the paper) or "cosine"
lr_decay_iters = 0            # the decay's last step (min_lr comes just after it); 0 = max_iters
min_lr = 0.0                  # final learning rate (the paper is silent; linear decay to 0)
# system
recipe = ""                   # "pretrain", "finetune": the paper's runs (RECIPES below); flags win
device = "auto"               # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"
dtype = "auto"                # "auto" (GPU bfloat16, CPU float32), float32, bfloat16, float16
compile = False               # torch.compile the model (worth it on GPUs; slow to start)
attention = "auto"            # "auto" (our Triton kernel on GPUs where it supports the shape, else
                              # PyTorch's SDPA), "triton", "sdpa": the same function and weights
seed = 1337                   # seeds the weights, the batches and dropout
deterministic = False         # bitwise-reproducible GPU steps (exact resume there): the attention
                              # kernel's deterministic backward and torch's deterministic
                              # algorithms, somewhat slower
# -----------------------------------------------------------------------------
config_keys = [k for k in globals() if k not in _names_before_config and not k.startswith("_")]

# §2.3. Global batches are in sequences of block_size tokens (1024 x 2048 = 2 M tokens per step
# for pretraining). batch_size is the micro-batch per GPU, which the paper does not give (DeepSpeed
# on 8 A100s): lower it if memory runs out; gradient accumulation keeps the global batch. Kept
# checkpoints hold only the weights (5.7 GB for phi-1). eval_iters=160: 20 micro-batches per GPU
# on 8 GPUs, 2.6 M validation tokens (the paper is silent).
RECIPES = {
    "pretrain": dict(model="phi-1", block_size=2048, dropout=0.1, global_batch_size=1024,
                     batch_size=8, learning_rate=1e-3, warmup_iters=750, weight_decay=0.1,
                     max_iters=36_000, lr_schedule="linear", eval_interval=500, eval_iters=160,
                     ckpt_interval=1000, keep_ckpts="24000"),  # phi-1-base: the step-24,000 weights
    "finetune": dict(model="phi-1", block_size=2048, dropout=0.1, global_batch_size=256,
                     batch_size=8, learning_rate=1e-4, warmup_iters=50, weight_decay=0.01,
                     max_iters=6000, lr_schedule="linear", eval_interval=500, eval_iters=160,
                     ckpt_interval=1000, keep_ckpts="all"),  # pick the best later
}
CHOICES = {"lr_schedule": ("linear", "cosine"), "dtype": ("auto", "float32", "bfloat16", "float16"),
           "recipe": ("", *RECIPES), "model": tuple(PRESETS), "attention": ATTENTION_KINDS}
POSITIVE = ("eval_interval", "eval_iters", "log_interval", "block_size", "batch_size",
            "gradient_accumulation_steps", "max_iters")


def main(argv):
    config = parse_config(argv, {k: globals()[k] for k in config_keys})
    globals().update(config)  # from here on the globals above hold this run's values
    paths, weights = parse_sources(data)
    benchmarks = read_benchmarks(eval_problems)  # before any tokenizing: a bad name fails at once
    proc = processes()
    log = (lambda msg: print(msg, flush=True)) if proc.master else (lambda msg: None)
    builder = proc.local_rank == 0  # the one process per node that tokenizes
    if prepare_only:  # e.g. on a many-core CPU machine, so that the GPU job only maps the tokens
        prepare_all(paths, cache_dir, val_fraction, tokenizer_workers, text_column, builder, log)
        return
    setup_device(proc, device, dtype, compile)
    accum = derive_accumulation(global_batch_size, batch_size, proc.world,
                                gradient_accumulation_steps)

    # ---- out_dir holds one run (checkpoint.py), checked before any tokenizing; bad input (here
    # or while tokenizing) leaves the disk as it was: out_dir is made only once all is ready
    out, command = Path(out_dir), checkpoint.resume_command(argv, proc)
    if proc.master:  # one process probes the lock: two at once would see each other's probe
        checkpoint.check_out_dir(out, init_from == "resume", overwrite, command)
    ckpt = checkpoint.load(out / "ckpt.pt") if init_from == "resume" else None

    # ---- data (before the process group starts: tokenizer workers never fork a process with NCCL)
    caches = prepare_all(paths, cache_dir, val_fraction, tokenizer_workers, text_column, builder,
                         log)
    train_data, val_data, probs = load_mixture(paths, weights, caches, block_size, log)
    seen = np.zeros(len(paths), np.int64)  # tokens drawn from each source so far
    if ckpt and len(ckpt["data"].get("tokens_seen", [])) == len(paths):
        seen[:] = ckpt["data"]["tokens_seen"]
    if proc.ddp:
        dist.init_process_group(backend="nccl" if proc.device_type == "cuda" else "gloo")

    # ---- model and optimizer
    net, cfg = build_model(config, ckpt)
    try:
        net.to(proc.dev).set_attention(attention)
    except ValueError as e:
        raise UserError(str(e))
    optimizer = net.configure_optimizers(weight_decay, learning_rate, (beta1, beta2),
                                         proc.device_type)
    scaler = torch.amp.GradScaler(proc.device_type, enabled=proc.dtype == "float16")  # for fp16
    start = ckpt["step"] if ckpt is not None else 0
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
    # `net` is the plain module (checkpoints, generation); `runner` runs forward and backward;
    # `evaluator` is runner without DDP, whose forward may not be run a different number of times
    # on each process
    runner = evaluator = torch.compile(net) if compile else net
    if proc.ddp:
        runner = DDP(runner, device_ids=[proc.local_rank] if proc.device_type == "cuda" else None)
    log(describe_run(net, cfg, proc, accum, ckpt))

    # ---- the lock, the log and dropout's RNG: as the checkpoint left them, or fresh
    proc.lock = checkpoint.lock_out_dir(out) if proc.master else None  # held while main() runs
    log_file = checkpoint.open_log(out, ckpt, overwrite, log) if proc.master else None
    run = SimpleNamespace(net=net, cfg=cfg, optimizer=optimizer, scaler=scaler, config=config,
                          caches=caches, seen=seen, last_val=ckpt["val_loss"] if ckpt else None)
    checkpoint.restore_rng(ckpt, proc.rank, proc.world, proc.device_type, seed)
    del ckpt
    kept_steps = {int(s) for s in keep_ckpts.split(",") if s.strip()} if keep_ckpts != "all" else ()
    if start == 0:
        run.last_val = val_loss(evaluator, val_data, probs, proc)
        record = {"step": 0, "val_loss": run.last_val}
        if benchmarks:
            record["bench_loss"] = bench_losses(net, benchmarks, proc)
        log(f"step 0: val loss {run.last_val:.4f}" + bench_text(record))
        if proc.master:
            append_jsonl(log_file, record)
    ctrl_c = checkpoint.CtrlC(out / "ckpt.pt", start, 1.0 if proc.ddp else 0.0)  # see its doc

    # ---- the loop: one optimizer step per iteration
    t_run = t_ref = time.time()  # the ETA counts from t_ref, after the slow first steps (compile)
    for step in range(start + 1, max_iters + 1):
        t0 = time.time()
        lr = get_lr(step, learning_rate, warmup_iters, lr_decay_iters or max_iters, min_lr,
                    lr_schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=proc.dev)
        for micro in range(accum):
            # the global micro-batch index keys each draw: every rank sees different data, and N
            # ranks with accumulation A see exactly the batches of one process with N x A
            x, y = get_batch(train_data, probs, batch_size, block_size, seed, 0, step,
                             proc.rank * accum + micro)                        # (B, T), (B, T)
            if proc.device_type == "cuda":
                x, y = (t.pin_memory().to(proc.dev, non_blocking=True) for t in (x, y))
            # gradients are all-reduced once per step, in the last micro-batch's backward
            with runner.no_sync() if proc.ddp and micro < accum - 1 else nullcontext():
                with proc.autocast:
                    _, loss = runner(x, y, doc_ids=document_ids(x) if doc_mask else None)
                    loss = loss / accum
                scaler.scale(loss).backward()
            loss_sum += loss.detach()
        if grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        # the mean loss over all processes, and whether any got a Ctrl-C: one all-reduce (a sum:
        # gloo has no average), so that every process stops after the same step
        stats = torch.stack([loss_sum, torch.tensor(float(ctrl_c.requested), device=proc.dev)])
        if proc.ddp:
            dist.all_reduce(stats)
        loss, stop = stats[0].item() / proc.world, stats[1].item() > 0 and step < max_iters
        dt = time.time() - t0

        # ---- the log line, now and then the validation loss, and the checkpoint
        seen += tokens_drawn([len(t) for t in train_data], probs, batch_size, block_size, seed,
                             step, proc.world * accum)
        tok_s = accum * batch_size * proc.world * block_size / dt
        mfu = net.estimate_mfu(tok_s / proc.world)
        record = {"step": step, "loss": loss, "lr": lr, "tokens_per_s": round(tok_s, 1),
                  "tokens_seen": dict(zip(paths, seen.tolist())),
                  "epochs": {p: round(n / len(t), 4) for p, n, t in zip(paths, seen, train_data)}}
        if mfu is not None:
            record["mfu"] = round(mfu, 4)
        if step % eval_interval == 0 or step == max_iters:
            run.last_val = record["val_loss"] = val_loss(evaluator, val_data, probs, proc)
            if benchmarks:
                record["bench_loss"] = bench_losses(net, benchmarks, proc)
        if proc.master:
            append_jsonl(log_file, record)
        due = step % (ckpt_interval or eval_interval) == 0 or step == max_iters or stop
        keep = step in kept_steps or (keep_ckpts == "all" and due)  # whatever the interval
        if due or keep:
            checkpoint.save_step(out, step, run, proc, resume=due, keep=keep)
            ctrl_c.saved(out / "ckpt.pt")
        if stop:
            if proc.ddp:
                dist.barrier()  # no process exits (torchrun would stop the others) before the save
            raise KeyboardInterrupt(f"checkpoint of step {step} written to {out / 'ckpt.pt'}; "
                                    f"continue with: {command}")
        if step == start + 2:
            t_ref = time.time()
        per_step = (time.time() - t_ref) / (step - start - 2) if step > start + 2 else dt
        if step % log_interval == 0 or "val_loss" in record or step == start + 1:
            log(progress_line(record, per_step * (max_iters - step)))  # ETA with evals and saves
    ctrl_c.restore()

    if proc.master:
        log_file.close()
        log(f"done: {max_iters - start} steps in {fmt_time(time.time() - t_run)}, final val loss "
            f"{run.last_val:.4f}, checkpoint {out / 'ckpt.pt'} | tokens seen: " + ", ".join(
                f"{p} {n:,} ({n / len(t):.2f} epochs)" for p, n, t in zip(paths, seen, train_data)))
        if sample_tokens:
            print_sample(net, cfg, proc)
    if proc.ddp:
        dist.destroy_process_group()


# -----------------------------------------------------------------------------
# Configuration and the schedule

def parse_config(argv, defaults):
    """defaults < recipe < config files < --key=value -> the full config dict, checked."""
    options = configurator.options_from_globals(defaults, __file__)
    flags, files = configurator.split_argv(argv, options, __doc__, args="[CONFIG_FILE ...]")
    from_files = {}
    for path in files:
        from_files.update(configurator.read_config_file(path, options))
    recipe_name = flags.get("recipe", from_files.get("recipe", defaults["recipe"]))
    config = {**defaults, **RECIPES.get(recipe_name, {}), **from_files, **flags}
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise UserError(f"{key}={config[key]!r}: choose one of {', '.join(map(repr, allowed))}")
    for key in POSITIVE:
        if config[key] <= 0:
            raise UserError(f"{key}={config[key]} must be positive")
    if not re.fullmatch(r"all|[\d,\s]*", config["keep_ckpts"]):
        raise UserError(f"keep_ckpts={config['keep_ckpts']!r}: steps like 24000,30000, or all")
    if not 0 < config["val_fraction"] < 1:
        raise UserError(f"val_fraction={config['val_fraction']} must be between 0 and 1")
    return config


def derive_accumulation(global_batch, micro_batch, world_size, accumulation):
    """Micro-batches per step on each process, so that all of them make the global batch."""
    if not global_batch:
        return accumulation
    if global_batch % (micro_batch * world_size):
        raise UserError(f"global_batch_size={global_batch} is not a multiple of batch_size x "
                        f"processes = {micro_batch} x {world_size}")
    return global_batch // (micro_batch * world_size)


def get_lr(step, max_lr, warmup, decay_end, final_lr, schedule):
    """Learning rate of step `step` (1-based): linear warmup, then linear (or cosine) decay."""
    if step <= warmup:
        return max_lr * step / warmup
    if step > decay_end:
        return final_lr
    progress = (step - warmup) / (decay_end + 1 - warmup)  # 1 after the last step, not at it
    coeff = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return final_lr + coeff * (max_lr - final_lr)


def schedule_change(old, step):
    """A warning when a resumed run's learning-rate schedule is not its checkpoint's (else None):
    the schedule follows the settings, so a new max_iters re-stretches the decay from here on."""
    def schedule(c):
        return (c["learning_rate"], c["warmup_iters"], c["lr_decay_iters"] or c["max_iters"],
                c["min_lr"], c["lr_schedule"])
    new = {k: globals()[k] for k in config_keys}
    if schedule(old) == schedule(new):
        return None
    was, now = (get_lr(step + 1, *schedule(c)) for c in (old, new))
    return (f"the learning-rate schedule differs from the checkpoint's: step {step + 1} gets "
            f"{now:.2e} where it had {was:.2e}; to continue on the checkpoint's schedule pass "
            f"--lr_decay_iters={old['lr_decay_iters'] or old['max_iters']} (and its other lr keys)")


# -----------------------------------------------------------------------------
# The model

def build_model(c, ckpt):
    """(the model, its config): the resume checkpoint's, a preset with this run's overrides
    (scratch), or pretrained weights to finetune with this run's dropout and block size."""
    if c["deterministic"]:  # the CPU is anyway; on GPUs the fused backward's fp32 atomics are not
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # what cuBLAS needs for it
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(c["seed"])  # the same initial weights everywhere (DDP broadcasts rank 0's)
    if ckpt is not None:
        cfg = PhiConfig(**ckpt["model_args"])  # the architecture is the checkpoint's
        net = Phi(cfg)
        net.load_state_dict(ckpt["model"])
    elif c["init_from"] == "scratch":
        overrides = dict(block_size=c["block_size"], attn_pdrop=c["dropout"],
                         resid_pdrop=c["dropout"])
        overrides.update({k: c[k] for k in ("n_layer", "n_head", "n_embd") if c[k]})
        if c["n_embd"]:
            overrides["n_inner"] = 4 * c["n_embd"]
        try:
            cfg = PhiConfig.from_preset(c["model"], **overrides)
        except ValueError as e:
            raise UserError(str(e))
        net = Phi(cfg)
    else:  # finetuning: the optimizer starts fresh
        try:
            pretrained = load_model(c["init_from"])
        except (FileNotFoundError, KeyError, RuntimeError) as e:
            raise UserError(f"init_from={c['init_from']}: {e}")
        check_block_size(c["block_size"], pretrained.config.block_size, c["init_from"])
        cfg = dataclasses.replace(pretrained.config, block_size=c["block_size"],
                                  attn_pdrop=c["dropout"], resid_pdrop=c["dropout"])
        net = Phi(cfg)
        net.load_state_dict(pretrained.state_dict())
    check_block_size(c["block_size"], cfg.block_size, "the checkpoint")
    return net, cfg


def check_block_size(wanted, trained, what):
    """Rotary positions past the trained context were never learned: refuse, do not extrapolate."""
    if wanted > trained:
        raise UserError(f"block_size={wanted} exceeds the {trained} tokens {what} was trained on: "
                        f"pass --block_size={trained} or less")


def describe_run(net, cfg, proc, accum, ckpt):
    """The line that opens a run (with warnings about the settings, if any)."""
    warnings = [schedule_change(ckpt["config"], ckpt["step"])] if ckpt is not None else []
    if recipe == "finetune" and init_from == "scratch":
        warnings.append("the finetune recipe starts from phi-1-base: pass --init_from=<it>")
    if max_iters < warmup_iters:
        last = get_lr(max_iters, learning_rate, warmup_iters, max_iters, min_lr, lr_schedule)
        warnings.append(f"max_iters={max_iters} < warmup_iters={warmup_iters}: the learning rate "
                        f"stops at {last:.2e} and never reaches its peak {learning_rate:.2e}")
    return "".join(f"warning: {w}\n" for w in warnings if w) + (
        f"model: {model if init_from == 'scratch' else init_from}, "
        f"{net.get_num_params() / 1e6:.1f} M parameters, {cfg.n_layer} layers x {cfg.n_embd} wide "
        f"| {proc.world} process(es) on {proc.dev}, {proc.dtype}{', compiled' if compile else ''} "
        f"| global batch {accum * batch_size * proc.world} x {block_size} tokens ({batch_size} per "
        f"micro-batch x {accum} accumulation x {proc.world})")


# -----------------------------------------------------------------------------
# Batches, drawn by (seed, step, rank) from the sources with their weights, and evaluation

def get_batch(streams, probs, batch, block, seed, *stream):
    """A batch of (input, target) windows from the sources' token streams."""
    which, starts = draw([len(s) for s in streams], probs, batch, block, seed, *stream)
    window = np.stack([streams[k][s:s + block + 1] for k, s in zip(which, starts)])  # (B, T+1)
    x, y = window[:, :-1].astype(np.int64), window[:, 1:].astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)  # (B, T), (B, T)


def document_ids(x):
    """(B, T) document index of each token: <|endoftext|> opens the next document (its BOS)."""
    return torch.cumsum(x == EOT, dim=1)  # (B, T)


@torch.no_grad()
def val_loss(model, val_data, probs, proc):
    """The mean loss of one fixed set of eval_iters micro-batches, split among the processes: the
    same sequences at every evaluation and on any number of processes, so that a run resumed on
    another number of GPUs continues the same curve."""
    model.eval()
    total = torch.zeros((), device=proc.dev)
    for k in range(proc.rank, eval_iters, proc.world):  # the draws of stream 1 (validation) "at
        # step 0", keyed like the training ones: (stream, step, micro-batch)
        x, y = (t.to(proc.dev) for t in
                get_batch(val_data, probs, batch_size, block_size, seed, 1, 0, k))
        with proc.autocast:
            total += model(x, y, doc_ids=document_ids(x) if doc_mask else None)[1].float()
    if proc.ddp:
        dist.all_reduce(total)
    model.train()
    return total.item() / eval_iters


def read_benchmarks(spec):
    """eval_problems -> {name: problems}: humaneval, mbpp (both ship with the project), or a .jsonl
    of problems named by its stem."""
    benchmarks = {}
    for source in filter(None, (s.strip() for s in spec.split(","))):
        name = source if source in ("humaneval", "mbpp") else Path(source).name.split(".")[0]
        try:
            benchmarks[name] = load_problems(source)
        except UserError as e:  # eval.py's errors about a benchmark, a missing file among them
            raise UserError(f"eval_problems: {e}") from None
    return benchmarks


@torch.no_grad()
def bench_losses(net, benchmarks, proc):
    """{name: mean loss of its reference solutions}, on rank 0 alone (the others wait at the next
    all-reduce): at small scale, where pass@k is 0, what tells two data sets apart (Fig. 2.1)."""
    if not proc.master:
        return {}
    net.eval()
    with proc.autocast:
        losses = {name: round(benchmark_loss(net, problems, progress=False)["loss"], 5)
                  for name, problems in benchmarks.items()}
    net.train()
    return losses


def bench_text(r):
    return "".join(f" | {k} loss {v:.4f}" for k, v in r.get("bench_loss", {}).items())


def progress_line(r, eta):
    """The printed line of log record r."""
    return (f"step {r['step']}/{max_iters} | loss {r['loss']:.4f}"
            + (f" | val loss {r['val_loss']:.4f}" if "val_loss" in r else "") + bench_text(r)
            + f" | lr {r['lr']:.2e} | {r['tokens_per_s']:,.0f} tok/s"
            + (f" | mfu {r['mfu']:.1%}" if "mfu" in r else "")
            + f" | epochs {'/'.join(f'{e:.2f}' for e in r['epochs'].values())}"
            + f" | eta {fmt_time(eta)}")


def print_sample(net, cfg, proc):
    """The model's completion of sample_prompt: what it has learned, at a glance."""
    net.eval()
    tok = get_tokenizer()
    prompt = tok.encode(sample_prompt)
    with proc.autocast:
        new = net.generate([prompt], min(sample_tokens, cfg.block_size - len(prompt)),
                           temperature=0.8, top_k=50, seed=seed, tokenizer=tok,
                           stop=["\ndef ", "\nclass "])[0]
    print(f"sample (temperature 0.8):\n{sample_prompt}{tok.decode(new)}", flush=True)


if __name__ == "__main__":
    configurator.cli(main)
