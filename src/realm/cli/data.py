"""`realm data synth|inspect|features|store` and `realm features`: datasets and speaker features."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from realm.cli.common import (
    app,
    console,
    data_app,
    friendly,
    out,
    progress_bar,
)

# ---------------------------------------------------------------- realm data ...


@data_app.command("synth")
@friendly
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
    shared_templates: bool = typer.Option(False, "--shared-templates", help="Positive and negative phrases from one template set, so that only the emotional word tells them apart (a test of word meaning; default: the benchmark's partly different templates)."),
    emotional_fraction: float = typer.Option(0.5, "--emotional-fraction", help="Fraction of phrases with a positive (3/5) or negative (2/5) word: the speaker's content the listener smiles or frowns at (0.5: the benchmark's)."),
    long_pause_fraction: float = typer.Option(0.0, "--long-pause-fraction", help="Fraction of the gaps between phrases that are long silences (the listener in silence: resting, blinking; 0: the benchmark's 0.2-1.0 s gaps only)."),
    long_pause_seconds: tuple[float, float] = typer.Option((3.0, 10.0), "--long-pause-seconds", help="A long silence's length range LO HI in seconds."),
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
        no_cue_fraction=no_cue_fraction, emotional_fraction=emotional_fraction, shared_templates=shared_templates, long_pause_fraction=long_pause_fraction, long_pause_seconds=long_pause_seconds, n_identities=identities, n_ood_identities=ood_identities, workers=workers,
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
    with progress_bar() as p:
        task = p.add_task("synthesising clips", total=cfg.n_clips())
        res = generate(cfg, out_dir, force=force, progress=lambda i, n: p.update(task, completed=i, total=n), channel=chan)
    out.print(f"wrote {res.n_clips} clips ({res.hours:.3f} h of speech) to {res.out} in {time.time() - t0:.1f} s")


@data_app.command("mix")
@friendly
def data_mix(
    sources: list[Path] = typer.Argument(..., help="Dataset directories of our layout (clips.csv), e.g. the same conversations clean and through --channel robust."),
    out_dir: Path = typer.Option(..., "--out", help="Dataset directory to create."),
    suffix: list[str] = typer.Option(None, "--suffix", help="Clip-id suffix of each source, in order (repeat the option; default a, b, c, ...)."),
    splits: str = typer.Option("train,val", help="Splits to take from every source, comma-separated (a training mix: train,val; evaluate on each source's own test/ood)."),
    copy: bool = typer.Option(False, "--copy", help="Copy the files instead of linking them (a mix that outlives its sources)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing directory."),
):
    """One training set from several datasets: their train/val rows in one clips.csv, clip ids suffixed, files linked."""
    from realm.data.mix import default_suffixes, mix_datasets

    names = list(suffix) if suffix else default_suffixes(len(sources))
    if len(names) != len(sources):
        raise ValueError(f"{len(names)} --suffix for {len(sources)} sources: give one per source")
    parts = tuple(s.strip() for s in splits.split(",") if s.strip())
    pairs = list(zip(names, sources, strict=True))
    n = mix_datasets(out_dir, pairs, splits=parts, copy=copy, force=force)
    what = ", ".join(f"{s}={d}" for s, d in pairs)
    out.print(f"wrote {n} clips of {len(pairs)} datasets ({what}; files {'copied' if copy else 'linked'}) to {out_dir}")


@data_app.command("inspect")
@friendly
def data_inspect(root: Path = typer.Argument(..., help="Dataset directory (any supported layout).")):
    """Summarise a dataset: clips per split, hours, identities, dims, and what is missing."""
    from rich.markup import escape

    from realm.data.inspect import summarize

    s = summarize(root)
    t = Table(title=escape(f"{root}  [{s.format}]"))  # escaped: rich would take "[format]" for a style tag
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
    for c in s.conversions:
        out.print(f"converted on load: {c}", highlight=False)
    if s.missing:
        out.print("[yellow]missing:[/yellow]")
        for m in s.missing:
            out.print(f"  - {m}", highlight=False)
    else:
        out.print("[green]nothing missing[/green]")
    if s.can_run:
        out.print("can run:")
        for m in s.can_run:
            out.print(f"  - {m}", highlight=False)


@data_app.command("features")
@friendly
def data_features(
    root: Path = typer.Argument(..., help="Dataset directory."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | logmel_norm | logmel_prosody | pcen | vico45 | prosody | whisper"),
):
    """Extract (and cache) speaker features for every clip of a dataset."""
    from realm.data import load_any
    from realm.data.windows import clip_features

    clips = load_any(root)
    with progress_bar() as p:
        task = p.add_task(f"{extractor} features", total=len(clips))
        feats = clip_features(clips, extractor, progress=lambda i, n: p.update(task, completed=i))
    frames = sum(len(f) for f in feats)
    out.print(f"{len(clips)} clips, {frames} frames of {extractor} ({feats[0].shape[1]} dims), cached")


@data_app.command("store")
@friendly
def data_store(
    root: Path = typer.Argument(..., help="Dataset directory (any supported layout)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Store directory to write (then `realm train realm --store DIR`)."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | logmel_norm | logmel_prosody | pcen | vico45 | prosody | whisper"),
    splits: str = typer.Option("train,val", "--splits", help="Comma-separated splits to store (train is needed: its stats)."),
    shard_mb: float = typer.Option(1024.0, "--shard-mb", help="Data per shard file, MB."),
    force: bool = typer.Option(False, "--force", help="Replace an existing store."),
):
    """Write a dataset's features and motion to a sharded store, clip by clip, for training on data larger than memory."""
    from realm.data.store import build_store, read_store_meta
    from realm.io import refuse_existing

    if not force:
        refuse_existing(out_dir)
    with progress_bar() as p:
        task = p.add_task(f"storing {extractor} features and motion", total=None)
        build_store(root, out_dir, extractor, tuple(x for x in splits.split(",") if x), shard_mb, force,
                    progress=lambda done: p.update(task, completed=done))  # fmt: skip
    meta = read_store_meta(out_dir)
    size = sum(f.stat().st_size for f in out_dir.rglob("*") if f.is_file()) / 2**20
    parts = ", ".join(f"{k} {v['clips']} clips ({v['frames'] / meta['fps'] / 3600:.2f} h, {v['shards']} shards)"
                      for k, v in meta["splits"].items())  # fmt: skip
    out.print(f"{out_dir}: {parts}; {size:.0f} MB")


# ---------------------------------------------------------------- realm features


@app.command("features")
@friendly
def features(
    audio: Path = typer.Argument(..., help="Audio file: wav, flac, mp3, ogg; any rate, mono or stereo."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="logmel | logmel_norm | logmel_prosody | pcen | vico45 | prosody | whisper"),
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
