"""``soilcarbon select`` and :mod:`soilcarbon.lab.selection`: hand-worked orders, agreement with
brute-force (full distance matrix) implementations on real spectra, ``--include``, ``--library``,
cLHS strata, and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from chemotools.scatter import StandardNormalVariate
from cli_helpers import cli_in_process, only_error_line
from scipy.spatial.distance import cdist
from sklearn.decomposition import PCA

from soilcarbon.errors import SoilCarbonError
from soilcarbon.lab.selection import clhs, duplex, farthest_pair, kennard_stone, pca_space, puchwein
from soilcarbon.spectral.readers import read_spectra

LINE = np.array([[0.0], [1.0], [4.0], [8.0], [10.0]])


def brute_ks(D: np.ndarray, n: int, chosen: list[int], reference_min: np.ndarray | None = None) -> list[int]:
    """Kennard-Stone on a full distance matrix (the textbook algorithm, no shortcuts)."""
    chosen = list(chosen)
    while len(chosen) < n:
        parts = ([D[:, chosen].min(axis=1)] if chosen else []) + ([reference_min] if reference_min is not None else [])
        nearest = np.min(parts, axis=0)
        nearest[chosen] = -1
        chosen.append(int(np.argmax(nearest)))
    return chosen


def brute_pair(D: np.ndarray, X: np.ndarray, VI: np.ndarray | None = None) -> list[int]:
    """The farthest pair, the one farther from the centroid (in the same metric) first."""
    i, j = np.unravel_index(np.argmax(D), D.shape)
    centre = X.mean(axis=0, keepdims=True)
    radius = (cdist(X, centre) if VI is None else cdist(X, centre, "mahalanobis", VI=VI)).ravel()
    return [int(i), int(j)] if radius[i] >= radius[j] else [int(j), int(i)]


@pytest.fixture(scope="module")
def corn_m5(corn_dir):
    return read_spectra(corn_dir / "corn_m5.csv")


# ------------------------------------------------------------------------ hand-worked examples
def test_kennard_stone_hand_worked_line():
    # points 0, 1, 4, 8, 10: farthest pair 0-10, 10 first (5.4 from the mean 4.6, 0 is 4.6 away);
    # then 4 (4 from its nearest chosen; 8 is 2 away, 1 is 1), then 8 (2), then 1 (1)
    assert kennard_stone(LINE, 5, metric="euclidean").tolist() == [4, 0, 2, 3, 1]
    # in 1-D the Mahalanobis distance is the Euclidean one divided by the standard deviation
    assert kennard_stone(LINE, 5).tolist() == [4, 0, 2, 3, 1]
    # start="mean" (the kennard-stone package's rule): 10 is farthest from the mean, then 0, ...
    assert kennard_stone(LINE, 3, metric="euclidean", start="mean").tolist() == [4, 0, 2]
    # included 4.0 first: then 10 (6 away), 0 (4), 8 (2), 1 (1)
    assert kennard_stone(LINE, 5, include=[2], metric="euclidean").tolist() == [2, 4, 0, 3, 1]
    # a library at 9.5 and 0.5: 4 is farthest from it (3.5), then 8 (1.5; 10 and 1 are 0.5 away)
    library = np.array([[9.5], [0.5]])
    assert kennard_stone(LINE, 2, reference=library, metric="euclidean").tolist() == [2, 3]


def test_puchwein_and_duplex_hand_worked_line():
    # leverage order 10, 0, 1, 8, 4; the largest limiting distance keeping 3 is just under 4:
    # 10 drops 8, 0 drops 1, 4 (4 from 0) stays
    assert puchwein(LINE, 3, metric="euclidean").tolist() == [4, 0, 2]
    # DUPLEX: calibration opens with the pair 0-10, the test set with 1-8 (the farthest of the
    # rest, 8 first: 8 is farther from their centroid 4.33); then calibration takes 4
    calibration, test = duplex(LINE, 2, metric="euclidean", return_test=True)
    assert calibration.tolist() == [4, 0] and test.tolist() == [3, 1]
    assert duplex(np.vstack([LINE, [[5.0]]]), 3, metric="euclidean").tolist() == [4, 0, 5]


# --------------------------------------------------------------- against full distance matrices
def test_farthest_pair_and_ks_match_brute_force_on_real_and_heavy_tailed_data(corn_m5):
    rng = np.random.default_rng(1)
    cases = [pca_space(corn_m5.values, 5), rng.standard_t(2, size=(300, 3)), rng.normal(size=(257, 8))]
    for X in cases:
        D = cdist(X, X)
        assert sorted(farthest_pair(X)) == sorted(np.unravel_index(np.argmax(D), D.shape))
        assert kennard_stone(X, 15, metric="euclidean").tolist() == brute_ks(D, 15, brute_pair(D, X))
        # Mahalanobis: scipy's with the inverse covariance
        VI = np.linalg.inv(np.cov(X, rowvar=False))
        M = cdist(X, X, "mahalanobis", VI=VI)
        assert kennard_stone(X, 15).tolist() == brute_ks(M, 15, brute_pair(M, X, VI))


def test_duplex_matches_brute_force(corn_m5):
    X = pca_space(corn_m5.values, 4)
    VI = np.linalg.inv(np.cov(X, rowvar=False))
    M = cdist(X, X, "mahalanobis", VI=VI)
    calibration, test = duplex(X, 10, return_test=True)
    cal = brute_pair(M, X, VI)
    rest = np.setdiff1d(np.arange(len(X)), cal)
    sub = M[np.ix_(rest, rest)]
    a, b = np.unravel_index(np.argmax(sub), sub.shape)
    radius = cdist(X[rest], X[rest].mean(axis=0, keepdims=True), "mahalanobis", VI=VI).ravel()
    tst = [int(rest[a]), int(rest[b])] if radius[a] >= radius[b] else [int(rest[b]), int(rest[a])]
    while len(cal) < 10:
        for members in (cal, tst):
            free = np.setdiff1d(np.arange(len(X)), cal + tst)
            members.append(int(free[np.argmax(M[np.ix_(free, members)].min(axis=1))]))
    assert calibration.tolist() == cal and test.tolist() == tst


def test_default_command_is_prospectr_mahalanobis_ks_in_pca_space(tmp_path, capsys, corn_dir, corn_m5):
    """The default: SNV, PCA (99 % of the variance), Mahalanobis KS -- rebuilt with chemotools'
    SNV, scikit-learn's PCA and scipy's Mahalanobis distance on the full matrix."""
    output = tmp_path / "ids.csv"
    code, out, err = cli_in_process(capsys, "select", "--spectra", corn_dir / "corn_m5.csv", "--n", 12,
                                    "--output", output)
    assert code == 0, err
    chosen = pd.read_csv(output, dtype={"sample_id": str})
    assert chosen.columns.tolist() == ["sample_id", "rank"] and chosen["rank"].tolist() == list(range(1, 13))
    snv = StandardNormalVariate().fit_transform(corn_m5.values)
    full = PCA().fit(snv)
    k = int(np.searchsorted(np.cumsum(full.explained_variance_ratio_), 0.99) + 1)
    scores = PCA(k).fit_transform(snv)
    assert f"{k} dimension(s)" in out
    VI = np.linalg.inv(np.cov(scores, rowvar=False))
    M = cdist(scores, scores, "mahalanobis", VI=VI)
    expected = brute_ks(M, 12, brute_pair(M, scores, VI))
    assert chosen["sample_id"].tolist() == corn_m5.ids[expected].tolist()


def test_spectra_space_is_euclidean_ks_on_the_spectra_as_given(corn_m5):
    from soilcarbon.lab.select_commands import select_samples

    result = select_samples(corn_m5, 10, space="spectra")
    assert (result.space, result.metric, result.n_features) == ("spectra", "euclidean", 700)
    D = cdist(corn_m5.values, corn_m5.values)
    expected = brute_ks(D, 10, brute_pair(D, corn_m5.values))
    assert result.table["sample_id"].tolist() == corn_m5.ids[expected].tolist()
    assert result.table["rank"].tolist() == list(range(1, 11))


# ---------------------------------------------------------------------------- include / library
def test_include_enters_first_and_the_rest_is_chosen_around_it(tmp_path, capsys, corn_dir, corn_m5):
    include = tmp_path / "measured.csv"
    pd.DataFrame({"sample_id": ["corn-05", "corn-40", "corn-17"], "oil": [3.1, 3.5, 3.3]}).to_csv(include, index=False)
    output = tmp_path / "ids.csv"
    code, out, err = cli_in_process(capsys, "select", "--spectra", corn_dir / "corn_m5.csv", "--n", 8,
                                    "--include", include, "--output", output, "--metric", "euclidean",
                                    "--components", 3)
    assert code == 0, err
    assert "included first: 3" in out
    chosen = pd.read_csv(output)["sample_id"].tolist()
    assert chosen[:3] == ["corn-05", "corn-40", "corn-17"]
    X = pca_space(corn_m5.values, 3)
    rows = [int(np.flatnonzero(corn_m5.ids == i)[0]) for i in chosen[:3]]
    assert chosen == corn_m5.ids[brute_ks(cdist(X, X), 8, rows)].tolist()


def test_library_spiking_covers_what_the_library_lacks(tmp_path, capsys, nirsoil_csv):
    """Candidates = 150 soils; the library holds 100 of them plus 200 others: the new samples are
    never ones the library already has, and come in the order of their distance to the library."""
    spectra = read_spectra(nirsoil_csv)
    frame = spectra.to_frame(include_meta=False)
    candidates, library = tmp_path / "new.csv", tmp_path / "library.parquet"
    frame.iloc[:150].to_csv(candidates, index=False)
    frame.iloc[50:350].to_parquet(library)
    output = tmp_path / "ids.csv"
    code, out, err = cli_in_process(capsys, "select", "--spectra", candidates, "--library", library, "--n", 10,
                                    "--output", output)
    assert code == 0, err
    assert "library: 300 spectra" in out
    chosen = pd.read_csv(output)["sample_id"].tolist()
    assert not set(chosen) & set(frame["sample_id"].iloc[50:350])
    X, R = pca_space(spectra.values[:150], reference=spectra.values[50:350])
    cov = np.cov(np.vstack([X, R]), rowvar=False)
    VI = np.linalg.inv(cov)
    expected = brute_ks(cdist(X, X, "mahalanobis", VI=VI), 10, [],
                        reference_min=cdist(X, R, "mahalanobis", VI=VI).min(axis=1))
    assert chosen == frame["sample_id"].iloc[expected].tolist()
    # without the library the choice is another one
    code, _, err = cli_in_process(capsys, "select", "--spectra", candidates, "--n", 10, "--output", output)
    assert code == 0, err
    assert pd.read_csv(output)["sample_id"].tolist() != chosen


# ----------------------------------------------------------------------------------------- cLHS
def test_clhs_fills_the_strata_of_real_covariates(tmp_path, capsys, shared_data):
    field = pd.read_parquet(shared_data / "limesoda" / "BB.250.parquet")
    names = ["Altitude", "Slope", "ERa", "G_Total_Counts", "NDVI"]
    X = field[names].to_numpy(float)
    n = 20

    def strata_error(rows):
        edges = np.quantile(X, np.linspace(0, 1, n + 1)[1:-1], axis=0)
        counts = [np.bincount(np.searchsorted(edges[:, j], X[rows, j], side="right"), minlength=n)
                  for j in range(X.shape[1])]
        return int(np.abs(np.array(counts) - 1).sum())

    chosen = clhs(X, n, n_iter=3000, random_state=3)
    rng = np.random.default_rng(0)
    random_errors = [strata_error(rng.choice(len(X), n, replace=False)) for _ in range(50)]
    assert strata_error(chosen) < 0.5 * np.median(random_errors)
    assert clhs(X, n, n_iter=3000, random_state=3).tolist() == chosen.tolist()  # reproducible
    kept = clhs(X, n, include=[7, 3], n_iter=500)
    assert kept[:2].tolist() == [7, 3] and len(set(kept.tolist())) == n
    # the command: covariates only
    table = tmp_path / "cov.csv"
    field[["sample_id", *names]].to_csv(table, index=False)
    output = tmp_path / "ids.csv"
    code, out, err = cli_in_process(capsys, "select", "--covariates", table, "--method", "clhs", "--n", n,
                                    "--output", output, "--seed", 3)
    assert code == 0, err
    assert "covariates space, 5 dimension(s)" in out
    ids = pd.read_csv(output)["sample_id"].astype(str)
    rows = field["sample_id"].astype(str).reset_index(drop=True)
    assert strata_error(rows[rows.isin(ids)].index.to_numpy()) < 0.5 * np.median(random_errors)


# --------------------------------------------------------------------------------------- errors
@pytest.fixture(scope="module")
def small_table(corn_m5):
    return corn_m5.take(np.arange(12)).to_frame(include_meta=False)


@pytest.mark.parametrize("case, expected", [
    ("n_too_large", "cannot select 13 samples from 12 candidates"),
    ("n_zero", "--n must be at least 1, got 0"),
    ("n_negative", "--n must be at least 1, got -2"),
    ("duplicate_ids", "duplicate sample ids: corn-03"),
    ("nan", "missing values in sample(s) corn-04"),
    ("unknown_include", "included sample(s) corn-77 are not among the candidates"),
    ("include_too_many", "3 samples are to be included but only 2 selected"),
    ("duplex_too_many", "DUPLEX fills a calibration and a test set of 7 each"),
    ("library_with_clhs", "only be spiked with --method kennard-stone"),
    ("bad_method", "unknown method 'random'"),
    ("flat", "flat spectrum (all values equal) in sample(s) corn-08"),
    ("library_narrow", "the library covers 1100-2000 nm but the candidates"),
    ("covariates_unused", "a covariates table is only used with --space covariates (got --space pca)"),
    ("covariates_missing_row", "no covariates for sample(s) corn-12"),
])
def test_errors_give_one_line_and_no_output(tmp_path, capsys, small_table, case, expected):
    table = small_table.copy()
    spectra = tmp_path / "spectra.csv"
    args = ["--n", 4]
    if case == "n_too_large":
        args = ["--n", 13]
    elif case == "n_zero":
        args = ["--n", 0]
    elif case == "n_negative":
        args = ["--n", -2]
    elif case == "duplicate_ids":
        table.loc[5, "sample_id"] = "corn-03"
    elif case == "nan":
        table.iloc[3, 10] = np.nan
    elif case == "flat":
        table.iloc[7, 1:] = 0.25
    elif case in ("unknown_include", "include_too_many"):
        ids = ["corn-01", "corn-77"] if case == "unknown_include" else ["corn-01", "corn-02", "corn-03"]
        pd.DataFrame({"sample_id": ids}).to_csv(tmp_path / "inc.csv", index=False)
        args = ["--n", 2, "--include", tmp_path / "inc.csv"]
    elif case == "duplex_too_many":
        args = ["--n", 7, "--method", "duplex"]
    elif case == "library_with_clhs":
        args = ["--n", 3, "--method", "clhs", "--library", spectra]
    elif case == "library_narrow":
        table[["sample_id", *[str(w) for w in range(1100, 2002, 2)]]].to_csv(tmp_path / "lib.csv", index=False)
        args = ["--n", 3, "--library", tmp_path / "lib.csv"]
    elif case == "bad_method":
        args = ["--n", 3, "--method", "random"]
    elif case in ("covariates_unused", "covariates_missing_row"):
        pd.DataFrame({"sample_id": table["sample_id"][:11], "elevation": np.arange(11.0)}).to_csv(
            tmp_path / "cov.csv", index=False)
        args = ["--n", 3, "--covariates", tmp_path / "cov.csv"] + (["--space", "pca"] if case == "covariates_unused" else [])
    table.to_csv(spectra, index=False)
    output = tmp_path / "ids.csv"
    code, _, err = cli_in_process(capsys, "select", "--spectra", spectra, "--output", output, *args)
    assert code == 2
    assert expected in only_error_line(err)
    assert not output.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".ids")] == []


def test_library_functions_refuse_bad_input():
    with pytest.raises(SoilCarbonError, match="missing .NaN. or infinite values in row.s. 1"):
        kennard_stone(np.array([[0.0], [np.nan], [2.0]]), 2)
    with pytest.raises(SoilCarbonError, match="at least 1"):
        kennard_stone(LINE, 0)
    with pytest.raises(SoilCarbonError, match="cannot select 6 samples from 5"):
        puchwein(LINE, 6)
    with pytest.raises(SoilCarbonError, match="all samples are identical"):
        kennard_stone(np.ones((4, 3)), 2)
    spectra = np.random.default_rng(0).normal(size=(6000, 5))
    spectra[5000] = 1.0
    with pytest.raises(SoilCarbonError, match="X row 5000 is a flat spectrum"):
        pca_space(spectra)


def test_real_subprocess_writes_the_table_and_the_plot(run_cli, tmp_path, corn_dir):
    output, plot = tmp_path / "ids.csv", tmp_path / "selection.png"
    code, out, err = run_cli("select", "--spectra", corn_dir / "corn_mp6.csv", "--n", 30, "--output", output,
                             "--plot", plot)
    assert code == 0, err
    table = pd.read_csv(output)
    assert len(table) == 30 and table["sample_id"].is_unique and table["sample_id"].str.startswith("corn-").all()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.splitlines()[-1] == f"selection: {output}"


def test_select_and_train_read_a_covariates_table_by_one_rule(corn_m5):
    """select used to check only the candidates' rows of a covariates table, training every row: text
    in a row of another sample passed in select and stopped training. Both now refuse the file."""
    from soilcarbon.lab.select_commands import select_samples
    from soilcarbon.training.data import assemble

    ids = list(corn_m5.ids[:12])
    table = pd.DataFrame({"sample_id": ids + ["other"], "ndvi": np.linspace(0, 1, 13).astype(object),
                          "soc": np.linspace(1, 2, 13)})
    table.loc[12, "ndvi"] = "cloud"
    spectra = corn_m5.select(ids)
    expected = "cov.csv: covariate column 'ndvi' is not numeric (sample other has 'cloud')"
    covariates = table[["sample_id", "ndvi"]]
    for call in (lambda: select_samples(spectra, 3, covariates=covariates, covariates_source="cov.csv"),
                 lambda: assemble(spectra, "soc", table, covariates_source="cov.csv")):
        with pytest.raises(SoilCarbonError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            call()
    chosen = select_samples(spectra, 3, covariates=table.drop(index=12, columns=["soc"]), covariates_source="cov.csv")
    assert len(chosen.table) == 3 and chosen.space == "covariates"
