"""The one-run performance script (`benchmarks/perf.py`): every figure it promises, consistent with its parts."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import perf  # noqa: E402


def test_summary_ratios_are_against_the_lcd_row():
    lat = {"speedup": {"1": 20.0, "4": 8.0}}
    train = [{"variant": "lcd", "step_s": 0.5, "peak_bytes": 100},
             {"variant": "lcd+direct", "step_s": 0.75, "peak_bytes": 180}]
    assert perf.summarise(lat, train) == {
        "sampling speed-up, 1 step(s)": 20.0, "sampling speed-up, 4 step(s)": 8.0,
        "train step time, lcd / lcd": 1.0, "train step memory, lcd / lcd": 1.0,
        "train step time, lcd+direct / lcd": 1.5, "train step memory, lcd+direct / lcd": 1.8}


@pytest.mark.slow
def test_perf_gathers_latency_and_every_train_variant_on_tiny_cpu(tmp_path, capsys):
    out = tmp_path / "perf.json"
    result = perf.main(["--device", "cpu", "--batch", "2", "--steps", "1", "--repeats", "1", "--threads", "1",
                        "--json", str(out)])
    assert json.loads(out.read_text())["summary"] == pytest.approx(result["summary"])
    assert result["size"] == "tiny"
    assert [r["variant"] for r in result["train_step"]] == ["lcd", "lcd+latents", "lcd+direct", "lcd+lrm"]
    assert all(r["step_s"] > 0 and r["peak_bytes"] > 0 for r in result["train_step"])
    lat = result["latency"]
    for steps in ("1", "2", "4", "8"):   # every step count measured, its ratio against the same teacher figure
        assert result["summary"][f"sampling speed-up, {steps} step(s)"] == lat["speedup"][steps] == pytest.approx(
            lat["teacher"]["seconds_per_image"] / lat["student"][steps]["seconds_per_image"])
    assert "# summary: tiny on" in capsys.readouterr().out


def test_prep_benchmark_counts_what_each_re_push_hashes(tmp_path):
    import prep as prep_bench   # benchmarks/prep.py

    result = prep_bench.bench_repush(tmp_path, mib=3)
    files = prep_bench.REPUSH_FILES
    assert [result[f"repush.{n}_files_hashed"] for n in ("first", "unchanged_no_cache", "unchanged",
                                                         "one_file_changed")] == [files, files, 0, 1]
    assert result["repush.unchanged_bytes_hashed"] == 0
    assert result["repush.one_file_changed_bytes_hashed"] == 3 * 2**20 // files
    assert result["repush.first_over_first"] == 1.0
