import Foundation
import Testing
import TesseraCore
import TesseraIO
import TesseraTestSupport
import TesseraTraining

/// AdamW and the learning-rate schedules against what torch 2.13 and transformers computed
/// (Tests/Fixtures/training/optimizer/, made by scripts/make_training_fixtures.py; its README says the format).
@Suite struct TrainerOptimizerTests {
    static let folder = PackagePaths.fixtures + "/training/optimizer"

    static func json(_ name: String) throws -> JSONValue {
        try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/" + name))))
    }

    /// A nested list of numbers, flattened row-major.
    static func flat(_ v: JSONValue?) -> [Double] {
        guard let v else { return [] }
        if let d = v.doubleValue { return [d] }
        return (v.arrayValue ?? []).flatMap { flat($0) }
    }

    @Test(arguments: ["constant", "linear_warmup_3_total_10"])
    func adamWFollowsTorch(_ name: String) throws {
        let fixture = try Self.json("adamw.json")
        let h = try #require(fixture["hyperparameters"])
        let settings = AdamWSettings(beta1: try #require(h["beta1"]?.doubleValue), beta2: try #require(h["beta2"]?.doubleValue),
                                     epsilon: try #require(h["eps"]?.doubleValue), weightDecay: try #require(h["weight_decay"]?.doubleValue))
        let names = ["matrix", "vector", "scalar"]
        var parameters = names.map { n in Self.flat(fixture["initial"]?[n]).map(Float.init) }
        var moments = parameters.map { AdamWMoments(count: $0.count) }
        let gradients = try #require(fixture["gradients"]?.arrayValue)
        let run = try #require(fixture["cases"]?[name])
        let rates = Self.flat(run["lr"])
        let after = try #require(run["after_step"]?.arrayValue)
        #expect(gradients.count == 5 && rates.count == 5 && after.count == 5)
        if name == "linear_warmup_3_total_10" {
            // The schedule gives the rates the fixture used.
            for k in 0..<5 {
                let lr = LearningRateSchedule.linear.rate(base: try #require(h["lr"]?.doubleValue), step: k, warmup: 3, total: 10)
                #expect(abs(lr - rates[k]) <= 1e-15)
            }
        }
        for k in 0..<5 {
            for (i, n) in names.enumerated() {
                let g = Self.flat(gradients[k][n]).map(Float.init)
                AdamW.update(&parameters[i], gradients: g, moments: &moments[i], step: k + 1, lr: rates[k], settings: settings)
                let expected = Self.flat(after[k][n])
                #expect(parameters[i].count == expected.count)
                for (x, y) in zip(parameters[i], expected) {
                    #expect(abs(Double(x) - y) <= 1e-6 * abs(y), "\(name) step \(k + 1) \(n): \(x) vs \(y)")
                }
            }
        }
    }

    @Test(arguments: [("linear", LearningRateSchedule.linear), ("cosine", .cosine), ("constant_with_warmup", .constant)])
    func schedulesAreTransformers(_ name: String, _ schedule: LearningRateSchedule) throws {
        let fixture = try #require(try Self.json("schedules.json")[name])
        let warmup = try #require(fixture["warmup"]?.intValue), total = try #require(fixture["total"]?.intValue)
        let expected = Self.flat(fixture["multipliers"])
        #expect(expected.count == 13)
        for (k, y) in expected.enumerated() {
            #expect(abs(schedule.multiplier(step: k, warmup: warmup, total: total) - y) <= 1e-15, "\(name) step \(k)")
        }
    }

    @Test func warmUpIsStepsOrARatio() throws {
        #expect(try WarmupSpec(parsing: "100").steps(total: 1000) == 100)
        // transformers rounds a ratio up: ceil(0.1 × 25) = 3.
        #expect(try WarmupSpec(parsing: "0.1").steps(total: 25) == 3)
        #expect(try WarmupSpec(parsing: "0.0").steps(total: 25) == 0)
        for bad in ["-1", "1.5", "abc", "", "nan", "0.1.2"] {
            #expect(throws: TesseraError.self, "\(bad)") { _ = try WarmupSpec(parsing: bad) }
        }
    }
}
