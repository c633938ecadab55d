// TesseraStore: see docs/architecture.md
import TesseraCore
