"""Drift gates: has a dataset version, or a scoring input, moved away from the data before it?

A :class:`Summary` is a small, mergeable picture of a set of records: per *block* of features (one
feature of a table, or a patch of pixels of an image, averaged) a histogram over fixed bin edges,
and the rows per label name. The edges are chosen once, from a sample (:func:`choose_edges`), so
summaries of different files and versions share them and :func:`merge` adds them exactly:

    names, blocks = feature_blocks(784, [1, 28, 28])
    edges = choose_edges(block_values(sample, blocks))
    summary = merge(summarize_table(batch, label_names, names, blocks, edges) for batch in batches)

:func:`compare` turns two summaries into a :class:`DriftReport` (the population stability index
per block, the label shares before and after); :func:`gate` says which thresholds it breaks.
"""
from __future__ import annotations

import io
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from pipelines.formats import Record

MODERATE_PSI = 0.1  # the usual reading of PSI: below 0.1 stable, 0.1-0.25 moderate, above 0.25 large
LARGE_PSI = 0.25
CHART_BLOCKS = 20  # bars in the chart: the most drifted blocks
LISTED = 5  # features a gate message names before "and N more"


# --- the summary ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Summary(Record):
    """Histograms of feature blocks and label counts of some records; summaries with one layout
    (names, blocks, edges) merge by adding. Bin ``i`` of a block holds the values ``v`` with
    ``i`` edges ``<= v``: ``(-inf, e0), [e0, e1), ..., [e_last, inf)``."""

    names: list[str]  # one per block
    blocks: list[list[int]]  # per block, the feature indices averaged into it
    edges: list[list[float]]  # per block, the inner bin edges, ascending
    counts: list[list[int]]  # per block, rows per bin (len(edges) + 1 bins)
    labels: dict[str, int] = field(default_factory=dict)  # rows per label name; unlabelled rows not counted
    rows: int = 0

    @property
    def empty(self) -> bool:
        return self.rows == 0


def feature_blocks(num_features: int, feature_shape: list[int], feature_names: list[str] | None = None,
                   max_blocks: int = 16) -> tuple[list[str], list[list[int]]]:
    """Names and feature indices of the blocks a :class:`Summary` histograms: each feature alone
    when there are at most ``max_blocks``; else, for images (``feature_shape`` ``[C, H, W]``), a
    grid of about ``sqrt(max_blocks / C)`` row ranges by as many column ranges per channel; else
    ``max_blocks`` contiguous index ranges. Every feature is in exactly one block."""
    if feature_names is not None and len(feature_names) != num_features:
        raise ValueError(f"feature_blocks: {len(feature_names)} feature names for {num_features} features")
    if num_features <= max_blocks:
        return ([feature_names[i] if feature_names else f"feature {i}" for i in range(num_features)],
                [[i] for i in range(num_features)])
    if len(feature_shape) == 3 and math.prod(feature_shape) == num_features:
        channels, height, width = feature_shape
        return _image_blocks(channels, height, width, max_blocks)
    ranges = np.array_split(np.arange(num_features), max_blocks)
    return [f"features {r[0]}-{r[-1]}" for r in ranges], [r.tolist() for r in ranges]


def _image_blocks(channels: int, height: int, width: int, max_blocks: int) -> tuple[list[str], list[list[int]]]:
    """A grid of contiguous row and column ranges per channel, indices in C, H, W order."""
    side = max(1, math.isqrt(max(1, max_blocks // channels)))
    row_ranges = np.array_split(np.arange(height), min(side, height))
    col_ranges = np.array_split(np.arange(width), min(side, width))
    names, blocks = [], []
    for c in range(channels):
        prefix = f"c{c} " if channels > 1 else ""
        for rows in row_ranges:
            for cols in col_ranges:
                names.append(f"{prefix}rows {rows[0]}-{rows[-1]} cols {cols[0]}-{cols[-1]}")
                blocks.append((c * height * width + rows[:, None] * width + cols[None, :]).ravel().tolist())
    return names, blocks


def block_values(features: NDArray[np.float32], blocks: list[list[int]]) -> NDArray[np.float64]:
    """``(n, B)``: the mean of each block's features per row (NaN where a feature of it is NaN)."""
    out = np.empty((len(features), len(blocks)), dtype=np.float64)
    if len(features) == 0:
        return out
    for j, block in enumerate(blocks):
        # one block at a time: a NaN spoils only its own block, which a matrix product would not keep
        out[:, j] = features[:, block].mean(axis=1, dtype=np.float64)
    return out


def choose_edges(values: NDArray[np.float64], bins: int = 10) -> list[list[float]]:
    """Per column of a sample of block values, the inner edges of ``bins`` equal-count bins, with
    duplicates removed (a constant column gets one edge at its value); non-finite values ignored,
    a column with none finite gets no edge (one bin)."""
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges = []
    for column in values.T:
        finite = column[np.isfinite(column)]
        edges.append(np.unique(np.quantile(finite, quantiles)).tolist() if len(finite) and len(quantiles) else [])
    return edges


def summarize(features: NDArray[np.float32], labels: list[str | None] | None, names: list[str],
              blocks: list[list[int]], edges: list[list[float]]) -> Summary:
    """The :class:`Summary` of ``features`` ``(n, F)`` over the blocks' ``edges``, with the rows
    per label name (``None`` labels, or ``labels=None``, are not counted). A row whose block value
    is not finite is left out of that block's histogram."""
    counts = Counter(label for label in labels or [] if label is not None)
    return _summary(features, dict(sorted(counts.items())), names, blocks, edges)


def summarize_table(table: pa.Table | pa.RecordBatch, label_names: list[str], names: list[str],
                    blocks: list[list[int]], edges: list[list[float]], features_column: str = "features",
                    label_column: str | None = "label") -> Summary:
    """:func:`summarize` of a table in the dataset format (``features`` list<float32> of one length,
    ``label`` int64 indexing ``label_names``; a null or out-of-range label is not counted), vectorized
    for Spark's ``mapInArrow`` tasks."""
    features = _features(_column(table, features_column), max((max(b) for b in blocks if b), default=-1) + 1)
    labels: dict[str, int] = {}
    if label_column is not None:
        index = pc.fill_null(_column(table, label_column), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        known = index[(index >= 0) & (index < len(label_names))]
        for i, count in enumerate(np.bincount(known, minlength=len(label_names)).tolist()):
            if count:
                labels[label_names[i]] = labels.get(label_names[i], 0) + count
    return _summary(features, dict(sorted(labels.items())), names, blocks, edges)


def _column(table: pa.Table | pa.RecordBatch, name: str) -> pa.Array:
    if name not in table.schema.names:
        raise ValueError(f"summarize_table: no column {name!r} (columns: {', '.join(table.schema.names)})")
    column = table.column(name)
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _features(column: pa.Array, width: int) -> NDArray[np.float32]:
    """A list<float32> column as ``(n, F)``; an empty one as ``(0, width)``."""
    if len(column) == 0:
        return np.empty((0, width), dtype=np.float32)
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if column.null_count or (lengths != lengths[0]).any():
        raise ValueError(f"summarize_table: the features are not all one length "
                         f"({column.null_count} null, lengths {int(lengths.min())}..{int(lengths.max())})")
    values: NDArray[np.float32] = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return values.reshape(len(column), int(lengths[0]))


def _summary(features: NDArray[np.float32], labels: dict[str, int], names: list[str], blocks: list[list[int]],
             edges: list[list[float]]) -> Summary:
    if not len(names) == len(blocks) == len(edges):
        raise ValueError(f"summarize: {len(names)} names, {len(blocks)} blocks and {len(edges)} edge lists: "
                         "give one of each per block")
    for name, block_edges in zip(names, edges):
        if any(b < a for a, b in zip(block_edges, block_edges[1:])):
            raise ValueError(f"summarize: the edges of block {name!r} are not ascending: {block_edges}")
    values = block_values(features, blocks)
    counts = []
    for column, block_edges in zip(values.T, edges):
        finite = column[np.isfinite(column)]
        bins = np.searchsorted(np.asarray(block_edges, dtype=np.float64), finite, side="right")
        counts.append(np.bincount(bins, minlength=len(block_edges) + 1).tolist())
    return Summary(list(names), [list(b) for b in blocks], [list(e) for e in edges], counts, labels, len(features))


def merge(summaries: Iterable[Summary]) -> Summary:
    """One :class:`Summary` of all ``summaries``' records: counts, labels and rows added. They must
    share one layout; a placeholder (no rows and no counts) is skipped."""
    given = list(summaries)
    if not given:
        raise ValueError("merge: no summaries to merge")
    real = [s for s in given if s.rows or s.counts]
    if not real:
        return given[0]
    first = real[0]
    for i, other in enumerate(real[1:], start=2):
        difference = _layout_difference(first, other)
        if difference:
            raise ValueError(f"merge: summary {i} has another layout than summary 1: {difference}")
    # block by block: blocks may have different numbers of bins (edges de-duplicated)
    counts = [[sum(bins) for bins in zip(*block)] for block in zip(*(s.counts for s in real))]
    labels: Counter[str] = Counter()
    for s in real:
        labels.update(s.labels)
    return Summary(first.names, first.blocks, first.edges, counts, dict(sorted(labels.items())),
                   sum(s.rows for s in real))


def _layout_difference(a: Summary, b: Summary) -> str | None:
    """The first way ``b``'s layout differs from ``a``'s, as a phrase; None when they are the same."""
    if a.names != b.names:
        return f"names differ ({_first_difference(a.names, b.names)})"
    for what, mine, theirs in (("blocks", a.blocks, b.blocks), ("edges", a.edges, b.edges)):
        for name, x, y in zip(a.names, mine, theirs):
            if x != y:
                return f"{what} of block {name!r} differ ({_shorten(x)} vs {_shorten(y)})"
        if len(mine) != len(theirs):
            return f"{len(mine)} vs {len(theirs)} {what}"
    for name, edges, x, y in zip(a.names, a.edges, a.counts, b.counts):
        if len(x) != len(y) or len(x) != len(edges) + 1:
            return f"counts of block {name!r} have {len(x)} vs {len(y)} bins for {len(edges)} edges"
    return None


def _first_difference(x: list[str], y: list[str]) -> str:
    for i, (p, q) in enumerate(zip(x, y)):
        if p != q:
            return f"block {i}: {p!r} vs {q!r}"
    return f"{len(x)} vs {len(y)} blocks"


def _shorten(values: object) -> str:
    shown = repr(values)
    return shown if len(shown) <= 60 else shown[:57] + "..."


# --- comparing summaries -------------------------------------------------------------------------

def psi(expected: list[int], actual: list[int], floor: float = 1e-4) -> float:
    """The population stability index ``sum((a - e) * ln(a / e))`` of two histograms' shares per
    bin, each share floored at ``floor`` (an empty bin would give infinity); 0 when either side has
    no rows."""
    if len(expected) != len(actual):
        raise ValueError(f"psi: {len(expected)} vs {len(actual)} bins")
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.sum() <= 0 or a.sum() <= 0:
        return 0.0
    e, a = np.maximum(e / e.sum(), floor), np.maximum(a / a.sum(), floor)
    return float(np.sum((a - e) * np.log(a / e)))


@dataclass(frozen=True)
class FeatureDrift(Record):
    name: str
    psi: float


@dataclass(frozen=True)
class DriftReport(Record):
    """How ``current`` records differ from ``reference`` ones (:func:`compare`)."""

    reference_rows: int
    current_rows: int
    features: list[FeatureDrift]  # every block, most drifted first
    label_shares_before: dict[str, float]  # over labelled rows; {} when that side has no labels
    label_shares_after: dict[str, float]
    label_shift: float  # the largest |share after - share before| over the labels of both sides
    missing_labels: list[str]  # labels the reference has and the current lacks
    new_labels: list[str]  # labels the current has and the reference lacks

    @property
    def max_psi(self) -> float:
        return self.features[0].psi if self.features else 0.0

    def most_drifted(self, k: int = 3) -> list[FeatureDrift]:
        """The ``k`` blocks with the largest PSI, largest first."""
        return self.features[:k]

    def describe(self, k: int = 3) -> str:
        """One line: the ``k`` largest PSIs with their blocks, the label shift and missing or new labels."""
        parts = []
        if self.features:
            parts.append("PSI " + ", ".join(f"{f.psi:.2f} ({f.name})" for f in self.most_drifted(k))
                         + (", ..." if len(self.features) > k else ""))
        if self.label_shares_before and self.label_shares_after:
            parts.append(f"label shift {self.label_shift:.2f}")
        if self.missing_labels:
            parts.append(f"missing labels {self.missing_labels}")
        if self.new_labels:
            parts.append(f"new labels {self.new_labels}")
        return "; ".join(parts) or "nothing to compare"


def compare(reference: Summary, current: Summary) -> DriftReport:
    """The drift of ``current`` from ``reference`` (same layout): PSI per block, most drifted first,
    and the label shares over labelled rows. Label shift and missing/new labels need labels on both
    sides (scoring inputs have none)."""
    difference = _layout_difference(reference, current)
    if difference:
        raise ValueError(f"compare: the current summary's layout is not the reference's: {difference}")
    drifts = [FeatureDrift(name, psi(e, a)) for name, e, a in zip(reference.names, reference.counts, current.counts)]
    drifts.sort(key=lambda f: -f.psi)  # stable: ties keep the blocks' order
    before, after = _shares(reference.labels), _shares(current.labels)
    both = bool(before) and bool(after)
    shift = max((abs(after.get(k, 0.0) - before.get(k, 0.0)) for k in before.keys() | after.keys()), default=0.0)
    return DriftReport(reference.rows, current.rows, drifts, before, after, shift if both else 0.0,
                       sorted(before.keys() - after.keys()) if both else [],
                       sorted(after.keys() - before.keys()) if both else [])


def _shares(labels: dict[str, int]) -> dict[str, float]:
    total = sum(labels.values())
    return {k: v / total for k, v in sorted(labels.items())} if total else {}


def gate(report: DriftReport, max_psi: float, max_label_shift: float) -> list[str]:
    """The thresholds ``report`` breaks, one sentence each naming the setting and what is above it
    (``drift.max_psi``, ``drift.max_label_shift``; a threshold of 0 is off); [] when none."""
    problems = []
    over = [f for f in report.features if f.psi > max_psi] if max_psi > 0 else []
    if over:
        listed = ", ".join(f"{f.name} ({f.psi:.2f})" for f in over[:LISTED])
        more = f" and {len(over) - LISTED} more" if len(over) > LISTED else ""
        problems.append(f"PSI above drift.max_psi={max_psi:g} in {len(over)} feature(s): {listed}{more}")
    if max_label_shift > 0 and report.label_shift > max_label_shift:
        before, after = report.label_shares_before, report.label_shares_after
        label = max(sorted(before.keys() | after.keys()), key=lambda k: abs(after.get(k, 0.0) - before.get(k, 0.0)))
        detail = f"label {label!r} share {before.get(label, 0.0):.2f} -> {after.get(label, 0.0):.2f}"
        if report.missing_labels:
            detail += f"; missing labels {report.missing_labels}"
        if report.new_labels:
            detail += f"; new labels {report.new_labels}"
        problems.append(f"label shift {report.label_shift:.2f} above drift.max_label_shift={max_label_shift:g} "
                        f"({detail})")
    return problems


def drift_chart(report: DriftReport, title: str) -> bytes:
    """A PNG: PSI per block (the :data:`CHART_BLOCKS` most drifted) against the usual 0.1 and 0.25
    thresholds, and beside it the label shares before and after when both sides have labels."""
    # A bare Figure renders with Agg and touches no pyplot state. Not pipelines.report's pyplot():
    # report imports artifact, which imports this module (the manifest and artifact hold Summaries).
    from matplotlib.figure import Figure

    labelled = bool(report.label_shares_before and report.label_shares_after)
    fig = Figure(figsize=(11 if labelled else 6.5, 4.5))
    axes = fig.subplots(1, 2 if labelled else 1, squeeze=False)
    _psi_panel(axes[0][0], report, title)
    if labelled:
        _label_panel(axes[0][1], report)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    return buffer.getvalue()


def _psi_panel(ax: Any, report: DriftReport, title: str) -> None:
    """Horizontal bars, the most drifted block at the top, coloured by the threshold they pass."""
    shown = report.most_drifted(CHART_BLOCKS)[::-1]
    colors = ["tab:red" if f.psi > LARGE_PSI else "tab:orange" if f.psi > MODERATE_PSI else "tab:blue" for f in shown]
    ax.barh([f.name for f in shown], [f.psi for f in shown], color=colors)
    ax.axvline(MODERATE_PSI, color="tab:orange", linestyle="--", label=f"moderate ({MODERATE_PSI})")
    ax.axvline(LARGE_PSI, color="tab:red", linestyle="--", label=f"large ({LARGE_PSI})")
    ax.set_xlabel("PSI")
    ax.set_title(title)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=8)


def _label_panel(ax: Any, report: DriftReport) -> None:
    """Grouped bars: each label's share before and after."""
    labels = sorted(report.label_shares_before.keys() | report.label_shares_after.keys())
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [report.label_shares_before.get(k, 0.0) for k in labels], 0.4, label="before")
    ax.bar(x + 0.2, [report.label_shares_after.get(k, 0.0) for k in labels], 0.4, label="after")
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of labelled rows")
    ax.set_title(f"labels (shift {report.label_shift:.2f})")
    ax.legend(fontsize=8)
