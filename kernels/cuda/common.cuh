// Shared by every kernel file: compiled in front of each one (NVRTC is given no include paths, and
// no CUDA headers: the PyPI NVRTC ships none, so half-precision conversions are written here).

typedef unsigned short bf16_t;
typedef unsigned short f16_t;

#define NEG_INF __int_as_float(0xff800000)
#define WARP 32

__device__ __forceinline__ float bf16_to_f32(bf16_t b) {
    return __uint_as_float(((unsigned)b) << 16);
}

// Round to nearest even, as `half::bf16::from_f32`; NaN stays a (quiet) NaN.
__device__ __forceinline__ bf16_t f32_to_bf16(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        return (bf16_t)((u >> 16) | 0x40u);
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(f16_t h) {
    float f;
    asm("{ cvt.f32.f16 %0, %1; }" : "=f"(f) : "h"(h));
    return f;
}

__device__ __forceinline__ float warp_sum(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = WARP / 2; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum (or, with MAX, maximum) over the block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `shared` holds 32 floats; the call synchronises the block.
template <bool MAX>
__device__ float block_reduce(float v, float* shared) {
    int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    int warps = blockDim.x / WARP;
    v = lane < warps ? shared[lane] : (MAX ? NEG_INF : 0.0f);
    return MAX ? warp_max(v) : warp_sum(v);
}

__device__ float block_sum(float v, float* shared) { return block_reduce<false>(v, shared); }

__device__ float block_max(float v, float* shared) { return block_reduce<true>(v, shared); }

// A float's bits turned into an unsigned key with the same order (larger float, larger key).
__device__ __forceinline__ unsigned order_key(float x) {
    unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ float key_value(unsigned k) {
    unsigned u = (k & 0x80000000u) ? (k & 0x7fffffffu) : ~k;
    return __uint_as_float(u);
}
