//! The CUDA backend's attention over packed prefix trees: each query row's visible keys
//! as runs of rows, worked out on the host from the trees and the layer's sliding window
//! ([`attention_spans`]), and a kernel of `kernels.cu` over them, with the layer's scale
//! and score cap: on the bf16 path `attention_tc` (tensor cores, over the query tiles of
//! [`attention_tiles`]) where the device and head width allow it (a multiple of 16 up to
//! 128), else `attention` (f32, heads up to 256).

use evalmesh_common::protocol::GpuPrecision;
use evalmesh_common::TreeLayout;

use super::backend::{blocks, check, Arg, CudaBackend, CudaTensor, MAX_HEAD_DIM, TENSOR_CORE_HEAD_DIM};
use crate::backend::error::BackendError;
use crate::backend::{AttentionSpec, HeadLayout};

impl CudaBackend {
    /// [`crate::backend::Backend::attention`] on the device.
    pub(super) fn attend(
        &self,
        qkv: &CudaTensor,
        trees: &[TreeLayout],
        heads: HeadLayout,
        spec: AttentionSpec,
    ) -> Result<CudaTensor, BackendError> {
        let covered: usize = trees.iter().map(TreeLayout::len).sum();
        check(
            qkv.cols == heads.width()
                && covered == qkv.rows
                && heads.num_kv_heads > 0
                && heads.num_heads.is_multiple_of(heads.num_kv_heads)
                && heads.head_dim <= MAX_HEAD_DIM,
            || format!("attention over {}×{} with {heads:?} and trees covering {covered} rows", qkv.rows, qkv.cols),
        )?;
        // The kernel reads a cap of 0 as none; a window of 0 would leave a query no key.
        check(spec.softcap.is_none_or(|cap| cap > 0.0) && spec.window != Some(0), || {
            format!("attention with {spec:?}: a cap must be positive and a window at least 1")
        })?;
        let out = self.tensor(qkv.rows, heads.num_heads * heads.head_dim)?;
        if qkv.rows == 0 {
            return Ok(out);
        }
        let spans = attention_spans(trees, qkv.rows, spec.window);
        let device_spans = self.upload_values(&spans)?;
        let tensor_cores = self.precision == GpuPrecision::Bf16
            && self.kernels.tensor_cores
            && heads.head_dim.is_multiple_of(16)
            && heads.head_dim <= TENSOR_CORE_HEAD_DIM;
        let group = heads.num_heads / heads.num_kv_heads;
        let heads_per_block = [4, 2, 1].into_iter().find(|h| group.is_multiple_of(*h)).unwrap_or(1);
        let tiles = tensor_cores.then(|| attention_tiles(trees, &spans, 16 * 4 / heads_per_block));
        let device_tiles = tiles.as_ref().map(|t| self.upload_values(t)).transpose()?;
        // Each kernel's launch and leading arguments; the head layout and the spec follow.
        let (kernel, grid, shared, mut args) = match (&tiles, &device_tiles) {
            (Some(tiles), Some(device_tiles)) => (
                &self.kernels.attention_tc,
                (tiles.len() as u32 / 8, (heads.num_heads / heads_per_block) as u32),
                0,
                vec![Arg::Ptr(device_tiles.ptr()), Arg::I32(heads_per_block as i32)],
            ),
            // One warp per (row, head), four to a block, each with its query in shared memory.
            _ => (
                &self.kernels.attention,
                (blocks(qkv.rows * heads.num_heads, 4), 1),
                (4 * heads.head_dim * 4) as u32,
                vec![Arg::I64(qkv.rows as i64)],
            ),
        };
        let mut all = vec![Arg::Ptr(qkv.ptr()), Arg::Ptr(out.ptr()), Arg::Ptr(device_spans.ptr())];
        all.append(&mut args);
        all.extend([
            Arg::I64(qkv.cols as i64),
            Arg::I32(heads.num_heads as i32),
            Arg::I32(heads.num_kv_heads as i32),
            Arg::I32(heads.head_dim as i32),
            Arg::F32(spec.scale),
            Arg::F32(spec.softcap.unwrap_or(0.0)),
        ]);
        self.launch(kernel, grid, 128, shared, &mut all)?;
        Ok(out)
    }
}

/// Each query row's keys as two runs `[shared_start, shared_len, own_start, own_len]`: a
/// prefix row sees its prefix up to itself; a branch row sees the whole prefix, then its
/// branch up to itself (the layout of docs/ARCHITECTURE.md §5, as the CPU backend reads it).
/// Trees start at position 0 and a query's keys are listed in position order, so with a
/// `window` a query keeps the last `window` of its keys (itself included): the runs are
/// cut from the start, the shared one first.
fn attention_spans(trees: &[TreeLayout], rows: usize, window: Option<usize>) -> Vec<i64> {
    let mut spans = Vec::with_capacity(4 * rows);
    let mut push = |shared: (i64, i64), own: (i64, i64)| {
        let ((mut shared_start, mut shared_len), (mut own_start, mut own_len)) = (shared, own);
        if let Some(w) = window {
            let excess = (shared_len + own_len - w as i64).max(0);
            let from_shared = excess.min(shared_len);
            shared_start += from_shared;
            shared_len -= from_shared;
            own_start += excess - from_shared;
            own_len -= excess - from_shared;
        }
        spans.extend([shared_start, shared_len, own_start, own_len]);
    };
    for tree in trees {
        let (start, prefix) = (tree.start as i64, tree.prefix_len as i64);
        for i in 0..prefix {
            push((0, 0), (start, i + 1));
        }
        let mut branch_start = start + prefix;
        for &len in &tree.branch_lens {
            for j in 0..len as i64 {
                push((start, prefix), (branch_start, j + 1));
            }
            branch_start += len as i64;
        }
    }
    spans
}

/// The query tiles of `attention_tc`: each segment of rows that share their runs' starts
/// before any window (a tree's prefix, each of its branches) cut into tiles of `tile_rows`
/// from its first row, as eight values each: the first row, the number of rows, then for
/// the shared run and the own run the run's anchor (its start before any window), the
/// first key any row of the tile sees in it and the end of those keys (both 0 where no
/// row sees one). `spans` is [`attention_spans`]' for the same trees.
fn attention_tiles(trees: &[TreeLayout], spans: &[i64], tile_rows: usize) -> Vec<i64> {
    let mut tiles = Vec::new();
    let mut segment = |first: usize, len: usize, anchors: [i64; 2]| {
        for start in (first..first + len).step_by(tile_rows) {
            let rows = tile_rows.min(first + len - start);
            tiles.extend([start as i64, rows as i64]);
            for (run, anchor) in anchors.into_iter().enumerate() {
                let seen = (start..start + rows).map(|r| &spans[4 * r + 2 * run..4 * r + 2 * run + 2]);
                let seen = seen.filter(|s| s[1] > 0);
                let from = seen.clone().map(|s| s[0]).min();
                let end = seen.map(|s| s[0] + s[1]).max();
                tiles.extend([anchor, from.unwrap_or(0), end.unwrap_or(0)]);
            }
        }
    };
    for tree in trees {
        segment(tree.start, tree.prefix_len, [0, tree.start as i64]);
        let mut branch_start = tree.start + tree.prefix_len;
        for &len in &tree.branch_lens {
            segment(branch_start, len, [tree.start as i64, branch_start as i64]);
            branch_start += len;
        }
    }
    tiles
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tree at row 2: prefix of 2, branches of 2 and 1, after a sequence of 2.
    fn trees() -> [TreeLayout; 2] {
        [
            TreeLayout { start: 0, prefix_len: 2, branch_lens: Vec::new() },
            TreeLayout { start: 2, prefix_len: 2, branch_lens: vec![2, 1] },
        ]
    }

    #[test]
    fn spans_follow_the_tree_layout() {
        let spans = attention_spans(&trees(), 7, None);
        let rows: Vec<&[i64]> = spans.chunks(4).collect();
        assert_eq!(
            rows,
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 2],
                &[0, 0, 2, 1],
                &[0, 0, 2, 2],
                &[2, 2, 4, 1],
                &[2, 2, 4, 2],
                &[2, 2, 6, 1],
            ]
        );
        // A window wider than every row's keys changes nothing.
        assert_eq!(attention_spans(&trees(), 7, Some(4)), spans);
    }

    #[test]
    fn tiles_cut_each_segment_from_its_first_row() {
        let spans = attention_spans(&trees(), 7, None);
        let tiles: Vec<&[i64]> = attention_tiles(&trees(), &spans, 16).leak().chunks(8).collect();
        assert_eq!(
            tiles,
            [
                // The sequence, then the tree's prefix: no shared run, their own from the tree's start.
                &[0, 2, 0, 0, 0, 0, 0, 2][..],
                &[2, 2, 0, 0, 0, 2, 2, 4],
                // Each branch: the prefix shared, anchored at the tree's first row, then its own.
                &[4, 2, 2, 2, 4, 4, 4, 6],
                &[6, 1, 2, 2, 4, 6, 6, 7],
            ]
        );
        // Tiles of one row: one per row, each with its own keys.
        let single = attention_tiles(&trees(), &spans, 1);
        assert_eq!(single.len(), 7 * 8);
        assert_eq!(&single[5 * 8..6 * 8], [5, 1, 2, 2, 4, 4, 4, 6]);
    }

    #[test]
    fn a_windowed_tile_starts_at_the_first_key_any_row_sees() {
        let spans = attention_spans(&trees(), 7, Some(2));
        let tiles = attention_tiles(&trees(), &spans, 16);
        // Row 4 sees prefix row 3 and itself, row 5 only its branch (rows 4 and 5); the
        // anchors stay the runs' unwindowed starts.
        assert_eq!(&tiles[2 * 8..3 * 8], [4, 2, 2, 3, 4, 4, 4, 6]);
        assert_eq!(&tiles[3 * 8..], [6, 1, 2, 3, 4, 6, 6, 7]);
        // A window of one: no row of a branch sees the prefix.
        let spans = attention_spans(&trees(), 7, Some(1));
        let tiles = attention_tiles(&trees(), &spans, 16);
        assert_eq!(&tiles[2 * 8..3 * 8], [4, 2, 2, 0, 0, 4, 4, 6]);
    }

    #[test]
    fn a_window_keeps_each_rows_last_keys() {
        let spans = attention_spans(&trees(), 7, Some(2));
        let rows: Vec<&[i64]> = spans.chunks(4).collect();
        assert_eq!(
            rows,
            [
                &[0, 0, 0, 1][..],
                &[0, 0, 0, 2],
                &[0, 0, 2, 1],
                &[0, 0, 2, 2],
                // Keys: prefix rows 2, 3, then the branch: the last two.
                &[3, 1, 4, 1],
                &[4, 0, 4, 2],
                &[3, 1, 6, 1],
            ]
        );
        // A window of one: each row sees only itself.
        for (row, span) in attention_spans(&trees(), 7, Some(1)).chunks(4).enumerate() {
            assert_eq!((span[1], span[2], span[3]), (0, row as i64, 1), "row {row}");
        }
    }
}
