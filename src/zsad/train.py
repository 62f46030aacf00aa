"""`python -m zsad.train` and `accelerate launch -m zsad.train`: `zsad train` (defined in
`zsad.commands.train`) under any Accelerate setup, several GPUs included."""

import sys

from zsad.commands.train import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m zsad.train", launcher=["accelerate", "launch", "-m", "zsad.train"]))
