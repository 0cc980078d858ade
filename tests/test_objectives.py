"""Training objectives on tiny latents whose expected values are worked out by hand in each test."""
import math

import pytest
import torch
from torch import nn

from humanim.training import objectives, schedules

SHAPE = (1, 1, 2, 2, 2)  # [B, C, T', h, w]


def close(actual, expected, tol=1e-6):
    return torch.allclose(torch.as_tensor(actual, dtype=torch.float64), torch.as_tensor(expected, dtype=torch.float64),
                          atol=tol, rtol=0)


def ddpm_state_at(alpha_bar):
    return schedules.ddpm_state(torch.tensor([alpha_bar]), torch.tensor([0]))


def test_targets_by_hand():
    x0, noise = torch.ones(SHAPE), torch.full(SHAPE, 2.0)
    ddpm = ddpm_state_at(0.64)  # signal 0.8, noise 0.6
    assert close(objectives.denoising_target("epsilon", x0, noise, ddpm), torch.full(SHAPE, 2.0))
    assert close(objectives.denoising_target("v", x0, noise, ddpm), torch.full(SHAPE, 0.8 * 2 - 0.6 * 1))
    flow = schedules.flow_state(torch.tensor([0.25]))
    assert close(objectives.denoising_target("flow", x0, noise, flow), torch.full(SHAPE, 2.0 - 1.0))
    # EDM, sigma 1, SVD scalings: x_t = 3, F = (x0 - c_skip x_t) / c_out = (1 - 1.5) / (-1 / sqrt 2) = sqrt(2) / 2
    edm = schedules.edm_state(torch.tensor([1.0]))
    assert close(objectives.denoising_target("edm", x0, noise, edm), torch.full(SHAPE, math.sqrt(2) / 2))


def test_x0_from_prediction_by_hand():
    # x0 = 1, eps = 2 at alpha_bar 0.64 gives x_t = 2.0; the exact eps (2) or v (1) must give back x0 = 1
    ddpm = ddpm_state_at(0.64)
    x_t = torch.full(SHAPE, 2.0)
    assert close(objectives.x0_from_prediction("epsilon", torch.full(SHAPE, 2.0), x_t, ddpm), torch.ones(SHAPE))
    assert close(objectives.x0_from_prediction("v", torch.full(SHAPE, 1.0), x_t, ddpm), torch.ones(SHAPE))
    # flow at t = 0.25: x_t = 0.75 + 0.5 = 1.25, v = 1 -> x0 = 1.25 - 0.25
    flow = schedules.flow_state(torch.tensor([0.25]))
    assert close(objectives.x0_from_prediction("flow", torch.ones(SHAPE), torch.full(SHAPE, 1.25), flow),
                 torch.ones(SHAPE))
    # EDM sigma 1: D = 0.5 * 3 + (-1 / sqrt 2) * (sqrt 2 / 2) = 1
    edm = schedules.edm_state(torch.tensor([1.0]))
    assert close(objectives.x0_from_prediction("edm", torch.full(SHAPE, math.sqrt(2) / 2), torch.full(SHAPE, 3.0), edm),
                 torch.ones(SHAPE))


@pytest.mark.parametrize("kind, state", [
    ("epsilon", schedules.ddpm_state(torch.tensor([0.9, 0.3]), torch.tensor([0, 1]))),
    ("v", schedules.ddpm_state(torch.tensor([0.9, 0.3]), torch.tensor([0, 1]))),
    ("flow", schedules.flow_state(torch.tensor([0.1, 0.8]))),
    ("edm", schedules.edm_state(torch.tensor([0.05, 20.0]))),
    ("edm", schedules.edm_state(torch.tensor([0.05, 20.0]), sigma_data=0.5, output_sign=1.0)),
    ("epsilon", schedules.edm_state(torch.tensor([0.5, 3.0]))),
])
def test_exact_target_recovers_x0(kind, state):
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 2, 2, 2, generator=generator, dtype=torch.float64)
    noise = torch.randn(2, 3, 2, 2, 2, generator=generator, dtype=torch.float64)
    x_t = schedules.add_noise(x0, noise, state)
    target = objectives.denoising_target(kind, x0, noise, state)
    assert close(objectives.x0_from_prediction(kind, target, x_t, state), x0, tol=1e-9)


def test_svd_edm_output_is_the_v_target_of_the_matching_variance_preserving_schedule():
    sigma = torch.tensor([0.5, 4.0], dtype=torch.float64)
    x0 = torch.randn(2, 1, 2, 2, 2, dtype=torch.float64)
    noise = torch.randn(2, 1, 2, 2, 2, dtype=torch.float64)
    alpha_bar = schedules.alpha_bar_from_sigma(sigma)
    vp = schedules.NoiseState("ddpm", alpha_bar.sqrt(), (1 - alpha_bar).sqrt(), sigma, torch.ones_like(sigma))
    assert close(objectives.denoising_target("edm", x0, noise, schedules.edm_state(sigma)),
                 objectives.denoising_target("v", x0, noise, vp), tol=1e-12)


def test_edm_kind_needs_an_edm_state():
    with pytest.raises(ValueError, match="edm"):
        objectives.x0_from_prediction("edm", torch.zeros(SHAPE), torch.zeros(SHAPE), ddpm_state_at(0.5))


def test_denoising_loss_with_weights_and_mask_by_hand():
    prediction = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]).reshape(SHAPE)
    target = torch.zeros(SHAPE)
    assert close(objectives.denoising_loss(prediction, target), (1 + 4 + 9 + 16) / 8)
    # mask keeps frame 0 only (cells 1, 2, 3, 4 squared): mean 30 / 4
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 2, 1, 1)
    assert close(objectives.denoising_loss(prediction, target, mask=mask), 30 / 4)
    # per-sample weight 0.5 halves it
    assert close(objectives.denoising_loss(prediction, target, weight=torch.tensor([0.5]), mask=mask), 15 / 4)
    # per-element weight: only the 4 at the last cell of frame 0 counts, 16 * 2 over 4 kept cells
    weight = torch.zeros(SHAPE)
    weight[0, 0, 0, 1, 1] = 2.0
    assert close(objectives.denoising_loss(prediction, target, weight=weight, mask=mask), 32 / 4)


def test_per_sample_weights_follow_the_batch_axis():
    prediction = torch.stack([torch.ones(1, 2, 2, 2), 3 * torch.ones(1, 2, 2, 2)])  # squared errors 1 and 9
    loss = objectives.denoising_loss(prediction, torch.zeros_like(prediction), weight=torch.tensor([1.0, 0.0]))
    assert close(loss, (1 * 8 + 0 * 8) / 16)


def test_mixing_by_hand():
    articulated, fresh = torch.ones(SHAPE), torch.zeros(SHAPE)
    # gamma 0.5: (0.5 * 0 + 0.5 * 1) / sqrt(0.25 + 0.25) = 1 / sqrt 2
    assert close(objectives.mix_articulated_noise(articulated, fresh, 0.5), torch.full(SHAPE, 1 / math.sqrt(2)))
    assert close(objectives.mix_articulated_noise(articulated, fresh, 0.0), articulated)
    assert close(objectives.mix_articulated_noise(articulated, fresh, 1.0), fresh)
    # per sample: gamma 0.2 -> 0.8 / sqrt(0.04 + 0.64)
    two = objectives.mix_articulated_noise(torch.ones(2, 1, 1, 1, 1), torch.zeros(2, 1, 1, 1, 1), torch.tensor([0.0, 0.2]))
    assert close(two.flatten(), [1.0, 0.8 / math.sqrt(0.68)])


@pytest.mark.parametrize("gamma", [0.3, "drawn"])
def test_mixing_keeps_unit_variance(gamma):
    generator = torch.Generator().manual_seed(0)
    samples, per_sample = 64, 2048
    articulated = torch.randn(samples, 2, 4, 16, 16, generator=generator, dtype=torch.float64)
    fresh = torch.randn(samples, 2, 4, 16, 16, generator=generator, dtype=torch.float64)
    if gamma == "drawn":
        gamma = objectives.draw_mixing_gamma(samples, 0.1, 0.9, generator).double()
        assert torch.all((gamma >= 0.1) & (gamma <= 0.9))
    mixed = objectives.mix_articulated_noise(articulated, fresh, gamma)
    count = samples * per_sample
    # sample variance of n unit Gaussians has standard deviation sqrt(2 / (n - 1)); allow 5 of them
    assert abs(mixed.var().item() - 1) < 5 * math.sqrt(2 / (count - 1))
    assert abs(mixed.mean().item()) < 5 / math.sqrt(count)


def test_gamma_range_is_checked():
    with pytest.raises(ValueError):
        objectives.draw_mixing_gamma(2, 0.5, 1.5)


def test_motion_loss_by_hand():
    predicted = torch.zeros(1, 2, 1, 2, 2)
    target = torch.zeros(1, 2, 1, 2, 2)
    target[0, 0, 0] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # x displacements; y stay 0
    visibility = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)  # top row visible
    # visible components: x 1, 2 and y 0, 0 -> L1 mean 3 / 4, L2 mean 5 / 4
    assert close(objectives.motion_loss(predicted, target, visibility, "l1"), 3 / 4)
    assert close(objectives.motion_loss(predicted, target, visibility.unsqueeze(1), "l2"), 5 / 4)


def test_zero_flow_warp_is_identity():
    latents = torch.randn(2, 3, 4, 5, 6, generator=torch.Generator().manual_seed(0))
    warped = objectives.warp_to_next_frame(latents, torch.zeros(2, 2, 3, 5, 6))
    assert close(warped, latents[:, :, :-1], tol=1e-6)


def test_warp_samples_bilinearly_at_the_source_by_hand():
    latents = torch.zeros(SHAPE)
    latents[0, 0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    flow = torch.zeros(1, 2, 1, 2, 2)
    flow[0, 0, 0, 0, 0] = 0.5  # cell (x 0, y 0) of frame 1 comes from x 0.5 of frame 0: (0 + 1) / 2
    flow[0, 1, 0, 1, 1] = -0.25  # cell (x 1, y 1) comes from y 0.75 of column 1: 0.25 * 1 + 0.75 * 3
    warped = objectives.warp_to_next_frame(latents, flow)[0, 0, 0]
    assert close(warped, [[0.5, 1.0], [2.0, 2.5]])


def test_geometric_consistency_by_hand():
    x0_prediction = torch.zeros(SHAPE)
    x0_prediction[0, 0, 0] = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    x0_prediction[0, 0, 1] = torch.tensor([[1.0, 5.0], [2.0, 0.0]])
    flow = torch.zeros(1, 2, 1, 2, 2)
    flow[0, 0, 0] = 0.5  # every source half a cell to the right: column 1 sources fall off the grid
    visibility = torch.tensor([[1.0, 1.0], [1.0, 0.0]]).reshape(1, 1, 2, 2)
    # kept: (0, 0) warped 0.5 vs 1 -> 0.25; (0, 1) warped 2.5 vs 2 -> 0.25; (1, 0) off grid; (1, 1) hidden
    assert close(objectives.geometric_consistency_loss(x0_prediction, flow, visibility), 0.25)


def test_geometric_consistency_is_zero_for_content_that_moves_with_the_flow():
    frame = torch.arange(12.0).reshape(3, 4)
    x0_prediction = torch.stack([frame, frame.roll(1, dims=1)]).reshape(1, 1, 2, 3, 4).requires_grad_()
    flow = torch.zeros(1, 2, 1, 3, 4)
    flow[0, 0] = -1.0  # frame 1 is frame 0 shifted one cell right; column 0 wraps and falls off the grid
    loss = objectives.geometric_consistency_loss(x0_prediction, flow, torch.ones(1, 1, 3, 4))
    assert close(loss, 0.0)
    loss.backward()
    assert x0_prediction.grad is not None


def test_regional_loss_by_hand_and_only_below_the_threshold():
    x0 = torch.zeros(2, 1, 2, 2, 2)
    x0_prediction = torch.zeros(2, 1, 2, 2, 2)
    x0_prediction[:, 0, 0, 0, 0] = 2.0
    x0_prediction[:, 0, 1, 1, 1] = 1.0
    face = torch.zeros(2, 1, 2, 2, 2)
    face[:, 0, :, 0, 0] = 1.0  # face at cell (0, 0) in both frames: errors 4 and 0
    state = schedules.ddpm_state(torch.linspace(0.99, 0.01, 1000), torch.tensor([100, 900]))
    # only sample 0 (t = 100 < 500) counts: (4 + 0) / 2
    assert close(objectives.regional_x0_loss(x0_prediction, x0, face, state, max_model_time=500), 2.0)
    empty = objectives.regional_x0_loss(x0_prediction.requires_grad_(), x0, face, state, max_model_time=50)
    assert close(empty, 0.0)
    empty.backward()  # a batch with nothing to supervise still back-propagates
    assert x0_prediction.grad is not None


def test_crop_faces_identity_and_by_hand():
    frames = torch.arange(16.0).reshape(1, 1, 4, 4).expand(1, 3, 4, 4)
    whole = objectives.crop_faces(frames, torch.tensor([[0.0, 0.0, 4.0, 4.0]]), size=4)
    assert close(whole, frames)
    # the right half's top-left 2 x 2 block is pixels (x 2..3, y 0..1): 2, 3, 6, 7
    block = objectives.crop_faces(frames, torch.tensor([[2.0, 0.0, 4.0, 2.0]]), size=2)
    assert close(block[0, 0], [[2.0, 3.0], [6.0, 7.0]])


class TinyArcFaceStandIn(nn.Module):
    """Stands in for ArcFace (not its weights): average colour per channel -> a fixed linear embedding."""

    def __init__(self):
        super().__init__()
        self.project = nn.Linear(3, 4, bias=False)
        with torch.no_grad():
            self.project.weight.copy_(torch.eye(4, 3))

    def forward(self, crops):
        return self.project(crops.mean(dim=(2, 3)))


def test_face_identity_loss_through_a_stand_in_arcface():
    arcface = TinyArcFaceStandIn()
    crops = torch.zeros(2, 3, 8, 8)
    crops[:, 0] = 1.0  # pure red -> embedding (1, 0, 0, 0)
    crops.requires_grad_()
    reference = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # cosines 1 / sqrt 2 and 1 -> losses 1 - 1 / sqrt 2 and 0
    loss = objectives.face_identity_loss(crops, reference, arcface)
    assert close(loss, (1 - 1 / math.sqrt(2)) / 2)
    assert close(objectives.face_identity_loss(crops, reference, arcface, valid=torch.tensor([True, False])),
                 1 - 1 / math.sqrt(2))
    loss.backward()
    assert crops.grad is not None and crops.grad.abs().sum() > 0
