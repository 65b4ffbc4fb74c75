//! A static check of the asynchronous `wgmma` windows in the PTX.
//!
//! An issue-only warpgroup GEMM (`wgmma.commit_group` not followed by a wait in the same asm
//! block) leaves its accumulators and A-operand registers owned by the tensor cores until a
//! `wgmma.wait_group` covers it; reading or writing them before that is undefined behaviour
//! (PTX ISA, "wgmma.mma_async"). Rust's `asm!` cannot express that, so the kernels rely on
//! `warpgroup::wait` naming the accumulators as in-out operands. This check reads the PTX that
//! LLVM actually produced and fails the build if any instruction inside a window touches an
//! in-flight accumulator or writes an in-flight A operand.
//!
//! A window ends at the first wait that covers it: `wait_group 0`, or a wait whose
//! "waited for" comment line (written by the generated wait functions) names its registers.

use std::collections::HashSet;

/// Registers (`%r123`, `%f7`, …) mentioned in `text`.
fn registers(text: &str) -> HashSet<&str> {
    let mut out = HashSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 1 < bytes.len() && bytes[i + 1].is_ascii_alphabetic() {
            let start = i;
            i += 1;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.insert(&text[start..i]);
        } else {
            i += 1;
        }
    }
    out
}

/// The register an instruction writes: its first operand (`add.s32 %r1, ...` writes `%r1`).
fn destination(line: &str) -> Option<&str> {
    let mut words = line.split_whitespace();
    let mut op = words.next()?;
    if op.starts_with('@') {
        op = words.next()?;
    }
    if op.starts_with("st.") || op.starts_with("red.") || op.starts_with("bar") || op.starts_with("cp.") {
        return None;
    }
    let first = words.next()?.trim_end_matches(',').trim_end_matches(';');
    first.starts_with('%').then_some(first)
}

/// Hazards in one entry's PTX text: `(line number in the entry, description)`.
pub fn hazards(entry: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = entry.lines().collect();
    let mut found = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let issue_only = line.contains("wgmma.commit_group")
            && !lines.get(i + 1).is_some_and(|next| next.contains("wgmma.wait_group"));
        if !issue_only {
            continue;
        }
        let Some(mma) = lines[..i].iter().rposition(|l| l.contains("wgmma.mma_async")) else { continue };
        let (acc_text, rest) = lines[mma].split_once('}').unwrap_or((lines[mma], ""));
        let accumulators = registers(acc_text);
        let a_operands = registers(rest.split_once('}').map_or("", |(a, _)| a));
        for (k, l) in lines.iter().enumerate().skip(i + 1) {
            if l.contains("wgmma.wait_group") {
                let names = lines.get(k + 1).map_or(HashSet::new(), |next| registers(next));
                if l.contains("wait_group.sync.aligned 0") || !names.is_disjoint(&accumulators) {
                    break;
                }
                continue;
            }
            let code = l.split("//").next().unwrap_or("");
            if code.trim().is_empty() || code.contains("wgmma") {
                continue;
            }
            if !registers(code).is_disjoint(&accumulators) {
                found.push((k, format!("touches an in-flight accumulator: {}", code.trim())));
            } else if destination(code).is_some_and(|d| a_operands.contains(d)) {
                found.push((k, format!("overwrites an in-flight A operand: {}", code.trim())));
            }
        }
    }
    found
}

/// Check every entry point of a PTX module; returns one message per hazard.
pub fn check(arch: &str, ptx: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for chunk in ptx.split(".visible .entry ").skip(1) {
        let name = chunk.split('(').next().unwrap_or("?");
        for (line, what) in hazards(chunk) {
            failures.push(format!("{name} ({arch}), line {line} of the entry: {what}"));
        }
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUE: &str = "{\nwgmma.fence.sync.aligned;\nwgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%r1, %r2}, {%r9, %r10}, vb, 1, 1, 1, 1;\nwgmma.commit_group.sync.aligned;\n}\n";

    #[test]
    fn a_clean_window_passes() {
        let ptx = format!(
            "{ISSUE}add.s32 %r5, %r6, 1;\nwgmma.wait_group.sync.aligned 0;\n// waited for: %r1 %r2\nmov.b32 %r7, %r1;\n"
        );
        assert!(hazards(&ptx).is_empty(), "{:?}", hazards(&ptx));
    }

    #[test]
    fn reading_an_accumulator_in_flight_is_caught() {
        let ptx = format!("{ISSUE}mov.b32 %r7, %r2;\nwgmma.wait_group.sync.aligned 0;\n");
        assert_eq!(hazards(&ptx).len(), 1);
    }

    #[test]
    fn overwriting_an_a_operand_in_flight_is_caught() {
        let ptx = format!("{ISSUE}cvt.rn.bf16x2.f32 %r10, %r11, %r12;\nwgmma.wait_group.sync.aligned 0;\n");
        assert_eq!(hazards(&ptx).len(), 1);
    }

    #[test]
    fn a_wait_for_other_accumulators_does_not_end_the_window() {
        let ptx = format!(
            "{ISSUE}wgmma.wait_group.sync.aligned 1;\n// waited for: %r40 %r41\nmov.b32 %r7, %r2;\nwgmma.wait_group.sync.aligned 0;\n"
        );
        assert_eq!(hazards(&ptx).len(), 1);
    }
}
