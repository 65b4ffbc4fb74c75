//! `cargo xtask build-ptx`: kernels crate → bitcode → (our linker) → PTX → ptxas check.
//!
//! For each arch (`sm_80`, `sm_90a`, or `--arch`): `cargo rustc --release -p flash-attn-kernels
//! --crate-type cdylib --target nvptx64-nvidia-cuda -Zbuild-std=core` into
//! `target/ptx-build/<arch>/` (fat LTO, one codegen unit, `opt-level=3`, `panic=abort`,
//! `-Ctarget-cpu=<arch>`) with this binary as the linker ([`link`]), the result copied to
//! `target/ptx/flash_attn.<arch>.ptx`, then the ptxas check ([`ptxas`]), which also writes the
//! assembled `flash_attn.<arch>.cubin` beside it. `--features LIST` passes the kernels crate's
//! options (a candidate build, measured against the default) and names them in
//! `target/ptx/flash_attn.features`, which `host/build.rs` warns about; a default build removes it. The arch's fingerprint is
//! removed first and written only after every check passed, and only if no input changed during
//! the build, so `host/build.rs` never embeds PTX that is stale or failed its checks. This file is
//! an input of the fingerprint.

use crate::{link, ptxas};
use flash_attn_kernels::fingerprint;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const ARCHES: [&str; 2] = ["sm_80", "sm_90a"];
/// Beside the PTX: the kernels crate's features it was built with, if any.
pub const FEATURES_FILE: &str = "flash_attn.features";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

pub fn run(args: &[String]) -> Result<(), String> {
    let mut arches: Vec<&str> = ARCHES.to_vec();
    let mut features: Option<String> = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--arch" => {
                let value = it.next().ok_or("--arch needs sm_80, sm_90a or all")?;
                arches = match value.as_str() {
                    "all" => ARCHES.to_vec(),
                    a if ARCHES.contains(&a) => vec![ARCHES[ARCHES.iter().position(|x| *x == a).unwrap()]],
                    other => return Err(format!("--arch {other}: expected sm_80, sm_90a or all")),
                };
            }
            // The kernels crate's options (`span-masks`): a build for measuring a candidate
            // against the default; its PTX goes where the default's does.
            "--features" => features = Some(it.next().ok_or("--features needs a list, e.g. span-masks")?.clone()),
            other => return Err(format!("build-ptx: unknown argument {other}")),
        }
    }
    let root = workspace_root();
    let out_dir = root.join("target/ptx");
    std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
    let before = fingerprint::of_workspace(&root).map_err(|e| e.to_string())?;

    let mut reports = Vec::new();
    for arch in &arches {
        // Forget the old record first: if anything below fails, this arch reads as stale.
        let _ = std::fs::remove_file(out_dir.join(fingerprint::file_name(arch)));
        let _ = std::fs::remove_file(out_dir.join(format!("flash_attn.{arch}.cubin")));
        let ptx = build_one(&root, arch, features.as_deref())?;
        let dest = out_dir.join(format!("flash_attn.{arch}.ptx"));
        std::fs::copy(&ptx, &dest).map_err(|e| format!("copy {}: {e}", ptx.display()))?;
        println!("wrote {}", dest.display());
        reports.push((arch.to_string(), dest));
    }
    ptxas::check(&root, &reports)?;
    // Each PTX is stamped with the fingerprint of the sources it was built from, only once it
    // passed ptxas, and only if no input changed while it was being built.
    let after = fingerprint::of_workspace(&root).map_err(|e| e.to_string())?;
    if after != before {
        return Err("the kernel sources changed during the build: run `cargo xtask build-ptx` again".into());
    }
    for arch in &arches {
        std::fs::write(out_dir.join(fingerprint::file_name(arch)), format!("{before:016x}\n"))
            .map_err(|e| e.to_string())?;
    }
    let features_file = out_dir.join(FEATURES_FILE);
    match &features {
        Some(list) => std::fs::write(&features_file, format!("{list}\n")).map_err(|e| e.to_string())?,
        None => {
            let _ = std::fs::remove_file(&features_file);
        }
    }
    Ok(())
}

fn build_one(root: &Path, arch: &str, features: Option<&str>) -> Result<PathBuf, String> {
    let target_dir = root.join("target/ptx-build").join(arch);
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    // Cargo relinks only when the crate changes, not when our linker (this binary) does: remove
    // the previous link outputs so that every build-ptx runs the current link step.
    remove_link_outputs(&target_dir.join("nvptx64-nvidia-cuda"));
    let status = Command::new("cargo")
        .current_dir(root)
        .env(link::LINKER_MODE_ENV, "1")
        .env("CARGO_TARGET_NVPTX64_NVIDIA_CUDA_LINKER", &me)
        .env_remove("RUSTFLAGS")
        .args([
            "rustc",
            "--release",
            "--package",
            "flash-attn-kernels",
            "--lib",
            "--crate-type",
            "cdylib",
            "--target",
            "nvptx64-nvidia-cuda",
            "-Zbuild-std=core",
        ])
        .args(features.into_iter().flat_map(|f| ["--features", f]))
        .arg("--target-dir")
        .arg(&target_dir)
        .args([
            "--config",
            "profile.release.lto=\"fat\"",
            "--config",
            "profile.release.codegen-units=1",
            "--config",
            "profile.release.opt-level=3",
            "--config",
            "profile.release.panic=\"abort\"",
            "--config",
        ])
        .arg(format!("target.nvptx64-nvidia-cuda.rustflags=[\"-Ctarget-cpu={arch}\"]"))
        .status()
        .map_err(|e| format!("cannot start cargo: {e}"))?;
    if !status.success() {
        return Err(format!("kernel build for {arch} failed ({status})"));
    }
    let ptx = target_dir.join("nvptx64-nvidia-cuda/release/flash_attn_kernels.ptx");
    if !ptx.exists() {
        return Err(format!("expected PTX at {}", ptx.display()));
    }
    Ok(ptx)
}

/// Delete every `flash_attn_kernels*.ptx` under `dir` (cargo keeps hard-linked copies in
/// several places and restores the uplifted one from the others).
fn remove_link_outputs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            remove_link_outputs(&path);
        } else {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.starts_with("flash_attn_kernels") && name.ends_with(".ptx") {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}
