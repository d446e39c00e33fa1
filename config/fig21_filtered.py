"""Fig. 2.1 at small scale, run (b): as fig21_unfiltered.py, on filter.py's kept subset of the standard library.

python filter.py --out_dir=out-filter ...          # writes out-filter/filtered.jsonl (see README, the quality filter)
python train.py config/fig21_filtered.py --seed=1 --out_dir=out-fig21/filtered-1   (seeds 1, 2, 3)

Same steps and batch as run (a), so the same number of training tokens and the same compute; the kept subset is
smaller, so it is seen for more epochs. The validation loss is each run's own held-out files; compare the runs on
the benchmark loss (eval.py loss), which is the same yardstick for both.
"""
data = "out-filter/filtered.jsonl"
model = "tiny"
block_size = 640
batch_size = 4
max_iters = 80                 # 204,800 tokens: ~4 s a step on the 2-core CPU, 6 runs in ~35 min
warmup_iters = 8
learning_rate = 2e-3
eval_interval = 20
eval_iters = 8
sample_tokens = 0
