//! Project automation: `cargo xtask <command>`.
//!
//! - `build-ptx [--arch sm_80|sm_90a|all]`: compile `kernels/` with rustc's nvptx64 backend, link
//!   the bitcode ourselves (llvm-link, opt, llc from the llvm-tools component), write the PTX to
//!   `target/ptx/`, then assemble it with ptxas and fail on spills, stack frames, leftover calls,
//!   missing kernels, parameter-block size mismatches or in-flight `wgmma` register hazards.
//! - `bundle`: gather the GPU test and bench binaries with the PTX into `bundle/` together with
//!   a script that runs them on a machine without Rust.
//!
//! The same binary doubles as the linker rustc calls for the nvptx target (see `link.rs`).

mod barrier_check;
mod build_ptx;
mod bundle;
mod link;
mod ptxas;
mod wgmma_check;

use std::process::ExitCode;

fn main() -> ExitCode {
    if std::env::var_os(link::LINKER_MODE_ENV).is_some() {
        return report(link::run(std::env::args().skip(1).collect()));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("build-ptx") => build_ptx::run(&args[1..]),
        Some("bundle") => bundle::run(&args[1..]),
        _ => Err(format!(
            "usage: cargo xtask build-ptx [--arch sm_80|sm_90a|all] [--features span-masks]\n       cargo xtask bundle\n(got {args:?})"
        )),
    };
    report(result)
}

fn report(result: Result<(), String>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}
