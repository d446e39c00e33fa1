"""
The processes of a run and their devices: which process this is under torchrun (rank, local rank,
world size), which device it computes on, and in which dtype (bf16 autocast on GPUs, as phi-1's
mixed-precision training; §2.3 says fp16 with DeepSpeed, bf16 needs no loss scaling on the GPUs of
today). train.py and bench.py start every run with these two functions:

    proc = setup_device(processes(), device="auto", dtype="auto", compiled=False)
    with proc.autocast: ...
"""

import os
import sysconfig
import tempfile
from contextlib import nullcontext
from types import SimpleNamespace

import torch

from configurator import UserError


def processes():
    """This process's rank, local rank (its GPU) and the number of processes, from torchrun."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank, local, world = (int(os.environ[k]) if ddp else d for k, d in
                          (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    return SimpleNamespace(ddp=ddp, rank=rank, local_rank=local, world=world, master=rank == 0)


def setup_device(proc, device, dtype, compiled):
    """Add the device, the dtype's name and the autocast context to `proc`."""
    dev = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    if dev.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device={device} but CUDA is not available")
        if proc.ddp:
            dev = f"cuda:{proc.local_rank}"
        torch.cuda.set_device(dev)
    device_type = "cuda" if dev.startswith("cuda") else "cpu"
    dtype_name = ("bfloat16" if device_type == "cuda" else "float32") if dtype == "auto" else dtype
    if device_type == "cpu" and dtype_name == "float16":
        raise UserError("dtype=float16 needs a GPU; use float32 or bfloat16 on CPU")
    # torch.compile on a CPU builds C++ with a command line that torch splits at spaces (paths are
    # not quoted): it cannot link when torch, Python or the compiler's cache (in TMPDIR, unless
    # TORCHINDUCTOR_CACHE_DIR) lives under a path with a space
    spaced = [p for p in (os.path.dirname(torch.__file__), sysconfig.get_path("include"),
                          os.environ.get("TORCHINDUCTOR_CACHE_DIR") or tempfile.gettempdir())
              if " " in p]
    if compiled and device_type == "cpu" and spaced:
        raise UserError(f"compile=True on a CPU cannot link from {spaced[0]} (a space breaks "
                        "torch's C++ build): use a virtualenv without spaces, or --compile=False")
    proc.dev, proc.device_type, proc.dtype = dev, device_type, dtype_name
    proc.autocast = nullcontext() if dtype_name == "float32" else \
        torch.autocast(device_type, dtype=getattr(torch, dtype_name))
    return proc
