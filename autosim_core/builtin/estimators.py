"""The built-in estimators' entry points: ``quadratic``, ``approx-quadratic``, ``linear`` and
``no-val``. Settings and ``needs_validation`` answer at once; ``estimate_hypergrad`` imports
``autosim_core.estimators`` (torch) on first call and hands the problem to its plugin object."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel

from ..builtin_settings import ApproxQuadraticSettings, EstimatorSettings, QuadraticSettings
from ..hookspecs import hookimpl

if TYPE_CHECKING:
    from ..contracts import Hypergrad, HypergradProblem


class QuadraticEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return QuadraticSettings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem, settings: QuadraticSettings) -> Hypergrad:
        from ..estimators import quadratic_plugin

        return quadratic_plugin.estimate_hypergrad(problem=problem, settings=settings)


class ApproxQuadraticEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return ApproxQuadraticSettings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem, settings: ApproxQuadraticSettings) -> Hypergrad:
        from ..estimators import approx_quadratic_plugin

        return approx_quadratic_plugin.estimate_hypergrad(problem=problem, settings=settings)


class LinearEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return EstimatorSettings

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        from ..estimators import linear_plugin

        return linear_plugin.estimate_hypergrad(problem=problem)


class NoValEstimator:
    @hookimpl
    def estimator_settings_model(self) -> type[BaseModel]:
        return EstimatorSettings

    @hookimpl
    def needs_validation(self) -> bool:
        return False

    @hookimpl
    def estimate_hypergrad(self, problem: HypergradProblem) -> Hypergrad:
        from ..estimators import no_val_plugin

        return no_val_plugin.estimate_hypergrad(problem=problem)


quadratic_plugin = QuadraticEstimator()
approx_quadratic_plugin = ApproxQuadraticEstimator()
linear_plugin = LinearEstimator()
no_val_plugin = NoValEstimator()
