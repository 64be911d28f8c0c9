"""datatools.convert --upload against a real S3 server (moto's, tests/conftest.py): each shard is
pushed as soon as it is done, its marker after its files, the label file and the manifest last; a
pull of the dataset passes inspection and is byte-identical; a resumed run re-sends nothing and
withdraws the manifest before the split there changes; bad targets are one line, before anything
is written. One worker, so the tasks run in this process in shard order."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from datatools import convert, obs, schema, sync
from datatools.cli import run_cli
from datatools.kinetics import read_csv
from datatools.labels import class_names, write_labels
from datatools.manifest import MANIFEST_NAME, ShardFiles
from datatools.synth import SynthSpec, make_dataset
from tests.conftest import KEY_ID, SECRET

SHARDS = 3      # 6 videos, two per shard


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("upload_source")
    train_csv, _ = make_dataset(base, num_classes=3, per_class=2, val_per_class=1,
                                spec=SynthSpec(num_frames=8, width=64, height=48))
    labels = write_labels(class_names(e.label for e in read_csv(train_csv)), base / schema.LABELS_NAME)
    return {"csv": train_csv, "videos": base / "videos", "labels": labels}


def _convert(source: dict, out: Path, *extra: str) -> int:
    return run_cli(convert.build_parser(), convert.main, [
        "--csv", str(source["csv"]), "--videos", str(source["videos"]), "--labels", str(source["labels"]),
        "--out", str(out), "--short-side", "0", "--videos-per-shard", "2", "--page-mb", "1", *extra])


@pytest.fixture
def bucket_calls(monkeypatch) -> list[str]:
    """"put NAME" / "delete NAME" for every object uploaded or deleted, in order."""
    seen: list[str] = []
    lock = threading.Lock()
    upload, delete = obs.Bucket.upload, obs.Bucket.delete

    def recording(method, verb):
        def call(self, *args, **kwargs):
            result = method(self, *args, **kwargs)
            key = args[1] if verb == "put" else args[0]
            with lock:
                seen.append(f"{verb} {key.rsplit('/', 1)[-1]}")
            return result
        return call

    monkeypatch.setattr(obs.Bucket, "upload", recording(upload, "put"))
    monkeypatch.setattr(obs.Bucket, "delete", recording(delete, "delete"))
    return seen


def _whole_split_pushed() -> list[str]:
    """Into an empty folder: the manifest withdrawn, each shard's marker withdrawn and then its
    files before its marker, shard after shard; the label file and the manifest last."""
    shards = [ShardFiles.of(Path("."), index) for index in range(SHARDS)]
    return [f"delete {MANIFEST_NAME}",
            *[call for files in shards for call in (f"delete {files.done.name}", f"put {files.record.name}",
                                                    f"put {files.db.name}", f"put {files.done.name}")],
            f"put {schema.LABELS_NAME}", f"put {MANIFEST_NAME}"]


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_each_shard_is_pushed_once_done_and_the_dataset_pulls_back_identical(source, bucket, tmp_path,
                                                                             bucket_calls, capsys):
    out = tmp_path / "records" / "train"
    assert _convert(source, out, "--upload", f"obs://{bucket}/ds/train") == 0
    printed = "".join(capsys.readouterr())
    assert KEY_ID not in printed and SECRET not in printed
    assert bucket_calls == _whole_split_pushed()

    pulled = tmp_path / "pulled"
    assert sync.sync(f"obs://{bucket}/ds", str(pulled)).inspected == [pulled / "train"]
    assert _tree(pulled) == {schema.LABELS_NAME: source["labels"].read_bytes(),
                             **{f"train/{name}": data for name, data in _tree(out).items()}}


def test_a_resumed_upload_sends_only_what_the_bucket_lacks(source, bucket, tmp_path, bucket_calls):
    out, url = tmp_path / "train", f"obs://{bucket}/ds/train"
    assert _convert(source, out) == 0 and bucket_calls == []            # converted, nothing pushed
    assert _convert(source, out, "--upload", url) == 0              # kept shards pushed first
    assert bucket_calls == _whole_split_pushed()
    bucket_calls.clear()
    assert _convert(source, out, "--upload", url) == 0
    assert bucket_calls == []
    ShardFiles.of(out, 1).done.unlink()                             # shard 1 is converted again
    assert _convert(source, out, "--upload", url) == 0              # ... into the same bytes
    assert bucket_calls == [f"delete {MANIFEST_NAME}", f"put {MANIFEST_NAME}"]
    assert sync.sync(url, str(tmp_path / "pulled")).inspected == [tmp_path / "pulled"]


def test_another_input_into_an_uploaded_split_is_refused_and_a_replace_leaves_only_its_shards(
        source, bucket, tmp_path, bucket_calls, capsys):
    url = f"obs://{bucket}/ds/train"
    assert _convert(source, tmp_path / "train", "--upload", url) == 0          # 3 shards there
    fewer = tmp_path / "fewer.csv"
    fewer.write_text("\n".join(source["csv"].read_text().splitlines()[:3]) + "\n")   # 2 videos, 1 shard
    other = {**source, "csv": fewer}
    bucket_calls.clear()
    capsys.readouterr()
    assert _convert(other, tmp_path / "mine", "--upload", url) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {url} holds a split converted from {source['csv']}, not from {fewer} ") \
        and err.count("\n") == 1, err
    assert bucket_calls == [] and not (tmp_path / "mine").exists()              # nothing written

    assert _convert(other, tmp_path / "mine", "--upload", url, "--replace") == 0
    first = ShardFiles.of(Path("."), 0)
    stale = [f"delete {files.name}" for index in (1, 2) for files in (
        ShardFiles.of(Path("."), index).done, ShardFiles.of(Path("."), index).record, ShardFiles.of(Path("."), index).db)]
    assert sorted(call for call in bucket_calls if call in stale) == sorted(stale)
    there = sorted(o.key.rsplit("/", 1)[-1] for o in obs.Bucket(bucket).list("ds/train/"))
    assert there == sorted([first.record.name, first.db.name, first.done.name, MANIFEST_NAME])
    assert sync.sync(url, str(tmp_path / "pulled")).inspected == [tmp_path / "pulled"]


@pytest.mark.parametrize("target,code,message", [
    ("obs://Bad/train", 2, "error: malformed OBS URL 'obs://Bad/train'"),
    ("obs://{bucket}", 2, "error: --upload obs://{bucket}: give the split a folder, e.g. "
                          "obs://{bucket}/k400/train"),
    ("obs://no-such-bucket/ds/train", 1,
     "error: list obs://no-such-bucket/ds/labels.txt: HTTP 404 NoSuchBucket"),
    ("obs://{bucket}/other/train", 2, "error: obs://{bucket}/other/labels.txt is another label file than "),
])
def test_a_bad_target_is_one_line_before_anything_is_written(source, bucket, tmp_path, capsys, target,
                                                             code, message):
    obs.Bucket(bucket).upload(source["csv"], "other/labels.txt")    # not this split's label file
    capsys.readouterr()
    out = tmp_path / "train"
    assert _convert(source, out, "--upload", target.format(bucket=bucket)) == code
    err = capsys.readouterr().err
    assert err.startswith(message.format(bucket=bucket)) and err.count("\n") == 1, err
    assert not out.exists()


def test_missing_credentials_are_one_line_before_anything_is_written(source, env, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.delenv("OBS_ACCESS_KEY_ID")
    assert _convert(source, tmp_path / "train", "--upload", "obs://records/ds/train") == 2
    assert capsys.readouterr().err == ("error: set OBS_ACCESS_KEY_ID in the environment (and "
                                       "OBS_SECURITY_TOKEN for temporary credentials)\n")
    assert not (tmp_path / "train").exists()


def _echoing(app, token: str):
    """moto's S3 behind a front that answers a listing of prefix ``echo<status>`` as S3 answers a
    malformed credential: an error whose message quotes the request's access key id (and here its
    security token); every other request goes to moto."""
    def front(environ, start_response):
        status = next((s for s in ("400", "500") if f"prefix=echo{s}" in environ.get("QUERY_STRING", "")), None)
        if status is None:
            return app(environ, start_response)
        key_id = environ.get("HTTP_AUTHORIZATION", "AWS ?:").split(" ", 1)[1].split(":", 1)[0]
        body = (f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AuthorizationHeaderMalformed</Code>"
                f"<Message>the Credential is mal-formed; expecting \"{key_id}/20260101/region/s3/aws4_request\""
                f" (token {environ.get('HTTP_X_AMZ_SECURITY_TOKEN', '')})</Message><RequestId>1</RequestId>"
                f"</Error>").encode()
        start_response(f"{status} Error", [("Content-Type", "application/xml"),
                                           ("Content-Length", str(len(body)))])
        return [body]
    return front


@pytest.mark.parametrize("status", ["400", "500"])
def test_a_refusal_quoting_credentials_leaves_obs_py_without_them(bucket, monkeypatch, caplog, status):
    from tests.conftest import s3_app, serving
    token = "FAKETOKEN-never-printed-0001"
    monkeypatch.setenv("OBS_SECURITY_TOKEN", token)
    with serving(_echoing(s3_app(), token)) as url:
        with pytest.raises(obs.ObsError) as refused:
            obs.Bucket(bucket, url).list(f"echo{status}")
    said = [str(refused.value), caplog.text]
    assert f"HTTP {status} AuthorizationHeaderMalformed" in said[0] and "<OBS_ACCESS_KEY_ID>" in said[0]
    assert not [text for text in said if KEY_ID in text or token in text or SECRET in text], said
