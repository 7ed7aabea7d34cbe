"""Snapshot fields as typed columns, and what to do when the JSON drifts. Pure: schemas in, plans out.

Every field of `aggregate_snapshot` becomes a column of the silver tables (nested objects as
parent_child columns, arrays as arrays). A column remembers the JSON path it came from in its
comment, so later runs parse the same path into the same column with the column's own type:

- a field never seen before becomes a new column;
- a field that disappears is NULL in newer rows (older rows keep their values);
- a field whose type changes (a number that becomes text or an object, an object that becomes a
  number) never fails a run: the column keeps its type, the raw JSON stays in aggregate_snapshot,
  and every row whose value does not fit the column is counted as a conflict that the run reports.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from pyspark.sql.types import ArrayType, DataType, StringType, StructField, StructType

from pipelines.tables import snake_case

PATH_COMMENT_PREFIX = "aggregate_snapshot path "


@dataclass(frozen=True)
class SnapshotColumn:
    """One typed column taken from the snapshot JSON."""

    path: tuple[str, ...]
    name: str
    data_type: DataType

    @property
    def comment(self) -> str:
        return PATH_COMMENT_PREFIX + json.dumps(list(self.path), ensure_ascii=False)

    def field(self) -> StructField:
        return StructField(self.name, self.data_type, True, {"comment": self.comment})

    @property
    def json_path(self) -> str:
        return json_path(self.path)


@dataclass(frozen=True)
class Conflict:
    """Rows whose value at a path does not fit the column (or the object) the lake holds there."""

    path: str
    column: str | None
    column_type: str
    seen_type: str
    rows: int
    example_event_id: str | None

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "column": self.column,
            "column_type": self.column_type,
            "seen_type": self.seen_type,
            "rows": self.rows,
            "example_event_id": self.example_event_id,
        }


def json_path(path: tuple[str, ...]) -> str:
    """A JSON path Spark's get_json_object reads, with every key quoted ($['a']['b'])."""
    return "$" + "".join("['" + key.replace("\\", "\\\\").replace("'", "\\'") + "']" for key in path)


def dotted(path: tuple[str, ...]) -> str:
    return ".".join(path)


def path_from_comment(comment: str | None) -> tuple[str, ...] | None:
    if not comment or not comment.startswith(PATH_COMMENT_PREFIX):
        return None
    try:
        value = json.loads(comment[len(PATH_COMMENT_PREFIX) :])
    except ValueError:
        return None
    return tuple(str(v) for v in value) if isinstance(value, list) and value else None


def leaf_types(schema: StructType, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], DataType]:
    """Every path of a JSON schema with its type: objects (structs) and their leaves alike.

    An empty object has no fields to become columns; it is kept as text.
    """
    result: dict[tuple[str, ...], DataType] = {}
    for field in schema.fields:
        path = (*prefix, field.name)
        data_type = field.dataType
        if isinstance(data_type, StructType) and not data_type.fields:
            data_type = StringType()
        result[path] = data_type
        if isinstance(data_type, StructType):
            result.update(leaf_types(data_type, path))
    return result


def existing_columns(table_schema: StructType, system_columns: set[str]) -> list[SnapshotColumn]:
    """The snapshot columns of an existing table, read back from their path comments."""
    columns = []
    for field in table_schema.fields:
        if field.name in system_columns:
            continue
        path = path_from_comment(field.metadata.get("comment"))
        if path is not None:
            columns.append(SnapshotColumn(path, field.name, field.dataType))
    return columns


def _column_name(path: tuple[str, ...], taken: set[str]) -> str:
    base = "_".join(snake_case(part) for part in path)
    name = base
    if name in taken:
        name = f"snapshot_{base}"
    counter = 2
    while name in taken:
        name = f"snapshot_{base}_{counter}"
        counter += 1
    return name


@dataclass(frozen=True)
class ColumnPlan:
    columns: tuple[SnapshotColumn, ...]  # existing first, in table order, then the added ones
    added: tuple[SnapshotColumn, ...]

    def parse_schema(self) -> StructType:
        """The schema from_json parses the snapshot with: each column's type at its path."""
        return _tree({c.path: c.data_type for c in self.columns})

    def struct_paths(self) -> set[tuple[str, ...]]:
        """Paths the plan holds as objects: every proper prefix of a column's path."""
        return {c.path[:i] for c in self.columns for i in range(1, len(c.path))}


def _tree(types: dict[tuple[str, ...], DataType]) -> StructType:
    children: dict[str, dict[tuple[str, ...], DataType]] = {}
    leaves: dict[str, DataType] = {}
    for path, data_type in types.items():
        if len(path) == 1:
            leaves[path[0]] = data_type
        else:
            children.setdefault(path[0], {})[path[1:]] = data_type
    fields = [StructField(name, data_type, True) for name, data_type in leaves.items()]
    fields += [StructField(name, _tree(sub), True) for name, sub in children.items() if name not in leaves]
    return StructType(fields)


def plan_columns(existing: list[SnapshotColumn], inferred: StructType, taken: set[str]) -> ColumnPlan:
    """Existing columns stay as they are; paths never seen before become new columns.

    A new path is not added where the lake already holds the same place differently: below an
    existing leaf column (the leaf keeps the value, as text if it is a text column) or where an
    existing object now carries a plain value. Those rows are conflicts, counted by the caller.

    Args:
        existing: the table's snapshot columns (empty for a new table).
        inferred: the JSON schema of the new snapshots.
        taken: column names already used (system columns and the table's own).
    """
    known = {c.path for c in existing}
    leaves = set(known)
    objects = {c.path[:i] for c in existing for i in range(1, len(c.path))}
    names = set(taken) | {c.name for c in existing}
    added: list[SnapshotColumn] = []
    for path, data_type in leaf_types(inferred).items():
        if isinstance(data_type, StructType) or path in leaves or path in objects:
            continue
        if any(path[:i] in leaves for i in range(1, len(path))):
            continue
        name = _column_name(path, names)
        names.add(name)
        leaves.add(path)
        objects.update(path[:i] for i in range(1, len(path)))
        added.append(SnapshotColumn(path, name, data_type))
    return ColumnPlan(tuple(existing) + tuple(added), tuple(added))


def type_name(data_type: DataType | None) -> str:
    if data_type is None:
        return "absent"
    if isinstance(data_type, StructType):
        return "object"
    if isinstance(data_type, ArrayType):
        return f"array<{type_name(data_type.elementType)}>"
    return data_type.simpleString()
