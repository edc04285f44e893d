"""Each strategy's step on 2 real processes over Gloo (no Spark) against one process doing the same math."""
from __future__ import annotations

import time
from datetime import timedelta

import pytest
import torch
import torch.multiprocessing as mp

import strategy_workers as w

WORLD = 2


def _run(tmp_path, strategy: str, microbatches: int = 4, precision: str = "fp32", compression: str = "none",
         accumulation: int = 1) -> list[dict]:
    """Both ranks' saved results; the store is ours (as the driver's is in a launch)."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False, timeout=timedelta(seconds=60))
    context = mp.spawn(w.one_step, args=(WORLD, store.port, strategy, microbatches, str(tmp_path), precision,
                                         compression, accumulation), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail(f"{strategy}: the 2 ranks did not finish one step within 120 s")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _assert_every_layer_computed_in(ranks: list[dict], dtype: str) -> None:
    """Every conv/linear layer of the model ran its forward and backward (on some rank: a pipeline
    stage runs only its own) and produced ``dtype`` there, and nothing else."""
    computed: dict[str, set[str]] = {}
    for r in ranks:
        for what, dtypes in r["dtypes"].items():
            computed.setdefault(what, set()).update(dtypes)
    layers = [n for n, m in w.make_model().named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert set(computed) == {f"{layer} {way}" for layer in layers for way in ("forward", "backward")}
    assert all(dtypes == {dtype} for dtypes in computed.values()), computed


def _reference(microbatches: int) -> tuple[float, dict[str, torch.Tensor], int]:
    """One process: the mean of the micro-batch losses (gradient accumulation) and its gradients."""
    model = w.make_model()
    batch = w.make_batch()
    chunks = [{k: v.chunk(microbatches)[i] for k, v in batch.items()} for i in range(microbatches)]
    total = 0.0
    for chunk in chunks:
        loss, _ = model.loss(chunk)
        (loss / microbatches).backward()
        total += loss.item() / microbatches
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return total, grads, sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("schedule_microbatches", [4, 2])
def test_a_pipeline_step_equals_one_process_accumulating_the_same_micro_batches(tmp_path, schedule_microbatches):
    ranks = _run(tmp_path, "pipeline", schedule_microbatches)
    loss, grads, total_params = _reference(schedule_microbatches)
    assert ranks[0]["figures"] == {}  # only the last stage sees the loss
    assert ranks[1]["figures"]["loss"] == pytest.approx(loss, abs=1e-5)
    seen = {**ranks[0]["grads"], **ranks[1]["grads"]}
    assert set(seen) == set(grads) and not set(ranks[0]["grads"]) & set(ranks[1]["grads"])  # each stage its own
    for name, grad in grads.items():
        torch.testing.assert_close(seen[name], grad, rtol=0, atol=1e-5)
    for r in ranks:  # each stage holds about half the parameters
        assert abs(r["held"] / total_params - 0.5) <= 0.15, (r["held"], total_params)
    assert ranks[0]["state_keys"] == sorted(grads)  # checkpoints gather the whole model under its own names
    _assert_every_layer_computed_in(ranks, "torch.float32")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_data_parallel_step_averages_gradients_like_one_process_on_the_whole_batch(tmp_path, strategy):
    ranks = _run(tmp_path, strategy)
    loss, grads, total_params = _reference(1)  # one process, the whole 16-row batch
    assert (ranks[0]["figures"]["loss"] + ranks[1]["figures"]["loss"]) / 2 == pytest.approx(loss, abs=1e-5)
    for r in ranks:
        for name, grad in grads.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=0, atol=1e-5)
        held = r["held"] / total_params
        assert (abs(held - 0.5) <= 0.15) if strategy == "fsdp" else held == 1.0, held
    assert ranks[0]["state_keys"] == sorted(grads)
    _assert_every_layer_computed_in(ranks, "torch.float32")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_an_accumulated_step_averages_its_batches_like_one_process_on_the_whole_batch(tmp_path, strategy):
    ranks = _run(tmp_path, strategy, accumulation=4)  # each rank: 4 batches of 2 rows, one all-reduce
    loss, grads, _ = _reference(1)
    assert (ranks[0]["figures"]["loss"] + ranks[1]["figures"]["loss"]) / 2 == pytest.approx(loss, abs=1e-5)
    for r in ranks:
        for name, grad in grads.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("compression", ["fp16", "bf16"])
def test_a_compressed_all_reduce_stays_close_to_the_exact_average(tmp_path, compression):
    ranks = _run(tmp_path, "ddp", compression=compression)
    _, grads, _ = _reference(1)
    exact = True
    for r in ranks:
        for name, grad in grads.items():
            assert r["grads"][name].dtype == torch.float32  # cast back after the all-reduce
            torch.testing.assert_close(r["grads"][name], grad, rtol=2e-2, atol=1e-4)
            exact = exact and torch.equal(r["grads"][name], grad)
        torch.testing.assert_close(r["grads"], ranks[0]["grads"], rtol=0, atol=0)  # every rank alike
    assert not exact  # the gradients did travel in half precision


def test_a_gan_step_averages_each_optimizers_gradients_once_like_one_process(tmp_path):
    """DDP with a model of two optimizers: the discriminator's gradients, then the generator's, each
    averaged over the ranks exactly once (twice, or the discriminator's hooked into the generator's
    backward, would no longer equal one process on the whole batch)."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False, timeout=timedelta(seconds=60))
    context = mp.spawn(w.gan_one_step, args=(WORLD, store.port, "ddp", str(tmp_path)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for p in context.processes:
                p.kill()
            pytest.fail("ddp: the 2 ranks did not finish one GAN step within 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    figures, grads = w.gan_reference()
    for phase in ("discriminator", "generator"):
        mean = sum(r["figures"][f"{phase}_loss"] for r in ranks) / WORLD
        assert mean == pytest.approx(figures[f"{phase}_loss"], abs=1e-5)
    for r in ranks:
        assert r["optimizers"] == ["discriminator", "generator"]  # checkpoints keep both optimizers
        assert set(r["grads"]) == set(grads)
        for name, grad in grads.items():
            torch.testing.assert_close(r["grads"][name], grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy", ["fsdp", "pipeline"])
def test_a_two_optimizer_model_on_a_strategy_that_has_one_is_refused_before_spark(tmp_path, strategy):
    from testkit import make_config
    from pipelines.errors import ConfigError
    from pipelines.preflight import validate

    config = make_config(tmp_path, "model.name=gan", f"train.strategy={strategy}")
    with pytest.raises(ConfigError, match=rf"'train.strategy' = '{strategy}' cannot train model 'gan': it trains "
                                          rf"with several optimizers, which horovod, ddp support") as err:
        validate(config, "run")
    assert err.value.key == "train.strategy"




@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "pipeline"])
def test_a_bf16_autocast_step_computes_every_layer_in_bf16_and_stays_close_to_fp32(tmp_path, strategy):
    """bf16 told from fp32 by what the layers computed, not by luck: the loss of a fresh model sits
    near ln(10) whatever the logits' rounding (bf16 moved it by 1e-6 relative here, fp32 agrees to
    1e-7), so the dtype each layer's forward and backward produced is what is checked."""
    ranks = _run(tmp_path, strategy, precision="bf16")
    _assert_every_layer_computed_in(ranks, "torch.bfloat16")
    loss, grads, _ = _reference(4 if strategy == "pipeline" else 1)
    figures = [r["figures"] for r in ranks if r["figures"]]
    bf16_loss = sum(f["loss"] for f in figures) / len(figures)
    assert bf16_loss == pytest.approx(loss, rel=2e-2)  # bf16 keeps about 3 significant digits
    seen = {k: v for r in ranks for k, v in r["grads"].items()}
    differences = {}
    for name, grad in grads.items():
        assert seen[name].dtype == torch.float32  # autocast computes in bf16, parameters and gradients stay fp32
        cosine = torch.nn.functional.cosine_similarity(seen[name].flatten(), grad.flatten(), dim=0)
        assert cosine > 0.99, (name, cosine.item())
        differences[name] = ((seen[name] - grad).norm() / grad.norm()).item()
    # bf16's 8-bit mantissa moves the first conv's gradient by about 10% (fp32 strategies: < 1e-5)
    assert max(differences.values()) > 1e-2, differences


def test_torch_distributed_strategies_join_over_nccl_on_a_gpu_and_gloo_on_a_cpu(monkeypatch):
    from pipelines.config import TrainConfig
    from pipelines.launcher.rank import RankContext
    from pipelines.train.strategies import make_strategy, torch_dist

    joined = []
    monkeypatch.setattr(torch_dist, "join_process_group", lambda ctx, backend: joined.append(backend))
    for name in ("ddp", "fsdp", "pipeline"):
        for device in ("cuda:0", "cpu"):
            make_strategy(RankContext(0, 2, 0), TrainConfig(strategy=name), torch.device(device)).start()
    assert joined == ["nccl", "gloo"] * 3


def test_horovod_on_a_gpu_without_nccl_stops_before_joining_and_says_what_to_do():
    from pipelines.config import TrainConfig
    from pipelines.launcher.rank import RankContext
    from pipelines.train.strategies import make_strategy

    strategy = make_strategy(RankContext(0, 1, 0), TrainConfig(), torch.device("cuda:0"))
    with pytest.raises(RuntimeError, match=r"built without NCCL.*make setup.*train.strategy=ddp"):
        strategy.start()  # this machine's Horovod is the CPU/Gloo build
