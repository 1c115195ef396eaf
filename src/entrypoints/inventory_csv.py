"""The inventory as CSV (SPEC 3.5), for the HTTP service and the command
line alike: the file parsed into the core's rows, and rows written back.

The file: UTF-8 (a byte order mark is accepted), comma-separated, a header
row naming known columns in any order (`ip` required), at most 20,000 rows
and 10 MiB. Blank rows are skipped; rows are numbered as a spreadsheet shows
them (the header is row 1). `volumes` is `NAME=SIZE` pairs separated by `;`;
SIZE is bytes, or a number with a unit: KB MB GB TB (powers of 1000) or KiB
MiB GiB TiB (powers of 1024), in any case, whole bytes in the end. A name
in double quotes is taken as it is, `""` standing for a quote inside: so a
name may hold `;`, `=` or `"` (export quotes those, and names with blank
space at an end). An unquoted name may hold `=` too (the size follows the
last one). `select` lists names the same way, separated by `;`.

`port`, `os` and `root` say how the machine is reached (SPEC 2.1); an empty
cell keeps what is stored (a new workload: 22, unknown, `/`). The plan's
`mode` (`cold` or `warm`) and `sync_interval` (whole seconds) likewise (a new
migration: cold, the service's default interval); export leaves a cold
migration's interval empty.

Cells that a spreadsheet would run as a formula (starting with = + - @, a tab
or a carriage return) are written with a `'` in front; import removes that
one `'` again (from a cell that, past its leading quotes, starts so), so an
exported file imports back as it was. Any other cell is taken literally."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation

from migration_core import (
    Clock,
    ImportReport,
    InventoryRow,
    Plan,
    RowError,
    RowsRefused,
    Storage,
    export_inventory,
    import_inventory,
)
from migration_core.fleet import Progress

# Each needs cloud_type.
PLAN_COLUMNS = ("cloud_username", "cloud_password", "cloud_domain", "select", "wave", "mode", "sync_interval")
COLUMNS = ("ip", "username", "password", "domain", "volumes", "port", "os", "root", "cloud_type", *PLAN_COLUMNS)
MAX_BYTES = 10 * 1024 * 1024
MAX_ROWS = 20_000
MAX_SIZE = 2**63 - 1
# The wire limits of the JSON API (entrypoints.http.schemas), cell by cell.
MAX_LENGTH = {
    "ip": 45, "password": 1024, "cloud_password": 1024, "volumes": 1000 * 300, "select": 1000 * 256, "root": 4096,
}
TEXT_MAX = 255
FILENAME = "inventory.csv"

_FORMULA_STARTS = "=+-@\t\r"
_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_PORT = re.compile(r"\s*(\d{1,6})\s*")
_SECONDS = re.compile(r"\s*(\d{1,9})\s*")
_QUOTED_IN_NAMES = ';="'


class _BadCell(ValueError):
    pass


# --- reading --------------------------------------------------------------------


def import_csv(
    storage: Storage,
    clock: Clock,
    owner_id: int,
    data: bytes,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    default_sync_interval: int = 3600,
) -> ImportReport:
    """Parse the file and import it in one unit of work, or raise RowsRefused
    naming every bad row (those the parser refuses and those the core does)."""
    rows, errors = parse(data)
    try:
        report = import_inventory(
            storage, clock, owner_id, rows, dry_run=dry_run or bool(errors), progress=progress,
            default_sync_interval=default_sync_interval,
        )
    except RowsRefused as refused:
        errors += refused.rows
    if errors:
        bad = len({error.row for error in errors})
        raise RowsRefused(
            f"{bad} row(s) may not be imported; nothing was written.", sorted(errors, key=lambda e: e.row)
        )
    return report


def parse(data: bytes) -> tuple[list[InventoryRow], list[RowError]]:
    """The rows that parse, and the errors of those that do not. Raises
    RowsRefused for a file that cannot be read as an inventory at all."""
    if len(data) > MAX_BYTES:
        raise RowsRefused(f"The file is larger than {MAX_BYTES // 2**20} MiB.", [])
    records = csv.reader(io.StringIO(_text(data), newline=""), strict=True)
    try:
        header = next(records, None)
        if header is None:
            raise RowsRefused("The file is empty: give a header row, then one row a workload.", [])
        columns = _columns(header)
        rows: list[InventoryRow] = []
        errors: list[RowError] = []
        for number, cells in enumerate(records, start=2):
            if number - 1 > MAX_ROWS:
                raise RowsRefused(f"The file has more than {MAX_ROWS:,} rows.", [])
            if not any(cell.strip() for cell in cells):
                continue  # a blank row
            try:
                rows.append(_row(number, columns, cells))
            except _CellError as bad:
                errors.append(RowError(number, bad.column, bad.message))
    except csv.Error as error:
        raise RowsRefused(f"Line {records.line_num}: the file is not valid CSV ({error}).", []) from None
    return rows, errors


def _text(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise RowsRefused(
            f"The file is not UTF-8 text: byte 0x{data[error.start]:02X} on line {line}"
            " cannot be read. Save it as CSV UTF-8.",
            [],
        ) from None
    if "\x00" in text:
        raise RowsRefused("The file holds a NUL character: it is not a text file.", [])
    return text


def _columns(header: Sequence[str]) -> list[str]:
    names = [name.strip().lower() for name in header]
    errors = []
    if len(names) == 1 and ";" in names[0]:
        raise RowsRefused(
            "The header is one column: separate columns with commas, not semicolons.",
            [RowError(1, None, "Separate columns with commas.")],
        )
    for name in names:
        if name not in COLUMNS:
            errors.append(RowError(1, name, f"Unknown column {name!r}; the columns are: {', '.join(COLUMNS)}."))
        elif names.count(name) > 1:
            errors.append(RowError(1, name, f"Column {name!r} is given more than once."))
    if "ip" not in names:
        errors.append(RowError(1, "ip", "The header must name the column 'ip'."))
    if errors:
        raise RowsRefused("The header row is not an inventory's.", sorted(set(errors), key=errors.index))
    return names


class _CellError(Exception):
    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column, self.message = column, message


def _row(number: int, columns: Sequence[str], cells: Sequence[str]) -> InventoryRow:
    if len(cells) > len(columns):
        raise _CellError(columns[-1], f"The row has {len(cells)} cells; the header names {len(columns)}.")
    values = {column: "" for column in columns}
    for column, cell in zip(columns, cells):
        value = _unneutralised(cell)
        if len(value) > MAX_LENGTH.get(column, TEXT_MAX):
            raise _CellError(column, f"At most {MAX_LENGTH.get(column, TEXT_MAX)} characters.")
        values[column] = value
    cloud_type = values.get("cloud_type", "").strip()
    if not cloud_type:
        for column in PLAN_COLUMNS:
            if values.get(column, "").strip():
                raise _CellError(column, "A plan column needs cloud_type.")
    plan = None
    if cloud_type:
        plan = Plan(
            cloud_type=cloud_type,
            cloud_username=values.get("cloud_username"),
            cloud_password=values.get("cloud_password"),
            cloud_domain=values.get("cloud_domain"),
            select=_names(values.get("select", "")),
            wave=None if "wave" not in values else values["wave"].strip(),
            mode=values.get("mode", "").strip() or None,
            sync_interval=_seconds(values.get("sync_interval", "")),
        )
    return InventoryRow(
        row=number,
        ip=values["ip"].strip(),
        username=values.get("username"),
        password=values.get("password"),
        domain=values.get("domain"),
        volumes=None if "volumes" not in values else _volumes(values["volumes"]),
        plan=plan,
        port=_port(values.get("port", "")),
        os=values.get("os", "").strip() or None,
        root=values.get("root") if values.get("root", "").strip() else None,
    )


def _port(cell: str) -> int | None:
    if not cell.strip():
        return None
    match = _PORT.fullmatch(cell)
    if match is None:
        raise _CellError("port", f"{cell.strip()!r} is not a port: a whole number from 1 to 65535.")
    return int(match.group(1))


def _seconds(cell: str) -> int | None:
    if not cell.strip():
        return None
    match = _SECONDS.fullmatch(cell)
    if match is None:
        raise _CellError("sync_interval", f"{cell.strip()!r} is not a whole number of seconds (60 to 604800).")
    return int(match.group(1))


def _items(cell: str, column: str) -> list[tuple[str | None, str]]:
    """The `;`-separated items of a cell, each as (its name, when the item
    starts with one in double quotes, and what follows the name) or (None,
    the item as it is)."""
    items: list[tuple[str | None, str]] = []
    at = 0
    while at <= len(cell):
        start = at
        while at < len(cell) and cell[at] in " \t":
            at += 1
        name = None
        if at < len(cell) and cell[at] == '"':
            name, at = _quoted(cell, at, column)
            start = at
        end = cell.find(";", at)
        end = len(cell) if end < 0 else end
        items.append((name, cell[start:end]))
        at = end + 1
    return items


def _quoted(cell: str, at: int, column: str) -> tuple[str, int]:
    """The name in double quotes that starts at `at`, and where it ends."""
    parts = []
    at += 1
    while True:
        closing = cell.find('"', at)
        if closing < 0:
            raise _CellError(column, f"A name in double quotes has no closing quote: {cell[at - 1 :][:40]!r}.")
        parts.append(cell[at:closing])
        if cell.startswith('"', closing + 1):  # "" is a quote inside the name
            parts.append('"')
            at = closing + 2
            continue
        return "".join(parts), closing + 1


def _names(cell: str) -> tuple[str, ...] | None:
    names = []
    for quoted, rest in _items(cell, "select"):
        if quoted is None:
            if rest.strip():
                names.append(rest.strip())
        elif rest.strip():
            raise _CellError("select", f"After the name {quoted!r} in quotes comes ; or the end, not {rest.strip()!r}.")
        else:
            names.append(quoted)
    return tuple(names) or None


def _volumes(cell: str) -> tuple[tuple[str, int], ...]:
    volumes = []
    for quoted, pair in _items(cell, "volumes"):
        if quoted is not None:
            equals, size = pair.strip()[:1], pair.strip()[1:]
            if equals != "=":
                raise _CellError("volumes", f"The name {quoted!r} in quotes has no size: write \"NAME\"=SIZE.")
            volumes.append((quoted, _size(size)))
            continue
        if not pair.strip():
            continue
        name, equals, size = pair.rpartition("=")
        if not equals:
            raise _CellError("volumes", f"{pair.strip()!r} has no size: write NAME=SIZE, e.g. C:\\=100GB.")
        volumes.append((name.strip(), _size(size)))
    if len(volumes) > 1000:
        raise _CellError("volumes", "At most 1000 volumes a workload.")
    return tuple(volumes)


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as error:
        raise _CellError("volumes", str(error)) from None


def parse_size(text: str) -> int:
    """Bytes, or a number with a unit (`50MB`, `1.5GiB`); ValueError saying why not."""
    match = _SIZE.fullmatch(text)
    unit = match and _UNITS.get(match.group(2).lower())
    if match is None or unit is None:
        raise ValueError(f"{text.strip()!r} is not a size: bytes, or a number with KB MB GB TB KiB MiB GiB TiB.")
    try:
        size = Decimal(match.group(1)) * unit
    except InvalidOperation:  # pragma: no cover - the pattern admits decimals only
        raise ValueError(f"{text.strip()!r} is not a size.") from None
    if size != size.to_integral_value():
        raise ValueError(f"{text.strip()!r} is not a whole number of bytes.")
    if size > MAX_SIZE:
        raise ValueError(f"{text.strip()!r} is larger than {MAX_SIZE} bytes.")
    return int(size)


def _unneutralised(cell: str) -> str:
    first = cell.lstrip("'")[:1]
    return cell[1:] if cell.startswith("'") and first and first in _FORMULA_STARTS else cell


# --- writing --------------------------------------------------------------------


def export_csv(storage: Storage, owner_id: int) -> str:
    return render(export_inventory(storage, owner_id))


def render(rows: Iterable[InventoryRow]) -> str:
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_neutralised(cell) for cell in _cells(row)])
    return out.getvalue()


def _name(name: str) -> str:
    """A volume name as a cell lists it: in double quotes where it must be."""
    if any(c in name for c in _QUOTED_IN_NAMES) or name != name.strip() or not name:
        return '"' + name.replace('"', '""') + '"'
    return name


def _cells(row: InventoryRow) -> list[str]:
    plan = row.plan
    login = [row.username or "", row.password or "", row.domain or ""]
    volumes = ";".join(f"{_name(name)}={size}" for name, size in row.volumes or ())
    machine = ["" if row.port is None else str(row.port), row.os or "", row.root or ""]
    if plan is None:
        return [row.ip, *login, volumes, *machine, *[""] * (1 + len(PLAN_COLUMNS))]
    return [
        row.ip, *login, volumes, *machine,
        plan.cloud_type, plan.cloud_username or "", plan.cloud_password or "", plan.cloud_domain or "",
        ";".join(map(_name, plan.select or ())), plan.wave or "", plan.mode or "",
        "" if plan.sync_interval is None else str(plan.sync_interval),
    ]


def _neutralised(cell: str) -> str:
    """A cell no spreadsheet runs: a formula-looking one behind a `'`."""
    first = cell.lstrip("'")[:1]
    return "'" + cell if first and first in _FORMULA_STARTS else cell
