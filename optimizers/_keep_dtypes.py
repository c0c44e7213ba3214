"""A load_state_dict that keeps the dtypes of state tensors, for optimizers with compact state.

``torch.optim.Optimizer.load_state_dict`` casts every floating-point parameter's state tensors
(all but ``step``) to the parameter dtype, integer ones included: packed uint8 signs, int16
indices and bf16 values would come back as float32 (or, worse, int16 indices as bf16, which
cannot hold them exactly). Optimizers whose state is not in the parameter dtype mix this in.
It also copies the tensors, where torch would alias those of a live optimizer's state_dict().
A 0-d ``step`` tensor stays on the CPU, where torch's own Adam keeps it: read there, a step
count costs no host-device sync.
"""

from __future__ import annotations

from typing import Any

import torch


class KeepStateDtypes:
    """Mixin for ``torch.optim.Optimizer`` subclasses: state tensors load with their saved dtype."""

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        saved_ids = [pid for group in state_dict["param_groups"] for pid in group["params"]]
        params = [p for group in self.param_groups for p in group["params"]]  # type: ignore[attr-defined]
        for pid, param in zip(saved_ids, params, strict=True):
            saved = state_dict["state"].get(pid)
            if not saved:
                continue
            state = self.state[param]  # type: ignore[attr-defined]
            for key, value in saved.items():
                if isinstance(value, torch.Tensor):
                    # A copy: the dict may hold another optimizer's live tensors (torch would alias them).
                    device = "cpu" if key == "step" and value.dim() == 0 else param.device
                    state[key] = value.detach().to(device=device, copy=True)
