//! Assemble PTX with ptxas and report per-kernel resources; spills and stack frames fail.

use flash_attn_kernels::registry::KERNELS;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the set-up script installs PyPI's nvidia-cuda-nvcc-cu12 (see scripts/setup.sh).
const CACHED_PTXAS: &str = ".cache/nvcc/nvidia/cuda_nvcc/bin/ptxas";

pub fn find_ptxas(root: &Path) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("PTXAS") {
        return Ok(PathBuf::from(path));
    }
    let cached = root.join(CACHED_PTXAS);
    if cached.exists() {
        return Ok(cached);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if dir.join("ptxas").exists() {
            return Ok(dir.join("ptxas"));
        }
    }
    Err(format!(
        "ptxas not found: run scripts/setup.sh (installs it under {CACHED_PTXAS}) or set PTXAS"
    ))
}

#[derive(Default, Debug)]
struct Resources {
    registers: u32,
    static_smem: u32,
    stack: u32,
    spill_stores: u32,
    spill_loads: u32,
}

fn number_before(line: &str, unit: &str) -> Option<u32> {
    let at = line.find(unit)?;
    line[..at].split_whitespace().last()?.parse().ok()
}

fn parse(report: &str) -> Vec<(String, Resources)> {
    let mut out: Vec<(String, Resources)> = Vec::new();
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push((name, Resources::default()));
            continue;
        }
        let Some((_, current)) = out.last_mut() else { continue };
        if line.contains("bytes stack frame") {
            current.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            current.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            current.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            current.registers = number_before(line, "registers").unwrap_or(0);
            current.static_smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

pub fn check(root: &Path, ptx_files: &[(String, PathBuf)]) -> Result<(), String> {
    let ptxas = find_ptxas(root)?;
    let mut failures = Vec::new();
    println!(
        "{:<34} {:>6} {:>5} {:>11} {:>12} {:>6} {:>13}",
        "kernel", "arch", "regs", "smem static", "smem dynamic", "stack", "spill st/ld"
    );
    for (arch, ptx) in ptx_files {
        let output = Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg(ptx)
            .args(["-o", "/dev/null"])
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            return Err(format!("ptxas rejected {}:\n{text}", ptx.display()));
        }
        let ptx_text = std::fs::read_to_string(ptx).map_err(|e| e.to_string())?;
        for info in KERNELS {
            let declared = format!(".param .align 8 .b8 {}_param_0[{}]", info.name, info.param_bytes);
            if !ptx_text.contains(&declared) {
                failures.push(format!(
                    "{arch}: {} does not take exactly one {}-byte parameter block (expected `{declared}`)",
                    info.name, info.param_bytes
                ));
            }
        }
        let parsed = parse(&text);
        for info in KERNELS {
            if !parsed.iter().any(|(name, _)| name == info.name) {
                failures.push(format!("{}: kernel {} missing from the PTX", arch, info.name));
            }
        }
        for (name, r) in parsed {
            let dynamic = KERNELS
                .iter()
                .find(|k| k.name == name)
                .map(|k| k.dynamic_smem_bytes.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<34} {:>6} {:>5} {:>11} {:>12} {:>6} {:>6}/{:<6}",
                name, arch, r.registers, r.static_smem, dynamic, r.stack, r.spill_stores, r.spill_loads
            );
            if r.stack > 0 || r.spill_stores > 0 || r.spill_loads > 0 {
                failures.push(format!(
                    "{name} ({arch}): {} bytes stack frame, {} / {} bytes spilled",
                    r.stack, r.spill_stores, r.spill_loads
                ));
            }
        }
    }
    if failures.is_empty() {
        println!("ptxas: every kernel assembled with no spill and no stack frame");
        Ok(())
    } else {
        Err(format!("ptxas check failed:\n  {}", failures.join("\n  ")))
    }
}
