//! The tensor-parallel sum across ranks ([`ShardSum`]): the shards of a stage complete
//! their row-parallel products in group order over MPI, on their own tag.

use evalmesh_common::protocol::PARTIAL_SUM_TAG;
use mpi::point_to_point::{Destination, MatchedReceiveVec, Source};
use mpi::topology::{Communicator, Rank};

use super::polling::Backoff;
use crate::backend::Backend;
use crate::stage::{fold, GroupSum, StageError};
use crate::tensor::Matrix;

/// The row-parallel sums of a tensor-parallel stage, passed along its shards in group
/// order: each shard adds its groups' partials to the running sum from the shard before
/// it and passes it on; the last shard has the total and sends it back to the others.
/// The compute thread makes these calls itself, on their own tag, since every shard
/// waits for them in the middle of a micro-batch.
pub struct ShardSum<C: Communicator> {
    pub comm: C,
    /// The ranks of the stage's shards, in group order.
    pub shards: Vec<Rank>,
    /// This rank's place among them.
    pub index: usize,
    /// The columns of every sum (the model's hidden size).
    pub width: usize,
}

impl<C: Communicator> ShardSum<C> {
    fn send(&self, to: usize, m: &Matrix) {
        self.comm.process_at_rank(self.shards[to]).send_with_tag(&m.data[..], PARTIAL_SUM_TAG);
    }

    fn receive(&self, from: usize, rows: usize) -> Result<Matrix, StageError> {
        let cols = self.width;
        let rank = self.comm.process_at_rank(self.shards[from]);
        let mut backoff = Backoff::computing();
        let matched = loop {
            match rank.immediate_matched_probe_with_tag(PARTIAL_SUM_TAG) {
                Some(m) => break m,
                None => backoff.wait(),
            }
        };
        let (data, _) = matched.matched_receive_vec::<f32>();
        if data.len() != rows * cols {
            return Err(StageError::Spec(format!(
                "a partial sum of {} values came from rank {} for {rows} × {cols}",
                data.len(),
                self.shards[from]
            )));
        }
        Ok(Matrix::from_vec(rows, cols, data))
    }
}

impl<C: Communicator, B: Backend> GroupSum<B> for ShardSum<C> {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError> {
        let rows = partials.first().map_or(0, |p| backend.rows(p));
        let running = match self.index {
            0 => None,
            i => Some(backend.upload(self.receive(i - 1, rows)?)?),
        };
        let total = fold(backend, running, partials)?;
        let last = self.shards.len() - 1;
        if self.index < last {
            self.send(self.index + 1, &backend.download(&total)?);
            return Ok(backend.upload(self.receive(last, rows)?)?);
        }
        let bits = backend.download(&total)?;
        for shard in 0..last {
            self.send(shard, &bits);
        }
        Ok(total)
    }
}
