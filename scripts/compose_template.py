#!/usr/bin/env python3
"""Join CloudFormation YAML files into the one --merge-template `chalice package` takes.

    scripts/compose_template.py infra/network.yaml infra/app.yaml -o build/merge-template.json

infra/network.yaml is a complete template (`make network` deploys it alone); infra/app.yaml holds
overrides for resources chalice generates, and the resources and parameters the app part adds.
Top-level sections are joined key by key; the same key in two files is an error (so an override
cannot silently shadow a network resource). Keys starting
with ``x-`` (YAML anchor holders) are dropped. Short-form intrinsics (!Ref, !Sub...) are read with
chalice's own YAML loader, the one its merge uses, and written in their long JSON form.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from chalice.package import YAMLTemplateSerializer

SECTIONS = ("Parameters", "Conditions", "Mappings", "Resources", "Outputs", "Metadata")


class ComposeError(ValueError):
    pass


def load(path: Path) -> dict:
    return YAMLTemplateSerializer().load_template(path.read_text(), str(path))


def compose(templates: list[tuple[str, dict]]) -> dict:
    result: dict = {}
    for name, template in templates:
        for key, value in template.items():
            if key.startswith("x-"):
                continue
            if key not in SECTIONS:
                result.setdefault(key, value)
                continue
            section = result.setdefault(key, {})
            for item, body in value.items():
                if item in section:
                    raise ComposeError(f"{name}: {key}.{item} is already defined by an earlier file")
                section[item] = body
    return result


def verify_merged(template: dict) -> list[str]:
    """Problems of a merged package: an override whose chalice resource was not generated is left
    without a Type (e.g. DefaultRole when the stage sets autogen_policy false: chalice then makes one
    role per function)."""
    return [
        f"{name} is in the merge template but chalice generated no such resource"
        for name, resource in template.get("Resources", {}).items()
        if "Type" not in resource
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("templates", nargs="*", type=Path)
    parser.add_argument("-o", "--output", type=Path)
    parser.add_argument("--verify", type=Path, help="check a merged chalice package (sam.json) instead")
    args = parser.parse_args(argv)
    if args.verify:
        problems = verify_merged(json.loads(args.verify.read_text()))
        for problem in problems:
            print(f"compose_template: {args.verify}: {problem}", file=sys.stderr)
        if problems:
            print(
                "compose_template: does the stage set autogen_policy false or its own role (written by "
                "`make chalice-config` for the chalice deploy path)? The one-stack path needs chalice's "
                "default role: package a stage without them.",
                file=sys.stderr,
            )
        return 1 if problems else 0
    if not args.templates or args.output is None:
        parser.error("give the templates to join and -o OUTPUT (or --verify PACKAGE)")
    try:
        composed = compose([(str(path), load(path)) for path in args.templates])
    except ComposeError as error:
        print(f"compose_template: {error}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(composed, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
