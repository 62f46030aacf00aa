"""`zsad demo`: a Gradio web app around a model (upload -> score, heat map, threshold slider; docs/inference.md)."""

from __future__ import annotations

import argparse
import os

from ..hub.released.registry import default_model_name
from .common import CommandError, positive_int, resolve_device
from .loading import add_model_options, check_sources, load_detector


def run(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError as error:
        raise CommandError(f"zsad demo needs the demo extra: pip install 'zsad[demo]' ({error})") from error
    examples = [os.fspath(path) for path in args.examples or []]
    missing = [path for path in examples if not os.path.isfile(path)]
    if missing:
        raise CommandError(f"--examples: no such file {missing[0]}")
    check_sources(args.model, args.backbone)
    model = load_detector(args.model, args.backbone, args.object_name).to(resolve_device(args.device))
    from ..demo import build_demo

    app = build_demo(model, title=f"zsad: {args.model or default_model_name()}", examples=examples,
                     image_size=args.image_size, class_name=args.class_name)
    app.launch(server_name=args.host, server_port=args.port, share=False, inbrowser=False)
    return 0


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "demo",
        help="a web demo of a model (Gradio)",
        description="Start a Gradio app: upload an image (or pick an example) -> the anomaly score, the decision, the "
        "heat-map overlay, the mask at a threshold slider, and the map as a download. Needs the demo extra "
        "(pip install 'zsad[demo]'). examples/space/app.py is the same app as a Hugging Face Space.",
    )
    add_model_options(parser, batches=False)
    parser.add_argument("--class-name", help="the category a class-aware model prompts with (AdaCLIP, zero-shot-clip, winclip)")
    parser.add_argument("--examples", nargs="+", metavar="IMAGE", help="example images shown under the upload box")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=positive_int, default=7860, help="port to serve on (default 7860)")
    parser.set_defaults(func=run)
    return parser
