"""gradclean's library: data sources, training pieces, the registered methods and detectors, and the
`pipeline.runs` functions that the stage scripts call. Importing the package imports nothing heavy."""
