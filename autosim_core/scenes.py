"""Scenes of a run: sampled from q_psi in the run's process, rendered on the executor, collated
for the task, and scored under q_psi (``log_prob``).

Scenes and their render seeds are drawn here, so the images never depend on the executor or on
which worker renders which scene.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pluggy
import torch
from pydantic import BaseModel

from .cache import load_set, set_key, source_fingerprint, store_set
from .config import Data
from .config import Executor as ExecutorSettings
from .contracts import Sampler
from .executors import ExampleCountError, Executor, RenderError, SimulatorRef, make_executor, plugin_target
from .records import Batch, Example, SceneBatch
from .space import ParameterSpace, Psi

PROBED_FROM = 4096
"""Batches of at least this many scenes are checked against the free memory before they are
rendered (one scene is rendered to learn the size of an example)."""


class MemoryBudgetError(ValueError):
    """A batch of scenes would need more memory than is free (one line)."""


def free_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux's ``MemAvailable``; None elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def example_bytes(value: Any) -> int:
    """Bytes of the tensors and arrays an example (or a record, a list, a dict) holds."""
    if isinstance(value, Example):
        value = vars(value)
    if isinstance(value, dict):
        return sys.getsizeof(value) + sum(example_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sys.getsizeof(value) + sum(example_bytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    nbytes = getattr(value, "nbytes", None)
    return int(nbytes) if isinstance(nbytes, int) else sys.getsizeof(value)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1024
    return f"{n:.1f} TiB"


class Scenes:
    """Sampling, rendering and collating for one run's simulator and task."""

    def __init__(self, pm: pluggy.PluginManager, *, simulator: str, simulator_settings: Any, task_settings: Any,
                 executor: ExecutorSettings, simulator_target: str | None, device: torch.device,
                 on_retry: Callable[[dict[str, Any]], None], resume_hint: Callable[[], str]):
        self.pm = pm
        self.simulator = simulator
        self.simulator_settings = simulator_settings
        self.task_settings = task_settings
        self.executor_settings = executor
        self.simulator_target = simulator_target
        self.device = device
        self.on_retry = on_retry
        self.resume_hint = resume_hint
        self._executor: Executor | None = None
        self._source: str | None = None

    def sample(self, space: ParameterSpace, psi: Psi, count: int, generator: torch.Generator,
               ids: list[Any], sampler: Sampler | None = None) -> SceneBatch:
        """``count`` scenes from q_psi (by the simulator's ``sample`` hook unless a ``sampler`` is
        given), each record given its ``id`` and render ``seed``."""
        scenes: SceneBatch = (sampler(space, psi, count, generator) if sampler is not None else
                              self.pm.hook.sample(space=space, psi=psi, count=count, generator=generator))
        seeds = torch.randint(0, 2**31 - 1, (len(scenes),), generator=generator).tolist()
        for record, scene_id, seed in zip(scenes.records, ids, seeds, strict=True):
            record["id"] = scene_id
            record["seed"] = seed
        return scenes

    def render(self, records: list[dict[str, Any]]) -> list[Example]:
        """Render sampled scene records on the executor (retrying failed workers)."""
        try:
            return self.executor.render(records, self.simulator_ref(), self._render_here, on_retry=self.on_retry)
        except RenderError as exc:
            raise RenderError(f"{exc}; {self.resume_hint()}", exc.scene, exc.attempts, exc.reason) from exc.__cause__
        except ExampleCountError as exc:
            raise RuntimeError(f"simulator {self.simulator!r} returned {exc.returned} examples for "
                               f"{exc.scenes} scenes") from None

    def render_differentiable(self, records: list[dict[str, Any]], values: dict[str, torch.Tensor]) -> Batch:
        """Records rendered in this process by the simulator's ``render_differentiable`` hook and
        collated: the batch's inputs carry autograd to ``values``."""
        examples = self.pm.hook.render_differentiable(scenes=records, values=values,
                                                      settings=self.simulator_settings)
        if examples is None or len(examples) != len(records):
            raise RuntimeError(f"simulator {self.simulator!r} returned "
                               f"{'no' if examples is None else len(examples)} differentiable examples for "
                               f"{len(records)} scenes")
        return self.collate(examples)

    def check_memory(self, counts: dict[str, int], space: ParameterSpace, psi: Psi) -> None:
        """Raises ``MemoryBudgetError`` when a batch of ``counts[key]`` scenes (the examples, then
        their collated batch: twice the examples' bytes) would not fit in the free memory. One
        scene, from a generator of its own, is rendered to learn an example's size; batches
        under ``PROBED_FROM`` scenes are not checked."""
        big = {key: count for key, count in counts.items() if count >= PROBED_FROM}
        free = free_memory() if big else None
        if free is None:
            return
        records = self.sample(space, psi, 1, torch.Generator().manual_seed(0), [-1]).records
        each = example_bytes(self.render(records)[0]) + example_bytes(records[0])
        over = [f"{key} = {count} needs about {_size(2 * count * each)}" for key, count in big.items()
                if 2 * count * each > free]
        if over:
            them = "it" if len(over) == 1 else "them"
            raise MemoryBudgetError(f"{'; '.join(over)} of memory ({_size(each)} an example, twice: the examples "
                                    f"and their batch), but {_size(free)} is free; lower {them}")

    def _render_here(self, records: list[dict[str, Any]]) -> list[Example]:
        return self.pm.hook.render(scenes=records, settings=self.simulator_settings)

    @property
    def executor(self) -> Executor:
        """Where scenes are rendered (``[executor]``); started on first use."""
        if self._executor is None:
            self._executor = make_executor(self.executor_settings)
        return self._executor

    def simulator_ref(self) -> SimulatorRef | None:
        """How a worker process imports the simulator (None for the inline executor)."""
        if self.executor_settings.kind == "inline":
            return None
        target = self.simulator_target or plugin_target(self.pm.get_plugin("simulator"))
        if target is None:
            raise ValueError(f"executor.kind: simulator {self.simulator!r} cannot be imported by worker processes "
                             "(it is no module-level object); use kind = 'inline'")
        settings = self.simulator_settings
        data = settings.model_dump(mode="json") if isinstance(settings, BaseModel) else settings
        return SimulatorRef(self.simulator, target, data, tuple(sys.path))

    def close(self) -> None:
        """Stops the executor's workers (a later render starts them again)."""
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def collate(self, examples: list[Example]) -> Batch:
        return self.pm.hook.collate(examples=examples, settings=self.task_settings).to(self.device)

    def log_prob(self, space: ParameterSpace, psi: Psi, scenes: SceneBatch) -> torch.Tensor:
        return self.pm.hook.log_prob(space=space, psi=psi, scenes=scenes)

    def simulator_source(self) -> str:
        """A hash of the simulator's source (``autosim_core.cache.source_fingerprint``): part
        of the cache key, so that an edited renderer never meets the sets its old code rendered."""
        if self._source is None:
            plugin = self.pm.get_plugin("simulator")
            functions = [impl.function for caller in (self.pm.get_hookcallers(plugin) or [])
                         for impl in caller.get_hookimpls() if impl.plugin_name == "simulator"]
            self._source = source_fingerprint(plugin, functions)
        return self._source

    def evaluation_set(self, key: str, data: Data, space: ParameterSpace, cache_dir: Path, simulator_version: str,
                       settings: Any) -> list[Example]:
        """The examples of a validation or test set rendered from ``space``: from the cache, else
        rendered (ids ``key-0``, ``key-1``, ... from the set's own seed) and cached."""
        entry = set_key(cache_dir, simulator=self.simulator, key=key, simulator_version=simulator_version,
                        simulator_source=self.simulator_source(), settings=settings, space=space.to_dict(),
                        count=data.count, seed=data.seed)
        examples = load_set(entry)
        if examples is None:
            generator = torch.Generator().manual_seed(data.seed)
            ids = [f"{key}-{i}" for i in range(data.count)]
            examples = self.render(self.sample(space, space.init_psi(), data.count, generator, ids).records)
            store_set(entry, examples)
        return examples
