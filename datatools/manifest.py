"""A converted split's on-disk contract besides the samples themselves: the manifest row, the
failure reasons, the conversion settings as stored, and the files each shard owns.

    records/<name>/<split>/shard-NNNNN.mindrecord (+ .db)   the samples (datatools.schema)
    records/<name>/<split>/shard-NNNNN.done.json            DoneMarker: the shard is done
    records/<name>/<split>/manifest.parquet                 one ManifestRow per CSV entry
    records/<name>/<split>/.convert.lock                    held by the converter writing the split

Every column name is written here and nowhere else: the converter, the inspector and the
trainer go through ``ManifestRow``, ``ShardFiles``, ``Settings`` and the readers below. The
trainer may import this module (docs/design.md §1).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from datatools.schema import READABLE_VERSIONS, SCHEMA_VERSION, SchemaVersionError

__all__ = [
    "MANIFEST_NAME", "LOCK_NAME", "STATUS_OK", "STATUS_FAILED", "NO_SHARD", "Reason", "reason_kind",
    "ManifestRow", "MANIFEST_SCHEMA", "Settings", "ShardFiles", "FileDigest", "SourceStamp",
    "source_stamp", "DoneMarker", "shard_index", "write_manifest", "read_manifest", "rows_of", "read_rows",
    "read_settings", "read_meta", "read_input", "InputId", "shards_on_disk", "read_digests", "ok_shard_paths", "source_sizes", "SOURCE_SIZE_COLUMNS", "AUTO", "AUTO_PAGE", "page_size_of",
    "JPEG", "H264", "CODECS", "X264_PRESETS",
]

MANIFEST_NAME = "manifest.parquet"
LOCK_NAME = ".convert.lock"         # datatools.lock: one converter per split folder
STATUS_OK = "ok"
STATUS_FAILED = "failed"
NO_SHARD = -1                       # the shard of rows that fail before any worker sees them
META_SCHEMA_VERSION = b"stnet_records.schema_version"
META_SETTINGS = b"stnet_records.settings"      # JSON of the conversion settings (+ csv, labels)
META_SHARDS = b"stnet_records.shards"          # JSON {file name: FileDigest} of every shard file
HASH_BLOCK = 1 << 20                            # bytes read at a time when hashing a file

MB = 1 << 20
MIN_PAGE, MAX_PAGE = 1 << 15, 1 << 28          # MindRecord's limits
PAGE_ALIGN = 4                                  # MindRecord takes page sizes in multiples of 4 bytes
# 32 MiB: a 10 s clip at short side 256 fits easily, ~6 of 5.5 MB fill a page (docs/design.md §8);
# the page of --page-mb auto's fallback and the least it chooses (datatools.pages.AUTO_PAGES)
DEFAULT_PAGE = 1 << 25
AUTO = "auto"
AUTO_PAGE = -1                                  # page_size still to settle (no --page-mb rounds to it)
LARGER_PAGE = "convert with a larger --page-mb"  # the fix named by every too-large reason
CHROMA_420 = "420"
CHROMA_SUBSAMPLINGS = (CHROMA_420, "422", "444")   # JPEG chroma subsampling of stored frames
JPEG, H264 = "jpeg", "h264"
CODECS = (JPEG, H264)        # how stored frames are encoded (datatools.frames reads both)
# The converter's codec: h264 met issue 21's bars on camera footage (1/4.5-1/5.5 of the JPEG
# bytes, luma PSNR 1.4 dB below on average, 1.0-1.6x its loader CPU per clip; README: choosing a
# codec).
DEFAULT_CODEC = H264
LEGACY_CODEC = JPEG          # what a manifest written before the codec was a setting (v2) stores
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow")


class Reason:
    """Kinds of failure, the part of a reason before ``:`` (``"truncated: decoded 40 of 90"``)."""

    MISSING = "missing file"
    EMPTY = "empty file"
    CANNOT_OPEN = "cannot open"
    NO_VIDEO_STREAM = "no video stream"
    NO_FRAMES = "no frames decoded"
    TRUNCATED = "truncated"
    UNSUPPORTED_ROTATION = "unsupported rotation"
    TOO_LARGE = "too large"
    ENCODE_ERROR = "encode error"           # anything else a video made the decoder or encoder raise
    UNKNOWN_LABEL = "unknown label"
    DUPLICATE_ID = "duplicate video_id"
    NO_LABEL = "no label"                   # a video list line without a label (datatools.lists)
    OUTSIDE_VIDEOS = "outside --videos"     # a list path, CSV label or id that is absolute or climbs out with ..
    # Failures a new copy of the source can cure (a finished download, a re-download; a cut-off
    # index reads as no video stream): a re-run retries them once their source file changed.
    # Unknown labels, duplicate ids, missing labels and outside paths come from the CSV or list
    # and labels.txt, which a resume keeps;
    # rotation and size come from how the video was shot.
    RETRYABLE = frozenset({MISSING, EMPTY, CANNOT_OPEN, NO_VIDEO_STREAM, NO_FRAMES, TRUNCATED,
                           ENCODE_ERROR})

    @staticmethod
    def text(kind: str, detail: str = "") -> str:
        """One manifest line: ``kind`` alone, or ``kind: detail``."""
        return f"{kind}: {detail}" if detail else kind


def reason_kind(reason: str) -> str:
    """``"truncated: decoded 40 of 90 frames"`` -> ``"truncated"``."""
    return reason.split(":", 1)[0]


@dataclass
class ManifestRow:
    """One CSV entry, converted (``ok``) or not (``failed`` with a one-line reason)."""

    video_id: str           # <ytid>_<start:06d>_<end:06d>, or a list path minus extension; unique
    label: int              # index into labels.txt, -1 if the CSV label is unknown
    label_name: str
    source: str             # path of the source video ("" if not found)
    shard: int              # shard the video is assigned to (NO_SHARD if never assigned)
    status: str = STATUS_FAILED
    reason: str = ""        # one line, "" when ok
    num_frames: int = 0     # frames stored
    fps: float = 0.0        # source frame rate
    src_width: int = 0
    src_height: int = 0
    width: int = 0          # stored frame size
    height: int = 0
    bytes: int = 0          # frame bytes stored for the video (JPEGs or the h264 stream)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    @property
    def reason_kind(self) -> str:
        return reason_kind(self.reason)

    @property
    def retryable(self) -> bool:
        return not self.ok and self.reason_kind in Reason.RETRYABLE

    def to_dict(self) -> dict:
        return asdict(self)


# Arrow types by annotation (strings under ``from __future__ import annotations``).
_ARROW_TYPES = {"str": pa.string(), "int": pa.int32(), "float": pa.float32()}
_WIDE = {"bytes": pa.int64()}
MANIFEST_SCHEMA = pa.schema([pa.field(f.name, _WIDE.get(f.name) or _ARROW_TYPES[f.type])
                             for f in fields(ManifestRow)])


@dataclass(frozen=True)
class Settings:
    """Conversion settings that change the stored bytes; a resumed run must use the same ones."""

    short_side: int
    quality: int
    max_fps: float | None
    videos_per_shard: int
    seed: int
    chroma_subsampling: str = CHROMA_420
    # MindDataset refuses to read shards whose page or header sizes differ, so both are fixed for
    # the whole split (the header size derives from page_size and videos_per_shard). A video must
    # fit in one page; pages hold several videos, so little is lost at page ends. AUTO_PAGE: the
    # converter chooses it (datatools.plan.settle_page); stored settings never hold AUTO_PAGE.
    page_size: int = DEFAULT_PAGE
    # The stored codec (JPEG: quality and chroma apply; h264: the x264 settings below apply).
    # Defaults chosen on real footage (docs/design.md §9); a manifest written before the codec
    # was a setting reads as LEGACY_CODEC.
    codec: str = DEFAULT_CODEC
    crf: int = 18               # x264 constant rate factor: lower is better and larger
    gop: int = 8                # a keyframe (IDR with SPS/PPS) every gop frames: the random access cost
    preset: str = "veryfast"    # x264 speed/size trade-off (converter CPU; bytes)
    fastdecode: bool = True     # x264 tune=fastdecode: no CABAC and no deblocking, ~2x faster reads

    def check(self) -> None:
        """Refuse unusable settings with the command-line flag to change."""
        if not 1 <= self.quality <= 100:
            raise ValueError(f"--quality must be in 1..100, got {self.quality}")
        if self.short_side < 0:
            raise ValueError(f"--short-side must be >= 0 (0 keeps the source size), got {self.short_side}")
        if self.max_fps is not None and not (self.max_fps > 0 and math.isfinite(self.max_fps)):
            raise ValueError(f"--max-fps must be a positive number, got {self.max_fps}")
        if self.chroma_subsampling not in CHROMA_SUBSAMPLINGS:
            raise ValueError(f"--chroma must be one of {'|'.join(CHROMA_SUBSAMPLINGS)}, "
                             f"got {self.chroma_subsampling!r}")
        if self.codec not in CODECS:
            raise ValueError(f"--codec must be one of {'|'.join(CODECS)}, got {self.codec!r}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"--crf must be in 0..51, got {self.crf}")
        if self.gop < 1:
            raise ValueError(f"--gop must be >= 1, got {self.gop}")
        if self.preset not in X264_PRESETS:
            raise ValueError(f"--preset must be one of {'|'.join(X264_PRESETS)}, got {self.preset!r}")
        if self.videos_per_shard < 1:
            raise ValueError(f"--videos-per-shard must be >= 1, got {self.videos_per_shard}")
        if self.page_size != AUTO_PAGE and (self.page_size % PAGE_ALIGN
                                            or not MIN_PAGE <= self.page_size <= MAX_PAGE):
            raise ValueError(f"--page-mb must be {AUTO} or from {MIN_PAGE / MB:g} to {MAX_PAGE // MB} "
                             f"in multiples of {PAGE_ALIGN} bytes, got {self.page_size / MB:g}")

    def changes_to(self, other: "Settings") -> list[str]:
        """Each setting ``other`` changes, as its converter flag and both values
        (``--quality 90 → 80``): what a refused resume names instead of two dicts."""
        changed = []
        for field in fields(self):
            old, new = getattr(self, field.name), getattr(other, field.name)
            if old != new:
                flag, unit = _FLAGS.get(field.name, (f"--{field.name.replace('_', '-')}", 1))
                changed.append(f"{flag} {_flag_value(old, unit)} → {_flag_value(new, unit)}")
        return changed

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, stored: dict) -> "Settings":
        return cls(**{"codec": LEGACY_CODEC,
                      **{f.name: stored[f.name] for f in fields(cls) if f.name in stored}})


# Settings fields whose converter flag is not --<field-with-dashes>, and the unit it takes.
_FLAGS = {"chroma_subsampling": ("--chroma", 1), "page_size": ("--page-mb", MB)}


def _flag_value(value: object, unit: int) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value / unit:g}" if unit != 1 and isinstance(value, int) else str(value)


def page_size_of(page_mb: str) -> int:
    """``--page-mb``'s bytes: AUTO_PAGE for ``auto``, else the MiB rounded to the nearest multiple
    of PAGE_ALIGN bytes (``Settings.check`` checks the range)."""
    if page_mb == AUTO:
        return AUTO_PAGE
    try:
        return PAGE_ALIGN * round(float(page_mb) * MB / PAGE_ALIGN)
    except (ValueError, OverflowError):          # not a number, nan, inf
        raise ValueError(f"--page-mb must be {AUTO} or a number of MiB, got {page_mb!r}") from None


SHARD_PREFIX, RECORD_SUFFIX = "shard-", ".mindrecord"


@dataclass(frozen=True)
class ShardFiles:
    """Every file shard ``index`` of a split may own."""

    record: Path        # the MindRecord file
    db: Path            # its index (MindRecord stores the record's name in it: never rename)
    spool: Path         # frame bytes while the shard is being converted
    done: Path          # marker: the shard's rows and settings, written last
    done_tmp: Path      # the marker before its atomic rename

    @classmethod
    def of(cls, split_dir: str | Path, index: int) -> "ShardFiles":
        record = Path(split_dir) / f"{SHARD_PREFIX}{index:05d}{RECORD_SUFFIX}"
        return cls(record, record.with_name(record.name + ".db"), record.with_suffix(".spool"),
                   record.with_suffix(".done.json"), record.with_suffix(".done.tmp"))

    def all(self) -> tuple[Path, ...]:
        return (self.record, self.db, self.spool, self.done, self.done_tmp)


@dataclass(frozen=True)
class FileDigest:
    """Size and hashes of a file, from one read. Size and sha256 are what a kept shard must still
    be (markers and manifests store them: ``stored``); the MD5, computed only when asked, is what
    OBS checks a transfer with (Content-MD5; the ETag of an unencrypted single-part object)."""

    size: int
    sha256: str
    md5: str = field(default="", compare=False)     # hex; "" unless ``of(..., md5=True)``

    @classmethod
    def of(cls, path: str | Path, md5: bool = False) -> "FileDigest":
        """Hash the file in HASH_BLOCK reads (shards are far larger than memory should hold)."""
        sha, md, size = hashlib.sha256(), hashlib.md5() if md5 else None, 0
        with open(path, "rb") as f:
            while block := f.read(HASH_BLOCK):
                sha.update(block)
                if md is not None:
                    md.update(block)
                size += len(block)
        return cls(size, sha.hexdigest(), md.hexdigest() if md is not None else "")

    def stored(self) -> dict:
        return {"size": self.size, "sha256": self.sha256}


SourceStamp = tuple[str, int, int]      # (path, size, mtime_ns) of a source; -1, -1 if not a file


def source_stamp(path: str) -> SourceStamp:
    """The version of a source file: a finished or repeated download changes size or mtime."""
    try:
        st = os.stat(path) if path else None
    except OSError:
        st = None
    return (path, st.st_size, st.st_mtime_ns) if st else (path, -1, -1)


@dataclass(frozen=True)
class InputId:
    """The CSV or list a split is converted from: its name as given and the sha256 of its
    entries (video id and label, in order). A resume must be of the same entries: another
    input into a split would silently replace its videos."""

    name: str
    sha256: str

    @classmethod
    def of(cls, name: str, entries: Iterable[tuple[str, str]]) -> "InputId":
        return cls(name, hashlib.sha256(json.dumps(list(entries)).encode()).hexdigest())


ORDER = "order"     # a marker row's CSV position, stored beside its manifest columns


@dataclass(frozen=True)
class DoneMarker:
    """``shard-NNNNN.done.json``, written last: the shard is done, for these inputs, as these files.

    ``files`` holds the digests of the record and its .db as verified (none when no video is ok),
    so a re-run can tell a kept shard from a damaged one; ``sources`` holds the stamp of each
    retryable failure's source when it failed, so a re-run retries exactly the videos whose file
    changed since. A resume must match ``settings`` and ``labels_sha256`` (the label file's content).
    """

    settings: Settings
    labels_sha256: str
    rows: tuple[tuple[int, ManifestRow], ...]           # (CSV order, row) of the shard's videos
    files: dict[str, FileDigest]            # by file name
    sources: dict[str, SourceStamp]         # by video_id
    input: InputId | None = None            # None: a marker written before inputs were stored

    def write(self, files: ShardFiles) -> None:
        """Atomically create the marker: temp file, fsync, rename."""
        content = {"settings": self.settings.to_dict(), "labels_sha256": self.labels_sha256,
                   "rows": [{ORDER: order, **row.to_dict()} for order, row in self.rows],
                   "files": {name: d.stored() for name, d in self.files.items()},
                   "sources": self.sources, **({"input": asdict(self.input)} if self.input else {})}
        with open(files.done_tmp, "w") as f:
            json.dump(content, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(files.done_tmp, files.done)

    @classmethod
    def read(cls, path: str | Path) -> "DoneMarker | None":
        """The marker at ``path``; None if there is none or it is not one of this format (an
        older converter's or a damaged one), which makes its shard be redone."""
        try:
            stored = json.loads(Path(path).read_text())
            return cls(Settings.from_dict(stored["settings"]), stored["labels_sha256"],
                       tuple((row.pop(ORDER), ManifestRow(**row)) for row in stored["rows"]),
                       {name: FileDigest(**d) for name, d in stored["files"].items()},
                       {vid: tuple(stamp) for vid, stamp in stored["sources"].items()},
                       InputId(**stored["input"]) if "input" in stored else None)
        except (FileNotFoundError, ValueError, KeyError, TypeError, AttributeError):
            return None


def shard_index(path: str | Path) -> int | None:
    """The index of a ``shard-NNNNN.mindrecord`` file, None for any other name."""
    name = Path(path).name
    digits = name[len(SHARD_PREFIX):-len(RECORD_SUFFIX)]
    if name.startswith(SHARD_PREFIX) and name.endswith(RECORD_SUFFIX) and digits.isdigit():
        return int(digits)
    return None


def write_manifest(rows: Iterable[ManifestRow], out_dir: str | Path, settings: Settings,
                   digests: dict[str, FileDigest], **extra_meta: str) -> Path:
    """manifest.parquet with the schema version, settings and shard file digests in its metadata
    (atomic replace; no temporary file is left if the write fails)."""
    rows = list(rows)
    columns = {f.name: [getattr(r, f.name) for r in rows] for f in MANIFEST_SCHEMA}
    meta = {**settings.to_dict(), **extra_meta}
    shards = {name: d.stored() for name, d in sorted(digests.items())}
    table = pa.Table.from_pydict(columns, schema=MANIFEST_SCHEMA).replace_schema_metadata({
        META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(), META_SETTINGS: json.dumps(meta).encode(),
        META_SHARDS: json.dumps(shards).encode()})
    path = Path(out_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_manifest(split_dir: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """The split's manifest table, refusing files written under another schema version; only
    ``columns`` when given (``[]``: none, the metadata alone), which is what a reader of a
    Kinetics-size manifest should ask for (benchmarks/README.md, scale)."""
    path = Path(split_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no manifest at {path}: convert the split first (datatools.convert)")
    table = pq.read_table(path, columns=None if columns is None else list(columns))
    found = (table.schema.metadata or {}).get(META_SCHEMA_VERSION, b"<none>").decode()
    if found not in map(str, READABLE_VERSIONS):
        raise SchemaVersionError(
            f"{path}: records schema v{found}, this code reads "
            f"{' or '.join(f'v{v}' for v in READABLE_VERSIONS)}; reconvert the split")
    return table


def rows_of(table: pa.Table) -> list[ManifestRow]:
    return [ManifestRow(**row) for row in table.to_pylist()]


def read_rows(split_dir: str | Path) -> list[ManifestRow]:
    return rows_of(read_manifest(split_dir))


def read_meta(table: pa.Table) -> dict:
    """What the converter stored with a manifest: its settings and where its inputs came from
    (``csv`` or ``list``, ``labels``, ``labels_sha256``, ``input_sha256``); {} if nothing."""
    return json.loads((table.schema.metadata or {}).get(META_SETTINGS, b"{}"))


def read_settings(table: pa.Table) -> Settings | None:
    """The conversion settings stored with a manifest (None for a manifest without them)."""
    stored = read_meta(table)
    return Settings.from_dict(stored) if "short_side" in stored else None


def read_input(split_dir: str | Path) -> InputId | None:
    """The input the split in ``split_dir`` was converted from: the finished split's (its
    manifest), else a half-done one's (a done marker's); None if there is none or it was
    converted before inputs were stored."""
    if (Path(split_dir) / MANIFEST_NAME).is_file():
        meta = read_meta(read_manifest(split_dir, []))
        name = meta.get("csv", meta.get("list", ""))
        return InputId(name, meta["input_sha256"]) if "input_sha256" in meta else None
    markers = (DoneMarker.read(ShardFiles.of(split_dir, i).done) for i in shards_on_disk(split_dir))
    return next((m.input for m in markers if m is not None and m.input is not None), None)


def shards_on_disk(split_dir: str | Path) -> list[int]:
    """Indices of the shards any of whose files (``ShardFiles``) is in ``split_dir``."""
    folder = Path(split_dir)
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    digits = {n[len(SHARD_PREFIX):len(SHARD_PREFIX) + 5] for n in names if n.startswith(SHARD_PREFIX)}
    return sorted(int(d) for d in digits if d.isdigit())


def read_digests(table: pa.Table) -> dict[str, FileDigest]:
    """Digests of the shard files by file name, as the converter verified them ({} if none stored)."""
    stored = json.loads((table.schema.metadata or {}).get(META_SHARDS, b"{}"))
    return {name: FileDigest(**d) for name, d in stored.items()}


def ok_shard_paths(split_dir: str | Path) -> list[str]:
    """Shard files that hold at least one converted video, in shard order."""
    table = _ok(read_manifest(split_dir, ["shard", "status"]))
    shards = sorted(pc.unique(table.column("shard")).to_pylist())
    paths = [str(ShardFiles.of(split_dir, s).record) for s in shards]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"manifest lists shards that are not on disk: {missing[:3]}")
    return paths


SOURCE_SIZE_COLUMNS = ("video_id", "status", "src_height", "src_width")    # what source_sizes reads


def source_sizes(table: pa.Table) -> dict[str, tuple[int, int]]:
    """(height, width) of each converted video's source, by video_id (stored frames may be smaller);
    ``table`` needs SOURCE_SIZE_COLUMNS only."""
    ok = _ok(table)
    return dict(zip(ok.column("video_id").to_pylist(),
                    zip(ok.column("src_height").to_pylist(), ok.column("src_width").to_pylist())))


def _ok(table: pa.Table) -> pa.Table:
    """The rows of converted videos, filtered in Arrow (a Kinetics manifest is ~650k rows)."""
    return table.filter(pc.equal(table.column("status"), STATUS_OK))
