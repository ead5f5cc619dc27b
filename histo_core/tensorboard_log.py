"""TensorBoard logs of a run, written beside metrics.jsonl as it trains (`tensorboard --logdir RUNS_DIR`).

    tb = RunBoard(run)                  # the run's own directory: events.out.tfevents.* next to metrics.jsonl
    tb.epoch(row)                       # every epoch: the metrics.jsonl row as scalars
    tb.finish(config, results, classes) # hyper-parameters with the final metrics; the confusion matrices as images
    tb.close()

Scalars are grouped as TensorBoard shows them: loss/train, loss/val, accuracy/train_given_labels (measured
against the labels trained on, noisy ones included), accuracy/val, auc/val, lr, seconds. Logging never fails a
run: an error is reported once on stderr and the logger turns itself off.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from histo_core.classnames import short_names

SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train_given_labels",
    "val_acc": "accuracy/val",
    "val_auc": "auc/val",
    "lr": "lr",
    "seconds": "seconds/epoch",
}


class RunBoard:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir)
        self._writer: Any = None
        self._off = False

    def _w(self) -> Any:
        if self._writer is None and not self._off:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(self.path), flush_secs=10)
            except Exception as exc:  # tensorboard missing or the folder unwritable: train on without it
                self._fail(exc)
        return self._writer

    def _fail(self, exc: BaseException) -> None:
        if not self._off:
            print(f"TensorBoard logging off: {type(exc).__name__}: {exc}", file=sys.stderr)
        self._off = True

    def epoch(self, row: dict[str, Any]) -> None:
        w = self._w()
        if w is None:
            return
        try:
            step = int(row.get("epoch") or 0)
            for key, tag in SCALARS.items():
                v = row.get(key)
                if isinstance(v, (int, float)) and np.isfinite(v):
                    w.add_scalar(tag, float(v), step)
            w.flush()
        except Exception as exc:
            self._fail(exc)

    def finish(self, config: dict[str, Any], results: dict[str, Any], classes: list[str]) -> None:
        w = self._w()
        if w is None:
            return
        try:
            hparams = {k: v for k, v in _flat(config).items() if isinstance(v, (int, float, str, bool))}
            final: dict[str, float] = {}
            for split in ("test", "val"):
                rep = results.get(split)
                if isinstance(rep, dict):
                    for k in ("accuracy", "auc", "loss", "ece"):
                        if isinstance(rep.get(k), (int, float)):
                            final[f"hparam/{split}_{k}"] = float(rep[k])
                    if rep.get("confusion"):
                        w.add_image(
                            f"confusion_matrix/{split}",
                            confusion_image(np.asarray(rep["confusion"]), classes),
                            int(results.get("epochs_run") or 0),
                            dataformats="HWC",
                        )
            if final:
                w.add_hparams(hparams, final, run_name=".")
            w.flush()
        except Exception as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:
                self._fail(exc)


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        elif v is not None:
            out[f"{prefix}{k}"] = v
    return out


def confusion_image(cm: np.ndarray, classes: list[str], cell: int = 44) -> np.ndarray:
    """(H, W, 3) uint8: the confusion matrix (rows true, columns predicted) as white-to-blue cells with counts,
    class names (NCT abbreviations where known) along both axes."""
    from PIL import Image, ImageDraw

    names = [n[:10] for n in short_names([str(c) for c in classes])]
    k = len(names)
    margin = 8 + 7 * max((len(n) for n in names), default=1)
    size = margin + k * cell + 8
    im = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(im)
    top = float(cm.max()) if cm.size and cm.max() > 0 else 1.0
    for i in range(k):
        draw.text((4, margin + i * cell + cell // 2 - 5), names[i], fill="black")
        draw.text((margin + i * cell + 3, margin - 14), names[i][:6], fill="black")
        for j in range(k):
            v = float(cm[i, j])
            t = v / top
            colour = (int(255 - 200 * t), int(255 - 150 * t), 255 - int(60 * t))
            x, y = margin + j * cell, margin + i * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour, outline=(200, 200, 200))
            draw.text((x + 6, y + cell // 2 - 5), f"{int(v)}", fill="white" if t > 0.6 else "black")
    return np.asarray(im)
