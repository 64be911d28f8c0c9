"""Cloud mode (ModelArts-style): records and checkpoints pulled from OBS into a node-local cache,
the run folder pushed back after every epoch, and a preempted job resumed from what was pushed.

The ``cloud`` config section names the locations (``--data_url``/``--train_url``, as ModelArts
passes them, set the first two). An ``obs://bucket/prefix`` location is copied with
``datatools.sync`` (verified, resumable, a progress line every 5 s); a local path is taken as
already copied and used as it is. On every node, local rank 0 pulls and then marks the copy done;
the node's other ranks wait for that marker, so every rank reads a complete, verified copy. Only
global rank 0 pushes. Credentials: ``datatools.obs`` (the environment only, never printed).
"""
from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator, Sequence

from datatools.obs import Bucket, ObsError, ObsUrl, is_obs_url, parse_url
from datatools.schema import LABELS_NAME
from datatools.sync import Progress, phase_of, sync
from trainer.config import Config, check_run_name
from trainer.rundir import RunDir, atomic_path
from trainer.runtime import distributed_launch, launched_by_msrun

__all__ = ["MARKER", "MSRUN_LOCAL_RANK", "RANK_TABLE_LOCAL_RANK", "local_rank", "launch_token",
           "once_per_node", "wait_for", "pull_records", "prepare", "checkpoint", "pull_run",
           "clear_run", "push_run", "push_outputs"]

logger = logging.getLogger(__name__)

MARKER = ".cloud-pull.json"     # hidden: datatools.sync never copies it, RunDir ignores it
PULLING, DONE, FAILED = "pulling", "done", "failed"
HEARTBEAT_SECONDS = 10.0        # local rank 0 touches its marker this often while it pulls
WAIT_SECONDS = 600.0            # a waiting rank gives up after this long without a sign from it
POLL_SECONDS = 0.5
EXPORT_FOLDER = "export"        # trainer.export's files go to <train_url>/<name>/export/


# The variable in which each launcher gives a rank its index among its node's ranks. msrun's, as
# MindSpore 2.10 sets it for each worker (parallel/cluster/process_entity/_api.py,
# _ProcessManager._start_single_worker):  os.environ["DEVICE_ID"] = str(local_rank)
MSRUN_LOCAL_RANK = "DEVICE_ID"
# Under a rank table DEVICE_ID is the device itself (4..7 for a job on devices 4-7), so
# scripts/run_distribute_train.sh exports the rank's position in this server's device list.
RANK_TABLE_LOCAL_RANK = "LOCAL_RANK"


def _local_rank_variable() -> tuple[str, str]:
    """The variable this process's launcher sets, and who sets it (for the error)."""
    if launched_by_msrun():
        return MSRUN_LOCAL_RANK, "msrun exports it to every worker"
    return RANK_TABLE_LOCAL_RANK, ("scripts/run_distribute_train.sh exports it for every rank; a "
                                   "rank-table launcher of your own must too")


def local_rank() -> int:
    """This process's index among its node's ranks, from the variable its launcher exports for
    it; never a rank table's device id (a job's devices need not start at 0, and no rank of a job
    on devices 4-7 would pull)."""
    if not distributed_launch():
        return 0
    name, source = _local_rank_variable()
    value = os.environ.get(name, "")
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"{name} must be this rank's index on its node (0, 1, ...), got "
                         f"{value!r}: {source}")
    return int(value)


# scripts/launch.py (msrun's entry point) runs the module in a child and names msrun here: the
# child's own parent is then its launch.py, one per rank.
LAUNCHER_PID_ENV = "STNET_LAUNCHER_PID"


def launch_token() -> str:
    """The same in every process one launch started on this node, another in the next launch:
    host, launcher pid (msrun or the rank-table script: every local rank's parent, or the pid
    LAUNCHER_PID_ENV names) and the launcher's start time, so a marker left by an earlier job is
    never taken for this one's."""
    parent = int(os.environ.get(LAUNCHER_PID_ENV) or os.getppid())
    try:
        started = Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        started = "?"
    return f"{socket.gethostname()}:{parent}:{started}"


def _write_marker(marker: Path, token: str, state: str, error: str = "") -> None:
    with atomic_path(marker) as tmp:
        tmp.write_text(json.dumps({"token": token, "state": state, "error": error}) + "\n")


def _read_marker(marker: Path, token: str) -> dict | None:
    """The marker's content if this launch wrote it, else None."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("token") == token else None


@contextmanager
def _heartbeat(marker: Path) -> Iterator[None]:
    """Touch ``marker`` every HEARTBEAT_SECONDS meanwhile: waiting ranks see local rank 0 alive
    through a pull of any length."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                os.utime(marker)
            except FileNotFoundError:
                pass

    thread = threading.Thread(target=beat, name="cloud-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def once_per_node(dest: Path, what: str, work: Callable[[], Any], *,
                  timeout: float | None = None) -> None:
    """Local rank 0 runs ``work`` (a pull into ``dest``) and marks ``dest`` done or failed; the
    node's other ranks wait for that marker (``wait_for``; ``timeout`` defaults to WAIT_SECONDS,
    read at the call, so a test can shorten it), so none reads a partial copy."""
    marker, token = Path(dest) / MARKER, launch_token()
    if local_rank() != 0:
        wait_for(marker, what, token, WAIT_SECONDS if timeout is None else timeout)
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    _write_marker(marker, token, PULLING)
    with _heartbeat(marker):
        try:
            work()
        except BaseException as exc:
            _write_marker(marker, token, FAILED, str(exc))
            raise
    _write_marker(marker, token, DONE)


def wait_for(marker: Path, what: str, token: str, timeout: float = WAIT_SECONDS) -> None:
    """Return once this launch's ``marker`` says done; raise local rank 0's error when it failed,
    or TimeoutError after ``timeout`` seconds without a sign from it (no marker, or one not
    touched since)."""
    start = time.time()
    while True:
        state = _read_marker(marker, token)
        if state and state["state"] == DONE:
            return
        if state and state["state"] == FAILED:
            raise OSError(f"{what}: local rank 0 failed to pull it: {state['error']}")
        try:
            last_sign = max(start, marker.stat().st_mtime) if state else start
        except FileNotFoundError:
            last_sign = start
        silent = time.time() - last_sign
        if silent > timeout:
            if state is None:
                raise TimeoutError(f"{what}: waited {silent:.0f} s for local rank 0 of this node to "
                                   f"start pulling it (no {marker} from this launch): see its log")
            raise TimeoutError(f"{what}: local rank 0 of this node stopped reporting while pulling "
                               f"it ({marker} untouched for {silent:.0f} s): see its log")
        time.sleep(POLL_SECONDS)


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count} bytes"


def _free_bytes(folder: Path) -> int:
    """Free bytes on the disk of ``folder`` or, before it exists, of its nearest parent."""
    folder = folder.absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def pull_records(url: str, dest: Path, splits: Sequence[str], endpoint: str | None = None,
                 free: int | None = None) -> None:
    """Copy ``labels.txt`` and the ``splits`` folders of the records root ``url`` into ``dest``;
    each split is inspected after its pull (datatools.sync). Before copying anything, refuses
    when the bytes this node still lacks exceed the free space (``free``: measured on ``dest``'s
    disk unless given; object sizes count, MindRecord's holes included)."""
    root = parse_url(url)
    bucket = Bucket(root.bucket, endpoint)
    prefix = root.key("")
    wanted = [(o.key[len(prefix):], o.size) for o in bucket.list(prefix)]
    wanted = [(rel, size) for rel, size in wanted if phase_of(rel) is not None and (
        rel == LABELS_NAME or rel.split("/")[0] in splits)]
    found = {rel.split("/")[0] for rel, _ in wanted}
    absent = [name for name in (LABELS_NAME, *splits) if name not in found]
    if absent:
        raise FileNotFoundError(f"{url} holds no {' and no '.join(absent)}: data_url must name a "
                                f"records root ({LABELS_NAME} and one folder per split)")
    lacking = sum(size for rel, size in wanted
                  if not (dest / rel).is_file() or (dest / rel).stat().st_size != size)
    free = _free_bytes(dest) if free is None else free
    if lacking > free:
        raise OSError(f"cannot pull {url} ({', '.join(splits) or LABELS_NAME}) into {dest}: "
                      f"{_size(lacking)} still to copy, {_size(free)} free there: free space or "
                      f"set cloud.cache_dir to a larger disk")
    for split in splits:
        _pull_tree(f"{root}/{split}", dest / split, endpoint)
    bucket.download(root.key(LABELS_NAME), dest / LABELS_NAME)


def _pull_tree(url: str, dest: Path, endpoint: str | None) -> None:
    logger.info("pulled %s: %s", url, "; ".join(sync(url, str(dest), endpoint=endpoint).lines()))


def _cached(cfg: Config, kind: str, url: str) -> Path:
    """Where this node keeps its copy of ``url``: <cache_dir>/<kind>/<bucket>/<prefix>."""
    where = parse_url(url)
    return Path(cfg.cloud.cache_dir, kind, where.bucket, where.prefix)


def _records(cfg: Config, splits: Sequence[str]) -> Path:
    url = cfg.cloud.data_url
    if not is_obs_url(url):
        return Path(url)
    dest = _cached(cfg, "data", url)
    once_per_node(dest, url, lambda: pull_records(url, dest, splits, cfg.cloud.endpoint))
    return dest


def _checkpoints(cfg: Config) -> Path:
    """The checkpoint_url folder on this node, pulled once per node."""
    url = cfg.cloud.checkpoint_url
    if not is_obs_url(url):
        return Path(url)
    dest = _cached(cfg, "checkpoint", url)
    once_per_node(dest, url, lambda: _pull_tree(url, dest, cfg.cloud.endpoint))
    return dest


def _in_checkpoints(name: str | None) -> bool:
    """A checkpoint named relative to checkpoint_url (not absolute, not ``auto``)."""
    return bool(name) and name != "auto" and not Path(name).is_absolute()


def _replaced(cfg: Config, changes: dict[str, str]) -> Config:
    new = copy.deepcopy(cfg)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        new[section][key] = value
        logger.info("cloud: %s=%s", dotted, value)
    return new


def prepare(cfg: Config, splits: Sequence[str]) -> Config:
    """``cfg`` with its cloud locations swapped for this node's copies, pulled when needed:
    ``data.root`` (labels.txt and ``splits``), ``model.pretrained``/``train.resume`` when named
    relative to checkpoint_url, and ``train.output_dir`` when train_url is a local path."""
    cloud, changes = cfg.cloud, {}
    if cloud.data_url:
        changes["data.root"] = str(_records(cfg, splits))
    named = {key: name for key, name in (("model.pretrained", cfg.model.pretrained),
                                         ("train.resume", cfg.train.resume)) if _in_checkpoints(name)}
    if cloud.checkpoint_url and named:
        folder = _checkpoints(cfg)
        changes.update({key: str(folder / name) for key, name in named.items()})
    if cloud.train_url and not is_obs_url(cloud.train_url):
        changes["train.output_dir"] = cloud.train_url
    return _replaced(cfg, changes)


def _run_url(cfg: Config) -> ObsUrl | None:
    """``<train_url>/<name>`` when train_url is on OBS. The name is checked here too, whatever
    built the config: the run's objects are deleted under this prefix (train.overwrite), and an
    empty name or one with ``/`` or ``..`` would name train_url itself (every run there, or the
    whole bucket) or a prefix outside it."""
    url = cfg.cloud.train_url
    if not url or not is_obs_url(url):
        return None
    check_run_name(cfg.name)
    where = parse_url(url)
    return ObsUrl(where.bucket, where.key(cfg.name))


def checkpoint(cfg: Config, ckpt: str | None) -> str | None:
    """The ``--ckpt`` of eval or export on this node: a relative one lies in checkpoint_url
    (pulled); without one the run's best.ckpt, fetched from <train_url>/<name>/ when missing."""
    if cfg.cloud.checkpoint_url and _in_checkpoints(ckpt):
        return str(_checkpoints(cfg) / ckpt)
    run_url, run = _run_url(cfg), RunDir.of(cfg)
    if ckpt is None and run_url is not None and not run.best_weights.is_file():
        once_per_node(run.path, f"{run_url}/{RunDir.BEST_WEIGHTS}",
                      lambda: _pull_best(Bucket(run_url.bucket, cfg.cloud.endpoint), run_url, run))
    return ckpt


def _pull_best(bucket: Bucket, run_url: ObsUrl, run: RunDir) -> None:
    """The run's best.ckpt, and its config.yaml when this node has none: the precision the run
    trained with lives there (trainer.precision.run_precision)."""
    bucket.download(run_url.key(RunDir.BEST_WEIGHTS), run.best_weights)
    config = run_url.key(RunDir.CONFIG)
    if not run.config.is_file() and bucket.stat(config) is not None:
        bucket.download(config, run.config)


def _epoch_order(name: str) -> tuple[int, str]:
    """Sort key of RunDir's epoch checkpoint names (zero-padded: a longer name is later)."""
    return len(name), name


def _match_remote_run(cfg: Config, run: RunDir, url: ObsUrl) -> None:
    """Local rank 0's part of ``pull_run``."""
    bucket = Bucket(url.bucket, cfg.cloud.endpoint)
    prefix = url.key("")
    remote = [o.key[len(prefix):] for o in bucket.list(prefix)]
    if cfg.train.resume is None and remote and not cfg.train.overwrite:
        raise ValueError(f"{url} already holds a run ({len(remote)} files): resume it with "
                         f"train.resume=auto, start another with a new name=, or replace it "
                         f"with train.overwrite=true")
    if cfg.train.resume == "auto":
        pushed = max((PurePosixPath(r).name for r in remote if PurePosixPath(r).parent.name
                      == RunDir.CHECKPOINTS), key=_epoch_order, default="")
        latest = run.latest_checkpoint()
        here = latest.name if latest else ""
        if _epoch_order(pushed) > _epoch_order(here):
            logger.info("train.resume=auto: %s holds %s, newer than this node's %s: pulling the run",
                        url, pushed, here or "nothing")
            _pull_tree(str(url), run.path, cfg.cloud.endpoint)


def pull_run(cfg: Config) -> None:
    """Before training with train_url on OBS. ``train.resume=auto`` takes the run pushed to
    <train_url>/<name>/ when its newest checkpoint is newer than this node's, so a preempted job
    on a fresh machine goes on from its last pushed epoch. A new run (no resume) refuses a name
    under which train_url holds a run, unless ``train.overwrite`` (``clear_run`` deletes that run
    there, later: after the new run's own checks)."""
    url = _run_url(cfg)
    if url is not None:
        run = RunDir.of(cfg)
        once_per_node(run.path, str(url), lambda: _match_remote_run(cfg, run, url))


def clear_run(cfg: Config) -> None:
    """Rank 0, with train.overwrite and no resume, once every check of the new run passed:
    delete the run pushed to <train_url>/<name>/ (``pull_run`` only checked it), so the new run's
    pushes never mix with the old one's files."""
    url = _run_url(cfg)
    if url is None or cfg.train.resume is not None or not cfg.train.overwrite:
        return
    bucket = Bucket(url.bucket, cfg.cloud.endpoint)
    stored = list(bucket.list(url.key("")))
    for found in stored:
        bucket.delete(found.key)
    if stored:
        logger.info("train.overwrite: deleted the %d files of %s", len(stored), url)


def push_run(cfg: Config, run: RunDir, *, final: bool = False) -> None:
    """Rank 0, after every epoch: copy what changed in the run folder to <train_url>/<name>/ and
    delete the pushed epoch checkpoints the folder no longer keeps. A failed push is a warning
    (the next one copies what is missing) unless ``final``: the run's end must reach OBS."""
    url = _run_url(cfg)
    if url is None:
        return
    try:
        result = sync(str(run.path), str(url), endpoint=cfg.cloud.endpoint)
        bucket, folder = Bucket(url.bucket, cfg.cloud.endpoint), url.key(f"{RunDir.CHECKPOINTS}/")
        kept = {p.name for p in run.epoch_checkpoints()}
        for stored in bucket.list(folder):
            if stored.key[len(folder):] not in kept:
                bucket.delete(stored.key)
    except ObsError as exc:
        if final:
            raise
        logger.warning("%s; training goes on, the next push copies what is missing", exc)
        return
    logger.info("pushed %s to %s: %s", run.path, url, result.lines()[0])


def push_outputs(cfg: Config, files: Sequence[Path]) -> None:
    """trainer.export's files to <train_url>/<name>/export/: uploaded (verified, with progress)
    for an OBS train_url, copied for a local one."""
    if not cfg.cloud.train_url:
        return
    url = _run_url(cfg)
    if url is None:
        folder = Path(cfg.cloud.train_url, cfg.name, EXPORT_FOLDER)
        folder.mkdir(parents=True, exist_ok=True)
        for path in files:
            shutil.copy2(path, folder / path.name)
        logger.info("copied %s to %s", ", ".join(p.name for p in files), folder)
        return
    bucket, progress = Bucket(url.bucket, cfg.cloud.endpoint), Progress()
    progress.start(len(files))
    for path in files:
        bucket.upload(path, url.key(f"{EXPORT_FOLDER}/{path.name}"),
                      progress=lambda n, name=path.name: progress.transferring(name, n))
        progress.file_done(path.name, path.stat().st_size, copied=True)
    logger.info("pushed %s to %s/%s", ", ".join(p.name for p in files), url, EXPORT_FOLDER)
