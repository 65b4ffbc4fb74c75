//! Assemble PTX with ptxas and report per-kernel resources. The assembled image is kept beside the
//! PTX (`flash_attn.<arch>.cubin`) and embedded by `host/build.rs`, so loading the module on a
//! matching GPU skips the driver's JIT compile (about 45 s for the sm_90a PTX). Spills and stack frames (beyond a
//! small budget for the `_mods` kernels; opt-in candidates' spills are only reported), leftover
//! `.func` calls, missing registry kernels, parameter blocks of the wrong size, `wgmma`
//! register hazards ([`crate::wgmma_check`]) and mbarrier / named-barrier / `setmaxnreg` misuse
//! ([`crate::barrier_check`]) fail the build.

use flash_attn_kernels::registry::{self, KERNELS};
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
    Err(format!("ptxas not found: run scripts/setup.sh (installs it under {CACHED_PTXAS}) or set PTXAS"))
}

#[derive(Default, Debug, PartialEq)]
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

/// Resources of each entry function. ptxas prints "Function properties for NAME" for entries
/// and for the device functions they call; only the entries' own lines count here.
fn parse(report: &str) -> Vec<(String, Resources)> {
    let mut out: Vec<(String, Resources)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let name = rest.split('\'').next().unwrap_or_default().to_string();
            out.push((name, Resources::default()));
            current = None;
            continue;
        }
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            let name = rest.trim();
            current = out.iter().position(|(n, _)| n == name);
            continue;
        }
        let Some(index) = current.or_else(|| out.len().checked_sub(1)) else { continue };
        let resources = &mut out[index].1;
        if line.contains("bytes stack frame") && current.is_some() {
            resources.stack = number_before(line, "bytes stack frame").unwrap_or(0);
            resources.spill_stores = number_before(line, "bytes spill stores").unwrap_or(0);
            resources.spill_loads = number_before(line, "bytes spill loads").unwrap_or(0);
        }
        if line.contains("Used") && line.contains("registers") {
            resources.registers = number_before(line, "registers").unwrap_or(0);
            resources.static_smem = number_before(line, "bytes smem").unwrap_or(0);
        }
    }
    out
}

/// The kernels for which ptxas reports serialized warpgroup GEMMs: its C7514 note ("wgmma.mma_async
/// instructions are serialized due to ...") names the function last, in single quotes.
fn serialized_wgmma(report: &str) -> Vec<String> {
    report.lines().filter(|l| l.contains("(C7514)")).filter_map(|l| l.rsplit('\'').nth(1).map(str::to_string)).collect()
}

/// Largest spill stack frame a `_mods` kernel may have (the dense kernels may have none).
const MODS_STACK_BUDGET: u32 = 256;

pub fn check(root: &Path, ptx_files: &[(String, PathBuf)]) -> Result<(), String> {
    let ptxas = find_ptxas(root)?;
    let mut failures = Vec::new();
    let mut mods_spills = Vec::new();
    let mut candidate_spills = Vec::new();
    let mut candidate_serialized = Vec::new();
    println!(
        "{:<34} {:>6} {:>5} {:>11} {:>12} {:>6} {:>13}",
        "kernel", "arch", "regs", "smem static", "smem dynamic", "stack", "spill st/ld"
    );
    for (arch, ptx) in ptx_files {
        let output = Command::new(&ptxas)
            .arg(format!("-arch={arch}"))
            .arg("-v")
            .arg(ptx)
            .arg("-o")
            .arg(ptx.with_extension("cubin"))
            .output()
            .map_err(|e| format!("cannot run {}: {e}", ptxas.display()))?;
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        if !output.status.success() {
            return Err(format!("ptxas rejected {}:\n{text}", ptx.display()));
        }
        let ptx_text = std::fs::read_to_string(ptx).map_err(|e| e.to_string())?;
        for info in registry::in_ptx_for(arch) {
            let declared = format!(".param .align 8 .b8 {}_param_0[{}]", info.name, info.param_bytes);
            if !ptx_text.contains(&declared) {
                failures.push(format!(
                    "{arch}: {} does not take exactly one {}-byte parameter block (expected `{declared}`)",
                    info.name, info.param_bytes
                ));
            }
        }
        failures.extend(crate::wgmma_check::check(arch, &ptx_text));
        // ptxas serializes a kernel's warpgroup GEMMs (waits after every one) when it finds a
        // non-wgmma instruction on an accumulator inside a pipeline stage, which undoes the
        // issue-only forms' overlap: fatal for the kernels picked by default.
        for name in serialized_wgmma(&text) {
            if KERNELS.iter().any(|k| k.name == name && k.opt_in) {
                candidate_serialized.push(format!("{name} ({arch})"));
            } else {
                failures.push(format!("{name} ({arch}): ptxas serialized its wgmma (C7514)"));
            }
        }
        failures.extend(crate::barrier_check::check(arch, &ptx_text));
        let parsed = parse(&text);
        // A call that survived optimization (a panic path, an outlined helper) costs a stack
        // frame and registers on every path; the kernels are meant to be fully inlined.
        if ptx_text.contains(".func ") {
            failures.push(format!(
                "{arch}: the PTX still contains device functions (calls): {}",
                ptx_text.lines().filter(|l| l.starts_with(".func ")).collect::<Vec<_>>().join(", ")
            ));
        }
        for info in registry::in_ptx_for(arch) {
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
            // The `_mods` and `_seq` twins (a sequence's resolved layout in registers too).
            let modifiers = KERNELS.iter().any(|k| k.name == name && (k.modifiers || k.sequences));
            // Opt-in candidates are measured, never picked by default: their spills are reported
            // beside the speed they cost, and a kernel must lose them before it becomes a default.
            let candidate = KERNELS.iter().any(|k| k.name == name && k.opt_in);
            if candidate && r.stack > 0 {
                candidate_spills.push(format!(
                    "{name} ({arch}): {} bytes stack, {} / {} bytes spilled",
                    r.stack, r.spill_stores, r.spill_loads
                ));
            } else if modifiers && r.stack <= MODS_STACK_BUDGET {
                // The `_mods` kernels carry every modifier's registers at once; a small spill
                // there costs only the calls that use a modifier (reported, not fatal).
                if r.stack > 0 {
                    mods_spills.push(format!("{name} ({arch}): {} bytes", r.stack));
                }
            } else if r.stack > 0 || r.spill_stores > 0 || r.spill_loads > 0 {
                failures.push(format!(
                    "{name} ({arch}): {} bytes stack frame, {} / {} bytes spilled",
                    r.stack, r.spill_stores, r.spill_loads
                ));
            }
        }
    }
    if !candidate_spills.is_empty() {
        println!("ptxas: opt-in candidates with spills (not shipped as defaults): {}", candidate_spills.join(", "));
    }
    if !candidate_serialized.is_empty() {
        println!("ptxas: opt-in candidates whose wgmma ptxas serialized (C7514): {}", candidate_serialized.join(", "));
    }
    if !mods_spills.is_empty() {
        println!(
            "ptxas: `_mods` / `_seq` kernels with a spill stack frame (budget {MODS_STACK_BUDGET} bytes): {}",
            mods_spills.join(", ")
        );
    }
    if failures.is_empty() {
        println!(
            "ptxas: every dense kernel assembled with no spill and no stack frame; no instruction touches an in-flight wgmma register"
        );
        Ok(())
    } else {
        Err(format!("ptxas check failed:\n  {}", failures.join("\n  ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialized_wgmma_notes_name_their_kernel() {
        let report = "ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are \
            serialized due to non wgmma instructions reading accumulator registers of  a wgmma between start \
            and end of the pipeline stage in the function 'flash_bwd_x'\n\
            ptxas info    : Compiling entry function 'flash_bwd_y' for 'sm_90a'\n";
        assert_eq!(serialized_wgmma(report), vec!["flash_bwd_x".to_string()]);
        assert!(serialized_wgmma("ptxas info    : Used 255 registers").is_empty());
    }

    #[test]
    fn callee_properties_do_not_hide_the_entry_stack_frame() {
        let report = "ptxas info    : Compiling entry function 'k' for 'sm_90'
ptxas info    : Function properties for k
    784 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 126 registers, used 1 barriers, 784 bytes cumulative stack size
ptxas info    : Function properties for panic_fmt
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
";
        let parsed = parse(report);
        assert_eq!(parsed.len(), 1);
        assert_eq!(
            parsed[0].1,
            Resources { registers: 126, static_smem: 0, stack: 784, spill_stores: 8, spill_loads: 4 }
        );
    }
}
