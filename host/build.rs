//! Embeds the PTX that `cargo xtask build-ptx` wrote, each arch only if it was built from the
//! sources as they are now (see `flash_attn_kernels::fingerprint`), and beside it the cubin that
//! build-ptx's ptxas check assembled from that PTX (empty if there is none). Otherwise the library still
//! builds (so CPU-only machines can run the reference and validation tests) and
//! `FlashAttention::new` reports what to run.

use flash_attn_kernels::fingerprint;
use std::path::{Path, PathBuf};

const ARCHES: [&str; 2] = ["sm_80", "sm_90a"];

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let ptx_dir = std::env::var_os("FLASH_ATTN_PTX_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target/ptx"));
    println!("cargo:rerun-if-env-changed=FLASH_ATTN_PTX_DIR");
    println!("cargo:rerun-if-changed={}", root.join("kernels/src").display());
    for file in fingerprint::inputs(root).unwrap_or_default() {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let current = fingerprint::of_workspace(root).map_err(|e| format!("cannot read the kernel sources: {e}"));

    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let mut status = String::from("/// Why each arch's embedded PTX is unusable, if it is.\n");
    for arch in ARCHES {
        println!("cargo:rerun-if-changed={}", ptx_dir.join(format!("flash_attn.{arch}.ptx")).display());
        println!("cargo:rerun-if-changed={}", ptx_dir.join(fingerprint::file_name(arch)).display());
        let cubin_path = ptx_dir.join(format!("flash_attn.{arch}.cubin"));
        println!("cargo:rerun-if-changed={}", cubin_path.display());
        let (text, cubin, problem) = match check(&current, &ptx_dir, arch) {
            // The fingerprint is written only after ptxas assembled this PTX into the cubin, so a
            // current fingerprint vouches for both.
            Ok(text) => (text, std::fs::read(&cubin_path).unwrap_or_default(), "None".to_string()),
            Err(reason) => {
                println!(
                    "cargo:warning=flash-attn: {reason}; on such GPUs `FlashAttention::new` returns Error::PtxUnavailable"
                );
                (String::new(), Vec::new(), format!("Some({reason:?})"))
            }
        };
        std::fs::write(out.join(format!("flash_attn.{arch}.ptx")), text).unwrap();
        std::fs::write(out.join(format!("flash_attn.{arch}.cubin")), cubin).unwrap();
        status += &format!("pub const {}_PROBLEM: Option<&str> = {problem};\n", arch.to_uppercase());
    }
    // A measurement build (`cargo xtask build-ptx --features ...`) embeds as any other; say so.
    // (Watched through the directory: a missing file named by rerun-if-changed would rerun this
    // script on every build.)
    let features = ptx_dir.join("flash_attn.features");
    println!("cargo:rerun-if-changed={}", ptx_dir.display());
    if let Ok(list) = std::fs::read_to_string(&features) {
        println!("cargo:warning=flash-attn: the embedded PTX was built with --features {}", list.trim());
    }
    std::fs::write(out.join("ptx_status.rs"), status).unwrap();
}

fn check(current: &Result<u64, String>, ptx_dir: &Path, arch: &str) -> Result<String, String> {
    let current = current.clone()?;
    let recorded = std::fs::read_to_string(ptx_dir.join(fingerprint::file_name(arch)))
        .map_err(|_| format!("no checked {arch} PTX in {}: run `cargo xtask build-ptx`", ptx_dir.display()))?;
    if recorded.trim() != format!("{current:016x}") {
        return Err(format!("the {arch} PTX is older than the kernel sources: run `cargo xtask build-ptx`"));
    }
    std::fs::read_to_string(ptx_dir.join(format!("flash_attn.{arch}.ptx")))
        .map_err(|e| format!("cannot read the {arch} PTX: {e}: run `cargo xtask build-ptx`"))
}
