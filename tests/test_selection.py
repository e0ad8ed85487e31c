"""Model selection: stacking when it beats the best single model, grouped and given folds,
the non-nested mode, and the default model families (MBL, PLS, target transforms) end to end."""

from __future__ import annotations

import re

import numpy as np
import pytest

from soilcarbon.errors import SoilCarbonError
from soilcarbon.models.ensemble import weighted_ensemble
from soilcarbon.training.config import CandidateSpec, parse_config
from soilcarbon.training.search import CandidateScore, select
from soilcarbon.training.train import train
from trained_model import FAST_CONFIG, covariate_table, nirsoil_spectra


def _score(label, oof, y):
    return CandidateScore(CandidateSpec("pls", {}, "none", None, label), oof, float(np.sqrt(np.mean((oof - y) ** 2))), 0.0)


COMPETE = {"ensemble": {"method": "compete", "compete_within": 0.0}}


def test_compete_stacks_only_when_the_stack_beats_the_best_single_model():
    rng = np.random.default_rng(0)
    y = rng.normal(size=400)
    labels = np.arange(400) % 5
    # two families with independent errors: their stack is clearly better than either
    a, b = y + rng.normal(0, 0.5, 400), y + rng.normal(0, 0.5, 400)
    config = parse_config(COMPETE)
    chosen = select([_score("a", a, y), _score("b", b, y)], y, labels, config)
    assert sorted(m.label for m in chosen.members) == ["a", "b"]
    assert chosen.weights.sum() == pytest.approx(1.0) and (chosen.weights > 0.3).all()
    assert not np.allclose(chosen.weights, 0.5)  # fitted weights, not the equal average
    assert chosen.rmse < min(np.sqrt(np.mean((a - y) ** 2)), np.sqrt(np.mean((b - y) ** 2)))
    # a useless second family: the best single model is kept
    useless = rng.normal(size=400)
    chosen = select([_score("a", a, y), _score("noise", useless, y)], y, labels, config)
    assert [m.label for m in chosen.members] == ["a"]
    # ensembles switched off
    chosen = select([_score("a", a, y), _score("b", b, y)], y, labels, parse_config({"ensemble": {"enabled": False}}))
    assert len(chosen.members) == 1


def test_average_method_averages_each_family_best_within_the_cut_without_competing():
    rng = np.random.default_rng(1)
    y = rng.normal(size=60)
    labels = np.arange(60) % 5
    families = [y + rng.normal(0, 0.6, 60) for _ in range(5)]
    scores = [_score(f"f{i}", oof, y) for i, oof in enumerate(families)]
    # a worse candidate of a family is not a member: only each family's best is averaged
    scores.append(_score("f0", families[0] + 1.0, y))
    averaged = select(scores, y, labels, parse_config({"ensemble": {"method": "average", "average_within": None}}))
    assert sorted(m.label for m in averaged.members) == [f"f{i}" for i in range(5)]
    np.testing.assert_allclose(averaged.weights, 0.2)
    np.testing.assert_allclose(averaged.oof, np.mean(families, axis=0))
    # average_within: only the families within that fraction of the best RMSE are averaged
    rmse = {s.spec.label: s.rmse for s in scores[:5]}
    cut = sorted(rmse.values())[2] / min(rmse.values()) - 1 + 1e-9  # the three best families
    close = select(scores, y, labels, parse_config({"ensemble": {"method": "average", "average_within": cut}}))
    assert sorted(m.label for m in close.members) == sorted(sorted(rmse, key=rmse.get)[:3])
    np.testing.assert_allclose(close.weights, 1 / 3)
    # the average is kept even where its inner RMSE is worse than the best single model's,
    # which compete would pick instead
    good = y + rng.normal(0, 0.3, 60)
    worse = good + rng.normal(0, 0.3, 60) + 0.1
    pair = [_score("good", good, y), _score("worse", worse, y)]
    loose = select(pair, y, labels, parse_config({"ensemble": {"method": "average", "average_within": 10.0}}))
    assert sorted(m.label for m in loose.members) == ["good", "worse"] and loose.rmse > pair[0].rmse
    competed = select(pair, y, labels, parse_config({"ensemble": {"method": "compete", "compete_within": 10.0}}))
    assert competed.rmse <= pair[0].rmse
    # a family farther than the cut is left out: the single best stays alone
    alone = select(pair, y, labels, parse_config({"ensemble": {"method": "average", "average_within": 0.01}}))
    assert [m.label for m in alone.members] == ["good"]


def test_auto_averages_below_small_n_and_competes_from_there():
    """The same two families: equally averaged on a small set, the better one alone (or a stack
    favouring it) once the selection sees small_n samples or more."""
    rng = np.random.default_rng(2)
    auto = {"ensemble": {"method": "auto", "small_n": 100, "average_within": 0.5, "compete_within": 0.5}}
    for n, method in ((60, "average"), (400, "compete")):
        y = rng.normal(size=n)
        labels = np.arange(n) % 5
        good = y + rng.normal(0, 0.3, n)
        worse = good + rng.normal(0, 0.25, n)  # the same errors and more: averaging it only hurts
        scores = [_score("good", good, y), _score("worse", worse, y)]
        chosen = select(scores, y, labels, parse_config(auto))
        averaged = select(scores, y, labels, parse_config({"ensemble": {**auto["ensemble"], "method": "average"}}))
        competed = select(scores, y, labels, parse_config({"ensemble": {**auto["ensemble"], "method": "compete"}}))
        assert sorted(m.label for m in averaged.members) == ["good", "worse"]
        assert [m.label for m in competed.members] == ["good"]  # the two rules differ on both sets
        expected = averaged if method == "average" else competed
        assert [m.label for m in chosen.members] == [m.label for m in expected.members], n
        np.testing.assert_allclose(chosen.weights, expected.weights)


@pytest.mark.parametrize("ensemble, message", [
    ({"method": "vote"}, "ensemble.method must be one of auto, average, compete, got 'vote'"),
    ({"enabled": "yes"}, "ensemble.enabled must be true or false"),
    ({"max_members": 1}, "ensemble.max_members must be an integer >= 2"),
    ({"average": True}, "unknown ensemble key(s) ['average']"),
    ({"average_within": -1}, "ensemble.average_within must be null or a number >= 0"),
    ({"compete_within": "all"}, "ensemble.compete_within must be null or a number >= 0, got 'all'"),
    ({"method": "compete", "average_within": 0.2},
     "ensemble.average_within has no effect with method compete (it reads compete_within)"),
    ({"small_n": "many"}, "ensemble.small_n must be an integer >= 2, got 'many'"),
])
def test_bad_ensemble_settings_are_refused(ensemble, message):
    with pytest.raises(SoilCarbonError, match=re.escape(message)):
        parse_config({"ensemble": ensemble}, "my.yaml")


def test_weighted_ensemble_is_the_weighted_sum_of_its_refitted_members():
    from sklearn.linear_model import LinearRegression
    from sklearn.tree import DecisionTreeRegressor

    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 3))
    y = X @ [1.0, -2.0, 0.5] + rng.normal(0, 0.1, 100)
    ensemble = weighted_ensemble([LinearRegression(), DecisionTreeRegressor(random_state=0)], [0.75, 0.25]).fit(X, y)
    expected = 0.75 * LinearRegression().fit(X, y).predict(X) + 0.25 * DecisionTreeRegressor(random_state=0).fit(X, y).predict(X)
    assert np.allclose(ensemble.predict(X), expected)


def _cov_config(**cv):
    return parse_config(dict(FAST_CONFIG, candidates=[{"model": "covariates", "grid": {"learner": ["linear"]}}],
                             cv={"folds": 3, "inner_folds": 3, **cv}))


def test_grouped_cv_keeps_groups_together_and_says_so():
    table = covariate_table(90).assign(field=[f"F{i // 6}" for i in range(90)])
    result = train(None, "soc", table, _cov_config(), group="field", n_jobs=1)
    folds = result.oof.assign(field=table["field"].to_numpy()).groupby("field")["fold"].nunique()
    assert (folds == 1).all()
    assert result.cv_scheme == "grouped 3-fold by 'field'"
    assert "field" not in result.model.layout.covariates  # a CV column is not a feature
    with pytest.raises(SoilCarbonError, match="needs the group column"):
        train(None, "soc", table.drop(columns=["field"]), _cov_config(scheme="group"), n_jobs=1)
    with pytest.raises(SoilCarbonError, match="needs the fold column"):
        train(None, "soc", table.drop(columns=["field"]), _cov_config(scheme="folds"), n_jobs=1)


def test_given_folds_are_the_reported_folds():
    table = covariate_table(60).assign(block=["north", "south", "east"] * 20)
    result = train(None, "soc", table, _cov_config(), folds="block", n_jobs=1)
    assert result.cv_scheme == "given folds from column 'block' (3 folds)"
    assert len(result.fold_metrics) == 3


def test_not_nested_mode_reports_the_selection_cv():
    result = train(None, "soc", covariate_table(60), _cov_config(), nested=False, n_jobs=1)
    assert result.cv_scheme == "3-fold model-selection CV (not nested)"
    assert result.fold_metrics.empty
    assert result.metrics["rmse"] == pytest.approx(result.selection.rmse)


def test_default_families_and_transforms_on_real_spectra():
    config = parse_config({
        "target_transforms": ["none", "sqrt", "log"],
        "candidates": [{"model": "mbl", "grid": {"k": [40]}},
                       {"model": "pls", "label": "pls-snv", "grid": {"n_components": [8]},
                        "preprocessing": [{"name": "savgol", "window_length": 11, "polyorder": 2, "deriv": 1},
                                          {"name": "resample", "step": 10}, {"name": "snv"}]}],
        "cv": {"folds": 3, "inner_folds": 3},
    })
    spectra = nirsoil_spectra()
    with_target = spectra.ids[np.isfinite(spectra.target("Ciso"))]
    spectra = spectra.select(np.random.default_rng(0).choice(with_target, 150, replace=False))
    result = train(spectra, "Ciso", config=config, n_jobs=1)
    names = set(result.selection.table()["candidate"])
    assert {"mbl(k=40)|log", "pls-snv(n_components=8)|sqrt"} <= names  # all transforms were tried
    y = spectra.target("Ciso")
    assert result.metrics["rmse"] < 0.8 * y.std()
    frame = spectra.to_frame().drop(columns=["Nt", "Ciso", "CEC"]).head(5)
    predicted = result.model.predict_frame(frame)
    assert (predicted["lower"] <= predicted["prediction"]).all() and (predicted["prediction"] <= predicted["upper"]).all()
