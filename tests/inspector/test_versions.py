"""Model versions (`inspector.versions`): which exist, which one the line uses, where the next goes."""

from __future__ import annotations

from pathlib import Path

import pytest

from inspector.errors import ModelError, RecipeError
from inspector.recipe import Recipe, load_recipe
from inspector.versions import (
    ACTIVE_FILE,
    active_model_version,
    model_versions,
    next_version,
    resolve_version,
    set_active_model_version,
)
from tests.conftest import write_recipe


@pytest.fixture
def recipe(tmp_path: Path) -> Recipe:
    return load_recipe(write_recipe(tmp_path / "r", tmp_path / "weights.safetensors"))


def test_latest_means_the_active_version_else_the_highest_and_numbers_are_never_reused(recipe: Recipe) -> None:
    models = recipe.model_dir()
    assert next_version(recipe).name == "v1" and model_versions(recipe) == []
    for name in ("v1", "v3", "v12", "v0", "v2x"):
        (models / name).mkdir(parents=True)
    assert model_versions(recipe) == ["v1", "v3", "v12"] == recipe.model_versions()
    assert resolve_version(recipe).name == "v12" and active_model_version(recipe) is None
    assert next_version(recipe).path == models / "v13", "after v12, even with v2 missing"

    set_active_model_version(recipe, "v3")
    assert (models / ACTIVE_FILE).read_text() == "v3\n"
    assert resolve_version(recipe).path == models / "v3" == recipe.model_version_dir()
    assert resolve_version(recipe, "v1").name == "v1", "an asked-for version beats the active one"
    assert resolve_version(recipe, "latest").name == "v3"

    (models / "v3").rmdir()                    # the active file names a version that is gone: the highest
    assert active_model_version(recipe) is None and resolve_version(recipe).name == "v12"


def test_missing_versions_and_an_unwritable_folder_say_what_to_do(recipe: Recipe) -> None:
    with pytest.raises(ModelError, match="no taught model .*teach it first"):
        resolve_version(recipe)
    (recipe.model_dir() / "v1").mkdir(parents=True)
    with pytest.raises(ModelError, match="pins model version v4 but .* has v1"):
        resolve_version(recipe, "v4")
    with pytest.raises(ModelError, match="no model version v2 .*it has v1"):
        set_active_model_version(recipe, "v2")
    (recipe.model_dir() / ACTIVE_FILE).mkdir()    # cannot be replaced by a file (even by root)
    with pytest.raises(RecipeError, match=f"{ACTIVE_FILE}: cannot write the active model version") as info:
        set_active_model_version(recipe, "v1")
    assert info.value.path == recipe.model_dir() / ACTIVE_FILE
    assert [p.name for p in recipe.model_dir().iterdir() if p.name.startswith(".")] == [], "no temporary left"
