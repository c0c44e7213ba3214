"""CIFAR-10 for the GPU-tier vision tasks: read from a data directory, downloaded only on request.

Layout: torchvision's (``DATA_DIR/cifar-10-batches-py/data_batch_1..5``, ``test_batch``),
read here with ``pickle`` so training does not need torchvision. Download (about 170 MB,
the only network access in optbench, never done implicitly):

    python -m tasks.cifar10_data --download --data-dir ~/.cache/optbench

Under the ``smoke`` preset only, a task may use ``stand_in`` data (generated images of the
real shape) when the real files are absent; every other preset raises ``MissingDataError``
with the command above.
"""

from __future__ import annotations

import argparse
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from optbench.spec import Budget, EvalResult, TaskInstance

DEFAULT_DATA_DIR = Path("~/.cache/optbench").expanduser()
FOLDER = "cifar-10-batches-py"
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


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


def _read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open("rb") as f:
        entry = pickle.load(f, encoding="latin1")
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


def stand_in(n_train: int, n_test: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generated uint8 images of CIFAR-10's shape: a fixed colour template per class plus noise (learnable)."""
    gen = torch.Generator().manual_seed(seed)
    templates = torch.rand(10, 3, 32, 32, generator=gen) * 255

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 10, (n,), generator=gen)
        x = 0.5 * templates[y] + 0.5 * torch.rand(n, 3, 32, 32, generator=gen) * 255
        return x.to(torch.uint8), y

    return (*sample(n_train), *sample(n_test))


def get(preset: str, data_dir: str | Path | None, n_stand_in: tuple[int, int] = (256, 64)):
    """Real CIFAR-10, or under ``smoke`` only the stand-in when it is missing; returns (data, notes)."""
    try:
        return load(data_dir), []
    except MissingDataError:
        if preset != "smoke":
            raise
        note = "generated stand-in data (smoke): CIFAR-10 not found in the data directory"
        return stand_in(*n_stand_in), [note]


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, 32, 32) -> float, per-channel standardised."""
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255 - mean) / std


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random 32x32 crop from a 4-pixel reflect-padded image and a random horizontal flip, per image."""
    b = images.shape[0]
    padded = nn.functional.pad(images, (4, 4, 4, 4), mode="reflect")
    dy, dx = (torch.randint(0, 9, (b,), generator=gen) for _ in range(2))
    flip = torch.rand(b, generator=gen) < 0.5
    base = torch.arange(32)
    cols = torch.where(flip[:, None], base.flip(0), base) + dx[:, None]
    rows = (base + dy[:, None]).to(images.device)
    batch_idx = torch.arange(b, device=images.device)[:, None, None]
    # Advanced indices around a slice: the result is (B, 32, 32, C).
    out = padded[batch_idx, :, rows[:, :, None], cols.to(images.device)[:, None, :]]
    return out.permute(0, 3, 1, 2)


def train_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int,
                  device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless shuffled, augmented, normalised batches on ``device``; order and augmentation depend on ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    x, y = x.to(device), y.to(device)
    n = x.shape[0]
    while True:
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n - batch_size + 1, batch_size):
            idx = order[start : start + batch_size]
            yield normalize(augment(x[idx].float(), gen)), y[idx]


def accuracy_evaluator(x: torch.Tensor, y: torch.Tensor, device: torch.device, batch_size: int = 1000,
                       autocast_dtype: torch.dtype | None = None):
    """Test accuracy (and mean cross-entropy) over the whole held-out set, in chunks."""
    x, y = x.to(device), y.to(device)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> EvalResult:
        was_training = model.training
        model.eval()
        correct, loss_sum = 0, 0.0
        for start in range(0, len(x), batch_size):
            xb, yb = normalize(x[start : start + batch_size]), y[start : start + batch_size]
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = model(xb).float()
            loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum").item()
            correct += (logits.argmax(-1) == yb).sum().item()
        model.train(was_training)
        return EvalResult(metric=correct / len(y), loss=loss_sum / len(y))

    return evaluate


def cifar10_instance(model: nn.Module, budget: Budget, seed: int, device: torch.device, data: tuple,
                     notes: list[str], eval_batch_size: int = 1000) -> TaskInstance:
    """The CIFAR-10 tasks' data, loss and accuracy around an already-built ``model`` (bf16 autocast on CUDA)."""
    x_tr, y_tr, x_te, y_te = data
    autocast = torch.bfloat16 if device.type == "cuda" else None
    return TaskInstance(
        model=model,
        batches=train_batches(x_tr, y_tr, budget.batch_size, seed, device),
        loss_fn=lambda m, batch: nn.functional.cross_entropy(m(batch[0]).float(), batch[1]),
        evaluate=accuracy_evaluator(x_te, y_te, device, batch_size=eval_batch_size, autocast_dtype=autocast),
        samples_per_step=budget.batch_size,
        autocast_dtype=autocast,
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
