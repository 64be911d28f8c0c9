"""Copy a folder tree to or from OBS: a converted split or dataset (shards, .db, done markers,
manifest, labels) or a run folder.

    python -m datatools.sync records/kinetics400/train obs://bucket/k400/train    (push)
    python -m datatools.sync obs://bucket/k400/train records/kinetics400/train    (pull)

Resumable: a file whose destination already has the same size and sha256 is skipped, so a rerun
after an interruption copies only what is missing. Ordered so a half-copied split is never taken
as done: every other file first, then the shards' done markers, then manifest.parquet, each
phase starting once the one before is copied and verified (both ways). A destination's marker
or manifest that would vouch for a file about to change is removed before anything is copied;
nothing else is ever deleted. A pulled split is checked with datatools.inspect. Credentials:
see datatools.obs. ``SplitPush`` applies the same order to a split while datatools.convert
writes it (``--upload``), and leaves the bucket's split equal to the local one: a shard the new
split does not have is deleted there before its manifest is pushed.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from datatools.cli import positive_int, run_cli
from datatools.manifest import MANIFEST_NAME, DoneMarker, FileDigest, InputId, ShardFiles, shards_on_disk
from datatools.obs import Bucket, ObsUrl, endpoint_from_env, parse_url, refuse_oversized
from datatools.schema import LABELS_NAME

__all__ = ["DATA", "MARKER", "MANIFEST", "phase_of", "Progress", "SyncResult", "sync", "SplitPush",
           "main"]

log = logging.getLogger(__name__)

DATA, MARKER, MANIFEST = 0, 1, 2        # copy phases, in order
PROGRESS_SECONDS = 5.0


def phase_of(relative: str) -> int | None:
    """The copy phase of a file of the tree, or None for a temporary that is never copied: a
    hidden name (atomic writes' ``.x.tmp``, partial downloads, the converter's lock) or a
    converting shard's spool and marker temp."""
    name = PurePosixPath(relative).name
    if name.startswith("."):
        return None
    if name == MANIFEST_NAME:
        return MANIFEST
    files = _shard(relative)
    if files is None or name in (files.record.name, files.db.name):
        return DATA
    return MARKER if name == files.done.name else None


def _shard(relative: str) -> ShardFiles | None:
    """The shard whose files (``ShardFiles``) include this one, by name; None for other files."""
    path = PurePosixPath(relative)
    index = _shard_index(path.name)
    return None if index is None else ShardFiles.of(Path(path.parent), index)


def _shard_index(name: str) -> int | None:
    """The index of the shard that owns the file ``name``; None for another file."""
    digits = re.search(r"\d+", name)
    if digits and name in {f.name for f in ShardFiles.of(Path(), int(digits.group())).all()}:
        return int(digits.group())
    return None


@dataclass(frozen=True)
class _Item:
    relative: str       # "/"-separated path under the tree's root
    size: int
    phase: int
    there: bool         # the destination has a file or object of this name


@dataclass
class SyncResult:
    copied: int = 0
    skipped: int = 0
    bytes: int = 0                  # bytes copied (skipped files not counted)
    seconds: float = 0.0            # of the copy, inspection not counted
    inspected: list[Path] = field(default_factory=list)     # pulled splits that passed inspection

    def lines(self) -> list[str]:
        rate = self.bytes / self.seconds / 1e6 if self.seconds > 0 else 0.0
        return [f"copied {self.copied} files ({self.bytes / 1e6:.2f} MB), skipped {self.skipped} "
                f"already there, in {self.seconds:.1f} s ({rate:.2f} MB/s)"] + [
                f"inspected {split}: every shard matches the manifest" for split in self.inspected]


class Progress:
    """Files done/total, bytes copied and bytes/s, at most one line per PROGRESS_SECONDS (and
    one at the end). Called from the copying threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.files = self.done = self.copied_bytes = 0
        self._in_flight: dict[str, int] = {}    # bytes so far of the files being copied
        self._start = self._last = time.perf_counter()

    def start(self, files: int) -> None:
        self.files = files
        self._start = self._last = time.perf_counter()

    def transferring(self, relative: str, done_bytes: int) -> None:
        with self._lock:
            self._in_flight[relative] = done_bytes
            self._report(final=False)

    def file_done(self, relative: str, size: int, copied: bool) -> None:
        with self._lock:
            self._in_flight.pop(relative, None)
            self.done += 1
            self.copied_bytes += size if copied else 0
            self._report(final=self.done == self.files)

    def _report(self, final: bool) -> None:
        now = time.perf_counter()
        if now - self._last < PROGRESS_SECONDS and not final:
            return
        self._last = now
        moved = self.copied_bytes + sum(self._in_flight.values())
        log.info("%d/%d files, %.1f MB copied, %.2f MB/s", self.done, self.files, moved / 1e6,
                 moved / 1e6 / max(now - self._start, 1e-9))


def sync(src: str, dst: str, workers: int = 4, endpoint: str | None = None,
         progress: Progress | None = None) -> SyncResult:
    """Copy the tree ``src`` to ``dst``: one is a local folder, the other ``obs://bucket/prefix``."""
    src_remote, dst_remote = _remote(src), _remote(dst)
    if src_remote == dst_remote:
        raise ValueError(f"{src} and {dst} are both {'OBS URLs' if src_remote else 'local folders'}: "
                         f"one side must be obs://bucket/prefix, the other a local folder")
    url = parse_url(dst if dst_remote else src)
    local = Path(src if dst_remote else dst)
    bucket = Bucket(url.bucket, endpoint)
    progress = progress or Progress()
    if dst_remote:
        return _push(local, url, bucket, workers, progress)
    return _pull(url, local, bucket, workers, progress)


def _remote(side: str) -> bool:
    """An OBS URL, or an attempt at one (any scheme: parse_url names the expected form)."""
    return side.startswith("obs:") or "://" in side


def _push(root: Path, url: ObsUrl, bucket: Bucket, workers: int, progress: Progress) -> SyncResult:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder to push")
    there = {o.key: o.size for o in bucket.list(url.key(""))}
    items = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and (phase := phase_of(rel)) is not None:
            items.append(_Item(rel, path.stat().st_size, phase, url.key(rel) in there))
            refuse_oversized(bucket.url(url.key(rel)), path, items[-1].size)   # before any upload
    if not items:
        raise FileNotFoundError(f"{root}: no files to push")
    log.info("push %s -> %s: %d files, %.1f MB, %d workers", root, url, len(items),
             sum(i.size for i in items) / 1e6, workers)

    def needed(item: _Item) -> bool:
        key = url.key(item.relative)
        return (there.get(key) != item.size or (stored := bucket.stat(key)) is None
                or not stored.holds(FileDigest.of(root / item.relative, md5=True)))

    def push(item: _Item) -> None:
        bucket.upload(root / item.relative, url.key(item.relative),
                      progress=lambda n: progress.transferring(item.relative, n))

    return _run(items, needed, lambda item: bucket.delete(url.key(item.relative)), push, workers, progress)


def _pull(url: ObsUrl, root: Path, bucket: Bucket, workers: int, progress: Progress) -> SyncResult:
    if root.exists() and not root.is_dir():
        raise ValueError(f"{root}: exists and is not a folder")
    prefix = url.key("")
    items = []
    for obj in bucket.list(prefix):
        rel = obj.key[len(prefix):]
        if obj.key.endswith("/"):       # a console-made "folder" object
            continue
        if any(part in ("", ".", "..") for part in rel.split("/")):
            raise ValueError(f"{bucket.url(obj.key)}: key does not map to a path under {root}")
        if (phase := phase_of(rel)) is not None:
            items.append(_Item(rel, obj.size, phase, (root / rel).exists()))
    if not items:
        raise FileNotFoundError(f"{url}: no objects under this prefix")
    log.info("pull %s -> %s: %d files, %.1f MB, %d workers", url, root, len(items),
             sum(i.size for i in items) / 1e6, workers)

    def needed(item: _Item) -> bool:
        path = root / item.relative
        return (not path.is_file() or path.stat().st_size != item.size
                or (stored := bucket.stat(url.key(item.relative))) is None
                or not stored.holds(FileDigest.of(path, md5=True)))

    def pull(item: _Item) -> None:
        bucket.download(url.key(item.relative), root / item.relative,
                        progress=lambda n: progress.transferring(item.relative, n))

    result = _run(items, needed, lambda item: (root / item.relative).unlink(), pull, workers, progress)
    for item in items:
        if item.phase == MANIFEST:
            result.inspected.append(_inspect(root / PurePosixPath(item.relative).parent, workers))
    return result


def _inspect(split_dir: Path, workers: int) -> Path:
    """Fail unless every shard of the pulled split matches its manifest."""
    from datatools.inspect import inspect_split     # imports MindSpore: only after a pull

    problems = inspect_split(split_dir, workers=workers).problems
    if problems:
        raise OSError(f"{split_dir}: the pulled split does not match its manifest: {problems[0]} "
                      f"({len(problems)} problem(s); python -m datatools.inspect {split_dir})")
    return split_dir


def _run(items: list[_Item], needed: Callable[[_Item], bool], withdraw: Callable[[_Item], None],
         copy: Callable[[_Item], None], workers: int, progress: Progress) -> SyncResult:
    """Find what the destination lacks, withdraw its markers and manifests that would vouch for
    files about to change, then copy phase by phase: a phase starts only when every file of the
    one before is copied. On a failure, files not started are dropped, those in flight finish,
    and the error is raised."""
    result = SyncResult()
    start = time.perf_counter()
    progress.start(len(items))
    with ThreadPoolExecutor(workers) as pool:
        try:
            todo = [item for item, copy_it in zip(items, pool.map(needed, items)) if copy_it]
            for item in _outdated(items, todo):
                withdraw(item)
            for item in set(items) - set(todo):
                result.skipped += 1
                progress.file_done(item.relative, item.size, copied=False)
            for phase in sorted({i.phase for i in todo}):
                futures = {pool.submit(copy, i): i for i in todo if i.phase == phase}
                for future in as_completed(futures):
                    future.result()
                    item = futures[future]
                    result.copied += 1
                    result.bytes += item.size
                    progress.file_done(item.relative, item.size, copied=True)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    result.seconds = time.perf_counter() - start
    return result


def _outdated(items: list[_Item], todo: list[_Item]) -> list[_Item]:
    """The destination's markers of shards with a file in ``todo`` and manifests of folders with
    a file in ``todo``: left in place while those files change, they would call them done."""
    shards = {_shard(i.relative) for i in todo} - {None}
    folders = {PurePosixPath(i.relative).parent for i in todo}
    return [i for i in items if i.there and (
        (i.phase == MARKER and _shard(i.relative) in shards)
        or (i.phase == MANIFEST and PurePosixPath(i.relative).parent in folders))]


@dataclass(frozen=True)
class SplitPush:
    """Where ``datatools.convert --upload`` pushes a split while converting it, in this module's
    order: a shard's record and .db, then its done marker, as soon as it is marked done; the label
    file beside the split and then the manifest at the end. It holds no client and no credential,
    so it travels to the shard tasks: each task pushes its own shard from the machine that wrote it
    (no shared filesystem needed), with a Bucket built from that machine's environment."""

    url: ObsUrl
    endpoint: str

    @classmethod
    def to(cls, text: str, endpoint: str | None = None) -> "SplitPush":
        url = parse_url(text)
        if not url.prefix:
            raise ValueError(f"--upload {text}: give the split a folder, e.g. "
                             f"obs://{url.bucket}/k400/train (its label file goes beside it)")
        return cls(url, endpoint or endpoint_from_env())

    def bucket(self) -> Bucket:
        return Bucket(self.url.bucket, self.endpoint)

    def dataset(self) -> ObsUrl:
        """The folder above the split, which holds labels.txt as ``records/<name>/`` does locally."""
        parent = PurePosixPath(self.url.prefix).parent.as_posix()
        return ObsUrl(self.url.bucket, "" if parent == "." else parent)

    def labels_key(self) -> str:
        return self.dataset().key(LABELS_NAME)

    def check(self, labels: Path, given: InputId, replace: bool = False) -> None:
        """Before anything is written: the credentials work, the bucket answers, the folder above
        the split holds no other label file (its other splits would not match this one), and the
        split's folder holds no split of another input, unless ``replace`` (as a local split)."""
        bucket = self.bucket()
        key = self.labels_key()
        there = bucket.list(key)        # unlike a stat, fails on a missing bucket
        stored = bucket.stat(key) if any(o.key == key for o in there) else None
        if stored is not None and not stored.holds(FileDigest.of(labels, md5=True)):
            raise ValueError(f"{bucket.url(key)} is another label file than {labels}: "
                             f"upload to another folder, or delete it there first")
        other = self._stored_input(bucket)
        if other is not None and other.sha256 != given.sha256 and not replace:
            raise ValueError(f"{self.url} holds a split converted from {other.name}, not from {given.name} "
                             f"(other videos or labels): upload to another folder, or add --replace "
                             f"to replace that split")

    def _stored_input(self, bucket: Bucket) -> InputId | None:
        """The input of the split in the bucket, from its first done marker that names one."""
        prefix = self.url.key("")
        markers = [o.key for o in bucket.list(prefix) if phase_of(o.key[len(prefix):]) == MARKER]
        with tempfile.TemporaryDirectory() as folder:
            for index, key in enumerate(markers):
                local = Path(folder) / f"{index}.done.json"
                bucket.download(key, local)
                marker = DoneMarker.read(local)
                if marker is not None and marker.input is not None:
                    return marker.input
        return None

    def start(self, split_dir: Path, kept: list[int], converting: bool, workers: int) -> None:
        """Before the run's tasks: withdraw the bucket's manifest if the split there is about to
        change (shards to convert, or kept ones it lacks), then push those kept shards."""
        bucket = self.bucket()
        shards = [ShardFiles.of(split_dir, index) for index in kept]
        with ThreadPoolExecutor(workers) as pool:
            lacking = [(files, missing) for files, missing in
                       zip(shards, pool.map(lambda files: self._lacking(files, bucket), shards)) if missing]
            if converting or lacking:
                bucket.delete(self.url.key(MANIFEST_NAME))
            list(pool.map(lambda pair: self._send(*pair, bucket), lacking))

    def shard(self, files: ShardFiles) -> None:
        """Push one shard marked done (in its task): what the bucket lacks of it, marker last."""
        bucket = self.bucket()
        self._send(files, self._lacking(files, bucket), bucket)

    def finish(self, split_dir: Path, labels: Path) -> None:
        """After every shard is pushed: the shards the split does not have (a replaced split's
        extra ones) are deleted in the bucket, then the label file and the manifest are pushed,
        each only if the bucket does not hold it already."""
        bucket = self.bucket()
        self._delete_other_shards(split_dir, bucket)
        manifest = split_dir / MANIFEST_NAME
        for path, key in ((labels, self.labels_key()), (manifest, self.url.key(MANIFEST_NAME))):
            digest = FileDigest.of(path, md5=True)
            stored = bucket.stat(key)
            if stored is None or not stored.holds(digest):
                bucket.upload(path, key, digest)
        log.info("pushed the split to %s: python -m datatools.sync %s DIR pulls the dataset (%s and "
                 "its splits)", self.url, self.dataset(), LABELS_NAME)

    def _delete_other_shards(self, split_dir: Path, bucket: Bucket) -> None:
        """Delete the bucket's shard files of shards ``split_dir`` does not hold, markers first
        (a marker vouches for its files)."""
        ours = set(shards_on_disk(split_dir))
        prefix = self.url.key("")
        others = [o.key for o in bucket.list(prefix)
                  if (index := _shard_index(o.key[len(prefix):])) is not None and index not in ours]
        for key in sorted(others, key=lambda k: phase_of(k[len(prefix):]) != MARKER):
            bucket.delete(key)
        if others:
            log.info("deleted %d file(s) of shards the split no longer has in %s", len(others), self.url)

    def _lacking(self, files: ShardFiles, bucket: Bucket) -> list[tuple[Path, str | None]]:
        """The shard's files the bucket does not hold, in push order, each with the sha256 its
        marker gives it (None for the marker itself, compared by content)."""
        marker = DoneMarker.read(files.done)
        if marker is None:
            raise OSError(f"{files.done}: no done marker to push")
        lacking: list[tuple[Path, str | None]] = []
        for path in (files.record, files.db):
            digest = marker.files.get(path.name)
            if digest is None:
                continue                    # no video stored: no record file
            stored = bucket.stat(self.url.key(path.name))
            if stored is None or (stored.size, stored.sha256) != (digest.size, digest.sha256):
                lacking.append((path, digest.sha256))
        stored = bucket.stat(self.url.key(files.done.name))
        if lacking or stored is None or not stored.holds(FileDigest.of(files.done, md5=True)):
            lacking.append((files.done, None))
        return lacking

    def _send(self, files: ShardFiles, lacking: list[tuple[Path, str | None]], bucket: Bucket) -> None:
        """Upload ``lacking`` in order; a marker in the bucket is deleted before the files it
        would vouch for change. A file that is no longer the one verified is not vouched for."""
        if any(sha256 is not None for _, sha256 in lacking):
            bucket.delete(self.url.key(files.done.name))
        for path, sha256 in lacking:
            stored = bucket.upload(path, self.url.key(path.name))
            if sha256 is not None and stored.sha256 != sha256:
                raise OSError(f"{path} changed since it was verified: convert the split again to redo "
                              f"shard {files.record.name}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m datatools.sync", description=__doc__.split("\n\n")[0].replace("\n", " "),
        epilog="Credentials: OBS_ACCESS_KEY_ID, OBS_SECRET_ACCESS_KEY (+ OBS_SECURITY_TOKEN for "
               "temporary ones) in the environment; never printed.")
    p.add_argument("src", help="local folder or obs://bucket/prefix")
    p.add_argument("dst", help="obs://bucket/prefix or local folder (the other kind than SRC)")
    p.add_argument("--workers", type=positive_int, default=4,
                   help="files copied at once, and shards inspected at once after a pull (default 4)")
    p.add_argument("--endpoint", default=None,
                   help="OBS endpoint, e.g. https://obs.cn-north-4.myhuaweicloud.com "
                        "(default: $OBS_ENDPOINT)")
    return p


def main(args: argparse.Namespace) -> int:
    result = sync(args.src, args.dst, args.workers, args.endpoint)
    print("\n".join(result.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(build_parser(), main))
