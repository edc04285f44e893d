"""Helpers shared by test modules (import as ``from testkit import ...``; ``tests/`` is on the path).

Kept out of ``conftest.py`` because several folders have a conftest and only one can be
imported under that name.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.choices import resolve_loader

REPO_ROOT = Path(__file__).resolve().parent.parent
DIGITS_DIR = REPO_ROOT / "data" / "digits"
# Tests of Petastorm itself (and of the arrow loader against it): skipped on a line whose pyarrow
# Petastorm cannot run on (README "Spark lines": the current line), where train.loader=auto is arrow.
needs_petastorm = pytest.mark.skipif(resolve_loader("auto") != "petastorm",
                                     reason="Petastorm cannot run on this line's pyarrow (the current line)")


def make_config(workdir: Path, *overrides: str):
    """A validated config for the bundled digits in ``workdir`` (short defaults for tests)."""
    from pipelines.config import load_config
    from pipelines.tracking import TRACKING_OFF

    return load_config(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml",
                       [f"workdir={workdir}", "master=local[2]", "run_id=test", *TRACKING_OFF, *overrides])


def publish_dataset(dataset_dir: str, splits: dict[str, int], *, feature_shape: tuple[int, ...] = (1, 8, 8),
                    label_names: tuple[str, ...] = ("0", "1"), rows_per_row_group: int = 8, version_folder: str = ""):
    """A small published dataset (version 1) in the real format, written without Spark: ``splits``
    maps split names to row counts; features are ``row index / 100``, labels cycle. Its manifest."""
    import numpy as np
    import pyarrow as pa

    from pipelines import dataset, storage
    from pipelines.dataset import (
        InputFilesSummary, Manifest, Normalization, PartFile, SourceRecord, SplitInfo, VersionEntry,
    )
    from pipelines.etl.parts import PartSpec, write_parts

    folder = version_folder or "v000001-test0000"
    root = storage.join(dataset_dir, folder)
    width = int(np.prod(feature_shape))
    infos = {}
    for name, rows in splits.items():
        values = np.repeat(np.arange(rows, dtype=np.float32)[:, None] / 100, width, axis=1)
        labels = np.arange(rows) % len(label_names)
        table = pa.table({"id": [f"{name}-{i:05d}" for i in range(rows)], "label": pa.array(labels, pa.int64()),
                          "features": pa.array(list(values), pa.list_(pa.float32()))})
        stats = write_parts(table.to_batches(), PartSpec(storage.join(root, name), rows_per_row_group), 0)
        files = [PartFile(f"{name}/{s.file}", s.row_groups) for s in stats]
        per_class = {n: int((labels == i).sum()) for i, n in enumerate(label_names)}
        infos[name] = SplitInfo(rows, per_class, sum(len(f.row_groups) for f in files), files)
    total = sum(splits.values())
    manifest = Manifest(
        records_in=total, accepted=total, quarantined=0, quarantine_by_reason={}, splits=infos,
        feature_shape=list(feature_shape), normalization=Normalization("global", [0.5], [0.25]),
        label_names=list(label_names), source=SourceRecord("images", "/data"),
        input_files=InputFilesSummary(total, 0, []), config_hash="test", created_at="2026-01-01T00:00:00+00:00",
        rows_per_row_group=rows_per_row_group, row_group_rule="test")
    storage.write_text(storage.join(root, dataset.MANIFEST_FILE), manifest.to_json())
    dataset.write_head(dataset_dir, [VersionEntry(1, folder, manifest.created_at)], after=0)
    return manifest


def predictions_frame(spark, location: str):
    """The committed predictions of ``dlpipe infer`` at ``location`` as a Spark frame."""
    from pipelines.publish import committed_files

    files = committed_files(str(location), ".parquet")
    assert files, f"no committed predictions at {location}"
    return spark.read.parquet(*files)


def split_files(workdir, split: str, dataset_name: str = "digits") -> list[str]:
    """The Parquet files of a published dataset's split (its newest version)."""
    from pipelines.dataset import open_dataset

    return open_dataset(str(Path(workdir) / "datasets" / dataset_name)).splits[split].files


def suppressions_without_reason(folders: tuple[str, ...], marker: str, well_formed: str) -> list[str]:
    """``path:line: text`` of every line in ``folders`` holding ``marker`` (``# noqa``, ``# type: ignore``)
    that does not match the regex ``well_formed`` (its code named and its reason given)."""
    import re

    bare = []
    for folder in folders:
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if marker in line and not re.search(well_formed, line):
                    bare.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    return bare


def write_split(folder, layout):
    """Parquet files of the dataset format under ``folder``, ``layout`` = rows of each row group per file;
    row ``x`` has label ``x`` and features ``[x, x / 2, -x]``. Returns the split's ``SplitFiles``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import dataset

    files, row = [], 0
    for number, groups in enumerate(layout):
        location = str(folder / f"part-{number:05d}.parquet")
        with pq.ParquetWriter(location, dataset.RECORD_SCHEMA) as writer:
            for rows in groups:
                labels = np.arange(row, row + rows)
                row += rows
                writer.write_table(pa.table({
                    "id": [f"r{x}" for x in labels], "label": pa.array(labels, pa.int64()),
                    "features": pa.array([[x, x / 2, -x] for x in labels.astype(np.float32)],
                                         pa.list_(pa.float32()))}, schema=dataset.RECORD_SCHEMA))
        files.append(location)
    return dataset.SplitFiles(files, [list(groups) for groups in layout])
