//! Saving and loading a [`VectorIndex`]: the `CEVI` file format, version 1
//! (docs/vector-search-format.md has the byte layout).
//!
//! `save` writes a consistent snapshot (taken under the index's read lock:
//! upserts and removes wait, searches do not) to a temporary file in the
//! target's directory, fsyncs it, renames it over the target and fsyncs the
//! directory. A crash at any point leaves the old file or the new one, never
//! a half-written index under the target's name, and a save that fails
//! removes its temporary file.
//!
//! `load` checks every length the header claims against the file's size
//! before it allocates anything for them, checks every value (dims, metric,
//! dtype, id kind, namespace names, unique ids, namespace tags, finite
//! components within the storage's limits) and the trailing SHA-256, and
//! rebuilds the index on the device the caller picks (a file saved from a GPU
//! index loads on the CPU and the other way round) with the saved rows'
//! exact bits, their order and their namespace tags: searches give the same
//! ids and the same scores, ties included, and saving the loaded index
//! writes the same bytes.
//!
//! Errors: everything about the file, I/O included (a missing file, a
//! directory that cannot be written), is `E_INDEX` naming the file and what
//! is wrong (with the OS error's text for I/O). The device's own errors while
//! loading keep their codes (`E_CUDA_UNAVAILABLE`, `E_GPU_OOM`, `E_TOO_LARGE`
//! for host memory), and a lock poisoned by a panic is `E_INTERNAL`.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Display;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use half::f16;
use sha2::{Digest, Sha256};

use super::store::NO_NAMESPACE;
use super::{
    lock_err, Dtype, GpuPlacement, IdKind, IndexConfig, Metric, VectorId, VectorIndex, MAX_ABS_F16, MAX_ABS_F32,
    MAX_BATCH, MAX_DIMS, MAX_ID_BYTES, MAX_NAMESPACE_BYTES,
};
use crate::device::DevicePreference;
use crate::error::{CoreError, ErrorCode, Result};
use crate::model::hub::hex;

/// The first four bytes of every index file.
const MAGIC: [u8; 4] = *b"CEVI";
/// The format version this build writes and the only one it reads.
const FORMAT_VERSION: u32 = 1;
/// Fixed header: magic, version, dims, metric, dtype, id kind, reserved,
/// flags, count, namespace count, maxBytes.
const HEADER_BYTES: usize = 40;
/// The trailing SHA-256.
const CHECKSUM_BYTES: usize = 32;
/// Vector values converted per chunk, on save and on load (64 MiB of fp32):
/// neither needs a second full copy of the vectors in memory.
const CHUNK_VALUES: usize = 16 << 20;

const METRICS: [Metric; 3] = [Metric::Cosine, Metric::Ip, Metric::L2];
const DTYPES: [Dtype; 2] = [Dtype::F16, Dtype::F32];

/// What [`VectorIndex::save`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedIndex {
    pub path: PathBuf,
    /// The file's size.
    pub bytes: u64,
    /// Vectors written (the live ones).
    pub count: usize,
    /// The trailing checksum: SHA-256 of everything before it, lowercase hex.
    pub sha256: String,
}

fn index_err(file: &dyn Display, what: impl Display) -> CoreError {
    CoreError::new(ErrorCode::Index, format!("vector index file {file}: {what}"))
}

fn metric_code(m: Metric) -> u8 {
    match m {
        Metric::Cosine => 0,
        Metric::Ip => 1,
        Metric::L2 => 2,
    }
}

fn dtype_code(d: Dtype) -> u8 {
    match d {
        Dtype::F16 => 0,
        Dtype::F32 => 1,
    }
}

fn id_kind_code(k: Option<IdKind>) -> u8 {
    match k {
        None => 0,
        Some(IdKind::Str) => 1,
        Some(IdKind::U64) => 2,
    }
}

/// Largest magnitude a stored component may have (what `check_rows` allows).
fn max_abs(metric: Metric, dtype: Dtype) -> f32 {
    match dtype {
        Dtype::F16 if metric != Metric::Cosine => MAX_ABS_F16,
        _ => MAX_ABS_F32,
    }
}

/// Rows per chunk for `dims`-value rows.
fn chunk_rows(dims: usize) -> usize {
    (CHUNK_VALUES / dims.max(1)).clamp(1, MAX_BATCH)
}

/// A writer that hashes and counts what goes through it; I/O errors are
/// `E_INDEX` naming `file`.
struct HashWriter<'a, W: Write> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
    file: &'a dyn Display,
}

impl<'a, W: Write> HashWriter<'a, W> {
    fn new(inner: W, file: &'a dyn Display) -> Self {
        HashWriter { inner, hasher: Sha256::new(), bytes: 0, file }
    }

    fn put(&mut self, b: &[u8]) -> Result<()> {
        self.inner.write_all(b).map_err(|e| index_err(self.file, format_args!("cannot write: {e}")))?;
        self.hasher.update(b);
        self.bytes += b.len() as u64;
        Ok(())
    }

    /// Append the checksum; the writer, the checksum and the total size.
    fn finish(mut self) -> Result<(W, [u8; CHECKSUM_BYTES], u64)> {
        let digest: [u8; CHECKSUM_BYTES] = self.hasher.finalize_reset().into();
        self.inner.write_all(&digest).map_err(|e| index_err(self.file, format_args!("cannot write: {e}")))?;
        Ok((self.inner, digest, self.bytes + CHECKSUM_BYTES as u64))
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A new file `.<name>.<pid>.<n>.tmp` in `dir` (created exclusively, so two
/// saves, in this process or another, never share one).
fn create_temp(dir: &Path, name: &OsStr) -> io::Result<(PathBuf, File)> {
    let mut last = io::Error::new(io::ErrorKind::AlreadyExists, "no unused temporary file name");
    for _ in 0..64 {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut tmp = OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".{}.{n}.tmp", std::process::id()));
        let path = dir.join(tmp);
        match OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(f) => return Ok((path, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Removes the temporary file when dropped, unless it was renamed.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    Ok(())
}

/// Reads the file's body: every read is checked against the end of the data
/// (the size minus the checksum) first, and hashed.
struct Reader<'a, R: Read> {
    inner: R,
    hasher: Sha256,
    pos: u64,
    /// Where the data ends and the checksum starts.
    end: u64,
    len: u64,
    file: &'a dyn Display,
}

impl<R: Read> Reader<'_, R> {
    fn err(&self, what: impl Display) -> CoreError {
        index_err(self.file, what)
    }

    fn fill(&mut self, buf: &mut [u8], what: &dyn Display) -> Result<()> {
        let n = buf.len() as u64;
        if self.pos.saturating_add(n) > self.end {
            return Err(self.err(format_args!(
                "truncated or corrupted: {what} at byte {} needs {n} bytes, but the data ends at byte {} ({} bytes in the file, the last {CHECKSUM_BYTES} the checksum)",
                self.pos, self.end, self.len
            )));
        }
        self.inner
            .read_exact(buf)
            .map_err(|e| self.err(format_args!("cannot read {what} at byte {}: {e}", self.pos)))?;
        self.hasher.update(&*buf);
        self.pos += n;
        Ok(())
    }

    fn u32(&mut self, what: &dyn Display) -> Result<u32> {
        let mut b = [0; 4];
        self.fill(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &dyn Display) -> Result<u64> {
        let mut b = [0; 8];
        self.fill(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A `u32`-length-prefixed UTF-8 string of 1..=`max` bytes.
    fn string(&mut self, max: usize, what: &dyn Display) -> Result<String> {
        let n = self.u32(&format_args!("the length of {what}"))? as usize;
        if n == 0 || n > max {
            return Err(self.err(format_args!("{what} has length {n} (must be 1..={max} bytes)")));
        }
        let mut b = vec![0; n];
        self.fill(&mut b, what)?;
        String::from_utf8(b).map_err(|e| self.err(format_args!("{what} is not UTF-8 ({e})")))
    }
}

/// The fixed header, checked.
struct Header {
    dims: usize,
    metric: Metric,
    dtype: Dtype,
    id_kind: Option<IdKind>,
    count: usize,
    namespaces: usize,
    max_bytes: u64,
}

fn parse_header(h: &[u8; HEADER_BYTES], len: u64, file: &dyn Display) -> Result<Header> {
    let e = |what: std::fmt::Arguments| index_err(file, what);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    if h[0..4] != MAGIC {
        return Err(e(format_args!("does not start with `CEVI`: not a vector index file")));
    }
    let version = u32_at(4);
    if version != FORMAT_VERSION {
        return Err(e(format_args!(
            "format version {version} is not supported (this build reads version {FORMAT_VERSION})"
        )));
    }
    let dims = u32_at(8) as usize;
    if dims == 0 || dims > MAX_DIMS {
        return Err(e(format_args!("dims is {dims} (must be 1..={MAX_DIMS}): corrupted")));
    }
    let metric = *METRICS
        .get(h[12] as usize)
        .ok_or_else(|| e(format_args!("unknown metric code {} (0 cosine, 1 ip, 2 l2): corrupted", h[12])))?;
    let dtype = *DTYPES
        .get(h[13] as usize)
        .ok_or_else(|| e(format_args!("unknown dtype code {} (0 fp16, 1 fp32): corrupted", h[13])))?;
    let id_kind = match h[14] {
        0 => None,
        1 => Some(IdKind::Str),
        2 => Some(IdKind::U64),
        k => return Err(e(format_args!("unknown id kind code {k} (0 none, 1 string, 2 bigint): corrupted"))),
    };
    if h[15] != 0 {
        return Err(e(format_args!("reserved header byte 15 is {} (must be 0): corrupted", h[15])));
    }
    let flags = u32_at(16);
    if flags != 0 {
        return Err(e(format_args!(
            "header flags {flags:#x} are not supported (version {FORMAT_VERSION} defines none)"
        )));
    }
    let count = u64_at(20);
    let namespaces = u32_at(28) as u64;
    let max_bytes = u64_at(32);
    if count > u32::MAX as u64 - 1 {
        return Err(e(format_args!("claims {count} vectors; an index holds at most {}: corrupted", u32::MAX - 1)));
    }
    if count > 0 && id_kind.is_none() {
        return Err(e(format_args!("claims {count} vectors but no id kind: corrupted")));
    }
    if namespaces >= u32::MAX as u64 - 1 {
        return Err(e(format_args!("claims {namespaces} namespaces: corrupted")));
    }
    // Every length against the file's size before anything is allocated.
    let id_min: u64 = match id_kind {
        None => 0,
        Some(IdKind::U64) => 8,
        Some(IdKind::Str) => 5,
    };
    let row_min = id_min + 4 + (dims * dtype.size()) as u64;
    let need = namespaces as u128 * 5 + count as u128 * row_min as u128;
    let have = len.saturating_sub((HEADER_BYTES + CHECKSUM_BYTES) as u64);
    if need > have as u128 {
        return Err(e(format_args!(
            "truncated or corrupted: the header claims {count} vectors of {dims} {} values ({} ids) and {namespaces} namespaces, at least {need} bytes, but {have} bytes follow the header",
            dtype.as_str(),
            id_kind.map_or("no", IdKind::as_str),
        )));
    }
    let config = IndexConfig { dims, metric, dtype, device: DevicePreference::Cpu, capacity: 0, max_bytes };
    let row_bytes = VectorIndex::row_bytes(&config);
    if max_bytes == 0 || (count as u128) * (row_bytes as u128) > max_bytes as u128 {
        return Err(e(format_args!(
            "maxBytes is {max_bytes}, less than its {count} vectors × {row_bytes} bytes: corrupted"
        )));
    }
    Ok(Header { dims, metric, dtype, id_kind, count: count as usize, namespaces: namespaces as usize, max_bytes })
}

impl VectorIndex {
    /// Save the live vectors to `path` (docs/vector-search-format.md):
    /// a snapshot under the read lock, written to a temporary file in the
    /// same directory, fsynced and renamed over `path`, then the directory
    /// fsynced. On any error `path` is as it was and no temporary file is
    /// left. The file gets the permissions of a new file (the umask), not
    /// those of the file it replaces. Blocking.
    pub fn save(&self, path: &Path) -> Result<SavedIndex> {
        let shown = format!("`{}`", path.display());
        let name = path.file_name().ok_or_else(|| index_err(&shown, "is not a file path (no file name)"))?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let (tmp_path, file) = create_temp(&dir, name).map_err(|e| {
            index_err(&shown, format_args!("cannot create a temporary file in `{}`: {e}", dir.display()))
        })?;
        let mut tmp = TempFile(Some(tmp_path.clone()));
        let tmp_shown = format!("`{}` (the temporary file of {shown})", tmp_path.display());
        let mut w = HashWriter::new(BufWriter::with_capacity(1 << 20, file), &tmp_shown);
        let count = self.write_snapshot(&mut w)?;
        let (buffered, digest, bytes) = w.finish()?;
        let file =
            buffered.into_inner().map_err(|e| index_err(&tmp_shown, format_args!("cannot write: {}", e.error())))?;
        file.sync_all().map_err(|e| index_err(&tmp_shown, format_args!("cannot fsync: {e}")))?;
        drop(file);
        fs::rename(&tmp_path, path).map_err(|e| {
            index_err(&shown, format_args!("cannot rename the temporary file `{}` over it: {e}", tmp_path.display()))
        })?;
        tmp.0 = None;
        sync_dir(&dir).map_err(|e| {
            index_err(
                &shown,
                format_args!(
                    "saved, but fsyncing its directory `{}` failed ({e}): it may not survive a crash",
                    dir.display()
                ),
            )
        })?;
        Ok(SavedIndex { path: path.to_path_buf(), bytes, count, sha256: hex(&digest) })
    }

    /// The file `save` writes, in memory (tests, fuzzing, copies).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let shown = "(in memory)";
        let mut w = HashWriter::new(Vec::new(), &shown);
        self.write_snapshot(&mut w)?;
        Ok(w.finish()?.0)
    }

    /// Everything but the checksum, under the read lock; the vectors written.
    fn write_snapshot<W: Write>(&self, w: &mut HashWriter<'_, W>) -> Result<usize> {
        let st = self.state.read().map_err(|_| lock_err())?;
        let c = &self.config;
        let slots: Vec<u32> = (0..st.len() as u32).filter(|&s| st.ids[s as usize].is_some()).collect();
        if !slots.is_empty() && st.id_kind.is_none() {
            return Err(CoreError::internal("a vector index holds vectors but has no id kind"));
        }
        let mut h = [0u8; HEADER_BYTES];
        h[0..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        h[8..12].copy_from_slice(&(c.dims as u32).to_le_bytes());
        h[12] = metric_code(c.metric);
        h[13] = dtype_code(c.dtype);
        h[14] = id_kind_code(st.id_kind);
        h[20..28].copy_from_slice(&(slots.len() as u64).to_le_bytes());
        h[28..32].copy_from_slice(&((st.namespaces.len() - 1) as u32).to_le_bytes());
        h[32..40].copy_from_slice(&c.max_bytes.to_le_bytes());
        w.put(&h)?;
        for name in &st.namespaces[1..] {
            w.put(&(name.len() as u32).to_le_bytes())?;
            w.put(name.as_bytes())?;
        }
        let mut buf = Vec::with_capacity(64 << 10);
        for chunk in slots.chunks(4096) {
            buf.clear();
            for &s in chunk {
                match &st.ids[s as usize] {
                    Some(VectorId::U64(x)) => buf.extend_from_slice(&x.to_le_bytes()),
                    Some(VectorId::Str(x)) => {
                        buf.extend_from_slice(&(x.len() as u32).to_le_bytes());
                        buf.extend_from_slice(x.as_bytes());
                    }
                    None => return Err(CoreError::internal("a live slot of a vector index has no id")),
                }
            }
            w.put(&buf)?;
        }
        for chunk in slots.chunks(16 << 10) {
            buf.clear();
            for &s in chunk {
                buf.extend_from_slice(&st.tags[s as usize].to_le_bytes());
            }
            w.put(&buf)?;
        }
        let d = c.dims;
        for chunk in slots.chunks(chunk_rows(d)) {
            let rows = st.store.read(chunk)?;
            if rows.len() != chunk.len() * d {
                return Err(CoreError::internal(format!(
                    "the vector store read {} values for {} rows of {d}",
                    rows.len(),
                    chunk.len()
                )));
            }
            buf.clear();
            buf.reserve(rows.len() * c.dtype.size());
            match c.dtype {
                // Exact: every stored value is an fp16 (the store rounded it).
                Dtype::F16 => {
                    rows.iter().for_each(|&v| buf.extend_from_slice(&f16::from_f32(v).to_bits().to_le_bytes()))
                }
                Dtype::F32 => rows.iter().for_each(|&v| buf.extend_from_slice(&v.to_bits().to_le_bytes())),
            }
            w.put(&buf)?;
        }
        Ok(slots.len())
    }

    /// Load an index saved by [`VectorIndex::save`] onto `device` (`gpu`:
    /// the executor to use when it goes on a GPU, as for `create`).
    /// Blocking.
    pub fn load(path: &Path, device: DevicePreference, gpu: Option<GpuPlacement>) -> Result<Arc<VectorIndex>> {
        let shown = format!("`{}`", path.display());
        let file = File::open(path).map_err(|e| index_err(&shown, format_args!("cannot open: {e}")))?;
        let meta = file.metadata().map_err(|e| index_err(&shown, format_args!("cannot stat: {e}")))?;
        if !meta.is_file() {
            return Err(index_err(&shown, "is not a regular file"));
        }
        Self::read_from(BufReader::with_capacity(1 << 20, file), meta.len(), &shown, device, gpu)
    }

    /// [`VectorIndex::load`] from the bytes of a file (tests, fuzzing).
    pub fn from_bytes(bytes: &[u8], device: DevicePreference, gpu: Option<GpuPlacement>) -> Result<Arc<VectorIndex>> {
        Self::read_from(bytes, bytes.len() as u64, &"(in memory)", device, gpu)
    }

    fn read_from<R: Read>(
        inner: R,
        len: u64,
        file: &dyn Display,
        device: DevicePreference,
        gpu: Option<GpuPlacement>,
    ) -> Result<Arc<VectorIndex>> {
        let mut r =
            Reader { inner, hasher: Sha256::new(), pos: 0, end: len.saturating_sub(CHECKSUM_BYTES as u64), len, file };
        let min = (HEADER_BYTES + CHECKSUM_BYTES) as u64;
        if len < min {
            let mut head = vec![0; len.min(4) as usize];
            r.inner.read_exact(&mut head).map_err(|e| r.err(format_args!("cannot read: {e}")))?;
            if !MAGIC.starts_with(&head) {
                return Err(r.err("does not start with `CEVI`: not a vector index file"));
            }
            return Err(r.err(format_args!("truncated: {len} bytes, a vector index file has at least {min}")));
        }
        let mut hb = [0u8; HEADER_BYTES];
        r.fill(&mut hb, &"the header")?;
        let h = parse_header(&hb, len, file)?;
        let d = h.dims;

        let mut names = Vec::with_capacity(h.namespaces);
        let mut tag_of = HashMap::with_capacity(h.namespaces);
        for i in 0..h.namespaces {
            let name = r.string(MAX_NAMESPACE_BYTES, &format_args!("namespace name {i}"))?;
            if tag_of.insert(name.clone(), (i + 1) as u32).is_some() {
                return Err(r.err(format_args!("namespace name {name:?} appears twice: corrupted")));
            }
            names.push(name);
        }

        let mut ids = Vec::with_capacity(h.count);
        for i in 0..h.count {
            let id = match h.id_kind {
                Some(IdKind::U64) => VectorId::U64(r.u64(&format_args!("id {i}"))?),
                _ => VectorId::Str(r.string(MAX_ID_BYTES, &format_args!("id {i}"))?),
            };
            ids.push(id);
        }
        {
            let mut seen = HashSet::with_capacity(ids.len());
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| !seen.insert(*id)) {
                return Err(r.err(format_args!("id {id:?} (vector {i}) appears twice: corrupted")));
            }
        }

        let mut tags = Vec::with_capacity(h.count);
        for i in 0..h.count {
            let t = r.u32(&format_args!("the namespace tag of vector {i}"))?;
            if t as usize > h.namespaces {
                return Err(r.err(format_args!(
                    "vector {i} has namespace tag {t}, but the file has {} namespaces: corrupted",
                    h.namespaces
                )));
            }
            tags.push(t);
        }

        let mut config =
            IndexConfig { dims: d, metric: h.metric, dtype: h.dtype, device, capacity: 0, max_bytes: h.max_bytes };
        config.capacity = h.count.max(1).min((h.max_bytes / Self::row_bytes(&config)) as usize);
        let index = VectorIndex::create(config, gpu)?;
        {
            let mut st = index.state.write().map_err(|_| lock_err())?;
            st.namespaces.extend(names.iter().cloned());
            st.tag_of = tag_of;
            st.id_kind = h.id_kind;
        }

        let limit = max_abs(h.metric, h.dtype);
        let size = h.dtype.size();
        let step = chunk_rows(d);
        let mut buf = Vec::new();
        let mut ids = ids.into_iter();
        let mut first = 0;
        while first < h.count {
            let n = step.min(h.count - first);
            buf.resize(n * d * size, 0);
            r.fill(&mut buf, &format_args!("vectors {first}..{}", first + n))?;
            let rows: Vec<f32> = match h.dtype {
                Dtype::F16 => {
                    buf.chunks_exact(2).map(|b| f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()).collect()
                }
                Dtype::F32 => buf.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            };
            let chunk_ids: Vec<VectorId> = ids.by_ref().take(n).collect();
            if let Some(j) = rows.iter().position(|v| !v.is_finite() || v.abs() > limit) {
                return Err(r.err(format_args!(
                    "component {} of vector {} (id {:?}) is {} (must be finite, at most {limit:e} in magnitude for {} {} storage): corrupted",
                    j % d,
                    first + j / d,
                    chunk_ids.get(j / d),
                    rows[j],
                    h.metric.as_str(),
                    h.dtype.as_str()
                )));
            }
            let namespaces = (h.namespaces > 0).then(|| {
                tags[first..first + n]
                    .iter()
                    .map(|&t| (t != NO_NAMESPACE).then(|| names[t as usize - 1].clone()))
                    .collect::<Vec<_>>()
            });
            index.upsert_rows(chunk_ids, rows, namespaces, false).map_err(|e| match e.code {
                ErrorCode::InvalidArg => r.err(format_args!("vectors {first}..{}: {}", first + n, e.message)),
                _ => e,
            })?;
            first += n;
        }
        if r.pos != r.end {
            return Err(r.err(format_args!(
                "{} unexpected bytes between the vectors (ending at byte {}) and the checksum: corrupted",
                r.end - r.pos,
                r.pos
            )));
        }
        let mut want = [0u8; CHECKSUM_BYTES];
        r.inner.read_exact(&mut want).map_err(|e| r.err(format_args!("cannot read the checksum: {e}")))?;
        let have: [u8; CHECKSUM_BYTES] = r.hasher.finalize_reset().into();
        if have != want {
            return Err(r.err(format_args!(
                "checksum mismatch: the file is corrupted (its SHA-256 is {}, the file says {})",
                hex(&have),
                hex(&want)
            )));
        }
        if index.len() != h.count {
            return Err(CoreError::internal(format!(
                "loading {file} gave {} vectors, the file has {}",
                index.len(),
                h.count
            )));
        }
        Ok(index)
    }
}

#[cfg(test)]
mod tests;
