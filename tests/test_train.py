"""Training: the schedule, NaN detection, checkpoint-exact resume, and batched augmentation."""

from __future__ import annotations

import dataclasses
import math
import sys

import pytest
import torch

import layers
from search.training.augment import RAND_AUGMENT_OPS, AugmentSpec, BatchAugment, apply_ops
from search.training.data import DataSpec, load_dataset
from search.training.trainer import NonFiniteLoss, Trainer, TrainSpec, _warmup_cosine, weight_decay_groups

DIGITS = DataSpec(name="digits")
ARCH = layers.ArchConfig(img_size=8, in_chans=1, num_classes=10, patch_size=2, embed_dim=16, depth=2, every=1, offset=0)


def trainer(spec: TrainSpec, seed: int = 0) -> Trainer:
    torch.manual_seed(seed)
    return Trainer(layers.create_model(ARCH), load_dataset(DIGITS), spec, torch.device("cpu"), seed)


def test_warmup_then_cosine():
    assert _warmup_cosine(0, 10, 100, 0.0) == pytest.approx(0.1)
    assert _warmup_cosine(9, 10, 100, 0.0) == pytest.approx(1.0)
    assert _warmup_cosine(55, 10, 100, 0.0) == pytest.approx(0.5)
    assert _warmup_cosine(100, 10, 100, 0.1) == pytest.approx(0.1)


def test_peak_lr_scales_with_batch_when_asked():
    assert TrainSpec(lr=5e-4, batch_size=1024, lr_reference_batch=512).peak_lr == pytest.approx(1e-3)


def test_training_learns_digits():
    torch.manual_seed(0)
    static = layers.create_model(ARCH.replace(mixer="static", embed_dim=32))
    t = Trainer(static, load_dataset(DIGITS), TrainSpec(epochs=5, batch_size=32, lr=5e-3), torch.device("cpu"), 0)
    for _ in range(5):
        t.train_epoch()
    assert t.evaluate() > 0.8


@pytest.mark.parametrize("weight_decay", [0.05, 0.0])
def test_weight_decay_groups_are_timms(weight_decay):
    """The optimizer the recipes were tuned with, timm's AdamW factory: same groups, same state."""
    import timm.optim

    model = layers.create_model(ARCH.replace(dynamic=dataclasses.replace(ARCH.dynamic, gate="sigmoid")))
    ours = torch.optim.AdamW(weight_decay_groups(model, weight_decay), lr=1e-3, weight_decay=0.0)
    theirs = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=weight_decay)
    assert ours.state_dict() == theirs.state_dict()
    assert [[id(p) for p in g["params"]] for g in ours.param_groups] == [
        [id(p) for p in g["params"]] for g in theirs.param_groups
    ]


def test_a_trainer_does_not_import_timm(monkeypatch):
    """Every GPU segment starts a fresh worker process, where importing timm would cost 0.5 s."""
    monkeypatch.setitem(sys.modules, "timm", None)  # makes any import of timm or its modules fail
    trainer(TrainSpec())


def test_nan_loss_raises():
    t = trainer(TrainSpec(epochs=2, batch_size=32, lr=1e9))
    with pytest.raises(NonFiniteLoss, match="non-finite training loss"):
        for _ in range(2):
            t.train_epoch()


def test_resume_from_a_checkpoint_is_exact():
    spec = TrainSpec(epochs=3, batch_size=64, lr=3e-3, augment=AugmentSpec(crop_padding=1))
    straight = trainer(spec)
    for _ in range(3):
        straight.train_epoch()
    first = trainer(spec)
    first.train_epoch()
    state = first.state_dict()
    resumed = trainer(spec, seed=0)
    resumed.load_state_dict(state)
    for _ in range(2):
        resumed.train_epoch()
    for a, b in zip(straight.model.state_dict().values(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_evaluation_at_another_size_resizes_the_images():
    t = trainer(TrainSpec(epochs=1))
    images = load_dataset(DIGITS).val.images[:5]
    assert t.augment.eval_batch(images).shape == (5, 1, 8, 8)
    assert t.augment.eval_batch(images, (12, 20)).shape == (5, 1, 12, 20)
    grids = []
    t.model.patch_embed.register_forward_hook(lambda module, inputs, out: grids.append(tuple(out.shape[-2:])))
    assert 0 <= t.evaluate(img_size=(12, 12)) <= 1
    assert set(grids) == {(6, 6)}  # the model ran on the 36 tokens of the larger input, not the 16 of 8x8


def test_evaluation_at_another_size_keeps_the_field_of_view_of_the_training_crop():
    """Images stored with a margin (ImageFolder: 16 px crops of 20 px images) were resized whole at
    another size: the margin, never seen at the training size, came into view."""
    images = torch.zeros(1, 1, 20, 20, dtype=torch.uint8)
    images[..., :2, :] = 255  # a band in the margin above the 16 x 16 training crop
    augment = BatchAugment(AugmentSpec(), (0.0,), (1 / 255,), (16, 16), 2, label_smoothing=0.0)
    assert augment.eval_batch(images).max() == 0
    larger = augment.eval_batch(images, (32, 32))
    # interpolation across the crop's edge leaves a quarter of the band in the first row, no more
    assert larger[..., 1:, :].max() == 0 and larger[..., 0, :].max() <= 255 / 4


FULL = AugmentSpec(
    crop_padding=2,
    flip=True,
    random_resized_crop=True,
    randaugment_ops=2,
    randaugment_magnitude=9,
    random_erasing=0.5,
    mixup=0.8,
    cutmix=1.0,
)


@pytest.mark.parametrize("channels", [1, 3])
def test_batched_augmentation_keeps_shapes_and_is_seeded(channels):
    images = torch.randint(0, 256, (16, channels, 20, 20), dtype=torch.uint8)
    labels = torch.randint(0, 5, (16,))
    augment = BatchAugment(FULL, (0.5,) * channels, (0.25,) * channels, (16, 16), 5, label_smoothing=0.1)
    x1, t1 = augment.train_batch(images, labels, torch.Generator().manual_seed(0))
    x2, t2 = augment.train_batch(images, labels, torch.Generator().manual_seed(0))
    assert x1.shape == (16, channels, 16, 16) and x1.dtype == torch.float32
    assert torch.equal(x1, x2) and torch.equal(t1, t2)
    torch.testing.assert_close(t1.sum(dim=1), torch.ones(16))
    assert augment.eval_batch(images).shape == (16, channels, 16, 16)


def test_rand_augment_colour_ops_draw_their_sign_per_sample():
    images = torch.full((2, 3, 4, 4), 128, dtype=torch.uint8)
    brightness = torch.full((2,), RAND_AUGMENT_OPS.index("brightness"))
    out = apply_ops(images, brightness, torch.tensor([-1.0, 1.0]), 0.5, RAND_AUGMENT_OPS)
    assert out[0].float().mean() < 128 < out[1].float().mean()


def test_rand_augment_is_per_sample_and_seeded():
    images = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8).repeat(64, 1, 1, 1)
    spec = AugmentSpec(randaugment_ops=2, randaugment_magnitude=9)
    augment = BatchAugment(spec, (0.5,) * 3, (0.25,) * 3, (16, 16), 10, 0.0)
    labels = torch.zeros(64, dtype=torch.long)
    x1, _ = augment.train_batch(images, labels, torch.Generator().manual_seed(3))
    x2, _ = augment.train_batch(images, labels, torch.Generator().manual_seed(3))
    x3, _ = augment.train_batch(images, labels, torch.Generator().manual_seed(4))
    assert torch.equal(x1, x2) and not torch.equal(x1, x3)
    assert len({tuple(v.flatten().tolist()) for v in x1}) > 30  # one image, many different outcomes


def test_rand_augment_magnitude_is_on_timms_scale(monkeypatch):
    """The recipes' magnitude 9 (timm's rand-m9: rotations up to 27 degrees) was read on a 0..30
    scale: rotations up to 9 degrees, a third of the augmentation the recipes asked for."""
    import search.training.augment as augment_module

    levels = []
    monkeypatch.setattr(augment_module, "apply_ops", lambda images, *args: levels.append(args[2]) or images)
    augment_module._rand_augment(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), 1, 9, torch.Generator())
    assert levels == [0.9]  # of each op's strongest effect, 30 degrees for a rotation
    with pytest.raises(layers.ConfigError, match=r"randaugment_magnitude: must be in 0\.\.10"):
        AugmentSpec(randaugment_magnitude=11)


@pytest.mark.parametrize("op", RAND_AUGMENT_OPS)
def test_rand_augment_ops_match_torchvision(op):
    """Each op, applied batched, equals torchvision's one-image op (up to rounding)."""
    from torchvision.transforms.v2 import functional as TF

    level, size = 0.5, 20
    reference = {
        "identity": lambda im: im,
        "auto_contrast": TF.autocontrast,
        "equalize": TF.equalize,
        "invert": TF.invert,
        "rotate": lambda im: TF.rotate(im, level * 30),
        "posterize": lambda im: TF.posterize(im, 8 - round(level * 4)),
        "solarize": lambda im: TF.solarize(im, 255 - level * 255),
        "color": lambda im: TF.adjust_saturation(im, 1 + level * 0.9),
        "contrast": lambda im: TF.adjust_contrast(im, 1 + level * 0.9),
        "brightness": lambda im: TF.adjust_brightness(im, 1 + level * 0.9),
        "sharpness": lambda im: TF.adjust_sharpness(im, 1 + level * 0.9),
        "translate_x": lambda im: TF.affine(
            im, angle=0.0, translate=[int(level * 0.45 * size), 0], scale=1.0, shear=[0.0, 0.0]
        ),
        "translate_y": lambda im: TF.affine(
            im, angle=0.0, translate=[0, int(level * 0.45 * size)], scale=1.0, shear=[0.0, 0.0]
        ),
    }
    images = torch.randint(0, 256, (8, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = apply_ops(images, torch.full((8,), RAND_AUGMENT_OPS.index(op)), torch.ones(8), level, RAND_AUGMENT_OPS)
    if op in reference:
        assert (out.int() - reference[op](images).int()).abs().max() <= 1
    else:  # shears: torchvision's shear is not a plain shear matrix; check it moves pixels, not the centre
        assert not torch.equal(out, images)
        assert torch.equal(out[..., size // 2, size // 2], images[..., size // 2, size // 2])


def test_rand_augment_never_waits_for_the_host(monkeypatch):
    """Meta tensors have no values: any .item(), .tolist(), nonzero() or mask indexing fails on
    them. Tensors made from host data would be copies the host waits for: none may be made."""

    def host_data(*args, **kwargs):
        raise AssertionError("a tensor made from host data")

    monkeypatch.setattr(torch, "tensor", host_data)
    monkeypatch.setattr(torch, "as_tensor", host_data)
    for channels in (1, 3):
        images = torch.empty(8, channels, 16, 16, dtype=torch.uint8, device="meta")
        choice = torch.empty(8, dtype=torch.long, device="meta")
        out = apply_ops(images, choice, torch.empty(8, device="meta"), 0.3, RAND_AUGMENT_OPS)
        assert out.shape == images.shape and out.dtype == torch.uint8


def test_shift_and_flip_differ_per_sample():
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    augment = BatchAugment(AugmentSpec(crop_padding=2, flip=True), (0.0,), (1 / 255,), (8, 8), 2, 0.0)
    x, _ = augment.train_batch(images, torch.zeros(32, dtype=torch.long), torch.Generator().manual_seed(1))
    distinct = {tuple(v.flatten().tolist()) for v in x}
    assert len(distinct) > 10  # offsets and flips are drawn per sample, not per batch
    assert not math.isnan(float(x.sum()))
