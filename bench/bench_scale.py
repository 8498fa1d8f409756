"""Speed and memory per method, and the projected time of a full run, from a timed slice.

For each method (CE first: it is the reference) the script trains a short slice in this process on the same
data: one warm-up epoch when the method has a warm-up, then `--main-epochs` main epochs. It prints a
Markdown table of images/s, peak memory, the main-epoch time relative to CE's, and the projected wall time
of the params' full schedule: warm-up epochs × the warm-up epoch's time + the other epochs × the main
epoch's time (the median of the timed ones). The first epoch also pays one-off costs (allocator, cuDNN
autotuning, `torch.compile`), so the projection errs on the high side.

    # the paper presets on a GPU with no network: CIFAR-shaped random images stand in for the data
    python bench/bench_scale.py --params experiments/gal_cifar10.yaml --synthetic 50000 --methods ce,jocor,gal
    # this machine, the default params
    python bench/bench_scale.py --methods ce,gal,gss,gradsim,jocor,dividemix

`--compile` times the networks under `torch.compile` (train.compile); the first epoch pays the compile.
`--sync-debug` (CUDA) counts the host synchronisations PyTorch reports while training
(`torch.cuda.set_sync_debug_mode`) and prints them per optimiser step, with the lines they come from: the
driver's per-epoch log and eval passes account for a handful per epoch, so a figure well below 1 per step
means the training step itself does not wait for the GPU.

Images/s counts training images per second of a main epoch (N / epoch time); a co-training method that
runs several networks on each image still counts each image once. Peak memory is
`torch.cuda.max_memory_allocated` on CUDA and the process's peak resident set size on CPU (sampled).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import sys
import threading
import warnings
from collections import Counter
from pathlib import Path

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipeline.config import Params  # noqa: E402
from pipeline.data.sources import ingest  # noqa: E402
from pipeline.data.tensors import ImageData, load_split  # noqa: E402
from pipeline.methods import REGISTRY  # noqa: E402
from pipeline.noise import apply_noise  # noqa: E402
from pipeline.params import load_params  # noqa: E402
from pipeline.run import train_method  # noqa: E402
from pipeline.train import resolve_device  # noqa: E402


class PeakMemory:
    """Peak memory while the block runs: CUDA allocator peak, or sampled resident set size on CPU (bytes)."""

    def __init__(self, device: torch.device, every: float = 0.02) -> None:
        self.device, self.every, self.peak = device, every, 0
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # not Linux: the lifetime peak is the best there is
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _sample(self) -> None:
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss())

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())


class SyncCounter:
    """Counts the synchronising CUDA calls PyTorch warns about inside the block (`--sync-debug`), by source
    line; a no-op on CPU or when off."""

    def __init__(self, device: torch.device, on: bool) -> None:
        self.on = on and device.type == "cuda"
        self.sites: Counter[str] = Counter()

    def __enter__(self) -> SyncCounter:
        if self.on:
            self._catch = warnings.catch_warnings(record=True)
            self._seen = self._catch.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc) -> None:
        if self.on:
            torch.cuda.set_sync_debug_mode("default")
            self._catch.__exit__(*exc)
            for w in self._seen:
                if "synchroniz" in str(w.message):
                    self.sites[f"{Path(w.filename).name}:{w.lineno}"] += 1

    def per_step(self, steps: int) -> float | None:
        return sum(self.sites.values()) / max(steps, 1) if self.on else None


def synthetic_data(n: int, params: Params, device: torch.device, k: int = 10) -> tuple[ImageData, ImageData]:
    """Random uint8 images of the params' size (3 channels unless train.channels is 1) and random labels:
    timing does not depend on the content, so a GPU machine without the dataset can still be measured."""
    g = torch.Generator().manual_seed(params.seed)
    c = 1 if params.train.channels == 1 else 3
    s = params.train.stored_size

    def split(m: int, offset: int) -> ImageData:
        labels = torch.randint(0, k, (m,), generator=g)
        return ImageData(
            images=torch.randint(0, 256, (m, c, s, s), generator=g, dtype=torch.uint8).to(device),
            labels=labels.to(device),
            sample_ids=np.arange(offset, offset + m, dtype=np.int64),
            true_labels=labels.to(device),
        )

    return split(n, 0), split(max(n // 5, 2), n)


def real_data(params: Params, device: torch.device) -> tuple[ImageData, ImageData, int]:
    data = ingest(params.data)
    k = len(data.class_names)
    noisy = apply_noise(data.train, k, params.noise, params.seed)
    truth = None if noisy["true_label"].null_count() else noisy["true_label"].to_numpy()
    cfg = params.train
    train = load_split(
        data.train, noisy["given_label"].to_numpy(), cfg.stored_size, cfg.channels, device, truth
    )
    test = load_split(
        data.test, data.test["label"].to_numpy(), cfg.stored_size, train.images.shape[1], device
    )
    return train, test, k


def slice_options(method: str, opts: dict) -> tuple[dict, int]:
    """The method's options with every warm-up cut to 1 epoch, and the full run's warm-up length."""
    parsed = REGISTRY[method].options.model_validate(opts)
    warmups = parsed.warmups() if hasattr(parsed, "warmups") else {}
    out = json.loads(json.dumps(opts))
    for key in warmups:
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = 1
    return out, max(warmups.values(), default=0)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml", help="params file or a preset (presets/*.yaml)")
    ap.add_argument("--methods", default=None, help="comma-separated (default: the params' methods)")
    ap.add_argument("--main-epochs", type=int, default=2, help="timed epochs after the warm-up epoch")
    ap.add_argument("--synthetic", type=int, default=None, help="N random images instead of the dataset")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument("--compile", action="store_true", help="train.compile: true")
    ap.add_argument("--sync-debug", action="store_true", help="CUDA: count host syncs per optimiser step")
    args = ap.parse_args()
    params = load_params(args.params)
    device = resolve_device(params.train.device)
    if args.synthetic:
        train, test = synthetic_data(args.synthetic, params, device)
        k = 10
    else:
        train, test, k = real_data(params, device)
    methods = args.methods.split(",") if args.methods else list(params.methods)
    methods = ["ce"] + [m for m in methods if m != "ce"]
    full_epochs = params.train.epochs
    rows = []
    for name in methods:
        opts, warm = slice_options(name, params.method.get(name) or {})
        cut = min(warm, 1)
        cfg = params.train.model_copy(
            update={"epochs": cut + args.main_epochs, "progress": False, "resume": False}
            | ({"compile": True} if args.compile else {})
        )
        run = params.model_copy(update={"train": cfg})
        rate = params.noise.rate if name in ("jocor", "coteaching") else None
        oof = None
        if name == "cl":  # CL scores out-of-fold probabilities: uniform ones time its training part
            oof = torch.full((len(train), k), 1.0 / k, device=device)
        with (
            PeakMemory(device) as mem,
            contextlib.redirect_stdout(io.StringIO()),
            SyncCounter(device, args.sync_debug) as syncs,
        ):
            _, _, res = train_method(
                name, opts, run, train, test, k, device, None, noise_rate=rate, oof_probs=oof
            )
        epoch_s = np.diff([0.0] + [r["seconds"] for r in res.log])
        t_warm = float(epoch_s[0]) if cut else 0.0
        t_main = float(np.median(epoch_s[cut:]))
        rows.append(
            {
                "method": name,
                "warmup_epoch_s": t_warm if cut else None,
                "main_epoch_s": t_main,
                "warmup_epochs": warm,
                "images_per_s": len(train) / t_main,
                "peak_memory_mib": mem.peak / 2**20,
                "projected_s": warm * t_warm + (full_epochs - warm) * t_main,
                "host_syncs_per_step": syncs.per_step(len(res.steps)),
            }
        )
        if syncs.sites:
            print(f"{name}: host syncs {dict(syncs.sites.most_common(5))}", file=sys.stderr)
        print(f"{name}: main epoch {t_main:.2f}s, {len(train) / t_main:.0f} images/s", file=sys.stderr)
    ce = rows[0]
    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cpu = platform.processor() or platform.machine()
    machine = f"{dev}; {cpu}, {os.cpu_count()} CPUs, torch {torch.__version__}"
    data = (
        f"synthetic {args.synthetic} images"
        if args.synthetic
        else f"{params.data.source} ({len(train)} train)"
    )
    cfg = params.train
    print(
        f"\n{args.params}: {cfg.backbone} {cfg.image_size}px, batch {cfg.batch_size}, "
        f"{full_epochs} epochs projected from 1 warm-up + {args.main_epochs} main epochs; {data}; {machine}\n"
    )
    mem = "peak GPU memory" if device.type == "cuda" else "peak RSS (whole process)"
    print(f"| method | images/s | {mem} | main epoch / CE | warm-up epochs | projected full run |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['images_per_s']:.0f} | {r['peak_memory_mib']:.0f} MiB | "
            f"{r['main_epoch_s'] / ce['main_epoch_s']:.2f}× | {r['warmup_epochs']} | "
            f"{_duration(r['projected_s'])} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"machine": machine, "params": args.params, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
