import os
import platform
import time
from datetime import datetime

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import configurator
from configurator import UserError
from model import PRESETS, Phi, PhiConfig
from tokenizer import get_tokenizer
from train import RECIPES, processes, setup_device

TRAIN_OPTIONS = {
    "recipe": ("", "\"pretrain\" or \"finetune\": model, batch_size, block_size and dropout from train.py's "
                   "recipe unless given"),
    "model": (None, f"model.py preset: {', '.join(PRESETS)} (default: the recipe's, else tiny)", str),
    "batch_size": (None, "sequences per step and process (default: the recipe's micro-batch, else 8)", int),
    "block_size": (None, "tokens per sequence (default: the recipe's, else 128)", int),
    "dropout": (None, "attention and residual dropout (default: the recipe's, else 0)", float),
    "compile": (False, "torch.compile the model"),
    "dtype": ("auto", "auto (bfloat16 on GPUs, float32 on CPU), float32, bfloat16, float16"),
    "device": ("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1"),
    "bench_steps": (10, "measured steps, each one micro-batch per process, after 3 warmup steps"),
    "seed": (1337, "seeds the weights and the random tokens"),
}
TRAIN_DOC = """python bench.py train: training throughput (tokens/s) and MFU of train.py's step (forward,
backward, gradient clipping, AdamW) on random tokens: no data, no checkpoints. Each step is one micro-batch per
process; under torchrun every process runs one, as in training.

    python bench.py train --recipe=pretrain --model=phi-1 --compile=True     # the paper's shape on a GPU
    python bench.py train --model=nano --block_size=32 --batch_size=2 --bench_steps=2   # CPU, seconds
    torchrun --standalone --nproc_per_node=8 bench.py train --recipe=pretrain"""


def bench_train(argv):
    a = configurator.parse(argv, TRAIN_OPTIONS, TRAIN_DOC)
    if a.recipe not in ("", *RECIPES):
        raise UserError(f"--recipe={a.recipe}: choose pretrain or finetune")
    recipe = RECIPES.get(a.recipe, {})
    model = a.model or recipe.get("model", "tiny")
    batch_size = a.batch_size or recipe.get("batch_size", 8)
    block_size = a.block_size or recipe.get("block_size", 128)
    dropout = recipe.get("dropout", 0.0) if a.dropout is None else a.dropout
    if model not in PRESETS:
        raise UserError(f"--model={model}: choose one of {', '.join(PRESETS)}")
    if a.bench_steps < 1 or batch_size < 1 or block_size < 1:
        raise UserError("--bench_steps, --batch_size and --block_size must be positive")
    proc = setup_device(processes(), a.device, a.dtype, a.compile)
    if proc.ddp:
        dist.init_process_group(backend="nccl" if proc.device_type == "cuda" else "gloo")
    torch.manual_seed(a.seed)
    try:
        cfg = PhiConfig.from_preset(model, block_size=block_size, attn_pdrop=dropout, resid_pdrop=dropout)
    except ValueError as e:
        raise UserError(str(e))
    net = Phi(cfg).to(proc.dev)
    optimizer = net.configure_optimizers(0.1, 1e-4, (0.9, 0.95), proc.device_type)  # tokens/s: any lr
    scaler = torch.amp.GradScaler(proc.device_type, enabled=proc.dtype == "float16")
    runner = torch.compile(net) if a.compile else net
    if proc.ddp:
        runner = DDP(runner, device_ids=[proc.local_rank] if proc.device_type == "cuda" else None)
    gen = torch.Generator().manual_seed(a.seed + proc.rank)
    windows = [torch.randint(0, get_tokenizer().n_vocab, (batch_size, block_size + 1), generator=gen)
               for _ in range(2)]                                                          # (B, T+1)
    batches = [(w[:, :-1].contiguous().to(proc.dev), w[:, 1:].contiguous().to(proc.dev))
               for w in windows]                                                           # (B, T), (B, T)
    warmup, times = 3, []
    for i in range(warmup + a.bench_steps):
        sync_device(proc)
        t0 = time.time()
        with proc.autocast:
            _, loss = runner(*batches[i % 2])
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        sync_device(proc)
        if i >= warmup:
            times.append(time.time() - t0)
    step_s = sum(times) / len(times)
    tok_s = batch_size * block_size * proc.world / step_s
    mfu = net.estimate_mfu(tok_s / proc.world)
    name = torch.cuda.get_device_name() if proc.device_type == "cuda" else "cpu"
    if proc.master:
        load = os.getloadavg()
        print(f"bench train on {platform.node()}, {os.cpu_count()} CPU(s), load average {load[0]:.2f} "
              f"{load[1]:.2f} {load[2]:.2f}, torch {torch.__version__}, {datetime.now():%Y-%m-%d %H:%M}")
        print(f"bench: {model}, batch {batch_size} x {block_size} per process, {proc.world} x {name}, "
              f"{proc.dtype}{', compiled' if a.compile else ''}: {tok_s:,.0f} tokens/s "
              f"({tok_s / proc.world:,.0f} per process), {step_s * 1000:.1f} ms/step over {a.bench_steps} "
              f"steps after {warmup} warmup, MFU "
              f"{'n/a (no known peak for this device)' if mfu is None else f'{mfu:.1%}'}, "
              f"last loss {loss.item():.3f}", flush=True)
    if proc.ddp:
        dist.destroy_process_group()


def sync_device(proc):
    if proc.device_type == "cuda":
        torch.cuda.synchronize()
