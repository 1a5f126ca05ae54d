"""Tokens of a text column, computed by pyarrow as Keras' `TextVectorization` computes them in
the graph: ASCII letters lower-cased (as `tf.strings.lower` does), punctuation stripped (Keras' default pattern), split on ASCII
whitespace, and n-grams of adjacent tokens joined by one space. Preprocess counts them for the
vocabulary and the document frequencies; the model's layer does the same to each input."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# keras.layers.TextVectorization's "lower_and_strip_punctuation".
STRIP = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'


def tokens(column: pa.Array | pa.ChunkedArray, ngrams: int = 1) -> tuple[pa.Array, np.ndarray]:
    """Every token and n-gram (up to `ngrams` words) of every row, flat, and each one's row."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks else pa.array([], pa.string())
    # ASCII only, as tf.strings.lower does: "École" stays "École" in the layer, so here too.
    text = pc.replace_substring_regex(pc.ascii_lower(column), pattern=STRIP, replacement="")
    words = pc.ascii_split_whitespace(text)
    flat = pc.list_flatten(words)
    rows = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
    kept = pc.not_equal(flat, "")  # an empty row splits into one empty word; the layer gives none
    flat, rows = flat.filter(kept), rows[kept.to_numpy(zero_copy_only=False)]
    pieces, owners = [flat], [rows]
    for n in range(2, ngrams + 1):
        if len(flat) < n:
            break
        start = np.arange(len(flat) - n + 1)
        same = rows[start] == rows[start + n - 1]  # all n words in one row
        start = start[same]
        parts = [flat.take(pa.array(start + k)) for k in range(n)]
        pieces.append(pc.binary_join_element_wise(*parts, " "))
        owners.append(rows[start])
    return pa.concat_arrays(pieces), np.concatenate(owners)


def counts(column: pa.Array | pa.ChunkedArray, ngrams: int = 1) -> tuple[dict, dict, int]:
    """Token counts, document frequencies (rows a token appears in) and the number of rows,
    empty and null ones included (Keras' TextVectorization counts every row as a document)."""
    flat, rows = tokens(column, ngrams)
    if len(flat) == 0:
        return {}, {}, len(column)
    total = pc.value_counts(flat)
    pairs = pa.table({"row": rows, "token": flat}).group_by(["row", "token"]).aggregate([])
    docs = pc.value_counts(pairs.column("token"))
    return (
        dict(zip(total.field("values").to_pylist(), total.field("counts").to_pylist(), strict=True)),
        dict(zip(docs.field("values").to_pylist(), docs.field("counts").to_pylist(), strict=True)),
        len(column),
    )
