// The fused multiply-add accumulation of mergekit's linear merge (torch's addcmul_ fuses it): o[i] = fma(x[i], w, o[i]),
// rounded once. Every path fuses, so the result is the same at every instruction-set level.
#include "tessera_kernels.h"
#include <math.h>
#include "kernel_level.h"

static void fma_accumulate_portable(float *o, const float *x, float w, size_t n) {
    for (size_t i = 0; i < n; i++) o[i] = fmaf(x[i], w, o[i]);
}

#ifdef TK_X86
TK_AVX2 static void fma_accumulate_avx2(float *o, const float *x, float w, size_t n) {
    const __m256 wv = _mm256_set1_ps(w);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_fmadd_ps(_mm256_loadu_ps(x + i), wv, _mm256_loadu_ps(o + i)));
    for (; i < n; i++) o[i] = fmaf(x[i], w, o[i]);
}
#endif

void tessera_fma_accumulate(float *o, const float *x, float w, size_t n) {
#ifdef TK_X86
    if (tk_level() >= TK_LEVEL_AVX2) { fma_accumulate_avx2(o, x, w, n); return; }
#endif
    fma_accumulate_portable(o, x, w, n);
}
