//! Where a stage's weights come from ([`Weights`]): its source's tensors, read in their
//! file's encoding, cut to the stage's groups and uploaded (the backend widens them or
//! not), or, for a random model, values the backend draws itself.

use std::cell::Cell;
use std::ops::Range;

use evalmesh_common::group_slice;

use super::error::StageError;
use super::sums::ByGroup;
use crate::backend::Backend;
use crate::tensor::Matrix;
use crate::weights::random::seed_of;
use crate::weights::{load_part, read_part, LayerTensor, StoredMatrix, TensorId, WeightSource};

pub struct Weights<'a, B: Backend> {
    pub source: &'a dyn WeightSource,
    pub backend: &'a B,
    /// Bytes of the matrix weights uploaded so far.
    pub bytes: Cell<u64>,
}

impl<B: Backend> Weights<'_, B> {
    /// The rows `parts` (tensors and row ranges, stacked in order) by the columns `cols`.
    fn matrix(&self, parts: &[(TensorId, Range<usize>)], cols: Range<usize>) -> Result<B::Weight, StageError> {
        let c = self.source.config();
        if self.source.is_random() {
            let rows = parts.iter().map(|(_, r)| r.len()).sum();
            let (id, first) = parts.first().ok_or_else(|| StageError::Spec("a weight of no tensor".into()))?;
            // A tied head is the embedding, also on a stage that holds only the head.
            let id = match id {
                TensorId::Head if c.tied_embeddings => &TensorId::Embedding,
                id => id,
            };
            // Uniform on [-a, a) has variance a²/3: a = √(3/fan-in) gives variance 1/fan-in.
            let scale = (3.0 / id.shape(c).1 as f32).sqrt();
            let weight = self.backend.random_weight(rows, cols.len(), seed_of(*id, first, &cols), scale)?;
            return Ok(self.counted(weight));
        }
        let mut stacked = StoredMatrix::new(cols.len());
        for (id, rows) in parts {
            stacked.append(read_part(self.source, *id, rows.clone(), cols.clone())?);
        }
        let weight = self.backend.upload_stored(stacked)?;
        Ok(self.counted(weight))
    }

    /// `weight`, its bytes added to [`Weights::bytes`].
    fn counted(&self, weight: B::Weight) -> B::Weight {
        self.bytes.set(self.bytes.get() + self.backend.weight_bytes(&weight));
        weight
    }

    /// The rows of `parts` of a layer stacked, each tensor's rows of `groups` (a tensor of
    /// `size` rows cut into the model's groups), by all the hidden columns.
    pub fn stacked(&self, layer: usize, parts: &[(LayerTensor, usize, Range<usize>)]) -> Result<B::Weight, StageError> {
        let c = self.source.config();
        let parts: Vec<_> = parts
            .iter()
            .map(|(t, size, groups)| (TensorId::Layer(layer, *t), group_slice(*size, c.num_kv_heads, groups.clone())))
            .collect();
        self.matrix(&parts, 0..c.hidden_size)
    }

    /// A layer's row-parallel tensor `t`, whose `size` input columns are cut into the
    /// model's groups: one weight per group of `groups`.
    pub fn by_group(
        &self,
        layer: usize,
        groups: &Range<usize>,
        t: LayerTensor,
        size: usize,
    ) -> Result<ByGroup<B>, StageError> {
        let c = self.source.config();
        let (g, id) = (c.num_kv_heads, TensorId::Layer(layer, t));
        let local = group_slice(size, g, groups.clone()).start;
        let parts = groups.clone().map(|k| {
            let cols = group_slice(size, g, k..k + 1);
            let weight = self.matrix(&[(id, 0..id.shape(c).0)], cols.clone())?;
            Ok((cols.start - local..cols.end - local, weight))
        });
        Ok(ByGroup { parts: parts.collect::<Result<_, StageError>>()? })
    }

    /// A whole tensor (the embedding, the head, a router).
    pub fn whole(&self, id: TensorId) -> Result<B::Weight, StageError> {
        let (rows, cols) = id.shape(self.source.config());
        self.matrix(&[(id, 0..rows)], 0..cols)
    }

    /// One-row vectors side by side, each the columns of `groups` of a tensor of `size`
    /// values cut into the model's groups (a stage's share of the Q, K and V biases), or
    /// the whole of a norm's weight; offset by the model's `norm_weight_offset` for a norm.
    /// A random model's norms are 1 and its biases 0.
    pub fn row(&self, parts: &[(TensorId, usize, Range<usize>)]) -> Result<B::Tensor, StageError> {
        let c = self.source.config();
        let mut values = Vec::new();
        for (id, size, groups) in parts {
            let cols = group_slice(*size, c.num_kv_heads, groups.clone());
            match self.source.is_random() {
                true => values.extend(std::iter::repeat_n(if id.is_norm() { 1.0 } else { 0.0 }, cols.len())),
                false => {
                    let part = load_part(self.source, *id, 0..1, cols)?;
                    let offset = if id.is_norm() { c.norm_weight_offset } else { 0.0 };
                    values.extend(part.data.iter().map(|v| v + offset));
                }
            }
        }
        Ok(self.backend.upload(Matrix::from_vec(1, values.len(), values))?)
    }

    /// A norm's whole weight.
    pub fn norm(&self, id: TensorId) -> Result<B::Tensor, StageError> {
        let c = self.source.config();
        let width = id.shape(c).1;
        // A whole tensor is every group of a size that the groups divide evenly or not: one "group".
        let all = 0..c.num_kv_heads;
        self.row(&[(id, width, all)])
    }
}
