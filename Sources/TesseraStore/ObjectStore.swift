#if canImport(Glibc)
import Glibc
#endif
import TesseraCore
import TesseraIO

/// The content-addressed object store, inside the repository's common git directory (shared by all worktrees):
///
///     tessera/objects/ab/cdef…   objects, named by the SHA-256 of their bytes (= Git LFS oid)
///     tessera/raw/ab/cdef…       raw-value index: SHA-256 of raw bytes → "object-id encoding" (for dedup)
///     tessera/tmp/               objects being written; renamed into place only when complete and fsynced
///
/// Writes are atomic, so a reader never sees half an object; every read is verified against the object id and
/// against the raw hash recorded in the object's trailer.
public final class ObjectStore: @unchecked Sendable {
    // @unchecked: every stored property is an immutable path; all shared state is in the file system, where
    // concurrent writers of the same object race harmlessly (both rename identical bytes into place).
    public let root: String
    public let objectsDirectory: String
    public let rawIndexDirectory: String
    public let tmpDirectory: String

    public init(root: String) throws {
        self.root = root
        objectsDirectory = root + "/objects"
        rawIndexDirectory = root + "/raw"
        tmpDirectory = root + "/tmp"
        for d in [objectsDirectory, rawIndexDirectory, tmpDirectory] { try FileSystem.makeDirectories(d) }
    }

    /// The file of an object. Only for ids that are valid (`ObjectID.isValid`): every id read from a manifest, a
    /// trailer or a remote is checked before it gets here, so no id can name a path outside the store.
    public func objectPath(_ id: String) -> String {
        // Defence in depth: an unchecked id still cannot leave the store (no object is ever named "invalid-id").
        guard ObjectID.isValid(id) else { return "\(objectsDirectory)/invalid-id" }
        return "\(objectsDirectory)/\(id.prefix(2))/\(id.dropFirst(2))"
    }

    public func contains(_ id: String) -> Bool { ObjectID.isValid(id) && FileSystem.exists(objectPath(id)) }

    /// Marks an object as in use now: a `git add` that reuses an object which nothing reachable names yet (found in
    /// the raw-value index, or in the previous version of the file) refreshes its time, so that a `tessera gc`
    /// running meanwhile sees a young object and keeps it (its grace period).
    public func touch(_ id: String) {
        guard ObjectID.isValid(id) else { return }
        _ = utimensat(AT_FDCWD, objectPath(id), nil, 0)
    }

    private func rawIndexPath(_ rawSHA256: String) -> String {
        "\(rawIndexDirectory)/\(rawSHA256.prefix(2))/\(rawSHA256.dropFirst(2))"
    }

    /// The stored object for a raw value, if the store has one (dedup within and across commits).
    /// The index is a cache: an entry that does not check out (a damaged file, an object that is gone or holds
    /// another value) is ignored, and the value is stored afresh. A hit is touched (see `touch`).
    public func lookup(rawSHA256: String) -> Manifest.Stored? {
        guard ObjectID.isValid(rawSHA256), let bytes = try? FileSystem.readFile(rawIndexPath(rawSHA256), limit: 4096) else { return nil }
        let parts = String(decoding: bytes, as: UTF8.self).split(separator: " ")
        guard parts.count == 3, let size = Int(parts[2]), size >= ObjectTrailer.size, ObjectID.isValid(parts[0]),
              (try? ManifestEncoding(parts[1])) != nil else { return nil }
        let id = String(parts[0])
        guard let t = try? trailer(of: id), t.rawSHA256.hexString == rawSHA256 else { return nil }
        touch(id)
        return Manifest.Stored(encoding: String(parts[1]), rawSHA256: rawSHA256, objectID: id, objectSize: size)
    }

    public func recordRaw(_ stored: Manifest.Stored) throws {
        let path = rawIndexPath(stored.rawSHA256)
        try FileSystem.makeDirectories(String(path.dropLast(path.count - path.lastIndex(of: "/")!.utf16Offset(in: path))))
        // A cache: an entry lost in a crash only costs storing that value again, so it is not flushed.
        try FileSystem.writeAtomically(Array("\(stored.objectID) \(stored.encoding) \(stored.objectSize)".utf8), to: path,
                                       tmpDir: tmpDirectory, durable: false)
    }

    // MARK: Writing

    /// Encodes and stores raw bytes as one object (unless an object for the same raw value already exists), the
    /// way `choice` says (see `EncodingPolicy`). `dependencyRaw`: the raw bytes of the choice's dependencies.
    /// `reusingExisting: false` (repack) stores the value again the way `choice` says even when an object for it
    /// exists, and makes the raw-value index name the new one.
    public func put(raw: UnsafeRawBufferPointer, rawSHA256: String, choice: EncodingPolicy.Choice, dependencyRaw: [UnsafeRawBufferPointer] = [],
                    encoder: ObjectEncoder, batch: ObjectBatch? = nil, reusingExisting: Bool = true) throws -> Manifest.Stored {
        if reusingExisting, let existing = batch?.lookup(rawSHA256: rawSHA256) ?? lookup(rawSHA256: rawSHA256) { return existing }
        let bases = choice.dependencies
        let baseBytes = dependencyRaw
        precondition(bases.count == baseBytes.count && choice.codec.dependencies.contains(bases.count), "a choice's dependencies come with their bytes")
        let writer = try ObjectWriter(store: self)
        do {
            try encoder.codec(choice.codec).encode(raw: raw, width: choice.width, chunkLog2: ObjectTrailer.defaultChunkLog2,
                                                   shape: choice.shape, dependencies: baseBytes) { try writer.write($0) }
            let trailer = ObjectTrailer(rawSHA256: [UInt8](hex: rawSHA256)!, dependencies: bases.map { [UInt8](hex: $0.objectID)! },
                                        rawLength: UInt64(raw.count), codec: choice.codec.code, width: UInt8(choice.width))
            let (id, size) = try writer.finish(trailer: trailer, batch: batch)
            let encoding = ObjectCodecs.manifestEncoding(choice.codec, width: choice.width, dependencies: try manifestDependencies(of: bases))
            let stored = Manifest.Stored(encoding: encoding, rawSHA256: rawSHA256, objectID: id, objectSize: size)
            if let batch { batch.record(stored) } else { try recordRaw(stored) }
            return stored
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// What a manifest line names for an object encoded against `bases`: the bases (with their sizes), then every
    /// object they depend on in turn (a delta chain), each once. A manifest thus names everything a checkout of it
    /// needs, with the sizes a Git LFS transfer needs, even when a base's own manifest line is in history a clone
    /// does not have (another branch); the object's trailer names only its direct bases.
    func manifestDependencies(of bases: [Manifest.Stored]) throws -> [(id: String, size: Int)] {
        var out: [(id: String, size: Int)] = []
        var seen = Set<String>()
        for base in bases where seen.insert(base.objectID).inserted {
            out.append((base.objectID, FileSystem.fileStat(objectPath(base.objectID))?.size ?? base.objectSize))
        }
        for base in bases {
            for dependency in try dependencyChain(of: base.objectID).objects where seen.insert(dependency.id).inserted {
                out.append(dependency)
            }
        }
        guard out.count <= ObjectTrailer.maximumDependencies else {
            throw TesseraError(.usage, "a delta would depend on \(out.count) objects, more than a manifest line names (\(ObjectTrailer.maximumDependencies))",
                               hint: "lower TESSERA_MAX_DELTA_DEPTH (or tessera.maxDeltaDepth), or run `tessera repack`")
        }
        return out
    }

    /// Stores raw bytes with no delta base: byte-grouped for elements of `width` bytes (width 1: plain zstd).
    public func put(raw: UnsafeRawBufferPointer, rawSHA256: String, width: Int, encoder: ObjectEncoder, batch: ObjectBatch? = nil) throws -> Manifest.Stored {
        try put(raw: raw, rawSHA256: rawSHA256, choice: EncodingPolicy().plain(raw: raw, width: width), encoder: encoder, batch: batch)
    }

    /// Starts an object whose raw bytes arrive in pieces (opaque files of any size): compressed as they come.
    public func beginStreamingObject() throws -> StreamingObjectWriter {
        try StreamingObjectWriter(store: self)
    }

    // MARK: Reading

    /// Whether an object is in the store and readable, and if not, why (for `fsck` and fetches, which must tell a
    /// missing object from one that is there but cannot be read).
    public enum Presence: Equatable, Sendable {
        case present
        case missing
        case unreadable(String)
    }

    public func presence(_ id: String) -> Presence {
        guard ObjectID.isValid(id) else { return .unreadable("\(String(reflecting: String(id.prefix(80)))) is not an object id") }
        do {
            _ = try FileDescriptor.openRegularFile(objectPath(id))
            return .present
        } catch let e as TesseraError {
            return FileSystem.exists(objectPath(id)) ? .unreadable(e.message) : .missing
        } catch {
            return .unreadable("\(error)")
        }
    }

    /// An object file opened for reading, with its trailer read and validated (see `ObjectTrailer.decode`).
    public struct OpenedObject {
        let file: FileDescriptor
        let trailerBytes: [UInt8]
        public let payloadLength: Int
        public let trailer: ObjectTrailer
    }

    public func open(_ id: String) throws -> OpenedObject {
        try ObjectID.check(id)
        let path = objectPath(id)
        let f: FileDescriptor
        do {
            f = try FileDescriptor.openRegularFile(path)
        } catch let e as TesseraError {
            if !FileSystem.exists(path) {
                throw TesseraError(.objectMissing, "object \(id.prefix(12)) is missing from the store",
                                   hint: "fetch it with `tessera fetch` (or `tessera pull`) from a remote that has it")
            }
            throw TesseraError(.io, "cannot read object \(id.prefix(12)): \(e.message)",
                               hint: "check the permissions of \(path) (or delete it and fetch it again)")
        }
        let size = try f.size()
        guard size >= ObjectTrailer.size else { throw corrupt(id, "it is shorter than its trailer") }
        var t = [UInt8](repeating: 0, count: ObjectTrailer.size)
        let n = try t.withUnsafeMutableBytes { try f.pread(into: $0, at: size - ObjectTrailer.size) }
        guard n == ObjectTrailer.size else { throw corrupt(id, "its trailer cannot be read") }
        // Version 2 objects keep further dependency ids just before the trailer.
        let extra = 32 * (try ObjectTrailer.extraDependencyCount(t, object: id))
        guard size >= ObjectTrailer.size + extra else { throw corrupt(id, "it is shorter than its trailer") }
        var dependencies = [UInt8](repeating: 0, count: extra)
        if extra > 0 {
            let m = try dependencies.withUnsafeMutableBytes { try f.pread(into: $0, at: size - ObjectTrailer.size - extra) }
            guard m == extra else { throw corrupt(id, "its dependency list cannot be read") }
        }
        let payloadLength = size - ObjectTrailer.size - extra
        let trailer = try ObjectTrailer.decode(t, extraDependencies: dependencies, object: id, payloadLength: payloadLength)
        return OpenedObject(file: f, trailerBytes: dependencies + t, payloadLength: payloadLength, trailer: trailer)
    }

    public func trailer(of id: String) throws -> ObjectTrailer { try open(id).trailer }

    func corrupt(_ id: String, _ why: String) -> TesseraError {
        TesseraError(.objectCorrupt, "object \(id.prefix(12)) is corrupt: \(why)",
                     hint: "delete \(objectPath(id)) and fetch it again (`tessera fetch`), or run `tessera fsck`")
    }

    /// Decodes an object, handing its raw bytes to `sink` in order, piece by piece. Verification (the raw hash, and
    /// the object id unless `expectedRawSHA256` is given) completes only when the call returns without throwing: a caller that must not act on unverified bytes
    /// must not commit to them before then (the filter reports failure to git, which then discards the output).
    /// `expectedLength`, when the caller knows it (a manifest's segment), is checked against the trailer before any
    /// byte is decoded.
    /// `checksObjectID`: hash the object file against its id even when the raw value is named (fsck does).
    public func read(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil, checksObjectID: Bool = false,
                     decoder: ObjectDecoder, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try read(id, expectedLength: expectedLength, expectedRawSHA256: expectedRawSHA256, checksObjectID: checksObjectID, decoder: decoder,
                 destination: nil, sink: sink)
    }

    /// `read`, offering `destination` (exactly the raw length) to codecs that can decode in place: their pieces then
    /// point into it, where the sink finds them already in place (no copy).
    /// `pool`, when given, supplies the delta bases' buffers and takes them back once the object is decoded.
    /// `lentBases`: raw values of objects the caller already holds (object id → bytes), used instead of decoding
    /// those objects again where this one is decoded against them; only by a read that names its raw value, which
    /// proves the result whatever the bases were (see below).
    func read(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil, checksObjectID: Bool = false,
              decoder: ObjectDecoder, destination: UnsafeMutableRawBufferPointer?, pool: LargeBufferPool? = nil,
              lentBases: [String: UnsafeRawBufferPointer] = [:], sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let object = try open(id)
        let trailer = object.trailer
        if let expectedLength, expectedLength != trailer.rawCount {
            throw corrupt(id, "it holds \(trailer.rawLength) bytes where \(expectedLength) are expected")
        }
        if let expectedRawSHA256, expectedRawSHA256 != trailer.rawSHA256.hexString {
            throw corrupt(id, "it holds another value than the manifest names (raw SHA-256 \(trailer.rawSHA256.hexString.prefix(12)), expected \(expectedRawSHA256.prefix(12)))")
        }
        // A read that names the raw value it expects is proven by that value alone: the decoded bytes hash to the
        // SHA-256 the manifest names, whatever the object file's other bytes are, and whatever its delta bases' are
        // (the decoded bytes depend on every byte of each base). Hashing the object file, and hashing each base
        // twice more, would triple the hashing for nothing the reader gets. Reads that expect nothing (fsck, fetch
        // verification) check the object id, and every base whole, as well.
        let provenByRawValue = expectedRawSHA256 != nil && !checksObjectID
        // The dependency graph is walked on trailers alone first (cycles, depth, size of the work), before anything
        // is allocated for a base.
        if !trailer.dependencies.isEmpty { _ = try dependencyChain(of: id, opened: object) }
        let dependencies = try dependencyBuffers(of: object, id: id, verified: !provenByRawValue,
                                                 levelsLeft: ObjectStore.maximumChainDepth, decoder: decoder, pool: pool,
                                                 lent: provenByRawValue ? lentBases : [:])
        defer { if let pool { for d in dependencies { pool.give(d) } } }
        let stored: SHA256Hasher? = provenByRawValue ? nil : SHA256Hasher()
        let raw = SHA256Hasher()
        var produced = 0
        try decoder.decode(file: object.file, payloadLength: object.payloadLength, trailer: trailer, dependencies: dependencies,
                           storedHasher: stored, objectID: id, destination: destination) { piece in
            raw.update(piece)
            produced += piece.count
            try sink(piece)
        }
        if let stored {
            stored.update(object.trailerBytes)
            guard stored.finalizeHex() == id else { throw corrupt(id, "its bytes do not match its SHA-256") }
        }
        guard produced == trailer.rawCount, raw.finalizeHex() == trailer.rawSHA256.hexString else {
            throw corrupt(id, "its decoded bytes do not match the recorded raw SHA-256")
        }
    }

    // MARK: Delta chains

    /// The deepest delta chain a reader follows: an object whose base's base ... is more than this many levels
    /// deep is refused (writers stay well below: `EncodingPolicy.maximumDeltaDepth`).
    public static let maximumChainDepth = 16
    /// The most object decodes one read may take, bases included (a crafted graph of shared bases could otherwise
    /// ask for 2^depth decodes).
    public static let maximumChainDecodes = 64

    /// An object's dependencies, transitively, as its trailers (and theirs) name them.
    public struct DependencyChain: Sendable {
        /// 0 for an object with no dependency, else 1 + the deepest dependency's depth.
        public var depth: Int
        /// Every object it depends on, directly or not, each once, nearest first, with its file size.
        public var objects: [(id: String, size: Int)]
        public var objectIDs: [String] { objects.map(\.id) }
    }

    /// The dependency chain of an object, read from trailers only (no payload is read): cheap enough for every
    /// delta a `git add` writes. Refuses, with one line, a chain deeper than `maximumChainDepth`, a loop (only a
    /// crafted store can have one: an object's id hashes its dependencies' ids), a dependency that is missing or
    /// unreadable, and a graph whose decode would take more than `maximumChainDecodes` decodes.
    public func dependencyChain(of id: String) throws -> DependencyChain {
        try dependencyChain(of: id, opened: open(id))
    }

    func dependencyChain(of id: String, opened: OpenedObject) throws -> DependencyChain {
        var memo: [String: (depth: Int, decodes: Int)] = [:]
        var onPath: Set<String> = [id]
        var order: [(id: String, size: Int)] = []
        // Recursion bounded by `maximumChainDepth` (checked before each level).
        func visit(_ object: OpenedObject, _ objectID: String, level: Int) throws -> (depth: Int, decodes: Int) {
            var depth = 0
            var decodes = 1
            for dependencyID in object.trailer.dependencyIDs {
                if onPath.contains(dependencyID) {
                    throw corrupt(id, "its delta chain loops back to object \(dependencyID.prefix(12))")
                }
                let sub: (depth: Int, decodes: Int)
                if let known = memo[dependencyID] {
                    sub = known
                } else {
                    guard level < ObjectStore.maximumChainDepth else {
                        throw corrupt(id, "its delta chain is deeper than \(ObjectStore.maximumChainDepth) objects")
                    }
                    let dependency: OpenedObject
                    do { dependency = try open(dependencyID) } catch let e as TesseraError {
                        throw TesseraError(e.code, "object \(id.prefix(12)) depends on object \(dependencyID.prefix(12)), which cannot be read: \(e.message)",
                                           hint: e.hint)
                    }
                    order.append((dependencyID, dependency.payloadLength + dependency.trailerBytes.count))
                    onPath.insert(dependencyID)
                    sub = try visit(dependency, dependencyID, level: level + 1)
                    onPath.remove(dependencyID)
                    memo[dependencyID] = sub
                }
                depth = max(depth, sub.depth + 1)
                decodes += sub.decodes
                guard depth <= ObjectStore.maximumChainDepth else {
                    throw corrupt(id, "its delta chain is deeper than \(ObjectStore.maximumChainDepth) objects")
                }
                guard decodes <= ObjectStore.maximumChainDecodes else {
                    throw corrupt(id, "decoding it would decode more than \(ObjectStore.maximumChainDecodes) delta bases")
                }
            }
            return (depth, decodes)
        }
        let (depth, _) = try visit(opened, id, level: 0)
        return DependencyChain(depth: depth, objects: order)
    }

    /// The decoded raw bytes of each of an object's dependencies, in trailer order. Each base is decoded after its
    /// own bases and before its buffer is allocated, so a chain of any depth holds at most two buffers at a time
    /// besides the caller's (the base being decoded and the one it is decoded against). One decoder serves every
    /// level: a level's decode starts only once all its bases are done.
    private func dependencyBuffers(of object: OpenedObject, id: String, verified: Bool, levelsLeft: Int,
                                   decoder: ObjectDecoder, pool: LargeBufferPool? = nil,
                                   lent: [String: UnsafeRawBufferPointer] = [:]) throws -> [LargeBuffer] {
        var out: [LargeBuffer] = []
        for dependencyID in object.trailer.dependencyIDs {
            // Checked again while decoding (the trailers were walked once already) in case the store changed since.
            guard levelsLeft > 0 else { throw corrupt(id, "its delta chain is deeper than \(ObjectStore.maximumChainDepth) objects") }
            if let bytes = lent[dependencyID] {
                guard bytes.count == object.trailer.rawCount else { throw corrupt(id, "its delta base has a different length") }
                out.append(LargeBuffer(borrowing: bytes))
                continue
            }
            out.append(try materialize(dependencyID, length: object.trailer.rawCount, dependent: id, verified: verified,
                                       levelsLeft: levelsLeft - 1, decoder: decoder, pool: pool, lent: lent))
        }
        return out
    }

    /// Decodes a delta base (exactly `length` raw bytes) into a buffer of its own. `verified`: check its object id
    /// and raw hash; otherwise only what is decoded from it proves it (see `read`).
    private func materialize(_ id: String, length: Int, dependent: String, verified: Bool, levelsLeft: Int,
                             decoder: ObjectDecoder, pool: LargeBufferPool? = nil, lent: [String: UnsafeRawBufferPointer] = [:]) throws -> LargeBuffer {
        let object = try open(id)
        guard object.trailer.rawCount == length else { throw corrupt(dependent, "its delta base has a different length") }
        let dependencies = try dependencyBuffers(of: object, id: id, verified: verified, levelsLeft: levelsLeft, decoder: decoder, pool: pool,
                                                 lent: lent)
        defer { if let pool { for d in dependencies { pool.give(d) } } }
        let buffer = try pool?.take(count: length) ?? LargeBuffer(count: length)
        let destination = buffer.bytes
        let stored: SHA256Hasher? = verified ? SHA256Hasher() : nil
        let raw: SHA256Hasher? = verified ? SHA256Hasher() : nil
        var at = 0
        try decoder.decode(file: object.file, payloadLength: object.payloadLength, trailer: object.trailer, dependencies: dependencies,
                           storedHasher: stored, objectID: id, destination: destination) { piece in
            guard at + piece.count <= destination.count else { throw corrupt(id, "it is longer than expected") }
            if piece.count == 0 { return }
            raw?.update(piece)
            // A codec that decoded in place hands over the bytes where they already are.
            if piece.baseAddress! != UnsafeRawPointer(destination.baseAddress! + at) {
                (destination.baseAddress! + at).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            }
            at += piece.count
        }
        guard at == destination.count else { throw corrupt(id, "it is shorter than expected") }
        if let stored, let raw {
            stored.update(object.trailerBytes)
            guard stored.finalizeHex() == id else { throw corrupt(id, "its bytes do not match its SHA-256") }
            guard raw.finalizeHex() == object.trailer.rawSHA256.hexString else {
                throw corrupt(id, "its decoded bytes do not match the recorded raw SHA-256")
            }
        }
        return buffer
    }

    /// Decodes a whole object into memory (verified).
    public func readAll(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil,
                        decoder: ObjectDecoder = ObjectDecoder()) throws -> [UInt8] {
        var out: [UInt8] = []
        // The array grows with what is decoded: a trailer's length is a claim, not a reservation.
        if let expectedLength { out.reserveCapacity(min(expectedLength, 1 << 26)) }
        try read(id, expectedLength: expectedLength, expectedRawSHA256: expectedRawSHA256, decoder: decoder) { out += $0 }
        return out
    }

    /// Decodes a whole object into a buffer of exactly its raw length (verified); throws if the length differs.
    public func readAll(_ id: String, into buffer: LargeBuffer, decoder: ObjectDecoder = ObjectDecoder()) throws -> LargeBuffer {
        try readAll(id, into: buffer.bytes, decoder: decoder)
        return buffer
    }

    /// Decodes a whole object into `destination`, which must be exactly its raw length (verified; throws otherwise).
    /// `pool` lends the buffers of delta bases (see `read`).
    public func readAll(_ id: String, into destination: UnsafeMutableRawBufferPointer, expectedRawSHA256: String? = nil,
                        decoder: ObjectDecoder = ObjectDecoder(), pool: LargeBufferPool? = nil,
                        lentBases: [String: UnsafeRawBufferPointer] = [:]) throws {
        var at = 0
        let capacity = destination.count
        try read(id, expectedLength: capacity, expectedRawSHA256: expectedRawSHA256, decoder: decoder, destination: destination, pool: pool,
                 lentBases: lentBases) { piece in
            guard at + piece.count <= capacity else { throw corrupt(id, "it is longer than expected") }
            if piece.count == 0 { return }
            if piece.baseAddress! != UnsafeRawPointer(destination.baseAddress! + at) {
                (destination.baseAddress! + at).copyMemory(from: piece.baseAddress!, byteCount: piece.count)
            }
            at += piece.count
        }
        guard at == capacity else { throw corrupt(id, "it is shorter than expected") }
    }

    /// Checks an object fully (its id and its raw value) without keeping its bytes.
    public func verify(_ id: String, expectedLength: Int? = nil, expectedRawSHA256: String? = nil,
                       decoder: ObjectDecoder = ObjectDecoder()) throws {
        try read(id, expectedLength: expectedLength, expectedRawSHA256: expectedRawSHA256, checksObjectID: true, decoder: decoder) { _ in }
    }

    /// Every object id in the store.
    public func allObjectIDs() -> [String] {
        var out: [String] = []
        for d in FileSystem.list(objectsDirectory) where d.count == 2 {
            for rest in FileSystem.list("\(objectsDirectory)/\(d)") where rest.count == 62 {
                let id = d + rest
                if ObjectID.isValid(id) { out.append(id) }
            }
        }
        return out.sorted()
    }

    public func remove(_ id: String) {
        guard ObjectID.isValid(id) else { return }
        FileSystem.remove(objectPath(id))
    }
}

/// Per-thread encoding state: one instance of each codec (zstd contexts, chunk scratch buffers), reused across
/// objects.
public final class ObjectEncoder {
    private var codecs: [UInt8: any ObjectCodec] = [:]

    public init() {}

    public func codec(_ type: any ObjectCodec.Type) -> any ObjectCodec {
        if let c = codecs[type.code] { return c }
        let c = type.init()
        codecs[type.code] = c
        return c
    }
}

/// Per-thread decoding state: one instance of each codec, and the payload read buffer.
public final class ObjectDecoder {
    private var codecs: [UInt8: any ObjectCodec] = [:]
    /// Payload blocks are read into this (1 MiB), reused across objects.
    private let input = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 64)

    public init() {}

    /// A decoder whose arithmetic deltas decode element by element (`StaticDeltaCoder.decodeReference`), the format's
    /// definition: tests compare it with the vectorised decoder every other decoder uses.
    package init(elementByElementDeltas: Bool) {
        let delta = ArithmeticDeltaCodec()
        delta.decodesElementByElement = elementByElementDeltas
        codecs[ArithmeticDeltaCodec.code] = delta
    }

    deinit { input.deallocate() }

    /// Decodes a payload whose trailer has been validated (`ObjectTrailer.decode`): every length below derives from
    /// the trailer's bounded raw length and the file's real size.
    func decode(file: FileDescriptor, payloadLength: Int, trailer: ObjectTrailer, dependencies: [LargeBuffer],
                storedHasher: SHA256Hasher?, objectID: String, destination: UnsafeMutableRawBufferPointer? = nil,
                sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        guard let type = ObjectCodecs.codec(code: trailer.codec) else {
            throw TesseraError(.objectCorrupt, "object \(objectID.prefix(12)) has an unknown encoding \(trailer.codec)", hint: "upgrade tessera")
        }
        let codec: any ObjectCodec
        if let c = codecs[type.code] { codec = c } else { codec = type.init(); codecs[type.code] = codec }
        let payload = PayloadReader(file: file, payloadLength: payloadLength, hasher: storedHasher, objectID: objectID, buffer: input)
        if let destination, destination.count == trailer.rawCount { payload.destination = destination }
        try codec.decode(payload, trailer: trailer, dependencies: dependencies, sink: sink)
    }
}

/// A lock on the store that keeps `tessera gc` from deleting objects while a command may be about to reference them.
///
/// Writers (the filter, the merge driver, fetches) hold it shared for as long as they run: an object a writer reuses
/// (found in the raw-value index) or writes is named only by a manifest git has not recorded yet, so no reachability
/// walk can see it. `tessera gc` takes it exclusively, and so waits for them. The lock is `flock(2)` on
/// `<store>/lock`, released by the kernel when the process ends, however it ends.
public final class StoreLock {
    private let fd: Int32

    public enum Mode { case shared, exclusive }

    /// Takes the lock, waiting for it. With `wait: false`, returns nil at once if it is held the other way.
    public init?(store: ObjectStore, mode: Mode, wait: Bool = true) throws {
        let path = store.root + "/lock"
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw FileDescriptor.posixError("cannot open \(path)") }
        var operation = mode == .shared ? LOCK_SH : LOCK_EX
        if !wait { operation |= LOCK_NB }
        while flock(fd, operation) != 0 {
            if errno == EINTR { continue }
            let code = errno
            close(fd)
            if code == EWOULDBLOCK { return nil }
            throw FileDescriptor.posixError("cannot lock \(path)", code)
        }
        self.fd = fd
    }

    deinit { close(fd) }
}
