"""benchmarks/selection_rules.py compares rules over the default's families: fits that lack
some of them are refused with one line, not averaged over fewer families or a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import selection_rules  # noqa: E402
from generalization import LIMESODA, pairs  # noqa: E402

pytestmark = pytest.mark.skipif(not LIMESODA.exists(), reason="needs ../shared/data/limesoda")


def test_fits_without_the_default_families_are_refused(tmp_path):
    config = tmp_path / "linear.yaml"
    config.write_text("target_transforms: [none]\n"
                      "candidates: [{model: covariates, label: cov-linear, grid: {learner: [linear]}}]\n")
    pair = next(p for p in pairs() if (p["dataset"], p["target"]) == ("BB.30_1", "SOC"))
    (tmp_path / "dumps").mkdir()
    selection_rules.fit_pair(pair, str(config), str(tmp_path / "dumps"))
    assert (tmp_path / "dumps" / "BB.30_1__SOC.npz").exists()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "selection_rules.py"), "table",
                           "--dumps", str(tmp_path / "dumps")], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""}, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert done.stderr.strip() == (f"error: {tmp_path / 'dumps' / 'BB.30_1__SOC.npz'}: the fits lack the default's "
                                   "families cov-cubist, cov-extratrees, cov-forest, cov-lightgbm, cov-svr; fit with "
                                   "a configuration that has them (benchmarks/configs/broad.yaml)")
