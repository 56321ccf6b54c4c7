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
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

from dlsummary import plot_style, seed_everything
from dlsummary.evidence import check, control
from dlsummary.gradients import numerical_gradient
from dlsummary.sequence import Embedding, batchify, run_in_segments, train_tbptt

plot_style()
seed_everything(0)


def accuracy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Fraction of argmax predictions equal to the targets (targets of -100 are ignored)."""
    keep = targets != -100 if mask is None else mask & (targets != -100)
    return (logits.argmax(-1)[keep] == targets[keep]).float().mean().item()

# %% [markdown]
# ### seq.1 · word embeddings
# Regarding word embeddings:
# - A. Explain this term and why it's used in the context of a language model.
# - B. Can a language model like the sentiment analysis example from the tutorials be
#   trained without an embedding (i.e. trained directly on sequences of tokens)? If yes,
#   what would be the consequence for the trained model? if no, why not?

# %% [markdown]
# **Answer:**
#
# **A.** An embedding is a learned table $\boldsymbol{E} \in \mathbb{R}^{V \times d}$ with one row per vocabulary token ($d \ll V$); each token id $x_t$ is replaced by its row $\boldsymbol{e}_{x_t} = \boldsymbol{E}[x_t, :]$. Token ids are names, not quantities (id 17 is not "more" than id 16), so the model needs a representation whose geometry it can learn: the rows are trained with the model, so tokens the task treats alike get similar vectors, and what later layers learn about one token carries over to similar ones.
#
# **B.** Yes. Fed as one-hot vectors, the first linear layer computes $\boldsymbol{W}\boldsymbol{o}_{x_t} = \boldsymbol{W}[:, x_t]$: it *is* an embedding ($\boldsymbol{E} = \boldsymbol{W}^\top$), trains just as well, but costs $V$ times more input and compute. Fed as raw numbers, the ids put all tokens on one line in the arbitrary vocabulary order ($x_t \boldsymbol{a} + \boldsymbol{b}$), so tokens with neighbouring ids look alike whatever they mean: the model trains, but to a much lower accuracy.

# %% [markdown]
# **Why, in detail.** A sentiment task on random token sequences: 40 token ids, 8 of them positive words and 8 negative, the rest neutral; a sequence of 10 tokens is positive when it has more positive than negative words. The same model (a vector per token, ReLU, mean over the sequence, a linear classifier) is fed through an embedding, through one-hot vectors and through raw ids, two seeds each. With an embedding or one-hot inputs the model solves the task; with raw ids it stays between 50% and 60%, because it must carve arbitrary sets of ids out of one line with a few ReLU units. The one-hot model's token vectors are exactly the rows $\boldsymbol{W}^\top[x_t]$, bit for bit. The cost, counted by PyTorch's FLOP counter on the test set: the one-hot layer does $V d = 640$ multiply-adds per token, the lookup none (it copies $d$ numbers); the one-hot input is also $V$ numbers per token instead of one id.
#
# What the learned vectors look like: the model uses each word through $\operatorname{ReLU}(\boldsymbol{e}_i)$. Same-sentiment words get similar vectors (mean cosine about 0.4 or more within each sentiment, about 0 between opposite sentiments), while the same measurement on the untrained embedding shows no such grouping; every positive word pushes the classifier's margin $(\boldsymbol{w}_{+} - \boldsymbol{w}_{-})^\top \operatorname{ReLU}(\boldsymbol{e}_i)$ up, every negative word down, and neutral words contribute little.

# %%
# The sentiment task: 40 token ids; 8 random ids are positive words, 8 negative, the rest
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


def fit_classifier(front_end: str, seed: int, steps: int = 60) -> tuple[BagClassifier, float]:
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

worst = {fe: min(acc for _, acc in results[fe]) for fe in front_ends}
best_raw = max(acc for _, acc in results["raw id"])
one_hot_model = results["one-hot"][0][0]
check("seq.1.B", "a linear layer on one-hot inputs is an embedding lookup with E = W^T, exactly",
      torch.equal(one_hot_model.token_vectors(test_x), one_hot_model.first.weight.T[test_x]),
      "==", True)
check("seq.1.A", "with an embedding the model solves the task (both seeds)",
      worst["embedding"], ">", 0.97)
check("seq.1.B", "one-hot inputs train as well as an embedding (both seeds)", worst["one-hot"], ">", 0.97)
control("seq.1.B", "raw ids as numbers: the best seed stays far below the worst embedding run",
        worst["embedding"] - best_raw, ">", 0.3)

# The cost: FLOPs counted by PyTorch for the first layer on the test set (2 per multiply-add).
def first_layer_flops(model: BagClassifier) -> int:
    with FlopCounterMode(display=False) as counter:
        model.token_vectors(test_x)
    return counter.get_total_flops()


macs_per_token = {fe: first_layer_flops(results[fe][0][0]) / 2 / test_x.numel() for fe in front_ends[:2]}
print("first layer, multiply-adds per token: " + ", ".join(f"{fe} {m:g}" for fe, m in macs_per_token.items()))
check("seq.1.B", "one-hot inputs cost V x d multiply-adds per token", macs_per_token["one-hot"], "==", V * DIM)
control("seq.1.B", "the embedding lookup costs no multiply-adds (it copies d numbers)",
        macs_per_token["embedding"], "==", 0)

# %%
def word_geometry(model: BagClassifier) -> dict[str, float]:
    """Mean cosine of ReLU(e_i) within and across sentiment groups, and each word's push on
    the positive-class margin, (w+ - w-)^T ReLU(e_i)."""
    used = F.relu(model.first.weight.detach())
    unit = F.normalize(used, dim=1)
    cosine = unit @ unit.T
    head = model.head.weight.detach()
    score = used @ (head[1] - head[0])

    def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        block = cosine[a][:, b]
        if torch.equal(a, b):  # leave out each word's similarity to itself
            return ((block.sum() - block.diagonal().sum()) / (block.numel() - block.shape[0])).item()
        return block.mean().item()

    pos, neg, neu = sentiment == 1, sentiment == -1, sentiment == 0
    return {"cosine": cosine, "score": score, "same": min(mean_cosine(pos, pos), mean_cosine(neg, neg)),
            "opposite": mean_cosine(pos, neg), "positive words' least push": score[pos].min().item(),
            "negative words' least push": -score[neg].max().item(),
            "largest neutral push": score[neu].abs().max().item()}


embedding_model = results["embedding"][0][0]
trained = word_geometry(embedding_model)
torch.manual_seed(0)
untrained = word_geometry(BagClassifier("embedding"))  # the same model before training
for name, geometry in (("trained", trained), ("untrained", untrained)):
    print(f"{name:>9}: mean cosine same sentiment (lower of the two groups) {geometry['same']:.2f}, "
          f"opposite sentiment {geometry['opposite']:.2f}")
print("trained: " + ", ".join(f"{key} {trained[key]:.1f}" for key in list(trained)[4:]))

groups = {"negative": sentiment == -1, "neutral": sentiment == 0, "positive": sentiment == 1}
order = torch.argsort(sentiment)
fig, (ax_cos, ax_score) = plt.subplots(1, 2, figsize=(8.5, 3.2), gridspec_kw={"wspace": 0.45})
image = ax_cos.imshow(trained["cosine"][order][:, order], cmap="RdBu_r", vmin=-1, vmax=1)
ax_cos.set_title("cosine of ReLU(e_i), words sorted\nnegative | neutral | positive", fontsize=9)
ax_cos.set_xticks([])
ax_cos.set_yticks([])
fig.colorbar(image, ax=ax_cos, fraction=0.046)
for row, (name, colour) in enumerate(zip(groups, ("tab:red", "tab:gray", "tab:green"))):
    ax_score.scatter(trained["score"][groups[name]], [row] * int(groups[name].sum()), c=colour, s=18)
ax_score.set_yticks(range(3), list(groups))
ax_score.set_xlabel("contribution to the positive-class margin")
plt.show()

check("seq.1.A", "same-sentiment words get similar vectors, opposite ones not",
      trained["same"] - trained["opposite"], ">", 0.25)
control("seq.1.A", "the untrained embedding shows no such grouping (the similarity is learned)",
        untrained["same"] - untrained["opposite"], "<", 0.1)
check("seq.1.A", "every positive word pushes towards 'positive' far more than any neutral word",
      trained["positive words' least push"] / trained["largest neutral push"], ">", 3)
check("seq.1.A", "every negative word pushes towards 'negative' far more than any neutral word",
      trained["negative words' least push"] / trained["largest neutral push"], ">", 3)

# %% [markdown]
# ### seq.2 · what nn.Embedding returns
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
# **Answer:**
#
# **A.** The embedding holds one learned weight matrix $\boldsymbol{W} \in \mathbb{R}^{42 \times 42000}$, a length-42000 vector for each of the 42 ids. It replaces every id by its row, `Y[b, i, j, k, :] = W[X[b, i, j, k], :]`, so the output keeps all axes of `X` and appends one of size `embedding_dim`: `Y.shape = (5, 6, 7, 8, 42000)`. `Y` holds 1680 vectors but at most 42 distinct ones, 282 MB of float32.
#
# **B.** A parameter matrix and an index: `self.weight = nn.Parameter(torch.randn(V, d))` and `forward(ids) = self.weight[ids]` (integer indexing returns `ids.shape + (d,)`), equal to `one_hot(ids, V).float() @ self.weight` without building the one-hot tensor. Autograd gives the backward pass: row $r$ receives the sum of the output gradients where id $r$ occurs; rows of absent ids get zero.

# %% [markdown]
# **Why, in detail.** `X` holds $5 \cdot 6 \cdot 7 \cdot 8 = 1680$ ids from $\{0, \dots, 41\}$, so `Y` stores $1680 \cdot 42000$ float32 numbers, 282 MB, and as a $1680 \times 42000$ matrix it has rank at most 42: whatever the next layer computes from it, it could compute from a 42-dimensional code. Such a $d \gg V$ is unusual: an embedding normally compresses a large vocabulary into short vectors. The first cell below checks the lookup at all 1680 positions (in chunks, so as not to copy `Y`), counts the distinct vectors and measures the memory. The second compares `dlsummary.sequence.Embedding`, written exactly as in B (plus clear errors for float ids and ids outside $[0, V)$), with `nn.Embedding` on the same weight: outputs and gradients are bit-identical, and only the rows of ids that occur receive a gradient, the sum of the output gradients at their positions.

# %%
weight = embedding.weight
flat_ids, flat_rows = X.reshape(-1), Y.view(-1, Y.shape[-1])  # views: no copy of Y
with torch.no_grad():
    lookup_holds = all(torch.equal(flat_rows[start:start + 168], weight[flat_ids[start:start + 168]])
                       for start in range(0, flat_ids.numel(), 168))
    distinct_vectors = torch.unique(flat_rows[:, :16], dim=0).shape[0]  # 16 coordinates tell rows apart
y_bytes = Y.untyped_storage().nbytes()
print(f"Y[b,i,j,k] == weight[X[b,i,j,k]] at all {flat_ids.numel()} positions: {lookup_holds}")
print(f"Y: {Y.dtype}, {y_bytes:,} bytes = {y_bytes / 1e6:.1f} MB; weight: "
      f"{weight.untyped_storage().nbytes() / 1e6:.2f} MB; distinct vectors in Y: {distinct_vectors}")
check("seq.2.A", "the output shape is X.shape + (embedding_dim,)", list(Y.shape), "==", [5, 6, 7, 8, 42000])
check("seq.2.A", "every entry of Y is the weight row named by the id at that position", lookup_holds,
      "==", True)
check("seq.2.A", "Y holds at most 42 distinct vectors", distinct_vectors, "<=", 42)
check("seq.2.A", "Y occupies about 282 MB", y_bytes / 1e6, "~", 282, tol=1)
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
check("seq.2.B", "weight[ids] gives nn.Embedding's output", torch.equal(out_ref, out_ours), "==", True)
check("seq.2.B", "autograd through weight[ids] gives nn.Embedding's gradient",
      torch.equal(reference.weight.grad, ours.weight.grad), "==", True)
check("seq.2.B", "only rows that were looked up receive gradient",
      torch.equal(rows_with_gradient, counts > 0), "==", True)
check("seq.2.B", "row r's gradient is the sum of the output gradients where id r occurs",
      (ours.weight.grad - by_hand).abs().max().item(), "<", 1e-4)
check("seq.2.B", "the lookup equals one_hot(ids) @ weight",
      torch.equal(out_ours, F.one_hot(ids, 42).float() @ ours.weight), "==", True)

# %% [markdown]
# ### seq.3 · truncated backpropagation through time
# Regarding truncated backpropagation through time (TBPTT) with a sequence length of S:
# State whether the following sentences are **true or false**, and explain.
# - A. TBPTT uses a modified version of the backpropagation algorithm.
# - B. To implement TBPTT we only need to limit the length of the sequence provided to the
#   model to length S.
# - C. TBPTT allows the model to learn relations between input that are at most S timesteps
#   apart.

# %% [markdown]
# **Answer:**
#
# **A. False.** TBPTT runs ordinary backpropagation on a different graph: the unrolled network with the edge into each segment's initial state cut (`h = h.detach()`). Its gradient is the exact gradient of the summed segment losses with each initial state held constant; it differs from full BPTT only by the terms crossing segment boundaries, and equals it when $S = T$.
#
# **B. False.** Independent pieces of length $S$, each started from a zero state, are not TBPTT: the model never sees anything before its piece. TBPTT also (1) carries each segment's final state into the next, (2) detaches it, so memory and compute do not grow with the stream, and (3) keeps segments in order (each batch row one contiguous stream), so the carried state belongs to the same text; with shuffled segments the model learns to ignore it.
#
# **C. False.** The gradient reaches at most $S - 1$ steps back, so a dependency longer than $S - 1$ steps with no shorter counterpart is not learned. But the carried state lets the model *use* older information, and a mechanism learnable within $S$ steps, such as holding a value, works over any distance: a model trained with $S = 4$ recalls values 16 or more steps old.

# %% [markdown]
# **Why, in detail.** A recurrent network applies $\boldsymbol{h}_t = f_\theta(\boldsymbol{h}_{t-1}, \boldsymbol{x}_t)$ along the sequence; the full gradient $\partial L_t / \partial \theta$ contains products $\prod_k \partial \boldsymbol{h}_k / \partial \boldsymbol{h}_{k-1}$ reaching back to $t = 0$. TBPTT processes segments of $S$ steps in order; each segment's forward pass starts from the previous segment's final state (so information flows forward through the whole stream), but that state is a constant for the backward pass, and the weights are updated after every segment. The forward computation, and so the loss, is the same as without truncation.
#
# *A, measured.* A small RNN on a sequence of $T = 12$ steps, $S = 4$, in float64. Finite differences (no backpropagation involved) of the cut-graph loss agree with TBPTT's gradient to about $10^{-10}$ relative error; against the full gradient TBPTT differs by about 10%; with $S = T$ it is the full gradient. Without the detach the graph behind each segment's loss, which backward keeps in memory and traverses, grows with every segment (counted in autograd nodes: after 16 segments about 12 times the first segment's); with it the graph is the same size at every segment.
#
# *B and C, measured: a latch.* Token 0 is a blank, token $1 + v$ a marker of value $v \in \{0, 1, 2, 3\}$; the target at every step is the value of the last marker seen (chance 0.25). With markers rare (12% of steps), most targets depend on a marker in an *earlier* segment. A GRU is trained with $S = 4$ in three ways, and all are measured on the ordered test stream, accuracy by the age of the marker to recall:
# - proper TBPTT recalls markers of every age (about 0.92 or more, also 16+ steps old);
# - "chop only" (state reset at each segment), used as it was trained, is at chance for every marker older than its segment. (Run with its state carried, the same weights do recall old markers: holding a value is the same weights for 3 steps and for 30, so on this task what fails is running the model without the state.)
# - carrying the state through *shuffled* segments: during training the carried state comes from unrelated text and the targets before the segment's first marker cannot be predicted from it, so the model learns to trust only recent markers. On the ordered stream it recalls markers younger than $S$ but falls to chance for older ones, although the state it is given is now the right one.
#
# *C, measured: delayed recall* $y_t = x_{t-d}$ with $S = 4$, the same model and data budget. Delay 3 $= S - 1$ is learned (position 3 of each segment sees position 0); delay 4 $= S$ stays near chance, because no segment contains both ends of any pair. Holding a symbol for 4 steps is not hard in itself: the latch model holds values for 16 steps and more. So the limit is the gradient's span of $S - 1$ steps, for a dependency that can only be learned from its own pairs; the latch shows that it is not a limit on what the model can use.

# %%
# A: the same backpropagation, on the graph with each segment's initial state cut.
f64 = torch.float64
torch.manual_seed(0)


class Regressor(nn.Module):
    """A small RNN with a linear readout: (x, h0) -> (prediction, final state)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.RNN(2, 3, batch_first=True, dtype=f64)
        self.readout = nn.Linear(3, 1, dtype=f64)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        out, h_last = self.cell(x, h0)
        return self.readout(out), h_last


regressor = Regressor()
shapes = {name: p.shape for name, p in regressor.named_parameters()}
theta0 = nn.utils.parameters_to_vector(regressor.parameters()).detach()
T_SEQ, S_SEG = 12, 4
xs, ys = torch.randn(2, T_SEQ, 2, dtype=f64), torch.randn(2, T_SEQ, 1, dtype=f64)


def as_parameters(theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The flat vector theta as the regressor's named parameters."""
    chunks = theta.split([shape.numel() for shape in shapes.values()])
    return {name: chunk.view(shape) for (name, shape), chunk in zip(shapes.items(), chunks)}


def segment_loss(theta: torch.Tensor, start: int, stop: int, h0: torch.Tensor | None):
    prediction, h_last = functional_call(regressor, as_parameters(theta), (xs[:, start:stop], h0))
    return ((prediction - ys[:, start:stop]) ** 2).sum(), h_last


def tbptt_gradient(seg: int) -> torch.Tensor:
    """What TBPTT computes: segments in order, state carried but detached, backward per segment."""
    theta = theta0.clone().requires_grad_()
    h = None
    for start in range(0, T_SEQ, seg):
        loss, h = segment_loss(theta, start, start + seg, h)
        loss.backward()  # the segments' gradients add up in theta.grad
        h = h.detach()
    return theta.grad


with torch.no_grad():  # the segment-start states of the forward pass, as constants
    starts = [None] + [regressor(xs[:, :k])[1] for k in range(S_SEG, T_SEQ, S_SEG)]


def cut_graph_loss(theta: torch.Tensor) -> torch.Tensor:
    """The function TBPTT differentiates: segment losses with their initial states fixed."""
    return sum(segment_loss(theta, k * S_SEG, (k + 1) * S_SEG, h0)[0] for k, h0 in enumerate(starts))


def full_loss(theta: torch.Tensor) -> torch.Tensor:
    return segment_loss(theta, 0, T_SEQ, None)[0]


theta = theta0.clone().requires_grad_()
g_full = torch.autograd.grad(full_loss(theta), theta)[0]
g_tbptt, g_whole = tbptt_gradient(S_SEG), tbptt_gradient(T_SEQ)
# finite differences: no backpropagation involved (a loop: vmap does not trace nn.RNN)
fd_cut, = numerical_gradient(cut_graph_loss, theta0, vectorize=False, chunk_size=8)
fd_full, = numerical_gradient(full_loss, theta0, vectorize=False, chunk_size=8)
rel = lambda a, b: ((a - b).norm() / b.norm()).item()
print(f"TBPTT gradient vs finite differences of the cut-graph loss: rel. error {rel(g_tbptt, fd_cut):.1e}")
print(f"TBPTT gradient vs finite differences of the full loss:      rel. difference {rel(g_tbptt, fd_full):.2f}")
print(f"full BPTT gradient vs finite differences of the full loss:  rel. error {rel(g_full, fd_full):.1e}")
print(f"TBPTT with S = T vs full BPTT: rel. difference {rel(g_whole, g_full):.1e}")
check("seq.3.A", "TBPTT's gradient is the exact derivative of the cut-graph loss (about 1e-10)",
      rel(g_tbptt, fd_cut), "<", 1e-9)
control("seq.3.A", "it is not the derivative of the full loss: they differ by about 10%",
        rel(g_tbptt, fd_full), "between", (0.05, 0.2))
check("seq.3.A", "the same finite differences confirm full BPTT on the full loss",
      rel(g_full, fd_full), "<", 1e-8)
check("seq.3.A", "with S = T, TBPTT is plain BPTT", rel(g_whole, g_full), "<", 1e-12)


# B (2): what detaching bounds: the autograd graph behind each segment's loss, which backward
# keeps in memory and traverses, counted in nodes after k segments of S = 4 steps.
def graph_size(tensor: torch.Tensor) -> int:
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(parent for parent, _ in node.next_functions)
    return len(seen)


graph_nodes = {}
for detach in (True, False):
    h, sizes = None, []
    for _ in range(16):
        loss, h = segment_loss(theta0.clone().requires_grad_(), 0, S_SEG, h)  # a new segment (same data)
        sizes.append(graph_size(loss))
        h = h.detach() if detach else h
    graph_nodes["detached" if detach else "not detached"] = sizes
print("autograd graph behind segment k's loss (nodes), k = 1, 4, 16: "
      + "; ".join(f"{name} {s[0]}, {s[3]}, {s[15]}" for name, s in graph_nodes.items()))
check("seq.3.B", "with the state detached the graph stays the same size however many segments",
      graph_nodes["detached"][15] / graph_nodes["detached"][0], "==", 1)
control("seq.3.B", "without the detach it grows with the stream (16 segments: about 12 times)",
        graph_nodes["not detached"][15] / graph_nodes["not detached"][0], ">", 8)

# %%
# B and C: a GRU on long token streams, trained with dlsummary.sequence.train_tbptt.
SYMBOLS, ROWS, STEPS = 4, 32, 1600  # every model sees 32 rows x 1600 steps of data


class Recaller(nn.Module):
    """embedding -> GRU -> linear, with the (x, state) -> (logits, state) signature."""

    def __init__(self, vocabulary: int, hidden: int = 32) -> None:
        super().__init__()
        self.embed, self.gru = nn.Embedding(vocabulary, 8), nn.GRU(8, hidden, batch_first=True)
        self.out = nn.Linear(hidden, SYMBOLS)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None):
        h, state = self.gru(self.embed(x), state)
        return self.out(h), state


def latch(n: int, g: torch.Generator, p_marker: float = 0.12):
    """Token 0 is a blank, token 1+v a marker of value v; target: the value of the last
    marker. Also returns each target's age (steps since that marker)."""
    is_marker = torch.rand(n, generator=g) < p_marker
    value = torch.randint(0, SYMBOLS, (n,), generator=g)
    last = torch.where(is_marker, torch.arange(n), -1).cummax(0).values
    y = torch.where(last >= 0, value[last.clamp(min=0)], -100)
    return torch.where(is_marker, value + 1, 0), y, torch.arange(n) - last


def delayed_recall(n: int, g: torch.Generator, delay: int):
    """x_t uniform over the symbols; target y_t = x_{t - delay}."""
    x = torch.randint(0, SYMBOLS, (n,), generator=g)
    y = torch.full((n,), -100)
    y[delay:] = x[:-delay]
    return x, y


def shuffle_segments(streams: torch.Tensor, seg: int, seed: int) -> torch.Tensor:
    """The classic mistake: a data set of windows with shuffle=True (segment order lost)."""
    rows, steps = streams.shape
    order = torch.randperm(steps // seg, generator=torch.Generator().manual_seed(seed))
    return streams.view(rows, steps // seg, seg)[:, order].reshape(rows, steps)


cross_entropy = lambda logits, y: F.cross_entropy(logits.reshape(-1, SYMBOLS), y.reshape(-1), ignore_index=-100)


def train_recaller(task, seg: int, carry_state: bool = True, shuffle: bool = False, seed: int = 0):
    """Train on one long stream cut into ROWS contiguous rows, segments of `seg` steps."""
    torch.manual_seed(seed)
    x, y = (batchify(s, ROWS) for s in task(ROWS * STEPS, torch.Generator().manual_seed(seed))[:2])
    if shuffle:
        x, y = shuffle_segments(x, seg, seed), shuffle_segments(y, seg, seed)
    model = Recaller(vocabulary=SYMBOLS + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    train_tbptt(model, x, y, seg, cross_entropy, optimizer, carry_state=carry_state)
    return model


x_latch, y_latch, age = (batchify(s, 16) for s in latch(16 * 400, torch.Generator().manual_seed(99)))
age_bins = {"0-3": (0, 4), "4-7": (4, 8), "8-15": (8, 16), "16+": (16, 10**6)}
regimes = {  # name: (training options, is the state carried when the model is run?)
    "TBPTT": ({}, True),
    "chop only, run as trained (reset)": ({"carry_state": False}, False),
    "chop only, run with carried state": (None, True),
    "carried through shuffled segments": ({"shuffle": True}, True),
}
latch_accuracy, model = {}, None
for name, (options, carry) in regimes.items():
    if options is not None:  # None: the previous regime's model, run another way
        model = train_recaller(latch, 4, **options)
    # (with the state carried, running in segments of 4 or all at once is the same computation)
    logits = run_in_segments(model, x_latch, 4 if not carry else x_latch.shape[1], carry_state=carry)
    latch_accuracy[name] = {b: accuracy(logits, y_latch, (age >= lo) & (age < hi)) for b, (lo, hi) in age_bins.items()}
    latch_accuracy[name]["older than S"] = accuracy(logits, y_latch, age >= 4)

recall = {}
for delay, seg in ((3, 4), (4, 4)):
    task = lambda n, g, d=delay: delayed_recall(n, g, d)
    model = train_recaller(task, seg)
    x_r, y_r = (batchify(s, 16) for s in delayed_recall(16 * 400, torch.Generator().manual_seed(99), delay))
    recall[f"delay {delay}, S = {seg}"] = accuracy(run_in_segments(model, x_r, x_r.shape[1]), y_r)

print("latch, S = 4, accuracy on the ordered test stream by the age of the marker (chance 0.25)")
print(f"{'':>36}" + "".join(f"{b:>8}" for b in latch_accuracy["TBPTT"]))
for name, row in latch_accuracy.items():
    print(f"{name:>36}" + "".join(f"{a:8.3f}" for a in row.values()))
print("delayed recall, accuracy (chance 0.25): " + ", ".join(f"{k}: {a:.3f}" for k, a in recall.items()))

fig, (ax_latch, ax_recall) = plt.subplots(1, 2, figsize=(9, 3.2), gridspec_kw={"width_ratios": [3, 2], "wspace": 0.3})
for name, row in latch_accuracy.items():
    ax_latch.plot(list(age_bins), [row[b] for b in age_bins], marker="o", label=name)
ax_latch.axhline(1 / SYMBOLS, color="gray", ls=":", label="chance")
ax_latch.axvline(0.5, color="k", lw=0.8, ls="--")
ax_latch.set_xlabel("age of the marker to recall (steps); S = 4")
ax_latch.set_ylabel("test accuracy")
ax_latch.set_title("B, C: latch, ordered test stream", fontsize=9)
ax_latch.legend(fontsize=7)
ax_recall.bar([k.replace(", ", "\n") for k in recall], list(recall.values()), color=["tab:green", "tab:red"])
ax_recall.axhline(1 / SYMBOLS, color="gray", ls=":")
ax_recall.set_ylabel("test accuracy")
ax_recall.set_title("C: delayed recall y_t = x_{t-d}", fontsize=9)
plt.show()

proper, chopped, chopped_carried, shuffled = latch_accuracy.values()
check("seq.3.B", "proper TBPTT recalls markers from earlier segments (ages 4 and more)",
      proper["older than S"], ">", 0.9)
control("seq.3.B", "chop only, run as trained, is at chance for markers older than its segment",
        chopped["older than S"], "<", 0.4)
check("seq.3.B", "the chopped model's weights can hold a value (run with the state carried)",
      chopped_carried["older than S"], ">", 0.85)
control("seq.3.B", "trained on shuffled segments, the model forgets markers from earlier segments",
        shuffled["older than S"], "<", 0.5)
check("seq.3.B", "... though it learned to use markers inside the segment",
      shuffled["0-3"], ">", 0.8)
check("seq.3.C", "a TBPTT model with S = 4 uses markers 16 or more steps old", proper["16+"], ">", 0.85)
check("seq.3.C", "a dependency of S - 1 = 3 steps is learned", recall["delay 3, S = 4"], ">", 0.95)
control("seq.3.C", "a dependency of S = 4 steps (more than S - 1) stays near chance",
        recall["delay 4, S = 4"], "<", 0.45)
