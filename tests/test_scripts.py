"""scripts/run_distribute_train.sh and scripts/rank_table.py: the rank-table launch must start one
rank per device of the table and must not hide a failed rank behind exit 0."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK_TABLE = ROOT / "scripts" / "rank_table.py"
LAUNCH = "scripts/run_distribute_train.sh"
FAKE_CANN = "/opt/fake/cann/python/site-packages"


def write_table(path: Path, servers: dict[str, list[tuple[int, int]]], **extra) -> Path:
    """A v1.0 HCCL rank table; ``servers`` maps server_id to its (rank_id, device_id) pairs."""
    table = {"version": "1.0", "server_count": str(len(servers)),
             "server_list": [{"server_id": sid, "host_nic_ip": "reserve",
                              "device": [{"device_id": str(d), "device_ip": f"192.98.{r}.10",
                                          "rank_id": str(r)} for r, d in devices]}
                             for sid, devices in servers.items()],
             "status": "completed", **extra}
    path.write_text(json.dumps(table))
    return path


def run_table(path: Path, *args: str, server_id: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SERVER_ID"}
    if server_id is not None:
        env["SERVER_ID"] = server_id
    return subprocess.run([sys.executable, str(RANK_TABLE), str(path), *args], env=env,
                          capture_output=True, text=True, timeout=60)


def test_rank_table_single_server_needs_no_server_id(tmp_path):
    result = run_table(write_table(tmp_path / "t.json", {"10.0.0.1": [(1, 1), (0, 0)]}))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n0 0\n1 1\n"  # RANK_SIZE, then "rank_id device_id" by rank


def test_rank_table_multi_server_picks_server_id(tmp_path):
    table = write_table(tmp_path / "t.json", {"10.0.0.1": [(0, 0), (1, 1)],
                                              "10.0.0.2": [(2, 4), (3, 5)]})
    result = run_table(table, server_id="10.0.0.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "4\n2 4\n3 5\n"
    for server_id in (None, "10.0.0.9"):
        result = run_table(table, server_id=server_id)
        assert result.returncode == 2 and result.stdout == ""
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
        assert "SERVER_ID" in result.stderr and "10.0.0.1, 10.0.0.2" in result.stderr


@pytest.mark.parametrize("content, message", [
    (None, "rank table not found"),
    ("{", "not valid JSON"),
    ({"server_list": []}, "non-empty server_list"),
    ({"status": "initializing", "server_list": [{"server_id": "a", "device": [
        {"device_id": "0", "rank_id": "0"}]}]}, "status 'initializing'"),
    ({"server_list": [{"server_id": "a", "device": [
        {"device_id": "0", "rank_id": "0"}, {"device_id": "1", "rank_id": "2"}]}]},
     "rank_ids must be 0..1 once each, got [0, 2]"),
    ({"server_list": [{"server_id": "a", "device": [
        {"device_id": "0", "rank_id": "0"}, {"device_id": "0", "rank_id": "1"}]}]},
     "device_id twice"),
    ({"server_list": [{"server_id": "a", "device": [{"device_id": "x", "rank_id": "0"}]}]},
     "server_list[0].device[0].device_id must be a non-negative integer, got 'x'"),
])
def test_rank_table_refuses_bad_tables_in_one_line(tmp_path, content, message):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    result = run_table(path)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the launch scripts next to links to the real code, so runs/ lands in tmp_path."""
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("run_distribute_train.sh", "rank_table.py"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    for name in ("trainer", "datatools", "configs"):
        (root / name).symlink_to(ROOT / name)
    return root


def launch(project: Path, *args: str, cwd: Path | None = None, python: str = sys.executable,
           **env: str) -> subprocess.CompletedProcess:
    """Run the launch script of ``project`` from ``cwd`` (default: the project root) in a clean
    environment: no inherited rank variables or PYTHONPATH unless given in ``env``."""
    base = {k: v for k, v in os.environ.items()
            if k not in {"SERVER_ID", "RANK_SIZE", "RANK_ID", "DEVICE_ID", "LOCAL_RANK",
                         "RANK_TABLE_FILE", "PYTHONPATH", "HCCL_CONNECT_TIMEOUT", "MS_ROLE"}}
    return subprocess.run(["bash", str(project / LAUNCH), *args], cwd=cwd or project,
                          env={**base, "PYTHON": python, **env}, capture_output=True, text=True,
                          timeout=300)


def rank_dirs(project: Path) -> list[str]:
    base = project / "runs" / "rank-table"
    return sorted(p.name for p in base.iterdir()) if base.is_dir() else []


@pytest.mark.slow
def test_launch_starts_one_rank_per_device_and_reports_every_failure(project, tmp_path):
    """Real trainer ranks: on this CPU-only machine device_target=Ascend fails in every rank."""
    table = write_table(tmp_path / "table.json", {"10.0.0.1": [(0, 0), (1, 1)]})
    result = launch(project, str(table), "configs/demo.yaml", "name=rank-table-test")
    assert result.returncode == 1, result.stdout + result.stderr
    assert rank_dirs(project) == ["rank_0", "rank_1"]
    for rank in (0, 1):
        log = (project / f"runs/rank-table/rank_{rank}/train.log").read_text()
        assert log.startswith(f"rank {rank} of 2 on device {rank}: ")
        assert "Ascend" in log.split("\n", 1)[1]  # the trainer itself ran and refused Ascend
    assert result.stderr.splitlines()[-1] == (
        "error: ranks 0 1 failed (exit 2, 2); logs: runs/rank-table/rank_0/train.log "
        "runs/rank-table/rank_1/train.log")


FAKE_PYTHON = """#!/usr/bin/env bash
# Runs scripts/rank_table.py with the real python; a rank (-m trainer.train) reports what it got.
[ "$1" = -m ] || exec {python} "$@"
echo "argv=$*"
echo "cwd=$PWD"
for v in RANK_TABLE_FILE RANK_SIZE RANK_ID DEVICE_ID LOCAL_RANK PYTHONPATH ASCEND_PROCESS_LOG_PATH HCCL_CONNECT_TIMEOUT; do
  echo "$v=${{!v-<unset>}}"
done
code=FAKE_EXIT_$RANK_ID
exit "${{!code:-0}}"
"""


@pytest.fixture
def fake_python(tmp_path) -> str:
    path = tmp_path / "fake-python"
    path.write_text(FAKE_PYTHON.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def read_env(log: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.read_text().splitlines()[1:])


@pytest.mark.parametrize("inherited, timeout", [(None, None), (FAKE_CANN, "900")])
def test_launch_environment_of_each_rank(project, tmp_path, fake_python, inherited, timeout):
    """Server b's devices 4 and 6 run ranks 2 and 3 of 4 as its local ranks 0 and 1, with cwd =
    root and paths resolved, and HCCL given 600 s for every rank to join unless the caller set
    its own timeout."""
    caller = tmp_path / "caller"
    caller.mkdir()
    (caller / "my.yaml").write_text("name: x\n")
    write_table(caller / "table.json", {"a": [(0, 0), (1, 1)], "b": [(3, 6), (2, 4)]})
    env = {"SERVER_ID": "b", **({"PYTHONPATH": inherited} if inherited else {}),
           **({"HCCL_CONNECT_TIMEOUT": timeout} if timeout else {})}
    result = launch(project, "table.json", "my.yaml", "train.epochs=1", cwd=caller,
                    python=fake_python, **env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "all 2 ranks finished"
    assert rank_dirs(project) == ["rank_2", "rank_3"]
    for rank, device, local in ((2, 4, 0), (3, 6, 1)):
        rank_dir = project / f"runs/rank-table/rank_{rank}"
        got = read_env(rank_dir / "train.log")
        assert got == {
            "argv": f"-m trainer.train --config {caller / 'my.yaml'} device_target=Ascend "
                    "train.epochs=1",
            "cwd": str(project), "RANK_TABLE_FILE": str(caller / "table.json"), "RANK_SIZE": "4",
            "RANK_ID": str(rank), "DEVICE_ID": str(device), "LOCAL_RANK": str(local),
            "PYTHONPATH": f"{project}:{inherited}" if inherited else str(project),
            "ASCEND_PROCESS_LOG_PATH": str(rank_dir), "HCCL_CONNECT_TIMEOUT": timeout or "600"}


def test_launch_names_only_the_failed_rank(project, tmp_path, fake_python):
    table = write_table(tmp_path / "t.json", {"a": [(0, 0), (1, 1), (2, 2)]})
    result = launch(project, str(table), "name=x", python=fake_python, FAKE_EXIT_1="3")
    assert result.returncode == 1
    assert result.stderr == "error: rank 1 failed (exit 3); logs: runs/rank-table/rank_1/train.log\n"
    # name=x is an override, not a CONFIG: the default config is used
    assert read_env(project / "runs/rank-table/rank_0/train.log")["argv"] == (
        "-m trainer.train --config configs/stnet_r50_k400.yaml device_target=Ascend name=x")


def test_launch_usage(project):
    result = launch(project, "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: bash scripts/")
    result = launch(project)
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == "error: missing RANK_TABLE_FILE"


@pytest.mark.parametrize("servers, server_id, message", [
    ({"a": [(0, 0)], "b": [(1, 0)]}, None, "set SERVER_ID to this server's server_id (one of: a, b)"),
    ({"a": [(0, 0)], "b": [(1, 0)]}, "c", "SERVER_ID 'c' is not in the rank table (server_ids: a, b)"),
    (None, None, "is not valid JSON"),
])
def test_launch_refuses_bad_table_before_starting(project, tmp_path, fake_python, servers,
                                                  server_id, message):
    table = tmp_path / "t.json"
    write_table(table, servers) if servers else table.write_text("not json")
    result = launch(project, str(table), python=fake_python,
                    **({"SERVER_ID": server_id} if server_id else {}))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr
    assert rank_dirs(project) == []
