#if canImport(Glibc)
import Glibc
#endif
import TesseraCore
import TesseraStore
import TesseraIO

/// git's pkt-line framing (gitprotocol-common): a 4-hex-digit length that counts itself, then the payload;
/// "0000" is a flush packet. Packets carry at most 65516 bytes of payload.
public enum PktLine {
    public static let maxPayload = 65516
}

/// Reads pkt-lines from a file descriptor through a large buffer (git streams whole checkpoints through here).
public final class PktLineReader {
    private let fd: Int32
    private var buffer: [UInt8]
    private var start = 0
    private var end = 0

    public init(fd: Int32, bufferSize: Int = 1 << 20) {
        self.fd = fd
        buffer = [UInt8](repeating: 0, count: bufferSize)
    }

    private func fill(atLeast n: Int) throws -> Bool {
        if end - start >= n { return true }
        if start > 0 {
            let live = end - start
            buffer.withUnsafeMutableBytes { b in
                if live > 0 { b.baseAddress!.copyMemory(from: b.baseAddress! + start, byteCount: live) }
            }
            start = 0
            end = live
        }
        while end - start < n {
            let got = buffer.withUnsafeMutableBytes { b in Glibc.read(fd, b.baseAddress! + end, b.count - end) }
            if got < 0 {
                if errno == EINTR { continue }
                throw FileDescriptor.posixError("cannot read from git")
            }
            if got == 0 { return false }
            end += got
        }
        return true
    }

    public enum Packet {
        case flush
        /// The payload, valid only until the next read.
        case data(UnsafeRawBufferPointer)
    }

    /// The next packet, or nil at end of input (git closed the pipe).
    public func next() throws -> Packet? {
        guard try fill(atLeast: 4) else {
            if end > start { throw TesseraError(.git, "git's filter stream ended inside a packet header") }
            return nil
        }
        var length = 0
        for k in 0..<4 {
            let c = buffer[start + k]
            let v: Int
            switch c {
            case 0x30...0x39: v = Int(c) - 0x30
            case 0x61...0x66: v = Int(c) - 0x61 + 10
            case 0x41...0x46: v = Int(c) - 0x41 + 10
            default: throw TesseraError(.git, "git's filter stream has an invalid packet header")
            }
            length = length * 16 + v
        }
        if length == 0 { start += 4; return .flush }
        guard length > 4, length <= PktLine.maxPayload + 4 else {
            throw TesseraError(.git, "git's filter stream has an invalid packet length \(length)")
        }
        guard try fill(atLeast: length) else { throw TesseraError(.git, "git's filter stream ended inside a packet") }
        let payloadStart = start + 4
        start += length
        return .data(buffer.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[payloadStart..<(payloadStart + length - 4)]) })
    }

    /// A text packet (trailing newline removed), or nil for a flush packet.
    public func readText() throws -> String? {
        guard let p = try next() else { throw TesseraError(.git, "git closed the filter stream unexpectedly") }
        switch p {
        case .flush: return nil
        case let .data(bytes):
            var s = String(decoding: bytes, as: UTF8.self)
            if s.hasSuffix("\n") { s.removeLast() }
            return s
        }
    }

    /// Text packets up to the next flush.
    public func readList() throws -> [String] {
        var out: [String] = []
        while let line = try readText() { out.append(line) }
        return out
    }
}

/// Writes pkt-lines through a large buffer.
public final class PktLineWriter {
    private let fd: Int32
    private var buffer: [UInt8] = []
    private let capacity: Int

    public init(fd: Int32, capacity: Int = 1 << 20) {
        self.fd = fd
        self.capacity = capacity
        buffer.reserveCapacity(capacity + PktLine.maxPayload + 4)
    }

    private static let hex = Array("0123456789abcdef".utf8)

    private func header(_ n: Int) {
        buffer.append(PktLineWriter.hex[(n >> 12) & 15])
        buffer.append(PktLineWriter.hex[(n >> 8) & 15])
        buffer.append(PktLineWriter.hex[(n >> 4) & 15])
        buffer.append(PktLineWriter.hex[n & 15])
    }

    public func writeText(_ s: String) throws {
        let bytes = Array((s + "\n").utf8)
        try bytes.withUnsafeBytes { try writeData($0) }
    }

    /// Writes bytes as as many packets as needed.
    public func writeData(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = min(PktLine.maxPayload, bytes.count - offset)
            header(n + 4)
            buffer.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
            offset += n
            if buffer.count >= capacity { try drain() }
        }
    }

    public func flushPacket() throws {
        buffer.append(contentsOf: Array("0000".utf8))
    }

    /// Sends everything buffered to git.
    public func drain() throws {
        var offset = 0
        while offset < buffer.count {
            let n = buffer.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 {
                if errno == EINTR { continue }
                throw FileDescriptor.posixError("cannot write to git")
            }
            offset += n
        }
        buffer.removeAll(keepingCapacity: true)
    }
}
