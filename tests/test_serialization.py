"""``save`` / ``load``: round trips of every supported class, and clear errors for bad files."""

import json

import numpy as np
import pytest

import numbarnn
from numbarnn.linear import Linear
from numbarnn.serialization import HEADER_KEY, CheckpointError, load, load_metadata, save

MODULES = {
    "rnn": lambda: numbarnn.RNN(3, 4, seed=0),
    "deep": lambda: numbarnn.RNN(
        2,
        3,
        num_layers=2,
        nonlinearity="relu",
        bias=False,
        batch_first=True,
        dropout=0.25,
        bidirectional=True,
        dtype=np.float64,
        seed=1,
    ),
    "cell": lambda: numbarnn.RNNCell(3, 5, nonlinearity="relu", dtype=np.float64, seed=2),
    "cell_no_bias": lambda: numbarnn.RNNCell(2, 2, bias=False, seed=3),
    "head": lambda: Linear(4, 6, seed=4),
    "head_no_bias": lambda: Linear(4, 6, bias=False, dtype=np.float64, seed=5).eval(),
}


def saved_modules(path):
    modules = {name: make() for name, make in MODULES.items()}
    save(path, **modules)
    return modules


def test_round_trip_rebuilds_every_module(tmp_path):
    path = tmp_path / "model.npz"
    original = saved_modules(path)
    loaded = load(path)
    assert list(loaded) == list(original)
    for name, module in original.items():
        copy = loaded[name]
        assert type(copy) is type(module) and repr(copy) == repr(module), name
        assert copy.dtype == module.dtype and copy.training == module.training, name
        assert list(copy.params) == list(module.params), name
        for key, value in module.params.items():
            np.testing.assert_array_equal(copy.params[key], value, err_msg=f"{name}.{key}")
        assert all(np.shares_memory(value, copy._param_flat) for value in copy.params.values())
    assert loaded["deep"].dropout == 0.25 and loaded["deep"].batch_first


def test_loaded_rnn_computes_the_same(tmp_path, rng):
    rnn = numbarnn.RNN(3, 4, num_layers=2, seed=0).eval()
    save(tmp_path / "rnn.npz", rnn=rnn)
    copy = load(tmp_path / "rnn.npz")["rnn"]
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    for ours, theirs in zip(rnn(x), copy(x), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_path_is_used_as_given_and_metadata_round_trips(tmp_path):
    path = tmp_path / "weights.bin"  # no .npz suffix gets added
    save(path, metadata={"vocabulary": "abc\n", "steps": 3}, head=Linear(2, 3))
    assert path.exists() and not (tmp_path / "weights.bin.npz").exists()
    assert load_metadata(path) == {"vocabulary": "abc\n", "steps": 3}
    assert set(load(path)) == {"head"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]  # no temporary file left behind


def rewrite(path, change):
    """Rewrite the checkpoint at ``path`` after ``change(header, arrays)`` edits its contents."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    header = json.loads(str(arrays.pop(HEADER_KEY)))
    change(header, arrays)
    arrays[HEADER_KEY] = np.array(json.dumps(header))
    with open(path, "wb") as file:
        np.savez(file, **arrays)


@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "model.npz"
    save(path, rnn=numbarnn.RNN(3, 4, seed=0), head=Linear(4, 2, seed=1))
    return path


def test_truncated_file(checkpoint):
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError,
        match=f"{checkpoint}: not a readable numbarnn checkpoint: the .npz file is corrupt or truncated",
    ):
        load(checkpoint)


def test_corrupt_file(checkpoint):
    data = bytearray(checkpoint.read_bytes())
    data[100:400] = bytes(300)  # overwrite part of the first stored array's header and data
    checkpoint.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        load(checkpoint)


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match=f"{path}: not a numbarnn checkpoint: it does not start like"):
        load(path)


def test_npz_from_elsewhere(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError, match="not written by numbarnn.save"):
        load(path)


def test_pickled_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    np.savez(path, **{HEADER_KEY: np.array(json.dumps({})), "thing": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="allow_pickle"):
        load(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        load(tmp_path / "absent.npz")


def test_unknown_class(checkpoint):
    rewrite(checkpoint, lambda header, arrays: header["modules"]["head"].update({"class": "Transformer"}))
    with pytest.raises(
        CheckpointError, match=r"module 'head': unknown class 'Transformer'; this numbarnn can load RNN, "
    ):
        load(checkpoint)


def test_shape_mismatch(checkpoint):
    def shrink(header, arrays):
        arrays["rnn/weight_hh_l0"] = arrays["rnn/weight_hh_l0"][:3]

    rewrite(checkpoint, shrink)
    with pytest.raises(
        CheckpointError,
        match=r"module 'rnn': parameter 'weight_hh_l0' has shape \(3, 4\) in the "
        r"file, but RNN\(.*\) needs \(4, 4\)",
    ):
        load(checkpoint)


def test_arguments_that_disagree_with_the_arrays(checkpoint):
    rewrite(checkpoint, lambda header, arrays: header["modules"]["rnn"]["arguments"].update({"hidden_size": 5}))
    with pytest.raises(CheckpointError, match="module 'rnn': parameter 'weight_ih_l0' has shape"):
        load(checkpoint)


def test_missing_and_extra_arrays(checkpoint, tmp_path):
    rewrite(checkpoint, lambda header, arrays: arrays.pop("head/bias"))
    with pytest.raises(CheckpointError, match="the array for parameter 'bias' is missing"):
        load(checkpoint)
    other = tmp_path / "extra.npz"
    save(other, head=Linear(4, 2))
    rewrite(other, lambda header, arrays: arrays.update({"head/stray": np.zeros(2, np.float32)}))
    with pytest.raises(CheckpointError, match="arrays its description does not list: head/stray"):
        load(other)


def test_dtype_mismatch(checkpoint):
    def widen(header, arrays):
        arrays["head/weight"] = arrays["head/weight"].astype(np.float64)

    rewrite(checkpoint, widen)
    with pytest.raises(CheckpointError, match="'weight' is stored as float64, but the module's dtype is float32"):
        load(checkpoint)


def test_newer_format_version(checkpoint):
    rewrite(checkpoint, lambda header, arrays: header.update({"version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load(checkpoint)


def test_save_errors(tmp_path):
    with pytest.raises(ValueError, match="at least one module"):
        save(tmp_path / "empty.npz")
    with pytest.raises(TypeError, match="'thing' is a ndarray"):
        save(tmp_path / "bad.npz", thing=np.zeros(3))
    with pytest.raises(TypeError, match="metadata must be JSON-serialisable"):
        save(tmp_path / "bad.npz", metadata={"array": np.zeros(2)}, head=Linear(2, 2))
    assert not list(tmp_path.iterdir())
