// Internal to CKernels (not in include/): what the arithmetic delta's encoder (delta_symbols.c) and decoder
// (delta_decode.c) both read: 2- or 4-byte elements, and their order-preserving keys u(x) = x XOR (x negative ? all
// ones : the sign bit), for which u(new) − u(base) is the difference of the two patterns as sign-magnitude ordered
// integers.
#ifndef TESSERA_DELTA_ELEMENTS_H
#define TESSERA_DELTA_ELEMENTS_H

#include "kernel_level.h"
#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t tk_delta_element(const void *p, size_t i, int width) {
    if (width == 4) { uint32_t v; memcpy(&v, (const uint8_t *)p + 4 * i, 4); return v; }
    uint16_t v; memcpy(&v, (const uint8_t *)p + 2 * i, 2); return v;
}

static inline uint32_t tk_order_key(uint32_t x, int bits) {
    const uint32_t top = 1u << (bits - 1);
    const uint32_t all = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
    return x ^ ((x & top) ? all : top);
}

#ifdef TK_X86
TK_AVX512 static inline __m512i tk_order_key16(__m512i x, int bits) {
    const __m512i top = _mm512_set1_epi32((int)(1u << (bits - 1)));
    const __m512i all = _mm512_set1_epi32(bits == 32 ? -1 : (int)((1u << bits) - 1));
    const __mmask16 negative = _mm512_test_epi32_mask(x, top);
    return _mm512_xor_si512(x, _mm512_mask_blend_epi32(negative, top, all));
}
#endif

#endif
