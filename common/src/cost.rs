//! The cost model (docs/ARCHITECTURE.md §9): pure functions from a model configuration, a layout of
//! workers, the micro-batches and a hardware profile to predicted time per stage,
//! throughput, pipeline bubble, communication and memory per rank.
//!
//! A shard's work on a micro-batch is counted in the units the profile's rates measure:
//! matrix-product FLOPs, attention FLOPs (from the tree layout: every row attends to its
//! prefix and its own branch), bytes of element-wise traffic, and log-softmax entries.
//! `evalmesh calibrate` times the real kernels and divides by these same counts, so the
//! counts only need to move the way the work moves between plans.

use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::hardware::{HardwareProfile, Link, Rates};
use crate::plan::{group_slice, ParallelLayout, PlanError, StageSpec};
use crate::request::MicroBatch;

/// What the cost model needs of one micro-batch, or of one generation step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct BatchShape {
    pub tokens: usize,
    /// Keys attended by the rows that are not decode rows, summed over rows.
    pub attention_pairs: u64,
    /// Rows whose next token is scored or chosen (they go through the head).
    pub scored_rows: usize,
    /// Rows of single-token generation steps among `tokens`: multiplied by the streamed
    /// product, which reads each weight once for all of them (docs/ARCHITECTURE.md §12).
    #[serde(default)]
    pub decode_rows: usize,
    /// Keys the decode rows read from their caches, summed over rows.
    #[serde(default)]
    pub cached_keys: u64,
    /// A generation step: the head's rows go through the streamed product too.
    #[serde(default)]
    pub generating: bool,
}

impl BatchShape {
    pub fn of(batch: &MicroBatch) -> Self {
        let pairs = batch
            .trees
            .iter()
            .map(|t| {
                let p = t.prefix_len as u64;
                let branches: u64 = t.branch_lens.iter().map(|&b| b as u64 * p + (b as u64 * (b as u64 + 1)) / 2).sum();
                p * (p + 1) / 2 + branches
            })
            .sum();
        BatchShape {
            tokens: batch.tokens.len(),
            attention_pairs: pairs,
            scored_rows: batch.scored.len(),
            ..Self::default()
        }
    }

    /// `count` causal sequences of `len` tokens with the last `scored` of each scored.
    pub fn sequences(count: usize, len: usize, scored: usize) -> Self {
        let l = len as u64;
        BatchShape {
            tokens: count * len,
            attention_pairs: count as u64 * l * (l + 1) / 2,
            scored_rows: count * scored,
            ..Self::default()
        }
    }

    /// A generation step decoding one token of each of `count` sequences whose caches hold
    /// `cached` tokens each.
    pub fn decode(count: usize, cached: usize) -> Self {
        BatchShape {
            tokens: count,
            scored_rows: count,
            decode_rows: count,
            cached_keys: (count * cached) as u64,
            generating: true,
            ..Self::default()
        }
    }
}

/// Work in the units of [`Rates`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Work {
    pub matmul_flops: f64,
    /// The LM head's product, at its own rate.
    pub head_flops: f64,
    pub attention_flops: f64,
    /// Query rows times heads that attend (each with [`Rates::attention_row`]'s cost).
    pub attention_rows: f64,
    pub elementwise_bytes: f64,
    pub softmax_entries: f64,
    /// Values a generation step streams from memory: weights read once for its decode
    /// rows, and the keys and values of their caches.
    pub streamed_values: f64,
    /// The streamed product's FLOPs for each decode row past the first.
    pub decode_flops: f64,
    /// Passes through a block, each with the block's fixed cost.
    pub block_passes: f64,
}

impl Work {
    pub fn seconds(&self, r: &Rates) -> f64 {
        self.matmul_flops / r.matmul_flops_per_s
            + self.head_flops / r.head_matmul_rate()
            + self.attention_flops / r.attention_flops_per_s
            + self.attention_rows * r.attention_row()
            + self.elementwise_bytes / r.elementwise_bytes_per_s
            + self.softmax_entries / r.softmax_entries_per_s
            + self.streamed_values / r.streamed_rate()
            + self.decode_flops / r.decode_flops_rate()
            + self.block_passes * r.block_fixed()
    }
}

/// The streamed product's work on `rows` decode rows of a `values`-weight matrix (or of
/// several read in one step): the weights once, and the FLOPs of every row past the first.
fn streamed(values: f64, rows: usize) -> (f64, f64) {
    match rows {
        0 => (0.0, 0.0),
        rows => (values, 2.0 * (rows - 1) as f64 * values),
    }
}

/// The widths of a shard holding `groups` of a block's groups.
struct ShardWidths {
    hidden: f64,
    q: f64,
    kv: f64,
    ffn: f64,
    heads: f64,
    groups: f64,
}

fn widths(c: &ModelConfig, groups: std::ops::Range<usize>) -> ShardWidths {
    let g = c.num_kv_heads;
    let len = |size: usize| group_slice(size, g, groups.clone()).len() as f64;
    ShardWidths {
        hidden: c.hidden_size as f64,
        q: len(c.q_dim()),
        kv: len(c.kv_dim()),
        ffn: len(c.ffn_width()),
        heads: len(c.num_heads),
        groups: groups.len() as f64,
    }
}

/// Element-wise f32 values moved per token by one block's shard: two norms (read and
/// write the hidden row), rotating Q and K in place, `silu(gate)·up` (read two, write
/// one), and for each of the two row-parallel products the residual's addition (read two,
/// write one) after, where the shard holds every group (`local_sum`), the sum of its
/// groups' parts in one pass (read each, write one); a tensor-parallel shard's sums are
/// [`shard_sum_seconds`]'. Each group's columns go straight into its product's operand,
/// uncounted as every operand is.
fn block_elementwise_values(w: &ShardWidths, local_sum: bool) -> f64 {
    let parts = if local_sum { w.groups + 1.0 } else { 0.0 };
    4.0 * w.hidden + 2.0 * (w.q + w.kv) + 3.0 * w.ffn + 2.0 * (parts + 3.0) * w.hidden
}

/// A shard's attention projections, in values.
fn attention_weights(w: &ShardWidths) -> f64 {
    w.hidden * (w.q + 2.0 * w.kv) + w.q * w.hidden
}

/// A shard's share of `mlps` of a block's MLPs (a token's chosen experts, or all of them),
/// with a mixture's router, which every shard holds whole, in values.
fn mlp_weights(c: &ModelConfig, w: &ShardWidths, mlps: usize) -> f64 {
    let router = c.experts.as_ref().map_or(0.0, |e| (e.count * c.hidden_size) as f64);
    3.0 * w.hidden * w.ffn * mlps as f64 + router
}

/// One block's work on `shape` for the shard holding `groups`. Decode rows read each
/// weight once for all of them (of a mixture, the experts their tokens choose, at most all)
/// and their caches' keys and values.
pub fn block_work(c: &ModelConfig, groups: std::ops::Range<usize>, shape: &BatchShape) -> Work {
    let local_sum = groups.len() == c.num_kv_heads;
    let w = widths(c, groups);
    let tokens = shape.tokens as f64;
    let weights = attention_weights(&w) + mlp_weights(c, &w, c.active_mlps());
    let decode_mlps = (shape.decode_rows * c.active_mlps()).min(c.stored_mlps());
    let (weights_read, decode_flops) =
        streamed(attention_weights(&w) + mlp_weights(c, &w, decode_mlps), shape.decode_rows);
    Work {
        matmul_flops: 2.0 * (shape.tokens - shape.decode_rows) as f64 * weights,
        attention_flops: 4.0 * shape.attention_pairs as f64 * c.head_dim as f64 * w.heads,
        attention_rows: (shape.tokens - shape.decode_rows) as f64 * w.heads,
        elementwise_bytes: 4.0 * tokens * block_elementwise_values(&w, local_sum),
        streamed_values: weights_read + shape.cached_keys as f64 * 2.0 * w.kv,
        decode_flops,
        block_passes: if shape.tokens > 0 { 1.0 } else { 0.0 },
        ..Work::default()
    }
}

/// The final norm, LM head and log-softmax (or choice of the next token) of the scored
/// rows; a generation step's rows through the streamed product.
pub fn head_work(c: &ModelConfig, shape: &BatchShape) -> Work {
    let rows = shape.scored_rows as f64;
    let table = (c.hidden_size * c.vocab_size) as f64;
    let (head_flops, (streamed_values, decode_flops)) = match shape.generating {
        true => (0.0, streamed(table, shape.scored_rows)),
        false => (2.0 * rows * table, (0.0, 0.0)),
    };
    Work {
        head_flops,
        elementwise_bytes: 4.0 * rows * 3.0 * c.hidden_size as f64,
        softmax_entries: rows * c.vocab_size as f64,
        streamed_values,
        decode_flops,
        ..Work::default()
    }
}

/// Looking up the embedding rows: one hidden row written per token.
pub fn embedding_work(c: &ModelConfig, shape: &BatchShape) -> Work {
    Work { elementwise_bytes: 4.0 * 2.0 * (shape.tokens * c.hidden_size) as f64, ..Work::default() }
}

/// Weights a shard holds, in values.
pub fn weight_values(c: &ModelConfig, spec: &StageSpec) -> u64 {
    let w = widths(c, spec.groups.clone());
    let block = attention_weights(&w) + mlp_weights(c, &w, c.stored_mlps()) + 2.0 * w.hidden;
    let table = (c.vocab_size * c.hidden_size) as u64;
    let embedding = if spec.embedding { table } else { 0 };
    // A tied head shares the embedding's table where both are on the rank.
    let head = match (spec.head, c.tied_embeddings && spec.embedding) {
        (true, true) => c.hidden_size as u64,
        (true, false) => table + c.hidden_size as u64,
        (false, _) => 0,
    };
    (block * spec.layers.len() as f64) as u64 + embedding + head
}

/// Bytes of an activation value: f32 on every backend (docs/ARCHITECTURE.md §4), in memory and on the wire.
pub const ACTIVATION_BYTES: usize = 4;

/// Rows of logits the head computes at once: the CPU backend's `head_rows`, and the GPU's
/// (one block of its matrix products).
pub const CPU_HEAD_ROWS: usize = 256;
pub const GPU_HEAD_ROWS: usize = 2048;

/// The head rows of a profile's backend.
fn head_rows(p: &HardwareProfile) -> usize {
    if p.backend == "cpu" {
        CPU_HEAD_ROWS
    } else {
        GPU_HEAD_ROWS
    }
}

/// Activation memory of a shard working on micro-batches of `batch_tokens` tokens: the
/// hidden state and the block's intermediates (values), a chunk of `head_rows` logits on
/// the last stage, and `in_flight` received or outgoing hidden states waiting in queues.
pub fn activation_values(
    c: &ModelConfig,
    spec: &StageSpec,
    batch_tokens: usize,
    in_flight: usize,
    head_rows: usize,
) -> u64 {
    let w = widths(c, spec.groups.clone());
    let per_token = 4.0 * w.hidden + (w.q + 2.0 * w.kv) + w.q + 3.0 * w.ffn;
    let logits = if spec.head { (head_rows * c.vocab_size) as f64 } else { 0.0 };
    let queued = (in_flight * batch_tokens * c.hidden_size) as f64;
    (per_token * batch_tokens as f64 + logits + queued) as u64
}

/// Memory one rank needs for `spec`, in bytes: weights in the compute type, f32 activations.
pub fn memory_bytes(
    c: &ModelConfig,
    spec: &StageSpec,
    batch_tokens: usize,
    in_flight: usize,
    p: &HardwareProfile,
) -> u64 {
    weight_values(c, spec) * p.compute_bytes as u64
        + activation_values(c, spec, batch_tokens, in_flight, head_rows(p)) * ACTIVATION_BYTES as u64
        + p.overhead_bytes
}

/// Predicted cost of a layout over a set of micro-batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub seconds: f64,
    pub tokens_per_s: f64,
    /// Per stage: seconds of work over all micro-batches (compute and communication).
    pub stage_seconds: Vec<f64>,
    /// Share of the time a pipeline's stages wait for the first and last micro-batches.
    pub bubble_share: f64,
    /// Share of the slowest stage's time spent on messages (activations, partial sums).
    pub communication_share: f64,
    /// Per stage, the memory of its most loaded shard, in bytes.
    pub memory_per_rank_bytes: Vec<u64>,
}

/// Where the workers run: how many share a node, each one's threads, and the micro-batches
/// each scores at once on them (`lanes`: the single process on a CPU of two threads or
/// more scores two, each lane's ops' tasks taken up by whichever thread idles; an MPI
/// worker one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub threads_per_worker: usize,
    pub workers_per_node: usize,
    pub lanes: usize,
}

/// One tensor-parallel sum of `bytes` (a micro-batch's activations) over `tp` shards, as
/// `comm::shard_sum` does it: a reduce-scatter, each shard sending every other its groups'
/// partials for that one's slice (1/tp of the columns), all at once, then an all-gather of
/// each slice of the total; every value sent is copied out of a tensor and into one.
fn shard_sum_seconds(c: &ModelConfig, tp: usize, bytes: f64, link: Link, rates: &Rates) -> f64 {
    let groups_per_shard = c.num_kv_heads.div_ceil(tp) as f64;
    let others = (tp - 1) as f64 / tp as f64;
    let scatter = groups_per_shard * others * bytes;
    let gather = others * bytes;
    let copies = Work { elementwise_bytes: 2.0 * (groups_per_shard * bytes + bytes), ..Work::default() };
    link.seconds(scatter) + link.seconds(gather) + copies.seconds(rates)
}

/// Predicts the time of `batches` on `layout`, stages as given (each cut into `layout.tp`
/// shards, which fails where `tp` exceeds the model's groups).
pub fn predict(
    c: &ModelConfig,
    layout: ParallelLayout,
    stages: &[StageSpec],
    batches: &[BatchShape],
    profile: &HardwareProfile,
    placement: Placement,
) -> Result<Prediction, PlanError> {
    // A worker's lanes share its threads as that many workers of their share would, and
    // take its micro-batches from one queue as replicas do.
    let lanes = placement.lanes.max(1);
    let rates = profile.rates_for((placement.threads_per_worker / lanes).max(1), placement.workers_per_node * lanes);
    let node = profile.devices_per_node.max(1);
    let tp_link = if layout.tp <= node { profile.same_node } else { profile.across_nodes };
    let pp_link = if layout.pp * layout.tp <= node { profile.same_node } else { profile.across_nodes };
    let wire = ACTIVATION_BYTES as f64;
    // A work queue hands the micro-batches out evenly: each replica's lane gets 1/(dp·lanes)
    // of them.
    let share = 1.0 / (layout.dp * lanes) as f64;
    let mut stage_seconds = Vec::new();
    let mut stage_comm = Vec::new();
    let mut first_batch = Vec::new();
    let mut memory = Vec::new();
    for (s, stage) in stages.iter().enumerate() {
        let shards = stage.shard(c, layout.tp)?;
        let last_stage = s + 1 == stages.len();
        let (mut total, mut comm, mut first) = (0.0, 0.0, 0.0);
        for (b, shape) in batches.iter().enumerate() {
            // Shards meet at every row-parallel sum, so each layer takes its slowest shard.
            let layer =
                shards.iter().map(|sh| block_work(c, sh.groups.clone(), shape).seconds(&rates)).fold(0.0, f64::max);
            let bytes = shape.tokens as f64 * c.hidden_size as f64 * wire;
            let reduce = if layout.tp > 1 { shard_sum_seconds(c, layout.tp, bytes, tp_link, &rates) } else { 0.0 };
            let mut t = stage.layers.len() as f64 * (layer + 2.0 * reduce);
            let mut messages = stage.layers.len() as f64 * 2.0 * reduce;
            if stage.embedding {
                t += embedding_work(c, shape).seconds(&rates);
            }
            if stage.head {
                t += head_work(c, shape).seconds(&rates);
            }
            if !last_stage {
                let send = pp_link.seconds(bytes);
                t += send;
                messages += send;
            }
            if b == 0 {
                first = t;
            }
            total += t * share;
            comm += messages * share;
        }
        let in_flight = if layout.pp > 1 { 4 * layout.pp } else { 2 };
        memory.push(
            shards
                .iter()
                .map(|sh| memory_bytes(c, sh, batches_max_tokens(batches), in_flight, profile))
                .max()
                .unwrap_or(0),
        );
        stage_seconds.push(total);
        stage_comm.push(comm);
        first_batch.push(first);
    }
    let (slowest, &longest) =
        stage_seconds.iter().enumerate().fold((0, &0.0), |best, (i, t)| if t > best.1 { (i, t) } else { best });
    // Filling and draining the pipeline: every other stage works alone on one micro-batch.
    let bubble: f64 = first_batch.iter().enumerate().filter(|&(i, _)| i != slowest).map(|(_, t)| t).sum();
    let seconds = longest + bubble;
    let tokens: usize = batches.iter().map(|b| b.tokens).sum();
    Ok(Prediction {
        seconds,
        tokens_per_s: if seconds > 0.0 { tokens as f64 / seconds } else { 0.0 },
        stage_seconds,
        bubble_share: if seconds > 0.0 { bubble / seconds } else { 0.0 },
        communication_share: if longest > 0.0 { stage_comm[slowest] / longest } else { 0.0 },
        memory_per_rank_bytes: memory,
    })
}

/// Predicts the time of generation `steps` on `layout`: each replica takes its share of
/// every step's sequences and reads all of its weights for them, so the replicas' steps
/// run side by side; a pipeline's stages each work on another group's step.
pub fn predict_generation(
    c: &ModelConfig,
    layout: ParallelLayout,
    stages: &[StageSpec],
    steps: &[BatchShape],
    profile: &HardwareProfile,
    placement: Placement,
) -> Result<Prediction, PlanError> {
    let dp = layout.dp.max(1);
    let share = |n: usize| n.div_ceil(dp);
    let replica: Vec<BatchShape> = steps
        .iter()
        .map(|s| BatchShape {
            tokens: share(s.tokens),
            attention_pairs: s.attention_pairs.div_ceil(dp as u64),
            scored_rows: share(s.scored_rows),
            decode_rows: share(s.decode_rows),
            cached_keys: s.cached_keys.div_ceil(dp as u64),
            generating: s.generating,
        })
        .collect();
    // A replica takes its steps one at a time.
    let placement = Placement { lanes: 1, ..placement };
    let mut prediction = predict(c, ParallelLayout { dp: 1, ..layout }, stages, &replica, profile, placement)?;
    let tokens: usize = steps.iter().map(|s| s.tokens).sum();
    prediction.tokens_per_s = if prediction.seconds > 0.0 { tokens as f64 / prediction.seconds } else { 0.0 };
    Ok(prediction)
}

fn batches_max_tokens(batches: &[BatchShape]) -> usize {
    batches.iter().map(|b| b.tokens).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{MicroBatch, ScoreTree};

    fn tiny() -> ModelConfig {
        let json = r#"{"model_type": "llama", "vocab_size": 100, "hidden_size": 8, "intermediate_size": 12, "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "max_position_embeddings": 64, "tie_word_embeddings": true}"#;
        crate::config::HfConfig::parse(json).unwrap().to_model_config().unwrap()
    }

    #[test]
    fn attention_pairs_follow_the_tree() {
        // Prefix of 3 rows (1 + 2 + 3 keys), branches of 2 (3+1, 3+2) and 1 (3+1) rows.
        let tree =
            ScoreTree { prefix: vec![1, 2, 3], prefix_targets_from: 3, branches: vec![vec![4, 5, 6], vec![7, 8]] };
        let shape = BatchShape::of(&MicroBatch::pack(&[&tree]));
        assert_eq!(shape.tokens, 6);
        assert_eq!(shape.attention_pairs, 6 + (4 + 5) + 4);
        assert_eq!(shape.scored_rows, 5);
        assert_eq!(BatchShape::sequences(2, 4, 2).attention_pairs, 2 * 10);
    }

    #[test]
    fn block_work_by_hand() {
        // q = 8, kv = 4, ffn = 12, hidden 8: 8·(8 + 8) + 8·8 + 3·8·12 = 480 weights.
        let c = tiny();
        let shape = BatchShape { tokens: 10, attention_pairs: 55, ..BatchShape::default() };
        let w = block_work(&c, 0..2, &shape);
        assert_eq!(w.matmul_flops, 2.0 * 10.0 * 480.0);
        assert_eq!(w.attention_flops, 4.0 * 55.0 * 2.0 * 4.0);
        // Every row attends in each of the shard's heads.
        assert_eq!(w.attention_rows, 10.0 * 4.0);
        // One of two groups: half of every group-cut width.
        let half = block_work(&c, 1..2, &shape);
        assert_eq!(half.matmul_flops, 2.0 * 10.0 * (8.0 * (4.0 + 4.0) + 4.0 * 8.0 + 3.0 * 8.0 * 6.0));
        assert_eq!(half.attention_flops, w.attention_flops / 2.0);
        assert_eq!(half.attention_rows, w.attention_rows / 2.0);
        // Element-wise values a token: norms 4·8, rotation 2·(8 + 4), gate 3·12, and per
        // row-parallel product the residual's addition (3·8) and, where the shard holds
        // both groups, their parts' sum (3·8); a tensor-parallel shard's sums are the
        // shard sum's, with half the rotated and gated widths.
        assert_eq!(w.elementwise_bytes, 4.0 * 10.0 * (32.0 + 24.0 + 36.0 + 2.0 * (24.0 + 24.0)));
        assert_eq!(half.elementwise_bytes, 4.0 * 10.0 * (32.0 + 12.0 + 18.0 + 2.0 * 24.0));
        let head =
            head_work(&c, &BatchShape { tokens: 10, attention_pairs: 55, scored_rows: 3, ..BatchShape::default() });
        assert_eq!((head.head_flops, head.softmax_entries), (2.0 * 3.0 * 800.0, 300.0));
        // The head's product runs at its own rate where one was measured.
        let mut rates = profile().rates[0].clone();
        let matmul_only = Work { head_flops: 4e6, ..Work::default() };
        assert_eq!(matmul_only.seconds(&rates), 4.0);
        rates.head_matmul_flops_per_s = Some(0.5e6);
        assert_eq!(matmul_only.seconds(&rates), 8.0);
    }

    #[test]
    fn decode_steps_read_the_weights_once_for_all_their_rows() {
        // 480 weights a block (see above), a KV width of 4 a group: 8 values a cached key.
        let c = tiny();
        let one = block_work(&c, 0..2, &BatchShape::decode(1, 0));
        assert_eq!((one.streamed_values, one.decode_flops, one.matmul_flops), (480.0, 0.0, 0.0));
        let four = block_work(&c, 0..2, &BatchShape::decode(4, 10));
        assert_eq!(four.streamed_values, 480.0 + 4.0 * 10.0 * 8.0);
        assert_eq!(four.decode_flops, 2.0 * 3.0 * 480.0);
        // A step with a prompt beside: its rows through the matrix products, its attention pairs.
        let mixed = BatchShape { tokens: 9, attention_pairs: 15, ..BatchShape::decode(4, 10) };
        assert_eq!(block_work(&c, 0..2, &mixed).matmul_flops, 2.0 * 5.0 * 480.0);
        // The head of a generation step: the table streamed once.
        let head = head_work(&c, &BatchShape::decode(4, 10));
        assert_eq!((head.streamed_values, head.decode_flops, head.head_flops), (800.0, 2.0 * 3.0 * 800.0, 0.0));
    }

    #[test]
    fn data_parallel_decoding_reads_every_replica_s_weights() {
        // Each replica reads all its weights for its half of the rows: more than half the time.
        let c = tiny();
        let mut p = profile();
        p.rates[0].streamed_values_per_s = Some(1e3);
        let steps = vec![BatchShape::decode(8, 16); 10];
        let place = Placement { threads_per_worker: 1, workers_per_node: 1, lanes: 1 };
        let whole = [StageSpec::whole(&c)];
        let single = predict_generation(&c, ParallelLayout { dp: 1, pp: 1, tp: 1 }, &whole, &steps, &p, place).unwrap();
        let dp = predict_generation(&c, ParallelLayout { dp: 2, pp: 1, tp: 1 }, &whole, &steps, &p, place).unwrap();
        assert!(
            dp.seconds > single.seconds / 2.0 && dp.seconds < single.seconds,
            "{} vs {}",
            dp.seconds,
            single.seconds
        );
        assert!((dp.tokens_per_s * dp.seconds - 80.0).abs() < 1e-9);
    }

    #[test]
    fn weights_count_each_tensor_once() {
        let c = tiny();
        let whole = StageSpec::whole(&c);
        // 4 blocks of 480 + 16 norm weights, the tied table once, the final norm.
        assert_eq!(weight_values(&c, &whole), 4 * 496 + 800 + 8);
        let shards = whole.shard(&c, 2).unwrap();
        let blocks = |s: &StageSpec| weight_values(&c, s) - 800 - if s.head { 8 } else { 0 };
        assert_eq!(shards.iter().map(blocks).sum::<u64>(), 4 * 496 + 4 * 16);
    }

    fn profile() -> HardwareProfile {
        let mut p = HardwareProfile::built_in("h100").unwrap();
        p.rates[0] = Rates {
            threads_per_worker: 1,
            concurrent_workers: 1,
            matmul_flops_per_s: 1e6,
            head_matmul_flops_per_s: None,
            attention_flops_per_s: 1e6,
            attention_row_seconds: None,
            elementwise_bytes_per_s: 1e9,
            softmax_entries_per_s: 1e9,
            block_fixed_seconds: None,
            streamed_values_per_s: None,
            decode_row_flops_per_s: None,
        };
        p
    }

    /// A CPU of two cores measured with one worker of two threads, and with two workers of
    /// one thread at two thirds of its rates each.
    fn two_core_profile() -> HardwareProfile {
        let mut p = profile();
        p.backend = "cpu".into();
        p.devices_per_node = 2;
        let scaled = |threads_per_worker, concurrent_workers, f: f64| Rates {
            threads_per_worker,
            concurrent_workers,
            matmul_flops_per_s: 1.5e6 * f,
            attention_flops_per_s: 1.5e6 * f,
            elementwise_bytes_per_s: 1.5e9 * f,
            softmax_entries_per_s: 1.5e9 * f,
            ..p.rates[0].clone()
        };
        p.rates = vec![scaled(2, 1, 1.0), scaled(1, 2, 2.0 / 3.0)];
        p
    }

    #[test]
    fn two_lanes_score_at_two_one_thread_workers_rates() {
        let c = tiny();
        let p = two_core_profile();
        let whole = [StageSpec::whole(&c)];
        let layout = ParallelLayout { dp: 1, pp: 1, tp: 1 };
        let batches = vec![BatchShape::sequences(4, 8, 4); 8];
        let seconds = |lanes| {
            let place = Placement { threads_per_worker: 2, workers_per_node: 1, lanes };
            predict(&c, layout, &whole, &batches, &p, place).unwrap().seconds
        };
        // Two lanes, each at a one-thread worker's rates (1e6), against one at 1.5e6.
        assert!((seconds(2) / seconds(1) - 0.75).abs() < 1e-9, "{} against {}", seconds(2), seconds(1));
        // A generation step is one micro-batch at a time, whatever the lanes.
        let steps = vec![BatchShape::decode(4, 16); 3];
        let step_seconds = |lanes| {
            let place = Placement { threads_per_worker: 2, workers_per_node: 1, lanes };
            predict_generation(&c, layout, &whole, &steps, &p, place).unwrap().seconds
        };
        assert_eq!(step_seconds(2), step_seconds(1));
    }

    #[test]
    fn data_parallelism_divides_the_time_and_pipelines_add_a_bubble() {
        let c = tiny();
        let p = profile();
        let batches = vec![BatchShape::sequences(4, 8, 4); 8];
        let place = Placement { threads_per_worker: 1, workers_per_node: 1, lanes: 1 };
        let single =
            predict(&c, ParallelLayout { dp: 1, pp: 1, tp: 1 }, &[StageSpec::whole(&c)], &batches, &p, place).unwrap();
        let dp =
            predict(&c, ParallelLayout { dp: 2, pp: 1, tp: 1 }, &[StageSpec::whole(&c)], &batches, &p, place).unwrap();
        assert!((dp.seconds * 2.0 - single.seconds).abs() < 1e-9 * single.seconds);
        let stages = crate::partition_layers(&c, 2, 0.0, 1.0).unwrap();
        let pp = predict(&c, ParallelLayout { dp: 1, pp: 2, tp: 1 }, &stages, &batches, &p, place).unwrap();
        assert!(pp.bubble_share > 0.0 && pp.seconds < single.seconds && pp.seconds > single.seconds / 2.0);
        assert_eq!(pp.stage_seconds.len(), 2);
        // The first stage also sends its activations: a slower link makes it slower.
        let mut slow = p.clone();
        slow.same_node.bytes_per_s /= 1000.0;
        let slow_pp = predict(&c, ParallelLayout { dp: 1, pp: 2, tp: 1 }, &stages, &batches, &slow, place).unwrap();
        assert!(slow_pp.stage_seconds[0] > pp.stage_seconds[0]);
    }
}
