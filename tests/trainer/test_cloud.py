"""Cloud mode against a real S3 server (moto's, tests/conftest.py): a 3-rank msrun training pulls
its records from the bucket once for the node, pushes its run folder after every epoch, reports
the top-1 of the best.ckpt it saves, and a second job on an empty machine resumes from what was
pushed; plus the ModelArts flags, the free-space refusal, the waiting ranks, which rank is local
rank 0 under msrun and under a rank table on devices 4 and 5 (that pulls once for the node too), a
failed push, a checkpoint_url on OBS, and one-line failures that never show a credential."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from datatools import sync
from datatools.cli import run_cli
from datatools.obs import Bucket
from datatools.schema import read_labels
from tests.conftest import KEY_ID, SECRET, TOKEN, WsgiApp, free_port, s3_app, serving
from tests.test_scripts import launch, project, write_table  # noqa: F401 (project: a fixture)
from tests.trainer.test_config import DEMO, REPO
from trainer import cloud, eval as eval_cmd, export as export_cmd, train as train_cmd
from trainer.config import ConfigError, config_from_args, load_config
from trainer.rundir import RunDir

VENV_BIN = Path(sys.executable).parent


pytestmark = pytest.mark.slow   # trainings, msrun jobs and OBS transfers


@pytest.fixture
def records_url(tiny_records, bucket) -> str:
    """tiny_records (labels.txt, train/, val/) pushed to the bucket as a user would."""
    url = f"obs://{bucket}/k400"
    sync.sync(str(tiny_records.root), url)
    return url


def _copied_bytes(root: Path, tops: tuple[str, ...]) -> int:
    """Bytes of the files of ``root`` under ``tops`` that datatools.sync copies (no hidden ones)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file()
               and (rel := p.relative_to(root).as_posix()).split("/")[0] in tops
               and sync.phase_of(rel) is not None)


# ---------------------------------------------------------------- flags and config


@pytest.mark.parametrize("command", [train_cmd, eval_cmd, export_cmd])
def test_modelarts_flags_map_to_the_cloud_section_in_both_forms(command):
    parser = command.build_parser()
    args = parser.parse_intermixed_args(["--config", str(DEMO), "--data_url=obs://bkt/k400",
                                         "train.epochs=1", "--train_url", "/cache/out"])
    cfg = config_from_args(args)
    assert (cfg.cloud.data_url, cfg.cloud.train_url, cfg.train.epochs) == ("obs://bkt/k400", "/cache/out", 1)
    assert cfg.cloud.cache_dir == "/cache" and cfg.cloud.checkpoint_url is None


def test_a_bad_flag_value_is_one_config_error_naming_it():
    args = train_cmd.build_parser().parse_intermixed_args(["--config", str(DEMO), "--data_url=obs://Bkt/x"])
    with pytest.raises(ConfigError, match=r"^cloud\.data_url must be null, a local path or "
                                          r"obs://bucket/prefix \(malformed OBS URL 'obs://Bkt/x'"):
        config_from_args(args)


# ---------------------------------------------------------------- free space, markers


def test_pull_refuses_with_the_numbers_when_the_splits_do_not_fit(tiny_records, records_url, tmp_path):
    dest = tmp_path / "cache"
    needed = _copied_bytes(tiny_records.root, ("labels.txt", "train", "val"))
    with pytest.raises(OSError) as info:
        cloud.pull_records(records_url, dest, ["train", "val"], free=1000)
    assert str(info.value) == (f"cannot pull {records_url} (train, val) into {dest}: {needed / 1e6:.2f} MB "
                               f"still to copy, 1.00 kB free there: free space or set cloud.cache_dir "
                               f"to a larger disk")
    assert not dest.exists()                                   # refused before copying anything
    with pytest.raises(FileNotFoundError, match=rf"^{records_url} holds no test: data_url must name a "
                                                rf"records root \(labels.txt and one folder per split\)$"):
        cloud.pull_records(records_url, dest, ["val", "test"])
    just_fits = _copied_bytes(tiny_records.root, ("labels.txt", "val"))   # the train split not counted
    cloud.pull_records(records_url, dest, ["val"], free=just_fits)          # pulled and inspected
    assert sorted(p.name for p in dest.iterdir()) == ["labels.txt", "val"]


def test_waiting_ranks_fail_with_rank_0s_error_or_after_the_timeout(tmp_path, monkeypatch):
    monkeypatch.setattr(cloud, "POLL_SECONDS", 0.05)
    marker, token = tmp_path / cloud.MARKER, cloud.launch_token()
    with pytest.raises(TimeoutError, match=rf"^obs://b/k: waited \d+ s for local rank 0 of this node to "
                                           rf"start pulling it \(no {re.escape(str(marker))} from this "
                                           rf"launch\): see its log$"):
        cloud.wait_for(marker, "obs://b/k", token, timeout=0.2)

    def refused():
        raise OSError("list obs://b/k/: HTTP 404 NoSuchBucket: no such bucket at http://e")

    with pytest.raises(OSError, match="NoSuchBucket"):            # local rank 0's side
        cloud.once_per_node(tmp_path, "obs://b/k", refused)
    with pytest.raises(OSError, match=r"^obs://b/k: local rank 0 failed to pull it: list obs://b/k/: "
                                      r"HTTP 404 NoSuchBucket"):
        cloud.wait_for(marker, "obs://b/k", token, timeout=5)
    with pytest.raises(TimeoutError, match="waited"):             # an earlier launch's marker
        cloud.wait_for(marker, "obs://b/k", "another launch", timeout=0.2)

    cloud.once_per_node(tmp_path, "obs://b/k", lambda: None)
    cloud.wait_for(marker, "obs://b/k", token, timeout=5)         # done: returns at once
    marker.write_text(json.dumps({"token": token, "state": cloud.PULLING, "error": ""}))
    os.utime(marker, (time.time() - 60, time.time() - 60))
    with pytest.raises(TimeoutError, match=r"local rank 0 of this node stopped reporting while "
                                           r"pulling it \(.* untouched for \d+ s\)"):
        cloud.wait_for(marker, "obs://b/k", token, timeout=0.2)


def test_a_pull_longer_than_the_timeout_keeps_the_waiting_ranks_waiting(tmp_path, monkeypatch):
    """The leader's pull lasts until the test has seen the waiting rank look at the marker twice
    after its timeout had passed (the heartbeat keeps it waiting); then the pull ends and the
    waiting rank returns. No outcome depends on how fast the machine is."""
    timeout = 2.0                       # 40 heartbeats: only a whole-process stall could miss them
    monkeypatch.setattr(cloud, "POLL_SECONDS", 0.05)
    monkeypatch.setattr(cloud, "HEARTBEAT_SECONDS", 0.05)
    looks: list[float] = []             # when the waiting rank read the marker
    outcome: list[object] = []          # "returned", or what it raised
    changed = threading.Condition()
    read_marker = cloud._read_marker

    def looking(marker: Path, token: str) -> dict | None:
        state = read_marker(marker, token)
        with changed:
            looks.append(time.time())
            changed.notify_all()
        return state

    def waiting_rank() -> None:
        try:
            cloud.wait_for(tmp_path / cloud.MARKER, "obs://b/k", cloud.launch_token(), timeout=timeout)
            result: object = "returned"
        except Exception as exc:
            result = exc
        with changed:
            outcome.append(result)
            changed.notify_all()

    def outlived_its_timeout() -> bool:     # wait_for starts its clock before its first look
        return len([t for t in looks if t > looks[0] + timeout]) >= 2

    monkeypatch.setattr(cloud, "_read_marker", looking)
    pulling, release = threading.Event(), threading.Event()
    leader = threading.Thread(target=cloud.once_per_node, args=(
        tmp_path, "obs://b/k", lambda: pulling.set() or release.wait(120)))
    leader.start()
    try:
        assert pulling.wait(60)                 # the marker says "pulling" before the rank waits
        waiter = threading.Thread(target=waiting_rank)
        waiter.start()
        with changed:
            changed.wait_for(lambda: outcome or outlived_its_timeout(), timeout=120)
        assert not outcome, f"the waiting rank stopped waiting while the pull went on: {outcome}"
        assert outlived_its_timeout(), "the waiting rank did not look again within 120 s"
    finally:
        release.set()
        leader.join(60)
    waiter.join(60)
    assert outcome == ["returned"]


# ---------------------------------------------------------------- local rank 0 under each launcher


LAUNCH_VARIABLES = ("MS_ROLE", "DEVICE_ID", "LOCAL_RANK", "RANK_TABLE_FILE", "RANK_SIZE")
MSRUN_WORKER = {"MS_ROLE": "MS_WORKER"}
TABLE_OF_2 = {"RANK_TABLE_FILE": "table.json", "RANK_SIZE": "2"}


def _launched(monkeypatch, **env: str) -> None:
    """This process as a launcher started it: only ``env`` of the launch variables set."""
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("env, expected", [
    ({"DEVICE_ID": "5"}, 0),                                              # one process
    ({**TABLE_OF_2, "RANK_SIZE": "1", "DEVICE_ID": "5"}, 0),              # a table of one device
    ({**MSRUN_WORKER, "DEVICE_ID": "1", "LOCAL_RANK": "0"}, 1),           # msrun: DEVICE_ID ...
    ({**MSRUN_WORKER, **TABLE_OF_2, "DEVICE_ID": "1", "LOCAL_RANK": "0"}, 1),  # ... also given a table
    ({**TABLE_OF_2, "DEVICE_ID": "4", "LOCAL_RANK": "0"}, 0),             # a table: never the device
    ({**TABLE_OF_2, "DEVICE_ID": "0", "LOCAL_RANK": "1"}, 1),
])
def test_local_rank_is_the_launchers_index_on_the_node(monkeypatch, env, expected):
    _launched(monkeypatch, **env)
    assert cloud.local_rank() == expected


@pytest.mark.parametrize("env, got, source", [
    (MSRUN_WORKER, "''", "msrun exports it to every worker"),
    ({**MSRUN_WORKER, "DEVICE_ID": "-1"}, "'-1'", "msrun"),
    ({**TABLE_OF_2, "DEVICE_ID": "4"}, "''", "scripts/run_distribute_train.sh exports it for every "
                                             "rank; a rank-table launcher of your own must too"),
    ({**TABLE_OF_2, "LOCAL_RANK": "first"}, "'first'", "scripts/run_distribute_train.sh"),
])
def test_a_missing_or_bad_local_rank_is_one_line_naming_the_variable(monkeypatch, env, got, source):
    _launched(monkeypatch, **env)
    name = cloud.MSRUN_LOCAL_RANK if "MS_ROLE" in env else cloud.RANK_TABLE_LOCAL_RANK
    with pytest.raises(ValueError) as info:
        cloud.local_rank()
    assert str(info.value).startswith(f"{name} must be this rank's index on its node (0, 1, ...), "
                                      f"got {got}: {source}") and "\n" not in str(info.value)


MSRUN_PROBE = """import os
if os.environ["MS_ROLE"] == "MS_WORKER":   # not the scheduler
    from trainer.cloud import local_rank
    print("rank", os.environ["RANK_ID"], "local rank", local_rank(), flush=True)
"""


def test_msruns_workers_on_the_second_node_are_its_local_ranks_0_and_1(tmp_path):
    """The workers msrun starts on node 1 of 2 (global ranks 2 and 3), with a stray LOCAL_RANK in
    the environment: msrun's DEVICE_ID decides, and it is the index on the node."""
    (tmp_path / "probe.py").write_text(MSRUN_PROBE)
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "LOCAL_RANK": "7"}
    result = subprocess.run(
        [str(VENV_BIN / "msrun"), "--worker_num=4", "--local_worker_num=2", "--node_rank=1",
         f"--master_port={free_port()}", "--log_dir=logs", "--join=True", "probe.py"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for rank, local in ((2, 0), (3, 1)):
        assert (tmp_path / "logs" / f"worker_{rank}.log").read_text() == f"rank {rank} local rank {local}\n"


RANK_TABLE_RANK = """import sys
from trainer import cloud, train
from trainer.config import config_from_args

if __name__ == "__main__":      # not in the pull's inspecting children (forkserver)
    cloud.WAIT_SECONDS = 30.0   # a rank that no local rank 0 pulls for fails in 30 s, not 10 min
    cfg = config_from_args(train.build_parser().parse_intermixed_args(sys.argv[1:]))
    cfg = cloud.prepare(cfg, (cfg.data.train_split, cfg.data.val_split))
    print("local rank", cloud.local_rank(), "reads", cfg.data.root, flush=True)
"""

RANK_TABLE_PYTHON = """#!/usr/bin/env bash
# The ranks (-m trainer.train ARGS) run the rank of the test, up to its records, in this process.
[ "$1" = -m ] || exec {python} "$@"
shift 2
exec {python} {rank} "$@"
"""


def _object_gets(app: WsgiApp) -> tuple[WsgiApp, Counter]:
    """moto's S3 counting the GETs of each object (``bucket/key``; listings are not counted)."""
    gets: Counter = Counter()

    def counting(environ: dict, start_response):
        path = environ["PATH_INFO"].strip("/")
        if environ["REQUEST_METHOD"] == "GET" and "/" in path:
            gets[path] += 1
        return app(environ, start_response)
    return counting, gets


def test_a_rank_table_on_devices_4_and_5_pulls_once_for_the_node(records_url, bucket, project,
                                                                  tmp_path):
    """scripts/run_distribute_train.sh's 2 ranks on devices 4 and 5 (no device 0 on the node):
    the first pulls every file of the records once, the other waits for it, and both go on."""
    (tmp_path / "rank.py").write_text(RANK_TABLE_RANK)
    python = tmp_path / "python"
    python.write_text(RANK_TABLE_PYTHON.format(python=sys.executable, rank=tmp_path / "rank.py"))
    python.chmod(0o755)
    table = write_table(tmp_path / "table.json", {"10.0.0.1": [(0, 4), (1, 5)]})
    cache = tmp_path / "cache"
    app, gets = _object_gets(s3_app())
    with serving(app) as counted:
        result = launch(project, str(table), "configs/demo.yaml", f"--data_url={records_url}",
                        f"cloud.cache_dir={cache}", python=str(python), OBS_ENDPOINT=counted)
    logs = [(project / f"runs/rank-table/rank_{r}/train.log").read_text() for r in (0, 1)]
    assert result.returncode == 0, result.stderr + "".join(logs)
    copy = cache / "data" / bucket / "k400"
    for local, log in enumerate(logs):
        assert log.splitlines()[-1] == f"local rank {local} reads {copy}"
    copied = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file() and p.name != cloud.MARKER}
    assert {"labels.txt", "train/manifest.parquet", "val/manifest.parquet"} <= copied
    assert gets == Counter({f"{bucket}/k400/{rel}": 1 for rel in copied})   # once, for both ranks


# ---------------------------------------------------------------- the run folder on OBS


def _fake_run(cfg, epochs: range) -> RunDir:
    """A run folder as training leaves it (checkpoint bytes need not be real to be copied)."""
    run = RunDir.of(cfg)
    for epoch in epochs:
        run.write_text(run.epoch_checkpoint(epoch), f"state after epoch {epoch}")
        run.append_log({"epoch": epoch, "step": epoch, "loss": 1.0})
    return run


def test_pushes_keep_what_the_run_keeps_and_a_new_run_never_mixes_with_a_pushed_one(bucket, tmp_path):
    def config(out: str, *overrides: str):
        return load_config(DEMO, [f"cloud.train_url=obs://{bucket}/runs", f"train.output_dir={tmp_path / out}",
                                  "name=pushed", *overrides])

    run = _fake_run(config("a"), range(1, 4))
    cloud.push_run(config("a"), run)
    run.prune_checkpoints(keep=2)
    cloud.push_run(config("a"), run, final=True)
    assert _remote_files(bucket, "runs/pushed") == {"train.jsonl", "checkpoints/epoch-0002.ckpt",
                                                    "checkpoints/epoch-0003.ckpt"}

    with pytest.raises(ValueError, match=rf"^obs://{bucket}/runs/pushed already holds a run \(3 files\): "
                                         rf"resume it with train.resume=auto, start another"):
        cloud.pull_run(config("b"))
    ahead = _fake_run(config("c"), range(1, 5))                 # a failed push: this node is ahead
    cloud.pull_run(config("c", "train.resume=auto"))
    assert ahead.log.read_text().count("\n") == 4              # its longer log kept, nothing pulled
    cloud.pull_run(config("d", "train.resume=auto"))            # an empty machine takes the pushed run
    assert [p.name for p in RunDir(tmp_path / "d" / "pushed").epoch_checkpoints()] == [
        "epoch-0002.ckpt", "epoch-0003.ckpt"]
    cloud.pull_run(config("e", "train.overwrite=true"))         # a new run in its place: checked,
    assert len(_remote_files(bucket, "runs/pushed")) == 3       # deleted only once training's own
    cloud.clear_run(config("e", "train.overwrite=true"))        # checks passed (trainer.train)
    assert _remote_files(bucket, "runs/pushed") == set()


def test_overwrite_never_deletes_more_than_one_run_folder_below_train_url(bucket, tmp_path):
    """``name=`` with train.overwrite deleted every object under train_url: here the whole bucket.
    The config refuses such a name; so does the cloud code, whatever built the config."""
    keys = {"runs/a/train.jsonl", "runs/b/checkpoints/epoch-0001.ckpt", "k400/labels.txt"}
    (tmp_path / "object").write_bytes(b"kept")
    storage = Bucket(bucket)
    for key in keys:
        storage.upload(tmp_path / "object", key)
    cfg = load_config(DEMO, [f"cloud.train_url=obs://{bucket}", "train.overwrite=true",
                             f"train.output_dir={tmp_path / 'runs'}"])
    cfg["name"] = ""                                             # past load_config's rule
    for step in (cloud.pull_run, cloud.clear_run):
        with pytest.raises(ValueError, match=r"^name must be letters, digits"):
            step(cfg)
    assert {o.key for o in storage.list("")} == keys and not (tmp_path / "runs").exists()


def test_local_locations_are_used_as_they_are(tmp_path):
    cfg = cloud.prepare(load_config(DEMO, [f"cloud.data_url={tmp_path / 'k400'}", f"cloud.train_url={tmp_path}",
                                           f"cloud.checkpoint_url={tmp_path / 'ckpt'}",
                                           "model.pretrained=resnet50.ckpt"]), ["train", "val"])
    assert (cfg.data.root, cfg.train.output_dir) == (str(tmp_path / "k400"), str(tmp_path))
    assert cfg.model.pretrained == str(tmp_path / "ckpt" / "resnet50.ckpt") and not list(tmp_path.iterdir())


# ---------------------------------------------------------------- one-line failures


def _train_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = run_cli(train_cmd.build_parser(), train_cmd.main, ["--config", str(DEMO), *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_bucket_or_an_unreachable_endpoint_is_one_line_without_credentials(env, tmp_path, capsys):
    common = [f"cloud.cache_dir={tmp_path / 'cache'}", f"train.output_dir={tmp_path / 'runs'}"]
    code, out, err = _train_cli(capsys, "--data_url=obs://no-such-bucket/k400", *common)
    assert code == 1 and err == (f"error: list obs://no-such-bucket/k400/: HTTP 404 NoSuchBucket: no such "
                                 f"bucket at {env}\n")
    port = free_port()                                     # nothing listens on it
    code, out2, err = _train_cli(capsys, "--train_url=obs://runs-bucket/runs",
                                 f"cloud.endpoint=http://127.0.0.1:{port}", *common)
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: list obs://runs-bucket/runs/demo/: cannot reach http://127.0.0.1:{port}: ")
    assert KEY_ID not in out + out2 + err and SECRET not in out + out2 + err


def test_missing_credentials_are_one_line(env, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OBS_ACCESS_KEY_ID")
    code, _, err = _train_cli(capsys, "--data_url=obs://records/k400", f"cloud.cache_dir={tmp_path}")
    assert code == 2 and err == ("error: set OBS_ACCESS_KEY_ID in the environment (and OBS_SECURITY_TOKEN "
                                 "for temporary credentials)\n")


def _refusing_puts(app: WsgiApp) -> WsgiApp:
    """moto's S3 (the same store) refusing every upload with 403 AccessDenied and a message that
    quotes the request's headers, credentials included, as a server's message may; listings and
    reads pass."""
    def refusing(environ: dict, start_response):
        if environ["REQUEST_METHOD"] != "PUT":
            return app(environ, start_response)
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        quoted = " ".join(f"{k}={v}" for k, v in environ.items() if k.startswith("HTTP_"))
        body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code>"
                f"<Message>no uploads for {quoted}</Message></Error>").encode()
        start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                          ("Content-Length", str(len(body)))])
        return [body]
    return refusing


def _leaked(texts: list[str], files: list[Path]) -> list[str]:
    """Which of the credentials (key, secret, token) appear in ``texts`` or ``files``."""
    found = texts + [p.read_bytes().decode(errors="replace") for p in files]
    return [name for name, value in (("key", KEY_ID), ("secret", SECRET), ("token", TOKEN))
            if any(value in text for text in found)]


def test_a_failed_push_after_an_epoch_is_a_warning_and_the_final_push_fails_the_job(
        tiny_records, bucket, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("OBS_SECURITY_TOKEN", TOKEN)
    with serving(_refusing_puts(s3_app())) as refusing:
        code, out, err = _train_cli(capsys, "model.width=4", "mode=pynative", "data.batch_size=8", "name=cloud",
                                    "train.epochs=2", "train.log_interval=1", f"data.root={tiny_records}",
                                    f"--train_url=obs://{bucket}/runs", f"cloud.endpoint={refusing}",
                                    f"train.output_dir={tmp_path / 'runs'}")
    refused = rf"upload obs://{bucket}/runs/cloud/\S+: HTTP 403 AccessDenied: the credentials may not do this"
    assert code == 1 and re.fullmatch(rf"error: {refused} on this bucket\n", err), err
    warnings = [m.start() for m in re.finditer(rf"WARNING trainer\.cloud: {refused} on this bucket; training "
                                               rf"goes on, the next push copies what is missing", out)]
    assert len(warnings) == 2, out                  # after epoch 1 and after epoch 2 ...
    assert warnings[0] < out.index("epoch 2/2 step 1/") < warnings[1] < out.index(" done in ")
    run = RunDir(tmp_path / "runs" / "cloud")
    assert [p.name for p in run.epoch_checkpoints()] == ["epoch-0001.ckpt", "epoch-0002.ckpt"]
    assert run.best_weights.is_file() and _remote_files(bucket, "runs/cloud") == set()
    assert not _leaked([out, err], [p for p in tmp_path.rglob("*") if p.is_file()])  # refusals quoted the token


def test_a_checkpoint_url_on_obs_is_pulled_for_fine_tuning_and_eval(tiny_records, bucket, tmp_path, capsys):
    from trainer.checkpoint import save_weights
    from trainer.model import create_model
    from trainer.pretrained import load_pretrained

    tiny = ["model.width=4", "mode=pynative", "name=ft"]
    trained = create_model(load_config(DEMO, tiny))
    folder = tmp_path / "ckpts"
    save_weights(trained, folder / "stnet.ckpt", epoch=3)
    save_weights(create_model(load_config(DEMO, tiny)), folder / "older" / "stnet.ckpt", epoch=1)
    url = f"obs://{bucket}/zoo"
    sync.sync(str(folder), url)
    common = [*tiny, f"cloud.checkpoint_url={url}", f"cloud.cache_dir={tmp_path / 'cache'}",
              f"train.output_dir={tmp_path / 'runs'}"]
    pulled = tmp_path / "cache" / "checkpoint" / bucket / "zoo"

    cfg = cloud.prepare(load_config(DEMO, [*common, "model.pretrained=stnet.ckpt"]), [])   # fine-tuning
    assert cfg.model.pretrained == str(pulled / "stnet.ckpt")
    assert sorted(p.relative_to(pulled).as_posix() for p in pulled.rglob("*") if p.is_file()) == [
        cloud.MARKER, "older/stnet.ckpt", "stnet.ckpt"]                     # the whole folder
    assert json.loads((pulled / cloud.MARKER).read_text())["state"] == cloud.DONE
    fine_tuned = create_model(cfg)
    load_pretrained(fine_tuned, cfg.model.pretrained)
    assert all((a.asnumpy() == b.asnumpy()).all() for a, b in zip(trained.get_parameters(),
                                                                    fine_tuned.get_parameters()))

    argv = ["--config", str(DEMO), *common, f"data.root={tiny_records}", "--ckpt", "stnet.ckpt",
            "--out", str(tmp_path / "result.json")]
    assert run_cli(eval_cmd.build_parser(), eval_cmd.main, argv) == 0            # eval's --ckpt
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(" videos=12")
    assert json.loads((tmp_path / "result.json").read_text())["videos"] == 12


def test_eval_pulls_val_and_the_runs_best_and_export_pushes_its_files(tiny_records, records_url, bucket,
                                                                      tmp_path, capsys):
    from trainer.checkpoint import save_weights
    from trainer.config import load_config, save_config
    from trainer.model import create_model

    tiny = ["model.width=4", "mode=pynative", "name=cloud"]
    weights = tmp_path / "best.ckpt"
    save_weights(create_model(load_config(DEMO, tiny)), weights, epoch=1)
    Bucket(bucket).upload(weights, "runs/cloud/best.ckpt")         # as a training job pushed it,
    trained = tmp_path / "trained.yaml"                             # with the level it trained with
    save_config(load_config(DEMO, [*tiny, "train.amp_level=O2"]), trained)
    Bucket(bucket).upload(trained, "runs/cloud/config.yaml")
    args = ["--config", str(DEMO), *tiny, f"--data_url={records_url}", f"--train_url=obs://{bucket}/runs",
            f"cloud.cache_dir={tmp_path / 'cache'}", f"train.output_dir={tmp_path / 'runs'}"]
    assert run_cli(eval_cmd.build_parser(), eval_cmd.main, args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].endswith(" videos=12")
    pulled = tmp_path / "cache" / "data" / bucket / "k400"
    assert sorted(p.name for p in pulled.iterdir()) == [cloud.MARKER, "labels.txt", "val"]   # no train
    assert (tmp_path / "runs" / "cloud" / "best.ckpt").read_bytes() == weights.read_bytes()

    assert run_cli(export_cmd.build_parser(), export_cmd.main, [*args, "--out", str(tmp_path / "export")]) == 0
    assert _remote_files(bucket, "runs/cloud/export") == {"stnet_b1.mindir", "stnet_b1.mindir.json"}
    meta = json.loads((tmp_path / "export" / "stnet_b1.mindir.json").read_text())
    assert meta["classes"] == read_labels(tiny_records.labels) and meta["config"]["data"]["root"] == str(pulled)
    assert meta["amp_level"] == "O2"    # the run's, pulled beside its best.ckpt: the config says auto


def test_310_preprocess_pulls_the_split_it_writes(records_url, tmp_path, capsys):
    from trainer.infer310 import preprocess as preprocess_cmd

    args = ["--config", str(DEMO), "--out", str(tmp_path / "work"), f"--data_url={records_url}",
            f"cloud.cache_dir={tmp_path / 'cache'}"]
    assert run_cli(preprocess_cmd.build_parser(), preprocess_cmd.main, args) == 0
    assert "videos=12 " in capsys.readouterr().out
    pulled = tmp_path / "cache" / "data"
    assert sorted(p.name for p in next(pulled.glob("*/k400")).iterdir()) == [cloud.MARKER, "labels.txt", "val"]


# ---------------------------------------------------------------- msrun ranks, push, resume elsewhere


TINY_RUN = ("model.width=4", "mode=pynative", "name=cloud")


def _msrun_train(work: Path, job: str, ranks: int, *overrides: str) -> str:
    """A CPU training job of ``ranks`` processes under msrun (a tiny PyNative StNet: its first
    step costs 6 s of CPU per process, a graph compile 12 s), with temporary credentials in the
    environment; returns rank 0's log."""
    logs = work / f"msrun-{job}"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPO),
           "OBS_SECURITY_TOKEN": TOKEN}
    result = subprocess.run(
        ["msrun", f"--worker_num={ranks}", f"--local_worker_num={ranks}", f"--master_port={free_port()}",
         f"--log_dir={logs}", "--join=True", str(REPO / "scripts" / "launch.py"), "trainer.train",
         "--config", str(DEMO), *TINY_RUN, "data.num_workers=1", "train.log_interval=1", *overrides],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    rank0 = (logs / "worker_0.log").read_text()
    assert result.returncode == 0, rank0[-3000:] + "\n".join(
        (logs / f"worker_{r}.log").read_text()[-1500:] for r in range(1, ranks))
    return rank0


def _remote_files(bucket: str, prefix: str) -> set[str]:
    return {o.key[len(prefix) + 1:] for o in Bucket(bucket).list(prefix + "/")}


def _epochs(jsonl: str) -> list[tuple[int, int]]:
    """(epoch, step) of each training log window."""
    return [(r["epoch"], r["step"]) for r in map(json.loads, jsonl.splitlines()) if "loss" in r]


@pytest.mark.slow
def test_ranks_pull_once_per_node_push_each_epoch_and_a_fresh_machine_resumes_from_the_pushed_epoch(
        records_url, bucket, tmp_path, capsys):
    train_url, ranks = f"obs://{bucket}/runs", 3
    # 3 ranks x 2 clips: each rank's BatchNorm statistics follow its own clips until averaged.
    first = _msrun_train(tmp_path, "first", ranks, f"--data_url={records_url}", "--train_url", train_url,
                         f"cloud.cache_dir={tmp_path / 'cache1'}", f"train.output_dir={tmp_path / 'runs1'}",
                         "train.epochs=1")
    assert re.search(r"pull obs://\S+/k400/train -> \S+: \d+ files", first)   # rank 0 pulled ...
    cache = tmp_path / "cache1" / "data" / bucket / "k400"
    assert json.loads((cache / cloud.MARKER).read_text())["state"] == cloud.DONE   # ... for all 3
    assert first.index("trainer.cloud: pushed ") < first.index(" done in ")   # the epoch's push, not only the end's
    pushed = _remote_files(bucket, "runs/cloud")
    assert {"config.yaml", "train.jsonl", "checkpoints/epoch-0001.ckpt", "best.ckpt", "best.json",
            "curves.png"} <= pushed
    steps = int(re.search(rf"run \S+: {ranks} ranks, (\d+) steps/epoch", first).group(1))

    # The in-run top-1 (3 ranks, each evaluating a third of val) is that of the best.ckpt rank 0
    # saved, evaluated alone: the ranks' BatchNorm statistics were averaged before both.
    in_run = json.loads((tmp_path / "runs1" / "cloud" / RunDir.BEST_SCORE).read_text())["top1"]
    alone = eval_cmd.main(eval_cmd.build_parser().parse_intermixed_args(
        ["--config", str(DEMO), *TINY_RUN, f"data.root={cache}", f"train.output_dir={tmp_path / 'runs1'}"]))
    assert (alone["top1"], alone["videos"]) == (in_run, 12)

    # Another machine: empty runs/ and cache; train.epochs raised, as a job restarted with more.
    # 2 ranks x 8 clips: 1 step per epoch (the step count is recomputed from the new epoch size).
    second = _msrun_train(tmp_path, "second", 2, f"cloud.data_url={records_url}", f"cloud.train_url={train_url}",
                          f"cloud.cache_dir={tmp_path / 'cache2'}", f"train.output_dir={tmp_path / 'runs2'}",
                          "train.epochs=2", "train.resume=auto", "data.batch_size=8")
    assert re.search(r"resumed from \S+/runs2/cloud/checkpoints/epoch-0001\.ckpt: 1 epochs, 1 steps done",
                     second)
    assert "epochs 2..2" in second
    local_log = (tmp_path / "runs2" / "cloud" / "train.jsonl").read_text()
    assert _epochs(local_log) == [(1, s) for s in range(1, steps + 1)] + [(2, 2)]   # as pushed, then epoch 2
    assert {"checkpoints/epoch-0001.ckpt", "checkpoints/epoch-0002.ckpt"} <= _remote_files(bucket, "runs/cloud")
    fetched = tmp_path / "fetched.jsonl"
    Bucket(bucket).download("runs/cloud/train.jsonl", fetched)
    assert fetched.read_text() == local_log

    Bucket(bucket).download("runs/cloud/config.yaml", tmp_path / "pushed.yaml")
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".log", ".yaml", ".jsonl", ".json")]
    assert len(written) > 9           # 9 msrun logs, config.yaml, train.jsonl, best.json ...
    assert not _leaked([capsys.readouterr().out], written)
