"""infer.* config keys: raw sources, kept columns, the model of a named run (checked at load time)."""
from __future__ import annotations

import pytest

from testkit import REPO_ROOT
from pipelines.config import ConfigError, load_config


def test_a_raw_source_and_kept_columns_load():
    config = load_config(None, ["infer.source.kind=images", "infer.source.path=new_images",
                                "infer.keep_columns=[path]", "infer.model_run=train-2026-W48"])
    assert (config.infer.source.kind, config.infer.source.path) == ("images", "new_images")
    assert config.infer.keep_columns == ["path"] and config.infer.model_run == "train-2026-W48"
    assert load_config(None, []).infer.keep_columns == ["*"]


@pytest.mark.parametrize("overrides, message", [
    (["infer.source.kind=png", "infer.source.path=x"],
     "config key 'infer.source.kind' = 'png' must be empty or one of images, csv, json, parquet"),
    (["infer.source.kind=images"], "config key 'infer.source.path' is empty but infer.source.kind='images'"),
    (["infer.source.path=x"], "config key 'infer.source.path' = 'x' needs infer.source.kind"),
    (["infer.source.kind=csv", "infer.source.path=x", "infer.source.labels_csv=l.csv"],
     "config key 'infer.source.labels_csv' = 'l.csv' is for infer.source.kind=images"),
    (["infer.input=p", "infer.source.kind=csv", "infer.source.path=x"],
     "config keys 'infer.input' = 'p' and 'infer.source.kind' = 'csv' both name an input: set one of them"),
    (["infer.artifact=m.pt", "infer.model_run=r1"],
     "config keys 'infer.artifact' = 'm.pt' and 'infer.model_run' = 'r1' both name a model"),
    (["infer.keep_columns=[a, a]"], "config key 'infer.keep_columns' = ['a', 'a'] lists a column twice"),
    (["infer.keep_columns=['*', a]"], "must not mix '*' with column names"),
    (["infer.model_run=../x"], "config key 'infer.model_run' = '../x' must be a folder name"),
])
def test_bad_infer_settings_are_named(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_the_bundled_daily_scoring_config_scores_a_folder_of_images_with_a_named_runs_model():
    config = load_config(REPO_ROOT / "pipelines" / "configs" / "digits_score_daily.yaml",
                         ["infer.model_run=train-2026-W48", "infer.source.path=incoming/2026-11-30"])
    assert config.infer.source.kind == "images" and config.infer.model_run == "train-2026-W48"
