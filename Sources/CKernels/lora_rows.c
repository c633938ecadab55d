// One token through LoRA factors and router vectors (decoding): a few float32 rows dotted with one input, and a few
// rows scaled into one output. The rows live in L3 or memory, not L1, so the kernels read several rows at once (more
// loads in flight), in the widest vectors the CPU has. Sums are float32 in any order; callers accept the last bits of
// a float32 dot product differing between instruction sets.
#include "tessera_kernels.h"
#include "kernel_level.h"

static void dot_rows_portable(const float *a, size_t lda, size_t rows, const float *x, size_t n, float *out) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = a + r * lda;
        float s = 0;
        for (size_t i = 0; i < n; i++) s += row[i] * x[i];
        out[r] = s;
    }
}

static void axpy_rows_portable(const float *b, size_t ldb, size_t rows, const float *coef, float *y, size_t n) {
    for (size_t r = 0; r < rows; r++) {
        const float *row = b + r * ldb;
        const float c = coef[r];
        for (size_t i = 0; i < n; i++) y[i] += c * row[i];
    }
}

#ifdef TK_X86
TK_AVX2 static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

TK_AVX2 static void dot_rows_avx2(const float *a, size_t lda, size_t rows, const float *x, size_t n, float *out) {
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = a + r * lda, *r1 = r0 + lda, *r2 = r1 + lda, *r3 = r2 + lda;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            const __m256 xv = _mm256_loadu_ps(x + i);
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0 + i), xv, s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1 + i), xv, s1);
            s2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2 + i), xv, s2);
            s3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3 + i), xv, s3);
        }
        float t0 = hsum256(s0), t1 = hsum256(s1), t2 = hsum256(s2), t3 = hsum256(s3);
        for (; i < n; i++) { t0 += r0[i] * x[i]; t1 += r1[i] * x[i]; t2 += r2[i] * x[i]; t3 += r3[i] * x[i]; }
        out[r] = t0; out[r + 1] = t1; out[r + 2] = t2; out[r + 3] = t3;
    }
    dot_rows_portable(a + r * lda, lda, rows - r, x, n, out + r);
}

TK_AVX2 static void axpy_rows_avx2(const float *b, size_t ldb, size_t rows, const float *coef, float *y, size_t n) {
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = b + r * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
        const __m256 c0 = _mm256_set1_ps(coef[r]), c1 = _mm256_set1_ps(coef[r + 1]), c2 = _mm256_set1_ps(coef[r + 2]),
                     c3 = _mm256_set1_ps(coef[r + 3]);
        size_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m256 v = _mm256_loadu_ps(y + i);
            v = _mm256_fmadd_ps(c0, _mm256_loadu_ps(r0 + i), v);
            v = _mm256_fmadd_ps(c1, _mm256_loadu_ps(r1 + i), v);
            v = _mm256_fmadd_ps(c2, _mm256_loadu_ps(r2 + i), v);
            v = _mm256_fmadd_ps(c3, _mm256_loadu_ps(r3 + i), v);
            _mm256_storeu_ps(y + i, v);
        }
        for (; i < n; i++) y[i] += coef[r] * r0[i] + coef[r + 1] * r1[i] + coef[r + 2] * r2[i] + coef[r + 3] * r3[i];
    }
    axpy_rows_portable(b + r * ldb, ldb, rows - r, coef + r, y, n);
}

TK_AVX512 static void dot_rows_avx512(const float *a, size_t lda, size_t rows, const float *x, size_t n, float *out) {
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = a + r * lda, *r1 = r0 + lda, *r2 = r1 + lda, *r3 = r2 + lda;
        __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            const __m512 xv = _mm512_loadu_ps(x + i);
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(r0 + i), xv, s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(r1 + i), xv, s1);
            s2 = _mm512_fmadd_ps(_mm512_loadu_ps(r2 + i), xv, s2);
            s3 = _mm512_fmadd_ps(_mm512_loadu_ps(r3 + i), xv, s3);
        }
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            const __m512 xv = _mm512_maskz_loadu_ps(m, x + i);
            s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r0 + i), xv, s0);
            s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r1 + i), xv, s1);
            s2 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r2 + i), xv, s2);
            s3 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, r3 + i), xv, s3);
        }
        out[r] = _mm512_reduce_add_ps(s0); out[r + 1] = _mm512_reduce_add_ps(s1);
        out[r + 2] = _mm512_reduce_add_ps(s2); out[r + 3] = _mm512_reduce_add_ps(s3);
    }
    for (; r < rows; r++) {
        const float *row = a + r * lda;
        __m512 s = _mm512_setzero_ps();
        size_t i = 0;
        for (; i + 16 <= n; i += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(row + i), _mm512_loadu_ps(x + i), s);
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, row + i), _mm512_maskz_loadu_ps(m, x + i), s);
        }
        out[r] = _mm512_reduce_add_ps(s);
    }
}

TK_AVX512 static void axpy_rows_avx512(const float *b, size_t ldb, size_t rows, const float *coef, float *y, size_t n) {
    size_t r = 0;
    for (; r + 4 <= rows; r += 4) {
        const float *r0 = b + r * ldb, *r1 = r0 + ldb, *r2 = r1 + ldb, *r3 = r2 + ldb;
        const __m512 c0 = _mm512_set1_ps(coef[r]), c1 = _mm512_set1_ps(coef[r + 1]), c2 = _mm512_set1_ps(coef[r + 2]),
                     c3 = _mm512_set1_ps(coef[r + 3]);
        size_t i = 0;
        for (; i + 16 <= n; i += 16) {
            __m512 v = _mm512_loadu_ps(y + i);
            v = _mm512_fmadd_ps(c0, _mm512_loadu_ps(r0 + i), v);
            v = _mm512_fmadd_ps(c1, _mm512_loadu_ps(r1 + i), v);
            v = _mm512_fmadd_ps(c2, _mm512_loadu_ps(r2 + i), v);
            v = _mm512_fmadd_ps(c3, _mm512_loadu_ps(r3 + i), v);
            _mm512_storeu_ps(y + i, v);
        }
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, y + i);
            v = _mm512_fmadd_ps(c0, _mm512_maskz_loadu_ps(m, r0 + i), v);
            v = _mm512_fmadd_ps(c1, _mm512_maskz_loadu_ps(m, r1 + i), v);
            v = _mm512_fmadd_ps(c2, _mm512_maskz_loadu_ps(m, r2 + i), v);
            v = _mm512_fmadd_ps(c3, _mm512_maskz_loadu_ps(m, r3 + i), v);
            _mm512_mask_storeu_ps(y + i, m, v);
        }
    }
    for (; r < rows; r++) {
        const float *row = b + r * ldb;
        const __m512 c = _mm512_set1_ps(coef[r]);
        size_t i = 0;
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(c, _mm512_loadu_ps(row + i), _mm512_loadu_ps(y + i)));
        if (i < n) {
            const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
            _mm512_mask_storeu_ps(y + i, m, _mm512_fmadd_ps(c, _mm512_maskz_loadu_ps(m, row + i), _mm512_maskz_loadu_ps(m, y + i)));
        }
    }
}
#endif

void tessera_dot_rows(const float *a, size_t lda, size_t rows, const float *x, size_t n, float *out) {
#ifdef TK_X86
    const int level = tk_level();
    if (level >= TK_LEVEL_AVX512) { dot_rows_avx512(a, lda, rows, x, n, out); return; }
    if (level >= TK_LEVEL_AVX2) { dot_rows_avx2(a, lda, rows, x, n, out); return; }
#endif
    dot_rows_portable(a, lda, rows, x, n, out);
}

void tessera_axpy_rows(const float *b, size_t ldb, size_t rows, const float *coef, float *y, size_t n) {
#ifdef TK_X86
    const int level = tk_level();
    if (level >= TK_LEVEL_AVX512) { axpy_rows_avx512(b, ldb, rows, coef, y, n); return; }
    if (level >= TK_LEVEL_AVX2) { axpy_rows_avx2(b, ldb, rows, coef, y, n); return; }
#endif
    axpy_rows_portable(b, ldb, rows, coef, y, n);
}
