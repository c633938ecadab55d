// Block-format matrix-vector kernels (see tessera_kernels.h): portable C, AVX2/FMA/F16C and AVX-512, chosen at run
// time so that the binary still runs on any x86-64 (or ARM).
//
// Rows are kept repacked (tessera_repack_*): per row, the blocks' f16 scales (and Q4_1 minimums) come first as
// arrays, then the blocks' quants back to back. The bytes and values are ggml's; only their order changes, so that
// sixteen scales convert in one instruction and a block's quants are one aligned-size load.
#include "tessera_kernels.h"
#include "kernel_level.h"
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

// ---- repacking ----

void tessera_repack_q4_1(const void *src, size_t rows, size_t cols, void *dst) {
    const size_t blocks = cols / QK;
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *in = (const uint8_t *)src + r * blocks * Q4_1_BYTES;
        uint8_t *out = (uint8_t *)dst + r * blocks * Q4_1_BYTES;
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = in + b * Q4_1_BYTES;
            memcpy(out + 2 * b, blk, 2);                      // d
            memcpy(out + 2 * blocks + 2 * b, blk + 2, 2);     // m
            memcpy(out + 4 * blocks + 16 * b, blk + 4, 16);   // nibbles
        }
    }
}

void tessera_repack_q8_0(const void *src, size_t rows, size_t cols, void *dst) {
    const size_t blocks = cols / QK;
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *in = (const uint8_t *)src + r * blocks * Q8_0_BYTES;
        uint8_t *out = (uint8_t *)dst + r * blocks * Q8_0_BYTES;
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *blk = in + b * Q8_0_BYTES;
            memcpy(out + 2 * b, blk, 2);                      // d
            memcpy(out + 2 * blocks + 32 * b, blk + 2, 32);   // int8 quants
        }
    }
}

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
        const uint8_t *row = w + r * blocks * Q4_1_BYTES, *qs = row + 4 * blocks;
        float total = 0;
        for (size_t b = 0; b < blocks; b++) {
            const float d = half_to_float(load_u16(row + 2 * b)), m = half_to_float(load_u16(row + 2 * blocks + 2 * b));
            const uint8_t *q = qs + 16 * b;
            const float *xb = x + b * QK;
            float s = 0;
            for (int j = 0; j < 16; j++) {
                s += (float)(q[j] & 0x0f) * xb[j];
                s += (float)(q[j] >> 4) * xb[j + 16];
            }
            total += d * s + m * sums[b];
        }
        y[r] = accumulate ? y[r] + total : total;
    }
}

static void q8_0_portable(const uint8_t *w, size_t rows, size_t blocks, const float *x, float *y, int accumulate) {
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES;
        const int8_t *qs = (const int8_t *)(row + 2 * blocks);
        float total = 0;
        for (size_t b = 0; b < blocks; b++) {
            const float d = half_to_float(load_u16(row + 2 * b));
            const int8_t *q = qs + 32 * b;
            const float *xb = x + b * QK;
            float s = 0;
            for (int j = 0; j < QK; j++) s += (float)q[j] * xb[j];
            total += d * s;
        }
        y[r] = accumulate ? y[r] + total : total;
    }
}

#ifdef TK_X86

// The weights stream from L3 or memory once per token: the rows a few KB ahead are prefetched, so that the loads
// overlap the arithmetic (without it, a single thread's pass over SmolLM2's Q4_1 weights took 12.9 ms of CPU time
// with the AVX-512 kernel, with it 8.0; the same pass over weights already in cache takes 6.9).
// Bytes ahead of the row being multiplied that are prefetched: whole rows, at least this many bytes.
enum { PREFETCH_BYTES = 4096 };

static size_t prefetch_distance(size_t row_bytes) {
    const size_t rows_ahead = (PREFETCH_BYTES + row_bytes - 1) / row_bytes;
    return (rows_ahead < 2 ? 2 : rows_ahead) * row_bytes;
}

// ---- AVX2 + FMA + F16C ----

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
    const size_t ahead = prefetch_distance(blocks * Q4_1_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q4_1_BYTES, *qs = row + 4 * blocks;
        for (size_t p = 0; p < 4 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m256 acc = _mm256_setzero_ps();
        float offsets = 0;
        for (size_t b = 0; b < blocks; b++) {
            if ((b & 3) == 0) _mm_prefetch((const char *)(qs + 16 * b + ahead), _MM_HINT_T0);
            const __m128i q = _mm_loadu_si128((const __m128i *)(qs + 16 * b));
            const __m128i lo = _mm_and_si128(q, low_nibbles);                     // elements 0..15
            const __m128i hi = _mm_and_si128(_mm_srli_epi16(q, 4), low_nibbles);  // elements 16..31
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_avx(row + 2 * b)), dot32_u8(lo, hi, x + b * QK), acc);
            offsets += half_avx(row + 2 * blocks + 2 * b) * sums[b];
        }
        const float total = hsum256(acc) + offsets;
        y[r] = accumulate ? y[r] + total : total;
    }
}

TK_AVX2 static void q8_0_avx2(const uint8_t *w, size_t rows, size_t blocks, const float *x, float *y, int accumulate) {
    const size_t ahead = prefetch_distance(blocks * Q8_0_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES, *qs = row + 2 * blocks;
        for (size_t p = 0; p < 2 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m256 acc = _mm256_setzero_ps();
        for (size_t b = 0; b < blocks; b++) {
            const uint8_t *q = qs + 32 * b;
            _mm_prefetch((const char *)(q + ahead), _MM_HINT_T0);
            const float *xb = x + b * QK;
            __m256 s = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)q))), _mm256_loadu_ps(xb));
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)))), _mm256_loadu_ps(xb + 8), s);
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 16)))), _mm256_loadu_ps(xb + 16), s);
            s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + 24)))), _mm256_loadu_ps(xb + 24), s);
            acc = _mm256_fmadd_ps(_mm256_set1_ps(half_avx(row + 2 * b)), s, acc);
        }
        const float total = hsum256(acc);
        y[r] = accumulate ? y[r] + total : total;
    }
}

// ---- AVX-512 ----
// Sixteen lanes per instruction; a row's scales are converted sixteen at a time and broadcast from the stack (a
// load, not a shuffle); two accumulators per row (even and odd blocks) keep the FMA chains from waiting on each
// other.


// One Q4_1 block: acc += d * (lo · x[0:16] + hi · x[16:32]), the nibbles widened to 32-bit lanes.
TK_AVX512 static inline __m512 q4_1_block512(const uint8_t *q, const float *xb, float d, __m512 acc) {
    const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)q));
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0f)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
    const __m512 s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
    return _mm512_fmadd_ps(_mm512_set1_ps(d), s, acc);
}

TK_AVX512 static void q4_1_avx512(const uint8_t *w, size_t rows, size_t blocks, const float *x, const float *sums, float *y, int accumulate) {
    const size_t ahead = prefetch_distance(blocks * Q4_1_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q4_1_BYTES, *qs = row + 4 * blocks;
        const uint16_t *dh = (const uint16_t *)row, *mh = dh + blocks;
        for (size_t p = 0; p < 4 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), offsets = _mm512_setzero_ps();
        for (size_t b0 = 0; b0 < blocks; b0 += 16) {
            const size_t nb = blocks - b0 < 16 ? blocks - b0 : 16;
            const __mmask16 mask = (__mmask16)((1u << nb) - 1);
            float d[16];
            _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dh + b0)));
            const __m512 m = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, mh + b0));
            offsets = _mm512_fmadd_ps(m, _mm512_maskz_loadu_ps(mask, sums + b0), offsets);
            size_t k = 0;
            for (; k + 2 <= nb; k += 2) {
                const size_t b = b0 + k;
                if ((k & 3) == 0) _mm_prefetch((const char *)(qs + 16 * b + ahead), _MM_HINT_T0);
                acc0 = q4_1_block512(qs + 16 * b, x + b * QK, d[k], acc0);
                acc1 = q4_1_block512(qs + 16 * (b + 1), x + (b + 1) * QK, d[k + 1], acc1);
            }
            if (k < nb) acc0 = q4_1_block512(qs + 16 * (b0 + k), x + (b0 + k) * QK, d[k], acc0);
        }
        const float total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1)) + _mm512_reduce_add_ps(offsets);
        y[r] = accumulate ? y[r] + total : total;
    }
}

// One Q8_0 block: acc += d * (q[0:16] · x[0:16] + q[16:32] · x[16:32]).
TK_AVX512 static inline __m512 q8_0_block512(const int8_t *q, const float *xb, float d, __m512 acc) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
    const __m512 s = _mm512_fmadd_ps(hi, _mm512_loadu_ps(xb + 16), _mm512_mul_ps(lo, _mm512_loadu_ps(xb)));
    return _mm512_fmadd_ps(_mm512_set1_ps(d), s, acc);
}

TK_AVX512 static void q8_0_avx512(const uint8_t *w, size_t rows, size_t blocks, const float *x, float *y, int accumulate) {
    const size_t ahead = prefetch_distance(blocks * Q8_0_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES;
        const int8_t *qs = (const int8_t *)(row + 2 * blocks);
        const uint16_t *dh = (const uint16_t *)row;
        for (size_t p = 0; p < 2 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
        for (size_t b0 = 0; b0 < blocks; b0 += 16) {
            const size_t nb = blocks - b0 < 16 ? blocks - b0 : 16;
            const __mmask16 mask = (__mmask16)((1u << nb) - 1);
            float d[16];
            _mm512_storeu_ps(d, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, dh + b0)));
            size_t k = 0;
            for (; k + 2 <= nb; k += 2) {
                const size_t b = b0 + k;
                _mm_prefetch((const char *)(qs + 32 * b + ahead), _MM_HINT_T0);
                acc0 = q8_0_block512(qs + 32 * b, x + b * QK, d[k], acc0);
                acc1 = q8_0_block512(qs + 32 * (b + 1), x + (b + 1) * QK, d[k + 1], acc1);
            }
            if (k < nb) acc0 = q8_0_block512(qs + 32 * (b0 + k), x + (b0 + k) * QK, d[k], acc0);
        }
        const float total = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
        y[r] = accumulate ? y[r] + total : total;
    }
}

// ---- several tokens (AVX-512) ----
// Up to 16 tokens against each weight row: the row's blocks are dequantised once into registers (d·q, or d·q + m,
// rounded exactly as the float32 copy was) and multiplied with every token's slice of x, so a scoring batch reads
// the blocks once instead of packing a float32 matrix for sgemm.

TK_AVX512 __attribute__((always_inline)) static inline void rows_q4_1_avx512(size_t tokens, const uint8_t *w, size_t rows,
                                                                             size_t blocks, const float *x, size_t ldx,
                                                                             float *y, size_t ldy, int accumulate) {
    const size_t ahead = prefetch_distance(blocks * Q4_1_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q4_1_BYTES, *qs = row + 4 * blocks;
        const uint16_t *dh = (const uint16_t *)row, *mh = dh + blocks;
        for (size_t p = 0; p < 4 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m512 acc[16];
        for (size_t t = 0; t < tokens; t++) acc[t] = _mm512_setzero_ps();
        for (size_t b = 0; b < blocks; b++) {
            if ((b & 3) == 0) _mm_prefetch((const char *)(qs + 16 * b + ahead), _MM_HINT_T0);
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh[b])), m = _mm512_set1_ps(_cvtsh_ss(mh[b]));
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(qs + 16 * b)));
            const __m512 w0 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0x0f))), d), m);
            const __m512 w1 = _mm512_add_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), d), m);
            for (size_t t = 0; t < tokens; t++) {
                const float *xb = x + t * ldx + b * QK;
                acc[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), acc[t]));
            }
        }
        for (size_t t = 0; t < tokens; t++) {
            const float total = _mm512_reduce_add_ps(acc[t]);
            y[t * ldy + r] = accumulate ? y[t * ldy + r] + total : total;
        }
    }
}

TK_AVX512 __attribute__((always_inline)) static inline void rows_q8_0_avx512(size_t tokens, const uint8_t *w, size_t rows,
                                                                             size_t blocks, const float *x, size_t ldx,
                                                                             float *y, size_t ldy, int accumulate) {
    const size_t ahead = prefetch_distance(blocks * Q8_0_BYTES);
    for (size_t r = 0; r < rows; r++) {
        const uint8_t *row = w + r * blocks * Q8_0_BYTES;
        const int8_t *qs = (const int8_t *)(row + 2 * blocks);
        const uint16_t *dh = (const uint16_t *)row;
        for (size_t p = 0; p < 2 * blocks; p += 64) _mm_prefetch((const char *)(row + ahead + p), _MM_HINT_T0);
        __m512 acc[16];
        for (size_t t = 0; t < tokens; t++) acc[t] = _mm512_setzero_ps();
        for (size_t b = 0; b < blocks; b++) {
            _mm_prefetch((const char *)(qs + 32 * b + ahead), _MM_HINT_T0);
            const __m512 d = _mm512_set1_ps(_cvtsh_ss(dh[b]));
            const __m512 w0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 32 * b)))), d);
            const __m512 w1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(qs + 32 * b + 16)))), d);
            for (size_t t = 0; t < tokens; t++) {
                const float *xb = x + t * ldx + b * QK;
                acc[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), acc[t]));
            }
        }
        for (size_t t = 0; t < tokens; t++) {
            const float total = _mm512_reduce_add_ps(acc[t]);
            y[t * ldy + r] = accumulate ? y[t * ldy + r] + total : total;
        }
    }
}

// A constant token count per call keeps every accumulator in a register.
#define TK_TOKEN_CASES(kernel, ...) \
    switch (tokens) { \
    case 1: kernel(1, __VA_ARGS__); break; case 2: kernel(2, __VA_ARGS__); break; case 3: kernel(3, __VA_ARGS__); break; \
    case 4: kernel(4, __VA_ARGS__); break; case 5: kernel(5, __VA_ARGS__); break; case 6: kernel(6, __VA_ARGS__); break; \
    case 7: kernel(7, __VA_ARGS__); break; case 8: kernel(8, __VA_ARGS__); break; case 9: kernel(9, __VA_ARGS__); break; \
    case 10: kernel(10, __VA_ARGS__); break; case 11: kernel(11, __VA_ARGS__); break; case 12: kernel(12, __VA_ARGS__); break; \
    case 13: kernel(13, __VA_ARGS__); break; case 14: kernel(14, __VA_ARGS__); break; case 15: kernel(15, __VA_ARGS__); break; \
    default: kernel(16, __VA_ARGS__); break; \
    }

TK_AVX512 static void rows_q4_1_dispatch(size_t tokens, const uint8_t *w, size_t rows, size_t blocks, const float *x, size_t ldx,
                                         float *y, size_t ldy, int accumulate) {
    TK_TOKEN_CASES(rows_q4_1_avx512, w, rows, blocks, x, ldx, y, ldy, accumulate)
}

TK_AVX512 static void rows_q8_0_dispatch(size_t tokens, const uint8_t *w, size_t rows, size_t blocks, const float *x, size_t ldx,
                                         float *y, size_t ldy, int accumulate) {
    TK_TOKEN_CASES(rows_q8_0_avx512, w, rows, blocks, x, ldx, y, ldy, accumulate)
}
#endif

int tessera_matmul_blocks_available(void) { return tk_level() >= TK_LEVEL_AVX512; }

void tessera_matmul_q4_1(const void *w, size_t rows, size_t cols, const float *x, size_t ldx, size_t tokens, float *y,
                         size_t ldy, int accumulate) {
    const size_t blocks = cols / QK;
    for (size_t t0 = 0; t0 < tokens; t0 += 16) {
        const size_t n = tokens - t0 < 16 ? tokens - t0 : 16;
#ifdef TK_X86
        if (tk_level() >= TK_LEVEL_AVX512) { rows_q4_1_dispatch(n, w, rows, blocks, x + t0 * ldx, ldx, y + t0 * ldy, ldy, accumulate); continue; }
#endif
        for (size_t t = 0; t < n; t++) tessera_matvec_q4_1(w, rows, cols, x + (t0 + t) * ldx, y + (t0 + t) * ldy, accumulate);
    }
}

void tessera_matmul_q8_0(const void *w, size_t rows, size_t cols, const float *x, size_t ldx, size_t tokens, float *y,
                         size_t ldy, int accumulate) {
    const size_t blocks = cols / QK;
    for (size_t t0 = 0; t0 < tokens; t0 += 16) {
        const size_t n = tokens - t0 < 16 ? tokens - t0 : 16;
#ifdef TK_X86
        if (tk_level() >= TK_LEVEL_AVX512) { rows_q8_0_dispatch(n, w, rows, blocks, x + t0 * ldx, ldx, y + t0 * ldy, ldy, accumulate); continue; }
#endif
        for (size_t t = 0; t < n; t++) tessera_matvec_q8_0(w, rows, cols, x + (t0 + t) * ldx, y + (t0 + t) * ldy, accumulate);
    }
}

// ---- dispatch ----

void tessera_matvec_q4_1(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate) {
    const size_t blocks = cols / QK;
    float stack_sums[512];
    float *sums = blocks <= 512 ? stack_sums : malloc(blocks * sizeof(float));
    if (!sums) abort();  // out of memory for a few KB: nothing sensible is left to do
    block_sums(x, blocks, sums);
    const int level = tk_level();
#ifdef TK_X86
    if (level >= TK_LEVEL_AVX512) q4_1_avx512(w, rows, blocks, x, sums, y, accumulate);
    else if (level >= TK_LEVEL_AVX2) q4_1_avx2(w, rows, blocks, x, sums, y, accumulate);
    else
#endif
        q4_1_portable(w, rows, blocks, x, sums, y, accumulate);
    (void)level;
    if (sums != stack_sums) free(sums);
}

void tessera_matvec_q8_0(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate) {
    const size_t blocks = cols / QK;
    const int level = tk_level();
#ifdef TK_X86
    if (level >= TK_LEVEL_AVX512) { q8_0_avx512(w, rows, blocks, x, y, accumulate); return; }
    if (level >= TK_LEVEL_AVX2) { q8_0_avx2(w, rows, blocks, x, y, accumulate); return; }
#endif
    (void)level;
    q8_0_portable(w, rows, blocks, x, y, accumulate);
}
