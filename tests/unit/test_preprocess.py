"""The shared preprocessing (pure parts) and how the artifact records it (no Spark session)."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import models
from testkit import DIGITS_DIR
from pipelines.artifact import FEATURES_ONLY, Preprocessing, artifact_meta, load_metadata, save_artifact
from pipelines.config import PipelineConfig, SourceConfig
from pipelines.dataset import DatasetView, Manifest
from pipelines.preprocess import PreprocessError, decode_image, decode_images

DIGIT = sorted((DIGITS_DIR / "images").glob("*.png"))[0]
IMAGES = Preprocessing("images", (8, 8), 1)


def _png(img: Image.Image) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()


def test_a_greyscale_png_becomes_its_pixels_over_255_row_by_row():
    data = DIGIT.read_bytes()
    pixels = np.asarray(Image.open(DIGIT).convert("L"), dtype=np.float32) / 255.0
    features = decode_image(data, 1, 8, 8)
    assert features.dtype == np.float32 and features.shape == (64,)
    np.testing.assert_array_equal(features, pixels.reshape(-1))


def test_another_size_is_resized_bilinearly_and_rgb_comes_out_channel_first():
    rgb = Image.new("RGB", (16, 12))
    rgb.putpixel((0, 0), (255, 0, 51))
    features = decode_image(_png(rgb), 3, 8, 8)
    expected = np.asarray(rgb.resize((8, 8), Image.BILINEAR), dtype=np.float32) / 255.0
    assert features.shape == (3 * 8 * 8,)
    np.testing.assert_array_equal(features.reshape(3, 8, 8), expected.transpose(2, 0, 1))
    with pytest.raises(PreprocessError, match="unknown resize method 'cubic'"):
        decode_image(_png(rgb), 3, 8, 8, resize="cubic")


def test_a_batch_gives_features_or_a_short_detail_per_file_never_raising():
    data = DIGIT.read_bytes()
    features, details = decode_images([data, data[: len(data) // 2], b"hello, not an image", None], IMAGES)
    assert details == [None, "image file is truncated", "not an image file (Pillow cannot identify its format)",
                       "no image bytes (null)"]
    np.testing.assert_array_equal(features[0], decode_image(data, 1, 8, 8))
    assert features[1:] == [None, None, None]


def test_the_same_bytes_give_bit_identical_features_at_any_batch_position():
    data = [p.read_bytes() for p in sorted((DIGITS_DIR / "images").glob("*.png"))[:5]]
    alone = [decode_images([d], IMAGES)[0][0] for d in data]
    together, _ = decode_images(data, IMAGES)
    for a, b in zip(alone, together):
        assert a.tobytes() == b.tobytes()


def _manifest(source: dict, feature_shape: list[int]) -> Manifest:
    return Manifest.from_dict({
        "format": "dlpipe-dataset/2", "records_in": 1, "accepted": 1, "quarantined": 0, "quarantine_by_reason": {},
        "splits": {}, "feature_shape": feature_shape, "normalization": {"mode": "global", "mean": [0.5], "std": [0.25]},
        "label_names": ["a", "b", "c"], "source": source, "input_files": {"listed": 1, "empty": 0, "empty_examples": []},
        "config_hash": "c", "created_at": "t", "rows_per_row_group": 1, "row_group_rule": "r"})


def test_preprocessing_comes_from_the_manifest_where_it_recorded_the_etl_run():
    source = SourceConfig(kind="images", image_shape=[8, 8], channels=1)
    assert Preprocessing.from_source(source, _manifest({"kind": "images", "path": "/x"}, [3, 28, 28])) == \
        Preprocessing("images", (28, 28), 3)
    assert Preprocessing.from_source(source) == Preprocessing("images", (8, 8), 1)
    recorded = _manifest({"kind": "csv", "path": "/x", "feature_columns": ["b", "a"], "label_column": "y",
                          "id_column": "rid"}, [2])
    tabular = Preprocessing.from_source(SourceConfig(kind="csv"), recorded)
    assert tabular == Preprocessing("csv", feature_columns=("b", "a"), label_column="y", id_column="rid")
    assert tabular.is_tabular and Preprocessing.from_dict(tabular.to_dict()) == tabular


def test_the_artifact_carries_its_preprocessing_and_an_old_artifact_scores_features_only(tmp_path):
    model = models.build("mlp", feature_shape=(1, 8, 8), num_classes=3)
    manifest = _manifest({"kind": "images", "path": "/data"}, [1, 8, 8])
    path = str(tmp_path / "model.pt")
    save_artifact(path, model, artifact_meta(model, DatasetView("", 1, manifest, {}, "hash"), PipelineConfig()))
    meta = load_metadata(path)
    assert torch.load(path, weights_only=True)["preprocessing"] == {
        "kind": "images", "image_shape": [8, 8], "channels": 1, "resize": "bilinear", "max_pixels": 25_000_000,
        "feature_columns": [], "label_column": "", "id_column": ""}
    assert meta.preprocessing == IMAGES and meta.manifest_hash == "hash" and meta.label_names == ["a", "b", "c"]
    old = torch.load(path, weights_only=True)
    del old["preprocessing"]
    torch.save(old, path)
    assert load_metadata(path).preprocessing.kind == FEATURES_ONLY


def test_an_image_above_the_pixel_limit_is_refused_per_record_before_it_is_decoded():
    """A 30-megapixel PNG of a few KB (above the 25 MP default) is one quarantined record with its
    reason; the image beside it decodes; the limit is the config key's."""
    import io

    from PIL import Image

    from pipelines.artifact import Preprocessing
    from pipelines.preprocess import decode_images

    buffer = io.BytesIO()
    Image.new("L", (6000, 5000)).save(buffer, format="PNG")
    bomb = buffer.getvalue()
    assert len(bomb) < 200_000
    small = _png(Image.new("L", (8, 8)))
    prep = Preprocessing("images", (8, 8), 1)
    features, details = decode_images([bomb, small], prep)
    assert features[0] is None and features[1] is not None and details[1] is None
    assert details[0] == ("image of 6000x5000 = 30000000 pixels is above etl.source.max_pixels=25000000: refused "
                          "unread (raise the limit if such images are real data)")
    _, details = decode_images([small], Preprocessing("images", (8, 8), 1, max_pixels=63))
    assert details[0].startswith("image of 8x8 = 64 pixels is above etl.source.max_pixels=63")
