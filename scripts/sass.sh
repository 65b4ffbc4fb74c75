#!/usr/bin/env bash
# Disassemble one kernel of the built PTX to SASS, on a CPU-only machine: ptxas (from setup.sh)
# assembles just that entry, nvdisasm (PyPI's nvidia-cuda-nvdisasm, fetched into .cache/nvdisasm
# on first use) prints it. With --summary: instruction, 64-bit compare, BSSY, MUFU.EX2 and
# local-memory (spill) counts instead of the listing.
#
#   bash scripts/sass.sh flash_fwd_wgmma_ws_bf16_hdim128 [--summary] [--arch sm_80] [--ptx FILE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
kernel=${1:?kernel name}; shift
arch=sm_90a; summary=0; ptx=""
while [ $# -gt 0 ]; do
  case $1 in
    --summary) summary=1 ;;
    --arch) arch=$2; shift ;;
    --ptx) ptx=$2; shift ;;
    *) echo "sass.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
ptx=${ptx:-$ROOT/target/ptx/flash_attn.$arch.ptx}
[ -f "$ptx" ] || { echo "sass.sh: no $ptx: run cargo xtask build-ptx" >&2; exit 1; }
source "$ROOT/.cache/env.sh"
dis=$ROOT/.cache/nvdisasm/nvidia/cu13/bin/nvdisasm
if [ ! -x "$dis" ]; then
  tmp=$(mktemp -d)
  "$ROOT/.cache/venv/bin/pip" download -q --no-deps "nvidia-cuda-nvdisasm==13.5.37" -d "$tmp"
  mkdir -p "$ROOT/.cache/nvdisasm"
  (cd "$ROOT/.cache/nvdisasm" && python3 -m zipfile -e "$tmp"/nvidia_cuda_nvdisasm-*.whl .)
  chmod +x "$dis"
  rm -rf "$tmp"
fi
cubin=$(mktemp --suffix=.cubin)
trap 'rm -f "$cubin"' EXIT
"$PTXAS" -arch="$arch" -O3 -e "$kernel" -o "$cubin" "$ptx"
if [ $summary = 1 ]; then
  "$dis" -c "$cubin" 2>/dev/null | awk -v k="$kernel" '
    /\/\*[0-9a-f]+\*\// { n++ }
    /ISETP.*\.EX/ { ex++ } /BSSY/ { bssy++ } /MUFU\.EX2/ { mufu++ } /(STL|LDL)/ { local++ }
    END { printf "%s: %d instructions, %d 64-bit compares, %d BSSY, %d MUFU.EX2, %d local loads/stores\n", k, n, ex, bssy, mufu, local }'
else
  "$dis" -c "$cubin" 2>/dev/null
fi
