"""The life of a run: prepared as a folder, then trained in this process once a device slot is free.

    run = prepare_run(config)          # runs/<id>/ with config.json, dataset.json and status "queued"
    results = run_training(run)        # what `python -m histo_core train` does; never raises for a failed run

`run_training` waits for a device slot (histo_core.slots; not under torchrun), keeps status.json current (state,
phase, epoch, step, speed, ETA, a heartbeat), obeys a cancel (SIGTERM/SIGINT or the run's `cancel` file) at batch
boundaries, checkpoints last.pt every epoch and best.pt when the monitored metric improves, resumes from last.pt,
and ends with the test/val evaluation of best.pt (results.json, predictions_<split>.npz) and the embeddings.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from histo_core import checkpoint as ckpt_mod
from histo_core.config import TrainConfig
from histo_core.distributed import any_rank, barrier, broadcast, current_world, gather_objects
from histo_core.errors import HistoError
from histo_core.fsutil import savez_atomic, write_json_atomic
from histo_core.liveness import error_line
from histo_core.metrics import classification_report, small_split_warnings
from histo_core.runs import RunDir, RunStatus, create_run_dir, new_run_id
from histo_core.runtime import resolve_device
from histo_core.slots import device_slot, gpu_count, gpu_of_slot, physical_gpu
from histo_core.training import status as status_mod
from histo_core.training.codivide import AnyTrainer, make_trainer
from histo_core.training.data import TrainData, build_train_data, model_meta
from histo_core.training.defaults import check_config, open_config_dataset
from histo_core.training.device import setup_device
from histo_core.training.final import epoch_line, final_evaluation
from histo_core.training.status import (
    CancelFlag,
    RankBeacon,
    RunFolderGone,
    StatusWriter,
    append_log,
    own_start_time,
    say,
)
from histo_core.training.trainer import StopRequested

ROW_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "lr", "seconds", "images_per_s")


def prepare_run(config: TrainConfig, runs_root: str | os.PathLike | None = None) -> RunDir:
    """Check everything, then create the run directory with config.json, dataset.json and a queued status."""
    info = check_config(config)
    run = create_run_dir(
        runs_root,
        new_run_id(config.name, config.arch, info.name if not Path(info.name).exists() else Path(info.name).stem),
    )
    write_json_atomic(run.config_path, config.to_dict())
    write_json_atomic(run.dataset_path, info.to_dict())
    run.write_status(RunStatus(state="queued", epochs=config.epochs, device=resolve_device(config.device)))
    return run


def run_training(run: RunDir, resume: bool = False) -> dict[str, Any]:
    """Execute the run described by run/config.json in this process (see the module doc of runs.py for the
    files written). Returns {"run_dir", "state", "test", "val", ...}; never raises for a failed run."""
    rank, world, local_rank = current_world()
    writer = StatusWriter(run, enabled=rank == 0)
    cancel = CancelFlag(run)
    cancel.install()
    beacon = status_mod.start_beacon(run, writer, rank, world)
    try:
        job = _Job(run, TrainConfig.from_dict(run.config()), writer, cancel, rank, world, local_rank, beacon=beacon)
        return _train_when_a_slot_is_free(job, resume)
    except RunFolderGone:  # deleted under us: stop, write nothing (writers never re-create the folder)
        say(f"{run.path}: the run folder was deleted; stopping without saving", rank)
        return {"run_dir": str(run.path), "state": "deleted", "test": None}
    except StopRequested:
        if status_mod.peer_death(beacon):  # torchrun's agent stops the other ranks when one dies: not a cancel
            return _failed(run, writer, rank, str(status_mod.peer_death(beacon)))
        writer.update(state="cancelled", finished_at=time.time(), phase="")
        say(f"{run.id}: cancelled", rank)
        return {"run_dir": str(run.path), "state": "cancelled", "test": None}
    except BaseException as exc:  # noqa: BLE001 - every failure must end as state "failed"
        if isinstance(exc, OSError) and not run.path.is_dir():  # deleted between two checks: the same stop
            say(f"{run.path}: the run folder was deleted; stopping without saving", rank)
            return {"run_dir": str(run.path), "state": "deleted", "test": None}
        line = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else error_line(exc)
        if beacon is not None:
            beacon.failed(line)  # first: rank 0 quotes it when this rank's collectives break
        # every rank's failure reaches the run's log (a torchrun rank's stderr is not the log the Runs page shows)
        append_log(
            run, traceback.format_exc() if world <= 1 else f"rank {rank}: failed: {line}\n{traceback.format_exc()}"
        )
        death = status_mod.peer_death(beacon)
        return _failed(run, writer, rank, death or line)
    finally:
        if beacon is not None:
            beacon.stop()
        writer.stop()
        cancel.restore()


def _failed(run: RunDir, writer: StatusWriter, rank: int, line: str) -> dict[str, Any]:
    if rank == 0:
        try:
            writer.update(state="failed", error=line, finished_at=time.time(), phase="")
        except OSError:
            pass
    say(f"{run.id}: failed: {line}")  # on every rank's stderr, not only rank 0's
    return {"run_dir": str(run.path), "state": "failed", "error": line, "test": None}


@dataclass
class _Job:
    """One run being trained by this process, and what it reports to."""

    run: RunDir
    config: TrainConfig
    writer: StatusWriter
    cancel: CancelFlag
    rank: int
    world: int
    local_rank: int
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "epoch": 0, "bad_epochs": 0})
    board: Any = None  # tensorboard_log.RunBoard of rank 0
    beacon: RankBeacon | None = None  # under torchrun: the heartbeat files (status.RankBeacon)

    def log(self, text: str) -> None:
        say(text, self.rank)


def _train_when_a_slot_is_free(job: _Job, resume: bool) -> dict[str, Any]:
    """Queue for the device (status "queued", cancellable while waiting), then train on the slot's GPU. A torchrun
    rank on CUDA queues for a slot of the GPU it was placed on (LOCAL_RANK); on the CPU torchrun's processes take
    no slot (they would wait for each other's one slot)."""

    def waiting() -> None:
        job.writer.update(state="queued")
        if job.cancel.requested():
            raise StopRequested()

    kind = resolve_device(job.config.device)
    rank_gpu = job.local_rank % max(1, gpu_count()) if kind == "cuda" else 0
    if job.world > 1 and kind != "cuda":
        return _train(job, resume, 0)
    job.writer.update(state="queued", pid=os.getpid(), pid_start=own_start_time())
    with device_slot(
        kind, runs_root=job.run.path.parent, on_wait=waiting, gpu=rank_gpu if job.world > 1 else None
    ) as slot:
        return _train(job, resume, rank_gpu if job.world > 1 else gpu_of_slot(slot) if kind == "cuda" else 0)


def _train(job: _Job, resume: bool, gpu: int) -> dict[str, Any]:
    """Set up on GPU `gpu` (CUDA runs), train epoch by epoch until done, early-stopped or cancelled, then evaluate
    and embed."""
    device = setup_device(job.config, gpu)
    trainer, meta = _start(job, device, resume)
    if job.rank == 0:
        from histo_core.tensorboard_log import RunBoard

        job.board = RunBoard(job.run.path)  # events beside metrics.jsonl: tensorboard --logdir RUNS_DIR
    progress = _BatchProgress(job, trainer.steps_per_epoch, device, meta)
    if job.beacon is not None:  # rank 0 stuck in a collective after a peer died keeps its state before it ends
        job.beacon.before_exit = lambda: _save_rank_state(job, trainer)
    job.writer.update(phase="train", epoch=trainer.epoch, step=trainer.step, steps_per_epoch=trainer.steps_per_epoch)
    started = time.time()
    stopped_early = False
    while trainer.epoch < job.config.epochs:
        try:
            row = trainer.train_epoch(progress)
        except StopRequested:  # every rank stops at the same batch
            _save_last(job, trainer, meta, gather_objects(trainer.rank_state(), job.world))
            raise
        except torch.OutOfMemoryError:
            raise _out_of_memory(job, trainer, meta) from None
        except Exception:
            if job.world > 1:  # e.g. a collective broken by a peer that ran out of memory: keep this rank's state
                _save_rank_state(job, trainer)
            raise
        _check_finite(job.config, trainer.epoch, row["train_loss"])
        job.writer.update(phase="validate", epoch=trainer.epoch, step=0)
        row = _validate(job, trainer, row)
        ranks = gather_objects(trainer.rank_state(), job.world)
        if job.rank == 0:
            _record_epoch(job, trainer, meta, row, ranks)
        stopped_early = _should_stop_early(job, trainer)
        job.writer.update(phase="train", epoch=trainer.epoch, step=0)
        if stopped_early:
            job.log(f"early stopping: no {job.config.monitor} improvement for {job.config.patience} epochs")
            break
        if any_rank(job.cancel.requested(), job.world, device):
            raise StopRequested()
    results: dict[str, Any] = {"run_dir": str(job.run.path), "state": "completed"}
    train_seconds = time.time() - started
    job.writer.update(phase="test")
    final = final_evaluation(job.run, job.config, trainer, job.best)  # every rank predicts its share
    if job.rank == 0:
        results.update(_finish(job, trainer, stopped_early, train_seconds, final))
        job.writer.update(phase="embed")  # features + 2-D map of every tile, for the Feature map page
    from histo_core.embeddings import embed_at_end_of_training

    # every rank computes its share of the features (never fails the run); rank 0 writes them and the map
    embed_at_end_of_training(job.run, trainer.model, job.log, job.rank, job.world, dataset=trainer.data.dataset)
    if job.rank == 0:
        _completed(job, trainer, final)
    barrier(job.world)
    return results


def _eval_sizes(data: TrainData) -> dict[str, int | None]:
    return {"val": None if data.val is None else len(data.val), "test": None if data.test is None else len(data.test)}


def _check_finite(config: TrainConfig, epoch: int, loss: float) -> None:
    """A loss that is NaN or infinite never trains on to "completed": the run fails, naming the epoch."""
    if not math.isfinite(loss):
        raise HistoError(
            f"the training loss became {loss} in epoch {epoch}: the learning rate ({config.lr:g}) is too high "
            f"for this run; start again with a lower one (e.g. --lr {config.lr / 10:g})"
        )


def _start(job: _Job, device: torch.device, resume: bool) -> tuple[AnyTrainer, dict[str, Any]]:
    """Status "running", the data and the trainer; resumed from last.pt, or a fresh start's files reset."""
    run, config = job.run, job.config
    job.writer.update(
        state="running",
        pid=os.getpid(),
        pid_start=own_start_time(),
        started_at=time.time(),
        error=None,
        finished_at=None,
        epochs=config.epochs,
        device=str(device),
        phase="loading data",
    )
    job.writer.start_heartbeat()
    data = build_train_data(config, open_config_dataset(config), str(device), evaluates=job.rank == 0)
    for warning in small_split_warnings(_eval_sizes(data)):
        job.log(f"warning: {warning}")
    trainer = make_trainer(config, data, device, rank=job.rank, world=job.world)
    if resume:
        job.best = _resume(run, trainer, job.rank)
    elif job.rank == 0:
        write_json_atomic(run.dataset_path, data.info.to_dict())
        if run.metrics_path.exists():
            run.metrics_path.unlink()
    if job.rank == 0 and data.noise_flipped is not None:
        savez_atomic(
            run.noise_path,
            noisy_labels=data.train_labels.numpy(),
            flipped=data.noise_flipped,
            clean_labels=data.clean_train_labels,
            indices=data.train_indices,
        )
    where = str(device)
    if device.type == "cuda":
        where += f" (the machine's GPU {physical_gpu(device.index or 0)})"
    job.log(f"{run.id}: training on {where} in {trainer.precision}")
    if data.corrections:
        from histo_core.corrections import summary_line

        job.log(f"{run.id}: {summary_line(data.corrections)}")
    return trainer, {**model_meta(config, data), "precision": trainer.precision}


CANCEL_CHECK_STEPS = 20  # under torchrun, ranks agree on a cancel every this many batches (a collective waits)


class _BatchProgress:
    """Called after every training batch: status (step, speed, ETA) at most once a second, and whether a cancel
    was requested (which stops the epoch at this batch). One process checks at every batch (a flag on the host);
    torchrun's ranks agree every CANCEL_CHECK_STEPS batches, at the same step on every rank (an all-reduce makes
    the host wait for the device), and at the end of every epoch."""

    def __init__(self, job: _Job, steps_per_epoch: int, device: torch.device, meta: dict[str, Any] | None = None):
        self.job, self.steps, self.device = job, steps_per_epoch, device
        self.meta = meta  # the checkpoints' metadata: its precision changes if fp16 falls back to fp32
        self.last_write = 0.0
        self.t0 = time.perf_counter()
        self.images = 0

    def __call__(self, trainer: AnyTrainer, images: int) -> bool:
        job, cfg = self.job, self.job.config
        self.images += images
        if trainer.fallback and self.meta is not None and self.meta.get("precision_fallback") != trainer.fallback:
            self.meta.update(precision=trainer.precision, precision_fallback=trainer.fallback)
            job.log(f"{job.run.id}: fp16 kept overflowing, training goes on in fp32 ({trainer.fallback})")
        now = time.perf_counter()
        stop = False
        if job.world == 1 or trainer.step % CANCEL_CHECK_STEPS == 0:
            stop = any_rank(job.cancel.requested(), job.world, self.device)
        if now - self.last_write >= 1.0 or stop:
            ips = self.images * job.world / max(now - self.t0, 1e-9)
            left = (cfg.epochs - trainer.epoch) * self.steps - trainer.step
            job.writer.update(
                step=trainer.step,
                images_per_s=round(ips, 1),
                eta_s=round(left * cfg.batch_size * job.world / max(ips, 1e-9), 1),
            )
            self.last_write = now
        return stop


def _out_of_memory(job: _Job, trainer: AnyTrainer, meta: dict[str, Any]) -> HistoError:
    """After torch.OutOfMemoryError in a training step: free what the step held, save last.pt at the last
    finished batch, and the one-line error that says what to do."""
    trainer.zero_grad()
    if trainer.cuda:
        torch.cuda.empty_cache()
    if job.world == 1:
        _save_last(job, trainer, meta, [trainer.rank_state()])
    else:  # the peers wait in a collective that never completes: no gathering; this rank writes last.pt itself
        _save_rank_state(job, trainer)  # (the shared state is every rank's) and each rank its own state file
        _save_last(job, trainer, meta, [None] * job.world, by_this_rank=True)
    n = job.config.batch_size
    return HistoError(
        f"out of GPU memory at batch {trainer.step + 1} of epoch {trainer.epoch + 1}: lower --batch-size (now {n}) "
        f"and resume from last.pt: {resume_command(job.run.path, max(1, n // 2), job.world)}"
    )


def resume_command(run_path: Path, batch_size: int, world: int) -> str:
    """The command that resumes a run with another batch size: `python -m histo_core train ...` for one process;
    under torchrun the same torchrun form (processes per node from LOCAL_WORLD_SIZE), on every node when the
    job spans several."""
    args = f"-m histo_core train --run-dir {run_path} --resume --batch-size {batch_size}"
    if world <= 1:
        return f"python {args}"
    per_node = max(1, int(os.environ.get("LOCAL_WORLD_SIZE") or world))
    nodes = max(1, world // per_node)
    if nodes == 1:
        return f"torchrun --nproc_per_node={per_node} {args}"
    return (
        f"torchrun --nnodes {nodes} --nproc-per-node {per_node} --rdzv-backend c10d --rdzv-endpoint HOST:PORT "
        f"--rdzv-id ID {args} (on every node, as the run was started)"
    )


def change_batch_size(run: RunDir, batch_size: int) -> None:
    """Set the batch size of a prepared run before `--resume` (after running out of GPU memory): config.json is
    rewritten; the resumed trainer restarts the saved epoch at its first batch (Trainer.load_state)."""
    config = TrainConfig.from_dict(run.config()).replace(batch_size=batch_size).validate()
    write_json_atomic(run.config_path, config.to_dict())


def _save_last(
    job: _Job, trainer: AnyTrainer, meta: dict[str, Any], ranks: list[Any] | None, by_this_rank: bool = False
) -> None:
    """last.pt: the weights and everything needed to resume at this batch boundary, with every rank's own random
    streams and partial counts (`ranks`, gathered from all ranks by the caller; None for a rank whose state is in
    its own file, `_save_rank_state`); rank 0 writes (`by_this_rank`: this rank, after running out of memory)."""
    if job.rank == 0 or by_this_rank:
        ckpt_mod.save_checkpoint(
            job.run.last_ckpt,
            trainer.model,
            meta,
            epoch=trainer.epoch,
            train_state={**trainer.state(ranks), "best": dict(job.best)},
        )


def rank_state_path(run: RunDir, rank: int) -> Path:
    return run.ranks_dir / f"rank{rank}.pt"


def _save_rank_state(job: _Job, trainer: AnyTrainer) -> None:
    """Under torchrun, after a failure inside an epoch (this rank ran out of memory, or a collective broke because
    a peer did): this rank's partial counts and random streams at its last finished batch, in its own file beside
    the heartbeats, for `--resume` (no collective gathers them now). Never raises: the failure is what matters."""
    from histo_core.fsutil import torch_save_atomic

    try:
        path = rank_state_path(job.run, job.rank)
        path.parent.mkdir(exist_ok=True)
        torch_save_atomic(path, {"epoch": trainer.epoch, "step": trainer.step, "state": trainer.rank_state()})
    except (OSError, RuntimeError) as exc:
        job.log(f"rank {job.rank}: its state was not saved ({exc})")


def _rank_states_from_files(run: RunDir, state: dict[str, Any], world: int) -> list[Any] | None:
    """last.pt's per-rank states with the gaps (None: saved after running out of memory) filled from the ranks'
    own files of the same batch (`_save_rank_state`)."""
    ranks = state.get("ranks")
    if not ranks or len(ranks) != world or all(r is not None for r in ranks):
        return ranks
    out = list(ranks)
    for r in range(world):
        path = rank_state_path(run, r)
        if out[r] is None and path.is_file():
            saved = torch.load(path, map_location="cpu", weights_only=True)
            if (saved.get("epoch"), saved.get("step")) == (state.get("epoch"), state.get("step")):
                out[r] = saved["state"]
    return out


def _validate(job: _Job, trainer: AnyTrainer, row: dict[str, Any]) -> dict[str, Any]:
    """The epoch's row with its validation loss, accuracy and AUC (None without a val split); rank 0 also writes
    val_latest.json."""
    data = trainer.data
    report = None
    if data.val is not None:
        probs = trainer.predict(data.val)  # under torchrun each rank its share, gathered
        if job.rank == 0:
            report = classification_report(probs, data.val.labels.numpy(), data.info.classes)
            write_json_atomic(job.run.val_latest_path, {**report, "epoch": trainer.epoch, "split": "val"})
    row.update(
        val_loss=report["loss"] if report else None,
        val_acc=report["accuracy"] if report else None,
        val_auc=report["auc"] if report else None,
    )
    return {k: row[k] for k in ROW_KEYS}


def _record_epoch(
    job: _Job, trainer: AnyTrainer, meta: dict[str, Any], row: dict[str, Any], ranks: list[dict[str, Any]]
) -> None:
    """best.pt when the monitored metric improved (every epoch without a val split), metrics.csv, last.pt."""
    config, best = job.config, job.best
    value = None if row.get(config.monitor) is None else float(row[config.monitor])
    if trainer.data.val is None or _improved(value, best["value"], config.monitor, config.min_delta):
        best.update(value=value, epoch=trainer.epoch, bad_epochs=0)
        ckpt_mod.save_checkpoint(job.run.best_ckpt, trainer.model, meta, epoch=trainer.epoch, metrics=row)
    else:
        best["bad_epochs"] += 1
    job.run.append_metrics(row)
    if job.board is not None:
        job.board.epoch(row)
    _save_last(job, trainer, meta, ranks)
    job.log(epoch_line(row, config.epochs))


def _improved(value: float | None, best: float | None, monitor: str, min_delta: float) -> bool:
    if value is None:
        return False
    if best is None:
        return True
    return value < best - min_delta if monitor == "val_loss" else value > best + min_delta


def _should_stop_early(job: _Job, trainer: AnyTrainer) -> bool:
    """--early-stopping: `patience` epochs without improvement, decided by rank 0 for every rank."""
    cfg = job.config
    stop = cfg.early_stopping and job.best["bad_epochs"] >= cfg.patience and trainer.epoch < cfg.epochs
    return bool(broadcast(stop, job.world))


def _finish(
    job: _Job, trainer: AnyTrainer, stopped_early: bool, train_seconds: float, final: dict[str, Any]
) -> dict[str, Any]:
    """Rank 0: the final evaluation (`final_evaluation`) into results.json and TensorBoard."""
    run = job.run
    doc = {
        **final,
        "stopped_early": stopped_early,
        "train_seconds": round(train_seconds, 2),
        "device": str(trainer.device),
        "precision": trainer.precision,
        "precision_fallback": trainer.fallback,  # fp16 -> fp32, when and why; None when it never happened
        "warnings": small_split_warnings(_eval_sizes(trainer.data)),
        "corrections": trainer.data.corrections,
    }
    write_json_atomic(run.results_path, doc)
    if job.board is not None:
        job.board.finish(job.config.to_dict(), final, list(trainer.data.info.classes))
        job.board.close()
    return {**final, "stopped_early": stopped_early, "train_seconds": doc["train_seconds"]}


def _completed(job: _Job, trainer: AnyTrainer, final: dict[str, Any]) -> None:
    """Rank 0, after the embeddings: status "completed" and the run's last log line."""
    job.writer.update(state="completed", finished_at=time.time(), phase="", epoch=trainer.epoch, step=0, eta_s=0.0)
    t = final.get("test")
    auc = None if not t or t["auc"] is None else round(t["auc"], 4)
    job.log(f"{job.run.id}: completed" + (f", test accuracy {t['accuracy']:.4f}, auc {auc}" if t else ""))


def _resume(run: RunDir, trainer: AnyTrainer, rank: int) -> dict[str, Any]:
    if not run.last_ckpt.exists():
        raise HistoError(f"{run.path}: nothing to resume (no last.pt); start the run again without --resume")
    ckpt = ckpt_mod.load_checkpoint(run.last_ckpt)
    state = ckpt.get("train_state")
    if not state:
        raise HistoError(f"{run.last_ckpt}: has no training state to resume from")
    if trainer.world > 1:
        state = {**state, "ranks": _rank_states_from_files(run, state, trainer.world)}
    if trainer.batch_size_changed(state):
        say(
            f"{run.id}: batch size {state['batch_size']} -> {trainer.config.batch_size}: epoch "
            f"{int(state['epoch']) + 1} restarts at its first batch",
            rank,
        )
    trainer.load_state(state, ckpt["state_dict"])
    if rank == 0:
        run.truncate_metrics(trainer.epoch)
    return dict(state.get("best") or {"value": None, "epoch": 0, "bad_epochs": 0})
