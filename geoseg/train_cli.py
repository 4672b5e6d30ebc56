"""CLI glue for ``geoseg train`` (filled in by the training module)."""

COMMANDS: dict = {}


def add_parser(sub) -> None:
    return None
