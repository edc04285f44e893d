"""Raw values -> features: the one preprocessing the ETL and inference share.

The model artifact records how its training data was made (:class:`pipelines.artifact.Preprocessing`);
the functions here apply it, and both ``pipelines.etl.sources`` and ``pipelines.infer`` call them, so
the same raw record gives bit-identical features at training and at serving time (no skew).

    images   decode_image / decode_images (Pillow; pure), image_decoder (the pandas UDF around them)
    tabular  tabular_features: Spark expressions casting the feature columns, in order, to float32,
             with a detail for each kind of bad value
    labels   raw_label: a raw label as the trimmed string the label names hold

Problems are returned as short details (``image file is truncated``), never raised, so every
record stays a record: the ETL quarantines it, inference gives it a null prediction and an error.
"""
from __future__ import annotations

import io
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines.artifact import Preprocessing

if TYPE_CHECKING:
    from pyspark.sql._typing import UserDefinedFunctionLike  # pyspark's stub-only module

CORRUPT = "_corrupt_record"  # Spark's column for CSV / JSON records it cannot parse
INVALID_TEXT = "_invalid_text"  # pipelines.raw's column: why a CSV / JSON record's bytes were not valid UTF-8
MAX_DETAIL = 300


class PreprocessError(ValueError):
    """The input cannot be preprocessed as recorded (e.g. a feature column of the wrong type)."""


# --- images -----------------------------------------------------------------------------------

def decode_image(data: bytes, channels: int, height: int, width: int, resize: str = "bilinear",
                 max_pixels: int = 25_000_000) -> NDArray[np.float32]:
    """One image file's bytes -> float32 C,H,W values in [0, 1], flattened.

    Greyscale (``channels=1``) or RGB (3), resized to ``height`` x ``width`` with Pillow's ``resize``
    filter. Raises whatever Pillow raises for bytes it cannot read, and ``ValueError`` for an image
    of more than ``max_pixels`` pixels, checked from its header before any pixel is decoded (a small
    file can decode to gigabytes; Pillow only warns below 179 megapixels).
    """
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    with Image.open(io.BytesIO(data)) as file:
        w, h = file.size
        if w * h > max_pixels:
            raise ValueError(f"image of {w}x{h} = {w * h} pixels is above etl.source.max_pixels={max_pixels}: refused "
                             "unread (raise the limit if such images are real data)")
        file.draft(mode, (width, height))  # JPEG: decode at reduced size
        img = file.convert(mode)
        if img.size != (width, height):
            img = img.resize((width, height), _resample(resize))
        pixels = np.asarray(img, dtype=np.float32) / 255.0
    if channels == 1:
        return pixels.reshape(-1)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)).reshape(-1)  # H,W,C -> C,H,W


def _resample(name: str) -> int:
    from PIL import Image

    filters = {"bilinear": Image.Resampling.BILINEAR, "nearest": Image.Resampling.NEAREST,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
    if name not in filters:
        raise PreprocessError(f"unknown resize method {name!r} (known: {', '.join(filters)})")
    return filters[name]


def decode_images(contents: Iterable[bytes | None],
                  prep: Preprocessing) -> tuple[list[NDArray[np.float32] | None], list[str | None]]:
    """Decode a batch of image files as ``prep`` says: (features or None, detail or None) per file."""
    height, width = prep.image_shape
    features: list[NDArray[np.float32] | None] = []
    details: list[str | None] = []
    for data in contents:
        try:
            if data is None:
                raise ValueError("no image bytes (null)")
            features.append(decode_image(data, prep.channels, height, width, prep.resize, prep.max_pixels))
            details.append(None)
        except Exception as e:  # noqa: BLE001 - any failure to decode is this record's problem, not the job's
            features.append(None)
            details.append(image_problem(e))
    return features, details


def image_problem(e: Exception) -> str:
    """A short detail for a decoding failure: Pillow's message without object addresses."""
    from PIL import UnidentifiedImageError

    if isinstance(e, UnidentifiedImageError):
        return "not an image file (Pillow cannot identify its format)"
    text = str(e) or type(e).__name__
    return text[:MAX_DETAIL]


def image_decoder(prep: Preprocessing) -> UserDefinedFunctionLike:
    """A vectorized (pandas) UDF: image bytes -> struct<features array<float>, error string>.

    ``error`` is the short detail of :func:`decode_images` (null when the image decoded).
    """

    # pyspark 3.5's stub types only pandas_udf's functionType form, not this type-hint form (Spark >= 3.0)
    @F.pandas_udf("features array<float>, error string")  # type: ignore[call-overload]  # no type-hint overload
    def decode(content: pd.Series) -> pd.DataFrame:
        features, details = decode_images(content, prep)
        return pd.DataFrame({"features": features, "error": details})

    decoder: UserDefinedFunctionLike = decode  # what pandas_udf made of it (untyped, see the ignore above)
    return decoder


# --- tabular ----------------------------------------------------------------------------------

_NUMERIC = (T.ByteType, T.ShortType, T.IntegerType, T.LongType, T.FloatType, T.DoubleType, T.DecimalType)


def tabular_features(table: DataFrame, kind: str, columns: list[str], key: str,
                     array_value_checks: bool = True) -> dict[str, Column]:
    """Expressions over ``table`` (as ``pipelines.raw.load_table`` reads it) making the features.

    ``columns``: numeric (or numeric-text) columns in order, or one array column. Returns
    ``features`` (array<float>) and three details, each null when it does not apply:
    ``decode_detail`` (a value is not a number; a malformed JSON line), ``null_detail`` (a value is
    missing; a CSV row with another number of fields than the header), ``nonfinite_detail`` (NaN or
    +-inf after the cast to float32). ``key`` names the setting the columns came from, for errors.

    ``array_value_checks=False``: for one array column, leave out the element checks (null
    elements, NaN/inf: costly per-element expressions) for a caller that makes them on the values
    itself (the ETL's writer, vectorized: ``pipelines.etl.write.check_feature_values``).
    """
    fields = {f.name: f.dataType for f in table.schema.fields}
    missing = [c for c in columns if c not in fields]
    if missing or not columns:
        raise PreprocessError(f"{key}: no such column(s) {missing} among {list(fields)}" if missing
                              else f"{key}: no feature columns")
    first = fields[columns[0]]
    if len(columns) == 1 and isinstance(first, T.ArrayType):
        feats = _array_features(columns[0], first, key, array_value_checks)
    else:
        feats = _scalar_features(columns, fields, key)
    corrupt = F.col(CORRUPT) if CORRUPT in fields else F.lit(None).cast("string")
    snippet = F.substring(corrupt, 1, 200)
    if INVALID_TEXT in fields:  # bytes that are not text: whatever they parsed into, the record is not trusted
        feats["decode_detail"] = F.when(F.col(INVALID_TEXT).isNotNull(), F.col(INVALID_TEXT)
                                        ).otherwise(feats["decode_detail"])
    if kind == "json":  # an unparsable line
        feats["decode_detail"] = F.when(corrupt.isNotNull(), F.concat(F.lit("malformed JSON line: "), snippet)
                                        ).otherwise(feats["decode_detail"])
    else:  # CSV: more or fewer fields than the header
        feats["null_detail"] = F.when(corrupt.isNotNull(), F.concat(
            F.lit("row has a different number of fields than the header: "), snippet)).otherwise(feats["null_detail"])
    return feats


def _scalar_features(cols: list[str], fields: dict[str, T.DataType], key: str) -> dict[str, Column]:
    """One numeric (or numeric-text) column per feature."""
    values, bad, missing, nonfinite = [], [], [], []
    for c in cols:
        col, dtype = F.col(c), fields[c]
        if isinstance(dtype, T.StringType):
            text = F.trim(col)
            is_missing = col.isNull() | (text == "")
            number = text.cast("double")
            bad.append(F.when(~is_missing & number.isNull(),
                              F.concat(F.lit(f"column '{c}' value '"), col, F.lit("' is not a number"))))
        elif isinstance(dtype, _NUMERIC):
            is_missing, number = col.isNull(), col.cast("double")
        else:
            raise PreprocessError(f"{key}: column '{c}' has type {dtype.simpleString()}, not numbers")
        value = number.cast("float")  # beyond float32 range -> inf -> nan_or_inf
        values.append(value)
        missing.append(F.when(is_missing, F.lit(c)))
        nonfinite.append(F.when(F.isnan(value) | (F.abs(value) == float("inf")),
                                F.concat(F.lit(f"{c}="), value.cast("string"))))
    return {
        "features": F.array(*values),
        "decode_detail": _nonempty(F.concat_ws("; ", *bad)) if bad else F.lit(None).cast("string"),
        "null_detail": _prefixed("missing value in column(s): ", F.concat_ws(", ", *missing)),
        "nonfinite_detail": _prefixed("not finite: ", F.concat_ws(", ", *nonfinite)),
    }


def _array_features(c: str, dtype: T.ArrayType, key: str, value_checks: bool = True) -> dict[str, Column]:
    """One array column holding the whole feature vector (what pipelines.etl.generate writes)."""
    col = F.col(c)
    if isinstance(dtype.elementType, _NUMERIC):
        values, decode_detail = col.cast("array<float>"), F.lit(None).cast("string")
    elif isinstance(dtype.elementType, T.StringType):  # e.g. JSON arrays mixing numbers and text
        values = F.transform(col, lambda x: F.trim(x).cast("float"))
        not_number = F.exists(col, lambda x: x.isNotNull() & (F.trim(x) != "") & F.trim(x).cast("double").isNull())
        decode_detail = F.when(not_number, F.lit(f"column '{c}' holds a value that is not a number"))
    else:
        raise PreprocessError(f"{key}: column '{c}' is an array of {dtype.elementType.simpleString()}, not numbers")
    null_detail = F.when(col.isNull(), F.lit(f"column '{c}' is null"))
    nonfinite = F.lit(None).cast("string")
    if value_checks:
        null_detail = null_detail.when(contains_null(values), F.lit(null_elements_detail(c)))
        nonfinite = nonfinite_detail(values)
    return {"features": values, "decode_detail": decode_detail, "null_detail": null_detail,
            "nonfinite_detail": nonfinite}


def null_elements_detail(column: str) -> str:
    """The ``wrong_shape`` detail of a feature array holding a null element."""
    return f"column '{column}' has missing (null) elements"


def contains_null(values: Column) -> Column:
    """True when the float array has a null element.

    ``exists(x -> x is null)`` is an interpreted lambda (slow on wide vectors); ``arrays_overlap``
    with [NaN] is compiled and returns null exactly when the array holds a null and no NaN (Spark
    treats NaN = NaN as true). Only rows holding a NaN pay for the lambda.
    """
    overlap = F.arrays_overlap(values, F.array(F.lit(float("nan")).cast("float")))
    return F.when(overlap.isNull(), True).when(overlap, F.exists(values, lambda x: x.isNull())).otherwise(False)


# ``nan_or_inf`` details of a feature array, in the order they are checked.
NONFINITE_DETAILS = ("features contain NaN", "features contain +inf", "features contain -inf")


def nonfinite_detail(values: Column) -> Column:
    """Non-null when a float array holds NaN or +-inf (array_max sorts NaN above everything)."""
    top, bottom = F.array_max(values), F.array_min(values)
    nan, pos_inf, neg_inf = NONFINITE_DETAILS
    return (
        F.when(F.isnan(top), F.lit(nan))
        .when(top == float("inf"), F.lit(pos_inf))
        .when(bottom == float("-inf"), F.lit(neg_inf))
    )


def raw_label(col: Column, dtype: T.DataType) -> Column:
    """A raw label as a trimmed string; whole floats (3.0) read as integers ("3"); NaN/"" -> null."""
    if isinstance(dtype, (T.FloatType, T.DoubleType)):
        return F.when(F.isnan(col), None).when(col == F.floor(col), col.cast("bigint").cast("string")).otherwise(
            col.cast("string"))
    text = F.trim(col.cast("string"))
    return F.when(text != "", text)


def _nonempty(text: Column) -> Column:
    return F.when(text != "", text)


def _prefixed(prefix: str, text: Column) -> Column:
    return F.when(text != "", F.concat(F.lit(prefix), text))
