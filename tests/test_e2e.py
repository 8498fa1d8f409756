"""End to end: `dvc repro` on a tiny configuration in a temporary copy of the repo, every declared output
checked with polars; a second `dvc repro` is a no-op; `dvc exp run -S`, `dvc metrics show`, `dvc plots show`
work; the README's polars queries run as written."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml
from e2e_run import sh, wait_for_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def repo() -> tuple[Path, dict]:
    """The tiny repo after `dvc repro`. conftest starts that run in the background at collection time (and
    orders these tests last), so it overlaps the rest of the suite; here we wait for it to finish."""
    return wait_for_run()


def declared_outputs(repo: Path) -> list[Path]:
    """Every out/metric path in dvc.yaml, with foreach expanded over params.methods."""
    spec = yaml.safe_load((repo / "dvc.yaml").read_text())
    methods = yaml.safe_load((repo / "params.yaml").read_text())["methods"]
    paths = []
    for stage in spec["stages"].values():
        body, items = (stage["do"], methods) if "foreach" in stage else (stage, [None])
        for item in items:
            for key in ("outs", "metrics", "plots"):
                for out in body.get(key, []):
                    name = out if isinstance(out, str) else next(iter(out))
                    paths.append(repo / (name.replace("${item}", item) if item else name))
    return paths


def test_every_declared_output_exists_and_reads(repo):
    root, _ = repo
    outs = declared_outputs(root)
    assert outs and all(p.exists() for p in outs), [str(p) for p in outs if not p.exists()]
    train = pl.read_parquet(root / "data/ingested/train.parquet")
    test = pl.read_parquet(root / "data/ingested/test.parquet")
    assert train.height == 150 and test.height == 150
    assert set(train["sample_id"]).isdisjoint(set(test["sample_id"]))
    noisy = pl.read_parquet(root / "data/noisy/train.parquet")
    assert noisy.height == 150 and noisy["is_noisy"].mean() > 0.2


def test_ce_scores_and_epoch_log(repo):
    root, _ = repo
    scores = pl.read_parquet(root / "scores/ce.parquet")
    assert scores.height == 150 and scores["probs"].list.len().unique().to_list() == [10]
    assert scores["noise_score"].is_between(0, 1).all() and scores["method"].unique().to_list() == ["ce"]
    log = pl.read_csv(root / "logs/ce.csv")
    assert log["epoch"].to_list() == [1, 2]
    assert {"train_loss", "train_acc", "test_acc", "label_precision", "seconds"} <= set(log.columns)
    assert pl.read_csv(root / "reports/plots/pr/ce.csv").columns == ["recall", "precision"]


def test_cleaned_file_metrics_and_report(repo):
    root, _ = repo
    cleaned = pl.read_parquet(root / "cleaned/labels.parquet")
    assert cleaned.height == 150 and set(cleaned["action"]) <= {"keep", "relabel", "drop"}
    assert set(cleaned["decided_by"]) == {"vote"} and cleaned["reviewer"].null_count() == 150  # no decisions
    assert pl.read_csv(root / "cleaned/labels.csv").height == 150
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert {"noise", "methods", "cleaning", "retrain", "review"} <= set(metrics)
    assert 0 <= metrics["methods"]["ce"]["detection"]["f1"] <= 1
    assert metrics["retrain"]["test_acc_last"] is not None
    html = (root / "reports/report.html").read_text()
    assert "data:image/png;base64" in html and "Most suspicious samples" in html
    assert "<h2>What a review buys</h2>" in html


def test_review_queue_page_and_label_studio_files(repo):
    root, _ = repo
    queue = pl.read_parquet(root / "review/queue.parquet")
    assert queue.height == 150 and queue["rank"].to_list() == list(range(1, 151))  # budget 200 > 150 rows
    assert queue["expected_gain"].is_sorted(descending=True)
    assert len(json.loads((root / "review/label_studio.json").read_text())) == 150
    assert "gradcleanDecisionsCSV" in (root / "review/review.html").read_text()
    orders = json.loads((root / "reports/metrics.json").read_text())["review"]["orders"]
    assert set(orders) == {"gradclean", "ce noise_score", "random"}


def test_gal_outputs_and_report_section(repo):
    root, _ = repo
    html = (root / "reports/report.html").read_text()
    assert "<h2>GAL: the agreement gate</h2>" in html  # its own section
    steps = pl.read_csv(root / "logs/steps/gal.csv")
    assert steps["step"].to_list() == list(range(steps.height)) and set(steps["epoch"]) == {1, 2}
    post = steps.filter(pl.col("epoch") == 2)["agreement_ratio"]
    assert post.len() > 0 and post.is_between(0, 1).all()
    assert {"joint_pseudo_label", "joint_confidence", "ab_disagree"} <= set(
        pl.read_parquet(root / "scores/gal.parquet").columns
    )


def test_gss_and_dividemix_outputs(repo):
    root, _ = repo
    html = (root / "reports/report.html").read_text()
    assert "<h2>GSS: direction pools" in html and "direction pools during training" in html
    gss = pl.read_parquet(root / "scores/gss.parquet")
    assert {"direction_pool", "direction_pool_peer", "pool_entropy"} <= set(gss.columns)
    mass = gss.select(
        pl.col(c).list.get(pl.col("given_label")) for c in ("direction_pool", "direction_pool_peer")
    )
    mean_mass = (mass["direction_pool"] + mass["direction_pool_peer"]) / 2
    assert (mean_mass - (1 - gss["noise_score"])).abs().max() < 1e-5  # noise = 1 - mean mass on ỹ
    history = pl.read_parquet(root / "scores/pool_history/gss.parquet")
    assert history.height == 2 * 150 and sorted(set(history["epoch"])) == [1, 2]
    assert pl.read_parquet(root / "scores/pool_history/ce.parquet").height == 0
    dm = pl.read_parquet(root / "scores/dividemix.parquet")
    assert dm["clean_probability"].is_between(0, 1).all()
    assert (dm["noise_score"] - (1 - dm["clean_probability"])).abs().max() < 1e-5


def test_gradient_similarity_in_every_table_and_gradsim_outputs(repo):
    root, _ = repo
    metrics = json.loads((root / "reports/metrics.json").read_text())
    methods = yaml.safe_load((root / "params.yaml").read_text())["methods"]
    assert "gradsim" in methods
    for m in methods:  # the scoring pass fills grad_similarity in every score table
        sim = pl.read_parquet(root / f"scores/{m}.parquet")["grad_similarity"]
        assert sim.null_count() == 0 and sim.is_between(-1, 1).all(), m
        assert 0 <= metrics["methods"][m]["grad_similarity"]["auroc"] <= 1, m
    gs = pl.read_parquet(root / "scores/gradsim.parquet")
    assert sorted(gs["gradsim_rank"].to_list()) == list(range(1, 151))
    assert gs["gradsim_weight"].drop_nulls().min() >= 0
    assert {"top10_noisy", "bottom10_noisy", "weight_clean", "weight_noisy"} <= set(
        pl.read_csv(root / "logs/gradsim.csv").columns
    )
    html = (root / "reports/report.html").read_text()
    assert "Gradient similarity" in html and "top 10 and bottom 10 weights" in html


def test_datalab_table_and_report_section(repo):
    root, _ = repo
    issues = pl.read_parquet(root / "issues/datalab.parquet")
    assert issues.height == 300 and issues["split"].value_counts().sort("split")["count"].to_list() == [
        150,
        150,
    ]
    assert (
        issues["outlier_score"].is_between(0, 1).all()
        and issues["near_duplicate_score"].is_between(0, 1).all()
    )
    dup = issues.filter(pl.col("is_near_duplicate"))
    assert (dup["near_duplicate_set"].list.len() > 0).all()
    metrics = json.loads((root / "reports/metrics.json").read_text())
    assert metrics["data_issues"]["near_duplicates"] == dup.height
    assert metrics["data_issues"]["outliers"] == int(issues["is_outlier"].sum())
    html = (root / "reports/report.html").read_text()
    assert "Data issues (cleanlab Datalab on the embeddings)" in html and "Most atypical images" in html


def test_gal_figure1_experiment_runs_on_the_pipeline_data(repo, tmp_path):
    """GAL's Figure-1 sweep is an experiment beside the product (`experiments/`), run on the pipeline's
    ingested tables with one command; the product pipeline has no stage for it."""
    root, env = repo
    out = tmp_path / "fig1"
    args = ["--rates", "0", "0.5", "--epochs", "2", "--max-samples", "all", "--out", str(out)]
    sh([sys.executable, "experiments/gal_figure1.py", *args], root, env)
    agree = pl.read_csv(out / "agreement.csv")
    assert agree["noise_rate"].unique().sort().to_list() == [0.0, 0.5]
    assert agree.filter(pl.col("epoch") == 2)["gate_ratio"].is_between(0, 1).all()
    assert set(json.loads((out / "summary.json").read_text())) == {"0", "0.5"}
    assert (out / "figure1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "gal_agreement" not in (root / "dvc.yaml").read_text()


def test_second_repro_is_a_no_op(repo):
    root, env = repo
    out = sh(["dvc", "repro"], root, env).stdout
    assert "Running stage" not in out and "up to date" in out


def test_checkpoints_come_back_with_dvc_checkout(repo):
    """Checkpoints are cached outputs: when they are gone or replaced (an experiment's run, a clean), `dvc
    checkout` restores the committed ones, so `dvc status` does not force train, retrain and evaluate to run
    again."""
    root, env = repo
    kept = {p: p.read_bytes() for p in (root / "checkpoints/ce.pt", root / "checkpoints/retrain.pt")}
    for path in kept:
        path.unlink()
    assert "deleted" in sh(["dvc", "status"], root, env).stdout
    sh(["dvc", "checkout"], root, env)
    assert all(path.read_bytes() == data for path, data in kept.items())
    out = sh(["dvc", "status"], root, env).stdout
    assert "up to date" in out, out


def test_metrics_and_plots_show(repo):
    root, env = repo
    assert "methods.ce.test_acc_last" in sh(["dvc", "metrics", "show"], root, env).stdout
    sh(["dvc", "plots", "show", "-o", str(root / "dvc_plots")], root, env)
    assert (root / "dvc_plots" / "index.html").is_file()


def test_readme_polars_queries_run_as_written(repo):
    root, env = repo
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Querying the scores", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 3
    for code in blocks:
        res = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
        assert res.returncode == 0, f"README query failed:\n{code}\n{res.stderr}"
        assert res.stdout.strip(), f"README query printed nothing:\n{code}"


def test_exp_run_with_set_param(repo):
    """`dvc exp run -S` applies the value and re-runs only the stages that read the key (the evaluate
    stage for evaluate.gallery_size; a noise.rate change would re-run everything but ingest)."""
    root, env = repo
    out = sh(["dvc", "exp", "run", "-S", "evaluate.gallery_size=2"], root, env).stdout
    assert "Running stage 'evaluate'" in out and "Running stage 'train@" not in out
    assert yaml.safe_load((root / "params.yaml").read_text())["evaluate"]["gallery_size"] == 2
    assert (root / "reports/report.html").read_text().count('class="cell"') == 2
    # the experiment keeps its metrics (cached outputs): `dvc exp show` compares them, no "!" placeholders
    table = pl.read_csv(
        io.StringIO(sh(["dvc", "exp", "show", "--csv"], root, env).stdout), infer_schema_length=0
    )
    exp = table.filter(pl.col("rev") != "workspace").filter(pl.col("Experiment").is_not_null())
    assert exp.height >= 1 and set(exp["methods.ce.test_acc_last"]) != {"!"}, exp
