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

plot_style()
seed_everything(0)

# %% [markdown]
# ### attn.1
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
# **Answer:** Attention frees the encoder's final state from having to hold the whole sentence: the encoder learns per-position states that describe each token in its context and can be *found* by a query, and the decoder's state learns to carry where it is in the translation (what to look up next) instead of the whole source; with self-attention in place of decoder queries, the attention no longer depends on what the decoder is producing, so the alignment is lost and the decoder's state (fed by a fixed summary of the source) must again carry the source content and the alignment itself, as in the model without attention, while the encoder states become mixtures of the whole sentence.
#
# **A.** Without attention, the decoder sees the source only through the encoder's last state $\boldsymbol{h}_L$ (its initial state). That one vector must encode *every* source token and its position, and the decoder state $\boldsymbol{s}_t$ must carry everything not yet emitted, step after step: a fixed-size bottleneck whose quality falls with sentence length. With attention, at every step the decoder's state is the query $\boldsymbol{q}_t = \boldsymbol{W}_q \boldsymbol{s}_{t-1}$, the weights $\alpha_{t,j} = \operatorname{softmax}_j\left(\boldsymbol{q}_t^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d}\right)$ pick source positions and the context $\boldsymbol{c}_t = \sum_j \alpha_{t,j} \boldsymbol{W}_v \boldsymbol{h}_j$ delivers their content. The hidden states change accordingly. The **encoder states** $\boldsymbol{h}_j$ become a memory that is read position by position: each must describe its own token in context (and give it a key that a query can find), while the final state no longer has to summarise the sentence. The **decoder state** no longer has to store the source: it carries what it has produced and where it is, which is what it needs to ask for the next position; the content arrives through $\boldsymbol{c}_t$. The experiment (reversing random token sequences, where target token $t$ is source token $L-1-t$; a bidirectional GRU encoder and a GRU decoder, trained on lengths 2 to 12) shows this: without attention, accuracy falls steadily with length; with attention, it stays high, and the attention map is the anti-diagonal alignment (the peak sits on the source token being emitted or on its right neighbour, whose forward-GRU state read that token one step earlier and so delivers the same content). Replacing the decoder's initial state (the encoder summary) with that of another sentence sends the no-attention model to chance, since the summary carried the whole sentence, while the attention model still emits several times more correct tokens, since much of the content now arrives through attention; the summary is still used (for the length and the first steps), so it does not survive unharmed.
#
# **B.** With queries, keys and values all projections of the encoder states, the attention computes $\boldsymbol{h}'_i = \sum_j \operatorname{softmax}_j\left((\boldsymbol{W}_q \boldsymbol{h}_i)^\top \boldsymbol{W}_k \boldsymbol{h}_j / \sqrt{d}\right) \boldsymbol{W}_v \boldsymbol{h}_j$: one new vector per *source* position, mixing information from the whole sentence into each (contextualised encoder states, as in a transformer encoder). But nothing in it depends on the decoder: the weights are the same whatever the decoder has produced, so the decoder can no longer choose where to look, and the model loses the alignment that attention provided. The decoder receives the same context at every step (here the average of the $\boldsymbol{h}'_i$, in the slot where the tutorial's model receives $\boldsymbol{c}_t$), so its hidden state must again track its position and carry the source content, as without attention; the encoder states are trained to make the fixed summary informative rather than to be addressable. (Pairing decoder step $t$ with $\boldsymbol{h}'_t$ would only make sense if source and target had the same length and a known alignment, which translation does not have.) Expected, and measured: the self-attention variant behaves like the model without attention: its accuracy falls with length and ends, for the longest sentences, where the no-attention model ends, far below decoder-query attention (the extra summary vector helps a little at medium lengths), and it falls to near chance when its initial state is swapped. Its learned self-attention weights are close to uniform: with no decoder query there is nothing for them to align, so they settle for an average, a bag-of-tokens summary of the sentence, and the map is the same at every decoder step.

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

    def forward(self, src, tgt_in, swap_summary: bool = False):
        enc, last = self.encoder(self.src_embed(src))
        h = torch.cat([last[0], last[1]], -1).unsqueeze(0)  # the encoder's summary of the sentence
        if swap_summary:  # give every sentence the summary of another sentence
            h = h.roll(1, dims=1)
        keys, values = self.W_k(enc), self.W_v(enc)
        x = self.tgt_embed(tgt_in)
        if self.kind == "none":
            return self.out(self.decoder(x, h)[0]), None
        if self.kind == "self":
            mixed, weights = self.attend(enc, keys, values)  # (B, L, H), (B, L, L)
            context = mixed.mean(1, keepdim=True).expand(-1, x.shape[1], -1)  # same at every step
            return self.out(self.decoder(torch.cat([x, context], -1), h)[0]), weights
        outputs, maps = [], []
        for t in range(x.shape[1]):  # the query is the decoder state, so step by step
            context, weights = self.attend(h.transpose(0, 1), keys, values)
            step, h = self.decoder(torch.cat([x[:, t:t + 1], context], -1), h)
            outputs.append(step)
            maps.append(weights)
        return self.out(torch.cat(outputs, 1)), torch.cat(maps, 1)  # maps: (B, T, L)

    @torch.no_grad()
    def translate(self, src, swap_summary: bool = False):
        """Greedy decoding: feed back the model's own outputs."""
        tokens = torch.full((src.shape[0], 1), SOS)
        for _ in range(src.shape[1]):
            logits, maps = self(src, tokens, swap_summary)
            tokens = torch.cat([tokens, logits[:, -1:].argmax(-1)], 1)
        return tokens[:, 1:], maps


def reversal_batch(n: int, length: int, g: torch.Generator):
    src = torch.randint(0, VOCAB, (n, length), generator=g)
    target = src.flip(1)
    return src, torch.cat([torch.full((n, 1), SOS), target[:, :-1]], 1), target


def train_seq2seq(kind: str, seed: int = 0, steps: int = 300, batch: int = 128):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = Seq2Seq(kind)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    for length in torch.randint(2, 13, (steps,), generator=g).tolist():  # lengths 2..12
        src, tgt_in, target = reversal_batch(batch, length, g)
        loss = F.cross_entropy(model(src, tgt_in)[0].reshape(-1, VOCAB), target.reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


kinds = {"none": "no attention", "decoder": "query = decoder state", "self": "self-attention (encoder)"}
models = {kind: train_seq2seq(kind) for kind in kinds}
lengths = (2, 4, 6, 8, 10, 12)
test = {L: reversal_batch(256, L, torch.Generator().manual_seed(100 + L)) for L in lengths}
by_length = {k: [(m.translate(test[L][0])[0] == test[L][2]).float().mean().item() for L in lengths]
             for k, m in models.items()}
swapped = {k: sum((m.translate(test[L][0], swap_summary=True)[0] == test[L][2]).float().mean().item()
                  for L in (4, 8)) / 2 for k, m in models.items()}
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

fig, (ax_acc, ax_cross, ax_self) = plt.subplots(1, 3, figsize=(10, 3.1))
for k, name in kinds.items():
    ax_acc.plot(lengths, by_length[k], marker="o", label=name)
ax_acc.set_xlabel("source length")
ax_acc.set_ylabel("token accuracy")
ax_acc.legend(fontsize=7)
ax_cross.imshow(cross_maps[0], cmap="viridis", vmin=0, vmax=1)
ax_cross.set_title("query = decoder state", fontsize=9)
ax_cross.set_xlabel("source position")
ax_cross.set_ylabel("decoder step")
ax_self.imshow(self_maps[0], cmap="viridis", vmin=0, vmax=1)
ax_self.set_title("self-attention (any decoder step)", fontsize=9)
ax_self.set_xlabel("source position (key)")
ax_self.set_ylabel("source position (query)")
plt.tight_layout()
plt.show()

acc = {k: dict(zip(lengths, v)) for k, v in by_length.items()}
assert min(a[4] for a in acc.values()) > 0.9, "short sequences are easy for every variant"
assert acc["decoder"][12] > acc["none"][12] + 0.25, "attention removes the bottleneck at long lengths"
assert acc["self"][12] < acc["decoder"][12] - 0.25, "self-attention without decoder queries loses that benefit"
assert acc["none"][12] < acc["none"][4] - 0.3, "without attention, accuracy falls with length"
assert aligned > 0.9 and peak_cross > 0.5, "the decoder's attention aligns step t with source position L-1-t"
assert peak_self < 0.3, "the self-attention weights carry no alignment: close to uniform"
assert swapped["none"] < 0.2, "without attention, the encoder summary carries the whole sentence"
assert swapped["decoder"] > swapped["none"] + 0.15, "with attention, content comes from the per-position encoder states"
assert swapped["self"] < swapped["decoder"] - 0.1, "self-attention variant depends on the summary like no attention"
