"""numbarnn used as a user would, for the type checker (tests/test_typing.py runs mypy on it; pytest does not collect
it): every ``assert_type`` states what the annotations promise, and the whole file must check without an error."""

from typing import Any

import numpy as np
import numpy.typing as npt
from typing_extensions import assert_type

import numbarnn
import numbarnn.dask
import numbarnn.onnx
from numbarnn._module import IncompatibleKeys, Module

Floats = npt.NDArray[np.floating[Any]]

rng = np.random.default_rng(0)
x = rng.standard_normal((5, 3, 10)).astype(np.float32)

# A sequence module: the state is one array for RNN and GRU, the tuple (h, c) for an LSTM.
rnn = numbarnn.RNN(10, 20, num_layers=2, nonlinearity="relu", dtype=np.float32, seed=0)
output, h_n = rnn(x, np.zeros((2, 3, 20), np.float32), lengths=[5, 4, 3])
assert_type(output, Floats)
assert_type(h_n, Floats)
grad_input, grad_h_0 = rnn.backward(np.ones_like(output), need_input_grad=False)
assert_type(grad_input, Floats | None)
assert_type(grad_h_0, Floats)
assert_type(rnn.eval(), numbarnn.RNN)
assert_type(rnn.step(x[0], h_n), tuple[Floats, Floats])
assert_type(rnn.hidden_size, int)

lstm = numbarnn.LSTM(10, 20, proj_size=5, seed=rng)
output, (h, c) = lstm(x, hx=(np.zeros((1, 3, 5), np.float32), np.zeros((1, 3, 20), np.float32)))
assert_type(c, Floats)
_, (grad_h, grad_c) = lstm.backward(grad_output=None, grad_h_n=(np.ones_like(h), None))
assert_type(grad_c, Floats)

gru = numbarnn.GRU(10, 20, batch_first=True, bidirectional=True)
assert_type(gru.forward(x.transpose(1, 0, 2))[1], Floats)

# Cells: one step, and a backward per step.
cell = numbarnn.LSTMCell(10, 20)
assert_type(cell(x[0]), tuple[Floats, Floats])
assert_type(cell.backward((np.ones((3, 20), np.float32), None)), tuple[Floats, tuple[Floats, Floats]])
assert_type(numbarnn.RNNCell(10, 20, nonlinearity="tanh")(x[0]), Floats)
assert_type(numbarnn.GRUCell(10, 20).train(False), numbarnn.GRUCell)

# A head, a loss and an optimiser, as the README's classic model.
head = numbarnn.Linear(20, 7, bias=False, dtype="float32")
assert_type(head.bias, Floats | None)
logits = head(output)
loss, grad_logits = numbarnn.softmax_cross_entropy(logits, rng.integers(0, 7, size=(5, 3)))
assert_type(grad_logits, Floats)
print(f"{float(loss):.3f}")
assert_type(numbarnn.mse_loss(logits, np.zeros_like(logits), reduction="sum")[1], Floats)
optimizer = numbarnn.Adam([lstm, head], lr=1e-2, betas=(0.9, 0.99))
optimizer.zero_grad()
assert_type(numbarnn.clip_grad_norm_([lstm, head], max_norm=5.0, norm_type="inf"), float)
optimizer.step()
numbarnn.SGD(head, lr=0.1, momentum=0.9, nesterov=True).step()
numbarnn.optim.Adagrad((m for m in (rnn, head)), lr_decay=0.1).step()

# Parameters and state dicts.
assert_type(rnn.weight_hh_l0, Floats)
assert_type(rnn.params, dict[str, Floats])
assert_type(rnn.load_state_dict(lstm.state_dict(), strict=False), IncompatibleKeys)
assert_type(rnn.load_state_dict({"weight_hh_l0": [[0.0] * 20] * 20}, strict=False).missing_keys, list[str])

# Checkpoints, ONNX and Dask.
numbarnn.save("model.npz", metadata={"vocabulary": "abc"}, rnn=rnn, head=head)
restored = numbarnn.load("model.npz")
assert_type(restored, dict[str, Module])
assert_type(restored["rnn"].weight_hh_l0, Floats)
assert_type(restored["head"](output), Any)  # each module's own signature, from a checkpoint of any modules
assert_type(numbarnn.load_metadata("model.npz"), Any)
model = numbarnn.onnx.export("model.onnx", gru, None, opset=17, lengths=True)
loaded = numbarnn.onnx.load(model)["rnn"]
if isinstance(loaded, numbarnn.GRU):
    assert_type(loaded(x)[1], Floats)
with numbarnn.dask.limit_threads(1):
    pass
