"""What gradient-similarity weighting adds to one training step, measured step by step.

Alternates a plain CE step and a gradsim step (same network copy, same batch, same optimiser settings)
`--reps` times and reports median step times and their ratio, plus the median time of the weighting alone
(closed-form B×B cosine matrix + top-k weights) as a share of the CE step. Interleaving the two step kinds
makes the ratio robust to a machine whose speed drifts, which whole-run ratios on a shared machine are
not. Backbone, image size, batch size and device come from params.yaml.

    python bench/bench_gradsim_step.py --reps 200
    python bench/bench_gradsim_step.py --batch-size 128 --reps 200   # the thesis' batch
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pipeline.gradient_cosine import features_and_logits  # noqa: E402
from pipeline.methods.gradsim import GradSimOptions, batch_weights  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.train import make_optimizer, resolve_device  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--reps", type=int, default=200)
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.train
    device = resolve_device(cfg.device)
    b = args.batch_size or cfg.batch_size
    chans = 1 if cfg.channels in ("auto", 1) else 3
    opts = GradSimOptions.model_validate(params.method.get("gradsim") or {})
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(b, chans, cfg.image_size, cfg.image_size, generator=gen).to(device)
    y = torch.randint(0, args.classes, (b,), generator=gen).to(device)
    net_ce = build_model(cfg, args.classes, chans, seed=0).to(device)
    net_gs = copy.deepcopy(net_ce)
    opt_ce, opt_gs = make_optimizer(net_ce, cfg), make_optimizer(net_gs, cfg)
    bias = net_gs.get_classifier().bias is not None

    def ce_step() -> None:
        loss = F.cross_entropy(net_ce(x).float(), y)
        opt_ce.zero_grad(set_to_none=True)
        loss.backward()
        opt_ce.step()

    def gs_step() -> None:
        h, logits = features_and_logits(net_gs, x)
        logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="none")
        with torch.no_grad():
            _, w = batch_weights(h.float(), logits.softmax(-1), y, opts, bias=bias)
        opt_gs.zero_grad(set_to_none=True)
        (w * loss).sum().backward()
        opt_gs.step()

    with torch.no_grad():
        h, logits = features_and_logits(net_gs, x)
        probs = logits.float().softmax(-1)

    def weights_only() -> None:
        batch_weights(h.float(), probs, y, opts, bias=bias)

    def timed(fn) -> float:
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        return time.perf_counter() - t0

    for _ in range(10):  # warm-up
        ce_step(), gs_step(), weights_only()
    times: dict[str, list[float]] = {"ce": [], "gradsim": [], "weights": []}
    for _ in range(args.reps):
        times["ce"].append(timed(ce_step))
        times["gradsim"].append(timed(gs_step))
        times["weights"].append(timed(weights_only))
    med = {k: statistics.median(v) for k, v in times.items()}
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    )
    print(
        f"{cfg.backbone} {cfg.image_size}px, batch {b}, K {args.classes}, a {opts.a:g}, k {opts.k}, "
        f"{args.reps} interleaved reps, {dev} ({machine})"
    )
    print("| step | median ms | / CE step |")
    print("|---|---|---|")
    for k, label in (("ce", "CE step"), ("gradsim", "gradsim step"), ("weights", "weighting alone")):
        print(f"| {label} | {1000 * med[k]:.2f} | {med[k] / med['ce']:.3f}× |")


if __name__ == "__main__":
    main()
