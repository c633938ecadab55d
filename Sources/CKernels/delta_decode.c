// The arithmetic delta's chunk decoder (TesseraStore's StaticDeltaCoder, payload versions 2 and 3): four interleaved
// rANS states over one stream of 16-bit words give each element's symbol under its base element's context table;
// the symbol and the element's raw bits give the difference of the two patterns as ordered integers.
//
// Two passes per block of elements. The first runs the rANS states alone and keeps the symbols: its dependency chains
// are the states' (a table load, a multiply, an add, a refill), four of them side by side. The second turns symbols,
// raw bits and base elements into values, sixteen at a time with AVX-512: what the symbol fixes (the magnitude's
// leading bits, the raw bit count) is arithmetic on the symbol, each element's raw bits start at a prefix sum of the
// counts, and the difference is added to the base's order-preserving key (x ^ 0x80..0 for a positive pattern, ~x for
// a negative one) with its overflow checked. The portable second pass computes the same, element by element.
// `StaticDeltaCoder.decodeReference` in Swift is the definition; tests compare the two on valid and damaged streams.
//
// Every read of the untrusted streams is clamped to their lengths; both buffers are followed by 8 readable bytes
// (the caller's padding). A damaged stream ends as an error, never as an out-of-bounds access: the caller checks the
// return value, which is 0 unless every word and raw bit was used exactly, every state returned to its start and every
// value fits the type.
#include "tessera_kernels.h"
#include "delta_elements.h"

#define TK_DECODE_BLOCK 1024
#define TK_RANS_LOWER (1u << 16)

static inline uint32_t load_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t load_u16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint64_t load_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

typedef struct {
    const uint8_t *stream;
    size_t position, end;
} word_reader;

// One rANS step of state x for the element whose base is b: its symbol.
static inline uint8_t rans_step(uint32_t *x, uint32_t b, int shift, const uint8_t *table_of_context, const uint32_t *slots,
                                word_reader *words) {
    const uint32_t e = slots[((uint32_t)table_of_context[(b >> shift) & 0xFF] << 12) | (*x & 0xFFF)];
    uint32_t v = (e & 0x1FFF) * (*x >> 12) + ((e >> 13) & 0xFFF);
    // The word is loaded whether or not it is needed (from the padding once the stream is used up).
    const size_t at = words->position < words->end ? words->position : words->end;
    const uint32_t word = load_u16(words->stream + at);
    const int need = v < TK_RANS_LOWER;
    v = need ? (v << 16) | word : v;
    words->position += need ? 2 : 0;
    *x = v;
    return (uint8_t)(e >> 25);
}

// The symbols of elements start..<start + n (start a multiple of 4: element i uses state i mod 4).
static inline __attribute__((always_inline)) void decode_symbols(uint32_t *x, const void *base, size_t start, size_t n, int width,
                                                                 const uint8_t *table_of_context, const uint32_t *slots,
                                                                 word_reader *reader, uint8_t *symbols) {
    const int shift = 8 * width - 9;
    uint32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3];
    word_reader words = *reader;
    size_t j = 0;
    for (; j + 4 <= n; j += 4) {
        const size_t g = start + j;
        symbols[j] = rans_step(&x0, tk_delta_element(base, g, width), shift, table_of_context, slots, &words);
        symbols[j + 1] = rans_step(&x1, tk_delta_element(base, g + 1, width), shift, table_of_context, slots, &words);
        symbols[j + 2] = rans_step(&x2, tk_delta_element(base, g + 2, width), shift, table_of_context, slots, &words);
        symbols[j + 3] = rans_step(&x3, tk_delta_element(base, g + 3, width), shift, table_of_context, slots, &words);
    }
    for (; j < n; j++) {
        uint32_t *state = (j & 3) == 0 ? &x0 : (j & 3) == 1 ? &x1 : &x2;
        symbols[j] = rans_step(state, tk_delta_element(base, start + j, width), shift, table_of_context, slots, &words);
    }
    x[0] = x0; x[1] = x1; x[2] = x2; x[3] = x3;
    *reader = words;
}

// What a symbol fixes (`DeltaSymbols`): the raw bits stored for it, and the magnitude's bits it holds, in place.
static inline uint32_t raw_count_of(uint32_t s, int below) {
    const uint32_t exact = 2u << below;
    return s == 0 ? 0 : (s < exact ? 1 : s >> below);
}

static inline uint32_t magnitude_high_of(uint32_t s, int below) {
    const uint32_t exact = 2u << below;
    if (s < exact) return s;
    return (((1u << below) | (s & ((1u << below) - 1))) << ((s >> below) - 1));
}

typedef struct {
    const uint8_t *raw;
    size_t length;
    size_t bit_position;
} bit_reader;

// The value of one element from its symbol, its raw bits and its base; `bad` collects values outside the type.
static inline uint32_t rebuild(uint32_t s, uint32_t b, int width, int below, bit_reader *rr, uint32_t *bad) {
    const uint32_t n = raw_count_of(s, below);
    const size_t byte = rr->bit_position >> 3;
    const uint64_t word = load_u64(rr->raw + (byte < rr->length ? byte : rr->length));
    const uint64_t r = (word >> (rr->bit_position & 7)) & ((1ull << n) - 1);
    rr->bit_position += n;
    const int64_t m = (int64_t)(magnitude_high_of(s, below) | (uint32_t)(r >> 1));
    const int bits = 8 * width;
    const uint32_t top = 1u << (bits - 1);
    const uint32_t all = bits == 32 ? 0xFFFFFFFFu : (1u << bits) - 1;
    const uint32_t key = tk_order_key(b, bits);
    const int64_t k = (int64_t)key + ((r & 1) ? -m : m);
    *bad |= (k < 0 || k > (int64_t)all) ? 1u : 0u;
    const uint32_t u = (uint32_t)k;
    return (u & top) ? (u ^ top) : (~u & all);
}

static void rebuild_portable(const uint8_t *symbols, const void *base, void *out, size_t n, int width, int below,
                             bit_reader *rr, uint32_t *bad) {
    for (size_t i = 0; i < n; i++) {
        const uint32_t v = rebuild(symbols[i], tk_delta_element(base, i, width), width, below, rr, bad);
        if (width == 4) memcpy((uint8_t *)out + 4 * i, &v, 4);
        else { const uint16_t h = (uint16_t)v; memcpy((uint8_t *)out + 2 * i, &h, 2); }
    }
}

#ifdef TK_X86
TK_AVX512 static void rebuild_avx512(const uint8_t *symbols, const void *base, void *out, size_t n, int width, int below,
                                     bit_reader *rr, uint32_t *bad) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1);
    const __m512i belowv = _mm512_set1_epi32(below), low_mask = _mm512_set1_epi32((1 << below) - 1);
    const __m512i lead = _mm512_set1_epi32(1 << below), exact = _mm512_set1_epi32(2 << below);
    const int bits = 8 * width;
    const __m512i top = _mm512_set1_epi32((int)(1u << (bits - 1)));
    const __m512i all = _mm512_set1_epi32(bits == 32 ? -1 : (int)((1u << bits) - 1));
    const __m512i length = _mm512_set1_epi32((int)rr->length);
    const __m512i one64 = _mm512_set1_epi64(1);
    __mmask16 bad_lanes = 0;
    size_t i = 0;
    // Bit positions are kept in 32-bit lanes: a chunk's raw bits are far fewer than 2^31 (the caller bounds it).
    uint32_t position = (uint32_t)rr->bit_position;
    for (; i + 16 <= n; i += 16) {
        const __m512i s = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(symbols + i)));
        const __mmask16 small = _mm512_cmplt_epu32_mask(s, exact);
        const __m512i shifted = _mm512_srlv_epi32(s, belowv);
        // Raw bit counts: 0 for symbol 0, 1 (the sign) below `exact`, else s >> below.
        const __m512i count = _mm512_mask_blend_epi32(small, shifted, _mm512_min_epu32(s, one));
        // Leading magnitude bits: s itself below `exact`, else (2^below | low bits of s) << ((s >> below) - 1).
        const __m512i high = _mm512_mask_blend_epi32(small,
            _mm512_sllv_epi32(_mm512_or_si512(lead, _mm512_and_si512(s, low_mask)), _mm512_sub_epi32(shifted, one)), s);
        // Exclusive prefix sum of the counts: each lane's first raw bit.
        __m512i inclusive = count;
        inclusive = _mm512_add_epi32(inclusive, _mm512_alignr_epi32(inclusive, zero, 15));
        inclusive = _mm512_add_epi32(inclusive, _mm512_alignr_epi32(inclusive, zero, 14));
        inclusive = _mm512_add_epi32(inclusive, _mm512_alignr_epi32(inclusive, zero, 12));
        inclusive = _mm512_add_epi32(inclusive, _mm512_alignr_epi32(inclusive, zero, 8));
        const __m512i start = _mm512_add_epi32(_mm512_set1_epi32((int)position), _mm512_sub_epi32(inclusive, count));
        const __m512i byte = _mm512_min_epu32(_mm512_srli_epi32(start, 3), length);
        const __m512i offset = _mm512_and_si512(start, _mm512_set1_epi32(7));
        // Eight 64-bit loads per gather, at each lane's byte; shifted to the lane's bit and cut to its count.
        __m512i words_lo = _mm512_i32gather_epi64(_mm512_castsi512_si256(byte), rr->raw, 1);
        __m512i words_hi = _mm512_i32gather_epi64(_mm512_extracti64x4_epi64(byte, 1), rr->raw, 1);
        const __m512i count_lo = _mm512_cvtepu32_epi64(_mm512_castsi512_si256(count));
        const __m512i count_hi = _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(count, 1));
        words_lo = _mm512_srlv_epi64(words_lo, _mm512_cvtepu32_epi64(_mm512_castsi512_si256(offset)));
        words_hi = _mm512_srlv_epi64(words_hi, _mm512_cvtepu32_epi64(_mm512_extracti64x4_epi64(offset, 1)));
        words_lo = _mm512_and_si512(words_lo, _mm512_sub_epi64(_mm512_sllv_epi64(one64, count_lo), one64));
        words_hi = _mm512_and_si512(words_hi, _mm512_sub_epi64(_mm512_sllv_epi64(one64, count_hi), one64));
        const __m512i r = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(words_lo)), _mm512_cvtepi64_epi32(words_hi), 1);
        position += (uint32_t)_mm_cvtsi128_si32(_mm512_extracti32x4_epi32(_mm512_alignr_epi32(inclusive, inclusive, 15), 0));
        const __m512i m = _mm512_or_si512(high, _mm512_srli_epi32(r, 1));
        const __mmask16 negative = _mm512_test_epi32_mask(r, one);
        __m512i b;
        if (width == 4) b = _mm512_loadu_si512((const uint8_t *)base + 4 * i);
        else b = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint8_t *)base + 2 * i)));
        const __m512i key = tk_order_key16(b, bits);
        const __m512i sum = _mm512_add_epi32(key, m), difference = _mm512_sub_epi32(key, m);
        const __m512i k = _mm512_mask_blend_epi32(negative, sum, difference);
        // Outside the type: a subtraction below 0, or an addition past the largest key (a 32-bit carry for 4-byte
        // elements, past 0xFFFF for 2-byte ones, whose keys and magnitudes stay under 2^17).
        const __mmask16 under = _mm512_mask_cmplt_epu32_mask(negative, key, m);
        const __mmask16 over = width == 4 ? _mm512_mask_cmplt_epu32_mask((__mmask16)~negative, sum, key)
                                          : _mm512_mask_cmpgt_epu32_mask((__mmask16)~negative, sum, all);
        bad_lanes |= under | over;
        const __mmask16 positive = _mm512_test_epi32_mask(k, top);
        const __m512i value = _mm512_mask_xor_epi32(_mm512_andnot_si512(k, all), positive, k, top);
        if (width == 4) _mm512_storeu_si512((uint8_t *)out + 4 * i, value);
        else _mm256_storeu_si256((__m256i *)((uint8_t *)out + 2 * i), _mm512_cvtepi32_epi16(value));
    }
    rr->bit_position = position;
    *bad |= bad_lanes ? 1u : 0u;
    if (i < n) rebuild_portable(symbols + i, (const uint8_t *)base + width * i, (uint8_t *)out + width * i, n - i, width, below, rr, bad);
}
#endif

int tessera_delta_decode(const void *base, void *out, size_t count, int width, int below,
                         const uint8_t *table_of_context, const uint32_t *slots,
                         const uint8_t *stream, size_t stream_length, const uint8_t *raw, size_t raw_length) {
    if (stream_length < 16 || (stream_length & 1) || (width != 2 && width != 4) || below < 1 || below > 2) return 0;
    // Bit positions fit 32-bit lanes: raw bits are at most 30 per element.
    if (count > (1u << 24) || raw_length > (1u << 26)) return 0;
    uint32_t x[4];
    for (int s = 0; s < 4; s++) {
        x[s] = load_u32(stream + 4 * s);
        if (x[s] < TK_RANS_LOWER) return 0;
    }
    word_reader words = { stream, 16, stream_length };
    bit_reader rr = { raw, raw_length, 0 };
    uint32_t bad = 0;
#ifdef TK_X86
    const int wide = tk_level() >= TK_LEVEL_AVX512;
#endif
    uint8_t symbols[TK_DECODE_BLOCK];
    for (size_t start = 0; start < count; start += TK_DECODE_BLOCK) {
        const size_t n = count - start < TK_DECODE_BLOCK ? count - start : TK_DECODE_BLOCK;
        // Constant widths, so that each loop is compiled for its element size.
        if (width == 4) decode_symbols(x, base, start, n, 4, table_of_context, slots, &words, symbols);
        else decode_symbols(x, base, start, n, 2, table_of_context, slots, &words, symbols);
        const void *block_base = (const uint8_t *)base + width * start;
        void *block_out = (uint8_t *)out + width * start;
#ifdef TK_X86
        if (wide) { rebuild_avx512(symbols, block_base, block_out, n, width, below, &rr, &bad); continue; }
#endif
        rebuild_portable(symbols, block_base, block_out, n, width, below, &rr, &bad);
    }
    // The encoder started every state at the lower bound: a valid stream ends exactly there, with every word and raw
    // bit read.
    return bad == 0 && words.position == words.end && x[0] == TK_RANS_LOWER && x[1] == TK_RANS_LOWER &&
           x[2] == TK_RANS_LOWER && x[3] == TK_RANS_LOWER && (rr.bit_position + 7) >> 3 == raw_length;
}
