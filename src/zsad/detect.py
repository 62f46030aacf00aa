"""`python -m zsad.detect`: `zsad detect` as a module, for launchers that start modules.

`accelerate launch -m zsad.detect ...` (or `torchrun -m zsad.detect ...`) runs it on several processes, GPUs or
machines: the inputs are shared out, and the main process writes one output folder equal to that of a
single-process run (docs/benchmarks.md, "Past one process").
"""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(["detect", *sys.argv[1:]]))
