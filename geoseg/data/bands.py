"""Which bands a model reads: band roles (blue, green, red, nir, ...) and band numbers.

Words used throughout geoseg:

* a **band number** is 1-based, as in GDAL and rasterio;
* a **band role** names what a band holds (``blue``, ``nir``...), found in the
  raster's band descriptions (``blue``, ``B02``, ``SR_B2``...);
* ``--bands`` (predict and train alike) is a band selection: band numbers in the
  model's order (``1,2,3,4``), a role map (``blue=1,green=2,...``), or band names
  (``red@planting,nir@planting,red@harvest,nir@harvest``), found by the raster's band
  descriptions;
* a **windowed band** ``BAND@WINDOW`` is a band of a composite over one time window
  (``geoseg composite``): a model that reads windowed bands reads them by name only, never by
  band number, so an input that lacks one of its windows is refused in one line.
"""

from __future__ import annotations

from geoseg.errors import InputError

_ALIASES = {
    "blue": ("blue", "b", "b2", "b02", "sr_b2", "coastal_blue"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "nir": ("nir", "nir08", "near-infrared", "near_infrared", "b8", "b08", "sr_b5", "n"),
}
ROLES = tuple(_ALIASES)  # the band roles geoseg recognises


def same_band(a: str, b: str) -> bool:
    """Whether two band names name the same band: equal, or aliases of one role (``nir``, ``B08``)."""
    a, b = a.strip().lower(), b.strip().lower()
    return a == b or any(a in names and b in names for names in _ALIASES.values())

Selection = dict[str, int] | list[int] | list[str]  # a role map, band numbers or band names
COUNT = "count"  # a composite's count of clear observations per window (count@WINDOW)
WINDOW_TAG = "GEOSEG_WINDOW_"  # a composite's tag GEOSEG_WINDOW_<name> = "START/END", per window


def window_of(name: str | None) -> str | None:
    """``"red@planting"`` -> ``"planting"``; None for a band of no window."""
    base, sep, window = (name or "").partition("@")
    return window if sep and base and window else None


def windows_of(names) -> list[str]:
    """The windows that band names read, in their first order."""
    out: list[str] = []
    for n in names or ():
        w = window_of(n)
        if w and w not in out:
            out.append(w)
    return out


def _is_number(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def parse_bands(spec: str) -> Selection:
    """``"blue=1,green=2"`` -> ``{"blue": 1, "green": 2}``; ``"1,2,3"`` -> ``[1, 2, 3]``."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise InputError("--bands: empty; give band numbers (1,2,3,4) or roles (blue=1,green=2,...)")
    if all("=" not in p for p in parts) and not all(_is_number(p) for p in parts):
        named = [p for p in parts if not _is_number(p)]
        if len(named) != len(parts):
            raise InputError(f"--bands: {spec!r} mixes band numbers and names; give one kind")
        lowered = [p.lower() for p in parts]
        if len(set(lowered)) != len(lowered):
            twice = sorted({p for p in lowered if lowered.count(p) > 1})
            raise InputError(f"--bands: band {twice[0]} given more than once")
        return list(parts)
    if all("=" not in p for p in parts):
        numbers = []
        for part in parts:
            try:
                numbers.append(int(part))
            except ValueError:
                raise InputError(f"--bands: {part!r} is not a band number") from None
            if numbers[-1] < 1:
                raise InputError(f"--bands: band numbers start at 1, got {part!r}")
        if len(set(numbers)) != len(numbers):
            twice = sorted({n for n in numbers if numbers.count(n) > 1})
            raise InputError(f"--bands: band {twice[0]} given more than once")
        return numbers
    roles: dict[str, int] = {}
    for part in parts:
        name, sep, num = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ROLES:
            raise InputError(f"--bands: {part!r} is not ROLE=N with ROLE one of {', '.join(ROLES)}")
        if name in roles:
            raise InputError(f"--bands: role {name} given more than once")
        try:
            roles[name] = int(num)
        except ValueError:
            raise InputError(f"--bands: band number in {part!r} is not an integer") from None
        if roles[name] < 1:
            raise InputError(f"--bands: band numbers start at 1, got {part!r}")
    shared = [n for n in set(roles.values()) if list(roles.values()).count(n) > 1]
    if shared:
        both = [r for r, n in roles.items() if n == shared[0]]
        raise InputError(f"--bands: band {shared[0]} given to several roles ({', '.join(both)}); one band per role")
    return roles


def resolve_roles(
    descriptions: tuple[str | None, ...], override: dict[str, int] | None, url: str, needed=ROLES
) -> dict[str, int]:
    """Band number (1-based) of each needed role: override first, then descriptions."""
    roles = dict(override or {})
    for i, desc in enumerate(descriptions, start=1):
        key = (desc or "").strip().lower()
        for role, aliases in _ALIASES.items():
            if role not in roles and key in aliases:
                roles[role] = i
        for role in needed:  # other band names (swir16, scl, ...): by exact name
            if role not in roles and key == str(role).lower():
                roles[role] = i
    missing = [r for r in needed if r not in roles]
    if missing:
        raise InputError(
            f"{url}: cannot tell which band is {', '.join(missing)} "
            f"(band descriptions {list(descriptions)}); pass e.g. --bands blue=1,green=2,red=3,nir=4"
        )
    for role in needed:
        if roles[role] > len(descriptions):
            raise InputError(f"{url}: --bands {role}={roles[role]} but the raster has {len(descriptions)} bands")
    return {r: roles[r] for r in needed}


def _names_roles(descriptions, roles, url) -> bool:
    try:
        resolve_roles(descriptions, None, url, needed=tuple(roles))
        return True
    except InputError:
        return False


def _refuse_other_names(url: str, descriptions: tuple[str | None, ...], roles) -> None:
    """A raster whose band names say it lacks one of the model's bands is refused
    (band numbers are only trusted where the names say nothing)."""
    named = {role for d in descriptions for role, aliases in _ALIASES.items() if (d or "").strip().lower() in aliases}
    missing = [r for r in roles if r not in named]
    if named and missing:
        raise InputError(
            f"{url}: the model reads {', '.join(roles)}, but the raster's bands are {list(descriptions)}, "
            f"without {', '.join(missing)}; pass --bands to say which band is which"
        )


def select_bands(
    url: str,
    descriptions: tuple[str | None, ...],
    *,
    roles: list[str] | tuple[str, ...] | None = None,
    numbers: list[int] | None = None,
    override: Selection | None = None,
) -> tuple[list[int], list[str] | None]:
    """``(band numbers, band roles)`` that a model reads from a raster, in the model's order.

    ``roles`` / ``numbers``: what the model knows of its inputs (a checkpoint's
    roles and training band numbers; the index model's roles). ``override`` is
    ``--bands``. In order of precedence:

    1. ``--bands`` as band numbers: those bands;
    2. by role, when ``--bands`` is a role map or the band descriptions name the
       model's roles (or the model has roles and no numbers);
    3. the model's band numbers;
    4. nothing known (a new model): blue, green, red, nir when the descriptions
       name them, else every band in file order.
    """
    count = len(descriptions)
    if isinstance(override, list) and override and isinstance(override[0], str):  # band names
        if roles and len(override) != len(roles):
            raise InputError(f"--bands: {len(override)} bands given, but the model reads {len(roles)} "
                             f"({', '.join(roles)})")
        chosen, named = by_name(url, descriptions, list(override), "--bands"), list(roles or override)
    elif roles and windows_of(roles) and not isinstance(override, list):  # a multi-date model: by name only
        chosen, named = by_name(url, descriptions, list(roles), "the model"), list(roles)
    elif isinstance(override, list):
        if roles and len(override) != len(roles):
            raise InputError(
                f"--bands: {len(override)} bands given, but the model reads {len(roles)} ({', '.join(roles)})"
            )
        chosen, named = list(override), list(roles) if roles else None
    elif isinstance(override, dict) and not roles:
        chosen, named = list(override.values()), list(override)
    elif roles and (override or numbers is None or _names_roles(descriptions, roles, url)):
        mapping = resolve_roles(descriptions, override, url, needed=tuple(roles))
        chosen, named = [mapping[r] for r in roles], list(roles)
    elif numbers:
        if roles:
            _refuse_other_names(url, descriptions, roles)
        chosen, named = list(numbers), list(roles) if roles else None
    elif _names_roles(descriptions, ROLES, url):
        mapping = resolve_roles(descriptions, None, url)
        chosen, named = list(mapping.values()), list(mapping)
    elif all(descriptions) and windows_of(descriptions):  # a composite: its bands, not its counts
        chosen = [i for i, d in enumerate(descriptions, start=1) if d.partition("@")[0].lower() != COUNT]
        named = [descriptions[i - 1] for i in chosen]
    else:
        chosen = list(range(1, count + 1))
        named = list(descriptions) if all(descriptions) else None
    if max(chosen) > count:
        raise InputError(f"{url}: band {max(chosen)} is needed but the raster has {count} bands")
    return chosen, named


def by_name(url: str, descriptions: tuple[str | None, ...], names: list[str], who: str) -> list[int]:
    """Band numbers of ``names`` in a raster, by its band descriptions (``red@planting``; a role's
    aliases match within one window: ``B04@planting``); one line naming what is missing."""
    def base_window(text: str) -> tuple[str, str | None]:
        base, sep, window = text.strip().lower().partition("@")
        return base, (window if sep else None)

    found = [base_window(d or "") for d in descriptions]
    out, missing = [], []
    for name in names:
        base, window = base_window(name)
        hits = [i for i, (b, w) in enumerate(found, start=1) if w == window and same_band(b, base)]
        if hits:
            out.append(hits[0])
        else:
            missing.append(name)
    if missing:
        wanted, have = windows_of(names), windows_of(descriptions)
        lacking = [w for w in wanted if w not in have]
        if lacking:
            raise InputError(f"{url}: {who} reads the time windows {', '.join(wanted)} "
                             f"({', '.join(names)}), but the raster has "
                             f"{'the windows ' + ', '.join(have) if have else 'no windowed bands'}: "
                             f"no {', '.join(lacking)}")
        raise InputError(f"{url}: {who} reads {', '.join(names)}, but the raster has no band "
                         f"{', '.join(missing)} (band descriptions {list(descriptions)})")
    return out
