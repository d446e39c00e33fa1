"""Fig. 2.1 at small scale: what runs (a) and (b) share. Each run takes this file and then its data set's,
config/fig21_unfiltered.py or config/fig21_filtered.py, which differ only in `data`: the same steps and batch,
hence the same training tokens and compute. config/fig21.sh runs both with seeds 1, 2, 3.

python train.py config/fig21.py config/fig21_unfiltered.py --seed=1 --out_dir=out-fig21/unfiltered-1

A 640-token context holds every HumanEval prompt with its canonical solution (the longest pair is 623 tokens), so
HumanEval's loss is over whole solutions; of MBPP's 500 test problems one does not fit (eval.py keeps half the
context for its prompt and scores the part of its solution that fits: 135 tokens of 35,253 are left out).
"""
model = "tiny"
block_size = 640
batch_size = 4
max_iters = 80                 # 204,800 training tokens; ~3.3 s a step on the idle 2-core CPU
warmup_iters = 8
learning_rate = 2e-3
eval_interval = 40             # validation and benchmark losses at steps 0, 40 and 80
eval_iters = 8
eval_problems = "humaneval,mbpp"  # the benchmark losses: MBPP from assets/ (fig21.sh --mbpp=PATH: another copy)
sample_tokens = 0
