"""No false refusals: every keras.applications model and keras-hub backbone passes the allowlist.

Each model is built small at test time (weights=None, no download), saved, and profiled from the
file, which runs the pre-check, the allowlist and the unallocated build. Most are slow; ConvNeXtTiny
(refused before: its LayerScale is Keras's own unregistered class) and one keras-hub backbone are
in the fast tier.
"""

from __future__ import annotations

import inspect

import pytest

FAST_APPLICATIONS = {"ConvNeXtTiny", "MobileNetV3Small"}
FAST_BACKBONES = {"BertBackbone"}


def _application_names() -> list[str]:
    import keras

    return sorted(n for n in dir(keras.applications) if n[0].isupper())


def _input_shape(name: str) -> tuple[int, int, int]:
    # Inception, Xception and NASNet need at least 75x75 (NASNetLarge's top at 331 is not required
    # with weights=None); every other model builds at 32x32.
    return (75, 75, 3) if name.startswith(("Inception", "Xception", "NASNet")) else (32, 32, 3)


APPLICATIONS = [
    pytest.param(n, marks=() if n in FAST_APPLICATIONS else pytest.mark.slow)
    for n in (
        "ConvNeXtBase ConvNeXtLarge ConvNeXtSmall ConvNeXtTiny ConvNeXtXLarge DenseNet121 DenseNet169 DenseNet201 "
        "EfficientNetB0 EfficientNetB1 EfficientNetB2 EfficientNetB3 EfficientNetB4 EfficientNetB5 EfficientNetB6 "
        "EfficientNetB7 EfficientNetV2B0 EfficientNetV2B1 EfficientNetV2B2 EfficientNetV2B3 EfficientNetV2L "
        "EfficientNetV2M EfficientNetV2S InceptionResNetV2 InceptionV3 MobileNet MobileNetV2 MobileNetV3Large "
        "MobileNetV3Small NASNetLarge NASNetMobile ResNet101 ResNet101V2 ResNet152 ResNet152V2 ResNet50 ResNet50V2 "
        "VGG16 VGG19 Xception"
    ).split()
]


def test_application_list_is_complete(keras):
    assert sorted(p.values[0] for p in APPLICATIONS) == _application_names()


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_passes_the_allowlist(keras, tmp_path, name):
    import kmemopt

    model = getattr(keras.applications, name)(weights=None, input_shape=_input_shape(name), classes=3)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    result = kmemopt.profile(path, batch_size=1)
    assert result.totals.params == model.count_params()


# Small constructor arguments shared by most keras-hub backbones (looked up by parameter name).
SMALL = dict(
    vocabulary_size=64, vocab_size=64, num_layers=2, num_heads=2, num_query_heads=2, num_key_value_heads=1,
    num_attention_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16, head_dim=4, embedding_dim=8,
    num_experts=2, top_k=1, num_experts_per_tok=1, moe_intermediate_dim=8, num_segments=2, image_size=16,
    patch_size=4, image_shape=(16, 16, 3), dropout=0.0, layer_norm_epsilon=1e-5, mlp_dim=16, window_size=2,
)  # fmt: skip
# Backbones whose arguments are per-stage lists: hand-written small ones.
EXTRA = {
    "ResNetBackbone": dict(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block", image_shape=(16, 16, 3),
    ),
    "VGGBackbone": dict(stackwise_num_repeats=[1, 1], stackwise_num_filters=[4, 8], image_shape=(16, 16, 3)),
    "DenseNetBackbone": dict(stackwise_num_repeats=[1, 1], growth_rate=4, image_shape=(32, 32, 3)),
    "XceptionBackbone": dict(
        stackwise_conv_filters=[[8, 8], [8, 8]], stackwise_pooling=[False, True], image_shape=(32, 32, 3)
    ),
    "SwinTransformerBackbone": dict(
        image_shape=(32, 32, 3), embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=2, patch_size=4
    ),
}  # fmt: skip
FAST_BACKBONES_SEQ_LEN = 8


def _backbone_names() -> list[str]:
    import keras_hub

    return sorted(
        n for n in dir(keras_hub.models) if n.endswith("Backbone") and n not in ("Backbone", "FeaturePyramidBackbone")
    )


def _backbone_kwargs(cls) -> tuple[dict, list[str]]:
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: SMALL[k] for k in params if k in SMALL}
    kwargs.update(EXTRA.get(cls.__name__, {}))
    missing = [
        k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in kwargs and k not in ("self",)
    ]
    return kwargs, [k for k in missing if params[k].kind is not inspect.Parameter.VAR_KEYWORD]


def _backbone_params():
    try:
        names = _backbone_names()
    except ImportError:
        return [pytest.param("keras_hub", marks=pytest.mark.skip(reason="keras-hub is not installed"))]
    return [pytest.param(n, marks=() if n in FAST_BACKBONES else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _backbone_params())
def test_keras_hub_backbone_passes_the_allowlist(keras, tmp_path, name):
    import keras_hub

    import kmemopt

    cls = getattr(keras_hub.models, name)
    kwargs, missing = _backbone_kwargs(cls)
    if missing:
        # Composite backbones take other models (image/text encoders, a VAE) or long per-stage lists;
        # each needs hand-written small arguments that are not here yet.
        pytest.skip(f"{name} needs hand-written small arguments for {', '.join(missing[:6])}")
    model = cls(**kwargs)
    path = tmp_path / f"{name}.keras"
    model.save(path)
    result = kmemopt.profile(path, batch_size=1, seq_len=FAST_BACKBONES_SEQ_LEN)
    assert result.totals.params == model.count_params()
