import Dispatch
import Foundation
import Testing
import TesseraIO

@Suite struct ByteBudgetTests {
    /// A producer and a consumer on two threads: what is in flight never exceeds the limit, except for one item
    /// larger than the limit, which passes alone.
    @Test func inFlightStaysWithinTheLimit() {
        let budget = ByteBudget(limit: 100)
        let sizes = (0..<2000).map { $0 == 777 ? 250 : ($0 * 37) % 60 + 1 }
        final class Box: @unchecked Sendable {
            var queue: [Int] = []
            var worst = 0
            let lock = NSLock()
            let items = DispatchSemaphore(value: 0)
        }
        let box = Box()
        let consumer = Thread {
            for _ in sizes {
                box.items.wait()
                box.lock.lock(); let n = box.queue.removeFirst(); box.lock.unlock()
                budget.release(n)
            }
        }
        consumer.start()
        for n in sizes {
            #expect(budget.reserve(n))
            let now = budget.inFlight
            box.lock.lock(); box.worst = max(box.worst, n > 100 ? 0 : now); box.queue.append(n); box.lock.unlock()
            if n > 100 { #expect(now == n, "an oversized item waits for an empty budget") }
            box.items.signal()
        }
        while budget.inFlight > 0 { usleep(1000) }
        #expect(box.worst <= 100)
    }

    @Test func stopWakesAWaiterAndKeepsTheAccounts() {
        let budget = ByteBudget(limit: 10)
        #expect(budget.reserve(8))
        final class Flag: @unchecked Sendable { var result: Bool? }
        let flag = Flag()
        let done = DispatchSemaphore(value: 0)
        Thread { flag.result = budget.reserve(5); done.signal() }.start()
        usleep(50_000)
        #expect(flag.result == nil, "the waiter waits while 8 + 5 > 10")
        budget.stop()
        done.wait()
        #expect(flag.result == false)
        // Counted all the same, so that each reserve has its release.
        #expect(budget.inFlight == 13)
        budget.release(8)
        budget.release(5)
        #expect(budget.inFlight == 0 && budget.isStopped)
    }
}
