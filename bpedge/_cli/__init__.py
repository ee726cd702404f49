"""The ``bpedge`` command line (typer). Each command lives in its own module and imports heavy
dependencies (torch, tensorrt) inside the command, so ``bpedge --help`` works with the runtime only."""
