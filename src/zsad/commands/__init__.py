"""The `zsad` subcommands, one module each (as `transformers/cli/` and `huggingface_hub/cli/` lay theirs out).

Each module defines `register(subparsers)`, which adds its parser, and the `run(args)` that the parser
calls; `convert` and `train` parse their own options in `main(argv)` (their parsers need the data and
training stacks). `common` holds what they share: the error contract, flag types, the output-folder
guard, the device choice and the Hub check; `loading` finds and loads the model a command runs.
`zsad.cli` collects them. Building a parser imports neither torch nor transformers.
"""
