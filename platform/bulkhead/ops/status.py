"""`bulkhead status post|resolve|show|history`: the status site, updated with the status account's credentials only.

The site lives in another account and region than the platform (June 2012: the status site, fed by
the platform, fell over with it). A post reads the site's `status.json`, changes one component, and
writes the page (`index.html`), the Atom feed (`feed.atom`) and `status.json` back into the status
bucket, through the status region's endpoint with the status account's role: never through a
platform region, so that it works while one is lost. Then it tells the status topic's subscribers
and invalidates the three paths at the edge, so the update is served within seconds.
Posting the same state and message twice changes nothing; the history is only ever appended to.
"""

from __future__ import annotations

import argparse
import html
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
PAGE = "index.html"
FEED = "feed.atom"
# Short enough that an update is served within seconds even where an invalidation is slow.
CACHE_CONTROL = "max-age=5"
FEED_ENTRIES = 50


class StatusError(BulkheadError):
    """The status site cannot be read or written."""


@dataclass(frozen=True)
class Site:
    """The status account's clients and the site's names: everything a post touches."""

    s3: Any
    sns: Any
    cloudfront: Any
    bucket: str
    topic_arn: str | None
    distribution_id: str | None
    title: str


def status_account(project_dir: Path, store: Store | None = None):
    """(client(service) as the status account in the status region, the global stack's local outputs or None,
    the global spec): the local cloud's when it runs for this checkout, else AWS's through the status role."""
    spec = topology.StackFiles(project_dir).spec(topology.GLOBAL_STACK)
    assert isinstance(spec, topology.GlobalSpec)
    store = store or Store.of_project(project_dir)
    outputs = store.outputs(topology.GLOBAL_STACK)
    endpoint = controller.front_endpoint(store.directory, spec.status_region)
    if endpoint and outputs:
        local = LocalAws(endpoint)
        return (lambda service: local.client(service, spec.status_region, spec.status_role_arn)), outputs, spec
    if spec.status_role_arn is None:
        raise StatusError("bulkhead:statusRoleArn is not set: the status site is written only as its own account; "
                          "set it in Pulumi.global.yaml")  # fmt: skip
    try:
        granted = boto3.client("sts").assume_role(RoleArn=spec.status_role_arn, RoleSessionName="bulkhead-status")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise StatusError(f"cannot act as the status account ({spec.status_role_arn}): {error}; the site is "
                          "unchanged (give this shell credentials that may assume that role)") from None  # fmt: skip
    credentials = granted["Credentials"]
    session = boto3.Session(aws_access_key_id=credentials["AccessKeyId"],
                            aws_secret_access_key=credentials["SecretAccessKey"],
                            aws_session_token=credentials["SessionToken"], region_name=spec.status_region)  # fmt: skip
    return session.client, None, spec


def status_site(project_dir: Path, store: Store | None = None) -> Site:
    """The status site, locally (the project's local cloud, or `store`'s) or on AWS, as the status account."""
    client, outputs, spec = status_account(project_dir, store)
    title = f"{spec.domain} status"
    if outputs:
        return Site(client("s3"), client("sns"), client("cloudfront"), outputs["statusBucket"],
                    outputs.get("statusTopicArn"), outputs.get("statusDistributionId"), title)  # fmt: skip
    # As the program names them (infra/__main__.py, components/status.py); the stack's outputs say the same.
    bucket = spec.status_domain.replace(".", "-")
    account = str(spec.status_role_arn).split(":")[4]
    cloudfront = client("cloudfront")
    return Site(client("s3"), client("sns"), cloudfront, bucket,
                f"arn:aws:sns:{spec.status_region}:{account}:{topology.STATUS_TOPIC}",
                _distribution_of(cloudfront, bucket), title)  # fmt: skip


def _distribution_of(cloudfront, bucket: str) -> str | None:
    """The distribution whose origin is the status bucket."""
    for page in cloudfront.get_paginator("list_distributions").paginate():
        for item in page.get("DistributionList", {}).get("Items", []):
            if any(o["DomainName"].startswith(f"{bucket}.s3.") for o in item["Origins"]["Items"]):
                return item["Id"]
    return None


def component_key(name: str) -> str:
    """The component's key from its key (`databases`) or its name on the page (`Databases`)."""
    wanted = name.strip().lower()
    for key, title in COMPONENTS.items():
        if wanted in (key, title.lower()):
            return key
    choices = ", ".join(f"{k} ({t})" for k, t in COMPONENTS.items())
    raise UsageError(f"unknown component {name!r}; the components are {choices}")


def read(s3, bucket: str) -> dict:
    """The site's status.json; every component operational and no posts when there is none yet."""
    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=DOCUMENT)["Body"].read())
    except botocore.exceptions.ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return {"components": dict.fromkeys(COMPONENTS, "operational"), "posts": []}
        raise StatusError(f"cannot read the status site's {DOCUMENT}: {error}") from None
    except botocore.exceptions.NoCredentialsError:
        raise StatusError("no AWS credentials: the status site is written as the status account; "
                          "give this shell credentials that may assume bulkhead:statusRoleArn") from None  # fmt: skip
    except botocore.exceptions.EndpointConnectionError as error:
        raise StatusError(f"the status region does not answer ({error}); the site is unchanged") from None


def post(site: Site, component: str, state: str, message: str) -> bool:
    """Set one component's state with a message; False when it already said exactly that."""
    key = component_key(component)
    if state not in STATES:
        raise UsageError(f"unknown state {state!r}; a state is one of {', '.join(STATES)}")
    if not message.strip():
        raise UsageError("--message is empty; say what operators and customers should know")
    document = read(site.s3, site.bucket)
    latest = document["posts"][-1] if document["posts"] else {}
    if (document["components"].get(key) == state and latest.get("component") == key
            and latest.get("message") == message.strip()):  # fmt: skip
        return False
    entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "component": key, "state": state,
             "message": message.strip()}  # fmt: skip
    document["components"][key] = state
    document["posts"].append(entry)
    _publish(site, document)
    _announce(site, entry)
    return True


def resolve(site: Site, component: str, message: str | None = None) -> bool:
    """Back to operational, with a message that says so unless one is given."""
    key = component_key(component)
    return post(site, key, "operational", message or f"{COMPONENTS[key]} is operating normally again.")


def _publish(site: Site, document: dict) -> None:
    components = [status_page.Component(COMPONENTS[k], document["components"].get(k, "operational"))
                  for k in COMPONENTS]  # fmt: skip
    latest = document["posts"][-1]
    page = status_page.render(site.title, components, notice=latest["message"], updated=latest["at"])
    objects = (
        (PAGE, page.encode(), "text/html; charset=utf-8"),
        (FEED, feed(site.title, document["posts"]).encode(), "application/atom+xml"),
        # The document last: a post is judged done (and a repeat a no-op) by it, so a failure before it
        # leaves a post that a retry completes.
        (DOCUMENT, json.dumps(document, indent=2).encode(), "application/json"),
    )
    try:
        for key, body, kind in objects:
            site.s3.put_object(Bucket=site.bucket, Key=key, Body=body, ContentType=kind, CacheControl=CACHE_CONTROL)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise StatusError(f"cannot write the status site ({error}); post again to finish") from None
    if site.distribution_id:
        try:
            site.cloudfront.create_invalidation(DistributionId=site.distribution_id, InvalidationBatch={
                "Paths": {"Quantity": len(objects), "Items": [f"/{key}" for key, _, _ in objects]},
                "CallerReference": uuid.uuid4().hex})  # fmt: skip
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
            raise StatusError(f"posted, but the edge was not invalidated ({error}); it serves the update within "
                              f"{CACHE_CONTROL.split('=')[1]} s of its cache") from None  # fmt: skip


def _announce(site: Site, entry: dict) -> None:
    if not site.topic_arn:
        return
    subject = f"[status] {COMPONENTS[entry['component']]}: {entry['state']}"
    try:
        site.sns.publish(TopicArn=site.topic_arn, Subject=subject, Message=json.dumps(entry))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise StatusError(f"posted, but the status topic's subscribers were not told ({error}); "
                          "post again to tell them") from None  # fmt: skip


def feed(title: str, posts: list[dict]) -> str:
    """An Atom feed of the newest posts, newest first."""
    newest = list(enumerate(posts))[-FEED_ENTRIES:][::-1]
    updated = newest[0][1]["at"] if newest else "1970-01-01T00:00:00Z"
    entries = "".join(
        f"<entry><id>urn:bulkhead:status:{number}</id><updated>{p['at']}</updated>"
        f"<title>{html.escape(COMPONENTS.get(p['component'], p['component']))}: {html.escape(p['state'])}</title>"
        f'<content type="text">{html.escape(p["message"])}</content></entry>'
        for number, p in newest
    )
    return (f'<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
            f"<title>{html.escape(title)}</title><id>urn:bulkhead:status</id><updated>{updated}</updated>"
            f"<link rel=\"alternate\" href=\"{PAGE}\"/>{entries}</feed>\n")  # fmt: skip


def cmd_post(args: argparse.Namespace) -> int:
    site = status_site(project.find(args.project))
    changed = post(site, args.component, args.state, args.message)
    name = COMPONENTS[component_key(args.component)]
    print(f"{name}: {args.state}" + ("" if changed else " (already posted; nothing changed)"))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    site = status_site(project.find(args.project))
    changed = resolve(site, args.component, args.message)
    name = COMPONENTS[component_key(args.component)]
    print(f"{name}: operational" + ("" if changed else " (already posted; nothing changed)"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    site = status_site(project.find(args.project))
    document = read(site.s3, site.bucket)
    if args.json:
        print(json.dumps(document, indent=2))
        return 0
    for key, name in COMPONENTS.items():
        print(f"{name}: {document['components'].get(key, 'operational')}")
    if document["posts"]:
        latest = document["posts"][-1]
        print(f"latest ({latest['at']}, {COMPONENTS[latest['component']]} {latest['state']}): {latest['message']}")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    site = status_site(project.find(args.project))
    for entry in read(site.s3, site.bucket)["posts"]:
        print(f"{entry['at']}  {COMPONENTS[entry['component']]:<13} {entry['state']:<11} {entry['message']}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead status ...` to the command line."""
    status = commands.add_parser("status", help="post to and show the status site (its own account and region)",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    verbs = status.add_subparsers(dest="verb", required=True, metavar="VERB")
    component_help = "; ".join(f"{k} or {t!r}" for k, t in COMPONENTS.items())
    posting = verbs.add_parser("post", help="set a component's state with a message")
    posting.add_argument("--component", required=True, help=component_help)
    posting.add_argument("--state", required=True, help=", ".join(STATES))
    posting.add_argument("--message", required=True, help="what operators and customers should know")
    posting.set_defaults(handler=cmd_post)
    resolving = verbs.add_parser("resolve", help="set a component back to operational")
    resolving.add_argument("--component", required=True, help=component_help)
    resolving.add_argument("--message", help="what to say (default: '<component> is operating normally again.')")
    resolving.set_defaults(handler=cmd_resolve)
    show = verbs.add_parser("show", help="each component's state and the newest post")
    show.add_argument("--json", action="store_true", help="print the site's status.json")
    show.set_defaults(handler=cmd_show)
    history = verbs.add_parser("history", help="every post, oldest first (never rewritten)")
    history.set_defaults(handler=cmd_history)
