// TesseraGit: see docs/architecture.md
import TesseraCore
