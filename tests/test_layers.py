"""Correctness of every layer variant: per-sample independence, gradients, shapes and dtypes."""

import pytest
import torch
from arch_variants import BASE, VARIANTS
from torch.utils._python_dispatch import TorchDispatchMode

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


@pytest.mark.parametrize("name", NAMES)
def test_an_empty_batch_gives_an_empty_output(name):
    """As the static and attention models do; the dynamic ones failed on a grouped conv of no
    groups and on reshaping no elements to an inferred width."""
    cfg = VARIANTS[name]
    out = build(cfg)(torch.randn(0, 3, *cfg.img_size))
    assert out.shape == (0, cfg.num_classes)
    out.sum().backward()


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


def test_tracing_with_fake_tensors_leaves_the_adaptive_pool_working_on_real_ones():
    """The pool's cached averaging matrices were shared with fake tensors (what memory and flop
    estimators trace with): after one fake pass every real pass on that grid failed, and the reverse."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from layers.pooling import adaptive_avg_pool

    x = torch.randn(1, 11, 6, 4)  # a grid no other test pools
    expected = torch.nn.functional.adaptive_avg_pool2d(x.permute(0, 3, 1, 2), 3).permute(0, 2, 3, 1)
    for _ in range(2):  # fake first, then real; and again, real cached first, then fake
        with FakeTensorMode() as mode:
            assert adaptive_avg_pool(mode.from_tensor(x), 3).shape == (1, 3, 3, 4)
        torch.testing.assert_close(adaptive_avg_pool(x, 3), expected)


@pytest.mark.parametrize("name", ["adaptive", "conv"])
def test_kernel_predictors_read_channels_last_maps_as_their_convs_would(name):
    """The 1x1 convs run as matmuls on the channels-last map, with the Conv2d parameters that
    published checkpoints hold: the kernel must be the one the convs give on the usual layout."""
    from layers.kernel_predictors import create_kernel_predictor

    torch.manual_seed(0)
    predictor = create_kernel_predictor(name, 8, 3, "gelu")
    pooled = torch.randn(2, predictor.grid, predictor.grid, 8)
    torch.testing.assert_close(predictor(pooled), predictor.mlp(pooled.permute(0, 3, 1, 2)))


@pytest.mark.parametrize("factored", [False, True], ids=["weight built", "factored"])
@pytest.mark.parametrize("gate", ["none", "scalar", "sigmoid"])
@pytest.mark.parametrize("unit1", [False, True], ids=["none", "unit1"])
def test_factored_linear_gradients_are_exact(unit1, gate, factored):
    from layers.dynamic_linear import _FactoredLinear

    torch.manual_seed(0)
    batch, tokens, inp, out, rank = 2, 5, 4, 6, 3
    shapes = [(batch, tokens, inp), (inp, out), (out,), (batch, rank, inp), (batch, rank, out)]
    inputs = [torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes]
    scale = {"none": None, "scalar": torch.tensor(0.7), "sigmoid": torch.rand(batch, 1, out)}[gate]
    scale = scale if scale is None else scale.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: _FactoredLinear.apply(*a, unit1, factored), (*inputs, scale))


def test_a_second_derivative_through_the_factored_linear_is_refused_not_wrong():
    """Its backward saves Z, the Gram matrix and the norm as constants: differentiated again, it
    gave second derivatives off by 0.5 % (factored route) or failed on an in-place write."""
    torch.manual_seed(0)
    layer = layers.DynamicLinear(16, 64, layers.DynamicConfig()).double()
    x = torch.randn(2, 3, 4, 16, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.square().sum().backward()


def _reference_forward(layer, x):
    """The layer's formula written plainly: x (W0 + g(norm(dW))) + b, the per-sample weight built whole."""
    tokens = x.flatten(1, 2)
    return (torch.baddbmm(layer.bias, tokens, layer.weight + layer.delta(x))).view(*x.shape[:3], -1)


@pytest.mark.parametrize("tokens", [(2, 3), (14, 14)], ids=["factored", "weight built"])
def test_dynamic_linear_matches_its_formula_forward_and_backward(tokens):
    torch.manual_seed(0)
    layer = layers.DynamicLinear(16, 64, layers.DynamicConfig(gate="sigmoid")).double()
    x = torch.randn(3, *tokens, 16, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    expected = _reference_forward(layer, x)
    expected_grads = torch.autograd.grad(expected.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(y, expected)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want)


class _OpWatch(TorchDispatchMode):
    """Records the ATen ops a forward runs."""

    def __init__(self):
        super().__init__()
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket)
        return func(*args, **(kwargs or {}))


def test_a_gate_reads_the_mean_context_token_and_a_layer_without_one_takes_no_mean():
    from layers.gating import create_gate

    torch.manual_seed(0)
    gate, context = create_gate("sigmoid", 8, 4, channel_dim=-1), torch.randn(2, 5, 8)
    torch.testing.assert_close(gate.scale(context, 3), torch.sigmoid(gate.proj(context.mean(dim=1))).view(2, 1, 4))
    dyn = layers.DynamicConfig(gate="none")
    for layer in (layers.DynamicLinear(8, 16, dyn), layers.DynamicDWConv(8, 3, dyn)):
        with torch.no_grad(), _OpWatch() as watch:
            layer(torch.randn(2, 6, 6, 8))
        assert torch.ops.aten.mean not in watch.ops, type(layer).__name__


class _WeightWatch(TorchDispatchMode):
    """Counts the tensors of a per-sample weight's shape that a forward creates, by dtype."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape, self.dtypes = shape, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.shape == self.shape:
                self.dtypes.append(t.dtype)
        return out


@pytest.mark.parametrize("grid", [(4, 6), (14, 14)], ids=["factored", "weight built"])
def test_autocast_builds_the_per_sample_weight_in_bfloat16_only(grid):
    torch.manual_seed(0)
    layer = layers.DynamicLinear(16, 64, layers.DynamicConfig())
    x = torch.randn(2, *grid, 16)
    with torch.no_grad():
        full = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16), _WeightWatch((2, 16, 64)) as watch:
            half = layer(x)
    assert half.dtype == torch.bfloat16 and torch.float32 not in watch.dtypes
    torch.testing.assert_close(half.float(), full, rtol=0.05, atol=0.02)


def test_small_grids_never_form_the_per_sample_weight_while_costing_counts_it():
    """On a 4 x 6 grid the layer works on the rank-r factors (docs/design.md section 2.2), while
    costing on meta tensors takes the weight-building route that the GMACs convention counts."""
    torch.manual_seed(0)
    layer = layers.DynamicLinear(16, 64, layers.DynamicConfig(gate="sigmoid"))
    x = torch.randn(2, 4, 6, 16, requires_grad=True)
    with _WeightWatch((2, 16, 64)) as watch:
        layer(x).sum().backward()
    assert watch.dtypes == []
    with _WeightWatch((2, 16, 64)) as watch:
        layers.count_macs(layer.to("meta"), x.detach().to("meta"))
    assert watch.dtypes


def test_float16_update_sums_cannot_overflow_before_their_scale():
    """Terms of 1.6e4 summed over 64 context tokens overflow float16 (max 65504) unless scaled first."""
    from layers.linear_predictors import FactorHead, LinearPredictor

    head = FactorHead(16, 16, LinearPredictor(act_a=False, act_b=False), rank_ratio=4, hyper_depth=1, act="silu")
    with torch.no_grad():
        head.proj[-1].weight.fill_(0.05)
        head.proj[-1].bias.zero_()
        head.u.fill_(1.0)
        head.v.fill_(1.0)
    head = head.half()
    context = torch.full((1, 64, 16), 40.0, dtype=torch.float16)  # h = 32, A = B = 128 per entry
    scale = 1.0 / (4 * 64)
    assert not torch.isfinite(head(context) * scale).all()  # scaled after the sum: inf
    left, right = head.factors(context, scale)
    dw = torch.bmm(left.transpose(1, 2), right)
    assert torch.isfinite(dw).all()
    torch.testing.assert_close(dw.float(), torch.full((1, 16, 16), 128.0 * 128.0 * 64 * scale))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_drop_path_draws_and_scales_as_timms_does(dtype):
    """The layers' own DropPath: the same output as timm's for the same seed (a seeded run trains
    the same model without timm), the identity in eval and at rate 0."""
    from timm.layers import DropPath as TimmDropPath

    from layers.stochastic_depth import DropPath

    x = torch.randn(64, 3, 3, 8, dtype=dtype)
    outputs = []
    for module in (DropPath(0.3), TimmDropPath(0.3)):
        torch.manual_seed(0)
        outputs.append(module.train()(x))
    assert torch.equal(*outputs)
    assert 0 < (outputs[0] == 0).all(dim=(1, 2, 3)).sum() < 64  # whole samples dropped, not all
    assert DropPath(0.3).eval()(x) is x and DropPath(0.0).train()(x) is x


def test_the_presets_floor_pool_on_too_small_a_grid_says_so():
    """The published rounding keeps no window on a grid side below the pool's: a 16 px input to the
    tiny preset ended in avg_pool2d's 'Output size is too small'."""
    model = layers.create_model(layers.PRESETS["weightformer_tiny"])
    with pytest.raises(ValueError, match=r"pool in floor rounding needs a token grid of at least 2 x 2, got 1 x 1"):
        model(torch.randn(1, 3, 16, 16))


def test_an_mlp_ratio_that_leaves_no_units_is_refused():
    with pytest.raises(layers.ConfigError, match=r"mlp_ratio: 0\.001 gives an MLP of no units"):
        layers.ArchConfig(embed_dim=16, mlp_ratio=0.001)


def test_a_placement_that_selects_no_block_is_refused():
    """Depth 2 with every 5, offset 4 built an all-static model that reports and fronts labelled dynamic."""
    with pytest.raises(layers.ConfigError, match="offset: no block of 2 is a dynamic block"):
        layers.ArchConfig(mixer="dynamic", depth=2, every=5, offset=4)
