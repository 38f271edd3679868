"""jaxrules: neural-network primitives for JAX with hand-written, tested reverse-mode rules.

Every public function is a ``jax.custom_vjp`` whose pullback follows the seeds' notation
``B(f, (x,), (ȳ,)) = ((f(x),), (x̄,))``; names and signatures follow ``jax.nn`` and ``optax.losses``.
"""

from jaxrules.activations import celu as celu
from jaxrules.activations import elu as elu
from jaxrules.activations import gelu as gelu
from jaxrules.activations import hard_sigmoid as hard_sigmoid
from jaxrules.activations import hard_silu as hard_silu
from jaxrules.activations import hard_swish as hard_swish
from jaxrules.activations import hard_tanh as hard_tanh
from jaxrules.activations import leaky_relu as leaky_relu
from jaxrules.activations import log_sigmoid as log_sigmoid
from jaxrules.activations import mish as mish
from jaxrules.activations import relu as relu
from jaxrules.activations import relu6 as relu6
from jaxrules.activations import rrelu as rrelu
from jaxrules.activations import selu as selu
from jaxrules.activations import sigmoid as sigmoid
from jaxrules.activations import silu as silu
from jaxrules.activations import soft_sign as soft_sign
from jaxrules.activations import softplus as softplus
from jaxrules.activations import sparse_plus as sparse_plus
from jaxrules.activations import sparse_sigmoid as sparse_sigmoid
from jaxrules.activations import squareplus as squareplus
from jaxrules.activations import swish as swish
from jaxrules.activations import tanh as tanh
from jaxrules.arithmetic import add as add
from jaxrules.arithmetic import divide as divide
from jaxrules.arithmetic import multiply as multiply
from jaxrules.arithmetic import subtract as subtract
from jaxrules.attention import dot_product_attention as dot_product_attention
from jaxrules.cross_entropy import linear_softmax_cross_entropy as linear_softmax_cross_entropy
from jaxrules.forward import forward_mode as forward_mode
from jaxrules.lean import lean as lean
from jaxrules.linear import conv as conv
from jaxrules.linear import dense as dense
from jaxrules.linear import matmul as matmul
from jaxrules.losses import kl_divergence as kl_divergence
from jaxrules.losses import l2_loss as l2_loss
from jaxrules.losses import sigmoid_binary_cross_entropy as sigmoid_binary_cross_entropy
from jaxrules.losses import softmax_cross_entropy as softmax_cross_entropy
from jaxrules.losses import softmax_cross_entropy_with_integer_labels as softmax_cross_entropy_with_integer_labels
from jaxrules.losses import squared_error as squared_error
from jaxrules.normalization import layer_norm as layer_norm
from jaxrules.normalization import rms_norm as rms_norm
from jaxrules.normalization import standardize as standardize
from jaxrules.pooling import avg_pool as avg_pool
from jaxrules.pooling import max as max  # noqa: A004 (jr.max, as jnp.max)
from jaxrules.pooling import max_pool as max_pool
from jaxrules.softmax import glu as glu
from jaxrules.softmax import log_softmax as log_softmax
from jaxrules.softmax import logsumexp as logsumexp
from jaxrules.softmax import pair_product as pair_product
from jaxrules.softmax import softmax as softmax
from jaxrules.softmax import softmax_backward as softmax_backward
from jaxrules.transformer import dropout as dropout
from jaxrules.transformer import embedding as embedding
from jaxrules.transformer import geglu as geglu
from jaxrules.transformer import rope as rope
from jaxrules.transformer import swiglu as swiglu
from jaxrules._rule import rule as rule
from jaxrules.pullback import B as B
from jaxrules.pullback import pullback as pullback
from jaxrules._broadcast import unbroadcast as unbroadcast

__version__ = "0.1.0"


def __getattr__(name: str):
    """``jaxrules.testing`` after a plain ``import jaxrules`` (as ``np.testing``), imported on first use."""
    if name == "testing":
        import importlib
        return importlib.import_module("jaxrules.testing")
    raise AttributeError(f"module 'jaxrules' has no attribute {name!r}")
