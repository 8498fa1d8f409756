"""Thin stage scripts: parse argv and params.yaml, call one `pipeline.run` function."""
