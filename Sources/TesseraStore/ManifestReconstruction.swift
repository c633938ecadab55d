import Foundation
import TesseraCore

extension ObjectStore {
    /// Objects a manifest needs that this store lacks (what a checkout must fetch first).
    public func missingObjects(of manifest: Manifest) -> [String] {
        manifest.objectIDs.filter { !contains($0) }
    }

    /// Rebuilds the file a manifest describes, byte for byte, handing the bytes to `sink` in file order.
    /// Every object is verified; on any error the caller must discard what it received.
    public func reconstruct(_ manifest: Manifest, file: String, decoder: ObjectDecoder = ObjectDecoder(),
                            sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        var written = 0
        for segment in manifest.segments {
            guard segment.begin == written else {
                throw TesseraError(.invalidManifest, "\(file): manifest segments do not tile the file")
            }
            switch segment {
            case let .gap(_, _, .inline(bytes)):
                try bytes.withUnsafeBytes { try sink($0) }
            default:
                guard let stored = segment.stored else { continue }
                var n = 0
                do {
                    try read(stored.objectID, decoder: decoder) { piece in
                        n += piece.count
                        try sink(piece)
                    }
                } catch let e as TesseraError {
                    var what = "\(file)"
                    if case let .tensor(name, _, _, _, _, _) = segment { what += ": tensor '\(name)'" }
                    throw TesseraError(e.code, "\(what): \(e.message)", hint: e.hint)
                }
                guard n == segment.end - segment.begin else {
                    throw TesseraError(.objectCorrupt, "\(file): object \(stored.objectID.prefix(12)) has \(n) bytes, the manifest expects \(segment.end - segment.begin)",
                                       hint: "run `tessera fsck`")
                }
            }
            written = segment.end
        }
        guard written == manifest.size else { throw TesseraError(.invalidManifest, "\(file): manifest does not cover the whole file") }
    }
}

/// A checkpoint read through its manifest from the object store, with no checkout: what `REV:path` means to merge,
/// task vectors and the engine.
public final class StoredCheckpoint: TensorSource, @unchecked Sendable {
    // @unchecked: immutable after init; the store is itself safe to share.
    public let sourceName: String
    public let manifest: Manifest
    private let store: ObjectStore
    private let byName: [String: (dtype: DType, shape: [Int], stored: Manifest.Stored)]
    public let metadata: [(String, String)]

    public init(manifest: Manifest, store: ObjectStore, name: String) throws {
        guard manifest.format == .safetensors else {
            throw TesseraError(.unsupported, "\(name) is not a safetensors checkpoint", hint: "only checkpoints can be read as tensors")
        }
        self.manifest = manifest
        self.store = store
        sourceName = name
        var map: [String: (DType, [Int], Manifest.Stored)] = [:]
        for t in manifest.tensors { map[t.name] = (t.dtype, t.shape, t.stored) }
        byName = map
        // Metadata lives in the header object.
        var meta: [(String, String)] = []
        if case let .header(_, _, stored)? = manifest.segments.first {
            let bytes = try store.readAll(stored.objectID)
            meta = try SafetensorsLayout.parse(headerBytes: bytes, fileSize: nil, file: name).metadata
        }
        metadata = meta
    }

    public var tensorNames: [String] { manifest.tensors.map(\.name) }

    public func tensorInfo(_ name: String) -> (dtype: DType, shape: [Int])? {
        byName[name].map { ($0.dtype, $0.shape) }
    }

    public func stored(_ name: String) -> Manifest.Stored? { byName[name]?.stored }

    public func rawTensor(_ name: String) throws -> RawTensor {
        guard let t = byName[name] else {
            throw TesseraError(.notFound, "\(sourceName): no tensor named '\(name)'", hint: "`tessera ls \(sourceName)` lists the tensors")
        }
        return RawTensor(dtype: t.dtype, shape: t.shape, bytes: try store.readAll(t.stored.objectID))
    }
}
