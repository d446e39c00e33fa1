"""Fig. 2.1 at small scale, run (a): the tiny preset on the unfiltered standard library (after config/fig21.py).

python train.py config/fig21.py config/fig21_unfiltered.py --seed=1 --out_dir=out-fig21/unfiltered-1
"""
data = "stdlib"
