"""CLI commands of one area: `realm asr`, `realm train emotion|idvq|mmlm`: the multimodal-LM listener's commands."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from realm.cli.common import (
    ACCELERATOR,
    DEVICES,
    NUM_NODES,
    NUM_WORKERS,
    PRECISION,
    RESUME,
    SEED,
    STRATEGY,
    app,
    console,
    friendly,
    out,
    parse_sets,
    progress_bar,
    quiet_lightning,
    train_app,
)

# ---------------------------------------------------------------- words and speaker emotion (realm asr, realm train emotion)


@app.command("asr")
@friendly
def asr_cmd(
    audio: Path = typer.Argument(..., help="Audio file: wav, flac, mp3, ogg; any rate, mono or stereo."),
    out_path: Path = typer.Option(
        None, "--out", "-o", help="Output words JSON (default: <audio stem>.words.json)."
    ),
    beam_size: int = typer.Option(5, "--beam-size", help="Whisper beam size (1: greedy)."),
    channel: int = typer.Option(None, help="Pick one channel (0-based) instead of the downmix."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the ASR cache."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Transcribe speech offline (Whisper tiny.en) into words with timestamps: [{word, start, end, raw, probability}]."""
    from realm.io import write_json
    from realm.text import ASRConfig, transcribe

    out_path = out_path or Path(f"{audio.stem}.words.json")
    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    with console.status("transcribing (Whisper tiny.en)"):
        words = transcribe(audio, ASRConfig(beam_size=beam_size), cache=not no_cache, channel=channel)
    write_json(out_path, [w.to_dict() for w in words], force=force)
    span = f", {words[0].start:.2f}-{words[-1].end:.2f} s" if words else ""
    out.print(f"{out_path}: {len(words)} words{span}")


@train_app.command("emotion")
@friendly
def train_emotion_cmd(
    data: Path = typer.Option(
        ..., "--data", help="Dataset directory (any supported layout) with emotion labels."
    ),
    out_dir: Path = typer.Option(
        ..., "--out", help="Run directory (config.json, model.safetensors, feature_stats.npz)."
    ),
    extractor: str = typer.Option(
        "logmel", "--extractor", "-e", help="Speaker features: logmel | prosody | vico45 | whisper"
    ),
    epochs: int = typer.Option(30, help="Passes over the training clips."),
    batch_size: int = typer.Option(16, "--batch-size", help="Windows per batch."),
    window: int = typer.Option(300, help="Frames per training window (10 s at 30 fps)."),
    lr: float = typer.Option(3e-3, help="AdamW learning rate."),
    all_phrases: bool = typer.Option(
        False, "--all-phrases", help="Also train on synthetic phrases spoken without emotional prosody."
    ),
    seed: int = typer.Option(0, help="Random seed."),
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    strategy: str = STRATEGY,
    num_nodes: int = NUM_NODES,
    precision: str = PRECISION,
    num_workers: int = NUM_WORKERS,
    resume: bool = RESUME,
    force: bool = typer.Option(False, "--force", help="Start an existing run directory over."),
):
    """Train the speaker-emotion classifier (causal conv over frame features; the Lightning harness, resumable)."""
    from realm.train.emotion import EmotionTrainConfig, train_emotion

    quiet_lightning()
    cfg = EmotionTrainConfig(
        data=str(data), extractor=extractor, epochs=epochs, batch_size=batch_size, window=window, lr=lr,
        cue_only=not all_phrases, seed=seed, accelerator=accelerator, devices=devices, strategy=strategy,
        num_nodes=num_nodes, precision=precision, num_workers=num_workers,
    )  # fmt: skip
    with progress_bar() as p:
        task = p.add_task("training emotion classifier", total=epochs)
        report = train_emotion(
            cfg, out_dir, force=force, resume=resume, command="realm " + " ".join(sys.argv[1:]),
            progress=lambda epoch, n, msg: p.update(task, completed=epoch, total=n, description=f"emotion {msg}"),
        )  # fmt: skip
    for split, r in report["results"].items():
        if split == "best_epoch":
            continue
        cue, base = r.get("cue", {}), r.get("majority_cue", {})
        out.print(
            f"{split:5s}: accuracy {cue.get('accuracy', float('nan')):.3f}, macro F1 {cue.get('macro_f1', float('nan')):.3f}"
            f"  (majority class: {base.get('accuracy', float('nan')):.3f} / {base.get('macro_f1', float('nan')):.3f})"
        )
    out.print(f"model written to {out_dir} (config.json, model.safetensors, feature_stats.npz)")


# ---------------------------------------------------------------- the tokenizer and the LM (realm train idvq|mmlm, realm restyle)


def _train_opts(data, extractor, epochs, batch_size, max_steps, lr, clip_len, clip_stride, seed, accelerator, devices,
                strategy, num_nodes, precision, num_workers, name):  # fmt: skip
    from realm.train.baselines import baseline_train_config

    return baseline_train_config(
        name, data=str(data), extractor=extractor, epochs=epochs, batch_size=batch_size, max_steps=max_steps, lr=lr,
        clip_len=clip_len, clip_stride=clip_stride, seed=seed, accelerator=accelerator, devices=devices,
        strategy=strategy, num_nodes=num_nodes, precision=precision, num_workers=num_workers,
    )  # fmt: skip


def _report_training(name: str, results: dict, out_dir: Path) -> None:
    r = results.get("train", {})
    out.print(f"{name}: {r.get('steps')} steps in {r.get('seconds')} s, best val/loss = {r.get('val/loss')}")
    out.print(f"model written to {out_dir} (config.json, model.safetensors, stats)")


_DATA = typer.Option(..., "--data", help="Dataset directory (any supported layout).")
_OUT = typer.Option(..., "--out", help="Run directory (exported model, logs, Lightning checkpoints).")


@train_app.command("idvq")
@friendly
def train_idvq_cmd(
    data: Path = _DATA,
    out_dir: Path = _OUT,
    epochs: int = typer.Option(None, help="Epochs (default 60)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Windows per batch (default 32)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Batches to train (-1: run the epochs)."),
    lr: float = typer.Option(None, help="Learning rate (default 2e-4)."),
    clip_len: int = typer.Option(
        None, "--clip-len", help="Frames per training window (a multiple of 8; default 128)."
    ),
    clip_stride: int = typer.Option(
        None, "--clip-stride", help="Stride between training windows (default 16)."
    ),
    plain: bool = typer.Option(False, "--plain", help="Ablation: plain VQ-VAE (no instance norm, no AdaIN)."),
    sets: list[str] = typer.Option(
        [], "--set", help="IDVQ config override FIELD=VALUE (JSON value), repeatable."
    ),
    seed: int = SEED,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    strategy: str = STRATEGY,
    num_nodes: int = NUM_NODES,
    precision: str = PRECISION,
    num_workers: int = NUM_WORKERS,
    resume: bool = RESUME,
):
    """Train the identity-disentangled motion VQ-VAE (IN encoder, AdaIN decoder); checkpoint selected on val."""
    from realm.models.mmlm import IDVQRunConfig
    from realm.train.baselines import train_baseline

    quiet_lightning()
    # the tokenizer reads no audio; the harness still prepares features: logmel is the cheapest (and usually cached)
    cfg = _train_opts(data, "logmel", epochs, batch_size, max_steps, lr, clip_len, clip_stride, seed, accelerator,
                      devices, strategy, num_nodes, precision, num_workers, "idvq")  # fmt: skip
    vq = {**IDVQRunConfig().vq, **parse_sets(sets)}
    if plain:
        vq["use_in_adain"] = False
    results = train_baseline(
        "idvq", cfg, out_dir, model_cfg={"vq": vq}, resume=resume, command="realm " + " ".join(sys.argv[1:])
    )
    _report_training("idvq", results, out_dir)


@train_app.command("mmlm")
@friendly
def train_mmlm_cmd(
    data: Path = _DATA,
    out_dir: Path = _OUT,
    backbone: str = typer.Option("tiny", help="tiny (from scratch) | smollm2 (SmolLM2-135M, offline, LoRA)."),
    vq_run: Path = typer.Option(
        None, "--vq", help="A `realm train idvq` run to use as the (frozen) tokenizer."
    ),
    extractor: str = typer.Option(
        "logmel", "--extractor", "-e", help="Acoustic features: logmel | prosody | vico45 | whisper"
    ),
    lora_r: int = typer.Option(
        8, "--lora-r", help="LoRA rank of the smollm2 backbone (0: full fine-tuning)."
    ),
    lm_path: Path = typer.Option(
        None, "--lm-path", help="A local causal-LM directory instead of SmolLM2 (e.g. GPT-2)."
    ),
    epochs: int = typer.Option(None, help="Epochs (default 60)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Windows per batch (default 32)."),
    max_steps: int = typer.Option(-1, "--max-steps", help="Batches to train (-1: run the epochs)."),
    lr: float = typer.Option(None, help="Learning rate (default 3e-4)."),
    clip_len: int = typer.Option(
        None, "--clip-len", help="Frames per training window (a multiple of 8; default 128)."
    ),
    clip_stride: int = typer.Option(
        None, "--clip-stride", help="Stride between training windows (default 16)."
    ),
    sets: list[str] = typer.Option(
        [], "--set", help="MMLM config override FIELD=VALUE (JSON value), repeatable."
    ),
    seed: int = SEED,
    accelerator: str = ACCELERATOR,
    devices: str = DEVICES,
    strategy: str = STRATEGY,
    num_nodes: int = NUM_NODES,
    precision: str = PRECISION,
    num_workers: int = NUM_WORKERS,
    resume: bool = RESUME,
):
    """Train the multimodal-LM listener (words + acoustics + speaker emotion -> IDVQ motion tokens)."""
    from realm.train.baselines import train_baseline

    if backbone not in ("tiny", "smollm2"):
        raise ValueError(f"--backbone {backbone}: expected tiny or smollm2")
    quiet_lightning()
    cfg = _train_opts(data, extractor, epochs, batch_size, max_steps, lr, clip_len, clip_stride, seed, accelerator,
                      devices, strategy, num_nodes, precision, num_workers, "mmlm")  # fmt: skip
    model_cfg = {"backbone": backbone, "lora_r": lora_r, **parse_sets(sets)}
    if vq_run is not None:
        model_cfg["vq_run"] = str(vq_run.resolve())
    if lm_path is not None:
        model_cfg["lm_path"] = str(lm_path)
    results = train_baseline(
        "mmlm", cfg, out_dir, model_cfg=model_cfg, resume=resume, command="realm " + " ".join(sys.argv[1:])
    )
    _report_training(f"mmlm ({backbone})", results, out_dir)


@app.command("restyle")
@friendly
def restyle_cmd(
    checkpoint: Path = typer.Option(
        ..., "--checkpoint", "-c", help="An idvq or mmlm run (its IDVQ tokenizer)."
    ),
    motion: Path = typer.Option(
        ..., "--motion", "-m", help="Listener motion whose content to keep (.npz/.npy)."
    ),
    identity_ref: Path = typer.Option(
        ..., "--identity-ref", help="Motion (>= 2 s) of the listener whose style to apply."
    ),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output .npz."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output file."),
):
    """Re-decode listener motion in another listener's style: the same IDVQ tokens, another AdaIN reference."""
    import realm
    from realm.models.mmlm import restyle
    from realm.motion import read_motion

    if out_path.exists() and not force:
        raise FileExistsError(f"{out_path}: exists (use --force to overwrite)")
    run = realm.load(checkpoint)
    x = restyle(run, read_motion(motion, run.spec.name), read_motion(identity_ref, run.spec.name))
    from realm.io import save_npz

    save_npz(out_path, force=force, listener=x[None], spec=np.array(run.spec.name), fps=np.array(run.fps),
             source=np.array(str(motion)), identity_ref=np.array(str(identity_ref)))  # fmt: skip
    out.print(f"{out_path}: {x.shape[0]} frames in the style of {identity_ref}")


import numpy as np  # noqa: E402
