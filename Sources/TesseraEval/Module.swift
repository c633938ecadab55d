// TesseraEval: see docs/architecture.md
import TesseraCore
