"""Label noise: injection (symmetric, asymmetric, pairflip), pass-through of real noise, and reports."""

from pipeline.noise.inject import (
    ASYM_MAPS,
    apply_noise,
    expected_matrix,
    inject,
    noise_report,
    realised_matrix,
)

__all__ = ["ASYM_MAPS", "apply_noise", "expected_matrix", "inject", "noise_report", "realised_matrix"]
