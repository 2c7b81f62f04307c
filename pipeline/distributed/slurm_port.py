"""Print the rendezvous port of a Slurm job, the one the trainer derives (``slurm/env.sh`` asks).

python -m pipeline.distributed.slurm_port JOB_ID
"""

from __future__ import annotations

import argparse
import sys

from data_prep.flags import HelpFormatter
from pipeline.distributed.launch import slurm_port


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.distributed.slurm_port",
        description=__doc__.split("\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("job_id", type=int, metavar="JOB_ID", help="SLURM_JOB_ID")
    args = p.parse_args(argv)
    print(slurm_port(args.job_id))
    return 0


if __name__ == "__main__":
    sys.exit(main())
