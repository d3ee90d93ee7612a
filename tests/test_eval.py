"""The benchmark harness and the `realm eval` command on a tiny synthetic set and a tiny REALM."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import realm
from realm.cli import app
from realm.data.synth import SynthConfig, generate
from realm.eval import FLOOR, REFERENCE, evaluate
from realm.metrics import METRICS
from tests.test_generate import make_run  # a small random REALM checkpoint (logmel)


def tiny_set(root, listener_samples=2):
    """Six 6-8 s clips (formant speech), two of them in the test split."""
    cfg = SynthConfig(hours=0.01, seed=0, backend="formant", clip_seconds=(6.0, 8.0),
                      listener_samples=listener_samples, split_fractions=(0.5, 0.1, 0.3, 0.1))  # fmt: skip
    generate(cfg, root)
    return root


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return tiny_set(root / "data"), make_run(root / "run")


class StaticMean:
    """A deterministic stand-in with the shared model interface (the training mean, held)."""

    name, stochastic, extractor, fps = "static", False, "none", 30.0

    def __init__(self, spec, mean):
        self.spec, self.mean = spec, mean

    def generate(self, audio, first_frame=None, history=None, samples=1, seed=0, features=None, clamp=True,
                 speaker=None, words=None):  # fmt: skip
        T = len(speaker)
        return np.repeat(self.mean[None, None], T, axis=1).repeat(samples, axis=0)


def test_evaluate_writes_tables_plots_and_the_floor(bench, tmp_path):
    data, run = bench
    lis = realm.load(run)
    out = tmp_path / "res"
    res = evaluate({"realm": run, "static": StaticMean(lis.spec, lis.stats.mean)}, data, split="test", samples=2,
                   out=out, command="pytest")  # fmt: skip
    for f in ("results.json", "results.csv", "results.md", "plots/metrics.png"):
        assert (out / f).exists(), f
    assert len(list((out / "plots").glob("trajectories_*.png"))) == 2
    assert set(res["rows"]) == {"realm", "realm (coarse)", "realm (oracle)", "static", FLOOR, REFERENCE}
    coarse = res["rows"]["realm (coarse)"]  # REALM before its refinement: one deterministic sample
    assert coarse["samples"] == 1 and coarse["refine"] is False and not coarse["stochastic"]
    assert coarse["metrics"]["blink_rate"]["mean"] is not None and coarse["metrics"]["fd_cov_exp"]["mean"] >= 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["command"] == "pytest" and saved["split"] == "test" and saved["samples"] == 2
    assert saved["n_clips"] == 2 and saved["dataset"]["format"] == "realm" and saved["tau"] == 8
    assert saved["rows"]["realm"]["samples"] == 2 and saved["rows"]["static"]["samples"] == 1
    for name, row in saved["rows"].items():
        for k, v in row["metrics"].items():
            assert v["mean"] is None or np.isfinite(v["mean"]), (name, k)
    realm_row = saved["rows"]["realm"]["metrics"]
    for k in ("l1_exp", "fd_exp", "fd_delta_exp", "p_fd_pose", "rpcc_exp", "sid_exp", "delay_err", "event_f1"):
        assert realm_row[k]["mean"] is not None and realm_row[k]["std"] >= 0, k
    floor = saved["rows"][FLOOR]["metrics"]
    assert floor["l1_exp"]["mean"] > 0 and floor["event_f1"]["mean"] > 0
    # the oracle is never worse than the mean of the samples on the L1 it selects by
    assert saved["rows"]["realm (oracle)"]["metrics"]["l1_exp"]["mean"] <= realm_row["l1_exp"]["mean"] + 1e-3
    assert saved["rows"][REFERENCE]["metrics"]["l1_exp"]["mean"] is None  # GT vs itself is not shown
    md = (out / "results.md").read_text()
    assert f"*{FLOOR}* (floor)" in md and "→GT" in md and "↓" in md and "**" in md and "± " in md
    assert md.count("| model |") == 6 and "## REACT family" in md
    assert "appropriate real reactions: every listener realisation of the clip" in md
    # the REACT family: all K = 2 samples at once; a deterministic model's output counts K times
    assert saved["metric_set"] == "all" and saved["appropriate"] == "every listener realisation of the clip"
    for k in ("frcorr_exp", "frcorr_mean_exp", "frdist_exp", "frdist_mean_pose", "frdiv_exp", "frdvs_exp", "frvar_exp"):
        assert realm_row[k]["mean"] is not None and realm_row[k]["std"] is None, k  # one value per set
    assert realm_row["frcorr_exp"]["mean"] == pytest.approx(2 * realm_row["frcorr_mean_exp"]["mean"])  # REACT's sum
    assert realm_row["frsyn_exp"]["std"] >= 0  # FRSyn is per sample: mean ± std
    static = saved["rows"]["static"]["metrics"]
    assert static["frdiv_exp"]["mean"] == 0.0 and static["frcorr_exp"]["mean"] == pytest.approx(0.0, abs=1e-9)
    truth = saved["rows"][REFERENCE]["metrics"]  # the real listeners' diversity: two realisations per clip
    assert truth["frdiv_exp"]["mean"] > 0 and truth["frvar_exp"]["mean"] > 0 and truth["frcorr_exp"]["mean"] is None
    assert saved["rows"][FLOOR]["metrics"]["frcorr_exp"]["mean"] is None
    assert saved["rows"]["realm (oracle)"]["metrics"]["frdiv_exp"]["mean"] is None
    lines = (out / "results.csv").read_text().splitlines()
    assert lines[0].startswith("row,kind,samples,metric") and len(lines) == 1 + 6 * len(METRICS)
    with pytest.raises(FileExistsError, match="not empty"):
        evaluate({"realm": run}, data, out=out)
    evaluate({"realm": run}, data, out=out, force=True, samples=1, plots=False, max_clips=1)
    assert json.loads((out / "results.json").read_text())["n_clips"] == 1 and not (out / "plots").exists()


def test_floor_is_na_with_one_realisation_and_specs_must_match(bench, tmp_path):
    _, run = bench
    data = tiny_set(tmp_path / "one", listener_samples=1)
    res = evaluate({"realm": run}, data, samples=1, out=None, max_clips=1, coarse_rows=False)
    assert "realm (coarse)" not in res["rows"]
    assert res["rows"][FLOOR]["note"].startswith("n/a")
    assert all(v["mean"] is None for v in res["rows"][FLOOR]["metrics"].values())
    assert "realm (oracle)" not in res["rows"]  # one sample: no best-of-N row

    class Flame(StaticMean):
        pass

    from realm.errors import RealmInputError
    from realm.motion import get_spec

    with pytest.raises(RealmInputError, match="generates flame56"):
        evaluate({"x": Flame(get_spec("flame56"), np.zeros(56, np.float32))}, data, out=None)


def test_metric_sets_and_a_shipped_neighbour_matrix(bench, tmp_path):
    data, run = bench
    lis = realm.load(run)
    static = {"static": StaticMean(lis.spec, lis.stats.mean)}
    both = evaluate(static, data, samples=2, out=None)
    assert both["metric_set"] == "all" and both["n_clips"] == 2
    only_dim = evaluate(static, data, samples=2, out=None, metrics="dim")
    assert not any(METRICS[k].family == "react" for k in only_dim["metrics"]) and only_dim["appropriate"] is None
    only_react = evaluate(static, data, samples=2, out=None, metrics="react")
    assert {METRICS[k].family for k in only_react["metrics"]} == {"react"}
    assert only_react["rows"]["static"]["metrics"]["frdvs_exp"] == both["rows"]["static"]["metrics"]["frdvs_exp"]
    with pytest.raises(ValueError, match="metrics must be one of dim, react, all"):
        evaluate(static, data, out=None, metrics="l2l")
    # a neighbour matrix over the split's 2 clips (clip_id order): clip 0's appropriate reactions are both listeners
    n = 2
    matrix = np.eye(n)
    matrix[0, :] = 1
    np.save(data / "neighbours_test.npy", matrix)
    try:
        res = evaluate(static, data, samples=2, out=None, metrics="react")
        assert res["appropriate"] == "neighbour matrix neighbours_test.npy"
        np.save(data / "neighbours_test.npy", np.eye(n + 1))
        with pytest.raises(ValueError, match=r"neighbour matrix is \(3, 3\), expected \(2, 2\)"):
            evaluate(static, data, samples=2, out=None, metrics="react")
        np.save(data / "neighbours_test.npy", np.zeros((n, n)))
        with pytest.raises(ValueError, match="row 0 has no appropriate reaction"):
            evaluate(static, data, samples=2, out=None, metrics="react")
    finally:
        (data / "neighbours_test.npy").unlink()


def test_eval_command(bench, tmp_path):
    data, run = bench
    out = tmp_path / "cli"
    args = ["eval", "--data", str(data), "--model", f"realm={run}", "--samples", "2", "--out", str(out),
            "--max-clips", "1"]  # fmt: skip
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert (out / "results.md").exists() and "results.md" in r.output
    assert json.loads((out / "results.json").read_text())["command"].startswith("realm ")
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "--force" in r.output
    assert CliRunner().invoke(app, args + ["--force"]).exit_code == 0
    r = CliRunner().invoke(app, ["eval", "--data", str(data), "--model", "=", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "NAME=PATH" in r.output
    r = CliRunner().invoke(app, args[:-2] + ["--out", str(tmp_path / "react"), "--metrics", "react"])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "react" / "results.json").read_text())
    assert saved["metric_set"] == "react" and {METRICS[k].family for k in saved["metrics"]} == {"react"}
    assert saved["rows"]["realm"]["metrics"]["frcorr_exp"]["mean"] is not None and "l1_exp" not in saved["metrics"]
    r = CliRunner().invoke(app, args[:-2] + ["--out", str(tmp_path / "bad"), "--metrics", "l2l"])
    assert r.exit_code == 2 and "metrics must be one of" in r.output
