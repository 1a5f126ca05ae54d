"""Load an exported model in a fresh process and write its outputs, for export's reload check.

    python -m contrail.verify_export MODEL_DIR OUT.npz '{"files": [...], "compression": "gzip", "limit": N}'

Reads the eval TFRecords itself, runs the `predict` signature on the parsed raw features, and
writes every output to OUT.npz. Only TensorFlow and this file are involved, as in serving.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    model_dir, out, options = Path(argv[0]), Path(argv[1]), json.loads(argv[2])
    from contrail import model as model_lib
    from contrail.serving import load_version_dir

    loaded = load_version_dir(model_dir, 0, published=False)
    serialized = model_lib.read_serialized(options["files"], options["compression"], limit=options["limit"])
    outputs = loaded.predict_arrays(model_lib.raw_features_from_serialized(serialized, loaded.schema))
    np.savez(out, **{k: v for k, v in outputs.items() if v.dtype.kind in "fiub"})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
