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
# ## Sequence models

# %%
import math

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn

from dlsummary import plot_style, seed_everything
from dlsummary.sequence import Embedding, batchify, run_in_segments, train_tbptt

plot_style()
seed_everything(0)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of argmax predictions equal to the targets (targets of -100 are ignored)."""
    keep = targets != -100 if mask is None else mask & (targets != -100)
    return (logits.argmax(-1)[keep] == targets[keep]).float().mean().item()

# %% [markdown]
# ### seq.1
# Regarding word embeddings:
# - A. Explain this term and why it's used in the context of a language model.
# - B. Can a language model like the sentiment analysis example from the tutorials be
#   trained without an embedding (i.e. trained directly on sequences of tokens)? If yes,
#   what would be the consequence for the trained model? if no, why not?

# %% [markdown]
# **Answer:** A word embedding is a learned lookup table that maps each token id to a dense vector of $d$ numbers, so that the model works on vectors whose geometry it can learn (tokens that play similar roles get similar vectors); a model can be trained on raw token ids without it, but either it is an embedding in disguise (one-hot inputs: the first linear layer *is* an embedding, computed wastefully) or it gets a much worse model (ids fed as numbers impose an arbitrary order and distance between tokens).
#
# **A.** A tokenizer turns text into integer ids $x_t \in \{0, \dots, V-1\}$ ($V$ = vocabulary size). An id is a *name*, not a quantity: token 17 is not "more" than token 16, and nothing about the numbering says which words are related. An embedding is a matrix $\boldsymbol{E} \in \mathbb{R}^{V \times d}$ with one learned row per token; the input id $x_t$ is replaced by the row $\boldsymbol{e}_{x_t} = \boldsymbol{E}[x_t, :] \in \mathbb{R}^{d}$, with $d \ll V$ in practice (hundreds against tens of thousands). Because the rows are trained with the rest of the model, tokens that the task treats alike end up with similar vectors (synonyms, words with the same sentiment, the same grammatical role), which lets the layers that follow share what they learn across tokens and lets a language model generalise to word combinations it never saw. It is also cheap: the lookup is an index operation, and it replaces a $V$-dimensional sparse input with a dense $d$-dimensional one. The experiment below shows both: with an embedding the model solves the task, and the vectors it learned for words of the same sentiment are similar to each other and unlike those of the opposite sentiment, while neutral words contribute almost nothing.
#
# **B.** Yes, but what "without an embedding" means decides the consequence.
# (i) If tokens are fed as one-hot vectors $\boldsymbol{o}_{x_t} \in \{0,1\}^V$, the first layer is a linear map $\boldsymbol{W} \in \mathbb{R}^{d \times V}$ and $\boldsymbol{W}\boldsymbol{o}_{x_t} = \boldsymbol{W}[:, x_t]$: it selects one column, exactly an embedding with $\boldsymbol{E} = \boldsymbol{W}^\top$ (the experiment checks that the outputs are identical). Such a model trains as well as one with an embedding, but it multiplies a $V$-vector of zeros per token ($V d$ multiply-adds instead of a $d$-row copy, and $V$ floats of input per token), which is why nobody does it at real vocabulary sizes.
# (ii) If the ids are fed as numbers ($x_t$ as a scalar feature), the first layer computes $x_t \boldsymbol{a} + \boldsymbol{b}$: every token is placed on one line, in the order of the arbitrary numbering, so tokens with neighbouring ids look alike whatever they mean and the task must be solved by carving arbitrary sets of ids out of that line with nonlinear units. Such a model trains, but to a much lower accuracy, it generalises poorly, and what it learns depends on how the vocabulary happened to be numbered. The experiment: a sentiment task on random token sequences, the same model (per-token vector, ReLU, mean over the sequence, linear classifier) fed through an embedding, through one-hot vectors, and through raw ids.

# %%
# A sentiment task: 40 token ids; 8 random ids are positive words, 8 negative, the rest
# neutral. A sequence of 10 tokens is positive when it has more positive than negative words.
V, LENGTH, DIM = 40, 10, 16
sentiment = torch.zeros(V)
word_ids = torch.randperm(V)
sentiment[word_ids[:8]], sentiment[word_ids[8:16]] = 1.0, -1.0


def sentiment_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, V, (3 * n, LENGTH))
    score = sentiment[tokens].sum(1)
    keep = score != 0  # no ties
    return tokens[keep][:n], (score[keep][:n] > 0).long()


class BagClassifier(nn.Module):
    """token -> vector (the front end under test) -> ReLU -> mean over time -> 2 logits."""

    def __init__(self, front_end: str) -> None:
        super().__init__()
        self.front_end = front_end
        in_features = {"embedding": None, "one-hot": V, "raw id": 1}[front_end]
        if in_features is None:
            self.first = nn.Embedding(V, DIM)
        else:  # raw ids get a bias, so that their line need not pass through the origin
            self.first = nn.Linear(in_features, DIM, bias=front_end == "raw id")
        self.head = nn.Linear(DIM, 2)

    def token_vectors(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.front_end == "embedding":
            return self.first(tokens)
        if self.front_end == "one-hot":
            return self.first(F.one_hot(tokens, V).float())
        return self.first((tokens.float() / (V - 1)).unsqueeze(-1))  # the id as a number in [0, 1]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.token_vectors(tokens)).mean(1))


def fit_classifier(front_end: str, seed: int, steps: int = 100) -> tuple[BagClassifier, float]:
    torch.manual_seed(seed)
    model = BagClassifier(front_end)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        loss = F.cross_entropy(model(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model, accuracy(model(test_x), test_y)


train_x, train_y = sentiment_data(1000)
test_x, test_y = sentiment_data(2000)
front_ends = ("embedding", "one-hot", "raw id")
results = {fe: [fit_classifier(fe, seed) for seed in (0, 1)] for fe in front_ends}
print(f"{'front end':>10} | test accuracy (seed 0, seed 1)")
for fe in front_ends:
    print(f"{fe:>10} | " + ", ".join(f"{acc:.3f}" for _, acc in results[fe]))

# the first linear layer on one-hot inputs is an embedding lookup with E = W^T, exactly
one_hot_model = results["one-hot"][0][0]
as_lookup = one_hot_model.first.weight.T[test_x]
assert torch.equal(one_hot_model.token_vectors(test_x), as_lookup), "Linear(one_hot(x)) == W^T[x]"

worst = {fe: min(acc for _, acc in results[fe]) for fe in front_ends}
best_raw = max(acc for _, acc in results["raw id"])
assert worst["embedding"] > 0.97 and worst["one-hot"] > 0.97, f"embedding / one-hot solve the task: {worst}"
assert best_raw < worst["embedding"] - 0.10, f"raw ids are clearly worse: {best_raw:.3f} vs {worst['embedding']:.3f}"

# %% [markdown]
# What the learned vectors look like. The model uses each word through $\operatorname{ReLU}(\boldsymbol{e}_i)$; left, the cosine similarity of these vectors between all pairs of words (sorted by sentiment); right, each word's contribution to the "positive" logit margin, $(\boldsymbol{w}_{+} - \boldsymbol{w}_{-})^\top \operatorname{ReLU}(\boldsymbol{e}_i)$, the direction the classifier reads.

# %%
embedding_model = results["embedding"][0][0]
used_vectors = F.relu(embedding_model.first.weight.detach())
unit = F.normalize(used_vectors, dim=1)
cosine = unit @ unit.T
head_weight = embedding_model.head.weight.detach()
word_score = used_vectors @ (head_weight[1] - head_weight[0])
groups = {"negative": sentiment == -1, "neutral": sentiment == 0, "positive": sentiment == 1}


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    block = cosine[a][:, b]
    if torch.equal(a, b):  # leave out each word's similarity to itself
        return ((block.sum() - block.diagonal().sum()) / (block.numel() - block.shape[0])).item()
    return block.mean().item()


same_pos = mean_cosine(groups["positive"], groups["positive"])
same_neg = mean_cosine(groups["negative"], groups["negative"])
opposite = mean_cosine(groups["positive"], groups["negative"])
print(f"mean cosine: positive-positive {same_pos:.2f}, negative-negative {same_neg:.2f}, "
      f"positive-negative {opposite:.2f}")
for name, mask in groups.items():
    print(f"{name:>8} words: margin contribution from {word_score[mask].min():7.2f} to {word_score[mask].max():6.2f}")

order = torch.argsort(sentiment)
fig, (ax_cos, ax_score) = plt.subplots(1, 2, figsize=(8, 3.2))
image = ax_cos.imshow(cosine[order][:, order], cmap="RdBu_r", vmin=-1, vmax=1)
ax_cos.set_title("cosine of ReLU(e_i): negative | neutral | positive", fontsize=9)
ax_cos.set_xticks([])
ax_cos.set_yticks([])
fig.colorbar(image, ax=ax_cos, fraction=0.046)
for row, (name, colour) in enumerate(zip(groups, ("tab:red", "tab:gray", "tab:green"))):
    ax_score.scatter(word_score[groups[name]], [row] * int(groups[name].sum()), c=colour, s=18)
ax_score.set_yticks(range(3), list(groups))
ax_score.set_xlabel("contribution to the positive-class margin")
plt.tight_layout()
plt.show()

assert min(same_pos, same_neg) > opposite + 0.25, f"same-sentiment words get similar vectors: {same_pos:.2f}, {same_neg:.2f} vs {opposite:.2f}"
neutral_size = word_score[groups["neutral"]].abs().max()
assert word_score[groups["positive"]].min() > 3 * neutral_size, "positive words all push towards 'positive'"
assert word_score[groups["negative"]].max() < -3 * neutral_size, "negative words all push towards 'negative'"

# %% [markdown]
# ### seq.2
# Considering the following snippet, explain:
# - A. What does `Y` contain? why this output shape?
# - B. How you would implement `nn.Embedding` yourself using only torch tensors.

# %%
import torch.nn as nn

X = torch.randint(low=0, high=42, size=(5, 6, 7, 8))
embedding = nn.Embedding(num_embeddings=42, embedding_dim=42000)
Y = embedding(X)
print(f"{Y.shape=}")

# %% [markdown]
# **Answer:** `Y[b, i, j, k, :]` is row `X[b, i, j, k]` of the embedding's weight $\boldsymbol{W} \in \mathbb{R}^{42 \times 42000}$, so `Y` has shape `X.shape + (42000,)` = (5, 6, 7, 8, 42000); `nn.Embedding` is a learned $V \times d$ parameter indexed by the ids, `W[X]`, which autograd differentiates by adding each output gradient into the row it was read from.
#
# **A.** `nn.Embedding(42, 42000)` holds one parameter, `weight`, of shape $(42, 42000)$: one vector of length 42000 for each of the 42 possible ids, initialised $\mathcal{N}(0, 1)$. Calling it on an integer tensor of *any* shape replaces every id by its row:
# $$
# Y_{b,i,j,k,:} = \boldsymbol{W}_{X_{b,i,j,k},\,:} ,
# $$
# so the output keeps all of the input's axes (here 4, whatever they mean: batch, sequence, ...) and appends one axis of size `embedding_dim`. `X` holds $5 \cdot 6 \cdot 7 \cdot 8 = 1680$ ids, each drawn from $\{0, \dots, 41\}$, hence `Y.shape = (5, 6, 7, 8, 42000)`. `Y` contains nothing new: it holds at most 42 distinct vectors (each row of $\boldsymbol{W}$ repeated about $1680 / 42 = 40$ times), so as a $1680 \times 42000$ matrix its rank is at most 42. It is nonetheless large: $1680 \cdot 42000 = 70\,560\,000$ float32 numbers, $282\,240\,000$ bytes (282 MB), 40 times the weight's 7 MB. This configuration is unusual: an embedding normally has $d \ll V$ (it compresses a huge vocabulary into short vectors); here $d = 1000\,V$: the 42000 coordinates describe only 42 points, which span at most 42 dimensions, so whatever the next layer computes from them it could compute from a 42-dimensional code, at a thousandth of the memory. The cell below checks the lookup on all 1680 positions (in chunks, so as not to make a second copy of `Y`) and measures the memory `Y` occupies.
#
# **B.** An embedding is a parameter matrix and an index: `self.weight = nn.Parameter(torch.randn(V, d))` and `forward(ids) = self.weight[ids]` (advanced indexing with an integer tensor returns `ids.shape + (d,)`). The same result is `one_hot(ids, V).float() @ self.weight`, but that builds and multiplies a $V$-times larger tensor. Autograd handles the backward pass: the gradient of `weight[ids]` is an `index_add`, so row $r$ receives $\sum_{p:\, \text{ids}_p = r} \partial L / \partial Y_p$, the sum of the output gradients at the positions where $r$ was looked up, and rows of ids that did not occur get exactly zero. `dlsummary.sequence.Embedding` is this module (plus clear errors for float ids and ids outside $[0, V)$, where `nn.Embedding` says only "index out of range in self"); the cell after next shows it gives bit-identical outputs and gradients to `nn.Embedding` with the same weight.

# %%
weight = embedding.weight
flat_ids, flat_rows = X.reshape(-1), Y.view(-1, Y.shape[-1])  # views: no copy of Y
with torch.no_grad():
    lookup_holds = all(torch.equal(flat_rows[start:start + 168], weight[flat_ids[start:start + 168]])
                       for start in range(0, flat_ids.numel(), 168))
y_bytes = Y.untyped_storage().nbytes()
expected_bytes = math.prod(X.shape) * embedding.embedding_dim * Y.element_size()
print(f"Y[b,i,j,k] == weight[X[b,i,j,k]] at all {flat_ids.numel()} positions: {lookup_holds}")
print(f"Y: {Y.dtype}, {y_bytes:,} bytes = {y_bytes / 1e6:.1f} MB; weight: "
      f"{weight.untyped_storage().nbytes() / 1e6:.2f} MB; distinct ids in X: {X.unique().numel()}")
assert Y.shape == (*X.shape, 42000), "the output shape is X.shape + (embedding_dim,)"
assert lookup_holds, "every entry of Y is the weight row named by the id at that position"
assert y_bytes == expected_bytes == 282_240_000, "Y stores 1680 x 42000 float32 numbers"
assert y_bytes == 40 * weight.untyped_storage().nbytes(), "Y is 40 times the size of the weight it copies"
Y = flat_rows = None  # release the 282 MB (assigning, not del: the names stay bound for later cells)

# %%
# Our Embedding against nn.Embedding with the same weight (a smaller d keeps this light).
reference = nn.Embedding(42, 16)
ours = Embedding(42, 16)
with torch.no_grad():
    ours.weight.copy_(reference.weight)
ids = torch.randint(0, 30, (5, 6, 7, 8))  # ids 30..41 never occur
upstream = torch.randn(5, 6, 7, 8, 16)
out_ref, out_ours = reference(ids), ours(ids)
(out_ref * upstream).sum().backward()
(out_ours * upstream).sum().backward()

counts = torch.bincount(ids.reshape(-1), minlength=42)
by_hand = torch.zeros(42, 16).index_add_(0, ids.reshape(-1), upstream.reshape(-1, 16))
rows_with_gradient = (ours.weight.grad != 0).any(1)
print(f"outputs identical: {torch.equal(out_ref, out_ours)}, "
      f"gradients identical: {torch.equal(reference.weight.grad, ours.weight.grad)}")
print(f"rows with nonzero gradient: {rows_with_gradient.sum().item()} of 42 "
      f"(ids present in the input: {(counts > 0).sum().item()})")
assert torch.equal(out_ref, out_ours), "our Embedding's output equals nn.Embedding's"
assert torch.equal(reference.weight.grad, ours.weight.grad), "our Embedding's gradient equals nn.Embedding's"
assert torch.equal(rows_with_gradient, counts > 0), "only rows that were looked up receive gradient"
assert torch.allclose(ours.weight.grad, by_hand), "row r's gradient is the sum of the output gradients where id r occurs"
assert torch.equal(out_ours, F.one_hot(ids, 42).float() @ ours.weight), "lookup == one_hot(ids) @ weight"

# %% [markdown]
# ### seq.3
# Regarding truncated backpropagation through time (TBPTT) with a sequence length of S:
# State whether the following sentences are **true or false**, and explain.
# - A. TBPTT uses a modified version of the backpropagation algorithm.
# - B. To implement TBPTT we only need to limit the length of the sequence provided to the
#   model to length S.
# - C. TBPTT allows the model to learn relations between input that are at most S timesteps
#   apart.

# %% [markdown]
# **Answer:** A false, B false, C false.
#
# A recurrent network applies the same step $\boldsymbol{h}_t = f_\theta(\boldsymbol{h}_{t-1}, \boldsymbol{x}_t)$ along a sequence of length $T$; backpropagation through time (BPTT) is ordinary backpropagation on this unrolled graph, whose gradient $\frac{\partial L_t}{\partial \theta}$ contains products $\prod_{k} \frac{\partial \boldsymbol{h}_k}{\partial \boldsymbol{h}_{k-1}}$ reaching back to $t = 0$. TBPTT cuts the long sequence into segments of $S$ steps and processes them in order: each segment's forward pass *starts from the state the previous segment ended with* (so information flows forward across the whole stream), but that state is treated as a constant (`h.detach()`), so the backward pass stops at the segment start, and the weights are updated after every segment.
#
# **A. False.** The backward pass is the same reverse-mode backpropagation, run on a different graph: the unrolled graph with the edges into each segment's initial state removed. It computes the *exact* gradient of a well-defined function, the sum of the segment losses with every segment's initial state held fixed at its value, not an approximation produced by a different algorithm. It differs from the full BPTT gradient only by the terms that cross segment boundaries. The experiment differentiates both functions numerically (finite differences, an independent method): TBPTT's gradient matches the cut graph's derivative to about $10^{-9}$, differs from the full gradient by a clearly nonzero amount (about 10 % for this small network), and equals it exactly when $S = T$; the loss value itself is unchanged, since the forward pass is the same.
#
# **B. False.** Only chopping the sequence into pieces of length $S$ and feeding them as independent sequences (each starting from a zero state) is not TBPTT: the model then never sees anything before its segment, targets early in a segment that depend on earlier inputs become noise, and the model learns to expect a zero state at every segment start. TBPTT needs three things: (1) carry the final state of segment $k$ as the initial state of segment $k+1$; (2) detach it, so that memory and time do not grow with the stream; (3) order the data so that this carried state belongs to the same stream: cut the corpus into $B$ contiguous streams (`batchify`), so that row $b$ of batch $k+1$ continues row $b$ of batch $k$, and never shuffle segments. On a delayed-recall task ($y_t = x_{t-2}$, $S = 4$), proper TBPTT is right everywhere; "chop only" is at chance on the first two steps of every segment, and run on the stream with its state carried it does no better, because it learned to expect a zero state at every segment start; carrying the state through shuffled segments fails at the same positions during training, since the state it starts from belongs to another stretch of text.
#
# **C. False** (in both directions, for different reasons). *Using* information: because the state's value is carried forward, a TBPTT-trained model's prediction can depend on inputs arbitrarily far back; on a "latch" task (output the value of the last marker seen) a model trained with $S = 4$ recalls markers 12 or more steps old. *Learning*: the gradient never spans more than $S$ steps, so no update links a target to an input more than $S$ steps earlier; a dependency longer than $S$ is learned only when the mechanism that carries it can be learned from shorter spans (the latch: keeping a value 3 steps is the same weights as keeping it 30). A pure long dependency with no shorter counterpart is not learned: delayed recall with delay 6 and $S = 4$ stays close to chance while delay 2 is learned perfectly, and the same delay-6 task trained with $S = 8$ is learned. So "at most $S$ apart" is neither a limit on what the model uses nor a guarantee of what it learns; it is the span of the gradient, which makes longer dependencies hard to learn.

# %%
# A: the same backpropagation, on the graph with each segment's initial state cut.
f64 = torch.float64
torch.manual_seed(0)
cell = nn.RNN(2, 3, batch_first=True, dtype=f64)
readout = nn.Linear(3, 1, dtype=f64)
parameters = [*cell.parameters(), *readout.parameters()]
T_SEQ, S_SEG = 12, 4
xs, ys = torch.randn(2, T_SEQ, 2, dtype=f64), torch.randn(2, T_SEQ, 1, dtype=f64)


def segment_loss(start: int, stop: int, h0: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    out, h_last = cell(xs[:, start:stop], h0)
    return ((readout(out) - ys[:, start:stop]) ** 2).sum(), h_last


def flat_grad() -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in parameters])


def tbptt_gradient(seg: int) -> tuple[torch.Tensor, float]:
    """What TBPTT computes: segments in order, state carried but detached, loss.backward() each."""
    for p in parameters:
        p.grad = None
    h, total = None, 0.0
    for start in range(0, T_SEQ, seg):
        loss, h = segment_loss(start, start + seg, h)
        loss.backward()  # gradients of all segments add up in .grad
        h, total = h.detach(), total + loss.item()
    return flat_grad(), total


def full_bptt_gradient() -> tuple[torch.Tensor, float]:
    for p in parameters:
        p.grad = None
    loss, _ = segment_loss(0, T_SEQ, None)
    loss.backward()
    return flat_grad(), loss.item()


with torch.no_grad():  # the segment-start states of the forward pass, as constants
    starts = [None] + [cell(xs[:, :k])[1] for k in range(S_SEG, T_SEQ, S_SEG)]
cut_graph_loss = lambda: sum(segment_loss(k * S_SEG, (k + 1) * S_SEG, h0)[0] for k, h0 in enumerate(starts))
full_loss = lambda: segment_loss(0, T_SEQ, None)[0]


def finite_difference(loss_fn, eps: float = 1e-6) -> torch.Tensor:
    """Central differences of loss_fn over all parameters: no backpropagation involved."""
    vector = nn.utils.parameters_to_vector(parameters).detach()
    grad = torch.zeros_like(vector)
    with torch.no_grad():
        for j in range(vector.numel()):
            for sign in (1, -1):
                shifted = vector.clone()
                shifted[j] += sign * eps
                nn.utils.vector_to_parameters(shifted, parameters)
                grad[j] += sign * loss_fn().item() / (2 * eps)
        nn.utils.vector_to_parameters(vector, parameters)
    return grad


rel = lambda a, b: ((a - b).norm() / b.norm()).item()
g_tbptt, loss_tbptt = tbptt_gradient(S_SEG)
g_full, loss_full = full_bptt_gradient()
g_whole, _ = tbptt_gradient(T_SEQ)
fd_cut, fd_full = finite_difference(cut_graph_loss), finite_difference(full_loss)
print(f"loss: TBPTT sum of segments {loss_tbptt:.10f}, full sequence {loss_full:.10f}")
print(f"TBPTT gradient vs finite differences of the cut-graph loss: rel. error {rel(g_tbptt, fd_cut):.1e}")
print(f"full BPTT gradient vs finite differences of the full loss:  rel. error {rel(g_full, fd_full):.1e}")
print(f"TBPTT (S={S_SEG}) vs full BPTT gradient: rel. difference {rel(g_tbptt, g_full):.2f}; "
      f"TBPTT with S=T vs full: {rel(g_whole, g_full):.1e}")
assert abs(loss_tbptt - loss_full) < 1e-12, "the forward pass (the loss) is unchanged by truncation"
assert rel(g_tbptt, fd_cut) < 1e-6, "TBPTT's gradient is the exact derivative of the cut-graph loss"
assert rel(g_full, fd_full) < 1e-6, "full BPTT is the exact derivative of the full loss"
assert rel(g_tbptt, g_full) > 0.05, "truncation changes the gradient (the graph), not the algorithm"
assert rel(g_whole, g_full) < 1e-12, "with S = T, TBPTT is plain BPTT"

# %%
# B and C: recurrent models on long token streams, trained with dlsummary.sequence.train_tbptt.
SYMBOLS, ROWS, UPDATES = 4, 32, 400


class Recaller(nn.Module):
    """embedding -> GRU -> linear, with the (x, state) -> (logits, state) signature."""

    def __init__(self, vocabulary: int, hidden: int = 32) -> None:
        super().__init__()
        self.embed, self.gru = nn.Embedding(vocabulary, 8), nn.GRU(8, hidden, batch_first=True)
        self.out = nn.Linear(hidden, SYMBOLS)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        h, state = self.gru(self.embed(x), state)
        return self.out(h), state


def delayed_recall(n: int, delay: int, g: torch.Generator):
    """x_t uniform over the symbols; target y_t = x_{t - delay}."""
    x = torch.randint(0, SYMBOLS, (n,), generator=g)
    y = torch.full((n,), -100)
    y[delay:] = x[:-delay]
    return x, y


def latch(n: int, g: torch.Generator, p_marker: float = 0.12):
    """Token 0 is a blank, token 1+v a marker of value v; target: the value of the last
    marker. Also returns each target's age (steps since that marker)."""
    is_marker = torch.rand(n, generator=g) < p_marker
    value = torch.randint(0, SYMBOLS, (n,), generator=g)
    last = torch.where(is_marker, torch.arange(n), -1).cummax(0).values
    y = torch.where(last >= 0, value[last.clamp(min=0)], -100)
    return torch.where(is_marker, value + 1, 0), y, torch.arange(n) - last


def shuffle_segments(streams: torch.Tensor, seg: int, g: torch.Generator) -> torch.Tensor:
    """The classic mistake: a dataset of windows with shuffle=True (segment order lost)."""
    rows, steps = streams.shape
    order = torch.randperm(steps // seg, generator=g)
    return streams.view(rows, steps // seg, seg)[:, order].reshape(rows, steps)


cross_entropy = lambda logits, y: F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1), ignore_index=-100)


def train_recaller(stream, seg: int, seed: int, carry_state: bool = True, shuffle: bool = False):
    """Train on one long stream (cut into ROWS contiguous rows) for UPDATES segments."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x, y = (batchify(s, ROWS) for s in stream(ROWS * UPDATES * seg, g)[:2])
    if shuffle:
        x, y = shuffle_segments(x, seg, torch.Generator().manual_seed(seed)), shuffle_segments(y, seg, torch.Generator().manual_seed(seed))
    model = Recaller(vocabulary=SYMBOLS + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_tbptt(model, x, y, seg, cross_entropy, optimizer, carry_state=carry_state)
    return model


test_g = torch.Generator().manual_seed(1234)
x_test, y_test = (batchify(s, 16) for s in delayed_recall(16 * 400, 2, test_g))
position = (torch.arange(x_test.shape[1]) % 4).expand_as(x_test)  # position inside a segment of S = 4
regimes = {  # name: (training options, how the test stream is run: carried state?, shuffled?)
    "TBPTT (carry, ordered)": ({}, True, False),
    "chop only (reset)": ({"carry_state": False}, False, False),
    "carry, shuffled segments": ({"shuffle": True}, True, True),
}
table = {}
for name, (options, carry, shuffled) in regimes.items():
    model = train_recaller(lambda n, g: delayed_recall(n, 2, g), 4, seed=0, **options)
    xs_run, ys_run = x_test, y_test
    if shuffled:
        xs_run, ys_run = shuffle_segments(x_test, 4, torch.Generator().manual_seed(7)), shuffle_segments(y_test, 4, torch.Generator().manual_seed(7))
    as_trained = run_in_segments(model, xs_run, 4, carry_state=carry)
    streamed = run_in_segments(model, x_test, 4, carry_state=True)
    table[name] = {
        "per position": [accuracy(as_trained, ys_run, position == p) for p in range(4)],
        "first 2 steps": accuracy(as_trained, ys_run, position < 2),
        "last 2 steps": accuracy(as_trained, ys_run, position >= 2),
        "streamed": accuracy(streamed, y_test),
    }
print("delayed recall y_t = x_{t-2}, S = 4, accuracy (chance 0.25)")
print(f"{'regime':>26} | first 2 steps of a segment | last 2 steps | run as one stream")
for name, row in table.items():
    print(f"{name:>26} | {row['first 2 steps']:26.3f} | {row['last 2 steps']:12.3f} | {row['streamed']:.3f}")

fig, ax = plt.subplots(figsize=(5, 2.8))
for name, row in table.items():
    ax.plot(range(4), row["per position"], marker="o", label=name)
ax.axhline(1 / SYMBOLS, color="gray", ls=":", label="chance")
ax.set_xticks(range(4))
ax.set_xlabel("position inside the segment (S = 4)")
ax.set_ylabel("test accuracy")
ax.legend(fontsize=8)
plt.tight_layout()
plt.show()

proper, chopped, shuffled_row = table.values()
assert min(proper["first 2 steps"], proper["last 2 steps"]) > 0.95, "TBPTT solves the task at every position"
assert chopped["first 2 steps"] < 0.35 < 0.95 < chopped["last 2 steps"], "chop only: chance where the cause lies in the previous segment"
assert chopped["streamed"] < proper["streamed"] - 0.2, "a chopped model also fails when run as a stream"
assert shuffled_row["first 2 steps"] < 0.35, "with shuffled segments the carried state belongs to another stream"

# %%
# C: using information older than S (latch) vs learning a dependency longer than S (delayed recall).
recall = {}
for delay, seg in ((2, 4), (6, 4), (6, 8)):
    model = train_recaller(lambda n, g, d=delay: delayed_recall(n, d, g), seg, seed=0)
    xr, yr = (batchify(s, 16) for s in delayed_recall(16 * 400, delay, torch.Generator().manual_seed(99)))
    recall[(delay, seg)] = accuracy(run_in_segments(model, xr, seg), yr)

xl, yl, age = (batchify(s, 16) for s in latch(16 * 400, torch.Generator().manual_seed(99)))
age_bins = [(1, 4), (4, 8), (8, 12), (12, 20), (20, 1000)]
latch_acc = {}
for name, carry in (("TBPTT, S = 4", True), ("chop only, S = 4", False)):
    model = train_recaller(latch, 4, seed=0, carry_state=carry)
    logits = run_in_segments(model, xl, 4, carry_state=carry)
    latch_acc[name] = [accuracy(logits, yl, (age >= lo) & (age < hi)) for lo, hi in age_bins]

print("delayed recall, accuracy (chance 0.25): " + ", ".join(f"delay {d}, S = {s}: {a:.3f}" for (d, s), a in recall.items()))
print("latch, accuracy by the age of the marker to recall:")
for name, accs in latch_acc.items():
    print(f"  {name:>17}: " + ", ".join(f"age {lo}-{hi - 1 if hi < 1000 else '...'}: {a:.3f}" for (lo, hi), a in zip(age_bins, accs)))

fig, (ax_latch, ax_recall) = plt.subplots(1, 2, figsize=(8, 2.9))
labels = [f"{lo}-{hi - 1}" if hi < 1000 else f"{lo}+" for lo, hi in age_bins]
for name, accs in latch_acc.items():
    ax_latch.plot(labels, accs, marker="o", label=name)
ax_latch.axhline(1 / SYMBOLS, color="gray", ls=":")
ax_latch.set_xlabel("age of the marker (steps)")
ax_latch.set_ylabel("accuracy")
ax_latch.set_title("latch: using information older than S", fontsize=9)
ax_latch.legend(fontsize=8)
ax_recall.bar([f"delay {d}\nS = {s}" for d, s in recall], list(recall.values()), color=["tab:green", "tab:red", "tab:blue"])
ax_recall.axhline(1 / SYMBOLS, color="gray", ls=":")
ax_recall.set_title("delayed recall: learning a dependency", fontsize=9)
plt.tight_layout()
plt.show()

tbptt_latch, chop_latch = latch_acc.values()
assert min(tbptt_latch[2:]) > 0.8, f"a TBPTT model (S = 4) uses markers 8 to 20+ steps old: {tbptt_latch}"
assert max(chop_latch[2:]) < 0.5, f"without the carried state those markers are out of reach: {chop_latch}"
assert recall[(2, 4)] > 0.95, "a dependency shorter than S is learned"
assert recall[(6, 4)] < 0.45, "a pure dependency longer than S is not learned (near chance 0.25)"
assert recall[(6, 8)] > recall[(6, 4)] + 0.25, "the same dependency is learnable once S exceeds it"
