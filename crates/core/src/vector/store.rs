//! The storage contract the index keeps its vectors in: one implementation
//! per placement (`cpu::CpuStore`, `cuda::CudaStore`), the same results.
//!
//! A store holds `capacity` rows of `dims` values in the index's dtype, a
//! tag per row (the namespace number, [`TOMBSTONE`] for a removed row) and,
//! for L2, each row's squared norm as stored. The index above it
//! (`VectorIndex`) owns ids, namespaces and slot assignment; the store only
//! sees slots (`0..len`, insertion order) and tags.
//!
//! # Scores and order (the same on every store)
//! - `dot(q, x)`: fp32, with the row converted to fp32 and the query in
//!   fp32. For an fp32 store the summation order is fixed so the CPU and the
//!   GPU give bit-identical scores: 8 lanes, lane `j` sums `q[i]*x[i]` for
//!   `i ≡ j (mod 8)` in increasing `i` (a product rounded, then added: no
//!   FMA), then `((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7))`. An fp16 store may
//!   sum in any order (tensor cores): its exactness rule is the 1e-3 window
//!   of docs/vector-search.md.
//! - `ip` and `cosine` (rows and queries normalized by the index): score =
//!   `dot`, higher first.
//! - `l2`: rank key `t = |x|² − 2·dot` (`|x|²` of the stored row, same
//!   8-lane order), lower first; reported score `max(0, |q|² + t)`, the
//!   squared distance.
//! - Ties (equal score, equal `t` for L2): the lower slot first.

use crate::error::Result;

/// The tag of a removed row: never returned.
pub(crate) const TOMBSTONE: u32 = u32::MAX;
/// The tag of a row with no namespace.
pub(crate) const NO_NAMESPACE: u32 = 0;

/// Which rows a search considers (rows at or above `len` never count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Every live row (tag ≠ [`TOMBSTONE`]).
    Live,
    /// Only rows with this tag.
    Tag(u32),
}

impl Filter {
    pub(crate) fn admits(self, tag: u32) -> bool {
        match self {
            Filter::Live => tag != TOMBSTONE,
            Filter::Tag(t) => tag == t,
        }
    }
}

/// One search hit: the row's slot and its rank key `s` (higher first):
/// `dot` for ip/cosine, `−t` for L2 (the index turns it into the reported
/// score).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hit {
    pub slot: u32,
    pub key: f32,
}

impl Hit {
    /// `self` ranks before `other`: higher key, then lower slot.
    #[inline]
    pub(crate) fn better(&self, other: &Hit) -> bool {
        self.key > other.key || (self.key == other.key && self.slot < other.slot)
    }
}

/// Vector storage of one index (see the module docs for the score rules).
/// Every method either succeeds or leaves the store as it was.
pub(crate) trait Store: Send + Sync {
    /// Rows the store holds memory for.
    fn capacity(&self) -> usize;

    /// Bytes held (rows, tags, norms; device memory for a GPU store).
    fn bytes(&self) -> u64;

    /// Make room for at least `rows` rows, growing by doubling (at least
    /// `rows`, at most `max_rows`), keeping every row. On failure (e.g.
    /// `E_GPU_OOM`) the store is unchanged and still usable.
    fn reserve(&mut self, rows: usize, max_rows: usize) -> Result<()>;

    /// Write `rows` (row-major, `slots.len() × dims`, fp32; the store
    /// rounds to its dtype) at `slots` (each `< capacity`) with `tags`.
    fn write(&mut self, slots: &[u32], rows: &[f32], tags: &[u32]) -> Result<()>;

    /// Set the tag of `slots` (remove: [`TOMBSTONE`]).
    fn set_tags(&mut self, slots: &[u32], tag: u32) -> Result<()>;

    /// The rows at `slots` as stored, converted to fp32.
    fn read(&self, slots: &[u32]) -> Result<Vec<f32>>;

    /// For each of the `queries.len() / dims` queries, the best `k` rows
    /// among slots `0..len` that `filter` admits, best first (fewer when
    /// fewer rows qualify).
    fn search(&self, queries: &[f32], k: usize, filter: Filter, len: usize) -> Result<Vec<Vec<Hit>>>;

    /// Keep only `keep` (ascending slots), moved down to slots
    /// `0..keep.len()` in that order.
    fn compact(&mut self, keep: &[u32]) -> Result<()>;
}
