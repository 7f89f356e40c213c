"""The `mpcc` command. Each command is a parser built from its option dataclasses (declared, with their
help, beside the library code they configure; see mpcc.options), one library call and a printed
summary. A command's modules are imported only when it runs, so `mpcc --help` stays fast.

Errors mpcc raises on purpose (mpcc.errors.MpccError) and the machine's refusals (a full disk, a path it
may not write) print as one line (with -v: after their traceback) and exit with status 2; Ctrl-C prints
`interrupted` and exits with status 130; any other exception keeps its traceback (mpcc.errors.run_command).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mpcc.errors import ConfigError, run_command
from mpcc.options import add_options, parse_options
from mpcc.outputs.overlap import check_inputs, option_inputs


@dataclass(frozen=True)
class Command:
    help: str
    options: tuple[str, ...]  # its option dataclasses, as `module.Class`: imported when the command runs
    run: Callable[..., int]  # takes one instance of each, in order


def _prepare(job, config) -> int:
    from mpcc.data.build import build

    result = build(
        job.annotations, job.images, job.out, config, overwrite=job.overwrite, num_proc=job.num_proc
    )
    print(f"wrote {result.num_rows} rows to {result.path}")
    print(f"  rows per level: {result.rows_per_level}")
    print(f"  difficulty thresholds: {result.thresholds[0]:.4f} / {result.thresholds[1]:.4f}")
    print(f"  not selected: {result.rejected}")
    print(f"  skipped as broken: {result.skipped or 'nothing'} (details: {result.path / 'skipped.jsonl'})")
    return 0


def _inspect(job) -> int:
    from mpcc.data.preview import write_preview

    print(
        f"preview: {write_preview(job.dataset, job.out, num=job.num, seed=job.seed, images_dir=job.images)}"
    )
    return 0


def _synth(job) -> int:
    from mpcc.data.synthetic import generate_scenes

    print(f"wrote {generate_scenes(job.out, num_images=job.num_images, seed=job.seed, traces=job.traces)}")
    return 0


def _export_eval(job) -> int:
    from mpcc.data.mpcc_eval import export_items

    if job.format == "lmms-eval":
        from mpcc.evaluation.lmms_eval import TASK, export_task

        rows = export_task(job.dataset, job.out, limit=job.limit)
        print(f"wrote the lmms-eval task {TASK} ({rows} rows) to {job.out}")
        print(f"  run it: lmms-eval --tasks {TASK} --include_path {job.out} --model ...")
        return 0
    if job.limit is not None:
        raise ConfigError("--limit is for --format lmms-eval")
    counts = export_items(job.dataset, job.out)
    print(f"wrote {sum(counts.values())} items to {job.out} ({counts})")
    return 0


def _demo(config) -> int:
    from mpcc.demo import run_demo

    run_demo(config)
    return 0


def _study(config) -> int:
    from mpcc.study.runs import run_study

    run_study(config)
    return 0


def _train(recipe: str, overrides: list[str]) -> int:
    """`accelerate launch --config_file <accelerate_config> -m mpcc.train RECIPE ...`, or in this process
    without an accelerate_config."""
    from mpcc.launch import accelerate_command, read_recipe

    config = read_recipe(recipe, overrides).accelerate_config  # `--accelerate_config X` wins
    if config is None:
        from mpcc.train import main as train_main

        return train_main([recipe, *overrides])
    command = accelerate_command(["--config_file", config], recipe, overrides)
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def _recipes() -> int:
    from mpcc.recipes import HERE, names

    print(f"recipes: {' '.join(names())}")
    print(f"accelerate configs: {' '.join(names('accelerate'))}")
    print(f"files in: {HERE}")
    return 0


def _tiny_model(job) -> int:
    from mpcc.models import build_tiny_model

    print(f"wrote {build_tiny_model(job.arch, job.out, seed=job.seed, overwrite=job.overwrite)}")
    return 0


def _eval(job, config, client) -> int:
    from mpcc.evaluation.harness import compare_runs, run_eval

    if job.runs:
        if job.runs[0] != "compare" or len(job.runs) < 2:
            raise ConfigError("positional arguments are only for `mpcc eval compare RUN [RUN ...] --out DIR`")
        print(f"comparison: {compare_runs(list(job.runs[1:]), job.out, job.overwrite)}")
        return 0
    if not job.model or not job.data:
        raise ConfigError("--model and --data are required (or use `mpcc eval compare`)")
    metrics = run_eval(job.model, job.data, job.out, config, job.overwrite, job.endpoint, client)
    print(f"accuracy {metrics['accuracy']:.3f} over {metrics['n']} rows; report: {job.out / 'report.md'}")
    unanswered = metrics.get("unanswered", {})
    if unanswered.get("rows"):
        errors = unanswered["errors"]
        print(f"  unanswered: {unanswered['rows']} rows (errors: {errors}); the same command asks again")
    return 0


def _annotate(job, config, teacher_config) -> int:
    if job.target[0] == "import":
        from mpcc.annotation.importing import import_traces

        if len(job.target) != 2 or job.data is None:
            raise ConfigError("usage: mpcc annotate import FILE --data DATASET --out DIR")
        if teacher_config.teacher or teacher_config.teacher_model:
            raise ConfigError("import reads traces from FILE: --teacher and --teacher-model are not used")
        r = import_traces(job.target[1], job.data, job.out, config.min_words, config.max_words, job.overwrite)
        print(f"imported {r.traces} traces into {r.path}: kept {r.counts['kept']} of {r.counts['rows']} rows")
        print(f"  rejected rows: {r.counts['rejected'] or 'none'}")
        print(f"  traces without a row: {r.traces - r.matched} {r.unmatched_traces or ''}")
        print(f"  rows without a trace: {r.rows_without_trace} (both listed in {r.unmatched_file})")
        return 0
    from dataclasses import asdict

    from mpcc.annotation.annotate import annotate
    from mpcc.annotation.config import check_sampling
    from mpcc.annotation.output import check_paths
    from mpcc.annotation.teachers import make_teacher

    if len(job.target) != 1 or job.data is not None:
        raise ConfigError(
            "usage: mpcc annotate DATASET --teacher MODEL_OR_URL --out DIR (--data is for import)"
        )
    t = teacher_config
    check_paths(Path(job.target[0]), job.out, job.overwrite)  # before loading a teacher
    check_sampling(config, t.decoding)
    teacher = make_teacher(t.spec, t.decoding, model=t.model, batch_size=t.batch_size, **asdict(t.endpoint))
    r = annotate(job.target[0], job.out, teacher, config, work_dir=job.work_dir, overwrite=job.overwrite)
    print(f"annotated {r.counts['rows']} rows into {r.path}: kept {r.counts['kept']}")
    print(f"  rejected rows: {r.counts['rejected'] or 'none'}")
    print(f"  answers: {r.answers} ({r.new_answers} new; progress in {r.work_dir})")
    print(f"  teacher: {r.teacher_stats}")
    return 0


def _export(job) -> int:
    from mpcc.export import export, push, upload_plan

    if job.push_to_hub:
        from huggingface_hub.utils import HFValidationError, validate_repo_id

        try:
            validate_repo_id(job.push_to_hub)  # a bad id stops here, not after the export
        except HFValidationError as e:
            raise ConfigError(f"--push-to-hub: {e}") from e
    r = export(
        job.checkpoint,
        job.out,
        overwrite=job.overwrite,
        merge_lora=job.merge_lora,
        base_model=job.base_model,
        eval_run=job.eval_run,
        license=job.license,
        name=job.push_to_hub,
    )
    what = "LoRA adapter" if r.adapter_only else "model"
    print(f"exported the {what} from {job.checkpoint} ({r.source} checkpoint) to {r.path}")
    print(f"  validated: max |logit difference| {r.max_diff:.3g} <= {r.tolerance:.3g}")
    if not job.push_to_hub:
        return 0
    files = upload_plan(r.path)
    if job.dry_run:
        total = sum(size for _, size in files)
        print(
            f"dry run: would upload {len(files)} files ({total:,} bytes) to {job.push_to_hub} "
            f"(private: {job.private}); nothing uploaded"
        )
        for name, size in files:
            print(f"  {size:>14,}  {name}")
        return 0
    info = push(r.path, job.push_to_hub, private=job.private)
    print(f"uploaded {len(files)} files to {job.push_to_hub}: {info.commit_url}")
    return 0


def _merge_shards(job) -> int:
    from mpcc.data.shards import merge_shards

    result = merge_shards(job.shards, job.out, overwrite=job.overwrite)
    print(f"wrote {result.num_rows} rows from {len(job.shards)} shards to {result.path}")
    print(f"  rows per level: {result.rows_per_level}")
    print(f"  skipped as broken: {result.skipped or 'nothing'}")
    return 0


def _bench(job, config) -> int:
    from mpcc.bench import run_bench

    run_bench(config, job.out, command="mpcc " + " ".join(sys.argv[1:]))
    print((job.out / "grpo_bench.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = {
    "prepare": Command(
        "build an MPCC train or eval dataset from COCO-format data",
        ("mpcc.data.build.BuildJob", "mpcc.data.build.BuildConfig"),
        _prepare,
    ),
    "inspect": Command(
        "write an HTML preview of a dataset's samples", ("mpcc.data.preview.PreviewJob",), _inspect
    ),
    "synth": Command(
        "generate a synthetic COCO-format scene dataset", ("mpcc.data.synthetic.SynthJob",), _synth
    ),
    "export-mpcc-eval": Command(
        "write an eval dataset in the authors' MPCC-Eval JSON layout, or as an lmms-eval task folder",
        ("mpcc.data.mpcc_eval.ExportItemsJob",),
        _export_eval,
    ),
    "demo": Command(
        "run the main job end to end on the embedded synthetic default",
        ("mpcc.demo_config.DemoConfig",),
        _demo,
    ),
    "study": Command(
        "the paper's table and ablations in miniature over seeds, with intervals (resumable; ~45 min)",
        ("mpcc.study.config.StudyConfig",),
        _study,
    ),
    "train": Command(
        "train from a recipe (launches Accelerate with the recipe's accelerate_config)", (), _train
    ),
    "recipes": Command("list the packaged recipes and Accelerate configs (`mpcc train NAME`)", (), _recipes),
    "eval": Command(
        "evaluate a model on an MPCC eval build or another dataset (or: mpcc eval compare RUN ... --out DIR)",
        (
            "mpcc.evaluation.config.EvalJob",
            "mpcc.evaluation.config.EvalConfig",
            "mpcc.generation.endpoint.EndpointConfig",
        ),
        _eval,
    ),
    "tiny-model": Command(
        "build a tiny random-weight VLM and processor (offline), for the demo and tests",
        ("mpcc.models.TinyModelJob",),
        _tiny_model,
    ),
    "annotate": Command(
        "reasoning traces for a train build from a teacher model "
        "(or: mpcc annotate import FILE --data DATASET --out DIR)",
        (
            "mpcc.annotation.config.AnnotateJob",
            "mpcc.annotation.config.AnnotateConfig",
            "mpcc.annotation.config.TeacherConfig",
        ),
        _annotate,
    ),
    "export": Command(
        "turn a training checkpoint into a validated model folder with a model card (and push it)",
        ("mpcc.export.ExportJob",),
        _export,
    ),
    "merge-shards": Command(
        "join the shard builds of `mpcc prepare --shard I/N` into one build",
        ("mpcc.data.shards.MergeJob",),
        _merge_shards,
    ),
    "bench": Command(
        "benchmark a GRPO step: vanilla TRL vs mpcc's trainers, split by phase (mpcc bench grpo)",
        ("mpcc.bench.BenchJob", "mpcc.bench.BenchConfig"),
        _bench,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    """The top level: `mpcc [-v] COMMAND ...`; each command's own parser is built when it runs."""
    listing = "\n".join(f"  {name:<17} {command.help}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="mpcc",
        description="Masked Prediction via Context and Commonsense (MPCC) for vision-language models.",
        epilog=f"commands (`mpcc COMMAND --help` for its options):\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _load(path: str) -> type:
    module, name = path.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


def command_parser(name: str) -> tuple[argparse.ArgumentParser, tuple[type, ...]]:
    """The parser of one command, from its option dataclasses (the first one's docstring describes it)."""
    command = COMMANDS[name]
    classes = tuple(_load(path) for path in command.options)
    description = (classes[0].__doc__ or "").strip() if classes else command.help
    parser = argparse.ArgumentParser(prog=f"mpcc {name}", description=description or command.help)
    if name == "train":  # its options are the recipe's: TRL's and mpcc's training configs
        parser.description = _train.__doc__
        parser.add_argument(
            "recipe", help="a recipe YAML file, or a packaged recipe's name (see `mpcc recipes`)"
        )
        parser.add_argument(
            "overrides", nargs=argparse.REMAINDER, help="--key value pairs that override the recipe"
        )
    elif classes:
        add_options(parser, *classes)
    return parser, classes


def _run(name: str, argv: list[str], job: dict) -> int:
    """Parse and run one command; `job` gets its output folder, for errors that name no path."""
    parser, classes = command_parser(name)
    args = parser.parse_args(argv)
    if name == "train":
        return _train(args.recipe, args.overrides)
    if not classes:
        return COMMANDS[name].run()
    options = parse_options(args, *classes)
    job["out"] = getattr(options[0], "out", None)
    if isinstance(job["out"], Path):  # inputs the library call may not list
        check_inputs(job["out"], option_inputs(*options))
    return COMMANDS[name].run(*options)


def main(argv: list[str] | None = None) -> int:
    top = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if top.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    job: dict = {}
    program = f"mpcc {top.command}"
    return run_command(lambda: _run(top.command, top.args, job), program, top.verbose, lambda: job.get("out"))
