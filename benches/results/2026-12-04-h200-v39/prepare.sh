#!/usr/bin/env bash
# Builds the carry for v39's call (run here, on the CPU machine, from the repository root):
# gpucarry/bundle.txz holds the `span-masks` build (its tests/gpu, bin/bench, PTX) and, as
# bin/bench_base, the default build's bench, so that one call A/Bs the two builds.
# Afterwards target/ptx holds the default build again. About 10 minutes on two cores.
set -euo pipefail
source .cache/env.sh
cargo xtask build-ptx
cargo xtask bundle > /dev/null
cp bundle/bin/bench /tmp/v39_bench_base
cargo xtask build-ptx --features span-masks
cargo xtask bundle > /dev/null
cp /tmp/v39_bench_base bundle/bin/bench_base
mkdir -p gpucarry
rm -f gpucarry/bundle.txz
tar cf - bundle | xz -T1 --lzma2=preset=6,dict=256MiB > gpucarry/bundle.txz
ls -l gpucarry/bundle.txz
cargo xtask build-ptx
