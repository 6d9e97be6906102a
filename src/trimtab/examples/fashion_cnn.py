"""Recipe for `example:fashion-cnn`: a small CNN trained on Fashion-MNIST on first use.

Data: Debian's `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist, idx files, gzip;
$TRIMTAB_FASHION_MNIST overrides the folder). Samples are float32 [1, 28, 28] in [0, 1],
input `input`, output `logits` [batch, 10].

Model: a stride-2 stem and two more conv(3x3)+BN+ReLU stages (32/64/128 channels, max-pooled)
and a 2-layer head, ~7.5 M multiply-adds per image: large enough that int8 beats fp32 on ONNX
Runtime CPU (U8S8 QDQ, 2 threads: ~1.35x at batch 8, ~2-3x at batch 32; a 16/32/64-channel
version was *slower* in int8, its convs too small to pay for Q/DQ), small enough to train in
~25 s on 2 cores (one epoch over the 60k training images, batch 64, AdamW with a one-cycle
schedule, seed 0, 2 threads). Test accuracy 0.901. The trained state is kept next to the ONNX
file (`weights-<recipe>.pt`, loaded with weights_only=True) so a rebuild does not retrain.

Calibration: 512 training images (a seeded pick); validation: the 10,000 labelled test images.
"""

from __future__ import annotations

import functools
import gzip
import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np

from trimtab.data.dataset import Sample
from trimtab.errors import InvalidDataError

log = logging.getLogger(__name__)

RECIPE = "fashion-cnn/2"
INPUT_NAME, OUTPUT_NAME = "input", "logits"
DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CHANNELS = (32, 64, 128)
HIDDEN = 256
EPOCHS, BATCH_SIZE, MAX_LR = 1, 64, 3e-3
TRAIN_THREADS, SEED = 2, 0
# The trained state is tied to the recipe: a new recipe retrains instead of reusing old weights.
WEIGHTS_FILE = f"weights-{RECIPE.replace('/', '-')}.pt"


# data ----------------------------------------------------------------------------------------
def data_dir() -> Path:
    return Path(os.environ.get("TRIMTAB_FASHION_MNIST", DEFAULT_DATA_DIR))


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzipped): 2 zero bytes, a type byte (0x08 = uint8), the
    number of dimensions, then each dimension as a big-endian uint32, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise InvalidDataError(f"{path} is not a uint8 idx file (header {raw[:4].hex()})")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise InvalidDataError(f"{path}: header says {dims} but holds {data.size} values")
    return data.reshape(dims)


@functools.lru_cache(maxsize=1)
def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) for split 'train' or 'test'."""
    folder = data_dir()
    paths = [folder / FILES[f"{split}_images"], folder / FILES[f"{split}_labels"]]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise InvalidDataError(
            f"Fashion-MNIST files not found: {', '.join(missing)}",
            hint="apt-get install dataset-fashion-mnist, or set TRIMTAB_FASHION_MNIST to a folder with the idx .gz files",
        )
    images, labels = (read_idx(path) for path in paths)
    if len(images) != len(labels):
        raise InvalidDataError(f"{len(images)} images but {len(labels)} labels in {folder} ({split})")
    return images, labels


def transform():
    """For user images: the data stage's "fashion-mnist" preset (28x28 grayscale, x / 255)."""
    from trimtab.data.transforms import ImageTransform

    return ImageTransform.preset("fashion-mnist", input_name=INPUT_NAME)


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 [..., 28, 28] -> float32 [..., 1, 28, 28] in [0, 1]."""
    return (images.astype(np.float32) / 255.0)[..., None, :, :]


def _samples(images, labels, indices, split: str) -> list[Sample]:
    pixels = to_input(images[indices])
    return [
        Sample({INPUT_NAME: pixels[row]}, int(labels[index]), f"fashion-mnist:{split}[{index}]")
        for row, index in enumerate(indices)
    ]


def calibration_samples(size: int) -> list[Sample]:
    """`size` training images, a seeded permutation's prefix (the same images for any size)."""
    images, labels = load_split("train")
    order = np.random.default_rng(SEED).permutation(len(images))[: min(size, len(images))]
    return _samples(images, labels, order, "train")


def validation_samples() -> list[Sample]:
    images, labels = load_split("test")
    return _samples(images, labels, np.arange(len(images)), "test")


# model ---------------------------------------------------------------------------------------
def make_network():
    """conv(s2) 1->32 @14x14, conv 32->64, maxpool -> 7x7, conv 64->128, maxpool -> 3x3, then
    Linear(1152, 256)-ReLU-Dropout-Linear(10); every conv is 3x3 + BN + ReLU. The stride-2 stem
    keeps training cheap while the 64/128-channel convs give int8 GEMMs worth speeding up."""
    from torch import nn

    def conv_bn_relu(width_in: int, width_out: int, stride: int = 1) -> list:
        # bias=False: the BatchNorm that follows supplies it (and folds into the conv on export)
        conv = nn.Conv2d(width_in, width_out, 3, stride=stride, padding=1, bias=False)
        return [conv, nn.BatchNorm2d(width_out), nn.ReLU()]

    stem, middle, last = CHANNELS
    return nn.Sequential(
        *conv_bn_relu(1, stem, stride=2),
        *conv_bn_relu(stem, middle),
        nn.MaxPool2d(2),
        *conv_bn_relu(middle, last),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(last * 3 * 3, HIDDEN),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Linear(HIDDEN, 10),
    )


def build(path: Path) -> None:
    import torch

    from trimtab.load.torch_export import export_module

    network = trained_network(path.parent / WEIGHTS_FILE)
    export_module(network, {INPUT_NAME: torch.zeros(1, 1, 28, 28)}, path, output_names=[OUTPUT_NAME])


def trained_network(weights: Path):
    """The trained network, from `weights` when it loads, else trained now and saved there."""
    import torch

    if weights.is_file():
        network = make_network()
        try:
            network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            return network.eval()
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as exc:
            # a truncated or foreign file: retrain rather than fail
            log.warning("could not load %s (%s); retraining", weights, exc)
    # Seed init, shuffling and dropout without disturbing the caller's global RNG.
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        network = make_network()
        train(network)
    _save_state(network, weights)
    return network.eval()


def _save_state(network, weights: Path) -> None:
    import io

    import torch

    from trimtab._io import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(network.state_dict(), buffer)
    atomic_write_bytes(weights, buffer.getvalue())


def train(network) -> None:
    """One epoch of AdamW + one-cycle LR over all 60k training images (batch 64), 2 threads.
    The caller seeds torch (init, shuffling and dropout all draw from it)."""
    import torch

    images, labels = load_split("train")
    inputs = torch.from_numpy(to_input(images))
    targets = torch.from_numpy(labels.astype(np.int64))
    steps_per_epoch = len(inputs) // BATCH_SIZE
    optimizer = torch.optim.AdamW(network.parameters(), lr=MAX_LR, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LR, total_steps=EPOCHS * steps_per_epoch)
    started, threads = time.perf_counter(), torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)  # same speed and result on any machine of >= 2 cores
    try:
        network.train()
        for epoch in range(EPOCHS):
            order = torch.randperm(len(inputs))
            for step in range(steps_per_epoch):
                picked = order[step * BATCH_SIZE : (step + 1) * BATCH_SIZE]
                loss = torch.nn.functional.cross_entropy(network(inputs[picked]), targets[picked])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
            log.info("fashion-cnn epoch %d/%d: last batch loss %.3f", epoch + 1, EPOCHS, loss.item())
    finally:
        torch.set_num_threads(threads)
    network.eval()
    log.info("trained fashion-cnn in %.1f s", time.perf_counter() - started)
