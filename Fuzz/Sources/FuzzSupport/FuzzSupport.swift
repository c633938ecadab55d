#if canImport(Glibc)
import Glibc
#endif
import Foundation
import TesseraCore
import TesseraStore

/// What every fuzz target shares: the input as bytes, a scratch directory, temporary stores, input-derived piece
/// sizes, and the way a broken invariant is reported (an abort, which libFuzzer records as a crash with its input).

/// The fuzzer's input as an array (libFuzzer may pass a null pointer with a zero size).
public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> [UInt8] {
    guard let data, size > 0 else { return [] }
    return Array(UnsafeBufferPointer(start: data, count: size))
}

/// A broken invariant (a silently wrong answer, not an error): printed, then the process aborts so that libFuzzer
/// saves the input as a crash.
public func finding(_ message: String) -> Never {
    FileHandle.standardError.write(Data("FUZZ FINDING: \(message)\n".utf8))
    abort()
}

/// One scratch directory per fuzzing process, removed when the process exits normally. It is on /dev/shm when that
/// is writable: the store fsyncs every object it writes, which on a disk costs milliseconds per input (ten times the
/// rest of a safetensors input's work) and on tmpfs nothing. TESSERA_FUZZ_TMPDIR chooses another place.
public enum Scratch {
    nonisolated(unsafe) private static var created: String?

    public static var directory: String {
        if let created { return created }
        let env = ProcessInfo.processInfo.environment
        let base = env["TESSERA_FUZZ_TMPDIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : nil)
            ?? env["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array("\(base)/tessera-fuzz-XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            fatalError("cannot create a scratch directory under \(base)")
        }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        created = path
        atexit { if let d = Scratch.created { try? FileManager.default.removeItem(atPath: d) } }
        return path
    }

    /// Writes `bytes` to a file of the scratch directory and returns its path.
    public static func write(_ bytes: [UInt8], name: String) -> String {
        let path = directory + "/" + name
        unlink(path)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { fatalError("cannot write \(path)") }
        var at = 0
        while at < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + at, bytes.count - at) }
            guard n > 0 else { fatalError("cannot write \(path)") }
            at += n
        }
        close(fd)
        return path
    }

    /// A new, empty object store (its directory is removed by `removeStore`).
    public static func freshStore(_ name: String = "store") -> ObjectStore {
        let root = directory + "/" + name
        try? FileManager.default.removeItem(atPath: root)
        do { return try ObjectStore(root: root) } catch { fatalError("cannot create a store at \(root): \(error)") }
    }

    public static func removeStore(_ store: ObjectStore) {
        try? FileManager.default.removeItem(atPath: store.root)
    }
}

/// Sizes of the pieces an input is fed in (git's filter stream hands the cleaner arbitrary pieces), derived from the
/// input itself so that a run is reproducible from the input file alone.
public struct PieceSizes: IteratorProtocol {
    private var state: UInt64

    public init(seed bytes: [UInt8]) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325  // FNV-1a
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01B3 }
        state = h | 1
    }

    /// Mostly small pieces (so boundaries fall inside headers, tensors and gaps), sometimes large ones.
    public mutating func next() -> Int? {
        state ^= state << 13; state ^= state >> 7; state ^= state << 17
        switch state % 4 {
        case 0: return 1 + Int((state >> 8) % 8)
        case 1: return 1 + Int((state >> 8) % 64)
        case 2: return 1 + Int((state >> 8) % 4096)
        default: return 1 + Int((state >> 8) % 65536)
        }
    }
}
