// The fused ops of `shared/src/model/fused.rs` on a CUDA GPU, one kernel per op and dtype (f32 and
// bf16; the cross-entropy in f32, which is what `ops::nll` gives it). Each is the CUDA twin of a
// CPU kernel there, with the same formula, so the backward passes built from them are the ones
// `shared/tests/fused.rs` checks on the CPU; `trainer/tests/cuda_kernels.rs` compares each kernel
// with its twin on a GPU. Compiled to PTX by `trainer/build.rs` (feature `cuda`) and loaded by
// `trainer/src/cuda_kernels.rs`. Inputs are contiguous (the ops make them so); sums are in f32.
//
// Row-wise kernels (softmax, RMS norm, cross-entropy and their gradients) run one block per row,
// with a block-wide reduction; element-wise ones (rotary, SwiGLU, ReLU's gradient, dropout's
// multipliers) a grid-stride loop.
#include <cuda_bf16.h>
#include <stdint.h>

__device__ __forceinline__ float ld(float v) { return v; }
__device__ __forceinline__ float ld(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T st(float v);
template <> __device__ __forceinline__ float st<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 st<__nv_bfloat16>(float v) { return __float2bfloat16(v); }

// Sum (or max) of `v` over the block; every thread gets the result. `shm` holds 32 floats; the
// trailing barrier lets the caller reduce again with the same `shm`.
__device__ float block_sum(float v, float *shm) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shm[threadIdx.x] : 0.f;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if (lane == 0) shm[0] = v;
  }
  __syncthreads();
  v = shm[0];
  __syncthreads();
  return v;
}

__device__ float block_max(float v, float *shm) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
  if (lane == 0) shm[warp] = v;
  __syncthreads();
  v = threadIdx.x < warps ? shm[threadIdx.x] : -INFINITY;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, o));
    if (lane == 0) shm[0] = v;
  }
  __syncthreads();
  v = shm[0];
  __syncthreads();
  return v;
}

// y = softmax(x · scale + bias) over rows of n. x is [B, H, T, n] as `rows` rows; the bias row of
// input row i is that of (i / (H·T), (i / T) % H, i % T) in a bias of [bb, bh, bt, n] whose first
// three sizes are each 1 or the input's (`bias` null: none).
template <typename T>
__device__ void softmax(const T *x, const T *bias, T *y, int n, float scale, int heads, int t, int bb, int bh, int bt) {
  __shared__ float shm[32];
  const long row = blockIdx.x;
  const T *xr = x + row * n;
  T *yr = y + row * n;
  const T *br = nullptr;
  if (bias) {
    const int bi = bb == 1 ? 0 : (int)(row / ((long)heads * t));
    const int hi = bh == 1 ? 0 : (int)((row / t) % heads);
    const int ti = bt == 1 ? 0 : (int)(row % t);
    br = bias + (((long)bi * bh + hi) * bt + ti) * n;
  }
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, ld(xr[j]) * scale + (br ? ld(br[j]) : 0.f));
  m = block_max(m, shm);
  float s = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(ld(xr[j]) * scale + (br ? ld(br[j]) : 0.f) - m);
  const float inv = 1.f / block_sum(s, shm);
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    yr[j] = st<T>(expf(ld(xr[j]) * scale + (br ? ld(br[j]) : 0.f) - m) * inv);
}

// dx = scale · y ⊙ (g − Σ g ⊙ y), rows of n.
template <typename T> __device__ void softmax_grad(const T *g, const T *y, T *dx, int n, float scale) {
  __shared__ float shm[32];
  const long off = (long)blockIdx.x * n;
  float d = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) d += ld(g[off + j]) * ld(y[off + j]);
  d = block_sum(d, shm);
  for (int j = threadIdx.x; j < n; j += blockDim.x) dx[off + j] = st<T>(scale * ld(y[off + j]) * (ld(g[off + j]) - d));
}

// y = x · rsqrt(mean(x²) + eps) · w, rows of n.
template <typename T> __device__ void rms_norm(const T *x, const T *w, T *y, int n, float eps) {
  __shared__ float shm[32];
  const long off = (long)blockIdx.x * n;
  float s = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = ld(x[off + j]);
    s += v * v;
  }
  const float r = rsqrtf(block_sum(s, shm) / n + eps);
  for (int j = threadIdx.x; j < n; j += blockDim.x) y[off + j] = st<T>(ld(x[off + j]) * r * ld(w[j]));
}

// dx = r · (g ⊙ w) − x · r³ · Σ(g ⊙ w ⊙ x) / n, with r = rsqrt(mean(x²) + eps).
template <typename T> __device__ void rms_norm_grad(const T *g, const T *x, const T *w, T *dx, int n, float eps) {
  __shared__ float shm[32];
  const long off = (long)blockIdx.x * n;
  float s = 0.f, d = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    const float v = ld(x[off + j]);
    s += v * v;
    d += ld(g[off + j]) * ld(w[j]) * v;
  }
  const float r = rsqrtf(block_sum(s, shm) / n + eps);
  const float c = r * r * r * block_sum(d, shm) / n;
  for (int j = threadIdx.x; j < n; j += blockDim.x)
    dx[off + j] = st<T>(r * ld(g[off + j]) * ld(w[j]) - ld(x[off + j]) * c);
}

// Rotary embedding, "rotate half" layout, of x [B, H, T, D] with tables [table_batch, 1, T, D];
// `transposed` is the backward pass (dx = g·cos + rotate_halfᵀ(g·sin)). One thread per (row, j < D/2).
template <typename T>
__device__ void rope(const T *x, const T *cos, const T *sin, T *y, long pairs, int heads, int t, int d, int table_batch, int transposed) {
  const int half = d / 2;
  for (long p = (long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += (long)gridDim.x * blockDim.x) {
    const long row = p / half;
    const int j = (int)(p % half);
    const long b = table_batch == 1 ? 0 : row / ((long)heads * t);
    const long off = (b * t + row % t) * d;
    const float x1 = ld(x[row * d + j]), x2 = ld(x[row * d + j + half]);
    const float c1 = ld(cos[off + j]), c2 = ld(cos[off + j + half]);
    const float s1 = ld(sin[off + j]), s2 = ld(sin[off + j + half]);
    if (transposed) {
      y[row * d + j] = st<T>(x1 * c1 + x2 * s2);
      y[row * d + j + half] = st<T>(x2 * c2 - x1 * s1);
    } else {
      y[row * d + j] = st<T>(x1 * c1 - x2 * s1);
      y[row * d + j + half] = st<T>(x2 * c2 + x1 * s2);
    }
  }
}

__device__ __forceinline__ float sigmoid(float v) { return 1.f / (1.f + expf(-v)); }

// y = silu(a) ⊙ b.
template <typename T> __device__ void swiglu(const T *a, const T *b, T *y, long len) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x) {
    const float av = ld(a[i]);
    y[i] = st<T>(av * sigmoid(av) * ld(b[i]));
  }
}

// out = [da; db]: da = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a))), db = g ⊙ a ⊙ σ(a).
template <typename T> __device__ void swiglu_grad(const T *g, const T *a, const T *b, T *out, long len) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x) {
    const float gv = ld(g[i]), av = ld(a[i]), s = sigmoid(av);
    out[len + i] = st<T>(gv * av * s);
    out[i] = st<T>(gv * ld(b[i]) * s * (1.f + av * (1.f - s)));
  }
}

// The gradient through h = dropout(relu(a)) given h: g · keep where h > 0, else 0.
template <typename T> __device__ void relu_grad(const T *g, const T *h, T *out, long len, float keep) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += (long)gridDim.x * blockDim.x)
    out[i] = st<T>(ld(h[i]) > 0.f ? ld(g[i]) * keep : 0.f);
}

// Inverted dropout's multipliers from a SplitMix64 generator at `state`: element i is 0 where draw i
// (the counter state + (i + 1)·γ through SplitMix64's mix, as `SplitMix64::draw_at`) as a uniform
// in [0, 1) with 53 bits is below p, else `scale` (1/(1 − p), computed by the host as the CPU
// does). The comparison is in doubles, exact as on the CPU, so the masks are the CPU's.
template <typename T> __device__ void dropout_mask(T *out, unsigned long long state, float p, float scale, long n) {
  for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    unsigned long long z = state + 0x9e3779b97f4a7c15ULL * (unsigned long long)(i + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    z ^= z >> 31;
    const double u = (double)(z >> 11) * (1.0 / 9007199254740992.0);
    out[i] = st<T>(u < (double)p ? 0.f : scale);
  }
}

// log Σ exp over a row of n f32, computed by the whole block.
__device__ float row_logsumexp(const float *x, int n, float *shm) {
  float m = -INFINITY;
  for (int j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, x[j]);
  m = block_max(m, shm);
  float s = 0.f;
  for (int j = threadIdx.x; j < n; j += blockDim.x) s += expf(x[j] - m);
  return m + logf(block_sum(s, shm));
}

// nll_i = logsumexp(x_i) − x_i[t_i], rows of v logits (f32).
extern "C" __global__ void nll_f32(const float *x, const uint32_t *t, float *out, int v) {
  __shared__ float shm[32];
  const float *xr = x + (long)blockIdx.x * v;
  const float lse = row_logsumexp(xr, v, shm);
  const uint32_t ti = t[blockIdx.x];
  // A target out of range gives NaN (the CPU twin refuses it; here that would need a host read).
  if (threadIdx.x == 0) out[blockIdx.x] = ti < (uint32_t)v ? lse - xr[ti] : NAN;
}

// dx_i = g_i · (softmax(x_i) − onehot(t_i)).
extern "C" __global__ void nll_grad_f32(const float *g, const float *x, const uint32_t *t, float *dx, int v) {
  __shared__ float shm[32];
  const long off = (long)blockIdx.x * v;
  const float lse = row_logsumexp(x + off, v, shm);
  const uint32_t ti = t[blockIdx.x];
  const float gi = ti < (uint32_t)v ? g[blockIdx.x] : NAN;
  for (int j = threadIdx.x; j < v; j += blockDim.x) dx[off + j] = gi * (expf(x[off + j] - lse) - (j == (int)ti ? 1.f : 0.f));
}

// One entry point per op and dtype, named OP_f32 / OP_bf16 (what `cuda_kernels.rs` loads).
#define ENTRY(T, SUF)                                                                                          \
  extern "C" __global__ void softmax_##SUF(const T *x, const T *bias, T *y, int n, float scale, int heads,    \
                                           int t, int bb, int bh, int bt) {                                    \
    softmax<T>(x, bias, y, n, scale, heads, t, bb, bh, bt);                                                    \
  }                                                                                                            \
  extern "C" __global__ void softmax_grad_##SUF(const T *g, const T *y, T *dx, int n, float scale) {           \
    softmax_grad<T>(g, y, dx, n, scale);                                                                       \
  }                                                                                                            \
  extern "C" __global__ void rms_norm_##SUF(const T *x, const T *w, T *y, int n, float eps) {                  \
    rms_norm<T>(x, w, y, n, eps);                                                                              \
  }                                                                                                            \
  extern "C" __global__ void rms_norm_grad_##SUF(const T *g, const T *x, const T *w, T *dx, int n, float eps) { \
    rms_norm_grad<T>(g, x, w, dx, n, eps);                                                                     \
  }                                                                                                            \
  extern "C" __global__ void rope_##SUF(const T *x, const T *cos, const T *sin, T *y, long pairs, int heads,   \
                                        int t, int d, int table_batch, int transposed) {                       \
    rope<T>(x, cos, sin, y, pairs, heads, t, d, table_batch, transposed);                                      \
  }                                                                                                            \
  extern "C" __global__ void swiglu_##SUF(const T *a, const T *b, T *y, long len) { swiglu<T>(a, b, y, len); } \
  extern "C" __global__ void swiglu_grad_##SUF(const T *g, const T *a, const T *b, T *out, long len) {         \
    swiglu_grad<T>(g, a, b, out, len);                                                                         \
  }                                                                                                            \
  extern "C" __global__ void relu_grad_##SUF(const T *g, const T *h, T *out, long len, float keep) {           \
    relu_grad<T>(g, h, out, len, keep);                                                                        \
  }                                                                                                            \
  extern "C" __global__ void dropout_mask_##SUF(T *out, unsigned long long state, float p, float scale,        \
                                                long n) {                                                      \
    dropout_mask<T>(out, state, p, scale, n);                                                                  \
  }

ENTRY(float, f32)
ENTRY(__nv_bfloat16, bf16)
