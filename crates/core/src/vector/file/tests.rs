use std::panic::AssertUnwindSafe;

use super::*;
use crate::vector::tests::{cfg, rand_vec};
use crate::vector::SearchHits;

fn id(string_ids: bool, i: usize) -> VectorId {
    if string_ids {
        VectorId::Str(format!("doc-{i}"))
    } else {
        VectorId::U64(i as u64 * 7 + 3)
    }
}

/// `n` vectors in namespaces `alpha`, `beta`, none and `gone` (all of whose
/// vectors are then removed, so the name stays in the table unused), rows
/// 10..20 exact copies of row 5 (ties), every tenth vector removed and two
/// replaced in place.
fn sample(metric: Metric, dtype: Dtype, string_ids: bool, n: usize, d: usize) -> Arc<VectorIndex> {
    let idx = VectorIndex::create(cfg(d, metric, dtype), None).unwrap();
    let mut data = rand_vec(n * d, n as u64 + d as u64);
    let row5 = data[5 * d..6 * d].to_vec();
    for i in 10..20 {
        data[i * d..(i + 1) * d].copy_from_slice(&row5);
    }
    let ns: Vec<Option<String>> =
        (0..n).map(|i| ["", "alpha", "beta", "gone"][i % 4]).map(|s| (!s.is_empty()).then(|| s.to_string())).collect();
    idx.upsert((0..n).map(|i| id(string_ids, i)).collect(), data, Some(ns)).unwrap();
    let gone: Vec<VectorId> = (0..n).filter(|i| i % 4 == 3 || i % 10 == 1).map(|i| id(string_ids, i)).collect();
    idx.remove(&gone).unwrap();
    idx.upsert(vec![id(string_ids, 2), id(string_ids, 8)], rand_vec(2 * d, 99), Some(vec![Some("beta".into()), None]))
        .unwrap();
    idx
}

fn bits(h: &SearchHits) -> (Vec<VectorId>, Vec<u32>) {
    (h.ids.clone(), h.scores.iter().map(|s| s.to_bits()).collect())
}

/// Same search results (ids and score bits) for every namespace, same
/// stored vectors (bits) and namespaces.
fn assert_same(a: &VectorIndex, b: &VectorIndex, what: &str) {
    let d = a.config().dims;
    let mut qs = rand_vec(15 * d, 1234);
    let row5 = a.get(&[a.search(rand_vec(d, 1), 1, None).unwrap()[0].ids[0].clone()]).unwrap()[0].clone();
    qs.extend(row5.unwrap().vector);
    for ns in [None, Some("alpha"), Some("beta"), Some("gone"), Some("nope")] {
        let (x, y) = (a.search(qs.clone(), 25, ns).unwrap(), b.search(qs.clone(), 25, ns).unwrap());
        assert_eq!(x.iter().map(bits).collect::<Vec<_>>(), y.iter().map(bits).collect::<Vec<_>>(), "{what} {ns:?}");
    }
    let (ia, ib) = (a.info().unwrap(), b.info().unwrap());
    assert_eq!(
        (ia.dims, ia.metric, ia.dtype, ia.count, ia.namespaces),
        (ib.dims, ib.metric, ib.dtype, ib.count, ib.namespaces)
    );
    assert_eq!(a.id_kind(), b.id_kind());
    let st = a.state.read().unwrap();
    let ids: Vec<VectorId> = st.ids.iter().flatten().cloned().collect();
    drop(st);
    let key = |v: Vec<Option<crate::vector::StoredVector>>| {
        v.into_iter()
            .map(|s| s.map(|s| (s.vector.iter().map(|x| x.to_bits()).collect::<Vec<_>>(), s.namespace)))
            .collect::<Vec<_>>()
    };
    assert_eq!(key(a.get(&ids).unwrap()), key(b.get(&ids).unwrap()), "{what}: stored vectors");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn save_load_search_is_identical_for_every_metric_and_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let mut names = Vec::new();
    for metric in [Metric::Cosine, Metric::Ip, Metric::L2] {
        for dtype in [Dtype::F16, Dtype::F32] {
            for string_ids in [false, true] {
                let what = format!("{}-{}-{}", metric.as_str(), dtype.as_str(), if string_ids { "str" } else { "u64" });
                let a = sample(metric, dtype, string_ids, 700, 20);
                let path = dir.path().join(format!("{what}.cevi"));
                let saved = a.save(&path).unwrap();
                names.push(format!("{what}.cevi"));
                let bytes = fs::read(&path).unwrap();
                assert_eq!(saved.count, a.len());
                assert_eq!(saved.bytes, bytes.len() as u64);
                assert_eq!(saved.sha256, hex(&Sha256::digest(&bytes[..bytes.len() - 32])));
                assert_eq!(a.to_bytes().unwrap(), bytes, "{what}: save and to_bytes agree");
                let b = VectorIndex::load(&path, DevicePreference::Cpu, None).unwrap();
                assert_same(&a, &b, &what);
                // Load → save writes the same bytes (tags, unused names, id kind kept).
                assert_eq!(b.to_bytes().unwrap(), bytes, "{what}: the loaded index saves the same bytes");
                // `auto` picks the GPU when there is one: the same stored bits, and
                // the same results where the stores promise bit-identical scores
                // (the CPU; fp32 on the GPU).
                let c = VectorIndex::load(&path, DevicePreference::Auto, None).unwrap();
                assert_eq!(c.to_bytes().unwrap(), bytes, "{what} on {:?}", c.placement());
                if c.placement() == crate::vector::Placement::Cpu || dtype == Dtype::F32 {
                    assert_same(&a, &c, &what);
                }
                // The loaded index keeps working: its id kind and namespaces.
                let new_id = id(string_ids, 10_000);
                b.upsert(vec![new_id.clone()], vec![1.0; 20], Some(vec![Some("gone".into())])).unwrap();
                assert_eq!(b.search(vec![1.0; 20], 1, Some("gone")).unwrap()[0].ids, vec![new_id]);
                assert!(b.upsert(vec![id(!string_ids, 1)], vec![1.0; 20], None).is_err());
            }
        }
    }
    names.sort();
    assert_eq!(entries(dir.path()), names, "no temporary file is left");
}

#[test]
fn empty_indexes_round_trip() {
    let fresh = VectorIndex::create(cfg(8, Metric::Cosine, Dtype::F32), None).unwrap();
    let b = VectorIndex::from_bytes(&fresh.to_bytes().unwrap(), DevicePreference::Cpu, None).unwrap();
    assert!(b.is_empty() && b.id_kind().is_none());
    assert_eq!(b.to_bytes().unwrap(), fresh.to_bytes().unwrap());
    b.upsert(vec![VectorId::Str("x".into())], vec![1.0; 8], None).unwrap();

    let emptied = VectorIndex::create(cfg(3, Metric::L2, Dtype::F16), None).unwrap();
    emptied.upsert(vec![VectorId::U64(1)], vec![1.0; 3], Some(vec![Some("t".into())])).unwrap();
    emptied.remove(&[VectorId::U64(1)]).unwrap();
    let bytes = emptied.to_bytes().unwrap();
    let b = VectorIndex::from_bytes(&bytes, DevicePreference::Cpu, None).unwrap();
    assert!(b.is_empty());
    assert_eq!(b.id_kind(), Some(IdKind::U64));
    assert_eq!(b.info().unwrap().namespaces, 1);
    assert_eq!(b.to_bytes().unwrap(), bytes);
    assert!(b.search(vec![1.0; 3], 4, None).unwrap()[0].ids.is_empty());
}

#[test]
fn fp16_and_fp32_keep_their_exact_bits() {
    let special = [0.0f32, -0.0, 1e-40, -1e-38, 6e-8, 65504.0, -65504.0, 1e15, -1e15, 0.1];
    for dtype in [Dtype::F16, Dtype::F32] {
        let idx = VectorIndex::create(cfg(1, Metric::Ip, dtype), None).unwrap();
        let vals: Vec<f32> =
            special.iter().copied().filter(|v| dtype == Dtype::F32 || v.abs() <= MAX_ABS_F16).collect();
        let ids: Vec<VectorId> = (0..vals.len() as u64).map(VectorId::U64).collect();
        idx.upsert(ids.clone(), vals, None).unwrap();
        let b = VectorIndex::from_bytes(&idx.to_bytes().unwrap(), DevicePreference::Cpu, None).unwrap();
        let g = |i: &VectorIndex| -> Vec<u32> {
            i.get(&ids).unwrap().into_iter().map(|v| v.unwrap().vector[0].to_bits()).collect()
        };
        assert_eq!(g(&idx), g(&b), "{dtype:?}");
    }
}

/// 20 distinct offsets spread over a file of `len` bytes (both ends, every
/// section boundary region).
fn offsets(len: usize) -> Vec<usize> {
    let mut v = vec![0, 1, 3, 4, 8, 13, 20, 39, 40, 41, len - 33, len - 32, len - 1];
    let mut k = 1;
    while v.len() < 20 {
        let o = len * k / 9;
        if !v.contains(&o) {
            v.push(o);
        }
        k += 1;
    }
    v.sort();
    v
}

#[test]
fn truncated_or_flipped_files_are_e_index() {
    let dir = tempfile::tempdir().unwrap();
    for (metric, dtype, string_ids) in [(Metric::L2, Dtype::F16, true), (Metric::Cosine, Dtype::F32, false)] {
        let bytes = sample(metric, dtype, string_ids, 120, 6).to_bytes().unwrap();
        let offs = offsets(bytes.len());
        assert_eq!(offs.len(), 20);
        for (i, &off) in offs.iter().enumerate() {
            let p = dir.path().join(format!("trunc-{i}.cevi"));
            fs::write(&p, &bytes[..off]).unwrap();
            let e = VectorIndex::load(&p, DevicePreference::Cpu, None).err().expect("the load must fail");
            assert_eq!(e.code, ErrorCode::Index, "truncated at {off}: {}", e.message);
            assert!(e.message.contains(&p.display().to_string()), "{}", e.message);
            let mut flipped = bytes.clone();
            flipped[off] ^= 0xff;
            let p = dir.path().join(format!("flip-{i}.cevi"));
            fs::write(&p, &flipped).unwrap();
            let e = VectorIndex::load(&p, DevicePreference::Cpu, None).err().expect("the load must fail");
            assert_eq!(e.code, ErrorCode::Index, "byte {off} flipped: {}", e.message);
            // One flipped bit too.
            flipped[off] ^= 0xff ^ (1 << (i % 8));
            let e = VectorIndex::from_bytes(&flipped, DevicePreference::Cpu, None).err().expect("the load must fail");
            assert_eq!(e.code, ErrorCode::Index, "bit {} of byte {off} flipped: {}", i % 8, e.message);
        }
    }
}

#[test]
fn errors_name_the_file_and_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let load = |p: &Path| VectorIndex::load(p, DevicePreference::Cpu, None).err().expect("the load must fail");
    let missing = dir.path().join("missing.cevi");
    let e = load(&missing);
    assert_eq!(e.code, ErrorCode::Index);
    assert!(e.message.contains("missing.cevi") && e.message.contains("cannot open"), "{}", e.message);
    assert!(load(dir.path()).message.contains("not a regular file"));
    let p = dir.path().join("f");
    let check = |bytes: &[u8], want: &str| {
        fs::write(&p, bytes).unwrap();
        let e = load(&p);
        assert_eq!(e.code, ErrorCode::Index);
        assert!(e.message.contains(want), "want {want:?} in {}", e.message);
    };
    check(b"", "truncated: 0 bytes");
    check(b"CEV", "truncated: 3 bytes");
    check(b"{\"dims\": 3}", "not a vector index file");
    let good = sample(Metric::Ip, Dtype::F32, false, 40, 4).to_bytes().unwrap();
    check(&[b"GGUF", &good[4..]].concat(), "not a vector index file");
    let mut v2 = good.clone();
    v2[4] = 2;
    check(&v2, "format version 2 is not supported");
    let mut flags = good.clone();
    flags[16] = 1;
    check(&flags, "flags 0x1 are not supported");
    let mut sum = good.clone();
    *sum.last_mut().unwrap() ^= 1;
    check(&sum, "checksum mismatch");
    check(&[&good[..], b"x"].concat(), "unexpected bytes");
    // A NaN whose file checksum is right: the value check names it.
    let idx = VectorIndex::create(cfg(2, Metric::Ip, Dtype::F32), None).unwrap();
    idx.upsert(vec![VectorId::U64(9)], vec![1.0, 2.0], None).unwrap();
    let mut nan = idx.to_bytes().unwrap();
    let at = nan.len() - 32 - 4;
    nan[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    let n = nan.len() - 32;
    let digest = Sha256::digest(&nan[..n]);
    nan[n..].copy_from_slice(&digest);
    check(&nan, "component 1 of vector 0 (id Some(U64(9))) is NaN");
    // A duplicate id with a right checksum.
    idx.upsert(vec![VectorId::U64(10)], vec![1.0, 2.0], None).unwrap();
    let mut dup = idx.to_bytes().unwrap();
    dup[HEADER_BYTES..HEADER_BYTES + 8].copy_from_slice(&10u64.to_le_bytes());
    let n = dup.len() - 32;
    let digest = Sha256::digest(&dup[..n]);
    dup[n..].copy_from_slice(&digest);
    check(&dup, "appears twice");
}

#[test]
fn a_device_error_keeps_its_code() {
    let bytes = sample(Metric::Ip, Dtype::F16, false, 30, 4).to_bytes().unwrap();
    match VectorIndex::from_bytes(&bytes, DevicePreference::Cuda(None), None) {
        Ok(idx) => assert_eq!(idx.to_bytes().unwrap(), bytes),
        Err(e) => assert_eq!(e.code, ErrorCode::CudaUnavailable, "{}", e.message),
    }
}

/// The largest single allocation made by this thread while `f` runs.
mod alloc_probe {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    struct Probe;

    fn note(n: usize) {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(n)));
    }

    unsafe impl GlobalAlloc for Probe {
        unsafe fn alloc(&self, l: Layout) -> *mut u8 {
            note(l.size());
            System.alloc(l)
        }
        unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
            note(l.size());
            System.alloc_zeroed(l)
        }
        unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
            note(n);
            System.realloc(p, l, n)
        }
        unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
            System.dealloc(p, l)
        }
    }

    #[global_allocator]
    static PROBE: Probe = Probe;

    pub fn largest_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
        LARGEST.with(|c| c.set(0));
        let r = f();
        (r, LARGEST.with(|c| c.get()))
    }
}

fn header(count: u64, namespaces: u32, dims: u32, id_kind: u8) -> Vec<u8> {
    let mut h = vec![0u8; HEADER_BYTES];
    h[0..4].copy_from_slice(&MAGIC);
    h[4..8].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[8..12].copy_from_slice(&dims.to_le_bytes());
    h[13] = 1;
    h[14] = id_kind;
    h[20..28].copy_from_slice(&count.to_le_bytes());
    h[28..32].copy_from_slice(&namespaces.to_le_bytes());
    h[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    h
}

#[test]
fn absurd_counts_fail_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    for (count, namespaces, dims, kind, want) in [
        (1u64 << 60, 0, 4, 2, "claims 1152921504606846976 vectors"),
        (u32::MAX as u64 - 2, 0, 4096, 1, "truncated or corrupted: the header claims 4294967293 vectors"),
        (1000, u32::MAX - 3, 1, 2, "4294967292 namespaces"),
        (0, 1 << 30, 1, 0, "1073741824 namespaces"),
        (u32::MAX as u64 - 2, u32::MAX - 3, 4096, 2, "at least"),
    ] {
        // A plausible body: a few KiB of zeros after the header, and a checksum.
        let bytes = [header(count, namespaces, dims, kind), vec![0; 4096 + 32]].concat();
        let (r, largest) =
            alloc_probe::largest_during(|| VectorIndex::from_bytes(&bytes, DevicePreference::Cpu, None).map(|_| ()));
        let e = r.unwrap_err();
        assert_eq!(e.code, ErrorCode::Index);
        assert!(e.message.contains(want), "want {want:?} in {}", e.message);
        assert!(largest < 64 << 10, "{count} vectors, {namespaces} namespaces: an allocation of {largest} bytes");
        let p = dir.path().join("absurd.cevi");
        fs::write(&p, &bytes).unwrap();
        let (r, largest) =
            alloc_probe::largest_during(|| VectorIndex::load(&p, DevicePreference::Cpu, None).map(|_| ()));
        assert_eq!(r.unwrap_err().code, ErrorCode::Index);
        // The 1 MiB read buffer is the largest allocation.
        assert!(largest <= 1 << 20, "an allocation of {largest} bytes");
    }
}

#[test]
fn a_failed_save_leaves_the_target_and_no_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("idx.cevi");
    let a = sample(Metric::Cosine, Dtype::F16, true, 50, 4);
    a.save(&path).unwrap();
    let before = fs::read(&path).unwrap();

    // A poisoned lock: the temporary file is already created when the lock
    // is taken, and removed.
    let b = sample(Metric::Ip, Dtype::F32, false, 60, 4);
    let _ = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let _held = b.state.write().unwrap();
        panic!("poisoning the lock on purpose");
    }));
    let e = b.save(&path).unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal, "{}", e.message);
    assert_eq!(fs::read(&path).unwrap(), before, "the target is unchanged");
    assert_eq!(entries(dir.path()), ["idx.cevi"]);

    // The rename fails (the target is a non-empty directory): after the
    // whole file was written and fsynced.
    let taken = dir.path().join("taken");
    fs::create_dir(&taken).unwrap();
    fs::write(taken.join("x"), b"x").unwrap();
    let e = a.save(&taken).unwrap_err();
    assert_eq!(e.code, ErrorCode::Index);
    assert!(e.message.contains("cannot rename the temporary file"), "{}", e.message);
    assert_eq!(entries(dir.path()), ["idx.cevi", "taken"]);
    assert_eq!(entries(&taken), ["x"]);

    // No directory.
    let e = a.save(&dir.path().join("nope/idx.cevi")).unwrap_err();
    assert_eq!(e.code, ErrorCode::Index);
    assert!(e.message.contains("cannot create a temporary file"), "{}", e.message);

    // A read-only directory (root writes anyway: checked only for others).
    if unsafe { libc::geteuid() } != 0 {
        use std::os::unix::fs::PermissionsExt;
        let ro = dir.path().join("ro");
        fs::create_dir(&ro).unwrap();
        a.save(&ro.join("idx.cevi")).unwrap();
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
        let e = sample(Metric::L2, Dtype::F32, false, 20, 4).save(&ro.join("idx.cevi"));
        fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(e.unwrap_err().code, ErrorCode::Index);
        assert_eq!(entries(&ro), ["idx.cevi"]);
        assert_eq!(fs::read(ro.join("idx.cevi")).unwrap(), before);
    }

    // An empty path is an error, not a panic.
    assert_eq!(a.save(Path::new("")).unwrap_err().code, ErrorCode::Index);
}

/// Small valid files, the seed corpus of the `index_file` fuzz target
/// (fuzz/corpus/index_file/, each with the target's mode byte first: 0 the
/// file as it is, 1 the file with its checksum recomputed).
fn fuzz_seeds() -> Vec<(String, Vec<u8>)> {
    let s = |x: &str| VectorId::Str(x.to_string());
    let ns = |v: &[&str]| Some(v.iter().map(|x| (!x.is_empty()).then(|| x.to_string())).collect::<Vec<_>>());
    let mut files = Vec::new();

    let a = VectorIndex::create(cfg(4, Metric::Cosine, Dtype::F16), None).unwrap();
    a.upsert(vec![s("a"), s("bb"), s("c")], rand_vec(12, 1), ns(&["x", "", "yy"])).unwrap();
    a.remove(&[s("bb")]).unwrap();
    files.push(("cosine-fp16-str-ns", a));

    let b = VectorIndex::create(cfg(3, Metric::Ip, Dtype::F32), None).unwrap();
    b.upsert((0..4).map(VectorId::U64).collect(), rand_vec(12, 2), None).unwrap();
    files.push(("ip-fp32-u64", b));

    let c = VectorIndex::create(cfg(2, Metric::L2, Dtype::F16), None).unwrap();
    c.upsert(
        (10..15).map(VectorId::U64).collect(),
        vec![1.0, 2.0, 1.0, 2.0, -0.0, 6e-8, 3.0, 4.0, 1.0, 2.0],
        ns(&["t", "t", "", "u", "t"]),
    )
    .unwrap();
    files.push(("l2-fp16-u64-ties", c));

    files.push(("empty", VectorIndex::create(cfg(8, Metric::Cosine, Dtype::F32), None).unwrap()));

    let e = VectorIndex::create(cfg(1, Metric::L2, Dtype::F32), None).unwrap();
    e.upsert(vec![s("gone")], vec![1.0], ns(&["t"])).unwrap();
    e.remove(&[s("gone")]).unwrap();
    files.push(("all-removed", e));

    let f = VectorIndex::create(cfg(1, Metric::Ip, Dtype::F32), None).unwrap();
    f.upsert(vec![s("z"), s("é"), s("0")], vec![1e-40, -1e15, 0.5], None).unwrap();
    files.push(("ip-fp32-str-extremes", f));

    let mut out = Vec::new();
    for (name, idx) in files {
        let bytes = idx.to_bytes().unwrap();
        for (mode, tag) in [(0u8, "raw"), (1, "fixsum")] {
            out.push((format!("seed-{name}-{tag}"), [&[mode][..], &bytes].concat()));
        }
    }
    out
}

/// `fuzz/corpus/index_file/seed-*` are the current format's files; rewrite
/// them with `UPDATE_FUZZ_CORPUS=1 cargo test -p cuda-engine-core --lib fuzz_seed`.
#[test]
fn fuzz_seed_corpus_is_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/index_file");
    let seeds = fuzz_seeds();
    if std::env::var_os("UPDATE_FUZZ_CORPUS").is_some() {
        fs::create_dir_all(&dir).unwrap();
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            if e.file_name().to_string_lossy().starts_with("seed-") {
                fs::remove_file(e.path()).unwrap();
            }
        }
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).unwrap();
        }
    }
    for (name, bytes) in &seeds {
        let idx = VectorIndex::from_bytes(&bytes[1..], DevicePreference::Cpu, None).unwrap();
        assert_eq!(idx.to_bytes().unwrap(), bytes[1..]);
        let have = fs::read(dir.join(name)).unwrap_or_default();
        assert!(have == *bytes, "fuzz/corpus/index_file/{name} is stale: run with UPDATE_FUZZ_CORPUS=1");
    }
}
