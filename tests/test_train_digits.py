"""The main job, examples/train_digits.py: its functions in-process, its flags end to end."""

import gzip
import importlib.util
import json
import os
import struct
import subprocess
import sys
import types
from dataclasses import replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_digits.py"
spec = importlib.util.spec_from_file_location("train_digits", SCRIPT)
td = importlib.util.module_from_spec(spec)
sys.modules["train_digits"] = td
spec.loader.exec_module(td)

DATA = td.load_sklearn_digits(0)
pytestmark = pytest.mark.xdist_group("train")  # one worker: trainings share compilations


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_digits_data_is_real_scaled_and_stratified():
    assert DATA.x_train.shape == (1437, 8, 8) and DATA.x_test.shape == (360, 8, 8)
    assert DATA.x_train.min() == 0.0 and DATA.x_train.max() == 1.0
    counts = np.bincount(DATA.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of each digit


@pytest.mark.parametrize("model,task,floor", [("mlp", "digits", 0.9), ("cnn", "digits", 0.9), ("mlp", "two", 0.95)])
def test_models_learn_in_two_epochs(model, task, floor):
    cfg = td.Config(model=model, task=task, epochs=2)
    params, history = td.train(cfg, DATA, progress=False)
    assert history["loss"][1] < history["loss"][0]
    assert history["test_accuracy"][-1] >= floor, history


def test_same_seed_gives_bit_identical_parameters():
    cfg = td.Config(epochs=2, optimizer="momentum", lr=0.05)
    a, _ = td.train(cfg, DATA, progress=False)
    b, _ = td.train(cfg, DATA, progress=False)
    c, _ = td.train(replace(cfg, seed=1), DATA, progress=False)
    assert _same(a, b) and not _same(a, c)


def test_resume_reaches_exactly_the_uninterrupted_parameters(tmp_path):
    cfg = td.Config(epochs=3, optimizer="adam")
    td.train(replace(cfg, epochs=2), DATA, save=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left behind
    resumed, hist = td.train(cfg, DATA, resume=tmp_path, progress=False)
    straight, hist2 = td.train(cfg, DATA, progress=False)
    assert _same(resumed, straight)
    assert hist == hist2


def test_non_finite_loss_stops_naming_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = td.Config(epochs=1, optimizer="sgd", lr=0.01)
    good, _ = td.train(cfg, DATA, save=tmp_path, progress=False)
    with pytest.raises(td.NonFiniteLoss, match=r"in epoch 2: training stopped; the last good checkpoint \(epoch 1\)"):
        td.train(replace(cfg, epochs=3, lr=1e20), DATA, save=tmp_path, resume=tmp_path, progress=False)
    params, _, epoch, _ = td.load_checkpoint(tmp_path, good, td.optimizer(cfg).init(good))
    assert epoch == 1 and _same(params, good)


# --- whole-network gradients against jax.grad of the same network in jax.nn and optax --------

def _plain_ops():
    def conv(x, W, b, padding="VALID"):
        y = lax.conv_general_dilated(x, W, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + b

    def max_pool(x, window):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1,) + window + (1,), (1,) + window + (1,), "VALID")
    return types.SimpleNamespace(
        dense=lambda x, W, b: x @ W + b, relu=jax.nn.relu, conv=conv, max_pool=max_pool,
        softmax_cross_entropy_with_integer_labels=optax.softmax_cross_entropy_with_integer_labels,
        sigmoid_binary_cross_entropy=optax.sigmoid_binary_cross_entropy)


@pytest.mark.parametrize("model,task", [("mlp", "digits"), ("cnn", "digits"), ("mlp", "two")])
def test_whole_network_gradient_equals_jax_grad(model, task):
    cfg = td.Config(model=model, task=task, hidden=32, channels=8)
    params = jax.tree_util.tree_map(lambda v: v.astype(jnp.float64),
                                    td.init(cfg, (8, 8), jax.random.key(0)))
    x = jnp.asarray(DATA.x_train[:64], jnp.float64)
    y = jnp.asarray(DATA.y_train[:64])
    ours = jax.grad(td.loss)(params, x, y, cfg)
    theirs = jax.grad(td.loss)(params, x, y, cfg, _plain_ops())
    for a, b in zip(jax.tree_util.tree_leaves(ours), jax.tree_util.tree_leaves(theirs)):
        assert a.dtype == jnp.float64
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert "custom_vjp_call" in str(jax.make_jaxpr(jax.grad(td.loss), static_argnums=3)(params, x, y, cfg))


# --- MNIST IDX files, written here -----------------------------------------------------------

def _idx(path, array, gz):
    codes = {np.uint8: 0x08}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def _mnist_dir(tmp_path, gz=True, n=(120, 40)):
    rng = np.random.default_rng(0)
    for prefix, count in (("train", n[0]), ("t10k", n[1])):
        labels = (np.arange(count) % 10).astype(np.uint8)
        images = np.zeros((count, 28, 28), np.uint8)
        for i, c in enumerate(labels):  # a learnable pattern: a bright bar whose row is the digit
            images[i, 2 + 2 * c: 4 + 2 * c, 4:24] = 255
        images = np.clip(images.astype(int) + rng.integers(0, 30, images.shape), 0, 255).astype(np.uint8)
        ext = ".gz" if gz else ""
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, gz)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz)
    return tmp_path


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_idx_reader_round_trip(tmp_path, gz):
    d = _mnist_dir(tmp_path, gz)
    data = td.load_mnist(d)
    assert data.x_train.shape == (120, 28, 28) and data.x_test.shape == (40, 28, 28)
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1
    np.testing.assert_array_equal(data.y_test, np.arange(40) % 10)


def test_mnist_trains_end_to_end(tmp_path, capsys):
    d = _mnist_dir(tmp_path)
    assert td.main(["--data", f"mnist:{d}", "--epochs", "8", "--batch-size", "16", "--no-progress"]) == 0
    acc = float(capsys.readouterr().out.strip().splitlines()[-1].split(": ")[1])
    assert acc >= 0.9


def test_missing_and_corrupt_idx_files_name_the_file(tmp_path, capsys):
    d = _mnist_dir(tmp_path)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte\[\.gz\] not found in"):
        td.load_mnist(d)
    bad = d / "t10k-labels-idx1-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")  # 5 labels promised, 3 given
    with pytest.raises(ValueError, match=rf"{bad}: expected 5 bytes of data for shape \(5,\), found 3"):
        td.load_mnist(d)
    bad.write_bytes(b"hello world")
    with pytest.raises(ValueError, match=rf"{bad}: not an IDX file"):
        td.load_mnist(d)
    assert td.main(["--data", f"mnist:{d}", "--no-progress"]) == 2
    assert "not an IDX file" in capsys.readouterr().err


def test_main_prints_accuracy_and_writes_plot_and_history(tmp_path, capsys):
    png, hist = tmp_path / "curves.png", tmp_path / "h.json"
    assert td.main(["--epochs", "2", "--plot", str(png), "--history", str(hist), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("test accuracy: 0.")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert len(json.loads(hist.read_text())["loss"]) == 2


def test_bad_flags_are_clear_errors(capsys):
    with pytest.raises(SystemExit):
        td.main(["--batch-size", "0"])
    assert "--batch-size must be positive" in capsys.readouterr().err
    assert td.main(["--batch-size", "5000", "--no-progress"]) == 2
    assert "larger than the 1437 training examples" in capsys.readouterr().err


def test_two_devices_equal_one_device_in_a_subprocess(tmp_path):
    """The command line on 1 and on 2 devices (one process with two host devices: XLA's flag must be
    set before JAX starts), then the 2-device epoch's compiled program: XLA all-reduces the gradients."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    probe = f"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {str(SCRIPT.parent)!r})
import train_digits as td
for n in (1, 2):
    assert td.main(["--epochs", "3", "--devices", str(n), "--history", {str(tmp_path)!r} + f"/h{{n}}.json",
                    "--no-progress"]) == 0
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
cfg = td.Config(epochs=1); tx = td.optimizer(cfg); p = td.init(cfg, (8, 8), jax.random.key(0))
mesh = jax.make_mesh((2,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))
d = td.load_sklearn_digits(0); f = td.make_epoch(cfg, tx, len(d.x_train), mesh)
args = jax.device_put((p, tx.init(p), d.x_train, d.y_train), NamedSharding(mesh, P()))
print("all-reduce" in f.lower(*args, jax.random.key(1)).compile().as_text())
"""
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "1 device(s)" in r.stdout and "2 device(s)" in r.stdout, r.stdout
    assert r.stdout.split()[-1] == "True", r.stdout
    runs = {n: json.loads((tmp_path / f"h{n}.json").read_text())["loss"] for n in (1, 2)}
    np.testing.assert_allclose(runs[2], runs[1], rtol=0, atol=1e-5)
