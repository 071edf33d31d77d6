"""The solver's pure functions against diffusers' LCMScheduler / DDIMScheduler / LCM pipeline and hand-computed values."""
import math

import pytest
import torch

from rglcd import solver
from rglcd.losses import imagereward_hinge, lcd_loss, reward_loss


def _lcm_scheduler(**kw):
    from diffusers import LCMScheduler
    return LCMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", **kw)


# ---------------------------------------------------------------- grid, scalings, guidance embedding

def test_grid_is_19_to_999_and_matches_lcm_training_schedule():
    grid = solver.ddim_timesteps(1000, 50)
    assert grid.dtype == torch.long and grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999 and len(grid) == 50
    for n in (50, 25, 10):
        sched = _lcm_scheduler(original_inference_steps=n)
        sched.set_timesteps(n)  # all N points of the training grid, descending
        assert sorted(sched.timesteps.tolist()) == solver.ddim_timesteps(1000, n).tolist()
    assert solver.skip_size(1000, 50) == 20
    assert solver.previous_timesteps(torch.tensor([19, 39, 999]), 20).tolist() == [0, 19, 979]


def test_grid_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        solver.ddim_timesteps(1000, 0)


def test_boundary_scalings_equal_lcm_scheduler_for_all_t():
    sched = _lcm_scheduler()
    t = torch.arange(1000)
    c_skip, c_out = solver.boundary_scalings(t)
    ref = [sched.get_scalings_for_boundary_condition_discrete(int(i)) for i in t]
    assert torch.allclose(c_skip, torch.tensor([r[0] for r in ref], dtype=torch.float32), rtol=1e-6, atol=0)
    assert torch.allclose(c_out, torch.tensor([r[1] for r in ref], dtype=torch.float32), rtol=1e-6, atol=0)
    # hand values: t = 0 -> identity; t = 19 -> u = 190, c_skip = 0.25 / (36100.25)
    assert c_skip[0] == 1 and c_out[0] == 0
    assert math.isclose(float(c_skip[19]), 0.25 / 36100.25, rel_tol=1e-6)
    assert math.isclose(float(c_out[19]), 190 / math.sqrt(36100.25), rel_tol=1e-6)
    assert torch.allclose(c_skip + c_out ** 2, torch.ones(1000))  # c_skip + c_out^2 = 1 for sigma_data 0.5


def test_boundary_scalings_follow_sigma_data_and_scaling():
    c_skip, c_out = solver.boundary_scalings(torch.tensor([3]), sigma_data=1.0, timestep_scaling=1.0)
    assert math.isclose(float(c_skip), 1 / 10, rel_tol=1e-6) and math.isclose(float(c_out), 3 / math.sqrt(10), rel_tol=1e-6)


@pytest.mark.parametrize("dim", [256, 64, 7])
def test_guidance_embedding_equals_lcm_pipeline(dim):
    from diffusers import LatentConsistencyModelPipeline

    w = torch.cat([torch.linspace(0, 20, 101), torch.tensor([6.5, 5.0, 15.0])])
    ours = solver.guidance_embedding(w, dim)
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
    assert ours.shape == (len(w), dim)
    assert torch.equal(ours, ref)


def test_guidance_embedding_hand_values():
    emb = solver.guidance_embedding(torch.tensor([0.0, 0.001]), 4)  # half = 2, freqs [1, 1e-4]
    assert torch.allclose(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert torch.allclose(emb[1], torch.tensor([math.sin(1), math.sin(1e-4), math.cos(1), math.cos(1e-4)]))


# ---------------------------------------------------------------- x0 / eps, CFG, DDIM step

def _table(abar_at: dict[int, float]) -> torch.Tensor:
    table = torch.full((1000,), 0.5)
    for t, v in abar_at.items():
        table[t] = v
    return table


def test_x0_eps_hand_values_for_each_parameterisation():
    # abar = 0.64 -> a = 0.8, s = 0.6; z = 1.0, model output 0.5
    table, t = _table({100: 0.64}), torch.tensor([100])
    z, out = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 0.5)
    cases = {"epsilon": (0.875, 0.5),          # x0 = (1 - 0.6*0.5)/0.8
             "v_prediction": (0.5, 1.0),       # x0 = 0.8*1 - 0.6*0.5, eps = 0.8*0.5 + 0.6*1
             "sample": (0.5, 1.0)}             # eps = (1 - 0.8*0.5)/0.6
    for kind, (x0_ref, eps_ref) in cases.items():
        x0, eps = solver.x0_eps_from_output(out, z, table, t, kind)
        assert math.isclose(float(x0), x0_ref, rel_tol=1e-6), kind
        assert math.isclose(float(eps), eps_ref, rel_tol=1e-6), kind
    with pytest.raises(ValueError, match="prediction_type"):
        solver.x0_eps_from_output(out, z, table, t, "flow")


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_x0_eps_reconstruct_z_and_match_lcm_scheduler(kind):
    torch.manual_seed(0)
    sched = _lcm_scheduler(prediction_type=kind)
    t = torch.tensor([19, 499, 999])
    z, out = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    x0, eps = solver.x0_eps_from_output(out, z, sched.alphas_cumprod, t, kind)
    a, s = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1), (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1)
    assert torch.allclose(a * x0 + s * eps, z, atol=1e-4)  # z_t = a x0 + s eps for every parameterisation
    if kind == "v_prediction":  # v = a eps - s x0
        assert torch.allclose(a * eps - s * x0, out, atol=1e-5)
    # LCMScheduler.step's denoised output for each example is c_out x0 + c_skip z
    for j, tj in enumerate(t.tolist()):
        sched.set_timesteps(timesteps=[tj])
        denoised = sched.step(out[j:j + 1], tj, z[j:j + 1], return_dict=True).denoised
        ours = solver.consistency_output(z[j:j + 1], x0[j:j + 1], t[j:j + 1])
        assert torch.allclose(ours, denoised, atol=1e-5)


def test_guided_is_lcm_form_with_per_example_w():
    cond, uncond = torch.full((2, 1, 1, 1), 3.0), torch.full((2, 1, 1, 1), 1.0)
    out = solver.guided(cond, uncond, torch.tensor([0.0, 5.0]))
    assert out.flatten().tolist() == [3.0, 13.0]  # 3 + 5 (3 - 1)


def test_ddim_step_hand_value_and_matches_ddim_scheduler():
    # abar_prev = 0.36 -> z_prev = 0.6 x0 + 0.8 eps
    z_prev = solver.ddim_step(torch.full((1, 1, 1, 1), 2.0), torch.full((1, 1, 1, 1), -1.0), _table({80: 0.36}),
                              torch.tensor([80]))
    assert math.isclose(float(z_prev), 0.6 * 2 - 0.8, rel_tol=1e-6)
    from diffusers import DDIMScheduler

    for kind in ("epsilon", "v_prediction"):
        sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, prediction_type=kind)
        sched.set_timesteps(50)  # step ratio 20: t -> t - 20; the first grid point steps to abar_0
        torch.manual_seed(1)
        z, out = torch.randn(1, 4, 3, 3), torch.randn(1, 4, 3, 3)
        for t in (19, 39, 519, 999):
            t_ = torch.tensor([t])
            x0, eps = solver.x0_eps_from_output(out, z, sched.alphas_cumprod, t_, kind)
            ours = solver.ddim_step(x0, eps, sched.alphas_cumprod, solver.previous_timesteps(t_, 20))
            ref = sched.step(out, t, z, eta=0.0).prev_sample
            assert torch.allclose(ours, ref, atol=1e-5), (kind, t)


def test_add_noise_equals_ddpm():
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    torch.manual_seed(2)
    z0, eps, t = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2), torch.tensor([0, 400, 999])
    assert torch.allclose(solver.add_noise(z0, eps, sched.alphas_cumprod, t), sched.add_noise(z0, eps, t), atol=1e-6)


def test_consistency_output_hand_values():
    z, x0 = torch.full((2, 1, 1, 1), 4.0), torch.full((2, 1, 1, 1), 2.0)
    out = solver.consistency_output(z, x0, torch.tensor([0, 1]), sigma_data=0.5, timestep_scaling=1.0)
    # t = 0: z; t = 1: u = 1, c_skip = 0.25/1.25 = 0.2, c_out = 1/sqrt(1.25)
    assert math.isclose(float(out[0]), 4.0)
    assert math.isclose(float(out[1]), 0.2 * 4 + 2 / math.sqrt(1.25), rel_tol=1e-6)


# ---------------------------------------------------------------- losses (rglcd.losses)

def test_pseudo_huber_and_l2_hand_values():
    pred, target = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([0.0, 0.0, 1.0, 0.5])
    c = 0.5  # diffs 0, 1, -3, 0: sqrt(d^2 + 0.25) - 0.5 = 0, 0.618034, 2.541381, 0
    huber = (0 + (math.sqrt(1.25) - 0.5) + (math.sqrt(9.25) - 0.5) + 0) / 4
    assert math.isclose(float(lcd_loss(pred, target, "huber", c)), huber, rel_tol=1e-6)
    assert math.isclose(float(lcd_loss(pred, target, "l2")), (0 + 1 + 9 + 0) / 4, rel_tol=1e-6)
    # c = 0.001: pseudo-Huber ~ mean |d| for |d| >> c
    assert math.isclose(float(lcd_loss(pred, target, "huber", 0.001)), 4 / 4 - 0.001 / 2, rel_tol=1e-5)
    with pytest.raises(ValueError, match="huber, l2"):
        lcd_loss(pred, target, "l1")


def test_elementwise_lcd_loss_is_what_lcd_loss_averages():
    from rglcd.losses import lcd_loss_elementwise

    pred, target = torch.tensor([0.0, 1.0, -2.0, 0.5]), torch.tensor([0.0, 0.0, 1.0, 0.5])
    huber = lcd_loss_elementwise(pred, target, "huber", 0.5)
    assert torch.allclose(huber, torch.tensor([0.0, math.sqrt(1.25) - 0.5, math.sqrt(9.25) - 0.5, 0.0]))
    assert lcd_loss_elementwise(pred, target, "l2").tolist() == [0.0, 1.0, 9.0, 0.0]
    x, y = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    for kind in ("huber", "l2"):
        assert torch.equal(lcd_loss_elementwise(x, y, kind).mean(), lcd_loss(x, y, kind))
    with pytest.raises(ValueError, match="huber, l2"):
        lcd_loss_elementwise(pred, target, "l1")


def test_reward_loss_and_imagereward_hinge():
    assert math.isclose(float(reward_loss(torch.tensor([0.2, 0.4]), beta=2.0)), -0.6, rel_tol=1e-6)
    r = torch.tensor([-1.0, 1.5, 2.0, 3.0], requires_grad=True)
    hinged = imagereward_hinge(r)
    assert hinged.tolist() == [-3.0, -0.5, 0.0, 0.0]
    hinged.sum().backward()
    assert r.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # no gradient once r >= 2
