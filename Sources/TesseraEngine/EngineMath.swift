import TesseraMath

// The engine's numeric kernels live in TesseraMath (the BLAS/LAPACK wrapper, parallel loops, norms, activations,
// RoPE, attention, the C kernels' switches). These names keep them reachable for the engine's users, which import
// TesseraEngine only (the CLI sets threads, tests force the portable kernels).
public typealias Linalg = TesseraMath.Linalg
public typealias CPUKernels = TesseraMath.CPUKernels
