#ifndef TESSERA_SHA256_H
#define TESSERA_SHA256_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when the CPU has the SHA extensions (with SSSE3 and SSE4.1) that tessera_sha256_pair needs, else 0.
int tessera_sha256_pair_available(void);

/// The SHA-256 digests of two messages, computed together. Call only when tessera_sha256_pair_available() is 1.
void tessera_sha256_pair(const void *a, size_t na, const void *b, size_t nb, unsigned char da[32], unsigned char db[32]);

#ifdef __cplusplus
}
#endif
#endif
