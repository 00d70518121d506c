"""The settings reference, generated from the pydantic models: every table of a run's config and
every installed plugin's settings (name, type, default, constraints, description).

``python -m autosim_core.settings_doc > docs/settings.md`` (or ``autosim list --settings``)
writes it; ``autosim list --settings NAME`` prints one plugin's or table's section.
"""

from __future__ import annotations

import inspect
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import pluggy
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import config as cfg
from . import hookspecs
from .plugins import Registry, load_registry

HEADER = """# Settings reference

Generated from the pydantic models of the core and of the installed plugins by
`autosim list --settings > docs/settings.md` (or `python -m autosim_core.settings_doc`); do not
edit it by hand: `tests/test_settings_doc.py` fails when it is out of date.
`autosim list --settings NAME` prints one section (a plugin's name or a table's, e.g. `training`).

A key left out takes its default; "required" keys have none. Constraints are pydantic's
(`>= 1`: at least 1). A plugin's settings go in the `settings` table of its section of the
config, e.g. `[searcher]` `settings = { scenes_per_iteration = 64 }`.
"""

TABLES: list[tuple[str, str, type[BaseModel]]] = [
    ("top-level", "top-level keys", cfg.RunConfig),
    ("simulator", "`[simulator]`", cfg.SimulatorChoice),
    ("task", "`[task]`", cfg.PluginChoice),
    ("searcher", "`[searcher]`", cfg.SearcherChoice),
    ("estimator", "`[estimator]`", cfg.EstimatorChoice),
    ("training", "`[training]`", cfg.Training),
    ("final_training", "`[final_training]`", cfg.FinalTraining),
    ("budget", "`[budget]`", cfg.Budget),
    ("executor", "`[executor]`", cfg.Executor),
    ("validation", "`[validation]` and `[test]`", cfg.Data),
    ("tiles", "`[validation.tiles]` and `[test.tiles]`", cfg.Tiles),
    ("observers", "`[observers]`", cfg.Observers),
]

KINDS: list[tuple[str, str, str]] = [
    # (registry kind, heading, the config table its settings go in)
    ("searchers", "Searchers", "searcher"),
    ("estimators", "Estimators", "estimator"),
    ("simulators", "Simulators", "simulator"),
    ("tasks", "Tasks", "task"),
]

_SETTINGS_HOOKS = {"simulators": "simulator_settings_model", "tasks": "task_settings_model",
                   "estimators": "estimator_settings_model"}


@dataclass
class Section:
    name: str
    """What ``autosim list --settings NAME`` finds it by."""
    kind: str
    """"table" or a registry kind."""
    text: str


# ------------------------------------------------------------------------- rendering ---
def type_name(tp: Any) -> str:
    """A field's annotation as a reader writes it: ``int | None``, ``"adam" | "sgd"``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]"
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return "table"
    if inspect.isclass(tp) and issubclass(tp, Path):
        return "path"
    return getattr(tp, "__name__", str(tp))


def _value(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, BaseModel):
        return "its defaults"
    if isinstance(value, dict) and not value:
        return "{}"
    if isinstance(value, tuple | list):
        return f"[{', '.join(_value(v) for v in value)}]"
    return repr(value)


def default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return _value(field.default_factory())  # type: ignore[call-arg]
    if field.default is PydanticUndefined:
        return "required"
    return _value(field.default)


_BOUNDS = ((annotated_types.Ge, "ge", ">="), (annotated_types.Gt, "gt", ">"),
           (annotated_types.Le, "le", "<="), (annotated_types.Lt, "lt", "<"))


def constraints_text(field: FieldInfo) -> str:
    parts = []
    for item in field.metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(item, cls):
                parts.append(f"{sign} {getattr(item, attr)}")
        if isinstance(item, annotated_types.MinLen):
            parts.append(f"length >= {item.min_length}")
        if isinstance(item, annotated_types.MaxLen):
            parts.append(f"length <= {item.max_length}")
    return ", ".join(parts)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())


def _summary(model: type[BaseModel]) -> str:
    """The first paragraph of the model's own docstring (not an inherited one)."""
    doc = model.__dict__.get("__doc__")
    if not doc:
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split()).replace("``", "`")


def model_table(model: type[BaseModel]) -> str:
    """The model's fields as a markdown table."""
    rows = ["| key | type | default | constraints | description |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        rows.append("| " + " | ".join(_cell(x) for x in (
            f"`{name}`", type_name(field.annotation), default_text(field), constraints_text(field),
            field.description or "")) + " |")
    return "\n".join(rows)


def _model_section(heading: str, model: type[BaseModel] | None, intro: str = "") -> str:
    parts = [heading, ""]
    summary = _summary(model) if model is not None else ""
    if intro:
        parts += [intro, ""]
    if summary:
        parts += [summary, ""]
    if model is None:
        parts += ["No settings.", ""]
    elif not model.model_fields:
        parts += ["No settings (an empty table).", ""]
    else:
        parts += [model_table(model), ""]
    return "\n".join(parts)


# ----------------------------------------------------------------------- the sections ---
def settings_model(registry: Registry, kind: str, name: str) -> type[BaseModel] | None:
    """The settings model an installed plugin declares (None if it declares none)."""
    plugin = registry.plugins[kind][name]
    if kind == "searchers":
        return getattr(plugin, "settings_model", None)
    # The plugin alone (the core's defaults declare no settings): asking it imports nothing else.
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(plugin, name=kind[:-1])
    found: type[BaseModel] | None = getattr(pm.hook, _SETTINGS_HOOKS[kind])()
    return found


def sections(registry: Registry) -> list[Section]:
    out = [Section(key, "table", _model_section(f"### {title}", model)) for key, title, model in TABLES]
    for kind, _, table in KINDS:
        for name in sorted(registry.plugins[kind]):
            dist = registry.versions[kind].get(name, "").split(" ")[0]
            shipped = f"Shipped by `{dist}`; its settings go in `[{table}.settings]`." if dist else \
                f"Its settings go in `[{table}.settings]`."
            out.append(Section(name, kind, _model_section(f"### `{name}`", settings_model(registry, kind, name),
                                                          shipped)))
    return out


def settings_markdown(registry: Registry | None = None) -> str:
    """The whole reference page."""
    registry = registry or load_registry()
    found = sections(registry)
    parts = [HEADER, "## The config file\n"]
    parts += [s.text for s in found if s.kind == "table"]
    for kind, heading, _ in KINDS:
        parts.append(f"## {heading}\n")
        parts += [s.text for s in found if s.kind == kind] or ["None installed.\n"]
    return "\n".join(parts).rstrip("\n") + "\n"


def find_sections(name: str, registry: Registry | None = None) -> list[Section]:
    """The sections of a plugin or table called ``name`` (a name may be a plugin of several kinds)."""
    name = "validation" if name == "test" else name
    return [s for s in sections(registry or load_registry()) if s.name == name]


def main() -> None:
    print(settings_markdown(), end="")


if __name__ == "__main__":
    main()
