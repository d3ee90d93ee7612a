"""Identity control experiment of the multimodal-LM listener (issue 5, DESIGN 8 and 9.3).

    python benchmarks/exp_identity.py --data DATA --idvq RUN --plain RUN [--mmlm RUN] [--split test]

For every clip of the split (source listener S) and a target listener X != S (the next identity of
the split, cyclically), it decodes the *same content tokens* with different AdaIN references and
measures identity fidelity (``realm.metrics.identity_fidelity``: resting-offset L1 of expression
and pose, expressivity error |ln ratio|, blink-rate error; lower is better) of the decoded motion
against the real clips of the identity it should look like, plus reconstruction error:

  tokenizer level (content = the clip's own tokens):
    reference = another clip of S (true listener)   -> fidelity vs S, recon L1 vs the clip itself
    reference = a clip of X (another listener)      -> fidelity vs X (should be close) and vs S
    plain VQ-VAE (no IN/AdaIN, ``realm train idvq --plain``) -> fidelity vs S, recon L1
  generation level (with ``--mmlm``: content = tokens the mmlm generates from the clip's audio + words):
    reference = another clip of S / a clip of X / the checkpoint's default reference (no control)

Prints a Markdown table and the command; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np
import torch

FIDELITY = ("rest_exp_l1", "rest_pose_l1", "expressivity_err", "blink_rate_err")


def _norm(run, x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(run.stats.apply(np.asarray(x, np.float32)).astype(np.float32))[None]


def _decode(run, tokens: torch.Tensor, ref: np.ndarray | None, T: int) -> np.ndarray:
    vq = run.model.vq
    r = _norm(run, ref) if ref is not None else None
    with torch.inference_mode():
        y = vq.decode(tokens, r, T)[0].numpy()
    return run.spec.clamp(run.stats.invert(y).astype(np.float32))


def _tokens(run, motion: np.ndarray) -> torch.Tensor:
    with torch.inference_mode():
        return run.model.vq.encode(_norm(run, motion))


def _mmlm_tokens(mm, clip) -> torch.Tensor:
    """The tokens (1, n) the mmlm generates (greedy) for a clip's audio and words."""
    a = torch.from_numpy(np.asarray(mm.features(clip.audio_path), np.float32))[None]
    with torch.inference_mode():
        return mm.model.generate_tokens(a, clip.words)


def fidelity(gen: dict, real: dict, spec) -> dict:
    """Mean over target identities of identity_fidelity(generated clips, the identity's real clips)."""
    from realm.metrics import identity_fidelity

    rows = [identity_fidelity(gen[k], real[k], spec) for k in gen]
    return {m: float(np.mean([r[m] for r in rows if r[m] is not None])) for m in FIDELITY}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--idvq", required=True, help="`realm train idvq` run (IN/AdaIN)")
    ap.add_argument("--plain", required=True, help="`realm train idvq --plain` run")
    ap.add_argument("--mmlm", default=None, help="an mmlm run (generation level)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-clips", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--force", action="store_true", help="Replace an existing output file.")
    a = ap.parse_args(argv)
    from realm.io import refuse_output

    refuse_output(ap, a.out, a.force)
    import realm
    from realm.data import load_any

    clips = load_any(a.data, splits=a.split)
    if a.max_clips:
        clips = clips[: a.max_clips]
    by_id = defaultdict(list)
    for c in clips:
        by_id[c.listener_id].append(c)
    ids = sorted(by_id)
    if len(ids) < 2:
        raise SystemExit(f"{a.data} {a.split}: needs clips of >= 2 listeners, found {ids}")
    run, plain = realm.load(a.idvq), realm.load(a.plain)
    mm = realm.load(a.mmlm) if a.mmlm else None
    spec = run.spec
    real = {k: [c.listener for c in v] for k, v in by_id.items()}

    def other_clip(lid: str, not_this) -> np.ndarray:
        pool = [c for c in by_id[lid] if c is not not_this] or by_id[lid]
        return pool[0].listener

    gen = defaultdict(lambda: defaultdict(list))  # condition -> target identity -> clips
    recon = defaultdict(list)
    for c in clips:
        S = c.listener_id
        X = ids[(ids.index(S) + 1) % len(ids)]
        T = c.n_frames
        tok = _tokens(run, c.listener)
        true_ref, x_ref = other_clip(S, c), other_clip(X, None)
        y_true, y_x = _decode(run, tok, true_ref, T), _decode(run, tok, x_ref, T)
        y_plain = _decode(plain, _tokens(plain, c.listener), None, T)
        gen["tokenizer: true listener's reference -> vs S"][S].append(y_true)
        gen["tokenizer: another listener's reference -> vs X"][X].append(y_x)
        gen["tokenizer: another listener's reference -> vs S"][S].append(y_x)
        gen["plain VQ-VAE (no IN/AdaIN) -> vs S"][S].append(y_plain)
        recon["IN/AdaIN, true listener's reference"].append(np.abs(y_true - c.listener).mean())
        recon["IN/AdaIN, the clip itself as reference"].append(np.abs(_decode(run, tok, c.listener, T) - c.listener).mean())
        recon["plain VQ-VAE"].append(np.abs(y_plain - c.listener).mean())
        if mm is not None:
            mt = _mmlm_tokens(mm, c)
            gen["mmlm: true listener's reference -> vs S"][S].append(_decode(mm, mt, true_ref, T))
            gen["mmlm: another listener's reference -> vs X"][X].append(_decode(mm, mt, x_ref, T))
            gen["mmlm: default reference (no control) -> vs S"][S].append(_decode(mm, mt, mm.stats.invert(mm.model.default_ref.numpy()), T))
    results = {
        "fidelity": {k: fidelity(v, real, spec) for k, v in gen.items()},
        "recon_l1": {k: float(np.mean(v)) for k, v in recon.items()},
        "clips": len(clips), "identities": ids, "split": a.split,
        "command": "python benchmarks/exp_identity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }  # fmt: skip
    print(f"identity control on {a.data} ({a.split}: {len(clips)} clips, {len(ids)} listeners)\n")
    print("| decoded | vs | rest exp L1 | rest pose L1 | expressivity err | blink-rate err |")
    print("|---|---|---|---|---|---|")
    for k, v in results["fidelity"].items():
        name, vs = k.rsplit(" -> ", 1)
        print(f"| {name} | {vs} | " + " | ".join(f"{v[m]:.4f}" for m in FIDELITY) + " |")
    print("\n| tokenizer | reconstruction L1 (arkit58 units) |\n|---|---|")
    for k, v in results["recon_l1"].items():
        print(f"| {k} | {v:.4f} |")
    print(f"\ncommand: {results['command']}")
    if a.out:
        from realm.io import write_json

        write_json(a.out, results, force=a.force)
    return results


if __name__ == "__main__":
    main()
