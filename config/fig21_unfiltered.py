"""Fig. 2.1 at small scale, run (a): the tiny preset on the unfiltered standard library.

python train.py config/fig21_unfiltered.py --seed=1 --out_dir=out-fig21/unfiltered-1   (seeds 1, 2, 3)
then: python eval.py loss --ckpt out-fig21/unfiltered-1 --problems humaneval --out out-fig21/unfiltered-1/he_loss.json

A 640-token context holds every HumanEval prompt with its canonical solution (the longest pair is 623 tokens), so
the benchmark loss is over whole solutions. Run (b) (fig21_filtered.py) differs only in its data: same steps, same
batch, hence the same training tokens and compute.
"""
data = "stdlib"
model = "tiny"
block_size = 640
batch_size = 4
max_iters = 80                 # 204,800 tokens: ~4 s a step on the 2-core CPU, 6 runs in ~35 min
warmup_iters = 8
learning_rate = 2e-3
eval_interval = 20
eval_iters = 8
sample_tokens = 0
