"""`kdcompress students list`: the zoo a selection chooses from, with each student's size at an input shape.

Params and FLOPs (batch 1; a multiply-add counts 2) are counted for the students meant for that input size
(the registry's `suits`, on the image's larger side); a student meant for other sizes is listed with its
size range and no figures, since selection never measures it at that shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import Outcome

DEFAULT_SHAPE = "3,32,32"
DEFAULT_CLASSES = 10


@dataclass(frozen=True)
class ZooRow:
    name: str
    family: str
    input_sizes: str  # the image sides it is meant for, e.g. "<= 64 px"
    suits: bool  # meant for the listed input shape
    params: int | None  # None: not meant for this input shape, not built
    flops: int | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "family": self.family, "input_sizes": self.input_sizes, "suits": self.suits,
                "params": self.params, "flops": self.flops}


def input_sizes(max_input: int | None, min_input: int | None) -> str:
    """The registry's bounds on an image's larger side, in words."""
    if max_input is not None and min_input is not None:
        return f"{min_input}-{max_input} px"
    if max_input is not None:
        return f"<= {max_input} px"
    if min_input is not None:
        return f">= {min_input} px"
    return "any size"


def zoo_rows(num_classes: int, spec) -> list[ZooRow]:
    """Every registered student, in registry order; sizes counted (memoised in flops.json) where it suits."""
    from ..students import STUDENTS, capacity

    rows = []
    for name in STUDENTS.names():
        entry = STUDENTS.get(name)
        suits = entry.suits(spec)
        cap = capacity(entry.build(num_classes, spec), spec, memo=True) if suits else None
        rows.append(ZooRow(name, entry.family, input_sizes(entry.max_input, entry.min_input), suits,
                           cap.params if cap else None, cap.flops if cap else None))
    return rows


def run_list(f: dict[str, Any], console) -> Outcome:
    from ..core.config import TeacherOptions
    from ..core.spec import InputSpec

    opts = TeacherOptions.from_flags(num_classes=f["num_classes"], input_shape=f["input_shape"])
    shape = opts.input_shape
    spec = InputSpec(shape, (0.0,) * shape[0], (1.0,) * shape[0])  # normalisation does not change a size
    rows = zoo_rows(opts.num_classes, spec)
    result = {"input_shape": list(shape), "num_classes": opts.num_classes,
              "students": [r.to_json() for r in rows]}
    return Outcome(result, lambda: show(rows, shape, opts.num_classes))


def show(rows: list[ZooRow], shape: tuple[int, int, int], num_classes: int) -> None:
    """The zoo as a table; on a narrow terminal family, then input sizes, then params give way (render.fit_table)."""
    from .render import _console, fit_table, human

    c = _console()
    columns = [("name", "left", None), ("family", "left", 1), ("params", "right", 3), ("FLOPs", "right", None),
               ("input sizes", "left", 2)]
    cells = [[r.name, r.family, "-" if r.params is None else human(r.params),
              "-" if r.flops is None else human(r.flops), r.input_sizes] for r in rows]
    c.print(fit_table(f"kdcompress students at {','.join(map(str, shape))}, {num_classes} classes", columns,
                      cells, c.width, caption="-: meant for other input sizes; try --input-shape"), markup=False)
