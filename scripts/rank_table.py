"""Read an HCCL rank table (v1.0 JSON) for scripts/run_distribute_train.sh: which ranks run here.

    python scripts/rank_table.py RANK_TABLE_FILE [--server-id ID]

Prints the table's total device count (the job's RANK_SIZE) on the first line, then one line
``rank_id device_id`` per device of this server, by rank (the launcher exports a line's position
as that rank's LOCAL_RANK). A bad table is one ``error: ...`` line on stderr and exit 2, so the
launcher stops before starting any rank. Standard library only: it runs before (and without) the
project's imports.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["RankTableError", "Device", "read_rank_table", "local_devices", "main"]

Device = tuple[int, int]  # (rank_id, device_id)


class RankTableError(ValueError):
    """The table cannot drive a launch; the message names the bad value."""


def _index(value: object, what: str) -> int:
    """v1.0 tables write ids as strings ("0"); accept a non-negative int either way."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise RankTableError(f"{what} must be a non-negative integer, got {value!r}")
    text = str(value).strip()
    if not text.isdigit():
        raise RankTableError(f"{what} must be a non-negative integer, got {value!r}")
    return int(text)


def read_rank_table(path: Path) -> dict[str, list[Device]]:
    """Validate the table; returns ``{server_id: [(rank_id, device_id), ...]}`` in table order.

    Checks what a launch depends on: a completed table, unique server ids, unique device ids per
    server, and rank ids that are exactly 0..N-1 over the whole table (HCCL's numbering).
    """
    if not path.is_file():
        raise RankTableError(f"rank table not found: {path}")
    try:
        table = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise RankTableError(f"cannot read rank table {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise RankTableError(f"rank table {path} is not valid JSON: {exc}") from None
    if not isinstance(table, dict):
        raise RankTableError(f"rank table {path} must be a JSON object, got {type(table).__name__}")
    status = table.get("status", "completed")
    if status != "completed":  # a cluster still filling the table in says "initializing"
        raise RankTableError(f"rank table {path} has status {status!r}, expected 'completed'")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise RankTableError(f"rank table {path} needs a non-empty server_list, got {servers!r}")
    if "server_count" in table and _index(table["server_count"], "server_count") != len(servers):
        raise RankTableError(f"rank table {path}: server_count is {table['server_count']!r} "
                             f"but server_list has {len(servers)} servers")
    layout: dict[str, list[Device]] = {}
    for i, server in enumerate(servers):
        where = f"server_list[{i}]"
        if not isinstance(server, dict) or not isinstance(server.get("server_id"), str):
            raise RankTableError(f"rank table {path}: {where} needs a string server_id")
        server_id = server["server_id"]
        if server_id in layout:
            raise RankTableError(f"rank table {path}: server_id {server_id!r} appears twice")
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise RankTableError(f"rank table {path}: server {server_id!r} needs a non-empty "
                                 f"device list, got {devices!r}")
        entries: list[Device] = []
        for j, device in enumerate(devices):
            if not isinstance(device, dict):
                raise RankTableError(f"rank table {path}: {where}.device[{j}] must be an object")
            entries.append((_index(device.get("rank_id"), f"{where}.device[{j}].rank_id"),
                            _index(device.get("device_id"), f"{where}.device[{j}].device_id")))
        device_ids = [d for _, d in entries]
        if len(set(device_ids)) != len(device_ids):
            raise RankTableError(f"rank table {path}: server {server_id!r} lists a device_id "
                                 f"twice: {device_ids}")
        layout[server_id] = entries
    ranks = sorted(r for entries in layout.values() for r, _ in entries)
    if ranks != list(range(len(ranks))):
        raise RankTableError(f"rank table {path}: rank_ids must be 0..{len(ranks) - 1} once each, "
                             f"got {ranks}")
    return layout


def local_devices(layout: dict[str, list[Device]], server_id: str | None) -> list[Device]:
    """This server's devices by rank: the only server of a one-server table, else ``server_id``."""
    ids = ", ".join(layout)
    if server_id:
        if server_id not in layout:
            raise RankTableError(f"SERVER_ID {server_id!r} is not in the rank table "
                                 f"(server_ids: {ids})")
        return sorted(layout[server_id])
    if len(layout) > 1:
        raise RankTableError(f"the rank table has {len(layout)} servers: set SERVER_ID to this "
                             f"server's server_id (one of: {ids})")
    return sorted(next(iter(layout.values())))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Validate an HCCL rank table (v1.0) and print what this server runs: the "
                    "total device count (RANK_SIZE) on the first line, then 'rank_id device_id' "
                    "per local device. Exit 2 with one 'error: ...' line for a bad table.")
    parser.add_argument("rank_table", type=Path, help="rank table JSON (RANK_TABLE_FILE)")
    parser.add_argument("--server-id", default=os.environ.get("SERVER_ID") or None,
                        help="this server's server_id; needed when the table lists several "
                             "servers (default: $SERVER_ID)")
    args = parser.parse_args(argv)
    try:
        layout = read_rank_table(args.rank_table)
        devices = local_devices(layout, args.server_id)
    except RankTableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(sum(len(entries) for entries in layout.values()))
    for rank_id, device_id in devices:
        print(rank_id, device_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
