//! A persistent worker that leaves a `setsid` helper holding its stdout and
//! stderr, answers, and exits (issue 10 item 6: 100 restarts took the
//! parent from 28 to 226 fds). The pipes must be closed after the exit
//! grace, so fds come back to where they were. Its own test binary:
//! /proc/self/fd is process-wide.

mod worker_support;

use std::time::{Duration, Instant};

use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::jobs::JobOutput;
use cuda_engine_core::worker::{Worker, WorkerMode};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_setsid_helper_holding_the_pipes_leaks_no_fds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // The helper escapes the group (setsid), keeps stdout/stderr, and lives
    // 3 s; its pid is recorded so the test can end it.
    let path = script(
        dir.path(),
        "stray.sh",
        &format!(
            r#"setsid sh -c 'echo $$ >> "{d}/strays"; exec sleep 3' < /dev/null &
IFS= read -r line
id=${{line#*\"id\":}}; id=${{id%%[,\}}]*}}
printf '{{"id":%s,"ok":true,"result":"pong"}}\n' "$id"
exit 0"#
        ),
    );
    let mut cfg = config(&path, WorkerMode::Persistent, Duration::from_secs(10));
    cfg.args = vec![];
    cfg.restart_delay = Duration::ZERO;
    let w = Worker::new(cfg).unwrap();
    // A job sent while the last process was exiting is never answered
    // (E_WORKER_EXIT); send it again.
    let ping = |i: u32| {
        let w = &w;
        async move {
            loop {
                match w.run(&json_env("ping", json!(i)), None, CancellationToken::new()).await {
                    Ok(r) => return assert_eq!(r.output, JobOutput::Json(json!("pong"))),
                    Err(e) => assert_eq!(e.code, ErrorCode::WorkerExit, "job {i}: {e}"),
                }
            }
        }
    };
    // Warm-up: tokio's signal pipe and pidfd machinery open lazily.
    ping(0).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before = fd_count();
    let t = Instant::now();
    for i in 1..=12 {
        ping(i).await;
    }
    w.shutdown().await;
    let after = fd_count();
    let strays = std::fs::read_to_string(dir.path().join("strays")).unwrap_or_default();
    for pid in strays.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: kill(2) on a pid the test's own helper recorded.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    assert!(after <= before, "fds before {before}, after 12 restarts with a stray each and shutdown {after}");
    // Each exit costs at most the 500 ms grace, not a hang.
    assert!(t.elapsed() < Duration::from_secs(12), "{:?}", t.elapsed());
}
