# Cluster environment for every launch/slurm script: the one file to edit for a new cluster.
# Sourced (not run) by train.sbatch, prepare.sbatch and eval.sbatch. Values already in the environment
# win, so `MPCC_CACHE=/scratch/$USER/mpcc sbatch ...` needs no edit here.

# The repository: the scripts are submitted from its root (sbatch copies the script elsewhere).
export MPCC_ROOT=${MPCC_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}}

# --- software ---------------------------------------------------------------------------------------
# Module loads or a container go here, e.g.:
#   module load cuda/12.8 nccl
# The Python environment: $MPCC_VENV, else the repository's .venv (`make setup`), else what is on PATH.
if [[ -n ${MPCC_VENV:-} ]]; then
    source "$MPCC_VENV/bin/activate"
elif [[ -f $MPCC_ROOT/.venv/bin/activate ]]; then
    source "$MPCC_ROOT/.venv/bin/activate"
fi

# --- caches -----------------------------------------------------------------------------------------
# Shared filesystem: models and datasets are downloaded once for all nodes.
export HF_HOME=${HF_HOME:-$HOME/.cache/huggingface}
export MPCC_CACHE=${MPCC_CACHE:-$HOME/.cache/mpcc}             # tiny models, synthetic data
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$HOME/.cache/torch_extensions}  # DeepSpeed ops, built once
# Node-local: Triton's and Inductor's caches break on NFS (file locks, concurrent writers).
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/${USER:-mpcc}/triton}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/${USER:-mpcc}/inductor}

# --- communication ----------------------------------------------------------------------------------
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}  # a dead rank fails the job
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
# Pick the fabric when NCCL guesses wrong (see `ip addr` / `ibv_devices` on a compute node), e.g.:
#   export NCCL_SOCKET_IFNAME=ib0      # or eth0, ens...; also used by Gloo via GLOO_SOCKET_IFNAME
#   export NCCL_IB_HCA=mlx5
# MASTER_ADDR / MASTER_PORT, when set, replace the main node's name and the job-derived port.

# --- misc -------------------------------------------------------------------------------------------
export PYTHONUNBUFFERED=1                                      # log lines appear as they happen
export TOKENIZERS_PARALLELISM=${TOKENIZERS_PARALLELISM:-false}
