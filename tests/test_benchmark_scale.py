"""benchmarks.scale at a tiny size: every step runs on the project's code and the summary table
has a row per measurement and a column per size (the full run is the benchmark's, not a test's)."""
from __future__ import annotations

import pytest

from benchmarks import scale


def test_a_tiny_run_prints_the_table(tmp_path, capsys):
    args = scale.build_parser().parse_args(["--quick", "--rows", "200", "--val-videos", "19", "--ranks", "2",
                                            "--measure-ranks", "1", "--repeats", "1", "--work", str(tmp_path)])
    assert scale.main(args) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| step | 1/4 (50 rows, 1 shards) | 1 (200 rows, 4 shards) |"), table[0]
    for step in ("plan: plan_shards (s)", "trainer: clip_decoder (s)", "train rank: first batch (s)",
                 "eval rank: padding cost (s)"):
        assert any(line.startswith(f"| {step} | ") for line in table), step
    assert "rank 1 reads" in out and "total" in out
    assert list(tmp_path.iterdir()) == []       # the scratch folder is removed


@pytest.mark.parametrize("bad", [["--fractions", "0"], ["--fractions", "2"], ["--fractions", "a/b"],
                                 ["--missing", "1"], ["--measure-ranks", "-1"], ["--rows", "0"]])
def test_unusable_arguments_are_refused(bad, capsys):
    with pytest.raises(SystemExit):
        scale.build_parser().parse_args(bad)
    assert "error:" in capsys.readouterr().err


def test_a_measured_rank_must_be_one_of_the_ranks(tmp_path):
    args = scale.build_parser().parse_args(["--ranks", "2", "--measure-ranks", "2", "--work", str(tmp_path)])
    with pytest.raises(ValueError, match="--measure-ranks must be below --ranks 2"):
        scale.main(args)
