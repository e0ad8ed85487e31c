"""``soilcarbon select``: which scanned samples to send to the lab.

:func:`select_samples` is the Python entry point (spectra and/or covariates in, a
``sample_id, rank`` table out); the command reads the files, calls it and writes the table
atomically. The methods and their papers are in :mod:`soilcarbon.lab.selection`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import typer

from soilcarbon.errors import SoilCarbonError
from soilcarbon.lab import selection
from soilcarbon.spectral.spectra import Spectra, ids_text

METHODS = ("kennard-stone", "duplex", "puchwein", "clhs")
SPACES = ("pca", "spectra", "covariates")


@dataclass
class Selection:
    """What :func:`select_samples` chose and how."""

    table: pd.DataFrame  # id column + rank (1 = chosen first)
    method: str
    space: str
    metric: str | None
    n_candidates: int
    n_features: int  # dimensions of the space the distances were measured in
    n_library: int = 0
    n_included: int = 0
    coordinates: np.ndarray | None = field(default=None, repr=False)  # candidates in the space (for plots)
    library_coordinates: np.ndarray | None = field(default=None, repr=False)
    positions: np.ndarray | None = field(default=None, repr=False)  # chosen candidate rows, in rank order


def _covariate_matrix(covariates: pd.DataFrame, id_col: str, ids, source: str) -> np.ndarray:
    """The covariates of ``ids`` (rows in that order), numeric and complete."""
    from soilcarbon.models.matrix import covariates_table, numeric_block

    table, names = covariates_table(covariates, id_col, source)
    table = table.set_index(id_col)
    missing = [i for i in ids if i not in table.index]
    if missing:
        raise SoilCarbonError(f"{source}: no covariates for sample(s) {ids_text(missing)}; "
                              "every candidate needs a row")
    table = table.loc[list(ids), names]
    values = numeric_block(table, f"{source}: covariate", ids=np.asarray(ids))
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise SoilCarbonError(f"{source}: covariate {names[col]!r} is missing for sample {ids[row]} "
                              f"({int(bad.any(axis=1).sum())} sample(s) affected); fill or remove them")
    return values


def select_samples(spectra: Spectra | None, n: int, *, method: str = "kennard-stone", space: str | None = None,
                   covariates: pd.DataFrame | None = None, include=None, library: Spectra | None = None,
                   metric: str | None = None, n_components=None, id_col: str = "sample_id",
                   random_state=0, covariates_source: str = "covariates") -> Selection:
    """Choose ``n`` samples; returns a :class:`Selection` whose ``table`` has ``id_col, rank``.

    - ``space``: ``"pca"`` (default without covariates; :func:`~soilcarbon.lab.selection.pca_space`:
      SNV, PCA explaining 99 % of the variance, at most 20 components), ``"spectra"`` (the
      spectra as given), ``"covariates"`` (default with covariates: every column of the table but
      the id; with spectra too, the spectra's ids are the candidates and each needs a row).
    - ``metric``: ``"mahalanobis"`` (default in the PCA and covariate spaces) or
      ``"euclidean"`` (default for raw spectra, whose covariance is singular).
    - ``include``: ids chosen first, in their order (``n`` counts them).
    - ``library``: spectra of an existing calibration library (Kennard–Stone only): the chosen
      samples cover what the library does not; its spectra are aligned onto the candidates' axis.
    """
    if method not in METHODS:
        raise SoilCarbonError(f"unknown method {method!r}; use {', '.join(METHODS)}")
    if spectra is None and covariates is None:
        raise SoilCarbonError("give spectra, covariates or both")
    space = space or ("covariates" if covariates is not None else "pca")
    if space not in SPACES:
        raise SoilCarbonError(f"unknown space {space!r}; use {', '.join(SPACES)}")
    if space in ("pca", "spectra") and spectra is None:
        raise SoilCarbonError(f"--space {space} needs spectra")
    if space == "covariates" and covariates is None:
        raise SoilCarbonError("--space covariates needs a covariates table")
    if space != "covariates" and covariates is not None:
        raise SoilCarbonError(f"a covariates table is only used with --space covariates (got --space {space}); "
                              "drop one of them")
    if metric is None:
        metric = "euclidean" if space == "spectra" else "mahalanobis"
    if metric not in selection.METRICS:
        raise SoilCarbonError(f"unknown metric {metric!r}; use {' or '.join(selection.METRICS)}")
    if library is not None and method != "kennard-stone":
        raise SoilCarbonError(f"a library can only be spiked with --method kennard-stone, not {method}")
    if library is not None and space == "covariates":
        raise SoilCarbonError("a library is compared by its spectra: use --space pca or spectra with a library")
    if include is not None and len(include) and method not in ("kennard-stone", "clhs"):
        raise SoilCarbonError(f"included samples work with --method kennard-stone or clhs, not {method}")

    if spectra is not None:
        ids = [str(i) for i in spectra.ids]
    else:
        from soilcarbon.spectral.lab import checked_ids

        if id_col not in covariates.columns:
            raise SoilCarbonError(f"{covariates_source}: id column {id_col!r} not found")
        ids = list(checked_ids(covariates, id_col, covariates_source, "covariates", from_file=False))
    source = (spectra.source if spectra is not None else covariates_source) or "the candidates"
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise SoilCarbonError(f"the number of samples to select must be at least 1, got {n}")
    if n > len(ids):
        raise SoilCarbonError(f"{source}: cannot select {n} samples from {len(ids)} candidates; "
                              f"ask for at most {len(ids)}")

    include_rows = np.zeros(0, dtype=np.int64)
    if include is not None and len(include):
        include = [str(i).strip() for i in include]
        position = {sample: row for row, sample in enumerate(ids)}
        unknown = [i for i in include if i not in position]
        if unknown:
            raise SoilCarbonError(f"included sample(s) {ids_text(unknown)} are not among the candidates in {source}")
        repeated = sorted({i for i in include if include.count(i) > 1})
        if repeated:
            raise SoilCarbonError(f"included sample(s) {ids_text(repeated)} are listed more than once")
        if len(include) > n:
            raise SoilCarbonError(f"{len(include)} samples are to be included but only {n} selected; "
                                  f"ask for at least {len(include)}")
        include_rows = np.asarray([position[i] for i in include], dtype=np.int64)

    reference = None
    if library is not None:
        from soilcarbon.spectral.spectra import convert_axis, format_axis_value

        own = convert_axis(library.axis, library.unit, spectra.unit)
        step = float(np.min(np.abs(np.diff(own))))
        if spectra.axis.min() < own.min() - step or spectra.axis.max() > own.max() + step:
            raise SoilCarbonError(
                f"{library.source or 'library'}: the library covers {format_axis_value(own.min())}-"
                f"{format_axis_value(own.max())} {spectra.unit} but the candidates {source} cover "
                f"{format_axis_value(spectra.axis.min())}-{format_axis_value(spectra.axis.max())} {spectra.unit}; "
                "a library must cover the candidates' range to be compared with them")
        library = library.align(spectra.axis, spectra.unit)
    if space == "pca":
        for what in (spectra, library):
            if what is not None:
                flat = np.flatnonzero(what.values.max(axis=1) == what.values.min(axis=1))
                if flat.size:
                    raise SoilCarbonError(f"{what.source or 'spectra'}: flat spectrum (all values equal) in "
                                          f"sample(s) {ids_text(what.ids[flat])}; SNV cannot scale it, remove it")
        if library is not None:
            X, reference = selection.pca_space(spectra.values, n_components, reference=library.values)
        else:
            X = selection.pca_space(spectra.values, n_components)
    elif space == "spectra":
        X = spectra.values
        reference = None if library is None else library.values
    else:
        X = _covariate_matrix(covariates, id_col, ids, covariates_source)

    if method == "kennard-stone":
        rows = selection.kennard_stone(X, n, include=include_rows, reference=reference, metric=metric)
    elif method == "duplex":
        rows = selection.duplex(X, n, metric=metric)
    elif method == "puchwein":
        rows = selection.puchwein(X, n, metric=metric)
    else:
        rows = selection.clhs(X, n, include=include_rows, random_state=random_state)
    table = pd.DataFrame({id_col: np.asarray(ids, dtype=object)[rows], "rank": np.arange(1, len(rows) + 1)})
    return Selection(table, method, space, None if method == "clhs" else metric, len(ids), X.shape[1],
                     0 if library is None else library.n_samples, len(include_rows), X, reference, rows)


def plot_selection(result: Selection, path, title: str | None = None) -> Path:
    """Candidates, library and chosen samples on the first two principal axes of the space."""
    from soilcarbon.spectral.plot import check_plot

    path = Path(path)
    fmt = check_plot(path)
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    from soilcarbon.atomic import atomic_path

    X, R = result.coordinates, result.library_coordinates
    stacked_mean = X.mean(axis=0)
    # the plane of the two largest principal axes of the candidates (scores are already PCs in the pca space)
    centred = X - stacked_mean
    _, _, vt = np.linalg.svd(centred[:: max(1, len(X) // 20000)], full_matrices=False)
    plane = vt[:2].T if vt.shape[0] >= 2 else np.vstack([vt[:1], np.zeros_like(vt[:1])]).T
    shown = centred @ plane
    figure = Figure(figsize=(7, 6), dpi=110)
    axes = figure.add_subplot()
    every = max(1, len(shown) // 20000)
    axes.scatter(shown[::every, 0], shown[::every, 1], s=6, color="0.7", label=f"candidates ({result.n_candidates})")
    if R is not None and len(R):
        lib = (R - stacked_mean) @ plane
        axes.scatter(lib[:, 0], lib[:, 1], s=8, color="tab:blue", alpha=0.6, label=f"library ({len(R)})")
    chosen = shown[result.positions]
    axes.scatter(chosen[:, 0], chosen[:, 1], s=28, color="tab:red", edgecolor="black", linewidth=0.4,
                 label=f"selected ({len(chosen)})")
    for rank, (x, y) in enumerate(chosen[:30], start=1):
        axes.annotate(str(rank), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    what = "principal axis" if result.space == "pca" else f"{result.space}: principal axis"
    axes.set_xlabel(f"{what} 1")
    axes.set_ylabel(f"{what} 2")
    axes.set_title(title or f"{result.method} in the {result.space} space")
    axes.legend(loc="best", fontsize=8)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=fmt)
    return path


def _read_include(path: Path, id_col: str) -> list[str]:
    from soilcarbon.spectral.lab import read_lab

    return [str(i) for i in read_lab(path, id_col)[id_col]]


def select_command(
    spectra: Optional[Path] = typer.Option(None, "--spectra", help="Candidate spectra: CSV/Parquet table, OPUS file or folder."),
    n: int = typer.Option(..., "--n", help="Number of samples to select (included ones counted)."),
    output: Path = typer.Option(..., "--output", help="CSV to write: sample_id, rank (1 = chosen first)."),
    method: str = typer.Option("kennard-stone", "--method", help="kennard-stone | duplex | puchwein | clhs."),
    space: Optional[str] = typer.Option(None, "--space",
                                        help="pca (default) | spectra | covariates (default with --covariates)."),
    covariates: Optional[Path] = typer.Option(None, "--covariates", help="Per-sample covariates table joined by id."),
    include: Optional[Path] = typer.Option(None, "--include", help="CSV of ids that enter the selection first."),
    library: Optional[Path] = typer.Option(None, "--library", help="Spectra of an existing calibration library."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the selection into this .png/.svg/.pdf."),
    metric: Optional[str] = typer.Option(None, "--metric", help="mahalanobis | euclidean (default by space)."),
    components: Optional[float] = typer.Option(None, "--components",
                                               help="PCA components (whole number) or variance share (0-1)."),
    seed: int = typer.Option(0, "--seed", help="Random seed (clhs)."),
    id_col: str = typer.Option("sample_id", "--id-col", help="Id column of tables."),
    unit: Optional[str] = typer.Option(None, "--unit", help="Spectral unit when it cannot be detected."),
):
    """Choose which samples to send to the lab (Kennard-Stone by default).

    Writes SAMPLE_ID,RANK to --output; rank 1 is chosen first, so the first k rows are the
    selection for a budget of k.
    """
    from soilcarbon.atomic import atomic_path
    from soilcarbon.spectral.lab import read_lab
    from soilcarbon.spectral.readers import read_spectra

    if n <= 0:
        raise SoilCarbonError(f"--n must be at least 1, got {n}")
    if spectra is None and covariates is None:
        raise SoilCarbonError("give --spectra, --covariates or both")
    from soilcarbon.atomic import check_output
    from soilcarbon.spectral.plot import check_plot

    check_output(output, ("csv",))
    if plot is not None:
        check_plot(plot)
    n_components = None
    if components is not None:
        n_components = int(components) if float(components).is_integer() and components >= 1 else float(components)
    candidates = read_spectra(spectra, id_col=id_col, unit=unit) if spectra is not None else None
    cov_table = read_lab(covariates, id_col) if covariates is not None else None
    include_ids = _read_include(include, id_col) if include is not None else None
    library_spectra = read_spectra(library, id_col=id_col, unit=unit) if library is not None else None
    result = select_samples(candidates, n, method=method, space=space, covariates=cov_table, include=include_ids,
                            library=library_spectra, metric=metric, n_components=n_components, id_col=id_col,
                            random_state=seed, covariates_source=str(covariates) if covariates else "covariates")
    with atomic_path(output) as tmp:
        result.table.to_csv(tmp, index=False)
    details = f"{result.space} space, {result.n_features} dimension(s)"
    if result.metric:
        details += f", {result.metric} distance"
    typer.echo(f"{result.method}: {len(result.table)} of {result.n_candidates} samples selected ({details})")
    if result.n_included:
        typer.echo(f"included first: {result.n_included}")
    if result.n_library:
        typer.echo(f"library: {result.n_library} spectra count as already measured")
    if plot is not None:
        plot_selection(result, plot)
        typer.echo(f"plot: {plot}")
    typer.echo(f"selection: {output}")


def register(app: typer.Typer) -> None:
    app.command("select")(select_command)
