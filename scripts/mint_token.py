"""Mint a token for a local stage that verifies HS256 tokens with AUTH_JWT_SECRET (`make token`).

Reads the stage's settings from .chalice/config.json as `make run` does (top level, then the stage),
signs a token for AUTH_ISSUER and AUTH_AUDIENCE, and prints it with a ready wscat command line.
For development only: prod reads its secret from SSM Parameter Store, which this never touches.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jwt

REPO = Path(__file__).resolve().parent.parent


def stage_environment(config: dict, stage: str) -> dict[str, str]:
    if stage not in config.get("stages", {}):
        raise SystemExit(
            f"make token: no stage {stage!r} in .chalice/config.json (stages: {', '.join(config['stages'])})"
        )
    return {
        **config.get("environment_variables", {}),
        **config["stages"][stage].get("environment_variables", {}),
    }


def mint(env: dict[str, str], subject: str, minutes: int, now: float) -> str:
    if env.get("AUTH_MODE") != "jwt" or not env.get("AUTH_JWT_SECRET"):
        raise SystemExit(
            "make token: this stage does not verify tokens with AUTH_JWT_SECRET; serve the dev-jwt stage "
            "(make run RUN_STAGE=dev-jwt), or get a token from your identity provider"
        )
    claims = {
        "iss": env["AUTH_ISSUER"],
        "aud": env["AUTH_AUDIENCE"],
        "sub": subject,
        "iat": int(now),
        "exp": int(now) + minutes * 60,
    }
    return jwt.encode(claims, env["AUTH_JWT_SECRET"], algorithm="HS256")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="dev-jwt", help="Chalice stage (default dev-jwt)")
    parser.add_argument("--sub", default="local-user", help="the token's subject (default local-user)")
    parser.add_argument("--minutes", type=int, default=60, help="lifetime (default 60)")
    parser.add_argument("--url", default="ws://localhost:8000/api", help="the wscat line's URL")
    args = parser.parse_args(argv)
    config = json.loads((REPO / ".chalice" / "config.json").read_text())
    token = mint(stage_environment(config, args.stage), args.sub, args.minutes, time.time())
    print(token)
    print(f"# valid {args.minutes} minutes for sub={args.sub}; connect with:", file=sys.stderr)
    print(f'#   node_modules/.bin/wscat -c {args.url} -H "Authorization: Bearer {token}"', file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
