"""The end of a training run: the final evaluation of best.pt (test and val reports, prediction files), the
"unlike the training tiles" calibration, and the one-line summary of an epoch. `run.py` calls them."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from histo_core import checkpoint as ckpt_mod
from histo_core import ood, ood_features, pipeline, stain
from histo_core.config import TrainConfig
from histo_core.distributed import broadcast
from histo_core.fsutil import savez_atomic
from histo_core.metrics import classification_report, per_sample_loss
from histo_core.runs import RunDir
from histo_core.training.codivide import AnyTrainer
from histo_core.training.data import TrainData


def final_evaluation(run: RunDir, config: TrainConfig, trainer: AnyTrainer, best: dict[str, Any]) -> dict[str, Any]:
    """Test (and val) reports and prediction files from best.pt, and the out-of-distribution calibration. Under
    torchrun every rank calls it: rank 0 reads best.pt and sends its weights to the others (their nodes may not
    see the run folder), each rank predicts its share of each split, and rank 0 alone writes and returns the
    reports ({} on the other ranks)."""
    data = trainer.data
    rank, world = trainer.rank, trainer.world
    weights = None
    if rank == 0 and run.best_ckpt.exists():
        weights = ckpt_mod.load_checkpoint(run.best_ckpt)["state_dict"]
    weights = broadcast(weights, world)
    if weights is not None:
        trainer.model.load_state_dict(weights)
    out: dict[str, Any] = {
        "best_epoch": int(best.get("epoch") or trainer.epoch),
        "epochs_run": trainer.epoch,
        "test": None,
        "val": None,
    }
    heldout: dict[str, np.ndarray] = {}
    for split, source in (("test", data.test), ("val", data.val)):
        if source is None:
            continue
        probs = heldout[split] = trainer.predict(source, tta=config.tta)
        if rank != 0:
            continue
        labels = source.labels.numpy()
        out[split] = classification_report(probs, labels, data.info.classes)
        out[split]["tta"] = bool(config.tta)
        savez_atomic(
            run.predictions_path(split),
            probs=probs.astype(np.float32),
            labels=labels,
            indices=np.arange(len(labels)),
            loss=per_sample_loss(probs, labels),
        )
    if rank != 0:
        return {}
    out["ood"] = ood_calibration(data, heldout, trainer.model)
    return out


def ood_calibration(
    data: TrainData, heldout: dict[str, np.ndarray], model: torch.nn.Module | None = None
) -> dict[str, Any]:
    """The "unlike the training tiles" thresholds (histo_core.ood): colour statistics of the training tiles as
    the model sees them (and, with stain normalisation, as given), the confidence on the validation split
    (else the test split), (with the `model`) the statistics of its features on the training tiles with the
    threshold from the same held-out split (with stain normalisation, of its features on the tiles as given: the
    input-feature check), and the flag's one threshold on the combined score of that split's
    tiles (`ood.calibrate_combined`)."""
    split = "val" if "val" in heldout else "test" if "test" in heldout else None
    limit = (
        pipeline.LAZY_CHUNK if data.train.streamed else ood_features.FEATURE_MAX_TILES
    )  # streamed: one chunk, one read
    sample = data.train.read_range(0, min(len(data.train), limit))
    feats, given = ood.colour_features_uint8(sample, data.input_size, data.stain)  # block by block: no float copy
    out = ood.calibrate(None, heldout.get(split) if split else None, split or "", features=feats, input_features=given)
    source = {"val": data.val, "test": data.test}.get(split or "")
    if source is None or split is None:
        return out
    held = source.read_range(0, min(len(source), limit))
    held_feats: list[np.ndarray] | None = None
    # with stain normalisation, the feature check runs on the tiles as given (the input-feature check, ood.py)
    key = "input_feature" if data.stain else "feature"
    features = ood_features.input_layer_features if data.stain else ood_features.layer_features
    if model is not None and len(sample) > 1:
        from histo_core.predict import InputSpec

        spec = InputSpec.of(data)
        held_feats = features(model, held, spec)
        out[key] = ood_features.calibrate_features(
            features(model, sample, spec),
            held_feats,
            split,
            labels=np.asarray(data.train_labels[: len(sample)]),
            stage=ood_features.feature_stage(model),
        )
    # the flag's one threshold: the combined score of the same held-out tiles as the model sees them, a block at a
    # time (the float tiles of one block in memory)
    probs, parts = heldout[split], []
    for s in range(0, len(held), ood.COLOUR_BLOCK):
        held01 = pipeline.to_float01(held[s : s + ood.COLOUR_BLOCK], "cpu", data.input_size)
        block = None if held_feats is None else [f[s : s + len(held01)] for f in held_feats]
        parts.append(
            ood.combined_scores(
                out,
                probs[s : s + len(held01)],
                stain.normalize_batch(held01, data.stain),
                held01 if data.stain else None,
                features=None if data.stain else block,
                input_features=block if data.stain else None,
            )
        )
    combined = ood.calibrate_combined(np.concatenate(parts) if parts else np.zeros(0), split, ood.flag_checks(out))
    if combined:
        out["combined"] = combined
    return out


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    """The progress line of one epoch (stderr and the Runs page's log)."""

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.4f}"

    return (
        f"epoch {row['epoch']}/{epochs}  train loss {f(row['train_loss'])} acc {f(row['train_acc'])}  "
        f"val loss {f(row['val_loss'])} acc {f(row['val_acc'])} auc {f(row['val_auc'])}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f}s  {row['images_per_s']:.0f} img/s"
    )
