"""`bulkhead status post|show`: the status site, updated with the status account's credentials only.

The site lives in another account and region than the platform (June 2012: the status site, fed by
the platform, fell over with it). A post reads the site's `status.json`, changes one component, and
writes `status.json` and the page back into the status bucket, through the status region's endpoint
with the status account's role: never through a platform region, so that it works while one is lost.
Posting the same state and message twice changes nothing.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import boto3
import botocore.exceptions

from bulkhead import project, status_page, topology
from bulkhead.errors import BulkheadError, UsageError
from bulkhead.localcloud import controller
from bulkhead.localcloud.aws import LocalAws
from bulkhead.localcloud.state import Store

STATES = ("operational", "degraded", "outage")
COMPONENTS = {"routing": "HTTP routing", "dynos": "Dynos", "databases": "Databases", "api": "Platform API"}
DOCUMENT = "status.json"


class StatusError(BulkheadError):
    """The status site cannot be read or written."""


def status_bucket(project_dir: Path):
    """(S3 client as the status account, bucket name, page title), locally or on AWS."""
    spec = topology.StackFiles(project_dir).spec(topology.GLOBAL_STACK)
    assert isinstance(spec, topology.GlobalSpec)
    store = Store.of_project(project_dir)
    outputs = store.outputs(topology.GLOBAL_STACK)
    endpoint = controller.front_endpoint(store.directory, spec.status_region)
    if endpoint and outputs:
        s3 = LocalAws(endpoint).client("s3", spec.status_region, spec.status_role_arn)
        return s3, outputs["statusBucket"], f"{spec.domain} status"
    if spec.status_role_arn is None:
        raise StatusError("bulkhead:statusRoleArn is not set: the status site is written only as its own account")
    granted = boto3.client("sts").assume_role(RoleArn=spec.status_role_arn, RoleSessionName="bulkhead-status")
    credentials = granted["Credentials"]
    s3 = boto3.client("s3", region_name=spec.status_region, aws_access_key_id=credentials["AccessKeyId"],
                      aws_secret_access_key=credentials["SecretAccessKey"],
                      aws_session_token=credentials["SessionToken"])  # fmt: skip
    # As the program names it (infra/__main__.py); the stack's output says the same.
    return s3, spec.status_domain.replace(".", "-"), f"{spec.domain} status"


def read(s3, bucket: str) -> dict:
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=DOCUMENT)["Body"].read())
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return {"components": dict.fromkeys(COMPONENTS, "operational"), "posts": []}
        raise StatusError(f"cannot read the status site's {DOCUMENT}: {error}") from None
    except botocore.exceptions.EndpointConnectionError as error:
        raise StatusError(f"the status region does not answer ({error}); the site is unchanged") from None


def post(s3, bucket: str, title: str, component: str, state: str, message: str) -> bool:
    """Set one component's state with a message; False when it already said exactly that."""
    if component not in COMPONENTS:
        raise UsageError(f"unknown component {component!r}; the components are {', '.join(COMPONENTS)}")
    if state not in STATES:
        raise UsageError(f"unknown state {state!r}; a state is one of {', '.join(STATES)}")
    if not message.strip():
        raise UsageError("--message is empty; say what operators and customers should know")
    document = read(s3, bucket)
    latest = document["posts"][-1] if document["posts"] else {}
    if (document["components"].get(component) == state and latest.get("component") == component
            and latest.get("message") == message):  # fmt: skip
        return False
    document["components"][component] = state
    document["posts"].append({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "component": component,
                              "state": state, "message": message})  # fmt: skip
    components = [
        status_page.Component(COMPONENTS[k], document["components"].get(k, "operational")) for k in COMPONENTS
    ]
    page = status_page.render(title, components, notice=message)
    # The document first: the page is made from it, so a failure between them leaves the page as it was.
    s3.put_object(Bucket=bucket, Key=DOCUMENT, Body=json.dumps(document, indent=2).encode(),
                  ContentType="application/json", CacheControl="max-age=5")  # fmt: skip
    s3.put_object(Bucket=bucket, Key="index.html", Body=page.encode(), ContentType="text/html; charset=utf-8",
                  CacheControl="max-age=5")  # fmt: skip
    return True


def cmd_post(args: argparse.Namespace) -> int:
    s3, bucket, title = status_bucket(project.find(args.project))
    changed = post(s3, bucket, title, args.component, args.state, args.message)
    print(f"{args.component}: {args.state}" + ("" if changed else " (already posted; nothing changed)"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    s3, bucket, _ = status_bucket(project.find(args.project))
    document = read(s3, bucket)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    for key, name in COMPONENTS.items():
        print(f"{name}: {document['components'].get(key, 'operational')}")
    if document["posts"]:
        latest = document["posts"][-1]
        print(f"latest ({latest['at']}, {latest['component']} {latest['state']}): {latest['message']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead status ...` to the command line."""
    status = commands.add_parser("status", help="post to and show the status site (its own account and region)",
                                 description=__doc__)  # fmt: skip
    verbs = status.add_subparsers(dest="verb", required=True, metavar="VERB")
    posting = verbs.add_parser("post", help="set a component's state with a message")
    posting.add_argument("--component", required=True, help=", ".join(COMPONENTS))
    posting.add_argument("--state", required=True, help=", ".join(STATES))
    posting.add_argument("--message", required=True, help="what operators and customers should know")
    posting.set_defaults(handler=cmd_post)
    show = verbs.add_parser("show", help="each component's state and the newest post")
    show.add_argument("--json", action="store_true", help="print the site's status.json")
    show.set_defaults(handler=cmd_show)
