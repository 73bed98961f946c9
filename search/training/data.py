"""Data sets as uint8 image tensors with a fixed, seeded train / validation split.

Small data sets live whole in memory and are moved once to the trial's device; batches are then
slices of device tensors and augmentation runs batched on the device (see ``augment.py``).
ImageFolder trees too large to hold stream from disk through DataLoader workers that only decode
and resize; everything after that is the same on-device path.

    digits       scikit-learn's 8x8 digits (1,797 glyphs, shipped with the package)
    digit-pairs  two of those glyphs at the two ends of an 8 x 40 canvas; the label is their sum
                 mod 10, so no single digit tells anything about it and only a model whose tokens
                 combine both ends can beat chance
    fashion-mnist  Debian's ``dataset-fashion-mnist`` files (or the same IDX files under ``root``)
    mnist        the four IDX files of the MNIST layout under ``root`` (MNIST, KMNIST, ...)
    cifar10/100  torchvision's format under a local ``root`` (never downloaded)
    imagefolder  ``root/train/<class>/*`` and optionally ``root/val/<class>/*`` (ImageNet layout)

``train_subset`` keeps a seeded random subset of any data set's training split (the validation
and test splits stay whole), for searches that must fit a small compute budget.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from layers import ConfigError, Registry, coerce_fields, load_yaml, save_yaml

DATASETS: Registry = Registry("data set")

# Images whose uint8 tensors would exceed this stay on disk and stream (bytes).
IN_MEMORY_LIMIT = 4 << 30
TRAIN_SUBSET_STREAM = 7919  # offset of the training subset's seed from the split's


class DataError(ValueError):
    """A data set that cannot be loaded as specified (missing root, empty folder...)."""


@dataclass(frozen=True)
class DataSpec:
    name: str = "digit-pairs"
    root: str | None = None  # cifar10 / cifar100 / imagefolder
    val_fraction: float = 0.2  # held out from the training data, with the split's own seed
    seed: int = 0
    img_size: int | None = None  # imagefolder: images are resized to this square size
    pairs: int = 6000  # digit-pairs: number of generated training canvases (validation: a sixth)
    train_subset: int | None = None  # train on this many images of the training split (seeded); None: all

    def __post_init__(self) -> None:
        coerce_fields(self)
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must be between 0 and 1, got {self.val_fraction}")
        if self.train_subset is not None and self.train_subset < 1:
            raise ConfigError("train_subset", f"must be at least 1 (or null for all), got {self.train_subset}")
        if self.img_size is not None and self.img_size < 1:
            raise ConfigError("img_size", f"must be at least 1 (or null for 224), got {self.img_size}")
        if self.pairs < 1:
            raise ConfigError("pairs", f"must be at least 1, got {self.pairs}")

    def save(self, path: Path) -> None:
        """Write the data set and its split as YAML (``data.yaml`` of an export)."""
        save_yaml(self, path)

    @classmethod
    def load(cls, path: Path) -> DataSpec:
        return load_yaml(cls, path, "data")


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about a data set, known without loading it."""

    img_size: tuple[int, int]
    in_chans: int
    num_classes: int


#: DataSpec keys that only some data sets read; every data set reads the others (the split's).
SOURCE_KEYS = ("root", "img_size", "pairs")


@dataclass(frozen=True)
class DataSource:
    info: Callable[[DataSpec], DataInfo]
    load: Callable[[DataSpec], Dataset]
    needs_root: bool = False
    reads: tuple[str, ...] = ()  # which of SOURCE_KEYS it reads


@dataclass
class Split:
    """uint8 images (N, C, H, W) and int64 labels (N,), held in memory."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def __reduce__(self):
        # Pickled as numpy arrays, which a process reads from Ray's object store in place, where
        # torch tensors would go through torch's own serialisation. The receiver copies them once
        # into tensors of its own: the store's pages are shared by every process on the node.
        return _split_from_arrays, (self.images.numpy(), self.labels.numpy())

    def to(self, device: torch.device | str, workers: int = 0) -> Split:
        """The split on ``device`` (``workers`` is for the streaming splits: held in memory, none decode)."""
        return Split(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index], self.labels[index])

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Batches of (uint8 images, labels) on ``device``; shuffled when a generator is given."""
        n = len(self)
        order = (
            None
            if generator is None
            else torch.randperm(n, generator=generator, device=generator.device).to(self.labels.device)
        )
        stop = n - n % batch_size if drop_last and n >= batch_size else n
        for start in range(0, stop, batch_size):
            index = slice(start, start + batch_size) if order is None else order[start : start + batch_size]
            yield self.images[index].to(device, non_blocking=True), self.labels[index].to(device, non_blocking=True)


def _split_from_arrays(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()))


class StreamingSplit:
    """An ImageFolder split decoded by DataLoader workers, for trees too large for memory.

    Its loaders keep their worker processes from epoch to epoch (one loader per batch size); only
    the sampling order is new each epoch, drawn from the trial's generator so that a resumed trial
    reads the images in the order an uninterrupted one would.
    """

    def __init__(self, folder: torch.utils.data.Dataset, labels: Tensor, workers: int = 0):
        self.folder, self.labels, self.workers = folder, labels, workers
        self._order = _Order(len(labels))
        self._loaders: dict[tuple[int, bool, bool], torch.utils.data.DataLoader] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str, workers: int = 0) -> StreamingSplit:
        """This split, decoded by ``workers`` processes (the trial's CPUs) from now on."""
        if workers != self.workers:
            self.workers, self._loaders = workers, {}
        return self

    def subset(self, index: Tensor) -> StreamingSplit:
        return StreamingSplit(torch.utils.data.Subset(self.folder, index.tolist()), self.labels[index], self.workers)

    def batches(
        self, batch_size: int, device: torch.device, generator: torch.Generator | None = None, drop_last: bool = False
    ) -> Iterator[tuple[Tensor, Tensor]]:
        if generator is None:
            self._order.indices = None
        else:  # one draw from the trial's (device) generator seeds this epoch's order
            seed = int(torch.randint(1 << 62, (1,), generator=generator, device=generator.device))
            self._order.indices = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed)).tolist()
        pin = device.type == "cuda"
        key = (batch_size, drop_last, pin)
        if key not in self._loaders:
            self._loaders[key] = torch.utils.data.DataLoader(
                self.folder,
                batch_size=batch_size,
                sampler=self._order,
                num_workers=self.workers,
                persistent_workers=self.workers > 0,
                # as Split.batches: a split smaller than one batch still gives one, never none
                drop_last=drop_last and len(self) >= batch_size,
                pin_memory=pin,
            )
        for images, labels in self._loaders[key]:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


class _Order(torch.utils.data.Sampler):
    """The indices a loader reads, in order; set anew before each pass (None: 0..n-1)."""

    def __init__(self, n: int):
        self.n, self.indices = n, None

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n) if self.indices is None else self.indices)


@dataclass
class Dataset:
    train: Split | StreamingSplit
    val: Split | StreamingSplit
    num_classes: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale
    std: tuple[float, ...]
    test: Split | StreamingSplit | None = None  # the official test split, when the data set has one

    @property
    def in_memory(self) -> bool:
        """Whether every split is held in memory, and so can be shipped whole to other nodes."""
        return all(isinstance(s, Split) for s in (self.train, self.val, self.test) if s is not None)


@functools.lru_cache(maxsize=4)
def load_dataset(spec: DataSpec) -> Dataset:
    """Load (once per process) the data set a spec names, with its seeded validation split."""
    source, _ = DATASETS.parse(spec.name)
    dataset = source.load(spec)
    if not len(dataset.train):  # every trial would be told the accuracy of an untrained model
        raise DataError(
            f"data set {spec.name!r}: val_fraction {spec.val_fraction} leaves no training image of {len(dataset.val)}"
        )
    if spec.train_subset is None or spec.train_subset >= len(dataset.train):
        return dataset
    # Its own stream of the split's seed: the subset never depends on how the source drew its split.
    order = torch.randperm(len(dataset.train), generator=torch.Generator().manual_seed(spec.seed + TRAIN_SUBSET_STREAM))
    return dataclasses.replace(dataset, train=dataset.train.subset(order[: spec.train_subset].sort().values))


def describe(spec: DataSpec) -> DataInfo:
    """Image size, channels and classes of a data set, refusing a missing root; loads no images."""
    source, _ = DATASETS.parse(spec.name)
    if source.needs_root:
        if not spec.root:
            raise DataError(f"data set {spec.name!r} reads from a local folder: set data.root")
        if not Path(spec.root).expanduser().is_dir():
            raise DataError(f"data set root {spec.root!r} does not exist or is not a folder")
    return source.info(spec)


def check_reads(spec: DataSpec) -> None:
    """Refuse a key set for a data set that does not read it: ``img_size`` given to cifar10 or a
    ``root`` to digits would otherwise be ignored without a word."""
    source, _ = DATASETS.parse(spec.name)
    for key in SOURCE_KEYS:
        if key not in source.reads and getattr(spec, key) != _DEFAULT_SPEC[key]:
            readers = [name for name in DATASETS.names() if key in DATASETS.parse(name)[0].reads]
            raise ConfigError(key, f"data set {spec.name!r} does not read {key} (only {', '.join(readers)} do)")


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A fixed random partition of range(n) into (train, validation) indices."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(n * val_fraction))
    return order[n_val:], order[:n_val]


def _holdout(images: Tensor, labels: Tensor, spec: DataSpec) -> tuple[Split, Split]:
    train, val = split_indices(len(labels), spec.val_fraction, spec.seed)
    return Split(images[train], labels[train]), Split(images[val], labels[val])


# ---------------------------------------------------------------------- embedded data
def _digit_glyphs() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = torch.from_numpy(np.clip(digits.images * 16, 0, 255).astype(np.uint8))  # 0..16 -> 0..255
    return glyphs.unsqueeze(1), torch.from_numpy(digits.target).long()


def load_digits(spec: DataSpec) -> Dataset:
    glyphs, labels = _digit_glyphs()
    train, val = _holdout(glyphs, labels, spec)
    return Dataset(train, val, num_classes=10, img_size=(8, 8), mean=(0.30,), std=(0.38,))


PAIR_CANVAS = (8, 40)  # H x W: one 8 x 8 glyph near each end, 22 pixels apart at the least
BLANK_FRACTION = 0.5  # training canvases with one end left blank (it counts as 0)


def make_pairs(glyphs: Tensor, labels: Tensor, count: int, seed: int, blank_fraction: float) -> Split:
    """``count`` canvases with a glyph at each end (jittered by up to 2 px); label (left + right) mod 10.

    For a uniform pair either digit alone leaves the label uniform: a model whose tokens never
    combine the two ends is at chance. Canvases with one end blank (a blank counts as 0, so the
    label is the other digit) teach what the digits are; ``blank_fraction`` of the canvases are
    such, and validation uses none, so its accuracy is that of the two-digit task alone.
    """
    rng = torch.Generator().manual_seed(seed)
    height, width = PAIR_CANVAS
    left = torch.randint(len(labels), (count,), generator=rng)
    right = torch.randint(len(labels), (count,), generator=rng)
    blank = torch.rand(count, generator=rng) < blank_fraction
    blank_left = blank & (torch.rand(count, generator=rng) < 0.5)
    blank_right = blank & ~blank_left
    jitter = torch.randint(0, 3, (count, 2), generator=rng)
    canvas = torch.zeros(count, 1, height, width, dtype=torch.uint8)
    sample, rows = torch.arange(count)[:, None, None], torch.arange(8)
    for side, (index, x0, hidden) in enumerate(((left, 0, blank_left), (right, width - 10, blank_right))):
        cols = x0 + jitter[:, side, None] + rows  # (count, 8)
        canvas[sample, 0, rows[None, :, None], cols[:, None, :]] = glyphs[index, 0] * (~hidden)[:, None, None]
    digit_left = torch.where(blank_left, 0, labels[left])
    digit_right = torch.where(blank_right, 0, labels[right])
    return Split(canvas, (digit_left + digit_right) % 10)


def load_digit_pairs(spec: DataSpec) -> Dataset:
    glyphs, labels = _digit_glyphs()
    train_glyphs, val_glyphs = split_indices(len(labels), spec.val_fraction, spec.seed)
    train = make_pairs(glyphs[train_glyphs], labels[train_glyphs], spec.pairs, spec.seed + 1, BLANK_FRACTION)
    val = make_pairs(glyphs[val_glyphs], labels[val_glyphs], max(1, spec.pairs // 6), spec.seed + 2, 0.0)
    return Dataset(train, val, num_classes=10, img_size=PAIR_CANVAS, mean=(0.10,), std=(0.25,))


# ---------------------------------------------------------------------- local data
def _cifar(spec: DataSpec, classes: int) -> Dataset:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if classes == 10 else CIFAR100
    root = str(Path(spec.root).expanduser())
    try:
        train_set, test_set = cls(root, train=True, download=False), cls(root, train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(f"no {cls.__name__} data under {spec.root!r}: {err}") from None

    def tensors(ds) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    train, val = _holdout(*tensors(train_set), spec)
    mean, std = (
        ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
        if classes == 10
        else ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
    )
    return Dataset(train, val, classes, (32, 32), mean, std, test=Split(*tensors(test_set)))


IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes, the only one the MNIST layout uses
GZIP_MAGIC = b"\x1f\x8b"
MNIST_FILES = {  # what each file of the MNIST layout holds: (file stem, IDX dimensions)
    "train_images": ("train-images-idx3-ubyte", 3),
    "train_labels": ("train-labels-idx1-ubyte", 1),
    "test_images": ("t10k-images-idx3-ubyte", 3),
    "test_labels": ("t10k-labels-idx1-ubyte", 1),
}
MNIST_CLASSES = 10
FASHION_MNIST_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist


def _open_idx(path: Path):
    """The file's bytes stream, gunzipped when it starts with gzip's magic (whatever its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == GZIP_MAGIC
    return gzip.open(path, "rb") if gzipped else open(path, "rb")


def _idx_shape(header: bytes, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions an IDX header declares, refusing anything but ``ndim`` dimensions of unsigned bytes."""
    magic = bytes((0, 0, IDX_UBYTE, ndim))
    if header[:4] != magic:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes (magic {header[:4].hex()}, expected {magic.hex()})"
        )
    if len(header) < 4 + 4 * ndim:
        raise DataError(f"{path} ends inside its IDX header")
    return tuple(int(d) for d in np.frombuffer(header, ">u4", count=ndim, offset=4))


def idx_shape(path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions of an IDX file, reading its header only."""
    try:
        with _open_idx(path) as f:
            return _idx_shape(f.read(4 + 4 * ndim), path, ndim)
    except (OSError, EOFError, zlib.error) as err:  # a truncated or corrupt gzip stream
        raise DataError(f"cannot read {path}: {err}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzipped or plain) of ``ndim``-d unsigned bytes as a uint8 array of its declared shape."""
    try:
        with _open_idx(path) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"cannot read {path}: {err}") from None
    shape = _idx_shape(raw, path, ndim)
    header = 4 + 4 * ndim
    if len(raw) - header != math.prod(shape):
        raise DataError(f"{path} holds {len(raw) - header} bytes of data, its header declares {shape}")
    # A copy: torch wants writable memory, and the bytes object is read-only.
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape).copy()


def _pixel_stats(images: Tensor) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of uint8 pixels on the 0..1 scale, from their histogram (no float copy of the images)."""
    counts = torch.bincount(images.flatten(), minlength=256).double()
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * levels).sum() / counts.sum())
    var = float((counts * (levels - mean) ** 2).sum() / counts.sum())
    return (mean,), (math.sqrt(var),)


@dataclass(frozen=True)
class IdxLayout:
    """A data set stored as the four IDX files of MNIST's layout, and where it is read from.

    The official train / test split is kept: the seeded validation split is held out of the
    training files, the test files become ``Dataset.test``.
    """

    name: str
    default_root: Path | None  # read when data.root is not set
    remedy: str  # what a user lacking the files should do, as the end of one sentence

    def files(self, spec: DataSpec) -> dict[str, Path]:
        folder = Path(spec.root).expanduser() if spec.root else self.default_root
        if folder is None:
            raise DataError(f"data set {self.name!r} reads from a local folder: set data.root")
        found = {key: _gzipped_or_plain(folder / stem) for key, (stem, _) in MNIST_FILES.items()}
        missing = [f"{MNIST_FILES[key][0]}[.gz]" for key, path in found.items() if path is None]
        if missing:
            raise DataError(f"{self.name}: no {', '.join(missing)} in {folder}: {self.remedy}")
        return found

    def info(self, spec: DataSpec) -> DataInfo:
        """Checks every file's header, so a wrong or missing file is refused before any trial runs."""
        shapes = {key: idx_shape(path, MNIST_FILES[key][1]) for key, path in self.files(spec).items()}
        return DataInfo(_check_idx_shapes(shapes, self.name), 1, MNIST_CLASSES)

    def load(self, spec: DataSpec) -> Dataset:
        arrays = {key: read_idx(path, MNIST_FILES[key][1]) for key, path in self.files(spec).items()}
        size = _check_idx_shapes({key: a.shape for key, a in arrays.items()}, self.name)
        tensors = {key: torch.from_numpy(a) for key, a in arrays.items()}
        for key in ("train_labels", "test_labels"):
            if int(tensors[key].max()) >= MNIST_CLASSES:
                raise DataError(
                    f"{self.name}: {key.replace('_', ' ')} go up to {int(tensors[key].max())}, past {MNIST_CLASSES - 1}"
                )
        train_images = tensors["train_images"].unsqueeze(1)  # (N, 1, H, W)
        train, val = _holdout(train_images, tensors["train_labels"].long(), spec)
        test = Split(tensors["test_images"].unsqueeze(1), tensors["test_labels"].long())
        mean, std = _pixel_stats(train.images)
        return Dataset(train, val, MNIST_CLASSES, size, mean, std, test=test)


def _gzipped_or_plain(path: Path) -> Path | None:
    return next((p for p in (path.with_name(path.name + ".gz"), path) if p.is_file()), None)


def _check_idx_shapes(shapes: dict[str, tuple[int, ...]], name: str) -> tuple[int, int]:
    """The image size the four files agree on; a DataError naming the disagreement otherwise."""
    for split in ("train", "test"):
        images, labels = shapes[f"{split}_images"], shapes[f"{split}_labels"]
        if images[0] == 0:
            raise DataError(f"{name}: the {split} images file holds no images")
        if images[0] != labels[0]:
            raise DataError(f"{name}: {images[0]} {split} images but {labels[0]} {split} labels")
    if shapes["train_images"][1:] != shapes["test_images"][1:]:
        raise DataError(
            f"{name}: train images are {shapes['train_images'][1:]}, test images {shapes['test_images'][1:]}"
        )
    return shapes["train_images"][1:]


FASHION_MNIST = IdxLayout(
    "fashion-mnist",
    FASHION_MNIST_ROOT,
    "apt-get install dataset-fashion-mnist (Debian's package), or set data.root to a folder holding them",
)
MNIST = IdxLayout("mnist", None, "data.root must hold the four IDX files of the MNIST layout")


def load_imagefolder(spec: DataSpec) -> Dataset:
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    train_root, val_root, size = _imagefolder_layout(spec)
    # Stored slightly larger than the training size so random crops have room (the 0.875 crop ratio).
    stored = math.ceil(size / 0.875)
    transform = v2.Compose(
        [v2.PILToTensor(), v2.Lambda(_rgb), v2.Resize(stored, antialias=True), v2.CenterCrop(stored)]
    )
    try:
        full = ImageFolder(str(train_root), transform=transform, loader=_decode)
        test = ImageFolder(str(val_root), transform=transform, loader=_decode) if val_root else None
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"no images under {spec.root!r}: {err}") from None
    classes = _imagefolder_classes(train_root, val_root)
    _relabel(full, classes, train_root, skip=val_root)
    if test is not None:
        _relabel(test, classes, val_root)
    labels = torch.tensor(full.targets)
    train_idx, val_idx = split_indices(len(full), spec.val_fraction, spec.seed)
    shape = (size, size)  # the model's input: train crops and eval centre crops of the stored images

    if len(full) * 3 * stored * stored > IN_MEMORY_LIMIT:

        def stream(folder, index: Tensor) -> StreamingSplit:
            return StreamingSplit(torch.utils.data.Subset(folder, index.tolist()), labels[index])

        test_split = StreamingSplit(test, torch.tensor(test.targets)) if test is not None else None
        return Dataset(
            stream(full, train_idx),
            stream(full, val_idx),
            len(full.classes),
            shape,
            _IMAGENET_MEAN,
            _IMAGENET_STD,
            test_split,
        )

    def in_memory(folder) -> Split:
        return Split(torch.stack([folder[i][0] for i in range(len(folder))]), torch.tensor(folder.targets))

    everything = in_memory(full)
    train = Split(everything.images[train_idx], labels[train_idx])
    val = Split(everything.images[val_idx], labels[val_idx])
    return Dataset(
        train,
        val,
        len(full.classes),
        shape,
        _IMAGENET_MEAN,
        _IMAGENET_STD,
        in_memory(test) if test is not None else None,
    )


def _decode(path: str):
    """torchvision's image loader, refusing an undecodable file by name (in a worker too)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError) as err:  # PIL's UnidentifiedImageError and truncated files are OSErrors
        raise DataError(f"cannot decode image {path}: {err}") from None


def _rgb(image: Tensor) -> Tensor:
    return image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]


def _imagefolder_layout(spec: DataSpec) -> tuple[Path, Path | None, int]:
    """Training folder (root/train, or root itself), test folder (root/val) if any, image size."""
    root = Path(spec.root).expanduser()
    train_root = root / "train" if (root / "train").is_dir() else root
    return (
        train_root,
        root / "val" if (root / "val").is_dir() else None,
        224 if spec.img_size is None else spec.img_size,
    )


def _imagefolder_classes(train_root: Path, val_root: Path | None) -> list[str]:
    """The class folders of the training images; val/ is the test split's, also where the training
    folder is the root itself."""
    return sorted(p.name for p in train_root.iterdir() if p.is_dir() and p != val_root)


def _relabel(folder, classes: list[str], root: Path, skip: Path | None = None) -> None:
    """Number ``folder``'s images by the training classes ``classes``, as the model does.

    ImageFolder numbers the class folders it finds itself: a val/ lacking one of the training
    classes would shift the labels of those after it, and a root that is itself the training folder
    would make val/ (``skip``) a class. A class the training images lack is refused.
    """
    index = {name: i for i, name in enumerate(classes)}
    left_out = {skip.name} if skip is not None and skip.parent == root else set()
    samples = [(path, folder.classes[label]) for path, label in folder.samples]
    unknown = sorted({name for _, name in samples} - set(index) - left_out)
    if unknown:
        raise DataError(f"{str(root)!r} has class folders that the training images lack: {', '.join(unknown)}")
    folder.samples = [(path, index[name]) for path, name in samples if name in index]
    folder.imgs = folder.samples  # ImageFolder's other name for the same list
    folder.targets = [label for _, label in folder.samples]
    folder.classes, folder.class_to_idx = list(classes), index


def _imagefolder_info(spec: DataSpec) -> DataInfo:
    train_root, val_root, size = _imagefolder_layout(spec)
    classes = _imagefolder_classes(train_root, val_root)
    if not classes:
        raise DataError(f"no class folders under {str(train_root)!r} (expected <root>/train/<class>/<images>)")
    return DataInfo((size, size), 3, len(classes))


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

DATASETS.register("digits")(DataSource(lambda spec: DataInfo((8, 8), 1, 10), load_digits))
DATASETS.register("digit-pairs")(
    DataSource(lambda spec: DataInfo(PAIR_CANVAS, 1, 10), load_digit_pairs, reads=("pairs",))
)
DATASETS.register("cifar10")(
    DataSource(lambda spec: DataInfo((32, 32), 3, 10), lambda spec: _cifar(spec, 10), True, reads=("root",))
)
DATASETS.register("cifar100")(
    DataSource(lambda spec: DataInfo((32, 32), 3, 100), lambda spec: _cifar(spec, 100), True, reads=("root",))
)
DATASETS.register("imagefolder")(DataSource(_imagefolder_info, load_imagefolder, True, reads=("root", "img_size")))
# Both read local files; fashion-mnist has a default folder, so it does not need data.root.
DATASETS.register("fashion-mnist")(DataSource(FASHION_MNIST.info, FASHION_MNIST.load, reads=("root",)))
DATASETS.register("mnist")(DataSource(MNIST.info, MNIST.load, True, reads=("root",)))
_DEFAULT_SPEC = dataclasses.asdict(DataSpec())
