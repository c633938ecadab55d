// Which instruction sets the kernels may use: cpuid (and the OS's saved-state support, which the compiler's
// __builtin_cpu_supports checks) once, then a level that tests can lower to reach the narrower versions.
#include "tessera_kernels.h"
#include "kernel_level.h"

static int cpu_level(void) {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        const int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
        const int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512cd");  // every CPU with BW/VL/DQ has CD (leading zeros)
        cached = avx512 ? TK_LEVEL_AVX512 : (avx2 ? TK_LEVEL_AVX2 : TK_LEVEL_PORTABLE);
    }
    return cached;
#else
    return TK_LEVEL_PORTABLE;
#endif
}

// Counts, so that overlapping tests that force a narrower level nest.
static int forced_portable = 0;
static int forced_avx2 = 0;

int tk_level(void) {
    const int level = cpu_level();
    if (__atomic_load_n(&forced_portable, __ATOMIC_RELAXED) > 0) return TK_LEVEL_PORTABLE;
    if (__atomic_load_n(&forced_avx2, __ATOMIC_RELAXED) > 0 && level > TK_LEVEL_AVX2) return TK_LEVEL_AVX2;
    return level;
}

int tessera_kernels_vectorised(void) { return tk_level() >= TK_LEVEL_AVX2; }
int tessera_kernels_level(void) { return tk_level(); }
void tessera_kernels_force_portable(int portable) { __atomic_fetch_add(&forced_portable, portable ? 1 : -1, __ATOMIC_RELAXED); }
void tessera_kernels_force_avx2(int avx2) { __atomic_fetch_add(&forced_avx2, avx2 ? 1 : -1, __ATOMIC_RELAXED); }
int tessera_cpu_has_avx2(void) { return cpu_level() >= TK_LEVEL_AVX2; }
int tessera_cpu_has_avx512(void) { return cpu_level() >= TK_LEVEL_AVX512; }
