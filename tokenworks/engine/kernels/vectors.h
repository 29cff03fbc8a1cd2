// The inner loops' arithmetic, shared by every kernel file: the dot product, 16-float vectors,
// exp of non-positive floats and axpy. All inline here, so each kernel's loops inline them as
// when the kernels were one file.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

namespace tokenworks {

// Sum of a[i] * b[i]. Compilers vectorize the products but not the final sum across the
// vector's lanes (they spill it to memory and add one float at a time, which costs more than
// the products for a 64-wide head), so on x86 the lanes are added in registers with
// intrinsics; elsewhere a portable loop of 16 lanes.
#if defined(__AVX512F__)
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  if (i + 16 <= n) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    i += 16;
  }
  float sum = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#elif defined(__AVX2__) && defined(__FMA__)
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  const __m256 both = _mm256_add_ps(acc0, acc1);
  __m128 half = _mm_add_ps(_mm256_castps256_ps128(both), _mm256_extractf128_ps(both, 1));
  half = _mm_add_ps(half, _mm_movehl_ps(half, half));
  half = _mm_add_ss(half, _mm_movehdup_ps(half));
  float sum = _mm_cvtss_f32(half);
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#else
inline float dot(const float* __restrict a, const float* __restrict b, int64_t n) {
  constexpr int64_t kLanes = 16;
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int64_t j = 0; j < kLanes; ++j) acc[j] += a[i + j] * b[i + j];
  }
  for (int64_t half = kLanes / 2; half > 0; half /= 2) {
    for (int64_t j = 0; j < half; ++j) acc[j] += acc[j + half];
  }
  float sum = acc[0];
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}
#endif

// One register of floats (and int32s), with GCC's and Clang's vector extensions: 16 lanes on
// AVX-512, 8 on AVX and AVX2, 4 elsewhere (SSE, NEON). Loops written on these vectorize on every
// CPU, where the compiler leaves plain loops with selects, maxima or bit casts in them scalar.
// The width follows the target's registers because a vector type wider than they are is lowered
// through memory: with 16-float vectors on an AVX2 Zen 3, prefill attention ran at 3 GFLOP/s,
// its accumulators on the stack, where the same core's matrix products reach 95.
// kVecRegisters: how many such vectors the registers hold, for tiles that keep their
// accumulators in registers.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
constexpr int kVecRegisters = 32;
#elif defined(__AVX__)
constexpr int64_t kLanes = 8;
constexpr int kVecRegisters = 16;
#else
constexpr int64_t kLanes = 4;
constexpr int kVecRegisters = 16;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t IntVec __attribute__((vector_size(kLanes * sizeof(int32_t))));
constexpr float kInfinity = std::numeric_limits<float>::infinity();
inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof v); }
inline Vec maximum(const Vec& a, const Vec& b) { return a > b ? a : b; }

// exp(x) for x <= 0 (std::exp is a scalar call): exp(x) = 2^n * 2^f with n = round(x log2 e)
// and |f| <= 1/2, 2^f by its Taylor series to the 7th power (relative error below 1e-8, under
// float32's rounding), 2^n added to the exponent bits. Below 2^-126 (a masked key's -inf
// included) the result is 0: nothing beside a softmax's largest term, which is 1.
inline Vec exp_nonpositive(const Vec& x) {
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  constexpr float c2 = kLn2 * kLn2 / 2, c3 = c2 * kLn2 / 3, c4 = c3 * kLn2 / 4, c5 = c4 * kLn2 / 5,
                  c6 = c5 * kLn2 / 6, c7 = c6 * kLn2 / 7;
  const Vec unclamped = x * kLog2e;
  const Vec y = maximum(unclamped, Vec{} - 126.0f);
  const IntVec whole = __builtin_convertvector(y - 0.5f, IntVec);  // y <= 0: truncation rounds to nearest
  const Vec f = y - __builtin_convertvector(whole, Vec);
  const Vec p = 1.0f + f * (kLn2 + f * (c2 + f * (c3 + f * (c4 + f * (c5 + f * (c6 + f * c7))))));
  const IntVec bits = (IntVec)p + whole * (1 << 23);  // a cast between vector types keeps the bits
  return (Vec)(unclamped < -126.0f ? IntVec{} : bits);
}

// x[i] = exp(x[i]) for x[i] <= 0.
inline void exp_nonpositive(float* x, int64_t n) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(x + i, exp_nonpositive(load(x + i)));
  if (i < n) {
    float tail[kLanes] = {};
    std::memcpy(tail, x + i, (n - i) * sizeof(float));
    store(tail, exp_nonpositive(load(tail)));
    std::memcpy(x + i, tail, (n - i) * sizeof(float));
  }
}

// out[i] += scale * v[i]
inline void axpy(float* __restrict out, const float* __restrict v, float scale, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] += scale * v[i];
}

}  // namespace tokenworks
