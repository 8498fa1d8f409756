"""The e2e suite's `dvc repro`, started in the background so it overlaps the rest of the test run.

`conftest.pytest_collection_modifyitems` calls `start_e2e_run()` when e2e tests are collected and moves them
last; their `repo` fixture calls `finish_e2e_run()`, which waits for the run and fails with its log tail.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(base: dict) -> dict:
    p = json.loads(json.dumps(base))
    p["data"]["max_per_split"] = 150
    p["noise"].update(estimate_folds=2, estimate_epochs=1)
    p["train"].update(
        epochs=2, image_size=8, batch_size=32, progress=False, model_kwargs={"channels": [8, 16, 32, 64]}
    )
    p["evaluate"]["gallery_size"] = 6
    p["method"]["gal"]["warmup_epochs"] = 1
    p["method"]["dividemix"]["warmup_epochs"] = 1
    p["method"]["gss"].update(history=True, variant="db")  # the default is sb: cover both pools here
    p["gal_agreement"] = {"rates": [0.0, 0.5], "epochs": 2}
    return p


@dataclass
class E2ERun:
    repo: Path
    env: dict
    proc: subprocess.Popen
    log: Path


E2E_RUN = pytest.StashKey[E2ERun]()


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the e2e repo; a non-zero exit (when `check`) fails with its output's tail."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def _lowest_priority() -> None:
    os.nice(19)


def start_e2e_run() -> E2ERun:
    """Copy the working tree (tracked and untracked files), set tiny params, commit, start `dvc repro`."""
    dst = Path(tempfile.mkdtemp(prefix="gradclean-e2e-")) / "repo"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / "dvc.lock").unlink(missing_ok=True)
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        **os.environ,
        "GX_ANALYTICS_ENABLED": "false",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PYTHONPATH": str(dst),
    }
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "tiny"], dst, env)
    log = dst.parent / "repro.log"
    # Lowest CPU priority and one thread per stage: the run soaks up the cores the other tests leave idle
    # (imports, Python overhead) without preempting their torch threads; what is left runs at the end.
    quiet = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(
            ["dvc", "repro"],
            cwd=dst,
            env=quiet,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_lowest_priority,
        )
    return E2ERun(dst, env, proc, log)


def finish_e2e_run(run: E2ERun, timeout: float = 900) -> tuple[Path, dict]:
    """Wait for the background `dvc repro`; its failure fails the caller with the log's tail."""
    try:
        rc = run.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.proc.kill()
        raise
    if rc != 0:
        raise AssertionError(f"dvc repro failed ({rc}):\n{run.log.read_text()[-6000:]}")
    return run.repo, run.env
