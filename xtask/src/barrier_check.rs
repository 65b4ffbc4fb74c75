//! A static check of the warp-specialized kernels' synchronization in the PTX: mbarriers,
//! named barriers and `setmaxnreg`.
//!
//! What the PTX alone can show, per entry point:
//! - mbarriers are initialized before the block barrier that publishes them: the first
//!   `mbarrier.init` comes before the first `bar.sync 0` / `barrier.sync 0`, and every other
//!   mbarrier instruction after it;
//! - waits use the phase-parity form (`mbarrier.try_wait.parity`): the kernels track phases by
//!   parity and never hold the state token the other form returns;
//! - `cp.async` arrivals are `.noinc`: the kernels count them among a phase's expected arrivals;
//! - named barriers (`bar.sync` / `bar.arrive` with an id other than 0) have immediate ids in
//!   1..16 and thread counts that are whole warps, at most the block's threads (`.maxntid`);
//! - a kernel that moves registers with `setmaxnreg` declares `.maxntid` (so that ptxas budgets
//!   its launch registers), in whole warpgroups, and one producer warpgroup at the lowered count
//!   plus the others at the raised count fit the block's launch registers
//!   ([`launch_registers`]).

use flash_attn_kernels::tiling::launch_registers;

/// Check every entry point of a PTX module; returns one message per problem.
pub fn check(arch: &str, ptx: &str) -> Vec<String> {
    let mut failures = Vec::new();
    for chunk in ptx.split(".visible .entry ").skip(1) {
        let name = chunk.split('(').next().unwrap_or("?");
        for what in problems(chunk) {
            failures.push(format!("{name} ({arch}): {what}"));
        }
    }
    failures
}

/// The instruction lines of one entry (comments and blank lines dropped, predicates kept).
fn instructions(entry: &str) -> impl Iterator<Item = &str> {
    entry.lines().map(|l| l.split("//").next().unwrap_or("").trim()).filter(|l| !l.is_empty())
}

/// The opcode of an instruction line, without its guard predicate.
fn opcode(line: &str) -> &str {
    let mut words = line.split_whitespace();
    let first = words.next().unwrap_or("");
    if first.starts_with('@') { words.next().unwrap_or("") } else { first }
}

/// The immediate operands of a barrier instruction (`bar.sync 1, 256;` → [1, 256]); `None` for an
/// operand in a register.
fn immediates(line: &str) -> Vec<Option<u32>> {
    let op = opcode(line);
    let rest = line.split(op).nth(1).unwrap_or("").trim().trim_end_matches(';');
    rest.split(',').map(|w| w.trim().parse().ok()).collect()
}

fn problems(entry: &str) -> Vec<String> {
    let mut out = Vec::new();
    let lines: Vec<&str> = instructions(entry).collect();
    let maxntid = entry
        .lines()
        .find_map(|l| l.trim().strip_prefix(".maxntid "))
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse::<u32>().ok());

    let first = |pred: &dyn Fn(&str) -> bool| lines.iter().position(|l| pred(opcode(l)));
    let is_block_barrier = |l: &str| {
        let op = opcode(l);
        (op == "bar.sync" || op == "barrier.sync") && immediates(l).first() == Some(&Some(0))
    };
    let init = first(&|op| op.starts_with("mbarrier.init"));
    let other_use = lines.iter().position(|l| {
        let op = opcode(l);
        (op.starts_with("mbarrier.") && !op.starts_with("mbarrier.init")) || op.starts_with("cp.async.mbarrier")
    });
    if let Some(use_at) = other_use {
        match init {
            None => out.push("uses mbarriers but never initializes one".into()),
            Some(init_at) => {
                let published = lines[init_at..].iter().position(|l| is_block_barrier(l)).map(|p| p + init_at);
                match published {
                    Some(sync_at) if sync_at < use_at => {}
                    _ => out.push("an mbarrier is used before a block barrier follows its initialization".into()),
                }
            }
        }
    }
    for l in &lines {
        let op = opcode(l);
        if op.starts_with("mbarrier.try_wait") && !op.contains(".parity") {
            out.push(format!("mbarrier wait without phase parity: `{l}`"));
        }
        if op.starts_with("cp.async.mbarrier.arrive") && !op.contains(".noinc") {
            out.push(format!("cp.async arrival that adds to the expected count: `{l}`"));
        }
        if (op == "bar.sync" || op == "bar.arrive" || op == "barrier.sync" || op == "barrier.arrive")
            && !is_block_barrier(l)
        {
            match immediates(l).as_slice() {
                [Some(id), Some(count)] if (1..16).contains(id) && count % 32 == 0 => {
                    if maxntid.is_some_and(|threads| *count > threads) {
                        out.push(format!("named barrier for more threads than the block has: `{l}`"));
                    }
                }
                _ => out.push(format!("named barrier without an immediate id in 1..16 and a whole-warp count: `{l}`")),
            }
        }
    }
    let maxnreg = |kind: &str| {
        lines
            .iter()
            .filter(|l| opcode(l) == format!("setmaxnreg.{kind}.sync.aligned.u32"))
            .filter_map(|l| immediates(l).first().copied().flatten())
            .collect::<Vec<u32>>()
    };
    let (lowered, raised) = (maxnreg("dec"), maxnreg("inc"));
    if !lowered.is_empty() || !raised.is_empty() {
        match maxntid {
            Some(threads) if threads % 128 == 0 && threads >= 256 => {
                let warpgroups = threads / 128;
                let low = lowered.iter().copied().max().unwrap_or(0);
                let high = raised.iter().copied().max().unwrap_or(0);
                let total = 128 * (low + high * (warpgroups - 1));
                // The pool `setmaxnreg.inc` draws from is what the block got at launch: every
                // thread at the launch's registers (64 K over the threads, in multiples of 8). A
                // split above it hangs the raising warpgroups for good (v30c's (32, 240)).
                let launch = 128 * warpgroups * launch_registers(threads);
                if total > launch {
                    out.push(format!(
                        "setmaxnreg: one warpgroup at {low} and {} at {high} registers need {total} of the \
                         block's {launch}",
                        warpgroups - 1
                    ));
                }
            }
            _ => out.push("setmaxnreg without `.maxntid` in whole warpgroups (at least two)".into()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "k(\n)\n.maxntid 384, 1, 1\n{\nmbarrier.init.shared::cta.b64 [%r1], %r2;\nbar.sync 0;\n\
        setmaxnreg.dec.sync.aligned.u32 24;\ncp.async.mbarrier.arrive.noinc.shared::cta.b64 [%r1];\n\
        setmaxnreg.inc.sync.aligned.u32 240;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%r1], %r3;\n\
        bar.sync 1, 256;\nbar.arrive 2, 256;\n}\n";

    #[test]
    fn the_warp_specialized_protocol_passes() {
        assert!(problems(GOOD).is_empty(), "{:?}", problems(GOOD));
    }

    #[test]
    fn a_use_before_the_block_barrier_is_caught() {
        let ptx = GOOD.replace("bar.sync 0;\n", "").replace("bar.arrive 2, 256;", "bar.arrive 2, 256;\nbar.sync 0;");
        assert_eq!(problems(&ptx).len(), 1, "{:?}", problems(&ptx));
    }

    #[test]
    fn an_overcommitted_register_split_is_caught() {
        let ptx = GOOD.replace("u32 24;", "u32 56;");
        assert_eq!(problems(&ptx).len(), 1, "{:?}", problems(&ptx));
        // 32 + 2 · 240 fits 64 K but not the 3 · 168 a thread of 384 gets at launch: it hung.
        let ptx = GOOD.replace("u32 24;", "u32 32;");
        assert_eq!(problems(&ptx).len(), 1, "{:?}", problems(&ptx));
        assert_eq!(launch_registers(384), 168);
        assert_eq!(launch_registers(512), 128);
        assert_eq!(launch_registers(128), 255);
        let ptx = GOOD.replace(".maxntid 384, 1, 1\n", "");
        assert_eq!(problems(&ptx).len(), 1, "{:?}", problems(&ptx));
    }

    #[test]
    fn named_barriers_need_immediates_and_whole_warps() {
        assert_eq!(problems(&GOOD.replace("bar.sync 1, 256;", "bar.sync %r4, 256;")).len(), 1);
        assert_eq!(problems(&GOOD.replace("bar.arrive 2, 256;", "bar.arrive 2, 100;")).len(), 1);
        assert_eq!(problems(&GOOD.replace("bar.arrive 2, 256;", "bar.arrive 2, 512;")).len(), 1);
    }

    #[test]
    fn waits_without_parity_and_counted_cp_async_arrivals_are_caught() {
        let ptx = GOOD.replace("try_wait.parity", "try_wait").replace(".noinc", "");
        assert_eq!(problems(&ptx).len(), 2, "{:?}", problems(&ptx));
    }
}
