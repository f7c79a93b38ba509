//! The CPU backend's attention over packed prefix trees, and over the KV cache of
//! sequences being generated ([`cached_attention`]): the rows cut into blocks of at most
//! [`ATTENTION_BLOCK`] query rows per KV head (all its query heads), computed in parallel,
//! each summing its rows' heads into the output in place (only the blocks that hold a row
//! that is needed: [`attention`]). A block's keys are the ones every row of it sees (a tree's
//! prefix, or a sequence's cache), then its own rows causally; it takes them a tile of
//! [`KEY_TILE`] at a time (flash-style): the tile's scores, an online softmax
//! (`softmax.rs`: a running maximum and sum per row, what was gathered rescaled when the
//! maximum grows), and the tile's weighted values added, so that its memory is bounded
//! whatever the window (docs/ARCHITECTURE.md §4). Its products run on `gemm`'s microkernels
//! (`panels.rs`) over each run of keys and values laid out once ([`LaidOut`]). The one row of a
//! single-token generation step goes through [`single_row`] instead: dot products and
//! weighted sums in a fixed order.

use std::borrow::Cow;
use std::ops::Range;

use evalmesh_common::TreeLayout;
use rayon::prelude::*;

use super::kernels::{exp_in_place, prefetch, Isa, SendPtr, View};
use super::panels::{lay_out, multiply, Microkernels, Panels};
use super::softmax::{tile_softmax, RowState, Tile};
use crate::backend::{AttentionSpec, HeadLayout};
use crate::tensor::Matrix;

/// Query rows per attention block (times its KV head's query heads): the rows that share
/// each tile of keys and values laid out once (64 rows of 3 heads by 512 keys take 384 KiB
/// of keys and values together, in L2).
const ATTENTION_BLOCK: usize = 64;

/// Normalises `row[visible]` to a softmax in place, after capping it with `cap·tanh(s/cap)`
/// when `softcap` is given, and zeroes the rest.
fn softmax_range(row: &mut [f32], visible: Range<usize>, softcap: Option<f32>) {
    row[..visible.start].fill(0.0);
    let (live, masked) = row[visible.start..].split_at_mut(visible.len());
    if let Some(cap) = softcap {
        for v in live.iter_mut() {
            *v = cap * (*v / cap).tanh();
        }
    }
    let max = live.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv = (1.0 / exp_in_place(live, max)) as f32;
    for v in live.iter_mut() {
        *v *= inv;
    }
    masked.fill(0.0);
}

/// Keys per tile of a block's attention: a tile's keys and values stay in L2 however long
/// the window, and each row's softmax of a tile ends in work of its own (a maximum, a sum and a
/// rescaling), which a longer tile spreads over more keys (measured here over a window of
/// 8,192, alternating pairs: 512 keys about 3% faster than 256 in blocks of 128 rows, and
/// blocks of 64 rows as fast as of 128 with 512 keys).
const KEY_TILE: usize = 512;

thread_local! {
    /// Each thread's buffer for a slice of a tile's scores ([`AttentionBlock::compute`]),
    /// kept from block to block: filling a fresh one for every block took about 1% of a run.
    /// A slice's product writes every score that its softmax and values then read.
    static SCORES: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The keys and values every query row of a block sees in full.
#[derive(Clone)]
enum Shared<'a> {
    /// Rows of the fused QKV activation (a tree's prefix; empty for the prefix itself).
    Rows(Range<usize>),
    /// A sequence's cache: `len` rows of its keys then values ([`cached_attention`]).
    Cache { data: &'a [f32], len: usize },
}

impl Shared<'_> {
    fn len(&self) -> usize {
        match self {
            Shared::Rows(rows) => rows.len(),
            Shared::Cache { len, .. } => *len,
        }
    }
}

impl<'a> AttentionBlock<'a> {
    /// The block from its first row that `needed` marks to its last, where it has one.
    fn trimmed(self, needed: impl Fn(usize) -> bool) -> Option<Self> {
        let first = self.rows.clone().find(|&r| needed(r))?;
        let last = self.rows.clone().rfind(|&r| needed(r))?;
        let causal_offset = self.causal_offset + (first - self.rows.start);
        Some(AttentionBlock { rows: first..last + 1, causal_offset, ..self })
    }

    /// The run of its shared keys, where it has any.
    fn shared_run(&self) -> Option<Run<'a>> {
        match self.shared {
            Shared::Rows(ref rows) if rows.is_empty() => None,
            Shared::Rows(ref rows) => Some(Run::Rows { first: rows.start, len: rows.len() }),
            Shared::Cache { data, len } => Some(Run::Cache { data, len }),
        }
    }
}

/// One block of attention work: query rows `rows` (absolute) of every query head of KV
/// head `kv` attend to all of `shared` (unmasked) and causally to `own` (absolute rows,
/// query row `rows.start + i` sees `own.start ..= own.start + causal_offset + i`).
struct AttentionBlock<'a> {
    kv: usize,
    rows: Range<usize>,
    shared: Shared<'a>,
    own_start: usize,
    causal_offset: usize,
}

impl AttentionBlock<'_> {
    /// Writes the block's output into `out` (rows of `width` values from `out.0`, zero
    /// where the block writes): row `rows.start + i`'s heads of KV group `kv` (`group` query
    /// heads share the KV head). Its keys come in tiles of at most [`KEY_TILE`] (the shared
    /// keys from the first, then its own from the first). A tile's rows go through it a
    /// slice at a time, at most two microkernel tiles' rows of one query head, whose scores
    /// stay in L1 from their product to the values' (12 rows with AVX2: the full window's
    /// evaluation took 0.976 of the time of the whole tile's rows at once, its scores in L2;
    /// 24 rows as fast as 12), its queries read in place in `qkv` and its outputs summed in
    /// place in `out`: the slice's scores through one product, folded into each row's online
    /// softmax, and the tile's values added to the slice's sums through one product, both
    /// over the keys and values of its shared run (where it has one) and its own, as they
    /// were laid out, up to the last key that a row of the slice sees (a causal block's last
    /// tile would otherwise have its scores masked and its values weighted by zero: at ctx
    /// 512, 0.98 of the time). Each of the values' sums starts from +0 and adds a key's
    /// weighted value with one fused multiply-add, so it is never −0, and the zero weights
    /// past the last key would have left it as it is. A row's arithmetic depends on its tree
    /// alone: the tiles are cut at fixed key indices, and the microkernels sum each output
    /// over a tile (at most 512) or a head (`head_dim`) as one chain whatever the rows beside it.
    ///
    /// # Safety
    /// `out` must hold `qkv.rows` rows of `width` values, zero at the block's rows and heads,
    /// which nothing else reads or writes meanwhile.
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute(
        &self,
        isa: Isa,
        qkv: &Matrix,
        (shared, own): (Option<&LaidOut>, &LaidOut),
        heads: HeadLayout,
        spec: AttentionSpec,
        out: SendPtr,
        width: usize,
    ) {
        let d = heads.head_dim;
        let (group, kv) = (heads.num_heads / heads.num_kv_heads, self.kv);
        let m = self.rows.len();
        let a = self.shared.len();
        let keys = a + self.causal_offset + m;
        // The laid-out keys and values from key `t` of the block's list: the shared ones
        // below `a`, then its own.
        let laid = |t: usize| match shared {
            Some(shared) if t < a => (shared, t),
            _ => (own, t - a),
        };
        // Row i sees keys `first(i)..last(i)`: trees start at position 0 and a query's
        // keys are listed in position order, so a key's index is its position.
        let last = |i: usize| a + self.causal_offset + i + 1;
        let first = |i: usize| spec.window.map_or(0, |w| last(i).saturating_sub(w));
        let tiles = (0..a).step_by(KEY_TILE).map(|t| t..(t + KEY_TILE).min(a));
        let tiles = tiles.chain((a..keys).step_by(KEY_TILE).map(|t| t..(t + KEY_TILE).min(keys)));
        let slice = 2 * Microkernels::machine().row_tile();
        // The slices: a query head of the group, and its rows.
        let slices: Vec<(usize, Range<usize>)> = (kv * group..(kv + 1) * group)
            .flat_map(|h| (0..m).step_by(slice).map(move |i| (h, i..(i + slice).min(m))))
            .collect();
        let mut scores = SCORES.take();
        scores.resize(slice * KEY_TILE, 0.0);
        // Each row's state, head by head: row i of head h at `state(h, i)`.
        let mut states = vec![RowState::EMPTY; group * m];
        let state = |h: usize, i: usize| (h - kv * group) * m + i;
        let mut factors = vec![0.0f32; slice];
        // Where row i's head h lies in `out`.
        let at = |h: usize, i: usize| out.at((self.rows.start + i) * width + h * d);
        for tile in tiles.filter(|t| t.end > first(0)) {
            let (run, t) = laid(tile.start);
            for &(h, ref rows) in &slices {
                let here = rows.len();
                let visible: Vec<Range<usize>> = rows
                    .clone()
                    .map(|i| {
                        let (from, to) = (first(i).max(tile.start), last(i).min(tile.end));
                        if from < to {
                            from - tile.start..to - tile.start
                        } else {
                            0..0
                        }
                    })
                    .collect();
                // The tile's keys up to the last that a row of the slice sees.
                let n = visible.iter().map(|v| v.end).max().unwrap_or(0);
                if n == 0 {
                    continue;
                }
                let q = qkv.data[(self.rows.start + rows.start) * qkv.cols + h * d..].as_ptr();
                let q = View { ptr: q, rs: qkv.cols as isize, cs: 1 };
                // SAFETY: the run holds keys `t..t + n` (tiles lie in the block's runs);
                // `qkv` holds the slice's rows of head h, d values each, `qkv.cols` apart;
                // `scores` holds `here` rows of KEY_TILE ≥ n.
                unsafe { multiply(here, n, d, q, run.keys_from(t), scores.as_mut_ptr(), KEY_TILE, false, spec.scale) };
                let first_state = state(h, rows.start);
                let tile_state = Tile {
                    scores: &mut scores[..here * KEY_TILE],
                    ld: KEY_TILE,
                    keys: n,
                    visible: &visible,
                    softcap: spec.softcap,
                    states: &mut states[first_state..first_state + here],
                    factors: &mut factors[..here],
                };
                tile_softmax(isa, tile_state);
                for (i, &factor) in rows.clone().zip(&factors[..here]) {
                    if factor != 1.0 {
                        // SAFETY: row i's head h in `out` is this block's, d values.
                        let row = unsafe { std::slice::from_raw_parts_mut(at(h, i), d) };
                        row.iter_mut().for_each(|o| *o *= factor);
                    }
                }
                let p = View { ptr: scores.as_ptr(), rs: KEY_TILE as isize, cs: 1 };
                // SAFETY: as above; the slice's rows of head h in `out` are the block's,
                // `here` rows of d values `width` apart.
                unsafe { multiply(here, d, n, p, run.values_from(t), at(h, rows.start), width, true, 1.0) };
            }
        }
        SCORES.set(scores);
        for &(h, ref rows) in &slices {
            for i in rows.clone() {
                let inv = (1.0 / states[state(h, i)].total()) as f32;
                // SAFETY: as above.
                let row = unsafe { std::slice::from_raw_parts_mut(at(h, i), d) };
                row.iter_mut().for_each(|o| *o *= inv);
            }
        }
    }
}

/// Splits the trees into attention blocks of at most [`ATTENTION_BLOCK`] query rows,
/// per KV head: prefix rows attend causally within the prefix; branch rows attend to the
/// whole prefix and causally within their branch.
fn attention_blocks(trees: &[TreeLayout], num_kv_heads: usize) -> Vec<AttentionBlock<'static>> {
    let mut blocks = Vec::new();
    for tree in trees {
        let prefix = tree.start..tree.start + tree.prefix_len;
        push_blocks(&mut blocks, Shared::Rows(0..0), prefix.clone(), num_kv_heads);
        let mut branch_start = prefix.end;
        for &len in &tree.branch_lens {
            push_blocks(&mut blocks, Shared::Rows(prefix.clone()), branch_start..branch_start + len, num_kv_heads);
            branch_start += len;
        }
    }
    blocks
}

/// The blocks of rows `own` (each seeing `shared` and causally its own rows), per KV head.
fn push_blocks<'a>(blocks: &mut Vec<AttentionBlock<'a>>, shared: Shared<'a>, own: Range<usize>, num_kv_heads: usize) {
    for offset in (0..own.len()).step_by(ATTENTION_BLOCK) {
        let rows = own.start + offset..(own.start + offset + ATTENTION_BLOCK).min(own.end);
        for kv in 0..num_kv_heads {
            blocks.push(AttentionBlock {
                kv,
                rows: rows.clone(),
                shared: shared.clone(),
                own_start: own.start,
                causal_offset: offset,
            });
        }
    }
}

/// Attention over `qkv` (checked against `trees` and `heads` by the caller) with kernels for
/// `isa`, one that the machine runs: `rows × num_heads·head_dim`, computed for the rows
/// that `needed` marks (zeros for the others) in the blocks of rows that hold one, each
/// from its first needed row to its last (a row's arithmetic does not depend on the rows
/// beside it).
pub fn attention(
    isa: Isa,
    qkv: &Matrix,
    trees: &[TreeLayout],
    heads: HeadLayout,
    spec: AttentionSpec,
    needed: impl Fn(usize) -> bool,
) -> Matrix {
    let blocks = attention_blocks(trees, heads.num_kv_heads).into_iter().filter_map(|b| b.trimmed(&needed)).collect();
    compute_blocks(isa, qkv, blocks, heads, spec)
}

/// A sequence's cache of one layer: its earlier tokens' keys then values
/// (`2·num_kv_heads·head_dim` values a token, in position order), in two pieces: the
/// prefix it shares with other sequences (empty where it shares none), then its own.
#[derive(Clone, Copy, Default)]
pub struct CacheView<'a> {
    pub shared: &'a [f32],
    pub own: &'a [f32],
}

impl<'a> CacheView<'a> {
    /// A cache in one piece.
    pub fn whole(cache: &'a [f32]) -> CacheView<'a> {
        CacheView { shared: &[], own: cache }
    }

    /// Its tokens' entries in position order, `width` values each.
    fn entries(&self, width: usize) -> impl Iterator<Item = &'a [f32]> {
        self.shared.chunks_exact(width).chain(self.own.chunks_exact(width))
    }

    /// The cache in one piece: borrowed where it is, copied where it is in two.
    fn contiguous(&self) -> Cow<'a, [f32]> {
        match (self.shared.is_empty(), self.own.is_empty()) {
            (true, _) => Cow::Borrowed(self.own),
            (_, true) => Cow::Borrowed(self.shared),
            _ => Cow::Owned([self.shared, self.own].concat()),
        }
    }
}

/// One sequence's rows of a generation step: `rows` of the fused QKV activation, after
/// the sequence's cache.
pub struct CachedRows<'a> {
    pub cache: CacheView<'a>,
    pub rows: Range<usize>,
}

/// Attention of each sequence's rows over its cache and causally over its own rows:
/// `rows × num_heads·head_dim`. A row's arithmetic depends only on its sequence, so a
/// sequence's tokens do not depend on what else is decoded with it: a single-token step's
/// row always goes through [`single_row`], the rows of a longer step through the blocks.
/// Neither depends on where the cache is cut between a shared prefix and the sequence's own.
pub fn cached_attention(qkv: &Matrix, sequences: &[CachedRows<'_>], heads: HeadLayout, spec: AttentionSpec) -> Matrix {
    let width = 2 * heads.num_kv_heads * heads.head_dim;
    let (single, several): (Vec<&CachedRows<'_>>, Vec<&CachedRows<'_>>) =
        sequences.iter().partition(|s| s.rows.len() == 1);
    let caches: Vec<Cow<'_, [f32]>> = several.iter().map(|s| s.cache.contiguous()).collect();
    let mut blocks = Vec::new();
    for (s, cache) in several.iter().zip(&caches) {
        // A sequence's first step (an empty cache) is a plain causal prefix.
        let shared = match cache.len() / width {
            0 => Shared::Rows(0..0),
            len => Shared::Cache { data: cache, len },
        };
        push_blocks(&mut blocks, shared, s.rows.clone(), heads.num_kv_heads);
    }
    let mut out = compute_blocks(Isa::widest(), qkv, blocks, heads, spec);
    let rows: Vec<Vec<f32>> = single.par_iter().map(|s| single_row(qkv, s.rows.start, s.cache, heads, spec)).collect();
    for (s, values) in single.iter().zip(rows) {
        out.data[s.rows.start * out.cols..][..out.cols].copy_from_slice(&values);
    }
    out
}

/// The attention of row `row` of `qkv`, every head, over its cache then the row's own key:
/// each score a dot product ([`dots`]), each output the weighted values added in key order. A
/// decode step has one row a sequence, for which four products a head cost more than
/// the arithmetic. Its operations are the same on every instruction set (multiplies and
/// adds fused only where `mul_add` asks, which rounds once everywhere), so the widest one
/// the machine runs is used.
fn single_row(qkv: &Matrix, row: usize, cache: CacheView<'_>, heads: HeadLayout, spec: AttentionSpec) -> Vec<f32> {
    single_row_on(Isa::widest(), qkv.row(row), cache, heads, spec)
}

/// [`single_row`] with its KV groups' kernels compiled for `isa`, one that the machine
/// runs; the groups in parallel.
fn single_row_on(isa: Isa, own: &[f32], cache: CacheView<'_>, heads: HeadLayout, spec: AttentionSpec) -> Vec<f32> {
    let d = heads.head_dim;
    let width = 2 * heads.num_kv_heads * d;
    let keys = (cache.shared.len() + cache.own.len()) / width + 1;
    let visible = spec.window.map_or(0, |w| keys.saturating_sub(w))..keys;
    // The visible cache entries, then the row's own keys and values as one more entry.
    let own_entry = [&own[heads.k_cols()], &own[heads.v_cols()]].concat();
    let entries: Vec<&[f32]> = cache.entries(width).chain([own_entry.as_slice()]).skip(visible.start).collect();
    let row = SingleRow { own, entries, keys, visible, heads, spec };
    let mut out = vec![0.0f32; heads.num_heads * d];
    let group = heads.num_heads / heads.num_kv_heads;
    out.par_chunks_exact_mut(group * d).enumerate().for_each(|(kv, out)| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the machine runs its features (`Isa::widest` or narrower).
        Isa::Avx512 => unsafe { group_avx512(&row, kv, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 => unsafe { group_avx2(&row, kv, out) },
        _ => group_generic(&row, kv, out),
    });
    out
}

/// One row's attention, as its KV groups see it.
struct SingleRow<'a> {
    /// The row's fused QKV values.
    own: &'a [f32],
    /// The visible keys' entries (keys then values of every KV head), the row's own last.
    entries: Vec<&'a [f32]>,
    /// Keys in all, the visible ones `visible`.
    keys: usize,
    visible: Range<usize>,
    heads: HeadLayout,
    spec: AttentionSpec,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
unsafe fn group_avx512(row: &SingleRow<'_>, kv: usize, out: &mut [f32]) {
    group_generic(row, kv, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn group_avx2(row: &SingleRow<'_>, kv: usize, out: &mut [f32]) {
    group_generic(row, kv, out);
}

/// KV head `kv`'s part of the output: the scores of its group's query heads over each
/// key, read once for all of them, then the values likewise.
#[inline(always)]
fn group_generic(row: &SingleRow<'_>, kv: usize, out: &mut [f32]) {
    let SingleRow { own, entries, keys, visible, heads, spec } = row;
    let (d, keys) = (heads.head_dim, *keys);
    let group = heads.num_heads / heads.num_kv_heads;
    let (k, v) = (kv * d, heads.num_kv_heads * d + kv * d);
    let queries = &own[kv * group * d..(kv + 1) * group * d];
    let mut scores = vec![0.0f32; group * keys];
    // Four keys at a time, for four independent streams of loads and sums.
    let (fours, rest) = entries.as_chunks::<4>();
    for (i, four) in fours.iter().enumerate() {
        for ahead in fours.get(i + 2).into_iter().flatten() {
            ahead[k..k + d].iter().step_by(16).for_each(|line| prefetch(line));
        }
        let keys4 = four.map(|entry| &entry[k..k + d]);
        for (q, scores) in queries.chunks_exact(d).zip(scores.chunks_exact_mut(keys)) {
            let t = visible.start + 4 * i;
            scores[t..t + 4].copy_from_slice(&dots(q, keys4).map(|s| s * spec.scale));
        }
    }
    for (i, entry) in rest.iter().enumerate() {
        for (q, scores) in queries.chunks_exact(d).zip(scores.chunks_exact_mut(keys)) {
            scores[visible.start + 4 * fours.len() + i] = dots(q, [&entry[k..k + d]])[0] * spec.scale;
        }
    }
    for scores in scores.chunks_exact_mut(keys) {
        softmax_range(scores, visible.clone(), spec.softcap);
    }
    for (i, (t, entry)) in visible.clone().zip(entries).enumerate() {
        if let Some(ahead) = entries.get(i + 8) {
            ahead[v..v + d].iter().step_by(16).for_each(|line| prefetch(line));
        }
        let value = &entry[v..v + d];
        for (out, scores) in out.chunks_exact_mut(d).zip(scores.chunks_exact(keys)) {
            let p = scores[t];
            for (o, &value) in out.iter_mut().zip(value) {
                *o += p * value;
            }
        }
    }
}

/// `q · key` for each of `keys`, each in a fixed order: sixteen lanes of partial sums,
/// the lanes added pairwise, then the products past the last sixteen in order.
#[inline(always)]
fn dots<const N: usize>(q: &[f32], keys: [&[f32]; N]) -> [f32; N] {
    let (qc, qt) = q.as_chunks::<16>();
    let mut lanes = [[0.0f32; 16]; N];
    for (c, x) in qc.iter().enumerate() {
        for (lanes, key) in lanes.iter_mut().zip(&keys) {
            let y = &key[c * 16..c * 16 + 16];
            *lanes = std::array::from_fn(|l| lanes[l] + x[l] * y[l]);
        }
    }
    std::array::from_fn(|i| {
        let mut lanes = lanes[i];
        let mut half = lanes.len();
        while half > 1 {
            half /= 2;
            for l in 0..half {
                lanes[l] += lanes[l + half];
            }
        }
        let tail = &keys[i][qc.len() * 16..];
        qt.iter().zip(tail).fold(lanes[0], |sum, (x, y)| sum + x * y)
    })
}

/// A run of keys and values that blocks read from its first: `len` rows of `qkv` from
/// `first` (a tree's prefix or a branch), or a sequence's cache.
#[derive(Clone, Copy)]
enum Run<'a> {
    Rows { first: usize, len: usize },
    Cache { data: &'a [f32], len: usize },
}

impl<'a> Run<'a> {
    /// The same run for every block that reads it, whatever its length.
    fn id(&self) -> (bool, usize) {
        match self {
            Run::Rows { first, .. } => (false, *first),
            Run::Cache { data, .. } => (true, data.as_ptr() as usize),
        }
    }

    fn len(&self) -> usize {
        match self {
            Run::Rows { len, .. } | Run::Cache { len, .. } => *len,
        }
    }

    /// Its values, where KV head `kv`'s key `t` begins, and where its value does (`t`
    /// times `stride` further on).
    fn source(&self, qkv: &'a Matrix, heads: HeadLayout, kv: usize) -> (&'a [f32], usize, usize, usize) {
        let d = heads.head_dim;
        match *self {
            Run::Rows { first, .. } => {
                let at = |col: usize| first * qkv.cols + col + kv * d;
                (&qkv.data, at(heads.k_cols().start), at(heads.v_cols().start), qkv.cols)
            }
            Run::Cache { data, .. } => {
                let width = 2 * heads.num_kv_heads * d;
                (data, kv * d, width / 2 + kv * d, width)
            }
        }
    }
}

/// A run's keys and values of one KV head laid out for the microkernels (`panels.rs`), once
/// for every block and head that reads them, where `gemm` had packed a tile of each again
/// for every block (6% of a run over the model's full window with AVX2): the keys as the
/// panels of a weight whose output features are the keys and whose inputs are their
/// components, the values as those of a weight whose output features are the components
/// and whose inputs are the keys.
struct LaidOut {
    keys: Vec<f32>,
    values: Vec<f32>,
    head_dim: usize,
    len: usize,
}

impl LaidOut {
    fn of(run: Run<'_>, qkv: &Matrix, heads: HeadLayout, kv: usize) -> LaidOut {
        let (d, len) = (heads.head_dim, run.len());
        let (data, keys_at, values_at, stride) = run.source(qkv, heads, kv);
        let keys = lay_out(len, d, |t, j| data[keys_at + t * stride + j]);
        let values = lay_out(d, len, |j, t| data[values_at + t * stride + j]);
        LaidOut { keys, values, head_dim: d, len }
    }

    /// The keys from key `t`, the first of a tile (a multiple of [`KEY_TILE`]).
    fn keys_from(&self, t: usize) -> Panels {
        let width = Microkernels::panel_width();
        debug_assert!(t.is_multiple_of(width) && t < self.len);
        Panels::of_weight(self.keys[t / width * self.head_dim * width..].as_ptr(), self.head_dim)
    }

    /// The values from key `t`.
    fn values_from(&self, t: usize) -> Panels {
        Panels::of_weight(self.values.as_ptr(), self.len).skipping(t)
    }
}

/// The blocks' outputs in their places, computed in parallel with kernels for `isa`.
fn compute_blocks<'a>(
    isa: Isa,
    qkv: &Matrix,
    blocks: Vec<AttentionBlock<'a>>,
    heads: HeadLayout,
    spec: AttentionSpec,
) -> Matrix {
    let d = heads.head_dim;
    // The runs the blocks read, each once (with the longest length a block reads of it),
    // and each block's shared and own run.
    let mut ids = std::collections::HashMap::new();
    let mut runs: Vec<Run<'_>> = Vec::new();
    let mut place = |run: Run<'a>| {
        let i = *ids.entry(run.id()).or_insert_with(|| {
            runs.push(run);
            runs.len() - 1
        });
        if run.len() > runs[i].len() {
            runs[i] = run;
        }
        i
    };
    let reads: Vec<(Option<usize>, usize)> = blocks
        .iter()
        .map(|b| {
            let own = Run::Rows { first: b.own_start, len: b.causal_offset + b.rows.len() };
            (b.shared_run().map(&mut place), place(own))
        })
        .collect();
    let laid: Vec<LaidOut> = (0..runs.len() * heads.num_kv_heads)
        .into_par_iter()
        .map(|i| LaidOut::of(runs[i / heads.num_kv_heads], qkv, heads, i % heads.num_kv_heads))
        .collect();
    let width = heads.num_heads * d;
    let mut out = Matrix::zeros(qkv.rows, width);
    let ptr = SendPtr(out.data.as_mut_ptr());
    blocks.par_iter().zip(&reads).with_max_len(1).for_each(|(b, &(shared, own))| {
        let laid = |run: usize| &laid[run * heads.num_kv_heads + b.kv];
        // SAFETY: `out` is `qkv.rows × width`, zeros; the blocks' rows of one KV head are
        // apart (a tree's rows, or a sequence's, in blocks), so each block alone writes
        // its rows' heads of its KV head.
        unsafe { b.compute(isa, qkv, (shared.map(laid), laid(own)), heads, spec, ptr, width) }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;

    /// Attention computed naively in f64 for a tree, query row by query row.
    fn reference_attention(qkv: &Matrix, tree: &TreeLayout, heads: HeadLayout, spec: AttentionSpec) -> Vec<Vec<f64>> {
        let d = heads.head_dim;
        let group = heads.num_heads / heads.num_kv_heads;
        let mut visible: Vec<Vec<usize>> = Vec::new();
        for i in 0..tree.prefix_len {
            visible.push((tree.start..=tree.start + i).collect());
        }
        let mut start = tree.start + tree.prefix_len;
        for &len in &tree.branch_lens {
            for i in 0..len {
                let mut keys: Vec<usize> = (tree.start..tree.start + tree.prefix_len).collect();
                keys.extend(start..=start + i);
                visible.push(keys);
            }
            start += len;
        }
        // A query's keys are in position order, the last its own: the window keeps the last `w`.
        for keys in &mut visible {
            if let Some(w) = spec.window {
                keys.drain(..keys.len().saturating_sub(w));
            }
        }
        visible
            .iter()
            .enumerate()
            .map(|(i, keys)| {
                let row = tree.start + i;
                let mut out = vec![0.0f64; heads.num_heads * d];
                for h in 0..heads.num_heads {
                    let kv = h / group;
                    let q = &qkv.row(row)[h * d..(h + 1) * d];
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|&k| {
                            let kr = &qkv.row(k)[heads.k_cols().start + kv * d..][..d];
                            let s =
                                q.iter().zip(kr).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * spec.scale as f64;
                            spec.softcap.map_or(s, |cap| cap as f64 * (s / cap as f64).tanh())
                        })
                        .collect();
                    let max = s.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for (&k, p) in keys.iter().zip(&e) {
                        let vr = &qkv.row(k)[heads.v_cols().start + kv * d..][..d];
                        for j in 0..d {
                            out[h * d + j] += p / total * vr[j] as f64;
                        }
                    }
                }
                out
            })
            .collect()
    }

    #[test]
    fn tree_attention_matches_reference() {
        let heads = HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        // Two trees: a 70-row prefix (two blocks) with branches of 3 and 66 rows, and a plain sequence.
        let trees = vec![
            TreeLayout { start: 0, prefix_len: 70, branch_lens: vec![3, 66] },
            TreeLayout { start: 139, prefix_len: 5, branch_lens: vec![] },
        ];
        let qkv = Matrix::random(144, heads.width(), 5, 1.0);
        let plain = AttentionSpec { scale: 1.0 / 8f32.sqrt(), softcap: None, window: None };
        // Gemma 2's kind: a cap, another scale, and a window shorter than the trees.
        let gemma = AttentionSpec { scale: 0.5, softcap: Some(2.0), window: Some(9) };
        for spec in [plain, gemma] {
            let out = CpuBackend::default().attention(&qkv, &trees, heads, spec).unwrap();
            for tree in &trees {
                for (i, want) in reference_attention(&qkv, tree, heads, spec).iter().enumerate() {
                    let got = out.row(tree.start + i);
                    for (g, w) in got.iter().zip(want) {
                        // f32 softmax and sums over ≤ 140 keys: absolute error ≪ 1e-5.
                        assert!((*g as f64 - w).abs() < 1e-5, "{spec:?}: row {} differs: {g} vs {w}", tree.start + i);
                    }
                }
            }
        }
    }

    #[test]
    fn long_rows_fold_their_key_tiles_into_the_reference_softmax() {
        // A 600-row prefix (three key tiles, the last partial) with a branch of 70 rows
        // that sees all of it and then its own keys; a window that starts inside a tile
        // and drops whole tiles; on every instruction set the machine runs, the same bits.
        let heads = HeadLayout { num_heads: 2, num_kv_heads: 1, head_dim: 16 };
        let tree = TreeLayout { start: 0, prefix_len: 600, branch_lens: vec![70] };
        let qkv = Matrix::random(670, heads.width(), 11, 2.0);
        let plain = AttentionSpec { scale: 0.25, softcap: None, window: None };
        let windowed = AttentionSpec { scale: 0.25, softcap: Some(5.0), window: Some(300) };
        for spec in [plain, windowed] {
            let out = attention(Isa::widest(), &qkv, std::slice::from_ref(&tree), heads, spec, |_| true);
            for (i, want) in reference_attention(&qkv, &tree, heads, spec).iter().enumerate() {
                for (g, w) in out.row(i).iter().zip(want) {
                    // f32 scores, an f32 running maximum and rescaling over ≤ 670 keys:
                    // absolute error well under 1e-5 for values of order 1.
                    assert!((*g as f64 - w).abs() < 1e-5, "{spec:?}: row {i}: {g} vs {w}");
                }
            }
            for isa in Isa::available() {
                let on = attention(isa, &qkv, std::slice::from_ref(&tree), heads, spec, |_| true);
                assert_eq!(on, out, "{isa:?}");
            }
        }
    }

    #[test]
    fn rows_alone_are_the_bits_of_every_row() {
        // A 130-row prefix with branches of 40 and 3: rows inside blocks, a block's first
        // and last, a branch's only, in any order.
        let heads = HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        let trees = vec![TreeLayout { start: 0, prefix_len: 130, branch_lens: vec![40, 3] }];
        let qkv = Matrix::random(173, heads.width(), 9, 1.0);
        let spec = AttentionSpec { scale: 0.3, softcap: None, window: None };
        let backend = CpuBackend::default();
        let all = backend.attention(&qkv, &trees, heads, spec).unwrap();
        let rows = [150, 5, 64, 127, 128, 129, 131, 171, 172, 63];
        let some = backend.attention_of_rows(&qkv, &trees, heads, spec, &rows).unwrap();
        for (i, &r) in rows.iter().enumerate() {
            assert_eq!(some.row(i), all.row(r), "row {r}");
        }
    }

    #[test]
    fn cached_rows_attend_as_branches_of_their_prefix() {
        // A prefix of 70 rows in the cache and 5 new rows: as the branch of a tree, bit for bit.
        let heads = HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 8 };
        let qkv = Matrix::random(75, heads.width(), 7, 1.0);
        let spec = AttentionSpec { scale: 0.3, softcap: Some(3.0), window: Some(40) };
        let tree = vec![TreeLayout { start: 0, prefix_len: 70, branch_lens: vec![5] }];
        let whole = attention(Isa::widest(), &qkv, &tree, heads, spec, |_| true);
        let kv = heads.k_cols().start..heads.v_cols().end;
        let cache: Vec<f32> = (0..70).flat_map(|r| qkv.row(r)[kv.clone()].to_vec()).collect();
        let width = heads.num_heads * heads.head_dim;
        // Wherever the cache is cut between a shared prefix and the sequence's own tokens,
        // a longer step's rows and a single row are the same bits.
        let single =
            cached_attention(&qkv, &[CachedRows { cache: CacheView::whole(&cache), rows: 70..71 }], heads, spec);
        for cut in [0, 1, 33, 69, 70] {
            let (shared, own) = cache.split_at(cut * kv.len());
            let step = [CachedRows { cache: CacheView { shared, own }, rows: 70..75 }];
            let cached = cached_attention(&qkv, &step, heads, spec);
            assert_eq!(cached.data[70 * width..], whole.data[70 * width..], "cut at {cut}");
            let one =
                cached_attention(&qkv, &[CachedRows { cache: CacheView { shared, own }, rows: 70..71 }], heads, spec);
            assert_eq!(one.row(70), single.row(70), "cut at {cut}");
        }
    }

    #[test]
    fn single_token_steps_match_reference_whatever_the_batch() {
        // Row 70 after a 70-row cache, alone and beside a longer step and another single one.
        let heads = HeadLayout { num_heads: 4, num_kv_heads: 2, head_dim: 20 };
        let qkv = Matrix::random(80, heads.width(), 8, 1.0);
        let kv = heads.k_cols().start..heads.v_cols().end;
        let cache: Vec<f32> = (0..70).flat_map(|r| qkv.row(r)[kv.clone()].to_vec()).collect();
        let plain = AttentionSpec { scale: 0.3, softcap: None, window: None };
        let gemma = AttentionSpec { scale: 0.3, softcap: Some(3.0), window: Some(40) };
        for spec in [plain, gemma] {
            let tree = TreeLayout { start: 0, prefix_len: 70, branch_lens: vec![1] };
            let want = &reference_attention(&qkv, &tree, heads, spec)[70];
            let alone =
                cached_attention(&qkv, &[CachedRows { cache: CacheView::whole(&cache), rows: 70..71 }], heads, spec);
            let width = heads.num_heads * heads.head_dim;
            for (g, w) in alone.row(70).iter().zip(want) {
                // f32 dot products of 20 terms and a softmax over ≤ 71 keys: error ≪ 1e-5.
                assert!((*g as f64 - w).abs() < 1e-5, "{spec:?}: {g} vs {w}");
            }
            let batch = [
                CachedRows { cache: CacheView::whole(&cache[..30 * kv.len()]), rows: 71..75 },
                CachedRows { cache: CacheView::whole(&cache), rows: 70..71 },
                CachedRows { cache: CacheView::whole(&cache[..2 * kv.len()]), rows: 75..76 },
            ];
            let beside = cached_attention(&qkv, &batch, heads, spec);
            assert_eq!(beside.data[70 * width..71 * width], alone.data[70 * width..71 * width]);
            // The same bits whatever instruction set the kernel is compiled for.
            for isa in Isa::available() {
                assert_eq!(
                    single_row_on(isa, qkv.row(70), CacheView::whole(&cache), heads, spec),
                    alone.row(70),
                    "{isa:?}"
                );
            }
        }
    }

    #[test]
    fn branch_rows_do_not_see_sibling_branches() {
        let heads = HeadLayout { num_heads: 1, num_kv_heads: 1, head_dim: 4 };
        let tree = vec![TreeLayout { start: 0, prefix_len: 2, branch_lens: vec![2, 2] }];
        let mut qkv = Matrix::random(6, heads.width(), 6, 1.0);
        let spec = AttentionSpec { scale: 0.5, softcap: None, window: None };
        let before = CpuBackend::default().attention(&qkv, &tree, heads, spec).unwrap();
        for v in &mut qkv.data[2 * heads.width()..4 * heads.width()] {
            *v += 1.0; // change the first branch only
        }
        let after = CpuBackend::default().attention(&qkv, &tree, heads, spec).unwrap();
        assert_eq!(before.data[..2 * 4], after.data[..2 * 4], "prefix rows changed");
        assert_eq!(before.data[4 * 4..], after.data[4 * 4..], "second branch changed");
    }
}
