"""Train every registry method on a small digits split, in one process or under torchrun; used by
tests/test_distributed.py.

    python tests/ddp_worker.py OUT                                  # one process
    python -m torch.distributed.run --nproc-per-node 2 tests/ddp_worker.py OUT   # two ranks, gloo

Each case trains for `EPOCHS` with a GroupNorm backbone (so a shard's forward does not depend on the other
shard's rows), checks that every rank ends with the same exported probabilities (bit for bit), and rank 0
saves {probs, log} per case to OUT/<case>.pt.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits

from pipeline.config import TrainParams
from pipeline.data.tensors import ImageData
from pipeline.distributed import from_env, process_group
from pipeline.methods import REGISTRY
from pipeline.noise import inject
from pipeline.train import TrainContext, fit

EPOCHS = 2
CFG = dict(
    backbone="resnet18",
    model_kwargs={"channels": [8, 16, 32, 64], "layers": [1, 1, 1, 1], "norm_layer": "groupnorm1"},
    image_size=8,
    batch_size=32,
    augment={"pad_crop": 1},
    lr=0.05,
    progress=False,
    epochs=EPOCHS,
)
# every registry method, with warm-ups short enough that its own phase runs within EPOCHS
CASES: dict[str, tuple[str, dict]] = {name: (name, {}) for name in REGISTRY}
CASES["gal"] = ("gal", {"warmup_epochs": 1})
CASES["dividemix"] = ("dividemix", {"warmup_epochs": 1})
CASES["gss"] = ("gss", {"variant": "db"})  # two networks: the DDP wrappers of a pair


def data(n_train: int = 128, n_test: int = 64) -> tuple[ImageData, ImageData, torch.Tensor]:
    """Digits at 40% symmetric noise, and out-of-fold-like probabilities for confident learning."""
    d = load_digits()
    x = torch.from_numpy(np.round(d.images * 255 / 16).astype(np.uint8))[:, None]
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    tr, te = order[:n_train], order[n_train : n_train + n_test]
    given = inject(y[tr], "symmetric", 0.4, 10, seed=0)
    train = ImageData(x[tr], torch.as_tensor(given), tr.astype(np.int64), torch.as_tensor(y[tr]))
    test = ImageData(x[te], torch.as_tensor(y[te]), te.astype(np.int64))
    oof = torch.rand(n_train, 10, generator=torch.Generator().manual_seed(0))
    oof = 0.3 * oof / oof.sum(1, keepdim=True)
    oof[torch.arange(n_train), train.true_labels] += 0.7
    return train, test, oof


def main(out: Path, cases: list[str]) -> None:
    torch.set_num_threads(1)  # the same arithmetic in every process of the comparison
    dist = from_env()
    with process_group(dist, torch.device("cpu")):
        train, test, oof = data()
        for case in cases:
            name, opts = CASES[case]
            spec = REGISTRY[name]
            ctx = TrainContext(
                train, test, TrainParams(**CFG), 10, 1, torch.device("cpu"), seed=0, noise_rate=0.4,
                oof_probs=oof, dist=dist,
            )  # fmt: skip
            method = spec.build(spec.options(**opts), ctx)
            res = fit(method, ctx, name=case, epochs=EPOCHS)
            probs = method.export().probs.detach()
            if dist.active:  # every rank must hold the same result, bit for bit
                parts = [torch.empty_like(probs) for _ in range(dist.world)]
                torch.distributed.all_gather(parts, probs)
                if not all(torch.equal(p, probs) for p in parts):
                    raise SystemExit(f"{case}: ranks disagree on the exported probabilities")
            if dist.is_main:
                out.mkdir(parents=True, exist_ok=True)
                torch.save({"probs": probs, "log": res.log}, out / f"{case}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(",") if len(sys.argv) > 2 else list(CASES))
