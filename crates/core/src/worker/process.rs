//! Process plumbing shared by both modes: spawning a worker in its own
//! process group (no shell), killing and reaping the whole group, and a
//! bounded stderr tail.
//!
//! Why a process group: a worker may fork helpers (a GPU runtime, a shell
//! wrapper). Killing only the direct child would leave those running, holding
//! the stdout pipe open (so EOF never comes) and the GPU busy. Every worker
//! is started with `process_group(0)`, so `kill(-pgid, SIGKILL)` reaches all
//! of them.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::err;
use crate::error::Result;

/// Spawn `path args..` with piped stdio in a new process group. No shell is
/// involved: the arguments reach the worker exactly as given. The worker
/// inherits this process's environment, plus `env` (Rust API only:
/// `WorkerConfig::env`).
pub(crate) fn spawn(path: &Path, args: &[String], env: &[(String, String)]) -> Result<Child> {
    let mut cmd = Command::new(path);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Safety net only: our own code kills the group and reaps; this makes
        // tokio kill the leader if a Child is ever dropped on another path.
        .kill_on_drop(true);
    #[cfg(unix)]
    cmd.process_group(0);
    // ETXTBSY: the binary is still open for writing somewhere — typically a
    // file just written while another thread forked (its child holds the fd
    // until exec), or a worker being replaced on disk. It clears within
    // milliseconds; retry briefly instead of failing the job.
    let mut attempt = 0;
    let spawned = loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => break other,
        }
    };
    let child = spawned.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            err!(WorkerNotFound, "cannot start worker {}: the file does not exist", path.display()).with_cause(e)
        }
        _ => err!(WorkerSpawn, "cannot start worker {}: {e}", path.display()).with_cause(e),
    })?;
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if let Some(fd) = child.stdin.as_ref().map(|p| p.as_raw_fd()) {
            grow_pipe(fd);
        }
        if let Some(fd) = child.stdout.as_ref().map(|p| p.as_raw_fd()) {
            grow_pipe(fd);
        }
    }
    Ok(child)
}

/// The pipe capacity asked for the worker's stdin and stdout. Linux's
/// default, 64 KiB, makes a 786 KB reply (512 embeddings of 384 floats) cross
/// in a dozen write/wake rounds between the processes; 1 MiB is the default
/// `/proc/sys/fs/pipe-max-size` an unprivileged process may ask for.
#[cfg(target_os = "linux")]
const PIPE_BYTES: libc::c_int = 1 << 20;

/// Ask for a larger pipe buffer (best effort: a lower system limit keeps
/// the default, which only costs speed).
#[cfg(target_os = "linux")]
fn grow_pipe(fd: std::os::fd::RawFd) {
    for size in [PIPE_BYTES, PIPE_BYTES / 4] {
        // SAFETY: F_SETPIPE_SZ takes an integer and no pointers; `fd` is a
        // pipe this process owns (the child's stdio handle).
        if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, size) } >= 0 {
            return;
        }
    }
}

/// SIGKILL every process in the group. Harmless if the group is gone.
pub(crate) fn kill_group(pgid: i32) {
    #[cfg(unix)]
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; it
        // reads no memory of ours. pgid > 0 excludes kill(0)/kill(-1), which
        // would hit our own group or every process we may signal.
        unsafe {
            libc::kill(-pgid, libc::SIGKILL);
        }
    }
}

/// Does any process (zombies included) still belong to the group?
pub(crate) fn group_exists(pgid: i32) -> bool {
    #[cfg(unix)]
    {
        if pgid <= 0 {
            return false;
        }
        // SAFETY: signal 0 only checks that the group exists.
        let r = unsafe { libc::kill(-pgid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pgid;
        false
    }
}

/// Reap, without blocking, every child of ours in the group: helpers the
/// worker left behind are re-parented to us when we are a subreaper (or PID
/// 1), and nobody else will wait for them. Call only after the leader has
/// been reaped through tokio, or this could steal its exit status.
fn reap_group_nohang(pgid: i32) {
    #[cfg(unix)]
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only to `status`, a valid local.
        let r = unsafe { libc::waitpid(-pgid, &mut status, libc::WNOHANG) };
        if r <= 0 {
            break;
        }
    }
}

/// After the leader has exited and been reaped: kill whatever is left of the
/// group and reap what we can, for at most `limit`. Returns whether the group
/// is gone. Left-overs are zombies owned by an init that does not reap
/// (see `reap_orphans` in docs/worker-protocol.md).
pub(crate) async fn clean_group(pgid: i32, limit: Duration) -> bool {
    let end = Instant::now() + limit;
    let mut pause = Duration::from_micros(200);
    loop {
        kill_group(pgid);
        reap_group_nohang(pgid);
        if !group_exists(pgid) {
            return true;
        }
        if Instant::now() >= end {
            log::warn!(target: "cuda_engine::worker", "process group {pgid} still has members after kill; they are not our children to reap");
            return false;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Make this process a child subreaper (Linux), so helpers that a worker
/// forks and abandons become our children and `clean_group` can reap them,
/// instead of zombies under an init that may never reap them.
pub(crate) fn enable_subreaper() {
    #[cfg(target_os = "linux")]
    {
        use std::sync::Once;
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // SAFETY: prctl(PR_SET_CHILD_SUBREAPER, 1) takes no pointers.
            let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                log::warn!(target: "cuda_engine::worker", "PR_SET_CHILD_SUBREAPER failed: {}", std::io::Error::last_os_error());
            }
        });
    }
}

/// The last `cap` bytes a worker wrote to stderr, plus how much was dropped.
#[derive(Debug)]
pub(crate) struct Tail {
    cap: usize,
    buf: Vec<u8>,
    total: u64,
}

impl Tail {
    pub(crate) fn new(cap: usize) -> Tail {
        Tail { cap, buf: Vec::new(), total: 0 }
    }

    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        if self.cap == 0 {
            return;
        }
        if chunk.len() >= self.cap {
            self.buf.clear();
            self.buf.extend_from_slice(&chunk[chunk.len() - self.cap..]);
            return;
        }
        self.buf.extend_from_slice(chunk);
        // Trim lazily (at 2x) so a stream of small writes costs O(1) each.
        if self.buf.len() > 2 * self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
    }

    /// The tail as text, for messages and logs.
    pub(crate) fn text(&self) -> String {
        let start = self.buf.len().saturating_sub(self.cap);
        let kept = &self.buf[start..];
        let dropped = self.total - kept.len() as u64;
        let body = String::from_utf8_lossy(kept);
        let body = body.trim_end();
        if dropped > 0 {
            format!("[{dropped} earlier bytes dropped] {body}")
        } else {
            body.to_string()
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.total == 0
    }
}

/// "; stderr: <tail>" or "" — appended to worker error messages.
pub(crate) fn stderr_suffix(tail: &Tail) -> String {
    if tail.is_empty() {
        "; stderr was empty".to_string()
    } else {
        format!("; stderr: {}", tail.text())
    }
}

/// Describe an exit status ("exited with code 3", "was killed by signal 9").
pub(crate) fn describe_status(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            return format!("was killed by signal {sig}");
        }
    }
    match status.code() {
        Some(c) => format!("exited with code {c}"),
        None => "exited".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::new(4);
        t.push(b"abc");
        t.push(b"def");
        assert_eq!(t.text(), "[2 earlier bytes dropped] cdef");
        t.push(b"0123456789");
        assert_eq!(t.text(), "[12 earlier bytes dropped] 6789");
        for _ in 0..1000 {
            t.push(b"x");
        }
        assert!(t.buf.len() <= 8);
        assert!(Tail::new(4).is_empty());
    }
}
