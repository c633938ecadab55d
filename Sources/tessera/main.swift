import TesseraCLI

TesseraCommand.main()
