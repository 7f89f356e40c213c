"""The `mpcc` command: argument parsing only; the work lives in the library modules."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _add_prepare(sub) -> None:
    from mpcc.data.masking import FILLS, MASK_MODES, MaskSpec
    from mpcc.data.options import FORMATS
    from mpcc.data.render import IMAGE_FORMATS
    from mpcc.data.selection import DEFAULT_OOD, MPCC_EVAL_SIZE, SelectionConfig

    m, s = MaskSpec(), SelectionConfig()
    p = sub.add_parser(
        "prepare",
        help="build an MPCC train or eval dataset from COCO-format data",
        description="Select hidden targets in a COCO-format source, mask them and write an HF "
        "dataset (save_to_disk) with its build record, statistics and skip report.",
    )
    p.add_argument(
        "split",
        choices=["train", "eval"],
        help="train: open-answer rows without the held-out "
        "categories; eval: multiple-choice and yes/no rows with difficulty levels and an OOD flag",
    )
    p.add_argument("--annotations", type=Path, required=True, help="COCO instances JSON file")
    p.add_argument("--images", type=Path, required=True, help="directory holding the images' file_name paths")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--seed", type=int, default=0, help="seed for every random choice (default: 0)")
    p.add_argument(
        "--num-proc", type=int, default=0, help="render processes; 0 = all cores (output is the same)"
    )
    p.add_argument(
        "--image-format",
        choices=IMAGE_FORMATS,
        default="png",
        help="png / webp: store the masked image losslessly in the dataset; lazy: store no pixels and render "
        "on access with mpcc.data.render.load_dataset (tiny datasets; needs the original images)",
    )
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="plan over the whole source but render only block I of N of its images (I from 0); join the N "
        "shard builds with `mpcc merge-shards` (launch/slurm/prepare.sbatch runs them as a job array)",
    )
    g = p.add_argument_group("masking")
    g.add_argument(
        "--mask-mode",
        choices=MASK_MODES,
        default=m.mode,
        help=f"region to hide: the instance mask, the mask grown by a margin, its convex hull, or "
        f"its box (the authors' setting) (default: {m.mode})",
    )
    g.add_argument(
        "--fill", choices=FILLS, default=m.fill, help=f"what covers the region (default: {m.fill})"
    )
    g.add_argument(
        "--dilate-px",
        type=int,
        default=m.dilate_px,
        help=f"segm_dilated: grow by at least this many pixels (default: {m.dilate_px})",
    )
    g.add_argument(
        "--dilate-frac",
        type=float,
        default=m.dilate_frac,
        help=f"segm_dilated: or by this fraction of the box's longer side (default: {m.dilate_frac})",
    )
    g.add_argument(
        "--feather",
        type=float,
        default=m.feather,
        help="Gaussian radius (px) of a soft edge that fades outward only (default: 0, hard edge)",
    )
    g = p.add_argument_group("target selection")
    g.add_argument(
        "--min-area-frac",
        type=float,
        default=s.min_area_frac,
        help=f"smallest instance area / image area (default: {s.min_area_frac})",
    )
    g.add_argument(
        "--max-area-frac",
        type=float,
        default=s.max_area_frac,
        help=f"largest instance area / image area (default: {s.max_area_frac})",
    )
    g.add_argument(
        "--min-visible-frac",
        type=float,
        default=s.min_visible_frac,
        help=f"image share that must stay outside the target's box (default: {s.min_visible_frac})",
    )
    g.add_argument(
        "--min-context",
        type=int,
        default=s.min_context,
        help=f"fewest other annotated instances in the image (default: {s.min_context})",
    )
    g.add_argument(
        "--max-crowd-overlap",
        type=float,
        default=s.max_crowd_overlap,
        help=f"largest share of the target covered by crowd regions (default: {s.max_crowd_overlap})",
    )
    g.add_argument(
        "--max-per-image",
        type=int,
        default=s.max_per_image,
        help=f"targets per image at most (default: {s.max_per_image})",
    )
    g.add_argument(
        "--ood-categories",
        default=",".join(DEFAULT_OOD),
        help="comma-separated categories held out of training targets and flagged "
        "in_distribution=false in eval; 'none' for no held-out set (default: one per supercategory)",
    )
    p.add_argument(
        "--template-traces",
        action="store_true",
        help="train: fill `reasoning` with a template trace built from the row's context (for SFT and prior "
        "sampling without a teacher model)",
    )
    g = p.add_argument_group("eval")
    g.add_argument(
        "--formats", default=",".join(FORMATS), help=f"comma-separated of {FORMATS} (default: all)"
    )
    g.add_argument(
        "--max-items",
        type=int,
        default=MPCC_EVAL_SIZE,
        help=f"hidden objects to keep, split over the three levels (default: {MPCC_EVAL_SIZE}, "
        "MPCC-Eval's size)",
    )
    g.add_argument(
        "--no-balance", action="store_true", help="keep what each level has instead of equal counts per level"
    )
    g.add_argument(
        "--stats",
        type=Path,
        help="a train build (directory or its mpcc_stats.json): co-occurrence "
        "statistics and difficulty thresholds, so eval levels match training",
    )
    g.add_argument(
        "--distractors",
        type=Path,
        help="JSON/JSONL rows {ann_id, confusable: [..], irrelevant: "
        "[..]} that replace the computed distractors (e.g. a model's guesses)",
    )
    g.add_argument(
        "--mpcc-eval",
        type=Path,
        help="the authors' MPCC-Eval JSON: use its items, levels and "
        "distractors instead of selecting targets",
    )


def _prepare(args) -> int:
    from mpcc.data.build import BuildConfig, build
    from mpcc.data.masking import MaskSpec
    from mpcc.data.selection import SelectionConfig
    from mpcc.data.shards import parse_shard

    ood = (
        ()
        if args.ood_categories.strip().lower() == "none"
        else tuple(c.strip() for c in args.ood_categories.split(",") if c.strip())
    )
    config = BuildConfig(
        split=args.split,
        seed=args.seed,
        mask=MaskSpec(args.mask_mode, args.fill, args.dilate_px, args.dilate_frac, args.feather),
        selection=SelectionConfig(
            args.min_area_frac,
            args.max_area_frac,
            args.min_visible_frac,
            args.min_context,
            args.max_crowd_overlap,
            args.max_per_image,
        ),
        ood_categories=ood,
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        max_items=args.max_items if args.split == "eval" else None,
        balance=not args.no_balance,
        stats=args.stats,
        image_format=args.image_format,
        template_traces=args.template_traces,
        distractors=args.distractors,
        mpcc_eval=args.mpcc_eval,
        shard=parse_shard(args.shard) if args.shard else None,
    )
    result = build(
        args.annotations, args.images, args.out, config, overwrite=args.overwrite, num_proc=args.num_proc
    )
    print(f"wrote {result.num_rows} rows to {result.path}")
    print(f"  rows per level: {result.rows_per_level}")
    print(f"  difficulty thresholds: {result.thresholds[0]:.4f} / {result.thresholds[1]:.4f}")
    print(f"  not selected: {result.rejected}")
    print(f"  skipped as broken: {result.skipped or 'nothing'} (details: {result.path / 'skipped.jsonl'})")
    return 0


def _add_inspect(sub) -> None:
    p = sub.add_parser(
        "inspect",
        help="write an HTML preview of a dataset's samples",
        description="An HTML page with thumbnails: original with mask outline, masked image, "
        "question, options, answer and difficulty, for N samples.",
    )
    p.add_argument("dataset", type=Path, help="a dataset written by `mpcc prepare`")
    p.add_argument("--out", type=Path, required=True, help="directory for index.html and thumbnails")
    p.add_argument("--num", type=int, default=24, help="samples to show (default: 24)")
    p.add_argument("--seed", type=int, default=0, help="which samples (default: 0)")
    p.add_argument(
        "--images", type=Path, help="original images directory (default: the one recorded at build)"
    )


def _inspect(args) -> int:
    from mpcc.data.preview import write_preview

    page = write_preview(args.dataset, args.out, num=args.num, seed=args.seed, images_dir=args.images)
    print(f"preview: {page}")
    return 0


def _add_synth(sub) -> None:
    p = sub.add_parser(
        "synth",
        help="generate a synthetic COCO-format scene dataset",
        description="Procedural scenes whose objects follow learnable context rules, written as "
        "JPEG images + instances.json (polygons and RLE): the embedded default data.",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for images/ and instances.json")
    p.add_argument("--num-images", type=int, default=200, help="scenes to draw (default: 200)")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default: 0)")
    p.add_argument(
        "--traces",
        action="store_true",
        help="also write traces.jsonl: a reasoning trace per object, for `mpcc annotate import`",
    )


def _synth(args) -> int:
    from mpcc.data.synthetic import generate_scenes

    path = generate_scenes(args.out, num_images=args.num_images, seed=args.seed, traces=args.traces)
    print(f"wrote {path}")
    return 0


def _add_export_eval(sub) -> None:
    p = sub.add_parser("export-mpcc-eval", help="write an eval dataset in the authors' MPCC-Eval JSON layout")
    p.add_argument("dataset", type=Path, help="an eval dataset written by `mpcc prepare eval`")
    p.add_argument("--out", type=Path, required=True, help="JSON file to write")


def _export_eval(args) -> int:
    from mpcc.data.mpcc_eval import export_items

    counts = export_items(args.dataset, args.out)
    print(f"wrote {sum(counts.values())} items to {args.out} ({counts})")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job end to end on the embedded synthetic default",
        description="Synthetic scenes with reasoning traces -> MPCC train set (traces imported and verified) "
        "+ eval set -> visual preview -> SFT -> GRPO with prior sampling (tiny offline model, CPU).",
    )
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="work directory (default: runs/demo)")
    p.add_argument("--num-images", type=int, default=240, help="synthetic scenes (default: 240)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--sft-steps", type=int, default=150, help="SFT steps on the traces (default: 150)")
    p.add_argument("--grpo-steps", type=int, default=30, help="then GRPO + prior steps (default: 30)")
    p.add_argument(
        "--recipes",
        default="tiny",
        help="where sft.yaml and grpo_prior.yaml are: a directory, or a packaged recipe folder "
        "(default: tiny, the packaged CPU recipes)",
    )


def _demo(args) -> int:
    from mpcc.demo import run_demo

    run_demo(
        args.out,
        num_images=args.num_images,
        seed=args.seed,
        sft_steps=args.sft_steps,
        grpo_steps=args.grpo_steps,
        recipes=args.recipes,
    )
    return 0


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train from a recipe (launches Accelerate with the recipe's accelerate_config)",
        description="Same as `accelerate launch --config_file <accelerate_config> -m mpcc.train RECIPE "
        "[--key value ...]`; without an accelerate_config the run stays in this process. RECIPE is a YAML "
        "file or, from any directory, a packaged recipe's name (`mpcc recipes` lists them).",
    )
    p.add_argument(
        "recipe", help="a recipe YAML file, or a packaged recipe's name: grpo_prior, tiny/grpo_prior, ..."
    )
    p.add_argument("overrides", nargs=argparse.REMAINDER, help="--key value pairs that override the recipe")


def _train(args) -> int:
    import subprocess

    from mpcc.launch import read_recipe

    config = read_recipe(args.recipe, args.overrides).accelerate_config  # `--accelerate_config X` wins
    if config is None:
        from mpcc.train import main as train_main

        return train_main([args.recipe, *args.overrides])
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.accelerate_cli",
        "launch",
        "--config_file",
        str(config),
        "-m",
        "mpcc.train",
        args.recipe,
        *args.overrides,
    ]
    print("running:", " ".join(command), flush=True)
    return subprocess.call(command)


def _add_recipes(sub) -> None:
    sub.add_parser(
        "recipes",
        help="list the packaged recipes and Accelerate configs (by name: `mpcc train NAME`)",
    )


def _recipes(args) -> int:
    from mpcc.recipes import HERE, names

    print(f"recipes: {' '.join(names())}")
    print(f"accelerate configs: {' '.join(names('accelerate'))}")
    print(f"files in: {HERE}")
    return 0


def _add_tiny_model(sub) -> None:
    p = sub.add_parser(
        "tiny-model",
        help="build a tiny random-weight VLM and processor (offline), for the demo and tests",
        description="A tiny Qwen-VL-family model with random weights, a locally trained tokenizer and a chat "
        "template, saved with save_pretrained. Nothing is downloaded.",
    )
    p.add_argument(
        "--arch",
        choices=["qwen2_5_vl", "qwen2_vl", "qwen3_vl"],
        default="qwen2_5_vl",
        help="architecture (default: qwen2_5_vl)",
    )
    p.add_argument("--out", type=Path, required=True, help="directory to write")
    p.add_argument("--seed", type=int, default=0, help="weight seed (default: 0)")


def _tiny_model(args) -> int:
    from mpcc.models import build_tiny_model

    print(f"wrote {build_tiny_model(args.arch, args.out, seed=args.seed)}")
    return 0


def _add_eval(sub) -> None:
    from mpcc.evaluation.config import Decoding

    d = Decoding()
    p = sub.add_parser(
        "eval",
        help="evaluate a model on an MPCC eval build (or: mpcc eval compare RUN_A RUN_B ... --out DIR)",
        description="Batched generation over an eval build, strict answer parsing, metrics per level, "
        "format, in/out of distribution and supercategory; writes metrics.json, predictions.jsonl, "
        "report.md and accuracy.png. Re-running resumes. `mpcc eval compare RUN ... --out DIR` charts "
        "runs side by side.",
    )
    p.add_argument("runs", nargs="*", help="with `compare`: the eval output directories to compare")
    p.add_argument("--model", help="model path or hub name (or tiny:<arch>)")
    p.add_argument("--data", type=Path, help="an `mpcc prepare eval` build")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.add_argument("--formats", default="mc4,mc7,yesno", help="comma-separated of mc4, mc7, yesno, open")
    p.add_argument(
        "--samples",
        type=int,
        default=1,
        help="samples per row; > 1 samples (temperature/top-p) "
        "and reports mean accuracy with a 95%% bootstrap interval (default: 1, greedy)",
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per generate call (default: 16)")
    p.add_argument(
        "--max-new-tokens", type=int, default=d.max_new_tokens, help=f"default: {d.max_new_tokens}"
    )
    p.add_argument(
        "--temperature", type=float, default=d.temperature, help=f"when sampling (default: {d.temperature})"
    )
    p.add_argument("--top-p", type=float, default=d.top_p, help=f"when sampling (default: {d.top_p})")
    p.add_argument("--limit", type=int, help="only the first N items (all their rows)")
    p.add_argument(
        "--diagnostics",
        default="",
        help="comma-separated of blind (image blanked), context (the "
        "k most predictive context objects hidden too), shape (only the hidden region's silhouette)",
    )
    p.add_argument("--context-k", type=int, default=2, help="context objects the `context` diagnostic hides")
    p.add_argument(
        "--backend",
        choices=["hf", "vllm"],
        default="hf",
        help="hf: transformers generate, batched (default); vllm: vLLM's offline engine, when installed",
    )


def _eval(args) -> int:
    from mpcc.evaluation.config import Decoding, EvalConfig
    from mpcc.evaluation.harness import compare_runs, run_eval

    if args.runs:
        if args.runs[0] != "compare" or len(args.runs) < 2:
            raise ValueError("positional arguments are only for `mpcc eval compare RUN [RUN ...] --out DIR`")
        print(f"comparison: {compare_runs(args.runs[1:], args.out)}")
        return 0
    if not args.model or not args.data:
        raise ValueError("--model and --data are required (or use `mpcc eval compare`)")
    config = EvalConfig(
        formats=tuple(f.strip() for f in args.formats.split(",") if f.strip()),
        samples=args.samples,
        seed=args.seed,
        batch_size=args.batch_size,
        limit=args.limit,
        diagnostics=tuple(d.strip() for d in args.diagnostics.split(",") if d.strip()),
        context_k=args.context_k,
        backend=args.backend,
        decoding=Decoding(args.max_new_tokens, False, args.temperature, args.top_p),
    )
    metrics = run_eval(args.model, args.data, args.out, config)
    print(f"accuracy {metrics['accuracy']:.3f} over {metrics['n']} rows; report: {args.out / 'report.md'}")
    return 0


def _add_annotate(sub) -> None:
    from mpcc.annotation.config import BLIND_TRIES, MODES, TEACHER_DECODING

    d = TEACHER_DECODING
    p = sub.add_parser(
        "annotate",
        help="reasoning traces for a train build from a teacher model (or: mpcc annotate import FILE "
        "--data DATASET --out DIR)",
        usage="mpcc annotate DATASET --teacher MODEL_OR_URL --out DIR [options]\n"
        "       mpcc annotate import FILE --data DATASET --out DIR [options]",
        description="`mpcc annotate DATASET --teacher MODEL_OR_URL --out DIR` asks a teacher VLM (a local "
        "checkpoint, or an OpenAI-compatible chat-completions endpoint such as vLLM or `transformers serve`) "
        "for a reasoning trace per row, keeps the traces that pass verification and writes a new build with "
        "the trace and provenance columns. Progress is saved as it goes: re-running resumes. "
        "`mpcc annotate import FILE --data DATASET --out DIR` joins traces from a JSON/JSONL file instead.",
    )
    p.add_argument(
        "target",
        nargs="+",
        metavar="DATASET | import FILE",
        help="an `mpcc prepare train` build to annotate, or `import FILE` (JSON list or JSONL of traces)",
    )
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    g = p.add_argument_group("teacher")
    g.add_argument(
        "--teacher",
        help="a model path, hub name or tiny:<arch> (run here), or an endpoint's base URL "
        "http(s)://HOST[:PORT]/v1 (default: $MPCC_TEACHER_BASE_URL or $OPENAI_BASE_URL); the API key comes "
        "from $MPCC_TEACHER_API_KEY or $OPENAI_API_KEY",
    )
    g.add_argument(
        "--teacher-model",
        help="the endpoint's model name (default: $MPCC_TEACHER_MODEL, else the server's only model)",
    )
    g.add_argument(
        "--mode",
        choices=MODES,
        default="guided",
        help="guided: the teacher is told the answer; "
        "blind: the student's prompt only, wrong answers rejected (default: guided)",
    )
    g.add_argument(
        "--tries",
        type=int,
        help=f"answers asked per row at most, until one passes (default: 1 guided, {BLIND_TRIES} blind)",
    )
    g.add_argument("--limit", type=int, help="only the first N rows (the output holds only them)")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    g.add_argument(
        "--max-new-tokens", type=int, default=d.max_new_tokens, help=f"default: {d.max_new_tokens}"
    )
    g.add_argument(
        "--temperature", type=float, default=d.temperature, help=f"0 = greedy (default: {d.temperature})"
    )
    g.add_argument("--top-p", type=float, default=d.top_p, help=f"default: {d.top_p}")
    g.add_argument(
        "--batch-size", type=int, default=8, help="local teacher: rows per generate call (default: 8)"
    )
    g.add_argument("--concurrency", type=int, default=8, help="endpoint: requests in flight (default: 8)")
    g.add_argument(
        "--timeout", type=float, default=120.0, help="endpoint: seconds per request (default: 120)"
    )
    g.add_argument(
        "--retries",
        type=int,
        default=5,
        help="endpoint: more tries after a timeout, connection error, 429 or 5xx (default: 5)",
    )
    g.add_argument(
        "--backoff",
        type=float,
        default=1.0,
        help="endpoint: first retry delay in seconds, doubling (default: 1)",
    )
    g.add_argument(
        "--rate-limit", type=float, help="endpoint: requests per second at most (default: no limit)"
    )
    g.add_argument(
        "--work-dir", type=Path, help="progress log for resuming (default: the output path + .annotate)"
    )
    g = p.add_argument_group("verification (both forms)")
    g.add_argument("--min-words", type=int, help="reject traces shorter than this many words")
    g.add_argument("--max-words", type=int, help="reject traces longer than this many words")
    g = p.add_argument_group("import")
    g.add_argument("--data", type=Path, help="with `import`: the train build the traces belong to")


def _annotate(args) -> int:
    import os

    if args.target[0] == "import":
        from mpcc.annotation.importing import import_traces

        if len(args.target) != 2 or args.data is None:
            raise ValueError("usage: mpcc annotate import FILE --data DATASET --out DIR")
        if args.teacher or args.teacher_model:
            raise ValueError("import reads traces from FILE: --teacher and --teacher-model are not used")
        r = import_traces(args.target[1], args.data, args.out, args.min_words, args.max_words, args.overwrite)
        print(f"imported {r.traces} traces into {r.path}: kept {r.counts['kept']} of {r.counts['rows']} rows")
        print(f"  rejected rows: {r.counts['rejected'] or 'none'}")
        print(f"  traces without a row: {r.traces - r.matched} {r.unmatched_traces or ''}")
        print(f"  rows without a trace: {r.rows_without_trace} (both listed in {r.unmatched_file})")
        return 0
    from mpcc.annotation.annotate import annotate
    from mpcc.annotation.config import BLIND_TRIES, AnnotateConfig, check_sampling
    from mpcc.annotation.output import check_paths
    from mpcc.annotation.teachers import make_teacher
    from mpcc.evaluation.config import Decoding

    if len(args.target) != 1 or args.data is not None:
        raise ValueError(
            "usage: mpcc annotate DATASET --teacher MODEL_OR_URL --out DIR (--data is for import)"
        )
    spec = args.teacher or os.environ.get("MPCC_TEACHER_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    if not spec:
        raise ValueError("--teacher is required (or set MPCC_TEACHER_BASE_URL)")
    decoding = Decoding(args.max_new_tokens, args.temperature > 0, args.temperature, args.top_p)
    config = AnnotateConfig(
        mode=args.mode,
        tries=args.tries or (BLIND_TRIES if args.mode == "blind" else 1),
        seed=args.seed,
        min_words=args.min_words,
        max_words=args.max_words,
        limit=args.limit,
    )
    check_paths(Path(args.target[0]), args.out, args.overwrite)  # before loading a teacher
    check_sampling(config, decoding)
    teacher = make_teacher(
        spec,
        decoding,
        model=args.teacher_model or os.environ.get("MPCC_TEACHER_MODEL"),
        batch_size=args.batch_size,
        concurrency=args.concurrency,
        timeout=args.timeout,
        retries=args.retries,
        backoff=args.backoff,
        rate_limit=args.rate_limit,
    )
    r = annotate(args.target[0], args.out, teacher, config, work_dir=args.work_dir, overwrite=args.overwrite)
    print(f"annotated {r.counts['rows']} rows into {r.path}: kept {r.counts['kept']}")
    print(f"  rejected rows: {r.counts['rejected'] or 'none'}")
    print(f"  answers: {r.answers} ({r.new_answers} new; progress in {r.work_dir})")
    print(f"  teacher: {r.teacher_stats}")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export",
        help="turn a training checkpoint into a validated model folder with a model card (and push it)",
        description="Consolidate a training output_dir or checkpoint-N (full weights, a LoRA adapter, or "
        "DeepSpeed ZeRO shards) into a folder with weights, processor, chat template, generation config "
        "and README.md; reload it and check it gives the checkpoint's logits before anything is uploaded.",
    )
    p.add_argument("checkpoint", type=Path, help="a training output_dir or one of its checkpoint-N folders")
    p.add_argument(
        "--out", type=Path, required=True, help="folder to write (absent or empty; written atomically)"
    )
    p.add_argument(
        "--merge-lora",
        action="store_true",
        help="merge a LoRA adapter into its base and export the full model (default: the adapter alone)",
    )
    p.add_argument("--base-model", help="LoRA: the base model to load instead of the one the adapter names")
    p.add_argument("--eval-run", type=Path, help="an `mpcc eval` output folder: its metrics go into the card")
    p.add_argument(
        "--license", help="licence id for the card (default: the base model's if known, else other)"
    )
    p.add_argument(
        "--push-to-hub",
        metavar="REPO",
        help="upload the validated folder to this Hub model repo (token: HF_TOKEN or `hf auth login`)",
    )
    p.add_argument("--private", action="store_true", help="create the Hub repo as private")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="with --push-to-hub: list what would be uploaded, upload nothing",
    )


def _export(args) -> int:
    from mpcc.export import export, push, upload_plan

    if (args.private or args.dry_run) and not args.push_to_hub:
        raise ValueError("--private and --dry-run need --push-to-hub REPO")
    if args.push_to_hub:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(args.push_to_hub)  # a bad id stops here, not after the export
    r = export(
        args.checkpoint,
        args.out,
        merge_lora=args.merge_lora,
        base_model=args.base_model,
        eval_run=args.eval_run,
        license=args.license,
        name=args.push_to_hub,
    )
    what = "LoRA adapter" if r.adapter_only else "model"
    print(f"exported the {what} from {args.checkpoint} ({r.source} checkpoint) to {r.path}")
    print(f"  validated: max |logit difference| {r.max_diff:.3g} <= {r.tolerance:.3g}")
    if not args.push_to_hub:
        return 0
    files = upload_plan(r.path)
    if args.dry_run:
        total = sum(size for _, size in files)
        print(
            f"dry run: would upload {len(files)} files ({total:,} bytes) to {args.push_to_hub} "
            f"(private: {args.private}); nothing uploaded"
        )
        for name, size in files:
            print(f"  {size:>14,}  {name}")
        return 0
    info = push(r.path, args.push_to_hub, private=args.private)
    print(f"uploaded {len(files)} files to {args.push_to_hub}: {info.commit_url}")
    return 0


def _add_merge_shards(sub) -> None:
    p = sub.add_parser(
        "merge-shards",
        help="join the shard builds of `mpcc prepare --shard I/N` into one build",
        description="Concatenate all N shard builds of one `mpcc prepare` run (in shard order) into the "
        "build a single job would have written: rows, statistics, skip report and build record.",
    )
    p.add_argument("shards", nargs="+", type=Path, help="the N shard build directories, in any order")
    p.add_argument("--out", type=Path, required=True, help="output dataset directory (written atomically)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def _merge_shards(args) -> int:
    from mpcc.data.shards import merge_shards

    result = merge_shards(args.shards, args.out, overwrite=args.overwrite)
    print(f"wrote {result.num_rows} rows from {len(args.shards)} shards to {result.path}")
    print(f"  rows per level: {result.rows_per_level}")
    print(f"  skipped as broken: {result.skipped or 'nothing'}")
    return 0


def _add_bench(sub) -> None:
    from mpcc.bench import SHAPES, VARIANTS, BenchConfig

    b = BenchConfig()
    p = sub.add_parser(
        "bench",
        help="benchmark a GRPO step: vanilla TRL vs mpcc's trainers, split by phase (mpcc bench grpo)",
        description="Times vanilla TRL's GRPOTrainer and mpcc's GRPO / prior-sampling trainers (plain "
        "and with compiled static-cache generation) on the same random-weight model and data, in one run on "
        "one device (the GPU when there is one). Reports per-phase medians, tokens/s, MFU, peak memory and "
        "the speed-up over vanilla; writes grpo_bench.json and grpo_bench.md.",
    )
    p.add_argument("what", choices=["grpo"], help="what to benchmark")
    p.add_argument(
        "--shape",
        choices=list(SHAPES),
        default=b.shape,
        help="model shape: tiny (CPU-sized), 3b / 7b (Qwen2.5-VL-3B / 7B exactly, random weights) "
        f"(default: {b.shape})",
    )
    p.add_argument("--out", type=Path, required=True, help="directory for grpo_bench.json and grpo_bench.md")
    p.add_argument("--prompts", type=int, default=b.prompts, help=f"prompts per step (default: {b.prompts})")
    p.add_argument("--generations", type=int, default=b.generations, help=f"G (default: {b.generations})")
    p.add_argument(
        "--max-new-tokens", type=int, default=b.max_new_tokens, help=f"default: {b.max_new_tokens}"
    )
    p.add_argument("--steps", type=int, default=b.steps, help=f"timed steps (default: {b.steps})")
    p.add_argument("--warmup", type=int, default=b.warmup, help=f"untimed first steps (default: {b.warmup})")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {', '.join(VARIANTS)}")


def _bench(args) -> int:
    from mpcc.bench import BenchConfig, run_bench

    config = BenchConfig(
        shape=args.shape,
        prompts=args.prompts,
        generations=args.generations,
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        warmup=args.warmup,
        variants=tuple(v.strip() for v in args.variants.split(",") if v.strip()),
    )
    run_bench(config, args.out, command="mpcc " + " ".join(sys.argv[1:]))
    print((args.out / "grpo_bench.md").read_text(encoding="utf-8"))
    return 0


COMMANDS = {
    "prepare": (_add_prepare, _prepare),
    "inspect": (_add_inspect, _inspect),
    "synth": (_add_synth, _synth),
    "export-mpcc-eval": (_add_export_eval, _export_eval),
    "demo": (_add_demo, _demo),
    "train": (_add_train, _train),
    "recipes": (_add_recipes, _recipes),
    "eval": (_add_eval, _eval),
    "tiny-model": (_add_tiny_model, _tiny_model),
    "annotate": (_add_annotate, _annotate),
    "export": (_add_export, _export),
    "merge-shards": (_add_merge_shards, _merge_shards),
    "bench": (_add_bench, _bench),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpcc",
        description="Masked Prediction via Context and Commonsense (MPCC) for vision-language models.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from mpcc.data.build import BuildError
    from mpcc.data.coco import CocoFormatError

    try:
        return COMMANDS[args.command][1](args)
    except (BuildError, CocoFormatError, ValueError, FileNotFoundError) as e:
        print(f"mpcc {args.command}: error: {e}", file=sys.stderr)
        return 2
