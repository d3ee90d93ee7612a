"""The training harness every Lightning task plugs into: resumable data order, atomic checkpoints,
Ctrl-C that saves, the Trainer every model is fitted with.

Every model that learns is a LightningModule task: REALM's staged task (:mod:`realm.train`), the
baselines', the mmlm's and the tokenizer's (:mod:`realm.train.baselines`) and the emotion
classifier's (:mod:`realm.train.emotion`). All are fitted with the one Trainer (:func:`make_trainer`:
accelerator, devices, strategy, nodes and precision from the training config, so multi-GPU and
multi-node runs are a flag; TensorBoard and CSV logs; atomic checkpoint files) through
:func:`fit_resumable`, which resumes exactly (below); ``realm bench`` times their steps with
:func:`make_timing_trainer`.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, DistributedSampler

# ---------------------------------------------------------------- resume: exactly where an interrupted run stopped
#
# A resumed run equals an uninterrupted one with the same seed (bit for bit on a CPU; tests/test_resume.py):
# * every random draw of a training step (dropout, the coarse latents, the refinement's noise, the
#   discriminator's label noise) comes from generators seeded by (seed, stage, epoch, batch), and
#   each stage starts from its own seed (its initialisation and the stage-2 hand-over do not
#   depend on what ran before in the process);
# * the data order and each item's draws (a window's listener realisation) are pure functions of
#   (seed, stage, epoch, position), and the loader's position is part of every checkpoint, so a
#   run resumes mid-epoch at the next batch;
# * checkpoints (model, both stage-2 optimisers, schedulers, loops, the best-model tracker, the
#   data position) are written only where Lightning resumes exactly: after a validation, or at the
#   end of a batch that no validation follows; each file atomically (a SIGKILL leaves the last
#   complete one, never a torn file); ``last.ckpt`` after every validation and at least every
#   :data:`LAST_EVERY_S` seconds of training;
# * Ctrl-C (SIGINT) finishes the current batch, saves ``last.ckpt`` and stops with
#   :class:`TrainingInterrupted`, whose message (also printed) says how to resume.

#: Longest stretch of training a SIGKILL can lose: ``last.ckpt`` is also written at the end of the
#: first batch after this many seconds without a checkpoint.
LAST_EVERY_S = 600.0


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C; the message says where it was saved and how to resume."""


class StopRequested(Exception):
    """Raised inside ``Trainer.fit`` once the interrupted run is saved (not a KeyboardInterrupt,
    which Lightning turns into ``sys.exit(1)``)."""


def seed_key(*parts: int) -> int:
    """A 64-bit seed that is a pure function of ``parts`` (non-negative after mod 2^64)."""
    return int(np.random.SeedSequence([int(p) % (1 << 64) for p in parts]).generate_state(1, np.uint64)[0])


def seed_all(key: int) -> None:
    """Seed torch (CPU and every GPU), numpy's and Python's global generators."""
    random.seed(key)
    np.random.seed(key % (1 << 32))
    torch.manual_seed(key)


def launched_rank() -> int:
    """0 in the process a launcher started first (LOCAL_RANK + NODE_RANK, both 0 when not launched
    by one): known before any process group exists."""
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))


def best_model_state(path) -> dict[str, torch.Tensor]:
    """The model's weights in one of our Lightning checkpoints (loaded weights-only), without the
    task's ``model.`` prefix."""
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}


def _world() -> tuple[int, int]:
    """(world size, rank) of the process group, (1, 0) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class _EpochOrder(DistributedSampler):
    """Shuffled order of epoch ``e``: a pure function of (seed, e), sharded by rank under DDP, from
    item ``start`` of this rank's share. Yields ``(epoch, index)`` keys (:class:`_Keyed`). A
    DistributedSampler only so that Lightning keeps it under DDP instead of wrapping it."""

    def __init__(self, n: int, seed: int):  # no process group is needed before iterating
        self.n, self.seed, self.epoch, self.start, self.shuffle, self.drop_last = n, seed, 0, 0, True, False
        self.used = (0, 0)  # (epoch, start) of the last order drawn

    def __len__(self) -> int:
        return math.ceil(self.n / _world()[0])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.start = epoch, 0

    def __iter__(self):
        W, rank = _world()
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(seed_key(self.seed, self.epoch))).tolist()
        total = math.ceil(self.n / W) * W  # padded as DistributedSampler pads: every rank the same share
        order = (order * math.ceil(total / max(1, self.n)))[:total][rank::W]
        self.used = (self.epoch, self.start)
        return iter([(self.epoch, i) for i in order[self.start :]])


def _rng_holders(ds) -> list:
    """The datasets in ``ds``'s chain (``windows``, ``dataset``, ``base`` attributes) that draw from
    their own ``rng`` (a WindowDataset picking a listener realisation per item)."""
    out, todo, seen = [], [ds], set()
    while todo:
        d = todo.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        if isinstance(getattr(d, "rng", None), np.random.Generator):
            out.append(d)
        todo += [getattr(d, a) for a in ("windows", "dataset", "base") if isinstance(getattr(d, a, None), Dataset)]
    return out


class _Keyed(Dataset):
    """``ds`` read by ``(epoch, i)`` keys: item ``i``, its random draws a pure function of
    (seed, epoch, i), never of the items read before it (nor of which worker reads it)."""

    def __init__(self, ds, seed: int):
        self.ds, self.seed, self.holders = ds, seed, _rng_holders(ds)

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, key):
        epoch, i = key
        for j, d in enumerate(self.holders):
            d.rng = np.random.default_rng([self.seed % (1 << 64), epoch, i, j])  # ~15 us an item
        return self.ds[i]


class ResumableLoader(DataLoader):
    """The shuffling training loader of a resumable run: order and items pure functions of
    (seed, epoch, position); its state (``{"epoch", "batches"}``: the batches given out in the
    epoch) is saved with every checkpoint and restored before the first batch of a resumed run."""

    def __init__(self, dataset, seed: int, batch_size: int, drop_last: bool = False, **kw):
        self.order = _EpochOrder(len(dataset), seed)
        super().__init__(_Keyed(dataset, seed), batch_size=batch_size, sampler=self.order, drop_last=drop_last, **kw)
        self.position = (0, 0)  # (epoch, batches given out in it)

    def __iter__(self):
        first = True
        for batch in super().__iter__():
            if first:  # the order this iterator draws from (drawn lazily without workers)
                epoch, start = self.order.used
                self.position, first = (epoch, start // self.batch_size), False
            self.position = (self.position[0], self.position[1] + 1)
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.position[0], "batches": self.position[1]}

    def load_state_dict(self, state: dict) -> None:
        epoch, batches = int(state["epoch"]), int(state["batches"])
        if batches >= len(self):  # saved at the end of an epoch: the next one starts
            epoch, batches = epoch + 1, 0
        self.order.epoch, self.order.start, self.position = epoch, batches * self.batch_size, (epoch, batches)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, each file written beside its name, synced, then renamed onto
    it (Lightning's own goes through a temporary file in $TMPDIR, which is a non-atomic copy when
    that is another file system, and leaves the temporary file behind when killed)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        from realm.io import atomic_path

        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())


def _safe_to_save(trainer) -> bool:
    """Whether a checkpoint written at the end of the current training batch resumes exactly: not
    when a validation follows the batch (a run resumed from it skips that validation) nor at the
    end of an epoch (epoch-end work follows)."""
    loop = trainer.fit_loop.epoch_loop
    if loop.batch_progress.is_last_batch:
        return False
    try:
        return not loop._should_check_val_fx(trainer.fit_loop._data_fetcher)
    except AttributeError:  # another Lightning: checkpoints only after validations
        return False


#: Multi-process runs: batches between the ranks' agreement on stopping and saving (one all-reduce
#: each time; a Ctrl-C then takes effect within this many batches). Counted in batches, which every
#: rank sees alike (its optimiser steps need not be: stage 2 steps the discriminator conditionally).
AGREE_EVERY = 8


class ResumableCheckpoint(ModelCheckpoint):
    """``best.ckpt`` (selected on ``monitor``) and a ``last.ckpt`` a run resumes from exactly:
    written after every validation (Lightning writes it only when the best improves), at least every
    :data:`LAST_EVERY_S` seconds at the end of a batch, and on Ctrl-C (:meth:`request_stop`) at
    the end of the current batch, after which training stops. Its state holds the loader's position."""

    def __init__(self, dirpath, monitor: str, loader: ResumableLoader | None = None, label: str = "training",
                 every_s: float | None = None):  # fmt: skip
        super().__init__(dirpath=dirpath, filename="best", monitor=monitor, mode="min", save_top_k=1, save_last=True,
                         enable_version_counter=False)  # fmt: skip
        self.loader, self.label, self.every_s = loader, label, LAST_EVERY_S if every_s is None else every_s
        self.interrupted = False
        self._saved_at = time.monotonic()

    @property
    def state_key(self) -> str:  # ModelCheckpoint's: runs saved before this class keep their best-model tracker
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    @property
    def last_path(self) -> str:
        return os.path.join(self.dirpath, self.CHECKPOINT_NAME_LAST + self.FILE_EXTENSION)

    def request_stop(self, signum=None, frame=None) -> None:
        """SIGINT handler: stop at the end of this batch with a checkpoint; a second one stops at once."""
        if self.interrupted:
            raise StopRequested(f"{self.label} stopped without saving (its last checkpoint is in {self.dirpath})")
        self.interrupted = True
        if _world()[1] == 0:
            print("\ninterrupt: saving a checkpoint at the end of this batch (Ctrl-C again to stop without it)",
                  file=sys.stderr, flush=True)  # fmt: skip

    def _agree(self, trainer, pl_module, due: bool) -> tuple[bool, bool]:
        """(stop, save), the same on every rank: any rank's Ctrl-C or clock decides."""
        stop = self.interrupted
        if trainer.world_size > 1:
            t = trainer.strategy.reduce(torch.tensor([float(stop), float(due)], device=pl_module.device), reduce_op="sum")
            stop, due = bool(t[0] > 0), bool(t[1] > 0)
        return stop, due

    def _save_last(self, trainer) -> None:
        self.last_model_path = self.last_path  # part of the state it saves
        trainer.save_checkpoint(self.last_path, weights_only=False)  # the whole state, optimisers included
        self._saved_at = time.monotonic()

    def _stop(self, trainer) -> None:
        batches = trainer.fit_loop.epoch_loop.batch_progress.total.processed
        raise StopRequested(f"{self.label} saved after {batches} batches in {self.last_path}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.world_size > 1 and batch_idx % AGREE_EVERY:  # ranks agree every few batches, not every batch
            return
        stop, due = self._agree(trainer, pl_module, time.monotonic() - self._saved_at >= self.every_s)
        if (stop or due) and _safe_to_save(trainer):
            self._save_last(trainer)
            if stop:
                self._stop(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        if self._last_global_step_saved != trainer.global_step:  # the best did not improve: last.ckpt not written
            self._save_last(trainer)
        self._saved_at = time.monotonic()
        if self._agree(trainer, pl_module, False)[0]:
            self._stop(trainer)

    def state_dict(self) -> dict:
        return {**super().state_dict(), **({"loader": self.loader.state_dict()} if self.loader is not None else {})}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        if self.loader is not None and "loader" in state_dict:  # before the loader's first iterator is made
            self.loader.load_state_dict(state_dict["loader"])


@contextmanager
def _sigint_to(handler):
    """Route SIGINT to ``handler`` inside the block (main thread only; restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def resume_hint(out: Path, command: str | None, where: str | None = None) -> str:
    """One line: where an interrupted run was saved and the command that resumes it."""
    where = where or f"its last checkpoints are in {Path(out) / 'lightning'}"
    if command and command.split()[:2] == ["realm", "train"] and "--resume" not in command.split():
        command += " --resume"
    how = command or f"the same command with --resume (run directory {out})"
    return f"interrupted: {where}; resume with: {how}"


def fit_resumable(trainer, task, train_dl, val_dl, ckpt: ResumableCheckpoint, resume: bool) -> str:
    """``trainer.fit`` for every training of ours: from ``ckpt``'s last checkpoint when resuming (loaded
    weights-only: our own checkpoints hold tensors and plain values, never code), Ctrl-C finishing the
    batch, saving and stopping (:meth:`ResumableCheckpoint.request_stop`). Returns the best checkpoint
    (the last one when no validation kept a best)."""
    last = ckpt.last_path
    with _sigint_to(ckpt.request_stop):
        trainer.fit(task, train_dl, val_dl, ckpt_path=last if resume and os.path.exists(last) else None,
                    weights_only=True)  # fmt: skip
    return ckpt.best_model_path or last


def keep_csv_log(log_dir: Path) -> None:
    """Lightning's CSVLogger deletes the ``metrics.csv`` it finds: a resumed run keeps the one before
    as ``metrics.1.csv`` (``.2``, ...)."""
    old = Path(log_dir) / "metrics.csv"
    if old.is_file():
        n = 1
        while (old.parent / f"metrics.{n}.csv").exists():
            n += 1
        os.replace(old, old.parent / f"metrics.{n}.csv")


def read_state(path: Path) -> dict:
    """``train_state.json`` of a run, or a one-line error naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the run's state file is damaged") from None




def interrupted(out, command: str | None, e: BaseException) -> TrainingInterrupted:
    """The resume line (printed once, by rank 0) as the exception a Ctrl-C ends training with."""
    where = e.args[0] if isinstance(e, StopRequested) and e.args else None
    msg = resume_hint(Path(out), command, where)
    if launched_rank() == 0:
        print(msg, file=sys.stderr, flush=True)
    return TrainingInterrupted(msg)



# ---------------------------------------------------------------- the Trainer


def make_trainer(cfg, out: Path, name: str, ckpt: ResumableCheckpoint, progress: bool, train_dl, *,
                 max_epochs: int, max_steps: int = -1, max_minutes: float = 0.0, unused_parameters: bool = False,
                 val_check_interval=None, deterministic: bool | None = None) -> L.Trainer:  # fmt: skip
    """The Trainer of every Lightning task: runtime fields of ``cfg`` (accelerator, devices, strategy,
    num_nodes, precision), ``ckpt`` (+ a progress bar), TensorBoard and CSV logs under
    ``out/logs/name`` (a resumed run's CSV log goes on beside the old one), atomic checkpoint files.
    ``unused_parameters``: under DDP, a task whose backward passes reach only part of the model at
    a time (REALM's stage 2 GAN, staged VQ-VAE + token models). ``val_check_interval`` (batches) is
    capped by the batches one rank draws from ``train_dl`` an epoch (under DDP its share), so a
    step budget or a validation interval longer than a rank's epoch validates at the epoch's end."""
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    keep_csv_log(out / "logs" / name)
    per_rank = rank_batches(train_dl, configured_world(cfg))
    if isinstance(val_check_interval, int) and val_check_interval >= per_rank:
        val_check_interval = None  # every epoch's end
    return L.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        max_time=timedelta(minutes=max_minutes) if max_minutes > 0 else None,
        accelerator=cfg.accelerator,
        devices=devices(cfg.devices),
        strategy="ddp_find_unused_parameters_true" if unused_parameters and cfg.strategy == "ddp" else cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=cfg.precision,
        callbacks=[ckpt] + ([RichProgressBar()] if progress else []),
        logger=[
            TensorBoardLogger(out / "logs", name=name, version=""),
            CSVLogger(out / "logs", name=name, version=""),
        ],
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=max(1, min(50, per_rank)),
        val_check_interval=val_check_interval,
        num_sanity_val_steps=0,
        deterministic=deterministic,
        plugins=[AtomicCheckpointIO()],  # every checkpoint file atomic
    )


def make_timing_trainer(cfg, callbacks: list, max_steps: int, root: Path) -> L.Trainer:
    """The Trainer that times a task's training steps (``realm bench``'s calibration): ``cfg``'s
    accelerator and precision on one device, no checkpoints, logs, validation or progress bar."""
    return L.Trainer(
        max_steps=max_steps, max_epochs=10_000, accelerator=cfg.accelerator, devices=1, precision=cfg.precision,
        callbacks=callbacks, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, default_root_dir=root,
    )  # fmt: skip


def devices(d: str):
    """Lightning ``devices`` from the command line's string: "auto", a count, or a list "0,1"."""
    if d == "auto":
        return "auto"
    return [int(x) for x in d.split(",")] if "," in d else int(d)


def configured_world(cfg) -> int:
    """Processes the run's flags ask for (devices x nodes; "auto" counts as one): what a DDP rank's
    share of the batches is divided by before any process group exists."""
    d = devices(cfg.devices)
    n = len(d) if isinstance(d, list) else d if isinstance(d, int) else 1
    return max(1, n) * max(1, int(getattr(cfg, "num_nodes", 1) or 1))


def rank_batches(loader, world: int) -> int:
    """Batches a DDP rank draws from ``loader`` an epoch, each of the ``world`` ranks taking an equal share of the items."""
    share = math.ceil(len(loader.dataset) / max(1, world))
    return share // loader.batch_size if loader.drop_last else math.ceil(share / loader.batch_size)


def jsonable(d: dict) -> dict:
    """``d`` as JSON would store it (tuples as lists), for configs saved with a run."""
    return json.loads(json.dumps(d, default=list))
