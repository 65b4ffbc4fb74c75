#!/usr/bin/env bash
# The project's test command (README, .ci/run): set up, build and check the PTX, run every test.
#
# GPU tests self-skip without a CUDA device: cust::init fails with NoDevice on a machine without
# one (the Debian libcuda.so.1 from scripts/setup.sh loads there but finds no GPU), and those tests
# are reported as ignored; the reference, tiling, validation and PTX checks still run. Extra arguments go to
# `cargo test` (e.g. a test name filter, or `-- --nocapture`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"

cargo xtask build-ptx
# --release: the CPU reference property tests are far too slow unoptimized.
cargo test --workspace --release "$@"
# The candidate options of the kernels crate (`span-masks`): their CPU tests and host build.
cargo test -p flash-attn-kernels --release --features span-masks --lib "$@"

# The Python package: build the wheel (PTX embedded), install it into the venv, run its tests.
# Without torch and a GPU, the GPU tests report as skipped.
bash "$ROOT/python/build_wheel.sh"
"$ROOT/.cache/venv/bin/python" -m pytest -q -rs "$ROOT/python/tests"
