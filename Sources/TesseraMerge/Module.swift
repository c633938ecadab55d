// TesseraMerge: see docs/architecture.md
import TesseraCore
