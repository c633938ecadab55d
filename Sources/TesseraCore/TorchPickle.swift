import TesseraIO

/// Reads the pickle of a PyTorch zip checkpoint (`archive/data.pkl`) without executing anything: a small stack
/// machine over the opcodes `torch.save` emits (protocol 2; a few later ones harmlessly), where the only callables
/// are the ones that rebuild tensors and ordered dictionaries. Any other global (`os.system`, `builtins.eval`, ...)
/// is refused with one line naming it, before anything could call it; storages are named by persistent ids.
///
/// Containers live in arrays owned by the reader and refer to each other by index, so a hostile pickle can build
/// neither a structure whose destruction recurses without bound nor a reference cycle that leaks; every length is
/// checked against the bytes that remain before anything is allocated.
public struct TorchPickle {
    /// A storage: `archive/data/<key>`, `count` elements of `dtype`.
    public struct Storage: Equatable, Sendable {
        public var key: String
        public var dtype: DType
        public var count: Int
    }

    /// A tensor: a strided view of a storage.
    public struct Tensor: Equatable, Sendable {
        public var storage: Storage
        public var offset: Int
        public var shape: [Int]
        public var stride: [Int]

        /// Whether the view is the whole storage, in row-major order.
        public var coversStorageContiguously: Bool {
            offset == 0 && isContiguous && (elementCount(shape) ?? -1) == storage.count
        }

        public var isContiguous: Bool {
            var expected = 1
            for (d, s) in zip(shape, stride).reversed() {
                if d != 1 && s != expected { return false }
                expected *= d
            }
            return true
        }
    }

    /// The tensors in pickle order, nested dictionaries' keys joined with '.'.
    public var tensors: [(name: String, tensor: Tensor)] = []
    /// Storages in order of first reference.
    public var storages: [Storage] = []

    /// The callables a checkpoint may name; everything else is refused.
    static let rebuilders: Set<String> = [
        "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state", "collections.OrderedDict",
    ]
    static let storageTypes: [String: DType] = [
        "FloatStorage": .f32, "HalfStorage": .f16, "BFloat16Storage": .bf16, "DoubleStorage": .f64,
        "LongStorage": .i64, "IntStorage": .i32, "ShortStorage": .i16, "CharStorage": .i8, "ByteStorage": .u8,
        "BoolStorage": .bool,
    ]
    /// torch dtypes as torch 2.x may write them (values only: calling one is refused).
    static let dtypeNames: Set<String> = ["float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool",
                                          "float", "half", "double", "long", "int", "short"]
    static let maximumNesting = 16

    private enum Value {
        case none, bool(Bool), int(Int), float(Double), string(String), bytes(Int)
        case tuple(Int), list(Int), dict(Int)
        case global(String)
        case storage(Int), tensor(Int)
        var kind: String {
            switch self {
            case .none: return "None"
            case .bool: return "a bool"
            case .int: return "an int"
            case .float: return "a float"
            case .string: return "a string"
            case .bytes: return "bytes"
            case .tuple: return "a tuple"
            case .list: return "a list"
            case .dict: return "a dict"
            case let .global(g): return g
            case .storage: return "a storage"
            case .tensor: return "a tensor"
            }
        }
    }

    /// Parses `bytes` (the whole pickle). `file` names the checkpoint in messages. Returns the tensors, or throws one
    /// line: a refused callable, a malformed pickle, or a structure that is not a dictionary of tensors.
    public init(_ bytes: [UInt8], file: String) throws {
        var machine = Machine(bytes: bytes, file: file)
        let root: Value
        do { root = try machine.run() } catch is Machine.Truncated { throw machine.bad("the pickle ends before its STOP opcode (truncated)") }
        try machine.collectTensors(root, into: &self)
    }

    /// Where the pickle ends (after STOP) in `bytes`, or nil if it has not ended within them. Throws on what this
    /// reader would refuse anyway.
    public static func length(of bytes: [UInt8], file: String) throws -> Int? {
        var machine = Machine(bytes: bytes, file: file)
        do {
            _ = try machine.run()
            return machine.at
        } catch is Machine.Truncated {
            return nil
        }
    }

    private struct Machine {
        struct Truncated: Error {}
        let bytes: [UInt8]
        let file: String
        var at = 0
        var stack: [Value] = []
        var marks: [Int] = []
        var memo: [Int: Value] = [:]
        var tuples: [[Value]] = []
        var lists: [[Value]] = []
        var dicts: [[(Value, Value)]] = []
        var storages: [Storage] = []
        var storageIndex: [String: Int] = [:]
        var tensors: [Tensor] = []

        init(bytes: [UInt8], file: String) { self.bytes = bytes; self.file = file }

        func bad(_ why: String) -> TesseraError {
            TesseraError(.invalidCheckpoint, "\(file): data.pkl: \(why)", hint: "the checkpoint is corrupt, or not a plain torch.save of tensors; re-save it (or convert it to safetensors)")
        }

        mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
            guard n >= 0, n <= bytes.count - at else { throw Truncated() }
            defer { at += n }
            return bytes[at..<(at + n)]
        }
        mutating func uint(_ n: Int) throws -> UInt64 {
            var v: UInt64 = 0
            for (k, b) in try take(n).enumerated() { v |= UInt64(b) << (8 * UInt64(k)) }
            return v
        }
        mutating func line() throws -> String {
            guard let end = bytes[at...].prefix(256).firstIndex(of: 0x0A) else {
                if bytes.count - at < 256 { throw Truncated() }
                throw bad("a GLOBAL name longer than 256 bytes")
            }
            defer { at = end + 1 }
            return String(decoding: bytes[at..<end], as: UTF8.self)
        }
        mutating func pop() throws -> Value {
            guard let v = stack.popLast(), stack.count >= (marks.last ?? 0) else { throw bad("the stack is empty where a value was expected (byte \(at))") }
            return v
        }
        mutating func popMark() throws -> [Value] {
            guard let m = marks.popLast(), m <= stack.count else { throw bad("no MARK for an opcode that needs one (byte \(at))") }
            defer { stack.removeSubrange(m...) }
            return Array(stack[m...])
        }
        mutating func string(_ n: UInt64) throws -> Value {
            guard n <= UInt64(bytes.count - at) else { throw Truncated() }
            return .string(String(decoding: try take(Int(n)), as: UTF8.self))
        }
        mutating func tuple(_ items: [Value]) -> Value { tuples.append(items); return .tuple(tuples.count - 1) }

        func allowGlobal(_ module: String, _ name: String) throws -> Value {
            let full = "\(module).\(name)"
            if TorchPickle.rebuilders.contains(full) { return .global(full) }
            if module == "torch", TorchPickle.storageTypes[name] != nil || TorchPickle.dtypeNames.contains(name) { return .global(full) }
            throw TesseraError(.invalidCheckpoint, "\(file): refused: the pickle names \(full), which is not a tensor rebuilder; nothing was run",
                               hint: "only plain torch.save dictionaries of tensors are read; load it in a trusted Python and save it with safetensors")
        }

        func int(_ v: Value, _ what: String) throws -> Int {
            guard case let .int(i) = v else { throw bad("\(what) is \(v.kind), not an int") }
            return i
        }
        func ints(_ v: Value, _ what: String) throws -> [Int] {
            guard case let .tuple(t) = v else { throw bad("\(what) is \(v.kind), not a tuple") }
            return try tuples[t].map { try int($0, what) }
        }

        mutating func reduce(_ callable: Value, _ args: Value) throws -> Value {
            guard case let .global(name) = callable else { throw bad("REDUCE calls \(callable.kind)") }
            guard case let .tuple(t) = args else { throw bad("REDUCE with \(args.kind) as arguments") }
            let a = tuples[t]
            switch name {
            case "collections.OrderedDict":
                guard a.isEmpty else { throw bad("OrderedDict called with arguments") }
                dicts.append([])
                return .dict(dicts.count - 1)
            case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
                guard a.count >= 4, case let .storage(s) = a[0] else { throw bad("\(name) without a storage") }
                let offset = try int(a[1], "a storage offset"), shape = try ints(a[2], "a size"), stride = try ints(a[3], "a stride")
                let storage = storages[s]
                guard offset >= 0, shape.count == stride.count, shape.count <= 16, shape.allSatisfy({ $0 >= 0 }), stride.allSatisfy({ $0 >= 0 }) else {
                    throw bad("a tensor of storage \(storage.key) has an invalid offset, size or stride")
                }
                // The last element the view reaches must lie in the storage.
                if (elementCount(shape) ?? 1) > 0 {
                    var reach = offset
                    for (d, st) in zip(shape, stride) {
                        let (m, o1) = (d - 1).multipliedReportingOverflow(by: st)
                        let (r, o2) = reach.addingReportingOverflow(m)
                        guard !o1, !o2 else { throw bad("a tensor of storage \(storage.key) reaches beyond any storage") }
                        reach = r
                    }
                    guard reach < storage.count else {
                        throw bad("a tensor of shape \(shape) at offset \(offset) reaches element \(reach) of storage \(storage.key), which has \(storage.count)")
                    }
                }
                guard elementCount(shape) != nil else { throw bad("a tensor of shape \(shape) is too large") }
                tensors.append(Tensor(storage: storage, offset: offset, shape: shape, stride: stride))
                return .tensor(tensors.count - 1)
            case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
                guard let first = a.first, case .tensor = first else { throw bad("\(name) without a tensor") }
                return first
            default:
                throw TesseraError(.invalidCheckpoint, "\(file): refused: the pickle calls \(name), which does not rebuild a tensor; nothing was run",
                                   hint: "only plain torch.save dictionaries of tensors are read")
            }
        }

        mutating func persistent(_ pid: Value) throws -> Value {
            guard case let .tuple(t) = pid, tuples[t].count >= 5, case .string("storage") = tuples[t][0] else {
                throw bad("a persistent id that is not a storage")
            }
            let f = tuples[t]
            guard case let .global(type) = f[1], type.hasPrefix("torch."), let dtype = TorchPickle.storageTypes[String(type.dropFirst(6))] else {
                throw bad("a storage of type \(f[1].kind)")
            }
            guard case let .string(key) = f[2], !key.isEmpty, key.utf8.count <= 64,
                  key.utf8.allSatisfy({ ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x5F }) else {
                throw bad("a storage key that is not a plain name")
            }
            let count = try int(f[4], "a storage size")
            guard count >= 0, dtype.byteCount(elements: count) != nil else { throw bad("storage \(key) declares \(count) elements") }
            if let k = storageIndex[key] {
                guard storages[k].dtype == dtype, storages[k].count == count else { throw bad("storage \(key) is declared twice, differently") }
                return .storage(k)
            }
            storages.append(Storage(key: key, dtype: dtype, count: count))
            storageIndex[key] = storages.count - 1
            return .storage(storages.count - 1)
        }

        mutating func run() throws -> Value {
            while true {
                guard let op = try take(1).first else { throw Truncated() }
                switch op {
                case 0x80: _ = try take(1)                              // PROTO
                case 0x95: _ = try take(8)                              // FRAME
                case 0x28: marks.append(stack.count)                    // MARK
                case 0x2E:                                              // STOP
                    guard marks.isEmpty, stack.count == 1 else { throw bad("STOP with \(stack.count) values on the stack") }
                    return stack[0]
                case 0x29: stack.append(tuple([]))                      // EMPTY_TUPLE
                case 0x5D: lists.append([]); stack.append(.list(lists.count - 1))
                case 0x7D: dicts.append([]); stack.append(.dict(dicts.count - 1))
                case 0x74: let items = try popMark(); stack.append(tuple(items))   // TUPLE
                case 0x85: let a = try pop(); stack.append(tuple([a]))
                case 0x86: let b = try pop(), a = try pop(); stack.append(tuple([a, b]))
                case 0x87: let c = try pop(), b = try pop(), a = try pop(); stack.append(tuple([a, b, c]))
                case 0x6C: let items = try popMark(); lists.append(items); stack.append(.list(lists.count - 1))  // LIST
                case 0x64:                                              // DICT
                    let items = try popMark()
                    guard items.count % 2 == 0 else { throw bad("DICT with an odd number of items") }
                    dicts.append(stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) })
                    stack.append(.dict(dicts.count - 1))
                case 0x61:                                              // APPEND
                    let v = try pop()
                    guard case let .list(l) = stack.last else { throw bad("APPEND to something that is not a list") }
                    lists[l].append(v)
                case 0x65:                                              // APPENDS
                    let items = try popMark()
                    guard case let .list(l) = stack.last else { throw bad("APPENDS to something that is not a list") }
                    lists[l] += items
                case 0x73:                                              // SETITEM
                    let v = try pop(), k = try pop()
                    guard case let .dict(d) = stack.last else { throw bad("SETITEM on something that is not a dict") }
                    dicts[d].append((k, v))
                case 0x75:                                              // SETITEMS
                    let items = try popMark()
                    guard items.count % 2 == 0, case let .dict(d) = stack.last else { throw bad("SETITEMS on something that is not a dict, or with an odd number of items") }
                    for k in stride(from: 0, to: items.count, by: 2) { dicts[d].append((items[k], items[k + 1])) }
                case 0x71, 0x72:                                        // BINPUT, LONG_BINPUT
                    let i = Int(try uint(op == 0x71 ? 1 : 4))
                    guard let top = stack.last, stack.count > (marks.last ?? 0) else { throw bad("BINPUT with an empty stack") }
                    memo[i] = top
                case 0x94:                                              // MEMOIZE
                    guard let top = stack.last else { throw bad("MEMOIZE with an empty stack") }
                    memo[memo.count] = top
                case 0x68, 0x6A:                                        // BINGET, LONG_BINGET
                    let i = Int(try uint(op == 0x68 ? 1 : 4))
                    guard let v = memo[i] else { throw bad("BINGET of memo entry \(i), which was never stored") }
                    stack.append(v)
                case 0x63:                                              // GLOBAL
                    let module = try line(), name = try line()
                    stack.append(try allowGlobal(module, name))
                case 0x93:                                              // STACK_GLOBAL
                    let n = try pop(), m = try pop()
                    guard case let .string(name) = n, case let .string(module) = m else { throw bad("STACK_GLOBAL of non-strings") }
                    stack.append(try allowGlobal(module, name))
                case 0x58: stack.append(try string(try uint(4)))        // BINUNICODE
                case 0x8C: stack.append(try string(try uint(1)))        // SHORT_BINUNICODE
                case 0x8D: stack.append(try string(try uint(8)))        // BINUNICODE8
                case 0x54: stack.append(try string(try uint(4)))        // BINSTRING
                case 0x55: stack.append(try string(try uint(1)))        // SHORT_BINSTRING
                case 0x42, 0x43:                                        // BINBYTES, SHORT_BINBYTES
                    let n = try uint(op == 0x42 ? 4 : 1)
                    guard n <= UInt64(bytes.count - at) else { throw Truncated() }
                    _ = try take(Int(n))
                    stack.append(.bytes(Int(n)))
                case 0x4A: stack.append(.int(Int(Int32(truncatingIfNeeded: try uint(4)))))   // BININT
                case 0x4B: stack.append(.int(Int(try uint(1))))         // BININT1
                case 0x4D: stack.append(.int(Int(try uint(2))))         // BININT2
                case 0x8A:                                              // LONG1
                    let n = Int(try uint(1))
                    guard n <= 8 else { throw bad("an integer of \(n) bytes") }
                    var v = try uint(n)
                    if n > 0 && n < 8 && v & (1 << (8 * UInt64(n) - 1)) != 0 { v |= ~0 << (8 * UInt64(n)) }
                    stack.append(.int(Int(Int64(bitPattern: v))))
                case 0x47:                                              // BINFLOAT (big-endian)
                    var v: UInt64 = 0
                    for b in try take(8) { v = v << 8 | UInt64(b) }
                    stack.append(.float(Double(bitPattern: v)))
                case 0x4E: stack.append(.none)
                case 0x88: stack.append(.bool(true))
                case 0x89: stack.append(.bool(false))
                case 0x30: _ = try pop()                                // POP
                case 0x31: _ = try popMark()                            // POP_MARK
                case 0x32: guard let top = stack.last else { throw bad("DUP with an empty stack") }; stack.append(top)
                case 0x51: let pid = try pop(); stack.append(try persistent(pid))      // BINPERSID
                case 0x52: let args = try pop(), callable = try pop(); stack.append(try reduce(callable, args))   // REDUCE
                case 0x62:                                              // BUILD: only empty state (None or {}) is accepted
                    let state = try pop()
                    switch state {
                    case .none: break
                    case let .dict(d) where dicts[d].isEmpty: break
                    case let .tuple(t) where tuples[t].allSatisfy({ if case .none = $0 { return true }; if case let .dict(d) = $0 { return dicts[d].isEmpty }; return false }): break
                    default: throw bad("BUILD sets state (\(state.kind)) on an object: not a plain tensor dictionary")
                    }
                    guard !stack.isEmpty else { throw bad("BUILD with an empty stack") }
                default:
                    throw bad("opcode 0x\(String(op, radix: 16)) at byte \(at - 1) is not one torch.save writes")
                }
            }
        }

        /// The tensors of a dictionary of tensors (or of dictionaries of tensors).
        func collectTensors(_ root: Value, into out: inout TorchPickle) throws {
            // Not a dictionary of tensors: a well-formed pickle of something else (`.unsupported`, not an error in the file).
            func other(_ why: String) -> TesseraError {
                TesseraError(.unsupported, "\(file): \(why)", hint: "only dictionaries of tensors (possibly nested) are read; save the state_dict, or convert it to safetensors")
            }
            guard case let .dict(d) = root else { throw other("the checkpoint holds \(root.kind), not a dictionary of tensors") }
            var seenDicts = Set<Int>()
            var names = Set<String>()
            func walk(_ d: Int, prefix: String, depth: Int) throws {
                guard depth < TorchPickle.maximumNesting, seenDicts.insert(d).inserted else { throw bad("dictionaries nested too deep, or a dictionary inside itself") }
                for (k, v) in dicts[d] {
                    guard case let .string(key) = k else { throw other("a key that is \(k.kind), not a string") }
                    let name = prefix.isEmpty ? key : "\(prefix).\(key)"
                    switch v {
                    case let .tensor(t):
                        guard names.insert(name).inserted else { throw bad("two tensors are named '\(name)'") }
                        out.tensors.append((name, tensors[t]))
                    case let .dict(inner): try walk(inner, prefix: name, depth: depth + 1)
                    default: throw other("'\(name)' holds \(v.kind), not a tensor: not a dictionary of tensors")
                    }
                }
            }
            try walk(d, prefix: "", depth: 0)
            var used = Set<String>()
            for (_, t) in out.tensors where used.insert(t.storage.key).inserted { out.storages.append(t.storage) }
        }
    }
}
