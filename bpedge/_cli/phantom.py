"""``bpedge phantom``: write a synthetic neck-ultrasound dataset in the Kaggle layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import command_errors


def register(app: typer.Typer) -> None:
    @app.command("phantom", epilog="""Examples:

  bpedge phantom --out phantom --subjects 8 --frames 40 --seed 0

  bpedge phantom --out phantom_hd --subjects 2 --frames 10 --height 1080 --width 1920
""")
    @command_errors
    def phantom(
        out: Annotated[
            Path, typer.Option("--out", help="Folder to create (must not exist or be empty; an "
                                     "empty one keeps its mode, owner and group).")
        ],
        subjects: Annotated[
            int, typer.Option("--subjects", help="Number of subjects (videos), 1-10000.")
        ] = 6,
        frames: Annotated[int, typer.Option("--frames", help="Frames per subject, 1-100000.")] = 40,
        seed: Annotated[
            int, typer.Option("--seed", help="Random seed; the same seed gives the same files.")
        ] = 0,
        empty_fraction: Annotated[
            float,
            typer.Option("--empty-fraction", help="Share of each subject's frames without BP."),
        ] = 0.2,
        height: Annotated[
            int, typer.Option("--height", help="Frame height in pixels, 96-4096 (real data: 420).")
        ] = 420,
        width: Annotated[
            int, typer.Option("--width", help="Frame width in pixels, 96-4096 (real data: 580).")
        ] = 580,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
        ] = True,
    ) -> None:
        """Generate a phantom dataset: {subject}_{frame}.tif and {subject}_{frame}_mask.tif, 8-bit
        LZW TIFF, B-mode speckle with tissue layers, vessels, decoys and a brachial plexus."""
        from bpedge.train.data.phantom import PhantomConfig, generate_phantom

        config = PhantomConfig(
            subjects=subjects,
            frames=frames,
            seed=seed,
            height=height,
            width=width,
            empty_fraction=empty_fraction,
        )
        generate_phantom(out, config, progress=progress)
        empty = round(frames * empty_fraction)
        typer.echo(
            f"wrote {subjects * frames} frames of {subjects} subject(s) to {out} "
            f"({subjects * (frames - empty)} with BP, {subjects * empty} empty), seed {seed}"
        )
