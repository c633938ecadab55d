// Pass 1 of TesseraMath's magnitude select when a sample has guessed the buckets that hold the rank: instead of a
// histogram of every key's high bits (a scattered increment per element), count the keys above the window and copy
// the keys inside it. The counts and the copied keys are all the select needs when the guess is right, and the AVX-512
// loop handles sixteen keys with a few compares, two population counts and one in-register compress.
#include "tessera_kernels.h"
#include "kernel_level.h"

static inline uint32_t magnitude_key(const float *x, size_t i) {
    uint32_t bits;
    __builtin_memcpy(&bits, x + i, 4);
    return bits & 0x7FFFFFFFu;
}

static size_t window_portable(const float *x, size_t start, size_t n, uint32_t low, uint32_t width, uint32_t *out,
                              size_t count, size_t capacity, size_t *above) {
    const uint32_t high = low + width;
    size_t a = 0;
    for (size_t i = start; i < n; i++) {
        const uint32_t k = magnitude_key(x, i), b = k >> 16;
        a += b > high;
        if (b - low <= width) {
            if (count < capacity) out[count] = k;
            count++;
        }
    }
    *above += a;
    return count;
}

#ifdef TK_X86
TK_AVX512 static size_t window_avx512(const float *x, size_t n, uint32_t low, uint32_t width, uint32_t *out, size_t capacity,
                                      size_t *above) {
    const __m512i magnitude = _mm512_set1_epi32(0x7FFFFFFF), lowv = _mm512_set1_epi32((int)low);
    const __m512i widthv = _mm512_set1_epi32((int)width), highv = _mm512_set1_epi32((int)(low + width));
    size_t count = 0, a = 0, i = 0;
    // Sixteen slots are written per step, so the vector loop stops while they all fit under `capacity`.
    for (; i + 16 <= n && count + 16 <= capacity; i += 16) {
        const __m512i k = _mm512_and_si512(_mm512_loadu_si512((const void *)(x + i)), magnitude);
        const __m512i b = _mm512_srli_epi32(k, 16);
        const __mmask16 in = _mm512_cmple_epu32_mask(_mm512_sub_epi32(b, lowv), widthv);
        const __mmask16 over = _mm512_cmpgt_epu32_mask(b, highv);
        _mm512_storeu_si512((void *)(out + count), _mm512_maskz_compress_epi32(in, k));
        count += (size_t)__builtin_popcount(in);
        a += (size_t)__builtin_popcount(over);
    }
    *above += a;
    return window_portable(x, i, n, low, width, out, count, capacity, above);
}
#endif

size_t tessera_magnitude_window(const float *x, size_t n, uint32_t low, uint32_t width, uint32_t *out, size_t capacity,
                                size_t *above) {
    *above = 0;
#ifdef TK_X86
    if (tk_level() >= TK_LEVEL_AVX512) return window_avx512(x, n, low, width, out, capacity, above);
#endif
    return window_portable(x, 0, n, low, width, out, 0, capacity, above);
}
