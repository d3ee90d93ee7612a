"""Run directories: the one on-disk format of every trained model, saved and loaded with one set of checks.

    import realm
    listener = realm.load("runs/demo")      # = realm.checkpoint.load: any listener type of realm.registry
    clf = realm.checkpoint.load_any("runs/emotion")   # any run type (the emotion classifier too)

A run directory holds

=====================  ==================================================================
``config.json``        ``model_type`` (a :data:`realm.registry.MODELS` name), ``model`` (the
                       model's config dataclass), ``spec``, ``fps``, ``feature_extractor``
                       and what the trainer adds (``train``, ``stage``, ``results``, ...)
``model.safetensors``  the weights (no code runs on load; NaN/inf weights are refused)
``stats.npz``          the motion normalisation (mean, std, and the training data's
                       per-channel percentiles where the run has them)
``feature_stats.npz``  the audio feature normalisation
=====================  ==================================================================

written by :func:`save` (each file atomically) and read by :func:`load` (listeners) or :func:`load_any`. Every problem is a
one-line :class:`~realm.errors.RealmInputError` naming the file. Run types with a layout of
their own (the emotion classifier) name their loader in the registry and use the same checks
(:func:`check_files`, :func:`read_config`).
"""

from __future__ import annotations

import json
from pathlib import Path

from realm.errors import RealmInputError
from realm.motion import NormStats
from realm.registry import MODELS

CHECKPOINT_FILES = ("config.json", "model.safetensors", "stats.npz", "feature_stats.npz")


def check_files(run: str | Path, files: tuple[str, ...] = CHECKPOINT_FILES, what: str = "a realm run directory") -> Path:
    """``run`` as a Path, after checking it is a directory holding ``files``."""
    run = Path(run)
    if not run.is_dir():
        raise RealmInputError(run, "checkpoint directory not found")
    for name in files:
        if not (run / name).exists():
            raise RealmInputError(run / name, f"missing checkpoint file (is this {what}?)")
    return run


def read_config(run: str | Path, model_type: str | None = None, hint: str = "") -> dict:
    """A run's ``config.json`` as a dict; with ``model_type``, refused unless the run is of that type
    (``hint`` is added to that message)."""
    path = Path(run) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise RealmInputError(path, "missing checkpoint file (is this a realm run directory?)") from None
    except (OSError, ValueError) as e:
        raise RealmInputError(path, f"invalid checkpoint config ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise RealmInputError(path, "invalid checkpoint config (not a JSON object)")
    if model_type is not None and config.get("model_type", "realm") != model_type:
        raise RealmInputError(path, f"model_type is {config.get('model_type', 'realm')!r}, not {model_type!r}{hint}")
    return config


def load_state(run: str | Path, model, prefix: str = ""):
    """Load ``run``'s weights into ``model`` (entries under ``prefix`` only, prefix removed); returns it."""
    from realm.io import load_weights

    path = Path(run) / "model.safetensors"
    state = load_weights(path)
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        lines = str(e).splitlines()
        first = lines[1].strip() if len(lines) > 1 else str(e)
        raise RealmInputError(path, f"weights do not match config.json ({first})") from None
    return model


def load_stats(run: str | Path, dim: int, audio_dim: int, spec_name: str = "") -> tuple[NormStats, NormStats]:
    """Motion and feature statistics of ``run``, checked against the model's widths."""
    run = Path(run)
    stats = NormStats.load(run / "stats.npz")
    fstats = NormStats.load(run / "feature_stats.npz")
    if stats.mean.shape != (dim,):
        raise RealmInputError(run / "stats.npz", f"stats have {stats.mean.shape[0]} dims, spec {spec_name} {dim}")
    if fstats.mean.shape != (audio_dim,):
        raise RealmInputError(run / "feature_stats.npz", f"{fstats.mean.shape[0]} feature dims, model expects {audio_dim}")
    return stats, fstats


def save(run: str | Path, model, stats: NormStats, feature_stats: NormStats, extractor: str, extra: dict,
         model_type: str = "realm") -> None:  # fmt: skip
    """Write ``model`` (any :data:`realm.registry.MODELS` type, with ``config.to_dict()`` and ``spec``)
    as safetensors weights + JSON config + normalisation stats, each file atomically."""
    from safetensors.torch import save_file

    from realm.io import atomic_path, write_json

    if model_type not in MODELS:
        raise ValueError(f"unknown model type {model_type!r} (known: {', '.join(MODELS)})")
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(run / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    stats.save(run / "stats.npz")
    feature_stats.save(run / "feature_stats.npz")
    config = {
        "model_type": model_type,
        "model": model.config.to_dict(),
        "spec": model.spec.name,
        "fps": model.spec.fps,
        "feature_extractor": extractor,
        **extra,
    }
    write_json(run / "config.json", config)


def _peek(run: Path) -> tuple[str, dict | None]:
    """The run's model type and its config (``("realm", None)`` when config.json is missing or
    unreadable: the checks that follow name the problem, missing files first, then the config)."""
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return "realm", None
    if not isinstance(config, dict):
        return "realm", None
    return str(config.get("model_type", "realm")), config


def load_any(run: str | Path):
    """Load a run directory of any registry type: a listener (:func:`load`) or, for a run type
    with its own loader (the emotion classifier), what that loader returns."""
    run = Path(run)
    info = MODELS.get(_peek(run)[0]) if run.is_dir() else None
    if info is not None and info.loader:
        return info.custom_loader()(run)
    return load(run)


def load(run: str | Path):
    """Load a run directory into its listener (:class:`realm.models.listener.RunModel`): REALM, a
    baseline, the mmlm or the tokenizer (``realm.load``). Other run types are refused in one line
    (the emotion classifier: :func:`realm.models.emotion.load_emotion`, or :func:`load_any`)."""
    run = Path(run)
    if not run.is_dir():
        raise RealmInputError(run, "checkpoint directory not found")
    cpath = run / "config.json"
    kind, config = _peek(run)
    if kind not in MODELS:
        raise RealmInputError(cpath, f"unsupported model type {kind!r} (known: {', '.join(MODELS)})")
    info = MODELS[kind]
    if not info.listener:
        raise RealmInputError(run, f"a {kind!r} run is not a listener: load it with {info.loader.replace(':', '.')}")
    check_files(run)
    config = config if config is not None else read_config(run)  # read once; read_config names the problem
    cls = info.load_class()
    try:
        mcfg = cls.Config.from_saved(config["model"])  # older runs: the fields they lack as they were trained
        model = cls(mcfg)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RealmInputError(cpath, f"invalid {kind} model config ({type(e).__name__}: {e})") from None
    load_state(run, model)
    stats, fstats = load_stats(run, model.spec.dim, mcfg.audio_dim, model.spec.name)
    return info.listener_class()(model.eval(), stats, fstats, config.get("feature_extractor", "logmel"), config, run)
