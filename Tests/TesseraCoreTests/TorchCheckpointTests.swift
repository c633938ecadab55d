import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport

/// The PyTorch zip checkpoint and .npz readers (issue 12, item 6): the pickle reader executes nothing and refuses
/// what is not a dictionary of tensors; entries that are not plain arrays are named with their reason. (That every
/// tensor equals what torch / numpy wrote is in TesseraStoreTests/FormatLayoutTests.swift, which has a hasher.)
@Suite struct TorchCheckpointTests {
    static let formats = PackagePaths.fixtures + "/formats"

    @Test func npzEntriesThatAreNotPlainArraysAreNamedWithTheirReason() throws {
        let npz = try NumpyArchive(path: "\(Self.formats)/arrays.npz")
        #expect(npz.skipped.map(\.name) == ["fortran", "bigendian"])
        #expect(throws: TesseraError.self) { try npz.rawTensor("fortran") }
        let compressed = try NumpyArchive(path: "\(Self.formats)/arrays_compressed.npz")
        #expect(compressed.tensorNames.isEmpty && compressed.skipped.allSatisfy { $0.reason == "compressed" })
    }

    @Test func notADictionaryOfTensorsIsRefusedWithOneLine() throws {
        do {
            _ = try TorchCheckpoint(path: "\(Self.formats)/torch_not_tensors.pt")
            Issue.record("accepted")
        } catch let e as TesseraError {
            #expect(e.message.contains("'epoch' holds an int") && !e.message.contains("\n"))
        }
    }

    func refusal(_ pickle: [UInt8]) -> String? {
        do {
            _ = try TorchPickle(pickle, file: "p")
            return nil
        } catch let e as TesseraError {
            return e.message
        } catch {
            return "\(error)"
        }
    }

    @Test func hostilePicklesAreRefusedWithoutRunningAnything() throws {
        typealias P = TestPickle
        // A callable: GLOBAL os system + REDUCE (the classic), and builtins.eval through STACK_GLOBAL.
        let system = P.proto2 + P.global("os", "system") + P.mark + P.unicode("touch /tmp/pwned") + P.tuple + P.reduce + P.stop
        #expect(refusal(system)?.contains("os.system") == true)
        let eval = P.proto2 + P.unicode("builtins") + P.unicode("eval") + [0x93] + P.mark + P.unicode("1") + P.tuple + P.reduce + P.stop
        #expect(refusal(eval)?.contains("builtins.eval") == true)
        // A whitelisted global called with what it does not take.
        let reduceDict = P.proto2 + P.global("collections", "OrderedDict") + P.mark + P.int1(1) + P.tuple + P.reduce + P.stop
        #expect(refusal(reduceDict)?.contains("OrderedDict called with arguments") == true)
        // The memo lies: BINGET of an entry never stored.
        #expect(refusal(P.proto2 + [0x68, 9] + P.stop)?.contains("memo entry 9") == true)
        // The stack lies: TUPLE2 on an empty stack, TUPLE without MARK, STOP with two values.
        #expect(refusal(P.proto2 + [0x86] + P.stop)?.contains("stack is empty") == true)
        #expect(refusal(P.proto2 + P.int1(1) + P.tuple + P.stop)?.contains("no MARK") == true)
        #expect(refusal(P.proto2 + P.int1(1) + P.int1(2) + P.stop)?.contains("STOP with 2 values") == true)
        // A value popped from below a MARK.
        #expect(refusal(P.proto2 + P.int1(1) + P.mark + [0x85] + P.stop)?.contains("stack is empty") == true)
        // Truncated: no STOP; a string longer than the bytes.
        #expect(refusal(P.proto2 + P.emptyDict)?.contains("truncated") == true)
        #expect(refusal(P.proto2 + [0x58, 0xFF, 0xFF, 0xFF, 0x7F, 0x41] + P.stop)?.contains("truncated") == true)
        // A tensor view reaching past its storage; a stride tuple of the wrong length.
        let far = P.floatTensorDict([("w", "0", 4, [3, 2], [2, 1], 0)])
        #expect(refusal(far)?.contains("reaches element 5 of storage 0, which has 4") == true)
        let strides = P.floatTensorDict([("w", "0", 4, [2, 2], [1], 0)])
        #expect(refusal(strides)?.contains("invalid offset, size or stride") == true)
        // A dictionary inside itself (through the memo): refused, no endless walk.
        let cycle = P.proto2 + P.emptyDict + [0x71, 0] + P.unicode("me") + [0x68, 0] + P.setitem + P.stop
        #expect(refusal(cycle)?.contains("inside itself") == true)
        // An opcode torch does not write (INST, which would call anything).
        #expect(refusal(P.proto2 + [0x69] + Array("os\nsystem\n".utf8) + P.stop)?.contains("opcode 0x69") == true)
        // And a well-formed one is read.
        let ok = try TorchPickle(P.floatTensorDict([("w", "0", 4, [2, 2], [1, 2], 0)]), file: "p")
        #expect(ok.tensors.map(\.name) == ["w"] && ok.tensors[0].tensor.isContiguous == false)
    }

    @Test func blockQuantisedTensorLinesParseAndRenderExactly() throws {
        let id = String(repeating: "a", count: 64), raw = String(repeating: "b", count: 64)
        let text = "tessera-manifest 2\nformat gguf\nsize 288\ntensor w Q4_K [512,1] zstd \(raw) \(id) 10\nend\n"
        let m = try Manifest.parse(text)
        #expect(m.typedTensors.first.map { "\($0.type) \($0.shape) \($0.end - $0.begin)" } == "Q4_K [512, 1] 288")
        #expect(m.render() == text)
        // Not whole blocks; and block types in a version 1 manifest (which predates them).
        #expect(throws: TesseraError.self) { try Manifest.parse(text.replacingOccurrences(of: "[512,1]", with: "[500,1]")) }
        #expect(throws: TesseraError.self) {
            try Manifest.parse("tessera-manifest 1\nformat gguf\nsize 288\ntensor w Q4_K [512,1] 0 288 zstd \(raw) \(id) 10\nend\n")
        }
    }
}

