//! Running other components' GPU work on a device's executor thread.
//!
//! The design has one owner per GPU: the thread that holds the bound
//! context and the stream. A vector index that lives next to the model sends
//! its uploads and searches to the model backend's executor through
//! [`GpuTasks`] (`CudaBackend::tasks`), so they are ordered on the same
//! stream as the forward passes. An index on a device where no model runs
//! gets a task-only executor for that device ([`GpuTasks::standalone`]):
//! one per device per process, shared by every such index, ended when the
//! last handle goes.
//!
//! A task runs behind `catch_unwind` (a panic fails that task with
//! `E_INTERNAL`); a task that returns `E_CUDA_FAULT` poisons the executor
//! (the model backend's too, when it is that one), and every later task and
//! forward pass fails fast with `E_CUDA_FAULT`.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex, OnceLock, Weak};

use cudarc::driver::{CudaContext, CudaStream};

use super::{Job, Shared};
use crate::err;
use crate::error::{CoreError, ErrorCode, Result};

/// What a task gets: the executor's bound context and its stream (launch
/// everything on this stream; never the implicit one).
pub struct TaskCtx<'a> {
    pub ctx: &'a Arc<CudaContext>,
    pub stream: &'a Arc<CudaStream>,
}

pub(crate) type Task = Box<dyn FnOnce(&TaskCtx<'_>) + Send>;

/// Runs closures on one GPU's executor thread and waits for their results.
/// Cheap to clone.
#[derive(Clone)]
pub struct GpuTasks {
    tx: Arc<Mutex<mpsc::Sender<Job>>>,
    device: usize,
    shared: Arc<Shared>,
    /// Keeps a standalone executor alive while this handle exists.
    _owner: Option<Arc<StandaloneOwner>>,
}

impl GpuTasks {
    pub(crate) fn new(tx: mpsc::Sender<Job>, device: usize, shared: Arc<Shared>) -> GpuTasks {
        GpuTasks { tx: Arc::new(Mutex::new(tx)), device, shared, _owner: None }
    }

    /// The device index.
    pub fn device(&self) -> usize {
        self.device
    }

    /// Why the executor is unusable, once a sticky fault poisoned it.
    pub fn fault(&self) -> Option<String> {
        self.shared.fault()
    }

    /// Run `f` on the executor thread and wait for its result. Blocking:
    /// call it from a blocking thread.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce(&TaskCtx<'_>) -> Result<R> + Send + 'static) -> Result<R> {
        if let Some(why) = self.shared.fault() {
            return Err(err!(CudaFault, "the CUDA context is unusable after an earlier fault: {why}"));
        }
        let (reply, rx) = mpsc::sync_channel::<Result<R>>(1);
        let shared = self.shared.clone();
        let task: Task = Box::new(move |ctx: &TaskCtx<'_>| {
            let result = match shared.fault() {
                Some(why) => Err(err!(CudaFault, "the CUDA context is unusable after an earlier fault: {why}")),
                None => catch_unwind(AssertUnwindSafe(|| f(ctx)))
                    .unwrap_or_else(|p| Err(CoreError::from_panic(p, "a GPU task"))),
            };
            if let Err(e) = &result {
                if e.code == ErrorCode::CudaFault {
                    shared.poison(&e.message);
                }
            }
            let _ = reply.send(result);
        });
        {
            let tx = match self.tx.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            tx.send(Job::Task(task))
                .map_err(|_| err!(Closed, "the GPU executor of device {} has stopped", self.device))?;
        }
        rx.recv()
            .unwrap_or_else(|_| Err(err!(Closed, "the GPU executor of device {} stopped during the call", self.device)))
    }

    /// The task-only executor of `device` (started on first use; one per
    /// device per process while any handle to it lives). Blocking (the
    /// first call in a process initialises CUDA).
    pub fn standalone(device: usize) -> Result<GpuTasks> {
        static REGISTRY: OnceLock<Mutex<HashMap<usize, Weak<StandaloneOwner>>>> = OnceLock::new();
        let registry = REGISTRY.get_or_init(|| Mutex::new(HashMap::new()));
        let mut g = match registry.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some(owner) = g.get(&device).and_then(Weak::upgrade) {
            return Ok(owner.handle(&owner));
        }
        let owner = Arc::new(StandaloneOwner::start(device)?);
        g.insert(device, Arc::downgrade(&owner));
        Ok(owner.handle(&owner))
    }
}

/// A task-only executor thread; sends `Stop` when the last handle drops.
pub(crate) struct StandaloneOwner {
    tx: mpsc::Sender<Job>,
    device: usize,
    shared: Arc<Shared>,
}

impl StandaloneOwner {
    fn start(device: usize) -> Result<StandaloneOwner> {
        let probe = crate::device::probe();
        if !probe.available {
            return Err(err!(
                CudaUnavailable,
                "CUDA is not available: {}",
                probe.reason.as_deref().unwrap_or("no device")
            ));
        }
        let ctx = probe.context(device).ok_or_else(|| {
            err!(
                CudaUnavailable,
                "CUDA device {device} does not exist or did not initialise ({} usable)",
                probe.devices.len()
            )
        })?;
        let (tx, rx) = mpsc::channel::<Job>();
        let (init_tx, init_rx) = mpsc::sync_channel::<Result<()>>(1);
        std::thread::Builder::new()
            .name(format!("cuda-engine-gpu{device}-tasks"))
            .spawn(move || task_executor(ctx, rx, init_tx))
            .map_err(|e| err!(Internal, "cannot start the GPU task executor thread: {e}"))?;
        init_rx.recv().unwrap_or_else(|_| Err(err!(Internal, "the GPU task executor died during start-up")))?;
        Ok(StandaloneOwner { tx, device, shared: Arc::new(Shared::new()) })
    }

    fn handle(&self, me: &Arc<StandaloneOwner>) -> GpuTasks {
        GpuTasks {
            tx: Arc::new(Mutex::new(self.tx.clone())),
            device: self.device,
            shared: self.shared.clone(),
            _owner: Some(me.clone()),
        }
    }
}

impl Drop for StandaloneOwner {
    fn drop(&mut self) {
        let _ = self.tx.send(Job::Stop);
    }
}

fn task_executor(ctx: Arc<CudaContext>, rx: mpsc::Receiver<Job>, init_tx: mpsc::SyncSender<Result<()>>) {
    let Some(stream) = super::start_executor(&init_tx, "GPU task executor start-up", || -> Result<Arc<CudaStream>> {
        ctx.bind_to_thread().map_err(|e| super::mem::driver_err(e, "binding the context"))?;
        ctx.new_stream().map_err(|e| super::mem::driver_err(e, "creating the stream"))
    }) else {
        return;
    };
    while let Ok(job) = rx.recv() {
        match job {
            Job::Task(task) => task(&TaskCtx { ctx: &ctx, stream: &stream }),
            Job::Stop => break,
            // Only the model backend's executor gets these.
            Job::Forward { reply, .. } | Job::Fault { reply } => {
                let _ = reply.send(Err(err!(Internal, "a forward pass was sent to a task-only GPU executor")));
            }
        }
    }
}
