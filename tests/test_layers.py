"""Correctness of every layer variant: per-sample independence, gradients, shapes and dtypes."""

import pytest
import torch
from arch_variants import BASE, VARIANTS

import layers

NAMES = sorted(VARIANTS)


def build(cfg, seed=0, noise=0.0):
    """A model; with ``noise``, moved off the init, where dW is too small to show up in the output
    and a zero-initialised gate would block the hypernetwork's gradient."""
    torch.manual_seed(seed)
    model = layers.create_model(cfg)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(noise * torch.randn_like(parameter))
    return model


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_each_sample_depends_only_on_itself(name, mode):
    cfg = VARIANTS[name]
    model = build(cfg, noise=0.2).train(mode == "train")
    torch.manual_seed(1)
    images = torch.randn(4, 3, *cfg.img_size)
    changed = images.clone()
    changed[2] = torch.randn(3, *cfg.img_size) * 3
    with torch.no_grad():
        before, after = model(images), model(changed)
    others = [0, 1, 3]
    torch.testing.assert_close(after[others], before[others], rtol=0, atol=1e-5)
    assert not torch.allclose(after[2], before[2])


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name):
    cfg = VARIANTS[name]
    model = build(cfg, noise=0.05)
    images, labels = torch.randn(3, 3, *cfg.img_size), torch.tensor([0, 1, 2])
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    for pname, parameter in model.named_parameters():
        assert parameter.grad is not None, pname
        assert torch.isfinite(parameter.grad).all(), pname
        assert parameter.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("img_size", [(16, 16), (20, 28), (28, 12), (12, 20)], ids=["4x4", "5x7", "7x3", "3x5"])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_on_square_non_square_and_odd_grids(name, img_size):
    cfg = VARIANTS[name]
    model = build(cfg.replace(img_size=img_size)).eval()
    features = model.forward_features(torch.randn(2, 3, *img_size))
    assert features.shape == (2, img_size[0] // 4, img_size[1] // 4, cfg.embed_dim)
    assert model.forward_head(features).shape == (2, cfg.num_classes)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_forward_in_float32_and_bfloat16(name, dtype):
    cfg = VARIANTS[name]
    model = build(cfg).eval().to(dtype)
    out = model(torch.randn(2, 3, *cfg.img_size, dtype=dtype))
    assert out.dtype == dtype and out.shape == (2, cfg.num_classes)
    assert torch.isfinite(out).all()


def test_bfloat16_agrees_with_float32():
    model = build(BASE).eval()
    images = torch.randn(2, 3, *BASE.img_size)
    with torch.no_grad():
        full = model(images)
        half = model.to(torch.bfloat16)(images.to(torch.bfloat16)).float()
    torch.testing.assert_close(half, full, rtol=0.1, atol=0.05)


def test_dynamic_weight_really_depends_on_the_input():
    model = build(BASE).eval()
    fc1 = model.blocks[0].mlp.fc1
    tokens = torch.randn(2, 5, 7, BASE.embed_dim)
    delta = fc1.delta(tokens)
    assert delta.shape == (2, BASE.embed_dim, BASE.mlp_hidden)
    assert not torch.allclose(delta[0], delta[1])
    # unit1 bounds every output column of dW below norm 1
    assert torch.linalg.vector_norm(delta, dim=1).max() < 1


def test_both_factor_association_orders_give_the_same_update():
    head = build(BASE).blocks[0].mlp.fc1.factors
    for tokens in (2, 400):  # small M takes the factor-first order, large M the core-first order
        context = torch.randn(3, tokens, BASE.embed_dim, dtype=torch.float64)
        head64 = head.double()
        h_a, h_b = head64.proj(context).split([head64.rank_in, head64.rank_out], dim=-1)
        expected = (head64.act_a(h_a) @ head64.u).transpose(1, 2) @ (head64.act_b(h_b) @ head64.v)
        torch.testing.assert_close(head64(context), expected)


def test_pools_handle_grids_the_pool_size_does_not_divide():
    tokens = torch.arange(25.0).view(1, 5, 5, 1)
    avg = layers.create_pool("avg2", 1)(tokens).flatten()
    assert avg.tolist() == [3.0, 5.0, 6.5, 13.0, 15.0, 16.5, 20.5, 22.5, 24.0]
    assert layers.create_pool("max2", 1)(tokens).flatten()[-1] == 24.0
    # floor rounding (the published model's) leaves out the last row and column
    assert layers.create_pool("avg2", 1, "floor")(tokens).flatten().tolist() == [3.0, 5.0, 13.0, 15.0]
    assert layers.create_pool("max2", 1, "floor")(tokens).flatten().tolist() == [6.0, 8.0, 16.0, 18.0]
    adaptive = layers.create_pool("adaptive3", 1)(torch.randn(2, 7, 5, 1))
    assert adaptive.shape == (2, 9, 1)


def test_adaptive_pools_fit_grids_smaller_than_their_output():
    cfg = BASE.replace(img_size=(8, 40), patch_size=4, dynamic={"pool": "adaptive4"})  # a 2 x 10 grid
    assert build(cfg)(torch.randn(1, 3, 8, 40)).shape == (1, 5)


def test_adaptive_pool_matches_torch():
    from layers.pooling import adaptive_avg_pool

    x = torch.randn(2, 13, 9, 4)
    for size in (1, 2, 3, 5):
        expected = torch.nn.functional.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), size).permute(0, 2, 3, 1)
        torch.testing.assert_close(adaptive_avg_pool(x, size), expected)
