#!/usr/bin/env bash
# GPU throughput check (run on a lent GPU machine, from the repository root):
#   GPT-2 small (124 M) from config, bf16, SDPA, batch 8 x 1024, 8 workers, 200 timed steps,
#   once with the streaming pipeline and once with synthetic in-memory tokens.
# The machine lacks datasets/torchdata: wheels carried in bench/wheels/ are installed offline.
# DATA: a folder of Parquet/JSONL files (or any dataset_name with CONFIG). Default: bench/data/corpus's
# Parquet folder when make_corpus.py's corpus was built there, else the bundled sample (cycled).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d bench/wheels ]; then
  python3 -m pip install -q --no-index --no-deps bench/wheels/*.whl >/dev/null 2>&1 || true
fi
python3 -c "import torchdata" 2>/dev/null || { echo "torchdata is missing: put its wheel in bench/wheels/"; exit 1; }
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
out="${OUT:-.}/gpu_check.json"
args=(--steps "${STEPS:-200}" --workers "${WORKERS:-8}" --out "$out")
corpus=bench/data/corpus/data/python-3.11-docs
[ -z "${DATA:-}" ] && [ -d "$corpus" ] && DATA=$corpus
[ -n "${DATA:-}" ] && args+=(--dataset "$DATA")
[ -n "${CONFIG:-}" ] && args+=(--config "$CONFIG")
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 -m lmstream.tools.gpucheck "${args[@]}" "$@"   # extra flags: --rounds 2, --compile, --out FILE
