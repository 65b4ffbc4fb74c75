//! `cargo xtask bundle`: the GPU test and bench binaries (PTX embedded) plus the PTX files and a
//! script that runs them, in `bundle/`, for a GPU machine that has no Rust.

use crate::build_ptx::workspace_root;
use std::path::{Path, PathBuf};
use std::process::Command;

const RUN_SCRIPT: &str = r#"#!/usr/bin/env bash
# Runs the bundled GPU binaries. Usage: run.sh [tests|demo|bench|features|all] (default: all;
# `features`, issue 9's feature rows against FA4 and torch, is not part of `all`).
# Logs and JSON reports go to $OUT (or ./out beside this script).
set -u
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-$here/out}
mkdir -p "$out"
what=${1:-all}
export FLASH_ATTN_TEST_REPORT="$out/test-report.jsonl"
{ date -u +%FT%TZ; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; } | tee -a "$out/log.txt"
status=0
# Every step's output goes to the screen and to one log, so that few files come back.
run() { local name=$1; shift; echo "== $(date -u +%T) $name: $*" | tee -a "$out/log.txt"; "$@" 2>&1 | tee -a "$out/log.txt"; [ "${PIPESTATUS[0]}" -eq 0 ] || status=1; }
case $what in tests|all) for t in "$here"/tests/*; do run "test-$(basename "$t")" "$t"; done ;; esac
case $what in demo|all) run demo "$here/bin/demo" ;; esac
case $what in bench|all)
  # SM clock, power and throttle reasons beside both timings: the card runs at its power cap here.
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > "$out/clocks.csv" &
  sampler=$!
  run bench "$here/bin/bench" --out "$out/ours.jsonl"
  run torch-anchors python3 "$here/torch_anchors.py" --out "$out/torch.jsonl"
  echo "== $(date -u +%T) timings done" | tee -a "$out/log.txt"
  kill $sampler
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  run report python3 "$here/report.py" "$out/ours.jsonl" "$out/torch.jsonl" --date "$(date -u +%F)" \
      --driver "$driver" --out "$out/results.jsonl" --plot "$out/plot.png" --table "$out/table.md" ;;
esac
case $what in features)
  # FA4 comes from the kit that ../shared/anchors/fa4/prepare.sh stages into /tmp/fa4; without it
  # the anchors script still measures the torch rows.
  nvidia-smi --query-gpu=timestamp,clocks.sm,power.draw,clocks_event_reasons.active --format=csv -lms 250 > "$out/clocks_features.csv" &
  sampler=$!
  run features "$here/bin/bench" --features all --out "$out/ours_features.jsonl"
  if [ -f /tmp/fa4/env.sh ]; then source /tmp/fa4/env.sh; else echo "no /tmp/fa4/env.sh: FA4 not staged" | tee -a "$out/log.txt"; fi
  run feature-anchors python3 "$here/feature_anchors.py" --out "$out/fa4_features.jsonl" --seqlens 4096,16384
  kill $sampler
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  run feature-report python3 "$here/feature_report.py" "$out/ours_features.jsonl" "$out/fa4_features.jsonl" \
      --date "$(date -u +%F)" --driver "$driver" --out "$out/features.jsonl" --table "$out/features.md"
  run feature-plot python3 "$here/feature_plot.py" "$out/features.jsonl" --out "$out/features.png" ;;
esac
exit $status
"#;

fn executables(root: &Path, args: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let output = Command::new("cargo")
        .current_dir(root)
        .args(args)
        .args(["--release", "--message-format=json"])
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        return Err(format!("cargo {args:?} failed:\n{}", String::from_utf8_lossy(&output.stderr)));
    }
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Some(exe) = json_string(line, "\"executable\":\"") else { continue };
        let name = json_string(line, "\"name\":\"").unwrap_or_default();
        found.push((name, PathBuf::from(exe)));
    }
    Ok(found)
}

/// The string value after `key` in one line of cargo's JSON (paths and names hold no quotes).
fn json_string(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let end = line[start..].find('"')?;
    Some(line[start..start + end].to_string())
}

pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("bundle takes no arguments (got {args:?})"));
    }
    let root = workspace_root();
    let bundle = root.join("bundle");
    let _ = std::fs::remove_dir_all(&bundle);
    for dir in ["tests", "bin", "ptx"] {
        std::fs::create_dir_all(bundle.join(dir)).map_err(|e| e.to_string())?;
    }
    let copy = |from: &Path, to: PathBuf| -> Result<(), String> {
        std::fs::copy(from, &to).map_err(|e| format!("copy {}: {e}", from.display()))?;
        println!("bundled {}", to.strip_prefix(&root).unwrap_or(&to).display());
        Ok(())
    };
    for (name, exe) in executables(&root, &["test", "-p", "flash-attn-tests", "--test", "gpu", "--no-run"])? {
        copy(&exe, bundle.join("tests").join(name))?;
    }
    for (name, exe) in executables(&root, &["build", "-p", "flash-attn-benches", "--bins"])? {
        copy(&exe, bundle.join("bin").join(name))?;
    }
    // Only the arches build-ptx makes now: stale files of a renamed arch may linger in target/.
    for arch in crate::build_ptx::ARCHES {
        for name in [format!("flash_attn.{arch}.ptx"), flash_attn_kernels::fingerprint::file_name(arch)] {
            copy(&root.join("target/ptx").join(&name), bundle.join("ptx").join(&name))?;
        }
    }
    // A measurement build's features travel with it (the binaries above embed that PTX).
    let features = root.join("target/ptx").join(crate::build_ptx::FEATURES_FILE);
    if features.exists() {
        copy(&features, bundle.join("ptx").join(crate::build_ptx::FEATURES_FILE))?;
    }
    for script in [
        "torch_anchors.py",
        "report.py",
        "feature_anchors.py",
        "feature_report.py",
        "feature_plot.py",
        "profile.sh",
        "ab.sh",
        "check.sh",
        "check_features.sh",
        "check_serving.sh",
        "serving_anchors.py",
        "serving_replay.py",
        "serving_report.py",
        "ncu_ab.sh",
        "decode_ncu.sh",
        "grid.sh",
        "check_opt_in.sh",
    ] {
        copy(&root.join("benches").join(script), bundle.join(script))?;
    }
    let script = bundle.join("run.sh");
    std::fs::write(&script, RUN_SCRIPT).map_err(|e| e.to_string())?;
    Command::new("chmod").arg("+x").arg(&script).status().map_err(|e| e.to_string())?;
    println!("bundle ready: carry `bundle` and run `bash bundle/run.sh` on the GPU machine");
    Ok(())
}
