"""Fig. 2.1 at small scale, run (b): as run (a), on filter.py's kept subset of the standard library (after
config/fig21.py).

python filter.py --out_dir=out-fig21/filter        # writes out-fig21/filter/filtered.jsonl (config/fig21.sh does)
python train.py config/fig21.py config/fig21_filtered.py --seed=1 --out_dir=out-fig21/filtered-1

The validation loss is each run's own held-out files (filtered ones here), so it does not compare the two data
sets; the benchmark loss (eval.py's, logged at every evaluation) is the same yardstick for both.
"""
data = "out-fig21/filter/filtered.jsonl"
