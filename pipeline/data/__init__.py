"""Data sources, image decoding and the in-memory training data."""
