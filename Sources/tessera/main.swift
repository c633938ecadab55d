import Foundation
import TesseraCLI

/// OpenBLAS's idle workers spin (sched_yield) for about 2^28 cycles after each product before they sleep; the engine's
/// own parallel loops (attention, activations) run between products and lose their cores to them (SmolLM2's 512-token
/// prefill: attention 0.11 s beside spinning workers, 0.075 s without). OpenBLAS reads the spin time,
/// OPENBLAS_THREAD_TIMEOUT, only when it loads, before `main`: so unless the user set it, tessera sets it to the minimum
/// and executes itself again, once. (Restarting the worker pool from inside the process instead, with
/// `blas_thread_shutdown_`, races with workers going to sleep in OpenBLAS 0.3.21 and could hang.)
/// Not for the commands git runs on its own (the filter, hooks, diff and textconv drivers): they multiply no matrices,
/// and a second start of the binary (about 60 ms here) was 15% of a 98 MB GGUF's `git add`.
let startedByGit: Set<String> = ["filter-process", "hook", "textconv", "diff-driver"]
let command = CommandLine.arguments.dropFirst().first ?? ""
if ProcessInfo.processInfo.environment["OPENBLAS_THREAD_TIMEOUT"] == nil, !startedByGit.contains(command) {
    setenv("OPENBLAS_THREAD_TIMEOUT", "4", 1)
    let arguments = CommandLine.unsafeArgv
    execv("/proc/self/exe", arguments)
    // The exec failed (no /proc): run on, with OpenBLAS's default spin.
}
TesseraCommand.runMain()
