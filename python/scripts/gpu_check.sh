#!/usr/bin/env bash
# The Python package on the GPU machine (torch, transformers; no Rust, no network): install the
# wheel built here (target/wheels) into /tmp/flash_attn_rs_site, then run the steps in STEPS:
#   tests    python/tests (the GPU property tests and the CPU ones) with pytest
#   models   python/scripts/check_models.py (Llama / Mistral / Gemma-2 against sdpa)
#   bench    python/scripts/bench_py.py (overhead, grid against SDPA and FA4, end-to-end)
#   rust     the Rust bench's overhead row (bundle/bin/bench --serving overhead), if a bundle is here
# Usage (GPU machine, repository root): OUT=... STEPS="tests models" bash python/scripts/gpu_check.sh
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
out="${OUT:-$ROOT/python/out}"
mkdir -p "$out"
steps="${STEPS:-tests models bench rust}"
has() { [[ " $steps " == *" $1 "* ]]; }
log() { echo "== $(date +%H:%M:%S) $*" | tee -a "$out/log.txt"; }
site=/tmp/flash_attn_rs_site
wheel="$(ls -t "$ROOT"/target/wheels/flash_attn_rs-*.whl | head -n1)"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$wheel" 2>&1 | tail -2
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
[ -f /tmp/fa4/env.sh ] && source /tmp/fa4/env.sh && export PYTHONPATH="$site:$PYTHONPATH"
python3 -c 'import torch, flash_attn_rs, sys; print("python", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name(), "flash_attn_rs", flash_attn_rs.__file__)' 2>&1 | tee -a "$out/log.txt"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee -a "$out/log.txt"
rc=0
if has tests; then
  log "pytest python/tests"
  python3 -c "import pytest" 2>/dev/null || python3 -m pip install -q --no-index --find-links "$ROOT/gpucarry/pywheels" --target /tmp/pytest_site pytest && export PYTHONPATH="$PYTHONPATH:/tmp/pytest_site"
  (cd /tmp && timeout ${TTIME:-300} python3 -m pytest -q -rs -s "$ROOT/python/tests" --junitxml="$out/pytest.xml") 2>&1 | tee -a "$out/log.txt" | tail -40
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if has models; then
  log "check_models.py"
  timeout ${MTIME:-240} python3 "$ROOT/python/scripts/check_models.py" --out "$out/models.jsonl" 2>&1 | tee -a "$out/log.txt" | tail -40
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if has rust && [ -x "$ROOT/bundle/bin/bench" ]; then
  log "rust overhead"
  "$ROOT/bundle/bin/bench" --serving overhead --out "$out/rust_overhead.jsonl" 2>&1 | tee -a "$out/log.txt"
fi
if has bench; then
  log "bench_py.py"
  timeout ${BTIME:-300} python3 "$ROOT/python/scripts/bench_py.py" --out "$out/bench_py.jsonl" ${BENCH_ARGS:-} 2>&1 | grep -v UserWarning | tee -a "$out/log.txt" | tail -40
fi
exit $rc
