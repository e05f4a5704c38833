"""Forward hooks that stream chosen hidden states out of a model, reduced on the fly.

Instead of ``output_hidden_states=True`` (every layer's full (batch, tokens, units) tensor held
at once), a pre-hook on block ``i`` sees hidden state ``i`` (its input), reduces it right away
(pooling, token gathering), and keeps only the reduction. The last hidden state comes from the
model's output (after the final norm, as ``output_hidden_states`` gives it for language models)
or from the last block's output (vision towers). The forward stops after the deepest chosen
layer, so shallow selections cost less.

Reductions stay on the model's device until the forward ends; on CUDA each is then copied into
pinned host memory on a side stream as soon as it is made (overlapping the later layers'
compute), with one synchronisation per forward instead of one per layer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


class _Done(Exception):
    """Raised by a hook once every chosen layer is captured (stops the forward early)."""


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    if hasattr(obj, "last_hidden_state"):
        return obj.last_hidden_state
    if isinstance(obj, tuple | list):
        return obj[0]
    raise TypeError(f"cannot find a hidden-state tensor in {type(obj).__name__}")


class LayerTap:
    """Capture hidden states ``indices`` during a forward pass, reduced by ``reduce``.

    Parameters
    ----------
    loaded : alignment.features.huggingface.Loaded
        The model, its blocks and its final module.
    indices : list of int
        Hidden-state indices (0 = embeddings, ``len(blocks)`` = last).
    reduce : callable
        ``reduce(hidden) -> tensor`` applied to each captured (batch, tokens, units) state,
        on the model's device; ``run`` returns the reductions on the host (CPU tensors).

    Examples
    --------
    >>> with LayerTap(loaded, [0, 3], lambda h: h.mean(1)) as tap:   # doctest: +SKIP
    ...     outputs = tap.run(model, **inputs)
    """

    def __init__(self, loaded, indices, reduce: Callable[[torch.Tensor], torch.Tensor]):
        self.loaded = loaded
        self.indices = sorted(indices)
        self.reduce = reduce
        self.captured: dict[int, torch.Tensor] = {}
        self._handles = []
        self._stream = None
        self._keep: list[torch.Tensor] = []

    def _store(self, index: int, hidden: torch.Tensor) -> None:
        out = self.reduce(hidden)
        if out.device.type == "cuda":
            stream = self._copy_stream(out.device)
            stream.wait_stream(torch.cuda.current_stream(out.device))
            with torch.cuda.stream(stream):
                host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                host.copy_(out, non_blocking=True)
            self._keep.append(out)  # alive until the copy is done
            out = host
        else:
            out = out.detach()
        self.captured[index] = out
        if len(self.captured) == len(self.indices):
            raise _Done

    def _copy_stream(self, device):
        if self._stream is None:
            self._stream = torch.cuda.Stream(device)
        return self._stream

    def __enter__(self):
        n_blocks = len(self.loaded.blocks)
        for i in self.indices:
            if i < n_blocks:

                def pre(module, args, kwargs, i=i):
                    hidden = args[0] if args else kwargs["hidden_states"]
                    self._store(i, hidden)

                self._handles.append(
                    self.loaded.blocks[i].register_forward_pre_hook(pre, with_kwargs=True)
                )
            else:

                def post(module, args, output, i=i):
                    self._store(i, _first_tensor(output))

                self._handles.append(self.loaded.final.register_forward_hook(post))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def launch(self, fn: Callable, *args, **kwargs) -> None:
        """Call ``fn`` (the model's forward); on CUDA, return before the copies are done."""
        self.captured = {}
        self._keep = []
        with contextlib.suppress(_Done):
            fn(*args, **kwargs)
        missing = sorted(set(self.indices) - set(self.captured))
        if missing:
            raise RuntimeError(f"hidden states {missing} were not captured by the hooks")

    def collect(self) -> dict[int, torch.Tensor]:
        """Wait for the last :meth:`launch`'s copies; {index: reduced hidden state on host}."""
        if self._stream is not None:
            self._stream.synchronize()
        self._keep = []
        return dict(self.captured)

    def run(self, fn: Callable, *args, **kwargs) -> dict[int, torch.Tensor]:
        """Call ``fn`` (the model's forward), return {index: reduced hidden state}."""
        self.launch(fn, *args, **kwargs)
        return self.collect()
