// Attention of one new token (decoding) for the query heads that share one KV head (see tessera_kernels.h). Each key
// and value row is loaded once for the whole group; scores, the softmax's exp and the value product run in vector
// registers. Portable C, AVX2/FMA or AVX-512.
#include "tessera_kernels.h"
#include "kernel_level.h"
#include "simd_exp.h"
#include <math.h>

enum { MAX_GROUP = 16, MAX_DIM = 256 };
// The cache streams from L3 or memory once per token (SmolLM2 at depth 512: 24 MB): rows this far ahead are
// prefetched so the loads overlap the arithmetic.
enum { PREFETCH_FLOATS = 1024 };

// Softmax of n scores in place, unnormalised: returns 1 / sum.
static float softmax_unnormalised_portable(float *s, size_t n) {
    float maxv = -INFINITY;
    for (size_t j = 0; j < n; j++) if (s[j] > maxv) maxv = s[j];
    float sum = 0;
    for (size_t j = 0; j < n; j++) { s[j] = expf(s[j] - maxv); sum += s[j]; }
    return 1.0f / sum;
}

static void decode_portable(size_t group, const float *q, const float *keys, const float *values, size_t n, size_t d,
                            float scale, float *scores, float *out) {
    for (size_t g = 0; g < group; g++) {
        const float *qg = q + g * d;
        float *s = scores + g * n;
        for (size_t j = 0; j < n; j++) {
            float dot = 0;
            for (size_t c = 0; c < d; c++) dot += qg[c] * keys[j * d + c];
            s[j] = dot * scale;
        }
        const float inv = softmax_unnormalised_portable(s, n);
        float *o = out + g * d;
        for (size_t c = 0; c < d; c++) o[c] = 0;
        for (size_t j = 0; j < n; j++) {
            const float p = s[j];
            for (size_t c = 0; c < d; c++) o[c] += p * values[j * d + c];
        }
        for (size_t c = 0; c < d; c++) o[c] *= inv;
    }
}

#ifdef TK_X86

TK_AVX2 static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TK_AVX2 static float softmax_unnormalised_avx2(float *s, size_t n) {
    __m256 m8 = _mm256_set1_ps(-INFINITY);
    size_t j = 0;
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + j));
    float lanes[8], maxv = -INFINITY;
    _mm256_storeu_ps(lanes, m8);
    for (int k = 0; k < 8; k++) if (lanes[k] > maxv) maxv = lanes[k];
    for (; j < n; j++) if (s[j] > maxv) maxv = s[j];
    const __m256 mv = _mm256_set1_ps(maxv);
    __m256 sum8 = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), mv));
        _mm256_storeu_ps(s + j, p);
        sum8 = _mm256_add_ps(sum8, p);
    }
    float sum = hsum8(sum8);
    for (; j < n; j++) { s[j] = expf(s[j] - maxv); sum += s[j]; }
    return 1.0f / sum;
}

// d a multiple of 8, at most MAX_DIM; group at most MAX_GROUP.
TK_AVX2 static void decode_avx2(size_t group, const float *q, const float *keys, const float *values, size_t n, size_t d,
                                float scale, float *scores, float *out) {
    for (size_t j = 0; j < n; j++) {
        const float *k = keys + j * d;
        for (size_t g = 0; g < group; g++) {
            const float *qg = q + g * d;
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(qg), _mm256_loadu_ps(k));
            for (size_t c = 8; c < d; c += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(qg + c), _mm256_loadu_ps(k + c), acc);
            scores[g * n + j] = hsum8(acc) * scale;
        }
    }
    float inv[MAX_GROUP];
    for (size_t g = 0; g < group; g++) inv[g] = softmax_unnormalised_avx2(scores + g * n, n);
    for (size_t c = 0; c < d; c += 8) {
        __m256 o[MAX_GROUP];
        for (size_t g = 0; g < group; g++) o[g] = _mm256_setzero_ps();
        for (size_t j = 0; j < n; j++) {
            const __m256 v = _mm256_loadu_ps(values + j * d + c);
            for (size_t g = 0; g < group; g++) o[g] = _mm256_fmadd_ps(_mm256_set1_ps(scores[g * n + j]), v, o[g]);
        }
        for (size_t g = 0; g < group; g++) _mm256_storeu_ps(out + g * d + c, _mm256_mul_ps(o[g], _mm256_set1_ps(inv[g])));
    }
}

TK_AVX512 static float softmax_unnormalised_avx512(float *s, size_t n) {
    __m512 m16 = _mm512_set1_ps(-INFINITY);
    size_t j = 0;
    for (; j + 16 <= n; j += 16) m16 = _mm512_max_ps(m16, _mm512_loadu_ps(s + j));
    if (j < n) m16 = _mm512_mask_max_ps(m16, (__mmask16)((1u << (n - j)) - 1), m16, _mm512_maskz_loadu_ps((__mmask16)((1u << (n - j)) - 1), s + j));
    const __m512 mv = _mm512_set1_ps(_mm512_reduce_max_ps(m16));
    __m512 sum16 = _mm512_setzero_ps();
    for (j = 0; j + 16 <= n; j += 16) {
        const __m512 p = exp16(_mm512_sub_ps(_mm512_loadu_ps(s + j), mv));
        _mm512_storeu_ps(s + j, p);
        sum16 = _mm512_add_ps(sum16, p);
    }
    if (j < n) {
        const __mmask16 mask = (__mmask16)((1u << (n - j)) - 1);
        const __m512 p = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, s + j), mv));
        _mm512_mask_storeu_ps(s + j, mask, p);
        sum16 = _mm512_mask_add_ps(sum16, mask, sum16, p);
    }
    return 1.0f / _mm512_reduce_add_ps(sum16);
}

// d a multiple of 16, at most MAX_DIM; group at most MAX_GROUP. Four keys' dot products are reduced together. The
// value product keeps `chunks` sixteen-float column chunks of every head's output in registers while the keys go by,
// so each value row is loaded once per pass and the accumulators are independent chains (one chain per head would
// wait on the FMA latency at every key).
TK_AVX512 __attribute__((always_inline)) static inline void decode_avx512(size_t group, size_t chunks, const float *q, const float *keys,
                                                                          const float *values, size_t n, size_t d, float scale,
                                                                          float *scores, float *out) {
    for (size_t g = 0; g < group; g++) {
        const float *qg = q + g * d;
        float *s = scores + g * n;
        size_t j = 0;
        for (; j + 4 <= n; j += 4) {
            const float *k = keys + j * d;
            if (g == 0) for (size_t p = 0; p < 4 * d; p += 16) _mm_prefetch((const char *)(k + PREFETCH_FLOATS + p), _MM_HINT_T0);
            __m512 a0 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k));
            __m512 a1 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k + d));
            __m512 a2 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k + 2 * d));
            __m512 a3 = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k + 3 * d));
            for (size_t c = 16; c < d; c += 16) {
                const __m512 qc = _mm512_loadu_ps(qg + c);
                a0 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k + c), a0);
                a1 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k + d + c), a1);
                a2 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k + 2 * d + c), a2);
                a3 = _mm512_fmadd_ps(qc, _mm512_loadu_ps(k + 3 * d + c), a3);
            }
            s[j] = _mm512_reduce_add_ps(a0) * scale;
            s[j + 1] = _mm512_reduce_add_ps(a1) * scale;
            s[j + 2] = _mm512_reduce_add_ps(a2) * scale;
            s[j + 3] = _mm512_reduce_add_ps(a3) * scale;
        }
        for (; j < n; j++) {
            const float *k = keys + j * d;
            __m512 a = _mm512_mul_ps(_mm512_loadu_ps(qg), _mm512_loadu_ps(k));
            for (size_t c = 16; c < d; c += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + c), _mm512_loadu_ps(k + c), a);
            s[j] = _mm512_reduce_add_ps(a) * scale;
        }
    }
    float inv[MAX_GROUP];
    for (size_t g = 0; g < group; g++) inv[g] = softmax_unnormalised_avx512(scores + g * n, n);
    for (size_t c0 = 0; c0 < d; c0 += 16 * chunks) {
        const size_t live = (d - c0) / 16 < chunks ? (d - c0) / 16 : chunks;
        __m512 o[MAX_GROUP * 4];
        for (size_t i = 0; i < group * chunks; i++) o[i] = _mm512_setzero_ps();
        for (size_t j = 0; j < n; j++) {
            const float *v = values + j * d + c0;
            for (size_t p = 0; p < 16 * live; p += 16) _mm_prefetch((const char *)(v + PREFETCH_FLOATS + p), _MM_HINT_T0);
            __m512 vc[4];
            for (size_t k = 0; k < chunks; k++) vc[k] = k < live ? _mm512_loadu_ps(v + 16 * k) : _mm512_setzero_ps();
            for (size_t g = 0; g < group; g++) {
                const __m512 p = _mm512_set1_ps(scores[g * n + j]);
                for (size_t k = 0; k < chunks; k++) o[g * chunks + k] = _mm512_fmadd_ps(p, vc[k], o[g * chunks + k]);
            }
        }
        for (size_t g = 0; g < group; g++) {
            const __m512 scale_g = _mm512_set1_ps(inv[g]);
            for (size_t k = 0; k < live; k++) _mm512_storeu_ps(out + g * d + c0 + 16 * k, _mm512_mul_ps(o[g * chunks + k], scale_g));
        }
    }
}

// With a constant group size the compiler keeps every head's accumulators in registers.
TK_AVX512 static void decode_avx512_dispatch(size_t group, const float *q, const float *keys, const float *values, size_t n,
                                             size_t d, float scale, float *scores, float *out) {
    // Chunks per pass: as many as keep group * chunks accumulators within 24 of the 32 vector registers (at most 4).
    switch (group) {
    case 1: decode_avx512(1, 4, q, keys, values, n, d, scale, scores, out); break;
    case 2: decode_avx512(2, 4, q, keys, values, n, d, scale, scores, out); break;
    case 3: decode_avx512(3, 4, q, keys, values, n, d, scale, scores, out); break;
    case 4: decode_avx512(4, 4, q, keys, values, n, d, scale, scores, out); break;
    case 5: decode_avx512(5, 4, q, keys, values, n, d, scale, scores, out); break;
    case 6: decode_avx512(6, 4, q, keys, values, n, d, scale, scores, out); break;
    case 8: decode_avx512(8, 3, q, keys, values, n, d, scale, scores, out); break;
    default: decode_avx512(group, 1, q, keys, values, n, d, scale, scores, out); break;
    }
}
#endif

void tessera_attend_decode(size_t group, const float *q, const float *keys, const float *values, size_t n,
                           size_t head_dim, float scale, float *scores, float *out) {
    if (group == 0 || n == 0) return;
#ifdef TK_X86
    const int level = tk_level();
    if (group <= MAX_GROUP && head_dim <= MAX_DIM) {
        if (level >= TK_LEVEL_AVX512 && head_dim % 16 == 0) {
            decode_avx512_dispatch(group, q, keys, values, n, head_dim, scale, scores, out);
            return;
        }
        if (level >= TK_LEVEL_AVX2 && head_dim % 8 == 0) {
            decode_avx2(group, q, keys, values, n, head_dim, scale, scores, out);
            return;
        }
    }
#endif
    decode_portable(group, q, keys, values, n, head_dim, scale, scores, out);
}
