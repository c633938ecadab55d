import Foundation
import TesseraCore
import TesseraIO
import TesseraStore

/// Deletes the objects that nothing reaches (`Reachability`, delta bases of reachable objects included,
/// transitively), never a reachable one, and stale temporary files.
/// Unreachable objects younger than the grace period are kept: a `git add` running at the same time has written
/// objects that no index names yet. The store's lock is taken exclusively, so git commands that write to the store
/// (they hold it shared) finish first.
public struct GarbageCollector {
    public struct Result: Equatable, Sendable {
        /// Unreachable objects deleted (or, in a dry run, that would be).
        public var deleted = 0
        public var freedBytes = 0
        public var kept = 0
        public var temporaryFiles = 0
    }

    public let repository: Repository
    /// Seconds; 0 deletes every unreachable object.
    public let gracePeriod: Double

    public init(repository: Repository, gracePeriod: Double) {
        self.repository = repository
        self.gracePeriod = gracePeriod
    }

    /// Collects (or only counts, with `dryRun`). `waiting` is called when git commands hold the store and the
    /// collection has to wait for them.
    public func collect(dryRun: Bool, waiting: () -> Void = {}) throws -> Result {
        let store = repository.store
        var lock = try StoreLock(store: store, mode: .exclusive, wait: false)
        if lock == nil {
            waiting()
            lock = try StoreLock(store: store, mode: .exclusive)
        }
        defer { withExtendedLifetime(lock) {} }
        // Every dependency of a reachable object is reachable: a delta is only as good as its chain.
        let reachable = try Reachability(repository: repository).objectIDsWithDependencies(in: store).ids
        let now = Date().timeIntervalSince1970
        var result = Result()
        for id in store.allObjectIDs() {
            if reachable.contains(id) { result.kept += 1; continue }
            let path = store.objectPath(id)
            guard let st = FileSystem.fileStat(path) else { continue }
            if now - Double(st.mtimeNanoseconds) / 1e9 < gracePeriod { result.kept += 1; continue }
            if !dryRun { store.remove(id) }
            result.deleted += 1
            result.freedBytes += st.size
        }
        // Temporary files of a filter that was killed; a minute old at least (a running one may still write them),
        // unless the grace period is 0.
        for name in FileSystem.list(store.tmpDirectory) {
            let p = store.tmpDirectory + "/" + name
            if let st = FileSystem.fileStat(p), now - Double(st.mtimeNanoseconds) / 1e9 >= max(gracePeriod, 60) || gracePeriod == 0 {
                if !dryRun { FileSystem.remove(p) }
                result.temporaryFiles += 1
            }
        }
        return result
    }
}
