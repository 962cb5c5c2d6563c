"""The dummy AWS environment: credentials that sign but reach nothing, no shared config, no metadata."""

from __future__ import annotations

import os

REGION = "us-east-1"
ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"
SESSION_TOKEN = "testing"

DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
    "AWS_SESSION_TOKEN": SESSION_TOKEN,
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


def use_dummy_aws() -> None:
    """Put the dummy environment into this process, so boto3 can never reach real AWS."""
    os.environ.update(DUMMY_AWS_ENV)
    os.environ.pop("AWS_PROFILE", None)
