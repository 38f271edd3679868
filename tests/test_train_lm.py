"""The second main job, examples/train_lm.py: its data, its flags end to end, exact resumption."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_lm.py"
spec = importlib.util.spec_from_file_location("train_lm", SCRIPT)
tl = importlib.util.module_from_spec(spec)
sys.modules["train_lm"] = tl
spec.loader.exec_module(tl)

pytestmark = pytest.mark.xdist_group("train")  # one worker: the runs share compilations

TINY = tl.Config(steps=8, context=32, batch_size=8, layers=2, width=32, heads=2, lr=1e-2, eval_every=4,
                 eval_bytes=512)
TINY_FLAGS = ["--context", "32", "--batch-size", "8", "--layers", "2", "--width", "32", "--heads", "2",
              "--lr", "1e-2", "--eval-bytes", "512", "--no-progress"]
LINE = re.compile(r"^validation bits per byte: (\d+\.\d{3}) \(unigram baseline: (\d+\.\d{3})\)$")


def _text(n_functions: int = 300) -> str:
    """A small, learnable, Python-like text."""
    return "".join(f"def f{i}(x):\n    return x * {i % 7} + {i % 3}\n\n" for i in range(n_functions))


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.py"
    path.write_text(_text())
    return path


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# --- data ------------------------------------------------------------------------------------

def test_default_corpus_is_the_standard_library_split_by_file():
    files = tl.stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)
    assert any(f.name == "sysconfig.py" for f in files)


def test_directory_split_is_by_file_fixed_and_disjoint(tmp_path):
    for i in range(10):
        (tmp_path / f"m{i}.py").write_text(f"# module {i}\n" + "x = 1\n" * (i + 1))
    (tmp_path / ".hidden").write_text("secret\n")
    (tmp_path / "blob.bin").write_bytes(b"\0\1\2")
    a, b = tl.load_corpus(str(tmp_path)), tl.load_corpus(str(tmp_path))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.valid, b.valid)
    assert "(10 files)" in a.source
    valid = bytes(a.valid).decode()
    assert valid.count("# module") == 1  # one file of ten held out, whole
    assert valid not in bytes(a.train).decode() and b"secret" not in bytes(a.train) + bytes(a.valid)
    assert len(a.train) + len(a.valid) == sum(len((tmp_path / f"m{i}.py").read_bytes()) for i in range(10))


def test_single_file_split_keeps_the_last_tenth_for_validation(corpus_file):
    c = tl.load_corpus(str(corpus_file))
    data = corpus_file.read_bytes()
    assert bytes(c.train) + bytes(c.valid) == data and len(c.valid) == len(data) // 10


def test_unigram_baseline_and_evaluation_windows():
    uniform = np.arange(256 * 4, dtype=np.int64) % 256
    assert tl.unigram_bits(uniform.astype(np.uint8), np.array([0, 7, 255])) == pytest.approx(8.0)
    skewed = np.array([0] * 254 + [1] * 2, np.uint8)  # p(0) = 255/258, p(1) = 3/258 with add-one smoothing
    assert tl.unigram_bits(skewed, np.array([0, 1])) == pytest.approx(-(np.log2(255 / 512) + np.log2(3 / 512)) / 2)
    valid = np.arange(100, dtype=np.uint8)
    w = tl.eval_windows(valid, 9, 4)
    assert w.shape == (4, 10) and w[0, 0] == 0 and w[-1, -1] == 99
    assert (np.diff(w, axis=1) == 1).all()  # contiguous windows, spread from the first byte to the last


# --- the program -----------------------------------------------------------------------------

def test_main_trains_prints_one_bits_per_byte_line_then_a_sample(corpus_file, tmp_path, capsys):
    png, hist = tmp_path / "curves.png", tmp_path / "h.json"
    argv = ["--data", str(corpus_file), "--steps", "30", "--eval-every", "10", "--sample", "60", "--prompt",
            "def f1", "--temperature", "0.5", "--plot", str(png), "--history", str(hist), *TINY_FLAGS]
    assert tl.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    hits = [i for i, line in enumerate(out) if LINE.match(line)]
    assert len(hits) == 1 and sum("bits per byte" in line for line in out) == 1, out
    bpb, unigram = map(float, LINE.match(out[hits[0]]).groups())
    h = json.loads(hist.read_text())
    assert len(h["loss"]) == 30 and h["valid_step"] == [10, 20, 30]
    assert bpb == round(h["valid_bpb"][-1], 3) and unigram == round(h["unigram_bpb"], 3)
    assert bpb < 0.75 * unigram  # it learned something in 30 steps of a repetitive text
    assert "30 steps" in out[hits[0] - 1] and "training / " in out[hits[0] - 1]
    assert out[hits[0] + 1].startswith("--- sample: 60 bytes after 'def f1', temperature 0.5 ---")
    assert "\n".join(out[hits[0] + 2:]).startswith("def f1")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_resume_reaches_exactly_the_uninterrupted_run(corpus_file, tmp_path):
    corpus = tl.load_corpus(str(corpus_file))
    tl.train(TINY, corpus, save=tmp_path, until=5, progress=False)  # interrupted after step 5
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary file left behind
    resumed, hist = tl.train(TINY, corpus, resume=tmp_path, progress=False)
    straight, hist2 = tl.train(TINY, corpus, progress=False)
    assert _same(resumed, straight) and hist == hist2 and len(hist["loss"]) == 8
    other, hist3 = tl.train(replace(TINY, seed=1), corpus, until=2, progress=False)  # another seed, another run
    assert hist3["loss"][0] != hist["loss"][0] and not _same(other, straight)
    with pytest.raises(ValueError, match=r"made with different settings: lr 0\.01 \(now 0\.02\)"):
        tl.train(replace(TINY, lr=2e-2), corpus, resume=tmp_path, progress=False)


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        tl.main(["--width", "30", "--heads", "4"])
    assert "--width 30 must be a multiple of --heads 4" in capsys.readouterr().err
    assert tl.main(["--data", str(tmp_path / "missing.txt"), "--no-progress"]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    small = tmp_path / "small.txt"
    small.write_text("x" * 300)
    assert tl.main(["--data", str(small), "--context", "64", "--no-progress"]) == 2
    assert "30 validation bytes, fewer than --context 64 + 2" in capsys.readouterr().err


def test_two_devices_equal_one_device_in_a_subprocess(corpus_file):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    probe = f"""
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
sys.path.insert(0, {str(SCRIPT.parent)!r})
import jax, numpy as np, train_lm as tl
cfg = tl.Config(steps=3, context=32, batch_size=8, layers=1, width=32, heads=2, eval_every=3, eval_bytes=512)
corpus = tl.load_corpus({str(corpus_file)!r})
_, one = tl.train(cfg, corpus, progress=False)
params, two = tl.train(cfg, corpus, devices=2, progress=False)
np.testing.assert_allclose(two["loss"], one["loss"], rtol=0, atol=1e-5)
np.testing.assert_allclose(two["valid_bpb"], one["valid_bpb"], rtol=0, atol=1e-5)
print(len(one["loss"]), len(params["embed"].sharding.device_set))  # replicated over both devices
"""
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["3", "2"], r.stdout
