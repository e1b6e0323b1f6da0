"""The command line as a user meets it: fast help, one-line errors with exit code 2, `list`."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_help_imports_no_heavy_library():
    code = "import sys, cli; print(sorted(m for m in ('torch', 'mlflow', 'pandas', 'optuna', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_unknown_names_are_one_line_errors_with_exit_code_2(tmp_path):
    bad_method = _cli("train", "--method", "mudtp", "--dataset", "toy-shapes", cwd=tmp_path)
    assert bad_method.returncode == 2
    assert "unknown method 'mudtp'; valid: cocoop, coop, ivlp, maple, mudpt" in bad_method.stderr
    assert "Traceback" not in bad_method.stderr and len(bad_method.stderr.strip().splitlines()) == 1
    bad_switch = _cli("train", "--method", "mudpt", "--fusion", "both", "--dataset", "toy-shapes", cwd=tmp_path)
    assert bad_switch.returncode == 2 and "choose one of ['bi', 'off', 't2v', 'v2t']" in bad_switch.stderr
    bad_grid = _cli("run", "--grid", "no-such-grid", cwd=tmp_path)
    assert bad_grid.returncode == 2 and "ablation-depth" in bad_grid.stderr  # lists the valid grids
    assert not (tmp_path / "mlflow.db").exists()  # nothing was logged for bad input


def test_list_shows_methods_datasets_and_grids(tmp_path):
    out = _cli("list", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for name in ("mudpt", "maple", "vpt-deep", "toy-colorshapes", "oxford_pets", "ablation-depth", "few-shot"):
        assert name in out.stdout
