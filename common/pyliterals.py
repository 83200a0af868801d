"""Values assigned in a released Python file (prompt lists in a score.py, templates in a prompts.py), read without
running it: the file is parsed and only literal assignments are evaluated (ast.literal_eval), so nothing in it runs."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path
from typing import Any

from common.errors import UserError


def read_literals(path: str | Path, names: set[str]) -> dict[str, tuple[int, Any]]:
    """name -> (line, value) for each of `names` assigned a literal anywhere in the file (module level or nested, as
    under `if __name__ == "__main__":`); the last assignment wins. A name assigned a non-literal is an error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    with warnings.catch_warnings():  # released strings often hold escapes ("\F") that Python warns about
        warnings.simplefilter("ignore")
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        except SyntaxError as e:
            raise UserError(f"{path}:{e.lineno}: not Python ({e.msg})") from None
    found: dict[str, tuple[int, Any]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in names:
                try:
                    found[name] = (node.lineno, ast.literal_eval(node.value))
                except ValueError:
                    raise UserError(
                        f"{path}:{node.lineno}: {name} is not a literal (it would have to be run)"
                    ) from None
    return found
