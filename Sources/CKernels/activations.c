// Elementwise activations of the decoder's feed-forward layers, vectorised where the CPU allows.
#include "tessera_kernels.h"
#include <math.h>
#include "simd_exp.h"

static void silu_mul_portable(const float *gate, const float *up, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
}

#ifdef TK_X86
TK_AVX2 static void silu_mul_avx2(const float *gate, const float *up, float *out, size_t n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 g = _mm256_loadu_ps(gate + i);
        const __m256 e = exp8(_mm256_sub_ps(zero, g));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), _mm256_loadu_ps(up + i)));
    }
    silu_mul_portable(gate + i, up + i, out + i, n - i);
}
#endif

void tessera_silu_mul(const float *gate, const float *up, float *out, size_t n) {
#ifdef TK_X86
    if (tk_level() >= TK_LEVEL_AVX2) { silu_mul_avx2(gate, up, out, n); return; }
#endif
    silu_mul_portable(gate, up, out, n);
}
