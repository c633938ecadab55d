import Foundation
import TesseraStore

/// An empty object store in a new temporary folder, and the folder (the caller removes it).
public func temporaryStore() throws -> (ObjectStore, String) {
    let dir = NSTemporaryDirectory() + "tessera-store-" + UUID().uuidString.prefix(8)
    return (try ObjectStore(root: dir), dir)
}
