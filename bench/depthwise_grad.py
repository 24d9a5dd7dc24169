"""Lite0's depthwise weight gradient: oneDNN against an inductor-compiled kernel, in one run.

    .venv/bin/python bench/depthwise_grad.py [--size 64] [--batch 64] [--steps 15]

A lever measured for the activation-cache target (issue 17), not used by thawline: a thaw
step of Lite0's top groups spends most of its time in the weight gradient of the 5x5 depthwise
convolutions at small spatial sizes, where oneDNN is slow. Two parts:

1. Each depthwise convolution of ``tf_efficientnet_lite0`` (random weights: speed only) at
   ``--size`` px: the weight gradient by oneDNN (``aten.convolution_backward``) and by a
   per-tap sum compiled with ``torch.compile`` (inductor's C++ backend), checked equal, in ms.
2. A whole training step (AdamW, channels_last, fp32): stock, and with the compiled weight
   gradient swapped in where part 1 measured it faster, for the full network and for the top
   2 of the 8 layer groups on fixed inputs (the activation-cache case). Prints img/s and the
   ratio, and the one-off compile time (a cold inductor cache; warm, it is a few seconds).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import timm
import torch
import torch.nn.functional as F
from timm.layers.padding import pad_same

from thawline.precision_choice import cpu_model

torch._dynamo.config.recompile_limit = 64  # one compiled kernel per convolution shape


def per_tap_weight_grad(x, grad_out, k: int, stride: int, pad: int):
    """d loss / d weight of a depthwise conv (symmetric ``pad``): one sum per tap."""
    x = F.pad(x, (pad,) * 4) if pad else x
    out_h, out_w = grad_out.shape[2], grad_out.shape[3]
    taps = []
    for i in range(k):
        for j in range(k):
            window = x[:, :, i : i + stride * (out_h - 1) + 1 : stride,
                       j : j + stride * (out_w - 1) + 1 : stride]  # fmt: skip
            taps.append((window * grad_out).sum((0, 2, 3)))
    return torch.stack(taps, 1).view(-1, 1, k, k)


compiled_weight_grad = torch.compile(per_tap_weight_grad, dynamic=False)


def onednn_grads(x, weight, grad_out, stride, pad, mask):
    groups = weight.shape[0]
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [stride] * 2, [pad] * 2, [1, 1], False, [0, 0], groups, mask
    )


class DepthwiseConv(torch.autograd.Function):
    """A depthwise conv: oneDNN forward and input gradient, the compiled weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, stride, pad):
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.pad = stride, pad
        return F.conv2d(x, weight, None, stride, pad, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = None
        if ctx.needs_input_grad[0]:
            mask = [True, False, False]
            grad_x = onednn_grads(x, weight, grad_out, ctx.stride, ctx.pad, mask)[0]
        grad_w = compiled_weight_grad(x, grad_out, weight.shape[-1], ctx.stride, ctx.pad)
        return grad_x, grad_w, None, None


def same_padded(conv, x):
    """``x`` as the convolution sees it, and the (symmetric) padding the convolution adds."""
    k, s = conv.kernel_size[0], conv.stride[0]
    if type(conv).__name__ == "Conv2dSame":  # tf_ models pad "same" (asymmetric) themselves
        return pad_same(x, [k, k], [s, s]).contiguous(memory_format=torch.channels_last), 0
    return x, conv.padding[0]


def depthwise_convs(model):
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 and not m.bias
    ]


def timed_ms(fn, repeats=10):
    for _ in range(2):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def per_conv(model, size, batch):
    """Part 1: the positions (in ``depthwise_convs`` order) where compiled dW is faster."""
    inputs = {}

    def keep_input(conv, args, out):  # returns None: the output stays as it is
        inputs[conv] = (args[0], out.shape)

    hooks = [conv.register_forward_hook(keep_input) for conv in depthwise_convs(model)]
    with torch.no_grad():
        model(torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last))
    for hook in hooks:
        hook.remove()
    faster, totals, compile_s = set(), [0.0, 0.0], 0.0
    for index, conv in enumerate(depthwise_convs(model)):
        x, out_shape = inputs[conv]
        (x, pad), weight = same_padded(conv, x), conv.weight.detach()
        grad_out = torch.randn(out_shape).contiguous(memory_format=torch.channels_last)
        k, s = weight.shape[-1], conv.stride[0]
        mask = [False, True, False]
        reference = onednn_grads(x, weight, grad_out, s, pad, mask)[1]
        start = time.perf_counter()
        got = compiled_weight_grad(x, grad_out, k, s, pad)
        compile_s += time.perf_counter() - start
        # fp32 sums over batch x positions in another order: equal to 1e-5 of the largest
        assert (got - reference).abs().max() <= 1e-5 * reference.abs().max(), conv
        stock = timed_ms(partial(onednn_grads, x, weight, grad_out, s, pad, mask))
        ours = timed_ms(partial(compiled_weight_grad, x, grad_out, k, s, pad))
        totals[0], totals[1] = totals[0] + stock, totals[1] + ours
        if ours < stock:
            faster.add(index)
        print(f"  {weight.shape[0]:5d} ch  {k}x{k}  stride {s}  in {tuple(x.shape[2:])}, pad {pad}:"
              f"  oneDNN {stock:6.2f} ms  compiled {ours:6.2f} ms")  # fmt: skip
    print(f"  all {len(inputs)}: oneDNN {totals[0]:.1f} ms, compiled {totals[1]:.1f} ms,"
          f" compiled faster at {len(faster)}; first calls {compile_s:.0f} s")  # fmt: skip
    return faster


def swap_in(convs):
    for conv in convs:
        conv.forward = partial(swapped_forward, conv)


def swapped_forward(conv, x):
    x, pad = same_padded(conv, x)
    return DepthwiseConv.apply(x, conv.weight, conv.stride[0], pad)


def step_ms(model, size, batch, steps, top):
    """Part 2: ms per AdamW step, whole network or the top 2 groups on fixed boundary inputs."""
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch,))
    model.train()
    trainable = [model.blocks[5], model.blocks[6], model.conv_head, model.bn2, model.classifier]
    if top:
        model.eval()  # the frozen part: BatchNorm in eval mode, as a thaw phase keeps it
        with torch.no_grad():
            boundary = model.blocks[:5](model.bn1(model.conv_stem(images)))
        for part in trainable:
            part.train()
        forward = lambda: model.forward_head(  # noqa: E731
            model.bn2(model.conv_head(model.blocks[6](model.blocks[5](boundary))))
        )
        params = [p for part in trainable for p in part.parameters()]
    else:
        forward, params = (lambda: model(images)), list(model.parameters())
    optimizer = torch.optim.AdamW(params, 1e-3)

    def step():
        loss = F.cross_entropy(forward(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return timed_ms(step, steps)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{cpu_model()}, {torch.get_num_threads()} threads, {args.size} px, batch {args.batch}")

    def lite0():
        model = timm.create_model("tf_efficientnet_lite0", num_classes=10)
        return model.to(memory_format=torch.channels_last)

    faster = per_conv(lite0(), args.size, args.batch)
    for top in (False, True):
        stock_model, swapped_model = lite0(), lite0()
        swap_in(c for i, c in enumerate(depthwise_convs(swapped_model)) if i in faster)
        stock = step_ms(stock_model, args.size, args.batch, args.steps, top)
        swapped = step_ms(swapped_model, args.size, args.batch, args.steps, top)
        name = "top 2 groups" if top else "full network"
        print(f"{name}: stock {args.batch / stock * 1e3:.0f} img/s, compiled dW"
              f" {args.batch / swapped * 1e3:.0f} img/s: {stock / swapped:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
