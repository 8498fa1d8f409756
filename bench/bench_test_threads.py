"""CE against JoCoR in the behaviour tests' shared setting, by torch thread count, training seed and λ.

The setting is `trained_at_40` in `tests/test_train.py` (800 digits at 40% symmetric noise, 12 epochs); the
test `test_jocor_and_coteaching_beat_ce_at_40_percent_symmetric_noise` asks JoCoR (at its `JOCOR_LAM`) to
beat CE by 0.03.

    python bench/bench_test_threads.py [--runs 2:0,1:0,1:1,1:2] [--lams auto,0.7] [--out results.md]

Each run is `threads:seed`; each λ adds a JoCoR column (`auto` = the paper's 0.9 here). Prints a markdown
table of the final test accuracies.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _markdown import emit  # noqa: E402  bench/, on the path when a script runs
from test_train import digits_data, make_ctx  # noqa: E402  the shared setting's data and context

from pipeline.methods import REGISTRY  # noqa: E402
from pipeline.train import fit  # noqa: E402


def final_test_acc(name: str, threads: int, seed: int, **opts) -> float:
    torch.set_num_threads(threads)
    train, test = digits_data(800, 400, noise=0.4)
    ctx = make_ctx(
        train, test, epochs=12, augment={"pad_crop": 0}, model_kwargs={"channels": [16, 32, 64, 128]}
    )
    ctx = dataclasses.replace(ctx, seed=seed)
    method = REGISTRY[name].build(REGISTRY[name].options(**opts), ctx)
    return fit(method, ctx, name=name, epochs=12).log[-1]["test_acc"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="2:0,1:0,1:1,1:2", help="threads:seed, comma-separated")
    ap.add_argument("--lams", default="auto,0.7", help="JoCoR λ values, comma-separated")
    ap.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = ap.parse_args()
    lams = [v if v == "auto" else float(v) for v in args.lams.split(",")]
    head = " | ".join(f"JoCoR λ = {lam} | JoCoR − CE" for lam in lams)
    lines = [f"| threads | training seed | CE | {head} |", "|---|---|---|" + "---|---|" * len(lams)]
    for run in args.runs.split(","):
        threads, seed = (int(v) for v in run.split(":"))
        ce = final_test_acc("ce", threads, seed)
        cells = [(j := final_test_acc("jocor", threads, seed, lam=lam), j - ce) for lam in lams]
        row = " | ".join(f"{j:.3f} | {d:+.3f}" for j, d in cells)
        lines.append(f"| {threads} | {seed} | {ce:.3f} | {row} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
