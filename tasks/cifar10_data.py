"""CIFAR-10 for the GPU-tier vision tasks: read from a data directory, downloaded only on request.

Layout: torchvision's (``DATA_DIR/cifar-10-batches-py/data_batch_1..5``, ``test_batch``),
read here with a restricted unpickler (``_CifarUnpickler``: plain containers and numpy arrays
only, so a crafted file in a user's ``--data-dir`` cannot run code), so training does not need
torchvision. Download (about 170 MB, the only network access in optbench, never done implicitly):

    python -m tasks.cifar10_data --download --data-dir ~/.cache/optbench

Under the ``smoke`` preset a task may use ``stand_in`` data (generated images of the real
shape) when the real files are absent; ``gpu_check`` always uses a full-size stand-in (50,000
training and 10,000 test images: it checks a GPU end to end, and real CIFAR-10 cannot travel
to a lent machine); every other preset raises ``MissingDataError`` with the command above.

On the device, a training batch costs no host-device copy: the data set moves once, the
shuffle order and the augmentation draws of a whole epoch are drawn on the CPU (one
generator, so the same seed gives the same batches on any device) and moved in one copy per
epoch, and the normalisation constants live on the device from the start.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optbench.loop import autocast
from optbench.spec import Budget, EvalResult, TaskInstance

DEFAULT_DATA_DIR = Path("~/.cache/optbench").expanduser()
FOLDER = "cifar-10-batches-py"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
# Stand-in data sizes (train, test) for the presets that may use it.
STAND_IN_SMOKE = (256, 64)
STAND_IN_FULL = (50_000, 10_000)


class MissingDataError(FileNotFoundError):
    """The dataset is not in the data directory; the message names the command that fetches it."""


def download_command(data_dir: Path) -> str:
    return f"python -m tasks.cifar10_data --download --data-dir {data_dir}"


def download(data_dir: str | Path = DEFAULT_DATA_DIR) -> Path:
    """Fetch CIFAR-10 with torchvision into ``data_dir`` (network). Never called unless asked."""
    from torchvision.datasets import CIFAR10

    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    CIFAR10(root=str(data_dir), train=True, download=True)
    CIFAR10(root=str(data_dir), train=False, download=True)
    return data_dir / FOLDER


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's batch files and nothing else: a pickle may name any global to call,
    so only the few that rebuild a numpy array are allowed; anything else is refused by name."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 writes bytes in a protocol-2 pickle
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's signature
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a CIFAR-10 batch file (only numpy arrays and plain "
                "containers are accepted); is this data directory trustworthy?"
            )
        return super().find_class(module, name)


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        try:
            entry = _CifarUnpickler(f, encoding="latin1").load()
        except pickle.UnpicklingError as exc:
            raise pickle.UnpicklingError(f"{path}: {exc}") from None
    if not isinstance(entry, dict) or not {"data", "labels"} <= set(entry):
        raise ValueError(f"{path} is not a CIFAR-10 batch file (expected a dict with 'data' and 'labels')")
    return np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32), np.asarray(entry["labels"])


def load(data_dir: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 train images (50000, 3, 32, 32), int64 labels, test images (10000, ...), labels (CPU)."""
    data_dir = Path(data_dir).expanduser() if data_dir is not None else DEFAULT_DATA_DIR
    root = data_dir / FOLDER
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise MissingDataError(
            f"CIFAR-10 not found in {root} (missing {', '.join(missing)}); download it (about 170 MB) with: "
            f"{download_command(data_dir)}"
        )
    parts = [_read_batch(root / n) for n in names]
    x_train = np.concatenate([p[0] for p in parts[:5]])
    y_train = np.concatenate([p[1] for p in parts[:5]])
    as_torch = lambda x, y: (torch.from_numpy(x), torch.from_numpy(y).long())  # noqa: E731
    return (*as_torch(x_train, y_train), *as_torch(*parts[5]))


@lru_cache(maxsize=2)
def _stand_in_arrays(n_train: int, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    # numpy, not torch: cheap for the full 60,000 images, cached across the runs of a grid, and
    # always real host memory (a torch tensor made under a fake-tensor test would be fake).
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, 128, size=(10, 3, 32, 32), dtype=np.uint8)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 10, size=n)
        return templates[y] + rng.integers(0, 128, size=(n, 3, 32, 32), dtype=np.uint8), y

    return (*sample(n_train), *sample(n_test))


def stand_in(n_train: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated uint8 images of CIFAR-10's shape: a fixed colour template per class plus noise (learnable)."""
    x_tr, y_tr, x_te, y_te = _stand_in_arrays(n_train, n_test, seed)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr).long(), torch.from_numpy(x_te), torch.from_numpy(y_te).long()


def get(preset: str, data_dir: str | Path | None):
    """The data a preset trains on, and notes saying what it is: (x_train, y_train, x_test, y_test), notes.

    ``gpu_check``: always the full-size stand-in. ``smoke``: real CIFAR-10, or the small stand-in
    when it is missing. Any other preset: real CIFAR-10 or ``MissingDataError``.
    """
    if preset == "gpu_check":
        note = (f"generated stand-in data (gpu_check): {STAND_IN_FULL[0]} training and {STAND_IN_FULL[1]} test "
                "images of CIFAR-10's shape, not CIFAR-10")
        return stand_in(*STAND_IN_FULL), [note]
    try:
        return load(data_dir), []
    except MissingDataError:
        if preset != "smoke":
            raise
        note = "generated stand-in data (smoke): CIFAR-10 not found in the data directory"
        return stand_in(*STAND_IN_SMOKE), [note]


class Normalizer:
    """uint8 (B, 3, 32, 32) -> float, per-channel standardised, with the constants made once on ``device``."""

    def __init__(self, device: torch.device) -> None:
        self.mean = torch.tensor(MEAN, device=device).view(1, 3, 1, 1) * 255
        self.inv_std = 1 / (torch.tensor(STD, device=device).view(1, 3, 1, 1) * 255)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) * self.inv_std


def normalize(images: torch.Tensor) -> torch.Tensor:
    """One-off :class:`Normalizer` (it makes its constants: use a Normalizer in a loop)."""
    return Normalizer(images.device)(images)


def draw_augmentation(n: int, gen: torch.Generator) -> torch.Tensor:
    """(3, n) int64 on the CPU: per image a vertical and a horizontal crop offset in [0, 8] and a flip bit."""
    offsets = torch.randint(0, 9, (2, n), generator=gen)
    flips = (torch.rand(n, generator=gen) < 0.5).long()
    return torch.cat((offsets, flips[None]))


def augment(images: torch.Tensor, gen_or_draws: torch.Generator | torch.Tensor) -> torch.Tensor:
    """Random 32x32 crop from a 4-pixel reflect-padded image and a random horizontal flip, per image.

    ``gen_or_draws``: a CPU generator to draw from, or the (3, B) draws of
    :func:`draw_augmentation` already on the images' device (no host copy then).
    """
    b, device = images.shape[0], images.device
    draws = draw_augmentation(b, gen_or_draws) if isinstance(gen_or_draws, torch.Generator) else gen_or_draws
    draws = draws.to(device)  # no-op when already there
    dy, dx, flip = draws[0], draws[1], draws[2].bool()
    padded = nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    base = torch.arange(32, device=device)
    cols = torch.where(flip[:, None], base.flip(0), base) + dx[:, None]
    rows = base + dy[:, None]
    batch_idx = torch.arange(b, device=device)[:, None, None]
    # Advanced indices around a slice: the result is (B, 32, 32, C).
    out = padded[batch_idx, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled, augmented, normalised batches on ``device``; order and augmentation depend on ``seed``.

    Per epoch one host-device copy (the order and every augmentation draw); none per batch.
    """
    gen = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    normalize_on_device = Normalizer(device)
    n = x.shape[0]
    while True:
        order = torch.randperm(n, generator=gen)
        epoch = torch.cat((order[None], draw_augmentation(n, gen))).to(device)  # (4, n): order, dy, dx, flip
        for start in range(0, n - batch_size + 1, batch_size):
            idx = epoch[0, start : start + batch_size]
            draws = epoch[1:, start : start + batch_size]
            yield normalize_on_device(augment(x[idx].float(), draws)), y[idx]


def held_out_evaluator(x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 1000,
                       autocast_dtype: torch.dtype | None = None):
    """Mean cross-entropy over the whole held-out set (the metric) and accuracy (a secondary figure), in chunks.

    The sums stay on the device and are read once per evaluation, as the digits tasks report it:
    ``EvalResult(metric=loss, loss=loss, extra={"accuracy": ...})``.
    """
    x, y = x.to(device), y.to(device)
    normalize_on_device = Normalizer(device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> EvalResult:
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, correct count)
        for start in range(0, len(x), batch_size):
            xb, yb = normalize_on_device(x[start : start + batch_size]), y[start : start + batch_size]
            with autocast(device, autocast_dtype):
                logits = model(xb).float()
            sums[0] += nn.functional.cross_entropy(logits, yb, reduction="sum")
            sums[1] += (logits.argmax(-1) == yb).sum()
        model.train(was_training)
        loss_sum, correct = sums.cpu().tolist()  # one copy to the host per evaluation
        loss = loss_sum / len(y)
        return EvalResult(metric=loss, loss=loss, extra={"accuracy": correct / len(y)})

    return evaluate


def cifar10_instance(model: nn.Module, budget: Budget, seed: int, device: torch.device, data: tuple,
                     notes: list[str], eval_batch_size: int = 1000) -> TaskInstance:
    """The CIFAR-10 tasks' data, training loss and held-out evaluation around an already-built ``model``
    (bf16 autocast on CUDA)."""
    x_tr, y_tr, x_te, y_te = data
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    return TaskInstance(
        model=model,
        batches=train_batches(x_tr, y_tr, budget.batch_size, seed, device),
        loss_fn=lambda m, batch: nn.functional.cross_entropy(m(batch[0]).float(), batch[1]),
        evaluate=held_out_evaluator(x_te, y_te, device, batch_size=eval_batch_size, autocast_dtype=autocast_dtype),
        samples_per_step=budget.batch_size,
        autocast_dtype=autocast_dtype,
        notes=notes,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Download CIFAR-10 into a data directory for optbench.")
    parser.add_argument("--download", action="store_true", help="fetch the dataset (network, about 170 MB)")
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    args = parser.parse_args()
    if not args.download:
        parser.error("nothing to do; pass --download to fetch CIFAR-10")
    print(f"CIFAR-10 ready in {download(args.data_dir)}")


if __name__ == "__main__":
    main()
