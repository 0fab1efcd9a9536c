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
import struct
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
    "clean",
    "lambda_top",
    "lambda_nested",
    "lambda_in_wrapper",
    "lambda_legacy_h5",
    "lambda_keras2_h5",
    "os_system_activation",
    "builtins_eval_activation",
    "keras_get_file_activation",
    "keras_unsafe_toggle",
    "subprocess_popen_layer",
    "os_system_class",
    "popen_initializer",
    "eval_regularizer",
    "registered_function_as_class",
    "popen_constraint",
    "popen_dtype_policy",
    "popen_in_bidirectional",
    "tfsm_layer",
    "keras_private_module_class",
    "typespec_marker",
    "popen_in_compile_config",
    "import_on_path",
    "import_keras_cv_on_path",
    "lookup_vocabulary_file",
    "zip_traversal",
    "zip_absolute",
    "zip_assets_traversal",
    "zip_duplicate",
    "zip_unexpected_member",
    "zip_encrypted",
    "zip_bzip2_member",
    "zip_bomb_weights",
    "zip_bomb_lying_size",
    "zip_bomb_config",
    "deep_json",
    "deep_json_objects",
    "deep_hidden_object",
    "deep_json_legacy_h5",
    "config_not_object",
    "config_not_json",
    "h5_external_link",
    "h5_soft_link",
    "h5_external_storage",
    "h5_virtual_dataset",
    "h5_string_dataset",
    "h5_external_link_legacy",
    "h5_loop",
    "shape_bomb",
    "dense_units_2pow40",
    "input_shape_2pow40",
    "truncated_keras",
    "truncated_head_keras",
    "truncated_h5",
    "empty_file",
    "text_named_keras",
    "random_bytes_h5",
    "zip_not_a_model",
    "hdf5_not_a_model",
    "weights_only",
    "folder",
    "savedmodel_folder",
    "missing_path",
    "fifo",
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
        for target, canary in (
            (path, marker(name)),
            (corpus.controls / f"{name}{suffix}", corpus.controls / "canaries" / name),
        ):
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

    sub = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, name="a"), harmless_lambda("inner_lam")], name="sub"
    )
    inp = keras.Input((4,), name="x")
    nested = keras.Model(inp, keras.layers.Dense(2, name="d")(sub(inp)), name="nested")
    path = lambda_file("lambda_nested", nested)
    add(Case("lambda_nested", path, 3, 3, "TRUST-CODE", note="Lambda inside a sub-model"))
    corpus.lambda_controls["lambda_nested"] = corpus.controls / path.name

    inp = keras.Input((5, 4), name="x")
    wrapped = keras.Model(inp, keras.layers.TimeDistributed(harmless_lambda("td_lam"), name="td")(inp), name="wrapped")
    add(
        Case(
            "lambda_in_wrapper",
            lambda_file("lambda_in_wrapper", wrapped),
            3,
            3,
            "TRUST-CODE",
            note="Lambda inside TimeDistributed",
        )
    )

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

    def fn(module, name):
        return {"module": module, "class_name": "function", "config": name, "registered_name": "function"}

    patched("os_system_activation", lambda d: d["config"].update(activation=fn("os", "system")), "TRUST-FUNCTION")
    patched(
        "builtins_eval_activation", lambda d: d["config"].update(activation=fn("builtins", "eval")), "TRUST-FUNCTION"
    )
    patched(
        "keras_get_file_activation",
        lambda d: d["config"].update(activation=fn("keras.src.utils.file_utils", "get_file")),
        "TRUST-FUNCTION",
        note="a non-modelling Keras function",
    )
    patched(
        "keras_unsafe_toggle",
        lambda d: d["config"].update(
            kernel_initializer=fn("keras.src.saving.serialization_lib", "enable_unsafe_deserialization")
        ),
        "TRUST-FUNCTION",
        note="the switch that turns safe_mode off",
    )
    patched(
        "subprocess_popen_layer",
        lambda d: d.update(module="subprocess", class_name="Popen", config={"args": touch}),
        "TRUST-MODULE",
    )
    patched(
        "os_system_class",
        lambda d: d.update(module="os", class_name="system", config={"command": " ".join(touch)}),
        "TRUST-MODULE",
    )
    patched(
        "popen_initializer",
        lambda d: d["config"].update(
            kernel_initializer={
                "module": "subprocess",
                "class_name": "Popen",
                "config": {"args": touch},
                "registered_name": None,
            }
        ),
        "TRUST-MODULE",
        note="hostile object in an initializer",
    )
    patched(
        "eval_regularizer",
        lambda d: d["config"].update(
            kernel_regularizer={
                "module": "builtins",
                "class_name": "Eval",
                "config": {},
                "registered_name": "builtins>eval",
            }
        ),
        "TRUST-UNKNOWN",
        note="registered_name pointing nowhere",
    )
    patched(
        "registered_function_as_class",
        lambda d: d["config"].update(
            activation={
                "module": "keras_hub.src.utils.preset_utils",
                "class_name": "upload_preset",
                "config": {},
                "registered_name": "keras_hub>upload_preset",
            }
        ),
        "TRUST-UNKNOWN",
        note="a registered non-modelling function reached through a class entry",
    )
    patched(
        "popen_constraint",
        lambda d: d["config"].update(
            kernel_constraint={
                "module": "subprocess",
                "class_name": "Popen",
                "config": {"args": touch},
                "registered_name": None,
            }
        ),
        "TRUST-MODULE",
    )
    patched(
        "popen_dtype_policy",
        lambda d: d["config"].update(
            dtype={"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}
        ),
        "TRUST-MODULE",
    )
    patched(
        "popen_in_bidirectional",
        lambda d: d.update(
            module="keras.layers",
            class_name="Bidirectional",
            config={
                "name": "hidden",
                "layer": {
                    "module": "keras.layers",
                    "class_name": "LSTM",
                    "registered_name": None,
                    "config": {"name": "fwd", "units": 2},
                },
                "backward_layer": {
                    "module": "subprocess",
                    "class_name": "Popen",
                    "config": {"args": touch},
                    "registered_name": None,
                },
            },
        ),
        "TRUST-MODULE",
        note="hostile backward layer of a wrapper",
    )
    patched(
        "tfsm_layer",
        lambda d: d.update(
            module="keras.layers", class_name="TFSMLayer", config={"filepath": str(root), "name": "hidden"}
        ),
        "TRUST-CODE",
    )
    patched(
        "keras_private_module_class",
        lambda d: d.update(module="keras.src.saving.serialization_lib", class_name="SafeModeScope"),
        "TRUST-UNKNOWN",
        note="a Keras-internal class that is no layer",
    )
    patched(
        "typespec_marker",
        lambda d: d["config"].update(
            bias_initializer={
                "class_name": "__typespec__",
                "spec_name": "Popen",
                "module": "subprocess",
                "registered_name": None,
                "config": [],
            }
        ),
        "TRUST-CODE",
    )

    # The same object hidden in the compile config (the optimizer and the loss).
    cfg = copy.deepcopy(clean_cfg)
    cfg["compile_config"] = {
        "optimizer": {
            "module": "subprocess",
            "class_name": "Popen",
            "config": {"args": touch},
            "registered_name": None,
        },
        "loss": "mse",
    }
    add(
        Case(
            "popen_in_compile_config",
            with_config(clean_path, root / "popen_in_compile_config.keras", cfg),
            3,
            3,
            "TRUST-MODULE",
        )
    )

    # An unknown class whose module sits on the path and would run the canary if imported.
    evil_dir = root / "evil_path"
    evil_dir.mkdir()
    (evil_dir / f"{EVIL_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker('import'))!r}).touch()\nclass EvilLayer:\n    pass\n"
    )
    cfg = copy.deepcopy(clean_cfg)
    layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "hidden")
    layer.update(module=EVIL_MODULE, class_name="EvilLayer", registered_name="EvilLayer")
    add(
        Case(
            "import_on_path",
            with_config(clean_path, root / "import_on_path.keras", cfg),
            3,
            3,
            "TRUST-MODULE",
            pythonpath=evil_dir,
            note="module exists on PYTHONPATH and runs code on import",
        )
    )
    # Keras itself imports modules of the keras_cv / keras_nlp packages: plant one.
    (evil_dir / "keras_cv").mkdir()
    (evil_dir / "keras_cv" / "__init__.py").write_text(
        f"import pathlib\npathlib.Path({str(marker('keras_cv'))!r}).touch()\n"
    )
    cfg = copy.deepcopy(clean_cfg)
    layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "hidden")
    layer.update(module="keras_cv.layers", class_name="EvilLayer", registered_name=None)
    add(
        Case(
            "import_keras_cv_on_path",
            with_config(clean_path, root / "import_keras_cv_on_path.keras", cfg),
            3,
            3,
            "TRUST-MODULE",
            pythonpath=evil_dir,
            note="a planted keras_cv package Keras would import",
        )
    )

    # A lookup layer whose vocabulary is a path: deserializing it reads a file the model names.
    secret_txt = root / "secret.txt"
    secret_txt.write_text(SECRET + "\n")
    cfg = copy.deepcopy(clean_cfg)
    cfg["config"]["layers"].insert(
        1,
        {
            "module": "keras.layers",
            "class_name": "StringLookup",
            "registered_name": None,
            "config": {"name": "lookup", "vocabulary": str(secret_txt), "output_mode": "int"},
            "name": "lookup",
            "inbound_nodes": [],
        },
    )
    add(
        Case(
            "lookup_vocabulary_file",
            with_config(clean_path, root / "lookup_vocabulary_file.keras", cfg),
            3,
            3,
            "TRUST-FILE",
            note="a vocabulary read from a path in the file",
        )
    )

    # --- Archive hygiene ---------------------------------------------------------------------
    members = read_keras(clean_path)
    ordered = list(members.items())
    add(
        Case(
            "zip_traversal",
            write_zip(root / "zip_traversal.keras", ordered + [("../../evil.txt", b"x")]),
            3,
            3,
            "ARCHIVE-NAME",
        )
    )
    add(
        Case(
            "zip_absolute",
            write_zip(root / "zip_absolute.keras", ordered + [("/tmp/evil.txt", b"x")]),
            3,
            3,
            "ARCHIVE-NAME",
        )
    )
    add(
        Case(
            "zip_assets_traversal",
            write_zip(root / "zip_assets_traversal.keras", ordered + [("assets/../../evil.txt", b"x")]),
            3,
            3,
            "ARCHIVE-NAME",
        )
    )
    evil_cfg = json.dumps({"class_name": "Lambda"}).encode()
    add(
        Case(
            "zip_duplicate",
            write_zip(root / "zip_duplicate.keras", ordered + [("config.json", evil_cfg)]),
            3,
            3,
            "ARCHIVE-DUPLICATE",
        )
    )
    add(
        Case(
            "zip_unexpected_member",
            write_zip(root / "zip_unexpected_member.keras", ordered + [("evil.py", b"x")]),
            3,
            3,
            "ARCHIVE-MEMBERS",
        )
    )
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
    add(
        Case(
            "zip_bzip2_member",
            write_zip(root / "zip_bzip2_member.keras", ordered, compression=zipfile.ZIP_BZIP2),
            3,
            3,
            "ARCHIVE-METHOD",
            note="a compression method Keras never writes",
        )
    )
    add(
        Case(
            "zip_bomb_weights",
            zip_bomb(clean_path, root / "zip_bomb_weights.keras", member="model.weights.h5", n_mib=4096),
            3,
            3,
            "ARCHIVE-RATIO",
            note="weights member inflating to 4 GiB (about 4 MB on disk)",
        )
    )
    add(
        Case(
            "zip_bomb_lying_size",
            zip_bomb(
                clean_path, root / "zip_bomb_lying_size.keras", member="model.weights.h5", n_mib=1024, declared_mib=1
            ),
            3,
            3,
            None,
            note="1 GiB of zeros declared as 1 MiB",
        )
    )
    add(
        Case(
            "zip_bomb_config",
            zip_bomb(clean_path, root / "zip_bomb_config.keras", member="config.json", n_mib=2048),
            3,
            3,
            None,
            note="config.json inflating to 2 GiB",
        )
    )

    # --- JSON --------------------------------------------------------------------------------
    depth = 100_000
    deep = b"[" * depth + b"]" * depth
    add(
        Case(
            "deep_json",
            write_zip(root / "deep_json.keras", [(n, deep if n == "config.json" else d) for n, d in ordered]),
            3,
            3,
            "CONFIG-JSON",
        )
    )
    deep_obj = ('{"a":' * 50_000 + "1" + "}" * 50_000).encode()
    add(
        Case(
            "deep_json_objects",
            write_zip(
                root / "deep_json_objects.keras", [(n, deep_obj if n == "config.json" else d) for n, d in ordered]
            ),
            3,
            3,
            "CONFIG-JSON",
        )
    )
    deep_cfg = copy.deepcopy(clean_cfg)
    node = deep_cfg["config"]["layers"][1]["config"]
    for _ in range(80):  # under the JSON depth cap, so the allowlist walk sees it
        node["kernel_initializer"] = {
            "module": "keras.initializers",
            "class_name": "GlorotUniform",
            "registered_name": None,
            "config": {"seed": None},
        }
        node = node["kernel_initializer"]["config"]
    node["evil"] = {"module": "subprocess", "class_name": "Popen", "config": {"args": touch}, "registered_name": None}
    add(
        Case(
            "deep_hidden_object",
            with_config(clean_path, root / "deep_hidden_object.keras", deep_cfg),
            3,
            3,
            "TRUST-MODULE",
            note="hostile entry 160 levels down",
        )
    )
    legacy_deep = root / "deep_json_legacy.h5"
    clean.save(legacy_deep)
    with h5py.File(legacy_deep, "r+") as h5:
        h5.attrs["model_config"] = "[" * depth + "]" * depth
    add(Case("deep_json_legacy_h5", legacy_deep, 3, 3, "CONFIG-JSON"))
    add(
        Case(
            "config_not_object",
            write_zip(
                root / "config_not_object.keras", [(n, b"[1, 2]" if n == "config.json" else d) for n, d in ordered]
            ),
            3,
            3,
        )
    )
    add(
        Case(
            "config_not_json",
            write_zip(
                root / "config_not_json.keras", [(n, b"\xff\xfe{" if n == "config.json" else d) for n, d in ordered]
            ),
            3,
            3,
        )
    )

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
        add(
            Case(
                name,
                write_zip(root / f"{name}.keras", [(n, data if n == "model.weights.h5" else d) for n, d in ordered]),
                3,
                3,
                rule,
            )
        )

    def external_link(h5):
        del h5["layers/dense/vars/0"]
        h5["layers/dense/vars/0"] = h5py.ExternalLink(str(secret_h5), "/layers/dense/vars/0")

    def soft_link(h5):
        h5["layers/dense/vars/2"] = h5py.SoftLink("/layers/dense/vars/0")

    def external_storage(h5):
        del h5["layers/dense/vars/0"]
        h5.create_dataset(
            "layers/dense/vars/0",
            shape=(len(SECRET) + 1,),
            dtype="uint8",
            external=[(str(secret_txt), 0, len(SECRET) + 1)],
        )

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
    looping.write_bytes(data[:at] + HDF5_LOOP_EDIT[1] + data[at + len(HDF5_LOOP_EDIT[0]) :])
    add(Case("h5_loop", looping, 3, 3, None, note="HDF5 structures that send the HDF5 library into a loop"))

    # A shape bomb: a 4 GB Dense stack whose weights are declared but never stored.
    from factories import dense_stack, write_declared_model

    bomb = write_declared_model(root / "shape_bomb.keras", dense_stack(keras, [32_768, 32_768], name="bomb"))
    add(
        Case(
            "shape_bomb",
            bomb,
            0,
            3,
            "HDF5-SHAPE-BOMB",
            note="4 GiB declared, nothing stored: profiles statically, never loaded",
        )
    )

    # Absurd sizes in the config only (the stored weights are the clean model's).
    for name, mutate in {
        "dense_units_2pow40": lambda c: next(d for d in walk(c) if d.get("class_name") == "Dense")["config"].update(
            units=2**40
        ),
        "input_shape_2pow40": lambda c: next(d for d in walk(c) if d.get("class_name") == "InputLayer")[
            "config"
        ].update(batch_shape=[None, 2**40]),
    }.items():
        cfg = copy.deepcopy(clean_cfg)
        mutate(cfg)
        for layer in cfg["config"]["layers"]:
            layer.pop("build_config", None)  # let each layer build from the (absurd) shapes it is called on
        add(
            Case(
                name,
                with_config(clean_path, root / f"{name}.keras", cfg),
                0,
                3,
                None,
                note="absurd size in the config: must not allocate",
            )
        )

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


# ============================================================================================
# Round 2 (issue 11): files whose danger is in what kmemopt did not look at, what it allocates,
# runs or prints. Every case names what each of the four entry points must answer.

ROUND2_COMMANDS = ("profile", "measure", "shrink", "api")  # api: kmemopt.load_model in a fresh process


@dataclass(frozen=True)
class Expect:
    """What one entry point must answer: an exit code in `codes`; on exit 3, a rule among `rules`.

    `rules` None accepts any rule (or none); a rule ending in "-" is a prefix ("TRUST-"); None inside
    the tuple accepts a refusal without a rule id (a damaged file)."""

    codes: frozenset[int]
    rules: tuple[str | None, ...] | None = None

    def rule_ok(self, rule: str | None) -> bool:
        if self.rules is None:
            return True
        return any(r == rule if r is None or not r.endswith("-") else (rule or "").startswith(r) for r in self.rules)


def refused(*rules: str | None) -> Expect:
    return Expect(frozenset({3}), rules or None)


def either(*rules: str | None) -> Expect:
    """Accepted (exit 0) or refused with one of `rules`."""
    return Expect(frozenset({0, 3}), rules or None)


LOADS = Expect(frozenset({0}))


@dataclass(frozen=True)
class Case2:
    name: str
    klass: str  # the class: format, weights, config, run, time, also
    path: Path
    expect: dict[str, Expect]  # by command in ROUND2_COMMANDS
    control: Path | None = None  # a twin whose canary fires under plain Keras (positive control)
    keras_loads: bool = False  # plain Keras loads this file: a refusal by kmemopt would be a false one
    keras_resolves: str | None = None  # plain Keras loads this file and this function becomes an activation
    profile_max_rss: int | None = None  # a tighter cap for `profile` (which must not allocate weights)
    note: str = ""


def same(expect: Expect) -> dict[str, Expect]:
    return dict.fromkeys(ROUND2_COMMANDS, expect)


def per_command(profile: Expect, measure: Expect, shrink: Expect, api: Expect) -> dict[str, Expect]:
    return {"profile": profile, "measure": measure, "shrink": shrink, "api": api}


ROUND2_CASE_NAMES = (
    # 1. format confusion
    "h5_then_zip_keras",
    "zip_in_userblock_h5",
    "zip_hdf5_at_512_h5",
    "zip_hdf5_at_1024_h5",
    "zip_named_h5",
    "zip_named_model",
    "hdf5_named_keras",
    # 2. declared-but-unwritten weights behind HDF5 filters
    "unwritten_gzip_keras",
    "unwritten_lzf_h5",
    "decoy_keras",
    "partial_chunks_keras",
    "gzip_zeros_ratio_keras",
    "gzip_zeros_ratio_h5",
    # 3. configs that allocate
    "numpy_marker_bytes",
    "tensor_marker_bytes",
    "numpy_marker_unicode",
    "long_list_ints",
    "long_list_objects",
    # 4. running the model without a cap
    "input_1e6_by_4",
    "repeat_vector_2pow20",
    "input_2pow40_by_4",
    # 5. time
    "sequential_20k_layers",
    "functional_20k_layers",
    "json_escaped_quotes_keras",
    "json_quote_soup_keras",
    "json_escaped_quotes_h5",
    # 6. also
    "activation_deserialize_h5",
    "activation_serialize_h5",
    "activation_deserialize_keras",
    "markup_layer_name",
    "markup_class_name",
    "markup_module_name",
    "bom_config",
    "bom_config_and_metadata",
    "convnext_tiny",
)

# The canary-bearing part of the format-confusion files holds this too: it must never be printed.
PAYLOAD_NAME = "payload_" + SECRET.replace("-", "_")
MARKUP = "[bold red]evil[/]\x1b[31m\x1b]0;pwned\x07\nok: all good"
MARKUP_NAME = MARKUP.replace("[/]", "")  # Keras refuses a "/" in a layer name
BIG = 30_000  # a Dense(BIG) on BIG inputs declares a 3.6 GB kernel
# `profile` never allocates weights: Keras and TensorFlow take about 0.8 GB, a config reader a little more.
PROFILE_MAX_RSS = int(1.25 * 1024**3)


@dataclass
class Corpus2:
    root: Path
    canaries: Path
    cases: list[Case2] = field(default_factory=list)

    @property
    def controls(self) -> Path:
        return self.root / "controls"

    def fired(self) -> list[str]:
        return sorted(p.name for p in self.canaries.iterdir())


def copy_hdf5(src, dst) -> None:
    """Every attribute and object of one open h5py file into another."""
    for k, v in src.attrs.items():
        dst.attrs[k] = v
    for k in src:
        src.copy(src[k], dst, k)


def enlarge(config: Any, old: int, new: int) -> Any:
    """Every `units` and every input/build shape dimension equal to `old` set to `new`."""
    for d in walk(config):
        if d.get("units") == old:
            d["units"] = new
        for key in ("batch_shape", "input_shape", "batch_input_shape", "build_input_shape", "shape"):
            if isinstance(d.get(key), list):
                d[key] = [new if x == old else x for x in d[key]]
    return config


def filtered_dataset(h5, name: str, shape: tuple[int, ...], compression: str, *, write: str = "none"):
    """A chunked, filtered float32 dataset: no chunk written, only the first one, or all (zeros)."""
    import numpy as np

    chunks = tuple(min(1000, n) for n in shape)
    ds = h5.create_dataset(name, shape=shape, dtype="float32", chunks=chunks, compression=compression)
    if write == "first":
        ds[tuple(slice(0, c) for c in chunks)] = np.random.default_rng(0).random(chunks, dtype="float32")
    elif write == "zeros":  # every chunk, each the same precompressed chunk of zeros
        block = zlib.compress(bytes(int(np.prod(chunks)) * 4), 9)
        for index in np.ndindex(*(-(-n // c) for n, c in zip(shape, chunks, strict=True))):
            ds.id.write_direct_chunk(tuple(i * c for i, c in zip(index, chunks, strict=True)), block)
    return ds


def keras_file(
    path: Path,
    config: dict,
    weights: Callable[[Any], None],
    *,
    metadata: bytes | None = None,
    config_bytes: bytes | None = None,
    compression: int = zipfile.ZIP_STORED,
) -> Path:
    """A .keras zip whose weights file is written by `weights(h5)`."""
    import h5py

    tmp = path.with_suffix(".weights.tmp")
    with h5py.File(tmp, "w") as h5:
        weights(h5)
    data = tmp.read_bytes()
    tmp.unlink()
    return write_zip(
        path,
        [
            ("metadata.json", metadata or json.dumps({"keras_version": "3.15.1", "date_saved": "2020-01-01"}).encode()),
            ("config.json", config_bytes if config_bytes is not None else json.dumps(config).encode()),
            ("model.weights.h5", data),
        ],
        compression=compression,
    )


def build_round2(root: Path, keras) -> Corpus2:  # noqa: C901 - one flat list of cases reads best
    import h5py
    import numpy as np
    from factories import dense_stack
    from keras.saving import serialize_keras_object

    root.mkdir(parents=True, exist_ok=True)
    canaries = root / "canaries"
    canaries.mkdir()
    corpus = Corpus2(root=root, canaries=canaries)
    (corpus.controls / "canaries").mkdir(parents=True)
    add = corpus.cases.append

    inp = keras.Input((4,), name="x")
    out = keras.layers.Dense(3, name="dense")(keras.layers.Dense(8, activation="relu", name="hidden")(inp))
    clean = keras.Model(inp, out, name="clean")
    clean_keras, clean_h5 = root / "clean.keras", root / "clean.h5"
    clean.save(clean_keras)
    clean.save(clean_h5)
    clean_cfg = json.loads(read_keras(clean_keras)["config.json"])
    members = read_keras(clean_keras)
    ordered = list(members.items())

    inp = keras.Input((4,), name="x")
    payload = keras.Model(
        inp,
        keras.layers.Dense(3, name="dense")(keras.layers.Lambda(lambda t: t * 2.0, name="lam")(inp)),
        name=PAYLOAD_NAME,
    )

    def payload_keras(dst: Path, canary: Path) -> bytes:
        payload.save(dst)
        cfg = json.loads(read_keras(dst)["config.json"])
        assert plant_lambda_code(cfg, canary_code(canary)) == 1
        with_config(dst, dst, cfg)
        data = dst.read_bytes()
        dst.unlink()
        return data

    def payload_h5(dst: Path, canary: Path) -> Path:
        payload.save(dst)
        with h5py.File(dst, "r+") as h5:
            cfg = json.loads(h5.attrs["model_config"])
            assert plant_lambda_code(cfg, canary_code(canary)) == 1
            h5.attrs["model_config"] = json.dumps(cfg)
        return dst

    # --- 1. Format confusion: the part kmemopt sniffs is clean, the part Keras loads runs the canary ---
    def confused(name: str, suffix: str, make: Callable[[Path, Path], None], note: str) -> None:
        path = root / f"{name}{suffix}"
        make(path, canaries / f"{name}.fired")
        control = corpus.controls / f"{name}{suffix}"  # same suffix: Keras picks its loader by name
        make(control, corpus.controls / "canaries" / name)
        add(Case2(name, "format", path, same(refused("FORMAT-AMBIGUOUS")), control=control, note=note))

    def h5_then_zip(path: Path, canary: Path) -> None:
        path.write_bytes(clean_h5.read_bytes() + payload_keras(path.with_suffix(".tmp.keras"), canary))

    def zip_in_userblock(path: Path, canary: Path) -> None:
        zipped = clean_keras.read_bytes()
        userblock = 512
        while userblock < len(zipped):
            userblock *= 2
        src = payload_h5(path.with_suffix(".tmp.h5"), canary)
        with h5py.File(src, "r") as s, h5py.File(path, "w", userblock_size=userblock) as d:
            copy_hdf5(s, d)
        src.unlink()
        with open(path, "r+b") as fh:  # the user block is the HDF5 library's to skip: a whole zip fits in it
            fh.write(zipped)

    def zip_with_hdf5_at(offset: int) -> Callable[[Path, Path], None]:
        def make(path: Path, canary: Path) -> None:
            src = payload_h5(path.with_suffix(".tmp.h5"), canary)
            name = "assets/blob.bin"
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            pad = offset - 30 - len(name) - 4  # local header, name, then one padding extra field
            info.extra = struct.pack("<HH", 0xCAFE, pad) + bytes(pad)
            with zipfile.ZipFile(path, "w") as zf:
                zf.writestr(info, src.read_bytes())  # stored: the HDF5 file starts at `offset`
                for n, d in ordered:
                    zf.writestr(n, d)
            src.unlink()
            assert path.read_bytes()[offset : offset + 8] == b"\x89HDF\r\n\x1a\n"

        return make

    confused(
        "h5_then_zip_keras",
        ".keras",
        h5_then_zip,
        "a legacy HDF5 model followed by a zip: Keras takes a .keras that is a zip (end of file) as a zip",
    )
    confused("zip_in_userblock_h5", ".h5", zip_in_userblock, "a clean zip in the HDF5 user block of a payload .h5")
    confused("zip_hdf5_at_512_h5", ".h5", zip_with_hdf5_at(512), "a clean zip with a payload HDF5 at byte 512")
    confused("zip_hdf5_at_1024_h5", ".h5", zip_with_hdf5_at(1024), "a clean zip with a payload HDF5 at byte 1024")

    # Valid files with the wrong suffix load by content.
    for name, src, suffix in (
        ("zip_named_h5", clean_keras, ".h5"),
        ("zip_named_model", clean_keras, ".model"),
        ("hdf5_named_keras", clean_h5, ".keras"),
    ):
        path = root / f"{name}{suffix}"
        shutil.copy(src, path)
        add(Case2(name, "format", path, same(LOADS), note="a valid model with the wrong suffix loads by content"))

    # --- 2. Weights declared behind HDF5 filters but not stored ------------------------------
    big = dense_stack(keras, [BIG, BIG], name="big")  # one Dense: kernel (BIG, BIG), bias (BIG,)
    big_cfg = serialize_keras_object(big)
    inp = keras.Input((4,), name="x")
    small = keras.Model(inp, keras.layers.Dense(4, name="dense_0")(inp), name="big")
    small_h5 = root / "small_legacy.h5"
    small.save(small_h5)

    def legacy_big(path: Path, weights: Callable[[Any], None]) -> Path:
        """The small legacy .h5 with the architecture and the weight datasets of Dense(BIG) on BIG inputs."""
        shutil.copy(small_h5, path)
        with h5py.File(path, "r+") as h5:
            h5.attrs["model_config"] = json.dumps(enlarge(json.loads(h5.attrs["model_config"]), 4, BIG))
            group = h5["model_weights/dense_0/dense_0"]
            del group["kernel"], group["bias"]
            weights(group)
        return path

    def stored_bias(h5, name="layers/dense_0/vars/1"):
        h5.create_dataset(name, data=np.zeros(BIG, "float32"))

    def shape_bomb(name: str, path: Path, note: str, rule: str = "HDF5-SHAPE-BOMB") -> None:
        add(
            Case2(
                name, "weights", path, per_command(either(rule), refused(rule), refused(rule), refused(rule)), note=note
            )
        )

    shape_bomb(
        "unwritten_gzip_keras",
        keras_file(
            root / "unwritten_gzip.keras",
            big_cfg,
            lambda h5: (filtered_dataset(h5, "layers/dense_0/vars/0", (BIG, BIG), "gzip"), stored_bias(h5)),
        ),
        "a gzip-chunked 3.6 GB kernel with no chunk written",
    )
    shape_bomb(
        "unwritten_lzf_h5",
        legacy_big(
            root / "unwritten_lzf.h5",
            lambda g: (filtered_dataset(g, "kernel", (BIG, BIG), "lzf"), filtered_dataset(g, "bias", (BIG,), "lzf")),
        ),
        "a legacy .h5 of a few KB whose lzf-chunked kernel declares 3.6 GB and stores nothing",
    )
    shape_bomb(
        "decoy_keras",
        keras_file(
            root / "decoy.keras",
            big_cfg,
            lambda h5: (filtered_dataset(h5, "layers/dense_0/vars/0", (1,), "gzip"), stored_bias(h5)),
        ),
        "a 1-element unwritten decoy where the 3.6 GB kernel should be",
    )
    shape_bomb(
        "partial_chunks_keras",
        keras_file(
            root / "partial_chunks.keras",
            big_cfg,
            lambda h5: (
                filtered_dataset(h5, "layers/dense_0/vars/0", (BIG, BIG), "gzip", write="first"),
                stored_bias(h5),
            ),
        ),
        "one chunk of 900 written",
    )
    shape_bomb(
        "gzip_zeros_ratio_keras",
        keras_file(
            root / "gzip_zeros_ratio.keras",
            big_cfg,
            lambda h5: (
                filtered_dataset(h5, "layers/dense_0/vars/0", (BIG, BIG), "gzip", write="zeros"),
                stored_bias(h5),
            ),
        ),
        "every chunk written: 3.6 GB of zeros in 3.5 MB (over 1,000x)",
        rule="HDF5-RATIO",
    )
    shape_bomb(
        "gzip_zeros_ratio_h5",
        legacy_big(
            root / "gzip_zeros_ratio.h5",
            lambda g: (
                filtered_dataset(g, "kernel", (BIG, BIG), "gzip", write="zeros"),
                g.create_dataset("bias", data=np.zeros(BIG, "float32")),
            ),
        ),
        "the compression bomb in a legacy .h5",
        rule="HDF5-RATIO",
    )

    # --- 3. Configs that allocate while they are read -----------------------------------------
    def node_kwargs(name: str, kwargs: dict, note: str, expect: dict[str, Expect], rss: int | None) -> None:
        cfg = copy.deepcopy(clean_cfg)
        layer = next(d for d in walk(cfg) if d.get("class_name") == "Dense" and d["config"]["name"] == "dense")
        layer["inbound_nodes"][0]["kwargs"].update(kwargs)
        add(
            Case2(
                name,
                "config",
                with_config(clean_keras, root / f"{name}.keras", cfg),
                expect,
                profile_max_rss=rss,
                note=note,
            )
        )

    marker = lambda kind, dtype: {"class_name": kind, "config": {"value": "x", "dtype": dtype}}  # noqa: E731
    node_kwargs(
        "numpy_marker_bytes",
        {"mask": marker("__numpy__", "S2000000000")},
        "a __numpy__ marker of one 2 GB string",
        same(refused("CONFIG-MARKER")),
        PROFILE_MAX_RSS,
    )
    node_kwargs(
        "tensor_marker_bytes",
        {"mask": marker("__tensor__", "S2000000000")},
        "a __tensor__ marker of one 2 GB string",
        same(refused("CONFIG-MARKER")),
        PROFILE_MAX_RSS,
    )
    node_kwargs(
        "numpy_marker_unicode",
        {"mask": [1, {"nested": marker("__numpy__", "U600000000")}]},
        "a nested __numpy__ marker of one 2.4 GB unicode string",
        same(refused("CONFIG-MARKER")),
        PROFILE_MAX_RSS,
    )
    for name, item, count in (("long_list_ints", "0", 8_400_000), ("long_list_objects", "{}", 6_300_000)):
        cfg_text = json.dumps(clean_cfg)
        assert cfg_text.endswith("}")
        text = cfg_text[:-1] + ', "extra": [' + ", ".join([item] * count) + "]}"
        path = write_zip(root / f"{name}.keras", [(n, text.encode() if n == "config.json" else d) for n, d in ordered])
        add(
            Case2(
                name,
                "config",
                path,
                same(either()),
                profile_max_rss=PROFILE_MAX_RSS,
                note=f"a {len(text) >> 20} MB config.json, one list of {count:,} items",
            )
        )

    # --- 4. Models whose run needs far more memory than the machine has ------------------------
    def runs_big(name: str, build: Callable[[], Any], note: str) -> None:
        path = root / f"{name}.keras"
        build().save(path)
        add(
            Case2(name, "run", path, per_command(LOADS, refused("RUN-MEMORY"), refused("RUN-MEMORY"), LOADS), note=note)
        )

    def input_1e6():
        inp = keras.Input((1_000_000, 4), name="x")
        return keras.Model(inp, keras.layers.Dense(4096, name="wide")(inp), name="long_input")

    def repeat_vector():
        inp = keras.Input((8192,), name="x")
        return keras.Model(
            inp, keras.layers.Dense(2, name="d")(keras.layers.RepeatVector(2**20, name="rep")(inp)), name="repeat"
        )

    def input_2pow40():
        inp = keras.Input((2**40, 4), name="x")
        return keras.Model(inp, keras.layers.Dense(2, name="d")(inp), name="huge_input")

    runs_big("input_1e6_by_4", input_1e6, "16 GB of activations a sample")
    runs_big("repeat_vector_2pow20", repeat_vector, "RepeatVector(2**20) over 8192 features: 32 GB a sample")
    runs_big("input_2pow40_by_4", input_2pow40, "an input of 2**40 x 4")

    # --- 5. Time: deep models and JSON that makes a naive check quadratic ----------------------
    n_layers = 20_000
    seq_cfg = {
        "module": "keras",
        "class_name": "Sequential",
        "registered_name": None,
        "config": {
            "name": "deep",
            "trainable": True,
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "registered_name": None,
                    "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "x"},
                }
            ]
            + [
                {"module": "keras.layers", "class_name": "ReLU", "registered_name": None, "config": {"name": f"r{i}"}}
                for i in range(n_layers)
            ],
        },
        "build_config": {"input_shape": [None, 4]},
    }
    fn_layers = [
        {
            "module": "keras.layers",
            "class_name": "InputLayer",
            "registered_name": None,
            "name": "x",
            "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "x"},
            "inbound_nodes": [],
        }
    ]
    for i in range(n_layers):
        parent = "x" if i == 0 else f"r{i - 1}"
        fn_layers.append(
            {
                "module": "keras.layers",
                "class_name": "ReLU",
                "registered_name": None,
                "name": f"r{i}",
                "config": {"name": f"r{i}"},
                "inbound_nodes": [
                    {
                        "args": [
                            {
                                "class_name": "__keras_tensor__",
                                "config": {"shape": [None, 4], "dtype": "float32", "keras_history": [parent, 0, 0]},
                            }
                        ],
                        "kwargs": {},
                    }
                ],
            }
        )
    fn_cfg = {
        "module": "keras.src.models.functional",
        "class_name": "Functional",
        "registered_name": "Functional",
        "config": {
            "name": "deep",
            "trainable": True,
            "layers": fn_layers,
            "input_layers": [["x", 0, 0]],
            "output_layers": [[f"r{n_layers - 1}", 0, 0]],
        },
    }

    def weightless_groups(h5):  # what Keras writes for layers without variables (it names them by class)
        h5.create_group("vars")
        for i in range(n_layers):
            h5.create_group(f"layers/re_lu{'' if i == 0 else f'_{i}'}/vars")

    for name, cfg in (("sequential_20k_layers", seq_cfg), ("functional_20k_layers", fn_cfg)):
        path = keras_file(root / f"{name}.keras", cfg, weightless_groups, compression=zipfile.ZIP_DEFLATED)
        add(
            Case2(
                name,
                "time",
                path,
                same(either("MODEL-SIZE")),
                note=f"{n_layers:,} layers in {path.stat().st_size >> 10} KB",
            )
        )
    quotes = b'["' + b'\\"' * 100_000  # one string opened and never closed: every quote is escaped
    soup = b"[" + b'"a\\"[{' * 40_000
    json_rules = refused("CONFIG-JSON", None)
    for name, text in (("json_escaped_quotes_keras", quotes), ("json_quote_soup_keras", soup)):
        add(
            Case2(
                name,
                "time",
                write_zip(root / f"{name}.keras", [(n, text if n == "config.json" else d) for n, d in ordered]),
                same(json_rules),
                note=f"{len(text) >> 10} KB of unterminated strings",
            )
        )
    legacy_json = root / "json_escaped_quotes.h5"
    shutil.copy(clean_h5, legacy_json)
    with h5py.File(legacy_json, "r+") as h5:
        h5.attrs["model_config"] = quotes.decode()
    add(Case2("json_escaped_quotes_h5", "time", legacy_json, same(json_rules), note="the same in a legacy .h5"))

    # --- 6. Also: strings Keras resolves to functions, escapes in names, BOMs, a real model ------
    for name, value in (("activation_deserialize_h5", "deserialize"), ("activation_serialize_h5", "serialize")):
        path = root / f"{name}.h5"
        shutil.copy(clean_h5, path)
        with h5py.File(path, "r+") as h5:
            cfg = json.loads(h5.attrs["model_config"])
            next(d for d in walk(cfg) if d.get("class_name") == "Dense")["config"]["activation"] = value
            h5.attrs["model_config"] = json.dumps(cfg)
        add(
            Case2(
                name,
                "also",
                path,
                same(refused("TRUST-FUNCTION")),
                keras_resolves=value,
                note=f'"activation": "{value}" resolves to keras.activations.{value}',
            )
        )
    cfg = copy.deepcopy(clean_cfg)
    next(d for d in walk(cfg) if d.get("class_name") == "Dense")["config"]["activation"] = "deserialize"
    add(
        Case2(
            "activation_deserialize_keras",
            "also",
            with_config(clean_keras, root / "activation_deserialize.keras", cfg),
            same(refused("TRUST-FUNCTION", None)),
            note="Keras's .keras loader does not resolve the string (it fails): refused, with or without the rule",
        )
    )

    inp = keras.Input((4,), name="x")
    marked = keras.Model(inp, keras.layers.Dense(3, name=MARKUP_NAME)(inp), name="markup")
    marked.save(root / "markup_layer_name.keras")
    add(
        Case2(
            "markup_layer_name",
            "also",
            root / "markup_layer_name.keras",
            per_command(LOADS, either(), either(), LOADS),
            keras_loads=True,
            note="a layer name with markup, ANSI/OSC escapes, BEL and a newline; TensorFlow cannot run it (not a valid "
            "name scope): running it answers exit 0 or one sentence",
        )
    )
    for name, key in (("markup_class_name", "class_name"), ("markup_module_name", "module")):
        cfg = copy.deepcopy(clean_cfg)
        next(d for d in walk(cfg) if d.get("class_name") == "Dense")[key] = MARKUP
        add(
            Case2(
                name,
                "also",
                with_config(clean_keras, root / f"{name}.keras", cfg),
                same(refused("TRUST-")),
                note=f"a {key} with markup, escapes and a newline",
            )
        )

    bom = b"\xef\xbb\xbf"
    add(
        Case2(
            "bom_config",
            "also",
            write_zip(root / "bom_config.keras", [(n, bom + d if n == "config.json" else d) for n, d in ordered]),
            same(LOADS),
            keras_loads=True,
            note="config.json starts with a UTF-8 byte-order mark (Keras loads it)",
        )
    )
    add(
        Case2(
            "bom_config_and_metadata",
            "also",
            write_zip(
                root / "bom_config_and_metadata.keras", [(n, bom + d if n.endswith(".json") else d) for n, d in ordered]
            ),
            same(LOADS),
            keras_loads=True,
        )
    )

    convnext = root / "convnext_tiny.keras"
    keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10).save(convnext)
    add(
        Case2(
            "convnext_tiny",
            "also",
            convnext,
            same(LOADS),
            keras_loads=True,
            note="LayerScale is a class Keras registers itself",
        )
    )

    assert tuple(c.name for c in corpus.cases) == ROUND2_CASE_NAMES, "update ROUND2_CASE_NAMES with the new case"
    return corpus
