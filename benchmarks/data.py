"""The data the benchmarks measure on: generated digits run through dlpipe's own ETL, made once.

A :class:`DataSpec` names a dataset (rows, image size, row-group size, splits); :func:`dataset`
makes it under ``<workdir>/bench/datasets`` (generated input under ``<workdir>/bench/data``) and
reuses it while it matches. :data:`BASE` is the dataset per size that the loader, infer and (at
size tiny) train benchmarks share. :func:`derive` and :func:`build_model` give every benchmark the
same config and model the pipeline itself would use.
"""
from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import bench_dir
from pipelines import dataset as ds_format
from pipelines import storage
from pipelines.config import PipelineConfig, load_config, to_yaml
from pipelines.formats import FormatError
from pipelines.publish import committed_folder

SIZES = ("tiny", "small", "large")


@dataclass(frozen=True)
class DataSpec:
    """A generated-digits dataset, run through dlpipe's ETL."""

    num_samples: int
    image_size: int
    rows_per_row_group: int
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    output_files: int = 2

    @property
    def key(self) -> str:
        return f"digits{self.image_size}_{self.num_samples}_rg{self.rows_per_row_group}"

    def scaled(self, factor: int) -> DataSpec:
        """The same dataset with ``factor`` times the rows (memory's 10x dataset)."""
        return DataSpec(self.num_samples * factor, self.image_size, self.rows_per_row_group, self.splits,
                        self.output_files)

    def with_row_groups(self, rows_per_row_group: int) -> DataSpec:
        """The same rows written with another row-group size (loader's row-group contender)."""
        return DataSpec(self.num_samples, self.image_size, rows_per_row_group, self.splits, self.output_files)


# The base dataset per size, shared by loader, infer and train (tiny), so each is made once.
BASE: dict[str, DataSpec] = {
    "tiny": DataSpec(2048, 8, 256),
    "small": DataSpec(20000, 28, 1024),
    "large": DataSpec(200000, 28, 1024),
}


def derive(config: PipelineConfig, *overrides: str) -> PipelineConfig:
    """``config`` with ``key=value`` overrides applied, validated like the command line's.

    Goes through ``load_config`` (a YAML file of ``config``, then the overrides), the one public
    way to apply overrides, so they parse exactly as ``python -m benchmarks ... key=value`` does.
    """
    with tempfile.TemporaryDirectory(prefix="dlpipe-bench-config-") as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(to_yaml(config))
        return load_config(path, list(overrides))


def generated(spark: Any, config: PipelineConfig, num_samples: int, image_size: int) -> Path:
    """Generated digits (``pipelines.etl.generate``) under ``<workdir>/bench/data``, made once.

    Returns the publication's target: its files are ``pipelines.publish.committed_files(target)``,
    and the ETL's ``etl.source.path`` may name it as is.
    """
    from pipelines.etl import generate

    out = bench_dir(config) / "data" / f"generated{image_size}_{num_samples}"
    folder = committed_folder(str(out))
    info = storage.join(folder, generate.INFO_FILE) if folder else ""
    if info and storage.is_file(info):
        try:
            made = generate.GenerateResult.from_json(storage.read_text(info), info)
        except FormatError:  # written by another dlpipe: made again
            made = None
        if made is not None and made.n == num_samples and made.image_size == image_size:
            return out
    # One partition per core (at most one per block): generating is the slow part at large sizes.
    partitions = max(1, min(os.cpu_count() or 1, math.ceil(num_samples / generate.BLOCK)))
    generate.main(spark, derive(config, f"generate.num_samples={num_samples}", f"generate.image_size={image_size}",
                                f"generate.partitions={partitions}", f"generate.output={out}"))
    return out


def etl_config(config: PipelineConfig, source: Path, spec: DataSpec, name: str) -> PipelineConfig:
    """The ETL config that turns generated Parquet (a tabular source) into dataset ``name``."""
    splits = "{" + ", ".join(f"{k}: {v}" for k, v in spec.splits) + "}"
    return derive(config, f"workdir={bench_dir(config)}", f"dataset={name}", "etl.source.kind=parquet",
                  f"etl.source.path={source.resolve()}", "etl.source.feature_columns=[features]",
                  "etl.source.id_column=id", f"etl.source.image_shape=[{spec.image_size}, {spec.image_size}]",
                  "etl.source.label_names=[]", f"etl.rows_per_row_group={spec.rows_per_row_group}",
                  f"etl.output_files={spec.output_files}", f"etl.splits={splits}")


def dataset(spark: Any, config: PipelineConfig, spec: DataSpec) -> Path:
    """The ETL output of ``spec`` under ``<workdir>/bench/datasets``, made once (reused when it matches).

    Returns the dataset's folder; read it through its view (:func:`view`), never by building paths.
    """
    from pipelines.etl import job as etl

    cfg = etl_config(config, generated(spark, config, spec.num_samples, spec.image_size), spec, spec.key)
    try:
        made = ds_format.open_dataset(cfg.dataset_dir)
    except (ds_format.DatasetError, FormatError):  # none yet, or written by another dlpipe: made again
        made = None
    if made is not None and made.version == 1 and made.manifest.records_in == spec.num_samples \
            and made.manifest.rows_per_row_group == spec.rows_per_row_group:
        return Path(cfg.dataset_dir)
    etl.main(spark, cfg)
    return Path(cfg.dataset_dir)


def view(dataset_dir: Path) -> ds_format.DatasetView:
    """The newest view of a bench dataset (its manifest, and its splits' files in Petastorm's order)."""
    return ds_format.open_dataset(str(dataset_dir))


def on_dataset(config: PipelineConfig, dataset_dir: Path, *overrides: str) -> PipelineConfig:
    """``config`` pointed at a bench dataset (``workdir``/``dataset``), plus ``overrides``."""
    dataset_dir = dataset_dir.resolve()
    return derive(config, f"workdir={dataset_dir.parent.parent}", f"dataset={dataset_dir.name}", *overrides)


def build_model(model_name: str, model_params: dict[str, Any], manifest: dict[str, Any]) -> Any:
    """``model_name`` built for ``manifest``'s dataset exactly as dlpipe's trainer builds it.

    ``manifest``: the manifest as plain data (``Manifest.to_dict()``, what contender processes get).
    Whatever the model is (classifier or not), it gets the dataset's feature shape and label
    count; callers then only use the model contract (``loss``, ``predict``, ``output_schema``).
    """
    import models

    return models.build(model_name, feature_shape=tuple(manifest["feature_shape"]),
                        num_classes=len(manifest["label_names"]), **model_params)
