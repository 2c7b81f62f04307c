"""When and how a run saves and resumes: the trainer's one handle on its checkpoints.

:class:`CheckpointManager` decides when a checkpoint is due (every ``train.save_every`` steps, at
the end, and before stopping), refuses to save weights that are not finite (every rank agrees),
saves through :func:`pipeline.checkpoint.save.save` (ZeRO checkpoint + per-rank state + commit
marker from every rank's report, ``keep_last`` kept in commit order), logs the size and time of
each save, names the last good checkpoint for error messages, chooses the checkpoint every rank
resumes from (rank 0, checksums verified, one line of history kept: :mod:`.history`), refuses
a resume that would silently change a setting that shapes training (or, with
``train.allow_config_change``, records each change in ``RUN_DIR/config_changes.jsonl``), and
resumes an engine from it: directly at the same world size (bitwise exact, RNG restored),
through DeepSpeed's universal format at another.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

from data_prep.errors import UserError
from pipeline.checkpoint import store as ckpt
from pipeline.checkpoint.history import start_line
from pipeline.checkpoint.save import CONFIG_FILE, save
from pipeline.checkpoint.universal import ensure_universal, universal_path
from pipeline.config.changes import Change, setting_changes
from pipeline.config.schema import TrainConfig
from pipeline.distributed.comm import ControlGroup

CHANGES_FILE = "config_changes.jsonl"


class CheckpointManager:
    def __init__(
        self,
        run_dir: Path,
        cfg: TrainConfig,
        identity: dict[str, Any],
        control: ControlGroup,
        rank: int,
        log: Callable[[str], None],
        config: dict[str, Any] | None = None,
    ) -> None:
        """``config``: the run's resolved config (``Config.to_dict()`` plus ``resolved``), kept
        in every checkpoint and compared with the checkpoint's on resume."""
        self.run_dir = run_dir
        self.config = config
        self.cfg = cfg
        self.identity = identity
        self.control = control
        self.rank = rank
        self.log = log

    def due(self, step: int, final: bool) -> bool:
        """A checkpoint is due every ``save_every`` steps and whenever the run ends here."""
        return final or bool(self.cfg.save_every and step % self.cfg.save_every == 0)

    def save(self, engine: Any, step: int, consumed: int) -> str | None:
        """Save (collective); what is wrong instead of saving, or None when saved."""
        if self.control.any(
            not all(bool(torch.isfinite(p).all()) for p in engine.module.parameters())
        ):
            return f"non-finite weights at step {step}"
        start = time.perf_counter()
        # SaveFailed, on every rank, when any rank could not write its part
        path = save(
            engine,
            self.run_dir,
            step,
            consumed,
            self.identity,
            self.cfg.keep_last,
            self.control,
            self.config,
        )
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        self.log(
            f"saved checkpoint {path} ({size / 2**20:,.0f} MiB in "
            f"{time.perf_counter() - start:.1f} s)"
        )
        return None

    def last_good(self) -> str:
        found = ckpt.find_resume(self.run_dir, "auto", verify=False, quiet=True)
        return str(found.path) if found else "(none)"

    def agree_resume(self, resume: str) -> ckpt.CheckpointInfo | None:
        """The checkpoint every rank resumes from (collective): rank 0 chooses (``auto``: its
        newest complete one whose files match their checksums), keeps one line of history
        (:func:`~pipeline.checkpoint.history.start_line`), and every rank reads that one. On a
        shared file system just after a requeue, nodes can see different newest checkpoints; a
        rank that cannot read rank 0's choice fails the job on every rank with one line, instead
        of loading another one."""

        def choose() -> str | None:
            if self.rank != 0:
                return None
            found = ckpt.find_resume(self.run_dir, resume, verify=True)
            start_line(self.run_dir, resume, found, self.log)
            return str(found.path) if found else None

        chosen = self.control.broadcast(self.control.together(choose))
        if chosen is None:
            return None

        def read() -> ckpt.CheckpointInfo:
            try:
                return ckpt.read_checkpoint(Path(chosen))
            except UserError as exc:
                raise UserError(
                    f"rank {self.rank} cannot read the checkpoint rank 0 resumes from: {exc}. "
                    "Every node must see the same files: check the shared file system, or wait "
                    "for it to catch up and resubmit"
                ) from None

        found = self.control.together(read)
        ckpt.check_compatible(found, self.identity)
        self._check_changes(found)
        return found

    def _check_changes(self, found: ckpt.CheckpointInfo) -> None:
        """Refuse (every rank, the same files) a resume that changes a shaping setting unless
        ``train.allow_config_change``; then rank 0 prints and records each change."""
        if self.config is None:
            return
        changes = resume_changes(
            found.path, self.config, self.cfg.allow_config_change, self.run_dir / CHANGES_FILE
        )
        if not changes:
            return
        listed = "; ".join(map(str, changes))
        if self.rank == 0:
            step = int(found.commit["step"])
            self.log(f"note: resuming step {step} with changed settings: {listed}")
            path = self.run_dir / CHANGES_FILE
            now = round(time.time(), 3)
            with open(path, "a") as fh:
                for c in changes:
                    record = {"step": step, "time": now, "name": c.name}
                    fh.write(json.dumps({**record, "before": c.before, "after": c.after}) + "\n")

    def resume(self, engine: Any, found: ckpt.CheckpointInfo, world: int) -> tuple[int, int]:
        """Load ``found`` into ``engine`` (collective); the (step, consumed samples) it was at."""
        same_world = found.world_size == world
        if same_world:
            load_dir, tag = str(found.path.parent), found.tag
        else:
            if self.rank == 0:
                self.log(
                    f"resuming {found.tag} (saved by {found.world_size} ranks) on {world}: "
                    "converting to a universal checkpoint"
                )
            # every rank learns at once if the conversion fails on rank 0, and why
            self.control.together(lambda: ensure_universal(found) if self.rank == 0 else None)
            load_dir, tag = str(found.path.parent), universal_path(found).name
        path, _client = engine.load_checkpoint(load_dir, tag=tag)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load {found.path}")
        place_optimizer_steps(getattr(engine.optimizer, "optimizer", engine.optimizer))
        step = int(found.commit["step"])
        consumed = int(found.commit["consumed_samples"])
        state = ckpt.load_rank_state(found, self.rank) if same_world else None
        if state is not None:
            ckpt.restore_rng(state)
        else:  # another world size: fresh, deterministic RNG streams per rank
            torch.manual_seed(self.cfg.seed * 100_003 + step * 1_009 + self.rank)
        self.log(f"resumed from {found.path} at step {step} ({consumed:,} samples consumed)")
        return step, consumed


def resume_changes(
    checkpoint: Path, config: dict[str, Any], allowed: bool, record: Path
) -> list[Change]:
    """The shaping settings this run's ``config`` changes against the one ``checkpoint`` was
    saved under (none for a checkpoint of an earlier release, which holds no config.yaml);
    refused in one line unless ``allowed`` (``train.allow_config_change``) or only the length
    changes. ``record``: where the changes will be written, named in the refusal."""
    saved_path = checkpoint / CONFIG_FILE
    if not saved_path.is_file():
        return []
    try:
        saved = yaml.safe_load(saved_path.read_text()) or {}
    except yaml.YAMLError:
        raise UserError(f"{saved_path}: not valid YAML; resume from another checkpoint") from None
    changes = setting_changes(saved, config)
    if changes and not allowed and any(c.needs_consent for c in changes):
        raise UserError(
            f"{checkpoint}: this run's settings differ from the checkpoint's: "
            f"{'; '.join(map(str, changes))}. Run with the checkpoint's settings, or pass "
            f"--train.allow_config_change true to resume with the new ones (recorded in {record})"
        )
    return changes


def place_optimizer_steps(optimizer: torch.optim.Optimizer) -> int:
    """Put each ``step`` of a fused (or capturable) Adam group where torch wants it: a float32
    tensor on its parameter's device. Returns how many moved.

    DeepSpeed's universal-checkpoint loader writes the step it read from ``step.pt`` (converted on
    the CPU by ``ds_to_universal``) straight into ``optimizer.state``, around torch's
    ``load_state_dict``, which would have moved it: a CUDA run with fused AdamW would resume with a
    CPU step (DeepSpeed 0.19.8, ``load_hp_checkpoint_state_from_checkpoint_dir``).
    """
    moved = 0
    for group in optimizer.param_groups:
        if not (group.get("fused") or group.get("capturable")):
            continue
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            step = state.get("step")
            if step is None:
                continue
            if not torch.is_tensor(step) or (step.device, step.dtype) != (
                param.device,
                torch.float32,
            ):
                state["step"] = torch.as_tensor(step, dtype=torch.float32).to(param.device)
                moved += 1
    return moved
