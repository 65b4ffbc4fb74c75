#!/usr/bin/env bash
# v28: call1.sh (tests, sanitizers) then call2.sh (speed) in one device call.
bash benches/results/2026-12-02-h200-v28/call1.sh
bash benches/results/2026-12-02-h200-v28/call2.sh
