import Foundation

/// Every expert that adapts a module weighs 1/N there (N of them): the library's average, per module.
public final class UniformRouter: ExpertRouter {
    public let method = "uniform"

    public init() {}

    public func prepare(modules: [RoutedModule]) throws {}

    public func route(_ x: UnsafePointer<Float>, stride: Int, rows: Int, module: RoutedModule, context: RoutingContext,
                      into weights: UnsafeMutablePointer<Float>) {
        let e = module.experts.count
        guard e > 0 else { return }
        let w = 1 / Float(e)
        for i in 0..<(rows * e) { weights[i] = w }
    }
}
