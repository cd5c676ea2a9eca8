"""The one class-naming rule, shared by every data reader, the teacher check and validation.

- A class is known by its NAME, a string. Labels are positions in a tuple of names; two tuples with the
  same names in another order are mapped onto each other by name (never assumed to agree by position).
- The order of a dataset's classes (the label each name gets) is the same for every data kind: when
  every name is a plain integer ("0", "7", "-1", "10") the names sort by their integer value, so
  folders named 0..11 give labels 0..11 (not "0","1","10","11","2",... as a string sort would, which is
  what torchvision's ImageFolder does); otherwise they sort as strings (Python's code-point order). Ties
  in value ("01" and "1") fall back to the string order. Datasets with an official order (CIFAR, MNIST,
  Fashion-MNIST) keep it.
- "0".."K-1" in a model's record means the model was known only by its class count (index names): its
  output i is assumed to be the data's class i, and the caller says so (a warning naming --classes)
  unless the data's own names are those same index names.
"""

from __future__ import annotations

from collections.abc import Iterable


def is_integer_name(name: str) -> bool:
    s = name[1:] if name[:1] == "-" else name
    return s.isdigit() and s.isascii()


def duplicate(names: Iterable[str]) -> str | None:
    """The first name that appears a second time, or None."""
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return n
        seen.add(n)
    return None


def class_order(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct names in label order: numeric names by value when all are integers, else string order."""
    uniq = {str(n) for n in names}
    if uniq and all(is_integer_name(n) for n in uniq):
        return tuple(sorted(uniq, key=lambda n: (int(n), n)))
    return tuple(sorted(uniq))


def is_index_names(classes: Iterable[str]) -> bool:
    """"0".."K-1": classes known only by number (a teacher given --num-classes, MNIST, digits)."""
    classes = tuple(classes)
    return classes == tuple(str(i) for i in range(len(classes)))


def _few(names: Iterable[str], n: int = 3) -> str:
    names = list(names)
    return ", ".join(repr(c) for c in names[:n]) + (" ..." if len(names) > n else "")


def match_classes(model: tuple[str, ...], data: tuple[str, ...], what: str, *,
                  fix: str = "name its outputs in order with --classes",
                  positional_ok: bool = True) -> tuple[list[int] | None, str | None]:
    """Map a model's outputs onto the data's classes by name. Returns (columns, warning): columns[i] is
    the model output that carries data class i (None: they agree by position already); warning is set
    when one side has index names only, so the mapping is assumed positional and the caller must say so.
    `positional_ok=False` treats "0".."K-1" as real names (a file kdcompress wrote records names, so a
    model whose metadata says "0".."K-1" means those classes). Raises ValueError (one line) when the
    names cannot be matched; `fix` is the remedy the message names."""
    model, data = tuple(model), tuple(data)
    for side, names in ((what, model), ("the data", data)):
        dup = duplicate(names)
        if dup is not None:  # two outputs (or labels) under one name cannot be mapped by name
            raise ValueError(f"{side} names class '{dup}' twice; {fix}")
    if model == data:
        return None, None
    if len(model) == len(data) and set(model) == set(data):
        return [model.index(c) for c in data], None
    if positional_ok and len(model) == len(data) and (is_index_names(model) or is_index_names(data)):
        side = f"{what} records no class names" if is_index_names(model) else \
            f"the data's classes are numbers only ({_few(data)}) and {what} names them ({_few(model)})"
        return None, (f"{side}; assuming output i is the data's class i ({_few(data, 4)}); if that is not "
                      f"the order it was trained with, {fix}")
    missing = [c for c in data if c not in set(model)]
    if missing:
        raise ValueError(f"{what} does not know the data's class{'es' if len(missing) > 1 else ''} "
                         f"{_few(missing)} (its classes: {_few(model, 4)}); if they are the same classes, {fix}")
    extra = [c for c in model if c not in set(data)]
    raise ValueError(f"{what} predicts {len(model)} classes, the data has {len(data)} (the model also has "
                     f"{_few(extra)}); {fix}")
