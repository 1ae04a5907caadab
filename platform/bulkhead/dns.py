"""`bulkhead dns answer NAME`: which region Route 53 sends a name to now, by Route 53's own answer.

It calls Route 53's `TestDNSAnswer` on AWS and locally alike; locally the Route 53 endpoint is the
local cloud's controller, which decides the answer from its own health probes (moto's checks always
pass). The answer's value (a region's load balancer) is named by the record that holds it: its
failover role, and the region its health check watches.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass

import boto3

from bulkhead import project
from bulkhead.errors import BulkheadError
from bulkhead.localcloud import controller
from bulkhead.localcloud.aws import LOCAL_CREDENTIALS
from bulkhead.localcloud.state import Store


class DnsError(BulkheadError):
    """A name Route 53 cannot answer for."""


@dataclass(frozen=True)
class Answer:
    name: str
    value: str
    region: str
    role: str


def route53_client(project_dir):
    """Route 53 on AWS, or the local cloud's Route 53 (its controller) when it runs for this project."""
    info = controller.running(Store.of_project(project_dir).directory)
    if info is None:
        return boto3.client("route53")
    return boto3.client("route53", endpoint_url=info.endpoint, region_name="us-east-1", **LOCAL_CREDENTIALS)


def zone_for(route53, name: str) -> dict:
    """The hosted zone that holds `name`: the longest zone name it ends with."""
    fqdn = name.rstrip(".") + "."
    zones = route53.list_hosted_zones()["HostedZones"]
    holding = [z for z in zones if fqdn == z["Name"] or fqdn.endswith("." + z["Name"])]
    if not holding:
        known = ", ".join(z["Name"].rstrip(".") for z in zones) or "none"
        raise DnsError(f"no hosted zone holds {name}; the zones are {known}")
    return max(holding, key=lambda z: len(z["Name"]))


def describe(records: list[dict], value: str, regions: dict[str, str]) -> tuple[str, str]:
    """(region, role) of the record answering `value`; `regions` maps a health check id to its region."""
    for record in records:
        if value in [v["Value"] for v in record.get("ResourceRecords", [])]:
            return regions.get(record.get("HealthCheckId", ""), "?"), record.get("Failover", "SIMPLE")
    return "?", "?"


def answer(route53, name: str, kind: str = "CNAME") -> Answer:
    zone = zone_for(route53, name)
    tested = route53.test_dns_answer(HostedZoneId=zone["Id"].split("/")[-1], RecordName=name, RecordType=kind)
    values = tested.get("RecordData", [])
    if tested.get("ResponseCode") != "NOERROR" or not values:
        raise DnsError(f"Route 53 has no {kind} answer for {name} ({tested.get('ResponseCode')})")
    fqdn = name.rstrip(".") + "."
    records = [r for r in route53.list_resource_record_sets(HostedZoneId=zone["Id"], StartRecordName=fqdn,
                                                             StartRecordType=kind)["ResourceRecordSets"]
               if r["Name"] == fqdn and r["Type"] == kind]  # fmt: skip
    checks = [r["HealthCheckId"] for r in records if r.get("HealthCheckId")]
    regions = {}
    if checks:
        tags = route53.list_tags_for_resources(ResourceType="healthcheck", ResourceIds=checks)["ResourceTagSets"]
        regions = {t["ResourceId"]: {x["Key"]: x["Value"] for x in t.get("Tags", [])}.get("bulkhead:region", "?")
                   for t in tags}  # fmt: skip
    region, role = describe(records, values[0], regions)
    return Answer(name.rstrip("."), values[0], region, role)


def cmd_answer(args: argparse.Namespace) -> int:
    result = answer(route53_client(project.find(args.project)), args.name)
    print(json.dumps(asdict(result)) if args.json else f"{result.region} {result.role}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add `bulkhead dns ...` to the command line."""
    dns = commands.add_parser("dns", help="what Route 53 answers for the platform's names",
                              description=__doc__)  # fmt: skip
    verbs = dns.add_subparsers(dest="verb", required=True, metavar="VERB")
    ask = verbs.add_parser(
        "answer",
        help="the region and record role Route 53 answers NAME with now, e.g. `us-west-2 SECONDARY`",
        description="Ask Route 53 (TestDNSAnswer) what it answers for NAME, and name the region and failover "
        "role of the record it chose. Locally the answer follows the local cloud's real health probes.",
    )
    ask.add_argument("name", help="a service's name, e.g. apps.platform.example.net")
    ask.add_argument("--json", action="store_true", help="print name, value, region and role as JSON")
    ask.set_defaults(handler=cmd_answer)
