"""Fig. 2.1 at small scale, run (b): as fig21_unfiltered.py, on filter.py's kept subset of the standard library.

python filter.py --out_dir=out-fig21/filter        # writes out-fig21/filter/filtered.jsonl (config/fig21.sh does)
python train.py config/fig21_filtered.py --seed=1 --out_dir=out-fig21/filtered-1

The same steps and batch as run (a), so the same number of training tokens and the same compute. The validation
loss is each run's own held-out files (filtered ones here), so it does not compare the two data sets; the benchmark
loss (eval.py's, logged at every evaluation) is the same yardstick for both.
"""
data = "out-fig21/filter/filtered.jsonl"
model = "tiny"
block_size = 640
batch_size = 4
max_iters = 80                 # 204,800 training tokens; ~3.3 s a step on the idle 2-core CPU
warmup_iters = 8
learning_rate = 2e-3
eval_interval = 40             # validation and benchmark losses at steps 0, 40 and 80
eval_iters = 8
eval_problems = "humaneval"    # config/fig21.sh adds MBPP where a local copy exists
sample_tokens = 0
