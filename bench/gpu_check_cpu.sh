#!/usr/bin/env bash
# The GPU check three ways, for host CPU use per GPU (run on a lent GPU machine, from the repository root):
# eager with 8 and 2 loader workers, and torch.compile with 4. Wheels for packages the GPU image lacks
# (datasets, torchdata, fastokens...) may be carried in .whl/. Results: $OUT/gpu_check_*.json and a summary.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 OUT="${OUT:-.}"
STEPS="${STEPS:-200}" WORKERS=8 bash bench/gpu_check.sh --out "$OUT/gpu_check_eager_w8.json" > "$OUT/eager_w8.log" 2>&1
STEPS="${STEPS:-200}" WORKERS=2 bash bench/gpu_check.sh --out "$OUT/gpu_check_eager_w2.json" > "$OUT/eager_w2.log" 2>&1
STEPS="${STEPS:-200}" WORKERS=4 bash bench/gpu_check.sh --compile --out "$OUT/gpu_check_compile_w4.json" > "$OUT/compile_w4.log" 2>&1
python3 - "$OUT" <<'PY'
import glob, json, os, sys
for f in sorted(glob.glob(os.path.join(sys.argv[1], "gpu_check_*.json"))):
    r = json.load(open(f))
    print(os.path.basename(f), r["device"], r["tokenizer_backend"], "workers", r["settings"]["workers"],
          "pipeline/synthetic %.3f" % r["pipeline_over_synthetic"],
          "tok/s %.0f / %.0f" % (r["pipeline"]["tokens_per_second"], r["synthetic"]["tokens_per_second"]),
          "cores busy (training, pipeline) %.2f, (synthetic) %.2f, (loader alone) %.2f" % (
              r["pipeline"]["host_cores_busy"], r["synthetic"]["host_cores_busy"],
              r["pipeline_alone"]["host_cores_busy"]),
          "loader alone tok/s %.0f" % r["pipeline_alone"]["tokens_per_second"])
PY
tail -3 "$OUT"/*.log
