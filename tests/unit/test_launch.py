"""runner/launch.py: topology (keys, hostfile, SLURM), the pure torchrun command builders, argv handling."""

from __future__ import annotations

import pytest

from runner import launch
from runner.errors import ConfigError
from runner.launch import Topology


def _hw(compose_cfg, *overrides):
    return compose_cfg("hardware=deepspeed", "hardware.device=cpu", "hardware.precision=fp32", *overrides).hardware


def test_torchrun_args_one_node_uses_a_standalone_rendezvous():
    topo = Topology(nnodes=1, nproc_per_node=2, node_rank=0, master_addr="127.0.0.1", master_port=29500)
    args = launch.torchrun_args(topo, ["method=slam", "hydra.run.dir=/runs/a"])
    assert args == ["--standalone", "--nnodes=1", "--nproc-per-node=2", "--max-restarts=0", "-m", "runner.cli",
                    "method=slam", "hydra.run.dir=/runs/a"]


def test_torchrun_command_several_nodes_uses_the_static_rendezvous():
    topo = Topology(nnodes=2, nproc_per_node=8, node_rank=1, master_addr="gpu03", master_port=29600)
    cmd = launch.torchrun_command(topo, ["hardware=deepspeed", "hydra.run.dir=/shared/run"])
    assert cmd == ["torchrun", "--nnodes=2", "--nproc-per-node=8", "--node-rank=1", "--master-addr=gpu03",
                   "--master-port=29600", "--max-restarts=0", "-m", "runner.cli", "hardware=deepspeed",
                   "hydra.run.dir=/shared/run"]
    assert topo.world_size == 16


def test_torchrun_args_parse_with_torchrun_itself():
    from torch.distributed.run import parse_args

    topo = Topology(nnodes=2, nproc_per_node=4, node_rank=1, master_addr="node0", master_port=29511)
    args = parse_args(launch.torchrun_args(topo, ["seed=3"]))
    assert (args.nnodes, args.nproc_per_node, args.node_rank, args.master_addr, args.master_port) == (
        "2", "4", 1, "node0", 29511)
    assert args.module and args.training_script == "runner.cli" and args.training_script_args == ["seed=3"]
    assert args.max_restarts == 0


def test_child_args_fix_the_run_dir_once():
    args = launch.child_args(["method=slam", "hydra.run.dir=old", "run_dir=x", "-m", "seed=2"], "/a b/run")
    assert args == ["method=slam", "seed=2", "hydra.run.dir='/a b/run'"]
    assert launch.child_args(["seed=1"], "/runs/r1") == ["seed=1", "hydra.run.dir=/runs/r1"]


def test_topology_from_the_keys(compose_cfg):
    hw = _hw(compose_cfg, "hardware.nproc_per_node=4", "hardware.nnodes=2", "hardware.node_rank=1",
             "hardware.master_addr=10.0.0.5", "hardware.master_port=29700")
    assert launch.topology(hw, env={}) == Topology(2, 4, 1, "10.0.0.5", 29700)


def test_topology_from_a_hostfile(compose_cfg, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# two nodes\nnode-a slots=4\n\nnode-b.cluster slots=4  # second\n")
    hw = _hw(compose_cfg, f"hardware.hostfile={hostfile}")
    assert launch.topology(hw, env={}, hostname="node-b") == Topology(2, 4, 1, "node-a", 29500)
    assert launch.topology(hw, env={}, hostname="node-a.cluster").node_rank == 0
    with pytest.raises(ConfigError, match="this host 'elsewhere' is not in 'hardware.hostfile'"):
        launch.topology(hw, env={}, hostname="elsewhere")


@pytest.mark.parametrize("text,needle", [
    ("node-a slots=4\nnode-b 4\n", "line 2 is 'node-b 4'"),
    ("node-a slots=4\nnode-b slots=2\n", "different slot counts [4, 2]"),
    ("# nothing\n", "lists no host"),
])
def test_bad_hostfiles_name_the_problem(tmp_path, text, needle):
    path = tmp_path / "hosts"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        launch.parse_hostfile(path)
    assert needle in str(info.value)


def test_missing_hostfile_is_refused_by_validate(compose_cfg, tmp_path):
    from runner.config import validate

    cfg = compose_cfg("hardware=deepspeed", f"hardware.hostfile={tmp_path / 'nope'}")
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    assert "'hardware.hostfile' is" in info.value.paragraph() and "nope', which is not a file" in info.value.paragraph()


@pytest.mark.parametrize("nodelist,first", [("gpu[03-05,09],cpu1", "gpu03"), ("node7", "node7"),
                                            ("a1,b[2-3]", "a1"), ("rack[12-13]-n[1-2]", "rack12-n[1-2]")])
def test_first_slurm_host(nodelist, first):
    assert launch.first_slurm_host(nodelist) == first


def test_topology_inside_slurm(compose_cfg):
    hw = _hw(compose_cfg, "hardware.nproc_per_node=8", "hardware.nnodes=2")
    env = {"SLURM_JOB_ID": "42", "SLURM_NODEID": "1", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "gpu[03-04]"}
    assert launch.topology(hw, env=env) == Topology(2, 8, 1, "gpu03", 29500)
    with pytest.raises(ConfigError, match="'hardware.nnodes' is 2 but the SLURM allocation has 3 node"):
        launch.topology(hw, env={**env, "SLURM_NNODES": "3"})


def test_an_injected_local_rank_argument_is_removed():
    env: dict[str, str] = {}
    assert launch.strip_local_rank(["--local_rank=3", "seed=1"], env) == ["seed=1"]
    assert env == {"LOCAL_RANK": "3"}
    env = {"LOCAL_RANK": "1"}
    assert launch.strip_local_rank(["seed=1", "--local-rank", "2", "dry_run=true"], env) == ["seed=1",
                                                                                           "dry_run=true"]
    assert env == {"LOCAL_RANK": "1"}  # the launcher's environment wins


def test_rank_argv_silences_hydra_files_on_other_ranks():
    from runner.cli import rank_argv

    assert rank_argv(["seed=1"], {"RANK": "0"}) == ["seed=1"]
    assert rank_argv(["--local_rank=1", "seed=1"], {"RANK": "1"}) == [
        "seed=1", "hydra.output_subdir=null", "hydra/job_logging=disabled"]


@pytest.mark.parametrize("overrides,env,expected", [
    (["hardware=ddp", "hardware.device=cpu", "hardware.precision=fp32"], {}, False),  # DDP at world size 1
    (["hardware=ddp", "hardware.device=cpu", "hardware.precision=fp32", "hardware.nproc_per_node=2"], {}, True),
    (["hardware=deepspeed", "hardware.device=cpu", "hardware.precision=fp32"], {}, True),  # needs a group
    (["hardware=deepspeed", "hardware.nproc_per_node=8", "dry_run=true"], {}, False),
    (["hardware=deepspeed", "hardware.nproc_per_node=2"], {"RUNNER_LAUNCHED": "1"}, False),
    (["hardware=deepspeed", "hardware.nproc_per_node=2"], {"LOCAL_RANK": "0"}, False),
    (["hardware=cpu"], {}, False),
])
def test_needs_launch(compose_cfg, overrides, env, expected):
    assert launch.needs_launch(compose_cfg(*overrides), env) is expected


def test_child_env_marks_the_ranks_and_shares_the_cores(compose_cfg):
    hw = _hw(compose_cfg, "hardware.nproc_per_node=2")
    topo = launch.topology(hw, env={})
    env = launch.child_env(hw, topo, {"PATH": "/bin"})
    assert env["RUNNER_LAUNCHED"] == "1" and env["DS_ACCELERATOR"] == "cpu" and int(env["OMP_NUM_THREADS"]) >= 1
    assert launch.child_env(hw, topo, {"OMP_NUM_THREADS": "3"})["OMP_NUM_THREADS"] == "3"


def test_an_external_launchers_world_size_must_match_the_config(compose_cfg):
    cfg = compose_cfg("hardware=ddp", "hardware.device=cpu", "hardware.precision=fp32", "hardware.nproc_per_node=2")
    launch.check_world(cfg, {"LOCAL_RANK": "0", "WORLD_SIZE": "2"})
    launch.check_world(cfg, {})  # not launched: nothing to compare
    with pytest.raises(ConfigError, match=r"started 4 process\(es\) \(WORLD_SIZE\) but the config's world size is 2"):
        launch.check_world(cfg, {"LOCAL_RANK": "0", "WORLD_SIZE": "4"})
