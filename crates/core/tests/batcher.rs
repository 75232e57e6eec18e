//! The batching queue (`batcher::Batcher`) driven by a fake backend: no model
//! file, no CPU math. The fake derives each sequence's pooled vector from its
//! token ids (`[sum of ids, len, first id]`), so every caller's answer can be
//! checked, records every pass (the token ids of each sequence), can hold a
//! pass inside `forward` until the test releases it (so requests queue up
//! behind a running batch), and can be told to fail, panic or return a
//! malformed output on a given pass.
//!
//! The tests run on a current-thread runtime: spawned callers only run when
//! the test task awaits, so once the test sees `stats().depth` reach a value,
//! every caller counted in it has also sent its request to the actor.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use cuda_engine_core::backend::{Backend, ForwardOutput, TokenBatch};
use cuda_engine_core::batcher::{BatchOutput, Batcher, BatcherLimits};
use cuda_engine_core::model::tokenizer::Encoded;
use cuda_engine_core::{err, ErrorCode, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Row length of the fake's outputs.
const HIDDEN: usize = 3;
/// How long a wait for the actor may take before the test fails.
const WAIT: Duration = Duration::from_secs(3);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Ok,
    /// Return `E_CUDA_FAULT`.
    Fail,
    /// Panic inside `forward`.
    Panic,
    /// Return one pooled row too few.
    BadShape,
}

struct State {
    /// Per pass (in call order), the token ids of each sequence.
    batches: Vec<Vec<Vec<u32>>>,
    /// Per pass, whether the last hidden state was asked for.
    wanted_hidden: Vec<bool>,
    /// Pass `i` waits inside `forward` while `i >= allowed`.
    allowed: usize,
    /// Passes that returned (or panicked).
    finished: usize,
    modes: HashMap<usize, Mode>,
}

struct Fake {
    state: Mutex<State>,
    cv: Condvar,
}

impl Fake {
    /// Passes run at once.
    fn open() -> Arc<Fake> {
        Fake::with_allowed(usize::MAX)
    }

    /// Every pass waits until [`Fake::release`] lets it through.
    fn gated() -> Arc<Fake> {
        Fake::with_allowed(0)
    }

    fn with_allowed(allowed: usize) -> Arc<Fake> {
        Arc::new(Fake {
            state: Mutex::new(State {
                batches: Vec::new(),
                wanted_hidden: Vec::new(),
                allowed,
                finished: 0,
                modes: HashMap::new(),
            }),
            cv: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Let passes `0..passes` complete.
    fn release(&self, passes: usize) {
        self.lock().allowed = passes;
        self.cv.notify_all();
    }

    fn release_all(&self) {
        self.release(usize::MAX);
    }

    fn set_mode(&self, pass: usize, mode: Mode) {
        self.lock().modes.insert(pass, mode);
    }

    fn batches(&self) -> Vec<Vec<Vec<u32>>> {
        self.lock().batches.clone()
    }

    fn passes(&self) -> usize {
        self.lock().batches.len()
    }

    /// (sequences, tokens) of each pass.
    fn shapes(&self) -> Vec<(usize, usize)> {
        self.lock().batches.iter().map(|b| (b.len(), b.iter().map(Vec::len).sum())).collect()
    }

    /// Every token id that reached the backend.
    fn all_ids(&self) -> Vec<u32> {
        self.lock().batches.iter().flatten().flatten().copied().collect()
    }

    /// Wait (without blocking the runtime) until `n` passes have entered `forward`.
    async fn wait_entered(&self, n: usize) {
        let t0 = Instant::now();
        while self.passes() < n {
            assert!(t0.elapsed() < WAIT, "backend saw {} passes, waited for {n}", self.passes());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl Backend for Fake {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn forward(&self, batch: &TokenBatch, want_last_hidden: bool) -> Result<ForwardOutput> {
        // The batcher must hand over a well-formed packed batch.
        batch.validate(u32::MAX as usize, 2, 1 << 20)?;
        let seqs: Vec<Vec<u32>> = (0..batch.n_seqs()).map(|s| batch.input_ids[batch.seq_range(s)].to_vec()).collect();
        let (pass, mode) = {
            let mut st = self.lock();
            let pass = st.batches.len();
            st.batches.push(seqs.clone());
            st.wanted_hidden.push(want_last_hidden);
            self.cv.notify_all();
            while pass >= st.allowed {
                st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            st.finished += 1;
            (pass, st.modes.get(&pass).copied().unwrap_or(Mode::Ok))
        };
        match mode {
            Mode::Ok | Mode::BadShape => {}
            Mode::Fail => return Err(err!(CudaFault, "fake fault on pass {pass}")),
            Mode::Panic => panic!("fake panic on pass {pass}"),
        }
        let mut pooled: Vec<f32> = seqs.iter().flat_map(|ids| expected(ids)).collect();
        if mode == Mode::BadShape {
            pooled.truncate(pooled.len() - HIDDEN);
        }
        let last_hidden = want_last_hidden.then(|| {
            batch
                .input_ids
                .iter()
                .zip(&batch.position_ids)
                .flat_map(|(&id, &pos)| [id as f32, pos as f32, 7.0])
                .collect()
        });
        Ok(ForwardOutput { pooled, last_hidden, hidden: HIDDEN })
    }
}

/// The fake's pooled vector for a sequence.
fn expected(ids: &[u32]) -> Vec<f32> {
    vec![ids.iter().map(|&i| i as f32).sum(), ids.len() as f32, ids.first().map_or(-1.0, |&i| i as f32)]
}

fn enc(ids: &[u32]) -> Encoded {
    Encoded { ids: ids.to_vec(), type_ids: vec![0; ids.len()] }
}

/// A sequence of `len` tokens whose ids start at `first` (distinct per test
/// request, so the batches show whose texts they carry).
fn seq(first: u32, len: usize) -> Vec<u32> {
    (first..first + len as u32).collect()
}

fn limits(max_batch_tokens: usize, max_batch_seqs: usize, max_queued_texts: usize) -> BatcherLimits {
    BatcherLimits { max_batch_tokens, max_batch_seqs, max_queued_texts }
}

fn start(fake: &Arc<Fake>, limits: BatcherLimits, max_seq_len: usize) -> Arc<Batcher> {
    Arc::new(Batcher::start(fake.clone(), limits, max_seq_len).unwrap())
}

/// Submit `seqs` from a spawned task.
fn spawn_submit(b: &Arc<Batcher>, seqs: Vec<Vec<u32>>, cancel: CancellationToken) -> JoinHandle<Result<BatchOutput>> {
    let b = b.clone();
    tokio::spawn(async move { b.submit_tensors(seqs.iter().map(|s| enc(s)).collect(), false, cancel).await })
}

/// Wait until the queue holds `n` texts that are not computing.
async fn wait_depth(b: &Batcher, n: usize) {
    let t0 = Instant::now();
    while b.stats().depth != n {
        assert!(t0.elapsed() < WAIT, "queue depth {:?}, waited for {n}", b.stats());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn check_vectors(got: &[Vec<f32>], seqs: &[Vec<u32>]) {
    assert_eq!(got.len(), seqs.len());
    for (i, (g, s)) in got.iter().zip(seqs).enumerate() {
        assert_eq!(g, &expected(s), "vector {i}");
    }
}

#[tokio::test]
async fn one_request_round_trips_and_empty_request_skips_the_backend() {
    let fake = Fake::open();
    let b = start(&fake, BatcherLimits::default(), 512);
    let seqs = vec![seq(1, 3), seq(10, 1), seq(20, 5)];
    let out = b.submit(seqs.iter().map(|s| enc(s)).collect(), CancellationToken::new()).await.unwrap();
    check_vectors(&out, &seqs);
    assert_eq!(fake.shapes(), vec![(3, 9)]);
    assert!(b.submit(Vec::new(), CancellationToken::new()).await.unwrap().is_empty());
    assert_eq!(fake.passes(), 1, "an empty request reaches no backend");
    assert_eq!(b.stats().depth, 0);
    assert_eq!(b.stats().in_flight, 0);
}

#[tokio::test]
async fn concurrent_submits_behind_a_running_batch_merge_into_one_pass() {
    let fake = Fake::gated();
    let b = start(&fake, BatcherLimits::default(), 512);
    let first = spawn_submit(&b, vec![seq(1, 2)], CancellationToken::new());
    fake.wait_entered(1).await;
    assert_eq!(b.stats().in_flight, 1);
    let inputs: Vec<Vec<u32>> = (0..50).map(|i| seq(1000 + 100 * i, 1 + (i as usize % 7))).collect();
    let handles: Vec<_> = inputs.iter().map(|s| spawn_submit(&b, vec![s.clone()], CancellationToken::new())).collect();
    wait_depth(&b, 50).await;
    assert_eq!(fake.passes(), 1, "nothing runs while the first pass is held");
    fake.release_all();
    check_vectors(&first.await.unwrap().unwrap().pooled, &[seq(1, 2)]);
    for (h, s) in handles.into_iter().zip(&inputs) {
        check_vectors(&h.await.unwrap().unwrap().pooled, std::slice::from_ref(s));
    }
    let batches = fake.batches();
    assert_eq!(batches.len(), 2, "1 + 50 texts take 1 + 1 passes");
    assert_eq!(batches[0], vec![seq(1, 2)]);
    assert_eq!(batches[1], inputs, "the merged pass keeps arrival order");
    assert_eq!(b.stats().depth, 0);
}

#[tokio::test]
async fn token_and_sequence_budgets_split_a_large_request_in_order() {
    let fake = Fake::open();
    // max_seq_len 1 leaves the token budget at 20.
    let b = start(&fake, limits(20, 3, 1000), 1);
    assert_eq!(b.limits(), limits(20, 3, 1000));
    let seqs: Vec<Vec<u32>> = (0..40).map(|i| seq(1 + 10 * i, 1 + (i as usize * 5) % 9)).collect();
    let out = b.submit(seqs.iter().map(|s| enc(s)).collect(), CancellationToken::new()).await.unwrap();
    check_vectors(&out, &seqs);
    let batches = fake.batches();
    assert!(batches.len() > 40 / 3, "{} passes", batches.len());
    for (i, (n, t)) in fake.shapes().into_iter().enumerate() {
        assert!(n <= 3, "pass {i} has {n} sequences");
        assert!(t <= 20, "pass {i} has {t} tokens");
    }
    // Packed greedily in arrival order: the passes concatenated are the
    // request, and each pass stopped only because the next sequence did not fit.
    let flat: Vec<Vec<u32>> = batches.iter().flatten().cloned().collect();
    assert_eq!(flat, seqs);
    let mut at = 0;
    for (i, batch) in batches.iter().enumerate() {
        at += batch.len();
        if let Some(next) = seqs.get(at) {
            let t: usize = batch.iter().map(Vec::len).sum();
            assert!(batch.len() == 3 || t + next.len() > 20, "pass {i} ({t} tokens) left room for {}", next.len());
        }
    }
}

#[tokio::test]
async fn budget_is_raised_to_max_seq_len_and_a_longer_sequence_runs_alone() {
    let fake = Fake::open();
    let b = start(&fake, limits(4, 100, 100), 8);
    assert_eq!(b.limits().max_batch_tokens, 8, "the budget is raised to max_seq_len");
    // 6-token sequences: one per pass (6 + 6 > 8). The 12-token one exceeds
    // even the raised budget (the batcher does not check max_seq_len): it
    // runs alone, never split. The short ones after it pack together again.
    let seqs = vec![seq(1, 6), seq(100, 6), seq(200, 12), seq(300, 2), seq(400, 3), seq(500, 3)];
    let out = b.submit(seqs.iter().map(|s| enc(s)).collect(), CancellationToken::new()).await.unwrap();
    check_vectors(&out, &seqs);
    assert_eq!(fake.shapes(), vec![(1, 6), (1, 6), (1, 12), (3, 8)]);
}

#[tokio::test]
async fn limits_of_zero_are_raised_to_one() {
    let fake = Fake::open();
    let b = start(&fake, limits(0, 0, 0), 0);
    assert_eq!(b.limits(), limits(1, 1, 1));
    let out = b.submit(vec![enc(&seq(5, 4))], CancellationToken::new()).await.unwrap();
    check_vectors(&out, &[seq(5, 4)]);
    let e = b.submit(vec![enc(&[1]), enc(&[2])], CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Overloaded);
}

#[tokio::test]
async fn cancelled_or_dropped_requests_in_the_queue_never_reach_the_backend() {
    let fake = Fake::gated();
    let b = start(&fake, BatcherLimits::default(), 512);
    let first = spawn_submit(&b, vec![seq(1, 2)], CancellationToken::new());
    fake.wait_entered(1).await;

    let cancel = CancellationToken::new();
    let cancelled = spawn_submit(&b, vec![seq(100, 3), seq(110, 3)], cancel.clone());
    let kept = spawn_submit(&b, vec![seq(200, 4)], CancellationToken::new());
    let dropped = spawn_submit(&b, vec![seq(300, 2)], CancellationToken::new());
    wait_depth(&b, 4).await;

    // The token answers at once, while the backend is still held.
    cancel.cancel();
    let e = cancelled.await.unwrap().unwrap_err();
    assert_eq!(e.code, ErrorCode::Cancelled);
    // Dropping the caller's future (abort drops it) closes its reply channel.
    dropped.abort();
    assert!(dropped.await.unwrap_err().is_cancelled());
    assert_eq!(fake.passes(), 1);

    fake.release_all();
    check_vectors(&first.await.unwrap().unwrap().pooled, &[seq(1, 2)]);
    check_vectors(&kept.await.unwrap().unwrap().pooled, &[seq(200, 4)]);
    assert_eq!(fake.batches(), vec![vec![seq(1, 2)], vec![seq(200, 4)]]);
    let ids = fake.all_ids();
    assert!(!ids.iter().any(|&i| (100..120).contains(&i) || (300..310).contains(&i)), "{ids:?}");
    // Their queue slots are released.
    wait_depth(&b, 0).await;

    // Already cancelled before submitting: E_CANCELLED, nothing queued.
    let gone = CancellationToken::new();
    gone.cancel();
    assert_eq!(b.submit(vec![enc(&[9])], gone).await.unwrap_err().code, ErrorCode::Cancelled);
    assert_eq!(fake.passes(), 2);
}

#[tokio::test]
async fn cancelling_a_split_request_skips_its_remaining_texts() {
    let fake = Fake::gated();
    let b = start(&fake, limits(1000, 1, 100), 8);
    let cancel = CancellationToken::new();
    let split = spawn_submit(&b, vec![seq(10, 2), seq(20, 2), seq(30, 2)], cancel.clone());
    fake.wait_entered(1).await;
    assert_eq!(b.stats(), cuda_engine_core::batcher::QueueStats { depth: 2, in_flight: 1 });
    let other = spawn_submit(&b, vec![seq(40, 2)], CancellationToken::new());
    wait_depth(&b, 3).await;
    cancel.cancel();
    assert_eq!(split.await.unwrap().unwrap_err().code, ErrorCode::Cancelled);
    fake.release_all();
    check_vectors(&other.await.unwrap().unwrap().pooled, &[seq(40, 2)]);
    // The text already in the held pass ran; the other two never did.
    assert_eq!(fake.batches(), vec![vec![seq(10, 2)], vec![seq(40, 2)]]);
    wait_depth(&b, 0).await;
}

#[tokio::test]
async fn a_full_queue_rejects_at_once_and_frees_its_slots_after_the_batch() {
    let fake = Fake::gated();
    let b = start(&fake, limits(1000, 1000, 4), 8);
    // Larger than the whole queue: rejected even when idle.
    let e = b.submit((0..5).map(|i| enc(&[i + 1])).collect(), CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Overloaded);
    assert!(e.message.contains("limit 4"), "{}", e.message);

    // Texts in the running batch do not count against the queue.
    let running = spawn_submit(&b, vec![seq(1, 1), seq(2, 1)], CancellationToken::new());
    fake.wait_entered(1).await;
    assert_eq!(b.stats(), cuda_engine_core::batcher::QueueStats { depth: 0, in_flight: 2 });
    let three = spawn_submit(&b, vec![seq(10, 1), seq(11, 1), seq(12, 1)], CancellationToken::new());
    wait_depth(&b, 3).await;

    let t0 = Instant::now();
    let e = b.submit(vec![enc(&[20]), enc(&[21])], CancellationToken::new()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Overloaded);
    assert!(t0.elapsed() < Duration::from_millis(500), "rejection waited {:?}", t0.elapsed());
    assert_eq!(b.stats().depth, 3, "a rejected request takes no slot");
    let fourth = spawn_submit(&b, vec![seq(30, 1)], CancellationToken::new());
    wait_depth(&b, 4).await;
    assert_eq!(b.submit(vec![enc(&[40])], CancellationToken::new()).await.unwrap_err().code, ErrorCode::Overloaded);

    fake.release_all();
    check_vectors(&running.await.unwrap().unwrap().pooled, &[seq(1, 1), seq(2, 1)]);
    check_vectors(&three.await.unwrap().unwrap().pooled, &[seq(10, 1), seq(11, 1), seq(12, 1)]);
    check_vectors(&fourth.await.unwrap().unwrap().pooled, &[seq(30, 1)]);
    assert_eq!(b.stats(), cuda_engine_core::batcher::QueueStats::default());
    // The slots are free again: a full-size request is accepted.
    let seqs: Vec<Vec<u32>> = (0..4).map(|i| seq(50 + 10 * i, 2)).collect();
    check_vectors(&b.submit(seqs.iter().map(|s| enc(s)).collect(), CancellationToken::new()).await.unwrap(), &seqs);
    let ids = fake.all_ids();
    assert!(!ids.iter().any(|&i| (20..22).contains(&i) || i == 40), "rejected texts ran: {ids:?}");
}

/// Pass 0 holds A; B (2 texts), C (3 texts), D, E queue behind it; with two
/// sequences per pass the passes are [A] [B0 B1] [C0 C1] [C2 D] [E].
async fn run_with_failing_pass(mode: Mode, failing_pass: usize) -> (Vec<Result<BatchOutput>>, Arc<Fake>) {
    let fake = Fake::gated();
    fake.set_mode(failing_pass, mode);
    let b = start(&fake, limits(1000, 2, 100), 8);
    let reqs = [
        vec![seq(10, 1)],
        vec![seq(20, 1), seq(21, 1)],
        vec![seq(30, 1), seq(31, 1), seq(32, 1)],
        vec![seq(40, 1)],
        vec![seq(50, 1)],
    ];
    let mut handles = vec![spawn_submit(&b, reqs[0].clone(), CancellationToken::new())];
    fake.wait_entered(1).await;
    handles.extend(reqs[1..].iter().map(|r| spawn_submit(&b, r.clone(), CancellationToken::new())));
    wait_depth(&b, 7).await;
    fake.release_all();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    let expected_batches = [
        vec![seq(10, 1)],
        vec![seq(20, 1), seq(21, 1)],
        vec![seq(30, 1), seq(31, 1)],
        vec![seq(32, 1), seq(40, 1)],
        vec![seq(50, 1)],
    ];
    // A request that failed is dropped from the queue: its later texts do not run.
    let batches = fake.batches();
    assert_eq!(batches[..=failing_pass], expected_batches[..=failing_pass]);
    assert_eq!(b.stats(), cuda_engine_core::batcher::QueueStats::default());
    // A later request still succeeds.
    check_vectors(&b.submit(vec![enc(&seq(60, 2))], CancellationToken::new()).await.unwrap(), &[seq(60, 2)]);
    for (r, seqs) in out.iter().zip(&reqs) {
        if let Ok(o) = r {
            check_vectors(&o.pooled, seqs);
        }
    }
    (out, fake)
}

fn codes(out: &[Result<BatchOutput>]) -> Vec<Option<ErrorCode>> {
    out.iter().map(|r| r.as_ref().err().map(|e| e.code)).collect()
}

#[tokio::test]
async fn a_failing_pass_fails_exactly_the_requests_in_it() {
    // Pass 3 = [C2 D]: C (whose first two texts had succeeded in pass 2) and D fail.
    let (out, fake) = run_with_failing_pass(Mode::Fail, 3).await;
    let f = Some(ErrorCode::CudaFault);
    assert_eq!(codes(&out), vec![None, None, f, f, None]);
    assert!(out[2].as_ref().unwrap_err().message.contains("fake fault on pass 3"));
    // [A] [B] [C0 C1] [C2 D] [E] [later]
    assert_eq!(fake.shapes(), vec![(1, 1), (2, 2), (2, 2), (2, 2), (1, 1), (1, 2)]);
}

#[tokio::test]
async fn a_panicking_pass_fails_its_requests_with_e_internal() {
    // Pass 2 = [C0 C1]: only C fails; C2 is then never computed and D moves up.
    let (out, fake) = run_with_failing_pass(Mode::Panic, 2).await;
    let e = out[2].as_ref().unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("fake panic on pass 2"), "{}", e.message);
    assert_eq!(codes(&out), vec![None, None, Some(ErrorCode::Internal), None, None]);
    let batches = fake.batches();
    assert_eq!(batches[3], vec![seq(40, 1), seq(50, 1)]);
    assert!(!fake.all_ids().contains(&32));
    assert_eq!(fake.lock().finished, batches.len());
}

#[tokio::test]
async fn a_malformed_backend_output_is_e_internal_for_its_batch() {
    let (out, _) = run_with_failing_pass(Mode::BadShape, 1).await;
    assert_eq!(codes(&out), vec![None, Some(ErrorCode::Internal), None, None, None]);
    assert!(out[1].as_ref().unwrap_err().message.contains("pooled values for 2 sequences"));
}

#[tokio::test]
async fn queued_time_covers_the_wait_behind_a_held_batch() {
    let fake = Fake::gated();
    let b = start(&fake, BatcherLimits::default(), 512);
    let first = spawn_submit(&b, vec![seq(1, 2)], CancellationToken::new());
    fake.wait_entered(1).await;
    let waiting = spawn_submit(&b, vec![seq(10, 2)], CancellationToken::new());
    wait_depth(&b, 1).await;
    // `waiting` was sent before this instant.
    let seen = Instant::now();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let held = seen.elapsed();
    fake.release_all();
    let first = first.await.unwrap().unwrap();
    let waiting = waiting.await.unwrap().unwrap();
    check_vectors(&waiting.pooled, &[seq(10, 2)]);
    assert!(waiting.queued >= held, "queued {:?} < held {:?}", waiting.queued, held);
    assert!(waiting.queued < Duration::from_secs(2), "{:?}", waiting.queued);
    assert!(first.queued < waiting.queued, "first {:?}, waiting {:?}", first.queued, waiting.queued);
    assert!(waiting.hidden.iter().all(Vec::is_empty), "no hidden state unless asked");
}

#[tokio::test]
async fn hidden_state_rows_go_only_to_the_request_that_asked() {
    let fake = Fake::gated();
    let b = start(&fake, BatcherLimits::default(), 512);
    let first = spawn_submit(&b, vec![seq(1, 1)], CancellationToken::new());
    fake.wait_entered(1).await;
    let plain = spawn_submit(&b, vec![seq(10, 2)], CancellationToken::new());
    let b2 = b.clone();
    let tensors = tokio::spawn(async move {
        b2.submit_tensors(vec![enc(&seq(20, 3)), enc(&seq(30, 1))], true, CancellationToken::new()).await
    });
    wait_depth(&b, 3).await;
    fake.release_all();
    first.await.unwrap().unwrap();
    let plain = plain.await.unwrap().unwrap();
    let tensors = tensors.await.unwrap().unwrap();
    assert_eq!(fake.lock().wanted_hidden, vec![false, true], "one merged pass asked for the hidden state");
    assert_eq!(fake.passes(), 2);
    check_vectors(&plain.pooled, &[seq(10, 2)]);
    assert!(plain.hidden.iter().all(Vec::is_empty));
    check_vectors(&tensors.pooled, &[seq(20, 3), seq(30, 1)]);
    // Rows of each sequence only: [id, position inside the sequence, 7].
    assert_eq!(tensors.hidden[0], vec![20.0, 0.0, 7.0, 21.0, 1.0, 7.0, 22.0, 2.0, 7.0]);
    assert_eq!(tensors.hidden[1], vec![30.0, 0.0, 7.0]);
}
