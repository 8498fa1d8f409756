"""The e2e suite's `dvc repro`, started in the background so it overlaps the rest of the test run.

One run serves the whole test session, also when pytest-xdist spreads the tests over worker processes:

- the session's first process (`pytest_configure` in `conftest.py`, the xdist controller or a plain run)
  names a shared folder in `GRADCLEAN_E2E_DIR`, which the workers inherit;
- whichever process collects the e2e tests first claims the folder (an atomic mkdir) and starts
  `dvc repro` there, detached, at the lowest CPU priority; the exit code lands in `rc` when it ends;
- the e2e tests' `repo` fixture (`wait_for_run`) waits for `rc` and fails with the log's tail on an error;
- the first process stops a run still going and removes the folder at the end (`stop_run`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DIR_VAR = "GRADCLEAN_E2E_DIR"


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
    return p


def sh(cmd: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the e2e repo; a non-zero exit (when `check`) fails with its output's tail."""
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}"
        )
    return res


def shared_dir() -> Path:
    """The session's e2e folder (created on first use when no process has named one)."""
    if DIR_VAR not in os.environ:
        os.environ[DIR_VAR] = tempfile.mkdtemp(prefix="gradclean-e2e-")
    return Path(os.environ[DIR_VAR])


def run_env(repo: Path) -> dict:
    return {
        **os.environ,
        "GX_ANALYTICS_ENABLED": "false",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
        "PYTHONPATH": str(repo),
    }


def copy_repo(dst: Path, params: dict | None = None) -> dict:
    """Copy the working tree (tracked and untracked, not ignored files) to `dst` without dvc.lock, write
    `params` as its params.yaml when given, commit it as a fresh git repo; returns the env to run it in."""
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
    if params is not None:
        (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = run_env(dst)
    sh(["git", "init", "-q"], dst, env)
    sh(["git", "add", "-A"], dst, env)
    sh(["git", "commit", "-qm", "copy"], dst, env)
    return env


def claim_and_start() -> None:
    """Start the session's run unless another process has: copy the working tree (tracked and untracked
    files), set tiny params, commit, and launch `dvc repro` detached."""
    base = shared_dir()
    try:
        (base / "claim").mkdir()
    except FileExistsError:
        return
    dst = base / "repo"
    params = tiny_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    env = copy_repo(dst, params)
    # Lowest CPU priority and one thread per stage: the run soaks up the cores the other tests leave idle
    # (imports, Python overhead) without preempting their torch threads; what is left runs at the end.
    quiet = {**env, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    script = "nice -n 19 dvc repro > ../repro.log 2>&1; echo $? > ../rc.tmp && mv ../rc.tmp ../rc"
    proc = subprocess.Popen(["sh", "-c", script], cwd=dst, env=quiet, start_new_session=True)
    (base / "pid").write_text(str(proc.pid))


def wait_for_run(timeout: float = 1200) -> tuple[Path, dict]:
    """Wait for the session's `dvc repro` (starting it if nobody has); its failure fails the caller with the
    log's tail."""
    base = shared_dir()
    if not (base / "claim").exists():
        claim_and_start()
    deadline = time.monotonic() + timeout
    while not (base / "rc").exists():
        if time.monotonic() > deadline:
            raise AssertionError(f"dvc repro did not finish in {timeout:.0f} s:\n{_tail(base)}")
        time.sleep(1.0)
    rc = int((base / "rc").read_text().strip() or 1)
    if rc != 0:
        raise AssertionError(f"dvc repro failed ({rc}):\n{_tail(base)}")
    return base / "repo", run_env(base / "repo")


def _tail(base: Path) -> str:
    log = base / "repro.log"
    return log.read_text()[-6000:] if log.exists() else "(no log)"


def stop_run(base: Path) -> None:
    """Kill a run still going (an interrupted session) and remove the session's folder."""
    pid = base / "pid"
    if pid.exists() and not (base / "rc").exists():
        try:
            os.killpg(int(pid.read_text()), signal.SIGKILL)
        except (ProcessLookupError, PermissionError, ValueError):
            pass
    shutil.rmtree(base, ignore_errors=True)
