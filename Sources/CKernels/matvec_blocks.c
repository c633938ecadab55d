// Block-format matrix-vector kernels (see tessera_kernels.h). Two implementations of each: a portable one, and one
// for x86-64 CPUs with AVX2, FMA and F16C, chosen at run time so that the binary still runs on any x86-64 (or ARM).
#include "tessera_kernels.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>

enum { QK = 32, Q4_1_BYTES = 20, Q8_0_BYTES = 34 };

// IEEE half to float, bit by bit (normals, subnormals, infinities, NaN).
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff, bits;
    if (exponent == 0) {
        if (mantissa == 0) {
            bits = sign;
        } else {  // subnormal: normalise
            exponent = 127 - 15 + 1;
            while (!(mantissa & 0x400)) { mantissa <<= 1; exponent--; }
            bits = sign | (exponent << 23) | ((mantissa & 0x3ff) << 13);
        }
    } else if (exponent == 0x1f) {
        bits = sign | 0x7f800000u | (mantissa << 13);
    } else {
        bits = sign | ((exponent + 127 - 15) << 23) | (mantissa << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t load_u16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

// Sum of x over each block of 32: the Q4_1 offset term m * sum(x) needs it once per block, not once per row.
static void block_sums(const float *x, size_t blocks, float *sums) {
    for (size_t b = 0; b < blocks; b++) {
        float s = 0;
        for (int i = 0; i < QK; i++) s += x[b * QK + i];
        sums[b] = s;
    }
}

// ---- portable ----

static void q4_1_portable(const uint8_t *w, size_t rows, size_t blocks, const float *x, const float *sums, float *y, int accumulate) {
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q4_1_BYTES;
        float total = 0;
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = row + b * Q4_1_BYTES;
            const float d = half_to_float(load_u16(blk)), m = half_to_float(load_u16(blk + 2));
            const float *xb = x + b * QK;
            float s = 0;
            for (int j = 0; j < 16; j++) {
                s += (float)(blk[4 + j] & 0x0f) * xb[j];
                s += (float)(blk[4 + j] >> 4) * xb[j + 16];
            }
            total += d * s + m * sums[b];
        }
        y[r] = accumulate ? y[r] + total : total;
    }
}

static void q8_0_portable(const uint8_t *w, size_t rows, size_t blocks, const float *x, float *y, int accumulate) {
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES;
        float total = 0;
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = row + b * Q8_0_BYTES;
            const float d = half_to_float(load_u16(blk));
            const int8_t *q = (const int8_t *)(blk + 2);
            const float *xb = x + b * QK;
            float s = 0;
            for (int j = 0; j < QK; j++) s += (float)q[j] * xb[j];
            total += d * s;
        }
        y[r] = accumulate ? y[r] + total : total;
    }
}

// ---- AVX2 + FMA + F16C ----

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define TK_X86 1
#define TK_AVX2 __attribute__((target("avx2,fma,f16c")))

TK_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

TK_AVX2 static inline float half_avx(const uint8_t *p) { return _cvtsh_ss(load_u16(p)); }

// Four 8-lane products of 32 small integers (as four groups of 8 bytes, already unpacked) with x.
TK_AVX2 static inline __m256 dot32_u8(__m128i lo, __m128i hi, const float *xb) {
    __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), _mm256_loadu_ps(xb));
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), _mm256_loadu_ps(xb + 8), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), _mm256_loadu_ps(xb + 16), s);
    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), _mm256_loadu_ps(xb + 24), s);
    return s;
}

TK_AVX2 static void q4_1_avx2(const uint8_t *w, size_t rows, size_t blocks, const float *x, const float *sums, float *y, int accumulate) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0f);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q4_1_BYTES;
        __m256 acc = _mm256_setzero_ps();
        float offsets = 0;
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = row + b * Q4_1_BYTES;
            const __m128i q = _mm_loadu_si128((const __m128i *)(blk + 4));
            const __m128i lo = _mm_and_si128(q, low_nibbles);                     // elements 0..15
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low_nibbles);  // elements 16..31
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_avx(blk)), dot32_u8(lo, hi, x + b * QK), acc);
            offsets += half_avx(blk + 2) * sums[b];
        }
        const float total = hsum256(acc) + offsets;
        y[r] = accumulate ? y[r] + total : total;
    }
}

TK_AVX2 static void q8_0_avx2(const uint8_t *w, size_t rows, size_t blocks, const float *x, float *y, int accumulate) {
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES;
        __m256 acc = _mm256_setzero_ps();
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = row + b * Q8_0_BYTES;
            const uint8_t *q = blk + 2;
            const float *xb = x + b * QK;
            __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))), _mm256_loadu_ps(xb));
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)))), _mm256_loadu_ps(xb + 8), s);
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 16)))), _mm256_loadu_ps(xb + 16), s);
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 24)))), _mm256_loadu_ps(xb + 24), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_avx(blk)), s, acc);
        }
        const float total = hsum256(acc);
        y[r] = accumulate ? y[r] + total : total;
    }
}
#endif

// ---- dispatch ----

static int forced_portable = 0;  // a count, so that overlapping tests that force the portable kernels nest

static int cpu_has_avx2(void) {
#ifdef TK_X86
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached;
#else
    return 0;
#endif
}

int tessera_kernels_vectorised(void) { return __atomic_load_n(&forced_portable, __ATOMIC_RELAXED) == 0 && cpu_has_avx2(); }
void tessera_kernels_force_portable(int portable) { __atomic_fetch_add(&forced_portable, portable ? 1 : -1, __ATOMIC_RELAXED); }

void tessera_matvec_q4_1(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate) {
    const size_t blocks = cols / QK;
    float stack_sums[512];
    float *sums = blocks <= 512 ? stack_sums : malloc(blocks * sizeof(float));
    if (!sums) abort();  // out of memory for a few KB: nothing sensible is left to do
    block_sums(x, blocks, sums);
#ifdef TK_X86
    if (tessera_kernels_vectorised()) q4_1_avx2(w, rows, blocks, x, sums, y, accumulate);
    else
#endif
        q4_1_portable(w, rows, blocks, x, sums, y, accumulate);
    if (sums != stack_sums) free(sums);
}

void tessera_matvec_q8_0(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate) {
    const size_t blocks = cols / QK;
#ifdef TK_X86
    if (tessera_kernels_vectorised()) { q8_0_avx2(w, rows, blocks, x, y, accumulate); return; }
#endif
    q8_0_portable(w, rows, blocks, x, y, accumulate);
}
