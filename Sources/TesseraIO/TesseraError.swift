/// The error every Tessera module throws for a domain problem: a code that scripts and tests can match, a one-line
/// message that says what is wrong, a hint that says what to do, and the underlying cause if there is one.
public struct TesseraError: Error, CustomStringConvertible, Sendable {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        public let name: String
        public init(_ name: String) { self.name = name }
        public var description: String { name }

        public static let invalidCheckpoint = Code("invalid-checkpoint")
        public static let unsupported = Code("unsupported")
        public static let objectMissing = Code("object-missing")
        public static let objectCorrupt = Code("object-corrupt")
        public static let io = Code("io")
        public static let noSpace = Code("no-space")
        public static let invalidManifest = Code("invalid-manifest")
        public static let git = Code("git")
        public static let lfs = Code("lfs")
        public static let usage = Code("usage")
        public static let shapeMismatch = Code("shape-mismatch")
        public static let invalidParameter = Code("invalid-parameter")
        public static let notFound = Code("not-found")
        public static let conflict = Code("conflict")
        public static let outOfMemory = Code("out-of-memory")
    }

    public let code: Code
    public let message: String
    public let hint: String?
    public let underlying: String?

    public init(_ code: Code, _ message: String, hint: String? = nil, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.hint = hint
        self.underlying = underlying.map { String(describing: $0) }
    }

    /// One line: what is wrong, then what to do.
    public var description: String {
        var s = message
        if let underlying, !message.contains(underlying) { s += " (\(underlying))" }
        if let hint { s += "; " + hint }
        return s
    }
}
