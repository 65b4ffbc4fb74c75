#!/usr/bin/env bash
# Build the flash_attn_rs wheel (abi3, CPython >= 3.9, the PTX of target/ptx embedded) into
# target/wheels and install it into .cache/venv. Needs scripts/setup.sh and `cargo xtask
# build-ptx` first (scripts/test.sh does both). Prints the wheel's path.
#
# The wheel links libcuda.so.1, the NVIDIA driver's library, which every machine with a GPU
# has: it is left out of the wheel (auditwheel `warn`), as torch's wheels leave it out.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=/dev/null
source "$ROOT/.cache/env.sh"
rm -rf "$ROOT/python/flash_attn_rs/__pycache__"
"$ROOT/.cache/venv/bin/maturin" build --release --quiet -m "$ROOT/python/Cargo.toml" --out "$ROOT/target/wheels" \
    --auditwheel warn >&2
wheel="$(ls -t "$ROOT"/target/wheels/flash_attn_rs-*.whl | head -n1)"
"$ROOT/.cache/venv/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheel" >&2
echo "$wheel"
