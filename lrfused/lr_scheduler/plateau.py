"""ReduceLROnPlateau as a state machine on the device: no host sync per step."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim import lr_scheduler as torch_schedulers

from .. import _torch_compat
from .._binding import is_published
from ..optim import binding_of
from ._device import device_side, drives_device, unchanged_if_refused, unwrap_optimizer
from ._docs import torch_doc_and_note

_DEVICE_STATE = ("best", "num_bad_epochs", "cooldown_counter")


@torch_doc_and_note
class ReduceLROnPlateau(torch_schedulers.ReduceLROnPlateau):
    """torch's ReduceLROnPlateau; given a metric on a GPU, evaluated on the device.

    ``step(metric)`` with a Python number or a CPU tensor (reading it costs nothing; Lightning
    passes its monitored metric as one on the CPU) runs torch's own ``step`` on the host and writes
    the new lrs to the device: values, float lrs, types, errors and ``state_dict()`` are torch's.
    ``step(metric)`` with a 1-element tensor on a GPU (a loss still there, as frameworks pass it)
    runs the same state machine with tensor operations on the device, with no host sync: from then
    on ``best``, ``num_bad_epochs`` and ``cooldown_counter`` are device tensors, and
    ``param_groups[i]["lr"]`` and each entry of ``get_last_lr()`` are 0-dim float64 tensors, a new
    one at every step (a logger that keeps one keeps that step's value; ``float()`` of one is the
    one place that syncs). Either way each step starts from the lr the group holds now, so it
    composes with a warm-up or any other writer. ``load_state_dict`` accepts torch's state
    (numbers) and lrfused's (tensors).

    ``sync_free`` (lrfused's keyword) chooses for every tensor metric: ``True`` runs the device
    state machine for a CPU tensor too, ``False`` always runs torch's step, reading a GPU metric
    (a sync per step) and keeping torch's float lrs. A step that leaves the device state machine
    brings its state back to numbers (a sync if it is on a GPU).
    """

    _sync_free: bool | None = None

    def __init__(
        self,
        optimizer,
        mode="min",
        factor=0.1,
        patience=10,
        threshold=1e-4,
        threshold_mode="rel",
        cooldown=0,
        min_lr=0,
        eps=1e-8,
        *,
        sync_free: bool | None = None,
    ):
        if sync_free is not None:  # only then an attribute: without it, the instance is torch's exactly
            if not isinstance(sync_free, bool):
                raise TypeError(f"sync_free must be None, True or False, got {sync_free!r}")
            self._sync_free = sync_free
        optimizer = unwrap_optimizer(optimizer, "ReduceLROnPlateau")
        with unchanged_if_refused(optimizer):
            torch_schedulers.ReduceLROnPlateau.__init__(
                self, optimizer, mode, factor, patience, threshold, threshold_mode, cooldown, min_lr, eps
            )

    @property
    def _on_device(self) -> bool:
        return isinstance(self.best, torch.Tensor)

    def _runs_on_device(self, metrics: Any) -> bool:
        if not isinstance(metrics, torch.Tensor):
            return False
        return self._sync_free if self._sync_free is not None else metrics.device.type != "cpu"

    def _to_host(self, groups: list[dict[str, Any]], binding: Any) -> None:
        # Device state back to torch's numbers, and the lrs lrfused published back to floats.
        self.best = float(self.best)
        self.num_bad_epochs = int(self.num_bad_epochs)
        self.cooldown_counter = int(self.cooldown_counter)
        for index, group in enumerate(groups):
            if is_published(group["lr"]):
                group["lr"] = float(group["lr"])
        _torch_compat.set_last_lr(
            self, [float(lr) if isinstance(lr, torch.Tensor) else lr for lr in _torch_compat.last_lr(self)]
        )

    def _to_device(self, device: torch.device) -> None:
        # Host numbers to device tensors: a copy from the host, no sync.
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
                    "`optimizer` param groups."
                )
            self.min_lrs = [self.default_min_lr] * group_count
        side = device_side(self)
        key = (tuple(float(m) for m in self.min_lrs), device)
        if side.cache is None or side.cache[0] != key:
            side.cache = (key, torch.tensor(key[0], dtype=torch.float64).to(device))
        return side.cache[1]

    def step(self, metrics, epoch=None):
        optimizer = self.optimizer
        if not drives_device(optimizer):
            torch_schedulers.ReduceLROnPlateau.step(self, metrics, epoch)
            return
        groups = optimizer.param_groups
        binding = binding_of(optimizer, "ReduceLROnPlateau")
        if isinstance(metrics, torch.Tensor) and metrics.numel() != 1:
            raise ValueError(f"metrics must be a scalar, got a tensor of shape {tuple(metrics.shape)}")
        binding.absorb(groups)
        if not self._runs_on_device(metrics):
            if self._on_device:
                self._to_host(groups, binding)
            torch_schedulers.ReduceLROnPlateau.step(self, metrics, epoch)
            binding.write(groups)  # (and records them)
            return
        device = binding.primary
        if isinstance(metrics, torch.Tensor):
            current = metrics.detach().reshape(()).to(device=device, dtype=torch.float64, non_blocking=True)
        else:
            current = torch.full((), float(metrics), dtype=torch.float64, device=device)
        min_lrs = self._min_lrs_now(len(groups), device)
        if not self._on_device:
            self._to_device(device)
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
        _torch_compat.set_last_lr(
            self, [group["lr"].clone() if isinstance(group["lr"], torch.Tensor) else group["lr"] for group in groups]
        )

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        for key in _DEVICE_STATE:
            if isinstance(state[key], torch.Tensor):
                state[key] = state[key].clone()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads torch's state (numbers: the next step with a number metric is torch's) or
        lrfused's (tensors: moved to this optimizer's device)."""
        state = dict(state_dict)
        tensors = [key for key in _DEVICE_STATE if isinstance(state.get(key), torch.Tensor)]
        if tensors and drives_device(self.optimizer):
            device = binding_of(self.optimizer, "ReduceLROnPlateau").primary
            dtypes = {"best": torch.float64, "num_bad_epochs": torch.int64, "cooldown_counter": torch.int64}
            for key in _DEVICE_STATE:
                state[key] = torch.as_tensor(state[key], dtype=dtypes[key]).to(device, copy=True)
        elif tensors:
            for key in tensors:
                state[key] = state[key].item()
        super().load_state_dict(state)
