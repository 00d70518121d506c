"""Run configuration: a TOML file validated by pydantic before any work starts."""

from __future__ import annotations

import copy
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(Exception):
    """A config that cannot run; each line names a key path and what is allowed."""

    def __init__(self, lines: list[str], partial: RunConfig | None = None, dropped: tuple[str, ...] = ()):
        super().__init__("\n".join(lines))
        self.lines = lines
        self.partial = partial
        """For a config that fails validation: the config with its invalid keys left at their
        defaults, so that the checks which need a whole config (plugins, presets, folders) can
        still run and report in the same pass; None where no such config exists."""
        self.dropped = dropped
        """Tables of the original config that ``partial`` leaves out (their checks are moot)."""


def _leaf_types(annotation: Any) -> set[Any]:
    """The types an annotation admits, through ``X | None``, ``Optional`` and ``Annotated``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_leaf_types(arg) for arg in typing.get_args(annotation)))
    if origin is typing.Annotated:
        return _leaf_types(typing.get_args(annotation)[0])
    return {annotation}


def wants_number(annotation: Any) -> bool:
    """Whether a field of this annotation takes a number but not a boolean (which pydantic would
    otherwise take as 0 or 1)."""
    leaves = _leaf_types(annotation)
    return bool not in leaves and bool(leaves & {int, float})


def loose_numbers(model: type[BaseModel], data: Any, prefix: str) -> list[str]:
    """Lines for the values of a settings table that pydantic would take silently: a boolean where
    a number goes (``epochs = true`` as 1), a number that is not finite (``lr = inf``)."""
    if not isinstance(data, dict):
        return []
    lines = []
    for name, value in data.items():
        field = model.model_fields.get(name)
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, float) and not math.isfinite(value):
            lines.append(f"{key}: must be a finite number (got {value})")
        elif field is not None and isinstance(value, bool) and wants_number(field.annotation):
            lines.append(f"{key}: must be a number, not a boolean (got {value!r})")
    return lines


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and wants_number(field.annotation):
            raise ValueError("must be a number, not a boolean")
        return value


class PluginChoice(_Strict):
    """A plugin chosen by its entry-point name, and its own settings table."""

    name: str = Field(min_length=1, description="entry-point name of the plugin (`autosim list` shows them)")
    settings: dict[str, Any] = Field(default_factory=dict,
                                     description="the plugin's settings (see its section below)")


class SimulatorChoice(PluginChoice):
    """The simulator, and the distribution psi starts from."""

    start: str | None = Field(None, description="preset that psi starts from, or a finished run's psi.json (a "
                              "path ending in .json, relative to the config file) whose learned space it starts "
                              "from (default: the space as declared)")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                 description="changes to the starting space, per parameter")


class SearcherChoice(PluginChoice):
    """The outer search strategy: AutoSimulate, or a baseline."""

    name: str = Field("autosimulate", min_length=1, description="entry-point name of the searcher")


class EstimatorChoice(PluginChoice):
    """The hypergradient estimator of the autosimulate searcher (unused by the baselines)."""

    name: str = Field("quadratic", min_length=1, description="entry-point name of the estimator")


class Training(_Strict):
    """How the task's model is fine-tuned on each iteration's rendered scenes.

    The defaults (8 epochs, minibatches of 16, Adam at 3e-3) are those of the CLEVR/UNet and
    shapes/YOLO demos, and on the toy they reach the accuracy of its tuned config (0.94 after 20
    iterations, where one epoch at 1e-3 reached 0.06): each iteration renders only K new scenes
    (32 by default), so one epoch is a couple of optimiser steps, too few for the model to follow psi.
    """

    epochs: int = Field(8, ge=1, description="fine-tuning epochs per outer iteration (epsilon); 8 makes "
                        "enough optimiser steps on K scenes for the warm-started model to follow psi")
    batch_size: int = Field(16, ge=1, description="minibatch size of fine-tuning (16: several steps per epoch "
                            "on the K = 32 scenes of an iteration)")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser of the model's parameters theta")
    lr: float = Field(3e-3, gt=0, description="learning rate of the model's optimiser (3e-3 suits Adam on the "
                      "demos' UNet and YOLO and on the toy)")
    momentum: float = Field(0.0, ge=0, lt=1, description="momentum of sgd (unused by adam)")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay of the model's optimiser")
    eval_batch_size: int = Field(64, ge=1, description="examples per forward pass when evaluating validation "
                                 "and test sets (memory only; results do not depend on it)")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="where the model is trained, its HVPs and jvps computed and it is evaluated: "
                        "'auto' (CUDA when available, else the CPU), 'cpu', 'cuda' or 'cuda:N'")


class FinalTraining(_Strict):
    """How ``autosim train`` (and ``autosim compare --final-training``) scores a run's learned
    distribution: a fresh model trained from scratch on ``images`` renders of the psi the run hands
    over, with one recipe for every method. Recipe keys left unset are the run's ``[training]``.

    The run also keeps the psi it would hand over at the fractions ``at`` of its budget
    (``snapshots.json``), so that each can be scored: the psi-quality curve.
    """

    at: list[float] = Field([0.25, 0.5, 1.0], min_length=1, description="fractions of the budget at which the run "
                            "keeps the psi it would hand over (0: the start; 1: the end, psi.json)")
    images: int = Field(512, ge=1, description="images rendered from the psi to train the fresh model on")
    seeds: int = Field(1, ge=1, description="fresh models per psi, each from its own seed (their spread is the "
                       "retraining noise)")
    seed: int = Field(10_000, ge=0, description="first seed of the fresh models: model r of a run with seed S "
                      "uses seed + S * seeds + r for its initial weights and its scenes")
    epochs: int | None = Field(None, ge=1, description="training epochs over the images (default: [training] "
                               "epochs)")
    batch_size: int | None = Field(None, ge=1, description="minibatch size (default: [training] batch_size)")
    optimizer: Literal["adam", "sgd"] | None = Field(None, description="optimiser (default: [training] optimizer)")
    lr: float | None = Field(None, gt=0, description="learning rate (default: [training] lr)")
    momentum: float | None = Field(None, ge=0, lt=1, description="momentum of sgd (default: [training] momentum)")
    weight_decay: float | None = Field(None, ge=0, description="L2 weight decay (default: [training] weight_decay)")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate over the fresh model's steps: 'constant', or 'cosine' (decayed to "
        "0 by the last step, which leaves the trained model less dependent on its last minibatches)")

    @model_validator(mode="after")
    def _fractions(self) -> FinalTraining:
        bad = [f for f in self.at if not 0.0 <= f <= 1.0]
        if bad:
            raise ValueError(f"at: fractions of the budget lie in [0, 1] (got {bad})")
        if len(set(self.at)) != len(self.at):
            raise ValueError(f"at: a fraction is given twice (got {self.at})")
        self.at = sorted(self.at)
        return self

    def recipe(self, training: Training) -> Training:
        """The fresh model's training: ``training`` with the keys this table sets."""
        keys = ("epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay")
        return training.model_copy(update={k: getattr(self, k) for k in keys if getattr(self, k) is not None})

    def model_seeds(self, run_seed: int, count: int | None = None) -> list[int]:
        count = self.seeds if count is None else count
        return [self.seed + run_seed * count + r for r in range(count)]


class Executor(_Strict):
    """Where scenes are rendered (and a black-box searcher's evaluations run): in the run's
    process, in local worker processes, or on Ray.

    The run samples every scene (and its render seed) itself and hands the executor whole
    records, so the same seeds give the same images whichever executor renders them.
    """

    kind: Literal["inline", "processes", "ray"] = Field(
        "inline", description="'inline': in the run's own process; 'processes': a pool of local worker "
        "processes (started by spawn/forkserver, never fork); 'ray': Ray tasks on a local Ray started on "
        "demand, or on the cluster at `address` (pip install 'autosim-core[ray]')")
    workers: int | None = Field(None, ge=1, description="worker processes / concurrent Ray tasks (default: "
                                "the CPUs of this machine, or of the Ray cluster); the scenes of a batch are "
                                "split into one contiguous chunk per worker, and a black-box searcher's "
                                "batch of evaluations runs one evaluation per worker")
    render_timeout: float | None = Field(None, gt=0, description="seconds a worker may spend on one chunk "
                                         "before it is killed and the chunk retried (processes and ray; an "
                                         "inline render cannot be interrupted)")
    retries: int = Field(2, ge=0, description="times a failed chunk (exception, crashed or hung worker) is "
                         "rendered again, one scene at a time, before the run stops with an error naming the scene")
    address: str | None = Field(None, min_length=1, description="Ray cluster to join (`ray://host:10001` or "
                                "`auto`); default: start a local Ray (kind = 'ray' only)")
    start_method: Literal["spawn", "forkserver"] = Field(
        "spawn", description="how worker processes start (kind = 'processes'); renderers such as Blender's "
        "Cycles refuse a forked process")

    @model_validator(mode="after")
    def _address_needs_ray(self) -> Executor:
        if self.address is not None and self.kind != "ray":
            raise ValueError(f"address is only used by kind = 'ray' (kind is {self.kind!r})")
        return self


class Budget(_Strict):
    """When the run stops: at the first limit reached (set at least one)."""

    iterations: int | None = Field(None, ge=1, description="outer iterations (objective evaluations for "
                                   "black-box searchers)")
    images: int | None = Field(None, ge=1, description="training images rendered")
    seconds: float | None = Field(None, gt=0, description="wall-clock seconds of the loop (evaluation sets "
                                  "rendered before it are not counted)")

    @model_validator(mode="after")
    def _one_limit(self) -> Budget:
        if self.iterations is None and self.images is None and self.seconds is None:
            raise ValueError("set at least one of iterations, images, seconds")
        return self


class Tiles(_Strict):
    """Real images cut into tiles of the size the task trains at, from one region of each image, so
    that a validation and a test set can come from disjoint parts of the same images."""

    size: int = Field(ge=1, description="side of a square tile in pixels")
    stride: int | None = Field(None, ge=1, description="pixels between the corners of neighbouring tiles "
                               "(default: size, tiles that touch without overlapping)")
    region: tuple[float, float, float, float] = Field(
        (0.0, 0.0, 1.0, 1.0), description="[left, top, right, bottom] of the part of each image the tiles "
        "lie inside, as fractions of its width and height ([0, 0, 0.5, 1]: the left half)")

    @model_validator(mode="after")
    def _region(self) -> Tiles:
        left, top, right, bottom = self.region
        if not (0.0 <= left < right <= 1.0 and 0.0 <= top < bottom <= 1.0):
            raise ValueError(f"region: [left, top, right, bottom] with 0 <= left < right <= 1 and "
                             f"0 <= top < bottom <= 1 (got {list(self.region)})")
        return self


class Data(_Strict):
    """An evaluation set ([validation], [test]): rendered by the simulator or loaded from a folder."""

    source: Literal["simulator", "folder"] = Field("simulator", description="render the set from a preset, "
                                                   "or load it with the task's load_dataset hook")
    preset: str | None = Field("target", description="preset the simulator renders this set from")
    overrides: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                                 description="changes to the preset's space, per parameter")
    count: int = Field(100, ge=1, description="examples rendered (source = 'simulator')")
    seed: int | None = Field(None, ge=0, description="seed of the rendered scenes (required for "
                             "source = 'simulator'; unused by folders)")
    path: Path | None = Field(None, description="the folder (source = 'folder'), or one image file when mask "
                              "is given; relative to the config file, or 'package:NAME/FILE' for a file shipped "
                              "inside the installed Python package NAME")
    mask: Path | None = Field(None, description="the label mask of the image file path (an image + mask pair; "
                              "source = 'folder'); relative to the config file, or 'package:NAME/FILE'")
    tiles: Tiles | None = Field(None, description="cut the loaded images and masks into tiles (source = "
                                "'folder'; default: the images whole)")

    @model_validator(mode="after")
    def _folder_needs_path(self) -> Data:
        if self.source == "folder" and self.path is None:
            raise ValueError("source = 'folder' needs path")
        if self.source == "simulator" and (self.mask is not None or self.tiles is not None):
            raise ValueError("mask and tiles are for source = 'folder' (real images); a rendered set has neither")
        if self.source == "simulator" and self.seed is None:
            raise ValueError("source = 'simulator' needs seed (the seed its scenes are rendered from; "
                             "it must differ from the training seed)")
        return self


class Observers(_Strict):
    """What watches a run besides the console and curves.png (plugins in the entry-point group
    ``autosim.observers`` join every run on their own)."""

    tensorboard: bool = Field(False, description="log the history's numbers, psi and a grid of each iteration's "
                              "renders to RUN/tensorboard (pip install 'autosim-core[tensorboard]')")


class RunConfig(_Strict):
    """A run's config file: the top-level keys and tables."""

    seed: int = Field(0, ge=0, description="seed of the training scenes and the model's initial weights")
    simulator: SimulatorChoice = Field(description="the renderer whose scene distribution is learned")
    task: PluginChoice = Field(description="the model trained on the rendered data, its loss and metric")
    searcher: SearcherChoice = Field(default_factory=SearcherChoice, description="the outer search strategy")
    estimator: EstimatorChoice = Field(default_factory=EstimatorChoice, description="the hypergradient estimator")
    training: Training = Field(default_factory=Training, description="fine-tuning of the task's model")
    final_training: FinalTraining = Field(default_factory=FinalTraining, description="the fresh model that scores "
                                          "the learned psi (autosim train), and the psi snapshots it scores")
    budget: Budget = Field(description="when the run stops")
    max_nonfinite: int = Field(3, ge=1, description="steps in a row whose loss, hypergradient or psi is NaN or "
                               "inf before the run stops with an error (each such step is undone and logged "
                               "in its history row)")
    executor: Executor = Field(default_factory=Executor, description="where scenes are rendered")
    validation: Data | None = Field(None, description="the set psi is tuned for (required by every estimator "
                                    "but no-val and by the baselines)")
    test: Data | None = Field(None, description="a held-out set scored once at the end")
    cache_dir: Path | None = Field(None, description="where rendered validation/test sets are kept")
    observers: Observers = Field(default_factory=Observers, description="TensorBoard and other observers")



def seed_problems(config: RunConfig) -> list[str]:
    """The seeds that must differ and do not: an evaluation set rendered with the training seed
    or another set's, a fresh model seeded like an evaluation set (a check across keys, made on
    a config whose keys are each valid, so that it hides no other error)."""
    lines = []
    seeds = {"seed": config.seed}
    for key in ("validation", "test"):
        data = getattr(config, key)
        if data is not None and data.source == "simulator":
            lines += [f"{key}.seed: {data.seed} equals {other}; evaluation sets must not share the training seed "
                      "or each other's" for other, value in seeds.items() if value == data.seed]
            seeds[f"{key}.seed"] = data.seed
    for r, seed in enumerate(config.final_training.model_seeds(config.seed)):
        lines += [f"final_training.seed: fresh model {r} would use seed {seed}, which equals {key}, and train on "
                  "that set's scenes; choose another final_training.seed"
                  for key, value in seeds.items() if key != "seed" and value == seed]
    return lines


def _loc(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc if not (isinstance(p, str) and p.startswith("function-")))


def format_validation_error(error: ValidationError, prefix: str = "") -> list[str]:
    lines = []
    for err in error.errors():
        path = _loc(tuple(err["loc"]))
        path = f"{prefix}.{path}" if prefix and path else (prefix or path)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        got = err.get("input")
        shown = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        # Checks across several keys name the key themselves, so they carry no location.
        lines.append(f"{path}: {msg}{shown}" if path else msg)
    return lines


_STAND_INS: dict[str, Any] = {"budget": {"iterations": 1}}
"""Required tables replaced by a valid stand-in when building a partial config."""


def _partial_config(data: dict[str, Any]) -> tuple[RunConfig | None, tuple[str, ...]]:
    """``data`` with every invalid key removed (a default takes its place) or, where that is not
    enough, its whole top-level table dropped; None when a required table cannot be repaired."""
    data = copy.deepcopy(data)
    dropped: list[str] = []
    for _ in range(50):
        try:
            return RunConfig.model_validate(data), tuple(dropped)
        except ValidationError as exc:
            errors = exc.errors()
        for err in errors:
            loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
            if not loc:
                return None, ()
            parent: Any = data
            for part in loc[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if err["type"] != "missing" and len(loc) > 1 and isinstance(parent, dict) and loc[-1] in parent:
                del parent[loc[-1]]
                continue
            top = str(loc[0])
            if top in _STAND_INS and data.get(top) != _STAND_INS[top]:
                data[top] = copy.deepcopy(_STAND_INS[top])
            elif top in data and top not in ("simulator", "task"):
                data.pop(top)
                dropped.append(top)
            else:
                return None, ()
    return None, ()


def parse_config(data: dict[str, Any]) -> RunConfig:
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        partial, dropped = _partial_config(data) if isinstance(data, dict) else (None, ())
        lines = format_validation_error(exc)
        if partial is not None:
            _resolve_package_paths(partial)
            if not any(line.split(":")[0].endswith("seed") for line in lines):
                lines += seed_problems(partial)  # a seed left at its default would give false alarms
        raise ConfigError(lines, partial, dropped) from None
    problems = _resolve_package_paths(config) + seed_problems(config)
    if problems:  # the config is whole otherwise: the checks that need the plugins run on it too
        raise ConfigError(problems, config, ()) from None
    return config


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read ({exc.strerror})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                           "save the config as UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML ({exc})"]) from None
    try:
        config = parse_config(data)
    except ConfigError as exc:
        if exc.partial is not None:
            _resolve_paths(exc.partial, path.parent)
        raise ConfigError([f"{path}: {line}" for line in exc.lines], exc.partial, exc.dropped) from None
    return _resolve_paths(config, path.parent)


PACKAGE_PREFIX = "package:"


def package_file(spec: str) -> Path:
    """``package:NAME/FILE`` as a path inside the installed package NAME, found without importing it
    (importing a package can be heavy, or need what is not installed: only its files are wanted)."""
    import importlib.util

    name, _, rest = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    try:
        found = importlib.util.find_spec(name) if name else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.submodule_search_locations:
        raise ConfigError([f"package {name!r} is not installed; its files are read from it "
                           f"(pip install --no-deps {name})"])
    return Path(next(iter(found.submodule_search_locations))) / rest


def _resolve_package_paths(config: RunConfig) -> list[str]:
    """The evaluation sets' ``package:NAME/FILE`` paths as files of the installed packages; one error
    line for each package that is not installed (its path is left as it was)."""
    errors = []
    for key in ("validation", "test"):
        data_cfg = getattr(config, key)
        for field in ("path", "mask"):
            path = None if data_cfg is None else getattr(data_cfg, field)
            if path is not None and str(path).startswith(PACKAGE_PREFIX):
                try:
                    setattr(data_cfg, field, package_file(str(path)))
                except ConfigError as exc:
                    errors.append(f"{key}.{field}: {exc.lines[0]}")
    return errors


def _resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    """Folder and file paths of evaluation sets, and a psi.json that psi starts from, are relative to the
    config file."""
    for data_cfg in (config.validation, config.test):
        for field in ("path", "mask"):
            path = None if data_cfg is None else getattr(data_cfg, field)
            if path is not None and not str(path).startswith(PACKAGE_PREFIX) and not path.is_absolute():
                setattr(data_cfg, field, (base / path).resolve())
    start = config.simulator.start
    if start is not None and start.endswith(".json") and not Path(start).is_absolute():
        config.simulator.start = str((base / start).resolve())
    return config


def validate_settings(model: type[BaseModel] | None, settings: dict[str, Any], prefix: str) -> Any:
    """A plugin's settings table checked against the model it declares (dict if none)."""
    if model is None:
        return dict(settings)
    loose = loose_numbers(model, settings, prefix)
    try:
        validated = model.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(loose + [line for line in format_validation_error(exc, prefix)
                                   if line.split(":")[0] not in {x.split(":")[0] for x in loose}]) from None
    if loose:
        raise ConfigError(loose)
    return validated
