"""Sampling (rglcd.sample), export as a stock diffusers pipeline (rglcd.export) and their CLIs."""
import json

import pytest
import torch

from rglcd.export import export_student, load_student_unet, read_manifest
from rglcd.models import load_teacher, make_student
from rglcd.data.prompts import load_prompts
from rglcd.sample import ddim_sample, from_teacher, lcm_sample, lcm_scheduler, load_sampling_model

PROMPTS = ["a photo of a cat", "a red car"]


def _student(teacher, seed=1):
    """A student that differs from the teacher everywhere (as after training)."""
    torch.manual_seed(seed)
    student = make_student(teacher.unet, 256)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return student.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, model_cache):
    """{prediction_type: (teacher, student, exported dir)}."""
    out = {}
    for kind in ("epsilon", "v_prediction"):
        teacher = load_teacher(f"tiny:{kind}", model_cache)
        student = _student(teacher)
        path = export_student(student, teacher, tmp_path_factory.mktemp("export") / f"model-{kind}",
                              teacher_ref=f"tiny:{kind}")
        out[kind] = (teacher, student, path)
    return out


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- schedules

def test_lcm_timesteps_follow_method_section_5(tiny_teacher_dir):
    config = json.loads((tiny_teacher_dir() / "scheduler" / "scheduler_config.json").read_text())
    sched = lcm_scheduler(config)
    assert sched.config.original_inference_steps == 50 and sched.config.timestep_scaling == 10.0
    assert not sched.config.clip_sample and sched.config.prediction_type == "epsilon"
    expected = {1: [999], 2: [999, 499], 4: [999, 759, 499, 259], 8: [999, 879, 759, 639, 499, 379, 259, 139]}
    for n, ts in expected.items():
        sched.set_timesteps(n)
        assert sched.timesteps.tolist() == ts


# ---------------------------------------------------------------- export round trip

@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_stock_diffusers_loads_the_export_and_samples_the_same_images(exported, kind):
    from diffusers import DiffusionPipeline, LatentConsistencyModelPipeline, LCMScheduler

    teacher, student, path = exported[kind]
    pipe = DiffusionPipeline.from_pretrained(str(path))  # no rglcd code involved
    assert isinstance(pipe, LatentConsistencyModelPipeline) and isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.prediction_type == kind and pipe.unet.config.time_cond_proj_dim == 256
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(PROMPTS, num_inference_steps=4, guidance_scale=7.5, generator=_gen(), output_type="pt").images
    model = load_sampling_model(str(path))
    ours = lcm_sample(model, PROMPTS, 4, 7.5, _gen())
    in_memory = lcm_sample(from_teacher(teacher, student), PROMPTS, 4, 7.5, _gen())
    assert ours.images.shape == (2, 3, 32, 32) and ours.latents.shape == (2, 4, 16, 16)
    assert ours.timesteps == [999, 759, 499, 259]
    assert torch.allclose(ours.images, stock, atol=1e-5)
    assert torch.allclose(in_memory.images, stock, atol=1e-5)
    assert 0 <= float(ours.images.min()) and float(ours.images.max()) <= 1 and float(ours.images.std()) > 0
    other = lcm_sample(model, PROMPTS, 4, 7.5, _gen(1))
    assert not torch.allclose(other.images, ours.images)  # the seed matters
    two = lcm_sample(model, PROMPTS, 2, 3.0, _gen())
    stock2 = pipe(PROMPTS, num_inference_steps=2, guidance_scale=3.0, generator=_gen(), output_type="pt").images
    assert torch.allclose(two.images, stock2, atol=1e-5)


def test_export_is_self_describing_and_safetensors_only(exported, tiny_cfg):
    teacher, student, path = exported["epsilon"]
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    assert "unet/diffusion_pytorch_model.safetensors" in files and "vae/diffusion_pytorch_model.safetensors" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".ckpt"))]
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "LatentConsistencyModelPipeline"
    manifest = read_manifest(path)
    assert manifest["teacher"] == "tiny:epsilon" and manifest["prediction_type"] == "epsilon"
    assert set(manifest["versions"]) >= {"torch", "diffusers", "transformers", "rglcd"}
    # the student weights are what was exported, bit for bit
    loaded = load_student_unet(path)
    for (name, a), b in zip(student.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_export_records_config_and_refuses_to_clobber(exported, tiny_cfg, tmp_path):
    teacher, student, _ = exported["epsilon"]
    cfg = tiny_cfg("distill.timestep_scaling=5.0")
    out = export_student(student, teacher, tmp_path / "m", cfg=cfg, teacher_ref="tiny:epsilon")
    manifest = read_manifest(out)
    assert manifest["config"]["distill"]["timestep_scaling"] == 5.0 and manifest["config"]["preset"] == "tiny-random"
    assert json.loads((out / "scheduler" / "scheduler_config.json").read_text())["timestep_scaling"] == 5.0
    with pytest.raises(FileExistsError, match="already exists"):
        export_student(student, teacher, out, cfg=cfg)
    (out / "marker").write_text("old")
    export_student(student, teacher, out, overwrite=True)
    assert not (out / "marker").exists() and read_manifest(out)["config"] is None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        export_student(teacher.unet, teacher, tmp_path / "teacher-as-student")
    assert not (tmp_path / "teacher-as-student").exists()


def test_student_sources_dir_subfolder_and_state_dict(exported, tmp_path):
    from safetensors.torch import save_file

    teacher, student, path = exported["epsilon"]
    student.save_pretrained(str(tmp_path / "unet-dir"))
    save_file(student.state_dict(), str(tmp_path / "student.safetensors"))
    ref = student.state_dict()["conv_in.weight"]
    for src in (tmp_path / "unet-dir", path, tmp_path / "student.safetensors"):
        assert torch.equal(load_student_unet(src, teacher).state_dict()["conv_in.weight"], ref), src
    with pytest.raises(ValueError, match="teacher is needed"):
        load_student_unet(tmp_path / "student.safetensors")
    save_file({"conv_in.weight": ref}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_student_unet(tmp_path / "partial.safetensors", teacher)
    with pytest.raises(FileNotFoundError, match="expected a diffusers UNet directory"):
        load_student_unet(tmp_path / "nothing-here", teacher)


# ---------------------------------------------------------------- the teacher's DDIM + CFG

def test_teacher_ddim_cfg_equals_stock_stable_diffusion_pipeline(tiny_teacher_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    path = tiny_teacher_dir("v_prediction")
    pipe = StableDiffusionPipeline.from_pretrained(str(path))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(PROMPTS, num_inference_steps=10, guidance_scale=7.5, generator=_gen(), output_type="pt").images
    model = load_sampling_model(str(path))
    ours = ddim_sample(model, PROMPTS, 10, 7.5, _gen())
    assert torch.allclose(ours.images, stock, atol=1e-5)
    assert len(ours.timesteps) == 10 and ours.timesteps[0] > ours.timesteps[-1]
    with pytest.raises(ValueError, match="not an LCM student"):
        lcm_sample(model, PROMPTS, 4)


# ---------------------------------------------------------------- prompts and CLIs

def test_prompts_file_of_rglcd_sample(tmp_path):
    def read_prompts(path):
        return load_prompts(path, field="--prompts-file")

    (tmp_path / "p.txt").write_text("a cat\n\n  a dog  \n")
    (tmp_path / "p.json").write_text(json.dumps(["x", "y"]))
    (tmp_path / "bad.json").write_text(json.dumps({"x": 1}))
    (tmp_path / "empty.txt").write_text("\n \n")
    assert read_prompts(tmp_path / "p.txt") == ["a cat", "a dog"]
    assert read_prompts(tmp_path / "p.json") == ["x", "y"]
    with pytest.raises(ValueError, match="list of strings"):
        read_prompts(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="no prompt"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(FileNotFoundError):
        read_prompts(tmp_path / "missing.txt")


def test_cli_export_then_sample(exported, model_cache, tmp_path, capsys):
    from PIL import Image

    from rglcd.cli import main

    teacher, student, _ = exported["epsilon"]
    student.save_pretrained(str(tmp_path / "unet"))
    common = ["--set", f"model.cache_dir={model_cache}"]
    model = tmp_path / "model"
    assert main(["export", "--student", str(tmp_path / "unet"), "--teacher", "tiny:epsilon", "--out", str(model),
                 *common]) == 0
    assert read_manifest(model)["teacher"] == "tiny:epsilon"
    assert main(["export", "--student", str(tmp_path / "unet"), "--teacher", "tiny:epsilon", "--out", str(model),
                 *common]) == 1
    assert "already exists" in capsys.readouterr().err

    out = tmp_path / "samples"
    (tmp_path / "prompts.txt").write_text("a photo of a cat\na red car\na bowl of fruit\n")
    assert main(["sample", "--model", str(model), "--prompts-file", str(tmp_path / "prompts.txt"), "--steps", "1", "4",
                 "--seed", "3", "--out", str(out), *common]) == 0
    assert sorted(p.name for p in (out / "steps-4").iterdir()) == ["000.png", "001.png", "002.png"]
    assert Image.open(out / "grid.png").size == (2 + 2 * (32 + 2), 2 + 3 * (32 + 2))  # 2 columns x 3 rows
    index = json.loads((out / "samples.json").read_text())
    assert index["runs"]["steps-4"]["timesteps"] == [999, 759, 499, 259] and index["seed"] == 3
    # the PNG holds the same image lcm_sample gives for that seed
    ref = lcm_sample(load_sampling_model(str(model)), load_prompts(tmp_path / "prompts.txt"), 4, 7.5, _gen(3))
    png = torch.tensor(list(Image.open(out / "steps-4" / "001.png").getdata()), dtype=torch.float32)
    assert torch.allclose(png.T.reshape(3, 32, 32) / 255, ref.images[1], atol=1 / 255 + 1e-6)

    teacher_out = tmp_path / "teacher"
    assert main(["sample", "--model", "tiny:epsilon", "--teacher", "--steps", "5", "--prompt", "a cat",
                 "--out", str(teacher_out), *common]) == 0
    assert (teacher_out / "teacher-5" / "000.png").is_file()
    assert main(["sample", "--model", "tiny:epsilon", "--prompt", "a cat", "--out", str(tmp_path / "x"), *common]) == 1
    assert "not an LCM student" in capsys.readouterr().err


def test_decode_latents_is_decode_unscaled_of_z_over_the_scaling_factor(exported):
    from rglcd.sample import decode_latents, decode_unscaled

    teacher = exported["epsilon"][0]
    z = torch.randn(2, 4, 16, 16, generator=_gen(3))
    images = decode_latents(teacher.vae, z)
    assert images.shape == (2, 3, 32, 32) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1
    assert torch.equal(images, decode_unscaled(teacher.vae, z / teacher.vae.config.scaling_factor))
