import Foundation
import Testing
import TesseraCore
import TesseraTestSupport

/// The one comparison of two checkpoint versions behind `git diff`, `tessera log` and the three-way merge.
@Suite struct ManifestDiffTests {
    /// A manifest of F32 tensors whose raw hashes are given (the objects do not matter to a diff).
    static func manifest(_ tensors: [(String, [Int], String)]) -> Manifest {
        var segments: [Manifest.Segment] = []
        var offset = 0
        for (name, shape, hash) in tensors {
            let n = 4 * shape.reduce(1, *)
            let raw = String(repeating: hash, count: 64 / hash.count)
            segments.append(.tensor(name: name, dtype: .f32, shape: shape, begin: offset, end: offset + n,
                                    Manifest.Stored(encoding: "raw", rawSHA256: raw, objectID: raw, objectSize: n)))
            offset += n
        }
        return Manifest(format: .safetensors, size: offset, segments: segments)
    }

    @Test func everyKindOfChangeInTheNewVersionsOrderThenTheRemovedOnes() throws {
        let old = Self.manifest([("a", [4], "a"), ("b", [4], "b"), ("c", [4], "c"), ("d", [4], "d"), ("r", [2, 2], "e")])
        let new = Self.manifest([("f", [4], "f"), ("a", [4], "a"), ("b", [4], "0"), ("e", [4], "c"), ("r", [4], "e")])
        let diff = try ManifestDiff(old: .init(old), new: .init(new))
        #expect(diff.changes.map { "\($0.kind.rawValue) \($0.oldName.map { "\($0)->" } ?? "")\($0.name)" }
                == ["added f", "unchanged a", "changed b", "renamed c->e", "changed r", "removed d"])
        // The same bytes under another shape are a change (a reshape), with the shape it had.
        #expect(diff.change(of: "r")?.oldShape == [2, 2])
        #expect(diff.change(of: "c")?.kind == .renamed && diff.change(of: "e")?.kind == .renamed)
        #expect(diff.count(.changed) == 2 && diff.count(.unchanged) == 1 && !diff.isEmpty)
        #expect(diff.change(of: "zzz") == nil)
        // Without pairing, a rename is a removal and an addition.
        let unpaired = try ManifestDiff(old: .init(old), new: .init(new), pairsRenames: false)
        #expect(unpaired.change(of: "c")?.kind == .removed && unpaired.change(of: "e")?.kind == .added)
        // No old version: everything is added; no new version: everything removed.
        #expect(try ManifestDiff(old: nil, new: .init(new)).count(.added) == 5)
        #expect(try ManifestDiff(old: .init(old), new: nil).count(.removed) == 5)
        #expect(try ManifestDiff(old: .init(old), new: .init(old)).isEmpty)
    }

    @Test func canonicallyEquivalentNamesAreTwoTensors() throws {
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        #expect(composed == decomposed)  // equal to Swift, not in bytes
        let old = Self.manifest([(composed, [4], "a")])
        let new = Self.manifest([(decomposed, [4], "b")])
        let diff = try ManifestDiff(old: .init(old), new: .init(new))
        #expect(diff.change(of: ExactName(composed))?.kind == .removed)
        #expect(diff.change(of: ExactName(decomposed))?.kind == .added)
        // The same bytes under the other spelling: a rename, not "unchanged".
        let renamed = try ManifestDiff(old: .init(old), new: .init(Self.manifest([(decomposed, [4], "a")])))
        #expect(renamed.changes.count == 1 && renamed.changes[0].kind == .renamed)
    }

    @Test func aHostileManifestNamingATensorTwiceIsCompared() throws {
        let twice = Self.manifest([("a", [4], "a"), ("a", [4], "b")])
        let diff = try ManifestDiff(old: .init(twice), new: .init(twice))
        #expect(diff.changes.count == 2)
    }

    /// A file side hashes its tensors only when it must: an added tensor is hashed only when something was
    /// removed (it might be a rename), one whose shape changed never.
    @Test func rawHashesAreAskedOnlyWhenNeeded() throws {
        final class Asked: @unchecked Sendable { var names: [String] = [] }
        let asked = Asked()
        let old = ManifestDiff.Side(tensors: [("a", .f32, [4]), ("s", .f32, [4])], rawSHA256: { asked.names.append("old " + $0); return $0 })
        let new = ManifestDiff.Side(tensors: [("a", .f32, [4]), ("s", .f32, [8]), ("n", .f32, [4])],
                                    rawSHA256: { asked.names.append("new " + $0); return $0 })
        _ = try ManifestDiff(old: old, new: new)
        #expect(asked.names == ["old a", "new a"])
    }

    @Test func numericSummariesOfChangedTensors() throws {
        let a = try MemorySource("a", floats: [("w", [3], [1, 2, 3]), ("z", [2], [0, 0])])
        let b = try MemorySource("b", floats: [("w", [3], [1, 2, 5]), ("z", [2], [0, 1])])
        func side(_ s: MemorySource, _ tag: String) -> ManifestDiff.Side {
            .init(tensors: [("w", .f32, [3]), ("z", .f32, [2])], rawSHA256: { tag + $0 }, source: s)
        }
        let diff = try ManifestDiff(old: side(a, "a"), new: side(b, "b"), numericSummaries: true)
        let w = try #require(diff.change(of: "w")?.numeric)
        #expect(w.l2 == 2 && w.maxAbs == 2 && abs((w.relative ?? 0) - 2 / 14.0.squareRoot()) < 1e-12)
        // From all zeros: no relative change.
        #expect(diff.change(of: "z")?.numeric?.relative == nil && diff.change(of: "z")?.numeric?.l2 == 1)
        #expect(try ManifestDiff(old: side(a, "a"), new: side(b, "b")).change(of: "w")?.numeric == nil)
    }
}
