"""Learning curves of YOLO training recipes on the ``shapes`` simulator's ``target`` preset.

    python plugins/autosim_yolo/recipe_curves.py --out docs/results/detection-recipe.json \\
        [--variants base warmup-cosine ...] [--seeds 0 1] [--steps 600] [--eval-every 100]

The detector is trained from scratch on a fixed pool of ``--train-images`` renders of the
oracle's distribution (the `target` preset, which the shapes demo's validation and test sets come
from) and scored on ``--val-images`` renders of it from another seed: val mAP@0.5 every
``--eval-every`` optimisation steps, against the steps and the process-CPU seconds of training
so far (rendering and scoring excluded). One thread unless ``--threads`` says otherwise, one
variant and seed at a time, so the seconds of different variants compare.

A variant is a set of ``[task.settings]`` of the ``yolo`` task (loss gains, target assignment,
objectness balance, input size, width) and of the training loop this script runs, which is the
core's (Adam, minibatches of ``--batch-size``, each epoch a fresh shuffle) plus what the core's
loop does not have: a linear learning-rate warm-up, cosine decay to zero at ``--steps``, and an
exponential moving average of the weights (scored in place of the weights when on).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from autosim_core.config import parse_config
from autosim_core.records import Example
from autosim_core.run import Run

from autosim_yolo.decode import yolo_detections
from autosim_yolo.loss import yolo_losses
from autosim_yolo.metrics import detection_metrics
from autosim_yolo.model import build_yolo
from autosim_yolo.plugin import collate_detection
from autosim_yolo.settings import YoloSettings

# The base every variant changes: the recipe examples/shapes_yolo_oracle.toml trained with before
# these curves (YOLOv3's assignment, assign = "best"), spelled out so later defaults leave it alone.
BASE_TASK: dict[str, Any] = {"variant": "tiny", "input_size": 128, "width": 0.25, "box_gain": 0.5, "obj_gain": 8.0,
                             "cls_gain": 1.0, "assign": "best", "xy_range": 1.0, "obj_pos_weight": 1.0}
BASE_LOOP: dict[str, Any] = {"lr": 3e-3, "warmup": 0, "cosine": False, "ema": None}

# name -> (task settings over BASE_TASK, loop settings over BASE_LOOP)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base": ({}, {}),
    "warmup-cosine": ({}, {"warmup": 50, "cosine": True}),
    "lr-1e-2-warmup-cosine": ({}, {"lr": 1e-2, "warmup": 50, "cosine": True}),
    "yolov5-gains": ({"box_gain": 0.05, "obj_gain": 1.0, "cls_gain": 0.5}, {}),
    "obj-gain-2": ({"obj_gain": 2.0}, {}),
    "obj-pos-weight-4": ({"obj_pos_weight": 4.0}, {}),
    "multi-anchor": ({"assign": "multi"}, {}),
    "multi-anchor-cells": ({"assign": "multi-cells", "xy_range": 2.0}, {}),
    "ema": ({}, {"ema": 0.99}),
    "input-96": ({"input_size": 96}, {}),
    "input-160": ({"input_size": 160}, {}),
    "width-0.5": ({"width": 0.5}, {}),
    "multi-anchor-warmup-cosine-ema": ({"assign": "multi"}, {"warmup": 50, "cosine": True, "ema": 0.99}),
    "multi-anchor-cells-warmup-cosine-ema": ({"assign": "multi-cells", "xy_range": 2.0},
                                             {"warmup": 50, "cosine": True, "ema": 0.99}),
}


def render_examples(count: int, seed: int, image_size: int) -> list[Example]:
    """``count`` renders of the shapes simulator's ``target`` preset, drawn with ``seed``."""
    with tempfile.TemporaryDirectory() as tmp:
        config = parse_config({
            "seed": seed, "simulator": {"name": "shapes", "start": "target", "settings": {"image_size": image_size}},
            "task": {"name": "yolo"}, "estimator": {"name": "no-val"}, "budget": {"iterations": 1},
            "cache_dir": str(Path(tmp) / "cache")})
        run = Run(config, Path(tmp) / "run")
        generator = torch.Generator().manual_seed(seed)
        _, examples = run.render(run.space, run.space.init_psi(), count, generator, list(range(count)))
    return examples


def learning_rate(step: int, loop: dict[str, Any], steps: int) -> float:
    """Linear warm-up over ``loop['warmup']`` steps, then constant or cosine decay to 0 at ``steps``."""
    lr = loop["lr"]
    if loop["warmup"] and step < loop["warmup"]:
        return lr * (step + 1) / loop["warmup"]
    if loop["cosine"]:
        done = (step - loop["warmup"]) / max(1, steps - loop["warmup"])
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))
    return lr


@torch.no_grad()
def val_map(model: torch.nn.Module, val: Any, settings: YoloSettings, chunk: int = 32) -> float:
    model.eval()
    detections = []
    for start in range(0, len(val.inputs), chunk):
        detections += yolo_detections(model(val.inputs[start:start + chunk]), settings)
    model.train()
    return float(detection_metrics(detections, val.targets, settings.classes)["metric"])


def curve(name: str, seed: int, train_examples: list[Example], val_examples: list[Example], steps: int,
          eval_every: int, batch_size: int) -> dict[str, Any]:
    """One variant's val mAP@0.5 against steps and training CPU seconds, from a model seeded ``seed``."""
    task_over, loop_over = VARIANTS[name]
    settings = YoloSettings(**{**BASE_TASK, **task_over})
    loop = {**BASE_LOOP, **loop_over}
    train = collate_detection(train_examples, settings)
    val = collate_detection(val_examples, settings)
    torch.manual_seed(seed)
    model = build_yolo(settings)
    model.train()
    ema = copy.deepcopy(model) if loop["ema"] else None
    optimizer = torch.optim.Adam(model.parameters(), lr=loop["lr"])
    order = torch.Generator().manual_seed(seed)
    perm, at = torch.randperm(len(train.inputs), generator=order), 0
    points = [{"step": 0, "cpu_seconds": 0.0, "val_map50": val_map(model, val, settings)}]
    cpu = 0.0
    for step in range(steps):
        start = time.process_time()
        if at + batch_size > len(perm):
            perm, at = torch.randperm(len(train.inputs), generator=order), 0
        idx = perm[at:at + batch_size]
        at += batch_size
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, loop, steps)
        loss = yolo_losses(model(train.inputs[idx]), train.targets[idx], settings).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            # The average's decay ramps up (as YOLOv5's does), so early steps are not averaged
            # with the random initialisation for long.
            decay = loop["ema"] * (1 - math.exp(-(step + 1) / 100))
            with torch.no_grad():
                for e, p in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
                    if e.dtype.is_floating_point:
                        e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        cpu += time.process_time() - start
        if (step + 1) % eval_every == 0 or step + 1 == steps:
            scored = ema if ema is not None else model
            points.append({"step": step + 1, "cpu_seconds": round(cpu, 2), "loss": round(float(loss.detach()), 4),
                           "val_map50": round(val_map(scored, val, settings), 4)})
            print(f"{name} seed {seed} step {step + 1}: {points[-1]}", flush=True)
    return {"variant": name, "seed": seed, "task_settings": {**BASE_TASK, **task_over}, "loop": loop,
            "points": points}


def table(report: dict[str, Any], at: list[int]) -> str:
    """Markdown: per variant, val mAP@0.5 (mean ± sample std over seeds) at the steps ``at``,
    and the training CPU seconds of the last step."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for c in report["curves"]:
        by_variant.setdefault(c["variant"], []).append(c)

    def cell(values: list[float], digits: int = 3) -> str:
        if not values:
            return "–"
        mean = sum(values) / len(values)
        if len(values) == 1:
            return f"{mean:.{digits}f}"
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        return f"{mean:.{digits}f} ± {std:.{digits}f}"

    head = "| variant | seeds | " + " | ".join(f"val mAP@0.5, step {s}" for s in at) + " | CPU s, last step |"
    lines = [head, "|" + "---|" * (len(at) + 3)]
    for name, curves in by_variant.items():
        cells = [cell([p["val_map50"] for c in curves for p in c["points"] if p["step"] == s]) for s in at]
        seconds = cell([c["points"][-1]["cpu_seconds"] for c in curves], 0)
        lines.append(f"| {name} | {len(curves)} | " + " | ".join(cells) + f" | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write (rewritten after every curve)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-images", type=int, default=1920)
    parser.add_argument("--val-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--table", nargs="+", type=int, metavar="STEP",
                        help="print the markdown table of --out at these steps instead of training")
    args = parser.parse_args(argv)
    if args.table:
        report = json.loads(Path(args.out).read_text())
        print(table(report, args.table))
        return report
    torch.set_num_threads(args.threads)
    train_examples = render_examples(args.train_images, 7, args.image_size)
    val_examples = render_examples(args.val_images, 1001, args.image_size)
    report: dict[str, Any] = {
        "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
        "threads": torch.get_num_threads(), "steps": args.steps, "batch_size": args.batch_size,
        "train_images": args.train_images, "val_images": args.val_images, "image_size": args.image_size,
        "preset": "target", "curves": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        for seed in args.seeds:
            report["curves"].append(curve(name, seed, train_examples, val_examples, args.steps, args.eval_every,
                                          args.batch_size))
            out.write_text(json.dumps(report, indent=1) + "\n")
    return report


if __name__ == "__main__":
    main()
