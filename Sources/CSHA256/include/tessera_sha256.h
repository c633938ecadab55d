#ifndef TESSERA_SHA256_H
#define TESSERA_SHA256_H
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// 1 when the CPU has the SHA extensions (with SSSE3 and SSE4.1) that tessera_sha256_pair needs, else 0.
int tessera_sha256_pair_available(void);

/// The SHA-256 digests of two messages, computed together. Call only when tessera_sha256_pair_available() is 1.
void tessera_sha256_pair(const void *a, size_t na, const void *b, size_t nb, unsigned char da[32], unsigned char db[32]);

/// Two messages of equal length hashed together piece by piece (for messages read in windows): begin, then blocks
/// for each piece (whole 64-byte blocks of both messages), then end with the last `rest` (< 64) bytes of each and
/// the messages' common length in bytes. Call only when tessera_sha256_pair_available() is 1.
typedef struct { uint32_t h[16]; } tessera_sha256_pair_state;
void tessera_sha256_pair_begin(tessera_sha256_pair_state *state);
void tessera_sha256_pair_blocks(tessera_sha256_pair_state *state, const void *a, const void *b, size_t blocks);
void tessera_sha256_pair_end(tessera_sha256_pair_state *state, const void *a, const void *b, size_t rest, uint64_t total,
                             unsigned char da[32], unsigned char db[32]);

#ifdef __cplusplus
}
#endif
#endif
