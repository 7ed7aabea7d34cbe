"""A failed step says what went wrong in one line: the run's failure reason in the Dagster UI."""

from __future__ import annotations

from contextlib import contextmanager

from dagster import Failure

from pipelines.errors import LakehouseError, failure_line, one_line


@contextmanager
def reported_failures(context, what: str):
    """Turn an exception into a Dagster Failure whose description is one line naming the cause.

    The library's own errors (PostgreSQL unreachable, rows hidden by row-level security, another
    sync first, ...) lose their Python trace, which would only repeat the line; failures of Spark,
    Delta or S3 keep theirs below the line, and so does anything unexpected.
    """
    try:
        yield
    except Failure:
        raise
    except Exception as exc:
        line = failure_line(exc) or f"{type(exc).__name__}: {one_line(exc)[:500]}"
        message = f"{what} failed: {line}"
        context.log.error(message)
        failure = Failure(description=message, metadata={"cause": line}, allow_retries=False)
        if isinstance(exc, LakehouseError):
            raise failure from None
        raise failure from exc
