"""Pipeline configuration: YAML + ``key.sub=value`` overrides, validated once into dataclasses.

Every job (etl, generate, train, infer, run, check, rl, rl-eval) takes the same :class:`PipelineConfig`.
Unknown keys are rejected with close-match suggestions; a value of the wrong type or outside its
rules (declared beside each field with ``setting``, see ``pipelines.config_rules``) names the key,
the value and what is allowed; ``model.params`` are checked against the chosen model's own config
class. All of it happens when the config is loaded, before any Spark session starts.
"""
from __future__ import annotations

import dataclasses
import datetime
import difflib
import hashlib
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipelines import storage
from pipelines.choices import AUTO_LOADER, COMPRESSION_NAMES, LOADER_NAMES, PRECISION_NAMES, STRATEGY_NAMES
from pipelines.config_rules import (
    Rule,
    above,
    at_least,
    check,
    each,
    folder_name,
    one_of,
    rules_markdown,
    setting,
    within,
)
from pipelines.errors import ConfigError as ConfigError  # re-exported: callers catch it as config.ConfigError
from pipelines.formats import Decoding, decode, type_name


def _splits_problem(splits: dict[str, float]) -> str | None:
    if "train" not in splits:
        return "must include 'train' (normalisation is computed on it)"
    for name, fraction in splits.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", name) or name == "quarantine":
            return f"names a split {name!r} that cannot be a folder name; use letters, digits, _ or -"
        if not fraction > 0:
            return f"gives {name!r} the fraction {fraction}: every fraction must be > 0 (drop the split instead)"
    if abs(sum(splits.values()) - 1.0) > 1e-6:
        return f"sums to {sum(splits.values()):g}; the fractions must sum to 1"
    return None


SPLITS_RULE = Rule("split name -> fraction > 0, fractions summing to 1, 'train' included", _splits_problem)
UNIQUE = Rule("no value twice", lambda v: "lists a value twice" if len(set(v)) != len(v) else None)
NONEMPTY = Rule("not empty", lambda v: None if v else "must not be empty")
LOCATION = Rule("a local path, or an s3://, gs://, hdfs://, abfs:// or az:// URI without credentials",
                lambda v: storage.uri_problem(v) if v else None)
MASTER_PATTERN = re.compile(r"|local(\[(\d+|\*)(,\d+)?\])?|local-cluster\[\d+,\d+,\d+\]|yarn|(spark|k8s|mesos)://.+")
MASTER_RULE = Rule("empty, local, local[N], local[*], local-cluster[N,C,M], yarn, spark://..., k8s://...",
                   lambda v: None if MASTER_PATTERN.fullmatch(v) else
                   "is not a Spark master URL (empty = spark-submit's or spark-defaults' master, else local[*])")
# train.num_workers as a range (elastic training): MIN..MAX or MIN:MAX, spaces allowed around the separator
WORKER_RANGE = re.compile(r"\s*(\d+)\s*(?:\.\.|:)\s*(\d+)\s*")
WORKER_FORMS = ("a number N (a fixed N ranks) or a range MIN..MAX or MIN:MAX with 1 <= MIN <= MAX (elastic: each "
                "launch runs as many ranks as Spark has free task slots within it), e.g. train.num_workers=2..8")


@dataclass
class SourceConfig:
    """Where the raw records come from. A new dataset needs a new config, not new code."""

    kind: str = setting("images", one_of("images", "csv", "json", "parquet"))  # images | csv | json | parquet
    # image folder, or tabular file/folder; local (relative: to the current folder, else the repo root) or a URI
    path: str = setting("data/digits", NONEMPTY, LOCATION)
    labels_csv: str = "labels.csv"  # images: CSV (file,label) inside `path`; "" = label from sub-folder name
    image_shape: list[int] = setting([8, 8], each(at_least(1), length=2))  # H, W every image is resized to
    channels: int = setting(1, one_of(1, 3))  # 1 = greyscale, 3 = RGB
    # images: a file larger than this (width x height) is quarantined unread (decompression bombs)
    max_pixels: int = setting(25_000_000, at_least(1))
    # tabular: numeric columns in order, or one array column; [] = all but label/id
    feature_columns: list[str] = field(default_factory=list)
    label_column: str = "label"  # tabular: label column
    id_column: str = ""  # tabular: stable record id; "" = sha1 of the record's content (identical records = duplicates)
    label_names: list[str] = setting([], UNIQUE)  # known labels in class-index order; [] = sorted distinct


@dataclass
class EtlConfig:
    """Validation, split and Parquet layout."""

    source: SourceConfig = field(default_factory=SourceConfig)
    splits: dict[str, float] = setting({"train": 0.7, "val": 0.15, "test": 0.15}, SPLITS_RULE)
    # 0 = sized for streaming: about etl.row_group_mib of features per row group, capped so every
    # rank of train.num_workers gets several row groups of the train split; > 0 = exactly that many rows
    rows_per_row_group: int = setting(0, at_least(0))
    row_group_mib: float = setting(4.0, above(0))  # the byte target of rows_per_row_group=0
    max_quarantine_fraction: float = setting(0.05, within(0, 1))  # above this the job fails and publishes nothing
    # global (one mean/std) | per_feature (mean/std per feature)
    normalization: str = setting("global", one_of("global", "per_feature"))
    output_files: int = setting(4, at_least(1))  # Parquet files per split
    # full: the dataset is remade from every source file (a re-run replaces it, as version 1);
    # append: only files no version holds yet are read, published as the next version (old ones untouched)
    mode: str = setting("full", one_of("full", "append"))
    allow_new_labels: bool = False  # append: a label no earlier version has is added (else an error naming it)


@dataclass
class GenerateConfig:
    """Synthetic deformed digits at scale (``dlpipe generate``)."""

    num_samples: int = setting(100_000, at_least(1))
    image_size: int = setting(8, at_least(1))  # 8 = native digits, 28 = upscaled
    partitions: int = setting(0, at_least(0))  # 0 = one partition per 50k samples
    output: str = setting("", LOCATION)  # "" = <workdir>/generated/digits_<size>px_<n>
    max_rotation_deg: float = setting(12.0, within(0, 180))
    max_shift_px: float = setting(1.0, at_least(0))
    elastic_alpha: float = setting(1.0, at_least(0))  # strength of the elastic distortion, in pixels
    noise_std: float = setting(0.03, at_least(0))  # additive Gaussian noise on [0, 1] pixels


@dataclass
class ModelConfig:
    """Which model from ``models`` and its own config (``models.build(name, **params)``)."""

    name: str = "cnn"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class PipelineParallelConfig:
    """Model parallelism (``train.strategy=pipeline``): one stage of the model per rank."""

    schedule: str = setting("gpipe", one_of("gpipe", "1f1b"))  # order of micro-batch forwards/backwards
    microbatches: int = setting(4, at_least(1))  # a batch is cut into this many; must divide train.batch_size


@dataclass
class TrainConfig:
    """Distributed training in one barrier-mode Spark stage (Horovod by default)."""

    # horovod | ddp | fsdp: data parallel (fsdp also shards parameters, gradients and optimizer
    # state); pipeline: model parallel, the model cut into one stage per rank.
    strategy: str = setting("horovod", one_of(*STRATEGY_NAMES))
    # ranks = barrier tasks. Given as a range MIN..MAX (or MIN:MAX), training is elastic: it sets
    # min_workers = MIN and num_workers = MAX, and each launch runs as many ranks as there are free slots
    num_workers: int = setting(2, at_least(1))
    min_workers: int = setting(0, at_least(0))  # 0 = not elastic (always num_workers ranks); else the fewest
    epochs: int = setting(15, at_least(1))
    batch_size: int = setting(64, at_least(1))  # per rank
    optimizer: str = setting("adam", one_of("adam", "sgd"))  # adam | sgd
    adam_betas: list[float] = setting([0.9, 0.999], each(within(0.0, 0.9999), length=2))  # GANs train with [0.5, 0.999]
    lr: float = setting(1e-3, above(0))  # per-rank base learning rate
    # lr * num_workers * grad_accumulation: the linear scaling rule for the global batch
    scale_lr_by_workers: bool = True
    weight_decay: float = setting(0.0, at_least(0))
    seed: int = 0
    max_attempts: int = setting(1, at_least(1))  # >1: a failed stage is relaunched and resumes from the last checkpoint
    # Also checkpoint every N steps inside an epoch (0 = only at epoch ends): for long epochs; a
    # resumed run skips exactly the steps already trained and ends with the same weights.
    checkpoint_every_steps: int = setting(0, at_least(0))
    start_timeout_s: float = setting(120.0, above(0))  # all tasks must register with the driver within this
    failure_timeout_s: float = setting(120.0, above(0))  # a failed/silent rank ends the stage within this
    reader_workers: int = setting(1, at_least(1))  # Petastorm reader threads per rank (1 keeps the order reproducible)
    # How ranks read the dataset's Parquet: petastorm (its reader) or arrow (pyarrow only, no
    # Petastorm: same shards, same order, same batches); auto: petastorm where it can run (pyarrow
    # < 15: the classic and Spark 4 lines), else arrow (pipelines.choices.resolve_loader)
    loader: str = setting(AUTO_LOADER, one_of(AUTO_LOADER, *LOADER_NAMES))
    gloo_iface: str = ""  # "" = "lo" when all ranks share one host; set the NIC name on a cluster
    horovod_cycle_time_ms: float = setting(1.0, above(0))
    horovod_fusion_threshold_mb: int = setting(32, at_least(0))
    # Communication knobs of the data-parallel strategies (docs/benchmarks.md measures them):
    # gradients all-reduced in half precision (horovod: fp16; ddp: fp16 or bf16), cast back after;
    # N batches of train.batch_size per optimizer step, one all-reduce per N batches (horovod, ddp, fsdp).
    grad_compression: str = setting("none", one_of(*COMPRESSION_NAMES))
    grad_accumulation: int = setting(1, at_least(1))
    ddp_bucket_mb: float = setting(25.0, above(0))  # DDP's gradient bucket size (its bucket_cap_mb)
    # Rank processes keep freed memory for the next step (glibc malloc thresholds, see
    # pipelines.train.rank.RANK_MALLOC) instead of unmapping every step's activations.
    malloc_tuning: bool = True
    # Each rank process (with its loader and Horovod threads) on its own cores, when the host has
    # a core per rank thread (pipelines.launcher.rank.pin_rank); false lets the OS move them.
    pin_ranks: bool = True
    pipeline: PipelineParallelConfig = field(default_factory=PipelineParallelConfig)
    # auto: the GPU Spark gives the rank's task, else a visible GPU (local rank modulo their count),
    # else the CPU; cuda: the same but no GPU is an error; cpu: never a GPU.
    device: str = setting("auto", one_of("auto", "cpu", "cuda"))
    # GPUs each rank's task asks Spark for through the training stage's own resource profile, so ETL
    # and inference tasks hold none (standalone, YARN, Kubernetes; pipelines.train.resources);
    # 0 = the stage asks for nothing of its own (spark.task.resource.gpu.amount, if set, applies)
    gpus_per_rank: int = setting(0, at_least(0))
    # fp32 | bf16 (autocast, GPU or CPU) | fp16 (autocast + loss scaling; GPU, horovod or ddp only)
    precision: str = setting("fp32", one_of(*PRECISION_NAMES))
    # Warm start: a run id (its model/model.pt) or an artifact location whose weights the model starts
    # from (the optimizer starts fresh); "" = random weights from train.seed
    init_from: str = setting("", LOCATION)

    def __post_init__(self) -> None:
        if self.min_workers > self.num_workers:
            raise ConfigError(f"config key 'train.min_workers' = {self.min_workers} exceeds train.num_workers="
                              f"{self.num_workers}, the most ranks a launch runs: lower train.min_workers, or give "
                              f"both as a range (train.num_workers={self.min_workers}..MAX)", key="train.min_workers")

    @property
    def elastic(self) -> bool:
        """A launch may run fewer than num_workers ranks (down to min_workers)."""
        return self.min_workers > 0

    @property
    def world_range(self) -> tuple[int, int]:
        """(fewest, most) ranks a launch runs; both num_workers when not elastic."""
        return (self.min_workers or self.num_workers, self.num_workers)


RAW_KIND_RULE = Rule("empty (score Parquet with a features column), or one of images, csv, json, parquet",
                     lambda v: None if v in ("", "images", "csv", "json", "parquet") else
                     "must be empty or one of images, csv, json, parquet")
KEEP_RULE = Rule("['*'] = every input column but the features; [] = none; or column names, none twice",
                 lambda v: "lists a column twice" if len(set(v)) != len(v) else
                 "must not mix '*' with column names" if "*" in v and len(v) > 1 else
                 "must not hold an empty name" if "" in v else None)


@dataclass
class InferSourceConfig:
    """Raw records to score (``infer.source``), decoded with the model artifact's own preprocessing."""

    kind: str = setting("", RAW_KIND_RULE)  # images | csv | json | parquet; "" = infer.input or the ETL split
    # image folder, or tabular file/folder; local (relative: as given, else under the repo root) or a URI
    path: str = setting("", LOCATION)
    labels_csv: str = ""  # images: CSV (file,label) inside `path`, used for evaluation; "" = unlabelled

    def __post_init__(self) -> None:
        if self.kind and not self.path:
            raise ConfigError(f"config key 'infer.source.path' is empty but infer.source.kind={self.kind!r}: "
                              "set infer.source.path to the folder or file of raw records to score")
        if self.path and not self.kind:
            raise ConfigError(f"config key 'infer.source.path' = {self.path!r} needs infer.source.kind "
                              "(images, csv, json or parquet)")
        if self.labels_csv and self.kind != "images":
            raise ConfigError(f"config key 'infer.source.labels_csv' = {self.labels_csv!r} is for "
                              f"infer.source.kind=images; tabular sources take labels from the model's label column")


@dataclass
class InferConfig:
    """Batch inference with a vectorized Spark UDF."""

    # which ETL split to score when `input` and `source` are empty (any split of the dataset)
    split: str = setting("test", folder_name())
    # any Parquet with a `features` column; "" = infer.source, else the ETL split above
    input: str = setting("", LOCATION)
    source: InferSourceConfig = field(default_factory=InferSourceConfig)  # raw records (images, CSV, JSON, Parquet)
    artifact: str = setting("", LOCATION)  # model artifact file; "" = the model of infer.model_run
    model_run: str = setting("", folder_name(allow_empty=True))  # run whose model scores; "" = this run
    # score with the model an alias names (<workdir>/models/<alias>, moved by promotion); "" = not by alias
    model_alias: str = setting("", folder_name(allow_empty=True))
    output: str = setting("", LOCATION)  # "" = <run dir>/predictions
    keep_columns: list[str] = setting(["*"], KEEP_RULE)  # input columns copied to the predictions
    batch_size: int = setting(512, at_least(1))  # rows per forward pass; also the Arrow batch size
    # auto: the task's Spark GPU, else a visible GPU, else CPU
    device: str = setting("auto", one_of("auto", "cpu", "cuda"))
    gpu_batch_size: int = setting(4096, at_least(1))  # rows per forward pass on a GPU (up to an Arrow batch's rows)

    def __post_init__(self) -> None:
        if self.input and self.source.kind:
            raise ConfigError(f"config keys 'infer.input' = {self.input!r} and 'infer.source.kind' = "
                              f"{self.source.kind!r} both name an input: set one of them")
        named = {k: v for k, v in (("infer.artifact", self.artifact), ("infer.model_run", self.model_run),
                                   ("infer.model_alias", self.model_alias)) if v}
        if len(named) > 1:
            raise ConfigError("config keys " + " and ".join(f"{k!r} = {v!r}" for k, v in named.items())
                              + (" both" if len(named) == 2 else " all") + " name a model: set one of them")


@dataclass
class DriftConfig:
    """Drift gates (``pipelines.drift``): an append's new version against the earlier ones, a scoring
    input against the model's training data. Drift is always measured and reported; the gates are off
    at 0."""

    max_psi: float = setting(0.0, at_least(0))  # 0 = off; a feature (block) whose PSI is above this has drifted
    max_label_shift: float = setting(0.0, within(0, 1))  # 0 = off; the largest change of one label's share
    # what a gate above its threshold does: warn = say so and go on; stop = fail before training or publishing
    action: str = setting("warn", one_of("warn", "stop"))
    bins: int = setting(10, at_least(2))  # histogram bins per feature (quantiles of the first version)
    max_blocks: int = setting(16, at_least(1))  # wider records are summarized as this many feature blocks


@dataclass
class PromotionConfig:
    """Champion/challenger promotion (``pipelines.promotion``): a training becomes the model an alias
    names only if it beats the alias's current model on the same evaluation records."""

    alias: str = setting("", folder_name(allow_empty=True))  # "" = off; e.g. current (<workdir>/models/current)
    metric: str = setting("accuracy", NONEMPTY)  # an eval figure: accuracy, reconstruction_error, ...
    margin: float = setting(0.0, at_least(0))  # the challenger must beat the champion by at least this


@dataclass
class QualityConfig:
    """Sample quality of generative models (gan, vae) in ``dlpipe run``: ``pipelines.infer.quality``."""

    samples: int = setting(1000, at_least(10))  # generated images compared with the scored split
    # run whose cnn gives the feature space; "" = one trained on the train split (cached in <workdir>/quality)
    classifier_run: str = setting("", folder_name(allow_empty=True))
    classifier_epochs: int = setting(15, at_least(1))  # epochs of that classifier when dlpipe trains it


@dataclass
class TrackingConfig:
    """Experiment tracking of ``run`` / ``train`` jobs (``pipelines.tracking``), from the driver."""

    mlflow: bool = True  # one MLflow run per run id (a re-run continues it)
    # "" = a file store in <workdir>/mlruns (no server); or http(s)://server, sqlite:///file.db, databricks
    uri: str = ""
    experiment: str = setting("dlpipe", NONEMPTY)  # MLflow experiment (created when missing)
    tensorboard: bool = True  # TensorBoard event files in <run dir>/tb
    # per request to the tracking server; a failure turns tracking off, never the run
    timeout_s: float = setting(10.0, above(0))
    flush_timeout_s: float = setting(60.0, at_least(0))  # at the end of a job, the longest wait for queued records


@dataclass
class RLConfig:
    """Reinforcement learning (``dlpipe rl``): PPO whose rollouts Spark tasks collect in parallel.

    The policy is ``model.name`` (a policy model, e.g. ``mlp_policy``); each iteration collects
    num_actors * envs_per_actor * steps_per_env environment steps, then updates the policy in the driver.
    """

    env_id: str = setting("CartPole-v1", NONEMPTY)  # Gymnasium id: Box (vector) observations, Discrete actions
    num_actors: int = setting(2, at_least(1))  # Spark tasks stepping environments each iteration
    envs_per_actor: int = setting(8, at_least(1))  # environments each task steps side by side
    steps_per_env: int = setting(512, at_least(1))  # steps per environment per iteration (partial episodes bootstrap)
    iterations: int = setting(25, at_least(1))  # collect + update rounds
    # with num_actors, fixes the whole run (env resets, actions, initial weights, minibatches)
    seed: int = setting(0, at_least(0))
    lr: float = setting(1e-3, above(0))  # Adam learning rate
    anneal_lr: bool = True  # decay lr linearly to lr / iterations by the last iteration
    gamma: float = setting(0.99, within(0, 1))  # discount
    gae_lambda: float = setting(0.95, within(0, 1))  # GAE bias/variance trade-off
    update_epochs: int = setting(4, at_least(1))  # passes over each collected batch
    minibatches: int = setting(16, at_least(1))  # minibatches per pass
    max_grad_norm: float = setting(0.5, above(0))  # gradient-norm clip
    normalize_advantages: bool = True  # per minibatch
    eval_episodes: int = setting(100, at_least(1))  # greedy episodes of the final policy (summary.json)
    save_trajectories: bool = False  # write the evaluation episodes as Parquet the ETL reads (behaviour cloning)
    rollout_timeout_s: float = setting(300.0, above(0))  # one iteration's Spark job must finish within this

    def __post_init__(self) -> None:
        batch = self.num_actors * self.envs_per_actor * self.steps_per_env
        if self.minibatches > batch:
            raise ConfigError(f"config key 'rl.minibatches' = {self.minibatches} exceeds the {batch} steps an "
                              "iteration collects (num_actors * envs_per_actor * steps_per_env)")


@dataclass
class StorageConfig:
    """Where data and runs live beyond local disk (``pipelines.storage``). Credentials are never
    set here: each store's standard chain provides them (AWS env/profiles/roles, GCS application
    default credentials, Hadoop config + Kerberos)."""

    s3_endpoint: str = ""  # "" = $AWS_ENDPOINT_URL, else AWS; e.g. http://minio:9000 for an S3-compatible store
    s3_region: str = ""  # "" = $AWS_DEFAULT_REGION / $AWS_REGION
    azure_account: str = ""  # storage account of az://container/path URIs (abfs:// URIs name theirs)
    # How raw sources are read: spark = Spark's own readers (needs a Hadoop connector for remote
    # schemes); python = listed and read through pipelines.storage inside Spark tasks; auto = Spark's
    # readers where Hadoop has a filesystem for the scheme, else python.
    reader: str = setting("auto", one_of("auto", "spark", "python"))


@dataclass
class LeaseConfig:
    """One live job per run id (and per dataset): ``pipelines.lease``."""

    ttl_s: float = setting(60.0, above(5))  # a killed job's lease expires this long after its last renewal
    # 0 = a job that finds the lease held stops at once; > 0 = waits up to this
    wait_s: float = setting(0.0, at_least(0))


@dataclass
class PipelineConfig:
    """The whole pipeline's configuration."""

    # datasets, runs: a folder (relative: to the current folder) or s3://, gs://, hdfs://, abfs:// URI
    workdir: str = setting("work", NONEMPTY, LOCATION)
    dataset: str = setting("digits", folder_name())  # name of the ETL output folder under <workdir>/datasets
    dataset_version: int = setting(0, at_least(0))  # train/infer on versions 1..N of the dataset; 0 = the newest
    # "" = a timestamp; reuse an id to resume or re-run idempotently
    run_id: str = setting("", folder_name(allow_empty=True))
    master: str = setting("", MASTER_RULE)  # "" = spark-submit's / spark-defaults' master, else local[*]
    spark: dict[str, str] = field(default_factory=dict)  # extra Spark settings for dlpipe's own session
    etl: EtlConfig = field(default_factory=EtlConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    promotion: PromotionConfig = field(default_factory=PromotionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    lease: LeaseConfig = field(default_factory=LeaseConfig)

    @property
    def workdir_location(self) -> str:
        """``workdir`` as an absolute local path or a URI."""
        return storage.normalize(self.workdir)

    @property
    def dataset_dir(self) -> str:
        return storage.join(self.workdir_location, "datasets", self.dataset)

    def run_dir(self, run_id: str = "") -> str:
        """The folder of run ``run_id`` (default: this config's run)."""
        run_id = run_id or self.run_id
        if not run_id:
            raise ConfigError("run_id is empty: set run_id (the CLI uses a timestamp when --run-id is not given)",
                              key="run_id")
        return storage.join(self.workdir_location, "runs", run_id)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def digest(self) -> str:
        """Stable short hash of the resolved config (recorded in manifests and checkpoints)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# --- loading and validation -------------------------------------------------------------------

def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Read a YAML file (optional), apply ``key.sub=value`` overrides, and validate."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        loaded = yaml.load(p.read_text(), Loader=_YamlLoader) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at the top level")
        raw = loaded
    for item in overrides or []:
        _apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> PipelineConfig:
    """Validate a plain dict (e.g. a saved ``config.yaml``) into a :class:`PipelineConfig`."""
    config: PipelineConfig = decode(PipelineConfig, _worker_range(raw), "", _ConfigDecoding())
    check_no_credentials(config.to_dict())
    check_model(config.model)
    check_spark_settings(config.spark)
    return config


def _worker_range(raw: dict[str, Any]) -> dict[str, Any]:
    """``train.num_workers: MIN..MAX`` (or ``MIN:MAX``) as the two settings it stands for:
    ``train.min_workers`` = MIN and ``train.num_workers`` = MAX. A number is left to the decoder."""
    train = raw.get("train")
    if not isinstance(train, dict) or not isinstance(train.get("num_workers"), str):
        return raw
    text: str = train["num_workers"]
    found = WORKER_RANGE.fullmatch(text)
    low, high = (int(found[1]), int(found[2])) if found else (0, 0)
    if not 1 <= low <= high:
        raise ConfigError(f"config key 'train.num_workers' = {text!r} is not a number of ranks or a range of them: "
                          f"give {WORKER_FORMS}", key="train.num_workers")
    if train.get("min_workers", 0) not in (0, low):  # 0: not set, or a saved config's "not elastic"
        raise ConfigError(f"config key 'train.min_workers' = {train['min_workers']!r} contradicts the range "
                          f"train.num_workers={text!r}, which sets the minimum to {low}: drop train.min_workers",
                          key="train.min_workers")
    return {**raw, "train": {**train, "min_workers": low, "num_workers": high}}


def _credential_fix(key: str) -> str:
    if key.startswith("tracking."):
        return ("remove it and set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                "in the environment instead")
    if key.startswith("spark."):
        return ("put it in the cluster's spark-defaults.conf or the store's own credential chain (environment, "
                "instance role, credentials file)")
    return ("remove it and let the store's credential chain provide it (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
            "or a profile or instance role; GCS application default credentials; AZURE_STORAGE_* variables; Kerberos)")


def check_no_credentials(settings: dict[str, Any], prefix: str = "") -> None:
    """One rule for every setting, wherever it sits (``tracking.uri``, ``storage.s3_endpoint``, a
    Spark setting's value, ``model.params``): a value holding a URL with credentials (``user:pw@``, a
    signed or token query) is refused naming its key and the safer way; the value is never repeated,
    because a config is printed by ``--check`` and saved with every run (config.yaml, MLflow)."""
    for name, value in settings.items():
        key = f"{prefix}{name}"
        values = value if isinstance(value, list) else [value]
        if isinstance(value, dict):
            check_no_credentials(value, prefix=f"{key}.")
        elif any(isinstance(v, str) and storage.holds_credentials(v) for v in values):
            raise ConfigError(f"config key '{key}' holds a credential in a URL (shown nowhere): "
                              f"{_credential_fix(key)}", key=key)


# Spark settings that carry a credential: a config is saved with every run (config.yaml, MLflow
# params), so secrets stay in the stores' own chains or in spark-defaults.conf, never in it.
# Names as Spark settings spell them (`.key`, `keyPassword`) and as environment variables do
# (`spark.executorEnv.AWS_SESSION_TOKEN`, `..._CONNECTION_STRING`, Kubernetes' `oauthToken`).
_SECRET_SPARK_KEY = re.compile(r"secret|password|passwd|connection_?string|oauthtoken$|[._](key|token)$|_(key|token)_|"
                               r"\.account\.key\.|\.sas\.", re.IGNORECASE)


def check_spark_settings(settings: dict[str, str]) -> None:
    """The ``spark`` section holds no credential (see _SECRET_SPARK_KEY)."""
    for key in settings:
        if _SECRET_SPARK_KEY.search(key):
            raise ConfigError(f"config key 'spark.{key}' looks like a credential, and a dlpipe config is saved with "
                              "every run (config.yaml, MLflow): put it in spark-defaults.conf or the store's own "
                              "credential chain (environment, instance role, credentials file) instead",
                              key=f"spark.{key}")


def check_model(model: ModelConfig) -> None:
    """``model.name`` is a known model and ``model.params`` fit its own config class."""
    import models  # torch only; the model configs are the model code's own dataclasses

    if model.name not in models.names():
        close = difflib.get_close_matches(model.name, models.names(), n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ConfigError(f"config key 'model.name' = {model.name!r} is not a dlpipe model{hint} "
                          f"(models: {', '.join(models.names())})")
    try:
        decode(models.config_class(model.name), model.params, "model.params", _ConfigDecoding())
    except (ValueError, TypeError) as e:
        if isinstance(e, ConfigError):
            raise ConfigError(f"{e} (model {model.name!r})") from None
        raise ConfigError(f"model.params for model {model.name!r}: {e}") from None


def rules_table() -> str:
    """Every config key with its default and what is allowed, as markdown (docs/config.md shows it)."""
    import models

    return rules_markdown(PipelineConfig, extra={
        "model.name": "one of " + ", ".join(models.names()),
        "model.params": "the fields of the chosen model's config class (`models/<name>.py`), checked by type and range",
        "train.num_workers": "or a range `MIN..MAX` / `MIN:MAX` (elastic; sets `train.min_workers` = MIN, this = MAX)",
        "train.min_workers": "0 = not elastic (always `train.num_workers` ranks); at most `train.num_workers`",
        "spark": "Spark settings for dlpipe's own session (`spark.executor.memory: 4g`); none that carries a "
                 "credential (a key naming a secret, token, password or key)",
    }) + ("\n\nEvery key: a value holding a URL with credentials (`user:password@`, a token or signature "
          "query parameter) is refused naming the key, wherever it sits (`tracking.uri`, `storage.s3_endpoint`, "
          "a Spark setting's value, `model.params`).\n")


def to_yaml(config: PipelineConfig) -> str:
    text: str = yaml.safe_dump(config.to_dict(), sort_keys=False)  # no stream given: the YAML as a str
    return text


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} is not of the form key.sub=value")
    node = raw
    parts = key.strip().split(".")
    if parts[0] == "spark" and len(parts) > 1:  # Spark keys have dots of their own
        parts = ["spark", ".".join(parts[1:])]
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node = child
    # YAML parses the value, so 3 -> int, 0.5 -> float, [8, 8] -> list, true -> bool; a range
    # (1..4, 2:8, 2 : 8) stays text, which YAML would make a mapping when spaced.
    node[parts[-1]] = (text.strip() if WORKER_RANGE.fullmatch(text) else
                       yaml.load(text, Loader=_YamlLoader) if text.strip() else "")


class _YamlLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s YAML but for YAML 1.1's base-60 ints: ``2:8`` stays text (a range of
    ``train.num_workers``) instead of becoming 128. No dlpipe setting is written in base 60."""


def _int_unless_base60(loader: Any, node: Any) -> int | str:
    text = str(loader.construct_scalar(node))
    return text if ":" in text else int(loader.construct_yaml_int(node))


_YamlLoader.add_constructor("tag:yaml.org,2002:int", _int_unless_base60)


class _ConfigDecoding(Decoding):
    """The config's policy in dlpipe's one type-hint decoder (``pipelines.formats.decode``): a
    ConfigError naming the dotted key, an unknown key with its close matches, the keys in the order
    the YAML gives them, YAML's scalars taken as strings, and each setting's rules checked once read."""

    error = ConfigError
    keys_in_given_order = True

    def given(self, tp: Any, value: Any, key: str) -> Any:
        """YAML's reading of ``value`` made what ``tp`` asks for, where it is unambiguous."""
        origin = typing.get_origin(tp)
        if tp is str and isinstance(value, (int, float, datetime.date)) and not isinstance(value, bool):
            return str(value)  # YAML read `run_id=2026-11-26` as a date and `dataset=7` as a number
        exact = dict if dataclasses.is_dataclass(tp) else list if origin is list else None
        if exact is not None and not isinstance(value, exact):  # what YAML gives: a section is a mapping
            raise ConfigError(self.wrong(tp, value, key))
        if origin is dict and isinstance(value, dict):
            if typing.get_args(tp)[1] is str:  # Spark settings: accept numbers and booleans, Spark wants strings
                return {str(k): (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in value.items()}
            return {str(k): v for k, v in value.items()}
        return value

    def check(self, field: dataclasses.Field[Any], value: Any, key: str) -> None:
        """The setting's rules (``pipelines.config_rules``)."""
        problem = check(field, value, key)
        if problem:
            raise ConfigError(problem, key=key)

    def wrong(self, tp: Any, value: Any, key: str) -> str:
        """``config key 'train.lr' expects a number, got 'fast'``."""
        origin = typing.get_origin(tp)
        if dataclasses.is_dataclass(tp):
            return f"{key or 'config'} must be a mapping, got {value!r}"
        what = ("a number" if tp is float else "a mapping" if origin is dict else
                f"a list of {type_name(typing.get_args(tp)[0])}" if origin in (list, tuple) else type_name(tp))
        return f"config key {key!r} expects {what}, got {value!r}"

    def unknown(self, cls: type, names: list[str], unknown: list[str], key: str) -> str:
        """``unknown config key 'train.epoch'; did you mean train.epochs? (valid keys here: ...)``."""
        prefix = f"{key}." if key else ""
        close = difflib.get_close_matches(str(unknown[0]), names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""
        return f"unknown config key '{prefix}{unknown[0]}'{hint} (valid keys here: {', '.join(sorted(names))})"
