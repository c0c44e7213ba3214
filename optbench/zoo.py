"""The projection's built-in model shapes (published architectures at their published sizes) and
its dtypes and default step count.

Each shape is built from the one transformer of ``optbench.tasks._transformer`` (with the
options its architecture needs) or from torchvision, with a declared role for every parameter,
and names a default workload (batch size, sequence length or image side). Nothing here
allocates until a shape's ``build()`` is called, and importing this module does not import torch,
so the CLI can list the shapes cheaply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

# The projection's choices, here so that the CLI can show them without importing torch:
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}  # parameter dtype name -> torch dtype attribute
DEFAULT_STEPS = 2  # optimizer steps per projection


@dataclass(frozen=True)
class Shape:
    """A built-in model shape and its default workload."""

    name: str
    description: str
    build: Callable[[], nn.Module]
    kind: str  # "lm" or "image"
    batch_size: int
    seq_len: int = 0  # lm: tokens per sequence; image: side of the square image
    vocab: int = 0
    classes: int = 0
    max_seq_len: int | None = None


def _gpt(name: str, *, vocab: int, context: int, n_layers: int, d_model: int, n_heads: int, d_mlp: int,
         llama: bool = False) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from optbench.tasks._transformer import GPT, LLAMA, TransformerOptions, with_info

        opts = LLAMA if llama else TransformerOptions(tie_head=True)  # GPT-2 ties its head to the embedding
        model = GPT(vocab, context, n_layers, d_model, n_heads, d_mlp, opts)
        return with_info(model, d_model=d_model, n_heads=n_heads, extra={"shape": name})

    return build


def _vit_b16() -> nn.Module:
    from optbench.tasks._transformer import ViT, with_info

    model = ViT(image_size=224, patch=16, channels=3, classes=1000, n_layers=12, d_model=768, n_heads=12,
                d_mlp=3072, pool="cls")
    return with_info(model, d_model=768, n_heads=12, extra={"shape": "vit-b16"})


def _resnet50() -> nn.Module:
    from torch import nn
    from torchvision.models import resnet50

    from optbench.model_info import ModelInfo, Role, attach_info

    model = resnet50(weights=None)
    roles = {}
    for mod_name, module in model.named_modules():
        for p_name, _ in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}"
            if isinstance(module, nn.BatchNorm2d):
                roles[full] = Role.NORM
            elif p_name == "bias":
                roles[full] = Role.BIAS
            elif mod_name == "conv1":
                roles[full] = Role.CONV_IN
            elif mod_name == "fc":
                roles[full] = Role.CLASSIFIER
            else:
                roles[full] = Role.CONV
    return attach_info(model, ModelInfo(roles=roles, extra={"shape": "resnet50"}))


_GPT2 = dict(vocab=50257, context=1024)
_LLAMA = dict(vocab=32000, context=4096, llama=True)


def _lm(name: str, description: str, batch_size: int, seq_len: int, **config) -> Shape:
    return Shape(name, description, _gpt(name, **config), "lm", batch_size, seq_len, vocab=config["vocab"],
                 max_seq_len=config["context"])


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        _lm("gpt2-small", "GPT-2 small: 12 layers, d 768, 12 heads, tied head (124M)", 8, 1024,
            n_layers=12, d_model=768, n_heads=12, d_mlp=3072, **_GPT2),
        _lm("gpt2-xl", "GPT-2 XL: 48 layers, d 1600, 25 heads, tied head (1.56B)", 1, 1024,
            n_layers=48, d_model=1600, n_heads=25, d_mlp=6400, **_GPT2),
        _lm("llama2-7b", "Llama-2 7B: 32 layers, d 4096, 32 heads, SwiGLU 11008, RMSNorm (6.74B)", 1, 2048,
            n_layers=32, d_model=4096, n_heads=32, d_mlp=11008, **_LLAMA),
        _lm("llama2-13b", "Llama-2 13B: 40 layers, d 5120, 40 heads, SwiGLU 13824, RMSNorm (13.0B)", 1, 2048,
            n_layers=40, d_model=5120, n_heads=40, d_mlp=13824, **_LLAMA),
        Shape("vit-b16", "ViT-B/16 at 224x224, 1000 classes (86.6M)", _vit_b16, "image", 32, 224, classes=1000),
        Shape("resnet50", "torchvision ResNet-50 at 224x224, 1000 classes (25.6M)", _resnet50, "image", 32, 224,
              classes=1000),
    )
}
