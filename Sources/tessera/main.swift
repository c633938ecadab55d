import TesseraCLI

TesseraCommand.runMain()
