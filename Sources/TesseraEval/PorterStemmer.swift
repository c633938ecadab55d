/// The Porter stemmer (M. F. Porter, "An algorithm for suffix stripping", 1980) with the departures of NLTK's
/// default mode, which is what Google's rouge-score uses for Rouge-L "with stemming": a few irregular forms,
/// "ies"/"ied" on four-letter words, y → i only after a consonant, "bli" → "ble", "fulli", "logi", a recursive
/// "alli", and words of one or two letters left alone.
///
/// Works on the lower-case ASCII tokens Rouge's tokenizer produces; other characters are treated as consonants.
public enum PorterStemmer {
    private static let irregular: [String: String] = [
        "skies": "sky", "sky": "sky", "dying": "die", "lying": "lie", "tying": "tie", "news": "news",
        "innings": "inning", "inning": "inning", "outings": "outing", "outing": "outing",
        "cannings": "canning", "canning": "canning", "howe": "howe", "proceed": "proceed", "exceed": "exceed",
        "succeed": "succeed",
    ]

    public static func stem(_ token: String) -> String {
        let lower = token.lowercased()
        if let form = irregular[lower] { return form }
        guard lower.utf8.count > 2 else { return lower }
        var w = Word(Array(lower.utf8))
        w.step1a()
        w.step1b()
        w.step1c()
        w.step2()
        w.step3()
        w.step4()
        w.step5a()
        w.step5b()
        return String(decoding: w.letters, as: UTF8.self)
    }

    /// A word being stemmed, as bytes.
    private struct Word {
        var letters: [UInt8]
        init(_ letters: [UInt8]) { self.letters = letters }

        // MARK: Letter classes and the measure m of [C](VC)^m[V]

        static func isVowelLetter(_ c: UInt8) -> Bool {
            c == UInt8(ascii: "a") || c == UInt8(ascii: "e") || c == UInt8(ascii: "i") || c == UInt8(ascii: "o") || c == UInt8(ascii: "u")
        }

        /// Consonant flags: a letter other than a, e, i, o, u, and other than a y that follows a consonant.
        static func consonants(_ s: ArraySlice<UInt8>) -> [Bool] {
            var flags: [Bool] = []
            flags.reserveCapacity(s.count)
            for c in s {
                if isVowelLetter(c) {
                    flags.append(false)
                } else if c == UInt8(ascii: "y") {
                    flags.append(flags.isEmpty ? true : !flags[flags.count - 1])
                } else {
                    flags.append(true)
                }
            }
            return flags
        }

        /// m: the number of vowel-run → consonant transitions.
        static func measure(_ s: ArraySlice<UInt8>) -> Int {
            let flags = consonants(s)
            var m = 0
            for i in flags.indices.dropFirst() where !flags[i - 1] && flags[i] { m += 1 }
            return m
        }

        static func containsVowel(_ s: ArraySlice<UInt8>) -> Bool { consonants(s).contains(false) }

        /// *d: ends with a double consonant.
        static func endsDoubleConsonant(_ s: ArraySlice<UInt8>) -> Bool {
            guard s.count >= 2 else { return false }
            let last = s.index(before: s.endIndex)
            return s[last] == s[last - 1] && consonants(s).last == true
        }

        /// *o: ends consonant-vowel-consonant, the last not w, x or y; NLTK also counts a two-letter vowel-consonant.
        static func endsCVC(_ s: ArraySlice<UInt8>) -> Bool {
            let f = consonants(s)
            if s.count >= 3 {
                let last = s[s.index(before: s.endIndex)]
                if f[f.count - 3] && !f[f.count - 2] && f[f.count - 1]
                    && last != UInt8(ascii: "w") && last != UInt8(ascii: "x") && last != UInt8(ascii: "y") { return true }
            }
            return s.count == 2 && !f[0] && f[1]
        }

        func ends(_ suffix: String) -> Bool {
            let sfx = Array(suffix.utf8)
            return letters.count >= sfx.count && letters[(letters.count - sfx.count)...].elementsEqual(sfx)
        }

        func stem(removing suffix: String) -> ArraySlice<UInt8> { letters[..<(letters.count - suffix.utf8.count)] }

        /// Porter's rule lists: the first rule whose suffix the word ends with decides; if its condition on the
        /// stem fails, the word stays as it is.
        mutating func applyFirst(_ rules: [(suffix: String, replacement: String, condition: (ArraySlice<UInt8>) -> Bool)]) {
            for rule in rules where ends(rule.suffix) {
                let s = stem(removing: rule.suffix)
                if rule.condition(s) { letters = Array(s) + Array(rule.replacement.utf8) }
                return
            }
        }

        // MARK: Steps

        mutating func step1a() {
            if ends("ies") && letters.count == 4 { letters = Array(stem(removing: "ies")) + Array("ie".utf8); return }
            applyFirst([("sses", "ss", { _ in true }), ("ies", "i", { _ in true }), ("ss", "ss", { _ in true }), ("s", "", { _ in true })])
        }

        mutating func step1b() {
            if ends("ied") {
                letters = Array(stem(removing: "ied")) + Array((letters.count == 4 ? "ie" : "i").utf8)
                return
            }
            if ends("eed") {
                let s = stem(removing: "eed")
                if Word.measure(s) > 0 { letters = Array(s) + Array("ee".utf8) }
                return
            }
            var base: ArraySlice<UInt8>? = nil
            for suffix in ["ed", "ing"] where ends(suffix) {
                let s = stem(removing: suffix)
                if Word.containsVowel(s) { base = s; break }
            }
            guard let base else { return }
            letters = Array(base)
            if ends("at") || ends("bl") || ends("iz") {
                letters.append(UInt8(ascii: "e"))
            } else if Word.endsDoubleConsonant(letters[...]) {
                let last = letters[letters.count - 1]
                if last != UInt8(ascii: "l") && last != UInt8(ascii: "s") && last != UInt8(ascii: "z") { letters.removeLast() }
            } else if Word.measure(letters[...]) == 1 && Word.endsCVC(letters[...]) {
                letters.append(UInt8(ascii: "e"))
            }
        }

        mutating func step1c() {
            guard ends("y") else { return }
            let s = stem(removing: "y")
            if s.count > 1 && Word.consonants(s).last == true { letters = Array(s) + [UInt8(ascii: "i")] }
        }

        mutating func step2() {
            let positive: (ArraySlice<UInt8>) -> Bool = { Word.measure($0) > 0 }
            if ends("alli") && positive(stem(removing: "alli")) {
                letters = Array(stem(removing: "alli")) + Array("al".utf8)
                step2()
                return
            }
            let word = letters
            applyFirst([
                ("ational", "ate", positive), ("tional", "tion", positive), ("enci", "ence", positive),
                ("anci", "ance", positive), ("izer", "ize", positive), ("bli", "ble", positive), ("alli", "al", positive),
                ("entli", "ent", positive), ("eli", "e", positive), ("ousli", "ous", positive), ("ization", "ize", positive),
                ("ation", "ate", positive), ("ator", "ate", positive), ("alism", "al", positive), ("iveness", "ive", positive),
                ("fulness", "ful", positive), ("ousness", "ous", positive), ("aliti", "al", positive), ("iviti", "ive", positive),
                ("biliti", "ble", positive), ("fulli", "ful", positive),
                // "logi" → "log" when the word minus "ogi" has m > 0.
                ("logi", "log", { _ in Word.measure(word[..<(word.count - 3)]) > 0 }),
            ])
        }

        mutating func step3() {
            let positive: (ArraySlice<UInt8>) -> Bool = { Word.measure($0) > 0 }
            applyFirst([("icate", "ic", positive), ("ative", "", positive), ("alize", "al", positive), ("iciti", "ic", positive),
                        ("ical", "ic", positive), ("ful", "", positive), ("ness", "", positive)])
        }

        mutating func step4() {
            let big: (ArraySlice<UInt8>) -> Bool = { Word.measure($0) > 1 }
            applyFirst([
                ("al", "", big), ("ance", "", big), ("ence", "", big), ("er", "", big), ("ic", "", big), ("able", "", big),
                ("ible", "", big), ("ant", "", big), ("ement", "", big), ("ment", "", big), ("ent", "", big),
                ("ion", "", { s in Word.measure(s) > 1 && (s.last == UInt8(ascii: "s") || s.last == UInt8(ascii: "t")) }),
                ("ou", "", big), ("ism", "", big), ("ate", "", big), ("iti", "", big), ("ous", "", big), ("ive", "", big),
                ("ize", "", big),
            ])
        }

        mutating func step5a() {
            guard ends("e") else { return }
            let s = stem(removing: "e")
            let m = Word.measure(s)
            if m > 1 || (m == 1 && !Word.endsCVC(s)) { letters = Array(s) }
        }

        mutating func step5b() {
            if ends("ll") && Word.measure(letters[..<(letters.count - 1)]) > 1 { letters.removeLast() }
        }
    }
}
