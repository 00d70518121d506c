"""autosim-core: learn the sampling distribution of a simulator with AutoSimulate.

What a plugin author needs is importable from here without importing torch.
"""

from .hookspecs import hookimpl, hookspec
from .records import Batch, Example, SceneBatch
from .space import Bernoulli, Bounded, Categorical, LogNormal, Normal, ParameterSpace

__all__ = [
    "Batch", "Bernoulli", "Bounded", "Categorical", "Example", "LogNormal", "Normal",
    "ParameterSpace", "SceneBatch", "hookimpl", "hookspec",
]
__version__ = "0.1.0"
