"""Drift summaries and gates: block layouts, exact histograms, merging, PSI and the reports (no Spark)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines import drift


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _images(rng, n=2000):
    """(n, 64) float32 8x8 "images": darker on the left, brighter on the right."""
    ramp = np.tile(np.linspace(0.1, 0.6, 8), 8)
    return np.clip(ramp + rng.normal(0, 0.1, (n, 64)), 0, 1).astype(np.float32)


def _layout(features, shape, bins=10):
    names, blocks = drift.feature_blocks(features.shape[1], shape)
    return names, blocks, drift.choose_edges(drift.block_values(features, blocks), bins)


# --- blocks -------------------------------------------------------------------------------------

def test_a_1x8x8_image_is_split_into_16_blocks_of_4_pixels_covering_each_pixel_once():
    names, blocks = drift.feature_blocks(64, [1, 8, 8], max_blocks=16)
    assert len(blocks) == 16 and all(len(b) == 4 for b in blocks)
    assert sorted(i for b in blocks for i in b) == list(range(64))
    assert names[0] == "rows 0-1 cols 0-1" and blocks[0] == [0, 1, 8, 9]
    assert names[1] == "rows 0-1 cols 2-3" and blocks[1] == [2, 3, 10, 11]
    assert names[-1] == "rows 6-7 cols 6-7" and blocks[-1] == [54, 55, 62, 63]


def test_a_colour_image_gets_a_grid_per_channel_named_by_channel():
    names, blocks = drift.feature_blocks(3 * 8 * 8, [3, 8, 8], max_blocks=16)
    assert len(blocks) == 12  # 2 x 2 per channel: sqrt(16 / 3) is about 2
    assert sorted(i for b in blocks for i in b) == list(range(192))
    assert names[4] == "c1 rows 0-3 cols 0-3" and blocks[4][:5] == [64, 65, 66, 67, 72]
    assert names[-1] == "c2 rows 4-7 cols 4-7"


def test_a_small_table_gets_one_named_block_per_feature():
    assert drift.feature_blocks(4, [4], ["age", "height", "weight", "score"]) == (
        ["age", "height", "weight", "score"], [[0], [1], [2], [3]])
    assert drift.feature_blocks(2, [2]) == (["feature 0", "feature 1"], [[0], [1]])
    with pytest.raises(ValueError, match="3 feature names for 4 features"):
        drift.feature_blocks(4, [4], ["a", "b", "c"])


def test_a_wide_table_gets_contiguous_ranges():
    names, blocks = drift.feature_blocks(40, [40], max_blocks=4)
    assert names == ["features 0-9", "features 10-19", "features 20-29", "features 30-39"]
    assert blocks[1] == list(range(10, 20))


# --- values, edges, histograms ------------------------------------------------------------------

def test_block_values_are_the_mean_of_each_blocks_features():
    features = np.arange(12, dtype=np.float32).reshape(2, 6)
    values = drift.block_values(features, [[0, 1], [2, 3, 4], [5]])
    assert values.dtype == np.float64
    np.testing.assert_array_equal(values, [[0.5, 3.0, 5.0], [6.5, 9.0, 11.0]])
    assert drift.block_values(features[:0], [[0], [1]]).shape == (0, 2)


def test_edges_are_quantiles_without_duplicates_and_ignore_nan():
    column = np.arange(1.0, 101.0)
    values = np.stack([column, np.full(100, 3.0), np.where(column > 50, np.nan, column)], axis=1)
    spread, constant, half = drift.choose_edges(values, bins=4)
    assert spread == pytest.approx([25.75, 50.5, 75.25])
    assert constant == [3.0]
    assert half == pytest.approx([13.25, 25.5, 37.75])


def test_summarize_counts_each_value_into_its_bin_exactly():
    features = np.array([[0.0], [0.5], [1.0], [1.5], [2.0], [np.nan]], dtype=np.float32)
    summary = drift.summarize(features, ["a", "b", None, "a", "c", "a"], ["x"], [[0]], [[0.5, 1.5]])
    # (-inf, 0.5): 0.0 | [0.5, 1.5): 0.5, 1.0 | [1.5, inf): 1.5, 2.0 | NaN left out
    assert summary.counts == [[1, 2, 2]]
    assert summary.labels == {"a": 3, "b": 1, "c": 1} and summary.rows == 6
    assert not summary.empty and drift.summarize(features[:0], None, ["x"], [[0]], [[0.5]]).empty


def test_summarize_refuses_a_layout_that_does_not_fit():
    features = np.zeros((2, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="2 names, 2 blocks and 1 edge lists"):
        drift.summarize(features, None, ["a", "b"], [[0], [1]], [[0.0]])
    with pytest.raises(ValueError, match="edges of block 'a' are not ascending"):
        drift.summarize(features, None, ["a"], [[0]], [[1.0, 0.0]])


def test_summarize_table_equals_summarize_on_the_same_rows(rng):
    features = _images(rng, 300)
    names, blocks, edges = _layout(features, [1, 8, 8])
    label_names = ["0", "1", "2"]
    index = rng.integers(0, 3, 300)
    labels = pa.array([None if i % 7 == 0 else 9 if i % 11 == 0 else int(v) for i, v in enumerate(index)],
                      pa.int64())
    table = pa.table({"id": [str(i) for i in range(300)], "label": labels,
                      "features": pa.array(list(features), pa.list_(pa.float32()))})
    as_names = [None if v is None or v >= 3 else label_names[v] for v in labels.to_pylist()]
    expected = drift.summarize(features, as_names, names, blocks, edges)
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    assert chunked.column("features").num_chunks == 2
    assert drift.summarize_table(chunked, label_names, names, blocks, edges) == expected
    batch = table.to_batches()[0].slice(50, 100)  # a slice: offsets not at 0
    assert drift.summarize_table(batch, label_names, names, blocks, edges) == drift.summarize(
        features[50:150], as_names[50:150], names, blocks, edges)
    unlabelled = drift.summarize_table(table, label_names, names, blocks, edges, label_column=None)
    assert unlabelled.labels == {} and unlabelled.counts == expected.counts
    assert drift.summarize_table(table.slice(0, 0), label_names, names, blocks, edges).counts == [
        [0] * (len(e) + 1) for e in edges]
    with pytest.raises(ValueError, match="no column 'pixels'"):
        drift.summarize_table(table, label_names, names, blocks, edges, features_column="pixels")


# --- merging ------------------------------------------------------------------------------------

def test_the_merge_of_two_halves_is_the_summary_of_the_whole(rng):
    features = _images(rng, 400)
    labels = [str(v) for v in rng.integers(0, 4, 400)]
    names, blocks, edges = _layout(features, [1, 8, 8])
    halves = [drift.summarize(features[s], labels[s], names, blocks, edges) for s in (slice(0, 150), slice(150, None))]
    placeholder = drift.Summary([], [], [], [])
    assert drift.merge([placeholder, *halves]) == drift.summarize(features, labels, names, blocks, edges)


def test_merge_refuses_summaries_with_other_edges_and_names_them():
    a = drift.summarize(np.zeros((3, 1), np.float32), None, ["x"], [[0]], [[0.5]])
    b = drift.summarize(np.zeros((3, 1), np.float32), None, ["x"], [[0]], [[0.25]])
    with pytest.raises(ValueError, match=r"summary 2 has another layout .* edges of block 'x' differ \(\[0.5\] vs"):
        drift.merge([a, b])
    with pytest.raises(ValueError, match="no summaries"):
        drift.merge([])


# --- PSI and reports ----------------------------------------------------------------------------

def test_psi_is_zero_for_one_distribution_and_large_for_a_shifted_one(rng):
    assert drift.psi([10, 20, 30], [1, 2, 3]) == pytest.approx(0.0)
    assert drift.psi([10, 20, 30], [0, 0, 0]) == 0.0
    edges = np.quantile(rng.normal(0, 1, 5000), np.linspace(0, 1, 11)[1:-1])
    base = np.bincount(np.searchsorted(edges, rng.normal(0, 1, 5000), "right"), minlength=10).tolist()
    shifted = np.bincount(np.searchsorted(edges, rng.normal(1, 1, 5000), "right"), minlength=10).tolist()
    assert drift.psi(base, shifted) > 0.25
    assert drift.psi(base, shifted) == pytest.approx(drift.psi(shifted, base), rel=0.05)
    assert drift.psi([5, 0], [0, 5]) == pytest.approx(2 * (1 - 1e-4) * np.log(1 / 1e-4))  # floored, not inf


def test_inverted_images_drift_far_and_a_fresh_sample_does_not(rng):
    reference = _images(rng)
    names, blocks, edges = _layout(reference, [1, 8, 8])
    summary = drift.summarize(reference, None, names, blocks, edges)
    inverted = drift.compare(summary, drift.summarize(1 - reference, None, names, blocks, edges))
    fresh = drift.compare(summary, drift.summarize(_images(rng), None, names, blocks, edges))
    assert inverted.max_psi > 5 * drift.LARGE_PSI and fresh.max_psi < drift.MODERATE_PSI
    assert len(inverted.features) == 16 and inverted.reference_rows == inverted.current_rows == 2000
    psis = [f.psi for f in inverted.features]
    assert psis == sorted(psis, reverse=True) and inverted.most_drifted(2) == inverted.features[:2]
    assert inverted.label_shift == 0.0 and inverted.label_shares_before == {}


def test_a_missing_class_shows_in_the_label_shift_and_missing_labels():
    features = np.zeros((10, 1), np.float32)
    before = drift.summarize(features, list("0001112223"), ["x"], [[0]], [[0.5]])
    after = drift.summarize(features, list("0001112222"), ["x"], [[0]], [[0.5]])
    report = drift.compare(before, after)
    assert report.missing_labels == ["3"] and report.new_labels == []
    assert report.label_shares_before["3"] == pytest.approx(0.1) and report.label_shares_after == {
        "0": 0.3, "1": 0.3, "2": 0.4}
    assert report.label_shift == pytest.approx(0.1)
    assert report.describe() == "PSI 0.00 (x); label shift 0.10; missing labels ['3']"
    assert drift.gate(report, 0.2, 0.05) == [
        "label shift 0.10 above drift.max_label_shift=0.05 (label '2' share 0.30 -> 0.40; missing labels ['3'])"]
    unlabelled = drift.compare(before, drift.summarize(features, None, ["x"], [[0]], [[0.5]]))
    assert unlabelled.label_shift == 0.0 and unlabelled.missing_labels == [] and unlabelled.label_shares_after == {}


def test_compare_refuses_another_layout():
    a = drift.summarize(np.zeros((3, 1), np.float32), None, ["x"], [[0]], [[0.5]])
    b = drift.summarize(np.zeros((3, 1), np.float32), None, ["y"], [[0]], [[0.5]])
    with pytest.raises(ValueError, match="layout is not the reference's: names differ \\(block 0: 'x' vs 'y'\\)"):
        drift.compare(a, b)


def test_the_gate_names_the_most_drifted_block_first_and_is_off_at_zero(rng):
    reference = _images(rng, 1000)
    names, blocks, edges = _layout(reference, [1, 8, 8])
    current = reference.copy()
    current[:, [0, 1, 8, 9]] = 1.0  # the top-left block saturated
    current[:, [6, 7, 14, 15]] += 0.05  # the top-right block nudged
    report = drift.compare(drift.summarize(reference, None, names, blocks, edges),
                           drift.summarize(current, None, names, blocks, edges))
    assert drift.gate(report, 0, 0) == []
    (problem,) = drift.gate(report, 0.2, 0.1)
    assert problem.startswith("PSI above drift.max_psi=0.2 in 2 feature(s): rows 0-1 cols 0-1 (")
    assert "rows 0-1 cols 6-7 (" in problem
    assert report.features[0].name == "rows 0-1 cols 0-1" and report.describe(1).startswith(
        f"PSI {report.max_psi:.2f} (rows 0-1 cols 0-1), ...")
    assert drift.gate(report, 1e6, 0.1) == []


def test_summary_and_report_round_trip_through_json(rng):
    features = _images(rng, 50)
    names, blocks, edges = _layout(features, [1, 8, 8])
    summary = drift.summarize(features, ["a", "b"] * 25, names, blocks, edges)
    assert drift.Summary.from_json(summary.to_json()) == summary
    report = drift.compare(summary, drift.summarize(1 - features, ["a"] * 50, names, blocks, edges))
    assert drift.DriftReport.from_json(report.to_json()) == report


def test_the_chart_is_a_png(rng):
    features = _images(rng, 200)
    names, blocks, edges = _layout(features, [1, 8, 8])
    report = drift.compare(drift.summarize(features, ["a", "b"] * 100, names, blocks, edges),
                           drift.summarize(1 - features, ["a"] * 200, names, blocks, edges))
    assert drift.drift_chart(report, "digits v2 against v1").startswith(b"\x89PNG")
