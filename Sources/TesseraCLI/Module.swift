// TesseraCLI: see docs/architecture.md
import TesseraCore
