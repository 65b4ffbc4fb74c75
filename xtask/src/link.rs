//! Our own linker for `nvptx64-nvidia-cuda`.
//!
//! rustc's nvptx target uses the `llbc` linker flavour: it hands the linker the crate's bitcode
//! objects and rlibs plus `--export-symbol NAME` for every kernel, and expects PTX at `-o`. The
//! default linker for that flavour is not distributed for our toolchain, so this module does the
//! same job with the LLVM tools that ship in rustup's `llvm-tools` component:
//! `llvm-link` merges the bitcode, `opt` internalizes everything but the kernels and optimizes,
//! `llc` lowers to PTX for the requested `--target-cpu`. A last pass adds the `.maxntid` /
//! `.minnctapersm` directives that the registry asks for (Rust has no attribute for them).
//!
//! `build-ptx` makes the xtask binary the target's linker and sets `FLASH_ATTN_XTASK_LINKER` in
//! the nested cargo's environment, so that `main` dispatches here. Two flags carry weight: opt's
//! raised unroll threshold, without which the kernels' tile loops stay rolled and their register
//! arrays go to local memory (the ptxas check would then fail on spills), and llc's PTX ISA 8.1
//! (`+ptx81`), for the sm_90 vector reductions. This file is an input of the kernels' fingerprint.

use flash_attn_kernels::registry;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set by `build-ptx` in the environment of the nested cargo, so that this binary acts as linker.
pub const LINKER_MODE_ENV: &str = "FLASH_ATTN_XTASK_LINKER";
/// PTX ISA version passed to llc: 8.1 adds the vector reductions (`red.global.add.v2.f32`) the
/// sm_90 backward uses; CUDA 12.1 and newer drivers load it.
const PTX_FEATURES: &str = "+ptx81";
/// Full-unroll budget for opt (see the call below).
const UNROLL_THRESHOLD: &str = "-unroll-threshold=100000";

struct LinkRequest {
    inputs: Vec<PathBuf>,
    exports: Vec<String>,
    output: PathBuf,
    target_cpu: String,
}

fn parse(args: Vec<String>) -> Result<LinkRequest, String> {
    let mut inputs = Vec::new();
    let mut exports = Vec::new();
    let mut output = None;
    let mut target_cpu = None;
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--export-symbol" => exports.push(it.next().ok_or("--export-symbol needs a value")?),
            "-o" => output = Some(PathBuf::from(it.next().ok_or("-o needs a value")?)),
            "--target-cpu" => target_cpu = Some(it.next().ok_or("--target-cpu needs a value")?),
            "--target" | "-L" => {
                it.next();
            }
            "-O0" | "-O1" | "-O2" | "-O3" | "-Os" | "-Oz" | "--debug" => {}
            other if other.starts_with('-') => {
                return Err(format!("linker: unexpected flag {other}"));
            }
            path => inputs.push(PathBuf::from(path)),
        }
    }
    Ok(LinkRequest {
        inputs,
        exports,
        output: output.ok_or("linker: no -o given")?,
        target_cpu: target_cpu.unwrap_or_else(|| "sm_80".to_string()),
    })
}

pub fn llvm_tool(name: &str) -> Result<PathBuf, String> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .map_err(|e| format!("cannot run rustc --print sysroot: {e}"))?;
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_string();
    let host = Command::new("rustc")
        .args(["--print", "host-tuple"])
        .output()
        .map_err(|e| format!("cannot run rustc --print host-tuple: {e}"))?;
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    let path = Path::new(&sysroot).join("lib/rustlib").join(host).join("bin").join(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found: install the llvm-tools component (`rustup component add llvm-tools`)",
            path.display()
        ))
    }
}

fn run_tool(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let status = Command::new(tool).args(args).status().map_err(|e| format!("cannot start {}: {e}", tool.display()))?;
    if status.success() { Ok(()) } else { Err(format!("{} failed with {status}", tool.display())) }
}

pub fn run(args: Vec<String>) -> Result<(), String> {
    let request = parse(args)?;
    if request.exports.is_empty() {
        return Err("linker: no --export-symbol given, nothing would survive".into());
    }
    let work = request.output.with_extension("linkwork");
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let merged = work.join("merged.bc");
    let optimized = work.join("optimized.bc");

    // rlibs are archives whose members are bitcode; llvm-link reads only the objects, so pull
    // the bitcode out of each archive with llvm-ar first. With fat LTO rustc has already merged
    // core into the crate's own object, but we still accept rlibs for non-LTO builds.
    let mut bitcode = Vec::new();
    for (index, input) in request.inputs.iter().enumerate() {
        if input.extension().is_some_and(|e| e == "rlib") {
            let dir = work.join(format!("rlib{index}"));
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let status = Command::new(llvm_tool("llvm-ar")?)
                .arg("x")
                .arg(std::fs::canonicalize(input).map_err(|e| e.to_string())?)
                .current_dir(&dir)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("llvm-ar x {} failed", input.display()));
            }
            for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
                let path = entry.map_err(|e| e.to_string())?.path();
                let bytes = std::fs::read(&path).map_err(|e| e.to_string())?;
                if bytes.starts_with(b"BC\xC0\xDE") {
                    bitcode.push(path);
                }
            }
        } else {
            bitcode.push(input.clone());
        }
    }

    let mut link_args: Vec<&std::ffi::OsStr> = bitcode.iter().map(|p| p.as_os_str()).collect();
    link_args.push("-o".as_ref());
    link_args.push(merged.as_os_str());
    run_tool(&llvm_tool("llvm-link")?, &link_args)?;

    let keep = format!("-internalize-public-api-list={}", request.exports.join(","));
    run_tool(
        &llvm_tool("opt")?,
        &[
            "-passes=internalize,globaldce,default<O3>".as_ref(),
            // Register arrays (fragments, accumulators) stay in registers only if every loop
            // that indexes them is fully unrolled; the default threshold gives up on the
            // kernels' tile loops and leaves the arrays in local memory.
            UNROLL_THRESHOLD.as_ref(),
            keep.as_ref(),
            merged.as_os_str(),
            "-o".as_ref(),
            optimized.as_os_str(),
        ],
    )?;

    let cpu = format!("-mcpu={}", request.target_cpu);
    let attr = format!("-mattr={PTX_FEATURES}");
    run_tool(
        &llvm_tool("llc")?,
        &[
            "-mtriple=nvptx64-nvidia-cuda".as_ref(),
            cpu.as_ref(),
            attr.as_ref(),
            "-O3".as_ref(),
            optimized.as_os_str(),
            "-o".as_ref(),
            request.output.as_os_str(),
        ],
    )?;
    let _ = std::fs::remove_dir_all(&work);
    add_occupancy_directives(&request.output)
}

/// Rust has no attribute for PTX's per-entry performance directives, so the link step adds them:
/// for a kernel the registry wants resident `min_blocks_per_sm` times per SM, `.maxntid` and
/// `.minnctapersm` let ptxas budget registers for that occupancy (and `build-ptx` then fails if
/// that budget spills). Kernels of more than 256 threads get them too: without them ptxas may use
/// 255 registers a thread, which such a block could not launch with (the warp-specialized
/// kernels then move registers between warpgroups with `setmaxnreg`).
fn add_occupancy_directives(ptx: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(ptx).map_err(|e| e.to_string())?;
    let mut out = String::with_capacity(text.len() + 1024);
    let mut pending: Option<String> = None;
    for line in text.lines() {
        if let Some(name) = line.strip_prefix(".visible .entry ").and_then(|l| l.strip_suffix('(')) {
            pending = registry::by_name(name)
                .filter(|k| k.min_blocks_per_sm > 1 || k.threads > 256)
                .map(|k| format!(".maxntid {}, 1, 1\n.minnctapersm {}\n", k.threads, k.min_blocks_per_sm));
        }
        out.push_str(line);
        out.push('\n');
        if line.starts_with(')')
            && let Some(directives) = pending.take()
        {
            out.push_str(&directives);
        }
    }
    std::fs::write(ptx, out).map_err(|e| e.to_string())
}
