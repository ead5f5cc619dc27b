"""Look inside a model, headless: `embed`, `similar`, `label-errors`, `explain-quality`.

    python -m histo_core embed RUN [--split train --split test] [--dataset SPEC]
    python -m histo_core similar MODEL tile.png other.tif --k 8 --json
    python -m histo_core label-errors RUN [--recompute] --json
    python -m histo_core explain-quality RUN [--tiles 40] [--methods GradCAM,EigenCAM] --json

Long work reports progress on stderr; --json prints one document on stdout. Bad input: exit 2, one line.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from histo_core.cli import emit
from histo_core.errors import HistoError
from histo_core.runs import resolve_run


def _command(
    subparsers: argparse._SubParsersAction,
    name: str,
    func: Callable[[argparse.Namespace], int],
    target: tuple[str, str, str],
    *,
    help: str,
    description: str,
    epilog: str,
) -> argparse.ArgumentParser:
    """A sub-command with help texts, its first positional argument (dest, metavar, help) and --json."""
    p = subparsers.add_parser(
        name, help=help, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(target[0], metavar=target[1], help=target[2])
    p.add_argument("--json", action="store_true", help="print one JSON document")
    p.set_defaults(func=func)
    return p


def register(subparsers: argparse._SubParsersAction) -> None:
    p = _command(
        subparsers,
        "embed",
        cmd_embed,
        ("model", "RUN", "run directory, run id, weights .pt file or export name"),
        help="save the penultimate-layer features of every tile and their 2-D map (t-SNE)",
        description="Compute the model's penultimate-layer features (float16) of every tile of a dataset, and a "
        "PCA + t-SNE map of them, for the Feature map page and similarity search.",
        epilog="MODEL is a run (its own dataset by default; saved in the run's embeddings/ folder) or a weights "
        "export (saved under <data dir>/cache/embeddings/).\n\nexamples:\n"
        "  python -m histo_core embed 20250101-120000-resnet9-pathmnist-ab12\n"
        "  python -m histo_core embed crc-v1 --dataset ~/data/kather2016 --split test",
    )
    p.add_argument("--dataset", metavar="SPEC", help="embed this dataset instead of the one the model was trained on")
    p.add_argument(
        "--split",
        action="append",
        choices=("train", "val", "test"),
        help="split(s) to embed (repeatable; default: every split the dataset has)",
    )
    p.add_argument("--max-points", type=int, default=20_000, help="tiles on the 2-D map at most (default 20000)")

    p = _command(
        subparsers,
        "similar",
        cmd_similar,
        ("model", "MODEL", "run directory, run id, weights .pt file or export name"),
        help="the k most similar training tiles of each image, and a k-NN vote",
        description="For each image: the model's prediction, the k nearest training tiles in feature space "
        "(cosine distance) with their labels, and the k-NN vote (embeds the training tiles first "
        "when needed).",
        epilog="examples:\n  python -m histo_core similar RUN tile.png --k 8 --json\n"
        "  python -m histo_core similar crc-v1 tiles/ --k 5",
    )
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders of images")
    p.add_argument("--k", type=int, default=8, help="neighbours per image (default 8)")

    p = _command(
        subparsers,
        "label-errors",
        cmd_label_errors,
        ("run", "RUN", "run directory or run id"),
        help="suspected label errors of a run's training set (the Review page's search)",
        description="Cross-validated out-of-sample probabilities of the run's training tiles, ranked by "
        "self-confidence with confident-learning flags. Reuses the saved result unless --recompute.",
        epilog="example:\n  python -m histo_core label-errors RUN --folds 3 --epochs 5 --top 20 --json",
    )
    p.add_argument("--folds", type=int, default=3, help="cross-validation folds (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per fold (default: min(5, the run's epochs))")
    p.add_argument("--max-samples", type=int, default=3000, help="check a random subset beyond this (default 3000)")
    p.add_argument("--recompute", action="store_true", help="ignore a saved result and search again")
    p.add_argument("--top", type=int, default=20, help="most suspicious tiles to list (default 20; 0: all)")

    from histo_core.explain import CAM_METHODS

    p = _command(
        subparsers,
        "explain-quality",
        cmd_explain_quality,
        ("run", "RUN", "run directory or run id"),
        help="which CAM method is most faithful on a run (ROAD scores on test tiles)",
        description="For each CAM method, ROAD faithfulness scores (pytorch-grad-cam) of its maps on a seeded "
        "sample of the run's test tiles; saved to faithfulness.json in the run.",
        epilog="example:\n  python -m histo_core explain-quality RUN --tiles 40 --json",
    )
    p.add_argument("--tiles", type=int, default=40, help="test tiles to score (default 40)")
    p.add_argument("--methods", help=f"comma-separated subset of {','.join(CAM_METHODS)} (default: all)")


def stderr_progress() -> Callable[[float, str], None]:
    """Progress lines on stderr: at most one per 0.5 s within a step, but always the first line of a new step (a
    message that differs by more than its numbers) and the last."""
    import re

    last_time, last_step = 0.0, ""

    def report(fraction: float, message: str) -> None:
        nonlocal last_time, last_step
        now = time.monotonic()
        step = re.sub(r"\d+", "#", message)
        if fraction < 1.0 and now - last_time < 0.5 and step == last_step:
            return
        last_time, last_step = now, step
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    return report


# -- embed -------------------------------------------------------------------------------------------------
def cmd_embed(args: argparse.Namespace) -> int:
    from histo_core.embed_target import MissingTrainingData, target_for
    from histo_core.embeddings import embed

    if args.max_points < 10:
        raise HistoError(f"--max-points must be at least 10, got {args.max_points}")
    try:
        target = target_for(args.model, args.dataset)
    except MissingTrainingData as exc:
        raise HistoError(f"{exc} Name a dataset to embed with --dataset SPEC.") from None
    splits = list(dict.fromkeys(args.split)) if args.split else None
    store = embed(target, splits, progress=stderr_progress(), max_points=args.max_points)
    m = store.meta
    payload = {
        "path": str(store.path),
        **{
            k: m[k]
            for k in (
                "model",
                "dataset",
                "splits",
                "counts",
                "dims",
                "projection",
                "projected",
                "sample_rule",
                "seconds",
            )
        },
    }
    emit(
        args,
        payload,
        f"{sum(m['counts'].values()):,} tiles ({', '.join(f'{s} {n:,}' for s, n in m['counts'].items())}), "
        f"{m['dims']} dims, {m['projection']} on {m['sample_rule']}, {m['seconds']} s -> {store.path}",
    )
    return 0


# -- similar -----------------------------------------------------------------------------------------------
def cmd_similar(args: argparse.Namespace) -> int:
    from histo_core.commands.predict import expand_inputs, read_file
    from histo_core.embeddings import tile_features
    from histo_core.model_cache import load_model
    from histo_core.similar import SimilarityIndex, knn_vote
    from histo_core.uploads import prepare_upload

    if args.k < 1:
        raise HistoError(f"--k must be a positive integer, got {args.k}")
    loaded = load_model(args.model)
    paths = expand_inputs(args.images)
    index = SimilarityIndex.for_model(args.model, progress=stderr_progress())
    k = min(args.k, len(index))
    records: list[dict[str, Any]] = []
    good: list[tuple[int, np.ndarray]] = []  # (position in records, model-input tile)
    for path in paths:
        data, error = read_file(path)
        if data is None:
            records.append({"file": path.name, "error": error})
            continue
        r = prepare_upload(data, path.name, loaded.meta)
        if not r.ok or r.tile is None:  # prepare_upload sets the tile exactly when the file decoded
            records.append({"file": path.name, "error": r.error})
            continue
        records.append({"file": r.name})
        good.append((len(records) - 1, r.tile))
    if good:
        feats, probs = tile_features(loaded.model, loaded.meta, np.stack([tile for _, tile in good]))
        hits = index.search(feats, k)
        voted, share = knn_vote(hits.labels, hits.distances, len(index.classes))
        model_cls, data_cls = loaded.meta.classes, index.classes
        for q, (pos, _tile) in enumerate(good):
            pred = int(probs[q].argmax())
            records[pos].update(
                {
                    "prediction": model_cls[pred],
                    "confidence": round(float(probs[q, pred]), 6),
                    "knn_vote": data_cls[int(voted[q])],
                    "knn_share": round(float(share[q]), 4),
                    "agree": model_cls[pred] == data_cls[int(voted[q])],
                    "neighbours": [
                        {
                            "split": str(hits.splits[q, j]),
                            "row": int(hits.rows[q, j]),
                            "label": data_cls[int(hits.labels[q, j])],
                            "distance": round(float(hits.distances[q, j]), 6),
                        }
                        for j in range(k)
                    ],
                }
            )
    failed = sum(1 for r in records if "error" in r)
    payload = {
        "model": loaded.label,
        "k": k,
        "reference_tiles": len(index),
        "reference": index.store.meta["dataset"],
        "results": records,
        "failed": failed,
    }
    emit(args, payload, _similar_text(payload))
    return 1 if failed else 0


def _similar_text(payload: dict[str, Any]) -> str:
    lines = [
        f"model {payload['model']}: {payload['k']} nearest of {payload['reference_tiles']:,} training tiles "
        f"({payload['reference']}), cosine distance"
    ]
    for rec in payload["results"]:
        if "error" in rec:
            lines.append(f"ERROR {rec['error']}")
            continue
        flag = "" if rec["agree"] else "   <- the neighbours disagree with the model"
        lines.append(
            f"{rec['file']}: model {rec['prediction']} ({rec['confidence']:.3f}), k-NN vote "
            f"{rec['knn_vote']} ({rec['knn_share']:.0%}){flag}"
        )
        lines.append(
            "  " + "  ".join(f"{n['label']}@{n['split']}#{n['row']} {n['distance']:.3f}" for n in rec["neighbours"])
        )
    return "\n".join(lines)


# -- label-errors ------------------------------------------------------------------------------------------
def cmd_label_errors(args: argparse.Namespace) -> int:
    from histo_core.label_errors import find_label_errors, load_label_errors

    if args.folds < 2:
        raise HistoError(f"--folds must be at least 2, got {args.folds}")
    if args.epochs is not None and args.epochs < 1:
        raise HistoError(f"--epochs must be a positive integer, got {args.epochs}")
    if args.max_samples < 10:
        raise HistoError(f"--max-samples must be at least 10, got {args.max_samples}")
    if args.top < 0:
        raise HistoError(f"--top must be 0 or more, got {args.top}")
    run = resolve_run(args.run)
    report = None if args.recompute else load_label_errors(run)
    cached = report is not None
    if report is None:
        report = find_label_errors(
            run, folds=args.folds, epochs=args.epochs, max_samples=args.max_samples, progress=stderr_progress()
        )
    table = report.table()
    shown = table if args.top == 0 else table.iloc[: args.top]
    payload = {
        "run": run.id,
        "cached": cached,
        "summary": report.summary(),
        "classes": report.classes,
        "ranked": shown.to_dict(orient="records"),
    }
    s = payload["summary"]
    text = [
        f"{run.id}: {s['flagged']} of {s['tiles']} training tiles flagged ({s['flagged_share']:.1%}; estimated "
        f"share of wrong labels {s['estimated_noise']:.1%})"
        + (" [saved result; --recompute to search again]" if cached else "")
    ]
    if s.get("flipped") is not None:
        text.append(
            f"known flipped labels flagged: {s['flipped_flagged']}/{s['flipped']} (precision "
            f"{s['precision'] if s['precision'] is None else round(s['precision'], 3)}, recall "
            f"{s['recall'] if s['recall'] is None else round(s['recall'], 3)})"
        )
    text.append(shown.to_string(index=False))
    emit(args, payload, "\n".join(text))
    return 0


# -- explain-quality ---------------------------------------------------------------------------------------
def cmd_explain_quality(args: argparse.Namespace) -> int:
    from histo_core.faithfulness import explain_quality

    if args.tiles < 1:
        raise HistoError(f"--tiles must be a positive integer, got {args.tiles}")
    from histo_core.explain import CAM_METHODS

    methods = None
    if args.methods:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in CAM_METHODS]
        if bad or not methods:
            raise HistoError(
                f"--methods: unknown method {bad[0] if bad else '(none)'!r}; choose from {', '.join(CAM_METHODS)}"
            )
    run = resolve_run(args.run)
    doc = explain_quality(run, tiles=args.tiles, methods=methods, progress=stderr_progress())
    lines = [f"{run.id}: {doc['metric']}, {doc['tiles']} {doc['split']} tiles; higher = more faithful"]
    for r in doc["methods"]:
        mean = "-" if r["road_mean"] is None else f"{r['road_mean']:+.4f}"
        lines.append(
            f"  {r['rank']}. {r['method']:<10} ROAD mean {mean}  unfaithful {r['unfaithful_share']:.0%}  "
            f"flat {r['flat_share']:.0%}  {r['seconds_per_tile'] * 1000:.0f} ms/tile"
        )
    emit(args, doc, "\n".join(lines))
    return 0
