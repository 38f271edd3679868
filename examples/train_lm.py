"""Train a GPT-style byte-level language model built only from jaxrules rules.

    python examples/train_lm.py                        # on the Python standard library's own source
    python examples/train_lm.py --data notes.txt       # any text file, or a directory of them
    python examples/train_lm.py --devices 2            # batches sharded over 2 devices
    python examples/train_lm.py --save ck              # checkpoints; --resume ck continues exactly
    python examples/train_lm.py --sample 500 --prompt "class " --temperature 0.7

The model (jaxrules/models/gpt.py) is a pre-norm decoder whose every differentiable step is a
jaxrules rule: embedding, rope, rms_norm (or layer_norm), dense, causal dot_product_attention,
swiglu, dropout, add, and linear_softmax_cross_entropy, which never forms the logits. optax trains it
(AdamW, linear warmup then cosine decay, gradient clipping) with one jit-compiled step; each step's
batch is drawn on the device from (--seed, step), so a resumed run sees exactly the batches it
would have seen. The run ends with one line ``validation bits per byte: X (unigram baseline: Y)``,
both on the same validation bytes, then a sample of generated text.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np


# --- data ------------------------------------------------------------------------------------

VALID_FRACTION = 0.1  # of the files (or of the bytes, for a single file) held out for validation
SPLIT_SEED = 0        # the split is fixed: --seed changes the model and the batches, never the split


class Corpus(NamedTuple):
    train: np.ndarray  # uint8 bytes
    valid: np.ndarray
    source: str        # where the bytes came from, for the summary and the checkpoint


def stdlib_files() -> list[Path]:
    """The standard library's own .py files (site-packages left out), sorted by path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py")
                  if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts))


def text_files(directory: Path) -> list[Path]:
    """Every non-hidden file under directory that looks like text (no NUL byte in its first 8 kB)."""
    out = []
    for p in sorted(directory.rglob("*")):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(directory).parts):
            with open(p, "rb") as f:
                if b"\0" not in f.read(8192):
                    out.append(p)
    return out


def split(files: list[Path], source: str) -> Corpus:
    """Train and validation bytes: by file (a fixed shuffle), or by position for a single file."""
    if not files:
        raise FileNotFoundError(f"no text files in {source}")
    if len(files) == 1:
        data = np.frombuffer(files[0].read_bytes(), np.uint8)
        cut = len(data) - max(1, int(len(data) * VALID_FRACTION))
        return Corpus(data[:cut], data[cut:], source)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(files))
    n_valid = max(1, round(len(files) * VALID_FRACTION))

    def read(ids) -> np.ndarray:
        return np.frombuffer(b"".join(files[i].read_bytes() for i in sorted(ids)), np.uint8)
    return Corpus(read(order[n_valid:]), read(order[:n_valid]), source)


def load_corpus(path: str | None = None) -> Corpus:
    """The standard library's source (path None), a text file, or a directory of text files."""
    if path is None:
        files = stdlib_files()
        return split(files, f"the Python standard library ({len(files)} files)")
    p = Path(path)
    if p.is_dir():
        files = text_files(p)
        return split(files, f"{p} ({len(files)} files)")
    if not p.exists():
        raise FileNotFoundError(f"--data: no such file or directory: {p}")
    return split([p], str(p))


def unigram_bits(train: np.ndarray, targets: np.ndarray) -> float:
    """Bits per byte of ``targets`` under the training bytes' frequencies (add-one smoothed)."""
    counts = np.bincount(train, minlength=256).astype(np.float64) + 1
    return float(-np.mean(np.log2(counts / counts.sum())[targets]))


def eval_windows(valid: np.ndarray, context: int, n: int) -> np.ndarray:
    """n windows of context + 1 bytes (int32), evenly spread over the validation bytes."""
    last = len(valid) - context - 1
    starts = np.linspace(0, last, n).round().astype(np.int64)
    return valid[starts[:, None] + np.arange(context + 1)].astype(np.int32)


def sample_batch(train, key, batch: int, context: int):
    """(ids, next ids), each (batch, context) int32: windows at random offsets, drawn on the device."""
    import jax
    import jax.numpy as jnp
    starts = jax.random.randint(key, (batch,), 0, train.shape[0] - context)
    w = train[starts[:, None] + jnp.arange(context + 1)].astype(jnp.int32)
    return w[:, :-1], w[:, 1:]


# --- model and optimizer ---------------------------------------------------------------------

@dataclass(frozen=True)
class Config:
    steps: int = 300
    context: int = 256
    batch_size: int = 16
    layers: int = 4
    width: int = 128
    heads: int = 4
    norm: str = "rms"          # rms | layer
    dropout: float = 0.0
    recompute: str = "none"    # none | mlp | layer: what the backward recomputes (jaxrules/models/gpt.py)
    lr: float = 3e-3
    weight_decay: float = 0.1
    clip: float = 1.0
    seed: int = 0
    eval_every: int = 100
    eval_bytes: int = 1 << 16

    def model(self):
        from jaxrules.models import gpt
        return gpt.GPT(vocab=256, layers=self.layers, width=self.width, heads=self.heads, norm=self.norm,
                       dropout=self.dropout, recompute=self.recompute)

    @property
    def warmup(self) -> int:
        return max(1, min(100, self.steps // 10))


# settings a run may change when it resumes (the rest must match the checkpoint for exact resumption)
RESUMABLE = ("steps", "eval_every", "eval_bytes")


def optimizer(cfg: Config):
    """Gradient clipping, then AdamW (matrices decayed) on a linear warmup and a cosine decay to lr/10."""
    import optax
    from jaxrules.models import gpt
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1),
                                                  end_value=cfg.lr / 10)
    return optax.chain(optax.clip_by_global_norm(cfg.clip),
                       optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                                   mask=gpt.weight_decay_mask))


def make_step(cfg: Config, mesh=None) -> Callable:
    """One jit-compiled training step: draw the step's batch, value_and_grad of the loss, optax update.

    With a ``mesh``, the batch is sharded over its 'batch' axis (parameters stay replicated) and XLA
    inserts the all-reduce of the gradients. Runs whose settings differ only in what the step does
    not read (seed, evaluation) share one compiled step.
    """
    return _make_step(replace(cfg, seed=0, eval_every=1, eval_bytes=1), mesh)


@functools.lru_cache(maxsize=8)
def _make_step(cfg: Config, mesh) -> Callable:
    import jax
    import optax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxrules.models import gpt

    model, ops, tx = cfg.model(), gpt.operations("jaxrules"), optimizer(cfg)

    @jax.jit
    def step(params, opt_state, train, key, i):
        batch_key, dropout_key = jax.random.split(jax.random.fold_in(key, i))
        ids, targets = sample_batch(train, batch_key, cfg.batch_size, cfg.context)
        if mesh is not None:
            ids, targets = (jax.lax.with_sharding_constraint(a, NamedSharding(mesh, P("batch"))) for a in (ids, targets))
        value, grads = jax.value_and_grad(gpt.loss)(params, ids, targets, model, ops,
                                                    key=dropout_key if model.dropout else None)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return step


@functools.lru_cache(maxsize=8)
def _total_loss(model) -> Callable:
    """jit: (params, windows (n, T + 1)) -> summed cross-entropy (nats) of each window's bytes after its first."""
    import jax
    from jaxrules.models import gpt
    ops = gpt.operations("jaxrules")

    @jax.jit
    def total(params, w):
        return gpt.loss(params, w[:, :-1], w[:, 1:], model, ops, reduction="sum")
    return total


def make_evaluate(cfg: Config, windows: np.ndarray, mesh=None) -> Callable:
    """params -> validation bits per byte over ``windows`` (the bytes after each window's first)."""
    sharding = None
    if mesh is not None:
        from jax.sharding import NamedSharding, PartitionSpec as P
        sharding = NamedSharding(mesh, P("batch"))
    batches = [_put(windows[i:i + cfg.batch_size], sharding) for i in range(0, len(windows), cfg.batch_size)]
    total = _total_loss(cfg.model())

    def evaluate(params) -> float:
        nats = sum(float(total(params, w)) for w in batches)
        return nats / (windows.shape[0] * (windows.shape[1] - 1)) / math.log(2)
    return evaluate


def make_generate(cfg: Config) -> Callable:
    """(params, prompt bytes, n, temperature, key) -> n generated bytes, one compiled loop.

    The model sees the last ``context`` bytes; temperature 0 takes the most likely byte.
    """
    import jax
    import jax.numpy as jnp
    from jaxrules.models import gpt

    model, ops, t = cfg.model(), gpt.operations("jaxrules"), cfg.context

    @jax.jit
    def run(params, buf, length, out, temperature, key):
        def body(i, carry):
            buf, length, out = carry
            h = gpt.hidden(params, buf[None], model, ops)[0, length - 1]
            z = ops.dense(h, params["head"])
            drawn = jax.random.categorical(jax.random.fold_in(key, i), z / jnp.maximum(temperature, 1e-6))
            b = jnp.where(temperature > 0, drawn, jnp.argmax(z)).astype(buf.dtype)
            buf = jnp.where(length == t, jnp.roll(buf, -1).at[t - 1].set(b), buf.at[jnp.minimum(length, t - 1)].set(b))
            return buf, jnp.minimum(length + 1, t), out.at[i].set(b)
        return jax.lax.fori_loop(0, out.shape[0], body, (buf, length, out))[2]

    def generate(params, prompt: bytes, n: int, temperature: float, key) -> bytes:
        p = np.frombuffer(prompt or b"\n", np.uint8)[-t:].astype(np.int32)
        buf = np.zeros(t, np.int32)
        buf[: len(p)] = p
        out = run(params, jnp.asarray(buf), jnp.int32(len(p)), jnp.zeros(n, jnp.int32), jnp.float32(temperature), key)
        return bytes(np.asarray(out, np.uint8))
    return generate


def _put(a, sharding):
    """A host array on the device(s): whole, or laid out by ``sharding`` (which may span processes)."""
    import jax
    if sharding is None:
        return jax.numpy.asarray(a)
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])


def _host(a) -> np.ndarray:
    """A (replicated) device array on the host, also when it spans processes."""
    return np.asarray(a if a.is_fully_addressable else a.addressable_data(0))


# --- checkpoints -----------------------------------------------------------------------------

def save_checkpoint(directory: str | Path, params, opt_state, step: int, history: dict, meta: dict) -> None:
    """Parameters, optimizer state, step, history and settings, written to a temporary file, then renamed."""
    import jax
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    leaves = jax.tree_util.tree_leaves((params, opt_state))
    tmp = d / "checkpoint.tmp.npz"
    with open(tmp, "wb") as f:
        np.savez(f, *[_host(v) for v in leaves], meta=np.frombuffer(
            json.dumps({"step": step, "history": history, **meta}).encode(), np.uint8))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, d / "checkpoint.npz")


def load_checkpoint(directory: str | Path, params_like, opt_state_like):
    """(params, opt_state as host arrays, step, history, settings) from save_checkpoint."""
    import jax
    path = Path(directory) / "checkpoint.npz"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {path}")
    with np.load(path) as z:
        treedef = jax.tree_util.tree_structure((params_like, opt_state_like))
        like = jax.tree_util.tree_leaves((params_like, opt_state_like))
        leaves = [z[f"arr_{i}"] for i in range(len(like)) if f"arr_{i}" in z]
        meta = json.loads(bytes(z["meta"]).decode())
    if len(leaves) != len(like) or any(a.shape != b.shape for a, b in zip(leaves, like)):
        raise ValueError(f"{path}: its parameters do not fit this model (different --layers/--width/--norm?)")
    params, opt_state = treedef.unflatten([np.asarray(v, b.dtype) for v, b in zip(leaves, like)])
    return params, opt_state, meta.pop("step"), meta.pop("history"), meta


# --- the program -----------------------------------------------------------------------------

class NonFiniteLoss(RuntimeError):
    pass


def train(cfg: Config, corpus: Corpus, *, devices: int = 1, save: str | None = None, resume: str | None = None,
          progress: bool = True, until: int | None = None) -> tuple[Any, dict]:
    """Train; return (params, history). ``until`` stops after that step (as an interrupted run would).

    history: per-step training 'loss' (nats per byte), and 'valid_step'/'valid_bpb', the validation
    bits per byte every ``eval_every`` steps and at the end, next to the 'unigram_bpb' baseline.
    """
    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P
    from tqdm.auto import tqdm
    from jaxrules.models import gpt

    for name, part in (("training", corpus.train), ("validation", corpus.valid)):
        if len(part) <= cfg.context + 1:
            raise ValueError(f"{corpus.source}: {len(part)} {name} bytes, fewer than --context {cfg.context} + 2")
    n_windows = max(1, cfg.eval_bytes // cfg.context // cfg.batch_size) * cfg.batch_size
    windows = eval_windows(corpus.valid, cfg.context, n_windows)
    history: dict[str, Any] = {"loss": [], "valid_step": [], "valid_bpb": [],
                               "unigram_bpb": unigram_bits(corpus.train, windows[:, 1:])}

    key = jax.random.key(cfg.seed)
    init_key, data_key = jax.random.split(key)
    params = gpt.init(cfg.model(), init_key)
    opt_state = optimizer(cfg).init(params)
    settings = {"config": {k: v for k, v in asdict(cfg).items() if k not in RESUMABLE},
                "data": {"source": corpus.source, "train_bytes": len(corpus.train)}}
    start = 0
    if resume:
        params, opt_state, start, history, meta = load_checkpoint(resume, params, opt_state)
        for what in ("config", "data"):
            diff = {k: (meta[what].get(k), v) for k, v in settings[what].items() if meta[what].get(k) != v}
            if diff:
                raise ValueError(f"--resume {resume}: the checkpoint was made with different settings: " + ", ".join(
                    f"{k} {old!r} (now {new!r})" for k, (old, new) in diff.items()))

    mesh, replicated = None, None
    if devices > 1:
        if jax.device_count() < devices:
            raise RuntimeError(f"--devices {devices}: only {jax.device_count()} device(s) available")
        if cfg.batch_size % devices:
            raise ValueError(f"--batch-size {cfg.batch_size} must be divisible by --devices {devices}")
        mesh = jax.make_mesh((devices,), ("batch",), devices=jax.devices()[:devices],
                             axis_types=(jax.sharding.AxisType.Auto,))
        replicated = NamedSharding(mesh, P())
    params, opt_state = jax.tree_util.tree_map(lambda a: _put(a, replicated), (params, opt_state))
    train_bytes = _put(corpus.train, replicated)
    step_fn = make_step(cfg, mesh)
    evaluate = make_evaluate(cfg, windows, mesh)
    lead = jax.process_index() == 0
    save = save if lead else None

    end = cfg.steps if until is None else min(until, cfg.steps)
    saved = start if resume else 0
    tokens = cfg.batch_size * cfg.context
    bar = tqdm(range(start, end), desc="train_lm", unit="step", disable=not (progress and lead),
               initial=start, total=cfg.steps)
    rate, last = None, time.perf_counter()
    for i in bar:
        new_params, new_opt_state, value = step_fn(params, opt_state, train_bytes, data_key, i)
        value = float(value)
        if not math.isfinite(value):
            bar.close()
            kept = (f"; the last good checkpoint (step {saved}) is kept in {save}" if save and saved
                    else "; no checkpoint was written" if save else "")
            raise NonFiniteLoss(f"loss became {value} at step {i + 1}: training stopped{kept}")
        params, opt_state = new_params, new_opt_state
        history["loss"].append(value)
        now = time.perf_counter()
        if i > start:  # the first step compiles
            r = tokens / (now - last)
            rate = r if rate is None else 0.9 * rate + 0.1 * r
        bar.set_postfix(loss=f"{value:.3f}", **({"tok/s": f"{rate:,.0f}"} if rate else {}))
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.steps:
            history["valid_step"].append(i + 1)
            history["valid_bpb"].append(evaluate(params))
            bar.set_postfix(loss=f"{value:.3f}", valid_bpb=f"{history['valid_bpb'][-1]:.3f}",
                            **({"tok/s": f"{rate:,.0f}"} if rate else {}))
            if save:
                save_checkpoint(save, params, opt_state, i + 1, history, settings)
                saved = i + 1
        last = time.perf_counter()
    bar.close()
    if save and end > saved:
        save_checkpoint(save, params, opt_state, end, history, settings)
    if until is None and (not history["valid_step"] or history["valid_step"][-1] != end):  # resumed at the end
        history["valid_step"].append(end)
        history["valid_bpb"].append(evaluate(params))
    return params, history


def plot(history: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    loss = np.asarray(history["loss"]) / math.log(2)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, len(loss) + 1), loss, lw=0.6, alpha=0.5, label="training batch")
    k = max(1, len(loss) // 50)
    if len(loss) > k:
        ax.plot(np.arange(k, len(loss) + 1), np.convolve(loss, np.ones(k) / k, "valid"), lw=1.5, color="C0",
                label=f"training ({k}-step mean)")
    ax.plot(history["valid_step"], history["valid_bpb"], "o-", color="C1", label="validation")
    u = history["unigram_bpb"]
    ax.axhline(u, ls="--", color="gray", label=f"unigram baseline {u:.2f}")
    ax.axhline(0.6 * u, ls=":", color="gray", label="0.6 x unigram")
    ax.set(xlabel="step", ylabel="bits per byte", title="train_lm: byte-level GPT from jaxrules rules")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    d = Config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", metavar="PATH", help="a text file or a directory of them (default: the Python "
                   "standard library's .py files)")
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--context", type=int, default=d.context, help="bytes the model sees")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="sequences per step")
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--width", type=int, default=d.width, help="model width (embedding size)")
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--norm", choices=["rms", "layer"], default=d.norm, help="rms_norm or layer_norm")
    p.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate on the residual branches")
    p.add_argument("--recompute", choices=["none", "mlp", "layer"], default=d.recompute,
                   help="run the MLP or each whole layer again in the backward instead of keeping it (memory)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (AdamW, warmup + cosine)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate (and checkpoint) every N steps")
    p.add_argument("--eval-bytes", type=int, default=d.eval_bytes, help="validation bytes to score")
    p.add_argument("--devices", type=int, default=1, help="shard each batch over N devices (jax.sharding)")
    p.add_argument("--distributed", action="store_true", help="call jax.distributed.initialize() (multi-host)")
    p.add_argument("--save", metavar="DIR", help="checkpoint every --eval-every steps and at the end")
    p.add_argument("--resume", metavar="DIR", help="continue from the checkpoint in DIR")
    p.add_argument("--plot", metavar="PNG", help="write the training and validation curves")
    p.add_argument("--history", metavar="JSON", help="write the per-step loss and the validation figures")
    p.add_argument("--sample", type=int, default=300, metavar="N", help="bytes to generate after training (0: none)")
    p.add_argument("--prompt", default="def ", help="text the sample continues")
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (0: most likely byte)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    for name in ("steps", "context", "batch_size", "layers", "width", "heads", "lr", "eval_every", "eval_bytes",
                 "devices"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("sample", "temperature", "weight_decay"):
        if getattr(a, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= a.dropout < 1:
        p.error("--dropout must be in [0, 1)")
    if a.width % a.heads or (a.width // a.heads) % 2:
        p.error(f"--width {a.width} must be a multiple of --heads {a.heads} with an even quotient")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    if a.devices > 1 and not a.distributed:  # one process's CPU devices: XLA's flag, set before JAX starts
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={a.devices}".strip()
    import jax
    if a.distributed:
        jax.distributed.initialize()
    t0 = time.perf_counter()
    cfg = Config(steps=a.steps, context=a.context, batch_size=a.batch_size, layers=a.layers, width=a.width,
                 heads=a.heads, norm=a.norm, dropout=a.dropout, recompute=a.recompute, lr=a.lr,
                 weight_decay=a.weight_decay, seed=a.seed, eval_every=a.eval_every, eval_bytes=a.eval_bytes)
    try:
        corpus = load_corpus(a.data)
        params, history = train(cfg, corpus, devices=a.devices, save=a.save, resume=a.resume,
                                progress=not a.no_progress)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - t0
    text = b""
    if a.sample:  # on every process: the parameters span them all
        text = make_generate(cfg)(params, a.prompt.encode(), a.sample, a.temperature,
                                  jax.random.split(jax.random.key(cfg.seed), 3)[2])
    if jax.process_index() != 0:
        return 0
    if a.plot:
        plot(history, a.plot)
    if a.history:
        Path(a.history).write_text(json.dumps(history))
    n = sum(x.size for x in jax.tree_util.tree_leaves(params))
    print(f"{len(corpus.train):,} training / {len(corpus.valid):,} validation bytes from {corpus.source}; "
          f"{n:,} parameters, {cfg.layers} layers of width {cfg.width}; {len(history['loss'])} steps; "
          f"{a.devices} device(s); {seconds:.1f} s")
    print(f"validation bits per byte: {history['valid_bpb'][-1]:.3f} (unigram baseline: {history['unigram_bpb']:.3f})")
    if a.sample:
        print(f"--- sample: {a.sample} bytes after {a.prompt!r}, temperature {a.temperature:g} ---")
        print((a.prompt.encode() + text).decode("utf-8", errors="replace"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
