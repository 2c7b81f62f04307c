# shellcheck shell=bash
# The scripts need bash 4.4 or newer: `local -n` (4.3) and "${arr[@]}" of an empty array under
# `set -u` (4.4). Checked first, in POSIX sh, so that an older bash or a plain sh says so in one line.
case "${BASH_VERSION:-}" in
    "" | [0-3].* | 4.[0-3]*)
        echo "slurm/env.sh: needs bash 4.4 or newer (this is ${BASH_VERSION:-not bash}); run the scripts with a newer bash" >&2
        return 2 2>/dev/null || exit 2 ;;
esac
# slurm/env.sh: the user's settings for the distil Slurm scripts (prep.sbatch, submit_prep.sh,
# cache_teacher.sbatch, pretrain.sbatch), sourced by every one of them.
#
# Edit the defaults here, or override any of them per submission from the environment: sbatch
# hands the submitting shell's environment to the job (--export=ALL is the default), so
#     DATA_DIR=/scratch/me/data RUN_DIR=/scratch/me/run1 sbatch slurm/pretrain.sbatch
# works, as does a settings file of your own: DISTIL_ENV=~/exp1.sh sbatch slurm/pretrain.sbatch
# (that file replaces this one, so copy this one to start it). `: "${VAR:=x}"` keeps a non-empty
# VAR from the environment; `: "${VAR=x}"` (TEACHER, DISTIL_VENV) keeps an empty one too.
# Every path must be visible from all compute nodes (a shared file system).

# --- where the code is --------------------------------------------------------------------------
# sbatch runs a *copy* of the script from Slurm's spool folder, so the scripts find the repo from
# DISTIL_HOME, else from the folder sbatch was called in (SLURM_SUBMIT_DIR, or its parent when
# that is slurm/). Sourced by hand (`source slurm/env.sh`), it finds itself.
if [ -z "${DISTIL_HOME:-}" ]; then
    DISTIL_HOME=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
fi
export DISTIL_HOME

# --- the Python environment ---------------------------------------------------------------------
# A virtualenv with distil installed (`make setup` builds $DISTIL_HOME/.venv). Its bin/ goes first
# on PATH. To use environment modules or conda instead, set DISTIL_VENV to "" and load them here:
#     module load python/3.11 cuda/12.4 nccl      # or: source ~/miniforge3/bin/activate distil
: "${DISTIL_VENV=$DISTIL_HOME/.venv}"
if [ -n "$DISTIL_VENV" ]; then
    if [ ! -x "$DISTIL_VENV/bin/python" ]; then
        echo "slurm/env.sh: DISTIL_VENV=$DISTIL_VENV has no bin/python; run 'make setup' in" \
            "$DISTIL_HOME, or point DISTIL_VENV at your environment (empty: use PATH as is)" >&2
        return 2
    fi
    export VIRTUAL_ENV="$DISTIL_VENV"
    export PATH="$DISTIL_VENV/bin:$PATH"
fi
: "${PYTHON:=python}"
# The repo on PYTHONPATH, so `python -m pipeline.train` works even without `pip install -e .`.
export PYTHONPATH="$DISTIL_HOME${PYTHONPATH:+:$PYTHONPATH}"
# DeepSpeed JIT-compiles some ops on first use; keep them in one cache that outlives the job.
: "${TORCH_EXTENSIONS_DIR:=${DISTIL_VENV:-$HOME/.cache}/torch_extensions}"
export TORCH_EXTENSIONS_DIR

# --- data ---------------------------------------------------------------------------------------
# All outputs live under DISTIL_WORK unless set one by one: a shared scratch file system with room
# for the shards, the teacher cache and checkpoints (not your home quota, not the repo).
: "${DISTIL_WORK:=${SCRATCH:-$HOME}/distil}"
# build_shards --input: files, globs (quoted here, build_shards expands them), folders, Wikipedia
# dumps (enwiki-*-pages-articles-multistream.xml.bz2, its index beside it), save_to_disk folders
# or hf:NAME[:CONFIG], separated by spaces (no spaces inside a path). A folder of books, one per
# file: add --txt-docs file to PREP_ARGS; BooksCorpus's sentence-per-line files: --txt-docs line.
: "${CORPUS:=$DISTIL_HOME/data_prep/corpus/austen/*.txt.gz}"
# The teacher: a Hugging Face masked-LM folder (save_pretrained output) or hub ID (bert-base-uncased,
# fetched beforehand on a login node: see HF_HOME below). Empty: MLM-only training.
: "${TEACHER=$DISTIL_WORK/teacher}"
# The tokenizer the shards are made with: the teacher's (a HF tokenizer folder or hub ID, or a .model file).
: "${TOKENIZER:=$TEACHER}"
: "${SEQ_LEN:=128}"
: "${DATA_DIR:=$DISTIL_WORK/data}"
# Array tasks of slurm/submit_prep.sh; the corpus is cut into units of work of about 256 MB of text
# (--unit-size-mb: small files grouped, large or compressed ones cut, dumps at bz2 streams), dealt
# round-robin to the tasks. More tasks than units leaves some idle.
: "${PREP_SHARDS:=4}"
# More build_shards options, e.g. "--valid-fraction 0.005 --pack doc --txt-docs line".
: "${PREP_ARGS:=}"

# --- teacher cache (optional) -------------------------------------------------------------------
: "${CACHE_DIR:=$DISTIL_WORK/teacher_cache}"
: "${CACHE_TOP_K:=64}"
# Masking views cached per sample (empty: cache_teacher's default).
: "${CACHE_VIEWS:=}"
# More cache_teacher options.
: "${CACHE_ARGS:=}"
# Set to $CACHE_DIR to train from the cache (pretrain.sbatch passes --teacher-cache).
: "${TEACHER_CACHE:=}"

# --- training -----------------------------------------------------------------------------------
: "${RUN_DIR:=$DISTIL_WORK/runs/distilbert}"
# A YAML recipe (pipeline/recipes/*.yaml); empty: the built-in DistilBERT paper recipe.
: "${RECIPE:=}"
# bf16 needs Ampere (A100/H100) or newer; on V100s use zero2_fp16.json.
: "${DS_CONFIG:=$DISTIL_HOME/ds_configs/zero2_bf16.json}"
# More pipeline.train options (arguments given to sbatch after the script name come last and win).
: "${TRAIN_ARGS:=}"
# pipeline.train exits with this code after checkpointing on SIGUSR1/SIGTERM (--signal=USR1@120):
# pretrain.sbatch passes it as --train.preempt_exit_code and requeues itself on it. A job that keeps getting preempted stops requeueing after
# MAX_REQUEUES restarts.
: "${PREEMPT_EXIT_CODE:=42}"
: "${MAX_REQUEUES:=50}"
# After the first rank exits, srun waits this long for the others before killing them (a rank
# that crashed otherwise leaves the rest stuck in a collective until the NCCL timeout).
: "${SRUN_WAIT:=600}"

# --- threads, communication ---------------------------------------------------------------------
# One rank per GPU; each rank's intra-op threads get its CPUs (--cpus-per-task).
: "${OMP_NUM_THREADS:=${SLURM_CPUS_PER_TASK:-1}}"
export OMP_NUM_THREADS
# NCCL (GPU) and gloo (CPU runs; the trainer's small control group) pick the network by
# themselves; on clusters with several networks, name the fast one:
#   export NCCL_SOCKET_IFNAME=ib0        # or ^lo,docker0: the bootstrap interface
#   export NCCL_IB_HCA=mlx5              # which InfiniBand adapters NCCL may use
#   export GLOO_SOCKET_IFNAME=ib0        # the interface gloo binds to (default: the one that
#                                        # reaches MASTER_ADDR, see pipeline/distributed/launch.py)
#   export NCCL_DEBUG=INFO               # prints the transports NCCL chose (IB, NVLink, socket)
#   export TORCH_NCCL_ASYNC_ERROR_HANDLING=1   # a rank with an NCCL error aborts, never hangs
# Hub IDs (TEACHER=bert-base-uncased) resolve through the Hugging Face cache under HF_HOME. Compute
# nodes without internet: on a login node `HF_HOME=<shared dir> hf download ID`, then here:
#   export HF_HOME=/shared/scratch/$USER/huggingface HF_HUB_OFFLINE=1

# Rendezvous of the ranks of one job: the first node of the allocation, and a port derived from
# the job id (the same after a requeue; distinct for jobs that share a node) by the one formula,
# pipeline.distributed.launch.slurm_port. Called by the job scripts inside the allocation. A MASTER_ADDR/MASTER_PORT exported in the submitting shell is
# ignored on purpose (it belongs to something else); set DISTIL_MASTER_ADDR/_PORT to force them.
# Ranks come from srun's SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (pipeline/distributed/comm.py): torchrun's
# RANK/WORLD_SIZE, taken before them, must not leak in from the submitting shell.
distil_rendezvous() {
    unset RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
    MASTER_ADDR=${DISTIL_MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
    MASTER_PORT=${DISTIL_MASTER_PORT:-$("$PYTHON" -m pipeline.distributed.slurm_port "$SLURM_JOB_ID")}
    export MASTER_ADDR MASTER_PORT
}

# Split a space-separated setting into the array named $1 (no glob expansion, no empty words).
distil_words() {
    local -n _out=$1
    read -r -a _out <<<"${2:-}"
}
