"""Benchmark methods against CE on identical data and epochs, in one process.

Prints a Markdown table: final/best test accuracy, detection F1 and AUROC of noise_score (when the truth is
known), the ratio of each method's median epoch time and of its total training time (all epochs, GAL's
warm-up included) to CE's, measured in the same run, and the arithmetic floor of that ratio
(`cost_floor`). Data come from
params.yaml (ingest + noise in memory; nothing is written except the optional --out JSON).

    python bench/bench_methods.py --epochs 20 --variants ce,coteaching,jocor,jocor3,jocor3c,cl
    python bench/bench_methods.py --variants ce,gal,gal_w8,ce     # CE twice: the reference is their mean
    python bench/bench_methods.py --variants ce,gss_sb,gss_db,dividemix,gss_ssl,ce
    python bench/bench_methods.py --variants \
        ce,gradsim,gradsim_score,gradsim_a1,gradsim_a8,gradsim_k16,gradsim_kall,ce

Every row also times the `grad_similarity` scoring pass on the trained networks (its share of the variant's
training time) and reports the AUROC of grad_similarity as a label-error detector.

Each variant's options are laid over params.yaml's `method.<method>` section.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.data.sources import ingest  # noqa: E402
from pipeline.data.tensors import load_split  # noqa: E402
from pipeline.evaluate import detection_metrics, similarity_detection  # noqa: E402
from pipeline.gradient_cosine import grad_similarity_scores  # noqa: E402
from pipeline.methods import scores_frame  # noqa: E402
from pipeline.noise import apply_noise  # noqa: E402
from pipeline.noise.estimate import estimate_noise, out_of_fold_probs  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.run import train_method  # noqa: E402
from pipeline.train import resolve_device  # noqa: E402

VARIANTS: dict[str, tuple[str, dict]] = {
    "ce": ("ce", {}),
    "ce2": ("ce", {"nets": 2}),
    "coteaching": ("coteaching", {}),
    "jocor": ("jocor", {}),
    "jocor3": ("jocor", {"nets": 3, "pairs": "all"}),
    "jocor3c": ("jocor", {"nets": 3, "pairs": "circular"}),
    "cl": ("cl", {}),
    "gal": ("gal", {}),
    "gal_noc": ("gal", {"third_net": False}),  # θA + θB + agreement (Table 4)
    "gal_random": ("gal", {"third_net": False, "update": "random"}),  # θA + θB + random updating
    "gal_cdas_no_reverse": ("gal", {"sampling": "cdas_no_reverse"}),  # Table 5 rows
    "gal_random_sampling": ("gal", {"sampling": "random"}),
    "gal_identical": ("gal", {"sampling": "identical"}),
    "gal_w8": ("gal", {"warmup_epochs": 8}),  # the paper's 80/200 warm-up share on a 20-epoch run
    "gal_train": ("gal", {"joint_from": "train"}),  # θC's targets from A's and B's training passes
    "gal_w8_train": ("gal", {"warmup_epochs": 8, "joint_from": "train"}),
    "gss_sb": ("gss", {"variant": "sb"}),
    "gss_sb_train": ("gss", {"variant": "sb", "pool_probs": "train"}),  # p from the training passes
    "gss_db": ("gss", {"variant": "db"}),
    "gss_db_train": ("gss", {"variant": "db", "pool_probs": "train"}),
    "gss_ssl": ("gss", {"variant": "ssl"}),
    "dividemix": ("dividemix", {}),
    "gradsim": ("gradsim", {}),  # a = 4, k = 4 (params.yaml)
    "gradsim_score": ("gradsim", {"mode": "score_only"}),  # CE + the weights computed: the scoring overhead
    "gradsim_drop": ("gradsim", {"mode": "drop_bottom"}),
    "gradsim_within": ("gradsim", {"within_class": True}),
    "gradsim_a1": ("gradsim", {"a": 1.0}),  # ablation over a (k = 4)
    "gradsim_a8": ("gradsim", {"a": 8.0}),
    "gradsim_k16": ("gradsim", {"k": 16}),  # ablation over k (a = 4)
    "gradsim_kall": ("gradsim", {"k": "all"}),
    **{  # the rest of the 3 × 3 grid a ∈ {1, 4, 8} × k ∈ {4, 16, all}
        f"gradsim_a{a}_k{k}": ("gradsim", {"a": float(a), "k": k if k == "all" else int(k)})
        for a in (1, 8)
        for k in ("16", "all")
    },
}
"""Variant name -> (registry method, options over params.yaml's `method.<method>` section)."""

RATIOS = (
    ("gss_ssl", "dividemix"),
    ("gss_sb", "ce"),
    ("gss_db", "ce"),
    ("dividemix", "ce"),
    ("gradsim", "ce"),
)
"""Pairs whose total-time ratio is printed under the table when both were run."""


def cost_floor(method: str, opts: dict, epochs: int) -> float:
    """Arithmetic floor of a method's time / CE's, counting one CE step (forward + backward) as 1 and an
    inference-only forward as 1/3 of it, over `epochs` epochs.

    GAL: its warm-up trains one network (1); afterwards A and B each step (2), and θC steps (1) after
    two eval forwards of A and B on its batch (2/3): (warm-up + 3.67 × rest) / epochs with θC, 2 without,
    3 with `joint_from: train` (no eval forwards); `cdas_no_reverse` uses each batch pair once, so half the
    post-warm-up steps.
    """
    if method == "gal":
        warm = min(opts.get("warmup_epochs", 5), epochs)
        evals = 0.0 if opts.get("joint_from") == "train" else 2 / 3
        per = 2.0 + (1.0 + evals if opts.get("third_net", True) else 0.0)
        if opts.get("sampling") == "cdas_no_reverse":
            per /= 2  # each (X^a, X^b) pair is used once, not twice: half the steps per epoch
        return (warm + per * (epochs - warm)) / epochs
    if method in ("jocor", "ce"):
        return float(opts.get("nets", 2 if method == "jocor" else 1))
    if method == "gss":  # SB / DB train like 1 / 2 CE networks (the optional eval pass is not counted)
        if opts.get("variant") == "ssl":
            return float("nan")  # DivideMix's cost depends on the labeled fraction of each epoch
        return 1.0 if opts.get("variant", "sb") == "sb" else 2.0
    if method == "dividemix":
        return float("nan")
    if method == "gradsim":  # one network; the B×B cosine matrix is not counted
        return 1.0
    return {"coteaching": 2.0}.get(method, 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per method (default: train.epochs)")
    ap.add_argument("--variants", default="ce,coteaching,jocor,jocor3,jocor3c,cl")
    ap.add_argument("--noise-rate", type=float, default=None, help="override noise.rate")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    params = load_params(args.params)
    cfg = params.train.model_copy(
        update={"progress": False, "resume": False, **({"epochs": args.epochs} if args.epochs else {})}
    )
    params = params.model_copy(update={"train": cfg})
    if args.noise_rate is not None:
        params = params.model_copy(
            update={"noise": params.noise.model_copy(update={"rate": args.noise_rate})}
        )
    device = resolve_device(cfg.device)
    data = ingest(params.data)
    k = len(data.class_names)
    noisy = apply_noise(data.train, k, params.noise, params.seed)
    truth = None if noisy["true_label"].null_count() else noisy["true_label"].to_numpy()
    given = noisy["given_label"].to_numpy()
    train = load_split(data.train, given, cfg.stored_size, cfg.channels, device, truth)
    test = load_split(
        data.test, data.test["label"].to_numpy(), cfg.stored_size, train.images.shape[1], device
    )
    quiet = contextlib.redirect_stdout(io.StringIO())
    with quiet:
        oof = out_of_fold_probs(
            train,
            cfg,
            num_classes=k,
            folds=params.noise.estimate_folds,
            epochs=params.noise.estimate_epochs,
            seed=params.seed,
            device=device,
        )
        rate = estimate_noise(train.labels.cpu().numpy(), oof, num_classes=k)["rate"]
        # warm-up (thread pools, allocator) so the first timed method is not penalised
        warm = params.model_copy(update={"train": cfg.model_copy(update={"epochs": 1})})
        train_method("ce", {}, warm, train, test, k, device, None)
    rows = []
    for name in args.variants.split(","):
        method, over = VARIANTS[name]
        opts = {**(params.method.get(method) or {}), **over}
        with contextlib.redirect_stdout(io.StringIO()):
            m, ctx, res = train_method(
                method,
                opts,
                params,
                train,
                test,
                k,
                device,
                None,
                noise_rate=rate,
                oof_probs=torch.as_tensor(oof, device=device),
            )
        per_epoch = np.diff([0.0] + [r["seconds"] for r in res.log])
        row = {
            "variant": name,
            "method": method,
            "options": opts,
            "epochs": len(res.log),
            "test_acc_last": res.log[-1]["test_acc"],
            "test_acc_best": max(r["test_acc"] for r in res.log),
            "seconds": res.seconds,
            "median_epoch_seconds": float(np.median(per_epoch)),
        }
        t0 = time.perf_counter()
        sim = grad_similarity_scores(m.networks(), train, ctx, k=cfg.similarity_top_k, seed=params.seed)
        row["sim_share"] = (time.perf_counter() - t0) / res.seconds
        if truth is not None:
            f = scores_frame(method, ctx, m.export(), cfg.flag_threshold, sim)
            is_noisy = truth != train.labels.cpu().numpy()
            d = detection_metrics(is_noisy, f["is_flagged"].to_numpy(), f["noise_score"].to_numpy())
            row.update(f1=d["f1"], auroc=d["auroc"])
            row["sim_auroc"] = similarity_detection(is_noisy, f["grad_similarity"].to_numpy())["auroc"]
        rows.append(row)
        print(f"{name}: {row['seconds']:.1f}s, test acc {row['test_acc_last']:.3f}", file=sys.stderr)
    # ratios of median epoch times: robust to a stray slow epoch on a shared machine
    # CE may be listed more than once (e.g. first and last): its mean is the reference, which evens out
    # a machine that speeds up or slows down during the run
    ce_rows = [r for r in rows if r["variant"] == "ce"]
    ce = float(np.mean([r["median_epoch_seconds"] for r in ce_rows])) if ce_rows else None
    ce_total = float(np.mean([r["seconds"] for r in ce_rows])) if ce_rows else None
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    realised = float(np.mean(truth != given)) if truth is not None else float("nan")
    print(
        f"\n{params.data.source}, {params.noise.kind} {params.noise.rate} (realised {realised:.3f}, "
        f"estimated {rate:.3f}), {cfg.backbone} {cfg.image_size}px, {cfg.epochs} epochs, {dev} "
        f"({machine})\n"
    )
    print(
        "| variant | test acc (last) | test acc (best) | detection F1 | AUROC | epoch time / CE "
        "| total time / CE | floor | grad_similarity AUROC | scoring pass / training |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['median_epoch_seconds'] / ce:.2f}×" if ce else "–"
        total = f"{r['seconds'] / ce_total:.2f}×" if ce_total else "–"
        r["floor"] = cost_floor(r["method"], r["options"], r["epochs"])
        print(
            f"| {r['variant']} | {r['test_acc_last']:.3f} | {r['test_acc_best']:.3f} | "
            f"{r.get('f1', float('nan')):.3f} | {r.get('auroc', float('nan')):.3f} | {ratio} | {total} | "
            f"{r['floor']:.2f}× | {r.get('sim_auroc', float('nan')):.3f} | {r['sim_share']:.1%} |".replace(
                "nan×", "–"
            )
        )
    total = {r["variant"]: r["seconds"] for r in rows}
    for a, b in RATIOS:
        if a in total and b in total and b != "ce":
            print(f"\n{a} / {b} total time: {total[a] / total[b]:.2f}×")
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "device": dev, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
