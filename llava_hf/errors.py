"""Errors that name the file, the record and what was expected."""

from __future__ import annotations

from datasets.exceptions import DatasetGenerationError


class SourceError(DatasetGenerationError):
    """Bad source data: the message names the file, the record (index and id) and what was expected.

    It subclasses `DatasetGenerationError` so that `datasets` hands it to the caller as it is instead of
    wrapping it in a generic "An error occurred while generating the dataset".
    """

    def __init__(
        self,
        file: str,
        problem: str,
        index: int | None = None,
        record_id: object = None,
        reason: str | None = None,
    ):
        self.file = file
        self.problem = problem
        self.index = index
        self.record_id = record_id
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        where = self.file
        if self.index is not None:
            where += f": record {self.index}"
            if self.record_id is not None:
                where += f" (id={self.record_id!r})"
        return f"{where}: {self.problem}"

    def __reduce__(self):
        # Errors cross process boundaries when num_proc > 1; keep every field through pickling.
        return (type(self), (self.file, self.problem, self.index, self.record_id, self.reason))


class BadImage(Exception):
    """An image that cannot be embedded; `reason` is one of images.BAD_IMAGE_REASONS."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        self.detail = detail
        super().__init__(reason, detail)

    def __str__(self) -> str:
        return self.detail
