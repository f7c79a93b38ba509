//! Row-parallel products and their sums: a weight cut by KV-head group ([`ByGroup`]),
//! and the completion of its per-group partial products in group order ([`GroupSum`]:
//! locally by [`fold`], or by the backend as it multiplies, or across tensor-parallel
//! shards by `comm::shard_sum`).

use std::ops::Range;

use super::error::StageError;
use crate::backend::{Backend, DecodeRows};

/// Completes a row-parallel product (attention output, down projection): adds this
/// worker's per-group partial products, in group order, to the running sum of the groups
/// before them, and returns the sum over all groups.
pub trait GroupSum<B: Backend> {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError>;
    /// Whether every group is local, so that the sum is the partials' fold alone, which a
    /// backend may take as it multiplies ([`Backend::matmul_t_sum`]).
    fn is_local(&self) -> bool {
        false
    }
}

/// Every group is local (no tensor parallelism): the sum is the fold of the partials.
pub struct LocalSum;

impl<B: Backend> GroupSum<B> for LocalSum {
    fn sum(&mut self, backend: &B, partials: Vec<B::Tensor>) -> Result<B::Tensor, StageError> {
        fold(backend, None, partials)
    }

    fn is_local(&self) -> bool {
        true
    }
}

/// `((running + p₀) + p₁) + …`, or from `p₀` without a running sum: the canonical order
/// ([`Backend::add_in_order`]).
pub fn fold<B: Backend>(
    backend: &B,
    running: Option<B::Tensor>,
    partials: Vec<B::Tensor>,
) -> Result<B::Tensor, StageError> {
    backend.add_in_order(running.into_iter().chain(partials))?.ok_or_else(no_groups)
}

fn no_groups() -> StageError {
    StageError::Spec("a row-parallel sum over no groups".into())
}

/// A row-parallel weight cut by group: each group's input columns (within this
/// worker's share of them) and its slice of the weight.
pub struct ByGroup<B: Backend> {
    pub parts: Vec<(Range<usize>, B::Weight)>,
}

impl<B: Backend> ByGroup<B> {
    /// Each group's columns and weight.
    fn parts(&self) -> Vec<(Range<usize>, &B::Weight)> {
        self.parts.iter().map(|(cols, w)| (cols.clone(), w)).collect()
    }

    /// `x · wᵀ` per group: one product of each group's columns and weight, the rows
    /// `decode` marks by the backend's decode product.
    pub fn partials(&self, b: &B, x: &B::Tensor, decode: &DecodeRows) -> Result<Vec<B::Tensor>, StageError> {
        Ok(b.matmul_t_parts(x, &self.parts(), decode)?)
    }

    /// `x · wᵀ` summed over the groups, completed by `sums`: where every group is local,
    /// the backend adds the products as it multiplies.
    pub fn forward(
        &self,
        b: &B,
        x: &B::Tensor,
        decode: &DecodeRows,
        sums: &mut dyn GroupSum<B>,
    ) -> Result<B::Tensor, StageError> {
        match sums.is_local() {
            true => b.matmul_t_sum(x, &self.parts(), decode)?.ok_or_else(no_groups),
            false => sums.sum(b, self.partials(b, x, decode)?),
        }
    }
}
