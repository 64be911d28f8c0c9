"""A split of thousands of one-video shards, cheaply: the stored samples of a converted split
written again, one per shard, under new video ids, by MindSpore's FileWriter with the project's
schema, page and header sizes (as datatools.shards writes a shard), with a manifest that lists
them (datatools.manifest.write_manifest, the converter's settings and label file digest).

Converting thousands of videos would take minutes; these are the same records a
``datatools.convert --videos-per-shard 1 --page-mb 1`` of those videos writes, except that each
shard's .db and record are not read back after the commit (the converter's check) and their
digests are taken as written.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from mindspore.mindrecord import FileReader, FileWriter

from datatools import schema
from datatools.manifest import (MB, FileDigest, ShardFiles, read_manifest, read_meta, read_settings,
                                rows_of, write_manifest)
from datatools.pages import header_size

__all__ = ["fan_out"]

PAGE = MB       # a small page: thousands of shards of the default 32 MiB page are 64 GB apparent


def _samples(split: Path) -> list[dict]:
    """Every stored sample of a converted split, in manifest order of its shards."""
    samples = []
    for shard in sorted({r.shard for r in rows_of(read_manifest(split)) if r.ok}):
        reader = FileReader(str(ShardFiles.of(split, shard).record), num_consumer=1)
        try:
            samples += [dict(item) for item in reader.get_next()]
        finally:
            reader.close()
    return samples


def fan_out(source: Path, out: Path, shards: int) -> Path:
    """``out``: ``shards`` shards of one video each, the samples of the converted split
    ``source`` cycled, video ``<id>-<n>`` in shard n; returns ``out``."""
    table = read_manifest(source)
    settings = dataclasses.replace(read_settings(table), videos_per_shard=1, page_size=PAGE)
    meta = {k: v for k, v in read_meta(table).items() if k not in settings.to_dict()}
    rows = {r.video_id: r for r in rows_of(table) if r.ok}
    samples = _samples(source)
    out.mkdir(parents=True)
    manifest_rows, digests = [], {}
    for index in range(shards):
        sample = samples[index % len(samples)]
        video_id = f"{sample[schema.VIDEO_ID]}-{index}"
        label, offsets, blob = int(sample[schema.LABEL]), sample[schema.OFFSETS], sample[schema.FRAMES]
        files = ShardFiles.of(out, index)
        writer = FileWriter(str(files.record), shard_num=1, overwrite=False)
        writer.set_page_size(settings.page_size)
        writer.set_header_size(header_size(settings.page_size, settings.videos_per_shard))
        writer.add_schema(schema.RECORD_SCHEMA, "stnet video clips")
        writer.write_raw_data([{**sample, schema.VIDEO_ID: video_id,
                                schema.CHECKSUM: schema.sample_checksum(video_id, label, offsets, blob)}])
        writer.commit()
        digests.update({p.name: FileDigest.of(p) for p in (files.record, files.db)})
        manifest_rows.append(dataclasses.replace(rows[str(sample[schema.VIDEO_ID])],
                                                 video_id=video_id, shard=index))
    write_manifest(manifest_rows, out, settings, digests, **meta)
    return out
