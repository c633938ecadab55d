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

// The largest of n floats (-inf for none). Swift's SIMD pointwiseMax compiled to a compare and branch per lane
// through the stack, which made the maximum four fifths of the attention softmax in training.
static float max_portable(const float *x, size_t n) {
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++) if (x[i] > m) m = x[i];
    return m;
}

#ifdef TK_X86
TK_AVX512 static float max_avx512(const float *x, size_t n) {
    __m512 a = _mm512_set1_ps(-INFINITY), b = a;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a = _mm512_max_ps(a, _mm512_loadu_ps(x + i));
        b = _mm512_max_ps(b, _mm512_loadu_ps(x + i + 16));
    }
    for (; i + 16 <= n; i += 16) a = _mm512_max_ps(a, _mm512_loadu_ps(x + i));
    const float m = _mm512_reduce_max_ps(_mm512_max_ps(a, b)), tail = max_portable(x + i, n - i);
    return tail > m ? tail : m;
}

TK_AVX2 static float max_avx2(const float *x, size_t n) {
    __m256 a = _mm256_set1_ps(-INFINITY);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) a = _mm256_max_ps(a, _mm256_loadu_ps(x + i));
    float lanes[8];
    _mm256_storeu_ps(lanes, a);
    float m = max_portable(x + i, n - i);
    for (int k = 0; k < 8; k++) if (lanes[k] > m) m = lanes[k];
    return m;
}
#endif

float tessera_max_f32(const float *x, size_t n) {
#ifdef TK_X86
    if (tk_level() >= TK_LEVEL_AVX512) return max_avx512(x, n);
    if (tk_level() >= TK_LEVEL_AVX2) return max_avx2(x, n);
#endif
    return max_portable(x, n);
}
