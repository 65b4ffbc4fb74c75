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

/// Hash every file under `kernels_dir` that feeds the PTX (Cargo.toml and src/**), by relative
/// path and content, in sorted order.
pub fn of_directory(kernels_dir: &Path) -> std::io::Result<u64> {
    let mut files = Vec::new();
    collect(&kernels_dir.join("src"), &mut files)?;
    files.push(kernels_dir.join("Cargo.toml"));
    files.sort();
    let mut hash = FNV_OFFSET;
    for file in files {
        let relative = file.strip_prefix(kernels_dir).unwrap_or(&file);
        hash = fnv1a(hash, relative.to_string_lossy().as_bytes());
        hash = fnv1a(hash, &std::fs::read(&file)?);
    }
    Ok(hash)
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
    fn fingerprint_of_this_crate_is_stable() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        assert_eq!(of_directory(dir).unwrap(), of_directory(dir).unwrap());
    }
}
