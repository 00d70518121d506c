"""A run's config checked against the installed plugins, every problem in one pass.

``check_run`` looks up the simulator, task, estimator, searcher and observers, validates each
one's settings, the labels, presets, overrides, data folders, the device and the executor, and
returns the :class:`RunPlan` a run is built from — or raises one :class:`ConfigError` listing
everything that is wrong, so that a user fixes a config once, not once per line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
import torch
from pydantic import BaseModel, ValidationError

from .config import PACKAGE_PREFIX, ConfigError, Data, RunConfig, format_validation_error, validate_settings
from .executors import ray_available
from .observers import configured_observers
from .plugins import Registry, has_impl, plugin_manager
from .space import Categorical, ParameterSpace


def resolve_device(spec: str) -> torch.device:
    """``training.device`` as a torch device: "auto" is CUDA where torch sees a GPU, else the CPU."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{spec!r}: torch sees no CUDA device on this machine; use 'cpu' or 'auto'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{spec!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def labels_problem(labels: Any) -> str | None:
    """What is wrong with a simulator's declared labels, or None."""
    if not isinstance(labels, list | tuple) or not all(isinstance(n, str) and n for n in labels):
        return f"expected a list of non-empty class names, got {labels!r}"
    if not labels:
        return "an empty list (return None to declare no classes)"
    if len(set(labels)) != len(labels):
        return f"names must be distinct, got {list(labels)}"
    return None


def _default_settings(model: type[BaseModel] | None) -> Any:
    """A settings model's defaults (a dict where there is no model), None if it has required keys."""
    if model is None:
        return {}
    try:
        return model()
    except Exception:
        return None


def _require(pm: Any, hooks: tuple[str, ...], role: str, name: str, errors: list[str]) -> None:
    for hook in hooks:
        if not has_impl(pm, hook, role):
            errors.append(f"{role}.name: {role} {name!r} implements no {hook!r} hook")


def _dump(settings: Any) -> Any:
    return settings.model_dump(mode="json") if isinstance(settings, BaseModel) else settings


def is_psi_file(start: str | None) -> bool:
    """Whether ``simulator.start`` names a run's psi.json rather than a preset."""
    return start is not None and start.endswith(".json")


def _structure(fam: Any) -> dict[str, Any]:
    """What a renderer relies on in a parameter's values: its family, draws per scene and choices."""
    out: dict[str, Any] = {"family": fam.family, "repeat": fam.repeat}
    if isinstance(fam, Categorical):
        out["choices"] = list(fam.choices)
    return out


def load_psi_space(path: str, base: ParameterSpace, key: str, errors: list[str]) -> ParameterSpace | None:
    """The space a finished run's psi.json defines (its ``space``), checked against ``base``, the
    simulator's declared space: the same parameters, each of the same family, draws per scene and
    choices. The declared ``learn`` flags replace the file's: the file says where psi starts, the
    new config (its simulator and overrides) what is learnt. Each problem is one line in
    ``errors`` (then None is returned)."""
    where = f"{key}.start: {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        errors.append(f"{where}: cannot read ({exc.strerror or exc})")
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        errors.append(f"{where}: not JSON ({exc})")
        return None
    spec = data.get("space") if isinstance(data, dict) else None
    if not isinstance(spec, dict) or not spec:
        errors.append(f"{where}: no 'space' table of parameters (a finished run's psi.json has one)")
        return None
    problems = []
    missing, extra = [n for n in base if n not in spec], [n for n in spec if n not in base]
    if missing or extra:
        problems.append(f"{where}: its parameters are not the simulator's: "
                        + "; ".join(f"{what} {', '.join(repr(n) for n in names)}"
                                    for what, names in (("missing", missing), ("extra", extra)) if names))
    for name in (n for n in base if n in spec):
        family, declared = spec[name].get("family") if isinstance(spec[name], dict) else None, _structure(base[name])
        if family != declared["family"]:
            problems.append(f"{where}: parameter {name!r} is {family!r} in the file, {declared['family']!r} in the "
                            "simulator's space")
    if problems:
        errors.extend(problems)
        return None
    try:
        space = base.override(spec)
    except (KeyError, TypeError, ValueError) as exc:
        errors.append(f"{where}: space.{exc.args[0] if exc.args else exc}")
        return None
    for name in base:
        declared, found = _structure(base[name]), _structure(space[name])
        problems += [f"{where}: parameter {name!r} has {k} {found[k]!r} in the file, {declared[k]!r} in the "
                     "simulator's space" for k in declared if k != "family" and found[k] != declared[k]]
    if problems:
        errors.extend(problems)
        return None
    return space.override({name: {"learn": base[name].learn} for name in base})


def resolve_space(base: ParameterSpace, presets: dict[str, dict[str, dict[str, Any]]], preset: str | None,
                  overrides: dict[str, dict[str, Any]], key: str, errors: list[str]) -> ParameterSpace:
    """``base`` with ``preset`` and ``overrides`` applied; what is wrong goes to ``errors`` as
    ``key``'s problem (and the space is returned as far as it could be built). The simulator's
    start may instead name a run's psi.json (``is_psi_file``), whose space then takes the
    preset's place."""
    space = base
    if key == "simulator" and is_psi_file(preset):
        assert preset is not None
        loaded = load_psi_space(preset, base, key, errors)
        if loaded is None:
            return space
        space = loaded
    elif preset is not None:
        if preset not in presets:
            allowed = ", ".join(repr(p) for p in presets) or "none (the simulator declares no presets)"
            field = "start" if key == "simulator" else "preset"
            errors.append(f"{key}.{field}: unknown preset {preset!r}; allowed: {allowed}")
            return space
        space = space.override(presets[preset])
    try:
        return space.override(overrides) if overrides else space
    except (KeyError, TypeError, ValueError) as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        errors.append(f"{key}.overrides.{message}" if isinstance(exc, ValueError)
                      else f"{key}.overrides: {message}")
        return space


@dataclass
class RunPlan:
    """A checked config with what it resolved to among the installed plugins."""

    config: RunConfig
    pm: pluggy.PluginManager
    """The run's hooks: simulator, task, estimator, observers and the core's defaults."""
    sim_settings: Any
    task_settings: Any
    est_settings: Any
    searcher_settings: Any
    searcher_cls: Any
    labels: list[str] | None
    base_space: ParameterSpace
    presets: dict[str, dict[str, dict[str, Any]]]
    space: ParameterSpace
    """The space psi starts from: the simulator's, with the config's start and overrides."""
    uses_estimator: bool
    needs_validation: bool
    device: torch.device
    plugin_targets: dict[str, str | None]
    """Where worker processes import the run's plugins (None: not from an entry point)."""
    simulator_version: str

    def space_for(self, preset: str | None, overrides: dict[str, dict[str, Any]], key: str) -> ParameterSpace:
        """The space of a preset with overrides (checked already: no error is expected here)."""
        return resolve_space(self.base_space, self.presets, preset, overrides, key, [])

    def settings_json(self) -> dict[str, Any]:
        """The resolved config as JSON data (``config.json``): every plugin's settings with their
        defaults, and the space."""
        resolved = self.config.model_dump(mode="json")
        resolved["simulator"]["settings"] = _dump(self.sim_settings)
        resolved["task"]["settings"] = _dump(self.task_settings)
        resolved["estimator"]["settings"] = _dump(self.est_settings)
        resolved["searcher"]["settings"] = _dump(self.searcher_settings)
        resolved["space"] = self.space.to_dict()
        if not self.uses_estimator:
            resolved["estimator"] = None
        return resolved


def _resolve_labels(pm: pluggy.PluginManager, config: RunConfig, sim_settings: Any, task_settings: Any,
                    errors: list[str]) -> tuple[list[str] | None, Any]:
    """The simulator's declared object classes (``labels`` hook) and the task's settings after
    its ``apply_labels`` hook adapted them (unchanged without declared labels)."""
    name = config.simulator.name
    declared = pm.hook.labels(settings=sim_settings)
    if declared is None:
        return None, task_settings
    if task_settings is None:  # invalid [task.settings], reported already
        return list(declared), task_settings
    problem = labels_problem(declared)
    if problem:
        errors.append(f"simulator.name: simulator {name!r} declares bad labels: {problem}")
        return None, task_settings
    labels = list(declared)
    try:
        adapted = pm.hook.apply_labels(settings=task_settings, labels=list(labels))
    except ValidationError as exc:
        errors.extend(f"{line} (with the labels simulator {name!r} declares: {labels})"
                      for line in format_validation_error(exc, "task.settings"))
        return labels, task_settings
    except ValueError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        errors.append(f"task.settings: {message} (with the labels simulator {name!r} declares: {labels})")
        return labels, task_settings
    return labels, task_settings if adapted is None else adapted


def _reads_pairs(pm: pluggy.PluginManager) -> bool:
    """Whether the task's ``load_dataset`` takes the ``mask`` of an image + mask pair."""
    return any(impl.plugin_name == "task" and "mask" in impl.argnames
               for impl in pm.hook.load_dataset.get_hookimpls())


def _check_data_paths(key: str, data: Data, errors: list[str]) -> None:
    if data.path is None or str(data.path).startswith(PACKAGE_PREFIX):
        return  # a package that is not installed was reported when the paths were resolved
    if data.mask is None:
        if not data.path.is_dir():
            errors.append(f"{key}.path: {str(data.path)!r} is not a folder (an image file needs its mask)")
        return
    for field, path in (("path", data.path), ("mask", data.mask)):
        if not str(path).startswith(PACKAGE_PREFIX) and not path.is_file():
            errors.append(f"{key}.{field}: {str(path)!r} is not a file")


def _check_disjoint(config: RunConfig, errors: list[str]) -> None:
    """Validation and test cut from the same images must come from regions that do not overlap."""
    val, test = config.validation, config.test
    if val is None or test is None or val.source != "folder" or test.source != "folder":
        return
    if (val.path, val.mask) != (test.path, test.mask):
        return
    a = val.tiles.region if val.tiles is not None else (0.0, 0.0, 1.0, 1.0)
    b = test.tiles.region if test.tiles is not None else (0.0, 0.0, 1.0, 1.0)
    if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
        errors.append(f"test.tiles.region: {list(b)} overlaps validation's {list(a)} of the same images; the "
                      "test set must be pixels the validation set does not see")


def check_run(config: RunConfig, registry: Registry, observers: tuple[Any, ...] = ()) -> RunPlan:
    """The plan of a run of ``config``, or one ConfigError with every problem found."""
    errors: list[str] = []

    def lookup(kind: str, key: str, name: str) -> Any:
        try:
            return registry.get(kind, name)
        except LookupError as exc:
            errors.append(f"{key}.name: {exc}")
            return None

    # Every check runs even when an earlier one failed, so that one pass reports every
    # problem of a config; a check that needs a plugin or settings that failed is skipped.
    sim = lookup("simulators", "simulator", config.simulator.name)
    task = lookup("tasks", "task", config.task.name)
    est = lookup("estimators", "estimator", config.estimator.name)
    searcher_cls = lookup("searchers", "searcher", config.searcher.name)
    observers = (*observers, *configured_observers(config.observers, registry, errors))

    pm = plugin_manager(*((role, p) for role, p in (("simulator", sim), ("task", task), ("estimator", est))
                          if p is not None),
                        *((f"observer-{i}", o) for i, o in enumerate(observers)))
    if sim is not None:
        _require(pm, ("parameter_space", "render"), "simulator", config.simulator.name, errors)
    if task is not None:
        _require(pm, ("create_model", "collate", "loss", "evaluate"), "task", config.task.name, errors)
    if est is not None:
        _require(pm, ("estimate_hypergrad",), "estimator", config.estimator.name, errors)
    hook = pm.hook

    def settings(found: Any, model: type[BaseModel] | None, table: dict[str, Any], prefix: str) -> Any:
        if found is None:
            return None
        try:
            return validate_settings(model, table, prefix)
        except ConfigError as exc:
            errors.extend(exc.lines)
            return None

    sim_settings = settings(sim, hook.simulator_settings_model(), config.simulator.settings, "simulator.settings")
    task_settings = settings(task, hook.task_settings_model(), config.task.settings, "task.settings")
    est_settings = settings(est, hook.estimator_settings_model(), config.estimator.settings, "estimator.settings")
    searcher_settings = settings(searcher_cls, getattr(searcher_cls, "settings_model", None),
                                 config.searcher.settings, "searcher.settings")
    # The labels need the simulator and its settings (the task's are checked against them).
    labels = None
    if sim is not None and sim_settings is not None:
        labels, task_settings = _resolve_labels(pm, config, sim_settings, task_settings, errors)

    presets: dict[str, dict[str, dict[str, Any]]] = {}
    base_space = space = None
    sim_usable = sim is not None and has_impl(pm, "parameter_space", "simulator")
    space_settings = sim_settings
    if sim_usable and space_settings is None:
        # Invalid settings (reported above): the space under the defaults still lets the
        # presets and overrides be checked, where the settings model has defaults.
        space_settings = _default_settings(hook.simulator_settings_model())
        sim_usable = space_settings is not None
    if sim_usable:
        base_space = hook.parameter_space(settings=space_settings)
        presets = hook.presets(settings=space_settings) or {}
        space = resolve_space(base_space, presets, config.simulator.start, config.simulator.overrides,
                              "simulator", errors)
    for key in ("validation", "test"):
        data: Data | None = getattr(config, key)
        if data is None:
            continue
        if data.source == "simulator":
            if base_space is not None:
                resolve_space(base_space, presets, data.preset, data.overrides, key, errors)
            continue
        if task is not None and not has_impl(pm, "load_dataset", "task"):
            errors.append(f"{key}.source: task {config.task.name!r} cannot load folders "
                          "(no 'load_dataset' hook); allowed: 'simulator'")
        elif task is not None and data.mask is not None and not _reads_pairs(pm):
            errors.append(f"{key}.mask: task {config.task.name!r} reads folders only, not an image + mask pair")
        _check_data_paths(key, data, errors)
    _check_disjoint(config, errors)
    uses_estimator = bool(getattr(searcher_cls, "uses_estimator", True))
    searcher_needs_validation = bool(getattr(searcher_cls, "requires_validation", False))
    estimator_needs_validation = est is not None and est_settings is not None and bool(
        hook.needs_validation(settings=est_settings))
    needs_validation = searcher_needs_validation or (uses_estimator and estimator_needs_validation)
    if needs_validation and config.validation is None:
        if searcher_needs_validation:
            errors.append(f"validation: required by the {config.searcher.name!r} searcher "
                          "(its reward is the validation metric; add a [validation] table)")
        else:
            errors.append(f"validation: required by the {config.estimator.name!r} estimator "
                          "(add a [validation] table, or use estimator 'no-val')")
    plugin_problems = getattr(searcher_cls, "plugin_problems", None)
    if plugin_problems is not None and searcher_settings is not None and space is not None and sim_usable:
        errors.extend(plugin_problems(searcher_settings, space, config.simulator.name,
                                      lambda hook: has_impl(pm, hook, "simulator"),
                                      hook.differentiable_parameters(settings=space_settings)))
    missing = getattr(searcher_cls, "missing_requirements", lambda: [])()
    if missing:
        errors.append(f"searcher.name: {config.searcher.name!r} needs {', '.join(missing)} "
                      "(pip install 'autosim-core[baselines]')")
    try:
        resolve_device(config.training.device)
    except ValueError as exc:
        errors.append(f"training.device: {exc}")
    if config.executor.kind == "ray" and not ray_available():
        errors.append("executor.kind: 'ray' needs Ray, which is not installed (pip install 'autosim-core[ray]')")
    if errors:
        raise ConfigError(errors)
    assert base_space is not None and space is not None
    return RunPlan(
        config=config, pm=pm, sim_settings=sim_settings, task_settings=task_settings, est_settings=est_settings,
        searcher_settings=searcher_settings, searcher_cls=searcher_cls, labels=labels, base_space=base_space,
        presets=presets, space=space, uses_estimator=uses_estimator, needs_validation=needs_validation,
        device=resolve_device(config.training.device),
        plugin_targets={kind: registry.targets[kind].get(name) for kind, name in (
            ("simulators", config.simulator.name), ("tasks", config.task.name),
            ("estimators", config.estimator.name), ("searchers", config.searcher.name))},
        simulator_version=registry.versions["simulators"].get(config.simulator.name, ""))
