"""Every error Contrail raises, under one base class, and the one place foreign errors become ours.

::

    ContrailError
    ├── ConfigError               the environment names a mode, URL or option Contrail cannot use
    ├── ServiceUnavailableError   a database or broker the environment names does not answer
    ├── SpecError                 a pipeline spec or a trigger param is invalid (file, field, expected, found)
    ├── DataError                 input data does not match the spec
    │   ├── SchemaMismatchError   a missing column, a wrong type, NaN/null where not allowed, a wrong class count
    │   ├── EmptyInputError       no files, zero rows, a header-only CSV, an empty split
    │   ├── CorruptRecordError    a TFRecord or Parquet file that cannot be read back whole
    │   ├── UnknownCategoryError  out-of-vocabulary values beyond the spec's tolerance
    │   └── DriftError            a feature further from the model's training data than data.drift allows
    ├── TrainingError             build_fn failures, wrong output shape, NaN loss, bad monitor
    │   └── LeaseLostError        another attempt took this training over: this one stops, publishing nothing
    ├── ExportError               a SavedModel that fails its parity or reload check
    ├── InferenceError            a row that cannot be scored, a missing production model
    └── StorageError              an artifact root that cannot be listed, read or written
        └── ArtifactError         a committed artifact a step needs is missing, incomplete or of another format

Messages name the file or field, then say what was expected and what was found, so that a
task log line is enough to fix the problem. Every error also carries that file (`path`) and
field (`field`) as attributes, for code that reports or routes errors.

`retryable` says whether running the same task again could succeed: only for the storage and
service errors (a network blip, a bucket briefly unreachable, a database restarting). A spec,
data, training, export or inference error fails the same way every time, so the operators fail
those at once instead of spending a retry on them.

Foreign errors (pyarrow's, TensorFlow's, the OS's, a user's build_fn's) become ours through
`translate` or the `translating` context manager, and nowhere else; the original stays
attached as `__cause__`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class ContrailError(Exception):
    """Base class of every error Contrail raises."""

    retryable = False

    def __init__(self, message: str, *, path: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.field = field


class ConfigError(ContrailError):
    """The environment (CONTRAIL_MODE, a service URL, storage options) is not usable."""


class ServiceUnavailableError(ContrailError):
    """A database or broker the environment names did not answer."""

    retryable = True


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


class DriftError(DataError):
    """The data moved further from the model's training data than `data.drift` allows."""


class TrainingError(ContrailError):
    """Training could not start or could not go on."""


class LeaseLostError(TrainingError):
    """Another attempt holds this training's lease; this one (an orphan) must not publish."""


class ExportError(ContrailError):
    """The model could not be exported, checked or published."""


class InferenceError(ContrailError):
    """Batch inference could not score its input."""


class StorageError(ContrailError):
    """The artifact root could not be listed, read or written."""

    retryable = True


class ArtifactError(StorageError):
    """A committed artifact a step needs is missing, incomplete, or not in the expected format."""

    retryable = False  # the step that should have committed it has to run again, not this one


def translate(
    exc: BaseException,
    kind: type[ContrailError],
    where: str,
    *,
    expected: str | None = None,
    found: str | None = None,
    then: str | None = None,
    path: str | None = None,
    field: str | None = None,
    sep: str = ": ",
) -> ContrailError:
    """The Contrail error for a foreign `exc`: `"<where>: expected <expected>, found: <Type>: <exc>"`,
    with `found` `"..., found <found> (<Type>: <exc>)"`, without `expected` `"<where><sep><Type>: <exc>"`;
    then `"; <then>"` if given, to say what follows (nothing was published, say).

    Raise it `from exc`. A Contrail error passes through unchanged.
    """
    if isinstance(exc, ContrailError):
        return exc
    what = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if not expected:
        message = f"{where}{sep}{what}"
    elif found:
        message = f"{where}: expected {expected}, found {found} ({what})"
    else:
        message = f"{where}: expected {expected}, found: {what}"
    if then:
        message += f"; {then}"
    return kind(message, path=path, field=field)


@contextlib.contextmanager
def translating(
    kind: type[ContrailError],
    where: str,
    *,
    expected: str | None = None,
    found: str | None = None,
    then: str | None = None,
    path: str | None = None,
    field: str | None = None,
    catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> Iterator[None]:
    """Raise what the block raises of `catch` as `kind` (see `translate`)."""
    try:
        yield
    except ContrailError:
        raise
    except catch as exc:
        raise translate(exc, kind, where, expected=expected, found=found, then=then, path=path, field=field) from exc
