"""The spec fixture agrees with the official spec; what the client selects exists in the
schema of every api-version it speaks; what the emulator sends exists in 2025-06-01 too.

2024-07-01.20.0 is read from the fixture (derived from the spec). 2025-06-01 has no spec
file here: its property names are those of the official SDK 15.1 models, which are
generated from that version's specification and used as its oracle.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models as sdk_models
from emulator_helpers import emulator_client, node_ids
from specfixture import SPEC_NAME, derive, dump, load_fixture, spec_directory

from fleet_reimage.batch.models import NODE_SELECT, NODE_STATE_ORDER, POOL_SELECT
from fleet_reimage.batch.versions import API_VERSIONS
from fleet_reimage.emulator.spec import NODE_STATES


def _spec_document() -> dict[str, Any]:
    path = spec_directory() / SPEC_NAME
    if not path.is_file():
        pytest.skip(f"the full spec is not here ({path}); the fixture is used as it is")
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_fixture_agrees_with_the_full_spec() -> None:
    document = _spec_document()
    assert dump(derive(document)) == dump(load_fixture()), (
        "tests/spec is stale: run python tests/specfixture.py"
    )


def _rest_names(model: type) -> set[str]:
    """The wire names of an SDK model's fields (filled in when a model is first made)."""
    fields = model()._attr_to_rest_field  # type: ignore[attr-defined]
    return {field._rest_name for field in fields.values()}


def properties(version: str, resource: str) -> set[str]:
    """The property names a pool or node has at ``version``."""
    if version == "2024-07-01.20.0":
        definitions = load_fixture()["definitions"]
        name = {"pool": "CloudPool", "node": "ComputeNode"}[resource]
        return set(definitions[name]["properties"])
    model = {"pool": sdk_models.BatchPool, "node": sdk_models.BatchNode}[resource]
    return _rest_names(model)


@pytest.mark.parametrize("version", sorted(API_VERSIONS))
def test_select_names_only_properties_the_version_has(version: str) -> None:
    pool_names, node_names = properties(version, "pool"), properties(version, "node")
    assert "cloudServiceConfiguration" not in pool_names  # gone from both versions
    assert set(POOL_SELECT.split(",")) <= pool_names
    assert set(NODE_SELECT.split(",")) <= node_names


@pytest.mark.anyio
async def test_sdk_models_know_every_property_the_emulator_sends() -> None:
    """At 2025-06-01 the emulator sends the same shapes: each name must exist there too."""
    async with emulator_client() as (emu, client):
        pools = (await client.get("/pools")).json()["value"]
        node = node_ids(emu, "cs", "running")[0]
        nodes = [(await client.get(f"/pools/cs/nodes/{node}")).json()]
        nodes += (await client.get("/pools/odd/nodes")).json()["value"]
    sent_pool = set().union(*(set(pool) for pool in pools))
    sent_node = set().union(*(set(item) for item in nodes)) - {"odata.metadata"}
    assert sent_pool <= properties("2025-06-01", "pool"), sent_pool - properties(
        "2025-06-01", "pool"
    )
    assert sent_node <= properties("2025-06-01", "node")


def test_the_node_states_are_the_specs_in_its_order() -> None:
    """The emulator and the client each keep the 16 states: both must be the spec's."""
    states = load_fixture()["definitions"]["ComputeNode"]["properties"]["state"]["enum"]
    assert list(NODE_STATES) == states == list(NODE_STATE_ORDER)
