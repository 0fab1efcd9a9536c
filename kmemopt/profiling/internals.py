"""What some layers hold beyond their outputs: memory inside a layer that the graph does not show.

Each rule returns two lines in the batch size: `saved` (kept by a training step for the backward
pass) and `transient` (alive only while the layer runs). Layers without a rule hold nothing extra.
These rules are the part of the static model that measurements calibrate (see README, "Memory model").
"""

from __future__ import annotations

from kmemopt.profiling.dtypes import itemsize
from kmemopt.profiling.graph import ZERO, Line


def _per_sample(shape, dtype) -> int:
    n = 1
    for d in list(shape)[1:]:
        if d is None:
            return 0
        n *= int(d)
    return n * itemsize(dtype)


def _rnn(layer, in_specs, out_specs):
    """Recurrent layers keep what every time step computed for backpropagation through time."""
    cell = getattr(layer, "cell", None)
    units = getattr(cell, "units", None) or getattr(layer, "units", None)
    if units is None or not in_specs:
        return ZERO, ZERO
    shape = in_specs[0].shape
    if len(shape) < 3 or shape[1] is None:
        return ZERO, ZERO
    steps = int(shape[1])
    dtype = str(out_specs[0].dtype) if out_specs else "float32"
    gates = {"LSTMCell": 4, "GRUCell": 3, "SimpleRNNCell": 1}.get(type(cell).__name__, 1)
    # Per step: the input projection and recurrent projection of every gate, the activated gates,
    # and the cell/hidden states (LSTM: c, tanh(c), h).
    states = 3 if gates == 4 else 1
    per_step = (2 * gates + gates + states) * int(units) * itemsize(dtype)
    saved = Line(0, steps * per_step)
    transient = Line(0, (2 * gates + states) * int(units) * itemsize(dtype))
    return saved, transient


def _attention(layer, in_specs, out_specs):
    """Multi-head attention materialises the score matrix (B, heads, Tq, Tk) and its softmax."""
    heads = getattr(layer, "num_heads", None)
    key_dim = getattr(layer, "key_dim", None) or getattr(layer, "_key_dim", None)
    value_dim = getattr(layer, "value_dim", None) or getattr(layer, "_value_dim", None) or key_dim
    if not heads or not key_dim or not in_specs:
        return ZERO, ZERO
    q = in_specs[0].shape
    v = in_specs[1].shape if len(in_specs) > 1 else q
    if len(q) < 3 or q[1] is None or v[1] is None:
        return ZERO, ZERO
    tq, tk = int(q[1]), int(v[1])
    dtype = str(out_specs[0].dtype) if out_specs else "float32"
    size = itemsize(dtype)
    scores = heads * tq * tk * size
    projections = heads * (tq * key_dim + tk * key_dim + tk * value_dim) * size
    context = heads * tq * value_dim * size
    saved = Line(0, projections + 2 * scores + context)
    transient = Line(0, projections + 2 * scores + context)
    return saved, transient


_RULES = {
    "LSTM": _rnn,
    "GRU": _rnn,
    "SimpleRNN": _rnn,
    "MultiHeadAttention": _attention,
    "GroupedQueryAttention": _attention,
}


def layer_internals(layer, in_specs, out_specs) -> tuple[Line, Line]:
    rule = _RULES.get(type(layer).__name__)
    if rule is None and type(layer).__name__ == "Bidirectional":
        f_saved, f_tr = _rnn(layer.forward_layer, in_specs, out_specs)
        b_saved, b_tr = _rnn(layer.backward_layer, in_specs, out_specs)
        return f_saved + b_saved, f_tr + b_tr
    if rule is None:
        return ZERO, ZERO
    return rule(layer, in_specs, out_specs)
