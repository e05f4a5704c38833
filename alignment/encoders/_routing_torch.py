"""Torch modules of the routing encoder (imported lazily: importing the registry needs no torch).

See :mod:`alignment.encoders.routing` for the model; these classes live at module level so a
fitted encoder can be pickled.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def centre_tokens(tokens, how=None):
    """Tokens (batch, tokens, width) minus a statistic of the same image's tokens, per unit.

    Parameters
    ----------
    tokens : Tensor (batch, tokens, width)
    how : {"image", "median"} or None
        ``image``: each image's mean token; ``median``: each image's median token (per unit);
        None: the tokens unchanged.

    Returns
    -------
    Tensor (batch, tokens, width)

    Notes
    -----
    Both remove what most of an image's tokens share (an early layer's background brightness
    and colour). The mean also mixes every region's content into every token (minus
    ``1 / n_tokens`` of it), so tokens outside a region come to predict what the region
    drives nearly as well as the region does, and a query's attention is no longer tied to
    the region; the median of mostly-background tokens moves less with one region's content.
    """
    if how is None:
        return tokens
    if how == "image":
        return tokens - tokens.mean(1, keepdim=True)
    if how == "median":
        return tokens - tokens.median(1, keepdim=True).values
    raise ValueError(f"unknown token centring {how!r}")


class CrossAttention(nn.Module):
    """Multi-head cross-attention whose keys are the tokens plus a positional encoding.

    ``keys = W_k (tokens + pos) + b_k``, ``values = W_v tokens + b_v``. The first
    ``position_heads`` heads drop the tokens from their keys (``W_k pos + b_k``): their
    attention is one spatial map per query, the same for every image. With ``position_scale``
    (> 0) their logits are multiplied by a learned per-head scale, initialised to it (kept as
    its logarithm): a scale above 1 lets a few training steps make a spatial map peaked.
    """

    def __init__(self, d: int, heads: int, position_heads: int = 0, position_scale: float = 0.0):
        super().__init__()
        self.heads = heads
        self.position_heads = position_heads
        self.log_position_scale = (
            nn.Parameter(torch.full((position_heads,), math.log(position_scale)))
            if position_heads and position_scale > 0
            else None
        )
        self.spatial_bias = None  # (position heads, queries, tokens), set by the encoder
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def keys(self, key, pos):
        """Keys (batch, heads, tokens, head width) of tokens ``key`` and encoding ``pos``."""
        b, nk, d = key.shape
        hd = d // self.heads
        k_pos = F.linear(pos, self.k.weight).expand(b, nk, d)
        split = self.position_heads * hd  # head h owns channels [h * hd, (h + 1) * hd)
        k_tok = self.k(key)
        if split:
            k_tok = torch.cat([self.k.bias[:split].expand(b, nk, split), k_tok[..., split:]], -1)
        return (k_tok + k_pos).view(b, nk, self.heads, hd).transpose(1, 2)

    def forward(self, query, key, value, pos, return_weights: bool = False):
        b, nq, d = query.shape
        nk = key.shape[1]
        hd = d // self.heads
        q = self.q(query).view(b, nq, self.heads, hd).transpose(1, 2)
        if self.log_position_scale is not None:
            # scaling a head's queries scales its logits (SDPA stays usable)
            p = self.position_heads
            scale = torch.cat([self.log_position_scale.exp(), q.new_ones(self.heads - p)])
            q = q * scale.view(1, -1, 1, 1)
        k = self.keys(key, pos)
        v = self.v(value).view(b, nk, self.heads, hd).transpose(1, 2)
        bias = None
        if self.spatial_bias is not None:  # a learned logit per query and token (position heads)
            rest = self.spatial_bias.new_zeros(self.heads - self.position_heads, nq, nk)
            bias = torch.cat([self.spatial_bias, rest]).unsqueeze(0).to(q.dtype)
        if return_weights:
            logits = (q @ k.transpose(-2, -1)) / math.sqrt(hd)
            weights = torch.softmax(logits if bias is None else logits + bias, dim=-1)
            out = weights @ v  # weights per head: (b, heads, nq, nk)
            # what each head adds to the query's output: |W_out,h (weights_h @ v_h)|, kept for
            # interpretation (b, heads, nq)
            w_out = self.out.weight.view(d, self.heads, hd)
            self.head_norms = torch.einsum("bhqe,dhe->bhqd", out, w_out).norm(dim=-1)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            weights = None
        return self.out(out.transpose(1, 2).reshape(b, nq, d)), weights


class TransformerBrainEncoder(nn.Module):
    """Queries cross-attend to tokens (keys with positional encoding); gated einsum readout.

    Parameters
    ----------
    width_in : int
        Token width.
    layout : alignment.encoders.routing.QueryLayout
    pos : ndarray (tokens, width) or (1, width)
        Positional encoding added to the keys (zeros to switch it off).
    width, n_heads, ffn_dim, dropout
        Decoder width (tokens are projected when it differs from ``width_in``), heads, FFN
        hidden size, dropout.
    position_heads : int
        Heads whose keys are the positional encoding alone (see :class:`CrossAttention`).
    position_scale : float
        Initial learned scale of the position heads' logits (0: none).
    position_bias : bool
        A learned logit per query, position head and token (zero at the start) added to the
        position heads' logits.
    """

    def __init__(
        self,
        width_in,
        layout,
        pos,
        *,
        width,
        n_heads,
        ffn_dim,
        dropout,
        position_heads=0,
        position_scale=0.0,
        position_bias=False,
    ):
        super().__init__()
        d = width
        self.width = d
        self.layout = layout
        self.proj = nn.Linear(width_in, d) if d != width_in else nn.Identity()
        self.register_buffer("pos", torch.as_tensor(np.asarray(pos), dtype=torch.float32))
        self.register_buffer("token_mean", torch.zeros(width_in))
        self.register_buffer("token_scale", torch.ones(width_in))
        self.centering = None  # "image" or "median": see centre_tokens (token_centering)
        self.query = nn.Parameter(torch.randn(layout.n_queries, d))
        self.norm_attn = nn.LayerNorm(d)
        self.attn = CrossAttention(d, n_heads, position_heads, position_scale)
        if position_bias and position_heads:
            n_tokens = self.pos.shape[0]
            self.attn.spatial_bias = nn.Parameter(
                torch.zeros(position_heads, layout.n_queries, n_tokens)
            )
        self.drop_attn = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(d)
        self.ffn = nn.Sequential(
            nn.Linear(d, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, d)
        )
        self.drop_ffn = nn.Dropout(dropout)
        self.norm_out = nn.LayerNorm(d)
        self.readout = nn.ParameterList()
        self.readout_bias = nn.ParameterList()
        bound = 1 / math.sqrt(d)
        for h, cols in enumerate(layout.vertex_index):
            self.readout.append(nn.Parameter(torch.empty(len(cols), d).uniform_(-bound, bound)))
            self.readout_bias.append(nn.Parameter(torch.zeros(len(cols))))
            if layout.membership is not None:
                self.register_buffer(
                    f"member_{h}", torch.as_tensor(layout.membership[h], dtype=torch.float32)
                )
        order = np.concatenate(layout.vertex_index)
        self.register_buffer("inverse_order", torch.as_tensor(np.argsort(order)))

    def decode(self, tokens, return_weights: bool = False):
        """Query tokens (batch, queries, width) and, optionally, attention weights per head
        (batch, heads, queries, tokens)."""
        tokens = tokens.float()
        tokens = centre_tokens(tokens, self.centering)
        mem = self.proj((tokens - self.token_mean) / self.token_scale)
        tgt = torch.zeros(mem.shape[0], self.query.shape[0], mem.shape[2], device=mem.device)
        q = self.norm_attn(tgt) + self.query
        attended, weights = self.attn(q, mem, mem, self.pos, return_weights)
        tgt = tgt + self.drop_attn(attended)
        tgt = tgt + self.drop_ffn(self.ffn(self.norm_ffn(tgt)))
        return self.norm_out(tgt), weights

    def forward(self, tokens, return_weights: bool = False):
        z, weights = self.decode(tokens, return_weights)
        parts = []
        for h, qi in enumerate(self.layout.query_index):
            zq = z[:, int(qi[0]) : int(qi[-1]) + 1]  # queries of a hemisphere are contiguous
            w, c = self.readout[h], self.readout_bias[h]
            if self.layout.membership is None:
                parts.append(torch.einsum("bvd,vd->bv", zq, w) + c)
            else:
                member = getattr(self, f"member_{h}")
                # (b, q, v) then gated sum over queries: never a (v, v) tensor
                per_query = torch.einsum("bqd,vd->bqv", zq, w)
                parts.append(torch.einsum("bqv,qv->bv", per_query, member.to(zq.dtype)) + c)
        out = torch.cat(parts, dim=1)[:, self.inverse_order]
        return (out, weights) if return_weights else out
