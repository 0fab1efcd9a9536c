"""Regenerate the bundled sample models deterministically (python sample_models/make_samples.py).

All trained on scikit-learn's digits (1,797 8x8 images), so no download is needed:
- digits_mlp.keras     Dense-heavy MLP, saved with its Adam state (a third of the file is weights)
- digits_cnn.keras     small CNN, saved with its Adam state
- digits_lstm.keras    LSTM reading the image row by row (8 steps of 8 pixels)
- nested_shared.keras  a functional model with a nested Sequential sub-model and a shared layer
- text_lstm.keras      an untrained LSTM text classifier with unknown sequence length (needs --seq-len)
- digits_test.npz      the test split, keyed by input name: pixels, image, rows; labels under y
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_DETERMINISTIC_OPS", "1")

HERE = Path(__file__).resolve().parent


def main(out: Path = HERE) -> None:
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    keras.utils.set_random_seed(0)
    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    img_tr, img_te = x_tr.reshape(-1, 8, 8, 1), x_te.reshape(-1, 8, 8, 1)
    rows_tr, rows_te = x_tr.reshape(-1, 8, 8), x_te.reshape(-1, 8, 8)
    np.savez(out / "digits_test.npz", pixels=x_te, image=img_te, rows=rows_te, y=y_te)

    inp = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(256, activation="relu", name="dense_1")(inp)
    h = keras.layers.Dense(128, activation="relu", name="dense_2")(h)
    mlp = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="classifier")(h), name="digits_mlp")

    inp = keras.Input((8, 8, 1), name="image")
    h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1")(inp)
    h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2")(h)
    h = keras.layers.MaxPooling2D(2, name="pool")(h)
    h = keras.layers.Flatten(name="flatten")(h)
    h = keras.layers.Dense(64, activation="relu", name="dense")(h)
    cnn = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="classifier")(h), name="digits_cnn")

    inp = keras.Input((8, 8), name="rows")
    h = keras.layers.LSTM(32, name="lstm")(inp)
    lstm = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="classifier")(h), name="digits_lstm")

    for model, xs, epochs in ((mlp, x_tr, 20), (cnn, img_tr, 15), (lstm, rows_tr, 30)):
        model.compile(
            optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        model.fit(xs, y_tr, epochs=epochs, batch_size=32, verbose=0)
        test_x = {"digits_mlp": x_te, "digits_cnn": img_te, "digits_lstm": rows_te}[model.name]
        _, acc = model.evaluate(test_x, y_te, verbose=0)
        model.save(out / f"{model.name}.keras")
        print(f"{model.name}: test accuracy {acc:.4f}, {model.count_params():,} params")

    # Nested sub-model and a shared layer (called twice), trained briefly.
    inp = keras.Input((64,), name="pixels")
    shared = keras.layers.Dense(64, activation="relu", name="shared")
    head = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu", name="hidden"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ],
        name="head",
    )
    h = shared(keras.layers.Dense(64, activation="relu", name="stem")(inp))
    h = shared(h)
    nested = keras.Model(inp, head(h), name="nested_shared")
    nested.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    nested.fit(x_tr, y_tr, epochs=3, batch_size=32, verbose=0)
    nested.save(out / "nested_shared.keras")

    tokens = keras.Input((None,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(1000, 32, name="embedding")(tokens)
    h = keras.layers.LSTM(64, name="lstm")(h)
    text = keras.Model(tokens, keras.layers.Dense(2, activation="softmax", name="classifier")(h), name="text_lstm")
    text.save(out / "text_lstm.keras")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
