//! Embeds the PTX that `cargo xtask build-ptx` wrote, but only if it was built from the kernel
//! sources as they are now. Otherwise the library still builds (so CPU-only machines can run the
//! reference and validation tests) and `FlashAttention::new` reports what to run.

use std::path::{Path, PathBuf};

const ARCHES: [&str; 2] = ["sm_80", "sm_90"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let kernels = root.join("kernels");
    let ptx_dir = std::env::var_os("FLASH_ATTN_PTX_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target/ptx"));
    println!("cargo:rerun-if-env-changed=FLASH_ATTN_PTX_DIR");
    println!("cargo:rerun-if-changed={}", kernels.join("src").display());
    println!("cargo:rerun-if-changed={}", kernels.join("Cargo.toml").display());
    println!("cargo:rerun-if-changed={}", ptx_dir.join("fingerprint").display());
    for arch in ARCHES {
        println!("cargo:rerun-if-changed={}", ptx_dir.join(format!("flash_attn.{arch}.ptx")).display());
    }

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let status = match check(&kernels, &ptx_dir) {
        Ok(()) => "None".to_string(),
        Err(reason) => {
            println!("cargo:warning=flash-attn: {reason}; GPU entry points will return Error::PtxUnavailable");
            format!("Some({reason:?})")
        }
    };
    for arch in ARCHES {
        let source = ptx_dir.join(format!("flash_attn.{arch}.ptx"));
        let text = if status == "None" { std::fs::read_to_string(&source).unwrap() } else { String::new() };
        std::fs::write(out.join(format!("flash_attn.{arch}.ptx")), text).unwrap();
    }
    std::fs::write(
        out.join("ptx_status.rs"),
        format!("/// Why the embedded PTX is unusable, if it is.\npub const PTX_PROBLEM: Option<&str> = {status};\n"),
    )
    .unwrap();
}

fn check(kernels: &Path, ptx_dir: &Path) -> Result<(), String> {
    let expected = flash_attn_kernels::fingerprint::of_directory(kernels)
        .map_err(|e| format!("cannot read the kernel sources: {e}"))?;
    let recorded = std::fs::read_to_string(ptx_dir.join("fingerprint"))
        .map_err(|_| format!("no PTX in {}: run `cargo xtask build-ptx`", ptx_dir.display()))?;
    if recorded.trim() != format!("{expected:016x}") {
        return Err("the PTX is older than the kernel sources: run `cargo xtask build-ptx`".into());
    }
    for arch in ARCHES {
        if !ptx_dir.join(format!("flash_attn.{arch}.ptx")).exists() {
            return Err(format!("no {arch} PTX: run `cargo xtask build-ptx`"));
        }
    }
    Ok(())
}
