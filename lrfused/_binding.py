"""The binding between a FusedScheduledAdam, the schedulers that drive it and the LR finder.

note [The binding]
Data flows one way: scheduler -> binding -> optimizer -> op -> kernel. The binding holds, on the
device, the words the kernel reads for each param group's lr (and beta1): a HELD node per group
(``[KIND_HELD, 4, lr, beta1]``), or with ``FusedScheduledAdam(schedule=s)`` the program
``lr * s(step)`` whose lr word is ``group["lr"]``. Everything that changes a group's lr goes through
one of the methods below, and nothing else writes the words:

* ``absorb(groups)``: the host's writes. Called before every optimizer step and every scheduler
  step, it compares each ``group["lr"]`` (and ``group["betas"]``) with what the words were last
  known to hold and writes what changed: a hand write, a stock torch scheduler, SWALR, a
  framework's ``lr_find``, ``load_state_dict``. The last writer wins, as in torch. In the
  optimizer's eager step a changed float lr rides in the step's own op, after the deferred
  scheduler steps (note [Host writes] in csrc/common/step_plan.h): no launch of its own.
* ``advance(clock, rules, epoch)``: a scheduler step computed on the device: the words move
  without the host, so a captured ``scheduler.step()`` replays correctly. A plain ``step()`` is
  deferred to the next optimizer step, whose op applies it first (note [One op per step] in
  csrc/common/step_plan.h): one launch for both. A step to an explicit epoch, a step while a CUDA
  graph captures, and a ninth step in a row without an optimizer step run at once
  (``advance_lr_``), after the deferred ones.
* ``write(groups)``: a scheduler step the host computed (a Python ``lr_lambda`` without
  ``horizon=``, a fractional epoch): the host's values are written, like a hand write.
* ``lr_words()``: ReduceLROnPlateau's device ops update the lr words in place, and ``publish``
  puts the device tensor of the new lr in the group.
* ``restore(snapshot)``: the words as ``snapshot()`` saw them (the LR finder's reset, a scheduler
  constructor that raised).
* ``grow(groups)``: the words of groups added since (``add_param_group``).

Every door that reads or writes the words outside the optimizer's op flushes the deferred steps
first (``flush()``, the op with no tensors), so nothing ever sees words that are behind.

After a scheduler step, ``record(groups)`` notes the host mirror (the floats torch's own code
computed, or the device tensors a plateau published) as what the words hold, so that the next
``absorb`` writes nothing. The binding holds no reference to the optimizer or to any scheduler:
deleting a scheduler frees it at once, and the optimizer deep-copies and pickles with it.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from . import _ops, _rules, _step_plan
from .schedules import Product, Schedule


def check_lr_value(lr: Any, where: str) -> float:
    """A float lr that a write put in a param group. A finite negative lr is taken as torch takes
    it after construction (a LambdaLR whose factor goes below zero, a cosine with eta_min after a
    decay): torch then ascends, and so does lrfused. A NaN or an infinity is refused, naming the
    group: it would silently turn the params into NaNs."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)):
        raise TypeError(f"Invalid learning rate: {lr!r} ({where}) must be a float or a 1-element tensor")
    if not math.isfinite(lr):
        raise ValueError(f"Invalid learning rate: {lr} ({where})")
    return float(lr)


# Marks the device tensors lrfused puts in group["lr"] (ReduceLROnPlateau's): such a tensor is
# replaced at each step, never updated in place, also after a deepcopy (load_state_dict makes one).
PUBLISHED = "_lrfused_published"


def is_published(lr: Any) -> bool:
    return isinstance(lr, Tensor) and getattr(lr, PUBLISHED, False)


class Binding:
    """The device words of every param group's lr, and the doors through which they change."""

    # What the beta1 word mirrors (see __init__); a binding pickled before other rules existed is Adam's.
    momentum_key: str | None = "betas"

    def __init__(
        self,
        groups: list[dict[str, Any]],
        schedule: Schedule | None,
        device: torch.device,
        momentum_key: str | None = "betas",
    ):
        self.schedule = schedule
        # The group key the beta1 word mirrors: Adam's "betas" (its first entry), SGD's and RMSprop's
        # "momentum", or None for a rule without a momentum (Adagrad).
        self.momentum_key = momentum_key
        self.primary = device
        # Asked at every scheduler step (a CUDA graph may be capturing): torch.device.type costs a
        # fifth of a steady step, so it is read once.
        self.on_cuda = device.type == "cuda"
        self.offsets: list[int] = []
        self.lengths: list[int] = []
        self.buffers: dict[torch.device, Tensor] = {}
        # What the lr word of each group was last known to hold on the host: the float written, or
        # the tensor object a device scheduler published (None: unknown, written at the next absorb).
        self._seen_lr: list[Any] = []
        # The group[momentum_key] object the beta1 word agrees with.
        self._seen_betas: list[Any] = []
        # While a device schedule drives a group's beta1 word: the op's beta1 argument, held constant
        # so that a compiled step sees the same constant every step (the kernel reads the word).
        self._beta1_arg: list[float | None] = []
        # A scheduler steps these words on the device: a compiled optimizer step then leaves the
        # host comparisons out (each value would become a guard, each step a recompilation).
        self.driven = False
        self.buffers[device] = self._encode(groups, 0)
        self._view_host_words()
        # The scheduler steps deferred to the next optimizer step: their indexed rules, the
        # distinct clocks they move, and the header the op reads (the first step's sequence number,
        # then each step's clock slot), a CPU tensor written here so that a compiled step reads
        # new values without a new guard.
        self.deferred_rules: list[Tensor] = []
        self.deferred_clocks: list[Tensor] = []
        self.pending = torch.zeros(_step_plan.PENDING_WORDS, dtype=torch.int64)
        # The same memory as a NumPy array: a scheduler step writes its header there, a store in
        # Python, where an indexed write to the tensor would be four dispatcher calls.
        self._view_pending()
        # Host writes queued in the header for the optimizer's op (note [Host writes]).
        self._queued_writes: list[int] = []  # their groups
        self.sequence = 0  # deferred steps issued so far
        self.applied = torch.zeros((), dtype=torch.int64, device=device)  # ... and applied, on the device
        # The flush's own handle: its CUDA table is kept from one flush to the next (steady state
        # builds nothing); a flush recorded into a CUDA graph (a capture that opens with deferred
        # steps pending) is kept alive by the graph itself (note [Tensor tables]).
        self.flush_handle = _ops.new_handle()

    # A copy (deepcopy, pickle) gets a handle of its own: sharing the original's id would share its
    # CUDA tables, and in another process the id could name an unrelated handle.
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["flush_handle"]
        for view in ("_pending_words", "_pending_values", "_host_words"):
            del state[view]  # made again over the copy's own tensors
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_queued_writes", [])
        self.__dict__.setdefault("on_cuda", self.primary.type == "cuda")
        if self.pending.numel() < _step_plan.PENDING_WORDS:  # pickled before the header carried writes
            header = torch.zeros(_step_plan.PENDING_WORDS, dtype=torch.int64)
            header[: self.pending.numel()] = self.pending
            self.pending = header
        self.flush_handle = _ops.new_handle()
        self._view_pending()
        self._view_host_words()

    def _view_pending(self) -> None:
        self._pending_words = self.pending.numpy()
        self._pending_values = self._pending_words.view(np.float64)  # a host write's value, as its bits

    def _view_host_words(self) -> None:
        # Words on the CPU are also seen as a NumPy array over the same memory: a host write of an
        # lr is then a store, where an indexed write to the tensor is two dispatcher calls.
        words = self.buffers[self.primary]
        self._host_words = words.numpy() if words.device.type == "cpu" else None

    # --- layout --------------------------------------------------------------------------------

    @property
    def group_count(self) -> int:
        return len(self.offsets)

    @property
    def held(self) -> bool:
        """Each group is a HELD node (no ``schedule=``): the scheduler ops can drive the words."""
        return self.schedule is None

    def _encode(self, groups: list[dict[str, Any]], first: int) -> Tensor:
        words: list[float] = []
        start = self.offsets[-1] + self.lengths[-1] if self.offsets else 0
        for group in groups[first:]:
            lr = group["lr"]
            initial = float(lr) if not isinstance(lr, Tensor) else 0.0  # a tensor lr is copied in by absorb
            if self.schedule is None:
                program = _rules.held(initial)
            else:
                program = Product([self.schedule], init=initial).encode()  # validated by the optimizer
            self.offsets.append(start + len(words))
            self.lengths.append(len(program))
            words += program
            self._seen_lr.append(None)
            self._seen_betas.append(None)
            self._beta1_arg.append(None)
        return torch.tensor(words, dtype=torch.float64).to(self.primary)

    def grow(self, groups: list[dict[str, Any]]) -> None:
        """Adds the words of groups added since (``add_param_group``); the others keep theirs."""
        first = self.group_count
        if len(groups) == first:
            return
        if len(groups) < first:
            raise RuntimeError(f"the optimizer had {first} param groups and now has {len(groups)}")
        self.flush()
        added = self._encode(groups, first)
        self.buffers = {self.primary: torch.cat([self.buffers[self.primary], added])}
        self._view_host_words()

    def mirror_to(self, devices: set[torch.device]) -> None:
        """Copies the words to the other devices a step updates (device to device, no sync)."""
        self.flush()
        source = self.buffers[self.primary]
        for device in devices - {self.primary}:
            if device not in self.buffers:
                self.buffers[device] = torch.empty_like(source, device=device)
            self.buffers[device].copy_(source, non_blocking=True)

    def words(self) -> Tensor:
        """Every group's words on the primary device, the deferred steps applied."""
        self.flush()
        return self.buffers[self.primary]

    def lr_words(self) -> Tensor:
        """The lr word of every group, a strided view (HELD layout only)."""
        self.flush()
        return self.buffers[self.primary].view(self.group_count, _rules.HELD_WORDS)[:, _rules.HELD_LR]

    def _queue_write(self, index: int, lr: float) -> bool:
        """Queues group ``index``'s new lr for the next op call (note [Host writes]); False when it
        cannot ride there (``schedule=``'s words, a full header, a CUDA graph capturing)."""
        queued = self._queued_writes
        if (
            not self.held
            or len(queued) == _step_plan.MAX_HOST_WRITES
            or (self.on_cuda and torch.cuda.is_current_stream_capturing())
        ):
            return False
        words, count = self._pending_words, len(queued)
        if count == 0:
            # One sequence number for the batch, after every deferred step already issued.
            words[_step_plan.PENDING_WRITE_SEQUENCE] = self.sequence
            self.sequence += 1
        slot = _step_plan.PENDING_WRITES + 2 * count
        words[slot] = self.offsets[index] + _rules.HELD_LR
        self._pending_values[slot + 1] = lr
        words[_step_plan.PENDING_WRITE_COUNT] = count + 1
        queued.append(index)
        return True

    def drop_queued_writes(self) -> None:
        """Forgets the writes queued for an op that did not run: their groups are written again
        at the next absorb."""
        for index in self._queued_writes:
            self._seen_lr[index] = None
        self._clear_queued_writes()

    def _clear_queued_writes(self) -> None:
        if self._queued_writes:
            self._queued_writes = []
            self._pending_words[_step_plan.PENDING_WRITE_COUNT] = 0

    def _store(self, position: int, value: float) -> None:
        """Writes one word from the host (deferred steps applied first: the last writer wins)."""
        self.flush()
        if self._host_words is not None and not torch.compiler.is_compiling():
            self._host_words[position] = value
        else:
            self.buffers[self.primary][position].fill_(value)

    def _lr_word(self, index: int) -> Tensor:
        self.flush()
        return self.buffers[self.primary][self.offsets[index] + _rules.HELD_LR]

    # --- the doors -------------------------------------------------------------------------------

    def absorb(self, groups: list[dict[str, Any]], compiling: bool = False, queue: bool = False) -> None:
        """Writes into the words what the host changed since they were last known (last writer wins).

        ``queue``: the optimizer's eager step, whose op follows at once, has a changed float lr ride
        in that op (note [Host writes]): no launch of its own. The step drops what it queued if it
        raises before its op (``drop_queued_writes``).

        In a compiled step a float lr is written without being compared or checked on the host:
        each comparison would be a guard and each new lr a recompilation, and the finiteness check
        breaks the graph on a symbolic float. The kernel skips and counts a non-finite lr there
        (note [Unusable schedule values])."""
        for index, group in enumerate(groups):
            lr, seen = group["lr"], self._seen_lr[index]
            if compiling and not isinstance(lr, Tensor):
                # zero_ then add_: torch.compile turns a symbolic float added to a tensor into a
                # graph input, where fill_ would specialize the graph on its value.
                self._lr_word(index).zero_().add_(lr)
                self._seen_lr[index] = None  # unknown to the host: the next eager absorb writes it
            elif isinstance(lr, Tensor):
                if lr is not seen:
                    # A tensor lr of the user's is followed at every step (it may change in place).
                    self._lr_word(index).copy_(lr.detach().reshape(()), non_blocking=True)
                    if is_published(lr):
                        self._seen_lr[index] = lr
            elif seen is None or isinstance(seen, Tensor) or lr != seen:
                value = check_lr_value(lr, f"param_groups[{index}]['lr']")
                if not (queue and self._queue_write(index, value)):
                    self._store(self.offsets[index] + _rules.HELD_LR, value)
                self._seen_lr[index] = lr
            betas = group.get(self.momentum_key)
            if betas is not self._seen_betas[index]:
                if self._beta1_arg[index] is not None:
                    # A new betas written over a device-driven beta1: the group's value wins.
                    self._store(self.offsets[index] + _rules.HELD_BETA1, math.nan)
                    self._beta1_arg[index] = None
                self._seen_betas[index] = betas

    def write(self, groups: list[dict[str, Any]]) -> None:
        """A step the host computed: its values become the words'. A float the word holds already
        (the lr last stored, no deferred step since) is not stored again: ReduceLROnPlateau's host
        step leaves most lrs as they were."""
        for index, group in enumerate(groups):
            lr, seen = group["lr"], self._seen_lr[index]
            held_already = lr.__class__ is float and seen.__class__ is float and lr == seen and not self.deferred_rules
            if isinstance(lr, Tensor):
                self._lr_word(index).copy_(lr.detach().reshape(()), non_blocking=True)
            elif not held_already:
                self._store(self.offsets[index] + _rules.HELD_LR, check_lr_value(lr, f"param_groups[{index}]['lr']"))
            if self.held and self._beta1_arg[index] is not None:
                self._store(self.offsets[index] + _rules.HELD_BETA1, math.nan)
                self._beta1_arg[index] = None
        self.record(groups)

    def advance(self, clock: Tensor, rules: Tensor, epoch: int | None, beta1_from: list[float | None]) -> bool:
        """A step on the device; ``rules`` are indexed (``_rules.indexed``); ``beta1_from[i]`` is
        group i's beta1 when the rules drive it, else None. True when the step was deferred."""
        deferred = epoch is None and self.can_defer()
        if deferred:
            self.defer(clock, rules)
        else:
            self.flush()
            _ops.advance_lr_(self.buffers[self.primary], clock, rules[self.group_count :], epoch)
        self.hold_beta1(beta1_from)
        self.driven = True
        return deferred

    def defer(self, clock: Tensor, rules: Tensor) -> None:
        """A plain step deferred to the next optimizer step (``can_defer()`` said it can wait):
        list appends and two stores in the ``pending`` header, no tensor op."""
        if self._queued_writes:
            self.flush()  # host writes land after the steps a call carries: these come first
        clocks = self.deferred_clocks
        if not clocks:
            slot = 0
            clocks.append(clock)
        elif clock is clocks[0]:
            slot = 0
        else:
            slot = next((i for i, c in enumerate(clocks) if c is clock), None)
            if slot is None:
                slot = len(clocks)
                clocks.append(clock)
        if not self.deferred_rules:
            self._pending_words[0] = self.sequence
        self._pending_words[1 + len(self.deferred_rules)] = slot
        self.deferred_rules.append(rules)
        self.sequence += 1

    def hold_beta1(self, beta1_from: list[float | None]) -> None:
        """Holds the op's beta1 argument of each group whose beta1 the rules drive (note on
        ``_beta1_arg``)."""
        held = self._beta1_arg
        for index, beta1 in enumerate(beta1_from):
            if beta1 is not None and held[index] is None:
                held[index] = beta1

    def can_defer(self) -> bool:
        if len(self.deferred_rules) == _step_plan.MAX_DEFERRED_STEPS:
            return False
        # A captured step must replay on its own: the optimizer op it would join is already recorded.
        return not (self.on_cuda and torch.cuda.is_current_stream_capturing())

    def steady_for(self, groups: list[dict[str, Any]]) -> bool:
        """Whether a scheduler step can take the steady path (note [The steady step]): the deferral
        is possible and ``absorb(groups)`` would write nothing, because every group's lr is a float
        the words were last known to hold and its betas the object last seen."""
        seen_lr, seen_betas = self._seen_lr, self._seen_betas
        if len(groups) != len(seen_lr) or not self.can_defer():
            return False
        for index, group in enumerate(groups):
            lr, seen = group["lr"], seen_lr[index]
            if lr.__class__ is not float or seen.__class__ is not float or lr != seen:
                return False
            if group.get(self.momentum_key) is not seen_betas[index]:
                return False
        return True

    def deferred(self) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
        """What the optimizer's op takes to apply the deferred steps: (clocks, rules, applied, pending)."""
        return self.deferred_clocks, self.deferred_rules, self.applied, self.pending

    def deferred_done(self) -> None:
        """The optimizer's op applied the deferred steps and the queued host writes."""
        if self.deferred_rules:
            self.deferred_rules = []
            self.deferred_clocks = []
        self._clear_queued_writes()

    def flush(self) -> None:
        """Applies the deferred steps and the queued host writes now (the step op with no tensors:
        one launch)."""
        if not self.deferred_rules and not self._queued_writes:
            return
        _ops.adam_step_(
            [],
            [],
            [],
            [],
            [],
            [],
            _step_plan.NO_BUCKETS,
            self.buffers[self.primary],
            self.deferred_clocks,
            self.deferred_rules,
            self.applied,
            self.pending,
            handle=self.flush_handle,
        )
        self.deferred_done()

    def record(self, groups: list[dict[str, Any]]) -> None:
        """Notes the host's values as what the words hold (after a step that set both). A tensor
        lr of the user's is not noted: it can change in place, so absorb copies it at every step."""
        for index, group in enumerate(groups):
            lr = group["lr"]
            if not isinstance(lr, Tensor) or lr is not self._seen_lr[index]:
                self._seen_lr[index] = lr if not isinstance(lr, Tensor) or is_published(lr) else None
            self._seen_betas[index] = group.get(self.momentum_key)

    def publish(self, groups: list[dict[str, Any]], index: int, lr: Tensor) -> None:
        """Puts a device tensor that lrfused made (a value only the device knows) in group
        ``index``'s lr, as what its word holds; a tensor lr of the user's is updated in place."""
        group = groups[index]
        current = group["lr"]
        if isinstance(current, Tensor) and not is_published(current):
            current.copy_(lr.reshape(current.shape), non_blocking=True)
            return
        setattr(lr, PUBLISHED, True)
        group["lr"] = lr
        self._seen_lr[index] = lr

    def momentum_of(self, group: dict[str, Any]) -> Any:
        """The group's value of what the beta1 word holds: Adam's beta1, SGD's or RMSprop's momentum."""
        return _step_plan.momentum_of(group, self.momentum_key)

    @property
    def beta1_args(self) -> list[float | None]:
        """The op's beta1 argument each group's beta1 word holds it to, or None (not driven)."""
        return self._beta1_arg

    def drives_beta1(self, index: int) -> bool:
        """Whether a device schedule drives group ``index``'s beta1 (its host value is a mirror;
        the kernel checks the device value)."""
        return index < len(self._beta1_arg) and self._beta1_arg[index] is not None

    def beta1_for(self, index: int, group_beta1: float) -> float:
        """The op's beta1 argument for group ``index``."""
        held = self._beta1_arg[index] if index < len(self._beta1_arg) else None
        return group_beta1 if held is None else held

    # --- the finder's save and restore -----------------------------------------------------------

    def snapshot(self) -> tuple[Tensor, list[Any], list[Any], list[float | None]]:
        self.flush()
        return (self.buffers[self.primary].clone(), list(self._seen_lr), list(self._seen_betas), list(self._beta1_arg))

    def restore(self, snapshot: tuple[Tensor, list[Any], list[Any], list[float | None]]) -> None:
        words, seen_lr, seen_betas, beta1_arg = snapshot
        self.flush()
        self.buffers[self.primary].copy_(words)
        self._seen_lr, self._seen_betas, self._beta1_arg = list(seen_lr), list(seen_betas), list(beta1_arg)
