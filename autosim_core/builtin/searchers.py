"""The built-in searchers' entry points: ``autosimulate``, ``fixed``, ``random``, ``bayesian``
and ``reinforce``.

Each class carries what a run reads before it starts (``settings_model``, ``uses_estimator``,
``requires_validation``, ``missing_requirements()``, ``plugin_problems()``); constructing it, ``cls(run, settings)``,
imports the implementation named by ``implementation`` and returns an instance of that class.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any, ClassVar

from pydantic import BaseModel

from ..builtin_settings import (
    AutoSimulateSettings,
    BayesianSettings,
    FixedSettings,
    RandomSettings,
    ReinforceSettings,
)


class LightSearcher:
    """A searcher class whose construction imports and constructs ``implementation``."""

    implementation: ClassVar[str]
    """``module:Class`` of the searcher this one stands for."""
    settings_model: ClassVar[type[BaseModel] | None] = None
    uses_estimator: ClassVar[bool] = True
    requires_validation: ClassVar[bool] = False
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    """(module, distribution) pairs the implementation imports."""

    def __new__(cls, run: Any, settings: Any) -> Any:
        return cls.load()(run, settings)

    @classmethod
    def load(cls) -> type:
        module, _, name = cls.implementation.partition(":")
        found: type = getattr(importlib.import_module(module), name)
        return found

    @classmethod
    def missing_requirements(cls) -> list[str]:
        return [dist for module, dist in cls.requires if importlib.util.find_spec(module) is None]


class AutoSimulate(LightSearcher):
    implementation = "autosim_core.searchers:AutoSimulate"
    settings_model = AutoSimulateSettings

    @classmethod
    def plugin_problems(cls, settings: AutoSimulateSettings, *args: Any) -> list[str]:
        """What in ``settings`` the run's simulator cannot do (the implementation's check)."""
        return cls.load().plugin_problems(settings, *args) if settings.pathwise else []


class Fixed(LightSearcher):
    implementation = "autosim_core.searchers:Fixed"
    settings_model = FixedSettings
    uses_estimator = False


class RandomSearch(LightSearcher):
    implementation = "autosim_core.blackbox:RandomSearch"
    settings_model = RandomSettings
    uses_estimator = False
    requires_validation = True
    requires = (("sklearn", "scikit-learn"), ("scipy", "scipy"))


class BayesianSearch(LightSearcher):
    implementation = "autosim_core.blackbox:BayesianSearch"
    settings_model = BayesianSettings
    uses_estimator = False
    requires_validation = True
    requires = (("bayes_opt", "bayesian-optimization"),)


class Reinforce(LightSearcher):
    implementation = "autosim_core.blackbox:Reinforce"
    settings_model = ReinforceSettings
    uses_estimator = False
    requires_validation = True
