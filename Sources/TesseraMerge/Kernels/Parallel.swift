import TesseraMath

// The merge kernels use TesseraMath's parallel loop and shared-pointer wrappers under their old names, so the merge
// methods need no import of their own.
typealias Parallel = TesseraMath.Parallel
typealias SharedMutablePointer<T> = TesseraMath.SharedMutablePointer<T>
typealias SharedMutableRawPointer = TesseraMath.SharedMutableRawPointer
typealias SharedPointer<T> = TesseraMath.SharedPointer<T>
typealias UncheckedSendable<T> = TesseraMath.UncheckedSendable<T>
typealias MagnitudeSelect = TesseraMath.MagnitudeSelect
