"""Where hosts meet in SSM Parameter Store: what one host publishes and another reads at first boot.

A first boot knows only its own metadata and tags, so cross-host facts travel through SSM: the initial
database primary publishes its address and the cluster's passwords for the other members, and the apps'
password for the dyno hosts. The roles' defaults name the same paths; the program grants each tier
exactly its part of them. (Routes, which change all the time, live in the registry: etcd.)
"""

from __future__ import annotations


def database_path(region: str, server: str) -> str:
    """Under it, `primary` (the initial primary's address) and `<name>-password` SecureStrings
    (replication, superuser, app)."""
    return f"/bulkhead/{region}/postgres/{server}"


def app_password(region: str, server: str) -> str:
    """The one database parameter a dyno host may read: the apps' password."""
    return f"{database_path(region, server)}/app-password"


def arn(region: str, path: str) -> str:
    """The ARN of every parameter under `path`, for IAM policies."""
    return f"arn:aws:ssm:{region}:*:parameter{path}/*"
