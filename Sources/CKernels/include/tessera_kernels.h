#pragma once
// Matrix-vector products straight from GGML block formats, for single-token decoding: the weights stay in their
// GGUF encoding (Q4_1: 5 bits per weight, Q8_0: 8.5), so a token reads a fraction of the memory float32 weights
// need. Each row is dequantised exactly as ggml defines it (value = d * q + m, or d * q) and summed in float32.
//
// W is row-major: `rows` rows of `cols / 32` blocks each (cols a multiple of 32), repacked by tessera_repack_* from
// the GGUF's blocks: per row the blocks' f16 scales (Q4_1: then their f16 minimums), then their quants, same bytes.
// y[r] = sum_c W[r, c] * x[c], added to y[r] when `accumulate` is non-zero.
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// Reorders `rows` rows of ggml blocks (20 bytes per Q4_1 block, 34 per Q8_0) into the kernels' row layout, same size.
void tessera_repack_q4_1(const void *src, size_t rows, size_t cols, void *dst);
void tessera_repack_q8_0(const void *src, size_t rows, size_t cols, void *dst);

void tessera_matvec_q4_1(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate);
void tessera_matvec_q8_0(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate);

/// Y[t] = W·X[t] (or +=) for `tokens` tokens, x rows at stride ldx, y rows at stride ldy (y[t * ldy + r]): each row's
/// blocks are dequantised once for up to 16 tokens. Without AVX-512 it runs the single-token kernel per token.
void tessera_matmul_q4_1(const void *w, size_t rows, size_t cols, const float *x, size_t ldx, size_t tokens, float *y,
                         size_t ldy, int accumulate);
void tessera_matmul_q8_0(const void *w, size_t rows, size_t cols, const float *x, size_t ldx, size_t tokens, float *y,
                         size_t ldy, int accumulate);
/// 1 when tessera_matmul_* has its several-token kernels (AVX-512) on this CPU.
int tessera_matmul_blocks_available(void);

/// 1 when vector kernels (AVX2 or wider) are in use on this CPU, 0 for the portable ones.
int tessera_kernels_vectorised(void);
/// 0 portable, 1 AVX2/FMA/F16C, 2 AVX-512: the widest the CPU has that the tests allow.
int tessera_kernels_level(void);
/// Tests: 1 forces the portable kernels, 0 undoes one such call (calls nest).
void tessera_kernels_force_portable(int portable);
/// Tests: 1 caps the kernels at AVX2 (so that they run where AVX-512 would be chosen), 0 undoes one such call.
void tessera_kernels_force_avx2(int avx2);
/// What the CPU (and OS) support, whatever the tests force.
int tessera_cpu_has_avx2(void);
int tessera_cpu_has_avx512(void);

/// Runs fn(ctx, i) for i in 0..<tasks on the calling thread and the pool's workers (one per extra core, started on
/// first use), and returns 1 when all are done. Returns 0 without running anything when the pool is busy with another
/// caller's region, when called from inside a region, or when there are no workers: the caller runs the loop some
/// other way.
int tessera_parallel_run(size_t tasks, void (*fn)(void *ctx, size_t index), void *ctx);
/// How long idle workers spin (in pause instructions) before they sleep.
void tessera_parallel_set_spin(long pauses);

/// Attention of one new token for the `group` query heads sharing a KV head: q [group][head_dim] (contiguous heads),
/// keys and values [n][head_dim] (the positions it sees, contiguous), out [group][head_dim] =
/// softmax(scale * q·k) · V. `scores` is scratch for group * n floats.
void tessera_attend_decode(size_t group, const float *q, const float *keys, const float *values, size_t n,
                           size_t head_dim, float scale, float *scores, float *out);

#ifdef __cplusplus
}
#endif

#ifdef __cplusplus
extern "C" {
#endif

/// out[r] = a[r·lda ..< r·lda + n] · x for r in 0..<rows: one token through a few stacked rows (LoRA A factors,
/// router vectors), several rows read at once.
void tessera_dot_rows(const float *a, size_t lda, size_t rows, const float *x, size_t n, float *out);
/// y[i] += Σ_r coef[r] · b[r·ldb + i] for i in 0..<n: a few scaled rows (LoRA B factors, transposed) added to one
/// output, each 16-float chunk of y loaded and stored once per four rows.
void tessera_axpy_rows(const float *b, size_t ldb, size_t rows, const float *coef, float *y, size_t n);
/// The largest of n floats; -infinity when n is 0. (A NaN among them may or may not be returned.)
float tessera_max_f32(const float *x, size_t n);

/// SwiGLU's gating: out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + exp(-gate[i])) * up[i].
void tessera_silu_mul(const float *gate, const float *up, float *out, size_t n);
/// o[i] = fma(x[i], w, o[i]): the fused accumulation of torch's addcmul_, one rounding per element.
void tessera_fma_accumulate(float *o, const float *x, float w, size_t n);

/// Causal attention for a tile of up to 12 query rows that share one KV head (the heads of a GQA group, for a few
/// consecutive tokens), so that each key and value is loaded once for the whole tile.
/// Row r reads q[r] (head_dim floats), sees the keys [ranges[4r], ranges[4r+1]) and [ranges[4r+2], ranges[4r+3])
/// (context, then own segment), and writes out[r] = softmax(scale * q·k) · V.
/// `keys_t` holds the KV head's keys transposed, [head_dim][ld_keys_t], zero past the last key up to a multiple of 8;
/// `values` is [keys][head_dim]. `scores` is scratch for 2 * 12 * (span + 8) floats, span = the tile's key range.
void tessera_attend_tile(size_t rows, const float *const *q, float *const *out, const size_t *ranges,
                         const float *keys_t, size_t ld_keys_t, const float *values, size_t head_dim,
                         float scale, float *scores);

/// An LSB-first bit writer's state (TesseraStore's PaddedBitWriter): fewer than 8 bits pending in `accumulator`,
/// `position` bytes written to `out`, which has at least 8 bytes of room past everything written.
typedef struct {
    uint8_t *out;
    uint64_t accumulator;
    int64_t filled;
    int64_t position;
} tessera_bit_writer;

/// The arithmetic delta encoder's symbols of n elements (`width` 2 or 4 bytes) against their base elements: each
/// symbol (bit length and `below` bits under the leading one, 1 or 2) into `symbols`, each element's raw bits (sign,
/// then the bits under the symbol's) appended to `writer`. TesseraStore's `DeltaSymbols.analyse` defines the values.
void tessera_delta_split(const void *new_values, const void *base, size_t n, int width, int below,
                         uint8_t *symbols, tessera_bit_writer *writer);
/// Adds the symbols of n elements to `histogram`, indexed by context (the base element's 8 bits under its sign) ×
/// `alphabet` + symbol.
void tessera_delta_count(const void *new_values, const void *base, size_t n, int width, int below, size_t alphabet,
                         uint32_t *histogram);

/// Decodes one chunk of the arithmetic delta (payload versions 2 and 3): `count` elements (`width` 2 or 4 bytes)
/// against their base elements into `out`, from a rANS `stream` of four interleaved states and the `raw` bits, with
/// symbols holding `below` bits (1 or 2) under the leading one. `table_of_context` maps a base element's 8 bits under
/// its sign to a table; `slots` holds each table's 4096 slots (`freq | (slot - cum) << 13 | symbol << 25`, every
/// symbol inside the alphabet). Both streams must be followed by 8 readable bytes. Returns 1 when the chunk decodes
/// exactly (every word and raw bit used, every state back at its start, every value inside the type), else 0.
/// TesseraStore's `StaticDeltaCoder.decodeReference` defines the result.
int tessera_delta_decode(const void *base, void *out, size_t count, int width, int below,
                         const uint8_t *table_of_context, const uint32_t *slots,
                         const uint8_t *stream, size_t stream_length, const uint8_t *raw, size_t raw_length);

/// Pass 1 of the magnitude select with a window of high-bit buckets (a key is a float's bits without the sign; its
/// bucket the key's high 16 bits): counts into `above` the keys whose bucket is above low + width, and copies the keys
/// whose bucket is in low...low + width to `out` in order, at most `capacity` of them. Returns how many keys were in
/// the window (more than `capacity` when they did not all fit). TesseraMath's `MagnitudeSelect` defines the result.
size_t tessera_magnitude_window(const float *x, size_t n, uint32_t low, uint32_t width, uint32_t *out, size_t capacity,
                                size_t *above);

#ifdef __cplusplus
}
#endif
