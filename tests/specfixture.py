"""The part of the official Batch REST specification the conformance tests need, as a
fixture under ``tests/spec/`` (so the suite runs without ``../shared``), and the function
that derives it from the full document.

Regenerate after a spec update::

    python tests/specfixture.py ../shared/reference/spec/BatchService.2024-07-01.20.0.json

``test_spec_fixture.py`` re-derives it wherever the full spec is at hand and fails when
the two disagree.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
FIXTURE = HERE / "spec" / "batch-2024-07-01.20.0-subset.json"
SPEC_NAME = "BatchService.2024-07-01.20.0.json"
# The operations the emulator serves (and the tool uses or the next work needs).
OPERATIONS = (
    "Pool_List",
    "Pool_Get",
    "Pool_Patch",
    "Pool_Resize",
    "Pool_StopResize",
    "Pool_RemoveNodes",
    "ComputeNode_List",
    "ComputeNode_Get",
    "ComputeNode_Reimage",
    "ComputeNode_Reboot",
    "ComputeNode_Deallocate",
    "ComputeNode_Start",
    "ComputeNode_DisableScheduling",
    "ComputeNode_EnableScheduling",
)
# What a schema says about valid values; descriptions and the like are left out.
_SCHEMA_KEYS = frozenset(
    {
        "type",
        "format",
        "properties",
        "required",
        "items",
        "enum",
        "$ref",
        "allOf",
        "additionalProperties",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "pattern",
        "readOnly",
    }
)


def spec_directory() -> Path:
    """Where the full spec is: ``$FLEET_REIMAGE_SPEC_DIR``, else ``../shared/reference/spec``
    beside the repository (absent on a clean clone: tests that need it skip)."""
    override = os.environ.get("FLEET_REIMAGE_SPEC_DIR")
    if override:
        return Path(override)
    return HERE.parent.parent / "shared" / "reference" / "spec"


def _schema(node: Any) -> Any:
    if isinstance(node, dict):
        kept = {key: value for key, value in node.items() if key in _SCHEMA_KEYS}
        if "properties" in kept:
            kept["properties"] = {name: _schema(sub) for name, sub in kept["properties"].items()}
        for key in ("items", "additionalProperties"):
            if isinstance(kept.get(key), dict):
                kept[key] = _schema(kept[key])
        if "allOf" in kept:
            kept["allOf"] = [_schema(sub) for sub in kept["allOf"]]
        return kept
    return node


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].rsplit("/", 1)[1]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def _parameter(spec: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in parameter:
        parameter = spec["parameters"][parameter["$ref"].rsplit("/", 1)[1]]
    kept = {key: parameter[key] for key in ("name", "in", "required") if key in parameter}
    if parameter.get("in") == "body":
        kept["schema"] = _schema(parameter["schema"])
    else:
        kept.update({key: parameter[key] for key in ("type", "format") if key in parameter})
    return kept


def derive(spec: dict[str, Any], operations: tuple[str, ...] = OPERATIONS) -> dict[str, Any]:
    """The fixture: each operation's parameters and declared responses (status, headers,
    schema), and every definition they reach."""
    found: dict[str, Any] = {}
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            if method == "parameters" or operation["operationId"] not in operations:
                continue
            responses = {}
            for status, response in operation["responses"].items():
                entry: dict[str, Any] = {
                    "headers": {
                        name: {key: header[key] for key in ("type", "format") if key in header}
                        for name, header in response.get("headers", {}).items()
                    }
                }
                if "schema" in response:
                    entry["schema"] = _schema(response["schema"])
                responses[status] = entry
            found[operation["operationId"]] = {
                "method": method.upper(),
                "path": path,
                "parameters": [_parameter(spec, item) for item in operation["parameters"]],
                "responses": responses,
            }
    missing = sorted(set(operations) - set(found))
    if missing:
        raise ValueError(f"operations not in the spec: {', '.join(missing)}")
    definitions: dict[str, Any] = {}
    todo = _refs(found)
    while todo:
        name = todo.pop()
        if name in definitions:
            continue
        definitions[name] = _schema(spec["definitions"][name])
        todo |= _refs(definitions[name]) - set(definitions)
    return {
        "_source": f"derived by tests/specfixture.py from {SPEC_NAME} (official Batch REST spec)",
        "version": spec["info"]["version"],
        "operations": dict(sorted(found.items())),
        "definitions": dict(sorted(definitions.items())),
    }


def load_fixture() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def dump(fixture: dict[str, Any]) -> str:
    return json.dumps(fixture, indent=1, sort_keys=False) + "\n"


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else spec_directory() / SPEC_NAME
    document = json.loads(source.read_text(encoding="utf-8"))
    FIXTURE.write_text(dump(derive(document)), encoding="utf-8")
    print(f"wrote {FIXTURE.relative_to(HERE.parent)}")
