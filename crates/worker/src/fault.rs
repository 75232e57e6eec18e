//! Fault injection for the fault-isolation tests (docs/reliability.md
//! "Fault isolation").
//!
//! `CUDA_ENGINE_FAULT_INJECT=KIND[-on-embed][:N]` makes this process fail on
//! its N-th embedding job (default 1; counted per process, so a restarted
//! process counts from 1 again):
//!
//! | KIND | what happens |
//! |---|---|
//! | `segfault` | the process dies of SIGSEGV (as a bad kernel launch or driver bug would) |
//! | `abort` | the process aborts (SIGABRT) |
//! | `hang` | the process stops answering anything (its one runtime thread blocks, as in a driver hang) |
//! | `sticky-cuda-fault` | that job and every later embedding job answer `E_CUDA_FAULT`, as a poisoned CUDA context does |
//!
//! The variable is read once, in `main`, from this process's own
//! environment. No request can set it: the engine never forwards anything a
//! caller sends into a worker's environment. A value that does not parse
//! makes the worker exit 64 (a typo must not silently test nothing).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cuda_engine_core::err;
use cuda_engine_core::error::Result;

pub const VAR: &str = "CUDA_ENGINE_FAULT_INJECT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Segfault,
    Abort,
    Hang,
    StickyCudaFault,
}

#[derive(Debug)]
struct Fault {
    kind: Kind,
    /// 1-based index of the embedding job that triggers it.
    on: u64,
    seen: AtomicU64,
    poisoned: AtomicBool,
}

static FAULT: OnceLock<Option<Fault>> = OnceLock::new();

fn parse(value: &str) -> std::result::Result<Fault, String> {
    let (kind, n) = match value.split_once(':') {
        Some((k, n)) => (k, Some(n)),
        None => (value, None),
    };
    let kind = match kind.strip_suffix("-on-embed").unwrap_or(kind) {
        "segfault" => Kind::Segfault,
        "abort" => Kind::Abort,
        "hang" => Kind::Hang,
        "sticky-cuda-fault" => Kind::StickyCudaFault,
        other => {
            return Err(format!(
                "{VAR}: unknown fault {other:?} (known: segfault, abort, hang, sticky-cuda-fault, each optionally -on-embed:N)"
            ))
        }
    };
    let on = match n {
        None => 1,
        Some(n) => match n.parse::<u64>() {
            Ok(n) if n >= 1 => n,
            _ => return Err(format!("{VAR}: {n:?} is not a job number (1, 2, ...)")),
        },
    };
    Ok(Fault { kind, on, seen: AtomicU64::new(0), poisoned: AtomicBool::new(false) })
}

/// Read `CUDA_ENGINE_FAULT_INJECT` (once; later calls change nothing).
pub fn init_from_env() -> std::result::Result<(), String> {
    let fault = match std::env::var(VAR) {
        Ok(v) if !v.trim().is_empty() => Some(parse(v.trim())?),
        _ => None,
    };
    if let Some(f) = &fault {
        eprintln!("cuda-worker: {VAR}: {:?} on embedding job {} (testing only)", f.kind, f.on);
    }
    let _ = FAULT.set(fault);
    Ok(())
}

/// Called when an embedding job starts.
pub fn on_embedding() -> Result<()> {
    let Some(Some(f)) = FAULT.get() else { return Ok(()) };
    if f.poisoned.load(Ordering::Acquire) {
        return Err(err!(CudaFault, "injected sticky CUDA fault ({VAR}): this process's CUDA context is poisoned"));
    }
    let n = f.seen.fetch_add(1, Ordering::AcqRel) + 1;
    if n != f.on {
        return Ok(());
    }
    eprintln!("cuda-worker: {VAR}: injecting {:?} on embedding job {n}", f.kind);
    match f.kind {
        Kind::Segfault => {
            // SAFETY: signal(2) restores the default action (Rust's runtime
            // installs a SIGSEGV handler for stack overflows that would
            // swallow a raised signal); raise(2) then sends SIGSEGV to this
            // process, which kills it as a segfault in a kernel would.
            unsafe {
                libc::signal(libc::SIGSEGV, libc::SIG_DFL);
                libc::raise(libc::SIGSEGV);
            }
            std::process::abort()
        }
        Kind::Abort => std::process::abort(),
        Kind::Hang => loop {
            // Blocks the runtime's one thread: nothing is read or written
            // any more, as when a driver call never returns.
            std::thread::sleep(Duration::from_secs(3600));
        },
        Kind::StickyCudaFault => {
            f.poisoned.store(true, Ordering::Release);
            Err(err!(CudaFault, "injected sticky CUDA fault ({VAR}): this process's CUDA context is poisoned"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_or_are_refused() {
        let f = parse("segfault-on-embed:3").unwrap();
        assert_eq!((f.kind, f.on), (Kind::Segfault, 3));
        let f = parse("hang").unwrap();
        assert_eq!((f.kind, f.on), (Kind::Hang, 1));
        assert_eq!(parse("sticky-cuda-fault:2").unwrap().kind, Kind::StickyCudaFault);
        assert_eq!(parse("abort-on-embed").unwrap().kind, Kind::Abort);
        assert!(parse("segv").is_err());
        assert!(parse("abort:0").is_err());
        assert!(parse("abort:x").is_err());
    }
}
