"""The penguins model: a small MLP over Contrail's encoded features.

`features` maps each spec feature to a float tensor of shape (batch, width): numbers arrive
imputed and standardized, strings one-hot encoded with an out-of-vocabulary slot. Return a
(batch, units) tensor; Contrail adds the softmax head and the loss.
"""

import keras


def build(features, params):
    x = keras.layers.Concatenate()([features[name] for name in sorted(features)])
    for units in params["hidden_units"]:
        x = keras.layers.Dense(units, activation="relu")(x)
        if params.get("dropout", 0.0) > 0:
            x = keras.layers.Dropout(params["dropout"])(x)
    return x
