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


def test_features_does_not_replace_a_file_created_while_it_computes(tmp_path, monkeypatch):
    """The check is made when the file is written, not only before: a file that appears meanwhile stays."""
    import realm.audio

    dst = tmp_path / "f.npy"

    def slow_extract(*args, **kwargs):
        dst.write_text("theirs")  # another process writes the output during the extraction
        return np.zeros((330, 45), np.float32)

    monkeypatch.setattr(realm.audio, "extract", slow_extract)
    r = runner.invoke(app, ["features", str(JFK), "--extractor", "vico45", "--out", str(dst)])
    assert r.exit_code == 2 and r.output.strip() == f"error: {dst}: exists (use --force to overwrite)"
    assert dst.read_text() == "theirs"
    assert [p.name for p in tmp_path.iterdir()] == ["f.npy"]  # no temporary left


def test_demo_refuses_an_earlier_demos_outputs_without_force(tmp_path):
    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "report.html").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(out)])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().endswith(f"error: {out}: exists and is not empty (use --force to overwrite)")
    assert (out / "report.html").read_text() == "mine" and [p.name for p in out.iterdir()] == ["report.html"]
    (tmp_path / "file").write_text("mine")
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "file")])
    assert (
        r.exit_code == 2
        and "exists and is not empty" in r.output
        and (tmp_path / "file").read_text() == "mine"
    )


def test_bench_refuses_an_existing_doc_before_any_work(tmp_path):
    doc = tmp_path / "benchmark.md"
    doc.write_text("the committed results")
    r = runner.invoke(
        app, ["bench", "--out", str(tmp_path / "run"), "--doc", str(doc), "--models", "static_mean"]
    )
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert r.output.strip().endswith(f"error: {doc}: exists (use --force to overwrite)")
    assert doc.read_text() == "the committed results" and not (tmp_path / "run").exists()
