"""`realm bench`: a tiny benchmark end to end, its resumption, its time budget and its reading."""

import json
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from realm.bench import BenchConfig, plan_steps, prepare_benchmark_data, reading, run_bench
from realm.bench.document import targets
from realm.cli import app
from realm.eval import FLOOR

TINY_REALM = dict(d_model=32, ff_dim=64, refine_dim=32, refine_ff=64)


def tiny(root, **kw):
    """Six 6-8 s formant clips, prosody features, a tiny REALM, one thread (fast on a busy machine)."""
    base = dict(
        out=str(root / "run"), doc=str(root / "docs" / "benchmark.md"), data=str(root / "data"), hours=0.01,
        backend="formant", synth={"clip_seconds": [6.0, 8.0], "split_fractions": [0.5, 0.1, 0.2, 0.2]}, workers=1,
        models=["realm", "static_mean", "mirror"], extractor="prosody", batch_size=8, max_steps=2,
        train={"clip_stride": 32, "val_stride": 64}, model_overrides={"realm": TINY_REALM}, samples=2, max_clips=2,
        accelerator="cpu", devices="1", threads=1, command="realm bench --pytest",
    )  # fmt: skip
    return BenchConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REALM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        seen = []
        res = run_bench(tiny(root), progress=lambda step, done, total: seen.append(step))
    return root, res, seen


def test_bench_writes_the_document_with_both_tables_the_floor_and_a_reading(bench):
    root, res, seen = bench
    doc = (root / "docs" / "benchmark.md").read_text()
    assert "realm bench --pytest" in doc  # the exact command
    for part in ("## Dataset", "## Models and training", "## Reading", "## Split `test`", "## Split `ood`",
                 f"*{FLOOR}* (floor)", "realm (oracle)", "Recovered reaction delay", "Distance to the floor",
                 "FD_delta exp: REALM", "Machine:", "torch", "training precision 32-true"):  # fmt: skip
        assert part in doc, part
    assert doc.count(f"*{FLOOR}* (floor)") >= 4  # expression and pose tables of both splits
    assert "## Metric variants" in doc and doc.count("## Metric variants") == 1
    # the REACT family, per split, on all samples of the stochastic models at once (FRCorr sums over K = 2)
    assert doc.count("### REACT family") == 2 and "FRCorr exp ↑" in doc and "FRDiv exp →GT" in doc
    evals = {s: json.loads((root / "run" / "eval" / s / "results.json").read_text()) for s in ("test", "ood")}
    for ev in evals.values():
        realm_row = ev["rows"]["realm"]["metrics"]
        assert realm_row["frcorr_exp"]["mean"] == pytest.approx(2 * realm_row["frcorr_mean_exp"]["mean"])
        assert realm_row["frdiv_exp"]["mean"] > 0 and ev["rows"]["static_mean"]["metrics"]["frdiv_exp"]["mean"] == 0.0
    for split in ("test", "ood"):
        sentences = res["reading"][split]
        assert sentences[0].startswith("REALM is"), sentences[0]
        assert any("true tau = 8" in s for s in sentences)
    assert set(res["models"]) == {"realm", "static_mean", "mirror"}
    r = res["models"]["realm"]
    assert r["stage1"]["steps"] == 2 and r["stage2"]["steps"] == 4  # stage 2: generator + discriminator steps
    assert res["models"]["static_mean"]["fit"]["train_clips"] == 3
    assert res["dataset"]["splits"]["test"]["clips"] == 1 and res["dataset"]["realisations"] == 2
    saved = json.loads((root / "run" / "bench.json").read_text())
    assert BenchConfig.from_dict(saved) == tiny(root)
    assert (root / "run" / "bench_results.json").exists()
    for split in ("test", "ood"):
        assert (root / "run" / "eval" / split / "results.json").exists()
    assert any(s.startswith("train realm") for s in seen) and "evaluate ood" in seen and "synthesise data" in seen


def test_a_second_run_reuses_the_data_and_the_trained_models(bench, tmp_path, monkeypatch):
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache2"))
    weights = {m: root / "run" / "models" / m / "model.safetensors" for m in ("realm", "static_mean", "mirror")}
    before = {m: p.stat().st_mtime_ns for m, p in weights.items()}
    res = run_bench(tiny(root, doc=str(tmp_path / "again.md")))
    assert {m: p.stat().st_mtime_ns for m, p in weights.items()} == before  # nothing retrained
    assert all(r["reused"] for r in res["models"].values())
    assert res["dataset"]["reused"]
    assert "(earlier run)" in (tmp_path / "again.md").read_text()


def test_a_record_from_before_a_new_training_option_is_reused_while_the_option_keeps_its_default(bench, tmp_path,
                                                                                                 monkeypatch):
    """A training field added to the code after a model was trained must not retrain it (hours at real budgets)
    while it holds its default; set to anything else, it does."""
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache5"))
    rec_path = root / "run" / "models" / "realm" / "bench_train.json"
    rec = json.loads(rec_path.read_text())
    assert rec["key"]["train"]["energy_groups"] == "window" and "store" not in rec["key"]["train"]
    del rec["key"]["train"]["energy_groups"]  # as written before the field existed
    rec_path.write_text(json.dumps(rec))
    weights = root / "run" / "models" / "realm" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    res = run_bench(tiny(root, doc=str(tmp_path / "again.md")))
    assert res["models"]["realm"]["reused"] and weights.stat().st_mtime_ns == before

    from realm.bench.training import same_key

    defaults = {"energy_groups": "window", "lr": 1e-3}
    old = {"model": "realm", "train": {"lr": 1e-3}}
    assert same_key(old, {"model": "realm", "train": {"lr": 1e-3, "energy_groups": "window"}}, defaults)
    assert not same_key(old, {"model": "realm", "train": {"lr": 1e-3, "energy_groups": "channel"}}, defaults)
    assert not same_key(old, {"model": "realm", "train": {"lr": 2e-3, "energy_groups": "window"}}, defaults)
    assert not same_key(old, {"model": "lstm", "train": {"lr": 1e-3}}, defaults)
    assert not same_key(None, old, defaults)


def test_a_training_precision_reaches_every_neural_model_and_its_key(bench):
    """--precision bf16-mixed: REALM's and the baselines' training configs carry it, and a model trained in
    fp32 is not reused for it (its key differs); the default leaves every key as it was."""
    from realm.bench.training import _record_key, _train_config, _train_defaults, same_key

    root, _, _ = bench
    data = root / "data"
    for name in ("realm", "lstm"):
        fp32, bf16 = tiny(root), tiny(root, precision="bf16-mixed")
        t32, t16 = _train_config(name, fp32, data), _train_config(name, bf16, data)
        assert t32.precision == "32-true" and t16.precision == "bf16-mixed"
        k32, k16 = _record_key(name, fp32, {}, t32), _record_key(name, bf16, {}, t16)
        assert same_key(k32, _record_key(name, tiny(root), {}, t32), _train_defaults(t32))
        assert not same_key(k32, k16, _train_defaults(t16))


def test_other_data_settings_in_the_same_directory_are_refused(bench):
    root, _, _ = bench
    with pytest.raises(ValueError, match="differs in hours"):
        prepare_benchmark_data(tiny(root, hours=0.02), lambda *a: None)


def test_the_time_budget_is_calibrated_into_steps(bench, tmp_path, monkeypatch):
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache3"))
    cfg = tiny(root, out=str(tmp_path / "run"), doc=str(tmp_path / "b.md"), models=["no_refine", "lstm"],
               max_steps=0, minutes_per_model=0.05, model_overrides={"realm": TINY_REALM, "lstm": {"hidden": 16}},
               splits=["test"])  # fmt: skip
    res = run_bench(cfg)
    r, b = res["models"]["no_refine"], res["models"]["lstm"]
    assert r["budget_s"] == pytest.approx(3.0) and r["calibration"]["stage1_step_s"] > 0
    assert r["stage1"]["steps"] == r["plan"]["stage1_steps"] >= 1 and "stage2" not in r
    assert b["calibration"]["step_s"] > 0 and b["train"]["steps"] >= 1
    assert "Split `ood`" not in (tmp_path / "b.md").read_text()


def test_plan_steps_rounds_to_whole_epochs_past_one():
    assert plan_steps(5.0, 1.0, per_epoch=10) == 5  # less than an epoch: as many as fit
    assert plan_steps(25.0, 1.0, per_epoch=10) == 20  # 2.5 epochs: 2 (3 would overrun by 20 %)
    assert plan_steps(29.0, 1.0, per_epoch=10) == 30  # nearest, within 10 % of the budget
    assert plan_steps(0.0, 1.0, per_epoch=10) == 1


def _result(rows, tau=8.0, extra=()):
    metrics = {k: {"label": k.replace("_", " ")} for k in
               ("fd_exp", "fd_pose", "p_fd_exp", "p_fd_pose", "rpcc_exp", "rpcc_pose", "fd_delta_exp", "fd_delta_pose",
                "l1_exp", "delay", "delay_err", *extra)}  # fmt: skip
    out = {"tau": tau, "metrics": metrics, "rows": {}}
    for name, (kind, stochastic, vals) in rows.items():
        m = {k: {"mean": vals.get(k, vals.get("*")), "std": 0.0} for k in metrics}
        out["rows"][name] = {"kind": kind, "stochastic": stochastic, "samples": 1, "metrics": m}
    return out


def test_reading_is_computed_from_the_numbers():
    res = _result({
        "realm": ("model", True, {"*": 1.0, "fd_pose": 3.0, "delay": 8.4, "delay_err": 0.4}),
        "lstm": ("model", False, {"*": 2.0, "fd_pose": 2.5}),
        "mirror": ("model", False, {"*": 4.0, "fd_delta_exp": 0.5}),
        FLOOR: ("floor", False, {"*": 0.5, "delay": 8.0}),
    })  # fmt: skip
    lines = reading(res, {})
    assert "**not** ahead" in lines[0] and "fd pose (REALM 3; as good or better: lstm 2.5)" in lines[0]
    assert "within 1 frame" in lines[1] and "not within" not in lines[1]
    assert any(s.startswith("fd delta exp: REALM 1 vs") and "lower than 1 of 2" in s for s in lines)
    assert any("Distance to the floor" in s and "fd exp 1 vs 0.5 (+0.5, 2x)" in s for s in lines)
    res["rows"]["realm"]["metrics"]["fd_pose"]["mean"] = 1.0
    assert reading(res, {})[0] == (
        "REALM is ahead of every baseline (lstm, mirror) on fd exp, fd pose, p fd exp, p fd pose, rpcc exp, rpcc pose."
    )
    assert reading(_result({"lstm": ("model", False, {"*": 1.0})}), {}) == [
        "REALM was not among the models of this run: nothing to read."
    ]


def test_issue_15_targets_are_read_from_the_numbers_with_how_far_each_is():
    res = _result({
        "realm_sbk": ("model", True, {"fd_exp": 0.05, "p_fd_exp": 0.2, "event_f1": 0.5, "delay": 8.5, "delay_err": 0.5,
                                      "var_ratio_exp": 0.5, "drift_8_end": 0.01, "c2st": 0.9}),
        "realm_sbk (coarse)": ("model", False, {"*": 0.1, "c2st": 0.6}),  # its own coarse row is not another model
        "realm": ("model", True, {"*": 1.0, "c2st": 0.95}),
        "lstm": ("model", False, {"fd_exp": 0.08, "p_fd_exp": 0.1, "event_f1": 0.4, "drift_8_end": 0.02, "c2st": 0.85}),
        "static_mean": ("model", False, {"*": 1.0, "event_f1": 0.0}),
        FLOOR: ("floor", False, {"fd_exp": 0.02, "c2st": 0.6}),
    }, extra=("event_f1", "var_ratio_exp", "drift_8_end", "c2st"))  # fmt: skip
    got = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in targets(res)[2:]}
    assert got["fd exp: ahead of every baseline"] == ["0.05", "best baseline lstm 0.08", "**yes**", "-0.03 (0.62x the best baseline) |"]
    assert got["p fd exp: ahead of every baseline"][2:] == ["no", "+0.1 (2x the best baseline) |"]
    assert got["event f1: ahead of every baseline"][1:3] == ["best baseline lstm 0.4", "**yes**"]
    assert got["delay within 1 frame of tau"] == ["8.5", "tau = 8", "**yes**", "0.5 frames off |"]
    assert got["expression variance ratio in [0.7, 1.3]"][2:] == ["no", "0.2 under 0.7 |"]
    assert got["rest drift after 8 s no larger than the LSTM's"][2:] == ["**yes**", "0.5x the LSTM's |"]
    assert got["FD exp at most 3x the floor"][1:] == [f"{FLOOR} 0.02", "**yes**", "2.5x the floor |"]
    assert got["lowest two-sample test accuracy of all models"][1:] == ["lowest other: lstm 0.85", "no", "+0.05 |"]
    res["rows"][FLOOR]["metrics"]["fd_exp"]["mean"] = 0.01
    res["rows"].pop("lstm")
    got = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in targets(res)[2:]}
    assert got["rest drift after 8 s no larger than the LSTM's"][1:3] == ["no lstm", "n/a"]
    assert got["FD exp at most 3x the floor"][2:] == ["no", "5x the floor |"]
    assert got["fd exp: ahead of every baseline"][1:3] == ["best baseline static_mean 1", "**yes**"]
    assert got["lowest two-sample test accuracy of all models"][2] == "**yes**"  # 0.9 < realm's 0.95
    res["rows"].pop("realm_sbk")
    assert targets(res) == []  # no realm_sbk / realm_sb: nothing to check


def test_cli_bench_without_realm(tmp_path):
    r = CliRunner().invoke(app, [
        "bench", "--out", str(tmp_path / "run"), "--doc", str(tmp_path / "bench.md"), "--hours", "0.01",
        "--backend", "formant", "--workers", "1", "--models", "static_mean,mirror", "--extractor", "prosody",
        "--samples", "1", "--max-clips", "1", "--threads", "1",
    ])  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = (tmp_path / "bench.md").read_text()
    assert "```\nrealm " in doc  # the command line (sys.argv: pytest's under CliRunner)
    assert "| static_mean |" in doc and "| mirror |" in doc and "| realm |" not in doc
    assert "REALM was not among the models" in doc
    r = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "run"), "--models", "nope"])
    assert r.exit_code == 2 and "unknown model" in r.output
    r = CliRunner().invoke(app, ["bench", "--out", str(tmp_path / "run"), "--models", "mirror", "--minutes", "mirror:3"])
    assert r.exit_code == 2 and "expected NAME=MINUTES" in r.output


def test_the_stochastic_bounded_variant_runs_three_steps_with_its_own_budget(bench, tmp_path, monkeypatch):
    """realm_sb: stages 1 and 2, then step 3 (the demo's recipe) from them; what the bench evaluates is step 3's
    model (a latent per window, the leak to rest); per-model budgets are checked and recorded."""
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache4"))
    with pytest.raises(ValueError, match="not in the run"):
        tiny(root, minutes={"lstm": 3.0})
    cfg = tiny(root, out=str(tmp_path / "run"), doc=str(tmp_path / "sb.md"), models=["realm_sb", "static_mean"],
               splits=["test"], minutes={"realm_sb": 7.0}, step3={"clip_len": 64, "batch_size": 4})  # fmt: skip
    res = run_bench(cfg)
    r = res["models"]["realm_sb"]
    assert r["stage1"]["steps"] == 2 and r["stage2"]["steps"] == 4 and r["step3"]["steps"] == 2 and r["complete"]
    assert r["key"]["budget_minutes"] is None  # max_steps decides here; the budget is in the key otherwise
    model = json.loads((tmp_path / "run" / "models" / "realm_sb" / "config.json").read_text())
    assert model["model"]["latent_dim"] == 16 and model["model"]["rest_leak"] and model["stage"] == 1
    assert (tmp_path / "run" / "models" / "realm_sb" / "steps12" / "config.json").exists()
    doc = (tmp_path / "sb.md").read_text()
    assert "| realm_sb |" in doc and "step 3: 2" in doc
    # step 3's recipe changed: stages 1 and 2 are kept, step 3 alone is trained again
    stage2 = tmp_path / "run" / "models" / "realm_sb" / "steps12" / "model.safetensors"
    before = stage2.stat().st_mtime_ns
    again = run_bench(replace(cfg, step3={"clip_len": 64, "batch_size": 4, "lr": 1e-4}, force=True))
    r2 = again["models"]["realm_sb"]
    assert stage2.stat().st_mtime_ns == before and r2["stage1"] == r["stage1"] and r2["stage2"] == r["stage2"]
    assert r2["complete"] and not r2["reused"] and r2["key"]["step3"]["train"]["lr"] == 1e-4


def test_the_variant_told_its_reaction_kinds_runs_step_4_from_step_3(bench, tmp_path, monkeypatch):
    """realm_sbk: realm_sb's three steps, then step 4 (the demo's) from step 3, each step calibrated into its
    share of the budget: the model the bench evaluates is told which reaction kind starts, and draws the kinds
    at the demo's kind temperature."""
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache5"))
    cfg = tiny(root, out=str(tmp_path / "run"), doc=str(tmp_path / "sbk.md"), models=["realm_sbk", "static_mean"],
               splits=["test"], step3={"clip_len": 64, "batch_size": 4}, max_steps=0, minutes={"realm_sbk": 0.2})  # fmt: skip
    r = run_bench(cfg)["models"]["realm_sbk"]
    for step in ("step3", "step4"):  # timed with the kinds' labels (the motion stats) before its steps are planned
        assert r[f"calibration_{step}"]["stage1_step_s"] > 0 and r[step]["steps"] == r["plan"][f"{step}_steps"] >= 1
    assert r["complete"] and r["kind"] == "ours"
    assert r["key"]["step3"]["step4"]["react_condition"] == ["smile", "concern", "brow_raise"]
    mdir = tmp_path / "run" / "models" / "realm_sbk"
    model = json.loads((mdir / "config.json").read_text())["model"]
    assert model["react_condition"] == ["smile", "concern", "brow_raise"] and model["kind_temperature"] == 1.5
    assert model["latent_dim"] == 16 and model["rest_leak"] and model["react_shift"] == 8
    step3 = json.loads((mdir / "step3" / "config.json").read_text())["model"]
    assert not step3["react_condition"]  # step 3 as realm_sb's; step 4 started from it
    assert json.loads((mdir / "step4" / "config.json").read_text())["train"]["init"] == str(mdir / "step3")
    doc = (tmp_path / "sbk.md").read_text()
    assert "| realm_sbk |" in doc and f"step 4: {r['step4']['steps']}" in doc
    assert "## Issue 15's targets for ours" in doc and "| FD exp at most 3x the floor |" in doc  # read for realm_sbk


def test_the_teacher_forced_variant_forces_its_stage_1_only_and_plans_on_both_kinds_of_step(bench, tmp_path, monkeypatch):
    """realm_tf_sbk: realm_sbk whose stage 1 teacher-forces its first 75 % of steps. Its stage-1 calibration times a
    teacher-forced and a rollout step and plans on their mix; steps 3 and 4 roll out; the document has a targets
    table for each variant of ours in the run."""
    root, _, _ = bench
    monkeypatch.setenv("REALM_CACHE", str(root / "cache6"))
    cfg = tiny(root, out=str(tmp_path / "run"), doc=str(tmp_path / "tf.md"), models=["realm_tf_sbk", "static_mean"],
               splits=["test"], step3={"clip_len": 64, "batch_size": 4}, max_steps=0, minutes={"realm_tf_sbk": 0.2})  # fmt: skip
    r = run_bench(cfg)["models"]["realm_tf_sbk"]
    cal = r["calibration"]
    assert cal["stage1_teacher_step_s"] > 0 and cal["stage1_rollout_step_s"] > 0
    assert cal["stage1_step_s"] == pytest.approx(0.75 * cal["stage1_teacher_step_s"] + 0.25 * cal["stage1_rollout_step_s"])
    assert "stage1_teacher_step_s" not in r["calibration_step3"]  # step 3 rolls out: timed as it trains
    assert r["key"]["train"]["teacher_forcing"] == 0.75 and r["complete"]
    mdir = tmp_path / "run" / "models" / "realm_tf_sbk"
    assert json.loads((mdir / "steps12" / "config.json").read_text())["train"]["teacher_forcing"] == 0.75
    for step in ("step3", "step4"):
        assert json.loads((mdir / step / "config.json").read_text())["train"]["teacher_forcing"] == 0.0
    res = json.loads((tmp_path / "run" / "eval" / "test" / "results.json").read_text())
    assert targets(res)[0].startswith("| target (realm_tf_sbk) |")  # the only variant of ours in the run
    res["rows"]["realm_sbk"] = res["rows"]["realm_tf_sbk"]  # as if both variants of ours had run
    assert targets(res)[0].startswith("| target (realm_sbk) |")  # the first of OURS: the demo's recipe
    assert targets(res, "realm_tf_sbk")[0].startswith("| target (realm_tf_sbk) |") and targets(res, "realm_sb") == []
    doc = (tmp_path / "tf.md").read_text()
    assert "| realm_tf_sbk |" in doc and "| target (realm_tf_sbk) |" in doc


def test_the_reweighted_variant_divides_rotations_loss_weights_by_10_in_every_step(tmp_path):
    """realm_rw_sbk: realm_tf_sbk with w_rot 0.5 and w_vel 1.0 (DESIGN's 5 and 10); its steps 3 and 4 keep the
    weights and roll out; the other variants keep DESIGN's weights."""
    from realm.bench.training import _step3_configs, _train_config

    cfg = BenchConfig(out=str(tmp_path / "run"))
    t = _train_config("realm_rw_sbk", cfg, tmp_path)
    assert (t.w_rot, t.w_vel, t.teacher_forcing) == (0.5, 1.0, 0.75)
    assert (_train_config("tau0_rw_sbk", cfg, tmp_path).w_rot, _train_config("realm_tf_sbk", cfg, tmp_path).w_rot) == (0.5, 5.0)
    t3, m3 = _step3_configs(t, {"tau": 8}, tmp_path / "steps12")
    assert (t3.w_rot, t3.w_vel, t3.teacher_forcing, t3.coarse_loss) == (0.5, 1.0, 0.0, "energy") and m3.latent_dim == 16
