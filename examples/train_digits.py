"""Train an MLP or a CNN built only from jaxrules rules on real handwritten digits.

    python examples/train_digits.py                     # MLP on scikit-learn's 8x8 digits
    python examples/train_digits.py --model cnn         # conv, relu, max_pool, dense
    python examples/train_digits.py --task two          # seed 003's "2 or not 2" detector
    python examples/train_digits.py --data mnist:DIR    # the MNIST IDX files in DIR
    python examples/train_digits.py --devices 2         # batches sharded over 2 devices

Seed 003's forward pass (z = W y + b, y = f(z)), backward pass and gradient descent, with every
forward and backward step a hand-written jaxrules rule; optax updates the parameters, and one
jit-compiled function runs a whole epoch (lax.scan over shuffled batches).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np


# --- data ------------------------------------------------------------------------------------

class Data(NamedTuple):
    x_train: np.ndarray  # (N, H, W) floats in [0, 1]
    y_train: np.ndarray  # (N,) int32 digits
    x_test: np.ndarray
    y_test: np.ndarray


def load_sklearn_digits(seed: int = 0) -> Data:
    """The 1,797 8x8 digits scikit-learn ships, scaled to [0, 1], split 80/20 stratified."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, stratify=y, random_state=seed)
    return Data(xtr, ytr, xte, yte)


_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not; errors name the file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file not found: {path}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: corrupt gzip data ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != need:
        raise ValueError(f"{path}: expected {need} bytes of data for shape {shape}, found {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).exists():
            return directory / name
    raise FileNotFoundError(f"MNIST file {stem}[.gz] not found in {directory}")


def load_mnist(directory: str | Path) -> Data:
    """MNIST from the four IDX files in ``directory`` (as distributed, gzipped or not)."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"MNIST directory not found: {d}")
    parts = []
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        parts.append(read_idx(_find(d, stem)))
    xtr, ytr, xte, yte = parts
    for images, labels, which in ((xtr, ytr, "train"), (xte, yte, "t10k")):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{d}: {which} images {images.shape} and labels {labels.shape} do not match")
    return Data((xtr / 255.0).astype(np.float32), ytr.astype(np.int32),
                (xte / 255.0).astype(np.float32), yte.astype(np.int32))


def load(spec: str, seed: int = 0) -> Data:
    if spec == "digits":
        return load_sklearn_digits(seed)
    if spec.startswith("mnist:"):
        return load_mnist(spec.split(":", 1)[1])
    raise ValueError(f"--data must be 'digits' or 'mnist:DIR', got {spec!r}")


# --- model -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    model: str = "mlp"          # mlp | cnn
    task: str = "digits"        # digits (10 classes) | two ("2 or not 2")
    hidden: int = 256
    channels: int = 64
    optimizer: str = "adam"     # sgd | momentum | adam
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 30
    seed: int = 0

    @property
    def outputs(self) -> int:
        return 1 if self.task == "two" else 10


def _ops():
    """The rules the model is written with (a namespace, so a test can swap in plain jax.nn)."""
    import jaxrules as jr
    return jr


def init(cfg: Config, image_shape: tuple[int, int], key) -> dict[str, Any]:
    """Parameters as a pytree: He-initialised weights, zero biases."""
    import jax
    import jax.numpy as jnp

    def he(k, shape, fan_in):
        return jax.random.normal(k, shape, jnp.float32) * float(np.sqrt(2.0 / fan_in))

    k = jax.random.split(key, 3)
    h, w = image_shape
    if cfg.model == "mlp":
        d = h * w
        return {
            "dense1": {"W": he(k[0], (d, cfg.hidden), d), "b": jnp.zeros(cfg.hidden, jnp.float32)},
            "dense2": {"W": he(k[1], (cfg.hidden, cfg.hidden), cfg.hidden), "b": jnp.zeros(cfg.hidden, jnp.float32)},
            "out": {"W": he(k[2], (cfg.hidden, cfg.outputs), cfg.hidden), "b": jnp.zeros(cfg.outputs, jnp.float32)},
        }
    if cfg.model == "cnn":
        c = cfg.channels
        flat = (h // 2) * (w // 2) * c
        return {
            "conv": {"W": he(k[0], (3, 3, 1, c), 9), "b": jnp.zeros(c, jnp.float32)},
            "dense": {"W": he(k[1], (flat, cfg.hidden), flat), "b": jnp.zeros(cfg.hidden, jnp.float32)},
            "out": {"W": he(k[2], (cfg.hidden, cfg.outputs), cfg.hidden), "b": jnp.zeros(cfg.outputs, jnp.float32)},
        }
    raise ValueError(f"--model must be 'mlp' or 'cnn', got {cfg.model!r}")


def apply(params: dict[str, Any], x, cfg: Config, ops=None):
    """Logits for images x of shape (N, H, W): seed 003's forward pass, z = W y + b, y = f(z)."""
    ops = ops or _ops()
    if cfg.model == "mlp":
        y = x.reshape(x.shape[0], -1)
        y = ops.relu(ops.dense(y, params["dense1"]["W"], params["dense1"]["b"]))
        y = ops.relu(ops.dense(y, params["dense2"]["W"], params["dense2"]["b"]))
        return ops.dense(y, params["out"]["W"], params["out"]["b"])
    y = ops.conv(x[..., None], params["conv"]["W"], params["conv"]["b"], padding="SAME")
    y = ops.max_pool(ops.relu(y), (2, 2))
    y = ops.relu(ops.dense(y.reshape(y.shape[0], -1), params["dense"]["W"], params["dense"]["b"]))
    return ops.dense(y, params["out"]["W"], params["out"]["b"])


def loss(params: dict[str, Any], x, labels, cfg: Config, ops=None):
    """Mean divergence over the batch: softmax cross-entropy (10 digits) or sigmoid BCE ("2 or not 2")."""
    ops = ops or _ops()
    logits = apply(params, x, cfg, ops)
    if cfg.task == "two":
        return ops.sigmoid_binary_cross_entropy(logits[:, 0], (labels == 2).astype(logits.dtype)).mean()
    return ops.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def predict(params, x, cfg: Config):
    logits = apply(params, x, cfg)
    if cfg.task == "two":
        return (logits[:, 0] > 0).astype("int32")
    return logits.argmax(-1)


def accuracy(params, x, labels, cfg: Config) -> float:
    truth = (labels == 2).astype("int32") if cfg.task == "two" else labels
    return float((predict(params, x, cfg) == truth).mean())


# --- training --------------------------------------------------------------------------------

def optimizer(cfg: Config):
    import optax
    if cfg.optimizer == "sgd":
        return optax.sgd(cfg.lr)
    if cfg.optimizer == "momentum":
        return optax.sgd(cfg.lr, momentum=0.9)
    if cfg.optimizer == "adam":
        return optax.adam(cfg.lr)
    raise ValueError(f"--optimizer must be sgd, momentum or adam, got {cfg.optimizer!r}")


def make_epoch(cfg: Config, tx, n_train: int, mesh=None) -> Callable:
    """One jit-compiled epoch: shuffle with the epoch's key, then lax.scan over full batches.

    With a ``mesh``, every batch is sharded over its 'batch' axis (parameters stay replicated),
    and XLA inserts the all-reduce of the gradients.
    """
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    steps = n_train // cfg.batch_size
    if steps == 0:
        raise ValueError(f"--batch-size {cfg.batch_size} is larger than the {n_train} training examples")

    def update(carry, idx):
        params, opt_state, x, y = carry
        xb, yb = x[idx], y[idx]
        if mesh is not None:
            xb = jax.lax.with_sharding_constraint(xb, NamedSharding(mesh, P("batch")))
            yb = jax.lax.with_sharding_constraint(yb, NamedSharding(mesh, P("batch")))
        value, grads = jax.value_and_grad(loss)(params, xb, yb, cfg)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (jax.tree_util.tree_map(jnp.add, params, updates), opt_state, x, y), value

    @jax.jit
    def epoch(params, opt_state, x, y, key):
        order = jax.random.permutation(key, x.shape[0])[: steps * cfg.batch_size].reshape(steps, cfg.batch_size)
        (params, opt_state, _, _), losses = jax.lax.scan(update, (params, opt_state, x, y), order)
        return params, opt_state, losses.mean()

    return epoch


# --- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(directory: str | Path, params, opt_state, epoch: int, history: dict) -> None:
    """Parameters, optimizer state, epoch and history, written to a temporary file, then renamed."""
    import jax
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    tmp = d / "checkpoint.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, *[np.asarray(v) for v in leaves], meta=np.frombuffer(
            json.dumps({"epoch": epoch, "history": history}).encode(), np.uint8))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / "checkpoint.npz")


def load_checkpoint(directory: str | Path, params_like, opt_state_like):
    """(params, opt_state, epoch, history) from save_checkpoint, shaped like the given templates."""
    import jax
    import jax.numpy as jnp
    path = Path(directory) / "checkpoint.npz"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {path}")
    with np.load(path) as z:
        treedef = jax.tree_util.tree_structure((params_like, opt_state_like))
        leaves = [z[f"arr_{i}"] for i in range(treedef.num_leaves)]
        meta = json.loads(bytes(z["meta"]).decode())
    like = jax.tree_util.tree_leaves((params_like, opt_state_like))
    for i, (a, b) in enumerate(zip(leaves, like)):
        if a.shape != b.shape:
            raise ValueError(f"{path}: leaf {i} has shape {a.shape}, the model needs {b.shape} "
                             f"(different --model/--hidden/--task?)")
    params, opt_state = treedef.unflatten([jnp.asarray(v, b.dtype) for v, b in zip(leaves, like)])
    return params, opt_state, meta["epoch"], meta["history"]


# --- the program -----------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    pass


def train(cfg: Config, data: Data, *, devices: int = 1, save: str | None = None, resume: str | None = None,
          progress: bool = True, log=print) -> tuple[Any, dict]:
    """Train; return (params, history) with per-epoch 'loss' and 'test_accuracy'."""
    import jax
    import numpy as onp
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tqdm.auto import tqdm

    key = jax.random.key(cfg.seed)
    init_key, data_key = jax.random.split(key)
    params = init(cfg, data.x_train.shape[1:], init_key)
    tx = optimizer(cfg)
    opt_state = tx.init(params)
    history: dict[str, list[float]] = {"loss": [], "test_accuracy": []}
    start = 0
    if resume:
        params, opt_state, start, history = load_checkpoint(resume, params, opt_state)

    mesh = None
    x, y = jax.numpy.asarray(data.x_train), jax.numpy.asarray(data.y_train)
    if devices > 1:
        if jax.device_count() < devices:
            raise RuntimeError(f"--devices {devices}: only {jax.device_count()} device(s) available")
        if cfg.batch_size % devices:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by --devices {devices}")
        mesh = jax.make_mesh((devices,), ("batch",), devices=jax.devices()[:devices],
                             axis_types=(jax.sharding.AxisType.Auto,))
        replicated = NamedSharding(mesh, P())
        params, opt_state, x, y = jax.device_put((params, opt_state, x, y), replicated)
    epoch_fn = make_epoch(cfg, tx, len(data.x_train), mesh)

    saved = start if resume else 0
    bar = tqdm(range(start, cfg.epochs), desc=f"{cfg.model} {cfg.task}", unit="epoch", disable=not progress,
               initial=start, total=cfg.epochs)
    for e in bar:
        new_params, new_opt_state, mean_loss = epoch_fn(params, opt_state, x, y, jax.random.fold_in(data_key, e))
        mean_loss = float(mean_loss)
        if not onp.isfinite(mean_loss):
            bar.close()
            kept = (f"; the last good checkpoint (epoch {saved}) is kept in {save}" if save and saved
                    else "; no checkpoint was written" if save else "")
            raise NonFiniteLoss(f"loss became {mean_loss} in epoch {e + 1}: training stopped{kept}")
        params, opt_state = new_params, new_opt_state
        history["loss"].append(mean_loss)
        history["test_accuracy"].append(accuracy(params, data.x_test, data.y_test, cfg))
        bar.set_postfix(loss=f"{mean_loss:.4f}", test_acc=f"{history['test_accuracy'][-1]:.4f}")
        if save:
            save_checkpoint(save, params, opt_state, e + 1, history)
            saved = e + 1
    bar.close()
    return params, history


def plot(history: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, history["loss"], marker=".")
    a.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss")
    b.plot(epochs, history["test_accuracy"], marker=".", color="C1")
    b.set(xlabel="epoch", ylabel="test accuracy", title="accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="digits", help="'digits' (scikit-learn's 8x8) or 'mnist:DIR' (IDX files)")
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--task", choices=["digits", "two"], default="digits", help="ten digits, or '2 or not 2'")
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"], default="adam")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hidden", type=int, default=256, help="width of the hidden dense layers")
    p.add_argument("--channels", type=int, default=64, help="convolution features (--model cnn)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--devices", type=int, default=1, help="shard each batch over N devices (jax.sharding)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--plot", metavar="PNG", help="write loss and accuracy curves")
    p.add_argument("--save", metavar="DIR", help="checkpoint after every epoch")
    p.add_argument("--resume", metavar="DIR", help="continue from the checkpoint in DIR")
    p.add_argument("--history", metavar="JSON", help="write the per-epoch loss and accuracy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    for name in ("lr", "batch_size", "epochs", "hidden", "channels", "devices"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.devices > 1:  # CPU devices come from XLA's flag, which must be set before JAX starts
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={a.devices}".strip()
    import jax
    if a.distributed:
        jax.distributed.initialize()
    t0 = time.perf_counter()
    cfg = Config(model=a.model, task=a.task, hidden=a.hidden, channels=a.channels, optimizer=a.optimizer, lr=a.lr,
                 batch_size=a.batch_size, epochs=a.epochs, seed=a.seed)
    try:
        data = load(a.data, a.seed)
        params, history = train(cfg, data, devices=a.devices, save=a.save, resume=a.resume,
                                progress=not a.no_progress)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.plot:
        plot(history, a.plot)
    if a.history:
        Path(a.history).write_text(json.dumps(history))
    print(f"{len(data.x_train)} training / {len(data.x_test)} test images, {cfg.model}, {cfg.task}, "
          f"{jax.device_count() if a.devices > 1 else 1} device(s), {time.perf_counter() - t0:.1f} s")
    print(f"test accuracy: {accuracy(params, data.x_test, data.y_test, cfg):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
