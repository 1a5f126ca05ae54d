"""The cars model: an MLP over Contrail's encoded features; Contrail adds the regression head."""

import keras


def build(features, params):
    x = keras.layers.Concatenate()([features[name] for name in sorted(features)])
    for units in params["hidden_units"]:
        x = keras.layers.Dense(units, activation="relu")(x)
    return x
