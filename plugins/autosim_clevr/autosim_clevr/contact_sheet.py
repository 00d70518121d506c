"""Write a grid of sample images (and optionally their masks) from a preset, as one PNG.

    python -m autosim_clevr.contact_sheet --preset target -n 16 --out target.png
"""

from __future__ import annotations

import argparse
import math
from typing import Any

import torch
from PIL import Image

from .params import ClevrSettings, clevr_presets, clevr_space

MASK_COLOURS = torch.tensor([[0, 0, 0], [230, 80, 60], [60, 160, 230], [250, 200, 40]], dtype=torch.uint8)


def sample_records(preset: str | None, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` scene records drawn from a preset's initial psi, with ids and seeds as the core sets them."""
    space = clevr_space()
    if preset:
        presets = clevr_presets()
        if preset not in presets:
            raise SystemExit(f"unknown preset {preset!r}; choose from {', '.join(presets)}")
        space = space.override(presets[preset])
    gen = torch.Generator().manual_seed(seed)
    records = space.records(space.sample(space.init_psi(), n, gen))
    seeds = torch.randint(0, 2**31 - 1, (n,), generator=gen).tolist()
    for i, (rec, s) in enumerate(zip(records, seeds, strict=True)):
        rec["id"], rec["seed"] = f"{preset or 'default'}-{i}", s
    return records


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray((image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())


def sheet(images: list[Image.Image], columns: int, pad: int = 2) -> Image.Image:
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    out = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        out.paste(im, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return out


def main(argv: list[str] | None = None) -> None:
    from .plugin import render_records

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="target")
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", type=int, nargs=2, default=(80, 120), metavar=("H", "W"),
                    help="size of each tile (the rendered image is resized to it)")
    ap.add_argument("--masks", action="store_true", help="show each image's class mask beside it")
    ap.add_argument("--backend", choices=("fast", "cycles"), default="fast")
    args = ap.parse_args(argv)
    settings = ClevrSettings(backend=args.backend, output_size=tuple(args.size))
    examples = render_records(sample_records(args.preset, args.n, args.seed), settings)
    tiles = []
    for ex in examples:
        tiles.append(to_pil(ex.image))
        if args.masks:
            tiles.append(Image.fromarray(MASK_COLOURS[ex.mask].numpy()))
    columns = 2 * math.ceil(math.sqrt(args.n)) if args.masks else math.ceil(math.sqrt(args.n))
    sheet(tiles, columns).save(args.out, optimize=True)
    print(f"wrote {args.out} ({len(examples)} samples of preset {args.preset!r})")


if __name__ == "__main__":
    main()
