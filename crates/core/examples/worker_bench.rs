//! Echo jobs/s through the worker adapter: one persistent `cuda-worker
//! --serve` with N jobs in flight, against one-shot spawn-per-job, in the
//! same run.
//!
//! ```text
//! cargo build --release -p cuda-worker
//! cargo run --release -p cuda-engine-core --example worker_bench -- \
//!     [--worker target/release/cuda-worker] [--secs 5] [--in-flight 64]
//! ```
//! The worker path defaults to `CUDA_WORKER_BIN`, then
//! `target/release/cuda-worker` under the current directory.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cuda_engine_core::envelope::{Encoding, Envelope, Payload};
use cuda_engine_core::worker::{Worker, WorkerConfig, WorkerMode};
use serde_json::json;
use tokio_util::sync::CancellationToken;

struct Args {
    worker: PathBuf,
    secs: f64,
    in_flight: usize,
}

fn args() -> Args {
    let mut a = Args {
        worker: std::env::var_os("CUDA_WORKER_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("target/release/cuda-worker")),
        secs: 5.0,
        in_flight: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--worker" => a.worker = PathBuf::from(v),
            "--secs" => a.secs = v.parse().expect("--secs"),
            "--in-flight" => a.in_flight = v.parse().expect("--in-flight"),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// Run echo jobs from `in_flight` concurrent loops for `secs`; jobs/s.
async fn measure(w: Arc<Worker>, in_flight: usize, secs: f64) -> (f64, u64) {
    let done = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..in_flight {
        let (w, done) = (w.clone(), done.clone());
        set.spawn(async move {
            let env = Envelope {
                id: None,
                job_type: "echo".into(),
                payload: Payload::Json(json!({"text": "hello world", "loop": i})),
                encoding: Encoding::Json,
            };
            while Instant::now() < end {
                w.run(&env, None, CancellationToken::new()).await.expect("echo job");
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    (n as f64 / start.elapsed().as_secs_f64(), n)
}

fn main() {
    let a = args();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(cpus.min(2)).enable_all().build().unwrap();
    rt.block_on(async {
        let base = std::env::current_dir().unwrap();
        let mut p = WorkerConfig::new(&base, WorkerMode::Persistent);
        p.path = Some(a.worker.clone());
        let persistent = Arc::new(Worker::new(p).expect("worker binary (see --worker)"));
        // Warm-up: start the process, fault in its pages.
        measure(persistent.clone(), a.in_flight, 0.3).await;
        let (p_rate, p_n) = measure(persistent.clone(), a.in_flight, a.secs).await;
        persistent.shutdown().await;

        let mut o = WorkerConfig::new(&base, WorkerMode::Oneshot);
        o.path = Some(a.worker.clone());
        let oneshot = Arc::new(Worker::new(o).unwrap());
        let (o_rate, o_n) = measure(oneshot.clone(), a.in_flight, a.secs).await;

        println!(
            "{}",
            json!({
                "worker": a.worker.display().to_string(),
                "cpus": cpus,
                "in_flight": a.in_flight,
                "secs": a.secs,
                "persistent_jobs_per_s": p_rate.round(),
                "persistent_jobs": p_n,
                "oneshot_jobs_per_s": o_rate.round(),
                "oneshot_jobs": o_n,
                "speedup": (p_rate / o_rate * 10.0).round() / 10.0,
            })
        );
    });
}
