import os
import platform
import tempfile
import time
from datetime import datetime

import torch

import configurator
from configurator import UserError
from model import PRESETS, Phi, PhiConfig
from weights import save_pretrained

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
