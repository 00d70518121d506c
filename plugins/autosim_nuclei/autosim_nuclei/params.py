"""The ``nuclei`` simulator's settings, parameter space and presets (no torch: the entry point stays light).

Intensities are in the units real images have after the loader's percentile normalisation (the
image's 1st percentile at 0, its 99.8th at 1), so rendered and real tiles share one scale.
"""

from __future__ import annotations

from typing import Any

from autosim_core import Bounded, LogNormal, ParameterSpace
from pydantic import BaseModel, ConfigDict, Field


class NucleiSettings(BaseModel):
    """``[simulator.settings]`` of the ``nuclei`` simulator."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(64, ge=16, le=512, description="side of a square tile in pixels")
    channels: int = Field(1, ge=1, le=3, description="image channels: 1 (grey, as fluorescence is) or 3 (the grey "
                          "tile repeated, for a task that takes RGB)")
    texture_scale: float = Field(1.5, gt=0, description="correlation length in pixels of the nuclei's internal "
                                 "texture (chromatin), the Gaussian that smooths its white noise")
    boundary: bool = Field(False, description="label each nucleus's outline as a class of its own (labels "
                           "'nucleus', 'boundary'), so that touching nuclei are parted in the mask; a real "
                           "instance mask is read the same way with the UNet task's masks = 'boundaries'")


def parameter_space(settings: NucleiSettings) -> ParameterSpace:
    """Each parameter is drawn once per tile; each nucleus of the tile then varies about it by the
    spreads. The declared values are the ``initial`` preset: a hand-set guess for a 64 px tile of a
    fluorescence image of nuclei at unknown magnification."""
    n = settings.size
    return ParameterSpace(
        count=LogNormal(median=4.0 * (n / 64) ** 2, std=0.4, low=0.0, high=60.0 * (n / 64) ** 2),  # nuclei per tile
        radius=LogNormal(median=8.0, std=0.15, low=2.0, high=n / 3),        # px: radius of the nucleus's area
        radius_spread=Bounded(low=0.0, high=0.6, mean=0.15, std=0.3),        # log-std of the radii in a tile
        elongation=Bounded(low=1.0, high=3.0, mean=1.3, std=0.3),            # major / minor axis
        orientation=Bounded(low=0.0, high=180.0, mean=90.0, std=0.3),       # degrees: the tile's mean major axis
        orientation_spread=Bounded(low=0.0, high=1.0, mean=0.9, std=0.3),  # 1: isotropic, 0: all along it
        brightness=LogNormal(median=0.5, std=0.2, low=0.01, high=1.5),      # mean nucleus intensity above background
        brightness_spread=Bounded(low=0.0, high=1.0, mean=0.2, std=0.3),    # log-std of nuclei brightness in a tile
        texture=Bounded(low=0.0, high=1.0, mean=0.2, std=0.3),              # internal texture, relative amplitude
        background=Bounded(low=0.0, high=0.5, mean=0.05, std=0.3),          # background level
        gradient=Bounded(low=0.0, high=0.3, mean=0.02, std=0.3),            # background ramp across the tile
        blur=Bounded(low=0.0, high=4.0, mean=1.0, std=0.3),                 # px: Gaussian PSF sigma
        photons=LogNormal(median=200.0, std=0.3, low=1.0, high=1e5),        # photons at intensity 1 (shot noise)
        read_noise=Bounded(low=0.0, high=0.2, mean=0.02, std=0.3),          # Gaussian read noise std
        levels=LogNormal(median=1000.0, std=0.3, low=8.0, high=65535.0),    # grey levels from 0 to 1 (bit depth)
    )


def presets(settings: NucleiSettings) -> dict[str, dict[str, dict[str, Any]]]:
    """``initial``: the space as declared (the hand-set guess). ``wide``: broad domain randomisation,
    every knob spread over its plausible range (latent std 1.0-1.5 about mid-range centres)."""
    n = settings.size
    return {
        "initial": {},
        "wide": {
            "count": {"median": 5.0 * (n / 64) ** 2, "std": 0.8},
            "radius": {"median": 9.0, "std": 0.45},
            "radius_spread": {"mean": 0.2, "std": 1.0},
            "elongation": {"mean": 1.5, "std": 1.0},
            "orientation": {"mean": 90.0, "std": 1.5},
            "orientation_spread": {"mean": 0.7, "std": 1.2},
            "brightness": {"median": 0.4, "std": 0.7},
            "brightness_spread": {"mean": 0.3, "std": 1.0},
            "texture": {"mean": 0.3, "std": 1.2},
            "background": {"mean": 0.1, "std": 1.2},
            "gradient": {"mean": 0.05, "std": 1.2},
            "blur": {"mean": 1.2, "std": 1.2},
            "photons": {"median": 150.0, "std": 1.2},
            "read_noise": {"mean": 0.03, "std": 1.2},
            "levels": {"median": 256.0, "std": 1.5},
        },
    }


def labels(settings: NucleiSettings) -> list[str]:
    """Mask ids 1, 2, ...: the nucleus (its interior, with ``boundary``) and, with ``boundary``, its outline."""
    return ["nucleus", "boundary"] if settings.boundary else ["nucleus"]
