"""LRFinder: the learning-rate range test, reading from the device only when it checks.

The test trains for up to ``num_iter`` iterations while the learning rate ramps from ``start_lr``
to ``end_lr`` and records the (smoothed) loss at each, stopping once the loss diverges. Other
implementations read the loss on the host every iteration (``loss.item()``: one sync each). Here
the losses go into a preallocated device buffer and the smoothed loss, the best loss and the
first diverged iteration are updated with tensor operations; the host reads that one index every
``check_every`` iterations and the whole history once at the end, then trims it at the first
diverged point, exactly as a check at every iteration would have. With a
:class:`~lrfused.FusedScheduledAdam` the ramp is an in-kernel schedule (no per-iteration lr
write at all).

The conventions are pytorch-lr-finder's: exponential ramp ``start * (end / start) **
(i / (num_iter - 1))``, an EMA of the loss seeded with the first loss, divergence when the
smoothed loss exceeds ``diverge_th`` times the best one. The model and the optimizer (its state,
step counters and schedule) are restored afterwards.
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

from . import _ops, _rules
from . import schedules as S
from ._scheduled import FusedScheduledOptimizer, binding_of

__all__ = ["LRFinder"]


class LRFinder:
    """The LR range test.

    Args:
        model: the model to train (restored afterwards).
        optimizer: any ``torch.optim`` optimizer; a :class:`FusedScheduledAdam` runs the ramp in
            its kernel.
        criterion: ``criterion(model(inputs), targets)`` gives the loss; not needed with
            ``train_step``.
        device: where the model and batches go (default: where the model is).
        cache: ``"memory"`` keeps the saved model and optimizer state in memory (cloned),
            ``"disk"`` in a temporary file (for large models).

    Example::

        finder = LRFinder(model, optimizer, torch.nn.functional.cross_entropy)
        finder.range_test(loader, end_lr=1, num_iter=100)
        print(finder.suggestion())
        finder.plot(path="lr_finder.png")
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Callable[..., torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        *,
        cache: str = "memory",
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if cache not in ("memory", "disk"):
            raise ValueError(f"cache must be 'memory' or 'disk', got {cache!r}")
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        first = next(model.parameters(), None)
        self.model_device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device) if device is not None else self.model_device
        self.cache = cache
        self.history: dict[str, list[float]] = {"lr": [], "loss": []}
        self.reads = 0  # device-to-host reads made by the last range_test
        self._saved: Any = None
        self._save()

    # --- saving and restoring -----------------------------------------------------------------

    def _save(self) -> None:
        # The optimizer is saved and restored through its own state_dict()/load_state_dict(), as any
        # torch optimizer is: FusedScheduledAdam then drops every plan and table that pointed at the
        # range test's state, and counters shared by params are shared again.
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        # What the kernel reads for each group's lr: restored as it was (it may hold a value only the
        # device knows, such as ReduceLROnPlateau's).
        extra = {
            "lr_words": binding_of(self.optimizer).snapshot()
            if isinstance(self.optimizer, FusedScheduledOptimizer)
            else None
        }
        if self.cache == "memory":
            self._saved = (copy.deepcopy(state), extra)
        else:
            handle, path = tempfile.mkstemp(prefix="lrfused-finder-", suffix=".pt")
            os.close(handle)
            torch.save(state, path)
            self._saved = (path, extra)

    def reset(self) -> None:
        """Restores the model and the optimizer to their state before the range test."""
        stored, extra = self._saved
        # A copy each time: load_state_dict keeps the tensors it is given, and reset may run twice.
        state = torch.load(stored, weights_only=True) if isinstance(stored, str) else copy.deepcopy(stored)
        self.model.load_state_dict(state["model"])
        self.model.to(self.model_device)
        # A tensor in a param group (a tensor lr) keeps its identity, as code may hold it: its value
        # is restored in place.
        kept = [
            {key: value for key, value in group.items() if isinstance(value, torch.Tensor)}
            for group in self.optimizer.param_groups
        ]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, tensors in zip(self.optimizer.param_groups, kept):
            for key, tensor in tensors.items():
                restored = group.get(key)
                if isinstance(restored, torch.Tensor) and restored.shape == tensor.shape:
                    with torch.no_grad():
                        tensor.copy_(restored)
                    group[key] = tensor
        if isinstance(self.optimizer, FusedScheduledOptimizer):
            binding_of(self.optimizer).restore(extra["lr_words"])

    def __del__(self):
        saved = getattr(self, "_saved", None)
        if saved is not None and isinstance(saved[0], str) and os.path.exists(saved[0]):
            os.remove(saved[0])

    # --- the test -------------------------------------------------------------------------------

    def _read(self, tensor: torch.Tensor) -> list | float:
        """Every device-to-host read of the range test goes through here (and is counted)."""
        self.reads += 1
        return tensor.tolist()

    def range_test(
        self,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        start_lr: float | None = None,
        end_lr: float = 10.0,
        num_iter: int = 100,
        step_mode: str = "exp",
        smooth_f: float = 0.05,
        diverge_th: float = 5.0,
        accumulation_steps: int = 1,
        check_every: int = 10,
        train_step: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None,
        amp: torch.dtype | None = None,
        progress: bool = True,
    ) -> dict[str, list[float]]:
        """Runs the test; returns (and keeps in ``history``) ``{"lr": [...], "loss": [...]}``.

        Args:
            train_loader: batches; restarted when it runs out.
            val_loader: if given, the loss recorded is the mean loss over it after each iteration
                (computed on the device, read only at the checks).
            start_lr: the first lr (default: each param group's current lr).
            end_lr: the last lr.
            num_iter: iterations at most.
            step_mode: ``"exp"`` or ``"linear"`` ramp.
            smooth_f: EMA factor of the loss (0: no smoothing).
            diverge_th: stop when the smoothed loss exceeds ``diverge_th * best``.
            accumulation_steps: batches per optimizer step (their losses averaged).
            check_every: iterations between the host's reads of the divergence flag.
            train_step: ``train_step(model, batch) -> loss`` for batches that are not
                ``(inputs, targets)`` or models that compute their loss themselves.
            amp: an autocast dtype (``torch.float16`` adds a GradScaler, ``torch.bfloat16``).
            progress: show a tqdm progress bar when tqdm is installed.
        """
        self._validate_arguments(
            end_lr, num_iter, step_mode, smooth_f, diverge_th, accumulation_steps, check_every, start_lr, amp
        )
        if train_step is None and self.criterion is None:
            raise ValueError("range_test needs a criterion (given to LRFinder) or a train_step")
        self.history = {"lr": [], "loss": []}
        self.reads = 0
        self.model.to(self.device)
        groups = self.optimizer.param_groups
        starts = [float(start_lr) if start_lr is not None else float(g["lr"]) for g in groups]
        for index, start in enumerate(starts):
            if step_mode == "exp" and not start > 0:
                raise ValueError(f"an exponential ramp needs a start_lr > 0, got {start} for param_groups[{index}]")
            if not (math.isfinite(start) and start < end_lr):
                where = "start_lr" if start_lr is not None else f"param_groups[{index}]['lr'] (the default start_lr)"
                raise ValueError(f"the range test ramps up: end_lr={end_lr} must exceed {where}={start}")
        ramp = S.ExpRamp if step_mode == "exp" else S.LinearRamp
        ramps = [ramp(start, end_lr, num_iter) for start in starts]
        fused = isinstance(self.optimizer, FusedScheduledOptimizer)
        if fused:
            # The ramp steps on the device like a scheduler (note [The binding]): the host never
            # writes an lr during the test.
            binding = binding_of(self.optimizer, "LRFinder")
            words = [w for ramp_ in ramps for w in _rules.set_(ramp_)]
            _ops.validate_rules(torch.tensor(words, dtype=torch.float64), len(ramps))
            rules = torch.tensor(_rules.indexed(words, len(ramps)), dtype=torch.float64).to(binding.primary)
            clock = torch.zeros((), dtype=torch.int64, device=binding.primary)
            binding.absorb(groups)
            binding.advance(clock, rules, 0, [None] * len(ramps))

        scaler = torch.amp.GradScaler(self.device.type) if amp == torch.float16 else None
        history = torch.zeros(num_iter, dtype=torch.float64, device=self.device)
        smoothed = torch.zeros((), dtype=torch.float64, device=self.device)
        best = torch.zeros((), dtype=torch.float64, device=self.device)
        first_diverged = torch.full((), -1, dtype=torch.int64, device=self.device)
        bar = _progress_bar(num_iter) if progress else None
        batches = _Cycle(train_loader)
        stopped_at = num_iter
        try:
            for iteration in range(num_iter):
                if not fused:
                    for group, schedule in zip(groups, ramps):
                        _set_lr(group, schedule(iteration))
                loss = self._train_iteration(batches, accumulation_steps, train_step, amp, scaler)
                if val_loader is not None:
                    loss = self._validate(val_loader, train_step, amp)
                loss = loss.detach().to(torch.float64)
                if iteration == 0:
                    smoothed.copy_(loss)
                    best.copy_(loss)
                else:
                    if smooth_f > 0:
                        smoothed.copy_(smooth_f * loss + (1 - smooth_f) * smoothed)
                    else:
                        smoothed.copy_(loss)
                    best.copy_(torch.minimum(best, smoothed))
                history[iteration] = smoothed
                # A NaN or infinite loss diverges too (a comparison with NaN is never true).
                diverged = ((smoothed > diverge_th * best) | ~torch.isfinite(smoothed)) & (first_diverged < 0)
                first_diverged.copy_(torch.where(diverged, iteration, first_diverged))
                if fused:
                    binding.advance(clock, rules, None, [None] * len(ramps))
                if bar is not None:
                    bar.update(1)
                if (iteration + 1) % check_every == 0 and iteration + 1 < num_iter:
                    index, current, lowest = self._read(torch.stack([first_diverged.double(), smoothed, best]))
                    if bar is not None:
                        bar.set_postfix(loss=f"{current:.4g}", best=f"{lowest:.4g}")
                    if index >= 0:
                        stopped_at = int(index) + 1
                        break
            values = self._read(torch.cat([first_diverged.double().reshape(1), history]))
        finally:
            if bar is not None:
                bar.close()
            self.reset()
        index = int(values[0])
        count = index + 1 if index >= 0 else min(stopped_at, num_iter)
        if index >= 0 and not math.isfinite(values[1 + index]):
            count = index  # a NaN or infinite loss is where it diverged, not a point of the curve
        self.history = {"lr": [ramps[0](i) for i in range(count)], "loss": values[1 : 1 + count]}
        return self.history

    @staticmethod
    def _validate_arguments(
        end_lr, num_iter, step_mode, smooth_f, diverge_th, accumulation_steps, check_every, start_lr, amp
    ):
        if step_mode not in ("exp", "linear"):
            raise ValueError(f"step_mode must be 'exp' or 'linear', got {step_mode!r}")
        if not (isinstance(num_iter, int) and num_iter >= 2):
            raise ValueError(f"num_iter must be an int >= 2, got {num_iter!r}")
        if not (isinstance(check_every, int) and check_every >= 1):
            raise ValueError(f"check_every must be a positive int, got {check_every!r}")
        if not (isinstance(accumulation_steps, int) and accumulation_steps >= 1):
            raise ValueError(f"accumulation_steps must be a positive int, got {accumulation_steps!r}")
        if not 0 <= smooth_f < 1:
            raise ValueError(f"smooth_f must be in [0, 1), got {smooth_f}")
        if not diverge_th > 1:
            raise ValueError(f"diverge_th must be > 1, got {diverge_th}")
        if not (math.isfinite(end_lr) and end_lr > 0):
            raise ValueError(f"end_lr must be a positive float, got {end_lr}")
        if start_lr is not None and not (math.isfinite(start_lr) and 0 < start_lr < end_lr):
            raise ValueError(f"start_lr must be in (0, end_lr={end_lr}), got {start_lr}")
        if amp not in (None, torch.float16, torch.bfloat16):
            raise ValueError(f"amp must be None, torch.float16 or torch.bfloat16, got {amp!r}")

    def _loss(self, batch, train_step, amp) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            if train_step is not None:
                return train_step(self.model, _to_device(batch, self.device))
            inputs, targets = batch
            return self.criterion(self.model(_to_device(inputs, self.device)), _to_device(targets, self.device))

    def _train_iteration(self, batches, accumulation_steps, train_step, amp, scaler) -> torch.Tensor:
        self.model.train()
        self.optimizer.zero_grad()
        total = None
        for _ in range(accumulation_steps):
            loss = self._loss(next(batches), train_step, amp) / accumulation_steps
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = loss.detach() if total is None else total + loss.detach()
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        return total

    @torch.no_grad()
    def _validate(self, val_loader, train_step, amp) -> torch.Tensor:
        self.model.eval()
        total, count = None, 0
        for batch in val_loader:
            loss = self._loss(batch, train_step, amp).detach()
            total = loss if total is None else total + loss
            count += 1
        if count == 0:
            raise ValueError("val_loader gave no batch")
        return total / count

    # --- results --------------------------------------------------------------------------------

    def suggestion(self, method: str = "steep", skip_start: int = 10, skip_end: int = 5) -> float:
        """A suggested lr from ``history``.

        ``"steep"``: the lr of the steepest descent of the loss (pytorch-lr-finder: argmin of
        ``np.gradient`` of the losses); ``"valley"``: fastai's valley, two thirds of the way along
        the longest descending run, its middle third; ``"minimum"``: fastai's lr at the minimum loss
        divided by 10. ``skip_start`` and ``skip_end`` points are left out first.
        """
        lrs, losses = self._trimmed(skip_start, skip_end)
        if method == "steep":
            return float(lrs[int(np.gradient(np.asarray(losses)).argmin())])
        if method == "minimum":
            return float(lrs[int(np.asarray(losses).argmin())]) / 10
        if method == "valley":
            return float(lrs[_valley_index(losses)])
        raise ValueError(f"method must be 'steep', 'valley' or 'minimum', got {method!r}")

    def _trimmed(self, skip_start: int, skip_end: int):
        if skip_start < 0 or skip_end < 0:
            raise ValueError(f"skip_start and skip_end must be >= 0, got {skip_start} and {skip_end}")
        lrs, losses = self.history["lr"], self.history["loss"]
        end = len(lrs) - skip_end
        if end - skip_start < 2:
            raise ValueError(
                f"the history has {len(lrs)} points: too few to suggest an lr after skipping "
                f"{skip_start} first and {skip_end} last; lower skip_start/skip_end or run more iterations"
            )
        return lrs[skip_start:end], losses[skip_start:end]

    def plot(
        self,
        ax=None,
        path: str | None = None,
        suggest: bool = True,
        skip_start: int = 10,
        skip_end: int = 5,
        method: str = "steep",
    ):
        """Plots the loss against the lr (log x axis), marks the suggestion, saves it to ``path``."""
        try:
            import matplotlib

            if ax is None and path is not None:
                matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as error:
            raise ImportError("LRFinder.plot needs matplotlib: pip install 'lrfused[demo]' or matplotlib") from error
        lrs, losses = self._trimmed(skip_start, skip_end)
        figure = None
        if ax is None:
            figure, ax = plt.subplots(figsize=(6, 4))
        ax.plot(lrs, losses, label="smoothed loss")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        if suggest:
            lr = self.suggestion(method, skip_start, skip_end)
            point = lrs.index(lr) if lr in lrs else int(np.argmin(np.abs(np.asarray(lrs) - lr)))
            ax.scatter(
                [lrs[point]],
                [losses[point]],
                s=60,
                marker="o",
                color="red",
                zorder=3,
                label=f"suggested ({method}): {lr:.2e}",
            )
        ax.legend()
        if path is not None:
            (figure or ax.figure).savefig(path, dpi=120, bbox_inches="tight")
        if figure is not None and path is not None:
            plt.close(figure)
        return ax


def _valley_index(losses) -> int:
    """fastai's valley: the longest decreasing subsequence, then 2/3 of the way into it."""
    n = len(losses)
    longest = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
            if longest[max_end] < longest[i]:
                max_end = i
                max_start = max_end - longest[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def _set_lr(group: dict, lr: float) -> None:
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)  # a device write, no sync
    else:
        group["lr"] = lr


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class _Cycle:
    """Batches of a loader, restarting it when it runs out."""

    def __init__(self, loader: Iterable):
        self.loader = loader
        self.iterator = iter(loader)

    def __next__(self):
        try:
            return next(self.iterator)
        except StopIteration:
            self.iterator = iter(self.loader)
            try:
                return next(self.iterator)
            except StopIteration:
                raise ValueError("train_loader gave no batch") from None


def _progress_bar(total: int):
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc="LR range test", leave=False)
