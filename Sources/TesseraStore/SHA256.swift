import CCrypto
import CSHA256
import TesseraCore
import TesseraIO

/// Incremental SHA-256 through OpenSSL's EVP interface (SHA-NI accelerated where the CPU has it: about 1.8 GB/s
/// here, several times a portable implementation). One owner per EVP context, freed in deinit.
public final class SHA256Hasher {
    private let context: OpaquePointer

    /// OpenSSL, left to itself, frees its global tables in an `atexit` handler. A process that exits (on an error,
    /// say) while another thread is still hashing would then crash inside EVP; with no cleanup at exit it cannot.
    /// Must run before any other OpenSSL call, which would initialise the library with the handler.
    private static let initialiseWithoutCleanupAtExit: Void = {
        OPENSSL_init_crypto(UInt64(OPENSSL_INIT_NO_ATEXIT), nil)
    }()

    public init() {
        _ = Self.initialiseWithoutCleanupAtExit
        guard let ctx = EVP_MD_CTX_new() else { fatalError("OpenSSL could not allocate a digest context (out of memory)") }
        context = ctx
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(context) }

    public func update(_ buffer: UnsafeRawBufferPointer) {
        guard let base = buffer.baseAddress, buffer.count > 0 else { return }
        EVP_DigestUpdate(context, base, buffer.count)
    }

    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The digest as 64 lower-case hex characters. The hasher is reset and can be reused.
    public func finalizeHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(context, &digest, &length)
        EVP_DigestInit_ex(context, EVP_sha256(), nil)
        return digest.hexString
    }

    public static func hex(_ buffer: UnsafeRawBufferPointer) -> String {
        let h = SHA256Hasher()
        h.update(buffer)
        return h.finalizeHex()
    }

    public static func hex(_ bytes: [UInt8]) -> String { bytes.withUnsafeBytes { hex($0) } }

    /// Whether `hexPair` hashes its two buffers together (the CPU has the SHA extensions) rather than one by one.
    public static let hashesPairsTogether = tessera_sha256_pair_available() == 1

    /// The digests of two buffers. With the SHA extensions both are computed at once (CSHA256: two independent
    /// chains keep the SHA unit busy, about 1.2× the throughput of OpenSSL on one buffer at a time); otherwise
    /// through OpenSSL, one after the other.
    public static func hexPair(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> (String, String) {
        guard hashesPairsTogether else { return (hex(a), hex(b)) }
        var da = [UInt8](repeating: 0, count: 32), db = da
        let empty = UnsafeRawPointer(bitPattern: 16)!  // never read: a zero-length buffer may have no address
        tessera_sha256_pair(a.baseAddress ?? empty, a.count, b.baseAddress ?? empty, b.count, &da, &db)
        return (da.hexString, db.hexString)
    }
}

/// The digests of two messages of equal length given piece by piece (each read in windows: neither needs to be in
/// memory whole), computed together as `SHA256Hasher.hexPair` computes them, or one after the other through OpenSSL
/// without the SHA extensions. Every piece but the last must be a whole number of 64-byte blocks.
public final class SHA256PairStream {
    private var state = tessera_sha256_pair_state()
    private let single: (SHA256Hasher, SHA256Hasher)?
    private var total = 0
    /// The last piece's bytes after its whole blocks (at most 63 of each message), kept for the padding.
    private var tailA: [UInt8] = []
    private var tailB: [UInt8] = []
    private var ended = false

    public init() {
        if SHA256Hasher.hashesPairsTogether {
            single = nil
            tessera_sha256_pair_begin(&state)
        } else {
            single = (SHA256Hasher(), SHA256Hasher())
        }
    }

    public func update(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) {
        precondition(a.count == b.count, "SHA256PairStream: pieces of the two messages must be of equal length")
        precondition(!ended, "SHA256PairStream: a piece after one that was not a whole number of blocks")
        total += a.count
        ended = a.count % 64 != 0
        if let single {
            single.0.update(a)
            single.1.update(b)
            return
        }
        let blocks = a.count / 64
        if blocks > 0, let pa = a.baseAddress, let pb = b.baseAddress {
            tessera_sha256_pair_blocks(&state, pa, pb, blocks)
        }
        if ended {
            tailA = Array(a[(64 * blocks)...])
            tailB = Array(b[(64 * blocks)...])
        }
    }

    /// Both digests as 64 lower-case hex characters (once: the stream is finished then).
    public func finalizeHex() -> (String, String) {
        if let single { return (single.0.finalizeHex(), single.1.finalizeHex()) }
        var da = [UInt8](repeating: 0, count: 32), db = da
        tailA.withUnsafeBytes { ta in
            tailB.withUnsafeBytes { tb in
                let empty = UnsafeRawPointer(bitPattern: 16)!  // never read when there is no tail
                tessera_sha256_pair_end(&state, ta.baseAddress ?? empty, tb.baseAddress ?? empty, ta.count, UInt64(total), &da, &db)
            }
        }
        return (da.hexString, db.hexString)
    }
}

extension FileSystem {
    /// The SHA-256 of a regular file, read in 1 MiB pieces (objects can be larger than memory allows to hold).
    public static func sha256(ofFile path: String) throws -> String {
        let f = try FileDescriptor.openRegularFile(path)
        let hasher = SHA256Hasher()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try f.read(into: $0) }
            if n == 0 { break }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
        return hasher.finalizeHex()
    }
}
