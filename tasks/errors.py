"""Every error Contrail raises, under one base class.

::

    ContrailError
    ├── SpecError                 a pipeline spec is invalid (file, field, expected, found)
    ├── DataError                 input data does not match the spec
    │   ├── SchemaMismatchError   a missing column, a wrong type, NaN/null where not allowed
    │   ├── EmptyInputError       no files, zero rows, a header-only CSV
    │   ├── CorruptRecordError    a TFRecord or Parquet file that cannot be read back whole
    │   └── UnknownCategoryError  out-of-vocabulary values beyond the spec's tolerance
    ├── TrainingError             build_fn failures, wrong output shape, NaN loss, bad monitor
    ├── ExportError               a SavedModel that fails its parity or reload check
    ├── InferenceError            a row that cannot be scored, a missing production model
    └── StorageError              an artifact root that cannot be listed, read or written

Messages name the file or field, then say what was expected and what was found, so that a
task log line is enough to fix the problem.
"""

from __future__ import annotations


class ContrailError(Exception):
    """Base class of every error Contrail raises."""


class SpecError(ContrailError):
    """A pipeline spec failed validation."""


class DataError(ContrailError):
    """Input data does not match the spec."""


class SchemaMismatchError(DataError):
    """A column is missing, has the wrong type, or holds values the spec forbids."""


class EmptyInputError(DataError):
    """The input holds no files or no rows."""


class CorruptRecordError(DataError):
    """A data file is truncated, corrupt, or holds fewer records than its manifest says."""


class UnknownCategoryError(DataError):
    """Too many values fall outside the vocabulary learned on the train split."""


class TrainingError(ContrailError):
    """Training could not start or could not go on."""


class ExportError(ContrailError):
    """The model could not be exported, checked or published."""


class InferenceError(ContrailError):
    """Batch inference could not score its input."""


class StorageError(ContrailError):
    """The artifact root could not be listed, read or written."""
