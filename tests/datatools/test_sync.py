"""datatools.obs and datatools.sync against a real S3 server (moto's, on 127.0.0.1; OBS speaks
S3): round trips are byte-identical, reruns copy nothing, an interrupted push resumes and never
shows a done marker before its shard or a manifest before the end, and every failure is one line
that names the URL and never a credential."""
from __future__ import annotations

import errno
import logging
import subprocess
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Iterator

import pytest
from obs import ObsClient

from datatools import obs, sync
from datatools.cli import run_cli
from datatools.manifest import MANIFEST_NAME, ShardFiles, shard_index
from tests.conftest import KEY_ID, SECRET, TOKEN, free_port


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _remote(bucket: str, prefix: str) -> set[str]:
    return {o.key[len(prefix) + 1:] for o in obs.Bucket(bucket).list(prefix + "/")}


def _cli(argv: list[str], capsys) -> tuple[int, str, str]:
    code = run_cli(sync.build_parser(), sync.main, argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_split_pushed_and_pulled_back_is_byte_identical_and_reruns_copy_nothing(
        tiny_records, bucket, tmp_path, capsys, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger=sync.__name__)
    order = _record_uploads(monkeypatch)
    split, url = tiny_records.split("train"), f"obs://{bucket}/k400/train"
    files = _tree(split)
    size = sum(map(len, files.values()))
    code, out, _ = _cli([str(split), url, "--workers", "1"], capsys)  # one worker: name order unless phased
    assert code == 0
    assert out.startswith(f"copied {len(files)} files ({size / 1e6:.2f} MB), skipped 0 already there")
    assert any(f"{len(files)}/{len(files)} files" in r.message for r in caplog.records)
    assert _remote(bucket, "k400/train") == set(files)
    indices = {shard_index(n) for n in order} - {None}
    assert order[-1] == MANIFEST_NAME and len(order) == len(files) and indices
    for index in indices:
        shard = ShardFiles.of(split, index)
        assert order.index(shard.done.name) > max(order.index(shard.record.name), order.index(shard.db.name))

    code, out, _ = _cli([str(split), url], capsys)
    assert code == 0 and out.startswith(f"copied 0 files (0.00 MB), skipped {len(files)} already there")

    pulled = tmp_path / "train"
    code, out, _ = _cli([url, str(pulled), "--workers", "2"], capsys)
    assert code == 0 and f"copied {len(files)} files" in out
    assert f"inspected {pulled}: every shard matches the manifest" in out
    assert _tree(pulled) == files
    allocated = sum(p.stat().st_blocks for p in pulled.iterdir()) * 512
    assert allocated < size / 10                                # sparse shards stay sparse
    code, out, _ = _cli([url, str(pulled)], capsys)
    assert code == 0 and out.startswith(f"copied 0 files (0.00 MB), skipped {len(files)} already there")


def _record_uploads(monkeypatch) -> list[str]:
    """File names in the order their uploads completed."""
    order: list[str] = []
    lock = threading.Lock()
    upload = obs.Bucket.upload

    def recording(self, local, key, *args, **kwargs):
        stored = upload(self, local, key, *args, **kwargs)
        with lock:
            order.append(key.rsplit("/", 1)[1])
        return stored

    monkeypatch.setattr(obs.Bucket, "upload", recording)
    return order


def test_run_folder_round_trip_skips_temporaries_and_recopies_a_changed_file(bucket, tmp_path):
    run, url = tmp_path / "run", f"obs://{bucket}/runs/demo"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: demo\n")
    (run / "train.jsonl").write_text("")                       # empty files travel too
    checkpoint = run / "checkpoints" / "epoch-0001.ckpt"
    checkpoint.write_bytes(bytes(range(256)) * 1000)
    (run / ".best.ckpt.tmp").write_bytes(b"half written")      # an atomic write in progress
    result = sync.sync(str(run), url)
    assert (result.copied, result.skipped, result.inspected) == (3, 0, [])
    assert _remote(bucket, "runs/demo") == {"config.yaml", "train.jsonl", "checkpoints/epoch-0001.ckpt"}
    _flip_last_byte(checkpoint)                                 # same size, other content
    assert (sync.sync(str(run), url).copied, sync.sync(str(run), url).copied) == (1, 0)

    back = tmp_path / "back"
    assert sync.sync(url, str(back)).copied == 3
    _flip_last_byte(back / "checkpoints" / "epoch-0001.ckpt")
    assert (sync.sync(url, str(back)).copied, sync.sync(url, str(back)).copied) == (1, 0)
    assert _tree(back) == {k: v for k, v in _tree(run).items() if not k.startswith(".")}


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


class _Interrupted(Exception):
    pass


class _StopAfter(sync.Progress):
    """Interrupts the copy after ``limit`` files, as a kill would."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def file_done(self, relative: str, size: int, copied: bool) -> None:
        super().file_done(relative, size, copied)
        if self.done >= self.limit:
            raise _Interrupted(relative)


@pytest.mark.parametrize("stage", ["shards", "markers"])
def test_interrupted_push_resumes_and_never_shows_a_marker_before_its_shard(tiny_records, bucket, stage):
    split, url = tiny_records.split("val"), f"obs://{bucket}/val"
    files = _tree(split)
    data = sum(sync.phase_of(n) == sync.DATA for n in files)
    limit = 2 if stage == "shards" else data + 1
    with pytest.raises(_Interrupted):
        sync.sync(str(split), url, workers=2, progress=_StopAfter(limit))
    there = _remote(bucket, "val")
    assert limit <= len(there) < len(files) and MANIFEST_NAME not in there
    shards = [ShardFiles.of(split, i) for i in {shard_index(n) for n in files} - {None}]
    marked = [shard for shard in shards if shard.done.name in there]
    assert bool(marked) == (stage == "markers")
    for shard in marked:
        assert {shard.record.name, shard.db.name} <= there, shard.done.name

    resumed = sync.sync(str(split), url, workers=2)
    assert (resumed.copied, resumed.skipped) == (len(files) - len(there), len(there))
    assert _remote(bucket, "val") == set(files)


def test_repush_of_a_changed_shard_first_withdraws_its_marker_and_the_manifest(tiny_records, bucket,
                                                                               tmp_path):
    subprocess.run(["cp", "-r", "--sparse=always", str(tiny_records.split("val")), str(tmp_path)],
                   check=True)
    split, url = tmp_path / "val", f"obs://{bucket}/val"
    files = sync.sync(str(split), url).copied
    shard = ShardFiles.of(split, 0)
    _flip_last_byte(shard.record)                          # shard 0 converted again, differently
    shard.done.write_text(shard.done.read_text() + "\n")
    with pytest.raises(_Interrupted):                       # before anything is copied
        sync.sync(str(split), url, progress=_StopAfter(1))
    assert _remote(bucket, "val") == set(_tree(split)) - {shard.done.name, MANIFEST_NAME}
    resumed = sync.sync(str(split), url)
    assert (resumed.copied, resumed.skipped) == (3, files - 3)


def test_pull_fails_when_the_split_does_not_match_its_manifest(tiny_records, bucket, tmp_path, capsys):
    split, partial = tiny_records.split("val"), tmp_path / "no-records"
    partial.mkdir()
    for name in _tree(split):                       # manifest and markers, no shard files
        if sync.phase_of(name) != sync.DATA:
            (partial / name).write_bytes((split / name).read_bytes())
    sync.sync(str(partial), f"obs://{bucket}/val")
    code, _, err = _cli([f"obs://{bucket}/val", str(tmp_path / "val")], capsys)
    record = ShardFiles.of(split, 0).record.name
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'val'}: the pulled split does not match its manifest: "
                          f"{record}: missing")


def test_download_never_leaves_a_partial_file_under_the_final_name(bucket, tmp_path):
    client = ObsClient(server=obs.endpoint_from_env(), security_provider_policy="ENV")
    client.putContent(bucket, "x.bin", b"payload", metadata={obs.SHA256_META: "0" * 64})
    target = tmp_path / "x.bin"
    with pytest.raises(obs.ObsError, match=f"download obs://{bucket}/x.bin: the bytes received do not match"):
        obs.Bucket(bucket).download("x.bin", target)
    assert list(tmp_path.iterdir()) == []


class _Refusing(BaseHTTPRequestHandler):
    """Answers every request 403 with ``server.code``, as OBS does for wrong credentials, in a
    message that quotes the request's headers (the credentials among them), as a server's message
    may. moto checks only SigV4 with X-Amz-Date, and the SDK signs v2/OBS (v4 with Date), so moto
    itself never refuses a credential."""

    def _refuse(self, body: bool) -> None:
        quoted = " ".join(f"{k}={v}" for k, v in self.headers.items())
        xml = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{self.server.code}</Code>"
               f"<Message>refused for {KEY_ID}: {quoted}</Message><AccessKeyId>{KEY_ID}</AccessKeyId>"
               f"</Error>").encode()
        self.send_response(403)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(xml)))
        self.end_headers()
        if body:
            self.wfile.write(xml)

    def do_GET(self):
        self._refuse(True)

    def do_HEAD(self):
        self._refuse(False)

    def log_message(self, *args):
        pass


@contextmanager
def _refusing(code: str) -> Iterator[str]:
    """A server refusing everything with ``code`` (``_Refusing``); yields its endpoint."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    server.code = code
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.mark.parametrize("code,hint", [("SignatureDoesNotMatch", "check OBS_SECRET_ACCESS_KEY"),
                                       ("InvalidAccessKeyId", "check OBS_ACCESS_KEY_ID"),
                                       ("InvalidToken", "check OBS_SECURITY_TOKEN"),
                                       ("ExpiredToken", "renew OBS_SECURITY_TOKEN")])
def test_wrong_credentials_are_one_line_without_the_key(env, monkeypatch, tmp_path, capsys, code, hint):
    monkeypatch.setenv("OBS_SECURITY_TOKEN", TOKEN)
    with _refusing(code) as refusing:
        monkeypatch.setenv("OBS_ENDPOINT", refusing)
        status, out, err = _cli(["obs://records/k400", str(tmp_path / "k400")], capsys)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: list obs://records/k400/: HTTP 403 {code}: ") and hint in err
    assert SECRET not in out + err and KEY_ID not in out + err and TOKEN not in out + err


def test_the_security_token_is_never_printed_logged_or_written(tiny_records, bucket, monkeypatch, tmp_path,
                                                                capsys, caplog):
    """Temporary credentials (OBS_SECURITY_TOKEN): a push and a pull with their progress lines, a
    refusal whose message quotes the request, retries at an unreachable endpoint; no output, log
    record or written file holds the token (nor the key or the secret)."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OBS_SECURITY_TOKEN", TOKEN)
    monkeypatch.setattr(sync, "PROGRESS_SECONDS", 0.0)           # a progress line per file
    split, url, pulled = tiny_records.split("val"), f"obs://{bucket}/val", tmp_path / "val"
    printed = []
    for argv in ([str(split), url], [url, str(pulled)]):
        status, out, err = _cli(argv, capsys)
        assert status == 0, err
        printed += [out, err]
    assert _tree(pulled) == _tree(split)
    with _refusing("ExpiredToken") as refusing:
        status, out, err = _cli([str(split), url, "--endpoint", refusing], capsys)
    assert status == 1 and "renew OBS_SECURITY_TOKEN" in err
    printed += [out, err]
    status, out, err = _cli([url, str(pulled), "--endpoint", f"http://127.0.0.1:{free_port()}"], capsys)
    assert status == 1 and "(after 4 attempts)" in err
    printed += [out, err]
    logged = [caplog.text] + [str(r.args) for r in caplog.records]
    assert "retrying" in caplog.text and "files, " in caplog.text    # the retry and progress lines ran
    written = [p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    for name, value in (("token", TOKEN), ("key", KEY_ID), ("secret", SECRET)):
        assert not [text for text in printed + logged + written if value in text], f"the {name} leaked"


def test_missing_bucket_is_one_line(tiny_records, env, capsys):
    status, _, err = _cli([str(tiny_records.split("val")), "obs://no-such-bucket/k400/val"], capsys)
    assert status == 1 and err.count("\n") == 1
    assert err == (f"error: list obs://no-such-bucket/k400/val/: HTTP 404 NoSuchBucket: no such bucket "
                   f"at {env}\n")


def test_unreachable_endpoint_is_one_line_after_retries(tiny_records, env, monkeypatch, capsys):
    port = free_port()                              # nothing listens on it
    status, _, err = _cli([str(tiny_records.split("val")), "obs://records/val",
                           "--endpoint", f"http://127.0.0.1:{port}"], capsys)
    assert status == 1 and err.count("\n") == 1
    assert err.startswith(f"error: list obs://records/val/: cannot reach http://127.0.0.1:{port}: "
                          f"ConnectionRefusedError")
    assert err.rstrip().endswith(f"(after {obs.ATTEMPTS} attempts)") and SECRET not in err


def _bytes_read() -> int:
    """Bytes this process has read through read() and the like, as Linux counts them."""
    io = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(io["rchar"])


def test_a_file_over_the_single_put_limit_is_refused_before_anything_is_sent(bucket, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("name: big\n")
    big = run / "checkpoints" / "epoch-0001.ckpt"
    with big.open("wb") as f:
        f.truncate(obs.MAX_PUT + 1)                 # sparse: no byte of it is on disk
    url, read = f"obs://{bucket}/runs/big", _bytes_read()
    refusal = (f"upload {url}/checkpoints/epoch-0001.ckpt: {big} has {obs.MAX_PUT + 1} bytes, more than "
               f"one PUT takes ({obs.MAX_PUT}); split it")
    status, _, err = _cli([str(run), url], capsys)
    assert (status, err) == (1, f"error: {refusal}\n")
    assert _remote(bucket, "runs/big") == set()     # not even config.yaml
    with pytest.raises(obs.ObsError) as refused:
        obs.Bucket(bucket).upload(big, "runs/big/checkpoints/epoch-0001.ckpt")
    assert str(refused.value) == refusal
    assert _bytes_read() - read < obs.MAX_PUT // 100, "the file was read before it was refused"


@pytest.mark.parametrize("src,dst,message", [
    ("obs://", "local", "malformed OBS URL 'obs://'"),
    ("obs://ab/x", "local", "malformed OBS URL 'obs://ab/x'"),
    ("obs://Records/x", "local", "malformed OBS URL"),
    ("obs://records//x", "local", "malformed OBS URL"),
    ("obs://records/../x", "local", "malformed OBS URL"),
    ("s3://records/x", "local", "malformed OBS URL 's3://records/x'"),
    ("a", "b", "a and b are both local folders"),
    ("obs://records/a", "obs://records/b", "are both OBS URLs"),
])
def test_bad_arguments_are_one_line(env, capsys, src, dst, message):
    status, _, err = _cli([src, dst], capsys)
    assert status == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_missing_credentials_are_one_line(env, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("OBS_SECRET_ACCESS_KEY")
    status, _, err = _cli([str(tmp_path), "obs://records/x"], capsys)
    assert status == 2 and err == "error: set OBS_SECRET_ACCESS_KEY in the environment (and " \
                                  "OBS_SECURITY_TOKEN for temporary credentials)\n"


def test_retrying_retries_only_what_may_pass(monkeypatch):
    monkeypatch.setattr(obs, "BACKOFF_SECONDS", 0.0)
    answers = iter([SimpleNamespace(status=503, errorCode="ServiceUnavailable", errorMessage="busy"),
                    ConnectionResetError("reset"),
                    SimpleNamespace(status=200)])

    def flaky():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert obs.retrying("get", "obs://b/k", "http://e", flaky).status == 200
    calls = []
    denied = SimpleNamespace(status=403, errorCode="AccessDenied", errorMessage="quoted request")
    with pytest.raises(obs.ObsError, match="^get obs://b/k: HTTP 403 AccessDenied: the credentials may not"):
        obs.retrying("get", "obs://b/k", "http://e", lambda: calls.append(1) or denied)
    assert len(calls) == 1
    with pytest.raises(obs.ObsError, match=r"^get obs://b/k: HTTP 429 SlowDown: slow \(after 4 attempts\)$"):
        obs.retrying("get", "obs://b/k", "http://e", lambda: calls.append(1) or SimpleNamespace(
            status=429, errorCode="SlowDown", errorMessage="slow"))
    assert len(calls) == 1 + obs.ATTEMPTS
    with pytest.raises(OSError, match="No space left") as local:       # not the network: no retry
        obs.retrying("get", "obs://b/k", "http://e", lambda: calls.append(1) or _raise(
            OSError(errno.ENOSPC, "No space left on device")))
    assert len(calls) == 2 + obs.ATTEMPTS and not isinstance(local.value, obs.ObsError)


def _raise(exc: Exception):
    raise exc
