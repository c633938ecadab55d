import TesseraCore

/// The subset of Jinja2 that chat templates of the ChatML family (and similar simple templates) are written in,
/// rendered as transformers renders them: `trim_blocks` and `lstrip_blocks` on, `-` whitespace control honoured.
///
/// Supported: text; `{{ expr }}`; `{# comments #}`; `{% for x in expr %}` (with `loop.index`, `index0`, `first`,
/// `last`, `length`, `revindex`, `revindex0`, and `{% else %}`); `{% if %}` / `elif` / `else`; `{% set x = expr %}`.
/// Expressions: string / integer / boolean / none literals, lists, variables, `a.b`, `a[b]`, `+ - * / % ~`,
/// comparisons, `in` / `not in`, `and` / `or` / `not`, `x if c else y`, tests `is [not] defined / none / string /
/// number / sequence / mapping / true / false`, filters `trim length upper lower string first last`, string methods
/// `strip lstrip rstrip startswith endswith upper lower`, and `raise_exception(msg)`. Anything else (macros,
/// `namespace`, `tojson`, tools) is rejected when the template is parsed, with the construct named.
enum Jinja {
    indirect enum Value: Equatable, Sendable {
        case undefined
        case none
        case bool(Bool)
        case int(Int)
        case string(String)
        case list([Value])
        case dict([String: Value])

        var truthy: Bool {
            switch self {
            case .undefined, .none: return false
            case let .bool(b): return b
            case let .int(i): return i != 0
            case let .string(s): return !s.isEmpty
            case let .list(l): return !l.isEmpty
            case let .dict(d): return !d.isEmpty
            }
        }

        /// As `{{ value }}` prints it (Python's str for these types).
        var rendered: String {
            switch self {
            case .undefined: return ""
            case .none: return "None"
            case let .bool(b): return b ? "True" : "False"
            case let .int(i): return String(i)
            case let .string(s): return s
            case let .list(l): return "[" + l.map(\.repr).joined(separator: ", ") + "]"
            case let .dict(d):
                return "{" + d.keys.sorted().map { "'\($0)': " + d[$0]!.repr }.joined(separator: ", ") + "}"
            }
        }

        var repr: String {
            if case let .string(s) = self { return "'" + s + "'" }
            return rendered
        }
    }

    indirect enum Expr: Sendable {
        case literal(Value)
        case list([Expr])
        case variable(String)
        case attribute(Expr, String)
        case `subscript`(Expr, Expr)
        case call(Expr, [Expr])
        case filter(Expr, String, [Expr])
        case test(Expr, String, negated: Bool)
        case unary(String, Expr)
        case binary(String, Expr, Expr)
        case conditional(then: Expr, condition: Expr, otherwise: Expr?)
    }

    indirect enum Node: Sendable {
        case text(String)
        case output(Expr)
        case conditional([(Expr, [Node])], otherwise: [Node])
        case loop(variable: String, iterable: Expr, body: [Node], otherwise: [Node])
        case assign(String, Expr)
    }

    struct Failure: Error { var message: String }

    // MARK: Template lexing

    enum Segment {
        case text(String)
        case expression(String)
        case statement(String)
    }

    /// Splits the template into text and tags, applying whitespace control, `trim_blocks` and `lstrip_blocks`.
    static func segments(_ template: String) throws -> [Segment] {
        let s = Array(template.unicodeScalars)
        var out: [Segment] = []
        var text: [Unicode.Scalar] = []
        var i = 0
        var stripNextLeading = false   // after a `-%}` / `-}}` / `-#}`
        var trimNextNewline = false    // trim_blocks after a block or comment tag
        func flushText() { if !text.isEmpty { out.append(.text(String(String.UnicodeScalarView(text)))); text = [] } }
        while i < s.count {
            if s[i] == "{", i + 1 < s.count, s[i + 1] == "{" || s[i + 1] == "%" || s[i + 1] == "#" {
                let kind = s[i + 1]
                let close: Unicode.Scalar = kind == "{" ? "}" : kind
                var j = i + 2
                let stripBefore = j < s.count && s[j] == "-"
                let keepBefore = j < s.count && s[j] == "+"  // `{%+` turns lstrip_blocks off for this tag
                if j < s.count && (s[j] == "-" || s[j] == "+") { j += 1 }
                // Find the closing `}}` / `%}` / `#}` (outside string literals for expressions and statements).
                var k = j
                var quote: Unicode.Scalar? = nil
                while k + 1 < s.count {
                    if let q = quote {
                        if s[k] == "\\" { k += 2; continue }
                        if s[k] == q { quote = nil }
                    } else if kind != "#" && (s[k] == "'" || s[k] == "\"") {
                        quote = s[k]
                    } else if s[k] == close && s[k + 1] == "}" {
                        break
                    }
                    k += 1
                }
                guard k + 1 < s.count else { throw Failure(message: "unclosed tag at character \(i)") }
                var bodyEnd = k
                let stripAfter = bodyEnd > j && s[bodyEnd - 1] == "-"
                if stripAfter || (bodyEnd > j && s[bodyEnd - 1] == "+") { bodyEnd -= 1 }
                if stripBefore {
                    while let last = text.last, last.properties.isWhitespace { text.removeLast() }
                } else if kind != "{" && !keepBefore {
                    // lstrip_blocks: spaces and tabs between the start of the source line and a block tag go.
                    var m = i
                    while m > 0 && (s[m - 1] == " " || s[m - 1] == "\t") { m -= 1 }
                    if m == 0 || s[m - 1] == "\n" {
                        var count = i - m
                        while count > 0, let last = text.last, last == " " || last == "\t" {
                            text.removeLast()
                            count -= 1
                        }
                    }
                }
                flushText()
                let body = String(String.UnicodeScalarView(s[j..<bodyEnd]))
                switch kind {
                case "{": out.append(.expression(body))
                case "%":
                    let trimmed = body.trimmingWhitespace()
                    if trimmed == "raw" || trimmed.hasPrefix("raw ") {
                        throw Failure(message: "{% raw %} blocks are not supported")
                    }
                    out.append(.statement(body))
                default: break
                }
                i = k + 2
                stripNextLeading = stripAfter
                trimNextNewline = kind != "{"
                continue
            }
            if stripNextLeading {
                if s[i].properties.isWhitespace { i += 1; continue }
                stripNextLeading = false
            }
            if trimNextNewline {
                trimNextNewline = false
                if s[i] == "\n" { i += 1; continue }
                if s[i] == "\r", i + 1 < s.count, s[i + 1] == "\n" { i += 2; continue }
            }
            text.append(s[i])
            i += 1
        }
        flushText()
        return out
    }

    // MARK: Expression lexing and parsing

    enum Token: Equatable {
        case name(String)
        case string(String)
        case int(Int)
        case op(String)
    }

    static func tokenize(_ source: String) throws -> [Token] {
        let s = Array(source.unicodeScalars)
        var tokens: [Token] = []
        var i = 0
        while i < s.count {
            let c = s[i]
            if c.properties.isWhitespace { i += 1; continue }
            if c == "'" || c == "\"" {
                var value = String.UnicodeScalarView()
                var k = i + 1
                while k < s.count && s[k] != c {
                    if s[k] == "\\" && k + 1 < s.count {
                        k += 1
                        switch s[k] {
                        case "n": value.append("\n")
                        case "t": value.append("\t")
                        case "r": value.append("\r")
                        default: value.append(s[k])
                        }
                    } else {
                        value.append(s[k])
                    }
                    k += 1
                }
                guard k < s.count else { throw Failure(message: "unterminated string in \(source)") }
                tokens.append(.string(String(value)))
                i = k + 1
            } else if c.properties.isAlphabetic || c == "_" {
                var k = i
                while k < s.count && (s[k].properties.isAlphabetic || s[k] == "_" || ("0"..."9").contains(s[k])) { k += 1 }
                tokens.append(.name(String(String.UnicodeScalarView(s[i..<k]))))
                i = k
            } else if ("0"..."9").contains(c) {
                var k = i
                while k < s.count && ("0"..."9").contains(s[k]) { k += 1 }
                guard let n = Int(String(String.UnicodeScalarView(s[i..<k]))) else { throw Failure(message: "bad number") }
                tokens.append(.int(n))
                i = k
            } else {
                let two = i + 1 < s.count ? String(String.UnicodeScalarView([c, s[i + 1]])) : ""
                if ["==", "!=", "<=", ">=", "//", "**"].contains(two) {
                    tokens.append(.op(two))
                    i += 2
                } else if "+-*/%~|.,()[]{}:=<>".unicodeScalars.contains(c) {
                    tokens.append(.op(String(c)))
                    i += 1
                } else {
                    throw Failure(message: "unexpected character \(c) in \(source)")
                }
            }
        }
        return tokens
    }

    struct Parser {
        var tokens: [Token]
        var i = 0

        init(_ source: String) throws { tokens = try Jinja.tokenize(source) }

        var atEnd: Bool { i >= tokens.count }
        func peek(_ offset: Int = 0) -> Token? { i + offset < tokens.count ? tokens[i + offset] : nil }
        mutating func accept(_ token: Token) -> Bool {
            if peek() == token { i += 1; return true }
            return false
        }
        mutating func expect(_ token: Token) throws {
            guard accept(token) else { throw Failure(message: "expected \(token) in expression") }
        }
        mutating func name() throws -> String {
            guard case let .name(n)? = peek() else { throw Failure(message: "expected a name") }
            i += 1
            return n
        }

        mutating func expression() throws -> Expr {
            let value = try orExpression()
            if accept(.name("if")) {
                let condition = try orExpression()
                let otherwise = accept(.name("else")) ? try expression() : nil
                return .conditional(then: value, condition: condition, otherwise: otherwise)
            }
            return value
        }

        mutating func orExpression() throws -> Expr {
            var left = try andExpression()
            while accept(.name("or")) { left = .binary("or", left, try andExpression()) }
            return left
        }

        mutating func andExpression() throws -> Expr {
            var left = try notExpression()
            while accept(.name("and")) { left = .binary("and", left, try notExpression()) }
            return left
        }

        mutating func notExpression() throws -> Expr {
            if accept(.name("not")) { return .unary("not", try notExpression()) }
            return try comparison()
        }

        mutating func comparison() throws -> Expr {
            var left = try concatenation()
            while true {
                if case let .op(op)? = peek(), ["==", "!=", "<", ">", "<=", ">="].contains(op) {
                    i += 1
                    left = .binary(op, left, try concatenation())
                } else if accept(.name("in")) {
                    left = .binary("in", left, try concatenation())
                } else if peek() == .name("not"), peek(1) == .name("in") {
                    i += 2
                    left = .unary("not", .binary("in", left, try concatenation()))
                } else if accept(.name("is")) {
                    let negated = accept(.name("not"))
                    left = .test(left, try name(), negated: negated)
                } else {
                    return left
                }
            }
        }

        mutating func concatenation() throws -> Expr {
            var left = try additive()
            while accept(.op("~")) { left = .binary("~", left, try additive()) }
            return left
        }

        mutating func additive() throws -> Expr {
            var left = try multiplicative()
            while case let .op(op)? = peek(), op == "+" || op == "-" {
                i += 1
                left = .binary(op, left, try multiplicative())
            }
            return left
        }

        mutating func multiplicative() throws -> Expr {
            var left = try unaryMinus()
            while case let .op(op)? = peek(), ["*", "/", "//", "%"].contains(op) {
                i += 1
                left = .binary(op, left, try unaryMinus())
            }
            return left
        }

        mutating func unaryMinus() throws -> Expr {
            if accept(.op("-")) { return .unary("-", try unaryMinus()) }
            return try postfix()
        }

        mutating func arguments() throws -> [Expr] {
            var args: [Expr] = []
            if accept(.op(")")) { return args }
            repeat {
                if case .name? = peek(), peek(1) == .op("=") {
                    throw Failure(message: "keyword arguments are not supported")
                }
                args.append(try expression())
            } while accept(.op(","))
            try expect(.op(")"))
            return args
        }

        mutating func postfix() throws -> Expr {
            var value = try primary()
            while true {
                if accept(.op(".")) {
                    value = .attribute(value, try name())
                } else if accept(.op("[")) {
                    if peek() == .op(":") { throw Failure(message: "slices are not supported") }
                    let index = try expression()
                    if peek() == .op(":") { throw Failure(message: "slices are not supported") }
                    try expect(.op("]"))
                    value = .subscript(value, index)
                } else if accept(.op("(")) {
                    value = .call(value, try arguments())
                } else if accept(.op("|")) {
                    let filter = try name()
                    let args = accept(.op("(")) ? try arguments() : []
                    value = .filter(value, filter, args)
                } else {
                    return value
                }
            }
        }

        mutating func primary() throws -> Expr {
            guard let token = peek() else { throw Failure(message: "expression ends too early") }
            i += 1
            switch token {
            case let .string(s):
                var text = s
                while case let .string(more)? = peek() { text += more; i += 1 }  // adjacent literals concatenate
                return .literal(.string(text))
            case let .int(n): return .literal(.int(n))
            case let .name(n):
                switch n {
                case "true", "True": return .literal(.bool(true))
                case "false", "False": return .literal(.bool(false))
                case "none", "None": return .literal(.none)
                default: return .variable(n)
                }
            case .op("("):
                let inner = try expression()
                try expect(.op(")"))
                return inner
            case .op("["):
                var items: [Expr] = []
                if !accept(.op("]")) {
                    repeat { items.append(try expression()) } while accept(.op(","))
                    try expect(.op("]"))
                }
                return .list(items)
            case let .op(op):
                throw Failure(message: "unexpected \(op) in expression")
            }
        }
    }

    // MARK: Statement parsing

    static func parse(_ template: String) throws -> [Node] {
        var segments = try Self.segments(template)[...]
        let (nodes, terminator) = try parseBlock(&segments, until: [])
        if let terminator { throw Failure(message: "unexpected {% \(terminator) %}") }
        return nodes
    }

    private static func keyword(_ statement: String) -> (String, String) {
        let trimmed = statement.trimmingWhitespace()
        let word = trimmed.prefix { $0.isLetter || $0 == "_" }
        return (String(word), String(trimmed.dropFirst(word.count)))
    }

    /// Nodes up to one of the `until` keywords, which is consumed and returned with its statement's remainder.
    private static func parseBlock(_ segments: inout ArraySlice<Segment>, until: Set<String>)
        throws -> ([Node], (String)?) {
        var nodes: [Node] = []
        while let segment = segments.popFirst() {
            switch segment {
            case let .text(t): nodes.append(.text(t))
            case let .expression(e):
                var parser = try Parser(e)
                nodes.append(.output(try parser.expression()))
                guard parser.atEnd else { throw Failure(message: "unexpected tokens in {{ \(e) }}") }
            case let .statement(statement):
                let (word, rest) = keyword(statement)
                if until.contains(word) {
                    if word == "elif" { segments.insert(.statement(rest), at: segments.startIndex); return (nodes, "elif") }
                    return (nodes, word)
                }
                switch word {
                case "if":
                    var branches: [(Expr, [Node])] = []
                    var condition = try fullExpression(rest)
                    var otherwise: [Node] = []
                    while true {
                        let (body, end) = try parseBlock(&segments, until: ["elif", "else", "endif"])
                        branches.append((condition, body))
                        guard let end else { throw Failure(message: "{% if %} without {% endif %}") }
                        if end == "elif" {
                            guard case let .statement(next)? = segments.popFirst() else { throw Failure(message: "bad elif") }
                            condition = try fullExpression(next)
                            continue
                        }
                        if end == "else" {
                            let (elseBody, close) = try parseBlock(&segments, until: ["endif"])
                            guard close == "endif" else { throw Failure(message: "{% else %} without {% endif %}") }
                            otherwise = elseBody
                        }
                        break
                    }
                    nodes.append(.conditional(branches, otherwise: otherwise))
                case "for":
                    var parser = try Parser(rest)
                    let variable = try parser.name()
                    if parser.peek() == .op(",") { throw Failure(message: "for loops over several variables are not supported") }
                    try parser.expect(.name("in"))
                    let iterable = try parser.orExpression()
                    if parser.peek() == .name("if") { throw Failure(message: "filtered for loops are not supported") }
                    guard parser.atEnd else { throw Failure(message: "unexpected tokens in {% for \(rest) %}") }
                    let (body, end) = try parseBlock(&segments, until: ["else", "endfor"])
                    var otherwise: [Node] = []
                    if end == "else" {
                        let (elseBody, close) = try parseBlock(&segments, until: ["endfor"])
                        guard close == "endfor" else { throw Failure(message: "{% for %} without {% endfor %}") }
                        otherwise = elseBody
                    } else if end != "endfor" {
                        throw Failure(message: "{% for %} without {% endfor %}")
                    }
                    nodes.append(.loop(variable: variable, iterable: iterable, body: body, otherwise: otherwise))
                case "set":
                    var parser = try Parser(rest)
                    let variable = try parser.name()
                    guard parser.accept(.op("=")) else {
                        throw Failure(message: "only {% set name = expression %} is supported")
                    }
                    let value = try parser.expression()
                    guard parser.atEnd else { throw Failure(message: "unexpected tokens in {% set \(rest) %}") }
                    nodes.append(.assign(variable, value))
                default:
                    throw Failure(message: "{% \(word) %} is not supported")
                }
            }
        }
        return (nodes, nil)
    }

    private static func fullExpression(_ source: String) throws -> Expr {
        var parser = try Parser(source)
        let expr = try parser.expression()
        guard parser.atEnd else { throw Failure(message: "unexpected tokens in \(source)") }
        return expr
    }

    // MARK: Rendering

    struct Context {
        var scopes: [[String: Value]]

        func lookup(_ name: String) -> Value {
            for scope in scopes.reversed() { if let v = scope[name] { return v } }
            return .undefined
        }
    }

    static func render(_ nodes: [Node], _ context: inout Context, into out: inout String) throws {
        for node in nodes {
            switch node {
            case let .text(t): out += t
            case let .output(e): out += try evaluate(e, context).rendered
            case let .assign(name, e): context.scopes[context.scopes.count - 1][name] = try evaluate(e, context)
            case let .conditional(branches, otherwise):
                var taken = false
                for (condition, body) in branches where try evaluate(condition, context).truthy {
                    try render(body, &context, into: &out)
                    taken = true
                    break
                }
                if !taken { try render(otherwise, &context, into: &out) }
            case let .loop(variable, iterable, body, otherwise):
                let items: [Value]
                switch try evaluate(iterable, context) {
                case let .list(l): items = l
                case let .dict(d): items = d.keys.sorted().map(Value.string)
                case let .string(s): items = s.map { .string(String($0)) }
                case .undefined, .none: items = []
                case let other: throw Failure(message: "cannot loop over \(other.repr)")
                }
                if items.isEmpty { try render(otherwise, &context, into: &out) }
                for (index, item) in items.enumerated() {
                    let loop: [String: Value] = [
                        "index": .int(index + 1), "index0": .int(index), "first": .bool(index == 0),
                        "last": .bool(index == items.count - 1), "length": .int(items.count),
                        "revindex": .int(items.count - index), "revindex0": .int(items.count - index - 1),
                    ]
                    // Each iteration has its own scope: a {% set %} inside a loop does not leak out (Jinja2).
                    context.scopes.append([variable: item, "loop": .dict(loop)])
                    defer { context.scopes.removeLast() }
                    try render(body, &context, into: &out)
                }
            }
        }
    }

    static func evaluate(_ expr: Expr, _ context: Context) throws -> Value {
        switch expr {
        case let .literal(v): return v
        case let .list(items): return .list(try items.map { try evaluate($0, context) })
        case let .variable(name): return context.lookup(name)
        case let .attribute(base, name):
            let value = try evaluate(base, context)
            if case let .dict(d) = value { return d[name] ?? .undefined }
            return .undefined
        case let .subscript(base, index):
            let value = try evaluate(base, context)
            let key = try evaluate(index, context)
            switch (value, key) {
            case let (.dict(d), .string(k)): return d[k] ?? .undefined
            case let (.list(l), .int(n)):
                let k = n < 0 ? l.count + n : n
                return k >= 0 && k < l.count ? l[k] : .undefined
            case let (.string(s), .int(n)):
                let chars = Array(s)
                let k = n < 0 ? chars.count + n : n
                return k >= 0 && k < chars.count ? .string(String(chars[k])) : .undefined
            default: return .undefined
            }
        case let .call(callee, args):
            let values = try args.map { try evaluate($0, context) }
            if case let .variable(name) = callee {
                if name == "raise_exception" {
                    throw Failure(message: "the template raised: " + (values.first?.rendered ?? ""))
                }
                throw Failure(message: "function \(name)() is not supported")
            }
            guard case let .attribute(base, method) = callee else { throw Failure(message: "unsupported call") }
            return try callMethod(try evaluate(base, context), method, values)
        case let .filter(base, name, args):
            let value = try evaluate(base, context)
            let values = try args.map { try evaluate($0, context) }
            return try applyFilter(value, name, values)
        case let .test(base, name, negated):
            let value = try evaluate(base, context)
            let result: Bool
            switch name {
            case "defined": result = value != .undefined
            case "undefined": result = value == .undefined
            case "none": result = value == .none
            case "string": if case .string = value { result = true } else { result = false }
            case "number": if case .int = value { result = true } else { result = false }
            case "mapping": if case .dict = value { result = true } else { result = false }
            case "sequence", "iterable":
                switch value { case .list, .string, .dict: result = true; default: result = false }
            case "true": result = value == .bool(true)
            case "false": result = value == .bool(false)
            default: throw Failure(message: "test \"is \(name)\" is not supported")
            }
            return .bool(result != negated)
        case let .unary(op, operand):
            let value = try evaluate(operand, context)
            if op == "not" { return .bool(!value.truthy) }
            guard case let .int(n) = value else { throw Failure(message: "cannot negate \(value.repr)") }
            return .int(-n)
        case let .binary(op, lhs, rhs):
            if op == "and" {
                let left = try evaluate(lhs, context)
                return left.truthy ? try evaluate(rhs, context) : left
            }
            if op == "or" {
                let left = try evaluate(lhs, context)
                return left.truthy ? left : try evaluate(rhs, context)
            }
            return try binary(op, try evaluate(lhs, context), try evaluate(rhs, context))
        case let .conditional(then, condition, otherwise):
            if try evaluate(condition, context).truthy { return try evaluate(then, context) }
            return try otherwise.map { try evaluate($0, context) } ?? .undefined
        }
    }

    static func binary(_ op: String, _ a: Value, _ b: Value) throws -> Value {
        switch op {
        case "~": return .string(a.rendered + b.rendered)
        case "==": return .bool(looselyEqual(a, b))
        case "!=": return .bool(!looselyEqual(a, b))
        case "in":
            switch b {
            case let .string(s):
                guard case let .string(needle) = a else { throw Failure(message: "'in <string>' needs a string") }
                return .bool(needle.isEmpty || s.contains(needle))
            case let .list(l): return .bool(l.contains { looselyEqual($0, a) })
            case let .dict(d):
                guard case let .string(k) = a else { return .bool(false) }
                return .bool(d[k] != nil)
            default: throw Failure(message: "cannot test membership in \(b.repr)")
            }
        default: break
        }
        switch (a, b) {
        case let (.int(x), .int(y)):
            switch op {
            case "+": return .int(x + y)
            case "-": return .int(x - y)
            case "*": return .int(x * y)
            // Python floor division and modulo; true division ("/") would give a float, which is not supported.
            case "//" where y != 0: return .int(Int((Double(x) / Double(y)).rounded(.down)))
            case "%" where y != 0: return .int(((x % y) + y) % y)
            case "<": return .bool(x < y)
            case ">": return .bool(x > y)
            case "<=": return .bool(x <= y)
            case ">=": return .bool(x >= y)
            default: break
            }
        case let (.string(x), .string(y)):
            switch op {
            case "+": return .string(x + y)
            case "<": return .bool(x < y)
            case ">": return .bool(x > y)
            default: break
            }
        case let (.list(x), .list(y)) where op == "+":
            return .list(x + y)
        default: break
        }
        throw Failure(message: "operator \(op) is not supported on \(a.repr) and \(b.repr)")
    }

    /// Python equality: True == 1, but "1" != 1; undefined equals nothing but undefined.
    static func looselyEqual(_ a: Value, _ b: Value) -> Bool {
        switch (a, b) {
        case let (.bool(x), .int(y)), let (.int(y), .bool(x)): return (x ? 1 : 0) == y
        default: return a == b
        }
    }

    static func applyFilter(_ value: Value, _ name: String, _ args: [Value]) throws -> Value {
        switch (name, value) {
        case let ("trim", .string(s)): return .string(s.trimmingWhitespace())
        case let ("upper", .string(s)): return .string(s.uppercased())
        case let ("lower", .string(s)): return .string(s.lowercased())
        case ("string", _): return .string(value.rendered)
        case let ("length", .string(s)), let ("count", .string(s)): return .int(s.count)
        case let ("length", .list(l)), let ("count", .list(l)): return .int(l.count)
        case let ("length", .dict(d)), let ("count", .dict(d)): return .int(d.count)
        case let ("first", .list(l)): return l.first ?? .undefined
        case let ("last", .list(l)): return l.last ?? .undefined
        default: throw Failure(message: "filter |\(name) is not supported on \(value.repr)")
        }
    }

    static func callMethod(_ value: Value, _ method: String, _ args: [Value]) throws -> Value {
        guard case let .string(s) = value else { throw Failure(message: "method .\(method)() is not supported here") }
        func argument() throws -> String {
            guard args.count == 1, case let .string(a) = args[0] else {
                throw Failure(message: ".\(method)() needs one string argument")
            }
            return a
        }
        switch method {
        case "strip" where args.isEmpty: return .string(s.trimmingWhitespace())
        case "lstrip" where args.isEmpty: return .string(String(s.drop { $0.isWhitespace }))
        case "rstrip" where args.isEmpty: return .string(String(s.reversed().drop { $0.isWhitespace }.reversed()))
        case "upper": return .string(s.uppercased())
        case "lower": return .string(s.lowercased())
        case "startswith": return .bool(s.hasPrefix(try argument()))
        case "endswith": return .bool(s.hasSuffix(try argument()))
        default: throw Failure(message: "string method .\(method)() is not supported")
        }
    }
}

extension String {
    /// Python's `str.strip()` (Unicode whitespace at both ends).
    func trimmingWhitespace() -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !$0.properties.isWhitespace }),
              let last = scalars.lastIndex(where: { !$0.properties.isWhitespace }) else { return "" }
        return String(scalars[first...last])
    }
}
