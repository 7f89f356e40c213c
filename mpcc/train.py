"""Train from a recipe: `accelerate launch [--config_file CFG] -m mpcc.train RECIPE [--key value ...]`.

RECIPE is a YAML file, or a packaged recipe's name from any directory (grpo_prior, tiny/grpo_prior; see
`mpcc recipes`). (`accelerate launch RECIPE.yaml` cannot work: Accelerate needs a program to run;
`mpcc train RECIPE` launches this module with the Accelerate config the recipe names.)

A problem with the recipe or its inputs prints as one line with exit status 2 (`-m mpcc.train -v RECIPE
...`: with its traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import datasets
from trl import get_peft_config

from mpcc.errors import InputError, MissingInputError, run_command
from mpcc.evaluation.callback import EvalCallback
from mpcc.families import family
from mpcc.models import (
    TINY_PREFIX,
    check_safetensors,
    freeze_vision_tower,
    keep_lora_off_vision_tower,
    load_model,
    load_processor,
    model_type,
    resolve_model_path,
)
from mpcc.outputs.modes import set_modes
from mpcc.records import write_training_run
from mpcc.rewards import resolve_rewards
from mpcc.training.config import load_recipe
from mpcc.training.data import check_training_data, load_train_dataset
from mpcc.training.grpo import MpccGRPOTrainer
from mpcc.training.output_dir import (
    CompleteCheckpoints,
    claim,
    has_steps_left,
    is_complete,
    newest_complete,
    resume_point,
)
from mpcc.training.preemption import PreemptionCallback
from mpcc.training.prior import PriorSamplingGRPOTrainer
from mpcc.training.record import run_record
from mpcc.training.sft import MpccSFTTrainer

logger = logging.getLogger("mpcc.train")
# TRL 1.16 still calls transformers' gradient_checkpointing names, renamed in transformers 5 (they work
# until v6): one harmless FutureWarning per call, several per run, that a user can do nothing about.
warnings.filterwarnings(
    "ignore", message=r"`(is_)?gradient_checkpointing\w*` is deprecated", category=FutureWarning
)


def _hide_deepspeed_cpu_notice() -> None:
    """DeepSpeed, imported by the trainer, warns that it found no GPU and uses the CPU: on a recipe that
    asks for the CPU (`use_cpu: true`) that is what was asked, so only that one message is dropped."""
    logging.getLogger("DeepSpeed").addFilter(
        lambda record: not record.getMessage().startswith("Setting accelerator to CPU")
    )


def build_trainer(run, train_args, model_args):
    """The TRL trainer a recipe asks for, with model, processor, data and rewards in place."""
    with train_args.main_process_first(desc="tiny model and synthetic data, built once"):
        path = resolve_model_path(model_args.model_name_or_path)
        dataset = load_train_dataset(
            run.dataset_path, run.trainer, run.max_train_samples, allow_eval=run.allow_eval_data
        )
    processor = load_processor(path, min_pixels=run.min_pixels, max_pixels=run.max_pixels)
    model = load_model(
        path, dtype=model_args.dtype or "auto", attn_implementation=model_args.attn_implementation
    )
    peft_config = get_peft_config(model_args)
    if run.freeze_vision_tower:
        if peft_config is None:
            freeze_vision_tower(model)
        else:
            keep_lora_off_vision_tower(peft_config, model)
    common = {
        "model": model,
        "args": train_args,
        "train_dataset": dataset,
        "processing_class": processor,
        "peft_config": peft_config,
    }
    if run.trainer == "sft":
        trainer = MpccSFTTrainer(**common)
    else:
        funcs, _ = resolve_rewards(train_args.rewards)  # weights: set from `rewards` when parsed
        trainer_class = PriorSamplingGRPOTrainer if run.trainer == "grpo_prior" else MpccGRPOTrainer
        trainer = trainer_class(reward_funcs=funcs, **common)
    if run.eval_dataset_path and run.eval_every_steps > 0:
        trainer.add_callback(
            EvalCallback(
                trainer,
                run.eval_dataset_path,
                run.eval_every_steps,
                run.eval_items,
                grounding=run.eval_grounding,
            )
        )
    return trainer


def resume_checkpoint(train_args, same_run: bool) -> str | None:
    """The checkpoint folder to resume from, its weight files checked (cheaply: headers and sizes), so a
    missing or truncated one stops the run before anything is loaded. `resume_from_checkpoint` a path;
    `last` or `true`: the newest complete `checkpoint-N` in output_dir; `auto`: that when there is one (a
    requeued job), else none (from scratch). Unset: that too when output_dir holds this same run."""
    value = train_args.resume_from_checkpoint
    out = train_args.output_dir
    if value in (None, "", "false", "False"):
        checkpoint = resume_point(out, same_run)
    elif value == "auto":
        checkpoint = newest_complete(out)
        logger.info(
            "resuming from %s" if checkpoint else "no checkpoint in %s: starting from scratch",
            checkpoint or out,
        )
    elif value in ("last", "true", "True"):
        checkpoint = newest_complete(out)
        if checkpoint is None:
            raise InputError(
                f"resume_from_checkpoint {value}: no complete checkpoint-N folder in output_dir {out}"
            )
    elif not os.path.isdir(value):
        raise MissingInputError(f"resume_from_checkpoint {value}: no such checkpoint folder")
    elif not is_complete(Path(value)):
        raise InputError(
            f"resume_from_checkpoint {value}: an incomplete checkpoint (its save did not finish)"
        )
    else:
        checkpoint = value
    if checkpoint is not None:
        check_safetensors(checkpoint)
    return None if checkpoint is None else str(checkpoint)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run, train_args, model_args = load_recipe(argv[0], argv[1:])
    # cheap checks first: the model's family (one line, before any data is read), the data's split, the
    # weight files (model and checkpoint) are whole
    name = model_args.model_name_or_path
    if name and (os.path.isdir(name) or name.startswith(TINY_PREFIX)):  # a hub name: when it is loaded
        family(model_type(name))
    check_training_data(run.dataset_path, run.allow_eval_data)
    if name and os.path.isdir(name):
        check_safetensors(name)
    main_process = train_args.process_index == 0
    # the output_dir is this run's (held until training ends); the main process first: it builds data
    with train_args.main_process_first(desc="output_dir and data"):
        record = run_record(run, train_args, model_args)
        inputs = (record.dataset.path, model_args.model_name_or_path)
        lock, same_run = claim(train_args.output_dir, record, run.overwrite_output_dir, main_process, inputs)
        if main_process and not same_run:  # beside the checkpoints, for `mpcc export`
            write_training_run(train_args.output_dir, record)
    checkpoint = resume_checkpoint(train_args, same_run)
    out = train_args.output_dir
    if checkpoint is not None and not has_steps_left(out, checkpoint, train_args.max_steps):
        print(f"nothing to train: {out} holds this run's final model (max_steps reached)")
        return 0
    if train_args.use_cpu:
        _hide_deepspeed_cpu_notice()
    datasets.disable_caching()  # map/filter results go to a temporary folder, never into the input build
    trainer = build_trainer(run, train_args, model_args)
    trainer.add_callback(CompleteCheckpoints())
    preemption = PreemptionCallback()  # SIGUSR1: save a checkpoint and stop (launch/slurm/train.sbatch)
    trainer.add_callback(preemption)
    trainer.train(resume_from_checkpoint=checkpoint)
    if preemption.preempted:
        logger.warning(
            "stopped for preemption at step %d: resume with --resume_from_checkpoint auto",
            trainer.state.global_step,
        )
        return 0
    trainer.save_model(train_args.output_dir)
    trainer.save_state()  # trainer_state.json: the log history (learning curves) beside the model
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(train_args.output_dir)
        set_modes(train_args.output_dir)
        print(f"model saved to {train_args.output_dir}")
    del lock  # the output_dir is free for the next run
    return 0


def _cli(argv: list[str] | None = None) -> int:
    """`python -m mpcc.train [-v] RECIPE ...`: an MpccError or a system error prints as one line with exit
    status 2, Ctrl-C as `interrupted` with 130, as in `mpcc train`; with -v also its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = argv[:1] in (["-v"], ["--verbose"])
    return run_command(lambda: main(argv[1:] if verbose else argv), "mpcc.train", verbose)


if __name__ == "__main__":
    raise SystemExit(_cli())
