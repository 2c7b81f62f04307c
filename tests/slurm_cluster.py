"""A throw-away, single-node Slurm cluster on loopback for tests.

`SlurmCluster(root)` writes a slurm.conf, a munge key and every state, spool, pid and log file
under `root`, picks free ports, and (as a context manager) starts munged, slurmctld and slurmd
as children of the test process. It waits until the node is idle, offers small helpers to
submit and follow jobs (`sbatch`, `wait`, `wait_running`, `job_info`, `scancel`), and on exit
cancels all jobs, runs `scontrol shutdown` and kills whatever is left (daemons by pid and pid
file, then any stray `slurmstepd` or job process that still carries this cluster's SLURM_CONF),
even when the test failed. An `atexit` hook is a last safety net.

Everything runs as root (SlurmUser=root), which is how the test machines run.
munged runs as root with `--force` because pytest's temp folders are mode 0700 and munged
refuses a socket directory that is not traversable by everyone otherwise.
`slurm_available()` says whether the binaries exist so tests can skip.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal as _signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["TERMINAL_STATES", "SlurmCluster", "SlurmError", "free_ports", "slurm_available"]

#: Job states after which a job does not run again (a requeued job goes REQUEUED/PENDING instead).
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "OUT_OF_MEMORY",
        "BOOT_FAIL",
        "DEADLINE",
    }
)

_DAEMONS = ("munged", "slurmctld", "slurmd")
_CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")
# Variables a surrounding Slurm job (or a user's shell) may carry that would steer our clients.
_STRIP_PREFIXES = ("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SQUEUE_", "SINFO_", "SCANCEL_")


class SlurmError(RuntimeError):
    """The test cluster did not start, a client command failed, or a wait timed out."""


def slurm_available() -> bool:
    """True when the Slurm daemons, the clients and munged are all on PATH (or in /usr/sbin)."""
    return all(_which(name) for name in (*_DAEMONS, *_CLIENTS))


def free_ports(n: int) -> list[int]:
    """`n` distinct TCP ports that were free on all interfaces a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<unreadable: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _pid_alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state letter follows the ")" that closes the command name.
    return stat[stat.rfind(")") + 2 :][:1] not in ("Z", "X", "")


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _ancestors() -> set[int]:
    """This process and all its ancestors (never to be killed by the sweep)."""
    out: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rfind(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def _parse_kv(line: str) -> dict[str, str]:
    """Parse one `scontrol show ... -o` line: `Key=value Key2=va lue ...` into a dict.

    Keys look like `JobId`, `ReqB:S:C:T` or `CPUs/Task`; a value runs up to the next ` Key=`,
    so values with spaces or `=` (TRES=cpu=2,mem=1M) survive.
    """
    starts = list(re.finditer(r"(?:^|\s)([A-Za-z][\w:/.]*)=", line))
    out: dict[str, str] = {}
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(line)
        out[m.group(1)] = line[m.end() : end].strip()
    return out


class SlurmCluster:
    """A real single-node Slurm cluster (munged + slurmctld + slurmd) living under `root`.

    Use as a context manager, or call `start()` / `stop()`. `cpus` is the node's CPU count in
    slurm.conf (default: this machine's); more CPUs than the machine has is allowed
    (SlurmdParameters=config_overrides), so tests can oversubscribe.
    """

    partition = "debug"
    cluster_name = "distiltest"

    def __init__(
        self,
        root: Path | str,
        cpus: int | None = None,
        *,
        start_timeout: float = 30.0,
        real_memory_mb: int | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.cpus = int(cpus) if cpus else (os.cpu_count() or 1)
        self.start_timeout = start_timeout
        self.node_name = socket.gethostname().split(".")[0]
        self.real_memory_mb = real_memory_mb or _default_real_memory_mb()
        self.conf_path = self.root / "etc" / "slurm.conf"
        self.munge_dir = self.root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket.2"
        self.state_dir = self.root / "state"
        self.spool_dir = self.root / "spool"
        self.log_dir = self.root / "log"
        self.run_dir = self.root / "run"
        self.jobs_dir = self.root / "jobs"
        self.slurmctld_port = 0
        self.slurmd_port = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pidfiles = {
            "munged": self.munge_dir / "munged.pid",
            "slurmctld": self.run_dir / "slurmctld.pid",
            "slurmd": self.run_dir / "slurmd.pid",
        }
        self._seen_pids: dict[str, set[int]] = {name: set() for name in _DAEMONS}
        self._started = False
        self._atexit_registered = False

    # ------------------------------------------------------------------ environment
    @property
    def env(self) -> dict[str, str]:
        """Env for client commands and jobs: os.environ minus stray SLURM_* vars, plus SLURM_CONF."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(_STRIP_PREFIXES)}
        env["SLURM_CONF"] = str(self.conf_path)
        return env

    @property
    def running(self) -> bool:
        """True between a successful `start()` and `stop()`."""
        return self._started

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> SlurmCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> SlurmCluster:
        """Write the config, start munged, slurmctld and slurmd, wait until the node is idle."""
        if self._started:
            return self
        missing = [n for n in (*_DAEMONS, *_CLIENTS) if not _which(n)]
        if missing:
            raise SlurmError(f"Slurm/munge binaries not found: {', '.join(missing)}")
        for attempt in range(3):
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            self._started = True  # so stop() cleans up whatever got started, even half-way
            self._procs = {}
            try:
                self._write_files()
                self._start_munged()
                self._spawn("slurmctld", [_req("slurmctld"), "-D", "-i", "-f", str(self.conf_path)])
                self._spawn(
                    "slurmd",
                    [_req("slurmd"), "-D", "-N", self.node_name, "-f", str(self.conf_path)],
                )
                self._wait_idle()
                return self
            except Exception as e:
                logs = self.log_tails()
                self.stop()
                # The free ports were only free a moment ago; someone may have taken one.
                if "already in use" in logs and attempt < 2:
                    for path in self.log_paths().values():
                        path.unlink(missing_ok=True)
                    continue
                raise SlurmError(
                    f"Slurm test cluster under {self.root} did not come up: {e}\n{logs}"
                ) from e
            except BaseException:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Cancel jobs, `scontrol shutdown`, then TERM/KILL whatever of this cluster remains."""
        if not self._started:
            return
        self._started = False
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        try:
            ctld = self._procs.get("slurmctld")
            if ctld is not None and ctld.poll() is None:
                with contextlib.suppress(SlurmError):
                    self._cancel_all_jobs()
                with contextlib.suppress(SlurmError):
                    self._run(["scontrol", "shutdown"], check=False, timeout=15)
                    # slurmctld tells slurmd to go down too; give both a moment to exit.
                    for name in ("slurmd", "slurmctld"):
                        self._wait_exit(name, 10.0)
            for name in ("slurmd", "slurmctld"):
                self._kill_daemon(name)
            self._sweep_strays()
            self._kill_daemon("munged")
        finally:
            for proc in self._procs.values():
                with contextlib.suppress(Exception):
                    proc.kill()
                with contextlib.suppress(Exception):
                    proc.wait(timeout=5)

    # ------------------------------------------------------------------ introspection
    def daemon_pids(self) -> dict[str, set[int]]:
        """Pids each daemon has had (from Popen and its pid file), for leak checks."""
        self._note_pidfiles()
        return {k: set(v) for k, v in self._seen_pids.items()}

    def log_paths(self) -> dict[str, Path]:
        """Where each daemon writes its log (stderr of the foreground daemons included)."""
        return {
            "slurmctld": self.log_dir / "slurmctld.log",
            "slurmctld-stderr": self.log_dir / "slurmctld.stderr",
            "slurmd": self.log_dir / "slurmd.log",
            "slurmd-stderr": self.log_dir / "slurmd.stderr",
            "munged": self.munge_dir / "munged.log",
        }

    def log_tails(self, lines: int = 40) -> str:
        """The last `lines` lines of every daemon log, for error messages."""
        parts = []
        for name, path in self.log_paths().items():
            if path.exists() and path.stat().st_size:
                parts.append(f"--- {name} ({path}) ---\n{_tail(path, lines)}")
        return "\n".join(parts) or "<no daemon logs>"

    def node_state(self) -> str:
        """The node's state as `sinfo` prints it (e.g. `idle`, `mixed`, `down*`)."""
        out = self._run(["sinfo", "-h", "-N", "-o", "%T"], check=False, timeout=10)
        return out.stdout.strip()

    # ------------------------------------------------------------------ jobs
    def sbatch(
        self,
        args: Sequence[str],
        script: str | Path | None = None,
        cwd: Path | str | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> int:
        """Submit a batch job and return its id.

        `script` is the script's text (a `str` starting with `#!`, fed to sbatch on stdin), a
        path to a script file (`Path`, or a `str` not starting with `#!`), or None when `args`
        holds `--wrap=...`. `cwd` is the submit directory, which is also the job's default
        working and output directory; default `root/jobs`. `extra_env` is added to `env`
        (sbatch exports the whole environment to the job).
        """
        cmd = ["sbatch", "--parsable", *args]
        stdin: str | None = None
        if isinstance(script, str) and script.startswith("#!"):
            stdin = script
        elif script is not None:
            cmd.append(str(script))
        env = self.env
        if extra_env:
            env.update(extra_env)
        workdir = Path(cwd) if cwd is not None else self.jobs_dir
        workdir.mkdir(parents=True, exist_ok=True)
        out = self._run(cmd, input=stdin, cwd=workdir, env=env, timeout=30)
        return int(out.stdout.strip().split(";")[0])

    def job_info(self, job_id: int) -> dict[str, str]:
        """`scontrol show job -o JOBID` as a dict (JobState, Restarts/RestartCnt, ExitCode, ...)."""
        out = self._run(["scontrol", "show", "job", "-o", str(job_id)], timeout=15)
        lines = [ln for ln in out.stdout.splitlines() if ln.strip()]
        if not lines:
            raise SlurmError(f"scontrol printed nothing for job {job_id}")
        info = _parse_kv(lines[0])
        # scontrol (22.05) calls it Restarts; squeue/sacct call it RestartCnt. Offer both.
        info.setdefault("RestartCnt", info.get("Restarts", "0"))
        return info

    def job_state(self, job_id: int) -> str:
        """The job's base state, e.g. RUNNING (flags such as `+` suffixes stripped)."""
        return self.job_info(job_id).get("JobState", "").split("+")[0]

    def wait(self, job_id: int, timeout: float = 120.0, poll: float = 0.5) -> str:
        """Wait for a terminal state (COMPLETED, FAILED, ...) and return it.

        REQUEUED / PENDING / REQUEUE_* are not terminal: a `--requeue` job that is requeued
        is waited for through its next run. A terminal state must be seen twice in a row, so a
        transient PREEMPTED/NODE_FAIL on the way to a requeue is not mistaken for the end.
        """
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            state = self.job_state(job_id)
            if state in TERMINAL_STATES and state == last:
                return state
            last = state
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"job {job_id} still {state!r} after {timeout:.0f}s: "
                    f"{self.job_info(job_id)}\n{self.log_tails(20)}"
                )
            time.sleep(poll)

    def wait_running(self, job_id: int, timeout: float = 60.0, poll: float = 0.25) -> None:
        """Wait until the job is RUNNING; raise if it ends first or the timeout passes."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_state(job_id)
            if state == "RUNNING":
                return
            if state in TERMINAL_STATES:
                raise SlurmError(f"job {job_id} ended ({state}) before it was seen running")
            if time.monotonic() > deadline:
                raise SlurmError(
                    f"job {job_id} still {state!r} after {timeout:.0f}s: {self.job_info(job_id)}"
                )
            time.sleep(poll)

    def scancel(self, job_id: int, signal: str | int | None = None, *, full: bool = False) -> None:
        """`scancel [--signal=SIG] [--full] JOBID`.

        With a signal and without `full`, Slurm signals only the job's steps (srun-launched
        tasks), not the batch script itself; `full=True` signals the batch shell too.
        """
        cmd = ["scancel"]
        if signal is not None:
            cmd.append(f"--signal={signal}")
        if full:
            cmd.append("--full")
        cmd.append(str(job_id))
        self._run(cmd, timeout=15)

    def squeue_ids(self) -> list[int]:
        """Ids of all jobs the controller still lists as pending/running/completing."""
        out = self._run(["squeue", "-h", "-o", "%A"], check=False, timeout=10)
        return [int(x) for x in out.stdout.split() if x.isdigit()]

    def run(
        self, args: Sequence[str], *, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (e.g. ["squeue", "-h"]) against this cluster."""
        return self._run(args, check=check, timeout=timeout)

    # ------------------------------------------------------------------ internals
    def _run(
        self,
        args: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [_which(args[0]) or args[0], *args[1:]]
        try:
            out = subprocess.run(
                cmd,
                input=input,
                stdin=subprocess.DEVNULL if input is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=cwd,
                env=dict(env) if env is not None else self.env,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise SlurmError(f"{' '.join(args)} timed out after {timeout}s") from e
        if check and out.returncode != 0:
            raise SlurmError(
                f"{' '.join(args)} failed ({out.returncode}): {out.stderr.strip() or out.stdout}"
            )
        return out

    def _write_files(self) -> None:
        for d in (self.root, self.state_dir, self.spool_dir, self.log_dir, self.run_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        self.conf_path.parent.mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(parents=True, exist_ok=True)
        self.munge_dir.chmod(0o755)
        key = self.munge_dir / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
        key.chmod(0o400)
        if len(str(self.munge_socket)) > 100:  # sun_path holds 108 bytes
            raise SlurmError(
                f"root {self.root} is too long for a unix socket path; use a shorter one"
            )
        self.slurmctld_port, self.slurmd_port = free_ports(2)
        (self.conf_path.parent / "plugstack.conf").write_text("")
        self.conf_path.write_text(self.render_conf())

    def render_conf(self) -> str:
        """The slurm.conf text for this cluster (ports as currently chosen)."""
        lines = [
            f"ClusterName={self.cluster_name}",
            f"SlurmctldHost={self.node_name}(127.0.0.1)",
            f"SlurmctldPort={self.slurmctld_port}",
            f"SlurmdPort={self.slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire=10",
            f"PlugStackConfig={self.conf_path.parent / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "MailProg=/bin/true",
            "JobRequeue=1",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            # Fast test timers.
            "MinJobAge=300",
            "KillWait=5",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            "MessageTimeout=10",
            "SchedulerParameters=sched_interval=2",
            # Files.
            f"StateSaveLocation={self.state_dir}",
            f"SlurmdSpoolDir={self.spool_dir}",
            f"SlurmctldPidFile={self._pidfiles['slurmctld']}",
            f"SlurmdPidFile={self._pidfiles['slurmd']}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # The node and the partition.
            f"NodeName={self.node_name} NodeAddr=127.0.0.1 CPUs={self.cpus} "
            f"RealMemory={self.real_memory_mb} State=UNKNOWN",
            f"PartitionName={self.partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]
        return "\n".join(lines) + "\n"

    def _start_munged(self) -> None:
        m = self.munge_dir
        self._spawn(
            "munged",
            [
                _req("munged"),
                "-F",
                "--force",
                f"--socket={self.munge_socket}",
                f"--pid-file={self._pidfiles['munged']}",
                f"--log-file={m / 'munged.log'}",
                f"--seed-file={m / 'munged.seed'}",
                f"--key-file={m / 'munge.key'}",
            ],
            log=m / "munged.log",
        )
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            proc = self._procs["munged"]
            if proc.poll() is not None:
                raise SlurmError(f"munged exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise SlurmError("munged did not create its socket within 10 s")
            time.sleep(0.05)

    def _spawn(self, name: str, cmd: list[str], log: Path | None = None) -> None:
        log = log or self.log_dir / f"{name}.stderr"
        with open(log, "ab") as f:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,  # a Ctrl-C in pytest must not kill them before stop()
            )
        self._procs[name] = proc
        self._seen_pids[name].add(proc.pid)

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        state = ""
        while time.monotonic() < deadline:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited early with code {proc.returncode}")
            state = self.node_state()
            if state == "idle":
                self._note_pidfiles()
                return
            time.sleep(0.25)
        raise SlurmError(f"node not idle after {self.start_timeout:.0f}s (sinfo says {state!r})")

    def _note_pidfiles(self) -> None:
        for name, path in self._pidfiles.items():
            with contextlib.suppress(OSError, ValueError):
                self._seen_pids[name].add(int(path.read_text().split()[0]))

    def _cancel_all_jobs(self) -> None:
        ids = self.squeue_ids()
        if not ids:
            return
        self._run(["scancel", *map(str, ids)], check=False, timeout=15)
        deadline = time.monotonic() + 15
        while self.squeue_ids() and time.monotonic() < deadline:
            time.sleep(0.25)

    def _wait_exit(self, name: str, timeout: float) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=timeout)

    def _kill_daemon(self, name: str) -> None:
        """SIGTERM, then SIGKILL after a few seconds, every pid this daemon has had."""
        self._note_pidfiles()
        proc = self._procs.get(name)
        pids = {p for p in self._seen_pids[name] if _pid_alive(p) and _comm(p) == name}
        if proc is not None and proc.poll() is None:
            pids.add(proc.pid)
        _terminate(pids, proc)

    def _sweep_strays(self) -> None:
        """Kill slurmstepd and job processes left behind: they carry our SLURM_CONF."""
        marker = f"SLURM_CONF={self.conf_path}".encode()
        keep = _ancestors() | {p.pid for p in self._procs.values()}
        strays: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in keep:
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0"):
                strays.add(int(entry.name))
        _terminate(strays, None)


def _terminate(pids: set[int], proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    """SIGTERM `pids`, wait up to `grace` s, SIGKILL the rest; reap `proc` if it is ours."""
    if not pids:
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, _signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap, so our own child does not linger as a zombie
        if not any(_pid_alive(p) for p in pids):
            break
        time.sleep(0.1)
    for pid in pids:
        if _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, _signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _req(name: str) -> str:
    path = _which(name)
    if path is None:
        raise SlurmError(f"{name} not found")
    return path


def _default_real_memory_mb() -> int:
    """90% of MemTotal in MB (slurmd would drain a node that claims more than it has)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return max(256, int(int(line.split()[1]) / 1024 * 0.9))
    except (OSError, ValueError, IndexError):
        pass
    return 1024
