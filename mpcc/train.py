"""Train from a recipe: `accelerate launch [--config_file CFG] -m mpcc.train RECIPE [--key value ...]`.

RECIPE is a YAML file, or a packaged recipe's name from any directory (grpo_prior, tiny/grpo_prior; see
`mpcc recipes`). (`accelerate launch RECIPE.yaml` cannot work: Accelerate needs a program to run;
`mpcc train RECIPE` launches this module with the Accelerate config the recipe names.)
"""

from __future__ import annotations

import logging
import os
import sys

from transformers.trainer_utils import get_last_checkpoint
from trl import SFTTrainer, get_peft_config

from mpcc.evaluation.callback import EvalCallback
from mpcc.models import (
    freeze_vision_tower,
    keep_lora_off_vision_tower,
    load_model,
    load_processor,
    resolve_model_path,
)
from mpcc.rewards import resolve_rewards
from mpcc.training.config import load_recipe
from mpcc.training.data import load_train_dataset
from mpcc.training.grpo import MpccGRPOTrainer
from mpcc.training.preemption import PreemptionCallback
from mpcc.training.prior import PriorSamplingGRPOTrainer
from mpcc.training.record import save_run_record

logger = logging.getLogger("mpcc.train")


def build_trainer(run, train_args, model_args):
    """The TRL trainer a recipe asks for, with model, processor, data and rewards in place."""
    with train_args.main_process_first(desc="tiny model and synthetic data, built once"):
        path = resolve_model_path(model_args.model_name_or_path)
        dataset = load_train_dataset(run.dataset_path, run.trainer, run.max_train_samples)
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
        trainer = SFTTrainer(**common)
    else:
        funcs, weights = resolve_rewards(train_args.rewards)
        train_args.reward_weights = weights
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run, train_args, model_args = load_recipe(argv[0], argv[1:])
    trainer = build_trainer(run, train_args, model_args)
    if trainer.accelerator.is_main_process:  # beside the checkpoints, for `mpcc export`
        save_run_record(train_args.output_dir, run, train_args, model_args)
    checkpoint = train_args.resume_from_checkpoint
    if checkpoint in ("last", "true", "True"):  # the newest checkpoint in output_dir
        checkpoint = True
    elif checkpoint == "auto":  # the newest checkpoint when there is one (a requeued job), else from scratch
        out = train_args.output_dir
        checkpoint = get_last_checkpoint(out) if os.path.isdir(out) else None
        logger.info(
            "resuming from %s" if checkpoint else "no checkpoint in %s: starting from scratch",
            checkpoint or out,
        )
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
    if trainer.accelerator.is_main_process:
        trainer.processing_class.save_pretrained(train_args.output_dir)
        print(f"model saved to {train_args.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
