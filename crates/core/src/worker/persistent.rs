//! Persistent mode: a small pool of long-lived workers speaking NDJSON with
//! request ids (binary frames for raw bytes), many jobs in flight on each,
//! responses matched by id, restart with back-off when one dies.
//!
//! Per process there are four tasks:
//! - writer: drains a channel into a `BufWriter` and flushes only when the
//!   channel is empty, so 64 concurrent jobs cost one `write(2)`, not 64.
//!   Jobs never write to the pipe themselves: a job future dropped halfway
//!   through a write would leave half a frame and desynchronise the stream.
//! - reader: parses lines/frames from stdout and completes the waiting job.
//! - stderr: drains stderr into a bounded tail (and the debug log).
//! - waiter: owns the `Child`; when it exits, fails every in-flight job at
//!   once (the caller learns within milliseconds, not at its timeout), kills
//!   what is left of the group, reaps, and schedules the restart.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, BufWriter};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::process::{self, describe_status, stderr_suffix, Tail};
use super::protocol::{self, FRAME_HEADER_LEN, FRAME_TAG};
use super::Shared;
use crate::envelope::Envelope;
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};
use crate::jobs::JobOutput;

type Outcome = Result<(JobOutput, &'static str)>;

/// Restart delay after the n-th death in a row: `first` doubling up to
/// `max` (defaults 50 ms and 10 s: `worker.restartDelayMs`,
/// `worker.maxRestartDelayMs`). A process that answered at least one job
/// resets the count, so a worker that crashes once after hours of service
/// comes back at once.
fn backoff(deaths_in_a_row: u32, first: Duration, max: Duration) -> Duration {
    if deaths_in_a_row == 0 {
        return Duration::ZERO;
    }
    let exp = (deaths_in_a_row - 1).min(16);
    first.saturating_mul(1u32 << exp).min(max)
}

/// After a worker exits, how long its stdout and stderr are still read:
/// answers it wrote just before exiting are in the pipe, and must reach
/// their callers. Strays of its group are killed at once; one that escaped
/// the group (`setsid`) and holds the pipes is abandoned after this grace,
/// and the pipes are closed (Go's `Cmd.WaitDelay`), so no fd outlives it.
const POST_EXIT_GRACE: Duration = Duration::from_millis(500);

struct Pending {
    dead: bool,
    map: HashMap<u64, oneshot::Sender<Outcome>>,
}

pub(crate) struct Proc {
    pid: u32,
    pgid: i32,
    tx: Mutex<Option<mpsc::UnboundedSender<Vec<u8>>>>,
    pending: Mutex<Pending>,
    kill_reason: Mutex<Option<CoreError>>,
    /// Set by `kill_for`: the process is being killed.
    killed: AtomicBool,
    tail: Mutex<Tail>,
    born: Instant,
    /// Nanoseconds after `born` of the last message read from stdout.
    last_output: AtomicU64,
    answered: AtomicU64,
    /// Set when the leader has exited: no new job is sent to it.
    exited: watch::Sender<bool>,
    /// Count of the stdout and stderr readers that have finished (2 = both).
    pipes_closed: watch::Sender<u8>,
    /// Tells the readers to drop their pipes (a stray holds them open).
    abandon: CancellationToken,
    reaped: watch::Receiver<bool>,
}

impl Proc {
    fn now(&self) -> u64 {
        self.born.elapsed().as_nanos() as u64
    }

    fn is_dead(&self) -> bool {
        self.refuses_jobs(&self.pending.lock().unwrap())
    }

    /// Killed, exited, or drained by the waiter: no job may be sent to it.
    /// Takes the locked table so `register` decides under the same lock.
    fn refuses_jobs(&self, pending: &Pending) -> bool {
        pending.dead || *self.exited.borrow() || self.killed.load(Ordering::Acquire)
    }

    /// Kill the group, recording why (the waiter reports it to every job).
    /// From now on no job is sent to it: the next one waits for the
    /// replacement instead of failing with this process.
    fn kill_for(&self, reason: CoreError) {
        self.killed.store(true, Ordering::Release);
        {
            let mut r = self.kill_reason.lock().unwrap();
            if r.is_none() {
                log::warn!(target: "cuda_engine::worker", "killing worker pid {}: {reason}", self.pid);
                *r = Some(reason);
            }
        }
        process::kill_group(self.pgid);
    }

    fn register(&self, id: u64) -> Result<oneshot::Receiver<Outcome>> {
        let (tx, rx) = oneshot::channel();
        let mut p = self.pending.lock().unwrap();
        if self.refuses_jobs(&p) {
            return Err(err!(WorkerExit, "worker pid {} exited before the job could be sent", self.pid));
        }
        p.map.insert(id, tx);
        Ok(rx)
    }

    fn unregister(&self, id: u64) -> bool {
        self.pending.lock().unwrap().map.remove(&id).is_some()
    }

    fn send(&self, frame: Vec<u8>) -> bool {
        match &*self.tx.lock().unwrap() {
            Some(tx) => tx.send(frame).is_ok(),
            None => false,
        }
    }
}

#[derive(Default)]
struct Backoff {
    deaths_in_a_row: u32,
    last_death: Option<Instant>,
}

pub(crate) struct Slot {
    index: usize,
    shared: Arc<Shared>,
    cur: Mutex<Option<Arc<Proc>>>,
    start_lock: tokio::sync::Mutex<()>,
    backoff: Mutex<Backoff>,
    started_once: AtomicBool,
    restarts: AtomicU64,
    in_flight: AtomicUsize,
}

impl Slot {
    fn current(&self) -> Option<Arc<Proc>> {
        self.cur.lock().unwrap().as_ref().filter(|p| !p.is_dead()).cloned()
    }

    /// The live process, starting one (after the back-off delay) if needed.
    async fn get(self: &Arc<Self>) -> Result<Arc<Proc>> {
        if let Some(p) = self.current() {
            return Ok(p);
        }
        let _g = self.start_lock.lock().await;
        if let Some(p) = self.current() {
            return Ok(p);
        }
        // The last process exited and its answers are still being read:
        // its death decides the back-off, so wait for it to be counted.
        let exiting = self.cur.lock().unwrap().clone();
        if let Some(p) = exiting {
            let mut reaped = p.reaped.clone();
            let _ = reaped.wait_for(|r| *r).await;
        }
        if self.shared.shutdown.load(Ordering::Acquire) {
            return Err(err!(WorkerExit, "the worker pool is shut down"));
        }
        let cfg = &self.shared.cfg;
        let wait = {
            let b = self.backoff.lock().unwrap();
            b.last_death.map_or(Duration::ZERO, |t| {
                backoff(b.deaths_in_a_row, cfg.restart_delay, cfg.max_restart_delay).saturating_sub(t.elapsed())
            })
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match self.start() {
            Ok(p) => {
                if self.started_once.swap(true, Ordering::AcqRel) {
                    self.restarts.fetch_add(1, Ordering::AcqRel);
                }
                *self.cur.lock().unwrap() = Some(p.clone());
                Ok(p)
            }
            Err(e) => {
                let mut b = self.backoff.lock().unwrap();
                b.deaths_in_a_row += 1;
                b.last_death = Some(Instant::now());
                Err(e)
            }
        }
    }

    fn start(self: &Arc<Self>) -> Result<Arc<Proc>> {
        let cfg = &self.shared.cfg;
        let mut child = process::spawn(&self.shared.path, &cfg.args, &cfg.env)?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::unbounded_channel();
        let (reaped_tx, reaped_rx) = watch::channel(false);
        let proc = Arc::new(Proc {
            pid,
            pgid: pid as i32,
            tx: Mutex::new(Some(tx)),
            pending: Mutex::new(Pending { dead: false, map: HashMap::new() }),
            kill_reason: Mutex::new(None),
            killed: AtomicBool::new(false),
            tail: Mutex::new(Tail::new(cfg.max_stderr_bytes)),
            born: Instant::now(),
            last_output: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            exited: watch::channel(false).0,
            pipes_closed: watch::channel(0).0,
            abandon: CancellationToken::new(),
            reaped: reaped_rx,
        });
        log::debug!(target: "cuda_engine::worker", "started worker {} pid {pid} (slot {})", self.shared.path.display(), self.index);
        tokio::spawn(write_task(rx, stdin, proc.clone()));
        tokio::spawn(read_task(stdout, proc.clone(), cfg.max_output_bytes));
        tokio::spawn(stderr_task(stderr, proc.clone()));
        tokio::spawn(wait_task(child, proc.clone(), self.clone(), reaped_tx));
        Ok(proc)
    }

    fn on_death(self: &Arc<Self>, proc: &Arc<Proc>) {
        {
            let mut cur = self.cur.lock().unwrap();
            if cur.as_ref().is_some_and(|p| Arc::ptr_eq(p, proc)) {
                *cur = None;
            }
        }
        {
            let mut b = self.backoff.lock().unwrap();
            if proc.answered.load(Ordering::Acquire) > 0 {
                b.deaths_in_a_row = 0;
            }
            b.deaths_in_a_row += 1;
            b.last_death = Some(Instant::now());
        }
        if !self.shared.shutdown.load(Ordering::Acquire) {
            // Eager restart: the next job finds a warm worker.
            let slot = self.clone();
            tokio::spawn(async move {
                if let Err(e) = slot.get().await {
                    log::warn!(target: "cuda_engine::worker", "restarting worker (slot {}) failed: {e}", slot.index);
                }
            });
        }
    }
}

async fn write_task(mut rx: mpsc::UnboundedReceiver<Vec<u8>>, stdin: ChildStdin, proc: Arc<Proc>) {
    let mut w = BufWriter::with_capacity(64 * 1024, stdin);
    // A write error ends the loop like a closed channel; the check below
    // tells them apart.
    let _ = protocol::write_batched(&mut rx, &mut w).await;
    if !rx.is_closed() {
        // The pipe broke: usually the worker is exiting (the waiter reports
        // that). One that closed stdin and lives on can get no more jobs.
        let reason = err!(WorkerProtocol, "worker pid {} closed its stdin", proc.pid);
        kill_unless_exiting(&proc, reason).await;
    }
    // Dropping `w` closes stdin: on shutdown that is the worker's cue to exit.
}

/// Give a worker whose pipe closed 250 ms to exit on its own (so the waiter
/// reports its real exit status and stderr); kill it with `reason` if not.
async fn kill_unless_exiting(proc: &Proc, reason: CoreError) {
    let mut exited = proc.exited.subscribe();
    if tokio::time::timeout(Duration::from_millis(250), exited.wait_for(|e| *e)).await.is_err() {
        proc.kill_for(reason);
    }
}

enum ReadErr {
    TooBig(usize),
    Io(std::io::Error),
}

/// One message: a JSON line (without its newline) or a frame (body only).
enum Msg {
    Line(Vec<u8>),
    Frame(protocol::BinaryFormat, Vec<u8>),
}

async fn read_msg(r: &mut BufReader<ChildStdout>, max: usize) -> std::result::Result<Option<Msg>, ReadErr> {
    loop {
        let buf = r.fill_buf().await.map_err(ReadErr::Io)?;
        if buf.is_empty() {
            return Ok(None);
        }
        let first = buf[0];
        if first.is_ascii_whitespace() {
            r.consume(1); // blank lines between messages are allowed
            continue;
        }
        if first == FRAME_TAG {
            let mut h = [0u8; FRAME_HEADER_LEN];
            match r.read_exact(&mut h).await {
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                other => other.map_err(ReadErr::Io)?,
            };
            let (fmt, len) = protocol::parse_frame_header(&h)
                .map_err(|e| ReadErr::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
            if len > max {
                return Err(ReadErr::TooBig(len));
            }
            let mut body = vec![0u8; len];
            match r.read_exact(&mut body).await {
                // A frame cut off by EOF: the worker died mid-write (as above).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                other => other.map_err(ReadErr::Io)?,
            };
            return Ok(Some(Msg::Frame(fmt, body)));
        }
        let mut line = Vec::new();
        loop {
            let buf = r.fill_buf().await.map_err(ReadErr::Io)?;
            if buf.is_empty() {
                // EOF inside a line: every message ends with a newline, so
                // this is a reply cut off by the worker's death (SIGKILL in
                // the middle of a write), not a protocol error. Report it
                // as EOF; the waiter then fails jobs with E_WORKER_EXIT.
                return Ok(None);
            }
            if let Some(i) = buf.iter().position(|b| *b == b'\n') {
                if line.len() + i > max {
                    return Err(ReadErr::TooBig(line.len() + i));
                }
                line.extend_from_slice(&buf[..i]);
                r.consume(i + 1);
                return Ok(Some(Msg::Line(line)));
            }
            let n = buf.len();
            if line.len() + n > max {
                return Err(ReadErr::TooBig(line.len() + n));
            }
            line.extend_from_slice(buf);
            r.consume(n);
        }
    }
}

/// Counts a reader as finished when it returns, however it returns (its
/// pipe is dropped with it).
struct PipeDone<'a>(&'a Proc);

impl Drop for PipeDone<'_> {
    fn drop(&mut self) {
        self.0.pipes_closed.send_modify(|n| *n += 1);
    }
}

async fn read_task(stdout: ChildStdout, proc: Arc<Proc>, max: usize) {
    {
        let _done = PipeDone(&proc);
        let r = BufReader::with_capacity(64 * 1024, stdout);
        tokio::select! {
            _ = read_responses(r, &proc, max) => {}
            _ = proc.abandon.cancelled() => return,
        }
    }
    // EOF: usually the worker is exiting; let the waiter report it with the
    // exit status and stderr. A worker that closed stdout and lives on can
    // never answer again: kill it.
    let reason = err!(WorkerExit, "worker pid {} closed its stdout", proc.pid);
    kill_unless_exiting(&proc, reason).await;
}

/// Completes waiting jobs until EOF, or until a protocol error (which kills
/// the worker: the stream cannot be resynchronised).
async fn read_responses(mut r: BufReader<ChildStdout>, proc: &Proc, max: usize) {
    loop {
        let msg = match read_msg(&mut r, max).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(ReadErr::TooBig(n)) => {
                proc.kill_for(err!(
                    OutputLimit,
                    "worker pid {} wrote a response of {n}+ bytes, over worker.maxOutputBytes = {max}; killed",
                    proc.pid
                ));
                return;
            }
            Err(ReadErr::Io(e)) => {
                proc.kill_for(err!(WorkerProtocol, "reading worker pid {} stdout: {e}", proc.pid));
                return;
            }
        };
        proc.last_output.store(proc.now(), Ordering::Release);
        let parsed = match &msg {
            Msg::Line(l) => protocol::parse_json_response(l).map_err(|why| {
                let n = l.len().min(200);
                format!("{why}: {:?}", String::from_utf8_lossy(&l[..n]))
            }),
            Msg::Frame(fmt, body) => protocol::parse_frame_response(*fmt, body),
        };
        let resp = match parsed {
            Ok(r) => r,
            Err(why) => {
                proc.kill_for(err!(WorkerProtocol, "worker pid {} wrote invalid output: {why}", proc.pid));
                return;
            }
        };
        let Some(id) = resp.id else {
            proc.kill_for(err!(WorkerProtocol, "worker pid {} wrote a response without `id`", proc.pid));
            return;
        };
        let waiter = proc.pending.lock().unwrap().map.remove(&id);
        if let Some(tx) = waiter {
            proc.answered.fetch_add(1, Ordering::AcqRel);
            let _ = tx.send(resp.outcome);
        }
        // Unknown id: the job timed out or was cancelled; drop the late reply.
    }
}

async fn stderr_task(mut stderr: ChildStderr, proc: Arc<Proc>) {
    let _done = PipeDone(&proc);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let read = tokio::select! {
            r = stderr.read(&mut buf) => r,
            _ = proc.abandon.cancelled() => break,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if log::log_enabled!(target: "cuda_engine::worker", log::Level::Debug) {
                    log::debug!(target: "cuda_engine::worker", "[worker pid {}] {}", proc.pid, String::from_utf8_lossy(&buf[..n]).trim_end());
                }
                proc.tail.lock().unwrap().push(&buf[..n]);
            }
        }
    }
}

async fn wait_task(mut child: Child, proc: Arc<Proc>, slot: Arc<Slot>, reaped: watch::Sender<bool>) {
    let status = child.wait().await;
    proc.exited.send_replace(true);
    // Strays in the group could hold the pipes open: kill them first.
    process::kill_group(proc.pgid);
    // Then read what the worker wrote before it exited, to EOF, for at most
    // the grace; a stray outside the group that still holds the pipes is
    // abandoned (the pipes are closed: no fd leaks).
    let mut closed = proc.pipes_closed.subscribe();
    if tokio::time::timeout(POST_EXIT_GRACE, closed.wait_for(|n| *n >= 2)).await.is_err() {
        log::warn!(target: "cuda_engine::worker", "worker pid {} exited but something still holds its pipes after {} ms (a setsid helper?); closing them", proc.pid, POST_EXIT_GRACE.as_millis());
        proc.abandon.cancel();
        let _ = closed.wait_for(|n| *n >= 2).await;
    }
    let reason = proc.kill_reason.lock().unwrap().take();
    let reason = reason.unwrap_or_else(|| {
        let how = match &status {
            Ok(s) => describe_status(s),
            Err(e) => format!("could not be waited for ({e})"),
        };
        let tail = proc.tail.lock().unwrap();
        err!(WorkerExit, "worker pid {} {how} with jobs in flight{}", proc.pid, stderr_suffix(&tail))
    });
    let drained: Vec<_> = {
        let mut p = proc.pending.lock().unwrap();
        p.dead = true;
        p.map.drain().map(|(_, tx)| tx).collect()
    };
    if !drained.is_empty() || !slot.shared.shutdown.load(Ordering::Acquire) {
        log::warn!(target: "cuda_engine::worker", "worker pid {} gone ({} jobs in flight): {reason}", proc.pid, drained.len());
    }
    for tx in drained {
        let _ = tx.send(Err(reason.clone_flat()));
    }
    // No more jobs can reach this process; let the writer finish.
    proc.tx.lock().unwrap().take();
    process::clean_group(proc.pgid, Duration::from_millis(300)).await;
    let _ = reaped.send(true);
    slot.on_death(&proc);
}

/// Removes the job from the in-flight table if its future is dropped or
/// fails, and tells the worker to stop it.
struct JobGuard<'a> {
    proc: &'a Proc,
    id: u64,
    armed: bool,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        if self.armed && self.proc.unregister(self.id) {
            let mut line = format!("{{\"id\":{},\"cancel\":true}}", self.id).into_bytes();
            line.push(b'\n');
            self.proc.send(line);
        }
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(crate) struct Pool {
    slots: Vec<Arc<Slot>>,
    next_id: AtomicU64,
}

impl Pool {
    pub(crate) fn new(shared: &Arc<Shared>) -> Pool {
        let n = shared.cfg.pool_size.max(1);
        let slots = (0..n)
            .map(|index| {
                Arc::new(Slot {
                    index,
                    shared: shared.clone(),
                    cur: Mutex::new(None),
                    start_lock: tokio::sync::Mutex::new(()),
                    backoff: Mutex::new(Backoff::default()),
                    started_once: AtomicBool::new(false),
                    restarts: AtomicU64::new(0),
                    in_flight: AtomicUsize::new(0),
                })
            })
            .collect();
        Pool { slots, next_id: AtomicU64::new(1) }
    }

    pub(crate) fn running(&self) -> bool {
        self.slots.iter().any(|s| s.current().is_some())
    }

    pub(crate) fn restarts(&self) -> u64 {
        self.slots.iter().map(|s| s.restarts.load(Ordering::Acquire)).sum()
    }

    pub(crate) fn pids(&self) -> Vec<u32> {
        self.slots.iter().filter_map(|s| s.current().map(|p| p.pid)).collect()
    }

    pub(crate) async fn run(
        &self,
        env: &Envelope,
        job_type: &str,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(JobOutput, &'static str)> {
        let format = self.slots[0].shared.cfg.binary_format;
        self.run_wire(
            |id| {
                let wire = protocol::encode_request(env, job_type, Some(id), format)?;
                // The writer task needs an owned buffer: raw payloads are
                // copied once here (JSON payloads were serialized straight
                // into `head`).
                let mut frame = wire.head;
                frame.extend_from_slice(wire.body);
                Ok(frame)
            },
            timeout,
            cancel,
        )
        .await
    }

    /// Run one request that `build` encodes for the wire id it is given (a
    /// whole line or frame), under the same supervision as [`Pool::run`].
    pub(crate) async fn run_wire(
        &self,
        build: impl FnOnce(u64) -> Result<Vec<u8>>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(JobOutput, &'static str)> {
        // Least-loaded slot; ties go to the lowest index, so a pool keeps
        // one worker warm under light load.
        let slot =
            self.slots.iter().min_by_key(|s| s.in_flight.load(Ordering::Acquire)).expect("pool has slots").clone();
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in = InFlight(&slot.in_flight);

        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let timed_out = |what: &str| {
            err!(
                WorkerTimeout,
                "worker {} did not answer within {} ms ({what})",
                slot.shared.path.display(),
                timeout.as_millis()
            )
        };

        let proc = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(CoreError::cancelled()),
            _ = &mut deadline => return Err(timed_out("waiting for the worker to start")),
            p = slot.get() => p?,
        };
        let id = self.next_id.fetch_add(1, Ordering::AcqRel);
        let frame = build(id)?;
        let rx = proc.register(id)?;
        let mut guard = JobGuard { proc: &proc, id, armed: true };
        let sent_at = proc.now();
        if !proc.send(frame) {
            guard.armed = false;
            proc.unregister(id);
            return Err(err!(WorkerExit, "worker pid {} is exiting; the job was not sent", proc.pid));
        }
        tokio::select! {
            biased;
            r = rx => {
                guard.armed = false;
                let outcome = match r {
                    Ok(outcome) => outcome,
                    Err(_) => Err(err!(WorkerExit, "worker pid {} went away with the job in flight", proc.pid)),
                };
                if let Err(e) = &outcome {
                    if e.code == ErrorCode::CudaFault && slot.shared.cfg.recycle_on_cuda_fault {
                        // A sticky fault poisons the process's CUDA context
                        // for good: replace the process. Its other jobs in
                        // flight fail with this code too.
                        proc.kill_for(err!(
                            CudaFault,
                            "worker pid {} reported a sticky CUDA fault and was restarted ({})",
                            proc.pid,
                            e.message
                        ));
                    }
                }
                outcome
            }
            _ = cancel.cancelled() => Err(CoreError::cancelled()),
            _ = &mut deadline => {
                // Silent since this job was sent: the worker is hung, not
                // busy. Kill it so the jobs behind this one are not stuck too.
                if proc.last_output.load(Ordering::Acquire) <= sent_at {
                    proc.kill_for(err!(
                        WorkerTimeout,
                        "worker pid {} wrote nothing for {} ms with jobs in flight; killed and restarted",
                        proc.pid, timeout.as_millis()
                    ));
                }
                Err(timed_out("the job was cancelled in the worker"))
            }
        }
    }

    /// Start the first slot's process now (in the background) so the first
    /// job finds it warm. Needs a tokio runtime; without one it does nothing.
    pub(crate) fn warm(&self) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
        let slot = self.slots[0].clone();
        handle.spawn(async move {
            if let Err(e) = slot.get().await {
                log::warn!(target: "cuda_engine::worker", "starting worker (slot {}) failed: {e}", slot.index);
            }
        });
    }

    /// Close every worker's stdin (their cue to exit), give them `grace`,
    /// then kill their groups; returns once all are reaped.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let mut procs = Vec::new();
        for slot in &self.slots {
            let _g = slot.start_lock.lock().await; // no start races the flag
            if let Some(p) = slot.cur.lock().unwrap().take() {
                procs.push(p);
            }
        }
        for p in &procs {
            p.tx.lock().unwrap().take();
        }
        for p in &procs {
            let mut rx = p.reaped.clone();
            let graceful = tokio::time::timeout(grace, rx.wait_for(|r| *r)).await.is_ok();
            if !graceful {
                p.kill_for(err!(WorkerExit, "worker pid {} did not exit on shutdown; killed", p.pid));
                let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|r| *r)).await;
            }
        }
    }

    /// Synchronous last resort (Worker dropped without `shutdown`).
    pub(crate) fn kill_all(&self) {
        for slot in &self.slots {
            if let Some(p) = slot.cur.lock().unwrap().as_ref() {
                process::kill_group(p.pgid);
            }
        }
    }
}
