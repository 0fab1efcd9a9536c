"""Property-based fuzzing of the archive and config readers on mutated valid model files.

Each example goes through what `kmemopt profile` does before it builds anything (archive reading,
in the bounded child only for KMEMOPT_FUZZ_RANDOM (see READ_LIMITS), the Keras-free pre-check, the allowlist) and, for config mutations, the unallocated build
too. The property: every outcome is what the CLI would exit with for a known error (0, 2 or 3);
any other exception is a crash (the CLI's exit 4) and fails the test with the example that caused it.

Scale the run with KMEMOPT_FUZZ_EXAMPLES (default 150 a strategy). Examples are derandomized so a
CI run is reproducible; KMEMOPT_FUZZ_RANDOM=1 explores new ones (a long hunt, not a CI setting).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmemopt.errors import KmemoptError
from kmemopt.load.archive import DEFAULT_LIMITS, Limits
from kmemopt.load.archive import read_model_file as _read_model_file

EXAMPLES = int(os.environ.get("KMEMOPT_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not os.environ.get("KMEMOPT_FUZZ_RANDOM"),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# The derandomized examples are known to neither hang nor crash the HDF5 library, so they are read in
# this process: a spawned reading child costs about 0.3 s of CPU, minutes over the whole set. A hunt for
# new ones (KMEMOPT_FUZZ_RANDOM=1) reads each in the bounded child, as the CLI does.
READ_LIMITS = DEFAULT_LIMITS if os.environ.get("KMEMOPT_FUZZ_RANDOM") else Limits(max_read_seconds=0)


def read_model_file(path: Path):
    return _read_model_file(path, READ_LIMITS)


# Byte patterns next to which mutations do the most damage: zip headers and HDF5 structures.
HOT = (b"PK\x01\x02", b"PK\x03\x04", b"PK\x05\x06", b"\x89HDF", b"TREE", b"HEAP", b"SNOD", b"OHDR", b"config")


def outcome(action) -> int:
    """The exit code the CLI would give: 0, or the KmemoptError's code; anything else is a crash (4)."""
    try:
        action()
    except KmemoptError as exc:
        return int(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - the crash itself is the finding
        raise AssertionError(f"crash (exit 4): {type(exc).__name__}: {str(exc)[:300]}") from exc
    return 0


def hot_offsets(data: bytes) -> list[int]:
    found = []
    for pattern in HOT:
        start = data.find(pattern)
        while start != -1 and len(found) < 200:
            found.append(start)
            start = data.find(pattern, start + 1)
    return found or [0]


# One edit: (operation, where, payload). `where` is ("hot", i, offset): near the i-th header found, or
# ("at", fraction): anywhere. Examples stay small and readable when Hypothesis reports one.
EDITS = st.lists(
    st.tuples(
        st.sampled_from(("flip", "overwrite", "insert", "delete", "truncate", "max")),
        st.one_of(
            st.tuples(st.just("hot"), st.integers(0, 199), st.integers(0, 64)),
            st.tuples(st.just("at"), st.floats(0, 1, exclude_max=True)),
        ),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=6,
)


def mutate(data: bytes, edits) -> bytes:
    """Apply edits: bit flips, overwrites, insertions, deletions, truncation, 0xffffffff sizes."""
    buf = bytearray(data)
    hot = hot_offsets(data)
    for op, where, payload in edits:
        if not buf:
            break
        pos = hot[where[1] % len(hot)] + where[2] if where[0] == "hot" else int(where[1] * len(buf))
        pos = min(pos, len(buf) - 1)
        if op == "flip":
            buf[pos] ^= 1 << (payload[0] % 8)
        elif op == "overwrite":
            buf[pos : pos + len(payload)] = payload
        elif op == "insert":
            buf[pos:pos] = payload
        elif op == "delete":
            del buf[pos : pos + 1 + payload[0] % 16]
        elif op == "truncate":
            del buf[pos:]
        else:  # sizes and counts set to their maximum: the classic way to make a reader over-allocate
            buf[pos : pos + 4] = b"\xff\xff\xff\xff"
    return bytes(buf)


@pytest.fixture(scope="module")
def allow(keras):
    """The allowlist, behind a function so Hypothesis's failure reports do not print its thousand classes."""
    from kmemopt.load.trust import build_allowlist

    allowlist = build_allowlist()
    return lambda: allowlist


@pytest.fixture(scope="module")
def valid(keras, tmp_path_factory) -> dict[str, Path]:
    """A small valid model in both formats, compiled so the compile config is fuzzed too."""
    from hostile import fuzz_model

    folder = tmp_path_factory.mktemp("fuzz")
    model = fuzz_model(keras)
    paths = {"keras": folder / "valid.keras", "h5": folder / "valid.h5"}
    model.save(paths["keras"])
    model.save(paths["h5"])
    paths["work"] = folder / "work"
    paths["work"].mkdir()
    return paths


def read_and_check(path: Path, allow) -> None:
    """Everything profile does with a file before building it."""
    from kmemopt.load.build import checked_configs
    from kmemopt.load.trust import precheck_file

    model_file = read_model_file(path)
    precheck_file(model_file)
    checked_configs(model_file, allow())


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {i.filename: zf.read(i) for i in zf.infolist()}


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


@FUZZ
@given(edits=EDITS)
def test_mutated_keras_archive(valid, allow, edits):
    """Raw bytes of a .keras file mutated anywhere (zip headers, directory, members)."""
    target = valid["work"] / "archive.keras"
    target.write_bytes(mutate(valid["keras"].read_bytes(), edits))
    assert outcome(lambda: read_and_check(target, allow)) in (0, 2, 3)


@FUZZ
@given(edits=EDITS)
def test_mutated_weights_member(valid, allow, edits):
    """A well-formed zip whose HDF5 weights member is mutated (h5py reads the corruption)."""
    members = _members(valid["keras"])
    members["model.weights.h5"] = mutate(members["model.weights.h5"], edits)
    target = valid["work"] / "weights.keras"
    target.write_bytes(_zip(members))
    assert outcome(lambda: read_and_check(target, allow)) in (0, 2, 3)


@FUZZ
@given(edits=EDITS)
def test_mutated_legacy_h5(valid, allow, edits):
    """A legacy .h5 model mutated anywhere (superblock, object headers, the model_config attribute)."""
    target = valid["work"] / "legacy.h5"
    target.write_bytes(mutate(valid["h5"].read_bytes(), edits))
    assert outcome(lambda: read_and_check(target, allow)) in (0, 2, 3)


JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(
        [
            "Dense",
            "Lambda",
            "function",
            "keras.layers",
            "os",
            "builtins",
            "__lambda__",
            "__numpy__",
            "float32",
            "relu",
            "glorot_uniform",
            "int8_from_float32",
            "../x",
            "",
        ]
    ),
)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "class_name",
                    "module",
                    "config",
                    "registered_name",
                    "name",
                    "units",
                    "layers",
                    "shape",
                    "dtype",
                    "vocabulary",
                    "build_config",
                    "inbound_nodes",
                ]
            ),
            children,
            max_size=4,
        ),
    ),
    max_leaves=20,
)


def _paths(node, prefix=()) -> list[tuple]:
    """Every location in a JSON tree (as a key path)."""
    found, stack = [], [(node, prefix)]
    while stack:
        n, p = stack.pop()
        found.append(p)
        if isinstance(n, dict):
            stack.extend((v, (*p, k)) for k, v in n.items())
        elif isinstance(n, list):
            stack.extend((v, (*p, i)) for i, v in enumerate(n))
    return found


def _replace(tree, path, value):
    if not path:
        return value
    node = tree
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return tree


@FUZZ
@given(data=st.data())
def test_mutated_config_through_build(valid, allow, data):
    """config.json with 1-3 subtrees replaced by random JSON, read, checked and built unallocated."""
    from kmemopt.load.build import build_from_file
    from kmemopt.load.trust import precheck_file

    members = _members(valid["keras"])
    config = json.loads(members["config.json"])
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(_paths(config)))
        config = _replace(config, where, data.draw(JSON_VALUES))
    members["config.json"] = json.dumps(config).encode()
    target = valid["work"] / "config.keras"
    target.write_bytes(_zip(members))

    def profile_path():
        model_file = read_model_file(target)
        precheck_file(model_file)
        build_from_file(model_file, allow=allow())

    assert outcome(profile_path) in (0, 2, 3)


@FUZZ
@given(text=st.text(alphabet='[]{}":,\\ a1', max_size=400))
def test_config_json_text(valid, allow, text):
    """Arbitrary bracket soup as config.json: parsed with caps or refused, never a RecursionError."""
    members = _members(valid["keras"])
    members["config.json"] = text.encode()
    target = valid["work"] / "text.keras"
    target.write_bytes(_zip(members))
    assert outcome(lambda: read_and_check(target, allow)) in (0, 2, 3)
