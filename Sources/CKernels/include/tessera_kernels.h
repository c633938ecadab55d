#pragma once
// Matrix-vector products straight from GGML block formats, for single-token decoding: the weights stay in their
// GGUF encoding (Q4_1: 5 bits per weight, Q8_0: 8.5), so a token reads a fraction of the memory float32 weights
// need. Each row is dequantised exactly as ggml defines it (value = d * q + m, or d * q) and summed in float32.
//
// W is row-major: `rows` rows of `cols / 32` blocks each (cols a multiple of 32).
// y[r] = sum_c W[r, c] * x[c], added to y[r] when `accumulate` is non-zero.
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void tessera_matvec_q4_1(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate);
void tessera_matvec_q8_0(const void *w, size_t rows, size_t cols, const float *x, float *y, int accumulate);

/// 1 when the AVX2/FMA/F16C kernels are in use on this CPU, 0 for the portable ones.
int tessera_kernels_vectorised(void);
/// Tests: 1 forces the portable kernels, 0 restores the CPU's best.
void tessera_kernels_force_portable(int portable);

#ifdef __cplusplus
}
#endif
