"""Hook specifications: everything a simulator, task or estimator plugin can provide.

A run registers exactly one simulator, one task and one estimator in one plugin manager, next
to the core's defaults (registered last, so a plugin's implementation wins). Hooks marked
"first result" return the first non-None answer. ``settings`` is always the plugin's own
settings from the run's config: an instance of the model its ``*_settings_model`` hook returns,
or a plain dict when it declares none. A hook implementation may omit any argument it does not
use (pluggy passes arguments by name).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch
    from pydantic import BaseModel

    from .contracts import Hypergrad, HypergradProblem
    from .records import Batch, Example, SceneBatch
    from .space import ParameterSpace, Psi

PROJECT = "autosim"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------- simulator ---
@hookspec(firstresult=True)
def simulator_settings_model() -> type[BaseModel] | None:
    """The pydantic model of the simulator's ``[simulator.settings]`` table (optional).

    Unknown keys and bad values in the config are then reported before any work starts.
    """


@hookspec(firstresult=True)
def parameter_space(settings: Any) -> ParameterSpace:
    """The simulator's parameter space with its default initial values (required)."""


@hookspec(firstresult=True)
def labels(settings: Any) -> list[str] | None:
    """The simulator's object classes, in id order (optional): ``["sphere", "cube", ...]``.

    The convention every task follows: a rendered ``Example.mask`` marks object class
    ``labels[i]`` with id ``i + 1`` and background with 0 (a segmentation task has
    ``len(labels) + 1`` classes); an object's ``category`` in ``Example.objects`` is one of
    these names (a detection task's class ``i`` is ``labels[i]``); an ``Example.label`` is an
    index ``0 .. len(labels) - 1``. Tasks size their heads and name their metrics from it
    (``apply_labels``) unless their own settings say otherwise. None: no declared classes.
    """


@hookspec(firstresult=True)
def presets(settings: Any) -> dict[str, dict[str, dict[str, Any]]] | None:
    """Named variants of the space: ``{"target": {"light": {"mean": 2.0}}, ...}`` (optional).

    Each preset is a set of changes applied with ``ParameterSpace.override``. Configs start
    psi from a preset (``simulator.start``) and render validation/test data from one.
    """


@hookspec(firstresult=True)
def sample(space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator) -> SceneBatch:
    """Draw ``count`` scenes from q_psi. The core's default samples every parameter of
    ``space`` independently; override it for structured sampling (and ``log_prob`` with it).
    The core adds ``id`` and ``seed`` to each record afterwards."""


@hookspec(firstresult=True)
def log_prob(space: ParameterSpace, psi: Psi, scenes: SceneBatch) -> torch.Tensor:
    """log q_psi(s_k) of each sampled scene, shape (K,), differentiable with respect to psi."""


@hookspec(firstresult=True)
def render(scenes: list[dict[str, Any]], settings: Any) -> list[Example]:
    """Render scene records into examples, one per scene and in order (required).

    Must be deterministic for a given record (use ``scene["seed"]`` for any noise). Raise an
    exception naming ``scene["id"]`` when a scene cannot be rendered.
    """


@hookspec(firstresult=True)
def differentiable_parameters(settings: Any) -> list[str] | None:
    """Names of the continuous parameters whose values ``render_differentiable`` differentiates
    (optional, with it). Each must be a parameter of a continuous family (normal, log-normal or
    bounded, not integer) whose value changes the image smoothly: a light's strength, a colour,
    not a position whose edge moves across pixels (a discontinuity the derivative cannot see).
    """


@hookspec(firstresult=True)
def render_differentiable(scenes: list[dict[str, Any]], values: dict[str, torch.Tensor],
                          settings: Any) -> list[Example]:
    """Render ``scenes`` as ``render`` does, with the values of the parameters named by
    ``differentiable_parameters`` taken from ``values`` (optional; ``autosimulate``'s
    ``pathwise`` option needs it).

    ``values[name]`` is a float tensor of shape (len(scenes), repeat) equal to the records'
    values of that parameter, requiring grad; the examples' images must be the same as
    ``render``'s and carry autograd to those tensors (the derivative of the image at the scene's
    own seed). Runs in the run's process, on the scenes of one iteration.
    """


# --------------------------------------------------------------------------------- task ---
@hookspec(firstresult=True)
def task_settings_model() -> type[BaseModel] | None:
    """The pydantic model of the task's ``[task.settings]`` table (optional)."""


@hookspec(firstresult=True)
def apply_labels(settings: Any, labels: list[str]) -> Any:
    """The task's settings adapted to the simulator's declared ``labels`` (optional).

    Called once per run, after ``[task.settings]`` is validated and only when the simulator's
    ``labels`` hook declares classes; the result replaces the settings every other task hook
    receives. Settings the user gave explicitly win (a pydantic model's ``model_fields_set``
    says which). Raise ``ValueError`` for labels the settings cannot take; the run reports it
    as a config error. A task without this hook keeps its settings as they are.
    """


@hookspec(firstresult=True)
def create_model(settings: Any) -> torch.nn.Module:
    """A freshly initialised model (required). The core seeds torch's RNG before calling.

    Parameters with ``requires_grad=False`` are frozen: they are excluded from theta for
    training, Hessian-vector products and the hypergradient. ``model(batch.inputs)`` must be
    the forward pass. Use GroupNorm, or BatchNorm only in eval mode: torch.func transforms
    (used for HVPs and per-sample directional derivatives) fail on BatchNorm in train mode.
    """


@hookspec(firstresult=True)
def collate(examples: list[Example], settings: Any) -> Batch:
    """Stack examples into a ``Batch`` of model inputs and loss targets (required)."""


@hookspec(firstresult=True)
def loss(outputs: Any, targets: Any, settings: Any) -> torch.Tensor:
    """Per-sample losses, shape (K,): one scalar per example (required).

    The training objective is their mean. Must be written with torch operations only (no
    ``.item()``, no in-place updates of inputs) so that torch.func can transform it.
    """


@hookspec(firstresult=True)
def evaluate(outputs: Any, targets: Any, settings: Any) -> dict[str, float]:
    """Metrics of a whole evaluation set (required). Must contain ``"metric"``, the number
    searchers maximise (e.g. mean IoU); other keys (per-class scores) are reported as well."""


class MetricAccumulator(Protocol):
    """Metrics of an evaluation set gathered chunk by chunk (see ``metric_accumulator``)."""

    def update(self, outputs: Any, targets: Any) -> None:
        """Take in one chunk: the model's outputs and the chunk's targets."""

    def compute(self) -> dict[str, float]:
        """The metrics of every chunk taken in so far, as ``evaluate`` would report them."""


@hookspec(firstresult=True)
def metric_accumulator(settings: Any) -> MetricAccumulator:
    """A fresh, empty accumulator of the task's metrics (optional).

    The core evaluates a set in chunks of ``training.eval_batch_size`` examples and hands each
    chunk's outputs to ``update``; ``compute`` must then give what ``evaluate`` gives on the
    concatenated outputs. Only what the metric needs is kept (a confusion matrix, a list of
    detections), so large evaluation sets never hold every output at once. Without it, the
    core concatenates the outputs and calls ``evaluate``.
    """


@hookspec(firstresult=True)
def load_dataset(path: str, mask: str | None, settings: Any) -> list[Example]:
    """Examples read from a folder the user gives (real validation/test data), or, when ``mask`` is
    given, from the one image file ``path`` and its label mask file ``mask``. A task that reads no
    such pair leaves ``mask`` out of its arguments; configs giving one are then refused."""


@hookspec(firstresult=True)
def train_step(model: torch.nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[Any, Any], torch.Tensor], settings: Any) -> float:
    """One optimiser step on a minibatch; returns the minibatch's mean loss. The core's
    default: mean of ``loss_fn(model(batch.inputs), batch.targets)``, backward, step."""


@hookspec(firstresult=True)
def hvp(loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        params: dict[str, torch.Tensor], vector: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hessian-vector product of the scalar ``loss_fn`` at ``params`` with ``vector``.
    Without a task's implementation the core uses ``autosim_core.hypergrad.hvp_operator``
    (reverse-over-reverse, one gradient graph per iteration shared by all products)."""


# ---------------------------------------------------------------------------- estimator ---
@hookspec(firstresult=True)
def estimator_settings_model() -> type[BaseModel] | None:
    """The pydantic model of the estimator's ``[estimator.settings]`` table (optional)."""


@hookspec(firstresult=True)
def estimate_hypergrad(problem: HypergradProblem, settings: Any) -> Hypergrad:
    """The hypergradient d L_val / d psi for the current iteration (required)."""


@hookspec(firstresult=True)
def needs_validation(settings: Any) -> bool:
    """Whether the estimator reads the validation set (default True)."""


# ---------------------------------------------------------------------------- observers ---
@hookspec
def on_run_start(run: Any) -> None:
    """A run is about to start its first (or resumed) iteration."""


@hookspec
def on_iteration(run: Any, row: dict[str, Any]) -> None:
    """An iteration ended; ``row`` is what was appended to history.jsonl."""


@hookspec
def on_run_end(run: Any, summary: dict[str, Any]) -> None:
    """A run ended (budget reached); ``summary`` is what was written to summary.json."""


@hookspec
def on_phase(run: Any, phase: str, started: bool) -> None:
    """A timed phase of the run (``render``, ``train``, ``hypergrad``, ``eval``) started
    (``started`` True) or ended. Phases nest: an evaluation may run inside a hypergradient."""


@hookspec
def on_render(run: Any, examples: list[Any]) -> None:
    """An iteration's training examples were rendered (before they are collated). Observers
    that show them must copy what they need now: the run keeps no reference to the list."""
