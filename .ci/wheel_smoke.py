"""Smoke test of an installed wheel, run by .ci/run with the python of a fresh venv, from outside the checkout.

    python wheel_smoke.py WHEEL SDIST CHECKOUT

Checks that the sdist carries the files a packager needs (license, changelog, tests with their helpers); that the
numbarnn this interpreter imports is the one installed from WHEEL (not the checkout, not an editable install) and
carries what it needs at run time (the demo's corpus, the ``py.typed`` marker, the license); that ``--version``
agrees with the metadata; that the demo trains for a few updates; and that ``numbarnn.RNN``'s forward and
``numbarnn.torch.RNN``'s forward and backward agree with ``torch.nn.RNN`` on the same weights.
"""

import argparse
import importlib.metadata
import importlib.resources
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

# float32 over a few steps of a small RNN: as in tests/helpers.py, every compared value is a short chain of sums of
# O(1) terms, so rounding (eps 1.2e-7) stays well inside rtol 1e-5 plus atol 5e-6 for entries that cancel towards 0.
RTOL, ATOL = 1e-5, 5e-6


def main(wheel, sdist, checkout):
    wheel, checkout = Path(wheel).resolve(), Path(checkout).resolve()
    assert "PYTHONPATH" not in os.environ, "run without PYTHONPATH, so that only the installed package is importable"
    check_the_sdist(Path(sdist))
    import numbarnn

    check_installed_from_the_wheel(numbarnn, wheel, checkout)
    check_the_files_it_ships(numbarnn)
    check_the_version(numbarnn)
    check_the_demo()
    check_against_torch()
    print(
        f"wheel smoke test passed: numbarnn {numbarnn.__version__} from {wheel.name}, imported from "
        f"{Path(numbarnn.__file__).parent}"
    )


def check_the_sdist(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    required = {
        "PKG-INFO",
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        "numbarnn/__init__.py",
        "numbarnn/py.typed",
        "numbarnn/data/corpus.txt",
        "tests/conftest.py",
        "tests/helpers.py",
    }
    assert required <= names, f"the sdist lacks {sorted(required - names)}"
    assert not [name for name in names if "__pycache__" in name], "the sdist carries __pycache__ (numba's caches?)"


def check_installed_from_the_wheel(numbarnn, wheel, checkout):
    package_dir = Path(numbarnn.__file__).resolve().parent
    assert not package_dir.is_relative_to(checkout), f"numbarnn was imported from the checkout: {package_dir}"
    assert package_dir.is_relative_to(Path(sys.prefix).resolve()), f"numbarnn is not in this venv: {package_dir}"
    distribution = importlib.metadata.distribution("numbarnn")
    # pip records where an install came from (PEP 610): an archive for a wheel file, a directory for -e or for
    # `pip install .`
    origin = json.loads(distribution.read_text("direct_url.json") or "{}")
    assert "archive_info" in origin and origin.get("url", "").endswith("/" + wheel.name), (
        f"numbarnn was not installed from {wheel.name}: direct_url.json says {origin}"
    )


def check_the_files_it_ships(numbarnn):
    from numbarnn.cli.demo import DEFAULT_CORPUS

    package = importlib.resources.files("numbarnn")
    corpus = package / "data" / "corpus.txt"
    assert corpus.is_file() and Path(str(corpus)) == DEFAULT_CORPUS, f"the demo's corpus is missing: {corpus}"
    assert len(corpus.read_text(encoding="utf-8")) > 100_000, "the corpus is truncated"
    assert (package / "py.typed").is_file(), "the py.typed marker is missing"
    distribution = importlib.metadata.distribution("numbarnn")
    assert distribution.metadata["License-Expression"] == "BSD-3-Clause", distribution.metadata["License-Expression"]
    license_files = [file for file in distribution.files if file.name == "LICENSE"]
    assert license_files and "BSD 3-Clause" in license_files[0].read_text(), "the wheel carries no LICENSE"


def check_the_version(numbarnn):
    expected = f"numbarnn {numbarnn.__version__}"
    assert numbarnn.__version__ == importlib.metadata.version("numbarnn")
    for command in (
        [sys.executable, "-m", "numbarnn", "--version"],
        [Path(sys.executable).parent / "numbarnn", "--version"],
    ):
        printed = subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()
        assert printed == expected, f"{command}: {printed!r} != {expected!r}"


def check_the_demo():
    """A few updates of the main job (the console script's demo, on the bundled corpus)."""
    command = [
        sys.executable,
        "-m",
        "numbarnn",
        "demo",
        "--steps",
        "3",
        "--hidden",
        "32",
        "--batch",
        "8",
        "--seq-len",
        "16",
        "--samples",
        "1",
        "--sample-length",
        "20",
        "--progress",
        "lines",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
    assert "finished 3 updates" in result.stdout and "--- sample after 3 updates" in result.stdout, result.stdout
    print(result.stdout.strip().splitlines()[-1])  # the speed line


def check_against_torch():
    """numbarnn.RNN and numbarnn.torch.RNN against torch.nn.RNN: same weights, forward, and the drop-in's backward."""
    import numpy as np
    import torch

    import numbarnn
    import numbarnn.torch

    torch.manual_seed(0)
    reference = torch.nn.RNN(5, 8, num_layers=2, batch_first=True)
    drop_in = numbarnn.torch.RNN(5, 8, num_layers=2, batch_first=True)
    drop_in.load_state_dict(reference.state_dict())
    rnn = numbarnn.RNN(5, 8, num_layers=2, batch_first=True).eval()
    rnn.load_state_dict(reference.state_dict())
    x = torch.randn(3, 7, 5)

    expected, expected_h_n = reference(x)
    output, h_n = rnn(x.numpy())
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="RNN output")
    np.testing.assert_allclose(h_n, expected_h_n.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="RNN h_n")

    x_reference, x_drop_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    reference(x_reference)[0].square().sum().backward()
    output, _ = drop_in(x_drop_in)
    output.square().sum().backward()
    np.testing.assert_allclose(
        output.detach().numpy(), expected.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg="numbarnn.torch output"
    )
    pairs = [("input", x_drop_in.grad, x_reference.grad)] + [
        (name, dict(drop_in.named_parameters())[name].grad, parameter.grad)
        for name, parameter in reference.named_parameters()
    ]
    for name, actual, wanted in pairs:
        np.testing.assert_allclose(actual.numpy(), wanted.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"grad {name}")
    print(
        f"numbarnn.RNN and numbarnn.torch.RNN agree with torch.nn.RNN (torch {torch.__version__}): output, h_n and "
        f"{len(pairs)} gradients"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("wheel", help="the wheel file this venv's numbarnn was installed from")
    parser.add_argument("sdist", help="the sdist built with it")
    parser.add_argument("checkout", help="the source tree the wheel was built from (numbarnn must not come from it)")
    arguments = parser.parse_args()
    main(arguments.wheel, arguments.sdist, arguments.checkout)
