"""What several commands share: argument types with one-line errors, the common flags, the help
formatter (defaults shown, an example last), band and STAC stacking flags."""

from __future__ import annotations

import argparse

from geoseg.errors import InputError

BANDS_HELP = ("bands the model reads: band numbers in the model's order (1,2,3,4), roles (blue=1,green=2,red=3,nir=4), "
              "or band names, e.g. a composite's windows: red@planting,nir@planting,red@harvest,nir@harvest")
ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS or a local Ray geoseg starts)"


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with each flag's default (where it has one worth saying) and the command's example kept as written."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def command(sub, name: str, help: str, example: str, **kwargs):
    """A command's parser: the common flags, defaults shown, its example under the flags."""
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          epilog="example:\n  " + example, formatter_class=Formatter, **kwargs)


def at_least(name: str, minimum: int):
    """An argparse type: an integer >= ``minimum``, with a one-line error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer, got {text!r}") from None
        if value < minimum:
            rule = "positive" if minimum == 1 else f">= {minimum}"
            raise argparse.ArgumentTypeError(f"{name} must be {rule}, got {value}")
        return value

    return parse


def positive(name: str):
    return at_least(name, 1)


def workers(text: str) -> int | tuple[int, int]:
    """``--workers N`` or ``--workers MIN,MAX`` (an autoscaling actor pool)."""
    parts = text.split(",")
    if len(parts) > 2:
        raise argparse.ArgumentTypeError(f"--workers must be N or MIN,MAX, got {text!r}")
    values = [positive("--workers")(p.strip()) for p in parts]
    if len(values) == 1:
        return values[0]
    if values[0] > values[1]:
        raise argparse.ArgumentTypeError(f"--workers MIN,MAX needs MIN <= MAX, got {text!r}")
    return (values[0], values[1])


def nonneg(name: str):
    return at_least(name, 0)


def common() -> argparse.ArgumentParser:
    """Flags every command takes."""
    c = argparse.ArgumentParser(add_help=False)
    c.add_argument("--verbose", action="store_true", help="also show Ray's own logs, warnings and progress bars")
    c.add_argument("--debug", action="store_true", help="show the traceback of errors")
    c.add_argument("--dashboard", action="store_true",
                   help="with a local Ray: also start Ray's dashboard (http://127.0.0.1:8265) to watch the job; "
                        "off by default, it adds seconds of start-up (a cluster has its own)")
    return c


class Sub:
    """``add_parser`` with the common flags on every command."""

    def __init__(self, sub):
        self.sub, self.common = sub, common()

    def add_parser(self, name: str, **kwargs):
        return self.sub.add_parser(name, parents=[self.common], **kwargs)


def add_stack_flags(p) -> None:
    p.add_argument("--assets", help="STAC items with one asset per band: the bands to stack, by asset key or "
                                    "common name (e.g. blue,green,red,nir; default: the model's bands)")
    p.add_argument("--resolution", type=float, help="pixel size of the stack, in CRS units (default: the finest band's)")
    p.add_argument("--resampling", help="per band, e.g. scl=nearest,nir08=average (default: bilinear; nearest for "
                                        "categorical bands)")


def add_search_flags(p, what: str, bbox: str = "W,S,E,N in degrees", cloud: int = 20) -> None:
    """A STAC API search's flags (``--stac-api`` ...) and ``--max-cloud``, in a group of their own; without
    ``--stac-api``, ``--collections``, ``--bbox``, ``--datetime``, ``--max-items`` filter STAC-GeoParquet
    indexes and item files."""
    se = p.add_argument_group(f"choosing STAC items: a STAC API search, or a STAC-GeoParquet index or item files "
                              f"filtered ({what})")
    se.add_argument("--stac-api", help="STAC API root URL (without it, the filters below choose the items of "
                                       "the STAC-GeoParquet indexes and item files given)")
    se.add_argument("--collections", help="collection ids, comma-separated")
    se.add_argument("--bbox", help=bbox)
    se.add_argument("--datetime", help="a date-time or an interval A/B (RFC 3339; .. for open ends)")
    se.add_argument("--filter", help="CQL2 filter, as text or JSON")
    se.add_argument("--query", help=f"query-extension JSON, e.g. '{{\"eo:cloud_cover\": {{\"lt\": {cloud}}}}}'")
    se.add_argument("--max-items", type=positive("--max-items"), help="at most this many items")
    se.add_argument("--max-cloud", type=float, metavar="PCT",
                    help="leave out STAC items (searched or listed) whose eo:cloud_cover is above PCT percent")


def stack_options(a):
    from geoseg.data.stac import StackOptions, parse_assets, parse_resampling

    if a.resolution is not None and a.resolution <= 0:
        raise InputError(f"--resolution must be > 0, got {a.resolution}")
    if not (a.assets or a.resolution or a.resampling):
        return None
    return StackOptions(parse_assets(a.assets), a.resolution, parse_resampling(a.resampling))


def search_options(a):
    from geoseg.data.stac import Search

    if not a.stac_api:
        api_only = [f for f in ("filter", "query") if getattr(a, f)]
        if api_only:
            raise InputError(f"--{api_only[0]} needs --stac-api URL (an index or item files take --collections, "
                             "--bbox, --datetime, --max-cloud)")
        if not any(getattr(a, f) for f in ("collections", "bbox", "datetime", "max_items")):
            return None
    return Search.parse(a.stac_api, a.collections, a.bbox, a.datetime, a.filter, a.query, a.max_items)
