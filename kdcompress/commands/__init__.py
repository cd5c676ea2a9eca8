"""The standalone subcommands (select, export, validate, teacher inspect, doctor): each reads its inputs
from files, calls stages (or pipeline helpers) and returns a JSON-able result for the CLI to print."""
