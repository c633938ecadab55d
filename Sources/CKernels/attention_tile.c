// Prefill attention on tiles of query rows (see tessera_kernels.h). Scores are a small matrix product against the
// transposed keys (each key column loaded once per tile, one broadcast-FMA per row), then a masked softmax per
// row, then the value product (each value row loaded once per tile). Portable C, or AVX2/FMA where the CPU has it.
#include "tessera_kernels.h"
#include <math.h>
#include "kernel_level.h"

enum { MAX_ROWS = 12 };

static size_t tile_lo(size_t rows, const size_t *rg) {
    size_t lo = (size_t)-1;
    for (size_t r = 0; r < rows; r++) {
        size_t first = rg[4 * r] < rg[4 * r + 1] ? rg[4 * r] : rg[4 * r + 2];
        if (first < lo) lo = first;
    }
    return lo;
}

static size_t tile_hi(size_t rows, const size_t *rg) {
    size_t hi = 0;
    for (size_t r = 0; r < rows; r++) if (rg[4 * r + 3] > hi) hi = rg[4 * r + 3];
    return hi;
}

static int visible(const size_t *rg, size_t j) { return (j >= rg[0] && j < rg[1]) || (j >= rg[2] && j < rg[3]); }

// Softmax of row `s` (keys lo + i) over its visible keys; masked entries become exactly 0. Returns 1 / sum.
static float softmax_row(float *s, size_t lo, size_t n, const size_t *rg) {
    float maxv = -INFINITY;
    for (size_t i = 0; i < n; i++) if (visible(rg, lo + i) && s[i] > maxv) maxv = s[i];
    float sum = 0;
    for (size_t i = 0; i < n; i++) {
        s[i] = visible(rg, lo + i) ? expf(s[i] - maxv) : 0.0f;
        sum += s[i];
    }
    return 1.0f / sum;
}

static void tile_portable(size_t rows, const float *const *q, float *const *out, const size_t *rg,
                          const float *kt, size_t ldkt, const float *values, size_t d, float scale, float *scores) {
    const size_t lo = tile_lo(rows, rg), n = tile_hi(rows, rg) - lo;
    for (size_t r = 0; r < rows; r++) {
        float *s = scores + r * (n + 8);
        for (size_t i = 0; i < n; i++) {
            float dot = 0;
            for (size_t c = 0; c < d; c++) dot += q[r][c] * kt[c * ldkt + lo + i];
            s[i] = dot * scale;
        }
        const float inv = softmax_row(s, lo, n, rg + 4 * r);
        for (size_t c = 0; c < d; c++) {
            float acc = 0;
            for (size_t i = 0; i < n; i++) acc += s[i] * values[(lo + i) * d + c];
            out[r][c] = acc * inv;
        }
    }
}

#ifdef TK_X86
#include "simd_exp.h"

// Register pressure decides this kernel's speed: with a row pointer per query row the twelve pointers spill and
// every broadcast reloads one from the stack. So the tile's queries are first copied, transposed, into one buffer
// (qt[c][r]) and the probabilities likewise (pt[i][r]): every broadcast is then base + constant offset.
enum { MAX_HEAD_DIM = 256 };

TK_AVX2 __attribute__((always_inline)) static inline void tile_avx2_rows(size_t rows, const float *const *q, float *const *out, const size_t *rg,
                              const float *kt, size_t ldkt, const float *values, size_t d, float scale, float *scores) {
    const size_t lo = tile_lo(rows, rg), n = tile_hi(rows, rg) - lo, stride = n + 8;
    float *pt = scores + MAX_ROWS * stride;  // [n][MAX_ROWS]
    float qt[MAX_HEAD_DIM * MAX_ROWS];
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < d; c++) qt[c * MAX_ROWS + r] = q[r][c] * scale;
    // Scores: eight keys at a time, one accumulator per row (keys_t is zero-padded, so the last group may overrun).
    for (size_t i = 0; i < n; i += 8) {
        __m256 acc[MAX_ROWS];
        for (size_t r = 0; r < rows; r++) acc[r] = _mm256_setzero_ps();
        const float *col = kt + lo + i;
        const float *qc = qt;
        for (size_t c = 0; c < d; c++, qc += MAX_ROWS) {
            const __m256 k8 = _mm256_loadu_ps(col + c * ldkt);
            for (size_t r = 0; r < rows; r++) acc[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(qc + r), k8, acc[r]);
        }
        for (size_t r = 0; r < rows; r++) _mm256_storeu_ps(scores + r * stride + i, acc[r]);
    }
    // Softmax per row over its two visible ranges (relative to lo); exact zeros elsewhere. Probabilities are left
    // unnormalised and written transposed into pt; the 1 / sum is applied to the output.
    float inv[MAX_ROWS];
    for (size_t r = 0; r < rows; r++) {
        float *s = scores + r * stride;
        const size_t *g = rg + 4 * r;
        size_t bounds[4] = {0, 0, g[2] - lo, g[3] - lo};
        if (g[0] < g[1]) { bounds[0] = g[0] - lo; bounds[1] = g[1] - lo; }
        __m256 m8 = _mm256_set1_ps(-INFINITY);
        float maxv = -INFINITY;
        for (int part = 0; part < 2; part++) {
            size_t i = bounds[2 * part];
            for (; i + 8 <= bounds[2 * part + 1]; i += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(s + i));
            for (; i < bounds[2 * part + 1]; i++) if (s[i] > maxv) maxv = s[i];
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, m8);
        for (int k = 0; k < 8; k++) if (lanes[k] > maxv) maxv = lanes[k];
        const __m256 mv = _mm256_set1_ps(maxv);
        __m256 sum8 = _mm256_setzero_ps();
        float sum = 0;
        size_t zero_from = 0;
        for (int part = 0; part < 2; part++) {
            size_t i = bounds[2 * part], end = bounds[2 * part + 1];
            for (size_t z = zero_from; z < i; z++) s[z] = 0.0f;
            for (; i + 8 <= end; i += 8) {
                const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), mv));
                _mm256_storeu_ps(s + i, p);
                sum8 = _mm256_add_ps(sum8, p);
            }
            for (; i < end; i++) { s[i] = expf(s[i] - maxv); sum += s[i]; }
            if (end > zero_from) zero_from = end;
        }
        for (size_t z = zero_from; z < n; z++) s[z] = 0.0f;
        _mm256_storeu_ps(lanes, sum8);
        for (int k = 0; k < 8; k++) sum += lanes[k];
        inv[r] = 1.0f / sum;
        for (size_t i = 0; i < n; i++) pt[i * MAX_ROWS + r] = s[i];
    }
    // Values: eight output dimensions at a time, each value row slice loaded once for all rows.
    for (size_t c = 0; c < d; c += 8) {
        __m256 o[MAX_ROWS];
        for (size_t r = 0; r < rows; r++) o[r] = _mm256_setzero_ps();
        const float *v = values + lo * d + c;
        const float *pi = pt;
        for (size_t i = 0; i < n; i++, v += d, pi += MAX_ROWS) {
            const __m256 v8 = _mm256_loadu_ps(v);
            for (size_t r = 0; r < rows; r++) o[r] = _mm256_fmadd_ps(_mm256_broadcast_ss(pi + r), v8, o[r]);
        }
        for (size_t r = 0; r < rows; r++) _mm256_storeu_ps(out[r] + c, _mm256_mul_ps(o[r], _mm256_set1_ps(inv[r])));
    }
}

// With a constant row count the compiler keeps every row's accumulator in a register.
TK_AVX2 static void tile_avx2(size_t rows, const float *const *q, float *const *out, const size_t *rg,
                              const float *kt, size_t ldkt, const float *values, size_t d, float scale, float *scores) {
    switch (rows) {
    case 12: tile_avx2_rows(12, q, out, rg, kt, ldkt, values, d, scale, scores); break;
    case 8: tile_avx2_rows(8, q, out, rg, kt, ldkt, values, d, scale, scores); break;
    case 4: tile_avx2_rows(4, q, out, rg, kt, ldkt, values, d, scale, scores); break;
    default: tile_avx2_rows(rows, q, out, rg, kt, ldkt, values, d, scale, scores); break;
    }
}
#endif

void tessera_attend_tile(size_t rows, const float *const *q, float *const *out, const size_t *ranges,
                         const float *keys_t, size_t ld_keys_t, const float *values, size_t head_dim,
                         float scale, float *scores) {
    if (rows == 0) return;
#ifdef TK_X86
    if (head_dim % 8 == 0 && head_dim <= MAX_HEAD_DIM && rows <= MAX_ROWS && tk_level() >= TK_LEVEL_AVX2) {
        tile_avx2(rows, q, out, ranges, keys_t, ld_keys_t, values, head_dim, scale, scores);
        return;
    }
#endif
    tile_portable(rows, q, out, ranges, keys_t, ld_keys_t, values, head_dim, scale, scores);
}
