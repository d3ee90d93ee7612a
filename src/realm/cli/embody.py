"""CLI commands of one area: `realm export`, `realm embody ...`: robot profiles, retargeting, simulation, exports."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from realm.cli.common import (
    app,
    console,
    friendly,
    out,
)
from realm.embodiment.export import FORMATS

embody_app = typer.Typer(
    help="Robot embodiment: profiles, retargeting maps, simulation (docs/embodiment.md).",
    no_args_is_help=True,
)
app.add_typer(embody_app, name="embody")


@app.command("export")
@friendly
def export_cmd(
    motion: Path = typer.Option(
        ..., "--motion", help="Listener motion (.npz from `realm generate`, or .npy)."
    ),
    fmt: str = typer.Option(..., "--format", help=" | ".join(FORMATS) + "."),
    out_path: Path = typer.Option(..., "--out", help="File to write (ros2-trajectory: .yaml or .json)."),
    profile: str = typer.Option("ameca", help="Robot profile: ameca, neck3 or a profile YAML path."),
    rate: float = typer.Option(30.0, help="Output rate in Hz (ameca-jsonl: 20-60)."),
    map_path: Path = typer.Option(
        None, "--map", help="Linear map to arkit58 for vico70/flame56 motion (embody fit-map)."
    ),
    sample: int = typer.Option(None, "--sample", help="Which realisation of an (N, T, D) motion file (required when N > 1)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Export motion for a robot or an avatar: retargeted, resampled and passed through the safety layer."""
    from realm.embodiment.export import export_motion

    s = export_motion(motion, fmt, out_path, profile=profile, rate=rate, map_path=map_path, force=force, sample=sample)
    who = f", profile {s['profile']}" if s["profile"] else ""
    out.print(
        f"wrote {s['frames']} frames ({s['duration_s']:.2f} s at {s['rate']:g} Hz, {s['spec']}{who}) to {s['out']}"
    )


@embody_app.command("fit-map")
@friendly
def fit_map_cmd(
    source: Path = typer.Option(..., "--source", help="Motion in the source space (e.g. vico70, flame56)."),
    target: Path = typer.Option(..., "--target", help="The same frames in arkit58."),
    out_path: Path = typer.Option(..., "--out", help="Map file to write (.npz)."),
    ridge: float = typer.Option(1e-3, help="Ridge penalty, relative to the mean input variance."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing map file."),
):
    """Fit a linear map from a motion space to arkit58 on paired frames (ridge least squares)."""
    import numpy as np

    from realm.embodiment.retarget import ARKIT, fit_linear_map
    from realm.errors import RealmInputError
    from realm.motion import load_motion_file

    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    xs, ys = load_motion_file(source), load_motion_file(target)
    x, y, src_spec, tgt_spec = xs.motion[0], ys.motion[0], xs.spec.name, ys.spec.name
    if tgt_spec != ARKIT:
        raise RealmInputError(target, f"target must be arkit58 motion, got {tgt_spec}")
    if len(x) != len(y):
        raise RealmInputError(target, f"{len(y)} frames, but the source has {len(x)} (frames must be paired)")
    m = fit_linear_map(x, y, ridge=ridge, source=src_spec)
    m.save(out_path, force=force)
    rmse = float(np.sqrt(np.mean((m.apply(x) - y) ** 2)))
    out.print(f"fitted {src_spec} -> arkit58 on {len(x)} paired frames: RMSE {rmse:.4f}; wrote {out_path}")


@embody_app.command("solve-flame")
@friendly
def solve_flame_cmd(
    motion: Path = typer.Argument(..., help="flame56 motion (.npz from `realm generate` or a dataset, or .npy)."),
    out_path: Path = typer.Argument(..., help="arkit58 motion to write (.npz)."),
    basis: Path = typer.Option(..., "--basis", help="ARKit -> FLAME basis: .npy (n_flame, 52) or .npz with basis/columns/rows/weights (docs/data.md)."),
    symmetry: float = typer.Option(0.0, help="Weight tying left/right ARKit pairs together."),
    l2: float = typer.Option(0.0, help="Weight shrinking every ARKit weight towards 0."),
    smooth: float = typer.Option(0.0, help="Weight on frame-to-frame change of the ARKit weights."),
    jaw_weight: float = typer.Option(1.0, "--jaw-weight", help="Row weight of the basis's jaw rows (jaw rotation is in radians)."),
    report: Path = typer.Option(None, "--report", help="Also write the quality report as JSON."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing output files."),
):
    """Solve FLAME motion into ARKit blendshapes (bounded least squares against a basis you supply).

    Every realisation of the file is solved; head rotation becomes pitch/yaw/roll, translation 0.
    Prints expression and jaw RMSE (FLAME units), saturation at 0 and 1 and the left/right difference.
    """
    import numpy as np

    from realm.embodiment.flame_solve import flame56_to_arkit58, load_basis
    from realm.errors import RealmInputError
    from realm.io import refuse_existing, save_npz, write_json
    from realm.motion import load_motion_file

    if not force:
        for p in (out_path, report):
            if p is not None:
                refuse_existing(p)
    mf = load_motion_file(motion)
    if mf.spec.name != "flame56":
        raise RealmInputError(motion, f"expected flame56 motion, got {mf.spec.name} (solve-flame reads FLAME codes)")
    b = load_basis(basis)
    results = [flame56_to_arkit58(m, b, symmetry=symmetry, l2=l2, smooth=smooth, jaw_weight=jaw_weight) for m in mf.motion]
    arkit = np.stack([r.weights for r in results])
    save_npz(out_path, force=force, listener=arkit, spec=np.array("arkit58"), fps=np.array(mf.fps))
    rep = results[0].report if len(results) == 1 else {"realisations": [r.report for r in results]}
    if report is not None:
        write_json(report, rep, force=force)
    r0 = results[0].report
    jaw = "n/a" if r0["jaw_rmse"] is None else f"{r0['jaw_rmse']:.4g}"
    lr = "n/a" if r0["left_right_difference"] is None else f"{r0['left_right_difference']:.3f}"
    out.print(
        f"solved {arkit.shape[0]} x {arkit.shape[1]} frames: expression RMSE {r0['expression_rmse']:.4g}, jaw RMSE {jaw}, "
        f"saturated {100 * r0['saturation_low']:.1f} % at 0 / {100 * r0['saturation_high']:.1f} % at 1, left/right "
        f"difference {lr}{'' if r0['converged'] else ' (NOT converged)'}; wrote {out_path}",
        highlight=False,
    )


@embody_app.command("profile")
@friendly
def profile_cmd(name: str = typer.Argument("ameca", help="ameca, neck3 or a profile YAML path.")):
    """Show a robot profile's controls, limits and rates (and validate a profile file)."""
    from realm.embodiment.profile import load_profile

    p = load_profile(name)
    t = Table(title=f"{p.name}: {p.n} controls, {p.rate_hz:g} Hz, lag {p.lag_s:g} s, delay {p.delay_s:g} s")
    for col in ("control", "kind", "unit", "lo", "hi", "neutral", "max vel", "max acc"):
        t.add_column(
            col, justify="left" if col in ("control", "kind", "unit") else "right", no_wrap=col == "control"
        )
    for c in p.controls:
        t.add_row(c.name, c.kind, c.unit, *(f"{v:g}" for v in (c.lo, c.hi, c.neutral, c.max_vel, c.max_acc)))
    out.print(t)
    if p.coupled_limits:
        out.print("coupled limits: " + ", ".join(f"{c.control} by {c.by}" for c in p.coupled_limits))


# ---------------------------------------------------------------- realm embody sim (physical simulation)


@embody_app.command("sim")
@friendly
def sim_cmd(
    motion: Path = typer.Option(
        ..., "--motion", help="Listener motion (.npz from `realm generate`, or .npy)."
    ),
    profile: str = typer.Option("ameca", help="Robot profile: ameca, neck3 or a profile YAML path."),
    out_dir: Path = typer.Option(
        ..., "--out", help="Directory to write (metrics.json, tracking.png, model.xml, ...)."
    ),
    rate: float = typer.Option(None, help="Command rate in Hz (default: the profile's rate_hz)."),
    no_safety: bool = typer.Option(False, "--no-safety", help="Simulate the raw retargeted commands."),
    map_path: Path = typer.Option(
        None, "--map", help="Linear map to arkit58 for vico70/flame56 motion (embody fit-map)."
    ),
    render: bool = typer.Option(
        False, "--render", help="Also render the simulated head (needs EGL or OSMesa)."
    ),
    sample: int = typer.Option(None, "--sample", help="Which realisation of an (N, T, D) motion file (required when N > 1)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output directory."),
):
    """Retarget motion onto a robot profile and follow it with a MuJoCo model of the robot (no GL needed).

    Writes metrics.json (tracking RMSE, lag, limit and rate saturation, jerk; per control and
    overall), tracking.png (command vs simulated), model.xml (the generated MJCF) and
    trajectories.npz.
    """
    from realm.embodiment.sim import render_frames, simulate_motion_file

    if rate is not None and not (0 < rate <= 1000):
        raise ValueError(f"--rate must be in (0, 1000] Hz, got {rate}")
    m = simulate_motion_file(motion, out_dir, profile=profile, rate=rate, safety=not no_safety,
                             map_path=map_path, force=force, sample=sample)  # fmt: skip
    o = m["overall"]

    def num(v, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    out.print(
        f"{m['profile']}: {m['frames']} frames at {m['fps']:g} Hz ({m['duration_s']:.1f} s), safety "
        f"{'on' if m['safety_applied'] else 'OFF'}: RMSE {num(o['rmse_deg'], '.2f')} deg / "
        f"{num(o['rmse_face'], '.3f')} face, lag {num(o['lag_ms'], '.0f')} ms, limit saturation "
        f"{o['limit_saturation_pct']:.1f} %, rate saturation {o['rate_saturation_pct']:.1f} %, "
        f"jerk {o['jerk_ms_norm']:.3g} (range/s^3)^2; wrote {out_dir}"
    )
    if render:
        why = render_frames(profile, out_dir / "trajectories.npz", out_dir / "frames.npy")
        if why is None:
            out.print(f"rendered the simulated head to {out_dir / 'frames.npy'} and {out_dir / 'frames.png'}")
        else:
            console.print(f"rendering skipped: no working EGL/OSMesa ({why})", highlight=False)
