"""One RG-LCD step (rglcd.step): the LCD target against stock diffusers schedulers, per-example seeding,
gradient routing of the reward term, input paths, and short overfit runs on tiny models."""
import pytest
import torch

from rglcd import solver
from rglcd.models import load_teacher, make_student, make_target
from rglcd.optim import is_bad_step, make_optimizer, optimizer_update, trainable
from rglcd.step import draw, example_generators, example_seed, lcd_step

CAPTIONS = ["a photo of a cat", "a red car on a street", "a bowl of fruit", "mountains at sunset"]


class ImageReward(torch.nn.Module):
    """A differentiable image-text scorer with the rglcd.rewards interface: weighted channel means."""
    input_kind = "image"

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.tensor([1.0, 0.5, -0.5]))  # deliberately requires_grad

    def score(self, images, prompts):
        assert images.ndim == 4 and images.shape[1] == 3 and len(prompts) == images.shape[0]
        assert float(images.detach().min()) >= 0 and float(images.detach().max()) <= 1
        return (images.mean(dim=(2, 3)) * self.weight).sum(1)  # (B,)


class LatentReward(torch.nn.Module):
    """An LRM stand-in: reads unscaled latents (B, 4, h, w); its parameters are trainable (fine-tuned online)."""
    input_kind = "latent"

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.proj = torch.nn.Conv2d(4, 1, 1)

    def score(self, latents, prompts):
        assert latents.shape[1] == 4
        return torch.tanh(self.proj(latents)).mean(dim=(1, 2, 3))  # (B,)


@pytest.fixture(scope="module")
def teachers(model_cache):
    return {p: load_teacher(f"tiny:{p}", model_cache) for p in ("epsilon", "v_prediction")}


def _models(teacher, seed=0):
    torch.manual_seed(seed)
    student = make_student(teacher.unet, 256)
    target = make_target(student)
    with torch.no_grad():  # a target that differs from the student, as after some EMA steps
        for p in target.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return student, target


def _pixels(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 32, 32, generator=g) * 2 - 1


def _batch(idx, pixels=None):
    """Examples idx of a fixed set of 4: unscaled 8x8 latents (cheap), or the given pixels (32 px)."""
    idx = list(idx)
    if pixels is None:
        x = {"latents": torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))[idx]}
    else:
        x = {"pixel_values": pixels[idx]}
    return {**x, "captions": [CAPTIONS[i] for i in idx], "index": torch.tensor(idx) + 100}


# ---------------------------------------------------------------- the LCD target, against stock diffusers

@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_step_matches_reference_built_from_stock_schedulers(teachers, tiny_cfg, prediction_type):
    """pred = LCMScheduler's denoised output of the student; target = the EMA target's on the teacher's
    CFG'd DDIM step computed by DDIMScheduler, teacher cond and uncond run separately."""
    from diffusers import DDIMScheduler, LCMScheduler

    teacher = teachers[prediction_type]
    cfg = tiny_cfg("reward.guidance=direct")
    student, target = _models(teacher)
    out = lcd_step(student, target, teacher, _batch(range(4)), cfg, step=3)

    grid = solver.ddim_timesteps(1000, 50)
    assert all(t in grid for t in out.t_start.tolist())
    assert out.t_end.tolist() == [max(t - 20, 0) for t in out.t_start.tolist()]
    assert ((out.w >= 5) & (out.w <= 15)).all()
    assert torch.allclose(out.z_start, teacher.noise_scheduler.add_noise(
        out.z0, draw(example_generators(cfg.train.seed, 3, torch.arange(100, 104)), 50, 5, 15,
                     (4, 8, 8)).noise, out.t_start), atol=1e-5)

    config = dict(teacher.noise_scheduler.config)
    ddim = DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False)
    ddim.set_timesteps(50)
    lcm = LCMScheduler.from_config(config, clip_sample=False)
    with torch.no_grad():
        ids = teacher.tokenizer(CAPTIONS + [""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        text = teacher.text_encoder(ids)[0]
        w_emb = solver.guidance_embedding(out.w, 256)
        for j in range(4):
            z, t, te, w = out.z_start[j:j + 1], int(out.t_start[j]), text[j:j + 1], float(out.w[j])
            cond = teacher.unet(z, t, encoder_hidden_states=te).sample
            uncond = teacher.unet(z, t, encoder_hidden_states=text[4:]).sample
            z_prev = ddim.step(cond + w * (cond - uncond), t, z, eta=0.0).prev_sample  # linear in the output
            s_out = student(z, t, encoder_hidden_states=te, timestep_cond=w_emb[j:j + 1]).sample
            lcm.set_timesteps(timesteps=[t])
            pred_ref = lcm.step(s_out, t, z).denoised
            t_end = int(out.t_end[j])
            t_out = target(z_prev, t_end, encoder_hidden_states=te, timestep_cond=w_emb[j:j + 1]).sample
            if t_end == 0:  # boundary condition: f(z, 0) = z
                target_ref = z_prev
            else:
                lcm.set_timesteps(timesteps=[t_end])
                target_ref = lcm.step(t_out, t_end, z_prev).denoised
            assert torch.allclose(out.pred[j:j + 1], pred_ref, atol=1e-4), j
            assert torch.allclose(out.target[j:j + 1], target_ref, atol=1e-4), j
    assert out.pred.requires_grad and not out.target.requires_grad
    assert torch.allclose(out.lcd_loss, out.lcd_per_example.mean(), atol=1e-7)
    assert out.reward is None and float(out.reward_loss) == 0 and torch.equal(out.loss, out.lcd_loss + out.reward_loss)


def test_first_grid_point_targets_the_teacher_step_itself(teachers, tiny_cfg):
    """With i = 0 (t_start = 19, t_end = 0) the target is z_prev exactly: c_skip(0) = 1, c_out(0) = 0."""
    teacher = teachers["epsilon"]
    student, target = _models(teacher)
    cfg = tiny_cfg("reward.guidance=direct")
    gens = lambda s: example_generators(cfg.train.seed, s, torch.tensor([100]))  # noqa: E731
    step = next(s for s in range(5000) if int(draw(gens(s), 50, 5.0, 15.0, (4, 8, 8)).grid_index[0]) == 0)
    out = lcd_step(student, target, teacher, _batch([0]), cfg, step)
    assert int(out.t_start[0]) == 19 and int(out.t_end[0]) == 0
    target2 = make_target(student)
    with torch.no_grad():  # a very different target network must not change the target at t_end = 0
        for p in target2.parameters():
            p.mul_(-3)
    out2 = lcd_step(student, target2, teacher, _batch([0]), cfg, step)
    assert torch.allclose(out.target, out2.target, atol=1e-6)


# ---------------------------------------------------------------- per-example randomness

def test_split_batches_give_the_same_per_example_terms(teachers, tiny_cfg):
    """[a,b,c,d] in one step == [a,b] and [c,d] in two steps with the same indices (what DDP relies on)."""
    teacher = teachers["v_prediction"]
    cfg = tiny_cfg("reward.guidance=direct")
    student, target = _models(teacher)
    rm = ImageReward()
    full = lcd_step(student, target, teacher, _batch(range(4)), cfg, 7, reward=rm)
    halves = [lcd_step(student, target, teacher, _batch(ix), cfg, 7, reward=rm) for ix in ([0, 1], [2, 3])]
    for name in ("t_start", "w", "z0", "z_start", "pred", "target", "lcd_per_example", "rewards"):
        joined = torch.cat([getattr(h, name) for h in halves])
        assert torch.allclose(getattr(full, name), joined, atol=1e-5), name
    mean_of_halves = (halves[0].loss + halves[1].loss) / 2  # equal halves: the DDP average is the global mean
    assert torch.allclose(full.loss, mean_of_halves, atol=1e-6)
    # the order inside the batch does not matter either
    flipped = lcd_step(student, target, teacher, _batch([3, 2, 1, 0]), cfg, 7, reward=rm)
    assert torch.allclose(flipped.lcd_per_example, full.lcd_per_example.flip(0), atol=1e-5)


def test_draws_depend_on_seed_step_and_index():
    assert example_seed(0, 1, 2) == example_seed(0, 1, 2)
    assert len({example_seed(0, 1, 2), example_seed(0, 2, 1), example_seed(1, 1, 2), example_seed(0, 1, 3)}) == 4
    a = draw(example_generators(0, 5, torch.tensor([10, 11])), 50, 5.0, 15.0, (4, 2, 2))
    b = draw(example_generators(0, 5, torch.tensor([11])), 50, 5.0, 15.0, (4, 2, 2))
    assert torch.equal(a.noise[1:], b.noise) and torch.equal(a.w[1:], b.w) and torch.equal(a.grid_index[1:], b.grid_index)
    c = draw(example_generators(0, 6, torch.tensor([11])), 50, 5.0, 15.0, (4, 2, 2))
    assert not torch.equal(b.noise, c.noise)
    many = draw(example_generators(0, 0, torch.arange(2000)), 50, 5.0, 15.0, (1, 1, 1))
    assert many.grid_index.min() == 0 and many.grid_index.max() == 49  # uniform over all 50 grid points
    assert 5.0 <= float(many.w.min()) < 5.1 and 14.9 < float(many.w.max()) <= 15.0
    assert abs(float(many.noise.mean())) < 0.1 and abs(float(many.noise.std()) - 1) < 0.1


def test_pixels_moments_and_latents_give_the_same_step(teachers, tiny_cfg):
    """Encoding on the fly == precomputed 8-channel moments (same VAE draw) == the resulting latents."""
    teacher = teachers["epsilon"]
    cfg = tiny_cfg("reward.guidance=direct")
    student, target = _models(teacher)
    px = _pixels(2)
    base = _batch(range(2), px)
    with torch.no_grad():
        moments = teacher.vae.encode(px).latent_dist.parameters  # (2, 8, 16, 16)
    a = lcd_step(student, target, teacher, base, cfg, 2)
    b = lcd_step(student, target, teacher, {**{k: v for k, v in base.items() if k != "pixel_values"},
                                            "latent_moments": moments}, cfg, 2)
    c = lcd_step(student, target, teacher, {**{k: v for k, v in base.items() if k != "pixel_values"},
                                            "latents": a.z0 / teacher.vae.config.scaling_factor}, cfg, 2)
    for other in (b, c):
        assert torch.allclose(a.z0, other.z0, atol=1e-5)
        assert torch.allclose(a.lcd_per_example, other.lcd_per_example, atol=1e-5)
    mean = moments[:, :4] * teacher.vae.config.scaling_factor
    assert not torch.allclose(a.z0, mean, atol=1e-3)  # it is a posterior sample, not the mean


def test_bad_batches_are_refused_at_the_edge(teachers, tiny_cfg):
    teacher = teachers["epsilon"]
    cfg = tiny_cfg("reward.guidance=direct")
    student, target = _models(teacher)
    good = _batch([0, 1])
    pixels = {"pixel_values": _pixels(2) * 3, "captions": good["captions"], "index": good["index"]}
    cases = [(pixels, r"\[-1, 1\]"),
             ({k: v for k, v in good.items() if k != "index"}, "index"),
             ({**good, "captions": ["only one"]}, "captions"),
             ({**good, "pixel_values": torch.zeros(2, 3, 32, 32)}, "exactly one"),
             ({"pixel_values": torch.zeros(2, 32, 32), "captions": good["captions"], "index": good["index"]},
              r"\(B, 3, H, W\)"),
             ({"latent_moments": torch.zeros(2, 4, 16, 16), "captions": good["captions"], "index": good["index"]},
              r"\(B, 8, h, w\)")]
    for batch, message in cases:
        with pytest.raises(ValueError, match=message):
            lcd_step(student, target, teacher, batch, cfg, 0)
    with pytest.raises(ValueError, match="time_cond_proj_dim"):
        lcd_step(make_student(teacher.unet, 64), target, teacher, good, cfg, 0)


# ---------------------------------------------------------------- gradient routing

def _frozen_params(teacher, target, *extra):
    for module in (teacher.unet, teacher.vae, teacher.text_encoder, target, *extra):
        yield from module.parameters()


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    return calls, handle


def test_direct_reward_gradient_reaches_the_student_and_nothing_frozen(teachers, tiny_cfg):
    teacher = teachers["epsilon"]
    cfg = tiny_cfg("reward.guidance=direct", "reward.beta=2.0")
    student, target = _models(teacher)
    rm = ImageReward()
    decoder_calls, h1 = _count_calls(teacher.vae.decoder)
    unet_calls, h2 = _count_calls(teacher.unet)
    try:
        out = lcd_step(student, target, teacher, _batch([0, 1]), cfg, 1, reward=rm)
    finally:
        h1.remove(), h2.remove()
    assert decoder_calls == [2]  # the whole batch decoded once, with gradients
    assert unet_calls == [4]     # teacher cond + uncond in one forward over 2B
    assert torch.allclose(out.reward_loss, -2.0 * out.rewards.mean())
    out.reward_loss.backward()
    grads = [p.grad for p in student.parameters()]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2
    assert student.time_embedding.cond_proj.weight.grad.abs().sum() > 0  # the new w-projection learns
    assert all(p.grad is None for p in _frozen_params(teacher, target, rm))
    assert rm.weight.requires_grad  # restored after the step


def test_latent_reward_never_decodes_and_leaves_the_lrm_untouched(teachers, tiny_cfg):
    teacher = teachers["v_prediction"]
    cfg = tiny_cfg("reward.guidance=lrm")
    student, target = _models(teacher)
    lrm = LatentReward()
    decoder_calls, handle = _count_calls(teacher.vae.decoder)
    try:
        out = lcd_step(student, target, teacher, _batch([0, 1]), cfg, 1, reward=lrm)
    finally:
        handle.remove()
    assert decoder_calls == []
    expected = torch.tanh(lrm.proj(out.pred.detach() / teacher.vae.config.scaling_factor)).mean(dim=(1, 2, 3))
    assert torch.allclose(out.rewards, expected, atol=1e-6)
    (g_pred,) = torch.autograd.grad(out.reward_loss, out.pred, retain_graph=True)
    assert g_pred.abs().sum() > 0
    out.loss.backward()
    assert all(p.grad is None for p in _frozen_params(teacher, target, lrm))
    assert all(p.requires_grad for p in lrm.parameters())  # still trainable by the loop's LRM optimizer
    assert student.conv_in.weight.grad.abs().sum() > 0


def test_reward_kind_must_match_the_configured_guidance(teachers, tiny_cfg):
    teacher = teachers["epsilon"]
    student, target = _models(teacher)
    with pytest.raises(ValueError, match="input_kind 'image'"):
        lcd_step(student, target, teacher, _batch([0]), tiny_cfg("reward.guidance=direct"), 0, reward=LatentReward())
    with pytest.raises(ValueError, match="input_kind 'latent'"):
        lcd_step(student, target, teacher, _batch([0]), tiny_cfg("reward.guidance=lrm"), 0, reward=ImageReward())


def test_reward_sub_batch_scores_only_the_first_examples(teachers, tiny_cfg):
    teacher = teachers["epsilon"]
    cfg = tiny_cfg("reward.guidance=direct", "reward.batch_size=2")
    student, target = _models(teacher)
    out = lcd_step(student, target, teacher, _batch(range(3)), cfg, 0, reward=ImageReward())
    assert out.rewards.shape == (2,)
    (g_pred,) = torch.autograd.grad(out.reward_loss, out.pred)
    assert g_pred[:2].abs().sum() > 0 and g_pred[2:].abs().sum() == 0


def test_rglcd_rewards_plug_in_when_present(teachers, tiny_cfg):
    """The other engineer's tiny HPS (same interface) drives the same gradient routing."""
    rewards = pytest.importorskip("rglcd.rewards")
    teacher = teachers["epsilon"]
    rm = rewards.load_reward("hpsv2.1", "tiny")
    student, target = _models(teacher)
    out = lcd_step(student, target, teacher, _batch([0, 1]), tiny_cfg("reward.guidance=direct"), 0, reward=rm)
    out.loss.backward()
    assert out.rewards.shape == (2,) and torch.isfinite(out.loss)
    assert student.conv_in.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in _frozen_params(teacher, target, rm))


# ---------------------------------------------------------------- the optimizer side and short training

def test_optimizer_update_steps_the_student_and_moves_the_target_by_ema(teachers, tiny_cfg):
    teacher = teachers["epsilon"]
    cfg = tiny_cfg("reward.guidance=direct", "distill.ema_decay=0.9", "train.lr=1e-3")
    student, target = _models(teacher)
    opt = make_optimizer(trainable(student), cfg.train)
    before_s = [p.detach().clone() for p in student.parameters()]
    before_t = [p.detach().clone() for p in target.parameters()]
    lcd_step(student, target, teacher, _batch([0, 1]), cfg, 0).loss.backward()
    norm, bad = optimizer_update(student, target, opt, cfg)
    assert norm > 0 and not bad and all(p.grad is None for p in student.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before_s, student.parameters()))
    for t0, t1, s1 in zip(before_t, target.parameters(), student.parameters()):
        assert torch.allclose(t1, 0.9 * t0 + 0.1 * s1, atol=1e-6)


def test_the_one_non_finite_rule():
    """A bad step: a non-finite loss anywhere, or a non-finite grad norm outside fp16 (there the scaler skips)."""
    assert [is_bad_step(True, 1.0, p) for p in ("no", "bf16", "fp16")] == [False, False, False]
    assert [is_bad_step(True, float("nan"), p) for p in ("no", "bf16", "fp16")] == [True, True, False]
    assert [is_bad_step(False, 1.0, p) for p in ("no", "bf16", "fp16")] == [True, True, True]


def test_optimizer_update_skips_a_bad_step_and_moves_nothing(teachers, tiny_cfg):
    cfg = tiny_cfg("reward.guidance=direct", "train.lr=1e-3")
    student, target = _models(teachers["epsilon"])
    opt = make_optimizer(trainable(student), cfg.train)
    weights = [p.detach().clone() for p in [*student.parameters(), *target.parameters()]]

    def unchanged() -> bool:
        return all(torch.equal(a, b) for a, b in zip(weights, [*student.parameters(), *target.parameters()]))
    for p in trainable(student):
        p.grad = torch.full_like(p, float("nan"))
    norm, bad = optimizer_update(student, target, opt, cfg)
    assert bad and norm != norm and unchanged() and all(p.grad is None for p in student.parameters())
    for p in trainable(student):                     # finite gradients, but the loss was not finite somewhere
        p.grad = torch.ones_like(p)
    norm, bad = optimizer_update(student, target, opt, cfg, loss_finite=False)
    assert bad and norm > 0 and unchanged() and all(p.grad is None for p in student.parameters())
    assert not opt.state                             # AdamW never stepped: no moments were made


def _train(teacher, cfg, steps, reward=None, fixed_draws=False):
    """`steps` optimizer steps on one repeated batch of 2; fixed_draws repeats step 0's draws too."""
    student, target = _models(teacher)
    opt = make_optimizer(trainable(student), cfg.train)
    g = torch.Generator().manual_seed(0)
    batch = {"latents": torch.randn(2, 4, 8, 8, generator=g), "captions": CAPTIONS[:2], "index": torch.arange(2)}
    lcd, rewards = [], []
    for step in range(steps):
        out = lcd_step(student, target, teacher, batch, cfg, 0 if fixed_draws else step, reward=reward)
        out.loss.backward()
        optimizer_update(student, target, opt, cfg)
        lcd.append(float(out.lcd_loss.detach()))
        rewards.append(None if out.reward is None else float(out.reward))
    return lcd, rewards


@pytest.mark.slow
def test_overfit_drives_the_lcd_loss_down(teachers, tiny_cfg):
    """200 steps with fresh draws every step (t, noise, w as in training): the LCD loss falls clearly."""
    cfg = tiny_cfg("reward.guidance=direct", "train.lr=1e-4")
    lcd, _ = _train(teachers["epsilon"], cfg, 200)
    first, last = sum(lcd[:25]) / 25, sum(lcd[-50:]) / 50
    print(f"LCD loss: mean of steps 0-24 {first:.4f}, of steps 150-199 {last:.4f}")
    assert last < 0.5 * first


@pytest.mark.slow
def test_reward_of_the_prediction_rises(teachers, tiny_cfg):
    """Deterministic run (fixed batch and draws): R of the student's prediction climbs step after step."""
    cfg = tiny_cfg("reward.guidance=direct", "train.lr=3e-4", "reward.beta=100")
    _, rewards = _train(teachers["v_prediction"], cfg, 30, reward=ImageReward(), fixed_draws=True)
    print(f"reward: step 0 {rewards[0]:.4f}, step 29 {rewards[-1]:.4f}")
    rises = sum(b > a for a, b in zip(rewards, rewards[1:]))
    assert rewards[-1] > rewards[0] + 0.03 and rises >= 0.9 * (len(rewards) - 1)


def test_step_follows_the_runs_precision(teachers, tiny_cfg, model_cache):
    """bf16 autocast and a bf16 teacher run the same step (no forced fp16); terms stay close to fp32."""
    teacher = teachers["v_prediction"]
    cfg = tiny_cfg("reward.guidance=direct")
    student, target = _models(teacher)
    ref = lcd_step(student, target, teacher, _batch([0, 1]), cfg, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = lcd_step(student, target, teacher, _batch([0, 1]), cfg, 0, reward=ImageReward())
    bf16_teacher = load_teacher("tiny:v_prediction", model_cache, dtype=torch.bfloat16)
    half = lcd_step(student, target, bf16_teacher, _batch([0, 1]), cfg, 0)
    for out in (amp, half):
        assert out.pred.dtype == out.target.dtype == torch.float32 and torch.isfinite(out.loss)
        assert torch.allclose(out.target, ref.target, atol=0.05)
        assert abs(float(out.lcd_loss.detach()) - float(ref.lcd_loss.detach())) < 0.1 * float(ref.lcd_loss.detach())
    amp.loss.backward()
    assert student.conv_in.weight.grad.dtype == torch.float32 and student.conv_in.weight.grad.abs().sum() > 0
