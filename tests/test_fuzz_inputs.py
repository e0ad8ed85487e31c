"""Fuzz test (issue 10): random corruptions of real CSV and OPUS inputs -- truncation, byte flips,
header edits -- must each end in a clean success with correct per-sample problems, or in one
:class:`SoilCarbonError` line (exit 2 on the CLI); never another exception, never a partial file.

Seeded, so a failure is reproducible: the case id names the seed. The models are loaded once
(``predict_file`` with a loaded model is what the CLI runs); a few cases also go through the real
CLI entry point to check the exit code and the single ``error:`` line.
"""

from __future__ import annotations

import random
import shutil

import numpy as np
import pandas as pd
import pytest

from cli_helpers import cli_in_process, only_error_line
from conftest import NIRSOIL_CSV, OPUS_DIR

from soilcarbon.errors import SoilCarbonError
from soilcarbon.serving.batch import predict_file
from soilcarbon.serving.model import load_model

SEEDS = range(24)


@pytest.fixture(scope="module")
def models(store):
    return {"nir": load_model("models:/soc-nir/1"), "mir": load_model(store["mir"])}


@pytest.fixture(scope="module")
def csv_bytes() -> bytes:
    return pd.read_csv(NIRSOIL_CSV, nrows=15).to_csv(index=False).encode()


def corrupt(data: bytes, rng: random.Random, header_end: int) -> tuple[bytes, str]:
    """One random corruption of ``data`` and its name."""
    kind = rng.choice(["truncate", "flip", "flip", "header", "delete-line", "duplicate-line"])
    if kind == "truncate":
        return data[:rng.randrange(0, len(data))], kind
    if kind == "flip":
        raw = bytearray(data)
        for _ in range(rng.randint(1, 8)):  # text-like bytes half of the time, any byte otherwise
            raw[rng.randrange(len(raw))] = rng.choice(b"0123456789.,;-eE aX\n\x00") if rng.random() < 0.5 \
                else rng.randrange(256)
        return bytes(raw), kind
    if kind == "header" and header_end > 0:
        names = data[:header_end].split(b",")
        k = rng.randrange(len(names))
        names[k] = rng.choice([b"abc", b"", names[max(k - 1, 0)], b"1e9", b"-5", b"wn_" + names[k], b"x" * 3])
        return b",".join(names) + data[header_end:], f"header column {k}"
    lines = data.split(b"\n")
    k = rng.randrange(1, max(2, len(lines) - 1))
    if kind == "delete-line":
        del lines[k]
    else:
        lines.insert(k, lines[k])
    return b"\n".join(lines), kind


def check_outcome(folder, inputs: set[str], run) -> str:
    """Run ``run(output)``: a SoilCarbonError leaves only the inputs; a success writes an output
    whose empty rows are exactly the reported problems."""
    output = folder / "pred.csv"
    try:
        summary = run(output)
    except SoilCarbonError as exc:
        assert "\n" not in str(exc)
        assert {p.name for p in folder.iterdir()} == inputs, "an error left a file behind"
        return "error"
    assert {p.name for p in folder.iterdir()} == inputs | {"pred.csv"}, "a temporary file was left"
    result = pd.read_csv(output, dtype={"sample_id": str})
    assert len(result) == summary.n_samples and summary.n_predicted > 0
    empty = result["prediction"].isna().to_numpy()
    assert int((~empty).sum()) == summary.n_predicted
    finite = result.loc[~empty, ["prediction", "lower", "upper", "domain_score"]].to_numpy(float)
    assert np.isfinite(finite).all(), "a predicted row has an infinite or missing bound"
    assert summary.n_problems >= int(empty.sum()) and len(summary.problems) == summary.n_problems
    reported = {name for name, _ in summary.problems}
    for row in np.flatnonzero(empty):
        sid = result["sample_id"].iloc[row]
        assert pd.isna(sid) or sid in reported, f"row {row} is empty but not reported"
    return "ok"


@pytest.mark.parametrize("seed", SEEDS)
def test_corrupted_csv(models, csv_bytes, tmp_path, seed):
    rng = random.Random(seed)
    data, _ = corrupt(csv_bytes, rng, csv_bytes.index(b"\n"))
    source = tmp_path / "input.csv"
    source.write_bytes(data)
    check_outcome(tmp_path, {"input.csv"}, lambda out: predict_file(models["nir"], out, spectra=source))


@pytest.mark.parametrize("seed", range(8))
def test_corrupted_opus_folder(models, tmp_path, seed):
    """Three real OPUS files, one of them truncated or with flipped bytes: that file is reported
    (or the job refused), the others predicted."""
    rng = random.Random(1000 + seed)
    folder = tmp_path / "scans"
    folder.mkdir()
    files = sorted(p for p in OPUS_DIR.iterdir() if p.is_file())[seed * 3:seed * 3 + 3]
    for path in files:
        shutil.copy(path, folder / path.name)
    victim = folder / files[rng.randrange(3)].name
    data, _ = corrupt(victim.read_bytes(), rng, -1)
    victim.write_bytes(data)
    inputs = {"scans"}
    check_outcome(tmp_path, inputs, lambda out: predict_file(models["mir"], out, spectra=folder))


def test_corrupted_inputs_on_the_cli(store, csv_bytes, tmp_path, capsys):
    """The CLI's side of the contract: exit 2 with one ``error:`` line, or exit 0."""
    for seed in range(4):
        data, _ = corrupt(csv_bytes, random.Random(seed), csv_bytes.index(b"\n"))
        source = tmp_path / f"input{seed}.csv"
        source.write_bytes(data)
        out = tmp_path / f"pred{seed}.csv"
        code, _, stderr = cli_in_process(capsys, "predict", "--model", "models:/soc-nir/1", "--spectra", source,
                                         "-o", out, "--quiet")
        assert code in (0, 2), stderr
        if code == 2:
            only_error_line(stderr)
            assert not out.exists()
    assert leftovers(tmp_path) == []


def leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]
