"""Real label noise: the embedding detectors on the CIFAR-10N dev set's worst, random1 and aggre labels, and
the embedding pass's throughput against a bare `torch.inference_mode` loop over the same model.

    python bench/bench_real_noise.py --params presets/cifar10n_cpu.yaml [--sizes 64,224] [--out FILE]

For each embedding size and label set: detection F1 / AUROC / flagged share of `knn` and `probe`, the
probe's estimated noise rate against the truth, the cleaning policy (probe + knn, agreement all, capped at
the estimate), and a linear probe retrained on the cleaned labels against one trained on the noisy labels
(test accuracy; the fine-tuned CE retrain is the pipeline's `retrain` stage, see docs/results.md).
Prints Markdown; `--out` also writes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import torch  # noqa: E402
from _markdown import emit  # noqa: E402  bench/, on the path when a script runs
from sklearn.metrics import f1_score, roc_auc_score  # noqa: E402

from pipeline.clean import clean_labels  # noqa: E402
from pipeline.data.sources import ingest, load_noisy_label_file  # noqa: E402
from pipeline.detectors import DETECTORS, DetectorInput  # noqa: E402
from pipeline.detectors.probe import _fit, _proba  # noqa: E402
from pipeline.embed import _normalised, embed_images, features_of  # noqa: E402
from pipeline.methods.base import score_table  # noqa: E402
from pipeline.models import create_pretrained, resolve_pretrained  # noqa: E402
from pipeline.noise.estimate import estimate_noise  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.run import _stored_images  # noqa: E402

KEYS = ("worse_label", "random_label1", "aggre_label")
THROUGHPUT_IMAGES = 1024  # the first training images, embedded twice by each path for the throughput


def bare_loop(model, images: torch.Tensor, size: int, batch: int) -> float:
    """images/s of forwards alone over pre-resized, pre-normalised batches (no flip)."""
    x = torch.nn.functional.interpolate(images[:batch].float() / 255, size=(size, size), mode="bilinear")
    x = x.contiguous(memory_format=torch.channels_last)
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for _ in range(max(1, len(images) // batch)):
            features_of(model, x)
            n += len(x)
    return n / (time.perf_counter() - t0)


def throughput(model, images: torch.Tensor, kw: dict, rounds: int = 2) -> tuple[float, float]:
    """(embed images/s, bare loop images/s) over the same images: one warm-up batch each first (the
    backend's first-call set-up), then `rounds` alternating timings; the faster of each."""
    embed_images(model, images[: kw["batch_size"]], flip=False, progress=False, **kw)
    bare_loop(model, images[: kw["batch_size"]], kw["size"], kw["batch_size"])
    embed, bare = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        embed_images(model, images, flip=False, progress=False, **kw)
        embed.append(len(images) / (time.perf_counter() - t0))
        bare.append(bare_loop(model, images, kw["size"], kw["batch_size"]))
    return max(embed), max(bare)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="presets/cifar10n_cpu.yaml")
    ap.add_argument("--sizes", default="224")
    ap.add_argument("--keys", default=",".join(KEYS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.embed
    data = ingest(params.data)
    train, test = data.train, data.test
    truth = train["label"].to_numpy()
    test_y = test["label"].to_numpy()
    k = len(data.class_names)
    pre = resolve_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained")
    model = create_pretrained(cfg.backbone, cfg.pretrained, "embed.pretrained", num_classes=0, in_chans=3)
    model = model.eval().to(memory_format=torch.channels_last)
    tr_img = _stored_images(train, cfg.load_size, "train")
    te_img = _stored_images(test, cfg.load_size, "test")
    lines = [
        f"{params.data.source} ({len(truth)} train / {len(test_y)} test), {cfg.backbone}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} CPU threads",
        "",
        "| px | labels | true rate | estimated | detector | F1 | AUROC | flagged | s | cleaned: changed / "
        "label acc | linear probe test acc: noisy → cleaned |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    speed = []
    for size in [int(s) for s in args.sizes.split(",")]:
        kw = dict(
            mean=pre.mean, std=pre.std, size=size, batch_size=cfg.batch_size, device=torch.device("cpu")
        )
        speed.append((size, *throughput(model, tr_img[:THROUGHPUT_IMAGES], kw)))
        ftr = embed_images(model, tr_img, flip=False, progress=False, **kw)
        if cfg.flip:
            ftr = (ftr + embed_images(model, tr_img.flip(-1), flip=False, progress=False, **kw)) / 2
        fte = embed_images(model, te_img, flip=cfg.flip, progress=False, **kw)
        ftr, fte = _normalised(ftr), _normalised(fte)
        for key in args.keys.split(","):
            given, _ = load_noisy_label_file(params.data.noisy_labels, key, len(truth))
            given = given.astype(np.int64)
            noisy = given != truth
            inp = DetectorInput(ftr, given, fte, k, params.seed)
            tables, est = {}, None
            for name in ("knn", "probe"):
                spec = DETECTORS[name]
                opts = spec.options.model_validate(params.detector.get(name) or {})
                t0 = time.perf_counter()
                res = spec.detect(opts, inp)
                sec = time.perf_counter() - t0
                if name == "probe":
                    est = estimate_noise(given, res.probs.astype(float), num_classes=k)["rate"]
                tables[name] = score_table(
                    name, train["sample_id"].to_numpy(), given, res.probs, noise_score=res.noise_score,
                    flagged=res.flagged, flag_threshold=0.5, extra={},
                )  # fmt: skip
                t = tables[name]
                lines.append(
                    f"| {size} | {key} | {noisy.mean():.3f} | | {name} | "
                    f"{f1_score(noisy, t['is_flagged'].to_numpy()):.3f} | "
                    f"{roc_auc_score(noisy, t['noise_score'].to_numpy()):.3f} | "
                    f"{t['is_flagged'].mean():.3f} | "
                    f"{sec:.1f} | | |"
                )
            cleaned = clean_labels(
                tables, data.class_names, relabel_confidence=0.8, drop_noise_score=0.5, agreement="all",
                max_share=est,
            )  # fmt: skip
            order = pl.DataFrame({"sample_id": train["sample_id"]}).join(cleaned, on="sample_id", how="left")
            keep = order["action"].to_numpy() != "drop"
            lab = order["cleaned_label"].fill_null(-1).to_numpy()
            acc_after = float((lab[keep] == truth[keep]).mean())
            base = _fit(ftr, given, k, 1.0, max_iter=2000, blas_threads=1)
            after = _fit(ftr[keep], lab[keep], k, 1.0, max_iter=2000, blas_threads=1)
            acc_noisy = float((_proba(base, fte, k).argmax(1) == test_y).mean())
            acc_clean = float((_proba(after, fte, k).argmax(1) == test_y).mean())
            changed = float((order["action"] != "keep").mean())
            lines.append(
                f"| {size} | {key} | {noisy.mean():.3f} | {est:.3f} | probe + knn (clean) | | | | | "
                f"{changed:.3f} / {1 - noisy.mean():.3f} → {acc_after:.3f} | "
                f"{acc_noisy:.3f} → {acc_clean:.3f} |"
            )
            print(lines[-1], flush=True)
    lines += [
        "",
        "| px | embed (this code, no flip) images/s | bare inference_mode loop images/s | ratio |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {a:.1f} | {b:.1f} | {a / b:.2f} |" for s, a, b in speed]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
