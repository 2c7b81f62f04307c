"""NCCL's device rule, on CPU: loaded by Python at start-up when this folder is on PYTHONPATH.

With ``DISTIL_EMULATE_NCCL=1`` (tests/pipeline_helpers.train_env sets both), a collective that
*our* code (modules ``pipeline.*`` / ``data_prep.*``) issues on the default process group with a
CPU tensor raises what NCCL raises on a GPU node ("No backend type associated with device type
cpu"). On a GPU the default group is NCCL, so such a call crashes there; on CPU the default group
is gloo and takes it silently. The one sanctioned path for device tensors on the default group,
``pipeline.distributed.comm.reduce_on_device``, is exempt (on CPU its tensors are CPU tensors by
construction). DeepSpeed's and torch's own collectives are not ours and pass untouched.
"""

import os

if os.environ.get("DISTIL_EMULATE_NCCL") == "1":
    import functools
    import sys

    import torch
    import torch.distributed as dist

    _COLLECTIVES = (
        "all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor", "gather",
        "scatter", "reduce_scatter", "reduce_scatter_tensor", "all_to_all", "all_to_all_single",
    )  # fmt: skip
    _SANCTIONED = {("pipeline.distributed.comm", "reduce_on_device")}

    def _tensors(values):  # type: ignore[no-untyped-def]
        for v in values:
            if isinstance(v, torch.Tensor):
                yield v
            elif isinstance(v, (list, tuple)):
                yield from _tensors(v)

    def _guard(name, fn):  # type: ignore[no-untyped-def]
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):  # type: ignore[no-untyped-def]
            frame = sys._getframe(1)
            module = frame.f_globals.get("__name__", "")
            ours = module.split(".")[0] in ("pipeline", "data_prep")
            if ours and (module, frame.f_code.co_name) not in _SANCTIONED:
                group = kwargs.get("group")
                if group is None:
                    group = next((a for a in args if isinstance(a, dist.ProcessGroup)), None)
                default = group is None or group == dist.group.WORLD
                cpu = any(t.device.type == "cpu" for t in _tensors([*args, *kwargs.values()]))
                if default and cpu:
                    raise RuntimeError(
                        f"No backend type associated with device type cpu (NCCL emulation: "
                        f"{module}.{frame.f_code.co_name} called torch.distributed.{name} with a "
                        "CPU tensor on the default group; use pipeline.distributed.comm.ControlGroup)"
                    )
            return fn(*args, **kwargs)

        return wrapped

    for _name in _COLLECTIVES:
        if hasattr(dist, _name):
            setattr(dist, _name, _guard(_name, getattr(dist, _name)))
