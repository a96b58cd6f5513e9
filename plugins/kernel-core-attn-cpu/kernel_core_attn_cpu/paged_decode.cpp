// Decode attention over the paged KV cache, read in place: each request walks its block table
// and keeps an online softmax per query head over the positions it sees, so no key or value is
// gathered into a copy. Plain C++ (no torch headers) so that it builds in about a second; called
// through ctypes with the tensors' data pointers. Accumulates in float32 for float32 and bfloat16;
// in bfloat16 it rounds as torch's CPU flash attention (scaled_dot_product_attention, which HF
// transformers calls) does, so that greedy tokens agree with HF's: scores and the softmax sums in
// float32 over spans of 512 positions, each probability rounded to bfloat16 before it weights V.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t MAX_HEADS = 64;  // query heads
constexpr int64_t MAX_HEAD = 256;  // head size
constexpr int64_t LANES = 32;      // softmax denominators kept per lane, summed at the end

// Positions scored before their values are summed, and whether the probabilities are rounded to T.
// float32: up to 32, within one cache block. bfloat16: up to 512 (torch's CPU flash attention's
// kv_split_size), across blocks, so that the maximum each probability is taken against, and so its
// rounding, is the one torch's kernel uses.
template <typename T>
struct Span;
template <>
struct Span<float> {
  static constexpr int64_t size = 32;
  static constexpr bool within_block = true;
};
template <>
struct Span<uint16_t> {
  static constexpr int64_t size = 512;
  static constexpr bool within_block = false;
};

inline float load(const float* p) { return *p; }

inline float load(const uint16_t* p) {
  const uint32_t bits = static_cast<uint32_t>(*p) << 16;
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

inline void store(float* p, float value) { *p = value; }

inline void store(uint16_t* p, float value) {  // round to nearest even, as torch's .to(bfloat16)
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    *p = static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN stays a (quiet) NaN
    return;
  }
  bits += 0x7fffu + ((bits >> 16) & 1u);
  *p = static_cast<uint16_t>(bits >> 16);
}

// ``value`` as T would hold it: float32 unchanged, bfloat16 rounded to nearest even (finite, non-NaN
// inputs: probabilities in [0, 1]).
inline float rounded(float value, const float*) { return value; }

inline float rounded(float value, const uint16_t*) {
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

#if defined(__AVX512F__)
inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const uint16_t* p) {
  const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
}
#endif

// exp(x) for x <= 0 (a score minus the running maximum) as 2^i * 2^f, 2^f by a degree-6
// polynomial (relative error about 2e-7, float32's rounding): unlike libm's expf, the compiler
// vectorizes it, and the exponentials were most of the kernel's arithmetic.
inline float exp_nonpositive(float x) {
  const float t = std::max(x, -87.0f) * 1.44269504088896341f;
  const float whole = std::floor(t), f = t - whole;
  float p = 1.535336188319500e-4f;
  p = p * f + 1.339887440266574e-3f;
  p = p * f + 9.618437357674640e-3f;
  p = p * f + 5.550332471162809e-2f;
  p = p * f + 2.402264791363012e-1f;
  p = p * f + 6.931472028550421e-1f;
  p = p * f + 1.0f;
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(whole) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// q . k over D elements. Written out for AVX-512, because a compiler's vectorized reduction
// ends each dot product in a serial scalar sum, which made the scores most of the kernel's time.
template <typename T>
inline float dot(const float* q, const T* k, int64_t D) {
#if defined(__AVX512F__)
  if (D % 16 == 0) {
    __m512 sum = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16) sum = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(k + d), sum);
    return _mm512_reduce_add_ps(sum);
  }
#endif
  float sum = 0.0f;
  for (int64_t d = 0; d < D; ++d) sum += q[d] * load(k + d);
  return sum;
}

// Ask for ``n`` elements from ``p`` on: blocks are scattered over the cache, so the hardware
// prefetcher loses the stream at every block boundary.
template <typename T>
inline void prefetch(const T* p, int64_t n) {
  const char* bytes = reinterpret_cast<const char*>(p);
  for (int64_t offset = 0; offset < n * static_cast<int64_t>(sizeof(T)); offset += 64) __builtin_prefetch(bytes + offset);
}

struct Layout {
  int64_t q_token_stride, q_head_stride, out_token_stride, out_head_stride;
  int64_t num_heads, num_kv_heads, head_size, block_size, table_stride;
  int64_t window;  // 0: none
  float scale;
};

// One decode request, all its heads: a position's keys (and then values) of every KV head are one
// contiguous row of the cache, read once, in block order.
template <typename T>
void attend(const T* query, const T* keys, const T* values, const int32_t* block_tables, const int32_t* seq_lens,
            int64_t request, int64_t row, const Layout& L, T* out) {
  const int64_t H = L.num_heads, group = L.num_heads / L.num_kv_heads, D = L.head_size;
  const int64_t stride = L.num_kv_heads * D;  // one position's row of keys (or values)
  const int64_t length = seq_lens[request];
  const int64_t first = L.window > 0 ? std::max<int64_t>(0, length - L.window) : 0;
  const int32_t* table = block_tables + request * L.table_stride;
  alignas(64) float q[MAX_HEADS][MAX_HEAD];
  alignas(64) float acc[MAX_HEADS][MAX_HEAD];
  constexpr int64_t SPAN = Span<T>::size;
  alignas(64) float weight[MAX_HEADS][SPAN];
  // Softmax denominators kept per lane and summed at the end: no serial sum per span.
  alignas(64) float total[MAX_HEADS][LANES];
  float best[MAX_HEADS];
  for (int64_t head = 0; head < H; ++head) {
    const T* src = query + row * L.q_token_stride + head * L.q_head_stride;
    for (int64_t d = 0; d < D; ++d) q[head][d] = load(src + d) * L.scale;
    std::fill(acc[head], acc[head] + D, 0.0f);
    best[head] = -std::numeric_limits<float>::infinity();
    std::fill(total[head], total[head] + LANES, 0.0f);
  }
  // Where the span from ``from`` ends, and the run of positions from ``p`` on, up to ``end``, that
  // one cache block holds.
  const auto span_end = [&](int64_t from) {
    const int64_t end = std::min(length, from + SPAN);
    return Span<T>::within_block ? std::min(end, (from / L.block_size + 1) * L.block_size) : end;
  };
  const auto run = [&](int64_t p, int64_t end) { return std::min(L.block_size - p % L.block_size, end - p); };
  const auto slot_of = [&](int64_t p) { return static_cast<int64_t>(table[p / L.block_size]) * L.block_size + p % L.block_size; };
  for (int64_t start = first; start < length;) {
    const int64_t end = span_end(start), count = end - start;
    for (int64_t p = start; p < end;) {
      const int64_t n = run(p, end), base = p - start;
      const T* k_rows = keys + slot_of(p) * stride;
      // The next run's rows come from a block anywhere in the cache: ask for them a position at a
      // time while this run is scored, so that the loads overlap the arithmetic.
      const int64_t next = p + n;
      const int64_t next_n = next < length ? run(next, next < end ? end : span_end(next)) : 0;
      const int64_t next_slot = next_n ? slot_of(next) : 0;
      for (int64_t j = 0; j < n; ++j) {
        if (j < next_n) {
          prefetch(keys + (next_slot + j) * stride, stride);
          prefetch(values + (next_slot + j) * stride, stride);
        }
        for (int64_t head = 0; head < H; ++head) {
          weight[head][base + j] = dot(q[head], k_rows + j * stride + (head / group) * D, D);
        }
      }
      p += n;
    }
    for (int64_t head = 0; head < H; ++head) {
      float top = best[head];
      for (int64_t j = 0; j < count; ++j) top = std::max(top, weight[head][j]);
      if (top > best[head]) {  // first span: best is -inf and nothing is summed yet
        const float rescale = best[head] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(best[head] - top);
        for (int64_t j = 0; j < LANES; ++j) total[head][j] *= rescale;
        for (int64_t d = 0; d < D; ++d) acc[head][d] *= rescale;
        best[head] = top;
      }
      for (int64_t lane = 0; lane < count; lane += LANES) {
        const int64_t width = std::min(LANES, count - lane);
        float* w = weight[head] + lane;
#pragma omp simd
        for (int64_t j = 0; j < width; ++j) {
          const float e = exp_nonpositive(w[j] - top);
          total[head][j] += e;  // the sum of the unrounded exponentials, as torch's
          w[j] = rounded(e, keys);
        }
      }
    }
    for (int64_t p = start; p < end;) {
      const int64_t n = run(p, end), base = p - start;
      const T* v_rows = values + slot_of(p) * stride;
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t head = 0; head < H; ++head) {
          const T* v = v_rows + j * stride + (head / group) * D;
          const float w = weight[head][base + j];
#pragma omp simd
          for (int64_t d = 0; d < D; ++d) acc[head][d] += w * load(v + d);
        }
      }
      p += n;
    }
    start = end;
  }
  for (int64_t head = 0; head < H; ++head) {
    T* dst = out + row * L.out_token_stride + head * L.out_head_stride;
    float sum = 0.0f;
    for (int64_t j = 0; j < LANES; ++j) sum += total[head][j];
    const float inverse = 1.0f / sum;
    for (int64_t d = 0; d < D; ++d) store(dst + d, acc[head][d] * inverse);
  }
}

template <typename T>
void decode(const T* query, const T* cache, int64_t num_slots, const int32_t* block_tables, const int32_t* seq_lens,
            const int64_t* requests, const int64_t* rows, int64_t n, const Layout& L, T* out, int threads) {
  const T* keys = cache;  // cache is [2, slots, kv_heads, head]: keys, then values
  const T* values = cache + num_slots * L.num_kv_heads * L.head_size;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && n > 1)
  for (int64_t r = 0; r < n; ++r) {
    attend(query, keys, values, block_tables, seq_lens, requests[r], rows[r], L, out);
  }
}

}  // namespace

extern "C" {

int64_t kc_max_heads() { return MAX_HEADS; }
int64_t kc_max_head() { return MAX_HEAD; }

void kc_decode_f32(const float* query, const float* cache, int64_t num_slots, const int32_t* block_tables,
                   const int32_t* seq_lens, const int64_t* requests, const int64_t* rows, int64_t n,
                   const Layout* layout, float* out, int threads) {
  decode(query, cache, num_slots, block_tables, seq_lens, requests, rows, n, *layout, out, threads);
}

void kc_decode_bf16(const uint16_t* query, const uint16_t* cache, int64_t num_slots, const int32_t* block_tables,
                    const int32_t* seq_lens, const int64_t* requests, const int64_t* rows, int64_t n,
                    const Layout* layout, uint16_t* out, int threads) {
  decode(query, cache, num_slots, block_tables, seq_lens, requests, rows, n, *layout, out, threads);
}

}  // extern "C"
