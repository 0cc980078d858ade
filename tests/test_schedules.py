"""Noise schedules against values worked out by hand or in closed form."""
import math

import pytest
import torch

from humanim.training import schedules


def close(actual, expected, tol=1e-6):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
                          atol=tol, rtol=0)


def test_linear_betas_and_alphas_cumprod():
    betas = schedules.ddpm_betas("linear", num_train_timesteps=3, beta_start=0.1, beta_end=0.3)
    assert close(betas, [0.1, 0.2, 0.3])
    # 0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7
    assert close(schedules.alphas_cumprod_from_betas(betas), [0.9, 0.72, 0.504])


def test_scaled_linear_betas_are_linear_in_sqrt_beta():
    betas = schedules.ddpm_betas("scaled_linear", num_train_timesteps=3, beta_start=0.01, beta_end=0.09)
    assert close(betas, [0.1**2, 0.2**2, 0.3**2])


def test_squaredcos_cap_v2_betas():
    def alpha_bar(f):
        return math.cos((f + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = schedules.ddpm_betas("squaredcos_cap_v2", num_train_timesteps=2)
    # the last step's alpha_bar(1) is cos(pi/2)^2 ~ 0, so its beta hits the 0.999 cap
    assert close(betas, [1 - alpha_bar(0.5) / alpha_bar(0.0), 0.999])


def test_unknown_beta_schedule_is_named():
    with pytest.raises(ValueError, match="cosine"):
        schedules.ddpm_betas("cosine")


def test_betas_round_trip_through_alphas_cumprod():
    assert close(schedules.betas_from_alphas_cumprod(torch.tensor([0.9, 0.72, 0.504], dtype=torch.float64)),
                 [0.1, 0.2, 0.3])


def test_snr_and_sigma_conversions():
    alpha_bar = torch.tensor([0.8, 0.5], dtype=torch.float64)
    assert close(schedules.snr_from_alpha_bar(alpha_bar), [4.0, 1.0])
    assert close(schedules.sigma_from_alpha_bar(alpha_bar), [0.5, 1.0])  # sqrt(0.2 / 0.8), sqrt(0.5 / 0.5)
    assert close(schedules.alpha_bar_from_snr(torch.tensor([4.0, 1.0])), [0.8, 0.5])
    assert close(schedules.alpha_bar_from_sigma(torch.tensor([0.5, 1.0])), [0.8, 0.5])


def test_ddpm_state_and_add_noise():
    alphas_cumprod = torch.tensor([0.9, 0.64, 0.36])
    state = schedules.ddpm_state(alphas_cumprod, torch.tensor([1, 2]))
    assert close(state.signal, [0.8, 0.6]) and close(state.noise, [0.6, 0.8])
    assert close(state.snr, [0.64 / 0.36, 0.36 / 0.64], tol=1e-5)
    assert state.model_time.tolist() == [1, 2]
    x0 = torch.ones(2, 1, 2, 2, 2)
    noise = torch.full((2, 1, 2, 2, 2), 2.0)
    x_t = schedules.add_noise(x0, noise, state)
    assert close(x_t[0], torch.full((1, 2, 2, 2), 0.8 + 0.6 * 2))
    assert close(x_t[1], torch.full((1, 2, 2, 2), 0.6 + 0.8 * 2))


def test_shifted_snr_by_hand():
    # alpha_bar 0.5 is SNR 1; gamma 0.5 gives SNR 0.25, i.e. alpha_bar 0.25 / 1.25 = 0.2
    assert close(schedules.shift_snr(torch.tensor([0.5], dtype=torch.float64), 0.5), [0.2])


def test_shifted_snr_identity_at_gamma_one_and_scales_snr_by_gamma_squared():
    alphas_cumprod = schedules.alphas_cumprod_from_betas(schedules.ddpm_betas("scaled_linear", 50, 0.00085, 0.012))
    assert close(schedules.shift_snr(alphas_cumprod, 1.0), alphas_cumprod, tol=1e-12)
    for gamma in (0.3, 0.7):
        shifted = schedules.shift_snr(alphas_cumprod, gamma)
        ratio = schedules.snr_from_alpha_bar(shifted) / schedules.snr_from_alpha_bar(alphas_cumprod)
        assert close(ratio, torch.full_like(ratio, gamma**2), tol=1e-9)
        assert torch.all(shifted < alphas_cumprod)  # noisier at every step


def test_shifted_snr_rejects_gamma_outside_unit_interval():
    with pytest.raises(ValueError):
        schedules.shift_snr(torch.tensor([0.5]), 1.5)


def test_edm_preconditioning_as_svd_uses_it():
    p = schedules.edm_preconditioning(torch.tensor([1.0, math.exp(4.0)]))
    # sigma = 1, sigma_data = 1: c_skip = 1/2, c_out = -1/sqrt(2), c_in = 1/sqrt(2), c_noise = ln(1) / 4 = 0
    assert close(p.c_skip[0], 0.5) and close(p.c_out[0], -1 / math.sqrt(2)) and close(p.c_in[0], 1 / math.sqrt(2))
    assert close(p.c_noise, [0.0, 1.0], tol=1e-6)


def test_edm_preconditioning_karras_convention():
    p = schedules.edm_preconditioning(torch.tensor([0.5]), sigma_data=0.5, output_sign=1.0)
    # sigma = sigma_data = 0.5: total 0.5; c_skip 0.5, c_out 0.25 / sqrt(0.5), c_in 1 / sqrt(0.5)
    assert close(p.c_skip, [0.5]) and close(p.c_out, [0.25 / math.sqrt(0.5)]) and close(p.c_in, [math.sqrt(2)])


def test_edm_state_is_variance_exploding():
    state = schedules.edm_state(torch.tensor([2.0]))
    x_t = schedules.add_noise(torch.ones(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 3.0), state)
    assert close(x_t.flatten(), [1 + 2 * 3])
    assert close(state.input_scale, [1 / math.sqrt(5)]) and close(state.model_time, [0.25 * math.log(2)])


def test_edm_training_sigmas_are_log_normal():
    assert close(schedules.sample_edm_sigmas(4, p_mean=0.7, p_std=0.0), torch.full((4,), math.exp(0.7)), tol=1e-5)
    generator = torch.Generator().manual_seed(0)
    log_sigma = schedules.sample_edm_sigmas(20000, p_mean=-1.2, p_std=1.2, generator=generator).log()
    # mean of 20000 draws has standard error 1.2 / sqrt(20000) ~ 0.0085; allow 5 of them
    assert abs(log_sigma.mean().item() + 1.2) < 5 * 1.2 / math.sqrt(20000)


def test_karras_sigmas_by_hand():
    # rho = 2, from 9 to 1: sqrt spacing 3, 2, 1 -> 9, 4, 1, then the final 0
    assert close(schedules.karras_sigmas(3, sigma_min=1.0, sigma_max=9.0, rho=2.0), [9.0, 4.0, 1.0, 0.0])
    sigmas = schedules.karras_sigmas(25)
    assert close(sigmas[[0, -2, -1]], [80.0, 0.002, 0.0], tol=1e-9)
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_flow_time_shift_by_hand():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert close(schedules.shift_flow_time(t, 3.0), [0.0, 0.75, 1.0])  # 1.5 / (1 + 2 * 0.5)
    assert close(schedules.shift_flow_time(t, 1.0), t)


def test_flow_training_times_are_logit_normal():
    assert close(schedules.sample_flow_times(3, logit_mean=0.0, logit_std=0.0), [0.5, 0.5, 0.5])
    assert close(schedules.sample_flow_times(2, logit_mean=0.0, logit_std=0.0, shift=3.0), [0.75, 0.75])
    t = schedules.sample_flow_times(1000, generator=torch.Generator().manual_seed(0))
    assert torch.all((t > 0) & (t < 1))


def test_flow_inference_sigmas():
    assert close(schedules.flow_sigmas(2), [1.0, 0.5, 0.0])
    assert close(schedules.flow_sigmas(2, shift=3.0), [1.0, 0.75, 0.0])


def test_flow_state():
    state = schedules.flow_state(torch.tensor([0.25]))
    assert close(state.signal, [0.75]) and close(state.noise, [0.25]) and close(state.model_time, [250.0])
    x_t = schedules.add_noise(torch.ones(1, 1, 1, 1, 1), torch.full((1, 1, 1, 1, 1), 2.0), state)
    assert close(x_t.flatten(), [0.75 + 0.25 * 2])
