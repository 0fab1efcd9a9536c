"""A corpus of hostile and broken model files, generated at test time (no exploit file is committed).

Every payload is a harmless canary: code that, if it ever ran, would create a marker file in the
corpus's `canaries/` folder. A test that finds anything in that folder has found code execution.
Each case says what `kmemopt profile` must answer, and what the commands that load weights
(`profile --measure`, `shrink`) must answer, with the rule id expected in the refusal.

`build_corpus(root, keras)` writes every case under `root` and returns a `Corpus`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SECRET = "KMEMOPT-SECRET-7f3a9c1e-do-not-print"
EVIL_MODULE = "kmemopt_evil_import"

# Every case, in the order build_corpus makes them (tests parametrize over these without building).
CASE_NAMES = (
    "clean", "lambda_top", "lambda_nested", "lambda_in_wrapper", "lambda_legacy_h5", "lambda_keras2_h5",
    "os_system_activation", "builtins_eval_activation", "keras_get_file_activation", "keras_unsafe_toggle",
    "subprocess_popen_layer", "os_system_class", "popen_initializer", "eval_regularizer",
    "registered_function_as_class", "popen_constraint", "popen_dtype_policy", "popen_in_bidirectional",
    "tfsm_layer", "keras_private_module_class", "typespec_marker", "popen_in_compile_config", "import_on_path",
    "import_keras_cv_on_path", "lookup_vocabulary_file", "zip_traversal", "zip_absolute", "zip_assets_traversal",
    "zip_duplicate", "zip_unexpected_member", "zip_encrypted", "zip_bzip2_member", "zip_bomb_weights",
    "zip_bomb_lying_size", "zip_bomb_config", "deep_json", "deep_json_objects", "deep_hidden_object",
    "deep_json_legacy_h5", "config_not_object", "config_not_json", "h5_external_link", "h5_soft_link",
    "h5_external_storage", "h5_virtual_dataset", "h5_string_dataset", "h5_external_link_legacy", "h5_loop",
    "shape_bomb", "dense_units_2pow40", "input_shape_2pow40", "truncated_keras", "truncated_head_keras",
    "truncated_h5", "empty_file", "text_named_keras", "random_bytes_h5", "zip_not_a_model", "hdf5_not_a_model",
    "weights_only", "folder", "savedmodel_folder", "missing_path", "fifo",
)


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    profile: int  # exit code of `kmemopt profile`
    load: int  # exit code of commands that load the weights (`profile --measure`, `shrink`)
    rule: str | None = None  # rule id the refusal must name (for exit 3)
    pythonpath: Path | None = None  # a folder put on the child's PYTHONPATH
    note: str = ""


@dataclass
class Corpus:
    root: Path
    canaries: Path
    cases: list[Case] = field(default_factory=list)
    # Positive controls: twins of the Lambda cases whose canaries land in controls/canaries instead.
    lambda_controls: dict[str, Path] = field(default_factory=dict)

    @property
    def controls(self) -> Path:
        return self.root / "controls"

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.canaries.iterdir())


# --------------------------------------------------------------------------------------------
# Helpers to write archives the way an attacker would: by hand


def walk(node: Any) -> Iterator[dict]:
    """Every dict in a JSON tree (iterative)."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            yield n
            stack.extend(n.values())
        elif isinstance(n, list):
            stack.extend(n)


def read_keras(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def write_zip(path: Path, members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_STORED) -> Path:
    """Write members in order; duplicates and odd names are written as given."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names: that is the point
        with zipfile.ZipFile(path, "w", compression=compression) as zf:
            for name, data in members:
                zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data, compress_type=compression)
    return path


def with_config(src: Path, dst: Path, config: dict) -> Path:
    members = read_keras(src)
    members["config.json"] = json.dumps(config).encode()
    return write_zip(dst, list(members.items()))


def canary_code(marker: Path) -> str:
    """Marshalled code (Keras's Lambda format) of a function that creates `marker` when called."""
    from keras.src.utils import python_utils

    source = f"lambda x: (__import__('pathlib').Path({str(marker)!r}).touch(), x)[1]"
    fn = eval(source)  # compiles the lambda; its body runs only if someone calls it
    return python_utils.func_dump(fn)[0]


def plant_lambda_code(config: dict, code: str) -> int:
    """Replace the marshalled code of every Lambda in a config; returns how many were replaced."""
    n = 0
    for d in walk(config):
        if d.get("class_name") == "__lambda__" and isinstance(d.get("config"), dict):
            d["config"]["code"] = code
            n += 1
        elif d.get("function_type") == "lambda" and isinstance(d.get("function"), list):
            d["function"][0] = code
            n += 1
    return n


def deflated_zeros(n_mib: int) -> tuple[bytes, int]:
    """A raw deflate stream inflating to n_mib MiB of zeros, built from one repeated full-flush block."""
    chunk = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = c.compress(chunk) + c.flush(zlib.Z_FULL_FLUSH)  # a full flush resets the window: blocks repeat
    tail = c.flush(zlib.Z_FINISH)
    crc = 0
    for _ in range(n_mib):
        crc = zlib.crc32(chunk, crc)
    return block * n_mib + tail, crc


def add_raw_member(zf: zipfile.ZipFile, name: str, data: bytes, *, file_size: int, crc: int) -> None:
    """Append an already-deflated member, declaring whatever file_size we like (zip64 when needed)."""
    zi = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    zi.compress_type = zipfile.ZIP_DEFLATED
    zi.file_size = file_size
    zi.compress_size = len(data)
    zi.CRC = crc
    zi.header_offset = zf.fp.tell()
    zf.fp.write(zi.FileHeader(zip64=file_size > zipfile.ZIP64_LIMIT))
    zf.fp.write(data)
    zf.start_dir = zf.fp.tell()
    zf.filelist.append(zi)
    zf.NameToInfo[name] = zi
    zf._didModify = True


def zip_bomb(src: Path, dst: Path, *, member: str, n_mib: int, declared_mib: int | None = None) -> Path:
    """`src` with `member` replaced by deflated zeros that inflate to n_mib MiB (declared as declared_mib)."""
    members = read_keras(src)
    data, crc = deflated_zeros(n_mib)
    with zipfile.ZipFile(dst, "w") as zf:
        for name, raw in members.items():
            if name != member:
                zf.writestr(name, raw)
        add_raw_member(zf, member, data, file_size=(declared_mib or n_mib) << 20, crc=crc)
    return dst


def h5_bytes(build: Callable[[Any], None], tmp: Path) -> bytes:
    import h5py

    with h5py.File(tmp, "w") as h5:
        build(h5)
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def fuzz_model(keras):
    """The small compiled model the fuzz tests mutate (and whose legacy .h5 the fuzzer made loop)."""
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(5, activation="relu", kernel_regularizer="l2", name="hidden")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    sub = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, name="inner")], name="sub")
    model = keras.Model(inp, sub(h), name="fuzzed")
    model.compile(optimizer="adam", loss="mse")
    return model


# The edit Hypothesis found (tests/test_fuzz_readers.py): 6 bytes of a name in the HDF5 heap replaced
# by 7, which shifts every later address by one; h5py then loops in C, holding the GIL, while reading
# the root group's attributes.
HDF5_LOOP_EDIT = (b"den/bi", b"\x00q_.l\xa04")


# --------------------------------------------------------------------------------------------
# The corpus


def build_corpus(root: Path, keras) -> Corpus:  # noqa: C901 - one flat list of cases reads best
    import h5py
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    canaries = root / "canaries"
    canaries.mkdir()
    corpus = Corpus(root=root, canaries=canaries)
    (corpus.controls / "canaries").mkdir(parents=True)
    add = corpus.cases.append

    def marker(name: str) -> Path:
        return canaries / f"{name}.fired"

    # A clean model: the control that the harness itself can succeed.
    inp = keras.Input((4,), name="x")
    out = keras.layers.Dense(3, name="dense")(keras.layers.Dense(8, activation="relu", name="hidden")(inp))
    clean = keras.Model(inp, out, name="clean")
    clean_path = root / "clean.keras"
    clean.save(clean_path)
    clean_cfg = json.loads(read_keras(clean_path)["config.json"])
    add(Case("clean", clean_path, 0, 0, note="control: a valid model"))

    # --- Lambdas with marshalled canary code -----------------------------------------------
    def lambda_file(name: str, model, suffix: str = ".keras") -> Path:
        """The case file, plus a twin under controls/ whose canary lands in controls/canaries."""
        path = root / f"{name}{suffix}"
        for target, canary in ((path, marker(name)), (corpus.controls / f"{name}{suffix}", corpus.controls / "canaries" / name)):
            model.save(target)
            code = canary_code(canary)
            if suffix == ".keras":
                cfg = json.loads(read_keras(target)["config.json"])
                assert plant_lambda_code(cfg, code) >= 1
                with_config(target, target, cfg)
            else:
                with h5py.File(target, "r+") as h5:
                    cfg = json.loads(h5.attrs["model_config"])
                    assert plant_lambda_code(cfg, code) >= 1
                    h5.attrs["model_config"] = json.dumps(cfg)
        return path

    def harmless_lambda(name="lam"):
        return keras.layers.Lambda(lambda t: t * 2.0, name=name)

    inp = keras.Input((4,), name="x")
    top = keras.Model(inp, keras.layers.Dense(2, name="d")(harmless_lambda()(inp)), name="top")
    path = lambda_file("lambda_top", top)
    add(Case("lambda_top", path, 3, 3, "TRUST-CODE"))
    corpus.lambda_controls["lambda_top"] = corpus.controls / path.name

    sub = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4, name="a"), harmless_lambda("inner_lam")], name="sub")
    inp = keras.Input((4,), name="x")
    nested = keras.Model(inp, keras.layers.Dense(2, name="d")(sub(inp)), name="nested")
    path = lambda_file("lambda_nested", nested)
    add(Case("lambda_nested", path, 3, 3, "TRUST-CODE", note="Lambda inside a sub-model"))
    corpus.lambda_controls["lambda_nested"] = corpus.controls / path.name

    inp = keras.Input((5, 4), name="x")
    wrapped = keras.Model(inp, keras.layers.TimeDistributed(harmless_lambda("td_lam"), name="td")(inp), name="wrapped")
    add(Case("lambda_in_wrapper", lambda_file("lambda_in_wrapper", wrapped), 3, 3, "TRUST-CODE",
             note="Lambda inside TimeDistributed"))

    inp = keras.Input((4,), name="x")
    top_h5 = keras.Model(inp, keras.layers.Dense(2, name="d")(harmless_lambda()(inp)), name="top_h5")
    path = lambda_file("lambda_legacy", top_h5, suffix=".h5")
    add(Case("lambda_legacy_h5", path, 3, 3, "TRUST-CODE", note="Lambda in a legacy .h5"))
    corpus.lambda_controls["lambda_legacy"] = corpus.controls / path.name

    # Keras 2 style: no module keys, the function as [code, defaults, closure].
    k2 = root / "lambda_keras2.h5"
    shutil.copy(path, k2)
    with h5py.File(k2, "r+") as h5:
        cfg = json.loads(h5.attrs["model_config"])
        for d in walk(cfg):
            d.pop("module", None)
            d.pop("registered_name", None)
            if d.get("class_name") == "Lambda":  # the harmless lambda's code, replaced by the canary's below
                d["config"]["function"] = [canary_code(marker("lambda_keras2")), None, None]
                d["config"]["function_type"] = "lambda"
        h5.attrs["model_config"] = json.dumps(cfg)
    add(Case("lambda_keras2_h5", k2, 3, 3, "TRUST-CODE", note="Keras 2 style legacy config, no module keys"))

    # --- Config entries naming standard-library callables ----------------------------------
    def patched(name: str, mutate: Callable[[dict], None], rule: str, note: str = "") -> None:
        cfg = copy.deepcopy(clean_cfg)
        layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "hidden")
        mutate(layer)
        add(Case(name, with_config(clean_path, root / f"{name}.keras", cfg), 3, 3, rule, note=note))

    touch = ["touch", str(marker("stdlib"))]
    fn = lambda module, name: {"module": module, "class_name": "function", "config": name, "registered_name": "function"}  # noqa: E731
    patched("os_system_activation", lambda d: d["config"].update(activation=fn("os", "system")), "TRUST-FUNCTION")
    patched("builtins_eval_activation", lambda d: d["config"].update(activation=fn("builtins", "eval")), "TRUST-FUNCTION")
    patched("keras_get_file_activation", lambda d: d["config"].update(
        activation=fn("keras.src.utils.file_utils", "get_file")), "TRUST-FUNCTION", note="a non-modelling Keras function")
    patched("keras_unsafe_toggle", lambda d: d["config"].update(
        kernel_initializer=fn("keras.src.saving.serialization_lib", "enable_unsafe_deserialization")),
        "TRUST-FUNCTION", note="the switch that turns safe_mode off")
    patched("subprocess_popen_layer", lambda d: d.update(
        module="subprocess", class_name="Popen", config={"args": touch}), "TRUST-MODULE")
    patched("os_system_class", lambda d: d.update(module="os", class_name="system", config={"command": " ".join(touch)}),
            "TRUST-MODULE")
    patched("popen_initializer", lambda d: d["config"].update(
        kernel_initializer={"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}),
        "TRUST-MODULE", note="hostile object in an initializer")
    patched("eval_regularizer", lambda d: d["config"].update(
        kernel_regularizer={"module": "builtins", "class_name": "Eval", "config": {}, "registered_name": "builtins>eval"}),
        "TRUST-UNKNOWN", note="registered_name pointing nowhere")
    patched("registered_function_as_class", lambda d: d["config"].update(
        activation={"module": "keras_hub.src.utils.preset_utils", "class_name": "upload_preset", "config": {},
                    "registered_name": "keras_hub>upload_preset"}),
        "TRUST-UNKNOWN", note="a registered non-modelling function reached through a class entry")
    patched("popen_constraint", lambda d: d["config"].update(
        kernel_constraint={"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}),
        "TRUST-MODULE")
    patched("popen_dtype_policy", lambda d: d["config"].update(
        dtype={"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}),
        "TRUST-MODULE")
    patched("popen_in_bidirectional", lambda d: d.update(
        module="keras.layers", class_name="Bidirectional",
        config={"name": "hidden", "layer": {"module": "keras.layers", "class_name": "LSTM", "registered_name": None,
                                            "config": {"name": "fwd", "units": 2}},
                "backward_layer": {"module": "subprocess", "class_name": "Popen", "config": {"args": touch},
                                   "registered_name": None}}), "TRUST-MODULE", note="hostile backward layer of a wrapper")
    patched("tfsm_layer", lambda d: d.update(
        module="keras.layers", class_name="TFSMLayer", config={"filepath": str(root), "name": "hidden"}), "TRUST-CODE")
    patched("keras_private_module_class", lambda d: d.update(
        module="keras.src.saving.serialization_lib", class_name="SafeModeScope"), "TRUST-UNKNOWN",
        note="a Keras-internal class that is no layer")
    patched("typespec_marker", lambda d: d["config"].update(
        bias_initializer={"class_name": "__typespec__", "spec_name": "Popen", "module": "subprocess",
                          "registered_name": None, "config": []}), "TRUST-CODE")

    # The same object hidden in the compile config (the optimizer and the loss).
    cfg = copy.deepcopy(clean_cfg)
    cfg["compile_config"] = {"optimizer": {"module": "subprocess", "class_name": "Popen", "config": {"args": touch},
                                           "registered_name": None}, "loss": "mse"}
    add(Case("popen_in_compile_config", with_config(clean_path, root / "popen_in_compile_config.keras", cfg), 3, 3,
             "TRUST-MODULE"))

    # An unknown class whose module sits on the path and would run the canary if imported.
    evil_dir = root / "evil_path"
    evil_dir.mkdir()
    (evil_dir / f"{EVIL_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker('import'))!r}).touch()\nclass EvilLayer:\n    pass\n"
    )
    cfg = copy.deepcopy(clean_cfg)
    layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "hidden")
    layer.update(module=EVIL_MODULE, class_name="EvilLayer", registered_name="EvilLayer")
    add(Case("import_on_path", with_config(clean_path, root / "import_on_path.keras", cfg), 3, 3, "TRUST-MODULE",
             pythonpath=evil_dir, note="module exists on PYTHONPATH and runs code on import"))
    # Keras itself imports modules of the keras_cv / keras_nlp packages: plant one.
    (evil_dir / "keras_cv").mkdir()
    (evil_dir / "keras_cv" / "__init__.py").write_text(
        f"import pathlib\npathlib.Path({str(marker('keras_cv'))!r}).touch()\n"
    )
    cfg = copy.deepcopy(clean_cfg)
    layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "hidden")
    layer.update(module="keras_cv.layers", class_name="EvilLayer", registered_name=None)
    add(Case("import_keras_cv_on_path", with_config(clean_path, root / "import_keras_cv_on_path.keras", cfg), 3, 3,
             "TRUST-MODULE", pythonpath=evil_dir, note="a planted keras_cv package Keras would import"))

    # A lookup layer whose vocabulary is a path: deserializing it reads a file the model names.
    secret_txt = root / "secret.txt"
    secret_txt.write_text(SECRET + "\n")
    cfg = copy.deepcopy(clean_cfg)
    cfg["config"]["layers"].insert(1, {
        "module": "keras.layers", "class_name": "StringLookup", "registered_name": None,
        "config": {"name": "lookup", "vocabulary": str(secret_txt), "output_mode": "int"},
        "name": "lookup", "inbound_nodes": [],
    })
    add(Case("lookup_vocabulary_file", with_config(clean_path, root / "lookup_vocabulary_file.keras", cfg), 3, 3,
             "TRUST-FILE", note="a vocabulary read from a path in the file"))

    # --- Archive hygiene ---------------------------------------------------------------------
    members = read_keras(clean_path)
    ordered = list(members.items())
    add(Case("zip_traversal", write_zip(root / "zip_traversal.keras", ordered + [("../../evil.txt", b"x")]),
             3, 3, "ARCHIVE-NAME"))
    add(Case("zip_absolute", write_zip(root / "zip_absolute.keras", ordered + [("/tmp/evil.txt", b"x")]),
             3, 3, "ARCHIVE-NAME"))
    add(Case("zip_assets_traversal", write_zip(root / "zip_assets_traversal.keras",
                                               ordered + [("assets/../../evil.txt", b"x")]), 3, 3, "ARCHIVE-NAME"))
    evil_cfg = json.dumps({"class_name": "Lambda"}).encode()
    add(Case("zip_duplicate", write_zip(root / "zip_duplicate.keras", ordered + [("config.json", evil_cfg)]),
             3, 3, "ARCHIVE-DUPLICATE"))
    add(Case("zip_unexpected_member", write_zip(root / "zip_unexpected_member.keras", ordered + [("evil.py", b"x")]),
             3, 3, "ARCHIVE-MEMBERS"))
    enc = root / "zip_encrypted.keras"
    write_zip(enc, ordered)
    raw = bytearray(enc.read_bytes())
    with zipfile.ZipFile(enc) as zf:
        infos = zf.infolist()
    cd = raw.find(b"PK\x01\x02")
    for _ in infos:  # set the "encrypted" flag bit in the central directory entries
        pos = raw.find(b"PK\x01\x02", cd)
        raw[pos + 8] |= 0x1
        cd = pos + 4
    enc.write_bytes(bytes(raw))
    add(Case("zip_encrypted", enc, 3, 3, "ARCHIVE-ENCRYPTED"))
    add(Case("zip_bzip2_member", write_zip(root / "zip_bzip2_member.keras", ordered, compression=zipfile.ZIP_BZIP2),
             3, 3, "ARCHIVE-METHOD", note="a compression method Keras never writes"))
    add(Case("zip_bomb_weights", zip_bomb(clean_path, root / "zip_bomb_weights.keras",
                                          member="model.weights.h5", n_mib=4096), 3, 3, "ARCHIVE-RATIO",
             note="weights member inflating to 4 GiB (about 4 MB on disk)"))
    add(Case("zip_bomb_lying_size", zip_bomb(clean_path, root / "zip_bomb_lying_size.keras",
                                             member="model.weights.h5", n_mib=1024, declared_mib=1), 3, 3, None,
             note="1 GiB of zeros declared as 1 MiB"))
    add(Case("zip_bomb_config", zip_bomb(clean_path, root / "zip_bomb_config.keras", member="config.json",
                                         n_mib=2048), 3, 3, None, note="config.json inflating to 2 GiB"))

    # --- JSON --------------------------------------------------------------------------------
    depth = 100_000
    deep = b"[" * depth + b"]" * depth
    add(Case("deep_json", write_zip(root / "deep_json.keras", [(n, deep if n == "config.json" else d) for n, d in ordered]),
             3, 3, "CONFIG-JSON"))
    deep_obj = ('{"a":' * 50_000 + "1" + "}" * 50_000).encode()
    add(Case("deep_json_objects", write_zip(root / "deep_json_objects.keras",
                                            [(n, deep_obj if n == "config.json" else d) for n, d in ordered]),
             3, 3, "CONFIG-JSON"))
    deep_cfg = copy.deepcopy(clean_cfg)
    node = deep_cfg["config"]["layers"][1]["config"]
    for _ in range(80):  # under the JSON depth cap, so the allowlist walk sees it
        node["kernel_initializer"] = {"module": "keras.initializers", "class_name": "GlorotUniform",
                                      "registered_name": None, "config": {"seed": None}}
        node = node["kernel_initializer"]["config"]
    node["evil"] = {"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}
    add(Case("deep_hidden_object", with_config(clean_path, root / "deep_hidden_object.keras", deep_cfg), 3, 3,
             "TRUST-MODULE", note="hostile entry 160 levels down"))
    legacy_deep = root / "deep_json_legacy.h5"
    clean.save(legacy_deep)
    with h5py.File(legacy_deep, "r+") as h5:
        h5.attrs["model_config"] = "[" * depth + "]" * depth
    add(Case("deep_json_legacy_h5", legacy_deep, 3, 3, "CONFIG-JSON"))
    add(Case("config_not_object", write_zip(root / "config_not_object.keras",
                                            [(n, b"[1, 2]" if n == "config.json" else d) for n, d in ordered]), 3, 3))
    add(Case("config_not_json", write_zip(root / "config_not_json.keras",
                                          [(n, b"\xff\xfe{" if n == "config.json" else d) for n, d in ordered]), 3, 3))

    # --- HDF5 --------------------------------------------------------------------------------
    secret_h5 = root / "secret.h5"
    with h5py.File(secret_h5, "w") as h5:
        h5.create_dataset("layers/dense/vars/0", data=np.frombuffer(SECRET.encode().ljust(128, b"\0"), dtype=np.uint8))
        h5.attrs["secret"] = SECRET

    def weights_with(name: str, tweak: Callable[[Any], None], rule: str) -> None:
        tmp = root / f"{name}.weights.tmp"
        clean_h5 = members["model.weights.h5"]
        tmp.write_bytes(clean_h5)
        with h5py.File(tmp, "r+") as h5:
            tweak(h5)
        data = tmp.read_bytes()
        tmp.unlink()
        add(Case(name, write_zip(root / f"{name}.keras",
                                 [(n, data if n == "model.weights.h5" else d) for n, d in ordered]), 3, 3, rule))

    def external_link(h5):
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(secret_h5), "/layers/dense/vars/0")

    def soft_link(h5):
        h5["layers/dense/vars/2"] = h5py.SoftLink("/layers/dense/vars/0")

    def external_storage(h5):
        del h5["layers/dense/vars/0"]
        h5.create_dataset("layers/dense/vars/0", shape=(len(SECRET) + 1,), dtype="uint8",
                          external=[(str(secret_txt), 0, len(SECRET) + 1)])

    def virtual(h5):
        layout = h5py.VirtualLayout(shape=(128,), dtype="uint8")
        layout[:] = h5py.VirtualSource(str(secret_h5), "layers/dense/vars/0", shape=(128,))
        h5.create_virtual_dataset("layers/dense/vars/2", layout)

    def string_dataset(h5):
        h5.create_dataset("layers/dense/vars/2", data=np.array([b"x"], dtype=object), dtype=h5py.string_dtype())

    weights_with("h5_external_link", external_link, "HDF5-LINK")
    weights_with("h5_soft_link", soft_link, "HDF5-LINK")
    weights_with("h5_external_storage", external_storage, "HDF5-EXTERNAL")
    weights_with("h5_virtual_dataset", virtual, "HDF5-EXTERNAL")
    weights_with("h5_string_dataset", string_dataset, "HDF5-DTYPE")

    legacy_link = root / "h5_external_link_legacy.h5"
    clean.save(legacy_link)
    with h5py.File(legacy_link, "r+") as h5:
        h5["model_weights/secret"] = h5py.ExternalLink(str(secret_h5), "/layers/dense/vars/0")
    add(Case("h5_external_link_legacy", legacy_link, 3, 3, "HDF5-LINK"))
    looping = root / "h5_loop.h5"
    fuzz_model(keras).save(looping)
    data = looping.read_bytes()
    at = data.find(HDF5_LOOP_EDIT[0])
    assert at > 0, "the fuzz model's legacy .h5 layout changed: re-find the looping edit"
    looping.write_bytes(data[:at] + HDF5_LOOP_EDIT[1] + data[at + len(HDF5_LOOP_EDIT[0]):])
    add(Case("h5_loop", looping, 3, 3, None, note="HDF5 structures that send the HDF5 library into a loop"))

    # A shape bomb: a 4 GB Dense stack whose weights are declared but never stored.
    from factories import dense_stack, write_declared_model

    bomb = write_declared_model(root / "shape_bomb.keras", dense_stack(keras, [32_768, 32_768], name="bomb"))
    add(Case("shape_bomb", bomb, 0, 3, "HDF5-SHAPE-BOMB",
             note="4 GiB declared, nothing stored: profiles statically, never loaded"))

    # Absurd sizes in the config only (the stored weights are the clean model's).
    for name, mutate in {
        "dense_units_2pow40": lambda c: next(d for d in walk(c) if d.get("class_name") == "Dense")["config"].update(
            units=2**40),
        "input_shape_2pow40": lambda c: next(d for d in walk(c) if d.get("class_name") == "InputLayer")["config"].update(
            batch_shape=[None, 2**40]),
    }.items():
        cfg = copy.deepcopy(clean_cfg)
        mutate(cfg)
        for layer in cfg["config"]["layers"]:
            layer.pop("build_config", None)  # let each layer build from the (absurd) shapes it is called on
        add(Case(name, with_config(clean_path, root / f"{name}.keras", cfg), 0, 3, None,
                 note="absurd size in the config: must not allocate"))

    # --- Broken input --------------------------------------------------------------------------
    data = clean_path.read_bytes()
    (root / "truncated.keras").write_bytes(data[: len(data) // 2])
    add(Case("truncated_keras", root / "truncated.keras", 3, 3))
    (root / "truncated_head.keras").write_bytes(data[:100])
    add(Case("truncated_head_keras", root / "truncated_head.keras", 3, 3))
    legacy_clean = root / "clean_legacy.h5"
    clean.save(legacy_clean)
    legacy = legacy_clean.read_bytes()
    (root / "truncated.h5").write_bytes(legacy[: len(legacy) // 2])
    add(Case("truncated_h5", root / "truncated.h5", 3, 3))
    (root / "empty.keras").write_bytes(b"")
    add(Case("empty_file", root / "empty.keras", 3, 3))
    (root / "text.keras").write_text("this is not a model\n")
    add(Case("text_named_keras", root / "text.keras", 3, 3))
    (root / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    add(Case("random_bytes_h5", root / "random.h5", 3, 3))
    add(Case("zip_not_a_model", write_zip(root / "zip_not_a_model.keras", [("README.txt", b"hello")]), 3, 3))
    plain_h5 = root / "plain.h5"
    with h5py.File(plain_h5, "w") as h5:
        h5["data"] = np.zeros(3)
    add(Case("hdf5_not_a_model", plain_h5, 3, 3))
    weights_only = root / "clean.weights.h5"
    clean.save_weights(weights_only)
    add(Case("weights_only", weights_only, 3, 3))
    folder = root / "a_folder"
    folder.mkdir()
    add(Case("folder", folder, 2, 2))
    saved_model = root / "saved_model_dir"
    saved_model.mkdir()
    (saved_model / "saved_model.pb").write_bytes(b"\x08\x01")
    (saved_model / "variables").mkdir()
    add(Case("savedmodel_folder", saved_model, 2, 2))
    add(Case("missing_path", root / "does_not_exist.keras", 2, 2))
    fifo = root / "fifo.keras"
    os.mkfifo(fifo)
    add(Case("fifo", fifo, 2, 2, note="a named pipe: opening it would block forever"))
    assert tuple(c.name for c in corpus.cases) == CASE_NAMES, "update CASE_NAMES with the new case"
    return corpus
