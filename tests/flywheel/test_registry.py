"""The model registry on real SQLite files and real checkpoints and adapters: versions, aliases,
the append-only promotion log, rollback by history, and candidates of another shape refused."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tokenworks.flywheel.model_files import ModelFilesError, content_hash, inspect_model
from tokenworks.flywheel.registry import Registry, RegistryError

from ..adapters import make_adapter
from .checkpoints import make_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Two checkpoints of the nano shape, one with another hidden size, and adapters of each shape."""
    root = tmp_path_factory.mktemp("models")
    base = make_checkpoint(root / "base")
    other = make_checkpoint(root / "other", hidden_size=64, intermediate_size=192, num_attention_heads=2,
                            num_key_value_heads=1)  # fmt: skip
    return {
        "base": base,
        "retrained": make_checkpoint(root / "retrained", seed=1),
        "other": other,
        "adapter": make_adapter(base, root / "adapter", rank=4, targets=("q_proj", "v_proj"), seed=0),
        "adapter2": make_adapter(base, root / "adapter2", rank=4, targets=("q_proj", "v_proj"), seed=1),
        "other_adapter": make_adapter(other, root / "other_adapter", rank=4, targets=("q_proj", "down_proj"), seed=0),
    }


@pytest.fixture()
def registry(tmp_path) -> Registry:
    return Registry(tmp_path / "registry.db")


def test_register_records_kind_hashes_shape_and_lineage(registry, models, tmp_path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"outputs": []}\n')
    base = registry.register(models["base"], actor="ada", reason="the pretrained model")
    adapter = registry.register(
        models["adapter"], name="docs-qa-1", parent=1, dataset_manifest=manifest, training_run=tmp_path,
        evaluation={"hard_eval_loss": 2.5}, actor="flywheel",
    )  # fmt: skip
    assert (base.version, base.kind, base.name, base.parent, base.base_hash) == (1, "checkpoint", "base", None, None)
    assert base.content_hash == content_hash(models["base"]) and len(base.content_hash) == 64
    assert base.shape.as_dict() == {
        "architecture": "LlamaForCausalLM", "vocab_size": 256, "hidden_size": 96, "intermediate_size": 288,
        "num_hidden_layers": 2, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32,
    }  # fmt: skip
    assert (adapter.version, adapter.kind, adapter.name, adapter.parent) == (2, "lora", "docs-qa-1", 1)
    assert adapter.base_hash == base.content_hash and adapter.shape == base.shape
    assert adapter.base_path == str(models["base"].resolve())
    assert adapter.dataset_manifest == str(manifest.resolve())
    assert adapter.dataset_hash == "2f0e3fb13e266471792da493a500c08e8cc694f4fa5d1c5097446380a6affc00"
    assert adapter.evaluation == {"hard_eval_loss": 2.5}
    assert [v.version for v in registry.versions()] == [1, 2]
    assert [(e.actor, e.action, e.to_version, e.reason) for e in registry.history()] == [
        ("ada", "register", 1, "the pretrained model"),
        ("flywheel", "register", 2, ""),
    ]
    # The file is SQLite in WAL mode, readable by any client.
    with sqlite3.connect(registry.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_the_content_hash_follows_every_byte(models, tmp_path) -> None:
    copy = Path(shutil.copytree(models["adapter"], tmp_path / "copy"))
    assert content_hash(copy) == content_hash(models["adapter"])
    config = json.loads((copy / "adapter_config.json").read_text())
    (copy / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 9.0}))
    assert content_hash(copy) != content_hash(models["adapter"])


def test_aliases_promotion_and_rollback_by_history(registry, models) -> None:
    for name in ("base", "adapter", "adapter2", "retrained"):
        registry.register(models[name])
    registry.promote(1, actor="ada", reason="first")
    registry.promote(4, evaluation={"hard_eval_loss": 2.0})
    registry.promote(2)
    registry.promote(3, "challenger")
    assert registry.aliases() == {"challenger": 3, "champion": 2}
    assert registry.lineage() == [1, 4, 2]
    # Rollback walks the history back (2 -> 4 -> 1), not the version numbers (2 -> 1).
    entry = registry.rollback(actor="ada", reason="regression")
    assert (entry.action, entry.from_version, entry.to_version, entry.reason) == ("rollback", 2, 4, "regression")
    assert registry.resolve("champion").version == 4
    assert registry.rollback().to_version == 1
    with pytest.raises(RegistryError, match=r"champion has held only version 1: there is nothing to roll back to"):
        registry.rollback()
    with pytest.raises(RegistryError, match=r"no alias 'canary'"):
        registry.rollback("canary")
    # The challenger's history is its own.
    assert registry.lineage("challenger") == [3]
    # Promoting again after a rollback starts from where the alias stands.
    registry.promote(3)
    assert registry.lineage() == [1, 3]
    log = [(e.action, e.alias, e.from_version, e.to_version) for e in registry.history() if e.action != "register"]
    assert log == [
        ("promote", "champion", None, 1), ("promote", "champion", 1, 4), ("promote", "champion", 4, 2),
        ("promote", "challenger", None, 3), ("rollback", "champion", 2, 4), ("rollback", "champion", 4, 1),
        ("promote", "champion", 1, 3),
    ]  # fmt: skip
    assert registry.history("champion")[1].evaluation == {"hard_eval_loss": 2.0}


def test_refusal_is_logged_and_moves_nothing(registry, models) -> None:
    registry.register(models["base"])
    registry.register(models["adapter"])
    registry.promote(1)
    entry = registry.refuse(2, evaluation={"hard_eval_loss": 3.1}, reason="hard-eval loss 3.0 -> 3.1")
    assert (entry.action, entry.from_version, entry.to_version) == ("refuse", 1, 2)
    assert registry.aliases() == {"champion": 1} and registry.lineage() == [1]
    assert registry.history()[-1].evaluation == {"hard_eval_loss": 3.1}


def test_unknown_versions_and_aliases_are_clear_errors(registry, models) -> None:
    registry.register(models["base"])
    with pytest.raises(RegistryError, match=r"no version 7 in .*tokenworks models list"):
        registry.promote(7)
    with pytest.raises(RegistryError, match=r"no version 7"):
        registry.get(7)
    with pytest.raises(RegistryError, match=r"no alias 'champion' in .* \(aliases: none yet\)"):
        registry.resolve("champion")
    with pytest.raises(RegistryError, match=r"parent version 9 is not in"):
        registry.register(models["adapter"], parent=9)
    registry.promote(1)
    with pytest.raises(RegistryError, match=r"version 1 is already champion"):
        registry.promote(1)
    assert len(registry.versions()) == 1


def test_a_candidate_of_another_base_shape_is_refused_and_nothing_registered(registry, models) -> None:
    registry.register(models["base"])
    registry.promote(1)
    before = registry.history()
    with pytest.raises(
        RegistryError, match=r"another base shape than the champion \(version 1\): hidden_size 64 != 96"
    ):
        registry.register(models["other"])
    with pytest.raises(RegistryError, match=r"another base shape than the champion"):
        registry.register(models["other_adapter"])
    assert [v.version for v in registry.versions()] == [1] and registry.history() == before


def test_an_adapter_that_does_not_fit_its_stated_base(models, tmp_path) -> None:
    # The other shape's adapter claims the nano base: its factors do not fit the base's projections.
    with pytest.raises(
        ModelFilesError,
        match=(
            r"is an adapter for another base shape: base_model.model.model.layers.0.mlp.down_proj.lora_A.weight has shape "
            r"\[4, 192\], but the base has 2 layers and down_proj maps 288 -> 96 features"
        ),
    ):
        inspect_model(models["other_adapter"], base=models["base"])
    moved = Path(shutil.copytree(models["adapter"], tmp_path / "orphan"))
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere"}))
    with pytest.raises(ModelFilesError, match=r"its base model /nowhere is not a directory here; pass the base"):
        inspect_model(moved)
    assert inspect_model(moved, base=models["base"]).kind == "lora"


def test_corrupt_candidates_are_clear_errors(models, tmp_path) -> None:
    truncated = Path(shutil.copytree(models["base"], tmp_path / "truncated"))
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ModelFilesError, match=r"model.safetensors has .* bytes but its header describes .* truncated"):
        inspect_model(truncated)
    garbled = Path(shutil.copytree(models["base"], tmp_path / "garbled"))
    (garbled / "config.json").write_text("{not json")
    with pytest.raises(ModelFilesError, match=r"config.json is not valid JSON"):
        inspect_model(garbled)
    with pytest.raises(ModelFilesError, match=r"holds neither config.json .* nor adapter_config.json"):
        inspect_model(tmp_path)
    with pytest.raises(ModelFilesError, match=r"is not a directory"):
        inspect_model(tmp_path / "missing")


def test_the_promotion_log_is_append_only_in_the_database(registry, models) -> None:
    registry.register(models["base"])
    registry.promote(1)
    with sqlite3.connect(registry.path) as db:
        with pytest.raises(sqlite3.IntegrityError, match=r"the promotion log is append-only"):
            db.execute("UPDATE promotion_log SET actor = 'mallory'")
        with pytest.raises(sqlite3.IntegrityError, match=r"the promotion log is append-only"):
            db.execute("DELETE FROM promotion_log")
    assert [e.action for e in registry.history()] == ["register", "promote"]
    # Reopening the file keeps the triggers (CREATE ... IF NOT EXISTS) and the data.
    assert Registry(registry.path).aliases() == {"champion": 1}


def test_the_code_never_updates_or_deletes_the_log() -> None:
    source = (Path(__file__).parents[2] / "tokenworks" / "flywheel" / "registry.py").read_text().upper()
    assert "UPDATE PROMOTION_LOG" not in source.replace("BEFORE UPDATE ON PROMOTION_LOG", "")
    assert "DELETE FROM PROMOTION_LOG" not in source


def test_a_file_that_is_not_a_registry(tmp_path) -> None:
    bad = tmp_path / "bad.db"
    bad.write_text("this is not SQLite, and rather long to make sure of it " * 20)
    with pytest.raises(RegistryError, match=r"is not a tokenworks registry"):
        Registry(bad)
    with pytest.raises(RegistryError, match=r"no registry at .*missing.db"):
        Registry(tmp_path / "missing.db", create=False)


def test_a_training_runs_checkpoint_is_named_after_its_run(registry, models, tmp_path) -> None:
    run = Path(shutil.copytree(models["base"], tmp_path / "docs-qa-3" / "checkpoint"))
    assert registry.register(run).name == "docs-qa-3"
    assert registry.register(models["retrained"]).name == "retrained"


def test_a_version_of_another_shape_registered_before_any_champion_is_not_promoted(registry, models) -> None:
    registry.register(models["base"])
    registry.register(models["other"])  # no champion yet: nothing to compare against
    registry.promote(1)
    with pytest.raises(RegistryError, match=r"version 2 has another base shape than the champion \(version 1\)"):
        registry.promote(2)
    assert registry.aliases() == {"champion": 1} and [e.action for e in registry.history()][-1] == "promote"
    registry.promote(2, "experiment")  # other aliases may name any version
