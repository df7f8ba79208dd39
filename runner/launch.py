"""Launch: run in this process, or re-execute the same ``run`` command under ``torchrun`` on every rank.

The user types one command (``run hardware=deepspeed hardware.nproc_per_node=8 ...``). When the run needs several
processes (world size above 1, or DeepSpeed, which needs a process group even for one), :func:`relaunch` starts
``torchrun`` with the job's own overrides plus the run dir fixed by the launching process, so that every rank
composes the same resolved config and writes to the same run dir (only rank 0 writes; see
:class:`runner.outputs.RunDir`). The children carry :data:`LAUNCHED_ENV`: they never relaunch and skip the run-dir
freshness check (rank 0 may already be writing while the others start).

Topology (:func:`topology`) comes from ``hardware.*`` (``nproc_per_node``, ``nnodes``, ``node_rank``,
``master_addr``, ``master_port``), or from a DeepSpeed-style ``hardware.hostfile`` (``host slots=N`` lines), or,
inside a SLURM allocation of several nodes, from SLURM's variables. One node uses torchrun's ``--standalone``
rendezvous (a free local port, so parallel runs never clash); several nodes use the static rendezvous at
``master_addr:master_port`` with fixed node ranks (the node of ``node_rank=0`` holds global rank 0).

The command builders (:func:`torchrun_args`, :func:`torchrun_command`) are pure functions. This module imports no
torch at module level.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.errors import ConfigError, HardwareError

log = logging.getLogger("runner")

LAUNCHED_ENV = "RUNNER_LAUNCHED"
"""Set to ``1`` in the environment of every rank started by :func:`relaunch`."""

_LOCAL_RANK_ARG = re.compile(r"^--local[_-]rank(=(\d+))?$")


@dataclass(frozen=True)
class Topology:
    """Where the ranks of a run live."""

    nnodes: int
    """Number of nodes."""
    nproc_per_node: int
    """Processes (GPUs) per node."""
    node_rank: int
    """This node's rank in ``[0, nnodes)``."""
    master_addr: str
    """Host of global rank 0 (the rendezvous address when ``nnodes > 1``)."""
    master_port: int
    """Rendezvous port."""

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node


# --------------------------------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------------------------------


def parse_hostfile(path: str | Path) -> list[tuple[str, int]]:
    """Hosts and slots of a DeepSpeed hostfile: one ``<host> slots=<n>`` per line, ``#`` comments.

    Raises:
        ConfigError: the file is missing, empty, or a line is not ``host slots=N`` (naming the line).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"'hardware.hostfile' is '{path}', which is not a file; give a DeepSpeed hostfile with "
                          "one 'host slots=N' line per node.")
    hosts: list[tuple[str, int]] = []
    for number, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"(\S+)\s+slots\s*=\s*(\d+)", line)
        if not m or int(m.group(2)) < 1:
            raise ConfigError(f"'hardware.hostfile' {path} line {number} is '{raw.strip()}'; each line must be "
                              "'<host> slots=<N>' with N >= 1.")
        hosts.append((m.group(1), int(m.group(2))))
    if not hosts:
        raise ConfigError(f"'hardware.hostfile' {path} lists no host; add one 'host slots=N' line per node.")
    if len({n for _, n in hosts}) != 1:
        raise ConfigError(f"'hardware.hostfile' {path} gives different slot counts {[n for _, n in hosts]}; torchrun "
                          "starts the same number of processes on every node.")
    if len({h for h, _ in hosts}) != len(hosts):
        raise ConfigError(f"'hardware.hostfile' {path} lists a host twice.")
    return hosts


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``gpu[03-05,09],cpu1`` -> ``gpu03``)."""
    depth, end = 0, len(nodelist)
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            end = i
            break
    head = nodelist[:end]
    m = re.fullmatch(r"([^\[]*)\[([^\],\-]+)[^\]]*\](.*)", head)
    return f"{m.group(1)}{m.group(2)}{m.group(3)}" if m else head


def topology(hw: Any, env: Mapping[str, str] | None = None, hostname: str | None = None) -> Topology:
    """The run's topology from ``hardware.*``, a hostfile, or a SLURM allocation (in that order of precedence:
    hostfile, then SLURM when ``hardware.nnodes > 1``, then the keys).

    Args:
        hw: the ``hardware`` config node.
        env: environment variables (default ``os.environ``); SLURM's ``SLURM_NODEID``, ``SLURM_JOB_NODELIST``,
            ``SLURM_NNODES`` are read when ``hardware.nnodes > 1``.
        hostname: this machine's name (default: ``socket.gethostname()``), to find its line in a hostfile.

    Raises:
        ConfigError: a bad hostfile, or this host is not in it; SLURM's node count differs from
            ``hardware.nnodes``.
    """
    env = os.environ if env is None else env
    port = int(hw.master_port)
    if hw.hostfile:
        hosts = parse_hostfile(hw.hostfile)
        names = [h for h, _ in hosts]
        me = hostname or socket.gethostname()
        candidates = {me, me.split(".")[0]}
        rank = next((i for i, h in enumerate(names) if h in candidates or h.split(".")[0] in candidates), None)
        if rank is None:
            if len(hosts) == 1:
                rank = 0
            else:
                raise ConfigError(f"this host '{me}' is not in 'hardware.hostfile' {hw.hostfile} ({', '.join(names)}); "
                                  "run the command on the listed hosts, or fix the file.")
        return Topology(nnodes=len(hosts), nproc_per_node=hosts[0][1], node_rank=rank,
                        master_addr=names[0] if len(hosts) > 1 else "127.0.0.1", master_port=port)
    nnodes, node_rank, addr = int(hw.nnodes), int(hw.node_rank), str(hw.master_addr)
    if nnodes > 1 and env.get("SLURM_JOB_ID") and env.get("SLURM_NODEID"):
        slurm_nodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 0)
        if slurm_nodes != nnodes:
            raise ConfigError(f"'hardware.nnodes' is {nnodes} but the SLURM allocation has {slurm_nodes} node(s); "
                              f"set hardware.nnodes={slurm_nodes} or ask SLURM for {nnodes} nodes "
                              "(hydra.launcher.nodes).")
        node_rank = int(env["SLURM_NODEID"])
        addr = first_slurm_host(env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or addr)
    return Topology(nnodes=nnodes, nproc_per_node=int(hw.nproc_per_node), node_rank=node_rank, master_addr=addr,
                    master_port=port)


# --------------------------------------------------------------------------------------------------------------------
# Command lines (pure)
# --------------------------------------------------------------------------------------------------------------------


def torchrun_args(topo: Topology, script_args: Sequence[str], module: str = "runner.cli") -> list[str]:
    """``torchrun`` arguments that start ``python -m <module> <script_args>`` on every rank of this node.

    One node: ``--standalone`` (rendezvous on a free local port). Several nodes: static rendezvous at
    ``master_addr:master_port`` with this node's ``--node-rank``. ``--max-restarts=0``: a failed rank fails the run.
    """
    args = [f"--nnodes={topo.nnodes}", f"--nproc-per-node={topo.nproc_per_node}"]
    if topo.nnodes == 1:
        args.insert(0, "--standalone")
    else:
        args += [f"--node-rank={topo.node_rank}", f"--master-addr={topo.master_addr}",
                 f"--master-port={topo.master_port}"]
    args += ["--max-restarts=0", "-m", module, *script_args]
    return args


def torchrun_command(topo: Topology, script_args: Sequence[str], module: str = "runner.cli") -> list[str]:
    """The equivalent ``torchrun ...`` command line (what :func:`relaunch` runs, through :func:`main`)."""
    return ["torchrun", *torchrun_args(topo, script_args, module)]


def child_args(task_overrides: Sequence[str], run_dir: str | Path) -> list[str]:
    """The ``run`` arguments of every rank: the job's own overrides and its run dir, fixed once.

    ``hydra.run.dir`` and ``run_dir`` given by the user are replaced (the launching process already resolved them);
    hydra's own flags are not passed on (each rank runs one job).
    """
    keep = [o for o in task_overrides if not o.startswith(("hydra.run.dir=", "run_dir=", "-"))]
    return [*keep, f"hydra.run.dir={_hydra_quote(str(Path(run_dir).absolute()))}"]


def _hydra_quote(value: str) -> str:
    if re.fullmatch(r"[\w./\-+:@~%]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def strip_local_rank(argv: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
    """``argv`` without a launcher-injected ``--local_rank=N`` / ``--local-rank N`` (its value goes to
    ``LOCAL_RANK`` in ``env``, default ``os.environ``, unless already set)."""
    env = os.environ if env is None else env
    out: list[str] = []
    skip_next = False
    for i, a in enumerate(argv):
        if skip_next:
            skip_next = False
            continue
        m = _LOCAL_RANK_ARG.match(a)
        if not m:
            out.append(a)
            continue
        value = m.group(2)
        if value is None and i + 1 < len(argv) and argv[i + 1].isdigit():
            value, skip_next = argv[i + 1], True
        if value is not None:
            env.setdefault("LOCAL_RANK", value)
    return out


# --------------------------------------------------------------------------------------------------------------------
# Relaunch
# --------------------------------------------------------------------------------------------------------------------


def is_launched(env: Mapping[str, str] | None = None) -> bool:
    """True inside a rank started by a launcher (ours, torchrun, the DeepSpeed launcher)."""
    env = os.environ if env is None else env
    return env.get(LAUNCHED_ENV) == "1" or "LOCAL_RANK" in env


def needs_launch(cfg: Any, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process must start the ranks: a distributed run (world size above 1, or DeepSpeed at any size),
    not a dry-run, and not already inside a launched rank."""
    from runner.config import world_size

    if cfg.hardware.distributed == "none" or cfg.dry_run or is_launched(env):
        return False
    return world_size(cfg) > 1 or cfg.hardware.distributed == "deepspeed"


def check_world(cfg: Any, env: Mapping[str, str] | None = None) -> None:
    """Inside launched ranks, the launcher's ``WORLD_SIZE`` must be the config's world size (the batch sizes and
    the DeepSpeed config are derived from it).

    Raises:
        ConfigError: naming both numbers and the keys that set the config's.
    """
    from runner.config import world_size

    env = os.environ if env is None else env
    if cfg.hardware.distributed == "none" or not is_launched(env) or "WORLD_SIZE" not in env:
        return
    launched, configured = int(env["WORLD_SIZE"]), world_size(cfg)
    if launched != configured:
        raise ConfigError(f"the launcher started {launched} process(es) (WORLD_SIZE) but the config's world size is "
                          f"{configured} (hardware.nproc_per_node={cfg.hardware.nproc_per_node} x hardware.nnodes="
                          f"{cfg.hardware.nnodes}); make them agree, or let the runner launch the ranks itself.")


def child_env(hw: Any, topo: Topology, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ranks' environment: :data:`LAUNCHED_ENV`, DeepSpeed's CPU accelerator on the CPU, and one thread budget
    per rank (``hardware.num_threads``, else the node's cores shared out) unless ``OMP_NUM_THREADS`` is set."""
    out = dict(os.environ if env is None else env)
    out[LAUNCHED_ENV] = "1"
    if hw.device == "cpu":
        out.setdefault("DS_ACCELERATOR", "cpu")
    if "OMP_NUM_THREADS" not in out:
        threads = hw.num_threads or max(1, (os.cpu_count() or 1) // topo.nproc_per_node)
        out["OMP_NUM_THREADS"] = str(threads)
    return out


def relaunch(cfg: Any, task_overrides: Sequence[str], run_dir: str | Path) -> int:
    """Run the job on every rank of this node under torchrun; returns the exit status (0 when every rank succeeded).

    Raises:
        ConfigError: a bad hostfile or SLURM mismatch (from :func:`topology`).
        HardwareError: torchrun could not be started.
    """
    topo = topology(cfg.hardware)
    args = torchrun_args(topo, child_args(task_overrides, run_dir))
    log.info("launching %d process(es) on node %d of %d: %s", topo.nproc_per_node, topo.node_rank, topo.nnodes,
             " ".join(torchrun_command(topo, child_args(task_overrides, run_dir))))
    try:
        proc = subprocess.Popen([sys.executable, "-m", "runner.launch", *args], env=child_env(cfg.hardware, topo))
    except OSError as ex:
        raise HardwareError(f"could not start torchrun ({ex}); check that torch is installed in {sys.executable}.") from None
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C or a kill of the launcher: stop the ranks too
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m runner.launch <torchrun args>``: torchrun, with a failed rank reported as one line and its exit
    status (the failing rank has printed its own error) instead of torchrun's traceback."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(sys.argv[1:] if argv is None else argv)))
    except ChildFailedError as ex:
        if 0 in ex.failures:  # rank 0 printed its own error paragraph
            rank, failure = 0, ex.failures[0]
        else:
            rank, failure = ex.get_first_failure()
            sys.stderr.write(f"run: rank {rank} failed with exit status {failure.exitcode} (rank 0 did not fail; "
                             "its log and the run dir's status.json may tell more).\n")
        sys.exit(failure.exitcode if failure.exitcode and failure.exitcode > 0 else 1)


if __name__ == "__main__":
    main()
