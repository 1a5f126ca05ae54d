"""Run in a fresh process: load a SavedModel with TensorFlow alone, and compare its signatures.

    python tests/saved_model_check.py MODEL_DIR '["eval-00000-of-00001.tfrecord.gz", ...]'

Prints one JSON line: the signature names, the `predict` input names, the largest difference
between `serving_default` and `predict` on the eval records, and the class labels seen.
"""

import json
import sys

import numpy as np
import tensorflow as tf

model_dir, files = sys.argv[1], json.loads(sys.argv[2])
model = tf.saved_model.load(model_dir)
serialized = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")])
by_examples = model.signatures["serving_default"](examples=serialized)
predict = model.signatures["predict"]
inputs = predict.structured_input_signature[1]
# Parse the raw features as a client would, filling absent values as missing markers.
defaults = {tf.float32: float("nan"), tf.int64: np.iinfo(np.int64).min, tf.string: ""}
parse = {name: tf.io.FixedLenFeature([], s.dtype, default_value=defaults[s.dtype]) for name, s in inputs.items()}
by_tensors = predict(**tf.io.parse_example(serialized, parse))
key = "probabilities" if "probabilities" in by_examples else "value"
print(
    json.dumps(
        {
            "signatures": sorted(model.signatures),
            "inputs": sorted(inputs),
            "rows": int(serialized.shape[0]),
            "max_abs_diff": float(np.max(np.abs(by_examples[key].numpy() - by_tensors[key].numpy()))),
            "labels": sorted({x.decode() for x in by_examples["class_label"].numpy()})
            if key == "probabilities"
            else [],
        }
    )
)
