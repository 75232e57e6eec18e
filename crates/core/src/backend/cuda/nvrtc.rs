//! NVRTC to machine code (cubin) for the device's own architecture, with an
//! on-disk cache so a new process does not compile again.
//!
//! - The cubin is compiled for `sm_XY` of the device the program runs on
//!   (never a fixed list of architectures) and loaded as is, so the driver
//!   has no PTX to JIT and an NVRTC newer than the driver cannot produce
//!   PTX the driver refuses.
//! - Cache entries are keyed by a SHA-256 of everything that changes the
//!   code: the source, the options, the architecture, NVRTC's and the
//!   driver's versions. An entry holds a checksum of its body; a corrupt,
//!   truncated or foreign file is a miss that is compiled and rewritten.
//!   Writes go to a temporary file renamed into place, so concurrent
//!   processes never read half an entry.
//! - `CUDA_ENGINE_KERNEL_CACHE`: the cache folder, or `off`. Default:
//!   `$XDG_CACHE_HOME/cuda-engine/kernels`, else
//!   `$HOME/.cache/cuda-engine/kernels`, else off. A cache that cannot be
//!   written is skipped (logged), never an error.

use std::ffi::{c_char, CString};
use std::io::Write;
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as rtc, sys as rtc_sys, Ptx};
use sha2::{Digest, Sha256};

use crate::err;
use crate::error::Result;
use crate::model::hub::hex;

const MAGIC: &[u8; 8] = b"CEKC1\0\0\0";

/// Where a program's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheUse {
    /// Read from the disk cache.
    Hit,
    /// Compiled now (and written to the cache).
    Miss,
    /// Compiled now; the cache is off or not writable.
    Off,
}

impl CacheUse {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CacheUse::Hit => "hit",
            CacheUse::Miss => "miss",
            CacheUse::Off => "off",
        }
    }
}

/// One program to compile: `name` for messages and NVRTC's logs.
pub(crate) struct Program<'a> {
    pub name: &'a str,
    pub source: &'a str,
    pub cc: (i32, i32),
    /// NVRTC options besides the architecture (`-DX=1`, `--fmad=false`).
    pub options: Vec<String>,
}

/// The cache folder, or None when off.
fn cache_dir() -> Option<PathBuf> {
    match std::env::var_os("CUDA_ENGINE_KERNEL_CACHE") {
        Some(v) if v == "off" || v == "0" || v.is_empty() => None,
        Some(v) => Some(PathBuf::from(v)),
        None => std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")))
            .map(|base| base.join("cuda-engine").join("kernels")),
    }
}

fn versions() -> (String, String) {
    let mut major = 0;
    let mut minor = 0;
    // SAFETY: out-parameters of the right type; NVRTC is loaded (callers
    // checked `is_culib_present`) and the call has no other precondition.
    let rtc_v = match unsafe { rtc_sys::nvrtcVersion(&mut major, &mut minor) }.result() {
        Ok(()) => format!("{major}.{minor}"),
        Err(_) => "unknown".into(),
    };
    let mut driver = 0;
    // SAFETY: as above, for the driver library.
    let drv_v = match unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }.result() {
        Ok(()) => driver.to_string(),
        Err(_) => "unknown".into(),
    };
    (rtc_v, drv_v)
}

fn arch_option(cc: (i32, i32)) -> String {
    format!("--gpu-architecture=sm_{}{}", cc.0, cc.1)
}

fn cache_key(p: &Program<'_>) -> String {
    let (rtc_v, drv_v) = versions();
    let mut h = Sha256::new();
    for part in
        ["cuda-engine kernel cache v1", &rtc_v, &drv_v, &arch_option(p.cc), p.name, &p.options.join("\u{0}"), p.source]
    {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    hex(&h.finalize())
}

/// An entry's body if the file is whole and its checksum matches.
fn read_entry(path: &Path) -> Option<Vec<u8>> {
    let data = std::fs::read(path).ok()?;
    let (head, body) = data.split_at_checked(MAGIC.len() + 32)?;
    if &head[..MAGIC.len()] != MAGIC || head[MAGIC.len()..] != Sha256::digest(body)[..] || body.is_empty() {
        log::warn!("cuda-engine: kernel cache entry {} is corrupt; compiling again", path.display());
        return None;
    }
    Some(body.to_vec())
}

fn write_entry(dir: &Path, path: &Path, body: &[u8]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{:?}", std::process::id(), std::thread::current().id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(MAGIC)?;
        f.write_all(&Sha256::digest(body))?;
        f.write_all(body)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Compile `p` to a cubin for its architecture (NVRTC), without the cache.
pub(crate) fn compile_cubin(p: &Program<'_>) -> Result<Vec<u8>> {
    let fail =
        |what: String| err!(CudaUnavailable, "NVRTC could not compile {} for sm_{}{}: {what}", p.name, p.cc.0, p.cc.1);
    let src = CString::new(p.source).map_err(|_| fail("the source has a NUL byte".into()))?;
    let name = CString::new(p.name).map_err(|_| fail("the name has a NUL byte".into()))?;
    let prog = rtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?;
    let mut options = vec![arch_option(p.cc)];
    options.extend(p.options.iter().cloned());
    // SAFETY: `prog` was created above and is destroyed once, at the end;
    // `src` and `name` outlive it. The cubin buffer has the size NVRTC
    // reported for it.
    let out = unsafe {
        let compiled = rtc::compile_program(prog, &options).map_err(|e| {
            let log = rtc::get_program_log(prog)
                .map(|l| {
                    let bytes: Vec<u8> = l.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
                    String::from_utf8_lossy(&bytes).into_owned()
                })
                .unwrap_or_default();
            fail(format!("{e:?}: {log}"))
        });
        let cubin = compiled.and_then(|()| {
            let mut size = 0usize;
            rtc_sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(|e| fail(format!("{e:?}")))?;
            if size == 0 {
                return Err(fail("NVRTC produced no cubin".into()));
            }
            let mut buf = vec![0u8; size];
            rtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                .result()
                .map_err(|e| fail(format!("{e:?}")))?;
            Ok(buf)
        });
        let _ = rtc::destroy_program(prog);
        cubin
    };
    out
}

/// The program's machine code, from the disk cache or compiled now.
pub(crate) fn compile(p: &Program<'_>) -> Result<(Ptx, CacheUse)> {
    let Some(dir) = cache_dir() else {
        return Ok((Ptx::from_binary(compile_cubin(p)?), CacheUse::Off));
    };
    let path = dir.join(format!("{}.cubin", cache_key(p)));
    if let Some(body) = read_entry(&path) {
        return Ok((Ptx::from_binary(body), CacheUse::Hit));
    }
    let cubin = compile_cubin(p)?;
    match write_entry(&dir, &path, &cubin) {
        Ok(()) => Ok((Ptx::from_binary(cubin), CacheUse::Miss)),
        Err(e) => {
            log::warn!("cuda-engine: cannot write the kernel cache {}: {e}", dir.display());
            Ok((Ptx::from_binary(cubin), CacheUse::Off))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.cubin");
        write_entry(dir.path(), &path, b"machine code").unwrap();
        assert_eq!(read_entry(&path).as_deref(), Some(&b"machine code"[..]));
        // One flipped byte, a truncation, a foreign file: all misses.
        let mut data = std::fs::read(&path).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        std::fs::write(&path, &data).unwrap();
        assert_eq!(read_entry(&path), None);
        std::fs::write(&path, &data[..20]).unwrap();
        assert_eq!(read_entry(&path), None);
        std::fs::write(&path, b"not a cache entry at all, but long enough to have a header").unwrap();
        assert_eq!(read_entry(&path), None);
        // No temporary files left behind.
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
