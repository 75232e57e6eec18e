//! 1,000 worker runs, mostly failures, must not leak file descriptors or
//! processes. Its own test binary: /proc/self/fd is process-wide, so no other
//! test may run beside it.

mod worker_support;

use std::time::Duration;

use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::worker::{Worker, WorkerMode};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker_support::*;

/// Our children, zombies included (ppid == us).
fn children() -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some(close) = stat.rfind(')') else { continue };
        let ppid = stat[close + 2..].split(' ').nth(1).and_then(|s| s.parse::<i32>().ok());
        if ppid == Some(me) {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_runs_leak_no_fds_and_no_processes() {
    let dir = tempfile::tempdir().unwrap();
    let t = Duration::from_millis(150);
    let workers: Vec<(Worker, Option<ErrorCode>)> = vec![
        (
            Worker::new(config(
                &script(dir.path(), "ok.sh", "cat >/dev/null\necho '{\"ok\":true,\"result\":1}'"),
                WorkerMode::Oneshot,
                t,
            ))
            .unwrap(),
            None,
        ),
        (
            Worker::new(config(&script(dir.path(), "exit3.sh", "echo oops >&2\nexit 3"), WorkerMode::Oneshot, t))
                .unwrap(),
            Some(ErrorCode::WorkerExit),
        ),
        (
            Worker::new(config(&script(dir.path(), "junk.sh", "echo junk"), WorkerMode::Oneshot, t)).unwrap(),
            Some(ErrorCode::WorkerProtocol),
        ),
        (
            Worker::new(config(&script(dir.path(), "big.sh", "head -c 300000 /dev/zero"), WorkerMode::Oneshot, t))
                .unwrap(),
            Some(ErrorCode::OutputLimit),
        ),
        (
            Worker::new(config(&script(dir.path(), "fork.sh", "(sleep 100) &\nexit 0"), WorkerMode::Oneshot, t))
                .unwrap(),
            Some(ErrorCode::WorkerProtocol),
        ),
        (
            Worker::new(config(
                &script(dir.path(), "hang.sh", "sleep 100"),
                WorkerMode::Oneshot,
                Duration::from_millis(20),
            ))
            .unwrap(),
            Some(ErrorCode::WorkerTimeout),
        ),
    ];
    let mut limited = Vec::new();
    for (w, code) in workers {
        let mut cfg = w.config().clone();
        cfg.max_output_bytes = 100_000;
        limited.push((Worker::new(cfg).unwrap(), code));
    }
    let env = json_env("echo", json!({"k": "v"}));
    let env = &env;
    let run = |i: usize| {
        let (w, code) = &limited[i % limited.len()];
        async move {
            let r = w.run(env, None, CancellationToken::new()).await;
            match (r, code) {
                (Ok(_), None) => {}
                (Err(e), Some(c)) if e.code == *c => {}
                (other, want) => panic!("run {i}: want {want:?}, got {other:?}"),
            }
        }
    };
    // Warm-up: tokio opens its signal pipe and pidfd machinery lazily.
    for i in 0..24 {
        run(i).await;
    }
    let before = fd_count();
    for i in 0..1000 {
        run(i).await;
    }
    // Reaping of the last jobs' helpers happens before run() returns, so
    // nothing should be left right away; allow a moment for the kernel.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let after = fd_count();
    assert_eq!(before, after, "fds before {before}, after 1000 runs {after}");
    let kids = children();
    assert!(kids.is_empty(), "children left: {kids:?}");
}
