"""Data parallelism (pipeline/distributed.py): 2 gloo ranks on CPU against one process, same global batch.

The backbone uses GroupNorm, so a shard's forward does not depend on the rows of the other shard; every
remaining difference is float summation order. A wrong gradient scale in the gather's backward moves the
probabilities by 0.02-0.1 within three epochs; the tolerance is 1e-5.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from ddp_worker import CASES  # noqa: E402
from test_bad_input_matrix import workspace_params, write_yaml  # noqa: E402

from pipeline.distributed import Dist, from_env  # noqa: E402
from pipeline.errors import ConfigError  # noqa: E402
from stages import ingest, noise, train  # noqa: E402

HERE = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
TOL = 1e-5
# One xdist worker for the whole module: its module-scoped workspace fixture is built once, not per worker.
pytestmark = pytest.mark.xdist_group("test_distributed")


def _start(cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """Start `cmd` with one thread per process and no inherited torchrun variables; output captured."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def worker_runs(tmp_path_factory) -> tuple[Path, Path]:
    """Every case of tests/ddp_worker.py trained in one process and under torchrun with 2 ranks (the two
    jobs run side by side)."""
    root = tmp_path_factory.mktemp("ddp")
    one, two = root / "one", root / "two"
    worker = str(HERE / "ddp_worker.py")
    jobs = [_start([sys.executable, worker, str(one)]), _start([*TORCHRUN, worker, str(two)])]
    try:
        for job, name in zip(jobs, ("one process", "torchrun"), strict=True):
            out, _ = job.communicate(timeout=300)
            assert job.returncode == 0, f"{name}:\n{out.decode()[-3000:]}"
    finally:
        for job in jobs:
            job.kill()
    return one, two


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_ranks_match_one_process(worker_runs, case):
    one, two = (torch.load(d / f"{case}.pt") for d in worker_runs)
    diff = (one["probs"] - two["probs"]).abs().max().item()
    assert diff < TOL, f"{case}: exported probabilities differ by {diff:.2e}"
    for r1, r2 in zip(one["log"], two["log"], strict=True):
        for key in ("train_loss", "train_acc", "test_acc", "kept_fraction"):
            assert r1[key] == pytest.approx(r2[key], abs=TOL), (case, r1["epoch"], key)


# ----------------------------------------------------------------------------------------- the stage CLI
@pytest.fixture(scope="module")
def noisy_workspace(tmp_path_factory) -> Path:
    """Ingest + noise on 60 + 60 digits, GroupNorm backbone, GAL with a one-epoch warm-up."""
    ws = tmp_path_factory.mktemp("ddp_ws")
    raw = workspace_params()
    raw["train"]["model_kwargs"]["norm_layer"] = "groupnorm1"
    write_yaml(ws / "params.yaml", raw)
    old = os.getcwd()
    os.chdir(ws)
    try:
        assert ingest.main(["--params", "params.yaml"]) == 0
        assert noise.main(["--params", "params.yaml"]) == 0
    finally:
        os.chdir(old)
    return ws


def test_torchrun_train_stage_matches_one_process_and_rank_0_alone_writes(
    noisy_workspace, tmp_path, monkeypatch
):
    single, multi = tmp_path / "single", tmp_path / "multi"
    for ws in (single, multi):
        shutil.copytree(noisy_workspace, ws)
    job = _start([*TORCHRUN, "-m", "stages.train", "gal", "--params", "params.yaml"], multi)
    try:
        monkeypatch.chdir(single)  # the one-process run, in this process while the two ranks run
        assert train.main(["gal", "--params", "params.yaml"]) == 0
        out = job.communicate(timeout=300)[0].decode()
    finally:
        job.kill()
    assert job.returncode == 0, out[-3000:]
    # one summary line: rank 1 neither prints the epochs nor writes
    assert out.count("train@gal: test_acc") == 1 and out.count("[gal] epoch 2/2") == 1
    files = [sorted(p.relative_to(ws) for p in ws.rglob("*") if p.is_file()) for ws in (single, multi)]
    assert files[0] == files[1]
    a, b = (pl.read_parquet(ws / "scores" / "gal.parquet") for ws in (single, multi))
    pa, pb = np.stack(a["probs"].to_list()), np.stack(b["probs"].to_list())
    assert np.abs(pa - pb).max() < TOL
    assert a["pseudo_label"].to_list() == b["pseudo_label"].to_list()
    steps = [pl.read_csv(ws / "logs" / "steps" / "gal.csv") for ws in (single, multi)]
    assert steps[0].height == steps[1].height > 0  # the same CDAS steps, the same gate decisions
    after = steps[1].filter(pl.col("epoch") == 2)
    assert np.allclose(after["agreement_ratio"], steps[0].filter(pl.col("epoch") == 2)["agreement_ratio"])


# ------------------------------------------------------------------------------------------------ pieces
def test_shards_cover_the_rows_once_in_order():
    for n in (0, 1, 5, 64, 65):
        for world in (1, 2, 3):
            spans = [Dist(r, world).bounds(n) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(hi == lo2 for (_, hi), (lo2, _) in zip(spans, spans[1:], strict=False))
            sizes = [hi - lo for lo, hi in spans]
            assert max(sizes) - min(sizes) <= 1


def test_from_env_reads_torchrun_and_refuses_nonsense():
    assert from_env({}) == Dist()
    assert from_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Dist(3, 4, 1)
    with pytest.raises(ConfigError, match="RANK 4 is outside WORLD_SIZE 4"):
        from_env({"WORLD_SIZE": "4", "RANK": "4"})
    with pytest.raises(ConfigError, match="not integers"):
        from_env({"WORLD_SIZE": "two"})


def test_batch_too_small_for_the_ranks_is_refused(noisy_workspace, tmp_path, monkeypatch):
    from pipeline.params import load_params
    from pipeline.run import run_train

    params = load_params(noisy_workspace / "params.yaml")
    params.train.batch_size = 3
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="train.batch_size: 3 is too small for 2 ranks"):
        run_train(params, "ce", *(tmp_path / f for f in ("i", "n", "s", "l", "c", "st", "h")))
    assert not any(tmp_path.iterdir())
