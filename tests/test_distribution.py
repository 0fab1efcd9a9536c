"""Per-device memory under keras.distribution (kmemopt.profiling.distribution).

The fast tests check the static per-device numbers against hand-computed shard sizes and the layout
rules' parsing and refusals. The slow ones distribute tiny models for real with Keras's own
`keras.distribution` on JAX (8 virtual CPU devices, in a child) and assert that kmemopt's per-device
weights, gradients and optimizer bytes equal the shards JAX holds; without jax they skip, except in CI
(CI=true), where a skip would hide a broken check.
"""

from __future__ import annotations

import importlib.util
import json
import os

import pytest

import kmemopt
from kmemopt.errors import UsageError
from kmemopt.profiling.distribution import (
    AUTO_MIN_BYTES,
    Kind,
    distribute,
    make_mesh,
    parse_layout,
    parse_mesh,
    per_device,
    resolve_layout,
)

HAS_JAX = importlib.util.find_spec("jax") is not None
F32 = 4
ADAM_GLOBALS_ON_JAX = 4 + 4  # the int32 step counter (int64 on TensorFlow: JAX's 64-bit types are off) + rate


@pytest.fixture(scope="module")
def needs_jax():
    if not HAS_JAX:
        if os.environ.get("CI") == "true":
            pytest.fail("jax is not installed: CI must run the distribution checks (the dev extra installs it).")
        pytest.skip('jax is not installed (pip install "kmemopt[jax]")')


@pytest.fixture(scope="module")
def mlp(keras):
    """d2/kernel is 2 MiB (auto shards it), the rest is under AUTO_MIN_BYTES (replicated)."""
    inp = keras.Input((64,), name="x")
    h = keras.layers.Dense(512, activation="relu", name="d1")(inp)
    h = keras.layers.Dense(1024, activation="relu", name="d2")(h)
    out = keras.layers.Dense(16, name="d3")(h)
    return keras.Model(inp, out, name="mlp")


@pytest.fixture(scope="module")
def mlp_file(keras, mlp, tmp_path_factory):
    path = tmp_path_factory.mktemp("dist") / "mlp.keras"
    mlp.save(path)
    return path


@pytest.fixture(scope="module")
def mlp_profile(mlp):
    return kmemopt.profile(mlp, batch_size=16)


def weights(*shapes) -> int:
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= d
        total += n * F32
    return total


def test_one_device_of_data_parallel_is_the_whole_profile(mlp_profile):
    d = per_device(mlp_profile, devices=1, kind="data").per_device[0]
    t = mlp_profile.totals
    assert (d.param_bytes, d.gradient_bytes, d.activation_bytes) == (
        t.param_bytes,
        t.gradient_bytes,
        t.activation_bytes,
    )
    assert d.inference_peak_bytes == t.inference_peak_bytes
    assert (d.backward_transient_bytes, d.inference_activation_peak_bytes) == (
        t.backward_transient_bytes,
        t.inference_activation_peak_bytes,
    )
    # Adam's int64 step counter (this profile ran on TensorFlow) is an int32 on JAX, where keras.distribution runs.
    assert d.optimizer_bytes == t.optimizer_bytes - 4
    assert d.training_peak_bytes == t.training_peak_bytes - 4


def test_data_parallel_replicates_the_state_and_splits_the_batch(mlp, mlp_profile):
    dist = per_device(mlp_profile, devices=8, kind="data")
    assert dist.mesh.shape == (8,) and dist.batch_per_device == 2 and len(dist.per_device) == 8
    all_weights = weights((64, 512), (512,), (512, 1024), (1024,), (1024, 16), (16,))
    for d in dist.per_device:
        assert d.param_bytes == d.gradient_bytes == all_weights == mlp_profile.totals.param_bytes
        assert d.optimizer_bytes == 2 * all_weights + ADAM_GLOBALS_ON_JAX
    # Activations per device are the static profile's at the per-device batch.
    at_two = kmemopt.profile(mlp, batch_size=2).totals
    first = dist.per_device[0]
    assert first.activation_bytes == at_two.activation_bytes
    assert first.backward_transient_bytes == at_two.backward_transient_bytes
    assert first.inference_activation_peak_bytes == at_two.inference_activation_peak_bytes


def test_auto_layout_shards_the_largest_dimension_of_big_weights(mlp_profile):
    dist = per_device(mlp_profile, devices=8, kind="model")
    assert dist.mesh.shape == (1, 8) and dist.batch_per_device == 16  # default mesh 1 x N
    assert [(r.pattern, r.axes) for r in dist.layout.rules] == [("d2/kernel", (None, "model"))]
    assert weights((512, 1024)) >= AUTO_MIN_BYTES > weights((64, 512))
    small = weights((64, 512), (512,), (1024,), (1024, 16), (16,))
    expected = small + weights((512, 1024 // 8))
    d = dist.per_device[3]
    assert d.param_bytes == d.gradient_bytes == expected
    assert d.optimizer_bytes == 2 * expected + ADAM_GLOBALS_ON_JAX  # slots follow their variable's layout
    row = next(v for v in dist.variables if v["path"] == "d2/kernel")
    assert row["shard_shape"] == [512, 128] and row["bytes_per_device"] == 512 * 128 * F32


def test_a_user_layout_over_a_2x4_mesh(mlp_profile):
    rules = parse_layout("# kernels split on their outputs\nd[12]/kernel -> None, model\nd2/bias -> (model)\n")
    dist = per_device(mlp_profile, devices=8, kind="model", layout=rules, mesh="2x4")
    assert dist.mesh.shape == (2, 4) and dist.batch_per_device == 8
    expected = weights((64, 128), (512,), (512, 256), (256,), (1024, 16), (16,))
    assert dist.per_device[0].param_bytes == expected
    assert dist.per_device[0].optimizer_bytes == 2 * expected + ADAM_GLOBALS_ON_JAX
    # A weight may be sharded over both axes too.
    both = per_device(
        mlp_profile, devices=8, kind="model", layout=parse_layout('{"d2/kernel": ["batch", "model"]}'), mesh="2x4"
    )
    assert both.per_device[0].param_bytes == mlp_profile.totals.param_bytes - weights((512, 1024)) + weights((256, 256))


def test_layout_rules_match_as_keras_layout_map_does(mlp_profile):
    variables = mlp_profile.variables
    mesh = make_mesh("model", 8)
    # An exact key wins over a regex that also matches.
    lay = resolve_layout(variables, mesh, parse_layout("d1/kernel -> None, model\nd.*/kernel -> model, None\n"))
    assert lay.axes["d1/kernel"] == (None, "model") and lay.axes["d2/kernel"] == ("model", None)
    # fullmatch: "kernel" alone matches no path.
    lay = resolve_layout(variables, mesh, parse_layout("kernel -> None, model\n"))
    assert all(a == (None,) * len(a) for a in lay.axes.values())
    assert any("match no variable" in n for n in lay.notes)
    lay = resolve_layout(variables, mesh, parse_layout("d1/output -> batch, model\n"))
    assert any("name layer outputs" in n for n in lay.notes) and not any("match no variable" in n for n in lay.notes)
    with pytest.raises(UsageError, match="matches 2 layout rules"):
        resolve_layout(variables, mesh, parse_layout("d1/b.* -> model\n.*/bias -> model\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("d1/kernel -> None, model\nd1/kernel -> model, None\n", "twice"),
        ('{"a": ["model"], "a": [null]}', "twice"),
        ("d1/kernel None, model\n", "no '->'"),
        ("d1/[kernel -> model\n", "not a valid regex"),
        ("d1/kernel -> None, tensor\n", "is not one of"),
        ("d1/kernel -> model, model\n", "twice"),
        ("# nothing\n\n", "no layout rule"),
        ("[1, 2]", "no '->'"),
        ('{"d1/kernel": "model"}', "list of axes"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_layout_file_is_one_sentence(text, message):
    with pytest.raises(UsageError, match=message) as info:
        parse_layout(text, "layout.txt")
    assert "\n" not in str(info.value)


def test_a_rule_the_variable_cannot_take_is_refused(mlp_profile):
    with pytest.raises(UsageError, match="gives 1 axes to 'd1/kernel'"):
        per_device(mlp_profile, devices=8, kind="model", layout=parse_layout("d1/kernel -> model\n"))
    with pytest.raises(UsageError, match="dimension 16 over the 'model' axis of 32 devices"):
        per_device(mlp_profile, devices=32, kind="model", layout=parse_layout("d3/kernel -> None, model\n"))


def test_auto_replicates_a_big_weight_no_dimension_of_which_divides(keras):
    inp = keras.Input((7,), name="x")
    model = keras.Model(inp, keras.layers.Dense(40_000, name="wide")(inp))  # 7 x 40,000 float32: 1.1 MB
    r = kmemopt.profile(model, batch_size=3)
    dist = per_device(r, devices=3, kind="model")  # 40,000 is not a multiple of 3, 7 neither
    assert dist.layout.rules == ()
    assert dist.per_device[0].param_bytes == r.totals.param_bytes
    assert any("stay replicated" in n and "'wide/kernel'" in n for n in dist.warnings)
    sharded = per_device(r, devices=8, kind="model")
    assert sharded.per_device[0].param_bytes == weights((7, 5000), (40_000,))


def test_mesh_and_batch_refusals(mlp_profile):
    assert parse_mesh("2x4") == (2, 4) and parse_mesh(" 1X8 ") == (1, 8)
    for bad in ("2x", "0x8", "2*4", "x", ""):
        with pytest.raises(UsageError, match="BATCHxMODEL"):
            parse_mesh(bad)
    with pytest.raises(UsageError, match="does not split evenly over 3 devices"):
        per_device(mlp_profile, devices=3, kind="data")
    with pytest.raises(UsageError, match="3 devices of the mesh's batch axis"):
        per_device(mlp_profile, devices=6, kind="model", mesh="3x2")
    with pytest.raises(UsageError, match="--layout applies to --distribution model"):
        per_device(mlp_profile, devices=8, kind="data", layout=parse_layout("d1/kernel -> None, model"))
    assert make_mesh(Kind.model, None, "2x4").devices == 8


def test_the_json_has_a_distribution_only_when_asked(cli, mlp_file, tmp_path):
    plain = cli("profile", mlp_file, "-b", "16", "-f", "json")
    assert plain.exit_code == 0 and "distribution" not in json.loads(plain.stdout)
    layout = tmp_path / "layout.json"
    layout.write_text(json.dumps({"d1/kernel": [None, "model"]}))
    r = cli("profile", mlp_file, "-b", "16", "--devices", "8", "--layout", layout, "--mesh", "2x4", "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)["distribution"]
    assert d["kind"] == "model" and d["devices"] == 8 and d["mesh"]["shape"] == [2, 4]
    assert d["layout"]["name"] == "file" and d["layout"]["rules"] == [{"pattern": "d1/kernel", "axes": [None, "model"]}]
    assert [p["device"] for p in d["per_device"]] == list(range(8))
    keys = {"param_bytes", "gradient_bytes", "optimizer_bytes", "activation_bytes", "inference_peak_bytes"}
    assert keys | {"training_peak_bytes", "device"} <= set(d["per_device"][0])
    assert d["per_device"][0]["param_bytes"] == json.loads(plain.stdout)["totals"]["param_bytes"] - weights((64, 384))
    assert d["exact"] == ["param_bytes", "gradient_bytes", "optimizer_bytes"] and d["verified"] is None


def test_the_table_and_markdown_show_the_devices_and_escape_what_the_user_wrote(cli, mlp_file, tmp_path):
    r = cli("profile", mlp_file, "-b", "16", "--devices", "8", "--distribution", "data")
    assert r.exit_code == 0, r.stderr
    assert "Per device" in r.stdout and "0-7" in r.stdout and "DataParallel over 8 devices" in r.stdout
    layout = tmp_path / "[bold]lay*out.txt"
    layout.write_text("d1/kernel -> None, model\n")
    md = cli("profile", mlp_file, "-b", "16", "--devices", "8", "--layout", layout, "-f", "markdown")
    assert md.exit_code == 0, md.stderr
    assert "### Per device" in md.stdout and "\\[bold\\]lay\\*out.txt" in md.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--devices", "8", "-b", "12"], "Batch size 12 does not split evenly over 8 devices"),
        (["--devices", "8", "--distribution", "pipeline"], "--distribution takes data or model"),
        (["--devices", "8", "--mesh", "4x4"], "--mesh 4x4 has 16 devices, but --devices is 8"),
        (["--distribution", "model"], "--devices N"),
    ],
)
def test_cli_refusals_are_exit_2(cli, mlp_file, args, message):
    r = cli("profile", mlp_file, "-b", "16", *args)
    assert r.exit_code == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------ verified on JAX's own shards


def _verified(result, path, **kwargs):
    out = distribute(result, path, verify=True, **kwargs).distribution
    v = out.verified
    assert v is not None and len(v.devices) == out.devices
    for name, key in (("weights", "param_bytes"), ("gradients", "gradient_bytes"), ("optimizer", "optimizer_bytes")):
        assert set(v.measured[name].values()) == {getattr(out.per_device[0], key)}, (name, v.measured[name])
    assert v.equal and not v.mismatches
    return out


@pytest.mark.slow
def test_mlp_shards_equal_kmemopt_data_and_auto_model_parallel(needs_jax, mlp_file):
    r = kmemopt.profile(mlp_file, batch_size=16)
    data = _verified(r, mlp_file, devices=8, kind="data")
    assert data.verified.layouts["d2/kernel"] == [None, None]
    # The activations with the local gradients awaiting their all-reduce: XLA's temporaries (1.004x here).
    assert 0.8 <= data.verified.compared["activation_ratio"] <= 1.2
    model = _verified(r, mlp_file, devices=8, kind="model")
    assert model.verified.layouts["d2/kernel"] == [None, "model"]
    assert model.verified.layouts["adam/d2_kernel_momentum"] == [None, "model"]  # the slot took its layout
    # XLA's per-device arguments of the training step: the state and this device's slice of the batch.
    b = model.batch_per_device
    d = model.per_device[0]
    assert model.verified.xla["training"]["argument_bytes"] == (
        d.param_bytes + d.optimizer_bytes + b * 64 * F32 + b * 16 * F32
    )


@pytest.mark.slow
def test_cnn_with_a_user_layout_over_2x4_equals_the_shards(needs_jax, keras, tmp_path):
    inp = keras.Input((16, 16, 3), name="img")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    out = keras.layers.Dense(10, activation="softmax", name="head")(keras.layers.Dense(64, name="fc")(h))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.SGD(momentum=0.9), "sparse_categorical_crossentropy")
    path = tmp_path / "cnn.keras"
    model.save(path)
    layout = tmp_path / "cnn.layout"
    layout.write_text("c[0-9]/kernel -> None, None, None, model\nfc/kernel -> model, None\nc2/bias -> model\n")
    r = kmemopt.profile(path, batch_size=8)
    out = _verified(r, path, devices=8, kind="model", layout=layout, mesh="2x4")
    assert out.per_device[0].param_bytes == weights(
        (3, 3, 3, 4), (16,), (3, 3, 16, 8), (8,), (8, 64), (64,), (64, 10), (10,)
    )
    assert out.verified.layouts["c2/kernel"] == [None, None, None, "model"]


@pytest.mark.slow
def test_attention_block_with_a_json_layout_equals_the_shards(needs_jax, keras, tmp_path):
    tokens = keras.Input((8, 32), name="tokens")
    att = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8, name="mha")(tokens, tokens)
    h = keras.layers.LayerNormalization(name="ln")(keras.layers.Add(name="res")([tokens, att]))
    h = keras.layers.Dense(128, activation="gelu", name="ffn_in")(h)
    out = keras.layers.Dense(32, name="ffn_out")(h)
    model = keras.Model(tokens, out)
    path = tmp_path / "block.keras"
    model.save(path)
    names = sorted(v.path for v in model.weights)
    assert "mha/query/kernel" in names  # (32, 4, 8): heads over the model axis
    layout = tmp_path / "block.json"
    layout.write_text(
        json.dumps(
            {
                "mha/(query|key|value)/kernel": [None, "model", None],
                "mha/(query|key|value)/bias": ["model", None],
                "mha/attention_output/kernel": ["model", None, None],
                "ffn_in/kernel": [None, "model"],
                "ffn_out/kernel": ["model", None],
            }
        )
    )
    r = kmemopt.profile(path, batch_size=4)
    out = _verified(r, path, devices=4, kind="model", layout=layout, mesh="1x4")
    assert out.verified.layouts["mha/query/kernel"] == [None, "model", None]


@pytest.mark.slow
def test_adafactor_factored_slots_go_through_the_layout_map_and_equal_the_shards(needs_jax, mlp_file):
    """Adafactor's row and column statistics are not made from their variable (another shape): Keras
    gives them the layout map's answer for their own path (none here: replicated); its velocity is."""
    r = kmemopt.profile(mlp_file, batch_size=16, optimizer="adafactor")
    out = _verified(r, mlp_file, devices=8, kind="model", optimizer="adafactor")
    factored = [v for v in r.variables if v.role == "slot" and v.owner == "d2/kernel"]
    assert {v.shape for v in factored} == {(512,), (1024,), (512, 1024)}
    velocity = next(v for v in factored if v.shape == (512, 1024))
    assert out.verified.layouts[velocity.path] == [None, "model"]


@pytest.mark.slow
def test_cli_verify_shows_jax_beside_the_estimate(needs_jax, cli, mlp_file):
    r = cli("profile", mlp_file, "-b", "16", "--devices", "4", "--distribution", "model", "--verify", "-f", "json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)["distribution"]
    v = d["verified"]
    assert v["equal"] and v["devices"] == ["0", "1", "2", "3"]
    assert set(v["measured"]["weights"].values()) == {d["per_device"][0]["param_bytes"]}
    assert v["compared"]["xla_activation_bytes"] == v["xla"]["backward"]["temp_bytes"] > 0
    table = cli("profile", mlp_file, "-b", "16", "--devices", "4", "--verify")
    assert table.exit_code == 0 and "equal kmemopt's on every device" in table.stdout


def test_a_layout_file_is_read_with_bounds(tmp_path):
    from kmemopt.profiling.distribution import MAX_LAYOUT_FILE_BYTES, parse_layout_file

    big = tmp_path / "big.txt"
    big.write_bytes(b"# x\n" * (MAX_LAYOUT_FILE_BYTES // 4 + 1))
    with pytest.raises(UsageError, match="over 1,048,576 bytes"):
        parse_layout_file(big)
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe d1 -> model")
    with pytest.raises(UsageError, match="not UTF-8"):
        parse_layout_file(binary)
    good = tmp_path / "ok.txt"
    good.write_text("d1/kernel -> -, model  \n")
    assert [(r.pattern, r.axes, r.where) for r in parse_layout_file(good)] == [
        ("d1/kernel", (None, "model"), f"{good}:1")
    ]


def test_a_weight_name_in_a_note_is_data_in_the_table(cli, keras, tmp_path):
    inp = keras.Input((7,), name="x")
    model = keras.Model(inp, keras.layers.Dense(40_000, name="[bold]wide")(inp))
    path = tmp_path / "wide.keras"
    model.save(path)
    r = cli("profile", path, "-b", "3", "--devices", "3", "--distribution", "model")
    assert r.exit_code == 0, r.stderr
    assert "'[bold]wide/kernel'" in r.stdout  # printed as written, not read as rich markup


def test_data_parallel_counts_the_local_gradients_awaiting_their_all_reduce(mlp_profile):
    # XLA combines the gradients' all-reduces into one at the end of the backward pass, so the local
    # gradients accumulate. This MLP's peak is d1's backward step (the last): every local gradient, the
    # kept input x and d1's output, and the step's gradients of both; the pending bytes are what that
    # adds over the kept activations and the largest backward step. One device has no all-reduce.
    d = per_device(mlp_profile, devices=8, kind="data").per_device[0]
    x, d1_out = 2 * 64 * F32, 2 * 512 * F32
    at_d1 = d.gradient_bytes + 2 * (x + d1_out)
    assert d.allreduce_pending_bytes == at_d1 - d.activation_bytes - d.backward_transient_bytes
    assert d.training_peak_bytes - d.runtime_training_bytes == (
        d.param_bytes
        + d.gradient_bytes
        + d.optimizer_bytes
        + d.activation_bytes
        + d.backward_transient_bytes
        + d.allreduce_pending_bytes
    )
    assert per_device(mlp_profile, devices=1, kind="data").per_device[0].allreduce_pending_bytes == 0


def test_model_parallel_splits_the_output_of_a_kernel_sharded_on_its_output_axis(mlp_profile):
    # auto 1x8 shards d2/kernel (512, 1024) on 1024, its output axis: each device computes 1024 / 8 of
    # d2's output (16, 1024), which d3's gradient keeps; the other activations stay whole.
    whole = per_device(mlp_profile, devices=1, kind="data").per_device[0]
    model = per_device(mlp_profile, devices=8, kind="model")
    d = model.per_device[0]
    d2_out = 16 * 1024 * F32
    assert d.activation_bytes == whole.activation_bytes - d2_out + d2_out // 8
    assert d.allreduce_pending_bytes == 0  # no batch axis to reduce over
    assert any("1 layer(s) whose kernel is sharded on its output axis" in w for w in model.warnings)


def test_the_report_says_what_the_pending_all_reduce_adds(mlp_profile):
    from kmemopt.report.distribution import summary_lines

    data = per_device(mlp_profile, devices=8, kind="data").to_dict()
    pending = data["per_device"][0]["allreduce_pending_bytes"]
    assert pending > 0
    assert any("awaiting their all-reduce" in line for line in summary_lines(data))
    one = per_device(mlp_profile, devices=1, kind="data").to_dict()
    assert not any("all-reduce" in line for line in summary_lines(one))


def test_the_html_profile_draws_each_device_s_training_peak_by_part(mlp_profile):
    import dataclasses
    import re

    from kmemopt.report.html import profile_html

    dist = per_device(mlp_profile, devices=8, kind="data")
    hostile = dataclasses.replace(dist, warnings=("<script>alert(1)</script> & co",))
    page = profile_html(dataclasses.replace(mlp_profile, distribution=hostile).to_dict())
    d = dist.per_device[0]
    bars = dict(re.findall(r'<rect class="device-([a-z]+)"[^>]* data-device="0-7" data-value="(\d+)"', page))
    assert int(bars["params"]) == d.param_bytes and int(bars["gradients"]) == d.gradient_bytes
    assert int(bars["optimizer"]) == d.optimizer_bytes and int(bars["activations"]) == d.activation_bytes
    assert int(bars["step"]) == d.backward_transient_bytes + d.allreduce_pending_bytes
    assert sum(int(v) for v in bars.values()) == d.training_peak_bytes
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert 'id="distribution"' not in profile_html(mlp_profile.to_dict())
