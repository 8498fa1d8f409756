"""Estimated vs realised noise rate on the configured dataset for several noise settings.

    python bench/noise_estimation.py                      # digits: 20%/40% symmetric, 40% asymmetric

Uses params.yaml for the data, backbone and `noise.estimate_*`; prints a Markdown table.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.sources import ingest  # noqa: E402
from pipeline.data.tensors import load_split  # noqa: E402
from pipeline.noise import apply_noise  # noqa: E402
from pipeline.noise.estimate import estimate_noise, out_of_fold_probs  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.train import resolve_device  # noqa: E402

SETTINGS = [("symmetric", 0.2), ("symmetric", 0.4), ("asymmetric", 0.4), ("pairflip", 0.3)]


def main() -> None:
    params = load_params(sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
    cfg = params.train.model_copy(update={"progress": False})
    device = resolve_device(cfg.device)
    data = ingest(params.data)
    k = len(data.class_names)
    print(
        f"{params.data.source}, {cfg.backbone} {cfg.image_size}px, {params.noise.estimate_folds} folds x "
        f"{params.noise.estimate_epochs} epochs\n"
    )
    print("| noise | requested | realised | estimated | |est − real| |")
    print("|---|---|---|---|---|")
    for kind, rate in SETTINGS:
        noise = params.noise.model_copy(update={"kind": kind, "rate": rate})
        noisy = apply_noise(data.train, k, noise, params.seed)
        given = noisy["given_label"].to_numpy()
        train = load_split(data.train, given, cfg.stored_size, cfg.channels, device)
        with contextlib.redirect_stdout(io.StringIO()):
            oof = out_of_fold_probs(
                train,
                cfg,
                num_classes=k,
                folds=params.noise.estimate_folds,
                epochs=params.noise.estimate_epochs,
                seed=params.seed,
                device=device,
            )
        est = estimate_noise(given, oof, num_classes=k)["rate"]
        real = float(noisy["is_noisy"].mean())
        print(f"| {kind} | {rate} | {real:.3f} | {est:.3f} | {abs(est - real):.3f} |")


if __name__ == "__main__":
    main()
