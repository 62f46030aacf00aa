"""Train a zsad method's adapters with Accelerate (frozen CLIP; each method's reference hyperparameters).

    zsad train --method anomalyclip --dataset data/visa --output-dir out/anomalyclip-visa
    accelerate launch -m zsad.train --method anomalyclip --dataset data/visa --output-dir out/anomalyclip-visa

`zsad train` runs in this one process (CPU or one GPU); `accelerate launch -m zsad.train` (or
`accelerate launch examples/train.py` from a clone) runs the same training on any Accelerate setup,
several GPUs included. Every option is also spelled with underscores (`--output_dir`). Repeat --dataset
to train on several datasets at once (AdaCLIP: --dataset data/mvtec_ad --dataset data/colondb).

The dataset is anything `zsad.data.load_anomaly_dataset` reads (a folder written by `zsad convert`, parquet,
imagefolder, `save_to_disk`, a Hub id). ZSAD trains on the *test* split of an auxiliary dataset, so
`--split test` is the default. Hyperparameters default to the method's reference values.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
from argparse import Namespace
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .common import (
    ArgumentParser,
    CommandError,
    add_output_flags,
    check_hub_access,
    image_size,
    local_path_or_hub_id,
    non_negative_int,
    positive_float,
    positive_int,
    prepare_output_dir,
    run_command,
)

if TYPE_CHECKING:
    from accelerate import Accelerator

HELP = "train a method's adapters in this process (on several GPUs: accelerate launch -m zsad.train)"


def register(subparsers: argparse._SubParsersAction) -> None:
    """List `train` in `zsad --help`; `main` parses its options."""
    subparsers.add_parser("train", add_help=False, help=HELP)


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> Namespace:
    """The training options, with the method's defaults filled in (`prog` names the command in errors)."""
    from ..training import get_model_class, parse_config_overrides, trainable_methods

    parser = ArgumentParser(prog=prog, description=__doc__,
                            fromfile_prefix_chars="@", hyphen_aliases=True)
    parser.add_argument("--method", required=True, help=f"one of: {', '.join(trainable_methods())}")
    parser.add_argument("--backbone", default="openai/clip-vit-large-patch14-336", help="CLIP id or folder")
    parser.add_argument("--dataset", required=True, action="append",
                        help="training data: converted folder, parquet, imagefolder, Hub id; repeat to concatenate several")
    parser.add_argument("--split", default="test", help="split to train on (ZSAD protocol: the test split)")
    parser.add_argument("--categories", nargs="+", help="train on these categories only")
    parser.add_argument("--image_size", type=image_size, help="input size (default: the model's, 518 on ViT-L/14)")
    parser.add_argument("--model_config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="method options (JSON values), e.g. dino_attention=true for Crane+")
    parser.add_argument("--train_batch_size", type=positive_int, help="per device (default: the method's)")
    parser.add_argument("--learning_rate", type=positive_float, help="default: the method's")
    parser.add_argument("--scale_lr", action="store_true", help="multiply the learning rate by the number of processes")
    parser.add_argument("--num_train_epochs", type=positive_int, help="default: the method's")
    parser.add_argument("--max_train_steps", type=positive_int, help="overrides --num_train_epochs")
    parser.add_argument("--gradient_accumulation_steps", type=positive_int, default=1)
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute the vision layers in the backward pass (less memory for methods that train "
                             "through the vision tower, e.g. HeadCLIP, DA-CLIP)")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], help="default: accelerate config")
    parser.add_argument("--checkpointing_steps", type=positive_int, default=500, help="save_state every N optimizer steps")
    parser.add_argument("--checkpoints_total_limit", type=positive_int, help="keep only the N most recent checkpoints")
    parser.add_argument("--resume_from_checkpoint", help="a checkpoint folder, or 'latest'")
    parser.add_argument("--report_to", help="tensorboard, wandb, ... (optional)")
    parser.add_argument("--output_dir", required=True, help="an empty or new folder (see --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train into a non-empty --output_dir: its train_log.jsonl and checkpoints/ are deleted first")
    parser.add_argument("--seed", type=int, help="default: the method's (111)")
    parser.add_argument("--dataloader_num_workers", type=non_negative_int, default=0)
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", help="org/name for --push_to_hub")
    parser.add_argument("--hub_token", help="defaults to the logged-in token")
    add_output_flags(parser)
    args = parser.parse_args(argv)
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    try:
        args.model_class = get_model_class(args.method)
        args.model_config = parse_config_overrides(args.model_config)
    except ValueError as error:
        parser.error(str(error))
    try:
        args.model_class.config_class.check_fields(args.model_config)  # names and types, before any work
    except ValueError as error:
        parser.error(f"--model-config: {error}")
    defaults = args.model_class.config_class.training_defaults
    args.train_batch_size = defaults["batch_size"] if args.train_batch_size is None else args.train_batch_size
    args.num_train_epochs = defaults["num_epochs"] if args.num_train_epochs is None else args.num_train_epochs
    args.seed = defaults["seed"] if args.seed is None else args.seed
    return args


def checkpoint_step(path: str) -> int:
    """The number of a `checkpoints/checkpoint_<n>` folder."""
    return int(os.path.basename(os.path.normpath(path)).rsplit("_", 1)[-1])


def resolve_resume(args: Namespace, checkpoints_dir: str) -> str:
    """The checkpoint folder `--resume_from_checkpoint` names (`latest`: the newest in `checkpoints_dir`)."""
    if args.resume_from_checkpoint != "latest":
        if not os.path.isdir(args.resume_from_checkpoint):
            raise CommandError(f"checkpoint folder not found: {args.resume_from_checkpoint}")
        return args.resume_from_checkpoint
    found = [os.path.join(checkpoints_dir, d) for d in os.listdir(checkpoints_dir)] if os.path.isdir(checkpoints_dir) else []
    if not found:
        raise CommandError(f"--resume_from_checkpoint latest: no checkpoint in {checkpoints_dir}")
    return max(found, key=checkpoint_step)


def save_checkpoint(accelerator: Accelerator, global_step: int, epoch: int) -> str:
    """`save_state` (adapters only) plus the step count the folder number does not tell."""
    saved = accelerator.save_state()
    if accelerator.is_main_process:
        with open(os.path.join(saved, "zsad_training_state.json"), "w") as handle:
            json.dump({"global_step": global_step, "epoch": epoch}, handle)
    return saved


def truncate_log(path: str, global_step: int) -> None:
    """Drop the log lines after the checkpoint a run resumes from, so no step appears twice."""
    if os.path.isfile(path):
        with open(path) as handle:
            kept = [line for line in handle if line.strip() and json.loads(line)["step"] <= global_step]
        with open(path, "w") as handle:
            handle.writelines(kept)


def resume_command(argv: Sequence[str], launcher: Sequence[str]) -> str:
    """The command line that continues this run from its latest checkpoint: `launcher` + `argv` without
    --overwrite, with `--resume_from_checkpoint latest`."""
    argv = list(argv)
    for flag in ("--resume_from_checkpoint", "--resume-from-checkpoint"):
        while flag in argv:
            del argv[argv.index(flag) : argv.index(flag) + 2]
    argv = [a for a in argv if a != "--overwrite"]
    return shlex.join([*launcher, *argv, "--resume_from_checkpoint", "latest"])


def deferred_interrupt() -> dict:
    """Make Ctrl-C and SIGTERM (what schedulers and `timeout` send) stop training at the end of the current
    step (the loop checks `["requested"]`), so the saved state and train_log.jsonl agree; a second signal
    interrupts at once."""
    stop = {"requested": False, "previous": {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}}

    def request(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True

    for signum in stop["previous"]:
        signal.signal(signum, request)
    return stop


def restore_signals(stop: dict) -> None:
    for signum, handler in stop["previous"].items():
        signal.signal(signum, handler)


def main(argv: Sequence[str] | None = None, *, prog: str | None = None,
         launcher: Sequence[str] | None = None) -> int:
    """Train with the options `argv` (default: the command line) under the error contract of
    `zsad.commands.common`; returns the exit status. `prog` names the command in its messages (default: the
    script's file name); `launcher` begins the command printed to resume an interrupted run (default:
    `accelerate launch <script>`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = prog or os.path.basename(sys.argv[0])
    args = parse_args(argv, prog)
    resume = resume_command(argv, ["accelerate", "launch", sys.argv[0]] if launcher is None else launcher)
    return run_command(prog, lambda: train(args, prog=prog, resume=resume), debug=args.debug, verbose=args.verbose)


def train(args: Namespace, *, prog: str, resume: str) -> int | None:
    """The training run of parsed `args`; on Ctrl-C, `prog` and the `resume` command go into the message."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from torch.utils.data import DataLoader
    from ..progress import progress as progress_bar

    from ..clip.processing import ZSADImageProcessor
    from ..data import collate_fn, load_anomaly_datasets, with_anomaly_transform
    from ..hub.model_card import write_model_card
    from ..training import (
        EpochShuffleSampler,
        build_optimizer,
        model_inputs,
        register_adapter_checkpointing,
        scaled_learning_rate,
        warn_if_image_level_only,
    )

    checkpoints_dir = os.path.join(args.output_dir, "checkpoints")
    prepare_output_dir(args.output_dir, flag="--output_dir", overwrite=args.overwrite,
                       resume=bool(args.resume_from_checkpoint), resume_flag="--resume_from_checkpoint latest")
    args.backbone = local_path_or_hub_id(args.backbone, "--backbone")
    check_hub_access(args.backbone, what="CLIP backbone", flag="--backbone")
    log_path = os.path.join(args.output_dir, "train_log.jsonl")
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to,
        project_config=ProjectConfiguration(project_dir=args.output_dir, automatic_checkpoint_naming=True,
                                            total_limit=args.checkpoints_total_limit),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if args.verbose else logging.WARNING)
    set_seed(args.seed)

    # Data: one schema, preprocessed lazily; the order is a function of (seed, epoch) only.
    with accelerator.main_process_first():
        dataset = load_anomaly_datasets(args.dataset, split=args.split, categories=args.categories)
    say = functools.partial(accelerator.print, file=sys.stderr)  # zsad's own lines; the libraries' INFO needs --verbose
    say(f"training on {len(dataset)} images from {' + '.join(args.dataset)}")
    warn_if_image_level_only(dataset)

    # Model: frozen CLIP + fresh adapters. Only the adapters reach the optimizer.
    config_kwargs = dict(args.model_config, **({"image_size": args.image_size} if args.image_size else {}))
    if args.model_class.class_aware:  # prompts name each image's category (AdaCLIP)
        config_kwargs["class_names"] = sorted(set(dataset["category"]))
    if args.model_class.domain_aware and "domain_names" not in config_kwargs:  # DA-CLIP's routing loss
        config_kwargs["domain_names"] = sorted(set(dataset["domain" if "domain" in dataset.column_names else "dataset"]))
        say(f"training domains: {', '.join(config_kwargs['domain_names'])}")
    model = args.model_class.from_backbone(args.backbone, **config_kwargs)
    if args.gradient_checkpointing:  # the new name from transformers 5.24 on, the old one before
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
    optimizer = build_optimizer(model, learning_rate=scaled_learning_rate(model, args.learning_rate, args.scale_lr,
                                                                          accelerator.num_processes))
    say(f"{args.method}: {model.num_trainable_parameters():,} trainable parameters on {args.backbone}")
    dataset = with_anomaly_transform(dataset, ZSADImageProcessor(image_size=model.config.image_size))
    sampler = EpochShuffleSampler(len(dataset), seed=args.seed)
    dataloader = DataLoader(dataset, batch_size=args.train_batch_size, sampler=sampler, collate_fn=collate_fn,
                            num_workers=args.dataloader_num_workers, pin_memory=accelerator.device.type == "cuda",
                            drop_last=False)

    model, optimizer, dataloader = accelerator.prepare(model, optimizer, dataloader)
    register_adapter_checkpointing(accelerator)
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch
    num_epochs = math.ceil(max_train_steps / steps_per_epoch)
    if accelerator.is_main_process:
        accelerator.init_trackers("zsad", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    global_step, first_epoch, skip_batches, images_seen = 0, 0, 0, 0
    if args.overwrite and not args.resume_from_checkpoint and accelerator.is_main_process:
        shutil.rmtree(checkpoints_dir, ignore_errors=True)
        truncate_log(log_path, 0)
    if args.resume_from_checkpoint:
        path = resolve_resume(args, checkpoints_dir)
        accelerator.print(f"resuming from {path}")
        accelerator.load_state(path)
        # Checkpoint folders are numbered by save; the step count is stored beside the state.
        with open(os.path.join(path, "zsad_training_state.json")) as handle:
            global_step = json.load(handle)["global_step"]
        accelerator.project_configuration.iteration = checkpoint_step(path) + 1
        if accelerator.is_main_process:
            truncate_log(log_path, global_step)
        first_epoch, done_in_epoch = divmod(global_step, steps_per_epoch)
        skip_batches = done_in_epoch * args.gradient_accumulation_steps

    progress = progress_bar(total=max_train_steps, initial=global_step, desc="train", unit="step",
                            disable=not accelerator.is_local_main_process)
    model.train()
    saved_step, epoch = global_step, first_epoch
    stop = deferred_interrupt()
    try:
        for epoch in range(first_epoch, num_epochs):
            # Accelerate's loaders pass their own epoch counter to the sampler: set it on the loader itself,
            # also on the fresh loader `skip_first_batches` returns when resuming mid-epoch.
            batches = accelerator.skip_first_batches(dataloader, skip_batches) if skip_batches else dataloader
            batches.set_epoch(epoch)
            skip_batches = 0
            for batch in batches:
                images_seen += len(batch["labels"])  # by this process since launch
                with accelerator.accumulate(model):
                    loss = model(**model_inputs(batch, with_targets=True)).loss
                    accelerator.backward(loss)
                    optimizer.step()
                    optimizer.zero_grad()
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                progress.update(1)
                progress.set_postfix(loss=f"{loss.item():.4f}", epoch=epoch)
                accelerator.log({"train/loss": loss.item(), "train/epoch": epoch}, step=global_step)
                if accelerator.is_main_process:  # a plain record beside any tracker
                    with open(log_path, "a") as handle:
                        handle.write(json.dumps({"step": global_step, "epoch": epoch, "loss": loss.item(),
                                                "images_seen": images_seen}) + "\n")
                if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
                    save_checkpoint(accelerator, global_step, epoch)
                    saved_step = global_step
                if stop["requested"]:  # Ctrl-C or SIGTERM: stop between steps, the log and the state in agreement
                    raise KeyboardInterrupt
                if global_step >= max_train_steps:
                    break
            if global_step >= max_train_steps:
                break
    except KeyboardInterrupt:
        restore_signals(stop)
        progress.close()
        if global_step == 0:
            accelerator.print(f"{prog}: interrupted before the first step; nothing to save", file=sys.stderr)
            return 130
        saved = save_checkpoint(accelerator, global_step, epoch) if global_step > saved_step else "the latest checkpoint"
        accelerator.print(f"{prog}: interrupted at step {global_step}; state saved in {saved}; to resume: {resume}",
                          file=sys.stderr)
        return 130
    restore_signals(stop)
    progress.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        final.save_pretrained(args.output_dir)  # adapter-only: config + adapters + shim
        training_data = f"{' + '.join(args.dataset)} (split {args.split}{', categories ' + ' '.join(args.categories) if args.categories else ''})"
        write_model_card(final, args.output_dir, overwrite=True, repo_id=args.hub_model_id, training_data=training_data)
        accelerator.print(f"saved the trained adapters to {args.output_dir}")
        if args.push_to_hub:
            from ..hub.push import push_folder

            url = push_folder(args.output_dir, args.hub_model_id, token=args.hub_token,
                              commit_message=f"zsad {args.method} trained on {' + '.join(args.dataset)}")
            accelerator.print(f"pushed to {url}")
    accelerator.end_training()
