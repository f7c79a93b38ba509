// The CUDA backend's kernels, compiled at run time by NVRTC (see kernels.rs). No headers:
// bf16 values travel as `unsigned short` and are converted by hand.
//
// Determinism: every kernel computes each output row from its own input rows (and
// scatter_add_rows adds the rows aimed at one row in their list order), with a reduction
// order fixed by the kernel's shape (the block and warp sizes below), never by the number
// of rows, so a row's bits do not depend on the batch it was packed in.

#define WARP 32
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ float bf16_to_f32(unsigned short h) {
    return __uint_as_float(((unsigned int)h) << 16);
}

// Round to nearest, ties to even; NaN stays NaN.
__device__ __forceinline__ unsigned short f32_to_bf16(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (unsigned short)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (unsigned short)(u >> 16);
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    }
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
    return v;
}

// The sum of `v` over a block of BLOCK threads (a multiple of 32, at most 1024), in a fixed
// order; every thread gets it. `scratch` holds 32 floats.
__device__ float block_sum(float v, float* scratch) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float total = 0.0f;
    for (int w = 0; w < warps; w++) total += scratch[w];
    return total;
}

// A random model's weight: the i-th value is scale * u for the i-th value u of the stream
// `seed`, uniform in [-1, 1) (SplitMix64, top 24 bits: weights/random.rs's `random_unit`),
// written as bf16 to `y16` or as f32 to `y32`, whichever is not null.
extern "C" __global__ void random_weight(unsigned short* y16, float* y32, long long n, long long seed, float scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned long long z = (unsigned long long)seed ^ ((unsigned long long)i * 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        z ^= z >> 31;
        float v = scale * ((float)(z >> 40) / 8388608.0f - 1.0f);
        if (y16) y16[i] = f32_to_bf16(v);
        else y32[i] = v;
    }
}

// A matrix product's operand: x (rows x cols, f32) as bf16 in `y16` or as f32 in `y32`
// (whichever is not null), padded_rows x cols: the rows past `rows` are zeros.
extern "C" __global__ void to_operand(const float* x, unsigned short* y16, float* y32, long long rows,
                                      long long padded_rows, long long cols) {
    long long n = padded_rows * cols, valid = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = i < valid ? x[i] : 0.0f;
        if (y16) y16[i] = f32_to_bf16(v);
        else y32[i] = v;
    }
}

// Rows `ids` of a table (vocab x hidden; bf16 in `table16` or f32 in `table32`, whichever
// is not null) as f32 rows. Grid: (rows, column blocks).
extern "C" __global__ void embed(const unsigned short* table16, const float* table32, const unsigned int* ids, float* y,
                                 long long hidden) {
    long long row = blockIdx.x;
    long long col = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    if (col < hidden) {
        long long at = ids[row] * hidden + col;
        y[row * hidden + col] = table16 ? bf16_to_f32(table16[at]) : table32[at];
    }
}

// y = x / rms(x) * w per row, sums in f32. One block per row.
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, long long cols, float eps) {
    __shared__ float scratch[WARP];
    const float* xr = x + blockIdx.x * cols;
    float* yr = y + blockIdx.x * cols;
    float squares = 0.0f;
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) squares += xr[c] * xr[c];
    float scale = 1.0f / sqrtf(block_sum(squares, scratch) / (float)cols + eps);
    for (long long c = threadIdx.x; c < cols; c += blockDim.x) yr[c] = xr[c] * scale * w[c];
}

// Rotates the first `rot` dimensions of each head (head_dim wide) of columns [col_start,
// col_end) of x (rows x width) in place by the row's table entry (rot values: the cosines,
// then the sines; rot <= head_dim, even); the other dimensions of a head stay as they are
// (partial rotary). `adjacent`: pairs (2i, 2i+1); otherwise (i, i + rot/2).
// Grid: (rows, pair blocks).
extern "C" __global__ void rope(float* x, const float* table, long long width, long long col_start, long long col_end,
                                int head_dim, int rot, int adjacent) {
    long long row = blockIdx.x;
    int half = rot / 2;
    long long pairs = (col_end - col_start) / head_dim * half;
    long long p = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    if (p >= pairs) return;
    long long head = p / half;
    int i = (int)(p % half);
    float* h = x + row * width + col_start + head * head_dim;
    int a = adjacent ? 2 * i : i, b = adjacent ? 2 * i + 1 : i + half;
    float c = table[row * rot + i], s = table[row * rot + half + i];
    float x0 = h[a], x1 = h[b];
    h[a] = x0 * c - x1 * s;
    h[b] = x0 * s + x1 * c;
}

// GELU with the tanh approximation (PyTorch's gelu(approximate="tanh")).
__device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978846f * (x + 0.044715f * x * x * x)));
}

// y (rows x f) = act(gate) * up, where each row of gate_up is [gate | up] and `act` is
// SiLU (activation 0) or GELU-tanh (activation 1).
extern "C" __global__ void gated(const float* gate_up, float* y, long long rows, long long f, int activation) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows * f;
         i += (long long)gridDim.x * blockDim.x) {
        long long r = i / f, c = i % f;
        float g = gate_up[r * 2 * f + c], u = gate_up[r * 2 * f + f + c];
        y[i] = (activation == 1 ? gelu_tanh(g) : g / (1.0f + expf(-g))) * u;
    }
}

extern "C" __global__ void add_assign(float* x, const float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        x[i] += y[i];
    }
}

// y (count x cols) = rows `index` of x. Grid: (count, column blocks).
extern "C" __global__ void gather_rows(const float* x, const unsigned long long* index, float* y, long long cols) {
    long long col = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    if (col < cols) y[blockIdx.x * cols + col] = x[index[blockIdx.x] * cols + col];
}

// Columns [start, start + len) of x (rows x width) into columns [out_start, out_start + len)
// of y (rows x out_width): one run of a concatenation. Grid: (rows, column blocks).
extern "C" __global__ void columns(const float* x, float* y, long long width, long long start, long long len,
                                   long long out_width, long long out_start) {
    long long col = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    if (col < len) y[blockIdx.x * out_width + out_start + col] = x[blockIdx.x * width + start + col];
}

// Attention over packed prefix trees. One warp per (query row, head); `spans` gives each
// query row's keys as two runs of rows: [shared_start, shared_start + shared_len) (the tree's
// prefix, for a branch row) and [own_start, own_start + own_len) (causal: ending at the row);
// a sliding window is applied by the host, which shortens the runs from their start.
// A score is (q * scale) . k, capped to softcap * tanh(s / softcap) when softcap > 0.
// The keys are taken in chunks of 32 from the start of each run, one key per lane, with an
// online softmax in f32, so a row's result depends only on its own keys. head_dim <= 128.
// out is rows x (num_heads * head_dim). Block: 128 threads (4 warps); shared memory 4 * head_dim floats.
extern "C" __global__ void attention(const float* qkv, float* out, const long long* spans, long long rows,
                                     long long width, int num_heads, int num_kv_heads, int head_dim, float scale,
                                     float softcap) {
    extern __shared__ float q_all[];
    int lane = threadIdx.x % WARP;
    long long item = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / WARP;
    long long row = item / num_heads;
    int head = (int)(item % num_heads);
    if (row >= rows) return;
    float* q = q_all + (threadIdx.x / WARP) * head_dim;
    for (int d = lane; d < head_dim; d += WARP) q[d] = qkv[row * width + (long long)head * head_dim + d] * scale;
    __syncwarp();
    int kv = head / (num_heads / num_kv_heads);
    long long k_col = (long long)num_heads * head_dim + (long long)kv * head_dim;
    long long v_col = k_col + (long long)num_kv_heads * head_dim;
    const long long* span = spans + 4 * row;
    float m = NEG_INF, l = 0.0f;
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int run = 0; run < 2; run++) {
        long long start = span[2 * run], len = span[2 * run + 1];
        for (long long base = 0; base < len; base += WARP) {
            long long key = start + base + lane;
            bool valid = base + lane < len;
            float s = NEG_INF;
            if (valid) {
                const float* k = qkv + key * width + k_col;
                float dot = 0.0f;
                for (int d = 0; d < head_dim; d++) dot += q[d] * k[d];
                s = softcap > 0.0f ? softcap * tanhf(dot / softcap) : dot;
            }
            float m_new = fmaxf(m, warp_max(s));
            float p = valid ? expf(s - m_new) : 0.0f;
            float correction = m == NEG_INF ? 0.0f : expf(m - m_new);
            l = l * correction + warp_sum(p);
            for (int i = 0; i < 4; i++) acc[i] *= correction;
            int n = (int)min((long long)WARP, len - base);
            for (int j = 0; j < n; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                const float* v = qkv + (start + base + j) * width + v_col;
                for (int i = 0; i < 4; i++) {
                    int d = lane + WARP * i;
                    if (d < head_dim) acc[i] += pj * v[d];
                }
            }
            m = m_new;
        }
    }
    float* o = out + row * (long long)num_heads * head_dim + (long long)head * head_dim;
    for (int i = 0; i < 4; i++) {
        int d = lane + WARP * i;
        if (d < head_dim) o[d] = acc[i] / l;
    }
}

// Normalises in place, in each row of x (rows x width), each run of `run` columns of
// [col_start, col_start + runs * run) to unit root-mean-square, scaled by w (run values);
// sums in f32. One block per (row, run): grid (rows, runs).
extern "C" __global__ void rms_norm_runs(float* x, const float* w, long long width, long long col_start, long long run,
                                         float eps) {
    __shared__ float scratch[WARP];
    float* xr = x + blockIdx.x * width + col_start + blockIdx.y * run;
    float squares = 0.0f;
    for (long long c = threadIdx.x; c < run; c += blockDim.x) squares += xr[c] * xr[c];
    float scale = 1.0f / sqrtf(block_sum(squares, scratch) / (float)run + eps);
    for (long long c = threadIdx.x; c < run; c += blockDim.x) xr[c] = xr[c] * scale * w[c];
}

// Adds the one-row `bias` (cols values) to every row of x (rows x cols).
extern "C" __global__ void add_row(float* x, const float* bias, long long rows, long long cols) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows * cols;
         i += (long long)gridDim.x * blockDim.x) {
        x[i] += bias[i % cols];
    }
}

// x *= factor, for the n values of x.
extern "C" __global__ void scale(float* x, long long n, float factor) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        x[i] *= factor;
    }
}

// Row r of x (rows x cols) times factors[r].
extern "C" __global__ void scale_rows(float* x, const float* factors, long long rows, long long cols) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < rows * cols;
         i += (long long)gridDim.x * blockDim.x) {
        x[i] *= factors[i / cols];
    }
}

// x = cap * tanh(x / cap), for the n values of x.
extern "C" __global__ void soft_cap(float* x, long long n, float cap) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        x[i] = cap * tanhf(x[i] / cap);
    }
}

// Adds rows of y (count x cols) into rows of x, deterministically. `chains` holds two
// values per row of y, [target, next]: the first row of y aimed at an x row (its leader)
// has that row as target, the later ones -1; `next` is the next row of y aimed at the
// same x row, or -1. Each leader's blocks walk its chain in the order of y, so an x row
// gets its additions in that order whatever the launch does; rows aimed at distinct x
// rows (the usual case) are all leaders with chains of one, added in parallel.
// Grid: (count, column blocks).
extern "C" __global__ void scatter_add_rows(float* x, const float* y, const long long* chains, long long cols) {
    long long col = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    long long lead = blockIdx.x, target = chains[2 * lead];
    if (col >= cols || target < 0) return;
    float v = x[target * cols + col];
    for (long long j = lead; j >= 0; j = chains[2 * j + 1]) v += y[j * cols + col];
    x[target * cols + col] = v;
}

// Per row of logits (rows x vocab): the log-softmax at targets[row] (f32, max-subtracted)
// and whether the target is the first maximum. One block of 1024 threads per row.
extern "C" __global__ void score(const float* logits, const unsigned int* targets, float* logprob,
                                 unsigned int* greedy, long long vocab) {
    __shared__ float best_value[WARP];
    __shared__ long long best_index[WARP];
    __shared__ float scratch[WARP];
    const float* x = logits + blockIdx.x * vocab;
    float best = NEG_INF;
    long long index = vocab;
    for (long long c = threadIdx.x; c < vocab; c += blockDim.x) {
        if (x[c] > best) {
            best = x[c];
            index = c;
        }
    }
    // Reduce (value, index) keeping the larger value, and the lower index on ties.
    for (int offset = WARP / 2; offset > 0; offset /= 2) {
        float v = __shfl_xor_sync(0xffffffffu, best, offset);
        long long i = __shfl_xor_sync(0xffffffffu, index, offset);
        if (v > best || (v == best && i < index)) {
            best = v;
            index = i;
        }
    }
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP, warps = blockDim.x / WARP;
    if (lane == 0) {
        best_value[warp] = best;
        best_index[warp] = index;
    }
    __syncthreads();
    best = best_value[0];
    index = best_index[0];
    for (int w = 1; w < warps; w++) {
        if (best_value[w] > best || (best_value[w] == best && best_index[w] < index)) {
            best = best_value[w];
            index = best_index[w];
        }
    }
    float sum = 0.0f;
    for (long long c = threadIdx.x; c < vocab; c += blockDim.x) sum += expf(x[c] - best);
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) {
        unsigned int t = targets[blockIdx.x];
        logprob[blockIdx.x] = (x[t] - best) - logf(sum);
        greedy[blockIdx.x] = index == (long long)t ? 1u : 0u;
    }
}
