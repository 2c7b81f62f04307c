"""Entry point: ``python -m pipeline.train [--config RECIPE] --teacher T --data D --output R ...``.

Runs under torchrun, ``deepspeed --num_gpus N --module pipeline.train``, ``srun`` and ``mpirun``
(see :mod:`pipeline.dist`). Exit codes: 0 done (or stopped by ``stop_after_steps``), 2 bad input,
3 non-finite loss or weights, ``train.preempt_exit_code`` (42) preempted with a checkpoint.
"""

from __future__ import annotations

import os
import sys
import warnings


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if _has_cuda() else "cpu")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    from data_prep.errors import UserError, error_line

    _quiet_libraries()
    args = list(sys.argv[1:] if argv is None else argv)
    # The deepspeed launcher appends --local_rank=N; ranks come from the environment instead.
    args = [a for a in args if not a.startswith(("--local_rank", "--local-rank"))]
    try:
        from pipeline.config import parse_config
        from pipeline.dist import detect, device_for, init_process_group
        from pipeline.trainer import Trainer, prepare

        cfg = parse_config(args)
        env = detect()
        device = device_for(env)
        plan = prepare(cfg, env, device)
        init_process_group(env, device)
        code = Trainer(cfg, env, device, plan).run()
    except UserError as exc:
        error_line(f"pipeline.train: error: {exc}")
        return 2
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()
    return code


if __name__ == "__main__":
    sys.exit(main())
