//! The tensor-parallel sum across ranks ([`ShardSum`]): the shards of a stage complete
//! their row-parallel products by a reduce-scatter in fixed group order and an
//! all-gather over MPI, on their own tag (docs/ARCHITECTURE.md §6).

use std::ops::Range;

use evalmesh_common::plan::even_part;
use evalmesh_common::protocol::PARTIAL_SUM_TAG;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, Rank};

use super::polling::Backoff;
use crate::backend::Backend;
use crate::stage::{fold, GroupSum, StageError};
use crate::tensor::Matrix;

/// The row-parallel sums of a tensor-parallel stage. The sum's columns are cut into one
/// slice per shard; each shard sends every other shard its per-group partials for that
/// shard's slice, adds the partials of its own slice in group order (every shard's groups,
/// shard after shard: the single process's fold, column by column, so the same bits), and
/// sends its slice of the total to every other shard. Each shard sends about two sums'
/// worth of bytes, at once to all the others, where a chain through the shards would
/// take 2(shards − 1) messages one after another. The compute thread makes these calls
/// itself, on their own tag, since every shard waits for them in the middle of a
/// micro-batch.
pub struct ShardSum<C: Communicator> {
    pub comm: C,
    /// The ranks of the stage's shards, in group order.
    pub shards: Vec<Rank>,
    /// This rank's place among them.
    pub index: usize,
    /// The columns of every sum (the model's hidden size).
    pub width: usize,
}

/// The columns `cols` of each row of `m`, row after row.
fn columns(m: &Matrix, cols: &Range<usize>) -> Vec<f32> {
    (0..m.rows).flat_map(|r| m.row(r)[cols.clone()].iter().copied()).collect()
}

impl<C: Communicator> ShardSum<C> {
    /// Receives the next message from shard `from`, whose length must be a whole number of
    /// `rows × cols` matrices (at least one), and cuts it into them.
    fn receive(&self, from: usize, (rows, cols): (usize, usize)) -> Result<Vec<Matrix>, StageError> {
        let rank = self.comm.process_at_rank(self.shards[from]);
        let mut backoff = Backoff::computing();
        let matched = loop {
            match rank.immediate_matched_probe_with_tag(PARTIAL_SUM_TAG) {
                Some(m) => break m,
                None => backoff.wait(),
            }
        };
        let (data, _) = matched.matched_receive_vec::<f32>();
        let size = rows * cols;
        if size == 0 {
            return Ok(Vec::new());
        }
        if data.is_empty() || data.len() % size != 0 {
            return Err(StageError::Spec(format!(
                "a partial sum of {} values came from rank {} for pieces of {rows} × {cols}",
                data.len(),
                self.shards[from]
            )));
        }
        Ok(data.chunks(size).map(|c| Matrix::from_vec(rows, cols, c.to_vec())).collect())
    }

    /// Sends `messages[s]` to every other shard `s` at once, then gives each shard's next
    /// message, cut into matrices of the shape `shape(s)` gives (this shard's own are
    /// `own`), in shard order.
    fn exchange(
        &self,
        messages: &[&[f32]],
        own: Vec<Matrix>,
        shape: impl Fn(usize) -> (usize, usize),
    ) -> Result<Vec<Vec<Matrix>>, StageError> {
        let mut own = Some(own);
        mpi::request::multiple_scope(messages.len(), |scope, sends| {
            for (s, &message) in messages.iter().enumerate() {
                if s != self.index {
                    let to = self.comm.process_at_rank(self.shards[s]);
                    sends.add(to.immediate_send_with_tag(scope, message, PARTIAL_SUM_TAG));
                }
            }
            let received = (0..self.shards.len())
                .map(|s| if s == self.index { Ok(own.take().unwrap_or_default()) } else { self.receive(s, shape(s)) })
                .collect();
            let mut statuses = Vec::new();
            sends.wait_all(&mut statuses);
            received
        })
    }
}

impl<C: Communicator, B: Backend> GroupSum<B> for ShardSum<C> {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError> {
        let rows = partials.first().map_or(0, |p| backend.rows(p));
        let local: Vec<Matrix> = partials.iter().map(|p| backend.download(p)).collect::<Result<_, _>>()?;
        let slices: Vec<Range<usize>> =
            (0..self.shards.len()).map(|s| even_part(self.width, self.shards.len(), s)).collect();
        let mine = slices[self.index].clone();
        // Reduce-scatter: every shard's partials for this shard's slice, folded in group order.
        let scattered: Vec<Vec<f32>> =
            slices.iter().map(|cols| local.iter().flat_map(|m| columns(m, cols)).collect()).collect();
        let own: Vec<Matrix> = local.iter().map(|m| Matrix::from_vec(rows, mine.len(), columns(m, &mine))).collect();
        let messages: Vec<&[f32]> = scattered.iter().map(Vec::as_slice).collect();
        let pieces = self.exchange(&messages, own, |_| (rows, mine.len()))?;
        let ordered = pieces.into_iter().flatten().map(|m| backend.upload(m)).collect::<Result<Vec<_>, _>>()?;
        let total = if ordered.is_empty() {
            Matrix::from_vec(rows, mine.len(), vec![0.0; rows * mine.len()])
        } else {
            backend.download(&fold(backend, None, ordered)?)?
        };
        // All-gather: every shard's slice of the total, placed at its columns.
        let messages = vec![total.data.as_slice(); self.shards.len()];
        let gathered = self.exchange(&messages, vec![total.clone()], |s| (rows, slices[s].len()))?;
        let mut whole = Matrix::from_vec(rows, self.width, vec![0.0; rows * self.width]);
        for (cols, piece) in slices.iter().zip(gathered.iter().flatten()) {
            for r in 0..rows {
                whole.data[r * self.width..][cols.clone()].copy_from_slice(piece.row(r));
            }
        }
        Ok(backend.upload(whole)?)
    }
}
