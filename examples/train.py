#!/usr/bin/env python
"""Train a zsad method's adapters with Accelerate, on a CPU, one GPU or many:

    accelerate launch examples/train.py --method anomalyclip --dataset data/visa --output_dir out/anomalyclip-visa

The training loop is the installed module `zsad/train.py` (read it there), so the same run is
`zsad train ...` in one process, or `accelerate launch -m zsad.train ...` without a clone of the
repository. `--help` lists the options; docs/training.md explains them.
"""

import sys

from zsad.train import main

if __name__ == "__main__":
    sys.exit(main())
