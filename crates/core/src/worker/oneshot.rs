//! One-shot (legacy) mode: one process per job. The request goes to stdin,
//! stdin is closed, one response is read from stdout.
//!
//! Everything runs in one `select!` loop over cancel-safe operations
//! (`write`, `read`, `Child::wait`), so the writer, the stdout reader (capped
//! at `max_output_bytes`) and the stderr drain make progress together: a
//! worker that fills its stderr pipe before reading stdin never deadlocks us.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use super::process::{self, describe_status, stderr_suffix, Tail};
use super::protocol::{self, RequestWire, FRAME_HEADER_LEN, FRAME_TAG};
use super::Shared;
use crate::err;
use crate::error::{CoreError, Result};
use crate::jobs::JobOutput;

/// After the worker exits, how long stdout/stderr may stay open (held by an
/// escaped grandchild) before we stop reading.
const POST_EXIT_GRACE: Duration = Duration::from_millis(500);
/// How long to chase left-over group members after the job.
const CLEAN_LIMIT: Duration = Duration::from_millis(300);

/// Owns the child until it has been reaped. If the job future is dropped
/// (the engine's own deadline, a JS AbortSignal), Drop kills the group and
/// hands the reaping to a task, so no zombie or stray helper survives.
struct ChildGuard {
    child: Option<Child>,
    pgid: i32,
}

impl ChildGuard {
    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("child present until finished")
    }

    /// Kill the group, reap the leader, chase the rest.
    async fn kill_and_reap(&mut self) {
        process::kill_group(self.pgid);
        if let Some(mut child) = self.child.take() {
            let _ = child.wait().await;
        }
        process::clean_group(self.pgid, CLEAN_LIMIT).await;
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            process::kill_group(self.pgid);
            let pgid = self.pgid;
            match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    h.spawn(async move {
                        let _ = child.wait().await;
                        process::clean_group(pgid, CLEAN_LIMIT).await;
                    });
                }
                // No runtime: kill_on_drop + tokio's orphan queue reap it.
                Err(_) => drop(child),
            }
        }
    }
}

pub(crate) async fn run(
    shared: &Shared,
    wire: RequestWire<'_>,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Result<(JobOutput, &'static str)> {
    let cfg = &shared.cfg;
    let path = &shared.path;
    let started = Instant::now();
    let mut child = process::spawn(path, &cfg.args, &cfg.env)?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let mut stdin = child.stdin.take();
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let mut guard = ChildGuard { child: Some(child), pgid };
    shared.oneshot_running.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    let _running = RunningGuard(shared);

    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;

    // The request: head then body, written straight from the envelope.
    let (head, body) = (wire.head.as_slice(), wire.body);
    let total = head.len() + body.len();
    let mut written = 0usize;

    let max_out = cfg.max_output_bytes;
    let mut out: Vec<u8> = Vec::with_capacity((max_out + 1).min(64 * 1024));
    let mut out_eof = false;
    let mut tail = Tail::new(cfg.max_stderr_bytes);
    let mut err_buf = vec![0u8; 16 * 1024];
    let mut err_eof = false;
    let mut status: Option<std::process::ExitStatus> = None;

    loop {
        if status.is_some() && out_eof && err_eof {
            break;
        }
        let chunk: &[u8] = if written < head.len() { &head[written..] } else { &body[written - head.len()..] };
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                guard.kill_and_reap().await;
                return Err(CoreError::cancelled());
            }
            _ = &mut deadline => {
                guard.kill_and_reap().await;
                return Err(err!(
                    WorkerTimeout,
                    "worker {} did not finish within {} ms; its process group was killed{}",
                    path.display(), timeout.as_millis(), stderr_suffix(&tail)
                ));
            }
            r = async { stdin.as_mut().expect("checked").write(chunk).await }, if stdin.is_some() && written < total => {
                match r {
                    Ok(n) if n > 0 => {
                        written += n;
                        if written == total {
                            stdin = None; // close: the worker reads to EOF
                        }
                    }
                    // EPIPE/0: the worker stopped reading; its exit status
                    // and output decide the outcome.
                    _ => stdin = None,
                }
            }
            r = stdout.read_buf(&mut out), if !out_eof => {
                match r {
                    Ok(0) => out_eof = true,
                    Ok(_) => {
                        if out.len() > max_out {
                            guard.kill_and_reap().await;
                            return Err(err!(
                                OutputLimit,
                                "worker {} wrote more than {max_out} bytes to stdout (worker.maxOutputBytes); killed",
                                path.display()
                            ));
                        }
                        // Keep each read bounded so the check above stays tight.
                        let room = (max_out + 1).saturating_sub(out.len()).min(64 * 1024);
                        out.reserve(room);
                    }
                    Err(_) => out_eof = true,
                }
            }
            r = stderr.read(&mut err_buf), if !err_eof => {
                match r {
                    Ok(0) | Err(_) => err_eof = true,
                    Ok(n) => tail.push(&err_buf[..n]),
                }
            }
            s = guard.child().wait(), if status.is_none() => {
                let s = s.map_err(|e| err!(WorkerExit, "waiting for worker {}: {e}", path.display()))?;
                status = Some(s);
                // The leader is gone: anything left in its group is a stray
                // that could hold our pipes open. Kill it now.
                process::kill_group(pgid);
                grace = Some(Box::pin(tokio::time::sleep(POST_EXIT_GRACE)));
            }
            _ = async { grace.as_mut().expect("checked").await }, if grace.is_some() => {
                // A process outside the group (setsid) holds the pipes.
                break;
            }
        }
    }
    drop(stdin);
    guard.child = None; // reaped above
    process::clean_group(pgid, CLEAN_LIMIT).await;

    let status = status.expect("loop ends after exit");
    if !status.success() {
        let e = err!(
            WorkerExit,
            "worker {} {} after {} ms{}",
            path.display(),
            describe_status(&status),
            started.elapsed().as_millis(),
            stderr_suffix(&tail)
        );
        log::warn!(target: "cuda_engine::worker", "{e}");
        return Err(e);
    }
    parse_output(&out).map_err(|why| {
        let e = err!(WorkerProtocol, "worker {} {why}{}", path.display(), stderr_suffix(&tail));
        log::warn!(target: "cuda_engine::worker", "{e}");
        e
    })?
}

struct RunningGuard<'a>(&'a Shared);

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.0.oneshot_running.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// One response: a JSON text or one binary frame, nothing else.
fn parse_output(out: &[u8]) -> std::result::Result<Result<(JobOutput, &'static str)>, String> {
    let start = out.iter().position(|b| !b.is_ascii_whitespace());
    let Some(start) = start else { return Err("exited 0 without writing a response to stdout".into()) };
    let data = &out[start..];
    let resp = if data[0] == FRAME_TAG {
        if data.len() < FRAME_HEADER_LEN {
            return Err("wrote a truncated frame header".into());
        }
        let header: [u8; FRAME_HEADER_LEN] = data[..FRAME_HEADER_LEN].try_into().expect("6 bytes");
        let (fmt, len) = protocol::parse_frame_header(&header)?;
        let rest = &data[FRAME_HEADER_LEN..];
        if rest.len() != len {
            return Err(format!("wrote a frame announcing {len} bytes followed by {}", rest.len()));
        }
        protocol::parse_frame_response(fmt, rest)?
    } else {
        let end = data.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
        protocol::parse_json_response(&data[..end])
            .map_err(|why| format!("wrote an invalid response: {why}: {}", snippet(data)))?
    };
    Ok(resp.outcome)
}

fn snippet(data: &[u8]) -> String {
    let n = data.len().min(200);
    let s = String::from_utf8_lossy(&data[..n]);
    if data.len() > n {
        format!("{s:?}…")
    } else {
        format!("{s:?}")
    }
}
