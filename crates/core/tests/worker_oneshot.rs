//! One-shot mode against real processes: the built `cuda-worker` and small
//! misbehaving shell workers. Each misbehaviour must give its code within
//! timeout + 1 s, leave nothing of the worker's process group behind, and not
//! disturb the next job on a healthy worker.

mod worker_support;

use std::path::Path;
use std::time::{Duration, Instant};

use cuda_engine_core::error::ErrorCode;
use cuda_engine_core::jobs::{BackendKind, JobOutput};
use cuda_engine_core::worker::{BinaryFormat, Worker, WorkerMode};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use worker_support::*;

const TIMEOUT: Duration = Duration::from_millis(700);

async fn healthy_job_succeeds() {
    let w = Worker::new(config(&cuda_worker_bin(), WorkerMode::Oneshot, Duration::from_secs(20))).unwrap();
    let r = w.run(&json_env("echo", json!({"after": "misbehaviour"})), None, CancellationToken::new()).await.unwrap();
    assert_eq!(r.output, JobOutput::Json(json!({"after": "misbehaviour"})));
}

/// Run `body` as a one-shot worker (it records its pid in `$D/pid`); check
/// the code, the time, and that its process group is gone.
async fn misbehave(body: &str, max_output: usize) -> (cuda_engine_core::CoreError, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let path = script(dir.path(), "w.sh", &format!("D='{d}'\necho $$ > \"$D/pid\"\n{body}"));
    let mut cfg = config(&path, WorkerMode::Oneshot, TIMEOUT);
    cfg.max_output_bytes = max_output;
    cfg.max_stderr_bytes = 4096;
    let w = Worker::new(cfg).unwrap();
    let t = Instant::now();
    let e = w.run(&json_env("echo", json!({"x": 1})), None, CancellationToken::new()).await.unwrap_err();
    let took = t.elapsed();
    assert!(took < TIMEOUT + Duration::from_secs(1), "took {took:?}: {e}");
    let pgid = read_pid(&dir.path().join("pid"));
    let left = group_members(pgid);
    assert!(left.is_empty(), "process group {pgid} still has {left:?} after {e}");
    assert!(!w.health().running);
    healthy_job_succeeds().await;
    (e, took)
}

#[tokio::test]
async fn echo_json_and_bytes_through_cuda_worker() {
    let bin = cuda_worker_bin();
    for fmt in [BinaryFormat::Cbor, BinaryFormat::MsgPack] {
        let mut cfg = config(&bin, WorkerMode::Oneshot, Duration::from_secs(20));
        cfg.binary_format = fmt;
        let w = Worker::new(cfg).unwrap();
        let r = w
            .run(&json_env("echo", json!({"text": "héllo", "n": [1, 2.5]})), None, CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(r.output, JobOutput::Json(json!({"text": "héllo", "n": [1, 2.5]})));
        assert_eq!((r.backend, r.id.as_deref(), r.job_type.as_str()), (BackendKind::Worker, Some("t1"), "echo"));
        // 3 MiB of every byte value: bigger than a pipe buffer, not UTF-8.
        let bytes: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
        let r = w.run(&bytes_env(bytes.clone()), None, CancellationToken::new()).await.unwrap();
        assert_eq!(r.output, JobOutput::Bytes(bytes), "{fmt:?}");
        assert_eq!(r.encoding, "raw");
    }
}

#[tokio::test]
async fn unknown_type_is_a_reply_not_a_crash() {
    let w = Worker::new(config(&cuda_worker_bin(), WorkerMode::Oneshot, Duration::from_secs(20))).unwrap();
    let e = w.run(&json_env("no_such_job", json!(1)), None, CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::UnknownType, "{e}");
    healthy_job_succeeds().await;
}

#[tokio::test]
async fn sleeping_forever_times_out_and_the_group_is_killed() {
    // `sleep` runs as a child of sh: both must die.
    let (e, took) = misbehave("sleep 1000\necho never", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::WorkerTimeout, "{e}");
    assert!(took >= TIMEOUT, "{took:?}");
}

#[tokio::test]
async fn exit_3_reports_the_stderr_tail() {
    let (e, _) = misbehave("cat >/dev/null\necho 'fatal: the GPU caught fire' >&2\nexit 3", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::WorkerExit, "{e}");
    assert!(e.message.contains("exited with code 3") && e.message.contains("the GPU caught fire"), "{}", e.message);
}

#[tokio::test]
async fn output_over_the_limit_is_killed() {
    let (e, took) = misbehave("head -c 100000000 /dev/zero", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::OutputLimit, "{e}");
    assert!(took < TIMEOUT, "the limit must stop it early, took {took:?}");
}

#[tokio::test]
async fn ten_mb_of_stderr_and_no_stdout() {
    let (e, _) = misbehave("head -c 10000000 /dev/zero | tr '\\0' e >&2", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::WorkerProtocol, "{e}");
    // The tail is bounded (4096 bytes kept) and says how much was dropped.
    assert!(e.message.len() < 4096 + 1024, "message is {} bytes", e.message.len());
    assert!(e.message.contains("9995904 earlier bytes dropped"), "{}", &e.message[..300]);
}

#[tokio::test]
async fn garbage_is_a_protocol_error() {
    let (e, _) = misbehave("cat >/dev/null\necho 'this is { not json'", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::WorkerProtocol, "{e}");
    assert!(e.message.contains("this is { not json"), "{}", e.message);
}

#[tokio::test]
async fn a_grandchild_holding_stdout_does_not_hang_the_job() {
    // The worker answers, leaves a helper holding stdout, and exits 0. The
    // job must finish at once (not at the timeout) and the helper must die.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let path = script(
        dir.path(),
        "w.sh",
        &format!(
            "D='{d}'\necho $$ > \"$D/pid\"\ncat >/dev/null\necho '{{\"ok\":true,\"result\":\"done\"}}'\n\
             sleep 1000 &\necho $! > \"$D/gpid\"\nexit 0"
        ),
    );
    let w = Worker::new(config(&path, WorkerMode::Oneshot, TIMEOUT)).unwrap();
    let t = Instant::now();
    let r = w.run(&json_env("echo", json!(1)), None, CancellationToken::new()).await.unwrap();
    assert_eq!(r.output, JobOutput::Json(json!("done")));
    assert!(t.elapsed() < TIMEOUT, "waited for the helper: {:?}", t.elapsed());
    let (pgid, gpid) = (read_pid(&dir.path().join("pid")), read_pid(&dir.path().join("gpid")));
    assert!(group_members(pgid).is_empty(), "left: {:?}", group_members(pgid));
    assert!(!Path::new(&format!("/proc/{gpid}")).exists(), "the helper {gpid} survived");
    healthy_job_succeeds().await;
}

#[tokio::test]
async fn a_grandchild_and_no_answer_is_a_protocol_error() {
    let (e, took) = misbehave("cat >/dev/null\n(sleep 1000) &\nexit 0", 1 << 20).await;
    assert_eq!(e.code, ErrorCode::WorkerProtocol, "{e}");
    assert!(took < TIMEOUT, "{took:?}");
}

#[tokio::test]
async fn cancellation_kills_the_group() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let path = script(dir.path(), "w.sh", &format!("echo $$ > '{d}/pid'\nsleep 1000"));
    let w = Worker::new(config(&path, WorkerMode::Oneshot, Duration::from_secs(30))).unwrap();
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c2.cancel();
    });
    let t = Instant::now();
    let e = w.run(&json_env("echo", json!(1)), None, cancel).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Cancelled, "{e}");
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(group_members(read_pid(&dir.path().join("pid"))).is_empty());
}

#[tokio::test]
async fn dropping_the_job_future_kills_the_group() {
    // The engine's own deadline drops the future rather than cancelling.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let path = script(dir.path(), "w.sh", &format!("echo $$ > '{d}/pid'\nsleep 1000"));
    let w = Worker::new(config(&path, WorkerMode::Oneshot, Duration::from_secs(30))).unwrap();
    let env = json_env("echo", json!(1));
    let r = tokio::time::timeout(Duration::from_millis(300), w.run(&env, None, CancellationToken::new())).await;
    assert!(r.is_err());
    let pgid = read_pid(&dir.path().join("pid"));
    let t = Instant::now();
    while !group_members(pgid).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(1), "left: {:?}", group_members(pgid));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn worker_reported_errors_keep_their_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = script(
        dir.path(),
        "w.sh",
        "cat >/dev/null\necho '{\"ok\":false,\"error\":{\"code\":\"E_TOO_LONG\",\"message\":\"text 3 has 900 tokens\"}}'",
    );
    let w = Worker::new(config(&path, WorkerMode::Oneshot, TIMEOUT)).unwrap();
    let e = w.run(&json_env("embedding", json!({})), None, CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TooLong);
    assert!(e.message.contains("900 tokens"));
}

#[tokio::test]
async fn missing_binary_and_discovery_failures_name_where_they_looked() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(&dir.path().join("gone"), WorkerMode::Oneshot, TIMEOUT);
    let e = Worker::new(cfg.clone()).err().unwrap();
    assert_eq!(e.code, ErrorCode::WorkerNotFound);
    assert!(e.message.contains("gone"), "{}", e.message);
    cfg.path = None;
    cfg.discovery_env = Some(Default::default());
    let e = Worker::new(cfg).err().unwrap();
    assert_eq!(e.code, ErrorCode::WorkerNotFound);
    assert!(e.message.contains("bin/cuda-worker"), "{}", e.message);
}
