"""Turns one OpenAPI v3 document of a Kubernetes API server (/openapi/v3/<group-version>) into JSON
schema files as kubeconform looks them up: <kind>-<group's first label>-<version>.json (core:
<kind>-<version>.json), each the kind's schema with every component it refers to as definitions.

Strict, like kubeconform's -strict schemas: objects with listed properties allow no others, unless
Kubernetes marks them as preserving unknown fields. int-or-string values accept both.

usage: schemas.py OPENAPI.json OUT_DIR
"""

import json
import os
import sys


MAPS = ("properties", "patternProperties", "definitions")
SCHEMAS = ("items", "additionalProperties", "not")
LISTS = ("allOf", "anyOf", "oneOf")


def convert(schema):
    """One schema object (not a map of them: a property may be named `$ref`)."""
    if not isinstance(schema, dict):
        return schema
    if schema.get("format") == "int-or-string" or schema.get("x-kubernetes-int-or-string"):
        return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    out = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str):
            out[key] = value.replace("#/components/schemas/", "#/definitions/")
        elif key in MAPS and isinstance(value, dict):
            out[key] = {name: convert(v) for name, v in value.items()}
        elif key in SCHEMAS:
            out[key] = convert(value)
        elif key in LISTS and isinstance(value, list):
            out[key] = [convert(v) for v in value]
        else:
            out[key] = value
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def main():
    source, out_dir = sys.argv[1], sys.argv[2]
    with open(source) as f:
        components = json.load(f)["components"]["schemas"]
    definitions = {name: convert(schema) for name, schema in components.items()}
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    for name, schema in components.items():
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk["group"], gvk["version"], gvk["kind"]
            if kind.endswith("List") or kind in ("DeleteOptions", "WatchEvent", "Status"):
                continue
            suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
            document = dict(definitions[name])
            document["definitions"] = definitions
            path = os.path.join(out_dir, f"{kind.lower()}{suffix}.json")
            with open(path, "w") as f:
                json.dump(document, f)
            written += 1
    print(f"{source}: {written} kinds", file=sys.stderr)


if __name__ == "__main__":
    main()
