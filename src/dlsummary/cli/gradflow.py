"""``dlsummary gradflow``: gradient norms per layer call of a user's model, and a
vanishing/exploding/healthy diagnosis, from one pass on random data."""

from __future__ import annotations

import argparse

from dlsummary.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CLIError,
    load_model,
    model_parent,
    parse_input_size,
    parse_kwargs,
    print_json,
)

EXAMPLE = """example:
  dlsummary gradflow torch.nn:Linear --kwargs '{"in_features": 8, "out_features": 2}' \\
      --input-size 4,8
  dlsummary gradflow path/to/net.py:build --input-size 256,42 --json
  dlsummary gradflow net.py:build --input-size 64,3,32,32 --train --plot gradflow.png
  dlsummary gradflow rnn.py:build --input-size 8,100,16 --per-step

exit status: 0 healthy, 1 vanishing or exploding, 2 bad input.
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "gradflow", parents=[*parents, model_parent()],
        help="gradient norm per layer call; vanishing or exploding?",
        description="Run MODEL forward on a random N(0, 1) batch of --input-size, take the "
                    "mean squared error against random N(0, 1) targets of the output's shape, "
                    "backpropagate once and print, for every layer call in forward order, "
                    "the norm of the gradient at its output and of its parameters' gradient, "
                    "the saturated (sigmoid/tanh) and dead (ReLU) fractions, weight sharing, "
                    "and the diagnosis.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random batch (default 0)")
    p.add_argument("--threshold", type=float, default=1e3,
                   help="per-unit fold change of the gradient between any layer call and the "
                        "last above which the flow is vanishing or exploding (default 1000)")
    p.add_argument("--per-layer", type=float, default=1.5,
                   help="average fold change per layer of depth above which a change of at "
                        "least 10-fold is vanishing or exploding (default 1.5)")
    p.add_argument("--per-step", action="store_true",
                   help="recurrent layers (RNN, LSTM, GRU): also record and judge the gradient "
                        "reaching the input at each time step")
    p.add_argument("--train", action="store_true",
                   help="run the model in training mode (dropout, batch statistics); "
                        "default: eval mode")
    p.add_argument("--plot", metavar="FILE", default=None,
                   help="also save the gradient-norm plot to FILE (.png, .pdf, .svg)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from dlsummary.gradflow import gradient_flow

    size = parse_input_size(args.input_size)
    model = load_model(args.model, parse_kwargs(args.kwargs), args.device, seed=args.seed)
    if not any(p.requires_grad for p in model.parameters()):
        raise CLIError(f"MODEL {args.model!r} ({type(model).__name__}) has no trainable "
                       "parameters: there is no gradient flow to measure")
    if args.train:
        model.train()
    if args.plot and not args.plot.lower().endswith((".png", ".pdf", ".svg")):
        raise CLIError(f"--plot {args.plot!r}: give a file name ending in .png, .pdf or .svg")
    device = next(model.parameters()).device
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(size, generator=generator).to(device=device, dtype=dtype)
    try:
        flow_cm = gradient_flow(model, threshold=args.threshold, per_layer=args.per_layer,
                                per_step=args.per_step)
        with flow_cm as flow:
            try:
                out = model(x)
            except Exception as err:
                raise CLIError(
                    f"MODEL {args.model!r} ({type(model).__name__}) raised "
                    f"{type(err).__name__} on a random batch of shape {tuple(size)}: "
                    f"{str(err).splitlines()[0] if str(err) else ''}; check --input-size "
                    "(the full input shape, batch first)") from err
            if isinstance(out, (tuple, list)) and out:
                out = out[0]
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise CLIError(f"MODEL {args.model!r} returned {type(out).__name__}, not a "
                               "floating-point tensor; gradflow needs a tensor output")
            if not out.requires_grad:
                raise CLIError(f"MODEL {args.model!r}: its output does not depend on any "
                               "trainable parameter, so no gradient can flow")
            target = torch.randn(out.shape, generator=generator).to(out.device, out.dtype)
            torch.nn.functional.mse_loss(out, target).backward()
    finally:
        model.zero_grad(set_to_none=True)
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        ax = flow.plot()
        ax.set_title(f"{args.model}: {flow.diagnosis}")
        try:
            ax.figure.savefig(args.plot, bbox_inches="tight")
        except OSError as err:
            raise CLIError(f"--plot {args.plot!r}: cannot write the file ({err})") from None
        finally:
            plt.close(ax.figure)
    if args.json:
        print_json(flow.to_dict())
    else:
        print(flow)
    return EXIT_OK if flow.diagnosis == "healthy" else EXIT_CHECK_FAILED
