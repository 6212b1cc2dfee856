"""lrfused inside the frameworks people train with: Lightning, Hugging Face Trainer, accelerate.

Each case trains the same tiny model twice through the framework, once with torch.optim.AdamW and
torch's schedulers and once with lrfused, and compares what the framework saw (the lrs it logged,
the losses) and the trained params. A framework that is not installed skips its tests;
``.ci/run`` installs them beside the torch that is already there (never changing it)."""

import functools
import math
import warnings

import pytest
import torch
from torch.optim import lr_scheduler as T

import lrfused
from helpers import assert_same_params, max_relative_error
from lrfused import lr_scheduler as L
from lrfused.optim import binding_of


def assert_same_values(ours, theirs, where):
    assert len(ours) == len(theirs), where
    for step, (a, b) in enumerate(zip(ours, theirs)):
        assert math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-300), (where, step, a, b)


def optimizer_classes(torch_side: bool):
    return (torch.optim.AdamW, T) if torch_side else (lrfused.FusedScheduledAdamW, L)


def lightning_or_skip():
    return pytest.importorskip("lightning.pytorch", reason="Lightning is not installed")


def regression_data(seed, count=64, features=8):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(count, features, generator=generator)
    y = x @ torch.randn(features, 1, generator=generator) + 0.1 * torch.randn(count, 1, generator=generator)
    return torch.utils.data.TensorDataset(x, y)


def lightning_module(pl, build_optimization, automatic=True):
    """A linear regression whose ``configure_optimizers`` is ``build_optimization(params)``."""

    class Regression(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = automatic
            self.layer = torch.nn.Linear(8, 1)
            self.losses = []

        def training_step(self, batch, index):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x), y)
            self.losses.append(loss.detach().clone())
            self.log("train_loss", loss, on_step=True, on_epoch=True)
            if automatic:
                return loss
            return self.manual_step(loss)

        def configure_optimizers(self):
            return build_optimization(self.parameters())

    return Regression


def fit_lightning(pl, tmp_path, module_class, seed, monitor, **trainer_args):
    torch.manual_seed(seed)
    model = module_class()
    lr_monitor = pl.callbacks.LearningRateMonitor(logging_interval="step", log_momentum=True)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=pl.loggers.CSVLogger(tmp_path),
        callbacks=[lr_monitor] if monitor else [],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        **trainer_args,
    )
    data = torch.utils.data.DataLoader(regression_data(seed), batch_size=8, shuffle=False)
    trainer.fit(model, data)
    return model, lr_monitor


def _one_cycle_per_step(torch_side):
    optimizer_class, schedulers = optimizer_classes(torch_side)

    def build(params):
        opt = optimizer_class(params, lr=3e-3)
        sched = schedulers.OneCycleLR(opt, max_lr=0.05, total_steps=24)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    return build


def _warmup_then_plateau_per_epoch(torch_side):
    optimizer_class, schedulers = optimizer_classes(torch_side)

    def build(params):
        opt = optimizer_class(params, lr=2e-2)
        warmup = schedulers.LinearLR(opt, start_factor=0.2, total_iters=4)
        plateau = schedulers.ReduceLROnPlateau(opt, factor=0.5, patience=0, threshold=0.5)
        return (
            [opt],
            [
                {"scheduler": warmup, "interval": "step"},
                {"scheduler": plateau, "interval": "epoch", "monitor": "train_loss_epoch"},
            ],
        )

    return build


@pytest.mark.parametrize(
    "recipe, trainer_args",
    [
        (_one_cycle_per_step, {"max_steps": 24}),
        (_warmup_then_plateau_per_epoch, {"max_epochs": 4}),
    ],
    ids=["one-cycle-per-step", "warmup-then-plateau-per-epoch"],
)
def test_lightning_trainer_logs_and_trains_as_with_torch(tmp_path, recipe, trainer_args):
    pl = lightning_or_skip()
    runs = []
    for side in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs.append(
                fit_lightning(pl, tmp_path / str(side), lightning_module(pl, recipe(side)), 7, True, **trainer_args)
            )
        # Lightning passes the monitored metric as a CPU tensor: ReduceLROnPlateau keeps torch's
        # float lrs, so the LearningRateMonitor has nothing to warn about.
        tensor_copies = [str(w.message) for w in caught if "copy construct from a tensor" in str(w.message)]
        assert not tensor_copies, tensor_copies
    (model_theirs, monitor_theirs), (model_ours, monitor_ours) = runs
    # The monitor names its series after the optimizer's class ("lr-AdamW", "lr-AdamW-momentum").
    series_ours = {key.replace("FusedScheduledAdamW", "AdamW"): v for key, v in monitor_ours.lrs.items()}
    assert series_ours.keys() == monitor_theirs.lrs.keys()
    for key in monitor_theirs.lrs:
        assert_same_values(series_ours[key], monitor_theirs.lrs[key], key)
    assert len(set(float(v) for v in series_ours["lr-AdamW"])) > 1  # the lr moved
    assert_same_values(model_ours.losses[:1], model_theirs.losses[:1], "first loss")
    assert_same_params(model_ours, model_theirs)


# The other rules, each lrfused's against torch's of the same name: (lrfused, torch, arguments,
# whether OneCycleLR cycles its momentum).
OTHER_RULES = {
    "SGD": (lrfused.FusedScheduledSGD, torch.optim.SGD, dict(lr=1e-2, momentum=0.9, nesterov=True), True),
    "RMSprop": (lrfused.FusedScheduledRMSprop, torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5), True),
    "Adagrad": (lrfused.FusedScheduledAdagrad, torch.optim.Adagrad, dict(lr=5e-2, lr_decay=0.01), False),
}


@pytest.mark.parametrize("rule", list(OTHER_RULES))
def test_lightning_trains_the_other_rules_as_with_torch(tmp_path, rule):
    pl = lightning_or_skip()
    ours_class, theirs_class, kwargs, cycles = OTHER_RULES[rule]
    runs = []
    for optimizer_class, schedulers in ((theirs_class, T), (ours_class, L)):

        def build(params, optimizer_class=optimizer_class, schedulers=schedulers):
            opt = optimizer_class(params, **kwargs)
            sched = schedulers.OneCycleLR(opt, max_lr=0.05, total_steps=24, cycle_momentum=cycles)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

        runs.append(
            fit_lightning(pl, tmp_path / optimizer_class.__name__, lightning_module(pl, build), 7, True, max_steps=24)
        )
    (model_theirs, monitor_theirs), (model_ours, monitor_ours) = runs
    series_ours = {key.replace(ours_class.__name__, theirs_class.__name__): v for key, v in monitor_ours.lrs.items()}
    assert series_ours.keys() == monitor_theirs.lrs.keys()
    for key in monitor_theirs.lrs:
        assert_same_values(series_ours[key], monitor_theirs.lrs[key], key)
    assert len(set(float(v) for v in series_ours[f"lr-{theirs_class.__name__}"])) > 1  # the lr moved
    assert_same_params(model_ours, model_theirs)


def test_lightning_manual_optimization_scheduler_on_the_lightning_optimizer(tmp_path):
    """A scheduler built on ``self.optimizers()`` (a LightningOptimizer) drives the optimizer inside."""
    pl = lightning_or_skip()
    results = []
    for torch_side in (True, False):
        optimizer_class, schedulers = optimizer_classes(torch_side)
        module_class = lightning_module(pl, lambda params: optimizer_class(params, lr=1e-2), automatic=False)

        class Manual(module_class):
            def on_train_start(self):
                self.sched = schedulers.CosineAnnealingLR(self.optimizers(), T_max=10)
                self.seen_lrs = []

            def manual_step(self, loss):
                opt = self.optimizers()
                opt.zero_grad()
                self.manual_backward(loss)
                opt.step()
                self.sched.step()
                self.seen_lrs.append(opt.param_groups[0]["lr"])

        model, _ = fit_lightning(pl, tmp_path / str(torch_side), Manual, 3, False, max_epochs=2)
        results.append(model)
    theirs, ours = results
    assert type(ours.sched.optimizer) is lrfused.FusedScheduledAdamW  # not Lightning's subclass of it
    assert_same_values(ours.seen_lrs, theirs.seen_lrs, "lr after each step")
    assert_same_params(ours, theirs)


def test_lightning_lr_find_then_training_follows_torch(tmp_path):
    """Lightning's LR range test writes group["lr"] through its own torch schedulers, then restores
    the model and the optimizer; training then runs the configured lrfused scheduler."""
    pl = lightning_or_skip()
    from lightning.pytorch.tuner import Tuner

    found = []
    for torch_side in (True, False):
        optimizer_class, schedulers = optimizer_classes(torch_side)

        def build(params):
            opt = optimizer_class(params, lr=1e-3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": schedulers.StepLR(opt, 4, 0.5), "interval": "step"}}

        torch.manual_seed(5)
        model = lightning_module(pl, build)()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_steps=12,
            default_root_dir=tmp_path / str(torch_side),
        )
        data = torch.utils.data.DataLoader(regression_data(5), batch_size=8, shuffle=False)
        finder = Tuner(trainer).lr_find(
            model, train_dataloaders=data, min_lr=1e-5, max_lr=1.0, num_training=20, update_attr=False
        )
        trainer.fit(model, data)
        found.append((finder, model, trainer.optimizers[0]))
    (finder_theirs, model_theirs, opt_theirs), (finder_ours, model_ours, opt_ours) = found
    assert_same_values(finder_ours.results["lr"], finder_theirs.results["lr"], "finder lrs")
    assert finder_ours.results["loss"] == pytest.approx(finder_theirs.results["loss"], rel=1e-4)
    assert float(opt_ours.param_groups[0]["lr"]) == pytest.approx(opt_theirs.param_groups[0]["lr"], rel=1e-12)
    assert_same_params(model_ours, model_theirs)


def accelerate_or_skip():
    return pytest.importorskip("accelerate", reason="accelerate is not installed")


@pytest.fixture
def fresh_accelerator_state():
    """accelerate keeps its state in process-wide singletons: each test starts from none."""
    accelerate = accelerate_or_skip()
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield accelerate
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def accelerate_run(accelerate, torch_side, build_scheduler, metric_steps):
    """Prepare model and optimizer, build the scheduler on the *prepared* optimizer (an
    AcceleratedOptimizer), prepare it too, and train; returns the model and the lrs after each step."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    optimizer_class, schedulers = optimizer_classes(torch_side)
    torch.manual_seed(11)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    accelerator = accelerate.Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, optimizer_class(model.parameters(), lr=1e-2))
    sched = accelerator.prepare(build_scheduler(schedulers, opt))
    data = regression_data(11)
    lrs = []
    for step in range(metric_steps):
        x, y = data[8 * (step % 8) : 8 * (step % 8) + 8]
        loss = torch.nn.functional.mse_loss(model(x), y)
        accelerator.backward(loss)
        opt.step()
        if isinstance(sched.scheduler, T.ReduceLROnPlateau):
            sched.step(round(loss.item(), 1))  # coarse, so that the plateau really triggers
        else:
            sched.step()
        opt.zero_grad()
        lrs.append(float(opt.param_groups[0]["lr"]))
    return model, lrs, accelerator, opt, sched


@pytest.mark.parametrize(
    "build_scheduler",
    [
        lambda S, opt: S.CosineAnnealingWarmRestarts(opt, T_0=5, T_mult=2),
        lambda S, opt: S.ReduceLROnPlateau(opt, factor=0.5, patience=1),
    ],
    ids=["warm-restarts", "plateau"],
)
def test_accelerate_prepared_optimizer_and_scheduler(fresh_accelerator_state, build_scheduler):
    accelerate = fresh_accelerator_state
    model_theirs, lrs_theirs, *_ = accelerate_run(accelerate, True, build_scheduler, 30)
    model_ours, lrs_ours, _, opt, sched = accelerate_run(accelerate, False, build_scheduler, 30)
    assert type(sched.scheduler.optimizer) is lrfused.FusedScheduledAdamW
    assert len(set(lrs_theirs)) > 1
    assert_same_values(lrs_ours, lrs_theirs, "lr after each step")
    assert_same_params(model_ours, model_theirs)


def test_accelerate_save_and_load_state_resumes_like_torch(fresh_accelerator_state, tmp_path):
    """accelerate's checkpoint of optimizer and scheduler, loaded into a fresh run, continues as torch."""
    accelerate = fresh_accelerator_state
    build = lambda S, opt: S.OneCycleLR(opt, max_lr=0.05, total_steps=40)  # noqa: E731
    resumed = []
    for torch_side in (True, False):
        _, _, accelerator, _, _ = accelerate_run(accelerate, torch_side, build, 15)
        accelerator.save_state(tmp_path / str(torch_side))
        model, _, accelerator, opt, sched = accelerate_run(accelerate, torch_side, build, 0)
        accelerator.load_state(tmp_path / str(torch_side))
        resumed.append((opt, sched))
    (opt_theirs, sched_theirs), (opt_ours, sched_ours) = resumed
    for _ in range(10):
        sched_ours.step()
        sched_theirs.step()
        for key in ("lr", "betas"):
            assert_same_values(
                [opt_ours.param_groups[0][key] if key == "lr" else opt_ours.param_groups[0][key][0]],
                [opt_theirs.param_groups[0][key] if key == "lr" else opt_theirs.param_groups[0][key][0]],
                key,
            )
    binding_of(opt_ours.optimizer).absorb(opt_ours.param_groups)
    assert binding_of(opt_ours.optimizer).lr_words().tolist() == pytest.approx(
        [float(opt_theirs.param_groups[0]["lr"])], rel=1e-12
    )


def transformers_or_skip():
    return pytest.importorskip("transformers", reason="transformers is not installed")


def tiny_causal_lm(transformers, seed):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    return transformers.GPT2LMHeadModel(config)


class TokenData(torch.utils.data.Dataset):
    def __init__(self, seed, count=48, length=12):
        self.tokens = torch.randint(0, 64, (count, length), generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, index):
        return {"input_ids": self.tokens[index], "labels": self.tokens[index]}


def hf_train(transformers, tmp_path, model, optimizers, **arguments):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=18,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
        **arguments,
    )
    trainer = transformers.Trainer(model=model, args=args, train_dataset=TokenData(3), optimizers=optimizers)
    trainer.train()
    history = [entry for entry in trainer.state.log_history if "learning_rate" in entry]
    return [e["learning_rate"] for e in history], [e["loss"] for e in history], trainer


def parameter_gap(model_a, model_b):
    return max(max_relative_error(a, b) for a, b in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("who_schedules", ["lrfused-scheduler", "trainer-cosine-with-warmup"])
def test_hugging_face_trainer_trains_as_with_torch(tmp_path, who_schedules):
    """The Trainer wraps the optimizer in accelerate's AcceleratedOptimizer (which reloads its state)
    and steps the scheduler; either an lrfused scheduler given to it, or its own cosine schedule (a
    torch LambdaLR) built on the lrfused optimizer."""
    transformers = transformers_or_skip()
    from accelerate.state import AcceleratorState, GradientState

    sides = {
        "torch": (torch.optim.AdamW, T),
        "torch-fused": (functools.partial(torch.optim.AdamW, fused=True), T),
        "lrfused": (lrfused.FusedScheduledAdamW, L),
    }
    runs = {}
    for side, (optimizer_class, schedulers) in sides.items():
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        model = tiny_causal_lm(transformers, 3)
        opt = optimizer_class(model.parameters(), lr=5e-3, weight_decay=0.01)
        if who_schedules == "lrfused-scheduler":
            sched = schedulers.SequentialLR(
                opt, [schedulers.LinearLR(opt, 0.1, total_iters=5), schedulers.ExponentialLR(opt, 0.9)], milestones=[5]
            )
            extra = {}
        else:
            sched = None
            extra = {"lr_scheduler_type": "cosine", "warmup_steps": 4}
        runs[side] = hf_train(transformers, tmp_path / side, model, (opt, sched), **extra)[:2] + (model,)
    (lrs_theirs, losses_theirs, model_theirs), (lrs_ours, losses_ours, model_ours) = runs["torch"], runs["lrfused"]
    assert len(set(lrs_theirs)) > 1
    assert_same_values(lrs_ours, lrs_theirs, "logged lrs")
    assert losses_ours == pytest.approx(losses_theirs, rel=1e-4)
    # 18 steps of a transformer amplify rounding: torch's own fused AdamW ends ~1e-4 (relative) away
    # from its for-loop AdamW here. lrfused must stay within a few times that gap of either; a wrong
    # lr, bias correction or decay at any step would be orders of magnitude further.
    torch_gap = parameter_gap(runs["torch-fused"][2], model_theirs)
    assert 0 < torch_gap < 1e-3
    assert parameter_gap(model_ours, model_theirs) < 4 * torch_gap
    assert parameter_gap(model_ours, runs["torch-fused"][2]) < 4 * torch_gap


# torch's fastest implementation of each other rule, to tell its own rounding gap on a transformer.
FASTEST = {"SGD": dict(fused=True), "RMSprop": dict(foreach=True), "Adagrad": dict(fused=True)}


@pytest.mark.parametrize("rule", list(OTHER_RULES))
def test_hugging_face_trainer_trains_the_other_rules_as_with_torch(tmp_path, rule):
    """The Trainer's own cosine schedule with warmup (a torch LambdaLR) on each other rule."""
    transformers = transformers_or_skip()
    from accelerate.state import AcceleratorState, GradientState

    ours_class, theirs_class, kwargs, _ = OTHER_RULES[rule]
    runs = []
    sides = (theirs_class, functools.partial(theirs_class, **FASTEST[rule]), ours_class)
    for number, optimizer_class in enumerate(sides):
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        model = tiny_causal_lm(transformers, 3)
        opt = optimizer_class(model.parameters(), **kwargs)
        lrs, losses, _ = hf_train(
            transformers, tmp_path / str(number), model, (opt, None), lr_scheduler_type="cosine", warmup_steps=4
        )
        runs.append((lrs, losses, model))
    (lrs_theirs, losses_theirs, model_theirs), (_, _, model_fastest), (lrs_ours, losses_ours, model_ours) = runs
    assert len(set(lrs_theirs)) > 1
    assert_same_values(lrs_ours, lrs_theirs, "logged lrs")
    assert losses_ours == pytest.approx(losses_theirs, rel=1e-4)
    # Every param within 1e-3 of torch's for-loop after 18 steps, but those where torch's own two
    # implementations already disagree by more: Adagrad divides each grad by its own running norm,
    # so an attention key bias, whose grad is rounding noise (softmax ignores it), takes lr-sized
    # steps of random sign (torch's fused Adagrad ends 0.5 away from its for-loop there).
    compared = 0
    for (name, ours), theirs, fastest in zip(
        model_ours.named_parameters(), model_theirs.parameters(), model_fastest.parameters()
    ):
        if max_relative_error(fastest, theirs) > 1e-3:
            continue
        compared += 1
        assert max_relative_error(ours, theirs) < 1e-3, name
    assert compared >= len(list(model_theirs.parameters())) - 2


def test_framework_interfaces():
    """What Lightning's configure_optimizers and Hugging Face's Trainer(optimizers=(opt, sched)) use,
    exercised by a minimal hand-written loop of the same shape (no framework installed)."""
    model = torch.nn.Linear(4, 1)
    optimizer = lrfused.FusedScheduledAdamW(model.parameters(), lr=1e-3)
    scheduler = L.LinearLR(optimizer, start_factor=0.1, total_iters=10)
    # Lightning: configure_optimizers returns this dict; it checks the scheduler's type.
    config = {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.LRScheduler)
    assert isinstance(optimizer, torch.optim.Optimizer)
    logged = []
    for step in range(5):
        model(torch.randn(8, 4)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        config["lr_scheduler"]["scheduler"].step()
        # Both frameworks log the lr from here; Trainer also calls get_last_lr().
        logged.append((optimizer.param_groups[0]["lr"], scheduler.get_last_lr()[0]))
    assert all(isinstance(a, float) and a == b for a, b in logged)
    assert logged[-1][0] == pytest.approx(1e-3 * (0.1 + 0.9 * 5 / 10))
    # Checkpointing through the frameworks is state_dict / load_state_dict of both objects.
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
    assert all(
        isinstance(v, (int, float, bool, str, list, dict, tuple, type(None), torch.Tensor))
        for v in state["scheduler"].values()
    )
    # ReduceLROnPlateau is recognised by its torch class, and takes the monitored metric.
    plateau = L.ReduceLROnPlateau(lrfused.FusedScheduledAdam(model.parameters()), patience=0)
    assert isinstance(plateau, torch.optim.lr_scheduler.ReduceLROnPlateau)
    plateau.step(1.0)
