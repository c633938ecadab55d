// The parallel loop's workers (see tessera_kernels.h). Decoding one token runs about 150 short parallel regions
// (every projection, attention), tens of microseconds each; handing them to libdispatch woke a sleeping thread per
// region (futex wake, a context switch on each side), which cost more than a tenth of the CPU time and a wake-up
// delay every time. These workers instead spin for a short while after each region, so the next one starts at
// once; only after a pause longer than that do they sleep on a condition variable.
//
// Claiming work: `next` packs the region's generation, its task count and the next index into one 64-bit word, so a
// worker that slept through a whole region and wakes during the next one cannot claim an index of the wrong one
// (its compare-and-swap names the generation it read the region's function and context for).
#include "tessera_kernels.h"
#include "kernel_level.h"
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

enum { MAX_WORKERS = 63, INDEX_BITS = 20, TASK_BITS = 20 };
#define INDEX_MASK ((UINT64_C(1) << INDEX_BITS) - 1)
#define TASK_MASK ((UINT64_C(1) << TASK_BITS) - 1)

// Pauses a worker spins before it sleeps (a pause is about 40 to 140 cycles: roughly 50 to 100 microseconds).
static long spin_limit = 2000;

static struct {
    pthread_once_t once;
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int workers;
    int busy;             // a region is in flight (a second caller falls back)
    uint64_t generation;  // bumped once per region
    uint64_t next;        // generation << 40 | tasks << 20 | next index
    uint64_t done;        // tasks of the current region finished
    int sleepers;
    void (*fn)(void *, size_t);
    void *ctx;
} pool = {PTHREAD_ONCE_INIT, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, 0, 0, 0, 0, 0};

static __thread int inside_region;

static inline void cpu_relax(void) {
#ifdef TK_X86
    _mm_pause();
#endif
}

// Claims and runs tasks of generation `gen` until none is left.
static void run_tasks(uint64_t gen, void (*fn)(void *, size_t), void *ctx) {
    for (;;) {
        uint64_t v = __atomic_load_n(&pool.next, __ATOMIC_ACQUIRE);
        for (;;) {
            const uint64_t index = v & INDEX_MASK, tasks = (v >> INDEX_BITS) & TASK_MASK;
            if ((v >> (INDEX_BITS + TASK_BITS)) != (gen & ((UINT64_C(1) << 24) - 1)) || index >= tasks) return;
            if (__atomic_compare_exchange_n(&pool.next, &v, v + 1, 1, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) break;
        }
        inside_region = 1;
        fn(ctx, (size_t)(v & INDEX_MASK));
        inside_region = 0;
        __atomic_fetch_add(&pool.done, 1, __ATOMIC_RELEASE);
    }
}

static void *worker_main(void *unused) {
    (void)unused;
    uint64_t seen = __atomic_load_n(&pool.generation, __ATOMIC_ACQUIRE);
    for (;;) {
        long spins = 0;
        uint64_t gen;
        while ((gen = __atomic_load_n(&pool.generation, __ATOMIC_SEQ_CST)) == seen) {
            if (++spins < spin_limit) { cpu_relax(); continue; }
            pthread_mutex_lock(&pool.lock);
            __atomic_fetch_add(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
            while (__atomic_load_n(&pool.generation, __ATOMIC_SEQ_CST) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
            __atomic_fetch_sub(&pool.sleepers, 1, __ATOMIC_SEQ_CST);
            pthread_mutex_unlock(&pool.lock);
            spins = 0;
        }
        seen = gen;
        void (*fn)(void *, size_t) = __atomic_load_n(&pool.fn, __ATOMIC_RELAXED);
        void *ctx = __atomic_load_n(&pool.ctx, __ATOMIC_RELAXED);
        run_tasks(gen, fn, ctx);
    }
    return 0;
}

static void start_workers(void) {
    const char *spin = getenv("TESSERA_PARALLEL_SPIN");  // pauses before an idle worker sleeps (tuning, benchmarks)
    if (spin && *spin) spin_limit = atol(spin) < 1 ? 1 : atol(spin);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    int wanted = (int)(cores - 1 > MAX_WORKERS ? MAX_WORKERS : cores - 1);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    for (int i = 0; i < wanted; i++) {
        pthread_t thread;
        if (pthread_create(&thread, &attr, worker_main, 0) == 0) pool.workers++;
    }
    pthread_attr_destroy(&attr);
}

int tessera_parallel_run(size_t tasks, void (*fn)(void *ctx, size_t index), void *ctx) {
    if (tasks == 0) return 1;
    if (inside_region || tasks > TASK_MASK) return 0;
    int expected = 0;
    if (!__atomic_compare_exchange_n(&pool.busy, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return 0;
    pthread_once(&pool.once, start_workers);
    if (pool.workers == 0) {
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        return 0;
    }
    const uint64_t gen = __atomic_load_n(&pool.generation, __ATOMIC_RELAXED) + 1;
    __atomic_store_n(&pool.fn, fn, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.ctx, ctx, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.done, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool.next, ((gen & ((UINT64_C(1) << 24) - 1)) << (INDEX_BITS + TASK_BITS)) | ((uint64_t)tasks << INDEX_BITS),
                     __ATOMIC_RELEASE);
    __atomic_store_n(&pool.generation, gen, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&pool.sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    run_tasks(gen, fn, ctx);
    // Wait for the tasks other threads claimed; yield now and then in case one of them lost its core.
    long spins = 0;
    while (__atomic_load_n(&pool.done, __ATOMIC_ACQUIRE) < tasks) {
        if (++spins % 4096 == 0) sched_yield(); else cpu_relax();
    }
    __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
    return 1;
}

void tessera_parallel_set_spin(long pauses) { spin_limit = pauses < 1 ? 1 : pauses; }
