// The pieces of a qwen3 / gemma3 decoder step that are not matrix products (those go to cuBLAS):
// embedding lookup, rotary embeddings, the gated MLP's activation, residual adds, conversions, and
// attention over paged per-sequence KV blocks. Activations are f32; KV blocks are bf16.
// RMSNorm (and the per-head QK-norm, the same kernel over rows of head_dim) is `rms_norm` of
// policy_head.cu.

// out[t] = table[tokens[t]] * scale (gemma scales its embeddings by sqrt(dim)); one block per token.
extern "C" __global__ void embed_bf16(const unsigned* tokens, const bf16_t* table, float* out,
                                      int dim, float scale) {
    const bf16_t* row = table + (size_t)tokens[blockIdx.x] * dim;
    float* o = out + (size_t)blockIdx.x * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) o[i] = bf16_to_f32(row[i]) * scale;
}

// Rotary embedding, NeoX layout (the two halves of each head rotate together), in place on
// x[token][head][head_dim]; cos/sin are [position][head_dim / 2] tables made on the host with the
// CPU runner's frequencies. One block per token.
extern "C" __global__ void rope_neox(float* x, const float* cos_table, const float* sin_table,
                                     const int* positions, int n_heads, int head_dim) {
    int half = head_dim / 2;
    const float* c = cos_table + (size_t)positions[blockIdx.x] * half;
    const float* s = sin_table + (size_t)positions[blockIdx.x] * half;
    float* tok = x + (size_t)blockIdx.x * n_heads * head_dim;
    for (int j = threadIdx.x; j < n_heads * half; j += blockDim.x) {
        int h = j / half, i = j % half;
        float* head = tok + h * head_dim;
        float x0 = head[i], x1 = head[i + half];
        head[i] = x0 * c[i] - x1 * s[i];
        head[i + half] = x0 * s[i] + x1 * c[i];
    }
}

// out = silu(gate) * up (qwen3's MLP).
extern "C" __global__ void silu_mul(const float* gate, const float* up, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// out = gelu_tanh(gate) * up (gemma3's MLP, PyTorch's tanh approximation).
extern "C" __global__ void gelu_mul(const float* gate, const float* up, float* out, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float g = gate[i];
        float inner = 0.7978845608028654f * (g + 0.044715f * g * g * g);
        out[i] = 0.5f * g * (1.0f + tanhf(inner)) * up[i];
    }
}

// x += y.
extern "C" __global__ void add_inplace(float* x, const float* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += y[i];
}

// y = bf16(x), round to nearest even (the GEMM inputs).
extern "C" __global__ void f32_to_bf16_rows(const float* x, bf16_t* y, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = f32_to_bf16(x[i]);
}

// Writes each new token's keys and values into its KV slot: slots[t] = block * block_size +
// offset, from the sequence's block table on the host. k, v: [token][kv_dim]; caches:
// [slot][kv_dim]. One block per token.
extern "C" __global__ void kv_store(const float* k, const float* v, bf16_t* k_cache,
                                    bf16_t* v_cache, const int* slots, int kv_dim) {
    size_t slot = (size_t)slots[blockIdx.x];
    const float* kt = k + (size_t)blockIdx.x * kv_dim;
    const float* vt = v + (size_t)blockIdx.x * kv_dim;
    for (int i = threadIdx.x; i < kv_dim; i += blockDim.x) {
        k_cache[slot * kv_dim + i] = f32_to_bf16(kt[i]);
        v_cache[slot * kv_dim + i] = f32_to_bf16(vt[i]);
    }
}

// Attention of each query token over its sequence's cached positions [start, len), where len =
// q_len[t] (the token's position + 1: causal, the token's own KV already stored) and start =
// max(0, len - window) for a sliding-window layer (window 0: none). The sequence's KV sits in
// blocks of `block_size` positions listed in block_tables[q_seq[t]][..max_blocks]. Grouped
// queries: head h reads KV head h / (n_heads / n_kv_heads). q, out: [token][head][head_dim],
// head_dim <= 256 and a multiple of 32. Grid (tokens, heads), 4 warps of online softmax, merged.
extern "C" __global__ void __launch_bounds__(128) paged_attention(const float* q, const bf16_t* k_cache,
                                           const bf16_t* v_cache, const int* block_tables,
                                           int max_blocks, const int* q_seq, const int* q_len,
                                           float* out, int n_heads, int n_kv_heads, int head_dim,
                                           int block_size, float scale, int window) {
    const int WARPS = 4, PER_LANE = 8;
    __shared__ float warp_m[WARPS], warp_l[WARPS];
    __shared__ float warp_acc[WARPS][256];
    int t = blockIdx.x, h = blockIdx.y;
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    int per_lane = head_dim / WARP;
    int kv_head = h / (n_heads / n_kv_heads);
    int kv_dim = n_kv_heads * head_dim;
    const float* qh = q + ((size_t)t * n_heads + h) * head_dim;
    float qr[PER_LANE], acc[PER_LANE];
    for (int j = 0; j < per_lane; j++) {
        qr[j] = qh[lane + j * WARP] * scale;
        acc[j] = 0.0f;
    }
    const int* table = block_tables + (size_t)q_seq[t] * max_blocks;
    int len = q_len[t];
    int start = window > 0 && len > window ? len - window : 0;
    float m = NEG_INF, l = 0.0f;
    for (int pos = start + warp; pos < len; pos += WARPS) {
        size_t slot = (size_t)table[pos / block_size] * block_size + pos % block_size;
        const bf16_t* kr = k_cache + slot * kv_dim + kv_head * head_dim;
        const bf16_t* vr = v_cache + slot * kv_dim + kv_head * head_dim;
        float dot = 0.0f;
        for (int j = 0; j < per_lane; j++) dot += qr[j] * bf16_to_f32(kr[lane + j * WARP]);
        float s = warp_sum(dot);
        float m_new = fmaxf(m, s);
        float corr = expf(m - m_new);
        float p = expf(s - m_new);
        l = l * corr + p;
        for (int j = 0; j < per_lane; j++) {
            acc[j] = acc[j] * corr + p * bf16_to_f32(vr[lane + j * WARP]);
        }
        m = m_new;
    }
    if (lane == 0) {
        warp_m[warp] = m;
        warp_l[warp] = l;
    }
    for (int j = 0; j < per_lane; j++) warp_acc[warp][lane + j * WARP] = acc[j];
    __syncthreads();
    float mt = NEG_INF;
    for (int w = 0; w < WARPS; w++) mt = fmaxf(mt, warp_m[w]);
    float lt = 0.0f;
    for (int w = 0; w < WARPS; w++) {
        if (warp_m[w] != NEG_INF) lt += warp_l[w] * expf(warp_m[w] - mt);
    }
    float* o = out + ((size_t)t * n_heads + h) * head_dim;
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float v = 0.0f;
        for (int w = 0; w < WARPS; w++) {
            if (warp_m[w] != NEG_INF) v += warp_acc[w][i] * expf(warp_m[w] - mt);
        }
        o[i] = lt > 0.0f ? v / lt : 0.0f;
    }
}
