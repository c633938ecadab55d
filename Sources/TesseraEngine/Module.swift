// TesseraEngine: see docs/architecture.md
import TesseraCore
