// The policy head on the GPU: the final norm, the output projection over a gathered set of rows
// (the tokens a grammar allows) for every sequence of a batch in one launch, preference bias and
// budget mask, masked softmax and seeded sampling; and, for free text, the whole vocabulary's
// logits with fused temperature, top-k and top-p. The CPU routines of `tutti_kernels::sampling`
// are the reference: each kernel follows their order of operations.

// y = x / sqrt(mean(x^2) + eps) * (w + w_offset), one block per row (gemma's norms use w_offset 1).
extern "C" __global__ void rms_norm(const float* x, const float* w, float* y, int dim, float eps,
                                    float w_offset) {
    __shared__ float shared[WARP];
    const float* row = x + (size_t)blockIdx.x * dim;
    float* out = y + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += row[i] * row[i];
    ss = block_sum(ss, shared);
    float scale = 1.0f / sqrtf(ss / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) out[i] = row[i] * scale * (w[i] + w_offset);
}

// Dot products of one activation row with one weight row, summed over a warp; every lane gets the
// result. `dim` is a multiple of 8 (bf16, f16) or 32 (Q8_0: 34-byte blocks, an f16 scale and 32
// signed quants).
template <bool BF16>
__device__ __forceinline__ float half_to_f32(unsigned short x) {
    if constexpr (BF16) {
        return bf16_to_f32(x);
    } else {
        return f16_to_f32(x);
    }
}

// bf16 (BF16) or f16 weights: each lane reads 8 at a time (16 bytes).
template <bool BF16>
__device__ __forceinline__ float dot_half(const float* h, const unsigned short* w, int dim) {
    int lane = threadIdx.x % WARP;
    float acc = 0.0f;
    for (int i = lane * 8; i < dim; i += WARP * 8) {
        uint4 packed = *(const uint4*)(w + i);
        const unsigned short* q = (const unsigned short*)&packed;
        float4 a = *(const float4*)(h + i);
        float4 b = *(const float4*)(h + i + 4);
        acc += a.x * half_to_f32<BF16>(q[0]) + a.y * half_to_f32<BF16>(q[1]) +
               a.z * half_to_f32<BF16>(q[2]) + a.w * half_to_f32<BF16>(q[3]) +
               b.x * half_to_f32<BF16>(q[4]) + b.y * half_to_f32<BF16>(q[5]) +
               b.z * half_to_f32<BF16>(q[6]) + b.w * half_to_f32<BF16>(q[7]);
    }
    return warp_sum(acc);
}

__device__ __forceinline__ float dot_q8_0(const float* h, const unsigned char* w, int dim) {
    int lane = threadIdx.x % WARP;
    int blocks = dim / 32;
    float acc = 0.0f;
    for (int b = lane; b < blocks; b += WARP) {
        const unsigned char* blk = w + (size_t)b * 34;
        float d = f16_to_f32((f16_t)(blk[0] | (blk[1] << 8)));
        const signed char* qs = (const signed char*)(blk + 2);
        const float* x = h + b * 32;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < 32; j++) s += x[j] * (float)qs[j];
        acc += d * s;
    }
    return warp_sum(acc);
}

// out[k] = h[seq_of[k]] . W[rows[k]] for k < n: every sequence's allowed rows in one launch. One
// warp per output, 8 warps per block.
#define GATHER(NAME, T, DOT, ROW_BYTES)                                                           \
    extern "C" __global__ void NAME(const float* h, const T* w, const unsigned* rows,             \
                                    const unsigned* seq_of, float* out, int n, int dim) {         \
        int k = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;                            \
        if (k >= n) return;                                                                       \
        const unsigned char* base = (const unsigned char*)w + (size_t)rows[k] * (ROW_BYTES);      \
        float v = DOT(h + (size_t)seq_of[k] * dim, (const T*)base, dim);                          \
        if (threadIdx.x % WARP == 0) out[k] = v;                                                  \
    }

GATHER(gather_logits_bf16, bf16_t, dot_half<true>, (size_t)dim * 2)
GATHER(gather_logits_f16, f16_t, dot_half<false>, (size_t)dim * 2)
GATHER(gather_logits_q8_0, unsigned char, dot_q8_0, (size_t)(dim / 32) * 34)

// The whole vocabulary: out[s * n_rows + r] = h[s] . W[r]; grid (ceil(n_rows / 8), sequences).
#define DENSE(NAME, T, DOT, ROW_BYTES)                                                            \
    extern "C" __global__ void NAME(const float* h, const T* w, float* out, int n_rows, int dim) { \
        int r = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;                            \
        if (r >= n_rows) return;                                                                  \
        const unsigned char* base = (const unsigned char*)w + (size_t)r * (ROW_BYTES);            \
        float v = DOT(h + (size_t)blockIdx.y * dim, (const T*)base, dim);                         \
        if (threadIdx.x % WARP == 0) out[(size_t)blockIdx.y * n_rows + r] = v;                    \
    }

DENSE(logits_bf16, bf16_t, dot_half<true>, (size_t)dim * 2)
DENSE(logits_f16, f16_t, dot_half<false>, (size_t)dim * 2)
DENSE(logits_q8_0, unsigned char, dot_q8_0, (size_t)(dim / 32) * 34)

// One decision per sequence over its gathered rows logits[offsets[s] .. offsets[s + 1]]: the bias
// (the preference, with -inf for rows beyond the budget) is added, then greedy (temperature <= 0)
// or temperature, softmax and inverse-CDF sampling with the uniform number uniforms[s]. chosen[s]
// is the index within the sequence's rows, -1 when none is possible; the row is left as the
// probabilities (or the biased logits, greedy). Sequential per sequence, in the CPU reference's
// order (`argmax`, `apply_temperature`, `softmax_inplace`, `sample_index`): rows are a few
// hundred at most. One thread per sequence.
extern "C" __global__ void head_choose(float* logits, const float* bias, const unsigned* offsets,
                                       const float* temperature, const float* uniforms,
                                       int* chosen, int n_seq) {
    int s = blockIdx.x * blockDim.x + threadIdx.x;
    if (s >= n_seq) return;
    float* row = logits + offsets[s];
    const float* b = bias + offsets[s];
    int n = (int)(offsets[s + 1] - offsets[s]);
    for (int i = 0; i < n; i++) row[i] += b[i];
    // argmax: the first largest entry that is neither -inf nor NaN.
    int best = -1;
    float m = 0.0f;
    for (int i = 0; i < n; i++) {
        float x = row[i];
        if (x == NEG_INF || x != x) continue;
        if (best < 0 || x > m) {
            best = i;
            m = x;
        }
    }
    float t = temperature[s];
    if (t <= 0.0f || best < 0) {
        chosen[s] = best;
        return;
    }
    if (t != 1.0f) {
        float inv = 1.0f / t;
        for (int i = 0; i < n; i++) row[i] *= inv;
        m *= inv;
    }
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        float e = row[i] == NEG_INF ? 0.0f : expf(row[i] - m);
        row[i] = e;
        sum += e;
    }
    float inv = 1.0f / sum;
    float total = 0.0f;
    for (int i = 0; i < n; i++) {
        row[i] *= inv;
        total += row[i];
    }
    if (!(total > 0.0f) || isinf(total)) {
        chosen[s] = -1;
        return;
    }
    float target = fminf(fmaxf(uniforms[s], 0.0f), 1.0f) * total;
    float acc = 0.0f;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (row[i] > 0.0f) {
            acc += row[i];
            last = i;
            if (target < acc) {
                chosen[s] = i;
                return;
            }
        }
    }
    chosen[s] = last;
}

// The largest threshold `v` (as an order key) such that the entries with key >= v weigh at least
// `goal`, where an entry weighs 1 (counting: top-k) or its value (mass: top-p). Radix select from
// the top byte down; `hist` holds 256 floats. Every thread gets the key.
__device__ unsigned select_threshold(const float* row, int n, float goal, bool by_mass,
                                     float* hist, float* reduce) {
    unsigned prefix = 0, mask = 0;
    float above = 0.0f;  // weight of the entries whose key is above the prefix's range
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int i = threadIdx.x; i < 256; i += blockDim.x) hist[i] = 0.0f;
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            unsigned k = order_key(row[i]);
            if ((k & mask) == prefix) {
                atomicAdd(&hist[(k >> shift) & 0xffu], by_mass ? row[i] : 1.0f);
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            int digit = 0;
            float acc = above;
            for (int d = 255; d >= 0; d--) {
                if (acc + hist[d] >= goal) {
                    digit = d;
                    break;
                }
                acc += hist[d];
            }
            reduce[0] = acc;
            reduce[1] = __uint_as_float((unsigned)digit);
        }
        __syncthreads();
        above = reduce[0];
        prefix |= __float_as_uint(reduce[1]) << shift;
        mask |= 0xffu << shift;
        __syncthreads();
    }
    return prefix;
}

// The whole vocabulary, one block of 1024 threads per sequence, the CPU's `sample_token`:
// greedy (temperature <= 0) is the first largest entry; otherwise temperature, top-k (0 = off;
// ties at the threshold kept), softmax, top-p (>= 1 = off: the largest entries whose mass reaches
// p, renormalised; entries tied at the cut are all kept) and inverse-CDF sampling with
// uniforms[s]. The row is overwritten with its probabilities. chosen[s] = -1 when every entry is
// masked.
// Launched with 1024 threads: the bound keeps the compiler within 64 registers a thread.
extern "C" __global__ void __launch_bounds__(1024) sample_full(float* logits, int vocab, const float* temperature,
                                       const int* top_k, const float* top_p,
                                       const float* uniforms, int* chosen) {
    __shared__ float reduce[WARP];
    __shared__ float hist[256];
    __shared__ float chunks[1024];
    __shared__ int best_index[WARP];
    int s = blockIdx.x;
    float* row = logits + (size_t)s * vocab;
    float t = temperature[s];
    int tid = threadIdx.x;

    if (t <= 0.0f) {
        // First largest: the largest value, then the smallest index holding it.
        float m = NEG_INF;
        for (int i = tid; i < vocab; i += blockDim.x) {
            float x = row[i];
            if (x == x) m = fmaxf(m, x);
        }
        m = block_max(m, reduce);
        int idx = 0x7fffffff;
        if (m != NEG_INF) {
            for (int i = tid; i < vocab; i += blockDim.x) {
                if (row[i] == m) {
                    idx = i;
                    break;
                }
            }
        }
        for (int o = WARP / 2; o > 0; o /= 2) idx = min(idx, __shfl_xor_sync(0xffffffffu, idx, o));
        if (tid % WARP == 0) best_index[tid / WARP] = idx;
        __syncthreads();
        if (tid == 0) {
            int b = 0x7fffffff;
            for (int w = 0; w < (int)blockDim.x / WARP; w++) b = min(b, best_index[w]);
            chosen[s] = b == 0x7fffffff ? -1 : b;
        }
        return;
    }

    if (t != 1.0f) {
        float inv = 1.0f / t;
        for (int i = tid; i < vocab; i += blockDim.x) row[i] *= inv;
        __syncthreads();
    }
    int k = top_k[s];
    if (k > 0 && k < vocab) {
        float threshold = key_value(select_threshold(row, vocab, (float)k, false, hist, reduce));
        for (int i = tid; i < vocab; i += blockDim.x) {
            if (row[i] < threshold) row[i] = NEG_INF;
        }
        __syncthreads();
    }
    float m = NEG_INF;
    for (int i = tid; i < vocab; i += blockDim.x) {
        float x = row[i];
        if (x == x) m = fmaxf(m, x);
    }
    m = block_max(m, reduce);
    if (m == NEG_INF) {
        for (int i = tid; i < vocab; i += blockDim.x) row[i] = 0.0f;
        if (tid == 0) chosen[s] = -1;
        return;
    }
    float sum = 0.0f;
    for (int i = tid; i < vocab; i += blockDim.x) {
        float e = row[i] == NEG_INF ? 0.0f : expf(row[i] - m);
        row[i] = e;
        sum += e;
    }
    sum = block_sum(sum, reduce);
    float inv = 1.0f / sum;
    for (int i = tid; i < vocab; i += blockDim.x) row[i] *= inv;
    __syncthreads();
    float p = top_p[s];
    if (p < 1.0f) {
        float mass = 0.0f;
        for (int i = tid; i < vocab; i += blockDim.x) mass += row[i];
        mass = block_sum(mass, reduce);
        if (mass >= p) {
            float cut = key_value(select_threshold(row, vocab, p, true, hist, reduce));
            float kept = 0.0f;
            for (int i = tid; i < vocab; i += blockDim.x) {
                if (row[i] < cut) row[i] = 0.0f;
                kept += row[i];
            }
            kept = block_sum(kept, reduce);
            float scale = 1.0f / fmaxf(kept, 1.175494351e-38f);
            for (int i = tid; i < vocab; i += blockDim.x) row[i] *= scale;
            __syncthreads();
        }
    }
    // Inverse CDF over contiguous chunks: each thread sums its chunk, thread 0 walks the chunk
    // sums and then the chunk the target falls in.
    int chunk = (vocab + blockDim.x - 1) / blockDim.x;
    int lo = tid * chunk, hi = min(lo + chunk, vocab);
    float own = 0.0f;
    for (int i = lo; i < hi; i++) own += row[i];
    chunks[tid] = own;
    __syncthreads();
    if (tid != 0) return;
    float total = 0.0f;
    for (int c = 0; c < (int)blockDim.x; c++) total += chunks[c];
    if (!(total > 0.0f) || isinf(total)) {
        chosen[s] = -1;
        return;
    }
    float target = fminf(fmaxf(uniforms[s], 0.0f), 1.0f) * total;
    float acc = 0.0f;
    for (int c = 0; c < (int)blockDim.x; c++) {
        if (acc + chunks[c] > target) {
            int end = min((c + 1) * chunk, vocab);
            for (int i = c * chunk; i < end; i++) {
                if (row[i] > 0.0f) {
                    acc += row[i];
                    if (target < acc) {
                        chosen[s] = i;
                        return;
                    }
                }
            }
        } else {
            acc += chunks[c];
        }
    }
    // Rounding left the target past the last bucket: the last entry with mass.
    for (int i = vocab - 1; i >= 0; i--) {
        if (row[i] > 0.0f) {
            chosen[s] = i;
            return;
        }
    }
    chosen[s] = -1;
}
