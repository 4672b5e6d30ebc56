"""STAC-GeoParquet indexes as inputs: the items of ``items.parquet`` (local or ``s3://``, a file or a
folder of Parquet files; a glob of an index's parts reads each part) that ``--bbox``, ``--datetime``,
``--collections`` and ``--max-cloud`` keep.

The filters are pushed down to the Parquet reader (pyarrow datasets): row groups whose statistics
cannot match are skipped unread, and only the columns geoseg reads are read (:data:`COLUMNS` and the
``proj:``, ``eo:`` and ``raster:`` properties, not the other properties of wide indexes). The rows that
come back are items again (``stac-geoparquet``), checked once more against the same filters
(:meth:`geoseg.data.stac.Search.matches`: the one definition of what each flag keeps, which also
filters item files), and then stacked exactly as items read from JSON.
"""

from __future__ import annotations

from geoseg.data import storage
from geoseg.errors import InputError

SUFFIXES = (".parquet", ".geoparquet")
COLUMNS = ("type", "stac_version", "stac_extensions", "id", "geometry", "bbox", "links", "assets", "collection",
           "datetime", "start_datetime", "end_datetime")
PREFIXES = ("proj:", "eo:", "raster:")  # the properties geoseg reads (grids, cloud cover, scales)


def is_index(url: str) -> bool:
    """A STAC-GeoParquet index, by its name (a file, or a folder of parts, ending ``.parquet``)."""
    return str(url).lower().rstrip("/").endswith(SUFFIXES)


def open_index(url: str):
    """The index as a pyarrow dataset (no rows read); one line if it is not one."""
    import pyarrow.dataset as pads

    path, fs = storage.arrow_filesystem(url.rstrip("/"))
    if fs is None and not storage.exists(url):
        raise InputError(f"{url}: not found")
    try:
        with storage.faults(url, "reading"):
            dataset = pads.dataset(path, filesystem=fs, format="parquet")
    except (OSError, ValueError) as exc:
        if isinstance(exc, InputError) or storage.fault_reason(exc):
            raise
        raise InputError(f"{url}: not a Parquet file ({str(exc).splitlines()[0][:160]})") from None
    names = set(dataset.schema.names)
    if not {"id", "assets"} <= names:
        raise InputError(f"{url}: not a STAC-GeoParquet index (no {'id' if 'id' not in names else 'assets'} column)")
    return dataset


def expression(schema, search, max_cloud: float | None):
    """``(filter, exact)``: the pyarrow expression of the filters the index's columns can answer, and
    whether it is all of them (else :meth:`Search.matches` decides the rest after reading)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    parts, exact = [], True
    names = set(schema.names)

    def typed(name: str, kind) -> bool:
        return name in names and kind(schema.field(name).type)

    if search is not None and search.collections:
        if "collection" in names:
            parts.append(pads.field("collection").isin(list(search.collections)))
        else:
            exact = False
    if search is not None and search.bbox:
        w, s, e, n = search.bbox
        if typed("bbox", pa.types.is_struct) and {"xmin", "ymin", "xmax", "ymax"} <= \
                {f.name for f in schema.field("bbox").type}:
            box = lambda k: pads.field("bbox", k)  # noqa: E731
            parts.append((box("xmax") >= w) & (box("xmin") <= e) & (box("ymax") >= s) & (box("ymin") <= n))
        else:
            exact = False  # a bbox stored as a list (older indexes): decided after reading
    if search is not None and search.datetime:
        start, end = search.interval()
        if typed("datetime", pa.types.is_timestamp):
            kind = schema.field("datetime").type

            def within(name: str, lo, hi):
                at = pads.field(name)
                cond = None
                if lo is not None:
                    cond = at >= pa.scalar(lo, kind)
                if hi is not None:
                    upper = at <= pa.scalar(hi, kind)
                    cond = upper if cond is None else cond & upper
                return cond

            cond = within("datetime", start, end)
            if typed("start_datetime", pa.types.is_timestamp) and typed("end_datetime", pa.types.is_timestamp):
                span = within("end_datetime", start, None), within("start_datetime", None, end)
                span = [c for c in span if c is not None]
                if span and cond is not None:
                    overlap = span[0] if len(span) == 1 else span[0] & span[1]
                    cond = cond | (pads.field("datetime").is_null() & overlap)
            if cond is not None:
                parts.append(cond)
        else:
            exact = False
    if max_cloud is not None and "eo:cloud_cover" in names:
        cover = pads.field("eo:cloud_cover")
        parts.append((cover <= max_cloud) | cover.is_null())
    cond = None
    for p in parts:
        cond = p if cond is None else cond & p
    return cond, exact


def read_index(url: str, search=None, max_cloud: float | None = None) -> list[dict]:
    """The items of the index that the filters keep, as STAC item dicts (at most ``search.max_items``)."""
    import pyarrow as pa
    from stac_geoparquet.arrow import stac_table_to_items

    dataset = open_index(url)
    cond, exact = expression(dataset.schema, search, max_cloud)
    columns = [c for c in dataset.schema.names if c in COLUMNS or c.startswith(PREFIXES)]
    limit = search.max_items if search is not None else None
    with storage.faults(url, "reading"):
        scanner = dataset.scanner(filter=cond, columns=columns)
        table = scanner.head(limit) if limit and exact else scanner.to_table()
    if table.num_rows == 0:
        return []
    try:
        items = []
        for batch in table.to_batches(max_chunksize=8192):
            items.extend(stac_table_to_items(pa.Table.from_batches([batch])))
    except (KeyError, ValueError, TypeError, pa.ArrowException) as exc:
        raise InputError(f"{url}: rows that are not STAC items ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160]})") from None
    if not exact and search is not None:
        items = [it for it in items if search.matches(it)]
    return items[:limit] if limit else items


def write_index(items: list[dict], url: str, row_group_size: int = 10_000) -> str:
    """Write STAC item dicts as a STAC-GeoParquet index (``stac-geoparquet``'s schema; row groups of
    ``row_group_size`` items, so that the reader can skip them), local or ``s3://``; returns ``url``."""
    import pyarrow as pa
    from stac_geoparquet.arrow import parse_stac_items_to_arrow, to_parquet

    table = parse_stac_items_to_arrow(items, schema="FullFile").read_all()
    groups = pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=row_group_size))
    with storage.staging_path(url, ".parquet") as local:
        to_parquet(groups, local)
        storage.publish(local, url)
    return url
