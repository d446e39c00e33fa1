"""
Sample from a phi-1 model (after nanoGPT's sample.py): continue a prompt with model.py's generate.

The model is any checkpoint weights.py reads (a train.py out_dir or ckpt.pt, a Hugging Face Phi
directory such as microsoft/phi-1's, or CodeGen's codegen-350M-mono, the paper's baseline); without
--ckpt, an untrained tiny model, whose samples are noise but show the machinery run.

    python sample.py --ckpt=out --prompt="def fib(n):" --max_new_tokens=64 --temperature=0.8
    python sample.py --ckpt=out --prompt=FILE:prompt.py --temperature=0     # greedy
"""

import sys
from pathlib import Path

import torch

import configurator
from configurator import UserError
from model import Phi, PhiConfig
from tokenizer import EOT, get_tokenizer
from weights import load_model

OPTIONS = {
    "ckpt": ("", "a train.py out_dir or ckpt.pt, or a Hugging Face Phi / CodeGen directory;\n"
                 "empty: an untrained tiny model"),
    "prompt": ('def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
               "the text to continue, or FILE:path to read it from a file"),
    "max_new_tokens": (64, "tokens to generate (fewer if the model's context is full)"),
    "temperature": (0.8, "0 = greedy; higher is more random"),
    "top_k": (50, "sample among the k most likely tokens; 0 = all of them"),
    "seed": (0, "seed of the sampling (and of the untrained model's weights)"),
    "device": ("auto", "auto (cuda when available, else cpu), cpu, cuda or cuda:N"),
}


def main(argv):
    a = configurator.parse(argv, OPTIONS, __doc__)
    if a.max_new_tokens < 1 or a.temperature < 0 or a.top_k < 0:
        raise UserError("--max_new_tokens must be >= 1, --temperature and --top_k >= 0")
    prompt = a.prompt
    if prompt.startswith("FILE:"):
        try:
            prompt = Path(prompt[5:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--prompt={a.prompt}: {getattr(e, 'strerror', None) or e}")
    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device={device}: no CUDA device here; use --device=cpu")

    torch.manual_seed(a.seed)
    if a.ckpt:
        try:
            model = load_model(a.ckpt, device=device)
        except FileNotFoundError as e:  # its message names the path and what was looked for
            raise UserError(str(e))
        except ValueError as e:  # a Hugging Face config of a variant model.py does not implement
            raise UserError(f"{a.ckpt}: {e}")
    else:
        model = Phi(PhiConfig.from_preset("tiny")).to(device).eval()
        millions = model.get_num_params() / 1e6
        print(f"no --ckpt: an untrained tiny phi ({millions:.1f} M parameters), so noise",
              file=sys.stderr)
    if device.startswith("cuda"):
        model = model.to(torch.bfloat16)

    tok = get_tokenizer()
    ids = tok.encode(prompt) or [EOT]  # an empty prompt starts a new file
    room = model.config.block_size - len(ids)
    if room < 1:
        raise UserError(f"the prompt has {len(ids)} tokens; the model's context holds "
                        f"{model.config.block_size}")
    if room < a.max_new_tokens:
        print(f"only {room} new tokens fit the context of {model.config.block_size}",
              file=sys.stderr)
    new = model.generate([ids], max_new_tokens=min(a.max_new_tokens, room),
                         temperature=a.temperature, top_k=a.top_k or None, seed=a.seed,
                         tokenizer=tok)[0]
    print(prompt + tok.decode(new))


if __name__ == "__main__":
    configurator.cli(main)
