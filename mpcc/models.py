"""Loading vision-language models and processors of the supported families (mpcc.families), LoRA, and
tiny random-weight models for offline tests.

Every folder mpcc writes names only stock transformers classes, so stock `AutoProcessor` /
`AutoModelForImageTextToText`, vLLM and TRL's `vllm-serve` load it without mpcc. A family's loading class
(e.g. an image-only processor, where the stock one wants a torchvision video processor) saves itself as
the stock class.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING,
    AutoConfig,
    AutoModelForImageTextToText,
    AutoProcessor,
    GenerationConfig,
    ProcessorMixin,
)
from transformers.image_utils import SizeDict

import mpcc
from mpcc.errors import ConfigError, InputError, MissingInputError, UnreadableInputError
from mpcc.families import FAMILIES, TINY_ARCHS, Family, family, family_of_processor
from mpcc.families.qwen import (
    Qwen2_5_VLImageOnlyProcessor,
    Qwen2VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
)
from mpcc.inputs import read_json
from mpcc.options import option
from mpcc.outputs.checks import check_output
from mpcc.outputs.marker import MARKER
from mpcc.outputs.staging import staged_output

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------------
# Processors


def _is_missing_local_path(name_or_path: str | os.PathLike) -> bool:
    text = str(name_or_path)
    return not Path(text).expanduser().exists() and (os.path.isabs(text) or text.startswith((".", "~")))


def _load_config(name_or_path: str | os.PathLike):
    """The checkpoint's config, with an error that names the path (and no hub lookup for a local path).
    A local config.json that is not JSON is named as such: the loaders' error reads as a missing config,
    which load_processor takes for a processor saved without its model."""
    if _is_missing_local_path(name_or_path):
        raise MissingInputError(f"no model at {str(name_or_path)!r}: the path does not exist")
    file = Path(name_or_path) / "config.json"
    if file.is_file():
        try:
            read_json(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{file}: invalid JSON ({e})") from e
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as e:
        raise UnreadableInputError(f"cannot load a model config from {str(name_or_path)!r}: {e}") from e


def set_pixel_bounds(image_processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Set the Qwen-style bounds on resized image area (size.shortest_edge / size.longest_edge)."""
    if min_pixels is None and max_pixels is None:
        return
    size = dict(image_processor.size)
    if not {"shortest_edge", "longest_edge"} <= size.keys():
        raise ConfigError(f"{type(image_processor).__name__} has no min/max pixel bounds (size={size})")
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if not 0 < size["shortest_edge"] <= size["longest_edge"]:
        raise ConfigError(
            f"need 0 < min_pixels <= max_pixels, got {size['shortest_edge']} and {size['longest_edge']}"
        )
    image_processor.size = SizeDict(**size)


def _family_or_none(kind: str) -> Family | None:
    try:
        return family(kind)
    except ConfigError:
        return None


def _named_processor_class(name_or_path: str | os.PathLike) -> str | None:
    try:
        return ProcessorMixin.get_processor_dict(name_or_path)[0].get("processor_class")
    except (OSError, ValueError):
        return None


def load_processor(
    name_or_path: str | os.PathLike, min_pixels: int | None = None, max_pixels: int | None = None
) -> ProcessorMixin:
    """A processor with an image processor, whether or not torchvision is there: its family's loading
    class (mpcc.families), else AutoProcessor's. Raises rather than return a tokenizer-only processor,
    which TRL would silently train as text-only."""
    try:
        config = _load_config(name_or_path)
    except MissingInputError:
        raise
    except UnreadableInputError:  # a processor saved without its model: the (stock) class its config names
        found = family_of_processor(_named_processor_class(name_or_path))
    else:
        found = _family_or_none(config.model_type)
    processor_class = found.processor if found is not None else AutoProcessor
    try:
        processor = processor_class.from_pretrained(name_or_path)
    except (OSError, ValueError, ImportError) as e:
        raise UnreadableInputError(f"cannot load a processor from {str(name_or_path)!r}: {e}") from e
    if getattr(processor, "image_processor", None) is None:
        raise InputError(
            f"{str(name_or_path)!r} gave a {type(processor).__name__} without an image processor; "
            "mpcc needs a vision-language processor (is this an image-text-to-text checkpoint?)"
        )
    set_pixel_bounds(processor.image_processor, min_pixels, max_pixels)
    return processor


# --------------------------------------------------------------------------------------------------
# Models

_DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def check_safetensors(folder: str | os.PathLike) -> list[Path]:
    """Every `*.safetensors` in `folder` is whole: its size is 8 + the header length + the end offset of its
    last tensor (the safetensors layout), and every shard a `*.safetensors.index.json` names exists. Reads
    only the headers, so a truncated or missing file is named before any weights are loaded. Returns the
    files checked."""
    folder = Path(folder)
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            shards = set(read_json(index)["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError) as e:
            raise InputError(f"{index}: not a readable safetensors index ({type(e).__name__}: {e})") from e
        missing = sorted(name for name in shards if not (folder / name).is_file())
        if missing:
            raise MissingInputError(f"{index}: names weight files that are missing: {missing}")
    files = sorted(folder.glob("*.safetensors"))
    for file in files:
        size = file.stat().st_size
        with open(file, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or 8 + length > size:
                raise InputError(f"{file}: truncated: {size} bytes, header says at least {8 + length}")
            raw = f.read(length)
        try:
            header = json.loads(raw)
            end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            raise InputError(f"{file}: not a readable safetensors header ({type(e).__name__}: {e})") from e
        if size != 8 + length + end:
            state = "truncated" if size < 8 + length + end else "corrupt"
            raise InputError(f"{file}: {state}: {size} bytes, header says {8 + length + end}")
    return files


def load_model(name_or_path: str | os.PathLike, dtype: str = "auto", attn_implementation: str | None = None):
    """An image-text-to-text model; refuses text-only checkpoints and truncated weight files up front
    instead of failing in training."""
    if dtype not in _DTYPES:
        raise ConfigError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    config = _load_config(name_or_path)
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise InputError(
            f"{str(name_or_path)!r} is a {config.model_type!r} model, not an image-text-to-text "
            "(vision-language) model such as Qwen2.5-VL"
        )
    family(config.model_type)  # a vision-language model of a family mpcc does not know: refused here
    if Path(name_or_path).is_dir():
        check_safetensors(name_or_path)
    kwargs = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return AutoModelForImageTextToText.from_pretrained(
        name_or_path, config=config, dtype=_DTYPES[dtype], **kwargs
    )


def best_device() -> torch.device:
    """The GPU when there is one, else the CPU: where mpcc runs a model it loads itself."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def unwrap_peft(model):
    """The transformers model under a peft wrapper (LoRA), or `model` itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def vision_tower(model) -> torch.nn.Module | None:
    """The image encoder, projector included (Qwen VL in transformers 5: `model.model.visual`), or None."""
    base = unwrap_peft(model)
    tower = base.get_encoder(modality="image")
    return None if tower is base else tower  # get_encoder falls back to the model itself


def freeze_vision_tower(model) -> int:
    """Stop gradients to the vision tower; returns how many parameters were frozen."""
    tower = vision_tower(model)
    if tower is None:
        raise InputError(f"{type(model).__name__} has no vision tower to freeze")
    frozen = 0
    for p in tower.parameters():
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def keep_lora_off_vision_tower(peft_config, model):
    """Exclude the vision tower from a LoRA config (e.g. TRL's `get_peft_config(model_args)`)."""
    tower = vision_tower(model)
    if tower is None:
        raise InputError(f"{type(model).__name__} has no vision tower to keep LoRA off")
    prefix = next(name for name, module in model.named_modules() if module is tower)
    peft_config.exclude_modules = re.escape(prefix) + r"(\..*)?"
    return peft_config


TINY_PREFIX = "tiny:"


def model_type(name_or_path: str) -> str:
    """The model's type (`qwen2_5_vl`) from its config; a `tiny:<arch>` spec's without building it."""
    if name_or_path.startswith(TINY_PREFIX):
        return name_or_path[len(TINY_PREFIX) :]
    return _load_config(name_or_path).model_type


def check_grounding(name_or_path: str | os.PathLike) -> None:
    """Refuse, in one line and before anything is generated, a model whose family cannot map its image
    tokens to image regions with this processor (e.g. Gemma 3 with pan-and-scan)."""
    config = _load_config(name_or_path)
    reason = family(config.model_type).grounding_refusal(config, load_processor(name_or_path))
    if reason is not None:
        raise ConfigError(f"the evidence diagnostic cannot run: {reason}")


def resolve_model_path(name_or_path: str) -> str:
    """`tiny:<arch>` is a tiny random-weight model built on first use and cached; anything else as given."""
    if name_or_path.startswith(TINY_PREFIX):
        return str(ensure_tiny_model(name_or_path[len(TINY_PREFIX) :]))
    return name_or_path


# --------------------------------------------------------------------------------------------------
# Tiny models

TINY_MAX_VOCAB = 2048  # the built-in corpus yields fewer (about 1,150 tokens)
_TINY_FORMAT = 3  # bump when the tiny build changes, so caches rebuild (3: '>' never merged with answers)

# The names and order of Qwen's special tokens (ids differ: ours come first in the small vocab).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def chat_template(image_placeholder: str) -> str:
    """Qwen-style: `<|im_start|>role\\n...<|im_end|>\\n`; content a string or a list of text/image/video
    parts, an image written as the family's placeholder; assistant turns are marked for
    `return_assistant_tokens_mask` (TRL's assistant_only_loss). Newlines after block tags are written as
    expressions: transformers renders templates with trim_blocks."""
    return _CHAT_TEMPLATE.replace("IMAGE_PLACEHOLDER", image_placeholder)


_CHAT_TEMPLATE = (
    "{% macro render(content) %}{% if content is string %}{{ content }}{% else %}"
    "{% for part in content %}"
    "{% if part['type'] == 'image' %}IMAGE_PLACEHOLDER"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% endmacro %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ render(message['content']) }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ render(message['content']) }}<|im_end|>{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_BASE_CORPUS = """\
You are a careful visual reasoner. First think through the question step by step, then answer.
<think> The table shows a plate, a fork and a cup, so the hidden object is likely a knife. </think>
<answer> knife </answer>
<think> I can see a road, a traffic light and a bus stop. A car drives here. </think><answer> car </answer>
<think>There is grass, a fence and a ball near the mask.</think><answer> dog </answer>
One object in this image is hidden under a black mask. Use the visible context around the mask and
commonsense to infer what it is. Which object is most likely hidden? Is the hidden object a cat?
Answer yes or no. Give the letter of the correct option: A, B, C, D, E, F or G.
The person is sitting on a bench in the park next to a tree, holding an umbrella in the rain.
A kitchen with a refrigerator, an oven, a sink and a microwave on the counter near the window.
Two people ride bicycles down the street while a truck waits at the red light behind them.
In the living room there is a couch, a chair, a television, a remote and a book on a small table.
The bathroom has a toilet, a sink, a mirror and a toothbrush in a cup beside the towel.
On the beach a boy flies a kite, a girl holds a surfboard and a dog runs along the water.
At the airport an airplane stands by the gate while a man pulls a suitcase across the floor.
The giraffe and the zebra graze in the field; an elephant drinks from the river under the sky.
A pizza, a sandwich, a bowl of fruit, a banana, an apple and an orange lie on the wooden table.
The desk holds a laptop, a keyboard, a mouse and a cell phone; a clock hangs on the white wall.
What is hidden? It is small, round, large, long, red, blue, green, yellow, brown, gray or white.
The mask covers the left side, the right side, the top, the bottom or the center of the picture.
This is because objects like these usually appear together in the same scene, so the answer is clear.
"""


def _corpus() -> list[str]:
    """English text for the tiny tokenizer: the built-in lines, the MPCC prompts and the COCO names."""
    from mpcc.data.coco_categories import COCO_CATEGORIES

    lines = _BASE_CORPUS.splitlines()
    names = [c["name"] for c in COCO_CATEGORIES]
    # No ">" directly before a word anywhere in the corpus: BPE then never merges the tag's ">" with an
    # answer, so `<answer>B</answer>` holds the very token "B" of the options' "B. cup" (a model learns
    # to copy it) and every format's answer follows the same bare ">" (one pattern for all formats).
    lines += names + [f"<think> The hidden object is a {n}. </think><answer> {n} </answer>" for n in names]
    lines += [f"{a}. {n}" for a, n in zip("ABCDEFG", names)] + ["yes", "no", "</think>", "</answer>"]
    try:  # the live prompt wording, so prompts tokenize compactly even after edits
        from mpcc.data.masking import FILL_WORDS
        from mpcc.data.prompts import SYSTEM_PROMPT, choice_question, open_question, yesno_question

        lines.append(SYSTEM_PROMPT)
        for fill in FILL_WORDS:
            lines += [open_question(fill), choice_question(fill, names[:7]), yesno_question(fill, names[0])]
    except (ImportError, AttributeError, TypeError, KeyError) as e:  # keep the tiny build independent
        logger.warning("tiny tokenizer corpus without the MPCC prompts (%s)", e)
    return lines


def _train_tokenizer(corpus: list[str], vocab_size: int | None, arch_family: Family):
    """A byte-level BPE Qwen2Tokenizer trained here, with Qwen's pre-tokenization and special tokens, the
    family's own special tokens after them, and its chat template.

    `vocab_size` pads the vocabulary with filler entries that no merge produces: they decode, but
    never come out of encoding; real-size embedding tables for benchmarks.
    """
    from tokenizers import Tokenizer, models, trainers
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    # Train on the exact pipeline Qwen2Tokenizer rebuilds around its vocab and merges.
    pipeline = Qwen2Tokenizer(vocab={SPECIAL_TOKENS[0]: 0}, merges=[]).backend_tokenizer
    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.pre_tokenizer = pipeline.normalizer, pipeline.pre_tokenizer
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_MAX_VOCAB,
        special_tokens=[*SPECIAL_TOKENS, *arch_family.special_tokens],
        initial_alphabet=ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    bpe = json.loads(tok.to_str())["model"]
    vocab = bpe["vocab"] | {f"filler{i}": i for i in range(len(bpe["vocab"]), vocab_size or 0)}
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in bpe["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[*SPECIAL_TOKENS[1:], *arch_family.special_tokens],
        **arch_family.named_tokens,
        model_max_length=32768,
    )
    tokenizer.chat_template = chat_template(arch_family.image_placeholder)
    return tokenizer


def _tiny_family(arch: str) -> Family:
    if arch not in FAMILIES:
        raise ConfigError(f"arch must be one of {TINY_ARCHS}, got {arch!r}")
    return FAMILIES[arch]


def random_vlm(
    arch: str,
    *,
    text: dict | None = None,
    vision: dict | None = None,
    vocab_size: int | None = None,
    config: dict | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
):
    """A random-weight `arch` model and its processor, built offline.

    The tiny shape by default; `text` / `vision` override its text / vision config, `config` its top-level
    keys (e.g. Idefics3's `scale_factor`) and `vocab_size` pads the tokenizer, so benchmarks get real shapes
    (e.g. Qwen2.5-VL-3B's) without downloading anything.
    """
    arch_family = _tiny_family(arch)
    tokenizer = _train_tokenizer(_corpus(), vocab_size, arch_family)
    processor = arch_family.processor(
        image_processor=arch_family.tiny_image_processor(),
        tokenizer=tokenizer,
        chat_template=tokenizer.chat_template,
        **arch_family.tiny_processor_kwargs,
    )
    model_config = arch_family.tiny_config(tokenizer, text or {}, vision or {})
    for key, value in (config or {}).items():
        setattr(model_config, key, value)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), device:
        torch.manual_seed(seed)  # seeded without touching the caller's random state
        model = AutoModelForImageTextToText.from_config(model_config, dtype=dtype)
    eos, pad = model_config.text_config.eos_token_id, model_config.text_config.pad_token_id
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    return model, processor


@dataclass(frozen=True, kw_only=True)
class TinyModelJob:
    """`mpcc tiny-model`: a tiny model of any supported family (mpcc.families) with random weights, a
    locally trained tokenizer and a chat template, saved with save_pretrained. Nothing is downloaded."""

    arch: str = option("qwen2_5_vl", "architecture", choices=TINY_ARCHS)
    out: Path = option(help="directory to write")
    seed: int = option(0, "weight seed", minimum=0)
    overwrite: bool = option(False, "replace a previous mpcc output at --out (never other files)")


def build_tiny_model(
    arch: str, out_dir: str | os.PathLike, seed: int = TinyModelJob.seed, overwrite: bool = False
) -> Path:
    """Write a tiny random-weight `arch` model and its processor to `out_dir`, whole or not at all
    (mpcc.outputs); offline; a seed fixes it."""
    out = Path(out_dir)
    check_output(out, overwrite)
    model, processor = random_vlm(arch, seed=seed)
    with staged_output(out, overwrite) as staging:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
    n, vocab = sum(p.numel() for p in model.parameters()), len(processor.tokenizer)
    logger.info("tiny %s model (%d parameters, vocab %d) written to %s", arch, n, vocab, out)
    return out


def _tiny_fingerprint(arch: str, seed: int) -> str:
    """Changes whenever what build_tiny_model would write changes, so a stale cache is never reused."""
    import transformers

    recipe = {
        "format": _TINY_FORMAT,
        "arch": arch,
        "seed": seed,
        "transformers": transformers.__version__,
        "corpus": _corpus(),
        "template": chat_template(_tiny_family(arch).image_placeholder),
        "tokens": [_tiny_family(arch).special_tokens, _tiny_family(arch).named_tokens],
        "vocab": TINY_MAX_VOCAB,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:12]


def ensure_tiny_model(arch: str, cache_dir: str | os.PathLike | None = None, seed: int = 0) -> Path:
    """The cached tiny model for `arch` (`<cache>/<arch>-<fingerprint>`), built on first use.

    Built in a staging directory and renamed into place (mpcc.outputs), so racing processes never see
    a partial model: the first rename wins and the others discard their copy. Built by a child process: under
    DeepSpeed ZeRO-3, creating a model here is a collective (zero.Init) that only the main process
    would enter while the other ranks wait for it, and the run would hang.
    """
    _tiny_family(arch)
    root = Path(cache_dir) if cache_dir is not None else mpcc.cache_dir() / "tiny"
    final = root / f"{arch}-{_tiny_fingerprint(arch, seed)}"
    if final.is_dir():
        return final
    try:
        with staged_output(final, first_wins=True) as staging:
            built = staging / "tiny"  # the child's own output (staged too), moved up into this staging folder
            command = [sys.executable, "-m", "mpcc", "tiny-model", "--arch", arch, "--out", str(built)]
            child = subprocess.run([*command, "--seed", str(seed)], capture_output=True, text=True)
            if child.returncode != 0:
                raise RuntimeError(f"building the tiny {arch} model failed:\n{child.stderr[-3000:]}")
            for path in built.iterdir():
                if path.name != MARKER:  # this staging folder has its own
                    path.rename(staging / path.name)
            shutil.rmtree(built)
    except OSError as e:
        raise ConfigError(
            f"cannot write the tiny-model cache {root} ({e.filename or root}: {e.strerror}); "
            "set MPCC_CACHE to a writable folder"
        ) from e
    return final


__all__ = [
    "chat_template",
    "TINY_ARCHS",
    "Qwen2VLImageOnlyProcessor",
    "Qwen2_5_VLImageOnlyProcessor",
    "Qwen3VLImageOnlyProcessor",
    "keep_lora_off_vision_tower",
    "build_tiny_model",
    "ensure_tiny_model",
    "freeze_vision_tower",
    "load_model",
    "load_processor",
    "resolve_model_path",
    "set_pixel_bounds",
    "unwrap_peft",
    "vision_tower",
]
