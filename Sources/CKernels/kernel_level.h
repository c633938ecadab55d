// Internal to CKernels (not in include/): the instruction-set level the kernels dispatch on, and target attributes.
#ifndef TESSERA_KERNEL_LEVEL_H
#define TESSERA_KERNEL_LEVEL_H

enum { TK_LEVEL_PORTABLE = 0, TK_LEVEL_AVX2 = 1, TK_LEVEL_AVX512 = 2 };

/// The widest level the CPU has and the tests allow.
int tk_level(void);

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define TK_X86 1
#include <immintrin.h>
#define TK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define TK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512cd,avx2,fma,f16c")))
#endif

#endif
