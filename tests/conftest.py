"""Shared fixtures: one tiny converted dataset per test session, built by the real pipeline, and a
real local S3 server (moto's; OBS speaks S3) with fake credentials in the environment."""
from __future__ import annotations

import logging
import socket
import threading
import traceback
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mindspore as ms
import mindspore.log
import pytest
from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from obs import ObsClient
from werkzeug.serving import make_server

from datatools import obs, schema
from datatools.convert import convert
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import H264, JPEG, Settings
from datatools.synth import SynthSpec, make_dataset
from trainer.cpu import use_fast_cpu_kernels

# The tests run MindSpore on CPU, set up as trainer.runtime.init_runtime does it, before any test
# runs a kernel (MindSpore refuses set_device once one has run, whichever test comes first).
use_fast_cpu_kernels()
ms.set_device("CPU")

TINY_CLASSES = 4
TINY_TRAIN_PER_CLASS = 4     # 16 train videos: divisible by the demo batch size 4
TINY_VAL_PER_CLASS = 3       # 12 val videos: not divisible by 8, exercises eval padding
TINY_SPEC = SynthSpec(num_frames=16, width=160, height=120)
TINY_SHORT_SIDE = 64         # as `make records` stores the demo: 160x120 sources kept at 85x64
TINY_VIDEOS_PER_SHARD = 5    # several shards per split


@dataclass(frozen=True)
class TinyRecords:
    """A converted synthetic dataset; ``str()``/``os.fspath()`` give its root (``data.root``).

    root holds ``labels.txt``, ``train/`` and ``val/`` (shards + manifest.parquet); ``source``
    holds the synthetic videos and CSVs they were converted from.
    """

    root: Path
    source: Path
    train_csv: Path
    val_csv: Path
    labels: Path
    num_classes: int
    num_frames: int
    short_side: int
    settings: Settings

    def split(self, name: str) -> Path:
        return self.root / name

    def __str__(self) -> str:
        return str(self.root)

    def __fspath__(self) -> str:
        return str(self.root)


def build_tiny_records(base: Path, codec: str = JPEG) -> TinyRecords:
    """synth -> labels -> convert train and val, in-process (one worker) for speed."""
    source, root = base / "source", base / "records"
    train_csv, val_csv = make_dataset(source, TINY_CLASSES, TINY_TRAIN_PER_CLASS, TINY_VAL_PER_CLASS,
                                      seed=0, spec=TINY_SPEC)
    labels = write_labels(class_names(e.label for e in read_csv(train_csv)), root / schema.LABELS_NAME)
    settings = Settings(codec=codec, short_side=TINY_SHORT_SIDE, quality=90, max_fps=None,
                        videos_per_shard=TINY_VIDEOS_PER_SHARD, seed=0)
    for split, csv_path in (("train", train_csv), ("val", val_csv)):
        convert(csv_path, source / "videos", labels, root / split, settings, workers=1)
    return TinyRecords(root, source, train_csv, val_csv, labels, TINY_CLASSES, TINY_SPEC.num_frames,
                       TINY_SHORT_SIDE, settings)


@pytest.fixture(scope="session")
def tiny_records(tmp_path_factory) -> TinyRecords:
    """4 classes, 16 train + 12 val videos of 16 frames (160x120 stored at 85x64), 4+3 shards."""
    return build_tiny_records(tmp_path_factory.mktemp("tiny_records"))


@pytest.fixture(scope="session")
def tiny_h264_records(tmp_path_factory) -> TinyRecords:
    """tiny_records stored as h264 (84x64: even sizes), for the readers that must give the same
    answers on either codec (bit-exact resume, the 310 package against eval)."""
    return build_tiny_records(tmp_path_factory.mktemp("tiny_h264_records"), H264)


KEY_ID, SECRET = "AKFAKESTNETKEY0001", "fake-secret-never-printed-0001"
TOKEN = "fake-security-token-never-printed-0001"      # OBS_SECURITY_TOKEN, where a test sets one

WsgiApp = Callable[[dict, Callable], object]


def free_port() -> int:
    """A port nothing listens on now (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PROJECT_CODE = tuple(f"{Path(__file__).resolve().parents[1] / folder}/"
                     for folder in ("datatools", "trainer", "benchmarks", "scripts"))


class DeprecationLog:
    """MindSpore logs its deprecations through ``mindspore.log.warning`` (not the warnings
    module). Wrapping it, this keeps each one logged while this project's code is on the stack,
    naming that code's last frame: a call due to break in a later MindSpore release."""

    def __init__(self, warning: Callable[..., None]) -> None:
        self.warning_passed_on = warning
        self.found: list[str] = []

    def warning(self, msg: object, *args, **kwargs) -> None:
        text = str(msg) % args if args else str(msg)
        if "deprecat" in text.lower():
            ours = [f"{frame.filename}:{frame.lineno}" for frame in traceback.extract_stack()
                    if frame.filename.startswith(PROJECT_CODE)]
            found = f"{ours[-1]}: {' '.join(text.split())}" if ours else None
            if found and found not in self.found:     # once per call site and message
                self.found.append(found)
        self.warning_passed_on(msg, *args, **kwargs)


@pytest.fixture(autouse=True)
def _mindspore_deprecations_fail(monkeypatch) -> Iterator[None]:
    """A MindSpore deprecation logged from this project's code fails the test that ran it."""
    log = DeprecationLog(mindspore.log.warning)
    monkeypatch.setattr(mindspore.log, "warning", log.warning)
    yield
    if log.found:
        pytest.fail("MindSpore deprecation(s) from this project's code: " + "; ".join(log.found))


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """An in-process CLI run (run_cli, setup_logging) points the root logger at this test's
    captured stdout; left there, a later test's log lines hit a closed stream and print
    "--- Logging error ---" to its stderr, breaking its one-line error checks."""
    root = logging.getLogger()
    level = root.level
    yield
    for handler in [h for h in root.handlers if type(h) is logging.StreamHandler]:
        root.removeHandler(handler)
    root.setLevel(level)


@contextmanager
def serving(app: WsgiApp) -> Iterator[str]:
    """``app`` served on a free port of 127.0.0.1 by threads; yields its URL. werkzeug's request
    lines would pollute stderr."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.CRITICAL)
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
        werkzeug.setLevel(level)


def s3_app() -> WsgiApp:
    """moto's S3 alone: its usual dispatcher (ThreadedMotoServer) reads the service from a SigV4
    credential scope and misroutes the ~0.07% of v2-signed requests whose signature holds four
    '/'. Every app shares moto's one in-memory store: another server sees the same buckets."""
    return create_backend_app("s3")


@pytest.fixture(scope="session")
def endpoint() -> Iterator[str]:
    """moto's S3 server, one for the session (each test gets its own bucket)."""
    with serving(s3_app()) as url:
        yield url


@pytest.fixture
def env(endpoint, monkeypatch):
    """Fake credentials and the endpoint in the environment; small list pages so every listing
    pages; short backoff so failures are quick."""
    monkeypatch.setenv("OBS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("OBS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.delenv("OBS_SECURITY_TOKEN", raising=False)
    monkeypatch.setenv("OBS_ENDPOINT", endpoint)
    monkeypatch.setattr(obs, "LIST_PAGE", 4)
    monkeypatch.setattr(obs, "BACKOFF_SECONDS", 0.01)
    return endpoint


@pytest.fixture
def bucket(env) -> str:
    """A new bucket per test, created through ObsClient as a user would."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    resp = ObsClient(server=env, security_provider_policy="ENV", max_retry_count=0).createBucket(name)
    assert resp.status == 200, (resp.status, resp.errorCode)
    return name


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (make test): a file's tests run on one worker,
    so its module fixtures are built once, and every test needing ``learned_run`` (the demo model
    trained for 6 epochs, the suite's costliest fixture) runs on one worker, so it is trained once."""
    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            group = "learned_run" if "learned_run" in getattr(item, "fixturenames", ()) else \
                item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
