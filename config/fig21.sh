#!/usr/bin/env bash
# Fig. 2.1 of "Textbooks Are All You Need" at small scale, on a CPU: is a model trained on filter.py's kept files
# better, at the same tokens and compute, than one trained on everything? (a) the tiny preset on the standard
# library, (b) the same on its filtered subset, 3 seeds each; each run logs its validation loss and the loss of
# HumanEval's (and MBPP's) reference solutions at steps 0, 40, 80; then one figure and a table of them all.
#
#   bash config/fig21.sh                   # ~30 min on an idle 2-core CPU; a rerun resumes (finished runs are kept)
#   bash config/fig21.sh --out_dir=out-x --seeds=1,2 --mbpp=path/to/mbpp.jsonl
#
# MBPP's test problems come from the copy in assets/ unless --mbpp names another file in its format; nothing is
# downloaded. Relative paths are from the checkout (the script runs there). Writes OUT_DIR/filter/, OUT_DIR/{unfiltered,filtered}-SEED/,
# OUT_DIR/fig21.png and OUT_DIR/table.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=out-fig21
SEEDS=1,2,3
MBPP=mbpp
for arg in "$@"; do
    case $arg in
        --out_dir=*) OUT=${arg#*=} ;;
        --seeds=*) SEEDS=${arg#*=} ;;
        --mbpp=*) MBPP=${arg#*=} ;;
        *) echo "fig21.sh: error: unknown argument '$arg' (options: --out_dir= --seeds= --mbpp=)" >&2; exit 2 ;;
    esac
done
if [ "$MBPP" != mbpp ] && [ ! -f "$MBPP" ]; then
    echo "fig21.sh: error: --mbpp=$MBPP: no such file" >&2; exit 2
fi
problems="humaneval,$MBPP"
start=$SECONDS

python filter.py --out_dir="$OUT/filter"          # heuristic judge + TF-IDF stand-ins, offline
runs=()
for seed in ${SEEDS//,/ }; do
    for arm in unfiltered filtered; do
        dir="$OUT/$arm-$seed"
        resume=(); [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
        data=stdlib; [ "$arm" = filtered ] && data="$OUT/filter/filtered.jsonl"
        echo "fig21: $dir ($(( (SECONDS - start) / 60 )) min so far)"
        # --data: the arm's config names it under the default OUT
        python train.py config/fig21.py "config/fig21_$arm.py" --seed="$seed" --data="$data" \
            --eval_problems="$problems" --out_dir="$dir" "${resume[@]}"
        runs+=("$dir")
    done
done
python plot.py "${runs[@]}" --x=tokens --out="$OUT/fig21.png" | tee "$OUT/table.txt"
echo "fig21: done in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
