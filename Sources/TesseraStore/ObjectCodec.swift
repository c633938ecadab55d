import Foundation
import TesseraCore
import TesseraIO

/// How an object's payload encodes the raw bytes it stands for. Each codec is one file in Codecs/; `ObjectCodecs`
/// finds it by the code in an object's trailer and by its name in a manifest's encoding field.
///
/// A codec may depend on other objects (an XOR delta on its base): their ids are in the object's trailer and in the
/// manifest (`NAME@ID:SIZE,ID:SIZE`), and their raw bytes are handed to `encode` and `decode`. Instances hold
/// per-thread state (zstd contexts, scratch buffers) and are reused across objects by `ObjectEncoder` and
/// `ObjectDecoder`; a new codec is a new file plus one line in `ObjectCodecs.all`.
public protocol ObjectCodec: AnyObject {
    /// The code in an object's trailer (byte 72). Never reused: objects written with it must stay readable.
    static var code: UInt8 { get }
    /// How many dependencies its objects name.
    static var dependencies: ClosedRange<Int> { get }
    /// The manifest's name for an object of this codec with element width `width` (dependencies are appended by
    /// the manifest as `@ID:SIZE,...`).
    static func manifestName(width: Int) -> String
    /// The width a manifest name stands for, or nil if the name is not this codec's.
    static func width(fromManifestName name: String) -> Int?
    /// Checks the trailer fields this codec gives meaning to (the element width, for instance), before anything is
    /// decoded or allocated.
    static func validate(_ trailer: ObjectTrailer, payloadLength: Int) throws

    init()

    /// Encodes `raw` (with its dependencies' raw bytes, each exactly as long as `raw`) into payload bytes, handed to
    /// `sink` in order.
    func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, dependencies: [UnsafeRawBufferPointer],
                sink: (UnsafeRawBufferPointer) throws -> Void) throws

    /// The same, knowing the value's tensor shape (a low-rank codec needs the matrix's columns); by default the shape
    /// is not used.
    func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, shape: [Int], dependencies: [UnsafeRawBufferPointer],
                sink: (UnsafeRawBufferPointer) throws -> Void) throws

    /// Decodes the payload into exactly `trailer.rawLength` bytes, handed to `sink` in order, or throws. The payload
    /// arrives through `payload` (which also hashes it for the object id check).
    func decode(_ payload: PayloadReader, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                sink: (UnsafeRawBufferPointer) throws -> Void) throws
}

extension ObjectCodec {
    public static var dependencies: ClosedRange<Int> { 0...0 }
    public static func width(fromManifestName name: String) -> Int? { name == manifestName(width: 1) ? 1 : nil }

    public func encode(raw: UnsafeRawBufferPointer, width: Int, chunkLog2: UInt8, shape: [Int], dependencies: [UnsafeRawBufferPointer],
                       sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try encode(raw: raw, width: width, chunkLog2: chunkLog2, dependencies: dependencies, sink: sink)
    }
}

/// The registry of codecs: the built-in ones, and any a program registers (codes 128 and up are for codecs that
/// are not part of the format, such as tests').
public enum ObjectCodecs {
    // nonisolated(unsafe): a constant array of types (metatypes of a non-Sendable protocol are not Sendable).
    nonisolated(unsafe) public static let builtIn: [any ObjectCodec.Type] = [
        RawCodec.self, ZstdCodec.self, ByteGroupedZstdCodec.self, XORDeltaCodec.self, ArithmeticDeltaCodec.self, LowRankCodec.self,
        SparseDeltaCodec.self,
    ]

    private final class Registered: @unchecked Sendable {
        // @unchecked: guarded by `lock`.
        let lock = NSLock()
        var codecs: [any ObjectCodec.Type] = []
    }
    private static let registered = Registered()

    public static var all: [any ObjectCodec.Type] {
        registered.lock.lock(); defer { registered.lock.unlock() }
        return builtIn + registered.codecs
    }

    /// Adds a codec; its code must be unused.
    public static func register(_ codec: any ObjectCodec.Type) {
        registered.lock.lock(); defer { registered.lock.unlock() }
        precondition(!(builtIn + registered.codecs).contains { $0.code == codec.code }, "codec code \(codec.code) is taken")
        registered.codecs.append(codec)
    }

    public static func codec(code: UInt8) -> (any ObjectCodec.Type)? { all.first { $0.code == code } }

    /// The codec and element width a manifest encoding name stands for (`bg4+zstd` → byte-grouped zstd, width 4).
    public static func codec(manifestName name: String) -> (codec: any ObjectCodec.Type, width: Int)? {
        for c in all { if let w = c.width(fromManifestName: name) { return (c, w) } }
        return nil
    }

    /// The full manifest encoding field of an object: its codec's name, then its dependencies with their sizes.
    public static func manifestEncoding(_ codec: any ObjectCodec.Type, width: Int, dependencies: [(id: String, size: Int)]) -> String {
        let name = codec.manifestName(width: width)
        return dependencies.isEmpty ? name : name + "@" + dependencies.map { "\($0.id):\($0.size)" }.joined(separator: ",")
    }
}

/// An object's payload as a codec reads it: blocks of at most 1 MiB from the file, each also fed to the hash that
/// checks the object id, never more than the payload's real length.
public final class PayloadReader {
    let file: FileDescriptor
    public private(set) var remaining: Int
    /// Hashes the payload for the object-id check; nil when the read is checked by its raw value alone.
    let hasher: SHA256Hasher?
    let objectID: String
    /// The current block: the buffer's first `blockLength` bytes. Owned by the decoder and reused across objects.
    let buffer: UnsafeMutableRawBufferPointer
    public private(set) var blockLength = 0
    /// Where the caller will put the decoded value (exactly the raw length), when it is one buffer: a codec may
    /// decode straight into it and hand `sink` pieces that point into it, in order. It is the caller's memory until the
    /// decode returns; nothing may be read back from it (a piece is handed over once).
    public internal(set) var destination: UnsafeMutableRawBufferPointer?

    init(file: FileDescriptor, payloadLength: Int, hasher: SHA256Hasher?, objectID: String, buffer: UnsafeMutableRawBufferPointer) {
        self.file = file
        remaining = payloadLength
        self.hasher = hasher
        self.objectID = objectID
        self.buffer = buffer
    }

    /// Reads the next block; returns its length (0 at the end of the payload).
    public func nextBlock() throws -> Int {
        let n = min(remaining, buffer.count)
        blockLength = n
        guard n > 0 else { return 0 }
        try file.readExactly(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
        hasher?.update(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
        remaining -= n
        return n
    }

    /// The current block's bytes.
    public func withBlock<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(rebasing: buffer[0..<blockLength]))
    }

    public func corrupt(_ why: String) -> TesseraError {
        TesseraError(.objectCorrupt, "object \(objectID.prefix(12)) is corrupt: \(why)",
                     hint: "delete it and fetch it again (`tessera fetch`), or run `tessera fsck`")
    }
}
