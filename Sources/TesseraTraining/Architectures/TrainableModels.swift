import TesseraEngine
import TesseraIO

/// The trainable wrapper of a model the engine loaded.
public enum TrainableModels {
    /// `model` (a `LlamaModel`, `GPT2Model` or `GPTNeoModel`) as a `TrainableLanguageModel`.
    public static func make(_ model: AnyObject) throws -> any TrainableLanguageModel {
        if let llama = model as? LlamaModel { return LlamaTraining(llama) }
        if let gpt2 = model as? GPT2Model { return GPT2Training(gpt2) }
        if let neo = model as? GPTNeoModel { return GPTNeoTraining(neo) }
        throw TesseraError(.unsupported, "training runs on Llama, GPT-2 and GPT-Neo language models, not on \(type(of: model))",
                           hint: "load a Llama, GPT-2 or GPT-Neo checkpoint")
    }

    /// `model` (a `BERTModel`) as a `TrainableSequenceClassifier`.
    public static func makeClassifier(_ model: AnyObject) throws -> any TrainableSequenceClassifier {
        if let bert = model as? BERTModel { return BERTTraining(bert) }
        throw TesseraError(.unsupported, "classifier training runs on BERT models, not on \(type(of: model))", hint: "load a BERT checkpoint")
    }
}
