"""The classic model end to end: RNN -> Linear -> softmax cross-entropy, trained with truncated BPTT.

Gradients of the whole chain against torch autograd, a short training run on the bundled corpus that must beat the
unigram baseline clearly, and a save/load round trip of the trained model.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_close, make_rnn_pair

import numbarnn
from numbarnn.clip import clip_grad_norm_
from numbarnn.linear import Linear
from numbarnn.losses import softmax_cross_entropy
from numbarnn.optim import Adam
from numbarnn.serialization import CheckpointError, load, save

CORPUS = Path(numbarnn.__file__).with_name("data") / "corpus.txt"
STEPS, BATCH, INPUT_SIZE, HIDDEN_SIZE, CLASSES = 6, 3, 4, 5, 4


@pytest.mark.parametrize("reduction, ignore", [("sum", False), ("mean", True)], ids=["sum", "mean-ignored"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradients_of_the_whole_chain_match_torch(num_layers, reduction, ignore, rng):
    rnn, reference_rnn = make_rnn_pair(INPUT_SIZE, HIDDEN_SIZE, num_layers, dtype=np.float64)
    torch.manual_seed(1)
    reference_head = torch.nn.Linear(HIDDEN_SIZE, CLASSES, dtype=torch.float64)
    head = Linear(HIDDEN_SIZE, CLASSES, dtype=np.float64)
    head.load_state_dict(reference_head.state_dict())
    reference_rnn.zero_grad(set_to_none=True)
    x = rng.standard_normal((STEPS, BATCH, INPUT_SIZE))
    h_0 = rng.standard_normal((num_layers, BATCH, HIDDEN_SIZE))
    targets = rng.integers(0, CLASSES, size=(STEPS, BATCH))
    if ignore:
        targets[rng.random(targets.shape) < 0.3] = -100
        targets[0, 0] = 2

    x_t = torch.tensor(x, requires_grad=True)
    h_0_t = torch.tensor(h_0, requires_grad=True)
    output_t, _ = reference_rnn(x_t, h_0_t)
    logits_t = reference_head(output_t)
    loss_t = F.cross_entropy(logits_t.reshape(-1, CLASSES), torch.tensor(targets).reshape(-1), reduction=reduction)
    loss_t.backward()

    output, _ = rnn(x, h_0)
    loss, grad_logits = softmax_cross_entropy(head(output), targets, reduction=reduction)
    grad_x, grad_h_0 = rnn.backward(head.backward(grad_logits))

    assert_close(loss, loss_t, np.float64, "loss")
    assert_close(grad_x, x_t.grad, np.float64, "grad_x")
    assert_close(grad_h_0, h_0_t.grad, np.float64, "grad_h_0")
    for name, param in reference_rnn.named_parameters():
        assert_close(rnn.grads[name], param.grad, np.float64, name)
    for name, param in reference_head.named_parameters():
        assert_close(head.grads[name], param.grad, np.float64, "head." + name)


def encode(text):
    vocabulary = sorted(set(text))
    index = {char: i for i, char in enumerate(vocabulary)}
    return np.array([index[char] for char in text]), len(vocabulary)


def one_hot(codes, size):
    out = np.zeros(codes.shape + (size,), np.float32)
    np.put_along_axis(out, codes[..., None], 1, axis=-1)
    return out


def unigram_entropy(codes, size):
    frequencies = np.bincount(codes, minlength=size) / len(codes)
    frequencies = frequencies[frequencies > 0]
    return float(-(frequencies * np.log(frequencies)).sum())


def held_out_loss(rnn, head, codes, size):
    rnn.eval(), head.eval()
    streams = codes[: (len(codes) - 1) // 8 * 8 + 1]
    length = (len(streams) - 1) // 8
    inputs = streams[:-1].reshape(8, length).T
    targets = streams[1:].reshape(8, length).T
    output, _ = rnn(one_hot(inputs, size))
    loss, _ = softmax_cross_entropy(head(output), targets)
    rnn.train(), head.train()
    return float(loss)


@pytest.fixture(scope="module")
def trained_model():
    """A small character model trained for a few seconds with truncated BPTT on the start of the bundled corpus."""
    return train_character_model()


def train_character_model():
    text = CORPUS.read_text(encoding="utf-8")[:60_000]
    codes, size = encode(text)
    train, validation = codes[:55_000], codes[55_000:]
    batch, seq_len, updates = 16, 24, 200
    streams = train[: len(train) // batch * batch].reshape(batch, -1)
    rng = np.random.default_rng(0)
    rnn = numbarnn.RNN(size, 64, seed=rng)
    head = Linear(64, size, seed=rng)
    optimizer = Adam([rnn, head], lr=1e-2)
    hidden, position, losses = None, 0, []
    for _ in range(updates):
        if position + seq_len + 1 > streams.shape[1]:
            position, hidden = 0, None
        chunk = streams[:, position : position + seq_len + 1].T
        position += seq_len
        optimizer.zero_grad()
        output, hidden = rnn(one_hot(chunk[:-1], size), hidden)  # h_n of one chunk is h_0 of the next
        loss, grad_logits = softmax_cross_entropy(head(output), chunk[1:])
        rnn.backward(head.backward(grad_logits))
        clip_grad_norm_([rnn, head], 5.0)
        optimizer.step()
        losses.append(float(loss))
    return dict(
        rnn=rnn, head=head, losses=losses, validation=validation, size=size, baseline=unigram_entropy(train, size)
    )


def test_training_beats_the_unigram_baseline(trained_model):
    baseline, losses = trained_model["baseline"], trained_model["losses"]
    assert losses[0] > baseline  # a fresh model knows less than the character frequencies
    # Knowing the frequencies alone gives `baseline` (~3.1 nats); using context must do clearly better.
    assert np.mean(losses[-20:]) < baseline - 0.8
    held_out = held_out_loss(
        trained_model["rnn"], trained_model["head"], trained_model["validation"], trained_model["size"]
    )
    assert held_out < baseline - 0.8


def test_trained_model_survives_save_and_load(trained_model, tmp_path):
    rnn, head = trained_model["rnn"], trained_model["head"]
    path = tmp_path / "char_model.npz"
    save(path, rnn=rnn, head=head)
    loaded = load(path)
    size, validation = trained_model["size"], trained_model["validation"]
    assert held_out_loss(loaded["rnn"], loaded["head"], validation, size) == held_out_loss(rnn, head, validation, size)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match=str(path)):
        load(path)


def test_checkpoint_does_not_fit_a_different_model(trained_model, tmp_path):
    path = tmp_path / "char_model.npz"
    save(path, rnn=trained_model["rnn"])
    smaller = numbarnn.RNN(trained_model["size"], 32)
    with pytest.raises(ValueError, match="size mismatch for weight_ih_l0"):
        smaller.load_state_dict(load(path)["rnn"].state_dict())
