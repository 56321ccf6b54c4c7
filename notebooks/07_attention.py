# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# ## Attention

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlsummary import plot_style, seed_everything
from dlsummary.evidence import check, control

plot_style()
seed_everything(0)

# %% [markdown]
# ### attn.1 · attention and the hidden states
# In tutorial 7 (part 2) we learned how to use attention to perform alignment between a
# source and target sequence in machine translation.
# - A. Explain qualitatively what the addition of the attention mechanism between the
#   encoder and decoder does to the hidden states that the encoder and decoder each learn to
#   generate (for their language). How are these hidden states different from the model
#   without attention?
# - B. After learning that self-attention is gaining popularity thanks to the shiny new
#   transformer models, you decide to change the model from the tutorial: instead of the
#   queries being equal to the decoder hidden states, you use self-attention, so that the
#   keys, queries and values are all equal to the encoder's hidden states (with learned
#   projections). What influence do you expect this will have on the learned hidden states?
#
# (Context: the tutorial's model is a recurrent encoder-decoder; the encoder's outputs are
# the keys and values, the decoder's hidden state is the query, and the context vector feeds
# the next decoder step.)

# %% [markdown]
# **Answer:**
#
# **A.** Without attention the decoder sees the source only through the encoder's final state: that one vector must encode the whole sentence, and the decoder's state everything not yet translated, a bottleneck that worsens with length. With attention, the decoder's state is a query that selects encoder states at every step, and their weighted sum (the context vector) delivers the content. So the encoder learns per-position states that a query can find, and the decoder's state steers where to look next instead of storing the source.
#
# **B.** With queries, keys and values all from the encoder, each encoder state becomes a mixture of the whole sentence, but the attention no longer depends on the decoder: its weights are the same at every decoding step, so the decoder cannot choose where to look and the alignment is lost. Its state must again hold the source content, and the encoder states are trained to make that fixed summary informative rather than addressable: quality falls with length as without attention.

# %% [markdown]
# **Why, in detail.** With attention the decoder's state $\boldsymbol{s}_{t-1}$ gives the query $\boldsymbol{q}_t = \boldsymbol{W}_q \boldsymbol{s}_{t-1}$, the weights $\alpha_{t,j} = \operatorname{softmax}_j(\boldsymbol{q}_t^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d})$ pick source positions, and the context $\boldsymbol{c}_t = \sum_j \alpha_{t,j} \boldsymbol{W}_v \boldsymbol{h}_j$ feeds the next decoder step. In B the attention computes $\boldsymbol{h}'_i = \sum_j \operatorname{softmax}_j((\boldsymbol{W}_q \boldsymbol{h}_i)^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d}) \boldsymbol{W}_v \boldsymbol{h}_j$, one vector per *source* position; the decoder receives their average in the slot of $\boldsymbol{c}_t$, the same at every step. (Pairing decoder step $t$ with $\boldsymbol{h}'_t$ would need source and target of equal length and a known alignment, which translation does not have.)
#
# The experiment: reversing random token sequences (target token $t$ is source token $L-1-t$), a bidirectional GRU encoder and a GRU decoder, the three variants trained alike on lengths 2 to 10 and decoded greedily.
# - Without attention accuracy falls steadily with length; with decoder-query attention it stays high, and the attention map is the anti-diagonal alignment: its peak sits on the token being emitted or on its right neighbour (whose forward-GRU state read that token one step earlier).
# - Giving every sentence the encoder summary (the decoder's initial state) of another sentence sends the no-attention model to chance, since the summary carried the whole sentence, while the attention model still emits several times more correct tokens: much of the content now arrives through the per-position encoder states. The summary is still used (for the first steps), so the attention model is hurt too.
# - The self-attention variant behaves like the model without attention: at the longest length it ends where that model ends, far below decoder-query attention. Its attention weights are close to uniform: with no decoder query there is nothing for them to align, so they settle for an average, a bag-of-tokens summary, the same at every decoder step.
# - What the decoder's state holds, by a least-squares linear probe (fit on half of 1024 greedy decodings of length 8, scored on the other half): from the state after step $t$, the source tokens still to be emitted two and three steps later. Without attention they are readable well above chance (about 0.36, chance 0.125), since the state must carry them; with decoder-query attention they are close to chance (about 0.19): the content arrives through the context vector and the state no longer stores it. The self-attention variant's state holds them again (about 0.30). The same probe does *not* find the output position more readable with attention than without (about 0.33 vs 0.43, chance 0.125), so the answer does not claim that the state counts positions; its role is the query, whose alignment is measured above.

# %%
VOCAB, SOS = 8, 8  # tokens 0..7, and a start-of-sequence token for the decoder's first input


class Seq2Seq(nn.Module):
    """Bidirectional GRU encoder, GRU decoder. kind: 'none' (no attention), 'decoder'
    (query = decoder state, the tutorial's model), 'self' (queries, keys and values from
    the encoder states)."""

    def __init__(self, kind: str, hidden: int = 48, emb: int = 16) -> None:
        super().__init__()
        self.kind = kind
        self.src_embed, self.tgt_embed = nn.Embedding(VOCAB, emb), nn.Embedding(VOCAB + 1, emb)
        self.encoder = nn.GRU(emb, hidden // 2, batch_first=True, bidirectional=True)
        self.W_q, self.W_k, self.W_v = (nn.Linear(hidden, hidden, bias=False) for _ in range(3))
        self.decoder = nn.GRU(emb + (0 if kind == "none" else hidden), hidden, batch_first=True)
        self.out = nn.Linear(hidden, VOCAB)

    def attend(self, queries, keys, values):
        weights = torch.softmax(self.W_q(queries) @ keys.transpose(1, 2) / math.sqrt(keys.shape[-1]), -1)
        return weights @ values, weights

    def encode(self, src, swap_summary: bool = False):
        """Encoder states, the summary (the decoder's initial state), keys and values; for
        'self', the fixed context (mean of the self-attended states) and its weights."""
        enc, last = self.encoder(self.src_embed(src))
        h = torch.cat([last[0], last[1]], -1).unsqueeze(0)  # the encoder's summary of the sentence
        if swap_summary:  # give every sentence the summary of another sentence
            h = h.roll(1, dims=1)
        keys, values = self.W_k(enc), self.W_v(enc)
        context, weights = None, None
        if self.kind == "self":
            mixed, weights = self.attend(enc, keys, values)  # (B, L, H), (B, L, L)
            context = mixed.mean(1, keepdim=True)  # the same at every decoder step
        return h, keys, values, context, weights

    def step(self, x, h, keys, values, context):
        """One decoder step on input embeddings x (B, 1, emb): logits, new state, weights."""
        weights = None
        if self.kind == "decoder":  # the query is the decoder state
            context, weights = self.attend(h.transpose(0, 1), keys, values)
        if context is not None:
            x = torch.cat([x, context.expand(-1, x.shape[1], -1)], -1)
        out, h = self.decoder(x, h)
        return self.out(out), h, weights

    def forward(self, src, tgt_in):
        """Teacher forcing: logits for every target position."""
        h, keys, values, context, _ = self.encode(src)
        x = self.tgt_embed(tgt_in)
        if self.kind != "decoder":  # the decoder's input does not depend on its state
            return self.step(x, h, keys, values, context)[0]
        outputs = []
        for t in range(x.shape[1]):
            logits, h, _ = self.step(x[:, t:t + 1], h, keys, values, context)
            outputs.append(logits)
        return torch.cat(outputs, 1)

    @torch.no_grad()
    def translate(self, src, swap_summary: bool = False):
        """Greedy decoding, feeding back the model's own outputs; also the attention maps
        (B, decoder steps, source positions) or, for 'self', (B, query, key)."""
        h, keys, values, context, self_maps = self.encode(src, swap_summary)
        token, tokens, maps = torch.full((src.shape[0], 1), SOS), [], []
        for _ in range(src.shape[1]):
            logits, h, weights = self.step(self.tgt_embed(token), h, keys, values, context)
            token = logits.argmax(-1)
            tokens.append(token)
            maps.append(weights)
        return torch.cat(tokens, 1), (self_maps if self.kind != "decoder" else torch.cat(maps, 1))


def reversal_batch(n: int, length: int, g: torch.Generator):
    src = torch.randint(0, VOCAB, (n, length), generator=g)
    target = src.flip(1)
    return src, torch.cat([torch.full((n, 1), SOS), target[:, :-1]], 1), target


def train_seq2seq(kind: str, seed: int = 0, steps: int = 150, batch: int = 128):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Seq2Seq(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for length in torch.randint(2, 11, (steps,), generator=g).tolist():  # lengths 2..10
        src, tgt_in, target = reversal_batch(batch, length, g)
        loss = F.cross_entropy(model(src, tgt_in).reshape(-1, VOCAB), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


kinds = {"none": "no attention", "decoder": "query = decoder state", "self": "self-attention (encoder)"}
models = {kind: train_seq2seq(kind) for kind in kinds}
lengths = (2, 4, 6, 8, 10)
test = {L: reversal_batch(256, L, torch.Generator().manual_seed(100 + L)) for L in lengths}
token_accuracy = lambda tokens, L: (tokens == test[L][2]).float().mean().item()
by_length = {k: [token_accuracy(m.translate(test[L][0])[0], L) for L in lengths] for k, m in models.items()}
swapped = {k: sum(token_accuracy(m.translate(test[L][0], swap_summary=True)[0], L) for L in (4, 8)) / 2
           for k, m in models.items()}
print("token accuracy of greedy decoding, by source length (chance 0.125)")
print(f"{'model':>26} | " + " ".join(f"L={L:<4}" for L in lengths) + " | summary swapped (L = 4, 8)")
for k, name in kinds.items():
    print(f"{name:>26} | " + " ".join(f"{a:6.3f}" for a in by_length[k]) + f" | {swapped[k]:.3f}")

src8 = test[8][0]
_, cross_maps = models["decoder"].translate(src8)  # (256, 8 decoder steps, 8 source positions)
_, self_maps = models["self"].translate(src8)  # (256, 8 query positions, 8 key positions)
copied = torch.arange(7, -1, -1)  # decoder step t emits source token 7 - t
offset = cross_maps.argmax(-1) - copied
aligned = (offset.abs() <= 1).float().mean().item()
peak_cross, peak_self = cross_maps.max(-1).values.mean().item(), self_maps.max(-1).values.mean().item()
print(f"query = decoder state: attention peak within one position of the token being emitted in "
      f"{aligned:.1%} of steps (exactly on it: {(offset == 0).float().mean():.1%}, on its right "
      f"neighbour: {(offset == 1).float().mean():.1%}); mean peak weight {peak_cross:.2f}")
print(f"self-attention: mean peak weight {peak_self:.2f} (uniform over 8 positions: 0.125)")

fig, (ax_acc, ax_cross, ax_self) = plt.subplots(1, 3, figsize=(11, 3.4), gridspec_kw={"wspace": 0.45})
for k, name in kinds.items():
    ax_acc.plot(lengths, by_length[k], marker="o", label=name)
ax_acc.axhline(1 / VOCAB, color="gray", ls=":", label="chance")
ax_acc.set_xlabel("source length")
ax_acc.set_ylabel("token accuracy (greedy)")
ax_acc.legend(fontsize=7)
for ax, maps, title, xlabel, ylabel in (
        (ax_cross, cross_maps, "query = decoder state", "source position", "decoder step"),
        (ax_self, self_maps, "self-attention (any decoder step)", "source position (key)",
         "source position (query)")):
    image = ax.imshow(maps[0], cmap="viridis", vmin=0, vmax=1)
    ax.set_title(title + "\none sentence of length 8", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(False)
fig.colorbar(image, ax=[ax_cross, ax_self], fraction=0.03, label="attention weight")
plt.show()

acc = {k: dict(zip(lengths, v)) for k, v in by_length.items()}
check("attn.1.A", "short sequences are easy for every variant (L = 4)", min(a[4] for a in acc.values()),
      ">", 0.85)
check("attn.1.A", "without attention, accuracy falls with length (L = 4 to 10)",
      acc["none"][4] - acc["none"][10], ">", 0.3)
control("attn.1.A", "with attention, the longest sentences stay far better than without",
        acc["decoder"][10] - acc["none"][10], ">", 0.25)
check("attn.1.A", "the decoder's attention aligns step t with source position L-1-t (within one)",
      aligned, ">", 0.9)
check("attn.1.A", "... with a peaked, not uniform, weight", peak_cross, ">", 0.5)
check("attn.1.A", "without attention the summary carries the whole sentence: swapped, near chance",
      swapped["none"], "<", 0.2)
check("attn.1.A", "with attention, several times more tokens survive a swapped summary",
      swapped["decoder"] / swapped["none"], ">", 2)
check("attn.1.B", "self-attention without decoder queries loses attention's benefit at length 10",
      acc["decoder"][10] - acc["self"][10], ">", 0.25)
check("attn.1.B", "... and ends where the model without attention ends",
      abs(acc["self"][10] - acc["none"][10]), "<", 0.1)
control("attn.1.B", "the self-attention weights carry no alignment: close to uniform (0.125)",
        peak_self, "<", 0.3)

# %%
# What the decoder's state holds: a least-squares linear probe on the greedy-decoding states.
@torch.no_grad()
def decoder_states(model: Seq2Seq, src: torch.Tensor) -> torch.Tensor:
    """Greedy decoding as in translate, keeping the decoder state after each step: (B, L, H)."""
    h, keys, values, context, _ = model.encode(src)
    token, states = torch.full((src.shape[0], 1), SOS), []
    for _ in range(src.shape[1]):
        logits, h, _ = model.step(model.tgt_embed(token), h, keys, values, context)
        token = logits.argmax(-1)
        states.append(h[0])
    return torch.stack(states, 1)


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Fit a linear map (with bias) to one-hot labels on the first half; accuracy on the second."""
    X = torch.cat([features, torch.ones(len(features), 1)], 1)
    n = len(X) // 2
    W = torch.linalg.lstsq(X[:n], F.one_hot(labels[:n], classes).float()).solution
    return ((X[n:] @ W).argmax(-1) == labels[n:]).float().mean().item()


L_PROBE = 8
probe_src = reversal_batch(1024, L_PROBE, torch.Generator().manual_seed(7))[0]
future_source, position = {}, {}
for k, m in models.items():
    states = decoder_states(m, probe_src)  # the state after step t has emitted src[L-1-t]
    scores = []
    for ahead in (2, 3):  # the source token emitted `ahead` steps later: not yet delivered
        steps = torch.arange(L_PROBE - ahead)
        scores.append(probe_accuracy(states[:, steps].reshape(-1, states.shape[-1]),
                                     probe_src[:, L_PROBE - 1 - steps - ahead].reshape(-1), VOCAB))
    future_source[k] = sum(scores) / len(scores)
    position[k] = probe_accuracy(states.reshape(-1, states.shape[-1]),
                                 torch.arange(L_PROBE).repeat(len(probe_src)), L_PROBE)
print("linear probe on the decoder state (L = 8): source tokens 2-3 steps ahead (chance 0.125) | "
      "output position (chance 0.125)")
for k, name in kinds.items():
    print(f"{name:>26} | {future_source[k]:.3f} | {position[k]:.3f}")
check("attn.1.A", "with attention the decoder's state no longer stores the source still to translate",
      future_source["none"] - future_source["decoder"], ">", 0.1)
control("attn.1.A", "without attention the state holds it, well above chance (0.125)",
        future_source["none"], ">", 0.28)
check("attn.1.B", "with self-attention the decoder's state must again hold the source",
      future_source["self"] - future_source["decoder"], ">", 0.06)
