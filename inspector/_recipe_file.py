"""Reading a recipe file's bytes: a regular file of at most `MAX_RECIPE_BYTES`, checked before reading.

Light on purpose (no YAML, OpenCV or torch): ``inspector.cli`` checks the recipe a command names with it
before importing the command, so ``/dev/zero`` or a FIFO given as a recipe is refused at once, and
`inspector.recipe.load_recipe` reads through it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from inspector.errors import RecipeError
from models.files import FileTooLarge, NotARegularFile, read_bounded

__all__ = ["MAX_RECIPE_BYTES", "read_recipe_file"]

MAX_RECIPE_BYTES: Final = 1 << 20     # a recipe is a page of text; anything bigger is not one


def read_recipe_file(path: Path) -> bytes:
    """The bytes of a recipe file.

    Raises:
        RecipeError: missing, a folder, a device, FIFO or socket, larger than `MAX_RECIPE_BYTES`, or
            unreadable; the message names the file and what to give instead. Nothing is read from a file
            that is not a regular one.
    """
    try:
        return read_bounded(path, MAX_RECIPE_BYTES, what="recipe")
    except FileTooLarge as exc:
        msg = f"{path}: is larger than {MAX_RECIPE_BYTES // 1024} KiB; a recipe is a short YAML text file"
        raise RecipeError(msg, path=path) from exc
    except NotARegularFile as exc:
        msg = f"{path}: {exc.strerror}; give the recipe's .yaml file"
        raise RecipeError(msg, path=path) from exc
    except FileNotFoundError as exc:
        msg = f"{path}: recipe file not found; check the path (recipes live in the recipes/ folder)"
        raise RecipeError(msg, path=path) from exc
    except IsADirectoryError as exc:
        msg = f"{path}: is a folder, not a recipe file; give the .yaml file inside it"
        raise RecipeError(msg, path=path) from exc
    except OSError as exc:
        msg = f"{path}: cannot read the recipe file: {exc.strerror or exc}"
        raise RecipeError(msg, path=path) from exc
