import Testing
import TesseraTraining

@Test func plainTextTargetsAreTheNextTokens() {
    let s = TrainingSequence(text: [5, 7, 9])
    #expect(s.targets == [7, 9, TrainingSequence.ignored])
    #expect(s.countedTargets == 2)
}

@Test func lossSumsAddAndAverageOnce() {
    let total = LossSum(sum: 3, count: 2) + LossSum(sum: 1, count: 2)
    #expect(total == LossSum(sum: 4, count: 4))
    #expect(total.mean == 1)
    #expect(LossSum().mean.isNaN)
}
