"""The reduced fast-path benchmark (benchmarks/bench_fast_paths.py --quick): fast and reference-cost modes
must compute the same logits, losses and gradients. Timings are printed by the benchmark, never asserted."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_fast_paths.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_fast_paths", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_quick_benchmark_modes_agree_and_results_are_written(bench, tmp_path):
    code, rows, payload = bench.run(["--quick", "--out", str(tmp_path)])
    assert code == 0, payload["failures"]
    methods = {"mudpt", "maple", "coop", "vpt-deep", "ivlp"}
    assert {(r.method, r.classes) for r in rows} == {(m, c) for m in methods for c in (10, 100)}
    for r in rows:
        fast, ref = r.modes["fast"], r.modes["reference"]
        assert ref.text_len == 77 and fast.text_len < 77  # the trimmed context really was trimmed
        assert fast.train_step_s > 0 and ref.train_step_s > 0
        assert fast.eval_images_per_s > 0 and ref.eval_images_per_s > 0
        assert len(fast.train_losses) == len(ref.train_losses) == 2  # warm-up step + timed epoch
        c = r.check
        assert c.passed
        for value in (c.logits_train_rel, c.logits_eval_rel, c.loss_rel, c.train_loss_rel):
            assert value is not None and value <= 1e-5
        assert c.grad_rel is not None and c.grad_rel <= 1e-4
    written = json.loads((tmp_path / "fast_paths.json").read_text())
    assert written["failures"] == [] and len(written["rows"]) == len(rows)
    md = (tmp_path / "fast_paths.md").read_text()
    assert "| tiny | mudpt | 100 |" in md and "--quick" in md


def test_a_fast_path_that_is_not_exact_fails_the_run(bench, tmp_path, monkeypatch):
    """Trimming is exact only under the causal mask: without it, padding tokens reach the EOT feature."""
    load = bench.load_backbone

    def without_causal_mask(name, device):
        clip = load(name, device)
        clip.model.attn_mask = None
        return clip

    monkeypatch.setattr(bench, "load_backbone", without_causal_mask)
    code, rows, payload = bench.run(["--quick", "--methods", "coop", "--classes", "10", "--out", str(tmp_path)])
    assert code == 1
    assert any("logits" in f for f in payload["failures"])
    assert not rows[0].check.passed


@pytest.mark.parametrize("argv, message", [
    (["--classes", "0"], "class counts must be >= 1"),
    (["--methods", "cocoop"], "conditions its text on each image"),
    (["--iters", "0"], "--iters must be >= 1"),
])
def test_bad_arguments_exit_2_with_a_message(bench, tmp_path, capsys, argv, message):
    assert bench.main([*argv, "--quick", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
