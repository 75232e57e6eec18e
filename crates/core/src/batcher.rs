//! The batching queue: an actor on its own OS thread that merges concurrent
//! embed calls into packed batches and runs them on a [`Backend`].
//!
//! Modelled on text-embeddings-inference `core/src/queue.rs`: callers send
//! already-tokenized requests through a channel; the actor drains everything
//! that arrived, fills one batch up to a token budget in arrival order, runs
//! it, answers finished requests, and loops. While a batch computes, new
//! requests accumulate, so load turns into bigger batches by itself (dynamic
//! batching) with no timer.
//!
//! Limits (all in [`BatcherLimits`]):
//! - `max_batch_tokens`: tokens per forward pass, all sequences together.
//!   Sequences are packed (no padding), so a batch costs what its tokens
//!   cost: long and short texts share a batch without padding waste. A
//!   request may be split over several batches; one sequence is never split
//!   (the budget is raised to at least the model's max tokens).
//! - `max_batch_seqs`: sequences per forward pass.
//! - `max_queued_texts`: texts accepted but not yet computing. A request that
//!   would exceed it is rejected at once with `E_OVERLOADED` (back-pressure
//!   instead of unbounded memory and latency).
//!
//! Cancelled requests (their `CancellationToken` fired, or the caller
//! dropped the future) are skipped before each batch is formed; texts of a
//! cancelled request already inside a running batch finish and are dropped.
//!
//! Failure: the forward call runs under `catch_unwind`; an error or a panic
//! fails exactly the requests that had texts in that batch (a panic becomes
//! `E_INTERNAL`). If the actor thread itself ever died, every pending reply
//! channel would be dropped and callers get `E_INTERNAL`, never a hang.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::backend::{Backend, TokenBatch};
use crate::err;
use crate::error::{CoreError, Result};
use crate::metrics::{PassMetrics, RunBackend};
use crate::model::tokenizer::Encoded;

/// Queue limits; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatcherLimits {
    pub max_batch_tokens: usize,
    pub max_batch_seqs: usize,
    pub max_queued_texts: usize,
}

impl Default for BatcherLimits {
    fn default() -> Self {
        // 16,384 tokens is TEI's default budget; on the CPU it keeps the
        // activations of one batch near 100 MB (FFN: tokens × 1536 × 4 B).
        BatcherLimits { max_batch_tokens: 16_384, max_batch_seqs: 1_024, max_queued_texts: 65_536 }
    }
}

/// Queue occupancy, for health.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// Texts accepted and waiting (not yet in a running batch).
    pub depth: usize,
    /// Texts inside the batch that is computing now.
    pub in_flight: usize,
}

/// The pooled, not yet normalized vector of each text of a request, in
/// request order.
pub type BatchReply = Result<Vec<Vec<f32>>>;

/// [`Batcher::submit_tensors`]' answer.
#[derive(Debug, Default)]
pub struct BatchOutput {
    /// Per sequence, in request order, the pooled (not normalized) vector.
    pub pooled: Vec<Vec<f32>>,
    /// The last hidden state rows (`[len, hidden]` row-major; empty unless asked for).
    pub hidden: Vec<Vec<f32>>,
    /// How long the request waited in the queue before its first batch ran.
    pub queued: Duration,
}

pub type TensorReply = Result<BatchOutput>;

/// A request's progress: called on the batcher thread with (texts
/// computed, texts in the request) after each pass that computed some of
/// them, the last call possibly with both equal. It must not block (the
/// binding queues a JS call without waiting, or drops it).
pub type Progress = Arc<dyn Fn(usize, usize) + Send + Sync>;

struct Request {
    seqs: Vec<Encoded>,
    /// The tensor API (`infer`) asked for the last hidden state: the batch
    /// this request's sequences land in runs with `want_last_hidden`, and
    /// their rows are copied out. Other requests in that batch are unaffected.
    want_hidden: bool,
    cancel: CancellationToken,
    reply: oneshot::Sender<TensorReply>,
    /// When the request was sent (for `BatchOutput::queued`).
    sent: Instant,
    progress: Option<Progress>,
}

struct Counters {
    depth: AtomicUsize,
    in_flight: AtomicUsize,
}

/// Handle to the actor. Dropping it stops the actor once queued work is done.
pub struct Batcher {
    tx: mpsc::Sender<Request>,
    counters: Arc<Counters>,
    limits: BatcherLimits,
}

impl Batcher {
    /// Start the actor thread. `max_seq_len` is the model's token limit per
    /// sequence (the token budget is raised to at least that).
    pub fn start(backend: Arc<dyn Backend>, limits: BatcherLimits, max_seq_len: usize) -> Result<Batcher> {
        Self::start_metered(backend, limits, max_seq_len, Arc::default())
    }

    /// [`Batcher::start`], recording every forward pass (sequences, tokens)
    /// into `passes` (the engine's metrics).
    pub fn start_metered(
        backend: Arc<dyn Backend>,
        mut limits: BatcherLimits,
        max_seq_len: usize,
        passes: Arc<PassMetrics>,
    ) -> Result<Batcher> {
        limits.max_batch_tokens = limits.max_batch_tokens.max(max_seq_len).max(1);
        limits.max_batch_seqs = limits.max_batch_seqs.max(1);
        limits.max_queued_texts = limits.max_queued_texts.max(1);
        let (tx, rx) = mpsc::channel::<Request>();
        let counters = Arc::new(Counters { depth: AtomicUsize::new(0), in_flight: AtomicUsize::new(0) });
        let kind = RunBackend::of_model(backend.name());
        let actor = Actor { rx, backend, kind, limits, counters: counters.clone(), queue: VecDeque::new(), passes };
        std::thread::Builder::new()
            .name("cuda-engine-batcher".into())
            .spawn(move || actor.run())
            .map_err(|e| err!(Internal, "cannot start the batcher thread: {e}"))?;
        Ok(Batcher { tx, counters, limits })
    }

    /// The effective limits.
    pub fn limits(&self) -> BatcherLimits {
        self.limits
    }

    /// Current occupancy.
    pub fn stats(&self) -> QueueStats {
        QueueStats {
            depth: self.counters.depth.load(Ordering::Relaxed),
            in_flight: self.counters.in_flight.load(Ordering::Relaxed),
        }
    }

    /// Queue tokenized texts and wait for their pooled vectors (request
    /// order). `E_OVERLOADED` when the queue is full, `E_CANCELLED` when
    /// `cancel` fires first.
    pub async fn submit(&self, seqs: Vec<Encoded>, cancel: CancellationToken) -> BatchReply {
        self.submit_tensors(seqs, false, cancel).await.map(|out| out.pooled)
    }

    /// Like [`Batcher::submit`], and with `want_hidden` also each sequence's
    /// last hidden state (for `infer`'s `last_hidden_state`).
    pub async fn submit_tensors(
        &self,
        seqs: Vec<Encoded>,
        want_hidden: bool,
        cancel: CancellationToken,
    ) -> TensorReply {
        self.submit_with_progress(seqs, want_hidden, cancel, None).await
    }

    /// [`Batcher::submit_tensors`], reporting the texts computed after each
    /// pass to `progress`.
    pub async fn submit_with_progress(
        &self,
        seqs: Vec<Encoded>,
        want_hidden: bool,
        cancel: CancellationToken,
        progress: Option<Progress>,
    ) -> TensorReply {
        let n = seqs.len();
        if n == 0 {
            return Ok(BatchOutput::default());
        }
        if cancel.is_cancelled() {
            return Err(CoreError::cancelled());
        }
        let max = self.limits.max_queued_texts;
        self.counters
            .depth
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |d| (d + n <= max).then_some(d + n))
            .map_err(|d| {
                err!(
                    Overloaded,
                    "embedding queue is full: {d} texts waiting, this call adds {n}, limit {max} (maxQueuedTexts)"
                )
            })?;
        let (reply, rx) = oneshot::channel();
        let req = Request { seqs, want_hidden, cancel: cancel.clone(), reply, sent: Instant::now(), progress };
        if self.tx.send(req).is_err() {
            self.counters.depth.fetch_sub(n, Ordering::AcqRel);
            return Err(err!(Internal, "the embedding batcher has stopped"));
        }
        tokio::select! {
            r = rx => r.unwrap_or_else(|_| Err(err!(Internal, "the embedding batcher dropped the request (it stopped or panicked)"))),
            _ = cancel.cancelled() => Err(CoreError::cancelled()),
        }
    }
}

struct Pending {
    req: Request,
    /// Next sequence to put in a batch.
    next: usize,
    /// Sequences computed so far.
    done: usize,
    out: Vec<Vec<f32>>,
    /// Last hidden state rows per sequence (filled only when `want_hidden`).
    hidden: Vec<Vec<f32>>,
    failed: bool,
    /// Queue wait until the first of its sequences entered a batch.
    queued: Option<Duration>,
}

struct Actor {
    rx: mpsc::Receiver<Request>,
    backend: Arc<dyn Backend>,
    /// The backend's metrics label.
    kind: RunBackend,
    passes: Arc<PassMetrics>,
    limits: BatcherLimits,
    counters: Arc<Counters>,
    queue: VecDeque<Pending>,
}

impl Actor {
    fn push(&mut self, req: Request) {
        let n = req.seqs.len();
        self.queue.push_back(Pending {
            req,
            next: 0,
            done: 0,
            out: vec![Vec::new(); n],
            hidden: vec![Vec::new(); n],
            failed: false,
            queued: None,
        });
    }

    fn run(mut self) {
        loop {
            if self.queue.is_empty() {
                match self.rx.recv() {
                    Ok(r) => self.push(r),
                    Err(_) => return, // every Batcher handle is gone and nothing is queued
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.push(r);
            }
            self.drop_cancelled();
            self.run_one_batch();
        }
    }

    /// Remove requests whose caller gave up, releasing their queue slots.
    fn drop_cancelled(&mut self) {
        let counters = &self.counters;
        self.queue.retain_mut(|p| {
            let gone = p.req.cancel.is_cancelled() || p.req.reply.is_closed();
            if gone {
                counters.depth.fetch_sub(p.req.seqs.len() - p.next, Ordering::AcqRel);
            }
            !gone
        });
    }

    fn run_one_batch(&mut self) {
        let mut batch = TokenBatch::new();
        // (queue index, sequence index) of each batch row.
        let mut owners: Vec<(usize, usize)> = Vec::new();
        let mut tokens = 0usize;
        let mut want_hidden = false;
        'fill: for (qi, p) in self.queue.iter_mut().enumerate() {
            while p.next < p.req.seqs.len() {
                let s = &p.req.seqs[p.next];
                let len = s.ids.len();
                if !owners.is_empty()
                    && (tokens + len > self.limits.max_batch_tokens || owners.len() >= self.limits.max_batch_seqs)
                {
                    break 'fill;
                }
                batch.push(&s.ids, &s.type_ids);
                want_hidden |= p.req.want_hidden;
                p.queued.get_or_insert_with(|| p.req.sent.elapsed());
                owners.push((qi, p.next));
                p.next += 1;
                tokens += len;
            }
        }
        if owners.is_empty() {
            return;
        }
        let n = owners.len();
        self.passes.record_pass(self.kind, n, tokens);
        self.counters.depth.fetch_sub(n, Ordering::AcqRel);
        self.counters.in_flight.fetch_add(n, Ordering::AcqRel);
        let backend = &self.backend;
        let result = catch_unwind(AssertUnwindSafe(|| backend.forward(&batch, want_hidden)))
            .unwrap_or_else(|p| Err(CoreError::from_panic(p, "embedding backend")));
        self.counters.in_flight.fetch_sub(n, Ordering::AcqRel);

        match result {
            Ok(out)
                if out.pooled.len() == n * out.hidden
                    && (!want_hidden
                        || out.last_hidden.as_ref().is_some_and(|x| x.len() == batch.total_tokens() * out.hidden)) =>
            {
                for (row, &(qi, si)) in owners.iter().enumerate() {
                    if let Some(p) = self.queue.get_mut(qi) {
                        p.out[si] = out.pooled[row * out.hidden..(row + 1) * out.hidden].to_vec();
                        if p.req.want_hidden {
                            if let Some(lh) = &out.last_hidden {
                                let r = batch.seq_range(row);
                                p.hidden[si] = lh[r.start * out.hidden..r.end * out.hidden].to_vec();
                            }
                        }
                        p.done += 1;
                    }
                }
                self.report_progress(&owners);
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(out) => err!(
                        Internal,
                        "backend returned {} pooled values for {n} sequences (last hidden state: {:?} values, asked: {want_hidden})",
                        out.pooled.len(),
                        out.last_hidden.as_ref().map(Vec::len)
                    ),
                };
                let mut failed: Vec<usize> = owners.iter().map(|&(qi, _)| qi).collect();
                failed.dedup();
                for qi in failed {
                    if let Some(p) = self.queue.get_mut(qi) {
                        if !p.failed {
                            p.failed = true;
                            let (tx, _) = oneshot::channel();
                            let reply = std::mem::replace(&mut p.req.reply, tx);
                            let _ = reply.send(Err(e.clone_flat()));
                        }
                    }
                }
            }
        }
        self.finish();
    }

    /// Tell each request with texts in this batch how many are computed.
    /// `owners` is in queue order, so each request's rows are adjacent. A
    /// panicking callback is the caller's bug; it must not stop the actor.
    fn report_progress(&self, owners: &[(usize, usize)]) {
        let mut last = None;
        for &(qi, _) in owners {
            if last == Some(qi) {
                continue;
            }
            last = Some(qi);
            if let Some(p) = self.queue.get(qi) {
                if let Some(f) = &p.req.progress {
                    let (done, total) = (p.done, p.req.seqs.len());
                    let _ = catch_unwind(AssertUnwindSafe(|| f(done, total)));
                }
            }
        }
    }

    /// Answer finished requests and drop failed ones.
    fn finish(&mut self) {
        let counters = &self.counters;
        let mut i = 0;
        while i < self.queue.len() {
            let (complete, failed) = {
                let p = &self.queue[i];
                (p.done == p.req.seqs.len(), p.failed)
            };
            if complete || failed {
                if let Some(p) = self.queue.remove(i) {
                    if failed {
                        counters.depth.fetch_sub(p.req.seqs.len() - p.next, Ordering::AcqRel);
                    } else {
                        let queued = p.queued.unwrap_or_default();
                        let _ = p.req.reply.send(Ok(BatchOutput { pooled: p.out, hidden: p.hidden, queued }));
                    }
                }
            } else {
                i += 1;
            }
        }
    }
}
