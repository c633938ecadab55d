import Foundation
import TesseraIO

/// The oracle: each example goes to the expert(s) trained on its task (`RoutingContext.task`, matched against each
/// expert's task names; several experts of one task share equally). An example whose task no expert was trained on
/// gets no expert (the base model alone), which `RoutedLanguageModel` reports before evaluating it.
public final class OracleRouter: ExpertRouter {
    public let method = "oracle"
    /// Per expert of the library (library order), the tasks it was trained on.
    public let expertTasks: [[String]]

    public init(expertTasks: [[String]]) {
        self.expertTasks = expertTasks
    }

    public func prepare(modules: [RoutedModule]) throws {
        guard expertTasks.contains(where: { !$0.isEmpty }) else {
            throw TesseraError(.invalidParameter, "the oracle router needs experts that name the tasks they were trained on",
                               hint: "give each expert its tasks (`tessera experts add DIR --task NAME`)")
        }
    }

    /// The experts (library indices) trained on `task`; a task given as `name:N` (an evaluation limit) matches `name`.
    public func experts(for task: String?) -> [Int] {
        guard let task else { return [] }
        let name = Self.taskName(task)
        return expertTasks.indices.filter { expertTasks[$0].contains { Self.taskName($0) == name } }
    }

    static func taskName(_ task: String) -> String {
        if let colon = task.lastIndex(of: ":"), Int(task[task.index(after: colon)...]) != nil { return String(task[..<colon]) }
        return task
    }

    public func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
                      into weights: UnsafeMutablePointer<Float>) {
        let chosen = Set(experts(for: context.task))
        let e = module.experts.count
        let present = module.experts.filter { chosen.contains($0) }.count
        for t in 0..<rows {
            for (j, expert) in module.experts.enumerated() {
                weights[t * e + j] = present > 0 && chosen.contains(expert) ? 1 / Float(present) : 0
            }
        }
    }
}
