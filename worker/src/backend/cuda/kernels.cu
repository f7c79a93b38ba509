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

// A matrix product's operand: columns [col_start, col_start + cols) of x (rows x width,
// f32) as bf16 in `y16` or as f32 in `y32` (whichever is not null), one row per block row
// of the grid, as many as the operand's padded rows: the rows past `rows` are zeros.
// Grid: (padded rows, column blocks).
extern "C" __global__ void to_operand(const float* x, unsigned short* y16, float* y32, long long rows,
                                      long long width, long long col_start, long long cols) {
    long long row = blockIdx.x;
    long long col = blockIdx.y * (long long)blockDim.x + threadIdx.x;
    if (col >= cols) return;
    float v = row < rows ? x[row * width + col_start + col] : 0.0f;
    if (y16) y16[row * cols + col] = f32_to_bf16(v);
    else y32[row * cols + col] = v;
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

// ((x + y[0]) + y[1]) + ... into x, for the n values of x and of each of the `count`
// tensors whose addresses `ys` holds: the sum of a row-parallel product's parts in group
// order, in one pass.
extern "C" __global__ void add_all_in_order(float* x, const unsigned long long* ys, long long count, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        float v = x[i];
        for (long long k = 0; k < count; k++) v += ((const float*)ys[k])[i];
        x[i] = v;
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
// online softmax in f32, so a row's result depends only on its own keys. head_dim <=
// SIMT_MAX_DIM.
// out is rows x (num_heads * head_dim). Block: 128 threads (4 warps); shared memory 4 * head_dim floats.
#define SIMT_MAX_DIM 256

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
    float acc[SIMT_MAX_DIM / WARP] = {};
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
#pragma unroll
            for (int i = 0; i < SIMT_MAX_DIM / WARP; i++) acc[i] *= correction;
            int n = (int)min((long long)WARP, len - base);
            for (int j = 0; j < n; j++) {
                float pj = __shfl_sync(0xffffffffu, p, j);
                const float* v = qkv + (start + base + j) * width + v_col;
#pragma unroll
                for (int i = 0; i < SIMT_MAX_DIM / WARP; i++) {
                    int d = lane + WARP * i;
                    if (d < head_dim) acc[i] += pj * v[d];
                }
            }
            m = m_new;
        }
    }
    float* o = out + row * (long long)num_heads * head_dim + (long long)head * head_dim;
#pragma unroll
    for (int i = 0; i < SIMT_MAX_DIM / WARP; i++) {
        int d = lane + WARP * i;
        if (d < head_dim) o[d] = acc[i] / l;
    }
}

// Attention on tensor cores (sm_80 and newer; the host uses `attention` elsewhere and on
// the f32 path): the same trees, spans, scale and cap, with bf16 operands (queries, keys,
// values and the softmax weights rounded to bf16) and f32 scores, softmax and sums.
// A block of 4 warps takes one tile of `tiles` (8 values: first row, rows, then per run
// its anchor, the first of its keys any row of the tile sees and the end of them) for
// `heads_per_block` query heads of one KV group: warp w takes head w % heads_per_block and
// the tile's rows 16 * (w / heads_per_block) to 16 more. The keys of each run are staged in
// shared memory TC_KEYS at a time, bf16, from the run's anchor (the run's start before any
// window: a tree's first row, or a branch's), and each warp folds them into its rows with
// an online softmax. A row's result depends only on its own keys: the chunks it meets start
// at its anchor whatever the tile, a chunk holding none of its keys changes nothing (the
// maximum stays, the factor is exactly 1, the weights are 0), and each reduction has a
// fixed order (a lane's keys in order, then its quad in xor order).
// Grid: (tiles, num_heads / heads_per_block). Block: 128 threads. head_dim: a multiple of
// 16 up to TC_MAX_DIM.
#define TC_KEYS 64
#define TC_MAX_DIM 128

__device__ __forceinline__ unsigned int pack_bf16(float lo, float hi) {
    return (unsigned int)f32_to_bf16(lo) | ((unsigned int)f32_to_bf16(hi) << 16);
}

// d (16 x 8, f32) += a (16 x 16, bf16, row-major fragments) * b (16 x 8, bf16, column fragments).
__device__ __forceinline__ void mma_bf16(float* d, const unsigned int* a, unsigned int b0, unsigned int b1) {
#if __CUDA_ARCH__ >= 800
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();
#endif
}

extern "C" __global__ void attention_tc(const float* qkv, float* out, const long long* spans, const long long* tiles,
                                        int heads_per_block, long long width, int num_heads, int num_kv_heads,
                                        int head_dim, float scale, float softcap) {
    __shared__ __align__(16) unsigned short keys[TC_KEYS][TC_MAX_DIM + 8];
    __shared__ __align__(16) unsigned short values_t[TC_MAX_DIM][TC_KEYS + 8];
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int g = lane / 4, t4 = lane % 4;
    int group = num_heads / num_kv_heads, blocks_per_kv = group / heads_per_block;
    int kv = blockIdx.y / blocks_per_kv;
    int head = kv * group + (blockIdx.y % blocks_per_kv) * heads_per_block + warp % heads_per_block;
    const long long* tile = tiles + 8 * (long long)blockIdx.x;
    long long first = tile[0], last = tile[0] + tile[1];
    long long q_col = (long long)head * head_dim;
    long long k_col = (long long)num_heads * head_dim + (long long)kv * head_dim;
    long long v_col = k_col + (long long)num_kv_heads * head_dim;
    int steps = head_dim / 16;
    // The lane's two rows (g and g + 8 of the warp's 16) and whether the tile has them.
    long long row[2];
    bool live[2];
    for (int i = 0; i < 2; i++) {
        row[i] = first + 16 * (warp / heads_per_block) + g + 8 * i;
        live[i] = row[i] < last;
    }
    // The queries as the A fragments of each 16-wide step of head_dim.
    unsigned int qa[TC_MAX_DIM / 16][4];
#pragma unroll
    for (int s = 0; s < TC_MAX_DIM / 16; s++) {
#pragma unroll
        for (int r = 0; r < 4; r++) {
            int i = r & 1, col = 16 * s + 2 * t4 + 8 * (r >> 1);
            const float* q = qkv + row[i] * width + q_col + col;
            qa[s][r] = (s < steps && live[i]) ? pack_bf16(q[0], q[1]) : 0u;
        }
    }
    float o[TC_MAX_DIM / 8][4];
#pragma unroll
    for (int n = 0; n < TC_MAX_DIM / 8; n++) {
        for (int e = 0; e < 4; e++) o[n][e] = 0.0f;
    }
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.0f, 0.0f};
    for (int run = 0; run < 2; run++) {
        long long anchor = tile[2 + 3 * run], from = tile[3 + 3 * run], end = tile[4 + 3 * run];
        // The keys of this run each of the lane's rows sees.
        long long seen_start[2], seen_end[2];
        for (int i = 0; i < 2; i++) {
            seen_start[i] = live[i] ? spans[4 * row[i] + 2 * run] : 0;
            seen_end[i] = live[i] ? seen_start[i] + spans[4 * row[i] + 2 * run + 1] : 0;
        }
        for (long long base = anchor + (from - anchor) / TC_KEYS * TC_KEYS; base < end; base += TC_KEYS) {
            __syncthreads();
            int quads = head_dim / 4;
            for (int i = threadIdx.x; i < TC_KEYS * quads; i += blockDim.x) {
                int key = i / quads, d = (i % quads) * 4;
                float4 k4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f), v4 = k4;
                if (base + key < end) {
                    k4 = *(const float4*)(qkv + (base + key) * width + k_col + d);
                    v4 = *(const float4*)(qkv + (base + key) * width + v_col + d);
                }
                *(uint2*)&keys[key][d] = make_uint2(pack_bf16(k4.x, k4.y), pack_bf16(k4.z, k4.w));
                values_t[d][key] = f32_to_bf16(v4.x);
                values_t[d + 1][key] = f32_to_bf16(v4.y);
                values_t[d + 2][key] = f32_to_bf16(v4.z);
                values_t[d + 3][key] = f32_to_bf16(v4.w);
            }
            __syncthreads();
            // Scores of the chunk: s[j] holds keys 8j + 2 t4 + {0, 1} of rows g (0, 1) and g + 8 (2, 3).
            float s[TC_KEYS / 8][4];
#pragma unroll
            for (int j = 0; j < TC_KEYS / 8; j++) {
                for (int e = 0; e < 4; e++) s[j][e] = 0.0f;
#pragma unroll
                for (int st = 0; st < TC_MAX_DIM / 16; st++) {
                    if (st < steps) {
                        const unsigned short* k = &keys[8 * j + g][16 * st + 2 * t4];
                        mma_bf16(s[j], qa[st], *(const unsigned int*)k, *(const unsigned int*)(k + 8));
                    }
                }
            }
            float chunk_max[2] = {NEG_INF, NEG_INF};
#pragma unroll
            for (int j = 0; j < TC_KEYS / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = e >> 1;
                    long long key = base + 8 * j + 2 * t4 + (e & 1);
                    float v = s[j][e] * scale;
                    if (softcap > 0.0f) v = softcap * tanhf(v / softcap);
                    s[j][e] = (key >= seen_start[i] && key < seen_end[i]) ? v : NEG_INF;
                    chunk_max[i] = fmaxf(chunk_max[i], s[j][e]);
                }
            }
            float factor[2];
            for (int i = 0; i < 2; i++) {
                chunk_max[i] = fmaxf(chunk_max[i], __shfl_xor_sync(0xffffffffu, chunk_max[i], 1));
                chunk_max[i] = fmaxf(chunk_max[i], __shfl_xor_sync(0xffffffffu, chunk_max[i], 2));
                float m_new = fmaxf(m[i], chunk_max[i]);
                factor[i] = m[i] == m_new ? 1.0f : (m[i] == NEG_INF ? 0.0f : expf(m[i] - m_new));
                m[i] = m_new;
            }
            float sums[2] = {0.0f, 0.0f};
#pragma unroll
            for (int j = 0; j < TC_KEYS / 8; j++) {
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int i = e >> 1;
                    s[j][e] = s[j][e] == NEG_INF ? 0.0f : expf(s[j][e] - m[i]);
                    sums[i] += s[j][e];
                }
            }
            for (int i = 0; i < 2; i++) l[i] = l[i] * factor[i] + sums[i];
#pragma unroll
            for (int n = 0; n < TC_MAX_DIM / 8; n++) {
                for (int e = 0; e < 4; e++) o[n][e] *= factor[e >> 1];
            }
            // The weights as A fragments, 16 keys a step, times the values.
#pragma unroll
            for (int st = 0; st < TC_KEYS / 16; st++) {
                unsigned int pa[4] = {pack_bf16(s[2 * st][0], s[2 * st][1]), pack_bf16(s[2 * st][2], s[2 * st][3]),
                                      pack_bf16(s[2 * st + 1][0], s[2 * st + 1][1]),
                                      pack_bf16(s[2 * st + 1][2], s[2 * st + 1][3])};
#pragma unroll
                for (int n = 0; n < TC_MAX_DIM / 8; n++) {
                    if (n < head_dim / 8) {
                        const unsigned short* v = &values_t[8 * n + g][16 * st + 2 * t4];
                        mma_bf16(o[n], pa, *(const unsigned int*)v, *(const unsigned int*)(v + 8));
                    }
                }
            }
        }
    }
    for (int i = 0; i < 2; i++) {
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 1);
        l[i] += __shfl_xor_sync(0xffffffffu, l[i], 2);
    }
#pragma unroll
    for (int n = 0; n < TC_MAX_DIM / 8; n++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int i = e >> 1;
            if (n < head_dim / 8 && live[i]) {
                out[row[i] * num_heads * head_dim + q_col + 8 * n + 2 * t4 + (e & 1)] = o[n][e] / l[i];
            }
        }
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
