// Attention over the paged KV cache, read in place. Decode: each request walks its block table
// and keeps an online softmax per query head over the positions it sees, so no key or value is
// gathered into a copy. Prefill (AVX-512, float32): tiles of a chunk's query rows do the same, their
// scores and weighted values as small GEMMs per cache block (see ``prefill_task``). Plain C++ (no torch
// headers) so that it builds in about a second; called through ctypes with the tensors' data
// pointers. Accumulates in float32 for float32 and bfloat16;
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
constexpr int64_t MAX_TASK_CHUNKS = 4096;  // prefill chunks of one step (one per request)

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

#if defined(__AVX512F__)
// The fast path for head sizes of 64 and 128 (NV vectors of 16 floats) on AVX-512: per (request, KV
// head), a chunk of up to GC of the query heads sharing it walks the context with its queries,
// output accumulators and softmax sums in registers. Scores are taken 16 positions (one tile, at
// most a cache block's run) at a time: each key row is loaded once for the chunk's heads, and the
// 16 partial dot products of a head are summed across lanes together (sums16) rather than one by
// one; each value row is loaded once and added into every head's accumulators. Same spans and
// rounding as ``attend``; only the order of each dot product's terms differs.

// v[i]'s 16 lanes summed, for i < 16, as one vector (element i: the sum of v[i]): three
// shuffle-and-add levels halve the lanes each vector keeps, interleaving the vectors' partial sums,
// and a final permutation puts them in order.
inline __m512 sums16(const __m512* v) {
  __m512 halves[8], quarters[4], eighths[2];
  for (int i = 0; i < 8; ++i) {  // 128-bit lanes 0-1: v[2i]'s 8 partial sums, lanes 2-3: v[2i+1]'s
    const __m512 a = v[2 * i], b = v[2 * i + 1];
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x44), _mm512_shuffle_f32x4(a, b, 0xee));
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lane k: 4 partial sums of v[4i + k]
    const __m512 a = halves[2 * i], b = halves[2 * i + 1];
    quarters[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, 0x88), _mm512_shuffle_f32x4(a, b, 0xdd));
  }
  for (int i = 0; i < 2; ++i) {  // lane k: 2 partial sums of v[8i + k], then 2 of v[8i + 4 + k]
    const __m512 a = quarters[2 * i], b = quarters[2 * i + 1];
    eighths[i] = _mm512_add_ps(_mm512_shuffle_ps(a, b, 0x44), _mm512_shuffle_ps(a, b, 0xee));
  }
  // Element 4k + m: the sum of v[4m + k].
  const __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(eighths[0], eighths[1], 0x88),
                                    _mm512_shuffle_ps(eighths[0], eighths[1], 0xdd));
  const __m512i order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return _mm512_permutexvar_ps(order, sums);
}

// exp_nonpositive on 16 lanes.
inline __m512 exp16_nonpositive(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 whole = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, whole);
  __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(whole), _mm512_set1_epi32(127)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(bits));
}

inline __m512 rounded16(__m512 value, const float*) { return value; }

inline __m512 rounded16(__m512 value, const uint16_t*) {  // to bfloat16, nearest even (as ``rounded``)
  const __m512i bits = _mm512_castps_si512(value);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  const __m512i up = _mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7fff)), odd);
  return _mm512_castsi512_ps(_mm512_and_si512(up, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// The positions a decode request's chunk of heads walks: its block table, first visible and context
// length, and the cache's row stride and block size.
struct Context {
  const int32_t* table;
  int64_t first, length, stride, block_size;
};

template <typename T, int NV, int GC>
void attend_chunk(const float (*q)[MAX_HEAD], const T* keys, const T* values, const Context& c, float (*acc_out)[MAX_HEAD],
                  float* sum_out) {
  constexpr int64_t SPAN = Span<T>::size;
  __m512 query[GC][NV], acc[GC][NV], total[GC];
  float best[GC];
  alignas(64) float weight[GC][SPAN + 16];
  for (int h = 0; h < GC; ++h) {
    for (int i = 0; i < NV; ++i) query[h][i] = _mm512_load_ps(q[h] + 16 * i), acc[h][i] = _mm512_setzero_ps();
    total[h] = _mm512_setzero_ps();
    best[h] = -std::numeric_limits<float>::infinity();
  }
  const auto span_end = [&](int64_t from) {
    const int64_t end = std::min(c.length, from + SPAN);
    return Span<T>::within_block ? std::min(end, (from / c.block_size + 1) * c.block_size) : end;
  };
  const auto run = [&](int64_t p, int64_t end) { return std::min({c.block_size - p % c.block_size, end - p, int64_t{16}}); };
  const auto slot_of = [&](int64_t p) { return static_cast<int64_t>(c.table[p / c.block_size]) * c.block_size + p % c.block_size; };
  for (int64_t start = c.first; start < c.length;) {
    const int64_t end = span_end(start), count = end - start;
    for (int64_t p = start; p < end;) {  // scores, a tile of up to 16 positions at a time
      const int64_t n = run(p, end);
      const T* k_rows = keys + slot_of(p) * c.stride;
      if (p + n < c.length) {  // the next tile's rows, from a block anywhere in the cache
        const int64_t next = slot_of(p + n);
        for (int64_t j = 0; j < 16; ++j) prefetch(keys + (next + j) * c.stride, 16 * NV), prefetch(values + (next + j) * c.stride, 16 * NV);
      }
      __m512 partial[GC][16];
      for (int64_t j = 0; j < 16; ++j) {
        if (j >= n) {
          for (int h = 0; h < GC; ++h) partial[h][j] = _mm512_setzero_ps();
          continue;
        }
        __m512 k[NV];
        for (int i = 0; i < NV; ++i) k[i] = load16(k_rows + j * c.stride + 16 * i);
        for (int h = 0; h < GC; ++h) {
          __m512 sum = _mm512_mul_ps(query[h][0], k[0]);
          for (int i = 1; i < NV; ++i) sum = _mm512_fmadd_ps(query[h][i], k[i], sum);
          partial[h][j] = sum;
        }
      }
      for (int h = 0; h < GC; ++h) _mm512_storeu_ps(weight[h] + (p - start), sums16(partial[h]));
      p += n;
    }
    for (int h = 0; h < GC; ++h) {  // the span's softmax terms, the running maximum and sums rescaled
      __m512 top = _mm512_set1_ps(best[h]);
      for (int64_t j = 0; j < count; j += 16) {
        const __mmask16 live = count - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - j)) - 1);
        top = _mm512_mask_max_ps(top, live, top, _mm512_loadu_ps(weight[h] + j));
      }
      const float highest = _mm512_reduce_max_ps(top);
      if (highest > best[h]) {
        const float rescale = best[h] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(best[h] - highest);
        const __m512 factor = _mm512_set1_ps(rescale);
        total[h] = _mm512_mul_ps(total[h], factor);
        for (int i = 0; i < NV; ++i) acc[h][i] = _mm512_mul_ps(acc[h][i], factor);
        best[h] = highest;
      }
      const __m512 shift = _mm512_set1_ps(best[h]);
      for (int64_t j = 0; j < count; j += 16) {
        const __mmask16 live = count - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - j)) - 1);
        const __m512 e = exp16_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(weight[h] + j), shift));
        total[h] = _mm512_mask_add_ps(total[h], live, total[h], e);  // the unrounded exponentials, as torch
        _mm512_storeu_ps(weight[h] + j, rounded16(e, keys));
      }
    }
    for (int64_t p = start; p < end;) {  // values, weighted into every head's accumulators
      const int64_t n = run(p, end), base = p - start;
      const T* v_rows = values + slot_of(p) * c.stride;
      for (int64_t j = 0; j < n; ++j) {
        __m512 v[NV];
        for (int i = 0; i < NV; ++i) v[i] = load16(v_rows + j * c.stride + 16 * i);
        for (int h = 0; h < GC; ++h) {
          const __m512 w = _mm512_set1_ps(weight[h][base + j]);
          for (int i = 0; i < NV; ++i) acc[h][i] = _mm512_fmadd_ps(w, v[i], acc[h][i]);
        }
      }
      p += n;
    }
    start = end;
  }
  for (int h = 0; h < GC; ++h) {
    for (int i = 0; i < NV; ++i) _mm512_store_ps(acc_out[h] + 16 * i, acc[h][i]);
    sum_out[h] = _mm512_reduce_add_ps(total[h]);
  }
}

// Heads per chunk: as many as keep a chunk's queries and accumulators in registers.
constexpr int chunk_heads(int nv) { return nv == 4 ? 3 : 1; }

template <typename T, int NV>
void attend_chunks(const float (*q)[MAX_HEAD], int64_t heads, const T* keys, const T* values, const Context& c,
                   float (*acc)[MAX_HEAD], float* sums) {
  constexpr int GC = chunk_heads(NV);
  int64_t h = 0;
  for (; h + GC <= heads; h += GC) attend_chunk<T, NV, GC>(q + h, keys, values, c, acc + h, sums + h);
  for (; h < heads; ++h) attend_chunk<T, NV, 1>(q + h, keys, values, c, acc + h, sums + h);
}

// Whether the fast path covers these heads.
inline bool fast_path(const Layout& L) { return L.head_size == 64 || L.head_size == 128; }

// One (request, KV head): the query heads sharing that KV head, through attend_chunks.
template <typename T>
void attend_kv_head(const T* query, const T* keys, const T* values, const int32_t* block_tables, const int32_t* seq_lens,
                    int64_t request, int64_t row, int64_t kv_head, const Layout& L, T* out) {
  const int64_t group = L.num_heads / L.num_kv_heads, D = L.head_size;
  const int64_t length = seq_lens[request];
  const Context c{block_tables + request * L.table_stride, L.window > 0 ? std::max<int64_t>(0, length - L.window) : 0,
                  length, L.num_kv_heads * D, L.block_size};
  alignas(64) float q[MAX_HEADS][MAX_HEAD];
  alignas(64) float acc[MAX_HEADS][MAX_HEAD];
  float sums[MAX_HEADS];
  for (int64_t g = 0; g < group; ++g) {
    const T* src = query + row * L.q_token_stride + (kv_head * group + g) * L.q_head_stride;
    for (int64_t d = 0; d < D; ++d) q[g][d] = load(src + d) * L.scale;
  }
  const T* k = keys + kv_head * D;
  const T* v = values + kv_head * D;
  if (D == 64) attend_chunks<T, 4>(q, group, k, v, c, acc, sums);
  else attend_chunks<T, 8>(q, group, k, v, c, acc, sums);
  for (int64_t g = 0; g < group; ++g) {
    T* dst = out + row * L.out_token_stride + (kv_head * group + g) * L.out_head_stride;
    const float inverse = 1.0f / sums[g];
    for (int64_t d = 0; d < D; ++d) store(dst + d, acc[g][d] * inverse);
  }
}
#endif

template <typename T>
void decode(const T* query, const T* cache, int64_t num_slots, const int32_t* block_tables, const int32_t* seq_lens,
            const int64_t* requests, const int64_t* rows, int64_t n, const Layout& L, T* out, int threads) {
  const T* keys = cache;  // cache is [2, slots, kv_heads, head]: keys, then values
  const T* values = cache + num_slots * L.num_kv_heads * L.head_size;
#if defined(__AVX512F__)
  if (fast_path(L)) {
    const int64_t tasks = n * L.num_kv_heads;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && tasks > 1)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t r = t / L.num_kv_heads;
      attend_kv_head(query, keys, values, block_tables, seq_lens, requests[r], rows[r], t % L.num_kv_heads, L, out);
    }
    return;
  }
#endif
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && n > 1)
  for (int64_t r = 0; r < n; ++r) {
    attend(query, keys, values, block_tables, seq_lens, requests[r], rows[r], L, out);
  }
}


#if defined(__AVX512F__)
// Prefill chunks (several new tokens of one request, attending to its cached context and to each
// other, causally) on AVX-512, head sizes 64 and 128. A task is (request, KV head, a tile of up to
// TILE_ROWS query rows: consecutive positions times the query heads sharing that KV head). Per span
// of positions its rows' scores are one small GEMM per cache block against the block's keys,
// transposed once into Kt (16 positions on the lanes, so each multiply-add yields 16 scores of a
// row), then the online softmax as in ``attend``, then the values weighted in register blocks.
// Exported for float32 only: bfloat16 prompts stay with torch's SDPA, HF's own computation, whose
// score sums this kernel orders differently (backend.py says what that cost in greedy agreement).

constexpr int64_t TILE_ROWS = 24;  // rows of a task: 8 positions of 3 query heads, 24 of 1, ...
constexpr int64_t ROW_BLOCK = 8;   // rows whose scores are accumulated in registers together

// The 16 x 16 block m (16 rows of 16 floats) transposed in place.
inline void transpose16(__m512* m) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(m[2 * i], m[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(m[2 * i], m[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
    m[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
    m[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    m[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
    m[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(m[8 * i + j], m[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(m[8 * i + j], m[8 * i + 4 + j], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    m[j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88);
    m[8 + j] = _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd);
  }
}

// One prefill task's rows: row r is query head (kv_head * group + r % group) of position
// first_position + r / group.
struct Rows {
  int64_t count, group, first_position;
  int64_t position(int64_t r) const { return first_position + r / group; }
};

template <typename T, int NV>
void prefill_task(const T* query, const T* keys, const T* values, const int32_t* table, int64_t first_row, const Rows& rows, int64_t kv_head, const Layout& L, T* out) {
  constexpr int64_t D = NV * 16, SPAN = Span<T>::size;
  constexpr int PV_ROWS = 16 / NV;  // rows whose accumulators stay in registers while values are added
  const int64_t stride = L.num_kv_heads * D, block = L.block_size;
  const int64_t last = rows.position(rows.count - 1);
  const int64_t first = L.window > 0 ? std::max<int64_t>(0, rows.first_position - L.window + 1) : 0;
  alignas(64) float q[TILE_ROWS + ROW_BLOCK][D];
  alignas(64) float acc[TILE_ROWS][D];
  alignas(64) float weight[TILE_ROWS][SPAN + 16];
  alignas(64) float kt[D][16];
  alignas(64) float vf[16][D];
  float best[TILE_ROWS], total[TILE_ROWS];
  const int64_t padded = (rows.count + ROW_BLOCK - 1) / ROW_BLOCK * ROW_BLOCK;
  for (int64_t r = 0; r < padded; ++r) {
    if (r >= rows.count) {
      std::fill(q[r], q[r] + D, 0.0f);
      continue;
    }
    const T* src = query + (first_row + r / rows.group) * L.q_token_stride + (kv_head * rows.group + r % rows.group) * L.q_head_stride;
    for (int64_t d = 0; d < D; ++d) q[r][d] = load(src + d) * L.scale;
    std::fill(acc[r], acc[r] + D, 0.0f);
    best[r] = -std::numeric_limits<float>::infinity();
    total[r] = 0.0f;
  }
  const auto slot_of = [&](int64_t p) { return static_cast<int64_t>(table[p / block]) * block + p % block; };
  const auto run = [&](int64_t p, int64_t end) { return std::min({block - p % block, end - p, int64_t{16}}); };
  const __m512 lanes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512 minus_infinity = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t start = first; start <= last; start += SPAN) {
    const int64_t end = std::min(last + 1, start + SPAN);
    for (int64_t p = start; p < end;) {  // scores: per tile of up to 16 positions, one GEMM against Kt
      const int64_t n = run(p, end);
      const T* k_rows = keys + slot_of(p) * stride + kv_head * D;
      for (int64_t i = 0; i < NV; ++i) {
        __m512 m[16];
        for (int64_t j = 0; j < 16; ++j) m[j] = j < n ? load16(k_rows + j * stride + 16 * i) : _mm512_setzero_ps();
        transpose16(m);
        for (int64_t j = 0; j < 16; ++j) _mm512_store_ps(kt[16 * i + j], m[j]);
      }
      const __m512 position = _mm512_add_ps(lanes, _mm512_set1_ps(static_cast<float>(p)));
      for (int64_t r0 = 0; r0 < rows.count; r0 += ROW_BLOCK) {
        __m512 s[ROW_BLOCK];
        for (int b = 0; b < ROW_BLOCK; ++b) s[b] = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; ++d) {
          const __m512 k = _mm512_load_ps(kt[d]);
          for (int b = 0; b < ROW_BLOCK; ++b) s[b] = _mm512_fmadd_ps(_mm512_set1_ps(q[r0 + b][d]), k, s[b]);
        }
        for (int b = 0; b < ROW_BLOCK && r0 + b < rows.count; ++b) {
          const int64_t at = rows.position(r0 + b);
          __mmask16 seen = _mm512_cmp_ps_mask(position, _mm512_set1_ps(static_cast<float>(at)), _CMP_LE_OQ);
          if (L.window > 0) seen &= _mm512_cmp_ps_mask(position, _mm512_set1_ps(static_cast<float>(at - L.window)), _CMP_GT_OQ);
          seen &= static_cast<__mmask16>((1u << n) - 1);
          _mm512_storeu_ps(weight[r0 + b] + (p - start), _mm512_mask_blend_ps(seen, minus_infinity, s[b]));
        }
      }
      p += n;
    }
    const int64_t count = end - start;
    for (int64_t r = 0; r < rows.count; ++r) {  // the span's softmax terms; masked positions weigh 0
      __m512 top = minus_infinity;
      for (int64_t j = 0; j < count; j += 16) {
        const __mmask16 live = count - j >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - j)) - 1);
        top = _mm512_mask_max_ps(top, live, top, _mm512_loadu_ps(weight[r] + j));
      }
      const float highest = _mm512_reduce_max_ps(top);
      if (highest == -std::numeric_limits<float>::infinity()) {  // the row sees none of this span
        for (int64_t j = 0; j < count; j += 16) _mm512_storeu_ps(weight[r] + j, _mm512_setzero_ps());
        continue;
      }
      if (highest > best[r]) {
        const float rescale = best[r] == -std::numeric_limits<float>::infinity() ? 0.0f : std::exp(best[r] - highest);
        total[r] *= rescale;
        for (int64_t d = 0; d < D; ++d) acc[r][d] *= rescale;
        best[r] = highest;
      }
      const __m512 shift = _mm512_set1_ps(best[r]);
      __m512 sum = _mm512_setzero_ps();
      for (int64_t j = 0; j < count; j += 16) {
        const __m512 score = _mm512_loadu_ps(weight[r] + j);
        __mmask16 live = _mm512_cmp_ps_mask(score, minus_infinity, _CMP_NEQ_OQ);
        if (count - j < 16) live &= static_cast<__mmask16>((1u << (count - j)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(live, exp16_nonpositive(_mm512_sub_ps(score, shift)));
        sum = _mm512_add_ps(sum, e);  // the unrounded exponentials, as torch
        _mm512_storeu_ps(weight[r] + j, rounded16(e, keys));
      }
      total[r] += _mm512_reduce_add_ps(sum);
    }
    for (int64_t p = start; p < end;) {  // values: per tile, into register blocks of PV_ROWS rows
      const int64_t n = run(p, end), base = p - start;
      const T* v_rows = values + slot_of(p) * stride + kv_head * D;
      for (int64_t j = 0; j < n; ++j) {
        for (int i = 0; i < NV; ++i) _mm512_store_ps(vf[j] + 16 * i, load16(v_rows + j * stride + 16 * i));
      }
      for (int64_t r0 = 0; r0 < rows.count; r0 += PV_ROWS) {
        const int64_t live = std::min<int64_t>(PV_ROWS, rows.count - r0);
        __m512 a[PV_ROWS][NV];
        for (int b = 0; b < PV_ROWS; ++b)
          for (int i = 0; i < NV; ++i) a[b][i] = b < live ? _mm512_load_ps(acc[r0 + b] + 16 * i) : _mm512_setzero_ps();
        for (int64_t j = 0; j < n; ++j) {
          __m512 v[NV];
          for (int i = 0; i < NV; ++i) v[i] = _mm512_load_ps(vf[j] + 16 * i);
          for (int b = 0; b < PV_ROWS; ++b) {
            if (b >= live) break;
            const __m512 w = _mm512_set1_ps(weight[r0 + b][base + j]);
            for (int i = 0; i < NV; ++i) a[b][i] = _mm512_fmadd_ps(w, v[i], a[b][i]);
          }
        }
        for (int b = 0; b < live; ++b)
          for (int i = 0; i < NV; ++i) _mm512_store_ps(acc[r0 + b] + 16 * i, a[b][i]);
      }
      p += n;
    }
  }
  for (int64_t r = 0; r < rows.count; ++r) {
    T* dst = out + (first_row + r / rows.group) * L.out_token_stride + (kv_head * rows.group + r % rows.group) * L.out_head_stride;
    const float inverse = 1.0f / total[r];
    for (int64_t d = 0; d < D; ++d) store(dst + d, acc[r][d] * inverse);
  }
}

// Every prefill chunk of the step: chunk c is request requests[c], its new tokens at batch rows
// rows[c] .. rows[c] + counts[c], the last positions of its context of seq_lens[request].
template <typename T>
void prefill(const T* query, const T* cache, int64_t num_slots, const int32_t* block_tables, const int32_t* seq_lens,
             const int64_t* requests, const int64_t* rows, const int64_t* counts, int64_t n, const Layout& L, T* out,
             int threads) {
  const T* keys = cache;
  const T* values = cache + num_slots * L.num_kv_heads * L.head_size;
  const int64_t group = L.num_heads / L.num_kv_heads;
  const int64_t positions_per_task = std::max<int64_t>(1, TILE_ROWS / group);
  int64_t tasks = 0;
  int64_t starts[MAX_TASK_CHUNKS + 1];
  for (int64_t c = 0; c < n; ++c) {
    starts[c] = tasks;
    tasks += (counts[c] + positions_per_task - 1) / positions_per_task * L.num_kv_heads;
  }
  starts[n] = tasks;
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && tasks > 1)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t c = std::upper_bound(starts, starts + n + 1, t) - starts - 1;
    const int64_t local = t - starts[c], kv_head = local % L.num_kv_heads, tile = local / L.num_kv_heads;
    const int64_t request = requests[c], context = seq_lens[request];
    const int64_t first_new = tile * positions_per_task;
    const int64_t new_rows = std::min(positions_per_task, counts[c] - first_new);
    const Rows task_rows{new_rows * group, group, context - counts[c] + first_new};
    const int32_t* table = block_tables + request * L.table_stride;
    if (L.head_size == 64)
      prefill_task<T, 4>(query, keys, values, table, rows[c] + first_new, task_rows, kv_head, L, out);
    else
      prefill_task<T, 8>(query, keys, values, table, rows[c] + first_new, task_rows, kv_head, L, out);
  }
}
#endif

}  // namespace

extern "C" {

int64_t kc_max_heads() { return MAX_HEADS; }
int64_t kc_max_prefill_chunks() { return MAX_TASK_CHUNKS; }

// Whether this build has the prefill kernel (AVX-512) for heads of ``head_size`` and ``group``
// query heads per KV head.
int kc_has_prefill(int64_t head_size, int64_t group) {
#if defined(__AVX512F__)
  return (head_size == 64 || head_size == 128) && group <= TILE_ROWS;
#else
  (void)head_size, (void)group;
  return 0;
#endif
}
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

#if defined(__AVX512F__)
void kc_prefill_f32(const float* query, const float* cache, int64_t num_slots, const int32_t* block_tables,
                    const int32_t* seq_lens, const int64_t* requests, const int64_t* rows, const int64_t* counts, int64_t n,
                    const Layout* layout, float* out, int threads) {
  prefill(query, cache, num_slots, block_tables, seq_lens, requests, rows, counts, n, *layout, out, threads);
}
#endif

}  // extern "C"
