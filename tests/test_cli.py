import numpy as np
from typer.testing import CliRunner

from realm.cli import app
from tests.conftest import JFK

runner = CliRunner()


def test_help_lists_the_command_groups():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0 and "data" in r.output and "features" in r.output


def test_data_synth_then_inspect(tmp_path):
    out = tmp_path / "ds"
    r = runner.invoke(app, ["data", "synth", "--hours", "0.01", "--backend", "formant", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "wrote" in r.output and (out / "clips.csv").exists()
    r = runner.invoke(app, ["data", "synth", "--hours", "0.01", "--backend", "formant", "--out", str(out)])
    assert r.exit_code == 2 and "exists (use --force" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["data", "inspect", str(out)])
    assert r.exit_code == 0, r.output
    for word in ("train", "val", "test", "ood", "arkit58 (58 dims)", "nothing missing"):
        assert word in r.output


def test_features_writes_the_array_and_prints_its_shape(tmp_path):
    dst = tmp_path / "f.npy"
    r = runner.invoke(app, ["features", str(JFK), "--extractor", "vico45", "--out", str(dst)])
    assert r.exit_code == 0, r.output
    assert "330 x 45" in r.output
    assert np.load(dst).shape == (330, 45)
    r = runner.invoke(app, ["features", str(JFK), "--extractor", "vico45", "--out", str(dst)])
    assert r.exit_code == 2 and "--force" in r.output
    r = runner.invoke(app, ["features", str(JFK), "--extractor", "vico45", "--out", str(dst), "--force"])
    assert r.exit_code == 0


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    r = runner.invoke(app, ["features", str(tmp_path / "missing.wav")])
    assert r.exit_code == 2
    assert r.output.strip().splitlines() == [f"error: {tmp_path / 'missing.wav'}: audio file not found"]
    r = runner.invoke(app, ["features", str(JFK), "--extractor", "nope", "--out", str(tmp_path / "x.npy")])
    assert r.exit_code == 2 and "unknown feature extractor 'nope'" in r.output
    r = runner.invoke(app, ["data", "inspect", str(tmp_path)])
    assert r.exit_code == 2 and "unrecognised dataset layout" in r.output
