"""What a fresh worker process pays for its data set: Ray's object store against the disk.

    python benchmarks/data_shipping.py            # about 3 minutes on a 2-core machine

Every segment of a GPU trial runs in a fresh process (``max_calls=1``), so no per-process cache
survives from one segment to the next. The driver therefore loads the data set once and ships it
through Ray's object store (``search.cluster.share_data``). For two data sets written here, a
CIFAR-10-sized one in torchvision's format (raw pixels: 50,000 + 10,000 random images) and an
image folder of PNGs that must be decoded, this times, each in a fresh Ray worker process,
(a) loading the data set from disk as a worker would without shipping, and (b) getting the data
set the driver shipped. The files were just written, so the disk is the page cache: a first read
from a real disk is slower still. Target: the image folder at least 5x faster from the store.
"""

from __future__ import annotations

import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.report import Target, exit_with, write  # noqa: E402
from search import cluster  # noqa: E402
from search.training.data import DataSpec, load_dataset  # noqa: E402

REPEATS = 3
CIFAR_FILE = 10_000  # images per file: five training files and a test file
FOLDER = {"classes": 10, "per_class": 300, "size": 48}  # 3,000 PNGs, stored at 64 px for img_size 56


def write_cifar10(root: Path) -> DataSpec:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (CIFAR_FILE, 3072), dtype=np.uint8), "labels": [0] * CIFAR_FILE}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return DataSpec(name="cifar10", root=str(root), val_fraction=0.1)


def write_image_folder(root: Path) -> DataSpec:
    rng = np.random.default_rng(0)
    for c in range(FOLDER["classes"]):
        (root / "train" / f"c{c}").mkdir(parents=True)
        for i in range(FOLDER["per_class"]):
            pixels = rng.integers(0, 256, (FOLDER["size"], FOLDER["size"], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "train" / f"c{c}" / f"{i}.png")
    return DataSpec(name="imagefolder", root=str(root), img_size=56)


def trust_files() -> None:
    import torchvision.datasets.cifar as cifar

    cifar.check_integrity = lambda *args, **kwargs: True  # random files have no official md5


@ray.remote(max_calls=1)
def from_disk(spec: DataSpec) -> float:
    trust_files()
    started = time.perf_counter()
    load_dataset(spec)
    return time.perf_counter() - started


@ray.remote(max_calls=1)
def from_object_store(shipped: list[ray.ObjectRef]) -> float:
    # A worker has imported the trial body, and so the data module, before it needs the data; the
    # reference sits in a list so that Ray fetches it here, under the timer.
    assert load_dataset is not None
    started = time.perf_counter()
    ray.get(shipped[0])
    return time.perf_counter() - started


def main() -> None:
    rows, targets = [], []
    trust_files()
    cluster.connect(None, cpus=1, gpus=0)
    for name, make in (("cifar10 (raw pixels)", write_cifar10), ("image folder (PNGs)", write_image_folder)):
        with tempfile.TemporaryDirectory() as folder:
            spec = make(Path(folder))
            shipped, line = cluster.share_data(spec, cpus=1, gpus=0)
            disk = [ray.get(from_disk.remote(spec)) for _ in range(REPEATS)]
            store = [ray.get(from_object_store.remote([shipped])) for _ in range(REPEATS)]
        ratio = statistics.median(disk) / statistics.median(store)
        size = line.split("(")[1].split(")")[0]
        rows.append(
            {
                "data set": name,
                "size": size,
                "from disk (s)": statistics.median(disk),
                "from the object store (s)": statistics.median(store),
                "disk / store": ratio,
                "runs: disk; store": f"{_s(disk)}; {_s(store)}",
            }
        )
        if "PNG" in name:
            targets.append(Target("image folder: disk / object store", ratio, 5.0, False))
    cluster.shutdown()
    notes = f"Local Ray, one node, medians of {REPEATS} fresh worker processes; the disk is the page cache."
    exit_with(write("data_shipping", "Data for fresh worker processes", rows, targets, notes))


def _s(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    main()
