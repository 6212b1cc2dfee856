"""ReduceLROnPlateau as a state machine on the device: no host sync per step."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_schedulers

from ._device import unwrap_optimizer

_DEVICE_STATE = ("best", "num_bad_epochs", "cooldown_counter")


class ReduceLROnPlateau(torch_schedulers.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau, evaluated on the device.

    ``step(metric)`` takes a float or a 1-element tensor (on any device) and updates the best
    value, the bad-epoch and cooldown counters and each group's lr with tensor operations, as
    torch's ``step`` does with floats, from the lr each group holds now (so it composes with a
    warm-up or any other writer). No host sync: after a step ``param_groups[i]["lr"]`` and each
    entry of ``get_last_lr()`` are 0-dim float64 tensors on the optimizer's device, a new tensor
    at every step (a logger that keeps one keeps that step's value); ``float()`` of one is the
    one place that syncs. ``best``, ``num_bad_epochs`` and ``cooldown_counter`` are device
    tensors too. ``state_dict()`` holds tensors, and ``load_state_dict`` accepts torch's floats.
    """

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4, threshold_mode="rel",
                 cooldown=0, min_lr=0, eps=1e-8):
        optimizer = unwrap_optimizer(optimizer, "ReduceLROnPlateau")
        binding = optimizer._scheduler_binding("ReduceLROnPlateau")
        torch_schedulers.ReduceLROnPlateau.__init__(self, optimizer, mode, factor, patience, threshold,
                                                    threshold_mode, cooldown, min_lr, eps)
        self._to_device(binding.primary)

    def _to_device(self, device: torch.device) -> None:
        self.best = torch.full((), float(self.best), dtype=torch.float64, device=device)
        self.num_bad_epochs = torch.full((), int(self.num_bad_epochs), dtype=torch.int64, device=device)
        self.cooldown_counter = torch.full((), int(self.cooldown_counter), dtype=torch.int64, device=device)

    def _is_better_tensor(self, current: torch.Tensor) -> torch.Tensor:
        if self.mode == "min" and self.threshold_mode == "rel":
            return current < self.best * (1.0 - self.threshold)
        if self.mode == "min":
            return current < self.best - self.threshold
        if self.threshold_mode == "rel":
            return current > self.best * (self.threshold + 1.0)
        return current > self.best + self.threshold

    def _min_lrs_now(self, group_count: int, device: torch.device) -> torch.Tensor:
        if len(self.min_lrs) != group_count:
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the `optimizer` ({group_count}) differs from when "
                    f"`ReduceLROnPlateau` was initialized ({len(self.min_lrs)}), usually due to a new param group "
                    "being added to the optimizer. Please modify the `min_lrs` field to match the length of the "
                    "`optimizer` param groups.")
            self.min_lrs = [self.default_min_lr] * group_count
        cached = getattr(self, "_min_lrs_tensor", None)
        key = (tuple(float(m) for m in self.min_lrs), device)
        if cached is None or cached[0] != key:
            cached = self._min_lrs_tensor = (key, torch.tensor(key[0], dtype=torch.float64).to(device))
        return cached[1]

    def step(self, metrics, epoch=None):
        optimizer = self.optimizer
        groups = optimizer.param_groups
        binding = optimizer._scheduler_binding("ReduceLROnPlateau")
        device = binding.primary
        if isinstance(metrics, torch.Tensor):
            if metrics.numel() != 1:
                raise ValueError(f"metrics must be a scalar, got a tensor of shape {tuple(metrics.shape)}")
            current = metrics.detach().reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
        else:
            value = float(metrics)
            current = torch.full((), value, dtype=torch.float64, device=device)
        min_lrs = self._min_lrs_now(len(groups), device)
        binding.absorb(groups)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(torch_schedulers.EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch
        better = self._is_better_tensor(current)
        self.best.copy_(torch.where(better, current, self.best))
        bad = torch.where(better, 0, self.num_bad_epochs + 1)
        in_cooldown = self.cooldown_counter > 0
        counter = torch.where(in_cooldown, self.cooldown_counter - 1, self.cooldown_counter)
        bad = torch.where(in_cooldown, 0, bad)
        reduce = bad > self.patience
        lrs = binding.lr_words()
        new_lrs = torch.maximum(lrs * self.factor, min_lrs)
        lrs.copy_(torch.where(reduce & (lrs - new_lrs > self.eps), new_lrs, lrs))
        self.cooldown_counter.copy_(torch.where(reduce, self.cooldown, counter))
        self.num_bad_epochs.copy_(torch.where(reduce, 0, bad))
        published = lrs.clone()
        for index in range(len(groups)):
            binding.publish(groups, index, published[index])
        binding.record(groups)
        self._last_lr = [group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"]
                         for group in groups]

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def state_dict(self) -> dict[str, Any]:
        state = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "_min_lrs_tensor")}
        for key in _DEVICE_STATE:
            state[key] = state[key].clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads lrfused's state (device tensors) or torch's (floats and ints)."""
        state = {k: v for k, v in state_dict.items() if k != "_min_lrs_tensor"}
        device = self.best.device
        self.__dict__.update({k: v for k, v in state.items() if k not in _DEVICE_STATE})
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)
        for key, dtype in (("best", torch.float64), ("num_bad_epochs", torch.int64), ("cooldown_counter", torch.int64)):
            value = state.get(key)
            if value is None:
                continue
            if not isinstance(value, torch.Tensor) and key == "best" and math.isinf(float(value)):
                value = float(value)
            getattr(self, key).copy_(torch.as_tensor(value, dtype=dtype).to(device))
