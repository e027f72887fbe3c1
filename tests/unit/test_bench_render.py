"""docs/BENCHMARKS.md's Loaders section comes from bench/loader_bench.py's JSON (render.py), and a
rerun of `make bench` keeps the sections measured by hand (run_all.py) instead of dropping them."""

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import render  # noqa: E402  (bench/ is a directory of scripts, not a package)
import run_all  # noqa: E402


def loader_result(ready: float, run: float) -> dict:
    rss = {"VmRSS": 22000, "RssAnon": 13000, "RssFile": 9000}
    return {"kernel": "6.12.118+deb12-amd64", "dry_run": False, "rounds": 2, "python_start_s": 1.25,
            "cli_version_s": 3.1,
            "configs": {render.LIBBPF: {"ready_s": ready, "run_s": run, "rss_kb": rss,
                                        "raw": {"ready_s": [ready, ready + 0.4], "run_s": [run, run]}},
                        "bcc (compiled at start)": {"ready_s": 14.3, "run_s": 14.9, "rss_kb": rss}}}


def test_the_loaders_section_judges_libbpf_against_the_goals():
    text = "\n".join(render.render_loaders({}, loader_result(3.5, 2.9)))
    assert text.startswith("## Loaders")
    assert "| **libbpf (prebuilt CO-RE object)** | **3.50 s** (3.50–3.90) | **2.90 s** (2.90–2.90) |" in text
    assert "| bcc (compiled at start) | 14.30 s | 14.90 s | 21.5 MB (12.7 + 8.8) |" in text
    assert "Goal ≤ 3 s for libbpf: READY **missed** by 0.50 s (+17 % of the goal); run **met**." in text
    assert "Host:" not in text   # no native result given: no host table


def test_a_rerun_keeps_the_hand_measured_sections(tmp_path):
    old = tmp_path / "BENCHMARKS.md"
    old.write_text("# Benchmarks\n\n## Results\n\nold\n\n## Container image and installed size (x)\n\n"
                   "by hand\n\n## Something generated\n\nold too\n")
    assert run_all.kept_by_hand(str(old)) == "\n## Container image and installed size (x)\n\nby hand\n"
    assert run_all.kept_by_hand(str(tmp_path / "absent.md")) == ""
