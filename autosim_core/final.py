"""A fresh model trained on the distribution a run hands over: the score of a learned psi.

A run's in-loop scores measure its own models (AutoSimulate's warm-started one, a black-box
searcher's small per-evaluation ones), which differ between methods. What a user takes away is
the distribution; so the score that ranks methods is that of a model trained *from scratch* on
``images`` renders of the psi a run hands over (``psi.json``, or a snapshot of it at a fraction of
the budget: ``snapshots.json``), with one recipe for every method (``[final_training]`` over
``[training]``), scored on the run's validation and test sets.

Each (psi, seed) is trained once: its scores and weights are kept under ``final/parts/`` by a key
of everything that determines them, so that a snapshot equal to another (a ``fixed`` run's) and an
interrupted ``autosim train`` cost nothing again. ``final/final.json`` holds every point's scores,
``final/model.pt`` the fresh model trained on the final psi (first seed).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from .clock import Clock
from .compare import stats
from .config import FinalTraining, parse_config
from .config import Training as TrainingSettings
from .records import Batch
from .rundir import CONFIG_JSON, FINAL, PSI, SNAPSHOTS, SUMMARY, atomic_write, write_json
from .space import ParameterSpace
from .training import Training

FINAL_JSON = "final.json"
MODEL = "model.pt"
PARTS = "parts"
RENDER_CHUNK = 256
"""Scenes rendered at a time (the progress lines, and the executor's batches)."""


class FinalTrainingError(ValueError):
    """A run folder or an option ``autosim train`` cannot work with (one line)."""


@dataclass(frozen=True)
class HandedOver:
    """A psi a run handed over: its final one or a snapshot, with the search's cost so far."""

    label: str
    at: float | None
    iteration: int
    images: int
    seconds: float
    psi: dict[str, Any]
    """psi in readable units (``ParameterSpace.describe``)."""
    space: dict[str, Any]
    """The distribution itself (``ParameterSpace.to_dict`` with psi in it)."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FinalTrainingError(f"{path.parent} is not a finished run folder ({path.name} is missing)") from None
    except ValueError as exc:
        raise FinalTrainingError(f"{path}: not valid JSON ({exc})") from None


def handed_over(run_dir: Path, snapshots: bool) -> list[HandedOver]:
    """The run's final psi (``psi.json``) and, with ``snapshots``, each of ``snapshots.json``."""
    summary = _read_json(run_dir / SUMMARY)
    final = _read_json(run_dir / PSI)
    points = []
    if snapshots and (run_dir / SNAPSHOTS).exists():
        points = [HandedOver(f"at-{s['at']:g}", float(s["at"]), int(s["iteration"]), int(s["images"]),
                             float(s["seconds"]), s["psi"], s["space"]) for s in _read_json(run_dir / SNAPSHOTS)]
    if not any(p.at == 1.0 for p in points):
        points.append(HandedOver("final", 1.0 if snapshots else None, int(summary["iterations"]),
                                 int(summary["images"]), float(summary["seconds"]), final["psi"], final["space"]))
    return points


def run_config(run_dir: Path) -> Any:
    """The run's resolved config (``config.json``) as a RunConfig: its paths are absolute already."""
    data = _read_json(run_dir / CONFIG_JSON)
    data.pop("space", None)
    if data.get("estimator") is None:
        data.pop("estimator", None)
    return parse_config(data)


class FinalTrainer:
    """Fresh models for one run folder under one recipe (see the module's docstring)."""

    def __init__(self, run_dir: str | Path, *, images: int | None = None, epochs: int | None = None,
                 seeds: int | None = None, final_training: dict[str, Any] | None = None, registry: Any = None):
        from .run import Run

        self.run_dir = Path(run_dir)
        config = run_config(self.run_dir)
        if final_training is not None:  # a comparison's own recipe, for runs it finished before
            config = config.model_copy(update={"final_training": FinalTraining.model_validate(final_training)})
        final = config.final_training
        self.images = images or final.images
        self.recipe: TrainingSettings = final.recipe(config.training)
        self.schedule = final.schedule
        if epochs is not None:
            self.recipe = self.recipe.model_copy(update={"epochs": epochs})
        self.seeds = final.model_seeds(config.seed, seeds)
        self.run = Run(config, self.run_dir, registry=registry)
        taken = {f"{key}.seed": data.seed for key in ("validation", "test")
                 if (data := getattr(config, key)) is not None and data.source == "simulator"}
        for seed in self.seeds:
            for key, value in taken.items():
                if seed == value:
                    raise FinalTrainingError(f"fresh model seed {seed} equals {key} (its scenes would be that "
                                             "set's); choose fewer --seeds or another final_training.seed")
        self.val: Batch | None = None
        self.test: Batch | None = None

    def settings(self) -> dict[str, Any]:
        return {"images": self.images, "recipe": self.recipe.model_dump(mode="json"), "schedule": self.schedule,
                "seeds": self.seeds}

    def load_sets(self) -> None:
        if self.val is None and self.run.config.validation is not None:
            self.val = self.run.load_data("validation")
        if self.test is None and self.run.config.test is not None:
            self.test = self.run.load_data("test")

    def _training(self, seed: int) -> Training:
        run = self.run
        return Training(run.pm, task=run.config.task.name, task_settings=run.task_settings, training=self.recipe,
                        seed=seed, device=run.device, clock=Clock(lambda phase, started: None),
                        generator=torch.Generator().manual_seed(seed))

    def render(self, space: ParameterSpace, generator: torch.Generator) -> Batch:
        examples = []
        while len(examples) < self.images:
            count = min(RENDER_CHUNK, self.images - len(examples))
            ids = list(range(len(examples), len(examples) + count))
            scenes = self.run.scenes.sample(space, space.init_psi(), count, generator, ids)
            examples += self.run.scenes.render(scenes.records)
        return self.run.collate(examples)

    def train(self, data: Batch | ParameterSpace, seed: int) -> tuple[torch.nn.Module, dict[str, Any]]:
        """A fresh model from ``seed`` trained on renders of ``data`` (a space) or on ``data``
        itself (a batch), scored on validation and test; the result's ``seconds`` per phase."""
        self.load_sets()
        training = self._training(seed)
        start = time.perf_counter()
        batch = self.render(data, training.generator) if isinstance(data, ParameterSpace) else data
        rendered = time.perf_counter()
        model = training.create_model()
        optimizer = training.create_model_optimizer(model)
        loss = training.fine_tune(model, optimizer, batch, after_step=self._schedule(optimizer, len(batch)))
        trained = time.perf_counter()
        result: dict[str, Any] = {"seed": seed, "train_loss": loss, "val": None, "test": None}
        for key, evaluation in (("val", self.val), ("test", self.test)):
            if evaluation is not None:
                value, metrics = training.evaluate(model, evaluation)
                result[key] = {"loss": value, **metrics}
        result["seconds"] = {"render": rendered - start, "train": trained - rendered,
                             "eval": time.perf_counter() - trained}
        return model, result

    def _schedule(self, optimizer: torch.optim.Optimizer, examples: int) -> Any:
        """The learning-rate schedule's step, or None for a constant rate."""
        if self.schedule == "constant":
            return None
        steps = self.recipe.epochs * -(-examples // self.recipe.batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
        return scheduler.step

    def part_key(self, what: Any, seed: int) -> str:
        """What determines a fresh model's scores, hashed: the data, the seed, the recipe, the task
        and simulator as configured, and the evaluation sets."""
        config = self.run.settings_json()
        key = {"data": what, "seed": seed, "images": self.images, "recipe": self.recipe.model_dump(mode="json"),
               **{k: config[k] for k in ("simulator", "task", "validation", "test")}}
        if self.schedule != "constant":
            key["schedule"] = self.schedule
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def trained_part(self, out: Path, data: Batch | ParameterSpace, what: Any, seed: int, label: str,
                     progress: Any = None) -> tuple[Path, dict[str, Any]]:
        """The scores of (``data``, ``seed``) and where its weights are: from ``out/parts`` when
        trained before, else trained now and kept there."""
        key = self.part_key(what, seed)
        parts = out / PARTS
        scores_path, weights_path = parts / f"{key}.json", parts / f"{key}.pt"
        if scores_path.exists() and weights_path.exists():
            return weights_path, json.loads(scores_path.read_text())
        if progress is not None:
            progress(f"{self.run_dir}: a fresh model on {label} (seed {seed})")
        model, result = self.train(data, seed)
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write(weights_path, lambda f: torch.save(model.state_dict(), f))
        write_json(scores_path, result)
        return weights_path, result

    def score(self, out: str | Path | None = None, *, snapshots: bool = False,
              on: Literal["renders", "validation"] = "renders", progress: Any = None) -> dict[str, Any]:
        """Trains (or reads back) every point's fresh models, writes ``final.json`` and ``model.pt``
        into ``out`` (default: the run's ``final/``) and returns what ``final.json`` holds."""
        out = Path(out) if out is not None else self.run_dir / FINAL
        out.mkdir(parents=True, exist_ok=True)
        if on == "validation":
            self.load_sets()
            if self.val is None:
                raise FinalTrainingError(f"{self.run_dir}: the run has no validation set to train on")
            points: list[dict[str, Any]] = [{"label": "the validation set", "trained_on": "validation"}]
            data: list[Batch | ParameterSpace] = [self.val]
            what: list[Any] = ["the validation set"]
        else:
            handed = handed_over(self.run_dir, snapshots)
            points = [{"label": h.label, "name": f"renders of psi {h.label}", "at": h.at, "iteration": h.iteration,
                       "images": h.images, "seconds": h.seconds, "psi": h.psi, "trained_on": "renders"}
                      for h in handed]
            data = [ParameterSpace.from_dict(h.space) for h in handed]
            what = [h.space for h in handed]
        weights: list[Path] = []
        for point, source, described in zip(points, data, what, strict=True):
            parts = [self.trained_part(out, source, described, seed,
                                       point.get("name", point["label"]), progress) for seed in self.seeds]
            weights.append(parts[0][0])
            point["per_seed"] = [result for _, result in parts]
            for key in ("val", "test"):
                point[f"{key}_metric"] = stats([(r[key] or {}).get("metric") for r in point["per_seed"]])
        # The last point is the final psi (snapshots come in the order of their fractions).
        atomic_write(out / MODEL, lambda f: f.write(weights[-1].read_bytes()))
        final_point = points[-1]
        report = {"run": str(self.run_dir.resolve()), "trained_on": on, **self.settings(),
                  "metric": "test" if self.test is not None else "val",
                  "final": {k: final_point[k] for k in ("label", "val_metric", "test_metric")},
                  "points": points, "model": MODEL}
        write_json(out / FINAL_JSON, report)
        return report

    def close(self) -> None:
        self.run.close()

