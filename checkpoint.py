"""
The files of a train.py run, and what survives a fault. An out_dir holds one run:

    ckpt.pt          all a resumed run needs to continue exactly: weights, optimizer, GradScaler,
                     step, every process's RNG states, the data caches and tokens drawn per source
    ckpt_NNNNNN.pt   the weights alone, at the steps of --keep_ckpts
    log.jsonl        one JSON line per step (a resumed run first drops those after its checkpoint)
    lock             held by the running process: a second run on the same out_dir is refused

A checkpoint is written through files.atomic_write: a kill, a full disk or a second Ctrl-C during a
save leaves the previous one intact (a full disk is one error line, exit 1). The first Ctrl-C lets
the current step finish, writes a checkpoint and exits 130, and `--init_from=resume` continues
exactly; a second one stops at once. A fresh run is refused in an out_dir that holds a run's
checkpoint, unless --overwrite=True; both say the command that continues the run. A run refused
for bad input leaves the disk as it was: out_dir and its lock are made once data and model are
ready.
"""

import fcntl
import json
import dataclasses
import math
import os
import shlex
import signal
import socket
import sys
import time

import torch

from configurator import UserError
from files import atomic_write, read_jsonl

RESUME_KEYS = {"model", "model_args", "optimizer", "scaler", "step", "rng", "data"}


def save(obj, path):
    """torch.save through the one atomic writer: the file is complete or as it was."""
    def write(f):
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            # torch reports a failed write (a full disk) or a Ctrl-C inside one as "enforce fail at
            # inline_container.cc ... unexpected pos"; the cause is the exception it was handling
            if isinstance(e.__context__, (OSError, KeyboardInterrupt)):
                raise e.__context__ from None
            raise
    atomic_write(path, write)


def load(path):
    """The resume checkpoint, or one line saying what is wrong with it."""
    if not path.exists():
        raise UserError(f"init_from=resume but there is no checkpoint {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        missing = RESUME_KEYS - set(ckpt)
    except Exception as e:  # torch reports a cut-short zip, an empty file or garbage in many ways
        reason = (str(e).strip().splitlines() or [type(e).__name__])[-1][:120]
        raise UserError(f"{path} is not a readable checkpoint ({reason}); it was probably cut "
                        "short: delete it to start again, or finetune from a kept ckpt_NNNNNN.pt "
                        "with --init_from=<it>")
    if missing:
        raise UserError(f"{path} is not a train.py resume checkpoint (it lacks "
                        f"{', '.join(sorted(missing))}); use --init_from=<it> to finetune from "
                        "its weights")
    return ckpt


def save_step(out, step, run, proc, resume, keep):
    """Step's checkpoints: ckpt.pt (all a resume needs) if `resume`, ckpt_NNNNNN.pt (the weights)
    if `keep`. Every process calls it: the RNG states of all of them go into ckpt.pt."""
    rngs = rng_states(proc.ddp, proc.world, proc.device_type) if resume else None
    if not proc.master:
        return
    # the plain module's names: no "_orig_mod." (compile) or "module." (DDP) prefix
    weights = {"model": run.net.state_dict(), "model_args": dataclasses.asdict(run.cfg),
               "step": step, "val_loss": run.last_val, "config": run.config}
    if resume:
        data = {"caches": [str(c) for c in run.caches], "tokens_seen": run.seen.tolist(),
                "world_size": proc.world}
        save({**weights, "optimizer": run.optimizer.state_dict(), "rng": rngs,
              "scaler": run.scaler.state_dict(), "data": data}, out / "ckpt.pt")
    if keep:
        save(weights, out / f"ckpt_{step:06d}.pt")


def resume_command(argv, proc):
    """The command line that continues this run: the same launcher, script and arguments, with
    --init_from=resume (multi-node launches keep the user's own torchrun options)."""
    args = [a for a in argv if not a.startswith(("--init_from=", "--overwrite="))]
    cmd = shlex.join([sys.argv[0], *args, "--init_from=resume"])
    if not proc.ddp:
        return f"python {cmd}"
    if int(os.environ.get("LOCAL_WORLD_SIZE", proc.world)) == proc.world:  # one node
        return f"torchrun --standalone --nproc_per_node={proc.world} {cmd}"
    return f"torchrun <your multi-node options> {cmd}"


def check_out_dir(out, resume, overwrite, command):
    """Before any work, and touching nothing: out_dir is not in use by a live run, and a fresh run
    does not mix its log and checkpoints with a finished one's unless asked to overwrite."""
    try:
        with open(out / "lock") as f:  # read-only: a probe, which changes nothing
            _take_lock(f, out)
    except FileNotFoundError:
        pass
    old = sorted(p.name for p in out.glob("ckpt*.pt")) if out.is_dir() else []
    if old and not resume and not overwrite:
        raise UserError(f"{out} holds a run ({old[0]}): continue it with `{command}`, choose "
                        "another --out_dir, or start afresh over it with --overwrite=True")


def lock_out_dir(out):
    """Hold out_dir/lock while this run lives: a second run on the same out_dir is refused at start.
    The kernel drops the lock when its process dies, however it dies, so a dead run's lock file
    never blocks the next one."""
    out.mkdir(parents=True, exist_ok=True)
    f = open(out / "lock", "a+")
    _take_lock(f, out)
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    for debris in out.glob("*.tmp"):  # a save that a SIGKILL cut short
        debris.unlink()
    return f


def _take_lock(f, out):
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        raise UserError(f"{out} is in use by another run ({holder}); wait for it to end or choose "
                        "another --out_dir") from None


def open_log(out, ckpt, overwrite, log):
    """out_dir/log.jsonl, open for appending: a run resumed from `ckpt` first drops the lines after
    its step; a fresh one starts it anew (with --overwrite=True, after removing the old run)."""
    path = out / "log.jsonl"
    if ckpt is not None:
        truncate_log(path, ckpt["step"])
        log(f"resumed from {out / 'ckpt.pt'} at step {ckpt['step']}")
    else:
        old = [p for p in (*out.glob("ckpt*.pt"), path) if p.exists()] if overwrite else []
        for p in old:
            p.unlink()
        if old:
            log(f"overwrite: removed the previous run's {', '.join(p.name for p in old)}")
        path.write_text("")
    return open(path, "a")


def truncate_log(path, last_step):
    """Drop log lines after the checkpoint being resumed: the resumed run writes them again."""
    if not path.exists():
        return
    kept = [r for _, r in read_jsonl(path, tail="skip")  # skip: a last line cut by a kill
            if r.get("step", math.inf) <= last_step]
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept))


def rng_states(ddp, world, device_type):
    """Every process's RNG states (dropout), gathered to each: a resumed run restores its own."""
    rng = {"torch": torch.get_rng_state(),
           "cuda": torch.cuda.get_rng_state() if device_type == "cuda" else None}
    if not ddp:
        return [rng]
    rngs = [None] * world
    torch.distributed.all_gather_object(rngs, rng)
    return rngs


def restore_rng(ckpt, rank, world, device_type, seed):
    """Dropout's RNG: a resumed run restores this rank's state (exact with the same number of
    processes; otherwise re-seeded); a fresh run seeds each rank differently."""
    if ckpt is None:
        torch.manual_seed(seed + rank)
    elif len(ckpt["rng"]) == world:
        torch.set_rng_state(ckpt["rng"][rank]["torch"])
        if device_type == "cuda" and ckpt["rng"][rank]["cuda"] is not None:
            torch.cuda.set_rng_state(ckpt["rng"][rank]["cuda"])
    else:
        torch.manual_seed(seed + rank + ckpt["step"])


class CtrlC:
    """Ctrl-C (SIGINT) in the training loop. The first sets `requested`: the loop finishes its
    step, writes a checkpoint and stops. A second stops at once: KeyboardInterrupt, saying what is
    kept. torchrun passes a terminal's Ctrl-C on to every process, which then gets
    it twice: with same_press_s=1, a second signal within a second is the same press. torchrun
    kills its processes --shutdown_timeout seconds (30) after a Ctrl-C: a step and a save must
    fit in that, or raise it."""

    def __init__(self, path, step, same_press_s=0.0):
        self.requested, self.at, self.same_press_s = False, 0.0, same_press_s
        self.kept = "nothing half-written was kept"
        if step:  # resumed from it
            self.saved(path)
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if not self.requested:
            self.requested, self.at = True, time.monotonic()
        elif time.monotonic() - self.at > self.same_press_s:
            raise KeyboardInterrupt(self.kept)

    def saved(self, path):
        self.kept = f"the last checkpoint written whole, {path}, is kept"

    def restore(self):
        signal.signal(signal.SIGINT, self.previous)
