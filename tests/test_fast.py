"""Fast execution (issue 19, issue 18 item 4): compiled sampling and training equal eager within a stated
tolerance on the tiny preset (inductor's C++ backend on CPU), the multi-tensor EMA is the per-parameter lerp
bit for bit, the step's loss terms are reduced once on the device, and checkpointing/compile are resolved."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch

from rglcd.config import ConfigError
from rglcd.models.student import ema_update
from rglcd.sample import (SamplingModel, ddim_sample, empty_prompt_embedding, from_teacher, lcm_sample,
                          prepare_sampling, resolve_compile_mode)
from rglcd.train.fast import choose_checkpointing, prepare_unets
from rglcd.train.terms import StepTerms

# Compiled vs eager on CPU in float32: same math, other fusion and summation order (stated tolerance).
COMPILED_ATOL = 1e-4
GRAD_REL_TOL = 1e-3   # relative L2 error of the compiled student's gradient vector against eager


# ---------------------------------------------------------------- EMA and loss terms (issue 18 item 4)

def test_multi_tensor_ema_is_the_per_parameter_lerp_bit_for_bit():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5), torch.nn.Linear(5, 3))
    target = copy.deepcopy(student)
    for p in student.parameters():
        p.data.add_(torch.randn_like(p))
    reference = [t.detach().clone().lerp_(s.detach(), 1 - 0.95) for t, s in zip(target.parameters(), student.parameters())]
    ema_update(target, student, 0.95)
    assert all(torch.equal(a, b) for a, b in zip(target.parameters(), reference))
    first = next(target.parameters())
    assert not torch.equal(first, next(student.parameters()))   # moved only part of the way


def test_ema_refuses_models_with_other_parameter_counts():
    with pytest.raises(ValueError, match="target has 2 parameters, the student 4"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)), 0.9)


def _out(loss, lcd, reward_loss, reward):
    t = lambda v: torch.tensor(v)  # noqa: E731
    return SimpleNamespace(loss=t(loss), lcd_loss=t(lcd), reward_loss=t(reward_loss),
                           reward=None if reward is None else t(reward))


def test_step_terms_average_micro_batches_on_the_device_and_read_back_once():
    terms = StepTerms(torch.device("cpu"), micro_batches=2)
    terms.add(_out(3.0, 2.0, 1.0, -1.0))
    terms.add(_out(5.0, 4.0, 1.0, -1.0))
    assert terms.sums.tolist() == [4.0, 3.0, 1.0, -1.0]
    values, norm = terms.reduce(SimpleNamespace(num_processes=1), torch.tensor(0.5))
    assert values == {"loss": 4.0, "lcd_loss": 3.0, "reward_loss": 1.0, "reward": -1.0} and norm == 0.5
    plain = StepTerms(torch.device("cpu"), micro_batches=1)
    plain.add(_out(float("nan"), 1.0, 0.0, None))        # no reward model: reward 0
    values, _ = plain.reduce(SimpleNamespace(num_processes=1), 1.0)
    assert math.isnan(values["loss"]) and values["reward"] == 0.0


def test_step_terms_mean_over_processes_uses_one_reduce():
    calls = []

    class Acc:
        num_processes = 2

        def reduce(self, tensor, reduction):
            calls.append(reduction)
            return (tensor + torch.tensor([2.0, 2.0, 0.0, float("inf")])) / 2   # the other process's terms

    terms = StepTerms(torch.device("cpu"), 1)
    terms.add(_out(4.0, 4.0, 0.0, 1.0))
    values, _ = terms.reduce(Acc(), 0.0)
    assert calls == ["mean"] and values["loss"] == 3.0 and values["reward"] == float("inf")


# ---------------------------------------------------------------- config and resolution

def test_compile_and_checkpointing_fields_are_checked(tiny_cfg):
    cfg = tiny_cfg("train.gradient_checkpointing=auto", "train.compile=true", "eval.compile=default",
                   "lrm.finetune_every=4")
    assert (cfg.train.gradient_checkpointing, cfg.train.compile, cfg.eval.compile, cfg.lrm.finetune_every) == \
        ("auto", True, "default", 4)
    with pytest.raises(ConfigError, match="train.gradient_checkpointing"):
        tiny_cfg("train.gradient_checkpointing=sometimes")
    with pytest.raises(ConfigError, match="eval.compile: 'fastest' is not allowed"):
        tiny_cfg("eval.compile=fastest")
    with pytest.raises(ConfigError, match="lrm.finetune_every"):
        tiny_cfg("lrm.finetune_every=0")


def test_compile_mode_resolution():
    assert resolve_compile_mode("auto", torch.device("cpu")) == "none"
    assert resolve_compile_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert resolve_compile_mode("default", torch.device("cpu")) == "default"
    with pytest.raises(ValueError, match="eval.compile: 'turbo' is not allowed"):
        resolve_compile_mode("turbo", torch.device("cpu"))


def test_checkpointing_auto_on_cpu_and_explicit_settings_are_recorded(tiny_cfg):
    cfg = tiny_cfg("train.gradient_checkpointing=auto")
    cpu = torch.device("cpu")
    assert choose_checkpointing(cfg, None, None, cpu) == {
        "gradient_checkpointing": False, "reason": "auto on CPU: no device memory limit to plan for"}
    cfg.train.gradient_checkpointing = True
    assert choose_checkpointing(cfg, None, None, cpu)["gradient_checkpointing"] is True


@pytest.fixture
def tiny_models(tiny_cfg):
    from rglcd.models import load_teacher
    from rglcd.train.setup import build_student

    cfg = tiny_cfg()
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
    torch.manual_seed(0)
    return cfg, teacher, build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim)


def test_prepare_sampling_none_changes_nothing_and_reuses_the_empty_prompt(tiny_models):
    cfg, teacher, student = tiny_models
    model = from_teacher(teacher)
    assert prepare_sampling(model, "none") is model and model.compile_mode == "none"
    first = empty_prompt_embedding(model, 3)
    assert first.shape[0] == 3 and list(model.embedding_cache) == [""]
    assert empty_prompt_embedding(model, 1).data_ptr() == first.data_ptr()   # encoded once, reused


# ---------------------------------------------------------------- compiled vs eager (slow: inductor compiles)

def _eager_and_compiled(model: SamplingModel) -> tuple[SamplingModel, SamplingModel]:
    twin = SamplingModel(unet=copy.deepcopy(model.unet), vae=copy.deepcopy(model.vae),
                         text_encoder=copy.deepcopy(model.text_encoder), tokenizer=model.tokenizer,
                         scheduler_config=model.scheduler_config)
    return model, prepare_sampling(twin, "default")


@pytest.mark.slow
def test_compiled_samplers_equal_eager_within_tolerance(tiny_models):
    cfg, teacher, student = tiny_models
    prompts = ["a red cube", "a blue sphere"]
    for model, fn, steps in ((from_teacher(teacher, student.eval().requires_grad_(False)), lcm_sample, 2),
                             (from_teacher(teacher), ddim_sample, 3)):
        eager, fast = _eager_and_compiled(model)
        conv = fast.unet.conv_in.weight
        assert fast.compile_mode == "default" and conv.is_contiguous(memory_format=torch.channels_last)
        a, b = (fn(m, prompts, steps, 7.5, torch.Generator().manual_seed(1)) for m in (eager, fast))
        assert a.timesteps == b.timesteps
        torch.testing.assert_close(b.images, a.images, rtol=0, atol=COMPILED_ATOL)


@pytest.mark.slow
def test_compiled_training_step_equals_eager_within_tolerance(tiny_cfg):
    from rglcd.data import StreamSpec, TrainStream, open_source
    from rglcd.models import load_teacher, make_target
    from rglcd.step import lcd_step
    from rglcd.train.setup import build_student

    cfg = tiny_cfg("reward.name=none", "reward.guidance=direct", "train.batch_size=2")
    batch = next(iter(TrainStream(open_source("builtin:photos:4"), StreamSpec(batch_size=2, resolution=32))))
    losses, grads, records = [], [], []
    for compiled in (False, True):
        cfg.train.compile = compiled
        teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir)
        torch.manual_seed(0)
        student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim)
        target = make_target(student)
        records.append(prepare_unets(cfg, teacher, student, target, torch.device("cpu")))
        out = lcd_step(student, target, teacher, batch, cfg, step=0)
        out.loss.backward()
        losses.append(out.loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in student.parameters()]))
        assert list(student.state_dict()) == list(target.state_dict())       # in-place compile: same keys
    assert [r["compile"] for r in records] == [False, True]
    assert records[1]["gradient_checkpointing"] is False
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    # Gradients: elementwise, tiny entries differ relatively (other fusion/summation order in the backward),
    # so the stated bound is on the whole vector: ||g_compiled - g_eager|| / ||g_eager||.
    error = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert error < GRAD_REL_TOL, error
