"""Spatial block cross-validation through ``soilcarbon train --covariates ... --cv spatial``.

Synthetic field: 6 x 6 cells of 1 km, 6 samples per cell placed 300-700 m into the cell, SOC =
10 + 3 * (a random effect per cell) + noise. The covariates locate a sample (c1 ~ x/1000,
c2 ~ y/1000) but carry no information about a cell's effect, so a model can only "know" a cell
from other samples of the same cell: random k-fold lets it, spatial blocks of 1 km do not. The
blocks are recomputed here by hand (floor(x / 1000), floor(y / 1000)).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from trained_model import use_tracking

from soilcarbon.training.config import parse_config
from soilcarbon.training.train import train

CELLS, PER_CELL, BLOCK = 6, 6, 1000.0
CONFIG = {
    "target_transforms": ["none"],
    "candidates": [{"model": "covariates", "grid": {"n_estimators": [100], "min_child_samples": [3]}}],
    "ensemble": {"enabled": False},
    "cv": {"folds": 3, "inner_folds": 2},
}


def field_table(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cx, cy = (np.repeat(a.ravel(), PER_CELL) for a in np.meshgrid(np.arange(CELLS), np.arange(CELLS)))
    effect = rng.normal(0, 1, CELLS * CELLS)
    x = cx * BLOCK + rng.uniform(300, 700, len(cx))
    y = cy * BLOCK + rng.uniform(300, 700, len(cy))
    table = pd.DataFrame({
        "sample_id": [f"S{i:03d}" for i in range(len(x))], "x": x, "y": y,
        "c1": x / 1000 + rng.normal(0, 0.02, len(x)), "c2": y / 1000 + rng.normal(0, 0.02, len(x)),
        "c3": rng.normal(size=len(x)),
    })
    table["soc"] = 10 + 3 * effect[cy * CELLS + cx] + rng.normal(0, 0.3, len(x))
    return table


def blocks_split(oof: pd.DataFrame, table: pd.DataFrame) -> int:
    """Number of 1 km blocks whose samples are in more than one fold."""
    merged = oof.merge(table[["sample_id", "x", "y"]], on="sample_id")
    block = np.floor(merged["x"] / BLOCK).astype(int).astype(str) + "/" + np.floor(merged["y"] / BLOCK).astype(int).astype(str)
    return int((merged.groupby(block)["fold"].nunique() > 1).sum())


def rmse(oof: pd.DataFrame) -> float:
    return float(np.sqrt(np.mean((oof["observed"] - oof["prediction"]) ** 2)))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    folder = tmp_path_factory.getbasetemp() / "geo-mlflow"  # shared with the other geo tests
    folder.mkdir(exist_ok=True)
    return use_tracking(folder)


def test_spatial_cv_from_the_cli(run_cli, tracking, tmp_path):
    table = field_table()
    table.to_csv(tmp_path / "field.csv", index=False)
    (tmp_path / "tiny.yaml").write_text(json.dumps(CONFIG))  # JSON is YAML
    code, out, err = run_cli(
        "train", "--covariates", tmp_path / "field.csv", "--target", "soc", "--config", tmp_path / "tiny.yaml",
        "--cv", "spatial", "--coords", "x,y", "--block-size", "1000", "--name", "soc-spatial",
        "--oof-output", tmp_path / "oof.csv", "--quiet", env={"MLFLOW_TRACKING_URI": tracking})
    assert code == 0, err
    assert out.strip().splitlines()[-1].startswith("models:/soc-spatial/")
    oof = pd.read_csv(tmp_path / "oof.csv")
    assert len(oof) == CELLS * CELLS * PER_CELL and sorted(oof["fold"].unique()) == [0, 1, 2]
    assert blocks_split(oof, table) == 0  # no block is split across folds
    per_fold = oof.merge(table, on="sample_id").assign(
        block=lambda f: np.floor(f["x"] / BLOCK) * 100 + np.floor(f["y"] / BLOCK)).groupby("fold")["block"].nunique()
    assert per_fold.sum() == CELLS * CELLS and per_fold.min() >= 10  # blocks spread over the folds
    # the coordinates are not covariates of the model
    from soilcarbon.registry import list_models

    row = next(r for r in list_models() if r["name"] == "soc-spatial")
    assert row["cv_scheme"] == "spatial blocks of 1000 m, 3 folds"
    assert row["metrics"]["rmse"] == pytest.approx(rmse(oof), rel=1e-4)

    # same data, random k-fold (coordinates dropped so the features are the same): optimistic
    kfold = train(None, "soc", table.drop(columns=["x", "y"]), parse_config(CONFIG), n_jobs=1)
    assert kfold.cv_scheme.startswith("3-fold (shuffled")
    assert blocks_split(kfold.oof, table) > 0  # the check above can fail: random folds split blocks
    assert rmse(oof) > 1.3 * rmse(kfold.oof), (rmse(oof), rmse(kfold.oof))


def test_spatial_cv_too_few_blocks(run_cli, tracking, tmp_path):
    table = field_table()
    table.to_csv(tmp_path / "field.csv", index=False)
    (tmp_path / "tiny.yaml").write_text(json.dumps(CONFIG))
    base = ["train", "--covariates", tmp_path / "field.csv", "--target", "soc", "--config", tmp_path / "tiny.yaml",
            "--cv", "spatial"]
    code, out, err = run_cli(*base, "--coords", "x,y", "--block-size", "10000", env={"MLFLOW_TRACKING_URI": tracking})
    assert code == 2 and err.strip().splitlines() == [
        "error: only 1 spatial blocks of 10000 m for 3 folds; use a smaller --block-size"]
