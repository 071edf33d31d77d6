"""Tiny factory, tokenizer, teacher loading and student init (issue: foundation)."""
import json

import numpy as np
import pytest
import torch

from rglcd.models import ModelSourceError, load_teacher, make_student, make_target, resolve
from rglcd.models.student import ema_update


def test_tokenizer_is_the_real_clip_bpe(tiny_teacher_dir):
    teacher = load_teacher(str(tiny_teacher_dir()))
    assert len(teacher.tokenizer) == 49408
    assert teacher.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    padded = teacher.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_tiny_teacher_loads_and_samples_with_stock_diffusers(tiny_teacher_dir, prediction_type):
    from diffusers import StableDiffusionPipeline

    path = tiny_teacher_dir(prediction_type)
    assert json.loads((path / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == prediction_type
    assert not list(path.rglob("*.bin")), "safetensors only"
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    images = pipe("a photo of a cat", num_inference_steps=2, height=32, width=32, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert load_teacher(str(path)).prediction_type == prediction_type


def test_tiny_factory_is_deterministic(tmp_path):
    from rglcd.models import save_tiny_teacher

    a = save_tiny_teacher(tmp_path / "a", seed=3)
    b = save_tiny_teacher(tmp_path / "b", seed=3)
    for rel in ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()


def test_teacher_is_frozen(tiny_teacher_dir):
    teacher = load_teacher(str(tiny_teacher_dir()))
    for module in (teacher.unet, teacher.vae, teacher.text_encoder):
        assert not any(p.requires_grad for p in module.parameters()) and not module.training
    assert teacher.vae_scale_factor == 2


def test_vae_scale_factor_counts_the_vae_blocks():
    from types import SimpleNamespace

    from rglcd.models import vae_scale_factor

    sd_vae = SimpleNamespace(config=SimpleNamespace(block_out_channels=(128, 256, 512, 512)))
    assert vae_scale_factor(sd_vae) == 8


def test_student_copies_teacher_except_the_new_projection(tiny_teacher_dir):
    teacher = load_teacher(str(tiny_teacher_dir()))
    student = make_student(teacher.unet, 256)
    assert student.config.time_cond_proj_dim == 256 and teacher.unet.config.time_cond_proj_dim is None
    t_state, s_state = teacher.unet.state_dict(), student.state_dict()
    new = sorted(set(s_state) - set(t_state))
    assert new == ["time_embedding.cond_proj.weight"]
    assert s_state[new[0]].shape == (student.config.block_out_channels[0], 256)
    for key, value in t_state.items():
        assert torch.equal(s_state[key], value), key
    assert all(p.requires_grad for p in student.parameters())


def test_student_uses_the_guidance_embedding(tiny_teacher_dir):
    """The student is the teacher whose timestep-embedding input is shifted by cond_proj(w_embedding), and
    nothing else: with a zero embedding it is the teacher; with any other, the teacher so shifted."""
    teacher = load_teacher(str(tiny_teacher_dir()))
    student = make_student(teacher.unet, 256).eval()
    unet = teacher.unet.eval()
    x, t, text = torch.randn(1, 4, 16, 16), torch.tensor([499]), torch.randn(1, 77, 32)
    cond = torch.randn(1, 256)
    with torch.no_grad():
        base = unet(x, t, text).sample
        out_zero = student(x, t, text, timestep_cond=torch.zeros(1, 256)).sample
        out_cond = student(x, t, text, timestep_cond=cond).sample
        shift = student.time_embedding.cond_proj(cond)                       # (1, C0)
        hook = unet.time_embedding.register_forward_pre_hook(lambda m, args: (args[0] + shift, *args[1:]))
        try:
            shifted = unet(x, t, text).sample
        finally:
            hook.remove()
    torch.testing.assert_close(out_zero, base, rtol=0, atol=1e-6)
    torch.testing.assert_close(out_cond, shifted, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(out_cond, base)


def test_ema_target_update():
    student = torch.nn.Linear(2, 2)
    target = make_target(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    before = [p.clone() for p in target.parameters()]
    ema_update(target, student, decay=0.95)
    for b, t, s in zip(before, target.parameters(), student.parameters()):
        assert torch.allclose(t, 0.95 * b + 0.05 * s)
    assert not any(p.requires_grad for p in target.parameters())


def test_hub_ids_fail_fast_and_clearly_offline(tmp_path):
    with pytest.raises(ModelSourceError, match="no network.*model.teacher=DIR"):
        resolve("stabilityai/stable-diffusion-2-1-base", str(tmp_path))
    with pytest.raises(ModelSourceError, match="no such local path"):
        resolve("./does/not/exist", str(tmp_path))
    with pytest.raises(ModelSourceError, match="tiny:epsilon, tiny:v_prediction"):
        resolve("tiny:x0", str(tmp_path))


def test_incomplete_directory_is_refused(tmp_path):
    (tmp_path / "model_index.json").write_text("{}")
    with pytest.raises(ModelSourceError, match="missing unet"):
        load_teacher(str(tmp_path))


def test_student_from_a_real_style_config_without_time_cond_key(tiny_teacher_dir, tmp_path):
    """Real SD unet/config.json files have no time_cond_proj_dim key (diffusers then marks it a default)."""
    import json
    import shutil

    from diffusers import UNet2DConditionModel

    unet_dir = tmp_path / "unet"
    shutil.copytree(tiny_teacher_dir() / "unet", unet_dir)
    config = json.loads((unet_dir / "config.json").read_text())
    config.pop("time_cond_proj_dim")
    (unet_dir / "config.json").write_text(json.dumps(config))
    teacher_unet = UNet2DConditionModel.from_pretrained(unet_dir)
    assert "time_cond_proj_dim" in teacher_unet.config.get("_use_default_values", [])
    student = make_student(teacher_unet, 256)
    assert student.config.time_cond_proj_dim == 256
    assert student.time_embedding.cond_proj is not None
