// The element analysis of the arithmetic delta's encoder (TesseraStore's StaticDeltaCoder: `split` and `count`, and
// `DeltaSymbols.analyse` for what a symbol is). Each element's difference from its base element, both read as
// sign-magnitude ordered integers, becomes a symbol (its bit length and the `below` bits under its leading one) and
// raw bits (the sign, then the bits left under the symbol's).
//
// The difference is computed on the order-preserving unsigned keys of the two patterns (x ^ 0x80..0 for a positive
// pattern, ~x for a negative one): u(n) − u(b) equals ordered(n) − ordered(b), and its magnitude, max − min, fits the
// element's width, so 32-bit lanes hold every case. The portable loop and the AVX-512 one compute
// the same values bit for bit (tests compare them with the Swift definition on every kind of pattern).
#include "tessera_kernels.h"
#include "delta_elements.h"

// Block of elements analysed at once before their raw bits are packed serially.
#define TK_DELTA_BLOCK 256

static inline int bit_length32(uint32_t m) { return m == 0 ? 0 : 32 - __builtin_clz(m); }

// One element (portable): symbol, raw bits and their count.
static inline void analyse_one(uint32_t n, uint32_t b, int bits, int below, uint8_t *symbol, uint32_t *raw, uint8_t *count) {
    const uint32_t un = tk_order_key(n, bits), ub = tk_order_key(b, bits);
    const uint32_t m = un >= ub ? un - ub : ub - un;
    const uint32_t sign = un < ub;
    const int k = bit_length32(m);
    const int exact = k <= below + 1;
    const int low = exact ? 0 : k - 1 - below;
    const uint32_t coded = ((uint32_t)(k - below) << below) | ((m >> low) & ((1u << below) - 1));
    *symbol = (uint8_t)(exact ? m : coded);
    *raw = ((m & ((1u << low) - 1)) << 1) | sign;
    *count = (uint8_t)(m == 0 ? 0 : low + 1);
}

static void analyse_portable(const void *new_values, const void *base, size_t n, int width, int below,
                             uint8_t *symbols, uint32_t *raw, uint8_t *counts) {
    const int bits = 8 * width;
    for (size_t i = 0; i < n; i++)
        analyse_one(tk_delta_element(new_values, i, width), tk_delta_element(base, i, width), bits, below, symbols + i, raw + i, counts + i);
}

#ifdef TK_X86
TK_AVX512 static void analyse_avx512(const void *new_values, const void *base, size_t n, int width, int below,
                                       uint8_t *symbols, uint32_t *raw, uint8_t *counts) {
    const int bits = 8 * width;
    const __m512i one = _mm512_set1_epi32(1), zero = _mm512_setzero_si512();
    const __m512i belowv = _mm512_set1_epi32(below), below_mask = _mm512_set1_epi32((1 << below) - 1);
    const __m512i exact_limit = _mm512_set1_epi32(below + 1), k_offset = _mm512_set1_epi32(1 + below);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512i nv, bv;
        if (width == 4) {
            nv = _mm512_loadu_si512((const uint8_t *)new_values + 4 * i);
            bv = _mm512_loadu_si512((const uint8_t *)base + 4 * i);
        } else {
            nv = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint8_t *)new_values + 2 * i)));
            bv = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint8_t *)base + 2 * i)));
        }
        const __m512i un = tk_order_key16(nv, bits), ub = tk_order_key16(bv, bits);
        const __m512i hi = _mm512_max_epu32(un, ub), lo = _mm512_min_epu32(un, ub);
        const __m512i m = _mm512_sub_epi32(hi, lo);
        const __mmask16 negative = _mm512_cmpneq_epu32_mask(hi, un);
        const __m512i k = _mm512_sub_epi32(_mm512_set1_epi32(32), _mm512_lzcnt_epi32(m));
        const __mmask16 exact = _mm512_cmple_epi32_mask(k, exact_limit);
        const __m512i low = _mm512_max_epi32(_mm512_sub_epi32(k, k_offset), zero);
        const __m512i coded = _mm512_or_si512(_mm512_sllv_epi32(_mm512_sub_epi32(k, belowv), belowv),
                                              _mm512_and_si512(_mm512_srlv_epi32(m, low), below_mask));
        const __m512i symbol = _mm512_mask_blend_epi32(exact, coded, m);
        const __m512i low_bits = _mm512_and_si512(m, _mm512_sub_epi32(_mm512_sllv_epi32(one, low), one));
        const __m512i rawv = _mm512_mask_or_epi32(_mm512_slli_epi32(low_bits, 1), negative, _mm512_slli_epi32(low_bits, 1), one);
        const __mmask16 nonzero = _mm512_test_epi32_mask(m, m);
        const __m512i count = _mm512_maskz_add_epi32(nonzero, low, one);
        _mm_storeu_si128((__m128i *)(symbols + i), _mm512_cvtepi32_epi8(symbol));
        _mm512_storeu_si512(raw + i, rawv);
        _mm_storeu_si128((__m128i *)(counts + i), _mm512_cvtepi32_epi8(count));
    }
    if (i < n) analyse_portable((const uint8_t *)new_values + width * i, (const uint8_t *)base + width * i, n - i, width, below,
                                symbols + i, raw + i, counts + i);
}

#endif

static void analyse(const void *new_values, const void *base, size_t n, int width, int below,
                    uint8_t *symbols, uint32_t *raw, uint8_t *counts) {
#ifdef TK_X86
    if (tk_level() >= TK_LEVEL_AVX512) { analyse_avx512(new_values, base, n, width, below, symbols, raw, counts); return; }
#endif
    analyse_portable(new_values, base, n, width, below, symbols, raw, counts);
}

void tessera_delta_split(const void *new_values, const void *base, size_t n, int width, int below,
                         uint8_t *symbols, tessera_bit_writer *writer) {
    uint32_t raw[TK_DELTA_BLOCK];
    uint8_t counts[TK_DELTA_BLOCK];
    uint64_t acc = writer->accumulator;
    int64_t filled = writer->filled, position = writer->position;
    uint8_t *out = writer->out;
    for (size_t start = 0; start < n; start += TK_DELTA_BLOCK) {
        const size_t len = n - start < TK_DELTA_BLOCK ? n - start : TK_DELTA_BLOCK;
        analyse((const uint8_t *)new_values + width * start, (const uint8_t *)base + width * start, len, width, below,
                symbols + start, raw, counts);
        // LSB-first: 8 bytes stored every time (the buffer has padding after it), advanced by the whole bytes filled.
        for (size_t j = 0; j < len; j++) {
            acc |= (uint64_t)raw[j] << filled;
            filled += counts[j];
            memcpy(out + position, &acc, 8);
            const int64_t bytes = filled >> 3;
            position += bytes;
            acc >>= bytes * 8;  // at most 4 whole bytes: filled stays under 8 + 31 bits
            filled &= 7;
        }
    }
    writer->accumulator = acc;
    writer->filled = filled;
    writer->position = position;
}

void tessera_delta_count(const void *new_values, const void *base, size_t n, int width, int below, size_t alphabet,
                         uint32_t *histogram) {
    uint8_t symbols[TK_DELTA_BLOCK];
    uint32_t raw[TK_DELTA_BLOCK];
    uint8_t counts[TK_DELTA_BLOCK];
    const int shift = 8 * width - 9;
    for (size_t start = 0; start < n; start += TK_DELTA_BLOCK) {
        const size_t len = n - start < TK_DELTA_BLOCK ? n - start : TK_DELTA_BLOCK;
        const uint8_t *b = (const uint8_t *)base + width * start;
        analyse((const uint8_t *)new_values + width * start, b, len, width, below, symbols, raw, counts);
        for (size_t j = 0; j < len; j++) {
            const uint32_t context = (tk_delta_element(b, j, width) >> shift) & 0xFF;
            histogram[context * alphabet + symbols[j]] += 1;
        }
    }
}
