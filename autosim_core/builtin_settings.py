"""The settings models of the core's built-in plugins (searchers, estimators, the toy simulator
and task): pydantic only, so that the light entry-point modules of ``autosim_core.builtin``
and the implementations (``searchers``, ``blackbox``, ``estimators``, ``toy``) share one class
per table without either importing the other. Each implementation module re-exports its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .space import Floors

if TYPE_CHECKING:
    from .hypergrad import Baseline


# ------------------------------------------------------------------------ searchers ---
class AutoSimulateSettings(BaseModel):
    """AutoSimulate (Algorithm 1): K scenes per iteration, fine-tune, hypergradient step on psi."""

    model_config = ConfigDict(extra="forbid")

    scenes_per_iteration: int = Field(32, ge=2, description="K: scenes rendered per iteration")
    optimizer: Literal["adam", "sgd"] = Field("adam", description="optimiser of psi (the step on the hypergradient)")
    lr: float = Field(0.05, gt=0, description="step size of the psi optimiser")
    step_units: Literal["raw", "scaled"] = Field(
        "scaled", description="raw: lr in each psi coordinate's own units; scaled: a Gaussian-latent family's "
                              "centre steps lr times its starting std (spreads and logits are unitless)")
    max_grad_norm: float | None = Field(None, gt=0, description="clip the hypergradient's norm")
    # -- variance of the hypergradient --------------------------------------------------------
    baseline: Literal["auto", "mean", "loo", "none"] = Field(
        "auto", description="score-function baseline: batch mean, leave-one-out mean, or none; "
                            "auto = loo with iid sampling, none with sobol")
    sampling: Literal["iid", "sobol"] = Field(
        "sobol", description="scene latents drawn independently or from a scrambled Sobol sequence")
    reuse_iterations: int = Field(
        3, ge=0, description="also score the scenes of this many previous iterations, importance-weighted")
    reuse_clip: float = Field(5.0, ge=1, description="importance ratios q_psi / q_psi_old are clipped here")
    pathwise: bool = Field(
        False, description="the coordinates of the parameters the simulator differentiates its renders in "
                           "(its render_differentiable hook) get the pathwise estimate, through the renderer; "
                           "the others keep the score function")
    # -- cost of the hypergradient ------------------------------------------------------------
    c_k: Literal["auto", "jvp", "central-difference"] = Field(
        "auto", description="c_k = grad_theta l_k . v by one jvp (exact), by a central difference of the losses "
                            "(two forward passes, half the jvp's cost on CPU), or auto: the central difference, "
                            "checked against the jvp on the first iteration and every 10th, the jvp for good once "
                            "it errs by more than 0.1 standard errors of the hypergradient")
    gradient_validation: int | None = Field(
        None, ge=1, description="grad_theta L_val from this many validation images, a seeded random subset drawn "
                                "anew each iteration (the scores still use all); None = all of them")
    curvature_scenes: int | None = Field(
        None, ge=1, description="the quadratic estimators' curvature products (Hessian or Gauss-Newton) over this "
                                "many of the iteration's scenes, a seeded random subset drawn anew each iteration "
                                "(c_k and the score-function sum still over all); None = all of them")
    warn_below_noise: int = Field(
        5, ge=0, description="warn (history row and progress line) when the hypergradient's norm stays below its "
                             "standard error this many iterations in a row; 0 = never")
    # -- the step on psi ----------------------------------------------------------------------
    natural_gradient: bool = Field(
        False, description="precondition the hypergradient by the inverse Fisher information of q_psi")
    max_kl: float | None = Field(
        None, gt=0, description="trust region: KL(q_psi_old || q_psi_new) of one scene at most this")
    min_prob_ratio: float = Field(
        0.1, ge=0, lt=1, description="each categorical choice keeps probability >= this / n_choices")
    min_entropy_ratio: float = Field(
        0.0, ge=0, lt=1, description="categorical / Bernoulli entropy >= this fraction of its maximum")
    min_std_ratio: float = Field(
        0.25, ge=0, le=1, description="Gaussian-latent std >= this fraction of the starting std")

    @model_validator(mode="after")
    def _sobol_without_batch_baseline(self) -> AutoSimulateSettings:
        if self.sampling == "sobol" and self.baseline in ("mean", "loo"):
            raise ValueError(f"baseline {self.baseline!r} with sampling 'sobol' biases the hypergradient (the "
                             "scenes of a stratified batch are correlated); use baseline 'none' or 'auto'")
        return self

    def resolved_baseline(self) -> Baseline:
        if self.baseline == "auto":
            return "none" if self.sampling == "sobol" else "loo"
        return self.baseline

    def floors(self) -> Floors:
        return Floors(min_prob_ratio=self.min_prob_ratio, min_entropy_ratio=self.min_entropy_ratio,
                      min_std_ratio=self.min_std_ratio)


class FixedSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenes_per_iteration: int = Field(32, ge=1, description="scenes rendered per iteration")


class BlackBoxSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scenes_per_evaluation: int = Field(96, ge=1, description="N: images rendered for one objective evaluation")
    epochs: int | None = Field(None, ge=1,
                               description="epochs a fresh model trains on them (default: [training].epochs)")
    spreads: bool = Field(True, description="search the spread of the Gaussian families too, not only their centre")
    categoricals: Literal["mix", "choice"] = Field(
        "mix", description="a categorical is searched as a mix (a weight per choice, any probabilities) "
                           "or as one favoured choice (which gets choice_weight)")
    choice_weight: float = Field(0.85, gt=0, lt=1,
                                 description="probability of the favoured choice of a categorical (categoricals = "
                                             "'choice')")


class RandomSettings(BlackBoxSettings):
    batch: int = Field(4, ge=1, description="points drawn at a time (evaluable in parallel)")


class BayesianSettings(BlackBoxSettings):
    init_points: int = Field(5, ge=1, description="random points before the Gaussian process guides the search")
    acquisition: Literal["ucb", "ei", "poi"] = Field(
        "ucb", description="upper confidence bound, expected improvement or probability of improvement")
    kappa: float = Field(2.576, gt=0, description="exploration weight of ucb")
    xi: float = Field(0.01, ge=0, description="exploration margin of ei and poi")


class ReinforceSettings(BlackBoxSettings):
    batch: int = Field(4, ge=2, description="evaluations per policy step")
    sigma: float = Field(0.15, gt=0, description="std of the Gaussian policy, in units of each coordinate's range")
    lr: float = Field(0.05, gt=0, description="Adam's step size on the policy")
    baseline_decay: float = Field(0.8, ge=0, lt=1, description="weight of the old value in the moving-average baseline")


# ----------------------------------------------------------------------- estimators ---
Curvature = Literal["hessian", "gauss-newton"]
CURVATURE_HELP = ("H: the training loss's Hessian, or its Gauss-Newton matrix J^T H_out J (one jvp and one vjp "
                  "per product, positive semi-definite)")


class EstimatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class QuadraticSettings(EstimatorSettings):
    damping: float = Field(0.01, ge=0, description="Levenberg damping lambda added to H")
    max_iter: int = Field(10, ge=1, description="conjugate-gradient iterations at most")
    tol: float = Field(1e-4, gt=0, description="relative residual at which CG stops")
    curvature: Curvature = Field("hessian", description=CURVATURE_HELP)


class ApproxQuadraticSettings(EstimatorSettings):
    damping: float = Field(0.0, ge=0, description="lambda in v = (H + lambda I) g_val")
    curvature: Curvature = Field("hessian", description=CURVATURE_HELP)


# ------------------------------------------------------------------ toy simulator, task ---
class ToySimulatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ToyTaskSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    hidden: int = Field(0, ge=0, description="hidden units of the MLP; 0 = logistic regression")
