"""The bench scripts import only names the project still has (they run rarely, so a moved function breaks them
silently), and the GPU check says so and exits 0 on a machine without a GPU."""
import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("stores", "extract", "rag", "train")


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "bench").glob("*.py")))
def test_bench_imports_resolve(script):
    tree = ast.parse((ROOT / "bench" / script).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] in PROJECT:
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name) or importlib.util.find_spec(f"{node.module}.{alias.name}"), \
                    f"bench/{script}: {node.module} has no {alias.name}"


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script runs its checks")
def test_gpu_check_without_a_gpu_says_so_and_exits_0():
    proc = subprocess.run([sys.executable, "bench/gpu_check.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no GPU" in proc.stdout + proc.stderr
