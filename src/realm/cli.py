"""``realm``: a thin command-line front end over the library.

Bad input ends with one line, ``error: <file>: <problem>``, and exit code 2.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from realm.threads import GENERATE_THREADS

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads at run time

app = typer.Typer(
    help="Reactive listener motion: data, features, models, evaluation, rendering, robots.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Datasets: synthesise the benchmark, inspect any supported layout.", no_args_is_help=True)
app.add_typer(data_app, name="data")
train_app = typer.Typer(help="Train a model on a dataset directory.", no_args_is_help=True)
app.add_typer(train_app, name="train")

console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def _friendly(fn):
    """Turn expected failures into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from realm.errors import RealmInputError

        try:
            return fn(*args, **kwargs)
        except (RealmInputError, FileExistsError, KeyError, ValueError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            console.print(f"[red]error:[/red] {msg}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details."),
    trust_pickle: bool = typer.Option(False, "--trust-pickle", help="Fully unpickle peer dataset files no safe reader can read (a pickle can run any code: only for files you trust)."),
):
    from rich.logging import RichHandler

    import realm.data.peer

    realm.data.peer.TRUST_PICKLE = trust_pickle

    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )  # fmt: skip


# Options every training command shares (Lightning runtime, seed, resume).
SEED = typer.Option(23456, help="Random seed.")
ACCELERATOR = typer.Option("auto", help="Lightning accelerator: auto | cpu | gpu ...")
DEVICES = typer.Option("auto", help="Lightning devices: auto, a count, or a list like 0,1.")
STRATEGY = typer.Option("auto", help="Lightning strategy: auto | ddp | ddp_spawn | fsdp ...")
NUM_NODES = typer.Option(1, "--num-nodes", help="Machines (Lightning num_nodes).")
PRECISION = typer.Option("32-true", help="Lightning precision, e.g. bf16-mixed on GPUs.")
NUM_WORKERS = typer.Option(0, "--num-workers", help="DataLoader worker processes.")
RESUME = typer.Option(False, "--resume", help="Continue a run from its last checkpoint(s).")


# ---------------------------------------------------------------- realm data ...


@data_app.command("synth")
@_friendly
def data_synth(
    out_dir: Path = typer.Option(..., "--out", help="Dataset directory to create."),
    hours: float = typer.Option(0.05, help="Total speaker audio to generate."),
    seed: int = typer.Option(0, help="Same seed, identical files."),
    identity_seed: int = typer.Option(0, "--identity-seed", help="Listener identities (keep it to get new conversations of the same listeners)."),
    backend: str = typer.Option("piper", help="Speech: 'piper' (real words, neural TTS) or 'formant' (fast babble)."),
    tau: int = typer.Option(8, help="Listener reaction delay in frames (30 fps)."),
    tau_jitter: int = typer.Option(1, help="+- frames of jitter per reaction."),
    listener_samples: int = typer.Option(2, "--listener-samples", help="Listener realisations per speaker track."),
    no_cue_fraction: float = typer.Option(0.3, help="Fraction of emotional phrases spoken without prosodic cue."),
    identities: int = typer.Option(8, help="Listener identities of train/val/test."),
    ood_identities: int = typer.Option(3, help="Unseen listener identities of the ood split."),
    workers: int = typer.Option(1, help="Parallel worker processes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing directory."),
    channel: str = typer.Option("off", "--channel", help="Randomised speaker channel preset: 'off' (clean, the default) or 'robust' (every knob below on; the knobs you give override it)."),
    pitch_semitones: float | None = typer.Option(None, "--pitch-semitones", help="Channel, voices: each clip's pitch moves by up to +-this many semitones, formants kept (default 0: off)."),
    formant_shift: float | None = typer.Option(None, "--formant-shift", help="Channel, voices: each clip's formants (vocal tract) scale by 1 +- up to this, pitch kept (default 0: off)."),
    espeak: float | None = typer.Option(None, "--espeak", help="Channel, voices: fraction of clips spoken by espeak-ng voices (needs the espeak-ng binary; default 0)."),
    rate: tuple[float, float] | None = typer.Option(None, "--rate", help="Channel: speaking-rate factor range LO HI (> 1 faster; steps of 0.05; default 1 1: off). Words and their times move together."),
    level_db: tuple[float, float] | None = typer.Option(None, "--level-db", help="Channel: gain range LO HI in dB (default 0 0: off)."),
    noise: float | None = typer.Option(None, "--noise", help="Channel: fraction of clips with background noise (default 0)."),
    snr_db: tuple[float, float] | None = typer.Option(None, "--snr-db", help="Channel: SNR range LO HI in dB of the noise (default 0 30)."),
    noise_kinds: str | None = typer.Option(None, "--noise-kinds", help="Channel: noises to draw from, comma-separated: pink, white, babble (default all)."),
    reverb: float | None = typer.Option(None, "--reverb", help="Channel: fraction of clips in a reverberant room (default 0)."),
    rt60: tuple[float, float] | None = typer.Option(None, "--rt60", help="Channel: room RT60 range LO HI in seconds (default 0.2 1.0)."),
    band: float | None = typer.Option(None, "--band", help="Channel: fraction of clips band-limited (default 0)."),
    bands: str | None = typer.Option(None, "--bands", help="Channel: bands to draw from: telephone (300-3400 Hz), narrow (500-3000), lowpass (4 kHz), highpass (400 Hz) (default all)."),
    codec: float | None = typer.Option(None, "--codec", help="Channel: fraction of clips through a codec-like distortion (default 0)."),
    codecs: str | None = typer.Option(None, "--codecs", help="Channel: distortions to draw from: mulaw, 8bit, clip, downsample (default all)."),
):
    """Generate the synthetic reactive-dyads benchmark (DESIGN section 5)."""
    import dataclasses
    import time

    from realm.data.channel import ChannelConfig
    from realm.data.synth import SynthConfig, generate

    cfg = SynthConfig(
        hours=hours, seed=seed, identity_seed=identity_seed, backend=backend, tau=tau, tau_jitter=tau_jitter, listener_samples=listener_samples,
        no_cue_fraction=no_cue_fraction, n_identities=identities, n_ood_identities=ood_identities, workers=workers,
    )  # fmt: skip
    knobs = dict(
        pitch_semitones=pitch_semitones, formant_shift=formant_shift, espeak=espeak, rate=rate, level_db=level_db, noise=noise,
        snr_db=snr_db, reverb=reverb, rt60=rt60, band=band, codec=codec,
        noise_kinds=noise_kinds and tuple(k.strip() for k in noise_kinds.split(",") if k.strip()),
        bands=bands and tuple(k.strip() for k in bands.split(",") if k.strip()),
        codecs=codecs and tuple(k.strip() for k in codecs.split(",") if k.strip()),
    )  # fmt: skip
    chan = dataclasses.replace(ChannelConfig.preset(channel), **{k: v for k, v in knobs.items() if v is not None})
    chan.check_installed()
    if out_dir.exists() and not force:
        raise FileExistsError(f"{out_dir}: exists (use --force to overwrite)")
    t0 = time.time()
    with _progress() as p:
        task = p.add_task("synthesising clips", total=cfg.n_clips())
        res = generate(cfg, out_dir, force=force, progress=lambda i, n: p.update(task, completed=i, total=n), channel=chan)
    out.print(f"wrote {res.n_clips} clips ({res.hours:.3f} h of speech) to {res.out} in {time.time() - t0:.1f} s")


@data_app.command("inspect")
@_friendly
def data_inspect(root: Path = typer.Argument(..., help="Dataset directory (any supported layout).")):
    """Summarise a dataset: clips per split, hours, identities, dims, and what is missing."""
    from realm.data.inspect import summarize

    s = summarize(root)
    t = Table(title=f"{root}  [{s.format}]")
    for col in ("split", "clips", "hours", "listeners", "speakers"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for sp in s.splits:
        t.add_row(sp.split, str(sp.clips), f"{sp.hours:.3f}", str(len(sp.listeners)), str(len(sp.speakers)))
    t.add_row("[bold]all", f"[bold]{s.n_clips}", f"[bold]{s.hours:.3f}", "", "")
    out.print(t)
    out.print(f"listener motion: {s.spec} ({s.listener_dim} dims), {s.realisations} realisation(s) per clip")
    out.print(f"speaker motion:  {s.speaker}")
    feats = ", ".join(f"{k} ({v})" for k, v in s.features.items()) or "none precomputed"
    out.print(f"speaker audio:   {s.with_audio}/{s.n_clips} clips; features: {feats}")
    out.print(f"words: {s.with_words}/{s.n_clips}   events: {s.with_events}/{s.n_clips}   stats.npz: {'yes' if s.has_stats else 'no'}")
    if s.missing:
        out.print("[yellow]missing:[/yellow]")
        for m in s.missing:
            out.print(f"  - {m}", highlight=False)
    else:
        out.print("[green]nothing missing[/green]")


@data_app.command("features")
@_friendly
def data_features(
    root: Path = typer.Argument(..., help="Dataset directory."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | logmel_norm | pcen | vico45 | prosody | whisper"),
):
    """Extract (and cache) speaker features for every clip of a dataset."""
    from realm.data import load_any
    from realm.data.windows import clip_features

    clips = load_any(root)
    with _progress() as p:
        task = p.add_task(f"{extractor} features", total=len(clips))
        feats = clip_features(clips, extractor, progress=lambda i, n: p.update(task, completed=i))
    frames = sum(len(f) for f in feats)
    out.print(f"{len(clips)} clips, {frames} frames of {extractor} ({feats[0].shape[1]} dims), cached")


# ---------------------------------------------------------------- realm features


@app.command("features")
@_friendly
def features(
    audio: Path = typer.Argument(..., help="Audio file: wav, flac, mp3, ogg; any rate, mono or stereo."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | logmel_norm | pcen | vico45 | prosody | whisper"),
    out_path: Path = typer.Option(None, "--out", "-o", help="Output .npy (default: <audio stem>.<extractor>.npy)."),
    channel: int = typer.Option(None, help="Pick one channel (0-based) instead of the downmix."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the feature cache."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Write frame-synchronous features (one vector per 30 fps frame) of an audio file."""
    from realm.audio import extract, get_extractor
    from realm.io import save_npy

    ex = get_extractor(extractor)
    out_path = out_path or Path(f"{audio.stem}.{ex.name}.npy")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    with console.status(f"extracting {ex.name} features"):
        feats = extract(audio, ex, cache=not no_cache, channel=channel)
    save_npy(out_path, feats, force=force)
    out.print(f"{out_path}: shape {feats.shape[0]} x {feats.shape[1]} ({feats.shape[0] / ex.fps:.2f} s at {ex.fps:g} fps)")


# ---------------------------------------------------------------- realm train ...


@train_app.command("realm")
@_friendly
def train_realm_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory (checkpoints, logs, exported model)."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features: logmel | logmel_norm | pcen | vico45 | prosody | whisper"),
    preset: str = typer.Option("cpu", "--preset", help="Recipe: cpu (the demo checkpoint's: batch 64, 8 + 2 epochs, audio context 16 for local features, stage 1 from its last validation; ~1 h on 2 cores at 0.5 h of data) | paper (the authors': batch 512, 200 + 50 epochs, no audio context, stage 1 by val loss; GPU-sized). Options below override it."),
    epochs: int = typer.Option(None, help="Stage-1 epochs (cpu 8, paper 200)."),
    stage2_epochs: int = typer.Option(None, "--stage2-epochs", help="Stage-2 epochs (cpu 2, paper 50)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Clips per batch (cpu 64, paper 512)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Batches per stage (-1: run the epochs)."),
    lr: float = typer.Option(2e-3, help="Stage-1 learning rate."),
    clip_stride: int = typer.Option(4, "--clip-stride", help="Stride between 128-frame training clips."),
    tau: int = typer.Option(8, help="Reaction delay of the shifted ALiBi (0: plain ALiBi)."),
    audio_context: int = typer.Option(None, "--audio-context", help="Frames of audio before each window the encoder reads (paper 0, as the authors; cpu: 16 with local features like logmel)."),
    no_gate: bool = typer.Option(False, "--no-gate", help="Ablation: no reactive gate."),
    anchor: bool = typer.Option(False, "--anchor", help="Our option: keep the start frame in the decoder's memory (identity anchor against drift)."),
    no_history: bool = typer.Option(False, "--no-history", help="Ablation: audio-only (no listener history)."),
    no_audio: bool = typer.Option(False, "--no-audio", help="Ablation: history-only ('deaf')."),
    no_refinement: bool = typer.Option(False, "--no-refinement", help="Ablation: coarse model only (no stage 2)."),
    init: Path = typer.Option(None, "--init", help="Start from this REALM run's weights and stats (with --stages 2: retrain its refinement)."),
    stages: str = typer.Option("1,2", "--stages", help="Stages to run: 1,2 | 1 | 2."),
    sets: list[str] = typer.Option([], "--set", help="Any REALMConfig or TrainConfig field, FIELD=VALUE (JSON value), repeatable; e.g. --set refine_mode=\"whole\"."),
    seed: int = SEED,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    strategy: str = STRATEGY,
    num_nodes: int = NUM_NODES,
    precision: str = PRECISION,
    num_workers: int = NUM_WORKERS,
    resume: bool = RESUME,
):
    """Train REALM: stage 1 (coarse) then stage 2 (refinement); checkpoints selected on val."""
    from realm.models.realm import REALMConfig
    from realm.train import TrainConfig, preset_fields, train_realm

    _quiet_lightning()
    chosen = {"epochs": epochs, "stage2_epochs": stage2_epochs, "batch_size": batch_size, "audio_context": audio_context}
    recipe = {**preset_fields(preset, extractor), **{k: v for k, v in chosen.items() if v is not None}}
    audio_context = recipe.pop("audio_context")
    from dataclasses import fields

    try:
        stage_list = tuple(int(x) for x in stages.split(","))
    except ValueError:
        stage_list = ()
    if not stage_list or any(x not in (1, 2) for x in stage_list):
        raise ValueError(f"--stages {stages!r}: expected 1,2 or 1 or 2")
    overrides = _parse_sets(sets)
    train_fields, model_fields = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(REALMConfig)}
    unknown = sorted(set(overrides) - train_fields - model_fields)
    if unknown:
        raise ValueError(f"--set {unknown[0]}: not a REALMConfig or TrainConfig field")
    cfg = TrainConfig(**{
        **recipe,
        **dict(data=str(data), extractor=extractor, max_steps=max_steps, lr=lr, clip_stride=clip_stride, seed=seed, accelerator=accelerator, devices=devices,
               strategy=strategy, num_nodes=num_nodes, precision=precision, num_workers=num_workers,
               stages=stage_list, init=str(init) if init else ""),
        **{k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items() if k in train_fields}})  # fmt: skip
    mcfg = REALMConfig(**{
        **dict(tau=tau, audio_context=audio_context, identity_anchor=anchor, use_gate=not no_gate,
               use_history=not no_history, use_audio=not no_audio, use_refinement=not no_refinement),
        **{k: v for k, v in overrides.items() if k in model_fields}})  # fmt: skip
    command = "realm " + " ".join(sys.argv[1:])
    results = train_realm(cfg, mcfg, out_dir, resume=resume, command=command)
    for stage, r in results.items():
        metric = next((k for k in r if k.startswith("val/")), "")
        out.print(f"{stage}: {r['steps']} steps in {r['seconds']} s, best {metric} = {r.get(metric)}")
    if results:
        out.print(f"model written to {out_dir} (config.json, model.safetensors, stats)")


# ---------------------------------------------------------------- realm train <baseline>


def _parse_sets(items: list[str], option: str = "--set", form: str = "FIELD=VALUE") -> dict:
    """``["hidden=128", "vel_weights={\\"expression\\": 0.01}"]`` -> model config overrides (values as JSON)."""
    import json

    out_cfg = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} {item!r}: expected {form}")
        try:
            out_cfg[key.strip()] = json.loads(value)
        except ValueError:
            out_cfg[key.strip()] = value
    return out_cfg


def _add_baseline_command(name: str, summary: str, trained: bool) -> None:
    how = "trained with Lightning, checkpoint selected on val" if trained else "fitted in one pass over train"

    @train_app.command(name, help=f"Baseline: {summary} ({how}).")
    @_friendly
    def train_baseline_cmd(
        data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
        out_dir: Path = typer.Option(..., "--out", help="Run directory (exported model; logs and checkpoints when trained)."),
        extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features: logmel | logmel_norm | pcen | vico45 | prosody | whisper"),
        epochs: int = typer.Option(None, help="Epochs (neural baselines; default: the paper's recipe)."),
        batch_size: int = typer.Option(None, "--batch-size", help="Windows per batch (default: the paper's recipe)."),
        max_steps: int = typer.Option(-1, "--max-steps", help="Batches to train (-1: run the epochs)."),
        lr: float = typer.Option(None, help="Learning rate (default: the paper's recipe)."),
        clip_len: int = typer.Option(None, "--clip-len", help="Frames per training window (default: the paper's recipe)."),
        clip_stride: int = typer.Option(None, "--clip-stride", help="Stride between training windows."),
        sets: list[str] = typer.Option([], "--set", help="Model config override FIELD=VALUE (JSON value), repeatable."),
        seed: int = SEED,
        accelerator: str = ACCELERATOR,
        devices: str = DEVICES,
        strategy: str = STRATEGY,
        num_nodes: int = NUM_NODES,
        precision: str = PRECISION,
        num_workers: int = NUM_WORKERS,
        resume: bool = RESUME,
    ):
        from realm.models.baselines import baseline_train_config, train_baseline

        _quiet_lightning()
        cfg = baseline_train_config(
            name, data=str(data), extractor=extractor, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
            lr=lr, clip_len=clip_len, clip_stride=clip_stride, seed=seed, accelerator=accelerator, devices=devices,
            strategy=strategy, num_nodes=num_nodes, precision=precision, num_workers=num_workers,
        )  # fmt: skip
        command = "realm " + " ".join(sys.argv[1:])
        results = train_baseline(name, cfg, out_dir, model_cfg=_parse_sets(sets), resume=resume, command=command)
        r = results.get("train") or results.get("fit", {})
        if "steps" in r:
            out.print(f"{name}: {r['steps']} steps in {r['seconds']} s, best val/loss = {r.get('val/loss')}")
        else:
            out.print(f"{name}: fitted on {r.get('train_clips')} train clips in {r.get('seconds')} s")
        out.print(f"model written to {out_dir} (config.json, model.safetensors, stats)")


def _add_baseline_commands() -> None:
    from realm.models.baselines import BASELINES  # a registry without torch: the CLI starts fast

    for info in BASELINES.values():
        _add_baseline_command(info.name, info.summary, info.trained)


_add_baseline_commands()


def _quiet_lightning() -> None:
    import warnings

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="lightning")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")


# ---------------------------------------------------------------- realm generate


@app.command("generate")
@_friendly
def generate_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="Run directory of a trained model."),
    audio: Path = typer.Option(..., "--audio", "-a", help="Speaker audio (any format, rate, channels)."),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .npz (listener (N, T, D), spec, fps)."),
    first_frame: Path = typer.Option(None, "--first-frame", help="Motion file whose (last) frame starts the listener."),
    history: Path = typer.Option(None, "--history", help="Motion file of the listener's recent frames."),
    samples: int = typer.Option(1, help="Number of stochastic samples."),
    seed: int = typer.Option(0, help="Seed of the refinement noise / token sampling."),
    no_refine: bool = typer.Option(False, "--no-refine", help="Coarse motion only."),
    no_clamp: bool = typer.Option(False, "--no-clamp", help="Raw model output (values may leave the spec's ranges)."),
    transcript: Path = typer.Option(None, "--transcript", help="Words JSON [{word, start, end}] (models that read words; default: offline ASR)."),
    identity_ref: Path = typer.Option(None, "--identity-ref", help="Motion (>= 2 s) of the listener whose style to decode in (mmlm)."),
    temperature: float = typer.Option(None, help="Token sampling temperature, 0 = greedy (mmlm; default: the model's)."),
    top_p: float = typer.Option(None, "--top-p", help="Nucleus sampling mass (mmlm)."),
    greedy: bool = typer.Option(False, "--greedy", help="Greedy token decoding (= --temperature 0)."),
    threads: int = typer.Option(GENERATE_THREADS, help="torch CPU threads (0: torch's default, one per core; 1 is fastest for these small models)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Generate listener motion for an audio file with a trained checkpoint."""
    import realm
    from realm.generate import generate_file, read_motion
    from realm.threads import set_torch_threads

    set_torch_threads(threads)

    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    listener = realm.load(checkpoint)
    spec = listener.spec.name
    ff = read_motion(first_frame, spec)[-1] if first_frame else None
    hist = read_motion(history, spec) if history else None
    kw = {}
    if identity_ref is not None:
        kw["identity_ref"] = read_motion(identity_ref, spec)
    if greedy or temperature is not None:
        kw["temperature"] = 0.0 if greedy else temperature
    if top_p is not None:
        kw["top_p"] = top_p
    words = None
    if getattr(listener.model, "uses_words", False):
        from realm.asr import words_for

        with console.status("reading words" if transcript else "transcribing the speech (offline ASR)"):
            words = words_for(audio, transcript=transcript)
    elif transcript is not None:
        console.print(f"note: {getattr(listener, 'name', 'REALM')} does not read words; --transcript ignored")
    from rich.progress import TaskProgressColumn, TimeRemainingColumn

    bar = Progress(TextColumn("[bold]generating"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=True)  # fmt: skip
    with bar:
        task = bar.add_task("generating", total=1.0)
        motion = generate_file(listener, audio, out_path, force=force, first_frame=ff, history=hist,
                               samples=samples, seed=seed, refine=not no_refine, clamp=not no_clamp, words=words,
                               progress=lambda f: bar.update(task, completed=f), **kw)  # fmt: skip
    n, T, D = motion.shape
    out.print(f"{out_path}: {n} sample(s) x {T} frames x {D} ({spec}, {listener.fps:g} fps, {T / listener.fps:.2f} s)")


# ---------------------------------------------------------------- realm demo


@app.command("demo")
@_friendly
def demo_cmd(
    checkpoint: Path = typer.Option(Path("checkpoints/realm-demo"), "--checkpoint", "-c", help="Trained REALM run."),
    out_dir: Path = typer.Option(Path("demo_out"), "--out", help="Where the demo writes its outputs."),
    speech: Path = typer.Option(Path("tests/data/jfk.flac"), "--speech", help="Real speech to react to."),
    hours: float = typer.Option(0.05, help="Size of the held-out synthetic set."),
    samples: int = typer.Option(3, help="REALM samples per clip (metrics are their mean)."),
    force: bool = typer.Option(False, "--force", help="Replace the outputs of an earlier demo in a non-empty --out."),
):
    """Held-out synthetic conversations + real speech: REALM vs ground truth and trivial baselines."""
    import time

    from realm.demo import run_demo
    from realm.metrics import behaviour_cell

    t0 = time.time()
    with _progress() as p:
        task = p.add_task("synthesising a held-out set", total=None)
        res = run_demo(checkpoint, out_dir, speech if speech and str(speech) else None, hours=hours, samples=samples,
                       force=force, progress=lambda i, n: p.update(task, completed=i, total=n))  # fmt: skip
    t = Table(title=f"REALM on {len(res['test_clips'])} held-out test clip(s) (arkit58; lower is better)")
    t.add_column("model")
    for c in res["columns"]:
        t.add_column(c, justify="right")
    best = {c: min(v[i] for k, v in res["table"].items() if k != "GT resample") for i, c in enumerate(res["columns"])}
    for name, vals in res["table"].items():
        cells = [f"[bold]{v:.4f}[/bold]" if v == best[c] and name != "GT resample" else f"{v:.4f}"
                 for c, v in zip(res["columns"], vals, strict=True)]  # fmt: skip
        t.add_row(name + (" (floor)" if name == "GT resample" else ""), *cells)
    out.print(t)
    out.print(f"REALM: mean of {res['samples']} samples per clip; GT resample = a second listener realisation.")
    if "real_speech" in res:
        real = res["real_speech"]
        r = Table(title="per minute: the synthetic listeners and REALM on real speech")
        r.add_column("motion")
        for c in real["columns"]:
            r.add_column(c, justify="right")
        for name, vals in real["rows"].items():
            r.add_row(name, *[behaviour_cell(c, v) for c, v in zip(real["columns"], vals, strict=True)])
        out.print(r)
        for line in res.get("findings", []) + real.get("findings", []):
            out.print(f"  {escape(line)}")
    out.print(f"outputs in {out_dir}/: held-out set {res['synth_dir']}, motion {', '.join(res['outputs']['test'])}"
              + (f", speech {res['outputs']['speech']}" if "speech" in res["outputs"] else "")
              + f", metrics {out_dir}/demo_metrics.json  ({time.time() - t0:.0f} s)")  # fmt: skip
    if "video" in res["outputs"]:
        out.print(f"video: {res['outputs']['video']}")
    if "report" in res["outputs"]:
        out.print(f"report: {res['outputs']['report']} (open it in a browser)")


# ---------------------------------------------------------------- realm bench


@app.command("bench")
@_friendly
def bench_cmd(
    out_dir: Path = typer.Option(..., "--out", help="Run directory: data/, models/<name>/, eval/<split>/, bench.json."),
    doc: Path = typer.Option(Path("docs/benchmark.md"), "--doc", help="Markdown document to write (atomically; an existing one only with --force)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --doc."),
    data: Path = typer.Option(None, "--data", help="Dataset directory (default OUT/data); reused if it holds the same generator config."),
    hours: float = typer.Option(0.5, help="Hours of synthetic conversations."),
    seed: int = typer.Option(0, help="Data seed."),
    backend: str = typer.Option("piper", help="Speech: 'piper' (real words) or 'formant' (fast babble)."),
    listener_samples: int = typer.Option(2, "--listener-samples", help="Listener realisations per speaker track (>= 2: the floor)."),
    workers: int = typer.Option(0, help="Data synthesis processes (0: min(8, CPUs))."),
    models: str = typer.Option("", "--models", help="Comma-separated models (default: realm, its ablations, every baseline)."),
    minutes_per_model: float = typer.Option(4.0, "--minutes-per-model", help="Wall-clock training budget per model (REALM: 75 % stage 1, 25 % stage 2)."),
    minutes: list[str] = typer.Option(None, "--minutes", help="A model's own budget, NAME=MINUTES (repeatable), e.g. --minutes realm_sb=45 --minutes lstm=45."),
    max_steps: int = typer.Option(0, "--max-steps", help="> 0: this many steps per stage instead of the time budget."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features for every model: logmel | logmel_norm | pcen | whisper | vico45 | prosody"),
    batch_size: int = typer.Option(64, "--batch-size", help="Cap on each model's recipe batch size (CPU; 0: the recipes')."),
    audio_context: int = typer.Option(-1, "--audio-context", help="REALM audio context frames (-1: 16 for frame-local features, 0 for whisper)."),
    samples: int = typer.Option(3, help="Samples per clip for stochastic models."),
    max_clips: int = typer.Option(None, "--max-clips", help="Score only the first N clips of each split."),
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    threads: int = typer.Option(0, help="torch CPU threads (0: torch's default; 1 is fastest on a busy machine)."),
):
    """The whole benchmark: data, REALM + ablations + baselines on a fixed budget, test and ood, one document."""
    import time

    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels on import: quiet them after)

    from realm.bench import BenchConfig, default_models, run_bench

    _quiet_lightning()
    names = [m.strip() for m in models.split(",") if m.strip()] if models else default_models()
    own = _parse_sets(minutes or [], "--minutes", "NAME=MINUTES")
    for name, value in own.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"--minutes {name}={value!r}: expected NAME=MINUTES, e.g. realm_sb=45")
    cfg = BenchConfig(
        out=str(out_dir), doc=str(doc), force=force, data=str(data) if data else "", hours=hours, seed=seed, backend=backend,
        listener_samples=listener_samples, workers=workers, models=names, minutes_per_model=minutes_per_model,
        minutes=own, max_steps=max_steps, extractor=extractor, batch_size=batch_size, audio_context=audio_context, samples=samples,
        max_clips=max_clips, accelerator=accelerator, devices=devices, threads=threads,
        command="realm " + " ".join(sys.argv[1:]),
    )  # fmt: skip
    t0 = time.time()
    tasks: dict = {}
    with _progress() as p:

        def progress(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = p.add_task(step, total=total)
            p.update(tasks[step], completed=done, total=total)

        res = run_bench(cfg, progress=progress)
    t = Table(title=f"trained into {out_dir}/models")
    for col in ("model", "steps", "seconds"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for name, r in res["models"].items():
        if r["kind"] == "realm":
            steps = " + ".join(str(r[s]["steps"]) for s in ("stage1", "stage2") if s in r)
        else:
            steps = str(r["train"]["steps"]) if "train" in r else "fitted"
        t.add_row(name, steps, f"{r.get('seconds', 0):.0f}" + (" (reused)" if r.get("reused") else ""))
    out.print(t)
    for split, sentences in res["reading"].items():
        out.print(f"[bold]{split}[/bold]")
        for s in sentences:
            out.print(f"  - {s}", highlight=False)
    out.print(f"wrote {doc} (tables of {', '.join(res['eval'])}) in {time.time() - t0:.0f} s")


# ---------------------------------------------------------------- realm eval


@app.command("eval")
@_friendly
def eval_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
    model: list[str] = typer.Option(..., "--model", "-m", help="NAME=PATH of a trained run (repeat for several models)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for results.json/.csv/.md and plots/."),
    split: str = typer.Option("test", help="Split to score: train | val | test | ood."),
    samples: int = typer.Option(3, help="Samples per clip for stochastic models (reported as mean ± std)."),
    seed: int = typer.Option(0, help="Seed of the models' sampling and of the metrics' random draws."),
    max_clips: int = typer.Option(None, "--max-clips", help="Score only the first N clips of the split."),
    first_frame: str = typer.Option("gt", "--first-frame", help="gt: start from the ground truth's frame 0 | mean."),
    coarse_rows: bool = typer.Option(True, "--coarse-rows/--no-coarse-rows", help="Also score REALM before its refinement, as '<name> (coarse)'."),
    force: bool = typer.Option(False, "--force", help="Overwrite a non-empty output directory."),
):
    """Score models on a dataset split with every metric of DESIGN section 9 (tables and plots)."""
    from realm.eval import FLOOR, evaluate

    models: dict[str, str] = {}
    for item in model:
        name, sep, path = item.partition("=")
        if not sep:
            name, path = Path(item).name, item
        if not name or not path:
            raise ValueError(f"--model {item!r}: expected NAME=PATH")
        if name in models:
            raise ValueError(f"--model: the name {name!r} is given twice")
        models[name] = path
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not force:
        raise FileExistsError(f"{out_dir}: exists and is not empty (use --force to overwrite)")
    command = "realm " + " ".join(sys.argv[1:])
    with _progress() as p:
        task = p.add_task("generating", total=None)
        res = evaluate(models, data, split=split, samples=samples, seed=seed, max_clips=max_clips, out=out_dir,
                       first_frame=first_frame, force=force, command=command, coarse_rows=coarse_rows,
                       progress=lambda i, n, what: p.update(task, completed=i, total=n, description=what))  # fmt: skip
    keys = ("l1_exp", "fd_exp", "fd_delta_exp", "var_ratio_exp", "l1_pose", "delay_err", "event_f1", "blink_rate")
    t = Table(title=f"{data} (split {split}, {res['n_clips']} clips; mean ± std over {samples} samples)")
    t.add_column("model")
    for k in keys:
        m = res["metrics"][k]
        t.add_column(m["label"] + {"lower": " ↓", "higher": " ↑"}.get(m["direction"], ""), justify="right")
    for name, row in res["rows"].items():  # the ground truth row holds the targets of the →GT columns
        std = row["kind"] == "model" and row["samples"] > 1
        cells = [(("—" if row["kind"] == "reference" else "n/a") if v["mean"] is None else f"{v['mean']:.4g}" + (f" ± {v['std']:.2g}" if std else ""))
                 for v in (row["metrics"][k] for k in keys)]  # fmt: skip
        t.add_row(name + (" (floor)" if name == FLOOR else ""), *cells)
    out.print(t)
    out.print(f"all metrics: {out_dir}/results.md, {out_dir}/results.json, {out_dir}/results.csv; plots in {out_dir}/plots/")


# ---------------------------------------------------------------- other areas
# Each area keeps its commands in its own module, which registers them on `app` (or on a
# sub-app) when imported; they import `app`, `train_app`, `_friendly`, `_progress` from here.

from realm import cli_embody, cli_lm, cli_render, cli_serve  # noqa: E402,F401


def run() -> None:  # pragma: no cover - entry point helper
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    run()
