"""Multi-node launch under SLURM: `accelerate launch` arguments derived from SLURM's environment.

launch/slurm/train.sbatch runs `python -m mpcc.launch train RECIPE [--key value ...]` once per node
through srun; this module reads that node's SLURM variables and the recipe, then execs `accelerate
launch ... -m mpcc.train RECIPE ...` (or, on the vLLM node of a `vllm_mode: server` recipe, `trl
vllm-serve`). The derivation is pure (an environment mapping in, arguments out) so it is tested with
the variables SLURM sets; only `main` touches the process.

The launched processes ignore SIGUSR1, which srun forwards to every process of the step: only the
training processes, which install a handler at train begin (mpcc.training.preemption), act on the
preemption warning, and the launchers between them survive it.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mpcc.errors import ConfigError
from mpcc.recipes import read, resolve

logger = logging.getLogger(__name__)

PORT_BASE, PORT_SPAN = 10000, 20000  # job-derived main ports stay below Linux's ephemeral range


def _split_top_level(expr: str) -> list[str]:
    """Split at commas outside brackets: `gpu-[01-03,07],login1` -> `gpu-[01-03,07]`, `login1`."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(expr):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if depth not in (0, 1):
            raise ConfigError(f"hostlist {expr!r}: unbalanced brackets")
        if char == "," and depth == 0:
            parts.append(expr[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"hostlist {expr!r}: unbalanced brackets")
    parts.append(expr[start:])
    return [p.strip() for p in parts if p.strip()]


def _expand_ranges(ranges: str, expr: str) -> list[str]:
    """`01-03,07` -> 01 02 03 07; the lower bound's width sets the zero padding, as SLURM does."""
    out = []
    for item in ranges.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:-(\d+))?\s*", item)
        if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
            raise ConfigError(f"hostlist {expr!r}: invalid range {item!r}")
        low, high = match[1], match[2] or match[1]
        out += [str(n).zfill(len(low)) for n in range(int(low), int(high) + 1)]
    return out


def expand_hostlist(expr: str) -> list[str]:
    """Host names of a SLURM hostlist expression, in order (what `scontrol show hostnames` prints).

    `gpu-[01-03,07],login1` -> gpu-01 gpu-02 gpu-03 gpu-07 login1; several bracket groups in one name
    (`rack[1-2]-n[1-2]`) expand as their product.
    """
    hosts = []
    for pattern in _split_top_level(expr):
        pieces = re.split(r"\[([^\[\]]*)\]", pattern)  # text, ranges, text, ranges, ..., text
        if any("[" in p or "]" in p for p in pieces[::2]):
            raise ConfigError(f"hostlist {expr!r}: unbalanced brackets")
        choices = [[p] if i % 2 == 0 else _expand_ranges(p, expr) for i, p in enumerate(pieces)]
        hosts += ["".join(c) for c in itertools.product(*choices)]
    if not hosts:
        raise ConfigError(f"hostlist {expr!r}: no host names")
    return hosts


def _require(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        if env.get(name, "").strip():
            return env[name].strip()
    raise ConfigError(f"{' / '.join(names)} not set: run this inside a SLURM job step (srun)")


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError as e:
        raise ConfigError(f"{name}={env[name]!r} is not an integer") from e


def gpus_per_node(env: Mapping[str, str]) -> int:
    """GPUs this node gives the job: SLURM_GPUS_ON_NODE, else SLURM_GPUS_PER_NODE (`8`, `h100:8`), else 0."""
    if env.get("SLURM_GPUS_ON_NODE", "").strip():
        return _int(env, "SLURM_GPUS_ON_NODE")
    per_node = env.get("SLURM_GPUS_PER_NODE", "").strip()
    if not per_node:
        return 0
    match = re.fullmatch(r"(?:[\w.-]+:)*(\d+)", per_node)
    if match is None:
        raise ConfigError(f"SLURM_GPUS_PER_NODE={per_node!r}: expected a count like 8 or h100:8")
    return int(match[1])


@dataclass(frozen=True)
class Allocation:
    """What one node of a job needs to know to join the training run."""

    nodes: tuple[str, ...]  # the job's nodes, in SLURM's order
    node_rank: int  # this node's index in `nodes`
    gpus: int  # per node; 0 = a CPU-only allocation
    job_id: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Allocation:
        nodelist = _require(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST")
        nodes = tuple(expand_hostlist(nodelist))
        if env.get("SLURM_JOB_NUM_NODES", "").strip() and _int(env, "SLURM_JOB_NUM_NODES") != len(nodes):
            raise ConfigError(
                f"the node list {nodelist!r} names {len(nodes)} nodes but "
                f"SLURM_JOB_NUM_NODES={env['SLURM_JOB_NUM_NODES']}"
            )
        rank_var = "SLURM_NODEID" if env.get("SLURM_NODEID", "").strip() else "SLURM_PROCID"
        _require(env, rank_var)
        rank = _int(env, rank_var)
        if not 0 <= rank < len(nodes):
            raise ConfigError(f"{rank_var}={rank} is outside the job's {len(nodes)} nodes")
        return cls(nodes, rank, gpus_per_node(env), _require(env, "SLURM_JOB_ID"))


def main_port(env: Mapping[str, str]) -> int:
    """MASTER_PORT when set, else a port derived from the job id: the same on every node and across
    requeues, and different for jobs that share a node."""
    if env.get("MASTER_PORT", "").strip():
        return _int(env, "MASTER_PORT")
    job = _require(env, "SLURM_JOB_ID")
    return PORT_BASE + int(re.sub(r"\D", "", job) or 0) % PORT_SPAN


def accelerate_args(
    env: Mapping[str, str], config_file: str | None = None, vllm_server: bool = False
) -> list[str]:
    """`accelerate launch` options for this node (before `-m mpcc.train ...`).

    One process per GPU on every training node; a CPU-only allocation runs one process per node. With
    `vllm_server`, the job's last node serves generations and the others train. MASTER_ADDR overrides
    the main address (the first training node), e.g. to pick a faster interface's host name.
    """
    alloc = Allocation.from_env(env)
    nodes = alloc.nodes
    if vllm_server:
        if len(nodes) < 2:
            raise ConfigError("vllm_mode: server needs at least 2 nodes (the last one serves vLLM)")
        nodes = nodes[:-1]
        if alloc.node_rank == len(nodes):
            raise ConfigError(f"{alloc.nodes[-1]} is the vLLM server node: it does not train")
    machines = len(nodes)
    args = [
        "--num_machines",
        str(machines),
        "--num_processes",
        str(machines * max(alloc.gpus, 1)),
        "--machine_rank",
        str(alloc.node_rank),
        "--main_process_ip",
        env.get("MASTER_ADDR", "").strip() or nodes[0],
        "--main_process_port",
        str(main_port(env)),
    ]
    if alloc.gpus == 0:  # the recipe's Accelerate config is for GPUs: plain CPU processes instead
        if config_file:
            logger.warning("CPU-only allocation: running without the Accelerate config %s", config_file)
        # several CPU nodes need torchrun's rendezvous (accelerate's multi-GPU launcher, gloo on CPU)
        mode = ["--multi_gpu"] if machines > 1 else ["--cpu"]
        return [*mode, *args, "--mixed_precision", "no", "--dynamo_backend", "no"]
    if config_file:
        return ["--config_file", str(config_file), *args]
    mode = ["--multi_gpu"] if machines * alloc.gpus > 1 else []
    return [*mode, *args, "--mixed_precision", "no", "--dynamo_backend", "no"]


def vllm_serve_args(env: Mapping[str, str], model: str, port: int) -> list[str]:
    """`trl vllm-serve` options for the server node: the model over VLLM_TENSOR_PARALLEL_SIZE GPUs
    (default 1; TRL does not support data parallelism for dense models)."""
    tensor_parallel = _int(env, "VLLM_TENSOR_PARALLEL_SIZE") if env.get("VLLM_TENSOR_PARALLEL_SIZE") else 1
    gpus = gpus_per_node(env)
    if gpus and tensor_parallel > gpus:
        raise ConfigError(f"VLLM_TENSOR_PARALLEL_SIZE={tensor_parallel} exceeds the node's {gpus} GPUs")
    return [
        "--model",
        model,
        "--tensor_parallel_size",
        str(tensor_parallel),
        "--host",
        "0.0.0.0",
        "--port",
        str(port),
    ]


@dataclass(frozen=True)
class RecipeLaunch:
    """The few recipe keys that decide how a run is launched (mpcc.train parses and checks the rest)."""

    accelerate_config: str | None  # a file path
    vllm_server: bool
    model: str
    vllm_port: int


LAUNCH_KEYS = ("model_name_or_path", "accelerate_config", "use_vllm", "vllm_mode", "vllm_server_port")


def _launch_keys() -> type:
    """A dataclass of just the launch keys, each declared (type, default) as in the config class
    `mpcc.train` parses it with (the three never share a key): the launcher reads them the way training
    will, without training's full checks (which need the training machine's hardware)."""
    from trl import ModelConfig

    from mpcc.training.config import MpccGRPOConfig, RunArguments

    owned = {
        f.name: f for cls in (ModelConfig, RunArguments, MpccGRPOConfig) for f in dataclasses.fields(cls)
    }
    declared = [(k, owned[k].type, dataclasses.field(default=owned[k].default)) for k in LAUNCH_KEYS]
    return dataclasses.make_dataclass("LaunchKeys", declared)


def read_recipe(recipe: str | Path, overrides: Sequence[str] = ()) -> RecipeLaunch:
    """Launch-relevant keys of a recipe (a YAML file or a packaged recipe's name), command-line overrides
    applied, read by `mpcc.train`'s recipe parser; the Accelerate config as a file path (it may be given
    by name)."""
    from mpcc.training.config import parse_recipe

    path, config = read(recipe)
    given = {key: value for key, value in config.items() if key in LAUNCH_KEYS}
    (keys,), _ = parse_recipe(path, (_launch_keys(),), given, list(overrides))
    if not keys.model_name_or_path:
        raise ConfigError(f"{path}: no model_name_or_path")
    accelerate = keys.accelerate_config
    return RecipeLaunch(
        accelerate_config=str(resolve(accelerate, "accelerate")) if accelerate else None,
        vllm_server=keys.use_vllm and keys.vllm_mode == "server",
        model=str(keys.model_name_or_path),
        vllm_port=keys.vllm_server_port,
    )


def train_command(env: Mapping[str, str], recipe: str, overrides: Sequence[str]) -> list[str]:
    """The whole `accelerate launch ... -m mpcc.train RECIPE ...` command for this node."""
    launch = read_recipe(recipe, overrides)
    extra = []
    if launch.vllm_server:
        extra = ["--vllm_server_host", Allocation.from_env(env).nodes[-1]]
    return accelerate_command(
        accelerate_args(env, launch.accelerate_config, launch.vllm_server), recipe, [*overrides, *extra]
    )


def accelerate_command(launch_args: Sequence[str], recipe: str, overrides: Sequence[str]) -> list[str]:
    """`python -m accelerate launch LAUNCH_ARGS -m mpcc.train RECIPE OVERRIDES`: built here only (`mpcc
    train` and the SLURM launcher)."""
    accelerate = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", *launch_args]
    return [*accelerate, "-m", "mpcc.train", str(recipe), *overrides]


def vllm_command(env: Mapping[str, str], recipe: str, overrides: Sequence[str]) -> list[str]:
    from mpcc.models import resolve_model_path

    launch = read_recipe(recipe, overrides)
    trl = shutil.which("trl")
    if trl is None:
        raise ConfigError("TRL's `trl` command is not on PATH (install vLLM in the job's environment)")
    model = str(resolve_model_path(launch.model))
    return [trl, "vllm-serve", *vllm_serve_args(env, model, launch.vllm_port)]


def vllm_node(env: Mapping[str, str], recipe: str, overrides: Sequence[str]) -> str:
    """The node that serves vLLM (the job's last), or '' when the recipe does not use server mode."""
    if not read_recipe(recipe, overrides).vllm_server:
        return ""
    nodes = expand_hostlist(_require(env, "SLURM_JOB_NODELIST", "SLURM_NODELIST"))
    if len(nodes) < 2:
        raise ConfigError("vllm_mode: server needs at least 2 nodes (the last one serves vLLM)")
    return nodes[-1]


USAGE = """usage: python -m mpcc.launch {train|vllm|vllm-node} RECIPE [--key value ...]

  RECIPE     a YAML file, or a packaged recipe's name (grpo_prior, tiny/grpo_prior: see `mpcc recipes`)
  train      exec `accelerate launch <args from SLURM's environment> -m mpcc.train RECIPE ...` (one per node)
  vllm       exec `trl vllm-serve` for the recipe's model (the vLLM node of a `vllm_mode: server` recipe)
  vllm-node  print the job's vLLM server node, or nothing when the recipe does not use server mode
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] not in ("train", "vllm", "vllm-node"):
        print(USAGE, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    action, recipe, overrides = argv[0], argv[1], argv[2:]
    try:
        if action == "vllm-node":
            print(vllm_node(os.environ, recipe, overrides))
            return 0
        command = (train_command if action == "train" else vllm_command)(os.environ, recipe, overrides)
    except ValueError as e:
        print(f"mpcc.launch {action}: error: {e}", file=sys.stderr)
        return 2
    print(f"[{os.environ.get('SLURMD_NODENAME', '?')}] running: {shlex.join(command)}", flush=True)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # inherited through exec and by the launcher's children
    os.execv(command[0], command)


if __name__ == "__main__":
    raise SystemExit(main())
