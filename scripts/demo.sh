#!/usr/bin/env bash
# Build the PTX and run the demo (benches/, binary `demo`); arguments go to the demo.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=scripts/setup.sh
source "$ROOT/scripts/setup.sh"

cargo xtask build-ptx
cargo run --release -p flash-attn-benches --bin demo -- "$@"
