"""Shared by test_lstm.py and test_gru.py: numbarnn's gated modules against torch's, with the same weights.

``torch_reference`` runs torch's forward and autograd's backward for the loss
``sum(G_out * output) + sum(G_h * h_n)`` (+ ``sum(G_c * c_n)`` for an LSTM), which is exactly what numbarnn's
``backward(G_out, G_state)`` differentiates; ``compare`` checks every output and gradient of one call.
"""

import functools

import numpy as np
import torch
from helpers import assert_close, torch_dtype

import numbarnn


@functools.cache
def _torch_module(kind, args, seed):
    torch.manual_seed(seed)
    return getattr(torch.nn, kind)(*args[:-1], dtype=torch_dtype(args[-1]))


def make_pair(
    kind,
    input_size,
    hidden_size,
    num_layers=1,
    bias=True,
    batch_first=False,
    dropout=0.0,
    bidirectional=False,
    proj_size=0,
    dtype=np.float64,
    seed=0,
):
    """A fresh numbarnn module (``kind`` "LSTM" or "GRU") and torch's (shared between tests, never modified), with
    torch's weights; both in training mode."""
    extra = (proj_size,) if kind == "LSTM" else ()
    args = (
        input_size,
        hidden_size,
        num_layers,
        bias,
        batch_first,
        float(dropout),
        bidirectional,
        *extra,
        np.dtype(dtype),
    )
    reference = _torch_module(kind, args, seed).train()
    module = getattr(numbarnn, kind)(*args[:-1], dtype=dtype, seed=seed + 1)
    module.load_state_dict(reference.state_dict())
    return module, reference


def state_widths(module):
    """The widths of the state's parts: (H_out,) or an LSTM's (H_out, H)."""
    if isinstance(module, (numbarnn.LSTM, torch.nn.LSTM)):
        return (module.proj_size or module.hidden_size, module.hidden_size)
    return (module.hidden_size,)


def state_shapes(module, batch):
    rows = module.num_layers * (2 if module.bidirectional else 1)
    return [(rows, width) if batch is None else (rows, batch, width) for width in state_widths(module)]


def random_problem(module, rng, steps, batch, dtype, state_given=True):
    """``x``, the initial state (a tuple for an LSTM, or None), and gradients for the output and final state."""
    width = (2 if module.bidirectional else 1) * state_widths(module)[0]
    if batch is None:
        x_shape, out_shape = (steps, module.input_size), (steps, width)
    elif module.batch_first:
        x_shape, out_shape = (batch, steps, module.input_size), (batch, steps, width)
    else:
        x_shape, out_shape = (steps, batch, module.input_size), (steps, batch, width)
    x = rng.standard_normal(x_shape).astype(dtype)
    parts = [rng.standard_normal(shape).astype(dtype) for shape in state_shapes(module, batch)]
    grad_parts = [rng.standard_normal(shape).astype(dtype) for shape in state_shapes(module, batch)]
    grad_output = rng.standard_normal(out_shape).astype(dtype)
    return x, as_state(module, parts) if state_given else None, grad_output, as_state(module, grad_parts)


def as_state(module, parts):
    return tuple(parts) if len(state_widths(module)) == 2 else parts[0]


def parts_of(state):
    return list(state) if isinstance(state, tuple) else [state]


def torch_reference(reference, x, state, grad_output, grad_state, lengths=None):
    """torch's output, final state parts, and the gradients of x, of the initial state's parts (an omitted state
    is run as zeros that require grad, as torch does) and of every parameter."""
    dtype = next(reference.parameters()).dtype
    reference.zero_grad(set_to_none=True)
    x_t = torch.tensor(x, dtype=dtype, requires_grad=True)
    batched = x_t.dim() == 3
    batch = (x_t.shape[0] if reference.batch_first else x_t.shape[1]) if batched else None
    parts = parts_of(state) if state is not None else [np.zeros(s) for s in state_shapes(reference, batch)]
    parts_t = [torch.tensor(p, dtype=dtype, requires_grad=True) for p in parts]
    hx = tuple(parts_t) if len(parts_t) == 2 else parts_t[0]
    if lengths is None:
        output_t, final = reference(x_t, hx)
    else:
        steps = x_t.shape[1] if reference.batch_first else x_t.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x_t, torch.as_tensor(np.asarray(lengths)), batch_first=reference.batch_first, enforce_sorted=False
        )
        packed_output, final = reference(packed, hx)
        output_t, _ = torch.nn.utils.rnn.pad_packed_sequence(
            packed_output, batch_first=reference.batch_first, total_length=steps
        )
    final_parts = list(final) if isinstance(final, tuple) else [final]
    loss = (output_t * torch.tensor(grad_output, dtype=dtype)).sum()
    for part, grad in zip(final_parts, parts_of(grad_state), strict=True):
        loss = loss + (part * torch.tensor(grad, dtype=dtype)).sum()
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in reference.named_parameters()}
    return (
        output_t.detach().numpy(),
        [p.detach().numpy() for p in final_parts],
        x_t.grad.numpy(),
        [p.grad.numpy() for p in parts_t],
        grads,
    )


def compare(module, reference, x, state, grad_output, grad_state, dtype, lengths=None, eval_too=True, nonzero=True):
    """numbarnn's forward (in eval and training mode) and backward against torch's; every output and gradient."""
    output_e, final_e, grad_x_e, grad_state_e, grads_e = torch_reference(
        reference, x, state, grad_output, grad_state, lengths
    )
    modes = ("eval", "train") if eval_too else ("train",)
    for mode in modes:
        getattr(module, mode)()
        output, final = module(x, state, lengths=lengths)
        assert output.dtype == np.dtype(dtype)
        assert_close(output, output_e, dtype, f"output ({mode})")
        assert len(parts_of(final)) == len(final_e)
        for index, (part, expected) in enumerate(zip(parts_of(final), final_e, strict=True)):
            assert_close(part, expected, dtype, f"final state [{index}] ({mode})")
    module.zero_grad()
    grad_x, grad_state_0 = module.backward(grad_output, grad_state)
    assert_close(grad_x, grad_x_e, dtype, "grad_input")
    for index, (part, expected) in enumerate(zip(parts_of(grad_state_0), grad_state_e, strict=True)):
        assert_close(part, expected, dtype, f"grad of initial state [{index}]")
    assert list(module.grads) == list(grads_e)
    for name, expected in grads_e.items():
        assert_close(module.grads[name], expected, dtype, name)
        assert not nonzero or np.abs(expected).max() > 0, f"{name}: an all-zero gradient makes the comparison empty"
