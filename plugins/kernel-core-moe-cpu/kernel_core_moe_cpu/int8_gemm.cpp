// Weight-only int8 GEMM for the CPU: out = x @ (w * scale[:, None]).T, the int8 weights converted in
// registers inside the micro-kernel, so that they are read as int8 (a quarter of float32's bytes, half
// of bfloat16's: faster where the GEMM is bound by memory, at a few rows) and multiplied at the FMA
// rate of the activations' dtype where it is bound by compute. Plain C++ (no torch headers, so it
// builds in about a second), called through ctypes with data pointers: AVX-512 intrinsics where the
// CPU has AVX-512 F/BW/VL (and AVX512-BF16's dot products for bfloat16 activations), else plain loops
// the compiler vectorizes for what it has (correct everywhere; the CPU platform selects this kernel
// only where the AVX-512 one was measured).
//
// Layout: the weights [N, K] are packed once (kc_int8_pack) into panels of NR output channels holding
// each channel's weights for k and k + 1 side by side ([N / NR][K / 2][NR][2], zero-padded), the
// pairs AVX512-BF16's dot product multiplies; the float32 micro-kernel splits them back into k and
// k + 1 with a shuffle. The activations are copied per block of rows (float32, or bfloat16 pairs for
// the dot product), each tile's rows interleaved per k, which also keeps rows whose stride is a power
// of two from evicting each other in the L1 cache. Accumulation is float32 whatever the activations'
// dtype; outputs are rounded to that dtype at the end (bfloat16 and float16 to nearest even).
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define KC_AVX512 1
#if defined(__AVX512BF16__)
#define KC_AVX512_BF16 1
#endif
#endif

namespace {

constexpr int64_t NR = 32;  // output channels per panel: two vectors of 16
constexpr int64_t MR = 14;  // rows per tile: 28 accumulators, two weight vectors and a broadcast
constexpr int64_t ACTIVATION_BLOCK_BYTES = 512 * 1024;  // activations kept in L2 per block of rows

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline float to_float(float v) { return v; }
inline float to_float(BF16 v) {
  const uint32_t bits = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline float to_float(F16 v) {
  _Float16 half;
  std::memcpy(&half, &v.bits, sizeof half);
  return static_cast<float>(half);
}

inline void store(float* out, float v) { *out = v; }
inline void store(BF16* out, float v) {  // round to nearest even, as torch's .to(bfloat16)
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    out->bits = static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    return;
  }
  out->bits = static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}
inline void store(F16* out, float v) {  // round to nearest even
  const _Float16 half = static_cast<_Float16>(v);
  std::memcpy(&out->bits, &half, sizeof half);
}

// Offset of channel j's pair (k2) in a panel.
inline int64_t pair_at(int64_t k2, int64_t j) { return (k2 * NR + j) * 2; }

#if KC_AVX512
inline __mmask16 first(int64_t count) { return static_cast<__mmask16>((1u << count) - 1); }

inline void store(float* out, __m512 v, int64_t count) {
  if (count == 16) _mm512_storeu_ps(out, v);
  else _mm512_mask_storeu_ps(out, first(count), v);
}
inline void store(BF16* out, __m512 v, int64_t count) {
  // Round to nearest even as torch's .to(bfloat16); a NaN stays a quiet NaN.
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i high = _mm512_srli_epi32(bits, 16);
  const __m512i lsb = _mm512_and_si512(high, _mm512_set1_epi32(1));
  __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(high, _mm512_set1_epi32(0x40)));
  _mm256_mask_storeu_epi16(out, first(count), _mm512_cvtepi32_epi16(rounded));
}
inline void store(F16* out, __m512 v, int64_t count) {
  _mm256_mask_storeu_epi16(out, first(count), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

inline __m512 to_floats(__m128i bytes) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(bytes)); }

// 16 channels' pairs at p: their weights at k (even) and at k + 1 (odd) as float32.
inline void split_pairs(const int8_t* p, __m512& even, __m512& odd) {
  // Per 128-bit lane (8 channels): evens to the low 8 bytes, odds to the high 8; then the lanes'
  // quarters reordered so that the low half holds all 16 evens and the high half all 16 odds.
  const __m256i order = _mm256_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15,
                                         0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  const __m256i bytes = _mm256_permute4x64_epi64(
      _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), order), 0xd8);
  even = to_floats(_mm256_castsi256_si128(bytes));
  odd = to_floats(_mm256_extracti128_si256(bytes, 1));
}

template <int R, typename T>
inline void finish(__m512 (&acc)[R][2], const float* scale, T* out, int64_t ldo, int64_t ncols) {
  const __m512 s0 = _mm512_loadu_ps(scale), s1 = _mm512_loadu_ps(scale + 16);
  const int64_t low = std::min<int64_t>(16, ncols), high = ncols - low;
  for (int r = 0; r < R; ++r) {
    store(out + r * ldo, _mm512_mul_ps(acc[r][0], s0), low);
    if (high > 0) store(out + r * ldo + 16, _mm512_mul_ps(acc[r][1], s1), high);
  }
}

// R rows (float32, interleaved per k: x[k * R + r], K2 pairs of k) by one panel.
template <int R, typename T>
void tile(const float* x, const int8_t* panel, int64_t K2, const float* scale, T* out, int64_t ldo, int64_t ncols) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    __m512 even0, odd0, even1, odd1;
    split_pairs(panel + pair_at(k2, 0), even0, odd0);
    split_pairs(panel + pair_at(k2, 16), even1, odd1);
    const float* xk = x + 2 * k2 * R;
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xk[r]);
      acc[r][0] = _mm512_fmadd_ps(a, even0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, even1, acc[r][1]);
    }
    for (int r = 0; r < R; ++r) {
      const __m512 a = _mm512_set1_ps(xk[R + r]);
      acc[r][0] = _mm512_fmadd_ps(a, odd0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(a, odd1, acc[r][1]);
    }
  }
  finish(acc, scale, out, ldo, ncols);
}
#else
// R rows (float32, interleaved per k: x[k * R + r], K2 pairs of k) by one panel, in plain loops.
template <int R, typename T>
void tile(const float* x, const int8_t* panel, int64_t K2, const float* scale, T* out, int64_t ldo, int64_t ncols) {
  float acc[R][NR] = {};
  for (int64_t k = 0; k < 2 * K2; ++k) {
    const int8_t* w = panel + pair_at(k / 2, 0) + k % 2;
    for (int r = 0; r < R; ++r) {
      const float a = x[k * R + r];
      for (int64_t j = 0; j < NR; ++j) acc[r][j] += a * static_cast<float>(w[2 * j]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int64_t j = 0; j < ncols; ++j) store(out + r * ldo + j, acc[r][j] * scale[j]);
}
#endif

#if KC_AVX512_BF16
// 16 channels' pairs at p as bfloat16 pairs (exact: every int8 is a bfloat16).
inline __m512bh bf16_pairs(const int8_t* p) {
  const __m512 low = to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m512 high = to_floats(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
  return _mm512_cvtne2ps_pbh(high, low);
}

// R rows of bfloat16 pairs (x[k2 * R + r] holds k and k + 1) by one panel, by AVX512-BF16 dot products.
template <int R, typename T>
void tile_bf16(const uint32_t* x, const int8_t* panel, int64_t K2, const float* scale, T* out, int64_t ldo, int64_t ncols) {
  __m512 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t k2 = 0; k2 < K2; ++k2) {
    const __m512bh w0 = bf16_pairs(panel + pair_at(k2, 0)), w1 = bf16_pairs(panel + pair_at(k2, 16));
    for (int r = 0; r < R; ++r) {
      const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(x[k2 * R + r])));
      acc[r][0] = _mm512_dpbf16_ps(acc[r][0], w0, a);
      acc[r][1] = _mm512_dpbf16_ps(acc[r][1], w1, a);
    }
  }
  finish(acc, scale, out, ldo, ncols);
}
#endif

template <typename X, typename T>
using Tile = void (*)(const X*, const int8_t*, int64_t, const float*, T*, int64_t, int64_t);

template <typename X, typename T, template <int, typename> class Kernel, int... R>
constexpr std::array<Tile<X, T>, sizeof...(R) + 1> tiles(std::integer_sequence<int, 0, R...>) {
  return {nullptr, Kernel<R, T>::run...};
}

template <int R, typename T>
struct FloatTile { static constexpr Tile<float, T> run = tile<R, T>; };
#if KC_AVX512_BF16
template <int R, typename T>
struct BF16Tile { static constexpr Tile<uint32_t, T> run = tile_bf16<R, T>; };
#endif

// How the activations are copied for a tile: float32 per k, or (Pairs) bfloat16 pairs per k2.
template <typename X>
struct Copy;
template <>
struct Copy<float> {
  static constexpr int64_t per_pair = 2;  // X values per pair of k
  template <typename T>
  static void rows(const T* x, int64_t ldx, int64_t rows, int64_t K, float* dst) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k = 0; k < K + K % 2; ++k) dst[k * rows + r] = k < K ? to_float(x[r * ldx + k]) : 0.0f;
  }
};
template <>
struct Copy<uint32_t> {
  static constexpr int64_t per_pair = 1;
  static void rows(const BF16* x, int64_t ldx, int64_t rows, int64_t K, uint32_t* dst) {
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t k2 = 0; k2 < (K + 1) / 2; ++k2) {
        const uint32_t even = x[r * ldx + 2 * k2].bits, odd = 2 * k2 + 1 < K ? x[r * ldx + 2 * k2 + 1].bits : 0;
        dst[k2 * rows + r] = even | (odd << 16);
      }
  }
};

template <typename X, typename T>
void gemm(const std::array<Tile<X, T>, MR + 1>& kernels, const T* x, int64_t M, int64_t K, int64_t ldx,
          const int8_t* packed, int64_t N, const float* scale, T* out, int64_t ldo, int threads) {
  const int64_t panels = (N + NR - 1) / NR, K2 = (K + 1) / 2, width = K2 * Copy<X>::per_pair;
  const int64_t block = std::clamp<int64_t>(ACTIVATION_BLOCK_BYTES / int64_t(sizeof(X)) / width / MR * MR, MR, 256);
  std::vector<X> copied(std::min(block, M) * width);
  for (int64_t m0 = 0; m0 < M; m0 += block) {
    const int64_t mc = std::min(block, M - m0);
    // Tiles of at most MR rows, as even as they go (16 rows: two of 8, not 14 and 2).
    const int64_t count = (mc + MR - 1) / MR, base = mc / count, extra = mc % count;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t t = 0; t < count; ++t) {
      const int64_t start = t * base + std::min(t, extra), rows = base + (t < extra);
      Copy<X>::rows(x + (m0 + start) * ldx, ldx, rows, K, copied.data() + start * width);
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t p = 0; p < panels; ++p) {
      const int64_t n0 = p * NR, ncols = std::min(NR, N - n0);
      alignas(64) float panel_scale[NR] = {};
      std::memcpy(panel_scale, scale + n0, ncols * sizeof(float));
      for (int64_t t = 0; t < count; ++t) {
        const int64_t start = t * base + std::min(t, extra), rows = base + (t < extra);
        kernels[rows](copied.data() + start * width, packed + p * K2 * NR * 2, K2, panel_scale,
                      out + (m0 + start) * ldo + n0, ldo, ncols);
      }
    }
  }
}

template <typename T>
void gemm_float(const T* x, int64_t M, int64_t K, int64_t ldx, const int8_t* packed, int64_t N, const float* scale,
                T* out, int64_t ldo, int threads) {
  static constexpr auto kernels = tiles<float, T, FloatTile>(std::make_integer_sequence<int, MR + 1>{});
  gemm<float, T>(kernels, x, M, K, ldx, packed, N, scale, out, ldo, threads);
}

}  // namespace

extern "C" {

// Bytes kc_int8_pack writes for N x K weights.
int64_t kc_int8_packed_bytes(int64_t N, int64_t K) { return (N + NR - 1) / NR * NR * ((K + 1) / 2) * 2; }

// w [N, K] int8 (row stride ldw) into panels of pairs.
void kc_int8_pack(const int8_t* w, int64_t N, int64_t K, int64_t ldw, int8_t* packed, int threads) {
  const int64_t panels = (N + NR - 1) / NR, K2 = (K + 1) / 2;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t p = 0; p < panels; ++p)
    for (int64_t k2 = 0; k2 < K2; ++k2)
      for (int64_t j = 0; j < NR; ++j)
        for (int64_t h = 0; h < 2; ++h) {
          const int64_t n = p * NR + j, k = 2 * k2 + h;
          packed[p * K2 * NR * 2 + pair_at(k2, j) + h] = n < N && k < K ? w[n * ldw + k] : 0;
        }
}

void kc_int8_gemm_f32(const float* x, int64_t M, int64_t K, int64_t ldx, const int8_t* packed, int64_t N,
                      const float* scale, float* out, int64_t ldo, int threads) {
  gemm_float(x, M, K, ldx, packed, N, scale, out, ldo, threads);
}

void kc_int8_gemm_bf16(const uint16_t* x, int64_t M, int64_t K, int64_t ldx, const int8_t* packed, int64_t N,
                       const float* scale, uint16_t* out, int64_t ldo, int threads) {
  const auto* in = reinterpret_cast<const BF16*>(x);
  auto* result = reinterpret_cast<BF16*>(out);
#if KC_AVX512_BF16
  static constexpr auto kernels = tiles<uint32_t, BF16, BF16Tile>(std::make_integer_sequence<int, MR + 1>{});
  gemm<uint32_t, BF16>(kernels, in, M, K, ldx, packed, N, scale, result, ldo, threads);
#else
  gemm_float(in, M, K, ldx, packed, N, scale, result, ldo, threads);
#endif
}

void kc_int8_gemm_f16(const uint16_t* x, int64_t M, int64_t K, int64_t ldx, const int8_t* packed, int64_t N,
                      const float* scale, uint16_t* out, int64_t ldo, int threads) {
  gemm_float(reinterpret_cast<const F16*>(x), M, K, ldx, packed, N, scale, reinterpret_cast<F16*>(out), ldo, threads);
}

}  // extern "C"
