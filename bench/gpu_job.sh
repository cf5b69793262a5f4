#!/usr/bin/env bash
# The training job itself on a GPU (run from the repository root on a lent GPU machine):
# GPT-2 small from config, bf16, SDPA, batch 8 x 1024, 8 workers, `python -m lmstream.train` on
# make_corpus.py's corpus (bench/data/corpus), then two resumes from the step-STEPS/2 checkpoint:
# the same shape (exact path) and 4 workers (another topology: logical readers serve the same blocks).
# Prints tokens/s, data wait and each resume's loss against the straight run's from the logs.
# Needs torchdata (wheel in bench/wheels/, as for gpu_check.sh). SMALL=1: tiny sizes on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d bench/wheels ]; then
  python3 -m pip install -q --no-index --no-deps bench/wheels/*.whl >/dev/null 2>&1 || true
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}"
out="${OUT:-bench-results}"; mkdir -p "$out"
runs="${RUNS:-/tmp/lmstream-gpu-job}"; rm -rf "$runs"
steps="${STEPS:-200}"; half=$((steps / 2))
data="${DATA:-bench/data/corpus/data/python-3.11-docs}"
[ -d "$data" ] || data=lmstream/assets/sample/data/python-docs
if [ -n "${SMALL:-}" ]; then
  model=(--config_overrides "n_layer=2,n_embd=64,n_head=2") size=(--per_device_train_batch_size 2 --dataset_block_size 64)
  dev=(--use_cpu true) workers=2 fewer=1
else
  model=(--config_overrides "n_layer=12,n_embd=768,n_head=12,n_positions=1024,n_ctx=1024" --attn_implementation sdpa)
  size=(--per_device_train_batch_size 8 --dataset_block_size 1024) dev=(--bf16 true) workers=8 fewer=4
fi
job() {   # job NAME WORKERS [extra flags]
  local name=$1 w=$2; shift 2
  python3 -m lmstream.train --dataset_streaming true --do_train --dataset_name "$data" \
    --config_name lmstream/assets/tiny-gpt2 "${model[@]}" "${size[@]}" "${dev[@]}" \
    --output_dir "$runs/run" --max_steps "$steps" --save_steps "$half" --logging_steps 10 --learning_rate 6e-4 \
    --warmup_steps 20 --dataloader_num_workers "$w" --seed 0 --report_to none --disable_tqdm true "$@" \
    > "$out/$name.log" 2>&1
  cp "$runs/run/trainer_state.json" "$out/$name.trainer_state.json"
}
job straight "$workers"
mv "$runs/run/checkpoint-$steps" "$runs/straight-end"
job exact "$workers" --resume_from_checkpoint "$runs/run/checkpoint-$half"
rm -rf "$runs/run/checkpoint-$steps"
job fewer "$fewer" --resume_from_checkpoint "$runs/run/checkpoint-$half"
python3 - "$out" "$half" <<'PY'
import json, sys
out, half = sys.argv[1], int(sys.argv[2])
logs = {n: [h for h in json.load(open(f"{out}/{n}.trainer_state.json"))["log_history"] if "loss" in h]
        for n in ("straight", "exact", "fewer")}
for n, hs in logs.items():
    tps = [h["tokens_per_second"] for h in hs if "tokens_per_second" in h and h["step"] > 20]
    wait = [h["data_wait_fraction"] for h in hs if "data_wait_fraction" in h and h["step"] > 20]
    rate = f"{min(tps):,.0f}-{max(tps):,.0f}" if tps else "n/a"
    print(f"{n:9s} steps {hs[0]['step']}-{hs[-1]['step']}  tokens/s {rate}  "
          f"data wait {max(wait) if wait else float('nan'):.4f} max  loss {hs[-1]['loss']:.4f}")
a = {h["step"]: h["loss"] for h in logs["straight"]}
for n in ("exact", "fewer"):
    b = {h["step"]: h["loss"] for h in logs[n]}
    common = sorted(s for s in set(a) & set(b) if s > half)
    print(f"{n}: |loss - straight| max over steps {common[0]}-{common[-1]}: "
          f"{max(abs(a[s] - b[s]) for s in common):.2e}")
PY
