"""Naming the job log that explains a missing Scores file (alignment.failures)."""

from __future__ import annotations

from alignment.failures import first_error, missing_lines


def test_first_error_prefers_the_cli_line_then_a_traceback(tmp_path):
    cli = tmp_path / "cli.log"
    cli.write_text(
        "2026 INFO alignment: starting\n"
        "2026 ERROR alignment: sub-01.nc: 1 voxel(s) with NaN\n"
        "alignment encode: error: sub-01.nc: 1 voxel(s) with NaN\n"
    )
    assert first_error(cli) == "alignment encode: error: sub-01.nc: 1 voxel(s) with NaN"
    crash = tmp_path / "crash.log"
    crash.write_text(
        "Traceback (most recent call last):\n  File 'x.py', line 1\n"
        "    raise MemoryError\nMemoryError: cannot allocate 80 GiB\n"
    )
    assert first_error(crash) == "MemoryError: cannot allocate 80 GiB"
    ok = tmp_path / "ok.log"
    ok.write_text("layers: 100%\nwrote scores\n")
    assert first_error(ok) is None
    assert first_error(tmp_path / "absent.log") is None


def test_missing_lines_name_the_first_failed_job_upstream(tmp_path):
    features = tmp_path / "features.log"
    features.write_text("all good\n")
    ceiling = tmp_path / "ceiling.log"
    ceiling.write_text("alignment ceiling: error: b.nc: no noise ceiling\n")
    encode = tmp_path / "encode.log"  # never ran
    lines = missing_lines(
        {
            "results/sub-02/study/vit/ridge/scores.nc": [str(features), str(ceiling), str(encode)],
            "results/sub-03/study/vit/ridge/scores.nc": [str(features), str(encode)],
        }
    )
    assert lines[0] == (
        f"sub-02 | study | vit | ridge: FAILED, see {ceiling}: "
        "alignment ceiling: error: b.nc: no noise ceiling"
    )
    assert lines[1].startswith("sub-03 | study | vit | ridge: not produced")
