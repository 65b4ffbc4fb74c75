//! A fingerprint of the kernel sources, so that the host never loads PTX built from older code.
//!
//! `cargo xtask build-ptx` writes the fingerprint beside the PTX; the host's build script computes
//! it again and embeds the PTX only when both agree.

use std::path::Path;
use std::vec::Vec;

/// FNV-1a, 64 bit: tiny, dependency-free and plenty to tell one source tree from another.
pub fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// Every file of the workspace at `root` that shapes the PTX: the kernel crate (src/** and its
/// manifest), the workspace manifest and toolchain pin (profile, compiler), and the xtask code
/// that compiles and links it (flags of rustc, opt and llc). Sorted, so the order is stable.
pub fn inputs(root: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    collect(&root.join("kernels/src"), &mut files)?;
    for file in
        ["kernels/Cargo.toml", "Cargo.toml", "rust-toolchain.toml", "xtask/src/build_ptx.rs", "xtask/src/link.rs"]
    {
        files.push(root.join(file));
    }
    files.sort();
    Ok(files)
}

/// Hash of [`inputs`], by path relative to `root` and content.
pub fn of_workspace(root: &Path) -> std::io::Result<u64> {
    let mut hash = FNV_OFFSET;
    for file in inputs(root)? {
        let relative = file.strip_prefix(root).unwrap_or(&file);
        hash = fnv1a(hash, relative.to_string_lossy().as_bytes());
        hash = fnv1a(hash, &std::fs::read(&file)?);
    }
    Ok(hash)
}

/// Name of the file beside `flash_attn.<arch>.ptx` that records the fingerprint it was built from.
pub fn file_name(arch: &str) -> std::string::String {
    std::format!("flash_attn.{arch}.fingerprint")
}

fn collect(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_published_vectors() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn fingerprint_follows_every_input() {
        let root = std::env::temp_dir().join(std::format!("fa-fingerprint-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("kernels/src")).unwrap();
        std::fs::create_dir_all(root.join("xtask/src")).unwrap();
        let files = [
            "kernels/src/lib.rs",
            "kernels/Cargo.toml",
            "Cargo.toml",
            "rust-toolchain.toml",
            "xtask/src/build_ptx.rs",
            "xtask/src/link.rs",
        ];
        for file in files {
            std::fs::write(root.join(file), file).unwrap();
        }
        let first = of_workspace(&root).unwrap();
        assert_eq!(first, of_workspace(&root).unwrap(), "stable");
        let mut seen = std::vec![first];
        for file in files {
            std::fs::write(root.join(file), "changed").unwrap();
            let now = of_workspace(&root).unwrap();
            assert!(!seen.contains(&now), "{file} changed but the fingerprint did not");
            seen.push(now);
        }
        std::fs::write(root.join("kernels/src/new.rs"), "").unwrap();
        assert!(!seen.contains(&of_workspace(&root).unwrap()), "a new kernel source file counts");
        let _ = std::fs::remove_dir_all(&root);
    }
}
