"""`mpcc bench grpo`: vanilla TRL's GRPOTrainer against mpcc's trainers, on one device, in one run.

Every variant gets the same random-weight model (same shape, same seed), data, rewards and settings;
only the trainer and its generation options differ. Each step is split into generation (the HF
`generate` call, or the prior trainer's version of it), scoring (reward functions) and training
(the rest: log-prob passes, loss, backward, optimizer), timed with the device synchronised, and
medians over the steps after warm-up are reported. MFU counts the model FLOPs of one training pass,
6 x N x tokens for the language model plus 2 x N x patches for the frozen vision tower, against the
device's dense bf16 peak.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
import trl
from transformers import TrainerCallback
from transformers.image_utils import SizeDict

from mpcc.data.build import BuildConfig, build
from mpcc.data.render import load_dataset
from mpcc.data.synthetic import generate_scenes
from mpcc.errors import ConfigError
from mpcc.families import TINY_ARCHS
from mpcc.models import best_device, freeze_vision_tower, random_vlm, vision_tower
from mpcc.options import option, validate_bounds
from mpcc.reports.bench import bench_markdown
from mpcc.rewards import resolve_rewards
from mpcc.training.config import MpccGRPOConfig
from mpcc.training.grpo import MpccGRPOTrainer
from mpcc.training.prior import PriorSamplingGRPOTrainer

logger = logging.getLogger(__name__)

_QWEN25_ROPE = {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}
_QWEN25_VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16}
_QWEN25_VISION |= {"fullatt_block_indexes": [7, 15, 23, 31]}
# Config overrides of the tiny Qwen2.5-VL giving the published models' exact shapes (Qwen2.5-VL only).
SHAPES = {
    "tiny": {},
    "3b": {
        "text": {
            "hidden_size": 2048,
            "intermediate_size": 11008,
            "num_hidden_layers": 36,
            "num_attention_heads": 16,
            "num_key_value_heads": 2,
            "tie_word_embeddings": True,
            "max_position_embeddings": 128000,
            "rope_parameters": _QWEN25_ROPE,
        },
        "vision": _QWEN25_VISION | {"out_hidden_size": 2048},
        "vocab_size": 151936,
    },
    "7b": {
        "text": {
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "tie_word_embeddings": False,
            "max_position_embeddings": 128000,
            "rope_parameters": _QWEN25_ROPE,
        },
        "vision": _QWEN25_VISION | {"out_hidden_size": 3584},
        "vocab_size": 152064,
    },
}
_QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # Qwen2(.5)-VL's own bounds
_SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_attention_heads": 16, "patch_size": 14}
# SmolVLM-Instruct / SmolVLM2-2.2B: 384-pixel tiles, the longest side up to 4 tiles, 81 tokens each
_SMOLVLM = {
    "vision": _SO400M | {"image_size": 384},
    "config": {"scale_factor": 3},
    "image_processor": {"size": {"longest_edge": 4 * 384}, "max_image_size": {"longest_edge": 384}},
    "processor": {"image_seq_len": 81},
}
_GLM = {  # Glm4vConfig's vision defaults (GLM-4.1V; GLM-4.6V uses the same class and defaults)
    "vision": {"hidden_size": 1536, "intermediate_size": 13696, "num_heads": 12, "image_size": 336},
    "image_processor": {"size": {"shortest_edge": 112 * 112, "longest_edge": 28 * 28 * 15000}},
}
_PINPOINTS = [[384 * r, 384 * c] for r in range(1, 7) for c in range(1, 7)]  # LlavaOnevisionConfig's default
# The `vision` shape per tiny arch: the tiny language model with the real checkpoint's vision tower width
# (depth 2, the tiny arch's own) and its real tile / image sizes. `vision`: tower config overrides,
# `config`: model config keys, `image_processor` / `processor`: attributes set on the tiny processor.
# Widths: the transformers config classes' defaults where they are the real checkpoint's (named), else
# SigLIP-so400m's (LlavaOnevisionConfig's vision defaults), the tower of Gemma 3, SmolVLM and LLaVA-OneVision.
VISION_SHAPES = {
    # Qwen2VLConfig's vision defaults; `hidden_size` is the merger's output, the tiny text width
    "qwen2_vl": {
        "vision": {"embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16},
        "image_processor": {"size": _QWEN_PIXELS},
    },
    "qwen2_5_vl": {
        "vision": _QWEN25_VISION | {"depth": 2, "fullatt_block_indexes": [1], "out_hidden_size": 64},
        "image_processor": {"size": _QWEN_PIXELS},
    },
    # Qwen3VLConfig's vision defaults (patch 16); pixel bounds as the Qwen3-VL checkpoints' preprocessor
    # config is recalled to set them (256^2 to 4096^2 pixels): not checked against the file here
    "qwen3_vl": {
        "vision": {
            "hidden_size": 1152,
            "intermediate_size": 4304,
            "num_heads": 16,
            "num_position_embeddings": 2304,
        },
        "image_processor": {"size": {"shortest_edge": 256 * 256, "longest_edge": 4096 * 4096}},
    },
    "glm4v": _GLM,
    "glm46v": _GLM,
    # Gemma-3-4B-it: SigLIP-so400m on one 896-pixel image (recipes/gemma3); pooled to the tiny 64 tokens, not
    # 256 (the processor builds its image-token string once, at construction)
    "gemma3": {
        "vision": _SO400M | {"image_size": 896},
        "image_processor": {"size": {"height": 896, "width": 896}},
    },
    "idefics3": _SMOLVLM,  # recipes/smolvlm (SmolVLM-Instruct)
    "smolvlm": _SMOLVLM,  # recipes/smolvlm2 (SmolVLM2-2.2B-Instruct)
    # LLaVA-OneVision: SigLIP-so400m on 384-pixel tiles, 729 tokens each, anyres_max_9 over up to 6 x 6 tiles
    "llava_onevision": {
        "vision": _SO400M | {"image_size": 384},
        "config": {"image_grid_pinpoints": _PINPOINTS, "vision_aspect_ratio": "anyres_max_9"},
        "image_processor": {"size": {"height": 384, "width": 384}, "image_grid_pinpoints": _PINPOINTS},
        "processor": {"num_image_tokens": 729, "vision_aspect_ratio": "anyres_max_9"},
    },
    # InternVLConfig's vision defaults (InternViT-300M, InternVL3-2B's): 448-pixel tiles, 256 tokens each, up
    # to 12 tiles + a thumbnail (recipes/internvl)
    "internvl": {
        "vision": {
            "hidden_size": 1024,
            "intermediate_size": 4096,
            "num_attention_heads": 16,
            "image_size": 448,
        },
        "config": {"image_seq_length": 256},
        "image_processor": {"size": {"height": 448, "width": 448}, "max_patches": 12},
        "processor": {"image_seq_length": 256},
    },
}
_FAST = {"cache_implementation": "static", "compile_generation": True}
# name: (trainer class, extra config); "vanilla" runs TRL's own trainer on a plain GRPOConfig.
VARIANTS = {
    "vanilla": (trl.GRPOTrainer, {}),
    "mpcc_grpo": (MpccGRPOTrainer, {}),
    "mpcc_grpo_no_reuse": (MpccGRPOTrainer, {"reuse_image_features": False}),
    "mpcc_prior": (PriorSamplingGRPOTrainer, {"prior_mode": "replace"}),
    "mpcc_grpo_compiled": (MpccGRPOTrainer, _FAST),
    "mpcc_prior_compiled": (PriorSamplingGRPOTrainer, {"prior_mode": "replace", **_FAST}),
}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, SXM


@dataclass(frozen=True)
class BenchJob:
    """`mpcc bench grpo`: vanilla TRL's GRPOTrainer and mpcc's GRPO / prior-sampling trainers (plain and
    with compiled static-cache generation) on the same random-weight model and data, in one run on one
    device (the GPU when there is one): per-phase medians, tokens/s, MFU, peak memory and the speed-up
    over vanilla, written to grpo_bench.json and grpo_bench.md."""

    what: str = option(help="what to benchmark", choices=("grpo",), positional=True)
    out: Path = option(help="directory for grpo_bench.json and grpo_bench.md")


@dataclass
class BenchConfig:
    shape: str = option(
        "tiny",
        "model shape: tiny (CPU-sized), vision (tiny language model, the --arch checkpoint's vision tower "
        "width at depth 2, its real image sizes), 3b / 7b (Qwen2.5-VL-3B / 7B exactly, random weights; "
        "qwen2_5_vl only)",
        choices=(*SHAPES, "vision"),
    )
    arch: str = option("qwen2_5_vl", "model family of the random-weight model", choices=TINY_ARCHS)
    prompts: int = option(2, "prompts per step", minimum=1)
    generations: int = option(
        8, "G: samples per prompt (the prior variants generate G - 1 + the trace)", minimum=2
    )
    max_new_tokens: int = option(256, "new tokens per completion", minimum=1)
    steps: int = option(5, "timed steps, after warmup", minimum=1)
    warmup: int = option(2, "untimed first steps", minimum=0)
    image_size: tuple[int, int] = (640, 480)
    variants: tuple[str, ...] = option(tuple(VARIANTS), f"comma-separated of {', '.join(VARIANTS)}")
    gradient_checkpointing: bool = True
    seed: int = 0

    def __post_init__(self):
        if self.shape not in (*SHAPES, "vision"):
            raise ConfigError(f"shape must be one of {[*SHAPES, 'vision']}, got {self.shape!r}")
        if self.arch not in TINY_ARCHS:
            raise ConfigError(f"arch must be one of {TINY_ARCHS}, got {self.arch!r}")
        if self.shape in ("3b", "7b") and self.arch != "qwen2_5_vl":
            raise ConfigError(
                f"shape {self.shape} is Qwen2.5-VL's only; --arch {self.arch} has tiny and vision"
            )
        unknown = set(self.variants) - set(VARIANTS)
        if unknown or not self.variants:
            raise ConfigError(f"variants must be a non-empty subset of {list(VARIANTS)}, got {self.variants}")
        validate_bounds(self)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_dataset(config: BenchConfig, root: Path):
    """Masked synthetic scenes at the requested size, with template traces (enough rows for every step)."""
    rows_needed = config.prompts * (config.steps + config.warmup)
    scenes = root / "scenes"
    generate_scenes(scenes, num_images=max(8, rows_needed), seed=config.seed, image_size=config.image_size)
    build(
        scenes / "instances.json",
        scenes / "images",
        root / "train",
        BuildConfig("train", template_traces=True),
    )
    dataset = load_dataset(root / "train").shuffle(seed=config.seed)
    if len(dataset) < rows_needed:
        raise ConfigError(
            f"the benchmark scenes gave {len(dataset)} rows, fewer than the {rows_needed} needed"
        )
    return dataset.select(range(rows_needed))


def bench_model(config: BenchConfig):
    """The benchmark's random-weight `config.arch` model of `config.shape`, its vision tower frozen, and its
    processor; real shapes see real image sizes."""
    device = best_device()
    kwargs = {"seed": config.seed, "dtype": torch.bfloat16 if device.type == "cuda" else torch.float32}
    if config.shape == "vision":
        spec = VISION_SHAPES[config.arch]
        model, processor = random_vlm(
            config.arch, vision=spec["vision"], config=spec.get("config"), device=device, **kwargs
        )
        settings = (
            (processor.image_processor, spec["image_processor"]),
            (processor, spec.get("processor", {})),
        )
    else:
        model, processor = random_vlm(config.arch, device=device, **kwargs, **SHAPES[config.shape])
        real = config.shape != "tiny"
        settings = ((processor.image_processor, {"size": _QWEN_PIXELS} if real else {}),)
    for target, values in settings:
        for key, value in values.items():
            setattr(target, key, SizeDict(**value) if key == "size" else value)
    freeze_vision_tower(model)  # as `mpcc train` does by default
    return model, processor


def _patches(pixel_values: torch.Tensor, patch_size: int | list[int]) -> int:
    """The patches a vision tower encodes from `pixel_values`, per family layout: one row per patch (Qwen-VL,
    GLM), else images or tiles (..., C, H, W) of (H // patch) x (W // patch) patches each; an all-zero tile is
    batch padding, which Idefics3 and LLaVA-OneVision drop before the tower (normalised pixels are never
    all exactly zero)."""
    if pixel_values.dim() == 2:
        return pixel_values.shape[0]
    tiles = pixel_values.flatten(0, -4)
    height, width = patch_size if isinstance(patch_size, (list, tuple)) else (patch_size, patch_size)
    real = int(tiles.flatten(1).any(1).sum())
    return real * (tiles.shape[-2] // height) * (tiles.shape[-1] // width)


class _PhaseTimer(TrainerCallback):
    """Times each step and the generation / scoring calls inside it, and counts their tokens."""

    def __init__(self, trainer):
        self.trainer, self.steps, self._now = trainer, [], defaultdict(float)
        for method, phase in (("_generate_single_turn", "generation"), ("_calculate_rewards", "scoring")):
            self._time(method, phase)
        rollout = trainer._generate_and_score_completions

        def counted(*args, **kwargs):
            out = rollout(*args, **kwargs)
            generated = out["completion_mask"].sum(1)
            trace = torch.tensor(getattr(trainer, "_trace_slot", []) or [False] * len(generated))
            self._now["generated_tokens"] += generated[~trace.to(generated.device)].sum().item()
            self._now["train_tokens"] += (out["prompt_mask"].sum() + out["completion_mask"].sum()).item()
            self._now["patches"] += _patches(out["pixel_values"], self.patch_size)
            return out

        trainer._generate_and_score_completions = counted
        self.patch_size = trainer.model.config.vision_config.patch_size
        vision_tower(trainer.model).register_forward_pre_hook(self._count_encoding, with_kwargs=True)

    def _count_encoding(self, module, args, kwargs):
        self._now["vision_calls"] += 1
        pixels = args[0] if args else kwargs.get("pixel_values", kwargs.get("hidden_states"))
        self._now["patches_encoded"] += _patches(pixels, self.patch_size)

    def _time(self, method: str, phase: str) -> None:
        inner = getattr(self.trainer, method)

        def timed(*args, **kwargs):
            _sync()
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                _sync()
                self._now[phase] += time.perf_counter() - start

        setattr(self.trainer, method, timed)

    def on_step_begin(self, args, state, control, **kwargs):
        _sync()
        self._now = defaultdict(float, start=time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        _sync()
        now = self._now
        step = {"step_s": time.perf_counter() - now.pop("start")} | dict(now)
        step["training_s"] = step["step_s"] - now["generation"] - now["scoring"]
        self.steps.append(step)


def _flops(model, step: dict) -> float:
    vision = sum(p.numel() for p in vision_tower(model).parameters())
    text = sum(p.numel() for p in model.parameters()) - vision
    embeddings = model.get_input_embeddings().weight
    if embeddings is not model.get_output_embeddings().weight:  # lookups cost no FLOPs; a tied head does
        text -= embeddings.numel()
    return 6 * text * step["train_tokens"] + 2 * vision * step["patches"]


def run_variant(name: str, config: BenchConfig, dataset, out: Path) -> dict:
    trainer_class, extra = VARIANTS[name]
    model, processor = bench_model(config)
    device = best_device()
    common = {
        "output_dir": str(out / name),
        "per_device_train_batch_size": config.prompts * config.generations,
        "num_generations": config.generations,
        "max_completion_length": config.max_new_tokens,
        "max_steps": config.steps + config.warmup,
        "learning_rate": 1e-6,
        "temperature": 1.0,
        "beta": 0.0,
        "loss_type": "grpo",
        "gradient_checkpointing": config.gradient_checkpointing,
        "bf16": device.type == "cuda",
        "use_cpu": device.type == "cpu",
        "save_strategy": "no",
        "logging_steps": 1,
        "report_to": "none",
        "seed": config.seed,
        "disable_tqdm": True,
    }
    args = trl.GRPOConfig(**common) if name == "vanilla" else MpccGRPOConfig(**common, **extra)
    funcs, args.reward_weights = resolve_rewards("default")
    trainer = trainer_class(
        model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=processor
    )
    timer = _PhaseTimer(trainer)
    trainer.add_callback(timer)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    steps = timer.steps[config.warmup :]
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    peak_tflops = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in _device_name()), None)
    medians = {k: statistics.median(s[k] for s in steps) for k in ("step_s", "generation", "scoring")}
    medians["training_s"] = statistics.median(s["training_s"] for s in steps)
    result = {
        "step_s": medians["step_s"],
        "generation_s": medians["generation"],
        "scoring_s": medians["scoring"],
        "training_s": medians["training_s"],
        "generated_tokens_per_s": statistics.median(s["generated_tokens"] / s["generation"] for s in steps),
        "train_tokens_per_s": statistics.median(s["train_tokens"] / s["training_s"] for s in steps),
        "vision_calls": statistics.median(s["vision_calls"] for s in steps),
        "patches_encoded": statistics.median(s["patches_encoded"] for s in steps),
        "mfu": None
        if peak_tflops is None
        else statistics.median(_flops(model, s) / s["training_s"] / (peak_tflops * 1e12) for s in steps),
        "peak_memory_gib": peak,
        "steps": steps,
    }
    del trainer, model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def _device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"


def run_bench(config: BenchConfig, out: str | Path, command: str = "") -> dict:
    """Run every variant, write `grpo_bench.json` and `grpo_bench.md` under `out`, return the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        dataset = bench_dataset(config, Path(tmp))
        variants = {}
        for name in config.variants:
            logger.info("benchmarking %s (%s %s shape)", name, config.arch, config.shape)
            variants[name] = run_variant(name, config, dataset, Path(tmp))
    base = variants.get("vanilla", {}).get("step_s")
    for result in variants.values():
        result["speedup_vs_vanilla"] = None if base is None else base / result["step_s"]
    report = {
        "command": command,
        "device": _device_name(),
        "gpu": torch.cuda.is_available(),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "config": asdict(config),
        "variants": variants,
    }
    (out / "grpo_bench.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out / "grpo_bench.md").write_text(bench_markdown(report), encoding="utf-8")
    return report
