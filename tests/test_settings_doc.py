"""docs/settings.md is generated from the pydantic models and never drifts from them."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from autosim_core import config as cfg
from autosim_core.cli import app
from autosim_core.plugins import load_registry
from autosim_core.settings_doc import KINDS, TABLES, sections, settings_markdown, settings_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"
REGENERATE = "regenerate it: autosim list --settings > docs/settings.md"


def _by_heading(text: str) -> dict[str, str]:
    """Sections of the page by their '### ' heading, under their '## ' chapter."""
    out: dict[str, str] = {}
    chapter = ""
    for block in re.split(r"(?m)^(?=##+ )", text):
        if block.startswith("## "):
            chapter = block.splitlines()[0]
        elif block.startswith("### "):
            out[f"{chapter} / {block.splitlines()[0]}"] = block.rstrip("\n")
    return out


def test_settings_page_is_up_to_date() -> None:
    registry = load_registry()
    generated = settings_markdown(registry)
    documented = DOC.read_text(encoding="utf-8")
    fresh, stored = _by_heading(generated), _by_heading(documented)
    # Every table and every installed plugin is documented as its models say ...
    for heading, text in fresh.items():
        assert stored.get(heading) == text, f"docs/settings.md: {heading} is out of date; {REGENERATE}"
    # ... and with every documented plugin installed (the dev environment), the page is exactly it.
    if set(stored) == set(fresh):
        assert documented == generated, f"docs/settings.md is out of date; {REGENERATE}"


def test_every_setting_has_a_description() -> None:
    registry = load_registry()
    models = [model for _, _, model in TABLES]
    models += [m for kind, _, _ in KINDS for name in registry.plugins[kind]
               if (m := settings_model(registry, kind, name)) is not None]
    missing = [f"{m.__module__}.{m.__name__}.{key}" for m in models
               for key, field in m.model_fields.items() if not field.description]
    assert not missing, missing


def test_page_covers_the_tables_and_the_plugins() -> None:
    names = {s.name for s in sections(load_registry())}
    assert {"training", "budget", "validation", "autosimulate", "quadratic", "toy-gaussians",
            "toy-logistic"} <= names
    text = DOC.read_text(encoding="utf-8")
    for key in ("scenes_per_iteration", "max_grad_norm", "momentum", "weight_decay", "eval_batch_size"):
        assert f"| `{key}` |" in text, key


def test_list_settings_of_one_plugin() -> None:
    result = CliRunner().invoke(app, ["list", "--settings", "autosimulate"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("searcher autosimulate\n")
    for key in ("scenes_per_iteration", "optimizer", "lr", "max_grad_norm"):
        assert f"| `{key}` |" in result.output
    assert "| `lr` | float | 0.05 | > 0 |" in result.output
    training = CliRunner().invoke(app, ["list", "--settings", "training"])
    assert training.exit_code == 0 and "| `epochs` | int | 8 | >= 1 |" in training.output
    unknown = CliRunner().invoke(app, ["list", "--settings", "nope"])
    assert unknown.exit_code == 2 and "autosimulate" in unknown.stderr


def test_training_defaults_train() -> None:
    """One epoch of Adam at 1e-3 barely moved the model; the defaults are the demos' values."""
    t = cfg.Training()
    assert (t.epochs, t.batch_size, t.optimizer, t.lr) == (8, 16, "adam", 3e-3)
