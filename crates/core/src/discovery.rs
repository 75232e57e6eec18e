//! Worker discovery: the one place that decides which `cuda-worker` binary the
//! engine runs (DESIGN.md "Worker discovery", docs/discovery.md).
//!
//! The rules are shared with other languages' helpers (the Go services): they
//! run the same cases from `tests/discovery_cases.json`, so any change here
//! must change that file and docs/discovery.md together.
//!
//! The environment is injected (`DiscoveryEnv`) rather than read inside the
//! functions so tests can run every case without touching the process
//! environment, which is shared by all test threads. So is the bundled
//! directory (the npm platform package's worker, next to the loaded addon):
//! the Node binding records it once (`set_bundled_dir`) and `from_process`
//! passes it in; everything else passes none.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::err;
use crate::error::Result;

/// Which rule produced the worker path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerSource {
    /// `CUDA_WORKER_PATH` (rule 1).
    Env,
    /// A fixed name relative to the base directory (rule 2).
    Relative,
    /// The worker shipped next to the loaded addon, in the npm platform
    /// package (rule 3).
    Bundled,
    /// `cuda-worker` on `PATH` (rule 4).
    Path,
}

impl WorkerSource {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerSource::Env => "env",
            WorkerSource::Relative => "relative",
            WorkerSource::Bundled => "bundled",
            WorkerSource::Path => "path",
        }
    }
}

/// The parts of the environment discovery reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiscoveryEnv {
    /// `CUDA_WORKER_PATH`.
    pub cuda_worker_path: Option<OsString>,
    /// `PATH`.
    pub path: Option<OsString>,
    /// Windows naming: only `.exe` names, `;`-separated `PATH`.
    pub windows: bool,
    /// The directory of the loaded addon (`.node`) file, where the npm
    /// platform package ships its `cuda-worker` (rule 3). `None` or empty:
    /// no bundled worker (the `cuda-worker` binary, other languages' helpers).
    pub bundled_dir: Option<PathBuf>,
}

/// The process-wide bundled directory, set once by the embedding (the Node
/// binding sets it when its `.node` is loaded); `from_process` reads it.
static BUNDLED_DIR: OnceLock<PathBuf> = OnceLock::new();

/// Record where this process's bundled `cuda-worker` lives (the directory of
/// the loaded addon). The first call wins; later calls return false.
pub fn set_bundled_dir(dir: PathBuf) -> bool {
    BUNDLED_DIR.set(dir).is_ok()
}

/// What `set_bundled_dir` recorded, if anything.
pub fn bundled_dir() -> Option<&'static Path> {
    BUNDLED_DIR.get().map(PathBuf::as_path)
}

/// The directory of the shared object (or executable) that contains `addr`,
/// e.g. the address of a function of the addon: where that `.node` file was
/// loaded from. `None` when the loader does not know the address.
#[cfg(unix)]
pub fn dir_of_loaded_object(addr: usize) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: dladdr only reads the loader's tables; an address outside
    // every loaded object returns 0. `info` is plain data, zero is valid.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    let found = unsafe { libc::dladdr(addr as *const libc::c_void, &mut info) };
    if found == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader,
    // valid while the object stays loaded (for the addon: the process).
    let name = unsafe { std::ffi::CStr::from_ptr(info.dli_fname) };
    let file = PathBuf::from(OsStr::from_bytes(name.to_bytes()));
    let file = std::fs::canonicalize(&file).unwrap_or(file);
    file.parent().map(Path::to_path_buf)
}

/// Non-unix hosts: not implemented (no bundled step).
#[cfg(not(unix))]
pub fn dir_of_loaded_object(_addr: usize) -> Option<PathBuf> {
    None
}

impl DiscoveryEnv {
    /// The current process's environment, and its bundled directory.
    pub fn from_process() -> DiscoveryEnv {
        DiscoveryEnv {
            cuda_worker_path: std::env::var_os("CUDA_WORKER_PATH"),
            path: std::env::var_os("PATH"),
            windows: cfg!(windows),
            bundled_dir: bundled_dir().map(Path::to_path_buf),
        }
    }

    /// The bundled directory when set and not empty.
    fn bundled(&self) -> Option<&Path> {
        self.bundled_dir.as_deref().filter(|d| !d.as_os_str().is_empty())
    }

    /// `CUDA_WORKER_PATH` when set and not empty (an empty value counts as
    /// unset, so `CUDA_WORKER_PATH= node app.js` falls back to the search).
    fn override_path(&self) -> Option<&OsStr> {
        self.cuda_worker_path.as_deref().filter(|v| !v.is_empty())
    }
}

/// Rule 2, in order. On Windows only the `.exe` names are tried.
const RELATIVE_NAMES: [&str; 8] = [
    "cuda-worker/cuda-worker",
    "cuda-worker/cuda-worker.exe",
    "cuda-worker",
    "cuda-worker.exe",
    "bin/cuda-worker",
    "bin/cuda-worker.exe",
    "../cuda-worker/cuda-worker",
    "../cuda-worker/cuda-worker.exe",
];

fn relative_names(windows: bool) -> impl Iterator<Item = &'static str> {
    RELATIVE_NAMES.iter().copied().filter(move |n| !windows || n.ends_with(".exe"))
}

/// `PATH` entries, split the way the target OS does. Empty entries are
/// skipped: POSIX reads them as "cwd", which would make rule 4 a second,
/// unordered copy of rule 2.
fn path_dirs(env: &DiscoveryEnv) -> Vec<PathBuf> {
    let Some(path) = env.path.as_deref() else { return Vec::new() };
    if env.windows {
        // Split by hand: std::env::split_paths follows the host OS, and the
        // cases must give the same answer on every host.
        let text = path.to_string_lossy();
        text.split(';').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
    } else {
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            path.as_bytes()
                .split(|b| *b == b':')
                .filter(|s| !s.is_empty())
                .map(|s| PathBuf::from(OsStr::from_bytes(s)))
                .collect()
        }
        #[cfg(not(unix))]
        {
            let text = path.to_string_lossy();
            text.split(':').filter(|s| !s.is_empty()).map(PathBuf::from).collect()
        }
    }
}

fn worker_file_name(windows: bool) -> &'static str {
    if windows {
        "cuda-worker.exe"
    } else {
        "cuda-worker"
    }
}

/// Every candidate discovery checks, in order (what `health().cuda_path`
/// shows). With `CUDA_WORKER_PATH` set it is the only candidate.
pub fn candidates(base_dir: &Path, env: &DiscoveryEnv) -> Vec<PathBuf> {
    candidates_with_source(base_dir, env).into_iter().map(|(p, _)| p).collect()
}

fn candidates_with_source(base_dir: &Path, env: &DiscoveryEnv) -> Vec<(PathBuf, WorkerSource)> {
    if let Some(p) = env.override_path() {
        return vec![(base_dir.join(p), WorkerSource::Env)];
    }
    let mut out: Vec<(PathBuf, WorkerSource)> =
        relative_names(env.windows).map(|n| (base_dir.join(n), WorkerSource::Relative)).collect();
    let name = worker_file_name(env.windows);
    if let Some(dir) = env.bundled() {
        // Rule 3: the worker of the installed platform package, next to the
        // loaded addon. A relative value resolves against the base directory.
        out.push((base_dir.join(dir).join(name), WorkerSource::Bundled));
    }
    for dir in path_dirs(env) {
        // A relative PATH entry is resolved against the base directory, like
        // every other relative path here, not the process cwd.
        out.push((base_dir.join(dir).join(name), WorkerSource::Path));
    }
    out
}

/// "Executable": a regular file (after following symlinks) with at least one
/// execute bit on unix; on other hosts, a regular file.
pub fn is_executable(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if !meta.is_file() {
        return false;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        meta.permissions().mode() & 0o111 != 0
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// Apply the rules: the first executable candidate, and which rule found it.
/// Fails with `E_WORKER_NOT_FOUND` naming `CUDA_WORKER_PATH` (rule 1) or
/// listing every place it looked.
pub fn find_worker(base_dir: &Path, env: &DiscoveryEnv) -> Result<(PathBuf, WorkerSource)> {
    let cands = candidates_with_source(base_dir, env);
    if let Some(raw) = env.override_path() {
        let (path, source) = cands.into_iter().next().expect("one env candidate");
        if is_executable(&path) {
            return Ok((path, source));
        }
        let why = if path.exists() { "is not an executable file" } else { "does not exist" };
        return Err(err!(
            WorkerNotFound,
            "CUDA_WORKER_PATH={} ({}) {why}; CUDA_WORKER_PATH is the only candidate when set (unset it to search)",
            raw.to_string_lossy(),
            path.display()
        ));
    }
    for (path, source) in &cands {
        if is_executable(path) {
            return Ok((path.clone(), *source));
        }
    }
    let looked: Vec<String> = cands.iter().map(|(p, _)| p.display().to_string()).collect();
    Err(err!(
        WorkerNotFound,
        "no executable cuda-worker found (CUDA_WORKER_PATH unset); looked in: {}",
        looked.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_is_the_only_candidate_and_relative_to_base() {
        let env = DiscoveryEnv {
            cuda_worker_path: Some("w/x".into()),
            path: Some("/usr/bin".into()),
            windows: false,
            bundled_dir: Some("/pkg".into()),
        };
        assert_eq!(candidates(Path::new("/b"), &env), vec![PathBuf::from("/b/w/x")]);
    }

    #[test]
    fn windows_uses_exe_names_and_semicolons() {
        let env = DiscoveryEnv {
            cuda_worker_path: Some("".into()),
            path: Some("C:/x;;C:/y".into()),
            windows: true,
            bundled_dir: Some("C:/pkg".into()),
        };
        let c = candidates(Path::new("/b"), &env);
        assert_eq!(c.len(), 4 + 1 + 2, "{c:?}");
        assert!(c.iter().all(|p| p.to_string_lossy().ends_with(".exe")));
    }

    #[test]
    fn bundled_comes_after_relative_and_before_path() {
        let env = DiscoveryEnv {
            cuda_worker_path: None,
            path: Some("/usr/bin".into()),
            windows: false,
            bundled_dir: Some("/pkg".into()),
        };
        let c = candidates_with_source(Path::new("/b"), &env);
        assert_eq!(c[8], (PathBuf::from("/pkg/cuda-worker"), WorkerSource::Bundled));
        assert_eq!(c[9], (PathBuf::from("/usr/bin/cuda-worker"), WorkerSource::Path));
        let empty = DiscoveryEnv { bundled_dir: Some(PathBuf::new()), ..env };
        assert!(candidates_with_source(Path::new("/b"), &empty).iter().all(|(_, s)| *s != WorkerSource::Bundled));
    }

    #[cfg(unix)]
    #[test]
    fn dir_of_loaded_object_finds_this_test_binary() {
        let f: fn() -> bool = || true;
        let dir = dir_of_loaded_object(f as *const () as usize).expect("dladdr knows our own code");
        let exe = std::env::current_exe().unwrap();
        assert_eq!(dir, std::fs::canonicalize(exe).unwrap().parent().unwrap());
        assert_eq!(dir_of_loaded_object(0), None);
    }
}
