"""`realm train realm` and `realm train <baseline>`: the training commands of REALM and the baselines
(the multimodal-LM listener's are in :mod:`realm.cli.lm`)."""

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
    friendly,
    out,
    parse_sets,
    quiet_lightning,
    train_app,
)

# ---------------------------------------------------------------- realm train ...


@train_app.command("realm")
@friendly
def train_realm_cmd(
    data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
    out_dir: Path = typer.Option(..., "--out", help="Run directory (checkpoints, logs, exported model)."),
    extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features: logmel | logmel_norm | logmel_prosody | pcen | vico45 | prosody | whisper"),
    store: Path = typer.Option(None, "--store", help="Read the training windows from this store of --data (`realm data store`): data larger than memory, RSS flat."),
    preset: str = typer.Option("cpu", "--preset", help="Recipe: cpu (the demo checkpoint's stages 1 and 2: batch 64, 8 + 2 epochs, audio context 16 for local features, stage 1 from its last validation, rotation's loss weights / 10, the first 75 % of stage 1 teacher-forced) | paper (the authors': batch 512, 200 + 50 epochs, no audio context, stage 1 by val loss; GPU-sized). Options below override it."),
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

    quiet_lightning()
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
    overrides = parse_sets(sets)
    train_fields, model_fields = {f.name for f in fields(TrainConfig)}, {f.name for f in fields(REALMConfig)}
    unknown = sorted(set(overrides) - train_fields - model_fields)
    if unknown:
        raise ValueError(f"--set {unknown[0]}: not a REALMConfig or TrainConfig field")
    cfg = TrainConfig(**{
        **recipe,
        **dict(data=str(data), extractor=extractor, max_steps=max_steps, lr=lr, clip_stride=clip_stride, seed=seed, accelerator=accelerator, devices=devices,
               strategy=strategy, num_nodes=num_nodes, precision=precision, num_workers=num_workers,
               stages=stage_list, init=str(init) if init else "", store=str(store) if store else ""),
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


def _add_baseline_command(name: str, summary: str, trained: bool) -> None:
    how = "trained with Lightning, checkpoint selected on val" if trained else "fitted in one pass over train"

    @train_app.command(name, help=f"Baseline: {summary} ({how}).")
    @friendly
    def train_baseline_cmd(
        data: Path = typer.Option(..., "--data", help="Dataset directory (any supported layout)."),
        out_dir: Path = typer.Option(..., "--out", help="Run directory (exported model; logs and checkpoints when trained)."),
        extractor: str = typer.Option("logmel", "--extractor", "-e", help="Speaker features: logmel | logmel_norm | logmel_prosody | pcen | vico45 | prosody | whisper"),
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
        from realm.train.baselines import baseline_train_config, train_baseline

        quiet_lightning()
        cfg = baseline_train_config(
            name, data=str(data), extractor=extractor, epochs=epochs, batch_size=batch_size, max_steps=max_steps,
            lr=lr, clip_len=clip_len, clip_stride=clip_stride, seed=seed, accelerator=accelerator, devices=devices,
            strategy=strategy, num_nodes=num_nodes, precision=precision, num_workers=num_workers,
        )  # fmt: skip
        command = "realm " + " ".join(sys.argv[1:])
        results = train_baseline(name, cfg, out_dir, model_cfg=parse_sets(sets), resume=resume, command=command)
        r = results.get("train") or results.get("fit", {})
        if "steps" in r:
            out.print(f"{name}: {r['steps']} steps in {r['seconds']} s, best val/loss = {r.get('val/loss')}")
        else:
            out.print(f"{name}: fitted on {r.get('train_clips')} train clips in {r.get('seconds')} s")
        out.print(f"model written to {out_dir} (config.json, model.safetensors, stats)")


def _add_baseline_commands() -> None:
    from realm.registry import BASELINES  # a registry without torch: the CLI starts fast

    for info in BASELINES.values():
        _add_baseline_command(info.name, info.summary, info.trained)


_add_baseline_commands()
