"""Language features: narratives (word by word, past context only) and sentences.

Narratives
    Encoder LMs (BERT, MiniLM): one forward per word, over the word and up to
    ``context_words - 1`` preceding words of the same run; the word's feature is the mean of
    its sub-word tokens.

    Decoder LLMs (GPT-2, Llama, Qwen, Mistral, Gemma): the run is read in long overlapping
    windows of ``context_words`` words that advance by ``window_stride_words`` (default half the
    window). Each word is read from the window in which it falls in the last stride, at its LAST
    sub-word token; causal attention means that state sees exactly the window's words up to this
    one and never a later word. Every word thus has between ``context_words - stride + 1`` and
    ``context_words`` words of context (its count is stored per word) and a 10,000-word story
    costs ``10,000 / stride`` forwards, not 10,000. The run is tokenised once, so a word's
    tokens do not depend on the window.

Sentences
    One vector per sentence: ``last`` (last non-special token; default for decoders), ``mean``
    over non-special tokens (default for encoders) or ``cls`` (first token, encoders).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from alignment.features.hooks import LayerTap
from alignment.io import InputError


def _tokenizer(loaded):
    tok = loaded.tokenizer
    if not getattr(tok, "is_fast", False):
        raise InputError(f"{loaded.source}: a fast tokenizer (tokenizer.json) is required")
    return tok


# ----------------------------------------------------------------------------- encoders


def encoder_word_batches(loaded, words, runs, *, context_words, indices, batch_size, start=0):
    """Yield ``(row_start, row_stop, {index: (n, units)})``: per-word windows (encoder LMs)."""
    tokenizer = _tokenizer(loaded)
    max_len = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    state: dict = {}
    with LayerTap(
        loaded, indices, lambda h: torch.einsum("bt,btu->bu", state["w"], h.float())
    ) as tap:
        for b in range(start, len(words), batch_size):
            batch = []
            for i in range(b, min(b + batch_size, len(words))):
                s = i
                while s > 0 and i - s + 1 < context_words and runs[s - 1] == runs[i]:
                    s -= 1
                batch.append(words[s : i + 1])
            enc = tokenizer(
                batch,
                is_split_into_words=True,
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_len,
            )
            masks = []
            for k, window in enumerate(batch):
                mask = torch.tensor(
                    [w == len(window) - 1 for w in enc.word_ids(k)], dtype=torch.float32
                )
                if mask.sum() == 0:
                    raise InputError(
                        f"{loaded.source}: word {b + k} is past the model's {max_len}-token "
                        "limit; lower context_words"
                    )
                masks.append(mask / mask.sum())
            state["w"] = torch.stack(masks).to(loaded.device)
            with torch.inference_mode():
                captured = tap.run(loaded.model, **enc.to(loaded.device))
            yield b, b + len(batch), {i: captured[i].numpy() for i in indices}


# ----------------------------------------------------------------------------- decoders


@dataclass(frozen=True)
class Window:
    """Words ``[start, stop)`` in one forward; words ``[read_from, stop)`` are read from it."""

    start: int
    read_from: int
    stop: int


def plan_windows(runs, context_words: int, stride: int) -> list[Window]:
    """Long overlapping windows over runs (never crossing a run boundary).

    Within a run of length n, window k covers words ``[k*stride, k*stride + context_words)``;
    the first window reads all its words, later windows read their last ``stride`` words.
    """
    if not 1 <= stride <= context_words:
        raise InputError(
            f"window_stride_words must be in [1, context_words={context_words}], got {stride}"
        )
    runs = list(runs)
    windows, i = [], 0
    while i < len(runs):
        j = i
        while j < len(runs) and runs[j] == runs[i]:
            j += 1
        if runs[i] in runs[j:]:
            raise InputError(f"run {runs[i]!r} is not contiguous in the word table")
        a = i
        while True:
            stop = min(a + context_words, j)
            read_from = i if a == i else max(a + context_words - stride, a)
            windows.append(Window(a, read_from, stop))
            if stop >= j:
                break
            a += stride
        i = j
    return windows


def tokenize_run_words(tokenizer, words) -> tuple[list[int], np.ndarray]:
    """Token ids of ``" ".join(words)`` and each word's last token index.

    One call of the fast tokenizer with character offsets; tokens are assigned to words by
    their offsets (vectorised); a whitespace-only token goes to the next word. Raises InputError
    for a word that gets no token (an empty word).
    """
    words = [str(w) for w in words]
    empty = [k for k, w in enumerate(words) if not w.strip()]
    if empty:
        raise InputError(f"empty word at position {empty[0]}")
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
    starts = np.r_[0, np.cumsum(lengths + 1)[:-1]]
    joined = " ".join(words)
    enc = tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    a, b = offsets[:, 0], offsets[:, 1]
    c = np.maximum(a, b - 1)  # the token's last character
    chars = np.frombuffer(joined.encode("utf-32-le"), dtype=np.uint32)
    is_space = np.r_[chars == ord(" "), True]  # a position past the end goes on too
    to_next = (b <= a) | is_space[np.minimum(c, len(joined))]
    w = np.searchsorted(starts, c, side="right") - 1 + to_next
    w = np.clip(w, 0, len(words) - 1)
    last = np.full(len(words), -1)
    np.maximum.at(last, w, np.arange(len(ids)))
    if (last < 0).any():
        raise InputError(f"word {words[int(np.argmax(last < 0))]!r} was given no token")
    if (np.diff(last) <= 0).any():
        raise InputError("tokens do not follow the word order")
    return ids, last


def _bos(tokenizer) -> list[int]:
    """[BOS] when the tokenizer prepends one to plain text (Llama, Gemma), else []."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    probe = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if probe and probe[0] == bos else []


def _max_positions(loaded) -> int | None:
    cfg = loaded.model.config
    cfg = getattr(cfg, "text_config", cfg)
    return getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)


def decoder_word_batches(
    loaded, words, runs, *, context_words, stride, indices, batch_size, start=0, info=None
):
    """Yield ``(row_start, row_stop, {index: (n, units)})`` from long overlapping windows.

    ``batch_size`` counts windows per forward. ``info['n_context_words']`` receives each
    word's context length (including the word) for the rows yielded.

    Each run is tokenised once (fast tokenizer, character offsets); a window is a slice of its
    token ids. The words read from a forward are gathered on the device by one index operation
    per layer, and each layer leaves the device as one tensor per forward (see LayerTap).
    """
    tokenizer = _tokenizer(loaded)
    words = [str(w) for w in words]
    runs = [str(r) for r in runs]
    windows = plan_windows(runs, context_words, stride)
    # tokenise each run once: a word's tokens never depend on the window
    run_ids: dict[str, np.ndarray] = {}
    word_last = np.zeros(len(words), np.int64)
    word_first = np.zeros(len(words), np.int64)
    i = 0
    while i < len(runs):
        j = i
        while j < len(runs) and runs[j] == runs[i]:
            j += 1
        try:
            ids, last = tokenize_run_words(tokenizer, words[i:j])
        except InputError as err:
            raise InputError(f"{loaded.source}: run {runs[i]!r}: {err}") from err
        run_ids[runs[i]] = np.asarray(ids, dtype=np.int64)
        word_last[i:j] = last
        word_first[i:j] = np.r_[0, last[:-1] + 1]
        i = j
    bos = np.asarray(_bos(tokenizer), dtype=np.int64)
    limit = _max_positions(loaded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    context = np.zeros(len(words), int)
    for w in windows:
        context[w.read_from : w.stop] = np.arange(w.read_from, w.stop) - w.start + 1
    if info is not None:
        info["n_context_words"] = context
    todo = [w for w in windows if w.stop > start]
    state: dict = {}
    with LayerTap(loaded, indices, lambda h: h[state["bi"], state["ti"]].float()) as tap:
        for k in range(0, len(todo), batch_size):
            group = todo[k : k + batch_size]
            seqs, bi, ti = [], [], []
            for n, w in enumerate(group):
                t0 = word_first[w.start]
                seq = np.concatenate([bos, run_ids[runs[w.start]][t0 : word_last[w.stop - 1] + 1]])
                if limit and len(seq) > limit:
                    raise InputError(
                        f"{loaded.source}: a window of {context_words} words is {len(seq)} tokens, "
                        f"past the model's {limit}; lower context_words"
                    )
                seqs.append(seq)
                read = np.arange(max(w.read_from, start), w.stop)
                bi.append(np.full(len(read), n))
                ti.append(len(bos) + word_last[read] - t0)
            lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
            width = int(lengths.max())
            input_ids = np.full((len(seqs), width), pad, dtype=np.int64)
            for n, s in enumerate(seqs):
                input_ids[n, : len(s)] = s
            inputs = {"input_ids": torch.from_numpy(input_ids).to(loaded.device)}
            if (lengths < width).any():  # padding only where windows differ in length
                mask = np.arange(width)[None, :] < lengths[:, None]
                inputs["attention_mask"] = torch.from_numpy(mask.astype(np.int64)).to(loaded.device)
            state["bi"] = torch.from_numpy(np.concatenate(bi)).to(loaded.device)
            state["ti"] = torch.from_numpy(np.concatenate(ti)).to(loaded.device)
            row_start = max(group[0].read_from, start)
            row_stop = group[-1].stop
            with torch.inference_mode():
                captured = tap.run(loaded.model, **inputs, use_cache=False)
            assert row_stop - row_start == len(state["bi"])
            yield row_start, row_stop, {i: captured[i].numpy() for i in indices}


# ----------------------------------------------------------------------------- sentences

SENTENCE_POOLINGS = ("last", "mean", "cls")


def sentence_batches(loaded, sentences, *, pooling, indices, batch_size, start=0):
    """Yield ``(row_start, row_stop, {index: (n, units)})``, one vector per sentence."""
    tokenizer = _tokenizer(loaded)
    if pooling not in SENTENCE_POOLINGS:
        raise InputError(
            f"{loaded.source}: pooling {pooling!r} is not supported for sentences; use "
            f"{', '.join(SENTENCE_POOLINGS)}"
        )
    if pooling == "cls" and loaded.family == "decoder":
        raise InputError(f"{loaded.source}: a decoder LLM has no CLS token; use last or mean")
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    state: dict = {}
    with LayerTap(
        loaded, indices, lambda h: torch.einsum("bt,btu->bu", state["w"], h.float())
    ) as tap:
        for b in range(start, len(sentences), batch_size):
            batch = [str(s) for s in sentences[b : b + batch_size]]
            empty = [b + k for k, s in enumerate(batch) if not s.strip()]
            if empty:
                raise InputError(f"{loaded.source}: sentence {empty[0]} is empty")
            enc = tokenizer(
                batch, return_tensors="pt", padding=True, return_special_tokens_mask=True
            )
            special = enc.pop("special_tokens_mask")
            real = (enc["attention_mask"] == 1) & (special == 0)
            w = torch.zeros(real.shape)
            for k in range(len(batch)):
                pos = real[k].nonzero().flatten()
                if len(pos) == 0:
                    raise InputError(f"{loaded.source}: sentence {b + k} has no tokens")
                if pooling == "mean":
                    w[k, pos] = 1.0 / len(pos)
                elif pooling == "last":
                    w[k, pos[-1]] = 1.0
                else:
                    w[k, 0] = 1.0
            state["w"] = w.to(loaded.device)
            with torch.inference_mode():
                captured = tap.run(loaded.model, **enc.to(loaded.device))
            yield b, b + len(batch), {i: captured[i].numpy() for i in indices}
