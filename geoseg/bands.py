"""Band roles (blue, green, red, nir...) from band descriptions or ``--bands``."""

from __future__ import annotations

from geoseg.errors import InputError

ROLES = ("blue", "green", "red", "nir")
_ALIASES = {
    "blue": ("blue", "b", "b2", "b02", "sr_b2", "coastal_blue"),
    "green": ("green", "g", "b3", "b03", "sr_b3"),
    "red": ("red", "r", "b4", "b04", "sr_b4"),
    "nir": ("nir", "nir08", "near-infrared", "near_infrared", "b8", "b08", "sr_b5", "n"),
}


def parse_bands(spec: str) -> dict[str, int]:
    """``"blue=1,green=2,red=3,nir=4"`` -> ``{"blue": 1, ...}`` (1-based band numbers)."""
    roles: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, num = part.partition("=")
        name = name.strip().lower()
        if not sep or name not in ROLES:
            raise InputError(f"--bands: {part!r} is not ROLE=N with ROLE one of {', '.join(ROLES)}")
        try:
            roles[name] = int(num)
        except ValueError:
            raise InputError(f"--bands: band number in {part!r} is not an integer") from None
        if roles[name] < 1:
            raise InputError(f"--bands: band numbers start at 1, got {part!r}")
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
