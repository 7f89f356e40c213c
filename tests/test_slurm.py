"""SLURM launch: accelerate arguments derived from the environment SLURM sets (unit tests), the
preemption callback and `--resume_from_checkpoint auto`, a two-node CPU launch on one host, and the
launch/slurm scripts on a real one-host SLURM cluster (marker `slurm`: Debian's packages are
installed when absent, the daemons run from a temporary directory for the session)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import torch
from datasets import load_from_disk
from ports import free_port
from safetensors.torch import load_file

from mpcc import train
from mpcc.data.build import SKIPS_FILE, STATS_FILE
from mpcc.errors import ConfigError
from mpcc.launch import (
    Allocation,
    accelerate_args,
    expand_hostlist,
    gpus_per_node,
    main_port,
    read_recipe,
    train_command,
    vllm_node,
    vllm_serve_args,
)
from mpcc.records import BUILD_FILE
from mpcc.training.config import load_recipe
from mpcc.training.curves import log_history
from mpcc.training.preemption import PreemptionCallback

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny" / "grpo_prior.yaml"
PAPER = ROOT / "recipes" / "grpo_prior.yaml"


def _two_nodes(node: int, **extra) -> dict[str, str]:
    """What SLURM sets in a task of `sbatch --nodes=2 --gpus-per-node=8` + `srun --ntasks-per-node=1`."""
    name = f"gpu-0{node + 1}"
    return {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "gpu-[01-02]",
        "SLURM_NODELIST": "gpu-[01-02]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NNODES": "2",
        "SLURM_NODEID": str(node),
        "SLURM_PROCID": str(node),
        "SLURM_LOCALID": "0",
        "SLURMD_NODENAME": name,
        "SLURM_GPUS_ON_NODE": "8",
        "SLURM_GPUS_PER_NODE": "8",
        "SLURM_RESTART_COUNT": "1",
        **extra,
    }


def _as_dict(args: list[str]) -> dict[str, str | None]:
    """`--key value` / `--flag` pairs as a mapping (flags map to None)."""
    out, i = {}, 0
    while i < len(args):
        value = args[i + 1] if i + 1 < len(args) and not args[i + 1].startswith("--") else None
        out[args[i]] = value
        i += 1 if value is None else 2
    return out


@pytest.mark.parametrize(
    "expr, hosts",
    [
        ("gpu-[01-03,07],login1", ["gpu-01", "gpu-02", "gpu-03", "gpu-07", "login1"]),
        ("node1", ["node1"]),
        ("a,b[1-2],c", ["a", "b1", "b2", "c"]),
        ("n[9-11]", ["n9", "n10", "n11"]),
        ("n[009-11]", ["n009", "n010", "n011"]),
        ("x[3]", ["x3"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
    ],
)
def test_hostlist_expansion(expr, hosts):
    assert expand_hostlist(expr) == hosts


@pytest.mark.parametrize("expr", ["n[3-1]", "n[1-2", "n[a-b]", "n[1-2]]", "", "n[]"])
def test_bad_hostlists_are_named(expr):
    with pytest.raises(ValueError, match="hostlist"):
        expand_hostlist(expr)


def test_two_gpu_nodes_rank_zero_and_one():
    config = "recipes/accelerate/zero2.yaml"
    args = [accelerate_args(_two_nodes(n), config) for n in (0, 1)]
    for node, a in enumerate(args):
        assert a[:2] == ["--config_file", config]
        assert _as_dict(a) == {
            "--config_file": config,
            "--num_machines": "2",
            "--num_processes": "16",
            "--machine_rank": str(node),
            "--main_process_ip": "gpu-01",
            "--main_process_port": str(main_port(_two_nodes(0))),
        }
    # the same rendezvous on both nodes, the port derived from the job id (stable across requeues)
    assert main_port(_two_nodes(0)) == main_port(_two_nodes(1)) == 10000 + 4242


def test_gpu_count_sources_and_overrides():
    env = _two_nodes(1, SLURM_GPUS_ON_NODE="", SLURM_GPUS_PER_NODE="h100:4")
    assert gpus_per_node(env) == 4
    assert gpus_per_node({"SLURM_GPUS_PER_NODE": "gpu:a100:2"}) == 2
    assert gpus_per_node({}) == 0
    with pytest.raises(ValueError, match="SLURM_GPUS_PER_NODE"):
        gpus_per_node({"SLURM_GPUS_PER_NODE": "lots"})
    args = _as_dict(accelerate_args({**env, "MASTER_ADDR": "gpu-01-ib", "MASTER_PORT": "29555"}))
    assert args["--num_processes"] == "8" and args["--multi_gpu"] is None
    assert args["--main_process_ip"] == "gpu-01-ib" and args["--main_process_port"] == "29555"
    one_node = {**_two_nodes(0), "SLURM_JOB_NODELIST": "gpu-01", "SLURM_JOB_NUM_NODES": "1"}
    eight = _as_dict(accelerate_args(one_node))  # no Accelerate config: plain DDP over the 8 GPUs
    assert eight["--num_processes"] == "8" and eight["--multi_gpu"] is None
    # one GPU on one node: a plain single process, no multi-GPU launcher
    assert "--multi_gpu" not in accelerate_args({**one_node, "SLURM_GPUS_ON_NODE": "1"})


def test_cpu_only_allocations_run_one_process_per_node(caplog):
    cpu = {"SLURM_GPUS_ON_NODE": "", "SLURM_GPUS_PER_NODE": "0"}
    one = _as_dict(
        accelerate_args(
            {**_two_nodes(0, **cpu), "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_NUM_NODES": "1"},
            "recipes/accelerate/zero2.yaml",
        )
    )
    assert one["--cpu"] is None and "--config_file" not in one
    assert (one["--num_machines"], one["--num_processes"], one["--machine_rank"]) == ("1", "1", "0")
    assert "without the Accelerate config" in caplog.text
    # several CPU nodes need torchrun's rendezvous: accelerate's multi-GPU launcher (gloo on CPU)
    two = _as_dict(accelerate_args(_two_nodes(1, **cpu)))
    assert two["--multi_gpu"] is None and "--cpu" not in two
    assert (two["--num_machines"], two["--num_processes"], two["--machine_rank"]) == ("2", "2", "1")


def test_vllm_server_node_is_the_last_and_does_not_train():
    three = {"SLURM_JOB_NODELIST": "gpu-[01-03]", "SLURM_JOB_NUM_NODES": "3"}
    for node in (0, 1):
        args = _as_dict(accelerate_args(_two_nodes(node, **three), vllm_server=True))
        assert (args["--num_machines"], args["--num_processes"]) == ("2", "16")
        assert args["--machine_rank"] == str(node) and args["--main_process_ip"] == "gpu-01"
    with pytest.raises(ValueError, match="gpu-03 is the vLLM server node"):
        accelerate_args(_two_nodes(2, **three), vllm_server=True)
    with pytest.raises(ValueError, match="at least 2 nodes"):
        accelerate_args(
            {**_two_nodes(0), "SLURM_JOB_NODELIST": "gpu-01", "SLURM_JOB_NUM_NODES": "1"}, None, True
        )
    server = ["--use_vllm", "--vllm_mode=server", "--vllm_server_port", "8123"]
    env = _two_nodes(0, **three)
    assert vllm_node(env, str(TINY), server) == "gpu-03"
    assert vllm_node(env, str(TINY), []) == ""
    command = train_command(env, str(TINY), server)
    assert command[-2:] == ["--vllm_server_host", "gpu-03"]
    assert command[command.index("-m") + 1] == "accelerate.commands.accelerate_cli"
    assert (
        _as_dict(command[command.index("launch") + 1 : command.index("mpcc.train") - 1])["--num_machines"]
        == "2"
    )
    serve = _as_dict(vllm_serve_args({**env, "VLLM_TENSOR_PARALLEL_SIZE": "2"}, "Qwen/X", 8123))
    assert serve == {
        "--model": "Qwen/X",
        "--tensor_parallel_size": "2",
        "--host": "0.0.0.0",
        "--port": "8123",
    }
    with pytest.raises(ValueError, match="exceeds the node's 8 GPUs"):
        vllm_serve_args({**env, "VLLM_TENSOR_PARALLEL_SIZE": "16"}, "Qwen/X", 8000)


def test_recipe_launch_keys_with_overrides(tmp_path):
    paper = read_recipe(PAPER)
    accelerate = ROOT / "mpcc" / "recipes" / "accelerate"  # the recipe names its config; the file is packaged
    assert paper.accelerate_config == str(accelerate / "zero2_offload.yaml") and not paper.vllm_server
    assert paper.model == "Qwen/Qwen2.5-VL-3B-Instruct" and paper.vllm_port == 8000
    other = read_recipe(PAPER, ["--accelerate_config", "zero3", "--use_vllm", "true"])
    assert other.accelerate_config == str(accelerate / "zero3.yaml") and not other.vllm_server  # colocate
    assert read_recipe(PAPER, ["--use_vllm", "--vllm_mode", "server"]).vllm_server
    assert not read_recipe(PAPER, ["--use_vllm", "false", "--vllm_mode", "server"]).vllm_server
    assert read_recipe(TINY).accelerate_config is None
    with pytest.raises(ValueError, match="missing.yaml: no such file, and no packaged recipe"):
        read_recipe(tmp_path / "missing.yaml")


@pytest.mark.parametrize("word", ["yes", "Y", "1", "t"])
def test_launcher_reads_true_as_training_does(word):
    """The launcher parses recipe values with `mpcc.train`'s parser: every word training takes for true
    starts the vLLM server; a word it refuses is refused by the launcher too, in the same one line."""
    assert read_recipe(PAPER, ["--use_vllm", word, "--vllm_mode", "server"]).vllm_server
    assert load_recipe(TINY, ["--use_vllm", word])[1].use_vllm


def test_launcher_refuses_what_training_refuses():
    with pytest.raises(ConfigError) as launched:
        read_recipe(TINY, ["--use_vllm", "on"])
    with pytest.raises(ConfigError) as trained:
        load_recipe(TINY, ["--use_vllm", "on"])
    assert str(launched.value) == str(trained.value)
    assert str(launched.value).startswith(f"{TINY}: use_vllm (command-line override): ")


def test_missing_or_inconsistent_slurm_environment_is_named():
    with pytest.raises(ValueError, match="SLURM_JOB_NODELIST"):
        Allocation.from_env({"SLURM_NODEID": "0", "SLURM_JOB_ID": "1"})
    with pytest.raises(ValueError, match="SLURM_NODEID=2 is outside the job's 2 nodes"):
        Allocation.from_env(_two_nodes(2))
    with pytest.raises(ValueError, match="'gpu-\\[01-02\\]' names 2 nodes but SLURM_JOB_NUM_NODES=3"):
        Allocation.from_env(_two_nodes(0, SLURM_JOB_NUM_NODES="3"))
    no_nodeid = {k: v for k, v in _two_nodes(1).items() if k != "SLURM_NODEID"}
    assert Allocation.from_env(no_nodeid).node_rank == 1  # SLURM_PROCID: one task per node


def test_cli_reports_errors_outside_a_job():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    proc = subprocess.run(
        [sys.executable, "-m", "mpcc.launch", "train", str(TINY)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "SLURM_JOB_NODELIST" in proc.stderr and "srun" in proc.stderr


def _signal_tree(pid: int, signum: int) -> None:
    """Signal a process and all its descendants, as srun does to the processes of a job step (torch's
    launcher starts its workers in sessions of their own, so a process-group signal would miss them)."""
    parent = psutil.Process(pid)
    for process in [parent, *parent.children(recursive=True)]:
        process.send_signal(signum)


class _SignalAtStep(PreemptionCallback):
    """The preemption callback, plus SIGUSR1 sent to this process at the end of step 1."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return super().on_step_end(args, state, control, **kwargs)


@pytest.mark.slow
def test_sigusr1_saves_stops_and_auto_resumes(tmp_path, monkeypatch, caplog):
    """SIGUSR1 during step 1: a checkpoint at step 1, no final model; `--resume_from_checkpoint auto`
    then continues from it (and starts from scratch when there is none) and ends with the weights of the
    uninterrupted run."""
    out = tmp_path / "run"
    common = [str(TINY), "--output_dir", str(out), "--max_steps", "3", "--save_steps", "3"]
    common += ["--resume_from_checkpoint", "auto"]
    caplog.set_level(logging.INFO)
    before = signal.getsignal(signal.SIGUSR1)
    monkeypatch.setattr(train, "PreemptionCallback", _SignalAtStep)
    assert train.main(common) == 0
    assert signal.getsignal(signal.SIGUSR1) == before  # the handler lives only while training
    assert "no checkpoint in" in caplog.text and "stopped for preemption at step 1" in caplog.text
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-1"]
    assert json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())["global_step"] == 1
    assert not (out / "model.safetensors").exists()  # a preempted run is not a finished model

    monkeypatch.setattr(train, "PreemptionCallback", PreemptionCallback)
    caplog.clear()
    assert train.main(common) == 0
    assert f"resuming from {out / 'checkpoint-1'}" in caplog.text
    history = log_history(out / "checkpoint-3")
    assert [h["step"] for h in history if "reward" in h] == [1, 2, 3]

    # the same run: the uninterrupted one ends with the same weights (and they moved after step 1)
    whole = tmp_path / "whole"
    assert train.main([*common[:2], str(whole), *common[3:]]) == 0
    expected, resumed = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    step1 = load_file(out / "checkpoint-1" / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert max((expected[k] - step1[k]).abs().max().item() for k in expected) > 1e-4


@pytest.mark.slow
def test_two_cpu_nodes_on_one_host_train_together_and_stop_together(tmp_path):
    """`python -m mpcc.launch train` on two 'nodes' (two launchers on this host, as srun starts them):
    both ranks join one run (groups of 4 over 2 x 6 rows: 3 traces per step), and SIGUSR1 sent to node
    1 only stops both ranks at the same step with one checkpoint (the decision is reduced over ranks)."""
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
    env.update(SLURM_JOB_NODELIST="localhost,localhost", SLURM_JOB_NUM_NODES="2", SLURM_JOB_ID="4243")
    env.update(PYTHONUNBUFFERED="1")
    args = [str(TINY), "--output_dir", str(out), "--max_steps", "30", "--save_steps", "30"]
    args += ["--per_device_train_batch_size", "6", "--max_completion_length", "16"]
    logs = [tmp_path / f"node{n}.log" for n in (0, 1)]
    procs = []
    for node, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mpcc.launch", "train", *args],
                    env={**env, "SLURM_NODEID": str(node)},
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    start_new_session=True,
                )
            )
    try:
        deadline = time.monotonic() + 600
        while "'prior/traces'" not in logs[0].read_text() and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            time.sleep(0.2)
        _signal_tree(procs[1].pid, signal.SIGUSR1)  # the launchers ignore it; the training process acts
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                _signal_tree(p.pid, signal.SIGKILL)
    text = [log.read_text() for log in logs]
    assert codes == [0, 0], text[0][-3000:] + text[1][-3000:]
    assert "--multi_gpu --num_machines 2 --num_processes 2 --machine_rank 1" in text[1]
    assert set(re.findall(r"'prior/traces': '([0-9.]+)'", text[0])) == {"3"}
    (checkpoint,) = out.glob("checkpoint-*")
    step = json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]
    assert 1 <= step < 30 and checkpoint.name == f"checkpoint-{step}"
    for log in text:  # both ranks stopped at that step
        assert f"saving a checkpoint at step {step} of 30 and stopping" in log
    assert not (out / "model.safetensors").exists()


# --- a real one-host SLURM cluster -----------------------------------------------------------------

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
TERMINAL = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def _install_slurm() -> None:
    """Debian's SLURM and MUNGE packages, installed non-interactively when absent (needs root)."""
    if all(shutil.which(b, path=SBIN_PATH) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        pytest.fail(
            f"SLURM is not installed and installing it needs root: apt-get install {' '.join(PACKAGES)}"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")
    created = not policy.exists()
    if created:  # the packages must not start system-wide daemons with their default configuration
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
        ):
            proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                pytest.fail(f"{' '.join(command)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    finally:
        if created:
            policy.unlink()


SLURM_CONF = """\
ClusterName=mpcctest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire (default 120 s) is also how long a requeued job waits before it may start again
AuthInfo=socket={root}/munge/munge.sock,cred_expire=10
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
MailProg=/bin/true
# no cgroups: works in containers and sandboxes
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
MinJobAge=600
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    """munged, slurmctld and slurmd for one host, configured and logged under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """This process's environment (jobs inherit it, MPCC_CACHE included), pointed at this cluster."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_"))}
        return {**env, "SLURM_CONF": str(self.conf), "PATH": SBIN_PATH}

    def start(self) -> None:
        root = self.root
        for sub in ("munge", "state", "spool", "log"):
            (root / sub).mkdir(mode=0o755)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        (root / "plugstack.conf").write_text("")
        self.conf.write_text(
            SLURM_CONF.format(
                root=root, ctld_port=free_port(), slurmd_port=free_port(), cpus=os.cpu_count() or 1
            )
        )
        munge = root / "munge"
        self._daemon(
            "munged",
            f"--key-file={key}",
            f"--socket={munge}/munge.sock",
            f"--pid-file={munge}/munged.pid",
            f"--log-file={munge}/munged.log",
            f"--seed-file={munge}/munged.seed",
        )
        self._daemon("slurmctld", "-f", str(self.conf))
        self._daemon("slurmd", "-f", str(self.conf), "-N", "localhost")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        pytest.fail(f"the SLURM node did not come up (state {state!r}):\n{self.logs()}")

    def _daemon(self, name: str, *args: str) -> None:
        proc = subprocess.run([name, *args], env=self.env, capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            pytest.fail(f"{name} did not start ({proc.returncode}): {proc.stderr}\n{self.logs()}")

    def logs(self) -> str:
        files = [*sorted((self.root / "log").glob("*.log")), self.root / "munge" / "munged.log"]
        return "\n".join(f"== {f}\n{f.read_text()[-2000:]}" for f in files if f.is_file())

    def run(self, *command: str, check: bool = True, cwd: Path = ROOT, env: dict | None = None):
        proc = subprocess.run(
            command, env={**self.env, **(env or {})}, capture_output=True, text=True, cwd=cwd, timeout=60
        )
        if check and proc.returncode != 0:
            pytest.fail(f"{' '.join(command)}: {proc.returncode}\n{proc.stdout}{proc.stderr}")
        return proc

    def sbatch(self, *args: str, env: dict | None = None) -> str:
        return self.run("sbatch", "--parsable", *args, env=env).stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout.splitlines()[0]
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: str, timeout: float, log: Path | None = None) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job["JobState"] in TERMINAL or job["Reason"] == "DependencyNeverSatisfied":
                return job
            time.sleep(0.5)
        self.run("scancel", job_id, check=False)
        tail = log.read_text()[-4000:] if log and log.is_file() else ""
        pytest.fail(f"job {job_id} still {job['JobState']} after {timeout} s\n{tail}\n{self.logs()}")

    def stop(self) -> None:
        jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
        if jobs:
            self.run("scancel", *jobs, check=False)
        self.run("scontrol", "shutdown", check=False)
        munge = self.root / "munge"
        subprocess.run(
            ["munged", "--stop", f"--socket={munge}/munge.sock"], env=self.env, capture_output=True
        )
        for pid_file in (self.root / "slurmctld.pid", self.root / "slurmd.pid", munge / "munged.pid"):
            if pid_file.is_file():  # the daemons this fixture started, by their own pid files
                pid = int(pid_file.read_text().split()[0])
                deadline = time.monotonic() + 20
                while _alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    _install_slurm()
    root = Path(tempfile.mkdtemp(prefix="mpcc-slurm-"))  # short: MUNGE's socket path has a length limit
    root.chmod(0o755)
    slurm = Cluster(root)
    try:
        slurm.start()
        yield slurm
    finally:
        slurm.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slurm
def test_hostlists_expand_like_scontrol(cluster):
    for expr in ("gpu-[01-03,07],login1", "rack[1-2]-node[01-02]", "n[009-11]", "a,b[1-2],c"):
        shown = cluster.run("scontrol", "show", "hostnames", expr).stdout.split()
        assert expand_hostlist(expr) == shown


def _train_job(cluster, tmp_path, *overrides: str) -> tuple[str, Path, Path]:
    out, log = tmp_path / "run", tmp_path / "logs" / "mpcc-train-%j.out"
    log.parent.mkdir()  # SLURM does not create it: without it the job fails before the script runs
    job = cluster.sbatch(
        "--gpus-per-node=0",
        f"--output={log}",
        "launch/slurm/train.sbatch",
        str(TINY),
        "--output_dir",
        str(out),
        "--max_completion_length",
        "16",
        *overrides,
    )
    return job, out, Path(str(log).replace("%j", job))


@pytest.mark.slurm
@pytest.mark.slow
def test_preemption_warning_checkpoints_requeues_and_resumes(cluster, tmp_path):
    """train.sbatch with the tiny recipe on a CPU node (one process), then SIGUSR1 to the batch script
    (what `--signal=B:USR1@300` sends before the time limit): training saves a checkpoint and stops, the
    job requeues itself, and the restart resumes from that checkpoint and finishes with its model."""
    job, out, log = _train_job(cluster, tmp_path, "--max_steps", "8", "--save_steps", "8")
    deadline = time.monotonic() + 600
    while not (log.is_file() and "'prior/traces'" in log.read_text()):  # a first step is done
        state = cluster.job(job)["JobState"]
        running = state in ("PENDING", "RUNNING") and time.monotonic() < deadline
        assert running, (
            f"job {job} {state} before its first step:\n{log.read_text()[-4000:] if log.is_file() else ''}"
        )
        time.sleep(0.2)
    cluster.run("scancel", "--batch", "--signal=USR1", job)
    state = cluster.wait(job, 900, log)
    text = log.read_text()
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", text[-4000:]
    first, second = text.split("SLURM_RESTART_COUNT=1")
    assert f"mpcc: job {job}, 1 node(s): localhost, SLURM_RESTART_COUNT=0" in first
    launch = "launch --cpu --num_machines 1 --num_processes 1 --machine_rank 0 --main_process_ip localhost"
    assert launch in first
    assert f"--main_process_port {10000 + int(job)}" in first
    assert "no checkpoint in" in first and "preemption warning (SIGUSR1)" in first
    step = int(re.search(r"saving a checkpoint at step (\d+) of 8 and stopping", first)[1])
    assert 1 <= step < 8 and f"requeueing job {job}" in first
    assert json.loads((out / f"checkpoint-{step}" / "trainer_state.json").read_text())["global_step"] == step
    assert f"resuming from {out / f'checkpoint-{step}'}" in second and f"model saved to {out}" in second
    history = log_history(out / "checkpoint-8")
    assert [h["step"] for h in history if "reward" in h] == list(range(1, 9))
    assert (out / "model.safetensors").is_file()


@pytest.mark.slurm
@pytest.mark.slow
def test_prepare_array_job_equals_one_build(cluster, tmp_path, tinycoco, tiny_builds):
    """prepare.sbatch as a 2-task array: two shards, then the merge job it submits; the result is the
    one-job build (same rows, statistics, skips and record)."""
    out, logs = tmp_path / "train", tmp_path / "logs"
    logs.mkdir()
    array = cluster.sbatch(
        "--array=0-1",
        "--cpus-per-task=1",
        f"--output={logs}/%x-%j.out",
        "launch/slurm/prepare.sbatch",
        "train",
        "--annotations",
        str(tinycoco / "instances.json"),
        "--images",
        str(tinycoco / "images"),
        "--out",
        str(out),
    )
    deadline = time.monotonic() + 300
    merge = ""
    while not merge and time.monotonic() < deadline:
        merge = cluster.run(
            "squeue", "-h", "-t", "all", "-n", "mpcc-prepare-merge", "-o", "%i"
        ).stdout.strip()
        time.sleep(0.5)
    assert merge, f"array {array} submitted no merge job:\n" + "".join(p.read_text() for p in logs.iterdir())
    state = cluster.wait(merge, 600)
    texts = {p.name: p.read_text() for p in logs.iterdir()}
    assert state["JobState"] == "COMPLETED", texts
    assert any("shard 1/2 of" in t for t in texts.values()) and any(
        "merges 2 shards" in t for t in texts.values()
    )
    ref = tiny_builds["train"]
    assert load_from_disk(str(out)).data.table.equals(load_from_disk(str(ref)).data.table)
    for name in (STATS_FILE, SKIPS_FILE):
        assert (out / name).read_bytes() == (ref / name).read_bytes()
    merged = json.loads((out / BUILD_FILE).read_text())
    assert merged.pop("merged_shards") == 2 and merged == json.loads((ref / BUILD_FILE).read_text())
    assert not Path(f"{out}.shards").exists()


@pytest.mark.slurm
@pytest.mark.slow
def test_eval_job(cluster, tmp_path, tiny_builds):
    out, log = tmp_path / "eval", tmp_path / "mpcc-eval-%j.out"
    job = cluster.sbatch(
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        f"--output={log}",
        "launch/slurm/eval.sbatch",
        "tiny:qwen2_5_vl",
        str(tiny_builds["eval"]),
        str(out),
        "--formats",
        "mc4",
        "--limit",
        "2",
        "--max-new-tokens",
        "8",
    )
    log = Path(str(log).replace("%j", job))
    state = cluster.wait(job, 600, log)
    assert state["JobState"] == "COMPLETED", log.read_text()[-4000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 2 and "accuracy" in metrics
    assert "accuracy" in log.read_text()
