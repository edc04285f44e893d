"""One validation per verb: everything a verb's config needs, checked before any Spark stage.

``validate(config, verb)`` asks the registries what they support (models: ``models.spec``;
strategies: ``pipelines.train.strategies.STRATEGIES``; precisions, devices, source kinds) and
raises one :class:`ConfigError` naming the key at fault. The stages do not check their config
again. What only a rank can know (a GPU without bf16, say) is reported by the rank as a
``ConfigProblem`` (``pipelines.launcher.rank``), which the driver turns into the same one line.

Checks that need the data (a split's row groups against ``train.num_workers``) stay with the data
(``pipelines.train.driver``); the locations a config names are probed by ``dlpipe VERB --check``
(:func:`probe_locations`).
"""
from __future__ import annotations

import os
from collections.abc import Callable

import models
from pipelines import dataset, storage
from pipelines.choices import AUTO_LOADER, PETASTORM_PYARROW_BELOW, resolve_loader
from pipelines.config import PipelineConfig, TrainConfig
from pipelines.device import resolve_device, visible_gpus
from pipelines.errors import ConfigError
from pipelines.launcher.plan import local_slots
from pipelines.train.precision import PRECISIONS
from pipelines.train.resources import check_profile_support
from pipelines.train.strategies import STRATEGIES


def validate(config: PipelineConfig, verb: str, master: str = "") -> None:
    """Raise a :class:`ConfigError` for the first setting ``verb`` cannot run with.

    ``master``: the Spark master the job will run on, when known before Spark starts ("" = unknown;
    local masters let the GPU checks run here, where the tasks will run).
    """
    _environment(config, master)
    checks: dict[str, list[Callable[[PipelineConfig, str], None]]] = {
        "train": [_trainable_model, _strategy, _communication, _placement, _precision, _train_device, _model_shape,
                  _warm_start, _loader],
        "run": [_trainable_model, _strategy, _communication, _placement, _precision, _train_device, _model_shape,
                _warm_start, _loader, _scored_split, _infer_device, _promotion],
        "infer": [_infer_device],
        "rl": [_policy_model],
        "rl-eval": [],
        "etl": [],
        "generate": [],
        "check": [],
    }
    for check in checks.get(verb, []):
        check(config, master)


def _local(master: str) -> bool:
    return master.startswith("local")


def _environment(config: PipelineConfig, master: str) -> None:
    """What the config asks of this machine (YARN needs its conf)."""
    if (config.master or master) == "yarn" and not (os.environ.get("HADOOP_CONF_DIR")
                                                    or os.environ.get("YARN_CONF_DIR")):
        raise ConfigError("config key 'master' = 'yarn' but neither HADOOP_CONF_DIR nor YARN_CONF_DIR is set: "
                          "export the folder holding the cluster's yarn-site.xml, or submit with spark-submit "
                          "--master yarn on a machine set up for the cluster", key="master")


def _trainable_model(config: PipelineConfig, master: str) -> None:
    spec = models.spec(config.model.name)
    if spec.task == models.POLICY:
        raise ConfigError(f"config key 'model.name' = {spec.name!r} is a policy: policies learn from an environment "
                          f"with `dlpipe rl --config pipelines/configs/cartpole_ppo.yaml`, not from a dataset with "
                          f"`dlpipe train`/`run`; pick a classifier, reconstructor or generator here "
                          f"({', '.join(n for n in models.names() if models.spec(n).task != models.POLICY)})",
                          key="model.name")


def _policy_model(config: PipelineConfig, master: str) -> None:
    spec = models.spec(config.model.name)
    if spec.task != models.POLICY:
        policies = [n for n in models.names() if models.spec(n).task == models.POLICY]
        raise ConfigError(f"config key 'model.name' = {spec.name!r} is a {spec.task}, but dlpipe rl trains a policy "
                          f"({', '.join(policies)}), e.g. model.name=mlp_policy", key="model.name")


def _workers(tc: TrainConfig) -> str:
    """``train.num_workers`` as the user gave it: ``4``, or the range ``2..4``."""
    low, high = tc.world_range
    return f"{low}..{high}" if tc.elastic else str(high)


def _strategy(config: PipelineConfig, master: str) -> None:
    tc, spec = config.train, models.spec(config.model.name)
    strategy = STRATEGIES[tc.strategy]
    if spec.multi_phase and not strategy.multi_phase:
        able = [n for n, s in STRATEGIES.items() if s.multi_phase]
        raise ConfigError(f"config key 'train.strategy' = {tc.strategy!r} cannot train model {spec.name!r}: it trains "
                          f"with several optimizers, which {', '.join(able)} support", key="train.strategy")
    if not strategy.data_parallel:
        if tc.world_range[0] != tc.num_workers:
            raise ConfigError(f"config key 'train.num_workers' = '{_workers(tc)}' with train.strategy={tc.strategy}: "
                              "pipeline parallelism needs a fixed stage count (one stage per rank): give "
                              "train.num_workers a single number", key="train.num_workers")
        if not spec.pipeline_parallel:
            raise ConfigError(f"config key 'train.strategy' = {tc.strategy!r}: model {spec.name!r} cannot be cut into "
                              f"pipeline stages; use train.strategy=horovod or ddp", key="train.strategy")
        if tc.batch_size % tc.pipeline.microbatches:
            raise ConfigError(f"config key 'train.pipeline.microbatches' = {tc.pipeline.microbatches} must divide "
                              f"train.batch_size={tc.batch_size} (each micro-batch holds batch_size / microbatches "
                              "rows)",
                              key="train.pipeline.microbatches")


def _communication(config: PipelineConfig, master: str) -> None:
    """The gradient compression and accumulation the strategy and model can do."""
    tc, spec = config.train, models.spec(config.model.name)
    strategy = STRATEGIES[tc.strategy]
    if tc.grad_compression not in strategy.compressions:
        able = [n for n, s in STRATEGIES.items() if tc.grad_compression in s.compressions]
        why = " (Horovod's all-reduce has no bfloat16)" if tc.strategy == "horovod" else ""
        raise ConfigError(f"config key 'train.grad_compression' = {tc.grad_compression!r} is not supported with "
                          f"train.strategy={tc.strategy}{why}: it supports {', '.join(strategy.compressions)}; "
                          f"{', '.join(able)} support {tc.grad_compression}", key="train.grad_compression")
    if tc.grad_accumulation > 1:
        if not strategy.accumulates:
            raise ConfigError(f"config key 'train.grad_accumulation' = {tc.grad_accumulation}: train.strategy="
                              f"{tc.strategy} runs one batch a step (its micro-batches are "
                              "train.pipeline.microbatches);"
                              f" use {', '.join(n for n, s in STRATEGIES.items() if s.accumulates)} to accumulate",
                              key="train.grad_accumulation")
        if spec.multi_phase:
            raise ConfigError(f"config key 'train.grad_accumulation' = {tc.grad_accumulation}: model {spec.name!r} "
                              "steps several optimizers in turn on each batch; train it with train.grad_accumulation=1",
                              key="train.grad_accumulation")
        if tc.elastic:
            raise ConfigError(f"config key 'train.grad_accumulation' = {tc.grad_accumulation} with the elastic "
                              f"train.num_workers={_workers(tc)}: elastic training keeps the global batch constant "
                              "through each rank's batch size, not by accumulating: set train.grad_accumulation=1 or "
                              "give a fixed train.num_workers", key="train.grad_accumulation")


def _loader(config: PipelineConfig, master: str) -> None:
    """train.loader=petastorm where Petastorm cannot run (the current line's pyarrow): say so before Spark."""
    if config.train.loader == "petastorm" and resolve_loader(AUTO_LOADER) != "petastorm":
        raise ConfigError("config key 'train.loader' = 'petastorm': Petastorm cannot run on this stack's pyarrow "
                          f"(it needs pyarrow < {PETASTORM_PYARROW_BELOW}; `dlpipe env` shows the stack): use "
                          "train.loader=arrow or auto (README \"Spark lines\")")


def _placement(config: PipelineConfig, master: str) -> None:
    """Where the ranks run: all at once in the master's task slots (an elastic launch: at least
    train.min_workers of them, up to num_workers as slots allow), with the GPUs they ask for."""
    tc = config.train
    slots = local_slots(master or config.master)
    if slots is not None and tc.world_range[0] > slots:
        if tc.elastic:
            raise ConfigError(f"config key 'train.num_workers' = '{_workers(tc)}': an elastic launch runs at least "
                              f"{tc.min_workers} ranks at once, in one barrier stage, and master="
                              f"{master or config.master} runs {slots} tasks at a time: lower the range's minimum, "
                              f"or raise the cores (local[{tc.min_workers}])", key="train.num_workers")
        raise ConfigError(f"config key 'train.num_workers' = {tc.num_workers}: the ranks run as one barrier stage, "
                          f"all at once, and master={master or config.master} runs {slots} tasks at a time: lower "
                          f"train.num_workers, or raise the cores (local[{tc.num_workers}])",
                          key="train.num_workers")
    if tc.gpus_per_rank:
        if tc.device == "cpu":
            raise ConfigError(f"config key 'train.gpus_per_rank' = {tc.gpus_per_rank} but train.device='cpu': set "
                              "train.device=auto or cuda, or train.gpus_per_rank=0", key="train.gpus_per_rank")
        if _local(master) and not master.startswith("local-cluster"):
            check_profile_support(master, {}, tc.gpus_per_rank)  # refuses local masters, naming the key


def _precision(config: PipelineConfig, master: str) -> None:
    tc, spec = config.train, models.spec(config.model.name)
    strategy = STRATEGIES[tc.strategy]
    if tc.precision not in strategy.precisions:
        raise ConfigError(f"config key 'train.precision' = {tc.precision!r} is not supported with "
                          f"train.strategy={tc.strategy} (it supports {', '.join(strategy.precisions)}): each rank "
                          "holds only part of the gradients, so their fp16 loss scalers could disagree; use bf16, "
                          "which needs no loss scaling", key="train.precision")
    if tc.precision == "fp16" and spec.multi_phase:
        raise ConfigError(f"config key 'train.precision' = 'fp16': model {spec.name!r} trains with several optimizers "
                          "and fp16 scales one loss: use train.precision=bf16 or fp32", key="train.precision")
    if tc.precision == "fp16":
        if tc.device == "cpu":
            raise ConfigError("config key 'train.precision' = 'fp16' needs a GPU but train.device='cpu': use "
                              "train.precision=bf16 (autocast works on CPU) or fp32", key="train.precision")
        if _local(master) and visible_gpus() == 0:
            raise ConfigError(f"config key 'train.precision' = 'fp16' needs a GPU, and the ranks of master={master} "
                              "run on this machine, which has none: use train.precision=bf16 (autocast works on "
                              "CPU) or fp32", key="train.precision")
    assert tc.precision in PRECISIONS  # the config rule lists the same names


def _train_device(config: PipelineConfig, master: str) -> None:
    _device(config.train.device, "train.device", master)


def _infer_device(config: PipelineConfig, master: str) -> None:
    _device(config.infer.device, "infer.device", master)


def _device(requested: str, key: str, master: str) -> None:
    """``<key>=cuda`` with a local master on a machine whose torch sees no GPU: fails now. On a
    cluster only the tasks can tell; each checks when it starts."""
    if requested == "cuda" and _local(master):
        resolve_device(requested, (), visible_gpus(), local_rank=0, key=key)


def _model_shape(config: PipelineConfig, master: str) -> None:
    """The model can be built for the data's feature shape (known before Spark: the published
    dataset's for ``train``, the image source's for ``run``), and cut into the pipeline's stages."""
    shape, classes = _expected_shape(config)
    if shape is None:
        return
    tc = config.train
    try:
        model = models.build(config.model.name, feature_shape=tuple(shape), num_classes=max(classes, 2),
                             **config.model.params)
    except ValueError as e:
        raise ConfigError(f"config key 'model.name' = {config.model.name!r} does not fit the data (feature shape "
                          f"{shape}): {e}", key="model.name") from None
    if not STRATEGIES[tc.strategy].data_parallel:
        try:
            model.pipeline_stages(tc.num_workers)
        except ValueError as e:
            raise ConfigError(f"train.strategy=pipeline with train.num_workers={tc.num_workers}: {e}",
                              key="train.num_workers") from None


def _expected_shape(config: PipelineConfig) -> tuple[list[int] | None, int]:
    """(feature shape, classes) of the data the run will train on, as far as known before Spark
    (classes 0 = not known yet)."""
    source = config.etl.source
    try:
        view = dataset.open_dataset(config.dataset_dir, config.dataset_version)
        classes = len(view.manifest.label_names)
    except (dataset.DatasetError, OSError, ConfigError):
        view, classes = None, 0
    if source.kind == "images" and (view is None or config.etl.mode == "full"):
        return [source.channels, *source.image_shape], len(source.label_names) or (classes if view else 0)
    if view is None:
        return None, 0  # the train stage reads the data, and says so when it is missing
    return view.manifest.feature_shape, classes


def _warm_start(config: PipelineConfig, master: str) -> None:
    """``train.init_from`` names an artifact that fits the model and, where known, the data."""
    from pipelines.artifact import load_metadata
    from pipelines.train.warm import check_fits, warm_start_artifact

    artifact = warm_start_artifact(config)
    if not artifact:
        return
    shape, classes = _expected_shape(config)
    meta = load_metadata(artifact)
    if shape is None:
        shape = list(meta.feature_shape)  # the data is not known yet: the launch checks it
    check_fits(meta, config, shape, classes if classes > 1 else meta.num_classes, "the data")


def _scored_split(config: PipelineConfig, master: str) -> None:
    """The split ``run``'s inference scores must be one the ETL makes."""
    ic = config.infer
    if not ic.input and not ic.source.kind and ic.split not in config.etl.splits:
        raise ConfigError(f"infer.split={ic.split!r} is not one of the splits etl.splits makes "
                          f"({', '.join(config.etl.splits)}): set infer.split to one of them", key="infer.split")


# the evaluation figures promotion can compare, by model task (pipelines.infer.evaluate.Evaluation.figures)
PROMOTION_METRICS = {models.CLASSIFIER: ("accuracy",),
                     models.RECONSTRUCTOR: ("reconstruction_error", "error_vs_baseline")}


def _promotion(config: PipelineConfig, master: str) -> None:
    """A challenger needs an evaluation figure of its model's task to be compared by."""
    pc = config.promotion
    if not pc.alias:
        return
    task = models.spec(config.model.name).task
    allowed = PROMOTION_METRICS.get(task, ())
    if not allowed:
        raise ConfigError(f"promotion.alias={pc.alias}: model {config.model.name} ({task}) has no evaluation to "
                          "compare a champion by; leave promotion.alias empty for it", key="promotion.alias")
    if pc.metric not in allowed:
        raise ConfigError(f"promotion.metric={pc.metric!r} is not an evaluation figure of model "
                          f"{config.model.name} ({task}): use one of {', '.join(allowed)}", key="promotion.metric")


# --- `dlpipe VERB --check`: the locations, probed ------------------------------------------------------

def locations(config: PipelineConfig, verb: str) -> list[tuple[str, str, bool]]:
    """(location, config key, written?) of every place ``verb`` reads or writes."""
    places = [(config.workdir_location, "workdir", True)]
    if verb in ("etl", "run"):
        places.append((storage.normalize(config.etl.source.path), "etl.source.path", False))
    if verb in ("infer", "run", "rl-eval"):
        ic = config.infer
        for value, key, written in ((ic.source.path, "infer.source.path", False), (ic.input, "infer.input", False),
                                    (ic.artifact, "infer.artifact", False), (ic.output, "infer.output", True)):
            if value:
                places.append((storage.normalize(value), key, written))
    if verb == "generate" and config.generate.output:
        places.append((storage.normalize(config.generate.output), "generate.output", True))
    return places


def probe_locations(config: PipelineConfig, verb: str) -> list[str]:
    """List every location ``verb`` uses, and write and delete a marker where it writes; one line
    per location probed, and for each written one how its commits are fenced (or what is lost). Raises
    the first location's problem as a one-line error naming its key."""
    lines = []
    for location, key, written in locations(config, verb):
        storage.check_location(location, key, write=written)
        lines.append(f"{key}: {storage.redact(location)}: {'listed, written and cleaned up' if written else 'listed'}")
        if written:
            lines.append(f"{key}: {storage.fencing(location)}")
    return lines
