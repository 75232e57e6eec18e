//! Shared helpers for the worker tests (real processes, no mocks).
//!
//! The `cuda-worker` binary: `CUDA_WORKER_BIN` if set, else it is built
//! once per test binary with `$CARGO build -p cuda-worker` (the cargo that
//! runs the tests; it does not hold the build lock while tests run) and
//! located through `--message-format=json`. So `cargo test -p
//! cuda-engine-core` alone is enough, and a stale binary is never used.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cuda_engine_core::envelope::{Encoding, Envelope, Payload};
use cuda_engine_core::worker::{WorkerConfig, WorkerMode};

pub fn cuda_worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("CUDA_WORKER_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.args(["build", "-p", "cuda-worker", "--bin", "cuda-worker", "--message-format=json"]);
        let exe = std::env::current_exe().unwrap();
        if exe.components().any(|c| c.as_os_str() == "release") {
            cmd.arg("--release");
        }
        let out = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).output().expect("run cargo build -p cuda-worker");
        assert!(out.status.success(), "cargo build -p cuda-worker failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find_map(|v| v["executable"].as_str().map(PathBuf::from))
            .expect("cargo reported no cuda-worker executable")
    })
    .clone()
}

/// Write an executable `#!/bin/sh` script.
pub fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

pub fn config(path: &Path, mode: WorkerMode, timeout: Duration) -> WorkerConfig {
    let mut c = WorkerConfig::new(path.parent().unwrap(), mode);
    c.path = Some(path.to_path_buf());
    c.timeout = timeout;
    // Helpers that workers abandon must be reapable: this VM's init does
    // not reap orphans (see docs/worker-protocol.md "Processes").
    c.reap_orphans = true;
    c
}

pub fn json_env(job_type: &str, payload: serde_json::Value) -> Envelope {
    Envelope {
        id: Some("t1".into()),
        job_type: job_type.into(),
        payload: Payload::Json(payload),
        encoding: Encoding::Json,
    }
}

pub fn bytes_env(bytes: Vec<u8>) -> Envelope {
    Envelope { id: None, job_type: "echo".into(), payload: Payload::Bytes(bytes), encoding: Encoding::Raw }
}

/// Processes (zombies included) whose process group is `pgid`, with state.
pub fn group_members(pgid: i32) -> Vec<(i32, char)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // "pid (comm) state ppid pgrp ..." — comm may hold spaces/parens.
        let Some(close) = stat.rfind(')') else { continue };
        let mut f = stat[close + 2..].split(' ');
        let state = f.next().and_then(|s| s.chars().next()).unwrap_or('?');
        let _ppid = f.next();
        if f.next().and_then(|s| s.parse::<i32>().ok()) == Some(pgid) {
            out.push((pid, state));
        }
    }
    out
}

/// Read a pid a script wrote, waiting briefly for the file to appear.
pub fn read_pid(path: &Path) -> i32 {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path) {
            if let Ok(p) = s.trim().parse() {
                return p;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("no pid in {}", path.display());
}

pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
